//! `nhi-gate approvals`: the reference approval service for the filter's
//! approval holds (docs/approval-protocol.md) and its approver client.
//!
//! - `serve` — the service: callout and abandon endpoints for the filter,
//!   status URLs for jobs, the approver API and web page, SQLite state,
//!   an optional webhook for new pending approvals.
//! - `list`, `show ID`, `approve ID`, `deny ID --reason R` — approver
//!   commands, clients of the approver API (`--url`, `--token`).

mod client;
mod server;
mod store;
mod webhook;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// `nhi-gate approvals …` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Run the approval service (filter callout, status URLs, approver API and web page).
    Serve(ServeArgs),
    /// List approvals (pending by default) as a table, or JSON with --json.
    List(client::ListArgs),
    /// Print one approval (identity, target, body preview and digest, votes) as JSON.
    Show(client::ShowArgs),
    /// Approve a pending approval.
    Approve(client::ApproveArgs),
    /// Deny a pending approval (a reason is required).
    Deny(client::DenyArgs),
}

/// Flags of `nhi-gate approvals serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:9402")]
    listen: String,
    /// SQLite database file (created if missing; state survives restarts).
    #[arg(long, default_value = "nhi-gate-approvals.db")]
    db: PathBuf,
    /// An approver and their bearer token, NAME=TOKEN (repeatable). Also read
    /// from env NHI_GATE_APPROVERS="alice=t1,bob=t2" (combined with these flags;
    /// the env keeps tokens out of the process list).
    #[arg(long = "approver", value_name = "NAME=TOKEN")]
    approvers: Vec<String>,
    /// Distinct approvers needed to approve a request.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    min_approvers: u32,
    /// Seconds an undecided approval stays pending before it expires (1 s to 366 days).
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=31_622_400))]
    pending_ttl_seconds: u64,
    /// Base URL for status_url and webhook links (default: http://<bound listen address>).
    #[arg(long)]
    public_url: Option<String>,
    /// POST an `approval.pending` event to this URL for each new pending approval.
    #[arg(long)]
    webhook: Option<String>,
    /// Require `authorization: Bearer <SECRET>` on /v1/check and /v1/check/abandon
    /// (the policy's approval.secret).
    #[arg(long, env = "NHI_GATE_APPROVAL_SECRET", hide_env_values = true)]
    secret: Option<String>,
}

/// Parses `NAME=TOKEN` items (flags first, then the comma-separated env
/// value). Errors on a malformed item, a repeated name or a repeated token.
fn parse_approvers(flags: &[String], env: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let from_env = env.unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty());
    for item in flags.iter().map(String::as_str).chain(from_env) {
        let (name, token) = item.split_once('=').ok_or_else(|| format!("approver {item:?} is not NAME=TOKEN"))?;
        let (name, token) = (name.trim(), token.trim());
        if name.is_empty() || token.is_empty() {
            return Err(format!("approver {name:?}: name and token must be non-empty"));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("approver {name:?} given twice"));
        }
        if out.iter().any(|(_, t)| t == token) {
            return Err(format!("approver {name:?} reuses another approver's token"));
        }
        out.push((name.to_string(), token.to_string()));
    }
    Ok(out)
}

fn serve(a: ServeArgs) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("nhi-gate approvals serve: {msg}");
        ExitCode::FAILURE
    };
    let approvers = match parse_approvers(&a.approvers, std::env::var("NHI_GATE_APPROVERS").ok().as_deref()) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    if approvers.len() < a.min_approvers as usize {
        return fail(format!(
            "--min-approvers {} but {} approver(s) configured (--approver NAME=TOKEN or NHI_GATE_APPROVERS)",
            a.min_approvers,
            approvers.len()
        ));
    }
    for u in [&a.public_url, &a.webhook].into_iter().flatten() {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return fail(format!("{u:?} is not an http:// or https:// URL"));
        }
    }
    let store = match store::Store::open(&a.db, a.pending_ttl_seconds.saturating_mul(1000) as i64, a.min_approvers) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot open database {}: {e}", a.db.display())),
    };
    let server = match tiny_http::Server::http(&a.listen) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot listen on {}: {e}", a.listen)),
    };
    let bound = server.server_addr().to_ip().map(|s| s.to_string()).unwrap_or(a.listen.clone());
    let public_url = a.public_url.unwrap_or_else(|| format!("http://{bound}")).trim_end_matches('/').to_string();
    let names: Vec<&str> = approvers.iter().map(|(n, _)| n.as_str()).collect();
    println!(
        "nhi-gate approvals: listening on http://{bound} (db {}, approvers {}, min {}, public {public_url}{}{})",
        a.db.display(),
        names.join(","),
        a.min_approvers,
        if a.secret.is_some() { ", callout secret required" } else { "" },
        if a.webhook.is_some() { ", webhook on" } else { "" },
    );
    let config = server::Config { public_url, approvers, secret: a.secret, webhook: a.webhook };
    server::serve(server, Arc::new(server::Shared::new(config, store)));
    ExitCode::SUCCESS
}

/// Runs one `nhi-gate approvals` subcommand.
pub fn run(cmd: Command) -> ExitCode {
    match cmd {
        Command::Serve(a) => serve(a),
        Command::List(a) => client::list(a),
        Command::Show(a) => client::show(a),
        Command::Approve(a) => client::approve(a),
        Command::Deny(a) => client::deny(a),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_approvers;

    #[test]
    fn approvers_from_flags_and_env() {
        let v = parse_approvers(&["alice=t1".into()], Some("bob=t2, carol=t3")).unwrap();
        assert_eq!(v, vec![("alice".into(), "t1".into()), ("bob".into(), "t2".into()), ("carol".into(), "t3".into())]);
        assert!(parse_approvers(&["alice".into()], None).is_err());
        assert!(parse_approvers(&["alice=t1".into()], Some("alice=t2")).is_err());
        assert!(parse_approvers(&["alice=t1".into()], Some("bob=t1")).is_err());
        assert!(parse_approvers(&["=t1".into()], None).is_err());
    }
}
