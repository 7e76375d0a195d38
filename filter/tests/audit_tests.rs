//! `audit`: the per-request audit record (`docs/audit-record.md`), the
//! `audit` section of the configuration, and the session claim that
//! `Gate::authenticate` puts in the identity.
//!
//! Host-independent: no threads, files or network, so these also run as
//! wasm32-wasip1 (the record format is read from the docs at compile time).

mod common;

use common::*;
use jwt_simple::prelude::*;
use nhi_gate::audit::{
    redact_path, ApprovalRecord, Capture, Draft, IdentityRecord, Record, Timings, Usage, SECRET_QUERY_PARAMS, TAIL_BYTES,
};
use nhi_gate::config::{Config, ConfigError};
use nhi_gate::gate::{AuthError, Gate, TokenCache};
use nhi_gate::policy::Identity;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

// ---------------------------------------------------------------------------
// Known SHA-256 vectors (FIPS 180-2 appendix B, and common test strings)

const SHA_EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const SHA_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
const ABC_448: &str = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
const SHA_ABC_448: &str = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";
const SHA_MILLION_A: &str = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
const FOX: &str = "The quick brown fox jumps over the lazy dog";
const SHA_FOX: &str = "d7a8fbb307d7809469ca9abcb0082e4f8d5651e46d3cdb762d02d0bf37c9e592";

// ===========================================================================
// redact_path

#[test]
fn redact_path_redacts_every_secret_param() {
    assert_eq!(SECRET_QUERY_PARAMS.len(), 18);
    for name in SECRET_QUERY_PARAMS {
        let path = format!("/v1/x?{name}=s3cr3t");
        assert_eq!(redact_path(&path), format!("/v1/x?{name}=REDACTED"), "{name}");
    }
}

#[test]
fn secret_params_are_the_documented_ones() {
    let documented = ["access_token", "id_token", "refresh_token", "token", "jwt", "assertion", "api_key", "apikey", "key", "auth", "code", "sig", "signature", "x-amz-signature", "x-goog-signature", "password", "secret", "client_secret"];
    let have: BTreeSet<&str> = SECRET_QUERY_PARAMS.iter().copied().collect();
    let want: BTreeSet<&str> = documented.iter().copied().collect();
    assert_eq!(have, want);
}

#[test]
fn redact_path_redacts_secret_params_in_any_position() {
    for name in SECRET_QUERY_PARAMS {
        let path = format!("/p?a=1&{name}=xyz&b=2");
        assert_eq!(redact_path(&path), format!("/p?a=1&{name}=REDACTED&b=2"), "{name} in the middle");
        let path = format!("/p?a=1&{name}=xyz");
        assert_eq!(redact_path(&path), format!("/p?a=1&{name}=REDACTED"), "{name} last");
        let path = format!("/p?{name}=xyz&a=1");
        assert_eq!(redact_path(&path), format!("/p?{name}=REDACTED&a=1"), "{name} first");
    }
}

#[test]
fn redact_path_names_are_case_insensitive_and_keep_their_spelling() {
    assert_eq!(redact_path("/p?TOKEN=abc"), "/p?TOKEN=REDACTED");
    assert_eq!(redact_path("/p?Access_Token=abc"), "/p?Access_Token=REDACTED");
    assert_eq!(redact_path("/p?API_KEY=abc&ApiKey=def"), "/p?API_KEY=REDACTED&ApiKey=REDACTED");
    assert_eq!(redact_path("/p?PassWord=hunter2"), "/p?PassWord=REDACTED");
    for name in SECRET_QUERY_PARAMS {
        let upper = name.to_ascii_uppercase();
        assert_eq!(redact_path(&format!("/p?{upper}=v")), format!("/p?{upper}=REDACTED"));
    }
}

#[test]
fn redact_path_replaces_whole_value_even_with_equals_inside() {
    // base64 padding, or a nested query: everything after the first '=' is the value.
    assert_eq!(redact_path("/p?token=abc==&x=1"), "/p?token=REDACTED&x=1");
    assert_eq!(redact_path("/p?sig=a=b=c"), "/p?sig=REDACTED");
    assert_eq!(redact_path("/p?code=="), "/p?code=REDACTED");
    let out = redact_path("/p?signature=k=v=w&x=y");
    assert!(!out.contains("k=v"), "{out}");
    assert!(!out.contains("=w"), "{out}");
}

#[test]
fn redact_path_redacts_empty_values_too() {
    assert_eq!(redact_path("/p?token="), "/p?token=REDACTED");
    assert_eq!(redact_path("/p?a=&key=&b="), "/p?a=&key=REDACTED&b=");
}

#[test]
fn redact_path_keeps_params_without_equals() {
    // A bare name carries no value to hide.
    assert_eq!(redact_path("/p?token"), "/p?token");
    assert_eq!(redact_path("/p?flag&token=abc&other"), "/p?flag&token=REDACTED&other");
    assert_eq!(redact_path("/p?a=1&&b=2"), "/p?a=1&&b=2");
}

#[test]
fn redact_path_without_query_is_unchanged() {
    for p in ["/", "/v1/chat/completions", "/collections/docs/points", "", "/a/token=abc", "/key/secret"] {
        assert_eq!(redact_path(p), p);
    }
}

#[test]
fn redact_path_with_empty_query() {
    assert_eq!(redact_path("/p?"), "/p?");
    assert_eq!(redact_path("/p?#frag"), "/p?#frag");
}

#[test]
fn redact_path_keeps_fragment_and_redacts_query_before_it() {
    assert_eq!(redact_path("/cb?token=abc#section"), "/cb?token=REDACTED#section");
    assert_eq!(redact_path("/cb?a=1&code=xyz#f"), "/cb?a=1&code=REDACTED#f");
    assert_eq!(redact_path("/cb?a=1#"), "/cb?a=1#");
    // The fragment is not part of the last value.
    let out = redact_path("/cb?secret=abc#frag=1");
    assert_eq!(out, "/cb?secret=REDACTED#frag=1");
}

#[test]
fn redact_path_leaves_non_secret_params_untouched() {
    let p = "/search?q=hello%20world&limit=10&offset=0&keyword=abc&monkey=1&tokens=5&codec=h264&sigma=2&secrets_count=3";
    assert_eq!(redact_path(p), p);
}

#[test]
fn redact_path_does_not_confuse_prefixes_or_suffixes() {
    assert_eq!(redact_path("/p?tokenizer=cl100k"), "/p?tokenizer=cl100k");
    assert_eq!(redact_path("/p?tokenizer=cl100k&token=t"), "/p?tokenizer=cl100k&token=REDACTED");
    assert_eq!(redact_path("/p?token=t&tokenizer=cl100k"), "/p?token=REDACTED&tokenizer=cl100k");
    assert_eq!(redact_path("/p?my_token=x"), "/p?my_token=x");
    assert_eq!(redact_path("/p?keys=x&pkey=y&key_id=z"), "/p?keys=x&pkey=y&key_id=z");
    assert_eq!(redact_path("/p?max_tokens=9"), "/p?max_tokens=9");
    // A secret-looking value under a harmless name stays.
    assert_eq!(redact_path("/p?q=token=abc"), "/p?q=token=abc");
}

#[test]
fn redact_path_only_looks_after_the_first_question_mark() {
    // The second '?' is part of the query text.
    assert_eq!(redact_path("/p?a=b?token=x"), "/p?a=b?token=x");
    assert_eq!(redact_path("/p?x=1&token=a?b"), "/p?x=1&token=REDACTED");
}

#[test]
fn redact_path_redacts_repeated_params() {
    assert_eq!(redact_path("/p?token=a&token=b"), "/p?token=REDACTED&token=REDACTED");
}

// ===========================================================================
// Capture

fn sha_of(c: &Capture) -> String {
    c.request_record().sha256
}

#[test]
fn capture_hash_of_known_vectors() {
    let mut c = Capture::new(4096, false);
    assert_eq!(sha_of(&c), SHA_EMPTY, "empty body");
    c.push(b"abc");
    assert_eq!(sha_of(&c), SHA_ABC);

    let mut c = Capture::new(4096, false);
    c.push(FOX.as_bytes());
    assert_eq!(sha_of(&c), SHA_FOX);
}

