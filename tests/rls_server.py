"""A conforming Envoy rate-limit service (RLS v3) for the end-to-end tests.

Serves `/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` over
gRPC (grpcio only: a generic handler on raw bytes, with its own small proto3
wire decoder of `RateLimitRequest` and encoder of `RateLimitResponse`; no
generated code, no protobuf package). Field numbers, from
https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ratelimit/v3/rls.proto:

    RateLimitRequest    { string domain = 1; repeated RateLimitDescriptor descriptors = 2; uint32 hits_addend = 3; }
    RateLimitDescriptor { repeated Entry entries = 1; }    Entry { string key = 1; string value = 2; }
    RateLimitResponse   { Code overall_code = 1; repeated DescriptorStatus statuses = 2; }
    DescriptorStatus    { Code code = 1; RateLimit current_limit = 2; uint32 limit_remaining = 3;
                          google.protobuf.Duration duration_until_reset = 4; }
    RateLimit           { uint32 requests_per_unit = 1; Unit unit = 2; }
    Duration            { int64 seconds = 1; int32 nanos = 2; }

Semantics as envoyproxy/ratelimit's fixed-window cache: one counter per
(domain, descriptor entries), the window aligned to the Unix epoch; each call
adds `hits_addend` (0 or absent: 1) to the counter of every descriptor, the
hits being counted even when over the limit; a descriptor is OVER_LIMIT when
its counter after adding exceeds the limit, the overall code OVER_LIMIT when
any is. statuses[i] answers descriptors[i] with current_limit, limit_remaining
(0 when over) and duration_until_reset (whole seconds to the window's end).
An empty domain or descriptor list is refused with INVALID_ARGUMENT, as
envoyproxy/ratelimit refuses it; so is a request that does not decode.

Binds 127.0.0.1 only, on a free port.
"""
import threading
import time
from concurrent import futures

import grpc

SERVICE = "envoy.service.ratelimit.v3.RateLimitService"
METHOD = "ShouldRateLimit"
PATH = f"/{SERVICE}/{METHOD}"

UNKNOWN, OK, OVER_LIMIT = 0, 1, 2
# RateLimitResponse.RateLimit.Unit for the window lengths it can name.
UNITS = {1: 1, 60: 2, 3600: 3, 86400: 4}  # SECOND, MINUTE, HOUR, DAY

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5


# ---------------------------------------------------------------------------
# proto3 wire format


class WireError(ValueError):
    pass


def _varint(buf, pos):
    value = 0
    for i in range(10):
        if pos >= len(buf):
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << (7 * i)
        if b < 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, pos
    raise WireError("varint longer than 10 bytes")


def fields(buf):
    """Yields (field number, wire type, value) of a message: an int for
    VARINT, bytes for LEN, I64 and I32, None for a (skipped) group."""
    buf = bytes(buf)
    pos = 0
    groups = []
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if field == 0 or tag > 0xFFFFFFFF:
            raise WireError("invalid tag")
        if wire == VARINT:
            value, pos = _varint(buf, pos)
        elif wire in (I64, I32, LEN):
            if wire == LEN:
                n, pos = _varint(buf, pos)
            else:
                n = 8 if wire == I64 else 4
            if pos + n > len(buf):
                raise WireError("truncated field")
            value, pos = buf[pos:pos + n], pos + n
        elif wire == SGROUP:
            groups.append(field)
            if len(groups) > 100:
                raise WireError("groups nested too deep")
            continue
        elif wire == EGROUP:
            if not groups or groups.pop() != field:
                raise WireError("unmatched end of group")
            if not groups:
                yield field, SGROUP, None
            continue
        else:
            raise WireError(f"invalid wire type {wire}")
        if not groups:
            yield field, wire, value
    if groups:
        raise WireError("unterminated group")


def _string(b):
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError as e:
        raise WireError("string is not UTF-8") from e


def decode_request(buf):
    """RateLimitRequest → {"domain", "descriptors": [[(key, value), ...], ...],
    "hits_addend"} (hits_addend as sent: 0 when absent). Unknown fields, and
    known numbers with another wire type, are skipped as protobuf does."""
    req = {"domain": "", "descriptors": [], "hits_addend": 0}
    for field, wire, value in fields(buf):
        if (field, wire) == (1, LEN):
            req["domain"] = _string(value)
        elif (field, wire) == (2, LEN):
            entries = []
            for f, w, entry in fields(value):
                if (f, w) == (1, LEN):
                    key = val = ""
                    for f2, w2, s in fields(entry):
                        if (f2, w2) == (1, LEN):
                            key = _string(s)
                        elif (f2, w2) == (2, LEN):
                            val = _string(s)
                    entries.append((key, val))
            req["descriptors"].append(entries)
        elif (field, wire) == (3, VARINT):
            req["hits_addend"] = value & 0xFFFFFFFF
    return req


