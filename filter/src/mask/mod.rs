//! PII and secret masking, independent of the host.
//!
//! A [`Masker`] is compiled once from the policy section `masking`
//! ([`RawMasking`]) and then masks free text ([`Masker::mask_text`]), whole
//! JSON documents ([`Masker::mask_json`]) and streamed bodies
//! ([`Masker::stream`]: plain text, or server-sent events carrying OpenAI
//! chat-completion chunks).
//!
//! Detectors validate what they find instead of trusting a bare pattern:
//!
//! | name | what | validation |
//! |---|---|---|
//! | `email` | addresses (RFC 5321 shape, ASCII; `xn--` A-labels) | local part ≤ 64, labels ≤ 63, domain ≤ 253, alphabetic TLD ≥ 2 or `xn--` |
//! | `payment_card` | PANs, 13–19 digits, contiguous or grouped by single spaces/dashes | issuer prefix and length per brand (ISO/IEC 7812 IINs: Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay) and Luhn |
//! | `us_ssn` | `AAA-GG-SSSS`; opt-in (`us_ssn_forms`) `AAA GG SSSS` and `AAAGGSSSS` | area ≠ 000, 666, 900–999; group ≠ 00; serial ≠ 0000 |
//! | `phone` | E.164 (`+` and 8–15 digits, separators allowed); NANP `(415) 555-0134`, `415-555-0134`, `415.555.0134`; trunk-prefixed national `020 7946 0958`, `01 23 45 67 89`, `030/1234567` (not dotted pairs: `01.23.45.67.89` is as often a date or version); `+44(0)20 7946 0958`, `(+44) 20 7946 0958`; Brazilian `(11) 91234-5678`; Russian `8 (495) 123-45-67` | digit counts and group shapes; bare digit runs are never phones |
//! | `iban` | ISO 13616, contiguous or in groups of four | per-country length, MOD 97-10 |
//! | `ipv4`, `ipv6` | addresses (opt-in) | octets ≤ 255; `std::net::Ipv6Addr` |
//! | `aws_access_key` | `AKIA…`/`ASIA…` + 16 `[A-Z0-9]` | exact length |
//! | `google_api_key` | Google Cloud API keys, `AIza` + 35 `[A-Za-z0-9_-]` | exact length |
//! | `github_token` | `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_` + ≥ 36 alphanumerics; `github_pat_…` | length |
//! | `openai_key` | `sk-…` (≥ 32), `sk-proj-…`, `sk-svcacct-…`, `sk-admin-…` | length, holds a digit |
//! | `anthropic_key` | `sk-ant-…` | length, holds a digit |
//! | `slack_token` | `xoxb-`/`xoxa-`/`xoxp-`/`xoxr-`/`xoxs-…`; webhook URLs `hooks.slack.com/services/…` (also `workflows/`, `triggers/`) | length, holds a digit; path segments |
//! | `jwt` | JWS (three base64url segments, header `eyJ…`) and JWE (five) | segment shapes |
//! | `private_key` | PEM `-----BEGIN … PRIVATE KEY-----` … `-----END … PRIVATE KEY-----` (RFC 7468); a tail without its header (the base64 lines before the footer) | armor lines |
//!
//! Values glued to a longer token are not matched: a digit run preceded or
//! followed by a letter, digit or `_` (or by `.`/`-` next to one) is part of
//! an id, hash, UUID, version or date, not a number of its own.
//!
//! Built-in detectors are hand-written scanners (one pass looking for anchor
//! bytes, then bounded, validating look-ups); custom detectors are
//! `regex-lite` patterns (linear time). Bytes are classified 16 at a time
//! with SIMD (`classify`), and in JSON the lexer collects the anchor
//! positions of a string value while it looks for the closing quote, so a
//! string without escapes is read once and one without anchor bytes runs no
//! detector (custom detectors, which may match anything, run on every
//! string value).
//!
//! Every function here is total: no input makes it panic.

mod classify;
mod detectors;
mod json;
mod stream;

pub use stream::{StreamKind, StreamMasker, HOLD_BACK, MAX_EVENT, MAX_HOLD};

use crate::config::ConfigError;
use detectors::{Builtin, Cand, Enabled, BUILTINS};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Number of values redacted, by detector name (`email`, `payment_card`,
/// a custom detector's name, `field` for values redacted by a field rule,
/// and `logprobs` for withheld `logprobs` values).
pub type Counts = BTreeMap<String, u64>;

/// The policy section `masking` (top level of the plugin configuration), as
/// written. Every field is optional. Unknown fields are rejected.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMasking {
    /// Built-in detectors to enable, by name. Absent: every built-in except
    /// `ipv4` and `ipv6`. Names: `email`, `payment_card`, `us_ssn`, `phone`,
    /// `iban`, `ipv4`, `ipv6`, `aws_access_key`, `google_api_key`, `github_token`,
    /// `openai_key`, `anthropic_key`, `slack_token`, `jwt`, `private_key`.
    pub detectors: Option<Vec<String>>,
    /// Extra detectors given by a pattern.
    pub custom: Vec<RawCustom>,
    /// Exact values that are never masked (compared with the matched text
    /// as it appears, after JSON decoding).
    pub allow: Vec<String>,
    /// Default redaction for every detector: `label` (default), `partial`
    /// or `hash`.
    pub redaction: Option<RawRedaction>,
    /// Redaction per detector name, overriding `redaction` and a custom
    /// detector's own `redaction`.
    pub per_detector: BTreeMap<String, RawRedaction>,
    /// Key for `hash` redaction (HMAC-SHA256), at least 16 bytes; required
    /// when any detector uses `hash`.
    pub hash_key: Option<String>,
    /// Rules by JSON field (applied by [`Masker::mask_json`] only).
    pub fields: RawFields,
    /// What happens to `logprobs` members of response JSON (chat and legacy
    /// completions, SSE chunks, Responses API events): `withhold` (default:
    /// the value becomes `null`, or `[]` for an array) or `mask` (each token
    /// string masked on its own). Log-probabilities repeat the generated
    /// text one token per string, where a value cut across tokens cannot be
    /// found, so a job asking for them (`logprobs: true`) could read masked
    /// text back; `mask` accepts that risk.
    pub logprobs: Option<String>,
    /// How `us_ssn` finds SSNs besides `dashed` (`123-45-6789`, always
    /// found): `spaced` (`123 45 6789`) and `plain` (`123456789`, nine
    /// digits not glued to a longer token: more false positives, e.g.
    /// nine-digit ids). Absent: `["dashed"]`.
    pub us_ssn_forms: Option<Vec<String>>,
}

/// Names the filter counts in the audit record besides detectors
/// (`backend_credential` redactions, field-rule redactions (`field`),
/// withheld `logprobs`, `arguments`, token ids (`context`, `token_ids`) and
/// `unmaskable_event`s): no custom detector may take them.
pub const RESERVED_COUNTS: [&str; 7] =
    ["backend_credential", "field", "logprobs", "arguments", "context", "token_ids", "unmaskable_event"];

/// Most custom detectors a policy may define: with [`CUSTOM_SIZE_LIMIT`]
/// each, the compiled patterns stay within 16 MiB of the module's memory
/// (an unbounded list made the module run out of memory at load).
pub const MAX_CUSTOM: usize = 64;

/// Largest compiled size of one custom pattern, bytes (regex-lite's
/// `size_limit`); a pattern over it is refused naming its field.
pub const CUSTOM_SIZE_LIMIT: usize = 256 << 10;

