//! `config`: the validator. Every rule has a test that breaks exactly that rule
//! in an otherwise valid document and checks the error names the field path.

mod common;

use common::*;
use jwt_simple::prelude::*;
use nhi_gate::config::{Config, KeySource};
use nhi_gate::policy::OpClass;
use serde_json::{json, Value};

/// A valid document: one remote-key provider and one resource.
fn base() -> Value {
    json!({
        "providers": [remote_provider_json("idp", ISSUER)],
        "resources": [{"name": "docs", "path_prefix": "/docs", "read": {"any_of": ["readers"]}}],
    })
}

/// `doc` with the member at JSON pointer `path` set (created if absent);
/// `Value::Null` removes it.
fn with(mut doc: Value, path: &str, value: Value) -> Value {
    let (parent, name) = path.rsplit_once('/').expect("pointer");
    let target = doc.pointer_mut(parent).unwrap_or_else(|| panic!("no {parent} in the document"));
    match target {
        Value::Object(m) if value.is_null() => {
            m.remove(name);
        }
        Value::Object(m) => {
            m.insert(name.to_string(), value);
        }
        Value::Array(a) => {
            let i: usize = name.parse().expect("array index");
            if i == a.len() {
                a.push(value);
            } else {
                a[i] = value;
            }
        }
        other => panic!("cannot set {name} in {other}"),
    }
    doc
}

/// The field paths of the errors of an invalid document.
fn error_fields(doc: &Value) -> Vec<String> {
    config_errors(doc).into_iter().map(|e| e.field).collect()
}

/// Asserts the document is rejected with exactly one error, on `field`.
#[track_caller]
fn assert_rejected(doc: Value, field: &str) {
    let errs = config_errors(&doc);
    assert_eq!(errs.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), [field], "{errs:?}");
    let shown = errs[0].to_string();
    assert!(shown.starts_with(&format!("{field}: ")), "Display names the field: {shown}");
    assert!(!errs[0].problem.is_empty());
}

fn p0(path: &str) -> String {
    format!("/providers/0/{path}")
}

fn r0(path: &str) -> String {
    format!("/resources/0/{path}")
}

#[test]
fn base_document_is_valid() {
    config(&base());
}

// ---------------------------------------------------------------------------
// Whole-document errors

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    for (doc, field) in [
        (with(base(), "/bogus", json!(1)), "bogus"),
        (with(base(), "/jwks_fetch", json!({"refresh": 60})), "jwks_fetch.refresh"),
        (with(base(), &p0("audience"), json!("x")), "providers[0].audience"),
        (with(base(), &r0("group"), json!("x")), "resources[0].group"),
        (with(base(), &r0("read/one_of"), json!(["x"])), "resources[0].read.one_of"),
        (
            with(base(), &r0("operations"), json!([{"path_glob": "/x", "class": "read", "verb": "GET"}])),
            "resources[0].operations[0].verb",
        ),
    ] {
        let errs = config_errors(&doc);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, field);
        assert!(errs[0].problem.contains("unknown field"), "{}", errs[0].problem);
    }
}

#[test]
fn wrong_types_name_their_field() {
    assert_rejected(with(base(), "/clock_skew_seconds", json!("60")), "clock_skew_seconds");
    assert_rejected(with(base(), &p0("audiences"), json!(AUDIENCE)), "providers[0].audiences");
    assert_rejected(with(base(), &r0("methods"), json!([1])), "resources[0].methods[0]");
}

#[test]
fn missing_required_fields() {
    assert_rejected(with(base(), "/providers", Value::Null), "(document)");
    assert_rejected(with(base(), "/resources", Value::Null), "(document)");
    assert_rejected(with(base(), &p0("issuer"), Value::Null), "providers[0]");
    assert_rejected(with(base(), &r0("name"), Value::Null), "resources[0]");
}

#[test]
fn trailing_garbage_is_rejected() {
    for tail in [" x", " {}", "]", " null"] {
        let text = format!("{}{tail}", base());
        let errs = Config::from_json(text.as_bytes()).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "(document)");
    }
    // Trailing whitespace is fine.
    assert!(Config::from_json(format!("{}\n  \n", base()).as_bytes()).is_ok());
}

