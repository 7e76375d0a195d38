"""PII masking of response (and request) bodies inside real Envoy: JSON,
plain text, streamed SSE from an OpenAI-compatible upstream (read by the
OpenAI Python SDK), gzip, over-limit bodies, HEAD/204, request-side masking.
The upstream is a real HTTP server on loopback that writes SSE events in
separate TCP writes, with PII split across events."""
import gzip
import json
import time

import pytest

from harness import Envoy, Handler, _Server, JwksServer, Key, claims

ISS = "https://ci.test"
EMAIL = "jane.doe@example.com"
SSN = "123-45-6789"
CARD = "4111 1111 1111 1111"
PHONE = "+1 415-555-0134"
PII = [EMAIL, SSN, CARD, PHONE, "4111111111111111", "jane.doe"]
DOC = {"id": 17, "results": [{"id": "doc-1", "text": f"Contact {EMAIL} or {PHONE}.", "ssn": SSN},
                             {"id": "doc-2", "text": f"Card {CARD}, order 1700000000000, uuid 123e4567-e89b-12d3-a456-426614174000"}]}
# SSE: the email is split across two delta.content fragments, the SSN across three.
FRAGMENTS = ["Escalate to jane.", "doe@exam", "ple.com today; SSN 123-", "45-", "6789 on file. ", "Thanks."]


def chunk(i, content=None, finish=None, usage=None):
    c = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [] if usage else [{"index": 0, "delta": ({"content": content} if content is not None else {}), "finish_reason": finish}]}
    if usage:
        c["usage"] = usage
    return f"data: {json.dumps(c)}\n\n".encode()


