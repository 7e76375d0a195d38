//! `nhi-gate approvals serve` end to end: the real binary on a free loopback
//! port with a temp SQLite file, driven over HTTP like the filter, a job and
//! approvers would (docs/approval-protocol.md), plus the approver commands.

mod common;

use common::{agent, answer, with, Server as Service, TempDir, BIN};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Approvers of every test service: name → token. `ci-ingest` is also the
/// subject of the test requests (self-approval).
const APPROVERS: [&str; 3] = ["alice=tok-alice", "bob=tok-bob", "ci-ingest=tok-ci"];
const ALICE: &str = "tok-alice";
const BOB: &str = "tok-bob";
const SELF: &str = "tok-ci";

impl TempDir {
    fn db(&self) -> PathBuf {
        self.0.join("approvals.db")
    }
}

/// The service under test: `nhi-gate approvals serve` ([`Service::start`]).
impl Service {
    /// Starts the service on 127.0.0.1:0 with `db`, the three test approvers and `extra` flags.
    fn start(db: &Path, extra: &[&str]) -> Service {
        let mut cmd = Service::command("approvals", db);
        for a in APPROVERS {
            cmd.args(["--approver", a]);
        }
        cmd.args(extra).env_remove("NHI_GATE_APPROVERS").env_remove("NHI_GATE_APPROVAL_SECRET");
        Service::spawn("service", cmd, Service::log_for(db))
    }

    /// POST /v1/check with `body` (optionally with a bearer secret).
    fn check_with(&self, body: &Value, secret: Option<&str>) -> (u16, Value) {
        http("POST", &format!("{}/v1/check", self.url), Some(body), secret)
    }

    fn check(&self, body: &Value) -> Value {
        let (status, v) = self.check_with(body, None);
        assert_eq!(status, 200, "callout answer {v}\n{}", self.log());
        v
    }

    fn abandon(&self, hold_id: &str) -> (u16, Value) {
        http("POST", &format!("{}/v1/check/abandon", self.url), Some(&json!({"hold_id": hold_id})), None)
    }

    fn vote(&self, token: &str, id: &str, action: &str, reason: Option<&str>) -> (u16, Value) {
        let url = format!("{}/v1/approvals/{id}/{action}", self.url);
        http("POST", &url, Some(&json!({"reason": reason})), Some(token))
    }

    fn approve(&self, token: &str, id: &str) -> Value {
        let (status, v) = self.vote(token, id, "approve", None);
        assert_eq!(status, 200, "approve: {v}");
        v
    }

    fn status(&self, id: &str) -> Value {
        let (status, v) = http("GET", &format!("{}/v1/approvals/{id}", self.url), None, None);
        assert_eq!(status, 200, "status: {v}");
        v
    }

    fn pending_ids(&self) -> Vec<String> {
        let (status, v) = http("GET", &format!("{}/v1/approvals?status=pending", self.url), None, Some(BOB));
        assert_eq!(status, 200, "list: {v}");
        v["approvals"].as_array().unwrap().iter().map(|a| a["approval_id"].as_str().unwrap().to_string()).collect()
    }

    /// Creates a pending approval with an immediate answer; returns its id.
    fn new_pending(&self, hold: &str) -> String {
        let v = self.check(&callout(hold, None, 0));
        assert_eq!(v["status"], "pending", "{v}");
        v["approval_id"].as_str().unwrap().to_string()
    }
}

/// One HTTP exchange; the answer's status and JSON body (Null if not JSON).
fn http(method: &str, url: &str, body: Option<&Value>, bearer: Option<&str>) -> (u16, Value) {
    let agent = agent();
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let resp = if method == "POST" {
        let mut r = agent.post(url).header("content-type", "application/json");
        if let Some(a) = &auth {
            r = r.header("authorization", a);
        }
        r.send(body.map(Value::to_string).unwrap_or_default())
    } else {
        let mut r = agent.get(url);
        if let Some(a) = &auth {
            r = r.header("authorization", a);
        }
        r.call()
    };
    answer(resp)
}

