//! Stream shapes of other servers than the big LLM APIs (llama.cpp,
//! Cloudflare Workers AI, …): each test feeds a realistic stream (cut into
//! 7-byte network chunks and byte by byte) and asserts that the value does
//! not reach the client, neither whole in the output nor in the text a
//! client SDK builds by concatenating the stream's text fields.
mod common;

use common::stream;
use nhi_gate::mask::{Counts, Masker, RawMasking, StreamKind};
use serde_json::{json, Value};

const EMAIL: &str = "jane.roe@example.org";

fn masker() -> Masker {
    let raw: RawMasking = serde_json::from_value(json!({})).expect("raw masking");
    Masker::compile(raw, "masking").expect("compiles")
}

/// Runs `input` through an SSE (or JSON-lines) stream masker in 7-byte
/// network chunks; checks byte-by-byte gives the same output.
fn run(kind: StreamKind, input: &str) -> String {
    let m = masker();
    let cuts: Vec<usize> = (0..input.len()).step_by(7).collect();
    let (out, _, _) = stream(&m, kind, input.as_bytes(), &cuts);
    let byte: Vec<usize> = (0..input.len()).collect();
    let (b, _, _) = stream(&m, kind, input.as_bytes(), &byte);
    assert_eq!(out, b, "chunking variance");
    String::from_utf8(out).expect("utf-8")
}

/// Runs `input` through an SSE stream masker in one piece.
fn run_one(kind: StreamKind, input: &str) -> String {
    let m = masker();
    let (out, _, _) = stream(&m, kind, input.as_bytes(), &[]);
    String::from_utf8(out).expect("utf-8")
}

fn ev(v: &Value) -> String {
    format!("data: {v}\n\n")
}

fn named(event: &str, v: &Value) -> String {
    format!("event: {event}\ndata: {v}\n\n")
}

/// The JSON payloads of the SSE events in `out` (non-JSON data skipped).
fn events(out: &str) -> Vec<Value> {
    let s = out.replace("\r\n", "\n");
    let mut v = Vec::new();
    for block in s.split("\n\n") {
        let data: Vec<&str> = block
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if let Ok(j) = serde_json::from_str::<Value>(&data.join("\n")) {
            v.push(j);
        }
    }
    v
}

/// Concatenation of the string at `pointer` over all events (as a client
/// accumulates a streamed field).
fn concat(out: &str, pointer: &str) -> String {
    events(out).iter().filter_map(|e| e.pointer(pointer).and_then(Value::as_str).map(str::to_owned)).collect()
}

fn assert_masked(out: &str, joined: &str, value: &str) {
    assert!(!out.contains(value), "value reaches the client whole:\n{out}");
    assert!(!joined.contains(value), "value reconstructable from the concatenated field: {joined:?}\n{out}");
}

/// llama.cpp server native `POST /completion` with `"stream": true`
/// (tools/server: `to_json_non_oaicompat_partial`): one SSE event per
/// token, the text in a top-level `content`, `"stop": false` until the
/// final event. Clients (llama.cpp web UI, `llama-cpp-python` examples,
/// LangChain `LlamaCpp` server clients) concatenate `content`.
#[test]
fn llamacpp_native_completion_stream_content_joined() {
    let mut input = String::new();
    for (k, tok) in ["Contact", " jane", ".", "roe", "@", "example", ".org", " for", " details", "."].iter().enumerate() {
        input += &ev(&json!({"index": 0, "content": tok, "tokens": [], "stop": false, "id_slot": 0, "tokens_predicted": k + 1, "tokens_evaluated": 12}));
    }
    input += &ev(&json!({"index": 0, "content": "", "tokens": [], "id_slot": 0, "stop": true, "model": "gpt-3.5-turbo",
        "tokens_predicted": 11, "tokens_evaluated": 12, "generation_settings": {"n_predict": -1}, "prompt": "<|user|>Who to contact?",
        "has_new_line": false, "truncated": false, "stop_type": "eos", "stopping_word": "", "tokens_cached": 22,
        "timings": {"prompt_n": 12, "predicted_n": 11}}));
    let out = run(StreamKind::Sse, &input);
    assert_masked(&out, &concat(&out, "/content"), EMAIL);
    assert_eq!(concat(&out, "/content"), "Contact [EMAIL] for details.");
    // the rest goes out in the event with `stop: true`, which stays last
    let evs = events(&out);
    assert_eq!(evs.last().map(|e| e["stop"].clone()), Some(json!(true)), "{out}");
    assert!(evs.iter().all(|e| e["tokens_evaluated"] == 12), "{out}");
    // two completions (`index`) are joined apart
    let mut input = String::new();
    for (i, tok) in [(0, "mail jane"), (1, "card 4111 1111"), (0, ".roe@example.org"), (1, " 1111 1111")] {
        input += &ev(&json!({"index": i, "content": tok, "stop": false}));
    }
    for i in 0..2 {
        input += &ev(&json!({"index": i, "content": "", "stop": true}));
    }
    let out = run(StreamKind::Sse, &input);
    let by = |i: u64| -> String { events(&out).iter().filter(|e| e["index"] == i).filter_map(|e| e["content"].as_str().map(String::from)).collect() };
    assert_eq!((by(0), by(1)), ("mail [EMAIL]".to_string(), "card [PAYMENT_CARD]".to_string()), "{out}");
}

