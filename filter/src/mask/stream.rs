//! Incremental masking of streamed bodies: plain text, server-sent events
//! (WHATWG HTML §9.2) carrying OpenAI chat-completion chunks and Responses
//! API events, and JSON lines (Ollama's native API).
//!
//! **Text.** Bytes are held back until they can no longer be part of a value
//! that continues in a later chunk, then released masked. A release cut is
//! placed only right after an ASCII whitespace byte, at least
//! [`HOLD_BACK`] bytes before the end of what has arrived, outside every
//! candidate value, before any `-----BEGIN … PRIVATE KEY-----` block whose
//! footer has not arrived yet (for at most 32 KiB) and before base64 lines
//! that a key footer may still end (the last 32 KiB of lines above the line
//! in progress: a footer there ends a key tail that reaches back that far).
//! Built-in values never
//! contain whitespace except the spaced forms of cards, phones and IBANs (at
//! most 58 bytes, with 3-byte Unicode separators) and PEM blocks (held whole), and each built-in decides a
//! candidate from its whitespace-free token and at most three bytes around
//! it, so the concatenated output is exactly what masking the whole text at
//! once gives, however the stream is cut into chunks. A run without
//! whitespace is held until whitespace arrives, up to [`MAX_HOLD`] bytes;
//! past that it is cut anyway (outside any value found so far), and only
//! then may a value straddling the cut be missed. Custom patterns keep this
//! guarantee when their matches either hold no whitespace or are shorter
//! than [`HOLD_BACK`] minus a few bytes.
//!
//! **SSE.** Events are parsed from `data:` lines (LF, CRLF or CR line ends)
//! up to the blank line. A `data:` payload that is a JSON object with a
//! `choices` array is a chunk of a streamed completion, and these strings
//! are joined across events, per choice `index`:
//!
//! - `choices[i].delta.content`, `.refusal`, `.reasoning_content` and
//!   `.reasoning` (chat completions; the last two are the reasoning text of
//!   OpenAI-compatible servers such as vLLM, DeepSeek, OpenRouter) and
//!   `choices[i].text` (legacy `/v1/completions`), each on its own, are fed
//!   to a text stream masker as above;
//!   each event carries in that field the part of the text released so far
//!   (possibly empty, possibly text of earlier events);
//! - `choices[i].delta.tool_calls[j].function.arguments`, per tool call
//!   `index` `j`, and `choices[i].delta.function_call.arguments` (the
//!   deprecated `functions` API) (OpenAI streams the arguments, a JSON
//!   document, as string fragments): held whole and masked as one JSON document when the
//!   choice finishes (decoded string values, numbers and keys, the result
//!   still JSON; see `json::mask_arguments`); the fragments'
//!   events carry `""` meanwhile. Arguments that are not JSON are masked as
//!   text when they hold no `\`, else withheld whole (`"[ARGUMENTS]"`), as
//!   are arguments over [`MAX_ARGUMENTS`] bytes.
//!
//! So a value split over several events is still found, and for each joined
//! field the concatenation of what the client receives equals masking the
//! whole text (arguments: the whole document) once, however the events and
//! the bytes are cut. The rest of the chunk is masked as JSON
//! ([`super::Masker::mask_json`]; `logprobs` are withheld, or with
//! `logprobs: mask` masked token by token, not joined). When a choice's `finish_reason` is set, the held text of
//! each of its fields goes into that field of the event, or, when the event
//! lacks it, into a synthetic chunk event (the same `id`, `model`, … with
//! only that choice and field: `delta.content` (or `refusal`, …), `delta.tool_calls: [{index,
//! function: {arguments}}]`, `delta.function_call: {arguments}` or `text`) emitted just before it; `data: [DONE]`
//! and the end of the stream flush every choice the same way. (Reasoning
//! text held when the answer starts stays held, as reasoning may resume:
//! its last bytes reach the client after the answer has begun.) Every event
//! stays valid JSON that the OpenAI SDK parses, and SSE framing stays valid.
//! Other JSON payloads are masked as JSON, other payloads and other fields'
//! values as text; a payload that is not JSON of the shapes above (e.g. a
//! chunk whose `content` is an array of parts) first flushes everything
//! held, so text never changes order.
//!
//! **Responses API** (`POST /v1/responses`, `stream: true`). An event whose
//! `type` ends in `.delta` and whose `delta` is a string
//! (`response.output_text.delta`, `response.refusal.delta`, reasoning text
//! and summaries, `response.function_call_arguments.delta`, …; not
//! `response.audio.delta`, which is base64 audio) is joined per part — its
//! family, `item_id`, `output_index`, and `content_index` or
//! `summary_index` — the same way: text streamed through a text masker,
//! arguments (`*_arguments`) held whole and masked as JSON. Each delta event
//! carries the text released so far. The part's `.done` event, the
//! `response.output_item.done` of its item, `response.completed` /
//! `failed` / `incomplete`, `error`, and the end of the stream flush the
//! held rest as a copy of the part's last delta event (same `type`, ids,
//! indices, `sequence_number` and `event:` line) emitted just before. The
//! `.done`, item and `response.completed` events repeat whole values and
//! are masked as JSON, which gives the same text the deltas add up to.
//!
//! **Anthropic Messages API** (`POST /v1/messages`, `stream: true`). A
//! `content_block_delta` event's `delta.text` (`text_delta`),
//! `delta.thinking` (`thinking_delta`) and `delta.partial_json`
//! (`input_json_delta`: tool input, held whole and masked as JSON) are joined
//! per content block `index` the same way; the block's
//! `content_block_stop`, `message_delta`, `message_stop` and `error` flush
//! the held rest as a copy of the block's last delta event emitted just
//! before. `signature_delta` is left as it is (a thinking block whose text
//! was masked no longer matches its signature).
//!
//! **JSON lines** (`application/x-ndjson`). Lines end at LF (a CR before
//! it goes with it). Each line is a payload as an SSE event's data is,
//! masked as JSON; a line that is not strict JSON, or longer than
//! [`MAX_EVENT`], is withheld (`UNMASKABLE_EVENT`). Ollama's streamed
//! strings — `message.content` and `message.thinking` (`/api/chat`),
//! `response` and `thinking` (`/api/generate`) — are joined across lines
//! through a text stream masker each. Held text goes out in a line of its
//! own (`line_copy`: `model`, `created_at`, that string alone) when the
//! answer starts after the thinking, before an `{"error": …}` line, before
//! a `"done": true` line that lacks the string (a line that has it takes
//! the rest itself) and at the end of the stream; lines of other shapes
//! (arrays, `content` of another type) leave it held, so a value split
//! around them is still joined.
//!
//! **Trailers.** A body that ends with trailers has no end-of-stream body
//! callback, and Envoy gives a filter no body buffer at trailers time once
//! the body streamed: held bytes can then not be sent. The filter
//! (`wasm.rs`) resets such a stream rather than cut it silently; nothing is
//! held, and nothing lost, when the SSE stream's events are complete and its
//! choices finished (e.g. after `data: [DONE]`).

use super::detectors::{self, Cand};
use super::json::{self, StreamField};
use super::{Counts, Inner};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Least number of bytes a text stream holds back from the end of what has
/// arrived (bytes).
pub const HOLD_BACK: usize = 128;
/// Most bytes a text stream holds (96 KiB): when no whitespace arrives
/// before it, the held text is cut anyway. Three PEM windows
/// (`detectors::PEM_WINDOW`, 32 KiB): a private key's header block (its
/// header and the base64 lines of its window) and the base64 lines a
/// footer may still end (the window above the line in progress) are held
/// together, with room for that line, until the lines above the footer's
/// window can flow on.
pub const MAX_HOLD: usize = 3 * detectors::PEM_WINDOW;
/// Visible bytes of already-released text kept as left context.
const CONTEXT: usize = 128;
/// Most bytes of already-released text kept as left context (invisible
/// padding before the last [`CONTEXT`] visible bytes).
const MAX_CONTEXT: usize = 4096;
/// Most bytes of tool-call arguments held for masking as one JSON
/// document; larger arguments are withheld as a whole.
pub const MAX_ARGUMENTS: usize = 1024 * 1024;
/// Largest SSE event held while waiting for its blank line, or JSON line
/// while waiting for its line end (bytes); a larger one is released masked
/// as text.
pub const MAX_EVENT: usize = 4 * 1024 * 1024;

/// What a streamed body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Any text (`text/plain`, …).
    Text,
    /// `text/event-stream`, with OpenAI chat-completion chunks.
    Sse,
    /// JSON lines (`application/x-ndjson`: one JSON document per line),
    /// with Ollama `/api/chat` and `/api/generate` chunks.
    JsonLines,
}

/// An incremental masker for one streamed body (see the module notes).
/// [`StreamMasker::finish`] flushes everything and leaves the masker ready
/// for a new stream.
#[derive(Debug)]
pub struct StreamMasker {
    imp: Imp,
}

#[derive(Debug)]
enum Imp {
    Text(TextStream),
    Sse(Box<SseStream>),
}

impl StreamMasker {
    pub(crate) fn new(inner: Arc<Inner>, kind: StreamKind) -> StreamMasker {
        let imp = match kind {
            StreamKind::Text => Imp::Text(TextStream::new(inner)),
            StreamKind::Sse => Imp::Sse(Box::new(SseStream::new(inner, false))),
            StreamKind::JsonLines => Imp::Sse(Box::new(SseStream::new(inner, true))),
        };
        StreamMasker { imp }
    }

    /// Feeds the next network chunk; returns the bytes safe to send now
    /// (masked). Adds to `counts` for what it redacts.
    pub fn push(&mut self, chunk: &[u8], counts: &mut Counts) -> Vec<u8> {
        match &mut self.imp {
            Imp::Text(t) => t.push(chunk, counts),
            Imp::Sse(s) => s.push(chunk, counts),
        }
    }

    /// End of stream: returns everything still held, masked.
    pub fn finish(&mut self, counts: &mut Counts) -> Vec<u8> {
        match &mut self.imp {
            Imp::Text(t) => t.finish(counts),
            Imp::Sse(s) => s.finish(counts),
        }
    }

    /// Bytes received but not yet released.
    pub fn held(&self) -> usize {
        match &self.imp {
            Imp::Text(t) => t.held(),
            Imp::Sse(s) => s.held(),
        }
    }
}

/// The text stream masker.
#[derive(Debug)]
pub(crate) struct TextStream {
    inner: Arc<Inner>,
    buf: Vec<u8>,
    /// First unreleased byte of `buf` (bytes before it are left context).
    start: usize,
    /// Bytes of `buf` below this index have been looked at for whitespace.
    ws_upto: usize,
    /// Largest `p <= ws_upto` with `buf[p - 1]` whitespace (0: none).
    last_ws: usize,
    /// No new cut is tried before `buf` is this long.
    retry_at: usize,
    /// Each push is a record of its own ([`TextStream::set_records`]).
    records: bool,
    /// Values found ending at a record's end (in `buf`), not yet released.
    own: Vec<Cand>,
    /// Released bytes were dropped from `buf`: its first byte is no longer
    /// the text's first (nor a line start).
    drained: bool,
}

/// The ASCII whitespace a text stream cuts after (space, tab, LF, CR, form
/// feed); the form-body and escaped-query token finders end tokens at the
/// same bytes, so a cut never splits what they read as one token.
pub(super) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')
}

impl TextStream {
    fn new(inner: Arc<Inner>) -> TextStream {
        TextStream { inner, buf: Vec::new(), start: 0, ws_upto: 0, last_ws: 0, retry_at: 0, records: false, own: Vec::new(), drained: false }
    }

