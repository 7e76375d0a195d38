//! Client side of Envoy's rate-limit service protocol (RLS v3), independent of
//! the proxy-wasm host: the token quota can live in an external service such
//! as envoyproxy/ratelimit or Limitador instead of Envoy shared data.
//!
//! The filter calls [`SERVICE`]/[`METHOD`] with proxy-wasm `dispatch_grpc_call`,
//! which carries raw protobuf bytes, so this module hand-codes the proto3 wire
//! format of the few messages it needs (see
//! <https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ratelimit/v3/rls.proto>
//! and <https://protobuf.dev/programming-guides/encoding/>):
//!
//! ```text
//! RateLimitRequest  { string domain = 1; repeated RateLimitDescriptor descriptors = 2; uint32 hits_addend = 3; }
//! RateLimitDescriptor { repeated Entry entries = 1; }     Entry { string key = 1; string value = 2; }
//!
//! RateLimitResponse { Code overall_code = 1; repeated DescriptorStatus statuses = 2; ... }
//! DescriptorStatus  { Code code = 1; RateLimit current_limit = 2; uint32 limit_remaining = 3;
//!                     google.protobuf.Duration duration_until_reset = 4; ... }
//! RateLimit         { string name = 3; uint32 requests_per_unit = 1; Unit unit = 2; }
//! Duration          { int64 seconds = 1; int32 nanos = 2; }
//! Code { UNKNOWN = 0; OK = 1; OVER_LIMIT = 2; }
//! Unit { UNKNOWN = 0; SECOND = 1; MINUTE = 2; HOUR = 3; DAY = 4; MONTH = 5; YEAR = 6; }
//! ```
//!
//! [`encode_request`] writes what a protobuf library writes: fields in number
//! order, proto3 defaults (empty strings, zero) omitted, every descriptor
//! emitted (an empty one as a zero-length message).
//!
//! [`decode_response`] reads what a protobuf library reads: fields in any
//! order, the last value of a repeated scalar winning, repeated occurrences of
//! a singular message merged, unknown fields of every wire type skipped (a
//! known field number with an unexpected wire type too, as protobuf treats it
//! as unknown), integers wider than their field truncated as in C++, unknown
//! enum values read as `Unknown`. Truncated or malformed input is an error,
//! never a panic; nested groups are skipped iteratively, at most
//! [`MAX_DEPTH`] deep.

/// The gRPC service of the rate-limit service protocol.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";

/// The one method of [`SERVICE`]: `RateLimitRequest` in, `RateLimitResponse` out.
pub const METHOD: &str = "ShouldRateLimit";

/// Deepest nesting of (unknown, deprecated) groups the decoder skips, as the
/// default recursion limit of the protobuf libraries.
pub const MAX_DEPTH: usize = 100;

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`: the ordered
/// `(key, value)` entries (`repeated Entry entries = 1`, `Entry { string key
/// = 1; string value = 2; }`) the service matches against its configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    pub entries: Vec<(String, String)>,
}

/// `RateLimitResponse.Code`: the service's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// `UNKNOWN = 0`, the field being absent, or a value this module does not know.
    Unknown,
    /// `OK = 1`: under the limit.
    Ok,
    /// `OVER_LIMIT = 2`.
    OverLimit,
}

impl Code {
    fn from_wire(v: u64) -> Code {
        match v as i32 {
            1 => Code::Ok,
            2 => Code::OverLimit,
            _ => Code::Unknown,
        }
    }
}

/// `RateLimitResponse.RateLimit.Unit`: the unit of `requests_per_unit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// `UNKNOWN = 0`, the field being absent, or a value this module does not know.
    Unknown,
    /// `SECOND = 1`.
    Second,
    /// `MINUTE = 2`.
    Minute,
    /// `HOUR = 3`.
    Hour,
    /// `DAY = 4`.
    Day,
    /// `MONTH = 5`.
    Month,
    /// `YEAR = 6`.
    Year,
}

impl Unit {
    fn from_wire(v: u64) -> Unit {
        match v as i32 {
            1 => Unit::Second,
            2 => Unit::Minute,
            3 => Unit::Hour,
            4 => Unit::Day,
            5 => Unit::Month,
            6 => Unit::Year,
            _ => Unit::Unknown,
        }
    }
}

