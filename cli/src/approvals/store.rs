//! SQLite state of the approval service: one row per approval, its votes and
//! its consumed uses. Every change is one transaction, written through
//! (WAL, `synchronous=FULL`), so a restart loses nothing.
//!
//! Tables (all times in ms since the Unix epoch):
//! - `approvals` — everything the callout sent (also verbatim in `callout`),
//!   `status` (`pending`, `approved`, `denied`, `expired`, `abandoned`, `used`),
//!   `pending_expires_ms`, `decided_ms` (approve/deny), `expires_ms` (end of the
//!   grant window once approved), `closed_ms` (reached a terminal state),
//!   `uses_left` (NULL: unlimited), `message` (the decision, for people).
//! - `votes` — `(approval_id, approver)` unique: `decision` `approve`|`deny`, `reason`, `time_ms`.
//! - `uses` — `(approval_id, hold_id)` unique: one row per consumed use, so a
//!   repeated callout for the same hold never consumes twice.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::{json, Value};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS approvals (
  id TEXT PRIMARY KEY,
  hold_id TEXT NOT NULL UNIQUE,
  request_id TEXT NOT NULL,
  status TEXT NOT NULL,
  created_ms INTEGER NOT NULL,
  callout_time_ms INTEGER NOT NULL,
  wait_ms INTEGER NOT NULL,
  pending_expires_ms INTEGER NOT NULL,
  identity TEXT NOT NULL,
  issuer TEXT NOT NULL,
  subject TEXT NOT NULL,
  resource TEXT NOT NULL,
  operation TEXT NOT NULL,
  method TEXT NOT NULL,
  authority TEXT NOT NULL,
  path TEXT NOT NULL,
  body_sha256 TEXT NOT NULL,
  body_size INTEGER NOT NULL,
  body_preview TEXT NOT NULL,
  body_truncated INTEGER NOT NULL,
  source TEXT NOT NULL,
  grant_uses INTEGER NOT NULL,
  grant_window_seconds INTEGER NOT NULL,
  uses_left INTEGER,
  decided_ms INTEGER,
  expires_ms INTEGER,
  closed_ms INTEGER,
  message TEXT,
  callout TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS approvals_status ON approvals(status, created_ms);
CREATE TABLE IF NOT EXISTS votes (
  approval_id TEXT NOT NULL REFERENCES approvals(id),
  approver TEXT NOT NULL,
  decision TEXT NOT NULL,
  reason TEXT,
  time_ms INTEGER NOT NULL,
  PRIMARY KEY (approval_id, approver)
);
CREATE TABLE IF NOT EXISTS uses (
  approval_id TEXT NOT NULL REFERENCES approvals(id),
  hold_id TEXT NOT NULL,
  request_id TEXT NOT NULL,
  time_ms INTEGER NOT NULL,
  PRIMARY KEY (approval_id, hold_id)
);
PRAGMA user_version = 1;
";

/// Statuses an approval can have (the `status` column and JSON field).
pub const STATUSES: [&str; 6] = ["pending", "approved", "denied", "expired", "abandoned", "used"];

/// Longest hold the service accepts, ms (a larger `wait_ms` is clamped).
pub const MAX_WAIT_MS: u64 = 15 * 60 * 1000;

/// One callout body (protocol §1), validated. Construct with [`Callout::parse`].
#[derive(Debug, Clone)]
pub struct Callout {
    pub hold_id: String,
    pub request_id: String,
    /// `None` for a new request, the client's `x-nhi-approval` for a redeem.
    pub approval_id: Option<String>,
    /// How long the filter holds the request, ms (clamped to [`MAX_WAIT_MS`]).
    pub wait_ms: u64,
    pub time_ms: i64,
    /// The verified claims object as sent.
    pub identity: Value,
    pub issuer: String,
    pub subject: String,
    pub resource: String,
    pub operation: String,
    pub method: String,
    pub authority: String,
    pub path: String,
    /// Lowercase hex SHA-256 of the exact `:path` (64 chars; empty when the
    /// filter did not send it): `path` may have query values redacted.
    pub path_sha256: String,
    /// Lowercase hex SHA-256 of the held body (64 chars).
    pub body_sha256: String,
    pub body_size: i64,
    pub body_preview: String,
    pub body_truncated: bool,
    pub source: String,
    /// Redeems allowed by an approval; 0 = unlimited within the window.
    pub grant_uses: i64,
    /// Grant window after the decision, seconds (≥ 1).
    pub grant_window_seconds: i64,
    /// The whole body as received (stored verbatim, unknown fields included).
    pub raw: Value,
}

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}

