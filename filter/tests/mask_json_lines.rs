//! `mask`: JSON-lines streams (`application/x-ndjson`, Ollama's native
//! `/api/chat` and `/api/generate`). Every line stays one JSON document;
//! Ollama's streamed strings are joined across lines, so a value split
//! between two lines is caught; the output is the same however the stream
//! is cut into chunks; other lines are masked as JSON one by one.

use nhi_gate::mask::{Counts, Masker, RawMasking, StreamKind};
use proptest::prelude::*;
use proptest::test_runner::Config as PtConfig;
use serde_json::{json, Value};

fn masker() -> Masker {
    Masker::compile(RawMasking::default(), "masking").expect("compiles")
}

/// Streams `input` cut at `cuts` (byte offsets, any order); returns the
/// concatenated output and the counts.
fn stream(m: &Masker, input: &[u8], cuts: &[usize]) -> (Vec<u8>, Counts) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.extend([0, input.len()]);
    points.sort_unstable();
    points.dedup();
    let mut s = m.stream(StreamKind::JsonLines);
    let mut counts = Counts::new();
    let mut out = Vec::new();
    for w in points.windows(2) {
        out.extend(s.push(&input[w[0]..w[1]], &mut counts));
    }
    out.extend(s.finish(&mut counts));
    (out, counts)
}

const PII: &[&str] = &["jane.doe@example.com", "4111 1111 1111 1111", "123-45-6789", "+1 415-555-0134", "AKIAIOSFODNN7EXAMPLE"];
const WORDS: &[&str] = &["the", "index", "answer", "is", "ready", "v1.2.3", "2024-01-15", "order", "42", "ok"];

/// A text of words and PII values, and the PII values in it.
fn text() -> impl Strategy<Value = (String, Vec<String>)> {
    let tok = prop_oneof![3 => prop::sample::select(WORDS).prop_map(|w| (w, false)), 1 => prop::sample::select(PII).prop_map(|w| (w, true))];
    prop::collection::vec((tok, prop::sample::select(vec![" ", "\n", ", ", ". "])), 0..40).prop_map(|items| {
        let (mut s, mut pii) = (String::new(), Vec::new());
        for ((t, is_pii), sep) in items {
            s.push_str(t);
            s.push_str(sep);
            if is_pii {
                pii.push(t.to_string());
            }
        }
        (s, pii)
    })
}

/// `s` cut into pieces of the given sizes (bytes, on char boundaries), cycling.
fn pieces(s: &str, frag: &[usize]) -> Vec<String> {
    let (mut out, mut cur, mut k) = (Vec::new(), String::new(), 0);
    for c in s.chars() {
        cur.push(c);
        if cur.len() >= frag[k % frag.len()] {
            out.push(std::mem::take(&mut cur));
            k += 1;
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// An Ollama `/api/chat` stream: thinking, then the answer, in fragments,
/// then the final line (`done`, the counts) with an empty `content`
/// (`done_content`) or none.
fn chat_lines(thinking: &str, answer: &str, frag: &[usize], done_content: bool, eol: &str) -> String {
    let mut out = String::new();
    let line = |out: &mut String, v: Value| {
        out.push_str(&v.to_string());
        out.push_str(eol);
    };
    for p in pieces(thinking, frag) {
        line(&mut out, json!({"model": "m", "created_at": "t", "message": {"role": "assistant", "content": "", "thinking": p}, "done": false}));
    }
    for p in pieces(answer, frag) {
        line(&mut out, json!({"model": "m", "created_at": "t", "message": {"role": "assistant", "content": p}, "done": false}));
    }
    let mut last = json!({"model": "m", "created_at": "t", "done": true, "done_reason": "stop", "prompt_eval_count": 26, "eval_count": 298});
    if done_content {
        last["message"] = json!({"role": "assistant", "content": ""});
    }
    line(&mut out, last);
    out
}

/// The lines of `out`, each parsed (every line must be JSON), and what the
/// client adds up from `field` of each.
fn assemble(out: &[u8], field: &[&str]) -> (Vec<Value>, String) {
    let text = std::str::from_utf8(out).expect("UTF-8");
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?} is not JSON: {e}"))).collect();
    let mut got = String::new();
    for l in &lines {
        let mut v = l;
        for f in field {
            v = &v[f];
        }
        got.push_str(v.as_str().unwrap_or(""));
    }
    (lines, got)
}

fn pt_config() -> PtConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96);
    PtConfig { cases, failure_persistence: None, ..PtConfig::default() }
}

