//! The plugin configuration (Envoy `plugin_config.configuration`, Istio
//! `WasmPlugin.pluginConfig`): its JSON shape and the validator that runs in
//! `on_configure` and in `nhi-gate policy check`.
//!
//! Every error names the offending field by its path, e.g.
//! `providers[0].max_lifetime_seconds: must be between 1 and 86400`.
//! See `policies/schema.md` for the document format.

use crate::jwks::KeySet;
use crate::policy::{Glob, OpClass};
use crate::quota::{Window, MAX_REQUESTS_BUDGET, MAX_TOKENS_BUDGET};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};

/// Raw document as written by an admin. Unknown fields are rejected so a typo
/// never silently weakens a policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_realm")]
    realm: String,
    #[serde(default = "default_skew")]
    clock_skew_seconds: u64,
    #[serde(default = "default_max_token")]
    max_token_bytes: usize,
    #[serde(default = "default_cache")]
    token_cache_entries: usize,
    #[serde(default)]
    jwks_fetch: RawJwksFetch,
    providers: Vec<RawProvider>,
    resources: Vec<RawResource>,
    #[serde(default, deserialize_with = "present")]
    masking: Option<crate::mask::RawMasking>,
    #[serde(default)]
    audit: RawAudit,
    /// Envoy's buffer limit for a stream (the listener's
    /// `per_connection_buffer_limit_bytes`); default 1048576, Envoy's.
    #[serde(default)]
    envoy_buffer_limit_bytes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default)]
    session_claim: Option<String>,
    #[serde(default = "default_audit_cap")]
    max_request_bytes: usize,
    #[serde(default = "default_audit_cap")]
    max_response_bytes: usize,
    #[serde(default, deserialize_with = "present")]
    collector: Option<RawCollector>,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit { session_claim: None, max_request_bytes: default_audit_cap(), max_response_bytes: default_audit_cap(), collector: None }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCollector {
    cluster: String,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default = "default_collector_path")]
    path: String,
    #[serde(default = "default_batch")]
    batch_max: usize,
    #[serde(default = "default_flush")]
    flush_ms: u64,
    #[serde(default = "default_queue")]
    queue_max: u64,
    #[serde(default = "default_fetch_timeout")]
    timeout_ms: u64,
    #[serde(default)]
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwksFetch {
    #[serde(default = "default_refresh")]
    refresh_seconds: u64,
    #[serde(default = "default_min_refetch")]
    min_refetch_seconds: u64,
    #[serde(default = "default_cold_wait")]
    cold_start_wait_ms: u64,
    #[serde(default = "default_fetch_timeout")]
    timeout_ms: u64,
}