/// llama.cpp native `/completion` with `"n_probs": 1` (streamed or not):
/// `completion_probabilities[]` repeats the text one token per object
/// (`token`, and its UTF-8 `bytes` as numbers): withheld like OpenAI
/// `logprobs`, or a job that asks for it reads the masked text back.
#[test]
fn llamacpp_completion_probabilities_are_withheld() {
    let toks = ["Contact", " jane", ".roe", "@example", ".org", "."];
    let probs: Vec<Value> = toks
        .iter()
        .map(|t| json!({"id": 1, "token": t, "bytes": t.as_bytes(), "logprob": -0.01, "top_logprobs": [{"id": 1, "token": t, "bytes": t.as_bytes(), "logprob": -0.01}]}))
        .collect();
    let body = json!({"index": 0, "content": format!("Contact {EMAIL}."), "tokens": [], "id_slot": 0, "stop": true,
        "model": "gpt-3.5-turbo", "tokens_predicted": 6, "tokens_evaluated": 12, "stop_type": "eos",
        "completion_probabilities": probs});
    let m = masker();
    let mut counts = Counts::new();
    let out = String::from_utf8(m.mask_json(body.to_string().as_bytes(), &mut counts).expect("json")).expect("utf-8");
    let v: Value = serde_json::from_str(&out).expect("json out");
    let cp = v["completion_probabilities"].as_array().cloned().unwrap_or_default();
    let joined: String = cp.iter().filter_map(|p| p["token"].as_str()).collect();
    let from_bytes: Vec<u8> = cp.iter().flat_map(|p| p["bytes"].as_array().cloned().unwrap_or_default()).filter_map(|b| b.as_u64().map(|b| b as u8)).collect();
    assert_masked(&out, &joined, EMAIL);
    assert!(!String::from_utf8_lossy(&from_bytes).contains(EMAIL), "value rebuilt from completion_probabilities[].bytes");
}