proptest! {
    #![proptest_config(pt_config())]

    /// `/api/chat`: for any fragments and any chunking, the output equals
    /// the one-chunk output, every line is JSON, the answer and the
    /// thinking the client adds up equal masking each whole text once, no
    /// value survives, and the final line keeps its counts.
    #[test]
    fn chat_lines_are_joined_for_any_chunking(
        (thinking, pii) in text(),
        (answer, pii2) in text(),
        frag in prop::collection::vec(1usize..12, 1..30),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
        done_content in any::<bool>(),
        crlf in any::<bool>(),
    ) {
        let m = masker();
        let input = chat_lines(&thinking, &answer, &frag, done_content, if crlf { "\r\n" } else { "\n" });
        let (one, _) = stream(&m, input.as_bytes(), &[]);
        let (out, _) = stream(&m, input.as_bytes(), &cuts);
        prop_assert_eq!(&out, &one);
        let (lines, got) = assemble(&out, &["message", "content"]);
        let (_, got_thinking) = assemble(&out, &["message", "thinking"]);
        prop_assert_eq!(got, m.mask_text(&answer, &mut Counts::new()));
        prop_assert_eq!(got_thinking, m.mask_text(&thinking, &mut Counts::new()));
        let last = lines.last().expect("a line");
        prop_assert_eq!(&last["done"], &json!(true));
        prop_assert_eq!(&last["eval_count"], &json!(298));
        let text = String::from_utf8(out).unwrap();
        for v in pii.iter().chain(&pii2) {
            let enc = serde_json::to_string(v).unwrap();
            prop_assert!(!text.contains(&enc[1..enc.len() - 1]), "{:?} survived", v);
        }
    }

    /// `/api/generate`: the top-level `response` is joined the same way.
    #[test]
    fn generate_lines_are_joined_for_any_chunking(
        (answer, pii) in text(),
        frag in prop::collection::vec(1usize..12, 1..30),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let m = masker();
        let mut input = String::new();
        for p in pieces(&answer, &frag) {
            input.push_str(&json!({"model": "m", "response": p, "done": false}).to_string());
            input.push('\n');
        }
        input.push_str(&json!({"model": "m", "response": "", "done": true, "context": [1, 2, 3], "eval_count": 9}).to_string());
        input.push('\n');
        let (one, _) = stream(&m, input.as_bytes(), &[]);
        let (out, _) = stream(&m, input.as_bytes(), &cuts);
        prop_assert_eq!(&out, &one);
        let (_, got) = assemble(&out, &["response"]);
        prop_assert_eq!(got, m.mask_text(&answer, &mut Counts::new()));
        let text = String::from_utf8(out).unwrap();
        for v in &pii {
            prop_assert!(!text.contains(v.as_str()), "{:?} survived", v);
        }
    }
}

/// An email split across two lines' `message.content` is caught; clean
/// text goes out before the end; what is held at the final line goes into
/// that line's `content`.
#[test]
fn email_split_across_lines_is_caught_and_clean_text_flows() {
    let m = masker();
    let mut s = m.stream(StreamKind::JsonLines);
    let mut c = Counts::new();
    let line = |t: &str| format!("{}\n", json!({"model": "m", "message": {"role": "assistant", "content": t}, "done": false}));
    let clean = "The index was rebuilt overnight and every shard answered within the deadline, so the team closed the incident. ".repeat(2);
    let first = s.push(line(&clean).as_bytes(), &mut c);
    let first: Value = serde_json::from_slice(&first).expect("one JSON line");
    assert!(first["message"]["content"].as_str().unwrap().starts_with("The index was rebuilt"), "clean text flows: {first}");
    let mut out = Vec::new();
    out.extend(s.push(line("Write to jane.").as_bytes(), &mut c));
    out.extend(s.push(line("doe@exam").as_bytes(), &mut c));
    out.extend(s.push(line("ple.com today.").as_bytes(), &mut c));
    out.extend(s.push(format!("{}\n", json!({"model": "m", "message": {"role": "assistant", "content": ""}, "done": true, "eval_count": 3})).as_bytes(), &mut c));
    out.extend(s.finish(&mut c));
    let (lines, got) = assemble(&out, &["message", "content"]);
    assert_eq!(lines.len(), 4, "no line added: {}", String::from_utf8_lossy(&out));
    assert!(got.ends_with("Write to [EMAIL] today."), "{got:?}");
    assert_eq!(lines[3]["done"], json!(true));
    assert!(lines[3]["message"]["content"].as_str().unwrap().contains("[EMAIL]"), "the rest goes into the final line");
    assert_eq!(c.get("email"), Some(&1));
}

