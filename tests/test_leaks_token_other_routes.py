"""Attack (fixed): the verified bearer token reaches the upstream when the job also puts
it somewhere the filter does not read - `Proxy-Authorization`, a cookie, or
the RFC 6750 §2.3 `access_token` query parameter (which the audit record
already redacts as token-like, so the filter knows the pattern). The README
promises the job's token is stripped; the filter holds the exact token
string, so it could drop any header holding it and refuse (or strip) such a
query value.

Expected: the exact token string never appears in what the upstream gets."""
import pytest
from leak_upstream import stack_fixture, token

P = "/collections/docs/points/search"


stack = stack_fixture()


@pytest.mark.parametrize("where", ["proxy-authorization", "cookie", "query"])
def test_token_never_forwarded(stack, where):
    env, up = stack
    t = token()
    h = [("authorization", "Bearer " + t)]
    path = P
    if where == "proxy-authorization":
        h.append(("proxy-authorization", "Bearer " + t))
    elif where == "cookie":
        h.append(("cookie", "session=" + t))
    else:
        path = P + "?access_token=" + t
    n = up.count
    code, _, _ = env.request("POST", path, h, b"{}")
    if up.count == n:
        return  # refused: fine
    seen = up.requests[-1]
    assert t not in seen["path"] and t not in seen["raw_headers"], f"token forwarded via {where} ({code})"
