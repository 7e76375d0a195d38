"""An SSE chunk that Python's json (the OpenAI SDK's parser) reads but the
filter's strict JSON parser refuses -- `NaN`/`-Infinity` (Python's
json.dumps default) or a lone surrogate escape -- is masked as *text*:
JSON escapes are not decoded (`\\u0040`), values split across events are not
joined, logprobs are not withheld. The buffered JSON path refuses the same
document with 502 (fail closed); the streamed path failed open. Such an
event is now withheld: the SDK raises the filter's `unmaskable_event` error
instead of yielding text."""
import json
import pytest
from sse_upstream import make_gw, sse, sdk_text, chunk, EMAIL


def nan_chunk(content, finish=None):
    # what `json.dumps` writes for a chunk with a -inf logprob (allow_nan=True by default)
    c = chunk(content, finish)
    c["choices"][0]["logprobs"] = {"content": [{"token": "x", "logprob": float("-inf"), "top_logprobs": []}]}
    return json.dumps(c)


@pytest.fixture(scope="module")
def gw(envoy_bin):
    env, be, token = make_gw(envoy_bin)
    # 1. a single event, email spelled with \u0040 in content, -Infinity in logprobs
    be.routes["/v1/escaped/chat/completions"] = (200, [("content-type", "text/event-stream")],
                                sse([nan_chunk("mail jane.doe\\u0040example.com now").replace("\\\\u0040", "\\u0040"),
                                     json.dumps(chunk(None, "stop")), "[DONE]"]), True)
    # 2. email split across two events, each carrying -Infinity
    be.routes["/v1/split/chat/completions"] = (200, [("content-type", "text/event-stream")],
                              sse([nan_chunk("mail jane.doe@"), nan_chunk("example.com now"),
                                   json.dumps(chunk(None, "stop")), "[DONE]"]), True)
    # 3. the same split with a lone surrogate escape in `id` (an ignored member)
    ev = lambda t: json.dumps(chunk(t)).replace('"chatcmpl-1"', '"\\ud83d"')  # noqa: E731
    be.routes["/v1/surrogate/chat/completions"] = (200, [("content-type", "text/event-stream")],
                                  sse([ev("card 4111 1111 "), ev("1111 1111 ok"), json.dumps(chunk(None, "stop")), "[DONE]"]), True)
    # 4. duplicate keys (Python keeps the last): the chunk is not joined either
    dup = lambda t: json.dumps(chunk(t)).replace('"index": 0', '"index": 0, "index": 0')  # noqa: E731
    be.routes["/v1/dupkey/chat/completions"] = (200, [("content-type", "text/event-stream")],
                                               sse([dup("mail jane.doe@"), dup("example.com now"), json.dumps(chunk(None, "stop")), "[DONE]"]), True)
    # 5. Responses API delta with -Infinity in its logprobs
    rd = json.dumps({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0,
                     "delta": "mail jane.doe@example.com now", "logprobs": [{"token": "x", "logprob": float("-inf")}],
                     "sequence_number": 1}).replace("@", "\\u0040")
    be.routes["/v1/responses"] = (200, [("content-type", "text/event-stream")],
                                  [b"event: response.output_text.delta\n" + sse([rd])[0]], True)
    # buffered JSON with the same problem: refused
    be.routes["/v1/buffered"] = (200, [("content-type", "application/json")],
                                 [json.dumps({"choices": [{"message": {"content": "mail " + EMAIL}, "logprobs": float("-inf")}]}).encode()], False)
    yield env, token
    env.stop()
    be.close()


def sdk_stream(env, token, name):
    import openai
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{env.port}/v1/{name}", api_key=token, max_retries=0)
    text = ""
    try:
        for ev in client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True):
            for ch in ev.choices:
                text += ch.delta.content or ""
    except openai.APIError as e:
        assert "unmaskable_event" in str(e.body), e.body
        return text
    raise AssertionError(f"the stream ended without the withheld-event error: {text!r}")


def test_buffered_json_with_infinity_fails_closed(gw):
    env, token = gw
    code, _, body = env.request("POST", "/v1/buffered", [("authorization", f"Bearer {token}")], b"{}")
    assert code == 502 and EMAIL.encode() not in body


@pytest.mark.parametrize("name", ["escaped", "split", "surrogate", "dupkey"])
def test_stream_chunk_python_json_reads_is_masked(gw, name):
    env, token = gw
    code, _, raw = env.request("POST", f"/v1/{name}/chat/completions", [("authorization", f"Bearer {token}")], b"{}")
    text = sdk_stream(env, token, name)
    for v in [EMAIL, "4111 1111 1111 1111"]:
        assert v not in text, f"{v!r} reached the OpenAI SDK: {text!r}\nraw: {raw[:600]!r}"


def test_responses_api_delta_with_infinity_is_masked(gw):
    """Parsed the way the OpenAI SDK parses SSE data (json.loads)."""
    env, token = gw
    code, _, raw = env.request("POST", "/v1/responses", [("authorization", f"Bearer {token}")], b"{}")
    assert code == 200
    text, lps = "", []
    for ev in raw.decode().split("\n\n"):
        for line in ev.split("\n"):
            if line.startswith("data: "):
                d = json.loads(line[6:])
                if d.get("type") == "response.output_text.delta":
                    text += d["delta"]
                    lps += d.get("logprobs") or []
    assert EMAIL not in text, (text, raw)
    assert not lps, "logprobs should be withheld"