#[test]
fn non_json_and_non_object_documents_are_rejected() {
    for text in ["", "not json", "[]", "null", "\"providers\""] {
        let errs = Config::from_json(text.as_bytes()).unwrap_err();
        assert_eq!(errs[0].field, "(document)", "{text:?}: {errs:?}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let doc = with(base(), "/clock_skew_seconds", json!(301));
    let doc = with(doc, &p0("max_lifetime_seconds"), json!(0));
    let doc = with(doc, &r0("methods"), json!(["FETCH"]));
    assert_eq!(error_fields(&doc), ["clock_skew_seconds", "providers[0].max_lifetime_seconds", "resources[0].methods[0]"]);
}

#[test]
fn from_value_validates_like_from_json() {
    assert!(Config::from_value(&base()).is_ok());
    let errs = Config::from_value(&with(base(), &p0("max_lifetime_seconds"), json!(90_000))).unwrap_err();
    assert_eq!(errs[0].field, "providers[0].max_lifetime_seconds");
}

// ---------------------------------------------------------------------------
// Top-level settings

#[test]
fn realm_must_be_printable_without_quotes() {
    for bad in ["", "a\"b", "a\nb", "a\u{7f}"] {
        assert_rejected(with(base(), "/realm", json!(bad)), "realm");
    }
    assert_eq!(config(&with(base(), "/realm", json!("rag api"))).realm, "rag api");
}

#[test]
fn clock_skew_is_at_most_300() {
    assert_rejected(with(base(), "/clock_skew_seconds", json!(301)), "clock_skew_seconds");
    assert_eq!(config(&with(base(), "/clock_skew_seconds", json!(300))).clock_skew_seconds, 300);
    assert_eq!(config(&with(base(), "/clock_skew_seconds", json!(0))).clock_skew_seconds, 0);
}

#[test]
fn max_token_bytes_range() {
    for bad in [0, 511, 65537] {
        assert_rejected(with(base(), "/max_token_bytes", json!(bad)), "max_token_bytes");
    }
    for good in [512, 65536] {
        assert_eq!(config(&with(base(), "/max_token_bytes", json!(good))).max_token_bytes, good);
    }
}

#[test]
fn token_cache_entries_bound() {
    assert_rejected(with(base(), "/token_cache_entries", json!(100_001)), "token_cache_entries");
    assert_eq!(config(&with(base(), "/token_cache_entries", json!(0))).token_cache_entries, 0);
}

#[test]
fn jwks_fetch_ranges() {
    for (name, bad, good) in [
        ("refresh_seconds", json!(9), json!(10)),
        ("refresh_seconds", json!(86401), json!(86400)),
        ("min_refetch_seconds", json!(0), json!(1)),
        ("min_refetch_seconds", json!(3601), json!(3600)),
        ("cold_start_wait_ms", json!(30_001), json!(0)),
        ("timeout_ms", json!(99), json!(100)),
        ("timeout_ms", json!(30_001), json!(30_000)),
    ] {
        let doc = with(base(), "/jwks_fetch", json!({ name: bad }));
        assert_rejected(doc, &format!("jwks_fetch.{name}"));
        config(&with(base(), "/jwks_fetch", json!({ name: good })));
    }
}

#[test]
fn defaults_are_applied() {
    let c = config(&base());
    assert_eq!(c.realm, "nhi-gate");
    assert_eq!(c.clock_skew_seconds, 60);
    assert_eq!(c.max_token_bytes, 8192);
    assert_eq!(c.token_cache_entries, 1024);
    assert_eq!(
        (c.jwks_fetch.refresh_seconds, c.jwks_fetch.min_refetch_seconds, c.jwks_fetch.cold_start_wait_ms, c.jwks_fetch.timeout_ms),
        (600, 30, 5000, 2000)
    );
    let p = &c.providers[0];
    assert_eq!(p.max_lifetime_seconds, 3600);
    assert_eq!(p.groups_claim, ["groups"]);
    assert_eq!(p.token_header, None);
    let r = &c.resources[0];
    assert!(!r.forward_authorization);
    assert!(!r.identity_headers);
    assert!(r.methods.is_empty() && r.authorities.is_empty() && r.providers.is_empty() && r.scopes.is_empty());
}

// ---------------------------------------------------------------------------
// Providers

#[test]
fn at_least_one_provider() {
    let doc = with(base(), "/providers", json!([]));
    assert_rejected(doc, "providers");
}

#[test]
fn provider_names_are_non_empty_and_unique() {
    assert_rejected(with(base(), &p0("name"), json!("")), "providers[0].name");
    let doc = with(base(), "/providers/1", remote_provider_json("idp", "https://other.example"));
    assert_rejected(doc, "providers[1].name");
}

#[test]
fn issuers_are_non_empty_and_unique() {
    let doc = with(base(), "/providers/1", remote_provider_json("other", ISSUER));
    assert_rejected(doc, "providers[1].issuer");
    // An empty issuer with jwks_uri set: only the issuer rule fires.
    assert_rejected(with(base(), &p0("issuer"), json!("")), "providers[0].issuer");
}

#[test]
fn audiences_are_required_and_non_empty() {
    assert_rejected(with(base(), &p0("audiences"), json!([])), "providers[0].audiences");
    assert_rejected(with(base(), &p0("audiences"), json!(["a", ""])), "providers[0].audiences");
}

#[test]
fn max_lifetime_range() {
    for bad in [0, 86401] {
        assert_rejected(with(base(), &p0("max_lifetime_seconds"), json!(bad)), "providers[0].max_lifetime_seconds");
    }
    for good in [1, 86400] {
        assert_eq!(config(&with(base(), &p0("max_lifetime_seconds"), json!(good))).providers[0].max_lifetime_seconds, good);
    }
}

#[test]
fn groups_claim_is_a_dot_path() {
    for bad in ["", ".", "realm_access.", ".roles", "a..b"] {
        assert_rejected(with(base(), &p0("groups_claim"), json!(bad)), "providers[0].groups_claim");
    }
    let c = config(&with(base(), &p0("groups_claim"), json!("realm_access.roles")));
    assert_eq!(c.providers[0].groups_claim, ["realm_access", "roles"]);
}

#[test]
fn token_header_is_a_valid_non_authorization_name() {
    for bad in ["", "Authorization", "x token", ":path", "x-tok\u{e9}n", "x-token:"] {
        assert_rejected(with(base(), &p0("token_header"), json!(bad)), "providers[0].token_header");
    }
    let c = config(&with(base(), &p0("token_header"), json!("X-CI-Token")));
    assert_eq!(c.providers[0].token_header.as_deref(), Some("x-ci-token"), "lowercased");
}

#[test]
fn exactly_one_key_source() {
    let none = with(with(base(), &p0("jwks_uri"), Value::Null), &p0("cluster"), Value::Null);
    assert_rejected(none, "providers[0].jwks");
    // the error names a field that was given, not one that was not
    let two = with(base(), &p0("discovery"), json!(true));
    assert_rejected(two, "providers[0].discovery");
    let jwk = ES256KeyPair::generate().public_key().to_jwk();
    let inline_and_uri = with(base(), &p0("jwks"), jwks(&[jwk]));
    assert_rejected(inline_and_uri, "providers[0].jwks_uri");
    let jwk = ES256KeyPair::generate().public_key().to_jwk();
    let three = with(with(base(), &p0("discovery"), json!(true)), &p0("jwks"), jwks(&[jwk]));
    assert_rejected(three, "providers[0].discovery");
}

#[test]
fn inline_jwks_is_parsed() {
    let kp = ES256KeyPair::generate().with_key_id("k1");
    let doc = json!({
        "providers": [{"name": "idp", "issuer": ISSUER, "audiences": [AUDIENCE], "jwks": jwks(&[kp.public_key().to_jwk()])}],
        "resources": [{"name": "r", "read": {"any_of": ["a"]}}],
    });
    let c = config(&doc);
    match &c.providers[0].keys {
        KeySource::Inline(ks) => {
            assert_eq!(ks.keys.len(), 1);
            assert_eq!(ks.keys[0].kid.as_deref(), Some("k1"));
        }
        other => panic!("expected inline keys, got {other:?}"),
    }
}

#[test]
fn inline_jwks_without_usable_keys_is_rejected() {
    let ed_private = Ed25519KeyPair::generate().to_jwk();
    let doc = json!({
        "providers": [{"name": "idp", "issuer": ISSUER, "audiences": [AUDIENCE], "jwks": jwks(&[ed_private])}],
        "resources": [{"name": "r", "read": {"any_of": ["a"]}}],
    });
    let errs = config_errors(&doc);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].field, "providers[0].jwks");
    assert!(errs[0].problem.contains("private"), "{}", errs[0].problem);

    let doc = with(doc, "/providers/0/jwks", json!({"keys": "none"}));
    assert_rejected(doc, "providers[0].jwks");
}

