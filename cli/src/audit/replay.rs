//! `nhi-gate audit replay`: a session's exchange as people read it, and
//! optionally re-issued against another deployment.
//!
//! A session is the records with one `session` value (`--session`), or one
//! subject's records (`--subject`) split into runs wherever two requests are
//! more than `--gap-seconds` apart. Records are shown in request order
//! (`time_ms`, then seq). When a synchronous-audit resource left both a
//! request-part record (`status: null`) and a final one for the same
//! request (`request_id`, `node` and `time_ms`), only the final one is shown
//! (and sent).
//!
//! Output, per run:
//!
//! ```text
//! == session run-4711: 3 request(s), 2025-11-29T15:26:40.123Z .. 2025-11-29T15:27:02.000Z
//!
//! [1] 2025-11-29T15:26:40.123Z POST /v1/chat/completions -> allow 200 (seq 4) | staging 200
//! > the prompt (last user message of an OpenAI chat body, else the body text)
//! < the masked answer (chat content, joined SSE deltas, else the body text)
//! ```
//!
//! Every line of a prompt or answer gets its `> ` / `< ` prefix; `(no body)`
//! stands for a `null` body and ` [truncated]` ends a truncated one. The
//! `| staging …` part only appears with `--send`.

use super::query::{format_time, parse_time, parsed};
use super::store::{Filter, Store};
use serde_json::Value;
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Flags of `nhi-gate audit replay`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["session", "subject"])))]
pub struct ReplayArgs {
    /// SQLite database of the collector.
    #[arg(long, default_value = "nhi-gate-audit.db")]
    pub db: PathBuf,
    /// Replay the records whose `session` is X.
    #[arg(long, value_name = "X", conflicts_with = "subject")]
    pub session: Option<String>,
    /// Replay this subject's records, split into runs by --gap-seconds.
    #[arg(long, value_name = "S")]
    pub subject: Option<String>,
    /// With --subject: a pause longer than this many seconds starts a new run.
    #[arg(long, default_value_t = 300)]
    pub gap_seconds: u64,
    /// Only records at or after T (RFC 3339 or ms epoch).
    #[arg(long, value_name = "T", value_parser = parse_time)]
    pub since: Option<i64>,
    /// Only records before T (exclusive).
    #[arg(long, value_name = "T", value_parser = parse_time)]
    pub until: Option<i64>,
    /// Re-issue each recorded request (method, path, body) against this base
    /// URL (URL + recorded path) and print the status it answers.
    #[arg(long, value_name = "URL")]
    pub send: Option<String>,
    /// Extra request header for --send, `name: value` (repeatable), e.g. a
    /// staging credential.
    #[arg(long = "header", value_name = "NAME: VALUE", requires = "send")]
    pub headers: Vec<String>,
}

/// The text of `body` (`request_body` / `response_body`) and its truncation
/// flag; `None` when the body is `null` or has no text.
fn body_text<'a>(r: &'a Value, body: &str) -> Option<(&'a str, bool)> {
    let b = r.get(body)?;
    Some((b.get("text")?.as_str()?, b.get("truncated").and_then(Value::as_bool).unwrap_or(false)))
}

/// The text of an OpenAI `content`: a string, or the `text` of its parts.
fn content_text(c: &Value) -> Option<String> {
    match c {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect();
            (!texts.is_empty()).then(|| texts.join("\n"))
        }
        _ => None,
    }
}

/// The prompt of a request body: the last `user` message of an OpenAI chat
/// body, else the text as it is.
pub fn prompt(text: &str) -> String {
    let last_user = serde_json::from_str::<Value>(text).ok().and_then(|v| {
        let messages = v.get("messages")?.as_array()?;
        let m = messages.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?;
        content_text(m.get("content")?)
    });
    last_user.unwrap_or_else(|| text.to_string())
}

