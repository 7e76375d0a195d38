//! `mask`: JSON-lines streams (`application/x-ndjson`, Ollama's native
//! `/api/chat` and `/api/generate`). Every line stays one JSON document;
//! Ollama's streamed strings are joined across lines, so a value split
//! between two lines is caught; the output is the same however the stream
//! is cut into chunks; other lines are masked as JSON one by one.

mod common;

use common::{pieces, pt_config};
use nhi_gate::mask::{Counts, Masker, RawMasking, StreamKind};
use proptest::prelude::*;
use serde_json::{json, Value};

fn masker() -> Masker {
    Masker::compile(RawMasking::default(), "masking").expect("compiles")
}

/// Streams JSON lines `input` cut at `cuts`; returns the output and the counts.
fn stream(m: &Masker, input: &[u8], cuts: &[usize]) -> (Vec<u8>, Counts) {
    let (out, _, counts) = common::stream(m, StreamKind::JsonLines, input, cuts);
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

/// The lines of `out` but blank ones, each parsed (every line must be
/// JSON), and what the
/// client adds up from `field` of each.
fn assemble(out: &[u8], field: &[&str]) -> (Vec<Value>, String) {
    let text = std::str::from_utf8(out).expect("UTF-8");
    let lines: Vec<Value> = text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?} is not JSON: {e}"))).collect();
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

/// Pieces of the PII values that must not survive anywhere in the output.
const FRAGS: &[&str] = &["doe@exa", "ne.doe@", "1111 1111", "45-6789", "555-0134", "IOSFODNN", "ODNN7EX"];

/// How an Ollama stream ends: 0 a final line with an empty string, 1 a
/// final line without it, 2 a final line with the last piece, 3 no final
/// line, 4 an error line, then the final line.
#[derive(Debug, Clone)]
struct Shape {
    generate: bool,
    end: u8,
    /// the last thinking line also carries the first answer piece
    transition: bool,
    /// `@` written as `\u0040` in the lines
    escaped: bool,
    crlf: bool,
    blank_lines: bool,
}

fn shape() -> impl Strategy<Value = Shape> {
    (any::<bool>(), 0u8..5, any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>())
        .prop_map(|(generate, end, transition, escaped, crlf, blank_lines)| Shape { generate, end, transition, escaped, crlf, blank_lines })
}

fn ollama_stream(sh: &Shape, thinking: &str, answer: &str, frag: &[usize]) -> String {
    let eol = if sh.crlf { "\r\n" } else { "\n" };
    let mut out = String::new();
    let mut push = |v: Value| {
        let line = v.to_string();
        out.push_str(&if sh.escaped { line.replace('@', "\\u0040") } else { line });
        out.push_str(eol);
        if sh.blank_lines {
            out.push_str(eol);
        }
    };
    let line = |answer: &str, thinking: Option<&str>, done: bool| {
        let mut v = if sh.generate { json!({"model": "m", "response": answer}) } else { json!({"model": "m", "message": {"role": "assistant", "content": answer}}) };
        if let Some(t) = thinking {
            if sh.generate {
                v["thinking"] = json!(t);
            } else {
                v["message"]["thinking"] = json!(t);
            }
        }
        v["done"] = json!(done);
        v
    };
    let th = pieces(thinking, frag);
    let an = pieces(answer, frag);
    let mut first = 0;
    for (i, t) in th.iter().enumerate() {
        let a = if sh.transition && i + 1 == th.len() && !an.is_empty() {
            first = 1;
            an[0].as_str()
        } else {
            ""
        };
        push(line(a, Some(t), false));
    }
    let last_piece = sh.end == 2 && an.len() > first;
    let upto = if last_piece { an.len() - 1 } else { an.len() };
    for a in &an[first..upto] {
        push(line(a, None, false));
    }
    if sh.end == 4 {
        push(json!({"error": "overloaded"}));
    }
    if sh.end != 3 {
        let mut last = if sh.end == 1 { json!({"model": "m", "done": true}) } else { line(if last_piece { an[an.len() - 1].as_str() } else { "" }, None, true) };
        last["eval_count"] = json!(7);
        push(last);
    }
    out
}

proptest! {
    #![proptest_config(pt_config())]

    /// Ollama streams of every ending, with thinking, a line that carries
    /// both strings, escapes, CRLF and blank lines: any chunking gives the
    /// one-chunk output, every line is JSON, each joined string equals
    /// masking its whole text once, and no piece of a value survives.
    #[test]
    fn ollama_streams_of_every_shape(
        sh in shape(),
        (thinking, _) in text(),
        (answer, _) in text(),
        frag in prop::collection::vec(1usize..14, 1..20),
        cuts in prop::collection::vec(any::<usize>(), 0..30),
    ) {
        let m = masker();
        let input = ollama_stream(&sh, &thinking, &answer, &frag);
        let (one, _) = stream(&m, input.as_bytes(), &[]);
        let (out, _) = stream(&m, input.as_bytes(), &cuts);
        prop_assert_eq!(&out, &one);
        let (a, t) = if sh.generate { (vec!["response"], vec!["thinking"]) } else { (vec!["message", "content"], vec!["message", "thinking"]) };
        let (lines, got) = assemble(&out, &a);
        let (_, got_thinking) = assemble(&out, &t);
        prop_assert_eq!(got, m.mask_text(&answer, &mut Counts::new()));
        prop_assert_eq!(got_thinking, m.mask_text(&thinking, &mut Counts::new()));
        let text = String::from_utf8(out).unwrap();
        for f in FRAGS {
            prop_assert!(!text.contains(f), "{:?} survived", f);
            prop_assert!(lines.iter().all(|l| !l.to_string().contains(f)), "{:?} survived decoded", f);
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
    assert_eq!(lines.len(), 5, "{}", String::from_utf8_lossy(&out));
    assert!(got.ends_with("Write to [EMAIL] today."), "{got:?}");
    assert!(lines[3]["message"]["content"].as_str().unwrap().contains("[EMAIL]"), "the rest goes in a line of its own");
    assert_eq!(lines[3]["done"], json!(false));
    assert_eq!(lines[4], json!({"model": "m", "message": {"role": "assistant", "content": ""}, "done": true, "eval_count": 3}), "the final line as sent");
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
/// keys and numbers left alone) and leave the held text held, so a value
/// split around them is still joined; blank lines stay; a line that is not
/// strict JSON (text, `NaN`, a byte order mark inside the stream) is
/// withheld as an error line.
#[test]
fn other_lines_are_masked_as_json_one_by_one() {
    let m = masker();
    let held = json!({"model": "m", "message": {"role": "assistant", "content": "call +1 415-"}, "done": false});
    let input = format!(
        "{held}\n{}\n\n{}\nplain text to bob@example.com\n{{\"a\": NaN, \"b\": \"c@d.com\"}}\n\u{feff}{{\"e\": \"x\\u0040y.com\"}}\n{}\n",
        r#"{"id": 7, "email": "jane\u0040example.com", "jane@example.com": 1}"#,
        json!({"message": {"role": "assistant", "content": [{"type": "text", "text": "eve@example.org"}]}}),
        json!({"model": "m", "message": {"role": "assistant", "content": "555-0134 ok"}, "done": true})
    );
    let (out, counts) = stream(&m, input.as_bytes(), &[]);
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.split('\n').collect();
    assert_eq!(lines.len(), 10, "{text}");
    let v: Vec<Option<Value>> = lines.iter().map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(v[0].as_ref().unwrap()["message"]["content"], json!(""), "held: the phone may go on");
    assert_eq!(v[1].as_ref().unwrap(), &json!({"id": 7, "email": "[EMAIL]", "jane@example.com": 1}));
    assert_eq!(lines[2], "");
    assert_eq!(v[3].as_ref().unwrap()["message"]["content"][0]["text"], json!("[EMAIL]"));
    for k in [4, 5, 6] {
        assert_eq!(v[k].as_ref().unwrap()["error"]["code"], json!("unmaskable_event"), "line {k}: {}", lines[k]);
    }
    assert_eq!(v[7].as_ref().unwrap(), &json!({"model": "m", "message": {"role": "assistant", "content": "call [PHONE] ok"}, "done": false}));
    assert_eq!(v[8].as_ref().unwrap(), &json!({"model": "m", "message": {"role": "assistant", "content": ""}, "done": true}));
    assert_eq!(lines[9], "");
    for leak in ["bob@", "c@d.com", "x\\u0040y", "415-555"] {
        assert!(!text.contains(leak), "{leak} in {text}");
    }
    assert_eq!(counts.get("email"), Some(&2));
    assert_eq!(counts.get("phone"), Some(&1));
    assert_eq!(counts.get("unmaskable_event"), Some(&3));
}

/// Ollama ends thinking with a line that carries both the last thinking
/// and the first answer text. The held rest of each string goes out in a
/// line of its own that repeats nothing else (not the other string, not
/// tool calls); nothing leaks and nothing is sent twice.
#[test]
fn a_line_with_thinking_and_answer_is_not_repeated() {
    let m = masker();
    let msg = |content: &str, thinking: Option<&str>, done: bool| {
        let mut v = json!({"model": "m", "message": {"role": "assistant", "content": content}, "done": done});
        if let Some(t) = thinking {
            v["message"]["thinking"] = json!(t);
        }
        format!("{v}\n")
    };
    let input = [
        msg("", Some("Checking the records of jane."), false),
        msg("Key: AKIAIOSFODNN7EXAM", Some(" Done."), false),
        msg("PLE, mail jane.doe@", None, false),
        format!("{}\n", json!({"model": "m", "message": {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "delete_user", "arguments": {"id": 1}}}]}, "done": false})),
        msg("example.com", None, false),
        format!("{}\n", json!({"model": "m", "done": true, "eval_count": 3})),
    ]
    .concat();
    for cuts in [vec![], vec![5, 90, 91, 200, 333], (0..input.len()).collect()] {
        let (out, counts) = stream(&m, input.as_bytes(), &cuts);
        let (lines, content) = assemble(&out, &["message", "content"]);
        let (_, thinking) = assemble(&out, &["message", "thinking"]);
        assert_eq!(content, "Key: [AWS_ACCESS_KEY], mail [EMAIL]");
        assert_eq!(thinking, "Checking the records of jane. Done.");
        let calls = lines.iter().filter(|l| l["message"]["tool_calls"].is_array()).count();
        assert_eq!(calls, 1, "tool calls once");
        // the thinking's rest goes out before the answer goes on
        assert_eq!(counts.get("aws_access_key"), Some(&1));
    }
    // /api/generate: `response` and `thinking` in one line
    let mut input = [
        json!({"model": "m", "response": "", "thinking": "Let me see.", "done": false}),
        json!({"model": "m", "response": "card 4111 1111 ", "thinking": " Ok.", "done": false}),
        json!({"model": "m", "response": "1111 1111 done", "done": false}),
    ]
    .iter()
    .map(|l| format!("{l}\n"))
    .collect::<String>();
    // (Ollama's member order: `done` before `context`)
    input.push_str("{\"model\":\"m\",\"response\":\"\",\"done\":true,\"context\":[1,2]}\n");
    let (out, _) = stream(&m, input.as_bytes(), &[]);
    let (lines, response) = assemble(&out, &["response"]);
    let (_, thinking) = assemble(&out, &["thinking"]);
    assert_eq!(response, "card [PAYMENT_CARD] done");
    assert_eq!(thinking, "Let me see. Ok.");
    assert_eq!(lines.last().unwrap()["context"], json!([]));
}

/// A joined member of another type (a number, `null`, an array of parts)
/// is masked in place and does not keep the line's other strings from
/// being joined.
#[test]
fn members_of_other_types_do_not_stop_joining() {
    let m = masker();
    let input = [
        json!({"model": "m", "message": {"role": "assistant", "content": "card 4111 1111"}, "done": false}),
        json!({"model": "m", "message": {"role": "assistant", "content": " 1111 1111", "thinking": 5}, "done": false}),
        json!({"model": "m", "message": {"role": "assistant", "content": " end", "thinking": [{"text": "jane.doe@example.com"}]}, "response": null, "done": true}),
    ]
    .iter()
    .map(|l| format!("{l}\n"))
    .collect::<String>();
    let (out, _) = stream(&m, input.as_bytes(), &[]);
    let (lines, content) = assemble(&out, &["message", "content"]);
    assert_eq!(content, "card [PAYMENT_CARD] end");
    assert_eq!(lines[1]["message"]["thinking"], json!(5));
    assert!(!String::from_utf8_lossy(&out).contains("1111") && !String::from_utf8_lossy(&out).contains("jane"));
}

/// An error line ends what clients read: held text goes out before it.
/// A JSON array is no Ollama line (serde would read one as a struct).
#[test]
fn error_lines_flush_and_arrays_are_not_chunks() {
    let m = masker();
    let input = format!(
        "{}\n{}\n",
        json!({"model": "m", "message": {"role": "assistant", "content": "mail jane.doe@example.com ok"}, "done": false}),
        json!({"error": "model overloaded"})
    );
    let (out, _) = stream(&m, input.as_bytes(), &[]);
    let (lines, content) = assemble(&out, &["message", "content"]);
    assert_eq!(content, "mail [EMAIL] ok");
    assert_eq!(lines.last().unwrap(), &json!({"error": "model overloaded"}));
    let input = format!("{}\n[null, \" 1111 1111 rest\", null, true]\n{}\n", json!({"model": "m", "response": "My card is 4111 1111", "done": false}), json!({"model": "m", "response": " 1111 1111", "done": true}));
    let (out, _) = stream(&m, input.as_bytes(), &[]);
    let (lines, response) = assemble(&out, &["response"]);
    assert_eq!(response, "My card is [PAYMENT_CARD]");
    assert_eq!(lines[1], json!([null, " 1111 1111 rest", null, true]), "masked as JSON, alone");
}

/// A line that serde reads but that is not strict JSON (invalid UTF-8 in a
/// member the masker skips) is withheld; the text released for it still
/// goes out, in a line of its own.
#[test]
fn a_withheld_line_keeps_the_text_released_for_it() {
    let m = masker();
    let long = "word ".repeat(60);
    let mut input = format!("{}\n", json!({"model": "m", "response": long, "done": false})).into_bytes();
    input.extend_from_slice(b"{\"model\":\"m\",\"response\":\"more text here\",\"x\":\"\xff\",\"done\":false}\n");
    input.extend_from_slice(format!("{}\n", json!({"model": "m", "response": " end", "done": true})).as_bytes());
    let (out, counts) = stream(&m, &input, &[]);
    let (lines, response) = assemble(&out, &["response"]);
    assert_eq!(response, format!("{long}more text here end"));
    assert!(lines.iter().any(|l| l["error"]["code"] == json!("unmaskable_event")));
    assert_eq!(counts.get("unmaskable_event"), Some(&1));
}

/// A lone CR inside a line is JSON whitespace, not a line end; CRLF ends a
/// line and is kept.
#[test]
fn lines_end_at_lf_only() {
    let m = masker();
    let input = "{\"model\":\"m\",\"message\":\r{\"content\":\"mail jane.doe@example.com\"},\r\"done\":true}\r\n";
    let (out, counts) = stream(&m, input.as_bytes(), &[10]);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"mail [EMAIL]\"},\"done\":false}\r\n{\"model\":\"m\",\"message\":\r{\"content\":\"\"},\r\"done\":true}\r\n"
    );
    assert_eq!(counts.get("email"), Some(&1));
}