impl Default for RawJwksFetch {
    fn default() -> Self {
        RawJwksFetch {
            refresh_seconds: default_refresh(),
            min_refetch_seconds: default_min_refetch(),
            cold_start_wait_ms: default_cold_wait(),
            timeout_ms: default_fetch_timeout(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: String,
    issuer: String,
    audiences: Vec<String>,
    #[serde(default = "default_lifetime")]
    max_lifetime_seconds: u64,
    #[serde(default = "default_groups_claim")]
    groups_claim: String,
    #[serde(default)]
    groups_prefix: String,
    #[serde(default)]
    token_header: Option<String>,
    #[serde(default)]
    jwks: Option<serde_json::Value>,
    #[serde(default)]
    jwks_uri: Option<String>,
    #[serde(default)]
    discovery: bool,
    #[serde(default)]
    cluster: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    name: String,
    #[serde(default)]
    authorities: Vec<String>,
    #[serde(default)]
    path_prefix: Option<String>,
    #[serde(default)]
    path_glob: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    operations: Vec<RawOperation>,
    #[serde(default)]
    read: RawGroupRule,
    #[serde(default)]
    write: RawGroupRule,
    #[serde(default)]
    providers: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    forward_authorization: bool,
    #[serde(default)]
    upstream_headers: BTreeMap<String, String>,
    #[serde(default)]
    identity_headers: bool,
    #[serde(default, deserialize_with = "present")]
    mask: Option<RawResourceMask>,
    #[serde(default, deserialize_with = "present")]
    approval: Option<RawApproval>,
    #[serde(default, deserialize_with = "present")]
    quota: Option<RawQuota>,
    #[serde(default)]
    audit: Option<String>,
}

/// Per-resource token quota (see `crate::quota`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuota {
    #[serde(default = "default_quota_key")]
    key: String,
    #[serde(default = "default_quota_window")]
    window: String,
    tokens: u64,
    #[serde(default)]
    requests: Option<u64>,
    #[serde(default)]
    check_max_tokens: bool,
    #[serde(default, deserialize_with = "present")]
    service: Option<RawRlsService>,
}

/// A rate-limit service speaking Envoy's RLS v3 protocol.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRlsService {
    cluster: String,
    #[serde(default = "default_rls_domain")]
    domain: String,
    #[serde(default = "default_rls_timeout")]
    timeout_ms: u64,
}

fn default_rls_domain() -> String { "nhi-gate".into() }
fn default_rls_timeout() -> u64 { 1000 }

/// Per-resource approval hold (see `docs/approval-protocol.md`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    cluster: String,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default = "default_approval_path")]
    path: String,
    /// `None`: not given (holds writes, `true`).
    #[serde(default)]
    write: Option<bool>,
    #[serde(default)]
    requests: Vec<RawRequestPattern>,
    #[serde(default)]
    exempt_groups: Vec<String>,
    #[serde(default = "default_hold")]
    hold_seconds: u64,
    #[serde(default = "default_approval_timeout")]
    timeout_ms: u64,
    #[serde(default = "default_approval_body")]
    max_body_bytes: usize,
    #[serde(default = "default_preview")]
    preview_bytes: usize,
    #[serde(default)]
    grant: RawGrant,
    #[serde(default)]
    secret: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequestPattern {
    #[serde(default)]
    methods: Vec<String>,
    path_glob: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    #[serde(default = "one")]
    uses: u32,
    #[serde(default = "default_window")]
    window_seconds: u64,
}

impl Default for RawGrant {
    fn default() -> Self {
        RawGrant { uses: 1, window_seconds: default_window() }
    }
}

/// Per-resource masking switch (the detectors themselves are configured once,
/// in the top-level `masking` section).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResourceMask {
    #[serde(default = "yes")]
    responses: bool,
    #[serde(default)]
    requests: Option<String>,
    #[serde(default = "default_mask_types")]
    content_types: Vec<String>,
    #[serde(default = "default_mask_buffer")]
    max_buffer_bytes: usize,
    #[serde(default)]
    over_limit: Option<String>,
    #[serde(default)]
    other_types: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperation {
    #[serde(default)]
    methods: Vec<String>,
    path_glob: String,
    class: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroupRule {
    #[serde(default)]
    any_of: Vec<String>,
    #[serde(default)]
    all_of: Vec<String>,
}

fn default_realm() -> String { "nhi-gate".into() }
fn default_skew() -> u64 { 60 }
fn default_max_token() -> usize { 8192 }
fn default_cache() -> usize { 1024 }

/// Most resources a policy may list. Every request is matched against them
/// in order, and loading checks each pair for one that covers another (a
/// policy of 1000 resources checks in milliseconds; 5000 took up to 0.45 s
/// natively, longer in the module, on the worker's thread).
pub const MAX_RESOURCES: usize = 1000;
fn default_refresh() -> u64 { 600 }
fn default_min_refetch() -> u64 { 30 }
fn default_cold_wait() -> u64 { 5000 }
fn default_fetch_timeout() -> u64 { 2000 }
fn default_lifetime() -> u64 { 3600 }
fn default_groups_claim() -> String { "groups".into() }
fn yes() -> bool { true }
fn one() -> u32 { 1 }
fn default_approval_path() -> String { "/v1/check".into() }
fn default_hold() -> u64 { 60 }
fn default_approval_timeout() -> u64 { 5000 }
fn default_approval_body() -> usize { 1 << 20 }
fn default_preview() -> usize { 1024 }
fn default_window() -> u64 { 900 }
fn default_audit_cap() -> usize { 4096 }
fn default_collector_path() -> String { "/v1/records".into() }
fn default_batch() -> usize { 100 }
fn default_flush() -> u64 { 1000 }
fn default_queue() -> u64 { 10_000 }
fn default_quota_key() -> String { "sub".into() }
fn default_quota_window() -> String { "hour".into() }

/// Longest in-line hold, seconds: below Envoy's default `stream_idle_timeout`
/// (300 s, HTTP connection manager) so Envoy never times out a held request first.
pub const MAX_HOLD_SECONDS: u64 = 240;
fn default_mask_types() -> Vec<String> {
    ["application/json", "+json", "text/plain", "text/event-stream", "application/x-ndjson"].iter().map(|s| s.to_string()).collect()
}
fn default_mask_buffer() -> usize { 1 << 20 }

/// A validated configuration, ready for the request path.
#[derive(Debug)]
pub struct Config {
    /// Realm named in `WWW-Authenticate` challenges.
    pub realm: String,
    /// Allowed clock skew for `exp`, `nbf` and `iat`, in seconds.
    pub clock_skew_seconds: u64,
    /// Largest accepted token, in bytes (default 8192).
    pub max_token_bytes: usize,
    /// Verified-token cache capacity per worker, in entries (0 disables it).
    pub token_cache_entries: usize,
    pub jwks_fetch: JwksFetch,
    pub providers: Vec<Provider>,
    pub resources: Vec<Resource>,
    /// The compiled PII detectors (`masking` section; defaults when only
    /// resources ask for masking), `None` when no resource masks.
    pub masker: Option<std::rc::Rc<crate::mask::Masker>>,
    /// The backend credentials the gateway injects ([`backend_credentials`]):
    /// response headers holding one are dropped, and masked bodies redact
    /// them (`[BACKEND_CREDENTIAL]`), so a backend that echoes its request
    /// does not hand them to the job.
    pub credentials: std::rc::Rc<[String]>,
    /// Audit record settings (`audit` section; see `docs/audit-record.md`).
    pub audit: Audit,
    /// Envoy's buffer limit for a stream, bytes, as the policy declares it
    /// (`envoy_buffer_limit_bytes`, default 1048576): no body the
    /// filter writes back into Envoy's buffer may be longer.
    pub envoy_buffer_limit: usize,
}

/// Audit record settings.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    /// Claim (dot path) whose value groups records into a job's session.
    pub session_claim: Option<Vec<String>>,
    /// Request body text kept in a record, bytes (0..=1 MiB; default 4096).
    pub max_request_bytes: usize,
    /// Response body text kept in a record, bytes (0..=1 MiB; default 4096).
    pub max_response_bytes: usize,
    /// Where records are also pushed, if anywhere.
    pub collector: Option<Collector>,
}

/// The audit collector reached by HTTP callout (`POST path` with `{"records": [...]}`).
#[derive(Debug, Clone)]
pub struct Collector {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    /// Records per batch (1..=1000).
    pub batch_max: usize,
    /// How often each worker sends a batch, milliseconds (100..=60000).
    pub flush_ms: u64,
    /// Records waiting across all workers before new ones are dropped (and counted).
    pub queue_max: u64,
    /// Callout timeout, milliseconds.
    pub timeout_ms: u64,
    /// Bearer token sent to the collector, if any.
    pub token: Option<String>,
}

/// Which request bodies are masked before they reach the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestMask {
    /// The prompt of an OpenAI-style request (chat, completions, Responses
    /// API): see [`crate::body::mask_prompt`].
    ChatMessages,
    /// Every string value of a JSON body.
    Json,
}

/// A resource's masking settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceMask {
    /// Mask response bodies.
    pub responses: bool,
    /// Mask request bodies (the prompt) too.
    pub requests: Option<RequestMask>,
    /// Content types masked: exact media types (`text/plain`) or a structured
    /// suffix (`+json`), lowercase, parameters ignored.
    pub content_types: Vec<String>,
    /// Largest body buffered for JSON masking, bytes.
    pub max_buffer_bytes: usize,
    /// Over the limit: refuse with 502 `response_too_large` (true, default) or pass unmasked.
    pub reject_over_limit: bool,
    /// Response bodies of types not in `content_types`: passed unmasked
    /// (`other_types: pass`) or refused with 502 `unmaskable_content_type`
    /// (false, default: the job could ask for another type with `Accept`).
    pub pass_other_types: bool,
}

/// Timing of remote JWKS fetches.
#[derive(Debug, Clone)]
pub struct JwksFetch {
    /// Background refresh interval, seconds.
    pub refresh_seconds: u64,
    /// Least time between two fetches, seconds: bounds refetches on unknown `kid`.
    pub min_refetch_seconds: u64,
    /// How long a request may wait for the first JWKS, milliseconds.
    pub cold_start_wait_ms: u64,
    /// Callout timeout, milliseconds.
    pub timeout_ms: u64,
}

/// Where a provider's JWKS comes from.
#[derive(Debug)]
pub enum KeySource {
    /// Keys written in the config.
    Inline(std::rc::Rc<KeySet>),
    /// `GET path` on the named Envoy cluster, with `:authority` set to `authority`.
    Remote { cluster: String, authority: String, path: String },
    /// OIDC discovery (OpenID Connect Discovery 1.0 §4): `GET path` of
    /// `/.well-known/openid-configuration` under the issuer, then its `jwks_uri`.
    Discovery { cluster: String, authority: String, path: String },
}

