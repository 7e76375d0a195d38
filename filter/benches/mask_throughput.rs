//! Masking throughput, natively (an indication for the wasm build, not a
//! test): `cargo bench -p nhi-gate-filter --bench mask_throughput`.
//!
//! Prints MB/s (10^6 bytes of input per second, one core) for:
//! - `Masker::mask_json` on a clean and a PII-dense RAG search response,
//!   scanning string values while lexing them (one pass) or after;
//! - `Masker::mask_text` and the text / SSE stream maskers;
//! - a bare-regex baseline: approximations of the built-in detectors as
//!   plain patterns (no validation), run over the same text with `regex-lite`
//!   and with `regex`, with and without a byte prefilter — what the
//!   detectors would cost as regexes.
//! - `serde_json::from_slice::<Value>` on the same documents, for scale.

use nhi_gate::mask::{Counts, Masker, RawMasking, StreamKind};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// A tiny deterministic generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[(self.next() % v.len() as u64) as usize]
    }
}

const WORDS: &[&str] = &[
    "the", "retrieval", "pipeline", "indexes", "documents", "into", "a", "vector", "store", "and", "answers", "questions",
    "about", "quarterly", "revenue", "growth", "of", "12.5%", "in", "2024", "with", "version", "v1.2.3", "deployed", "on",
    "2024-01-15", "by", "team", "platform", "latency", "p99", "was", "41ms", "for", "batch", "size", "256", "tokens",
    "embedding", "model", "text-embedding-3-small", "returned", "1536", "dimensions", "cluster", "eu-west-1", "node",
    "pod-7d4b9c8f5d-x2v9q", "request", "id", "ORD-2024-000123", "at", "10:30:00", "UTC", "chunk", "overlap", "was", "set",
];

const PII: &[&str] = &[
    "jane.roe@example.org", "john.doe+billing@mail.example.co.uk", "4111 1111 1111 1111", "5555-5555-5555-4444",
    "378282246310005", "123-45-6789", "(415) 555-0134", "+44 20 7946 0958", "+14155550134", "DE89 3704 0044 0532 0130 00",
    "GB82WEST12345698765432", "AKIAIOSFODNN7EXAMPLE", "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
    "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z_AbC-dEf",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
];

/// Prose of about `len` bytes; a PII value every `pii_every` words (0: none).
fn prose(rng: &mut Rng, len: usize, pii_every: usize) -> String {
    let mut s = String::with_capacity(len + 64);
    let mut n = 0;
    while s.len() < len {
        n += 1;
        if pii_every > 0 && n % pii_every == 0 {
            s.push_str(rng.pick(PII));
        } else {
            s.push_str(rng.pick(WORDS));
        }
        s.push(if n % 17 == 0 { '\n' } else { ' ' });
    }
    s
}

/// A Qdrant-shaped search response of about `size` bytes.
fn search_response(rng: &mut Rng, size: usize, pii_every: usize) -> Vec<u8> {
    let mut points = Vec::new();
    let mut total = 0;
    let mut i = 0u64;
    while total < size {
        i += 1;
        let text = prose(rng, 600, pii_every);
        let p = serde_json::json!({
            "id": format!("{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}", rng.next() as u32, i % 65536, i % 4096, (i * 7) % 4096, rng.next() % (1 << 48)),
            "version": i % 17,
            "score": 0.5 + (i % 1000) as f64 / 2000.0,
            "payload": {
                "doc_id": format!("DOC-2024-{i:06}"),
                "title": prose(rng, 40, 0).trim(),
                "text": text,
                "created_at": "2024-01-15T10:30:00Z",
                "updated_ms": 1_700_000_000_000u64 + i,
                "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "tags": ["finance", "q3", "internal"],
                "source": format!("s3://bucket/docs/2024/{i}.pdf"),
            }
        });
        let s = p.to_string();
        total += s.len() + 1;
        points.push(p);
    }
    serde_json::to_vec(&serde_json::json!({"result": points, "status": "ok", "time": 0.0012})).unwrap()
}

