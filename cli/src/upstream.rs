//! `nhi-gate dev upstream`: a demo RAG backend on one port.
//!
//! Vector store (Qdrant REST shapes, <https://api.qdrant.tech>):
//! - `GET /collections` — list collections
//! - `PUT /collections/{c}/points` — upsert `{"points":[{"id","vector","payload"}]}`
//! - `POST /collections/{c}/points/search` — `{"vector":[...],"limit":N}` → scored points
//! - `POST /collections/{c}/points/delete` — `{"points":[ids]}`; `DELETE /collections/{c}` drops it
//!
//! LLM (OpenAI chat completions shapes):
//! - `POST /v1/chat/completions` — JSON, or SSE `chat.completion.chunk` events
//!   ending in `data: [DONE]` when `"stream": true`; a `usage` object in the
//!   JSON answer, and in a last chunk when `stream_options.include_usage` is set.
//!
//! The seeded documents carry realistic but fake personal data, so that
//! response masking has something to show. Every answer carries
//! `x-demo-upstream-auth` naming the `Authorization`/`api-key` it received
//! (as `api-key sha256:<first 12 hex digits>`), so a demo shows which
//! credential reached the backend without echoing it.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Read;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9401")]
    listen: String,
    /// Delay between streamed SSE events, milliseconds.
    #[arg(long, default_value_t = 30)]
    stream_delay_ms: u64,
}

type Store = Arc<Mutex<BTreeMap<String, BTreeMap<String, Value>>>>;

fn seed() -> BTreeMap<String, BTreeMap<String, Value>> {
    let docs = [
        (1, [0.9, 0.1, 0.0], "Onboarding runbook: escalate to Jane Doe (jane.doe@example.com, +1 415-555-0134)."),
        (2, [0.1, 0.9, 0.0], "Customer record: John Q. Public, SSN 123-45-6789, card 4111 1111 1111 1111."),
        (3, [0.0, 0.2, 0.9], "Billing contact: billing+eu@acme-corp.example, IBAN DE89 3704 0044 0532 0130 00."),
    ];
    let mut points = BTreeMap::new();
    for (id, v, text) in docs {
        points.insert(id.to_string(), json!({"id": id, "vector": v, "payload": {"text": text, "source": "demo"}}));
    }
    let mut c = BTreeMap::new();
    c.insert("docs".to_string(), points);
    c
}

/// The first 12 hex digits of the SHA-256 of `value`.
fn fingerprint(value: &str) -> String {
    hmac_sha256::Hash::hash(value.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect()
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn dot(a: &Value, b: &Value) -> f64 {
    match (a.as_array(), b.as_array()) {
        (Some(a), Some(b)) => a.iter().zip(b).map(|(x, y)| x.as_f64().unwrap_or(0.0) * y.as_f64().unwrap_or(0.0)).sum(),
        _ => 0.0,
    }
}

fn send(req: tiny_http::Request, status: u16, body: Value, seen_auth: &str) {
    let mut r = tiny_http::Response::from_string(body.to_string()).with_status_code(status);
    for (k, v) in [("content-type", "application/json"), ("x-demo-upstream-auth", seen_auth)] {
        if let Ok(h) = tiny_http::Header::from_bytes(k, v) {
            r = r.with_header(h);
        }
    }
    let _ = req.respond(r);
}

fn words(messages: &Value) -> usize {
    messages
        .as_array()
        .map(|m| m.iter().filter_map(|x| x["content"].as_str()).map(|c| c.split_whitespace().count()).sum())
        .unwrap_or(0)
}

/// An SSE body written out event by event, with a delay between events.
struct Sse {
    events: std::collections::VecDeque<Vec<u8>>,
    current: std::io::Cursor<Vec<u8>>,
    delay: std::time::Duration,
}

impl Read for Sse {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.current.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            match self.events.pop_front() {
                Some(e) => {
                    std::thread::sleep(self.delay);
                    self.current = std::io::Cursor::new(e);
                }
                None => return Ok(0),
            }
        }
    }
}

