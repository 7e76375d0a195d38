//! `nhi-gate dev idp`: a loopback OIDC issuer for demos and tests. NOT for
//! production: anyone who can reach it can mint tokens.
//!
//! - `GET /.well-known/openid-configuration` — discovery (OpenID Connect Discovery 1.0 §4)
//! - `GET /jwks` — the public keys (RFC 7517 §5), one RS256 and one ES256 key
//! - `GET /token?sub=ci-reader&groups=a,b&aud=nhi-gate&ttl=300&alg=RS256&scope=rag` —
//!   mints a JWT (text/plain); `ttl` in seconds (default 300), `alg` RS256 or ES256.

use jwt_simple::prelude::*;
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (loopback only makes sense).
    #[arg(long, default_value = "127.0.0.1:9400")]
    listen: String,
    /// Issuer URL placed in `iss` and discovery (default: http://<listen>).
    #[arg(long)]
    issuer: Option<String>,
    /// Default audience for minted tokens.
    #[arg(long, default_value = "nhi-gate")]
    audience: String,
}

struct Keys {
    rs: RS256KeyPair,
    es: ES256KeyPair,
}

fn query(url: &str) -> HashMap<String, String> {
    let q = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// Percent-decoding for query values (`+` is a space).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(v) => {
                    out.push(v);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

static JTI: AtomicU64 = AtomicU64::new(1);

fn mint(keys: &Keys, issuer: &str, default_aud: &str, q: &HashMap<String, String>) -> Result<String, String> {
    let sub = q.get("sub").cloned().unwrap_or_else(|| "ci-job".into());
    let groups: Vec<&str> = q.get("groups").map(|g| g.split(',').filter(|s| !s.is_empty()).collect()).unwrap_or_default();
    let ttl: u64 = q.get("ttl").map(|t| t.parse().map_err(|_| "ttl must be seconds")).transpose()?.unwrap_or(300);
    let aud = q.get("aud").cloned().unwrap_or_else(|| default_aud.to_string());
    let mut custom = serde_json::json!({ "groups": groups });
    if let Some(s) = q.get("scope") {
        custom["scope"] = serde_json::Value::String(s.clone());
    }
    let jti = format!("dev-{}-{}", std::process::id(), JTI.fetch_add(1, Ordering::Relaxed));
    let claims = Claims::with_custom_claims(custom, Duration::from_secs(ttl))
        .with_issuer(issuer)
        .with_audience(aud)
        .with_subject(sub)
        .with_jwt_id(jti);
    match q.get("alg").map(String::as_str).unwrap_or("RS256") {
        "RS256" => keys.rs.sign(claims),
        "ES256" => keys.es.sign(claims),
        other => return Err(format!("alg {other} not offered (RS256, ES256)")),
    }
    .map_err(|e| e.to_string())
}

fn respond(req: tiny_http::Request, status: u16, ctype: &str, body: String) {
    let h = tiny_http::Header::from_bytes("content-type", ctype).ok();
    let mut r = tiny_http::Response::from_string(body).with_status_code(status);
    if let Some(h) = h {
        r = r.with_header(h);
    }
    let _ = req.respond(r);
}

pub fn run(a: Args) -> ExitCode {
    let issuer = a.issuer.unwrap_or_else(|| format!("http://{}", a.listen));
    let rs = match RS256KeyPair::generate(2048) {
        Ok(k) => k.with_key_id("dev-rs256-1"),
        Err(e) => {
            eprintln!("nhi-gate dev idp: RSA key generation failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let es = ES256KeyPair::generate().with_key_id("dev-es256-1");
    let jwks = format!("{{\"keys\":[{},{}]}}", rs.public_key().to_jwk(), es.public_key().to_jwk());
    let keys = Keys { rs, es };
    let server = match tiny_http::Server::http(&a.listen) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nhi-gate dev idp: cannot listen on {}: {e}", a.listen);
            return ExitCode::FAILURE;
        }
    };
    let discovery = serde_json::json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/jwks"),
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
    })
    .to_string();
    println!("nhi-gate dev idp: issuer {issuer} listening on {}", a.listen);
    for req in server.incoming_requests() {
        let url = req.url().to_string();
        let path = url.split('?').next().unwrap_or("");
        match path {
            "/.well-known/openid-configuration" => respond(req, 200, "application/json", discovery.clone()),
            "/jwks" => respond(req, 200, "application/json", jwks.clone()),
            "/token" => match mint(&keys, &issuer, &a.audience, &query(&url)) {
                Ok(t) => respond(req, 200, "text/plain", t),
                Err(e) => respond(req, 400, "text/plain", e),
            },
            _ => respond(req, 404, "text/plain", "not found".into()),
        }
    }
    ExitCode::SUCCESS
}
