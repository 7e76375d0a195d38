//! Built-in detectors: hand-written, validating scanners over the bytes of a
//! decoded string.
//!
//! Every built-in value is ASCII, so the scanners work on bytes and every
//! match starts and ends on an ASCII byte (hence on a `char` boundary). One
//! pass over the text looks for *anchor* bytes (a digit run start, `@`, `-`,
//! `_`, `I`, `J`, `:`); only there does a detector look further, and only
//! within a bounded window. Each candidate is decided by the bytes of the
//! candidate and at most three bytes around it (the "not glued to a longer
//! token" checks), which is what lets the stream masker cut a stream at
//! whitespace and still find exactly what a one-shot scan finds.

use super::classify::{self, Anchors};

/// Built-in detectors, in priority order (ties between equal spans go to
/// the earlier one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Builtin {
    Email,
    PaymentCard,
    UsSsn,
    Phone,
    Iban,
    Ipv4,
    Ipv6,
    AwsAccessKey,
    GoogleApiKey,
    GithubToken,
    OpenaiKey,
    AnthropicKey,
    SlackToken,
    Jwt,
    PrivateKey,
}

/// Every built-in with its configuration name.
pub(crate) const BUILTINS: [(Builtin, &str); 15] = [
    (Builtin::Email, "email"),
    (Builtin::PaymentCard, "payment_card"),
    (Builtin::UsSsn, "us_ssn"),
    (Builtin::Phone, "phone"),
    (Builtin::Iban, "iban"),
    (Builtin::Ipv4, "ipv4"),
    (Builtin::Ipv6, "ipv6"),
    (Builtin::AwsAccessKey, "aws_access_key"),
    (Builtin::GoogleApiKey, "google_api_key"),
    (Builtin::GithubToken, "github_token"),
    (Builtin::OpenaiKey, "openai_key"),
    (Builtin::AnthropicKey, "anthropic_key"),
    (Builtin::SlackToken, "slack_token"),
    (Builtin::Jwt, "jwt"),
    (Builtin::PrivateKey, "private_key"),
];

/// Built-ins enabled when `masking.detectors` is absent.
pub(crate) fn default_enabled(b: Builtin) -> bool {
    !matches!(b, Builtin::Ipv4 | Builtin::Ipv6)
}

pub(crate) fn builtin_by_name(name: &str) -> Option<Builtin> {
    BUILTINS.iter().find(|(_, n)| *n == name).map(|(b, _)| *b)
}

/// How far a PEM block may extend past its `-----BEGIN` line before the
/// footer must have appeared (bytes).
pub(crate) const PEM_WINDOW: usize = 32 * 1024;
/// Longest JWT/JWE considered, bytes.
const JWT_MAX: usize = 16 * 1024;
/// Longest API-key body considered, bytes.
const KEY_MAX: usize = 512;

/// A candidate match: bytes `start..end` of the scanned text, found by the
/// detector with index `det` in the masker's detector table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cand {
    pub start: usize,
    pub end: usize,
    pub det: u16,
}

/// Enabled built-ins, as indices into the masker's detector table.
#[derive(Debug, Clone, Default)]
pub(crate) struct Enabled {
    idx: [Option<u16>; BUILTINS.len()],
    /// [`scan_at`] may skip anchors inside a value already found (see
    /// [`contained_after`]); off when an allow-list could drop that value.
    pub(crate) skip_covered: bool,
    /// The `us_ssn` forms found (`masking.us_ssn_forms`).
    pub(crate) ssn_forms: SsnForms,
}

/// How a US SSN may be written (`masking.us_ssn_forms`): `123-45-6789`
/// (`dashed`, always on), `123 45 6789` (`spaced`), `123456789` (`plain`:
/// nine digits not glued to a longer token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SsnForms {
    pub dashed: bool,
    pub spaced: bool,
    pub plain: bool,
}

impl Default for SsnForms {
    fn default() -> Self {
        SsnForms { dashed: true, spaced: false, plain: false }
    }
}

impl Enabled {
    pub(crate) fn set(&mut self, b: Builtin, det: u16) {
        if let Some(slot) = self.idx.get_mut(b as usize) {
            *slot = Some(det);
        }
    }
    #[inline]
    pub(crate) fn get(&self, b: Builtin) -> Option<u16> {
        self.idx.get(b as usize).copied().flatten()
    }
}

/// The anchor bytes of the enabled built-ins (see [`scan`]).
pub(crate) fn anchors(en: &Enabled) -> Anchors {
    let any = |bs: &[Builtin]| bs.iter().any(|b| en.get(*b).is_some());
    Anchors {
        at: any(&[Builtin::Email]),
        digit: any(&[Builtin::PaymentCard, Builtin::UsSsn, Builtin::Phone, Builtin::Iban, Builtin::Ipv4, Builtin::SlackToken, Builtin::Email]),
        colon: any(&[Builtin::Ipv6]),
        upper_i: any(&[Builtin::AwsAccessKey, Builtin::GoogleApiKey]),
        upper_j: any(&[Builtin::Jwt]),
        uscore: any(&[Builtin::GithubToken, Builtin::AwsAccessKey]),
        dash: any(&[Builtin::OpenaiKey, Builtin::AnthropicKey, Builtin::SlackToken, Builtin::PrivateKey]),
        // any built-in may be written with percent-escapes
        percent: en.idx.iter().any(Option::is_some),
    }
}

#[inline]
fn at(s: &[u8], i: usize) -> u8 {
    s.get(i).copied().unwrap_or(0)
}

/// The byte `k` positions before `i`, or 0 before the start.
#[inline]
fn back(s: &[u8], i: usize, k: usize) -> u8 {
    match i.checked_sub(k) {
        Some(j) => at(s, j),
        None => 0,
    }
}

#[inline]
fn digit(b: u8) -> bool {
    b.is_ascii_digit()
}
#[inline]
fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}
#[inline]
fn word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}
#[inline]
fn upper(b: u8) -> bool {
    b.is_ascii_uppercase()
}

/// Whether the value starting at `i` continues a longer token on its left:
/// a word byte right before it, or `.`/`-` joined to an alphanumeric
/// (`v1.2`, `ORD-415…`, `2024-01-…`).
#[inline]
fn glued_before(s: &[u8], i: usize) -> bool {
    let p = back(s, i, 1);
    // (an escape right before `i` is a break, unless it is a hyphen)
    word_before(s, i) || ((p == b'.' || p == b'-') && alnum(back(s, i, 2))) || ((p >= 0x90 || word(p)) && wide_hyphen_glued_before(s, i))
}

/// Whether an escape ends right before `i` (JSON held in a text field): a
/// letter after `\` (`\n`, `\t`) or `\uXXXX` — a break, not part of a word.
#[inline]
fn escape_before(s: &[u8], i: usize) -> bool {
    (back(s, i, 1).is_ascii_lowercase() && back(s, i, 2) == b'\\') || unicode_escape_before(s, i).is_some()
}

/// The character of a `\uXXXX` escape that ends right before `i`.
#[inline(always)]
fn unicode_escape_before(s: &[u8], i: usize) -> Option<char> {
    if back(s, i, 6) != b'\\' {
        return None;
    }
    decode_unicode_escape(s, i)
}

#[cold]
#[inline(never)]
fn decode_unicode_escape(s: &[u8], i: usize) -> Option<char> {
    if i < 6 || back(s, i, 5) != b'u' {
        return None;
    }
    let hex = std::str::from_utf8(s.get(i - 4..i)?).ok()?;
    char::from_u32(u32::from_str_radix(hex, 16).ok()?)
}

/// Whether a word byte (`[A-Za-z0-9_]`) glues onto position `i` from the left.
#[inline]
fn word_before(s: &[u8], i: usize) -> bool {
    word(back(s, i, 1)) && !escape_before(s, i) && !percent_escape_before(s, i) && !emphasis_before(s, i)
}

/// Whether a base64url byte glues onto position `i` from the left.
#[inline]
fn b64url_before(s: &[u8], i: usize) -> bool {
    b64url(back(s, i, 1)) && !escape_before(s, i) && !percent_escape_before(s, i) && !token_emphasis_before(s, i)
}

/// [`emphasis_before`] for a base64url token: no base64url byte before the
/// run either (`-_eyJ…` is one token).
#[inline]
fn token_emphasis_before(s: &[u8], i: usize) -> bool {
    back(s, i, 1) == b'_' && emphasis_run(s, i, b64url)
}

/// The number of `_` (at most 4) right before `i`.
#[inline]
fn run_before(s: &[u8], i: usize) -> usize {
    (1..=4).take_while(|&k| back(s, i, k) == b'_').count()
}

/// Whether a word byte glues onto position `e` from the right (a value
/// ending at `e` continues into a longer token).
#[inline]
fn word_after(s: &[u8], e: usize) -> bool {
    word(at(s, e)) && !emphasis_after(s, e)
}

/// Whether a Markdown underscore emphasis opener ends right before `i`: a
/// run of one to three `_` with no letter or digit before it, or an
/// escape (`\n_…`) (`_x_`,
/// `__x__`, `___x___`; CommonMark §6.2: an underscore run that opens
/// emphasis is not preceded by an alphanumeric). A break, not part of a
/// word; `snake_case_4111…` stays one token. (Before a base64url token,
/// the byte before the run must not be base64url either: `-_eyJ…` is one
/// token, so every `eyJ` of a long run does not start a scan.)
#[inline]
fn emphasis_before(s: &[u8], i: usize) -> bool {
    back(s, i, 1) == b'_' && emphasis_run_before(s, i)
}

#[cold]
#[inline(never)]
fn emphasis_run_before(s: &[u8], i: usize) -> bool {
    emphasis_run(s, i, alnum)
}

/// Whether the run of `_` right before `i` is one to three long, with no
/// `glue` byte before it but for the end of an escape.
#[inline]
fn emphasis_run(s: &[u8], i: usize, glue: fn(u8) -> bool) -> bool {
    let k = run_before(s, i);
    k <= 3 && (!glue(back(s, i, k + 1)) || escape_before(s, i - k) || percent_escape_before(s, i - k))
}

/// Whether a Markdown underscore emphasis closer starts at `e`: a run of
/// one to three `_` with no letter or digit after it (CommonMark §6.2).
#[inline]
fn emphasis_after(s: &[u8], e: usize) -> bool {
    at(s, e) == b'_' && emphasis_run_after(s, e)
}

#[cold]
#[inline(never)]
fn emphasis_run_after(s: &[u8], e: usize) -> bool {
    let k = (0..4).take_while(|&k| at(s, e + k) == b'_').count();
    k <= 3 && !alnum(at(s, e + k))
}

/// `end` moved back over a closing emphasis run (see [`emphasis_after`])
/// that the value at `st` took into its body (`[A-Za-z0-9_-]` tokens), when
/// an opening run of the same length stands before `st` and at least
/// `min` body bytes from `body` remain: `__sk-…__` masks to `__[…]__`.
fn trim_emphasis(s: &[u8], st: usize, body: usize, end: usize, min: usize) -> usize {
    if !emphasis_before(s, st) {
        return end;
    }
    // (the opening run is at most 3 long: the same length is the whole run)
    let (open, close) = (run_before(s, st), run_before(s, end));
    if open == close && end - close >= body + min && !alnum(at(s, end)) {
        end - close
    } else {
        end
    }
}

/// The byte one URL percent-escape at `i` encodes (RFC 3986 §2.1: `%` and
/// two hex digits, either case).
#[inline]
fn percent_byte(s: &[u8], i: usize) -> Option<u8> {
    if at(s, i) != b'%' {
        return None;
    }
    let hex = |b: u8| char::from(b).to_digit(16);
    u8::try_from(hex(at(s, i + 1))? * 16 + hex(at(s, i + 2))?).ok()
}

