//! `quota`: windows and counters, the budget check, OpenAI-style rate-limit
//! headers, usage read from the end of a response (JSON body or SSE stream),
//! the size estimate, the request rewrites, the compare-and-swap update
//! against a fake shared-data store, and the `quota` section of the
//! configuration. Pure code only: these also run as wasm32-wasip1.

mod common;

use common::*;
use nhi_gate::config::{Config, Quota};
use nhi_gate::quota::{
    admit, check, counter_key, debit, duration, ensure_include_usage, estimate, key_missing, key_value, ratelimit_headers,
    requested_max_tokens, streams_usage_on_request, unavailable, update, usage_from_lines, usage_from_tail, Counter, Exceeded, SharedStore, StoreError, UpdateError, CAS_PROBE_KEY,
    Usage, Window, CAS_ATTEMPTS, KEY_PREFIX, MAX_REQUESTS_BUDGET, MAX_TOKENS_BUDGET, TAIL_BYTES,
};
use proptest::prelude::*;
use proptest::test_runner::Config as PtConfig;
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// Start of the hour containing [`NOW`] (NOW is 800 s into it).
const HOUR_START: u64 = 1_699_999_200;
/// Start of the minute containing [`NOW`] (NOW is 20 s into it).
const MINUTE_START: u64 = 1_699_999_980;
/// Start of the UTC day containing [`NOW`] (2023-11-14 00:00:00 UTC).
const DAY_START: u64 = 1_699_920_000;

const SHA256_ABC_32: &str = "ba7816bf8f01cfea414140de5dae2223";

fn quota(tokens: u64) -> Quota {
    Quota { key: vec!["sub".into()], window: Window::Hour, tokens, requests: None, check_max_tokens: false, service: None }
}

fn counter(window_start: u64, tokens: u64, requests: u64) -> Counter {
    Counter { window_start, tokens, requests }
}

#[track_caller]
fn refused(q: &Quota, c: &Counter, now: u64, max_tokens: Option<u64>) -> Exceeded {
    match check(q, c, now, max_tokens) {
        Err(e) => e,
        Ok(()) => panic!("allowed: {c:?} under {q:?} at {now} (max_tokens {max_tokens:?})"),
    }
}

fn pt_config() -> PtConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    PtConfig { cases, failure_persistence: None, ..PtConfig::default() }
}

// ---------------------------------------------------------------------------
// Windows

#[test]
fn window_lengths_and_names() {
    assert_eq!(Window::Minute.seconds(), 60);
    assert_eq!(Window::Hour.seconds(), 3_600);
    assert_eq!(Window::Day.seconds(), 86_400);
    for w in [Window::Minute, Window::Hour, Window::Day] {
        assert_eq!(Window::parse(w.name()), Some(w));
    }
    for bad in ["", "Hour", "HOUR", "week", "second", " hour", "hours"] {
        assert_eq!(Window::parse(bad), None, "{bad:?}");
    }
}

#[test]
fn window_start_is_aligned_to_the_epoch() {
    assert_eq!(Window::Minute.start(NOW), MINUTE_START);
    assert_eq!(Window::Hour.start(NOW), HOUR_START);
    assert_eq!(Window::Day.start(NOW), DAY_START);
    assert_eq!(Window::Hour.start(0), 0);
    assert_eq!(Window::Day.start(86_399), 0);
    assert_eq!(Window::Day.start(86_400), 86_400);
}

#[test]
fn window_boundaries() {
    for w in [Window::Minute, Window::Hour, Window::Day] {
        let t0 = w.start(NOW);
        let len = w.seconds();
        assert_eq!(w.start(t0), t0, "{w:?}: the first second belongs to the window");
        assert_eq!(w.start(t0 + len - 1), t0, "{w:?}: so does the last");
        assert_eq!(w.start(t0 + len), t0 + len, "{w:?}: the next second starts a new one");
        assert_eq!(w.start(t0 - 1), t0 - len, "{w:?}: the second before is the previous one");
        assert_eq!(w.reset_in(t0), len);
        assert_eq!(w.reset_in(t0 + len - 1), 1);
        assert_eq!(w.reset_in(t0 + len), len);
    }
    assert_eq!(Window::Hour.reset_in(NOW), 3_600 - 800);
}

#[test]
fn window_arithmetic_never_overflows() {
    for w in [Window::Minute, Window::Hour, Window::Day] {
        assert_eq!(w.start(u64::MAX) % w.seconds(), 0);
        assert!(w.start(u64::MAX) > u64::MAX - w.seconds());
        let r = w.reset_in(u64::MAX);
        assert!((1..=w.seconds()).contains(&r), "{r}");
    }
}

// ---------------------------------------------------------------------------
// Counters

#[test]
fn counter_encodes_as_three_ascii_numbers() {
    let c = counter(HOUR_START, 1234, 5);
    assert_eq!(c.encode(), b"1699999200 1234 5");
    assert_eq!(Counter::parse(&c.encode()), c);
    let max = counter(u64::MAX, u64::MAX, u64::MAX);
    assert_eq!(Counter::parse(&max.encode()), max);
    assert_eq!(Counter::parse(b"0 0 0"), Counter::default());
    assert_eq!(Counter::parse(b"7 8 9"), counter(7, 8, 9));
}

#[test]
fn garbled_counters_read_as_zero() {
    let garbage: [&[u8]; 19] = [
        b"",
        b" ",
        b"abc",
        b"1 2",
        b"1 2 3 4",
        b"1  2 3",
        b" 1 2 3",
        b"1 2 3 ",
        b"1 2 3\n",
        b"1\t2\t3",
        b"+1 2 3",
        b"-1 2 3",
        b"1 2 18446744073709551616",
        b"1 2 000000000000000000001",
        b"1.0 2 3",
        b"0x10 2 3",
        b"1 2 3\x00",
        b"\xff\xfe\xfd",
        "\u{661} 2 3".as_bytes(), // an Arabic-Indic digit
    ];
    for g in garbage {
        assert_eq!(Counter::parse(g), Counter::default(), "{:?}", String::from_utf8_lossy(g));
    }
}

#[test]
fn current_keeps_the_window_and_resets_after_it() {
    let c = counter(HOUR_START, 500, 3);
    assert_eq!(c.current(Window::Hour, NOW), c);
    assert_eq!(c.current(Window::Hour, HOUR_START), c);
    assert_eq!(c.current(Window::Hour, HOUR_START + 3_599), c);
    assert_eq!(c.current(Window::Hour, HOUR_START + 3_600), counter(HOUR_START + 3_600, 0, 0));
    assert_eq!(c.current(Window::Hour, NOW + 86_400), counter(HOUR_START + 86_400, 0, 0));
    // A counter from a later window (the clock stepped back) is not carried back.
    let future = counter(HOUR_START + 3_600, 500, 3);
    assert_eq!(future.current(Window::Hour, NOW), counter(HOUR_START, 0, 0));
    // A zero / garbled counter becomes the current window's zero counter.
    assert_eq!(Counter::default().current(Window::Minute, NOW), counter(MINUTE_START, 0, 0));
    // Counted under another window length.
    assert_eq!(counter(MINUTE_START, 9, 9).current(Window::Day, NOW), counter(DAY_START, 0, 0));
}

#[test]
fn admit_and_debit_touch_only_their_field_and_saturate() {
    let c = counter(HOUR_START, 10, 2);
    assert_eq!(admit(c), counter(HOUR_START, 10, 3));
    assert_eq!(debit(c, 90), counter(HOUR_START, 100, 2));
    assert_eq!(debit(c, 0), c);
    assert_eq!(admit(counter(1, 2, u64::MAX)), counter(1, 2, u64::MAX));
    assert_eq!(debit(counter(1, u64::MAX - 1, 2), 5), counter(1, u64::MAX, 2));
}

// ---------------------------------------------------------------------------
// Identity key and shared-data key

#[test]
fn key_value_reads_string_and_number_claims() {
    let claims = obj(json!({
        "sub": "repo:acme/app:ref:refs/heads/main",
        "repository": "acme/app",
        "repository_id": 123456,
        "ci": {"repository": "acme/ci", "run": {"attempt": 2}},
        "ratio": 1.5,
        "empty": "",
        "flag": true,
        "null": null,
        "list": ["a"],
        "object": {},
        "a.b": "dotted",
    }));
    let path = |p: &str| -> Vec<String> { p.split('.').map(str::to_string).collect() };
    assert_eq!(key_value(&claims, &path("sub")).as_deref(), Some("repo:acme/app:ref:refs/heads/main"));
    assert_eq!(key_value(&claims, &path("repository")).as_deref(), Some("acme/app"));
    assert_eq!(key_value(&claims, &path("repository_id")).as_deref(), Some("123456"));
    assert_eq!(key_value(&claims, &path("ratio")).as_deref(), Some("1.5"));
    assert_eq!(key_value(&claims, &path("ci.repository")).as_deref(), Some("acme/ci"));
    assert_eq!(key_value(&claims, &path("ci.run.attempt")).as_deref(), Some("2"));
    for absent in ["missing", "empty", "flag", "null", "list", "object", "ci", "ci.missing", "sub.x", "list.0", "a.b", "ci.run"] {
        assert_eq!(key_value(&claims, &path(absent)), None, "{absent}");
    }
    assert_eq!(key_value(&claims, &[]), None, "an empty path names no claim");
    // The literal member "a.b" is reached only by a one-element path.
    assert_eq!(key_value(&claims, &["a.b".to_string()]).as_deref(), Some("dotted"));
}