/// Cloudflare Workers AI text generation (`/ai/run/@cf/…` with
/// `stream: true`, and the Workers `env.AI.run` stream returned as is):
/// SSE events `data: {"response":"…"}` then `data: [DONE]`: `response`
/// is joined across events, as in Ollama JSON lines.
#[test]
fn cloudflare_workers_ai_sse_response_joined() {
    let mut input = String::new();
    for f in ["Call", " +1 415", " 555 01", "34 or", " write to jane", ".roe@exa", "mple.org."] {
        input += &ev(&json!({"response": f, "p": "abcdefgh"}));
    }
    input += &ev(&json!({"response": "", "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}}));
    input += "data: [DONE]\n\n";
    let out = run(StreamKind::Sse, &input);
    let joined = concat(&out, "/response");
    assert_masked(&out, &joined, EMAIL);
    assert!(!joined.contains("+1 415 555 0134"), "phone reconstructable: {joined:?}");
    assert_eq!(joined, "Call [PHONE] or write to [EMAIL].");
    assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
    // a stream cut short (no `[DONE]`) still gives its rest
    let input = ev(&json!({"response": "write to jane.roe@"})) + &ev(&json!({"response": "example.org"}));
    let out = run(StreamKind::Sse, &input);
    assert_eq!(concat(&out, "/response"), "write to [EMAIL]", "{out}");
}

/// A stream of records that hold nothing but `response` reads as Workers
/// AI and is joined; a value at the end of one record, glued to the next
/// record's first word in the joined text (`…1111` + `2 items`,
/// `…0134` + `5th floor`), is still masked: the joined text is also
/// scanned as if it ended with each record. A value split across records
/// is found joined. (Deltas of other streams are text cut anywhere: they
/// are masked as the whole text would be.)
#[test]
fn joined_records_keep_values_glued_to_the_next_record() {
    let records = ["card 4111 1111 1111 1111", "2 items left", "call +1 415 555 0134", "5th floor", "ssn 123-45-6789", "0 notes", "mail jane@acme.io", "nfo desk"];
    let mut input = String::new();
    for r in records {
        input += &ev(&json!({"response": r}));
    }
    input += "data: [DONE]\n\n";
    let out = run(StreamKind::Sse, &input);
    let joined = concat(&out, "/response");
    assert_eq!(joined, "card [PAYMENT_CARD]2 items leftcall [PHONE]5th floorssn [US_SSN]0 notesmail [EMAIL] desk", "{out}");
    // a long stream (released and compacted as it goes)
    let mut input = String::new();
    for _ in 0..300 {
        for r in records {
            input += &ev(&json!({"response": r}));
        }
    }
    let out = run(StreamKind::Sse, &input);
    assert_eq!(concat(&out, "/response"), joined.repeat(300));
}

/// Mistral Agents / Conversations API (`POST /v1/conversations` with
/// `stream: true`, SDK `client.beta.conversations.start_stream`): text
/// comes in `message.output.delta` events whose top-level `content`
/// fragments the client concatenates.
#[test]
fn mistral_conversations_message_output_delta_joined() {
    let mut input = named("conversation.response.started", &json!({"type": "conversation.response.started", "conversation_id": "conv_1"}));
    for f in ["Her SSN is 123", "-45-", "6789 per", " the file."] {
        input += &named("message.output.delta", &json!({"type": "message.output.delta", "created_at": "2025-06-01T00:00:00Z", "output_index": 0,
            "id": "msg_1", "content_index": 0, "model": "mistral-medium-2505", "agent_id": null, "role": "assistant", "content": f}));
    }
    input += &named("conversation.response.done", &json!({"type": "conversation.response.done", "usage": {"prompt_tokens": 9, "completion_tokens": 8}}));
    let out = run(StreamKind::Sse, &input);
    assert_masked(&out, &concat(&out, "/content"), "123-45-6789");
    assert_eq!(concat(&out, "/content"), "Her SSN is [US_SSN] per the file.");
    // the rest goes out before the response's end
    assert!(events(&out).last().is_some_and(|e| e["type"] == "conversation.response.done"), "{out}");
}

/// Vercel AI SDK 5 UI message streams (`result.toUIMessageStreamResponse()`,
/// header `x-vercel-ai-ui-message-stream: v1`), what Next.js RAG backends
/// answer: `data: {"type":"text-delta","id":…,"delta":"…"}` (also
/// `reasoning-delta`), concatenated by `useChat`; joined per part `id`.
#[test]
fn vercel_ai_sdk_ui_stream_text_delta_joined() {
    let mut input = ev(&json!({"type": "start", "messageId": "m1"}));
    input += &ev(&json!({"type": "start-step"}));
    input += &ev(&json!({"type": "text-start", "id": "txt-0"}));
    for f in ["Her SSN is 123", "-45-", "6789 per", " the file."] {
        input += &ev(&json!({"type": "text-delta", "id": "txt-0", "delta": f}));
    }
    input += &ev(&json!({"type": "text-end", "id": "txt-0"}));
    input += &ev(&json!({"type": "finish-step"}));
    input += &ev(&json!({"type": "finish"}));
    input += "data: [DONE]\n\n";
    let out = run(StreamKind::Sse, &input);
    assert_masked(&out, &concat(&out, "/delta"), "123-45-6789");
    assert_eq!(concat(&out, "/delta"), "Her SSN is [US_SSN] per the file.");
    // the rest goes out before `text-end`, with the part's id
    let evs = events(&out);
    let end = evs.iter().position(|e| e["type"] == "text-end").unwrap_or(0);
    assert!(evs[..end].iter().filter(|e| e["type"] == "text-delta").all(|e| e["id"] == "txt-0"), "{out}");
    assert!(evs[end..].iter().all(|e| e["type"] != "text-delta"), "{out}");
    // two parts at once (text and reasoning) are joined apart
    let mut input = String::new();
    for (t, id, f) in [("reasoning-delta", "r-0", "mail jane"), ("text-delta", "t-0", "card 4111 1111"), ("reasoning-delta", "r-0", ".roe@example.org"), ("text-delta", "t-0", " 1111 1111")] {
        input += &ev(&json!({"type": t, "id": id, "delta": f}));
    }
    input += &ev(&json!({"type": "finish"}));
    let out = run(StreamKind::Sse, &input);
    let by = |id: &str| -> String { events(&out).iter().filter(|e| e["id"] == id).filter_map(|e| e["delta"].as_str().map(String::from)).collect() };
    assert_eq!((by("r-0"), by("t-0")), ("mail [EMAIL]".to_string(), "card [PAYMENT_CARD]".to_string()), "{out}");
}

/// OpenRouter chat-completion chunks of reasoning models carry the
/// reasoning twice: `delta.reasoning` (joined by the masker) and
/// `delta.reasoning_details[]` (`{"type":"reasoning.text","text":…}`),
/// which OpenRouter asks clients to accumulate and send back (tool use
/// with reasoning models). The copy carries what is released of the
/// joined reasoning.
#[test]
fn openrouter_reasoning_details_text_joined() {
    let frags = ["The customer is jane", ".roe@exa", "mple.org and", " wants a refund. "];
    let mut input = String::new();
    for f in frags {
        input += &ev(&json!({"id": "gen-1", "provider": "Anthropic", "model": "anthropic/claude-sonnet-4", "object": "chat.completion.chunk", "created": 1,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "", "reasoning": f,
                "reasoning_details": [{"type": "reasoning.text", "text": f, "format": "anthropic-claude-v1", "index": 0}]},
                "finish_reason": null, "native_finish_reason": null, "logprobs": null}]}));
    }
    input += &ev(&json!({"id": "gen-1", "object": "chat.completion.chunk", "created": 1, "model": "anthropic/claude-sonnet-4",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Done."}, "finish_reason": "stop"}]}));
    input += "data: [DONE]\n\n";
    let out = run(StreamKind::Sse, &input);
    assert!(!concat(&out, "/choices/0/delta/reasoning").contains(EMAIL), "sanity: reasoning is joined");
    assert_masked(&out, &concat(&out, "/choices/0/delta/reasoning_details/0/text"), EMAIL);
    assert_eq!(concat(&out, "/choices/0/delta/reasoning_details/0/text"), concat(&out, "/choices/0/delta/reasoning"));
    // a copy that differs from the fragment is masked on its own
    let input = ev(&json!({"choices": [{"index": 0, "delta": {"reasoning": "a", "reasoning_details": [{"type": "reasoning.summary", "summary": "x"}, {"type": "reasoning.text", "text": "mail jane.roe@example.org"}]}}]}));
    let out = run(StreamKind::Sse, &input);
    assert_eq!(events(&out)[0]["choices"][0]["delta"]["reasoning_details"][1]["text"], "mail [EMAIL]", "{out}");
}

/// LiteLLM proxy (`/v1/chat/completions`) in front of Claude with
/// extended thinking (anthropic/, bedrock/, vertex_ai/): each chunk's
/// `delta` carries the thinking fragment as `reasoning_content` (joined)
/// and again in `thinking_blocks[].thinking` and
/// `provider_specific_fields.thinking_blocks[].thinking`
/// (litellm/llms/anthropic/chat/handler.py, `chunk_parser`): both copies
/// carry what is released of the joined reasoning.
#[test]
fn litellm_thinking_blocks_joined() {
    let frags = ["Reach the user at jane", ".roe@exa", "mple.org, per", " the CRM record. "];
    let mut input = String::new();
    for f in frags {
        let blocks = json!([{"type": "thinking", "thinking": f, "signature": null}]);
        input += &ev(&json!({"id": "chatcmpl-1", "created": 1, "model": "claude-sonnet-4-20250514", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": "", "role": "assistant", "reasoning_content": f,
                "thinking_blocks": blocks, "provider_specific_fields": {"thinking_blocks": blocks}}}]}));
    }
    input += &ev(&json!({"id": "chatcmpl-1", "created": 1, "model": "claude-sonnet-4-20250514", "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": "OK."}, "finish_reason": "stop"}]}));
    input += "data: [DONE]\n\n";
    let out = run(StreamKind::Sse, &input);
    assert!(!concat(&out, "/choices/0/delta/reasoning_content").contains(EMAIL), "sanity: reasoning_content is joined");
    assert_masked(&out, &concat(&out, "/choices/0/delta/thinking_blocks/0/thinking"), EMAIL);
    let psf = concat(&out, "/choices/0/delta/provider_specific_fields/thinking_blocks/0/thinking");
    assert_masked(&out, &psf, EMAIL);
    assert_eq!(psf, concat(&out, "/choices/0/delta/reasoning_content"));
}

