//! Edge cases of the Gemini and Cohere stream joining, tool input and
//! tool results given as JSON, and these providers' usage: odd shapes,
//! missing indices, several candidates or tool calls at once, text in start
//! events, streams cut short. Every stream is also run byte by byte and in
//! one piece: the output must not change.
mod common;

use common::stream;
use nhi_gate::mask::{Counts, Masker, RawMasking, StreamKind};
use nhi_gate::quota;
use serde_json::{json, Value};

fn masker(cfg: Value) -> Masker {
    let raw: RawMasking = serde_json::from_value(cfg).expect("raw masking");
    Masker::compile(raw, "masking").expect("compiles")
}

fn ev(v: &Value) -> String {
    format!("data: {v}\n\n")
}
fn cev(v: &Value) -> String {
    format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap_or("x"))
}

fn parse_sse(s: &str) -> Vec<Value> {
    let s = s.replace("\r\n", "\n");
    let mut events = Vec::new();
    for block in s.split("\n\n").filter(|b| !b.is_empty()) {
        let mut data = Vec::new();
        for line in block.split('\n') {
            if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
        if !data.is_empty() {
            let d = data.join("\n");
            events.push(serde_json::from_str(&d).unwrap_or(Value::String(d)));
        }
    }
    events
}

fn run(input: &str, cuts: &[usize]) -> String {
    let m = masker(json!({}));
    let (out, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), cuts);
    let out = String::from_utf8(out).unwrap();
    // chunking invariance
    let (one, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &[]);
    assert_eq!(String::from_utf8(one).unwrap(), out, "chunking variance");
    let byte: Vec<usize> = (0..input.len()).collect();
    let (b, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &byte);
    assert_eq!(String::from_utf8(b).unwrap(), out, "byte-by-byte variance");
    out
}

fn gem(cands: Value) -> String {
    ev(&json!({"candidates": cands, "modelVersion": "gemini-2.5-flash"}))
}
fn cand(idx: Option<u64>, parts: Value, finish: Option<&str>) -> Value {
    let mut c = json!({"content": {"parts": parts, "role": "model"}});
    if let Some(i) = idx {
        c["index"] = json!(i);
    }
    if let Some(f) = finish {
        c["finishReason"] = json!(f);
    }
    c
}

/// Gemini texts per candidate `index` (as the client would assemble them: by index, else position).
fn gemini_text(out: &str) -> (String, String) {
    let (mut a, mut t) = (String::new(), String::new());
    for v in parse_sse(out) {
        for p in v["candidates"][0]["content"]["parts"].as_array().cloned().unwrap_or_default() {
            if let Some(s) = p["text"].as_str() {
                if p["thought"] == json!(true) { t.push_str(s) } else { a.push_str(s) }
            }
        }
    }
    (a, t)
}

const CARD_A: &str = "pay with 4111 1111";
const CARD_B: &str = " 1111 1111 today";

// ------------------------------------------------------------------ Gemini

#[test]
fn gemini_basic_split_card() {
    let input = [gem(json!([cand(Some(0), json!([{"text": CARD_A}]), None)])), gem(json!([cand(Some(0), json!([{"text": CARD_B}]), Some("STOP"))]))].concat();
    let out = run(&input, &[3, 50]);
    assert!(!out.contains("1111"), "{out}");
}

#[test]
fn gemini_index_absent_candidate0_second_in_array() {
    // candidate 1 first with explicit index, candidate 0 without index at position 1
    let input = [
        gem(json!([cand(Some(1), json!([{"text": "other "}]), None), cand(None, json!([{"text": CARD_A}]), None)])),
        gem(json!([cand(None, json!([{"text": CARD_B}]), None)])),
    ]
    .concat();
    let out = run(&input, &[]);
    assert!(!out.contains("4111"), "{out}");
}

