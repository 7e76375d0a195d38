//! `approval`: which requests a resource holds, the callout of protocol v1
//! (`docs/approval-protocol.md`) and how the service's answer becomes a
//! verdict; the `approval` section of the configuration; and the hold the
//! gate plans for a request.

mod common;

use common::*;
use nhi_gate::approval::{
    abandon_body, approval_id, unavailable, verdict, ApprovalRef, Origin, Pending, Ticket, Verdict, APPROVAL_HEADER,
    DEFAULT_RETRY_AFTER, MAX_ID_BYTES,
};
use nhi_gate::config::{Approval, Config, RequestPattern};
use nhi_gate::deny::Denial;
use nhi_gate::gate::{Gate, Header, Plan};
use nhi_gate::policy::{Glob, OpClass, Request};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::rc::Rc;

/// SHA-256 test vectors (FIPS 180-2 appendix B, and the empty message).
const SHA256_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
const SHA256_EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const SHA256_448_BITS: &str = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";
const MSG_448_BITS: &[u8] = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";

/// The denial reason codes of protocol §1.
const REASON_CODES: [&str; 6] =
    ["approval_denied", "approval_unknown", "approval_mismatch", "approval_expired", "approval_used", "approval_abandoned"];

// ---------------------------------------------------------------------------
// Helpers

/// Approval settings with the configuration defaults, cluster "approvals"
/// reached as "approvals.internal:8080".
fn settings() -> Approval {
    Approval {
        cluster: "approvals".into(),
        authority: "approvals.internal:8080".into(),
        path: "/v1/check".into(),
        write: true,
        requests: vec![],
        exempt_groups: vec![],
        hold_ms: 60_000,
        timeout_ms: 5_000,
        max_body_bytes: 1 << 20,
        preview_bytes: 1024,
        grant_uses: 1,
        grant_window_seconds: 900,
        secret: None,
    }
}

fn pattern(methods: &[&str], glob: &str) -> RequestPattern {
    RequestPattern { methods: methods.iter().map(|m| m.to_string()).collect(), path_glob: Glob::new(glob) }
}


fn req<'a>(method: &'a str, path: &'a str) -> Request<'a> {
    Request { authority: b"rag.example.com:10000", path: path.as_bytes(), method }
}

/// A held `PUT /collections/docs/points` by a writer with a `jti`.
fn ticket(s: Approval) -> Ticket {
    let mut id = identity(&["writers", "ci"]);
    id.jti = "jti-42".into();
    Ticket {
        settings: Rc::new(ApprovalRef(Rc::new(s))),
        approval_id: None,
        identity: id,
        resource: "vector-store".into(),
        operation: "write",
        method: "PUT".into(),
        authority: "rag.example.com:10000".into(),
        path: "/collections/docs/points?wait=true".into(),
        path_sha256: nhi_gate::approval::sha256_hex(b"/collections/docs/points?wait=true"),
    }
}

fn origin() -> Origin {
    Origin {
        hold_id: "5f0c2a9e0d7b4c1e9a3b6d8f1e2c4a7b".into(),
        request_id: "b7c1d2e3-req".into(),
        source: "127.0.0.1:53412".into(),
        time_ms: 1_764_430_000_123,
    }
}

/// The callout body of `t` for `body`, parsed.
fn callout(t: &Ticket, body: &[u8]) -> Value {
    let bytes = t.callout_body(&origin(), body);
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("callout body is not JSON ({e}): {bytes:?}"))
}