const SHA_A: &str = "ebaa7b33eb9e11c6693b0835eca01e254b1398f5b093a5c2316f05fa1cca223b";
const SHA_B: &str = "0000000000000000000000000000000000000000000000000000000000000001";

/// A callout body as the filter sends it, for hold `hold` (padded to 32 hex).
fn callout(hold: &str, approval_id: Option<&str>, wait_ms: u64) -> Value {
    json!({
        "version": 1,
        "hold_id": format!("{hold:0>32}"),
        "request_id": format!("req-{hold}"),
        "approval_id": approval_id,
        "wait_ms": wait_ms,
        "time_ms": 1764430000123u64,
        "identity": {"provider": "dev-idp", "issuer": "http://127.0.0.1:9400", "subject": "ci-ingest",
                     "groups": ["rag-ingest"], "jti": "j1"},
        "resource": "vector-store",
        "operation": "write",
        "method": "PUT",
        "authority": "127.0.0.1:10000",
        "path": "/collections/docs/points",
        "body": {"sha256": SHA_A, "size": 13, "preview": "{\"points\":[]}", "truncated": false},
        "source": "127.0.0.1:53412",
        "grant": {"uses": 1, "window_seconds": 900},
        "some_future_field": {"ignored": true},
    })
}

fn assert_denied(v: &Value, reason: &str) {
    assert_eq!(v["status"], "denied", "{v}");
    assert_eq!(v["reason"], reason, "{v}");
}

/// Waits until the service lists `n` pending approvals; returns their ids.
fn wait_pending(s: &Service, n: usize) -> Vec<String> {
    let t = Instant::now();
    loop {
        let ids = s.pending_ids();
        if ids.len() >= n {
            return ids;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "no pending approval appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn new_request_is_pending_after_the_wait_and_idempotent_by_hold() {
    let dir = TempDir::new();
    let s = Service::start(&dir.db(), &[]);
    let t = Instant::now();
    let v = s.check(&callout("a1", None, 2000));
    let took = t.elapsed();
    assert_eq!(v["status"], "pending", "{v}");
    // held until a little before wait_ms (2000 − 500), never past it
    assert!(took >= Duration::from_millis(1450) && took < Duration::from_millis(2000), "answered after {took:?}");
    let id = v["approval_id"].as_str().unwrap();
    assert!(id.starts_with("apr_") && id.len() == 36, "{id}");
    assert_eq!(v["status_url"], format!("{}/v1/approvals/{id}", s.url));
    assert!(v["retry_after"].as_u64().unwrap() > 0);
    let st = s.status(id);
    assert_eq!(st["status"], "pending");
    assert!(st["expires_at_ms"].as_i64().unwrap() > 0);
    // the same hold again is the same approval, not a second one
    let again = s.check(&callout("a1", None, 0));
    assert_eq!(again["approval_id"], id);
    assert_eq!(s.pending_ids(), vec![id.to_string()]);
    // everything the callout sent is kept
    let (_, d) = http("GET", &format!("{}/v1/approvals/{id}/detail", s.url), None, Some(ALICE));
    assert_eq!(d["identity"]["groups"], json!(["rag-ingest"]));
    assert_eq!(d["identity"]["issuer"], "http://127.0.0.1:9400");
    assert_eq!(d["body"]["sha256"], SHA_A);
    assert_eq!(d["body"]["preview"], "{\"points\":[]}");
    assert_eq!((d["resource"].as_str(), d["operation"].as_str(), d["method"].as_str()), (Some("vector-store"), Some("write"), Some("PUT")));
    assert_eq!((d["authority"].as_str(), d["path"].as_str()), (Some("127.0.0.1:10000"), Some("/collections/docs/points")));
    assert_eq!((d["source"].as_str(), d["request_id"].as_str()), (Some("127.0.0.1:53412"), Some("req-a1")));
    assert_eq!(d["grant"], json!({"uses": 1, "window_seconds": 900}));
}

#[test]
fn approval_during_long_poll_releases_it_and_consumes_the_inline_use() {
    let dir = TempDir::new();
    let s = Service::start(&dir.db(), &[]);
    let url = s.url.clone();
    let t = Instant::now();
    let poll = std::thread::spawn(move || http("POST", &format!("{url}/v1/check"), Some(&callout("b1", None, 20_000)), None));
    let id = wait_pending(&s, 1).remove(0);
    // a redeem of the still-pending approval long-polls too
    let url = s.url.clone();
    let rid = id.clone();
    let redeem = std::thread::spawn(move || http("POST", &format!("{url}/v1/check"), Some(&callout("b2", Some(&rid), 20_000)), None));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!poll.is_finished() && !redeem.is_finished(), "long polls answered before any decision");
    s.approve(ALICE, &id);
    let (st1, a1) = poll.join().unwrap();
    let (st2, a2) = redeem.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "long poll not released promptly: {:?}", t.elapsed());
    assert_eq!((st1, st2), (200, 200));
    // grant uses = 1: exactly one of the two held requests goes through
    let mut statuses = [a1["status"].as_str().unwrap(), a2["status"].as_str().unwrap()];
    statuses.sort();
    assert_eq!(statuses, ["approved", "denied"], "{a1} {a2}");
    let (ok, no) = if a1["status"] == "approved" { (&a1, &a2) } else { (&a2, &a1) };
    assert_eq!(ok["approver"], "alice");
    assert_eq!(ok["approval_id"], id.as_str());
    assert_denied(no, "approval_used");
    assert_eq!(s.status(&id)["status"], "used");
    assert_denied(&s.check(&callout("b3", Some(&id), 0)), "approval_used");
}

