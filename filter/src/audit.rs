//! The audit record, independent of the proxy-wasm host: one per request,
//! assembled while the stream runs ([`Draft`]) and finished when it ends
//! ([`Draft::finish`] → [`Record`], serialized as one JSON object).
//! Shape and meaning of every field: `docs/audit-record.md` (v1).

use crate::approval::{hex, sha256_hex};
use crate::policy::Identity;
use serde::Serialize;
use std::collections::BTreeMap;

/// Query parameters whose values are never recorded (replaced by `REDACTED`).
pub const SECRET_QUERY_PARAMS: [&str; 18] = [
    "access_token", "id_token", "refresh_token", "token", "jwt", "assertion", "api_key", "apikey", "key", "auth", "code", "sig", "signature", "x-amz-signature", "x-goog-signature", "password", "secret", "client_secret",
];

/// Bytes kept from the end of a response body, for the `usage` object.
pub const TAIL_BYTES: usize = crate::quota::TAIL_BYTES;

/// `:path` with the values of [`SECRET_QUERY_PARAMS`] (names compared
/// case-insensitively, also when percent-encoding is absent) replaced by `REDACTED`.
pub fn redact_path(path: &str) -> String {
    let Some((base, query)) = path.split_once('?') else { return path.to_string() };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    // Parameters are separated by '&', and by ';' for some backends.
    let mut out = format!("{base}?");
    let mut rest = query;
    loop {
        let (kv, sep, next) = match rest.find(['&', ';']) {
            Some(i) => (rest.get(..i).unwrap_or_default(), rest.get(i..=i).unwrap_or_default(), rest.get(i + 1..).unwrap_or_default()),
            None => (rest, "", ""),
        };
        match kv.split_once('=') {
            Some((k, _)) if SECRET_QUERY_PARAMS.iter().any(|s| s.eq_ignore_ascii_case(&percent_decode(k))) => {
                out.push_str(k);
                out.push_str("=REDACTED");
            }
            _ => out.push_str(kv),
        }
        if sep.is_empty() {
            break;
        }
        out.push_str(sep);
        rest = next;
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// Decodes `%XX` escapes and `+` (as backends do for query parameter names,
/// WHATWG URL `application/x-www-form-urlencoded`); invalid escapes stay as they are.
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = |j: usize| b.get(j).and_then(|h| char::from(*h).to_digit(16));
        match (c, hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'%'));
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

/// A body seen in pieces: SHA-256 and size of all of it, its first `cap`
/// bytes, and (optionally) its last [`TAIL_BYTES`] bytes.
pub struct Capture {
    /// `None` when no digest is recorded (response bodies).
    hash: Option<hmac_sha256::Hash>,
    size: usize,
    head: Vec<u8>,
    cap: usize,
    tail: Option<Vec<u8>>,
}

impl Capture {
    /// `cap`: bytes of text kept; `keep_tail`: also keep the last bytes.
    pub fn new(cap: usize, keep_tail: bool) -> Capture {
        Capture { hash: Some(hmac_sha256::Hash::new()), size: 0, head: Vec::new(), cap, tail: keep_tail.then(Vec::new) }
    }

    /// The same capture without the SHA-256 (the record has no response
    /// digest: hashing every response byte would be wasted work per request).
    pub fn without_digest(self) -> Capture {
        Capture { hash: None, ..self }
    }

    /// Appends a piece of the body.
    pub fn push(&mut self, data: &[u8]) {
        if let Some(h) = &mut self.hash {
            h.update(data);
        }
        self.size = self.size.saturating_add(data.len());
        let room = self.cap.saturating_sub(self.head.len());
        self.head.extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
        if let Some(t) = &mut self.tail {
            // only the last TAIL_BYTES of a large piece can stay
            t.extend_from_slice(data.get(data.len().saturating_sub(TAIL_BYTES)..).unwrap_or_default());
            if t.len() > TAIL_BYTES {
                let cut = t.len() - TAIL_BYTES;
                t.drain(..cut);
            }
        }
    }

    /// Forgets everything (the body was replaced, e.g. by masking).
    pub fn reset(&mut self) {
        let digest = self.hash.is_some();
        *self = Capture::new(self.cap, self.tail.is_some());
        if !digest {
            self.hash = None;
        }
    }

    /// Replaces each of `secrets` in the kept text by `[BACKEND_CREDENTIAL]`
    /// (the backend credentials the gateway injects: a backend that echoes
    /// one must not put it in the audit trail). The digest and size stay
    /// those of the body as sent.
    pub fn redact(&mut self, secrets: &[String]) {
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            if s.len() > self.head.len() {
                // cannot hold it (and building a finder costs more than a short text)
                continue;
            }
            let finder = memchr::memmem::Finder::new(s.as_bytes());
            if finder.find(&self.head).is_none() {
                continue;
            }
            let mut out = Vec::with_capacity(self.head.len());
            let mut last = 0;
            for at in finder.find_iter(&self.head) {
                if at < last {
                    continue;
                }
                out.extend_from_slice(self.head.get(last..at).unwrap_or_default());
                out.extend_from_slice(b"[BACKEND_CREDENTIAL]");
                last = at + s.len();
            }
            out.extend_from_slice(self.head.get(last..).unwrap_or_default());
            self.head = out;
        }
    }

    /// Bytes seen so far.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The last bytes seen (empty unless `keep_tail`).
    pub fn tail(&self) -> &[u8] {
        self.tail.as_deref().unwrap_or_default()
    }

    fn text(&self) -> (String, bool) {
        // A character cut by the cap is left out rather than replaced.
        let (text, kept) = match std::str::from_utf8(&self.head) {
            Ok(s) => (s.to_string(), self.head.len()),
            Err(e) if e.error_len().is_none() => {
                let head = self.head.get(..e.valid_up_to()).unwrap_or_default();
                (String::from_utf8_lossy(head).into_owned(), head.len())
            }
            Err(_) => (String::from_utf8_lossy(&self.head).into_owned(), self.head.len()),
        };
        (text, self.size > kept)
    }

    /// The `request_body` field.
    pub fn request_record(&self) -> RequestBody {
        let (text, truncated) = self.text();
        RequestBody { sha256: self.hash.map(|h| hex(&h.finalize())).unwrap_or_default(), size: self.size, text, truncated }
    }

    /// The `response_body` field.
    pub fn response_record(&self) -> ResponseBody {
        let (text, truncated) = self.text();
        ResponseBody { size: self.size, text, truncated }
    }
}