    /// The next scan waits until a quarter more than what is held has
    /// arrived (at least 64 bytes): a text that cannot be released yet is
    /// not scanned again on every chunk.
    fn retry_later(&mut self) {
        let (n, held) = (self.buf.len(), self.held());
        self.retry_at = n + held.max(256) / 4;
    }

    fn held(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    /// Marks each push from now on as one record: a stream of events
    /// holding nothing but `response` reads as Workers AI, whose
    /// fragments are LLM deltas, but may be whole records, so the joined
    /// text is also scanned as if it ended with each push, and a value
    /// found ending there is masked even when the next record's first
    /// word glues onto it in the joined text (`…1111 1111` then `2 items`).
    pub(crate) fn set_records(&mut self) {
        self.records = true;
    }

    /// Adds to `own` the values that end at the end of `buf` (within its
    /// last `2 * HOLD_BACK` bytes, from a word start: values glued to a
    /// following word are the short digit shapes; longer ones, as JWTs
    /// and emails, take the glued word in).
    fn record_end(&mut self) {
        let end = self.buf.len();
        let mut lo = end.saturating_sub(2 * HOLD_BACK).max(self.start.saturating_sub(CONTEXT));
        if lo > 0 {
            // (from after a whitespace, so that no value is cut at its left)
            match self.buf.get(lo..end).and_then(|t| t.iter().position(|b| is_ws(*b))) {
                Some(p) => lo += p + 1,
                None => return,
            }
        }
        let Some(tail) = self.buf.get(lo..end) else { return };
        let mut found = Vec::new();
        self.inner.candidates_bytes(tail, 0, true, &mut found);
        self.own.extend(found.into_iter().filter(|c| c.end == tail.len()).map(|c| Cand { start: c.start + lo, end: c.end + lo, det: c.det }));
    }

    pub(crate) fn push(&mut self, chunk: &[u8], counts: &mut Counts) -> Vec<u8> {
        self.buf.extend_from_slice(chunk);
        if self.records && !chunk.is_empty() {
            self.record_end();
        }
        let n = self.buf.len();
        // (a retry waits, but never past the hold's bound)
        if (n < self.retry_at && n - self.start <= MAX_HOLD) || n < self.start + HOLD_BACK + 1 {
            return Vec::new();
        }
        let forced = n - self.start > MAX_HOLD;
        let limit = if forced { n - HOLD_BACK } else { visible_limit(&self.buf, self.start, HOLD_BACK) };
        if let Some(scan) = self.buf.get(self.ws_upto..limit) {
            if let Some(p) = scan.iter().rposition(|b| is_ws(*b)) {
                self.last_ws = self.ws_upto + p + 1;
            }
        }
        self.ws_upto = self.ws_upto.max(limit);
        if self.last_ws <= self.start && !forced {
            // no word ends before the window (a long token, or text padded
            // with invisible characters): wait for more, else each small
            // push would walk the whole hold again
            self.retry_later();
            return Vec::new();
        }
        let tail = self.inner.holds_pem_tails().then(|| pem_tail_hold(&self.buf, self.start)).flatten();
        if tail.is_some_and(|t| t <= self.start) && !forced {
            // all that is held may be a key's body: nothing to release yet
            // (and no need to scan it)
            self.retry_later();
            return Vec::new();
        }
        let mut cands = Vec::new();
        // PEM headers before `start` were decided when released
        let open = self.inner.candidates_bytes(&self.buf, self.start, false, &mut cands);
        cands.extend_from_slice(&self.own);
        let open = [open, tail].into_iter().flatten().min();
        let cut = choose_cut(&self.buf, self.start, limit, &mut cands, open, forced);
        // (not inside the indentation the text starts with: past a release
        // there, the buffer's start would no longer read as the start of
        // the line, which decides whether a short base64 line above a key
        // footer is part of the key)
        let cut = cut.filter(|&c| forced || self.drained || detectors::blank_start(&self.buf, c, 0) > 0);
        let Some(cut) = cut else {
            self.retry_later();
            return Vec::new();
        };
        let mut out = Vec::with_capacity(cut - self.start);
        self.inner.render_bytes(&self.buf, self.start, cut, &mut cands, &mut out, counts);
        self.start = cut;
        // (a large hold that stays, as a key tail's window, is not
        // scanned again before it has grown by a quarter: else each push
        // would scan it all to release its own length)
        if self.held() > 8 * HOLD_BACK {
            self.retry_later();
        }
        // (a forced cut may split one: its rest is masked with the rest)
        self.own.retain_mut(|c| {
            c.start = c.start.max(cut);
            c.end > cut
        });
        self.compact();
        out
    }

    /// Drops released bytes, keeping [`CONTEXT`] visible bytes (from a
    /// character boundary) as left context: invisible characters and
    /// percent-escapes count as in the hold-back window ([`visible_back`]),
    /// so padding before a value is kept whole, up to [`MAX_CONTEXT`]
    /// bytes, and no escape is cut (a stray `0` of a cut `\u2060` would
    /// read as a digit group before a phone).
    fn compact(&mut self) {
        let mut keep_from = visible_back(&self.buf, self.start.saturating_sub(MAX_CONTEXT), self.start, CONTEXT);
        while keep_from > 0 && self.buf.get(keep_from).is_some_and(|b| b & 0xC0 == 0x80) {
            keep_from -= 1;
        }
        if keep_from > 0 {
            self.drained = true;
            self.buf.drain(..keep_from);
            self.start -= keep_from;
            self.ws_upto = self.ws_upto.saturating_sub(keep_from);
            self.last_ws = self.last_ws.saturating_sub(keep_from);
            self.retry_at = self.retry_at.saturating_sub(keep_from);
            for c in &mut self.own {
                c.start = c.start.saturating_sub(keep_from);
                c.end = c.end.saturating_sub(keep_from);
            }
        }
    }

    pub(crate) fn finish(&mut self, counts: &mut Counts) -> Vec<u8> {
        let n = self.buf.len();
        let mut out = Vec::with_capacity(n.saturating_sub(self.start));
        if n > self.start {
            let mut cands = Vec::new();
            self.inner.candidates_bytes(&self.buf, self.start, true, &mut cands);
            cands.extend_from_slice(&self.own);
            self.inner.render_bytes(&self.buf, self.start, n, &mut cands, &mut out, counts);
        }
        *self = TextStream::new(Arc::clone(&self.inner));
        out
    }
}

/// The position `back` visible bytes before the end of `buf` (not before
/// `start`): invisible characters (`detectors::invisible_at`) do not
/// count, so padding a spaced value with them (`4111 ⁠⁠…⁠1111 …`) cannot
/// stretch it past the hold-back window. A percent-escape, encoded once,
/// twice or three times (`%41`, `%2541`, `%252541`), counts as the one
/// byte it encodes, and as nothing when that byte is part of a non-ASCII
/// character (`%E2%80%8B`, `%25E2%2580%258B`): whole-text masking decodes
/// as many layers ([`detectors::percent_unit_before`]).
fn visible_limit(buf: &[u8], start: usize, back: usize) -> usize {
    visible_back(buf, start, buf.len(), back)
}

/// The position `back` visible bytes before `end` in `buf` (as
/// [`visible_limit`] counts them), not before `lo`: an invisible character
/// or escape that would cross `lo` is not taken (the result is never
/// inside one).
fn visible_back(buf: &[u8], lo: usize, end: usize, back: usize) -> usize {
    let from = end.saturating_sub(back).max(lo);
    if buf.get(from..end).is_some_and(|t| t.is_ascii() && memchr::memchr2(b'\\', b'%', t).is_none()) {
        return from;
    }
    let (mut p, mut seen) = (end, 0);
    while p > lo && seen < back {
        let (l, visible) = match detectors::invisible_before(buf, p).max(escaped_json_invisible_before(buf, p)) {
            0 => match detectors::percent_unit_before(buf, p) {
                Some((l, b)) => (l, b < 0x80),
                None => (1, true),
            },
            l => (l, false),
        };
        if p - lo < l {
            break;
        }
        p -= l;
        seen += usize::from(visible);
    }
    p
}

/// The length of an invisible character written as a JSON escape with
/// some of its six characters percent-escaped (`%5Cu200b`, `%255Cu200b`,
/// `%5C%75200b`, each escape encoded up to three times: decoded, it is the
/// `\u200b` that whole-text masking removes) that ends right before `p`;
/// 0 if none (a JSON escape written without percent-escapes is
/// `detectors::invisible_before`'s).
fn escaped_json_invisible_before(buf: &[u8], p: usize) -> usize {
    // (the last character is a hex digit, raw or escaped: else nothing to read)
    if !buf.get(p.wrapping_sub(1)).is_some_and(u8::is_ascii_hexdigit) {
        return 0;
    }
    let mut esc = [0u8; 6];
    let (mut q, mut escaped) = (p, false);
    for d in esc.iter_mut().rev() {
        match detectors::percent_unit_before(buf, q) {
            Some((l, b)) => {
                *d = b;
                q -= l;
                escaped = true;
            }
            None => {
                let Some(b) = q.checked_sub(1).and_then(|k| buf.get(k)) else { return 0 };
                *d = *b;
                q -= 1;
            }
        }
    }
    if escaped && detectors::invisible_at(&esc, 0) == esc.len() {
        p - q
    } else {
        0
    }
}

/// Where held text must stay held from because a private key's footer may
/// still come (whole text masks a key tail cut from its header with the
/// footer that ends it, so streamed text must not release it before it
/// knows): while the line in progress is empty, base64 or the beginning of
/// a `-----END ` footer, the base64 lines above it
/// ([`detectors::pem_tail_start`]); otherwise its trailing base64 token
/// when that looks like part of a key, as it would be the first line of a
/// tail whose body lines and footer come next. `start` when they reach
/// back to it: nothing is released then until a line of another kind comes
/// or the lines span more than `PEM_WINDOW` bytes.
fn pem_tail_hold(buf: &[u8], start: usize) -> Option<usize> {
    let ls = buf.get(start..).and_then(|r| memchr::memrchr(b'\n', r)).map_or(start, |k| start + k + 1);
    // the line's text without its indentation and trailing blanks (and
    // invisible characters there)
    let mut from = ls;
    loop {
        match buf.get(from) {
            Some(b' ' | b'\t') => from += 1,
            Some(_) => match detectors::invisible_at(buf, from) {
                0 => break,
                l => from += l,
            },
            None => break,
        }
    }
    // (an invisible character cut by the chunk's end counts as one)
    let mut end = buf.len() - detectors::partial_invisible(buf, from);
    if end > from && buf.get(end - 1) == Some(&b'\r') {
        end -= 1;
    }
    let end = detectors::blank_start(buf, end, from).max(from);
    let content = buf.get(from..end).unwrap_or(&[]);
    let tok = detectors::b64_run_start(buf, end, from);
    let footer = b"-----END ";
    if tok > from && !footer.starts_with(content) && !content.starts_with(footer) {
        return detectors::keyish(buf.get(tok..end)?).then_some(tok);
    }
    // Lines before `start` are out: looking further back would only redo
    // work on every chunk of a long base64 run. Of a run longer than the
    // window, the last `PEM_WINDOW` bytes stay held (a footer on this line
    // would end a tail that reaches back that far, as in whole text); the
    // lines above them flow on.
    let window = ls.saturating_sub(detectors::PEM_WINDOW);
    detectors::pem_tail_start(buf, ls, start.max(window))
}

/// The release cut: the largest `p` in `start+1..=limit` right after a
/// whitespace byte, inside no candidate and not past an open PEM block.
/// `forced`: when there is none, the largest character boundary inside no
/// candidate (or `limit` itself).
fn choose_cut(buf: &[u8], start: usize, limit: usize, cands: &mut [Cand], open: Option<usize>, forced: bool) -> Option<usize> {
    cands.sort_unstable_by_key(|c| c.start);
    // running maximum of candidate ends, by start
    let mut reach: Vec<(usize, usize)> = Vec::with_capacity(cands.len());
    let mut mx = 0usize;
    for c in cands.iter() {
        mx = mx.max(c.end);
        reach.push((c.start, mx));
    }
    let inside = |p: usize| {
        let k = reach.partition_point(|(s, _)| *s < p);
        k > 0 && reach.get(k - 1).is_some_and(|(_, e)| *e > p)
    };
    let top = match open {
        Some(o) => limit.min(o),
        None => limit,
    };
    let mut p = top;
    while p > start {
        if buf.get(p - 1).is_some_and(|b| is_ws(*b)) && !inside(p) {
            return Some(p);
        }
        p -= 1;
    }
    if !forced {
        return None;
    }
    let boundary = |p: usize| buf.get(p).is_none_or(|b| b & 0xC0 != 0x80);
    let mut p = limit;
    while p > start {
        if boundary(p) && !inside(p) {
            return Some(p);
        }
        p -= 1;
    }
    let mut p = limit;
    while p > start && !boundary(p) {
        p -= 1;
    }
    (p > start).then_some(p)
}

// ---------------------------------------------------------------- SSE

/// Appends the line end `eol` to `out`. When `out` ends with a lone CR
/// (the previous line's end) and `eol` starts with LF, the two would read
/// as one CRLF line end (WHATWG HTML §9.2.5), and an event written with
/// mixed line ends would not end where it did in the input: the LF is
/// written as CRLF then.
fn push_eol(out: &mut Vec<u8>, eol: &[u8]) {
    if eol.first() == Some(&b'\n') && out.last() == Some(&b'\r') {
        out.push(b'\r');
    }
    out.extend_from_slice(eol);
}

/// The parts of an SSE JSON payload the SSE masker reads (other members
/// are skipped by serde without being kept): a chat-completion chunk
/// (`choices`) or a Responses API event (`type`, `delta`, and the indices
/// that name the streamed part).
#[derive(serde::Deserialize)]
struct ChunkLite {
    #[serde(default)]
    choices: Option<Vec<ChoiceLite>>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    delta: Option<Value>,
    #[serde(default)]
    item_id: Option<String>,
    /// Vercel AI SDK UI message streams and Mistral conversations: the
    /// text part's or message's id (read when `item_id` is absent).
    #[serde(default)]
    id: Option<Value>,
    /// Vercel AI SDK UI message streams: a tool call's id and a fragment of
    /// its input (`tool-input-delta`).
    #[serde(default, rename = "toolCallId")]
    tool_call_id: Option<Value>,
    #[serde(default, rename = "inputTextDelta")]
    input_text_delta: Option<Value>,
    #[serde(default)]
    output_index: Option<u64>,
    #[serde(default)]
    content_index: Option<u64>,
    #[serde(default)]
    summary_index: Option<u64>,
    /// Anthropic Messages API: the content block's index.
    #[serde(default)]
    index: Option<u64>,
    /// Gemini API (`GenerateContentResponse`): read as [`CandidateLite`]s
    /// when it is an array of objects of that shape.
    #[serde(default)]
    candidates: Option<Value>,
    /// Text Generation Inference `/generate_stream`: the token generated
    /// (`text` joined across events), and the whole text in the last event.
    #[serde(default)]
    token: Option<Value>,
    #[serde(default)]
    generated_text: Option<Value>,
    /// llama.cpp `/completion` (`content`, ending at `stop: true`) and
    /// Cloudflare Workers AI (`response`): the answer as a top-level string.
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    response: Option<Value>,
    #[serde(default)]
    stop: Option<Value>,
    /// llama.cpp: the server slot that generates the answer (`id_slot`,
    /// `slot_id` before 2024) and the tokens of the event's text.
    #[serde(default)]
    id_slot: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    slot_id: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    tokens: Option<serde::de::IgnoredAny>,
    /// An error event without a `type` (OpenAI-compatible servers, Text
    /// Generation Inference), on which clients stop reading.
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

/// A candidate of a Gemini API stream chunk: its `index`, its content's
/// `parts`, and `finishReason` (present and not `null`: finished).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CandidateLite {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    content: Option<ContentLite>,
    #[serde(default)]
    finish_reason: Option<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct ContentLite {
    #[serde(default)]
    parts: Option<Vec<GeminiPartLite>>,
}

/// A part of a Gemini candidate's content: `text` (the answer, or the
/// model's thinking with `"thought": true`) is joined across chunks; other
/// parts (`functionCall`, `inlineData`) come whole and are masked in place.
#[derive(serde::Deserialize)]
struct GeminiPartLite {
    #[serde(default)]
    text: MaybeText,
    #[serde(default)]
    thought: Option<Value>,
}

/// A streamed part of a Responses API answer: the event family
/// (`response.output_text`), `item_id`, `output_index`, and
/// `content_index` or `summary_index`.
type PartKey = (String, String, u64, u64, u64);

impl ChunkLite {
    fn part(&self, family: &str) -> PartKey {
        (
            family.to_string(),
            self.item_id.clone().or_else(|| self.id.as_ref().and_then(Value::as_str).map(String::from)).unwrap_or_default(),
            self.output_index.unwrap_or(0),
            self.content_index.unwrap_or(0),
            self.summary_index.unwrap_or(0),
        )
    }
}

/// The family prefix of the parts that join an Anthropic content block's
/// deltas (`content_block.text`, `content_block.partial_json`, …).
const BLOCK_FAMILY: &str = "content_block.";

/// The most parts and choice slots a stream holds text for at once: at
/// this many, an event first flushes them all (each holds up to a
/// hold-back window, and a copy of its last event).
const MAX_OPEN: usize = 128;

/// The most a stream keeps for [`StreamField::Snapshot`]s (1 MiB): past
/// it, a choice's snapshots are no longer recognized and are masked on
/// their own.
const MAX_SNAPSHOT: usize = 1 << 20;

/// A choice's answer so far, as received (`raw`) and as released, for the
/// `message.content` snapshots next to its deltas ([`StreamField::Snapshot`]).
#[derive(Debug, Default)]
struct Snapshot {
    raw: String,
    released: String,
    /// Past [`MAX_SNAPSHOT`]: no longer kept.
    over: bool,
    /// The choice's `message.content` copies its chunks' fragments
    /// (text-generation-webui): a synthetic chunk carries one too.
    copies: bool,
}

/// The family of a Responses API event whose `delta` string is joined
/// across events (`response.output_text.delta` → `response.output_text`;
/// also refusals, reasoning text and summaries, function-call and custom
/// tool inputs, transcripts). `response.audio.delta` (base64 audio) is not.
/// Also the Vercel AI SDK UI message stream's `text-delta` and
/// `reasoning-delta` (→ `text`, `reasoning`; ended by `text-end`,
/// `reasoning-end` or `finish`).
fn joined_family(kind: &str) -> Option<&str> {
    match kind {
        // Vercel AI SDK UI message stream (`text-delta`, `reasoning-delta`)
        "text-delta" | "reasoning-delta" => kind.strip_suffix("-delta"),
        _ => kind.strip_suffix(".delta").filter(|f| f.starts_with("response.") && *f != "response.audio"),
    }
}

/// The family of the parts that join a Cohere v2 stream's `name` (one of
/// [`json::COHERE_DELTA`]).
fn cohere_family(name: &str) -> String {
    format!("cohere.{name}")
}

/// The held text of one Responses API part (arguments held whole and
/// masked as JSON, like chat tool-call arguments; other text streamed), and
/// its last delta event (the model of the synthetic event that carries the
/// rest).
#[derive(Debug)]
struct Part {
    text: Joiner,
    /// The joined string's place in the event: [`StreamField::Delta`] or
    /// [`StreamField::Block`].
    field: StreamField,
    template: Vec<u8>,
    /// The `event:` line of that event, if it had one.
    event_line: Option<Vec<u8>>,
}

impl Part {
    /// An empty part whose string sits at `field`: held whole and masked as
    /// JSON (`json`: arguments, tool input) or streamed as text.
    fn new(inner: &Arc<Inner>, json: bool, field: StreamField) -> Part {
        Part { text: Joiner::of(inner, json), field, template: Vec::new(), event_line: None }
    }
}

#[derive(serde::Deserialize)]
struct ChoiceLite {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    delta: Option<DeltaLite>,
    /// Legacy completions (`/v1/completions`): the text fragment.
    #[serde(default)]
    text: Option<String>,
    /// Perplexity (`stream_mode: "full"`): the whole message so far.
    #[serde(default)]
    message: Option<Value>,
    /// Present and not `null`: the choice is finished.
    #[serde(default)]
    finish_reason: Option<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct DeltaLite {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    /// Copies of the reasoning text ([`json::REASONING_COPIES`]).
    #[serde(default)]
    reasoning_details: Option<Value>,
    #[serde(default)]
    thinking_blocks: Option<Value>,
    #[serde(default)]
    provider_specific_fields: Option<Value>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallLite>>,
    #[serde(default)]
    function_call: Option<FunctionLite>,
}

#[derive(serde::Deserialize)]
struct ToolCallLite {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    function: Option<FunctionLite>,
}

/// `function` of a tool call, or `function_call`: read leniently (any JSON
/// value), so that an odd shape (`"function_call": "auto"`, arguments as an
/// object) does not make the whole chunk unreadable; only a string
/// `arguments` is joined, anything else is masked as JSON in place.
#[derive(serde::Deserialize)]
#[serde(transparent)]
struct FunctionLite(Value);

impl FunctionLite {
    fn arguments(self) -> Option<String> {
        match self.0 {
            Value::Object(mut m) => match m.remove("arguments") {
                Some(Value::String(s)) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A text joined across events, within one choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    /// `delta.<name>`, `name` one of [`json::DELTA_TEXT`].
    Content(&'static str),
    /// `text` (legacy completions).
    Text,
    /// `delta.function_call.arguments` (deprecated `functions` API).
    Call,
    /// `delta.tool_calls[]` with this `index`: `function.arguments`.
    Args(u64),
    /// Gemini: the `text` of the candidate's content parts, the thinking
    /// (`"thought": true`) or the answer.
    Part { thought: bool },
}

/// The held text of one [`Slot`].
#[derive(Debug)]
enum Joiner {
    /// Content and legacy text: a text stream masker.
    Text(TextStream),
    /// Tool-call arguments (a JSON document in fragments): held whole and
    /// masked when the choice finishes (`json::mask_arguments`: as JSON,
    /// or as text when not JSON, or withheld).
    Json { inner: Arc<Inner>, buf: Vec<u8> },
    /// Arguments over [`MAX_ARGUMENTS`] bytes: the rest is dropped and the
    /// whole value is withheld (`"[ARGUMENTS]"`).
    Withheld,
}

impl Joiner {
    fn new(inner: &Arc<Inner>, slot: Slot) -> Joiner {
        Joiner::of(inner, matches!(slot, Slot::Args(_) | Slot::Call))
    }

    /// An empty joiner: held whole and masked as JSON (`json`), or a text
    /// stream masker.
    fn of(inner: &Arc<Inner>, json: bool) -> Joiner {
        if json {
            Joiner::Json { inner: Arc::clone(inner), buf: Vec::new() }
        } else {
            Joiner::Text(TextStream::new(Arc::clone(inner)))
        }
    }

    fn held(&self) -> usize {
        match self {
            Joiner::Text(t) => t.held(),
            Joiner::Json { buf, .. } => buf.len(),
            Joiner::Withheld => 0,
        }
    }

    fn push(&mut self, frag: &[u8], counts: &mut Counts) -> Vec<u8> {
        match self {
            Joiner::Text(t) => t.push(frag, counts),
            Joiner::Json { buf, .. } => {
                buf.extend_from_slice(frag);
                if buf.len() > MAX_ARGUMENTS {
                    // too large to hold: withheld, never streamed unmasked
                    *self = Joiner::Withheld;
                }
                Vec::new()
            }
            Joiner::Withheld => Vec::new(),
        }
    }

    fn finish(&mut self, counts: &mut Counts) -> Vec<u8> {
        match self {
            Joiner::Text(t) => t.finish(counts),
            Joiner::Json { inner, buf } => {
                let raw = std::mem::take(buf);
                json::mask_arguments(inner, &raw, 0, counts).unwrap_or(raw)
            }
            Joiner::Withheld => {
                *counts.entry("arguments".to_string()).or_insert(0) += 1;
                json::WITHHELD_ARGUMENTS.as_bytes().to_vec()
            }
        }
    }
}

#[derive(Debug)]
struct Line {
    text: Vec<u8>,
    eol: Vec<u8>,
}

/// The members of a Cloudflare Workers AI text-generation event (`/ai/run`
/// with `stream: true`): `response`, and on some events `p` (padding),
/// `usage`, `tool_calls` or `finish_reason`; nothing else.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkersAiLite {
    #[serde(default, rename = "response")]
    _response: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "p")]
    _p: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "usage")]
    _usage: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "tool_calls")]
    _tool_calls: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "finish_reason")]
    _finish_reason: Option<serde::de::IgnoredAny>,
}

