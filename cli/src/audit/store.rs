//! Append-only SQLite store of audit records, chained by SHA-256
//! (docs/audit-record.md, "The reference collector").
//!
//! One table, `records`:
//! - `seq` INTEGER PRIMARY KEY — 1, 2, … in arrival order;
//! - `record` TEXT — the record's JSON text exactly as it appeared in the
//!   batch (always starts with `{`);
//! - `prev_hash` TEXT — `hash` of row `seq − 1`, 64 `0`s for seq 1;
//! - `hash` TEXT — lowercase hex `SHA-256(prev_hash ‖ seq ‖ record)`: the
//!   64 hex characters of `prev_hash`, `seq` in decimal ASCII and the record
//!   text's UTF-8 bytes, concatenated without separators;
//! - `time_ms`, `subject` (`identity.subject`), `resource`, `decision`,
//!   `session`, `request_id` — copies of record fields for queries, indexed.
//!   [`Store::verify`] checks them against the record too.
//!
//! A batch is appended in one `BEGIN IMMEDIATE` transaction, written through
//! (WAL, `synchronous=FULL`) before it is acknowledged.

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, ToSql};
use serde_json::Value;
use std::path::Path;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
  seq INTEGER PRIMARY KEY,
  record TEXT NOT NULL,
  prev_hash TEXT NOT NULL,
  hash TEXT NOT NULL,
  time_ms INTEGER,
  subject TEXT,
  resource TEXT,
  decision TEXT,
  session TEXT,
  request_id TEXT
);
CREATE INDEX IF NOT EXISTS records_time ON records(time_ms);
CREATE INDEX IF NOT EXISTS records_subject ON records(subject, time_ms);
CREATE INDEX IF NOT EXISTS records_session ON records(session);
CREATE INDEX IF NOT EXISTS records_resource ON records(resource);
CREATE INDEX IF NOT EXISTS records_decision ON records(decision);
CREATE INDEX IF NOT EXISTS records_request_id ON records(request_id);
PRAGMA user_version = 1;
";

/// `prev_hash` of the first record: 64 `0`s.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&hmac_sha256::Hash::hash(data))
}

/// Lowercase hex SHA-256 of `prev_hash ‖ seq (decimal) ‖ record`.
pub fn chain_hash(prev_hash: &str, seq: i64, record: &str) -> String {
    let mut h = hmac_sha256::Hash::new();
    h.update(prev_hash.as_bytes());
    h.update(seq.to_string().as_bytes());
    h.update(record.as_bytes());
    hex(&h.finalize())
}

/// The indexed copies of a record's fields, in column order
/// (`time_ms`, `subject`, `resource`, `decision`, `session`, `request_id`).
#[derive(Debug, PartialEq)]
pub struct Columns {
    pub time_ms: Option<i64>,
    pub subject: Option<String>,
    pub resource: Option<String>,
    pub decision: Option<String>,
    pub session: Option<String>,
    pub request_id: Option<String>,
}

/// A field as an indexed string: strings as they are, `null`/absent as
/// `None`, anything else as its compact JSON text.
fn col(v: Option<&Value>) -> Option<String> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    }
}

impl Columns {
    /// Extracts the indexed fields from a parsed record.
    pub fn of(r: &Value) -> Columns {
        Columns {
            time_ms: r.get("time_ms").and_then(Value::as_i64),
            subject: col(r.pointer("/identity/subject")),
            resource: col(r.get("resource")),
            decision: col(r.get("decision")),
            session: col(r.get("session")),
            request_id: col(r.get("request_id")),
        }
    }
}

/// One stored row.
#[derive(Debug, Clone)]
pub struct Row {
    pub seq: i64,
    /// The record text as stored.
    pub record: String,
}

/// Which records to select; `None` fields do not filter. Times are ms since
/// the Unix epoch, `since` inclusive and `until` exclusive.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub subject: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub resource: Option<String>,
    pub decision: Option<String>,
    pub session: Option<String>,
}

/// The first place where the chain does not hold, or an anchor mismatch.
/// `Display` is the one-line message `audit verify` prints.
#[derive(Debug, PartialEq)]
pub enum Break {
    /// The row's text, hash or indexed columns were changed.
    Edited { seq: i64, why: String },
    /// A row is gone (a gap in `seq`, or a `prev_hash` naming a row that is not there).
    Missing { seq: i64, why: String },
    /// A row that does not belong in the chain at this place.
    Inserted { seq: i64, why: String },
    /// `--expect-head` / `--expect-count` do not match the chain.
    Anchor(String),
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Break::Edited { seq, why } => write!(f, "record seq {seq} was edited ({why})"),
            Break::Missing { seq, why } => write!(f, "record seq {seq} is missing (deleted): {why}"),
            Break::Inserted { seq, why } => write!(f, "record seq {seq} was inserted or reordered ({why})"),
            Break::Anchor(why) => f.write_str(why),
        }
    }
}

