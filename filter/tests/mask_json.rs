//! `mask`: JSON-aware masking — decoded detection, valid re-encoded output,
//! byte-identical pass-through, keys and numbers left alone, field rules by
//! name and path, invalid documents refused.

mod common;

use common::Rng;
use nhi_gate::mask::{Counts, Masker, RawMasking};
use serde_json::{json, Value};

fn masker(cfg: Value) -> Masker {
    let raw: RawMasking = serde_json::from_value(cfg).expect("raw masking");
    Masker::compile(raw, "masking").expect("compiles")
}

fn mask(m: &Masker, body: &str) -> (String, Counts) {
    let mut counts = Counts::new();
    let out = m.mask_json(body.as_bytes(), &mut counts).expect("valid JSON");
    let out = String::from_utf8(out).expect("UTF-8 output");
    serde_json::from_str::<Value>(&out).unwrap_or_else(|e| panic!("output is not JSON ({e}): {out}"));
    (out, counts)
}

#[test]
fn escaped_values_are_decoded_before_detection() {
    let m = masker(json!({}));
    let (out, counts) = mask(&m, r#"{"a":"a\u0040b.com","b":"mail: x\u002ey@example\u002Eorg\n","c":"\u0034111 1111 1111 1111"}"#);
    assert_eq!(out, r#"{"a":"[EMAIL]","b":"mail: [EMAIL]\n","c":"[PAYMENT_CARD]"}"#);
    assert_eq!(counts.get("email"), Some(&2));
    assert_eq!(counts.get("payment_card"), Some(&1));
}

#[test]
fn reencoded_strings_keep_other_escapes_valid() {
    let m = masker(json!({}));
    let body = r#"{"t":"He said \"mail me: john@example.com\"\tthen left\\ \u00e9 \ud83d\ude00 \u0001"}"#;
    let (out, _) = mask(&m, body);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["t"], "He said \"mail me: [EMAIL]\"\tthen left\\ é 😀 \u{1}");
}

#[test]
fn clean_documents_are_byte_identical() {
    let m = masker(json!({}));
    let bodies = [
        r#"{"id":"123e4567-e89b-12d3-a456-426614174000","ts":1700000000000,"created":"2024-01-15T10:30:00Z"}"#,
        "  {\n  \"a\" : [ 1 , 2.5e-3 , -0 , true , false , null ] ,\n  \"b\":\"\\u0041\\/\" }\n",
        r#"[]"#,
        r#""just a string""#,
        r#"42"#,
        r#"{"sha":"da39a3ee5e6b4b0d3255bfef95601890afd80709","v":"1.2.3.4","order":"ORD-2024-000123"}"#,
        r#"{"nested":{"deep":[[[{"x":"y"}]]]},"unicode":"日本語 ✓","esc":"tab\tnl\n"}"#,
    ];
    for b in bodies {
        let mut counts = Counts::new();
        let out = m.mask_json(b.as_bytes(), &mut counts).expect("valid");
        assert_eq!(out, b.as_bytes(), "{b}");
        assert!(counts.is_empty());
    }
}

#[test]
fn keys_and_numbers_are_not_masked() {
    let m = masker(json!({}));
    let body = r#"{"john@example.com":"x","4111111111111111":4111111111111111,"n":[4111111111111111,1234567890]}"#;
    let (out, counts) = mask(&m, body);
    assert_eq!(out, body);
    assert!(counts.is_empty());
    // but string values inside are
    let (out, _) = mask(&m, r#"{"john@example.com":"john@example.com"}"#);
    assert_eq!(out, r#"{"john@example.com":"[EMAIL]"}"#);
}

#[test]
fn only_changed_strings_are_rewritten() {
    let m = masker(json!({}));
    let body = "{ \"a\" : \"\\u0041 b\",\n \"pii\" : \"call 415-555-0134\" , \"z\":  [1, \"\\/\"] }";
    let (out, _) = mask(&m, body);
    assert_eq!(out, "{ \"a\" : \"\\u0041 b\",\n \"pii\" : \"call [PHONE]\" , \"z\":  [1, \"\\/\"] }");
}

#[test]
fn invalid_json_is_an_error() {
    let m = masker(json!({}));
    let bad: [&[u8]; 24] = [
        b"",
        b"   ",
        b"{",
        b"{\"a\":}",
        b"{\"a\" 1}",
        b"{\"a\":1,}",
        b"[1,]",
        b"[1 2]",
        b"{a:1}",
        b"'x'",
        b"\"unterminated",
        b"\"bad \\x escape\"",
        b"\"\\u12\"",
        b"\"lone \\ud800 surrogate\"",
        b"\"lone \\udc00 low\"",
        b"\"raw \x01 control\"",
        b"01",
        b"1.",
        b"-",
        b"1e",
        b"tru",
        b"{} {}",
        b"\xff\xfe",
        b"\"\xc3\x28\"",
    ];
    for b in bad {
        let mut counts = Counts::new();
        assert!(m.mask_json(b, &mut counts).is_err(), "accepted {:?}", String::from_utf8_lossy(b));
        assert!(serde_json::from_slice::<Value>(b).is_err(), "serde_json accepts {:?}", String::from_utf8_lossy(b));
    }
    let e = m.mask_json(b"{\"a\":1,}", &mut Counts::new()).unwrap_err();
    assert_eq!(e.offset, 7);
    assert!(e.to_string().contains("byte 7"), "{e}");
}

#[test]
fn deep_nesting_does_not_overflow() {
    let m = masker(json!({}));
    let depth = 100_000;
    let body = format!("{}\"john@example.com\"{}", "[".repeat(depth), "]".repeat(depth));
    let out = m.mask_json(body.as_bytes(), &mut Counts::new()).expect("valid");
    assert_eq!(out, format!("{}\"[EMAIL]\"{}", "[".repeat(depth), "]".repeat(depth)).into_bytes());
    assert!(m.mask_json("[".repeat(depth).as_bytes(), &mut Counts::new()).is_err());
}

#[test]
fn field_rules_by_name() {
    let m = masker(json!({"fields": {"redact": ["ssn", "dob"], "skip": ["id"]}}));
    let body = r#"{"id":"4111111111111111","user":{"SSN":123456789,"ssn_note":"ssn 123-45-6789","dob":{"y":1990,"m":1},"name":"Jo"},"list":[{"ssn":"x"},{"ssn":null},{"id":{"mail":"a@example.com"}}]}"#;
    let (out, counts) = mask(&m, body);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["id"], "4111111111111111", "skip: never touched");
    assert_eq!(v["user"]["SSN"], "[SSN]", "names are case-insensitive; numbers are redacted too");
    assert_eq!(v["user"]["ssn_note"], "ssn [US_SSN]");
    assert_eq!(v["user"]["dob"], "[DOB]", "whole object replaced");
    assert_eq!(v["user"]["name"], "Jo");
    assert_eq!(v["list"][0]["ssn"], "[SSN]");
    assert_eq!(v["list"][1]["ssn"], Value::Null, "null stays null");
    assert_eq!(v["list"][2]["id"]["mail"], "a@example.com", "skip covers the whole subtree");
    assert_eq!(counts.get("field"), Some(&3));
    assert_eq!(counts.get("us_ssn"), Some(&1));
}

#[test]
fn field_rules_by_path() {
    let m = masker(json!({"fields": {
        "redact": ["$.customer.ssn", "$.result[*].secret", "$['odd.key']", "$.items[1]", "$.meta.*"],
        "skip": ["$.result[*].id"]
    }}));
    let body = r#"{"customer":{"ssn":"078-05-1121","other":{"ssn":"keep me"}},"ssn":"top",
        "result":[{"id":"a@example.com","secret":42,"mail":"b@example.com"},{"id":7,"secret":true}],
        "odd.key":"x","items":["a","b","c"],"meta":{"p":1,"q":[1]}}"#;
    let (out, counts) = mask(&m, body);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["customer"]["ssn"], "[SSN]");
    assert_eq!(v["customer"]["other"]["ssn"], "keep me", "paths are anchored at the root");
    assert_eq!(v["ssn"], "top");
    assert_eq!(v["result"][0]["id"], "a@example.com");
    assert_eq!(v["result"][0]["secret"], "[SECRET]");
    assert_eq!(v["result"][0]["mail"], "[EMAIL]");
    assert_eq!(v["result"][1]["id"], 7);
    assert_eq!(v["result"][1]["secret"], "[SECRET]");
    assert_eq!(v["odd.key"], "[ODD.KEY]");
    assert_eq!(v["items"], json!(["a", "[REDACTED]", "c"]));
    assert_eq!(v["meta"], json!({"p": "[P]", "q": "[Q]"}));
    assert_eq!(counts.get("field"), Some(&7));
}