def tool_chunk(delta, finish=None):
    return {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


# Two parallel tool calls streamed as OpenAI does: each call's head (id, name,
# empty arguments), then its arguments in fragments; the email and the card
# are split across fragments.
TOOL_ARGS = [["{\"to\": \"jane.", "doe@exam", "ple.com\", \"subject\": \"hi\"}"],
             ["{\"card\": \"4111 1111 ", "1111 1111\", \"amount\": 3}"]]
TOOL_EVENTS = [tool_chunk({"role": "assistant", "content": None})]
for _j, _frags in enumerate(TOOL_ARGS):
    TOOL_EVENTS.append(tool_chunk({"tool_calls": [{"index": _j, "id": f"call_{_j}", "type": "function",
                                                   "function": {"name": ["send_mail", "charge"][_j], "arguments": ""}}]}))
    TOOL_EVENTS += [tool_chunk({"tool_calls": [{"index": _j, "function": {"arguments": f}}]}) for f in _frags]
TOOL_EVENTS.append(tool_chunk({}, "tool_calls"))


def responses_events(text_frags, arg_frags):
    """An OpenAI Responses API stream: a message whose text arrives in
    `response.output_text.delta` fragments, then a function call whose
    arguments arrive in `response.function_call_arguments.delta` fragments;
    done events and `response.completed` repeat the whole values."""
    text, args = "".join(text_frags), "".join(arg_frags)
    resp = lambda status, output: {"id": "resp_1", "object": "response", "created_at": 1, "status": status,  # noqa: E731
                                   "model": "m", "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}
    part = lambda t: {"type": "output_text", "text": t, "annotations": [], "logprobs": []}  # noqa: E731
    msg = lambda t, st: {"id": "msg_1", "type": "message", "status": st, "role": "assistant",  # noqa: E731
                         "content": [] if st == "in_progress" else [part(t)]}
    call = lambda a, st: {"id": "fc_1", "type": "function_call", "status": st, "call_id": "call_1",  # noqa: E731
                          "name": "send_mail", "arguments": a}
    ev = [{"type": "response.created", "response": resp("in_progress", [])},
          {"type": "response.output_item.added", "output_index": 0, "item": msg("", "in_progress")},
          {"type": "response.content_part.added", "item_id": "msg_1", "output_index": 0, "content_index": 0, "part": part("")}]
    ev += [{"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": f,
            "logprobs": [{"token": f, "logprob": -0.1, "top_logprobs": []}]} for f in text_frags]
    ev += [{"type": "response.output_text.done", "item_id": "msg_1", "output_index": 0, "content_index": 0, "text": text,
            "logprobs": []},
           {"type": "response.content_part.done", "item_id": "msg_1", "output_index": 0, "content_index": 0, "part": part(text)},
           {"type": "response.output_item.done", "output_index": 0, "item": msg(text, "completed")},
           {"type": "response.output_item.added", "output_index": 1, "item": call("", "in_progress")}]
    ev += [{"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 1, "delta": f} for f in arg_frags]
    ev += [{"type": "response.function_call_arguments.done", "item_id": "fc_1", "output_index": 1, "arguments": args},
           {"type": "response.output_item.done", "output_index": 1, "item": call(args, "completed")},
           {"type": "response.completed", "response": resp("completed", [msg(text, "completed"), call(args, "completed")])}]
    for i, e in enumerate(ev):
        e["sequence_number"] = i
    return ev


# Tool-call arguments with a card right after a `\n` escape (read as text,
# it would be glued to the `n`) and an email split across fragments.
RESP_ARGS = ["{\"to\": \"jane.", "doe@exam", "ple.com\", \"note\": \"card:\\n4111 1111 ", "1111 1111\"}"]


def chat_logprobs_chunk(content, finish=None):
    return {"id": "chatcmpl-3", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish,
                         "logprobs": {"content": [{"token": content, "logprob": -0.2, "bytes": list(content.encode()),
                                                   "top_logprobs": [{"token": content, "logprob": -0.2, "bytes": list(content.encode())}]}],
                                      "refusal": None}}]}


def legacy(text, finish=None):
    return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}


class Backend(_Server):
    def __init__(self, big=20000):
        self.seen = []
        outer = self

        class H(Handler):
            def send(self, status, ctype, body, extra=()):
                self.send_response(status)
                if ctype:
                    self.send_header("content-type", ctype)
                for k, v in extra:
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                outer.seen.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}})
                p = self.path
                if p == "/data/pii.json":
                    self.send(200, "application/json", json.dumps(DOC).encode())
                elif p == "/data/escaped.json":
                    self.send(200, "application/json", b'{"note":"mail jane.doe\\u0040example.com now","n":1}')
                elif p == "/data/pii.txt":
                    self.send(200, "text/plain; charset=utf-8", f"Call {PHONE} or mail {EMAIL}; SSN {SSN}.\n".encode())
                elif p == "/data/clean.json":
                    self.send(200, "application/json", b'{"a": [1, 2.5e3, "plain text", {"k": null}]}')
                elif p == "/data/gz.json":
                    self.send(200, "application/json", gzip.compress(json.dumps(DOC).encode()), [("content-encoding", "gzip")])
                elif p == "/data/br.json":
                    self.send(200, "application/json", b"\x0b\x02\x80{}\x03", [("content-encoding", "br")])
                elif p == "/data/big.json":
                    self.send(200, "application/json", json.dumps({"pad": "x" * big, "mail": EMAIL}).encode())
                elif p == "/data/grows.json":
                    # under the 8192-byte limit; each email masked is one byte longer
                    self.send(200, "application/json", json.dumps(["a@b.co"] * 800).encode())
                elif p == "/data/bad.json":
                    self.send(200, "application/json", f'{{"mail": "{EMAIL}", '.encode())
                elif p == "/data/none":
                    self.send_response(204)
                    self.end_headers()
                elif p == "/data/image":
                    self.send(200, "image/png", EMAIL.encode())
                elif p == "/data/untyped":
                    self.send(200, None, EMAIL.encode())
                elif p == "/data/untyped-empty":
                    self.send(200, None, b"")
                elif p in ("/data/untyped-chunked", "/data/untyped-chunked-empty"):
                    self.send_response(200)
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    if p.endswith("chunked"):
                        self.wfile.write(f"{len(EMAIL):x}\r\n{EMAIL}\r\n".encode())
                    self.wfile.write(b"0\r\n\r\n")
                elif p == "/pass/gz.json":
                    self.send(200, "application/json", gzip.compress(json.dumps(DOC).encode()), [("content-encoding", "gzip")])
                elif p == "/pass/gz-chunked.json":
                    gz = gzip.compress(json.dumps(DOC).encode())
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-encoding", "gzip")
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    self.wfile.write(f"{len(gz):x}\r\n".encode() + gz + b"\r\n0\r\n\r\n")
                elif p == "/data/two-types-params":
                    self.send(200, "image/png; a=b", json.dumps({"m": EMAIL}).encode(), [("content-type", "application/json")])
                elif p == "/data/two-types":
                    self.send(200, "application/json", json.dumps({"m": EMAIL}).encode(), [("content-type", "text/plain")])
                elif p == "/wild/page.html":
                    self.send(200, "text/html; charset=utf-8", f"<p>{EMAIL}</p>".encode())
                elif p == "/wild/data.json":
                    self.send(200, "application/json", json.dumps({"m": EMAIL}).encode())
                else:
                    self.send(404, "text/plain", b"no")

            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                if not n and self.headers.get("transfer-encoding") == "chunked":
                    body = b""
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        body += self.rfile.read(size)
                        self.rfile.readline()
                outer.seen.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                req = json.loads(body or b"{}")
                if self.path == "/v1/responses" and req.get("stream"):
                    self.stream_sse(responses_events(FRAGMENTS, RESP_ARGS), named=True, done=False)
                elif self.path == "/v1/chat/completions" and req.get("stream") and req.get("logprobs"):
                    self.stream_sse([chat_logprobs_chunk(f) for f in FRAGMENTS] + [chat_logprobs_chunk("", "stop")])
                elif self.path == "/v1/chat/completions" and req.get("stream") and req.get("tools"):
                    self.stream_sse(TOOL_EVENTS)
                elif self.path == "/v1/completions" and req.get("stream"):
                    self.stream_sse([legacy(f) for f in FRAGMENTS] + [legacy("", "stop")])
                elif self.path == "/v1/chat/completions" and req.get("stream"):
                    self.send_response(200)
                    self.send_header("content-type", "text/event-stream")
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    events = [chunk(0, "")] + [chunk(i, f) for i, f in enumerate(FRAGMENTS)] + [chunk(9, None, "stop")]
                    events += [chunk(10, usage={"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25}), b"data: [DONE]\n\n"]
                    for e in events:
                        # split some events across TCP writes too
                        for part in (e[: len(e) // 2], e[len(e) // 2:]):
                            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                            self.wfile.flush()
                            time.sleep(0.01)
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                elif self.path == "/v1/chat/completions":
                    lp = {"content": [{"token": t, "logprob": -0.1, "bytes": list(t.encode()), "top_logprobs": []}
                                      for t in ["Mail", " jane", ".doe", "@example", ".com"]], "refusal": None}
                    out = {"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": f"Mail {EMAIL}"}, "finish_reason": "stop",
                                        "logprobs": lp if req.get("logprobs") else None}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
                    self.send(200, "application/json", json.dumps(out).encode())
                else:  # echo
                    self.send(200, "application/json", json.dumps({"received": body.decode()}).encode())

        _Server.__init__(self, lambda _: H)


def policy(jwk):
    return {
        "providers": [{"name": "ci", "issuer": ISS, "audiences": ["nhi-gate"], "jwks": {"keys": [jwk]}}],
        "masking": {"fields": {"redact": ["ssn"], "skip": ["id"]}},
        "resources": [
            {"name": "data", "path_prefix": "/data/", "read": {"any_of": ["readers"]},
             "mask": {"max_buffer_bytes": 8192}},
            {"name": "llm", "path_prefix": "/v1/", "read": {"any_of": ["readers"]},
             "operations": [{"methods": ["POST"], "path_glob": "/v1/chat/completions", "class": "read"},
                            {"methods": ["POST"], "path_glob": "/v1/completions", "class": "read"},
                            {"methods": ["POST"], "path_glob": "/v1/responses", "class": "read"}],
             "upstream_headers": {"authorization": "Bearer backend"},
             "mask": {"requests": "chat_messages"}},
            {"name": "pass", "path_prefix": "/pass/", "read": {"any_of": ["readers"]},
             "mask": {"max_buffer_bytes": 64, "over_limit": "pass"}},
            {"name": "wild", "path_prefix": "/wild/", "read": {"any_of": ["readers"]},
             "mask": {"content_types": ["text/*"], "other_types": "pass"}},
            {"name": "echo", "path_prefix": "/echo", "read": {"any_of": ["readers"]}, "write": {"any_of": ["readers"]},
             "mask": {"requests": "json"}},
        ],
    }


@pytest.fixture(scope="module")
def gw(envoy_bin):
    key = Key("ES256", "k1")
    be = Backend()
    env = Envoy(envoy_bin, policy(key.jwk), be.port)
    token = key.sign(claims(ISS, ttl=900))
    yield {"env": env, "be": be, "auth": [("authorization", f"Bearer {token}")], "token": token}
    env.stop()
    be.close()


def get(gw, path, method="GET", headers=()):
    return gw["env"].request(method, path, gw["auth"] + list(headers))


def no_pii(text):
    for v in PII:
        assert v not in text, f"{v!r} leaked in {text[:400]!r}"


def test_json_is_masked_valid_and_keeps_ids(gw):
    code, h, body = get(gw, "/data/pii.json")
    assert code == 200, body
    no_pii(body.decode())
    doc = json.loads(body)
    assert doc["id"] == 17 and doc["results"][0]["id"] == "doc-1"
    assert "[EMAIL]" in doc["results"][0]["text"]
    assert doc["results"][0]["ssn"] != SSN
    assert "1700000000000" in doc["results"][1]["text"], "a ms timestamp is not a card number"
    assert "123e4567-e89b-12d3-a456-426614174000" in doc["results"][1]["text"]
    assert int(h["content-length"]) == len(body), "a buffered masked body gets its exact Content-Length"


def test_json_escapes_are_decoded_before_detection(gw):
    code, _, body = get(gw, "/data/escaped.json")
    assert code == 200
    assert "example.com" not in body.decode() and json.loads(body)["n"] == 1


def test_clean_json_passes_byte_for_byte(gw):
    code, h, body = get(gw, "/data/clean.json")
    assert body == b'{"a": [1, 2.5e3, "plain text", {"k": null}]}'
    assert h.get("content-length") == str(len(body)), "an unchanged body keeps the upstream's Content-Length"


def test_text_is_masked(gw):
    code, _, body = get(gw, "/data/pii.txt")
    assert code == 200
    no_pii(body.decode())
    assert body.decode().startswith("Call ")


def test_upstream_is_asked_for_identity_encoding(gw):
    get(gw, "/data/pii.json", headers=[("accept-encoding", "gzip, br")])
    assert gw["be"].seen[-1]["headers"].get("accept-encoding") == "identity"
    # without the header (or with identity alone) there is nothing to rewrite
    get(gw, "/data/pii.json")
    assert "accept-encoding" not in gw["be"].seen[-1]["headers"]
    get(gw, "/data/pii.json", headers=[("accept-encoding", "identity")])
    assert gw["be"].seen[-1]["headers"].get("accept-encoding") == "identity"


def test_gzip_answer_is_decoded_and_masked(gw):
    code, h, body = get(gw, "/data/gz.json")
    assert code == 200
    assert "content-encoding" not in h
    assert int(h["content-length"]) == len(body)
    no_pii(body.decode())
    assert json.loads(body)["results"][0]["id"] == "doc-1"


def test_unknown_encoding_fails_closed(gw):
    code, h, body = get(gw, "/data/br.json")
    assert code == 502 and json.loads(body)["reason"] == "unmaskable_encoding"


def test_over_limit_fails_closed(gw):
    code, h, body = get(gw, "/data/big.json")
    assert code == 502 and json.loads(body)["reason"] == "response_too_large"
    assert EMAIL.encode() not in body


def test_masked_body_over_the_limit_fails_closed(gw):
    code, _, body = get(gw, "/data/grows.json")
    assert code == 502 and json.loads(body)["reason"] == "response_too_large"
    assert b"a@b.co" not in body


def test_gzip_body_passed_over_the_limit_keeps_its_encoding(gw):
    """`over_limit: pass` hands the body on as the upstream sent it: still
    gzip, so its Content-Encoding stays (announced by Content-Length at the
    headers, or found over the limit while buffering a chunked body)."""
    for path in ["/pass/gz.json", "/pass/gz-chunked.json"]:
        code, h, body = get(gw, path)
        assert code == 200 and h.get("content-encoding") == "gzip", (path, h)
        assert json.loads(gzip.decompress(body)) == DOC, path


def test_invalid_json_fails_closed(gw):
    code, h, body = get(gw, "/data/bad.json")
    assert code == 502 and json.loads(body)["reason"] == "unmaskable_body"
    assert EMAIL.encode() not in body


def test_head_and_204_left_alone_and_other_types_refused(gw):
    code, h, body = get(gw, "/data/pii.json", method="HEAD")
    assert code == 200 and body == b""
    assert h.get("content-length") == str(len(json.dumps(DOC)))
    assert get(gw, "/data/none")[0] == 204
    code, _, body = get(gw, "/data/image")
    assert code == 502 and json.loads(body)["reason"] == "unmaskable_content_type", "content types the policy does not list are refused"
    assert EMAIL.encode() not in body


def test_body_without_a_single_content_type_fails_closed(gw):
    """No Content-Type, or two: the filter cannot tell how to mask the body,
    so it is refused rather than passed. Without a body there is nothing to refuse."""
    for path in ["/data/untyped", "/data/two-types", "/data/two-types-params", "/data/untyped-chunked"]:
        code, h, body = get(gw, path)
        assert code == 502 and json.loads(body)["reason"] == "unmaskable_content_type", path
        assert EMAIL.encode() not in body
    for path in ["/data/untyped-empty", "/data/untyped-chunked-empty"]:
        code, _, body = get(gw, path)
        assert code == 200 and body == b"", path


def test_top_level_type_wildcard_masks_every_subtype(gw):
    code, _, body = get(gw, "/wild/page.html")
    assert code == 200 and body == b"<p>[EMAIL]</p>"
    code, _, body = get(gw, "/wild/data.json")
    assert code == 200 and EMAIL.encode() in body, "text/* does not list application/json, and other_types: pass passes it"


def test_sse_stream_masked_incrementally_with_valid_framing(gw):
    req = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    code, h, body = gw["env"].request("POST", "/v1/chat/completions", gw["auth"] + [("content-type", "application/json")], req)
    assert code == 200
    text = body.decode()
    no_pii(text)
    events = [e for e in text.split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]"
    content = ""
    for e in events[:-1]:
        assert e.startswith("data: "), e
        c = json.loads(e[len("data: "):])
        for ch in c.get("choices", []):
            content += ch["delta"].get("content") or ""
    assert "[EMAIL]" in content and "Escalate to" in content and "Thanks." in content
    assert any("usage" in json.loads(e[6:]) for e in events[:-1] if e.startswith("data: {"))


def test_openai_sdk_streams_through_the_gateway(gw):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{gw['env'].port}/v1", api_key=gw["token"], max_retries=0)
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"my mail is {EMAIL}"}],
                                            stream=True)
    parts = []
    for ev in stream:
        for ch in ev.choices:
            parts.append(ch.delta.content or "")
    text = "".join(parts)
    no_pii(text)
    assert "[EMAIL]" in text and "Thanks." in text
    # the prompt was masked before it reached the LLM
    sent = json.loads(gw["be"].seen[-1]["body"])
    assert EMAIL not in sent["messages"][0]["content"] and "[EMAIL]" in sent["messages"][0]["content"]
    assert gw["be"].seen[-1]["headers"]["authorization"] == "Bearer backend"
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert EMAIL not in r.choices[0].message.content


def test_openai_sdk_streams_tool_calls_with_masked_arguments(gw):
    """Tool-call arguments streamed in fragments (PII split across them) reach
    the SDK masked, as valid JSON, with ids and names intact."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{gw['env'].port}/v1", api_key=gw["token"], max_retries=0)
    tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in ("send_mail", "charge")]
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "go"}], tools=tools, stream=True)
    calls, finish = {}, None
    for ev in stream:
        for ch in ev.choices:
            for tc in ch.delta.tool_calls or []:
                c = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                if tc.id:
                    c["id"] = tc.id
                if tc.function and tc.function.name:
                    c["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    c["arguments"] += tc.function.arguments
            finish = ch.finish_reason or finish
    assert finish == "tool_calls"
    assert [calls[i]["id"] for i in (0, 1)] == ["call_0", "call_1"]
    assert [calls[i]["name"] for i in (0, 1)] == ["send_mail", "charge"]
    raw = [c["arguments"] for c in calls.values()]
    no_pii(" ".join(raw))
    assert json.loads(calls[0]["arguments"]) == {"to": "[EMAIL]", "subject": "hi"}
    assert json.loads(calls[1]["arguments"]) == {"card": "[PAYMENT_CARD]", "amount": 3}


def test_openai_sdk_streams_legacy_completions_masked(gw):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{gw['env'].port}/v1", api_key=gw["token"], max_retries=0)
    text = "".join(c.choices[0].text for c in client.completions.create(model="m", prompt=f"to {EMAIL}", stream=True) if c.choices)
    no_pii(text)
    assert text == "Escalate to [EMAIL] today; SSN [US_SSN] on file. Thanks."
    assert json.loads(gw["be"].seen[-1]["body"])["prompt"] == "to [EMAIL]"


def test_openai_sdk_logprobs_are_withheld(gw):
    """logprobs repeat the text token by token, where a value cut across
    tokens cannot be found: a job asking for them gets null instead, in
    streamed chunks and in whole answers; the content is masked."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{gw['env'].port}/v1", api_key=gw["token"], max_retries=0)
    msgs = [{"role": "user", "content": "hi"}]
    parts = []
    for ev in client.chat.completions.create(model="m", messages=msgs, stream=True, logprobs=True, top_logprobs=1):
        for ch in ev.choices:
            assert ch.logprobs is None
            parts.append(ch.delta.content or "")
    text = "".join(parts)
    assert text == "Escalate to [EMAIL] today; SSN [US_SSN] on file. Thanks."
    r = client.chat.completions.create(model="m", messages=msgs, logprobs=True)
    assert r.choices[0].logprobs is None and r.choices[0].message.content == "Mail [EMAIL]"
    # the request itself still asks for them (request masking leaves `logprobs` alone)
    assert json.loads(gw["be"].seen[-1]["body"])["logprobs"] is True