/// What the URL percent-escapes at `i` encode: printable ASCII (0x20–0x7E,
/// one escape) or one whole UTF-8 character (`%C2%A0`, `%E2%80%8B`: two to
/// four escapes). Returns the character's bytes (`[..n]`), `n`, and the
/// bytes of `s` it takes (`3 * n`); `None` when no such escape starts at
/// `i` (a lone `%`, a control byte, broken UTF-8).
#[inline]
pub(crate) fn percent_decoded_at(s: &[u8], i: usize) -> Option<([u8; 4], usize, usize)> {
    let b0 = percent_byte(s, i)?;
    let n = match b0 {
        0x20..=0x7E => return Some(([b0, 0, 0, 0], 1, 3)),
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return None,
    };
    let mut buf = [b0, 0, 0, 0];
    for k in 1..n {
        *buf.get_mut(k)? = percent_byte(s, i + 3 * k)?;
    }
    std::str::from_utf8(buf.get(..n)?).ok()?;
    Some((buf, n, 3 * n))
}

/// Whether the `+` at `i` may stand for a space (an HTML form body,
/// `application/x-www-form-urlencoded`: `card=4111+1111+…`): a letter or
/// digit (or the end of a percent-escape) before it, a letter, digit or
/// percent-escape after it. (`+1 415…` keeps its `+`; the caller checks
/// that the token reads as a form body.)
#[inline]
pub(crate) fn form_space_at(s: &[u8], i: usize) -> bool {
    at(s, i) == b'+' && alnum(back(s, i, 1)) && (alnum(at(s, i + 1)) || percent_byte(s, i + 1).is_some())
}

/// Whether the escaped `+` (`%2B`) at `i` may stand for a space in the
/// query string of an escaped URL (`next=%2Fpay%3Fcard%3D4111%2B1111…`,
/// what `encodeURIComponent` makes of `/pay?card=4111+1111…`): as
/// [`form_space_at`], a letter or digit before it, written or escaped
/// (`%3D%2B1415…` keeps its `+`), and a letter, digit or percent-escape
/// after it. (The caller checks that it sits in such a query's value.)
#[inline]
pub(crate) fn escaped_form_space_at(s: &[u8], i: usize) -> bool {
    let before = i.checked_sub(3).and_then(|k| percent_byte(s, k)).unwrap_or(back(s, i, 1));
    at(s, i) == b'%'
        && at(s, i + 1) == b'2'
        && at(s, i + 2) | 0x20 == b'b'
        && alnum(before)
        && (alnum(at(s, i + 3)) || percent_byte(s, i + 3).is_some())
}

/// The URL percent-escape that ends right before `j`, encoded once, twice
/// or three times (`%XX`, `%25XX`, `%2525XX`: RFC 3986 §2.1, a URL inside a
/// URL's query): its length in bytes (3, 5 or 7, the longest reading) and
/// the byte it finally encodes; `None` if none ends there.
#[inline]
pub(crate) fn percent_unit_before(s: &[u8], j: usize) -> Option<(usize, u8)> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let byte = u8::try_from(hex(back(s, j, 2))? * 16 + hex(back(s, j, 1))?).ok()?;
    let head = |l: usize| j >= l && s.get(j - l..j - 2).is_some_and(|h| Some(h) == b"%2525".get(..l - 2));
    [7, 5, 3].into_iter().find(|&l| head(l)).map(|l| (l, byte))
}

/// Whether a URL percent-escape (`%20`, `%3D`, `%2F`: RFC 3986 §2.1) ends
/// right before `i`: a break, as the character it encodes is (a value
/// after `Bearer%20` or `token%3D` in a logged URL is not glued to a word).
#[inline]
fn percent_escape_before(s: &[u8], i: usize) -> bool {
    back(s, i, 3) == b'%' && back(s, i, 2).is_ascii_hexdigit() && back(s, i, 1).is_ascii_hexdigit()
}

/// Whether the value ending at `e` continues into a longer token on its right.
#[inline]
fn glued_after(s: &[u8], e: usize) -> bool {
    let n = at(s, e);
    (word(n) && !emphasis_after(s, e)) || ((n == b'.' || n == b'-') && alnum(at(s, e + 1))) || ((n == 0xE2 || n == b'\\') && wide_hyphen_glued_after(s, e))
}

/// A digit-group separator at `i`: its class (`b' '`, `b'-'` or `b'.'`)
/// and length in bytes. Besides ASCII space, `-` and `.`, the Unicode
/// spaces and hyphens that typeset documents put between digit groups
/// (word processors, HTML `&nbsp;`, French and Swiss number formats):
/// U+00A0 no-break space, U+2007 figure space, U+2009 thin space, U+202F
/// narrow no-break space (class space); U+2010 hyphen, U+2011 non-breaking
/// hyphen, U+2012 figure dash, U+2013 en dash (class `-`); also these
/// written as a JSON `\uXXXX` escape (JSON held in text, e.g. Python's
/// `json.dumps` output: 6 bytes); U+00A0 also as an HTML character
/// reference (`&nbsp;`, `&#160;`, `&#xa0;`: 6 bytes).
#[inline(always)]
fn sep_at(s: &[u8], i: usize) -> Option<(u8, usize)> {
    match at(s, i) {
        c @ (b' ' | b'-' | b'.') => Some((c, 1)),
        c => wide_sep_at(s, i, c),
    }
}

/// [`sep_at`] for the multi-byte separators (`c`: the byte at `i`; other
/// bytes give `None` at once).
#[inline(always)]
fn wide_sep_at(s: &[u8], i: usize, c: u8) -> Option<(u8, usize)> {
    if c < 0xC2 && c != b'\\' && c != b'&' {
        return None;
    }
    wide_sep(s, i, c)
}

#[cold]
#[inline(never)]
fn wide_sep(s: &[u8], i: usize, c: u8) -> Option<(u8, usize)> {
    if c == b'&' {
        // the HTML character references of U+00A0 (raw HTML of crawled pages)
        return matches!(s.get(i..i + 6), Some(b"&nbsp;" | b"&#160;" | b"&#xa0;" | b"&#xA0;")).then_some((b' ', 6));
    }
    if c == b'\\' {
        return match decode_unicode_escape(s, i + 6).filter(|_| at(s, i + 1) == b'u') {
            Some('\u{a0}' | '\u{2007}' | '\u{2009}' | '\u{202f}') => Some((b' ', 6)),
            Some('\u{2010}'..='\u{2013}') => Some((b'-', 6)),
            _ => None,
        };
    }
    match (c, at(s, i + 1), at(s, i + 2)) {
        (0xC2, 0xA0, _) => Some((b' ', 2)),
        (0xE2, 0x80, 0x87 | 0x89 | 0xAF) => Some((b' ', 3)),
        (0xE2, 0x80, 0x90..=0x93) => Some((b'-', 3)),
        _ => None,
    }
}

/// The separator (see [`sep_at`]) that ends right before `i`.
#[inline]
fn sep_before(s: &[u8], i: usize) -> Option<(u8, usize)> {
    [1, 2, 3, 6].into_iter().find_map(|k| i.checked_sub(k).and_then(|j| sep_at(s, j)).filter(|(_, l)| *l == k))
}

/// Whether a Unicode hyphen (class `-` of [`sep_at`], 3 bytes or escaped)
/// ends right before `i`, joined on its left to an alphanumeric.
#[cold]
#[inline(never)]
fn wide_hyphen_glued_before(s: &[u8], i: usize) -> bool {
    match sep_before(s, i) {
        Some((b'-', l)) if l > 1 => alnum(back(s, i, l + 1)),
        _ => false,
    }
}

/// Whether a Unicode hyphen starts at `e`, joined on its right to an
/// alphanumeric.
#[cold]
#[inline(never)]
fn wide_hyphen_glued_after(s: &[u8], e: usize) -> bool {
    match wide_sep_at(s, e, at(s, e)) {
        Some((b'-', l)) => alnum(at(s, e + l)),
        _ => false,
    }
}

fn count_while(s: &[u8], from: usize, max: usize, f: impl Fn(u8) -> bool) -> usize {
    s.get(from..).map_or(0, |r| r.iter().take(max).take_while(|b| f(**b)).count())
}

fn starts_with_at(s: &[u8], i: usize, lit: &[u8]) -> bool {
    s.get(i..).is_some_and(|r| r.starts_with(lit))
}

// ---------------------------------------------------------------- validators

/// Luhn (ISO/IEC 7812-1 Annex B) over ASCII digits; non-digits are ignored.
/// False for fewer than two digits.
pub(crate) fn luhn(value: &[u8]) -> bool {
    luhn_digits(value.iter().rev().copied().filter(|b| digit(*b)))
}

/// Luhn over ASCII digits given from the last (check) digit to the first.
fn luhn_digits(rev: impl Iterator<Item = u8>) -> bool {
    // every second digit from the right, doubled, with its digits summed
    const DOUBLED: [u32; 10] = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9];
    let mut sum = 0u32;
    let mut n = 0usize;
    for b in rev {
        let d = b.wrapping_sub(b'0');
        sum += if n % 2 == 1 { DOUBLED.get(usize::from(d)).copied().unwrap_or(0) } else { u32::from(d) };
        n += 1;
    }
    n >= 2 && sum.is_multiple_of(10)
}

/// ISO 7064 MOD 97-10 as used by IBAN (ISO 13616-1): the first four
/// alphanumerics move to the end, letters become 10..35, and the number
/// must be ≡ 1 (mod 97). Spaces are ignored; any other byte fails.
pub(crate) fn mod97(value: &[u8]) -> bool {
    let chars: Vec<u8> = value.iter().copied().filter(|b| *b != b' ').collect();
    if chars.len() < 5 || !chars.iter().all(|b| alnum(*b)) {
        return false;
    }
    let (head, tail) = chars.split_at(4);
    let mut r: u32 = 0;
    for &b in tail.iter().chain(head.iter()) {
        let b = b.to_ascii_uppercase();
        if digit(b) {
            r = (r * 10 + u32::from(b - b'0')) % 97;
        } else {
            r = (r * 100 + u32::from(b - b'A') + 10) % 97;
        }
    }
    r == 1
}

