//! `mask`: the `masking` section — validation errors naming their field,
//! defaults, redaction modes, allow-list, custom detectors.

use nhi_gate::config::ConfigError;
use nhi_gate::mask::{Counts, Masker, RawMasking};
use serde_json::{json, Value};

fn compile(cfg: Value) -> Result<Masker, Vec<ConfigError>> {
    let raw: RawMasking = serde_json::from_value(cfg).expect("raw masking");
    Masker::compile(raw, "masking")
}

fn masker(cfg: Value) -> Masker {
    compile(cfg).expect("compiles")
}

/// The single error's field, and its message.
fn one_error(cfg: Value) -> (String, String) {
    let errs = compile(cfg).expect_err("must be refused");
    assert_eq!(errs.len(), 1, "{errs:?}");
    (errs[0].field.clone(), errs[0].problem.clone())
}

const KEY: &str = "a-long-enough-hash-key";

#[test]
fn defaults() {
    let m = masker(json!({}));
    assert_eq!(
        m.detector_names(),
        ["email", "payment_card", "us_ssn", "phone", "iban", "aws_access_key", "google_api_key", "github_token", "openai_key", "anthropic_key", "slack_token", "jwt", "private_key"]
    );
    let only = masker(json!({"detectors": ["email"]}));
    assert_eq!(only.detector_names(), ["email"]);
    assert_eq!(only.mask_text("a@example.com 4111111111111111", &mut Counts::new()), "[EMAIL] 4111111111111111");
    let none = masker(json!({"detectors": []}));
    assert_eq!(none.mask_text("a@example.com", &mut Counts::new()), "a@example.com");
}

#[test]
fn unknown_fields_are_refused() {
    assert!(serde_json::from_value::<RawMasking>(json!({"detector": ["email"]})).is_err());
    assert!(serde_json::from_value::<RawMasking>(json!({"fields": {"redacted": []}})).is_err());
    assert!(serde_json::from_value::<RawMasking>(json!({"custom": [{"name": "x", "pattern": "x", "label": "X"}]})).is_err());
}

#[test]
fn errors_name_their_field() {
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({"detectors": ["email", "emial"]}), "masking.detectors[1]", "unknown detector \"emial\""),
        (json!({"custom": [{"name": "emp", "pattern": "EMP-(\\d+"}]}), "masking.custom[0].pattern", "invalid regex"),
        (json!({"custom": [{"name": "emp", "pattern": "x*"}]}), "masking.custom[0].pattern", "empty string"),
        (json!({"custom": [{"name": "emp", "pattern": "EMP-\\d+", "validator": "crc"}]}), "masking.custom[0].validator", "unknown validator \"crc\""),
        (json!({"custom": [{"name": "Emp", "pattern": "x"}]}), "masking.custom[0].name", "must match"),
        (json!({"custom": [{"name": "email", "pattern": "x"}]}), "masking.custom[0].name", "built-in"),
        (json!({"custom": [{"name": "token_ids", "pattern": "x"}]}), "masking.custom[0].name", "count the filter keeps"),
        (json!({"custom": [{"name": "field", "pattern": "x"}]}), "masking.custom[0].name", "count the filter keeps"),
        (json!({"custom": [{"name": "emp", "pattern": "x", "redaction": "blur"}]}), "masking.custom[0].redaction", "unknown redaction"),
        (json!({"redaction": "hash"}), "masking.hash_key", "required"),
        (json!({"logprobs": "drop"}), "masking.logprobs", "must be \"withhold\" or \"mask\""),
        (json!({"per_detector": {"email": "hash"}}), "masking.hash_key", "required"),
        (json!({"custom": [{"name": "emp", "pattern": "x", "redaction": "hash"}]}), "masking.hash_key", "required"),
        (json!({"redaction": "hash", "hash_key": "short"}), "masking.hash_key", "at least 16"),
        (json!({"redaction": "mask"}), "masking.redaction", "unknown redaction \"mask\""),
        (json!({"per_detector": {"emails": "label"}}), "masking.per_detector.emails", "unknown detector"),
        (json!({"per_detector": {"email": "stars"}}), "masking.per_detector.email", "unknown redaction"),
        (json!({"allow": [""]}), "masking.allow[0]", "non-empty"),
        (json!({"fields": {"redact": ["$.a[x]"]}}), "masking.fields.redact[0]", "invalid field rule"),
        (json!({"fields": {"redact": ["customer.ssn"]}}), "masking.fields.redact[0]", "JSON path"),
        (json!({"fields": {"skip": ["$"]}}), "masking.fields.skip[0]", "whole document"),
        (json!({"fields": {"redact": ["ssn"], "skip": ["ssn"]}}), "masking.fields.skip[0]", "also in"),
        (json!({"us_ssn_forms": ["dashed", "undashed"]}), "masking.us_ssn_forms[1]", "unknown form \"undashed\""),
        (json!({"us_ssn_forms": []}), "masking.us_ssn_forms", "at least one form"),
        (json!({"detectors": ["email"], "us_ssn_forms": ["plain"]}), "masking.us_ssn_forms", "us_ssn is not among the detectors"),
    ];
    for (cfg, field, problem) in cases {
        let (f, p) = one_error(cfg.clone());
        assert_eq!(f, field, "{cfg}");
        assert!(p.contains(problem), "{cfg}: {p:?} lacks {problem:?}");
    }
}