/// One token issuer.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    /// Exact `iss` value (RFC 7519 §4.1.1).
    pub issuer: String,
    /// Accepted `aud` values; a token passes if any of its audiences is listed.
    pub audiences: Vec<String>,
    /// Longest accepted token lifetime, seconds (`exp - iat`, or `exp - now`).
    pub max_lifetime_seconds: u64,
    /// Dot path of the group claim (`groups`, `realm_access.roles`).
    pub groups_claim: Vec<String>,
    /// Prepended to every group of this provider's tokens (`github:`), so
    /// group names from different issuers cannot collide in a rule (as
    /// Kubernetes' `--oidc-groups-prefix`); "" for none.
    pub groups_prefix: String,
    /// Extra header carrying the raw token, lowercase, if any.
    pub token_header: Option<String>,
    pub keys: KeySource,
}

/// One protected backend resource.
#[derive(Debug)]
pub struct Resource {
    pub name: String,
    /// Lowercase `:authority` values (port ignored when the pattern has none); empty or `*` = any.
    pub authorities: Vec<String>,
    pub path_prefix: Option<String>,
    pub path_glob: Option<Glob>,
    /// Uppercase methods; empty = any.
    pub methods: Vec<String>,
    /// Per-path overrides of the operation class.
    pub operations: Vec<Operation>,
    pub read: GroupRule,
    pub write: GroupRule,
    /// Provider names accepted; empty = all.
    pub providers: Vec<String>,
    /// Scope values that must all be present in the `scope`/`scp` claim.
    pub scopes: Vec<String>,
    pub forward_authorization: bool,
    /// Headers set upstream on allow (lowercase names), e.g. the backend credential.
    pub upstream_headers: Vec<(String, String)>,
    /// Whether to set `x-nhi-subject` and `x-nhi-groups` upstream.
    pub identity_headers: bool,
    /// PII masking of bodies, if enabled for this resource.
    pub mask: Option<std::rc::Rc<ResourceMask>>,
    /// Out-of-band approval of some requests, if enabled for this resource.
    pub approval: Option<std::rc::Rc<Approval>>,
    /// Token (and request) budget per identity per window, if enabled for this resource.
    pub quota: Option<std::rc::Rc<Quota>>,
    /// Synchronous audit (`audit: "sync"`): forward only once the collector
    /// acknowledged the request's record (fail closed: 503 `audit_unavailable`).
    pub sync_audit: bool,
}

/// A resource's token quota (`crate::quota` applies it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    /// Dot path of the claim naming the identity charged (`sub` by default,
    /// `repository`, `ci.repository`), split at the dots.
    pub key: Vec<String>,
    /// The fixed window the budgets apply to.
    pub window: Window,
    /// Tokens per identity per window, `1..=10^12`.
    pub tokens: u64,
    /// Requests per identity per window, `1..=10^9`, if limited.
    pub requests: Option<u64>,
    /// Also refuse a request whose `max_tokens` (or `max_completion_tokens`)
    /// is more than the tokens left.
    pub check_max_tokens: bool,
    /// Keep the counters in a rate-limit service (fleets of Envoys) instead
    /// of this Envoy's shared data.
    pub service: Option<RlsService>,
}

/// A rate-limit service speaking Envoy's RLS v3 protocol
/// (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`; e.g.
/// envoyproxy/ratelimit, Limitador), reached over gRPC on an Envoy cluster.
/// Descriptor sent: `[("resource", <resource name>), ("issuer", <iss>), ("identity", <key claim value>)]`;
/// the service's limit for it is the budget (tokens per unit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RlsService {
    /// Envoy cluster (HTTP/2) of the service.
    pub cluster: String,
    /// RLS `domain`.
    pub domain: String,
    /// gRPC call timeout, milliseconds (50..=10000).
    pub timeout_ms: u64,
}

/// A method+path pattern (`methods` empty = any method).
#[derive(Debug)]
pub struct RequestPattern {
    /// Uppercase methods; empty = any.
    pub methods: Vec<String>,
    pub path_glob: Glob,
}

/// A resource's approval settings: which requests are held and where the
/// approval service is (protocol: `docs/approval-protocol.md`).
#[derive(Debug)]
pub struct Approval {
    /// Envoy cluster of the approval service.
    pub cluster: String,
    /// `:authority` of the callout (default: the cluster name).
    pub authority: String,
    /// Path of the check endpoint (default `/v1/check`); abandon is `<path>/abandon`.
    pub path: String,
    /// Hold every request of the `write` operation class.
    pub write: bool,
    /// Also hold requests matching any of these.
    pub requests: Vec<RequestPattern>,
    /// Members of any of these groups are never held.
    pub exempt_groups: Vec<String>,
    /// In-line hold, milliseconds (1..=240 s): longer → 202 Accepted.
    pub hold_ms: u64,
    /// How long after the hold the service may still answer, milliseconds
    /// (the callout timeout is `hold_ms + timeout_ms`); then 503.
    pub timeout_ms: u64,
    /// Largest request body held, bytes; larger → 413, never forwarded.
    pub max_body_bytes: usize,
    /// Body preview sent to approvers, bytes.
    pub preview_bytes: usize,
    /// Redeems an approval allows (0 = unlimited within the window).
    pub grant_uses: u32,
    /// How long an approval may be redeemed after the decision, seconds.
    pub grant_window_seconds: u64,
    /// Bearer secret sent to the approval service, if any.
    pub secret: Option<String>,
}

/// A method+path override of the default operation class.
#[derive(Debug)]
pub struct Operation {
    pub methods: Vec<String>,
    pub path_glob: Glob,
    pub class: OpClass,
}

/// Groups needed for an operation: at least one of `any_of` (if non-empty)
/// and every one of `all_of`. A rule with both empty allows nobody.
#[derive(Debug, Default, Clone)]
pub struct GroupRule {
    pub any_of: Vec<String>,
    pub all_of: Vec<String>,
}

impl GroupRule {
    /// Whether the rule admits nobody (least privilege: such an operation is always denied).
    pub fn is_empty(&self) -> bool {
        self.any_of.is_empty() && self.all_of.is_empty()
    }
}

/// A validation error: the JSON path of the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// An optional section that, when written, must be an object: `null` (a
/// YAML key whose children are all commented out) is a type error naming
/// the field, not a silent "off" for masking, approval or quota.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

const METHODS: [&str; 9] = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "TRACE", "CONNECT"];

/// Headers a policy may never set upstream (hop-by-hop or pseudo headers,
/// RFC 9110 §7.6.1) and the identity headers the filter owns.
fn forbidden_upstream_header(name: &str) -> bool {
    name.starts_with(':')
        || name.starts_with("x-nhi-")
        || matches!(
            name,
            "host" | "connection" | "content-length" | "transfer-encoding" | "te" | "trailer" | "upgrade" | "keep-alive" | "proxy-connection" | "proxy-authorization"
        )
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b))
}

