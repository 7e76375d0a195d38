//! `gate`: the host-independent pipeline. Tokens are signed with real keys,
//! the configuration is the JSON text an admin would write (inline JWKS),
//! and keys come from small `KeyStore` implementations.

mod common;

use common::*;
use jwt_simple::prelude::*;
use nhi_gate::config::Config;
use nhi_gate::gate::{AuthError, Gate, Header, Plan, TokenCache};
use nhi_gate::policy::{Identity, Request};
use serde_json::json;
use std::rc::Rc;

/// The configuration under test; `{JWKS}` is replaced by the provider's key set.
const CONFIG: &str = r#"{
  "realm": "rag",
  "clock_skew_seconds": 60,
  "max_token_bytes": 2048,
  "providers": [{
    "name": "idp",
    "issuer": "https://idp.example.com",
    "audiences": ["rag-api"],
    "max_lifetime_seconds": 900,
    "token_header": "X-CI-Token",
    "jwks": {JWKS}
  }],
  "resources": [
    {
      "name": "search",
      "path_prefix": "/v1/",
      "operations": [{"methods": ["POST"], "path_glob": "/v1/*/search", "class": "read"}],
      "read": {"any_of": ["readers"]},
      "write": {"any_of": ["writers"]},
      "upstream_headers": {"X-Api-Key": "backend-secret"},
      "identity_headers": true
    },
    {
      "name": "passthrough",
      "path_prefix": "/fwd/",
      "read": {"any_of": ["readers"]},
      "forward_authorization": true
    }
  ]
}"#;

/// A gate over [`CONFIG`] whose JWKS publishes an ES256 key "ec1" and an
/// Ed25519 key "ed1"; the key pairs are kept for signing.
struct Fixture {
    gate: Gate,
    ec: ES256KeyPair,
    ed: Ed25519KeyPair,
}

impl Fixture {
    fn new() -> Fixture {
        let ec = ES256KeyPair::generate().with_key_id("ec1");
        let ed = Ed25519KeyPair::generate().with_key_id("ed1");
        let keys = jwks(&[ec.public_key().to_jwk(), ed.public_key().to_jwk()]);
        let text = CONFIG.replace("{JWKS}", &keys.to_string());
        let config = Config::from_json(text.as_bytes()).unwrap_or_else(|e| panic!("config: {e:?}"));
        Fixture { gate: Gate::new(config), ec, ed }
    }

    /// An ES256 token for [`ISSUER`]/[`AUDIENCE`] with these groups.
    fn token(&self, groups: &[&str]) -> String {
        self.ec.sign(claims(json!({ "groups": groups }))).unwrap()
    }

    fn authenticate(&self, token: &str, cache: &mut TokenCache, now: u64) -> Result<Identity, AuthError> {
        let auth = format!("Bearer {token}");
        self.gate.authenticate(&[("authorization", auth.as_bytes())], &InlineStore(&self.gate), cache, now)
    }

