//! HTTP side of `nhi-gate approvals serve` (docs/approval-protocol.md).
//!
//! Filter endpoints (`authorization: Bearer <--secret>` when a secret is set, else 401):
//! - `POST /v1/check` — the callout (§1); long-polls until decided or until
//!   `wait_ms − min(1000, wait_ms / 4)` ms have passed, then answers `pending`.
//! - `POST /v1/check/abandon` — `{"hold_id"}` (§2) → `200 {}`.
//!
//! Public: `GET /v1/approvals/<id>` (§3), `GET /healthz`, `GET /` (the approver page).
//!
//! Approver API (`authorization: Bearer <approver token>`, §4):
//! `GET /v1/approvals[?status=S]`, `GET /v1/approvals/<id>/detail`,
//! `POST /v1/approvals/<id>/approve` and `/deny` with `{"reason": "…"}`.
//! Errors are `{"error": code, "detail": text}` with 400, 401, 403, 404, 405, 409 or 500.
//!
//! Every request runs on its own thread; the store sits behind one mutex,
//! and long polls wait on a condvar that every decision, abandon and expiry
//! sweep wakes.

use super::store::{Callout, Consume, Store, VoteError, STATUSES};
use super::webhook;
use serde_json::{json, Value};
use std::io::Read;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The approver page, served at `GET /`.
const PAGE: &str = include_str!("page.html");

/// Seconds a job is told to wait before polling or retrying (`retry_after`).
const RETRY_AFTER_S: u64 = 10;

/// Largest request body read, bytes.
const MAX_BODY: u64 = 1 << 20;

/// Service configuration, fixed at start.
pub struct Config {
    /// Base of `status_url`s and webhook links, without a trailing slash.
    pub public_url: String,
    /// `(name, token)` pairs.
    pub approvers: Vec<(String, String)>,
    /// Required bearer secret on the filter endpoints.
    pub secret: Option<String>,
    /// Webhook URL for `approval.pending` events.
    pub webhook: Option<String>,
}

/// State shared by all request threads.
pub struct Shared {
    pub config: Config,
    store: Mutex<Store>,
    changed: Condvar,
}

