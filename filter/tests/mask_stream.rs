//! `mask`: streamed bodies. Plain text and SSE chat-completion streams give
//! the same output however they are cut into chunks, values split across
//! chunks or SSE events are still caught, clean text flows before the end,
//! and SSE framing and chunk JSON stay valid.

mod common;

use common::{pieces, pt_config, stream};
use nhi_gate::mask::{Counts, Masker, RawMasking, StreamKind, MAX_HOLD};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn masker(cfg: Value) -> Masker {
    let raw: RawMasking = serde_json::from_value(cfg).expect("raw masking");
    Masker::compile(raw, "masking").expect("compiles")
}


/// Values every default detector finds when set off by the separators below.
const PII: &[&str] = &[
    "john.doe@example.com",
    "user+tag@sub.mail.example.co.uk",
    "4111 1111 1111 1111",
    "5555-5555-5555-4444",
    "378282246310005",
    "123-45-6789",
    "(415) 555-0134",
    "415-555-0134",
    "+44 20 7946 0958",
    "+14155550134",
    "DE89 3704 0044 0532 0130 00",
    "GB82WEST12345698765432",
    // typeset separators: no-break space, narrow no-break space, non-breaking hyphen
    "4111\u{a0}1111\u{a0}1111\u{a0}1111",
    "+33\u{202f}1\u{202f}23\u{202f}45\u{202f}67\u{202f}89",
    "123\u{2011}45\u{2011}6789",
    "DE89\u{a0}3704\u{a0}0044\u{a0}0532\u{a0}0130\u{a0}00",
    "AKIAIOSFODNN7EXAMPLE",
    "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
    "+44(0)20 7946 0958",
    "030/1234567",
    "(11) 91234-5678",
    // (not "8 (495) …" or "0044 20 …": after another value's digit group
    // and a space, a digit group continues that grouping, as the "0044
    // 0532 …" of a spaced IBAN does)
    "8-800-555-35-35",
    "(+44) 20 7946 0958",
    "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
    "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z_AbC-dEf",
    "xoxb-2112345678901-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "https://hooks.slack.com/services/T024BE7LD/B01ABCDEF12/abcDEF123ghiJKL456mnoPQR",
    "(415) 555-0134x12",
    "jane%40example.com",
    // URL percent-escapes (a logged query string)
    "%2B44%2020%207946%200958",
    "4111%201111%201111%201111",
    "jane%2Edoe%40example%2Ecom",
    // encoded twice (a URL in a URL's query)
    "%252B14155550134",
    "jane%25252Edoe%252540example.com",
    // an escaped URL's query, whose escaped `+` is a space
    "%2Fpay%3Fcard%3D4111%2B1111%2B1111%2B1111",
    // split by invisible characters
    "4111\u{200b}1111\u{200b}1111\u{200b}1111",
    "jane\u{ad}.roe@exam\u{ad}ple.org",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onL\n-----END RSA PRIVATE KEY-----",
    // the tail of a key cut from its header
    "4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onL\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n-----END RSA PRIVATE KEY-----",
];

const WORDS: &[&str] = &[
    "the", "customer", "asked", "about", "order", "ORD-2024-000123", "on", "2024-01-15", "at", "2024-01-15T10:30:00Z",
    "v1.2.3", "uuid", "123e4567-e89b-12d3-a456-426614174000", "ts", "1700000000000", "sha", "da39a3ee5e6b4b0d3255bfef95601890afd80709",
    "Grüße", "日本語", "✓", "42", "3.14", "-", "@", "sk-", "eyJ", "AKIA", "ghp_", "-----BEGIN", "+", "(", "0", "555",
];

const FRAGMENTS: &[&str] = &[
    "-----BEGIN RSA PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----", "-----BEGIN ", "PRIVATE KEY-----", "MIIEowIBAAKCAQEAu1SU1Lf",
    "-----END ", "-----EN", "_", "__", "%2B", "%20", "%2", "%40", "%25", "%252B", "%2D", "%3D", "%3F", "%26", "%C2%A0", "%E2%80%8B", "%C2", "=", "&", "?q=", "+", "https://", "hooks.slack.com/services/", "hooks.slack.com/", "T024BE7LD/", "B01ABCDEF12/", "abcDEF123ghiJKL456mnoPQR", "/", "\u{200b}", "\u{ad}", "\u{feff}", "x12", "ext.", "X", "\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n", "+/=", "\r",
    "AIza", "SyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe", "(0)", ".png", "jane@acme.com", "git@", ":o/r.git", "123 45 6789", "123456789", "078 05", " 1121", "030/", "1234567", "(11) ", "8 (495) ", "45-67", "(+44) ", "(+", "44)",
    "\n", "\r\n", " ", " ", " ", "sk-", "ant-", "proj-", "xoxb-", "ghp_", "github_pat_", "eyJhbGciOiJIUzI1NiJ9", "eyJ", ".",
    "AKIA", "IOSFODNN7EXAMPLE", "abcdefghij0123456789", "0", "1", "4111", "1111", "5", "@", "ex.com", "x.io", "abc", "DE89",
    "3704", "0044", "+", "(", ")", "-", ":", "::1", "fe80", "123", "45", "6789", "EMP-", "2024", "é", "日本",
];

const SEPS: &[&str] = &[" ", "  ", "\n", ", ", "; ", " (", ") ", "\t", ".\n", " - ", "\r\n"];

fn token() -> impl Strategy<Value = (String, bool)> {
    prop_oneof![
        3 => prop::sample::select(WORDS).prop_map(|w| (w.to_string(), false)),
        2 => prop::sample::select(PII).prop_map(|w| (w.to_string(), true)),
        // in Markdown underscore emphasis (the runs are not part of the value)
        1 => (prop::sample::select(PII), 1..=3usize).prop_map(|(w, k)| (format!("{u}{w}{u}", u = "_".repeat(k)), true)),
        1 => "[a-z0-9 .@-]{1,12}".prop_map(|w| (w, false)),
    ]
}

/// A text of tokens set off by separators, and the PII values in it.
fn text() -> impl Strategy<Value = (String, Vec<String>)> {
    prop::collection::vec((token(), prop::sample::select(SEPS)), 0..60).prop_map(|items| {
        let mut s = String::new();
        let mut pii = Vec::new();
        for ((tok, is_pii), sep) in items {
            s.push_str(&tok);
            s.push_str(sep);
            if is_pii {
                pii.push(tok.trim_matches('_').to_string());
            }
        }
        (s, pii)
    })
}


proptest! {
    #![proptest_config(pt_config())]

    /// Any chunking gives the one-shot result, and no value survives.
    #[test]
    fn text_stream_is_chunking_invariant((input, pii) in text(), cuts in prop::collection::vec(any::<usize>(), 0..40)) {
        let m = masker(json!({}));
        let mut counts = Counts::new();
        let whole = m.mask_text(&input, &mut counts);
        let (out, _, stream_counts) = stream(&m, StreamKind::Text, input.as_bytes(), &cuts);
        let out = String::from_utf8(out).expect("UTF-8");
        prop_assert_eq!(&out, &whole);
        prop_assert_eq!(&stream_counts, &counts);
        for v in &pii {
            prop_assert!(!out.contains(v.as_str()), "{:?} survived in {:?}", v, out);
        }
    }

    /// Random byte soup from a detector-heavy alphabet (digits, separators,
    /// anchors, multibyte characters): still chunking-invariant.
    #[test]
    fn text_stream_soup_is_chunking_invariant(
        input in "[0-9 \\-.+()@a-fA-Z_:\nkyuJIé日\\\\]{0,600}",
        cuts in prop::collection::vec(any::<usize>(), 0..60),
    ) {
        let m = masker(json!({"detectors": ["email", "payment_card", "us_ssn", "phone", "iban", "ipv4", "ipv6", "jwt", "aws_access_key", "google_api_key"],
            "us_ssn_forms": ["dashed", "spaced", "plain"]}));
        let whole = m.mask_text(&input, &mut Counts::new());
        let (out, _, _) = stream(&m, StreamKind::Text, input.as_bytes(), &cuts);
        prop_assert_eq!(String::from_utf8(out).expect("UTF-8"), whole);
    }

    /// Random concatenations of detector fragments (armor lines, key
    /// prefixes, digit groups, address parts): still chunking-invariant.
    #[test]
    fn text_stream_fragments_are_chunking_invariant(
        parts in prop::collection::vec(prop::sample::select(FRAGMENTS), 0..300),
        cuts in prop::collection::vec(any::<usize>(), 0..60),
    ) {
        let m = masker(json!({"detectors": [
            "email", "payment_card", "us_ssn", "phone", "iban", "ipv4", "ipv6", "aws_access_key", "google_api_key",
            "github_token", "openai_key", "anthropic_key", "slack_token", "jwt", "private_key"
        ], "us_ssn_forms": ["dashed", "spaced", "plain"], "custom": [{"name": "emp", "pattern": "EMP-[0-9]{4}"}]}));
        let input = parts.concat();
        let whole = m.mask_text(&input, &mut Counts::new());
        let (out, _, _) = stream(&m, StreamKind::Text, input.as_bytes(), &cuts);
        prop_assert_eq!(String::from_utf8(out).expect("UTF-8"), whole);
    }

    /// SSE chat stream: any chunking of the bytes gives the same output; the
    /// output is valid SSE whose data parses as JSON; the concatenated
    /// content equals the one-shot masked text; no value survives.
    #[test]
    fn sse_stream_is_chunking_invariant(
        (content, pii) in text(),
        frag in prop::collection::vec(1usize..12, 1..200),
        crlf in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let m = masker(json!({}));
        let input = chat_sse(&content, &frag, if crlf { "\r\n" } else { "\n" });
        let (one, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &[]);
        let (out, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &cuts);
        prop_assert_eq!(&out, &one);
        let out = String::from_utf8(out).expect("UTF-8");
        let events = parse_sse(&out);
        prop_assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let mut text = String::new();
        for data in &events[..events.len() - 1] {
            let v: Value = serde_json::from_str(data).expect("chunk JSON");
            prop_assert_eq!(&v["id"], "chatcmpl-abc123");
            prop_assert_eq!(&v["object"], "chat.completion.chunk");
            if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                text.push_str(c);
            }
        }
        prop_assert_eq!(text, m.mask_text(&content, &mut Counts::new()));
        for v in &pii {
            // as it appears in JSON
            let enc = serde_json::to_string(v).unwrap();
            prop_assert!(!out.contains(&enc[1..enc.len() - 1]), "{:?} survived", v);
        }
    }
}

proptest! {
    #![proptest_config(pt_config())]

    /// Gemini API stream (`streamGenerateContent?alt=sse`): any chunking of
    /// the bytes gives the same output; the answer's text parts, joined,
    /// equal the one-shot masked answer and the thought parts the masked
    /// thinking; no value survives, though every one is split across chunks.
    #[test]
    fn gemini_sse_stream_is_chunking_invariant(
        (content, pii) in text(),
        (thinking, pii2) in text(),
        frag in prop::collection::vec(1usize..12, 1..200),
        finish in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let m = masker(json!({}));
        let input = gemini_sse(&thinking, &content, &frag, finish);
        let (one, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &[]);
        let (out, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &cuts);
        prop_assert_eq!(&out, &one);
        let out = String::from_utf8(out).expect("UTF-8");
        let (mut answer, mut thought) = (String::new(), String::new());
        for data in parse_sse(&out) {
            let v: Value = serde_json::from_str(&data).expect("chunk JSON");
            prop_assert_eq!(&v["modelVersion"], "gemini-2.5-flash");
            for p in v["candidates"][0]["content"]["parts"].as_array().expect("parts") {
                let t = p["text"].as_str().expect("a text part");
                if p["thought"] == json!(true) { thought.push_str(t) } else { answer.push_str(t) }
            }
        }
        prop_assert_eq!(answer, m.mask_text(&content, &mut Counts::new()));
        prop_assert_eq!(thought, m.mask_text(&thinking, &mut Counts::new()));
        for v in pii.iter().chain(&pii2) {
            let enc = serde_json::to_string(v).unwrap();
            prop_assert!(!out.contains(&enc[1..enc.len() - 1]), "{:?} survived", v);
        }
    }
}