#[test]
fn capture_hash_covers_all_pieces_in_order() {
    let mut c = Capture::new(4096, false);
    c.push(b"a");
    c.push(b"");
    c.push(b"b");
    c.push(b"c");
    assert_eq!(sha_of(&c), SHA_ABC);

    let mut c = Capture::new(4096, false);
    for chunk in ABC_448.as_bytes().chunks(7) {
        c.push(chunk);
    }
    assert_eq!(sha_of(&c), SHA_ABC_448);
    assert_eq!(c.size(), ABC_448.len());

    let mut c = Capture::new(4096, false);
    c.push(b"cba");
    assert_ne!(sha_of(&c), SHA_ABC, "order matters");
}

#[test]
fn capture_hash_covers_bytes_beyond_the_cap() {
    // One million 'a' in uneven pieces, with a small cap: the hash is of the whole body.
    let mut c = Capture::new(10, true);
    let piece = vec![b'a'; 999];
    let mut left = 1_000_000usize;
    while left > 0 {
        let n = left.min(piece.len());
        c.push(&piece[..n]);
        left -= n;
    }
    let r = c.request_record();
    assert_eq!(r.sha256, SHA_MILLION_A);
    assert_eq!(r.size, 1_000_000);
    assert_eq!(r.text, "aaaaaaaaaa");
    assert!(r.truncated);
    assert_eq!(c.tail().len(), TAIL_BYTES);
}

#[test]
fn capture_hash_with_cap_zero() {
    let mut c = Capture::new(0, false);
    c.push(b"ab");
    c.push(b"c");
    let r = c.request_record();
    assert_eq!(r.sha256, SHA_ABC);
    assert_eq!(r.size, 3);
    assert_eq!(r.text, "");
    assert!(r.truncated);
}

#[test]
fn capture_cap_zero_empty_body_is_not_truncated() {
    let c = Capture::new(0, false);
    let r = c.request_record();
    assert_eq!((r.size, r.text.as_str(), r.truncated), (0, "", false));
    let r = c.response_record();
    assert_eq!((r.size, r.text.as_str(), r.truncated), (0, "", false));
}

#[test]
fn capture_record_is_repeatable_and_pushes_continue_after_it() {
    let mut c = Capture::new(4096, false);
    c.push(b"ab");
    let first = c.request_record();
    assert_eq!(first, c.request_record(), "reading the record does not consume the hash");
    c.push(b"c");
    assert_eq!(sha_of(&c), SHA_ABC, "the hash still covers every piece");
}

#[test]
fn capture_head_is_cut_at_cap() {
    let mut c = Capture::new(10, false);
    c.push(b"hello");
    c.push(b"world!!!");
    let r = c.request_record();
    assert_eq!(r.text, "helloworld");
    assert_eq!(r.size, 13);
    assert!(r.truncated);
    let r = c.response_record();
    assert_eq!(r.text, "helloworld");
    assert_eq!(r.size, 13);
    assert!(r.truncated);
}

#[test]
fn capture_cut_inside_a_single_piece() {
    let mut c = Capture::new(4, false);
    c.push(b"abcdefgh");
    let r = c.request_record();
    assert_eq!((r.text.as_str(), r.size, r.truncated), ("abcd", 8, true));
}

#[test]
fn capture_pieces_after_the_cap_add_nothing_to_text() {
    let mut c = Capture::new(3, false);
    c.push(b"abc");
    c.push(b"def");
    c.push(b"g");
    let r = c.response_record();
    assert_eq!((r.text.as_str(), r.size, r.truncated), ("abc", 7, true));
}

#[test]
fn capture_exactly_at_cap_is_not_truncated() {
    let mut c = Capture::new(6, false);
    c.push(b"abc");
    c.push(b"def");
    let r = c.request_record();
    assert_eq!((r.text.as_str(), r.size, r.truncated), ("abcdef", 6, false));
    c.push(b"g");
    let r = c.request_record();
    assert_eq!((r.text.as_str(), r.size, r.truncated), ("abcdef", 7, true), "one byte over the cap");
}

#[test]
fn capture_under_cap_keeps_everything() {
    let mut c = Capture::new(4096, false);
    c.push(b"{\"points\":");
    c.push(b"[1,2]}");
    let r = c.request_record();
    assert_eq!((r.text.as_str(), r.size, r.truncated), ("{\"points\":[1,2]}", 16, false));
    assert_eq!(r.sha256, sha256_hex(b"{\"points\":[1,2]}"));
}

#[test]
fn capture_empty_pushes_change_nothing() {
    let mut c = Capture::new(2, true);
    c.push(b"");
    c.push(b"");
    assert_eq!(c.size(), 0);
    assert!(c.tail().is_empty());
    let r = c.request_record();
    assert_eq!((r.text.as_str(), r.size, r.truncated, r.sha256.as_str()), ("", 0, false, SHA_EMPTY));
}

#[test]
fn capture_size_counts_every_byte() {
    let mut c = Capture::new(1, false);
    assert_eq!(c.size(), 0);
    c.push(&[0u8; 100]);
    assert_eq!(c.size(), 100);
    c.push(&[1u8; 23]);
    assert_eq!(c.size(), 123);
}

