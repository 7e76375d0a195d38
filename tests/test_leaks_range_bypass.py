"""Attack (fixed): HTTP Range requests (RFC 9110 §14) skip response masking.

The filter forwards the job's `Range` header untouched and masks whatever
206 answer comes back like a whole body. Any range-capable backend (static
document stores, object stores, most file-serving frameworks) then lets a
job with read access get unmasked personal data:

1. two ranges -> `multipart/byteranges`, a type not in `content_types`,
   so the whole document passes unmasked;
2. one value split across two single-range requests (`bytes=0-45`,
   `bytes=46-`): no half is a detectable value;
3. a range covering only the digits of a card inside a JSON string: the
   206 body `4111111111111111` is valid JSON (a number), and numbers are
   not masked.

Expected: no personal data reaches the job - e.g. the filter drops
`Range`/`If-Range` on masked resources (the upstream then answers 200 with
the whole body, which is masked), or refuses 206 answers (502)."""
import json
import pytest
from leak_upstream import stack_fixture, token

DOC_T = b"Customer record: Alice Smith, alice.smith@example.com, card 4111 1111 1111 1111, SSN 219-09-9999.\n"
DOC_J = json.dumps({"name": "Alice Smith", "email": "alice.smith@example.com", "card": "4111111111111111"}).encode()
SECRETS = [b"alice.smith@example.com", b"4111 1111 1111 1111", b"4111111111111111", b"219-09-9999"]


def ranged(doc, ctype):
    """A range-capable backend (single and multiple byte ranges)."""
    def f(h, req):
        r = h.headers.get("range")
        if not r:
            return h.reply(200, doc, ctype)
        specs = []
        for s in r.split("=", 1)[1].split(","):
            a, _, b = s.strip().partition("-")
            specs.append((int(a), min(int(b) if b else len(doc) - 1, len(doc) - 1)))
        if len(specs) == 1:
            a, b = specs[0]
            part = doc[a:b + 1]
            h.send_response(206)
            h.send_header("content-type", ctype)
            h.send_header("content-range", f"bytes {a}-{b}/{len(doc)}")
            h.send_header("content-length", str(len(part)))
            h.end_headers()
            h.wfile.write(part)
            return
        body = b""
        for a, b in specs:
            body += (b"--BND\r\nContent-Type: " + ctype.encode() + f"\r\nContent-Range: bytes {a}-{b}/{len(doc)}\r\n\r\n".encode()
                     + doc[a:b + 1] + b"\r\n")
        body += b"--BND--\r\n"
        h.reply(206, body, "multipart/byteranges; boundary=BND")
    return f


stack = stack_fixture()


def get(env, rng):
    h = [("authorization", "Bearer " + token())] + ([("range", rng)] if rng else [])
    return env.request("GET", "/collections/docs/points/1", h)


def test_whole_document_is_masked(stack):
    env, up = stack
    up.respond = ranged(DOC_T, "text/plain")
    code, _, body = get(env, None)
    assert code == 200 and b"[EMAIL]" in body and not any(s in body for s in SECRETS)


def test_multi_range_multipart_byteranges_passes_unmasked(stack):
    env, up = stack
    up.respond = ranged(DOC_T, "text/plain")
    code, headers, body = get(env, "bytes=0-40,41-200")
    # the second part alone holds the whole card number and the SSN
    leaked = [s for s in SECRETS if s in body]
    assert not leaked, f"{code} {headers.get('content-type')}: {body!r}"


def test_value_split_across_two_ranges(stack):
    env, up = stack
    up.respond = ranged(DOC_T, "text/plain")
    c1, _, b1 = get(env, "bytes=0-45")
    c2, _, b2 = get(env, "bytes=46-")
    joined = (b1 if c1 in (200, 206) else b"") + (b2 if c2 in (200, 206) else b"")
    assert b"alice.smith@example.com" not in joined, f"{c1} {b1!r} + {c2} {b2!r}"


def test_json_number_shaped_range(stack):
    env, up = stack
    up.respond = ranged(DOC_J, "application/json")
    i = DOC_J.index(b"4111")
    code, _, body = get(env, f"bytes={i}-{i + 15}")
    assert b"4111111111111111" not in body, f"{code}: {body!r}"
