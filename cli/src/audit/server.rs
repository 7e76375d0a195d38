//! HTTP side of `nhi-gate audit serve` (docs/audit-record.md).
//!
//! - `POST /v1/records` — body `{"records": [<object>, …]}` with 1 to
//!   [`MAX_BATCH`] objects → stored in one durable transaction, then
//!   `200 {"accepted": N}`.
//! - `GET /v1/records?subject=&since=&until=&resource=&decision=&session=` —
//!   `200 {"records": [...]}`, the matching records as stored, by seq
//!   (`since`/`until`: RFC 3339 or ms epoch, percent-encoded; `+` is a plus).
//! - `GET /healthz` — `200 {"status": "ok", "records": N, "head": "<hash>"}`.
//!
//! With `--token T` both `/v1/records` endpoints need `authorization: Bearer T`
//! (else 401). Errors are `{"error": code, "detail": text}` with 400
//! (`bad_request`), 401 (`unauthorized`), 404, 405, 413 (`too_large`) or 500
//! (`internal`: not stored, the filter retries).
//!
//! Every request runs on its own thread; the store sits behind one mutex.

use super::query::{json_array, parse_time, parsed};
use super::store::{Filter, Store};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, Mutex, MutexGuard};

/// Most records in one batch.
pub const MAX_BATCH: usize = 1000;

/// Largest request body read, bytes (1000 records with large body excerpts).
const MAX_BODY: u64 = 64 << 20;

/// State shared by all request threads.
pub struct Shared {
    /// Required bearer token on `/v1/records`.
    pub token: Option<String>,
    store: Mutex<Store>,
}

impl Shared {
    /// Wraps the store for the request threads.
    pub fn new(token: Option<String>, store: Store) -> Shared {
        Shared { token, store: Mutex::new(store) }
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Byte-wise comparison whose time does not depend on where inputs differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(req: &tiny_http::Request) -> Option<String> {
    let h = req.headers().iter().find(|h| h.field.equiv("authorization"))?;
    let (scheme, token) = h.value.as_str().trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
}

type Reply = (u16, String);

fn error(status: u16, code: &str, detail: &str) -> Reply {
    (status, json!({"error": code, "detail": detail}).to_string())
}

/// Handles one request (on its own thread) and answers it.
pub fn handle(mut req: tiny_http::Request, shared: &Shared) {
    let mut raw = Vec::new();
    // the token is checked before a body is read: an unauthenticated
    // client cannot make the collector hold 64 MiB per connection
    let path = req.url().split('?').next().unwrap_or("").to_string();
    let unauthorized = path == "/v1/records" && shared.token.as_ref().is_some_and(|t| !bearer(&req).is_some_and(|b| same(&b, t)));
    let read = if unauthorized { Ok(0) } else { req.as_reader().take(MAX_BODY + 1).read_to_end(&mut raw) };
    let (status, body) = match read {
        _ if unauthorized => error(401, "unauthorized", "missing or wrong bearer token"),
        Err(e) => error(400, "bad_request", &format!("unreadable body: {e}")),
        Ok(_) if raw.len() as u64 > MAX_BODY => error(413, "too_large", &format!("body over {MAX_BODY} bytes")),
        Ok(_) => route(&req, &raw, shared),
    };
    let mut resp = tiny_http::Response::from_string(body).with_status_code(status);
    for (k, v) in [("content-type", "application/json"), ("cache-control", "no-store")] {
        if let Ok(h) = tiny_http::Header::from_bytes(k, v) {
            resp = resp.with_header(h);
        }
    }
    let _ = req.respond(resp);
}

fn route(req: &tiny_http::Request, raw: &[u8], s: &Shared) -> Reply {
    let url = req.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    match (req.method().as_str(), path) {
        ("GET", "/healthz") => match s.lock().head() {
            Ok((n, head)) => (200, json!({"status": "ok", "records": n, "head": head}).to_string()),
            Err(e) => error(500, "internal", &e.to_string()),
        },
        (m @ ("GET" | "POST"), "/v1/records") => {
            if let Some(token) = &s.token {
                if !bearer(req).is_some_and(|t| same(&t, token)) {
                    return error(401, "unauthorized", "missing or wrong bearer token");
                }
            }
            if m == "POST" {
                post(s, raw)
            } else {
                get(s, query)
            }
        }
        (_, "/healthz" | "/v1/records") => error(405, "method_not_allowed", "method not allowed here"),
        _ => error(404, "not_found", "no such endpoint"),
    }
}

/// Validates a batch body: the records' texts (exactly as in the body) with
/// their parsed values, or the 400 detail.
pub fn parse_batch(raw: &[u8]) -> Result<Vec<(Box<RawValue>, Value)>, String> {
    let top: BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(raw).map_err(|e| format!("body must be a JSON object: {e}"))?;
    let shape = format!("records must be an array of 1 to {MAX_BATCH} JSON objects");
    let items: Vec<Box<RawValue>> = match top.get("records") {
        Some(r) => serde_json::from_str(r.get()).map_err(|_| shape.clone())?,
        None => return Err(format!("missing records: {shape}")),
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(format!("{shape} (got {})", items.len()));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, r)| match serde_json::from_str::<Value>(r.get()) {
            Ok(v) if v.is_object() => Ok((r, v)),
            _ => Err(format!("records[{i}] is not a JSON object")),
        })
        .collect()
}

fn post(s: &Shared, raw: &[u8]) -> Reply {
    let batch = match parse_batch(raw) {
        Ok(b) => b,
        Err(e) => return error(400, "bad_request", &e),
    };
    let records: Vec<(&str, Value)> = batch.iter().map(|(r, v)| (r.get().trim(), v.clone())).collect();
    let result = s.lock().append(&records);
    match result {
        Ok((first, last)) => {
            eprintln!("nhi-gate audit: stored {} record(s), seq {first}..{last}", records.len());
            (200, json!({"accepted": records.len()}).to_string())
        }
        Err(e) => {
            eprintln!("nhi-gate audit: store failed: {e}");
            error(500, "internal", &format!("not stored: {e}"))
        }
    }
}

/// Decodes `%XX` escapes (a `+` stays a plus, so RFC 3339 offsets survive).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The filter a `GET /v1/records` query string describes.
pub fn query_filter(query: &str) -> Result<Filter, String> {
    let mut f = Filter::default();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = percent_decode(v).ok_or_else(|| format!("{k}: bad percent-encoding"))?;
        match k {
            "subject" => f.subject = Some(v),
            "resource" => f.resource = Some(v),
            "decision" => f.decision = Some(v),
            "session" => f.session = Some(v),
            "since" => f.since = Some(parse_time(&v)?),
            "until" => f.until = Some(parse_time(&v)?),
            _ => return Err(format!("unknown parameter {k:?} (subject, since, until, resource, decision, session)")),
        }
    }
    Ok(f)
}