/// A deterministic pseudo-random byte stream (xorshift), so runs are reproducible.
fn stream(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn capture_tail_keeps_exactly_the_last_bytes_across_many_pushes() {
    let body = stream(3 * TAIL_BYTES + 1234, 0x9e37_79b9_7f4a_7c15);
    let mut c = Capture::new(16, true);
    let mut at = 0usize;
    let mut i = 0usize;
    while at < body.len() {
        // Piece sizes 0, 1, 2, … 97, then again: many pushes smaller and larger than nothing.
        let n = (i % 98).min(body.len() - at);
        c.push(&body[at..at + n]);
        at += n;
        i += 1;
        let want_start = at.saturating_sub(TAIL_BYTES);
        assert_eq!(c.tail(), &body[want_start..at], "after {at} bytes");
    }
    assert!(i > 100, "many pushes");
    assert_eq!(c.tail().len(), TAIL_BYTES);
    assert_eq!(c.tail(), &body[body.len() - TAIL_BYTES..]);
    assert_eq!(c.request_record().sha256, sha256_hex(&body));
    assert_eq!(c.size(), body.len());
}

#[test]
fn capture_tail_with_single_large_push() {
    let body = stream(TAIL_BYTES * 2 + 7, 42);
    let mut c = Capture::new(0, true);
    c.push(&body);
    assert_eq!(c.tail(), &body[body.len() - TAIL_BYTES..]);
}

#[test]
fn capture_tail_boundaries() {
    let body = stream(TAIL_BYTES + 1, 7);
    let mut c = Capture::new(0, true);
    c.push(&body[..TAIL_BYTES]);
    assert_eq!(c.tail(), &body[..TAIL_BYTES], "exactly TAIL_BYTES: all of it");
    c.push(&body[TAIL_BYTES..]);
    assert_eq!(c.tail(), &body[1..], "one more byte pushes the first out");
}

#[test]
fn capture_tail_of_short_body_is_the_whole_body() {
    let mut c = Capture::new(2, true);
    c.push(b"data: {\"usage\":");
    c.push(b"{\"total_tokens\":3}}\n\n");
    assert_eq!(c.tail(), b"data: {\"usage\":{\"total_tokens\":3}}\n\n");
}

#[test]
fn capture_tail_is_independent_of_cap() {
    let body = stream(TAIL_BYTES + 500, 3);
    for cap in [0, 1, 100, TAIL_BYTES, 10 * TAIL_BYTES] {
        let mut c = Capture::new(cap, true);
        for chunk in body.chunks(333) {
            c.push(chunk);
        }
        assert_eq!(c.tail(), &body[500..], "cap {cap}");
    }
}

#[test]
fn capture_without_tail_keeps_no_tail() {
    let mut c = Capture::new(4096, false);
    c.push(b"some body");
    assert!(c.tail().is_empty());
}

#[test]
fn capture_reset_forgets_everything_but_keeps_settings() {
    let mut c = Capture::new(4, true);
    c.push(b"xyzzy-plugh");
    c.reset();
    assert_eq!(c.size(), 0);
    assert!(c.tail().is_empty());
    let r = c.request_record();
    assert_eq!((r.text.as_str(), r.size, r.truncated, r.sha256.as_str()), ("", 0, false, SHA_EMPTY));

    c.push(b"abc");
    let r = c.request_record();
    assert_eq!(r.sha256, SHA_ABC, "hash restarts");
    assert_eq!((r.text.as_str(), r.size, r.truncated), ("abc", 3, false));
    assert_eq!(c.tail(), b"abc", "tail still kept after reset");
    c.push(b"de");
    let r = c.request_record();
    assert_eq!((r.text.as_str(), r.truncated), ("abcd", true), "cap still 4 after reset");

    let mut c = Capture::new(10, false);
    c.push(b"abc");
    c.reset();
    c.push(b"abc");
    assert!(c.tail().is_empty(), "no tail stays no tail");
}

#[test]
fn capture_invalid_utf8_is_lossy_without_panic() {
    let mut c = Capture::new(4096, true);
    c.push(&[0xff, 0xfe, b'a']);
    c.push(&[0xc3]); // a lone lead byte
    let r = c.request_record();
    assert_eq!(r.text, "\u{FFFD}\u{FFFD}a\u{FFFD}");
    assert_eq!(r.size, 4);
    assert!(!r.truncated);
    assert_eq!(r.sha256, sha256_hex(&[0xff, 0xfe, b'a', 0xc3]), "hash is of the raw bytes");
    assert_eq!(c.response_record().text, "\u{FFFD}\u{FFFD}a\u{FFFD}");
    assert_eq!(c.tail(), &[0xff, 0xfe, b'a', 0xc3]);
}

#[test]
fn capture_utf8_split_across_pushes_is_joined() {
    // "é" = C3 A9 arriving in two pieces.
    let mut c = Capture::new(4096, false);
    c.push(b"caf\xc3");
    c.push(b"\xa9");
    assert_eq!(c.request_record().text, "café");
}

#[test]
fn capture_cut_inside_a_utf8_sequence_does_not_panic() {
    let mut c = Capture::new(4, false);
    c.push("abc€".as_bytes()); // € is 3 bytes: the cap falls inside it
    let r = c.request_record();
    assert!(r.text.starts_with("abc"), "{:?}", r.text);
    assert!(!r.text.contains('€'));
    assert_eq!(r.size, 6);
    assert!(r.truncated);
}

#[test]
fn capture_random_bytes_never_panic() {
    for seed in 1..40u64 {
        let body = stream((seed as usize) * 97, seed);
        let mut c = Capture::new((seed as usize) * 13, seed % 2 == 0);
        for chunk in body.chunks((seed as usize % 17) + 1) {
            c.push(chunk);
        }
        let r = c.request_record();
        assert_eq!(r.size, body.len());
        assert_eq!(r.truncated, body.len() > (seed as usize) * 13);
        assert_eq!(r.sha256, sha256_hex(&body));
        let _ = c.response_record();
    }
}

// ===========================================================================
// IdentityRecord

fn identity() -> Identity {
    Identity {
        provider: "dev-idp".into(),
        issuer: "http://127.0.0.1:9400".into(),
        subject: "ci-ingest".into(),
        groups: vec!["rag-ingest".into(), "readers".into()],
        scopes: vec!["rag.write".into()],
        groups_overage: false,
        jti: "jti-1".into(),
        azp: "client-7".into(),
        session: Some("run-4711".into()),
        claims: Default::default(),
    }
}

/// SHA-256 hex via the crate's own dependency, for bodies without a published vector.
fn sha256_hex(data: &[u8]) -> String {
    hmac_sha256::Hash::hash(data).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn identity_record_copies_identity_and_hashes_token() {
    let id = identity();
    let r = IdentityRecord::new(&id, "abc");
    assert_eq!(r.provider, "dev-idp");
    assert_eq!(r.issuer, "http://127.0.0.1:9400");
    assert_eq!(r.subject, "ci-ingest");
    assert_eq!(r.jti, "jti-1");
    assert_eq!(r.groups, ["rag-ingest", "readers"]);
    assert_eq!(r.azp, "client-7");
    assert_eq!(r.token_sha256, SHA_ABC);
}

#[test]
fn identity_record_never_holds_the_token() {
    let token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjaS1pbmdlc3QifQ.c2lnbmF0dXJl";
    let r = IdentityRecord::new(&identity(), token);
    assert_eq!(r.token_sha256, sha256_hex(token.as_bytes()));
    assert_eq!(r.token_sha256.len(), 64);
    assert!(r.token_sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "lowercase hex");
    let text = serde_json::to_string(&r).unwrap();
    assert!(!text.contains(token), "{text}");
    for seg in token.split('.') {
        assert!(!text.contains(seg), "no token segment in {text}");
    }
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["token_sha256"], json!(sha256_hex(token.as_bytes())));
    let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["provider", "issuer", "subject", "jti", "groups", "azp", "token_sha256"]));
}

#[test]
fn identity_record_hash_depends_on_token() {
    let a = IdentityRecord::new(&identity(), "token-a");
    let b = IdentityRecord::new(&identity(), "token-b");
    assert_ne!(a.token_sha256, b.token_sha256);
    assert_eq!(IdentityRecord::new(&identity(), "").token_sha256, SHA_EMPTY);
}

// ===========================================================================
// Draft::finish and Draft::request_part

const T0: u64 = 1_764_430_000_123;

fn draft() -> Draft {
    Draft::new(T0, "req-1".into(), "PUT".into(), "127.0.0.1:10000".into(), "/collections/docs/points?api_key=k", (16, 16))
}

fn finish(d: &Draft, now: u64, status: u32) -> Record {
    d.finish(now, "gateway-1".into(), status, BTreeMap::new(), None)
}

fn usage() -> Usage {
    Usage { prompt_tokens: 12, completion_tokens: 30, total_tokens: 42, estimated: false }
}

#[test]
fn draft_new_redacts_path_and_copies_request_facts() {
    let d = draft();
    assert_eq!(d.path, "/collections/docs/points?api_key=REDACTED");
    let r = finish(&d, T0 + 5, 200);
    assert_eq!(r.path, "/collections/docs/points?api_key=REDACTED");
    assert_eq!(r.version, 1);
    assert_eq!(r.time_ms, T0);
    assert_eq!(r.request_id, "req-1");
    assert_eq!(r.method, "PUT");
    assert_eq!(r.authority, "127.0.0.1:10000");
    assert_eq!(r.node, "gateway-1");
}

#[test]
fn finish_allowed_is_allow_with_null_reason() {
    let mut d = draft();
    d.forwarded_ms = Some(T0);
    let r = finish(&d, T0 + 1, 200);
    assert_eq!(r.decision, "allow");
    assert_eq!(r.reason, None);
    assert_eq!(r.status, Some(200));
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["decision"], json!("allow"));
    assert_eq!(v["reason"], Value::Null);
}

#[test]
fn finish_refused_is_deny_with_reason() {
    let mut d = draft();
    d.refused = Some((403, "group_not_allowed"));
    let r = finish(&d, T0 + 1, 403);
    assert_eq!((r.decision, r.reason.as_deref(), r.status), ("deny", Some("group_not_allowed"), Some(403)));

    d.refused = Some((429, "quota_exceeded"));
    let r = finish(&d, T0 + 1, 429);
    assert_eq!((r.decision, r.reason.as_deref(), r.status), ("deny", Some("quota_exceeded"), Some(429)));

    d.refused = Some((503, "audit_unavailable"));
    let r = finish(&d, T0 + 1, 503);
    assert_eq!((r.decision, r.reason.as_deref()), ("deny", Some("audit_unavailable")));
}

#[test]
fn finish_pending_is_pending_with_approval_pending() {
    let mut d = draft();
    d.pending = true;
    let r = finish(&d, T0 + 1, 202);
    assert_eq!((r.decision, r.reason.as_deref(), r.status), ("pending", Some("approval_pending"), Some(202)));
}

