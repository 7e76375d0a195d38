"""Cohere v2 chat through the gateway with Cohere's own Python SDK
(`cohere.ClientV2`, base URL pointed at Envoy, the job's token as its API
key): a streamed answer, tool plan and tool-call arguments whose email and
card are split across SSE events reach the SDK masked; a whole answer's
tool call `arguments` too."""
import json
import pytest
from sse_upstream import make_gw, EMAIL

ARGS = json.dumps({"card": 4111111111111111, "to": EMAIL})


def events():
    ev = []
    add = lambda v: ev.append(f"event: {v['type']}\ndata: {json.dumps(v)}\n\n".encode())  # noqa: E731
    add({"id": "c-1", "type": "message-start", "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}})
    for p in ["I will pay jane.do", "e@example.com now"]:
        add({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": p}}})
    add({"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {"id": "t-1", "type": "function", "function": {"name": "pay", "arguments": ""}}}}})
    for p in [ARGS[:15], ARGS[15:33], ARGS[33:]]:
        add({"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {"function": {"arguments": p}}}}})
    add({"type": "tool-call-end", "index": 0})
    add({"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}})
    for p in ["paid jane.d", "oe@example.com with card 4111 11", "11 1111 1111."]:
        add({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": p}}}})
    add({"type": "content-end", "index": 0})
    add({"type": "message-end", "delta": {"finish_reason": "TOOL_CALL", "usage": {"tokens": {"input_tokens": 9, "output_tokens": 9}}}})
    return ev


@pytest.fixture(scope="module")
def gw(envoy_bin):
    env, be, token = make_gw(envoy_bin)
    be.routes["/stream/v2/chat"] = (200, [("content-type", "text/event-stream")], events(), True)
    whole = {"id": "c-2", "finish_reason": "TOOL_CALL", "message": {"role": "assistant", "tool_plan": "pay " + EMAIL,
             "tool_calls": [{"id": "t-1", "type": "function", "function": {"name": "pay", "arguments": ARGS}}]}}
    be.routes["/whole/v2/chat"] = (200, [("content-type", "application/json")], [json.dumps(whole).encode()], False)
    yield env, token
    env.stop()


def client(env, token, prefix):
    import cohere
    return cohere.ClientV2(api_key=token, base_url=f"http://127.0.0.1:{env.port}/{prefix}")


def test_cohere_sdk_streams_masked_answer_plan_and_tool_call(gw):
    env, token = gw
    answer, plan, args, types = "", "", "", []
    c = client(env, token, "stream")
    for ev in c.chat_stream(model="command-a-03-2025", messages=[{"role": "user", "content": "pay"}]):
        types.append(ev.type)
        if ev.type == "content-delta":
            answer += ev.delta.message.content.text
        elif ev.type == "tool-plan-delta":
            plan += ev.delta.message.tool_plan
        elif ev.type == "tool-call-delta":
            args += ev.delta.message.tool_calls.function.arguments
    assert answer == "paid [EMAIL] with card [PAYMENT_CARD]."
    assert plan == "I will pay [EMAIL] now"
    assert json.loads(args) == {"card": "[PAYMENT_CARD]", "to": "[EMAIL]"}
    assert types[0] == "message-start" and types[-1] == "message-end"
    # every held rest went out before its item ended
    assert types.index("tool-call-start") > max(i for i, t in enumerate(types) if t == "tool-plan-delta")
    assert types.index("tool-call-end") > max(i for i, t in enumerate(types) if t == "tool-call-delta")
    assert types.index("content-end") > max(i for i, t in enumerate(types) if t == "content-delta")


def test_cohere_sdk_whole_answer_masked(gw):
    env, token = gw
    c = client(env, token, "whole")
    r = c.chat(model="command-a-03-2025", messages=[{"role": "user", "content": "pay"}])
    assert r.message.tool_plan == "pay [EMAIL]"
    assert json.loads(r.message.tool_calls[0].function.arguments) == {"card": "[PAYMENT_CARD]", "to": "[EMAIL]"}