/// Perplexity Sonar `/chat/completions` streams in `stream_mode: "full"`
/// (the default) repeat the whole answer so far in
/// `choices[].message.content` of every chunk, next to `delta.content`.
/// Masked alone, a snapshot that ends inside a value would hold a prefix
/// that is no value yet (here the first 15 digits of a Visa number, whose
/// 16th digit is its Luhn check digit): each snapshot is the answer
/// released so far instead.
#[test]
fn perplexity_full_mode_cumulative_message_prefix() {
    let frags = ["Card on file: 4111 1111", " 1111 111", "1, expires 12/27."];
    let mut input = String::new();
    let mut so_far = String::new();
    for (k, f) in frags.iter().enumerate() {
        so_far += f;
        let finish = if k + 1 == frags.len() { json!("stop") } else { Value::Null };
        input += &ev(&json!({"id": "0d1f", "model": "sonar", "created": 1, "object": "chat.completion.chunk",
            "usage": {"prompt_tokens": 9, "completion_tokens": k + 1, "total_tokens": 10 + k},
            "citations": ["https://example.com/crm"],
            "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": so_far},
                "delta": {"role": "assistant", "content": f}}]}));
    }
    input += "data: [DONE]\n\n";
    let out = run(StreamKind::Sse, &input);
    assert!(!concat(&out, "/choices/0/delta/content").contains("4111 1111 1111 1111"), "sanity: delta.content is joined");
    // 15 of 16 digits: the whole PAN follows by Luhn
    assert!(!out.contains("4111 1111 1111 111"), "card prefix in a cumulative message snapshot:\n{out}");
    // the last snapshot is the whole masked answer
    let evs = events(&out);
    let last = evs.iter().rev().find_map(|e| e["choices"][0]["message"]["content"].as_str()).unwrap_or_default().to_string();
    assert_eq!(last, concat(&out, "/choices/0/delta/content"), "{out}");
    assert_eq!(last, "Card on file: [PAYMENT_CARD], expires 12/27.");
}