/// A Gemini API SSE stream: `thinking` then `content` in text parts of the
/// given char counts (cycled), the thinking parts marked `"thought": true`
/// (the first answer fragment shares a chunk with the last thought
/// fragment); the last chunk has `finishReason` when `finish` (else the
/// stream just ends).
fn gemini_sse(thinking: &str, content: &str, frag: &[usize], finish: bool) -> String {
    let pieces = |text: &str, k: &mut usize| -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let n = frag[*k % frag.len()];
            *k += 1;
            out.push(chars[i..(i + n).min(chars.len())].iter().collect());
            i += n;
        }
        out
    };
    let mut k = 0;
    let thoughts = pieces(thinking, &mut k);
    let answer = pieces(content, &mut k);
    let chunk = |parts: Vec<Value>, finish: bool| {
        let mut c = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if finish {
            c["finishReason"] = json!("STOP");
        }
        json!({"candidates": [c], "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}, "modelVersion": "gemini-2.5-flash", "responseId": "r-1"})
    };
    let mut events: Vec<Vec<Value>> = thoughts.iter().map(|t| vec![json!({"text": t, "thought": true})]).collect();
    let mut answer = answer.iter().map(|t| json!({"text": t}));
    match (events.last_mut(), answer.next()) {
        (Some(last), Some(first)) => last.push(first),
        (None, Some(first)) => events.push(vec![first]),
        _ => {}
    }
    events.extend(answer.map(|p| vec![p]));
    events.push(vec![json!({"text": ""})]);
    let n = events.len();
    let mut out = String::new();
    for (i, parts) in events.into_iter().enumerate() {
        sse_event(&mut out, &chunk(parts, finish && i + 1 == n), "\r\n");
    }
    out
}

/// Gemini: an email and a card split across chunks are caught; the text
/// held at a `finishReason` goes into that chunk; at the end of a stream
/// without one, into a chunk of its own; a `functionCall` part comes whole,
/// its `args` masked as tool input; the other members are kept.
#[test]
fn gemini_values_split_across_chunks_are_masked() {
    let m = masker(json!({}));
    let ev = |parts: Value, finish: Option<&str>| {
        let mut c = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if let Some(f) = finish {
            c["finishReason"] = json!(f);
        }
        let mut out = String::new();
        sse_event(&mut out, &json!({"candidates": [c], "modelVersion": "gemini-2.5-flash"}), "\r\n");
        out
    };
    for finish in [Some("STOP"), None] {
        let input = [
            ev(json!([{"text": "write to jane.do"}]), None),
            ev(json!([{"text": "e@example.com, card 4111 1111"}]), None),
            ev(json!([{"text": " 1111 1111 now"}, {"functionCall": {"name": "pay", "args": {"card": 4111111111111111u64, "to": "jane.doe@example.com"}}}]), None),
            ev(json!([{"text": ""}]), finish),
        ]
        .concat();
        let (out, _, counts) = stream(&m, StreamKind::Sse, input.as_bytes(), &[7, 100, 333]);
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("jane.do") && !out.contains("4111") && !out.contains(" 1111"), "{out}");
        let events: Vec<Value> = parse_sse(&out).iter().map(|d| serde_json::from_str(d).unwrap()).collect();
        let text: String = events.iter().flat_map(|v| v["candidates"][0]["content"]["parts"].as_array().unwrap().clone()).filter_map(|p| p["text"].as_str().map(str::to_string)).collect();
        assert_eq!(text, "write to [EMAIL], card [PAYMENT_CARD] now");
        let call = events.iter().find_map(|v| v["candidates"][0]["content"]["parts"][1].get("functionCall").cloned()).unwrap();
        assert_eq!(call, json!({"name": "pay", "args": {"card": "[PAYMENT_CARD]", "to": "[EMAIL]"}}));
        assert!(events.iter().all(|v| v["modelVersion"] == "gemini-2.5-flash"));
        assert_eq!((counts.get("email"), counts.get("payment_card")), (Some(&2), Some(&2)));
        match finish {
            // the rest rides in the finishing chunk
            // (held back: under 128 bytes follow it)
            Some(_) => {
                assert_eq!(events.len(), 4);
                assert!(events[3]["candidates"][0]["content"]["parts"][0]["text"].as_str().unwrap().ends_with("[PAYMENT_CARD] now"));
                assert_eq!(events[3]["candidates"][0]["finishReason"], "STOP");
            }
            // a chunk of its own after the last one
            None => {
                assert_eq!(events.len(), 5);
                let parts = &events[4]["candidates"][0]["content"]["parts"];
                assert!(parts.as_array().unwrap().len() == 1 && parts[0]["text"].as_str().unwrap().ends_with("[PAYMENT_CARD] now"), "{parts}");
            }
        }
    }
}

proptest! {
    #![proptest_config(pt_config())]

    /// Cohere v2 chat stream: any chunking of the bytes gives the same
    /// output; the joined `content-delta` texts equal the one-shot masked
    /// answer, the `tool-plan-delta` texts the masked plan, and the
    /// `tool-call-delta` arguments the masked arguments document; no value
    /// survives, though every one is split across events.
    #[test]
    fn cohere_sse_stream_is_chunking_invariant(
        (content, pii) in text(),
        (plan, pii2) in text(),
        frag in prop::collection::vec(1usize..12, 1..200),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let m = masker(json!({}));
        let args = json!({"note": content, "card": 4111111111111111u64}).to_string();
        let input = cohere_sse(&plan, &content, &args, &frag);
        let (one, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &[]);
        let (out, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &cuts);
        prop_assert_eq!(&out, &one);
        let out = String::from_utf8(out).expect("UTF-8");
        let (mut answer, mut tool_plan, mut arguments) = (String::new(), String::new(), String::new());
        let events = parse_sse(&out);
        prop_assert_eq!(events.last().map(|e| serde_json::from_str::<Value>(e).expect("JSON")["type"].clone()), Some(json!("message-end")));
        for data in events {
            let v: Value = serde_json::from_str(&data).expect("event JSON");
            let msg = &v["delta"]["message"];
            match v["type"].as_str().expect("type") {
                "content-delta" => answer.push_str(msg["content"]["text"].as_str().expect("text")),
                "tool-plan-delta" => tool_plan.push_str(msg["tool_plan"].as_str().expect("plan")),
                "tool-call-delta" => arguments.push_str(msg["tool_calls"]["function"]["arguments"].as_str().expect("arguments")),
                _ => {}
            }
        }
        prop_assert_eq!(answer, m.mask_text(&content, &mut Counts::new()));
        prop_assert_eq!(tool_plan, m.mask_text(&plan, &mut Counts::new()));
        prop_assert_eq!(arguments, m.mask_tool_arguments(&args, &mut Counts::new()));
        for v in pii.iter().chain(&pii2) {
            let enc = serde_json::to_string(v).unwrap();
            prop_assert!(!out.contains(&enc[1..enc.len() - 1]), "{:?} survived", v);
        }
    }
}

