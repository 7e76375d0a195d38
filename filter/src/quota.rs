//! Token quotas, independent of the proxy-wasm host: per resource, a budget of
//! LLM tokens (and optionally of requests) per identity per fixed window.
//!
//! The filter's part, in order:
//! 1. on the request headers, read the identity's counter from Envoy shared
//!    data under [`counter_key`] (one fixed key per resource and identity, so
//!    the key set never grows with time), [`check`] it and, when allowed,
//!    [`admit`] the request; both in one compare-and-swap [`update`] with a
//!    bounded retry, failing closed when every attempt loses the race;
//! 2. optionally, with `check_max_tokens`, pre-check the request body's
//!    [`requested_max_tokens`] against what remains; on a streamed chat
//!    request, [`ensure_include_usage`] so the upstream reports usage;
//! 3. keep the last [`TAIL_BYTES`] of the response and, at its end, [`debit`]
//!    the tokens of [`usage_from_tail`], or of [`estimate`] when the response
//!    carried no usage.
//!
//! Over budget → 429 `quota_exceeded` with `Retry-After` and OpenAI-style
//! `x-ratelimit-*-tokens` headers ([`Exceeded::headers`]); no key claim → 403
//! `quota_key_missing`; shared data unusable → 503 `quota_unavailable`.
//!
//! The check runs before the response is known, so requests in flight when a
//! budget runs out may overshoot it by their own usage; each admitted
//! request reserves its [`reservation`], and `check_max_tokens` refuses
//! requests that ask for more than remains.

use crate::config::Quota;
use crate::deny::Denial;
use serde_json::{Map, Value};

/// How much of the end of a response the filter keeps for
/// [`usage_from_tail`], bytes: OpenAI puts `usage` near the end of a JSON
/// body and in the final event of a stream; a Responses API object follows
/// it with `user` and the caller's `metadata` (up to 16 pairs of 64 + 512
/// characters, about 10 KiB with escapes), which must not push it out.
pub const TAIL_BYTES: usize = 16 << 10;

/// Largest token budget a policy may set per window.
pub const MAX_TOKENS_BUDGET: u64 = 1_000_000_000_000;

/// Largest request budget a policy may set per window.
pub const MAX_REQUESTS_BUDGET: u64 = 1_000_000_000;

/// Compare-and-swap attempts of one [`update`] before it gives up (fail closed).
pub const CAS_ATTEMPTS: u32 = 8;

/// Prefix of every counter key in Envoy shared data.
pub const KEY_PREFIX: &str = "nhi_gate.quota.";

/// A quota window: fixed, aligned to the Unix epoch (a `minute` window runs
/// from second :00 to :59, an `hour` from :00:00, a `day` from 00:00:00 UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    Minute,
    Hour,
    Day,
}

impl Window {
    /// Parses a configuration value: `minute`, `hour` or `day`.
    pub fn parse(name: &str) -> Option<Window> {
        match name {
            "minute" => Some(Window::Minute),
            "hour" => Some(Window::Hour),
            "day" => Some(Window::Day),
            _ => None,
        }
    }

    /// The configuration name: `minute`, `hour` or `day`.
    pub fn name(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
        }
    }

    /// Length of the window, seconds.
    pub fn seconds(self) -> u64 {
        match self {
            Window::Minute => 60,
            Window::Hour => 3_600,
            Window::Day => 86_400,
        }
    }

    /// Start of the window containing `now_s` (seconds since the epoch).
    pub fn start(self, now_s: u64) -> u64 {
        now_s - now_s % self.seconds()
    }

    /// Seconds from `now_s` until the next window starts: 1..=[`Window::seconds`].
    pub fn reset_in(self, now_s: u64) -> u64 {
        self.seconds() - now_s % self.seconds()
    }
}

/// One identity's use of a resource in one window, as stored in shared data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    /// Start of the window counted ([`Window::start`]), seconds since the epoch.
    pub window_start: u64,
    /// Tokens debited in that window.
    pub tokens: u64,
    /// Requests admitted in that window.
    pub requests: u64,
}

impl Counter {
    /// Reads a stored value: ASCII `"<window_start> <tokens> <requests>"`,
    /// three decimal numbers separated by single spaces. Anything else
    /// (missing key, empty, garbled) reads as the zero counter, whose window
    /// is long over, so it starts afresh.
    pub fn parse(bytes: &[u8]) -> Counter {
        let mut fields = bytes.split(|b| *b == b' ').map(decimal);
        match (fields.next(), fields.next(), fields.next(), fields.next()) {
            (Some(Some(window_start)), Some(Some(tokens)), Some(Some(requests)), None) => {
                Counter { window_start, tokens, requests }
            }
            _ => Counter::default(),
        }
    }