/// OpenRouter (OpenAI reasoning models) streams the reasoning summary as
/// `delta.reasoning` plus `reasoning_details: [{"type":"reasoning.summary","summary": <same fragment>}]`:
/// the `summary` copy carries what is released of the joined reasoning.
#[test]
fn openrouter_reasoning_summary_copy_joined() {
    let frags = ["The customer is jane", ".roe@exa", "mple.org and", " wants a refund. "];
    let mut input = String::new();
    for f in frags {
        input += &ev(&json!({"id": "gen-1", "provider": "OpenAI", "model": "openai/gpt-5", "object": "chat.completion.chunk", "created": 1,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "", "reasoning": f,
                "reasoning_details": [{"type": "reasoning.summary", "summary": f, "format": "openai-responses-v1", "index": 0}]},
                "finish_reason": null}]}));
    }
    input += &ev(&json!({"id": "gen-1", "object": "chat.completion.chunk", "created": 1, "choices": [{"index": 0, "delta": {"content": "Done."}, "finish_reason": "stop"}]}));
    input += "data: [DONE]\n\n";
    let out = run(StreamKind::Sse, &input);
    let joined = concat(&out, "/choices/0/delta/reasoning_details/0/summary");
    assert!(!joined.contains(EMAIL), "summary copy rebuilds the address: {joined:?}\n{out}");
}

