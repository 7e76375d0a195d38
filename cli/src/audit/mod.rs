//! `nhi-gate audit`: the reference audit collector (docs/audit-record.md)
//! and its offline tools.
//!
//! - `serve` — receives the filter's record batches on `POST /v1/records`
//!   and appends them to a SQLite hash chain ([`store`]).
//! - `verify` — recomputes the chain; exit 0 with `ok: N records, head H`,
//!   exit 1 naming the first edited, missing or inserted record (or an
//!   `--expect-head` / `--expect-count` mismatch), exit 2 if the database
//!   cannot be read.
//! - `query` — records by subject, time, resource, decision, session as JSON or CSV.
//! - `replay` — a session's prompts and answers in order, optionally re-sent
//!   to a staging deployment.

mod query;
mod replay;
mod server;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// `nhi-gate audit …` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Run the collector: POST /v1/records appends to a SQLite hash chain.
    Serve(ServeArgs),
    /// Recompute the hash chain and name the first tampered record.
    Verify(VerifyArgs),
    /// Print stored records matching filters, as a JSON array or CSV.
    Query(query::QueryArgs),
    /// Print a session's exchange (prompts and answers) in order; --send re-issues it.
    Replay(replay::ReplayArgs),
}

/// Flags of `nhi-gate audit serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:9403")]
    listen: String,
    /// SQLite database file (created if missing).
    #[arg(long, default_value = "nhi-gate-audit.db")]
    db: PathBuf,
    /// Require `authorization: Bearer <T>` on POST and GET /v1/records.
    #[arg(long, value_name = "T", env = "NHI_GATE_AUDIT_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Flags of `nhi-gate audit verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// SQLite database of the collector.
    #[arg(long, default_value = "nhi-gate-audit.db")]
    db: PathBuf,
    /// Fail unless the last record's hash is HASH (a head printed by an
    /// earlier verify and kept outside the database's reach).
    #[arg(long, value_name = "HASH")]
    expect_head: Option<String>,
    /// Fail unless the chain has exactly N records.
    #[arg(long, value_name = "N")]
    expect_count: Option<i64>,
}

fn serve(a: ServeArgs) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("nhi-gate audit serve: {msg}");
        ExitCode::FAILURE
    };
    if a.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return fail("--token must not be empty".into());
    }
    let store = match store::Store::open(&a.db) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot open database {}: {e}", a.db.display())),
    };
    let (count, head) = match store.head() {
        Ok(h) => h,
        Err(e) => return fail(format!("cannot read database {}: {e}", a.db.display())),
    };
    let server = match tiny_http::Server::http(&a.listen) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot listen on {}: {e}", a.listen)),
    };
    let bound = server.server_addr().to_ip().map(|s| s.to_string()).unwrap_or(a.listen.clone());
    println!(
        "nhi-gate audit: listening on http://{bound} (db {}, {count} records, head {head}{})",
        a.db.display(),
        if a.token.is_some() { ", token required" } else { "" },
    );
    server::serve(server, Arc::new(server::Shared::new(a.token, store)));
    ExitCode::SUCCESS
}

/// The anchor mismatch, if the verified chain (`count` records ending in
/// `head`) does not match `--expect-count` / `--expect-head`.
fn anchor_break(s: &store::Store, a: &VerifyArgs, count: i64, head: &str) -> Result<Option<store::Break>, String> {
    use store::Break;
    if let Some(n) = a.expect_count {
        let why = format!("the chain has {count} records, --expect-count {n}");
        if count < n {
            return Ok(Some(Break::Missing { seq: count + 1, why }));
        }
        if count > n {
            return Ok(Some(Break::Inserted { seq: n + 1, why }));
        }
    }
    if let Some(want) = &a.expect_head {
        if !want.eq_ignore_ascii_case(head) {
            let at = s.seq_of_hash(want).map_err(|e| e.to_string())?;
            let head_differs = format!("the chain head (seq {count}, {head}) differs from --expect-head {want}");
            return Ok(Some(Break::Anchor(match at {
                Some(seq) if seq + 1 == count => format!("{head_differs}: that is seq {seq}, record seq {count} came after it"),
                Some(seq) => format!("{head_differs}: that is seq {seq}, records seq {}..{count} came after it", seq + 1),
                None => format!("{head_differs}: no record has hash {want}; records at the end were deleted or the chain was rewritten"),
            })));
        }
    }
    Ok(None)
}

fn verify(a: VerifyArgs) -> ExitCode {
    let cannot = |msg: String| {
        eprintln!("nhi-gate audit verify: {msg}");
        ExitCode::from(2)
    };
    let mut s = match store::Store::open_existing(&a.db) {
        Ok(s) => s,
        Err(e) => return cannot(e),
    };
    let (count, head) = match s.verify() {
        Ok(v) => v,
        Err(store::VerifyError::Db(e)) => return cannot(format!("cannot read {}: {e}", a.db.display())),
        Err(store::VerifyError::Broken(b)) => {
            println!("FAILED: {b}");
            return ExitCode::FAILURE;
        }
    };
    match anchor_break(&s, &a, count, &head) {
        Err(e) => cannot(e),
        Ok(Some(b)) => {
            println!("FAILED: {b}");
            ExitCode::FAILURE
        }
        Ok(None) => {
            println!("ok: {count} records, head {head}");
            ExitCode::SUCCESS
        }
    }
}

/// Runs one `nhi-gate audit` subcommand.
pub fn run(cmd: Command) -> ExitCode {
    match cmd {
        Command::Serve(a) => serve(a),
        Command::Verify(a) => verify(a),
        Command::Query(a) => query::run(a),
        Command::Replay(a) => replay::run(a),
    }
}
