"""token_repeated: the verified token must not reach the backend by any other route."""
import urllib.parse
import pytest
from harness import raw
from leak_upstream import stack_fixture, token

P = "/collections/docs/points/search"


stack = stack_fixture(trailers=True)


def _forwarded(up, n, t, variants=()):
    if up.count == n:
        return False
    seen = up.requests[-1]
    hay = seen["path"] + seen["raw_headers"] + "\n".join(seen["trailers"]) + seen["body"].decode("latin-1")
    return any(v in hay for v in (t, *variants))


def test_token_in_request_trailer(stack):
    """Trailers follow the header rules by name only; token_repeated is not applied to them."""
    env, up = stack
    t = token()
    data = (b"POST " + P.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + t.encode()
            + b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n"
            + b"cookie: session=" + t.encode() + b"\r\nx-forwarded-token: " + t.encode() + b"\r\n\r\n")
    n = up.count
    out = raw(env.port, data)
    assert not _forwarded(up, n, t), f"token reached the backend in request trailers: {up.requests[-1]['trailers']}"


@pytest.mark.parametrize("where", ["cookie", "query"])
def test_token_percent_encoded(stack, where):
    """`.` written as %2E: a cookie parser that percent-decodes (Express cookie-parser,
    PHP $_COOKIE) or any query parser gets the exact token back."""
    env, up = stack
    t = token()
    enc = t.replace(".", "%2E")
    h = [("authorization", "Bearer " + t)]
    path = P
    if where == "cookie":
        h.append(("cookie", "session=" + enc))
    else:
        path = P + "?access_token=" + enc
    n = up.count
    code, _, body = env.request("POST", path, h, b"{}")
    if up.count == n:
        return
    seen = up.requests[-1]
    decoded = urllib.parse.unquote(seen["path"] + seen["raw_headers"])
    assert t not in decoded, f"token (percent-encoded) forwarded via {where} ({code})"
