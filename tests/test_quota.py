"""Token quotas inside real Envoy with 2 workers: concurrent streamed and
non-streamed chat completions from several identities; no request is admitted
once the budget is spent, and exactly the reported usage is debited (budgets
placed one token either side of what was used); 429 headers; a quota keyed by
a claim shared by two subjects; the max_tokens pre-check; window reset; the
audit record of each outcome."""
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import Envoy, Handler, _Server, claims

ISS = "https://ci.test"
PER_REQUEST = 30  # tokens the backend reports for every completion


class Llm(_Server):
    """OpenAI-compatible chat completions reporting PER_REQUEST tokens; an SSE
    stream carries usage only if the request asked (stream_options.include_usage)."""

    def __init__(self):
        self.bodies = []
        self.lock = threading.Lock()
        outer = self

        class H(Handler):
            def do_POST(self):
                req = json.loads(self.read_body() or b"{}")
                with outer.lock:
                    outer.bodies.append(req)
                usage = {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": PER_REQUEST}
                if "no-usage" in self.path:
                    self.reply(200, b'{"choices":[{"message":{"content":"no usage here"}}]}')
                    return
                if req.get("stream"):
                    events = [{"choices": [{"index": 0, "delta": {"content": "hi"}}], "usage": None}]
                    if (req.get("stream_options") or {}).get("include_usage"):
                        events.append({"choices": [], "usage": usage})
                    self.stream_sse(events, delay=0.05)
                    return
                time.sleep(0.05)
                self.reply(200, json.dumps({"choices": [{"message": {"content": "hi"}}], "usage": usage}).encode())

        _Server.__init__(self, lambda _: H)


def fresh_window(need_s=20):
    """Waits for the next minute when fewer than `need_s` seconds are left in
    this one: a test that spends a per-minute budget must not straddle windows."""
    left = 60 - time.time() % 60
    if left < need_s:
        time.sleep(left + 0.2)


def resource(name, quota):
    return {"name": name, "path_prefix": f"/{name}/", "read": {"any_of": ["llm-users"]},
            "operations": [{"methods": ["POST"], "path_glob": f"/{name}/**", "class": "read"}], "quota": quota}


@pytest.fixture(scope="module")
def stack(envoy_bin, keys):
    llm = Llm()
    pol = {
        "providers": [{"name": "ci", "issuer": ISS, "audiences": ["nhi-gate"], "jwks": {"keys": [keys["es"].jwk]}}],
        "resources": [
            resource("a", {"tokens": 4 * PER_REQUEST, "window": "minute"}),
            resource("b", {"key": "repository", "tokens": 4 * PER_REQUEST + 1, "window": "minute"}),
            resource("c", {"tokens": 50, "window": "minute", "check_max_tokens": True}),
            resource("d", {"tokens": 10_000, "requests": 2, "window": "minute"}),
            resource("e", {"tokens": 60, "window": "minute"}),
            resource("f", {"tokens": 10_000_000, "window": "minute"}),
            dict(resource("g", {"tokens": 10_000, "window": "minute", "check_max_tokens": True}), mask={"requests": "json"}),
        ],
    }
    env = Envoy(envoy_bin, pol, llm.port, concurrency=2)
    yield env, llm, keys
    env.stop()
    llm.close()


def chat(env, keys, path, sub, stream, repository=None, max_tokens=None):
    extra = {"repository": repository} if repository else {}
    tok = keys["es"].sign(claims(ISS, sub=sub, groups=("llm-users",), **extra))
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "stream": stream}
    if max_tokens:
        body["max_tokens"] = max_tokens
    return env.request("POST", path, [("authorization", f"Bearer {tok}"), ("content-type", "application/json")],
                       json.dumps(body).encode())


def round_of(env, keys, path, jobs):
    """Sends the (sub, stream, repository) jobs concurrently; returns their statuses and headers."""
    with ThreadPoolExecutor(len(jobs)) as ex:
        futs = [ex.submit(chat, env, keys, path, sub, stream, repo) for sub, stream, repo in jobs]
        return [f.result() for f in futs]