    fn authenticate_headers(&self, headers: &[Header<'_>]) -> Result<Identity, AuthError> {
        self.gate.authenticate(headers, &InlineStore(&self.gate), &mut TokenCache::new(16), NOW)
    }
}

fn cache() -> TokenCache {
    TokenCache::new(16)
}

#[track_caller]
fn assert_auth_denied(result: Result<Identity, AuthError>, reason: &str) {
    match result {
        Err(AuthError::Deny(d)) => assert_eq!((d.status, d.reason), (401, reason), "{d:?}"),
        other => panic!("expected 401 {reason}, got {other:?}"),
    }
}

fn req<'a>(method: &'a str, path: &'a str) -> Request<'a> {
    Request { authority: b"rag.example.com", path: path.as_bytes(), method }
}


// ---------------------------------------------------------------------------
// Authentication

#[test]
fn valid_es256_token_authenticates() {
    let f = Fixture::new();
    let id = f.authenticate(&f.token(&["readers", "ci"]), &mut cache(), NOW).unwrap();
    assert_eq!(id.provider, "idp");
    assert_eq!(id.issuer, ISSUER);
    assert_eq!(id.subject, SUBJECT);
    assert_eq!(id.groups, ["readers", "ci"]);
    assert!(!id.groups_overage);
}

#[test]
fn valid_eddsa_token_authenticates() {
    let f = Fixture::new();
    let token = f.ed.sign(claims(json!({"groups": ["writers"]}))).unwrap();
    assert_eq!(f.authenticate(&token, &mut cache(), NOW).unwrap().groups, ["writers"]);
}

#[test]
fn token_without_kid_is_tried_against_fitting_keys() {
    let f = Fixture::new();
    let no_kid = Ed25519KeyPair::from_bytes(&f.ed.to_bytes()).unwrap();
    let token = no_kid.sign(claims(json!({}))).unwrap();
    assert!(f.authenticate(&token, &mut cache(), NOW).is_ok());
}

#[test]
fn missing_token() {
    let f = Fixture::new();
    let err = f.authenticate_headers(&[("x-other", b"1")]).unwrap_err();
    assert_eq!(err.into_denial().reason, "missing_token");
}

#[test]
fn token_from_the_provider_token_header() {
    let f = Fixture::new();
    let token = f.token(&["readers"]);
    assert!(f.authenticate_headers(&[("x-ci-token", token.as_bytes())]).is_ok());
    // Authorization wins when both are present.
    let err = f.authenticate_headers(&[("authorization", b"Basic abc"), ("x-ci-token", token.as_bytes())]);
    assert_auth_denied(err, "malformed");
    // Two token headers are ambiguous.
    assert_auth_denied(f.authenticate_headers(&[("x-ci-token", token.as_bytes()), ("x-ci-token", token.as_bytes())]), "malformed");
}

#[test]
fn two_authorization_headers_are_malformed() {
    let f = Fixture::new();
    let auth = format!("Bearer {}", f.token(&["readers"]));
    assert_auth_denied(f.authenticate_headers(&[("authorization", auth.as_bytes()), ("authorization", auth.as_bytes())]), "malformed");
}

#[test]
fn configured_max_token_bytes_applies() {
    let f = Fixture::new();
    let big: Vec<String> = (0..200).map(|i| format!("group-{i}")).collect();
    let token = f.ec.sign(claims(json!({ "groups": big }))).unwrap();
    assert!(token.len() > 2048);
    assert_auth_denied(f.authenticate(&token, &mut cache(), NOW), "token_too_large");
}

#[test]
fn unknown_issuer() {
    let f = Fixture::new();
    let token = f.ec.sign(claims(json!({})).with_issuer("https://evil.example.com")).unwrap();
    assert_auth_denied(f.authenticate(&token, &mut cache(), NOW), "unknown_issuer");
    let token = f.ec.sign(claims(json!({})).with_issuer("https://idp.example.com/")).unwrap();
    assert_auth_denied(f.authenticate(&token, &mut cache(), NOW), "unknown_issuer");
}

#[test]
fn claim_checks_run_with_the_provider_settings() {
    let f = Fixture::new();
    let token = f.ec.sign(claims(json!({})).with_audience("other-api")).unwrap();
    assert_auth_denied(f.authenticate(&token, &mut cache(), NOW), "audience");

    assert_auth_denied(f.authenticate(&f.token(&[]), &mut cache(), NOW + LIFETIME + 60), "expired");

    // Provider max_lifetime_seconds is 900.
    let mut long = claims(json!({}));
    long.expires_at = Some(Duration::from_secs(NOW + 901));
    assert_auth_denied(f.authenticate(&f.ec.sign(long).unwrap(), &mut cache(), NOW), "lifetime");
}

#[test]
fn tampered_signature_is_refused_and_not_cached() {
    let f = Fixture::new();
    let mut c = cache();
    let token = tamper_signature(&f.token(&["readers"]));
    assert_auth_denied(f.authenticate(&token, &mut c, NOW), "signature");
    assert!(c.is_empty());
}

#[test]
fn elevated_groups_break_the_signature() {
    let f = Fixture::new();
    let token = f.token(&["readers"]);
    let mut forged = obj(serde_json::from_slice(&unb64(token.split('.').nth(1).unwrap())).unwrap());
    forged.insert("groups".into(), json!(["writers"]));
    let forged = tamper_claims(&token, &serde_json::Value::Object(forged));
    assert_auth_denied(f.authenticate(&forged, &mut cache(), NOW), "signature");
}

#[test]
fn token_signed_by_an_unpublished_key_fails() {
    let f = Fixture::new();
    let rogue = ES256KeyPair::generate().with_key_id("ec1");
    assert_auth_denied(f.authenticate(&rogue.sign(claims(json!({}))).unwrap(), &mut cache(), NOW), "signature");
}

#[test]
fn alg_none_and_hmac_confusion_are_refused() {
    let f = Fixture::new();
    let none = format!("{}.{}.", b64(json!({"alg": "none"}).to_string()), b64(default_claims().to_string()));
    assert_auth_denied(f.authenticate(&none, &mut cache(), NOW), "algorithm");

    // HS256 keyed with the published public key (the classic RS/HS confusion).
    let public = f.ec.public_key().to_bytes();
    let hs = HS256Key::from_bytes(&public).with_key_id("ec1");
    let token = hs.authenticate(claims(json!({}))).unwrap();
    assert_auth_denied(f.authenticate(&token, &mut cache(), NOW), "algorithm");
}

#[test]
fn kid_naming_a_key_of_another_type_is_alg_key_mismatch() {
    let f = Fixture::new();
    // An ES256 token that names the Ed25519 key.
    let signer = ES256KeyPair::from_bytes(&f.ec.to_bytes()).unwrap().with_key_id("ed1");
    let token = signer.sign(claims(json!({}))).unwrap();
    assert_auth_denied(f.authenticate(&token, &mut cache(), NOW), "alg_key_mismatch");
}

#[test]
fn unknown_kid_asks_for_keys() {
    let f = Fixture::new();
    let signer = ES256KeyPair::from_bytes(&f.ec.to_bytes()).unwrap().with_key_id("rotated");
    let err = f.authenticate(&signer.sign(claims(json!({}))).unwrap(), &mut cache(), NOW).unwrap_err();
    assert_eq!(err, AuthError::NeedKeys { provider: 0, unknown_kid: true });
    let d = err.into_denial();
    assert_eq!((d.status, d.reason), (401, "unknown_kid"));
}

#[test]
fn no_keys_yet_asks_for_keys() {
    let f = Fixture::new();
    let auth = format!("Bearer {}", f.token(&["readers"]));
    let err = f.gate.authenticate(&[("authorization", auth.as_bytes())], &FixedStore(None), &mut cache(), NOW).unwrap_err();
    assert_eq!(err, AuthError::NeedKeys { provider: 0, unknown_kid: false });
    assert_eq!(err.into_denial().reason, "jwks_unavailable");
}

#[test]
fn inline_keys_of_the_config() {
    let f = Fixture::new();
    let ks = f.gate.inline_keys(0).expect("inline provider");
    assert_eq!(ks.keys.len(), 2);
    assert!(f.gate.inline_keys(1).is_none());
}

// ---------------------------------------------------------------------------
// Verified-token cache

#[test]
fn second_call_is_served_from_the_cache() {
    let f = Fixture::new();
    let mut c = cache();
    let token = f.token(&["readers"]);
    let first = f.authenticate(&token, &mut c, NOW).unwrap();
    assert_eq!(c.len(), 1);
    let second = f.authenticate(&token, &mut c, NOW + 10).unwrap();
    assert_eq!(first, second);
    assert_eq!(c.len(), 1);

    // Proof that the second verification came from the cache: a store with
    // the same generation but without the signing key still admits it.
    let other = key_set(&jwks(&[ES256KeyPair::generate().with_key_id("other").public_key().to_jwk()]));
    let auth = format!("Bearer {token}");
    let same_gen = FixedStore(Some((Rc::new(other), 1)));
    assert!(f.gate.authenticate(&[("authorization", auth.as_bytes())], &same_gen, &mut c, NOW + 20).is_ok());
}

#[test]
fn cache_is_bypassed_when_the_key_set_generation_changes() {
    let f = Fixture::new();
    let mut c = cache();
    let token = f.token(&["readers"]);
    f.authenticate(&token, &mut c, NOW).unwrap();

    // The keys were rotated (generation 2) and "ec1" is gone: full verification again.
    let rotated = key_set(&jwks(&[ES256KeyPair::generate().with_key_id("ec2").public_key().to_jwk()]));
    let auth = format!("Bearer {token}");
    let store = FixedStore(Some((Rc::new(rotated), 2)));
    let err = f.gate.authenticate(&[("authorization", auth.as_bytes())], &store, &mut c, NOW).unwrap_err();
    assert_eq!(err, AuthError::NeedKeys { provider: 0, unknown_kid: true });
}

#[test]
fn cache_never_serves_past_exp() {
    let f = Fixture::new();
    let mut c = cache();
    let token = f.token(&["readers"]);
    f.authenticate(&token, &mut c, NOW).unwrap();
    assert_eq!(c.len(), 1);
    // exp = NOW + LIFETIME, skew 60.
    assert!(f.authenticate(&token, &mut c, NOW + LIFETIME + 59).is_ok());
    assert_auth_denied(f.authenticate(&token, &mut c, NOW + LIFETIME + 60), "expired");
    assert_auth_denied(f.authenticate(&token, &mut c, NOW + 86_400), "expired");
}

#[test]
fn cache_is_bounded() {
    let f = Fixture::new();
    let mut c = TokenCache::new(2);
    for groups in [["a"], ["b"], ["c"], ["d"]] {
        f.authenticate(&f.token(&groups), &mut c, NOW).unwrap();
        assert!(c.len() <= 2, "len {}", c.len());
    }
    assert!(!c.is_empty());

    let mut off = TokenCache::new(0);
    f.authenticate(&f.token(&["a"]), &mut off, NOW).unwrap();
    assert!(off.is_empty(), "capacity 0 disables the cache");
}

#[test]
fn full_cache_drops_expired_entries_first() {
    let f = Fixture::new();
    let mut c = TokenCache::new(2);
    let short = {
        let mut cl = claims(json!({"groups": ["short"]}));
        cl.expires_at = Some(Duration::from_secs(NOW + 10));
        f.ec.sign(cl).unwrap()
    };
    let long = f.token(&["long"]);
    f.authenticate(&short, &mut c, NOW).unwrap();
    f.authenticate(&long, &mut c, NOW).unwrap();
    assert_eq!(c.len(), 2);
    // At NOW + 100 the short token is past exp + skew: inserting a third
    // token evicts only it, and the long one stays cached.
    f.authenticate(&f.token(&["third"]), &mut c, NOW + 100).unwrap();
    assert_eq!(c.len(), 2);
    let other = key_set(&jwks(&[ES256KeyPair::generate().with_key_id("x").public_key().to_jwk()]));
    let auth = format!("Bearer {long}");
    let same_gen = FixedStore(Some((Rc::new(other), 1)));
    assert!(f.gate.authenticate(&[("authorization", auth.as_bytes())], &same_gen, &mut c, NOW + 100).is_ok());
}

// ---------------------------------------------------------------------------
// Authorization plan

#[test]
fn plan_for_a_read_strips_credentials_and_sets_headers() {
    let f = Fixture::new();
    let plan = f.gate.authorize(&req("GET", "/v1/idx/docs?q=1"), &[("authorization", b"Bearer x")], identity(&["readers", "ci"])).unwrap();
    assert_eq!(
        plan,
        Plan {
            resource: "search".into(),
            operation: "read",
            identity: Some(identity(&["readers", "ci"])),
            remove: vec!["authorization".into(), "x-ci-token".into()],
            set: vec![
                ("x-api-key".into(), "backend-secret".into()),
                ("x-nhi-subject".into(), SUBJECT.into()),
                ("x-nhi-groups".into(), "readers,ci".into()),
            ],
            mask: None,
            hold: None,
            quota: None,
            sync_audit: false,
        }
    );
}

#[test]
fn client_identity_headers_are_removed() {
    let f = Fixture::new();
    let headers: [Header<'_>; 4] = [
        ("x-nhi-subject", b"spoofed"),
        ("x-nhi-groups", b"admins"),
        ("x-nhi-anything", b"1"),
        ("x-other", b"kept"),
    ];
    let plan = f.gate.authorize(&req("GET", "/v1/idx"), &headers, identity(&["readers"])).unwrap();
    for h in ["authorization", "x-ci-token", "x-nhi-subject", "x-nhi-groups", "x-nhi-anything"] {
        assert_eq!(plan.remove.iter().filter(|r| *r == h).count(), 1, "{h} removed once: {:?}", plan.remove);
    }
    assert!(!plan.remove.iter().any(|r| r == "x-other"));
    // The filter's own values are set after removal.
    assert!(plan.set.contains(&("x-nhi-subject".into(), SUBJECT.into())));
    assert!(plan.set.contains(&("x-nhi-groups".into(), "readers".into())));
}

#[test]
fn forward_authorization_keeps_the_token_and_no_identity_headers() {
    let f = Fixture::new();
    let headers: [Header<'_>; 2] = [("authorization", b"Bearer x"), ("x-nhi-subject", b"spoofed")];
    let plan = f.gate.authorize(&req("GET", "/fwd/a"), &headers, identity(&["readers"])).unwrap();
    assert_eq!(plan.resource, "passthrough");
    assert_eq!(plan.remove, ["x-nhi-subject"], "only spoofed identity headers are stripped");
    assert!(plan.set.is_empty(), "identity_headers is false and no upstream_headers");
}

#[test]
fn post_search_is_a_read_but_other_posts_are_writes() {
    let f = Fixture::new();
    let plan = f.gate.authorize(&req("POST", "/v1/idx/search"), &[], identity(&["readers"])).unwrap();
    assert_eq!(plan.operation, "read");
    assert_forbidden(f.gate.authorize(&req("POST", "/v1/idx/documents"), &[], identity(&["readers"])), "group_not_allowed");
    let plan = f.gate.authorize(&req("POST", "/v1/idx/documents"), &[], identity(&["writers"])).unwrap();
    assert_eq!(plan.operation, "write");
}

#[test]
fn authorize_denials() {
    let f = Fixture::new();
    assert_forbidden(f.gate.authorize(&req("GET", "/admin"), &[], identity(&["readers"])), "no_matching_resource");
    assert_forbidden(f.gate.authorize(&req("GET", "/v1/x"), &[], identity(&["nobody"])), "group_not_allowed");
    let mut overage = identity(&["readers"]);
    overage.groups_overage = true;
    assert_forbidden(f.gate.authorize(&req("GET", "/v1/x"), &[], overage), "groups_overage");
}

#[test]
fn pipeline_end_to_end() {
    let f = Fixture::new();
    let mut c = cache();
    let token = f.ed.sign(claims(json!({"groups": "readers writers"}))).unwrap();
    let auth = format!("bearer {token}");
    let headers: [Header<'_>; 2] = [("authorization", auth.as_bytes()), ("x-nhi-groups", b"admins")];
    let id = f.gate.authenticate(&headers, &InlineStore(&f.gate), &mut c, NOW).unwrap();
    let plan = f.gate.authorize(&req("DELETE", "/v1/idx/documents/7"), &headers, id).unwrap();
    assert_eq!(plan.operation, "write");
    assert_eq!(plan.remove, ["authorization", "x-ci-token", "x-nhi-groups"]);
    assert!(plan.set.contains(&("x-nhi-groups".into(), "readers,writers".into())));
}

#[test]
fn token_sent_a_second_way_is_refused() {
    // RFC 6750 §2: one method per request; a copy elsewhere would reach the backend
    let f = Fixture::new();
    let t = f.token(&["readers"]);
    let auth = format!("Bearer {t}");
    let cookie = format!("session=abc; tok={t}");
    let path = format!("/v1/idx/docs?access_token={t}");
    // every byte percent-encoded: three times as long, the same token
    let encoded: String = t.bytes().map(|b| format!("%{b:02X}")).collect();
    let encoded_path = format!("/v1/idx/docs?access_token={encoded}");
    for (extra, place) in [
        (("x-api-key", t.as_bytes()), "x-api-key"),
        ((":path", encoded_path.as_bytes()), "the path"),
        (("cookie", cookie.as_bytes()), "cookie"),
        (("proxy-authorization", auth.as_bytes()), "proxy-authorization"),
        ((":path", path.as_bytes()), "the path"),
    ] {
        let err = f.authenticate_headers(&[("authorization", auth.as_bytes()), extra]).unwrap_err();
        let AuthError::Deny(d) = err else { panic!("{place}: {err:?}") };
        assert_eq!((d.status, d.reason), (400, "token_repeated"), "{place}");
        assert!(d.detail.contains(place) && !d.detail.contains(&t), "{place}: {}", d.detail);
        assert!(d.www_authenticate("rag").unwrap().contains("error=\"invalid_request\""));
    }
    // the token header of the provider is stripped anyway: sending both is not refused
    let ok = f.authenticate_headers(&[("authorization", auth.as_bytes()), ("x-ci-token", t.as_bytes()), (":path", b"/v1/idx/docs")]);
    assert!(ok.is_ok(), "{ok:?}");
    // a value one byte shorter than the token cannot hold it
    let short = t.get(1..).unwrap();
    let ok = f.authenticate_headers(&[("authorization", auth.as_bytes()), ("x-api-key", short.as_bytes())]);
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn masked_resources_drop_range_requests() {
    let gate = Gate::new(config_with_resources(json!([
        {"name": "docs", "path_prefix": "/docs/", "read": {"any_of": ["readers"]}, "mask": {}},
        {"name": "files", "path_prefix": "/files/", "read": {"any_of": ["readers"]}}
    ])));
    let h: [Header; 2] = [("range", b"bytes=0-40,41-200"), ("if-range", b"\"etag\"")];
    let plan = gate.authorize(&req("GET", "/docs/a"), &h, identity(&["readers"])).unwrap();
    assert!(plan.remove.iter().any(|r| r == "range") && plan.remove.iter().any(|r| r == "if-range"), "{:?}", plan.remove);
    let plan = gate.authorize(&req("GET", "/files/a"), &h, identity(&["readers"])).unwrap();
    assert!(!plan.remove.iter().any(|r| r == "range"), "{:?}", plan.remove);
}

#[test]
fn forward_authorization_forwards_only_the_verified_token() {
    let f = Fixture::new();
    // Authorization is read first: an unverified x-ci-token beside it is removed
    let h: [Header<'_>; 2] = [("authorization", b"Bearer x"), ("x-ci-token", b"forged")];
    let plan = f.gate.authorize(&req("GET", "/fwd/a"), &h, identity(&["readers"])).unwrap();
    assert_eq!(plan.remove, ["x-ci-token"]);
    // the token came in x-ci-token: it stays
    let h: [Header<'_>; 1] = [("x-ci-token", b"t")];
    let plan = f.gate.authorize(&req("GET", "/fwd/a"), &h, identity(&["readers"])).unwrap();
    assert!(plan.remove.is_empty(), "{:?}", plan.remove);
}

#[test]
fn groups_prefix_keeps_issuers_group_names_apart() {
    let ec = ES256KeyPair::generate().with_key_id("ec1");
    let keys = jwks(&[ec.public_key().to_jwk()]);
    let doc = json!({
        "providers": [{"name": "gh", "issuer": ISSUER, "audiences": [AUDIENCE], "groups_claim": "repository_owner",
                       "groups_prefix": "github:", "jwks": keys}],
        "resources": [
            {"name": "kc-role", "path_prefix": "/a/", "read": {"any_of": ["rag-readers"]}},
            {"name": "gh-org", "path_prefix": "/b/", "read": {"any_of": ["github:rag-readers"]}}
        ]
    });
    let gate = Gate::new(config(&doc));
    let token = ec.sign(claims(json!({"repository_owner": "rag-readers"}))).unwrap();
    let auth = format!("Bearer {token}");
    let id = gate.authenticate(&[("authorization", auth.as_bytes())], &InlineStore(&gate), &mut TokenCache::new(4), NOW).unwrap();
    assert_eq!(id.groups, ["github:rag-readers"]);
    assert_forbidden(gate.authorize(&req("GET", "/a/x"), &[], id.clone()), "group_not_allowed");
    assert!(gate.authorize(&req("GET", "/b/x"), &[], id).is_ok());
}

#[test]
fn string_groups_split_on_spaces_only() {
    let id = nhi_gate::policy::Identity::from_claims("p", ISSUER, &["groups".into()], &obj(json!({"groups": "team\u{a0}admins ops  dev\tx"})));
    assert_eq!(id.groups, ["team\u{a0}admins", "ops", "dev\tx"]);
}
