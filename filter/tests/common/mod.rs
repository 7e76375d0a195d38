//! Shared helpers for the native tests of the nhi-gate filter core.
//!
//! Every test binary includes this module with `mod common;`, so helpers that
//! one binary does not use are expected (hence the `dead_code` allowance).
#![allow(dead_code)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::*;
use nhi_gate::config::{Config, ConfigError, KeySource, Provider};
use nhi_gate::deny::Denial;
use nhi_gate::gate::KeyStore;
use nhi_gate::jwks::KeySet;
use serde_json::{json, Map, Value};
use std::rc::Rc;
use std::sync::OnceLock;

/// The fixed "current time" of the tests (2023-11-14): every token is minted
/// relative to it, and the code under test is handed it as `now`, so results
/// never depend on the machine clock.
pub const NOW: u64 = 1_700_000_000;
/// Lifetime of the tokens [`claims`] mints, seconds.
pub const LIFETIME: u64 = 300;
pub const ISSUER: &str = "https://idp.example.com";
pub const AUDIENCE: &str = "rag-api";
pub const SUBJECT: &str = "repo:acme/app:ref:refs/heads/main";

// ---------------------------------------------------------------------------
// Hand-made compact JWS

/// Unpadded base64url, as JWS segments use (RFC 7515 §2).
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).expect("test token segment is base64url")
}

/// `b64(header).b64(claims).b64(signature)` without any real signature.
pub fn compact(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!("{}.{}.{}", b64(header.to_string()), b64(claims.to_string()), b64(signature))
}

/// A structurally valid token with header `{"alg": alg, "kid": "k1"}`, the
/// default claims and a signature of `sig_len` bytes (0x01 each).
pub fn unsigned(alg: &str, sig_len: usize) -> String {
    compact(&json!({"alg": alg, "kid": "k1", "typ": "JWT"}), &default_claims(), &vec![1u8; sig_len])
}

/// Registered claims that pass [`provider`]'s checks at [`NOW`].
pub fn default_claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": SUBJECT,
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + LIFETIME,
    })
}

/// `value` as a JSON object (panics otherwise).
pub fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        other => panic!("not a JSON object: {other}"),
    }
}

/// Replaces one segment (0 header, 1 claims, 2 signature) of a compact JWS.
pub fn with_segment(token: &str, index: usize, segment: &str) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[index] = segment;
    parts.join(".")
}

/// The token with one bit of its signature flipped (still canonical base64url).
pub fn tamper_signature(token: &str) -> String {
    let mut sig = unb64(token.rsplit('.').next().expect("three segments"));
    sig[0] ^= 0x01;
    with_segment(token, 2, &b64(sig))
}

/// The token with its claims replaced, keeping the original signature.
pub fn tamper_claims(token: &str, claims: &Value) -> String {
    with_segment(token, 1, &b64(claims.to_string()))
}

/// Asserts a 401/403 denial with this reason.
#[track_caller]
pub fn assert_denied<T: std::fmt::Debug>(result: Result<T, Denial>, status: u32, reason: &str) {
    match result {
        Err(d) => {
            assert_eq!((d.status, d.reason), (status, reason), "unexpected denial: {d:?}");
        }
        Ok(v) => panic!("expected {status} {reason}, got Ok({v:?})"),
    }
}

#[track_caller]
pub fn assert_unauthorized<T: std::fmt::Debug>(result: Result<T, Denial>, reason: &str) {
    assert_denied(result, 401, reason)
}

#[track_caller]
pub fn assert_forbidden<T: std::fmt::Debug>(result: Result<T, Denial>, reason: &str) {
    assert_denied(result, 403, reason)
}

// ---------------------------------------------------------------------------
// Providers and configurations

/// A provider for [`ISSUER`] with remote keys (claim checks never touch keys).
pub fn provider(audiences: &[&str], max_lifetime_seconds: u64) -> Provider {
    Provider {
        name: "idp".into(),
        issuer: ISSUER.into(),
        audiences: audiences.iter().map(|a| a.to_string()).collect(),
        max_lifetime_seconds,
        groups_claim: vec!["groups".into()],
        groups_prefix: String::new(),
        token_header: None,
        keys: KeySource::Remote {
            cluster: "idp".into(),
            authority: "idp.example.com".into(),
            path: "/jwks".into(),
        },
    }
}

/// A minimal provider document with remote keys, for config and policy tests.
pub fn remote_provider_json(name: &str, issuer: &str) -> Value {
    json!({
        "name": name,
        "issuer": issuer,
        "audiences": [AUDIENCE],
        "jwks_uri": format!("{issuer}/jwks"),
        "cluster": "idp",
    })
}

/// Parses a configuration value, panicking with the errors if it is invalid.
pub fn config(doc: &Value) -> Config {
    match Config::from_json(doc.to_string().as_bytes()) {
        Ok(c) => c,
        Err(errs) => panic!("config rejected: {errs:?}"),
    }
}

/// Parses a configuration value that must be rejected.
pub fn config_errors(doc: &Value) -> Vec<ConfigError> {
    match Config::from_json(doc.to_string().as_bytes()) {
        Ok(_) => panic!("config accepted: {doc}"),
        Err(errs) => errs,
    }
}

/// A configuration with one remote-key provider "idp" and these resources.
pub fn config_with_resources(resources: Value) -> Config {
    config(&json!({
        "providers": [remote_provider_json("idp", ISSUER)],
        "resources": resources,
    }))
}