/// A final line without `message`, or a stream cut off before its final
/// line: the held rest goes out as a copy of the last content line, just
/// before the final line or at the end.
#[test]
fn held_text_without_a_place_gets_a_line_of_its_own() {
    let m = masker();
    let a = json!({"model": "m", "created_at": "t1", "message": {"role": "assistant", "content": "mail jane.doe@"}, "done": false});
    let b = json!({"model": "m", "created_at": "t2", "message": {"role": "assistant", "content": "example.com"}, "done": false});
    let done = json!({"model": "m", "done": true, "eval_count": 2});
    let input = format!("{a}\n{b}\n{done}\n");
    let (out, counts) = stream(&m, input.as_bytes(), &[]);
    let (lines, got) = assemble(&out, &["message", "content"]);
    assert_eq!(got, "mail [EMAIL]");
    assert_eq!(lines.len(), 4, "{}", String::from_utf8_lossy(&out));
    assert_eq!(lines[2]["created_at"], json!("t2"), "a copy of the last content line");
    assert_eq!(lines[2]["done"], json!(false));
    assert_eq!(lines[3], done);
    assert_eq!(counts.get("email"), Some(&1));
    // cut off before the final line, without a last line end
    let input = format!("{a}\n{b}");
    let (out, _) = stream(&m, input.as_bytes(), &[7, 40]);
    let (lines, got) = assemble(&out, &["message", "content"]);
    assert_eq!(got, "mail [EMAIL]");
    assert_eq!(lines.len(), 3);
    assert!(out.ends_with(b"\n"), "the added line ends the stream");
}

/// Lines of other shapes are masked one by one as JSON (escapes decoded,
/// keys and numbers left alone); one of no known shape first flushes what
/// is held; blank lines
/// stay; a line that is not JSON is masked as text; a line that looks like
/// JSON but is not strict JSON is withheld as an error line.
#[test]
fn other_lines_are_masked_as_json_one_by_one() {
    let m = masker();
    let held = json!({"message": {"role": "assistant", "content": "call +1 415-"}, "done": false});
    let input = format!(
        "{held}\n{}\n\n{}\nplain text to bob@example.com\n{{\"a\": NaN, \"b\": \"c@d.com\"}}\n",
        r#"{"id": 7, "email": "jane\u0040example.com", "jane@example.com": 1}"#,
        json!({"message": {"role": "assistant", "content": [{"type": "text", "text": "555-0134 or eve@example.org"}]}})
    );
    let (out, counts) = stream(&m, input.as_bytes(), &[]);
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.split('\n').collect();
    assert_eq!(lines.len(), 8, "{text}");
    let v: Vec<Option<Value>> = lines.iter().map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(v[0].as_ref().unwrap()["message"]["content"], json!(""), "held: the phone may go on");
    assert_eq!(v[1].as_ref().unwrap(), &json!({"id": 7, "email": "[EMAIL]", "jane@example.com": 1}));
    assert_eq!(lines[2], "");
    // a `content` that is not a string: not joined, but what is held goes first
    assert_eq!(v[3].as_ref().unwrap()["message"]["content"], json!("call +1 415-"));
    assert_eq!(v[4].as_ref().unwrap()["message"]["content"][0]["text"], json!("555-0134 or [EMAIL]"));
    assert_eq!(lines[5], "plain text to [EMAIL]");
    assert_eq!(v[6].as_ref().unwrap()["error"]["code"], json!("unmaskable_event"));
    assert_eq!(lines[7], "");
    assert!(!text.contains("c@d.com"));
    assert_eq!(lines[7], "");
    assert_eq!(counts.get("email"), Some(&3));
    assert_eq!(counts.get("unmaskable_event"), Some(&1));
}
