//! `rls`: the hand-written protobuf wire format of Envoy's rate-limit service
//! (RLS v3). Encoding is checked against byte vectors worked out by hand from
//! the wire format and against bytes produced by the Python protobuf library
//! (upb 7.36.2, messages built from a dynamically assembled descriptor with
//! the field numbers and types of rls.proto); decoding against hand-built
//! responses, the same library's responses and its verdicts on edge cases,
//! and random input. Pure code only: these also run as wasm32-wasip1.

mod common;
use common::Rng;
use nhi_gate::rls::{decode_response, encode_request, Answer, Code, Descriptor, Unit, MAX_DEPTH, METHOD, SERVICE};
use proptest::prelude::*;
use proptest::test_runner::Config as PtConfig;

fn pt_config() -> PtConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    PtConfig { cases, failure_persistence: None, ..PtConfig::default() }
}

// ---------------------------------------------------------------------------
// Test-side wire helpers (independent of the module under test)

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const SGROUP: u8 = 3;
const EGROUP: u8 = 4;
const I32: u8 = 5;

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let low = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(low);
            return out;
        }
        out.push(low | 0x80);
    }
}

fn tag(field: u32, wire: u8) -> Vec<u8> {
    varint(u64::from(field) << 3 | u64::from(wire))
}

/// A varint field.
fn vi(field: u32, v: u64) -> Vec<u8> {
    [tag(field, VARINT), varint(v)].concat()
}

/// A length-delimited field.
fn ld(field: u32, bytes: &[u8]) -> Vec<u8> {
    [tag(field, LEN), varint(bytes.len() as u64), bytes.to_vec()].concat()
}

/// A group field around `inner`.
fn group(field: u32, inner: &[u8]) -> Vec<u8> {
    [tag(field, SGROUP), inner.to_vec(), tag(field, EGROUP)].concat()
}

/// One unknown field of every wire type, field numbers 9..=14.
fn unknown_fields() -> Vec<u8> {
    [
        vi(9, u64::MAX),
        [tag(10, I64), vec![0xff; 8]].concat(),
        ld(11, &[0x08, 0x02, 0xff, 0xff]),
        [tag(12, I32), vec![0xff; 4]].concat(),
        group(13, &[vi(14, 2), group(14, &[]), ld(14, b"x")].concat()),
    ]
    .concat()
}

fn answer(code: Code, limit: Option<(u32, Unit)>, remaining: Option<u32>, reset_s: Option<u64>) -> Answer {
    Answer { code, limit, remaining, reset_s }
}