#[test]
fn deny_needs_a_reason_and_is_final() {
    let dir = TempDir::new();
    let s = Service::start(&dir.db(), &[]);
    let id = s.new_pending("c1");
    let (status, v) = s.vote(BOB, &id, "deny", None);
    assert_eq!((status, v["error"].as_str()), (400, Some("reason_required")));
    let (status, v) = s.vote(BOB, &id, "deny", Some("not during the freeze"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "denied");
    assert_eq!(v["votes"][0]["approver"], "bob");
    assert_eq!(v["votes"][0]["reason"], "not during the freeze");
    let r = s.check(&callout("c2", Some(&id), 0));
    assert_denied(&r, "approval_denied");
    assert_eq!(r["approver"], "bob");
    assert!(r["message"].as_str().unwrap().contains("not during the freeze"), "{r}");
    let (status, v) = s.vote(ALICE, &id, "approve", None);
    assert_eq!((status, v["error"].as_str()), (409, Some("not_pending")));
    assert_eq!(s.status(&id)["status"], "denied");
}

#[test]
fn redeem_consumes_one_use_then_approval_used() {
    let dir = TempDir::new();
    let s = Service::start(&dir.db(), &[]);
    let id = s.new_pending("d1");
    s.approve(ALICE, &id);
    let ok = s.check(&callout("d2", Some(&id), 0));
    assert_eq!(ok["status"], "approved", "{ok}");
    assert_eq!(ok["approver"], "alice");
    assert_denied(&s.check(&callout("d3", Some(&id), 0)), "approval_used");
    // the hold that consumed the use gets the same answer again (idempotent)
    assert_eq!(s.check(&callout("d2", Some(&id), 0))["status"], "approved");
    assert_eq!(s.status(&id)["status"], "used");
}

#[test]
fn redeem_of_a_different_request_is_a_mismatch() {
    let dir = TempDir::new();
    let s = Service::start(&dir.db(), &[]);
    let id = s.new_pending("e1");
    s.approve(ALICE, &id);
    let base = callout("e2", Some(&id), 0);
    for (ptr, value) in [
        ("/body/sha256", json!(SHA_B)),
        ("/path", json!("/collections/other/points")),
        ("/identity/subject", json!("someone-else")),
        ("/method", json!("POST")),
        ("/identity/issuer", json!("http://other-issuer")),
        ("/authority", json!("other.example:10000")),
        ("/resource", json!("other-store")),
    ] {
        let v = s.check(&with(base.clone(), ptr, value));
        assert_denied(&v, "approval_mismatch");
    }
    // authority compares case-insensitively; nothing above consumed the use
    let v = s.check(&with(base, "/authority", json!("127.0.0.1:10000")));
    assert_eq!(v["status"], "approved", "{v}");
}

#[test]
fn grant_of_two_uses_and_unlimited_uses() {
    let dir = TempDir::new();
    let s = Service::start(&dir.db(), &[]);
    let two = |hold: &str, id: Option<&str>| with(callout(hold, id, 0), "/grant/uses", json!(2));
    let v = s.check(&two("f1", None));
    let id = v["approval_id"].as_str().unwrap().to_string();
    s.approve(ALICE, &id);
    assert_eq!(s.check(&two("f2", Some(&id)))["status"], "approved");
    assert_eq!(s.status(&id)["status"], "approved");
    assert_eq!(s.check(&two("f3", Some(&id)))["status"], "approved");
    assert_denied(&s.check(&two("f4", Some(&id))), "approval_used");

    let unlimited = |hold: &str, id: Option<&str>| with(callout(hold, id, 0), "/grant/uses", json!(0));
    let v = s.check(&unlimited("g1", None));
    let id = v["approval_id"].as_str().unwrap().to_string();
    s.approve(ALICE, &id);
    for i in 0..5 {
        assert_eq!(s.check(&unlimited(&format!("g2{i}"), Some(&id)))["status"], "approved");
    }
    assert_eq!(s.status(&id)["status"], "approved");
}

#[test]
fn grant_window_ends_in_approval_expired() {
    let dir = TempDir::new();
    let s = Service::start(&dir.db(), &[]);
    let short = |hold: &str, id: Option<&str>| {
        with(with(callout(hold, id, 0), "/grant/window_seconds", json!(1)), "/grant/uses", json!(3))
    };
    let id = s.check(&short("h1", None))["approval_id"].as_str().unwrap().to_string();
    s.approve(ALICE, &id);
    assert_eq!(s.check(&short("h2", Some(&id)))["status"], "approved");
    std::thread::sleep(Duration::from_millis(1100));
    assert_denied(&s.check(&short("h3", Some(&id))), "approval_expired");
    assert_eq!(s.status(&id)["status"], "expired");
}

#[test]
fn pending_ttl_expires_a_held_request() {
    let dir = TempDir::new();
    let s = Service::start(&dir.db(), &["--pending-ttl-seconds", "1"]);
    let t = Instant::now();
    // held for up to 3 s, but the approval expires after 1 s: the hold ends then
    let v = s.check(&callout("i1", None, 4000));
    let took = t.elapsed();
    assert_denied(&v, "approval_expired");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(2500), "answered after {took:?}");
    let id = v["approval_id"].as_str().unwrap();
    assert_eq!(s.status(id)["status"], "expired");
    let (status, _) = s.vote(ALICE, id, "approve", None);
    assert_eq!(status, 409);
    assert_denied(&s.check(&callout("i2", Some(id), 0)), "approval_expired");
}