/// Whether a PAN of `len` digits whose first four digits are `prefix4`
/// (a number, 0–9999) has an issuer prefix and length of a known brand
/// (ISO/IEC 7812 IIN ranges): Visa, Mastercard, Amex, Discover, JCB,
/// Diners Club (300–305, 3095, 36, 38, 39; 14–19 digits), UnionPay,
/// Maestro, Mir, RuPay.
fn card_brand(prefix4: u32, len: usize) -> bool {
    let (p1, p2, p3, p4) = (prefix4 / 1000, prefix4 / 100, prefix4 / 10, prefix4);
    (p1 == 4 && matches!(len, 13 | 16 | 19))
        || (((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && len == 16)
        || ((p2 == 34 || p2 == 37) && len == 15)
        || ((p4 == 6011 || (644..=649).contains(&p3) || p2 == 65) && (16..=19).contains(&len))
        || ((3528..=3589).contains(&p4) && (16..=19).contains(&len))
        || ((p2 == 36 || p2 == 38 || p2 == 39 || (300..=305).contains(&p3) || p4 == 3095) && (14..=19).contains(&len))
        || (p2 == 62 && (16..=19).contains(&len))
        // Maestro
        || (matches!(p4, 5018 | 5020 | 5038 | 5893 | 6304 | 6759 | 6761 | 6762 | 6763) && (13..=19).contains(&len))
        // Mir
        || ((2200..=2204).contains(&p4) && (16..=19).contains(&len))
        // RuPay
        || ((p2 == 60 || p3 == 508) && len == 16)
}

/// IBAN length per country (ISO 13616 registry).
fn iban_len(cc: [u8; 2]) -> Option<usize> {
    const T: &[(&[u8; 2], usize)] = &[
        (b"AD", 24), (b"AE", 23), (b"AL", 28), (b"AT", 20), (b"AZ", 28), (b"BA", 20), (b"BE", 16),
        (b"BG", 22), (b"BH", 22), (b"BI", 27), (b"BR", 29), (b"BY", 28), (b"CH", 21), (b"CR", 22),
        (b"CY", 28), (b"CZ", 24), (b"DE", 22), (b"DJ", 27), (b"DK", 18), (b"DO", 28), (b"EE", 20),
        (b"EG", 29), (b"ES", 24), (b"FI", 18), (b"FK", 18), (b"FO", 18), (b"FR", 27), (b"GB", 22),
        (b"GE", 22), (b"GI", 23), (b"GL", 18), (b"GR", 27), (b"GT", 28), (b"HN", 28), (b"HR", 21),
        (b"HU", 28), (b"IE", 22), (b"IL", 23), (b"IQ", 23), (b"IS", 26), (b"IT", 27), (b"JO", 30),
        (b"KW", 30), (b"KZ", 20), (b"LB", 28), (b"LC", 32), (b"LI", 21), (b"LT", 20), (b"LU", 20),
        (b"LV", 21), (b"LY", 25), (b"MC", 27), (b"MD", 24), (b"ME", 22), (b"MK", 19), (b"MN", 20),
        (b"MR", 27), (b"MT", 31), (b"MU", 30), (b"NI", 28), (b"NL", 18), (b"NO", 15), (b"OM", 23),
        (b"PK", 24), (b"PL", 28), (b"PS", 29), (b"PT", 25), (b"QA", 29), (b"RO", 24), (b"RS", 22),
        (b"RU", 33), (b"SA", 24), (b"SC", 31), (b"SD", 18), (b"SE", 24), (b"SI", 19), (b"SK", 24),
        (b"SM", 27), (b"SO", 23), (b"ST", 25), (b"SV", 28), (b"TL", 23), (b"TN", 24), (b"TR", 26),
        (b"UA", 29), (b"VA", 22), (b"VG", 24), (b"XK", 20), (b"YE", 30),
    ];
    T.iter().find(|(c, _)| **c == cc).map(|(_, n)| *n)
}

// ---------------------------------------------------------------- detectors

/// Payment card at a digit-run start `i`: 13–19 digits, either contiguous or
/// in groups separated by one space or one dash (or a Unicode space or
/// hyphen, see [`sep_at`]; the same class throughout; groups of 3–6 digits
/// except the last), passing the brand table and Luhn. Returns the end of
/// the longest valid span.
fn card(s: &[u8], i: usize) -> Option<usize> {
    // (end, total digits, group length) per group
    // groups before the last have 3..=6 digits, so at most 7 groups matter
    let mut groups: [(usize, usize, usize); 7] = [(0, 0, 0); 7];
    let mut ng = 0usize;
    let mut pos = i;
    let mut total = 0usize;
    let mut sep = 0u8;
    loop {
        let glen = count_while(s, pos, 20, digit);
        if glen == 0 || total + glen > 19 {
            break;
        }
        pos += glen;
        total += glen;
        match groups.get_mut(ng) {
            Some(g) => *g = (pos, total, glen),
            None => break,
        }
        ng += 1;
        if !(3..=6).contains(&glen) {
            break;
        }
        let c = at(s, pos);
        if (c == b' ' || c == b'-') && digit(at(s, pos + 1)) && (sep == 0 || sep == c) {
            sep = c;
            pos += 1;
        } else {
            match wide_sep_at(s, pos, c) {
                Some((c, l)) if digit(at(s, pos + l)) && (sep == 0 || sep == c) => {
                    sep = c;
                    pos += l;
                }
                _ => break,
            }
        }
    }
    // (every group before the last has 3..=6 digits: the loop stops after
    // a group of another length)
    for k in (0..ng).rev() {
        let (end, tot, _) = groups.get(k).copied()?;
        if !(13..=19).contains(&tot) || glued_after(s, end) {
            continue;
        }
        // the digits of groups 0..=k, not those of an escaped separator
        // (`\u00a0`, `&#160;`): the first four give the brand, then Luhn
        // from the last
        let groups = groups.get(..=k)?;
        let digits = |&(g_end, _, glen): &(usize, usize, usize)| s.get(g_end - glen..g_end).unwrap_or(&[]);
        let prefix = groups.iter().flat_map(digits).take(4).fold(0u32, |p, b| p * 10 + u32::from(b.wrapping_sub(b'0')));
        if card_brand(prefix, tot) && luhn_digits(groups.iter().rev().flat_map(|g| digits(g).iter().rev()).copied()) {
            return Some(end);
        }
    }
    None
}

/// US SSN at `i`: `AAA-GG-SSSS` (`sep` `-`: the dashes may be Unicode
/// hyphens, see [`sep_at`]), `AAA GG SSSS` (`sep` space, Unicode spaces
/// too) or `AAAGGSSSS` (`sep` 0: the caller saw a run of exactly nine
/// digits); area not 000, 666 or 900–999, group not 00, serial not 0000.
fn ssn(s: &[u8], i: usize, sep: u8) -> Option<usize> {
    if at(s, i + 3) == sep && sep != 0 && at(s, i + 6) != sep && at(s, i + 6) < 0x80 {
        // ASCII, not `AAA-GG-`: not an SSN
        return None;
    }
    let num = |from: usize, n: usize| -> Option<u32> {
        let d = s.get(from..from + n)?;
        d.iter().all(|b| digit(*b)).then(|| d.iter().fold(0u32, |a, b| a * 10 + u32::from(b - b'0')))
    };
    let dash = |at: usize| if sep == 0 { Some(0) } else { sep_at(s, at).filter(|(c, _)| *c == sep).map(|(_, l)| l) };
    let area = num(i, 3)?;
    let g = i + 3 + dash(i + 3)?;
    let group = num(g, 2)?;
    let r = g + 2 + dash(g + 2)?;
    let serial = num(r, 4)?;
    let end = r + 4;
    if glued_after(s, end) || area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
        return None;
    }
    Some(end)
}

#[derive(Clone, Copy, Default)]
struct PGroup {
    len: usize,
    paren: bool,
    end: usize,
    /// separator before this group (0: none)
    sep: u8,
    first: u8,
    second: u8,
}

/// Phone number starting at `start` (a `+`, a `(` or a digit-run start):
/// E.164 (`+` and 8–15 digits, optional separators) or a national format
/// with separators: NANP `(415) 555-0134`, `415-555-0134`, `415.555.0134`,
/// `1-800-555-0199`; trunk-prefixed `020 7946 0958`, `01 23 45 67 89`,
/// German `030/1234567`; `+44(0)20 7946 0958` (trunk prefix in
/// parentheses), `(+44) 20 7946 0958`; Brazilian `(11) 91234-5678`;
/// Russian `8 (495) 123-45-67`; the `00` international prefix
/// `0044 20 7946 0958` (see [`intl00`]).
/// Separators may be Unicode spaces or hyphens (see [`sep_at`]).
fn phone(s: &[u8], start: usize) -> Option<usize> {
    let mut pos = start;
    // "(+44) 20 7946 0958": the country code in parentheses
    let cc_paren = at(s, pos) == b'(' && at(s, pos + 1) == b'+';
    if cc_paren {
        pos += 1;
    }
    let plus = at(s, pos) == b'+';
    if plus {
        pos += 1;
    }
    let mut groups = [PGroup::default(); 8];
    let mut ng = 0usize;
    let mut sep = 0u8;
    // (more room for "00 44 …" with 6-byte `\u00a0` separators)
    let limit = if at(s, pos) == b'0' && at(s, pos + 1) == b'0' { 64 } else { 40 };
    while ng < groups.len() && pos - start <= limit {
        let mut p = pos;
        let paren = at(s, p) == b'(';
        if paren {
            p += 1;
        }
        let glen = count_while(s, p, 16, digit);
        if glen == 0 || glen > 15 {
            break;
        }
        let first = at(s, p);
        let second = at(s, p + 1);
        p += glen;
        if paren {
            if at(s, p) != b')' {
                break;
            }
            p += 1;
        }
        pos = p;
        if let Some(g) = groups.get_mut(ng) {
            *g = PGroup { len: glen, paren, end: pos, sep, first, second };
        }
        ng += 1;
        if cc_paren && ng == 1 {
            if at(s, pos) != b')' {
                break;
            }
            pos += 1;
        }
        let c = at(s, pos);
        let n = at(s, pos + 1);
        if ((c == b' ' || c == b'-' || c == b'.') && (digit(n) || (c == b' ' && n == b'('))) || (c == b'/' && ng == 1 && !plus && digit(n)) {
            // (`/` only after a national area code: German "030/1234567")
            sep = c;
            pos += 1;
        } else if let Some((c, l)) = wide_sep_at(s, pos, c).filter(|(c, l)| {
            let n = at(s, pos + l);
            digit(n) || (*c == b' ' && n == b'(')
        }) {
            sep = c;
            pos += l;
        } else if ((paren || (cc_paren && ng == 1)) && digit(c))
            || (plus && ng == 1 && c == b'(' && n == b'0' && at(s, pos + 2) == b')' && !(groups.first().is_some_and(|g| g.first == b'1' || (g.len == 1 && g.first == b'7'))))
        {
            // "(415)555-0134"; "+44(0)20 7946 0958": the national trunk
            // prefix 0 in parentheses right after the country code (not
            // after +1 or +7, whose trunk prefixes are 1 and 8)
            sep = 0;
        } else {
            break;
        }
    }
    // "(+CC)" alone is not a number: its country code needs groups after it
    let min_groups = if cc_paren { 2 } else { 1 };
    // "0044 20 7946 0958", "00 44 …": the `00` international prefix
    let intl = !plus && !cc_paren && groups.first().is_some_and(|g| !g.paren && g.first == b'0' && g.second == b'0');
    // its country code: the digits after `00` in the first group, or the second group
    let cc = match groups.first() {
        Some(g) if g.len == 2 => groups.get(1).filter(|c| !c.paren).map(|c| (c.end - c.len, c.end)),
        Some(g) if !g.paren => Some((start + 2, g.end)),
        _ => None,
    }
    .and_then(|(a, b)| s.get(a..b))
    .filter(|d| (1..=3).contains(&d.len()))
    .map_or(0, |d| d.iter().fold(0u32, |a, b| a * 10 + u32::from(b.wrapping_sub(b'0'))));
    for k in (min_groups..=ng).rev() {
        let gs = groups.get(..k)?;
        let end = gs.last()?.end;
        // "…555-0134x123": an extension glued to the number goes with it
        let ext = if glued_after(s, end) {
            match extension_end(s, end) {
                Some(e) => Some(e),
                None => continue,
            }
        } else {
            None
        };
        let ok = if plus {
            e164(gs)
        } else if intl {
            intl00(gs, cc)
        } else {
            nanp(gs) || trunk(gs) || brazil(gs) || russia(gs)
        };
        if ok {
            if let Some(e) = ext {
                return Some(e);
            }
            return Some(if plus || intl { grouping_end(s, start, groups.get(..ng)?.last().map_or(end, |g| g.end)) } else { end });
        }
    }
    None
}

/// The end of a phone extension glued to a number that ends at `e`: `x`,
/// `X`, `ext` or `ext.` (any case) and 1–6 digits, not glued to what
/// follows (`…0134x123`, `…0134ext.45`).
fn extension_end(s: &[u8], e: usize) -> Option<usize> {
    let lead = s.get(e..e + 4).unwrap_or(s.get(e..).unwrap_or(&[]));
    let k = if lead.len() >= 4 && lead.eq_ignore_ascii_case(b"ext.") {
        4
    } else if lead.len() >= 3 && lead.get(..3).is_some_and(|l| l.eq_ignore_ascii_case(b"ext")) {
        3
    } else if matches!(at(s, e), b'x' | b'X') {
        1
    } else {
        return None;
    };
    let n = count_while(s, e + k, 7, digit);
    ((1..=6).contains(&n) && !glued_after(s, e + k + n)).then_some(e + k + n)
}

/// Where the digit grouping that ends at `e` ends: an international number
/// is masked to the end of the digit groups that follow it with spaces or
/// hyphens (a second number, an extension `-12`), so no digits of another
/// number stay visible beside its mask: a later group that continues a
/// grouping is not a number of its own (see `grouped` in [`numeric`]).
/// At most 128 bytes from `start`.
fn grouping_end(s: &[u8], start: usize, mut e: usize) -> usize {
    while let Some((_, l)) = sep_at(s, e).filter(|(c, _)| matches!(c, b' ' | b'-')) {
        let n = count_while(s, e + l, 16, digit);
        if n == 0 || e + l + n - start > 128 {
            break;
        }
        e += l + n;
    }
    e
}

fn digits_total(gs: &[PGroup]) -> usize {
    gs.iter().map(|g| g.len).sum()
}

fn e164(gs: &[PGroup]) -> bool {
    let total = digits_total(gs);
    // a date-like "+2024 01 15" (groups of 4, 2, 2 and maybe 2) is not a number
    let date = matches!(gs, [y, m, d] | [y, m, d, _] if y.len == 4 && m.len == 2 && d.len == 2 && gs.iter().skip(3).all(|g| g.len == 2));
    // a compact "+14155550134" takes no further groups
    (8..=15).contains(&total) && gs.first().is_some_and(|g| g.first != b'0' && !g.paren && (gs.len() == 1 || g.len <= 4)) && !date
}

fn nanp(gs: &[PGroup]) -> bool {
    let gs = match gs {
        [one, rest @ ..] if rest.len() == 3 && one.len == 1 && one.first == b'1' && !one.paren => rest,
        _ => gs,
    };
    let [a, e, n] = gs else { return false };
    if a.len != 3 || e.len != 3 || n.len != 4 || e.paren || n.paren {
        return false;
    }
    if !(b'2'..=b'9').contains(&a.first) || !(b'2'..=b'9').contains(&e.first) {
        return false;
    }
    if a.paren {
        // "(415) 555-0134", "(415)555-0134"
        matches!(e.sep, 0 | b' ') && matches!(n.sep, b'-' | b'.' | b' ')
    } else {
        // both separators present and equal: "415-555-0134", "415.555.0134"
        e.sep != 0 && e.sep == n.sep
    }
}

fn trunk(gs: &[PGroup]) -> bool {
    let Some(first) = gs.first() else { return false };
    let total = digits_total(gs);
    if gs.len() < 2 || gs.len() > 5 || !(9..=11).contains(&total) {
        return false;
    }
    if first.first != b'0' || first.second == b'0' || !(2..=5).contains(&first.len) {
        return false;
    }
    let rest = gs.get(1..).unwrap_or(&[]);
    let sep = rest.first().map_or(0, |g| g.sep);
    // German "030/1234567", "030/123 456 78": the area code ends at `/`
    if sep == b'/' {
        return !first.paren && rest.iter().all(|g| !g.paren && (2..=8).contains(&g.len)) && rest.iter().skip(1).all(|g| g.sep == b' ');
    }
    (sep == b' ' || sep == b'-' || (first.paren && sep == 0))
        && rest.iter().all(|g| !g.paren && (2..=8).contains(&g.len))
        && rest.iter().skip(1).all(|g| g.sep == sep || (sep == 0 && g.sep == b' '))
}

/// The `00` international call prefix (the ITU-recommended prefix; `+` in
/// print, ITU-T E.123): `0044 20 7946 0958`, `00 44 20 7946 0958`,
/// `0049 30-123456`. After
/// `00`, an assigned country code (`cc`, 0 if none: [`country_code`]),
/// glued to the prefix or its own group, then at least two groups (the
/// first of 1–5 digits and not starting with the national trunk prefix 0,
/// which the international form drops — so Italian `0039 06 …` is not
/// found; the others 2–8 digits), 10–15 digits after the prefix (10
/// national digits after `7`, NANP's 3-3-4 after `1`), a space after the
/// country code (`0044-2024-117` is an id) and spaces or hyphens after
/// that, not dots or slashes (`00.11.22.33.44` is a hardware address or a
/// version), no date among the groups (`0044 15-01-2024`), and not all
/// groups of one length (a MAC address `00-30-48-01-23-45`, a hex dump
/// `00 30 22 33 44 55`). Without an assigned country code, zero-padded ids
/// (`0012-345-6789`, NDC drug codes `0074-3799-02`) are not numbers. A
/// number found is masked to the end of its grouping ([`grouping_end`]).
fn intl00(gs: &[PGroup], cc: u32) -> bool {
    let Some(first) = gs.first() else { return false };
    let rest = gs.get(if first.len == 2 { 2 } else { 1 }..).unwrap_or(&[]);
    let cc_len = match cc {
        0..=9 => 1,
        10..=99 => 2,
        _ => 3,
    };
    let total = cc_len + digits_total(rest);
    let uniform = gs.iter().all(|g| g.len == first.len);
    let national = match cc {
        1 => matches!(rest, [a, b, c] if a.len == 3 && b.len == 3 && c.len == 4 && a.first >= b'2'),
        7 => total == 11,
        _ => (10..=15).contains(&total),
    };
    // a date among the groups: "0044 15-01-2024", "0031 20-2024-11-05"
    let date = rest.windows(3).any(|w| match w {
        [a, b, c] => b.sep == b'-' && c.sep == b'-' && ((a.len == 2 && b.len == 2 && c.len == 4) || (a.len == 4 && b.len == 2 && c.len == 2)),
        _ => false,
    });
    // a space after the prefix's country code: "0044-2024-117" is an id
    let spaced = gs.iter().take(gs.len() - rest.len() + 1).skip(1).all(|g| g.sep == b' ');
    !uniform
        && !date
        && spaced
        && country_code(cc)
        && national
        && rest.len() >= 2
        && gs.iter().skip(1).all(|g| matches!(g.sep, b' ' | b'-') && !g.paren)
        && rest.first().is_some_and(|g| g.len <= 5 && g.first != b'0')
        && rest.iter().skip(1).all(|g| (2..=8).contains(&g.len))
}

/// Whether `cc` is a country code in the ITU's list of assigned E.164
/// country codes (in ranges; a few spare codes inside the ranges are
/// accepted). Country codes are prefix-free, so a code is read
/// whole from its group.
fn country_code(cc: u32) -> bool {
    matches!(
        cc,
        1 | 7
            | 20
            | 27
            | 30..=34
            | 36
            | 39
            | 40
            | 41
            | 43..=49
            | 51..=58
            | 60..=66
            | 81
            | 82
            | 84
            | 86
            | 90..=95
            | 98
            | 211..=218
            | 220..=269
            | 290..=299
            | 350..=359
            | 370..=389
            | 420..=423
            | 500..=509
            | 590..=599
            | 670..=692
            | 800
            | 808
            | 850..=856
            | 870
            | 878
            | 880..=888
            | 960..=979
            | 991..=998
    )
}

/// Brazilian `(11) 91234-5678`, `(11) 3456-7890`: a two-digit area code
/// in parentheses (not starting with 0), 4 or 5 digits, `-`, 4 digits.
fn brazil(gs: &[PGroup]) -> bool {
    let [a, b, c] = gs else { return false };
    a.paren && a.len == 2 && a.first != b'0' && !b.paren && matches!(b.sep, 0 | b' ') && (4..=5).contains(&b.len) && !c.paren && c.sep == b'-' && c.len == 4
}

/// Russian national `8 (495) 123-45-67`, `8 495 123-45-67`: trunk `8`, a
/// three-digit area code (parentheses optional), then 3-2-2 digits with
/// equal separators.
fn russia(gs: &[PGroup]) -> bool {
    let [t, a, b, c, d] = gs else { return false };
    t.len == 1 && t.first == b'8' && !t.paren && a.len == 3 && !b.paren && b.len == 3 && c.len == 2 && d.len == 2 && !c.paren && !d.paren
        && c.sep == d.sep && matches!(c.sep, b'-' | b' ') && a.sep != 0
}

/// IPv4 dotted quad at `i`: four decimal octets 0–255 without leading zeros,
/// not part of a longer dotted run (so `1.2.3.4.5` is not an address).
fn ipv4(s: &[u8], i: usize) -> Option<usize> {
    let mut pos = i;
    for k in 0..4 {
        let n = count_while(s, pos, 4, digit);
        if n == 0 || n > 3 {
            return None;
        }
        let oct = s.get(pos..pos + n)?;
        if n > 1 && oct.first() == Some(&b'0') {
            return None;
        }
        if oct.iter().fold(0u32, |a, b| a * 10 + u32::from(b - b'0')) > 255 {
            return None;
        }
        pos += n;
        if k < 3 {
            if at(s, pos) != b'.' {
                return None;
            }
            pos += 1;
        }
    }
    if glued_after(s, pos) {
        return None;
    }
    Some(pos)
}

/// IPv6 around the `:` at `i`: the maximal run of hex digits, `:` and `.`
/// (at most 45 bytes), parsed by `std::net::Ipv6Addr` (RFC 4291 text form).
/// Returns `(start, end)`.
fn ipv6(s: &[u8], i: usize) -> Option<(usize, usize)> {
    let cls = |b: u8| b.is_ascii_hexdigit() || b == b':' || b == b'.';
    let mut st = i;
    while st > 0 && cls(back(s, st, 1)) && i - st <= 45 {
        st -= 1;
    }
    let end = i + count_while(s, i, 46, cls);
    let mut e = end;
    // a trailing '.' ends a sentence, it is not part of the address
    while e > st && back(s, e, 1) == b'.' {
        e -= 1;
    }
    if e - st > 45 || e - st < 3 || word_before(s, st) || word_after(s, end) {
        return None;
    }
    let text = std::str::from_utf8(s.get(st..e)?).ok()?;
    if text.bytes().filter(|b| *b == b':').count() < 2 {
        return None;
    }
    text.parse::<std::net::Ipv6Addr>().ok()?;
    Some((st, e))
}

/// IBAN (ISO 13616) whose country code starts at `cc`: exact per-country
/// length, uppercase, either contiguous or in groups of four separated by
/// single spaces (or Unicode spaces, see [`sep_at`]), MOD 97-10 check digits.
fn iban(s: &[u8], cc: usize) -> Option<usize> {
    let want = iban_len([at(s, cc), at(s, cc + 1)])?;
    if !digit(at(s, cc + 2)) || !digit(at(s, cc + 3)) {
        return None;
    }
    let spaced = matches!(sep_at(s, cc + 4), Some((b' ', _)));
    let mut buf = [0u8; 34];
    let mut count = 0usize;
    let mut pos = cc;
    while count < want {
        let c = at(s, pos);
        if upper(c) || digit(c) {
            *buf.get_mut(count)? = c;
            count += 1;
            pos += 1;
        } else if let Some((b' ', l)) = sep_at(s, pos).filter(|_| spaced && count.is_multiple_of(4) && count > 0) {
            pos += l;
        } else {
            return None;
        }
    }
    if glued_after(s, pos) || !mod97(buf.get(..count)?) {
        return None;
    }
    Some(pos)
}

/// The length in bytes of the HTML character reference of `@` that starts
/// at `i` (0: none): numeric, `&#64;` or `&#x40;` (`x` or `X`, leading
/// zeros allowed, at most 8 digits), or named, `&commat;` (HTML §13.1.4;
/// pages write them to hide addresses from harvesters).
pub(crate) fn at_reference_len(s: &[u8], i: usize) -> usize {
    let Some(r) = s.get(i..).filter(|r| r.first() == Some(&b'&')) else { return 0 };
    if r.starts_with(b"&commat;") {
        return 8;
    }
    if r.get(1) != Some(&b'#') {
        return 0;
    }
    let hex = matches!(r.get(2), Some(b'x' | b'X'));
    let from = 2 + usize::from(hex);
    let radix = if hex { 16 } else { 10 };
    let digits = r.get(from..).unwrap_or(&[]).iter().take(9).take_while(|b| char::from(**b).is_digit(radix)).count();
    if digits == 0 || digits > 8 || r.get(from + digits) != Some(&b';') {
        return 0;
    }
    let value = r.get(from..from + digits).unwrap_or(&[]).iter().fold(0u32, |v, b| v * radix + char::from(*b).to_digit(radix).unwrap_or(0));
    if value == 0x40 {
        from + digits + 1
    } else {
        0
    }
}

/// Where the HTML character reference of `@` that ends with the `;` at
/// `semi` starts (see [`at_reference_len`]).
#[inline]
fn at_reference_before(s: &[u8], semi: usize) -> Option<usize> {
    // the longest is `&#x` + 8 digits + `;`
    let lo = semi.saturating_sub(11);
    let amp = lo + s.get(lo..semi)?.iter().rposition(|b| *b == b'&')?;
    (at_reference_len(s, amp) == semi + 1 - amp).then_some(amp)
}

/// Email at the `@` at `a` (RFC 5321 shape, ASCII): local part of
/// `[A-Za-z0-9._%+-]`, at most 64 bytes, no empty dot-atoms; domain of at
/// least two labels (1–63 bytes, no leading/trailing `-`), at most 253
/// bytes; the last label letters only (≥ 2) or an IDNA A-label (`xn--…`).
fn email(s: &[u8], a: usize) -> Option<(usize, usize)> {
    email_sep(s, a, 1)
}

/// [`email`] with a separator of `sep` bytes at `a`: 1 for `@`, 3 for the
/// URL percent-encoded `%40` (RFC 3986 §2.1) of query strings and logged
/// URLs (`?email=jane%40example.com`), 5 to 12 for an HTML character
/// reference ([`at_reference_len`]).
fn email_sep(s: &[u8], a: usize, sep: usize) -> Option<(usize, usize)> {
    let local = |b: u8| alnum(b) || b >= 0x80 || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-');
    let mut st = a;
    let mut wide_local = false;
    loop {
        // `\u00e9` (é) is part of the address, `\u003c` (<) and `\n` end it
        if let Some(c) = unicode_escape_before(s, st) {
            if c.is_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-') {
                st -= 6;
            } else {
                break;
            }
        } else if st > 0 && local(back(s, st, 1)) && !escape_before(s, st) {
            // text in a script written without spaces (CJK, kana, Thai:
            // characters of 3 or more UTF-8 bytes) glued before the address
            // (`メールはjohn@…`): the address starts after it (Latin letters
            // like `ü` stay in it), unless such a character ends the local
            // part (then it is all one address)
            if back(s, st, 1) >= 0x80 && !wide_local && wide_char_before(s, st) {
                if st < a {
                    break;
                }
                wide_local = true;
            }
            st -= 1;
        } else if back(s, st, 1) == b'\\' && matches!(at(s, st), b'_' | b'.' | b'-' | b'+') && local(back(s, st, 2)) && st < a {
            // a Markdown escape inside the local part (`jane\_roe@…`, as
            // HTML-to-Markdown converters write `_`): part of the address
            st -= 1;
        } else {
            break;
        }
        if a - st > 64 {
            return None;
        }
    }
    while at(s, st) == b'.' && st < a {
        st += 1;
    }
    let lp = s.get(st..a)?;
    if lp.is_empty() || lp.ends_with(b".") || lp.windows(2).any(|w| w == b"..") {
        return None;
    }
    let mut pos = a + sep;
    let mut labels = 0usize;
    let mut last = (pos, pos);
    // the label before the last, for a file extension glued to an address
    let mut before_last;
    loop {
        let ls = pos;
        let ascii = count_while(s, pos, 64, |b| alnum(b) || b == b'-');
        // text in another script glued after the address
        // (`…@example.comです`): an ASCII top-level domain ends at it
        let glued_script = at(s, pos + ascii) >= 0x80 && labels >= 1 && ascii >= 2 && count_while(s, pos, 64, |b| b.is_ascii_alphabetic()) == ascii;
        let n = if at(s, pos + ascii) < 0x80 || glued_script { ascii } else { count_while(s, pos, 64, |b| alnum(b) || b == b'-' || b >= 0x80) };
        if n == 0 || n > 63 {
            return None;
        }
        pos += n;
        let lab = s.get(ls..pos)?;
        if lab.first() == Some(&b'-') || lab.last() == Some(&b'-') {
            return None;
        }
        labels += 1;
        before_last = last;
        last = (ls, pos);
        if pos - (a + sep) > 253 {
            return None;
        }
        if !glued_script && at(s, pos) == b'.' && alnum(at(s, pos + 1)) {
            pos += 1;
        } else {
            break;
        }
    }
    let mut tld = s.get(last.0..last.1)?;
    // An image extension is not a delegated top-level domain: an image
    // name. "logo@1.5x.png" is no address; "jane@acme.com.png" (an avatar
    // named by its owner's address) holds one, without the extension.
    if labels >= 2 && image_extension(tld) && !word_after(s, pos) {
        labels -= 1;
        pos = before_last.1;
        tld = s.get(before_last.0..before_last.1)?;
    }
    let tld_ok = (tld.len() >= 2 && tld.iter().all(|b| b.is_ascii_alphabetic()))
        || (tld.len() >= 5 && tld.get(..4).is_some_and(|p| p.eq_ignore_ascii_case(b"xn--")));
    if labels < 2 || !tld_ok || word_after(s, pos) {
        return None;
    }
    // "git@github.com:org/repo.git": an SSH remote in scp form (user `git`,
    // then `:` and a path holding a `/` or ending `.git`), not an address
    if lp == b"git" && at(s, pos) == b':' {
        let path = s.get(pos + 1..).unwrap_or_default();
        let n = path.iter().take(256).take_while(|b| alnum(**b) || matches!(b, b'/' | b'~' | b'_' | b'-' | b'.')).count();
        let path = path.get(..n).unwrap_or_default();
        if path.contains(&b'/') || (path.len() > 4 && path.ends_with(b".git")) {
            return None;
        }
    }
    // "icon@2x.png": a HiDPI image name, not an address
    let first = s.get(a + 1..).map_or(0, |r| r.iter().take_while(|b| **b != b'.').count());
    if labels == 2 && first >= 2 && s.get(a + 1..a + first).is_some_and(|r| r.iter().all(|b| digit(*b))) && at(s, a + first) == b'x' {
        return None;
    }
    // "_jane@example.com_": Markdown emphasis around the address, not part
    // of its local part (the same run of `_` closes it)
    let open = (0..3).take_while(|&k| at(s, st + k) == b'_').count();
    let close = (0..4).take_while(|&k| at(s, pos + k) == b'_').count();
    if open > 0 && open == close && st + open < a && at(s, st + open) != b'.' && !alnum(back(s, st, 1)) && emphasis_after(s, pos) {
        return Some((st + open, pos));
    }
    Some((st, pos))
}