def test_spent_budget_admits_nothing_and_debits_exactly_the_usage(stack):
    env, llm, keys = stack
    fresh_window()
    subs = ["job-1", "job-2", "job-3"]
    # round 1: 4 concurrent completions per identity (2 streamed, 2 not), 12 in flight across both workers
    first = round_of(env, keys, "/a/v1/chat/completions", [(s, i % 2 == 0, None) for s in subs for i in range(4)])
    assert [r[0] for r in first] == [200] * 12
    # every streamed request reached the backend asking for usage, though the client did not
    streamed = [b for b in llm.bodies if b.get("stream")]
    assert len(streamed) == 6 and all(b["stream_options"]["include_usage"] is True for b in streamed)
    # each identity used exactly its budget (4 x 30 = 120): nothing more is admitted.
    # (Usage is settled when Envoy ends each stream, just after the client has the
    # answer: the audit records, written in the same step, say all 12 are settled.)
    assert len(env.audit_records(12)) >= 12
    before = len(llm.bodies)
    second = round_of(env, keys, "/a/v1/chat/completions", [(s, i % 2 == 0, None) for s in subs for i in range(3)])
    assert [r[0] for r in second] == [429] * 9
    assert len(llm.bodies) == before, "a request reached the backend after the budget was spent"
    st, h, out = second[0]
    assert h["x-ratelimit-limit-tokens"] == "120" and h["x-ratelimit-remaining-tokens"] == "0"
    assert 1 <= int(h["retry-after"]) <= 60 and h["x-ratelimit-reset-tokens"].endswith("s")
    assert json.loads(out)["reason"] == "quota_exceeded" and h["x-nhi-reason"] == "quota_exceeded"


def test_quota_keyed_by_a_claim_is_shared_and_one_token_over_still_admits(stack):
    env, llm, keys = stack
    fresh_window()
    # two subjects of one repository share the budget of 121 tokens
    jobs = [("build", True, "org/app"), ("deploy", False, "org/app"), ("build", False, "org/app"), ("deploy", True, "org/app")]
    assert [r[0] for r in round_of(env, keys, "/b/v1/chat/completions", jobs)] == [200] * 4
    st, _, _ = chat(env, keys, "/b/v1/chat/completions", "test", False, "org/app")
    assert st == 200, "120 of 121 tokens used: one more request is admitted"
    st, h, _ = chat(env, keys, "/b/v1/chat/completions", "build", True, "org/app")
    assert st == 429 and h["x-ratelimit-limit-tokens"] == "121"
    st, _, _ = chat(env, keys, "/b/v1/chat/completions", "build", True, "org/other")
    assert st == 200, "another repository has its own budget"
    st, _, out = chat(env, keys, "/b/v1/chat/completions", "build", True, None)
    assert st == 403 and json.loads(out)["reason"] == "quota_key_missing"


def test_max_tokens_precheck_then_window_reset(stack):
    env, llm, keys = stack
    fresh_window()
    before = len(llm.bodies)
    st, h, out = chat(env, keys, "/c/v1/chat/completions", "pre", False, max_tokens=60)
    assert st == 429 and len(llm.bodies) == before and "max_tokens" in json.loads(out)["detail"]
    for _ in range(2):
        st, _, _ = chat(env, keys, "/c/v1/chat/completions", "pre", False, max_tokens=10)
        assert st == 200
    st, h, _ = chat(env, keys, "/c/v1/chat/completions", "pre", False, max_tokens=10)
    assert st == 429
    time.sleep(int(h["retry-after"]) + 1)  # the minute window turns over
    st, _, _ = chat(env, keys, "/c/v1/chat/completions", "pre", False, max_tokens=10)
    assert st == 200


def test_max_tokens_precheck_reads_ollama_num_predict(stack):
    """Ollama's /api/chat asks for a length in options.num_predict; -1 (its
    default, no limit) asks for none, like a request without max_tokens."""
    env, llm, keys = stack
    fresh_window()
    tok = keys["es"].sign(claims(ISS, sub="ollama-pre", groups=("llm-users",)))
    hdrs = [("authorization", f"Bearer {tok}"), ("content-type", "application/json")]

    def ollama(num_predict):
        body = {"model": "llama3", "messages": [{"role": "user", "content": "hello"}], "stream": False,
                "options": {"num_predict": num_predict}}
        return env.request("POST", "/c/api/chat", hdrs, json.dumps(body).encode())

    before = len(llm.bodies)
    st, _, out = ollama(60)  # more than the 50-token budget
    assert st == 429 and len(llm.bodies) == before and "max_tokens" in json.loads(out)["detail"]
    st, _, _ = ollama(-1)
    assert st == 200 and len(llm.bodies) == before + 1
    st, _, _ = ollama(25)  # 30 of 50 used: 20 left
    assert st == 429 and len(llm.bodies) == before + 1
    st, _, _ = ollama(20)
    assert st == 200


