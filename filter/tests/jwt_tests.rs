//! `jwt`: bearer extraction, strict JWS parsing and header rules, claim checks.

mod common;

use common::*;
use nhi_gate::jwt::{bearer_token, check_claims, issuer, parse, raw_token};
use serde_json::{json, Value};

const MAX: usize = 8192;

// ---------------------------------------------------------------------------
// Claim checks

/// Checks `claims` against a provider for [`AUDIENCE`] with a one-hour maximum lifetime.
fn check(claims: Value, now: u64, skew: u64) -> Result<(), nhi_gate::deny::Denial> {
    check_claims(&obj(claims), &provider(&[AUDIENCE], 3600), now, skew)
}

/// `default_claims()` with members replaced (`Value::Null` removes one).
fn claims_with(changes: &[(&str, Value)]) -> Value {
    let mut m = obj(default_claims());
    for (k, v) in changes {
        if v.is_null() {
            m.remove(*k);
        } else {
            m.insert((*k).to_string(), v.clone());
        }
    }
    Value::Object(m)
}

#[test]
fn valid_claims_pass() {
    assert_eq!(check(default_claims(), NOW, 60), Ok(()));
    assert_eq!(check(default_claims(), NOW, 0), Ok(()));
}

#[test]
fn exp_is_required() {
    assert_unauthorized(check(claims_with(&[("exp", Value::Null)]), NOW, 60), "missing_exp");
}

#[test]
fn expiry_boundary_without_skew() {
    let c = claims_with(&[("iat", json!(NOW - 100)), ("nbf", Value::Null), ("exp", json!(NOW))]);
    assert_eq!(check(c.clone(), NOW - 1, 0), Ok(()), "one second before exp");
    assert_unauthorized(check(c.clone(), NOW, 0), "expired");
    assert_unauthorized(check(c, NOW + 1, 0), "expired");
}

#[test]
fn expiry_tolerates_clock_skew_exclusively() {
    let c = claims_with(&[("iat", json!(NOW - 100)), ("nbf", Value::Null), ("exp", json!(NOW))]);
    assert_eq!(check(c.clone(), NOW + 59, 60), Ok(()), "within skew");
    assert_unauthorized(check(c.clone(), NOW + 60, 60), "expired");
    assert_unauthorized(check(c, NOW + 10_000, 60), "expired");
}

#[test]
fn nbf_is_enforced_with_skew() {
    let c = claims_with(&[("iat", json!(NOW - 100)), ("nbf", json!(NOW + 100)), ("exp", json!(NOW + 300))]);
    assert_eq!(check(c.clone(), NOW + 40, 60), Ok(()), "now + skew == nbf is valid");
    assert_unauthorized(check(c.clone(), NOW + 39, 60), "not_yet_valid");
    assert_unauthorized(check(c.clone(), NOW + 99, 0), "not_yet_valid");
    assert_eq!(check(c, NOW + 100, 0), Ok(()));
}

#[test]
fn iat_in_the_future_beyond_skew_is_refused() {
    let at = |iat: u64| claims_with(&[("iat", json!(iat)), ("nbf", Value::Null), ("exp", json!(NOW + 300))]);
    assert_eq!(check(at(NOW + 60), NOW, 60), Ok(()), "iat exactly at the skew limit");
    assert_unauthorized(check(at(NOW + 61), NOW, 60), "not_yet_valid");
    assert_unauthorized(check(at(NOW + 1), NOW, 0), "not_yet_valid");
}

#[test]
fn lifetime_is_measured_from_iat() {
    // max_lifetime_seconds = 3600
    let c = |iat: u64, exp: u64| claims_with(&[("iat", json!(iat)), ("nbf", Value::Null), ("exp", json!(exp))]);
    assert_eq!(check(c(NOW, NOW + 3600), NOW, 0), Ok(()), "exactly the maximum");
    assert_unauthorized(check(c(NOW, NOW + 3601), NOW, 0), "lifetime");
    // Nearly expired now, but it was minted with a 2-hour lifetime: still refused.
    assert_unauthorized(check(c(NOW - 7200, NOW + 10), NOW, 0), "lifetime");
}