    /// The stored form read by [`Counter::parse`].
    pub fn encode(&self) -> Vec<u8> {
        format!("{} {} {}", self.window_start, self.tokens, self.requests).into_bytes()
    }

    /// This counter as of `now_s`: unchanged while it counts the current
    /// window, a zero counter for the current window otherwise (its window is
    /// over, or it was counted with another window length or clock).
    pub fn current(self, window: Window, now_s: u64) -> Counter {
        let start = window.start(now_s);
        if self.window_start == start {
            self
        } else {
            Counter { window_start: start, tokens: 0, requests: 0 }
        }
    }
}

/// `1..=20` ASCII digits as a u64 (no sign, no overflow).
fn decimal(field: &[u8]) -> Option<u64> {
    if field.is_empty() || field.len() > 20 || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// The quota key of an identity: the claim at `path` (a dot path split at
/// the dots, `["ci", "repository"]`) when it is a non-empty string or a
/// number; `None` when it is absent, empty, or of another type (the filter
/// then refuses with 403 `quota_key_missing`, never sharing one bucket).
pub fn key_value(claims: &Map<String, Value>, path: &[String]) -> Option<String> {
    let (last, parents) = path.split_last()?;
    let mut obj = claims;
    for name in parents {
        obj = obj.get(name)?.as_object()?;
    }
    match obj.get(last)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The shared-data key of `(resource, identity)`:
/// `nhi_gate.quota.<resource>.<first 32 hex digits of SHA-256(key_value)>`.
/// One key per pair, reused by every window (the window start is in the
/// value), so keys never accumulate over time; the hash keeps claim values
/// out of the key space and bounds the key length.
pub fn counter_key(resource: &str, key_value: &str) -> String {
    let digest = hmac_sha256::Hash::hash(key_value.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{KEY_PREFIX}{resource}.{hex}")
}

/// A request refused by [`check`]: 429 `quota_exceeded`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// `Retry-After`, seconds: until the window resets (at least 1).
    pub retry_after_s: u64,
    /// The token budget of the window.
    pub limit: u64,
    /// Tokens left in the window (may be non-zero when the request budget or
    /// the `max_tokens` pre-check refused).
    pub remaining: u64,
    /// Seconds until the token budget resets (the window ends).
    pub reset_s: u64,
    /// Human sentence for the reply and the audit record.
    pub detail: String,
}

impl Exceeded {
    /// The local reply: 429 `quota_exceeded`.
    pub fn denial(&self) -> Denial {
        Denial { status: 429, reason: "quota_exceeded", detail: self.detail.clone() }
    }

    /// Headers of the 429 reply ([`ratelimit_headers`]).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        ratelimit_headers(self.limit, self.remaining, self.reset_s)
    }
}

/// 403 `quota_key_missing`: the token lacks the claim the quota is keyed on.
pub fn key_missing(path: &[String]) -> Denial {
    Denial::forbidden(
        "quota_key_missing",
        format!("the token has no string or number claim {:?}, which this resource's quota is keyed on", path.join(".")),
    )
}

/// 503 `quota_unavailable`: the counter could not be read or written (fail closed).
pub fn unavailable(detail: impl Into<String>) -> Denial {
    Denial { status: 503, reason: "quota_unavailable", detail: detail.into() }
}

/// Whether a request may go ahead under `q`, given the identity's stored
/// counter `c` (brought to the current window here) and, when the body asked
/// for one, its `max_tokens`. Refused when the window's tokens are spent,
/// when its requests are spent, or (with `check_max_tokens`) when
/// `max_tokens` is more than the tokens left.
pub fn check(q: &Quota, c: &Counter, now_s: u64, max_tokens: Option<u64>) -> Result<(), Exceeded> {
    let c = c.current(q.window, now_s);
    let remaining = q.tokens.saturating_sub(c.tokens);
    let reset_s = q.window.reset_in(now_s);
    let per = q.window.name();
    let over = |detail: String| Exceeded { retry_after_s: reset_s.max(1), limit: q.tokens, remaining, reset_s, detail };
    if remaining == 0 {
        return Err(over(format!("token budget of {} per {per} is spent; it resets in {reset_s} s", q.tokens)));
    }
    if let Some(budget) = q.requests {
        if c.requests >= budget {
            return Err(over(format!("request budget of {budget} per {per} is spent; it resets in {reset_s} s")));
        }
    }
    if let (true, Some(asked)) = (q.check_max_tokens, max_tokens) {
        if asked > q.tokens {
            return Err(over(format!("max_tokens {asked} is more than the whole budget of {} tokens per {per}", q.tokens)));
        }
        if asked > remaining {
            return Err(over(format!("max_tokens {asked} is more than the {remaining} tokens left this {per}")));
        }
    }
    Ok(())
}

/// `c` with one more request admitted.
pub fn admit(c: Counter) -> Counter {
    Counter { requests: c.requests.saturating_add(1), ..c }
}

/// `c` with `tokens` more used (saturating).
pub fn debit(c: Counter, tokens: u64) -> Counter {
    Counter { tokens: c.tokens.saturating_add(tokens), ..c }
}

/// `c` with `tokens` given back (saturating): what a finished request
/// reserved beyond what it used.
pub fn credit(c: Counter, tokens: u64) -> Counter {
    Counter { tokens: c.tokens.saturating_sub(tokens), ..c }
}

/// Tokens reserved when a request is admitted, so that a burst of
/// concurrent requests cannot spend the budget many times over before any
/// usage is known: the prompt estimated at one token per 4 bytes of request
/// body, plus the completion it asks for (`max_tokens`), if any. Settled
/// against the real usage when the request ends ([`settle`]).
pub fn reservation(request_bytes: usize, max_tokens: Option<u64>) -> u64 {
    u64::try_from(request_bytes.div_ceil(4)).unwrap_or(u64::MAX).saturating_add(max_tokens.unwrap_or(0))
}

/// What a finished request is charged: its usage, but at least its
/// reservation when it did not complete (client abort, upstream or
/// masking failure), so aborting a long completion does not make it free.
pub fn charge(usage: u64, reserved: u64, completed: bool) -> u64 {
    if completed { usage } else { usage.max(reserved) }
}

/// Settles a reservation: `c` with `charged` tokens used instead of the `reserved` ones.
pub fn settle(c: Counter, reserved: u64, charged: u64) -> Counter {
    if charged >= reserved { debit(c, charged - reserved) } else { credit(c, reserved - charged) }
}

/// Rate-limit headers in OpenAI's shape: `x-ratelimit-limit-tokens`,
/// `x-ratelimit-remaining-tokens`, `x-ratelimit-reset-tokens` (a duration
/// such as `1s`, `6m0s`, `1h2m3s`) and `retry-after` (integer seconds).
pub fn ratelimit_headers(limit: u64, remaining: u64, reset_s: u64) -> Vec<(&'static str, String)> {
    vec![
        ("x-ratelimit-limit-tokens", limit.to_string()),
        ("x-ratelimit-remaining-tokens", remaining.to_string()),
        ("x-ratelimit-reset-tokens", duration(reset_s)),
        ("retry-after", reset_s.to_string()),
    ]
}

/// Seconds as a Go-style duration, as OpenAI's reset headers use:
/// `0s`, `59s`, `1m0s`, `1h0m0s`, `24h0m0s`.
pub fn duration(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// Tokens one response used.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// What is debited: the reported total, never less than prompt + completion.
    pub total_tokens: u64,
    /// Whether this is an [`estimate`] from body sizes rather than the upstream's report.
    pub estimated: bool,
}

/// The usage reported at the end of a response, from the `"usage"` members
/// in `tail` (the end of a JSON body, or of an SSE stream whose final
/// `data:` event carries it). `tail` may start anywhere, even inside a
/// string or a UTF-8 sequence.
///
/// A `"usage"` key is a quoted `usage` whose opening quote is not escaped,
/// then optional whitespace and `:`; text inside JSON strings cannot fool
/// it (a `"usage"` in a string is written `\"usage\"`). Its value counts
/// when it is an object: complete (numeric prompt and completion counts,
/// see `usage_of`) or output-only (an Anthropic stream's final
/// `message_delta`, whose `output_tokens` is the whole completion). `null`
/// (every event of a stream but the last) and other values (a caller's
/// `metadata` echoed after the usage, as the Responses API does) are not
/// usage. The result is the largest complete usage, with its completion
/// raised to the largest output-only count; `None` when there is no
/// complete usage (the caller estimates). Taking the largest means an echo
/// of caller-chosen members can only raise the charge. Plain text containing
/// `"usage": {...}` would be read as usage, so the filter reads usage only
/// from JSON and event-stream responses. An answer that ends in Ollama's
/// counts (see [`usage_from_lines`]) is never searched for `"usage"`:
/// Ollama writes tool-call arguments as JSON objects, whose `"usage"` keys
/// the model chooses; its own counts are read, or the caller estimates.
pub fn usage_from_tail(tail: &[u8]) -> Option<Usage> {
    if let Some(counts) = ollama_usage(tail) {
        return counts;
    }
    let mut best: Option<Usage> = None;
    let mut output_only = 0u64;
    // One forward (SIMD) search for the quoted `usage` both keys start
    // with; the members are then weighed as they always were: the
    // `"usage"` ones from the last, then the `"usageMetadata"` ones
    // (Gemini's counts, see `usage_of`).
    let (mut usage, mut metadata) = (Vec::new(), Vec::new());
    for at in memchr::memmem::find_iter(tail, b"\"usage") {
        match tail.get(at + 6..).unwrap_or_default() {
            r if r.starts_with(b"\"") => usage.push(at),
            r if r.starts_with(b"Metadata\"") => metadata.push(at),
            _ => {}
        }
    }
    for (key, starts) in [(&b"\"usage\""[..], usage), (b"\"usageMetadata\"", metadata)] {
        for at in starts.into_iter().rev() {
            usage_member(tail, at, key, &mut best, &mut output_only);
        }
    }
    let mut u = best?;
    if output_only > u.completion_tokens {
        u.total_tokens = u.total_tokens.saturating_add(output_only - u.completion_tokens);
        u.completion_tokens = output_only;
    }
    Some(u)
}

/// [`usage_from_tail`] for the member named `key` (quoted) at `at` in
/// `tail`: raises `best` to its usage if complete and larger, or
/// `output_only` to its output-only count.
fn usage_member(tail: &[u8], at: usize, key: &[u8], best: &mut Option<Usage>, output_only: &mut u64) {
    let backslashes = tail.get(..at).unwrap_or_default().iter().rev().take_while(|b| **b == b'\\').count();
    if backslashes % 2 == 1 {
        return;
    }
    let after = tail.get(at + key.len()..).unwrap_or_default();
    let Some(colon) = after.iter().position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')) else {
        return;
    };
    if after.get(colon) != Some(&b':') {
        return;
    }
    let value = after.get(colon + 1..).unwrap_or_default();
    let Some(Ok(Value::Object(o))) = serde_json::Deserializer::from_slice(value).into_iter::<Value>().next() else {
        return;
    };
    match usage_of(&o) {
        Some(u) if best.as_ref().is_none_or(|b| u.total_tokens > b.total_tokens) => *best = Some(u),
        Some(_) => {}
        None => {
            if let Some(out) = o.get("output_tokens").and_then(Value::as_u64) {
                *output_only = (*output_only).max(out);
            }
        }
    }
}