/// Joined text is written back with U+2028 and U+2029 escaped (Python's
/// `str.splitlines`, which the Ollama client's line reader uses, splits
/// at them); a stream that ends in a CR without LF still gets its held
/// text on a line of its own; `[DONE]` is no JSON line.
#[test]
fn line_separators_final_cr_and_done_marker() {
    let m = masker();
    let input = "{\"model\":\"m\",\"response\":\"a\\u2028b\\u2029c jane.doe@\",\"done\":false}\n{\"model\":\"m\",\"response\":\"example.com\",\"done\":false}\r";
    for cuts in [vec![], vec![30, 31, 60]] {
        let (out, _) = stream(&m, input.as_bytes(), &cuts);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains('\u{2028}') && !text.contains('\u{2029}'), "{text:?}");
        let mut joined = String::new();
        for line in text.split('\n').filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            joined.push_str(v["response"].as_str().unwrap_or(""));
        }
        assert_eq!(joined, "a\u{2028}b\u{2029}c [EMAIL]");
    }
    let (out, counts) = stream(&m, b"[DONE]\n", &[]);
    let v: Value = serde_json::from_slice(out.trim_ascii()).unwrap();
    assert_eq!(v["error"]["code"], json!("unmaskable_event"));
    assert_eq!(counts.get("unmaskable_event"), Some(&1));
}