impl Callout {
    /// Validates a callout body. Errors name the offending field; unknown
    /// fields are ignored. Missing `grant` means `{"uses": 1, "window_seconds": 900}`.
    pub fn parse(v: &Value) -> Result<Callout, String> {
        if !v.is_object() {
            return Err("body must be a JSON object".into());
        }
        if v.get("version").and_then(Value::as_u64) != Some(1) {
            return Err("version must be 1".into());
        }
        let hold_id = text(v, "hold_id");
        if hold_id.is_empty() || hold_id.len() > 128 || !hold_id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("hold_id must be 1..128 visible ASCII characters".into());
        }
        let approval_id = match v.get("approval_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err("approval_id must be a string or null".into()),
        };
        let wait_ms = v.get("wait_ms").and_then(Value::as_u64).ok_or("wait_ms must be a non-negative integer")?;
        let identity = v.get("identity").filter(|i| i.is_object()).cloned().ok_or("identity must be an object")?;
        let subject = text(&identity, "subject");
        if subject.is_empty() {
            return Err("identity.subject must be a non-empty string".into());
        }
        let (method, path) = (text(v, "method"), text(v, "path"));
        if method.is_empty() || path.is_empty() {
            return Err("method and path must be non-empty strings".into());
        }
        let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let path_sha256 = text(v, "path_sha256");
        if v.get("path_sha256").is_some() && !hex64(&path_sha256) {
            return Err("path_sha256 must be 64 lowercase hex characters".into());
        }
        let body = v.get("body").cloned().unwrap_or(Value::Null);
        let body_sha256 = text(&body, "sha256");
        if body_sha256.len() != 64 || !body_sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err("body.sha256 must be 64 lowercase hex characters".into());
        }
        let grant = v.get("grant").cloned().unwrap_or_else(|| json!({"uses": 1, "window_seconds": 900}));
        let grant_uses = grant.get("uses").and_then(Value::as_i64).filter(|u| (0..=1_000_000).contains(u)).ok_or("grant.uses must be an integer 0..1000000")?;
        let grant_window_seconds = grant
            .get("window_seconds")
            .and_then(Value::as_i64)
            .filter(|w| (1..=366 * 86400).contains(w))
            .ok_or("grant.window_seconds must be an integer 1..31622400")?;
        Ok(Callout {
            hold_id,
            request_id: text(v, "request_id"),
            approval_id,
            wait_ms: wait_ms.min(MAX_WAIT_MS),
            time_ms: v.get("time_ms").and_then(Value::as_i64).unwrap_or(0),
            issuer: text(&identity, "issuer"),
            subject,
            identity,
            resource: text(v, "resource"),
            operation: text(v, "operation"),
            method,
            authority: text(v, "authority"),
            path,
            path_sha256,
            body_sha256,
            body_size: body.get("size").and_then(Value::as_i64).unwrap_or(0),
            body_preview: text(&body, "preview"),
            body_truncated: body.get("truncated").and_then(Value::as_bool).unwrap_or(false),
            source: text(v, "source"),
            grant_uses,
            grant_window_seconds,
            raw: v.clone(),
        })
    }
}

/// One approver's vote.
#[derive(Debug, Clone)]
pub struct Vote {
    pub approver: String,
    /// `approve` or `deny`.
    pub decision: String,
    pub reason: Option<String>,
    pub time_ms: i64,
}

