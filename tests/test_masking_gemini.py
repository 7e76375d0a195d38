"""Gemini API through the gateway with Google's own Python SDK
(`google-genai`, base URL pointed at Envoy): a `streamGenerateContent`
SSE stream whose email and card are split across chunks, in the answer and
in the model's thinking, reaches the SDK masked; a `functionCall` part's
`args` are masked as tool input (numbers and keys); the same for a whole
`generateContent` answer."""
import json
import pytest
from sse_upstream import make_gw, sse, EMAIL

MODEL = "gemini-2.5-flash"


def chunk(parts, finish=None):
    c = {"content": {"parts": parts, "role": "model"}, "index": 0}
    usage = {"promptTokenCount": 4, "totalTokenCount": 4}
    if finish:
        c["finishReason"] = finish
        usage = {"promptTokenCount": 4, "candidatesTokenCount": 12, "thoughtsTokenCount": 5, "totalTokenCount": 21}
    return {"candidates": [c], "usageMetadata": usage, "modelVersion": MODEL, "responseId": "r-1"}


CALL = {"functionCall": {"name": "pay", "args": {"card": 4111111111111111, EMAIL: "owner", "amount": 25}}}


@pytest.fixture(scope="module")
def gw(envoy_bin):
    env, be, token = make_gw(envoy_bin)
    events = [
        chunk([{"text": "checking jane.do", "thought": True}]),
        chunk([{"text": "e@example.com first", "thought": True}, {"text": "write to jane.do"}]),
        chunk([{"text": "e@example.com, card 4111 1111"}]),
        chunk([{"text": " 1111 1111 now"}, CALL]),
        chunk([{"text": ""}], "STOP"),
    ]
    be.routes[f"/v1/models/{MODEL}:streamGenerateContent"] = (200, [("content-type", "text/event-stream")], sse(events, "\r\n"), True)
    whole = chunk([{"text": "mail " + EMAIL}, CALL], "STOP")
    be.routes[f"/v1/models/{MODEL}:generateContent"] = (200, [("content-type", "application/json")], [json.dumps(whole).encode()], False)
    yield env, token
    env.stop()


def client(env, token):
    from google import genai
    from google.genai import types
    return genai.Client(api_key="unused", http_options=types.HttpOptions(
        base_url=f"http://127.0.0.1:{env.port}", headers={"Authorization": f"Bearer {token}"}))


def test_gemini_sdk_streams_masked_text_thoughts_and_function_call(gw):
    from google.genai import types
    env, token = gw
    answer, thought, calls, raw = "", "", [], []
    cfg = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(include_thoughts=True))
    c = client(env, token)  # (kept: the SDK closes its connection pool when the client goes)
    for ch in c.models.generate_content_stream(model=MODEL, contents="pay", config=cfg):
        raw.append(ch.model_dump_json())
        assert ch.model_version == MODEL
        for p in ch.candidates[0].content.parts or []:
            if p.function_call:
                calls.append(p.function_call)
            elif p.thought:
                thought += p.text or ""
            else:
                answer += p.text or ""
    assert answer == "write to [EMAIL], card [PAYMENT_CARD] now"
    assert thought == "checking [EMAIL] first"
    assert [(c.name, c.args) for c in calls] == [("pay", {"card": "[PAYMENT_CARD]", "[EMAIL]": "owner", "amount": 25})]
    seen = "".join(raw)
    assert "jane.do" not in seen and "4111" not in seen
    # the audit record: the final chunk's usageMetadata, thinking counted as completion
    [rec] = [r for r in env.audit_records(1) if r["path"].endswith(":streamGenerateContent?alt=sse")]
    assert rec["usage"] == {"prompt_tokens": 4, "completion_tokens": 17, "total_tokens": 21, "estimated": False}


def test_gemini_sdk_whole_answer_masked(gw):
    env, token = gw
    c = client(env, token)
    r = c.models.generate_content(model=MODEL, contents="pay")
    parts = r.candidates[0].content.parts
    assert parts[0].text == "mail [EMAIL]"
    assert parts[1].function_call.args == {"card": "[PAYMENT_CARD]", "[EMAIL]": "owner", "amount": 25}