#[test]
fn abandon_by_hold_ends_the_pending_approval() {
    let dir = TempDir::new();
    let s = Service::start(&dir.db(), &[]);
    let url = s.url.clone();
    let t = Instant::now();
    let poll = std::thread::spawn(move || http("POST", &format!("{url}/v1/check"), Some(&callout("j1", None, 20_000)), None));
    let id = wait_pending(&s, 1).remove(0);
    let (status, v) = s.abandon(&format!("{:0>32}", "j1"));
    assert_eq!((status, v), (200, json!({})));
    let (_, a) = poll.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_denied(&a, "approval_abandoned");
    assert_eq!(s.status(&id)["status"], "abandoned");
    assert_denied(&s.check(&callout("j2", Some(&id), 0)), "approval_abandoned");
    assert_eq!(s.vote(ALICE, &id, "approve", None).0, 409);
    // abandoning an unknown hold, or a decided one, is a no-op with 200 {}
    assert_eq!(s.abandon("nope"), (200, json!({})));
    let id2 = s.new_pending("j3");
    s.approve(ALICE, &id2);
    assert_eq!(s.abandon(&format!("{:0>32}", "j3")), (200, json!({})));
    assert_eq!(s.status(&id2)["status"], "approved");
}

#[test]
fn unknown_approval_id() {
    let dir = TempDir::new();
    let s = Service::start(&dir.db(), &[]);
    let v = s.check(&callout("k1", Some("apr_00000000000000000000000000000000"), 0));
    assert_denied(&v, "approval_unknown");
    assert_eq!(http("GET", &format!("{}/v1/approvals/apr_nope", s.url), None, None).0, 404);
    assert_eq!(http("GET", &format!("{}/v1/approvals/apr_nope/detail", s.url), None, Some(ALICE)).0, 404);
    let (status, v) = s.vote(ALICE, "apr_nope", "approve", None);
    assert_eq!((status, v["error"].as_str()), (404, Some("not_found")));
}