/// The answer in a response body: the joined `choices[].delta.content` of
/// the `data:` events of an SSE stream, `choices[0].message.content` of a
/// chat completion, else the text as it is.
pub fn answer(text: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return v.pointer("/choices/0/message/content").and_then(content_text).unwrap_or_else(|| text.to_string());
    }
    let mut found = false;
    let mut out = String::new();
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:") else { continue };
        let Ok(event) = serde_json::from_str::<Value>(data.trim()) else { continue };
        for choice in event.get("choices").and_then(Value::as_array).into_iter().flatten() {
            if let Some(c) = choice.pointer("/delta/content").and_then(Value::as_str) {
                found = true;
                out.push_str(c);
            }
        }
    }
    if found {
        out
    } else {
        text.to_string()
    }
}

/// `text` with `prefix` on every line (`(no body)` when `None`).
/// `text` with control characters other than a line break shown as
/// `\x1b`-style escapes, so a recorded prompt or answer cannot drive the
/// terminal (ANSI/OSC sequences: clipboard writes, cursor moves that hide
/// or forge lines) or overwrite a line with `\r`.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '\n' => out.push('\n'),
            c if c.is_control() || ('\u{80}'..='\u{9f}').contains(&c) => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

fn quoted(prefix: &str, body: Option<(String, bool)>) -> String {
    let Some((text, truncated)) = body else { return format!("{prefix}(no body)\n") };
    let mut out = String::new();
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.len() > 1 && lines.last() == Some(&"") {
        lines.pop();
    }
    for l in lines {
        out.push_str(prefix);
        out.push_str(&printable(l.strip_suffix('\r').unwrap_or(l)));
        out.push('\n');
    }
    if truncated {
        out.insert_str(out.len() - 1, " [truncated]");
    }
    out
}

/// The request a record belongs to: `request_id`, `node` and the request's
/// `time_ms`. The id alone is not enough: a client may send its own
/// `x-request-id`, and Envoy keeps it for clients on internal addresses, so
/// two requests can share one (a request part must not vanish behind
/// another request's final record).
fn request_key(r: &Value) -> Option<(String, String, i64)> {
    let id = r.get("request_id").and_then(Value::as_str)?.to_string();
    let node = r.get("node").and_then(Value::as_str).unwrap_or("").to_string();
    Some((id, node, time_of(r)))
}

/// Drops request-part records (`status: null`) whose request has a final record.
fn finals_only(records: Vec<(i64, Value)>) -> Vec<(i64, Value)> {
    let finished: HashSet<(String, String, i64)> =
        records.iter().filter(|(_, r)| !r.get("status").is_none_or(Value::is_null)).filter_map(|(_, r)| request_key(r)).collect();
    records
        .into_iter()
        .filter(|(_, r)| {
            let part = r.get("status").is_none_or(Value::is_null);
            !(part && request_key(r).is_some_and(|k| finished.contains(&k)))
        })
        .collect()
}

fn time_of(r: &Value) -> i64 {
    r.get("time_ms").and_then(Value::as_i64).unwrap_or(0)
}

/// Splits records (in request order) wherever consecutive `time_ms` are more than `gap_ms` apart.
pub fn runs(records: Vec<(i64, Value)>, gap_ms: i64) -> Vec<Vec<(i64, Value)>> {
    let mut out: Vec<Vec<(i64, Value)>> = Vec::new();
    for rec in records {
        match out.last_mut() {
            Some(run) if time_of(&rec.1) - time_of(&run.last().expect("runs are never empty").1) <= gap_ms => run.push(rec),
            _ => out.push(vec![rec]),
        }
    }
    out
}

/// Where --send goes: base URL, extra headers, the client.
struct Sender {
    base: String,
    headers: Vec<(String, String)>,
    agent: ureq::Agent,
}

/// What --send did with one record.
enum Sent {
    Status(u16),
    Skipped(String),
    Failed(String),
}

/// Parses `name: value` header flags.
fn parse_headers(flags: &[String]) -> Result<Vec<(String, String)>, String> {
    flags
        .iter()
        .map(|h| {
            let (n, v) = h.split_once(':').ok_or_else(|| format!("--header {h:?} is not 'name: value'"))?;
            let (n, v) = (n.trim(), v.trim());
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
                return Err(format!("--header {h:?}: bad header name"));
            }
            Ok((n.to_string(), v.to_string()))
        })
        .collect()
}

