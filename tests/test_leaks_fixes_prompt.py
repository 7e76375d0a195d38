"""requests: chat_messages exceptions (thinking blocks, data URIs, base64-looking strings)."""
import pytest
from prompt_gateway import EMAIL, SSN, CARD, post, start

# sk-ant-api03- key shape (the Anthropic-key detector masks it in ordinary text)
ANT_KEY = "sk-ant-api03-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAB7CDE0FGH3IJK6LMN9OPQ2RST5UVW8XYZ1abc4def7ghi0jkl3mno6pqr-QwErTyAA"
GH_PAT = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef"


@pytest.fixture(scope="module")
def g(envoy_bin):
    s = start(envoy_bin)
    yield s
    s["env"].stop(); s["up"].close()


def _sent(g, path, body):
    code, out, sent = post(g, path, body)
    return code, (sent or b"").decode("utf-8", "replace")


def test_control_plain_message_is_masked(g):
    code, sent = _sent(g, "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": f"mail {EMAIL} key {ANT_KEY} ssn {SSN}"}]})
    assert EMAIL not in sent and SSN not in sent and ANT_KEY not in sent, sent


def test_top_level_type_thinking_skips_whole_body(g):
    """Any object with "type": "thinking" is skipped whole - also the request body
    itself. vLLM / SGLang / llama.cpp / Ollama ignore an unknown top-level member."""
    code, sent = _sent(g, "/v1/chat/completions", {"type": "thinking", "model": "m",
                       "messages": [{"role": "user", "content": f"Customer {EMAIL}, SSN {SSN}, card {CARD}"}]})
    assert code != 200 or not any(v in sent for v in (EMAIL, SSN, CARD)), f"prompt PII forwarded unmasked: {sent[:300]}"


def test_message_type_thinking(g):
    """A chat message carrying an extra "type": "thinking" member: its content is not masked
    (pydantic TypedDict messages in vLLM ignore the extra key)."""
    code, sent = _sent(g, "/v1/chat/completions", {"model": "m",
                       "messages": [{"role": "user", "type": "thinking", "content": f"Customer {EMAIL}, SSN {SSN}"}]})
    assert code != 200 or not any(v in sent for v in (EMAIL, SSN)), f"prompt PII forwarded unmasked: {sent[:300]}"


def test_text_starting_with_data_colon(g):
    """Any string starting with "data:" counts as a data URI - e.g. a tool result that
    is a captured SSE log ("data: {...}")."""
    log = f'data: {{"customer": "{EMAIL}", "ssn": "{SSN}"}}\n\ndata: [DONE]'
    code, sent = _sent(g, "/v1/chat/completions", {"model": "m", "messages": [
        {"role": "user", "content": "what does this log say?"},
        {"role": "tool", "tool_call_id": "c1", "content": log}]})
    assert code != 200 or not any(v in sent for v in (EMAIL, SSN)), f"prompt PII forwarded unmasked: {sent[:300]}"


@pytest.mark.parametrize("secret", [ANT_KEY, GH_PAT], ids=["anthropic_key", "github_pat"])
def test_api_key_alone_in_a_string(g, secret):
    """A key that is a whole string value (a tool returning an env var) is >= 64 bytes of
    the base64url alphabet, so it counts as an encoded payload and is not masked."""
    code, sent = _sent(g, "/v1/responses", {"model": "m", "input": [
        {"type": "function_call_output", "call_id": "c1", "output": secret},
        {"role": "user", "content": "use it"}]})
    assert code != 200 or secret not in sent, f"secret forwarded unmasked"