/// text-generation-webui (oobabooga `extensions/openai`) sends
/// `message.content` equal to the fragment next to `delta.content`: it
/// carries what is released of that fragment, so the copies add up to the
/// masked answer once.
#[test]
fn message_content_fragment_copy_stays_a_fragment() {
    let lead = "Thanks for waiting, I looked the customer up in the CRM and found the record you asked about, including the contact details. ";
    let frags = [lead, "Write to jane", ".roe@exa", "mple.org for", " the refund, and allow a few days for the reply to come through. ", "Anything else?"];
    let mut input = String::new();
    for f in frags {
        input += &ev(&json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "x",
            "choices": [{"index": 0, "finish_reason": null, "message": {"role": "assistant", "content": f}, "delta": {"role": "assistant", "content": f}}]}));
    }
    input += &ev(&json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "x",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": ""}, "delta": {}}]}));
    input += "data: [DONE]\n\n";
    let out = run(StreamKind::Sse, &input);
    let d = concat(&out, "/choices/0/delta/content");
    let m = concat(&out, "/choices/0/message/content");
    assert_eq!(d, format!("{lead}Write to [EMAIL] for the refund, and allow a few days for the reply to come through. Anything else?"));
    assert_eq!(m, d, "message.content fragments no longer add up to the answer:\n{out}");
}