/// Whether `ev` (with a top-level `content`) is shaped as a llama.cpp
/// `/completion` stream event: a boolean `stop`, and its slot (`id_slot`,
/// `slot_id`), `index` or `tokens`.
fn llama_cpp_event(ev: &ChunkLite) -> bool {
    ev.stop.as_ref().is_some_and(Value::is_boolean) && (ev.id_slot.is_some() || ev.slot_id.is_some() || ev.index.is_some() || ev.tokens.is_some())
}

/// Whether the event `payload` (a JSON object with a top-level `response`)
/// is shaped as a Workers AI event ([`WorkersAiLite`]).
fn workers_ai_event(payload: &[u8]) -> bool {
    serde_json::from_slice::<WorkersAiLite>(payload).is_ok()
}

/// The parts of a JSON line the JSON-lines masker reads: an Ollama
/// `/api/chat` chunk (`message.content`, `message.thinking`) or
/// `/api/generate` chunk (`response`, `thinking`), and `done` (the last
/// chunk of an answer).
#[derive(serde::Deserialize)]
struct LineLite {
    #[serde(default)]
    message: Option<MessageLite>,
    #[serde(default)]
    response: MaybeText,
    #[serde(default)]
    thinking: MaybeText,
    #[serde(default)]
    done: Option<Value>,
    #[serde(default)]
    model: Option<serde::de::IgnoredAny>,
    /// An error line (`{"error": "…"}`), on which clients stop reading.
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct MessageLite {
    #[serde(default)]
    content: MaybeText,
    #[serde(default)]
    thinking: MaybeText,
}

/// A member that is joined when it is a string; any other JSON value (a
/// number, `null`, an array of parts) is read past and masked in place, so
/// that an odd type does not make the whole line unreadable (its joined
/// strings would then be masked alone).
#[derive(Default)]
struct MaybeText(Option<String>);

impl<'de> serde::Deserialize<'de> for MaybeText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MaybeText, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MaybeText;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<MaybeText, E> {
                Ok(MaybeText(Some(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<MaybeText, E> {
                Ok(MaybeText(Some(v)))
            }
            fn visit_bool<E>(self, _: bool) -> Result<MaybeText, E> {
                Ok(MaybeText(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<MaybeText, E> {
                Ok(MaybeText(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<MaybeText, E> {
                Ok(MaybeText(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<MaybeText, E> {
                Ok(MaybeText(None))
            }
            fn visit_unit<E>(self) -> Result<MaybeText, E> {
                Ok(MaybeText(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<MaybeText, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(MaybeText(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<MaybeText, A::Error> {
                while a.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
                Ok(MaybeText(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// The stream masker for SSE and, with `lines`, for JSON lines (each line
/// a payload, as an SSE event's data is).
#[derive(Debug)]
pub(crate) struct SseStream {
    inner: Arc<Inner>,
    /// JSON lines (`application/x-ndjson`) rather than SSE events.
    lines_mode: bool,
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a line end.
    searched: usize,
    lines: Vec<Line>,
    lines_bytes: usize,
    /// Held text, by choice index and slot.
    choices: BTreeMap<(u64, Slot), Joiner>,
    /// Held text of Responses API parts.
    parts: BTreeMap<PartKey, Part>,
    /// The last chat chunk's payload (the model of synthetic chunks).
    template: Vec<u8>,
    /// The answer (`delta.content`) released so far, by choice index, for
    /// the choices whose chunks carry a `message.content` snapshot: what
    /// the snapshot becomes ([`StreamField::Snapshot`]).
    snapshots: BTreeMap<u64, Snapshot>,
    /// The bytes `snapshots` hold, at most [`MAX_SNAPSHOT`].
    snapshot_bytes: usize,
    /// The reasoning copies of each choice's last chunk that had some
    /// (`kind` in [`json::REASONING_COPIES`], the item): a synthetic chunk
    /// carrying reasoning repeats them with its text.
    mirrors: BTreeMap<u64, Vec<(usize, Value)>>,
    /// Line end used for synthetic events.
    eol: Vec<u8>,
    /// Whether the last bytes emitted left an event open (no blank line).
    open_event: bool,
    /// Whether the stream's first bytes were checked for a byte order mark.
    bom_checked: bool,
    /// JSON lines: dropping the rest of a withheld over-long line.
    skipping: bool,
}

/// UTF-8 byte order mark. A stream may start with one, which clients
/// ignore (WHATWG HTML, "Parsing an event stream"): it is passed on and the
/// events after it are parsed as usual.
const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseStream {
    fn new(inner: Arc<Inner>, lines_mode: bool) -> SseStream {
        SseStream {
            inner,
            lines_mode,
            buf: Vec::new(),
            searched: 0,
            lines: Vec::new(),
            lines_bytes: 0,
            choices: BTreeMap::new(),
            parts: BTreeMap::new(),
            template: Vec::new(),
            snapshots: BTreeMap::new(),
            snapshot_bytes: 0,
            mirrors: BTreeMap::new(),
            eol: Vec::new(),
            open_event: false,
            bom_checked: false,
            skipping: false,
        }
    }

    fn held(&self) -> usize {
        self.buf.len()
            + self.lines_bytes
            + self.choices.values().map(Joiner::held).sum::<usize>()
            + self.parts.values().map(|p| p.text.held()).sum::<usize>()
    }

    fn push(&mut self, chunk: &[u8], counts: &mut Counts) -> Vec<u8> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        if !self.bom_checked {
            if self.buf.len() < BOM.len() && BOM.starts_with(&self.buf) {
                // maybe a mark cut across chunks: wait for its other bytes
                return out;
            }
            self.bom_checked = true;
            if self.buf.starts_with(BOM) {
                out.extend_from_slice(BOM);
                self.buf.drain(..BOM.len());
            }
        }
        self.split_lines(false, &mut out, counts);
        // (a CR at the end may be the start of the line's CRLF)
        if self.lines_mode && self.buf.len() - usize::from(self.buf.ends_with(b"\r")) > MAX_EVENT {
            // a JSON line too long to hold: withheld whole, the rest of it
            // dropped as it arrives
            out.extend_from_slice(&unmaskable_event(counts));
            out.push(b'\n');
            self.buf.clear();
            self.searched = 0;
            self.skipping = true;
            self.open_event = false;
        } else if !self.lines_mode && self.buf.len() + self.lines_bytes > MAX_EVENT {
            // not SSE as we know it: release what we hold as text
            let mut raw = Vec::new();
            for l in self.lines.drain(..) {
                raw.extend_from_slice(&l.text);
                raw.extend_from_slice(&l.eol);
            }
            raw.append(&mut self.buf);
            self.lines_bytes = 0;
            self.searched = 0;
            let mut cands = Vec::new();
            self.inner.candidates_bytes(&raw, 0, true, &mut cands);
            self.inner.render_bytes(&raw, 0, raw.len(), &mut cands, &mut out, counts);
            self.open_event = true;
        }
        out
    }

    fn split_lines(&mut self, fin: bool, out: &mut Vec<u8>, counts: &mut Counts) {
        let mut consumed = 0usize;
        if self.skipping {
            // the rest of a withheld over-long line, up to its line end
            match memchr::memchr(b'\n', &self.buf) {
                Some(i) => {
                    self.buf.drain(..=i);
                    self.skipping = false;
                }
                None => self.buf.clear(),
            }
            self.searched = 0;
        }
        loop {
            let rest = self.buf.get(consumed..).unwrap_or(&[]);
            let from = self.searched.saturating_sub(consumed);
            // JSON lines end at LF (a CR before it goes with it; a lone CR
            // is JSON whitespace), SSE lines at LF, CRLF or CR
            let found = match rest.get(from..) {
                Some(r) if self.lines_mode => memchr::memchr(b'\n', r),
                Some(r) => r.iter().position(|b| *b == b'\n' || *b == b'\r'),
                None => None,
            };
            let Some(rel) = found else {
                self.searched = self.buf.len();
                break;
            };
            let i = from + rel;
            if self.lines_mode {
                let s = if i > 0 && rest.get(i - 1) == Some(&b'\r') { i - 1 } else { i };
                let text = rest.get(..s).unwrap_or(&[]).to_vec();
                let eol = rest.get(s..=i).unwrap_or(&[]).to_vec();
                consumed += i + 1;
                self.searched = consumed;
                // (not from a withheld over-long line, whose end is not
                // seen when it arrives in pieces)
                if self.eol.is_empty() && text.len() <= MAX_EVENT {
                    self.eol.clone_from(&eol);
                }
                self.json_line(&text, &eol, out, counts);
                continue;
            }
            let eol_len = match rest.get(i) {
                Some(b'\r') => match rest.get(i + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    None if fin => 1,
                    None => {
                        self.searched = consumed + i;
                        break;
                    }
                },
                _ => 1,
            };
            let text = rest.get(..i).unwrap_or(&[]).to_vec();
            let eol = rest.get(i..i + eol_len).unwrap_or(&[]).to_vec();
            consumed += i + eol_len;
            self.searched = consumed;
            if self.eol.is_empty() {
                self.eol.clone_from(&eol);
            }
            if text.is_empty() {
                let lines = std::mem::take(&mut self.lines);
                self.lines_bytes = 0;
                self.dispatch(lines, &eol, out, counts);
            } else {
                self.lines_bytes += text.len() + eol.len();
                self.lines.push(Line { text, eol });
            }
        }
        if consumed > 0 {
            self.buf.drain(..consumed.min(self.buf.len()));
            self.searched = self.searched.saturating_sub(consumed);
        }
    }

    fn finish(&mut self, counts: &mut Counts) -> Vec<u8> {
        let mut out = Vec::new();
        self.split_lines(true, &mut out, counts);
        if self.skipping {
            self.buf.clear();
        }
        if !self.buf.is_empty() {
            let text = std::mem::take(&mut self.buf);
            if self.lines_mode {
                self.json_line(&text, &[], &mut out, counts);
            } else {
                self.lines_bytes += text.len();
                self.lines.push(Line { text, eol: Vec::new() });
            }
        }
        if !self.lines.is_empty() {
            let lines = std::mem::take(&mut self.lines);
            self.dispatch(lines, &[], &mut out, counts);
        }
        let mut flushed = Vec::new();
        self.flush_all(&mut flushed, counts);
        if !flushed.is_empty() && self.open_event {
            // close the unterminated last event (line) first
            let eol = self.eol();
            // (a JSON line ends at LF only: a CR at the end ends nothing)
            if !out.ends_with(b"\n") && (self.lines_mode || !out.ends_with(b"\r")) {
                out.extend_from_slice(&eol);
            }
            if !self.lines_mode {
                push_eol(&mut out, &eol);
            }
        }
        out.extend_from_slice(&flushed);
        let inner = Arc::clone(&self.inner);
        *self = SseStream::new(inner, self.lines_mode);
        out
    }

    fn eol(&self) -> Vec<u8> {
        if self.eol.is_empty() {
            b"\n".to_vec()
        } else {
            self.eol.clone()
        }
    }

    /// Emits one event (one line in JSON-lines mode) carrying `body` as its
    /// data, after its `event:` line if any.
    fn emit(&self, event_line: Option<&[u8]>, body: &[u8], out: &mut Vec<u8>) {
        let eol = self.eol();
        if self.lines_mode {
            out.extend_from_slice(body);
            out.extend_from_slice(&eol);
            return;
        }
        if let Some(line) = event_line {
            out.extend_from_slice(line);
            out.extend_from_slice(&eol);
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(body);
        out.extend_from_slice(&eol);
        out.extend_from_slice(&eol);
    }

    /// Emits one JSON line (`eol`: its line end, empty for an unterminated
    /// last line): masked as a payload, after the lines that carry text
    /// held for earlier lines; a blank line as it is.
    fn json_line(&mut self, text: &[u8], eol: &[u8], out: &mut Vec<u8>, counts: &mut Counts) {
        if text.len() > MAX_EVENT {
            // too long to hold (as when it arrives in pieces: see `push`)
            out.extend_from_slice(&unmaskable_event(counts));
            out.push(b'\n');
            self.open_event = false;
            return;
        }
        if text.trim_ascii().is_empty() {
            out.extend_from_slice(text);
        } else {
            let mut pre = Vec::new();
            let masked = self.payload(text, None, &mut pre, counts);
            out.extend_from_slice(&pre);
            out.extend_from_slice(&masked);
        }
        out.extend_from_slice(eol);
        self.open_event = eol.is_empty();
    }

    fn mask_line(&self, text: &[u8], out: &mut Vec<u8>, counts: &mut Counts) {
        let mut cands = Vec::new();
        self.inner.candidates_bytes(text, 0, true, &mut cands);
        self.inner.render_bytes(text, 0, text.len(), &mut cands, out, counts);
    }

    /// Emits one event: its lines, then `blank` (the blank line's end, or
    /// nothing for an unterminated event at the end of the stream). Its
    /// data lines all end as its first one did ([`push_eol`] keeps a lone
    /// CR from merging with a following LF).
    fn dispatch(&mut self, lines: Vec<Line>, blank: &[u8], out: &mut Vec<u8>, counts: &mut Counts) {
        let field = |l: &Line| -> Option<usize> {
            // index of the value in a `data` line
            let t = &l.text;
            if t.starts_with(b"data:") {
                Some(if t.get(5) == Some(&b' ') { 6 } else { 5 })
            } else if t.as_slice() == b"data" {
                Some(4)
            } else {
                None
            }
        };
        let data: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| field(l).is_some()).map(|(i, _)| i).collect();
        let mut new_data: Option<(Vec<u8>, Vec<u8>)> = None; // (payload, pre-events)
        if !data.is_empty() {
            let mut payload = Vec::new();
            for (k, &i) in data.iter().enumerate() {
                if k > 0 {
                    payload.push(b'\n');
                }
                if let Some(l) = lines.get(i) {
                    payload.extend_from_slice(l.text.get(field(l).unwrap_or(0)..).unwrap_or(&[]));
                }
            }
            let mut pre = Vec::new();
            let event_line = lines.iter().find(|l| l.text.starts_with(b"event:")).map(|l| l.text.clone());
            let masked = self.payload(&payload, event_line, &mut pre, counts);
            new_data = Some((masked, pre));
        }
        if let Some((_, pre)) = &new_data {
            out.extend_from_slice(pre);
        }
        for (i, l) in lines.iter().enumerate() {
            if Some(&i) == data.first() {
                let prefix: &[u8] = if l.text.get(5) == Some(&b' ') { b"data: " } else { b"data:" };
                if let Some((payload, _)) = &new_data {
                    for part in payload.split(|b| *b == b'\n') {
                        out.extend_from_slice(prefix);
                        out.extend_from_slice(part);
                        push_eol(out, if l.eol.is_empty() { &self.eol } else { &l.eol });
                    }
                }
            } else if field(l).is_some() {
                // (a later data line: its text went out with the first)
                continue;
            } else {
                self.mask_line(&l.text, out, counts);
                push_eol(out, &l.eol);
            }
        }
        push_eol(out, blank);
        self.open_event = blank.is_empty();
    }

    /// Masks one event's data payload (`event_line`: the event's `event:`
    /// line, if any); synthetic events to emit before it go to `pre`.
    fn payload(&mut self, payload: &[u8], event_line: Option<Vec<u8>>, pre: &mut Vec<u8>, counts: &mut Counts) -> Vec<u8> {
        if !self.lines_mode && payload.trim_ascii() == b"[DONE]" {
            self.flush_all(pre, counts);
            return payload.to_vec();
        }
        // (a member named twice: clients read one of them, so the event is
        // neither joined nor passed — see `UNMASKABLE_EVENT`)
        let repeated = |e: &serde_json::Error| e.to_string().starts_with("duplicate field");
        // (only an object is a chunk: serde would also read an array as one)
        let object = payload.trim_ascii_start().first() == Some(&b'{');
        if self.parts.len() + self.choices.len() >= MAX_OPEN {
            // too many parts at once (ids, indices): what they hold goes out
            self.flush_all(pre, counts);
        }
        let (released, repeated) = if self.lines_mode {
            // a line of another shape leaves the held text held: it goes
            // on with the next line of the answer, so a value split around
            // the odd line is still joined (order across it may change)
            match object.then(|| serde_json::from_slice::<LineLite>(payload)) {
                // (Ollama writes `model` and `done` in every line: records
                // of other streams that hold a `response` or
                // `message.content` are masked one by one, not joined)
                Some(Ok(line)) if (line.done.is_some() && line.model.is_some()) || line.error.is_some() => (Some(self.ollama_line(payload, line, pre, counts)), false),
                Some(Ok(_)) => (None, false),
                Some(Err(e)) => (None, repeated(&e)),
                None => (None, false),
            }
        } else if !object {
            self.flush_all(pre, counts);
            (None, false)
        } else {
            match serde_json::from_slice::<ChunkLite>(payload) {
                Ok(ChunkLite { choices: Some(choices), candidates, .. }) if !choices.is_empty() || candidates.is_none() => {
                    (Some(self.chat_chunk(payload, choices, pre, counts)), false)
                }
                Ok(ChunkLite { candidates: Some(c), .. }) => match serde_json::from_value::<Vec<CandidateLite>>(c) {
                    Ok(candidates) => (Some(self.gemini_chunk(payload, candidates, pre, counts)), false),
                    Err(_) => {
                        // another shape: masked alone, after what is held
                        self.flush_all(pre, counts);
                        (None, false)
                    }
                },
                Ok(ev) if ev.kind.is_none() && ev.token.as_ref().is_some_and(Value::is_object) => (self.tgi_token(payload, &ev, &event_line, pre, counts), false),
                // llama.cpp writes a boolean `stop` and its slot or tokens
                // in every event, and a Workers AI event has no other
                // members: events of other streams that hold a top-level
                // `content` or `response` (records, search results) are
                // masked one by one, not joined
                Ok(ev) if ev.kind.is_none() && ev.error.is_none() && ((ev.content.is_some() && llama_cpp_event(&ev)) || (ev.response.is_some() && workers_ai_event(payload))) => {
                    match self.top_text(payload, &ev, &event_line, counts) {
                        Some(released) => (Some(released), false),
                        None => {
                            self.flush_all(pre, counts);
                            (None, false)
                        }
                    }
                }
                Ok(ev) if ev.kind.is_none() && ev.error.is_some() => {
                    // what is held goes out before the error, where clients stop
                    self.flush_all(pre, counts);
                    (None, false)
                }
                Ok(ev) => (self.responses_event(payload, ev, event_line, pre, counts), false),
                Err(e) => {
                    // a payload of another shape (e.g. `content` as an array of
                    // parts): what is held goes out first, so text keeps its order
                    self.flush_all(pre, counts);
                    (None, repeated(&e))
                }
            }
        };
        if repeated {
            return unmaskable_event(counts);
        }
        // other JSON is masked as JSON, anything else as text
        match json::rewrite(&self.inner, payload, released.as_ref(), true, counts) {
            Ok(out) => out,
            // a JSON line must be JSON: anything else is withheld (its
            // joined text, already taken from the held text, goes out first)
            Err(_) if self.lines_mode => {
                for (field, text) in released.iter().flatten() {
                    if !text.is_empty() {
                        self.line_copy(&[], *field, text, pre);
                    }
                }
                unmaskable_event(counts)
            }
            Err(_) if matches!(payload.trim_ascii_start().first(), Some(b'{' | b'[' | b'"')) => unmaskable_event(counts),
            Err(_) => {
                let mut out = Vec::new();
                self.mask_line(payload, &mut out, counts);
                out
            }
        }
    }

    /// A Responses API event (`type`): a joined part's `delta` gives the
    /// text released for it; its `.done` event, the end of its output item
    /// or of the response first flush what the part holds as a synthetic
    /// delta event (into `pre`). `None`: nothing of the event is joined.
    fn responses_event(
        &mut self,
        payload: &[u8],
        ev: ChunkLite,
        event_line: Option<Vec<u8>>,
        pre: &mut Vec<u8>,
        counts: &mut Counts,
    ) -> Option<BTreeMap<StreamField, String>> {
        let kind = ev.kind.as_deref()?;
        if let Some(released) = self.block_delta(kind, payload, &ev, &event_line, counts) {
            return Some(released);
        }
        if kind == "tool-call-start" {
            // the tool plan ends where the tool calls start (before a start
            // event that carries arguments is joined)
            if let Some(mut part) = self.parts.remove(&(cohere_family("tool_plan"), String::new(), 0, 0, 0)) {
                let tail = part.text.finish(counts);
                self.part_tail(&part, &tail, pre);
            }
        }
        if let Some(released) = self.cohere_delta(kind, payload, &ev, &event_line, counts) {
            return Some(released);
        }
        if let (Some(family), Some(Value::String(frag))) = (joined_family(kind), &ev.delta) {
            return Some(self.join_part(ev.part(family), StreamField::Delta, family.ends_with("_arguments"), frag, payload, &event_line, counts));
        }
        // Mistral conversations (agents): the message text in a top-level
        // `content`, per message `id`, output and content index; another
        // message, a tool or function call or a handoff ends the others
        let mistral = "message.output";
        let other_step = ["tool.execution.", "function.call.", "agent.handoff."].iter().any(|p| kind.starts_with(p));
        if kind == "message.output.delta" || other_step {
            let this = ev.part(mistral);
            let ended: Vec<PartKey> = self.parts.keys().filter(|k| k.0 == mistral && (other_step || **k != this)).cloned().collect();
            self.end_parts(ended, pre, counts);
        }
        if let ("message.output.delta", Some(Value::String(frag))) = (kind, &ev.content) {
            let field = StreamField::Top(json::SSE_TOP[0]);
            return Some(self.join_part(ev.part(mistral), field, false, frag, payload, &event_line, counts));
        }
        // Vercel AI SDK: a tool call's input, held whole and masked as JSON
        let tool_input = |ev: &ChunkLite| -> PartKey {
            let id = ev.tool_call_id.as_ref().and_then(Value::as_str).unwrap_or_default();
            ("tool-input".to_string(), id.to_string(), 0, 0, 0)
        };
        if let ("tool-input-delta", Some(Value::String(frag))) = (kind, &ev.input_text_delta) {
            let field = StreamField::Top(json::TOOL_INPUT_DELTA);
            return Some(self.join_part(tool_input(&ev), field, true, frag, payload, &event_line, counts));
        }
        let done: Vec<PartKey> = match kind {
            "response.completed" | "response.failed" | "response.incomplete" | "error" | "message_delta" | "message_stop"
            | "conversation.response.done" | "conversation.response.error" | "finish" | "abort" => self.parts.keys().cloned().collect(),
            "content_block_stop" => {
                let index = ev.index.unwrap_or(0);
                self.parts.keys().filter(|k| k.0.starts_with(BLOCK_FAMILY) && k.2 == index).cloned().collect()
            }
            // Cohere v2: a content item or tool call ends; the message ends
            // (the tool plan ends where the tool calls start: above)
            "content-end" | "tool-call-end" => {
                let names: &[&str] = if kind == "content-end" { &["text", "thinking"] } else { &["tool_calls"] };
                let (families, index) = (names.iter().map(|n| cohere_family(n)).collect::<Vec<_>>(), ev.index.unwrap_or(0));
                self.parts.keys().filter(|k| families.contains(&k.0) && k.2 == index).cloned().collect()
            }
            "message-end" => self.parts.keys().cloned().collect(),
            "response.output_item.done" => {
                let item = ev.item_id.clone().unwrap_or_default();
                let index = ev.output_index.unwrap_or(0);
                self.parts.keys().filter(|k| k.2 == index || (!item.is_empty() && k.1 == item)).cloned().collect()
            }
            "text-end" | "reasoning-end" => vec![ev.part(kind.trim_end_matches("-end"))],
            "tool-input-available" | "tool-input-error" => vec![tool_input(&ev)],
            _ => match kind.strip_suffix(".done") {
                Some(family) => vec![ev.part(family)],
                None => Vec::new(),
            },
        };
        self.end_parts(done, pre, counts);
        None
    }

    /// Ends the parts `keys`: the rest each holds goes out as a copy of its
    /// last delta event (into `pre`).
    fn end_parts(&mut self, keys: Vec<PartKey>, pre: &mut Vec<u8>, counts: &mut Counts) {
        for key in keys {
            if let Some(mut part) = self.parts.remove(&key) {
                let tail = part.text.finish(counts);
                self.part_tail(&part, &tail, pre);
            }
        }
    }

    /// An Anthropic Messages API `content_block_delta` event whose `delta`
    /// is a `text_delta`, `input_json_delta` or `thinking_delta`: its string
    /// is joined per content block `index` (tool input held whole and
    /// masked as JSON, like tool-call arguments); gives the text released
    /// for it. `None`: not such an event.
    fn block_delta(
        &mut self,
        kind: &str,
        payload: &[u8],
        ev: &ChunkLite,
        event_line: &Option<Vec<u8>>,
        counts: &mut Counts,
    ) -> Option<BTreeMap<StreamField, String>> {
        if kind != "content_block_delta" {
            return None;
        }
        let Some(Value::Object(d)) = &ev.delta else { return None };
        let name = match d.get("type").and_then(Value::as_str)? {
            "text_delta" => "text",
            "input_json_delta" => "partial_json",
            "thinking_delta" => "thinking",
            _ => return None,
        };
        let Some(Value::String(frag)) = d.get(name) else { return None };
        let field = json::BLOCK_DELTA.iter().find(|n| **n == name).map(|n| StreamField::Block(n))?;
        let key: PartKey = (format!("{BLOCK_FAMILY}{name}"), String::new(), ev.index.unwrap_or(0), 0, 0);
        Some(self.join_part(key, field, name == "partial_json", frag, payload, event_line, counts))
    }

    /// Feeds `frag`, the string at `field` of the delta event `payload`
    /// (after `event_line`), to the held text of part `key` (held whole and
    /// masked as JSON when `json`; created on its first delta), which keeps
    /// the event as the model of the one that will carry its rest; gives
    /// the text released for `field`.
    #[allow(clippy::too_many_arguments)]
    fn join_part(
        &mut self,
        key: PartKey,
        field: StreamField,
        json: bool,
        frag: &str,
        payload: &[u8],
        event_line: &Option<Vec<u8>>,
        counts: &mut Counts,
    ) -> BTreeMap<StreamField, String> {
        let inner = &self.inner;
        let part = self.parts.entry(key).or_insert_with(|| Part::new(inner, json, field));
        part.template.clear();
        part.template.extend_from_slice(payload);
        part.event_line.clone_from(event_line);
        let text = part.text.push(frag.as_bytes(), counts);
        let mut released = BTreeMap::new();
        released.insert(field, String::from_utf8_lossy(&text).into_owned());
        released
    }

    /// A Cohere v2 chat stream delta event (`content-delta`,
    /// `tool-plan-delta`, `tool-call-delta`): its string
    /// ([`StreamField::Cohere`]) is joined per content item or tool call
    /// `index` (tool-call arguments held whole and masked as JSON); gives
    /// the text released for it. A `content-start` or `tool-call-start`
    /// that already carries text (Cohere sends them empty) starts the item
    /// with it; its rest then goes out in a delta event made for it. `None`:
    /// not such an event.
    fn cohere_delta(
        &mut self,
        kind: &str,
        payload: &[u8],
        ev: &ChunkLite,
        event_line: &Option<Vec<u8>>,
        counts: &mut Counts,
    ) -> Option<BTreeMap<StreamField, String>> {
        let [text, thinking, tool_plan, tool_calls] = json::COHERE_DELTA;
        let Some(Value::Object(d)) = &ev.delta else { return None };
        let message = d.get("message")?;
        let (name, frag) = match kind {
            "content-delta" | "content-start" => {
                let c = message.get("content")?;
                match c.get(text) {
                    Some(t) => (text, t),
                    None => (thinking, c.get(thinking)?),
                }
            }
            "tool-plan-delta" => (tool_plan, message.get(tool_plan)?),
            "tool-call-delta" | "tool-call-start" => (tool_calls, message.get(tool_calls)?.get("function")?.get("arguments")?),
            _ => return None,
        };
        let Value::String(frag) = frag else { return None };
        let index = if name == tool_plan { 0 } else { ev.index.unwrap_or(0) };
        let key = (cohere_family(name), String::new(), index, 0, 0);
        if !kind.ends_with("-start") {
            return Some(self.join_part(key, StreamField::Cohere(name), name == tool_calls, frag, payload, event_line, counts));
        }
        if frag.is_empty() {
            return None;
        }
        // the model of the event that carries the rest: a delta, not a second start
        let (delta_kind, delta) = if name == tool_calls {
            ("tool-call-delta", serde_json::json!({"message": {"tool_calls": {"function": {"arguments": ""}}}}))
        } else {
            ("content-delta", serde_json::json!({"message": {"content": {name: ""}}}))
        };
        let model = serde_json::json!({"type": delta_kind, "index": index, "delta": delta}).to_string();
        let line = event_line.as_ref().map(|_| format!("event: {delta_kind}").into_bytes());
        let released = self.join_part(key, StreamField::Cohere(name), name == tool_calls, frag, model.as_bytes(), &line, counts);
        Some(released)
    }

    /// A Text Generation Inference `/generate_stream` event: its
    /// `token.text` is joined across events; the last event (with
    /// `generated_text`, the whole text, masked in place) also carries the
    /// rest. `None`: the token has no text string.
    fn tgi_token(&mut self, payload: &[u8], ev: &ChunkLite, event_line: &Option<Vec<u8>>, pre: &mut Vec<u8>, counts: &mut Counts) -> Option<BTreeMap<StreamField, String>> {
        let key: PartKey = ("tgi.token".to_string(), String::new(), 0, 0, 0);
        let last = ev.generated_text.as_ref().is_some_and(|g| !g.is_null());
        let Some(Value::String(frag)) = ev.token.as_ref()?.get("text") else {
            if last {
                // the rest goes out before the last event
                self.flush_all(pre, counts);
            }
            return None;
        };
        let mut released = self.join_part(key.clone(), StreamField::Tgi, false, frag, payload, event_line, counts);
        if last {
            self.finish_into(&key, StreamField::Tgi, &mut released, counts);
        }
        Some(released)
    }

    /// An event that streams the answer as a top-level string
    /// ([`json::SSE_TOP`]): llama.cpp `/completion` `content`, joined per
    /// `index`, its rest going into the event with `stop: true`; Cloudflare
    /// Workers AI `response`, whose rest goes out before `[DONE]` or the
    /// stream's end. `None`: the member is not a string, or both are there.
    fn top_text(&mut self, payload: &[u8], ev: &ChunkLite, event_line: &Option<Vec<u8>>, counts: &mut Counts) -> Option<BTreeMap<StreamField, String>> {
        let [content, response] = json::SSE_TOP;
        let (name, frag) = match (&ev.content, &ev.response) {
            (Some(Value::String(s)), None) => (content, s),
            (None, Some(Value::String(s))) => (response, s),
            _ => return None,
        };
        let key: PartKey = (format!("top.{name}"), String::new(), ev.index.unwrap_or(0), 0, 0);
        let field = StreamField::Top(name);
        if name == response {
            // (records of another stream may hold nothing but `response`
            // too: a value at one's end is kept, see `set_records`)
            let inner = &self.inner;
            if let Joiner::Text(t) = &mut self.parts.entry(key.clone()).or_insert_with(|| Part::new(inner, false, field)).text {
                t.set_records();
            }
        }
        let mut released = self.join_part(key.clone(), field, false, frag, payload, event_line, counts);
        if ev.stop == Some(Value::Bool(true)) {
            self.finish_into(&key, field, &mut released, counts);
        }
        Some(released)
    }

    /// Ends part `key` in the event being masked: the rest it holds is
    /// added to the text released for `field` in that event.
    fn finish_into(&mut self, key: &PartKey, field: StreamField, released: &mut BTreeMap<StreamField, String>, counts: &mut Counts) {
        if let Some(mut part) = self.parts.remove(key) {
            let tail = part.text.finish(counts);
            released.entry(field).or_default().push_str(&String::from_utf8_lossy(&tail));
        }
    }

    /// Emits `tail` (the rest of a part's text) as a copy of the part's last
    /// delta event (same `type`, ids, indices and `sequence_number`), after
    /// its `event:` line.
    fn part_tail(&self, part: &Part, tail: &[u8], out: &mut Vec<u8>) {
        if tail.is_empty() {
            return;
        }
        if self.lines_mode {
            self.line_copy(&part.template, part.field, &String::from_utf8_lossy(tail), out);
            return;
        }
        let mut keep = BTreeMap::new();
        keep.insert(part.field, String::from_utf8_lossy(tail).into_owned());
        // a top-level string's event may carry the answer's `usage`
        // (Workers AI): not repeated, clients would count it twice
        let stripped = match part.field {
            StreamField::Top(_) => serde_json::from_slice::<Map<String, Value>>(&part.template).ok().and_then(|mut m| {
                m.shift_remove("usage")?;
                serde_json::to_vec(&m).ok()
            }),
            _ => None,
        };
        // the template's own values were counted when it was sent
        let template = stripped.as_deref().unwrap_or(&part.template);
        let body = json::rewrite(&self.inner, template, Some(&keep), true, &mut Counts::new()).unwrap_or_default();
        self.emit(part.event_line.as_deref(), &body, out);
    }

    /// An Ollama JSON line: feeds its joined strings (`message.content`,
    /// `message.thinking`, `response`, `thinking`), each a part of its own,
    /// and gives the text released for each. A line with `done: true` ends
    /// the answer: the held rest of each part goes into that line's own
    /// string, or, when the line lacks it, into a copy of the part's last
    /// line emitted just before (into `pre`).
    fn ollama_line(&mut self, payload: &[u8], line: LineLite, pre: &mut Vec<u8>, counts: &mut Counts) -> BTreeMap<StreamField, String> {
        let [content, thinking] = json::LINE_MESSAGE;
        let [response, top_thinking] = json::LINE_TOP;
        let mut here: Vec<(StreamField, String)> = Vec::new();
        if let Some(m) = line.message {
            here.extend(m.content.0.map(|t| (StreamField::Message(content), t)));
            here.extend(m.thinking.0.map(|t| (StreamField::Message(thinking), t)));
        }
        here.extend(line.response.0.map(|t| (StreamField::Top(response), t)));
        here.extend(line.thinking.0.map(|t| (StreamField::Top(top_thinking), t)));
        // (thinking sorts first: flushed together, it goes out first)
        let key = |field: StreamField| -> PartKey {
            let rank = u8::from(!matches!(field, StreamField::Message(n) | StreamField::Top(n) if n == thinking));
            (format!("{rank}{field:?}"), String::new(), 0, 0, 0)
        };
        if line.error.is_some() {
            // clients stop at an error line: what is held goes out before it
            self.flush_all(pre, counts);
        }
        let mut released: BTreeMap<StreamField, Vec<u8>> = BTreeMap::new();
        for (field, frag) in here {
            let inner = &self.inner;
            let part = self.parts.entry(key(field)).or_insert_with(|| Part::new(inner, false, field));
            part.template.clear();
            part.template.extend_from_slice(payload);
            let text = part.text.push(frag.as_bytes(), counts);
            released.entry(field).or_default().extend_from_slice(&text);
        }
        if line.done == Some(Value::Bool(true)) {
            // the rest goes in lines of its own just before, so that the
            // final line (its counts: `quota::usage_from_tail`) stays as
            // short as the upstream sent it
            for (_, mut part) in std::mem::take(&mut self.parts) {
                let mut text = released.get_mut(&part.field).map(std::mem::take).unwrap_or_default();
                text.extend(part.text.finish(counts));
                self.part_tail(&part, &text, pre);
            }
        }
        released.into_iter().map(|(f, t)| (f, String::from_utf8_lossy(&t).into_owned())).collect()
    }

    /// Emits a JSON line carrying `text` in `field` alone: `model` and
    /// `created_at` of `template` (a line of the stream, if it parses), the
    /// other joined strings of its kind empty (`message.content` with
    /// `role`, or `response`), `"done": false`, nothing else (no tool
    /// calls, counts or context repeated).
    fn line_copy(&self, template: &[u8], field: StreamField, text: &str, out: &mut Vec<u8>) {
        let t = serde_json::from_slice::<Map<String, Value>>(template).unwrap_or_default();
        let mut m = Map::new();
        for k in ["model", "created_at"] {
            if let Some(v) = t.get(k) {
                m.insert(k.into(), v.clone());
            }
        }
        let [content, _] = json::LINE_MESSAGE;
        let [response, _] = json::LINE_TOP;
        match field {
            StreamField::Message(name) => {
                let role = t.get("message").and_then(|x| x.get("role")).filter(|r| r.is_string()).cloned();
                let mut msg = Map::new();
                msg.insert("role".into(), role.unwrap_or_else(|| Value::from("assistant")));
                msg.insert(content.into(), Value::from(""));
                msg.insert(name.into(), Value::from(text));
                m.insert("message".into(), Value::Object(msg));
            }
            StreamField::Top(name) => {
                m.insert(response.into(), Value::from(""));
                m.insert(name.into(), Value::from(text));
            }
            _ => return,
        }
        m.insert("done".into(), Value::Bool(false));
        let raw = serde_json::to_vec(&Value::Object(m)).unwrap_or_default();
        let mut keep = BTreeMap::new();
        keep.insert(field, text.to_string());
        // (`model` and `created_at` were counted when the template went out)
        let body = json::rewrite(&self.inner, &raw, Some(&keep), true, &mut Counts::new()).unwrap_or_default();
        self.emit(None, &body, out);
    }

    /// A chat-completion chunk: feeds its joined fields, per choice, and
    /// flushes finished choices; gives the text released for each field.
    fn chat_chunk(&mut self, payload: &[u8], choices: Vec<ChoiceLite>, pre: &mut Vec<u8>, counts: &mut Counts) -> BTreeMap<StreamField, String> {
        self.template.clear();
        self.template.extend_from_slice(payload);
        let mut released: BTreeMap<StreamField, String> = BTreeMap::new();
        for (k, ch) in choices.into_iter().enumerate() {
            let idx = ch.index.unwrap_or(k as u64);
            // the joined fields this choice carries, with their fragments
            let mut here: Vec<(Slot, StreamField, String)> = Vec::new();
            if let Some(t) = ch.text {
                here.push((Slot::Text, StreamField::Text(k), t));
            }
            // reasoning copies in this chunk: (kind, array position, item)
            let mut copies: Vec<(usize, usize, Value)> = Vec::new();
            let mut reasoning_field = None;
            let has_delta = ch.delta.is_some();
            // the answer's raw fragment in this chunk (for snapshots)
            let fragment = if ch.message.is_some() || self.snapshots.contains_key(&idx) {
                ch.delta.as_ref().and_then(|d| d.content.clone()).unwrap_or_default()
            } else {
                String::new()
            };
            if let Some(d) = ch.delta {
                let [content, refusal, reasoning_content, reasoning] = json::DELTA_TEXT;
                if let Some(r) = d.reasoning.as_ref().or(d.reasoning_content.as_ref()) {
                    reasoning_field = Some(StreamField::Content(k, if d.reasoning.is_some() { reasoning } else { reasoning_content }));
                    let psf = d.provider_specific_fields.as_ref().and_then(|p| p.get("thinking_blocks"));
                    let sources = [d.reasoning_details.as_ref(), d.reasoning_details.as_ref(), d.thinking_blocks.as_ref(), psf];
                    for (kind, arr) in sources.into_iter().enumerate() {
                        let Some(Value::Array(items)) = arr else { continue };
                        let member = json::REASONING_COPIES.get(kind).map_or("", |c| c.1);
                        for (m, item) in items.iter().enumerate() {
                            if item.get(member).and_then(Value::as_str) == Some(r.as_str()) {
                                copies.push((kind, m, item.clone()));
                            }
                        }
                    }
                }
                for (name, text) in [(content, d.content), (refusal, d.refusal), (reasoning_content, d.reasoning_content), (reasoning, d.reasoning)] {
                    if let Some(t) = text {
                        here.push((Slot::Content(name), StreamField::Content(k, name), t));
                    }
                }
                for (m, tc) in d.tool_calls.unwrap_or_default().into_iter().enumerate() {
                    if let Some(a) = tc.function.and_then(FunctionLite::arguments) {
                        here.push((Slot::Args(tc.index.unwrap_or(m as u64)), StreamField::Args(k, m), a));
                    }
                }
                if let Some(a) = d.function_call.and_then(FunctionLite::arguments) {
                    here.push((Slot::Call, StreamField::Call(k), a));
                }
            }
            self.join(idx, here, ch.finish_reason.is_some(), &mut released, pre, counts);
            // copies of the reasoning carry what was released for it
            if let Some(text) = reasoning_field.and_then(|f| released.get(&f)).cloned() {
                for (kind, m, _) in &copies {
                    released.insert(StreamField::Mirror(k, *kind, *m), text.clone());
                }
            }
            if !copies.is_empty() {
                self.mirrors.insert(idx, copies.into_iter().map(|(kind, _, item)| (kind, item)).collect());
            }
            // `message.content` next to `delta`: a snapshot of the whole
            // answer so far becomes what was released of it, a copy of the
            // chunk's fragment what was released of that; anything else is
            // masked on its own (kept from the choice's first such chunk)
            let content = StreamField::Content(k, json::DELTA_TEXT[0]);
            let message = if has_delta { ch.message.as_ref().and_then(|m| m.get("content")).and_then(Value::as_str) } else { None };
            if message.is_some() && !self.snapshots.contains_key(&idx) && self.snapshot_bytes < MAX_SNAPSHOT {
                self.snapshots.insert(idx, Snapshot::default());
            }
            let fits = self.snapshot_bytes + 2 * fragment.len() + released.get(&content).map_or(0, String::len) <= MAX_SNAPSHOT;
            if let Some(snap) = self.snapshots.get_mut(&idx).filter(|s| !s.over) {
                if fits {
                    snap.raw.push_str(&fragment);
                    snap.released.push_str(released.get(&content).map_or("", String::as_str));
                    self.snapshot_bytes += fragment.len() + released.get(&content).map_or(0, String::len);
                } else {
                    snap.over = true;
                }
            }
            if let Some(m) = message {
                let snap = self.snapshots.get_mut(&idx).filter(|s| !s.over);
                if let Some(text) = released.get(&content).filter(|_| m == fragment && !fragment.is_empty()) {
                    if let Some(snap) = snap {
                        // (a first chunk is both a copy and a snapshot)
                        snap.copies |= snap.raw != m;
                    }
                    released.insert(StreamField::Snapshot(k), text.clone());
                } else if let Some(snap) = snap.filter(|s| s.raw == m) {
                    released.insert(StreamField::Snapshot(k), snap.released.clone());
                }
            }
        }
        released
    }

    /// A Gemini API stream chunk (`streamGenerateContent?alt=sse`): joins
    /// each candidate's text parts (answer and thinking apart) across
    /// chunks, and flushes a candidate that has a `finishReason`; gives the
    /// text released for each part.
    fn gemini_chunk(&mut self, payload: &[u8], candidates: Vec<CandidateLite>, pre: &mut Vec<u8>, counts: &mut Counts) -> BTreeMap<StreamField, String> {
        self.template.clear();
        self.template.extend_from_slice(payload);
        let mut released: BTreeMap<StreamField, String> = BTreeMap::new();
        for (k, c) in candidates.into_iter().enumerate() {
            // (proto3 JSON leaves out a zero `index`)
            let idx = c.index.unwrap_or(0);
            let parts = c.content.and_then(|ct| ct.parts).unwrap_or_default();
            let here: Vec<(Slot, StreamField, String)> = parts
                .into_iter()
                .enumerate()
                .filter_map(|(m, p)| {
                    let thought = p.thought.is_some_and(|t| t == Value::Bool(true));
                    p.text.0.map(|t| (Slot::Part { thought }, StreamField::Part(k, m), t))
                })
                .collect();
            self.join(idx, here, c.finish_reason.is_some(), &mut released, pre, counts);
        }
        released
    }

    /// Feeds the joined fragments of choice (candidate) `idx` in one event
    /// (`here`: slot, place in the event, fragment) to their slots' held
    /// text; when the choice is `finished`, flushes all of its slots: a
    /// slot's rest goes into its last field in the event, else into a
    /// synthetic event before it (into `pre`). The text released for each
    /// field goes to `released`.
    fn join(&mut self, idx: u64, here: Vec<(Slot, StreamField, String)>, finished: bool, released: &mut BTreeMap<StreamField, String>, pre: &mut Vec<u8>, counts: &mut Counts) {
        let mut texts: Vec<Vec<u8>> = Vec::with_capacity(here.len());
        for (slot, _, frag) in &here {
            let inner = &self.inner;
            let st = self.choices.entry((idx, *slot)).or_insert_with(|| Joiner::new(inner, *slot));
            texts.push(st.push(frag.as_bytes(), counts));
        }
        if finished {
            let keys: Vec<(u64, Slot)> = self.choices.range((idx, Slot::Content(""))..=(idx, Slot::Part { thought: true })).map(|(key, _)| *key).collect();
            for key in keys {
                let Some(mut st) = self.choices.remove(&key) else { continue };
                let tail = st.finish(counts);
                // into the last field of this slot in the event, else a synthetic event before it
                match here.iter().rposition(|(slot, _, _)| *slot == key.1).and_then(|i| texts.get_mut(i)) {
                    Some(t) => t.extend_from_slice(&tail),
                    None if !tail.is_empty() => {
                        let tail = String::from_utf8_lossy(&tail);
                        if key.1 == Slot::Content(json::DELTA_TEXT[0]) {
                            // (a snapshot in this chunk holds it)
                            if let Some(snap) = self.snapshots.get_mut(&idx) {
                                snap.released.push_str(&tail);
                            }
                        }
                        self.synthetic(idx, key.1, &tail, pre, counts)
                    }
                    None => {}
                }
            }
        }
        for ((_, field, _), text) in here.into_iter().zip(texts) {
            released.insert(field, String::from_utf8_lossy(&text).into_owned());
        }
    }

    /// Flushes every choice's and part's held text as synthetic events.
    fn flush_all(&mut self, out: &mut Vec<u8>, counts: &mut Counts) {
        for (_, mut part) in std::mem::take(&mut self.parts) {
            let tail = part.text.finish(counts);
            self.part_tail(&part, &tail, out);
        }
        let choices = std::mem::take(&mut self.choices);
        for ((idx, slot), mut st) in choices {
            let text = st.finish(counts);
            if !text.is_empty() {
                let text = String::from_utf8_lossy(&text).into_owned();
                self.synthetic(idx, slot, &text, out, counts);
            }
        }
    }

    /// A chunk event carrying `text` for `slot` of choice `idx`: the last
    /// chunk's members but `choices` and `usage`, and one choice holding only
    /// that text (`delta.content`; `delta.tool_calls: [{index, function:
    /// {arguments}}]`; `delta.function_call: {arguments}`; or `text` for
    /// legacy completions); for a Gemini slot, a Gemini chunk
    /// ([`SseStream::gemini_synthetic`]).
    fn synthetic(&self, idx: u64, slot: Slot, text: &str, out: &mut Vec<u8>, counts: &mut Counts) {
        let mut m = serde_json::from_slice::<Map<String, Value>>(&self.template).unwrap_or_default();
        // (the last chunk may be of the other shape: its text is not repeated)
        for k in ["choices", "usage", "candidates", "usageMetadata"] {
            m.shift_remove(k);
        }
        let mut choice = Map::new();
        choice.insert("index".into(), Value::from(idx));
        let field = match slot {
            Slot::Content(name) => {
                let mut delta = Map::new();
                delta.insert(name.into(), Value::String(text.to_string()));
                if name == json::DELTA_TEXT[2] || name == json::DELTA_TEXT[3] {
                    self.mirror_copies(idx, text, &mut delta);
                }
                if name == json::DELTA_TEXT[0] && self.snapshots.get(&idx).is_some_and(|s| s.copies) {
                    let mut message = Map::new();
                    message.insert("role".into(), Value::from("assistant"));
                    message.insert("content".into(), Value::String(text.to_string()));
                    choice.insert("message".into(), Value::Object(message));
                }
                choice.insert("delta".into(), Value::Object(delta));
                StreamField::Content(0, name)
            }
            Slot::Args(j) => {
                let mut function = Map::new();
                function.insert("arguments".into(), Value::String(text.to_string()));
                let mut call = Map::new();
                call.insert("index".into(), Value::from(j));
                call.insert("function".into(), Value::Object(function));
                let mut delta = Map::new();
                delta.insert("tool_calls".into(), Value::Array(vec![Value::Object(call)]));
                choice.insert("delta".into(), Value::Object(delta));
                StreamField::Args(0, 0)
            }
            Slot::Call => {
                let mut function = Map::new();
                function.insert("arguments".into(), Value::String(text.to_string()));
                let mut delta = Map::new();
                delta.insert("function_call".into(), Value::Object(function));
                choice.insert("delta".into(), Value::Object(delta));
                StreamField::Call(0)
            }
            Slot::Text => {
                choice.insert("text".into(), Value::String(text.to_string()));
                choice.insert("logprobs".into(), Value::Null);
                StreamField::Text(0)
            }
            Slot::Part { thought } => return self.gemini_synthetic(m, idx, thought, text, out, counts),
        };
        choice.insert("finish_reason".into(), Value::Null);
        m.insert("choices".into(), Value::Array(vec![Value::Object(choice)]));
        self.emit_synthetic(m, field, text, out, counts);
    }

    /// Adds to the `delta` of a synthetic chunk carrying reasoning `text`
    /// (already masked) the reasoning copies choice `idx` had last, each
    /// holding `text`.
    fn mirror_copies(&self, idx: u64, text: &str, delta: &mut Map<String, Value>) {
        for (kind, item) in self.mirrors.get(&idx).into_iter().flatten() {
            let Some((path, member)) = json::REASONING_COPIES.get(*kind) else { continue };
            let mut item = item.clone();
            if let Some(v) = item.get_mut(*member) {
                *v = Value::String(text.to_string());
            }
            let (parent, arr) = match path.split_once('.') {
                Some((p, a)) => (Some(p), a),
                None => (None, *path),
            };
            let target = match parent {
                Some(p) => match delta.entry(p.to_string()).or_insert_with(|| Value::Object(Map::new())) {
                    Value::Object(o) => o,
                    _ => continue,
                },
                None => &mut *delta,
            };
            if let Value::Array(a) = target.entry(arr.to_string()).or_insert_with(|| Value::Array(Vec::new())) {
                a.push(item);
            }
        }
    }

    /// Emits the event `m` (a synthetic chunk) with `text` at `field`.
    fn emit_synthetic(&self, m: Map<String, Value>, field: StreamField, text: &str, out: &mut Vec<u8>, counts: &mut Counts) {
        let raw = serde_json::to_vec(&Value::Object(m)).unwrap_or_default();
        let mut keep = BTreeMap::new();
        keep.insert(field, text.to_string());
        let body = json::rewrite(&self.inner, &raw, Some(&keep), true, counts).unwrap_or(raw);
        self.emit(None, &body, out);
    }

    /// A Gemini chunk carrying `text` for candidate `idx` (thinking when
    /// `thought`): the last chunk's members (`m`, already without
    /// `candidates` and `usageMetadata`) and one candidate whose content is
    /// one text part.
    fn gemini_synthetic(&self, mut m: Map<String, Value>, idx: u64, thought: bool, text: &str, out: &mut Vec<u8>, counts: &mut Counts) {
        let mut part = Map::new();
        part.insert("text".into(), Value::String(text.to_string()));
        if thought {
            part.insert("thought".into(), Value::Bool(true));
        }
        let mut content = Map::new();
        content.insert("parts".into(), Value::Array(vec![Value::Object(part)]));
        content.insert("role".into(), Value::String("model".into()));
        let mut candidate = Map::new();
        candidate.insert("content".into(), Value::Object(content));
        candidate.insert("index".into(), Value::from(idx));
        m.insert("candidates".into(), Value::Array(vec![Value::Object(candidate)]));
        self.emit_synthetic(m, StreamField::Part(0, 0), text, out, counts);
    }
}

/// Masks a JSON array of Gemini stream chunks: what
/// `:streamGenerateContent` answers without `alt=sse`
/// (`application/json`, one `GenerateContentResponse` per element). The
/// elements are masked as the events of an SSE stream are, so a value split
/// between two chunks' text parts is joined ([`SseStream`]); the array
/// that comes out may hold one more chunk (the rest held at the end) and
/// is written without line breaks. `Ok(None)`: not such an array (its
/// first element is not a chunk, [`gemini_chunk_shape`]), or nothing masked (the body goes as
/// it is). Errors: the array is not valid JSON. An element that is not
/// strict JSON becomes an error object, as an SSE event does.
pub(crate) fn chunk_array(inner: &Arc<Inner>, body: &[u8], counts: &mut Counts) -> Result<Option<Vec<u8>>, super::MaskError> {
    let elems: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body).map_err(|e| super::MaskError::new(e.column(), "invalid JSON array"))?;
    let chunks = elems.first().is_some_and(|e| gemini_chunk_shape(e.get()));
    if !chunks {
        return Ok(None);
    }
    let before: u64 = counts.values().sum();
    let mut sse = SseStream::new(Arc::clone(inner), false);
    let mut out = Vec::new();
    for e in &elems {
        if !e.get().trim_ascii_start().starts_with('{') {
            // (not a chunk: masked as JSON alone; the text held before it joins on)
            let masked = json::rewrite(inner, e.get().replace(['\r', '\n'], " ").as_bytes(), None, true, counts)?;
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&masked);
            out.extend_from_slice(b"\n\n");
            continue;
        }
        // (CR and LF are whitespace between JSON tokens: one line per event)
        let mut event = b"data: ".to_vec();
        event.extend(e.get().bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
        event.extend_from_slice(b"\n\n");
        out.extend(sse.push(&event, counts));
    }
    out.extend(sse.finish(counts));
    if counts.values().sum::<u64>() == before {
        return Ok(None);
    }
    let mut array = b"[".to_vec();
    for (k, event) in out.split(|b| *b == b'\n').filter_map(|l| l.strip_prefix(b"data: ")).enumerate() {
        if k > 0 {
            array.push(b',');
        }
        array.extend_from_slice(event);
    }
    array.push(b']');
    Ok(Some(array))
}

/// Whether `elem` reads as a Gemini `GenerateContentResponse`: no
/// `choices`, and a non-empty `candidates` array whose every candidate has
/// `content.parts` or a `finishReason` (a database row with a `candidates`
/// member is not one).
fn gemini_chunk_shape(elem: &str) -> bool {
    let Ok(ChunkLite { candidates: Some(c), choices: None, .. }) = serde_json::from_str::<ChunkLite>(elem) else {
        return false;
    };
    serde_json::from_value::<Vec<CandidateLite>>(c).is_ok_and(|cs| {
        !cs.is_empty() && cs.iter().all(|c| c.finish_reason.is_some() || c.content.as_ref().is_some_and(|c| c.parts.is_some()))
    })
}

/// What an SSE event's data becomes when it looks like JSON (starts with
/// `{` or `[`) but is not strict JSON (RFC 8259: `NaN`, `Infinity`, lone
/// surrogate escapes, cut off) or names a member twice. Clients parse such
/// events leniently (Python's `json.loads` takes all of these), while the
/// filter could only mask it as text — escapes undecoded, values split
/// across events unjoined — so it is withheld: an error event that the
/// OpenAI and Anthropic SDKs raise as an API error. Counted as
/// `unmaskable_event` in the audit record.
pub(crate) const UNMASKABLE_EVENT: &str =
    r#"{"type":"error","error":{"type":"unmaskable_event","code":"unmaskable_event","message":"nhi-gate withheld an event it could not mask (not strict JSON)"}}"#;

fn unmaskable_event(counts: &mut Counts) -> Vec<u8> {
    *counts.entry("unmaskable_event".to_string()).or_insert(0) += 1;
    UNMASKABLE_EVENT.as_bytes().to_vec()
}