// ---------------------------------------------------------------------------
// Real keys (jwt-simple)

/// One 2048-bit RSA key pair per test binary: key generation is slow in debug
/// builds. Use [`rsa_as`] for the other RSA algorithms over the same key.
pub fn rsa() -> &'static RS256KeyPair {
    static KEY: OnceLock<RS256KeyPair> = OnceLock::new();
    KEY.get_or_init(|| RS256KeyPair::generate(2048).expect("RSA keygen").with_key_id("rsa1"))
}

/// The shared RSA key as a PS256 key pair.
pub fn rsa_ps256() -> PS256KeyPair {
    PS256KeyPair::from_der(&rsa().to_der().expect("RSA DER")).expect("PS256 from DER").with_key_id("rsa1")
}

/// The shared RSA key as an RS384 key pair.
pub fn rsa_rs384() -> RS384KeyPair {
    RS384KeyPair::from_der(&rsa().to_der().expect("RSA DER")).expect("RS384 from DER").with_key_id("rsa1")
}

/// Claims for [`ISSUER`]/[`AUDIENCE`], issued at [`NOW`], valid [`LIFETIME`]
/// seconds, with `custom` flattened in (e.g. `{"groups": [...]}`).
pub fn claims(custom: Value) -> JWTClaims<Value> {
    let mut c = Claims::with_custom_claims(custom, Duration::from_secs(LIFETIME))
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE)
        .with_subject(SUBJECT);
    c.issued_at = Some(Duration::from_secs(NOW));
    c.invalid_before = Some(Duration::from_secs(NOW));
    c.expires_at = Some(Duration::from_secs(NOW + LIFETIME));
    c
}

/// A JWKS document from JWK strings (as `to_jwk()` returns them).
pub fn jwks(jwks: &[String]) -> Value {
    let keys: Vec<Value> = jwks.iter().map(|j| serde_json::from_str(j).expect("JWK is JSON")).collect();
    json!({ "keys": keys })
}

/// A JWK string with members changed: `Value::Null` removes a member.
pub fn edit_jwk(jwk: &str, changes: &[(&str, Value)]) -> String {
    let mut m = obj(serde_json::from_str(jwk).expect("JWK is JSON"));
    for (k, v) in changes {
        if v.is_null() {
            m.remove(*k);
        } else {
            m.insert((*k).to_string(), v.clone());
        }
    }
    Value::Object(m).to_string()
}

pub fn key_set(doc: &Value) -> KeySet {
    KeySet::from_json(doc.to_string().as_bytes()).expect("usable JWKS")
}

// ---------------------------------------------------------------------------
// Key stores for Gate::authenticate

/// Serves the inline keys of a gate's configuration, generation 1.
pub struct InlineStore<'a>(pub &'a nhi_gate::gate::Gate);

impl KeyStore for InlineStore<'_> {
    fn keys(&self, index: usize) -> Option<(Rc<KeySet>, u64)> {
        self.0.inline_keys(index).map(|ks| (ks, 1))
    }
}

/// A store with one fixed key set (or none) and generation, for every provider.
pub struct FixedStore(pub Option<(Rc<KeySet>, u64)>);

impl KeyStore for FixedStore {
    fn keys(&self, _index: usize) -> Option<(Rc<KeySet>, u64)> {
        self.0.clone()
    }
}

/// xorshift64*: a tiny deterministic generator for test inputs.
#[allow(dead_code)]
pub struct Rng(pub u64);

#[allow(dead_code)]
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// An identity of provider "idp" (issuer [`ISSUER`], subject [`SUBJECT`]) with these groups.
#[allow(dead_code)]
pub fn identity(groups: &[&str]) -> nhi_gate::policy::Identity {
    nhi_gate::policy::Identity {
        provider: "idp".into(),
        issuer: ISSUER.into(),
        subject: SUBJECT.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        scopes: vec![],
        groups_overage: false,
        jti: String::new(),
        azp: String::new(),
        session: None,
        claims: Default::default(),
    }
}

// ---------------------------------------------------------------------------
// Streamed masking

/// Streams `input` through a stream masker of `kind`, cut at `cuts` (byte
/// offsets, any order); returns the concatenated output, the outputs per
/// push, and the counts.
pub fn stream(m: &nhi_gate::mask::Masker, kind: nhi_gate::mask::StreamKind, input: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<Vec<u8>>, nhi_gate::mask::Counts) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.push(0);
    points.push(input.len());
    points.sort_unstable();
    points.dedup();
    let mut s = m.stream(kind);
    let mut counts = nhi_gate::mask::Counts::new();
    let mut parts = Vec::new();
    for w in points.windows(2) {
        parts.push(s.push(&input[w[0]..w[1]], &mut counts));
    }
    parts.push(s.finish(&mut counts));
    (parts.concat(), parts, counts)
}

/// `s` cut into pieces of `frag[k]` characters (cycling), as a model
/// streams text.
pub fn pieces(s: &str, frag: &[usize]) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let (mut i, mut k, mut out) = (0, 0, Vec::new());
    while i < chars.len() {
        let n = frag[k % frag.len()].max(1);
        k += 1;
        out.push(chars[i..(i + n).min(chars.len())].iter().collect());
        i += n;
    }
    out
}

/// Property-test settings: 96 cases, `PROPTEST_CASES=5000` for a longer run.
pub fn pt_config() -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96);
    proptest::test_runner::Config { cases, failure_persistence: None, ..proptest::test_runner::Config::default() }
}