#[test]
fn counter_key_is_the_resource_and_a_sha256_prefix() {
    assert_eq!(KEY_PREFIX, "nhi_gate.quota.");
    assert_eq!(counter_key("vector-store", "abc"), format!("nhi_gate.quota.vector-store.{SHA256_ABC_32}"));
    assert_eq!(
        counter_key("r", ""),
        "nhi_gate.quota.r.e3b0c44298fc1c149afbf4c8996fb924",
        "SHA-256 of the empty message"
    );
    assert_ne!(counter_key("r", "acme/app"), counter_key("r", "acme/app2"));
    assert_ne!(counter_key("r1", "acme/app"), counter_key("r2", "acme/app"));
    // The identity never appears in the key, and the key length does not depend on it.
    let long = "x".repeat(10_000);
    let k = counter_key("r", &long);
    assert_eq!(k.len(), "nhi_gate.quota.r.".len() + 32);
    assert!(!counter_key("r", "secret-subject").contains("secret"));
}

#[test]
fn quota_denials() {
    let d = key_missing(&["ci".to_string(), "repository".to_string()]);
    assert_eq!((d.status, d.reason), (403, "quota_key_missing"));
    assert!(d.detail.contains("ci.repository"), "{}", d.detail);
    let d = unavailable("contended");
    assert_eq!((d.status, d.reason, d.detail.as_str()), (503, "quota_unavailable", "contended"));
    let v: Value = serde_json::from_slice(&unavailable("x").body("rid")).unwrap();
    assert_eq!(v["error"], "unavailable");
}

// ---------------------------------------------------------------------------
// check / admit / debit

#[test]
fn budget_exactly_spent_denies_the_next_request() {
    let q = quota(100);
    let mut c = Counter::default().current(q.window, NOW);
    assert_eq!(check(&q, &c, NOW, None), Ok(()));
    c = debit(admit(c), 60);
    assert_eq!(check(&q, &c, NOW, None), Ok(()), "40 left");
    c = debit(admit(c), 39);
    assert_eq!(check(&q, &c, NOW, None), Ok(()), "1 left");
    c = debit(admit(c), 1);
    let e = refused(&q, &c, NOW, None);
    assert_eq!(e.limit, 100);
    assert_eq!(e.remaining, 0);
    assert_eq!(e.reset_s, 2_800);
    assert_eq!(e.retry_after_s, 2_800);
    assert!(e.detail.contains("token budget of 100 per hour"), "{}", e.detail);
    assert_eq!(e.denial().status, 429);
    assert_eq!(e.denial().reason, "quota_exceeded");
    assert_eq!(e.denial().detail, e.detail);
    // Still refused in the window's last second, allowed in the next window.
    assert!(check(&q, &c, HOUR_START + 3_599, None).is_err());
    assert_eq!(refused(&q, &c, HOUR_START + 3_599, None).retry_after_s, 1);
    assert_eq!(check(&q, &c, HOUR_START + 3_600, None), Ok(()));
}

#[test]
fn overspent_budget_reports_zero_remaining() {
    let q = quota(100);
    let c = debit(counter(HOUR_START, 0, 1), 150);
    let e = refused(&q, &c, NOW, None);
    assert_eq!((e.limit, e.remaining), (100, 0));
}

#[test]
fn request_budget() {
    let q = Quota { requests: Some(2), ..quota(1_000) };
    let mut c = counter(HOUR_START, 0, 0);
    for _ in 0..2 {
        assert_eq!(check(&q, &c, NOW, None), Ok(()));
        c = admit(c);
    }
    let e = refused(&q, &c, NOW, None);
    assert!(e.detail.contains("request budget of 2 per hour"), "{}", e.detail);
    assert_eq!((e.limit, e.remaining), (1_000, 1_000), "the token headers still tell the tokens left");
    assert_eq!(e.retry_after_s, 2_800);
    // No request budget: any number of requests.
    assert_eq!(check(&quota(1_000), &counter(HOUR_START, 0, u64::MAX), NOW, None), Ok(()));
}

#[test]
fn max_tokens_pre_check() {
    let q = Quota { check_max_tokens: true, ..quota(100) };
    let c = counter(HOUR_START, 60, 1);
    assert_eq!(check(&q, &c, NOW, None), Ok(()), "no max_tokens: nothing to pre-check");
    assert_eq!(check(&q, &c, NOW, Some(40)), Ok(()), "exactly what is left");
    let e = refused(&q, &c, NOW, Some(41));
    assert_eq!((e.limit, e.remaining), (100, 40));
    assert!(e.detail.contains("max_tokens 41") && e.detail.contains("40 tokens left"), "{}", e.detail);
    let e = refused(&q, &counter(HOUR_START, 0, 0), NOW, Some(101));
    assert!(e.detail.contains("whole budget"), "{}", e.detail);
    // Off: max_tokens is ignored.
    assert_eq!(check(&quota(100), &c, NOW, Some(1_000_000)), Ok(()));
    // The pre-check uses the current window: last hour's use does not count.
    assert_eq!(check(&q, &counter(HOUR_START - 3_600, 100, 9), NOW, Some(100)), Ok(()));
}

#[test]
fn check_brings_a_stale_counter_to_the_current_window() {
    let q = Quota { requests: Some(1), ..quota(10) };
    let stale = counter(HOUR_START - 3_600, 10, 1);
    assert_eq!(check(&q, &stale, NOW, None), Ok(()));
    assert!(check(&q, &counter(HOUR_START, 10, 0), NOW, None).is_err());
}

#[test]
fn minute_and_day_windows_reset() {
    let q = Quota { window: Window::Minute, ..quota(5) };
    let c = counter(MINUTE_START, 5, 1);
    assert_eq!(refused(&q, &c, NOW, None).retry_after_s, 40);
    assert!(refused(&q, &c, NOW, None).detail.contains("per minute"));
    assert_eq!(check(&q, &c, MINUTE_START + 60, None), Ok(()));
    let q = Quota { window: Window::Day, ..quota(5) };
    let c = counter(DAY_START, 5, 1);
    assert_eq!(refused(&q, &c, NOW, None).retry_after_s, 86_400 - 80_000);
    assert_eq!(refused(&q, &c, DAY_START + 86_399, None).reset_s, 1);
    assert_eq!(check(&q, &c, DAY_START + 86_400, None), Ok(()));
}

// ---------------------------------------------------------------------------
// Headers

#[test]
fn durations_use_openai_format() {
    for (s, want) in [
        (0, "0s"),
        (1, "1s"),
        (59, "59s"),
        (60, "1m0s"),
        (61, "1m1s"),
        (360, "6m0s"),
        (3_599, "59m59s"),
        (3_600, "1h0m0s"),
        (3_723, "1h2m3s"),
        (86_400, "24h0m0s"),
    ] {
        assert_eq!(duration(s), want, "{s}");
    }
    assert_eq!(duration(u64::MAX), "5124095576030431h0m15s");
}

#[test]
fn ratelimit_headers_shape() {
    let h = ratelimit_headers(100_000, 250, 360);
    let want: Vec<(&str, String)> = vec![
        ("x-ratelimit-limit-tokens", "100000".into()),
        ("x-ratelimit-remaining-tokens", "250".into()),
        ("x-ratelimit-reset-tokens", "6m0s".into()),
        ("retry-after", "360".into()),
    ];
    assert_eq!(h, want);
    let e = refused(&quota(10), &counter(HOUR_START, 10, 0), HOUR_START + 3_540, None);
    let h: HashMap<_, _> = e.headers().into_iter().collect();
    assert_eq!(h["x-ratelimit-reset-tokens"], "1m0s");
    assert_eq!(h["retry-after"], "60");
    assert_eq!(h["x-ratelimit-remaining-tokens"], "0");
    assert_eq!(h["x-ratelimit-limit-tokens"], "10");
    assert_eq!(ratelimit_headers(1, 0, 0)[2].1, "0s");
}

// ---------------------------------------------------------------------------
// Usage

fn usage(prompt: u64, completion: u64, total: u64) -> Option<Usage> {
    Some(Usage { prompt_tokens: prompt, completion_tokens: completion, total_tokens: total, estimated: false })
}

/// A chat completion as OpenAI returns it (usage after choices).
fn chat_completion(content: &str) -> Vec<u8> {
    serde_json::to_vec_pretty(&json!({
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": null},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": 19,
            "completion_tokens": 10,
            "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}
        },
        "service_tier": "default",
        "system_fingerprint": "fp_123"
    }))
    .unwrap()
}

/// An SSE stream with `include_usage`: every chunk has `"usage":null`, the
/// last one empty choices and the usage, then `[DONE]`.
fn sse_stream(with_final_usage: bool) -> Vec<u8> {
    let mut s = String::new();
    for (i, piece) in ["Hello", " there", "!"].iter().enumerate() {
        let chunk = json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": if i == 2 { json!("stop") } else { Value::Null }}],
            "usage": null
        });
        s.push_str(&format!("data: {chunk}\n\n"));
    }
    if with_final_usage {
        let last = json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
        });
        s.push_str(&format!("data: {last}\n\n"));
    }
    s.push_str("data: [DONE]\n\n");
    s.into_bytes()
}

#[test]
fn usage_of_a_full_chat_completion() {
    assert_eq!(usage_from_tail(&chat_completion("Hi!")), usage(19, 10, 29));
    // Compact form too.
    let v: Value = serde_json::from_slice(&chat_completion("Hi!")).unwrap();
    assert_eq!(usage_from_tail(v.to_string().as_bytes()), usage(19, 10, 29));
}

