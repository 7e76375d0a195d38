"""Attack (fixed): request trailers are not filtered. With trailers kept end to end
(the harness's / README's `enable_trailers` setup, and by default whenever the
upstream speaks HTTP/2, as in an Istio mesh), a job's chunked request can end
with trailers `x-nhi-subject`, `x-nhi-groups`, the backend credential header
(`api-key`), a method override, or its own `authorization` - all of which
the filter strips or sets in the request headers - and they reach the
upstream unchanged.

Expected: the same header rules apply to request trailers (drop `x-nhi-*`,
method overrides, the token headers and the `upstream_headers` names), or a
request with such trailers is refused."""
import pytest
from harness import raw
from leak_upstream import SECRET, stack_fixture, token

P = "/collections/docs/points/search"
BAD = ("authorization", "x-nhi-subject", "x-nhi-groups", "api-key", "x-http-method-override")


stack = stack_fixture(trailers=True)


def test_request_trailers_cannot_spoof_identity_or_carry_token(stack):
    env, up = stack
    t = token()
    data = (b"POST " + P.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + t.encode()
            + b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n"
            + b"authorization: Bearer " + t.encode() + b"\r\nx-nhi-subject: root\r\nx-nhi-groups: admins\r\n"
            + b"api-key: client-chosen-key\r\nx-http-method-override: DELETE\r\n\r\n")
    n = up.count
    out = raw(env.port, data)
    assert up.count == n + 1, out[:200]
    seen = up.requests[-1]
    assert seen["headers"]["api-key"] == [SECRET]
    bad = [tr for tr in seen["trailers"] if tr.split(":", 1)[0].strip().lower() in BAD]
    assert not bad, f"request trailers reached the upstream unfiltered: {[b[:60] for b in bad]}"