/// The headers as a name → value map; panics on a repeated name.
fn header_map(h: &[(String, String)]) -> std::collections::BTreeMap<String, String> {
    let mut m = std::collections::BTreeMap::new();
    for (n, v) in h {
        assert!(m.insert(n.clone(), v.clone()).is_none(), "header {n} repeated in {h:?}");
    }
    m
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().cloned().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The verdict for a 200 answer with this JSON body.
fn answer(body: Value) -> Verdict {
    verdict(Some("200"), body.to_string().as_bytes())
}

#[track_caller]
fn assert_unavailable(v: Verdict) {
    match v {
        Verdict::Denied(d) => {
            assert_eq!((d.status, d.reason), (503, "approval_unavailable"), "{d:?}");
            assert!(!d.detail.is_empty(), "{d:?}");
        }
        other => panic!("expected 503 approval_unavailable, got {other:?}"),
    }
}

#[track_caller]
fn denial(v: Verdict) -> Denial {
    match v {
        Verdict::Denied(d) => d,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[track_caller]
fn pending(v: Verdict) -> Pending {
    match v {
        Verdict::Pending(p) => p,
        other => panic!("expected pending, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Approval::holds

#[test]
fn writes_are_held_and_reads_are_not() {
    let a = settings();
    let id = identity(&["writers"]);
    assert!(a.holds(OpClass::Write, &req("PUT", "/collections/docs/points"), &id));
    assert!(a.holds(OpClass::Write, &req("DELETE", "/collections/docs"), &id));
    assert!(!a.holds(OpClass::Read, &req("GET", "/collections/docs"), &id));
    // The class decides, not the method: a POST classed as read is not held.
    assert!(!a.holds(OpClass::Read, &req("POST", "/collections/docs/points/search"), &id));
}

#[test]
fn write_false_holds_no_write_by_itself() {
    let a = Approval { write: false, requests: vec![pattern(&["GET"], "/exports/**")], ..settings() };
    let id = identity(&["writers"]);
    assert!(!a.holds(OpClass::Write, &req("PUT", "/collections/docs/points"), &id));
    assert!(!a.holds(OpClass::Write, &req("POST", "/exports/daily"), &id), "method not in the pattern");
    assert!(a.holds(OpClass::Read, &req("GET", "/exports/daily/report.csv"), &id));
}

#[test]
fn request_patterns_match_method_and_path() {
    let a = Approval {
        write: false,
        requests: vec![pattern(&["GET", "HEAD"], "/exports/*"), pattern(&["POST"], "/admin/reindex")],
        ..settings()
    };
    let id = identity(&["readers"]);
    assert!(a.holds(OpClass::Read, &req("GET", "/exports/daily"), &id));
    assert!(a.holds(OpClass::Read, &req("HEAD", "/exports/daily"), &id));
    assert!(!a.holds(OpClass::Read, &req("OPTIONS", "/exports/daily"), &id), "method not listed");
    assert!(!a.holds(OpClass::Read, &req("GET", "/exports/daily/more"), &id), "* stays within one segment");
    assert!(!a.holds(OpClass::Read, &req("GET", "/export/daily"), &id));
    assert!(a.holds(OpClass::Write, &req("POST", "/admin/reindex"), &id));
    assert!(!a.holds(OpClass::Write, &req("POST", "/admin/reindex2"), &id));
    assert!(!a.holds(OpClass::Write, &req("GET", "/admin/reindex"), &id));
}

#[test]
fn request_pattern_without_methods_matches_any_method() {
    let a = Approval { write: false, requests: vec![pattern(&[], "/admin/**")], ..settings() };
    let id = identity(&["readers"]);
    for m in ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"] {
        assert!(a.holds(OpClass::default_for(m), &req(m, "/admin/users/1"), &id), "{m}");
    }
    assert!(!a.holds(OpClass::Read, &req("GET", "/public/admin/x"), &id));
}

#[test]
fn write_and_request_patterns_combine() {
    let a = Approval { write: true, requests: vec![pattern(&["GET"], "/secrets/*")], ..settings() };
    let id = identity(&["readers"]);
    assert!(a.holds(OpClass::Read, &req("GET", "/secrets/db"), &id));
    assert!(!a.holds(OpClass::Read, &req("GET", "/docs/db"), &id));
    assert!(a.holds(OpClass::Write, &req("PUT", "/docs/db"), &id));
}

#[test]
fn request_patterns_ignore_the_query_string() {
    let a = Approval {
        write: false,
        requests: vec![pattern(&["GET"], "/admin/export"), pattern(&["GET"], "/a/*"), pattern(&["GET"], "/**/secret")],
        ..settings()
    };
    let id = identity(&["readers"]);
    // The query does not prevent a match...
    assert!(a.holds(OpClass::Read, &req("GET", "/admin/export?format=csv"), &id));
    assert!(a.holds(OpClass::Read, &req("GET", "/admin/export#frag"), &id));
    assert!(a.holds(OpClass::Read, &req("GET", "/a/b?next=/c"), &id));
    // ...and cannot create one.
    assert!(!a.holds(OpClass::Read, &req("GET", "/public?x=/secret"), &id));
    assert!(!a.holds(OpClass::Read, &req("GET", "/public#/secret"), &id));
    assert!(!a.holds(OpClass::Read, &req("GET", "/admin/exports?x=/admin/export"), &id));
}

#[test]
fn exempt_groups_are_never_held() {
    let a = Approval {
        write: true,
        requests: vec![pattern(&[], "/exports/**")],
        exempt_groups: vec!["break-glass".into(), "release-bot".into()],
        ..settings()
    };
    let put = req("PUT", "/collections/docs/points");
    let export = req("GET", "/exports/x");
    for groups in [&["writers", "break-glass"][..], &["release-bot"][..]] {
        let id = identity(groups);
        assert!(!a.holds(OpClass::Write, &put, &id), "{groups:?}");
        assert!(!a.holds(OpClass::Read, &export, &id), "{groups:?}");
    }
    // Group names match exactly.
    for groups in [&["writers"][..], &["break-glass-2", "Break-Glass", "release"][..], &[][..]] {
        let id = identity(groups);
        assert!(a.holds(OpClass::Write, &put, &id), "{groups:?}");
        assert!(a.holds(OpClass::Read, &export, &id), "{groups:?}");
    }
}

// ---------------------------------------------------------------------------
// approval_id

#[test]
fn approval_ids_of_the_allowed_charset_are_accepted() {
    for id in ["a", "Z", "7", "_", "-", ".", "apr_3kX-9.z", "APR_0123456789abcdefghijklmnopqrstuvwxyz"] {
        assert_eq!(approval_id(id.as_bytes()).as_deref(), Some(id), "{id:?}");
    }
}

#[test]
fn every_single_byte_outside_the_charset_is_rejected() {
    for b in 0..=255u8 {
        let allowed = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.';
        let got = approval_id(&[b'a', b, b'z']);
        if allowed {
            assert_eq!(got, Some(format!("a{}z", char::from(b))), "byte {b:#04x}");
        } else {
            assert_eq!(got, None, "byte {b:#04x}");
        }
    }
}

#[test]
fn empty_approval_id_is_rejected() {
    assert_eq!(approval_id(b""), None);
}

#[test]
fn approval_id_length_limit_is_128_bytes() {
    assert_eq!(MAX_ID_BYTES, 128);
    let at_limit = "a".repeat(128);
    assert_eq!(approval_id(at_limit.as_bytes()).as_deref(), Some(at_limit.as_str()));
    assert_eq!(approval_id("a".repeat(129).as_bytes()), None);
    assert_eq!(approval_id("a".repeat(4096).as_bytes()), None);
}

#[test]
fn non_ascii_and_malformed_approval_ids_are_rejected() {
    let cases: [&[u8]; 12] = [
        "apré".as_bytes(),
        "ａｐｒ".as_bytes(),  // fullwidth letters
        "apr\u{200b}1".as_bytes(),
        b"\xff\xfe",
        b"apr\xc3",
        b"apr 1",
        b"apr/1",
        b"apr_1,apr_2",
        b"apr:1",
        b"apr\n",
        b"apr\0",
        b" apr",
    ];
    for c in cases {
        assert_eq!(approval_id(c), None, "{c:?}");
    }
}

// ---------------------------------------------------------------------------
// Ticket::callout_body (protocol §1)

#[test]
fn callout_body_has_exactly_the_protocol_fields() {
    let v = callout(&ticket(settings()), b"{}");
    let expected = set(&[
        "version", "hold_id", "request_id", "approval_id", "wait_ms", "time_ms", "identity", "resource", "operation",
        "method", "authority", "path", "path_sha256", "body", "source", "grant",
    ]);
    assert_eq!(keys(&v), expected);
    assert_eq!(keys(&v["identity"]), set(&["provider", "issuer", "subject", "groups", "jti"]));
    assert_eq!(keys(&v["body"]), set(&["sha256", "size", "preview", "truncated"]));
    assert_eq!(keys(&v["grant"]), set(&["uses", "window_seconds"]));
}

#[test]
fn callout_body_carries_the_origin_and_the_request() {
    let v = callout(&ticket(settings()), b"{\"points\":[]}");
    assert_eq!(v["version"], json!(1));
    assert_eq!(v["hold_id"], json!("5f0c2a9e0d7b4c1e9a3b6d8f1e2c4a7b"));
    assert_eq!(v["request_id"], json!("b7c1d2e3-req"));
    assert_eq!(v["time_ms"], json!(1_764_430_000_123u64));
    assert_eq!(v["source"], json!("127.0.0.1:53412"));
    assert_eq!(v["resource"], json!("vector-store"));
    assert_eq!(v["operation"], json!("write"));
    assert_eq!(v["method"], json!("PUT"));
    assert_eq!(v["authority"], json!("rag.example.com:10000"));
    assert_eq!(v["path"], json!("/collections/docs/points?wait=true"));
    // SHA-256 of the exact path (FIPS 180-4), as sha256sum prints it
    assert_eq!(v["path_sha256"], json!(nhi_gate::approval::sha256_hex(b"/collections/docs/points?wait=true")));
    assert_eq!(nhi_gate::approval::sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

#[test]
fn callout_body_with_an_empty_request_id() {
    let t = ticket(settings());
    let o = Origin { request_id: String::new(), ..origin() };
    let v: Value = serde_json::from_slice(&t.callout_body(&o, b"")).unwrap();
    assert_eq!(v["request_id"], json!(""));
}

#[test]
fn callout_approval_id_is_null_for_a_new_request_and_set_for_a_redeem() {
    let mut t = ticket(settings());
    let v = callout(&t, b"x");
    assert!(v.as_object().unwrap().contains_key("approval_id"), "approval_id must be present: {v}");
    assert!(v["approval_id"].is_null(), "{v}");

    t.approval_id = Some("apr_3kX-9.z".into());
    let v = callout(&t, b"x");
    assert_eq!(v["approval_id"], json!("apr_3kX-9.z"));
}

#[test]
fn callout_wait_ms_is_the_hold() {
    assert_eq!(callout(&ticket(settings()), b"")["wait_ms"], json!(60_000));
    assert_eq!(callout(&ticket(Approval { hold_ms: 5_000, ..settings() }), b"")["wait_ms"], json!(5_000));
    assert_eq!(callout(&ticket(Approval { hold_ms: 240_000, ..settings() }), b"")["wait_ms"], json!(240_000));
}

#[test]
fn callout_identity_has_the_verified_claims() {
    let v = callout(&ticket(settings()), b"");
    assert_eq!(
        v["identity"],
        json!({"provider": "idp", "issuer": ISSUER, "subject": SUBJECT, "groups": ["writers", "ci"], "jti": "jti-42"})
    );
    // An empty jti stays an (empty) string, as are empty groups.
    let mut t = ticket(settings());
    t.identity.jti = String::new();
    t.identity.groups = vec![];
    let v = callout(&t, b"");
    assert_eq!(v["identity"]["jti"], json!(""));
    assert_eq!(v["identity"]["groups"], json!([]));
}

#[test]
fn callout_body_digest_matches_sha256_test_vectors() {
    let t = ticket(settings());
    for (body, digest) in [(&b"abc"[..], SHA256_ABC), (&b""[..], SHA256_EMPTY), (MSG_448_BITS, SHA256_448_BITS)] {
        let v = callout(&t, body);
        assert_eq!(v["body"]["sha256"], json!(digest), "{body:?}");
        assert_eq!(v["body"]["size"], json!(body.len()), "{body:?}");
    }
}

#[test]
fn callout_digest_is_of_the_exact_bytes() {
    let t = ticket(settings());
    let a = callout(&t, b"{\"a\":1}")["body"]["sha256"].clone();
    let b = callout(&t, b"{\"a\":1}\n")["body"]["sha256"].clone();
    let c = callout(&t, b"{\"a\": 1}")["body"]["sha256"].clone();
    assert_ne!(a, b);
    assert_ne!(a, c);
    // Lowercase hex, 64 chars, also for a binary body (no lossy decoding first).
    let bin: Vec<u8> = (0..=255u8).collect();
    let d = callout(&t, &bin)["body"]["sha256"].as_str().unwrap().to_string();
    assert_eq!(d.len(), 64);
    assert!(d.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{d}");
    let lossy = String::from_utf8_lossy(&bin).into_owned();
    assert_ne!(json!(d), callout(&t, lossy.as_bytes())["body"]["sha256"]);
    assert_eq!(nhi_gate::approval::sha256_hex(b"abc"), SHA256_ABC);
}

#[test]
fn callout_size_counts_bytes_not_characters() {
    let v = callout(&ticket(settings()), "héllo €".as_bytes());
    assert_eq!(v["body"]["size"], json!(10));
}

#[test]
fn callout_preview_is_the_whole_short_body() {
    let v = callout(&ticket(settings()), b"{\"points\":[1,2]}");
    assert_eq!(v["body"]["preview"], json!("{\"points\":[1,2]}"));
    assert_eq!(v["body"]["truncated"], json!(false));
    let v = callout(&ticket(settings()), b"");
    assert_eq!(v["body"]["preview"], json!(""));
    assert_eq!(v["body"]["truncated"], json!(false));
}

#[test]
fn callout_preview_is_cut_at_preview_bytes() {
    let t = ticket(Approval { preview_bytes: 8, ..settings() });
    let exact = callout(&t, b"abcdefgh");
    assert_eq!(exact["body"]["preview"], json!("abcdefgh"));
    assert_eq!(exact["body"]["truncated"], json!(false));
    let one_more = callout(&t, b"abcdefghi");
    assert_eq!(one_more["body"]["preview"], json!("abcdefgh"));
    assert_eq!(one_more["body"]["truncated"], json!(true));
    assert_eq!(one_more["body"]["size"], json!(9));

    // Default preview: the first 1024 of 3000 bytes.
    let body: Vec<u8> = (0..3000).map(|i| b'a' + (i % 26) as u8).collect();
    let v = callout(&ticket(settings()), &body);
    let preview = v["body"]["preview"].as_str().unwrap();
    assert_eq!(preview.as_bytes(), &body[..1024]);
    assert_eq!(v["body"]["truncated"], json!(true));
    assert_eq!(v["body"]["size"], json!(3000));
}

#[test]
fn callout_preview_of_zero_bytes_is_empty_and_truncated() {
    let t = ticket(Approval { preview_bytes: 0, ..settings() });
    let v = callout(&t, b"abc");
    assert_eq!(v["body"]["preview"], json!(""));
    assert_eq!(v["body"]["truncated"], json!(true));
    assert_eq!(v["body"]["sha256"], json!(SHA256_ABC));
    let v = callout(&t, b"");
    assert_eq!(v["body"]["truncated"], json!(false));
}

#[test]
fn callout_preview_of_invalid_utf8_is_lossy() {
    let v = callout(&ticket(settings()), b"ok \xff\xfe end");
    assert_eq!(v["body"]["preview"], json!("ok \u{fffd}\u{fffd} end"));
    assert_eq!(v["body"]["size"], json!(9));
    assert_eq!(v["body"]["truncated"], json!(false));
    // A cut inside a multi-byte character does not panic either.
    let t = ticket(Approval { preview_bytes: 2, ..settings() });
    let v = callout(&t, "h€llo".as_bytes());
    assert_eq!(v["body"]["preview"], json!("h\u{fffd}"));
    assert_eq!(v["body"]["truncated"], json!(true));
    // Binary bodies of every byte value.
    let bin: Vec<u8> = (0..=255u8).rev().collect();
    let v = callout(&ticket(settings()), &bin);
    assert!(v["body"]["preview"].is_string());
    assert_eq!(v["body"]["size"], json!(256));
}

#[test]
fn callout_grant_comes_from_the_settings() {
    let v = callout(&ticket(settings()), b"");
    assert_eq!(v["grant"], json!({"uses": 1, "window_seconds": 900}));
    let v = callout(&ticket(Approval { grant_uses: 0, grant_window_seconds: 86_400, ..settings() }), b"");
    assert_eq!(v["grant"], json!({"uses": 0, "window_seconds": 86_400}));
}

#[test]
fn callout_body_escapes_request_strings() {
    let mut t = ticket(settings());
    t.path = "/a\"b\\c?q=\u{1}".into();
    t.identity.subject = "sub\"ject\n".into();
    let v = callout(&t, b"\"");
    assert_eq!(v["path"], json!("/a\"b\\c?q=\u{1}"));
    assert_eq!(v["identity"]["subject"], json!("sub\"ject\n"));
    assert_eq!(v["body"]["preview"], json!("\""));
}

// ---------------------------------------------------------------------------
// Ticket::callout_headers

#[test]
fn callout_headers_post_to_the_check_path() {
    let h = header_map(&ticket(settings()).callout_headers(false));
    assert_eq!(h.get(":method").map(String::as_str), Some("POST"));
    assert_eq!(h.get(":path").map(String::as_str), Some("/v1/check"));
    assert_eq!(h.get(":authority").map(String::as_str), Some("approvals.internal:8080"));
    assert_eq!(h.get("content-type").map(String::as_str), Some("application/json"));
    assert!(!h.contains_key("authorization"), "no secret configured: {h:?}");
    assert_eq!(h.len(), 4, "{h:?}");
}

#[test]
fn callout_headers_use_the_configured_path() {
    let h = header_map(&ticket(Approval { path: "/hooks/nhi/check".into(), ..settings() }).callout_headers(false));
    assert_eq!(h.get(":path").map(String::as_str), Some("/hooks/nhi/check"));
}

#[test]
fn abandon_goes_to_path_slash_abandon() {
    for (path, abandon) in [
        ("/v1/check", "/v1/check/abandon"),
        ("/v1/check/", "/v1/check/abandon"),
        ("/hooks/nhi", "/hooks/nhi/abandon"),
        ("/", "/abandon"),
    ] {
        let t = ticket(Approval { path: path.into(), ..settings() });
        let h = header_map(&t.callout_headers(true));
        assert_eq!(h.get(":path").map(String::as_str), Some(abandon), "{path}");
        assert_eq!(h.get(":method").map(String::as_str), Some("POST"));
        assert_eq!(h.get(":authority").map(String::as_str), Some("approvals.internal:8080"));
        assert_eq!(h.get("content-type").map(String::as_str), Some("application/json"));
        // The check path itself is left as configured.
        let h = header_map(&t.callout_headers(false));
        assert_eq!(h.get(":path").map(String::as_str), Some(path));
    }
}

#[test]
fn bearer_secret_is_sent_only_when_set() {
    let t = ticket(Approval { secret: Some("s3cr3t-Token.~+/=".into()), ..settings() });
    for abandon in [false, true] {
        let h = header_map(&t.callout_headers(abandon));
        assert_eq!(h.get("authorization").map(String::as_str), Some("Bearer s3cr3t-Token.~+/="), "abandon={abandon}");
        assert_eq!(h.len(), 5);
    }
    let h = header_map(&ticket(settings()).callout_headers(true));
    assert!(!h.contains_key("authorization"), "{h:?}");
}

// ---------------------------------------------------------------------------
// verdict

#[test]
fn approved_answer_forwards() {
    let v = answer(json!({"approval_id": "apr_1", "status": "approved", "reason": null, "message": "ok by alice",
                          "approver": "alice", "status_url": "http://a/v1/approvals/apr_1", "retry_after": 30}));
    assert_eq!(v, Verdict::Approved { approval_id: "apr_1".into(), approver: "alice".into() });
}

#[test]
fn approved_answer_ignores_unknown_fields() {
    let v = answer(json!({"status": "approved", "approval_id": "apr_2", "approver": "bob", "future": {"x": [1]}}));
    assert_eq!(v, Verdict::Approved { approval_id: "apr_2".into(), approver: "bob".into() });
}

#[test]
fn pending_answer_with_an_id_becomes_202() {
    let p = pending(answer(json!({"approval_id": "apr_3kX", "status": "pending",
                                  "status_url": "http://approvals.example/v1/approvals/apr_3kX", "retry_after": 45})));
    assert_eq!(
        p,
        Pending {
            approval_id: "apr_3kX".into(),
            status_url: "http://approvals.example/v1/approvals/apr_3kX".into(),
            retry_after: 45
        }
    );
}

#[test]
fn pending_answer_without_a_valid_id_is_unavailable() {
    for body in [
        json!({"status": "pending"}),
        json!({"status": "pending", "approval_id": ""}),
        json!({"status": "pending", "approval_id": null}),
        json!({"status": "pending", "approval_id": 12345}),
        json!({"status": "pending", "approval_id": "apr 1"}),
        json!({"status": "pending", "approval_id": "apr\r\nx-evil: 1"}),
        json!({"status": "pending", "approval_id": "aprè"}),
        json!({"status": "pending", "approval_id": "a".repeat(129)}),
    ] {
        assert_unavailable(answer(body));
    }
    // 128 bytes is still a valid id.
    let p = pending(answer(json!({"status": "pending", "approval_id": "a".repeat(128)})));
    assert_eq!(p.approval_id, "a".repeat(128));
}

#[test]
fn retry_after_defaults_to_30() {
    assert_eq!(DEFAULT_RETRY_AFTER, 30);
    for body in [
        json!({"status": "pending", "approval_id": "apr_1"}),
        json!({"status": "pending", "approval_id": "apr_1", "retry_after": null}),
        json!({"status": "pending", "approval_id": "apr_1", "retry_after": "10"}),
    ] {
        assert_eq!(pending(answer(body.clone())).retry_after, 30, "{body}");
    }
    // No status_url: empty.
    assert_eq!(pending(answer(json!({"status": "pending", "approval_id": "apr_1"}))).status_url, "");
}

#[test]
fn retry_after_is_clamped_to_1_through_3600() {
    for (given, expected) in [(0u64, 1u64), (1, 1), (2, 2), (3599, 3599), (3600, 3600), (3601, 3600), (u64::MAX, 3600)] {
        let p = pending(answer(json!({"status": "pending", "approval_id": "apr_1", "retry_after": given})));
        assert_eq!(p.retry_after, expected, "retry_after {given}");
    }
}

#[test]
fn denied_answer_keeps_each_known_reason_code() {
    for code in REASON_CODES {
        let d = denial(answer(json!({"status": "denied", "approval_id": "apr_1", "reason": code, "message": "no by carol"})));
        assert_eq!((d.status, d.reason, d.detail.as_str()), (403, code, "no by carol"));
    }
}

#[test]
fn denied_answer_with_an_unknown_reason_is_approval_denied() {
    for reason in [json!("nope"), json!("APPROVAL_USED"), json!("approval_unavailable"), json!(""), json!(null), json!(7)] {
        let d = denial(answer(json!({"status": "denied", "reason": reason, "message": "m"})));
        assert_eq!((d.status, d.reason), (403, "approval_denied"), "reason {reason}");
        assert_eq!(d.detail, "m");
    }
    let d = denial(answer(json!({"status": "denied"})));
    assert_eq!((d.status, d.reason), (403, "approval_denied"));
}

#[test]
fn denied_answer_without_a_message_gets_a_default_detail() {
    for body in [
        json!({"status": "denied", "reason": "approval_expired"}),
        json!({"status": "denied", "reason": "approval_expired", "message": ""}),
        json!({"status": "denied", "reason": "approval_expired", "message": null}),
    ] {
        let d = denial(answer(body.clone()));
        assert_eq!((d.status, d.reason), (403, "approval_expired"), "{body}");
        assert!(!d.detail.trim().is_empty(), "{body}: {d:?}");
    }
}

#[test]
fn non_200_statuses_are_unavailable() {
    let approved = json!({"status": "approved", "approval_id": "apr_1", "approver": "alice"}).to_string();
    for status in ["201", "202", "204", "301", "400", "401", "403", "404", "500", "502", "503", "504", "", "200 ", "abc"] {
        assert_unavailable(verdict(Some(status), approved.as_bytes()));
    }
}

#[test]
fn callout_without_status_is_unavailable() {
    let approved = json!({"status": "approved", "approval_id": "apr_1"}).to_string();
    assert_unavailable(verdict(None, approved.as_bytes()));
    assert_unavailable(verdict(None, b""));
}

#[test]
fn answers_that_are_not_json_objects_are_unavailable() {
    for body in [
        &b""[..],
        b"approved",
        b"{",
        b"{\"status\": \"approved\"",
        b"{\"status\": \"approved\"} trailing",
        b"\xff\xfe",
        b"[{\"status\": \"approved\", \"approval_id\": \"apr_1\"}]",
        b"[]",
        b"\"approved\"",
        b"null",
        b"42",
        b"true",
        // duplicate member names: never read last-wins
        b"{\"status\": \"denied\", \"status\": \"approved\", \"approval_id\": \"apr_1\"}",
        b"{\"status\": \"approved\", \"approval_id\": \"apr_1\", \"x\": {\"a\": 1, \"a\": 2}}",
    ] {
        assert_unavailable(verdict(Some("200"), body));
    }
}

#[test]
fn unknown_status_is_unavailable() {
    for body in [
        json!({}),
        json!({"approval_id": "apr_1"}),
        json!({"status": "APPROVED", "approval_id": "apr_1"}),
        json!({"status": " approved", "approval_id": "apr_1"}),
        json!({"status": "ok"}),
        json!({"status": "used"}),
        json!({"status": ""}),
        json!({"status": null}),
        json!({"status": true}),
        json!({"status": 200}),
        json!({"status": ["approved"]}),
    ] {
        assert_unavailable(answer(body));
    }
}

#[test]
fn unavailable_is_503_with_the_detail() {
    assert_eq!(
        unavailable("down"),
        Denial { status: 503, reason: "approval_unavailable", detail: "down".into() }
    );
}

// ---------------------------------------------------------------------------
// Pending::body and abandon_body

#[test]
fn pending_body_has_the_four_fields() {
    let p = Pending { approval_id: "apr_9".into(), status_url: "http://a.example/v1/approvals/apr_9".into(), retry_after: 12 };
    let v: Value = serde_json::from_slice(&p.body()).unwrap();
    assert_eq!(
        v,
        json!({"approval_id": "apr_9", "status": "pending", "status_url": "http://a.example/v1/approvals/apr_9", "retry_after": 12})
    );
    let p = Pending { approval_id: "x".into(), status_url: String::new(), retry_after: 3600 };
    let v: Value = serde_json::from_slice(&p.body()).unwrap();
    assert_eq!(v, json!({"approval_id": "x", "status": "pending", "status_url": "", "retry_after": 3600}));
}

#[test]
fn pending_from_the_service_round_trips_into_the_202_body() {
    let p = pending(answer(json!({"status": "pending", "approval_id": "apr_7", "status_url": "u\"rl", "retry_after": 0})));
    let v: Value = serde_json::from_slice(&p.body()).unwrap();
    assert_eq!(v, json!({"approval_id": "apr_7", "status": "pending", "status_url": "u\"rl", "retry_after": 1}));
}

#[test]
fn abandon_body_names_the_hold() {
    let v: Value = serde_json::from_slice(&abandon_body("5f0c2a9e0d7b4c1e9a3b6d8f1e2c4a7b")).unwrap();
    assert_eq!(v, json!({"hold_id": "5f0c2a9e0d7b4c1e9a3b6d8f1e2c4a7b"}));
    let v: Value = serde_json::from_slice(&abandon_body("a\"b\\c\n")).unwrap();
    assert_eq!(v, json!({"hold_id": "a\"b\\c\n"}));
    let v: Value = serde_json::from_slice(&abandon_body("")).unwrap();
    assert_eq!(v, json!({"hold_id": ""}));
}

// ---------------------------------------------------------------------------
// Configuration: resources[i].approval

/// A valid document whose only resource has this `approval` section.
fn doc_with_approval(approval: Value) -> Value {
    json!({
        "providers": [remote_provider_json("idp", ISSUER)],
        "resources": [{
            "name": "vector-store",
            "path_prefix": "/collections/",
            "read": {"any_of": ["readers"]},
            "write": {"any_of": ["writers"]},
            "approval": approval,
        }],
    })
}

/// `{"cluster": "approvals"}` with `changes` merged in (`null` removes a member).
fn approval_json(changes: Value) -> Value {
    let mut a = json!({"cluster": "approvals"});
    for (k, v) in obj(changes) {
        if v.is_null() {
            a.as_object_mut().unwrap().remove(&k);
        } else {
            a[k] = v;
        }
    }
    a
}

/// The validated approval settings of `approval_json(changes)`.
fn parsed(changes: Value) -> Rc<Approval> {
    let c = config(&doc_with_approval(approval_json(changes)));
    c.resources[0].approval.clone().expect("approval section")
}

/// Asserts the approval section is rejected with exactly one error, on `field`.
#[track_caller]
fn assert_rejected(changes: Value, field: &str) {
    let errs = config_errors(&doc_with_approval(approval_json(changes)));
    assert_eq!(errs.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), [field], "{errs:?}");
    assert!(errs[0].to_string().starts_with(&format!("{field}: ")), "{}", errs[0]);
    assert!(!errs[0].problem.is_empty());
}

#[track_caller]
fn assert_accepted(changes: Value) -> Rc<Approval> {
    parsed(changes)
}

#[test]
fn approval_defaults() {
    let a = parsed(json!({}));
    assert_eq!(a.cluster, "approvals");
    assert_eq!(a.authority, "approvals", "authority defaults to the cluster");
    assert_eq!(a.path, "/v1/check");
    assert!(a.write);
    assert!(a.requests.is_empty());
    assert!(a.exempt_groups.is_empty());
    assert_eq!(a.hold_ms, 60_000);
    assert_eq!(a.max_body_bytes, 1_048_576);
    assert_eq!(a.preview_bytes, 1024);
    assert_eq!(a.grant_uses, 1);
    assert_eq!(a.grant_window_seconds, 900);
    assert_eq!(a.secret, None);
}

#[test]
fn approval_fields_are_taken() {
    let a = parsed(json!({
        "cluster": "outbound|8080||approvals.svc",
        "authority": "approvals.example:8443",
        "path": "/hooks/check",
        "write": false,
        "requests": [{"methods": ["get", "Post"], "path_glob": "/collections/exports/**"}, {"path_glob": "/collections/admin/*"}],
        "exempt_groups": ["break-glass"],
        "hold_seconds": 5,
        "max_body_bytes": 4096,
        "preview_bytes": 0,
        "grant": {"uses": 0, "window_seconds": 60},
        "secret": "s3cr3t",
    }));
    assert_eq!(a.cluster, "outbound|8080||approvals.svc");
    assert_eq!(a.authority, "approvals.example:8443");
    assert_eq!(a.path, "/hooks/check");
    assert!(!a.write);
    assert_eq!(a.requests.len(), 2);
    assert_eq!(a.requests[0].methods, ["GET", "POST"], "methods are uppercased");
    assert!(a.requests[0].path_glob.matches(b"/collections/exports/a/b"));
    assert!(a.requests[1].methods.is_empty());
    assert!(a.requests[1].path_glob.matches(b"/collections/admin/x"));
    assert!(!a.requests[1].path_glob.matches(b"/collections/admin/x/y"));
    assert_eq!(a.exempt_groups, ["break-glass"]);
    assert_eq!(a.hold_ms, 5_000);
    assert_eq!(a.max_body_bytes, 4096);
    assert_eq!(a.preview_bytes, 0);
    assert_eq!(a.grant_uses, 0);
    assert_eq!(a.grant_window_seconds, 60);
    assert_eq!(a.secret.as_deref(), Some("s3cr3t"));
}

#[test]
fn resource_without_approval_section_has_none() {
    let c = config_with_resources(json!([{"name": "r", "path_prefix": "/", "write": {"any_of": ["w"]}}]));
    assert!(c.resources[0].approval.is_none());
}

#[test]
fn hold_seconds_range_is_1_to_240() {
    assert_rejected(json!({"hold_seconds": 0}), "resources[0].approval.hold_seconds");
    assert_rejected(json!({"hold_seconds": 241}), "resources[0].approval.hold_seconds");
    assert_rejected(json!({"hold_seconds": u64::MAX}), "resources[0].approval.hold_seconds");
    assert_eq!(assert_accepted(json!({"hold_seconds": 1})).hold_ms, 1_000);
    assert_eq!(assert_accepted(json!({"hold_seconds": 240})).hold_ms, 240_000);
    assert_eq!(nhi_gate::config::MAX_HOLD_SECONDS, 240);
}

#[test]
fn timeout_ms_defaults_to_5000_and_ranges_100_to_30000() {
    assert_eq!(assert_accepted(json!({})).timeout_ms, 5_000);
    assert_eq!(assert_accepted(json!({"timeout_ms": 100})).timeout_ms, 100);
    assert_eq!(assert_accepted(json!({"timeout_ms": 30_000})).timeout_ms, 30_000);
    assert_rejected(json!({"timeout_ms": 99}), "resources[0].approval.timeout_ms");
    assert_rejected(json!({"timeout_ms": 30_001}), "resources[0].approval.timeout_ms");
}

#[test]
fn empty_cluster_is_reported_once_when_the_authority_defaults_to_it() {
    let errs = config_errors(&doc_with_approval(json!({"cluster": ""})));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "resources[0].approval.cluster");
}

#[test]
fn cluster_is_required_and_non_empty() {
    // With an explicit authority the only problem is the cluster.
    assert_rejected(json!({"cluster": "", "authority": "approvals"}), "resources[0].approval.cluster");
    // Without one, the cluster error is reported (the authority defaults to the empty cluster).
    let errs = config_errors(&doc_with_approval(json!({"cluster": ""})));
    assert!(errs.iter().any(|e| e.field == "resources[0].approval.cluster"), "{errs:?}");
    // Missing entirely: a deserialization error on the section.
    let errs = config_errors(&doc_with_approval(json!({})));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "resources[0].approval");
    assert!(errs[0].problem.contains("cluster"), "{}", errs[0].problem);
}

#[test]
fn path_is_absolute_without_query() {
    for bad in ["v1/check", "", "/v1/check?x=1", "/v1/check?", "/v1/check#frag", "/v1 check", "/v1/\ncheck", "/v1/\u{7f}"] {
        assert_rejected(json!({"path": bad}), "resources[0].approval.path");
    }
    for good in ["/", "/v1/check", "/v1/check/", "/a-b_c.d/~e"] {
        assert_eq!(assert_accepted(json!({"path": good})).path, good);
    }
}

#[test]
fn authority_is_a_host_or_host_port() {
    for bad in ["approvals/v1", "a b", "user@approvals", "", "approvals\r\n"] {
        assert_rejected(json!({"authority": bad}), "resources[0].approval.authority");
    }
    for good in ["approvals", "approvals.svc.cluster.local:8080", "127.0.0.1:9000", "[::1]:9000"] {
        assert_eq!(assert_accepted(json!({"authority": good})).authority, good);
    }
}

#[test]
fn max_body_bytes_range_is_1_to_16_mib() {
    assert_rejected(json!({"max_body_bytes": 0}), "resources[0].approval.max_body_bytes");
    assert_rejected(json!({"max_body_bytes": 16_777_217}), "resources[0].approval.max_body_bytes");
    assert_eq!(assert_accepted(json!({"max_body_bytes": 1})).max_body_bytes, 1);
    // over Envoy's default buffer limit (1 MiB) only when the policy declares a larger one
    assert_rejected(json!({"max_body_bytes": 16_777_216}), "resources[0].approval.max_body_bytes");
    let mut d = doc_with_approval(approval_json(json!({"max_body_bytes": 16_777_216})));
    d["envoy_buffer_limit_bytes"] = json!(16_777_216);
    assert_eq!(config(&d).resources[0].approval.as_ref().map(|a| a.max_body_bytes), Some(16_777_216));
}

#[test]
fn preview_bytes_is_at_most_65536() {
    assert_rejected(json!({"preview_bytes": 65_537}), "resources[0].approval.preview_bytes");
    assert_eq!(assert_accepted(json!({"preview_bytes": 65_536})).preview_bytes, 65_536);
    assert_eq!(assert_accepted(json!({"preview_bytes": 0})).preview_bytes, 0);
}

#[test]
fn grant_uses_is_at_most_1000() {
    assert_rejected(json!({"grant": {"uses": 1001}}), "resources[0].approval.grant.uses");
    let a = assert_accepted(json!({"grant": {"uses": 1000}}));
    assert_eq!((a.grant_uses, a.grant_window_seconds), (1000, 900), "window keeps its default");
    assert_eq!(assert_accepted(json!({"grant": {"uses": 0}})).grant_uses, 0);
}

#[test]
fn grant_window_range_is_1_to_86400() {
    assert_rejected(json!({"grant": {"window_seconds": 0}}), "resources[0].approval.grant.window_seconds");
    assert_rejected(json!({"grant": {"window_seconds": 86_401}}), "resources[0].approval.grant.window_seconds");
    let a = assert_accepted(json!({"grant": {"window_seconds": 86_400}}));
    assert_eq!((a.grant_uses, a.grant_window_seconds), (1, 86_400), "uses keeps its default");
    assert_eq!(assert_accepted(json!({"grant": {"window_seconds": 1}})).grant_window_seconds, 1);
}

#[test]
fn secret_is_non_empty_visible_ascii() {
    for bad in ["a b", "", "tök", "tab\there", "nl\n", "\u{7f}"] {
        assert_rejected(json!({"secret": bad}), "resources[0].approval.secret");
    }
    let good = "s3cr3t-_.~+/=!#$%&'*";
    assert_eq!(assert_accepted(json!({"secret": good})).secret.as_deref(), Some(good));
}

#[test]
fn exempt_group_names_are_non_empty_without_whitespace() {
    for bad in ["", " ", "a b", "tab\t"] {
        assert_rejected(json!({"exempt_groups": [bad]}), "resources[0].approval.exempt_groups[0]");
    }
    assert_rejected(json!({"exempt_groups": ["ok", ""]}), "resources[0].approval.exempt_groups[1]");
}

#[test]
fn request_pattern_methods_must_be_known() {
    assert_rejected(
        json!({"requests": [{"methods": ["FETCH"], "path_glob": "/collections/x"}]}),
        "resources[0].approval.requests[0].methods[0]",
    );
    assert_rejected(
        json!({"requests": [{"path_glob": "/collections/x"}, {"methods": ["GET", "PUTT"], "path_glob": "/collections/y"}]}),
        "resources[0].approval.requests[1].methods[1]",
    );
}

#[test]
fn request_pattern_glob_must_be_absolute() {
    assert_rejected(json!({"requests": [{"path_glob": "exports/**"}]}), "resources[0].approval.requests[0].path_glob");
    assert_rejected(json!({"requests": [{"path_glob": ""}]}), "resources[0].approval.requests[0].path_glob");
    assert_rejected(json!({"requests": [{"path_glob": "*"}]}), "resources[0].approval.requests[0].path_glob");
}

#[test]
fn request_pattern_needs_a_path_glob() {
    let errs = config_errors(&doc_with_approval(approval_json(json!({"requests": [{"methods": ["GET"]}]}))));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "resources[0].approval.requests[0]");
}

#[test]
fn approval_that_holds_nothing_is_rejected() {
    assert_rejected(json!({"write": false}), "resources[0].approval");
    assert_rejected(json!({"write": false, "requests": []}), "resources[0].approval");
    // Exempt groups do not make it hold anything.
    assert_rejected(json!({"write": false, "exempt_groups": ["x"]}), "resources[0].approval");
    assert!(!assert_accepted(json!({"write": false, "requests": [{"path_glob": "/collections/x"}]})).write);
}

#[test]
fn unknown_approval_fields_are_rejected() {
    for (changes, field) in [
        (json!({"hold": 60}), "resources[0].approval.hold"),
        (json!({"grant": {"use": 2}}), "resources[0].approval.grant.use"),
        (json!({"requests": [{"path_glob": "/collections/x", "method": "GET"}]}), "resources[0].approval.requests[0].method"),
    ] {
        let errs = config_errors(&doc_with_approval(approval_json(changes)));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, field);
        assert!(errs[0].problem.contains("unknown field"), "{}", errs[0].problem);
    }
}

#[test]
fn wrong_approval_types_name_their_field() {
    for (changes, field) in [
        (json!({"hold_seconds": "60"}), "resources[0].approval.hold_seconds"),
        (json!({"hold_seconds": -1}), "resources[0].approval.hold_seconds"),
        (json!({"write": "yes"}), "resources[0].approval.write"),
        (json!({"exempt_groups": "break-glass"}), "resources[0].approval.exempt_groups"),
        (json!({"grant": {"uses": -1}}), "resources[0].approval.grant.uses"),
        (json!({"grant": {"uses": 4_294_967_296u64}}), "resources[0].approval.grant.uses"),
        (json!({"secret": 123}), "resources[0].approval.secret"),
    ] {
        let errs = config_errors(&doc_with_approval(approval_json(changes.clone())));
        assert_eq!(errs.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), [field], "{changes}: {errs:?}");
    }
    let errs = config_errors(&doc_with_approval(json!("approvals")));
    assert_eq!(errs[0].field, "resources[0].approval");
}

#[test]
fn approval_errors_name_the_resource_index_and_are_all_reported() {
    let doc = json!({
        "providers": [remote_provider_json("idp", ISSUER)],
        "resources": [
            {"name": "ok", "path_prefix": "/ok/", "read": {"any_of": ["r"]}},
            {"name": "held", "path_prefix": "/held/", "write": {"any_of": ["w"]},
             "approval": {"cluster": "approvals", "hold_seconds": 0, "preview_bytes": 70_000,
                          "grant": {"uses": 5000, "window_seconds": 0}, "secret": "a b"}},
        ],
    });
    let mut fields: Vec<String> = config_errors(&doc).into_iter().map(|e| e.field).collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "resources[1].approval.grant.uses",
            "resources[1].approval.grant.window_seconds",
            "resources[1].approval.hold_seconds",
            "resources[1].approval.preview_bytes",
            "resources[1].approval.secret",
        ]
    );
}

