//! Defences against requests that try to be read one way by the policy and
//! another way by the backend: path forms, host spellings, identity header
//! injection, method overrides, and tokens in another provider's header.

mod common;

use common::*;
use jwt_simple::prelude::*;
use nhi_gate::gate::{header_safe, Gate, TokenCache};
use nhi_gate::policy::{path_is_normalized, Request};
use serde_json::json;

#[test]
fn only_normalized_paths_are_trusted() {
    for ok in ["/", "/collections/docs/points/search", "/a/b/", "/a?x=../..", "/a?x=1;y=2", "/v1/%20space", "/a/%C3%A9", "/a/%3Bb"] {
        assert!(path_is_normalized(ok.as_bytes()), "{ok}");
    }
    for bad in [
        "/v1/../collections", "/a/./b", "/a/..", "//a", "/a//b", "/a\\b", "/a/%2e%2e/b", "/a%2fb", "/a%2Fb",
        "/%61dmin", "/a%5cb", "/a%", "/a%zz", "relative", "/a/%7e",
        // path parameters (cut off by Tomcat/Spring before routing) and encoded control characters
        "/c/docs/export;x", "/c/docs/export;jsessionid=1/", "/c/export%09", "/c/export%0A", "/c/export%7f", "/c/export%00",
    ] {
        assert!(!path_is_normalized(bad.as_bytes()), "{bad}");
    }
}

fn gate_with(doc: serde_json::Value) -> Gate {
    Gate::new(config(&doc))
}

fn two_providers(jwk: &str) -> serde_json::Value {
    json!({
        "providers": [
            {"name": "a", "issuer": ISSUER, "audiences": [AUDIENCE], "max_lifetime_seconds": 900, "jwks": jwks(&[jwk.to_string()])},
            {"name": "b", "issuer": "https://other.example", "audiences": [AUDIENCE], "token_header": "x-b-token",
             "jwks": jwks(&[jwk.to_string()])}
        ],
        "resources": [
            {"name": "admin", "authorities": ["admin.internal"], "path_prefix": "/", "read": {"any_of": ["admins"]}},
            {"name": "data", "path_prefix": "/", "read": {"any_of": ["g"]}, "identity_headers": true}
        ]
    })
}

#[test]
fn token_in_another_providers_header_is_refused_and_headers_are_sanitised() {
    let k = ES256KeyPair::generate().with_key_id("k");
    let gate = gate_with(two_providers(&k.public_key().to_jwk()));
    let store = InlineStore(&gate);
    let now = Clock::now_since_epoch().as_secs();
    let c = Claims::with_custom_claims(json!({"groups": ["g", "admins,evil", "x\r\ny"]}), Duration::from_secs(300))
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE)
        .with_subject("job\r\napi-key: injected");
    let t = k.sign(c).unwrap();
    let mut cache = TokenCache::new(16);
    // provider a's token sent in provider b's header
    let r = gate.authenticate(&[("x-b-token", t.as_bytes())], &store, &mut cache, now);
    assert_eq!(r.map_err(|e| e.into_denial().reason).err(), Some("unknown_issuer"));
    let auth = format!("Bearer {t}");
    let id = gate.authenticate(&[("authorization", auth.as_bytes())], &store, &mut cache, now).unwrap();
    // ...also not through the cache
    let r = gate.authenticate(&[("x-b-token", t.as_bytes())], &store, &mut cache, now);
    assert_eq!(r.map_err(|e| e.into_denial().reason).err(), Some("unknown_issuer"));

    // trailing-dot host still hits the admin-only resource
    let req = Request { authority: b"ADMIN.internal.:8443", path: b"/x", method: "GET" };
    assert_eq!(gate.authorize(&req, &[], id.clone()).unwrap_err().reason, "group_not_allowed");

    let headers: Vec<(&str, &[u8])> = vec![("x-http-method-override", b"DELETE"), ("x-nhi-groups", b"admins")];
    let req = Request { authority: b"data.internal", path: b"/x", method: "GET" };
    let plan = gate.authorize(&req, &headers, id).unwrap();
    assert!(plan.remove.contains(&"x-http-method-override".to_string()));
    assert!(plan.remove.contains(&"x-nhi-groups".to_string()));
    let set: std::collections::HashMap<_, _> = plan.set.into_iter().collect();
    assert_eq!(set["x-nhi-groups"], "g,admins%2Cevil,x%0D%0Ay");
    assert_eq!(set["x-nhi-subject"], "job%0D%0Aapi-key: injected");
}

#[test]
fn unnormalized_path_is_refused_before_matching() {
    let k = ES256KeyPair::generate().with_key_id("k");
    let gate = gate_with(two_providers(&k.public_key().to_jwk()));
    let id = nhi_gate::policy::Identity::from_claims("a", ISSUER, &["groups".into()], &obj(json!({"groups": ["g"]})));
    let req = Request { authority: b"data.internal", path: b"/x/../admin", method: "GET" };
    assert_eq!(gate.authorize(&req, &[], id).unwrap_err().reason, "unnormalized_path");
}

#[test]
fn header_safe_is_reversible_and_keeps_plain_values() {
    assert_eq!(header_safe("repo:acme/app:ref:refs/heads/main"), "repo:acme/app:ref:refs/heads/main");
    assert_eq!(header_safe("100%,é"), "100%25%2C%C3%A9");
}
