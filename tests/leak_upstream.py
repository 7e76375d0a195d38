"""Shared parts of the response-leak tests (tests/test_leaks_*.py): an upstream
that records requests (trailers included) and answers as each test scripts it
(by default a JSON echo of the request headers, like a debug endpoint), the
policy with a backend credential in `upstream_headers`, and raw-socket sends."""
import gzip, json, socket, sys, threading, time, os

import harness
import pytest
from harness import Envoy, Key, Handler, _Server, claims, free_port

ISS = "https://ci.test"
SECRET = "backend-secret-0123456789"


class Echo(_Server):
    """Upstream that records requests; `respond(handler, req)` answers (default: JSON echo of the headers)."""

    def __init__(self):
        self.requests = []
        self.respond = None
        self.lock = threading.Lock()
        outer = self

        def factory(_):
            class H(Handler):
                def read_body(self):
                    self.trailers = []
                    if self.headers.get("transfer-encoding", "").lower() == "chunked":
                        body = b""
                        while True:
                            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                            if size == 0:
                                while True:
                                    l = self.rfile.readline()
                                    if l in (b"\r\n", b"\n", b""):
                                        return body
                                    self.trailers.append(l.decode("latin-1").strip())
                            body += self.rfile.read(size)
                            self.rfile.readline()
                    n = int(self.headers.get("content-length") or 0)
                    return self.rfile.read(n) if n else b""

                def _any(self):
                    body = self.read_body()
                    hdrs = {}
                    for k, v in self.headers.items():
                        hdrs.setdefault(k.lower(), []).append(v)
                    req = {"method": self.command, "path": self.path, "headers": hdrs, "body": body,
                           "raw_headers": str(self.headers), "trailers": self.trailers}
                    with outer.lock:
                        outer.requests.append(req)
                    if outer.respond:
                        outer.respond(self, req)
                    else:
                        self.reply(200, json.dumps({"headers": hdrs, "path": self.path}).encode())

                do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_TRACE = do_PROPFIND = _any
                do_CONNECT = do_PURGE = _any

            return H

        super().__init__(factory)

    @property
    def count(self):
        with self.lock:
            return len(self.requests)


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


def raw(port, data: bytes, timeout=5, read_until_close=True):
    """Sends raw bytes, returns everything read until close/timeout."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    out = b""
    s.settimeout(timeout)
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    except socket.timeout:
        pass
    s.close()
    return out
