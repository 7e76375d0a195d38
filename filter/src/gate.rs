//! The request pipeline, independent of the proxy-wasm host: token → verified
//! identity (with a bounded cache) → resource and operation → allow with a
//! plan of upstream header changes, or a [`Denial`].

use crate::approval::{ApprovalRef, Ticket, APPROVAL_HEADER};
use crate::config::{Config, KeySource, Resource};
use crate::deny::Denial;
use crate::jwks::KeySet;
use crate::jwt;
use crate::policy::{Identity, OpClass, Request};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::rc::Rc;

/// Identity headers the filter sets; any client-sent header with this prefix is dropped.
pub const IDENTITY_HEADER_PREFIX: &str = "x-nhi-";

/// Headers some frameworks read to replace the request method: dropped, so a
/// backend cannot be told to act on another method than the one authorized.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

/// Whether `value` holds the token `finder` looks for, as sent or
/// percent-decoded (a query parser or cookie library decodes `%2E` back to
/// `.`, so an encoded copy reaches the backend as the token).
fn carries(finder: &memchr::memmem::Finder<'_>, value: &[u8]) -> bool {
    finder.find(value).is_some()
        || (memchr::memchr(b'%', value).is_some() && finder.find(crate::audit::percent_decode(&String::from_utf8_lossy(value)).as_bytes()).is_some())
}

/// Whether `value` (a request trailer) holds `token`, as sent or percent-decoded.
pub fn carries_token(token: &str, value: &[u8]) -> bool {
    carries(&memchr::memmem::Finder::new(token.as_bytes()), value)
}

/// Percent-encodes (RFC 3986 §2.1) `%`, `,` and every byte outside visible
/// ASCII, so identity values from token claims stay one unambiguous header
/// value: `x-nhi-groups` is a comma-separated list of encoded group names.
pub fn header_safe(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (b.is_ascii_graphic() && b != b'%' && b != b',') || b == b' ' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a request's `Accept-Encoding` headers (RFC 9110 §12.5.3) allow
/// a content coding other than `identity`, so that a masked route must
/// rewrite them to `identity`. A request without the header is left as it
/// is (one header change less per request): servers answer it without a
/// coding, and a route that still answers coded is decoded (gzip) or
/// refused (502 `unmaskable_encoding`), never passed unmasked.
pub fn asks_for_coding(headers: &[Header<'_>]) -> bool {
    headers.iter().any(|(n, v)| *n == "accept-encoding" && !v.trim_ascii().eq_ignore_ascii_case(b"identity"))
}

/// Where the pipeline gets a provider's current keys.
pub trait KeyStore {
    /// The current key set of provider `index` and its generation (changes
    /// whenever the set is replaced), or `None` while no keys are known.
    fn keys(&self, index: usize) -> Option<(Rc<KeySet>, u64)>;
}

/// Why authentication could not finish now.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    /// Refuse the request.
    Deny(Denial),
    /// Provider `provider` has no keys yet (`unknown_kid == false`) or none
    /// with the token's `kid` (`unknown_kid == true`); the host may fetch
    /// the JWKS and retry, or deny with [`AuthError::into_denial`].
    NeedKeys { provider: usize, unknown_kid: bool },
}

impl AuthError {
    /// The denial to send when no (new) keys can be had.
    pub fn into_denial(self) -> Denial {
        match self {
            AuthError::Deny(d) => d,
            AuthError::NeedKeys { unknown_kid: true, .. } => {
                Denial::unauthorized("unknown_kid", "no key of the issuer matches the token")
            }
            AuthError::NeedKeys { unknown_kid: false, .. } => {
                Denial::unauthorized("jwks_unavailable", "the issuer's keys could not be fetched")
            }
        }
    }
}

impl From<Denial> for AuthError {
    fn from(d: Denial) -> Self {
        AuthError::Deny(d)
    }
}

struct CacheEntry {
    provider: usize,
    generation: u64,
    claims: Rc<Map<String, Value>>,
    /// SHA-256 (hex) of the token, for audit records.
    token_sha256: Rc<str>,
}

/// Verified-token cache: token → claims, for tokens whose signature was
/// checked under a given key-set generation. Bounded to `capacity` entries;
/// entries are re-checked against the clock on every hit, so nothing is
/// served past `exp`.
pub struct TokenCache {
    capacity: usize,
    map: HashMap<String, CacheEntry>,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        TokenCache { capacity, map: HashMap::new() }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn insert(&mut self, token: String, entry: CacheEntry, now: u64, skew: u64) {
        if self.capacity == 0 {
            return;
        }
        if self.map.len() >= self.capacity {
            let now = i64::try_from(now).unwrap_or(i64::MAX);
            let skew = i64::try_from(skew).unwrap_or(0);
            self.map.retain(|_, e| e.claims.get("exp").and_then(Value::as_i64).is_some_and(|exp| now < exp.saturating_add(skew)));
            if self.map.len() >= self.capacity {
                self.map.clear();
            }
        }
        self.map.insert(token, entry);
    }
}

/// A request header as bytes (name lowercase, as Envoy delivers them).
pub type Header<'a> = (&'a str, &'a [u8]);

/// What to change upstream for an allowed request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Resource name that allowed the request.
    pub resource: String,
    pub operation: &'static str,
    pub identity: Option<Identity>,
    /// Header names to remove (lowercase).
    pub remove: Vec<String>,
    /// Headers to set (replacing any value).
    pub set: Vec<(String, String)>,
    /// Masking settings of the resource, when its bodies are masked.
    pub mask: Option<std::rc::Rc<crate::config::ResourceMask>>,
    /// Set when the request must be held for approval before it is forwarded.
    pub hold: Option<Ticket>,
    /// Set when the resource has a token quota: checked before forwarding, debited after.
    pub quota: Option<QuotaPlan>,
    /// Forward only after the collector acknowledged the request's audit record.
    pub sync_audit: bool,
}