/// A `message.content` that is neither the chunk's fragment nor the answer
/// so far is masked on its own: one big delta then many chunks with an
/// empty `message.content` must not make each chunk repeat the answer.
#[test]
fn snapshot_replacement_does_not_amplify_output() {
    let big = "word ".repeat(20_000); // 100 KB
    let mut input = ev(&json!({"id": "p", "object": "chat.completion.chunk", "choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "delta": {"content": big}}]}));
    for _ in 0..200 {
        input += &ev(&json!({"id": "p", "object": "chat.completion.chunk", "choices": [{"index": 0, "message": {"content": ""}, "delta": {"content": "x "}}]}));
    }
    input += "data: [DONE]\n\n";
    let out = run_one(StreamKind::Sse, &input);
    assert!(out.len() < 4 * input.len(), "output {} bytes for {} bytes of input", out.len(), input.len());
}

/// Vercel AI SDK UI stream: `tool-input-delta.inputTextDelta` (joined by
/// `useChat` into the tool input) is joined per `toolCallId`, held whole
/// and masked as JSON; the rest goes out before `tool-input-available`.
#[test]
fn vercel_tool_input_delta_joined() {
    let mut input = ev(&json!({"type": "start", "messageId": "m1"}));
    input += &ev(&json!({"type": "tool-input-start", "toolCallId": "call_1", "toolName": "sendEmail"}));
    for f in ["{\"to\":\"jane", ".roe@exa", "mple.org\",\"body\":\"hi\"}"] {
        input += &ev(&json!({"type": "tool-input-delta", "toolCallId": "call_1", "inputTextDelta": f}));
    }
    input += &ev(&json!({"type": "tool-input-available", "toolCallId": "call_1", "toolName": "sendEmail", "input": {"to": EMAIL, "body": "hi"}}));
    input += &ev(&json!({"type": "finish"}));
    input += "data: [DONE]\n\n";
    let out = run(StreamKind::Sse, &input);
    let joined = concat(&out, "/inputTextDelta");
    assert!(!joined.contains(EMAIL), "tool input rebuilt from inputTextDelta: {joined:?}\n{out}");
}

/// Mistral conversations: a message's held text goes out before a tool
/// execution or the next message, not at the end of the response.
#[test]
fn mistral_messages_keep_their_order() {
    let mut input = named("conversation.response.started", &json!({"type": "conversation.response.started", "conversation_id": "c"}));
    for f in ["Let me look up ", "the record."] {
        input += &named("message.output.delta", &json!({"type": "message.output.delta", "output_index": 0, "id": "msg_1", "content_index": 0, "role": "assistant", "content": f}));
    }
    input += &named("tool.execution.started", &json!({"type": "tool.execution.started", "output_index": 1, "id": "tool_1", "name": "web_search"}));
    input += &named("tool.execution.done", &json!({"type": "tool.execution.done", "output_index": 1, "id": "tool_1", "name": "web_search"}));
    for f in ["Found it: ", "write to jane", ".roe@example.org. ", "The record was last updated in March by the support team after the customer called about a billing question; ", "nothing else is on file."] {
        input += &named("message.output.delta", &json!({"type": "message.output.delta", "output_index": 2, "id": "msg_2", "content_index": 0, "role": "assistant", "content": f}));
    }
    input += &named("conversation.response.done", &json!({"type": "conversation.response.done", "usage": {}}));
    let out = run(StreamKind::Sse, &input);
    assert_eq!(concat(&out, "/content"), "Let me look up the record.Found it: write to [EMAIL]. The record was last updated in March by the support team after the customer called about a billing question; nothing else is on file.", "{out}");
}

/// Many parts at once (every Vercel `id`, llama.cpp `index`, Mistral `id`
/// holds text and a copy of its last event): at 128, what they hold goes
/// out, so a stream of many ids is not held until its end.
#[test]
fn many_part_ids_are_bounded() {
    let m = masker();
    let mut s = m.stream(StreamKind::Sse);
    let mut counts = Counts::new();
    let mut before = 0usize;
    let mut pushed = 0usize;
    for i in 0..20_000 {
        let e = ev(&json!({"type": "text-delta", "id": format!("t-{i}"), "delta": "some words of text here, "}));
        pushed += e.len();
        before += s.push(e.as_bytes(), &mut counts).len();
    }
    let out_after = s.finish(&mut counts).len();
    assert!(out_after < 1 << 20, "{} bytes released only at the end (of {pushed} pushed, {before} before)", out_after);
}

/// Perplexity-style snapshot: when the finishing chunk has `delta: {}` the
/// held tail goes out in a synthetic chunk before it, and the finishing
/// chunk's `message.content` snapshot holds it too.
#[test]
fn final_snapshot_holds_the_tail_of_a_synthetic_chunk() {
    let frags = ["Card on file: 4111 1111", " 1111 111", "1, expires 12/27."];
    let mut input = String::new();
    let mut so_far = String::new();
    for f in frags {
        so_far += f;
        input += &ev(&json!({"id": "p", "model": "sonar", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "finish_reason": null, "message": {"role": "assistant", "content": so_far}, "delta": {"role": "assistant", "content": f}}]}));
    }
    input += &ev(&json!({"id": "p", "model": "sonar", "object": "chat.completion.chunk",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": so_far}, "delta": {}}]}));
    input += "data: [DONE]\n\n";
    let out = run(StreamKind::Sse, &input);
    let evs = events(&out);
    let last = evs.iter().rev().find_map(|e| e["choices"][0]["message"]["content"].as_str()).unwrap_or_default().to_string();
    assert_eq!(concat(&out, "/choices/0/delta/content"), "Card on file: [PAYMENT_CARD], expires 12/27.");
    assert_eq!(last, "Card on file: [PAYMENT_CARD], expires 12/27.", "{out}");
}

/// Cloudflare Workers AI: the last `response` event carries `usage`; the
/// rest held at `[DONE]` goes out as a copy of that event without `usage`
/// (clients that add up streamed usage would count it twice).
#[test]
fn workers_ai_tail_copy_does_not_repeat_usage() {
    let mut input = String::new();
    for f in ["Call", " +1 415", " 555 0134 or write to jane", ".roe@exa", "mple.org."] {
        input += &ev(&json!({"response": f}));
    }
    input += &ev(&json!({"response": "", "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}}));
    input += "data: [DONE]\n\n";
    let out = run(StreamKind::Sse, &input);
    assert_eq!(concat(&out, "/response"), "Call [PHONE] or write to [EMAIL].");
    assert_eq!(events(&out).iter().filter(|e| e.get("usage").is_some()).count(), 1, "usage repeated:\n{out}");
}

/// Records that hold a top-level `content` or `response` (or, in JSON
/// lines, `message.content`) without the marks of llama.cpp (`stop`),
/// Workers AI (no other members) or Ollama (`done`) are masked one by
/// one where they are: joined, a value at the end of one record would be
/// glued to the next record's first word and pass, and every record's
/// text would move into one event at the end.
#[test]
fn records_that_look_like_llm_events_are_not_joined() {
    let m = masker();
    let cases = [
        (StreamKind::JsonLines, "{\"id\":1,\"response\":\"my SSN is 123-45-6789\"}\n{\"id\":2,\"response\":\"Thanks, noted\"}\n", "123-45-6789"),
        (StreamKind::JsonLines, "{\"user\":\"a\",\"message\":{\"content\":\"card 4111111111111111\"}}\n{\"user\":\"b\",\"message\":{\"content\":\"ok\"}}\n", "4111111111111111"),
        // `done` without Ollama's `model` (a task export), `stop` without
        // llama.cpp's slot, index or tokens
        (StreamKind::JsonLines, "{\"id\":1,\"response\":\"reach me at 415-555-0134\",\"done\":false}\n{\"id\":2,\"response\":\"Thanks, refunded\",\"done\":true}\n", "415-555-0134"),
        (StreamKind::Sse, "data: {\"content\":\"Owner SSN 123-45-6789\",\"stop\":false}\n\ndata: {\"content\":\"Thanks\",\"stop\":false}\n\n", "123-45-6789"),
        (StreamKind::Sse, "data: {\"doc_id\":\"a\",\"content\":\"Owner SSN 123-45-6789\"}\n\ndata: {\"doc_id\":\"b\",\"content\":\"Thanks\"}\n\ndata: [DONE]\n\n", "123-45-6789"),
        (StreamKind::Sse, "data: {\"doc_id\":\"a\",\"response\":\"Owner SSN 123-45-6789\"}\n\ndata: {\"doc_id\":\"b\",\"response\":\"Thanks\"}\n\ndata: [DONE]\n\n", "123-45-6789"),
    ];
    for (kind, body, value) in cases {
        let mut s = m.stream(kind);
        let mut counts = Counts::new();
        let mut out = s.push(body.as_bytes(), &mut counts);
        out.extend(s.finish(&mut counts));
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains(value), "{out}");
        // each record keeps its own text, in place
        assert!(out.contains("Thanks") || out.contains("\"ok\""), "{out}");
        let first = out.lines().find(|l| !l.is_empty()).unwrap_or_default();
        assert!(["[US_SSN]", "[PAYMENT_CARD]", "[PHONE]"].iter().any(|l| first.contains(l)), "{out}");
    }
}

/// Workers AI events that carry a top-level `finish_reason` (as Cloudflare's
/// `workers-ai-provider` reads it) are still joined: a phone number split
/// between two events is masked.
#[test]
fn workers_ai_events_with_finish_reason_are_joined() {
    let input = [
        ev(&json!({"response": "Call me at 415-555-", "finish_reason": null})),
        ev(&json!({"response": "0134 today", "finish_reason": "stop"})),
        "data: [DONE]\n\n".to_string(),
    ]
    .concat();
    let out = run(StreamKind::Sse, &input);
    let joined = concat(&out, "/response");
    assert_masked(&out, &joined, "0134");
    assert_eq!(joined, "Call me at [PHONE] today", "{out}");
}