#[test]
fn finish_status_is_what_the_client_got() {
    let d = draft();
    for s in [0u32, 200, 204, 404, 500, 502] {
        assert_eq!(finish(&d, T0, s).status, Some(s));
    }
}

#[test]
fn finish_copies_the_rest_of_the_draft() {
    let mut d = draft();
    d.source = "127.0.0.1:53412".into();
    d.identity = Some(IdentityRecord::new(&identity(), "tok"));
    d.session = Some("run-4711".into());
    d.resource = Some("vector-store".into());
    d.operation = Some("write");
    let mut masking = BTreeMap::new();
    masking.insert("email".to_string(), 2u64);
    masking.insert("us_ssn".to_string(), 1u64);
    let r = d.finish(T0 + 10, "node-9".into(), 200, masking.clone(), Some(usage()));
    assert_eq!(r.source, "127.0.0.1:53412");
    assert_eq!(r.identity, Some(IdentityRecord::new(&identity(), "tok")));
    assert_eq!(r.session.as_deref(), Some("run-4711"));
    assert_eq!(r.resource.as_deref(), Some("vector-store"));
    assert_eq!(r.operation, Some("write"));
    assert_eq!(r.node, "node-9");
    assert_eq!(r.masking, masking);
    assert_eq!(r.usage, Some(usage()));
}

#[test]
fn finish_approval_undecided_and_unfinished_is_abandoned() {
    let mut d = draft();
    d.approval = Some(ApprovalRecord { hold_id: "h1".into(), ..Default::default() });
    d.response_done = false;
    let r = finish(&d, T0 + 1, 0);
    let a = r.approval.expect("approval");
    assert_eq!(a.outcome, Some("abandoned"));
    assert_eq!(a.hold_id, "h1");
    // The draft itself is not changed by finishing.
    assert_eq!(d.approval.as_ref().unwrap().outcome, None);
}

#[test]
fn finish_approval_undecided_but_response_completed_stays_null() {
    let mut d = draft();
    d.approval = Some(ApprovalRecord { hold_id: "h1".into(), ..Default::default() });
    d.response_done = true;
    let r = finish(&d, T0 + 1, 200);
    assert_eq!(r.approval.unwrap().outcome, None);
}

#[test]
fn finish_decided_approval_is_never_overwritten() {
    for outcome in ["approved", "denied", "pending", "unavailable"] {
        for done in [false, true] {
            let mut d = draft();
            let rec = ApprovalRecord {
                hold_id: "h2".into(),
                approval_id: Some("apr_1".into()),
                outcome: Some(outcome),
                approver: Some("alice".into()),
                decided_ms: Some(T0 + 4000),
            };
            d.approval = Some(rec.clone());
            d.response_done = done;
            assert_eq!(finish(&d, T0 + 5000, 200).approval, Some(rec), "{outcome} done={done}");
        }
    }
}

#[test]
fn finish_without_approval_has_null_approval() {
    let mut d = draft();
    d.response_done = false;
    assert_eq!(finish(&d, T0, 0).approval, None);
    d.response_done = true;
    assert_eq!(finish(&d, T0, 200).approval, None);
}

#[test]
fn finish_aborted_is_whether_the_response_did_not_complete() {
    let mut d = draft();
    d.response_done = false;
    assert!(finish(&d, T0 + 1, 0).aborted);
    d.response_done = true;
    assert!(!finish(&d, T0 + 1, 200).aborted);
}

#[test]
fn finish_timings() {
    let mut d = Draft::new(1000, "r".into(), "GET".into(), "a".into(), "/", (0, 0));
    d.auth_ms = 3;
    d.approval_wait_ms = 3900;
    d.forwarded_ms = Some(4903);
    let r = finish(&d, 4915, 200);
    assert_eq!(r.timings_ms, Timings { auth: 3, approval_wait: 3900, upstream: 12, total: 3915 });
}

#[test]
fn finish_timings_upstream_zero_when_never_forwarded() {
    let mut d = Draft::new(1000, "r".into(), "GET".into(), "a".into(), "/", (0, 0));
    d.auth_ms = 1;
    d.refused = Some((403, "group_not_allowed"));
    let r = finish(&d, 1250, 403);
    assert_eq!(r.timings_ms, Timings { auth: 1, approval_wait: 0, upstream: 0, total: 250 });
}

#[test]
fn finish_timings_saturate_on_clock_going_back() {
    let mut d = Draft::new(1000, "r".into(), "GET".into(), "a".into(), "/", (0, 0));
    d.forwarded_ms = Some(900);
    let r = finish(&d, 500, 200);
    assert_eq!((r.timings_ms.total, r.timings_ms.upstream), (0, 0));
    d.forwarded_ms = Some(2000);
    let r = finish(&d, 1500, 200);
    assert_eq!((r.timings_ms.total, r.timings_ms.upstream), (500, 0));
}

#[test]
fn finish_bodies_null_unless_seen() {
    let mut d = draft();
    d.request.push(b"abc");
    d.response.push(b"xyz");
    let r = finish(&d, T0, 200);
    assert_eq!(r.request_body, None, "pushed but not marked seen");
    assert_eq!(r.response_body, None);

    d.request_seen = true;
    let r = finish(&d, T0, 200);
    let rb = r.request_body.expect("request body");
    assert_eq!((rb.sha256.as_str(), rb.size, rb.text.as_str(), rb.truncated), (SHA_ABC, 3, "abc", false));
    assert_eq!(r.response_body, None);

    d.request_seen = false;
    d.response_seen = true;
    let r = finish(&d, T0, 200);
    assert_eq!(r.request_body, None);
    let sb = r.response_body.expect("response body");
    assert_eq!((sb.size, sb.text.as_str(), sb.truncated), (3, "xyz", false));
}

#[test]
fn finish_seen_empty_bodies_are_objects() {
    let mut d = draft();
    d.request_seen = true;
    d.response_seen = true;
    let r = finish(&d, T0, 200);
    let rb = r.request_body.expect("seen");
    assert_eq!((rb.sha256.as_str(), rb.size, rb.text.as_str(), rb.truncated), (SHA_EMPTY, 0, "", false));
    let sb = r.response_body.expect("seen");
    assert_eq!((sb.size, sb.text.as_str(), sb.truncated), (0, "", false));
}

#[test]
fn draft_caps_apply_to_request_and_response_separately() {
    let mut d = Draft::new(T0, "r".into(), "POST".into(), "a".into(), "/", (3, 5));
    d.request.push(b"0123456789");
    d.response.push(b"abcdefghij");
    d.request_seen = true;
    d.response_seen = true;
    let r = finish(&d, T0, 200);
    let rb = r.request_body.unwrap();
    assert_eq!((rb.text.as_str(), rb.size, rb.truncated), ("012", 10, true));
    assert_eq!(rb.sha256, sha256_hex(b"0123456789"));
    let sb = r.response_body.unwrap();
    assert_eq!((sb.text.as_str(), sb.size, sb.truncated), ("abcde", 10, true));
}

#[test]
fn draft_keeps_a_response_tail_but_no_request_tail() {
    let mut d = draft();
    d.request.push(b"prompt");
    d.response.push(b"answer");
    assert!(d.request.tail().is_empty());
    assert_eq!(d.response.tail(), b"answer");
}

#[test]
fn request_part_has_no_status_no_response_and_is_not_aborted() {
    let mut d = draft();
    d.identity = Some(IdentityRecord::new(&identity(), "tok"));
    d.resource = Some("vector-store".into());
    d.operation = Some("write");
    d.session = Some("run-1".into());
    d.auth_ms = 2;
    d.request.push(b"abc");
    d.request_seen = true;
    d.response.push(b"should not appear");
    d.response_seen = true;
    d.response_done = false;
    let mut masking = BTreeMap::new();
    masking.insert("email".to_string(), 1u64);
    let r = d.request_part(T0 + 7, "gateway-1".into(), masking.clone());
    assert_eq!(r.status, None);
    assert!(!r.aborted);
    assert_eq!(r.response_body, None);
    assert_eq!(r.usage, None);
    assert_eq!(r.decision, "allow");
    assert_eq!(r.reason, None);
    assert_eq!(r.masking, masking);
    assert_eq!(r.node, "gateway-1");
    assert_eq!(r.request_id, "req-1");
    assert_eq!(r.resource.as_deref(), Some("vector-store"));
    assert_eq!(r.session.as_deref(), Some("run-1"));
    assert_eq!(r.timings_ms.total, 7);
    assert_eq!(r.timings_ms.auth, 2);
    let rb = r.request_body.clone().expect("request body is in the request part");
    assert_eq!((rb.sha256.as_str(), rb.size), (SHA_ABC, 3));

    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(keys(&v), record_keys(), "the request part has every key too");
    assert_eq!(v["status"], Value::Null);
    assert_eq!(v["response_body"], Value::Null);
    assert_eq!(v["aborted"], json!(false));
    assert_eq!(v["decision"], json!("allow"));
}

