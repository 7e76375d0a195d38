"""Shared parts of the response-leak tests (tests/test_leaks_*.py): an upstream
that records requests (trailers included) and answers as each test scripts it
(by default a JSON echo of the request headers, like a debug endpoint), the
policy with a backend credential in `upstream_headers` (raw-socket sends:
harness.raw)."""
import json

import harness
import pytest
from harness import Envoy, Key, claims

ISS = "https://ci.test"
SECRET = "backend-secret-0123456789"


class Echo(harness.Upstream):
    """Upstream that records requests, also their raw header block and trailers,
    and serves more methods; `respond(handler, req)` answers (default: JSON echo
    of the headers)."""

    METHODS = harness.Upstream.METHODS + ("TRACE", "PROPFIND", "CONNECT", "PURGE")

    def __init__(self):
        self.respond = None
        super().__init__()

    def record(self, handler):
        req = super().record(handler)
        req.update(raw_headers=str(handler.headers), trailers=handler.trailers)
        return req

    def answer(self, handler, req):
        if self.respond:
            self.respond(handler, req)
        else:
            handler.reply(200, json.dumps({"headers": req["headers"], "path": handler.path}).encode())


def policy(extra_resources=(), mask=True):
    res = [
        {"name": "vectors", "path_prefix": "/collections",
         "operations": [{"methods": ["POST"], "path_glob": "/collections/*/points/search", "class": "read"}],
         "read": {"any_of": ["readers"]}, "write": {"any_of": ["writers"]},
         "upstream_headers": {"api-key": SECRET}, "identity_headers": True,
         **({"mask": {}} if mask else {})},
        {"name": "llm", "path_prefix": "/v1/",
         "read": {"any_of": ["readers"]}, "write": {"any_of": ["readers"]},
         "upstream_headers": {"authorization": "Bearer " + SECRET},
         **({"mask": {}} if mask else {})},
        *extra_resources,
    ]
    return {
        "realm": "t",
        "providers": [{"name": "ci", "issuer": ISS, "audiences": ["nhi-gate"], "max_lifetime_seconds": 900,
                       "token_header": "x-ci-token", "jwks": {"keys": []}}],
        "resources": res,
    }


_KEY = None


def key():
    global _KEY
    if _KEY is None:
        _KEY = Key("ES256", "es-1")
    return _KEY


def make_stack(envoy_bin, mask=True, extra_resources=(), **render):
    k = key()
    p = policy(extra_resources, mask)
    p["providers"][0]["jwks"] = {"keys": [k.jwk]}
    up = Echo()
    env = Envoy(envoy_bin, p, up.port, **render)
    return env, up


def stack_fixture(respond=None, **render):
    """A module-scoped `stack` fixture: (Envoy, Echo upstream) from
    `make_stack`; `respond` scripts the upstream's answers."""
    @pytest.fixture(scope="module")
    def stack(envoy_bin):
        env, up = make_stack(envoy_bin, **render)
        if respond:
            up.respond = respond
        yield env, up
        env.stop()
        up.close()
    return stack


def token(groups=("readers",), **kw):
    return key().sign(claims(ISS, groups=groups, **kw))


def auth_headers():
    """The authorization header of a fresh reader token, as a request header list."""
    return [("authorization", "Bearer " + token())]
