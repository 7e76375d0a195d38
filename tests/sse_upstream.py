"""A scripted SSE backend and gateway for tests/test_leaks_sse_lenient_json.py."""
import sys, json, time, gzip
import pytest
from harness import Envoy, Handler, _Server, Key, claims, envoy_binaries

ISS = "https://ci.test"
EMAIL = "jane.doe@example.com"


def chunk(content=None, finish=None, extra=None, field="content", index=0):
    c = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": index, "delta": ({field: content} if content is not None else {}), "finish_reason": finish}]}
    if extra:
        c.update(extra)
    return c


class RawBackend(_Server):
    """path -> (status, [(header, value)], [body parts] or bytes, chunked?)"""

    def __init__(self):
        self.routes = {}
        outer = self

        class H(Handler):
            def _any(self):
                self.read_body()
                r = outer.routes.get(self.path.split("?")[0])
                if r is None:
                    self.reply(404, b"no", "text/plain")
                    return
                status, headers, parts, chunked = r
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                if chunked:
                    self.send_header("transfer-encoding", "chunked")
                else:
                    self.send_header("content-length", str(sum(len(p) for p in parts)))
                self.end_headers()
                for p in parts:
                    if chunked:
                        self.wfile.write(f"{len(p):x}\r\n".encode() + p + b"\r\n")
                    else:
                        self.wfile.write(p)
                    self.wfile.flush()
                    time.sleep(0.005)
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            do_GET = do_POST = _any

        _Server.__init__(self, lambda _: H)


def make_gw(envoy_bin, mask=None):
    key = Key("ES256", "k1")
    be = RawBackend()
    pol = {"providers": [{"name": "ci", "issuer": ISS, "audiences": ["nhi-gate"], "jwks": {"keys": [key.jwk]}}],
           "resources": [{"name": "llm", "path_prefix": "/", "read": {"any_of": ["readers"]},
                          "operations": [{"methods": ["POST"], "path_glob": "/**", "class": "read"}],
                          "mask": mask or {}}]}
    env = Envoy(envoy_bin, pol, be.port)
    token = key.sign(claims(ISS, ttl=900))
    return env, be, token


def sse(events, eol="\n"):
    return [f"data: {e if isinstance(e, str) else json.dumps(e)}{eol}{eol}".encode() for e in events]


def sdk_text(env, token, path="/v1/chat/completions"):
    import openai
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{env.port}/v1", api_key=token, max_retries=0)
    out = ""
    for ev in client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True):
        for ch in ev.choices:
            out += ch.delta.content or ""
    return out