#[test]
fn request_part_upstream_timing_is_zero() {
    let mut d = Draft::new(1000, "r".into(), "POST".into(), "a".into(), "/", (0, 0));
    d.forwarded_ms = Some(1100);
    let r = d.request_part(1300, "n".into(), BTreeMap::new());
    assert_eq!(r.timings_ms.upstream, 0);
    assert_eq!(r.timings_ms.total, 300);
}

#[test]
fn request_part_then_final_record_differ_only_in_response_facts() {
    let mut d = draft();
    d.request.push(b"abc");
    d.request_seen = true;
    let part = d.request_part(T0 + 1, "n".into(), BTreeMap::new());
    d.response.push(b"ok");
    d.response_seen = true;
    d.response_done = true;
    let fin = d.finish(T0 + 2, "n".into(), 200, BTreeMap::new(), Some(usage()));
    assert_eq!(part.request_id, fin.request_id);
    assert_eq!(part.request_body, fin.request_body);
    assert_eq!((part.status, fin.status), (None, Some(200)));
    assert!(part.response_body.is_none() && fin.response_body.is_some());
    assert!(!fin.aborted);
}

// ===========================================================================
// The serialized record

/// The JSON example of `docs/audit-record.md` (read at compile time).
fn documented_example() -> Value {
    const DOC: &str = include_str!("../../docs/audit-record.md");
    let start = DOC.find("```json\n").expect("a json block in docs/audit-record.md") + "```json\n".len();
    let len = DOC[start..].find("```").expect("end of the json block");
    serde_json::from_str(&DOC[start..start + len]).expect("the documented record is JSON")
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().cloned().collect()
}

const RECORD_KEYS: [&str; 22] = [
    "version",
    "time_ms",
    "request_id",
    "node",
    "identity",
    "session",
    "source",
    "resource",
    "operation",
    "method",
    "authority",
    "path",
    "decision",
    "reason",
    "status",
    "approval",
    "request_body",
    "response_body",
    "masking",
    "usage",
    "timings_ms",
    "aborted",
];

fn record_keys() -> BTreeSet<String> {
    RECORD_KEYS.iter().map(|s| s.to_string()).collect()
}

fn full_record() -> Record {
    let mut d = Draft::new(T0, "b7c1".into(), "PUT".into(), "127.0.0.1:10000".into(), "/collections/docs/points", (4096, 4096));
    d.source = "127.0.0.1:53412".into();
    d.identity = Some(IdentityRecord::new(&identity(), "the.raw.jwt"));
    d.session = Some("run-4711".into());
    d.resource = Some("vector-store".into());
    d.operation = Some("write");
    d.approval = Some(ApprovalRecord {
        hold_id: "h".into(),
        approval_id: Some("apr_1".into()),
        outcome: Some("approved"),
        approver: Some("alice".into()),
        decided_ms: Some(T0 + 4000),
    });
    d.request.push(b"{\"points\":[]}");
    d.request_seen = true;
    d.response.push(b"{\"result\":\"[EMAIL]\"}");
    d.response_seen = true;
    d.response_done = true;
    d.auth_ms = 0;
    d.approval_wait_ms = 3900;
    d.forwarded_ms = Some(T0 + 3903);
    let mut masking = BTreeMap::new();
    masking.insert("email".to_string(), 2u64);
    d.finish(T0 + 3915, "gateway-1".into(), 200, masking, Some(usage()))
}

fn empty_record() -> Record {
    let mut d = Draft::new(T0, String::new(), "GET".into(), String::new(), "/", (0, 0));
    d.forwarded_ms = Some(T0);
    d.finish(T0, String::new(), 0, BTreeMap::new(), None)
}

#[test]
fn documented_example_has_the_record_keys() {
    let doc = documented_example();
    assert_eq!(keys(&doc), record_keys());
}

#[test]
fn full_record_serializes_with_the_documented_shape() {
    let doc = documented_example();
    let v = serde_json::to_value(full_record()).unwrap();
    assert_eq!(keys(&v), keys(&doc));
    for nested in ["identity", "approval", "request_body", "response_body", "usage", "timings_ms"] {
        assert_eq!(keys(&v[nested]), keys(&doc[nested]), "keys of {nested}");
    }
    assert_eq!(
        v,
        json!({
            "version": 1,
            "time_ms": T0,
            "request_id": "b7c1",
            "node": "gateway-1",
            "identity": {"provider": "dev-idp", "issuer": "http://127.0.0.1:9400", "subject": "ci-ingest",
                         "jti": "jti-1", "groups": ["rag-ingest", "readers"], "azp": "client-7",
                         "token_sha256": sha256_hex(b"the.raw.jwt")},
            "session": "run-4711",
            "source": "127.0.0.1:53412",
            "resource": "vector-store",
            "operation": "write",
            "method": "PUT",
            "authority": "127.0.0.1:10000",
            "path": "/collections/docs/points",
            "decision": "allow",
            "reason": null,
            "status": 200,
            "approval": {"hold_id": "h", "approval_id": "apr_1", "outcome": "approved", "approver": "alice", "decided_ms": T0 + 4000},
            "request_body": {"sha256": sha256_hex(b"{\"points\":[]}"), "size": 13, "text": "{\"points\":[]}", "truncated": false},
            "response_body": {"size": 20, "text": "{\"result\":\"[EMAIL]\"}", "truncated": false},
            "masking": {"email": 2},
            "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42, "estimated": false},
            "timings_ms": {"auth": 0, "approval_wait": 3900, "upstream": 12, "total": 3915},
            "aborted": false,
        })
    );
}

#[test]
fn field_types_match_the_documented_example() {
    fn kind(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }
    let doc = documented_example();
    let v = serde_json::to_value(full_record()).unwrap();
    for k in keys(&doc) {
        assert_eq!(kind(&v[&k]), kind(&doc[&k]), "type of {k}");
        if let Value::Object(m) = &doc[&k] {
            if k == "masking" {
                continue;
            }
            for nk in m.keys() {
                assert_eq!(kind(&v[&k][nk]), kind(&doc[&k][nk]), "type of {k}.{nk}");
            }
        }
    }
}

#[test]
fn a_request_never_forwarded_nor_refused_is_undecided() {
    // the client hung up while the filter waited (JWKS keys, an approval, …)
    let r = finish(&draft(), T0 + 1, 0);
    assert_eq!((r.decision, r.reason.as_deref()), ("undecided", Some("client_aborted")));
    assert!(r.aborted);
    // the request part of a sync audit is sent just before forwarding: allow
    let p = draft().request_part(T0 + 1, "n".into(), BTreeMap::new());
    assert_eq!((p.decision, p.reason), ("allow", None));
}

#[test]
fn empty_record_keeps_every_key_with_nulls() {
    let text = serde_json::to_string(&empty_record()).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(keys(&v), record_keys(), "nulls are not omitted: {text}");
    for k in ["identity", "session", "resource", "operation", "reason", "approval", "request_body", "response_body", "usage"] {
        assert_eq!(v[k], Value::Null, "{k} in {text}");
        assert!(text.contains(&format!("\"{k}\":null")), "{k} written as null in {text}");
    }
    assert_eq!(v["status"], json!(0));
    assert_eq!(v["masking"], json!({}));
    assert_eq!(v["aborted"], json!(true));
    assert_eq!(v["version"], json!(1));
    assert_eq!(v["source"], json!(""));
    assert_eq!(v["timings_ms"], json!({"auth": 0, "approval_wait": 0, "upstream": 0, "total": 0}));
}