fn valid_header_value(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Splits `http(s)://authority/path` into authority and path (path defaults
/// to `/`); `None` for other schemes, an authority that is not a host with
/// an optional port (empty, userinfo `@`, query, spaces, control bytes), or
/// a path with a fragment, spaces or control bytes.
/// Used for `jwks_uri` in the config and in OIDC discovery documents.
pub fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest.get(..i)?, rest.get(i..)?),
        None => (rest, "/"),
    };
    // a host (name, IPv4, `[IPv6]`) and an optional port: no userinfo,
    // query, fragment, spaces or control bytes, which would make the fetch's
    // `:authority` or `:path` something no server answers
    let host_ok = !authority.is_empty()
        && !authority.starts_with(':')
        && authority.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']' | b'_'));
    let path_ok = !path.contains('#') && path.bytes().all(|b| b.is_ascii_graphic());
    (host_ok && path_ok).then(|| (authority.to_string(), path.to_string()))
}

impl Config {
    /// Parses and validates a configuration document (JSON bytes).
    ///
    /// Errors: every problem found, each naming its field; the document is
    /// rejected as a whole if there is any.
    pub fn from_json(bytes: &[u8]) -> Result<Config, Vec<ConfigError>> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = match serde_path_to_error::deserialize(&mut de) {
            Ok(r) => r,
            Err(e) => {
                let path = e.path().to_string();
                let field = if path == "." { "(document)".to_string() } else { path };
                // serde's " at line L column C" suffix depends on formatting;
                // the field path already says where.
                let msg = e.into_inner().to_string();
                let problem = plain_types(msg.split(" at line ").next().unwrap_or(&msg));
                return Err(vec![ConfigError { field, problem }]);
            }
        };
        if let Err(e) = de.end() {
            return Err(vec![ConfigError { field: "(document)".into(), problem: e.to_string() }]);
        }
        raw.validate()
    }

    /// Parses and validates an already-decoded JSON value (the CLI uses this for YAML input).
    pub fn from_value(v: &serde_json::Value) -> Result<Config, Vec<ConfigError>> {
        let bytes = serde_json::to_vec(v).map_err(|e| vec![ConfigError { field: "(document)".into(), problem: e.to_string() }])?;
        Config::from_json(&bytes)
    }

    /// Whether a request trailer named `name` (lowercase) must not reach the
    /// backend: the header rules applied to trailers, which Envoy forwards
    /// after the body (HTTP/1.1 chunked, HTTP/2). Covers `authorization`,
    /// `proxy-authorization`, the providers' token headers, client-sent
    /// `x-nhi-*`, the method-override headers, `range`/`if-range`, and every
    /// header name a resource sets upstream (`upstream_headers`).
    pub fn strips_trailer(&self, name: &str) -> bool {
        matches!(name, "authorization" | "proxy-authorization" | "range" | "if-range")
            || name.starts_with(crate::gate::IDENTITY_HEADER_PREFIX)
            || crate::gate::METHOD_OVERRIDE_HEADERS.contains(&name)
            || self.providers.iter().any(|p| p.token_header.as_deref() == Some(name))
            || self.resources.iter().any(|r| r.upstream_headers.iter().any(|(n, _)| n == name))
    }

    /// The provider whose `issuer` equals `iss` exactly.
    pub fn provider_by_issuer(&self, iss: &str) -> Option<(usize, &Provider)> {
        self.providers.iter().enumerate().find(|(_, p)| p.issuer == iss)
    }
}

/// Shortest secret looked for in responses, bytes: shorter header values
/// (`x-tenant: acme`) are too likely to occur in ordinary text.
pub const MIN_CREDENTIAL_BYTES: usize = 8;

/// The values of every resource's `upstream_headers` that are looked for in
/// responses: each value, and its part after an auth scheme (`Bearer sk-…`
/// → `sk-…`, RFC 9110 §11.4), when at least [`MIN_CREDENTIAL_BYTES`] long;
/// without repeats.
pub fn backend_credentials(resources: &[Resource]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (_, value) in resources.iter().flat_map(|r| r.upstream_headers.iter()) {
        let v = value.trim();
        let after_scheme = v.split_once(' ').map(|(_, rest)| rest.trim()).filter(|rest| !rest.contains(' '));
        for c in std::iter::once(v).chain(after_scheme) {
            if c.len() >= MIN_CREDENTIAL_BYTES && !out.iter().any(|o| o == c) {
                out.push(c.to_string());
            }
        }
    }
    out
}

/// serde's message with Rust type names said in JSON terms
/// (`expected u64` → `expected a non-negative integer`).
fn plain_types(msg: &str) -> String {
    let mut out = msg.to_string();
    for (rust, json) in [
        ("expected u64", "expected a non-negative integer"),
        ("expected u32", "expected a non-negative integer"),
        ("expected u16", "expected a non-negative integer"),
        ("expected usize", "expected a non-negative integer"),
        ("expected i64", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ] {
        if let Some(rest) = out.strip_suffix(rust) {
            out = format!("{rest}{json}");
        }
    }
    // `expected struct RawQuota` (a section that must be an object)
    if let Some(at) = out.find("expected struct Raw") {
        out = format!("{}expected an object", out.get(..at).unwrap_or_default());
    }
    out
}

struct Errors(Vec<ConfigError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.0.push(ConfigError { field: field.into(), problem: problem.into() });
    }
}

fn methods(errs: &mut Errors, field: &str, raw: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, m) in raw.iter().enumerate() {
        let up = m.to_ascii_uppercase();
        if !METHODS.contains(&up.as_str()) {
            errs.add(format!("{field}[{i}]"), format!("unknown HTTP method {m:?}"));
        }
        out.push(up);
    }
    out
}

fn glob(errs: &mut Errors, field: &str, pattern: &str) -> Glob {
    if !pattern.starts_with('/') {
        errs.add(field, "path pattern must start with '/'");
    } else if pattern.contains(['?', '#']) {
        errs.add(field, NO_QUERY);
    }
    Glob::new(pattern)
}

/// Reports a rule (an operation, an approval request pattern at `at`:
/// its methods, its glob as written and parsed) that can never match
/// inside its resource (the resource's methods and `path_prefix`): methods
/// the resource does not cover (`GET` covers `HEAD`), a glob whose literal
/// start lies outside the prefix. Unknown methods and relative globs are
/// reported elsewhere, not here.
fn outside(errs: &mut Errors, at: &str, (res_methods, prefix): (&[String], Option<&str>), (methods, written, glob): (&[String], &str, &Glob)) {
    let known = methods.iter().all(|m| METHODS.contains(&m.as_str()));
    if known && !methods.is_empty() && !methods.iter().any(|m| crate::policy::method_listed(res_methods, m)) {
        errs.add(format!("{at}.methods"), format!("never matches: the resource covers only {}", res_methods.join(", ")));
    }
    if let Some(p) = prefix.filter(|_| written.starts_with('/')) {
        let literal = glob.literal_prefix();
        if !literal.starts_with(p.as_bytes()) && !p.as_bytes().starts_with(literal) {
            errs.add(format!("{at}.path_glob"), format!("never matches: outside the resource's path_prefix {p:?}"));
        }
    }
}