#[test]
fn self_approval_is_refused() {
    let dir = TempDir::new();
    let s = Service::start(&dir.db(), &[]);
    let id = s.new_pending("l1");
    let (status, v) = s.vote(SELF, &id, "approve", None);
    assert_eq!((status, v["error"].as_str()), (403, Some("self_approval")), "{v}");
    assert_eq!(s.status(&id)["status"], "pending");
    let v = s.approve(ALICE, &id);
    assert_eq!(v["status"], "approved");
    assert_eq!(v["votes"].as_array().unwrap().len(), 1);
}

#[test]
fn min_approvers_two_needs_two_distinct_approvers() {
    let dir = TempDir::new();
    let s = Service::start(&dir.db(), &["--min-approvers", "2"]);
    let id = s.new_pending("m1");
    let v = s.approve(ALICE, &id);
    assert_eq!(v["status"], "pending", "{v}");
    let (status, v) = s.vote(ALICE, &id, "approve", None);
    assert_eq!((status, v["error"].as_str()), (409, Some("already_voted")));
    assert_eq!(s.check(&callout("m2", Some(&id), 0))["status"], "pending");
    let v = s.approve(BOB, &id);
    assert_eq!(v["status"], "approved");
    let r = s.check(&callout("m3", Some(&id), 0));
    assert_eq!(r["status"], "approved");
    assert_eq!(r["approver"], "alice, bob");
    // and a deny by anyone after one approval still denies
    let id = s.new_pending("m4");
    s.approve(ALICE, &id);
    let (status, v) = s.vote(BOB, &id, "deny", Some("no"));
    assert_eq!((status, v["status"].as_str()), (200, Some("denied")));
}

#[test]
fn approver_api_needs_a_known_token() {
    let dir = TempDir::new();
    let s = Service::start(&dir.db(), &[]);
    let id = s.new_pending("n1");
    let list = format!("{}/v1/approvals", s.url);
    for token in [None, Some("wrong"), Some("tok-alice-but-longer")] {
        let (status, v) = http("GET", &list, None, token);
        assert_eq!((status, v["error"].as_str()), (401, Some("unauthorized")), "{token:?}");
        assert_eq!(http("GET", &format!("{list}/{id}/detail"), None, token).0, 401);
        assert_eq!(s.vote(token.unwrap_or(""), &id, "approve", None).0, 401);
    }
    let (status, v) = http("GET", &list, None, Some(ALICE));
    assert_eq!(status, 200);
    assert_eq!(v["approver"], "alice");
    assert_eq!(s.status(&id)["status"], "pending");
    assert_eq!(http("GET", &format!("{list}?status=bogus"), None, Some(ALICE)).0, 400);
}

