//! JSON-aware masking: a small validating JSON lexer (RFC 8259) that walks a
//! document once, runs the detectors on decoded string values, applies the
//! field rules, and copies every untouched byte as it was.

use super::classify::{self, Anchors};
use super::detectors;
use super::{Counts, Inner, MaskError, RawFields, Tally};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// One step of a compiled JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PSeg {
    Key(String),
    AnyKey,
    Idx(usize),
    AnyIdx,
}

/// A field rule: a bare key name (any depth, ASCII case-insensitive) or a
/// path from the root.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Name(String),
    Path(Vec<PSeg>),
}

/// Compiled `masking.fields`.
#[derive(Debug, Clone, Default)]
pub(crate) struct FieldRules {
    redact: Vec<Rule>,
    skip: Vec<Rule>,
}

/// Parses a field rule: `name`, or `$` followed by `.key`, `.*`, `[N]`,
/// `[*]`, `['key']` / `["key"]` steps.
fn parse_rule(s: &str) -> Result<Rule, String> {
    let Some(rest) = s.strip_prefix('$') else {
        if s.is_empty() {
            return Err("must be a key name or a JSON path starting with '$'".into());
        }
        if s.contains(['.', '[', ']']) {
            return Err("a bare key name has no '.', '[' or ']': write a JSON path such as \"$.a.b\"".into());
        }
        return Ok(Rule::Name(s.to_string()));
    };
    let b = rest.as_bytes();
    let mut i = 0usize;
    let mut segs = Vec::new();
    let at = |i: usize| b.get(i).copied().unwrap_or(0);
    while i < b.len() {
        match at(i) {
            b'.' => {
                i += 1;
                if at(i) == b'*' {
                    segs.push(PSeg::AnyKey);
                    i += 1;
                } else {
                    let st = i;
                    while i < b.len() && !matches!(at(i), b'.' | b'[' | b']') {
                        i += 1;
                    }
                    let key = rest.get(st..i).unwrap_or("");
                    if key.is_empty() {
                        return Err(format!("empty key at byte {}", st + 1));
                    }
                    segs.push(PSeg::Key(key.to_string()));
                }
            }
            b'[' => {
                i += 1;
                match at(i) {
                    b'*' if at(i + 1) == b']' => {
                        segs.push(PSeg::AnyIdx);
                        i += 2;
                    }
                    q @ (b'\'' | b'"') => {
                        let st = i + 1;
                        let len = b.get(st..).and_then(|r| r.iter().position(|c| *c == q)).ok_or("unterminated quoted key")?;
                        let key = rest.get(st..st + len).unwrap_or("");
                        if at(st + len + 1) != b']' {
                            return Err("expected ']' after a quoted key".into());
                        }
                        segs.push(PSeg::Key(key.to_string()));
                        i = st + len + 2;
                    }
                    b'0'..=b'9' => {
                        let st = i;
                        while at(i).is_ascii_digit() {
                            i += 1;
                        }
                        let n: usize = rest.get(st..i).and_then(|d| d.parse().ok()).ok_or("array index too large")?;
                        if at(i) != b']' {
                            return Err("expected ']' after an array index".into());
                        }
                        segs.push(PSeg::Idx(n));
                        i += 1;
                    }
                    _ => return Err("expected an index, '*' or a quoted key after '['".into()),
                }
            }
            _ => return Err(format!("unexpected {:?} at byte {}", char::from(at(i)), i + 1)),
        }
    }
    if segs.is_empty() {
        return Err("the path selects the whole document; name a field".into());
    }
    Ok(Rule::Path(segs))
}

/// A step of the current position in the document.
enum Frame<'a> {
    Obj(Cow<'a, str>),
    Arr(usize),
}