#[test]
fn usage_of_responses_api_and_anthropic_answers() {
    // Responses API: input/output/total, reasoning tokens inside the output count
    let resp = json!({"id": "resp_1", "object": "response", "output": [], "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": 5000, "output_tokens_details": {"reasoning_tokens": 4990}, "total_tokens": 5010}});
    assert_eq!(usage_from_tail(resp.to_string().as_bytes()), usage(10, 5000, 5010));
    // its stream: the last event, response.completed, repeats the response with its usage
    let stream = format!("event: response.completed\ndata: {}\n\n", json!({"type": "response.completed", "response": resp}));
    assert_eq!(usage_from_tail(stream.as_bytes()), usage(10, 5000, 5010));
    // Anthropic Messages API: no total; prompt-cache tokens are prompt too
    let msg = json!({"id": "msg_1", "type": "message", "content": [], "usage": {"input_tokens": 12, "cache_creation_input_tokens": 100,
                     "cache_read_input_tokens": 3, "output_tokens": 40}});
    assert_eq!(usage_from_tail(msg.to_string().as_bytes()), usage(115, 40, 155));
    // an Anthropic stream's last usage has output tokens only: estimated instead
    let delta = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n";
    assert_eq!(usage_from_tail(delta.as_bytes()), None);
    // a chat completion's shape wins when both are there
    let both = json!({"usage": {"prompt_tokens": 1, "completion_tokens": 2, "input_tokens": 100, "output_tokens": 200}});
    assert_eq!(usage_from_tail(both.to_string().as_bytes()), usage(1, 2, 3));
}

#[test]
fn usage_of_ollama_answers() {
    // /api/chat streamed as JSON lines: the last line (done) has the counts
    let lines = [
        json!({"model": "m", "created_at": "t", "message": {"role": "assistant", "content": "Hi"}, "done": false}),
        json!({"model": "m", "created_at": "t", "message": {"role": "assistant", "content": ""}, "done": true, "done_reason": "stop",
               "total_duration": 5_000_000_u64, "prompt_eval_count": 26, "eval_count": 298}),
    ];
    let stream: String = lines.iter().map(|l| format!("{l}\n")).collect();
    assert_eq!(usage_from_tail(stream.as_bytes()), usage(26, 298, 324));
    // /api/generate, not streamed; a prompt from Ollama's cache has no prompt_eval_count
    let one = json!({"model": "m", "response": "Hi", "done": true, "eval_count": 7});
    assert_eq!(usage_from_tail(one.to_string().as_bytes()), usage(0, 7, 7));
    // not finished, not numeric, or the tail starts inside the last line: estimated
    let running = json!({"model": "m", "response": "Hi", "done": false, "eval_count": 7});
    assert_eq!(usage_from_tail(running.to_string().as_bytes()), None);
    let text = json!({"done": true, "eval_count": "7"});
    assert_eq!(usage_from_tail(text.to_string().as_bytes()), None);
    let cut = stream.as_bytes();
    assert_eq!(usage_from_tail(&cut[cut.len() - 40..]), None);
    // in Ollama's own member order (metrics last, as `json!` no longer
    // sorts): a running line's counts are not final
    let running = r#"{"model":"m","response":"Hi","done":false,"eval_count":7}"#;
    assert_eq!(usage_from_tail(running.as_bytes()), None);
    // a tail may start anywhere in the final line: it gives all the counts
    // or none (estimated), never the part of them after a cut
    let done = ollama_done(r#"{"role":"assistant","content":"Hi"}"#, Some(26), Some(298));
    let whole = usage(26, 298, 324);
    assert_eq!(usage_from_tail(done.as_bytes()), whole);
    let from_reason = done.find(r#""done_reason""#).expect("member");
    assert_eq!(usage_from_tail(&done.as_bytes()[from_reason..]), whole);
    for start in 0..done.len() {
        let got = usage_from_tail(&done.as_bytes()[start..]);
        assert!(got.is_none() || got == whole, "tail from {start}: {got:?}");
    }
    // a model's tool call cannot stand in for the counts: Ollama writes
    // arguments as objects, whose keys the model chooses
    let fake = json!({"message": {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f",
                      "arguments": {"usage": {"prompt_tokens": 0, "completion_tokens": 1}}}}]},
                      "done": true, "prompt_eval_count": 90000, "eval_count": 50000});
    assert_eq!(usage_from_tail(fake.to_string().as_bytes()), usage(90000, 50000, 140000));
    let streamed = format!("{}\n{}\n", json!({"message": fake["message"], "done": false}), json!({"done": true, "prompt_eval_count": 90000, "eval_count": 50000}));
    assert_eq!(usage_from_tail(streamed.as_bytes()), usage(90000, 50000, 140000));
    // the counts in a string of an earlier line are not read
    let echo = format!("{}\n", json!({"message": {"content": "{\"done\": true, \"eval_count\": 1}"}, "done": false}));
    assert_eq!(usage_from_tail(echo.as_bytes()), None);
}

