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

/// Whether a chunk of a text body has bytes that UTF-8 or ASCII text never
/// holds: NUL (every ASCII character of UTF-16/UTF-32 text comes with one)
/// or 0xFE/0xFF (UTF-16 byte-order marks, never in UTF-8). Such a body is
/// not masked as text: its values would pass unseen.
pub fn not_text(chunk: &[u8]) -> bool {
    memchr::memchr3(0, 0xfe, 0xff, chunk).is_some()
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
    } else {
        BodyMode::StreamText
    }
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

/// Masks the prompt of an OpenAI-style request body (`requests:
/// chat_messages`) and gives the body to send upstream (re-serialized).
///
/// Masked, as text unless noted: chat completions `messages[]` (`content`
/// as a string or parts' `text`/`refusal`, `refusal`, tool-call arguments
/// as JSON: [`Masker::mask_tool_arguments`]) and `prediction.content`;
/// legacy completions `prompt` (a string or an array of strings) and
/// `suffix`; Responses API `instructions`, `prompt.variables` and `input`
/// (a string, or items read like chat messages, plus tool `output`, custom
/// tool `input`, reasoning `summary[].text`, function-call `arguments`);
/// message `name`s and the end-user ids `user` and `safety_identifier`
/// (often an email); Anthropic Messages API `system` (a string or text
/// blocks), `metadata.user_id`, and in `messages[].content` blocks:
/// `text`, `tool_result` `content` (a string or text blocks) and `tool_use`
/// `input` (a JSON object, masked like tool-call arguments). Every other
/// member is sent as it came (`logprobs: true` included; Anthropic
/// `thinking` blocks too: they carry a signature over their text).
///
/// Errors: the body is not a JSON object.
pub fn mask_prompt(masker: &Masker, body: &[u8], counts: &mut Counts) -> Result<Vec<u8>, String> {
    let mut v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let Some(obj) = v.as_object_mut() else { return Err("not a JSON object".into()) };
    let text = |s: &mut String, counts: &mut Counts| *s = masker.mask_text(s, counts);
    for key in ["prompt", "instructions", "suffix", "user", "safety_identifier", "system"] {
        match obj.get_mut(key) {
            Some(Value::String(s)) => text(s, counts),
            Some(Value::Array(items)) if key == "prompt" => {
                for s in items.iter_mut().filter_map(|i| if let Value::String(s) = i { Some(s) } else { None }) {
                    text(s, counts);
                }
            }
            // Anthropic: system text blocks
            Some(Value::Array(blocks)) if key == "system" => {
                for b in blocks.iter_mut().filter_map(Value::as_object_mut) {
                    if let Some(Value::String(s)) = b.get_mut("text") {
                        text(s, counts);
                    }
                }
            }
            // Responses API reusable prompt: `{"id", "variables": {name: text or input_text}}`
            Some(Value::Object(p)) if key == "prompt" => {
                for v in p.get_mut("variables").and_then(Value::as_object_mut).into_iter().flat_map(|m| m.values_mut()) {
                    match v {
                        Value::String(s) => text(s, counts),
                        Value::Object(part) => {
                            if let Some(Value::String(s)) = part.get_mut("text") {
                                text(s, counts);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(p) = obj.get_mut("prediction").and_then(Value::as_object_mut) {
        prompt_item(masker, p, counts);
    }
    if let Some(Value::String(s)) = obj.get_mut("metadata").and_then(|m| m.get_mut("user_id")) {
        text(s, counts);
    }
    for key in ["messages", "input"] {
        match obj.get_mut(key) {
            Some(Value::String(s)) => text(s, counts),
            Some(Value::Array(items)) => {
                for item in items.iter_mut().filter_map(Value::as_object_mut) {
                    prompt_item(masker, item, counts);
                }
            }
            _ => {}
        }
    }
    serde_json::to_vec(&v).map_err(|e| e.to_string())
}

/// One content part or block: `text` and `refusal`; Anthropic `tool_result`
/// blocks' `content` (a string or blocks, read the same way) and
/// `tool_use` blocks' `input` (a JSON object: masked as JSON, numbers too,
/// see [`Masker::mask_tool_arguments`]).
fn prompt_part(masker: &Masker, part: &mut serde_json::Map<String, Value>, counts: &mut Counts) {
    for field in ["text", "refusal"] {
        if let Some(Value::String(s)) = part.get_mut(field) {
            *s = masker.mask_text(s, counts);
        }
    }
    match part.get("type").and_then(Value::as_str) {
        Some("tool_result") => match part.get_mut("content") {
            Some(Value::String(s)) => *s = masker.mask_text(s, counts),
            Some(Value::Array(blocks)) => {
                for b in blocks.iter_mut().filter_map(Value::as_object_mut) {
                    prompt_part(masker, b, counts);
                }
            }
            _ => {}
        },
        Some("tool_use") => {
            if let Some(input) = part.get_mut("input").filter(|v| v.is_object()) {
                let masked = masker.mask_tool_arguments(&input.to_string(), counts);
                // a JSON object masked as JSON stays one
                *input = serde_json::from_str(&masked).unwrap_or(Value::String(masked));
            }
        }
        _ => {}
    }
}

/// One chat message, Responses API input item, or `prediction`: text in
/// `content`, `refusal`, `output` (a string, or parts' `text` and
/// `refusal`), `input` (custom tool calls) and `summary[].text`; tool-call
/// arguments in `arguments`, `function_call.arguments` and
/// `tool_calls[].function.arguments`.
fn prompt_item(masker: &Masker, item: &mut serde_json::Map<String, Value>, counts: &mut Counts) {
    if let Some(Value::String(s)) = item.get_mut("name") {
        *s = masker.mask_text(s, counts);
    }
    for key in ["content", "refusal", "output", "input", "summary"] {
        match item.get_mut(key) {
            Some(Value::String(s)) => *s = masker.mask_text(s, counts),
            Some(Value::Array(parts)) => {
                for part in parts.iter_mut().filter_map(Value::as_object_mut) {
                    prompt_part(masker, part, counts);
                }
            }
            _ => {}
        }
    }
    if let Some(Value::String(s)) = item.get_mut("arguments") {
        *s = masker.mask_tool_arguments(s, counts);
    }
    let mut mask_call = |f: &mut Value| {
        if let Some(Value::String(s)) = f.get_mut("arguments") {
            *s = masker.mask_tool_arguments(s, counts);
        }
    };
    for call in item.get_mut("tool_calls").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(f) = call.get_mut("function") {
            mask_call(f);
        }
    }
    if let Some(f) = item.get_mut("function_call") {
        mask_call(f);
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
    fn modes_by_content_type_method_and_status() {
        let m = mask();
        assert_eq!(response_mode(&m, "GET", 200, Some(b"application/json; charset=utf-8")), BodyMode::Json);
        assert_eq!(response_mode(&m, "GET", 200, Some(b"application/problem+json")), BodyMode::Json);
        assert_eq!(response_mode(&m, "POST", 200, Some(b"text/event-stream")), BodyMode::Sse);
        assert_eq!(response_mode(&m, "GET", 200, Some(b"Text/Plain")), BodyMode::StreamText);
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
        assert!(not_text(b"a\0@\0b\0"));
        assert!(not_text(b"\xff\xfea\0"));
        assert!(!not_text("caf\u{e9} \u{2014} a@b.co".as_bytes()));
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