/// Why a path pattern holding `?` or `#` is refused.
const NO_QUERY: &str = "never matches: requests are matched on the path alone, without '?' query or '#' fragment";

fn group_rule(errs: &mut Errors, field: &str, raw: RawGroupRule) -> GroupRule {
    for (name, list) in [("any_of", &raw.any_of), ("all_of", &raw.all_of)] {
        for (i, g) in list.iter().enumerate() {
            if g.trim().is_empty() || g.contains(char::is_whitespace) {
                errs.add(format!("{field}.{name}[{i}]"), "group names are non-empty and contain no whitespace");
            }
        }
    }
    GroupRule { any_of: raw.any_of, all_of: raw.all_of }
}

/// `envoy_limit`: Envoy's buffer limit, which a held body must fit;
/// `no_writes`: the resource has no write groups, so holding writes holds
/// nothing (an error when `write` is the only hold, or given explicitly).
fn approval(errs: &mut Errors, at: &str, a: RawApproval, envoy_limit: usize, no_writes: bool) -> Approval {
    if a.cluster.is_empty() {
        errs.add(format!("{at}.cluster"), "the Envoy cluster of the approval service is required");
    }
    if !a.path.starts_with('/') || !valid_header_value(&a.path) || a.path.contains(['?', '#', ' ']) {
        errs.add(format!("{at}.path"), "must be an absolute path without query");
    }
    let explicit = a.authority.is_some();
    let authority = a.authority.unwrap_or_else(|| a.cluster.clone());
    let bad = authority.is_empty() || !valid_header_value(&authority) || authority.contains(['/', ' ', '@']);
    // A defaulted authority is the cluster name: an empty cluster is reported once, above.
    if bad && (explicit || !a.cluster.is_empty()) {
        errs.add(format!("{at}.authority"), "must be a host or host:port");
    }
    if !(1..=MAX_HOLD_SECONDS).contains(&a.hold_seconds) {
        errs.add(
            format!("{at}.hold_seconds"),
            format!("must be between 1 and {MAX_HOLD_SECONDS} (below Envoy's stream_idle_timeout, 300 s by default)"),
        );
    }
    if !(100..=30_000).contains(&a.timeout_ms) {
        errs.add(format!("{at}.timeout_ms"), "must be between 100 and 30000");
    }
    if !(1..=(16 << 20)).contains(&a.max_body_bytes) {
        errs.add(format!("{at}.max_body_bytes"), "must be between 1 and 16777216");
    } else if a.max_body_bytes > envoy_limit {
        // a held body waits in Envoy's buffer; past it Envoy answers 413 itself
        errs.add(
            format!("{at}.max_body_bytes"),
            format!(
                "{} is over Envoy's buffer limit of {envoy_limit} bytes; raise the listener's per_connection_buffer_limit_bytes and set envoy_buffer_limit_bytes to it",
                a.max_body_bytes
            ),
        );
    }
    if a.preview_bytes > 65536 {
        errs.add(format!("{at}.preview_bytes"), "must be at most 65536");
    }
    if a.grant.uses > 1000 {
        errs.add(format!("{at}.grant.uses"), "must be at most 1000 (0 = unlimited within the window)");
    }
    if !(1..=86400).contains(&a.grant.window_seconds) {
        errs.add(format!("{at}.grant.window_seconds"), "must be between 1 and 86400");
    }
    if let Some(s) = &a.secret {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()) {
            errs.add(format!("{at}.secret"), "must be non-empty visible ASCII");
        }
    }
    let write = a.write.unwrap_or(true);
    if !write && a.requests.is_empty() {
        errs.add(at.to_string(), "holds nothing: set write: true or list requests");
    }
    // (`requests` hold on their own: an operation may class a POST as a read)
    if write && no_writes && a.requests.is_empty() {
        errs.add(at.to_string(), "holds nothing: the resource has no write groups, so no write gets this far; set write groups or list requests");
    } else if a.write == Some(true) && no_writes {
        errs.add(format!("{at}.write"), "holds nothing: the resource has no write groups, so no write gets this far; set write groups or drop write");
    }
    for (i, g) in a.exempt_groups.iter().enumerate() {
        if g.trim().is_empty() || g.contains(char::is_whitespace) {
            errs.add(format!("{at}.exempt_groups[{i}]"), "group names are non-empty and contain no whitespace");
        }
    }
    let requests = a
        .requests
        .into_iter()
        .enumerate()
        .map(|(i, p)| RequestPattern {
            methods: methods(errs, &format!("{at}.requests[{i}].methods"), &p.methods),
            path_glob: glob(errs, &format!("{at}.requests[{i}].path_glob"), &p.path_glob),
        })
        .collect();
    Approval {
        cluster: a.cluster,
        authority,
        path: a.path,
        write,
        requests,
        exempt_groups: a.exempt_groups,
        hold_ms: a.hold_seconds.saturating_mul(1000),
        timeout_ms: a.timeout_ms,
        max_body_bytes: a.max_body_bytes,
        preview_bytes: a.preview_bytes,
        grant_uses: a.grant.uses,
        grant_window_seconds: a.grant.window_seconds,
        secret: a.secret,
    }
}

fn audit(errs: &mut Errors, a: RawAudit) -> Audit {
    let session_claim = a.session_claim.map(|c| {
        let path: Vec<String> = c.split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            errs.add("audit.session_claim", "must be a dot path of non-empty names, e.g. run_id");
        }
        path
    });
    for (field, v) in [("max_request_bytes", a.max_request_bytes), ("max_response_bytes", a.max_response_bytes)] {
        if v > 1 << 20 {
            errs.add(format!("audit.{field}"), "must be at most 1048576");
        }
    }
    let collector = a.collector.map(|c| {
        if c.cluster.is_empty() {
            errs.add("audit.collector.cluster", "the Envoy cluster of the collector is required");
        }
        if !c.path.starts_with('/') || !valid_header_value(&c.path) || c.path.contains(['?', '#', ' ']) {
            errs.add("audit.collector.path", "must be an absolute path without query");
        }
        let explicit = c.authority.is_some();
        let authority = c.authority.unwrap_or_else(|| c.cluster.clone());
        let bad = authority.is_empty() || !valid_header_value(&authority) || authority.contains(['/', ' ', '@']);
        if bad && (explicit || !c.cluster.is_empty()) {
            errs.add("audit.collector.authority", "must be a host or host:port");
        }
        if !(1..=1000).contains(&c.batch_max) {
            errs.add("audit.collector.batch_max", "must be between 1 and 1000");
        }
        if !(100..=60_000).contains(&c.flush_ms) {
            errs.add("audit.collector.flush_ms", "must be between 100 and 60000");
        }
        if !(1..=1_000_000).contains(&c.queue_max) {
            errs.add("audit.collector.queue_max", "must be between 1 and 1000000");
        }
        if !(100..=30_000).contains(&c.timeout_ms) {
            errs.add("audit.collector.timeout_ms", "must be between 100 and 30000");
        }
        if let Some(t) = &c.token {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                errs.add("audit.collector.token", "must be non-empty visible ASCII");
            }
        }
        Collector {
            cluster: c.cluster,
            authority,
            path: c.path,
            batch_max: c.batch_max,
            flush_ms: c.flush_ms,
            queue_max: c.queue_max,
            timeout_ms: c.timeout_ms,
            token: c.token,
        }
    });
    Audit { session_claim, max_request_bytes: a.max_request_bytes, max_response_bytes: a.max_response_bytes, collector }
}