def test_audit_records_usage_and_quota_denials(stack):
    env, llm, keys = stack
    st, _, _ = chat(env, keys, "/c/v1/chat/completions/no-usage", "auditee", False)
    assert st == 200
    recs = env.audit_records(1)
    time.sleep(0.5)
    recs = env.audit_records()
    streamed_ok = [r for r in recs if r["path"] == "/a/v1/chat/completions" and r["status"] == 200]
    assert streamed_ok and all(r["usage"] == {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30, "estimated": False}
                               for r in streamed_ok)
    denied = [r for r in recs if r["status"] == 429]
    assert denied and all(r["decision"] == "deny" and r["reason"] == "quota_exceeded" for r in denied)
    [est] = [r for r in recs if r["path"].endswith("/no-usage")]
    assert est["usage"]["estimated"] is True and est["usage"]["total_tokens"] > 0


def test_request_budget(stack):
    env, llm, keys = stack
    fresh_window()
    assert [chat(env, keys, "/d/v1/chat/completions", "counted", False)[0] for _ in range(2)] == [200, 200]
    st, _, out = chat(env, keys, "/d/v1/chat/completions", "counted", False)
    assert st == 429 and json.loads(out)["reason"] == "quota_exceeded" and "request" in json.loads(out)["detail"]


def test_a_burst_cannot_spend_the_budget_many_times_over(stack):
    """20 concurrent completions asking for 30 tokens each against a 60-token
    budget: each admission reserves its prompt estimate plus max_tokens, so
    only the first two get in; their settled usage is exactly what they used."""
    env, llm, keys = stack
    fresh_window()
    with ThreadPoolExecutor(20) as ex:
        res = list(ex.map(lambda i: chat(env, keys, "/e/v1/chat/completions", "bursty", i % 2 == 0, max_tokens=30)[0], range(20)))
    admitted = res.count(200)
    assert 1 <= admitted <= 2 and res.count(429) == 20 - admitted, res
    if admitted == 2:  # 2 x 30 used: the budget is spent
        assert chat(env, keys, "/e/v1/chat/completions", "bursty", False)[0] == 429


def test_asking_for_stream_usage_never_writes_past_envoys_buffer_limit(stack):
    """A streamed request just under Envoy's 1 MiB buffer limit would pass it
    once `stream_options.include_usage` is added: the filter refuses it with
    its reason instead of writing it back (Envoy would answer its own 413
    from inside the call). A little smaller, it goes through as usual."""
    env, llm, keys = stack
    tok = keys["es"].sign(claims(ISS, sub="big", groups=("llm-users",)))
    headers = [("authorization", f"Bearer {tok}"), ("content-type", "application/json")]

    def body(size):
        b = {"model": "m", "messages": [{"role": "user", "content": ""}], "stream": True}
        b["messages"][0]["content"] = "x" * (size - len(json.dumps(b)))
        out = json.dumps(b).encode()
        assert len(out) == size
        return out

    before = len(llm.bodies)
    st, h, out = env.request("POST", "/f/v1/chat/completions", headers, body((1 << 20) - 20))
    assert st == 413 and json.loads(out)["reason"] == "request_too_large", (st, out[:200])
    assert len(llm.bodies) == before
    st, _, _ = env.request("POST", "/f/v1/chat/completions", headers, body((1 << 20) - 200))
    assert st == 200 and llm.bodies[-1]["stream_options"]["include_usage"] is True


def test_masked_tool_input_keys_do_not_trip_the_strict_json_check(stack):
    """`requests: json` masks the keys of tool input too, so two emails used
    as keys become one key given twice; the quota reads the request as the
    client sent it (strict JSON, each member once), not the masked copy."""
    env, llm, keys = stack
    fresh_window(5)
    tok = keys["es"].sign(claims(ISS, sub="job-keys", groups=("llm-users",)))
    body = {"model": "m", "max_tokens": 5, "stream": True, "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f",
                                           "input": {"ann@example.com": "x", "bob@example.com": "y"}}]}]}
    n = len(llm.bodies)
    code, h, out = env.request("POST", "/g/v1/chat/completions", [("authorization", f"Bearer {tok}"), ("content-type", "application/json")],
                               json.dumps(body).encode())
    assert code == 200, out
    assert len(llm.bodies) == n + 1
    sent = llm.bodies[-1]
    assert "example.com" not in json.dumps(sent)
    assert list(sent["messages"][0]["content"][0]["input"]) == ["[EMAIL]"]
    assert sent["stream_options"]["include_usage"] is True and sent["max_tokens"] == 5