/// Whether the UTF-8 character that ends right before `i` is 3 or 4 bytes
/// long (CJK, kana, Thai and other scripts written without spaces).
#[inline]
fn wide_char_before(s: &[u8], i: usize) -> bool {
    let cont = (1..=3).take_while(|&k| (0x80..0xC0).contains(&back(s, i, k))).count();
    back(s, i, cont + 1) >= 0xE0 && cont >= 2
}

/// Whether `t` is an image file extension (ASCII case-insensitive): `png`,
/// `jpg`, `jpeg`, `gif`, `svg`, `webp`, `avif`, `bmp`, `ico`, `tif`,
/// `tiff` — none is a delegated top-level domain.
#[inline]
fn image_extension(t: &[u8]) -> bool {
    // `| 0x20` lowercases ASCII letters and maps no other byte to one
    match *t {
        [a, b, c] => matches!(&[a | 0x20, b | 0x20, c | 0x20], b"png" | b"jpg" | b"gif" | b"svg" | b"bmp" | b"ico" | b"tif"),
        [a, b, c, d] => matches!(&[a | 0x20, b | 0x20, c | 0x20, d | 0x20], b"jpeg" | b"webp" | b"avif" | b"tiff"),
        _ => false,
    }
}

/// Length of a run of `[A-Za-z0-9]`, `[A-Za-z0-9_-]` etc. from `i`.
fn run(s: &[u8], i: usize, max: usize, f: impl Fn(u8) -> bool) -> usize {
    count_while(s, i, max + 1, f)
}