def varint(v):
    v &= 0xFFFFFFFFFFFFFFFF  # negative int64/int32: two's complement, 10 bytes
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def vi(field, v):
    """A varint field, omitted when 0 (the proto3 default)."""
    return varint(field << 3 | VARINT) + varint(v) if v else b""


def ld(field, b):
    """A length-delimited field (always written: repeated or message)."""
    return varint(field << 3 | LEN) + varint(len(b)) + b


def encode_status(code, limit=None, unit=UNKNOWN, remaining=0, reset_s=None):
    """DescriptorStatus: `limit` None for no current_limit, `reset_s` None for
    no duration_until_reset."""
    out = vi(1, code)
    if limit is not None:
        out += ld(2, vi(1, limit) + vi(2, unit))
    out += vi(3, remaining)
    if reset_s is not None:
        out += ld(4, vi(1, reset_s))
    return out


def encode_response(overall_code, statuses=()):
    """RateLimitResponse from the code and encoded statuses."""
    return vi(1, overall_code) + b"".join(ld(2, s) for s in statuses)


def encode_request(domain, descriptors, hits_addend=0):
    """RateLimitRequest, for the self-test and for tests calling the server."""
    out = ld(1, domain.encode()) if domain else b""
    for entries in descriptors:
        d = b""
        for key, value in entries:
            entry = (ld(1, key.encode()) if key else b"") + (ld(2, value.encode()) if value else b"")
            d += ld(1, entry)
        out += ld(2, d)
    return out + vi(3, hits_addend)


def decode_response(buf):
    """RateLimitResponse → {"overall_code", "statuses": [{"code", "limit",
    "unit", "remaining", "reset_s"}]} ("limit"/"reset_s" None when absent)."""
    resp = {"overall_code": UNKNOWN, "statuses": []}
    for field, wire, value in fields(buf):
        if (field, wire) == (1, VARINT):
            resp["overall_code"] = value
        elif (field, wire) == (2, LEN):
            st = {"code": UNKNOWN, "limit": None, "unit": UNKNOWN, "remaining": 0, "reset_s": None}
            for f, w, v in fields(value):
                if (f, w) == (1, VARINT):
                    st["code"] = v
                elif (f, w) == (2, LEN):
                    st["limit"] = st["limit"] or 0
                    for f2, w2, v2 in fields(v):
                        if (f2, w2) == (1, VARINT):
                            st["limit"] = v2 & 0xFFFFFFFF
                        elif (f2, w2) == (2, VARINT):
                            st["unit"] = v2
                elif (f, w) == (3, VARINT):
                    st["remaining"] = v & 0xFFFFFFFF
                elif (f, w) == (4, LEN):
                    st["reset_s"] = st["reset_s"] or 0
                    for f2, w2, v2 in fields(v):
                        if (f2, w2) == (1, VARINT):
                            st["reset_s"] = v2 - (1 << 64) if v2 >> 63 else v2
            resp["statuses"].append(st)
    return resp


# ---------------------------------------------------------------------------
# The server


class RlsServer:
    """`limit` hits per descriptor per fixed window of `unit_seconds`.

    - `.port`: the loopback port it serves gRPC on;
    - `.calls`: every request received, decoded (see `decode_request`), in order;
    - `.counters`: {(domain, ((key, value), ...)): hits counted in the window
      of that descriptor's last call};
    - `.close()`: stops it (idempotent); new calls then fail to connect.

    Windows are aligned to the epoch as in envoyproxy/ratelimit, so a test
    running across a window's end sees its counters reset; `clock` (seconds
    since the epoch, `time.time` by default) lets a test pin the time.
    """

    def __init__(self, limit, unit_seconds=60, clock=time.time):
        if unit_seconds <= 0:
            raise ValueError("unit_seconds must be positive")
        self.limit = limit
        self.unit_seconds = unit_seconds
        self.clock = clock
        self.calls = []
        self.counters = {}
        self._windows = {}
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        identity = lambda b: b  # noqa: E731 (raw protobuf bytes both ways)
        handler = grpc.unary_unary_rpc_method_handler(
            self._should_rate_limit, request_deserializer=identity, response_serializer=identity)
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        if not self.port:
            raise RuntimeError("could not bind 127.0.0.1")
        self._server.start()
        self._closed = False

    def _should_rate_limit(self, request, context):
        try:
            req = decode_request(request)
        except WireError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed RateLimitRequest: {e}")
        with self._lock:
            self.calls.append(req)
        if not req["domain"]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "rate limit domain must not be empty")
        if not req["descriptors"]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "rate limit descriptor list must not be empty")
        hits = req["hits_addend"] or 1
        now = int(self.clock())
        window = now - now % self.unit_seconds
        reset_s = window + self.unit_seconds - now
        overall = OK
        statuses = []
        with self._lock:
            for entries in req["descriptors"]:
                key = (req["domain"], tuple(entries))
                if self._windows.get(key) != window:
                    self._windows[key] = window
                    self.counters[key] = 0
                self.counters[key] += hits
                after = self.counters[key]
                code = OVER_LIMIT if after > self.limit else OK
                if code == OVER_LIMIT:
                    overall = OVER_LIMIT
                remaining = max(self.limit - after, 0)
                unit = UNITS.get(self.unit_seconds, UNKNOWN)
                statuses.append(encode_status(code, self.limit, unit, remaining, reset_s))
        return encode_response(overall, statuses)

    def close(self):
        if not self._closed:
            self._closed = True
            self._server.stop(grace=None).wait()