/// One approval as stored, with its votes (oldest first).
#[derive(Debug, Clone)]
pub struct Approval {
    pub id: String,
    pub hold_id: String,
    pub request_id: String,
    /// One of [`STATUSES`].
    pub status: String,
    pub created_ms: i64,
    pub callout_time_ms: i64,
    pub pending_expires_ms: i64,
    pub identity: Value,
    pub issuer: String,
    pub subject: String,
    pub resource: String,
    pub operation: String,
    pub method: String,
    pub authority: String,
    pub path: String,
    /// SHA-256 of the exact `:path` of the held request (from its stored
    /// callout; empty if the filter did not send one).
    pub path_sha256: String,
    pub body_sha256: String,
    pub body_size: i64,
    pub body_preview: String,
    pub body_truncated: bool,
    pub source: String,
    pub grant_uses: i64,
    pub grant_window_seconds: i64,
    /// `None`: unlimited (grant uses 0).
    pub uses_left: Option<i64>,
    pub uses_consumed: i64,
    pub decided_ms: Option<i64>,
    pub expires_ms: Option<i64>,
    pub closed_ms: Option<i64>,
    pub message: Option<String>,
    pub votes: Vec<Vote>,
}

impl Approval {
    /// Whether a redeem callout is for the same request: same identity
    /// (issuer and subject), resource, authority (ASCII case-insensitive),
    /// method, path (as shown, and the digest of the exact path: the shown
    /// one may have query values redacted) and body digest.
    pub fn binds(&self, c: &Callout) -> bool {
        self.issuer == c.issuer
            && self.subject == c.subject
            && self.resource == c.resource
            && self.authority.eq_ignore_ascii_case(&c.authority)
            && self.method == c.method
            && self.path == c.path
            && self.path_sha256 == c.path_sha256
            && self.body_sha256 == c.body_sha256
    }

    /// The protocol denial code of a closed approval (`None` while pending or approved).
    pub fn reason_code(&self) -> Option<&'static str> {
        match self.status.as_str() {
            "denied" => Some("approval_denied"),
            "expired" => Some("approval_expired"),
            "abandoned" => Some("approval_abandoned"),
            "used" => Some("approval_used"),
            _ => None,
        }
    }

    /// Names of the approvers who approved, in vote order.
    pub fn approvers(&self) -> Vec<&str> {
        self.votes.iter().filter(|v| v.decision == "approve").map(|v| v.approver.as_str()).collect()
    }

    /// The deciding deny vote, if any.
    pub fn denier(&self) -> Option<&Vote> {
        self.votes.iter().find(|v| v.decision == "deny")
    }

    /// When the current state ends, ms: the pending TTL while pending, the
    /// grant window once approved (kept afterwards), else `None`.
    pub fn expires_at_ms(&self) -> Option<i64> {
        if self.status == "pending" {
            Some(self.pending_expires_ms)
        } else {
            self.expires_ms
        }
    }

    /// The `<approval>` JSON of the approver API (protocol §4).
    pub fn to_json(&self, public_url: &str, min_approvers: u32) -> Value {
        json!({
            "approval_id": self.id,
            "status": self.status,
            "reason": self.reason_code(),
            "message": self.message,
            "hold_id": self.hold_id,
            "request_id": self.request_id,
            "created_ms": self.created_ms,
            "time_ms": self.callout_time_ms,
            "pending_expires_ms": self.pending_expires_ms,
            "decided_ms": self.decided_ms,
            "closed_ms": self.closed_ms,
            "expires_at_ms": self.expires_at_ms(),
            "identity": self.identity,
            "resource": self.resource,
            "operation": self.operation,
            "method": self.method,
            "authority": self.authority,
            "path": self.path,
            "body": {"sha256": self.body_sha256, "size": self.body_size,
                     "preview": self.body_preview, "truncated": self.body_truncated},
            "source": self.source,
            "grant": {"uses": self.grant_uses, "window_seconds": self.grant_window_seconds},
            "uses_left": self.uses_left,
            "uses_consumed": self.uses_consumed,
            "approvals_needed": min_approvers,
            "votes": self.votes.iter().map(|v| json!({"approver": v.approver, "decision": v.decision,
                                                       "reason": v.reason, "time_ms": v.time_ms})).collect::<Vec<_>>(),
            "status_url": format!("{public_url}/v1/approvals/{}", self.id),
        })
    }
}