#[test]
fn escaped_keys_match_field_rules() {
    let m = masker(json!({"fields": {"redact": ["$.customer.ssn"]}}));
    let (out, _) = mask(&m, r#"{"cust\u006fmer":{"\u0073sn":"x"}}"#);
    assert_eq!(out, r#"{"cust\u006fmer":{"\u0073sn":"[SSN]"}}"#);
}

#[test]
fn redaction_modes_in_json() {
    let m = masker(json!({"redaction": "partial", "per_detector": {"email": "hash"}, "hash_key": "0123456789abcdef0123"}));
    let (out, _) = mask(&m, r#"{"card":"4111 1111 1111 1111","mail":"a@example.com","ssn":"123-45-6789"}"#);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["card"], "**** **** **** 1111");
    assert_eq!(v["ssn"], "***-**-6789");
    let mail = v["mail"].as_str().unwrap();
    assert!(mail.starts_with("[EMAIL:") && mail.len() == "[EMAIL:]".len() + 16, "{mail}");
}

#[test]
fn allow_list_applies_to_decoded_values() {
    let m = masker(json!({"allow": ["support@example.com"]}));
    let (out, _) = mask(&m, r#"{"a":"support\u0040example.com","b":"other@example.com"}"#);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["b"], "[EMAIL]");
    // the allowed string is not rewritten at all
    assert!(out.starts_with(r#"{"a":"support\u0040example.com""#), "{out}");
}

/// Masks every string value of a parsed document with `mask_text` (keys
/// untouched): what `mask_json` must give, computed independently.
fn oracle(m: &Masker, v: &Value) -> Value {
    match v {
        Value::String(t) => Value::String(m.mask_text(t, &mut Counts::new())),
        Value::Array(a) => Value::Array(a.iter().map(|x| oracle(m, x)).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (k.clone(), oracle(m, x))).collect()),
        other => other.clone(),
    }
}

/// A string body (JSON-escaped) of random pieces: PII values, words,
/// digits, ids, escapes, non-ASCII, padding that moves values across the
/// 16-byte blocks of the classifier.
fn random_string(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "jane.roe@example.org", "4111 1111 1111 1111", "5555-5555-5555-4444", "123-45-6789", "+1 415-555-0134",
        "(415) 555-0134", "DE89 3704 0044 0532 0130 00", "AKIAIOSFODNN7EXAMPLE", "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
        "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z_AbC-dEf", "word", "v1.2.3", "2024-01-15", "ORD-2024-000123", "12.5%",
        "1700000000000", "pod-7d4b9c8f5d-x2v9q", "a_b", "x", "  ", "\\n", "\\t", "\\u0040", "\\\"", "\\\\", "é", "日本",
        "jane\\u002eroe@example.org", "john@example.com\\n", "0", "9", "-", "_", "@", ".", "I", "J", "eyJ",
    ];
    let mut s = String::new();
    for _ in 0..rng.below(8) {
        s.push_str(&"p".repeat(rng.below(18)));
        s.push_str(PIECES[rng.below(PIECES.len())]);
        if rng.below(2) == 0 {
            s.push(' ');
        }
    }
    s
}

fn random_value(rng: &mut Rng, depth: usize) -> String {
    match if depth > 3 { rng.below(3) } else { rng.below(6) } {
        0 => format!("\"{}\"", random_string(rng)),
        1 => ["0", "-12.5e3", "1700000000000", "true", "null"][rng.below(5)].to_string(),
        2 => format!("\"{}\"", random_string(rng)),
        3 => {
            let items: Vec<String> = (0..rng.below(4)).map(|_| random_value(rng, depth + 1)).collect();
            format!("[{}]", items.join(","))
        }
        _ => {
            let items: Vec<String> =
                (0..rng.below(4)).map(|i| format!("\"{}{i}\": {}", random_string(rng), random_value(rng, depth + 1))).collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

#[test]
fn one_pass_and_two_pass_agree_with_masking_each_string() {
    let m = masker(json!({}));
    let two = m.clone().with_one_pass(false);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut redacted = 0u64;
    for case in 0..3000 {
        let doc = random_value(&mut rng, 0);
        let parsed: Value = serde_json::from_str(&doc).unwrap_or_else(|e| panic!("generator made bad JSON ({e}): {doc}"));
        let (mut c1, mut c2) = (Counts::new(), Counts::new());
        let a = m.mask_json(doc.as_bytes(), &mut c1).expect("valid");
        let b = two.mask_json(doc.as_bytes(), &mut c2).expect("valid");
        assert_eq!(a, b, "case {case}: {doc}");
        assert_eq!(c1, c2, "case {case}: {doc}");
        let out: Value = serde_json::from_slice(&a).unwrap_or_else(|e| panic!("case {case}: output not JSON ({e})"));
        assert_eq!(out, oracle(&m, &parsed), "case {case}: {doc}");
        redacted += c1.values().sum::<u64>();
    }
    assert!(redacted > 1000, "the generator must produce PII ({redacted} redactions)");
}

/// Strings of values glued to each other, to digit groups and to the
/// punctuation after which anchors inside a found value are skipped: the
/// output must be that of running the detectors at every anchor (and that
/// of masking each string as text), so the skip never leaves a byte of an
/// overlapping value behind.
#[test]
fn anchors_inside_a_found_value_are_skipped_without_changing_the_output() {
    const PIECES: &[&str] = &[
        "+1 ", "+44 ", "+", "(", ")", "4111 1111 1111 1111", "5555 5555 5555 4444", "4111", "1111", "4444", "5555",
        "415-555-0134", "415 555 0134", "555-0134", "0134", "020 7946 0958", "123-45-6789", "45-6789", "DE89 3704 0044 0532 0130 00",
        "DE89", "3704", "jane@example.org", "@example.org", "x@1.2.3.4.com", "192.168.0.1", "10.0.0.1", "::1", "fe80::1", ":",
        "AKIAIOSFODNN7EXAMPLE", "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "sk-ant-api03-Ab3dEf6hIj9kLm2nOp5qRs8tUv1w",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c", " ", " ", " ", "-", ".", ",", ";",
        "!", "?", "]", "}", "<", ">", "'", "\\\"", "\\n", "\\t", " a", " Z", " 7", "a", "Z", "0", "9", "\\u00a0", "é",
        "\u{a0}", "\u{202f}", "\u{2011}", "\u{2013}", "+1 (415) 555-0134", "(020) 7946 0958", "1-800-555-0199", "+33 1 23 45 67 89", "+44(0)20 7946 0958", "(0)", "jane@acme.com.png", ".png", "git@x.com:o/r.git", "__", "030/1234567", "/", "(11) 91234-5678", "8 (495) 123-45-67", "8 ", "(+44) 20 7946 0958", "(+", "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe", "AIza", "0044 20 7946 0958", "00 ", "0044 0532",
        "GB82WEST12345698765432", "GB82 WEST 1234 5698 7654 32", " WEST", "AKIAIOSFODNN7EXAGB82", "IT60 X054 2811 1010 0000 0123 456", "4111-1111-1111-1111", "378282246310005", "x", "A", "_", "J", "I", "sk-proj-", "xoxb-", "日本",
    ];
    let all = masker(json!({"detectors": ["email", "payment_card", "us_ssn", "phone", "iban", "ipv4", "ipv6",
        "aws_access_key", "google_api_key", "github_token", "openai_key", "anthropic_key", "slack_token", "jwt", "private_key"],
        "per_detector": {"phone": "hash", "payment_card": "partial"}, "hash_key": "0123456789abcdef0123"}));
    let mut rng = Rng(0x0a11_a9c4_0e5e_ed01);
    let mut skipped_any = false;
    for m in [masker(json!({})), all] {
        let every = m.clone().with_every_anchor();
        // MASK_DIFF_CASES=300000 for a longer run
        let cases = std::env::var("MASK_DIFF_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(4000);
        for case in 0..cases {
            let mut s = String::new();
            for _ in 0..1 + rng.below(7) {
                s.push_str(PIECES[rng.below(PIECES.len())]);
            }
            let doc = format!("[\"{s}\"]");
            let parsed: Value = serde_json::from_str(&doc).unwrap_or_else(|e| panic!("generator made bad JSON ({e}): {doc}"));
            let (mut c1, mut c2) = (Counts::new(), Counts::new());
            let a = m.mask_json(doc.as_bytes(), &mut c1).expect("valid");
            let b = every.mask_json(doc.as_bytes(), &mut c2).expect("valid");
            let (a, b) = (String::from_utf8(a).expect("UTF-8"), String::from_utf8(b).expect("UTF-8"));
            assert_eq!(a, b, "case {case}: {doc}");
            assert_eq!(c1, c2, "case {case}: {doc}");
            let out: Value = serde_json::from_str(&a).unwrap_or_else(|e| panic!("case {case}: output not JSON ({e})"));
            assert_eq!(out, oracle(&m, &parsed), "case {case}: {doc}");
            skipped_any |= c1.values().sum::<u64>() > 1;
        }
    }
    assert!(skipped_any, "the generator must put several values in one string");
    // an IBAN that starts inside a key found before it and runs on past a
    // space (found by this generator): nothing of it may survive
    let doc = r#"["sk-ant-api03-Ab3dEf6hIj9kLm2nOp5qRs8tUv1w_-GB82 WEST 1234 5698 7654 32 "]"#;
    let m = masker(json!({}));
    let (out, _) = mask(&m, doc);
    assert_eq!(out, mask(&m.clone().with_every_anchor(), doc).0);
    assert!(!out.contains("WEST") && !out.contains("7654"), "{out}");
}

/// As above, with random bytes of the detectors' alphabets and punctuation
/// between the values. (When a space before a letter still ended a value
/// for the skip, each generator found an IBAN running on from inside a key
/// within 1–2 million cases: `MASK_DIFF_CASES=3000000` for long runs.)
#[test]
fn anchor_skip_matches_every_anchor_on_random_text() {
    const ALPHA: &[u8] = b"AaBbGgIiJjKkSsEeYyXxOoPpZz0123456789-_.@+(): ,;'!?]}<>";
    const VALS: &[&str] = &["4111 1111 1111 1111", "+1 415-555-0134", "415-555-0134", "123-45-6789", "GB82 WEST 1234 5698 7654 32", "DE89 3704 0044 0532 0130 00",
        "jane@example.org", "AKIAIOSFODNN7EXAMPLE", "sk-ant-api03-Ab3dEf6hIj9kLm2nOp5qRs8tUv1w", "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c", "xoxb-2112345678901-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "192.168.0.1", "fe80::1", "IT60 X054 2811 1010 0000 0123 456", "+44 20 7946 0958", "(415) 555-0134", "5555 5555 5555 4444",
        "+44(0)20 7946 0958", "jane@acme.com.png", "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe", "123 45 6789", "123456789", "030/1234567", "(11) 91234-5678", "8 (495) 123-45-67", "(+44) 20 7946 0958", "0044 20 7946 0958", "00 44 20 7946 0958"];
    let all = masker(json!({"detectors": ["email", "payment_card", "us_ssn", "phone", "iban", "ipv4", "ipv6",
        "aws_access_key", "google_api_key", "github_token", "openai_key", "anthropic_key", "slack_token", "jwt", "private_key"],
        "us_ssn_forms": ["dashed", "spaced", "plain"]}));
    let every = all.clone().with_every_anchor();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let cases = std::env::var("MASK_DIFF_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(4000);
    for case in 0..cases {
        let mut s = String::new();
        for _ in 0..1 + rng.below(6) {
            if rng.below(2) == 0 {
                s.push_str(VALS[rng.below(VALS.len())]);
            } else {
                for _ in 0..rng.below(5) {
                    s.push(char::from(ALPHA[rng.below(ALPHA.len())]));
                }
            }
        }
        let doc = serde_json::to_string(&json!([s])).unwrap();
        let (mut c1, mut c2) = (Counts::new(), Counts::new());
        let a = all.mask_json(doc.as_bytes(), &mut c1).expect("valid");
        let b = every.mask_json(doc.as_bytes(), &mut c2).expect("valid");
        assert_eq!(String::from_utf8_lossy(&a), String::from_utf8_lossy(&b), "case {case}: {doc}");
        assert_eq!(c1, c2, "case {case}: {doc}");
    }
}

/// A chat completion whose content and log-probabilities carry an email cut
/// across tokens, as OpenAI returns it with `logprobs: true`.
const CHAT_WITH_LOGPROBS: &str = r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,
 "message":{"role":"assistant","content":"Mail jane.doe@example.com"},
 "logprobs":{"content":[{"token":"Mail","logprob":-0.1,"bytes":[77,97,105,108],"top_logprobs":[]},
  {"token":" jane","logprob":-0.2,"bytes":[32,106,97,110,101],"top_logprobs":[{"token":" john","logprob":-3.0,"bytes":[32,106,111,104,110]}]},
  {"token":".doe","logprob":-0.1,"bytes":[46,100,111,101],"top_logprobs":[]},
  {"token":"@example.com","logprob":-0.1,"bytes":[64],"top_logprobs":[]}],"refusal":null},
 "finish_reason":"stop"}]}"#;

#[test]
fn logprobs_are_withheld_from_responses_by_default() {
    let m = masker(json!({}));
    let (out, counts) = mask(&m, CHAT_WITH_LOGPROBS);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Mail [EMAIL]");
    assert_eq!(v["choices"][0]["logprobs"], Value::Null, "{out}");
    assert!(!out.contains("jane") && !out.contains(".doe"), "{out}");
    assert_eq!(counts.get("logprobs"), Some(&1));
    assert_eq!(counts.get("email"), Some(&1));
    // Responses API events carry `logprobs` as an array: it stays an array
    let (out, counts) = mask(&m, r#"{"type":"response.output_text.delta","delta":"jane","logprobs":[{"token":"jane","logprob":-0.1,"top_logprobs":[]}]}"#);
    assert_eq!(out, r#"{"type":"response.output_text.delta","delta":"jane","logprobs":[]}"#);
    assert_eq!(counts.get("logprobs"), Some(&1));
    // vLLM's `prompt_logprobs` too
    let (out, _) = mask(&m, r#"{"prompt_logprobs":[null,{"1":{"logprob":-1.0,"decoded_token":"jane"}}],"choices":[]}"#);
    assert_eq!(out, r#"{"prompt_logprobs":[],"choices":[]}"#);
    // null and empty values are left as they are (byte for byte)
    for clean in [r#"{"choices":[{"logprobs":null,"text":"hi"}]}"#, r#"{"logprobs":[ ]}"#, r#"{"logprobs": null}"#] {
        let mut counts = Counts::new();
        assert_eq!(m.mask_json_changes(clean.as_bytes(), &mut counts).unwrap(), None, "{clean}");
        assert!(counts.is_empty());
    }
}

/// Ollama `/api/generate` answers end with `context`: the token ids of the
/// prompt and the answer as generated, from which a job could decode what
/// masking took out of `response`. Withheld as `[]` in responses; other
/// `context` members (nested, not integers) are left alone, and so are
/// requests (a job sends `context` back to continue).
#[test]
fn ollama_context_token_ids_are_withheld_from_responses() {
    let m = masker(json!({}));
    let body = r#"{"model":"m","response":"Mail jane.doe@example.com","done":true,"context":[128006, 882, 128007,
 -1],"eval_count":9}"#;
    let (out, counts) = mask(&m, body);
    assert_eq!(out, r#"{"model":"m","response":"Mail [EMAIL]","done":true,"context":[],"eval_count":9}"#);
    assert_eq!(counts.get("context"), Some(&1));
    // numbers of any form are withheld too, and an escaped `done` counts
    for ids in ["[1.0, 2, 3]", "[1e3,2]", "[1,2,null]"] {
        let (out, _) = mask(&m, &format!(r#"{{"done":true,"context":{ids}}}"#));
        assert_eq!(out, r#"{"done":true,"context":[]}"#);
    }
    let (out, _) = mask(&m, r#"{"d\u006fne":false,"context":[1,2]}"#);
    assert_eq!(out, r#"{"d\u006fne":false,"context":[]}"#);
    for clean in [
        r#"{"done":true,"context":[]}"#,
        r#"{"done":true,"context":"see 42"}"#,
        r#"{"done":true,"context":["chunk 1", "chunk 2"]}"#,
        r#"{"done":true,"context":[1,[2]]}"#,
        r#"{"done":true,"answer":{"context":[1,2,3]}}"#,
        r#"[{"done":true,"context":[1,2,3]}]"#,
        // not an Ollama answer: no `done` member before it
        r#"{"object":"list","context":[101,202]}"#,
        r#"{"status":"done","context":[101,202]}"#,
        r#"{"a":{"done":true},"context":[101,202]}"#,
        r#"{"context":[101,202],"done":true}"#,
    ] {
        let mut counts = Counts::new();
        assert_eq!(m.mask_json_changes(clean.as_bytes(), &mut counts).unwrap(), None, "{clean}");
        assert!(counts.is_empty());
    }
    let req = r#"{"model":"m","prompt":"and then?","context":[1,2,3]}"#;
    assert_eq!(m.mask_request_json(req.as_bytes(), &mut Counts::new()).unwrap(), req.as_bytes());
}

/// Ollama writes tool-call arguments as a JSON object: its numbers are
/// masked like the numbers of an Anthropic `tool_use` input.
#[test]
fn ollama_tool_call_arguments_object_numbers_are_masked() {
    let m = masker(json!({}));
    let body = r#"{"message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"pay","arguments":{"card":4111111111111111,"n":3,"to":"jane.doe@example.com"}}}]},"done":false}"#;
    let (out, counts) = mask(&m, body);
    let v: Value = serde_json::from_str(&out).unwrap();
    let args = &v["message"]["tool_calls"][0]["function"]["arguments"];
    assert_eq!(args, &json!({"card": "[PAYMENT_CARD]", "n": 3, "to": "[EMAIL]"}), "{out}");
    assert_eq!(counts.get("payment_card"), Some(&1));
    // numbers outside arguments are left alone
    let (out, _) = mask(&m, r#"{"id":4111111111111111,"arguments":"x"}"#);
    assert_eq!(out, r#"{"id":4111111111111111,"arguments":"x"}"#);
}

#[test]
fn logprobs_mask_keeps_tokens_masked_one_by_one() {
    let m = masker(json!({"logprobs": "mask"}));
    let (out, counts) = mask(&m, CHAT_WITH_LOGPROBS);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Mail [EMAIL]");
    // tokens are kept: the email cut across them is not found (the risk `mask` accepts)
    assert_eq!(v["choices"][0]["logprobs"]["content"][2]["token"], ".doe");
    assert_eq!(counts.get("logprobs"), None);
}

#[test]
fn request_json_keeps_logprobs() {
    let m = masker(json!({}));
    let body = r#"{"model":"m","logprobs":true,"top_logprobs":2,"messages":[{"role":"user","content":"mail jane.doe@example.com"}]}"#;
    let out = String::from_utf8(m.mask_request_json(body.as_bytes(), &mut Counts::new()).unwrap()).unwrap();
    assert_eq!(out, body.replace("jane.doe@example.com", "[EMAIL]"));
    // the same document as a response has its `logprobs` member withheld
    let (out, _) = mask(&m, body);
    assert!(out.contains(r#""logprobs":null"#), "{out}");
}

/// Tool-call arguments are a JSON document inside a string, masked as JSON:
/// decoded values (`\u0040`), field rules, the result still JSON.
#[test]
fn tool_call_arguments_are_masked_as_json_documents() {
    let m = masker(json!({"fields": {"redact": ["customer_id"]}}));
    let args = json!({"body": "Hi,\n4111 1111 1111 1111\tjane\u{40}example.com", "customer_id": 77, "n": 2}).to_string();
    let doc = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": null,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "send", "arguments": args}}]}}]}).to_string();
    // as text, the field rule could not reach `customer_id`
    assert!(m.mask_text(&args, &mut Counts::new()).contains("77"));
    let (out, counts) = mask(&m, &doc);
    let v: Value = serde_json::from_str(&out).unwrap();
    let got: Value = serde_json::from_str(v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(got, json!({"body": "Hi,\n[PAYMENT_CARD]\t[EMAIL]", "customer_id": "[CUSTOMER_ID]", "n": 2}));
    assert_eq!((counts.get("payment_card"), counts.get("email"), counts.get("field")), (Some(&1), Some(&1), Some(&1)));
    // the Responses API's function_call item, with an escaped key spelling
    let item = format!(r#"{{"type":"function_call","call_id":"c","argum\u0065nts":{}}}"#, serde_json::to_string(&args).unwrap());
    let (out, _) = mask(&m, &item);
    assert!(!out.contains("4111") && out.contains("[PAYMENT_CARD]"), "{out}");
    // clean JSON arguments are left byte for byte
    let clean = json!({"arguments": "{\"q\": \"weather in Paris\", \"days\": 3}"}).to_string();
    assert_eq!(m.mask_json_changes(clean.as_bytes(), &mut Counts::new()).unwrap(), None);
    // arguments that are not JSON are masked as text
    let (out, counts) = mask(&m, r#"{"arguments":"to: jane@example.com {"}"#);
    assert_eq!(out, r#"{"arguments":"to: [EMAIL] {"}"#);
    assert_eq!(counts.get("email"), Some(&1));
}

/// `requests: chat_messages`: the prompt of chat completions, legacy
/// completions and the Responses API is masked; other members are not.
#[test]
fn prompts_of_every_openai_request_shape_are_masked() {
    use nhi_gate::body::mask_prompt;
    let m = masker(json!({}));
    let run = |v: Value| {
        let mut counts = Counts::new();
        let out: Value = serde_json::from_slice(&mask_prompt(&m, v.to_string().as_bytes(), &mut counts).expect("JSON")).unwrap();
        (out, counts.values().sum::<u64>())
    };
    let e = "jane.doe@example.com";
    let args = json!({"to": e, "note": "x\n4111 1111 1111 1111"}).to_string();
    let (out, n) = run(json!({"model": "m", "logprobs": true, "user": e, "messages": [
        {"role": "system", "content": format!("mail {e}")},
        {"role": "user", "content": [{"type": "text", "text": format!("me: {e}")}, {"type": "image_url", "image_url": {"url": "https://x/a.png"}}]},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": args}}]},
        {"role": "tool", "tool_call_id": "c", "content": format!("sent to {e}")}]}));
    assert_eq!(out["messages"][0]["content"], "mail [EMAIL]");
    assert_eq!(out["messages"][1]["content"][0]["text"], "me: [EMAIL]");
    assert_eq!(out["messages"][1]["content"][1]["image_url"]["url"], "https://x/a.png");
    let a: Value = serde_json::from_str(out["messages"][2]["tool_calls"][0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(a, json!({"to": "[EMAIL]", "note": "x\n[PAYMENT_CARD]"}));
    assert_eq!(out["messages"][3]["content"], "sent to [EMAIL]");
    assert_eq!(out["logprobs"], json!(true), "other members are left alone");
    assert_eq!(out["user"], "[EMAIL]", "the end-user id is often an email");
    assert_eq!(n, 6);
    // legacy completions
    let (out, _) = run(json!({"prompt": format!("to {e}")}));
    assert_eq!(out["prompt"], "to [EMAIL]");
    let (out, _) = run(json!({"prompt": [format!("to {e}"), "plain"]}));
    assert_eq!(out["prompt"], json!(["to [EMAIL]", "plain"]));
    // Responses API
    let (out, _) = run(json!({"instructions": format!("cc {e}"), "input": format!("hi {e}")}));
    assert_eq!((out["instructions"].as_str(), out["input"].as_str()), (Some("cc [EMAIL]"), Some("hi [EMAIL]")));
    let (out, n) = run(json!({"input": [
        {"role": "user", "content": [{"type": "input_text", "text": format!("hi {e}")}]},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": args},
        {"type": "function_call_output", "call_id": "c", "output": format!("ok {e}")}]}));
    assert_eq!(out["input"][0]["content"][0]["text"], "hi [EMAIL]");
    assert!(out["input"][1]["arguments"].as_str().unwrap().contains("[PAYMENT_CARD]"));
    assert_eq!(out["input"][2]["output"], "ok [EMAIL]");
    assert_eq!(n, 4);
    // not a JSON object: an error (the filter answers 400)
    for bad in ["[1]", "{", "\"x\""] {
        assert!(mask_prompt(&m, bad.as_bytes(), &mut Counts::new()).is_err(), "{bad}");
    }
}

/// `requests: chat_messages` on an Anthropic Messages API request: the
/// system prompt, text blocks, tool results and tool inputs are masked;
/// thinking blocks (signed) and other members are not.
#[test]
fn prompts_of_anthropic_messages_requests_are_masked() {
    use nhi_gate::body::mask_prompt;
    let m = masker(json!({}));
    let e = "jane.doe@example.com";
    let body = json!({"model": "claude-x", "max_tokens": 100,
        "system": [{"type": "text", "text": format!("support for {e}"), "cache_control": {"type": "ephemeral"}}],
        "metadata": {"user_id": e},
        "messages": [
            {"role": "user", "content": format!("mail {e}")},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "the user is jane", "signature": "sig"},
                {"type": "text", "text": "sending"},
                {"type": "tool_use", "id": "toolu_1", "name": "send", "input": {"to": e, "card": 4111111111111111_u64, "n": 3}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": format!("sent to {e}")},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": format!("cc {e}")}]},
                {"type": "text", "text": format!("and {e}")}]}]});
    let mut counts = Counts::new();
    let out: Value = serde_json::from_slice(&mask_prompt(&m, body.to_string().as_bytes(), &mut counts).unwrap()).unwrap();
    assert_eq!(out["system"][0]["text"], "support for [EMAIL]");
    assert_eq!(out["system"][0]["cache_control"], json!({"type": "ephemeral"}));
    assert_eq!(out["metadata"]["user_id"], "[EMAIL]");
    assert_eq!(out["messages"][0]["content"], "mail [EMAIL]");
    assert_eq!(out["messages"][1]["content"][0], body["messages"][1]["content"][0], "thinking is signed: left alone");
    assert_eq!(out["messages"][1]["content"][2]["input"], json!({"to": "[EMAIL]", "card": "[PAYMENT_CARD]", "n": 3}));
    assert_eq!(out["messages"][2]["content"][0]["content"], "sent to [EMAIL]");
    assert_eq!(out["messages"][2]["content"][1]["content"][0]["text"], "cc [EMAIL]");
    assert_eq!(out["messages"][2]["content"][2]["text"], "and [EMAIL]");
    assert_eq!(counts.get("email"), Some(&7));
    assert_eq!(counts.get("payment_card"), Some(&1));
    // a string system prompt
    let out: Value = serde_json::from_slice(&mask_prompt(&m, json!({"system": format!("for {e}")}).to_string().as_bytes(), &mut Counts::new()).unwrap()).unwrap();
    assert_eq!(out["system"], "for [EMAIL]");
}

/// Arguments are a model's JSON: a card may be a JSON number there, so
/// numbers inside arguments are masked (the value becomes a string label);
/// numbers elsewhere in a body are left alone.
#[test]
fn numbers_inside_tool_call_arguments_are_masked() {
    let m = masker(json!({}));
    for (args, want) in [
        (r#"{"card_number":4111111111111111,"amount":12}"#, json!({"card_number": "[PAYMENT_CARD]", "amount": 12})),
        ("4111111111111111", json!("[PAYMENT_CARD]")),
        (r#"[5555555555554444, 3.5, 1700000000000]"#, json!(["[PAYMENT_CARD]", 3.5, 1700000000000u64])),
        // the same integer written with a fraction or an exponent
        (r#"[4111111111111111.0, 4.111111111111111e15, 4111111111111111E+0, 41111111111111110e-1, 1.5e3]"#,
         json!(["[PAYMENT_CARD]", "[PAYMENT_CARD]", "[PAYMENT_CARD]", "[PAYMENT_CARD]", 1.5e3])),

    ] {
        let body = json!({"n": 4111111111111111u64, "choices": [{"message": {"tool_calls": [{"function": {"name": "f", "arguments": args}}]}}]});
        let (out, _) = mask(&m, &body.to_string());
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["n"], json!(4111111111111111u64), "numbers outside arguments are left alone");
        let got: Value = serde_json::from_str(v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(got, want, "{args}");
    }
}

/// An Anthropic Messages API response carries a tool call's input as a
/// JSON object in the document (`content[k].input`): numbers inside it are
/// masked like numbers in OpenAI `arguments`; numbers elsewhere (usage,
/// ids, an `input` that is not an object) are left alone.
#[test]
fn numbers_inside_anthropic_tool_use_input_are_masked() {
    let m = masker(json!({}));
    let body = json!({"id": "msg_1", "type": "message", "role": "assistant", "n": 4111111111111111u64,
        "content": [
            {"type": "text", "text": "charging"},
            {"type": "tool_use", "id": "toolu_1", "name": "charge",
             "input": {"card": 4111111111111111u64, "amount": 25, "nested": {"cards": [5555555555554444u64, 7], "input": {}}, "phone": "+1 415-555-0134"}},
            {"type": "tool_use", "id": "toolu_2", "name": "noop", "input": {}}],
        "after": 4111111111111111u64,
        "input": [4111111111111111u64],
        "usage": {"input_tokens": 4111111111111111u64, "output_tokens": 34}});
    let (out, counts) = mask(&m, &body.to_string());
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["content"][1]["input"],
               json!({"card": "[PAYMENT_CARD]", "amount": 25, "nested": {"cards": ["[PAYMENT_CARD]", 7], "input": {}}, "phone": "[PHONE]"}));
    assert_eq!(v["content"][2]["input"], json!({}));
    for k in ["n", "after"] {
        assert_eq!(v[k], json!(4111111111111111u64), "{k}: numbers outside tool input are left alone");
    }
    assert_eq!(v["input"], json!([4111111111111111u64]), "an `input` array is not tool input");
    assert_eq!(v["usage"]["input_tokens"], json!(4111111111111111u64));
    assert_eq!(counts.get("payment_card"), Some(&2));
    // the key written with an escape is the same key
    let esc = r#"{"content":[{"type":"tool_use","input":{"c":4111111111111111}}],"m":4111111111111111}"#;
    let (out, _) = mask(&m, esc);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!({"content": [{"type": "tool_use", "input": {"c": "[PAYMENT_CARD]"}}], "m": 4111111111111111u64}));
}

/// Tool input in the other providers' shapes is masked like Anthropic
/// `input`, numbers and keys too: Gemini `functionCall.args` (responses and
/// requests), Cohere v1 `tool_calls[].parameters`; `args` or `parameters`
/// that are not objects are left alone.
#[test]
fn gemini_args_and_cohere_parameters_are_tool_input() {
    let m = masker(json!({}));
    let args = json!({"card": 4111111111111111u64, "jane.doe@example.com": "owner", "amount": 25});
    let want = json!({"card": "[PAYMENT_CARD]", "[EMAIL]": "owner", "amount": 25});
    let gemini = json!({"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "pay", "args": args}}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 4111111111111111u64}});
    let (out, counts) = mask(&m, &gemini.to_string());
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["candidates"][0]["content"]["parts"][0]["functionCall"]["args"], want);
    assert_eq!(v["usageMetadata"]["promptTokenCount"], json!(4111111111111111u64), "numbers outside tool input are left alone");
    assert_eq!((counts.get("payment_card"), counts.get("email")), (Some(&1), Some(&1)));
    let cohere = json!({"text": "", "tool_calls": [{"name": "pay", "parameters": args}], "meta": {"n": 4111111111111111u64}});
    let v: Value = serde_json::from_str(&mask(&m, &cohere.to_string()).0).unwrap();
    assert_eq!(v["tool_calls"][0]["parameters"], want);
    assert_eq!(v["meta"]["n"], json!(4111111111111111u64));
    // not objects: not tool input
    for other in [r#"{"args":[4111111111111111],"parameters":"x","input":4111111111111111}"#, r#"{"x":{"args":4111111111111111}}"#] {
        assert_eq!(mask(&m, other).0, other);
    }
    // requests: a Gemini conversation that replays the model's call, and a
    // Cohere v1 chat history
    let req = json!({"contents": [{"role": "user", "parts": [{"text": "pay"}]}, {"role": "model", "parts": [{"functionCall": {"name": "pay", "args": args}}]}],
        "generationConfig": {"seed": 4111111111111111u64}});
    let out: Value = serde_json::from_slice(&nhi_gate::body::mask_prompt(&m, req.to_string().as_bytes(), &mut Counts::new()).unwrap()).unwrap();
    assert_eq!(out["contents"][1]["parts"][0]["functionCall"]["args"], want);
    assert_eq!(out["generationConfig"]["seed"], json!(4111111111111111u64));
    let req = json!({"message": "go", "chat_history": [{"role": "CHATBOT", "tool_calls": [{"name": "pay", "parameters": args}]}]});
    let out: Value = serde_json::from_slice(&nhi_gate::body::mask_prompt(&m, req.to_string().as_bytes(), &mut Counts::new()).unwrap()).unwrap();
    assert_eq!(out["chat_history"][0]["tool_calls"][0]["parameters"], want);
}

/// Numbers with extreme exponents inside arguments are left alone (and
/// never overflow the digit arithmetic).
#[test]
fn extreme_numbers_inside_arguments_are_left_alone() {
    let m = masker(json!({}));
    for args in ["[1e-2147483648, 1e2147483647, -0.0e-0, 0e5, 1E-0, 9.99e-400]", "-2147483648e-2147483648"] {
        assert_eq!(m.mask_tool_arguments(args, &mut Counts::new()), args);
    }
}

/// Arguments that are not strict JSON but hold escapes (a lone surrogate,
/// `NaN`, a trailing comma — accepted by lenient parsers) would be masked
/// as text with the escapes still in, where `\n4111…` and `\u0040` hide
/// values: they are withheld whole. Without escapes, text masking is sound.
#[test]
fn non_json_arguments_with_escapes_are_withheld() {
    let m = masker(json!({}));
    for args in [
        r#"{"x":"\udc00","card":"4111111111111111\n5555555555554444","email":"bob\u0040example.com"}"#,
        r#"{"n":NaN,"card":"x\n5555555555554444"}"#,
        r#"{"email":"bob\u0040example.com",}"#,
    ] {
        let body = json!({"output": [{"type": "function_call", "arguments": args}]}).to_string();
        let (out, counts) = mask(&m, &body);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["output"][0]["arguments"], "\"[ARGUMENTS]\"", "{args}");
        assert_eq!(counts.get("arguments"), Some(&1));
    }
    let (out, _) = mask(&m, r#"{"arguments":"card 4111111111111111 {"}"#);
    assert_eq!(out, r#"{"arguments":"card [PAYMENT_CARD] {"}"#);
}

/// Arguments inside arguments (up to 8 levels) are masked as JSON too.
#[test]
fn nested_arguments_are_masked_as_json() {
    let m = masker(json!({}));
    let inner = json!({"email": "bob@example.com", "c": "x\n4111111111111111"}).to_string();
    let args = json!({"arguments": inner}).to_string();
    let (out, counts) = mask(&m, &json!({"arguments": args}).to_string());
    let v: Value = serde_json::from_str(&out).unwrap();
    let a: Value = serde_json::from_str(v["arguments"].as_str().unwrap()).unwrap();
    let b: Value = serde_json::from_str(a["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(b, json!({"email": "[EMAIL]", "c": "x\n[PAYMENT_CARD]"}));
    assert_eq!((counts.get("email"), counts.get("payment_card")), (Some(&1), Some(&1)));
}

/// More prompt-carrying fields of OpenAI requests.
#[test]
fn prompt_refusals_predictions_summaries_and_tool_inputs_are_masked() {
    use nhi_gate::body::mask_prompt;
    let m = masker(json!({}));
    let e = "jane.doe@example.com";
    let body = json!({
        "suffix": format!("end {e}"),
        "prediction": {"type": "content", "content": [{"type": "text", "text": format!("draft {e}")}]},
        "messages": [
            {"role": "assistant", "refusal": format!("no, {e}"), "content": [{"type": "refusal", "refusal": format!("not {e}")}],
             "function_call": {"name": "f", "arguments": json!({"to": e}).to_string()}}],
        "input": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": format!("user is {e}")}]},
            {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_text", "text": format!("sent {e}")}]},
            {"type": "custom_tool_call", "call_id": "d", "name": "g", "input": format!("mail {e}")}]});
    let mut counts = Counts::new();
    let out = String::from_utf8(mask_prompt(&m, body.to_string().as_bytes(), &mut counts).unwrap()).unwrap();
    assert!(!out.contains("jane"), "{out}");
    assert_eq!(counts.get("email"), Some(&8));
    // end-user ids, message names, reusable prompt variables
    let body = json!({"user": e, "safety_identifier": e, "messages": [{"role": "user", "name": e, "content": "hi"}],
                      "prompt": {"id": "pmpt_1", "variables": {"who": e, "doc": {"type": "input_text", "text": format!("to {e}")}, "n": 3}}});
    let mut counts = Counts::new();
    let out: Value = serde_json::from_slice(&mask_prompt(&m, body.to_string().as_bytes(), &mut counts).unwrap()).unwrap();
    assert!(!out.to_string().contains("jane"), "{out}");
    assert_eq!((counts.get("email"), &out["prompt"]["id"], &out["prompt"]["variables"]["n"]), (Some(&5), &json!("pmpt_1"), &json!(3)));
}

#[test]
fn redactions_are_counted_by_detector_name_across_calls_and_many_detectors() {
    // 40 custom detectors after the 14 built-ins: indices past 32 count too
    let custom: Vec<Value> = (0..40).map(|k| json!({"name": format!("tag_{k}"), "pattern": format!("TAG{k}X")})).collect();
    let m = masker(json!({"custom": custom, "per_detector": {"phone": "partial", "tag_39": "hash"}, "hash_key": "k3y-for-tests-0123456789"}));
    let body = r#"{"a":"a@example.com b@example.com","b":["TAG0X","TAG39X TAG39X","TAG31X TAG32X"],"c":"+1 415-555-0134","d":{"arguments":"{\"n\":4111111111111111}"}}"#;
    let mut counts = Counts::new();
    let out = m.mask_json(body.as_bytes(), &mut counts).expect("valid JSON");
    let out = String::from_utf8(out).expect("UTF-8");
    for v in ["a@example.com", "TAG0X", "TAG39X", "TAG31X", "TAG32X", "415-555", "4111111111111111"] {
        assert!(!out.contains(v), "{v} survived: {out}");
    }
    let want = |n: u64| -> Counts {
        [("email", 2), ("tag_0", 1), ("tag_39", 2), ("tag_31", 1), ("tag_32", 1), ("phone", 1), ("payment_card", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v * n))
            .collect()
    };
    assert_eq!(counts, want(1), "{out}");
    // a second call adds to the same counts
    m.mask_json(body.as_bytes(), &mut counts).expect("valid JSON");
    assert_eq!(counts, want(2));
}

/// Keys are lexed byte by byte for 16 bytes, then by blocks: escapes and
/// the closing quote on either side of that line are found.
#[test]
fn long_and_escaped_keys_are_lexed_around_the_byte_by_byte_prefix() {
    let m = masker(json!({"fields": {"redact": ["$.aaaaaaaaaaaaaaaaaaaaAb"]}}));
    for key in ["aaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaaaaaaa\\u0041b", "aaa\\u0041", "aaaaaaaaaaaaaaa\\\"x"] {
        let body = format!(r#"{{"{key}": "jane@example.org", "n": 1}}"#);
        let (out, _) = mask(&m, &body);
        let v: Value = serde_json::from_str(&out).expect("JSON");
        let want: Value = serde_json::from_str(&body).expect("JSON");
        let k = want.as_object().and_then(|o| o.keys().next().cloned()).expect("a key");
        assert!(v.get(&k).is_some(), "{key}: {out}");
        assert!(!out.contains("jane@"), "{key}: {out}");
        assert_eq!(v["n"], 1, "{key}: {out}");
    }
}

#[test]
fn backend_credentials_are_redacted_in_json() {
    let m = masker(json!({})).with_credentials(&["backend-secret-0123456789".to_string(), "sk-plain".to_string()]);
    let mut counts = Counts::new();
    let body = br#"{"headers":{"api-key":["backend-secret-0123456789"],"authorization":"Bearer sk-plain"},"n":1}"#;
    let out = m.mask_json(body, &mut counts).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"headers":{"api-key":["[BACKEND_CREDENTIAL]"],"authorization":"Bearer [BACKEND_CREDENTIAL]"},"n":1}"#
    );
    assert_eq!(counts.get("backend_credential"), Some(&2));
    // without credentials nothing changes
    assert!(masker(json!({})).with_credentials(&[]).mask_json_changes(body, &mut counts).unwrap().is_none());
}

/// `requests: chat_messages` masks prompt text in any field, known by name
/// or not (fail closed), but leaves signed and encoded payloads alone.
#[test]
fn prompt_text_in_unlisted_fields_is_masked_and_payloads_are_not() {
    use nhi_gate::body::mask_prompt;
    let m = masker(json!({}));
    let e = "jane.doe@example.com";
    let b64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk4111111111111111AAAAAElFTkSuQmCC";
    let body = json!({"model": "claude", "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": format!("HR file: {e}")}},
        {"type": "search_result", "source": "kb", "title": "t", "content": [{"type": "text", "text": format!("cc {e}")}]},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64}},
        {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{b64}")}},
        {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {"query": format!("who is {e}")}},
        {"type": "thinking", "thinking": format!("user {e}"), "signature": "sig"}]}],
        "input": [format!("embed {e}"), "plain"]});
    let mut counts = Counts::new();
    let out: Value = serde_json::from_slice(&mask_prompt(&m, body.to_string().as_bytes(), &mut counts).unwrap()).unwrap();
    let c = &out["messages"][0]["content"];
    assert_eq!(c[0]["source"]["data"], "HR file: [EMAIL]");
    assert_eq!(c[1]["content"][0]["text"], "cc [EMAIL]");
    assert_eq!(c[2]["source"]["data"], b64, "base64 payloads are left alone");
    assert_eq!(c[3]["image_url"]["url"], format!("data:image/png;base64,{b64}"));
    assert_eq!(c[4]["input"]["query"], "who is [EMAIL]");
    // `"type": "thinking"` outside an assistant message is no signed thinking: masked
    assert_eq!(c[5]["thinking"], "user [EMAIL]");
    assert_eq!(out["input"], json!(["embed [EMAIL]", "plain"]));
    assert_eq!(counts.get("email"), Some(&5));
    // a top-level `type: thinking` skips nothing
    let out: Value = serde_json::from_slice(&mask_prompt(&m, json!({"type": "thinking", "signature": "s", "messages": [{"role": "user", "type": "thinking", "content": format!("hi {e}")}]}).to_string().as_bytes(), &mut Counts::new()).unwrap()).unwrap();
    assert_eq!(out["messages"][0]["content"], "hi [EMAIL]");
    // text that starts with `data:` is no data URI; a key alone in a string is masked
    let out: Value = serde_json::from_slice(&mask_prompt(&m, json!({"input": [{"type": "function_call_output", "output": format!("data: {{\"customer\":\"{e}\"}}")},
        {"type": "function_call_output", "output": "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjKlMnOpQrStUvWx-AbCdEfAA"}]}).to_string().as_bytes(), &mut Counts::new()).unwrap()).unwrap();
    assert!(!out.to_string().contains(e) && !out.to_string().contains("sk-ant-api03"), "{out}");
    // a prompt of token ids cannot be masked: refused
    assert!(mask_prompt(&m, br#"{"prompt": [15339, 1917]}"#, &mut Counts::new()).is_err());
    assert!(mask_prompt(&m, br#"{"prompt": [[15339], [1917]]}"#, &mut Counts::new()).is_err());
}

/// Ollama requests under `requests: chat_messages`: tool-call arguments
/// written as objects are masked as JSON (numbers too), `context` token ids
/// (a conversation the job could encode itself) are refused, and a body
/// with nothing to mask goes upstream byte for byte (a `format` schema's
/// property order steers the model's output).
#[test]
fn ollama_prompts_are_masked_and_clean_ones_kept_as_sent() {
    use nhi_gate::body::mask_prompt;
    let m = masker(json!({}));
    let body = br#"{"model":"m","messages":[{"role":"assistant","content":"","tool_calls":[{"function":{"name":"pay","arguments":{"card":4111111111111111,"to":"jane.doe@example.com","n":3}}}]}]}"#;
    let mut counts = Counts::new();
    let out: Value = serde_json::from_slice(&mask_prompt(&m, body, &mut counts).unwrap()).unwrap();
    assert_eq!(out["messages"][0]["tool_calls"][0]["function"]["arguments"], json!({"card": "[PAYMENT_CARD]", "to": "[EMAIL]", "n": 3}));
    assert_eq!((counts.get("payment_card"), counts.get("email")), (Some(&1), Some(&1)));
    // context token ids: refused; an empty context (what the gateway hands out) passes
    assert!(mask_prompt(&m, br#"{"model":"m","prompt":"and then?","context":[128006,882,128007]}"#, &mut Counts::new()).is_err());
    let empty = br#"{"model":"m","prompt":"and then?","context":[]}"#;
    assert_eq!(mask_prompt(&m, empty, &mut Counts::new()).unwrap(), empty.to_vec());
    // names in any case, as Go (Ollama) matches them
    let mut counts = Counts::new();
    let upper = br#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":{"name":"pay","Arguments":{"card":4111111111111111}}}]}]}"#;
    let out = String::from_utf8(mask_prompt(&m, upper, &mut counts).unwrap()).unwrap();
    assert!(out.contains(r#""Arguments":{"card":"[PAYMENT_CARD]"}"#), "{out}");
    assert!(mask_prompt(&m, br#"{"model":"m","prompt":"and then?","Context":[128006,882]}"#, &mut Counts::new()).is_err());
    let folded = "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":\"pay\",\"argument\u{17f}\":{\"card\":4111111111111111}}}]}]}";
    let out = String::from_utf8(mask_prompt(&m, folded.as_bytes(), &mut Counts::new()).unwrap()).unwrap();
    assert!(out.contains("[PAYMENT_CARD]") && !out.contains("4111111111111111"), "{out}");
    // a member given twice: refused, whichever copy holds the value (Go
    // merges two objects, serde keeps the last)
    for twice in [
        &br#"{"model":"m","messages":[{"role":"assistant","content":"","tool_calls":[{"function":{"name":"pay","arguments":{"card":4111111111111111,"to":"jane.doe@example.com"},"arguments":{}}}]}]}"#[..],
        br#"{"messages":[{"role":"user","content":"mail jane.doe@example.com"}],"messages":[{"role":"user","content":"hi"}]}"#,
    ] {
        let e = mask_prompt(&m, twice, &mut Counts::new()).unwrap_err();
        assert!(e.contains("given twice"), "{e}");
    }
    // nothing to mask: the bytes as sent (members in their order, numbers as written)
    let clean = br#"{"model":"m","format":{"type":"object","properties":{"reasoning":{"type":"string"},"answer":{"type":"string"}},"required":["reasoning","answer"]},"options":{"temperature":1E0,"seed":18446744073709551617},"messages":[{"role":"user","content":"why?"}]}"#;
    assert_eq!(mask_prompt(&m, clean, &mut Counts::new()).unwrap(), clean.to_vec());
}

/// A masked request body keeps its members in the order sent: a JSON
/// schema's property order steers the model's output (structured outputs,
/// Ollama `format`), so a rewrite must not sort it.
#[test]
fn masked_prompts_keep_member_order() {
    use nhi_gate::body::mask_prompt;
    let m = masker(json!({}));
    let body = r#"{"model":"m","messages":[{"role":"user","content":"mail jane.doe@example.com"}],"response_format":{"type":"json_schema","json_schema":{"name":"r","schema":{"type":"object","properties":{"zeta":{"type":"string"},"alpha":{"type":"string"}},"required":["zeta","alpha"]}}},"max_tokens":9}"#;
    let mut counts = Counts::new();
    let out = String::from_utf8(mask_prompt(&m, body.as_bytes(), &mut counts).unwrap()).unwrap();
    assert_eq!(out, body.replace("jane.doe@example.com", "[EMAIL]"));
    assert_eq!(counts.get("email"), Some(&1));
    // Ollama tool-call arguments (an object) keep theirs too
    let body = r#"{"messages":[{"role":"assistant","tool_calls":[{"function":{"name":"f","arguments":{"to":"jane.doe@example.com","amount":3,"cc":"x"}}}]}],"model":"m"}"#;
    let out = String::from_utf8(mask_prompt(&m, body.as_bytes(), &mut Counts::new()).unwrap()).unwrap();
    assert_eq!(out, body.replace("jane.doe@example.com", "[EMAIL]"));
}

/// In tool input the model chooses the object keys too, so they are masked
/// like string values (OpenAI `arguments`, Anthropic `input`, Ollama's
/// argument objects, in responses and requests); keys elsewhere are left
/// alone.
#[test]
fn keys_inside_tool_input_are_masked() {
    let m = masker(json!({}));
    let args = r#"{"jane.doe@example.com":"owner","team":{"4111 1111 1111 1111":1,"b\u006fb@example.com":[2]},"ok":true}"#;
    let want = json!({"[EMAIL]": "owner", "team": {"[PAYMENT_CARD]": 1, "[EMAIL]": [2]}, "ok": true});
    let body = json!({"jane.doe@example.com": 1, "choices": [{"message": {"tool_calls": [{"function": {"name": "f", "arguments": args}}]}}]});
    let (out, counts) = mask(&m, &body.to_string());
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(serde_json::from_str::<Value>(v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"].as_str().unwrap()).unwrap(), want);
    assert_eq!(v["jane.doe@example.com"], json!(1), "keys outside tool input are left alone");
    assert_eq!((counts.get("email"), counts.get("payment_card")), (Some(&2), Some(&1)));
    // Anthropic tool_use input, in the document
    let body = format!(r#"{{"content":[{{"type":"tool_use","name":"f","input":{args}}}],"x":{{"jane.doe@example.com":2}}}}"#);
    let (out, _) = mask(&m, &body);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["content"][0]["input"], want);
    assert_eq!(v["x"], json!({"jane.doe@example.com": 2}));
    assert!(out.matches("jane.doe").count() == 1 && !out.contains("006fb") && !out.contains("4111"), "{out}");
    // a request: Ollama's argument objects and OpenAI's argument strings
    let req = format!(r#"{{"model":"m","messages":[{{"role":"assistant","tool_calls":[{{"function":{{"name":"f","arguments":{args}}}}},{{"function":{{"name":"g","arguments":{}}}}}]}}]}}"#, serde_json::to_string(args).unwrap());
    let out: Value = serde_json::from_slice(&nhi_gate::body::mask_prompt(&m, req.as_bytes(), &mut Counts::new()).unwrap()).unwrap();
    let calls = &out["messages"][0]["tool_calls"];
    assert_eq!(calls[0]["function"]["arguments"], want);
    assert_eq!(serde_json::from_str::<Value>(calls[1]["function"]["arguments"].as_str().unwrap()).unwrap(), want);
    // a field rule's label is made from the key: not from a masked one
    let m = masker(json!({"fields": {"redact": ["$.content[*].input.*", "$.q.*", "secret"]}}));
    let body = r#"{"content":[{"type":"tool_use","input":{"jane.doe@example.com":"x","secret":"y"}}]}"#;
    let (out, _) = mask(&m, body);
    assert_eq!(out, r#"{"content":[{"type":"tool_use","input":{"[EMAIL]":"[REDACTED]","secret":"[SECRET]"}}]}"#);
    let args = m.mask_tool_arguments(r#"{"q":{"jane.doe@example.com":"v","k":"w"}}"#, &mut Counts::new());
    assert_eq!(args, r#"{"q":{"[EMAIL]":"[REDACTED]","k":"[K]"}}"#);
}

/// Search engines' highlighted copies of a hit (`highlight`, `_formatted`,
/// …) put tags around the query terms, and the analyzer cuts values into
/// terms (`jane.roe` `@` `example.org`; each digit group): the tags split
/// a value that `_source` shows whole. Those strings are also scanned
/// without their tags.
mod highlights {
    use nhi_gate::mask::{Counts, Masker, RawMasking};
    use serde_json::{json, Value};

    fn mask(body: &str) -> (Value, String) {
        let raw: RawMasking = serde_json::from_value(json!({})).expect("raw masking");
        let m = Masker::compile(raw, "masking").expect("compiles");
        let out = String::from_utf8(m.mask_json(body.as_bytes(), &mut Counts::new()).expect("valid JSON")).expect("UTF-8");
        let v = serde_json::from_str::<Value>(&out).unwrap_or_else(|e| panic!("output is not JSON ({e}): {out}"));
        (v, out)
    }

    /// What a client shows of a highlight fragment: its text with the
    /// highlighter's tags removed (`<em>`, `<mark>`, … — the client renders
    /// them as HTML, so the reader sees the text in between as one run).
    fn visible(fragment: &str) -> String {
        let mut out = String::new();
        let mut in_tag = false;
        for c in fragment.chars() {
            match c {
                '<' => in_tag = true,
                '>' if in_tag => in_tag = false,
                c if !in_tag => out.push(c),
                _ => {}
            }
        }
        out
    }
    

    /// Elasticsearch / OpenSearch `highlight` (default `pre_tags` `<em>`): the
    /// standard analyzer splits `jane.roe@example.org` at `@` into `jane.roe`
    /// and `example.org`, so a search for the person highlights one token and
    /// the tags cut the address in two. `_source` is masked, the highlight
    /// fragment of the same hit is not.
    #[test]
    fn es_highlight_em_tags_split_email() {
        let body = r#"{"took":4,"timed_out":false,"hits":{"total":{"value":1,"relation":"eq"},"max_score":2.1,"hits":[{"_index":"crm-notes","_id":"n-17","_score":2.1,"_source":{"author":"support","body":"Customer jane.roe@example.org asked for a refund."},"highlight":{"body":["Customer <em>jane.roe</em>@example.org asked for a refund."]}}]}}"#;
        let (v, out) = mask(body);
        assert_eq!(v["hits"]["hits"][0]["_source"]["body"], "Customer [EMAIL] asked for a refund.");
        let frag = v["hits"]["hits"][0]["highlight"]["body"][0].as_str().unwrap();
        assert!(!visible(frag).contains("jane.roe@example.org"), "highlight leaks the address: {out}");
    }

    /// The same for a card number: a match query for the digits highlights
    /// each group (`<em>4111</em> <em>1111</em> …`), and a card's shape
    /// (groups separated by one space) is broken by the tags.
    #[test]
    fn es_highlight_em_tags_split_card_number() {
        let body = r#"{"hits":{"hits":[{"_id":"t-9","_source":{"note":"paid with 4111 1111 1111 1111 yesterday"},"highlight":{"note":["paid with <em>4111</em> <em>1111</em> <em>1111</em> <em>1111</em> yesterday"]}}]}}"#;
        let (v, out) = mask(body);
        assert_eq!(v["hits"]["hits"][0]["_source"]["note"], "paid with [PAYMENT_CARD] yesterday");
        let frag = v["hits"]["hits"][0]["highlight"]["note"][0].as_str().unwrap();
        assert!(!visible(frag).contains("4111 1111 1111 1111"), "highlight leaks the card: {out}");
    }

    /// Phone numbers and SSNs: the standard analyzer makes a token of each
    /// digit group, so a search for the number highlights `<em>415</em>-…`.
    #[test]
    fn opensearch_highlight_em_tags_split_phone_and_ssn() {
        let body = r#"{"hits":{"hits":[{"_id":"c-1","_source":{"t":"call 415-555-0134, SSN 123-45-6789"},"highlight":{"t":["call <em>415</em>-<em>555</em>-<em>0134</em>, SSN <em>123</em>-45-6789"]}}]}}"#;
        let (v, out) = mask(body);
        let shown = visible(v["hits"]["hits"][0]["highlight"]["t"][0].as_str().unwrap());
        assert!(!shown.contains("415-555-0134"), "highlight leaks the phone: {out}");
        assert!(!shown.contains("123-45-6789"), "highlight leaks the SSN: {out}");
    }

    /// Typesense (`<mark>`) and Meilisearch `_formatted` (`<em>`) answers cut
    /// values the same way.
    #[test]
    fn typesense_and_meilisearch_highlight_tags_split_email() {
        let typesense = r#"{"found":1,"hits":[{"document":{"id":"1","email":"jane.roe@example.org"},"highlights":[{"field":"email","snippet":"<mark>jane.roe</mark>@example.org","matched_tokens":["jane.roe"]}]}]}"#;
        let (v, out) = mask(typesense);
        assert!(!visible(v["hits"][0]["highlights"][0]["snippet"].as_str().unwrap()).contains("jane.roe@example.org"), "{out}");
        let meili = r#"{"hits":[{"id":1,"contact":"IBAN DE89 3704 0044 0532 0130 00","_formatted":{"id":"1","contact":"IBAN <em>DE89</em> 3704 0044 0532 0130 00"}}],"query":"DE89"}"#;
        let (v, out) = mask(meili);
        assert_eq!(v["hits"][0]["contact"], "IBAN [IBAN]");
        assert!(!visible(v["hits"][0]["_formatted"]["contact"].as_str().unwrap()).contains("0532 0130 00"), "{out}");
    }
    

    /// Tags elsewhere are left to the first scan; a highlight without a
    /// value keeps its tags; attributes and other highlighters' tags.
    #[test]
    fn highlight_markup_edge_cases() {
        let (v, out) = mask(r#"{"highlight":{"a":["<em class=\"hlt1\">jane.roe</em>@example.org and <b>4111</b>&nbsp;1111 1111 1111"],"b":"<em>plain</em> text, <a href=\"x\">link</a>"}}"#);
        assert_eq!(v["highlight"]["a"][0], "<em class=\"hlt1\">[EMAIL] and <b>[PAYMENT_CARD]", "{out}");
        assert_eq!(v["highlight"]["b"], "<em>plain</em> text, <a href=\"x\">link</a>");
        // outside a highlight, markup is not taken out
        let (v, _) = mask(r#"{"text":"<em>jane.roe</em>@example.org"}"#);
        assert_eq!(v["text"], "<em>jane.roe</em>@example.org");
        // not tags: comparisons, long names, unclosed; table cells are not
        // glued into one number
        let clean = r#"{"highlight":{"t":["a <b c < d > e", "<abcdefghijkl>x</abcdefghijkl>", "1 <em 2", "<td>4111</td><td>1111</td><td>1111</td><td>1111</td>"]}}"#;
        let (v, _) = mask(clean);
        assert_eq!(v, serde_json::from_str::<Value>(clean).unwrap());
    }
}