fn b64url(b: u8) -> bool {
    alnum(b) || b == b'-' || b == b'_'
}

/// An AWS secret access key after its name, the `_` of `secret_access_key`
/// at `u` (any case: `aws_secret_access_key` in `~/.aws/credentials`,
/// `AWS_SECRET_ACCESS_KEY` in `.env` files and shells): then optional
/// quotes and spaces, `=` or `:` (or `export … =`), optional spaces and a
/// quote, and 40 of `[A-Za-z0-9/+]` not glued to more. Gives the key's span
/// (the name stays).
fn aws_secret(s: &[u8], u: usize) -> Option<(usize, usize)> {
    let name = s.get(u.checked_sub(6)?..u + 11)?;
    if !name.eq_ignore_ascii_case(b"secret_access_key") {
        return None;
    }
    let mut p = u + 11;
    // quotes and blanks around `=` or `:`, also as the escapes of JSON held
    // in text (`\"aws_secret_access_key\": \"…\"`, `:\t`)
    let skip = |p: &mut usize| {
        for _ in 0..12 {
            match (at(s, *p), at(s, *p + 1)) {
                (b'"' | b'\'' | b' ' | b'\t', _) | (b'\\', b'"' | b'\'' | b'\\') => *p += 1,
                (b'\\', b't' | b'n' | b'r') => *p += 2,
                _ => break,
            }
        }
    };
    skip(&mut p);
    if !matches!(at(s, p), b'=' | b':') {
        return None;
    }
    p += 1;
    skip(&mut p);
    let b64 = |b: u8| alnum(b) || b == b'/' || b == b'+';
    let n = count_while(s, p, 41, b64);
    (n == 40 && !matches!(at(s, p + 40), b'=')).then_some((p, p + 40))
}

/// AWS access key id at `st`: `AKIA`/`ASIA` and 16 of `[A-Z0-9]`.
fn aws(s: &[u8], st: usize) -> Option<usize> {
    let n = run(s, st + 4, 16, |b| upper(b) || digit(b));
    let end = st + 4 + 16;
    (n == 16 && !word_after(s, end)).then_some(end)
}

/// Google API key at `st` (`AIza`): exactly 35 of `[A-Za-z0-9_-]` follow
/// (the keys are 39 bytes long), then no further base64url byte but for
/// one to three `_` (Markdown emphasis: `__AIza…__`).
fn google(s: &[u8], st: usize) -> Option<usize> {
    let n = run(s, st + 4, 39, b64url);
    let end = st + 4 + 35;
    let tail = s.get(end..st + 4 + n).unwrap_or_default();
    ((35..=38).contains(&n) && tail.iter().all(|b| *b == b'_')).then_some(end)
}

/// GitHub token at `st`: `gh[pousr]_` and 36+ alphanumerics.
fn github(s: &[u8], st: usize) -> Option<usize> {
    let n = run(s, st + 4, KEY_MAX, alnum);
    let end = st + 4 + n;
    ((36..=KEY_MAX).contains(&n) && !word_after(s, end)).then_some(end)
}

/// Fine-grained GitHub PAT at `st`: `github_pat_` and 22+ of `[A-Za-z0-9_]`.
fn github_pat(s: &[u8], st: usize) -> Option<usize> {
    let n = run(s, st + 11, KEY_MAX, word);
    let end = st + 11 + n;
    ((22..=KEY_MAX).contains(&n) && !b64url(at(s, end))).then(|| trim_emphasis(s, st, st + 11, end, 22))
}