/// An API listing: many short strings (names, enums, ids, timestamps),
/// numbers and booleans, little prose.
fn api_records(rng: &mut Rng, size: usize) -> Vec<u8> {
    let mut items = Vec::new();
    let mut total = 0;
    let mut i = 0u64;
    let statuses = ["active", "pending", "archived", "failed"];
    while total < size {
        i += 1;
        let v = serde_json::json!({
            "id": i, "uuid": format!("{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}", rng.next() as u32, i % 65536, i % 4096, (i * 7) % 4096, rng.next() % (1 << 48)),
            "name": format!("{} {}", rng.pick(WORDS), rng.pick(WORDS)), "status": statuses[(i % 4) as usize],
            "enabled": i.is_multiple_of(3), "count": i * 37 % 1000, "ratio": (i % 100) as f64 / 7.0,
            "created_at": "2024-01-15T10:30:00Z", "region": "eu-west-1", "owner": {"team": "platform", "kind": "service_account"},
            "labels": {"app": "rag-gateway", "tier": "backend", "env": "production"},
        });
        total += v.to_string().len() + 1;
        items.push(v);
    }
    serde_json::to_vec(&serde_json::json!({"items": items, "next": null})).unwrap()
}

/// The JSON body of `scripts/bench_mask.py` (the in-Envoy benchmark), about
/// `size` bytes: small records, one short text each; dense: every text holds
/// an email, a phone number and a card number.
fn envoy_bench_body(size: usize, dense: bool) -> Vec<u8> {
    let mut recs = Vec::new();
    let mut total = 0;
    let mut i = 0u64;
    while total < size {
        let text = if dense {
            format!("contact user{i}@example.com or +1 415-555-{:04}, card 4111 1111 1111 1111", i % 10000)
        } else {
            format!("chunk {i} of the onboarding runbook: restart the indexer and check the queue depth")
        };
        let r = serde_json::json!({"id": i, "score": 0.5, "payload": {"text": text}});
        total += r.to_string().len() + 2;
        recs.push(r);
        i += 1;
    }
    serde_json::to_vec(&serde_json::json!({ "result": recs })).unwrap()
}

fn sse(rng: &mut Rng, size: usize, pii_every: usize) -> Vec<u8> {
    let text = prose(rng, size / 8, pii_every);
    let mut out = String::new();
    let chars: Vec<char> = text.chars().collect();
    for piece in chars.chunks(4) {
        let piece: String = piece.iter().collect();
        out.push_str("data: ");
        out.push_str(
            &serde_json::json!({"id": "chatcmpl-abc123", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "delta": {"content": piece}, "logprobs": null, "finish_reason": null}]})
            .to_string(),
        );
        out.push_str("\n\n");
    }
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

/// Runs `f` repeatedly for at least `min` (after one warm-up); MB/s of `bytes` per call.
fn measure(bytes: usize, min: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < min || n < 3 {
        f();
        n += 1;
    }
    (bytes as f64 * n as f64) / start.elapsed().as_secs_f64() / 1e6
}

const PATTERNS: &[&str] = &[
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    r"\b(?:\d[ -]?){12,18}\d\b",
    r"\b\d{3}-\d{2}-\d{4}\b",
    r"(?:\+\d{1,3}[ .-]?)?\(?\b\d{3}\)?[ .-]?\d{3}[ .-]\d{4}\b",
    r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
    r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
    r"\bgh[pousr]_[A-Za-z0-9]{36,}\b|github_pat_[A-Za-z0-9_]{22,}",
    r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}",
    r"\bxox[baprs]-[A-Za-z0-9-]{10,}",
    r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
];

