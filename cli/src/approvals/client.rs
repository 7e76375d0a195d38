//! Approver commands: `nhi-gate approvals list|show|approve|deny`, clients
//! of the approver API (protocol §4). Each exits non-zero with a one-line
//! message on 401 (bad token), 403 (self-approval), 404 (no such approval),
//! 409 (not pending, or already voted) and any other failure.

use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Duration;

/// Where the service is and who is asking.
#[derive(clap::Args)]
pub struct ClientArgs {
    /// Base URL of the approval service.
    #[arg(long, env = "NHI_GATE_APPROVALS_URL", hide_env_values = true, default_value = "http://127.0.0.1:9402")]
    url: String,
    /// Approver bearer token.
    #[arg(long, env = "NHI_GATE_APPROVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// `approvals list`.
#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// pending, approved, denied, expired, abandoned, used, or all.
    #[arg(long, default_value = "pending")]
    status: String,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `approvals show ID`.
#[derive(clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Approval id (apr_…).
    id: String,
}

/// `approvals approve ID`.
#[derive(clap::Args)]
pub struct ApproveArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Approval id (apr_…).
    id: String,
    /// Why (recorded with the vote).
    #[arg(long)]
    reason: Option<String>,
}

/// `approvals deny ID --reason R`.
#[derive(clap::Args)]
pub struct DenyArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Approval id (apr_…).
    id: String,
    /// Why (recorded with the vote and shown to the job).
    #[arg(long)]
    reason: String,
}

/// Refuses ids and statuses that could change the request path.
fn plain(what: &str, s: &str) -> Result<(), String> {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        Ok(())
    } else {
        Err(format!("{what} {s:?} is not valid (letters, digits, _ and - only)"))
    }
}

/// Calls the approver API; `Err` is the message to print.
fn call(c: &ClientArgs, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
    let token = c.token.as_deref().filter(|t| !t.is_empty()).ok_or("no approver token: pass --token or set NHI_GATE_APPROVER_TOKEN")?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let url = format!("{}{path}", c.url.trim_end_matches('/'));
    let auth = format!("Bearer {token}");
    let result = match (method, body) {
        ("POST", b) => agent
            .post(&url)
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .send(b.unwrap_or(json!({})).to_string()),
        _ => agent.get(&url).header("authorization", &auth).call(),
    };
    let mut resp = result.map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status == 200 {
        return Ok(v);
    }
    let code = v["error"].as_str().unwrap_or("error");
    let detail = v["detail"].as_str().unwrap_or(text.trim());
    let hint = match status {
        401 => " (check --token / NHI_GATE_APPROVER_TOKEN)",
        403 => " (you cannot approve your own request)",
        404 => " (no such approval)",
        409 => " (already decided, or you already voted)",
        _ => "",
    };
    Err(format!("HTTP {status} {code}: {detail}{hint}"))
}

fn finish(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nhi-gate approvals: {e}");
            ExitCode::FAILURE
        }
    }
}

fn age(now_ms: i64, then_ms: i64) -> String {
    let s = (now_ms - then_ms).max(0) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// The `list` table: one row per approval.
fn table(v: &Value) -> String {
    let now = v["now_ms"].as_i64().unwrap_or(0);
    let mut rows = vec![["ID", "STATUS", "AGE", "SUBJECT", "OP", "METHOD", "TARGET", "VOTES"].map(String::from).to_vec()];
    for a in v["approvals"].as_array().into_iter().flatten() {
        let s = |k: &str| a[k].as_str().unwrap_or("").to_string();
        let votes: Vec<String> = a["votes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| format!("{}:{}", v["approver"].as_str().unwrap_or(""), v["decision"].as_str().unwrap_or("")))
            .collect();
        rows.push(vec![
            s("approval_id"),
            s("status"),
            age(now, a["created_ms"].as_i64().unwrap_or(now)),
            cut(a["identity"]["subject"].as_str().unwrap_or(""), 24),
            s("operation"),
            s("method"),
            cut(&format!("{}{} ({})", s("authority"), s("path"), s("resource")), 60),
            if votes.is_empty() { "-".into() } else { votes.join(",") },
        ]);
    }
    if rows.len() == 1 {
        return "no approvals\n".into();
    }
    let widths: Vec<usize> = (0..8).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `approvals list`: the table, or the JSON answer with `--json`.
pub fn list(a: ListArgs) -> ExitCode {
    finish((|| {
        plain("status", &a.status)?;
        let v = call(&a.client, "GET", &format!("/v1/approvals?status={}", a.status), None)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        } else {
            print!("{}", table(&v));
        }
        Ok(())
    })())
}

/// `approvals show ID`: the approval as pretty JSON.
pub fn show(a: ShowArgs) -> ExitCode {
    finish((|| {
        plain("approval id", &a.id)?;
        let v = call(&a.client, "GET", &format!("/v1/approvals/{}/detail", a.id), None)?;
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        Ok(())
    })())
}

fn vote(c: &ClientArgs, id: &str, action: &str, reason: Option<&str>) -> Result<(), String> {
    plain("approval id", id)?;
    let v = call(c, "POST", &format!("/v1/approvals/{id}/{action}"), Some(json!({"reason": reason})))?;
    let approvals = v["votes"].as_array().map(|vs| vs.iter().filter(|x| x["decision"] == "approve").count()).unwrap_or(0);
    println!(
        "{id}: {} ({approvals}/{} approvals){}",
        v["status"].as_str().unwrap_or("?"),
        v["approvals_needed"].as_u64().unwrap_or(1),
        v["message"].as_str().map(|m| format!(" — {m}")).unwrap_or_default()
    );
    Ok(())
}

/// `approvals approve ID [--reason R]`.
pub fn approve(a: ApproveArgs) -> ExitCode {
    finish(vote(&a.client, &a.id, "approve", a.reason.as_deref()))
}

/// `approvals deny ID --reason R`.
pub fn deny(a: DenyArgs) -> ExitCode {
    finish(vote(&a.client, &a.id, "deny", Some(&a.reason)))
}