#[test]
fn lifetime_without_iat_is_measured_from_now() {
    let c = |exp: u64| claims_with(&[("iat", Value::Null), ("nbf", Value::Null), ("exp", json!(exp))]);
    assert_eq!(check(c(NOW + 3600), NOW, 0), Ok(()));
    assert_unauthorized(check(c(NOW + 3601), NOW, 0), "lifetime");
    // The same token becomes acceptable once its remaining lifetime is short enough.
    assert_eq!(check(c(NOW + 3601), NOW + 1, 0), Ok(()));
    // A year-long token without iat is a static secret.
    assert_unauthorized(check(c(NOW + 365 * 86400), NOW, 60), "lifetime");
}

#[test]
fn audience_as_string() {
    assert_eq!(check(claims_with(&[("aud", json!(AUDIENCE))]), NOW, 0), Ok(()));
    assert_unauthorized(check(claims_with(&[("aud", json!("other-api"))]), NOW, 0), "audience");
    // Exact match only: no prefix or case folding.
    assert_unauthorized(check(claims_with(&[("aud", json!("rag-api-2"))]), NOW, 0), "audience");
    assert_unauthorized(check(claims_with(&[("aud", json!("RAG-API"))]), NOW, 0), "audience");
}

#[test]
fn audience_as_array_needs_one_overlap() {
    assert_eq!(check(claims_with(&[("aud", json!(["x", AUDIENCE, "y"]))]), NOW, 0), Ok(()));
    assert_unauthorized(check(claims_with(&[("aud", json!(["x", "y"]))]), NOW, 0), "audience");
    assert_unauthorized(check(claims_with(&[("aud", json!([]))]), NOW, 0), "audience");
    // Non-string members are ignored, not matched.
    assert_unauthorized(check(claims_with(&[("aud", json!([1, null, {"a": AUDIENCE}]))]), NOW, 0), "audience");
}

#[test]
fn audience_missing_or_wrong_type_is_refused() {
    assert_unauthorized(check(claims_with(&[("aud", Value::Null)]), NOW, 0), "audience");
    assert_unauthorized(check(claims_with(&[("aud", json!(42))]), NOW, 0), "audience");
    assert_unauthorized(check(claims_with(&[("aud", json!({"aud": AUDIENCE}))]), NOW, 0), "audience");
}

#[test]
fn any_of_several_provider_audiences_is_accepted() {
    let p = provider(&["a1", "a2"], 3600);
    assert_eq!(check_claims(&obj(claims_with(&[("aud", json!("a2"))])), &p, NOW, 0), Ok(()));
    assert_eq!(check_claims(&obj(claims_with(&[("aud", json!(["z", "a1"]))])), &p, NOW, 0), Ok(()));
    assert_unauthorized(check_claims(&obj(default_claims()), &p, NOW, 0), "audience");
}

#[test]
fn numeric_dates_as_strings_are_malformed() {
    for name in ["exp", "nbf", "iat"] {
        let value = json!(format!("{}", NOW + 10));
        assert_unauthorized(check(claims_with(&[(name, value)]), NOW, 60), "malformed");
        assert_unauthorized(check(claims_with(&[(name, json!(true))]), NOW, 60), "malformed");
        assert_unauthorized(check(claims_with(&[(name, json!([NOW]))]), NOW, 60), "malformed");
    }
    // An explicit null is not "absent": it is the wrong type.
    for name in ["exp", "nbf", "iat"] {
        let mut c = obj(default_claims());
        c.insert(name.into(), Value::Null);
        assert_unauthorized(check(Value::Object(c), NOW, 60), "malformed");
    }
}