#[test]
fn approval_section_round_trips_through_from_value() {
    let doc = doc_with_approval(approval_json(json!({"hold_seconds": 7})));
    let c = Config::from_value(&doc).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(c.resources[0].approval.as_ref().map(|a| a.hold_ms), Some(7_000));
}

// ---------------------------------------------------------------------------
// Gate::authorize

/// Three resources: "vector-store" holds writes (exempting "break-glass",
/// search POSTs are reads), "exports" holds GETs of `/exports/**` only, and
/// "plain" has no approval.
fn gate() -> Gate {
    Gate::new(config_with_resources(json!([
        {
            "name": "vector-store",
            "path_prefix": "/collections/",
            "operations": [{"methods": ["POST"], "path_glob": "/collections/*/points/search", "class": "read"}],
            "read": {"any_of": ["readers"]},
            "write": {"any_of": ["writers"]},
            "approval": {"cluster": "approvals", "exempt_groups": ["break-glass"], "hold_seconds": 30,
                         "secret": "svc-secret", "preview_bytes": 4}
        },
        {
            "name": "exports",
            "path_prefix": "/exports/",
            "read": {"any_of": ["readers"]},
            "write": {"any_of": ["writers"]},
            "approval": {"cluster": "approvals", "write": false,
                         "requests": [{"methods": ["GET"], "path_glob": "/exports/**"}]}
        },
        {
            "name": "plain",
            "path_prefix": "/plain/",
            "read": {"any_of": ["readers"]},
            "write": {"any_of": ["writers"]}
        }
    ])))
}