/// The usage of a JSON-lines response (`application/x-ndjson`): Ollama's
/// counts (below) or `None` (the caller estimates). No other API streams
/// JSON lines with usage, so no `"usage"` key is searched for.
///
/// Ollama's native API (`/api/chat`, `/api/generate`, `/api/embed`,
/// streamed or not) reports usage in its final object, the tail's last
/// line: `eval_count` (completion tokens) and `prompt_eval_count` (prompt
/// tokens); each is left out when 0 (a prompt from Ollama's cache, an
/// embedding, which has no completion). Ollama writes these metrics
/// (`total_duration`, `load_duration`, `prompt_eval_count`,
/// `prompt_eval_duration`, `eval_count`, `eval_duration`) last, after
/// anything the model wrote, so they are read from the end of the line:
/// a line longer than the tail still gives its counts.
pub fn usage_from_lines(tail: &[u8]) -> Option<Usage> {
    ollama_usage(tail).flatten()
}

/// Ollama's metric members, which it writes last in its final object.
const OLLAMA_METRICS: [&[u8]; 6] = [b"total_duration", b"load_duration", b"prompt_eval_count", b"prompt_eval_duration", b"eval_count", b"eval_duration"];

/// Whether the tail ends with Ollama's final object (see
/// [`usage_from_lines`]): `Some(counts)` when it does (`None` counts: no
/// count in it, the caller estimates), `None` when it does not.
///
/// It does when its last line ends with members `"metric":<digits>`; the
/// counts are then the line's top-level ones when the line is a whole JSON
/// object (one that is not a non-negative integer: no counts), else those
/// among the metric members at its end (read back to the first member that
/// is not a metric), if these are in Ollama's order (else no counts). A
/// line without that ending gives the top-level counts of a whole object
/// with `"done": true` and a numeric `eval_count` (a server that orders the
/// members otherwise); anything else is not Ollama's answer.
fn ollama_usage(tail: &[u8]) -> Option<Option<Usage>> {
    let t = tail.trim_ascii_end();
    let line = t.get(memchr::memrchr(b'\n', t).map_or(0, |i| i + 1)..)?;
    let mut rest = line.strip_suffix(b"}")?;
    let (mut prompt, mut completion, mut metrics) = (None, None, 0);
    // Ollama's order (its Go struct), read backwards: each metric before the last one read
    let (mut ordered, mut next) = (true, OLLAMA_METRICS.len());
    loop {
        let r = rest.trim_ascii_end();
        let digits = r.iter().rev().take_while(|b| b.is_ascii_digit()).count();
        let Some((head, number)) = r.split_at_checked(r.len() - digits) else { break };
        let Some(head) = head.trim_ascii_end().strip_suffix(b":").map(<[u8]>::trim_ascii_end) else { break };
        let Some(head) = head.strip_suffix(b"\"") else { break };
        let Some(open) = memchr::memrchr(b'"', head) else { break };
        let Some((before, name)) = head.split_at_checked(open) else { break };
        let name = name.get(1..).unwrap_or_default();
        let Some(at) = OLLAMA_METRICS.iter().position(|m| *m == name).filter(|_| digits > 0) else { break };
        ordered &= at < next;
        next = at;
        // from the end: the last of a repeated member counts, as decoders read it
        let n = std::str::from_utf8(number).ok().and_then(|n| n.parse::<u64>().ok()).unwrap_or(u64::MAX);
        match name {
            b"eval_count" => _ = completion.get_or_insert(n),
            b"prompt_eval_count" => _ = prompt.get_or_insert(n),
            _ => {}
        }
        metrics += 1;
        match before.trim_ascii_end().strip_suffix(b",") {
            Some(r) => rest = r,
            None => break,
        }
    }
    if metrics > 0 {
        // A whole line gives its top-level counts wherever they are; a line
        // longer than the tail gives those at its end.
        if let Ok(o) = serde_json::from_slice::<Map<String, Value>>(line) {
            let (p, c) = (o.get("prompt_eval_count"), o.get("eval_count"));
            // an answer still running (`"done": false`) has no final counts
            // (`/api/embed` answers carry no `done`)
            let running = o.get("done").is_some_and(|d| d != &Value::Bool(true));
            if running || [p, c].into_iter().flatten().any(|v| v.as_u64().is_none()) {
                return Some(None);
            }
            (prompt, completion) = (p.and_then(Value::as_u64), c.and_then(Value::as_u64));
        } else if !ordered || !rest.iter().any(|b| matches!(b, b',' | b'{')) {
            // not Ollama's order (members re-encoded, sorted): a count may
            // sit earlier in the line, out of the tail; or the tail starts
            // inside the metrics (nothing but a cut member before them), so
            // one of them may be cut off
            return Some(None);
        }
        if prompt.is_none() && completion.is_none() {
            return Some(None);
        }
        let (p, c) = (prompt.unwrap_or(0), completion.unwrap_or(0));
        return Some(Some(Usage { prompt_tokens: p, completion_tokens: c, total_tokens: p.saturating_add(c), estimated: false }));
    }
    // (every JSON response's tail comes here: parse only an Ollama one; a
    // string that merely names eval_count, as any answer may, is not one)
    memchr::memmem::find(line, b"\"eval_count\"")?;
    let o: Map<String, Value> = serde_json::from_slice(line).ok()?;
    if o.get("done") != Some(&Value::Bool(true)) {
        return None;
    }
    let completion_tokens = o.get("eval_count")?.as_u64()?;
    let prompt_tokens = o.get("prompt_eval_count").and_then(Value::as_u64).unwrap_or(0);
    Some(Some(Usage { prompt_tokens, completion_tokens, total_tokens: prompt_tokens.saturating_add(completion_tokens), estimated: false }))
}