#[test]
fn gemini_middle_chunk_without_candidates() {
    let input = [
        gem(json!([cand(Some(0), json!([{"text": CARD_A}]), None)])),
        ev(&json!({"usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 3}, "modelVersion": "x"})),
        gem(json!([cand(Some(0), json!([{"text": CARD_B}]), Some("STOP"))])),
    ]
    .concat();
    let out = run(&input, &[]);
    assert!(!out.contains("1111"), "{out}");
}

#[test]
fn gemini_mixed_parts_nonstring_text_and_function_call() {
    let input = [
        gem(json!([cand(Some(0), json!([{"text": CARD_A}, {"text": 5}, {"functionCall": {"name": "f", "args": {"n": 4111111111111111u64}}}]), None)])),
        gem(json!([cand(Some(0), json!([{"inlineData": {"mimeType": "x", "data": "AA=="}}, {"text": CARD_B}]), Some("STOP"))])),
    ]
    .concat();
    let out = run(&input, &[]);
    assert!(!out.contains("1111"), "{out}");
    let (a, _) = gemini_text(&out);
    assert_eq!(a, "pay with [PAYMENT_CARD] today");
}

#[test]
fn gemini_thought_nonbool() {
    let input = [
        gem(json!([cand(Some(0), json!([{"text": CARD_A, "thought": "yes"}]), None)])),
        gem(json!([cand(Some(0), json!([{"text": CARD_B, "thought": 1}]), Some("STOP"))])),
    ]
    .concat();
    let out = run(&input, &[]);
    assert!(!out.contains("1111"), "{out}");
}

#[test]
fn gemini_two_candidates_interleaved() {
    let input = [
        gem(json!([cand(Some(0), json!([{"text": CARD_A}]), None), cand(Some(1), json!([{"text": "mail jane.do"}]), None)])),
        gem(json!([cand(Some(1), json!([{"text": "e@example.com ok"}]), None), cand(Some(0), json!([{"text": CARD_B}]), None)])),
        gem(json!([cand(Some(1), json!([{"text": ""}]), Some("STOP"))])),
        gem(json!([cand(Some(0), json!([]), Some("STOP"))])),
    ]
    .concat();
    let out = run(&input, &[]);
    assert!(!out.contains("1111") && !out.contains("jane") && !out.contains("example.com"), "{out}");
}

#[test]
fn gemini_finish_null_vs_absent() {
    let mut c1 = cand(Some(0), json!([{"text": CARD_A}]), None);
    c1["finishReason"] = Value::Null;
    let input = [gem(json!([c1])), gem(json!([cand(Some(0), json!([{"text": CARD_B}]), None)]))].concat();
    let out = run(&input, &[]);
    assert!(!out.contains("1111"), "{out}");
    let (a, _) = gemini_text(&out);
    assert_eq!(a, "pay with [PAYMENT_CARD] today");
}

#[test]
fn gemini_mixed_openai_and_gemini_shape_same_event() {
    // an event carrying both `choices: []` and `candidates`
    let e = |t: &str| ev(&json!({"choices": [], "candidates": [cand(Some(0), json!([{"text": t}]), None)]}));
    let input = [e(CARD_A), e(CARD_B)].concat();
    let out = run(&input, &[]);
    let (a, _) = gemini_text(&out);
    assert_eq!(a, "pay with [PAYMENT_CARD] today");
}

#[test]
fn gemini_switch_openai_then_gemini_finish() {
    // an OpenAI chunk holding content, then a Gemini chunk finishing candidate 0
    let input = [
        ev(&json!({"id": "c", "choices": [{"index": 0, "delta": {"content": "hello jane.do"}, "finish_reason": null}]})),
        gem(json!([cand(Some(0), json!([{"text": "XYZ"}]), Some("STOP"))])),
    ]
    .concat();
    let out = run(&input, &[]);
    assert_eq!(out.matches("XYZ").count(), 1, "duplicated: {out}");
}

#[test]
fn gemini_thought_then_answer_split_value_ordering() {
    // thought held when answer starts; ensure nothing lost and order kept per field
    let long = "x ".repeat(100);
    let input = [
        gem(json!([cand(Some(0), json!([{"text": format!("{long}call jane.do"), "thought": true}]), None)])),
        gem(json!([cand(Some(0), json!([{"text": "e@example.com", "thought": true}, {"text": "answer 4111 1111"}]), None)])),
        gem(json!([cand(Some(0), json!([{"text": " 1111 1111 end"}]), Some("STOP"))])),
    ]
    .concat();
    let out = run(&input, &[]);
    let (a, t) = gemini_text(&out);
    assert_eq!(a, "answer [PAYMENT_CARD] end");
    assert_eq!(t, format!("{long}call [EMAIL]"));
}

#[test]
fn gemini_done_marker_and_cut_stream() {
    let input = [gem(json!([cand(Some(0), json!([{"text": CARD_A}]), None)])), gem(json!([cand(Some(0), json!([{"text": CARD_B}]), None)])), "data: [DONE]\n\n".to_string()].concat();
    let out = run(&input, &[]);
    assert!(!out.contains("1111"), "{out}");
    let (a, _) = gemini_text(&out);
    assert_eq!(a, "pay with [PAYMENT_CARD] today");
    // cut inside the second chunk: that chunk is withheld (not JSON), the
    // text held before it goes out at the end (half a card is no card)
    let cut = &input[..input.len() - 30];
    let out = run(cut, &[]);
    assert!(!out.contains(CARD_B) && out.contains("unmaskable_event"), "{out}");
    assert_eq!(gemini_text(&out).0, CARD_A);
}

#[test]
fn gemini_duplicate_index_in_candidate() {
    // {"index":0, ..., "index":1}: serde Value keeps the last
    let e1 = format!("data: {{\"candidates\":[{{\"index\":1,\"content\":{{\"parts\":[{{\"text\":\"{CARD_A}\"}}]}},\"index\":0}}]}}\n\n");
    let e2 = format!("data: {{\"candidates\":[{{\"index\":0,\"content\":{{\"parts\":[{{\"text\":\"{CARD_B}\"}}]}}}}]}}\n\n");
    let out = run(&format!("{e1}{e2}"), &[]);
    assert!(!out.contains("4111 1111"), "{out}");
}

// ------------------------------------------------------------------ Cohere

fn cdelta(idx: Option<u64>, text: &str) -> String {
    let mut v = json!({"type": "content-delta", "delta": {"message": {"content": {"text": text}}}});
    if let Some(i) = idx {
        v["index"] = json!(i);
    }
    cev(&v)
}

fn cohere_text(out: &str, key: &str) -> String {
    parse_sse(out).iter().filter_map(|v| v["delta"]["message"]["content"][key].as_str().map(str::to_string)).collect()
}

#[test]
fn cohere_thinking_content_delta_split() {
    // Cohere reasoning models (command-a-reasoning) stream thinking as delta.message.content.thinking
    let th = |t: &str| cev(&json!({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"thinking": t}}}}));
    let input = [
        cev(&json!({"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "thinking", "thinking": ""}}}})),
        th(CARD_A),
        th(CARD_B),
        cev(&json!({"type": "content-end", "index": 0})),
        cev(&json!({"type": "message-end", "delta": {"finish_reason": "COMPLETE"}})),
    ]
    .concat();
    let out = run(&input, &[]);
    let t = cohere_text(&out, "thinking");
    assert!(!t.contains("4111 1111 1111 1111"), "card leaks through thinking: {t}");
}

#[test]
fn cohere_tool_call_delta_index1_while_0_open() {
    let tcd = |i: u64, a: &str| cev(&json!({"type": "tool-call-delta", "index": i, "delta": {"message": {"tool_calls": {"function": {"arguments": a}}}}}));
    let input = [
        tcd(0, "{\"card\": \"4111 1111"),
        tcd(1, "{\"mail\": \"jane.do"),
        tcd(0, " 1111 1111\"}"),
        tcd(1, "e@example.com\"}"),
        cev(&json!({"type": "tool-call-end", "index": 0})),
        cev(&json!({"type": "message-end", "delta": {}})),
    ]
    .concat();
    let out = run(&input, &[]);
    assert!(!out.contains("1111") && !out.contains("jane") && !out.contains("example.com"), "{out}");
}

#[test]
fn cohere_no_message_end_and_done() {
    let input = [cdelta(Some(0), CARD_A), cdelta(Some(0), CARD_B), "data: [DONE]\n\n".to_string()].concat();
    let out = run(&input, &[]);
    assert_eq!(cohere_text(&out, "text"), "pay with [PAYMENT_CARD] today");
    let input = [cdelta(Some(0), CARD_A), cdelta(Some(0), CARD_B)].concat();
    let out = run(&input, &[]);
    assert_eq!(cohere_text(&out, "text"), "pay with [PAYMENT_CARD] today");
}

#[test]
fn cohere_tool_call_start_carries_arguments() {
    let input = [
        cev(&json!({"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {"id": "t", "type": "function", "function": {"name": "pay", "arguments": "{\"card\": \"4111 1111"}}}}})),
        cev(&json!({"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {"function": {"arguments": " 1111 1111\"}"}}}}})),
        cev(&json!({"type": "tool-call-end", "index": 0})),
    ]
    .concat();
    let out = run(&input, &[]);
    let args: String = parse_sse(&out).iter().filter_map(|v| v["delta"]["message"]["tool_calls"]["function"]["arguments"].as_str().map(str::to_string)).collect();
    assert!(!args.contains("4111 1111 1111 1111"), "{args}");
}