def _self_test():
    if 60 - time.time() % 60 < 5:  # keep clear of a window's end
        time.sleep(6)
    rls = RlsServer(limit=3, unit_seconds=60)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{rls.port}") as channel:
            call = channel.unary_unary(PATH, request_serializer=None, response_deserializer=None)
            descriptor = [("resource", "llm"), ("identity", "job-1")]

            def ask(hits, descriptors=(descriptor,), domain="nhi-gate"):
                return decode_response(call(encode_request(domain, list(descriptors), hits), timeout=5))

            first = ask(2)
            assert first["overall_code"] == OK, first
            (st,) = first["statuses"]
            assert (st["code"], st["limit"], st["unit"], st["remaining"]) == (OK, 3, 2, 1), st
            assert 1 <= st["reset_s"] <= 60, st
            # 2 + 2 > 3: over, and the hits still count.
            second = ask(2)
            assert second["overall_code"] == OVER_LIMIT, second
            assert [(s["code"], s["remaining"]) for s in second["statuses"]] == [(OVER_LIMIT, 0)], second
            assert rls.counters[("nhi-gate", tuple(descriptor))] == 4
            # hits_addend 0 (omitted) counts 1; another descriptor has its own
            # counter; one descriptor over makes the whole answer over.
            other = [("resource", "llm"), ("identity", "job-2")]
            both = ask(0, (other, descriptor))
            assert both["overall_code"] == OVER_LIMIT, both
            assert [(s["code"], s["remaining"]) for s in both["statuses"]] == [(OK, 2), (OVER_LIMIT, 0)], both
            assert rls.counters[("nhi-gate", tuple(other))] == 1
            # The same descriptor in another domain is another counter.
            assert ask(1, domain="other")["overall_code"] == OK
            assert [c["hits_addend"] for c in rls.calls] == [2, 2, 0, 1]
            assert rls.calls[2] == {"domain": "nhi-gate", "descriptors": [other, descriptor], "hits_addend": 0}
            # The bytes nhi_gate::rls::encode_request writes for two
            # descriptors (filter/tests/rls_tests.rs, TWO_DESCRIPTORS).
            rust = bytes.fromhex(
                "0a08 6e68692d67617465"  # domain = "nhi-gate"
                "1227"  # descriptors[0], 39 bytes:
                "0a0f 0a08 7265736f75726365 1203 726167"  # entry resource = rag
                "0a14 0a03 737562 120d 7265706f3a61636d652f617070"  # entry sub = repo:acme/app
                "1210 0a0e 0a06 74656e616e74 1204 61636d65"  # descriptors[1]: entry tenant = acme
                "1807")  # hits_addend = 7
            assert decode_request(rust) == {
                "domain": "nhi-gate",
                "descriptors": [[("resource", "rag"), ("sub", "repo:acme/app")], [("tenant", "acme")]],
                "hits_addend": 7}, decode_request(rust)
            # Refused: no domain, no descriptor, undecodable bytes.
            for raw in (encode_request("", [descriptor], 1), encode_request("d", [], 1), b"\x0a\x05ab"):
                try:
                    call(raw, timeout=5)
                    raise AssertionError(f"accepted {raw!r}")
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    finally:
        rls.close()
        rls.close()
    # Closed: calls fail.
    with grpc.insecure_channel(f"127.0.0.1:{rls.port}") as channel:
        try:
            channel.unary_unary(PATH)(encode_request("d", [[("k", "v")]]), timeout=2)
            raise AssertionError("a closed server answered")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e
    print("rls_server self-test: ok")


if __name__ == "__main__":
    _self_test()