/// A usage object, in one of two shapes (numbers required):
/// - Chat Completions and legacy completions: `prompt_tokens` and
///   `completion_tokens`;
/// - Responses API and Anthropic Messages API: `input_tokens` and
///   `output_tokens`; Anthropic's prompt-cache counts
///   (`cache_creation_input_tokens`, `cache_read_input_tokens`), reported
///   apart from `input_tokens`, are added to the prompt.
///
/// - Cohere v2 chat: the same two inside `tokens` (the tokens the model
///   read and wrote; `billed_units` holds fewer);
/// - Amazon Bedrock Converse: `inputTokens` (plus `cacheReadInputTokens`
///   and `cacheWriteInputTokens`) and `outputTokens`, `totalTokens`;
/// - Gemini API `usageMetadata`: `promptTokenCount` (plus
///   `toolUsePromptTokenCount`) as the prompt, `candidatesTokenCount` plus
///   `thoughtsTokenCount` as the completion (each 0 when left out, as
///   Gemini leaves out zero counts), `totalTokenCount` as the total; at
///   least one of the prompt and total counts is required.
///
/// Anything else (e.g. the `output_tokens`-only usage of an Anthropic
/// stream's last event) → `None`, and the caller estimates.
fn usage_of(o: &Map<String, Value>) -> Option<Usage> {
    let num = |k: &str| o.get(k).and_then(Value::as_u64);
    let (prompt_tokens, completion_tokens) = match (num("prompt_tokens"), num("completion_tokens")) {
        (Some(p), Some(c)) => (p, c),
        // (counts of the object itself come first)
        _ if num("input_tokens").is_none() && o.get("tokens").is_some_and(Value::is_object) => {
            return o.get("tokens").and_then(Value::as_object).and_then(usage_of);
        }
        // Bedrock Converse: cache reads and writes are reported apart
        _ if num("inputTokens").is_some() && num("outputTokens").is_some() => (
            num("inputTokens")
                .unwrap_or(0)
                .saturating_add(num("cacheReadInputTokens").unwrap_or(0))
                .saturating_add(num("cacheWriteInputTokens").unwrap_or(0)),
            num("outputTokens").unwrap_or(0),
        ),
        _ if num("promptTokenCount").or(num("totalTokenCount")).is_some() => {
            let n = |k: &str| num(k).unwrap_or(0);
            (
                n("promptTokenCount").saturating_add(n("toolUsePromptTokenCount")),
                n("candidatesTokenCount").saturating_add(n("thoughtsTokenCount")),
            )
        }
        _ => {
            let cached = num("cache_creation_input_tokens").unwrap_or(0).saturating_add(num("cache_read_input_tokens").unwrap_or(0));
            (num("input_tokens")?.saturating_add(cached), num("output_tokens")?)
        }
    };
    let sum = prompt_tokens.saturating_add(completion_tokens);
    let total_tokens = num("total_tokens").or(num("totalTokenCount")).or(num("totalTokens")).unwrap_or(sum).max(sum);
    Some(Usage { prompt_tokens, completion_tokens, total_tokens, estimated: false })
}

