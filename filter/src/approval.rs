//! Out-of-band approval of held requests, independent of the proxy-wasm host:
//! which requests a resource holds, the callout body sent to the approval
//! service, and how its answer becomes a decision.
//! Protocol: `docs/approval-protocol.md` (v1).

use crate::config::Approval;
use crate::deny::Denial;
use crate::policy::{path_only, Identity, OpClass, Request};
use serde_json::{json, Value};
use std::rc::Rc;

/// Request header carrying the id of an approval the client redeems
/// (from an earlier `202 Accepted`). Never forwarded upstream.
pub const APPROVAL_HEADER: &str = "x-nhi-approval";

/// `Retry-After` of a 202 when the service gives none, seconds.
pub const DEFAULT_RETRY_AFTER: u64 = 30;

/// Longest accepted approval id, bytes.
pub const MAX_ID_BYTES: usize = 128;

/// Denial reason codes the service may give (§1 of the protocol).
const REASONS: [&str; 6] =
    ["approval_denied", "approval_unknown", "approval_mismatch", "approval_expired", "approval_used", "approval_abandoned"];

impl Approval {
    /// Whether a request of operation class `op` by `id` is held: it is a write
    /// (when `write` is on) or matches one of `requests`, and `id` is in none
    /// of `exempt_groups`.
    pub fn holds(&self, op: OpClass, req: &Request<'_>, id: &Identity) -> bool {
        if self.exempt_groups.iter().any(|g| id.groups.contains(g)) {
            return false;
        }
        let path = path_only(req.path);
        (self.write && op == OpClass::Write)
            || self
                .requests
                .iter()
                .any(|p| crate::policy::method_listed(&p.methods, req.method) && p.path_glob.matches(path))
    }
}

/// Parses an `x-nhi-approval` value: 1..=128 bytes of `[A-Za-z0-9_.-]`.
pub fn approval_id(value: &[u8]) -> Option<String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_ID_BYTES
        && value.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    ok.then(|| String::from_utf8_lossy(value).to_string())
}

/// A request the filter holds for approval: what the approval binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub settings: Rc<ApprovalRef>,
    /// The approval redeemed (`x-nhi-approval`), `None` for a new request.
    pub approval_id: Option<String>,
    pub identity: Identity,
    pub resource: String,
    pub operation: &'static str,
    pub method: String,
    pub authority: String,
    /// `:path` for display: query values that look like secrets redacted
    /// ([`crate::audit::redact_path`]).
    pub path: String,
    /// Lowercase hex SHA-256 of the exact `:path` bytes (query included):
    /// what an approval binds, since `path` may hide the values that pick
    /// the target (`?key=…`).
    pub path_sha256: String,
}

/// Shared reference to a resource's approval settings (compared by address).
#[derive(Debug)]
pub struct ApprovalRef(pub Rc<Approval>);

impl PartialEq for ApprovalRef {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for ApprovalRef {}

/// Lowercase hex SHA-256 (FIPS 180-4) of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&hmac_sha256::Hash::hash(data))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let digit = |n: u8| char::from_digit(u32::from(n), 16).unwrap_or('0');
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(digit(b >> 4));
        out.push(digit(b & 15));
    }
    out
}

/// Where and when the held request came from (host facts, not policy).
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// 32 hex chars, random per held request.
    pub hold_id: String,
    /// Envoy's `x-request-id`.
    pub request_id: String,
    /// Downstream address (`ip:port`).
    pub source: String,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
}