#[test]
fn cluster_with_inline_jwks_is_rejected() {
    let jwk = ES256KeyPair::generate().public_key().to_jwk();
    let doc = with(with(base(), &p0("jwks_uri"), Value::Null), &p0("jwks"), jwks(&[jwk]));
    assert_rejected(doc, "providers[0].cluster");
}

#[test]
fn remote_jwks_needs_a_cluster() {
    assert_rejected(with(base(), &p0("cluster"), Value::Null), "providers[0].cluster");
    assert_rejected(with(base(), &p0("cluster"), json!("")), "providers[0].cluster");
    let discovery = with(with(base(), &p0("jwks_uri"), Value::Null), &p0("discovery"), json!(true));
    assert_rejected(with(discovery, &p0("cluster"), Value::Null), "providers[0].cluster");
}

#[test]
fn jwks_uri_must_be_http_url() {
    for bad in ["ftp://idp/jwks", "idp.example.com/jwks", "https://", "https:///jwks", "https://user@idp/jwks"] {
        assert_rejected(with(base(), &p0("jwks_uri"), json!(bad)), "providers[0].jwks_uri");
    }
}

#[test]
fn remote_key_source_splits_the_url() {
    let c = config(&with(base(), &p0("jwks_uri"), json!("https://idp.example.com:8443/oauth2/v1/keys")));
    match &c.providers[0].keys {
        KeySource::Remote { cluster, authority, path } => {
            assert_eq!((cluster.as_str(), authority.as_str(), path.as_str()), ("idp", "idp.example.com:8443", "/oauth2/v1/keys"));
        }
        other => panic!("expected remote keys, got {other:?}"),
    }
    let c = config(&with(base(), &p0("jwks_uri"), json!("http://idp")));
    assert!(matches!(&c.providers[0].keys, KeySource::Remote { path, .. } if path == "/"));
}

#[test]
fn discovery_derives_the_well_known_url_from_the_issuer() {
    let doc = with(with(base(), &p0("jwks_uri"), Value::Null), &p0("discovery"), json!(true));
    let doc = with(doc, &p0("issuer"), json!("https://login.example.com/tenant/v2.0/"));
    let c = config(&doc);
    match &c.providers[0].keys {
        KeySource::Discovery { cluster, authority, path } => {
            assert_eq!(cluster, "idp");
            assert_eq!(authority, "login.example.com");
            assert_eq!(path, "/tenant/v2.0/.well-known/openid-configuration");
        }
        other => panic!("expected discovery, got {other:?}"),
    }
}

#[test]
fn discovery_needs_an_http_issuer() {
    let doc = with(with(base(), &p0("jwks_uri"), Value::Null), &p0("discovery"), json!(true));
    assert_rejected(with(doc, &p0("issuer"), json!("urn:example:idp")), "providers[0].issuer");
}

// ---------------------------------------------------------------------------
// Resources

#[test]
fn at_least_one_resource() {
    assert_rejected(with(base(), "/resources", json!([])), "resources");
}

