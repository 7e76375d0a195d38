//! JSON Web Key Sets (RFC 7517 §5) and key selection for JWS verification.
//!
//! The key decides the algorithm: an RSA JWK verifies only RS*/PS*, an EC
//! P-256 JWK only ES256, P-384 only ES384, an OKP Ed25519 JWK only EdDSA
//! (RFC 8725 §3.1). A JWK that names an `alg` verifies only that `alg`.
//! Keys for encryption (`use: "enc"`) and unsupported key types are skipped.

use jwt_simple::prelude::*;
use serde_json::Value;

/// Largest JWKS document accepted, bytes.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most keys kept from one JWKS.
pub const MAX_KEYS: usize = 64;

/// JWS algorithms this filter verifies (RFC 7518 §3.1, RFC 8037 §3.1).
pub const SUPPORTED_ALGS: [&str; 9] =
    ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];

/// A public key ready to verify one family of algorithms.
enum Verifier {
    Rsa(Box<RsaKeys>),
    Es256(ES256PublicKey),
    Es384(ES384PublicKey),
    Ed25519(Ed25519PublicKey),
}

/// One RSA public key, imported once per RS*/PS* algorithm (jwt-simple binds
/// the algorithm to the key type).
struct RsaKeys {
    rs256: RS256PublicKey,
    rs384: RS384PublicKey,
    rs512: RS512PublicKey,
    ps256: PS256PublicKey,
    ps384: PS384PublicKey,
    ps512: PS512PublicKey,
}

/// One usable verification key of a JWKS.
pub struct Key {
    /// The JWK's `kid`, if any.
    pub kid: Option<String>,
    /// The JWK's `alg`, if any; when set the key verifies only that algorithm.
    pub alg: Option<String>,
    verifier: Verifier,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("kid", &self.kid).field("alg", &self.alg).field("family", &self.family()).finish()
    }
}

impl Key {
    fn family(&self) -> &'static str {
        match self.verifier {
            Verifier::Rsa(_) => "RSA",
            Verifier::Es256(_) => "EC P-256",
            Verifier::Es384(_) => "EC P-384",
            Verifier::Ed25519(_) => "OKP Ed25519",
        }
    }

    /// Whether this key may verify a JWS whose header says `alg`.
    pub fn fits(&self, alg: &str) -> bool {
        if let Some(a) = &self.alg {
            if a != alg {
                return false;
            }
        }
        matches!(
            (&self.verifier, alg),
            (Verifier::Rsa(_), "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512")
                | (Verifier::Es256(_), "ES256")
                | (Verifier::Es384(_), "ES384")
                | (Verifier::Ed25519(_), "EdDSA")
        )
    }

    /// Verifies the compact JWS `token` with this key under `alg`; only the
    /// signature is judged here (claims are checked by `jwt::check_claims`).
    /// `now` is the host clock in seconds, handed to jwt-simple so it uses
    /// the same clock; `skew` the tolerance in seconds.
    pub fn verify(&self, token: &str, alg: &str, now: u64, skew: u64) -> bool {
        let opts = VerificationOptions {
            artificial_time: Some(UnixTimeStamp::from_secs(now)),
            time_tolerance: Some(Duration::from_secs(skew)),
            accept_future: true,
            max_token_length: None,
            max_header_length: None,
            ..Default::default()
        };
        let o = Some(opts);
        match (&self.verifier, alg) {
            (Verifier::Rsa(k), "RS256") => k.rs256.verify_token::<NoCustomClaims>(token, o).is_ok(),
            (Verifier::Rsa(k), "RS384") => k.rs384.verify_token::<NoCustomClaims>(token, o).is_ok(),
            (Verifier::Rsa(k), "RS512") => k.rs512.verify_token::<NoCustomClaims>(token, o).is_ok(),
            (Verifier::Rsa(k), "PS256") => k.ps256.verify_token::<NoCustomClaims>(token, o).is_ok(),
            (Verifier::Rsa(k), "PS384") => k.ps384.verify_token::<NoCustomClaims>(token, o).is_ok(),
            (Verifier::Rsa(k), "PS512") => k.ps512.verify_token::<NoCustomClaims>(token, o).is_ok(),
            (Verifier::Es256(k), "ES256") => k.verify_token::<NoCustomClaims>(token, o).is_ok(),
            (Verifier::Es384(k), "ES384") => k.verify_token::<NoCustomClaims>(token, o).is_ok(),
            (Verifier::Ed25519(k), "EdDSA") => k.verify_token::<NoCustomClaims>(token, o).is_ok(),
            _ => false,
        }
    }
}