/// A custom detector: `masking.custom[i]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCustom {
    /// Detector name: `[a-z][a-z0-9_]*`, at most 64 bytes, not a built-in
    /// name, unique. Its label is the name uppercased.
    pub name: String,
    /// A `regex-lite` pattern (Rust regex syntax, linear-time matching). It
    /// must not match the empty string. Values crossing whitespace and
    /// longer than 120 bytes may be missed when they straddle stream chunks.
    pub pattern: String,
    /// Check run on each match: `luhn` (the digits pass ISO/IEC 7812 Luhn)
    /// or `mod97` (ISO 7064 MOD 97-10 as for IBANs).
    #[serde(default)]
    pub validator: Option<String>,
    /// Redaction for this detector (see [`RawMasking::redaction`]).
    #[serde(default)]
    pub redaction: Option<RawRedaction>,
}

/// `masking.fields`: rules naming JSON fields.
///
/// An entry is either a bare key name (`"ssn"`: any object member with that
/// key at any depth, ASCII case-insensitive) or a JSON path from the
/// document root (`"$.customer.ssn"`, `"$.result[*].id"`, `"$['a.b'][0]"`,
/// `"$.items.*"`; keys compared exactly).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFields {
    /// Values always replaced by the field label (`"[SSN]"`: the key
    /// uppercased, `"[REDACTED]"` for an array element), whatever their
    /// type — strings, numbers, booleans, whole objects and arrays; `null`
    /// stays `null`. A redact rule wins over a skip rule.
    pub redact: Vec<String>,
    /// Values (with everything inside them) never touched by any detector.
    pub skip: Vec<String>,
}

/// A redaction mode as written: `"label"`, `"partial"` or `"hash"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct RawRedaction(pub String);

/// How a detected value is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redaction {
    /// `[EMAIL]`: the detector name uppercased, in brackets.
    Label,
    /// The value's last 4 letters/digits kept, every other letter or digit
    /// replaced by `*`; separators (spaces, `-`, `.`, `@`, …) stay in place,
    /// so the length and shape are kept: `**** **** **** 1111`,
    /// `***-**-6789`. Values with fewer than 8 letters/digits are starred
    /// entirely.
    Partial,
    /// `[EMAIL:0123456789abcdef]`: the first 16 hex digits of
    /// HMAC-SHA256(`hash_key`, value). Equal values give equal tokens. The
    /// value is normalized first: digits only for `payment_card`, `us_ssn`
    /// and `phone` (keeping a leading `+`), uppercase without spaces for
    /// `iban`, ASCII-lowercase for `email`; as matched otherwise.
    Hash,
}

impl Redaction {
    fn parse(raw: &RawRedaction) -> Option<Redaction> {
        match raw.0.as_str() {
            "label" => Some(Redaction::Label),
            "partial" => Some(Redaction::Partial),
            "hash" => Some(Redaction::Hash),
            _ => None,
        }
    }
}

/// A body that is not valid JSON (or not UTF-8): the caller fails closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskError {
    /// Byte offset in the body where the problem was found.
    pub offset: usize,
    /// What is wrong there.
    pub problem: String,
}

impl MaskError {
    pub(crate) fn new(offset: usize, problem: &str) -> MaskError {
        MaskError { offset, problem: problem.to_string() }
    }
}

impl std::fmt::Display for MaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid JSON at byte {}: {}", self.offset, self.problem)
    }
}

impl std::error::Error for MaskError {}

#[derive(Debug, Clone, Copy)]
enum Validator {
    Luhn,
    Mod97,
}

