//! Body handling decisions for masking, independent of the host: which
//! responses are masked and how (buffered JSON, streamed SSE or text), the
//! `Content-Encoding` the filter can undo, gzip decoding, and the prompt
//! parts of a request body that `requests: chat_messages` masks.

use crate::config::ResourceMask;
use crate::mask::{Counts, Masker};
use serde_json::Value;
use std::io::Read;

/// How a response (or request) body is processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyMode {
    /// Left alone.
    Pass,
    /// Buffered whole, masked as JSON (`application/json`, `*+json`).
    Json,
    /// Buffered whole, masked as text (a compressed text body).
    Text,
    /// Masked incrementally as SSE events (`text/event-stream`).
    Sse,
    /// Masked incrementally as text (`text/plain` and other listed types).
    StreamText,
    /// Masked incrementally as JSON lines ([`JSON_LINES`]).
    JsonLines,
    /// The body cannot be masked, so a body that follows is refused with 502
    /// and this reason (an empty body passes):
    /// - `unmaskable_content_type`: no `Content-Type`, an empty one, several
    ///   (Envoy joins repeated headers with `,`), or a type the resource
    ///   does not list (unless `other_types: pass`);
    /// - `unmaskable_charset`: a `charset` whose bytes are not ASCII-compatible
    ///   (UTF-16, UTF-32, EBCDIC), where the detectors would see nothing;
    /// - `unmaskable_partial_content`: a 206 answer, a part of a body
    ///   (RFC 9110 §15.3.7) where a value can be cut at the range's edge.
    Unmaskable(&'static str),
}

/// Character encodings whose bytes are ASCII for ASCII text, so detectors
/// see values as they are (WHATWG Encoding Standard labels, lowercase).
fn ascii_compatible(charset: &str) -> bool {
    let c = charset.trim().trim_matches('"').to_ascii_lowercase();
    matches!(c.as_str(), "utf-8" | "utf8" | "us-ascii" | "ascii" | "latin1" | "l1" | "cp819" | "ibm819")
        || c.starts_with("iso-8859-")
        || c.starts_with("iso8859-")
        || c.starts_with("iso_8859-")
        || c.starts_with("windows-125")
        || c.starts_with("cp125")
}

/// The `charset` parameter of a `Content-Type` value, if any.
fn charset(content_type: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(content_type);
    s.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("charset").then(|| v.trim().to_string())
    })
}

/// Whether a chunk of a text body is UTF-16 or UTF-32 rather than text in an
/// ASCII-compatible encoding: it holds a NUL byte (every ASCII character of
/// UTF-16/32 text comes with one, and text never does), or, at the start of
/// the body (`at_start`), a UTF-16/32 byte-order mark (`FE FF`, `FF FE`).
/// Such a body is not masked as text: its values would pass unseen. (0xFE
/// and 0xFF elsewhere are `þ` and `ÿ` in Latin-1 and Windows-1252.)
pub fn not_text(chunk: &[u8], at_start: bool) -> bool {
    memchr::memchr(0, chunk).is_some() || (at_start && (chunk.starts_with(&[0xfe, 0xff]) || chunk.starts_with(&[0xff, 0xfe])))
}

/// `Content-Encoding` of a body, as far as masking is concerned (RFC 9110 §8.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    /// Anything else (br, zstd, deflate, stacked codings): cannot be masked.
    Unsupported,
}

/// Reads a `Content-Encoding` header value.
pub fn encoding(value: Option<&[u8]>) -> Encoding {
    let Some(v) = value else { return Encoding::Identity };
    let v = String::from_utf8_lossy(v).trim().to_ascii_lowercase();
    match v.as_str() {
        "" | "identity" => Encoding::Identity,
        "gzip" | "x-gzip" => Encoding::Gzip,
        _ => Encoding::Unsupported,
    }
}

/// Whether a `Content-Type` value holds several types: a `,` outside a
/// quoted parameter value (RFC 9110 §5.6.4), as when Envoy joins repeated
/// headers (`image/png; a=b,application/json`).
pub fn several_types(content_type: &[u8]) -> bool {
    let (mut quoted, mut escaped) = (false, false);
    for &b in content_type {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => return true,
            _ => {}
        }
    }
    false
}

