//! `nhi-gate audit` end to end: the real collector on a free loopback port
//! with a temp SQLite file, fed batches like the filter would
//! (docs/audit-record.md); the database then tampered with directly and
//! checked with `audit verify`; `audit query` and `audit replay` on the
//! stored records, `replay --send` against a tiny local HTTP listener.

mod common;

use common::{agent, answer, with, Server as Collector, TempDir, BIN};
use rusqlite::{params, Connection};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;

const ZEROS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// 2025-11-29T15:26:40.123Z
const T0: i64 = 1_764_430_000_123;

impl TempDir {
    fn db(&self) -> PathBuf {
        self.0.join("audit.db")
    }
    fn path_missing(&self) -> PathBuf {
        self.0.join("nope.db")
    }
}

/// The collector under test: `nhi-gate audit serve` ([`Collector::start`]).
impl Collector {
    /// Starts the collector on 127.0.0.1:0 with `db` and `extra` flags.
    fn start(db: &Path, extra: &[&str]) -> Collector {
        let mut cmd = Collector::command("audit", db);
        cmd.args(extra).env_remove("NHI_GATE_AUDIT_TOKEN");
        Collector::spawn("collector", cmd, Collector::log_for(db))
    }

    /// POSTs a raw body to /v1/records.
    fn post_raw(&self, body: &str, bearer: Option<&str>) -> (u16, Value) {
        http("POST", &format!("{}/v1/records", self.url), Some(body), bearer)
    }

    /// POSTs `{"records": records}` and expects `200 {"accepted": n}`.
    fn post(&self, records: &[Value]) {
        let (status, v) = self.post_raw(&json!({ "records": records }).to_string(), None);
        assert_eq!((status, v.clone()), (200, json!({"accepted": records.len()})), "{}", self.log());
    }

    fn healthz(&self) -> Value {
        let (status, v) = http("GET", &format!("{}/healthz", self.url), None, None);
        assert_eq!(status, 200);
        v
    }
}

/// One HTTP exchange; the answer's status and JSON body (Null if not JSON).
fn http(method: &str, url: &str, body: Option<&str>, bearer: Option<&str>) -> (u16, Value) {
    let agent = agent();
    let mut req = ureq::http::Request::builder().method(method).uri(url).header("content-type", "application/json");
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = match body {
        Some(b) => agent.run(req.body(b.as_bytes().to_vec()).unwrap()),
        None => agent.run(req.body(()).unwrap()),
    };
    answer(resp)
}