#[test]
fn undecided_approval_keeps_every_key_with_nulls() {
    let mut d = draft();
    d.approval = Some(ApprovalRecord { hold_id: "h".into(), ..Default::default() });
    d.response_done = true;
    let v = serde_json::to_value(finish(&d, T0, 200)).unwrap();
    assert_eq!(
        v["approval"],
        json!({"hold_id": "h", "approval_id": null, "outcome": null, "approver": null, "decided_ms": null})
    );
}

#[test]
fn serialized_record_never_contains_the_token() {
    let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzZWNyZXQtc3ViIn0.QUJDREVGR0hJSktMTU5PUA";
    let mut d = Draft::new(T0, "r".into(), "GET".into(), "a".into(), &format!("/x?access_token={token}"), (64, 64));
    d.identity = Some(IdentityRecord::new(&identity(), token));
    let text = serde_json::to_string(&finish(&d, T0, 200)).unwrap();
    assert!(!text.contains(token), "{text}");
    for seg in token.split('.') {
        assert!(!text.contains(seg), "segment {seg} in {text}");
    }
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["identity"]["token_sha256"], json!(sha256_hex(token.as_bytes())));
    assert_eq!(v["path"], json!("/x?access_token=REDACTED"));
}

// ===========================================================================
// Config: the `audit` section

fn base() -> Value {
    json!({
        "providers": [remote_provider_json("idp", ISSUER)],
        "resources": [{"name": "docs", "path_prefix": "/docs", "read": {"any_of": ["readers"]}}],
    })
}

fn with_audit(audit: Value) -> Value {
    let mut doc = base();
    doc["audit"] = audit;
    doc
}

fn with_collector(collector: Value) -> Value {
    with_audit(json!({ "collector": collector }))
}

fn parse(doc: &Value) -> Result<Config, Vec<ConfigError>> {
    Config::from_json(doc.to_string().as_bytes())
}

/// Asserts exactly one error, on `field`, whose Display names the field.
#[track_caller]
fn assert_rejected(doc: &Value, field: &str) {
    let errs = config_errors(doc);
    assert_eq!(errs.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), [field], "{errs:?}");
    assert!(errs[0].to_string().starts_with(&format!("{field}: ")), "{}", errs[0]);
    assert!(!errs[0].problem.is_empty());
}

#[test]
fn audit_defaults_without_section() {
    let c = config(&base());
    assert_eq!(c.audit.max_request_bytes, 4096);
    assert_eq!(c.audit.max_response_bytes, 4096);
    assert!(c.audit.collector.is_none());
    assert!(c.audit.session_claim.is_none());
    assert!(c.resources.iter().all(|r| !r.sync_audit));
}

#[test]
fn audit_defaults_with_empty_section() {
    let c = config(&with_audit(json!({})));
    assert_eq!((c.audit.max_request_bytes, c.audit.max_response_bytes), (4096, 4096));
    assert!(c.audit.collector.is_none());
    assert!(c.audit.session_claim.is_none());
}

#[test]
fn audit_session_claim_is_a_dot_path() {
    let c = config(&with_audit(json!({"session_claim": "run_id"})));
    assert_eq!(c.audit.session_claim, Some(vec!["run_id".to_string()]));
    let c = config(&with_audit(json!({"session_claim": "ci.pipeline.run"})));
    assert_eq!(c.audit.session_claim, Some(vec!["ci".to_string(), "pipeline".to_string(), "run".to_string()]));
}

#[test]
fn audit_session_claim_with_empty_names_is_rejected() {
    for bad in ["a..b", "", ".a", "a.", "."] {
        assert_rejected(&with_audit(json!({ "session_claim": bad })), "audit.session_claim");
    }
}

#[test]
fn audit_session_claim_wrong_type_is_rejected() {
    let errs = config_errors(&with_audit(json!({"session_claim": 5})));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "audit.session_claim");
}

#[test]
fn audit_caps() {
    let c = config(&with_audit(json!({"max_request_bytes": 0, "max_response_bytes": 1_048_576})));
    assert_eq!((c.audit.max_request_bytes, c.audit.max_response_bytes), (0, 1 << 20));
    let c = config(&with_audit(json!({"max_request_bytes": 1_048_576, "max_response_bytes": 17})));
    assert_eq!((c.audit.max_request_bytes, c.audit.max_response_bytes), (1 << 20, 17));
}

#[test]
fn audit_caps_over_one_mib_are_rejected() {
    assert_rejected(&with_audit(json!({"max_request_bytes": 1_048_577})), "audit.max_request_bytes");
    assert_rejected(&with_audit(json!({"max_response_bytes": 1_048_577})), "audit.max_response_bytes");
    assert_rejected(&with_audit(json!({"max_request_bytes": 1u64 << 40})), "audit.max_request_bytes");
    let errs = config_errors(&with_audit(json!({"max_request_bytes": 2_000_000, "max_response_bytes": 2_000_000})));
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["audit.max_request_bytes", "audit.max_response_bytes"]);
}

#[test]
fn collector_defaults() {
    let c = config(&with_collector(json!({"cluster": "audit_collector"})));
    let col = c.audit.collector.expect("collector");
    assert_eq!(col.cluster, "audit_collector");
    assert_eq!(col.authority, "audit_collector", "authority defaults to the cluster");
    assert_eq!(col.path, "/v1/records");
    assert_eq!(col.batch_max, 100);
    assert_eq!(col.flush_ms, 1000);
    assert_eq!(col.queue_max, 10_000);
    assert_eq!(col.timeout_ms, 2000);
    assert_eq!(col.token, None);
    assert_eq!((c.audit.max_request_bytes, c.audit.max_response_bytes), (4096, 4096));
}

#[test]
fn collector_explicit_values() {
    let c = config(&with_collector(json!({
        "cluster": "col",
        "authority": "audit.internal:9403",
        "path": "/ingest",
        "batch_max": 1000,
        "flush_ms": 60000,
        "queue_max": 1_000_000,
        "timeout_ms": 30000,
        "token": "s3cr3t-T0ken",
    })));
    let col = c.audit.collector.expect("collector");
    assert_eq!(col.cluster, "col");
    assert_eq!(col.authority, "audit.internal:9403");
    assert_eq!(col.path, "/ingest");
    assert_eq!((col.batch_max, col.flush_ms, col.queue_max, col.timeout_ms), (1000, 60000, 1_000_000, 30000));
    assert_eq!(col.token.as_deref(), Some("s3cr3t-T0ken"));
}

#[test]
fn collector_lower_bounds_accepted() {
    let c = config(&with_collector(json!({"cluster": "c", "batch_max": 1, "flush_ms": 100, "queue_max": 1, "timeout_ms": 100})));
    let col = c.audit.collector.expect("collector");
    assert_eq!((col.batch_max, col.flush_ms, col.queue_max, col.timeout_ms), (1, 100, 1, 100));
}

#[test]
fn collector_batch_max_out_of_range() {
    for bad in [0, 1001] {
        assert_rejected(&with_collector(json!({"cluster": "c", "batch_max": bad})), "audit.collector.batch_max");
    }
}

#[test]
fn collector_flush_ms_out_of_range() {
    for bad in [0, 99, 60_001] {
        assert_rejected(&with_collector(json!({"cluster": "c", "flush_ms": bad})), "audit.collector.flush_ms");
    }
}

#[test]
fn collector_queue_max_out_of_range() {
    for bad in [0u64, 1_000_001] {
        assert_rejected(&with_collector(json!({"cluster": "c", "queue_max": bad})), "audit.collector.queue_max");
    }
}

#[test]
fn collector_timeout_ms_out_of_range() {
    for bad in [0, 50, 99, 30_001] {
        assert_rejected(&with_collector(json!({"cluster": "c", "timeout_ms": bad})), "audit.collector.timeout_ms");
    }
}

#[test]
fn collector_path_must_be_absolute_without_query() {
    for bad in ["v1/records", "", "/v1/records?x=1", "/v1#frag", "/v 1", "/v1\n"] {
        assert_rejected(&with_collector(json!({"cluster": "c", "path": bad})), "audit.collector.path");
    }
}

