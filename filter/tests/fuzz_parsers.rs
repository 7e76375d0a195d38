//! Bounded random fuzzing of every parser that sees request or IdP data:
//! no input may panic, garbage is never accepted, and no single-byte mutation
//! of a valid token ever verifies. Deterministic (fixed seeds), so a failure
//! reproduces; bounded in iterations so it stays fast.

mod common;

use common::*;
use jwt_simple::prelude::*;
use nhi_gate::config::Config;
use nhi_gate::gate::{Gate, TokenCache};
use nhi_gate::jwks::KeySet;
use nhi_gate::jwt;
use nhi_gate::policy::Glob;

/// Random bytes for parsers.
trait RandomBytes {
    fn bytes(&mut self, max: usize) -> Vec<u8>;
}

impl RandomBytes for Rng {
    /// Random bytes biased towards JSON/JWS punctuation so parsers get past their first byte.
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        const ALPHABET: &[u8] = b"{}[]\":,.-_=0123456789abcdefeyJAZaz \\/\n\t\xff\x00";
        let n = self.below(max);
        (0..n)
            .map(|_| if self.below(4) == 0 { self.next() as u8 } else { ALPHABET[self.below(ALPHABET.len())] })
            .collect()
    }
}

#[test]
fn random_bytes_never_panic_and_are_never_accepted() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..20_000 {
        let b = rng.bytes(400);
        let text = String::from_utf8_lossy(&b);
        assert!(jwt::parse(&text).is_err());
        let _ = jwt::bearer_token(&[&b], 8192);
        let _ = jwt::raw_token(&b, 8192);
        assert!(KeySet::from_json(&b).is_err());
        assert!(Config::from_json(&b).is_err());
        let _ = Glob::new(&text).matches(&b);
    }
}

#[test]
fn structured_garbage_in_jws_segments_never_panics() {
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let parts: Vec<String> = (0..3).map(|_| b64(rng.bytes(120))).collect();
        let token = parts.join(".");
        assert!(jwt::parse(&token).is_err());
        let h = b64(format!("{{\"alg\":\"ES256\",\"kid\":\"{}\"}}", String::from_utf8_lossy(&rng.bytes(8))));
        let _ = jwt::parse(&format!("{h}.{}.{}", parts[1], parts[2]));
    }
}

#[test]
fn no_single_byte_mutation_of_a_valid_token_verifies() {
    let ec = ES256KeyPair::generate().with_key_id("ec1");
    let doc = serde_json::json!({
        "providers": [{"name": "idp", "issuer": ISSUER, "audiences": [AUDIENCE], "max_lifetime_seconds": 900,
                       "jwks": jwks(&[ec.public_key().to_jwk()])}],
        "resources": [{"name": "r", "read": {"any_of": ["g"]}}]
    });
    let gate = Gate::new(config(&doc));
    let store = InlineStore(&gate);
    let now = jwt_simple::prelude::Clock::now_since_epoch().as_secs();
    let claims = Claims::create(Duration::from_secs(300)).with_issuer(ISSUER).with_audience(AUDIENCE).with_subject("s");
    let token = ec.sign(claims).unwrap();
    let mut cache = TokenCache::new(0);
    let hdr = format!("Bearer {token}");
    assert!(gate.authenticate(&[("authorization", hdr.as_bytes())], &store, &mut cache, now).is_ok());
    let mut rng = Rng(7);
    for _ in 0..3_000 {
        let mut b = token.clone().into_bytes();
        let i = rng.below(b.len());
        let old = b[i];
        b[i] = loop {
            let c = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."[rng.below(65)];
            if c != old {
                break c;
            }
        };
        let hdr = [b"Bearer ".as_slice(), &b].concat();
        let r = gate.authenticate(&[("authorization", &hdr)], &store, &mut cache, now);
        assert!(r.is_err(), "mutated token verified: byte {i} {old} -> {}", b[i]);
    }
}