fn d(entries: &[(&str, &str)]) -> Descriptor {
    Descriptor { entries: entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
}

/// A strict test-side decoder of `RateLimitRequest` (panics on anything else):
/// `(domain, descriptors, hits_addend)`.
fn parse_request(bytes: &[u8]) -> (String, Vec<Vec<(String, String)>>, u32) {
    fn fields(mut b: &[u8]) -> Vec<(u32, u8, u64, Vec<u8>)> {
        fn read_varint(b: &mut &[u8]) -> u64 {
            let mut v = 0u64;
            for i in 0.. {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << (7 * i);
                if byte < 0x80 {
                    return v;
                }
            }
            unreachable!()
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let t = read_varint(&mut b);
            let (field, wire) = ((t >> 3) as u32, (t & 7) as u8);
            match wire {
                VARINT => out.push((field, wire, read_varint(&mut b), vec![])),
                LEN => {
                    let n = read_varint(&mut b) as usize;
                    out.push((field, wire, 0, b[..n].to_vec()));
                    b = &b[n..];
                }
                _ => panic!("unexpected wire type {wire}"),
            }
        }
        out
    }
    let (mut domain, mut descriptors, mut hits) = (String::new(), vec![], 0u32);
    for (field, wire, v, b) in fields(bytes) {
        match (field, wire) {
            (1, LEN) => domain = String::from_utf8(b).unwrap(),
            (2, LEN) => {
                let mut entries = vec![];
                for (f, w, _, e) in fields(&b) {
                    assert_eq!((f, w), (1, LEN));
                    let (mut k, mut val) = (String::new(), String::new());
                    for (f, w, _, s) in fields(&e) {
                        match (f, w) {
                            (1, LEN) => k = String::from_utf8(s).unwrap(),
                            (2, LEN) => val = String::from_utf8(s).unwrap(),
                            other => panic!("unexpected entry field {other:?}"),
                        }
                    }
                    entries.push((k, val));
                }
                descriptors.push(entries);
            }
            (3, VARINT) => hits = u32::try_from(v).unwrap(),
            other => panic!("unexpected request field {other:?}"),
        }
    }
    (domain, descriptors, hits)
}

// ---------------------------------------------------------------------------
// Names

#[test]
fn service_and_method_names() {
    assert_eq!(SERVICE, "envoy.service.ratelimit.v3.RateLimitService");
    assert_eq!(METHOD, "ShouldRateLimit");
    assert_eq!(format!("/{SERVICE}/{METHOD}"), "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit");
}

// ---------------------------------------------------------------------------
// Encoding: vectors worked out by hand
//
// A tag is the varint `field << 3 | wire type`: domain (1, LEN) = 0x0a,
// descriptors (2, LEN) = 0x12, hits_addend (3, VARINT) = 0x18; inside a
// descriptor, entries (1, LEN) = 0x0a; inside an entry, key (1, LEN) = 0x0a
// and value (2, LEN) = 0x12. A length-delimited field is tag, varint length,
// bytes.

/// `"nhi"`, one descriptor `sub=ci`, the entry and descriptor lengths nested.
const ONE_DESCRIPTOR: &[u8] = &[
    0x0a, 0x03, b'n', b'h', b'i', // domain = "nhi"
    0x12, 0x0b, // descriptors[0], 11 bytes:
    0x0a, 0x09, //   entries[0], 9 bytes:
    0x0a, 0x03, b's', b'u', b'b', //     key = "sub"
    0x12, 0x02, b'c', b'i', //     value = "ci"
];

#[test]
fn encode_one_descriptor_by_hand() {
    assert_eq!(encode_request("nhi", &[d(&[("sub", "ci")])], 0), ONE_DESCRIPTOR);
}

#[test]
fn encode_hits_addend_zero_is_omitted_and_seven_is_present() {
    let descriptors = [d(&[("sub", "ci")])];
    assert_eq!(encode_request("nhi", &descriptors, 0), ONE_DESCRIPTOR);
    let with_seven = encode_request("nhi", &descriptors, 7);
    assert_eq!(with_seven, [ONE_DESCRIPTOR, &[0x18, 0x07]].concat()); // hits_addend = 7
                                                                      // 300 = 0b10_0101100: low seven bits 0x2c with the continuation bit, then 0x02.
    assert_eq!(encode_request("nhi", &descriptors, 300), [ONE_DESCRIPTOR, &[0x18, 0xac, 0x02]].concat());
    assert_eq!(encode_request("", &[], 1), [0x18, 0x01]);
}

/// Two descriptors, the first with two entries, and `hits_addend = 7`.
const TWO_DESCRIPTORS: &[u8] = &[
    0x0a, 0x08, b'n', b'h', b'i', b'-', b'g', b'a', b't', b'e', // domain = "nhi-gate"
    0x12, 0x27, // descriptors[0], 39 = 2 + 15 + 2 + 20 bytes:
    0x0a, 0x0f, //   entries[0], 15 bytes:
    0x0a, 0x08, b'r', b'e', b's', b'o', b'u', b'r', b'c', b'e', //     key = "resource"
    0x12, 0x03, b'r', b'a', b'g', //     value = "rag"
    0x0a, 0x14, //   entries[1], 20 bytes:
    0x0a, 0x03, b's', b'u', b'b', //     key = "sub"
    0x12, 0x0d, b'r', b'e', b'p', b'o', b':', b'a', b'c', b'm', b'e', b'/', b'a', b'p', b'p', //     value
    0x12, 0x10, // descriptors[1], 16 bytes:
    0x0a, 0x0e, //   entries[0], 14 bytes:
    0x0a, 0x06, b't', b'e', b'n', b'a', b'n', b't', //     key = "tenant"
    0x12, 0x04, b'a', b'c', b'm', b'e', //     value = "acme"
    0x18, 0x07, // hits_addend = 7
];

#[test]
fn encode_two_descriptors_by_hand() {
    let descriptors = [d(&[("resource", "rag"), ("sub", "repo:acme/app")]), d(&[("tenant", "acme")])];
    assert_eq!(encode_request("nhi-gate", &descriptors, 7), TWO_DESCRIPTORS);
}

#[test]
fn encode_omits_empty_strings_but_keeps_every_descriptor_and_entry() {
    // An empty domain, key or value is the proto3 default, so omitted; an
    // empty descriptor or entry is still an element of its repeated field.
    let descriptors = [d(&[]), d(&[("k", "")]), d(&[("", "v")]), d(&[("", "")])];
    let expected: &[u8] = &[
        0x12, 0x00, // descriptors[0]: no entries
        0x12, 0x05, 0x0a, 0x03, 0x0a, 0x01, b'k', // descriptors[1]: entry { key = "k" }
        0x12, 0x05, 0x0a, 0x03, 0x12, 0x01, b'v', // descriptors[2]: entry { value = "v" }
        0x12, 0x02, 0x0a, 0x00, // descriptors[3]: one empty entry
    ];
    assert_eq!(encode_request("", &descriptors, 0), expected);
    assert_eq!(encode_request("", &[], 0), b"");
}

#[test]
fn encode_lengths_of_128_and_more_take_two_bytes() {
    // 70 × "é" is 140 bytes: 140 = 0x8c → varint 0x8c 0x01; the entry is
    // 3 + 3 + 140 = 146 → 0x92 0x01; the descriptor 3 + 146 = 149 → 0x95 0x01.
    // hits_addend u32::MAX → 0xff 0xff 0xff 0xff 0x0f.
    let value = "é".repeat(70);
    let expected = [
        &[0x0a, 0x01, b'd', 0x12, 0x95, 0x01, 0x0a, 0x92, 0x01, 0x0a, 0x01, b'k', 0x12, 0x8c, 0x01][..],
        value.as_bytes(),
        &[0x18, 0xff, 0xff, 0xff, 0xff, 0x0f],
    ]
    .concat();
    assert_eq!(encode_request("d", &[d(&[("k", &value)])], u32::MAX), expected);
}

// ---------------------------------------------------------------------------
// Encoding: vectors from Python protobuf (upb 7.36.2, SerializeToString)

#[test]
fn encode_matches_python_protobuf() {
    // Req(domain="nhi", descriptors=[[("sub","ci")]])
    let py1: &[u8] =
        &[0x0a, 0x03, 0x6e, 0x68, 0x69, 0x12, 0x0b, 0x0a, 0x09, 0x0a, 0x03, 0x73, 0x75, 0x62, 0x12, 0x02, 0x63, 0x69];
    assert_eq!(encode_request("nhi", &[d(&[("sub", "ci")])], 0), py1);
    // Req(domain="nhi-gate", descriptors=[[resource=rag, sub=repo:acme/app], [tenant=acme]], hits_addend=7)
    let py2: &[u8] = &[
        0x0a, 0x08, 0x6e, 0x68, 0x69, 0x2d, 0x67, 0x61, 0x74, 0x65, 0x12, 0x27, 0x0a, 0x0f, 0x0a, 0x08, 0x72, 0x65,
        0x73, 0x6f, 0x75, 0x72, 0x63, 0x65, 0x12, 0x03, 0x72, 0x61, 0x67, 0x0a, 0x14, 0x0a, 0x03, 0x73, 0x75, 0x62,
        0x12, 0x0d, 0x72, 0x65, 0x70, 0x6f, 0x3a, 0x61, 0x63, 0x6d, 0x65, 0x2f, 0x61, 0x70, 0x70, 0x12, 0x10, 0x0a,
        0x0e, 0x0a, 0x06, 0x74, 0x65, 0x6e, 0x61, 0x6e, 0x74, 0x12, 0x04, 0x61, 0x63, 0x6d, 0x65, 0x18, 0x07,
    ];
    let descriptors = [d(&[("resource", "rag"), ("sub", "repo:acme/app")]), d(&[("tenant", "acme")])];
    assert_eq!(encode_request("nhi-gate", &descriptors, 7), py2);
    // Req(descriptors=[[], [("k","")], [("","v")]], hits_addend=300)
    let py3: &[u8] = &[
        0x12, 0x00, 0x12, 0x05, 0x0a, 0x03, 0x0a, 0x01, 0x6b, 0x12, 0x05, 0x0a, 0x03, 0x12, 0x01, 0x76, 0x18, 0xac,
        0x02,
    ];
    assert_eq!(encode_request("", &[d(&[]), d(&[("k", "")]), d(&[("", "v")])], 300), py3);
}

// ---------------------------------------------------------------------------
// Decoding: hand-built and Python-built responses
//
// Tags: overall_code (1, VARINT) = 0x08, statuses (2, LEN) = 0x12; in a
// status: code 0x08, current_limit (2, LEN) 0x12, limit_remaining (3,
// VARINT) 0x18, duration_until_reset (4, LEN) 0x22; in a RateLimit:
// requests_per_unit 0x08, unit 0x10, name (3, LEN) 0x1a; in a Duration:
// seconds 0x08, nanos 0x10.

/// OVER_LIMIT; statuses[0] = { OVER_LIMIT, 1000/HOUR "tokens", remaining 0
/// (omitted), 1799.25 s }; statuses[1] = { OK, remaining 5 }. The bytes
/// Python protobuf serializes for that message, derived here by hand.
const OVER_LIMIT: &[u8] = &[
    0x08, 0x02, // overall_code = OVER_LIMIT
    0x12, 0x1b, // statuses[0], 27 bytes:
    0x08, 0x02, //   code = OVER_LIMIT
    0x12, 0x0d, //   current_limit, 13 bytes:
    0x08, 0xe8, 0x07, //     requests_per_unit = 1000 (0x68 | 0x80, 1000 >> 7 = 7)
    0x10, 0x03, //     unit = HOUR
    0x1a, 0x06, b't', b'o', b'k', b'e', b'n', b's', //     name = "tokens"
    0x22, 0x08, //   duration_until_reset, 8 bytes:
    0x08, 0x87, 0x0e, //     seconds = 1799 (14 × 128 + 7)
    0x10, 0x80, 0xe5, 0x9a, 0x77, //     nanos = 250,000,000
    0x12, 0x04, 0x08, 0x01, 0x18, 0x05, // statuses[1] = { code = OK, limit_remaining = 5 }
];

#[test]
fn decode_over_limit_with_status() {
    // Remaining 0 is omitted on the wire but the status has a limit: Some(0).
    // 1799.25 s until reset rounds up to 1800. statuses[1] is not used.
    assert_eq!(decode_response(OVER_LIMIT), Ok(answer(Code::OverLimit, Some((1000, Unit::Hour)), Some(0), Some(1800))));
}

#[test]
fn decode_ok_with_status_from_python() {
    // Resp(overall_code=OK, statuses=[{OK, 100/MINUTE, remaining 42, 37 s}])
    let py: &[u8] =
        &[0x08, 0x01, 0x12, 0x0e, 0x08, 0x01, 0x12, 0x04, 0x08, 0x64, 0x10, 0x02, 0x18, 0x2a, 0x22, 0x02, 0x08, 0x25];
    assert_eq!(decode_response(py), Ok(answer(Code::Ok, Some((100, Unit::Minute)), Some(42), Some(37))));
}

#[test]
fn decode_responses_of_the_test_server() {
    // tests/rls_server.py, limit 90 per MINUTE, 17 s to the window's end:
    // encode_response(OVER_LIMIT, [encode_status(OVER_LIMIT, 90, MINUTE, 0, 17)])
    let over: &[u8] = &[0x08, 0x02, 0x12, 0x0c, 0x08, 0x02, 0x12, 0x04, 0x08, 0x5a, 0x10, 0x02, 0x22, 0x02, 0x08, 0x11];
    assert_eq!(decode_response(over), Ok(answer(Code::OverLimit, Some((90, Unit::Minute)), Some(0), Some(17))));
    // encode_response(OK, [encode_status(OK, 90, MINUTE, 60, 17)])
    let ok: &[u8] =
        &[0x08, 0x01, 0x12, 0x0e, 0x08, 0x01, 0x12, 0x04, 0x08, 0x5a, 0x10, 0x02, 0x18, 0x3c, 0x22, 0x02, 0x08, 0x11];
    assert_eq!(decode_response(ok), Ok(answer(Code::Ok, Some((90, Unit::Minute)), Some(60), Some(17))));
}

#[test]
fn decode_bare_codes() {
    assert_eq!(decode_response(&[0x08, 0x01]), Ok(answer(Code::Ok, None, None, None)));
    assert_eq!(decode_response(&[0x08, 0x02]), Ok(answer(Code::OverLimit, None, None, None)));
    // An empty message is every field at its default.
    assert_eq!(decode_response(&[]), Ok(answer(Code::Unknown, None, None, None)));
    assert_eq!(decode_response(&[0x08, 0x00]), Ok(answer(Code::Unknown, None, None, None)));
    // Values outside the enum are kept by proto3 as numbers; read as Unknown.
    assert_eq!(decode_response(&[0x08, 0x03]).map(|a| a.code), Ok(Code::Unknown));
    assert_eq!(decode_response(&vi(1, u64::MAX)).map(|a| a.code), Ok(Code::Unknown));
    // -1
}

#[test]
fn decode_enum_wider_than_int32_is_truncated_like_protobuf() {
    // 2^32 + 2: Python protobuf reads overall_code 2 (C++ cast to int32).
    assert_eq!(decode_response(&[0x08, 0x82, 0x80, 0x80, 0x80, 0x10]).map(|a| a.code), Ok(Code::OverLimit));
    // requests_per_unit 2^32 + 5 reads as 5 (Python: 5).
    let bytes = [0x12, 0x08, 0x12, 0x06, 0x08, 0x85, 0x80, 0x80, 0x80, 0x10];
    assert_eq!(decode_response(&bytes).map(|a| a.limit), Ok(Some((5, Unit::Unknown))));
}

#[test]
fn decode_every_unit() {
    let units = [
        (0, Unit::Unknown),
        (1, Unit::Second),
        (2, Unit::Minute),
        (3, Unit::Hour),
        (4, Unit::Day),
        (5, Unit::Month),
        (6, Unit::Year),
        (7, Unit::Unknown),
        (u64::MAX, Unit::Unknown),
    ];
    for (wire, unit) in units {
        let bytes = ld(2, &ld(2, &[vi(1, 9), vi(2, wire)].concat()));
        assert_eq!(decode_response(&bytes).map(|a| a.limit), Ok(Some((9, unit))), "unit {wire}");
    }
}

#[test]
fn decode_remaining_presence() {
    // A status with no limit and no remaining (a descriptor the service has no limit for).
    assert_eq!(decode_response(&[0x08, 0x01, 0x12, 0x02, 0x08, 0x01]), Ok(answer(Code::Ok, None, None, None)));
    // An empty limit message is still a limit: (0, UNKNOWN), remaining Some(0).
    assert_eq!(
        decode_response(&[0x12, 0x02, 0x12, 0x00]),
        Ok(answer(Code::Unknown, Some((0, Unit::Unknown)), Some(0), None))
    );
    // A remaining without a limit.
    assert_eq!(decode_response(&[0x12, 0x02, 0x18, 0x05]), Ok(answer(Code::Unknown, None, Some(5), None)));
    // An explicit zero on the wire is read like an omitted one.
    assert_eq!(decode_response(&[0x12, 0x02, 0x18, 0x00]), Ok(answer(Code::Unknown, None, Some(0), None)));
}

#[test]
fn decode_uses_the_first_status_only() {
    let first = ld(2, &[vi(1, 1), ld(2, &[vi(1, 10), vi(2, 1)].concat()), vi(3, 3), ld(4, &vi(1, 1))].concat());
    let second = ld(2, &[vi(1, 2), ld(2, &[vi(1, 20), vi(2, 2)].concat()), vi(3, 0), ld(4, &vi(1, 59))].concat());
    let bytes = [vi(1, 2), first.clone(), second.clone()].concat();
    assert_eq!(decode_response(&bytes), Ok(answer(Code::OverLimit, Some((10, Unit::Second)), Some(3), Some(1))));
    let bytes = [vi(1, 2), second, first].concat();
    assert_eq!(decode_response(&bytes), Ok(answer(Code::OverLimit, Some((20, Unit::Minute)), Some(0), Some(59))));
}

#[test]
fn decode_duration_rounds_up_to_whole_seconds() {
    let reset = |duration: Vec<u8>| decode_response(&ld(2, &ld(4, &duration))).map(|a| a.reset_s);
    assert_eq!(reset(vec![]), Ok(Some(0)));
    assert_eq!(reset(vi(1, 60)), Ok(Some(60)));
    assert_eq!(reset(vi(2, 1)), Ok(Some(1)));
    assert_eq!(reset([vi(1, 59), vi(2, 999_999_999)].concat()), Ok(Some(60)));
    assert_eq!(reset(vi(1, 315_576_000_000)), Ok(Some(315_576_000_000)));
}

#[test]
fn decode_fields_in_any_order_last_scalar_wins_and_messages_merge() {
    // Python protobuf reads [0x08 0x02 0x08 0x01] as overall_code OK.
    assert_eq!(decode_response(&[0x08, 0x02, 0x08, 0x01]).map(|a| a.code), Ok(Code::Ok));
    // current_limit twice, {rpu 5} then {unit MINUTE}: merged (Python: (5, 2)).
    let bytes = [0x12, 0x0a, 0x12, 0x02, 0x08, 0x05, 0x12, 0x02, 0x10, 0x02, 0x18, 0x00];
    assert_eq!(decode_response(&bytes), Ok(answer(Code::Unknown, Some((5, Unit::Minute)), Some(0), None)));
    // duration twice, {seconds 9} then {nanos 1}: merged to 9 s + 1 ns.
    let bytes = ld(2, &[ld(4, &vi(1, 9)), ld(4, &vi(2, 1))].concat());
    assert_eq!(decode_response(&bytes).map(|a| a.reset_s), Ok(Some(10)));
    // Statuses before the overall code, fields of the status reversed.
    let status = [ld(4, &vi(1, 30)), vi(3, 7), ld(2, &[vi(2, 4), vi(1, 50)].concat()), vi(1, 2)].concat();
    let bytes = [ld(2, &status), vi(1, 2)].concat();
    assert_eq!(decode_response(&bytes), Ok(answer(Code::OverLimit, Some((50, Unit::Day)), Some(7), Some(30))));
}

#[test]
fn decode_non_canonical_varints_like_protobuf() {
    // Overlong encodings are valid: 0x82 0x80 0x00 is 2.
    assert_eq!(decode_response(&[0x08, 0x82, 0x80, 0x00]).map(|a| a.code), Ok(Code::OverLimit));
    // A 10-byte varint's bits past the 64th are dropped (Python accepts both).
    let ten = [0x08, 0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x7f];
    assert_eq!(decode_response(&ten).map(|a| a.code), Ok(Code::Ok));
    let ten = [0x08, 0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
    assert_eq!(decode_response(&ten).map(|a| a.code), Ok(Code::Ok));
    // The largest tag (field 2^29 - 1, VARINT) is an unknown field.
    assert_eq!(decode_response(&[0xf8, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x08, 0x01]).map(|a| a.code), Ok(Code::Ok));
}

// ---------------------------------------------------------------------------
// Decoding: unknown fields

#[test]
fn decode_skips_unknown_fields_of_every_wire_type_at_every_level() {
    let u = unknown_fields();
    let limit = [u.clone(), vi(1, 1000), u.clone(), vi(2, 3), ld(3, b"tokens"), u.clone()].concat();
    let duration = [u.clone(), vi(1, 1799), u.clone(), vi(2, 250_000_000), u.clone()].concat();
    let status =
        [u.clone(), vi(1, 2), u.clone(), ld(2, &limit), vi(3, 4), u.clone(), ld(4, &duration), u.clone()].concat();
    let bytes = [u.clone(), vi(1, 2), u.clone(), ld(2, &status), u.clone(), ld(2, &[]), u].concat();
    assert_eq!(decode_response(&bytes), Ok(answer(Code::OverLimit, Some((1000, Unit::Hour)), Some(4), Some(1800))));
}

#[test]
fn decode_skips_each_unknown_wire_type_alone() {
    let each: [(&str, Vec<u8>); 6] = [
        ("varint", vi(9, 300)),
        ("fixed64", [tag(9, I64), vec![0x08, 0x01, 0x08, 0x01, 0x08, 0x01, 0x08, 0x01]].concat()),
        ("length-delimited", ld(9, &[0x08, 0x01])),
        ("fixed32", [tag(9, I32), vec![0x08, 0x01, 0x08, 0x01]].concat()),
        ("group", group(9, &[vi(10, 5), group(10, &[])].concat())),
        ("known fields of other messages", [ld(3, &[0x0a, 0x01, b'x']), ld(5, b"body"), ld(7, &[0x08, 0x01])].concat()),
    ];
    for (name, field) in each {
        // The payloads hold bytes that would read as overall_code = OK if misparsed.
        let bytes = [vi(1, 2), field.clone(), vi(3, 1)].concat();
        assert_eq!(decode_response(&bytes).map(|a| a.code), Ok(Code::OverLimit), "{name}");
        let bytes = ld(2, &[field, ld(2, &vi(1, 6))].concat());
        assert_eq!(decode_response(&bytes).map(|a| a.limit), Ok(Some((6, Unit::Unknown))), "{name} in a status");
    }
}

#[test]
fn decode_skips_known_numbers_with_another_wire_type_like_protobuf() {
    // overall_code sent length-delimited: unknown to protobuf (Python: code 0).
    assert_eq!(decode_response(&[0x0a, 0x01, 0x02]).map(|a| a.code), Ok(Code::Unknown));
    assert_eq!(decode_response(&[0x0a, 0x01, 0x02, 0x08, 0x01]).map(|a| a.code), Ok(Code::Ok));
    // current_limit sent as a varint: no limit (Python: HasField false).
    assert_eq!(decode_response(&[0x12, 0x02, 0x10, 0x05]), Ok(answer(Code::Unknown, None, None, None)));
    // statuses sent as a fixed32: no status.
    let bytes = [tag(2, I32), vec![0x10, 0x05, 0x18, 0x05]].concat();
    assert_eq!(decode_response(&bytes), Ok(answer(Code::Unknown, None, None, None)));
    // limit_remaining and requests_per_unit sent length-delimited.
    let bytes = ld(2, &[ld(3, &[0x05]), ld(2, &ld(1, &[0x05]))].concat());
    assert_eq!(decode_response(&bytes), Ok(answer(Code::Unknown, Some((0, Unit::Unknown)), Some(0), None)));
}

#[test]
fn decode_skips_groups_nested_up_to_the_limit() {
    // Python protobuf accepts 100 nested groups and rejects 101.
    let nested = |n: usize| [vec![0x4b; n], vec![0x4c; n], vec![0x08, 0x01]].concat(); // field 9 SGROUP / EGROUP
    assert_eq!(MAX_DEPTH, 100);
    assert_eq!(decode_response(&nested(1)).map(|a| a.code), Ok(Code::Ok));
    assert_eq!(decode_response(&nested(MAX_DEPTH)).map(|a| a.code), Ok(Code::Ok));
    assert!(decode_response(&nested(MAX_DEPTH + 1)).is_err());
    assert!(decode_response(&nested(100_000)).is_err());
}

// ---------------------------------------------------------------------------
// Decoding: invalid input

#[test]
fn decode_rejects_every_truncation() {
    // OVER_LIMIT is three top-level fields ending at bytes 2, 31 and 37; cut
    // anywhere else, a field is incomplete.
    assert_eq!(OVER_LIMIT.len(), 37);
    for n in 0..OVER_LIMIT.len() {
        let cut = decode_response(&OVER_LIMIT[..n]);
        if [0, 2, 31].contains(&n) {
            assert!(cut.is_ok(), "prefix {n}: {cut:?}");
        } else {
            assert!(cut.is_err(), "prefix {n}: {cut:?}");
        }
    }
    // Likewise inside a status, a limit and a duration re-wrapped with their
    // cut length: only a cut between two of their fields decodes.
    let limit = [vi(1, 1000), ld(3, b"x")].concat(); // fields end at 3, 6
    let duration = [vi(1, 300), vi(2, 1)].concat(); // fields end at 3, 5
    let status = [vi(1, 2), ld(2, &limit), vi(3, 300), ld(4, &duration)].concat(); // fields end at 2, 10, 13, 20
    assert_eq!((limit.len(), duration.len(), status.len()), (6, 5, 20));
    type Wrap = fn(&[u8]) -> Vec<u8>;
    let cases: [(&[u8], &[usize], Wrap); 3] = [
        (&status, &[0, 2, 10, 13], |b| ld(2, b)),
        (&limit, &[0, 3], |b| ld(2, &ld(2, b))),
        (&duration, &[0, 3], |b| ld(2, &ld(4, b))),
    ];
    for (inner, boundaries, wrap) in cases {
        for n in 0..inner.len() {
            let cut = decode_response(&wrap(&inner[..n]));
            assert_eq!(cut.is_ok(), boundaries.contains(&n), "{inner:02x?} cut at {n}: {cut:?}");
        }
    }
}

#[test]
fn decode_rejects_malformed_wire_data() {
    let bad: [(&str, Vec<u8>); 18] = [
        ("truncated varint", vec![0x08, 0x80]),
        ("truncated tag", vec![0x80]),
        ("11-byte varint", vec![0x08, 0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
        ("tag of 2^32", vec![0x80, 0x80, 0x80, 0x80, 0x10, 0x00]),
        // Read as 32 bits, these would be the tag 0x08 (overall_code) followed by 1.
        ("tag of 2^32 + 8", vec![0x88, 0x80, 0x80, 0x80, 0x10, 0x01]),
        ("tag of 2^63 + 8", vec![0x88, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 0x01]),
        ("field number 0", vec![0x00, 0x01]),
        ("field number 0, LEN", vec![0x02, 0x00]),
        ("wire type 6", vec![0x0e]),
        ("wire type 7", vec![0x0f, 0x00]),
        ("fixed64 short by one", [tag(9, I64), vec![0; 7]].concat()),
        ("fixed32 short by one", [tag(9, I32), vec![0; 3]].concat()),
        ("length past the end", vec![0x12, 0x05, 0x08, 0x01]),
        ("length of 2^64 - 1", [vec![0x12], varint(u64::MAX)].concat()),
        ("end group alone", vec![0x4c]),
        ("end group of another field", vec![0x4b, 0x54]),
        ("unterminated group", vec![0x4b, 0x50, 0x05]),
        ("nested group ended by the outer end", vec![0x4b, 0x53, 0x4c]),
    ];
    for (name, bytes) in bad {
        assert!(decode_response(&bytes).is_err(), "{name}");
        // The same field inside a status, a limit and a duration.
        let in_status = ld(2, &bytes);
        assert!(decode_response(&in_status).is_err(), "{name} in a status");
        assert!(decode_response(&ld(2, &ld(2, &bytes))).is_err(), "{name} in a limit");
        assert!(decode_response(&ld(2, &ld(4, &bytes))).is_err(), "{name} in a duration");
    }
}

#[test]
fn decode_rejects_a_limit_name_that_is_not_utf8() {
    // Python protobuf: "String field had bad UTF-8".
    assert!(decode_response(&[0x12, 0x05, 0x12, 0x03, 0x1a, 0x01, 0xff]).is_err());
    assert_eq!(
        decode_response(&[0x12, 0x05, 0x12, 0x03, 0x1a, 0x01, b'a']).map(|a| a.limit),
        Ok(Some((0, Unit::Unknown)))
    );
}

#[test]
fn decode_rejects_invalid_or_negative_durations() {
    let neg = |v: i64| v as u64; // int64/int32 negatives are 10-byte varints
    let bad: [(&str, Vec<u8>); 6] = [
        ("negative seconds", vi(1, neg(-1))),
        ("negative nanos", vi(2, neg(-1))),
        ("nanos of the other sign", [vi(1, 5), vi(2, neg(-1))].concat()),
        ("seconds over 10,000 years", vi(1, 315_576_000_001)),
        ("nanos of a whole second", vi(2, 1_000_000_000)),
        ("nanos over int32, truncated negative", vi(2, 0xffff_ffff)),
    ];
    for (name, duration) in bad {
        assert!(decode_response(&ld(2, &ld(4, &duration))).is_err(), "{name}");
        // In a later status too: every status is checked.
        let bytes = [ld(2, &[]), ld(2, &ld(4, &duration))].concat();
        assert!(decode_response(&bytes).is_err(), "{name} in statuses[1]");
    }
}

#[test]
fn decode_rejects_a_malformed_later_status() {
    let bytes = [OVER_LIMIT, &[0x12, 0x02, 0x08, 0x80]].concat();
    assert!(decode_response(&bytes).is_err());
    let bytes = [OVER_LIMIT, &[0x12, 0x02, 0x0e, 0x00]].concat();
    assert!(decode_response(&bytes).is_err());
}

// ---------------------------------------------------------------------------
// Random input


#[test]
fn random_bytes_and_mutations_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // Bytes biased towards tags and lengths that nest.
    const ALPHABET: &[u8] = &[0x08, 0x0a, 0x10, 0x12, 0x18, 0x1a, 0x22, 0x4b, 0x4c, 0x80, 0xff, 0x00, 0x01, 0x02];
    for _ in 0..20_000 {
        let n = rng.below(64);
        let bytes: Vec<u8> = (0..n)
            .map(|_| if rng.below(3) == 0 { rng.next() as u8 } else { ALPHABET[rng.below(ALPHABET.len())] })
            .collect();
        let _ = decode_response(&bytes);
        let mut mutated = OVER_LIMIT.to_vec();
        for _ in 0..=rng.below(3) {
            let i = rng.below(mutated.len());
            mutated[i] = rng.next() as u8;
        }
        let _ = decode_response(&mutated);
    }
}

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z:/_.-]{1,12}", "\\PC{0,200}"]
}

fn arb_descriptors() -> impl Strategy<Value = Vec<Vec<(String, String)>>> {
    prop::collection::vec(prop::collection::vec((arb_string(), arb_string()), 0..4), 0..4)
}

proptest! {
    #![proptest_config(pt_config())]

    /// Arbitrary bytes never panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_response(&bytes);
    }

    /// Every prefix and every single-byte change of a valid response never panics.
    #[test]
    fn prefixes_and_byte_flips_never_panic(i in 0usize..37, b in any::<u8>()) {
        let _ = decode_response(&OVER_LIMIT[..i]);
        let mut m = OVER_LIMIT.to_vec();
        m[i] = b;
        let _ = decode_response(&m);
    }

    /// What `encode_request` writes reads back (by a strict independent
    /// decoder) as what it was given, with no field and no default written twice.
    #[test]
    fn encoded_requests_read_back(domain in arb_string(), descriptors in arb_descriptors(), hits in any::<u32>()) {
        let ds: Vec<Descriptor> = descriptors.iter().map(|e| Descriptor { entries: e.clone() }).collect();
        let bytes = encode_request(&domain, &ds, hits);
        prop_assert_eq!(parse_request(&bytes), (domain.clone(), descriptors.clone(), hits));
        // Defaults omitted: the size is exactly that of the non-default fields.
        let len = |n: usize| varint(n as u64).len() + n;
        let mut size = if domain.is_empty() { 0 } else { 1 + len(domain.len()) };
        for e in &descriptors {
            let inner: usize = e.iter().map(|(k, v)| {
                let entry = if k.is_empty() { 0 } else { 1 + len(k.len()) } + if v.is_empty() { 0 } else { 1 + len(v.len()) };
                1 + len(entry)
            }).sum();
            size += 1 + len(inner);
        }
        size += if hits == 0 { 0 } else { 1 + varint(u64::from(hits)).len() };
        prop_assert_eq!(bytes.len(), size);
    }

    /// A response built field by field (with unknown fields interleaved)
    /// decodes to the answer it describes.
    #[test]
    fn built_responses_decode(
        code in 0u64..4,
        limit in prop::option::of((any::<u32>(), 0u64..8)),
        remaining in any::<u32>(),
        duration in prop::option::of((0i64..=315_576_000_000, 0i32..1_000_000_000)),
        later in 0usize..3,
        noise in any::<bool>(),
    ) {
        let u = if noise { unknown_fields() } else { vec![] };
        let mut status = vec![];
        if let Some((rpu, unit)) = limit {
            let mut l = vec![];
            if rpu != 0 { l.extend(vi(1, u64::from(rpu))); }
            l.extend(u.clone());
            if unit != 0 { l.extend(vi(2, unit)); }
            status.extend(ld(2, &l));
        }
        if remaining != 0 { status.extend(vi(3, u64::from(remaining))); }
        status.extend(u.clone());
        if let Some((s, n)) = duration {
            let mut dur = vec![];
            if s != 0 { dur.extend(vi(1, s as u64)); }
            if n != 0 { dur.extend(vi(2, n as u64)); }
            status.extend(ld(4, &dur));
        }
        let mut bytes = if code != 0 { vi(1, code) } else { vec![] };
        bytes.extend(u.clone());
        bytes.extend(ld(2, &status));
        for _ in 0..later { bytes.extend(ld(2, &[vi(1, 1), vi(3, 99), ld(2, &vi(1, 1))].concat())); }
        bytes.extend(u);

        let units = [Unit::Unknown, Unit::Second, Unit::Minute, Unit::Hour, Unit::Day, Unit::Month, Unit::Year, Unit::Unknown];
        let codes = [Code::Unknown, Code::Ok, Code::OverLimit, Code::Unknown];
        let expected = Answer {
            code: codes[code as usize],
            limit: limit.map(|(rpu, unit)| (rpu, units[unit as usize])),
            remaining: if limit.is_some() || remaining != 0 { Some(remaining) } else { None },
            reset_s: duration.map(|(s, n)| s as u64 + u64::from(n > 0)),
        };
        prop_assert_eq!(decode_response(&bytes), Ok(expected));
    }
}