/// What a callout gets after trying to consume one use (see [`Store::consume`]).
#[derive(Debug)]
pub enum Consume {
    /// One use consumed now (or earlier by this same hold).
    Approved(Approval),
    /// Still waiting for votes.
    Pending(Approval),
    /// Terminal or exhausted: answer `denied` with [`Approval::reason_code`].
    Closed(Approval),
}

/// Why a vote was refused (maps to 404, 403, 409, 409).
#[derive(Debug, PartialEq, Eq)]
pub enum VoteError {
    NotFound,
    SelfApproval,
    NotPending(String),
    AlreadyVoted,
    Db(String),
}

impl From<rusqlite::Error> for VoteError {
    fn from(e: rusqlite::Error) -> Self {
        VoteError::Db(e.to_string())
    }
}

/// The SQLite-backed state. Not thread-safe by itself: the server keeps it
/// behind one `Mutex` (with a `Condvar` for long polls).
pub struct Store {
    conn: Connection,
    pending_ttl_ms: i64,
    /// Distinct approvers needed to approve (≥ 1).
    pub min_approvers: u32,
}

type DbResult<T> = Result<T, rusqlite::Error>;

/// A new approval id: `apr_` + 32 hex chars from the OS CSPRNG (unguessable,
/// since the status URL is unauthenticated).
pub fn new_id() -> Result<String, String> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|e| format!("no randomness: {e}"))?;
    Ok(format!("apr_{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>()))
}

fn approval_from_row(r: &Row) -> DbResult<Approval> {
    let identity: String = r.get("identity")?;
    let callout: String = r.get("callout")?;
    let path_sha256 = serde_json::from_str::<Value>(&callout)
        .ok()
        .and_then(|v| v.get("path_sha256")?.as_str().map(String::from))
        .unwrap_or_default();
    Ok(Approval {
        id: r.get("id")?,
        hold_id: r.get("hold_id")?,
        request_id: r.get("request_id")?,
        status: r.get("status")?,
        created_ms: r.get("created_ms")?,
        callout_time_ms: r.get("callout_time_ms")?,
        pending_expires_ms: r.get("pending_expires_ms")?,
        identity: serde_json::from_str(&identity).unwrap_or(Value::Null),
        issuer: r.get("issuer")?,
        subject: r.get("subject")?,
        resource: r.get("resource")?,
        operation: r.get("operation")?,
        method: r.get("method")?,
        authority: r.get("authority")?,
        path: r.get("path")?,
        path_sha256,
        body_sha256: r.get("body_sha256")?,
        body_size: r.get("body_size")?,
        body_preview: r.get("body_preview")?,
        body_truncated: r.get::<_, i64>("body_truncated")? != 0,
        source: r.get("source")?,
        grant_uses: r.get("grant_uses")?,
        grant_window_seconds: r.get("grant_window_seconds")?,
        uses_left: r.get("uses_left")?,
        uses_consumed: r.get("uses_consumed")?,
        decided_ms: r.get("decided_ms")?,
        expires_ms: r.get("expires_ms")?,
        closed_ms: r.get("closed_ms")?,
        message: r.get("message")?,
        votes: Vec::new(),
    })
}

const SELECT: &str = "SELECT a.*, (SELECT COUNT(*) FROM uses u WHERE u.approval_id = a.id) AS uses_consumed FROM approvals a";

impl Store {
    /// Opens (creating if needed) the database at `path`. `pending_ttl_ms`:
    /// how long an undecided approval stays pending.
    pub fn open(path: &std::path::Path, pending_ttl_ms: i64, min_approvers: u32) -> DbResult<Store> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let _mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn, pending_ttl_ms, min_approvers: min_approvers.max(1) })
    }

    /// Moves due approvals to `expired`: pending past their TTL, approved past
    /// their grant window. Returns how many changed.
    pub fn expire_due(&mut self, now_ms: i64) -> DbResult<usize> {
        let a = self.conn.execute(
            "UPDATE approvals SET status = 'expired', closed_ms = ?1,
               message = COALESCE(message, 'no decision before the pending TTL')
             WHERE status = 'pending' AND pending_expires_ms <= ?1",
            params![now_ms],
        )?;
        let b = self.conn.execute(
            "UPDATE approvals SET status = 'expired', closed_ms = ?1
             WHERE status = 'approved' AND expires_ms IS NOT NULL AND expires_ms <= ?1",
            params![now_ms],
        )?;
        Ok(a + b)
    }

    fn votes(&self, id: &str) -> DbResult<Vec<Vote>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT approver, decision, reason, time_ms FROM votes WHERE approval_id = ?1 ORDER BY time_ms, rowid")?;
        let rows = st.query_map(params![id], |r| {
            Ok(Vote { approver: r.get(0)?, decision: r.get(1)?, reason: r.get(2)?, time_ms: r.get(3)? })
        })?;
        rows.collect()
    }

    /// The approval with this id (after expiring due ones), votes included.
    pub fn get(&mut self, id: &str, now_ms: i64) -> DbResult<Option<Approval>> {
        self.expire_due(now_ms)?;
        let a = self
            .conn
            .query_row(&format!("{SELECT} WHERE a.id = ?1"), params![id], approval_from_row)
            .optional()?;
        match a {
            Some(mut a) => {
                a.votes = self.votes(&a.id)?;
                Ok(Some(a))
            }
            None => Ok(None),
        }
    }

    /// Approvals with `status` (all when `None`), newest first, at most 500.
    pub fn list(&mut self, status: Option<&str>, now_ms: i64) -> DbResult<Vec<Approval>> {
        self.expire_due(now_ms)?;
        let mut st = self.conn.prepare_cached(&format!(
            "{SELECT} WHERE (?1 IS NULL OR a.status = ?1) ORDER BY a.created_ms DESC, a.rowid DESC LIMIT 500"
        ))?;
        let rows: Vec<Approval> = st.query_map(params![status], approval_from_row)?.collect::<DbResult<_>>()?;
        drop(st);
        rows.into_iter()
            .map(|mut a| {
                a.votes = self.votes(&a.id)?;
                Ok(a)
            })
            .collect()
    }

    /// The approval created by `c.hold_id`, creating a `pending` one if none
    /// exists (idempotent by hold id). The flag says whether it was created now.
    pub fn open_hold(&mut self, c: &Callout, now_ms: i64) -> Result<(Approval, bool), String> {
        let existing: Option<String> = self
            .conn
            .query_row("SELECT id FROM approvals WHERE hold_id = ?1", params![c.hold_id], |r| r.get(0))
            .optional()
            .map_err(|e| e.to_string())?;
        let (id, created) = match existing {
            Some(id) => (id, false),
            None => {
                let id = new_id()?;
                self.conn
                    .execute(
                        "INSERT INTO approvals (id, hold_id, request_id, status, created_ms, callout_time_ms, wait_ms,
                           pending_expires_ms, identity, issuer, subject, resource, operation, method, authority, path,
                           body_sha256, body_size, body_preview, body_truncated, source, grant_uses,
                           grant_window_seconds, uses_left, callout)
                         VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                           ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)",
                        params![
                            id,
                            c.hold_id,
                            c.request_id,
                            now_ms,
                            c.time_ms,
                            c.wait_ms as i64,
                            now_ms.saturating_add(self.pending_ttl_ms),
                            c.identity.to_string(),
                            c.issuer,
                            c.subject,
                            c.resource,
                            c.operation,
                            c.method,
                            c.authority,
                            c.path,
                            c.body_sha256,
                            c.body_size,
                            c.body_preview,
                            c.body_truncated as i64,
                            c.source,
                            c.grant_uses,
                            c.grant_window_seconds,
                            if c.grant_uses == 0 { None } else { Some(c.grant_uses) },
                            c.raw.to_string(),
                        ],
                    )
                    .map_err(|e| e.to_string())?;
                (id, true)
            }
        };
        let a = self.get(&id, now_ms).map_err(|e| e.to_string())?.ok_or("approval vanished")?;
        Ok((a, created))
    }

    /// Tries to consume one use of approval `id` for hold `hold_id` (request
    /// `request_id`), atomically. A hold that already consumed a use of this
    /// approval gets `Approved` again without consuming another. An approved
    /// approval whose last use this is becomes `used`. `None`: no such id.
    pub fn consume(&mut self, id: &str, hold_id: &str, request_id: &str, now_ms: i64) -> DbResult<Option<Consume>> {
        let Some(a) = self.get(id, now_ms)? else { return Ok(None) };
        let already: bool = self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM uses WHERE approval_id = ?1 AND hold_id = ?2)",
            params![id, hold_id],
            |r| r.get(0),
        )?;
        if already {
            return Ok(Some(Consume::Approved(a)));
        }
        match a.status.as_str() {
            "pending" => return Ok(Some(Consume::Pending(a))),
            "approved" => {}
            _ => return Ok(Some(Consume::Closed(a))),
        }
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO uses (approval_id, hold_id, request_id, time_ms) VALUES (?1, ?2, ?3, ?4)",
            params![id, hold_id, request_id, now_ms],
        )?;
        tx.execute(
            "UPDATE approvals SET uses_left = uses_left - 1,
               status = CASE WHEN uses_left = 1 THEN 'used' ELSE status END,
               closed_ms = CASE WHEN uses_left = 1 THEN ?2 ELSE closed_ms END
             WHERE id = ?1 AND uses_left IS NOT NULL",
            params![id, now_ms],
        )?;
        tx.commit()?;
        let a = self.get(id, now_ms)?;
        Ok(a.map(Consume::Approved))
    }

    /// Records `approver`'s vote on a pending approval: `approve` (approved
    /// once `min_approvers` distinct approvers agree; refused with
    /// `SelfApproval` when `approver` is the request's subject) or `deny`
    /// (denied at once). `reason` is kept with the vote.
    pub fn vote(&mut self, id: &str, approver: &str, approve: bool, reason: Option<&str>, now_ms: i64) -> Result<Approval, VoteError> {
        let a = self.get(id, now_ms)?.ok_or(VoteError::NotFound)?;
        if approve && a.subject == approver {
            return Err(VoteError::SelfApproval);
        }
        if a.status != "pending" {
            return Err(VoteError::NotPending(a.status));
        }
        if a.votes.iter().any(|v| v.approver == approver) {
            return Err(VoteError::AlreadyVoted);
        }
        let reason = reason.map(str::trim).filter(|r| !r.is_empty());
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO votes (approval_id, approver, decision, reason, time_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, approver, if approve { "approve" } else { "deny" }, reason, now_ms],
        )?;
        if approve {
            let mut names = a.approvers().iter().map(|s| s.to_string()).collect::<Vec<_>>();
            names.push(approver.to_string());
            if names.len() >= self.min_approvers as usize {
                let mut message = format!("approved by {}", names.join(", "));
                if let Some(r) = reason {
                    message.push_str(&format!(": {r}"));
                }
                tx.execute(
                    "UPDATE approvals SET status = 'approved', decided_ms = ?2, expires_ms = ?2 + grant_window_seconds * 1000,
                       message = ?3 WHERE id = ?1",
                    params![id, now_ms, message],
                )?;
            }
        } else {
            let message = format!("denied by {approver}{}", reason.map(|r| format!(": {r}")).unwrap_or_default());
            tx.execute(
                "UPDATE approvals SET status = 'denied', decided_ms = ?2, closed_ms = ?2, message = ?3 WHERE id = ?1",
                params![id, now_ms, message],
            )?;
        }
        tx.commit()?;
        self.get(id, now_ms)?.ok_or(VoteError::NotFound)
    }

    /// Abandons the pending approval created by `hold_id` (protocol §2).
    /// Returns whether one changed.
    pub fn abandon(&mut self, hold_id: &str, now_ms: i64) -> DbResult<bool> {
        self.expire_due(now_ms)?;
        let n = self.conn.execute(
            "UPDATE approvals SET status = 'abandoned', closed_ms = ?2,
               message = 'the client hung up while the request was held'
             WHERE hold_id = ?1 AND status = 'pending'",
            params![hold_id, now_ms],
        )?;
        Ok(n > 0)
    }
}