/// The append-only record store.
pub struct Store {
    conn: Connection,
}

type DbResult<T> = rusqlite::Result<T>;

impl Store {
    /// Opens (creating if needed) the database the collector writes.
    pub fn open(path: &Path) -> DbResult<Store> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let _mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn })
    }

    /// Opens an existing database for `verify`, `query` and `replay`
    /// (never creates one; fails if it has no `records` table).
    pub fn open_existing(path: &Path) -> Result<Store, String> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| e.to_string())?;
        let has: Option<String> = conn
            .query_row("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'records'", [], |r| r.get(0))
            .optional()
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if has.is_none() {
            return Err(format!("{} is not an audit database (no records table)", path.display()));
        }
        Ok(Store { conn })
    }

    /// Number of records and the chain head (`hash` of the last row, or
    /// [`GENESIS`] when empty).
    pub fn head(&self) -> DbResult<(i64, String)> {
        let last: Option<(i64, String)> = self
            .conn
            .query_row("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(last.unwrap_or((0, GENESIS.to_string())))
    }

    /// The seq of the first row whose stored hash is `hash` (any case), if any.
    pub fn seq_of_hash(&self, hash: &str) -> DbResult<Option<i64>> {
        self.conn
            .query_row("SELECT seq FROM records WHERE hash = ?1 ORDER BY seq LIMIT 1", [hash.to_ascii_lowercase()], |r| r.get(0))
            .optional()
    }

    /// Appends records (JSON object texts, each with its parsed value) in
    /// one transaction, chained after the current last row. Returns the
    /// first and last `seq` written.
    pub fn append(&mut self, records: &[(&str, Value)]) -> DbResult<(i64, i64)> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let (mut seq, mut prev) = {
            let last: Option<(i64, String)> = tx
                .query_row("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            last.unwrap_or((0, GENESIS.to_string()))
        };
        let first = seq + 1;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO records (seq, record, prev_hash, hash, time_ms, subject, resource, decision, session, request_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for (text, value) in records {
                seq += 1;
                let hash = chain_hash(&prev, seq, text);
                let c = Columns::of(value);
                ins.execute(params![
                    seq, text, prev, hash, c.time_ms, c.subject, c.resource, c.decision, c.session, c.request_id
                ])?;
                prev = hash;
            }
        }
        tx.commit()?;
        Ok((first, seq))
    }

    /// Rows matching `f`, ordered by `seq`.
    pub fn select(&self, f: &Filter) -> DbResult<Vec<Row>> {
        let mut sql = String::from("SELECT seq, record FROM records WHERE 1 = 1");
        let mut args: Vec<&dyn ToSql> = Vec::new();
        for (column, value) in [
            ("subject", &f.subject),
            ("resource", &f.resource),
            ("decision", &f.decision),
            ("session", &f.session),
        ] {
            if let Some(v) = value {
                args.push(v);
                sql.push_str(&format!(" AND {column} = ?{}", args.len()));
            }
        }
        if let Some(t) = &f.since {
            args.push(t);
            sql.push_str(&format!(" AND time_ms >= ?{}", args.len()));
        }
        if let Some(t) = &f.until {
            args.push(t);
            sql.push_str(&format!(" AND time_ms < ?{}", args.len()));
        }
        sql.push_str(" ORDER BY seq");
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(args.as_slice(), |r| Ok(Row { seq: r.get(0)?, record: r.get(1)? }))?;
        rows.collect()
    }

    /// Recomputes the chain from seq 1 and returns the record count and head,
    /// or the first break. Runs in one read transaction (a consistent
    /// snapshot while the collector keeps appending).
    ///
    /// Checks, row by row in `seq` order: no gap in `seq` (else the next
    /// expected seq is *missing*); `prev_hash` equals the previous row's
    /// `hash` (else: it names an earlier row → the rows after that one were
    /// *inserted*; a later row → *reordered*; no row → the predecessor was
    /// *edited* and re-hashed when this row's own hash still holds, else a row
    /// before it is *missing*); the stored hash equals the recomputed one and
    /// the indexed columns match the record (else *edited*).
    pub fn verify(&mut self) -> Result<(i64, String), VerifyError> {
        let tx = self.conn.transaction().map_err(VerifyError::db)?;
        let result = verify_rows(&tx);
        drop(tx);
        result
    }
}

/// Why `verify` failed: the chain is broken, or the database could not be read.
#[derive(Debug)]
pub enum VerifyError {
    Broken(Break),
    Db(String),
}