#[test]
fn numeric_dates_out_of_range_are_malformed() {
    assert_unauthorized(check(claims_with(&[("exp", json!(u64::MAX))]), NOW, 60), "malformed");
    assert_unauthorized(check(claims_with(&[("exp", json!(1e300))]), NOW, 60), "malformed");
}

#[test]
fn fractional_numeric_dates_are_floored() {
    let c = claims_with(&[("exp", json!(NOW as f64 + 100.9)), ("iat", json!(NOW as f64 - 0.5))]);
    assert_eq!(check(c.clone(), NOW + 99, 0), Ok(()));
    assert_unauthorized(check(c, NOW + 100, 0), "expired");
}

#[test]
fn issuer_is_required_and_a_string() {
    assert_eq!(issuer(&obj(default_claims())), Ok(ISSUER));
    assert_unauthorized(issuer(&obj(claims_with(&[("iss", Value::Null)]))), "malformed");
    assert_unauthorized(issuer(&obj(claims_with(&[("iss", json!(["a"]))]))), "malformed");
}

// ---------------------------------------------------------------------------
// Token parsing and header rules

fn with_header(header: Value) -> String {
    compact(&header, &default_claims(), &[7u8; 256])
}

#[test]
fn parse_returns_alg_kid_claims_and_signature_length() {
    let t = parse(&unsigned("RS256", 256)).expect("valid structure");
    assert_eq!(t.alg, "RS256");
    assert_eq!(t.kid.as_deref(), Some("k1"));
    assert_eq!(t.claims.get("iss"), Some(&json!(ISSUER)));
    assert_eq!(t.signature_len, 256);

    let t = parse(&with_header(json!({"alg": "PS384"}))).expect("no kid is fine");
    assert_eq!(t.kid, None);
}

#[test]
fn every_supported_alg_parses() {
    for (alg, len) in [
        ("RS256", 256),
        ("RS384", 256),
        ("RS512", 512),
        ("PS256", 256),
        ("PS384", 384),
        ("PS512", 512),
        ("ES256", 64),
        ("ES384", 96),
        ("EdDSA", 64),
    ] {
        assert!(parse(&unsigned(alg, len)).is_ok(), "{alg} should parse");
    }
}

#[test]
fn alg_none_is_refused_in_any_spelling() {
    for alg in ["none", "None", "NONE", "nOnE"] {
        assert_unauthorized(parse(&unsigned(alg, 32)), "algorithm");
    }
}

#[test]
fn alg_none_with_empty_signature_is_refused_as_algorithm() {
    // The classic unsecured JWS "header.claims." never reaches key lookup.
    let t = format!("{}.{}.", b64(json!({"alg": "none"}).to_string()), b64(default_claims().to_string()));
    assert_unauthorized(parse(&t), "algorithm");
}

#[test]
fn hmac_algs_are_refused() {
    for alg in ["HS256", "HS384", "HS512", "hs256"] {
        assert_unauthorized(parse(&unsigned(alg, 32)), "algorithm");
    }
}

#[test]
fn unsupported_algs_are_refused() {
    for alg in ["ES512", "ES256K", "RS1", "Ed25519", "rs256", "RS256 ", "", "dir", "RSA-OAEP"] {
        assert_unauthorized(parse(&unsigned(alg, 64)), "algorithm");
    }
}

#[test]
fn missing_or_non_string_alg_is_malformed() {
    assert_unauthorized(parse(&with_header(json!({"kid": "k1"}))), "malformed");
    assert_unauthorized(parse(&with_header(json!({"alg": 256}))), "malformed");
    assert_unauthorized(parse(&with_header(json!({"alg": ["RS256"]}))), "malformed");
}