/// An Ollama `/api/chat` final object as Ollama writes it (Go struct
/// order: the metrics last), with `message` as given.
fn ollama_done(message: &str, prompt: Option<u64>, completion: Option<u64>) -> String {
    let mut s = format!(r#"{{"model":"llama3","created_at":"2026-12-01T00:00:00Z","message":{message},"done_reason":"stop","done":true,"total_duration":4200000,"load_duration":1200"#);
    if let Some(p) = prompt {
        s.push_str(&format!(r#","prompt_eval_count":{p},"prompt_eval_duration":300"#));
    }
    if let Some(c) = completion {
        s.push_str(&format!(r#","eval_count":{c},"eval_duration":900"#));
    }
    s.push('}');
    s
}

const FAKE_ARGS: &str = r#"{"role":"assistant","content":"","tool_calls":[{"function":{"name":"f","arguments":{"usage":{"prompt_tokens":0,"completion_tokens":1},"eval_count":1}}}]}"#;

#[test]
fn ollama_counts_are_read_from_the_end_of_a_line_longer_than_the_tail() {
    // stream: false, a long answer before a tool call whose arguments (an
    // object the model writes) carry a fake usage: the tail starts inside
    // the line, and the counts Ollama writes last are still read
    let long = format!(
        r#"{{"role":"assistant","content":"{}","tool_calls":[{{"function":{{"name":"f","arguments":{{"usage":{{"prompt_tokens":0,"completion_tokens":1}}}}}}}}]}}"#,
        "word ".repeat(4000)
    );
    let body = ollama_done(&long, Some(9000), Some(5000));
    assert!(body.len() > TAIL_BYTES);
    let tail = &body.as_bytes()[body.len() - TAIL_BYTES..];
    assert_eq!(usage_from_tail(tail), usage(9000, 5000, 14000));
    assert_eq!(usage_from_lines(tail), usage(9000, 5000, 14000));
    // every start of the tail inside the line: the real counts or none, never the fake
    for start in (0..body.len() - 120).step_by(97) {
        let got = usage_from_tail(&body.as_bytes()[start..]);
        assert_eq!(got, usage(9000, 5000, 14000), "tail from byte {start}");
    }
    // an embedding (no completion, no done) longer than the tail
    let embed = format!(r#"{{"model":"m","embeddings":[[{}0.5]],"total_duration":1,"load_duration":1,"prompt_eval_count":8}}"#, "0.123456789,".repeat(3000));
    assert_eq!(usage_from_tail(&embed.as_bytes()[embed.len() - TAIL_BYTES..]), usage(8, 0, 8));
}

#[test]
fn an_ollama_answer_without_its_counts_is_estimated_not_searched_for_usage() {
    // Ollama leaves a count out when it is 0: the fake usage in the
    // arguments is not read instead
    let body = ollama_done(FAKE_ARGS, Some(60), None);
    assert_eq!(usage_from_tail(body.as_bytes()), usage(60, 0, 60));
    let body = ollama_done(FAKE_ARGS, None, None);
    assert_eq!(usage_from_tail(body.as_bytes()), None);
    // counts that are no integers: estimated
    let odd = ollama_done(FAKE_ARGS, None, None).replace(r#""load_duration":1200"#, r#""eval_count":"7","load_duration":1200"#);
    assert_eq!(usage_from_tail(odd.as_bytes()), None);
    // a whole line gives its counts wherever they are (a server that sorts members)
    let sorted = json!({"done": true, "eval_count": 298, "message": {"content": ""}, "prompt_eval_count": 26, "total_duration": 5});
    assert_eq!(usage_from_tail(sorted.to_string().as_bytes()), usage(26, 298, 324));
    // JSON lines: a stream that ends in an error line, or is cut after the
    // tool-call line, has no counts: estimated, whatever the earlier lines hold
    let tool_line = format!(r#"{{"model":"m","created_at":"t","message":{FAKE_ARGS},"done":false}}"#);
    for end in [r#"{"error":"model stopped"}"#, ""] {
        let stream = format!("{tool_line}\n{end}\n");
        assert_eq!(usage_from_lines(stream.as_bytes()), None, "{stream}");
    }
    // the whole stream: the done line's counts
    let stream = format!("{tool_line}\n{}\n", ollama_done(r#"{"role":"assistant","content":""}"#, Some(26), Some(298)));
    assert_eq!(usage_from_lines(stream.as_bytes()), usage(26, 298, 324));
    // a JSON-lines stream is never searched for a "usage" key
    let openai_like = format!("{}\n", json!({"usage": {"prompt_tokens": 5, "completion_tokens": 5}}));
    assert_eq!(usage_from_lines(openai_like.as_bytes()), None);
    // metrics in text (escaped) are not an ending
    let text = format!("{}\n", json!({"message": {"content": "\"eval_count\":1}"}, "done": false}));
    assert_eq!(usage_from_lines(text.as_bytes()), None);
}

#[test]
fn ollama_counts_out_of_ollamas_order_in_a_long_line_are_estimated() {
    let long = format!(r#"{{"role":"assistant","content":"{}","tool_calls":[{{"function":{{"name":"f","arguments":{{"usage":{{"prompt_tokens":1,"completion_tokens":1}}}}}}}}]}}"#, "word ".repeat(4000));
    // members sorted by name (a re-encoding proxy): eval_count is out of the tail
    let sorted = format!(r#"{{"created_at":"t","done":true,"done_reason":"stop","eval_count":5000,"eval_duration":900,"load_duration":1200,"message":{long},"model":"llama3","prompt_eval_count":26,"prompt_eval_duration":300,"total_duration":4200000}}"#);
    assert_eq!(usage_from_tail(sorted.as_bytes()), usage(26, 5000, 5026), "the whole line");
    let tail = &sorted.as_bytes()[sorted.len() - TAIL_BYTES..];
    assert_eq!(usage_from_tail(tail), None);
}

#[test]
fn answers_that_merely_name_eval_count_keep_their_usage() {
    // Anthropic, one line: text (or tool input) naming Ollama's member
    let anthropic = r#"{"content":[{"type":"text","text":"the field is eval_count"},{"type":"tool_use","input":{"eval_count":1}}],"id":"msg_1","type":"message","usage":{"input_tokens":50000,"output_tokens":30000}}"#;
    assert_eq!(usage_from_tail(anthropic.as_bytes()), usage(50000, 30000, 80000));
    // the Responses API echoes the caller's metadata in its final event
    let responses = concat!(
        r#"data: {"type":"response.completed","response":{"metadata":{"tag":"eval_count"},"usage":{"input_tokens":10,"output_tokens":5000,"total_tokens":5010}},"sequence_number":42}"#,
        "

"
    );
    assert_eq!(usage_from_tail(responses.as_bytes()), usage(10, 5000, 5010));
    let chat = json!({"choices": [{"message": {"content": "see retrieval_count"}}], "usage": {"prompt_tokens": 7, "completion_tokens": 3}});
    assert_eq!(usage_from_tail(chat.to_string().as_bytes()), usage(7, 3, 10));
}

#[test]
fn max_output_tokens_of_the_responses_api_counts() {
    assert_eq!(requested_max_tokens(br#"{"model":"m","input":"hi","max_output_tokens":700}"#), Some(700));
    assert_eq!(requested_max_tokens(br#"{"max_tokens":10,"max_output_tokens":700}"#), Some(700));
}

/// Gemini asks for its length in `generationConfig` (either spelling of
/// proto JSON), for each of `candidateCount` candidates.
#[test]
fn gemini_generation_config_counts() {
    let m = |v: Value| requested_max_tokens(v.to_string().as_bytes());
    let contents = json!([{"role": "user", "parts": [{"text": "hi"}]}]);
    assert_eq!(m(json!({"contents": contents, "generationConfig": {"maxOutputTokens": 700}})), Some(700));
    assert_eq!(m(json!({"contents": contents, "generationConfig": {"maxOutputTokens": 700, "candidateCount": 3}})), Some(2100));
    assert_eq!(m(json!({"generation_config": {"max_output_tokens": "50", "candidate_count": 2}})), Some(100));
    assert_eq!(m(json!({"generationConfig": {"maxOutputTokens": [1]}})), Some(u64::MAX), "what is no count is unbounded");
    assert_eq!(m(json!({"generationConfig": {"temperature": 0.2, "candidateCount": 2}})), None);
    assert_eq!(m(json!({"generationConfig": {"maxOutputTokens": null}})), None);
    // Bedrock Converse
    assert_eq!(m(json!({"messages": [], "inferenceConfig": {"maxTokens": 512, "temperature": 0.5}})), Some(512));
}

/// Amazon Bedrock Converse reports `usage` in camelCase, cache reads and
/// writes apart from `inputTokens`.
#[test]
fn usage_of_bedrock_converse_answers() {
    let answer = json!({"output": {"message": {"role": "assistant", "content": [{"text": "Hi"}]}}, "stopReason": "end_turn",
        "usage": {"inputTokens": 30, "outputTokens": 7, "totalTokens": 37}, "metrics": {"latencyMs": 400}});
    assert_eq!(usage_from_tail(answer.to_string().as_bytes()), usage(30, 7, 37));
    let cached = json!({"usage": {"inputTokens": 30, "outputTokens": 7, "totalTokens": 1037, "cacheReadInputTokens": 1000, "cacheWriteInputTokens": 0}});
    assert_eq!(usage_from_tail(cached.to_string().as_bytes()), usage(1030, 7, 1037));
    assert_eq!(usage_from_tail(br#"{"usage": {"inputTokens": 30}}"#), None);
}

#[test]
fn usage_from_every_cut_of_the_tail() {
    let body = chat_completion(&"long answer ".repeat(50));
    let text = String::from_utf8(body.clone()).unwrap();
    let key_at = text.rfind("\"usage\"").unwrap();
    for start in 0..=body.len() {
        let got = usage_from_tail(&body[start..]);
        if start <= key_at {
            assert_eq!(got, usage(19, 10, 29), "tail from byte {start}");
        } else {
            assert_eq!(got, None, "tail from byte {start} has no usage key");
        }
    }
    // The last TAIL_BYTES of a long answer still carry it.
    let long = chat_completion(&"x".repeat(100_000));
    assert_eq!(usage_from_tail(&long[long.len() - TAIL_BYTES..]), usage(19, 10, 29));
    assert_eq!(TAIL_BYTES, 16 << 10);
}

#[test]
fn usage_tail_starting_inside_a_multibyte_character() {
    let body = chat_completion("日本語のテキスト");
    let text = String::from_utf8(body.clone()).unwrap();
    let inside = text.find("本").unwrap() + 1; // not a char boundary
    assert_eq!(usage_from_tail(&body[inside..]), usage(19, 10, 29));
}

#[test]
fn usage_of_an_sse_stream_is_the_final_event() {
    let stream = sse_stream(true);
    assert_eq!(usage_from_tail(&stream), usage(12, 3, 15));
    // Also when the tail starts mid-event.
    assert_eq!(usage_from_tail(&stream[stream.len() - 150..]), usage(12, 3, 15));
}

#[test]
fn stream_without_final_usage_has_none() {
    // Every chunk says "usage":null: the last one decides → None (then the estimate).
    assert_eq!(usage_from_tail(&sse_stream(false)), None);
    // A stream cut before [DONE] and before its usage event.
    let s = sse_stream(false);
    assert_eq!(usage_from_tail(&s[..s.len() - 20]), None);
}

/// Gemini's `usageMetadata` (in every chunk of a stream, cumulative; the
/// thinking counted with the completion) and Cohere v2's `usage.tokens`.
#[test]
fn usage_of_gemini_and_cohere_answers() {
    let chunk = |meta: Value| json!({"candidates": [{"content": {"parts": [{"text": "Hi"}], "role": "model"}}], "usageMetadata": meta, "modelVersion": "gemini-2.5-flash"});
    let whole = chunk(json!({"promptTokenCount": 8, "candidatesTokenCount": 3, "thoughtsTokenCount": 20, "totalTokenCount": 31}));
    assert_eq!(usage_from_tail(whole.to_string().as_bytes()), usage(8, 23, 31));
    // a stream: the last chunk's counts are the largest
    let stream: String = [json!({"promptTokenCount": 8, "totalTokenCount": 8}), json!({"promptTokenCount": 8, "candidatesTokenCount": 5, "totalTokenCount": 13})]
        .into_iter()
        .map(|m| format!("data: {}\r\n\r\n", chunk(m)))
        .collect();
    assert_eq!(usage_from_tail(stream.as_bytes()), usage(8, 5, 13));
    // tool-use prompt counted with the prompt; the total never below the sum
    let tool = chunk(json!({"promptTokenCount": 8, "toolUsePromptTokenCount": 4, "candidatesTokenCount": 3, "totalTokenCount": 2}));
    assert_eq!(usage_from_tail(tool.to_string().as_bytes()), usage(12, 3, 15));
    for bad in [json!({}), json!({"candidatesTokenCount": 3}), json!({"promptTokenCount": "8"}), json!(null)] {
        assert_eq!(usage_from_tail(chunk(bad.clone()).to_string().as_bytes()), None, "{bad}");
    }
    // Cohere v2: `tokens`, not the (smaller) `billed_units`
    let cohere = json!({"id": "c-1", "message": {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]}, "finish_reason": "COMPLETE",
        "usage": {"billed_units": {"input_tokens": 5, "output_tokens": 2}, "tokens": {"input_tokens": 71, "output_tokens": 2}}});
    assert_eq!(usage_from_tail(cohere.to_string().as_bytes()), usage(71, 2, 73));
    let end = r#"event: message-end
data: {"type":"message-end","delta":{"finish_reason":"COMPLETE","usage":{"billed_units":{"input_tokens":5,"output_tokens":9},"tokens":{"input_tokens":70,"output_tokens":9}}}}

"#;
    assert_eq!(usage_from_tail(end.as_bytes()), usage(70, 9, 79));
}

#[test]
fn usage_null_is_none() {
    assert_eq!(usage_from_tail(br#"{"usage": null}"#), None);
    assert_eq!(usage_from_tail(br#"{"usage":{"prompt_tokens":1,"completion_tokens":2},"x":{"usage":null}}"#), usage(1, 2, 3), "null is no usage");
}

#[test]
fn usage_requires_numeric_prompt_and_completion_tokens() {
    for bad in [
        r#"{"usage": {}}"#,
        r#"{"usage": {"prompt_tokens": 1}}"#,
        r#"{"usage": {"completion_tokens": 1}}"#,
        r#"{"usage": {"prompt_tokens": "1", "completion_tokens": 2}}"#,
        r#"{"usage": {"prompt_tokens": 1, "completion_tokens": -2}}"#,
        r#"{"usage": {"prompt_tokens": 1.5, "completion_tokens": 2}}"#,
        r#"{"usage": {"prompt_tokens": 1e30, "completion_tokens": 2}}"#,
        r#"{"usage": {"prompt_tokens": 18446744073709551616, "completion_tokens": 2}}"#,
        r#"{"usage": {"prompt_tokens": null, "completion_tokens": 2}}"#,
        r#"{"usage": {"input_tokens": "1", "output_tokens": 2}}"#,
        r#"{"usage": {"input_tokens": 1}}"#,
        r#"{"usage": {"output_tokens": 2, "cache_read_input_tokens": 5}}"#,
        r#"{"usage": [1, 2]}"#,
        r#"{"usage": 29}"#,
        r#"{"usage": "29"}"#,
        r#"{"usage": {"prompt_tokens": 1, "completion_tokens": 2"#,
        r#"{"usage": "#,
        r#"{"usage""#,
    ] {
        assert_eq!(usage_from_tail(bad.as_bytes()), None, "{bad}");
    }
}

#[test]
fn usage_total_defaults_to_the_sum_and_is_never_less() {
    assert_eq!(usage_from_tail(br#""usage":{"prompt_tokens":5,"completion_tokens":7}"#), usage(5, 7, 12));
    assert_eq!(usage_from_tail(br#""usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":null}"#), usage(5, 7, 12));
    assert_eq!(usage_from_tail(br#""usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":3}"#), usage(5, 7, 12));
    assert_eq!(usage_from_tail(br#""usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":20}"#), usage(5, 7, 20));
    let max = u64::MAX;
    let s = format!(r#""usage":{{"prompt_tokens":{max},"completion_tokens":{max}}}"#);
    assert_eq!(usage_from_tail(s.as_bytes()), usage(max, max, max), "saturates");
}

#[test]
fn usage_key_with_whitespace_before_and_after_the_colon() {
    assert_eq!(usage_from_tail(b"{\"usage\" \t\r\n:\n {\"prompt_tokens\":1,\"completion_tokens\":2}}"), usage(1, 2, 3));
    assert_eq!(usage_from_tail(b"\"usage\"\n"), None);
}

#[test]
fn usage_as_a_string_value_is_not_a_key() {
    // "object": "usage" after the real usage is skipped (no colon follows).
    let body = br#"{"usage":{"prompt_tokens":1,"completion_tokens":2},"object":"usage","tags":["usage"]}"#;
    assert_eq!(usage_from_tail(body), usage(1, 2, 3));
}

#[test]
fn usage_text_inside_content_strings_does_not_fool_it() {
    let fake = r#"Here is JSON: {"usage": {"prompt_tokens": 0, "completion_tokens": 0}} and "usage": {"prompt_tokens":1,"completion_tokens":1}"#;
    // The real usage after the content.
    assert_eq!(usage_from_tail(&chat_completion(fake)), usage(19, 10, 29));
    // The real usage before the content (providers that put usage first).
    let body = json!({"usage": {"prompt_tokens": 7, "completion_tokens": 8}, "choices": [{"message": {"content": fake}}]});
    assert_eq!(usage_from_tail(body.to_string().as_bytes()), usage(7, 8, 15));
    // Only in content: no usage at all (→ the estimate), never the fake one.
    let body = json!({"choices": [{"message": {"content": fake}}]});
    assert_eq!(usage_from_tail(body.to_string().as_bytes()), None);
    // Same in an SSE delta after the final usage event is impossible, but before it:
    let chunk = json!({"choices": [{"delta": {"content": fake}}], "usage": null});
    let mut s = format!("data: {chunk}\n\n").into_bytes();
    s.extend_from_slice(&sse_stream(true));
    assert_eq!(usage_from_tail(&s), usage(12, 3, 15));
}

#[test]
fn escaped_quote_before_usage_is_skipped_but_an_escaped_backslash_is_not() {
    let obj = r#"{"prompt_tokens":1,"completion_tokens":2}"#;
    // \"usage": → the quote is escaped (inside a string): not a key.
    assert_eq!(usage_from_tail(format!(r#"\"usage": {obj}"#).as_bytes()), None);
    // \\"usage": → an escaped backslash, then a real quote: a key.
    assert_eq!(usage_from_tail(format!(r#"\\"usage": {obj}"#).as_bytes()), usage(1, 2, 3));
    assert_eq!(usage_from_tail(format!(r#"\\\"usage": {obj}"#).as_bytes()), None);
}

/// Documented limitation: the LAST `"usage"` member wins even when nested,
/// and a non-JSON body containing `"usage": {...}` is read as usage.
#[test]
fn documented_limits_largest_usage_wins_and_plain_text_is_read() {
    // an echo of caller-chosen members after the real usage can only raise the charge
    let body = br#"{"usage":{"prompt_tokens":100,"completion_tokens":100},"extra":{"usage":{"prompt_tokens":1,"completion_tokens":1}}}"#;
    assert_eq!(usage_from_tail(body), usage(100, 100, 200));
    let body = br#"{"usage":{"prompt_tokens":1,"completion_tokens":1},"extra":{"usage":{"prompt_tokens":100,"completion_tokens":100}}}"#;
    assert_eq!(usage_from_tail(body), usage(100, 100, 200));
    let text = br#"The model said "usage": {"prompt_tokens": 1, "completion_tokens": 1} here."#;
    assert_eq!(usage_from_tail(text), usage(1, 1, 2));
}

#[test]
fn usage_survives_hostile_inputs() {
    assert_eq!(usage_from_tail(b""), None);
    assert_eq!(usage_from_tail(b"\"usage\""), None);
    assert_eq!(usage_from_tail(b"\"usage\":"), None);
    assert_eq!(usage_from_tail(b"\"usage\"usage\"usage\":"), None);
    assert_eq!(usage_from_tail(b"\xff\xfe\"usage\":\xff"), None);
    // Deep nesting stops at serde_json's recursion limit.
    let deep = format!("\"usage\":{}", "[".repeat(100_000));
    assert_eq!(usage_from_tail(deep.as_bytes()), None);
    let deep = format!("\"usage\":{}", "{\"a\":".repeat(50_000));
    assert_eq!(usage_from_tail(deep.as_bytes()), None);
    // Many candidates that are not keys.
    let many = "\"usage\" ".repeat(5_000);
    assert_eq!(usage_from_tail(many.as_bytes()), None);
    // Overlapping quotes: `"usage"usage"` has two candidates sharing a quote.
    assert_eq!(usage_from_tail(br#""usage"usage":{"prompt_tokens":1,"completion_tokens":1}"#), usage(1, 1, 2));
}

proptest! {
    #![proptest_config(pt_config())]

    /// Arbitrary bytes never panic.
    #[test]
    fn usage_from_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = usage_from_tail(&bytes);
        let _ = ensure_include_usage(&bytes);
        let _ = requested_max_tokens(&bytes);
        let _ = Counter::parse(&bytes);
    }

    /// JSON-ish soup around usage keys: never panics, and any usage found is consistent.
    #[test]
    fn usage_from_json_soup_never_panics(s in r#"("usage"|[ :{}\[\],\\"0-9a-z_.-]|prompt_tokens|completion_tokens|null){0,80}"#) {
        if let Some(u) = usage_from_tail(s.as_bytes()) {
            prop_assert!(u.total_tokens >= u.prompt_tokens.saturating_add(u.completion_tokens));
            prop_assert!(!u.estimated);
        }
    }

    /// Any suffix of a real response either gives its usage or none: never another one.
    #[test]
    fn usage_from_any_suffix_is_right_or_none(content in "[ -~é\\n\"\\\\]{0,200}", cut in any::<usize>()) {
        let body = chat_completion(&content);
        let start = cut % (body.len() + 1);
        let got = usage_from_tail(&body[start..]);
        prop_assert!(got.is_none() || got == usage(19, 10, 29), "{:?}", got);
        prop_assert_eq!(usage_from_tail(&body), usage(19, 10, 29));
    }

    /// Counters round-trip through their stored form.
    #[test]
    fn counter_round_trips(ws in any::<u64>(), t in any::<u64>(), r in any::<u64>()) {
        let c = counter(ws, t, r);
        prop_assert_eq!(Counter::parse(&c.encode()), c);
    }
}

#[test]
fn estimate_is_a_token_per_four_bytes_rounded_up() {
    let e = |req, resp| {
        let u = estimate(req, resp);
        assert!(u.estimated);
        assert_eq!(u.total_tokens, u.prompt_tokens + u.completion_tokens);
        (u.prompt_tokens, u.completion_tokens)
    };
    assert_eq!(e(0, 0), (0, 0));
    assert_eq!(e(1, 4), (1, 1));
    assert_eq!(e(4, 5), (1, 2));
    assert_eq!(e(8, 9), (2, 3));
    assert_eq!(e(4_000, 1_001), (1_000, 251));
    let big = estimate(usize::MAX, usize::MAX);
    assert!(big.total_tokens >= big.prompt_tokens, "saturates, no panic");
}

#[test]
fn usage_serializes_for_audit_records() {
    let v = serde_json::to_value(estimate(8, 4)).unwrap();
    assert_eq!(v, json!({"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3, "estimated": true}));
}

// ---------------------------------------------------------------------------
// Request rewrites

#[track_caller]
fn rewritten(body: Value) -> Value {
    let out = ensure_include_usage(body.to_string().as_bytes()).expect("rewritten");
    let v: Value = serde_json::from_slice(&out).expect("JSON");
    assert_eq!(ensure_include_usage(&out), None, "idempotent");
    v
}

#[test]
fn include_usage_is_added_to_streamed_requests() {
    let req = json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5});
    let mut want = req.clone();
    want["stream_options"] = json!({"include_usage": true});
    assert_eq!(rewritten(req), want);
}

/// Adding `include_usage` leaves every other member where it was (a JSON
/// schema's property order steers the model's output).
#[test]
fn include_usage_keeps_member_order() {
    let body = r#"{"stream":true,"response_format":{"type":"json_schema","json_schema":{"name":"r","schema":{"properties":{"zeta":{"type":"string"},"alpha":{"type":"string"}}}}},"model":"m"}"#;
    let out = String::from_utf8(ensure_include_usage(body.as_bytes()).expect("rewritten")).unwrap();
    assert_eq!(out, body.replace(r#""model":"m"}"#, r#""model":"m","stream_options":{"include_usage":true}}"#));
    let body = r#"{"stream":true,"stream_options":{"b":1,"include_usage":false,"a":2},"model":"m"}"#;
    let out = String::from_utf8(ensure_include_usage(body.as_bytes()).expect("rewritten")).unwrap();
    assert_eq!(out, r#"{"stream":true,"stream_options":{"b":1,"include_usage":true,"a":2},"model":"m"}"#);
}

#[test]
fn include_usage_keeps_other_stream_options() {
    let req = json!({"stream": true, "stream_options": {"include_usage": false, "include_obfuscation": false}});
    assert_eq!(rewritten(req)["stream_options"], json!({"include_usage": true, "include_obfuscation": false}));
    let req = json!({"stream": true, "stream_options": {"x": 1}});
    assert_eq!(rewritten(req)["stream_options"], json!({"x": 1, "include_usage": true}));
    let req = json!({"stream": true, "stream_options": {"include_usage": "yes"}});
    assert_eq!(rewritten(req)["stream_options"], json!({"include_usage": true}));
    let req = json!({"stream": true, "stream_options": null});
    assert_eq!(rewritten(req)["stream_options"], json!({"include_usage": true}));
}

#[test]
fn include_usage_leaves_other_bodies_alone() {
    for body in [
        json!({"stream": true, "stream_options": {"include_usage": true}}),
        json!({"stream": false}),
        json!({"stream": "false"}),
        json!({"stream": 0}),
        json!({"messages": []}),
        json!({"stream": true, "stream_options": "include_usage"}),
        json!({"stream": true, "stream_options": [true]}),
        json!([{"stream": true}]),
        json!("stream"),
        json!(null),
    ] {
        assert_eq!(ensure_include_usage(body.to_string().as_bytes()), None, "{body}");
    }
    for raw in [&b""[..], b"{", b"not json", b"{\"stream\": true", b"{\"stream\": true} trailing", b"\xff"] {
        assert_eq!(ensure_include_usage(raw), None, "{:?}", String::from_utf8_lossy(raw));
    }
}

#[test]
fn requested_max_tokens_reads_either_field() {
    let m = |v: Value| requested_max_tokens(v.to_string().as_bytes());
    assert_eq!(m(json!({"max_tokens": 256})), Some(256));
    assert_eq!(m(json!({"max_completion_tokens": 512})), Some(512));
    assert_eq!(m(json!({"max_completion_tokens": 512, "max_tokens": 1024})), Some(1024), "the larger of both");
    assert_eq!(m(json!({"max_completion_tokens": 2048, "max_tokens": 1024})), Some(2048));
    assert_eq!(m(json!({"max_completion_tokens": null, "max_tokens": 7})), Some(7));
    assert_eq!(m(json!({"max_tokens": 0})), Some(0));
    // what lenient servers read as numbers counts (fractions rounded up)
    assert_eq!(m(json!({"max_tokens": 1.5})), Some(2));
    assert_eq!(m(json!({"max_tokens": "256"})), Some(256));
    assert_eq!(m(json!({"max_tokens": 1e5})), Some(100_000));
    assert_eq!(m(json!({"max_completion_tokens": 5, "max_tokens": "99999"})), Some(99_999));
    // anything else is unbounded: the pre-check refuses it
    for unbounded in [json!({"max_tokens": -1}), json!({"max_tokens": [100_000]}), json!({"max_tokens": "lots"}), json!({"max_tokens": true})] {
        assert_eq!(m(unbounded.clone()), Some(u64::MAX), "{unbounded}");
    }
    for none in [
        json!({}),
        json!({"max_tokens": null}),
        json!({"options": {"max_tokens": 5}}),
        json!([{"max_tokens": 5}]),
    ] {
        assert_eq!(m(none.clone()), None, "{none}");
    }
    assert_eq!(requested_max_tokens(b"max_tokens=5"), None);
    assert_eq!(requested_max_tokens(b""), None);
}

#[test]
fn requested_max_tokens_reads_ollama_num_predict() {
    let m = |v: Value| requested_max_tokens(v.to_string().as_bytes());
    // `/api/chat` and `/api/generate` put the length in `options`
    assert_eq!(m(json!({"model": "llama3", "messages": [], "options": {"num_predict": 300}})), Some(300));
    assert_eq!(m(json!({"prompt": "hi", "options": {"num_predict": 1}})), Some(1));
    assert_eq!(m(json!({"options": {"num_predict": 300}, "max_tokens": 500})), Some(500), "the largest field counts");
    assert_eq!(m(json!({"options": {"num_predict": 900}, "max_tokens": 500})), Some(900));
    // Go truncates 2.5 to 2; rounding up counts more, never less
    assert_eq!(m(json!({"options": {"num_predict": 2.5}})), Some(3));
    // Ollama reads these as no limit: like a missing max_tokens
    for none in [
        json!({"options": {"num_predict": -1}}),
        json!({"options": {"num_predict": -2}}),
        json!({"options": {"num_predict": 0}}),
        json!({"options": {"num_predict": 0.5}}),
        json!({"options": {"num_predict": -7.5}}),
        json!({"options": {"num_predict": null}}),
        json!({"options": {"temperature": 0}}),
        json!({"options": "num_predict"}),
        json!({"num_predict": 5}),
    ] {
        assert_eq!(m(none.clone()), None, "{none}");
    }
    // a value that is no count is unbounded, as for max_tokens
    for unbounded in [json!({"options": {"num_predict": "lots"}}), json!({"options": {"num_predict": [5]}}), json!({"options": {"num_predict": 1e300}})] {
        assert_eq!(m(unbounded.clone()), Some(u64::MAX), "{unbounded}");
    }
    // a no-limit num_predict does not hide a max_tokens
    assert_eq!(m(json!({"options": {"num_predict": -1}, "max_tokens": 64})), Some(64));
    // Go matches member names in any case: the largest count of any spelling
    assert_eq!(m(json!({"Options": {"num_predict": 100_000}, "options": {"temperature": 0}})), Some(100_000));
    assert_eq!(m(json!({"Max_Tokens": 900, "max_tokens": 10})), Some(900));
    assert_eq!(m(json!({"max_tokens": 10, "N": 3})), Some(30));
    assert_eq!(m(json!({"max_to\u{212a}ens": 900})), Some(900), "Go folds the Kelvin sign to k");
    assert_eq!(m(json!({"option\u{17f}": {"num_predict": 700}})), Some(700), "and ſ to s");
}

// ---------------------------------------------------------------------------
// Compare-and-swap update against a fake shared-data store

/// Envoy's shared data semantics: each write gets a new CAS token; a write
/// with a stale token fails, one without a token (or creating the key) always
/// succeeds. `interfere` makes that many writes lose a race: another worker
/// debits 10 tokens first.
#[derive(Default)]
struct FakeStore {
    data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
    interfere: Cell<u32>,
    refuse: Cell<bool>,
    gets: Cell<u32>,
}

impl FakeStore {
    fn put(&self, key: &str, value: &[u8]) {
        // (Envoy's counter wraps and skips 0, "not a valid CAS value")
        self.next_cas.set(self.next_cas.get().wrapping_add(1).max(1));
        self.data.borrow_mut().insert(key.to_string(), (value.to_vec(), self.next_cas.get()));
    }
    fn value(&self, key: &str) -> Option<Counter> {
        self.data.borrow().get(key).map(|(v, _)| Counter::parse(v))
    }
}

impl SharedStore for FakeStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.gets.set(self.gets.get() + 1);
        match self.data.borrow().get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        }
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        if self.refuse.get() {
            return Err(StoreError::Failed);
        }
        if self.interfere.get() > 0 && key != CAS_PROBE_KEY {
            self.interfere.set(self.interfere.get() - 1);
            // (a key they create holds this hour's counter)
            let theirs = self.data.borrow().get(key).map(|(v, _)| Counter::parse(v)).unwrap_or(counter(HOUR_START, 0, 0));
            self.put(key, &debit(theirs, 10).encode());
        }
        let current = self.data.borrow().get(key).map(|(_, c)| *c);
        if let (Some(want), Some(have)) = (cas, current) {
            if want != have {
                return Err(StoreError::CasMismatch);
            }
        }
        self.put(key, value);
        Ok(())
    }
}

fn admit_step(q: &Quota) -> impl FnMut(Counter) -> Result<Counter, Exceeded> + '_ {
    move |c| check(q, &c, NOW, None).map(|()| admit(c))
}

#[test]
fn update_creates_then_updates_the_counter() {
    let store = FakeStore::default();
    let key = counter_key("r", "acme/app");
    let q = quota(100);
    assert_eq!(update(&store, &key, q.window, NOW, admit_step(&q)), Ok(counter(HOUR_START, 0, 1)));
    assert_eq!(update(&store, &key, q.window, NOW, |c| Ok::<_, ()>(debit(c, 30))), Ok(counter(HOUR_START, 30, 1)));
    assert_eq!(store.value(&key), Some(counter(HOUR_START, 30, 1)));
    assert_eq!(store.data.borrow()[&key].0, b"1699999200 30 1");
}

#[test]
fn creating_a_counter_never_writes_over_one_another_worker_created() {
    // Both workers read the key as absent; the other one creates it first
    // (+10). Envoy ignores a CAS token on an absent key, so a plain write
    // would replace theirs; the create fails as a lost race instead and the
    // retry adds to their count.
    let store = FakeStore::default();
    let key = counter_key("r", "acme/app");
    store.interfere.set(1);
    let out = update(&store, &key, Window::Hour, NOW, |c| Ok::<_, ()>(debit(admit(c), 7)));
    assert_eq!(out, Ok(counter(HOUR_START, 17, 1)));
    assert_eq!(store.value(&key), Some(counter(HOUR_START, 17, 1)));
    // an absent key with no one else writing is simply created
    let other = counter_key("r", "acme/other");
    assert_eq!(update(&store, &other, Window::Hour, NOW, |c| Ok::<_, ()>(admit(c))), Ok(counter(HOUR_START, 0, 1)));
    // the probe's token is never the stale one, even where the counter wraps
    for start in [0u32, 1, 1 << 31, (1 << 31) + 1, u32::MAX - 1] {
        let store = FakeStore::default();
        store.next_cas.set(start);
        store.interfere.set(1);
        let out = update(&store, &key, Window::Hour, NOW, |c| Ok::<_, ()>(admit(c)));
        assert_eq!(out, Ok(counter(HOUR_START, 10, 1)), "counter at {start}");
    }
}

#[test]
fn update_retries_a_lost_race_on_fresh_values() {
    let store = FakeStore::default();
    let key = counter_key("r", "acme/app");
    store.put(&key, &counter(HOUR_START, 5, 1).encode());
    store.interfere.set(3);
    let mut seen = Vec::new();
    let out = update(&store, &key, Window::Hour, NOW, |c| {
        seen.push(c);
        Ok::<_, ()>(debit(c, 1))
    });
    // Three lost races (each another worker's +10), then the write lands on top of them.
    assert_eq!(out, Ok(counter(HOUR_START, 36, 1)));
    assert_eq!(store.value(&key), Some(counter(HOUR_START, 36, 1)));
    assert_eq!(seen.iter().map(|c| c.tokens).collect::<Vec<_>>(), [5, 15, 25, 35]);
    assert_eq!(store.gets.get(), 4);
}

#[test]
fn update_fails_closed_when_contention_outlasts_the_retries() {
    let store = FakeStore::default();
    let key = counter_key("r", "acme/app");
    store.put(&key, &counter(HOUR_START, 0, 0).encode());
    store.interfere.set(CAS_ATTEMPTS);
    let mut calls = 0;
    let out = update(&store, &key, Window::Hour, NOW, |c| {
        calls += 1;
        Ok::<_, ()>(admit(c))
    });
    assert!(matches!(out, Err(UpdateError::Unavailable(_))), "{out:?}");
    assert_eq!(calls, CAS_ATTEMPTS);
    assert!((2..=16).contains(&CAS_ATTEMPTS), "bounded, but more than one try");
    // Only the other workers' writes landed.
    assert_eq!(store.value(&key), Some(counter(HOUR_START, 10 * u64::from(CAS_ATTEMPTS), 0)));
    // One attempt fewer of contention: it gets through.
    store.interfere.set(CAS_ATTEMPTS - 1);
    assert!(update(&store, &key, Window::Hour, NOW, |c| Ok::<_, ()>(admit(c))).is_ok());
}

#[test]
fn update_does_not_retry_a_refused_write() {
    let store = FakeStore::default();
    store.refuse.set(true);
    let out = update(&store, "k", Window::Hour, NOW, |c| Ok::<_, ()>(admit(c)));
    assert!(matches!(out, Err(UpdateError::Unavailable(ref m)) if m.contains("refused")), "{out:?}");
    assert_eq!(store.gets.get(), 1);
    assert!(store.data.borrow().is_empty());
}

#[test]
fn update_writes_nothing_when_the_step_refuses() {
    let store = FakeStore::default();
    let key = counter_key("r", "acme/app");
    let spent = counter(HOUR_START, 100, 4).encode();
    store.put(&key, &spent);
    let q = quota(100);
    match update(&store, &key, q.window, NOW, admit_step(&q)) {
        Err(UpdateError::Refused(e)) => assert_eq!((e.remaining, e.retry_after_s), (0, 2_800)),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.data.borrow()[&key], (spent, 1), "untouched, same CAS token");
}

#[test]
fn update_resets_stale_and_garbled_counters() {
    let store = FakeStore::default();
    store.put("old", &counter(HOUR_START - 3_600, 100, 50).encode());
    store.put("bad", b"not a counter");
    let q = Quota { requests: Some(1), ..quota(100) };
    assert_eq!(update(&store, "old", q.window, NOW, admit_step(&q)), Ok(counter(HOUR_START, 0, 1)));
    assert_eq!(update(&store, "bad", q.window, NOW, admit_step(&q)), Ok(counter(HOUR_START, 0, 1)));
    assert!(matches!(update(&store, "old", q.window, NOW, admit_step(&q)), Err(UpdateError::Refused(_))));
}

#[test]
fn keys_stay_fixed_across_windows() {
    let store = FakeStore::default();
    let q = Quota { window: Window::Minute, ..quota(1_000) };
    for minute in 0..500u64 {
        let now = NOW + minute * 60;
        for who in ["acme/app", "acme/lib"] {
            let key = counter_key("r", who);
            update(&store, &key, q.window, now, |c| check(&q, &c, now, None).map(|()| admit(c))).unwrap();
            update(&store, &key, q.window, now, |c| Ok::<_, ()>(debit(c, 7))).unwrap();
        }
    }
    assert_eq!(store.data.borrow().keys().filter(|k| *k != CAS_PROBE_KEY).count(), 2, "one key per identity, whatever the number of windows");
    assert_eq!(store.value(&counter_key("r", "acme/app")), Some(counter(Window::Minute.start(NOW + 499 * 60), 7, 1)));
}

/// A whole hour of one identity's traffic through the pure API.
#[test]
fn budget_sequence_over_windows() {
    let q = Quota { requests: Some(3), check_max_tokens: true, ..quota(50) };
    let store = FakeStore::default();
    let key = counter_key("llm", "acme/app");
    let mut outcomes = Vec::new();
    for (t, max_tokens, used) in [(NOW, Some(20), 20), (NOW + 1, Some(20), 25), (NOW + 2, Some(10), 0), (NOW + 3, None, 0)] {
        let r = update(&store, &key, q.window, t, |c| check(&q, &c, t, max_tokens).map(|()| admit(c)));
        if r.is_ok() {
            update(&store, &key, q.window, t, |c| Ok::<_, ()>(debit(c, used))).unwrap();
        }
        outcomes.push(r.is_ok());
    }
    // 20 + 25 = 45 used: max_tokens 10 > 5 left is refused; then 2 requests < 3 and 5 left: allowed.
    assert_eq!(outcomes, [true, true, false, true]);
    let t = NOW + 4;
    let r = update(&store, &key, q.window, t, |c| check(&q, &c, t, None).map(|()| admit(c)));
    match r {
        Err(UpdateError::Refused(e)) => assert!(e.detail.contains("request budget of 3"), "{}", e.detail),
        other => panic!("{other:?}"),
    }
    // Next hour: everything allowed again.
    let t = HOUR_START + 3_600;
    assert!(update(&store, &key, q.window, t, |c| check(&q, &c, t, Some(50)).map(|()| admit(c))).is_ok());
}

// ---------------------------------------------------------------------------
// Configuration: resources[i].quota

fn doc_with_quota(quota: Value) -> Value {
    json!({
        "providers": [remote_provider_json("idp", ISSUER)],
        "resources": [{
            "name": "llm",
            "path_prefix": "/v1/",
            "read": {"any_of": ["readers"]},
            "write": {"any_of": ["writers"]},
            "quota": quota,
        }],
    })
}

fn parsed_quota(q: Value) -> Rc<Quota> {
    config(&doc_with_quota(q)).resources[0].quota.clone().expect("quota section")
}

#[track_caller]
fn assert_quota_rejected(q: Value, field: &str) {
    let errs = config_errors(&doc_with_quota(q));
    assert_eq!(errs.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), [field], "{errs:?}");
    assert!(!errs[0].problem.is_empty());
    assert!(errs[0].to_string().starts_with(&format!("{field}: ")), "{}", errs[0]);
}

#[test]
fn quota_defaults() {
    let q = parsed_quota(json!({"tokens": 1000}));
    assert_eq!(*q, Quota { key: vec!["sub".into()], window: Window::Hour, tokens: 1000, requests: None, check_max_tokens: false, service: None });
}

#[test]
fn quota_fields_are_taken() {
    let q = parsed_quota(json!({"key": "ci.repository", "window": "day", "tokens": 5, "requests": 9, "check_max_tokens": true}));
    assert_eq!(q.key, ["ci", "repository"]);
    assert_eq!(q.window, Window::Day);
    assert_eq!((q.tokens, q.requests, q.check_max_tokens), (5, Some(9), true));
    assert_eq!(parsed_quota(json!({"tokens": 1, "window": "minute"})).window, Window::Minute);
    assert_eq!(parsed_quota(json!({"tokens": 1, "window": "hour"})).window, Window::Hour);
    assert_eq!(parsed_quota(json!({"tokens": 1, "key": "repository"})).key, ["repository"]);
}

#[test]
fn resource_without_quota_has_none() {
    let c = config_with_resources(json!([{"name": "r", "path_prefix": "/", "write": {"any_of": ["w"]}}]));
    assert!(c.resources[0].quota.is_none());
}

#[test]
fn quota_budget_ranges() {
    assert_eq!(MAX_TOKENS_BUDGET, 1_000_000_000_000);
    assert_eq!(MAX_REQUESTS_BUDGET, 1_000_000_000);
    assert_eq!(parsed_quota(json!({"tokens": 1})).tokens, 1);
    assert_eq!(parsed_quota(json!({"tokens": 1_000_000_000_000u64})).tokens, 1_000_000_000_000);
    assert_quota_rejected(json!({"tokens": 0}), "resources[0].quota.tokens");
    assert_quota_rejected(json!({"tokens": 1_000_000_000_001u64}), "resources[0].quota.tokens");
    assert_quota_rejected(json!({"tokens": u64::MAX}), "resources[0].quota.tokens");
    assert_eq!(parsed_quota(json!({"tokens": 1, "requests": 1})).requests, Some(1));
    assert_eq!(parsed_quota(json!({"tokens": 1, "requests": 1_000_000_000})).requests, Some(1_000_000_000));
    assert_quota_rejected(json!({"tokens": 1, "requests": 0}), "resources[0].quota.requests");
    assert_quota_rejected(json!({"tokens": 1, "requests": 1_000_000_001}), "resources[0].quota.requests");
}

#[test]
fn quota_window_must_be_known() {
    for bad in ["week", "Hour", "", "60", "hours"] {
        assert_quota_rejected(json!({"tokens": 1, "window": bad}), "resources[0].quota.window");
    }
    let errs = config_errors(&doc_with_quota(json!({"tokens": 1, "window": "week"})));
    assert!(errs[0].problem.contains("\"week\""), "{}", errs[0].problem);
}

#[test]
fn quota_key_is_a_dot_path() {
    for bad in ["", ".", "a.", ".a", "a..b"] {
        assert_quota_rejected(json!({"tokens": 1, "key": bad}), "resources[0].quota.key");
    }
}

#[test]
fn quota_tokens_are_required() {
    let errs = config_errors(&doc_with_quota(json!({"window": "day"})));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "resources[0].quota");
    assert!(errs[0].problem.contains("tokens"), "{}", errs[0].problem);
}

#[test]
fn unknown_quota_fields_are_rejected() {
    for (q, field) in [
        (json!({"tokens": 1, "limit": 5}), "resources[0].quota.limit"),
        (json!({"tokens": 1, "Window": "day"}), "resources[0].quota.Window"),
        (json!({"tokens": 1, "max_tokens": true}), "resources[0].quota.max_tokens"),
    ] {
        let errs = config_errors(&doc_with_quota(q));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, field);
        assert!(errs[0].problem.contains("unknown field"), "{}", errs[0].problem);
    }
}

#[test]
fn wrong_quota_types_name_their_field() {
    for (q, field) in [
        (json!({"tokens": "1000"}), "resources[0].quota.tokens"),
        (json!({"tokens": -1}), "resources[0].quota.tokens"),
        (json!({"tokens": 1.5}), "resources[0].quota.tokens"),
        (json!({"tokens": 1, "requests": "5"}), "resources[0].quota.requests"),
        (json!({"tokens": 1, "window": 3600}), "resources[0].quota.window"),
        (json!({"tokens": 1, "key": ["sub"]}), "resources[0].quota.key"),
        (json!({"tokens": 1, "check_max_tokens": "yes"}), "resources[0].quota.check_max_tokens"),
    ] {
        let errs = config_errors(&doc_with_quota(q.clone()));
        assert_eq!(errs.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), [field], "{q}: {errs:?}");
    }
    let errs = config_errors(&doc_with_quota(json!(1000)));
    assert_eq!(errs[0].field, "resources[0].quota");
}

#[test]
fn quota_null_is_refused_naming_the_field() {
    // a YAML `quota:` whose children are commented out is null: not a silent "no quota"
    let errs = config_errors(&doc_with_quota(Value::Null));
    assert_eq!((errs[0].field.as_str(), errs[0].problem.as_str()), ("resources[0].quota", "invalid type: null, expected an object"));
}

#[test]
fn quota_errors_name_the_resource_index_and_are_all_reported() {
    let doc = json!({
        "providers": [remote_provider_json("idp", ISSUER)],
        "resources": [
            {"name": "ok", "path_prefix": "/ok/", "read": {"any_of": ["r"]}, "quota": {"tokens": 10}},
            {"name": "llm", "path_prefix": "/v1/", "write": {"any_of": ["w"]},
             "quota": {"key": "a..b", "window": "week", "tokens": 0, "requests": 0}},
        ],
    });
    let mut fields: Vec<String> = config_errors(&doc).into_iter().map(|e| e.field).collect();
    fields.sort();
    assert_eq!(
        fields,
        ["resources[1].quota.key", "resources[1].quota.requests", "resources[1].quota.tokens", "resources[1].quota.window"]
    );
}

#[test]
fn quota_section_round_trips_through_from_value() {
    let doc = doc_with_quota(json!({"tokens": 7, "window": "minute"}));
    let c = Config::from_value(&doc).unwrap();
    let q = c.resources[0].quota.as_ref().unwrap();
    assert_eq!((q.tokens, q.window), (7, Window::Minute));
}

#[test]
fn reservation_is_the_prompt_estimate_plus_max_tokens() {
    use nhi_gate::quota::reservation;
    assert_eq!(reservation(0, None), 0);
    assert_eq!(reservation(1, None), 1);
    assert_eq!(reservation(8, None), 2);
    assert_eq!(reservation(9, Some(100)), 103);
    assert_eq!(reservation(usize::MAX, Some(u64::MAX)), u64::MAX, "saturates");
}

#[test]
fn settling_charges_the_usage_and_aborted_requests_at_least_their_reservation() {
    use nhi_gate::quota::{charge, credit, settle};
    let c = Counter { window_start: 60, tokens: 100, requests: 3 };
    assert_eq!(settle(c, 40, 30).tokens, 90, "reserved more than used: the rest is given back");
    assert_eq!(settle(c, 20, 30).tokens, 110, "used more than reserved: the difference is debited");
    assert_eq!(settle(c, 30, 30), c);
    assert_eq!(credit(Counter { tokens: 5, ..c }, 9).tokens, 0, "never below zero");
    assert_eq!(charge(30, 500, true), 30);
    assert_eq!(charge(30, 500, false), 500, "an aborted long completion is not free");
    assert_eq!(charge(700, 500, false), 700);
}

#[test]
fn usage_is_found_past_a_metadata_echo_and_joined_with_an_anthropic_delta() {
    // Responses API: `metadata` (caller-chosen) follows `usage`
    let body = br#"{"object":"response","usage":{"input_tokens":300,"output_tokens":300,"total_tokens":600},"user":null,"metadata":{"usage":"x"}}"#;
    assert_eq!(usage_from_tail(body), usage(300, 300, 600));
    let body = br#"{"usage":{"input_tokens":300,"output_tokens":300},"metadata":{"usage":{}}}"#;
    assert_eq!(usage_from_tail(body), usage(300, 300, 600));
    // Anthropic stream: message_start's usage, then message_delta's final output count
    let sse = b"data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":40,\"output_tokens\":1}}}\n\n\
data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":250}}\n\n";
    assert_eq!(usage_from_tail(sse), usage(40, 250, 290));
    // an output-only usage alone is no usage: estimated
    assert_eq!(usage_from_tail(br#"{"type":"message_delta","usage":{"output_tokens":250}}"#), None);
}

#[test]
fn streamed_requests_are_found_as_lenient_servers_read_stream() {
    for stream in [json!("true"), json!("True"), json!(1), json!("yes"), json!("on")] {
        let out = ensure_include_usage(json!({"stream": stream}).to_string().as_bytes()).expect("include_usage added");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], json!(true), "{stream}");
    }
}

#[test]
fn max_tokens_counts_every_choice() {
    assert_eq!(requested_max_tokens(br#"{"max_tokens": 600, "n": 10}"#), Some(6000));
    assert_eq!(requested_max_tokens(br#"{"max_tokens": 600, "n": 2, "best_of": 5}"#), Some(3000));
    assert_eq!(requested_max_tokens(br#"{"max_tokens": 600, "n": "3"}"#), Some(1800));
    assert_eq!(requested_max_tokens(br#"{"max_tokens": 600, "n": 0}"#), Some(600));
    assert_eq!(requested_max_tokens(br#"{"max_tokens": 600, "n": "many"}"#), Some(u64::MAX));
    assert_eq!(requested_max_tokens(br#"{"n": 5}"#), None);
}

#[test]
fn stream_usage_is_asked_for_on_completions_paths_only() {
    for p in ["/v1/chat/completions", "/openai/deployments/x/chat/completions?api-version=2024", "/v1/completions", "/v1/chat/completions/"] {
        assert!(streams_usage_on_request(p), "{p}");
    }
    for p in ["/v1/responses", "/v1/messages", "/v1/embeddings", "/v1/completions/x", "/"] {
        assert!(!streams_usage_on_request(p), "{p}");
    }
}