impl VerifyError {
    fn db(e: rusqlite::Error) -> VerifyError {
        VerifyError::Db(e.to_string())
    }
}

/// The seq of the row whose stored hash is `hash`, if any.
fn seq_of_hash(conn: &Connection, hash: &str) -> Result<Option<i64>, VerifyError> {
    conn.query_row("SELECT seq FROM records WHERE hash = ?1 ORDER BY seq LIMIT 1", [hash], |r| r.get(0))
        .optional()
        .map_err(VerifyError::db)
}

/// The first row after `after` whose `prev_hash` is `hash`, if any.
fn later_link(conn: &Connection, hash: &str, after: i64) -> Result<Option<i64>, VerifyError> {
    conn.query_row(
        "SELECT seq FROM records WHERE prev_hash = ?1 AND seq > ?2 ORDER BY seq LIMIT 1",
        params![hash, after],
        |r| r.get(0),
    )
    .optional()
    .map_err(VerifyError::db)
}

/// "seq a does" or "seq a..b do".
fn range(a: i64, b: i64) -> String {
    if a == b {
        format!("seq {a} does")
    } else {
        format!("seq {a}..{b} do")
    }
}

fn verify_rows(conn: &Connection) -> Result<(i64, String), VerifyError> {
    let mut st = conn
        .prepare("SELECT seq, record, prev_hash, hash, time_ms, subject, resource, decision, session, request_id FROM records ORDER BY seq")
        .map_err(VerifyError::db)?;
    let mut rows = st.query([]).map_err(VerifyError::db)?;
    let broken = |b: Break| Err(VerifyError::Broken(b));
    let (mut prev_seq, mut prev_hash) = (0i64, GENESIS.to_string());
    while let Some(r) = rows.next().map_err(VerifyError::db)? {
        let seq: i64 = r.get(0).map_err(VerifyError::db)?;
        let (record, stored_prev, stored_hash): (String, String, String) = match (r.get(1), r.get(2), r.get(3)) {
            (Ok(a), Ok(b), Ok(c)) => (a, b, c),
            _ => return broken(Break::Edited { seq, why: "a column is not text".into() }),
        };
        let expected = prev_seq + 1;
        if seq > expected {
            let why = if seq == expected + 1 {
                format!("seq goes from {prev_seq} to {seq}")
            } else {
                format!("seq goes from {prev_seq} to {seq}: {expected}..{} are missing", seq - 1)
            };
            return broken(Break::Missing { seq: expected, why });
        }
        if seq < expected {
            return broken(Break::Inserted { seq, why: "seq must start at 1".into() });
        }
        let recomputed = chain_hash(&stored_prev, seq, &record);
        if stored_prev != prev_hash {
            let prev_name = if prev_seq == 0 { "the genesis value (64 zeros)".to_string() } else { format!("seq {prev_seq}") };
            let mismatch = format!("prev_hash does not match {prev_name}");
            if stored_prev == GENESIS {
                return broken(Break::Inserted { seq, why: format!("{mismatch}: it claims to be the first record") });
            }
            return broken(match seq_of_hash(conn, &stored_prev)? {
                Some(t) if t < prev_seq => Break::Inserted {
                    seq: t + 1,
                    why: format!("seq {seq}'s prev_hash is the hash of seq {t}: {} not belong there", range(t + 1, prev_seq)),
                },
                Some(t) => Break::Inserted { seq, why: format!("{mismatch}; it points to seq {t}") },
                None => match later_link(conn, &prev_hash, seq)? {
                    Some(k) => Break::Inserted { seq, why: format!("{mismatch}; seq {k} is the one chained to {prev_name}") },
                    None if recomputed == stored_hash && prev_seq > 0 => Break::Edited {
                        seq: prev_seq,
                        why: format!("its hash was recomputed: seq {seq}'s prev_hash does not match it; or seq {seq} is forged"),
                    },
                    None if recomputed == stored_hash => Break::Inserted { seq, why: mismatch },
                    None => Break::Missing { seq, why: "prev_hash points to a row that is not there".into() },
                },
            });
        }
        if recomputed != stored_hash {
            return broken(Break::Edited { seq, why: "hash mismatch".into() });
        }
        // a column of the wrong SQLite type (text in time_ms, a blob in
        // subject) is an edit too, not a NULL
        let stored = (|| -> rusqlite::Result<Columns> {
            Ok(Columns { time_ms: r.get(4)?, subject: r.get(5)?, resource: r.get(6)?, decision: r.get(7)?, session: r.get(8)?, request_id: r.get(9)? })
        })();
        let derived = serde_json::from_str::<Value>(&record).map(|v| Columns::of(&v));
        if stored.is_err() || derived.ok() != stored.ok() {
            return broken(Break::Edited { seq, why: "indexed columns do not match the record".into() });
        }
        prev_seq = seq;
        prev_hash = stored_hash;
    }
    Ok((prev_seq, prev_hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("nhi-gate-audit-unit-{}-{name}.db", std::process::id()));
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", p.display()));
        }
        p
    }

    fn rec(i: i64) -> (String, Value) {
        let v = serde_json::json!({"time_ms": 1000 + i, "request_id": format!("r{i}"), "identity": {"subject": "s"},
                                   "resource": "llm", "decision": "allow", "session": null});
        (v.to_string(), v)
    }

    fn store_with(name: &str, n: i64) -> (Store, std::path::PathBuf) {
        let p = temp_db(name);
        let mut s = Store::open(&p).unwrap();
        let recs: Vec<(String, Value)> = (1..=n).map(rec).collect();
        let refs: Vec<(&str, Value)> = recs.iter().map(|(t, v)| (t.as_str(), v.clone())).collect();
        assert_eq!(s.append(&refs).unwrap(), (1, n));
        (s, p)
    }

    fn broken(s: &mut Store) -> Break {
        match s.verify() {
            Err(VerifyError::Broken(b)) => b,
            other => panic!("expected a break, got {other:?}"),
        }
    }

    #[test]
    fn hash_is_sha256_of_prev_seq_record() {
        // printf '%s1{}' 000…0 | sha256sum
        let h = chain_hash(GENESIS, 1, "{}");
        let mut input = GENESIS.to_string();
        input.push_str("1{}");
        assert_eq!(h, sha256_hex(input.as_bytes()));
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(h.len(), 64);
    }

    #[test]
    fn chain_verifies_and_appends_continue_it() {
        let (mut s, p) = store_with("ok", 3);
        let (n, head) = s.verify().unwrap();
        assert_eq!(n, 3);
        assert_eq!(s.head().unwrap(), (3, head.clone()));
        let (t, v) = rec(4);
        assert_eq!(s.append(&[(t.as_str(), v)]).unwrap(), (4, 4));
        assert_eq!(s.verify().unwrap().0, 4);
        drop(s);
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn names_edits_gaps_and_insertions() {
        let (mut s, p) = store_with("breaks", 5);
        s.conn.execute("UPDATE records SET record = replace(record, 'r3', 'rX') WHERE seq = 3", []).unwrap();
        assert!(matches!(broken(&mut s), Break::Edited { seq: 3, .. }));
        drop(s);

        let (mut s, _) = store_with("breaks", 5);
        s.conn.execute("UPDATE records SET subject = 'other' WHERE seq = 2", []).unwrap();
        assert!(matches!(broken(&mut s), Break::Edited { seq: 2, .. }));
        drop(s);

        let (mut s, _) = store_with("breaks", 5);
        s.conn.execute("DELETE FROM records WHERE seq = 3", []).unwrap();
        assert!(matches!(broken(&mut s), Break::Missing { seq: 3, .. }));
        drop(s);

        // Edited and re-hashed: the next row's prev_hash gives it away.
        let (mut s, _) = store_with("breaks", 5);
        let prev: String = s.conn.query_row("SELECT prev_hash FROM records WHERE seq = 2", [], |r| r.get(0)).unwrap();
        let mut v = rec(2).1;
        v["note"] = Value::from("forged");
        let text = v.to_string();
        let text = text.as_str();
        s.conn
            .execute("UPDATE records SET record = ?1, hash = ?2 WHERE seq = 2", params![text, chain_hash(&prev, 2, text)])
            .unwrap();
        assert!(matches!(broken(&mut s), Break::Edited { seq: 2, .. }), "{}", broken(&mut s));
        drop(s);

        // A row slid in with a made-up prev_hash: the original next row still chains to seq 2.
        let (mut s, _) = store_with("breaks", 5);
        s.conn.execute("UPDATE records SET seq = seq + 100 WHERE seq >= 3", []).unwrap();
        s.conn.execute("UPDATE records SET seq = seq - 99 WHERE seq > 100", []).unwrap();
        let (text, v) = rec(9);
        let c = Columns::of(&v);
        let fake_prev = sha256_hex(b"made up");
        s.conn
            .execute(
                "INSERT INTO records (seq, record, prev_hash, hash, time_ms, subject, resource, decision, session, request_id)
                 VALUES (3, ?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8)",
                params![text, fake_prev, chain_hash(&fake_prev, 3, &text), c.time_ms, c.subject, c.resource, c.decision, c.request_id],
            )
            .unwrap();
        let b = broken(&mut s);
        assert!(matches!(&b, Break::Inserted { seq: 3, why } if why.contains("seq 4 is the one chained to seq 2")), "{b}");
        drop(s);
        let _ = std::fs::remove_file(p);
    }
}