fn rule_matches(rule: &Rule, path: &[Frame<'_>]) -> bool {
    match rule {
        Rule::Name(n) => matches!(path.last(), Some(Frame::Obj(k)) if k.eq_ignore_ascii_case(n)),
        Rule::Path(segs) => {
            segs.len() == path.len()
                && segs.iter().zip(path).all(|(s, f)| match (s, f) {
                    (PSeg::Key(a), Frame::Obj(k)) => a == k,
                    (PSeg::AnyKey, Frame::Obj(_)) => true,
                    (PSeg::Idx(n), Frame::Arr(i)) => n == i,
                    (PSeg::AnyIdx, Frame::Arr(_)) => true,
                    _ => false,
                })
        }
    }
}

/// What a field rule says about the value at a path.
enum Action {
    Redact(String),
    Skip,
}

impl FieldRules {
    pub(crate) fn compile(raw: &RawFields, at: &str, err: &mut impl FnMut(String, String)) -> FieldRules {
        let mut rules = FieldRules::default();
        for (i, s) in raw.redact.iter().enumerate() {
            match parse_rule(s) {
                Ok(r) => rules.redact.push(r),
                Err(e) => err(format!("{at}.redact[{i}]"), format!("invalid field rule {s:?}: {e}")),
            }
        }
        for (i, s) in raw.skip.iter().enumerate() {
            if raw.redact.contains(s) {
                err(format!("{at}.skip[{i}]"), format!("{s:?} is also in {at}.redact"));
                continue;
            }
            match parse_rule(s) {
                Ok(r) => rules.skip.push(r),
                Err(e) => err(format!("{at}.skip[{i}]"), format!("invalid field rule {s:?}: {e}")),
            }
        }
        rules
    }

    fn is_empty(&self) -> bool {
        self.redact.is_empty() && self.skip.is_empty()
    }

    fn action(&self, path: &[Frame<'_>]) -> Option<Action> {
        if self.redact.iter().any(|r| rule_matches(r, path)) {
            let label = match path.last() {
                Some(Frame::Obj(k)) if !k.is_empty() => format!("[{}]", k.to_uppercase()),
                _ => "[REDACTED]".to_string(),
            };
            return Some(Action::Redact(label));
        }
        if self.skip.iter().any(|r| rule_matches(r, path)) {
            return Some(Action::Skip);
        }
        None
    }
}

// ---------------------------------------------------------------- lexing

#[inline]
fn at(src: &[u8], i: usize) -> u8 {
    src.get(i).copied().unwrap_or(0)
}

#[inline]
fn ws(src: &[u8], mut i: usize) -> usize {
    while matches!(at(src, i), b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

fn hex4(src: &[u8], i: usize) -> Option<u32> {
    let h = src.get(i..i + 4)?;
    let s = std::str::from_utf8(h).ok()?;
    if !h.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// Validates the escape whose backslash is at `i - 1`; returns the index
/// after it and the code point it stands for.
fn escape(src: &[u8], i: usize) -> Result<(usize, char), MaskError> {
    let simple = match at(src, i) {
        b'"' => Some('"'),
        b'\\' => Some('\\'),
        b'/' => Some('/'),
        b'b' => Some('\u{8}'),
        b'f' => Some('\u{c}'),
        b'n' => Some('\n'),
        b'r' => Some('\r'),
        b't' => Some('\t'),
        b'u' => None,
        _ => return Err(MaskError::new(i, "invalid escape")),
    };
    if let Some(c) = simple {
        return Ok((i + 1, c));
    }
    let hi = hex4(src, i + 1).ok_or_else(|| MaskError::new(i, "invalid \\u escape"))?;
    if (0xDC00..=0xDFFF).contains(&hi) {
        return Err(MaskError::new(i, "lone low surrogate"));
    }
    if (0xD800..=0xDBFF).contains(&hi) {
        if at(src, i + 5) != b'\\' || at(src, i + 6) != b'u' {
            return Err(MaskError::new(i, "lone high surrogate"));
        }
        let lo = hex4(src, i + 7).ok_or_else(|| MaskError::new(i + 6, "invalid \\u escape"))?;
        if !(0xDC00..=0xDFFF).contains(&lo) {
            return Err(MaskError::new(i + 6, "lone high surrogate"));
        }
        let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
        let c = char::from_u32(cp).ok_or_else(|| MaskError::new(i, "invalid code point"))?;
        return Ok((i + 11, c));
    }
    let c = char::from_u32(hi).ok_or_else(|| MaskError::new(i, "invalid code point"))?;
    Ok((i + 5, c))
}

/// Scans the string whose opening quote is at `start - 1`: returns the index
/// of the closing quote, whether it holds escapes, whether it holds an
/// anchor byte (outside escapes). 16 bytes at a time (see `classify`).
#[inline]
fn scan_string(src: &[u8], anchors: &Anchors, start: usize) -> Result<(usize, bool, bool), MaskError> {
    let mut i = start;
    let mut esc = false;
    let mut trig = 0u16;
    loop {
        let (b, n) = classify::block(src, i);
        let m = classify::string_masks(&b, anchors);
        let stop = m.stop & classify::first(n);
        if stop == 0 {
            trig |= m.trig;
            if n < 16 {
                return Err(MaskError::new(src.len(), "unterminated string"));
            }
            i += 16;
            continue;
        }
        let k = stop.trailing_zeros() as usize;
        trig |= m.trig & classify::first(k);
        i += k;
        match at(src, i) {
            b'"' => return Ok((i, esc, trig != 0)),
            b'\\' => {
                esc = true;
                i = escape(src, i + 1)?.0;
            }
            _ => return Err(MaskError::new(i, "control character in string")),
        }
    }
}

/// Lexes a key like [`scan_string`] without anchor classes: `(index of
/// the closing quote, whether it holds escapes)`. Keys are short, so the
/// first bytes are checked one by one before the block scan takes over.
#[inline]
fn scan_key(src: &[u8], start: usize) -> Result<(usize, bool), MaskError> {
    let mut from = start;
    for &b in src.get(start..).unwrap_or(&[]).iter().take(16) {
        if b == b'"' {
            return Ok((from, false));
        }
        if b == b'\\' || b < 0x20 {
            break;
        }
        from += 1;
    }
    // the block scan goes on from the first byte not yet passed
    let (end, esc, _) = scan_string(src, &Anchors::default(), from)?;
    Ok((end, esc))
}

/// Lexes a string value like [`scan_string`] (returns the index of the
/// closing quote and whether it holds escapes) and, in the same pass, while
/// no escape has been seen, collects the detectors' anchor positions
/// (offsets from `start`) into `positions`: a string without escapes needs
/// no second pass (see `detectors::anchor_bits`). The third value: whether
/// a byte before the first escape is not ASCII.
#[inline]
fn scan_value(src: &[u8], anchors: &Anchors, start: usize, positions: &mut Vec<usize>) -> Result<(usize, bool, bool), MaskError> {
    positions.clear();
    let mut i = start;
    let mut esc = false;
    let mut wide = 0u16;
    let mut carry = detectors::Carry::default();
    loop {
        let (b, n) = classify::block(src, i);
        let (stop, m, hi) = classify::value_masks(&b, anchors);
        let stop = stop & classify::first(n);
        if !esc {
            let valid = if stop == 0 { classify::first(n) } else { classify::first(stop.trailing_zeros() as usize) };
            wide |= hi & valid;
            let mut t = detectors::anchor_bits(&m, valid, &mut carry);
            while t != 0 {
                positions.push(i - start + t.trailing_zeros() as usize);
                t &= t - 1;
            }
        }
        if stop == 0 {
            if n < 16 {
                return Err(MaskError::new(src.len(), "unterminated string"));
            }
            i += 16;
            continue;
        }
        i += stop.trailing_zeros() as usize;
        match at(src, i) {
            b'"' => return Ok((i, esc, wide != 0)),
            b'\\' => {
                esc = true;
                i = escape(src, i + 1)?.0;
            }
            _ => return Err(MaskError::new(i, "control character in string")),
        }
    }
}

/// Decodes the (validated) string body `src[start..end]`.
fn decode<'a>(text: &'a str, src: &[u8], start: usize, end: usize) -> Result<Cow<'a, str>, MaskError> {
    let mut out = String::with_capacity(end.saturating_sub(start));
    decode_into(text, src, start, end, &mut out)?;
    Ok(Cow::Owned(out))
}

/// Decodes the (validated) string body `src[start..end]` into `out`.
fn decode_into(text: &str, src: &[u8], start: usize, end: usize, out: &mut String) -> Result<(), MaskError> {
    out.clear();
    let mut i = start;
    while i < end {
        let run = src.get(i..end).and_then(|r| r.iter().position(|b| *b == b'\\')).unwrap_or(end - i);
        out.push_str(text.get(i..i + run).ok_or_else(|| MaskError::new(i, "invalid UTF-8"))?);
        i += run;
        if i < end {
            let (next, c) = escape(src, i + 1)?;
            out.push(c);
            i = next;
        }
    }
    Ok(())
}

/// JSON string literal for `s` (minimal escaping: `"`, `\\`, control
/// bytes, and U+2028/U+2029, which line readers such as Python's
/// `str.splitlines` take for line ends), appended to `out`.
pub(crate) fn quote(s: &str, out: &mut Vec<u8>) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    escape_into(s, out);
    out.push(b'"');
}

/// The body of the JSON string literal for `s`, appended to `out` (see
/// [`quote`]). Clean runs are found 16 bytes at a time.
pub(crate) fn escape_into(s: &str, out: &mut Vec<u8>) {
    if memchr::memchr(0xE2, s.as_bytes()).is_some() && s.contains(['\u{2028}', '\u{2029}']) {
        for p in s.split_inclusive(['\u{2028}', '\u{2029}']) {
            match p.strip_suffix('\u{2028}').map(|p| (p, "\\u2028")).or_else(|| p.strip_suffix('\u{2029}').map(|p| (p, "\\u2029"))) {
                Some((p, esc)) => {
                    escape_plain(p, out);
                    out.extend_from_slice(esc.as_bytes());
                }
                None => escape_plain(p, out),
            }
        }
        return;
    }
    escape_plain(s, out);
}

/// [`escape_into`] for text without U+2028/U+2029.
fn escape_plain(s: &str, out: &mut Vec<u8>) {
    let b = s.as_bytes();
    let mut last = 0usize;
    let mut i = 0usize;
    while i < b.len() {
        let (blk, n) = classify::block(b, i);
        let mut stop = classify::string_masks(&blk, &classify::Anchors::default()).stop & classify::first(n);
        while stop != 0 {
            let k = i + stop.trailing_zeros() as usize;
            stop &= stop - 1;
            let c = b.get(k).copied().unwrap_or(0);
            out.extend_from_slice(b.get(last..k).unwrap_or(&[]));
            match c {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                _ => {
                    const H: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u00");
                    out.push(H.get(usize::from(c >> 4)).copied().unwrap_or(b'0'));
                    out.push(H.get(usize::from(c & 15)).copied().unwrap_or(b'0'));
                }
            }
            last = k + 1;
        }
        i += 16;
    }
    out.extend_from_slice(b.get(last..).unwrap_or(&[]));
}

fn number(src: &[u8], mut p: usize) -> Result<usize, MaskError> {
    let digits = |p: usize| src.get(p..).map_or(0, |r| r.iter().take_while(|b| b.is_ascii_digit()).count());
    if at(src, p) == b'-' {
        p += 1;
    }
    match at(src, p) {
        b'0' => p += 1,
        b'1'..=b'9' => p += digits(p),
        _ => return Err(MaskError::new(p, "invalid number")),
    }
    if at(src, p) == b'.' {
        let n = digits(p + 1);
        if n == 0 {
            return Err(MaskError::new(p, "invalid number"));
        }
        p += 1 + n;
    }
    if matches!(at(src, p), b'e' | b'E') {
        p += 1;
        if matches!(at(src, p), b'+' | b'-') {
            p += 1;
        }
        let n = digits(p);
        if n == 0 {
            return Err(MaskError::new(p, "invalid number"));
        }
        p += n;
    }
    Ok(p)
}

/// Output under construction: untouched bytes are copied lazily.
struct Writer {
    out: Vec<u8>,
    copied: usize,
    changed: bool,
}

impl Writer {
    /// Copies the untouched bytes up to `start` (the first time, with room
    /// for the whole document, so the output is not regrown).
    fn copy_to(&mut self, src: &[u8], start: usize) {
        if self.out.capacity() == 0 {
            self.out.reserve(src.len() + src.len() / 8 + 64);
        }
        self.out.extend_from_slice(src.get(self.copied..start).unwrap_or(&[]));
    }
    /// Replaces `src[start..end]` by the JSON string literal for `text`.
    fn replace_quoted(&mut self, src: &[u8], start: usize, end: usize, text: &str) {
        self.copy_to(src, start);
        quote(text, &mut self.out);
        self.copied = end;
        self.changed = true;
    }
    /// Replaces `src[start..end]` by the JSON text `raw`.
    fn replace_raw(&mut self, src: &[u8], start: usize, end: usize, raw: &[u8]) {
        self.copy_to(src, start);
        self.out.extend_from_slice(raw);
        self.copied = end;
        self.changed = true;
    }
    /// The rewritten document; `None` when nothing was replaced.
    fn finish(mut self, src: &[u8]) -> Option<Vec<u8>> {
        if !self.changed {
            return None;
        }
        self.out.extend_from_slice(src.get(self.copied..).unwrap_or(&[]));
        Some(self.out)
    }
}

/// A member key the masker treats specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    None,
    /// `logprobs` (and vLLM's `prompt_logprobs`, Text Generation
    /// Inference's `top_tokens`, Gemini's `logprobsResult`, llama.cpp's
    /// `completion_probabilities`): withheld in responses
    /// ([`super::RawMasking::logprobs`]).
    Logprobs,
    /// `tokens` (and `prefill`): withheld like `logprobs` when it is a list
    /// of token objects (`[{"id": …`: Text Generation Inference
    /// `details.tokens`, the answer token by token, and `details.prefill`,
    /// the prompt's); a top-level list of token ids after a top-level
    /// `content` member (llama.cpp `/completion` with `return_tokens`, the
    /// answer as generated) is withheld like [`Special::TokenIds`]; other
    /// lists are kept.
    Tokens,
    /// `content`: at the top level, marks a llama.cpp `/completion` answer
    /// (its `tokens` follow, [`Special::Tokens`]).
    Content,
    /// `token_ids` (and `prompt_token_ids`): withheld in responses as `[]`
    /// (counted as `token_ids`) when it is a non-empty array of numbers:
    /// vLLM's `choices[].token_ids` (`return_token_ids: true`), the answer
    /// as generated, unmasked, from which a job could decode a masked value
    /// with the model's public tokenizer, and the prompt's (which holds what
    /// a server-side retrieval step put into it). Token ids cannot be masked one by one, so this does not
    /// depend on [`super::RawMasking::logprobs`].
    TokenIds,
    /// `arguments`: a tool call's arguments, a JSON document in a string
    /// (OpenAI chat `tool_calls[].function.arguments`, Responses API
    /// `function_call` items): masked as JSON when it parses as JSON; as
    /// an object (Ollama `message.tool_calls[].function.arguments`), its
    /// numbers are masked too, as in [`Special::Input`].
    Arguments,
    /// A top-level `context` whose value is an array of numbers after a
    /// `"done"` member: the token ids of an Ollama `/api/generate`
    /// conversation (prompt and answer as generated, unmasked), withheld in
    /// responses as `[]` (counted as `context`): a job could decode the
    /// masked answer from them.
    Context,
    /// A top-level `done`: the document is an Ollama answer, whose
    /// `context` follows it ([`Special::Context`]).
    Done,
    /// `input`, `args` or `parameters` with an object value: tool-call
    /// arguments as JSON in the document itself, whose numbers and keys are
    /// masked too, as in [`Special::Arguments`]: an Anthropic Messages API
    /// `tool_use` block's `input` (`content[k].input`, also Bedrock
    /// Converse `toolUse.input`), a Gemini `functionCall.args`
    /// (`candidates[k].content.parts[m].functionCall.args`, and in
    /// requests `contents[k].parts[m].functionCall.args`), a Cohere v1
    /// `tool_calls[k].parameters`. The names are matched wherever they hold
    /// an object (a JSON schema's `parameters` too): more masking, never
    /// less.
    Input,
    /// A search engine's highlighted copy of a hit (Elasticsearch and
    /// OpenSearch `highlight`, Typesense `highlight`/`highlights`,
    /// Meilisearch `_formatted`, Azure AI Search `@search.highlights`,
    /// Algolia `_highlightResult`/`_snippetResult`): its strings hold
    /// markup (`<em>jane</em>.roe@…`) that splits values where a query
    /// term matched; they are also scanned without their tags
    /// ([`Inner::find_markup`]).
    Highlight,
    /// A member named for an AWS secret access key (`SecretAccessKey`,
    /// `secretAccessKey`, `aws_secret_access_key`, `AWS_SECRET_ACCESS_KEY`,
    /// `secret_access_key`: STS answers, credential files as JSON): its
    /// string value is checked as one ([`Inner::find_aws_secret`]).
    AwsSecret,
}

/// Inside tool-call arguments a number may be a card or phone number: the
/// number `src[pos..end]` is replaced by its masked text (a JSON string)
/// when a detector finds a value in it.
#[inline(never)]
fn mask_number(inner: &Inner, text: &str, src: &[u8], pos: usize, end: usize, w: &mut Writer, tally: &mut Tally) {
    let raw = text.get(pos..end).unwrap_or("");
    // `4111111111111111.0` and `4.111111111111111e15` are that integer too
    let integer = integer_digits(raw);
    let s = integer.as_deref().unwrap_or(raw);
    let mut cands = Vec::new();
    if inner.find(s, &mut cands) {
        w.copy_to(src, pos);
        inner.quote_masked(s, true, &cands, &mut w.out, &mut String::new(), tally);
        w.copied = end;
        w.changed = true;
    }
}

/// The digits of a JSON number written with a fraction or an exponent whose
/// value is an integer of at most 24 digits (`-41.5e1` → `-415`); `None`
/// for plain integers and other numbers.
fn integer_digits(num: &str) -> Option<String> {
    let (sign, rest) = num.strip_prefix('-').map_or(("", num), |r| ("-", r));
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(k) => (rest.get(..k)?, rest.get(k + 1..)?.trim_start_matches('+').parse::<i32>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if mantissa.len() == rest.len() && !mantissa.contains('.') {
        return None;
    }
    let mut digits = format!("{int}{frac}");
    let shift = exp.checked_sub(i32::try_from(frac.len()).ok()?)?;
    if shift >= 0 {
        if digits.len() + usize::try_from(shift).ok()? > 24 {
            return None;
        }
        digits.extend(std::iter::repeat_n('0', usize::try_from(shift).ok()?));
    } else {
        let cut = digits.len().checked_sub(usize::try_from(shift.unsigned_abs()).ok()?)?;
        if !digits.get(cut..)?.bytes().all(|b| b == b'0') {
            return None;
        }
        digits.truncate(cut);
    }
    let digits = digits.trim_start_matches('0');
    (!digits.is_empty() && digits.len() <= 24).then(|| format!("{sign}{digits}"))
}

/// The string value `src[pos..=end]` (quotes at `pos` and `end`) of an
/// `arguments` member in a document at nesting `depth`, decoded and masked
/// with [`mask_arguments`]. `Ok(None)`: unchanged.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn arguments(inner: &Inner, text: &str, src: &[u8], pos: usize, end: usize, esc: bool, depth: u8, counts: &mut Counts) -> Result<Option<Vec<u8>>, MaskError> {
    let decoded;
    let doc = if esc {
        decoded = decode(text, src, pos + 1, end)?;
        decoded.as_bytes()
    } else {
        src.get(pos + 1..end).unwrap_or(&[])
    };
    Ok(mask_arguments(inner, doc, depth, counts))
}

/// Reads an object key (the opening quote at `pos`) and the `:` after it;
/// returns the decoded key (empty when `keep` is false), the position of
/// the member's value, and which [`Special`] key it is (escaped spellings
/// such as `log\u0070robs` included).
fn key<'a>(text: &'a str, src: &[u8], pos: usize, keep: bool) -> Result<(Cow<'a, str>, usize, Special), MaskError> {
    if at(src, pos) != b'"' {
        return Err(MaskError::new(pos, "expected a string key"));
    }
    // keys are never scanned: no anchor classes needed
    let (end, esc) = scan_key(src, pos + 1)?;
    let k = if !keep {
        Cow::Borrowed("")
    } else if esc {
        decode(text, src, pos + 1, end)?
    } else {
        Cow::Borrowed(text.get(pos + 1..end).unwrap_or(""))
    };
    let special = |name: &[u8]| match name {
        b"logprobs" | b"prompt_logprobs" | b"top_tokens" | b"logprobsResult" | b"completion_probabilities" => Special::Logprobs,
        b"tokens" | b"prefill" => Special::Tokens,
        b"token_ids" | b"prompt_token_ids" => Special::TokenIds,
        b"arguments" => Special::Arguments,
        b"input" | b"args" | b"parameters" => Special::Input,
        b"SecretAccessKey" | b"secretAccessKey" | b"aws_secret_access_key" | b"AWS_SECRET_ACCESS_KEY" | b"secret_access_key" => Special::AwsSecret,
        b"highlight" | b"highlights" | b"_formatted" | b"@search.highlights" | b"_highlightResult" | b"_snippetResult" => Special::Highlight,
        b"context" => Special::Context,
        b"content" => Special::Content,
        b"done" => Special::Done,
        _ => Special::None,
    };
    let kind = if esc {
        special(decode(text, src, pos + 1, end)?.as_bytes())
    } else if matches!(end - pos - 1, 5 | 8 | 9 | 10 | 14 | 15 | 16 | 17 | 18 | 21 | 24) || (matches!(end - pos - 1, 4 | 6 | 7) && matches!(at(src, pos + 1), b'a' | b'c' | b'd' | b'p' | b't')) {
        special(src.get(pos + 1..end).unwrap_or(&[]))
    } else {
        Special::None
    };
    let p = ws(src, end + 1);
    if at(src, p) != b':' {
        return Err(MaskError::new(p, "expected ':'"));
    }
    Ok((k, ws(src, p + 1), kind))
}