#[test]
fn key_carrying_header_members_are_refused() {
    for member in ["jwk", "jku", "x5u", "x5c"] {
        let h = json!({"alg": "RS256", "kid": "k1", member: "https://attacker.example/keys"});
        assert_unauthorized(parse(&with_header(h)), "untrusted_header");
    }
    let h = json!({"alg": "ES256", "jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}});
    assert_unauthorized(parse(&compact(&h, &default_claims(), &[1u8; 64])), "untrusted_header");
}

#[test]
fn crit_is_refused_even_when_empty() {
    assert_unauthorized(parse(&with_header(json!({"alg": "RS256", "crit": ["exp"], "exp": 1}))), "crit_unsupported");
    assert_unauthorized(parse(&with_header(json!({"alg": "RS256", "crit": []}))), "crit_unsupported");
}

#[test]
fn kid_must_be_a_string() {
    assert_unauthorized(parse(&with_header(json!({"alg": "RS256", "kid": 1}))), "malformed");
    assert_unauthorized(parse(&with_header(json!({"alg": "RS256", "kid": null}))), "malformed");
}

#[test]
fn header_and_claims_must_be_json_objects() {
    let sig = b64([1u8; 256]);
    let claims = b64(default_claims().to_string());
    let header = b64(json!({"alg": "RS256"}).to_string());
    assert_unauthorized(parse(&format!("{}.{claims}.{sig}", b64("[\"RS256\"]"))), "malformed");
    assert_unauthorized(parse(&format!("{}.{claims}.{sig}", b64("not json"))), "malformed");
    assert_unauthorized(parse(&format!("{header}.{}.{sig}", b64("[1,2]"))), "malformed");
    assert_unauthorized(parse(&format!("{header}.{}.{sig}", b64("\"claims\""))), "malformed");
}

#[test]
fn padded_base64_is_refused() {
    let good = unsigned("RS256", 256);
    let parts: Vec<&str> = good.split('.').collect();
    // 256-byte signature → 342 base64url chars; the padded form ends in "==".
    assert_eq!(parts[2].len() % 4, 2);
    assert_unauthorized(parse(&with_segment(&good, 2, &format!("{}==", parts[2]))), "malformed");

    // Header padded: pick a header whose encoding needs padding.
    let header = json!({"alg": "RS256", "kid": "k"}).to_string();
    assert_ne!(header.len() % 3, 0, "test header must need padding");
    let padded = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE, header.as_bytes());
    assert!(padded.ends_with('='));
    assert_unauthorized(parse(&with_segment(&good, 0, &padded)), "malformed");

    // Claims padded.
    let claims = default_claims().to_string();
    let padded = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE, claims.as_bytes());
    if padded.ends_with('=') {
        assert_unauthorized(parse(&with_segment(&good, 1, &padded)), "malformed");
    }
}

#[test]
fn non_base64url_characters_are_refused() {
    let good = unsigned("RS256", 256);
    let sig = good.rsplit('.').next().unwrap().to_string();
    for bad in ['+', '/', ' ', '!', '*'] {
        let mut s = sig.clone();
        s.replace_range(0..1, &bad.to_string());
        assert_unauthorized(parse(&with_segment(&good, 2, &s)), "malformed");
    }
    // Standard (non-URL) alphabet in the header.
    let header = base64::Engine::encode(&base64::engine::general_purpose::STANDARD_NO_PAD, [0xfbu8, 0xff, 0xfe]);
    assert!(header.contains('+') || header.contains('/'));
    assert_unauthorized(parse(&with_segment(&good, 0, &header)), "malformed");
}

#[test]
fn non_canonical_trailing_bits_are_refused() {
    // A 1-byte signature encodes to 2 chars; the last char carries 4 unused
    // bits that must be zero. "AB" decodes to 0x00 with a non-zero pad bit.
    let good = unsigned("RS256", 1);
    assert!(parse(&with_segment(&good, 2, "AA")).is_ok());
    assert_unauthorized(parse(&with_segment(&good, 2, "AB")), "malformed");
}

