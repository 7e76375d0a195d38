//! `resources[i].mask` validation and the plan it produces.

mod common;

use common::*;
use nhi_gate::config::RequestMask;
use nhi_gate::gate::Gate;
use nhi_gate::policy::{Identity, Request};
use serde_json::json;

fn doc(mask: serde_json::Value) -> serde_json::Value {
    json!({
        "providers": [{"name": "p", "issuer": "https://i", "audiences": ["a"], "jwks_uri": "https://i/k", "cluster": "c"}],
        "resources": [{"name": "r", "read": {"any_of": ["g"]}, "write": {"any_of": ["g"]}, "mask": mask}]
    })
}

#[test]
fn mask_settings_are_validated_with_their_field() {
    for (mask, field) in [
        (json!({"requests": "everything"}), "resources[0].mask.requests"),
        (json!({"over_limit": "maybe"}), "resources[0].mask.over_limit"),
        (json!({"max_buffer_bytes": 0}), "resources[0].mask.max_buffer_bytes"),
        (json!({"content_types": ["*/json"]}), "resources[0].mask.content_types[0]"),
        (json!({"content_types": ["text/*/x"]}), "resources[0].mask.content_types[0]"),
        (json!({"content_types": ["text/pl*n"]}), "resources[0].mask.content_types[0]"),
        (json!({"content_types": ["text/plain, text/html"]}), "resources[0].mask.content_types[0]"),
        (json!({"content_types": ["+"]}), "resources[0].mask.content_types[0]"),
        (json!({"content_types": ["application/json; charset=utf-8"]}), "resources[0].mask.content_types[0]"),
    ] {
        let errs = config_errors(&doc(mask.clone()));
        assert!(errs.iter().any(|e| e.field == field), "{mask}: {errs:?}");
    }
    let mut d = doc(json!({}));
    d["masking"] = json!({"detectors": ["no_such_detector"]});
    assert!(config_errors(&d).iter().any(|e| e.field.starts_with("masking.detectors")));
}

#[test]
fn held_body_limit_is_held_to_envoys_buffer_limit() {
    let mut d = doc(json!({}));
    d["resources"][0]["approval"] = json!({"cluster": "approvals", "max_body_bytes": 2 << 20});
    let errs = config_errors(&d);
    assert!(errs.iter().any(|e| e.field == "resources[0].approval.max_body_bytes" && e.problem.contains("per_connection_buffer_limit_bytes")), "{errs:?}");
    d["envoy_buffer_limit_bytes"] = json!(4 << 20);
    assert_eq!(config(&d).resources[0].approval.as_ref().map(|a| a.max_body_bytes), Some(2 << 20));
}

#[test]
fn wildcard_content_types_are_accepted() {
    let c = config(&doc(json!({"content_types": ["text/*", "*/*", "+xml", "Application/JSON"]})));
    assert_eq!(c.resources[0].mask.as_ref().map(|m| m.content_types.clone()), Some(vec!["text/*".into(), "*/*".into(), "+xml".into(), "application/json".into()]));
}

#[test]
fn max_buffer_bytes_is_held_to_envoys_buffer_limit() {
    // Envoy's default limit (1 MiB) unless the policy declares the listener's
    let over = json!({"max_buffer_bytes": (1 << 20) + 1});
    let errs = config_errors(&doc(over.clone()));
    let e = errs.iter().find(|e| e.field == "resources[0].mask.max_buffer_bytes").expect("over Envoy's default limit");
    assert!(e.problem.contains("per_connection_buffer_limit_bytes"), "{e:?}");
    assert_eq!(config(&doc(json!({"max_buffer_bytes": 1 << 20}))).resources[0].mask.as_ref().map(|m| m.max_buffer_bytes), Some(1 << 20));
    let mut d = doc(over);
    d["envoy_buffer_limit_bytes"] = json!(8 << 20);
    assert_eq!(config(&d).resources[0].mask.as_ref().map(|m| m.max_buffer_bytes), Some((1 << 20) + 1));
    d["envoy_buffer_limit_bytes"] = json!(1 << 20);
    assert!(config_errors(&d).iter().any(|e| e.field == "resources[0].mask.max_buffer_bytes"));
    d["envoy_buffer_limit_bytes"] = json!(0);
    assert!(config_errors(&d).iter().any(|e| e.field == "envoy_buffer_limit_bytes"));
}

#[test]
fn masking_resource_gets_a_compiled_masker_and_a_plan() {
    let c = config(&doc(json!({"requests": "chat_messages"})));
    assert!(c.masker.is_some());
    let m = c.resources[0].mask.clone().unwrap();
    assert!(m.responses && m.reject_over_limit && m.requests == Some(RequestMask::ChatMessages));
    let gate = Gate::new(c);
    let id = Identity::from_claims("p", "https://i", &["groups".into()], &obj(json!({"groups": ["g"]})));
    let req = Request { authority: b"x", path: b"/v1/chat/completions", method: "POST" };
    let plan = gate.authorize(&req, &[("accept-encoding", b"gzip, br")], id.clone()).unwrap();
    assert!(plan.set.contains(&("accept-encoding".to_string(), "identity".to_string())));
    // nothing to rewrite: no Accept-Encoding, or only identity
    for headers in [&[][..], &[("accept-encoding", &b" Identity"[..])][..]] {
        let p = gate.authorize(&req, headers, id.clone()).unwrap();
        assert!(!p.set.iter().any(|(n, _)| n == "accept-encoding"), "{headers:?}");
    }
    assert!(plan.remove.contains(&"content-length".to_string()));
    assert_eq!(plan.mask, Some(m));
}

#[test]
fn no_mask_means_no_masker() {
    let c = config(&json!({
        "providers": [{"name": "p", "issuer": "https://i", "audiences": ["a"], "jwks_uri": "https://i/k", "cluster": "c"}],
        "resources": [{"name": "r", "read": {"any_of": ["g"]}}]
    }));
    assert!(c.masker.is_none() && c.resources[0].mask.is_none());
}
