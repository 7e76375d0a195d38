"""Attacks on the header and trailer rules, charsets and ranges that the filter
holds: trailers in mixed case or repeated, UTF-16 in a later stream chunk,
charset variants, 206 answers."""
import gzip, json, time
import pytest
from harness import raw
from leak_upstream import SECRET, auth_headers, stack_fixture, token

P = "/collections/docs/points/search"
EMAIL = "jane.doe@example.com"


stack = stack_fixture(trailers=True)


def test_trailers_mixed_case_and_duplicates(stack):
    env, up = stack
    t = token()
    data = (b"POST " + P.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + t.encode()
            + b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n"
            + b"API-Key: a\r\napi-key: b\r\nX-Nhi-Subject: root\r\nX-NHI-GROUPS: admins\r\nRange: bytes=0-1\r\nX-CI-Token: x\r\n\r\n")
    n = up.count
    raw(env.port, data)
    assert up.count == n + 1
    tr = [x.split(":", 1)[0].lower() for x in up.requests[-1]["trailers"]]
    assert not set(tr) & {"api-key", "x-nhi-subject", "x-nhi-groups", "range", "x-ci-token"}, tr


def _send(h, status, ctype, chunks, extra=()):
    h.send_response(status)
    h.send_header("content-type", ctype)
    for k, v in extra:
        h.send_header(k, v)
    h.send_header("transfer-encoding", "chunked")
    h.end_headers()
    for c in chunks:
        h.wfile.write(f"{len(c):x}\r\n".encode() + c + b"\r\n"); h.wfile.flush(); time.sleep(0.05)
    h.wfile.write(b"0\r\n\r\n")


def _get(env, up, f):
    up.respond = f
    try:
        return env.request("POST", P, auth_headers(), b"{}")
    except Exception as e:
        return 0, {}, str(e).encode()


@pytest.mark.parametrize("case", ["utf16_sse", "repeated_charset", "later_utf16_chunk", "json_utf16_bom", "partial_206", "gzip_json_cred"])
def test_held(stack, case):
    env, up = stack
    u16 = ("mail " + EMAIL).encode("utf-16-le")
    if case == "utf16_sse":
        f = lambda h, r: _send(h, 200, "text/event-stream; charset=utf-16", [("data: " + EMAIL + "\n\n").encode("utf-16-le")])
    elif case == "repeated_charset":
        f = lambda h, r: _send(h, 200, "text/plain; charset=utf-8; charset=utf-16", [u16])
    elif case == "later_utf16_chunk":
        f = lambda h, r: _send(h, 200, "text/plain", [b"hello " * 40, u16, b" bye " * 40])
    elif case == "json_utf16_bom":
        f = lambda h, r: h.reply(200, json.dumps({"m": EMAIL}).encode("utf-16"))
    elif case == "partial_206":
        f = lambda h, r: h.reply(206, b"mail " + EMAIL.encode(), ctype="text/plain")
    else:
        def f(h, r):
            b = gzip.compress(json.dumps({"h": r["headers"]}).encode())
            h.send_response(200); h.send_header("content-type", "application/json"); h.send_header("content-encoding", "gzip")
            h.send_header("content-length", str(len(b))); h.end_headers(); h.wfile.write(b)
    code, h, body = _get(env, up, f)
    assert EMAIL.encode() not in body and u16 not in body and SECRET.encode() not in body, (code, body[:200])
