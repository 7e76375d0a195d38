"""JSON-lines streams (`application/x-ndjson`, Ollama's native API) inside
real Envoy: the Ollama Python client (installed by the test script) streams
`/api/chat` and `/api/generate` through the gateway, parses every line and
sees masked text, with values split across lines caught and the token ids
of `context` withheld; other JSON lines
are masked one by one; the audit record carries Ollama's token counts."""
import json
import time

import pytest

from sse_upstream import make_gw

PII = ["jane.doe@example.com", "4111 1111 1111 1111", "123-45-6789", "jane.doe", "1111 1111"]
# the email is split across three lines, the card across two
CHAT_FRAGS = ["Write to jane.", "doe@exam", "ple.com, card 4111 1111 ", "1111 1111, SSN 123-45-6789. ", "Thanks."]


def ndjson(objs):
    return [(json.dumps(o) + "\n").encode() for o in objs]


def chat_lines(frags, thinking=()):
    msg = lambda **m: {"model": "llama3", "created_at": "2026-12-01T00:00:00Z", "message": {"role": "assistant", **m}, "done": False}  # noqa: E731
    lines = [msg(content="", thinking=t) for t in thinking] + [msg(content=f) for f in frags]
    lines.append({"model": "llama3", "created_at": "2026-12-01T00:00:01Z", "message": {"role": "assistant", "content": ""},
                  "done": True, "done_reason": "stop", "total_duration": 4_000_000, "prompt_eval_count": 26, "eval_count": 298})
    return ndjson(lines)


def generate_lines(frags):
    lines = [{"model": "llama3", "created_at": "t", "response": f, "done": False} for f in frags]
    lines.append({"model": "llama3", "created_at": "t", "response": "", "done": True, "context": [1, 2, 3], "eval_count": 12})
    return ndjson(lines)


@pytest.fixture(scope="module")
def gw(envoy_bin):
    env, be, token = make_gw(envoy_bin)
    ct = [("content-type", "application/x-ndjson")]
    be.routes["/api/chat"] = (200, ct, chat_lines(CHAT_FRAGS, thinking=["The user wants ", "mail to jane.doe@", "example.com."]), True)
    be.routes["/api/generate"] = (200, ct, generate_lines(CHAT_FRAGS), True)
    be.routes["/export"] = (200, ct, ndjson([{"id": 1, "email": "jane.doe\u0040example.com"}, {"id": 2, "note": "card 4111 1111 1111 1111"}])
                            + [b"{\"id\": 3, \"x\": NaN, \"email\": \"jane.doe@example.com\"}\n"], True)
    # a model's tool call carrying a fake usage: after a long answer (the
    # line is longer than the 16 KiB tail the usage is read from), and
    # before a stream's error line
    args = {"usage": {"prompt_tokens": 0, "completion_tokens": 1}}
    tool = {"role": "assistant", "content": "word " * 4000, "tool_calls": [{"function": {"name": "f", "arguments": args}}]}
    done = {"model": "llama3", "created_at": "t", "message": tool, "done_reason": "stop", "done": True,
            "total_duration": 4_000_000, "prompt_eval_count": 9000, "eval_count": 5000}
    be.routes["/api/chat/long"] = (200, [("content-type", "application/json; charset=utf-8")], [json.dumps(done).encode()], False)
    be.routes["/api/chat/error"] = (200, ct, ndjson([{"model": "llama3", "created_at": "t", "message": {**tool, "content": ""}, "done": False},
                                                     {"error": "model runner stopped"}]), True)
    yield env, be, token
    env.stop()
    be.close()


def client(env, token):
    import ollama
    return ollama.Client(host=f"http://127.0.0.1:{env.port}", headers={"Authorization": f"Bearer {token}"})


def test_ollama_client_streams_chat_masked(gw):
    env, _, token = gw
    parts = list(client(env, token).chat(model="llama3", messages=[{"role": "user", "content": "hi"}], stream=True))
    text = "".join(p.message.content or "" for p in parts)
    thinking = "".join(p.message.thinking or "" for p in parts)
    assert text == "Write to [EMAIL], card [PAYMENT_CARD], SSN [US_SSN]. Thanks.", text
    assert thinking == "The user wants mail to [EMAIL].", thinking
    assert parts[-1].done and parts[-1].eval_count == 298
    for v in PII:
        assert v not in text + thinking
    deadline = time.time() + 5
    while not (recs := [r for r in env.audit_records() if r.get("path") == "/api/chat"]) and time.time() < deadline:
        time.sleep(0.1)
    assert recs, "no audit record"
    rec = recs[-1]
    assert rec["usage"] == {"prompt_tokens": 26, "completion_tokens": 298, "total_tokens": 324, "estimated": False}, rec["usage"]
    assert rec["masking"].get("email") == 2 and rec["masking"].get("payment_card") == 1, rec["masking"]


def test_ollama_client_streams_generate_masked(gw):
    env, _, token = gw
    parts = list(client(env, token).generate(model="llama3", prompt="hi", stream=True))
    text = "".join(p.response or "" for p in parts)
    assert text == "Write to [EMAIL], card [PAYMENT_CARD], SSN [US_SSN]. Thanks.", text
    # the conversation's token ids (the answer unmasked) are withheld
    assert parts[-1].done and parts[-1].context == [] and parts[-1].eval_count == 12


def test_other_json_lines_are_masked_one_by_one(gw):
    """Each line stays one JSON document, masked on decoded strings; a line
    that is not strict JSON is withheld as an error line."""
    import urllib.request
    env, _, token = gw
    req = urllib.request.Request(f"http://127.0.0.1:{env.port}/export", method="POST", data=b"{}",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers.get("content-type") == "application/x-ndjson"
        assert r.headers.get("content-length") is None
        body = r.read().decode()
    lines = [json.loads(line) for line in body.splitlines()]
    assert lines[0] == {"id": 1, "email": "[EMAIL]"}
    assert lines[1] == {"id": 2, "note": "card [PAYMENT_CARD]"}
    assert lines[2]["error"]["code"] == "unmaskable_event"
    assert "jane.doe" not in body and "4111" not in body


def test_ollama_usage_is_not_taken_from_a_models_tool_call(gw):
    """Ollama writes tool-call arguments as JSON objects: a `usage` the model
    puts there is not read as the answer's usage, neither when the answer's
    line is longer than the tail the usage is read from (its own counts,
    written last, are read) nor when a stream ends without counts (none
    read: a quota resource estimates them from the body sizes)."""
    import urllib.request
    env, _, token = gw
    for path in ("/api/chat/long", "/api/chat/error"):
        req = urllib.request.Request(f"http://127.0.0.1:{env.port}{path}", method="POST", data=b'{"model": "llama3"}',
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        assert b"completion_tokens" in body  # the tool call reached the client (masked)
    deadline = time.time() + 5
    while time.time() < deadline:
        recs = {r.get("path"): r for r in env.audit_records() if r.get("path", "").startswith("/api/chat/")}
        if len(recs) == 2:
            break
        time.sleep(0.1)
    assert recs["/api/chat/long"]["usage"] == {"prompt_tokens": 9000, "completion_tokens": 5000, "total_tokens": 14000, "estimated": False}
    # (no quota on this resource: no estimate either)
    assert recs["/api/chat/error"].get("usage") is None, recs["/api/chat/error"]