/// The media type of a `Content-Type` value, lowercase, without parameters.
pub fn media_type(content_type: &[u8]) -> String {
    let s = String::from_utf8_lossy(content_type);
    s.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Media types of JSON lines (one JSON document per line, e.g. Ollama's
/// streamed `/api/chat` and `/api/generate`: `application/x-ndjson`),
/// masked line by line as JSON.
pub const JSON_LINES: [&str; 5] = ["application/x-ndjson", "application/ndjson", "application/jsonl", "application/jsonlines", "application/x-jsonlines"];

/// Whether the resource lists `media`: the type itself, its structured
/// syntax suffix (`+json`), its top-level type (`text/*`) or `*/*`.
fn listed(mask: &ResourceMask, media: &str) -> bool {
    mask.content_types.iter().any(|c| {
        if c.starts_with('+') {
            media.ends_with(c.as_str())
        } else if let Some(top) = c.strip_suffix("/*") {
            top == "*" || media.strip_prefix(top).is_some_and(|rest| rest.starts_with('/'))
        } else {
            c == media
        }
    })
}

/// Chooses how to mask a response. HEAD requests and 1xx/204/304 answers
/// carry no body (RFC 9110 §6.4.1) and are left alone. A masked resource
/// does not let through a body it cannot mask (fail closed): a response
/// whose type cannot be told (no `Content-Type`, an empty one, or several
/// joined by `,`), of a type the resource does not list (unless
/// `other_types: pass`, then it is left alone), in a charset that is not
/// ASCII-compatible, or a 206 partial answer is [`BodyMode::Unmaskable`].
pub fn response_mode(mask: &ResourceMask, method: &str, status: u32, content_type: Option<&[u8]>) -> BodyMode {
    if !mask.responses || method == "HEAD" || status < 200 || status == 204 || status == 304 {
        return BodyMode::Pass;
    }
    if status == 206 {
        return BodyMode::Unmaskable("unmaskable_partial_content");
    }
    let media = content_type.map(media_type).unwrap_or_default();
    if media.is_empty() || content_type.is_some_and(several_types) {
        return BodyMode::Unmaskable("unmaskable_content_type");
    }
    if !listed(mask, &media) {
        return if mask.pass_other_types { BodyMode::Pass } else { BodyMode::Unmaskable("unmaskable_content_type") };
    }
    if content_type.and_then(charset).is_some_and(|c| !ascii_compatible(&c)) {
        return BodyMode::Unmaskable("unmaskable_charset");
    }
    if media == "application/json" || media.ends_with("+json") {
        BodyMode::Json
    } else if media == "text/event-stream" {
        BodyMode::Sse
    } else if JSON_LINES.contains(&media.as_str()) {
        BodyMode::JsonLines
    } else {
        BodyMode::StreamText
    }
}

/// Whether a request body with this `Content-Type` may be read as JSON by
/// the backend: anything but forms, multipart uploads and binary media
/// (`application/octet-stream`, `audio/*`, `image/*`, `video/*`). Many LLM
/// servers parse the body as JSON whatever its declared type.
pub fn read_as_json(content_type: Option<&[u8]>, body: &[u8]) -> bool {
    // whatever its declared type, a body that opens like JSON (after a BOM
    // and whitespace) is read as JSON by servers that ignore the type
    let opened = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body).trim_ascii_start();
    if matches!(opened.first(), Some(b'{' | b'[')) {
        return true;
    }
    let media = content_type.map(media_type).unwrap_or_default();
    !(media.starts_with("multipart/")
        || media == "application/x-www-form-urlencoded"
        || media == "application/octet-stream"
        || ["audio/", "image/", "video/"].iter().any(|t| media.starts_with(t)))
}

/// Decodes a gzip body (RFC 1952), refusing output larger than `limit` bytes.
///
/// Errors: corrupt or truncated data, or output over `limit` (a zip bomb).
pub fn gunzip(data: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut dec = flate2::read::MultiGzDecoder::new(data).take(limit as u64 + 1);
    dec.read_to_end(&mut out).map_err(|e| format!("gzip: {e}"))?;
    if out.len() > limit {
        return Err(format!("gzip: decoded body larger than {limit} bytes"));
    }
    Ok(out)
}

/// Members of a request body that `requests: chat_messages` leaves as sent:
/// signatures and encrypted reasoning (Anthropic `signature`, OpenAI
/// `encrypted_content`: the provider checks them).
const PROMPT_SKIP: [&str; 2] = ["signature", "encrypted_content"];

/// Whether a string is an encoded payload rather than text: a data URI, or
/// 256 bytes or more of the base64 / base64url alphabet alone (images,
/// audio, files), where a detector could match random characters and
/// corrupt it. Text with an `@`, a space, `.` or other punctuation is never
/// one, and API keys and tokens are shorter (an OpenAI project key is about
/// 164 bytes), so a message that is only a key is still masked.
fn encoded_payload(s: &str) -> bool {
    let b64 = |t: &str| t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_'));
    // a data URI with a base64 payload (RFC 2397): `data:<type>;base64,<base64>`
    let data_uri = s.strip_prefix("data:").and_then(|rest| rest.split_once(";base64,")).is_some_and(|(media, payload)| {
        !media.contains([' ', ',']) && b64(payload)
    });
    data_uri || (s.len() >= 256 && b64(s))
}

/// Whether a content block of an assistant message is Anthropic extended
/// thinking that the provider checks: `thinking` with a `signature`, or
/// `redacted_thinking` with its encrypted `data`.
fn signed_thinking(block: &serde_json::Map<String, Value>) -> bool {
    match block.get("type").and_then(Value::as_str) {
        Some("thinking") => block.get("signature").is_some_and(Value::is_string),
        Some("redacted_thinking") => block.get("data").is_some_and(Value::is_string),
        _ => false,
    }
}

/// Reads `body` as one strict JSON document (RFC 8259) that every
/// backend reads the same way: no member name twice in an object (RFC 8259
/// §4 leaves that to the reader: Go merges two `options` objects, serde and
/// Python keep the last), no lone UTF-16 surrogate in a `\u` escape, at
/// most 128 levels of nesting (serde_json's limit). Returns the document
/// (one pass: the check and the parse). Errors: what is wrong, with its
/// line and column.
pub fn strict_json(body: &[u8]) -> Result<Value, String> {
    use serde::Deserialize;
    let mut de = serde_json::Deserializer::from_slice(body);
    let Strict(v) = Strict::deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(v)
}

/// A JSON value read by [`strict_json`].
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

/// Builds a [`Strict`] value, refusing a member name given twice.
struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Strict;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(b)))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Strict, E> {
        Ok(Strict(Value::from(n)))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Strict, E> {
        Ok(Strict(Value::from(n)))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Strict, E> {
        Ok(Strict(Value::from(n)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(s)))
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<Strict, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = items.next_element::<Strict>()? {
            out.push(v);
        }
        Ok(Strict(Value::Array(out)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut members: A) -> Result<Strict, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(name) = members.next_key::<String>()? {
            if out.contains_key(&name) {
                return Err(serde::de::Error::custom(format!("member {name:?} given twice")));
            }
            let Strict(v) = members.next_value::<Strict>()?;
            out.insert(name, v);
        }
        Ok(Strict(Value::Object(out)))
    }
}

/// Whether the member name `name` is `ascii` as Go's `encoding/json`
/// matches member names to struct fields (`bytes.EqualFold`): ASCII case
/// ignored, and the two non-ASCII letters that fold to ASCII ones, `ſ`
/// (U+017F, `s`) and the Kelvin sign (U+212A, `k`). Ollama reads requests so.
pub fn go_name_eq(name: &str, ascii: &str) -> bool {
    let mut want = ascii.bytes();
    for c in name.chars() {
        let folded = match c {
            '\u{17f}' => 's',
            '\u{212a}' => 'k',
            c => c.to_ascii_lowercase(),
        };
        match want.next() {
            Some(b) if folded.is_ascii() && u32::from(folded) == u32::from(b.to_ascii_lowercase()) => {}
            _ => return false,
        }
    }
    want.next().is_none()
}

/// Masks the prompt of an LLM request body (`requests: chat_messages`) and
/// gives the body to send upstream (re-serialized).
///
/// Every string in the body is masked as text — chat `messages`, Responses
/// API `input` items of any type, Anthropic blocks of any type (`document`,
/// `search_result`, citations, server and MCP tool calls), embeddings
/// `input` arrays, `metadata`, tool descriptions — so a prompt field the
/// filter does not know by name is still masked (fail closed), except:
/// tool-call `arguments` (a JSON document in a string, or an object as
/// Ollama writes them), tool input objects and JSON tool results
/// ([`TOOL_INPUT`]: `input`, `args`, `parameters`, `response`, `json`,
/// `outputs`),
/// which are masked as JSON,
/// numbers and keys too ([`Masker::mask_tool_arguments`]); Anthropic `thinking` blocks with a
/// `signature` and `redacted_thinking` blocks in an assistant message's
/// `content`, which the provider checks; and
/// the members of [`PROMPT_SKIP`] and encoded payloads (`encoded_payload`:
/// base64 images, audio, files). Other numbers, booleans and object keys
/// are left alone.
///
/// A body with nothing masked is sent as it came; a masked one is
/// re-serialized: object members in the order sent (serde_json's
/// `preserve_order`: a JSON schema's property order steers the model's
/// output), numbers and whitespace as serde_json writes them.
///
/// Errors: the body is not strict JSON ([`strict_json`]: e.g. a member
/// given twice) or not a JSON object, or its `prompt`, `input` or
/// `context` (Ollama; names in any case) is token ids (numbers: text that
/// cannot be masked).
pub fn mask_prompt(masker: &Masker, body: &[u8], counts: &mut Counts) -> Result<Vec<u8>, String> {
    // (a member given twice would pass as sent when its last copy is clean)
    let mut v = strict_json(body)?;
    let Some(obj) = v.as_object_mut() else { return Err("not a JSON object".into()) };
    let token_ids = |p: &Value| match p {
        Value::Array(items) => items.iter().any(|i| i.is_number() || i.as_array().is_some_and(|a| a.iter().any(Value::is_number))),
        _ => false,
    };
    // legacy completions `prompt`, embeddings and Responses `input`; the
    // conversation Ollama's `/api/generate` continues (`context`); any case,
    // as Go's encoding/json matches member names
    let prompt_key = |k: &String| ["prompt", "input", "context"].iter().any(|p| go_name_eq(k, p));
    if obj.iter().any(|(k, v)| prompt_key(k) && token_ids(v)) {
        return Err("a prompt given as token ids cannot be masked; send it as text".into());
    }
    let before: u64 = counts.values().sum();
    mask_prompt_value(masker, &mut v, counts);
    if counts.values().sum::<u64>() == before {
        // nothing masked: the body as sent (members in their order: a JSON
        // schema's property order steers constrained decoding)
        return Ok(body.to_vec());
    }
    serde_json::to_vec(&v).map_err(|e| e.to_string())
}

/// The members whose object value is tool input or output, masked as JSON
/// with its numbers and keys ([`Masker::mask_tool_arguments`]): Ollama
/// `arguments`, Anthropic `input` (Bedrock `toolUse.input`), Gemini
/// `functionCall.args`, Cohere v1 `tool_calls[].parameters` (the names of
/// tool input in responses too, `mask::json`); and the tool results a job
/// sends back as JSON rather than text: Gemini `functionResponse.response`,
/// Bedrock Converse `toolResult.content[].json`, Cohere v1
/// `tool_results[].outputs` (an array of objects: arrays count for it
/// alone).
const TOOL_INPUT: [&str; 7] = ["arguments", "input", "args", "parameters", "response", "json", "outputs"];

/// [`mask_prompt`] over one value, recursively.
fn mask_prompt_value(masker: &Masker, v: &mut Value, counts: &mut Counts) {
    match v {
        Value::String(s) if !encoded_payload(s) => *s = masker.mask_text(s, counts),
        Value::Array(items) => {
            for i in items {
                mask_prompt_value(masker, i, counts);
            }
        }
        Value::Object(o) => {
            // signed thinking is left alone only as a content block of an
            // assistant message (where Anthropic checks its signature), not
            // wherever a `"type": "thinking"` is written
            let assistant = o.get("role").and_then(Value::as_str) == Some("assistant");
            for (k, item) in o.iter_mut() {
                match (k.as_str(), item) {
                    (k, _) if PROMPT_SKIP.contains(&k) => {}
                    ("content", Value::Array(blocks)) if assistant => {
                        for b in blocks {
                            if !b.as_object().is_some_and(signed_thinking) {
                                mask_prompt_value(masker, b, counts);
                            }
                        }
                    }
                    (k, Value::String(s)) if go_name_eq(k, "arguments") => *s = masker.mask_tool_arguments(s, counts),
                    // (Ollama writes tool-call arguments as an object; Go
                    // matches member names in any case; Gemini's
                    // `functionCall.args`, Cohere v1's `parameters`)
                    (k, input @ (Value::Object(_) | Value::Array(_)))
                        if TOOL_INPUT.iter().any(|n| go_name_eq(k, n)) && (input.is_object() || go_name_eq(k, "outputs")) =>
                    {
                        let masked = masker.mask_tool_arguments(&input.to_string(), counts);
                        // a JSON object masked as JSON stays one
                        *input = serde_json::from_str(&masked).unwrap_or(Value::String(masked));
                    }
                    (_, item) => mask_prompt_value(masker, item, counts),
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mask() -> ResourceMask {
        ResourceMask {
            responses: true,
            requests: None,
            content_types: vec!["application/json".into(), "+json".into(), "text/plain".into(), "text/event-stream".into()],
            max_buffer_bytes: 1024,
            reject_over_limit: true,
            pass_other_types: false,
        }
    }

    #[test]
    fn member_names_fold_as_go_folds_them() {
        for (name, ascii) in [("arguments", "arguments"), ("Arguments", "arguments"), ("argument\u{17f}", "arguments"), ("max_to\u{212a}ens", "max_tokens"), ("OPTIONS", "options")] {
            assert!(go_name_eq(name, ascii), "{name}");
        }
        for (name, ascii) in [("argument", "arguments"), ("argumentss", "arguments"), ("argumenté", "argumente"), ("", "a"), ("options ", "options")] {
            assert!(!go_name_eq(name, ascii), "{name}");
        }
    }

    #[test]
    fn strict_json_refuses_what_backends_read_differently() {
        for ok in [&br#"{"a":1,"b":{"a":2},"c":[{"a":1},{"a":1}]}"#[..], b"[]", b" 1 ", br#""\ud83d\ude00""#, b"{}"] {
            let lenient: Value = serde_json::from_slice(ok).expect("valid JSON");
            assert_eq!(strict_json(ok), Ok(lenient), "{}", String::from_utf8_lossy(ok));
        }
        let deep = format!("{}1{}", "[".repeat(129), "]".repeat(129));
        let bad: [&[u8]; 8] = [br#"{"a":1,"a":2}"#, br#"{"x":{"options":{},"options":{}}}"#, br#""\ud800""#, deep.as_bytes(), b"{} {}", b"NaN", b"\xef\xbb\xbf{}", b""];
        for b in bad {
            assert!(strict_json(b).is_err(), "{}", String::from_utf8_lossy(b));
        }
        assert!(strict_json(br#"{"a":1,"a":2}"#).unwrap_err().contains("given twice"));
    }

    #[test]
    fn modes_by_content_type_method_and_status() {
        let m = mask();
        assert_eq!(response_mode(&m, "GET", 200, Some(b"application/json; charset=utf-8")), BodyMode::Json);
        assert_eq!(response_mode(&m, "GET", 200, Some(b"application/problem+json")), BodyMode::Json);
        assert_eq!(response_mode(&m, "POST", 200, Some(b"text/event-stream")), BodyMode::Sse);
        assert_eq!(response_mode(&m, "GET", 200, Some(b"Text/Plain")), BodyMode::StreamText);
        // JSON lines: listed by default (policy config); unlisted here
        assert_eq!(response_mode(&m, "POST", 200, Some(b"application/x-ndjson")), BodyMode::Unmaskable("unmaskable_content_type"));
        let lines = ResourceMask { content_types: vec!["application/x-ndjson".into(), "application/jsonl".into(), "*/*".into()], ..mask() };
        assert_eq!(response_mode(&lines, "POST", 200, Some(b"application/x-ndjson; charset=utf-8")), BodyMode::JsonLines);
        assert_eq!(response_mode(&lines, "POST", 200, Some(b"Application/JSONL")), BodyMode::JsonLines);
        assert_eq!(response_mode(&lines, "POST", 200, Some(b"application/jsonlines")), BodyMode::JsonLines);
        assert_eq!(response_mode(&m, "HEAD", 200, Some(b"application/json")), BodyMode::Pass);
        assert_eq!(response_mode(&m, "GET", 204, Some(b"application/json")), BodyMode::Pass);
        assert_eq!(response_mode(&m, "GET", 304, Some(b"application/json")), BodyMode::Pass);
        // an unlisted type is refused, unless the resource passes other types
        assert_eq!(response_mode(&m, "GET", 200, Some(b"image/png")), BodyMode::Unmaskable("unmaskable_content_type"));
        assert_eq!(response_mode(&m, "GET", 200, Some(b"text/html")), BodyMode::Unmaskable("unmaskable_content_type"));
        let pass = ResourceMask { pass_other_types: true, ..mask() };
        assert_eq!(response_mode(&pass, "GET", 200, Some(b"image/png")), BodyMode::Pass);
        // a type that cannot be told is not passed: missing, empty, several
        for ct in [
            None,
            Some(&b""[..]),
            Some(b" ; charset=utf-8"),
            Some(b"application/json,text/plain"),
            Some(b"image/png, text/plain"),
            // the comma after the first type's parameters
            Some(b"image/png; a=b,application/json"),
            Some(b"text/plain; charset=utf-8, application/json"),
            Some(b"image/png; a=\"x\\\"\",application/json"),
        ] {
            assert_eq!(response_mode(&m, "GET", 200, ct), BodyMode::Unmaskable("unmaskable_content_type"), "{ct:?}");
            assert_eq!(response_mode(&pass, "GET", 200, ct), BodyMode::Unmaskable("unmaskable_content_type"), "{ct:?}");
        }
        // a comma inside a quoted parameter value is not a second type
        assert_eq!(response_mode(&m, "GET", 200, Some(b"application/json; x=\"a,b\"")), BodyMode::Json);
        assert_eq!(response_mode(&m, "HEAD", 200, None), BodyMode::Pass);
        assert_eq!(response_mode(&m, "GET", 204, None), BodyMode::Pass);
        let off = ResourceMask { responses: false, ..mask() };
        assert_eq!(response_mode(&off, "GET", 200, Some(b"application/json")), BodyMode::Pass);
        assert_eq!(response_mode(&off, "GET", 200, None), BodyMode::Pass);
    }

    #[test]
    fn top_level_and_any_type_wildcards() {
        let text = ResourceMask { content_types: vec!["text/*".into()], ..mask() };
        assert_eq!(response_mode(&text, "GET", 200, Some(b"text/html; charset=utf-8")), BodyMode::StreamText);
        assert_eq!(response_mode(&text, "GET", 200, Some(b"text/event-stream")), BodyMode::Sse);
        assert_eq!(response_mode(&text, "GET", 200, Some(b"textual/html")), BodyMode::Unmaskable("unmaskable_content_type"));
        assert_eq!(response_mode(&text, "GET", 200, Some(b"application/json")), BodyMode::Unmaskable("unmaskable_content_type"));
        let text_pass = ResourceMask { pass_other_types: true, ..text };
        assert_eq!(response_mode(&text_pass, "GET", 200, Some(b"textual/html")), BodyMode::Pass);
        assert_eq!(response_mode(&text_pass, "GET", 200, Some(b"application/json")), BodyMode::Pass);
        let any = ResourceMask { content_types: vec!["*/*".into()], ..mask() };
        assert_eq!(response_mode(&any, "GET", 200, Some(b"application/octet-stream")), BodyMode::StreamText);
        assert_eq!(response_mode(&any, "GET", 200, Some(b"application/vnd.api+json")), BodyMode::Json);
        assert_eq!(response_mode(&any, "GET", 200, None), BodyMode::Unmaskable("unmaskable_content_type"));
    }

    #[test]
    fn partial_content_and_charsets_that_hide_values_are_refused() {
        let m = mask();
        assert_eq!(response_mode(&m, "GET", 206, Some(b"application/json")), BodyMode::Unmaskable("unmaskable_partial_content"));
        assert_eq!(response_mode(&m, "GET", 206, Some(b"multipart/byteranges; boundary=x")), BodyMode::Unmaskable("unmaskable_partial_content"));
        assert_eq!(response_mode(&m, "HEAD", 206, Some(b"text/plain")), BodyMode::Pass);
        for ct in ["text/plain; charset=utf-16", "text/plain;charset=UTF-16LE", "text/event-stream; charset=\"utf-32\"", "text/plain; charset=ibm500"] {
            assert_eq!(response_mode(&m, "GET", 200, Some(ct.as_bytes())), BodyMode::Unmaskable("unmaskable_charset"), "{ct}");
        }
        for ct in ["text/plain; charset=utf-8", "text/plain; Charset=\"UTF-8\"", "text/plain; charset=iso-8859-1", "text/plain; charset=windows-1252", "text/plain; charset=us-ascii"] {
            assert_eq!(response_mode(&m, "GET", 200, Some(ct.as_bytes())), BodyMode::StreamText, "{ct}");
        }
        assert!(not_text(b"a\0@\0b\0", false));
        assert!(not_text(b"\xff\xfea", true) && not_text(b"\xfe\xffa", true));
        assert!(!not_text(b"\xff\xfea", false), "Latin-1 \u{ff}\u{fe} in the middle of a body");
        assert!(!not_text("caf\u{e9} \u{2014} a@b.co".as_bytes(), true));
    }

    #[test]
    fn request_bodies_read_as_json() {
        for ct in [None, Some(&b""[..]), Some(b"application/json"), Some(b"text/plain"), Some(b"application/vnd.x+json; charset=utf-8")] {
            assert!(read_as_json(ct, b"x=1"), "{ct:?}");
        }
        for ct in [&b"multipart/form-data; boundary=x"[..], b"application/x-www-form-urlencoded", b"audio/wav", b"Image/PNG", b"application/octet-stream"] {
            assert!(!read_as_json(Some(ct), b"--x\r\n"), "{ct:?}");
            assert!(read_as_json(Some(ct), b"\xef\xbb\xbf {\"max_tokens\": 1}"), "{ct:?}: a JSON body under another type");
        }
    }

    #[test]
    fn encodings() {
        assert_eq!(encoding(None), Encoding::Identity);
        assert_eq!(encoding(Some(b"identity")), Encoding::Identity);
        assert_eq!(encoding(Some(b" GZIP ")), Encoding::Gzip);
        assert_eq!(encoding(Some(b"br")), Encoding::Unsupported);
        assert_eq!(encoding(Some(b"gzip, br")), Encoding::Unsupported);
    }

    #[test]
    fn gunzip_roundtrip_corruption_and_bomb() {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&vec![b'a'; 5000]).unwrap();
        let gz = e.finish().unwrap();
        assert_eq!(gunzip(&gz, 10_000).unwrap().len(), 5000);
        assert!(gunzip(&gz, 4999).is_err());
        assert!(gunzip(&gz[..gz.len() / 2], 10_000).is_err());
        assert!(gunzip(b"not gzip", 10_000).is_err());
    }
}