#[test]
fn state_survives_a_restart() {
    let dir = TempDir::new();
    let mut s = Service::start(&dir.db(), &[]);
    let id = s.new_pending("o1");
    s.approve(ALICE, &id);
    let id2 = s.new_pending("o2");
    // SIGKILL: nothing may depend on a clean shutdown
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    drop(s);
    let s = Service::start(&dir.db(), &[]);
    assert_eq!(s.pending_ids(), vec![id2.clone()]);
    assert_eq!(s.status(&id)["status"], "approved");
    // the hold that created it is still known (idempotent across restarts)
    assert_eq!(s.check(&callout("o2", None, 0))["approval_id"], id2.as_str());
    let v = s.approve(BOB, &id2);
    assert_eq!(v["votes"][0]["approver"], "bob");
    assert_eq!(s.check(&callout("o3", Some(&id2), 0))["status"], "approved");
    assert_eq!(s.check(&callout("o4", Some(&id), 0))["status"], "approved");
    assert_denied(&s.check(&callout("o5", Some(&id), 0)), "approval_used");
}

/// A webhook receiver on a free loopback port: answers 500 to the first
/// `failures` posts and 200 after; every (arrival time, JSON body) goes to the channel.
fn webhook_receiver(failures: usize) -> (String, mpsc::Receiver<(Instant, Value)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { continue };
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body_start = loop {
                let k = conn.read(&mut chunk).unwrap_or(0);
                if k == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..k]);
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(p + 4);
                }
            };
            let Some(start) = body_start else { continue };
            let head = String::from_utf8_lossy(&buf[..start]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            while buf.len() < start + len {
                let k = conn.read(&mut chunk).unwrap_or(0);
                if k == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..k]);
            }
            let body: Value = serde_json::from_slice(&buf[start..]).unwrap_or(Value::Null);
            let _ = tx.send((Instant::now(), body));
            let status = if n < failures { "500 Internal Server Error" } else { "200 OK" };
            let _ = conn.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes());
        }
    });
    (url, rx)
}

#[test]
fn webhook_is_delivered_with_retries_and_never_blocks_the_callout() {
    let (hook, rx) = webhook_receiver(2);
    let dir = TempDir::new();
    let s = Service::start(&dir.db(), &["--webhook", &hook, "--public-url", "https://approvals.example/"]);
    let t = Instant::now();
    let v = s.check(&callout("p1", None, 0));
    // three attempts take ≥ 1.5 s: the callout must not wait for them
    assert!(t.elapsed() < Duration::from_millis(1000), "callout waited for the webhook: {:?}", t.elapsed());
    let id = v["approval_id"].as_str().unwrap();
    assert_eq!(v["status_url"], format!("https://approvals.example/v1/approvals/{id}"));
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(rx.recv_timeout(Duration::from_secs(10)).expect("webhook attempt missing"));
    }
    for (_, body) in &got {
        assert_eq!(body["event"], "approval.pending");
        assert_eq!(body["approval"]["approval_id"], id);
        assert_eq!(body["approval"]["identity"]["subject"], "ci-ingest");
        assert_eq!(body["approval"]["status"], "pending");
        assert_eq!(body["approve_url"], format!("https://approvals.example/v1/approvals/{id}/approve"));
    }
    // exponential backoff: ~0.5 s, then ~1 s
    let gap1 = got[1].0 - got[0].0;
    let gap2 = got[2].0 - got[1].0;
    assert!(gap1 >= Duration::from_millis(400) && gap2 >= Duration::from_millis(900), "{gap1:?} {gap2:?}");
    // delivered: no further attempts; the same hold again sends nothing new
    s.check(&callout("p1", None, 0));
    assert!(rx.recv_timeout(Duration::from_millis(1500)).is_err(), "unexpected extra webhook post");
    assert!(s.log().contains("attempt 2/6 failed"), "{}", s.log());
}