/// Masks the object key whose opening quote is at `pos`, as a string value
/// is masked: in tool input (tool-call arguments, `input` objects), where
/// the model chooses the keys (`{"jane.doe@example.com": "owner"}`). Two
/// keys may then become one (`"[EMAIL]"` twice): a decoder keeps one of
/// their values, never the value's key. `scratch`: the decode buffer,
/// candidates and masking buffer the caller reuses.
///
/// Returns whether the key was masked. Errors: an unterminated or invalid
/// key string.
fn mask_key(
    inner: &Inner,
    text: &str,
    src: &[u8],
    pos: usize,
    w: &mut Writer,
    scratch: (&mut String, &mut Vec<detectors::Cand>, &mut String),
    tally: &mut Tally,
) -> Result<bool, MaskError> {
    if at(src, pos) != b'"' {
        return Err(MaskError::new(pos, "expected a string key"));
    }
    let (end, esc) = scan_key(src, pos + 1)?;
    mask_string(inner, text, src, (pos, end, esc), w, scratch, tally, Find::Plain)
}

/// How [`mask_string`] searches a string value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Find {
    /// The detectors ([`Inner::find`]).
    Plain,
    /// Also without its inline HTML tags ([`Special::Highlight`]).
    Markup,
    /// As an AWS secret access key first ([`Special::AwsSecret`]).
    AwsSecret,
}