/// Usage guessed from body sizes when the upstream reported none: a token
/// per 4 bytes (rounded up) of the request body (prompt) and of the response
/// body (completion).
pub fn estimate(request_bytes: usize, response_bytes: usize) -> Usage {
    let tokens = |bytes: usize| u64::try_from(bytes).unwrap_or(u64::MAX).div_ceil(4);
    let prompt_tokens = tokens(request_bytes);
    let completion_tokens = tokens(response_bytes);
    Usage { prompt_tokens, completion_tokens, total_tokens: prompt_tokens.saturating_add(completion_tokens), estimated: true }
}

/// Whether a request to `path` is a Chat Completions or legacy completions
/// call (`…/chat/completions`, `…/completions`, query ignored): the APIs whose
/// streams report usage only when asked (`stream_options.include_usage`).
/// The Responses API and Anthropic's Messages API report it in every
/// stream, and refuse an unknown `stream_options` member.
pub fn streams_usage_on_request(path: &str) -> bool {
    let p = path.split(['?', '#']).next().unwrap_or("").trim_end_matches('/');
    p.ends_with("/completions")
}

/// For a streamed chat request (a JSON object with `"stream": true`) whose
/// `stream_options.include_usage` is not `true`: the body re-serialized with
/// it set (other `stream_options` members kept; a missing or `null`
/// `stream_options` becomes `{"include_usage": true}`), so the stream's final
/// event reports usage. `None` otherwise: not JSON, not streamed, usage
/// already asked for, or a `stream_options` that is not an object (the
/// upstream rejects that request anyway).
///
/// Re-serializing keeps members in the order sent (`stream_options` is
/// added last) but may rewrite whitespace and numbers beyond 64-bit
/// integers or doubles' exact range; the meaning of an OpenAI request is kept.
/// The client then receives one more event than it asked for: the final one,
/// with empty `choices` and the usage.
pub fn ensure_include_usage(body: &[u8]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object_mut()?;
    if !obj.get("stream").is_some_and(lax_true) {
        return None;
    }
    match obj.get_mut("stream_options") {
        None | Some(Value::Null) => {
            let mut so = Map::new();
            so.insert("include_usage".into(), Value::Bool(true));
            obj.insert("stream_options".into(), Value::Object(so));
        }
        Some(Value::Object(so)) => {
            if so.get("include_usage") == Some(&Value::Bool(true)) {
                return None;
            }
            so.insert("include_usage".into(), Value::Bool(true));
        }
        Some(_) => return None,
    }
    serde_json::to_vec(&v).ok()
}