#[test]
fn every_error_is_reported_and_prefix_is_used() {
    let raw: RawMasking = serde_json::from_value(json!({
        "detectors": ["nope"],
        "custom": [{"name": "a", "pattern": "("}, {"name": "b", "pattern": "b", "validator": "x"}],
        "redaction": "hash"
    }))
    .unwrap();
    let errs = Masker::compile(raw.clone(), "policy.masking").unwrap_err();
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        ["policy.masking.detectors[0]", "policy.masking.custom[0].pattern", "policy.masking.custom[1].validator", "policy.masking.hash_key"]
    );
    assert!(errs[1].to_string().starts_with("policy.masking.custom[0].pattern: invalid regex: "), "{}", errs[1]);
    let bare = Masker::compile(raw, "").unwrap_err();
    assert_eq!(bare[0].field, "detectors[0]");
}

#[test]
fn label_partial_hash() {
    let label = masker(json!({}));
    let mut c = Counts::new();
    assert_eq!(label.mask_text("x 123-45-6789 y", &mut c), "x [US_SSN] y");

    let partial = masker(json!({"redaction": "partial"}));
    let mut c = Counts::new();
    assert_eq!(partial.mask_text("4111-1111-1111-1111", &mut c), "****-****-****-1111");
    assert_eq!(partial.mask_text("(415) 555-0134", &mut c), "(***) ***-0134");
    assert_eq!(partial.mask_text("john.doe@example.com", &mut c), "****.***@******e.com");
    assert_eq!(partial.mask_text("AKIAIOSFODNN7EXAMPLE", &mut c), "****************MPLE");
    // fewer than 8 letters/digits: nothing kept
    assert_eq!(partial.mask_text("ab@cd.io", &mut c), "**@**.**");
    assert_eq!(c.get("payment_card"), Some(&1));

    let hash = masker(json!({"redaction": "hash", "hash_key": KEY}));
    let mut c = Counts::new();
    let a = hash.mask_text("john@example.com", &mut c);
    let b = hash.mask_text("reach john@example.com today", &mut c);
    let other = hash.mask_text("jane@example.com", &mut c);
    assert!(a.starts_with("[EMAIL:") && a.ends_with(']') && a.len() == 7 + 16 + 1, "{a}");
    assert!(a[7..23].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(b, format!("reach {a} today"), "equal values give equal tokens");
    assert_ne!(a, other, "different values give different tokens");
    // normalized: the same card in another format, the same address in another case
    assert_eq!(hash.mask_text("4111 1111 1111 1111", &mut c), hash.mask_text("4111-1111-1111-1111", &mut c));
    assert_eq!(hash.mask_text("John@Example.com", &mut c), a);
    // the key matters
    let other_key = masker(json!({"redaction": "hash", "hash_key": "another-long-hash-key"}));
    assert_ne!(other_key.mask_text("john@example.com", &mut c), a);
    // HMAC-SHA256(key, value), first 8 bytes in hex
    let mac = hmac_sha256::HMAC::mac(b"john@example.com", KEY.as_bytes());
    let hex: String = mac[..8].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(a, format!("[EMAIL:{hex}]"));
}

#[test]
fn per_detector_overrides() {
    let m = masker(json!({
        "redaction": "partial",
        "per_detector": {"email": "label", "emp": "hash"},
        "hash_key": KEY,
        "custom": [{"name": "emp", "pattern": "EMP-\\d{6}", "redaction": "label"}, {"name": "ticket", "pattern": "TCK-\\d{4}", "redaction": "label"}]
    }));
    let mut c = Counts::new();
    let out = m.mask_text("a@example.com 4111111111111111 EMP-123456 TCK-1234", &mut c);
    let parts: Vec<&str> = out.split(' ').collect();
    assert_eq!(parts[0], "[EMAIL]");
    assert_eq!(parts[1], "************1111");
    assert!(parts[2].starts_with("[EMP:"), "per_detector wins over the custom's own: {out}");
    assert_eq!(parts[3], "[TICKET]");
}

#[test]
fn allow_list() {
    let m = masker(json!({"allow": ["support@example.com", "4111111111111111"]}));
    let mut c = Counts::new();
    assert_eq!(
        m.mask_text("support@example.com, 4111111111111111, sales@example.com, 4111 1111 1111 1111", &mut c),
        "support@example.com, 4111111111111111, [EMAIL], [PAYMENT_CARD]"
    );
    assert_eq!(c.get("email"), Some(&1));
}

#[test]
fn custom_detectors_with_validators() {
    let m = masker(json!({"detectors": [], "custom": [
        {"name": "member_card", "pattern": "\\bM\\d{15}\\b", "validator": "luhn"},
        {"name": "account", "pattern": "\\bAC\\d{2}[A-Z0-9]{10}\\b", "validator": "mod97"},
        {"name": "employee", "pattern": "EMP-\\d{6}"}
    ]}));
    let mut c = Counts::new();
    // M + Luhn-valid 15 digits / invalid
    let out = m.mask_text("M411111111111111 M411111111111112", &mut c);
    assert_eq!(out, "M411111111111111 M411111111111112", "the M is not a digit, Luhn runs over the digits of the match");
    let out = m.mask_text("M378282246310005 M378282246310006", &mut c);
    assert_eq!(out, "[MEMBER_CARD] M378282246310006");
    // mod97 over the match as an IBAN-like string: compute a valid one
    let base = "AC00ABCDEF1234";
    let valid = (0..100)
        .map(|cd| format!("AC{cd:02}ABCDEF1234"))
        .find(|s| {
            let r: String = s[4..].chars().chain(s[..4].chars()).map(|c| c.to_digit(36).unwrap().to_string()).collect();
            r.bytes().fold(0u32, |acc, d| (acc * 10 + u32::from(d - b'0')) % 97) == 1
        })
        .unwrap();
    assert_ne!(valid, base);
    let out = m.mask_text(&format!("{valid} and {base}"), &mut c);
    assert_eq!(out, format!("[ACCOUNT] and {base}"));
    assert_eq!(m.mask_text("id EMP-004211.", &mut c), "id [EMPLOYEE].");
    assert_eq!(c.get("employee"), Some(&1));
    assert_eq!(c.get("account"), Some(&1));
    assert_eq!(c.get("member_card"), Some(&1));
}

#[test]
fn custom_and_builtin_overlap_resolves_to_the_longest() {
    let m = masker(json!({"custom": [{"name": "corp_mail", "pattern": "[a-z]+@corp\\.example\\.com"}]}));
    let mut c = Counts::new();
    // same span: the built-in comes first in detector order
    assert_eq!(m.mask_text("ann@corp.example.com", &mut c), "[EMAIL]");
    // a custom match that is longer wins
    let m = masker(json!({"custom": [{"name": "ticket", "pattern": "TICKET 4111 1111 1111 1111"}]}));
    assert_eq!(m.mask_text("TICKET 4111 1111 1111 1111", &mut c), "[TICKET]");
}

#[test]
fn masker_is_shareable() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Masker>();
    let m = masker(json!({}));
    let m2 = m.clone();
    assert_eq!(m2.mask_text("a@example.com", &mut Counts::new()), "[EMAIL]");
}