/// `identity` of a record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IdentityRecord {
    pub provider: String,
    pub issuer: String,
    pub subject: String,
    pub jti: String,
    pub groups: Vec<String>,
    pub azp: String,
    /// SHA-256 (hex) of the compact JWS; the token itself is never recorded.
    pub token_sha256: String,
}

impl IdentityRecord {
    pub fn new(id: &Identity, token: &str) -> IdentityRecord {
        IdentityRecord::with_digest(id, sha256_hex(token.as_bytes()))
    }

    /// The record of `id` whose token's SHA-256 (hex) is already known.
    pub fn with_digest(id: &Identity, token_sha256: String) -> IdentityRecord {
        IdentityRecord {
            provider: id.provider.clone(),
            issuer: id.issuer.clone(),
            subject: id.subject.clone(),
            jti: id.jti.clone(),
            groups: id.groups.clone(),
            azp: id.azp.clone(),
            token_sha256,
        }
    }
}

/// `approval` of a record.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ApprovalRecord {
    pub hold_id: String,
    pub approval_id: Option<String>,
    /// `approved`, `denied`, `pending`, `unavailable`, `abandoned` (`null` while undecided).
    pub outcome: Option<&'static str>,
    pub approver: Option<String>,
    pub decided_ms: Option<u64>,
}

/// `request_body` of a record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RequestBody {
    pub sha256: String,
    pub size: usize,
    pub text: String,
    pub truncated: bool,
}

/// `response_body` of a record (after masking).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ResponseBody {
    pub size: usize,
    pub text: String,
    pub truncated: bool,
}

/// `usage` of a record: OpenAI-compatible token counts (see [`crate::quota`]).
pub use crate::quota::Usage;

/// `timings_ms` of a record, milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Timings {
    pub auth: u64,
    pub approval_wait: u64,
    pub upstream: u64,
    pub total: u64,
}

/// One audit record (`docs/audit-record.md`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Record {
    pub version: u32,
    pub time_ms: u64,
    pub request_id: String,
    pub node: String,
    pub identity: Option<IdentityRecord>,
    pub session: Option<String>,
    pub source: String,
    pub resource: Option<String>,
    pub operation: Option<&'static str>,
    pub method: String,
    pub authority: String,
    pub path: String,
    /// `allow`, `deny`, `pending` or `undecided` (the client left before a decision).
    pub decision: &'static str,
    pub reason: Option<String>,
    /// Status the client got; 0 if it hung up first; `null` in a sync-audit request part.
    pub status: Option<u32>,
    pub approval: Option<ApprovalRecord>,
    pub request_body: Option<RequestBody>,
    pub response_body: Option<ResponseBody>,
    pub masking: BTreeMap<String, u64>,
    pub usage: Option<Usage>,
    pub timings_ms: Timings,
    pub aborted: bool,
}