impl Sender {
    fn new(base: &str, headers: Vec<(String, String)>) -> Sender {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .allow_non_standard_methods(true)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Sender { base: base.trim_end_matches('/').to_string(), headers, agent }
    }

    /// Re-issues one recorded request, unless its body is not exactly known.
    fn send(&self, r: &Value) -> Sent {
        let (Some(method), Some(path)) = (r.get("method").and_then(Value::as_str), r.get("path").and_then(Value::as_str)) else {
            return Sent::Skipped("no method or path in the record".into());
        };
        let body = match r.get("request_body") {
            None | Some(Value::Null) => None,
            Some(b) => {
                let Some((text, truncated)) = body_text(r, "request_body") else {
                    return Sent::Skipped("request body has no text".into());
                };
                if truncated {
                    return Sent::Skipped("request body truncated in the record".into());
                }
                if let Some(sha) = b.get("sha256").and_then(Value::as_str) {
                    if !sha.eq_ignore_ascii_case(&super::store::sha256_hex(text.as_bytes())) {
                        return Sent::Skipped("recorded body text is not the exact body (sha256 differs)".into());
                    }
                }
                Some(text)
            }
        };
        let url = format!("{}{}", self.base, path);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        let has_ctype = self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
        if let Some(text) = body {
            if !has_ctype && !text.is_empty() && serde_json::from_str::<Value>(text).is_ok() {
                req = req.header("content-type", "application/json");
            }
        }
        for (n, v) in &self.headers {
            req = req.header(n.as_str(), v.as_str());
        }
        let result = match body.filter(|t| !t.is_empty()) {
            Some(text) => req.body(text.as_bytes().to_vec()).map(|q| self.agent.run(q)),
            None => req.body(()).map(|q| self.agent.run(q)),
        };
        match result {
            Err(e) => Sent::Failed(format!("bad request {method} {url}: {e}")),
            Ok(Err(e)) => Sent::Failed(format!("{method} {url}: {e}")),
            Ok(Ok(mut resp)) => {
                let _ = resp.body_mut().read_to_vec();
                Sent::Status(resp.status().as_u16())
            }
        }
    }
}