/// A parsed JWKS: the usable signature keys, in document order.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
    /// Human notes on JWKs that were skipped (unsupported or invalid), for logs.
    pub skipped: Vec<String>,
}

/// Rebuilds a JWK with only the members jwt-simple's strict import expects
/// for `kty` (drops `x5c`, `x5t`, vendor extras) and with `alg` forced to the
/// family member being imported.
fn jwk_for(obj: &serde_json::Map<String, Value>, members: &[&str], alg: &str) -> String {
    let mut m = serde_json::Map::new();
    for k in members.iter().chain(["kty", "crv"].iter()) {
        if let Some(v) = obj.get(*k) {
            m.insert((*k).to_string(), v.clone());
        }
    }
    m.insert("alg".into(), Value::String(alg.into()));
    Value::Object(m).to_string()
}

fn rsa_verifier(obj: &serde_json::Map<String, Value>) -> Result<Verifier, String> {
    let j = |alg| jwk_for(obj, &["n", "e"], alg);
    let e = |err: jwt_simple::Error| format!("invalid RSA key: {err}");
    Ok(Verifier::Rsa(Box::new(RsaKeys {
        rs256: RS256PublicKey::from_jwk(&j("RS256")).map_err(e)?,
        rs384: RS384PublicKey::from_jwk(&j("RS384")).map_err(e)?,
        rs512: RS512PublicKey::from_jwk(&j("RS512")).map_err(e)?,
        ps256: PS256PublicKey::from_jwk(&j("PS256")).map_err(e)?,
        ps384: PS384PublicKey::from_jwk(&j("PS384")).map_err(e)?,
        ps512: PS512PublicKey::from_jwk(&j("PS512")).map_err(e)?,
    })))
}

fn parse_key(v: &Value) -> Result<Key, String> {
    let obj = v.as_object().ok_or("not a JSON object")?;
    let s = |k: &str| obj.get(k).and_then(Value::as_str);
    if let Some(u) = s("use") {
        if u != "sig" {
            return Err(format!("use {u:?} is not \"sig\""));
        }
    }
    if let Some(ops) = obj.get("key_ops").and_then(Value::as_array) {
        if !ops.iter().any(|o| o.as_str() == Some("verify")) {
            return Err("key_ops does not include \"verify\"".into());
        }
    }
    if obj.contains_key("d") {
        return Err("contains private key material (d); publish public keys only".into());
    }
    let kid = match obj.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err("kid is not a string".into()),
    };
    let alg = match obj.get("alg") {
        None => None,
        Some(Value::String(a)) if SUPPORTED_ALGS.contains(&a.as_str()) => Some(a.clone()),
        Some(a) => return Err(format!("unsupported alg {a}")),
    };
    let kty = s("kty").ok_or("missing kty")?;
    let crv = s("crv");
    let verifier = match (kty, crv) {
        ("RSA", _) => rsa_verifier(obj)?,
        ("EC", Some("P-256")) => Verifier::Es256(
            ES256PublicKey::from_jwk(&jwk_for(obj, &["x", "y"], "ES256")).map_err(|e| format!("invalid P-256 key: {e}"))?,
        ),
        ("EC", Some("P-384")) => Verifier::Es384(
            ES384PublicKey::from_jwk(&jwk_for(obj, &["x", "y"], "ES384")).map_err(|e| format!("invalid P-384 key: {e}"))?,
        ),
        ("OKP", Some("Ed25519")) => Verifier::Ed25519(
            Ed25519PublicKey::from_jwk(&jwk_for(obj, &["x"], "EdDSA")).map_err(|e| format!("invalid Ed25519 key: {e}"))?,
        ),
        (k, c) => return Err(format!("unsupported key type kty={k} crv={}", c.unwrap_or("-"))),
    };
    let key = Key { kid, alg, verifier };
    if let Some(a) = &key.alg {
        if !key.fits(a) {
            return Err(format!("alg {a} does not match kty {kty}"));
        }
    }
    Ok(key)
}