/// OpenAI key at `st` (`sk-`): `sk-proj-`/`sk-svcacct-`/`sk-admin-` and 20+
/// of `[A-Za-z0-9_-]`, or `sk-` and 32+ of `[A-Za-z0-9_-]`; the body holds a
/// digit. `sk-ant-` is Anthropic's.
fn openai(s: &[u8], st: usize) -> Option<usize> {
    let body = st + 3;
    if starts_with_at(s, body, b"ant-") {
        return None;
    }
    let min = if starts_with_at(s, body, b"proj-") {
        25
    } else if starts_with_at(s, body, b"svcacct-") {
        28
    } else if starts_with_at(s, body, b"admin-") {
        26
    } else {
        32
    };
    token_body(s, st, body, min)
}

/// Anthropic key at `st`: `sk-ant-` and 32+ of `[A-Za-z0-9_-]`.
fn anthropic(s: &[u8], st: usize) -> Option<usize> {
    if !starts_with_at(s, st, b"sk-ant-") {
        return None;
    }
    token_body(s, st, st + 7, 32)
}

/// Slack token at `st`: `xox[baprse]-` (bot, app, user, refresh, legacy,
/// rotation refresh) or `xapp-` (app-level), then 10+ of `[A-Za-z0-9-]`,
/// with a digit.
fn slack(s: &[u8], st: usize) -> Option<usize> {
    let body = st + 5;
    let n = run(s, body, KEY_MAX, |b| alnum(b) || b == b'-');
    let end = body + n;
    let has_digit = s.get(body..end).is_some_and(|r| r.iter().any(|b| digit(*b)));
    ((10..=KEY_MAX).contains(&n) && has_digit && !word_after(s, end)).then_some(end)
}

/// Slack webhook URL (incoming webhooks `hooks.slack.com/services/T…/B…/…`,
/// workflow webhooks `…/workflows/…` and `…/triggers/…`; the path is the
/// secret) around the digit at `i`, which lies in one of the path's first
/// four segments (a Slack ID such as `T0123ABCD`): `(start, end)`, from
/// `https://` or `http://` when written, else from `hooks`, to the end of
/// the path. The path has 3 or more segments of `[A-Za-z0-9]`, the last of
/// 16 or more (the secret: 24 in Slack's own examples).
fn slack_webhook(s: &[u8], i: usize) -> Option<(usize, usize)> {
    const HOST: &[u8] = b"hooks.slack.com/";
    let mut seg = i;
    for _ in 0..4 {
        // the start of the segment holding `seg`, after its `/`
        let mut a = seg;
        while a > 0 && seg - a < 64 && alnum(at(s, a - 1)) {
            a -= 1;
        }
        let slash = a.checked_sub(1).filter(|&p| at(s, p) == b'/')?;
        let kind = [&b"services"[..], b"workflows", b"triggers"]
            .into_iter()
            .find(|k| {
                slash >= k.len() + HOST.len()
                    && s.get(slash - k.len() - HOST.len()..slash).is_some_and(|w| w.get(..HOST.len()).is_some_and(|h| h.eq_ignore_ascii_case(HOST)) && w.ends_with(k))
            });
        if let Some(k) = kind {
            let host = slash - k.len() - HOST.len();
            let path = slash + 1;
            let mut end = path + run(s, path, 256, |b| alnum(b) || b == b'/');
            while end > path && at(s, end - 1) == b'/' {
                end -= 1;
            }
            let segs: Vec<&[u8]> = s.get(path..end)?.split(|b| *b == b'/').collect();
            let ok = segs.len() >= 3 && segs.iter().all(|g| !g.is_empty()) && segs.last().is_some_and(|g| g.len() >= 16);
            if !ok || alnum(at(s, end)) {
                return None;
            }
            let start = [&b"https://"[..], b"http://"]
                .into_iter()
                .find(|sch| host >= sch.len() && s.get(host - sch.len()..host).is_some_and(|w| w.eq_ignore_ascii_case(sch)))
                .map_or(host, |sch| host - sch.len());
            // glued to a word or a longer host name (`evil-hooks…`), not
            // after an escape (`\n`, `%20`) or a full stop before `https://`
            let b = back(s, start, 1);
            let glued = (word(b) || b == b'-' || (b == b'.' && start == host)) && !escape_before(s, start) && !percent_escape_before(s, start) && !emphasis_before(s, start);
            return (!glued).then_some((start, end));
        }
        seg = slash.checked_sub(1).filter(|&p| alnum(at(s, p)))?;
    }
    None
}

fn token_body(s: &[u8], st: usize, body: usize, min: usize) -> Option<usize> {
    let n = run(s, body, KEY_MAX, b64url);
    let end = body + n;
    let has_digit = s.get(body..end).is_some_and(|r| r.iter().any(|b| digit(*b)));
    ((min..=KEY_MAX).contains(&n) && has_digit).then(|| trim_emphasis(s, st, body, end, min))
}

/// JWS compact (RFC 7515: three base64url segments, the header starting
/// `eyJ`, i.e. `{"`; an empty signature is allowed) or JWE compact (RFC 7516:
/// five segments, the encrypted key may be empty) at `st`.
fn jwt(s: &[u8], st: usize) -> Option<usize> {
    let mut pos = st;
    let mut lens = [0usize; 5];
    let mut nseg = 0usize;
    loop {
        let n = run(s, pos, JWT_MAX, b64url);
        *lens.get_mut(nseg)? = n;
        nseg += 1;
        pos += n;
        if pos - st > JWT_MAX {
            return None;
        }
        if at(s, pos) == b'.' && nseg < 5 {
            pos += 1;
        } else {
            break;
        }
    }
    // "h.p.s." or "h.p." at the end of a sentence: the last dot is prose
    if nseg == 4 && lens.get(3) == Some(&0) {
        nseg = 3;
        pos -= 1;
    }
    let [h, p, _, iv, ct] = lens;
    let ok = match nseg {
        3 => h >= 12 && p >= 2,
        5 => h >= 12 && iv >= 2 && ct >= 2 && lens.get(4).is_some_and(|t| *t >= 2),
        _ => false,
    };
    (ok && !glued_after(s, pos)).then(|| trim_emphasis(s, st, st, pos, 0))
}

/// Parses a PEM private-key armor line at `i` (`-----BEGIN ` or
/// `-----END `, given by `lead`): uppercase words ending `PRIVATE KEY` (or
/// `PRIVATE KEY BLOCK`, OpenPGP) and `-----`. Returns its end.
fn pem_line(s: &[u8], i: usize, lead: &[u8]) -> Option<usize> {
    if !starts_with_at(s, i, lead) {
        return None;
    }
    let mut pos = i + lead.len();
    let mut words: Vec<&[u8]> = Vec::new();
    loop {
        let n = run(s, pos, 16, |b| upper(b) || digit(b));
        if n == 0 || n > 16 || words.len() >= 6 {
            return None;
        }
        words.push(s.get(pos..pos + n)?);
        pos += n;
        match at(s, pos) {
            b' ' => pos += 1,
            b'-' => break,
            _ => return None,
        }
    }
    let pk: [&[u8]; 2] = [b"PRIVATE", b"KEY"];
    let pkb: [&[u8]; 3] = [b"PRIVATE", b"KEY", b"BLOCK"];
    let tail_ok = words.ends_with(&pk) || words.ends_with(&pkb);
    (tail_ok && starts_with_at(s, pos, b"-----")).then_some(pos + 5)
}

/// Outcome of looking for a PEM block at a `-----BEGIN` header.
enum Pem {
    Found(usize),
    /// The footer may still come (stream, within the window).
    Open,
}

/// PEM private key (RFC 7468) at `i`: from the `-----BEGIN … PRIVATE
/// KEY-----` line through the matching `-----END … PRIVATE KEY-----` line
/// when it follows within [`PEM_WINDOW`] bytes and before any other
/// `-----BEGIN ` header; without a footer, the header and the base64 lines
/// right after it. Open (in a stream) while neither a footer, another
/// header nor the end of the window has come.
fn pem(s: &[u8], i: usize, at_end: bool, st: &mut ScanState) -> Option<Pem> {
    let hdr_end = pem_line(s, i, b"-----BEGIN ")?;
    // a block ends before the next armor header: the window stops there
    let next_begin = st.begin.next(s, hdr_end, false).map(|(p, _)| p);
    let limit = (i + PEM_WINDOW).min(s.len()).min(next_begin.unwrap_or(usize::MAX));
    if let Some((_, e)) = st.footer.next(s, hdr_end, true) {
        if e <= limit {
            return Some(Pem::Found(e));
        }
    }
    if !at_end && next_begin.is_none() && s.len() < i + PEM_WINDOW {
        return Some(Pem::Open);
    }
    // No footer: header plus the base64 body lines that follow it.
    let mut end = hdr_end;
    let mut pos = hdr_end;
    loop {
        let mut p = pos;
        if at(s, p) == b'\r' {
            p += 1;
        }
        if at(s, p) != b'\n' {
            break;
        }
        p += 1;
        let n = run(s, p, PEM_WINDOW, |b| alnum(b) || b == b'+' || b == b'/' || b == b'=');
        let e = p + n;
        if n < 4 || e > limit || !(matches!(at(s, e), b'\r' | b'\n') || (e == s.len() && at_end)) {
            break;
        }
        end = e;
        pos = e;
    }
    Some(Pem::Found(end))
}

/// The tail of a PEM private key cut from its `-----BEGIN` line (a chunk
/// of a key file, RFC 7468 §2): the `-----END … PRIVATE KEY-----` footer
/// line at `i` (at the start of a line) and the base64 lines right before
/// it, as `(start, end)`. See [`pem_tail_start`] for which lines count;
/// `None` when no line before the footer does (a lone footer reveals
/// nothing). A tail that follows its own header lies inside the block
/// [`pem`] finds, and the two merge into one span.
fn pem_tail(s: &[u8], i: usize, floor: usize) -> Option<(usize, usize)> {
    let e = pem_line(s, i, b"-----END ")?;
    // the footer may be indented (YAML block scalars, code)
    let line = blank_start(s, i, i.saturating_sub(64));
    Some((pem_tail_start(s, line, floor)?.min(i), e))
}

/// The start of the run of blanks (space, tab) and invisible characters
/// ([`invisible_at`]) that ends at `j` (not before `lo`).
pub(crate) fn blank_start(s: &[u8], mut j: usize, lo: usize) -> usize {
    while j > lo {
        let b = at(s, j - 1);
        if b == b' ' || b == b'\t' {
            j -= 1;
            continue;
        }
        let l = if b >= 0x80 || back(s, j, 6) == b'\\' { invisible_before(s, j) } else { 0 };
        if l == 0 || j - l < lo {
            break;
        }
        j -= l;
    }
    j
}

/// `x` raised to `floor` (a stream's release point); a tail never starts
/// with the line break at `floor`.
fn at_or_after(s: &[u8], x: usize, floor: usize) -> usize {
    if x >= floor {
        return x;
    }
    let mut p = floor;
    while matches!(at(s, p), b'\r' | b'\n') {
        p += 1;
    }
    p
}

