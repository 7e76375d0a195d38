//! nhi-gate: a proxy-wasm HTTP filter that admits non-human identities (CI
//! jobs, agents) to RAG backends only with a verified short-lived OIDC token
//! whose groups the target resource's policy allows.
//!
//! Host-independent core, by concern:
//! - [`jwt`]: taking and parsing the JWS, header rules, claim checks;
//! - [`jwks`]: JWKS parsing and key selection;
//! - [`policy`]: resource matching, operation class, group/scope decision;
//! - [`config`]: the plugin configuration and its validator;
//! - [`gate`]: the pipeline tying them together, with the verified-token cache;
//! - [`approval`]: which requests are held for approval, the callout and its answer;
//! - [`quota`]: token and request budgets per identity, counters and usage;
//! - [`rls`]: the wire format of Envoy's rate-limit service (RLS v3) for an external quota;
//! - [`mask`] and [`body`]: PII redaction of request and response bodies;
//! - [`audit`]: the per-request audit record;
//! - [`deny`]: local-reply status, reason and body.
//!
//! The proxy-wasm layer (`wasm` module, wasm32 only) talks to Envoy.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

pub mod approval;
pub mod audit;
pub mod body;
pub mod config;
pub mod deny;
pub mod gate;
pub mod jwks;
pub mod jwt;
pub mod mask;
pub mod policy;
pub mod quota;
pub mod rls;

#[cfg(target_arch = "wasm32")]
mod wasm;