/// Runs `nhi-gate audit ARGS…`: (exit code, stdout, stderr).
fn audit(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).arg("audit").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn verify(db: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["verify", "--db", db.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (code, out, err) = audit(&args);
    (code, format!("{out}{err}"))
}

fn sha256_hex(data: &[u8]) -> String {
    hmac_sha256::Hash::hash(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// The documented chain hash: SHA-256(prev_hash ‖ seq ‖ record), hex.
fn chain_hash(prev: &str, seq: i64, record: &str) -> String {
    sha256_hex(format!("{prev}{seq}{record}").as_bytes())
}

/// A complete v1 record (every key present, as the filter sends it).
fn record(request_id: &str, time_ms: i64, subject: &str, session: Option<&str>) -> Value {
    let body = "{\"points\":[]}";
    json!({
        "version": 1,
        "time_ms": time_ms,
        "request_id": request_id,
        "node": "gateway-1",
        "identity": {"provider": "dev-idp", "issuer": "http://127.0.0.1:9400", "subject": subject,
                     "jti": "j1", "groups": ["rag-ingest"], "azp": "", "token_sha256": sha256_hex(b"jwt")},
        "session": session,
        "source": "127.0.0.1:53412",
        "resource": "vector-store",
        "operation": "write",
        "method": "PUT",
        "authority": "127.0.0.1:10000",
        "path": "/collections/docs/points",
        "decision": "allow",
        "reason": null,
        "status": 200,
        "approval": null,
        "request_body": {"sha256": sha256_hex(body.as_bytes()), "size": body.len(), "text": body, "truncated": false},
        "response_body": {"size": 16, "text": "{\"result\":\"ok\"}", "truncated": false},
        "masking": {},
        "usage": null,
        "timings_ms": {"auth": 0, "approval_wait": 0, "upstream": 12, "total": 13},
        "aborted": false
    })
}

/// seq, record, prev_hash, hash, subject, session, time_ms.
type StoredRow = (i64, String, String, String, Option<String>, Option<String>, Option<i64>);

/// A request body object for `text` (complete, with its sha256 and size).
fn body(text: &str) -> Value {
    json!({"sha256": sha256_hex(text.as_bytes()), "size": text.len(), "text": text, "truncated": false})
}

/// A chain of `n` records (r1..rn, one second apart) written through the
/// real collector, which is stopped again.
fn chain(n: i64) -> TempDir {
    let dir = TempDir::new();
    let c = Collector::start(&dir.db(), &[]);
    let recs: Vec<Value> = (1..=n).map(|i| record(&format!("r{i}"), T0 + i * 1000, "ci-ingest", None)).collect();
    c.post(&recs[..2]);
    c.post(&recs[2..]);
    drop(c);
    let (code, out) = verify(&dir.db(), &[]);
    assert_eq!(code, 0, "{out}");
    dir
}

fn db(dir: &TempDir) -> Connection {
    Connection::open(dir.db()).unwrap()
}

fn hash_of(conn: &Connection, seq: i64) -> String {
    conn.query_row("SELECT hash FROM records WHERE seq = ?1", [seq], |r| r.get(0)).unwrap()
}

fn head_of(dir: &TempDir) -> String {
    let (code, out) = verify(&dir.db(), &[]);
    assert_eq!(code, 0, "{out}");
    out.trim().rsplit(' ').next().unwrap().to_string()
}

#[test]
fn batches_are_stored_exactly_and_chained() {
    let dir = TempDir::new();
    let c = Collector::start(&dir.db(), &[]);
    assert_eq!(c.healthz(), json!({"status": "ok", "records": 0, "head": ZEROS}));
    // odd spacing and key order must be kept byte for byte
    let odd = r#"{"version":1,  "time_ms": 1764430000999, "z": "last key first", "identity": {"subject": "svc-b"}}"#;
    let batch = format!("{{\"records\": [{}, {odd} ]}}", record("r1", T0, "ci-ingest", Some("run-1")));
    let (status, v) = c.post_raw(&batch, None);
    assert_eq!((status, v), (200, json!({"accepted": 2})), "{}", c.log());
    c.post(&[record("r3", T0 + 5, "ci-ingest", None)]);
    let h = c.healthz();
    assert_eq!(h["records"], 3);

    // the stored rows follow the documented formula
    let conn = db(&dir);
    let mut st = conn.prepare("SELECT seq, record, prev_hash, hash, subject, session, time_ms FROM records ORDER BY seq").unwrap();
    let rows: Vec<StoredRow> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(rows[1].1, odd);
    assert_eq!(serde_json::from_str::<Value>(&rows[0].1).unwrap(), record("r1", T0, "ci-ingest", Some("run-1")));
    let mut prev = ZEROS.to_string();
    for (seq, text, prev_hash, hash, ..) in &rows {
        assert_eq!(prev_hash, &prev);
        assert_eq!(hash, &chain_hash(&prev, *seq, text));
        prev = hash.clone();
    }
    assert_eq!((rows[0].4.as_deref(), rows[0].5.as_deref(), rows[0].6), (Some("ci-ingest"), Some("run-1"), Some(T0)));
    assert_eq!((rows[1].4.as_deref(), rows[1].5.as_deref()), (Some("svc-b"), None));
    assert_eq!(h["head"], prev.as_str());

    let (code, out) = verify(&dir.db(), &[]);
    assert_eq!((code, out.trim().to_string()), (0, format!("ok: 3 records, head {prev}")));
    let (code, out) = verify(&dir.db(), &["--expect-head", &prev, "--expect-count", "3"]);
    assert_eq!(code, 0, "{out}");

    // a restart continues the same chain
    drop(c);
    let c = Collector::start(&dir.db(), &[]);
    c.post(&[record("r4", T0 + 6, "ci-ingest", None)]);
    let (code, out) = verify(&dir.db(), &["--expect-count", "4"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(db(&dir).query_row("SELECT prev_hash FROM records WHERE seq = 4", [], |r| r.get::<_, String>(0)).unwrap(), prev);
}

#[test]
fn bad_batches_are_400_and_store_nothing() {
    let dir = TempDir::new();
    let c = Collector::start(&dir.db(), &[]);
    let many = format!("{{\"records\": [{}]}}", vec!["{}"; 1001].join(","));
    for body in [
        "not json",
        "[]",
        "{}",
        r#"{"records": []}"#,
        r#"{"records": {"a": 1}}"#,
        r#"{"records": [{"ok": 1}, 2]}"#,
        r#"{"records": [{"ok": 1}, null]}"#,
        r#"{"records": "x"}"#,
        many.as_str(),
    ] {
        let (status, v) = c.post_raw(body, None);
        assert_eq!(status, 400, "{body:.80}: {v}");
        assert_eq!(v["error"], "bad_request", "{v}");
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
    }
    let (status, v) = c.post_raw(r#"{"records": [{"ok": 1}, 2]}"#, None);
    assert!(v["detail"].as_str().unwrap().contains("records[1]"), "{status} {v}");
    // exactly 1000 is fine
    let max = format!("{{\"records\": [{}]}}", vec!["{}"; 1000].join(","));
    assert_eq!(c.post_raw(&max, None).0, 200);
    assert_eq!(c.healthz()["records"], 1000);
    assert_eq!(http("PUT", &format!("{}/v1/records", c.url), Some("{}"), None).0, 405);
    assert_eq!(http("GET", &format!("{}/v1/nope", c.url), None, None).0, 404);
    assert_eq!(http("GET", &format!("{}/v1/records?colour=red", c.url), None, None).0, 400);
}

#[test]
fn token_is_required_when_set() {
    let dir = TempDir::new();
    let c = Collector::start(&dir.db(), &["--token", "s3cret"]);
    let batch = json!({"records": [record("r1", T0, "ci-ingest", None)]}).to_string();
    for bearer in [None, Some("wrong"), Some("S3CRET"), Some("s3cret2")] {
        let (status, v) = c.post_raw(&batch, bearer);
        assert_eq!((status, v["error"].as_str()), (401, Some("unauthorized")), "{bearer:?}");
    }
    let (status, _) = http("GET", &format!("{}/v1/records", c.url), None, None);
    assert_eq!(status, 401);
    assert_eq!(c.healthz()["records"], 0);
    assert_eq!(c.post_raw(&batch, Some("s3cret")), (200, json!({"accepted": 1})));
    let (status, v) = http("GET", &format!("{}/v1/records", c.url), None, Some("s3cret"));
    assert_eq!((status, v["records"].as_array().map(Vec::len)), (200, Some(1)));
}

#[test]
fn verify_names_an_edited_record() {
    let dir = chain(5);
    db(&dir).execute("UPDATE records SET record = replace(record, '\"allow\"', '\"deny\"') WHERE seq = 3", []).unwrap();
    let (code, out) = verify(&dir.db(), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("record seq 3 was edited (hash mismatch)"), "{out}");
}

#[test]
fn verify_names_an_edited_hash_and_a_rewritten_tail_needs_the_anchor() {
    let dir = chain(5);
    let head = head_of(&dir);
    let conn = db(&dir);
    // only the hash column
    conn.execute("UPDATE records SET hash = ?1 WHERE seq = 4", [sha256_hex(b"x")]).unwrap();
    let (code, out) = verify(&dir.db(), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("record seq 4 was edited (hash mismatch)"), "{out}");

    // record 2 edited and its hash recomputed: record 3 no longer links to it
    let text = record("r2", T0 + 2000, "ci-ingest", None).to_string().replace("\"status\":200", "\"status\":201");
    let prev = hash_of(&conn, 1);
    conn.execute("UPDATE records SET record = ?1, hash = ?2 WHERE seq = 2", params![text, chain_hash(&prev, 2, &text)]).unwrap();
    let (code, out) = verify(&dir.db(), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("record seq 2 was edited"), "{out}");

    // …and every later row re-chained: the chain holds, only the anchor tells
    let mut prev = hash_of(&conn, 2);
    for seq in 3..=5 {
        let text: String = conn.query_row("SELECT record FROM records WHERE seq = ?1", [seq], |r| r.get(0)).unwrap();
        let h = chain_hash(&prev, seq, &text);
        conn.execute("UPDATE records SET prev_hash = ?1, hash = ?2 WHERE seq = ?3", params![prev, h, seq]).unwrap();
        prev = h;
    }
    let (code, out) = verify(&dir.db(), &[]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = verify(&dir.db(), &["--expect-head", &head]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("--expect-head") && out.contains(&head), "{out}");
}

#[test]
fn verify_names_a_deleted_middle_record() {
    let dir = chain(5);
    db(&dir).execute("DELETE FROM records WHERE seq = 3", []).unwrap();
    let (code, out) = verify(&dir.db(), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("record seq 3 is missing (deleted)"), "{out}");

    // deleted and the rest renumbered: the next row points to a row that is gone
    let dir = chain(5);
    let conn = db(&dir);
    conn.execute("DELETE FROM records WHERE seq = 3", []).unwrap();
    conn.execute("UPDATE records SET seq = seq + 100 WHERE seq > 3", []).unwrap();
    conn.execute("UPDATE records SET seq = seq - 101 WHERE seq > 100", []).unwrap();
    let (code, out) = verify(&dir.db(), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("record seq 3 is missing (deleted)"), "{out}");
}

#[test]
fn verify_names_an_inserted_or_reordered_record() {
    // a forged record slid in at seq 3, linked to seq 2 with a correct hash
    let dir = chain(5);
    let conn = db(&dir);
    conn.execute("UPDATE records SET seq = seq + 100 WHERE seq >= 3", []).unwrap();
    conn.execute("UPDATE records SET seq = seq - 99 WHERE seq > 100", []).unwrap();
    let forged = record("forged", T0 + 2500, "ci-ingest", None).to_string();
    let prev = hash_of(&conn, 2);
    conn.execute(
        "INSERT INTO records (seq, record, prev_hash, hash, time_ms, subject, resource, decision, session, request_id)
         VALUES (3, ?1, ?2, ?3, ?4, 'ci-ingest', 'vector-store', 'allow', NULL, 'forged')",
        params![forged, prev, chain_hash(&prev, 3, &forged), T0 + 2500],
    )
    .unwrap();
    let (code, out) = verify(&dir.db(), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("record seq 3 was inserted or reordered"), "{out}");

    // two rows swapped
    let dir = chain(5);
    let conn = db(&dir);
    conn.execute("UPDATE records SET seq = 100 WHERE seq = 2", []).unwrap();
    conn.execute("UPDATE records SET seq = 2 WHERE seq = 3", []).unwrap();
    conn.execute("UPDATE records SET seq = 3 WHERE seq = 100", []).unwrap();
    let (code, out) = verify(&dir.db(), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("record seq 2 was inserted or reordered (prev_hash does not match seq 1"), "{out}");

    // an extra row appended with a wrong prev_hash
    let dir = chain(3);
    let conn = db(&dir);
    let forged = record("forged", T0 + 9000, "ci-ingest", None).to_string();
    conn.execute(
        "INSERT INTO records (seq, record, prev_hash, hash, time_ms, subject, resource, decision, session, request_id)
         VALUES (4, ?1, ?2, ?3, ?4, 'ci-ingest', 'vector-store', 'allow', NULL, 'forged')",
        params![forged, ZEROS, chain_hash(ZEROS, 4, &forged), T0 + 9000],
    )
    .unwrap();
    let (code, out) = verify(&dir.db(), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("record seq 4 was inserted or reordered (prev_hash does not match seq 3"), "{out}");
}

#[test]
fn a_deleted_last_record_is_caught_by_the_anchor() {
    let dir = chain(5);
    let head = head_of(&dir);
    db(&dir).execute("DELETE FROM records WHERE seq = 5", []).unwrap();
    let (code, out) = verify(&dir.db(), &[]);
    assert_eq!(code, 0, "a plain chain cannot tell: {out}");
    assert!(out.starts_with("ok: 4 records"), "{out}");
    let (code, out) = verify(&dir.db(), &["--expect-count", "5"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("record seq 5 is missing (deleted)"), "{out}");
    let (code, out) = verify(&dir.db(), &["--expect-head", &head]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no record has hash"), "{out}");

    // an older anchor after legitimate appends: told how far it is
    let dir = chain(3);
    let old = head_of(&dir);
    let c = Collector::start(&dir.db(), &[]);
    c.post(&[record("r9", T0 + 9000, "ci-ingest", None)]);
    drop(c);
    let (code, out) = verify(&dir.db(), &["--expect-head", &old]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("that is seq 3, record seq 4 came after it"), "{out}");
    let (code, out) = verify(&dir.db(), &["--expect-count", "3"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("record seq 4 was inserted"), "{out}");
    let (code, out) = verify(&dir.path_missing(), &[]);
    assert_eq!(code, 2, "{out}");
}

/// Records for query and replay tests, posted in one collector.
fn mixed(c: &Collector) {
    let chat_req = json!({"model": "m", "messages": [{"role": "system", "content": "be brief"},
                          {"role": "user", "content": "What is the capital of France?"}]})
    .to_string();
    let chat_resp = json!({"id": "c1", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris, mail [EMAIL]."}}],
                           "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}})
    .to_string();
    let sse_req = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "Count to three"}]}).to_string();
    let sse_resp = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n\
                    data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"one, \"}}]}\n\n\
                    data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"two, three\"}}]}\n\n\
                    data: [DONE]\n\n";
    let chat = |id: &str, t: i64, req: &str, resp: &str| {
        let r = record(id, t, "agent-7", Some("run-1"));
        let r = with(r, "/resource", json!("llm"));
        let r = with(r, "/operation", json!("chat"));
        let r = with(r, "/method", json!("POST"));
        let r = with(r, "/path", json!("/v1/chat/completions"));
        let r = with(r, "/request_body", body(req));
        let r = with(r, "/response_body", json!({"size": resp.len(), "text": resp, "truncated": false}));
        with(r, "/usage", json!({"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42, "estimated": false}))
    };
    // seq order differs from request order: the SSE request (t+2s) finished first
    let sse = chat("q2", T0 + 2000, &sse_req, sse_resp);
    let first = chat("q1", T0, &chat_req, &chat_resp);
    let plain = with(record("q3", T0 + 4000, "agent-7", Some("run-1")), "/path", json!("/collections/docs/points?wait=true,\"x\""));
    let denied = with(
        with(with(record("q4", T0 + 3_600_000, "agent-7", Some("run-2")), "/decision", json!("deny")), "/status", json!(403)),
        "/reason",
        json!("group_not_allowed"),
    );
    let denied = with(denied, "/path", json!("/collections/a,b/points"));
    let other = record("q5", T0 + 1000, "ci-ingest", None);
    // a synchronous-audit request part (status null), then its final record
    let part = with(with(with(chat("q6", T0 + 6000, &chat_req, &chat_resp), "/status", Value::Null), "/response_body", Value::Null), "/usage", Value::Null);
    let part_final = chat("q6", T0 + 6000, &chat_req, &chat_resp);
    c.post(&[sse, first, other]);
    c.post(&[plain, denied, part, part_final]);
}

fn seqs(json_out: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(json_out).unwrap_or_else(|e| panic!("{e}: {json_out}"));
    v.as_array().unwrap().iter().map(|r| r["request_id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn query_filters_and_csv() {
    let dir = TempDir::new();
    let c = Collector::start(&dir.db(), &[]);
    mixed(&c);
    let d = dir.db();
    let dbs = d.to_str().unwrap();
    let q = |extra: &[&str]| {
        let mut args = vec!["query", "--db", dbs];
        args.extend_from_slice(extra);
        let (code, out, err) = audit(&args);
        assert_eq!(code, 0, "{err}");
        out
    };
    assert_eq!(seqs(&q(&[])), ["q2", "q1", "q5", "q3", "q4", "q6", "q6"]);
    assert_eq!(seqs(&q(&["--subject", "ci-ingest"])), ["q5"]);
    assert_eq!(seqs(&q(&["--session", "run-1", "--resource", "llm"])), ["q2", "q1", "q6", "q6"]);
    assert_eq!(seqs(&q(&["--decision", "deny"])), ["q4"]);
    assert_eq!(seqs(&q(&["--resource", "nope"])), Vec::<String>::new());
    // since inclusive, until exclusive; RFC 3339 (any offset) or ms
    assert_eq!(seqs(&q(&["--since", "2025-11-29T15:26:41.123Z", "--until", &(T0 + 4000).to_string()])), ["q2", "q5"]);
    assert_eq!(seqs(&q(&["--since", "2025-11-29T17:26:44.123+02:00"])), ["q3", "q4", "q6", "q6"]);
    let (code, _, err) = audit(&["query", "--db", dbs, "--since", "yesterday"]);
    assert_ne!(code, 0);
    assert!(err.contains("RFC 3339"), "{err}");
    // the same filters over HTTP
    let (status, v) = http("GET", &format!("{}/v1/records?subject=agent-7&decision=deny", c.url), None, None);
    assert_eq!(status, 200);
    assert_eq!(v["records"].as_array().unwrap().len(), 1);
    assert_eq!(v["records"][0]["request_id"], "q4");
    let (_, v) = http("GET", &format!("{}/v1/records?since=2025-11-29T17:26:44.123%2B02:00&session=run-1", c.url), None, None);
    let ids: Vec<&str> = v["records"].as_array().unwrap().iter().map(|r| r["request_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["q3", "q6", "q6"]);

    let csv = q(&["--format", "csv", "--session", "run-1"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "seq,time,request_id,subject,resource,operation,method,path,decision,reason,status,approval_id,prompt_tokens,completion_tokens,total_tokens,estimated"
    );
    assert_eq!(lines[1], "1,2025-11-29T15:26:42.123Z,q2,agent-7,llm,chat,POST,/v1/chat/completions,allow,,200,,12,30,42,false");
    assert_eq!(
        lines[3],
        "4,2025-11-29T15:26:44.123Z,q3,agent-7,vector-store,write,PUT,\"/collections/docs/points?wait=true,\"\"x\"\"\",allow,,200,,,,,"
    );
    assert_eq!(lines[4], "6,2025-11-29T15:26:46.123Z,q6,agent-7,llm,chat,POST,/v1/chat/completions,allow,,,,,,,");
    assert_eq!(lines.len(), 6);
    let denied = q(&["--format", "csv", "--decision", "deny"]);
    assert_eq!(
        denied.lines().nth(1).unwrap(),
        "5,2025-11-29T16:26:40.123Z,q4,agent-7,vector-store,write,PUT,\"/collections/a,b/points\",deny,group_not_allowed,403,,,,,",
        "{denied}"
    );
}

#[test]
fn replay_prints_a_session_in_request_order() {
    let dir = TempDir::new();
    let c = Collector::start(&dir.db(), &[]);
    mixed(&c);
    let (code, out, err) = audit(&["replay", "--db", dir.db().to_str().unwrap(), "--session", "run-1"]);
    assert_eq!(code, 0, "{err}");
    let expect = "\
== session run-1: 4 request(s), 2025-11-29T15:26:40.123Z .. 2025-11-29T15:26:46.123Z

[1] 2025-11-29T15:26:40.123Z POST /v1/chat/completions -> allow 200 (seq 2)
> What is the capital of France?
< Paris, mail [EMAIL].

[2] 2025-11-29T15:26:42.123Z POST /v1/chat/completions -> allow 200 (seq 1)
> Count to three
< one, two, three

[3] 2025-11-29T15:26:44.123Z PUT /collections/docs/points?wait=true,\"x\" -> allow 200 (seq 4)
> {\"points\":[]}
< {\"result\":\"ok\"}

[4] 2025-11-29T15:26:46.123Z POST /v1/chat/completions -> allow 200 (seq 7)
> What is the capital of France?
< Paris, mail [EMAIL].

";
    assert_eq!(out, expect);
    let (code, _, err) = audit(&["replay", "--db", dir.db().to_str().unwrap(), "--session", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no records for session nope"), "{err}");
}

#[test]
fn replay_by_subject_splits_runs_at_gaps() {
    let dir = TempDir::new();
    let c = Collector::start(&dir.db(), &[]);
    mixed(&c);
    let dbs = dir.db();
    let (code, out, err) = audit(&["replay", "--db", dbs.to_str().unwrap(), "--subject", "agent-7"]);
    assert_eq!(code, 0, "{err}");
    let heads: Vec<&str> = out.lines().filter(|l| l.starts_with("== ")).collect();
    assert_eq!(
        heads,
        [
            "== subject agent-7, run 1 of 2: 4 request(s), 2025-11-29T15:26:40.123Z .. 2025-11-29T15:26:46.123Z",
            "== subject agent-7, run 2 of 2: 1 request(s), 2025-11-29T16:26:40.123Z .. 2025-11-29T16:26:40.123Z",
        ]
    );
    assert!(out.contains("-> deny 403 group_not_allowed (seq 5)"), "{out}");
    let (_, out, _) = audit(&["replay", "--db", dbs.to_str().unwrap(), "--subject", "agent-7", "--gap-seconds", "1"]);
    assert_eq!(out.lines().filter(|l| l.starts_with("== ")).count(), 5, "{out}");
    let (_, out, _) = audit(&["replay", "--db", dbs.to_str().unwrap(), "--subject", "agent-7", "--since", "2025-11-29T16:00:00Z"]);
    assert_eq!(out.lines().filter(|l| l.starts_with("[")).count(), 1, "{out}");
    let (code, _, _) = audit(&["replay", "--db", dbs.to_str().unwrap()]);
    assert_eq!(code, 2, "--session or --subject is required");
}

/// One request as the tiny listener saw it.
#[derive(Debug)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A loopback HTTP/1.1 listener answering every request `201 {}` and
/// reporting it; (base URL, receiver).
fn listener() -> (String, mpsc::Receiver<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(stream) = stream else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
                    let mut headers = Vec::new();
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap();
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        let (n, v) = h.split_once(':').unwrap();
                        headers.push((n.trim().to_string(), v.trim().to_string()));
                    }
                    let len: usize = headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                        .map(|(_, v)| v.parse().unwrap())
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    tx.send(Seen { method, path, headers, body }).unwrap();
                    let mut w = stream.try_clone().unwrap();
                    w.write_all(b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}").unwrap();
                }
            });
        }
    });
    (url, rx)
}

#[test]
fn replay_send_reissues_exactly_the_recorded_requests() {
    let dir = TempDir::new();
    let c = Collector::start(&dir.db(), &[]);
    let chat_req = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let s = |id: &str, t: i64| record(id, T0 + t, "agent-7", Some("stage-1"));
    let chat = with(with(with(s("a", 0), "/method", json!("POST")), "/path", json!("/v1/chat/completions")), "/request_body", body(&chat_req));
    let get = with(with(with(s("b", 1000), "/method", json!("GET")), "/path", json!("/collections/docs?limit=2")), "/request_body", Value::Null);
    let text = with(with(s("c", 2000), "/method", json!("POST")), "/request_body", body("plain text, not json"));
    let truncated = with(s("d", 3000), "/request_body", json!({"sha256": sha256_hex(b"x"), "size": 99999, "text": "{\"poi", "truncated": true}));
    let lossy = with(s("e", 4000), "/request_body", json!({"sha256": sha256_hex(b"\xff"), "size": 1, "text": "\u{fffd}", "truncated": false}));
    c.post(&[chat, get, text, truncated, lossy]);

    let (url, rx) = listener();
    let (code, out, err) = audit(&[
        "replay",
        "--db",
        dir.db().to_str().unwrap(),
        "--session",
        "stage-1",
        "--send",
        &format!("{url}/"),
        "--header",
        "x-staging-token: stage-secret",
        "--header",
        "x-replay:1",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let seen: Vec<Seen> = rx.try_iter().collect();
    assert_eq!(seen.len(), 3, "{seen:?}\n{out}");
    assert_eq!((seen[0].method.as_str(), seen[0].path.as_str()), ("POST", "/v1/chat/completions"));
    assert_eq!(seen[0].body, chat_req.as_bytes());
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
    assert_eq!((seen[1].method.as_str(), seen[1].path.as_str(), seen[1].body.len()), ("GET", "/collections/docs?limit=2", 0));
    assert_eq!((seen[2].method.as_str(), seen[2].path.as_str()), ("POST", "/collections/docs/points"));
    assert_eq!(seen[2].body, b"plain text, not json");
    assert_eq!(seen[2].header("content-type"), None);
    for s in &seen {
        assert_eq!(s.header("x-staging-token"), Some("stage-secret"), "{s:?}");
        assert_eq!(s.header("x-replay"), Some("1"), "{s:?}");
        assert_eq!(s.header("authorization"), None);
    }
    let heads: Vec<&str> = out.lines().filter(|l| l.starts_with('[')).collect();
    assert!(heads[0].ends_with("-> allow 200 (seq 1) | staging 201"), "{out}");
    assert!(heads[3].ends_with("| staging skipped (request body truncated in the record)"), "{out}");
    assert!(heads[4].contains("| staging skipped (recorded body text is not the exact body"), "{out}");
    assert!(err.contains("seq 4 not sent"), "{err}");
    assert!(out.contains("> {\"poi [truncated]"), "{out}");

    // nothing listening: a failed send is exit 1
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let (code, out, _) = audit(&["replay", "--db", dir.db().to_str().unwrap(), "--session", "stage-1", "--send", &dead_url]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("| staging failed ("), "{out}");
}
