//! Helpers shared by the end-to-end tests that run the real binary as a
//! server: a temp directory, the server process, the HTTP client side.
//! Each test file adds its own methods to [`Server`] and [`TempDir`].

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_nhi-gate");

static N: AtomicU32 = AtomicU32::new(0);

/// A fresh temp directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `nhi-gate-<test file>-<pid>-<n>-<nanos>` in the system temp directory.
    pub fn new() -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let p = std::env::temp_dir().join(format!(
            "nhi-gate-{}-{}-{}-{nanos}",
            env!("CARGO_CRATE_NAME"),
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `nhi-gate … serve`; killed on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
    log: PathBuf,
    _stdout: BufReader<ChildStdout>,
}

impl Server {
    /// `nhi-gate SUB serve --listen 127.0.0.1:0 --db DB`, to add flags to and [`Server::spawn`].
    pub fn command(sub: &str, db: &Path) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args([sub, "serve", "--listen", "127.0.0.1:0", "--db"]).arg(db);
        cmd
    }

    /// A log file name next to `db`, new on every call.
    pub fn log_for(db: &Path) -> PathBuf {
        db.with_extension(format!("log{}", N.fetch_add(1, Ordering::Relaxed)))
    }

    /// Spawns `cmd` with stdout piped and stderr written to `log`; the URL is
    /// read from its first stdout line (`… listening on URL`). `what` names
    /// it in the panic if it does not start.
    pub fn spawn(what: &str, mut cmd: Command, log: PathBuf) -> Server {
        cmd.stdout(Stdio::piped()).stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let Some(rest) = line.split("listening on ").nth(1) else {
            let _ = child.kill();
            panic!("{what} did not start: {line:?}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        };
        let url = rest.split_whitespace().next().unwrap().to_string();
        Server { child, url, log, _stdout: stdout }
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP agent that takes every status as an answer, 30 s at most an exchange.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .allow_non_standard_methods(true)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// The answer's status and JSON body (Null if not JSON).
pub fn answer(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut resp = resp.unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `v` with the value at JSON pointer `pointer` replaced by `value`.
pub fn with(mut v: Value, pointer: &str, value: Value) -> Value {
    *v.pointer_mut(pointer).unwrap_or_else(|| panic!("no {pointer}")) = value;
    v
}