/// Whether a request member is true as lenient servers read it (pydantic's
/// lax mode: `true`, `1`, and the strings `true`, `1`, `yes`, `on`, `t`,
/// `y` in any case), so a streamed request cannot hide as `"stream": "true"`.
pub fn lax_true(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() == Some(1.0),
        Value::String(s) => matches!(s.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on" | "t" | "y"),
        _ => false,
    }
}

/// The completion length a request body asks for: the largest of
/// `max_completion_tokens`, `max_tokens` and `max_output_tokens` (Responses
/// API) of a JSON object, Ollama's `options.num_predict` (`/api/chat`,
/// `/api/generate`), Gemini's `generationConfig.maxOutputTokens` and
/// Bedrock Converse's `inferenceConfig.maxTokens`, times
/// the number of choices it asks for (the largest of `n`, `best_of` and
/// Gemini's `generationConfig.candidateCount`, at least 1); `None` when
/// none is given (or `null`) or the body is not one. Lenient servers
/// (pydantic's lax mode) also take `"100000"`, `100000.0` or `1e5`, so those
/// count too (fractions rounded up); any other value counts as unbounded
/// (`u64::MAX`), so the pre-check refuses it rather than letting it through.
/// A `num_predict` that Ollama reads as no limit asks for no length, like a
/// missing `max_tokens`: -1 (its default), -2 (until the context is full),
/// and any number below 1 once Ollama's Go decoder has cut it to an integer
/// (its runner stops only at a positive count). Ollama API docs, "Valid
/// Parameters and Values". Member names count in any case (Go matches them
/// so; `num_predict` inside `options` exactly, as Ollama reads it).
pub fn requested_max_tokens(body: &[u8]) -> Option<u64> {
    requested_max_tokens_in(&serde_json::from_slice(body).ok()?)
}