#[test]
fn resource_names_are_non_empty_and_unique() {
    assert_rejected(with(base(), &r0("name"), json!("")), "resources[0].name");
    let doc = with(base(), "/resources/1", json!({"name": "docs", "read": {"any_of": ["x"]}}));
    assert_rejected(doc, "resources[1].name");
}

#[test]
fn path_prefix_and_glob_are_exclusive() {
    assert_rejected(with(base(), &r0("path_glob"), json!("/docs/**")), "resources[0].path_glob");
}

#[test]
fn path_prefix_must_be_absolute() {
    assert_rejected(with(base(), &r0("path_prefix"), json!("docs")), "resources[0].path_prefix");
}

#[test]
fn path_glob_must_be_absolute() {
    let doc = with(with(base(), &r0("path_prefix"), Value::Null), &r0("path_glob"), json!("**/docs"));
    assert_rejected(doc, "resources[0].path_glob");
}

#[test]
fn methods_must_be_known() {
    assert_rejected(with(base(), &r0("methods"), json!(["GET", "FETCH"])), "resources[0].methods[1]");
    assert_eq!(config(&with(base(), &r0("methods"), json!(["get", "Delete"]))).resources[0].methods, ["GET", "DELETE"]);
}

#[test]
fn operation_class_must_be_read_or_write() {
    let doc = with(base(), &r0("operations"), json!([{"path_glob": "/docs/search", "class": "admin"}]));
    assert_rejected(doc, "resources[0].operations[0].class");
    let doc = with(base(), &r0("operations"), json!([{"path_glob": "/docs/search", "class": "Read"}]));
    assert_rejected(doc, "resources[0].operations[0].class");
}

#[test]
fn operation_methods_must_be_known() {
    let doc = with(base(), &r0("operations"), json!([{"methods": ["SEARCH"], "path_glob": "/docs/x", "class": "read"}]));
    assert_rejected(doc, "resources[0].operations[0].methods[0]");
}

/// Rules that can never apply are mistakes, refused with the field named:
/// an operation outside its resource's path or methods, a path pattern
/// with a query or fragment, an approval on a resource nobody may write to.
#[test]
fn rules_that_never_match_are_refused() {
    let op = |o: Value| with(base(), &r0("operations"), json!([o]));
    assert_rejected(op(json!({"methods": ["POST"], "path_glob": "/other/search", "class": "read"})), "resources[0].operations[0].path_glob");
    let on_get = |o: Value| with(op(o), &r0("methods"), json!(["GET"]));
    assert_rejected(on_get(json!({"methods": ["POST"], "path_glob": "/docs/search", "class": "read"})), "resources[0].operations[0].methods");
    // GET covers HEAD; a glob whose literal part ends before the prefix may still match
    config(&on_get(json!({"methods": ["HEAD", "POST"], "path_glob": "/docs/search", "class": "read"})));
    config(&op(json!({"methods": ["POST"], "path_glob": "/do*/search", "class": "read"})));
    config(&op(json!({"path_glob": "/**", "class": "read"})));
    assert_rejected(with(base(), &r0("path_prefix"), json!("/docs?x=1")), "resources[0].path_prefix");
    assert_rejected(op(json!({"path_glob": "/docs/search#top", "class": "read"})), "resources[0].operations[0].path_glob");
    let glob_res = with(with(base(), &r0("path_prefix"), Value::Null), &r0("path_glob"), json!("/docs/*?"));
    assert_rejected(glob_res, "resources[0].path_glob");
    // an approval of writes on a resource without write groups holds nothing
    let held = with(base(), &r0("approval"), json!({"cluster": "approvals"}));
    assert_rejected(held.clone(), "resources[0].approval");
    config(&with(held.clone(), &r0("write"), json!({"any_of": ["writers"]})));
    let listed = with(held.clone(), &r0("approval/requests"), json!([{"methods": ["POST"], "path_glob": "/docs/search"}]));
    config(&listed);
    // ... and so does `write: true` given beside requests that do hold
    assert_rejected(with(listed.clone(), &r0("approval/write"), json!(true)), "resources[0].approval.write");
    config(&with(listed, &r0("approval/write"), json!(false)));
    // an approval request pattern outside its resource holds nothing either
    let outside = with(held.clone(), &r0("approval/requests"), json!([{"methods": ["DELETE"], "path_glob": "/docs/**"}]));
    assert_rejected(with(outside, &r0("methods"), json!(["GET", "POST"])), "resources[0].approval.requests[0].methods");
    assert_rejected(with(held, &r0("approval/requests"), json!([{"path_glob": "/other/**"}])), "resources[0].approval.requests[0].path_glob");
}

#[test]
fn operation_glob_must_be_absolute() {
    let doc = with(base(), &r0("operations"), json!([{"path_glob": "search", "class": "read"}]));
    assert_rejected(doc, "resources[0].operations[0].path_glob");
}

#[test]
fn operations_are_parsed() {
    let doc = with(base(), &r0("operations"), json!([{"methods": ["post"], "path_glob": "/docs/search", "class": "read"}]));
    let c = config(&doc);
    let op = &c.resources[0].operations[0];
    assert_eq!(op.methods, ["POST"]);
    assert_eq!(op.class, OpClass::Read);
    assert!(op.path_glob.matches(b"/docs/search"));
}