/// Where the base64 body lines before the line starting at `line` begin:
/// the run of whole lines above it made only of `[A-Za-z0-9+/=]` (LF or
/// CRLF ends, indentation and trailing blanks allowed; the line right above
/// `line` may be short, as a body's last line is, the others hold 16 bytes
/// or more), and, above that run, the trailing base64 token of the next
/// line when it looks like part of a key ([`keyish`]: a body line cut
/// mid-way, `…found: MIIEvQIBADAN`) and is not glued to a word by `_`,
/// `-` or `.`. Looks back at most [`PEM_WINDOW`] bytes; the result is
/// raised to `floor`. `None` when there is neither. The stream masker
/// (`stream.rs`) holds text from here while a footer may still come, so
/// that streamed and whole text mask alike.
pub(crate) fn pem_tail_start(s: &[u8], line: usize, floor: usize) -> Option<usize> {
    let lo = line.saturating_sub(PEM_WINDOW);
    let mut top = None;
    // `nl`: the line feed that ends the line above
    let mut nl = line.checked_sub(1).filter(|&p| at(s, p) == b'\n')?;
    loop {
        let le = blank_start(s, if nl > 0 && at(s, nl - 1) == b'\r' { nl - 1 } else { nl }, lo);
        let ls = b64_run_start(s, le, lo);
        let n = le - ls;
        if n == 0 {
            return top;
        }
        let indent = blank_start(s, ls, lo);
        // (the start of a stream's buffer is no line start: text was released before it)
        let whole = if indent == lo { lo > 0 || floor == 0 } else { at(s, indent - 1) == b'\n' };
        if whole && (top.is_none() || n >= 16) {
            top = Some(at_or_after(s, ls, floor));
            if indent <= floor || indent == lo {
                return top;
            }
            nl = indent - 1;
            continue;
        }
        let glued = ls > lo && matches!(at(s, ls - 1), b'_' | b'-' | b'.');
        return if !glued && keyish(s.get(ls..le).unwrap_or(&[])) { Some(at_or_after(s, ls, floor)) } else { top };
    }
}

/// The start of the run of `[A-Za-z0-9+/=]` that ends at `end` (not before
/// `lo`); invisible characters ([`invisible_at`]) inside it do not end it.
pub(crate) fn b64_run_start(s: &[u8], end: usize, lo: usize) -> usize {
    let b64 = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    let mut ls = end;
    loop {
        ls -= s.get(lo..ls).map_or(0, |r| r.iter().rev().take_while(|b| b64(b)).count());
        if ls <= lo {
            return ls;
        }
        // an escaped one (`\u200b`): its `u200b` is taken already
        if at(s, ls - 1) == b'\\' && invisible_at(s, ls - 1) == 6 {
            ls -= 1;
            continue;
        }
        match invisible_before(s, ls) {
            l if l > 0 && at(s, ls - 1) >= 0x80 && ls - l >= lo => ls -= l,
            _ => return ls,
        }
    }
}

/// The byte length of an invisible format character at `i`, raw (UTF-8)
/// or as a JSON `\uXXXX` escape (JSON held in text), or 0: U+00AD soft
/// hyphen, U+200B–U+200F zero width space, (non-)joiner and direction
/// marks, U+202A–U+202E and U+2066–U+2069 bidirectional embeddings and
/// isolates, U+2060–U+2064 word joiner and invisible operators, U+FE00–
/// U+FE0F variation selectors, U+FEFF zero width no-break space (Unicode
/// 15, §23.2 "Layout Controls" and §23.4 "Variation Selectors"). They
/// split a value for a scanner but not for a reader (or an LLM).
pub(crate) fn invisible_at(s: &[u8], i: usize) -> usize {
    match s.get(i..).unwrap_or(&[]) {
        [0xC2, 0xAD, ..] => 2,
        [0xE2, 0x80, 0x8B..=0x8F | 0xAA..=0xAE, ..] | [0xE2, 0x81, 0xA0..=0xA4 | 0xA6..=0xA9, ..] | [0xEF, 0xBB, 0xBF, ..] | [0xEF, 0xB8, 0x80..=0x8F, ..] => 3,
        [b'\\', b'u', h @ ..] if h.len() >= 4 => {
            let code = std::str::from_utf8(h.get(..4).unwrap_or(&[])).ok().and_then(|x| u32::from_str_radix(x, 16).ok());
            match code {
                Some(0xAD | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x2069 | 0xFE00..=0xFE0F | 0xFEFF) => 6,
                _ => 0,
            }
        }
        _ => 0,
    }
}

/// The length of the start of an invisible character (raw or `\u`
/// escaped, see [`invisible_at`]) that `buf` ends with, cut by the
/// chunk's end (not before `from`); 0 if none.
pub(crate) fn partial_invisible(buf: &[u8], from: usize) -> usize {
    let n = buf.len();
    (1..=5)
        .find(|&k| {
            let Some(t) = n.checked_sub(k).filter(|&p| p >= from).and_then(|p| buf.get(p..)) else { return false };
            match t {
                [0xC2 | 0xE2 | 0xEF] | [0xE2, 0x80 | 0x81] | [0xEF, 0xBB | 0xB8] => true,
                [b'\\', rest @ ..] => rest.first().is_none_or(|u| *u == b'u') && rest.iter().skip(1).all(u8::is_ascii_hexdigit),
                _ => false,
            }
        })
        .unwrap_or(0)
}

/// The byte length of an invisible character ([`invisible_at`]) that ends
/// right before `j`, or 0.
pub(crate) fn invisible_before(s: &[u8], j: usize) -> usize {
    [2, 3, 6].into_iter().find(|&l| j >= l && invisible_at(s, j - l) == l).unwrap_or(0)
}

/// Whether a base64 token at the end of a line looks like part of a key
/// rather than a word: 16 bytes or more, or 4 or more holding a digit, `+`,
/// `/` or `=`.
pub(crate) fn keyish(tok: &[u8]) -> bool {
    tok.len() >= 16 || (tok.len() >= 4 && tok.iter().any(|b| digit(*b) || matches!(b, b'+' | b'/' | b'=')))
}

/// Scans `s` (a decoded string, or one valid-UTF-8 segment of a stream
/// buffer) with the enabled built-ins; pushes candidates with positions
/// offset by `base`. A PEM header at or after `open_from` (offset by `base`)
/// whose footer has not come and whose window is not over is *open* — more
/// text may follow `s` (`usize::MAX`: the text ends here, nothing is open).
/// Returns the start of the first open PEM block, if any. `from` (offset
/// by `base`): a key tail ([`pem_tail`]) starts no earlier (a stream's text
/// before it is out already).
pub(crate) fn scan(en: &Enabled, anchors: &Anchors, s: &[u8], base: usize, open_from: usize, from: usize, out: &mut Vec<Cand>) -> Option<usize> {
    let mut open = None;
    let mut st = ScanState { floor: from.saturating_sub(base), ..ScanState::default() };
    let mut i = 0usize;
    let mut carry = Carry::default();
    while i < s.len() {
        let (b, n) = classify::block(s, i);
        let m = classify::scan_masks(&b, anchors);
        let mut trig = anchor_bits(&m, classify::first(n), &mut carry);
        while trig != 0 {
            let k = trig.trailing_zeros() as usize;
            trig &= trig - 1;
            anchor(en, s, i + k, at(s, i + k), open_from, &mut st, &mut open, base, out);
        }
        i += 16;
    }
    open
}

/// What one scan of a text remembers between anchors.
#[derive(Default)]
struct ScanState {
    /// IPv6 candidates end here (no new one starts inside).
    ipv6_done: usize,
    /// Key tails start here or later (see [`scan`]).
    floor: usize,
    /// The last search for a valid PEM footer line.
    footer: NextLine,
    /// The last search for a `-----BEGIN ` (any armor header).
    begin: NextLine,
}

/// The first line at or after `from` that starts with a PEM armor lead
/// (`(start, end)`; for footers, the first valid `-----END … PRIVATE
/// KEY-----` line), remembered so that many headers without a footer do not
/// each search the same window again (that made the scan quadratic).
#[derive(Default)]
struct NextLine {
    searched: bool,
    from: usize,
    found: Option<(usize, usize)>,
}

impl NextLine {
    /// `footer`: find a valid `-----END ` line; else any `-----BEGIN `.
    fn next(&mut self, s: &[u8], from: usize, footer: bool) -> Option<(usize, usize)> {
        if self.searched && self.from <= from && self.found.is_none_or(|(p, _)| p >= from) {
            return self.found;
        }
        let lead: &[u8] = if footer { b"-----END " } else { b"-----BEGIN " };
        let mut f = from;
        let found = loop {
            let Some(off) = s.get(f..).and_then(|r| r.windows(lead.len()).position(|w| w == lead)) else { break None };
            let p = f + off;
            if !footer {
                break Some((p, p + lead.len()));
            }
            if let Some(e) = pem_line(s, p, lead) {
                break Some((p, e));
            }
            f = p + 1;
        };
        *self = NextLine { searched: true, from, found };
        found
    }
}

/// The previous block's masks, for [`anchor_bits`] (bit 15: its last byte).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Carry {
    dig: u16,
    low: u16,
    join: u16,
    us: u16,
    bs: u16,
}

/// The bytes of a block (within `valid`) where [`scan`] runs a detector:
/// anchor bytes, except digits that continue a digit run or are certainly
/// glued to a longer token (see `glued_before`): after a-z, or after
/// '-', '.' or '_' that follows a digit or a-z. (Runs after A-Z stay anchors: IBANs
/// start there.) Blocks must be consecutive; `carry` links them.
#[inline(always)]
pub(crate) fn anchor_bits(m: &classify::ScanMasks, valid: u16, carry: &mut Carry) -> u16 {
    let mut trig = m.trig & valid;
    // near a `\` (an escape: `\n4111…`, `\u00a04111…`, at most 6 bytes back)
    // every digit stays an anchor: the detectors' own boundary checks decide
    if trig & m.dig != 0 && (m.bs | carry.bs) == 0 {
        // byte k's left neighbour(s), carried over from the previous block
        let p = *carry;
        let prev = |x: u16, p: u16| (x << 1) | (p >> 15);
        let prev2 = |x: u16, p: u16| (x << 2) | (p >> 14);
        // (`_` glues only after a digit or a-z: `_4111…` may open Markdown
        // emphasis, and the detector's own check decides there)
        let glued = prev(m.low, p.low) | ((prev(m.join, p.join) | prev(m.us, p.us)) & prev2(m.dig | m.low, p.dig | p.low));
        trig &= !(m.dig & (prev(m.dig, p.dig) | glued));
    }
    *carry = Carry { dig: m.dig, low: m.low, join: m.join, us: m.us, bs: m.bs };
    trig
}

/// [`scan`] of a complete string `s` whose anchor positions (from
/// [`anchor_bits`], in order) are already known.
pub(crate) fn scan_at(en: &Enabled, s: &[u8], positions: &[usize], out: &mut Vec<Cand>) {
    let mut open = None;
    let mut st = ScanState::default();
    // anchors before `covered` lie inside a value found so far
    let mut covered = 0usize;
    for &i in positions {
        if i < covered {
            continue;
        }
        let n = out.len();
        anchor(en, s, i, at(s, i), usize::MAX, &mut st, &mut open, 0, out);
        if en.skip_covered {
            for c in out.get(n..).unwrap_or(&[]) {
                if c.end > covered && contained_after(s, c.end) {
                    covered = c.end;
                }
            }
        }
    }
}

/// Whether every built-in value found from an anchor inside a value that
/// ends at `e` (in the complete string `s`) ends at or before `e`: `e` is
/// the end of `s`, or the byte there is punctuation that no built-in takes
/// into a value (`,` `;` `"` `'` `!` `?` `]` `}` `<` `>`, a tab or line
/// break). Not a space: IBANs run on past `GB82 WEST…`, and one may start
/// inside a token found before it (`sk-…_-GB82 WEST…`). Such a value's own
/// bytes would then lie inside the one found (the built-ins look back at
/// most to the start of their own token), and overlapping candidates merge into
/// one span attributed to the earliest and longest (`Inner::select`): the
/// anchors in between can be skipped without changing the output. On a
/// PII-dense body this skips the phone, card and SSN checks that the later
/// digit groups of a phone or card number would otherwise run.
fn contained_after(s: &[u8], e: usize) -> bool {
    match s.get(e) {
        None => true,
        Some(b',' | b';' | b'"' | b'\'' | b'!' | b'?' | b']' | b'}' | b'<' | b'>' | b'\t' | b'\n' | b'\r') => true,
        Some(_) => false,
    }
}