fn authorize(g: &Gate, method: &str, path: &str, headers: &[Header<'_>], groups: &[&str]) -> Result<Plan, Denial> {
    g.authorize(&req(method, path), headers, identity(groups))
}

#[track_caller]
fn held(result: Result<Plan, Denial>) -> (Plan, Ticket) {
    match result {
        Ok(mut plan) => match plan.hold.take() {
            Some(t) => (plan, t),
            None => panic!("expected a hold, got {plan:?}"),
        },
        Err(d) => panic!("expected a hold, got {d:?}"),
    }
}

#[track_caller]
fn not_held(result: Result<Plan, Denial>) -> Plan {
    match result {
        Ok(plan) => {
            assert!(plan.hold.is_none(), "expected no hold: {plan:?}");
            plan
        }
        Err(d) => panic!("expected allow without hold, got {d:?}"),
    }
}

#[test]
fn write_on_a_resource_with_approval_is_held() {
    let g = gate();
    let mut id = identity(&["writers", "ci"]);
    id.jti = "jti-7".into();
    let plan = g.authorize(&req("PUT", "/collections/docs/points?wait=true"), &[], id.clone());
    let (plan, t) = held(plan);
    assert_eq!((plan.resource.as_str(), plan.operation), ("vector-store", "write"));
    assert_eq!(t.approval_id, None);
    assert_eq!(t.identity, id);
    assert_eq!(t.resource, "vector-store");
    assert_eq!(t.operation, "write");
    assert_eq!(t.method, "PUT");
    assert_eq!(t.authority, "rag.example.com:10000");
    assert_eq!(t.path, "/collections/docs/points?wait=true", "the full :path, query included");
    let configured = g.config.resources[0].approval.as_ref().expect("approval");
    assert!(Rc::ptr_eq(&t.settings.0, configured), "the ticket shares the resource's settings");
    assert_eq!(t.settings.0.hold_ms, 30_000);
}

#[test]
fn held_ticket_builds_the_callout() {
    let g = gate();
    let (_, t) = held(authorize(&g, "DELETE", "/collections/docs", &[], &["writers"]));
    let v = callout(&t, b"abcdef");
    assert_eq!(v["resource"], json!("vector-store"));
    assert_eq!(v["operation"], json!("write"));
    assert_eq!(v["method"], json!("DELETE"));
    assert_eq!(v["wait_ms"], json!(30_000));
    assert_eq!(v["body"]["preview"], json!("abcd"));
    assert_eq!(v["body"]["truncated"], json!(true));
    assert_eq!(v["grant"], json!({"uses": 1, "window_seconds": 900}));
    let h = header_map(&t.callout_headers(false));
    assert_eq!(h.get(":authority").map(String::as_str), Some("approvals"));
    assert_eq!(h.get(":path").map(String::as_str), Some("/v1/check"));
    assert_eq!(h.get("authorization").map(String::as_str), Some("Bearer svc-secret"));
}

#[test]
fn every_write_method_is_held() {
    let g = gate();
    for m in ["POST", "PUT", "PATCH", "DELETE"] {
        let (_, t) = held(authorize(&g, m, "/collections/docs/points", &[], &["writers"]));
        assert_eq!(t.method, m);
    }
}

#[test]
fn reads_are_not_held() {
    let g = gate();
    for m in ["GET", "HEAD", "OPTIONS"] {
        let plan = not_held(authorize(&g, m, "/collections/docs/points", &[], &["readers"]));
        assert_eq!(plan.operation, "read");
    }
    // A POST classed as read by an operation override is not held either.
    let plan = not_held(authorize(&g, "POST", "/collections/docs/points/search", &[], &["readers"]));
    assert_eq!(plan.operation, "read");
}

#[test]
fn exempt_groups_are_not_held() {
    let g = gate();
    not_held(authorize(&g, "PUT", "/collections/docs/points", &[], &["writers", "break-glass"]));
    // Only exact membership exempts.
    held(authorize(&g, "PUT", "/collections/docs/points", &[], &["writers", "break-glass-2"]));
}

#[test]
fn resources_without_approval_are_not_held() {
    let g = gate();
    not_held(authorize(&g, "PUT", "/plain/x", &[], &["writers"]));
    not_held(authorize(&g, "DELETE", "/plain/x", &[], &["writers"]));
    not_held(authorize(&g, "GET", "/plain/x", &[], &["readers"]));
}

#[test]
fn request_patterns_hold_reads() {
    let g = gate();
    let (plan, t) = held(authorize(&g, "GET", "/exports/daily/report.csv?fmt=csv", &[], &["readers"]));
    assert_eq!(plan.resource, "exports");
    assert_eq!((t.operation, t.method.as_str(), t.resource.as_str()), ("read", "GET", "exports"));
    assert_eq!(t.path, "/exports/daily/report.csv?fmt=csv");
    // write: false, and POST is not in the pattern.
    not_held(authorize(&g, "POST", "/exports/daily", &[], &["writers"]));
    // GET covers HEAD (frameworks run the GET handler for it)
    held(authorize(&g, "HEAD", "/exports/daily", &[], &["readers"]));
    not_held(authorize(&g, "OPTIONS", "/exports/daily", &[], &["readers"]));
}

#[test]
fn approval_header_becomes_the_ticket_approval_id() {
    let g = gate();
    for id in ["apr_3kX-9.z", "a", &"Z".repeat(128)] {
        let headers: [Header<'_>; 1] = [(APPROVAL_HEADER, id.as_bytes())];
        let (plan, t) = held(authorize(&g, "PUT", "/collections/docs/points", &headers, &["writers"]));
        assert_eq!(t.approval_id.as_deref(), Some(id));
        assert!(plan.remove.iter().any(|r| r == APPROVAL_HEADER), "{:?}", plan.remove);
        assert_eq!(callout(&t, b"")["approval_id"], json!(id));
    }
}

#[test]
fn approval_header_name_is_x_nhi_approval() {
    assert_eq!(APPROVAL_HEADER, "x-nhi-approval");
}

#[test]
fn invalid_approval_header_is_refused() {
    let g = gate();
    let long = "a".repeat(129);
    let bad: [&[u8]; 8] = [b"", b"apr 1", b"apr/1", b"apr_1,apr_2", long.as_bytes(), "aprè".as_bytes(), b"\xff", b"apr\t"];
    for value in bad {
        let headers: [Header<'_>; 1] = [(APPROVAL_HEADER, value)];
        let result = authorize(&g, "PUT", "/collections/docs/points", &headers, &["writers"]);
        assert_denied(result, 403, "approval_unknown");
    }
}

#[test]
fn two_approval_headers_are_refused() {
    let g = gate();
    for (a, b) in [(&b"apr_1"[..], &b"apr_2"[..]), (b"apr_1", b"apr_1")] {
        let headers: [Header<'_>; 2] = [(APPROVAL_HEADER, a), (APPROVAL_HEADER, b)];
        let result = authorize(&g, "PUT", "/collections/docs/points", &headers, &["writers"]);
        assert_denied(result, 403, "approval_unknown");
    }
}

#[test]
fn approval_header_is_never_forwarded() {
    let g = gate();
    let headers: [Header<'_>; 2] = [(APPROVAL_HEADER, b"apr_1"), ("content-type", b"application/json")];
    // Held, not held (read, exempt) and on a resource without approval.
    let (plan, _) = held(authorize(&g, "PUT", "/collections/docs/points", &headers, &["writers"]));
    assert!(plan.remove.iter().any(|r| r == APPROVAL_HEADER), "{:?}", plan.remove);
    for (m, path, groups) in [
        ("GET", "/collections/docs", &["readers"][..]),
        ("PUT", "/collections/docs", &["writers", "break-glass"][..]),
        ("PUT", "/plain/x", &["writers"][..]),
        ("GET", "/exports/x", &["readers"][..]),
    ] {
        let result = authorize(&g, m, path, &headers, groups);
        let plan = match result {
            Ok(p) => p,
            Err(d) => panic!("{m} {path}: {d:?}"),
        };
        assert!(plan.remove.iter().any(|r| r == APPROVAL_HEADER), "{m} {path}: {:?}", plan.remove);
        assert!(!plan.remove.iter().any(|r| r == "content-type"));
        assert!(!plan.set.iter().any(|(n, _)| n == APPROVAL_HEADER), "{:?}", plan.set);
    }
}

#[test]
fn policy_denial_comes_before_the_hold() {
    let g = gate();
    // A reader may not write: the group check refuses, nothing is held.
    assert_forbidden(authorize(&g, "PUT", "/collections/docs/points", &[], &["readers"]), "group_not_allowed");
}


#[test]
fn callout_path_has_token_like_query_values_redacted() {
    let g = gate();
    let (_, t) = held(authorize(&g, "GET", "/exports/daily?api_key=SECRET9&fmt=csv", &[], &["readers"]));
    assert_eq!(t.path, "/exports/daily?api_key=REDACTED&fmt=csv");
}
