//! Interleaved latency of several HTTP/1.1 endpoints on loopback, for the
//! masking benchmark (`scripts/bench_mask.py`): one keep-alive connection
//! per URL, requests sent back to back (one in flight at a time) in turn to
//! each URL — A, B, C, A, B, C, … — so a machine that slows down or speeds
//! up during the run affects every endpoint alike, which separate runs
//! (one wrk run per endpoint) do not guarantee on a shared 2-core machine.
//!
//! `--run K` sends K requests in a row to each URL before the next
//! (A×K, B×K, …; default 1): with K = 1 every request finds its gateway's
//! caches as the other gateways left them, with a larger K most requests
//! find the gateway warm, as a worker serving a steady stream of requests.
//!
//! Usage: `latency_ab --requests N [--warmup N] [--run K] [--header "k: v"]… URL…`
//! (URLs `http://127.0.0.1:PORT/path` or `http://[::1]:PORT/path` only).
//! Prints one JSON object: for each URL, in order, the per-request
//! latencies' `p50_ms`, `p90_ms`, `p99_ms` and `n`; and `blocks`: the
//! requests cut into 5 consecutive blocks, each block's p50 per URL (ms),
//! from which the benchmark takes per-block ratios and their range.
//! Latency is measured from writing the request to reading the last body
//! byte (`Content-Length` framing; chunked responses are an error). Any
//! status other than 200 is an error (exit 1).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Requests at most (bounded load loop).
const MAX_REQUESTS: usize = 1_000_000;
/// Blocks of the `blocks` report.
const BLOCKS: usize = 5;

struct Target {
    authority: String,
    path: String,
    conn: BufReader<TcpStream>,
    ms: Vec<f64>,
}

fn fail(msg: &str) -> ! {
    eprintln!("latency_ab: {msg}");
    std::process::exit(1)
}

/// `(host:port, path)` of a loopback `http://` URL.
fn parse_url(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    if host != "127.0.0.1" && host != "[::1]" {
        return Err(format!("{url}: loopback hosts only (127.0.0.1, [::1])"));
    }
    Ok((authority.to_string(), if path.is_empty() { "/".to_string() } else { path.to_string() }))
}

fn connect(authority: &str) -> Result<BufReader<TcpStream>, String> {
    let addr = authority.replace(['[', ']'], "");
    let addr = match addr.rsplit_once(':') {
        Some((h, p)) if h.contains(':') => format!("[{h}]:{p}"),
        _ => addr,
    };
    let s = TcpStream::connect(&addr).map_err(|e| format!("{authority}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    Ok(BufReader::with_capacity(1 << 16, s))
}

/// One GET on `t`'s connection; the time to the last body byte.
fn get(t: &mut Target, headers: &str, body: &mut Vec<u8>) -> Result<Duration, String> {
    let req = format!("GET {} HTTP/1.1\r\nhost: {}\r\n{headers}\r\n", t.path, t.authority);
    let start = Instant::now();
    t.conn.get_mut().write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut line = String::new();
    t.conn.read_line(&mut line).map_err(|e| e.to_string())?;
    let status = line.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("{}{}: status {line:?}", t.authority, t.path));
    }
    let mut len: Option<usize> = None;
    loop {
        line.clear();
        if t.conn.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("connection closed in the headers".into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                return Err("chunked responses are not supported".into());
            }
        }
    }
    let len = len.ok_or("response without Content-Length")?;
    if len > 64 << 20 {
        return Err(format!("body of {len} bytes: too large"));
    }
    body.resize(len, 0);
    t.conn.read_exact(body).map_err(|e| e.to_string())?;
    Ok(start.elapsed())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let k = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(k).copied().unwrap_or(0.0)
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut requests, mut warmup, mut run, mut headers, mut urls) = (2000usize, 200usize, 1usize, String::new(), Vec::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--requests" => requests = args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| fail("--requests N")),
            "--warmup" => warmup = args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| fail("--warmup N")),
            "--run" => run = args.next().and_then(|v| v.parse().ok()).filter(|k| (1..=10_000).contains(k)).unwrap_or_else(|| fail("--run K (1..=10000)")),
            "--header" => {
                let h = args.next().unwrap_or_else(|| fail("--header \"name: value\""));
                if h.contains(['\r', '\n']) {
                    fail("a header may not hold CR or LF");
                }
                headers.push_str(&h);
                headers.push_str("\r\n");
            }
            _ => urls.push(a),
        }
    }
    if urls.is_empty() || requests == 0 || requests > MAX_REQUESTS {
        fail("usage: latency_ab --requests N (1..=1000000) [--warmup N] [--run K] [--header \"k: v\"]... URL...");
    }
    let mut targets: Vec<Target> = urls
        .iter()
        .map(|u| {
            let (authority, path) = parse_url(u).unwrap_or_else(|e| fail(&e));
            let conn = connect(&authority).unwrap_or_else(|e| fail(&e));
            Target { authority, path, conn, ms: Vec::with_capacity(requests) }
        })
        .collect();
    let mut body = Vec::new();
    let total = warmup.min(MAX_REQUESTS) + requests;
    for round in 0..total.div_ceil(run) {
        // rotate the order each round: no endpoint always follows the same one
        let n = targets.len();
        for k in 0..n {
            let Some(t) = targets.get_mut((round + k) % n) else { continue };
            for sent in round * run..((round + 1) * run).min(total) {
                let d = get(t, &headers, &mut body).unwrap_or_else(|e| fail(&e));
                if sent >= warmup {
                    t.ms.push(d.as_secs_f64() * 1e3);
                }
            }
        }
    }
    let per_url: Vec<String> = targets
        .iter()
        .map(|t| {
            let s = sorted(&t.ms);
            format!(
                "{{\"url\": \"http://{}{}\", \"n\": {}, \"p50_ms\": {:.4}, \"p90_ms\": {:.4}, \"p99_ms\": {:.4}}}",
                t.authority,
                t.path,
                s.len(),
                percentile(&s, 0.5),
                percentile(&s, 0.9),
                percentile(&s, 0.99)
            )
        })
        .collect();
    let size = requests.div_ceil(BLOCKS);
    let blocks: Vec<String> = (0..BLOCKS)
        .filter(|b| b * size < requests)
        .map(|b| {
            let p50s: Vec<String> = targets
                .iter()
                .map(|t| format!("{:.4}", percentile(&sorted(t.ms.get(b * size..((b + 1) * size).min(t.ms.len())).unwrap_or(&[])), 0.5)))
                .collect();
            format!("[{}]", p50s.join(", "))
        })
        .collect();
    println!("{{\"targets\": [{}], \"blocks\": [{}]}}", per_url.join(", "), blocks.join(", "));
}