/// A line longer than `MAX_EVENT` without its line end is withheld whole,
/// however it is cut, and the lines after it are masked as usual.
#[test]
fn an_over_long_line_is_withheld_whole() {
    let m = masker();
    let mut input = format!("{{\"response\":\"{}", "x ".repeat(nhi_gate::mask::MAX_EVENT / 2 + 8)).into_bytes();
    input.extend_from_slice(b"jane.doe\\u0040example.com 4111 1111 1111 1111\"}\n");
    input.extend_from_slice(format!("{}\n", json!({"model": "m", "response": "mail bob@example.com", "done": true})).as_bytes());
    let mut outs = Vec::new();
    for step in [input.len(), 65536, 4093] {
        let cuts: Vec<usize> = (step..input.len()).step_by(step).collect();
        let (out, counts) = stream(&m, &input, &cuts);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 3, "{}", &text[..200.min(text.len())]);
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["error"]["code"], json!("unmaskable_event"));
        assert!(!text.contains("jane") && !text.contains("4111"));
        assert!(text.ends_with("{\"model\":\"m\",\"response\":\"mail [EMAIL]\",\"done\":false}\n{\"model\":\"m\",\"response\":\"\",\"done\":true}\n"), "{}", &text[text.len().saturating_sub(200)..]);
        assert_eq!(counts.get("unmaskable_event"), Some(&1));
        outs.push(text);
    }
    assert!(outs.windows(2).all(|w| w[0] == w[1]));
    // a line of exactly `MAX_EVENT` bytes, then CRLF cut between CR and LF:
    // masked like the same line in one piece
    let mut line = format!("{{\"response\":\"mail bob@example.com {}", "y".repeat(nhi_gate::mask::MAX_EVENT)).into_bytes();
    line.truncate(nhi_gate::mask::MAX_EVENT - 2);
    line.extend_from_slice(b"\"}\r\n");
    assert_eq!(line.len(), nhi_gate::mask::MAX_EVENT + 2);
    let (one, _) = stream(&m, &line, &[]);
    let (cut, _) = stream(&m, &line, &[line.len() - 1]);
    let show = |b: &[u8]| format!("{} bytes: {}…{}", b.len(), String::from_utf8_lossy(&b[..b.len().min(60)]), String::from_utf8_lossy(&b[b.len().saturating_sub(60)..]));
    assert!(one == cut, "one chunk {}\ncut {}", show(&one), show(&cut));
    assert!(one.starts_with(b"{\"response\":\"mail [EMAIL] "), "{}", show(&one));
}
