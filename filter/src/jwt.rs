//! JWT/JWS handling: taking the token from the request, strict parsing of the
//! compact serialization (RFC 7515 §7.1), header rules (RFC 8725 §3.1-3.2) and
//! claim checks (RFC 7519 §4.1). Signatures are verified by jwt-simple through
//! [`crate::jwks::Key::verify`].

use crate::config::Provider;
use crate::deny::Denial;
use crate::jwks::SUPPORTED_ALGS;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

/// Header members that would let the token choose its own key (RFC 8725 §3.10
/// and RFC 7515 §4.1.3-4.1.6): never trusted, the token is rejected.
const KEY_CARRYING_MEMBERS: [&str; 4] = ["jwk", "jku", "x5u", "x5c"];

/// Reads the bearer token from `Authorization` values (all values of the
/// header, as bytes). Scheme match is case-insensitive (RFC 7235 §2.1).
///
/// Errors (401): `missing_token` when there is none, `malformed` for two
/// Authorization headers, a non-Bearer scheme, an empty token or non-ASCII,
/// `token_too_large` above `max_bytes`.
pub fn bearer_token(values: &[&[u8]], max_bytes: usize) -> Result<String, Denial> {
    let value = match values {
        [] => return Err(Denial::unauthorized("missing_token", "no bearer token")),
        [one] => *one,
        _ => return Err(Denial::unauthorized("malformed", "more than one Authorization header")),
    };
    let trimmed = value.trim_ascii();
    let (scheme, rest) = match trimmed.iter().position(|b| *b == b' ') {
        Some(i) => trimmed.split_at(i),
        None => (trimmed, &b""[..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(Denial::unauthorized("malformed", "Authorization scheme is not Bearer"));
    }
    raw_token(rest, max_bytes)
}

/// Validates a raw token taken from a provider's own token header.
pub fn raw_token(value: &[u8], max_bytes: usize) -> Result<String, Denial> {
    let t = value.trim_ascii();
    if t.is_empty() {
        return Err(Denial::unauthorized("malformed", "empty bearer token"));
    }
    if t.len() > max_bytes {
        return Err(Denial::unauthorized("token_too_large", format!("token longer than {max_bytes} bytes")));
    }
    // (a fold without early exit: the compiler checks many bytes per step)
    if !t.iter().fold(true, |ok, b| ok & b.is_ascii_graphic()) {
        return Err(Denial::unauthorized("malformed", "token contains invalid characters"));
    }
    String::from_utf8(t.to_vec()).map_err(|_| Denial::unauthorized("malformed", "token is not ASCII"))
}

/// A JWS split and decoded, signature not yet verified.
#[derive(Debug, Clone)]
pub struct UnverifiedJwt {
    /// JOSE header `alg` (one of [`SUPPORTED_ALGS`]).
    pub alg: String,
    /// JOSE header `kid`, if present.
    pub kid: Option<String>,
    /// The claims set.
    pub claims: Map<String, Value>,
    /// The decoded signature length in bytes.
    pub signature_len: usize,
}

fn b64(part: &str, what: &str) -> Result<Vec<u8>, Denial> {
    // RFC 7515 §2: base64url without padding; the engine rejects '=' and
    // non-canonical trailing bits.
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Denial::unauthorized("malformed", format!("{what} is not unpadded base64url")))
}

fn json_object(bytes: &[u8], what: &str) -> Result<Map<String, Value>, Denial> {
    match serde_json::from_slice::<Unique>(bytes) {
        Ok(Unique(Value::Object(m))) => Ok(m),
        Err(e) if e.to_string().starts_with(DUPLICATE) => {
            Err(Denial::unauthorized("malformed", format!("{what} has a duplicate member name")))
        }
        _ => Err(Denial::unauthorized("malformed", format!("{what} is not a JSON object"))),
    }
}

const DUPLICATE: &str = "duplicate member";

/// Parses JSON whose objects must have unique member names at every depth
/// (as JOSE headers and claims are read). `Err(true)`: a duplicate name;
/// `Err(false)`: not JSON.
pub(crate) fn parse_unique(bytes: &[u8]) -> Result<Value, bool> {
    match serde_json::from_slice::<Unique>(bytes) {
        Ok(Unique(v)) => Ok(v),
        Err(e) => Err(e.to_string().starts_with(DUPLICATE)),
    }
}

/// A JSON value whose objects have unique member names at every depth.
/// RFC 7515 §4 and RFC 7519 §4 let a parser reject duplicates; accepting
/// "last wins" would let a signer and a verifier read different claims.
struct Unique(Value);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
    type Value = Unique;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Unique, E> {
        Ok(Unique(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Unique, E> {
        Ok(Unique(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Unique, E> {
        Ok(Unique(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Unique, E> {
        Ok(Unique(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Unique, E> {
        Ok(Unique(Value::String(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Unique, E> {
        Ok(Unique(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Unique, E> {
        Ok(Unique(Value::Null))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
        let mut out = Vec::new();
        while let Some(Unique(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Unique(Value::Array(out)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(DUPLICATE));
            }
            let Unique(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Unique(Value::Object(out)))
    }
}

/// Parses a compact JWS and applies the header rules.
///
/// Errors (401): `malformed` (not three base64url segments, non-JSON parts,
/// missing `alg`), `algorithm` (`none` in any spelling, HS*, anything not in
/// [`SUPPORTED_ALGS`]), `untrusted_header` (`jwk`, `jku`, `x5u`, `x5c`),
/// `crit_unsupported` (any `crit`: no extension is understood, RFC 7515 §4.1.11).
/// A `typ` other than `JWT`/`at+jwt` (`application/at+jwt`), or `iss`/`sub`/`jti`/`aud` of the wrong
/// JSON type, is `malformed`.
pub fn parse(token: &str) -> Result<UnverifiedJwt, Denial> {
    let mut parts = token.split('.');
    let (h, c, s) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(c), Some(s), None) if !h.is_empty() && !c.is_empty() => (h, c, s),
        _ => return Err(Denial::unauthorized("malformed", "not a compact JWS (header.claims.signature)")),
    };
    let header = json_object(&b64(h, "header")?, "header")?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(Denial::unauthorized("malformed", "header has no alg")),
    };
    if alg.eq_ignore_ascii_case("none") || alg.to_ascii_uppercase().starts_with("HS") {
        return Err(Denial::unauthorized("algorithm", format!("alg {alg} is never accepted")));
    }
    if !SUPPORTED_ALGS.contains(&alg.as_str()) {
        return Err(Denial::unauthorized("algorithm", "unsupported alg"));
    }
    if let Some(m) = KEY_CARRYING_MEMBERS.iter().find(|m| header.contains_key(**m)) {
        return Err(Denial::unauthorized("untrusted_header", format!("header member {m} is not accepted")));
    }
    if header.contains_key("crit") {
        return Err(Denial::unauthorized("crit_unsupported", "unknown critical header extension"));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(Denial::unauthorized("malformed", "kid is not a string")),
    };
    // Explicit typing (RFC 8725 §3.11): a `typ` other than a plain JWT or an
    // OAuth access token (RFC 9068 §2.1: `at+jwt`) is another kind of token
    // signed by the same keys — `logout+jwt` (OIDC Back-Channel Logout),
    // `secevent+jwt` (RFC 8417), `dpop+jwt` (RFC 9449) — and no credential.
    // RFC 7515 §4.1.9 allows an `application/` prefix; the signature
    // library (jwt-simple) takes it on `application/at+jwt` only and reads
    // `application/jwt` as no JWT, so that one is refused here, with its name.
    if let Some(typ) = header.get("typ") {
        let ok = typ.as_str().is_some_and(|t| matches!(t.to_ascii_lowercase().as_str(), "jwt" | "at+jwt" | "application/at+jwt"));
        if !ok {
            return Err(Denial::unauthorized("malformed", "typ is not JWT or at+jwt"));
        }
    }
    let claims = json_object(&b64(c, "claims")?, "claims")?;
    // RFC 7519 §4.1: these registered claims are strings (StringOrURI).
    for name in ["iss", "sub", "jti", "nonce"] {
        if claims.get(name).is_some_and(|v| !v.is_string()) {
            return Err(Denial::unauthorized("malformed", format!("{name} is not a string")));
        }
    }
    match claims.get("aud") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {}
        Some(_) => return Err(Denial::unauthorized("malformed", "aud is not a string or an array of strings")),
    }
    let sig = b64(s, "signature")?;
    if sig.is_empty() {
        return Err(Denial::unauthorized("malformed", "empty signature"));
    }
    // ECDSA JWS signatures are raw r||s of fixed size (RFC 7518 §3.4); a DER
    // encoding or any other length is refused before any crypto runs.
    let want = match alg.as_str() {
        "ES256" => Some(64),
        "ES384" => Some(96),
        "EdDSA" => Some(64),
        _ => None,
    };
    if want.is_some_and(|w| w != sig.len()) {
        return Err(Denial::unauthorized("signature", "signature has the wrong length for its alg"));
    }
    Ok(UnverifiedJwt { alg, kid, claims, signature_len: sig.len() })
}

/// Reads a NumericDate claim (RFC 7519 §2): absent → `Ok(None)`; a JSON number
/// → seconds (fractions dropped); anything else → `malformed`.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, Denial> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite() && f.abs() < 1e15).map(|f| f.floor() as i64))
            .map(Some)
            .ok_or_else(|| Denial::unauthorized("malformed", format!("{name} is out of range"))),
        Some(_) => Err(Denial::unauthorized("malformed", format!("{name} is not a JSON number"))),
    }
}

/// Checks the registered claims of a token against its provider.
///
/// `now` and `skew` are in seconds. Errors (401): `malformed` (`exp`/`nbf`/`iat`
/// not numbers), `missing_exp`, `expired` (now ≥ exp + skew), `not_yet_valid`
/// (now + skew < nbf, or iat in the future beyond skew), `lifetime`
/// (exp − iat, or exp − now without iat, above `max_lifetime_seconds`),
/// `audience` (no `aud` value among the provider's audiences, RFC 7519 §4.1.3).
pub fn check_claims(claims: &Map<String, Value>, p: &Provider, now: u64, skew: u64) -> Result<(), Denial> {
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let skew = i64::try_from(skew).unwrap_or(0);
    let exp = numeric_date(claims, "exp")?.ok_or_else(|| Denial::unauthorized("missing_exp", "token has no exp"))?;
    let nbf = numeric_date(claims, "nbf")?;
    let iat = numeric_date(claims, "iat")?;
    if now >= exp.saturating_add(skew) {
        return Err(Denial::unauthorized("expired", "token has expired"));
    }
    if let Some(nbf) = nbf {
        if now.saturating_add(skew) < nbf {
            return Err(Denial::unauthorized("not_yet_valid", "token is not valid yet (nbf)"));
        }
    }
    if let Some(iat) = iat {
        if now.saturating_add(skew) < iat {
            return Err(Denial::unauthorized("not_yet_valid", "token was issued in the future (iat)"));
        }
    }
    let max = i64::try_from(p.max_lifetime_seconds).unwrap_or(i64::MAX);
    let lifetime = exp.saturating_sub(iat.unwrap_or(now));
    if lifetime > max {
        return Err(Denial::unauthorized("lifetime", format!("token lifetime exceeds {max} s")));
    }
    let ok = match claims.get("aud") {
        Some(Value::String(a)) => p.audiences.iter().any(|x| x == a),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(|a| p.audiences.iter().any(|x| x == a)),
        _ => false,
    };
    if !ok {
        return Err(Denial::unauthorized("audience", "token audience is not accepted"));
    }
    Ok(())
}

/// The `iss` claim, required to pick the provider.
pub fn issuer(claims: &Map<String, Value>) -> Result<&str, Denial> {
    claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or_else(|| Denial::unauthorized("malformed", "token has no iss"))
}