impl Ticket {
    /// The callout body (protocol §1) for the buffered request `body`.
    pub fn callout_body(&self, origin: &Origin, body: &[u8]) -> Vec<u8> {
        let s = &self.settings.0;
        let cut = body.len().min(s.preview_bytes);
        let preview = String::from_utf8_lossy(body.get(..cut).unwrap_or_default()).to_string();
        let id = &self.identity;
        let v = json!({
            "version": 1,
            "hold_id": origin.hold_id,
            "request_id": origin.request_id,
            "approval_id": self.approval_id,
            "wait_ms": s.hold_ms,
            "time_ms": origin.time_ms,
            "identity": {"provider": id.provider, "issuer": id.issuer, "subject": id.subject, "groups": id.groups, "jti": id.jti},
            "resource": self.resource,
            "operation": self.operation,
            "method": self.method,
            "authority": self.authority,
            "path": self.path,
            "path_sha256": self.path_sha256,
            "body": {"sha256": sha256_hex(body), "size": body.len(), "preview": preview, "truncated": cut < body.len()},
            "source": origin.source,
            "grant": {"uses": s.grant_uses, "window_seconds": s.grant_window_seconds},
        });
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// Callout headers (`:method`, `:path`, `:authority`, content type, optional bearer secret).
    pub fn callout_headers(&self, abandon: bool) -> Vec<(String, String)> {
        let s = &self.settings.0;
        let path = if abandon { format!("{}/abandon", s.path.trim_end_matches('/')) } else { s.path.clone() };
        let mut h = vec![
            (":method".to_string(), "POST".to_string()),
            (":path".to_string(), path),
            (":authority".to_string(), s.authority.clone()),
            ("content-type".to_string(), "application/json".to_string()),
        ];
        if let Some(secret) = &s.secret {
            h.push(("authorization".to_string(), format!("Bearer {secret}")));
        }
        h
    }
}

/// A request still waiting for a decision when the hold ended: the `202 Accepted` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub approval_id: String,
    pub status_url: String,
    /// Seconds.
    pub retry_after: u64,
}

impl Pending {
    /// JSON body `{approval_id, status: "pending", status_url, retry_after}`.
    pub fn body(&self) -> Vec<u8> {
        let v = json!({"approval_id": self.approval_id, "status": "pending", "status_url": self.status_url, "retry_after": self.retry_after});
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

/// The decision for a held request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the buffered request.
    Approved { approval_id: String, approver: String },
    /// Answer 202 Accepted; nothing is forwarded.
    Pending(Pending),
    /// Refuse (403 from an approver or a failed redeem; 503 when the service failed).
    Denied(Denial),
}

/// 503 `approval_unavailable`: the service could not decide (fail closed).
pub fn unavailable(detail: impl Into<String>) -> Denial {
    Denial { status: 503, reason: "approval_unavailable", detail: detail.into() }
}

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
}

/// Maps the service's answer to a decision (protocol §1). `status` is the
/// callout's `:status` (`None` when it has none); anything but `200` with a
/// JSON object whose `status` is `approved`, `denied` or `pending` is 503
/// `approval_unavailable`.
pub fn verdict(status: Option<&str>, body: &[u8]) -> Verdict {
    match status {
        Some("200") => {}
        Some(s) => return Verdict::Denied(unavailable(format!("approval service answered {s}"))),
        None => return Verdict::Denied(unavailable("approval service gave no answer (no :status)")),
    }
    // Duplicate member names are refused, not read last-wins: a proxy or
    // log on the way could read the other `status`.
    let v = match crate::jwt::parse_unique(body) {
        Ok(v) => v,
        Err(true) => return Verdict::Denied(unavailable("approval service answer has a duplicate member name")),
        Err(false) => return Verdict::Denied(unavailable("approval service answer is not JSON")),
    };
    if !v.is_object() {
        return Verdict::Denied(unavailable("approval service answer is not a JSON object"));
    }
    let approval_id = text(&v, "approval_id");
    match v.get("status").and_then(Value::as_str) {
        Some("approved") => Verdict::Approved { approval_id, approver: text(&v, "approver") },
        Some("pending") => match crate::approval::approval_id(approval_id.as_bytes()) {
            Some(id) => Verdict::Pending(Pending {
                approval_id: id,
                status_url: text(&v, "status_url"),
                retry_after: v.get("retry_after").and_then(Value::as_u64).unwrap_or(DEFAULT_RETRY_AFTER).clamp(1, 3600),
            }),
            None => Verdict::Denied(unavailable("approval service answered pending without a valid approval_id")),
        },
        Some("denied") => {
            let given = text(&v, "reason");
            let reason = REASONS.iter().find(|r| **r == given).copied().unwrap_or("approval_denied");
            let mut detail = text(&v, "message");
            if detail.is_empty() {
                detail = "the approval service refused this request".into();
            }
            Verdict::Denied(Denial::forbidden(reason, detail))
        }
        _ => Verdict::Denied(unavailable("approval service answer has no known status")),
    }
}

/// The `approval_id` (when a valid approval id) and `approver` (when not
/// empty) that an answer names, for the audit record of a denial.
pub fn answer_names(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else { return (None, None) };
    let id = crate::approval::approval_id(text(&v, "approval_id").as_bytes());
    let approver = Some(text(&v, "approver")).filter(|a| !a.is_empty());
    (id, approver)
}

/// The abandon body (protocol §2).
pub fn abandon_body(hold_id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"hold_id": hold_id})).unwrap_or_default()
}
