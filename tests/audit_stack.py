"""A scripted upstream and an approval-held, masked gateway for
tests/test_leaks_audit_truth.py."""
import json, socket, time, sys
import harness
from harness import Envoy, FakeApprovals, Handler, _Server, claims

ISS = "https://ci.test"
BACKEND_KEY = "backend-secret-key-0042"
EMAIL = "jane.doe@example.com"


class Backend(_Server):
    def __init__(self):
        self.hits = []
        outer = self

        class H(Handler):
            def _any(self):
                body = self.read_body()
                outer.hits.append((self.command, self.path, body))
                p = self.path
                if "/nul" in p:  # streamed text with NUL (UTF-16), chunked
                    self.send_response(200)
                    self.send_header("content-type", "text/plain")
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    d = "hello world".encode("utf-16-le")
                    self.wfile.write(f"{len(d):x}\r\n".encode() + d + b"\r\n0\r\n\r\n")
                    return
                if "/tailreset" in p:  # streamed text ending with trailers
                    self.send_response(200)
                    self.send_header("content-type", "text/plain")
                    self.send_header("transfer-encoding", "chunked")
                    self.send_header("trailer", "x-t")
                    self.end_headers()
                    d = b"some text that is held back"
                    self.wfile.write(f"{len(d):x}\r\n".encode() + d + b"\r\n0\r\nx-t: 1\r\n\r\n")
                    return
                if "/upreset" in p:  # upstream dies mid-body
                    self.send_response(200)
                    self.send_header("content-type", "text/plain")
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    d = b"x" * 300
                    self.wfile.write(f"{len(d):x}\r\n".encode() + d + b"\r\n")
                    self.wfile.flush()
                    time.sleep(0.2)
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if "/credhdr" in p:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("x-echo", f"key={BACKEND_KEY}")
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                if "/html" in p:
                    self.reply(200, b"<p>" + EMAIL.encode() + b"</p>", "text/html")
                    return
                if "/utf16" in p:
                    self.reply(200, "hi".encode("utf-16"), "text/plain; charset=utf-16")
                    return
                if "/partial" in p:
                    self.send_response(206)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-range", "bytes 0-1/10")
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                if "/sse" in p:
                    events = [{"choices": [{"index": 0, "delta": {"content": "Hello "}}]},
                              {"choices": [{"index": 0, "delta": {"content": "x"}}], "n": float("nan")}]
                    self.send_response(200)
                    self.send_header("content-type", "text/event-stream")
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    for e in [b'data: {"choices":[{"index":0,"delta":{"content":"Hello "}}]}\n\n',
                              b'data: {"choices":[{"index":0,"delta":{"content":"x"}}],"n":NaN}\n\n',
                              b"data: [DONE]\n\n"]:
                        self.wfile.write(f"{len(e):x}\r\n".encode() + e + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                    return
                if "/bigjson" in p:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    body = json.dumps({"d": ["a" * 1000] * 1600}).encode()
                    for i in range(0, len(body), 65536):
                        c = body[i:i + 65536]
                        self.wfile.write(f"{len(c):x}\r\n".encode() + c + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                    return
                if "/slowjson" in p:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    c = b'{"a":"' + EMAIL.encode() + b'",'
                    self.wfile.write(f"{len(c):x}\r\n".encode() + c + b"\r\n")
                    self.wfile.flush()
                    time.sleep(2)
                    c = b'"b":1}'
                    self.wfile.write(f"{len(c):x}\r\n".encode() + c + b"\r\n0\r\n\r\n")
                    return
                if "/slow" in p:
                    time.sleep(3)
                self.reply(200, json.dumps({"doc": f"contact {EMAIL}", "ok": True}).encode())

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any

        super().__init__(lambda _: H)


def policy(jwk, hold_seconds=2):
    return {
        "providers": [{"name": "ci", "issuer": ISS, "audiences": ["nhi-gate"], "jwks": {"keys": [jwk]}}],
        "resources": [
            {"name": "docs", "path_prefix": "/docs", "read": {"any_of": ["readers"]}, "write": {"any_of": ["writers"]},
             "upstream_headers": {"api-key": BACKEND_KEY}, "mask": {},
             "approval": {"cluster": "approvals", "hold_seconds": hold_seconds, "timeout_ms": 1000}},
            {"name": "llm", "path_prefix": "/v1/", "read": {"any_of": ["readers"]},
             "operations": [{"methods": ["POST"], "path_glob": "/v1/**", "class": "read"}],
             "quota": {"key": "sub", "tokens": 100000, "window": "minute"},
             "upstream_headers": {"authorization": f"Bearer {BACKEND_KEY}"}, "mask": {}},
        ],
    }


def tok(keys, groups=("readers",), sub="ci-job"):
    return keys["es"].sign(claims(ISS, sub=sub, groups=groups))


def A(t):
    return [("authorization", f"Bearer {t}")]


def raw(port, data, timeout=5, read=True):
    """harness.raw, a socket error (a timeout too) marked in the answer."""
    return harness.raw(port, data, timeout, read, mark_errors=True)


def record_for(env, path, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        recs = [r for r in env.audit_records() if r["path"] == path]
        if recs:
            return recs
        time.sleep(0.1)
    return []