/// A record being assembled while its stream runs.
pub struct Draft {
    pub time_ms: u64,
    pub request_id: String,
    pub source: String,
    pub method: String,
    pub authority: String,
    /// Already redacted.
    pub path: String,
    pub identity: Option<IdentityRecord>,
    pub session: Option<String>,
    pub resource: Option<String>,
    pub operation: Option<&'static str>,
    /// Set by a local reply of the filter: (status, reason); `None` = allowed.
    pub refused: Option<(u32, &'static str)>,
    /// 202 approval pending.
    pub pending: bool,
    pub approval: Option<ApprovalRecord>,
    pub request: Capture,
    pub response: Capture,
    /// Whether any request body was seen.
    pub request_seen: bool,
    pub response_seen: bool,
    pub auth_ms: u64,
    pub approval_started_ms: Option<u64>,
    pub approval_wait_ms: u64,
    /// When the request was let through to the upstream.
    pub forwarded_ms: Option<u64>,
    /// Response complete (end of stream seen on the response).
    pub response_done: bool,
    /// The response is JSON or an event stream (its tail may carry `usage`).
    pub usage_body: bool,
    /// The response is JSON lines (`body::JSON_LINES`): only Ollama's
    /// counts are read from its tail (`quota::usage_from_lines`).
    pub usage_lines: bool,
    /// Redactions in the request body (the prompt), by detector.
    pub request_masking: BTreeMap<String, u64>,
    /// Envoy's `response.code_details` when Envoy itself sent a local reply
    /// (anything but `via_upstream`) for a request the filter allowed.
    pub envoy_reply: Option<String>,
}

impl Draft {
    /// A new draft for a request whose headers arrived at `time_ms`.
    /// `caps`: (request text bytes, response text bytes).
    pub fn new(time_ms: u64, request_id: String, method: String, authority: String, path: &str, caps: (usize, usize)) -> Draft {
        Draft {
            time_ms,
            request_id,
            source: String::new(),
            method,
            authority,
            path: redact_path(path),
            identity: None,
            session: None,
            resource: None,
            operation: None,
            refused: None,
            pending: false,
            approval: None,
            request: Capture::new(caps.0, false),
            response: Capture::new(caps.1, true).without_digest(),
            request_seen: false,
            response_seen: false,
            auth_ms: 0,
            approval_started_ms: None,
            approval_wait_ms: 0,
            forwarded_ms: None,
            response_done: false,
            usage_body: false,
            usage_lines: false,
            request_masking: BTreeMap::new(),
            envoy_reply: None,
        }
    }

    /// The request part of a synchronous audit (`docs/audit-record.md`):
    /// the record as the request is forwarded, `status: null`, no response.
    pub fn request_part(&self, now_ms: u64, node: String, masking: BTreeMap<String, u64>) -> Record {
        let mut r = self.finish(now_ms, node, 0, masking, None);
        // sent as the request is released, just before it is forwarded
        (r.decision, r.reason) = ("allow", None);
        r.status = None;
        r.aborted = false;
        r.response_body = None;
        r.timings_ms.upstream = 0;
        r
    }

    /// Finishes the record at `now_ms`. `status`: what the client got (0 if
    /// none); `usage`: from the response, if any.
    pub fn finish(&self, now_ms: u64, node: String, status: u32, masking: BTreeMap<String, u64>, usage: Option<Usage>) -> Record {
        let (decision, reason) = match (self.pending, self.refused, &self.envoy_reply) {
            (true, _, _) => ("pending", Some("approval_pending".to_string())),
            (false, Some((_, r)), _) => ("deny", Some(r.to_string())),
            // Envoy itself answered (e.g. 413 over its buffer limit): nothing went upstream.
            (false, None, Some(details)) => ("deny", Some(details.clone())),
            // The client went away while the filter waited (for JWKS keys,
            // an approval, a quota or collector answer): nothing was forwarded.
            (false, None, None) if self.forwarded_ms.is_none() => ("undecided", Some("client_aborted".to_string())),
            (false, None, None) => ("allow", None),
        };
        let local_reply = self.pending || self.refused.is_some() || self.envoy_reply.is_some();
        let mut approval = self.approval.clone();
        if let Some(a) = &mut approval {
            if a.outcome.is_none() && !self.response_done {
                a.outcome = Some("abandoned");
            }
        }
        Record {
            version: 1,
            time_ms: self.time_ms,
            request_id: self.request_id.clone(),
            node,
            identity: self.identity.clone(),
            session: self.session.clone(),
            source: self.source.clone(),
            resource: self.resource.clone(),
            operation: self.operation,
            method: self.method.clone(),
            authority: self.authority.clone(),
            path: self.path.clone(),
            decision,
            reason,
            status: Some(status),
            approval,
            request_body: self.request_seen.then(|| self.request.request_record()),
            response_body: self.response_seen.then(|| self.response.response_record()),
            masking,
            usage,
            timings_ms: Timings {
                auth: self.auth_ms,
                approval_wait: self.approval_wait_ms,
                upstream: self.forwarded_ms.map(|f| now_ms.saturating_sub(f)).unwrap_or(0),
                total: now_ms.saturating_sub(self.time_ms),
            },
            // A local reply is complete even when the filter saw no end of its body.
            aborted: !self.response_done && !local_reply,
        }
    }
}