impl Shared {
    pub fn new(config: Config, store: Store) -> Shared {
        Shared { config, store: Mutex::new(store), changed: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Expires due approvals and wakes every long poll if any changed.
    pub fn sweep(&self) {
        let changed = self.lock().expire_due(now_ms()).unwrap_or(0);
        if changed > 0 {
            self.changed.notify_all();
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Byte-wise comparison whose time does not depend on where inputs differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(req: &tiny_http::Request) -> Option<String> {
    let h = req.headers().iter().find(|h| h.field.equiv("authorization"))?;
    let v = h.value.as_str().trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
}

struct Reply {
    status: u16,
    ctype: &'static str,
    body: String,
}

fn ok(v: Value) -> Reply {
    Reply { status: 200, ctype: "application/json", body: v.to_string() }
}

fn error(status: u16, code: &str, detail: &str) -> Reply {
    Reply { status, ctype: "application/json", body: json!({"error": code, "detail": detail}).to_string() }
}

fn send(req: tiny_http::Request, r: Reply) {
    let mut resp = tiny_http::Response::from_string(r.body).with_status_code(r.status);
    let mut headers = vec![("content-type", r.ctype), ("cache-control", "no-store")];
    if r.ctype.starts_with("text/html") {
        headers.push((
            "content-security-policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
        ));
        headers.push(("referrer-policy", "no-referrer"));
        headers.push(("x-frame-options", "DENY"));
    }
    for (k, v) in headers {
        if let Ok(h) = tiny_http::Header::from_bytes(k, v) {
            resp = resp.with_header(h);
        }
    }
    let _ = req.respond(resp);
}

/// Handles one request (on its own thread) and answers it.
pub fn handle(mut req: tiny_http::Request, shared: &Shared) {
    let mut raw = Vec::new();
    // credentials are checked before a body is read (an unauthenticated
    // client cannot make the service hold a body per connection)
    let path = req.url().split('?').next().unwrap_or("").to_string();
    let unauthorized = req.method().as_str() == "POST"
        && if path.starts_with("/v1/check") {
            shared.config.secret.as_ref().is_some_and(|secret| !bearer(&req).is_some_and(|t| same(&t, secret)))
        } else {
            path.starts_with("/v1/approvals/") && approver(&req, shared).is_none()
        };
    if unauthorized {
        return send(req, error(401, "unauthorized", "missing or wrong credentials"));
    }
    let read = req.as_reader().take(MAX_BODY + 1).read_to_end(&mut raw);
    let reply = if read.is_err() || raw.len() as u64 > MAX_BODY {
        error(400, "bad_request", "unreadable or too large body")
    } else {
        route(&req, &raw, shared)
    };
    send(req, reply);
}

fn route(req: &tiny_http::Request, raw: &[u8], s: &Shared) -> Reply {
    let url = req.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().as_str();
    let body = || serde_json::from_slice::<Value>(raw).ok();
    match (method, segs.as_slice()) {
        ("GET", [""]) => Reply { status: 200, ctype: "text/html; charset=utf-8", body: PAGE.to_string() },
        ("GET", ["healthz"]) => ok(json!({"status": "ok"})),
        ("POST", ["v1", "check"]) | ("POST", ["v1", "check", "abandon"]) => {
            if let Some(secret) = &s.config.secret {
                if !bearer(req).is_some_and(|t| same(&t, secret)) {
                    return error(401, "unauthorized", "missing or wrong callout secret");
                }
            }
            let Some(body) = body() else { return error(400, "bad_request", "body must be JSON") };
            if segs.len() == 3 {
                abandon(s, &body)
            } else {
                match Callout::parse(&body) {
                    Ok(c) => check(s, &c),
                    Err(e) => error(400, "bad_request", &e),
                }
            }
        }
        ("GET", ["v1", "approvals", id]) => match s.lock().get(id, now_ms()) {
            Ok(Some(a)) => ok(json!({"approval_id": a.id, "status": a.status, "expires_at_ms": a.expires_at_ms()})),
            Ok(None) => error(404, "not_found", "no such approval"),
            Err(e) => error(500, "internal", &e.to_string()),
        },
        ("GET", ["v1", "approvals"]) | ("GET", ["v1", "approvals", _, "detail"]) | ("POST", ["v1", "approvals", _, _]) => {
            let Some(approver) = approver(req, s) else {
                return error(401, "unauthorized", "missing or unknown approver token");
            };
            match segs.as_slice() {
                [_, _] => list(s, query, &approver),
                [_, _, id, "detail"] => detail(s, id),
                [_, _, id, action @ ("approve" | "deny")] => vote(s, id, &approver, *action == "approve", body()),
                _ => error(404, "not_found", "no such endpoint"),
            }
        }
        (_, ["" | "healthz"]) | (_, ["v1", "check", ..]) | (_, ["v1", "approvals", ..]) => {
            error(405, "method_not_allowed", "method not allowed here")
        }
        _ => error(404, "not_found", "no such endpoint"),
    }
}

fn approver(req: &tiny_http::Request, s: &Shared) -> Option<String> {
    let token = bearer(req)?;
    let mut found = None;
    for (name, t) in &s.config.approvers {
        if same(&token, t) {
            found = Some(name.clone());
        }
    }
    found
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v.to_string())
}

fn list(s: &Shared, query: &str, approver: &str) -> Reply {
    let status = query_param(query, "status").filter(|v| !v.is_empty() && v != "all");
    if let Some(st) = &status {
        if !STATUSES.contains(&st.as_str()) {
            return error(400, "bad_request", &format!("status must be one of {} or all", STATUSES.join(", ")));
        }
    }
    let mut store = s.lock();
    let min = store.min_approvers;
    match store.list(status.as_deref(), now_ms()) {
        Ok(v) => {
            let approvals: Vec<Value> = v.iter().map(|a| a.to_json(&s.config.public_url, min)).collect();
            ok(json!({"approvals": approvals, "approver": approver, "now_ms": now_ms()}))
        }
        Err(e) => error(500, "internal", &e.to_string()),
    }
}

fn detail(s: &Shared, id: &str) -> Reply {
    let mut store = s.lock();
    let min = store.min_approvers;
    match store.get(id, now_ms()) {
        Ok(Some(a)) => ok(a.to_json(&s.config.public_url, min)),
        Ok(None) => error(404, "not_found", "no such approval"),
        Err(e) => error(500, "internal", &e.to_string()),
    }
}

fn vote(s: &Shared, id: &str, approver: &str, approve: bool, body: Option<Value>) -> Reply {
    let reason = match body {
        Some(Value::Object(o)) => match o.get("reason") {
            None | Some(Value::Null) => None,
            Some(Value::String(r)) => Some(r.clone()),
            Some(_) => return error(400, "bad_request", "reason must be a string"),
        },
        None | Some(Value::Null) => None,
        Some(_) => return error(400, "bad_request", "body must be a JSON object"),
    };
    if !approve && reason.as_deref().map(str::trim).unwrap_or("").is_empty() {
        return error(400, "reason_required", "a deny needs a reason");
    }
    let mut store = s.lock();
    let min = store.min_approvers;
    let result = store.vote(id, approver, approve, reason.as_deref(), now_ms());
    drop(store);
    match result {
        Ok(a) => {
            s.changed.notify_all();
            eprintln!("nhi-gate approvals: {approver} voted {} on {id}: now {}", if approve { "approve" } else { "deny" }, a.status);
            ok(a.to_json(&s.config.public_url, min))
        }
        Err(VoteError::NotFound) => error(404, "not_found", "no such approval"),
        Err(VoteError::SelfApproval) => error(403, "self_approval", "approvers cannot approve their own requests"),
        Err(VoteError::NotPending(st)) => error(409, "not_pending", &format!("the approval is {st}")),
        Err(VoteError::AlreadyVoted) => error(409, "already_voted", "this approver already voted"),
        Err(VoteError::Db(e)) => error(500, "internal", &e),
    }
}

fn abandon(s: &Shared, body: &Value) -> Reply {
    let Some(hold_id) = body.get("hold_id").and_then(Value::as_str) else {
        return error(400, "bad_request", "hold_id must be a string");
    };
    match s.lock().abandon(hold_id, now_ms()) {
        Ok(changed) => {
            if changed {
                s.changed.notify_all();
                eprintln!("nhi-gate approvals: hold {hold_id} abandoned");
            }
            ok(json!({}))
        }
        Err(e) => error(500, "internal", &e.to_string()),
    }
}

/// The callout answer (§1) for a denial with `reason`.
fn denied(s: &Shared, id: Option<&str>, reason: &str, message: String, approver: Option<String>) -> Reply {
    ok(json!({
        "approval_id": id, "status": "denied", "reason": reason, "message": message, "approver": approver,
        "status_url": id.map(|i| format!("{}/v1/approvals/{i}", s.config.public_url)), "retry_after": Value::Null,
    }))
}

/// How long a callout may be held before answering `pending`.
fn hold_for(wait_ms: u64) -> Duration {
    Duration::from_millis(wait_ms - (wait_ms / 4).min(1000))
}

/// The callout (§1): find or create the approval, then long-poll.
fn check(s: &Shared, c: &Callout) -> Reply {
    let deadline = Instant::now() + hold_for(c.wait_ms);
    let mut store = s.lock();
    let id = match &c.approval_id {
        None => match store.open_hold(c, now_ms()) {
            Ok((a, created)) => {
                if created {
                    eprintln!("nhi-gate approvals: new {} for {} {} {} ({})", a.id, a.subject, a.method, a.path, a.resource);
                    if let Some(url) = &s.config.webhook {
                        let page = format!("{}/#{}", s.config.public_url, a.id);
                        webhook::notify(
                            url.clone(),
                            json!({"event": "approval.pending", "approval": a.to_json(&s.config.public_url, store.min_approvers),
                                   "approve_url": format!("{}/v1/approvals/{}/approve", s.config.public_url, a.id),
                                   "deny_url": format!("{}/v1/approvals/{}/deny", s.config.public_url, a.id),
                                   "page_url": page}),
                        );
                    }
                }
                a.id
            }
            Err(e) => return error(500, "internal", &e),
        },
        Some(id) => match store.get(id, now_ms()) {
            Ok(Some(a)) if a.binds(c) => a.id,
            Ok(Some(a)) => {
                return denied(s, Some(&a.id), "approval_mismatch", "the request differs from the approved one".into(), None)
            }
            Ok(None) => return denied(s, None, "approval_unknown", format!("no approval {id}"), None),
            Err(e) => return error(500, "internal", &e.to_string()),
        },
    };
    loop {
        let a = match store.consume(&id, &c.hold_id, &c.request_id, now_ms()) {
            Ok(Some(Consume::Approved(a))) => {
                let who = a.approvers().join(", ");
                eprintln!("nhi-gate approvals: {} released for hold {}", a.id, c.hold_id);
                return ok(json!({
                    "approval_id": a.id, "status": "approved", "reason": Value::Null,
                    "message": a.message.clone().unwrap_or_else(|| "approved".into()), "approver": who,
                    "status_url": format!("{}/v1/approvals/{}", s.config.public_url, a.id), "retry_after": Value::Null,
                }));
            }
            Ok(Some(Consume::Closed(a))) => {
                let reason = a.reason_code().unwrap_or("approval_denied");
                let message = match a.status.as_str() {
                    "denied" => a.message.clone().unwrap_or_else(|| "denied".into()),
                    "used" => format!("approval {} has no uses left", a.id),
                    "expired" => format!("approval {} expired", a.id),
                    _ => format!("approval {} was abandoned by its client", a.id),
                };
                let who = a.denier().map(|v| v.approver.clone());
                return denied(s, Some(&a.id), reason, message, who);
            }
            Ok(Some(Consume::Pending(a))) => a,
            Ok(None) => return denied(s, None, "approval_unknown", format!("no approval {id}"), None),
            Err(e) => return error(500, "internal", &e.to_string()),
        };
        let now = Instant::now();
        if now >= deadline {
            let votes = a.approvers().len();
            return ok(json!({
                "approval_id": a.id, "status": "pending", "reason": Value::Null,
                "message": format!("waiting for approval ({votes}/{} approvers)", store.min_approvers),
                "approver": Value::Null,
                "status_url": format!("{}/v1/approvals/{}", s.config.public_url, a.id), "retry_after": RETRY_AFTER_S,
            }));
        }
        // Wake at the deadline, at the pending TTL (to answer `expired`), or on any change.
        let until_expiry = Duration::from_millis(a.pending_expires_ms.saturating_sub(now_ms()).max(0) as u64 + 5);
        let wait = (deadline - now).min(until_expiry);
        store = s.changed.wait_timeout(store, wait).unwrap_or_else(|e| e.into_inner()).0;
    }
}

/// Serves until the process ends: one thread per request, and an expiry
/// sweep every second.
pub fn serve(server: tiny_http::Server, shared: Arc<Shared>) {
    let sweeper = shared.clone();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(1));
        sweeper.sweep();
    });
    for req in server.incoming_requests() {
        let shared = shared.clone();
        // no thread for it (a process limit): the request is dropped, the service lives
        if let Err(e) = std::thread::Builder::new().spawn(move || handle(req, &shared)) {
            eprintln!("nhi-gate approvals: request dropped, no thread for it: {e}");
        }
    }
}