#[test]
fn cohere_content_start_carries_text() {
    let input = [
        cev(&json!({"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": CARD_A}}}})),
        cdelta(Some(0), CARD_B),
        cev(&json!({"type": "content-end", "index": 0})),
    ]
    .concat();
    let out = run(&input, &[]);
    let t = cohere_text(&out, "text");
    assert!(!t.contains("4111 1111 1111 1111"), "{t}");
}

#[test]
fn cohere_tool_plan_then_content_no_tool_call() {
    let tp = |t: &str| cev(&json!({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": t}}}));
    let input = [tp(CARD_A), tp(CARD_B), cdelta(Some(0), "hi"), cev(&json!({"type": "message-end", "delta": {}}))].concat();
    let out = run(&input, &[]);
    assert!(!out.contains("1111 1111"), "{out}");
}

// ------------------------------------------------------------------ tool input (json)

#[test]
fn args_numbers_and_keys() {
    let m = masker(json!({}));
    let body = json!({"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {"jane.doe@example.com": 1, "n": 4111111111111111u64, "nested": [{"x": 5555555555554444u64}], "f": 4.111111111111111e15}}}]}}]});
    let out = m.mask_json(body.to_string().as_bytes(), &mut Counts::new()).unwrap();
    let s = String::from_utf8(out).unwrap();
    assert!(!s.contains("jane") && !s.contains("4111") && !s.contains("5555"), "{s}");
    let _: Value = serde_json::from_str(&s).unwrap();
}

#[test]
fn escaped_key_names() {
    let m = masker(json!({}));
    let s = r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","\u0061rgs":{"n":4111111111111111}}}]}}]}"#;
    let out = String::from_utf8(m.mask_json(s.as_bytes(), &mut Counts::new()).unwrap()).unwrap();
    assert!(!out.contains("4111"), "{out}");
    let s = r#"{"tool_calls":[{"name":"f","parameters":{"n":4111111111111111,"jane.doe@example.com":true}}]}"#;
    let out = String::from_utf8(m.mask_json(s.as_bytes(), &mut Counts::new()).unwrap()).unwrap();
    assert!(!out.contains("4111") && !out.contains("jane"), "{out}");
}

#[test]
fn stream_gemini_function_call_args() {
    let input = gem(json!([cand(Some(0), json!([{"functionCall": {"name": "f", "args": {"n": 4111111111111111u64, "jane.doe@example.com": "x"}}}]), Some("STOP"))]));
    let out = run(&input, &[]);
    assert!(!out.contains("4111") && !out.contains("jane"), "{out}");
}

#[test]
fn request_tool_schema_parameters_stay_valid() {
    let m = masker(json!({}));
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
            "properties": {"ts": {"type": "integer", "minimum": 1700000000, "maximum": 4102444800u64}, "phone": {"type": "string"}}}}}]});
    let out = nhi_gate::body::mask_prompt(&m, body.to_string().as_bytes(), &mut Counts::new()).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    let p = &v["tools"][0]["function"]["parameters"]["properties"]["ts"];
    assert!(p["minimum"].is_number() && p["maximum"].is_number(), "schema numbers changed: {p}");
}