#[test]
fn group_names_have_no_whitespace() {
    assert_rejected(with(base(), &r0("read"), json!({"any_of": ["ok", "two words"]})), "resources[0].read.any_of[1]");
    assert_rejected(with(base(), &r0("read"), json!({"all_of": [" "]})), "resources[0].read.all_of[0]");
    let doc = with(base(), &r0("write"), json!({"any_of": ["tab\there"]}));
    assert_rejected(doc, "resources[0].write.any_of[0]");
}

#[test]
fn resource_granting_nothing_is_rejected() {
    assert_rejected(with(base(), &r0("read"), Value::Null), "resources[0]");
    assert_rejected(with(base(), &r0("read"), json!({"any_of": [], "all_of": []})), "resources[0]");
    // Write-only is fine.
    let doc = with(with(base(), &r0("read"), Value::Null), &r0("write"), json!({"all_of": ["w"]}));
    assert!(config(&doc).resources[0].read.is_empty());
}

#[test]
fn resource_providers_must_exist() {
    assert_rejected(with(base(), &r0("providers"), json!(["idp", "nope"])), "resources[0].providers[1]");
    assert_eq!(config(&with(base(), &r0("providers"), json!(["idp"]))).resources[0].providers, ["idp"]);
}

#[test]
fn scopes_have_no_whitespace() {
    assert_rejected(with(base(), &r0("scopes"), json!(["rag.read", ""])), "resources[0].scopes[1]");
    assert_rejected(with(base(), &r0("scopes"), json!(["rag read"])), "resources[0].scopes[0]");
}

#[test]
fn upstream_header_names_must_be_valid() {
    for bad in ["bad header", "x-é", "", "x:y"] {
        let doc = with(base(), &r0("upstream_headers"), json!({ bad: "v" }));
        assert_rejected(doc, &format!("resources[0].upstream_headers.{bad}"));
    }
}

#[test]
fn forbidden_upstream_headers() {
    for name in ["Host", "connection", "content-length", "transfer-encoding", "te", "upgrade", "keep-alive", "x-nhi-subject", "X-NHI-Anything"] {
        let doc = with(base(), &r0("upstream_headers"), json!({ name: "v" }));
        assert_rejected(doc, &format!("resources[0].upstream_headers.{name}"));
    }
}

#[test]
fn upstream_authorization_conflicts_with_forwarding() {
    let doc = with(base(), &r0("upstream_headers"), json!({"Authorization": "Bearer backend"}));
    let c = config(&doc);
    assert_eq!(c.resources[0].upstream_headers, [("authorization".to_string(), "Bearer backend".to_string())]);
    let doc = with(doc, &r0("forward_authorization"), json!(true));
    assert_rejected(doc, "resources[0].upstream_headers.Authorization");
}

#[test]
fn upstream_header_values_have_no_control_characters() {
    for bad in ["a\r\nx-injected: 1", "a\u{0}", "a\u{7f}"] {
        let doc = with(base(), &r0("upstream_headers"), json!({"x-api-key": bad}));
        assert_rejected(doc, "resources[0].upstream_headers.x-api-key");
    }
    let doc = with(base(), &r0("upstream_headers"), json!({"x-api-key": "a\tb c"}));
    assert_eq!(config(&doc).resources[0].upstream_headers[0].1, "a\tb c");
}

// ---------------------------------------------------------------------------
// A complete configuration

#[test]
fn full_configuration_is_accepted() {
    let inline = Ed25519KeyPair::generate().with_key_id("ed1");
    let doc = json!({
        "realm": "rag",
        "clock_skew_seconds": 30,
        "max_token_bytes": 4096,
        "token_cache_entries": 500,
        "jwks_fetch": {"refresh_seconds": 300, "min_refetch_seconds": 10, "cold_start_wait_ms": 1000, "timeout_ms": 1500},
        "providers": [
            {
                "name": "github", "issuer": "https://token.actions.githubusercontent.com",
                "audiences": ["rag-api", "rag-api-2"], "max_lifetime_seconds": 900,
                "groups_claim": "repository_owner", "discovery": true, "cluster": "github_oidc",
            },
            {
                "name": "keycloak", "issuer": "https://kc.example.com/realms/ci",
                "audiences": ["rag-api"], "groups_claim": "realm_access.roles",
                "jwks_uri": "https://kc.example.com/realms/ci/protocol/openid-connect/certs", "cluster": "keycloak",
                "token_header": "X-CI-Token",
            },
            {
                "name": "local", "issuer": "https://local.example",
                "audiences": ["rag-api"], "jwks": jwks(&[inline.public_key().to_jwk()]),
            },
        ],
        "resources": [
            {
                "name": "vectors", "authorities": ["RAG.example.com", "*.rag.example.com"],
                "path_glob": "/v1/collections/**", "methods": ["GET", "POST", "DELETE"],
                "operations": [{"methods": ["POST"], "path_glob": "/v1/collections/*/search", "class": "read"}],
                "read": {"any_of": ["acme", "rag-readers"]}, "write": {"all_of": ["rag-writers", "ci"]},
                "providers": ["github", "keycloak"], "scopes": ["rag"],
                "upstream_headers": {"X-Api-Key": "secret"}, "identity_headers": true,
            },
            {
                "name": "health", "path_prefix": "/healthz", "read": {"any_of": ["ops"]},
                "forward_authorization": true,
            },
        ],
    });
    let c = config(&doc);
    assert_eq!((c.realm.as_str(), c.clock_skew_seconds, c.max_token_bytes, c.token_cache_entries), ("rag", 30, 4096, 500));
    assert_eq!(c.jwks_fetch.refresh_seconds, 300);
    assert_eq!(c.providers.len(), 3);
    assert!(matches!(&c.providers[0].keys, KeySource::Discovery { authority, path, .. }
        if authority == "token.actions.githubusercontent.com" && path == "/.well-known/openid-configuration"));
    assert!(matches!(&c.providers[1].keys, KeySource::Remote { cluster, .. } if cluster == "keycloak"));
    assert!(matches!(&c.providers[2].keys, KeySource::Inline(ks) if ks.keys.len() == 1));
    assert_eq!(c.providers[1].groups_claim, ["realm_access", "roles"]);
    assert_eq!(c.providers[1].token_header.as_deref(), Some("x-ci-token"));
    assert_eq!(c.provider_by_issuer("https://kc.example.com/realms/ci").map(|(i, _)| i), Some(1));
    assert!(c.provider_by_issuer("https://kc.example.com/realms/ci/").is_none(), "issuer match is exact");

    let r = &c.resources[0];
    assert_eq!(r.authorities, ["rag.example.com", "*.rag.example.com"]);
    assert!(r.path_glob.as_ref().unwrap().matches(b"/v1/collections/a/b"));
    assert_eq!(r.write.all_of, ["rag-writers", "ci"]);
    assert_eq!(r.upstream_headers, [("x-api-key".to_string(), "secret".to_string())]);
    assert!(r.identity_headers);
    assert!(c.resources[1].forward_authorization);
    assert_eq!(c.resources[1].path_prefix.as_deref(), Some("/healthz"));
}