fn get(s: &Shared, query: &str) -> Reply {
    let f = match query_filter(query) {
        Ok(f) => f,
        Err(e) => return error(400, "bad_request", &e),
    };
    let rows = s.lock().select(&f);
    match rows {
        Ok(rows) => (200, format!("{{\"records\":{}}}", json_array(&parsed(rows, "nhi-gate audit")).trim_end())),
        Err(e) => error(500, "internal", &e.to_string()),
    }
}

/// Serves until the process ends, one thread per request. A request whose
/// thread cannot be created (a process thread or memory limit) is dropped,
/// not a reason to abort the process.
pub fn serve(server: tiny_http::Server, shared: Arc<Shared>) {
    for req in server.incoming_requests() {
        let shared = shared.clone();
        if let Err(e) = std::thread::Builder::new().spawn(move || handle(req, &shared)) {
            eprintln!("nhi-gate audit: request dropped, no thread for it: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_each_record_text_exactly() {
        let b = parse_batch(br#"{"records": [ {"b": 1,  "a": "x"} ,{"z":[1, 2]}], "extra": 1}"#).unwrap();
        let texts: Vec<&str> = b.iter().map(|(r, _)| r.get()).collect();
        assert_eq!(texts, [r#"{"b": 1,  "a": "x"}"#, r#"{"z":[1, 2]}"#]);
        for bad in [&b"[]"[..], b"{}", br#"{"records": []}"#, br#"{"records": {}}"#, br#"{"records": [1]}"#, b"nope"] {
            assert!(parse_batch(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let many = format!("{{\"records\": [{}]}}", vec!["{}"; MAX_BATCH + 1].join(","));
        assert!(parse_batch(many.as_bytes()).is_err());
        let max = format!("{{\"records\": [{}]}}", vec!["{}"; MAX_BATCH].join(","));
        assert_eq!(parse_batch(max.as_bytes()).unwrap().len(), MAX_BATCH);
    }

    #[test]
    fn query_strings_decode() {
        let f = query_filter("subject=ci%20ingest&since=2025-11-29T16:26:40%2B01:00&until=1764430000124&session=a+b").unwrap();
        assert_eq!(f.subject.as_deref(), Some("ci ingest"));
        assert_eq!(f.since, Some(1_764_430_000_000));
        assert_eq!(f.until, Some(1_764_430_000_124));
        assert_eq!(f.session.as_deref(), Some("a+b"));
        assert!(query_filter("since=later").is_err());
        assert!(query_filter("subject=%zz").is_err());
        assert!(query_filter("colour=red").is_err());
    }
}