/// What the filter needs from a `RateLimitResponse`: the overall code and the
/// first `DescriptorStatus` (`statuses = 2`, the status of the first
/// descriptor sent), whose later siblings are checked but not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `overall_code = 1`.
    pub code: Code,
    /// The first status's `current_limit = 2` as (`requests_per_unit = 1`,
    /// `unit = 2`), when the status carries one (a service sends none for a
    /// descriptor it has no limit for).
    pub limit: Option<(u32, Unit)>,
    /// The first status's `limit_remaining = 3`, when that status carries a
    /// limit or the field: proto3 omits a zero, so with a limit an absent
    /// field is `Some(0)`.
    pub remaining: Option<u32>,
    /// The first status's `duration_until_reset = 4`, whole seconds rounded
    /// up, when present.
    pub reset_s: Option<u64>,
}

// ---------------------------------------------------------------------------
// Encoding

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const SGROUP: u8 = 3;
const EGROUP: u8 = 4;
const I32: u8 = 5;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A proto3 `string` field: omitted when empty.
fn put_string(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        put_bytes(out, field, s.as_bytes());
    }
}

/// Encodes `RateLimitRequest { domain = 1, descriptors = 2, hits_addend = 3 }`
/// as protobuf does: an empty `domain` and a zero `hits_addend` (which the
/// service reads as 1) are omitted, as are empty entry keys and values; every
/// descriptor is written, in order, each entry in order.
pub fn encode_request(domain: &str, descriptors: &[Descriptor], hits_addend: u32) -> Vec<u8> {
    let mut out = Vec::new();
    put_string(&mut out, 1, domain);
    for descriptor in descriptors {
        let mut d = Vec::new();
        for (key, value) in &descriptor.entries {
            let mut entry = Vec::new();
            put_string(&mut entry, 1, key);
            put_string(&mut entry, 2, value);
            put_bytes(&mut d, 1, &entry);
        }
        put_bytes(&mut out, 2, &d);
    }
    if hits_addend != 0 {
        put_tag(&mut out, 3, VARINT);
        put_varint(&mut out, u64::from(hits_addend));
    }
    out
}

// ---------------------------------------------------------------------------
// Decoding