#[test]
fn wildcard_authority_with_port_or_inner_star_is_rejected() {
    for bad in ["*.example.com:8443", "api.*.com", ""] {
        let doc = json!({
            "providers": [{"name": "p", "issuer": "https://i", "audiences": ["a"], "jwks_uri": "https://i/k", "cluster": "c"}],
            "resources": [{"name": "r", "authorities": [bad], "read": {"any_of": ["g"]}}]
        });
        let errs = config_errors(&doc);
        assert!(errs.iter().any(|e| e.field == "resources[0].authorities[0]"), "{bad}: {errs:?}");
    }
}

#[test]
fn type_errors_are_said_in_json_terms() {
    let base = json!({
        "providers": [{"name": "p", "issuer": "https://i", "audiences": ["a"], "jwks_uri": "https://i/k", "cluster": "c"}],
        "resources": [{"name": "r", "read": {"any_of": ["g"]}}]
    });
    for (field, value, want) in [
        ("clock_skew_seconds", json!("60"), "expected a non-negative integer"),
        ("clock_skew_seconds", json!(1.5), "expected a non-negative integer"),
    ] {
        let mut d = base.clone();
        d[field] = value.clone();
        let errs = config_errors(&d);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, field);
        assert!(errs[0].problem.ends_with(want) && errs[0].problem.contains("invalid type"), "{value}: {}", errs[0].problem);
    }
    let mut d = base.clone();
    d["resources"][0]["identity_headers"] = json!("yes");
    let errs = config_errors(&d);
    assert!(errs[0].problem.ends_with("expected true or false"), "{}", errs[0].problem);
}

#[test]
fn trailers_follow_the_request_header_rules() {
    let c = config(&json!({
        "providers": [{"name": "idp", "issuer": ISSUER, "audiences": [AUDIENCE], "jwks_uri": format!("{ISSUER}/jwks"), "cluster": "idp", "token_header": "x-ci-token"}],
        "resources": [{"name": "r", "path_prefix": "/", "read": {"any_of": ["g"]}, "upstream_headers": {"Api-Key": "backend-secret-0123", "Authorization": "Bearer sk-0123456789", "x-tenant": "acme"}}],
    }));
    for name in ["authorization", "proxy-authorization", "x-ci-token", "x-nhi-groups", "x-http-method-override", "range", "if-range", "api-key", "x-tenant"] {
        assert!(c.strips_trailer(name), "{name}");
    }
    for name in ["x-amz-checksum-crc32", "grpc-status", "content-md5"] {
        assert!(!c.strips_trailer(name), "{name}");
    }
    // the credentials looked for in responses: values and the part after a scheme, 8 bytes or more
    assert_eq!(&*c.credentials, ["backend-secret-0123", "Bearer sk-0123456789", "sk-0123456789"]);
}

#[test]
fn other_types_is_refuse_or_pass() {
    let doc = |v: Value| json!({
        "providers": [{"name": "idp", "issuer": ISSUER, "audiences": [AUDIENCE], "jwks_uri": format!("{ISSUER}/jwks"), "cluster": "idp"}],
        "resources": [{"name": "r", "path_prefix": "/", "read": {"any_of": ["g"]}, "mask": {"other_types": v}}],
    });
    assert!(config(&doc(json!("pass"))).resources[0].mask.as_ref().unwrap().pass_other_types);
    assert!(!config(&doc(json!("refuse"))).resources[0].mask.as_ref().unwrap().pass_other_types);
    let errs = config_errors(&doc(json!("allow")));
    assert_eq!(errs[0].field, "resources[0].mask.other_types", "{errs:?}");
}