/// Runs `audit replay`: exit 0 after printing, 1 when nothing matched, the
/// database cannot be read, a flag is bad or a --send request failed
/// (skipped records only warn).
pub fn run(a: ReplayArgs) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("nhi-gate audit replay: {msg}");
        ExitCode::FAILURE
    };
    let sender = match &a.send {
        Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
            return fail(format!("--send {url:?} is not an http:// or https:// URL"))
        }
        Some(url) => match parse_headers(&a.headers) {
            Ok(h) => Some(Sender::new(url, h)),
            Err(e) => return fail(e),
        },
        None => None,
    };
    let filter = Filter { subject: a.subject.clone(), session: a.session.clone(), since: a.since, until: a.until, ..Filter::default() };
    let rows = match Store::open_existing(&a.db).and_then(|s| s.select(&filter).map_err(|e| e.to_string())) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let mut records: Vec<(i64, Value)> = parsed(rows, "nhi-gate audit replay").into_iter().map(|(r, v)| (r.seq, v)).collect();
    records = finals_only(records);
    records.sort_by_key(|(seq, r)| (time_of(r), *seq));
    let (what, all) = match (&a.session, &a.subject) {
        (Some(s), _) => (format!("session {s}"), vec![records]),
        (None, Some(s)) => (format!("subject {s}"), runs(records, a.gap_seconds.saturating_mul(1000) as i64)),
        (None, None) => unreachable!("clap requires --session or --subject"),
    };
    if all.iter().all(Vec::is_empty) {
        return fail(format!("no records for {what}"));
    }
    let mut failed = 0;
    let n_runs = all.len();
    for (i, run) in all.iter().enumerate() {
        let label = if a.session.is_some() { what.clone() } else { format!("{what}, run {} of {n_runs}", i + 1) };
        let (first, last) = (time_of(&run[0].1), time_of(&run[run.len() - 1].1));
        println!("== {label}: {} request(s), {} .. {}", run.len(), format_time(first), format_time(last));
        for (n, (seq, r)) in run.iter().enumerate() {
            let field = |k: &str| match r.get(k) {
                None | Some(Value::Null) => "-".to_string(),
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            };
            let mut head = format!(
                "[{}] {} {} {} -> {} {}",
                n + 1,
                format_time(time_of(r)),
                field("method"),
                field("path"),
                field("decision"),
                field("status")
            );
            if let Some(reason) = r.get("reason").and_then(Value::as_str) {
                head.push(' ');
                head.push_str(reason);
            }
            head.push_str(&format!(" (seq {seq})"));
            if let Some(s) = &sender {
                match s.send(r) {
                    Sent::Status(code) => head.push_str(&format!(" | staging {code}")),
                    Sent::Skipped(why) => {
                        eprintln!("nhi-gate audit replay: warning: seq {seq} not sent: {why}");
                        head.push_str(&format!(" | staging skipped ({why})"));
                    }
                    Sent::Failed(e) => {
                        failed += 1;
                        head.push_str(&format!(" | staging failed ({e})"));
                    }
                }
            }
            println!("\n{}", printable(&head));
            let p = body_text(r, "request_body").map(|(t, tr)| (prompt(t), tr));
            let ans = body_text(r, "response_body").map(|(t, tr)| (answer(t), tr));
            print!("{}{}", quoted("> ", p), quoted("< ", ans));
        }
        println!();
    }
    if failed > 0 {
        return fail(format!("{failed} request(s) could not be sent"));
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prompts_and_answers() {
        let chat = json!({"model": "m", "messages": [
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"}, {"role": "user", "content": [{"type": "text", "text": "second"}]}]});
        assert_eq!(prompt(&chat.to_string()), "second");
        assert_eq!(prompt("{\"points\":[]}"), "{\"points\":[]}");
        assert_eq!(prompt("not json"), "not json");
        let completion = json!({"choices": [{"message": {"role": "assistant", "content": "Paris [EMAIL]"}}]});
        assert_eq!(answer(&completion.to_string()), "Paris [EMAIL]");
        let sse = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
                   data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n\
                   data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\ndata: [DONE]\n\n";
        assert_eq!(answer(sse), "Hello");
        assert_eq!(answer("data: {\"choi"), "data: {\"choi");
        assert_eq!(answer("{\"result\":1}"), "{\"result\":1}");
    }

    #[test]
    fn quoting_and_runs() {
        assert_eq!(quoted("> ", Some(("a\nb\n".into(), true))), "> a\n> b [truncated]\n");
        assert_eq!(quoted("< ", None), "< (no body)\n");
        assert_eq!(quoted("< ", Some((String::new(), false))), "< \n");
        let recs: Vec<(i64, Value)> = [0, 1000, 400_000, 401_000].iter().enumerate().map(|(i, t)| (i as i64, json!({"time_ms": t}))).collect();
        let r = runs(recs, 300_000);
        assert_eq!(r.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2]);
    }

    #[test]
    fn request_parts_give_way_to_final_records() {
        let recs = vec![
            (1, json!({"request_id": "a", "node": "n", "time_ms": 10, "status": null})),
            (2, json!({"request_id": "b", "node": "n", "time_ms": 11, "status": null})),
            (3, json!({"request_id": "a", "node": "n", "time_ms": 10, "status": 200})),
            // a client-chosen id reused by another request: its final record hides no one else's part
            (4, json!({"request_id": "b", "node": "n", "time_ms": 12, "status": 200})),
        ];
        let kept: Vec<i64> = finals_only(recs).iter().map(|(s, _)| *s).collect();
        assert_eq!(kept, [2, 3, 4]);
        assert!(parse_headers(&["x-staging-token: abc".into()]).unwrap() == [("x-staging-token".to_string(), "abc".to_string())]);
        assert!(parse_headers(&["nocolon".into()]).is_err());
        assert!(parse_headers(&["bad name: v".into()]).is_err());
    }
}