#[test]
fn wrong_number_of_segments_is_malformed() {
    let good = unsigned("RS256", 256);
    let parts: Vec<&str> = good.split('.').collect();
    let (h, c, s) = (parts[0], parts[1], parts[2]);
    for bad in [
        String::new(),
        h.to_string(),
        format!("{h}.{c}"),
        format!("{h}.{c}.{s}.{s}"),
        format!("{h}.{c}.{s}."),
        format!(".{c}.{s}"),
        format!("{h}..{s}"),
        "..".to_string(),
    ] {
        assert_unauthorized(parse(&bad), "malformed");
    }
}

#[test]
fn empty_signature_is_malformed() {
    let good = unsigned("RS256", 256);
    assert_unauthorized(parse(&with_segment(&good, 2, "")), "malformed");
    let good = unsigned("ES256", 64);
    assert_unauthorized(parse(&with_segment(&good, 2, "")), "malformed");
}

#[test]
fn ecdsa_signature_of_wrong_length_is_refused_as_signature() {
    // DER-encoded ECDSA P-256 signatures are 70-72 bytes; JWS wants raw r||s (64).
    for len in [63, 65, 70, 71, 72] {
        assert_unauthorized(parse(&unsigned("ES256", len)), "signature");
    }
    for len in [64, 95, 97, 102, 104] {
        assert_unauthorized(parse(&unsigned("ES384", len)), "signature");
    }
    for len in [32, 63, 65] {
        assert_unauthorized(parse(&unsigned("EdDSA", len)), "signature");
    }
    assert!(parse(&unsigned("ES256", 64)).is_ok());
    assert!(parse(&unsigned("ES384", 96)).is_ok());
    assert!(parse(&unsigned("EdDSA", 64)).is_ok());
}

#[test]
fn parse_error_details_never_echo_the_token() {
    let t = with_header(json!({"alg": "HS256", "kid": "secret-kid-value"}));
    let d = parse(&t).unwrap_err();
    assert!(!d.detail.contains(&t));
    assert!(!d.detail.contains("secret-kid-value"));
}

// ---------------------------------------------------------------------------
// Bearer extraction

fn bearer(values: &[&[u8]]) -> Result<String, nhi_gate::deny::Denial> {
    bearer_token(values, MAX)
}

#[test]
fn bearer_token_is_extracted() {
    assert_eq!(bearer(&[b"Bearer abc.def.ghi"]), Ok("abc.def.ghi".into()));
}

#[test]
fn bearer_scheme_is_case_insensitive() {
    for v in [&b"bearer tok"[..], b"BEARER tok", b"BeArEr tok"] {
        assert_eq!(bearer(&[v]), Ok("tok".into()), "{:?}", String::from_utf8_lossy(v));
    }
}

#[test]
fn surrounding_and_separating_spaces_are_tolerated() {
    assert_eq!(bearer(&[b"  Bearer   tok  "]), Ok("tok".into()));
}

#[test]
fn no_authorization_header_is_missing_token() {
    assert_unauthorized(bearer(&[]), "missing_token");
}

#[test]
fn two_authorization_headers_are_malformed() {
    assert_unauthorized(bearer(&[b"Bearer a", b"Bearer a"]), "malformed");
    assert_unauthorized(bearer(&[b"Bearer a", b"Bearer b"]), "malformed");
}

#[test]
fn empty_token_is_malformed() {
    for v in [&b"Bearer"[..], b"Bearer ", b"Bearer    ", b"", b"   "] {
        assert_unauthorized(bearer(&[v]), "malformed");
    }
}

#[test]
fn non_bearer_schemes_are_malformed() {
    for v in [&b"Basic dXNlcjpwYXNz"[..], b"Token abc", b"Bearerabc", b"Bearer: abc", b"DPoP abc", b"Bearer\tabc"] {
        assert_unauthorized(bearer(&[v]), "malformed");
    }
}

#[test]
fn token_size_limit_is_inclusive() {
    let at_limit = format!("Bearer {}", "a".repeat(MAX));
    assert_eq!(bearer(&[at_limit.as_bytes()]).map(|t| t.len()), Ok(MAX));
    let over = format!("Bearer {}", "a".repeat(MAX + 1));
    assert_unauthorized(bearer(&[over.as_bytes()]), "token_too_large");
    assert_unauthorized(bearer_token(&[b"Bearer abcdef"], 5), "token_too_large");
}

