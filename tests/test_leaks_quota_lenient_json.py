"""Token quota on a resource without request masking: the filter reads the
request body with a strict JSON parser (serde_json) for the max_tokens
pre-check, the reservation and `stream_options.include_usage`. Python
backends (FastAPI's request.json() = json.loads(bytes), so vLLM, LiteLLM,
...) also accept a UTF-8 BOM and NaN/Infinity. Such a body used to skip all
three (no pre-check, no usage asked for on a stream); it is now refused."""
import json

import pytest

from llm_upstream import post, quota_fixture, uid

BUDGET = 1000


st = quota_fixture(BUDGET)


def send(st, raw, path="/v1/chat/completions"):
    llm = st[1]
    n = len(llm.seen)
    code, _, out = post(st, uid(), path, raw)
    sent = llm.seen[-1]["body"] if len(llm.seen) > n else None
    return code, out, sent


BIG = {"model": "m", "messages": [{"role": "user", "content": "write a novel"}], "max_tokens": 50_000}


def test_control_strict_json_max_tokens_over_budget_is_refused(st):
    code, out, sent = send(st, json.dumps(BIG).encode())
    assert code == 429 and sent is None


@pytest.mark.parametrize("variant", ["bom", "nan"])
def test_max_tokens_precheck_skipped_for_json_the_backend_accepts(st, variant):
    raw = json.dumps(BIG).encode()
    raw = b"\xef\xbb\xbf" + raw if variant == "bom" else raw[:-1] + b', "top_logprobs_hint": NaN}'
    assert json.loads(raw)["max_tokens"] == 50_000  # what a Python backend reads
    code, out, sent = send(st, raw)
    assert sent is None, f"max_tokens 50000 > budget {BUDGET} reached the backend ({variant}, HTTP {code})"


@pytest.mark.parametrize("variant", ["bom", "stream_string", "stream_int"])
def test_stream_without_usage(st, variant):
    """pydantic's lax mode (vLLM's request models) reads "stream": "true" and
    "stream": 1 as True; the filter only adds include_usage for the JSON literal true."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    if variant == "stream_string":
        body["stream"] = "true"
    if variant == "stream_int":
        body["stream"] = 1
    raw = json.dumps(body).encode()
    if variant == "bom":
        raw = b"\xef\xbb\xbf" + raw
    code, out, sent = send(st, raw)
    if sent is not None:
        assert (json.loads(sent).get("stream_options") or {}).get("include_usage") is True, \
            f"streamed request reached the backend without include_usage ({variant}): {sent!r}"


def test_stream_usage_is_asked_for_on_chat_completions_only(st):
    """The Responses API and Anthropic's Messages API stream usage unasked and
    refuse an unknown `stream_options` member: their bodies go as sent."""
    chat = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    _, _, sent = send(st, json.dumps(chat).encode())
    assert json.loads(sent)["stream_options"] == {"include_usage": True}
    for path, body in [("/v1/responses", {"model": "m", "stream": True, "input": "hi"}),
                       ("/v1/messages", {"model": "m", "stream": True, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})]:
        _, _, sent = send(st, json.dumps(body).encode(), path)
        assert sent is not None and "stream_options" not in json.loads(sent), (path, sent)