#[test]
fn hostile_or_mistaken_policies_are_refused_naming_the_field() {
    let provider = || json!({"name": "idp", "issuer": ISSUER, "audiences": [AUDIENCE], "jwks_uri": format!("{ISSUER}/jwks"), "cluster": "idp"});
    let res = |extra: Value| {
        let mut r = json!({"name": "r", "path_prefix": "/", "read": {"any_of": ["g"]}});
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    };
    let first_field = |doc: Value| config_errors(&doc).first().map(|e| e.field.clone()).unwrap_or_default();
    // a section written as null is not "off"
    for (k, field) in [("mask", "resources[0].mask"), ("approval", "resources[0].approval"), ("quota", "resources[0].quota")] {
        assert_eq!(first_field(json!({"providers": [provider()], "resources": [res(json!({k: null}))]})), field);
    }
    assert_eq!(first_field(json!({"providers": [provider()], "resources": [res(json!({}))], "masking": null})), "masking");
    // one header set twice, hop-by-hop headers
    assert_eq!(first_field(json!({"providers": [provider()], "resources": [res(json!({"upstream_headers": {"Api-Key": "a", "api-key": "b"}}))]})),
               "resources[0].upstream_headers.api-key");
    for h in ["proxy-connection", "proxy-authorization", "trailer"] {
        assert_eq!(first_field(json!({"providers": [provider()], "resources": [res(json!({"upstream_headers": {h: "x"}}))]})),
                   format!("resources[0].upstream_headers.{h}"));
    }
    // token headers the filter would strip from every request
    for h in ["content-length", "transfer-encoding", "host", "cookie", "x-nhi-subject", "proxy-authorization"] {
        let mut p = provider();
        p["token_header"] = json!(h);
        assert_eq!(first_field(json!({"providers": [p], "resources": [res(json!({}))]})), "providers[0].token_header", "{h}");
    }
    // jwks_uri that no fetch can use
    for u in ["https://h\r\nx/jwks", "https://h x/jwks", "https://:443/jwks", "https://h?x", "https://h/jwks#frag"] {
        let mut p = provider();
        p["jwks_uri"] = json!(u);
        assert_eq!(first_field(json!({"providers": [p], "resources": [res(json!({}))]})), "providers[0].jwks_uri", "{u:?}");
    }
    // a private key in an inline JWKS, even beside a public one
    let ec = ES256KeyPair::generate().with_key_id("ec1");
    let mut private: Value = serde_json::from_str(&ec.public_key().to_jwk()).unwrap();
    private["d"] = json!("c2VjcmV0");
    private["kid"] = json!("ec2");
    let public: Value = serde_json::from_str(&ec.public_key().to_jwk()).unwrap();
    let p = json!({"name": "idp", "issuer": ISSUER, "audiences": [AUDIENCE], "jwks": {"keys": [public, private]}});
    let errs = config_errors(&json!({"providers": [p], "resources": [res(json!({}))]}));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].field == "providers[0].jwks" && errs[0].problem.contains("private key"), "{errs:?}");
    // too many custom detectors, and a pattern too large to compile
    let custom: Vec<Value> = (0..65).map(|i| json!({"name": format!("c{i}"), "pattern": format!("X{i}Y")})).collect();
    assert_eq!(first_field(json!({"providers": [provider()], "resources": [res(json!({}))], "masking": {"custom": custom}})), "masking.custom");
    let big = json!([{"name": "big", "pattern": "(?:\\w{15000})x"}]);
    assert_eq!(first_field(json!({"providers": [provider()], "resources": [res(json!({}))], "masking": {"custom": big}})), "masking.custom[0].pattern");
}

#[test]
fn authorities_that_can_never_match_are_refused() {
    for a in ["https://api.example.com", "api.example.com/v1", "api example.com", "api.example.com\r\n", "*.*.com", "*.", "host:", ":443"] {
        let errs = config_errors(&json!({
            "providers": [remote_provider_json("idp", ISSUER)],
            "resources": [{"name": "r", "authorities": [a], "path_prefix": "/", "read": {"any_of": ["g"]}}],
        }));
        assert_eq!(errs[0].field, "resources[0].authorities[0]", "{a:?}");
    }
    // a trailing dot is dropped, as it is from requests
    let c = config_with_resources(json!([{"name": "r", "authorities": ["API.example.com.", "*.example.org", "[::1]:8080", "*"], "path_prefix": "/", "read": {"any_of": ["g"]}}]));
    assert_eq!(c.resources[0].authorities, ["api.example.com", "*.example.org", "[::1]:8080", "*"]);
}

/// A document whose resources are `rs` (each gets a unique name and a read rule).
fn with_resources(rs: &[Value]) -> Value {
    let list: Vec<Value> = rs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut r = r.clone();
            r["name"] = json!(format!("r{i}"));
            r["read"] = json!({"any_of": [format!("g{i}")]});
            r
        })
        .collect();
    with(base(), "/resources", Value::Array(list))
}