/// A request's token quota: the resource's budget and the shared-data key of the caller's counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaPlan {
    pub quota: std::rc::Rc<crate::config::Quota>,
    /// `nhi_gate.quota.<resource>.<hash of the key claim>` ([`crate::quota::counter_key`]).
    pub key: String,
    /// The resource name, the token's issuer and the key claim's value (the
    /// descriptor sent to a rate-limit service). A claim value is only unique
    /// within its issuer, so the issuer is part of the counter's key too.
    pub resource: String,
    pub issuer: String,
    pub identity: String,
}

/// The pipeline over one validated configuration.
pub struct Gate {
    pub config: Config,
}

impl Gate {
    pub fn new(config: Config) -> Self {
        Gate { config }
    }

    /// The raw token, and the provider whose own `token_header` carried it
    /// (such a token must come from that provider).
    pub fn token(&self, headers: &[Header<'_>]) -> Result<(String, Option<usize>), Denial> {
        let max = self.config.max_token_bytes;
        let auth: Vec<&[u8]> = headers.iter().filter(|(n, _)| *n == "authorization").map(|(_, v)| *v).collect();
        if let [one] = auth.as_slice() {
            // Envoy folds repeated Authorization headers into one value joined by ','.
            if one.contains(&b',') {
                return Err(Denial::unauthorized("malformed", "more than one Authorization value"));
            }
        }
        if !auth.is_empty() {
            return jwt::bearer_token(&auth, max).map(|t| (t, None));
        }
        for (i, p) in self.config.providers.iter().enumerate() {
            if let Some(h) = &p.token_header {
                let vals: Vec<&[u8]> = headers.iter().filter(|(n, _)| n == h).map(|(_, v)| *v).collect();
                match vals.as_slice() {
                    [] => {}
                    [one] => return jwt::raw_token(one, max).map(|t| (t, Some(i))),
                    _ => return Err(Denial::unauthorized("malformed", format!("more than one {h} header"))),
                }
            }
        }
        Err(Denial::unauthorized("missing_token", "no bearer token"))
    }

    /// Where else the request carries `token` (RFC 6750 §2: a client sends
    /// it by one method only): the name of a header other than
    /// `Authorization` and the providers' token headers (which are stripped
    /// before forwarding), or `the path` (`:path`, e.g. `?access_token=`).
    /// Such a copy would reach the backend, which must never see the job's
    /// token. `None` when there is none.
    ///
    /// Only values at least as long as the token are searched: the token is
    /// ASCII, and neither percent-decoding nor the lossy UTF-8 reading makes
    /// an ASCII run longer than the bytes it came from. So most requests
    /// build no substring finder at all (building one for a ~600-byte JWS
    /// costs more than the rest of a cache hit).
    fn token_elsewhere<'h>(&self, headers: &[Header<'h>], token: &str) -> Option<&'h str> {
        let mut long = headers
            .iter()
            .filter(|(n, v)| {
                v.len() >= token.len() && *n != "authorization" && !self.config.providers.iter().any(|p| p.token_header.as_deref() == Some(*n))
            })
            .peekable();
        long.peek()?;
        let finder = memchr::memmem::Finder::new(token.as_bytes());
        long.find(|(_, v)| carries(&finder, v)).map(|(n, _)| if *n == ":path" { "the path" } else { *n })
    }

    /// The request's token (as [`Gate::token`] reads it), if it has one.
    pub fn request_token(&self, headers: &[Header<'_>]) -> Option<String> {
        self.token(headers).ok().map(|(t, _)| t)
    }

    /// The identity from verified claims, with the audit session claim.
    fn identity(&self, p: &crate::config::Provider, shared: &Rc<Map<String, Value>>) -> Identity {
        let claims: &Map<String, Value> = shared;
        let mut id = Identity::from_shared_claims(&p.name, &p.issuer, &p.groups_claim, shared);
        if !p.groups_prefix.is_empty() {
            id.groups = id.groups.iter().map(|g| format!("{}{g}", p.groups_prefix)).collect();
        }
        if let Some(path) = &self.config.audit.session_claim {
            let mut cur: Option<&Value> = None;
            for (i, seg) in path.iter().enumerate() {
                cur = if i == 0 { claims.get(seg) } else { cur.and_then(|v| v.get(seg)) };
            }
            id.session = match cur {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
        }
        id
    }

    /// The key set of an inline provider (remote ones come from the host's store).
    pub fn inline_keys(&self, index: usize) -> Option<Rc<KeySet>> {
        match &self.config.providers.get(index)?.keys {
            KeySource::Inline(ks) => Some(ks.clone()),
            _ => None,
        }
    }

    /// Verifies the request's token: RFC 7515/7519 checks, then the signature
    /// with the provider's keys. `now` is seconds since the Unix epoch.
    pub fn authenticate(
        &self,
        headers: &[Header<'_>],
        keys: &dyn KeyStore,
        cache: &mut TokenCache,
        now: u64,
    ) -> Result<Identity, AuthError> {
        self.authenticate_digest(headers, keys, cache, now).map(|(id, _)| id)
    }

    /// [`Gate::authenticate`], also giving the SHA-256 (hex) of the verified
    /// token (the audit record's `token_sha256`), kept in the token cache so
    /// a cache hit does not hash the token again.
    pub fn authenticate_digest(
        &self,
        headers: &[Header<'_>],
        keys: &dyn KeyStore,
        cache: &mut TokenCache,
        now: u64,
    ) -> Result<(Identity, String), AuthError> {
        let (token, via_header) = self.token(headers)?;
        if let Some(place) = self.token_elsewhere(headers, &token) {
            return Err(Denial::bad_request("token_repeated", format!("the bearer token is also sent in {place}: send it once, in the Authorization header")).into());
        }
        let skew = self.config.clock_skew_seconds;
        if let Some(e) = cache.map.get(&token) {
            if via_header.is_some_and(|i| i != e.provider) {
                return Err(Denial::unauthorized("unknown_issuer", "token header does not belong to the token's issuer").into());
            }
            if let Some(p) = self.config.providers.get(e.provider) {
                let generation = keys.keys(e.provider).map(|(_, g)| g);
                if generation == Some(e.generation) {
                    jwt::check_claims(&e.claims, p, now, skew)?;
                    return Ok((self.identity(p, &e.claims), e.token_sha256.to_string()));
                }
            }
        }
        let parsed = jwt::parse(&token)?;
        let iss = jwt::issuer(&parsed.claims)?;
        let (index, provider) = self
            .config
            .provider_by_issuer(iss)
            .ok_or_else(|| Denial::unauthorized("unknown_issuer", "token issuer is not configured"))?;
        if via_header.is_some_and(|i| i != index) {
            return Err(Denial::unauthorized("unknown_issuer", "token header does not belong to the token's issuer").into());
        }
        jwt::check_claims(&parsed.claims, provider, now, skew)?;
        let (set, generation) = keys.keys(index).ok_or(AuthError::NeedKeys { provider: index, unknown_kid: false })?;
        let candidates = match set.candidates(&parsed.alg, parsed.kid.as_deref()) {
            Ok(c) => c,
            Err("unknown_kid") => return Err(AuthError::NeedKeys { provider: index, unknown_kid: true }),
            Err(reason) => return Err(Denial::unauthorized(reason, "the key named by kid cannot verify this alg").into()),
        };
        if !candidates.iter().any(|k| k.verify(&token, &parsed.alg, now, skew)) {
            return Err(Denial::unauthorized("signature", "signature verification failed").into());
        }
        let claims = Rc::new(parsed.claims);
        let identity = self.identity(provider, &claims);
        let digest = crate::approval::sha256_hex(token.as_bytes());
        let entry = CacheEntry { provider: index, generation, claims, token_sha256: Rc::from(digest.as_str()) };
        cache.insert(token, entry, now, skew);
        Ok((identity, digest))
    }

    /// Finds the resource and operation class of a request and checks the
    /// identity against it; on allow returns the upstream header plan.
    pub fn authorize(&self, req: &Request<'_>, headers: &[Header<'_>], id: Identity) -> Result<Plan, Denial> {
        if !crate::policy::path_is_normalized(req.path) {
            return Err(Denial::forbidden("unnormalized_path", "path has dot-segments, empty segments, `;` parameters, a backslash or encoded characters"));
        }
        let resource: &Resource = self.config.resource_for(req)?;
        let op: OpClass = resource.operation(req);
        resource.authorize(&id, op)?;
        let mut remove: Vec<String> = Vec::new();
        if !resource.forward_authorization {
            remove.push("authorization".into());
            remove.extend(self.config.providers.iter().filter_map(|p| p.token_header.clone()));
        } else {
            // Only the verified token goes on: `Authorization` when sent (it
            // is read first, see `Gate::token`), else the first provider's
            // token header present. Other token headers were never verified.
            let mut kept = headers.iter().any(|(n, _)| *n == "authorization");
            for h in self.config.providers.iter().filter_map(|p| p.token_header.as_deref()) {
                if headers.iter().any(|(n, _)| *n == h) {
                    if kept {
                        remove.push(h.to_string());
                    }
                    kept = true;
                }
            }
        }
        for (name, _) in headers {
            let client_owned = name.starts_with(IDENTITY_HEADER_PREFIX) || METHOD_OVERRIDE_HEADERS.contains(name);
            if client_owned && !remove.iter().any(|r| r == name) {
                remove.push((*name).to_string());
            }
        }
        let mut set = resource.upstream_headers.clone();
        if resource.identity_headers {
            set.push(("x-nhi-subject".into(), header_safe(&id.subject)));
            let groups: Vec<String> = id.groups.iter().map(|g| header_safe(g)).collect();
            set.push(("x-nhi-groups".into(), groups.join(",")));
        }
        if let Some(m) = &resource.mask {
            if m.responses {
                // A part of a body (RFC 9110 §14) cannot be masked: a value
                // cut at a range boundary, or several ranges in one
                // `multipart/byteranges` answer, would pass unmasked.
                for h in ["range", "if-range"] {
                    if headers.iter().any(|(n, _)| *n == h) {
                        remove.push(h.to_string());
                    }
                }
            }
            if m.requests.is_some() {
                // The masked request body has another length.
                remove.push("content-length".into());
            }
        }
        let masks_responses = resource.mask.as_ref().is_some_and(|m| m.responses);
        if (masks_responses || resource.quota.is_some()) && asks_for_coding(headers) {
            // Ask for an uncompressed answer, so it can be masked as it
            // streams, and its `usage` read at its end for the quota.
            set.push(("accept-encoding".into(), "identity".into()));
        }
        let hold = match &resource.approval {
            Some(a) if a.holds(op, req, &id) => {
                let given: Vec<&[u8]> = headers.iter().filter(|(n, _)| *n == APPROVAL_HEADER).map(|(_, v)| *v).collect();
                let approval_id = match given.as_slice() {
                    [] => None,
                    [one] => Some(crate::approval::approval_id(one).ok_or_else(|| {
                        Denial::forbidden("approval_unknown", format!("{APPROVAL_HEADER} is not a valid approval id"))
                    })?),
                    _ => return Err(Denial::forbidden("approval_unknown", format!("more than one {APPROVAL_HEADER} header"))),
                };
                Some(Ticket {
                    settings: std::rc::Rc::new(ApprovalRef(a.clone())),
                    approval_id,
                    identity: id.clone(),
                    resource: resource.name.clone(),
                    operation: op.as_str(),
                    method: req.method.to_string(),
                    authority: String::from_utf8_lossy(req.authority).to_string(),
                    // Token-like query values never reach approvers (and the binding uses the same form).
                    path: crate::audit::redact_path(&String::from_utf8_lossy(req.path)),
                    path_sha256: crate::approval::sha256_hex(req.path),
                })
            }
            _ => None,
        };
        let quota = match &resource.quota {
            Some(q) => {
                let v = crate::quota::key_value(&id.claims, &q.key).ok_or_else(|| crate::quota::key_missing(&q.key))?;
                if !remove.iter().any(|r| r == "content-length") {
                    // Streamed chat requests get stream_options.include_usage: another length.
                    remove.push("content-length".into());
                }
                let key = crate::quota::counter_key(&resource.name, &format!("{}\n{v}", id.issuer));
                Some(QuotaPlan { quota: q.clone(), key, resource: resource.name.clone(), issuer: id.issuer.clone(), identity: v })
            }
            None => None,
        };
        Ok(Plan { resource: resource.name.clone(), operation: op.as_str(), identity: Some(id), remove, set, mask: resource.mask.clone(), hold, quota, sync_audit: resource.sync_audit })
    }
}