fn chat(req: tiny_http::Request, body: &Value, delay_ms: u64, seen_auth: &str) {
    let model = body["model"].as_str().unwrap_or("demo-llm").to_string();
    let answer = "According to the runbook, contact Jane Doe at jane.doe@example.com or +1 415-555-0134; \
                  the customer's SSN is 123-45-6789.";
    let prompt_tokens = words(&body["messages"]).max(1);
    let completion_tokens = answer.split_whitespace().count();
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                       "total_tokens": prompt_tokens + completion_tokens});
    let id = format!("chatcmpl-demo-{}", now_s());
    if body["stream"].as_bool() != Some(true) {
        let v = json!({"id": id, "object": "chat.completion", "created": now_s(), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": usage});
        return send(req, 200, v, seen_auth);
    }
    let chunk = |delta: Value, finish: Value| {
        let v = json!({"id": id, "object": "chat.completion.chunk", "created": now_s(), "model": model,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {v}\n\n").into_bytes()
    };
    let mut events = std::collections::VecDeque::new();
    events.push_back(chunk(json!({"role": "assistant", "content": ""}), Value::Null));
    let pieces: Vec<&str> = answer.split_inclusive(' ').collect();
    for p in pieces.chunks(3) {
        events.push_back(chunk(json!({"content": p.concat()}), Value::Null));
    }
    events.push_back(chunk(json!({}), json!("stop")));
    if body["stream_options"]["include_usage"].as_bool() == Some(true) {
        let v = json!({"id": id, "object": "chat.completion.chunk", "created": now_s(), "model": model,
                       "choices": [], "usage": usage});
        events.push_back(format!("data: {v}\n\n").into_bytes());
    }
    events.push_back(b"data: [DONE]\n\n".to_vec());
    let sse = Sse { events, current: std::io::Cursor::new(Vec::new()), delay: std::time::Duration::from_millis(delay_ms) };
    let mut headers = Vec::new();
    for (k, v) in [("content-type", "text/event-stream"), ("cache-control", "no-cache"), ("x-demo-upstream-auth", seen_auth)] {
        if let Ok(h) = tiny_http::Header::from_bytes(k, v) {
            headers.push(h);
        }
    }
    let _ = req.respond(tiny_http::Response::new(200.into(), headers, sse, None, None));
}

fn handle(mut req: tiny_http::Request, store: &Store, delay_ms: u64) {
    let mut raw = Vec::new();
    let _ = req.as_reader().take(8 << 20).read_to_end(&mut raw);
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let seen_auth = req
        .headers()
        .iter()
        .filter(|h| h.field.equiv("authorization") || h.field.equiv("api-key"))
        // a fingerprint, not the value: the gateway drops response headers
        // that hold a backend credential, and a demo should not print it
        .map(|h| format!("{} sha256:{}", h.field, fingerprint(h.value.as_str())))
        .collect::<Vec<_>>()
        .join("; ");
    let url = req.url().split('?').next().unwrap_or("").to_string();
    let segs: Vec<&str> = url.trim_matches('/').split('/').collect();
    let method = req.method().as_str().to_string();
    let ok = |result: Value| json!({"result": result, "status": "ok", "time": 0.001});
    match (method.as_str(), segs.as_slice()) {
        ("GET", ["healthz"]) => send(req, 200, json!({"status": "ok"}), &seen_auth),
        ("GET", ["collections"]) => {
            let names: Vec<Value> = store.lock().map(|s| s.keys().map(|k| json!({"name": k})).collect()).unwrap_or_default();
            send(req, 200, ok(json!({"collections": names})), &seen_auth)
        }
        ("PUT", ["collections", c, "points"]) => {
            let pts = body["points"].as_array().cloned().unwrap_or_default();
            if let Ok(mut s) = store.lock() {
                let col = s.entry((*c).to_string()).or_default();
                for p in pts {
                    col.insert(p["id"].to_string().trim_matches('"').to_string(), p);
                }
            }
            send(req, 200, ok(json!({"operation_id": now_s(), "status": "completed"})), &seen_auth)
        }
        ("POST", ["collections", c, "points", "search"]) => {
            let limit = body["limit"].as_u64().unwrap_or(3) as usize;
            let mut hits: Vec<Value> = store
                .lock()
                .ok()
                .and_then(|s| s.get(*c).cloned())
                .unwrap_or_default()
                .values()
                .map(|p| json!({"id": p["id"], "score": dot(&p["vector"], &body["vector"]), "payload": p["payload"]}))
                .collect();
            hits.sort_by(|a, b| b["score"].as_f64().partial_cmp(&a["score"].as_f64()).unwrap_or(std::cmp::Ordering::Equal));
            hits.truncate(limit);
            send(req, 200, ok(Value::Array(hits)), &seen_auth)
        }
        ("POST", ["collections", c, "points", "delete"]) => {
            let ids: Vec<String> = body["points"].as_array().cloned().unwrap_or_default().iter().map(|i| i.to_string().trim_matches('"').to_string()).collect();
            if let Ok(mut s) = store.lock() {
                if let Some(col) = s.get_mut(*c) {
                    col.retain(|k, _| !ids.contains(k));
                }
            }
            send(req, 200, ok(json!({"operation_id": now_s(), "status": "completed"})), &seen_auth)
        }
        ("DELETE", ["collections", c]) => {
            let existed = store.lock().map(|mut s| s.remove(*c).is_some()).unwrap_or(false);
            send(req, 200, ok(json!(existed)), &seen_auth)
        }
        ("POST", ["v1", "chat", "completions"]) => chat(req, &body, delay_ms, &seen_auth),
        _ => send(req, 404, json!({"status": {"error": "not found"}}), &seen_auth),
    }
}

pub fn run(a: Args) -> ExitCode {
    let server = match tiny_http::Server::http(&a.listen) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("nhi-gate dev upstream: cannot listen on {}: {e}", a.listen);
            return ExitCode::FAILURE;
        }
    };
    let store: Store = Arc::new(Mutex::new(seed()));
    println!("nhi-gate dev upstream: vector store and LLM listening on {}", a.listen);
    for req in server.incoming_requests() {
        let store = store.clone();
        let delay = a.stream_delay_ms;
        std::thread::spawn(move || handle(req, &store, delay));
    }
    ExitCode::SUCCESS
}