#[test]
fn collector_token_must_be_visible_ascii() {
    for bad in ["with space", "", "tab\there", "newline\n", "ünïcode"] {
        assert_rejected(&with_collector(json!({"cluster": "c", "token": bad})), "audit.collector.token");
    }
}

#[test]
fn collector_cluster_must_not_be_empty() {
    // Reported once: the defaulted authority (the cluster name) is not blamed too.
    assert_rejected(&with_collector(json!({"cluster": ""})), "audit.collector.cluster");
}

#[test]
fn collector_cluster_is_required() {
    let errs = config_errors(&with_collector(json!({"path": "/v1/records"})));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "audit.collector");
    assert!(errs[0].problem.contains("cluster"), "{}", errs[0].problem);
}

#[test]
fn collector_authority_must_be_a_host() {
    for bad in ["", "a/b", "user@host", "has space"] {
        assert_rejected(&with_collector(json!({"cluster": "c", "authority": bad})), "audit.collector.authority");
    }
    // A cluster name that is no valid authority, with no explicit authority.
    assert_rejected(&with_collector(json!({"cluster": "a/b"})), "audit.collector.authority");
}

#[test]
fn audit_unknown_fields_are_rejected() {
    for (doc, field) in [
        (with_audit(json!({"session": "run_id"})), "audit.session"),
        (with_audit(json!({"max_body_bytes": 10})), "audit.max_body_bytes"),
        (with_collector(json!({"cluster": "c", "url": "http://x"})), "audit.collector.url"),
        (with_collector(json!({"cluster": "c", "batch_size": 10})), "audit.collector.batch_size"),
    ] {
        let errs = config_errors(&doc);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, field);
        assert!(errs[0].problem.contains("unknown field"), "{}", errs[0].problem);
    }
}

#[test]
fn audit_section_wrong_type_is_rejected() {
    let errs = config_errors(&with_audit(json!("sync")));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "audit");
    assert!(errs[0].problem.contains("invalid type"), "{}", errs[0].problem);
}

fn with_resource_audit(mode: Value, collector: bool) -> Value {
    let mut doc = base();
    doc["resources"][0]["audit"] = mode;
    if collector {
        doc["audit"] = json!({"collector": {"cluster": "col"}});
    }
    doc
}

#[test]
fn resource_sync_audit_needs_a_collector() {
    let errs = config_errors(&with_resource_audit(json!("sync"), false));
    assert_eq!(errs.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["resources[0].audit"], "{errs:?}");
    assert!(errs[0].problem.contains("collector"), "{}", errs[0].problem);
}

#[test]
fn resource_sync_audit_with_collector() {
    let c = config(&with_resource_audit(json!("sync"), true));
    assert!(c.resources[0].sync_audit);
    assert!(c.audit.collector.is_some());
}

#[test]
fn resource_async_audit_is_the_default() {
    for collector in [false, true] {
        let c = config(&with_resource_audit(json!("async"), collector));
        assert!(!c.resources[0].sync_audit, "collector={collector}");
    }
    let c = config(&with_resource_audit(Value::Null, true));
    assert!(!c.resources[0].sync_audit);
}

#[test]
fn resource_sync_audit_on_one_resource_only() {
    let mut doc = with_resource_audit(json!("sync"), true);
    doc["resources"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "other", "path_prefix": "/other", "read": {"any_of": ["readers"]}}));
    let c = config(&doc);
    assert!(c.resources[0].sync_audit);
    assert!(!c.resources[1].sync_audit);
}

#[test]
fn resource_audit_other_values_are_rejected() {
    for bad in ["SYNC", "Async", "", "synchronous", "off"] {
        for collector in [false, true] {
            let errs = config_errors(&with_resource_audit(json!(bad), collector));
            assert_eq!(
                errs.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
                ["resources[0].audit"],
                "{bad:?} collector={collector}: {errs:?}"
            );
        }
    }
    let errs = config_errors(&with_resource_audit(json!(true), true));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "resources[0].audit");
}

#[test]
fn resource_sync_audit_error_names_the_right_resource() {
    let mut doc = base();
    doc["resources"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "other", "path_prefix": "/other", "read": {"any_of": ["readers"]}, "audit": "sync"}));
    assert_rejected(&doc, "resources[1].audit");
}

