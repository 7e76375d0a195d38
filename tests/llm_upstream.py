"""A mock OpenAI/Anthropic-style LLM that records requests and answers with
scripted usage (JSON or SSE, optionally gzip), for the quota tests in
tests/test_leaks_quota_*.py."""
import sys
import gzip
import json

import pytest
import threading
import time
import uuid

from harness import Envoy, Handler, Key, _Server, claims

ISS = "https://ci.test"


class Llm(_Server):
    """Records every request body; answers by path:
    - */responses : OpenAI Responses API shape (usage, then user and the request's metadata echoed, as OpenAI does)
    - otherwise    : chat completion; usage = prompt 20 + completion COMPLETION*n (reasoning tokens are not in the body);
    gzip-encodes the answer when the request accepts gzip (as api.openai.com does)."""

    COMPLETION = 580

    def __init__(self):
        self.seen = []
        self.lock = threading.Lock()
        outer = self

        class H(Handler):
            def _any(self):
                raw = self.read_body()
                hdrs = {k.lower(): v for k, v in self.headers.items()}
                with outer.lock:
                    outer.seen.append({"path": self.path, "headers": hdrs, "body": raw})
                try:
                    req = json.loads(raw or b"{}")
                except Exception:
                    req = {}
                if not isinstance(req, dict):
                    req = {}
                n = req.get("n") or 1
                if req.get("stream"):
                    events = [{"choices": [{"index": 0, "delta": {"content": "ok"}}]}, {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
                    if (req.get("stream_options") or {}).get("include_usage"):
                        events.append({"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": outer.COMPLETION, "total_tokens": 20 + outer.COMPLETION}})
                    self.stream_sse(events)
                    return
                if self.path.endswith("/responses"):
                    out = {"id": "resp_1", "object": "response", "status": "completed", "model": "m",
                           "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]}],
                           "usage": {"input_tokens": 20, "output_tokens": outer.COMPLETION, "total_tokens": 20 + outer.COMPLETION,
                                     "output_tokens_details": {"reasoning_tokens": outer.COMPLETION - 1}},
                           "user": None, "metadata": req.get("metadata") or {}}
                else:
                    out = {"id": "c1", "object": "chat.completion", "model": "m",
                           "choices": [{"index": i, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"} for i in range(n)],
                           "usage": {"prompt_tokens": 20, "completion_tokens": outer.COMPLETION * n,
                                     "total_tokens": 20 + outer.COMPLETION * n,
                                     "completion_tokens_details": {"reasoning_tokens": (outer.COMPLETION - 1) * n}}}
                body = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                if "gzip" in hdrs.get("accept-encoding", "") or "always-gz" in self.path:
                    body = gzip.compress(body)
                    self.send_header("content-encoding", "gzip")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _any

        _Server.__init__(self, lambda _: H)


def uid(prefix="job"):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def post(st, sub, path, body: bytes, ctype="application/json", extra=()):
    """POSTs `body` through the `st` stack (see quota_fixture) with a token for
    `sub` in group llm; returns Envoy.request's (status, headers, body)."""
    env, llm, key = st
    tok = key.sign(claims(ISS, sub=sub, groups=("llm",)))
    return env.request("POST", path, [("authorization", f"Bearer {tok}"), ("content-type", ctype), *extra], body)


def quota_fixture(budget, llm_class=None):
    """A module-scoped `st` fixture: (Envoy, LLM, signing key) with one `/v1/`
    resource whose quota is `budget` tokens a day (`check_max_tokens` on)."""
    @pytest.fixture(scope="module")
    def st(envoy_bin):
        key = Key("ES256", "k1")
        llm = (llm_class or Llm)()
        pol = {
            "providers": [{"name": "ci", "issuer": ISS, "audiences": ["nhi-gate"], "jwks": {"keys": [key.jwk]}}],
            "resources": [
                {"name": "llm", "path_prefix": "/v1/", "read": {"any_of": ["llm"]},
                 "operations": [{"methods": ["POST"], "path_glob": "/v1/**", "class": "read"}],
                 "quota": {"tokens": budget, "window": "day", "check_max_tokens": True}},
            ],
        }
        env = Envoy(envoy_bin, pol, llm.port)
        yield env, llm, key
        env.stop()
        llm.close()
    return st