fn quota(errs: &mut Errors, at: &str, q: RawQuota) -> Quota {
    let key: Vec<String> = q.key.split('.').map(str::to_string).collect();
    if key.iter().any(|k| k.is_empty()) {
        errs.add(format!("{at}.key"), "must be a claim name or a dot path of non-empty names, e.g. sub or ci.repository");
    }
    let window = Window::parse(&q.window).unwrap_or_else(|| {
        errs.add(format!("{at}.window"), format!("must be \"minute\", \"hour\" or \"day\", not {:?}", q.window));
        Window::Hour
    });
    if !(1..=MAX_TOKENS_BUDGET).contains(&q.tokens) {
        errs.add(format!("{at}.tokens"), format!("must be between 1 and {MAX_TOKENS_BUDGET}"));
    }
    if let Some(r) = q.requests {
        if !(1..=MAX_REQUESTS_BUDGET).contains(&r) {
            errs.add(format!("{at}.requests"), format!("must be between 1 and {MAX_REQUESTS_BUDGET}"));
        }
    }
    let service = q.service.map(|s| {
        if s.cluster.is_empty() {
            errs.add(format!("{at}.service.cluster"), "the Envoy cluster of the rate-limit service is required");
        }
        if s.domain.is_empty() {
            errs.add(format!("{at}.service.domain"), "must be non-empty");
        }
        if !(50..=10_000).contains(&s.timeout_ms) {
            errs.add(format!("{at}.service.timeout_ms"), "must be between 50 and 10000");
        }
        RlsService { cluster: s.cluster, domain: s.domain, timeout_ms: s.timeout_ms }
    });
    Quota { key, window, tokens: q.tokens, requests: q.requests, check_max_tokens: q.check_max_tokens, service }
}