/// [`requested_max_tokens`] of a request body already read (e.g. by
/// `body::strict_json`).
pub fn requested_max_tokens_in(v: &Value) -> Option<u64> {
    let o = v.as_object()?;
    // Member names as Go's encoding/json (Ollama, its OpenAI API too)
    // matches them (`body::go_name_eq`); the largest of several counts.
    fn members<'a>(o: &'a Map<String, Value>, key: &'static str) -> impl Iterator<Item = &'a Value> {
        o.iter().filter(move |(k, _)| crate::body::go_name_eq(k, key)).map(|(_, v)| v)
    }
    let num_predict = members(o, "options")
        .filter_map(|opts| opts.as_object())
        .flat_map(|opts| opts.iter().filter(|(k, _)| k.as_str() == "num_predict").map(|(_, v)| v))
        .filter_map(|n| match n {
            Value::Number(f) if f.as_f64().is_some_and(|f| f < 1.0) => None,
            n => count(n),
        })
        .max();
    let read = |key: &'static str| members(o, key).filter_map(count).max();
    // Gemini's `generationConfig` (proto JSON: field names in lowerCamelCase
    // or as declared): `maxOutputTokens` for each of `candidateCount`
    // (and Bedrock Converse's `inferenceConfig.maxTokens`)
    let generation = |names: &[&str]| {
        o.iter()
            .filter(|(k, _)| matches!(k.as_str(), "generationConfig" | "generation_config" | "inferenceConfig"))
            .filter_map(|(_, g)| g.as_object())
            .flat_map(|g| g.iter().filter(move |(k, _)| names.contains(&k.as_str())).map(|(_, v)| v))
            .filter_map(count)
            .max()
    };
    // Chat Completions; legacy, Anthropic and Cohere `max_tokens`; Responses API `max_output_tokens`
    let per_choice = read("max_completion_tokens")
        .max(read("max_tokens"))
        .max(read("max_output_tokens"))
        .max(num_predict)
        .max(generation(&["maxOutputTokens", "max_output_tokens", "maxTokens"]))?;
    // each of `n` choices (and each of legacy completions' `best_of`
    // candidates, Gemini's `candidateCount`) may be that long
    let choices = read("n").max(read("best_of")).max(generation(&["candidateCount", "candidate_count"])).unwrap_or(1).max(1);
    Some(per_choice.saturating_mul(choices))
}