#[derive(Debug, Clone)]
enum Kind {
    Builtin(Builtin),
    Custom { re: regex_lite::Regex, validator: Option<Validator> },
    /// Exact values (the backend credentials, [`Masker::with_credentials`]).
    Literal(Vec<memchr::memmem::Finder<'static>>),
}

#[derive(Debug, Clone)]
struct Detector {
    name: String,
    /// Name uppercased.
    tag: String,
    /// `[TAG]`.
    label: String,
    redaction: Redaction,
    kind: Kind,
}

/// The compiled masker state shared by [`Masker`] and its stream maskers.
#[derive(Debug, Clone)]
pub(crate) struct Inner {
    dets: Vec<Detector>,
    enabled: Enabled,
    anchors: classify::Anchors,
    /// Detector indices of custom detectors.
    customs: Vec<u16>,
    allow: BTreeSet<String>,
    hash_key: Vec<u8>,
    fields: json::FieldRules,
    /// Withhold `logprobs` members of response JSON ([`RawMasking::logprobs`]).
    withhold_logprobs: bool,
    /// Scan JSON string values while lexing them (off only for measurements).
    one_pass: bool,
}

/// A compiled masking policy: immutable, cheap to clone and share (the
/// state is behind an [`Arc`]).
#[derive(Debug, Clone)]
pub struct Masker {
    inner: Arc<Inner>,
}

fn field_path(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else {
        format!("{prefix}.{rest}")
    }
}

fn valid_custom_name(n: &str) -> bool {
    n.len() <= 64
        && n.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Masker {
    /// Validates and compiles a `masking` section.
    ///
    /// Errors name fields under `prefix` (`"masking"` gives
    /// `masking.custom[0].pattern: invalid regex: …`; an empty prefix gives
    /// bare field paths). Every problem is reported: unknown detector names
    /// (in `detectors` or `per_detector`), bad custom names, patterns that
    /// do not compile or match the empty string, unknown validators or
    /// redaction modes, `hash` without a `hash_key` (or one under 16 bytes),
    /// empty `allow` entries, malformed field rules.
    pub fn compile(raw: RawMasking, prefix: &str) -> Result<Masker, Vec<ConfigError>> {
        let mut errs: Vec<ConfigError> = Vec::new();
        let mut err = |field: String, problem: String| errs.push(ConfigError { field, problem });
        let known = || BUILTINS.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ");

        let default_red = match &raw.redaction {
            None => Redaction::Label,
            Some(r) => Redaction::parse(r).unwrap_or_else(|| {
                err(field_path(prefix, "redaction"), format!("unknown redaction {:?} (expected label, partial or hash)", r.0));
                Redaction::Label
            }),
        };
        let mut per: BTreeMap<String, Redaction> = BTreeMap::new();
        let custom_names: BTreeSet<&str> = raw.custom.iter().map(|c| c.name.as_str()).collect();
        for (name, r) in &raw.per_detector {
            let at = field_path(prefix, &format!("per_detector.{name}"));
            if detectors::builtin_by_name(name).is_none() && !custom_names.contains(name.as_str()) {
                err(at.clone(), format!("unknown detector {name:?} (built-ins: {}; or a custom detector's name)", known()));
            }
            match Redaction::parse(r) {
                Some(m) => {
                    per.insert(name.clone(), m);
                }
                None => err(at, format!("unknown redaction {:?} (expected label, partial or hash)", r.0)),
            }
        }

        let mut dets: Vec<Detector> = Vec::new();
        let mut enabled = Enabled::default();
        let wanted: Vec<Builtin> = match &raw.detectors {
            None => BUILTINS.iter().map(|(b, _)| *b).filter(|b| detectors::default_enabled(*b)).collect(),
            Some(list) => {
                let mut v = Vec::new();
                for (i, n) in list.iter().enumerate() {
                    match detectors::builtin_by_name(n) {
                        Some(b) => v.push(b),
                        None => err(
                            field_path(prefix, &format!("detectors[{i}]")),
                            format!("unknown detector {n:?} (known: {})", known()),
                        ),
                    }
                }
                v
            }
        };
        for (b, name) in BUILTINS.iter() {
            if !wanted.contains(b) {
                continue;
            }
            let Ok(idx) = u16::try_from(dets.len()) else { continue };
            enabled.set(*b, idx);
            let tag = name.to_ascii_uppercase();
            dets.push(Detector {
                name: (*name).to_string(),
                label: format!("[{tag}]"),
                tag,
                redaction: per.get(*name).copied().unwrap_or(default_red),
                kind: Kind::Builtin(*b),
            });
        }

        let mut customs = Vec::new();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        if raw.custom.len() > MAX_CUSTOM {
            err(field_path(prefix, "custom"), format!("at most {MAX_CUSTOM} custom detectors"));
        }
        for (i, c) in raw.custom.iter().enumerate().take(MAX_CUSTOM) {
            let at = |f: &str| field_path(prefix, &format!("custom[{i}].{f}"));
            if !valid_custom_name(&c.name) {
                err(at("name"), "must match [a-z][a-z0-9_]* and be at most 64 bytes".into());
            } else if detectors::builtin_by_name(&c.name).is_some() || RESERVED_COUNTS.contains(&c.name.as_str()) {
                err(at("name"), format!("{:?} is a built-in detector name or a count the filter keeps", c.name));
            } else if !seen.insert(c.name.clone()) {
                err(at("name"), format!("duplicate custom detector name {:?}", c.name));
            }
            let re = if c.pattern.len() > 4096 {
                err(at("pattern"), "must be at most 4096 bytes".into());
                None
            } else {
                match regex_lite::RegexBuilder::new(&c.pattern).size_limit(CUSTOM_SIZE_LIMIT).build() {
                    Ok(re) if re.is_match("") => {
                        err(at("pattern"), "matches the empty string".into());
                        None
                    }
                    Ok(re) => Some(re),
                    Err(e) => {
                        err(at("pattern"), format!("invalid regex: {e}"));
                        None
                    }
                }
            };
            let validator = match c.validator.as_deref() {
                None => None,
                Some("luhn") => Some(Validator::Luhn),
                Some("mod97") => Some(Validator::Mod97),
                Some(v) => {
                    err(at("validator"), format!("unknown validator {v:?} (expected luhn or mod97)"));
                    None
                }
            };
            let own = match &c.redaction {
                None => None,
                Some(r) => {
                    let m = Redaction::parse(r);
                    if m.is_none() {
                        err(at("redaction"), format!("unknown redaction {:?} (expected label, partial or hash)", r.0));
                    }
                    m
                }
            };
            let (Some(re), Ok(idx)) = (re, u16::try_from(dets.len())) else { continue };
            customs.push(idx);
            let tag = c.name.to_ascii_uppercase();
            dets.push(Detector {
                name: c.name.clone(),
                label: format!("[{tag}]"),
                tag,
                redaction: per.get(&c.name).copied().or(own).unwrap_or(default_red),
                kind: Kind::Custom { re, validator },
            });
        }

        let uses_hash = dets.iter().any(|d| d.redaction == Redaction::Hash)
            || default_red == Redaction::Hash
            || per.values().any(|r| *r == Redaction::Hash);
        match &raw.hash_key {
            None if uses_hash => err(field_path(prefix, "hash_key"), "required when a redaction is \"hash\"".into()),
            Some(k) if k.len() < 16 => err(field_path(prefix, "hash_key"), "must be at least 16 bytes".into()),
            _ => {}
        }

        let mut allow = BTreeSet::new();
        for (i, a) in raw.allow.iter().enumerate() {
            if a.is_empty() {
                err(field_path(prefix, &format!("allow[{i}]")), "must be non-empty".into());
            }
            allow.insert(a.clone());
        }

        if let Some(forms) = &raw.us_ssn_forms {
            // the dashed form is always found: naming only another one
            // must not stop finding `123-45-6789`
            let mut f = detectors::SsnForms::default();
            if forms.is_empty() {
                err(field_path(prefix, "us_ssn_forms"), "must name at least one form: dashed, spaced or plain".into());
            }
            for (i, form) in forms.iter().enumerate() {
                match form.as_str() {
                    "dashed" => f.dashed = true,
                    "spaced" => f.spaced = true,
                    "plain" => f.plain = true,
                    other => err(field_path(prefix, &format!("us_ssn_forms[{i}]")), format!("unknown form {other:?} (expected dashed, spaced or plain)")),
                }
            }
            if enabled.get(Builtin::UsSsn).is_none() {
                err(field_path(prefix, "us_ssn_forms"), "set, but us_ssn is not among the detectors".into());
            }
            enabled.ssn_forms = f;
        }
        let fields = json::FieldRules::compile(&raw.fields, &field_path(prefix, "fields"), &mut err);
        let withhold_logprobs = match raw.logprobs.as_deref() {
            None | Some("withhold") => true,
            Some("mask") => false,
            Some(other) => {
                err(field_path(prefix, "logprobs"), format!("must be \"withhold\" or \"mask\", not {other:?}"));
                true
            }
        };

        if !errs.is_empty() {
            return Err(errs);
        }
        let anchors = detectors::anchors(&enabled);
        enabled.skip_covered = allow.is_empty();
        Ok(Masker {
            inner: Arc::new(Inner {
                dets,
                enabled,
                anchors,
                customs,
                allow,
                hash_key: raw.hash_key.map(String::into_bytes).unwrap_or_default(),
                fields,
                withhold_logprobs,
                one_pass: true,
            }),
        })
    }

    /// Names of the enabled detectors (built-ins first, then custom ones).
    pub fn detector_names(&self) -> Vec<&str> {
        self.inner.dets.iter().map(|d| d.name.as_str()).collect()
    }

    /// Masks free text; adds to `counts` one per value redacted.
    pub fn mask_text(&self, text: &str, counts: &mut Counts) -> String {
        match self.inner.mask_str(text, counts) {
            Some(s) => s,
            None => text.to_string(),
        }
    }

    /// Masks a text body given as bytes. Invalid UTF-8 sequences are copied
    /// unchanged and act as separators (nothing is detected across them).
    pub fn mask_text_bytes(&self, body: &[u8], counts: &mut Counts) -> Vec<u8> {
        let mut cands = Vec::new();
        self.inner.candidates_bytes(body, 0, true, &mut cands);
        let mut out = Vec::with_capacity(body.len());
        self.inner.render_bytes(body, 0, body.len(), &mut cands, &mut out, counts);
        out
    }

    /// JSON-aware masking of a whole response document (RFC 8259, UTF-8).
    ///
    /// Detectors run on the decoded value of each string (`"a\u0040b.com"`
    /// is an email); a changed string is re-encoded (minimal escaping), so
    /// the output stays valid JSON. Object keys and numbers are masked only
    /// in tool input (tool-call `arguments`, `input` objects: the model
    /// chooses them), literals and other numbers only by a field rule
    /// ([`RawFields`]). Everything not
    /// masked is copied byte for byte: a document without findings comes
    /// back unchanged. `logprobs` members are withheld unless the policy
    /// says `logprobs: mask` ([`RawMasking::logprobs`]). The string value
    /// of an `arguments` member (OpenAI tool-call arguments) that parses as
    /// JSON is masked as a JSON document of its own (one level deep).
    ///
    /// Errors: the body is not valid JSON (syntax, bad escapes, lone
    /// surrogates, control characters in strings, trailing data) or not
    /// UTF-8. The caller should fail closed.
    pub fn mask_json(&self, body: &[u8], counts: &mut Counts) -> Result<Vec<u8>, MaskError> {
        Ok(self.mask_json_changes(body, counts)?.unwrap_or_else(|| body.to_vec()))
    }

    /// [`Masker::mask_json`] without the copy of an unchanged document:
    /// `Ok(None)` when nothing is redacted (the body can be forwarded as
    /// it is), `Ok(Some(masked))` otherwise. Same errors.
    pub fn mask_json_changes(&self, body: &[u8], counts: &mut Counts) -> Result<Option<Vec<u8>>, MaskError> {
        // a Gemini stream as a JSON array: its chunks' text joined
        if body.trim_ascii_start().first() == Some(&b'[') {
            if let Some(out) = stream::chunk_array(&self.inner, body, counts)? {
                return Ok(Some(out));
            }
        }
        json::rewrite_changes(&self.inner, body, None, true, counts)
    }

    /// [`Masker::mask_json`] for a request body (the prompt): the same, but
    /// `logprobs` members (a request's `logprobs: true`) are left alone.
    pub fn mask_request_json(&self, body: &[u8], counts: &mut Counts) -> Result<Vec<u8>, MaskError> {
        Ok(json::rewrite_changes(&self.inner, body, None, false, counts)?.unwrap_or_else(|| body.to_vec()))
    }

    /// Masks tool-call arguments (a JSON document held in a string): as
    /// JSON, numbers included; text when not JSON and free of `\`
    /// escapes; else withheld whole as `"[ARGUMENTS]"` (counted as
    /// `arguments`).
    pub fn mask_tool_arguments(&self, args: &str, counts: &mut Counts) -> String {
        match json::mask_arguments(&self.inner, args.as_bytes(), 0, counts) {
            Some(out) => String::from_utf8_lossy(&out).into_owned(),
            None => args.to_string(),
        }
    }

    /// An incremental masker for a streamed body of the given kind.
    pub fn stream(&self, kind: StreamKind) -> StreamMasker {
        StreamMasker::new(Arc::clone(&self.inner), kind)
    }

    /// The same masker that also redacts these exact values as
    /// `[BACKEND_CREDENTIAL]` (counted as `backend_credential`), whatever the
    /// redaction settings: the credentials the gateway injects upstream
    /// (`Config::credentials`), should a backend echo them back. No values:
    /// unchanged.
    pub fn with_credentials(mut self, values: &[String]) -> Masker {
        let inner = Arc::make_mut(&mut self.inner);
        let Ok(idx) = u16::try_from(inner.dets.len()) else { return self };
        if values.is_empty() {
            return self;
        }
        let finders = values.iter().map(|v| memchr::memmem::Finder::new(v.as_bytes()).into_owned()).collect();
        inner.dets.push(Detector {
            name: "backend_credential".into(),
            tag: "BACKEND_CREDENTIAL".into(),
            label: "[BACKEND_CREDENTIAL]".into(),
            redaction: Redaction::Label,
            kind: Kind::Literal(finders),
        });
        inner.customs.push(idx);
        self
    }

    /// Turns the one-pass JSON scan on or off (measurements only: the
    /// output is the same either way). Off, string values are lexed first
    /// and those holding an anchor byte or an escape are scanned again.
    #[doc(hidden)]
    pub fn with_one_pass(mut self, on: bool) -> Masker {
        Arc::make_mut(&mut self.inner).one_pass = on;
        self
    }

    /// Runs the built-ins at every anchor of a JSON string value, also
    /// those inside a value already found (tests only: the output is the
    /// same either way; see `detectors::contained_after`).
    #[doc(hidden)]
    pub fn with_every_anchor(mut self) -> Masker {
        Arc::make_mut(&mut self.inner).enabled.skip_covered = false;
        self
    }
}

/// Redaction counts of one masking call by detector index, added to a
/// [`Counts`] (by detector name) by [`Tally::flush`]: counting a redacted
/// value is an array increment, not a map lookup by name (which showed in
/// the PII-dense profile, in Wasm most).
#[derive(Default)]
pub(crate) struct Tally {
    /// Counts of detectors 0..32.
    n: [u32; 32],
    /// Which of `n` are non-zero (bit per detector).
    used: u32,
    /// Redactions by detectors 32 and up, one entry each.
    over: Vec<u16>,
}

impl Tally {
    /// Counts one redaction by detector `det`.
    #[inline]
    pub(crate) fn add(&mut self, det: u16) {
        match self.n.get_mut(usize::from(det)) {
            Some(c) => {
                *c += 1;
                self.used |= 1 << det;
            }
            None => self.over.push(det),
        }
    }

    /// Adds the counts to `counts` by detector name and clears them.
    pub(crate) fn flush(&mut self, inner: &Inner, counts: &mut Counts) {
        let name = |det: usize| inner.dets.get(det).map_or("redacted", |d| d.name.as_str());
        while self.used != 0 {
            let det = self.used.trailing_zeros() as usize;
            self.used &= self.used - 1;
            let c = self.n.get_mut(det).map_or(0, std::mem::take);
            add(counts, name(det), u64::from(c));
        }
        for det in std::mem::take(&mut self.over) {
            add(counts, name(usize::from(det)), 1);
        }
    }
}

/// Adds `n` to `counts[name]`.
fn add(counts: &mut Counts, name: &str, n: u64) {
    match counts.get_mut(name) {
        Some(c) => *c += n,
        None => {
            counts.insert(name.to_string(), n);
        }
    }
}

/// Adds one to `counts[name]`.
fn count(counts: &mut Counts, name: &str) {
    match counts.get_mut(name) {
        Some(n) => *n += 1,
        None => {
            counts.insert(name.to_string(), 1);
        }
    }
}

fn hex16(mac: &[u8; 32]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(16);
    for b in mac.iter().take(8) {
        s.push(char::from(H.get(usize::from(b >> 4)).copied().unwrap_or(b'0')));
        s.push(char::from(H.get(usize::from(b & 15)).copied().unwrap_or(b'0')));
    }
    s
}

fn partial(value: &str, out: &mut String) {
    let total = value.chars().filter(|c| c.is_alphanumeric()).count();
    let keep = if total >= 8 { 4 } else { 0 };
    let mut seen = 0usize;
    for c in value.chars() {
        if c.is_alphanumeric() {
            seen += 1;
            out.push(if seen + keep > total { c } else { '*' });
        } else {
            out.push(c);
        }
    }
}

impl Inner {
    /// Whether JSON string values are scanned while they are lexed (see
    /// `json::scan_value`); off only for measurements.
    #[inline]
    /// Whether response JSON has its `logprobs` members withheld.
    pub(crate) fn withhold_logprobs(&self) -> bool {
        self.withhold_logprobs
    }

    pub(crate) fn one_pass(&self) -> bool {
        self.one_pass
    }

    /// Whether custom (pattern) detectors are configured: they may match
    /// strings without any anchor byte.
    #[inline]
    pub(crate) fn has_custom(&self) -> bool {
        !self.customs.is_empty()
    }

    pub(crate) fn anchors(&self) -> &classify::Anchors {
        &self.anchors
    }

    /// Candidates in `s` (offset by `base`): built-ins and custom patterns.
    /// Returns the start of an open PEM block (see `detectors::scan`).
    fn candidates(&self, s: &str, base: usize, open_from: usize, from: usize, out: &mut Vec<Cand>) -> Option<usize> {
        let open = detectors::scan(&self.enabled, &self.anchors, s.as_bytes(), base, open_from, from, out);
        self.custom_candidates(s, base, out);
        // (a PEM header split by invisible characters is held open too)
        let hidden = self.invisible_candidates(s, base, open_from, from, out);
        self.percent_candidates(s, base, from, out);
        [open, hidden].into_iter().flatten().min()
    }

    /// Candidates that URL percent-escapes hide (`tel=%2B14155550134`,
    /// `q=card%204111%201111%201111%201111`, `key%3DwJalr…`: a logged URL
    /// or form body): when `s` holds a percent-escape of printable ASCII
    /// (`detectors::percent_decoded_at`), `s` is scanned again with those
    /// decoded, and what is found there is added with its span in `s` (the
    /// escapes inside it included), as [`Inner::invisible_candidates`]
    /// does. `from`: as for `detectors::scan`.
    ///
    /// A value percent-encoded more than once (a URL inside a URL's query,
    /// as in a login or tracking link: `next=%2Fcb%3Fe%3Djane%2540acme.com`)
    /// is decoded again while the decoded text still holds an escape, up to
    /// [`PERCENT_LAYERS`] layers in all.
    fn percent_candidates(&self, s: &str, base: usize, from: usize, out: &mut Vec<Cand>) {
        self.percent_layer(s, base, from, out, 1);
    }

    /// [`Inner::percent_candidates`] of decoding layer `layer` (1 for `s`
    /// as written).
    fn percent_layer(&self, s: &str, base: usize, from: usize, out: &mut Vec<Cand>, layer: u8) {
        // (a form body's `+` is a space in the text as written only: one
        // decoded from `%2B` stays a `+`, so whether a later layer runs,
        // which depends on escapes anywhere in `s`, changes nothing there)
        let Some(v) = Visible::percent_decoded(s, layer == 1) else { return };
        let first = out.len();
        let from = v.stripped(from.saturating_sub(base));
        detectors::scan(&self.enabled, &self.anchors, v.text.as_bytes(), 0, usize::MAX, from, out);
        self.custom_candidates(&v.text, 0, out);
        // invisible characters written as escapes (`4111%E2%80%8B1111…`)
        self.invisible_candidates(&v.text, 0, usize::MAX, from, out);
        // escapes left by the decoding (`%2540` gave `%40`): the next layer
        if layer < PERCENT_LAYERS && v.holds_escape() {
            self.percent_layer(&v.text, 0, from, out, layer + 1);
        }
        // (a PEM block is held in a stream until its footer by the first
        // scan alone: one found only here would depend on the chunking)
        if let Some(pem) = self.enabled.get(detectors::Builtin::PrivateKey) {
            let found = out.split_off(first);
            out.extend(found.into_iter().filter(|c| c.det != pem));
        }
        v.to_original(out.get_mut(first..).unwrap_or(&mut []), base);
    }

    /// Candidates that invisible characters split (`4111\u{200b}1111…`,
    /// `jane\u{ad}.doe@…`): when `s` holds an invisible character
    /// (`detectors::invisible_at`), `s` is
    /// scanned again without them and what is found there is added with
    /// its span in `s` (the invisible characters inside it included).
    /// Values found in `s` itself are found again and merge with their
    /// copies (`Inner::select`); removing them never hides a value the
    /// first scan finds, as `card\u{200b}4111…` would be glued otherwise.
    /// `open_from`, `from` and the result: as for `detectors::scan` (a
    /// stream's release point, offset by `base`; the start of a PEM block
    /// whose header holds invisible characters and whose footer may still
    /// come).
    fn invisible_candidates(&self, s: &str, base: usize, open_from: usize, from: usize, out: &mut Vec<Cand>) -> Option<usize> {
        let v = Visible::of(s)?;
        let first = out.len();
        let open_from = if open_from == usize::MAX { usize::MAX } else { v.stripped(open_from.saturating_sub(base)) };
        let from = v.stripped(from.saturating_sub(base));
        let mut open = detectors::scan(&self.enabled, &self.anchors, v.text.as_bytes(), 0, open_from, from, out).map(|p| v.original(p));
        if open.is_some_and(|p| s.len().saturating_sub(p) >= detectors::PEM_WINDOW) {
            // (its window is counted in visible bytes: padding would keep
            // it open past what a stream may hold, so it is decided now,
            // as the text ended here)
            out.truncate(first);
            open = None;
            detectors::scan(&self.enabled, &self.anchors, v.text.as_bytes(), 0, usize::MAX, from, out);
        }
        self.custom_candidates(&v.text, 0, out);
        v.to_original(out.get_mut(first..).unwrap_or(&mut []), base);
        open.map(|p| base + p)
    }

    /// Candidates of the custom detectors in `s` (offset by `base`).
    fn custom_candidates(&self, s: &str, base: usize, out: &mut Vec<Cand>) {
        for &idx in &self.customs {
            let (re, validator) = match self.dets.get(usize::from(idx)).map(|d| &d.kind) {
                Some(Kind::Custom { re, validator }) => (re, validator),
                Some(Kind::Literal(finders)) => {
                    for f in finders {
                        for start in f.find_iter(s.as_bytes()) {
                            out.push(Cand { start: base + start, end: base + start + f.needle().len(), det: idx });
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            for m in re.find_iter(s) {
                if m.is_empty() {
                    continue;
                }
                let ok = match validator {
                    None => true,
                    Some(Validator::Luhn) => detectors::luhn(m.as_str().as_bytes()),
                    Some(Validator::Mod97) => detectors::mod97(m.as_str().as_bytes()),
                };
                if ok {
                    out.push(Cand { start: base + m.start(), end: base + m.end(), det: idx });
                }
            }
        }
    }

    /// Whether the `private_key` built-in is on (streamed text then holds
    /// base64 lines a key footer may end).
    pub(crate) fn holds_pem_tails(&self) -> bool {
        self.enabled.get(Builtin::PrivateKey).is_some()
    }

    /// Candidates over a byte buffer: each valid UTF-8 run is scanned on its
    /// own (invalid bytes separate runs; an incomplete sequence at the end is
    /// left out). `from`: where the text not yet released starts (a stream;
    /// 0 for a whole text): a key tail is not looked for before it. `at_end`:
    /// the buffer holds the end of the text (nothing is open; see
    /// `detectors::scan`).
    pub(crate) fn candidates_bytes(&self, buf: &[u8], from: usize, at_end: bool, out: &mut Vec<Cand>) -> Option<usize> {
        let open_from = if at_end { usize::MAX } else { from };
        let mut off = 0usize;
        let mut open = None;
        while let Some(rest) = buf.get(off..) {
            if rest.is_empty() {
                break;
            }
            let (valid, skip) = match std::str::from_utf8(rest) {
                Ok(s) => (s, None),
                Err(e) => {
                    let v = e.valid_up_to();
                    let s = rest.get(..v).and_then(|r| std::str::from_utf8(r).ok()).unwrap_or("");
                    (s, Some(e.error_len()))
                }
            };
            // a run ended by an invalid byte is complete
            let seg_open = match skip {
                Some(Some(_)) => usize::MAX,
                _ => open_from,
            };
            let o = self.candidates(valid, off, seg_open, from, out);
            if open.is_none() {
                open = o;
            }
            match skip {
                None | Some(None) => break,
                Some(Some(l)) => off += valid.len() + l,
            }
        }
        open
    }

    /// Keeps the candidates to redact within `from..to`: drops allow-listed
    /// values, then merges overlapping candidates into one span (so no byte
    /// of any candidate survives) attributed to the first of them (earliest
    /// start, then longest, then detector order).
    fn select(&self, text: &[u8], cands: &mut Vec<Cand>, from: usize, to: usize) {
        cands.retain(|c| c.start >= from && c.end <= to && c.start < c.end);
        if !self.allow.is_empty() {
            cands.retain(|c| {
                let v = text.get(c.start..c.end).and_then(|v| std::str::from_utf8(v).ok());
                !v.is_some_and(|v| self.allow.contains(v))
            });
        }
        if cands.len() > 1 {
            let order = |a: &Cand, b: &Cand| a.start.cmp(&b.start).then(b.end.cmp(&a.end)).then(a.det.cmp(&b.det));
            // built-ins come in anchor order: often sorted already
            if !cands.is_sorted_by(|a, b| order(a, b).is_le()) {
                cands.sort_unstable_by(order);
            }
            // in place: a candidate starting inside the kept one before it joins it
            cands.dedup_by(|c, kept| {
                let joins = c.start < kept.end;
                if joins {
                    kept.end = kept.end.max(c.end);
                }
                joins
            });
        }
    }

    /// Appends the replacement for `value` found by detector `det` and
    /// counts it in `counts`.
    fn redact_into(&self, det: u16, value: &str, out: &mut String, counts: &mut Counts) {
        if let Some(d) = self.dets.get(usize::from(det)) {
            count(counts, &d.name);
        }
        self.replacement(det, value, out);
    }

    /// Appends the replacement for `value` found by detector `det`.
    fn replacement(&self, det: u16, value: &str, out: &mut String) {
        let Some(d) = self.dets.get(usize::from(det)) else {
            out.push_str("[REDACTED]");
            return;
        };
        match d.redaction {
            Redaction::Label => out.push_str(&d.label),
            Redaction::Partial => partial(value, out),
            Redaction::Hash => {
                let norm = normalize(&d.kind, value);
                let mac = hmac_sha256::HMAC::mac(norm.as_bytes(), &self.hash_key);
                out.push('[');
                out.push_str(&d.tag);
                out.push(':');
                out.push_str(&hex16(&mac));
                out.push(']');
            }
        }
    }

    /// Masks a complete string; `None` when nothing is redacted.
    pub(crate) fn mask_str(&self, s: &str, counts: &mut Counts) -> Option<String> {
        let mut cands = Vec::new();
        if !self.find(s, &mut cands) {
            return None;
        }
        let mut out = String::with_capacity(s.len() + 16);
        let mut last = 0usize;
        for c in &cands {
            out.push_str(s.get(last..c.start).unwrap_or(""));
            self.redact_into(c.det, s.get(c.start..c.end).unwrap_or(""), &mut out, counts);
            last = c.end;
        }
        out.push_str(s.get(last..).unwrap_or(""));
        Some(out)
    }

    /// The values to redact in the complete string `s`, into `cands`
    /// (cleared first; selected and merged, in order). Whether there is any.
    pub(crate) fn find(&self, s: &str, cands: &mut Vec<Cand>) -> bool {
        cands.clear();
        self.candidates(s, 0, usize::MAX, 0, cands);
        self.selected(s, cands)
    }

    /// The value of a member named for an AWS secret access key
    /// (`SecretAccessKey`, `aws_secret_access_key`, …): redacted as an
    /// `aws_access_key` when it is 40 of `[A-Za-z0-9/+]` (and that
    /// detector is on; the allow-list applies).
    pub(crate) fn find_aws_secret(&self, s: &str, cands: &mut Vec<Cand>) -> bool {
        cands.clear();
        let Some(det) = self.enabled.get(detectors::Builtin::AwsAccessKey) else { return false };
        if s.len() == 40 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'+') {
            cands.push(Cand { start: 0, end: 40, det });
        }
        self.selected(s, cands)
    }

    /// [`Inner::find`] for a string that may hold HTML markup (a search
    /// engine's highlighted fragment: `<em>jane</em>.roe@example.org`):
    /// it is also scanned without its tags (see [`markup_tag_at`]), and
    /// what is found there is added with its span in `s` (the tags inside
    /// it included), as [`Inner::invisible_candidates`] does.
    pub(crate) fn find_markup(&self, s: &str, cands: &mut Vec<Cand>) -> bool {
        cands.clear();
        self.candidates(s, 0, usize::MAX, 0, cands);
        if let Some(v) = Visible::without(s, b'<', markup_tag_at) {
            let first = cands.len();
            self.candidates(&v.text, 0, usize::MAX, 0, cands);
            v.to_original(cands.get_mut(first..).unwrap_or(&mut []), 0);
        }
        self.selected(s, cands)
    }

    /// [`Inner::find`] for a complete string whose built-in anchor
    /// positions are known (collected while lexing it); `wide`: it may hold
    /// bytes that are not ASCII (false: it holds none).
    pub(crate) fn find_at(&self, s: &str, positions: &[usize], wide: bool, cands: &mut Vec<Cand>) -> bool {
        cands.clear();
        detectors::scan_at(&self.enabled, s.as_bytes(), positions, cands);
        self.custom_candidates(s, 0, cands);
        if wide {
            self.invisible_candidates(s, 0, usize::MAX, 0, cands);
        }
        // (`%` is an anchor whenever a built-in is on, and a digit after a
        // form body's `+` is one when a digit detector is; with custom
        // detectors alone there are none)
        let b = s.as_bytes();
        let form_digit = |p: usize| p >= 2 && b.get(p - 1) == Some(&b'+') && b.get(p - 2).is_some_and(u8::is_ascii_alphanumeric);
        let escaped = positions.iter().any(|&p| match b.get(p) {
            Some(b'%') => true,
            Some(d) => d.is_ascii_digit() && form_digit(p),
            None => false,
        });
        if escaped || (positions.is_empty() && memchr::memchr(b'%', b).is_some()) {
            self.percent_candidates(s, 0, 0, cands);
        }
        self.selected(s, cands)
    }

    /// Selects the candidates found in the whole of `s` (see
    /// [`Inner::select`]); whether any is left.
    fn selected(&self, s: &str, cands: &mut Vec<Cand>) -> bool {
        if !cands.is_empty() {
            self.select(s.as_bytes(), cands, 0, s.len());
        }
        !cands.is_empty()
    }

    /// Appends the JSON string literal of `s` with the values `cands`
    /// (from [`Inner::find`]) redacted; `tmp` is scratch space. `plain`:
    /// `s` holds no byte that needs escaping (it is the body of a JSON
    /// string without escapes), so its text is copied as it is.
    pub(crate) fn quote_masked(&self, s: &str, plain: bool, cands: &[Cand], out: &mut Vec<u8>, tmp: &mut String, tally: &mut Tally) {
        let text = |t: &str, out: &mut Vec<u8>| {
            if plain {
                out.extend_from_slice(t.as_bytes());
            } else {
                json::escape_into(t, out);
            }
        };
        out.push(b'"');
        let mut last = 0usize;
        for c in cands {
            text(s.get(last..c.start).unwrap_or(""), out);
            match self.dets.get(usize::from(c.det)) {
                // a label is `[` + a detector name uppercased + `]`: nothing to escape
                Some(d) if d.redaction == Redaction::Label => {
                    tally.add(c.det);
                    out.extend_from_slice(d.label.as_bytes());
                }
                _ => {
                    tmp.clear();
                    tally.add(c.det);
                    self.replacement(c.det, s.get(c.start..c.end).unwrap_or(""), tmp);
                    json::escape_into(tmp, out);
                }
            }
            last = c.end;
        }
        text(s.get(last..).unwrap_or(""), out);
        out.push(b'"');
    }

    /// Renders `buf[from..to]` with the selected candidates redacted.
    pub(crate) fn render_bytes(&self, buf: &[u8], from: usize, to: usize, cands: &mut Vec<Cand>, out: &mut Vec<u8>, counts: &mut Counts) {
        self.select(buf, cands, from, to);
        let mut last = from;
        let mut tmp = String::new();
        for c in cands.iter() {
            out.extend_from_slice(buf.get(last..c.start).unwrap_or(&[]));
            let value = String::from_utf8_lossy(buf.get(c.start..c.end).unwrap_or(&[]));
            tmp.clear();
            self.redact_into(c.det, &value, &mut tmp, counts);
            out.extend_from_slice(tmp.as_bytes());
            last = c.end;
        }
        out.extend_from_slice(buf.get(last..to).unwrap_or(&[]));
    }
}

/// How many layers of URL percent-encoding [`Inner::percent_candidates`]
/// decodes: a value encoded twice (`%252B1415…`, a URL in a URL's query)
/// or three times is found; one encoded more often is not.
const PERCENT_LAYERS: u8 = 3;

/// A text without its invisible format characters (`detectors::invisible_at`:
/// soft hyphens, zero width spaces and joiners, direction marks, …, raw or
/// as `\uXXXX` escapes of JSON held in text), or with its URL
/// percent-escapes decoded ([`Visible::percent_decoded`]).
struct Visible {
    text: String,
    /// `(index in text, bytes removed before it)`, one per removal, by index.
    removed: Vec<(u32, u32)>,
    /// Each removal is the last two bytes of a percent-escape whose
    /// decoded byte sits right before it in `text`.
    decoded: bool,
}

impl Visible {
    /// `s` without its invisible characters; `None` when it has none.
    fn of(s: &str) -> Option<Visible> {
        let b = s.as_bytes();
        let raw = if s.is_ascii() { None } else { memchr::memchr3_iter(0xC2, 0xE2, 0xEF, b).find(|&i| detectors::invisible_at(b, i) > 0) };
        let escaped = memchr::memchr_iter(b'\\', b).find(|&i| detectors::invisible_at(b, i) > 0);
        let first = match (raw, escaped) {
            (Some(x), Some(y)) => x.min(y),
            (x, y) => x.or(y)?,
        };
        Visible::from(s, first, detectors::invisible_at)
    }

    /// `s` without the pieces `len_at` measures (its length at a byte, 0
    /// where none starts), each starting with byte `lead`; `None` when it
    /// has none.
    fn without(s: &str, lead: u8, len_at: fn(&[u8], usize) -> usize) -> Option<Visible> {
        let b = s.as_bytes();
        let first = memchr::memchr_iter(lead, b).find(|&i| len_at(b, i) > 0)?;
        Visible::from(s, first, len_at)
    }

    /// `s` without the pieces `len_at` measures, the first at `first`.
    fn from(s: &str, first: usize, len_at: fn(&[u8], usize) -> usize) -> Option<Visible> {
        // (whole characters, ASCII escapes or tags are removed: still UTF-8)
        Visible::rewritten(s, first, false, |b, i| Some(([0; 4], 0, len_at(b, i))))
    }

    /// `s` with its percent-escapes of printable ASCII and of whole UTF-8
    /// characters decoded (`detectors::percent_decoded_at`; RFC 3986 §2.1)
    /// and, with `form`, the `+` of a form body read as a space
    /// (`detectors::form_space_at`), in one pass (a `%2540` gives `%40`);
    /// `None` when it has none.
    fn percent_decoded(s: &str, form: bool) -> Option<Visible> {
        let b = s.as_bytes();
        // (a `+` is a space only in a token that reads as a form body or
        // query string: `512+256+1024` in prose is a sum; the tokens are
        // found at the first `+` that may be a space, in one pass over `s`)
        let forms = std::cell::OnceCell::new();
        let space = |i: usize| {
            form && detectors::form_space_at(b, i) && {
                in_spans(forms.get_or_init(|| form_tokens(b)), i)
            }
        };
        // (an escaped `+` is a space in an escaped URL's query string, in
        // every layer: `next=%2Fpay%3Fcard%3D4111%2B1111…`; `sum=200%2B300`
        // keeps it, as a form body escapes a `+` that is no space)
        let inner = std::cell::OnceCell::new();
        let escaped_space = |i: usize| {
            detectors::escaped_form_space_at(b, i) && {
                in_spans(inner.get_or_init(|| escaped_query_values(b)), i)
            }
        };
        let piece = |b: &[u8], i: usize| {
            if escaped_space(i) {
                return Some(([b' ', 0, 0, 0], 1, 3));
            }
            detectors::percent_decoded_at(b, i).or_else(|| space(i).then_some(([b' ', 0, 0, 0], 1, 1)))
        };
        let first = memchr::memchr2_iter(b'%', b'+', b).find(|&i| piece(b, i).is_some())?;
        // (escapes are replaced by whole characters: still UTF-8)
        Visible::rewritten(s, first, true, piece)
    }

    /// Whether `text` holds a percent-escape that [`Visible::percent_decoded`]
    /// would decode (one a decoding left, as `%2540` leaves `%40`).
    fn holds_escape(&self) -> bool {
        let b = self.text.as_bytes();
        memchr::memchr_iter(b'%', b).any(|i| detectors::percent_decoded_at(b, i).is_some())
    }

    /// `s` with pieces rewritten, the first at `first`: `piece(b, i)` gives
    /// what replaces the piece at byte `i` (`bytes[..n]`; `n` = 0: removed)
    /// and the piece's length in `s`, `None` (or a length of 0) where none
    /// starts; `decoded`: see [`Visible::decoded`]. `None` if the result is
    /// not UTF-8.
    fn rewritten(s: &str, first: usize, decoded: bool, piece: impl Fn(&[u8], usize) -> Option<([u8; 4], usize, usize)>) -> Option<Visible> {
        let b = s.as_bytes();
        let mut text = Vec::with_capacity(b.len());
        text.extend_from_slice(b.get(..first)?);
        let mut removed = Vec::new();
        let mut total = 0u32;
        let mut i = first;
        while let Some(&byte) = b.get(i) {
            match piece(b, i) {
                Some((d, n, len)) if len > 0 => {
                    text.extend_from_slice(d.get(..n)?);
                    if len > n {
                        total = total.saturating_add(u32::try_from(len - n).ok()?);
                        removed.push((u32::try_from(text.len()).ok()?, total));
                    }
                    i += len;
                }
                _ => {
                    text.push(byte);
                    i += 1;
                }
            }
        }
        Some(Visible { text: String::from_utf8(text).ok()?, removed, decoded })
    }

    /// The index in `text` of byte `x` of the original text (of the next
    /// byte kept, when `x` is inside a removed character).
    fn stripped(&self, x: usize) -> usize {
        // removal k sits before original byte `at + removed-so-far`
        let k = self.removed.partition_point(|(at, n)| (*at as usize).saturating_add(*n as usize) <= x);
        x - k.checked_sub(1).and_then(|k| self.removed.get(k)).map_or(0, |(_, n)| *n as usize).min(x)
    }

    /// Moves candidates found in `text` to their spans in the original
    /// text (offset by `base`), the removed pieces inside them included.
    fn to_original(&self, cands: &mut [Cand], base: usize) {
        for c in cands {
            let mut end = self.original(c.end.saturating_sub(1)) + 1;
            // a value ending in a decoded character takes its whole escape
            if self.decoded {
                if let Ok(k) = self.removed.binary_search_by_key(&c.end, |(at, _)| *at as usize) {
                    let before = k.checked_sub(1).and_then(|j| self.removed.get(j)).map_or(0, |(_, n)| *n as usize);
                    end += self.removed.get(k).map_or(0, |(_, n)| *n as usize).saturating_sub(before);
                }
            }
            c.start = base + self.original(c.start);
            c.end = base + end;
        }
    }

    /// The index in the original text of byte `x` of `text`.
    fn original(&self, x: usize) -> usize {
        let k = self.removed.partition_point(|(at, _)| *at as usize <= x);
        x + k.checked_sub(1).and_then(|k| self.removed.get(k)).map_or(0, |(_, n)| *n as usize)
    }
}

/// The tokens of `b` (split at whitespace as a text stream cuts at it,
/// quotes and `<`/`>`) that read as
/// an HTML form body or URL query string: they hold an `=` and one of `?`,
/// `&` or `%` (`?q=4111+1111…`, `name=Jane+Doe&card=…`, `tel=%2B1+415…`).
/// `(start, end)` ranges, in order.
fn form_tokens(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let (mut st, mut eq, mut sep) = (0usize, false, false);
    for (i, &c) in b.iter().enumerate() {
        match c {
            c if stream::is_ws(c) || matches!(c, b'"' | b'\'' | b'<' | b'>') => {
                if eq && sep {
                    out.push((st, i));
                }
                (st, eq, sep) = (i + 1, false, false);
            }
            b'=' => eq = true,
            b'?' | b'&' | b'%' => sep = true,
            _ => {}
        }
    }
    if eq && sep {
        out.push((st, b.len()));
    }
    out
}

/// Whether `i` lies in one of `spans` (`(start, end)` ranges, in order).
fn in_spans(spans: &[(usize, usize)], i: usize) -> bool {
    let k = spans.partition_point(|(_, end)| *end <= i);
    spans.get(k).is_some_and(|(st, _)| *st <= i)
}

/// The values of an escaped URL's query string in `b` (`%3Fcard%3D4111%2B…`
/// in `next=%2Fpay%3Fcard%3D4111%2B1111`): from an escaped `=` (`%3D`)
/// after an escaped `?` (`%3F`) in the same token to the next escaped `&`
/// (`%26`), or the end of the query: its escaped fragment (`%23`) or the
/// token's end (whitespace as a text stream cuts at it, a quote, `<`,
/// `>`, or an unescaped `=`, `&`, `?` or `#`, which belong to the outer
/// URL). `(start, end)` ranges, in order.
fn escaped_query_values(b: &[u8]) -> Vec<(usize, usize)> {
    /// Where in the escaped URL a byte is.
    #[derive(PartialEq)]
    enum Part {
        Before,
        Query,
        Fragment,
    }
    let mut out = Vec::new();
    let (mut part, mut value) = (Part::Before, None::<usize>);
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        // (a `%` without two hex digits is a byte like any other: skipping
        // three there could skip a space that ends the token)
        let escape = c == b'%' && b.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
        let hex = |k: usize| b.get(i + k).map_or(0, |h| h | 0x20);
        let esc = if escape { [hex(1), hex(2)] } else { [0, 0] };
        // the part that starts here, if another does (which ends a value)
        let next = match (c, esc) {
            (c, _) if stream::is_ws(c) || matches!(c, b'"' | b'\'' | b'<' | b'>' | b'=' | b'&' | b'?' | b'#') => Some(Part::Before),
            (b'%', [b'2', b'3']) => Some(Part::Fragment),
            (b'%', [b'3', b'f']) if part != Part::Fragment => Some(Part::Query),
            (b'%', [b'2', b'6']) if part == Part::Query => Some(Part::Query),
            (b'%', [b'3', b'd']) if part == Part::Query && value.is_none() => {
                value = Some(i + 3);
                None
            }
            _ => None,
        };
        if let Some(next) = next {
            if let Some(st) = value.take() {
                out.push((st, i));
            }
            part = next;
        }
        i += if escape { 3 } else { 1 };
    }
    if let Some(st) = value {
        out.push((st, b.len()));
    }
    out
}

/// The inline HTML elements highlighters wrap matches in (any case).
/// Block and table elements (`<td>`, `<p>`, `<br>`) stay: taken out, they
/// would glue the digits of two cells into one number.
const INLINE_TAGS: [&str; 12] = ["em", "mark", "b", "strong", "i", "u", "span", "hi", "hl", "wbr", "font", "ins"];

/// The length of the HTML tag at `i` (0: none), as highlighters write
/// them: `<` or `</`, an [`INLINE_TAGS`] name (`em`, `mark`, `b`,
/// `strong`, …), then `>` or, after a space, attributes of at most 64
/// bytes holding no `<` or `>` (`<em class="hlt1">`,
/// `<span class='highlight'>`).
fn markup_tag_at(b: &[u8], i: usize) -> usize {
    let Some(r) = b.get(i..).filter(|r| r.first() == Some(&b'<')) else { return 0 };
    let mut k = 1 + usize::from(r.get(1) == Some(&b'/'));
    if !r.get(k).is_some_and(u8::is_ascii_alphabetic) {
        return 0;
    }
    let name = r.get(k..).unwrap_or(&[]).iter().take(11).take_while(|c| c.is_ascii_alphanumeric()).count();
    let inline = r.get(k..k + name).is_some_and(|n| {
        INLINE_TAGS.iter().any(|t| n.eq_ignore_ascii_case(t.as_bytes()))
    });
    if !inline {
        return 0;
    }
    k += name;
    match r.get(k) {
        Some(b'>') => k + 1,
        Some(b' ') => match r.get(k..).unwrap_or(&[]).iter().take(66).position(|c| matches!(c, b'<' | b'>')) {
            Some(n) if r.get(k + n) == Some(&b'>') => k + n + 1,
            _ => 0,
        },
        _ => 0,
    }
}

/// `value` without its `\uXXXX` escapes (escaped digit-group separators
/// of JSON held in text).
fn without_escapes(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains("\\u") {
        return value.into();
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(k) = rest.find("\\u") {
        out.push_str(rest.get(..k).unwrap_or(""));
        let hex = rest.get(k + 2..k + 6).filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
        let skip = if hex.is_some() { 6 } else { 2 };
        if hex.is_none() {
            out.push_str("\\u");
        }
        rest = rest.get(k + skip..).unwrap_or("");
    }
    out.push_str(rest);
    out.into()
}

/// An address whose `@` is written `%40` or as an HTML character reference
/// (`&#64;`, `&#x40;`, `&commat;`: `detectors::at_reference_len`), with
/// `@` (lowercase).
fn at_spellings(value: &str) -> String {
    let v = value.to_ascii_lowercase();
    let b = v.as_bytes();
    for (i, _) in v.match_indices(['%', '&']) {
        let n = if b.get(i..i + 3) == Some(b"%40") { 3 } else { detectors::at_reference_len(b, i) };
        if let (true, Some(head), Some(tail)) = (n > 0, v.get(..i), v.get(i + n..)) {
            return format!("{head}@{tail}");
        }
    }
    v
}

/// The value hashed for `hash` redaction (see [`Redaction::Hash`]).
fn normalize<'a>(kind: &Kind, value: &'a str) -> std::borrow::Cow<'a, str> {
    use std::borrow::Cow;
    // a value split by invisible characters is the same value, and one
    // with percent-escapes (`%2B1415…`, `%252B1415…`) the same as decoded
    // (up to `PERCENT_LAYERS` times, in a loop: no recursion on what a
    // value holds)
    let mut decoded: Option<String> = None;
    for _ in 0..PERCENT_LAYERS {
        match Visible::percent_decoded(decoded.as_deref().unwrap_or(value), false) {
            Some(v) => decoded = Some(v.text),
            None => break,
        }
    }
    let decoded = decoded.as_deref().unwrap_or(value);
    match Visible::of(decoded) {
        Some(v) => Cow::Owned(normalize_plain(kind, &v.text).into_owned()),
        None if decoded != value => Cow::Owned(normalize_plain(kind, decoded).into_owned()),
        None => normalize_plain(kind, value),
    }
}

/// [`normalize`] of a value without invisible characters or escapes.
fn normalize_plain<'a>(kind: &Kind, value: &'a str) -> std::borrow::Cow<'a, str> {
    use std::borrow::Cow;
    match kind {
        Kind::Builtin(Builtin::PaymentCard | Builtin::UsSsn) => Cow::Owned(without_escapes(value).chars().filter(char::is_ascii_digit).collect()),
        Kind::Builtin(Builtin::Phone) => {
            let mut s = String::new();
            if value.starts_with('+') {
                s.push('+');
            }
            s.extend(without_escapes(value).chars().filter(char::is_ascii_digit));
            Cow::Owned(s)
        }
        Kind::Builtin(Builtin::Iban) => {
            Cow::Owned(without_escapes(value).chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_uppercase()).collect())
        }
        Kind::Builtin(Builtin::Email) => {
            // `jane%40example.com`, `jane&#64;…`, `jane\_roe@…` (Markdown)
            // are `jane@…`, `jane_roe@…` too
            let v = if value.contains('@') { value.to_ascii_lowercase() } else { at_spellings(value) };
            Cow::Owned(if v.contains('\\') { v.replace('\\', "") } else { v })
        }
        _ => Cow::Borrowed(value),
    }
}