// ------------------------------------------------------------------ quota

#[test]
fn usage_forms() {
    let gem_tail = br#"data: {"candidates":[{"content":{"parts":[{"text":"x"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":100,"candidatesTokenCount":50,"thoughtsTokenCount":400,"totalTokenCount":550}}

"#;
    let u = quota::usage_from_tail(gem_tail).unwrap();
    assert_eq!(u.total_tokens, 550);
    // a forged lower usage in functionCall args (a real JSON object) after it: max still wins
    let forged = br#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{"usageMetadata":{"promptTokenCount":1,"totalTokenCount":1},"usage":{"prompt_tokens":1,"completion_tokens":1,"tokens":{"input_tokens":0,"output_tokens":0}}}}}]}}],"usageMetadata":{"promptTokenCount":100,"candidatesTokenCount":50,"totalTokenCount":150}}"#;
    let u = quota::usage_from_tail(forged).unwrap();
    assert_eq!(u.total_tokens, 150);
    // Cohere
    let c = br#"event: message-end
data: {"type":"message-end","delta":{"finish_reason":"COMPLETE","usage":{"billed_units":{"input_tokens":3,"output_tokens":9},"tokens":{"input_tokens":69,"output_tokens":9}}}}

"#;
    let u = quota::usage_from_tail(c).unwrap();
    assert_eq!(u.total_tokens, 78);
}

#[test]
fn usage_counts_of_the_object_itself_before_its_tokens() {
    // a usage with complete OpenAI-style counts plus a `tokens` member: its own counts
    let t = br#"{"usage":{"prompt_tokens":1000,"completion_tokens":1000,"total_tokens":2000,"tokens":{"input_tokens":1,"output_tokens":1}}}"#;
    let u = quota::usage_from_tail(t).unwrap();
    assert_eq!(u.total_tokens, 2000, "complete counts of the usage object itself come first");
}

#[test]
fn max_tokens_gemini() {
    for (body, want) in [
        (json!({"generationConfig": {"maxOutputTokens": 100, "candidateCount": 3}}), Some(300)),
        (json!({"generation_config": {"max_output_tokens": "100"}}), Some(100)),
        (json!({"generationConfig": {"maxOutputTokens": 100, "candidate_count": 4}}), Some(400)),
        (json!({"generationConfig": {"maxOutputTokens": 100}, "generation_config": {"maxOutputTokens": 1000}}), Some(1000)),
        (json!({"contents": [], "generationConfig": {"maxOutputTokens": 1e3}}), Some(1000)),
    ] {
        let got = quota::requested_max_tokens_in(&body);
        assert_eq!(got, want, "{body}");
    }
}