/// One field value as read from the wire.
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Len(&'a [u8]),
    Fixed32,
    Group,
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.rest.len() {
            return Err("truncated message".into());
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// A base-128 varint of at most 10 bytes; bits past the 64th are dropped,
    /// as protobuf does.
    fn varint(&mut self) -> Result<u64, String> {
        let mut v: u64 = 0;
        for i in 0..10u32 {
            let (&byte, tail) = self.rest.split_first().ok_or("truncated varint")?;
            self.rest = tail;
            v |= u64::from(byte & 0x7f).wrapping_shl(7 * i);
            if byte < 0x80 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    /// A tag: `(field number, wire type)`, the number in `1..2^29`.
    fn tag(&mut self) -> Result<(u32, u8), String> {
        let tag = self.varint()?;
        let tag = u32::try_from(tag).map_err(|_| "field number out of range")?;
        let field = tag >> 3;
        if field == 0 {
            return Err("field number 0".into());
        }
        Ok((field, (tag & 7) as u8))
    }

    /// The value of a field of wire type `wire` whose tag was just read.
    fn value(&mut self, field: u32, wire: u8) -> Result<Value<'a>, String> {
        match wire {
            VARINT => self.varint().map(Value::Varint),
            I64 => self.take(8).map(|_| Value::Fixed64),
            LEN => {
                let n = self.varint()?;
                let n = usize::try_from(n).map_err(|_| "length out of range")?;
                self.take(n).map(Value::Len)
            }
            I32 => self.take(4).map(|_| Value::Fixed32),
            SGROUP => self.skip_group(field).map(|_| Value::Group),
            EGROUP => Err("unmatched end of group".into()),
            _ => Err(format!("invalid wire type {wire}")),
        }
    }

    /// Skips the rest of a group started by field `field`, up to and including
    /// its matching end tag, nested groups included (at most [`MAX_DEPTH`]).
    fn skip_group(&mut self, field: u32) -> Result<(), String> {
        let mut open = vec![field];
        while let Some(&top) = open.last() {
            let (f, wire) = self.tag()?;
            match wire {
                SGROUP if open.len() >= MAX_DEPTH => return Err("groups nested too deep".into()),
                SGROUP => open.push(f),
                EGROUP if f == top => {
                    open.pop();
                }
                EGROUP => return Err("mismatched end of group".into()),
                _ => {
                    self.value(f, wire)?;
                }
            }
        }
        Ok(())
    }

    /// The next field, `None` at the end of the message.
    fn next(&mut self) -> Result<Option<(u32, Value<'a>)>, String> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (field, wire) = self.tag()?;
        self.value(field, wire).map(|v| Some((field, v)))
    }
}

/// One `DescriptorStatus`, its fields as on the wire.
#[derive(Default)]
struct Status {
    limit: Option<(u32, Unit)>,
    remaining: Option<u32>,
    duration: Option<(i64, i32)>,
}

/// `RateLimit { requests_per_unit = 1; unit = 2; name = 3 }`, merged into `limit`.
fn decode_rate_limit(bytes: &[u8], limit: &mut (u32, Unit)) -> Result<(), String> {
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (1, Value::Varint(v)) => limit.0 = v as u32,
            (2, Value::Varint(v)) => limit.1 = Unit::from_wire(v),
            (3, Value::Len(b)) => {
                std::str::from_utf8(b).map_err(|_| "RateLimit.name is not UTF-8")?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// `google.protobuf.Duration { seconds = 1; nanos = 2 }`, merged into `duration`.
fn decode_duration(bytes: &[u8], duration: &mut (i64, i32)) -> Result<(), String> {
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (1, Value::Varint(v)) => duration.0 = v as i64,
            (2, Value::Varint(v)) => duration.1 = v as i32,
            _ => {}
        }
    }
    Ok(())
}

/// `DescriptorStatus { code = 1; current_limit = 2; limit_remaining = 3; duration_until_reset = 4 }`.
fn decode_status(bytes: &[u8]) -> Result<Status, String> {
    let mut status = Status::default();
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (2, Value::Len(b)) => {
                let mut limit = status.limit.unwrap_or((0, Unit::Unknown));
                decode_rate_limit(b, &mut limit)?;
                status.limit = Some(limit);
            }
            (3, Value::Varint(v)) => status.remaining = Some(v as u32),
            (4, Value::Len(b)) => {
                let mut duration = status.duration.unwrap_or((0, 0));
                decode_duration(b, &mut duration)?;
                status.duration = Some(duration);
            }
            _ => {}
        }
    }
    Ok(status)
}

/// Largest `Duration.seconds` the well-known type allows (10,000 years).
const MAX_DURATION_S: i64 = 315_576_000_000;

/// A `duration_until_reset` in whole seconds, rounded up. A valid Duration
/// has `|seconds| <= 315,576,000,000`, `|nanos| <= 999,999,999` and both of
/// one sign; a negative one is no time until a reset either, so an error.
fn reset_seconds((seconds, nanos): (i64, i32)) -> Result<u64, String> {
    if seconds < 0 || nanos < 0 {
        return Err("negative duration_until_reset".into());
    }
    if seconds > MAX_DURATION_S || nanos > 999_999_999 {
        return Err("duration_until_reset out of range".into());
    }
    Ok(seconds as u64 + u64::from(nanos > 0))
}

/// Decodes a `RateLimitResponse` (`overall_code = 1`, `statuses = 2`; the
/// other fields skipped) into an [`Answer`], from the overall code and the
/// first status. Every status is decoded, so a malformed one anywhere is an
/// error, as is truncated input, a malformed tag, varint or group, a
/// non-UTF-8 limit name, or an invalid or negative `duration_until_reset`.
pub fn decode_response(bytes: &[u8]) -> Result<Answer, String> {
    let mut code = Code::Unknown;
    let mut first: Option<Status> = None;
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (1, Value::Varint(v)) => code = Code::from_wire(v),
            (2, Value::Len(b)) => {
                let status = decode_status(b)?;
                if let Some(d) = status.duration {
                    reset_seconds(d)?;
                }
                first.get_or_insert(status);
            }
            _ => {}
        }
    }
    let first = first.unwrap_or_default();
    let remaining = match (first.limit, first.remaining) {
        (_, Some(n)) => Some(n),
        (Some(_), None) => Some(0),
        (None, None) => None,
    };
    Ok(Answer { code, limit: first.limit, remaining, reset_s: first.duration.map(reset_seconds).transpose()? })
}