impl KeySet {
    /// Parses a JWKS document `{"keys": [...]}`.
    ///
    /// Errors: not JSON, no `keys` array, larger than [`MAX_JWKS_BYTES`], or no
    /// usable signature key at all. Individual unusable keys are skipped and
    /// noted in `skipped`.
    pub fn from_json(bytes: &[u8]) -> Result<KeySet, String> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(format!("JWKS larger than {MAX_JWKS_BYTES} bytes"));
        }
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("JWKS is not JSON: {e}"))?;
        let keys = doc.get("keys").and_then(Value::as_array).ok_or("JWKS has no \"keys\" array")?;
        let mut set = KeySet::default();
        for (i, k) in keys.iter().take(MAX_KEYS).enumerate() {
            match parse_key(k) {
                Ok(key) => set.keys.push(key),
                Err(e) => set.skipped.push(format!("keys[{i}]: {e}")),
            }
        }
        if set.keys.is_empty() {
            let why = set.skipped.first().cloned().unwrap_or_else(|| "empty".into());
            return Err(format!("JWKS has no usable signature key ({why})"));
        }
        Ok(set)
    }

    /// Keys that may verify a JWS with this `alg` and optional `kid`.
    ///
    /// Errors: `unknown_kid` when a `kid` is given and no key has it (or, without
    /// `kid`, no key fits the alg); `alg_key_mismatch` when the `kid` exists
    /// but its key cannot verify `alg`.
    pub fn candidates<'a>(&'a self, alg: &str, kid: Option<&str>) -> Result<Vec<&'a Key>, &'static str> {
        match kid {
            Some(kid) => {
                let named: Vec<&Key> = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).collect();
                if named.is_empty() {
                    return Err("unknown_kid");
                }
                let fit: Vec<&Key> = named.into_iter().filter(|k| k.fits(alg)).collect();
                if fit.is_empty() { Err("alg_key_mismatch") } else { Ok(fit) }
            }
            None => {
                let fit: Vec<&Key> = self.keys.iter().filter(|k| k.fits(alg)).collect();
                if fit.is_empty() { Err("unknown_kid") } else { Ok(fit) }
            }
        }
    }
}

/// The `jwks_uri` of an OpenID Provider configuration document (OpenID
/// Connect Discovery 1.0 §3) as `(authority, path)`, for the provider whose
/// `issuer` is given.
///
/// Errors: not a JSON object; its `issuer` is not exactly `issuer` (§4.3:
/// such a document must not be used — it may be another tenant's); no
/// `jwks_uri`, or one that is not an `https://` or `http://` URL.
pub fn discovered_jwks_uri(doc: &[u8], issuer: &str) -> Result<(String, String), String> {
    let d: serde_json::Value = serde_json::from_slice(doc).map_err(|e| format!("discovery document is not JSON: {e}"))?;
    match d.get("issuer").and_then(|v| v.as_str()) {
        Some(i) if i == issuer => {}
        Some(i) => return Err(format!("discovery document names issuer {i:?}, not {issuer:?}")),
        None => return Err("discovery document has no issuer".into()),
    }
    d.get("jwks_uri")
        .and_then(|u| u.as_str())
        .and_then(crate::config::split_url)
        .ok_or_else(|| "discovery document has no usable jwks_uri".into())
}