def test_openai_sdk_streams_responses_api_masked(gw):
    """The Responses API (`client.responses.stream`): text deltas and
    function-call argument deltas with PII split across events reach the
    SDK masked; the SDK's own snapshot checks pass, the final response (from
    response.completed) agrees with the deltas, and arguments stay JSON."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{gw['env'].port}/v1", api_key=gw["token"], max_retries=0)
    text, args, types = "", "", []
    with client.responses.stream(model="m", instructions=f"cc {EMAIL}",
                                 input=[{"role": "user", "content": [{"type": "input_text", "text": f"mail {EMAIL}"}]}]) as stream:
        for ev in stream:
            types.append(ev.type)
            if ev.type == "response.output_text.delta":
                text += ev.delta
                assert ev.logprobs == []
            elif ev.type == "response.function_call_arguments.delta":
                args += ev.delta
        final = stream.get_final_response()
    want = "Escalate to [EMAIL] today; SSN [US_SSN] on file. Thanks."
    assert text == want and final.output_text == want
    assert json.loads(args) == {"to": "[EMAIL]", "note": "card:\n[PAYMENT_CARD]"}
    assert final.output[1].arguments == args
    assert types[-1] == "response.completed"
    assert types.index("response.output_text.done") > max(i for i, t in enumerate(types) if t == "response.output_text.delta")
    no_pii(text + args + final.model_dump_json())
    # the prompt (instructions and input) was masked before it reached the LLM
    sent = json.loads(gw["be"].seen[-1]["body"])
    assert sent["instructions"] == "cc [EMAIL]" and sent["input"][0]["content"][0]["text"] == "mail [EMAIL]"
    assert sent["stream"] is True and sent["model"] == "m"


def test_request_json_masking(gw):
    body = json.dumps({"doc": f"ssn {SSN} mail {EMAIL}", "n": 5}).encode()
    code, _, out = gw["env"].request("POST", "/echo", gw["auth"] + [("content-type", "application/json")], body)
    assert code == 200
    received = json.loads(json.loads(out)["received"])
    assert received["n"] == 5
    no_pii(json.dumps(received))


def test_request_with_trailers_is_masked_whole(gw):
    """A chunked prompt ending in trailers: masked once complete, never forwarded raw."""
    import socket as _s
    env = gw["env"]
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": f"mail {EMAIL}"}]}).encode()
    c = _s.create_connection(("127.0.0.1", env.port), timeout=10)
    c.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {gw['token']}\r\n"
               "content-type: application/json\r\ntransfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n").encode())
    for part in (body[:20], body[20:]):
        c.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        time.sleep(0.05)
    c.sendall(b"0\r\nx-t: 1\r\n\r\n")
    resp = c.recv(65536)
    c.close()
    assert resp.startswith(b"HTTP/1.1 200"), resp[:200]
    sent = gw["be"].seen[-1]["body"].decode()
    assert EMAIL not in sent and "[EMAIL]" in sent


def test_prompt_arriving_during_a_jwks_wait_is_masked(envoy_bin):
    """Cold start: the request and its whole body arrive before the issuer's keys;
    the root context releases it after the fetch and must mask it first."""
    key = Key("ES256", "k1")
    jwks = JwksServer([key])
    jwks.delay = 1.0
    be = Backend()
    pol = policy(key.jwk)
    pol["providers"][0].pop("jwks")
    pol["providers"][0].update({"issuer": jwks.issuer, "jwks_uri": f"{jwks.issuer}/jwks", "cluster": "jwks"})
    env = Envoy(envoy_bin, pol, be.port, clusters={"jwks": jwks.port})
    try:
        tok = key.sign(claims(jwks.issuer, ttl=900))
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": f"mail {EMAIL} ssn {SSN}"}]}).encode()
        t0 = time.time()
        code, _, out = env.request("POST", "/v1/chat/completions", [("authorization", f"Bearer {tok}"), ("content-type", "application/json")], body)
        assert code == 200 and time.time() - t0 > 0.5, "the request did not wait for the keys"
        sent = be.seen[-1]["body"].decode()
        no_pii(sent)
        assert "[EMAIL]" in sent
        [rec] = [r for r in env.audit_records(1) if r["path"] == "/v1/chat/completions"]
        assert rec["masking"].get("email", 0) >= 1 and EMAIL not in json.dumps(rec)
    finally:
        env.stop()
        be.close()
        jwks.close()


# ---------------------------------------------------------------- bodies ending with trailers

TRAILER_SSE = [chunk(0, "")] + [chunk(i, f) for i, f in enumerate(FRAGMENTS)] + [chunk(9, None, "stop")]


class TrailerBackend(_Server):
    """Answers chunked HTTP/1.1 bodies that end with a trailer (`x-checksum`):
    /sse-done (SSE ending in `data: [DONE]`), /sse-open (SSE whose last choice
    never finishes), /json (application/json, buffered), /text (text/plain).
    PII is split across chunks."""

    def __init__(self):

        class H(Handler):
            def do_GET(self):
                if self.path == "/t/sse-done":
                    ctype, parts = "text/event-stream", TRAILER_SSE + [b"data: [DONE]\n\n"]
                elif self.path == "/t/sse-open":
                    ctype, parts = "text/event-stream", TRAILER_SSE[:-1]
                elif self.path == "/t/json":
                    ctype, parts = "application/json", [b'{"id": 7, "note": "Escalate to jane.', b'doe@exam',
                                                        b'ple.com today; SSN 123-', b'45-6789."}']
                else:
                    ctype, parts = "text/plain", [b"Escalate to jane.", b"doe@exam", b"ple.com today; SSN 123-", b"45-6789. Thanks."]
                self.send_response(200)
                self.send_header("content-type", ctype)
                self.send_header("transfer-encoding", "chunked")
                self.send_header("trailer", "x-checksum")
                self.end_headers()
                for p in parts:
                    self.wfile.write(f"{len(p):x}\r\n".encode() + p + b"\r\n")
                    self.wfile.flush()
                    time.sleep(0.01)
                self.wfile.write(b"0\r\nx-checksum: abc123\r\n\r\n")
                self.wfile.flush()

        _Server.__init__(self, lambda _: H)


def get_chunked(port, path, token, timeout=10):
    """GET over a raw HTTP/1.1 connection asking for trailers; returns
    (status, body, trailers, complete): `complete` is whether the chunked body
    ended with its last chunk (else the connection was closed mid-body)."""
    import socket as _s
    c = _s.create_connection(("127.0.0.1", port), timeout=timeout)
    c.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nte: trailers\r\nauthorization: Bearer {token}\r\n\r\n".encode())
    f = c.makefile("rb")
    status = int(f.readline().split()[1])
    while f.readline() not in (b"\r\n", b""):
        pass
    body, trailers, complete = b"", {}, False
    while True:
        line = f.readline()
        if not line:
            break
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while True:
                t = f.readline()
                if t in (b"\r\n", b""):
                    complete = t == b"\r\n"
                    break
                k, _, v = t.decode().partition(":")
                trailers[k.strip().lower()] = v.strip()
            break
        body += f.read(size)
        f.readline()
    c.close()
    return status, body, trailers, complete


@pytest.fixture(scope="module")
def tgw(envoy_bin):
    key = Key("ES256", "k1")
    be = TrailerBackend()
    pol = {"providers": [{"name": "ci", "issuer": ISS, "audiences": ["nhi-gate"], "jwks": {"keys": [key.jwk]}}],
           "resources": [{"name": "t", "path_prefix": "/t/", "read": {"any_of": ["readers"]}, "mask": {}}]}
    env = Envoy(envoy_bin, pol, be.port, trailers=True)
    yield {"env": env, "token": key.sign(claims(ISS, ttl=900))}
    env.stop()
    be.close()


def sse_content(body):
    text = ""
    for e in body.decode().split("\n\n"):
        if e.startswith("data: {"):
            for ch in json.loads(e[6:]).get("choices", []):
                text += ch["delta"].get("content") or ""
    return text


def test_sse_ending_with_done_then_trailers_is_whole_and_masked(tgw):
    """Nothing is held once [DONE] went through: the body and the trailers arrive whole."""
    status, body, trailers, complete = get_chunked(tgw["env"].port, "/t/sse-done", tgw["token"])
    assert status == 200 and complete, body
    assert trailers.get("x-checksum") == "abc123"
    no_pii(body.decode())
    assert sse_content(body) == "Escalate to [EMAIL] today; SSN [US_SSN] on file. Thanks."
    assert body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("path", ["/t/text", "/t/sse-open"])
def test_stream_holding_bytes_at_trailers_is_reset_never_leaked(tgw, path):
    """Envoy cannot take body bytes at trailers time: a stream that still holds
    bytes is reset (the client sees an incomplete body), never sent unmasked,
    never silently cut; the reset is counted."""
    env = tgw["env"]
    before = env.stats().get("wasmcustom.nhi_gate_stream_tail_reset", 0)
    status, body, trailers, complete = get_chunked(env.port, path, tgw["token"])
    assert status == 200
    assert not complete and not trailers, (body, trailers)
    no_pii(body.decode(errors="replace"))
    assert b"Thanks" not in body, "the held tail never goes out"
    deadline = time.time() + 5
    while env.stats().get("wasmcustom.nhi_gate_stream_tail_reset", 0) != before + 1 and time.time() < deadline:
        time.sleep(0.1)
    assert env.stats().get("wasmcustom.nhi_gate_stream_tail_reset", 0) == before + 1
    assert "resetting the stream" in env.logs()


def test_buffered_json_ending_with_trailers_is_masked_whole(tgw):
    """A buffered body's last chunk was paused, so Envoy still holds it at
    trailers time: it is masked then; body and trailers arrive whole."""
    status, body, trailers, complete = get_chunked(tgw["env"].port, "/t/json", tgw["token"])
    assert status == 200 and complete, body
    assert trailers.get("x-checksum") == "abc123"
    no_pii(body.decode())
    assert json.loads(body) == {"id": 7, "note": "Escalate to [EMAIL] today; SSN [US_SSN]."}


class BigBackend(_Server):
    """Bodies around Envoy's default buffer limit (1 MiB), which is also the
    default masking limit: `/grows` is under it but ~6 % longer once masked
    (each `a@b.co` becomes `[EMAIL]`), `/announced` declares 1.2 MB up front."""

    def __init__(self):
        class H(Handler):
            def do_GET(self):
                if self.path == "/big/grows":
                    body = json.dumps(["a@b.co"] * 110_000, separators=(",", ":")).encode()
                elif self.path == "/big/announced":
                    body = json.dumps({"pad": "x" * 1_200_000}).encode()
                else:
                    body = json.dumps({"mail": EMAIL}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n)
                self.send_response(200)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        _Server.__init__(self, lambda _: H)


@pytest.fixture(scope="module")
def big_gw(envoy_bin):
    key = Key("ES256", "k1")
    be = BigBackend()
    pol = {"providers": [{"name": "ci", "issuer": ISS, "audiences": ["nhi-gate"], "jwks": {"keys": [key.jwk]}}],
           "resources": [{"name": "big", "path_prefix": "/big/", "read": {"any_of": ["readers"]}, "write": {"any_of": ["readers"]},
                          "mask": {"requests": "json"}}]}
    env = Envoy(envoy_bin, pol, be.port)
    yield {"env": env, "auth": [("authorization", f"Bearer {key.sign(claims(ISS, ttl=900))}")]}
    env.stop()
    be.close()


def assert_alive(big_gw):
    """Envoy still runs and answers (a GET without a body on a resource that
    masks request bodies passes: there is nothing to mask)."""
    assert big_gw["env"].proc.poll() is None, "Envoy exited"
    code, _, body = big_gw["env"].request("GET", "/big/small", big_gw["auth"])
    assert code == 200 and json.loads(body) == {"mail": "[EMAIL]"}


def test_masked_body_growing_past_envoys_buffer_limit_fails_closed_without_crashing(big_gw):
    """Default limits (masking and Envoy's buffer: 1 MiB). Writing the longer
    masked body into Envoy's paused buffer made Envoy answer 500 from inside
    the body callback, which re-entered the module and aborted the VM (and
    Envoy with it). The filter refuses it first."""
    code, h, body = big_gw["env"].request("GET", "/big/grows", big_gw["auth"])
    assert code == 502 and json.loads(body)["reason"] == "response_too_large"
    assert b"a@b.co" not in body
    assert_alive(big_gw)


def test_body_announced_over_the_limit_gets_the_filters_reply(big_gw):
    """Content-Length over the limit: refused at the response headers with
    the filter's reason, not Envoy's own 500 once its buffer overflows."""
    code, h, body = big_gw["env"].request("GET", "/big/announced", big_gw["auth"])
    assert code == 502 and json.loads(body)["reason"] == "response_too_large"
    assert_alive(big_gw)


def test_request_growing_past_the_limit_is_refused(big_gw):
    body = json.dumps(["a@b.co"] * 110_000, separators=(",", ":")).encode()
    code, h, out = big_gw["env"].request("POST", "/big/echo", big_gw["auth"] + [("content-type", "application/json")], body)
    assert code == 413 and json.loads(out)["reason"] == "request_too_large"
    assert_alive(big_gw)