/// A resource that an earlier one covers whole never decides a request (the
/// first match decides): refused, naming both.
#[test]
fn resources_shadowed_by_an_earlier_one_are_refused() {
    for (first, later) in [
        // the security mistake: a stricter sub-path after the broad path
        (json!({"path_prefix": "/data/"}), json!({"path_prefix": "/data/secret/"})),
        (json!({"path_prefix": "/data/"}), json!({"path_prefix": "/data/"})),
        (json!({}), json!({"path_prefix": "/x"})),
        (json!({"path_prefix": "/v1/"}), json!({"path_glob": "/v1/*/export"})),
        (json!({"path_glob": "/v1/*/export"}), json!({"path_glob": "/v1/*/export"})),
        (json!({"path_glob": "/**"}), json!({"path_glob": "/a/*"})),
        (json!({"path_prefix": "/a", "methods": ["GET", "POST"]}), json!({"path_prefix": "/a/b", "methods": ["POST"]})),
        (json!({"path_prefix": "/a", "methods": ["GET"]}), json!({"path_prefix": "/a", "methods": ["HEAD"]})),
        (json!({"path_prefix": "/a", "authorities": ["*"]}), json!({"path_prefix": "/a", "authorities": ["api.example.com"]})),
        (
            json!({"path_prefix": "/a", "authorities": ["api.example.com", "b.example.com"]}),
            json!({"path_prefix": "/a/b", "authorities": ["api.example.com"]}),
        ),
        // written with globs, the same mistake
        (json!({"path_glob": "/data/**"}), json!({"path_prefix": "/data/secret/"})),
        (json!({"path_glob": "/data/**"}), json!({"path_glob": "/data/secret/**"})),
        (json!({"path_glob": "/data/*"}), json!({"path_glob": "/data/secret"})),
        (json!({"path_glob": "/data/*/"}), json!({"path_glob": "/data/secret/"})),
        (json!({"path_prefix": "/data/"}), json!({"path_glob": "/data/secret"})),
        (json!({"path_prefix": "/"}), json!({"methods": ["POST"]})),
        // a host without a port matches every port; a wildcard its subdomains
        (json!({"authorities": ["api.example.com"]}), json!({"authorities": ["api.example.com:8443"]})),
        (json!({"authorities": ["*.example.com"]}), json!({"authorities": ["api.example.com", "b.example.com:443"]})),
        (json!({"authorities": ["*.example.com"]}), json!({"authorities": ["*.eu.example.com"]})),
        (json!({"authorities": ["[::1]"]}), json!({"authorities": ["[::1]:8443"]})),
    ] {
        let doc = with_resources(&[first.clone(), later.clone()]);
        let errs = config_errors(&doc);
        assert_eq!(errs.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["resources[1]"], "{first} then {later}: {errs:?}");
        assert!(errs[0].problem.contains("never matches: resources[0] (r0)"), "{}", errs[0].problem);
        // specific first: valid
        let doc = with_resources(&[later.clone(), first.clone()]);
        if first != later {
            assert!(Config::from_json(doc.to_string().as_bytes()).is_ok(), "{later} then {first}");
        }
    }
}

/// Partial overlaps and disjoint resources are valid (only whole coverage is
/// certain to be a dead rule).
#[test]
fn overlapping_but_not_shadowed_resources_are_valid() {
    for (first, later) in [
        (json!({"path_prefix": "/data/secret/"}), json!({"path_prefix": "/data/"})),
        (json!({"path_prefix": "/a/b/"}), json!({"path_glob": "/a/b"})),
        (json!({"path_prefix": "/a", "methods": ["GET"]}), json!({"path_prefix": "/a"})),
        (json!({"path_prefix": "/a", "methods": ["HEAD"]}), json!({"path_prefix": "/a", "methods": ["GET"]})),
        (json!({"path_prefix": "/a", "authorities": ["api.example.com"]}), json!({"path_prefix": "/a"})),
        (json!({"path_prefix": "/a", "authorities": ["*.example.com"]}), json!({"path_prefix": "/a", "authorities": ["*"]})),
        (json!({"path_glob": "/v1/*/export"}), json!({"path_glob": "/v1/**"})),
        (json!({"path_glob": "/v1/*/export"}), json!({"path_prefix": "/v1/"})),
        (json!({"path_prefix": "/a"}), json!({})),
        (json!({"path_glob": "/data/**"}), json!({"path_prefix": "/dat"})),
        (json!({"path_glob": "/data/*"}), json!({"path_glob": "/data/a/b"})),
        (json!({"path_glob": "/data/*/x/**"}), json!({"path_prefix": "/data/a/x/"})),
        (json!({"authorities": ["api.example.com:8443"]}), json!({"authorities": ["api.example.com"]})),
        (json!({"authorities": ["*.example.com"]}), json!({"authorities": ["example.com"]})),
        (json!({"authorities": ["api.example.com"]}), json!({"authorities": ["*.example.com"]})),
    ] {
        let doc = with_resources(&[first.clone(), later.clone()]);
        assert!(Config::from_json(doc.to_string().as_bytes()).is_ok(), "{first} then {later}: {:?}", Config::from_json(doc.to_string().as_bytes()).err());
    }
}

/// The resource list is bounded (each request scans it; loading checks every
/// pair): 1000 distinct resources load, 1001 are refused with the field named.
#[test]
fn resources_are_at_most_max_resources() {
    let rs = |n: usize| (0..n).map(|i| json!({"path_prefix": format!("/r{i}/")})).collect::<Vec<_>>();
    assert!(Config::from_json(with_resources(&rs(nhi_gate::config::MAX_RESOURCES)).to_string().as_bytes()).is_ok());
    let errs = config_errors(&with_resources(&rs(nhi_gate::config::MAX_RESOURCES + 1)));
    assert_eq!(errs.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["resources"], "{errs:?}");
    assert!(errs[0].problem.contains("at most 1000 resources (this policy has 1001)"), "{}", errs[0].problem);
}