/// A token count of a request member as lenient servers read it (see
/// [`requested_max_tokens`]): `None` for `null`, `u64::MAX` for what is no
/// count.
fn count(v: &Value) -> Option<u64> {
    let f = match v {
        Value::Null => return None,
        Value::Number(n) => n.as_u64().map(|u| u as f64).or_else(|| n.as_f64()),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    Some(match f {
        Some(f) if (0.0..1.8e19).contains(&f) => f.ceil() as u64,
        _ => u64::MAX,
    })
}

/// Why a shared-data write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// Another worker wrote the key since it was read: read again and retry.
    CasMismatch,
    /// The host refused the write for another reason: not retried.
    Failed,
}

/// Envoy shared data as the quota uses it (`get_shared_data` /
/// `set_shared_data` of proxy-wasm), so [`update`] can run against a fake.
pub trait SharedStore {
    /// The value under `key` and its CAS token; `(None, None)` when absent.
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Stores `value` if the key's CAS token is still `cas`; `cas: None`
    /// writes unconditionally. As in Envoy, a key that does not exist yet
    /// is created whatever `cas` is (proxy-wasm-cpp-host
    /// `src/shared_data.cc`, `SharedData::set`): see [`SharedStore::create`].
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;

    /// Stores `value` under `key` only if the key is still absent;
    /// `Err(CasMismatch)` when another worker created it since it was read.
    ///
    /// Envoy has no "create only if absent", and ignores the CAS token of a
    /// write to a key that does not exist. Its CAS tokens come from one
    /// counter that every shared-data write advances (by one, skipping 0).
    /// So this writes [`CAS_PROBE_KEY`] to learn the counter, then writes
    /// `key` with a token half the counter's range behind it: an absent key
    /// is created; a key another worker created meanwhile carries a token
    /// within a few writes of the counter, never that one, and the write
    /// fails as a lost race. (Before, two workers creating one counter at
    /// once each wrote over the other: one admission was lost.)
    fn create(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.set(CAS_PROBE_KEY, b"", None)?;
        let (_, Some(now)) = self.get(CAS_PROBE_KEY) else { return Err(StoreError::Failed) };
        let stale = match now.wrapping_sub(1 << 31) {
            0 => 1,
            t => t,
        };
        self.set(key, value, Some(stale))
    }
}

/// The shared-data key [`SharedStore::create`] writes to read Envoy's
/// current CAS token.
pub const CAS_PROBE_KEY: &str = "nhi-gate/cas-probe";

/// Why an [`update`] did not write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateError<E> {
    /// `step` refused (e.g. [`Exceeded`]): nothing was written.
    Refused(E),
    /// The counter could not be written: every one of [`CAS_ATTEMPTS`]
    /// attempts lost a race, or the host refused the write. Fail closed
    /// ([`unavailable`]) when this happens before forwarding.
    Unavailable(String),
}

/// Read-modify-write of the counter under `key`, compare-and-swap with
/// bounded retry: reads it, brings it to the current `window`
/// ([`Counter::current`]), applies `step` and writes the result only if no
/// other worker wrote in between; otherwise reads again, at most
/// [`CAS_ATTEMPTS`] times. `step` may run more than once (on fresh values)
/// and its refusal is returned as is, writing nothing.
///
/// Returns the counter written.
pub fn update<S, E, F>(store: &S, key: &str, window: Window, now_s: u64, mut step: F) -> Result<Counter, UpdateError<E>>
where
    S: SharedStore + ?Sized,
    F: FnMut(Counter) -> Result<Counter, E>,
{
    for _ in 0..CAS_ATTEMPTS {
        let (value, cas) = store.get(key);
        let counter = Counter::parse(value.as_deref().unwrap_or_default()).current(window, now_s);
        let next = step(counter).map_err(UpdateError::Refused)?;
        let written = match value {
            Some(_) => store.set(key, &next.encode(), cas),
            None => store.create(key, &next.encode()),
        };
        match written {
            Ok(()) => return Ok(next),
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Failed) => return Err(UpdateError::Unavailable(format!("shared data refused the write of {key}"))),
        }
    }
    Err(UpdateError::Unavailable(format!("{key} stayed contended for {CAS_ATTEMPTS} attempts")))
}