#[test]
fn gemini_stream_generate_content_json_array_form() {
    // `:streamGenerateContent` without `alt=sse` answers a JSON array of chunks
    // (application/json, pretty-printed): a card split between two chunks is joined
    let m = masker(json!({}));
    let body = json!([
        {"candidates": [cand(None, json!([{"text": CARD_A}]), None)]},
        {"candidates": [cand(None, json!([{"text": CARD_B}]), Some("STOP"))], "usageMetadata": {"promptTokenCount": 3}}
    ]);
    for raw in [body.to_string(), serde_json::to_string_pretty(&body).unwrap().replace('\n', "\r\n")] {
        let mut counts = Counts::new();
        let out = String::from_utf8(m.mask_json(raw.as_bytes(), &mut counts).unwrap()).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        let text: String = v.as_array().unwrap().iter().flat_map(|c| c["candidates"][0]["content"]["parts"].as_array().unwrap().clone()).map(|p| p["text"].as_str().unwrap().to_string()).collect();
        assert_eq!(text, "pay with [PAYMENT_CARD] today", "{out}");
        assert_eq!(counts.get("payment_card"), Some(&1));
        assert_eq!(v[1]["usageMetadata"]["promptTokenCount"], 3);
    }
    // nothing to mask: the body as it came
    let clean = serde_json::to_string_pretty(&json!([{"candidates": [cand(None, json!([{"text": "hello"}]), Some("STOP"))]}])).unwrap();
    assert_eq!(m.mask_json(clean.as_bytes(), &mut Counts::new()).unwrap(), clean.as_bytes());
    // another array: masked as JSON, value by value
    let other = r#"[{"text":"mail jane.doe@example.com"}, 4111111111111111]"#;
    assert_eq!(String::from_utf8(m.mask_json(other.as_bytes(), &mut Counts::new()).unwrap()).unwrap(), r#"[{"text":"mail [EMAIL]"}, 4111111111111111]"#);
    // not JSON: an error (the caller fails closed)
    assert!(m.mask_json(br#"[{"candidates": []"#, &mut Counts::new()).is_err());
}

#[test]
fn gemini_function_response_in_requests_is_masked_as_json() {
    // Gemini request: tool output in functionResponse.response (an object), Cohere v1 tool_results outputs
    let m = masker(json!({}));
    let body = json!({"contents": [
        {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {"id": 7}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "lookup", "response": {"card": 4111111111111111u64, "phone": 14155550134u64}}}]}
    ]});
    let out = nhi_gate::body::mask_prompt(&m, body.to_string().as_bytes(), &mut Counts::new()).unwrap();
    let s = String::from_utf8(out).unwrap();
    assert!(!s.contains("4111111111111111"), "{s}");
}

#[test]
fn cohere_v1_tool_results_outputs_are_masked_as_json() {
    let m = masker(json!({}));
    let body = json!({"tool_results": [{"call": {"name": "f", "parameters": {}}, "outputs": [{"card": 4111111111111111u64}]}]});
    let out = nhi_gate::body::mask_prompt(&m, body.to_string().as_bytes(), &mut Counts::new()).unwrap();
    let s = String::from_utf8(out).unwrap();
    assert!(!s.contains("4111111111111111"), "{s}");
}

#[test]
fn bedrock_converse_tool_use_and_json_tool_results_are_masked_as_json() {
    let m = masker(json!({}));
    let body = json!({"messages": [
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t-1", "name": "lookup", "input": {"card": 4111111111111111u64}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "t-1", "content": [{"json": {"jane.doe@example.com": {"card": 5555555555554444u64}}}, {"text": "ok"}]}}]}
    ], "inferenceConfig": {"maxTokens": 4111111111111111u64}});
    let out: Value = serde_json::from_slice(&nhi_gate::body::mask_prompt(&m, body.to_string().as_bytes(), &mut Counts::new()).unwrap()).unwrap();
    assert_eq!(out["messages"][0]["content"][0]["toolUse"]["input"], json!({"card": "[PAYMENT_CARD]"}));
    assert_eq!(out["messages"][1]["content"][0]["toolResult"]["content"][0]["json"], json!({"[EMAIL]": {"card": "[PAYMENT_CARD]"}}));
    assert_eq!(out["inferenceConfig"]["maxTokens"], json!(4111111111111111u64), "numbers elsewhere are left alone");
}

/// Gemini JSON arrays, Text Generation Inference streams and bodies, Cohere
/// start events: shapes, ordering around errors and the end, withheld
/// token lists.
mod arrays_tgi_cohere {
    use super::common::stream;
    use nhi_gate::mask::{Counts, Masker, RawMasking, StreamKind};
    use serde_json::{json, Value};

