//! `nhi-gate`: companion tools for the nhi-gate Envoy filter.
//!
//! - `nhi-gate policy check FILE` — validate a policy (JSON or YAML) with the
//!   same validator the filter runs in `on_configure`; exit 1 on error.
//! - `nhi-gate dev idp` — a loopback OIDC issuer for demos and tests.
//! - `nhi-gate dev upstream` — a demo RAG backend (Qdrant-shaped vector store
//!   and OpenAI-compatible chat completions).
//! - `nhi-gate approvals serve|list|show|approve|deny` — the reference
//!   approval service for held writes (docs/approval-protocol.md) and its
//!   approver commands.
//! - `nhi-gate audit serve|verify|query|replay` — the reference audit
//!   collector (docs/audit-record.md): a SQLite hash chain of the filter's
//!   records, its verifier, queries and session replay.

mod approvals;
mod audit;
mod idp;
mod policy_check;
mod upstream;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "nhi-gate", version, about = "Companion tools for the nhi-gate Envoy filter")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Policy documents.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Approval service for held writes, and approver commands.
    Approvals {
        #[command(subcommand)]
        command: approvals::Command,
    },
    /// Audit collector (hash-chained SQLite) and its verify, query and replay tools.
    Audit {
        #[command(subcommand)]
        command: audit::Command,
    },
    /// Development stack: IdP and demo upstream.
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy file (JSON, or YAML by .yaml/.yml extension); prints every error with its field.
    Check {
        /// Policy file(s): policies, Envoy bootstraps, Istio WasmPlugin or EnvoyFilter manifests; `-` reads standard input (JSON, or YAML when it does not start with `{` or `[`).
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum DevCommand {
    /// Run a loopback OIDC issuer: discovery, JWKS, and token minting.
    Idp(idp::Args),
    /// Run the demo RAG backend: vector store and OpenAI-compatible LLM.
    Upstream(upstream::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Policy { command: PolicyCommand::Check { files } } => policy_check::run(&files),
        Command::Approvals { command } => approvals::run(command),
        Command::Audit { command } => audit::run(command),
        Command::Dev { command: DevCommand::Idp(a) } => idp::run(a),
        Command::Dev { command: DevCommand::Upstream(a) } => upstream::run(a),
    }
}