impl RawConfig {
    fn validate(self) -> Result<Config, Vec<ConfigError>> {
        let mut errs = Errors(Vec::new());
        if self.realm.is_empty() || !valid_header_value(&self.realm) || self.realm.contains('"') {
            errs.add("realm", "must be non-empty printable text without quotes");
        }
        if self.clock_skew_seconds > 300 {
            errs.add("clock_skew_seconds", "must be at most 300 (RFC 8725 §3.10: keep skew small)");
        }
        if !(512..=65536).contains(&self.max_token_bytes) {
            errs.add("max_token_bytes", "must be between 512 and 65536");
        }
        if self.token_cache_entries > 100_000 {
            errs.add("token_cache_entries", "must be at most 100000");
        }
        // Envoy's default `per_connection_buffer_limit_bytes`
        let envoy_limit = self.envoy_buffer_limit_bytes.unwrap_or(1 << 20);
        if envoy_limit == 0 || envoy_limit > u32::MAX as usize {
            errs.add("envoy_buffer_limit_bytes", "must be between 1 and 4294967295 (the listener's per_connection_buffer_limit_bytes)");
        }
        let f = &self.jwks_fetch;
        if !(10..=86400).contains(&f.refresh_seconds) {
            errs.add("jwks_fetch.refresh_seconds", "must be between 10 and 86400");
        }
        if !(1..=3600).contains(&f.min_refetch_seconds) {
            errs.add("jwks_fetch.min_refetch_seconds", "must be between 1 and 3600");
        }
        if f.cold_start_wait_ms > 30_000 {
            errs.add("jwks_fetch.cold_start_wait_ms", "must be at most 30000");
        }
        if !(100..=30_000).contains(&f.timeout_ms) {
            errs.add("jwks_fetch.timeout_ms", "must be between 100 and 30000");
        }

        if self.providers.is_empty() {
            errs.add("providers", "at least one provider is required");
        }
        let mut names = HashSet::new();
        let mut issuers = HashSet::new();
        let mut providers = Vec::new();
        for (i, p) in self.providers.into_iter().enumerate() {
            let at = format!("providers[{i}]");
            if p.name.is_empty() || !names.insert(p.name.clone()) {
                errs.add(format!("{at}.name"), "must be non-empty and unique");
            }
            if p.issuer.is_empty() || !issuers.insert(p.issuer.clone()) {
                errs.add(format!("{at}.issuer"), "must be non-empty and unique");
            }
            if p.audiences.is_empty() || p.audiences.iter().any(String::is_empty) {
                errs.add(format!("{at}.audiences"), "at least one non-empty audience is required");
            }
            if !(1..=86400).contains(&p.max_lifetime_seconds) {
                errs.add(format!("{at}.max_lifetime_seconds"), "must be between 1 and 86400: long-lived tokens are static secrets");
            }
            if p.groups_prefix.len() > 64 || !p.groups_prefix.bytes().all(|b| b.is_ascii_graphic() && b != b',' && b != b'%') {
                errs.add(format!("{at}.groups_prefix"), "must be at most 64 visible ASCII characters without ',' or '%'");
            }
            let groups_claim: Vec<String> = p.groups_claim.split('.').map(str::to_string).collect();
            if groups_claim.iter().any(String::is_empty) {
                errs.add(format!("{at}.groups_claim"), "must be a dot path of non-empty names, e.g. realm_access.roles");
            }
            let token_header = p.token_header.map(|h| h.to_ascii_lowercase());
            if let Some(h) = &token_header {
                // the filter removes it from every request: never a header
                // that frames the body or that others own
                if !valid_header_name(h) || h == "authorization" || forbidden_upstream_header(h) || matches!(h.as_str(), "cookie" | "content-type" | "content-encoding" | "expect") {
                    errs.add(format!("{at}.token_header"), "must be a valid header name other than authorization, hop-by-hop, framing, cookie or x-nhi-* headers");
                }
            }
            let sources = [p.jwks.is_some(), p.jwks_uri.is_some(), p.discovery].iter().filter(|b| **b).count();
            let keys = if sources != 1 {
                let set: Vec<&str> = [(p.jwks.is_some(), "jwks"), (p.jwks_uri.is_some(), "jwks_uri"), (p.discovery, "discovery")]
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, n)| *n)
                    .collect();
                let given = if set.is_empty() { "none is set".to_string() } else { format!("{} are set", set.join(" and ")) };
                // the field named is one of those given (the last), or `jwks` when none is
                let field = set.last().copied().unwrap_or("jwks");
                errs.add(format!("{at}.{field}"), format!("set exactly one of jwks (inline), jwks_uri, or discovery: true ({given})"));
                KeySource::Inline(std::rc::Rc::default())
            } else if let Some(doc) = p.jwks {
                if p.cluster.is_some() {
                    errs.add(format!("{at}.cluster"), "only used with jwks_uri or discovery");
                }
                let private = doc.get("keys").and_then(|k| k.as_array()).is_some_and(|ks| ks.iter().any(|k| k.get("d").is_some()));
                if private {
                    errs.add(format!("{at}.jwks"), "contains private key material (d): a policy holds public keys only; remove it and rotate that key");
                }
                match KeySet::from_json(doc.to_string().as_bytes()) {
                    Ok(ks) => KeySource::Inline(std::rc::Rc::new(ks)),
                    Err(e) => {
                        if !private {
                            errs.add(format!("{at}.jwks"), e);
                        }
                        KeySource::Inline(std::rc::Rc::default())
                    }
                }
            } else {
                let cluster = p.cluster.unwrap_or_default();
                if cluster.is_empty() {
                    errs.add(format!("{at}.cluster"), "the Envoy cluster that reaches the JWKS host is required");
                }
                let url = match &p.jwks_uri {
                    Some(u) => u.clone(),
                    None => format!("{}/.well-known/openid-configuration", p.issuer.trim_end_matches('/')),
                };
                match split_url(&url) {
                    Some((authority, path)) if p.jwks_uri.is_some() => KeySource::Remote { cluster, authority, path },
                    Some((authority, path)) => KeySource::Discovery { cluster, authority, path },
                    None => {
                        let field = if p.jwks_uri.is_some() { "jwks_uri" } else { "issuer" };
                        errs.add(
                            format!("{at}.{field}"),
                            "must be an http:// or https:// URL with a host and optional port (no user:password@, query or fragment)",
                        );
                        KeySource::Inline(std::rc::Rc::default())
                    }
                }
            };
            providers.push(Provider {
                name: p.name,
                issuer: p.issuer,
                audiences: p.audiences,
                max_lifetime_seconds: p.max_lifetime_seconds,
                groups_claim,
                groups_prefix: p.groups_prefix,
                token_header,
                keys,
            });
        }

        let mut resources = Vec::new();
        let mut rnames = HashSet::new();
        let has_collector = self.audit.collector.is_some();
        let too_many = self.resources.len() > MAX_RESOURCES;
        if too_many {
            errs.add("resources", format!("at most {MAX_RESOURCES} resources (this policy has {})", self.resources.len()));
        }
        for (i, r) in self.resources.into_iter().enumerate() {
            let at = format!("resources[{i}]");
            if r.name.is_empty() || !rnames.insert(r.name.clone()) {
                errs.add(format!("{at}.name"), "must be non-empty and unique");
            }
            if r.path_prefix.is_some() && r.path_glob.is_some() {
                errs.add(format!("{at}.path_glob"), "set path_prefix or path_glob, not both");
            }
            if let Some(p) = &r.path_prefix {
                if !p.starts_with('/') {
                    errs.add(format!("{at}.path_prefix"), "must start with '/'");
                } else if p.contains(['?', '#']) {
                    errs.add(format!("{at}.path_prefix"), NO_QUERY);
                }
            }
            let path_glob = r.path_glob.as_deref().map(|g| glob(&mut errs, &format!("{at}.path_glob"), g));
            // requests are compared without a trailing dot: so are patterns
            let written: Vec<String> = r.authorities.iter().map(|a| a.to_ascii_lowercase()).collect();
            for (j, a) in written.iter().enumerate() {
                // a host (name, IPv4, [IPv6]) with an optional port: no scheme, path, spaces or control bytes
                let chars_ok = a.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']' | b'_' | b'*'));
                let port_ok = !a.ends_with(':') && !a.starts_with(':');
                let wild_ok = a == "*" || (a.starts_with("*.") && a.len() > 2 && !a.get(2..).unwrap_or("").contains('*'));
                if a.is_empty() || !chars_ok || !port_ok || (a.starts_with("*.") && a.contains(':')) || (a.contains('*') && !wild_ok) {
                    errs.add(format!("{at}.authorities[{j}]"), "use host, host:port, *.suffix (no port) or *");
                }
            }
            let authorities: Vec<String> = written.iter().map(|a| a.strip_suffix('.').unwrap_or(a).to_string()).collect();
            let methods_v = methods(&mut errs, &format!("{at}.methods"), &r.methods);
            let mut operations = Vec::new();
            for (j, op) in r.operations.into_iter().enumerate() {
                let oat = format!("{at}.operations[{j}]");
                let class = match op.class.as_str() {
                    "read" => OpClass::Read,
                    "write" => OpClass::Write,
                    other => {
                        errs.add(format!("{oat}.class"), format!("must be \"read\" or \"write\", not {other:?}"));
                        OpClass::Write
                    }
                };
                let op_methods = methods(&mut errs, &format!("{oat}.methods"), &op.methods);
                let path_glob = glob(&mut errs, &format!("{oat}.path_glob"), &op.path_glob);
                // an operation outside its resource never classifies a request
                outside(&mut errs, &oat, (&methods_v, r.path_prefix.as_deref()), (&op_methods, &op.path_glob, &path_glob));
                operations.push(Operation { methods: op_methods, path_glob, class });
            }
            let read = group_rule(&mut errs, &format!("{at}.read"), r.read);
            let write = group_rule(&mut errs, &format!("{at}.write"), r.write);
            if read.is_empty() && write.is_empty() {
                errs.add(at.clone(), "grants nothing: set read and/or write groups");
            }
            for (j, p) in r.providers.iter().enumerate() {
                if !names.contains(p) {
                    errs.add(format!("{at}.providers[{j}]"), format!("no provider named {p:?}"));
                }
            }
            for (j, s) in r.scopes.iter().enumerate() {
                if s.is_empty() || s.contains(char::is_whitespace) {
                    errs.add(format!("{at}.scopes[{j}]"), "scope values are non-empty and contain no whitespace");
                }
            }
            let mut upstream_headers = Vec::new();
            for (name, value) in r.upstream_headers {
                let lname = name.to_ascii_lowercase();
                let hat = format!("{at}.upstream_headers.{name}");
                if upstream_headers.iter().any(|(n, _): &(String, String)| *n == lname) {
                    errs.add(hat, "set twice (header names are case-insensitive)");
                } else if !valid_header_name(&lname) {
                    errs.add(hat, "not a valid header name");
                } else if forbidden_upstream_header(&lname) {
                    errs.add(hat, "this header cannot be set by policy");
                } else if lname == "authorization" && r.forward_authorization {
                    errs.add(hat, "conflicts with forward_authorization: true");
                } else if !valid_header_value(&value) {
                    errs.add(hat, "value contains control characters");
                } else {
                    upstream_headers.push((lname, value));
                }
            }
            let mask = r.mask.map(|m| {
                let mat = format!("{at}.mask");
                let requests = match m.requests.as_deref() {
                    None => None,
                    Some("chat_messages") => Some(RequestMask::ChatMessages),
                    Some("json") => Some(RequestMask::Json),
                    Some(other) => {
                        errs.add(format!("{mat}.requests"), format!("must be \"chat_messages\" or \"json\", not {other:?}"));
                        None
                    }
                };
                let reject_over_limit = match m.over_limit.as_deref() {
                    None | Some("reject") => true,
                    Some("pass") => false,
                    Some(other) => {
                        errs.add(format!("{mat}.over_limit"), format!("must be \"reject\" or \"pass\", not {other:?}"));
                        true
                    }
                };
                let pass_other_types = match m.other_types.as_deref() {
                    None | Some("refuse") => false,
                    Some("pass") => true,
                    Some(other) => {
                        errs.add(format!("{mat}.other_types"), format!("must be \"refuse\" or \"pass\", not {other:?}"));
                        false
                    }
                };
                if !(1..=(16 << 20)).contains(&m.max_buffer_bytes) {
                    errs.add(format!("{mat}.max_buffer_bytes"), "must be between 1 and 16777216");
                } else if m.max_buffer_bytes > envoy_limit {
                    errs.add(
                        format!("{mat}.max_buffer_bytes"),
                        format!(
                            "{} is over Envoy's buffer limit of {envoy_limit} bytes; raise the listener's per_connection_buffer_limit_bytes and set envoy_buffer_limit_bytes to it",
                            m.max_buffer_bytes
                        ),
                    );
                }
                let content_types: Vec<String> = m.content_types.iter().map(|c| c.trim().to_ascii_lowercase()).collect();
                for (j, c) in content_types.iter().enumerate() {
                    let mut parts = c.split('/');
                    let (top, sub) = (parts.next().unwrap_or(""), parts.next());
                    let token = |t: &str| !t.is_empty() && !t.contains(|ch: char| ch == '*' || ch == ';' || ch == ',' || ch.is_whitespace());
                    let ok = (c.starts_with('+') && token(c.trim_start_matches('+')))
                        || (parts.next().is_none()
                            && match sub {
                                Some("*") => top == "*" || token(top),
                                Some(sub) => token(top) && token(sub),
                                None => false,
                            });
                    if !ok {
                        errs.add(format!("{mat}.content_types[{j}]"), "use a media type (text/plain), a top-level type (text/*, */*) or a suffix (+json)");
                    }
                }
                std::rc::Rc::new(ResourceMask {
                    responses: m.responses,
                    requests,
                    content_types,
                    max_buffer_bytes: m.max_buffer_bytes,
                    reject_over_limit,
                    pass_other_types,
                })
            });
            let approval = r.approval.map(|a| std::rc::Rc::new(approval(&mut errs, &format!("{at}.approval"), a, envoy_limit, write.is_empty())));
            for (k, p) in approval.iter().flat_map(|a| a.requests.iter()).enumerate() {
                let pat = format!("{at}.approval.requests[{k}]");
                outside(&mut errs, &pat, (&methods_v, r.path_prefix.as_deref()), (&p.methods, p.path_glob.pattern(), &p.path_glob));
            }
            let quota = r.quota.map(|q| std::rc::Rc::new(quota(&mut errs, &format!("{at}.quota"), q)));
            let sync_audit = match r.audit.as_deref() {
                None | Some("async") => false,
                Some("sync") => {
                    if !has_collector {
                        errs.add(format!("{at}.audit"), "sync audit needs an audit.collector to acknowledge records");
                    }
                    true
                }
                Some(other) => {
                    errs.add(format!("{at}.audit"), format!("must be \"sync\" or \"async\", not {other:?}"));
                    false
                }
            };
            resources.push(Resource {
                quota,
                sync_audit,
                approval,
                mask,
                name: r.name,
                authorities,
                path_prefix: r.path_prefix,
                path_glob,
                methods: methods_v,
                operations,
                read,
                write,
                providers: r.providers,
                scopes: r.scopes,
                forward_authorization: r.forward_authorization,
                upstream_headers,
                identity_headers: r.identity_headers,
            });
        }
        if resources.is_empty() {
            errs.add("resources", "at least one resource is required (everything else is denied)");
        }
        // A resource that an earlier one covers whole never decides a
        // request: e.g. `/data/secret/` for admins after `/data/` for
        // readers lets readers in. Refused, as a dead rule is a mistake.
        // (pairwise: not run over a list already refused for its length)
        if !too_many {
            for (j, later) in resources.iter().enumerate() {
                if let Some((i, first)) = resources.iter().enumerate().take(j).find(|(_, r)| r.covers(later)) {
                    errs.add(
                        format!("resources[{j}]"),
                        format!(
                            "never matches: resources[{i}] ({}) comes first and covers every request it covers (the first match decides); put the more specific resource first",
                            first.name
                        ),
                    );
                }
            }
        }
        let audit = audit(&mut errs, self.audit);
        let credentials = backend_credentials(&resources);
        let masker = if self.masking.is_some() || resources.iter().any(|r| r.mask.is_some()) {
            match crate::mask::Masker::compile(self.masking.unwrap_or_default(), "masking") {
                Ok(m) => Some(std::rc::Rc::new(m.with_credentials(&credentials))),
                Err(e) => {
                    errs.0.extend(e);
                    None
                }
            }
        } else {
            None
        };
        if !errs.0.is_empty() {
            return Err(errs.0);
        }
        Ok(Config {
            realm: self.realm,
            clock_skew_seconds: self.clock_skew_seconds,
            max_token_bytes: self.max_token_bytes,
            token_cache_entries: self.token_cache_entries,
            jwks_fetch: JwksFetch {
                refresh_seconds: self.jwks_fetch.refresh_seconds,
                min_refetch_seconds: self.jwks_fetch.min_refetch_seconds,
                cold_start_wait_ms: self.jwks_fetch.cold_start_wait_ms,
                timeout_ms: self.jwks_fetch.timeout_ms,
            },
            providers,
            resources,
            masker,
            credentials: credentials.into(),
            audit,
            envoy_buffer_limit: envoy_limit,
        })
    }
}