    fn masker() -> Masker {
        let raw: RawMasking = serde_json::from_value(json!({})).expect("raw masking");
        Masker::compile(raw, "masking").expect("compiles")
    }
    fn run(input: &str) -> String {
        let m = masker();
        let (out, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &[]);
        let out = String::from_utf8(out).unwrap();
        let byte: Vec<usize> = (0..input.len()).collect();
        let (b, _, _) = stream(&m, StreamKind::Sse, input.as_bytes(), &byte);
        assert_eq!(String::from_utf8(b).unwrap(), out, "byte-by-byte variance");
        out
    }
    fn ev(v: &Value) -> String { format!("data: {v}\n\n") }
    fn cev(v: &Value) -> String { format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap_or("x")) }
    fn events(s: &str) -> Vec<Value> {
        s.split("\n\n").filter_map(|b| b.lines().find_map(|l| l.strip_prefix("data: ")).map(|d| serde_json::from_str(d).unwrap_or(Value::String(d.into())))).collect()
    }
    fn gchunk(t: &str) -> Value { json!({"candidates": [{"content": {"parts": [{"text": t}], "role": "model"}}]}) }
    fn mj(body: &str) -> Result<String, String> {
        let mut c = Counts::new();
        masker().mask_json(body.as_bytes(), &mut c).map(|o| String::from_utf8(o).unwrap()).map_err(|e| format!("{e:?}"))
    }
    const A: &str = "pay with 4111 1111";
    const B: &str = " 1111 1111 today";

    // ---------------- chunk_array
    #[test]
    fn gemini_array_basic_valid_and_shapes() {
        let cases = vec![
            json!([gchunk(A), gchunk(B)]).to_string(),
            json!([gchunk(A), {"x": "data: x\n\ndata: y"}, gchunk(B)]).to_string(),
            json!([gchunk(A), {}, gchunk(B), [1, [2, "a\nb"]], 5, null, "data: q"]).to_string(),
            json!([gchunk(A), {"choices": [{"index": 0, "delta": {"content": "mail jane.do"}}]}, {"choices": [{"index": 0, "delta": {"content": "e@example.com"}}]}, gchunk(B)]).to_string(),
            format!("[{}, {{\"a\":1,\"a\":2}}, {}]", gchunk(A), gchunk(B)),
            format!(" \t[ {} ,\r\n {} ]  ", gchunk(A), gchunk(B)),
            json!([gchunk(A), {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "x"}}}}, gchunk(B)]).to_string(),
            json!([gchunk(A), {"type": "response.output_text.delta", "item_id": "i", "output_index": 0, "content_index": 0, "delta": "mail jane.do"}, gchunk(B)]).to_string(),
            json!([gchunk(A), {"token": {"text": "4111 1111"}, "generated_text": null}, gchunk(B)]).to_string(),
        ];
        for (i, body) in cases.iter().enumerate() {
            match mj(body) {
                Ok(out) => {
                    let v: Result<Value, _> = serde_json::from_str(&out);
                    assert!(v.is_ok(), "case {i}: invalid JSON out: {out}");
                    assert!(!out.contains("1111 1111"), "case {i}: leak {out}");
                }
                Err(e) => panic!("case {i}: error {e}"),
            }
        }
    }

    #[test]
    fn gemini_array_deep_nesting_clean_body_errors() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let other = format!("[{{\"x\":1}}, {deep}]");
        let chunks = format!("[{}, {deep}]", gchunk("hello"));
        assert_eq!(mj(&other).is_ok(), mj(&chunks).is_ok(), "gemini array path changes outcome for deep nesting");
    }

    #[test]
    fn gemini_array_clean_unchanged() {
        for body in [
            json!([gchunk("hello"), gchunk(" world")]).to_string(),
            json!([gchunk("hello"), "x", 1, [], {}]).to_string(),
            "[]".to_string(),
        ] {
            assert_eq!(mj(&body).unwrap(), body);
        }
    }

    #[test]
    fn gemini_array_lone_surrogate() {
        let body = format!("[{}, {{\"t\":\"\\ud800 jane.doe@example.com\"}}]", gchunk("4111 1111 1111 1111"));
        let r = mj(&body);
        if let Ok(out) = r { assert!(serde_json::from_str::<Value>(&out).is_ok(), "{out}"); assert!(!out.contains("jane.doe")); }
    }

    // ---------------- TGI
    fn tgi(i: u64, t: &str, gen: Option<&str>) -> String {
        ev(&json!({"index": i, "token": {"id": i, "text": t, "logprob": -0.1, "special": false}, "generated_text": gen, "details": null}))
    }
    #[test]
    fn tgi_top_tokens_are_withheld() {
        let e = |i: u64, t: &str, gen: Option<&str>| ev(&json!({"index": i, "token": {"id": i, "text": t, "logprob": -0.1, "special": false}, "top_tokens": [{"id": i, "text": t, "logprob": -0.1, "special": false}], "generated_text": gen, "details": null}));
        let out = run(&[e(1, A, None), e(2, B, Some(&format!("{A}{B}")))].concat());
        let tops: String = events(&out).iter().filter_map(|v| v["top_tokens"][0]["text"].as_str().map(String::from)).collect();
        assert!(!tops.contains("4111 1111 1111 1111"), "card reassembles from top_tokens: {tops}");
    }
    #[test]
    fn tgi_held_text_goes_out_before_an_error_event() {
        let out = run(&[tgi(1, "hello 4111", None), ev(&json!({"error": "overloaded", "error_type": "overloaded"}))].concat());
        let evs = events(&out);
        let err_at = evs.iter().position(|v| v.get("error").is_some()).unwrap();
        let text_after: String = evs[err_at..].iter().filter_map(|v| v["token"]["text"].as_str().map(String::from)).collect();
        assert!(text_after.is_empty(), "held text emitted after the error event: {text_after:?}");
    }
    #[test]
    fn tgi_held_text_goes_out_before_a_last_event_without_token_text() {
        let out = run(&[tgi(1, "hello 4111", None), ev(&json!({"index": 2, "token": {"id": 2, "special": true}, "generated_text": "hello 4111", "details": null}))].concat());
        let evs = events(&out);
        assert!(evs.last().unwrap()["generated_text"].is_string(), "text after final event: {out}");
    }
    #[test]
    fn tgi_basic() {
        let out = run(&[tgi(1, A, None), tgi(2, B, Some(&format!("{A}{B}")))].concat());
        let t: String = events(&out).iter().filter_map(|v| v["token"]["text"].as_str().map(String::from)).collect();
        assert_eq!(t, "pay with [PAYMENT_CARD] today", "{out}");
    }

    // ---------------- Cohere start
    #[test]
    fn cohere_tool_plan_goes_out_before_a_tool_call_start_with_arguments() {
        let tp = |t: &str| cev(&json!({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": t}}}));
        let input = [
            tp("I will pay with card ending"),
            tp(" 4242"),
            cev(&json!({"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {"id": "t", "type": "function", "function": {"name": "pay", "arguments": "{\"a\": 1}"}}}}})),
            cev(&json!({"type": "tool-call-end", "index": 0})),
            cev(&json!({"type": "message-end", "delta": {}})),
        ]
        .concat();
        let out = run(&input);
        let evs = events(&out);
        let start = evs.iter().position(|v| v["type"] == "tool-call-start").unwrap();
        let late: Vec<_> = evs[start..].iter().filter(|v| v["type"] == "tool-plan-delta").collect();
        assert!(late.is_empty(), "tool plan text after the tool call started: {late:?}");
    }
    #[test]
    fn cohere_content_start_text_no_event_lines() {
        let input = [
            ev(&json!({"type": "content-start", "index": 1, "delta": {"message": {"content": {"type": "text", "text": A}}}})),
            ev(&json!({"type": "content-end", "index": 1})),
            ev(&json!({"type": "content-start", "index": 2, "delta": {"message": {"content": {"type": "text", "text": "4111 1111"}}}})),
            ev(&json!({"type": "content-delta", "index": 2, "delta": {"message": {"content": {"text": B}}}})),
            ev(&json!({"type": "message-end", "delta": {}})),
        ]
        .concat();
        let out = run(&input);
        let t: String = events(&out).iter().filter_map(|v| v["delta"]["message"]["content"]["text"].as_str().map(String::from)).collect();
        assert!(!t.contains("4111 1111 1111 1111"), "{out}");
        assert!(t.starts_with("pay with 4111 1111"), "{t}");
    }

    #[test]
    fn gemini_array_non_object_element_keeps_the_join() {
        let body = json!([gchunk(A), "x", gchunk(B)]).to_string();
        let out = mj(&body).unwrap();
        assert!(!out.contains("1111 1111"), "{out}");
    }

    #[test]
    fn tgi_details_tokens_are_withheld() {
        let body = json!({"generated_text": format!("{A}{B}"), "details": {"finish_reason": "length", "generated_tokens": 2, "seed": null, "prefill": [], "tokens": [{"id": 1, "text": A, "logprob": -0.1, "special": false}, {"id": 2, "text": B, "logprob": -0.1, "special": false}]}}).to_string();
        let out = mj(&body).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        let t: String = v["details"]["tokens"].as_array().map(|a| a.iter().filter_map(|x| x["text"].as_str()).collect()).unwrap_or_default();
        assert!(!t.contains("4111 1111 1111 1111"), "{out}");
    }

    /// TGI `details.prefill` (`decoder_input_details: true`) lists the
    /// prompt token by token, as `details.tokens` lists the answer: a value
    /// split across tokens would pass token by token.
    #[test]
    fn tgi_details_prefill_is_withheld() {
        let body = json!({"generated_text": "ok", "details": {"finish_reason": "length", "generated_tokens": 1, "prefill": [{"id": 1, "text": A, "logprob": null}, {"id": 2, "text": B, "logprob": -0.1}], "tokens": []}}).to_string();
        let out = mj(&body).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["details"]["prefill"], json!([]), "{out}");
        assert_eq!(v["generated_text"], "ok");
        // a `prefill` that is not a list of token objects is left alone
        for clean in [json!({"prefill": [1, 2]}), json!({"prefill": "warm"}), json!({"prefill": []})] {
            let mut counts = Counts::new();
            assert_eq!(super::masker(json!({})).mask_json_changes(clean.to_string().as_bytes(), &mut counts).unwrap(), None, "{clean}");
        }
    }

    /// vLLM answers with `return_token_ids: true` carry the answer as token
    /// ids (`choices[].token_ids`, whole and per streamed chunk): decoded with
    /// the model's public tokenizer they give back what masking took out.
    /// Withheld as `[]` whatever `logprobs` says; `prompt_token_ids` too.
    #[test]
    fn vllm_token_ids_are_withheld() {
        let ids = json!([19, 4111, 220, 16, 1111, 220, 1111]);
        let body = json!({"id": "c", "prompt_token_ids": [1, 2, 3], "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("{A}{B}")}, "token_ids": ids}]}).to_string();
        for cfg in [json!({}), json!({"logprobs": "mask"})] {
            let m = super::masker(cfg);
            let mut counts = Counts::new();
            let out = m.mask_json_changes(body.as_bytes(), &mut counts).unwrap().map(String::from_utf8).unwrap().unwrap();
            let v: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["choices"][0]["token_ids"], json!([]), "{out}");
            assert_eq!(v["prompt_token_ids"], json!([]), "{out}");
            assert_eq!(counts.get("token_ids"), Some(&2), "{counts:?}");
            assert!(!out.contains("4111"), "{out}");
        }
        // streamed: each chunk's ids go
        let input = [A, B].iter().map(|t| ev(&json!({"choices": [{"index": 0, "delta": {"content": t}, "token_ids": [4111, 1111]}]}))).collect::<String>();
        let out = run(&input);
        assert!(!out.contains("4111"), "{out}");
        // requests keep them (a job may send ids as the prompt), and so do
        // empty lists and lists of other things
        let req = r#"{"model":"m","prompt":[1,2],"token_ids":[1,2]}"#;
        assert_eq!(super::masker(json!({})).mask_request_json(req.as_bytes(), &mut Counts::new()).unwrap(), req.as_bytes());
        for clean in [json!({"token_ids": []}), json!({"token_ids": ["a", "b"]}), json!({"token_ids": [[1, 2]]})] {
            let mut counts = Counts::new();
            assert_eq!(super::masker(json!({})).mask_json_changes(clean.to_string().as_bytes(), &mut counts).unwrap(), None, "{clean}");
        }
    }

    /// Gemini `responseLogprobs: true` repeats the answer token by token in
    /// `candidates[].logprobsResult`; llama.cpp `/completion` with `n_probs`
    /// in `completion_probabilities[]` (token text and UTF-8 bytes), and with
    /// `return_tokens` gives the answer's token ids in a top-level `tokens`
    /// after `content`. All withheld, as `logprobs` are.
    #[test]
    fn gemini_and_llama_cpp_token_lists_are_withheld() {
        let body = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Mail jane.roe@example.org"}]},"finishReason":"STOP","logprobsResult":{"topCandidates":[],"chosenCandidates":[{"token":" jane","logProbability":-0.01},{"token":".roe","logProbability":-0.01},{"token":"@","logProbability":0},{"token":"example.org","logProbability":0}]}}]}"#;
        let out = mj(body).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["candidates"][0]["logprobsResult"], Value::Null, "{out}");
        assert_eq!(v["candidates"][0]["content"]["parts"][0]["text"], "Mail [EMAIL]");
        let body = r#"{"index":0,"content":"jane.roe@example.org","tokens":[73,2194,13,31,8858],"id_slot":0,"stop":true,"completion_probabilities":[{"id":73,"token":"jane","logprob":-0.1,"bytes":[106,97,110,101],"top_logprobs":[]},{"id":31,"token":"@example.org","logprob":0,"bytes":[64],"top_logprobs":[]}]}"#;
        let mut counts = Counts::new();
        let out = String::from_utf8(masker().mask_json(body.as_bytes(), &mut counts).unwrap()).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["completion_probabilities"], json!([]), "{out}");
        assert_eq!(v["tokens"], json!([]), "{out}");
        assert_eq!(v["content"], "[EMAIL]");
        assert_eq!((counts.get("token_ids"), counts.get("logprobs")), (Some(&1), Some(&1)), "{counts:?}");
        // streamed events of `/completion` carry them too
        let input = ["jane.roe@", "example.org"].iter().map(|t| ev(&json!({"index": 0, "content": t, "tokens": [1, 2], "stop": false, "completion_probabilities": [{"id": 1, "token": t, "bytes": [1]}]}))).collect::<String>();
        let out = run(&input);
        assert!(!out.contains("[1,2]") && !out.contains("\"bytes\""), "{out}");
        // a `/tokenize` answer, and token ids anywhere but after a top-level
        // `content`, are left alone
        for clean in [json!({"tokens": [1, 2, 3]}), json!({"tokens": [1, 2], "content": "x"}), json!({"content": "x", "tokens": []}), json!({"a": {"content": "x", "tokens": [1]}})] {
            let mut counts = Counts::new();
            assert_eq!(masker().mask_json_changes(clean.to_string().as_bytes(), &mut counts).unwrap(), None, "{clean}");
        }
    }

    /// A top-level array of database rows (PostgREST with an embedded
    /// `candidates` resource) is not a Gemini chunk array: masked as JSON,
    /// its structure kept.
    #[test]
    fn rows_with_a_candidates_member_are_not_gemini_chunks() {
        let body = r#"[{"id":1,"question":"Board election","candidates":[{"name":"Jane Roe","email":"jane@example.org"}],"choices":[{"id":1,"text":"Jane Roe"},{"id":2,"text":"John Doe"}]},{"id":2,"question":"Budget","candidates":[],"choices":[{"id":3,"text":"Approve"}]}]"#;
        let out = mj(body).unwrap();
        let mut want: Value = serde_json::from_str(body).unwrap();
        want[0]["candidates"][0]["email"] = json!("[EMAIL]");
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), want, "{out}");
        // without `choices` too: its candidates have no `content.parts`
        let body = r#"[{"id":1,"candidates":[{"name":"Jane","note":"card 4111 1111"}]},{"id":2,"candidates":[{"name":"Joe","note":" 1111 1111"}]}]"#;
        let out = mj(body).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap().as_array().map(Vec::len), Some(2), "{out}");
        // a real chunk array still joins
        let body = json!([gchunk("pay with 4111 1111"), gchunk(" 1111 1111 today")]).to_string();
        let out = mj(&body).unwrap();
        assert!(!out.contains("1111 1111"), "{out}");
    }
}