#[test]
fn several_audit_errors_are_all_reported() {
    let doc = with_audit(json!({
        "session_claim": "a..b",
        "max_request_bytes": 2_000_000,
        "collector": {"cluster": "c", "batch_max": 0, "flush_ms": 99, "queue_max": 0, "timeout_ms": 50, "path": "x", "token": "a b"},
    }));
    let fields: BTreeSet<String> = config_errors(&doc).into_iter().map(|e| e.field).collect();
    let want: BTreeSet<String> = [
        "audit.session_claim",
        "audit.max_request_bytes",
        "audit.collector.batch_max",
        "audit.collector.flush_ms",
        "audit.collector.queue_max",
        "audit.collector.timeout_ms",
        "audit.collector.path",
        "audit.collector.token",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(fields, want);
}

#[test]
fn audit_config_from_value_matches_from_json() {
    let doc = with_audit(json!({"session_claim": "ci.run", "max_request_bytes": 10}));
    let c = Config::from_value(&doc).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(c.audit.session_claim, Some(vec!["ci".to_string(), "run".to_string()]));
    assert_eq!(c.audit.max_request_bytes, 10);
    assert!(parse(&doc).is_ok());
}

// ===========================================================================
// Gate::authenticate with audit.session_claim

struct Fixture {
    gate: Gate,
    key: ES256KeyPair,
}

impl Fixture {
    /// A gate with one inline-key provider; `session_claim` as given (or none).
    fn new(session_claim: Option<&str>) -> Fixture {
        let key = ES256KeyPair::generate().with_key_id("ec1");
        let mut doc = json!({
            "providers": [{
                "name": "idp",
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "jwks": jwks(&[key.public_key().to_jwk()]),
            }],
            "resources": [{"name": "docs", "path_prefix": "/docs", "read": {"any_of": ["readers"]}}],
        });
        if let Some(c) = session_claim {
            doc["audit"] = json!({ "session_claim": c });
        }
        Fixture { gate: Gate::new(config(&doc)), key }
    }

    fn token(&self, custom: Value) -> String {
        self.key.sign(claims(custom)).expect("sign")
    }

    fn authenticate_with(&self, token: &str, cache: &mut TokenCache) -> Result<Identity, AuthError> {
        let auth = format!("Bearer {token}");
        self.gate.authenticate(&[("authorization", auth.as_bytes())], &InlineStore(&self.gate), cache, NOW)
    }

    fn authenticate(&self, custom: Value) -> Identity {
        let token = self.token(custom);
        self.authenticate_with(&token, &mut TokenCache::new(16)).unwrap_or_else(|e| panic!("authenticate: {e:?}"))
    }
}

#[test]
fn session_is_the_string_claim() {
    let f = Fixture::new(Some("run_id"));
    let id = f.authenticate(json!({"groups": ["readers"], "run_id": "Run-4711 / Nightly"}));
    assert_eq!(id.session.as_deref(), Some("Run-4711 / Nightly"), "verbatim");
}

#[test]
fn session_number_becomes_a_string() {
    let f = Fixture::new(Some("run_id"));
    assert_eq!(f.authenticate(json!({"run_id": 4711})).session.as_deref(), Some("4711"));
    assert_eq!(f.authenticate(json!({"run_id": -3})).session.as_deref(), Some("-3"));
    assert_eq!(f.authenticate(json!({"run_id": 1.5})).session.as_deref(), Some("1.5"));
    assert_eq!(f.authenticate(json!({"run_id": 18_446_744_073_709_551_615u64})).session.as_deref(), Some("18446744073709551615"));
}

#[test]
fn session_from_a_nested_claim() {
    let f = Fixture::new(Some("ci.pipeline.run"));
    let id = f.authenticate(json!({"ci": {"pipeline": {"run": "r-9"}}}));
    assert_eq!(id.session.as_deref(), Some("r-9"));
    let id = f.authenticate(json!({"ci": {"pipeline": {"run": 9}}}));
    assert_eq!(id.session.as_deref(), Some("9"));
    let id = f.authenticate(json!({"ci": {"pipeline": "flat"}}));
    assert_eq!(id.session, None, "path through a string");
    let id = f.authenticate(json!({"ci": {"other": {"run": "x"}}}));
    assert_eq!(id.session, None);
}

#[test]
fn session_is_none_when_absent() {
    let f = Fixture::new(Some("run_id"));
    let id = f.authenticate(json!({"groups": ["readers"], "job": "j-1"}));
    assert_eq!(id.session, None);
}

#[test]
fn session_is_none_for_objects_and_other_types() {
    let f = Fixture::new(Some("run_id"));
    for v in [json!({"id": "x"}), json!(["a", "b"]), json!(true), json!(null)] {
        let id = f.authenticate(json!({ "run_id": v.clone() }));
        assert_eq!(id.session, None, "{v}");
    }
}

#[test]
fn session_is_none_without_session_claim_configured() {
    let f = Fixture::new(None);
    assert!(f.gate.config.audit.session_claim.is_none());
    let id = f.authenticate(json!({"run_id": "run-4711", "session": "s"}));
    assert_eq!(id.session, None);
}

#[test]
fn session_from_a_registered_claim() {
    let f = Fixture::new(Some("sub"));
    assert_eq!(f.authenticate(json!({})).session.as_deref(), Some(SUBJECT));
}

#[test]
fn session_is_kept_on_a_cache_hit() {
    let f = Fixture::new(Some("run_id"));
    let token = f.token(json!({"run_id": "run-1", "groups": ["readers"]}));
    let mut cache = TokenCache::new(16);
    let first = f.authenticate_with(&token, &mut cache).expect("first");
    assert_eq!(cache.len(), 1, "cached");
    let second = f.authenticate_with(&token, &mut cache).expect("cache hit");
    assert_eq!(first.session.as_deref(), Some("run-1"));
    assert_eq!(second.session.as_deref(), Some("run-1"));
    assert_eq!(*second.claims, *first.claims);
    assert_eq!(second.claims.get("run_id"), Some(&json!("run-1")));
}

#[test]
fn identity_claims_hold_the_verified_claims() {
    let f = Fixture::new(Some("run_id"));
    let id = f.authenticate(json!({"groups": ["readers"], "run_id": "run-4711", "repository": "acme/app", "ci": {"n": 1}}));
    let c: &Map<String, Value> = &id.claims;
    assert_eq!(c.get("iss"), Some(&json!(ISSUER)));
    assert_eq!(c.get("sub"), Some(&json!(SUBJECT)));
    assert_eq!(c.get("aud"), Some(&json!(AUDIENCE)));
    assert_eq!(c.get("exp"), Some(&json!(NOW + LIFETIME)));
    assert_eq!(c.get("iat"), Some(&json!(NOW)));
    assert_eq!(c.get("run_id"), Some(&json!("run-4711")));
    assert_eq!(c.get("repository"), Some(&json!("acme/app")));
    assert_eq!(c.get("ci"), Some(&json!({"n": 1})));
    assert_eq!(c.get("groups"), Some(&json!(["readers"])));
    assert_eq!(id.groups, ["readers"]);
}

#[test]
fn identity_claims_without_session_claim_configured() {
    let f = Fixture::new(None);
    let id = f.authenticate(json!({"repository": "acme/app"}));
    assert_eq!(id.claims.get("repository"), Some(&json!("acme/app")));
    assert_eq!(id.claims.get("sub"), Some(&json!(SUBJECT)));
}

#[test]
fn session_flows_into_an_audit_identity_record() {
    // The record's identity block and session come from the authenticated identity.
    let f = Fixture::new(Some("run_id"));
    let token = f.token(json!({"run_id": "run-77", "groups": ["readers"], "jti": "j-77"}));
    let id = f.authenticate_with(&token, &mut TokenCache::new(4)).expect("auth");
    let mut d = draft();
    d.identity = Some(IdentityRecord::new(&id, &token));
    d.session = id.session.clone();
    let v = serde_json::to_value(finish(&d, T0, 200)).unwrap();
    assert_eq!(v["session"], json!("run-77"));
    assert_eq!(v["identity"]["jti"], json!("j-77"));
    assert_eq!(v["identity"]["subject"], json!(SUBJECT));
    assert_eq!(v["identity"]["token_sha256"], json!(sha256_hex(token.as_bytes())));
    assert!(!v.to_string().contains(&token));
}

#[test]
fn percent_encoded_secret_parameter_names_are_redacted_too() {
    assert_eq!(redact_path("/p?access%5Ftoken=eyJx.y.z&q=1"), "/p?access%5Ftoken=REDACTED&q=1");
    assert_eq!(redact_path("/p?%74oken=abc"), "/p?%74oken=REDACTED");
    assert_eq!(redact_path("/p?access%5ftoken=abc"), "/p?access%5ftoken=REDACTED");
    assert_eq!(redact_path("/p?api%2Bkey=abc"), "/p?api%2Bkey=abc", "api+key is not a secret name");
    assert_eq!(redact_path("/p?%zz=abc"), "/p?%zz=abc", "an invalid escape is kept as it is");
}

#[test]
fn text_cut_inside_a_character_leaves_it_out() {
    let mut c = Capture::new(4, false);
    c.push("abc€".as_bytes());
    let r = c.request_record();
    assert_eq!((r.text.as_str(), r.truncated, r.size), ("abc", true, 6));
    let mut c = Capture::new(1, false);
    c.push("€".as_bytes());
    assert_eq!(c.response_record().text, "");
}


#[test]
fn semicolon_separated_and_newer_secret_names_are_redacted() {
    assert_eq!(redact_path("/p?a=1;token=abc;b=2"), "/p?a=1;token=REDACTED;b=2");
    assert_eq!(redact_path("/p?X-Amz-Signature=ff&refresh_token=r&client_secret=c&jwt=e.y.j"),
               "/p?X-Amz-Signature=REDACTED&refresh_token=REDACTED&client_secret=REDACTED&jwt=REDACTED");
    assert_eq!(redact_path("/p?a=1&&b=2;"), "/p?a=1&&b=2;", "empty parameters and separators are kept");
}

#[test]
fn envoy_local_reply_for_an_allowed_request_is_a_denial_with_its_details() {
    let mut d = draft();
    d.envoy_reply = Some("request_payload_too_large".into());
    let r = finish(&d, T0 + 5, 413);
    assert_eq!((r.decision, r.reason.as_deref(), r.aborted), ("deny", Some("request_payload_too_large"), false));
    // the filter's own refusal wins over Envoy's details
    d.refused = Some((403, "group_not_allowed"));
    assert_eq!(finish(&d, T0 + 5, 403).reason.as_deref(), Some("group_not_allowed"));
}

#[test]
fn local_replies_are_not_aborted_but_unfinished_allowed_responses_are() {
    let mut d = draft();
    d.refused = Some((502, "response_too_large"));
    assert!(!finish(&d, T0 + 5, 502).aborted);
    let d = draft();
    assert!(finish(&d, T0 + 5, 200).aborted, "an allowed response that never completed");
}

#[test]
fn captured_text_never_holds_a_backend_credential() {
    use nhi_gate::audit::Capture;
    let mut c = Capture::new(1024, false);
    c.push(b"{\"headers\":{\"api-key\":\"backend-sec");
    c.push(b"ret-0123\"},\"again\":\"backend-secret-0123\"}");
    c.redact(&["backend-secret-0123".to_string()]);
    let r = c.response_record();
    assert_eq!(r.text, "{\"headers\":{\"api-key\":\"[BACKEND_CREDENTIAL]\"},\"again\":\"[BACKEND_CREDENTIAL]\"}");
    assert_eq!(r.size, 75, "the size is the body's as sent");
    // a text exactly as long as the credential, and one shorter
    let mut c = Capture::new(1024, false);
    c.push(b"backend-secret-0123");
    c.redact(&["backend-secret-0123".to_string(), "backend-secret-01234".to_string()]);
    assert_eq!(c.response_record().text, "[BACKEND_CREDENTIAL]");
}