/// Runs `nhi-gate approvals ARGS` with env `env`; (exit ok, stdout, stderr).
fn cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("approvals").args(args).env_remove("NHI_GATE_APPROVALS_URL").env_remove("NHI_GATE_APPROVER_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn approver_commands_list_show_approve_deny() {
    let dir = TempDir::new();
    let s = Service::start(&dir.db(), &[]);
    let id1 = s.new_pending("q1");
    let id2 = s.new_pending("q2");
    let u = s.url.as_str();

    let (ok, out, err) = cli(&["list", "--url", u, "--token", ALICE], &[]);
    assert!(ok, "{err}");
    assert!(out.starts_with("ID") && out.contains(&id1) && out.contains(&id2), "{out}");
    assert!(out.contains("ci-ingest") && out.contains("/collections/docs/points"), "{out}");

    // env defaults for --url and --token
    let env = [("NHI_GATE_APPROVALS_URL", u), ("NHI_GATE_APPROVER_TOKEN", ALICE)];
    let (ok, out, _) = cli(&["list", "--json"], &env);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["approvals"].as_array().unwrap().len(), 2);

    let (ok, out, _) = cli(&["show", &id1], &env);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["approval_id"], id1.as_str());
    assert_eq!(v["body"]["sha256"], SHA_A);

    let (ok, _, err) = cli(&["approve", &id1, "--url", u, "--token", "wrong"], &[]);
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, _, err) = cli(&["approve", &id1, "--url", u], &[]);
    assert!(!ok && err.contains("token"), "{err}");
    let (ok, _, err) = cli(&["approve", &id1, "--url", u, "--token", SELF], &[]);
    assert!(!ok && err.contains("403"), "{err}");
    let (ok, _, err) = cli(&["show", "apr_00000000000000000000000000000000"], &env);
    assert!(!ok && err.contains("404"), "{err}");

    let (ok, out, err) = cli(&["approve", &id1, "--reason", "ticket OPS-1"], &env);
    assert!(ok, "{err}");
    assert!(out.contains("approved"), "{out}");
    let (ok, _, err) = cli(&["approve", &id1], &[("NHI_GATE_APPROVALS_URL", u), ("NHI_GATE_APPROVER_TOKEN", BOB)]);
    assert!(!ok && err.contains("409"), "{err}");

    let (ok, _, _) = cli(&["deny", &id2], &env);
    assert!(!ok, "deny without --reason must fail");
    let (ok, out, err) = cli(&["deny", &id2, "--reason", "wrong collection"], &env);
    assert!(ok, "{err}");
    assert!(out.contains("denied"), "{out}");

    assert_eq!(s.status(&id1)["status"], "approved");
    let (_, d) = http("GET", &format!("{u}/v1/approvals/{id1}/detail"), None, Some(BOB));
    assert_eq!(d["votes"][0]["reason"], "ticket OPS-1");
    assert_denied(&s.check(&callout("q3", Some(&id2), 0)), "approval_denied");
    let (ok, out, _) = cli(&["list"], &env);
    assert!(ok && out.contains("no approvals"), "{out}");
    let (ok, out, _) = cli(&["list", "--status", "all"], &env);
    assert!(ok && out.contains(&id1) && out.contains(&id2), "{out}");

    let (ok, _, err) = cli(&["list", "--url", "http://127.0.0.1:9", "--token", ALICE], &[]);
    assert!(!ok && err.contains("cannot reach"), "{err}");
}

#[test]
fn approvers_from_env() {
    let dir = TempDir::new();
    let mut cmd = Service::command("approvals", &dir.db());
    cmd.env("NHI_GATE_APPROVERS", "dora=tok-dora, eve=tok-eve");
    let s = Service::spawn("service", cmd, dir.0.join("env.log"));
    let id = s.new_pending("r1");
    let v = s.approve("tok-eve", &id);
    assert_eq!(v["votes"][0]["approver"], "eve");
    // not enough approvers for --min-approvers: refuses to start
    let out = Command::new(BIN)
        .args(["approvals", "serve", "--listen", "127.0.0.1:0", "--min-approvers", "2", "--approver", "a=b", "--db"])
        .arg(dir.0.join("other.db"))
        .env_remove("NHI_GATE_APPROVERS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--min-approvers"));
}