/// Masks the JSON string `src[pos..=end]` (`pos`: its opening quote, `end`:
/// its closing one; `esc`: it holds escapes, decoded first) in the output
/// of `w`, re-encoded. `scratch` as in [`mask_key`]; `how`: which search
/// runs on the decoded string. Returns whether anything was found.
/// Errors: an invalid escape.
#[allow(clippy::too_many_arguments)]
fn mask_string(
    inner: &Inner,
    text: &str,
    src: &[u8],
    (pos, end, esc): (usize, usize, bool),
    w: &mut Writer,
    scratch: (&mut String, &mut Vec<detectors::Cand>, &mut String),
    tally: &mut Tally,
    how: Find,
) -> Result<bool, MaskError> {
    let (dec, cands, tmp) = scratch;
    let decoded = if esc {
        decode_into(text, src, pos + 1, end, dec)?;
        dec.as_str()
    } else {
        text.get(pos + 1..end).unwrap_or("")
    };
    let found = match how {
        Find::Plain => inner.find(decoded, cands),
        Find::Markup => inner.find_markup(decoded, cands),
        Find::AwsSecret => inner.find_aws_secret(decoded, cands) || inner.find(decoded, cands),
    };
    if found {
        w.copy_to(src, pos);
        inner.quote_masked(decoded, !esc, cands, &mut w.out, tmp, tally);
        w.copied = end + 1;
        w.changed = true;
        return Ok(true);
    }
    Ok(false)
}