/// The same anchor bytes the masker's prefilter uses.
fn prefilter(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_digit() || matches!(b, b'@' | b'-' | b'_' | b'I' | b'J'))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only TEXT`: run the measurements whose name contains TEXT
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let min = Duration::from_millis(if quick { 200 } else { 1500 });
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let size = 4 << 20;
    let clean_json = search_response(&mut rng, size, 0);
    let dense_json = search_response(&mut rng, size, 6);
    let api_json = api_records(&mut rng, size);
    let clean_text = prose(&mut rng, size, 0);
    let dense_text = prose(&mut rng, size, 6);
    let dense_sse = sse(&mut rng, size, 6);
    let clean_sse = sse(&mut rng, size, 0);

    let m = Masker::compile(RawMasking::default(), "masking").unwrap();
    let m_nopf = m.clone().with_one_pass(false);
    let mut counts = Counts::new();
    let dense_hits = {
        let mut c = Counts::new();
        m.mask_json(&dense_json, &mut c).unwrap();
        c.values().sum::<u64>()
    };
    let text_hits = {
        let mut c = Counts::new();
        m.mask_text(&dense_text, &mut c);
        c.values().sum::<u64>()
    };
    println!(
        "corpora: JSON {:.1} MB (dense: {} values, one per {} bytes), text {:.1} MB (dense: {} values), SSE {:.1} MB",
        clean_json.len() as f64 / 1e6,
        dense_hits,
        dense_json.len() as u64 / dense_hits.max(1),
        clean_text.len() as f64 / 1e6,
        text_hits,
        dense_sse.len() as f64 / 1e6
    );
    println!("{:<68} {:>8}", "measurement", "MB/s");
    let want = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    macro_rules! row {
        ($name:expr, $v:expr) => {{
            let name: &str = &$name;
            if want(name) {
                let v: f64 = $v;
                println!("{name:<68} {v:>8.0}");
            }
        }};
    }

    row!("mask_json clean (one pass)", measure(clean_json.len(), min, || {
        black_box(m.mask_json(black_box(&clean_json), &mut counts).unwrap());
    }));
    let (env_clean, env_dense) = (envoy_bench_body(1 << 20, false), envoy_bench_body(1 << 20, true));
    row!("mask_json bench_mask.py body, clean 1 MiB", measure(env_clean.len(), min, || {
        black_box(m.mask_json(black_box(&env_clean), &mut counts).unwrap());
    }));
    row!("mask_json bench_mask.py body, PII-dense 1 MiB", measure(env_dense.len(), min, || {
        black_box(m.mask_json(black_box(&env_dense), &mut counts).unwrap());
    }));
    // the 1 KiB bodies of the latency comparison: per-call costs show here
    let (small_clean, small_dense) = (envoy_bench_body(1 << 10, false), envoy_bench_body(1 << 10, true));
    row!("mask_json_changes bench_mask.py body, clean 1 KiB", measure(small_clean.len(), min, || {
        black_box(m.mask_json_changes(black_box(&small_clean), &mut counts).unwrap());
    }));
    row!("mask_json_changes bench_mask.py body, PII-dense 1 KiB", measure(small_dense.len(), min, || {
        black_box(m.mask_json_changes(black_box(&small_dense), &mut counts).unwrap());
    }));
    row!("mask_json clean (lex, then scan)", measure(clean_json.len(), min, || {
        black_box(m_nopf.mask_json(black_box(&clean_json), &mut counts).unwrap());
    }));
    row!("mask_json clean API listing (one pass)", measure(api_json.len(), min, || {
        black_box(m.mask_json(black_box(&api_json), &mut counts).unwrap());
    }));
    row!("mask_json clean API listing (lex, then scan)", measure(api_json.len(), min, || {
        black_box(m_nopf.mask_json(black_box(&api_json), &mut counts).unwrap());
    }));
    row!("mask_json PII-dense (one pass)", measure(dense_json.len(), min, || {
        black_box(m.mask_json(black_box(&dense_json), &mut counts).unwrap());
    }));
    row!("mask_json PII-dense (lex, then scan)", measure(dense_json.len(), min, || {
        black_box(m_nopf.mask_json(black_box(&dense_json), &mut counts).unwrap());
    }));
    for (label, dets) in [
        ("no detectors (JSON lexing)", serde_json::json!([])),
        ("email only", serde_json::json!(["email"])),
        ("digit detectors only", serde_json::json!(["payment_card", "us_ssn", "phone", "iban"])),
        ("secret detectors only", serde_json::json!(["aws_access_key", "github_token", "openai_key", "anthropic_key", "slack_token", "jwt", "private_key"])),
    ] {
        let raw: RawMasking = serde_json::from_value(serde_json::json!({ "detectors": dets })).unwrap();
        let mm = Masker::compile(raw, "").unwrap();
        row!(format!("mask_json clean, {label}"), measure(clean_json.len(), min, || {
            black_box(mm.mask_json(black_box(&clean_json), &mut counts).unwrap());
        }));
    }
    row!("serde_json::from_slice::<Value> clean (reference)", measure(clean_json.len(), min, || {
        black_box(serde_json::from_slice::<serde_json::Value>(black_box(&clean_json)).unwrap());
    }));
    row!("serde_json::from_slice::<Value> API listing (reference)", measure(api_json.len(), min, || {
        black_box(serde_json::from_slice::<serde_json::Value>(black_box(&api_json)).unwrap());
    }));
    row!("mask_text clean", measure(clean_text.len(), min, || {
        black_box(m.mask_text(black_box(&clean_text), &mut counts));
    }));
    row!("mask_text PII-dense", measure(dense_text.len(), min, || {
        black_box(m.mask_text(black_box(&dense_text), &mut counts));
    }));
    row!("stream Text, 16 KiB chunks, clean", measure(clean_text.len(), min, || {
        let mut s = m.stream(StreamKind::Text);
        for c in clean_text.as_bytes().chunks(16 << 10) {
            black_box(s.push(c, &mut counts));
        }
        black_box(s.finish(&mut counts));
    }));
    row!("stream Text, 16 KiB chunks, PII-dense", measure(dense_text.len(), min, || {
        let mut s = m.stream(StreamKind::Text);
        for c in dense_text.as_bytes().chunks(16 << 10) {
            black_box(s.push(c, &mut counts));
        }
        black_box(s.finish(&mut counts));
    }));
    row!("stream Sse, 4 KiB chunks, 4-char deltas, clean", measure(clean_sse.len(), min, || {
        let mut s = m.stream(StreamKind::Sse);
        for c in clean_sse.chunks(4 << 10) {
            black_box(s.push(c, &mut counts));
        }
        black_box(s.finish(&mut counts));
    }));
    row!("stream Sse, 4 KiB chunks, 4-char deltas, PII-dense", measure(dense_sse.len(), min, || {
        let mut s = m.stream(StreamKind::Sse);
        for c in dense_sse.chunks(4 << 10) {
            black_box(s.push(c, &mut counts));
        }
        black_box(s.finish(&mut counts));
    }));

    // adversarial stream shapes, each beside its plain counterpart (the
    // ratio is what matters: work per byte must not grow with what is held)
    let many_lines = format!("{}\n", "data: x\n".repeat(128 << 10));
    let one_line = format!("data: {}\n\n", "x ".repeat(many_lines.len() / 2));
    for (label, body) in [("one event of 128 Ki data lines", &many_lines), ("one event, one data line (plain)", &one_line)] {
        row!(format!("stream Sse, 16 KiB chunks, {label}"), measure(body.len(), min, || {
            let mut s = m.stream(StreamKind::Sse);
            for c in body.as_bytes().chunks(16 << 10) {
                black_box(s.push(c, &mut counts));
            }
            black_box(s.finish(&mut counts));
        }));
    }
    let padded = format!("a {}", "\u{200b}".repeat(300)).repeat(1 << 10);
    let plain = "a ".repeat(padded.len() / 2);
    for (label, body) in [("text padded with U+200B", &padded), ("plain text", &plain)] {
        row!(format!("stream Text, 18-byte pushes, {label}"), measure(body.len(), min, || {
            let mut s = m.stream(StreamKind::Text);
            let mut i = 0;
            while i < body.len() {
                let mut e = (i + 18).min(body.len());
                while !body.is_char_boundary(e) {
                    e += 1;
                }
                black_box(s.push(&body.as_bytes()[i..e], &mut counts));
                i = e;
            }
            black_box(s.finish(&mut counts));
        }));
    }
    // base64 lines (a MIME attachment) are held while a key footer may
    // still end them (the last 32 KiB): beside prose lines of one length
    let mime = "TWFuIGlzIGRpc3Rpbmd1aXNoZWQsIG5vdCBvbmx5IGJ5IGhpcyByZWFzb24sIGJ1dCBieSB0aGlz\n".repeat(1 << 14);
    let lines = "Man is distinguished, not only by his reason, but by this singular one\n".repeat(1 << 14);
    for (label, body) in [("base64 lines (MIME)", &mime), ("prose lines (plain)", &lines)] {
        row!(format!("stream Text, 1 KiB pushes, {label}"), measure(body.len(), min, || {
            let mut s = m.stream(StreamKind::Text);
            for c in body.as_bytes().chunks(1 << 10) {
                black_box(s.push(c, &mut counts));
            }
            black_box(s.finish(&mut counts));
        }));
    }
    // token starts inside one long base64url run, after underscores that
    // could open Markdown emphasis (must not rescan the run from each)
    for (label, unit) in [("-_eyJ", "-_eyJ"), ("-eyJ (plain)", "-eyJ"), ("_sk-", "_sk-"), ("ask- (plain)", "ask-")] {
        let body = unit.repeat((256 << 10) / unit.len());
        row!(format!("mask_text 256 KiB of {label}"), measure(body.len(), min, || {
            black_box(m.mask_text(&body, &mut counts));
        }));
    }

    // bare-regex baselines over lines of the text corpora (strings of ~100 bytes,
    // like JSON string values), all patterns, find_iter to the end
    let lite: Vec<regex_lite::Regex> = PATTERNS.iter().map(|p| regex_lite::Regex::new(p).unwrap()).collect();
    let full: Vec<regex::Regex> = PATTERNS.iter().map(|p| regex::Regex::new(&format!("(?-u){p}")).unwrap()).collect();
    let set = regex::RegexSet::new(PATTERNS.iter().map(|p| format!("(?-u){p}"))).unwrap();
    let api_strings: Vec<String> = {
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::String(s) => out.push(s.clone()),
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                serde_json::Value::Object(o) => o.values().for_each(|x| walk(x, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(&serde_json::from_slice(&api_json).unwrap(), &mut out);
        out
    };
    let corpora: [(&str, Vec<&str>); 3] = [
        ("prose lines clean", clean_text.split('\n').collect()),
        ("prose lines PII-dense", dense_text.split('\n').collect()),
        ("API string values", api_strings.iter().map(String::as_str).collect()),
    ];
    for (label, lines) in &corpora {
        let bytes: usize = lines.iter().map(|l| l.len()).sum();
        let passing: usize = lines.iter().filter(|l| prefilter(l)).map(|l| l.len()).sum();
        println!("  ({label}: {} strings, {:.0}% of bytes pass the prefilter)", lines.len(), 100.0 * passing as f64 / bytes.max(1) as f64);
        row!(format!("Masker::mask_text per string, {label}"), measure(bytes, min, || {
            for l in lines {
                black_box(m.mask_text(l, &mut counts));
            }
        }));
        for pf in [false, true] {
            let tag = if pf { "prefilter on" } else { "prefilter off" };
            row!(format!("regex-lite, 11 bare patterns, {label} ({tag})"), measure(bytes, min, || {
                let mut n = 0usize;
                for l in lines {
                    if pf && !prefilter(l) {
                        continue;
                    }
                    for re in &lite {
                        n += re.find_iter(l).count();
                    }
                }
                black_box(n);
            }));
            row!(format!("regex, 11 bare patterns, {label} ({tag})"), measure(bytes, min, || {
                let mut n = 0usize;
                for l in lines {
                    if pf && !prefilter(l) {
                        continue;
                    }
                    for re in &full {
                        n += re.find_iter(l).count();
                    }
                }
                black_box(n);
            }));
        }
        row!(format!("regex RegexSet is_match only, {label}"), measure(bytes, min, || {
            let mut n = 0usize;
            for l in lines {
                n += usize::from(set.is_match(l));
            }
            black_box(n);
        }));
    }
    black_box(counts);
}