#[test]
fn callout_secret_is_enforced() {
    let dir = TempDir::new();
    let s = Service::start(&dir.db(), &["--secret", "s3cret"]);
    let body = callout("s1", None, 0);
    for bad in [None, Some("wrong"), Some("s3cre")] {
        let (status, v) = s.check_with(&body, bad);
        assert_eq!((status, v["error"].as_str()), (401, Some("unauthorized")), "{bad:?}");
    }
    assert!(s.pending_ids().is_empty(), "an unauthenticated callout created an approval");
    let (status, v) = s.check_with(&body, Some("s3cret"));
    assert_eq!((status, v["status"].as_str()), (200, Some("pending")));
    let id = v["approval_id"].as_str().unwrap();
    let abandon = format!("{}/v1/check/abandon", s.url);
    let hold = json!({"hold_id": format!("{:0>32}", "s1")});
    assert_eq!(http("POST", &abandon, Some(&hold), None).0, 401);
    assert_eq!(s.status(id)["status"], "pending");
    assert_eq!(http("POST", &abandon, Some(&hold), Some("s3cret")).0, 200);
    assert_eq!(s.status(id)["status"], "abandoned");
}

#[test]
fn malformed_callouts_are_rejected() {
    let dir = TempDir::new();
    let s = Service::start(&dir.db(), &[]);
    let base = callout("t1", None, 0);
    let mut no_hold = base.clone();
    no_hold.as_object_mut().unwrap().remove("hold_id");
    for bad in [
        json!("not an object"),
        no_hold,
        with(base.clone(), "/version", json!(2)),
        with(base.clone(), "/body/sha256", json!("abc")),
        with(base.clone(), "/identity/subject", json!("")),
        with(base.clone(), "/wait_ms", json!(-1)),
        with(base.clone(), "/grant/window_seconds", json!(0)),
    ] {
        let (status, v) = s.check_with(&bad, None);
        assert_eq!((status, v["error"].as_str()), (400, Some("bad_request")), "{bad}");
    }
    let (status, _) = http("POST", &format!("{}/v1/check", s.url), None, None);
    assert_eq!(status, 400);
    assert!(s.pending_ids().is_empty());
    // no grant: one use within 900 s
    let mut no_grant = base;
    no_grant.as_object_mut().unwrap().remove("grant");
    let id = s.check(&no_grant)["approval_id"].as_str().unwrap().to_string();
    let (_, d) = http("GET", &format!("{}/v1/approvals/{id}/detail", s.url), None, Some(ALICE));
    assert_eq!(d["grant"], json!({"uses": 1, "window_seconds": 900}));
}

#[test]
fn approver_page_is_self_contained() {
    let dir = TempDir::new();
    let s = Service::start(&dir.db(), &[]);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut resp = agent.get(&format!("{}/", s.url)).call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let h = |k: &str| resp.headers().get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(h("content-type").starts_with("text/html"));
    let csp = h("content-security-policy");
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    let page = resp.body_mut().read_to_string().unwrap();
    for needle in ["id=\"token\"", "id=\"save-token\"", "id=\"status\"", "\"approval\"", "\"approve\"", "\"deny\"", "sessionStorage", "dataset.id"] {
        assert!(page.contains(needle), "page lacks {needle}");
    }
    // request data is only ever placed as text
    assert!(!page.contains("innerHTML") && !page.contains("insertAdjacentHTML") && !page.contains("document.write"));
    assert!(!page.contains("window.prompt") && !page.contains("prompt("));
    assert!(!page.contains("src=\"http") && !page.contains("href=\"http"), "external asset");
}