/// A Cohere v2 chat SSE stream (`event:` lines, as Cohere sends them): a
/// tool plan, one tool call whose `arguments` are streamed, then the
/// answer as one text content item, each string in fragments of the given
/// char counts (cycled), and `message-end`.
fn cohere_sse(plan: &str, content: &str, args: &str, frag: &[usize]) -> String {
    let mut out = String::new();
    let mut ev = |v: Value| {
        out.push_str(&format!("event: {}\n", v["type"].as_str().unwrap()));
        sse_event(&mut out, &v, "\n");
    };
    ev(json!({"id": "c-1", "type": "message-start", "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}}));
    for p in pieces(plan, frag) {
        ev(json!({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": p}}}));
    }
    ev(json!({"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {"id": "t-1", "type": "function", "function": {"name": "pay", "arguments": ""}}}}}));
    for p in pieces(args, frag) {
        ev(json!({"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {"function": {"arguments": p}}}}}));
    }
    ev(json!({"type": "tool-call-end", "index": 0}));
    ev(json!({"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}}));
    for p in pieces(content, frag) {
        ev(json!({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": p}}}, "logprobs": null}));
    }
    ev(json!({"type": "content-end", "index": 0}));
    ev(json!({"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": {"tokens": {"input_tokens": 9, "output_tokens": 9}}}}));
    out
}

/// Cohere v2: an email split across `content-delta` events is caught, the
/// held rest goes out as a copy of the last delta event (with its `event:`
/// line) before `content-end`; a stream cut before `content-end` still
/// releases it, masked, at the end.
#[test]
fn cohere_values_split_across_events_are_masked() {
    let m = masker(json!({}));
    let ev = |v: Value| format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap());
    let delta = |t: &str| ev(json!({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": t}}}}));
    let head = [delta("write to jane.do"), delta("e@example.com now")].concat();
    let end = [ev(json!({"type": "content-end", "index": 0})), ev(json!({"type": "message-end", "delta": {"finish_reason": "COMPLETE"}}))].concat();
    for tail in [end.as_str(), ""] {
        let input = format!("{head}{tail}");
        let (out, _, counts) = stream(&m, StreamKind::Sse, input.as_bytes(), &[5, 61, 130]);
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("jane.do"), "{out}");
        let events: Vec<Value> = parse_sse(&out).iter().map(|d| serde_json::from_str(d).unwrap()).collect();
        let text: String = events.iter().filter_map(|v| v["delta"]["message"]["content"]["text"].as_str()).collect();
        assert_eq!(text, "write to [EMAIL] now");
        assert_eq!(counts.get("email"), Some(&1));
        let rest = events.iter().position(|v| v["delta"]["message"]["content"]["text"].as_str().is_some_and(|t| t.ends_with(" now"))).unwrap();
        assert_eq!(events[rest]["type"], "content-delta");
        assert_eq!(rest, 2, "after the two deltas, before content-end");
        assert_eq!(out.matches("event: content-delta").count(), 3);
    }
}

proptest! {
    #![proptest_config(pt_config())]

    /// Text Generation Inference `/generate_stream`: any chunking gives the
    /// same output; the joined `token.text`s equal the one-shot masked text,
    /// and so does the last event's `generated_text`; no value survives.
    #[test]
    fn tgi_stream_is_chunking_invariant(
        (content, pii) in text(),
        frag in prop::collection::vec(1usize..12, 1..200),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let m = masker(json!({}));
        let mut input = String::new();
        let tokens = pieces(&content, &frag);
        for (i, t) in tokens.iter().enumerate() {
            input.push_str(&format!("data:{}\n\n", json!({"index": i, "token": {"id": i, "text": t, "logprob": -0.5, "special": false}, "generated_text": null, "details": null})));
        }
        input.push_str(&format!("data:{}\n\n", json!({"index": tokens.len(), "token": {"id": 2, "text": "</s>", "logprob": 0.0, "special": true}, "generated_text": content, "details": null})));
        let (one, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &[]);
        let (out, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &cuts);
        prop_assert_eq!(&out, &one);
        let out = String::from_utf8(out).expect("UTF-8");
        let events = parse_sse(&out);
        let mut joined = String::new();
        for data in &events {
            let v: Value = serde_json::from_str(data).expect("event JSON");
            joined.push_str(v["token"]["text"].as_str().expect("token text"));
        }
        prop_assert_eq!(joined, m.mask_text(&format!("{content}</s>"), &mut Counts::new()));
        let last: Value = serde_json::from_str(events.last().expect("events")).expect("JSON");
        let whole = m.mask_text(&content, &mut Counts::new());
        prop_assert_eq!(last["generated_text"].as_str(), Some(whole.as_str()));
        for v in &pii {
            let enc = serde_json::to_string(v).unwrap();
            prop_assert!(!out.contains(&enc[1..enc.len() - 1]), "{:?} survived", v);
        }
    }
}

/// Appends the SSE event `data: <v>` with its blank line.
fn sse_event(out: &mut String, v: &Value, eol: &str) {
    out.push_str("data: ");
    out.push_str(&v.to_string());
    out.push_str(eol);
    out.push_str(eol);
}

/// An OpenAI-style chat-completion SSE stream delivering `content` in
/// fragments of the given char counts (cycled), with a role chunk first, a
/// `finish_reason` chunk with an empty delta, and `[DONE]`.
fn chat_sse(content: &str, frag: &[usize], eol: &str) -> String {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-abc123", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "gpt-4o-mini",
               "system_fingerprint": "fp_44709d6fcb",
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    };
    let mut out = String::new();
    let mut ev = |v: Value| sse_event(&mut out, &v, eol);
    ev(chunk(json!({"role": "assistant", "content": ""}), Value::Null));
    let chars: Vec<char> = content.chars().collect();
    let mut i = 0;
    let mut k = 0;
    while i < chars.len() {
        let n = frag[k % frag.len()];
        k += 1;
        let piece: String = chars[i..(i + n).min(chars.len())].iter().collect();
        i += n;
        ev(chunk(json!({"content": piece}), Value::Null));
    }
    ev(chunk(json!({}), json!("stop")));
    out.push_str("data: [DONE]");
    out.push_str(eol);
    out.push_str(eol);
    out
}

/// Parses SSE text into the data of each event (lines joined by `\n`);
/// checks the framing: every event ends with a blank line, every line is a
/// field line.
/// Streams `text` in pushes of each of `steps` bytes and asserts each
/// gives what masking it whole gives; returns that.
fn assert_steps_match_whole(m: &Masker, text: &str, steps: &[usize]) -> String {
    let whole = m.mask_text(text, &mut Counts::new());
    for &step in steps {
        let cuts: Vec<usize> = (step..text.len()).step_by(step).collect();
        let (out, _, _) = stream(m, StreamKind::Text, text.as_bytes(), &cuts);
        assert_eq!(String::from_utf8(out).unwrap(), whole, "pushes of {step} bytes");
    }
    whole
}

fn parse_sse(s: &str) -> Vec<String> {
    let s = s.replace("\r\n", "\n");
    assert!(s.is_empty() || s.ends_with("\n\n"), "unterminated event: {s:?}");
    let mut events = Vec::new();
    for block in s.split("\n\n").filter(|b| !b.is_empty()) {
        let mut data = Vec::new();
        for line in block.split('\n') {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            assert!(matches!(name, "data" | "event" | "id" | "retry" | ""), "bad line {line:?}");
            if name == "data" {
                data.push(value.strip_prefix(' ').unwrap_or(value).to_string());
            }
        }
        if !data.is_empty() {
            events.push(data.join("\n"));
        }
    }
    events
}

#[test]
fn clean_text_flows_before_the_end() {
    let m = masker(json!({}));
    let line = "The quick brown fox jumps over the lazy dog. ";
    let input = line.repeat(200);
    let (out, parts, _) = stream(&m, StreamKind::Text, input.as_bytes(), &(1..200).map(|i| i * 45).collect::<Vec<_>>());
    assert_eq!(out, input.as_bytes());
    let early: usize = parts[..parts.len() - 1].iter().map(Vec::len).sum();
    assert!(input.len() - early <= 256, "held back {} bytes", input.len() - early);
}

#[test]
fn value_split_across_chunks_is_caught() {
    let m = masker(json!({}));
    let input = "please write to john.doe@example.com or call 415-555-0134 today, card 4111 1111 1111 1111.";
    for cut in 0..=input.len() {
        let (out, _, counts) = stream(&m, StreamKind::Text, input.as_bytes(), &[cut]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "please write to [EMAIL] or call [PHONE] today, card [PAYMENT_CARD].",
            "cut at {cut}"
        );
        assert_eq!(counts.values().sum::<u64>(), 3);
    }
}

/// An address whose `@` is an HTML character reference (found at its `;`)
/// split anywhere across chunks, and across SSE content deltas.
#[test]
fn html_reference_email_split_across_chunks_is_caught() {
    let m = masker(json!({}));
    for spelling in ["&#x40;", "&commat;", "&#0064;"] {
        let input = format!("mail j.roe{spelling}example.org; or jane{spelling}mail.example.co.uk.");
        for cut in 0..=input.len() {
            let (out, _, counts) = stream(&m, StreamKind::Text, input.as_bytes(), &[cut]);
            assert_eq!(String::from_utf8(out).unwrap(), "mail [EMAIL]; or [EMAIL].", "{spelling} cut at {cut}");
            assert_eq!(counts.get("email"), Some(&2));
        }
        let sse = chat_sse(&input, &[7, 13, 19, 31], "\n");
        let (out, _, _) = stream(&m, StreamKind::Sse, sse.as_bytes(), &[]);
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("roe") && !out.contains("jane"), "{out}");
    }
}

#[test]
fn byte_by_byte_with_multibyte_characters_and_invalid_utf8() {
    let m = masker(json!({}));
    let mut input = "Grüße 日本語 jürgen@example.de ✓ ".repeat(20).into_bytes();
    input.extend_from_slice(b"\xff\xfe bad bytes then a@example.com \xc3");
    let mut s = m.stream(StreamKind::Text);
    let mut counts = Counts::new();
    let mut out = Vec::new();
    for b in &input {
        out.extend(s.push(std::slice::from_ref(b), &mut counts));
    }
    out.extend(s.finish(&mut counts));
    let mut want = "Grüße 日本語 [EMAIL] ✓ ".repeat(20).into_bytes();
    want.extend_from_slice(b"\xff\xfe bad bytes then [EMAIL] \xc3");
    assert_eq!(out, want);
    assert_eq!(m.mask_text_bytes(&input, &mut Counts::new()), want);
}

#[test]
fn long_token_without_whitespace_is_bounded() {
    let m = masker(json!({}));
    let blob = "A".repeat(200_000);
    let mut s = m.stream(StreamKind::Text);
    let mut counts = Counts::new();
    let mut released = 0;
    for c in blob.as_bytes().chunks(1000) {
        released += s.push(c, &mut counts).len();
        assert!(s.held() <= MAX_HOLD + 1000, "held {}", s.held());
    }
    released += s.finish(&mut counts).len();
    assert_eq!(released, blob.len());
}

#[test]
fn pem_block_is_held_until_its_footer() {
    let m = masker(json!({}));
    let body: String = (0..40).map(|i| format!("MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo{i:04}\n")).collect();
    let input = format!("key follows\n-----BEGIN PRIVATE KEY-----\n{body}-----END PRIVATE KEY-----\nthanks and bye now {}", "x ".repeat(100));
    let cuts: Vec<usize> = (1..input.len() / 16).map(|i| i * 16).collect();
    let (out, _, counts) = stream(&m, StreamKind::Text, input.as_bytes(), &cuts);
    assert_eq!(String::from_utf8(out).unwrap(), format!("key follows\n[PRIVATE_KEY]\nthanks and bye now {}", "x ".repeat(100)));
    assert_eq!(counts.get("private_key"), Some(&1));
}

#[test]
fn pem_tail_is_held_until_its_footer() {
    let m = masker(json!({}));
    // a key cut from its header, far longer than the hold-back window
    let body: String = (0..40).map(|i| format!("MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo{i:04}\n")).collect();
    let bye = format!("thanks and bye now {}", "x ".repeat(100));
    let input = format!("chunk 2 of 2:\n{body}-----END PRIVATE KEY-----\n{bye}");
    for step in [1, 7, 16, 300] {
        let cuts: Vec<usize> = (1..input.len() / step).map(|i| i * step).collect();
        let (out, _, counts) = stream(&m, StreamKind::Text, input.as_bytes(), &cuts);
        assert_eq!(String::from_utf8(out).unwrap(), format!("chunk 2 of 2:\n[PRIVATE_KEY]\n{bye}"), "step {step}");
        assert_eq!(counts.get("private_key"), Some(&1));
    }
    // base64 lines that no footer ends flow on once a prose line follows
    let input = format!("{body}and that was the blob, {bye}");
    let mut s = m.stream(StreamKind::Text);
    let mut counts = Counts::new();
    let first = s.push(input.as_bytes(), &mut counts);
    assert!(first.len() >= body.len(), "held {} of {}", input.len() - first.len(), input.len());
    let mut all = first;
    all.extend(s.finish(&mut counts));
    assert_eq!(all, input.as_bytes());
    // a column of short lines (a list, numbers) is not held as a key body
    let column: String = (0..200).map(|i| format!("{i}\n")).collect();
    let mut s = m.stream(StreamKind::Text);
    let out = s.push(column.as_bytes(), &mut counts);
    assert!(out.len() + 200 > column.len(), "held {} of {}", column.len() - out.len(), column.len());
    // a long base64 blob (MIME-style lines) streams through in bounded pieces
    let line = "TWFuIGlzIGRpc3Rpbmd1aXNoZWQsIG5vdCBvbmx5IGJ5IGhpcyByZWFzb24sIGJ1dCBieSB0aGlz\n";
    let mut s = m.stream(StreamKind::Text);
    let mut total = Vec::new();
    for _ in 0..4000 {
        total.extend(s.push(line.as_bytes(), &mut counts));
        assert!(s.held() <= MAX_HOLD + 1000, "held {}", s.held());
    }
    total.extend(s.finish(&mut counts));
    assert_eq!(total, line.repeat(4000).as_bytes());
    // base64 lines, then a long run without a line break, in small pushes:
    // what is held stays bounded
    let input = format!("hi there\n{}{}", line.repeat(400), "Zm9v".repeat(64 * 1024));
    let mut s = m.stream(StreamKind::Text);
    let mut most = 0;
    for piece in input.as_bytes().chunks(7) {
        s.push(piece, &mut counts);
        most = most.max(s.held());
    }
    assert!(most <= MAX_HOLD + 7, "held {most}");
    // indented lines (a YAML block scalar) are held like others
    let yaml = format!("key: |\n  {}\n  -----END PRIVATE KEY-----\nnext: {bye}", body.trim_end().replace('\n', "\n  "));
    let cuts: Vec<usize> = (1..yaml.len() / 5).map(|i| i * 5).collect();
    let (out, _, _) = stream(&m, StreamKind::Text, yaml.as_bytes(), &cuts);
    assert_eq!(String::from_utf8(out).unwrap(), m.mask_text(&yaml, &mut Counts::new()));
    assert!(!String::from_utf8_lossy(&stream(&m, StreamKind::Text, yaml.as_bytes(), &cuts).0).contains("MIIE"));
}

/// Percent-escaped invisible characters (`%E2%80%8B`) count as nothing in
/// the hold-back window, as raw ones do: a card padded with them is masked
/// whatever the chunking, as in the whole text.
#[test]
fn escaped_invisible_padding_does_not_stretch_a_value_past_the_hold() {
    let m = masker(json!({}));
    // once, twice and three times encoded (a URL inside a URL's query)
    // (and a JSON escape whose backslash is escaped: `%5Cu200b`)
    for (pad, n) in [("%E2%80%8B", 20), ("%25E2%2580%258B", 12), ("%2525E2%252580%25258B", 9), ("%5Cu200b", 20), ("%255Cu200b", 20), ("%5C%75200b", 16), ("%5C%75%32%30%30%62", 8), ("%255C%2575200b", 10)] {
        let pad = pad.repeat(n);
        let input = format!("hello card 4111{pad} 1111{pad} 1111{pad} 1111 end of text {}", "word ".repeat(60));
        let whole = assert_steps_match_whole(&m, &input, &[1, 7, 32, 100]);
        assert!(whole.starts_with("hello card [PAYMENT_CARD] end"), "{whole}");
    }
}

/// A percent-escape counts as the one byte it encodes in the hold-back
/// window, however many times it is encoded: a spaced IBAN with every
/// character escaped three times (7 bytes each, 224 in all) is masked
/// whatever the chunking, as in the whole text.
#[test]
fn escapes_encoded_three_times_count_as_one_byte_in_the_hold() {
    let m = masker(json!({}));
    let iban: String = "MT84 MALT 0110 0001 2345 MTLC AST0 01S"
        .split(' ')
        .map(|g| g.bytes().map(|b| format!("%2525{b:02X}")).collect::<String>())
        .collect::<Vec<_>>()
        .join(" ");
    let input = format!("acct {iban} ok {}", "word ".repeat(60));
    let whole = assert_steps_match_whole(&m, &input, &[1, 7, 32, 100]);
    assert!(whole.starts_with("acct [IBAN] ok"), "{whole}");
}

#[test]
fn invisible_padding_does_not_stretch_a_value_past_the_hold() {
    let m = masker(json!({}));
    let zw = "\u{200b}".repeat(44);
    let shy = "\u{ad}".repeat(64);
    let body: String = (0..4).map(|i| format!("MIIEowIBAAKC\u{200b}AQEAu1SU1LfVLPHCozMxH2Mo{i:04}\n")).collect();
    for text in [
        format!("pay with 4111 {zw}1111 1111 1111 today {}", "x ".repeat(80)),
        format!("call +44 {shy}20 7946 0958 now {}", "x ".repeat(80)),
        format!("cut:\n{body}-----END RSA PRIVATE KEY-----\n{}", "x ".repeat(80)),
    ] {
        let whole = assert_steps_match_whole(&m, &text, &[1, 5, 16, 137]);
        assert!(whole.contains('[') && !whole.contains("1111 1111") && !whole.contains("7946") && !whole.contains("MIIE"), "{whole}");
    }
}

#[test]
fn pem_tail_with_invisible_characters_before_its_footer() {
    let m = masker(json!({}));
    let body = "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n".repeat(8);
    for pad in ["\u{200b}", "\u{feff}", "\\u200b", " \u{200b}\t"] {
        let text = format!("Here it is:\n{body}{pad}-----END PRIVATE KEY-----\n{}", "bye now ".repeat(30));
        let whole = m.mask_text(&text, &mut Counts::new());
        assert!(whole.starts_with("Here it is:\n[PRIVATE_KEY]\n"), "{whole}");
        for step in [1, 3, 7, 16] {
            let cuts: Vec<usize> = (1..text.len() / step).map(|i| i * step).collect();
            let (out, _, _) = stream(&m, StreamKind::Text, text.as_bytes(), &cuts);
            assert_eq!(String::from_utf8(out).unwrap(), whole, "{pad:?} step {step}");
        }
        let (out, _, _) = stream(&m, StreamKind::Text, text.as_bytes(), &[text.len() - 40]);
        assert_eq!(String::from_utf8(out).unwrap(), whole, "{pad:?} one cut");
    }
    // a buffer that starts mid-line after a release is no line start
    let text = ".meices/T024BE7LD/B01ABCDEF12/abcDEF123ghiJKL456mnoPQR4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onL4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onL00\r\nAgtwEAgL\n-----END PRIVATE KEY----- wPUQ4lnT9AP4oCfeIkpl0pBeHJkLmNoPqRsTuVwXyZ0123456789 example.com\n  é\té4111 1111 1111 1111\n";
    let (out, _, _) = stream(&m, StreamKind::Text, text.as_bytes(), &[text.len()]);
    assert_eq!(String::from_utf8(out).unwrap(), m.mask_text(text, &mut Counts::new()));
    // held text of invisible characters only: bounded, and flows at the end
    let zw = "\u{200b}".repeat(30_000);
    let mut st = m.stream(StreamKind::Text);
    let mut counts = Counts::new();
    let mut got = Vec::new();
    for piece in zw.as_bytes().chunks(16) {
        got.extend(st.push(piece, &mut counts));
        assert!(st.held() <= MAX_HOLD + 16, "held {}", st.held());
    }
    got.extend(st.finish(&mut counts));
    assert_eq!(got, zw.as_bytes());
}

#[test]
fn sse_pem_tail_split_across_events() {
    let m = masker(json!({}));
    let body: String = (0..20).map(|i| format!("MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo{i:04}\n")).collect();
    let content = format!("From chunk 2:\n{body}-----END PRIVATE KEY-----\nThat is all.");
    let input = chat_sse(&content, &[3, 5, 8], "\n");
    let (out, _, counts) = stream(&m, StreamKind::Sse, input.as_bytes(), &[]);
    let mut text = String::new();
    for data in parse_sse(&String::from_utf8(out).unwrap()) {
        if let Ok(v) = serde_json::from_str::<Value>(&data) {
            text.push_str(v.pointer("/choices/0/delta/content").and_then(Value::as_str).unwrap_or(""));
        }
    }
    assert_eq!(text, "From chunk 2:\n[PRIVATE_KEY]\nThat is all.");
    assert_eq!(counts.get("private_key"), Some(&1));
}

#[test]
fn sse_email_split_across_events() {
    let m = masker(json!({}));
    // the first part of the text, without the finish chunk and [DONE]
    let input = chat_sse("Sure! Reach me at jane.roe@exam", &[40], "\n").replace("data: [DONE]\n\n", "");
    // continue the text in later events
    let mut input = input.replace(",\"finish_reason\":\"stop\"", ",\"finish_reason\":null");
    for piece in ["ple.com", " or +1 415 555", " 0134. Bye!"] {
        input.push_str(&format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-abc123", "object": "chat.completion.chunk", "created": 1, "model": "m",
                   "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]})
        ));
    }
    input.push_str(&format!(
        "data: {}\n\ndata: [DONE]\n\n",
        json!({"id": "chatcmpl-abc123", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": {"total_tokens": 9}})
    ));
    for cuts in [vec![], (0..input.len()).collect::<Vec<_>>()] {
        let (out, _, counts) = stream(&m, StreamKind::Sse, input.as_bytes(), &cuts);
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("jane") && !out.contains("0134"), "{out}");
        let events = parse_sse(&out);
        let mut text = String::new();
        let mut finish_seen = false;
        for d in &events {
            if d == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(d).unwrap();
            assert!(!finish_seen, "content after the finish chunk");
            if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                text.push_str(c);
            }
            if v["choices"][0]["finish_reason"] == "stop" {
                finish_seen = true;
                assert_eq!(v["usage"]["total_tokens"], 9, "other fields untouched");
            }
        }
        assert_eq!(text, "Sure! Reach me at [EMAIL] or [PHONE]. Bye!");
        assert_eq!(counts.get("email"), Some(&1));
        assert_eq!(counts.get("phone"), Some(&1));
    }
}

#[test]
fn sse_stream_starting_with_a_byte_order_mark_is_parsed_as_sse() {
    // Clients skip a leading BOM and read the event after it; the masker must
    // too, or the event is masked as text, where `\u0040` hides the email.
    let m = masker(json!({}));
    let mut input = b"\xEF\xBB\xBF".to_vec();
    // the first event holds the email, its `@` written as a JSON escape;
    // then a stream split across events as usual
    let first = chat_sse("mail jane.doe@example.com, ", &[40], "\n");
    let first = first.split("\n\n").nth(1).unwrap().replace('@', "\\u0040");
    input.extend_from_slice(first.as_bytes());
    input.extend_from_slice(b"\n\n");
    input.extend_from_slice(chat_sse("or jane.roe@example.com now", &[12], "\n").as_bytes());
    for cuts in [vec![], vec![1], vec![2], vec![1, 2, 3], (0..input.len()).collect::<Vec<_>>()] {
        let (out, _, counts) = stream(&m, StreamKind::Sse, &input, &cuts);
        assert!(out.starts_with(b"\xEF\xBB\xBF"), "the mark is passed on ({cuts:?})");
        let out = String::from_utf8(out[3..].to_vec()).unwrap();
        let text: String = parse_sse(&out)
            .iter()
            .filter(|d| *d != "[DONE]")
            .filter_map(|d| serde_json::from_str::<Value>(d).unwrap()["choices"][0]["delta"]["content"].as_str().map(String::from))
            .collect();
        assert_eq!(text, "mail [EMAIL], or [EMAIL] now", "{cuts:?}: {out}");
        assert_eq!(counts.get("email"), Some(&2));
    }
    // a stream of only part of a mark, or a mark alone, is passed on as it is
    for input in [&b"\xEF"[..], b"\xEF\xBB", b"\xEF\xBB\xBF"] {
        assert_eq!(stream(&m, StreamKind::Sse, input, &[]).0, input);
    }
}

#[test]
fn sse_passthrough_and_other_payloads() {
    let m = masker(json!({}));
    let input = ": keep-alive comment\n\
                 event: ping\nid: 7\nretry: 1000\ndata: {\"type\":\"ping\",\"who\":\"ops@example.com\",\"n\":4111111111111111}\n\n\
                 data: plain text to a@example.com\ndata: second line 123-45-6789\n\n\
                 data:{\"choices\":\"not an array\",\"x\":\"b@example.com\"}\n\n\
                 data: [DONE]\n\n";
    let (out, _, counts) = stream(&m, StreamKind::Sse, input.as_bytes(), &[5, 17, 60]);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        ": keep-alive comment\n\
         event: ping\nid: 7\nretry: 1000\ndata: {\"type\":\"ping\",\"who\":\"[EMAIL]\",\"n\":4111111111111111}\n\n\
         data: plain text to [EMAIL]\ndata: second line [US_SSN]\n\n\
         data:{\"choices\":\"not an array\",\"x\":\"[EMAIL]\"}\n\n\
         data: [DONE]\n\n"
    );
    assert_eq!(counts.get("email"), Some(&3));
}

/// Data that looks like a JSON string but is not strict JSON (a lone
/// surrogate escape) is withheld like such objects and arrays: a lenient
/// parser would decode the `\u0040` that text masking cannot see. A JSON
/// array is masked as JSON and is never read as a chunk (serde would read
/// a struct from one), so text held for a choice goes out before it.
#[test]
fn sse_json_strings_and_arrays() {
    let m = masker(json!({}));
    let input = "data: \"mail jane.doe\\u0040example.com \\ud800\"\n\n\
                 data: \"mail jane.doe\\u0040example.com\"\n\n";
    let (out, _, counts) = stream(&m, StreamKind::Sse, input.as_bytes(), &[9]);
    let out = String::from_utf8(out).unwrap();
    let events = parse_sse(&out);
    assert_eq!(events.len(), 2, "{out}");
    assert!(events[0].contains("unmaskable_event"), "{out}");
    assert_eq!(events[1], "\"mail [EMAIL]\"");
    assert_eq!(counts.get("unmaskable_event"), Some(&1));
    let mut input = String::new();
    sse_event(&mut input, &json!({"choices": [{"index": 0, "delta": {"content": "My card is 4111 1111"}, "finish_reason": null}]}), "\n");
    input.push_str("data: [[{\"index\":0,\"delta\":{\"content\":\" 1111 1111\"}}]]\n\n");
    let (out, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &[]);
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("[[{\"index\":0,\"delta\":{\"content\":\" 1111 1111\"}}]]"), "masked alone, not joined: {out}");
    let array_at = out.find("[[{").unwrap();
    assert!(out[..array_at].contains("My card is 4111 1111"), "held text goes out first: {out}");
}

#[test]
fn sse_clean_stream_is_unchanged_and_flows() {
    let m = masker(json!({}));
    let content = "Here is a summary of the quarterly report with no personal data at all. ".repeat(20);
    let input = chat_sse(&content, &[3, 5, 2, 7], "\r\n");
    let (out, parts, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &(1..input.len() / 50).map(|i| i * 50).collect::<Vec<_>>());
    // the same text, possibly shifted between events
    let events = parse_sse(&String::from_utf8(out).unwrap());
    let text: String = events
        .iter()
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).unwrap()["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, content);
    // most events went out before the end
    let early: usize = parts[..parts.len() - 1].iter().map(Vec::len).sum();
    assert!(early > input.len() / 2, "released {early} of {}", input.len());
}

#[test]
fn sse_multiple_choices_and_unterminated_end() {
    let m = masker(json!({}));
    let ev = |i: u64, c: &str| {
        format!(
            "data: {}\n\n",
            json!({"id": "x", "object": "chat.completion.chunk", "choices": [{"index": i, "delta": {"content": c}, "finish_reason": null}]})
        )
    };
    let mut input = String::new();
    input += &ev(0, "mail a@exa");
    input += &ev(1, "mail b@exa");
    input += &ev(0, "mple.com ok");
    input += &ev(1, "mple.com ok");
    // the stream stops without [DONE] and without a final blank line
    input += "data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"!\"},\"finish_reason\":null}]}";
    let (out, _, counts) = stream(&m, StreamKind::Sse, input.as_bytes(), &[]);
    let out = String::from_utf8(out).unwrap();
    let events = parse_sse(&out);
    let mut per: [String; 2] = Default::default();
    for d in &events {
        let v: Value = serde_json::from_str(d).unwrap();
        let i = v["choices"][0]["index"].as_u64().unwrap() as usize;
        per[i].push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    assert_eq!(per[0], "mail [EMAIL] ok!");
    assert_eq!(per[1], "mail [EMAIL] ok");
    assert_eq!(counts.get("email"), Some(&2));
}

#[test]
fn pem_header_without_footer_does_not_stall_the_stream() {
    let m = masker(json!({}));
    let input = format!(
        "oops -----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk\n\n{}",
        "and the answer goes on without any footer. ".repeat(2000)
    );
    let mut s = m.stream(StreamKind::Text);
    let mut counts = Counts::new();
    let mut out = Vec::new();
    for c in input.as_bytes().chunks(500) {
        out.extend(s.push(c, &mut counts));
    }
    assert!(s.held() < 33 * 1024, "held {}", s.held());
    out.extend(s.finish(&mut counts));
    assert_eq!(String::from_utf8(out).unwrap(), m.mask_text(&input, &mut Counts::new()));
    assert!(m.mask_text(&input, &mut Counts::new()).starts_with("oops [PRIVATE_KEY]\n\nand the answer"));
}

// ---------------------------------------------------------------- tool calls and legacy completions

/// A chat-completion SSE stream of tool calls: call `j` (ids `call_j`, name
/// `fn_j`) streams `args[j]` as `function.arguments` fragments of the given
/// char counts (cycled); the calls' fragments interleave when `interleave`,
/// else each call streams whole after the other (as OpenAI sends parallel
/// calls). A role chunk first (`content: null`), then the calls, a
/// `finish_reason: "tool_calls"` chunk with an empty delta, and `[DONE]`.
fn tool_sse(args: &[String], frag: &[usize], interleave: bool, eol: &str) -> String {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-tool1", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "gpt-4o-mini",
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    };
    let mut out = String::new();
    let mut ev = |v: Value| sse_event(&mut out, &v, eol);
    ev(chunk(json!({"role": "assistant", "content": null}), Value::Null));
    // per call: its fragments
    let mut pieces: Vec<Vec<String>> = Vec::new();
    let mut k = 0;
    for a in args {
        let chars: Vec<char> = a.chars().collect();
        let mut p = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let n = frag[k % frag.len()];
            k += 1;
            p.push(chars[i..(i + n).min(chars.len())].iter().collect());
            i += n;
        }
        pieces.push(p);
    }
    for (j, _) in args.iter().enumerate() {
        let head = json!({"tool_calls": [{"index": j, "id": format!("call_{j}"), "type": "function",
                                          "function": {"name": format!("fn_{j}"), "arguments": ""}}]});
        if interleave || j == 0 {
            ev(chunk(head, Value::Null));
        }
        if !interleave {
            for p in &pieces[j] {
                ev(chunk(json!({"tool_calls": [{"index": j, "function": {"arguments": p}}]}), Value::Null));
            }
            if let Some(next) = args.get(j + 1).map(|_| j + 1) {
                ev(chunk(json!({"tool_calls": [{"index": next, "id": format!("call_{next}"), "type": "function",
                                                "function": {"name": format!("fn_{next}"), "arguments": ""}}]}), Value::Null));
            }
        }
    }
    if interleave {
        let most = pieces.iter().map(Vec::len).max().unwrap_or(0);
        for i in 0..most {
            // one event may carry fragments of several calls
            let calls: Vec<Value> = pieces
                .iter()
                .enumerate()
                .filter_map(|(j, p)| p.get(i).map(|f| json!({"index": j, "function": {"arguments": f}})))
                .collect();
            ev(chunk(json!({"tool_calls": calls}), Value::Null));
        }
    }
    ev(chunk(json!({}), json!("tool_calls")));
    out.push_str("data: [DONE]");
    out.push_str(eol);
    out.push_str(eol);
    out
}

/// Checks a masked tool-call stream: valid SSE, every event JSON, the id and
/// name of each call kept, nothing after the finish chunk; returns the
/// assembled arguments by call index.
fn assemble_tool_calls(out: &[u8]) -> Vec<String> {
    let out = std::str::from_utf8(out).expect("UTF-8");
    let events = parse_sse(out);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut args: Vec<String> = Vec::new();
    let mut finished = false;
    for data in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(data).expect("chunk JSON");
        assert_eq!(v["id"], "chatcmpl-tool1");
        assert_eq!(v["object"], "chat.completion.chunk");
        assert!(!finished, "an event after the finish chunk: {data}");
        let ch = &v["choices"][0];
        for tc in ch["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let j = tc["index"].as_u64().expect("tool call index") as usize;
            if args.len() <= j {
                args.resize(j + 1, String::new());
            }
            if let Some(id) = tc.get("id") {
                assert_eq!(id, &json!(format!("call_{j}")));
                assert_eq!(tc["function"]["name"], json!(format!("fn_{j}")));
            }
            args[j].push_str(tc["function"]["arguments"].as_str().expect("arguments string"));
        }
        if ch["finish_reason"] == "tool_calls" {
            finished = true;
        }
    }
    assert!(finished, "no finish chunk");
    args
}

/// Tool-call arguments: JSON text holding the generated text and PII values.
fn tool_args() -> impl Strategy<Value = (Vec<String>, Vec<String>)> {
    prop::collection::vec(text(), 1..4).prop_map(|calls| {
        let mut pii = Vec::new();
        let args = calls
            .into_iter()
            .map(|(t, p)| {
                pii.extend(p);
                json!({"to": "someone", "body": t, "n": 3}).to_string()
            })
            .collect();
        (args, pii)
    })
}

/// A legacy completions (`/v1/completions`) SSE stream delivering `content`
/// in fragments of `choices[0].text`, a finish chunk with an empty text, and
/// `[DONE]`.
fn completions_sse(content: &str, frag: &[usize]) -> String {
    let chunk = |text: &str, finish: Value| {
        json!({"id": "cmpl-1", "object": "text_completion", "created": 1_700_000_000, "model": "gpt-3.5-turbo-instruct",
               "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]})
    };
    let mut out = String::new();
    let chars: Vec<char> = content.chars().collect();
    let (mut i, mut k) = (0, 0);
    while i < chars.len() {
        let n = frag[k % frag.len()];
        k += 1;
        let piece: String = chars[i..(i + n).min(chars.len())].iter().collect();
        i += n;
        out.push_str(&format!("data: {}\n\n", chunk(&piece, Value::Null)));
    }
    out.push_str(&format!("data: {}\n\ndata: [DONE]\n\n", chunk("", json!("length"))));
    out
}

proptest! {
    #![proptest_config(pt_config())]

    /// Tool-call arguments split at random points across events (sequential
    /// or interleaved parallel calls) and the bytes cut at random: the same
    /// output for any chunking, valid SSE and chunk JSON, each call's
    /// assembled arguments equal to masking its whole arguments at once as
    /// JSON (so they stay JSON), and no value survives.
    #[test]
    fn sse_tool_call_arguments_are_joined_across_events(
        (args, pii) in tool_args(),
        frag in prop::collection::vec(1usize..12, 1..50),
        interleave in any::<bool>(),
        crlf in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let m = masker(json!({}));
        let input = tool_sse(&args, &frag, interleave, if crlf { "\r\n" } else { "\n" });
        let (one, _, counts) = stream(&m, StreamKind::Sse, input.as_bytes(), &[]);
        let (out, _, cut_counts) = stream(&m, StreamKind::Sse, input.as_bytes(), &cuts);
        prop_assert_eq!(&out, &one);
        prop_assert_eq!(&cut_counts, &counts);
        let got = assemble_tool_calls(&out);
        // each call's arguments masked as one JSON document: still JSON
        let want: Vec<String> =
            args.iter().map(|a| String::from_utf8(m.mask_json(a.as_bytes(), &mut Counts::new()).expect("JSON")).unwrap()).collect();
        prop_assert_eq!(&got, &want);
        let out = String::from_utf8(out).unwrap();
        for v in &pii {
            // as it appears in the arguments (JSON) inside the event (JSON)
            let twice = serde_json::to_string(&serde_json::to_string(v).unwrap()).unwrap();
            prop_assert!(!out.contains(&twice[3..twice.len() - 3]), "{:?} survived", v);
        }
    }

    /// Legacy completions: `choices[].text` is joined the same way.
    #[test]
    fn sse_legacy_completion_text_is_joined_across_events(
        (content, pii) in text(),
        frag in prop::collection::vec(1usize..12, 1..100),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let m = masker(json!({}));
        let input = completions_sse(&content, &frag);
        let (one, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &[]);
        let (out, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &cuts);
        prop_assert_eq!(&out, &one);
        let out = String::from_utf8(out).unwrap();
        let events = parse_sse(&out);
        prop_assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let mut text = String::new();
        let mut finished = false;
        for data in &events[..events.len() - 1] {
            let v: Value = serde_json::from_str(data).expect("chunk JSON");
            prop_assert_eq!(&v["object"], "text_completion");
            prop_assert!(!finished, "an event after the finish chunk");
            text.push_str(v["choices"][0]["text"].as_str().expect("text"));
            finished = v["choices"][0]["finish_reason"] == "length";
        }
        prop_assert_eq!(text, m.mask_text(&content, &mut Counts::new()));
        for v in &pii {
            let enc = serde_json::to_string(v).unwrap();
            prop_assert!(!out.contains(&enc[1..enc.len() - 1]), "{:?} survived", v);
        }
    }
}

#[test]
fn sse_email_and_card_split_across_tool_call_argument_fragments() {
    let m = masker(json!({}));
    // OpenAI's shape: the call's head with an empty arguments string, then
    // fragments; the email and the card are each split across two events
    // (and a key, which the model chooses as well)
    let args = r#"{"to":"jane.doe@example.com","card":"4111 1111 1111 1111","note":"ok","ops@example.com":1}"#;
    let splits = [7, 14, 33, 45, 60, 76];
    let mut frags = Vec::new();
    let mut last = 0;
    for s in splits.iter().chain([args.len()].iter()) {
        frags.push(&args[last..*s]);
        last = *s;
    }
    assert!(frags.iter().all(|f| !f.contains("jane.doe@example.com") && !f.contains("4111 1111 1111 1111")));
    let ev = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-tool1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let mut input = ev(
        json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_0", "type": "function",
               "function": {"name": "fn_0", "arguments": ""}}]}),
        Value::Null,
    );
    for f in &frags {
        input += &ev(json!({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}), Value::Null);
    }
    input += &ev(json!({}), json!("tool_calls"));
    input += "data: [DONE]\n\n";
    for cuts in [vec![], (0..input.len()).collect::<Vec<_>>()] {
        let (out, _, counts) = stream(&m, StreamKind::Sse, input.as_bytes(), &cuts);
        let s = String::from_utf8(out.clone()).unwrap();
        assert!(!s.contains("jane") && !s.contains("1111") && !s.contains("ops@"), "{s}");
        assert_eq!(assemble_tool_calls(&out), vec![r#"{"to":"[EMAIL]","card":"[PAYMENT_CARD]","note":"ok","[EMAIL]":1}"#.to_string()]);
        assert_eq!(counts.get("email"), Some(&2));
        assert_eq!(counts.get("payment_card"), Some(&1));
    }
}

/// A `function_call` of another shape (a string, arguments as an object)
/// does not stop the chunk's `content` from being joined.
#[test]
fn sse_odd_function_call_shapes_keep_content_joined() {
    let m = masker(json!({}));
    for fc in [json!({"name": "f", "arguments": {"a": 1}}), json!("auto"), json!({"arguments": 5})] {
        let ev = |delta: Value, finish: Value| {
            format!("data: {}\n\n", json!({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}))
        };
        let input = ev(json!({"content": "card 4111 1111"}), Value::Null)
            + &ev(json!({"content": " 1111 1111 end", "function_call": fc}), Value::Null)
            + &ev(json!({}), json!("stop"))
            + "data: [DONE]\n\n";
        let (out, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &[]);
        let out = String::from_utf8(out).unwrap();
        let content: String = parse_sse(&out)
            .iter()
            .filter(|d| d.as_str() != "[DONE]")
            .filter_map(|d| serde_json::from_str::<Value>(d).unwrap()["choices"][0]["delta"]["content"].as_str().map(str::to_string))
            .collect();
        assert_eq!(content, "card [PAYMENT_CARD] end", "{fc}");
    }
}

/// The deprecated `functions` API streams `delta.function_call.arguments`
/// fragments; they are joined like tool-call arguments: held, masked as one
/// JSON document, sent when the choice finishes (or at `[DONE]` when no
/// finish chunk comes), however the bytes are cut.
#[test]
fn sse_legacy_function_call_arguments_are_joined_across_events() {
    let m = masker(json!({}));
    let args = r#"{"to":"jane.doe@example.com","card":4111111111111111,"note":"call +1 415-555-0134"}"#;
    let splits = [9, 17, 40, 47, 70];
    let mut frags = Vec::new();
    let mut last = 0;
    for s in splits.iter().chain([args.len()].iter()) {
        frags.push(&args[last..*s]);
        last = *s;
    }
    assert!(frags.iter().all(|f| !f.contains("jane.doe@example.com") && !f.contains("4111111111111111") && !f.contains("415-555-0134")));
    let ev = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-fn1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    for finish in [true, false] {
        let mut input = ev(json!({"role": "assistant", "content": null, "function_call": {"name": "send", "arguments": ""}}), Value::Null);
        for f in &frags {
            input += &ev(json!({"function_call": {"arguments": f}}), Value::Null);
        }
        if finish {
            input += &ev(json!({}), json!("function_call"));
        }
        input += "data: [DONE]\n\n";
        let (one, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &[]);
        for cuts in [vec![], (0..input.len()).collect::<Vec<_>>(), vec![5, 100, 101, 333, 334, 600]] {
            let (out, _, counts) = stream(&m, StreamKind::Sse, input.as_bytes(), &cuts);
            assert_eq!(out, one);
            let s = String::from_utf8(out).unwrap();
            assert!(!s.contains("jane") && !s.contains("4111") && !s.contains("0134"), "{s}");
            let events = parse_sse(&s);
            assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
            let mut joined = String::new();
            for data in &events[..events.len() - 1] {
                let v: Value = serde_json::from_str(data).expect("chunk JSON");
                assert_eq!(v["id"], "chatcmpl-fn1");
                if let Some(a) = v["choices"][0]["delta"]["function_call"]["arguments"].as_str() {
                    joined.push_str(a);
                }
            }
            let v: Value = serde_json::from_str(&joined).expect("joined arguments are JSON");
            assert_eq!(v, json!({"to": "[EMAIL]", "card": "[PAYMENT_CARD]", "note": "call [PHONE]"}));
            assert_eq!((counts.get("email"), counts.get("payment_card"), counts.get("phone")), (Some(&1), Some(&1), Some(&1)));
        }
    }
}

#[test]
fn sse_tool_calls_of_several_choices_and_content_are_kept_apart() {
    let m = masker(json!({}));
    let ev = |choices: Value| format!("data: {}\n\n", json!({"id": "x", "object": "chat.completion.chunk", "choices": choices}));
    let mut input = String::new();
    input += &ev(json!([{"index": 0, "delta": {"content": "mail a@exa", "tool_calls": [{"index": 0, "function": {"arguments": "{\"m\":\"b@exa"}}]}, "finish_reason": null},
                        {"index": 1, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"m\":\"c@exa"}}, {"index": 1, "function": {"arguments": "{\"m\":\"d@exa"}}]}, "finish_reason": null}]));
    input += &ev(json!([{"index": 1, "delta": {"tool_calls": [{"index": 1, "function": {"arguments": "mple.com\"}"}}, {"index": 0, "function": {"arguments": "mple.com\"}"}}]}, "finish_reason": null}]));
    input += &ev(json!([{"index": 0, "delta": {"content": "mple.com ok", "tool_calls": [{"index": 0, "function": {"arguments": "mple.com\"}"}}]}, "finish_reason": "stop"}]));
    // choice 1 never finishes: flushed at the end of the stream
    let (out, _, counts) = stream(&m, StreamKind::Sse, input.as_bytes(), &[]);
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains("exa"), "{out}");
    let mut content = String::new();
    let mut args: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for d in parse_sse(&out) {
        let v: Value = serde_json::from_str(&d).unwrap();
        for ch in v["choices"].as_array().unwrap() {
            let i = ch["index"].as_u64().unwrap();
            content.push_str(ch["delta"]["content"].as_str().unwrap_or(""));
            for tc in ch["delta"]["tool_calls"].as_array().into_iter().flatten() {
                args.entry((i, tc["index"].as_u64().unwrap())).or_default().push_str(tc["function"]["arguments"].as_str().unwrap());
            }
        }
    }
    assert_eq!(content, "mail [EMAIL] ok");
    let want: BTreeMap<(u64, u64), String> = [(0, 0), (1, 0), (1, 1)].into_iter().map(|k| (k, "{\"m\":\"[EMAIL]\"}".to_string())).collect();
    assert_eq!(args, want);
    assert_eq!(counts.get("email"), Some(&4));
}

/// `logprobs: true` on a chat stream: each chunk repeats its tokens in
/// `choices[].logprobs.content`, where an email cut across tokens could be
/// read back. They are withheld (null) by default, under any chunking.
#[test]
fn sse_logprobs_are_withheld() {
    let tokens = ["Mail", " jane", ".doe", "@exam", "ple.com", " now"];
    let mut input = String::new();
    for (i, t) in tokens.iter().enumerate() {
        let lp = json!({"content": [{"token": t, "logprob": -0.5, "bytes": t.as_bytes(), "top_logprobs": [{"token": t, "logprob": -0.5, "bytes": t.as_bytes()}]}], "refusal": null});
        let finish = if i + 1 == tokens.len() { json!("stop") } else { Value::Null };
        sse_event(&mut input, &json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                      "choices": [{"index": 0, "delta": {"content": t}, "logprobs": lp, "finish_reason": finish}]}), "\n");
    }
    input.push_str("data: [DONE]\n\n");
    for (cfg, withheld) in [(json!({}), true), (json!({"logprobs": "mask"}), false)] {
        let m = masker(cfg);
        for cuts in [vec![], (0..input.len()).step_by(7).collect::<Vec<_>>()] {
            let (out, _, counts) = stream(&m, StreamKind::Sse, input.as_bytes(), &cuts);
            let out = String::from_utf8(out).unwrap();
            let mut text = String::new();
            for d in parse_sse(&out).iter().filter(|d| *d != "[DONE]") {
                let v: Value = serde_json::from_str(d).unwrap();
                text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
                if withheld {
                    assert_eq!(v["choices"][0]["logprobs"], Value::Null, "{d}");
                }
            }
            assert_eq!(text, "Mail [EMAIL] now");
            if withheld {
                assert!(!out.contains("jane") && !out.contains("exam"), "{out}");
                assert_eq!(counts.get("logprobs"), Some(&(tokens.len() as u64)));
            } else {
                // `mask`: the tokens pass one by one (the accepted risk)
                assert!(out.contains(".doe"), "{out}");
            }
        }
    }
}


/// An OpenAI Responses API stream (`POST /v1/responses`, `stream: true`):
/// a message whose text arrives in `response.output_text.delta` fragments,
/// then a function call whose arguments arrive in
/// `response.function_call_arguments.delta` fragments; `.done` events, the
/// items' `done` events and `response.completed` repeat the whole values.
/// Each event has an `event:` line when `named`.
fn responses_sse(text: &str, args: &str, frag: &[usize], named: bool, eol: &str) -> String {
    let mut out = String::new();
    let mut seq = 0u64;
    let mut ev = |mut v: Value| {
        v["sequence_number"] = json!(seq);
        seq += 1;
        if named {
            out.push_str(&format!("event: {}{eol}", v["type"].as_str().unwrap()));
        }
        sse_event(&mut out, &v, eol);
    };
    let resp = |status: &str, output: Value| json!({"id": "resp_1", "object": "response", "created_at": 1, "status": status, "model": "m", "output": output});
    let msg = |t: &str, status: &str| {
        json!({"id": "msg_1", "type": "message", "status": status, "role": "assistant",
               "content": if status == "in_progress" { json!([]) } else { json!([{"type": "output_text", "text": t, "annotations": [], "logprobs": []}]) }})
    };
    let call = |a: &str, status: &str| json!({"id": "fc_1", "type": "function_call", "status": status, "call_id": "call_1", "name": "send_mail", "arguments": a});
    ev(json!({"type": "response.created", "response": resp("in_progress", json!([]))}));
    ev(json!({"type": "response.output_item.added", "output_index": 0, "item": msg("", "in_progress")}));
    ev(json!({"type": "response.content_part.added", "item_id": "msg_1", "output_index": 0, "content_index": 0,
              "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}));
    for p in pieces(text, frag) {
        ev(json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": p, "logprobs": []}));
    }
    ev(json!({"type": "response.output_text.done", "item_id": "msg_1", "output_index": 0, "content_index": 0, "text": text, "logprobs": []}));
    ev(json!({"type": "response.content_part.done", "item_id": "msg_1", "output_index": 0, "content_index": 0,
              "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}}));
    ev(json!({"type": "response.output_item.done", "output_index": 0, "item": msg(text, "completed")}));
    ev(json!({"type": "response.output_item.added", "output_index": 1, "item": call("", "in_progress")}));
    for p in pieces(args, frag) {
        ev(json!({"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 1, "delta": p}));
    }
    ev(json!({"type": "response.function_call_arguments.done", "item_id": "fc_1", "output_index": 1, "arguments": args}));
    ev(json!({"type": "response.output_item.done", "output_index": 1, "item": call(args, "completed")}));
    ev(json!({"type": "response.completed", "response": resp("completed", json!([msg(text, "completed"), call(args, "completed")]))}));
    out
}

/// What a Responses API client assembles: the message text and the
/// arguments from the deltas, and the same values from the `.done` events,
/// the items' `done` events and `response.completed` (in that order).
fn assemble_responses(out: &str) -> (String, String, Vec<String>, Vec<String>) {
    let (mut text, mut args, mut texts, mut argss) = (String::new(), String::new(), Vec::new(), Vec::new());
    let (mut text_done, mut args_done) = (false, false);
    let mut last_seq = None;
    for d in parse_sse(out) {
        let v: Value = serde_json::from_str(&d).expect("event JSON");
        let seq = v["sequence_number"].as_u64().expect("sequence_number");
        assert!(last_seq.is_none_or(|l| seq >= l), "sequence numbers go back: {d}");
        last_seq = Some(seq);
        match v["type"].as_str().expect("type") {
            "response.output_text.delta" => {
                assert!(!text_done, "a text delta after its done event");
                text.push_str(v["delta"].as_str().unwrap());
            }
            "response.function_call_arguments.delta" => {
                assert!(!args_done, "an arguments delta after its done event");
                args.push_str(v["delta"].as_str().unwrap());
            }
            "response.output_text.done" => {
                text_done = true;
                texts.push(v["text"].as_str().unwrap().to_string());
            }
            "response.content_part.done" => texts.push(v["part"]["text"].as_str().unwrap().to_string()),
            "response.function_call_arguments.done" => {
                args_done = true;
                argss.push(v["arguments"].as_str().unwrap().to_string());
            }
            "response.output_item.done" => match v["item"]["type"].as_str() {
                Some("message") => texts.push(v["item"]["content"][0]["text"].as_str().unwrap().to_string()),
                _ => argss.push(v["item"]["arguments"].as_str().unwrap().to_string()),
            },
            "response.completed" => {
                texts.push(v["response"]["output"][0]["content"][0]["text"].as_str().unwrap().to_string());
                argss.push(v["response"]["output"][1]["arguments"].as_str().unwrap().to_string());
            }
            _ => {}
        }
    }
    (text, args, texts, argss)
}

proptest! {
    #![proptest_config(pt_config())]

    /// Responses API: the message text and the function-call arguments are
    /// joined across delta events; any chunking gives the same output; the
    /// deltas add up to masking the whole value once, which is also what the
    /// `.done`, item `done` and `response.completed` events carry; framing,
    /// `event:` lines, event JSON and order stay valid; no value survives.
    #[test]
    fn sse_responses_api_deltas_are_joined_across_events(
        (content, pii) in text(),
        (args, arg_pii) in tool_args(),
        frag in prop::collection::vec(1usize..12, 1..60),
        named in any::<bool>(),
        crlf in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let m = masker(json!({}));
        let args = &args[0];
        let input = responses_sse(&content, args, &frag, named, if crlf { "\r\n" } else { "\n" });
        let (one, _, counts) = stream(&m, StreamKind::Sse, input.as_bytes(), &[]);
        let (out, _, cut_counts) = stream(&m, StreamKind::Sse, input.as_bytes(), &cuts);
        prop_assert_eq!(&out, &one);
        prop_assert_eq!(&cut_counts, &counts);
        let out = String::from_utf8(out).unwrap();
        let (text, got_args, texts, argss) = assemble_responses(&out);
        let want = m.mask_text(&content, &mut Counts::new());
        // arguments are masked as one JSON document (as chat tool calls)
        let want_args = String::from_utf8(m.mask_json(args.as_bytes(), &mut Counts::new()).expect("JSON")).unwrap();
        prop_assert_eq!(&text, &want);
        prop_assert_eq!(&got_args, &want_args);
        prop_assert_eq!(texts, vec![want.clone(); 4]);
        prop_assert_eq!(argss, vec![want_args.clone(); 3]);
        if named {
            for block in out.replace("\r\n", "\n").split("\n\n").filter(|b| !b.is_empty()) {
                let (first, data) = block.split_once('\n').expect("event and data lines");
                let v: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                prop_assert_eq!(first.strip_prefix("event: "), v["type"].as_str());
            }
        }
        for v in pii.iter().chain(&arg_pii) {
            let enc = serde_json::to_string(v).unwrap();
            prop_assert!(!out.contains(&enc[1..enc.len() - 1]), "{:?} survived", v);
        }
    }
}

#[test]
fn responses_api_email_split_across_deltas_is_caught() {
    let m = masker(json!({}));
    let text = "Write to jane.doe@example.com or call +1 415 555 0134 today, please.";
    let input = responses_sse(text, r#"{"to":"jane.doe@example.com"}"#, &[3, 5, 2], true, "\n");
    for cuts in [vec![], (0..input.len()).collect::<Vec<_>>()] {
        let (out, _, counts) = stream(&m, StreamKind::Sse, input.as_bytes(), &cuts);
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("jane") && !out.contains("0134"), "{out}");
        let (text, args, _, _) = assemble_responses(&out);
        assert_eq!(text, "Write to [EMAIL] or call [PHONE] today, please.");
        assert_eq!(args, r#"{"to":"[EMAIL]"}"#);
        // counted once per value in the deltas, again where done events repeat it
        assert!(counts.get("email").is_some_and(|n| *n >= 2), "{counts:?}");
    }
}

/// One SSE event from a grammar of near-valid shapes: chat chunks and
/// Responses API events with missing, repeated or ill-typed members, other
/// JSON, `[DONE]`, comments, garbage lines.
fn odd_event() -> impl Strategy<Value = String> {
    let frag = prop_oneof![prop::sample::select(FRAGMENTS).prop_map(str::to_string), "[a-z@. 0-9-]{0,8}"];
    let family = prop::sample::select(vec![
        "response.output_text", "response.function_call_arguments", "response.refusal", "response.audio", "response.reasoning_summary_text", "x",
    ]);
    let suffix = prop::sample::select(vec![".delta", ".done", ""]);
    let idx = prop_oneof![Just(json!(0)), Just(json!(1)), Just(json!(-1)), Just(json!("0")), Just(Value::Null), Just(json!(18446744073709551615u64))];
    let resp = (family, suffix, frag.clone(), idx.clone(), any::<bool>(), any::<bool>()).prop_map(|(f, s, d, i, item, text)| {
        let mut v = json!({"type": format!("{f}{s}"), "output_index": i, "sequence_number": 1});
        if item {
            v["item_id"] = json!("it");
        }
        v[if text { "delta" } else { "arguments" }] = if d.len() % 5 == 4 { json!({"text": d}) } else { json!(d) };
        format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap_or(""))
    });
    let chat = (frag.clone(), idx, prop::option::of(prop::sample::select(vec!["stop", "tool_calls"])), any::<bool>()).prop_map(|(d, i, fin, tool)| {
        let delta = if tool { json!({"tool_calls": [{"index": i, "function": {"arguments": d}}]}) } else { json!({"content": d}) };
        format!("data: {}\n\n", json!({"choices": [{"index": i, "delta": delta, "finish_reason": fin, "logprobs": {"content": [{"token": "x"}]}}]}))
    });
    let other = prop_oneof![
        Just("data: [DONE]\n\n".to_string()),
        Just(": keep-alive\n\n".to_string()),
        Just("data: {\"type\": \"response.completed\"}\n\n".to_string()),
        Just("data: {\"choices\": null}\n\n".to_string()),
        Just("data: [1, 2\n\n".to_string()),
        frag.prop_map(|f| format!("data: {f}\r\n\r\n")),
    ];
    prop_oneof![3 => resp, 2 => chat, 1 => other]
}

proptest! {
    #![proptest_config(pt_config())]

    /// Near-valid SSE of every shape never makes the masker panic, gives the
    /// same output for any chunking, and leaves nothing held after the end.
    #[test]
    fn sse_odd_events_are_total_and_chunking_invariant(
        events in prop::collection::vec(odd_event(), 0..40),
        cuts in prop::collection::vec(any::<usize>(), 0..30),
    ) {
        let m = masker(json!({}));
        let input = events.concat();
        let (one, _, counts) = stream(&m, StreamKind::Sse, input.as_bytes(), &[]);
        let (out, _, cut_counts) = stream(&m, StreamKind::Sse, input.as_bytes(), &cuts);
        prop_assert_eq!(&out, &one);
        prop_assert_eq!(&cut_counts, &counts);
        prop_assert!(String::from_utf8(out).is_ok());
        let mut s = m.stream(StreamKind::Sse);
        let mut c = Counts::new();
        s.push(input.as_bytes(), &mut c);
        s.finish(&mut c);
        prop_assert_eq!(s.held(), 0);
    }
}

/// A chat stream from a reasoning model on an OpenAI-compatible server:
/// `delta.<field>` fragments (vLLM/DeepSeek `reasoning_content`, then the
/// answer in `content`), then a finish chunk and `[DONE]`.
fn reasoning_sse(fields: &[(&str, &str)], frag: &[usize]) -> String {
    let mut out = String::new();
    for (field, text) in fields {
        for p in pieces(text, frag) {
            let mut delta = serde_json::Map::new();
            delta.insert((*field).to_string(), json!(p));
            sse_event(&mut out, &json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                        "choices": [{"index": 0, "delta": delta, "finish_reason": null}]}), "\n");
        }
    }
    sse_event(&mut out, &json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}), "\n");
    out.push_str("data: [DONE]\n\n");
    out
}

proptest! {
    #![proptest_config(pt_config())]

    /// Reasoning text and refusals are joined like the answer: per field,
    /// the fragments the client adds up equal masking the whole text once,
    /// for any chunking, and no value survives in any field.
    #[test]
    fn sse_reasoning_and_refusal_fields_are_joined_across_events(
        (reasoning, pii) in text(),
        (answer, pii2) in text(),
        field in prop::sample::select(vec!["reasoning_content", "reasoning", "refusal"]),
        frag in prop::collection::vec(1usize..12, 1..60),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let m = masker(json!({}));
        let input = reasoning_sse(&[(field, &reasoning), ("content", &answer)], &frag);
        let (one, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &[]);
        let (out, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &cuts);
        prop_assert_eq!(&out, &one);
        let out = String::from_utf8(out).unwrap();
        let (mut got, mut got_answer) = (String::new(), String::new());
        for d in parse_sse(&out).iter().filter(|d| *d != "[DONE]") {
            let v: Value = serde_json::from_str(d).expect("chunk JSON");
            got.push_str(v["choices"][0]["delta"][field].as_str().unwrap_or(""));
            got_answer.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        }
        prop_assert_eq!(got, m.mask_text(&reasoning, &mut Counts::new()));
        prop_assert_eq!(got_answer, m.mask_text(&answer, &mut Counts::new()));
        for v in pii.iter().chain(&pii2) {
            let enc = serde_json::to_string(v).unwrap();
            prop_assert!(!out.contains(&enc[1..enc.len() - 1]), "{:?} survived", v);
        }
    }
}

/// A chunk of another shape (Mistral sends `content` as an array of parts;
/// a string `index`) is not joined, but the text held so far goes out
/// before it: text never changes order, and the parts are masked.
#[test]
fn sse_chunk_of_another_shape_flushes_held_text_first() {
    let m = masker(json!({}));
    let chunk = |delta: Value, fin: Value| json!({"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": fin}]});
    for odd in [json!({"content": [{"type": "text", "text": " call 415-555-0134 ok"}]}), json!({"content": " call 415-555-0134 ok", "x": 1})] {
        let mut input = String::new();
        sse_event(&mut input, &chunk(json!({"content": "hello there, my card is 4111 1111 1111 1111 and"}), Value::Null), "\n");
        let mut second = chunk(odd.clone(), Value::Null);
        if odd.get("x").is_some() {
            second["choices"][0]["index"] = json!("0");
        }
        sse_event(&mut input, &second, "\n");
        sse_event(&mut input, &chunk(json!({"content": " more"}), json!("stop")), "\n");
        let (out, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &[]);
        let out = String::from_utf8(out).unwrap();
        let mut text = String::new();
        for d in parse_sse(&out) {
            let v: Value = serde_json::from_str(&d).unwrap();
            match &v["choices"][0]["delta"]["content"] {
                Value::String(s) => text.push_str(s),
                Value::Array(parts) => text.push_str(parts[0]["text"].as_str().unwrap()),
                _ => {}
            }
        }
        assert_eq!(text, "hello there, my card is [PAYMENT_CARD] and call [PHONE] ok more", "{out}");
    }
}

/// Streamed arguments: numbers are masked, non-JSON arguments with escapes
/// and arguments over 1 MiB are withheld whole (never streamed as text),
/// and a Responses API `.done` event repeats exactly what the deltas add up to.
#[test]
fn sse_arguments_edge_cases_fail_closed() {
    let m = masker(json!({}));
    let big = format!(r#"{{"pad":"{}","c":"x\n4111111111111111"}}"#, "a ".repeat(600_000));
    for (args, want) in [
        (r#"{"card_number":4111111111111111}"#.to_string(), r#"{"card_number":"[PAYMENT_CARD]"}"#.to_string()),
        (r#"{"x":"\udc00","c":"x\n4111111111111111"}"#.to_string(), "\"[ARGUMENTS]\"".to_string()),
        (big, "\"[ARGUMENTS]\"".to_string()),
    ] {
        let (a, b) = args.split_at(args.len() / 2);
        let mut input = String::new();
        for (t, d) in [("response.function_call_arguments.delta", a), ("response.function_call_arguments.delta", b)] {
            sse_event(&mut input, &json!({"type": t, "item_id": "fc", "output_index": 0, "delta": d}), "\n");
        }
        sse_event(&mut input, &json!({"type": "response.function_call_arguments.done", "item_id": "fc", "output_index": 0, "arguments": args}), "\n");
        let (out, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &[]);
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("4111"), "{}", &out[..out.len().min(300)]);
        let mut joined = String::new();
        let mut done = None;
        for d in parse_sse(&out) {
            let v: Value = serde_json::from_str(&d).unwrap();
            match v["type"].as_str() {
                Some("response.function_call_arguments.delta") => joined.push_str(v["delta"].as_str().unwrap()),
                _ => done = v["arguments"].as_str().map(str::to_string),
            }
        }
        assert_eq!(joined, want);
        if args.len() < 1024 * 1024 {
            assert_eq!(done.as_deref(), Some(want.as_str()));
        }
    }
}

/// Armor headers with no footer, one after another (model output can be
/// anything): a block ends at the next `-----BEGIN `, so a header is only
/// held until the next one arrives — the stream does not hold (and rescan)
/// a 32 KiB window per header — and the output equals one-shot masking.
#[test]
fn repeated_pem_headers_are_not_held() {
    let m = masker(json!({}));
    for hdr in ["-----BEGIN RSA PRIVATE KEY-----\n", "-----BEGIN PRIVATE KEY----- ", "-----BEGIN EC PRIVATE KEY-----\nMIIE\n"] {
        let input = hdr.repeat((64 << 10) / hdr.len());
        let mut s = m.stream(StreamKind::Text);
        let mut counts = Counts::new();
        let mut out = Vec::new();
        let mut most = 0;
        for ch in input.as_bytes().chunks(256) {
            out.extend(s.push(ch, &mut counts));
            most = most.max(s.held());
        }
        out.extend(s.finish(&mut counts));
        assert_eq!(String::from_utf8(out).unwrap(), m.mask_text(&input, &mut Counts::new()));
        assert!(most < 1024, "{hdr:?}: held up to {most} bytes");
    }
    // a real key is still held until its footer and masked whole
    let key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n";
    let text = format!("key: {key}done");
    let (out, _, _) = stream(&m, StreamKind::Text, text.as_bytes(), &(0..text.len()).collect::<Vec<_>>());
    assert_eq!(String::from_utf8(out).unwrap(), "key: [PRIVATE_KEY]\ndone");
}

/// An Anthropic Messages API stream (`POST /v1/messages`, `stream: true`),
/// every event after its `event:` line: `message_start`; a thinking block
/// (`thinking_delta` fragments, then a `signature_delta`), a text block
/// (`text_delta`) and a tool-use block (`input_json_delta`, starting with an
/// empty fragment, as Anthropic sends it), each between its
/// `content_block_start` and `content_block_stop`; `message_delta`,
/// `message_stop`.
fn anthropic_sse(thinking: &str, text: &str, input: &str, frag: &[usize], eol: &str) -> String {
    let mut out = String::new();
    let mut ev = |v: Value| {
        out.push_str("event: ");
        out.push_str(v["type"].as_str().unwrap());
        out.push_str(eol);
        out.push_str("data: ");
        out.push_str(&v.to_string());
        out.push_str(eol);
        out.push_str(eol);
    };
    ev(json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
              "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 10, "output_tokens": 1}}}));
    ev(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}));
    for p in pieces(thinking, frag) {
        ev(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": p}}));
    }
    ev(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": SIGNATURE}}));
    ev(json!({"type": "content_block_stop", "index": 0}));
    ev(json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}));
    for p in pieces(text, frag) {
        ev(json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": p}}));
    }
    ev(json!({"type": "content_block_stop", "index": 1}));
    ev(json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "send", "input": {}}}));
    ev(json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}}));
    for p in pieces(input, frag) {
        ev(json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": p}}));
    }
    ev(json!({"type": "content_block_stop", "index": 2}));
    ev(json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 42}}));
    ev(json!({"type": "message_stop"}));
    out
}

const SIGNATURE: &str = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds";

/// Checks a masked Anthropic stream: each event's `event:` line names its
/// `type`, events stay JSON, a block's deltas come between its start and
/// stop, the signature is kept; returns the joined thinking, text and tool
/// input.
fn assemble_anthropic(out: &str) -> (String, String, String) {
    let (mut thinking, mut text, mut input) = (String::new(), String::new(), String::new());
    let mut open: Option<u64> = None;
    let mut stopped = Vec::new();
    let mut signature = None;
    for block in out.replace("\r\n", "\n").split("\n\n").filter(|b| !b.is_empty()) {
        let (first, data) = block.split_once('\n').expect("event and data lines");
        let v: Value = serde_json::from_str(data.strip_prefix("data: ").expect("data line")).expect("event JSON");
        assert_eq!(first.strip_prefix("event: "), v["type"].as_str());
        match v["type"].as_str().unwrap() {
            "content_block_start" => open = v["index"].as_u64(),
            "content_block_stop" => {
                assert_eq!(open, v["index"].as_u64());
                stopped.push(open.take());
            }
            "content_block_delta" => {
                assert_eq!(open, v["index"].as_u64(), "a delta outside its block: {data}");
                let d = &v["delta"];
                match d["type"].as_str().unwrap() {
                    "thinking_delta" => thinking.push_str(d["thinking"].as_str().unwrap()),
                    "text_delta" => text.push_str(d["text"].as_str().unwrap()),
                    "input_json_delta" => input.push_str(d["partial_json"].as_str().unwrap()),
                    "signature_delta" => signature = d["signature"].as_str().map(str::to_string),
                    other => panic!("unexpected delta {other}"),
                }
            }
            _ => {}
        }
    }
    assert_eq!(stopped, vec![Some(0), Some(1), Some(2)]);
    assert_eq!(signature.as_deref(), Some(SIGNATURE));
    (thinking, text, input)
}

proptest! {
    #![proptest_config(pt_config())]

    /// Anthropic Messages API streams: thinking and text deltas are joined
    /// per content block and masked as text; tool input (`input_json_delta`)
    /// is held and masked as one JSON document; the output is the same
    /// under any chunking and no value survives.
    #[test]
    fn sse_anthropic_content_block_deltas_are_joined(
        (thinking, pii_a) in text(),
        (content, pii_b) in text(),
        (args, arg_pii) in tool_args(),
        frag in prop::collection::vec(1usize..12, 1..60),
        crlf in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let m = masker(json!({}));
        let input = anthropic_sse(&thinking, &content, &args[0], &frag, if crlf { "\r\n" } else { "\n" });
        let (one, _, counts) = stream(&m, StreamKind::Sse, input.as_bytes(), &[]);
        let (out, _, cut_counts) = stream(&m, StreamKind::Sse, input.as_bytes(), &cuts);
        prop_assert_eq!(&out, &one);
        prop_assert_eq!(&cut_counts, &counts);
        let out = String::from_utf8(out).unwrap();
        let (t, c, a) = assemble_anthropic(&out);
        prop_assert_eq!(t, m.mask_text(&thinking, &mut Counts::new()));
        prop_assert_eq!(c, m.mask_text(&content, &mut Counts::new()));
        let want_args = String::from_utf8(m.mask_json(args[0].as_bytes(), &mut Counts::new()).expect("JSON")).unwrap();
        prop_assert_eq!(a, want_args);
        for v in pii_a.iter().chain(&pii_b).chain(&arg_pii) {
            let enc = serde_json::to_string(v).unwrap();
            prop_assert!(!out.contains(&enc[1..enc.len() - 1]), "{:?} survived", v);
        }
    }
}

#[test]
fn anthropic_email_split_across_text_deltas_is_caught() {
    let m = masker(json!({}));
    let input = anthropic_sse("mail jane.", "write to jane.doe@example.com today", r#"{"card":"4111 1111 1111 1111"}"#, &[14, 3, 9], "\n");
    // the values are split across events in the input
    assert!(!input.contains("jane.doe@example.com") && !input.contains("4111 1111 1111 1111"));
    for cuts in [vec![], (0..input.len()).step_by(7).collect::<Vec<_>>()] {
        let (out, _, counts) = stream(&m, StreamKind::Sse, input.as_bytes(), &cuts);
        let out = String::from_utf8(out).unwrap();
        let (t, c, a) = assemble_anthropic(&out);
        assert_eq!((t.as_str(), c.as_str(), a.as_str()), ("mail jane.", "write to [EMAIL] today", r#"{"card":"[PAYMENT_CARD]"}"#));
        assert!(!out.contains("doe@") && !out.contains("1111"), "{out}");
        assert_eq!((counts.get("email"), counts.get("payment_card")), (Some(&1), Some(&1)));
    }
}

#[test]
fn sse_events_that_are_not_strict_json_are_withheld() {
    // Python's json.loads (the OpenAI SDK) reads NaN/Infinity, lone surrogates
    // and repeated members; masked as text they would leak (escapes, splits)
    let m = masker(json!({}));
    let chunk = |content: &str, extra: &str| {
        format!("data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}}{extra}}}]}}\n\n")
    };
    for extra in [r#","logprobs":{"content":[{"token":"a","logprob":-Infinity}]}"#, r#","x":NaN"#, r#","index":0"#] {
        let input = format!("{}{}data: [DONE]\n\n", chunk("mail jane.doe@", extra), chunk("example.com now", extra));
        let (out, _, counts) = stream(&m, StreamKind::Sse, input.as_bytes(), &[]);
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("example.com") && !out.contains("jane.doe"), "{extra}: {out}");
        assert_eq!(counts.get("unmaskable_event"), Some(&2), "{extra}: {out}");
        assert!(out.contains("\"unmaskable_event\"") && out.ends_with("data: [DONE]\n\n"), "{out}");
    }
    let escaped = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a jane\\u0040example.com\"}}],\"id\":\"\\ud83d\"}\n\n";
    let (out, _, _) = stream(&m, StreamKind::Sse, escaped.as_bytes(), &[]);
    assert!(!String::from_utf8_lossy(&out).contains("example.com"), "{}", String::from_utf8_lossy(&out));
    // text that is not JSON-looking is still masked as text
    let (out, _, _) = stream(&m, StreamKind::Sse, b"data: mail jane.doe@example.com now\n\n", &[]);
    assert_eq!(String::from_utf8(out).unwrap(), "data: mail [EMAIL] now\n\n");
}

#[test]
fn backend_credentials_are_redacted_in_streams() {
    let m = masker(json!({})).with_credentials(&["backend-secret-0123456789".to_string()]);
    let input = "invalid key backend-secret-0123456789 given\n";
    for cut in 0..input.len() {
        let (out, _, counts) = stream(&m, StreamKind::Text, input.as_bytes(), &[cut]);
        assert_eq!(String::from_utf8(out).unwrap(), "invalid key [BACKEND_CREDENTIAL] given\n", "cut {cut}");
        assert_eq!(counts.get("backend_credential"), Some(&1));
    }
}

/// A PEM header split by an invisible character (`-----BEGIN \u{200b}RSA
/// PRIVATE KEY-----`) is held until its footer, as an unsplit one is:
/// the whole block is masked as one, whatever the chunking.
#[test]
fn pem_header_with_invisible_characters_is_held_until_its_footer() {
    let m = masker(json!({}));
    let body = "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6\nffAt0gunVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18\n".repeat(4);
    for header in ["-----BEGIN \u{200b}RSA PRIVATE KEY-----", "-----BEGIN RSA PRIVATE\u{ad} KEY-----"] {
        let text = format!("key: {header}\n{body}not base64 here, {}\n-----END RSA PRIVATE KEY-----\nbye {}", "then more words ".repeat(20), "x ".repeat(80));
        let whole = assert_steps_match_whole(&m, &text, &[1, 7, 64, 200]);
        assert!(whole.starts_with("key: [PRIVATE_KEY]\nbye"), "{whole}");
    }
}

/// A form feed ends a token for the stream's cuts, and so for the form
/// bodies and escaped query strings whose `+` is a space, as does any
/// space after a `%` that starts no escape: a value after one is decided
/// the same way whatever the chunking.
#[test]
fn form_feed_ends_a_form_token_as_a_stream_cut_does() {
    let m = masker(json!({}));
    for text in [
        // (a lone `%` is no escape: the space after it ends the token)
        format!("{} %3Fc%3D4111%2B1111%2B1111%2B1111%20{} end", "%".repeat(128), "z".repeat(130)),
        format!("x%3Fc%3D{}% 4111%2B1111%2B1111%2B1111%20{} end", "a".repeat(125), "z".repeat(130)),
        format!("x%3Fc%3D{}%\n4111%2B1111%2B1111%2B1111%20{} end", "a".repeat(125), "z".repeat(130)),
        format!("x%23f{}% x%3Fc%3D4111%2B1111%2B1111%2B1111%20{} end", "a".repeat(125), "z".repeat(130)),
        format!("%3Fc%3D{}\x0c4111%2B1111%2B1111%2B1111 {}", "a".repeat(121), "x ".repeat(70)),
        format!("q=x&{}\x0c4111+1111+1111+1111 {}", "a".repeat(140), "word ".repeat(60)),
        format!("%3Fc%3D{}\x0cq=x&4111+1111+1111+1111 {}", "a".repeat(140), "word ".repeat(60)),
    ] {
        assert_steps_match_whole(&m, &text, &[1, 7, 100, 263]);
        for cut in [1, 130, text.len() - 5] {
            let (out, _, _) = stream(&m, StreamKind::Text, text.as_bytes(), &[cut]);
            assert_eq!(String::from_utf8(out).unwrap(), m.mask_text(&text, &mut Counts::new()), "cut at {cut}");
        }
    }
    // (and the card of a query that starts after them is masked, however
    // many `%` come before)
    for k in 126..=128 {
        let text = format!("{} %3Fc%3D4111%2B1111%2B1111%2B1111%20 end", "%".repeat(k));
        assert!(m.mask_text(&text, &mut Counts::new()).contains("%3Fc%3D[PAYMENT_CARD]%20 end"), "{text}");
    }
}

/// A PEM header split by an invisible character and followed by more
/// invisible padding than a stream may hold is decided when its window
/// (counted in bytes as written) is over: its header and base64 lines are
/// masked, not released.
#[test]
fn pem_header_with_invisible_characters_and_long_padding_is_masked() {
    let m = masker(json!({}));
    let text = format!(
        "-----BEGIN \u{200b}RSA PRIVATE KEY-----\n{}{}\n-----END RSA PRIVATE KEY-----\nbye {}",
        "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6\n".repeat(5),
        "\u{200b}".repeat(22000),
        "x ".repeat(70)
    );
    for step in [1, 100, 4096] {
        let cuts: Vec<usize> = (1..text.len() / step).map(|i| i * step).collect();
        let (out, _, _) = stream(&m, StreamKind::Text, text.as_bytes(), &cuts);
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("MIIE") && !out.contains("BEGIN") && out.contains("[PRIVATE_KEY]"), "step {step}: {}", &out[..200.min(out.len())]);
    }
}

/// A private key whose body runs past the header's window (32 KiB) and
/// then ends with its footer: whole text masks the header's window and
/// the footer's window (the 32 KiB of lines before it), so a key under
/// 64 KiB is masked whole. A stream, in whatever pushes, holds the base64
/// lines a footer may still end (the last 32 KiB) and masks the same;
/// likewise a key tail cut from its header (the footer's window only).
#[test]
fn long_pem_block_in_small_pushes_is_masked_as_whole_text() {
    let m = masker(json!({}));
    for (lines, header) in [(700usize, true), (900, true), (1200, true), (1500, true), (2000, true), (700, false), (1200, false)] {
        let body: String = (0..lines).map(|i| format!("MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo{i:04}\n")).collect();
        let head = if header { "-----BEGIN PRIVATE KEY-----\n" } else { "" };
        let input = format!("key follows\n{head}{body}-----END PRIVATE KEY-----\nthanks and bye now {}", "x ".repeat(100));
        let whole = assert_steps_match_whole(&m, &input, &[1, 7, 100, 1000, 4096]);
        let window = if header { 64 * 1024 } else { 32 * 1024 };
        assert_eq!(!whole.contains("MIIE"), body.len() < window, "{lines} lines, header {header}");
    }
}

/// The left context a stream keeps after a release counts visible bytes:
/// invisible characters (raw, JSON-escaped or percent-escaped) before a
/// value are kept whole, so a detector that reads back across a space
/// (a phone after another number's digit group is no phone) sees what
/// whole text sees, not a stray byte of a cut escape.
#[test]
fn left_context_keeps_invisible_padding_whole() {
    let m = masker(json!({}));
    let y = "y".repeat(128);
    for input in [
        format!("{} 415 555 0134,{y}", "\\u2060".repeat(22)),
        format!("x{} 415 555 0134,{y}", "\\u2060".repeat(22)),
        format!("{} 415 555 0134,{y}", "%E2%81%A0".repeat(15)),
        format!("{} 0044 20 7946 0958,{y}", "\\u2060".repeat(22)),
        format!("{} 415-555-0134,{y}", "\\u2060".repeat(22)),
        format!("9{} 415\u{200b}\u{a0}555\u{a0}0134,{y}", "\u{200b}".repeat(43)),
        format!("9{} 415\u{a0}555\u{a0}0134,{y}", "\\u200b".repeat(22)),
    ] {
        let whole = assert_steps_match_whole(&m, &input, &[1, 3, 7, 64, input.len()]);
        if !input.starts_with('9') {
            assert!(whole.contains("[PHONE]"), "{whole}");
        }
    }
}

/// A key tail whose first line is indented at the very start of the text
/// is masked however the stream is cut: a release never lands inside
/// that indentation (past it, the buffer's start would no longer read as
/// a line start).
#[test]
fn key_tail_indented_at_the_start_of_the_text() {
    let m = masker(json!({}));
    let words = "word ".repeat(30);
    for input in [
        format!(" Ab\n-----END RSA PRIVATE KEY-----\n{words}"),
        format!("  abcdefghijklmno\n-----END PRIVATE KEY-----\n{words}"),
        format!("  AbCd\n  -----END PRIVATE KEY-----\n{words}"),
        format!("\t\\u00ad Ab\r\n-----END PRIVATE KEY-----\r\n{words}"),
    ] {
        let whole = assert_steps_match_whole(&m, &input, &[1, 3, 7, 64]);
        assert!(whole.contains("[PRIVATE_KEY]"), "{whole}");
        let (out, _, _) = stream(&m, StreamKind::Text, input.as_bytes(), &[130]);
        assert_eq!(String::from_utf8(out).unwrap(), whole);
    }
}

/// Events as a WHATWG client reads them (HTML §9.2.5: lines end at CRLF,
/// LF or CR; a blank line ends an event): each event's data lines joined
/// by LF.
fn whatwg_events(s: &[u8]) -> Vec<String> {
    let (mut events, mut data, mut line, mut i) = (Vec::new(), Vec::<String>::new(), Vec::new(), 0);
    let mut end_line = |line: &mut Vec<u8>, data: &mut Vec<String>| {
        if line.is_empty() {
            if !data.is_empty() {
                events.push(data.join("\n"));
            }
            data.clear();
        } else if let Some(v) = line.strip_prefix(b"data:") {
            data.push(String::from_utf8_lossy(v.strip_prefix(b" ").unwrap_or(v)).into_owned());
        }
        line.clear();
    };
    while i < s.len() {
        match s[i] {
            b'\r' => {
                end_line(&mut line, &mut data);
                if s.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => end_line(&mut line, &mut data),
            b => line.push(b),
        }
        i += 1;
    }
    events
}

/// An SSE stream with mixed line ends (a lone CR after one data line, LF
/// after the next; a stream cut after a lone CR) keeps its framing: every
/// event a client reads holds the JSON it held, and the text joined
/// across events goes out masked.
#[test]
fn sse_mixed_line_ends_keep_events_apart() {
    let m = masker(json!({}));
    for input in [
        "data: {\"choices\":[{\"index\":0,\rdata: \"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"mail jane.doe@exa\"}}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"mple.com\"}}]}\r",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"mail jane.doe@exa\"}}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"mple.com\"}}]}\rid: 7\r",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\nid: 1\r\n\ndata: [DONE]\n\n",
        "data: {\"choices\":[{\"index\":0,\nid: 1\rdata: \"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n",
    ] {
        for step in [1, 3, 7, input.len()] {
            let cuts: Vec<usize> = (step..input.len()).step_by(step).collect();
            let (out, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &cuts);
            let mut text = String::new();
            for ev in whatwg_events(&out) {
                if ev == "[DONE]" {
                    continue;
                }
                let v: Value = serde_json::from_str(&ev).unwrap_or_else(|e| panic!("{input:?} in pushes of {step}: event {ev:?} is no JSON ({e}); out {:?}", String::from_utf8_lossy(&out)));
                for c in v["choices"].as_array().into_iter().flatten() {
                    text.push_str(c["delta"]["content"].as_str().unwrap_or(""));
                }
            }
            let want = if input.contains("jane") { "mail [EMAIL]" } else { "hi" };
            assert_eq!(text, want, "{input:?} in pushes of {step}: {:?}", String::from_utf8_lossy(&out));
        }
    }
}