#[test]
fn non_ascii_and_control_bytes_are_malformed() {
    for v in [&b"Bearer ab\xffcd"[..], "Bearer t\u{f6}ken".as_bytes(), b"Bearer ab\x00cd", b"Bearer ab\x7fcd", b"Bearer a b"] {
        assert_unauthorized(bearer(&[v]), "malformed");
    }
}

#[test]
fn raw_token_is_trimmed_and_validated() {
    assert_eq!(raw_token(b"  abc.def.ghi \t", MAX), Ok("abc.def.ghi".into()));
    assert_unauthorized(raw_token(b"   ", MAX), "malformed");
    assert_unauthorized(raw_token(b"Bearer abc", MAX), "malformed");
    assert_unauthorized(raw_token(b"abcdef", 5), "token_too_large");
    assert_unauthorized(raw_token(b"ab\xc3\xa9", MAX), "malformed");
}

#[test]
fn typ_must_say_jwt_when_present() {
    assert!(parse(&with_header(json!({"alg": "RS256", "typ": "JWT"}))).is_ok());
    assert!(parse(&with_header(json!({"alg": "RS256", "typ": "at+jwt"}))).is_ok());
    assert!(parse(&with_header(json!({"alg": "RS256", "typ": "application/AT+JWT"}))).is_ok());
    assert!(parse(&with_header(json!({"alg": "RS256", "typ": "jwt"}))).is_ok());
    // other tokens the same keys sign are no credentials
    for other in ["logout+jwt", "secevent+jwt", "dpop+jwt", "application/logout+jwt", "+jwt", "jwt+jwt"] {
        assert_unauthorized(parse(&with_header(json!({"alg": "RS256", "typ": other}))), "malformed");
    }
    assert_unauthorized(parse(&with_header(json!({"alg": "RS256", "typ": "JOSE"}))), "malformed");
    // the signature library reads `application/jwt` as no JWT: refused here, named
    assert_unauthorized(parse(&with_header(json!({"alg": "RS256", "typ": "application/jwt"}))), "malformed");
    assert_unauthorized(parse(&with_header(json!({"alg": "RS256", "typ": 1}))), "malformed");
}

#[test]
fn registered_string_claims_must_be_strings() {
    let mut c = default_claims();
    for (name, bad) in [("sub", json!(1)), ("jti", json!({"a": 1})), ("iss", json!(["x"])), ("aud", json!(["ok", 2]))] {
        let mut claims = c.clone();
        claims[name] = bad;
        let t = compact(&json!({"alg": "RS256"}), &claims, &[1u8; 256]);
        assert_unauthorized(parse(&t), "malformed");
    }
    c["sub"] = json!("fine");
    assert!(parse(&compact(&json!({"alg": "RS256"}), &c, &[1u8; 256])).is_ok());
}

#[test]
fn duplicate_member_names_are_refused_at_any_depth() {
    let claims = b64(default_claims().to_string());
    let sig = b64([1u8; 256]);
    let dup_header = b64(r#"{"alg":"RS256","alg":"none"}"#);
    assert_unauthorized(parse(&format!("{dup_header}.{claims}.{sig}")), "malformed");
    let h = b64(r#"{"alg":"RS256"}"#);
    let dup_claims = b64(format!(r#"{{"iss":"{ISSUER}","exp":1,"exp":{}}}"#, NOW + 60));
    assert_unauthorized(parse(&format!("{h}.{dup_claims}.{sig}")), "malformed");
    let nested = b64(format!(r#"{{"iss":"{ISSUER}","realm_access":{{"roles":["a"],"roles":["admin"]}}}}"#));
    assert_unauthorized(parse(&format!("{h}.{nested}.{sig}")), "malformed");
}