/// A streamed text field of an SSE chunk or a JSON line, by array
/// positions (not by the `index` members): the strings the SSE and
/// JSON-lines maskers join across events and lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum StreamField {
    /// `choices[k].delta.<name>` (chat completions), `name` one of
    /// [`DELTA_TEXT`].
    Content(usize, &'static str),
    /// `choices[k].text` (legacy completions).
    Text(usize),
    /// A copy of the reasoning text of `choices[k].delta` (see
    /// [`REASONING_COPIES`]): `kind` indexes that list, `m` the array item.
    Mirror(usize, usize, usize),
    /// `choices[k].message.content` next to a `delta`: the whole answer so
    /// far (Perplexity's `stream_mode: "full"`) or a copy of the chunk's
    /// `delta.content` (text-generation-webui).
    Snapshot(usize),
    /// `choices[k].delta.tool_calls[m].function.arguments`.
    Args(usize, usize),
    /// `choices[k].delta.function_call.arguments` (the deprecated
    /// `functions` API, still streamed by OpenAI-compatible servers).
    Call(usize),
    /// The top-level `delta` string of a Responses API event
    /// (`response.output_text.delta`, …).
    Delta,
    /// `delta.<name>` of an Anthropic Messages API `content_block_delta`
    /// event, `name` one of [`BLOCK_DELTA`].
    Block(&'static str),
    /// `message.<name>` of an Ollama `/api/chat` JSON line, `name` one of
    /// [`LINE_MESSAGE`].
    Message(&'static str),
    /// The top-level `<name>` of an Ollama `/api/generate` JSON line,
    /// `name` one of [`LINE_TOP`] (JSON lines) or [`SSE_TOP`] (SSE).
    Top(&'static str),
    /// `candidates[k].content.parts[m].text` of a Gemini API
    /// `streamGenerateContent?alt=sse` chunk (a `GenerateContentResponse`).
    Part(usize, usize),
    /// The string of a Cohere v2 chat stream delta event, `name` one of
    /// [`COHERE_DELTA`]: `delta.message.content.text` or `.thinking`
    /// (`content-delta`), `delta.message.tool_plan` (`tool-plan-delta`),
    /// `delta.message.tool_calls.function.arguments` (`tool-call-delta`).
    Cohere(&'static str),
    /// `token.text` of a Hugging Face Text Generation Inference
    /// `/generate_stream` event.
    Tgi,
}

/// The Cohere v2 chat stream strings joined across events (see
/// [`StreamField::Cohere`]): the answer, the thinking of reasoning models,
/// the tool plan and tool-call arguments (held whole, masked as JSON).
pub(crate) const COHERE_DELTA: [&str; 4] = ["text", "thinking", "tool_plan", "tool_calls"];

/// The strings of an Ollama `/api/chat` JSON line's `message` that are
/// joined across lines: the answer and the model's thinking.
pub(crate) const LINE_MESSAGE: [&str; 2] = ["content", "thinking"];

/// The top-level strings of an Ollama `/api/generate` JSON line that are
/// joined across lines: the answer and the model's thinking.
pub(crate) const LINE_TOP: [&str; 2] = ["response", "thinking"];

/// The top-level strings of an SSE event without `type`, `choices`,
/// `candidates` or `token` that are joined across events: llama.cpp
/// `/completion` (`content`) and Cloudflare Workers AI (`response`).
pub(crate) const SSE_TOP: [&str; 2] = ["content", "response"];

/// The top-level string of a Vercel AI SDK `tool-input-delta` event: a
/// fragment of a tool call's input (JSON), joined per `toolCallId`.
pub(crate) const TOOL_INPUT_DELTA: &str = "inputTextDelta";

/// The strings of an Anthropic Messages API `content_block_delta` event's
/// `delta` that are joined across events: `text` (`text_delta`),
/// `partial_json` (`input_json_delta`: tool input, a JSON document in
/// fragments) and `thinking` (`thinking_delta`).
pub(crate) const BLOCK_DELTA: [&str; 3] = ["text", "partial_json", "thinking"];

/// The text members of a chat-completion chunk's `delta` that are joined
/// across events: the answer, a refusal, and the reasoning text some
/// OpenAI-compatible servers stream (`reasoning_content`: vLLM, DeepSeek;
/// `reasoning`: OpenRouter, Ollama).
pub(crate) const DELTA_TEXT: [&str; 4] = ["content", "refusal", "reasoning_content", "reasoning"];

/// Whether the value at `pos` is an array whose first element is an object
/// whose first member is `id` (Text Generation Inference token objects).
fn token_objects(src: &[u8], pos: usize) -> bool {
    if at(src, pos) != b'[' {
        return false;
    }
    let p = ws(src, pos + 1);
    at(src, p) == b'{' && src.get(ws(src, p + 1)..).is_some_and(|r| r.starts_with(b"\"id\""))
}

/// Whether the value at `pos` is an array of numbers (or other scalars but
/// strings: token ids).
fn token_ids(src: &[u8], pos: usize) -> bool {
    at(src, pos) == b'['
        && src.get(pos + 1..).is_some_and(|rest| {
            let n = rest.iter().take_while(|b| !matches!(b, b'"' | b'[' | b']' | b'{' | b'}')).count();
            rest.get(n) == Some(&b']')
        })
}

/// The copies of a chat chunk's reasoning text (`delta.reasoning` or
/// `reasoning_content`) that proxies add to `delta`, as (array member, its
/// string member): OpenRouter `reasoning_details[].text` (`.summary` for
/// OpenAI reasoning models), LiteLLM
/// `thinking_blocks[].thinking` (also under `provider_specific_fields`).
/// Each copy that equals the event's fragment carries the text released
/// for it ([`StreamField::Mirror`]).
pub(crate) const REASONING_COPIES: [(&str, &str); 4] = [
    ("reasoning_details", "text"),
    ("reasoning_details", "summary"),
    ("thinking_blocks", "thinking"),
    ("provider_specific_fields.thinking_blocks", "thinking"),
];

/// Which [`StreamField`] `path` is, if any.
fn stream_field(path: &[Frame<'_>]) -> Option<StreamField> {
    match path {
        [Frame::Obj(c), Frame::Arr(k), Frame::Obj(d), Frame::Obj(t)] if c == "choices" && d == "delta" => {
            DELTA_TEXT.iter().find(|n| **n == t.as_ref()).map(|n| StreamField::Content(*k, n))
        }
        [Frame::Obj(c), Frame::Arr(k), Frame::Obj(t)] if c == "choices" && t == "text" => Some(StreamField::Text(*k)),
        [Frame::Obj(c), Frame::Arr(k), Frame::Obj(m), Frame::Obj(t)] if c == "choices" && m == "message" && t == "content" => Some(StreamField::Snapshot(*k)),
        [Frame::Obj(c), Frame::Arr(k), Frame::Obj(d), Frame::Obj(a), Frame::Arr(m), Frame::Obj(t)] if c == "choices" && d == "delta" => {
            let kind = REASONING_COPIES.iter().position(|(arr, s)| arr == a && s == t)?;
            Some(StreamField::Mirror(*k, kind, *m))
        }
        [Frame::Obj(c), Frame::Arr(k), Frame::Obj(d), Frame::Obj(p), Frame::Obj(a), Frame::Arr(m), Frame::Obj(t)]
            if c == "choices" && d == "delta" && p == "provider_specific_fields" && a == "thinking_blocks" && t == "thinking" =>
        {
            Some(StreamField::Mirror(*k, 3, *m))
        }
        [Frame::Obj(c), Frame::Arr(k), Frame::Obj(d), Frame::Obj(tc), Frame::Arr(m), Frame::Obj(f), Frame::Obj(a)]
            if c == "choices" && d == "delta" && tc == "tool_calls" && f == "function" && a == "arguments" =>
        {
            Some(StreamField::Args(*k, *m))
        }
        [Frame::Obj(c), Frame::Arr(k), Frame::Obj(d), Frame::Obj(f), Frame::Obj(a)]
            if c == "choices" && d == "delta" && f == "function_call" && a == "arguments" =>
        {
            Some(StreamField::Call(*k))
        }
        [Frame::Obj(c), Frame::Arr(k), Frame::Obj(ct), Frame::Obj(p), Frame::Arr(m), Frame::Obj(t)]
            if c == "candidates" && ct == "content" && p == "parts" && t == "text" =>
        {
            Some(StreamField::Part(*k, *m))
        }
        [Frame::Obj(d), Frame::Obj(m), Frame::Obj(t)] if d == "delta" && m == "message" && t == "tool_plan" => Some(StreamField::Cohere(COHERE_DELTA[2])),
        [Frame::Obj(d), Frame::Obj(m), Frame::Obj(c), Frame::Obj(t)] if d == "delta" && m == "message" && c == "content" => {
            COHERE_DELTA.get(..2)?.iter().find(|n| **n == t.as_ref()).map(|n| StreamField::Cohere(n))
        }
        [Frame::Obj(d), Frame::Obj(m), Frame::Obj(tc), Frame::Obj(f), Frame::Obj(a)]
            if d == "delta" && m == "message" && tc == "tool_calls" && f == "function" && a == "arguments" =>
        {
            Some(StreamField::Cohere(COHERE_DELTA[3]))
        }
        [Frame::Obj(k), Frame::Obj(t)] if k == "token" && t == "text" => Some(StreamField::Tgi),
        [Frame::Obj(d)] if d == "delta" => Some(StreamField::Delta),
        [Frame::Obj(d), Frame::Obj(t)] if d == "delta" => BLOCK_DELTA.iter().find(|n| **n == t.as_ref()).map(|n| StreamField::Block(n)),
        [Frame::Obj(m), Frame::Obj(t)] if m == "message" => LINE_MESSAGE.iter().find(|n| **n == t.as_ref()).map(|n| StreamField::Message(n)),
        [Frame::Obj(t)] => LINE_TOP.iter().chain(&SSE_TOP).chain(&[TOOL_INPUT_DELTA]).find(|n| **n == t.as_ref()).map(|n| StreamField::Top(n)),
        _ => None,
    }
}

/// A value whose content is muted (skipped, or to be replaced by a label
/// once complete).
struct Mute {
    depth: usize,
    start: usize,
    with: Replace,
}

/// What a muted value becomes once complete.
enum Replace {
    /// Nothing: the value is copied as it is (skip rules).
    Keep,
    /// The JSON string for this label (redact rules).
    Label(String),
    /// These JSON bytes (`null`, `[]`: withheld `logprobs`, `context`),
    /// counted under this name.
    Raw(&'static [u8], &'static str),
}

/// Masks a JSON document. `content`: replacement text (already masked) for
/// the strings at the given [`StreamField`]s (SSE chunks). `response`: the
/// document is (part of) a response body, whose `logprobs` members are
/// withheld when the policy says so ([`super::RawMasking::logprobs`]).
pub(crate) fn rewrite(
    inner: &Inner,
    src: &[u8],
    content: Option<&BTreeMap<StreamField, String>>,
    response: bool,
    counts: &mut Counts,
) -> Result<Vec<u8>, MaskError> {
    Ok(rewrite_changes(inner, src, content, response, counts)?.unwrap_or_else(|| src.to_vec()))
}

/// [`rewrite`], giving `Ok(None)` when nothing is replaced.
pub(crate) fn rewrite_changes(
    inner: &Inner,
    src: &[u8],
    content: Option<&BTreeMap<StreamField, String>>,
    response: bool,
    counts: &mut Counts,
) -> Result<Option<Vec<u8>>, MaskError> {
    rewrite_doc(inner, src, content, response, 0, counts)
}

/// How deep tool-call arguments nest inside arguments before the innermost
/// are masked as text.
const MAX_ARGS_DEPTH: u8 = 8;

/// What withheld tool-call arguments become: a JSON document (a string).
pub(crate) const WITHHELD_ARGUMENTS: &str = "\"[ARGUMENTS]\"";

/// Masks tool-call arguments `doc` (a JSON document in a string: OpenAI
/// chat `tool_calls[].function.arguments`, Responses API `function_call`
/// items) found at nesting `depth` (0: in a body or stream). As JSON:
/// decoded string values, and numbers and object keys too (a card number
/// may be written as a JSON number; the model chooses the keys,
/// [`mask_key`]), the result still JSON. Not JSON: masked as text when it
/// holds no `\` (escapes could hide a value from text detectors: `\n4111…`,
/// `\u0040`), else withheld as a whole ([`WITHHELD_ARGUMENTS`], counted as
/// `arguments`). `None`: unchanged.
pub(crate) fn mask_arguments(inner: &Inner, doc: &[u8], depth: u8, counts: &mut Counts) -> Option<Vec<u8>> {
    let mut found = Counts::new();
    match rewrite_doc(inner, doc, None, false, depth.saturating_add(1), &mut found) {
        Ok(r) => {
            for (k, v) in found {
                *counts.entry(k).or_insert(0) += v;
            }
            r
        }
        Err(_) if !doc.contains(&b'\\') => inner.mask_str(&String::from_utf8_lossy(doc), counts).map(String::into_bytes),
        Err(_) => {
            *counts.entry("arguments".to_string()).or_insert(0) += 1;
            Some(WITHHELD_ARGUMENTS.as_bytes().to_vec())
        }
    }
}

/// [`rewrite_changes`] at arguments nesting `depth` (0: a body or an SSE
/// payload; more: tool-call arguments, whose numbers and keys are masked too).
/// String values of `arguments` members are masked with
/// [`mask_arguments`] up to [`MAX_ARGS_DEPTH`].
fn rewrite_doc(
    inner: &Inner,
    src: &[u8],
    content: Option<&BTreeMap<StreamField, String>>,
    response: bool,
    depth: u8,
    counts: &mut Counts,
) -> Result<Option<Vec<u8>>, MaskError> {
    let mut tally = Tally::default();
    let r = rewrite_tallied(inner, src, content, response, depth, counts, &mut tally);
    tally.flush(inner, counts);
    r
}

/// [`rewrite_doc`], counting the redactions of values in `tally`.
fn rewrite_tallied(
    inner: &Inner,
    src: &[u8],
    content: Option<&BTreeMap<StreamField, String>>,
    response: bool,
    depth: u8,
    counts: &mut Counts,
    tally: &mut Tally,
) -> Result<Option<Vec<u8>>, MaskError> {
    let nested_args = depth < MAX_ARGS_DEPTH;
    let numbers = depth > 0;
    // the stack depth of the `input` object whose numbers are masked (see
    // `Special::Input`), while inside it
    let mut input_at: Option<usize> = None;
    // the stack depth of the search highlight (`Special::Highlight`) whose
    // strings are also scanned without their markup, while inside it
    let mut markup_at: Option<usize> = None;
    let text = std::str::from_utf8(src).map_err(|e| MaskError::new(e.valid_up_to(), "invalid UTF-8"))?;
    let anchors = inner.anchors();
    let withhold = response && inner.withhold_logprobs();
    let track = !inner.fields.is_empty() || content.is_some();
    let mut w = Writer { out: Vec::new(), copied: 0, changed: false };
    let mut stack: Vec<Frame<'_>> = Vec::new();
    let mut mute: Option<Mute> = None;
    let mut pos = ws(src, 0);
    let mut dec = String::new();
    let mut cands = Vec::new();
    let mut tmp = String::new();
    let mut positions = Vec::new();
    // the key of the member whose value is about to be read
    let mut special = Special::None;
    // a top-level `done` member was read: an Ollama answer
    let mut ollama = false;
    // a top-level `content` member was read: a llama.cpp `/completion` answer
    let mut llama = false;
    // the key of the member whose value is about to be read was masked
    // (`mask_key`): a field rule's label must not spell it out
    let mut key_masked = false;
    'value: loop {
        let member = std::mem::replace(&mut special, Special::None);
        if member != Special::None && mute.is_none() {
            if withhold && ((member == Special::Logprobs && at(src, pos) != b'n') || (member == Special::Tokens && token_objects(src, pos))) {
                let with = Replace::Raw(if at(src, pos) == b'[' { b"[]" } else { b"null" }, "logprobs");
                mute = Some(Mute { depth: stack.len(), start: pos, with });
            } else if member == Special::Done && stack.len() == 1 {
                // (Ollama writes `done` before `context`)
                ollama = true;
            } else if response && ollama && member == Special::Context && stack.len() == 1 && token_ids(src, pos) {
                mute = Some(Mute { depth: 1, start: pos, with: Replace::Raw(b"[]", "context") });
            } else if member == Special::Content && stack.len() == 1 {
                llama = true;
            } else if response
                && (member == Special::TokenIds || (llama && member == Special::Tokens && stack.len() == 1))
                && token_ids(src, pos)
                && at(src, ws(src, pos + 1)) != b']'
            {
                mute = Some(Mute { depth: stack.len(), start: pos, with: Replace::Raw(b"[]", "token_ids") });
            }
        }
        if track && mute.is_none() && !stack.is_empty() && at(src, pos) != b'n' {
            match inner.fields.action(&stack) {
                Some(Action::Redact(label)) => {
                    let label = if key_masked { "[REDACTED]".to_string() } else { label };
                    mute = Some(Mute { depth: stack.len(), start: pos, with: Replace::Label(label) });
                }
                Some(Action::Skip) => mute = Some(Mute { depth: stack.len(), start: pos, with: Replace::Keep }),
                None => {}
            }
        }
        // (Ollama writes tool-call `arguments` as an object, not a string)
        if matches!(member, Special::Input | Special::Arguments) && input_at.is_none() && at(src, pos) == b'{' {
            input_at = Some(stack.len());
        }
        if member == Special::Highlight && markup_at.is_none() && matches!(at(src, pos), b'{' | b'[') {
            markup_at = Some(stack.len());
        }
        match at(src, pos) {
            b'{' => {
                pos = ws(src, pos + 1);
                if at(src, pos) == b'}' {
                    pos += 1;
                } else {
                    key_masked = (numbers || input_at.is_some())
                        && mute.is_none()
                        && mask_key(inner, text, src, pos, &mut w, (&mut dec, &mut cands, &mut tmp), tally)?;
                    let (k, p, sp) = key(text, src, pos, track)?;
                    special = sp;
                    stack.push(Frame::Obj(k));
                    pos = p;
                    continue 'value;
                }
            }
            b'[' => {
                pos = ws(src, pos + 1);
                if at(src, pos) == b']' {
                    pos += 1;
                } else {
                    stack.push(Frame::Arr(0));
                    continue 'value;
                }
            }
            b'"' => {
                // one pass: lexing collects the anchors (strings with escapes
                // are decoded and scanned again); otherwise lex, then scan
                // strings holding an anchor or an escape
                let (end, esc, trig, one_pass, wide) = if inner.one_pass() {
                    let (end, esc, wide) = scan_value(src, anchors, pos + 1, &mut positions)?;
                    (end, esc, false, !esc, wide)
                } else {
                    let (end, esc, trig) = scan_string(src, anchors, pos + 1)?;
                    (end, esc, trig, false, true)
                };
                if mute.is_none() {
                    let hook = if content.is_some() { stream_field(&stack) } else { None };
                    let rep = hook.and_then(|k| content.and_then(|m| m.get(&k)));
                    if let Some(rep) = rep {
                        w.replace_quoted(src, pos, end + 1, rep);
                    } else if member == Special::Arguments && nested_args {
                        if let Some(masked) = arguments(inner, text, src, pos, end, esc, depth, counts)? {
                            w.replace_quoted(src, pos, end + 1, &String::from_utf8_lossy(&masked));
                        }
                    } else if member == Special::AwsSecret {
                        mask_string(inner, text, src, (pos, end, esc), &mut w, (&mut dec, &mut cands, &mut tmp), tally, Find::AwsSecret)?;
                    } else if markup_at.is_some() || member == Special::Highlight {
                        mask_string(inner, text, src, (pos, end, esc), &mut w, (&mut dec, &mut cands, &mut tmp), tally, Find::Markup)?;
                    } else if one_pass {
                        let s = text.get(pos + 1..end).unwrap_or("");
                        if (!positions.is_empty() || inner.has_custom()) && inner.find_at(s, &positions, wide, &mut cands) {
                            w.copy_to(src, pos);
                            inner.quote_masked(s, true, &cands, &mut w.out, &mut tmp, tally);
                            w.copied = end + 1;
                            w.changed = true;
                        }
                    } else if esc || trig || inner.has_custom() {
                        mask_string(inner, text, src, (pos, end, esc), &mut w, (&mut dec, &mut cands, &mut tmp), tally, Find::Plain)?;
                    }
                }
                pos = end + 1;
            }
            b't' | b'f' | b'n' => {
                let lit: &[u8] = match at(src, pos) {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                if !src.get(pos..).is_some_and(|r| r.starts_with(lit)) {
                    return Err(MaskError::new(pos, "invalid literal"));
                }
                pos += lit.len();
            }
            b'-' | b'0'..=b'9' => {
                let end = number(src, pos)?;
                if (numbers || input_at.is_some()) && mute.is_none() {
                    mask_number(inner, text, src, pos, end, &mut w, tally);
                }
                pos = end;
            }
            0 if pos >= src.len() => return Err(MaskError::new(pos, "unexpected end of input")),
            _ => return Err(MaskError::new(pos, "expected a value")),
        }
        // after a value
        loop {
            if input_at == Some(stack.len()) {
                input_at = None;
            }
            if markup_at == Some(stack.len()) {
                markup_at = None;
            }
            if mute.as_ref().is_some_and(|m| m.depth == stack.len()) {
                if let Some(m) = mute.take() {
                    match m.with {
                        Replace::Keep => {}
                        Replace::Label(label) => {
                            w.replace_quoted(src, m.start, pos, &label);
                            *counts.entry("field".to_string()).or_insert(0) += 1;
                        }
                        Replace::Raw(raw, name) => {
                            // `[]` stays as it is
                            if !src.get(m.start..pos).is_some_and(|v| v.iter().filter(|b| !b.is_ascii_whitespace()).eq(raw.iter())) {
                                w.replace_raw(src, m.start, pos, raw);
                                *counts.entry(name.to_string()).or_insert(0) += 1;
                            }
                        }
                    }
                }
            }
            pos = ws(src, pos);
            let c = at(src, pos);
            match stack.last_mut() {
                None => {
                    if pos != src.len() {
                        return Err(MaskError::new(pos, "trailing data after the document"));
                    }
                    break 'value;
                }
                Some(Frame::Obj(_)) => match c {
                    b',' => {
                        let kpos = ws(src, pos + 1);
                        key_masked = (numbers || input_at.is_some())
                            && mute.is_none()
                            && mask_key(inner, text, src, kpos, &mut w, (&mut dec, &mut cands, &mut tmp), tally)?;
                        let (k, p, sp) = key(text, src, kpos, track)?;
                        special = sp;
                        if let Some(top) = stack.last_mut() {
                            *top = Frame::Obj(k);
                        }
                        pos = p;
                        continue 'value;
                    }
                    b'}' => {
                        pos += 1;
                        stack.pop();
                    }
                    _ => return Err(MaskError::new(pos, "expected ',' or '}'")),
                },
                Some(Frame::Arr(i)) => match c {
                    b',' => {
                        *i += 1;
                        pos = ws(src, pos + 1);
                        continue 'value;
                    }
                    b']' => {
                        pos += 1;
                        stack.pop();
                    }
                    _ => return Err(MaskError::new(pos, "expected ',' or ']'")),
                },
            }
        }
    }
    Ok(w.finish(src))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse() {
        assert_eq!(parse_rule("ssn"), Ok(Rule::Name("ssn".into())));
        assert_eq!(
            parse_rule("$.result[*].id"),
            Ok(Rule::Path(vec![PSeg::Key("result".into()), PSeg::AnyIdx, PSeg::Key("id".into())]))
        );
        assert_eq!(parse_rule("$['a.b'][2].*"), Ok(Rule::Path(vec![PSeg::Key("a.b".into()), PSeg::Idx(2), PSeg::AnyKey])));
        for bad in ["", "$", "a.b", "$.", "$[", "$[x]", "$['a'", "$.a]", "$..a"] {
            assert!(parse_rule(bad).is_err(), "{bad}");
        }
    }
}