/// Handles the anchor byte `b` at `i` (see [`scan`]).
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn anchor(en: &Enabled, s: &[u8], i: usize, b: u8, open_from: usize, state: &mut ScanState, open: &mut Option<usize>, base: usize, out: &mut Vec<Cand>) {
    let push = |start: usize, end: usize, det: u16, out: &mut Vec<Cand>| {
        out.push(Cand { start: base + start, end: base + end, det });
    };
    {
        match b {
            b'0'..=b'9' => {
                let p = back(s, i, 1);
                if digit(p) && unicode_escape_before(s, i).is_none() {
                    return;
                }
                // "jane%40example.com": a percent-encoded `@`
                if p == b'%' && b == b'4' && at(s, i + 1) == b'0' {
                    if let Some(d) = en.get(Builtin::Email) {
                        if let Some((st, e)) = email_sep(s, i - 1, 3) {
                            push(st, e, d, out);
                            return;
                        }
                    }
                }
                // a Slack ID (`T0…`, `B0…`) in a webhook URL's path
                if upper(p) || p == b'/' {
                    if let Some(d) = en.get(Builtin::SlackToken) {
                        if let Some((st, e)) = slack_webhook(s, i) {
                            push(st, e, d, out);
                            return;
                        }
                    }
                }
                numeric(en, s, i, &mut |st, e, d| push(st, e, d, out));
            }
            // "q=card%204111…", "ssn%3a123-45-6789": a value right after a
            // URL percent-escape whose last byte is a digit or a lowercase
            // hex letter (the value's first digit is no anchor there)
            b'%' => {
                let (h, j) = (at(s, i + 2), i + 3);
                if at(s, i + 1).is_ascii_hexdigit() && (digit(h) || matches!(h, b'a'..=b'f')) && digit(at(s, j)) {
                    numeric(en, s, j, &mut |st, e, d| push(st, e, d, out));
                }
            }
            b'@' => {
                if let Some(d) = en.get(Builtin::Email) {
                    if let Some((st, e)) = email(s, i) {
                        push(st, e, d, out);
                    }
                }
            }
            // "jane&#64;example.com", "jane&#x40;…", "jane&commat;…": an
            // HTML character reference for `@`, found at its `;`
            b';' => {
                if let Some(d) = en.get(Builtin::Email) {
                    if let Some(amp) = at_reference_before(s, i) {
                        if let Some((st, e)) = email_sep(s, amp, i + 1 - amp) {
                            push(st, e, d, out);
                        }
                    }
                }
            }
            b'-' => {
                let st2 = i.wrapping_sub(2);
                if back(s, i, 2) == b's' && back(s, i, 1) == b'k' && i >= 2 && !b64url_before(s, st2) {
                    if let Some(d) = en.get(Builtin::AnthropicKey) {
                        if let Some(e) = anthropic(s, st2) {
                            push(st2, e, d, out);
                        }
                    }
                    if let Some(d) = en.get(Builtin::OpenaiKey) {
                        if let Some(e) = openai(s, st2) {
                            push(st2, e, d, out);
                        }
                    }
                }
                let st4 = i.wrapping_sub(4);
                if i >= 4
                    && ((s.get(st4..st4 + 3) == Some(b"xox") && matches!(back(s, i, 1), b'b' | b'a' | b'p' | b'r' | b's' | b'e'))
                        || s.get(st4..i) == Some(b"xapp"))
                    && !b64url_before(s, st4)
                {
                    if let Some(d) = en.get(Builtin::SlackToken) {
                        if let Some(e) = slack(s, st4) {
                            push(st4, e, d, out);
                        }
                    }
                }
                if back(s, i, 1) != b'-' && at(s, i + 5) == b'B' {
                    if let Some(d) = en.get(Builtin::PrivateKey) {
                        match pem(s, i, base + i < open_from, state) {
                            Some(Pem::Found(e)) => push(i, e, d, out),
                            Some(Pem::Open) if open.is_none() => *open = Some(base + i),
                            _ => {}
                        }
                    }
                }
                if matches!(back(s, i, 1), b'\n' | b' ' | b'\t') && at(s, i + 5) == b'E' {
                    if let Some(d) = en.get(Builtin::PrivateKey) {
                        if let Some((st, e)) = pem_tail(s, i, state.floor) {
                            push(st, e, d, out);
                        }
                    }
                }
            }
            b'_' => {
                let st3 = i.wrapping_sub(3);
                if i >= 3
                    && back(s, i, 3) == b'g'
                    && back(s, i, 2) == b'h'
                    && matches!(back(s, i, 1), b'p' | b'o' | b'u' | b's' | b'r')
                    && !b64url_before(s, st3)
                {
                    if let Some(d) = en.get(Builtin::GithubToken) {
                        if let Some(e) = github(s, st3) {
                            push(st3, e, d, out);
                        }
                    }
                }
                // `aws_secret_access_key = wJalr…`: the secret half of an
                // AWS access key, after its name
                if back(s, i, 1) | 0x20 == b't' && at(s, i + 1) | 0x20 == b'a' {
                    if let Some(d) = en.get(Builtin::AwsAccessKey) {
                        if let Some((st, e)) = aws_secret(s, i) {
                            push(st, e, d, out);
                        }
                    }
                }
                let st6 = i.wrapping_sub(6);
                if i >= 6 && s.get(st6..st6 + 11) == Some(b"github_pat_") && !b64url_before(s, st6) {
                    if let Some(d) = en.get(Builtin::GithubToken) {
                        if let Some(e) = github_pat(s, st6) {
                            push(st6, e, d, out);
                        }
                    }
                }
            }
            b'I' => {
                // `AIza…`: a Google API key; a `-` or `_` may glue it to a
                // name (`api-key-AIza…`, `__AIza…__`), a letter or digit not
                if i >= 1 && back(s, i, 1) == b'A' && at(s, i + 1) == b'z' && at(s, i + 2) == b'a' && !(alnum(back(s, i, 2)) && !escape_before(s, i - 1) && !percent_escape_before(s, i - 1)) {
                    if let Some(d) = en.get(Builtin::GoogleApiKey) {
                        if let Some(e) = google(s, i - 1) {
                            push(i - 1, e, d, out);
                        }
                    }
                }
                let st = i.wrapping_sub(2);
                if i >= 2
                    && back(s, i, 2) == b'A'
                    && matches!(back(s, i, 1), b'K' | b'S')
                    && at(s, i + 1) == b'A'
                    && !word_before(s, st)
                {
                    if let Some(d) = en.get(Builtin::AwsAccessKey) {
                        if let Some(e) = aws(s, st) {
                            push(st, e, d, out);
                        }
                    }
                }
            }
            b'J' => {
                let st = i.wrapping_sub(2);
                if i >= 2 && back(s, i, 2) == b'e' && back(s, i, 1) == b'y' && !b64url_before(s, st) && back(s, st, 1) != b'.' {
                    if let Some(d) = en.get(Builtin::Jwt) {
                        if let Some(e) = jwt(s, st) {
                            push(st, e, d, out);
                        }
                    }
                }
            }
            b':' => {
                if i < state.ipv6_done {
                    return;
                }
                if let Some(d) = en.get(Builtin::Ipv6) {
                    if let Some((st, e)) = ipv6(s, i) {
                        push(st, e, d, out);
                        state.ipv6_done = e;
                    }
                }
            }
            _ => {}
        }
    }
}

/// The digit-anchored detectors at a digit-run start `i`.
fn numeric(en: &Enabled, s: &[u8], i: usize, push: &mut impl FnMut(usize, usize, u16)) {
    let prev = back(s, i, 1);
    if let Some(d) = en.get(Builtin::Iban) {
        if i >= 2 && upper(prev) && upper(back(s, i, 2)) && !glued_before(s, i - 2) {
            if let Some(e) = iban(s, i - 2) {
                push(i - 2, e, d);
            }
        }
    }
    let phone_d = en.get(Builtin::Phone);
    let mut phone_done = false;
    // a `+` opens a number even after `Tel.` or `Mob.`: only a word glues to it
    let opener = prev == b'+' || prev == b'(';
    if opener && i >= 1 && !(if prev == b'+' { word_before(s, i - 1) } else { glued_before(s, i - 1) }) {
        if let Some(d) = phone_d {
            // "(+44) …" from its parenthesis, else from the `+` or `(`
            let cc = (prev == b'+' && i >= 2 && back(s, i, 2) == b'(' && !glued_before(s, i - 2)).then(|| i - 2);
            if let Some((st, e)) = cc.and_then(|st| phone(s, st).map(|e| (st, e))).or_else(|| phone(s, i - 1).map(|e| (i - 1, e))) {
                push(st, e, d);
                phone_done = true;
            }
        }
    }
    if glued_before(s, i) {
        return;
    }
    let run_len = count_while(s, i, 20, digit);
    let nx = at(s, i + run_len);
    // the separator after the run: its class, its length
    let (nsep, nlen) = if matches!(nx, b' ' | b'-' | b'.' | b'/') { (nx, 1) } else { wide_sep_at(s, i + run_len, nx).unwrap_or((0, 1)) };
    let first = at(s, i);
    if let Some(d) = en.get(Builtin::PaymentCard) {
        // every brand starts with 2..6
        let shape = (13..=19).contains(&run_len) || ((3..=6).contains(&run_len) && (nsep == b' ' || nsep == b'-'));
        if shape && (b'2'..=b'6').contains(&first) {
            if let Some(e) = card(s, i) {
                push(i, e, d);
            }
        }
    }
    if let Some(d) = en.get(Builtin::UsSsn) {
        let f = en.ssn_forms;
        let sep = match (run_len, nsep) {
            (3, b'-') if f.dashed => Some(b'-'),
            (3, b' ') if f.spaced => Some(b' '),
            (9, _) if f.plain => Some(0),
            _ => None,
        };
        if let Some(e) = sep.and_then(|sep| ssn(s, i, sep)) {
            push(i, e, d);
        }
    }
    if let Some(d) = phone_d {
        let after = i + run_len + nlen;
        let next_group = digit(at(s, after)) || at(s, after) == b'(';
        // "0044 …", "00 44 …": the `00` international prefix
        let intl = (2..=5).contains(&run_len) && first == b'0' && at(s, i + 1) == b'0' && at(s, i + 2) != b'0' && matches!(nsep, b' ' | b'-');
        // cheap shape checks before parsing: "1-800-…", "415-555-…", "020 7946 …"
        let shape = match run_len {
            // "1-800-…"; Russian trunk "8 (495) …"
            1 => (first == b'1' || first == b'8') && next_group,
            3 if first != b'0' => first >= b'2' && digit(at(s, after)) && digit(at(s, after + 1)) && digit(at(s, after + 2)),
            // trunk "020 …"; international "0044 …", "00 44 …" (not the
            // `\u0044` escape of JSON held in text)
            2..=5 => first == b'0' && digit(at(s, after)) && (at(s, i + 1) != b'0' || (intl && !(prev == b'u' && back(s, i, 2) == b'\\'))),
            _ => false,
        };
        // a national number is not the tail of a longer digit run grouped
        // the same way ("0044 0532 0130 01", "+0 415 555 0134")
        // (by separator class: `415 555` after `+0\u{a0}` is grouped too)
        let grouped = || {
            if nlen == 1 && prev < 0x80 {
                prev == nx && digit(back(s, i, 2))
            } else {
                sep_before(s, i).is_some_and(|(c, l)| c == nsep && digit(back(s, i, l + 1)))
            }
        };
        if !phone_done && shape && nsep != 0 && !grouped() {
            if let Some(e) = phone(s, i) {
                push(i, e, d);
            }
        }
    }
    if let Some(d) = en.get(Builtin::Ipv4) {
        if run_len <= 3 && nx == b'.' {
            if let Some(e) = ipv4(s, i) {
                push(i, e, d);
            }
        }
    }
}
