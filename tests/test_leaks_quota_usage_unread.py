"""Token quota: the reported usage must be what is debited. Each completion
here reports 600 tokens (20 prompt + 580 completion, most of it reasoning
tokens that are not in the body). Budget 1000 per day: after two requests
(1200 tokens) nothing more may be admitted."""
import json

import pytest

from llm_upstream import post, quota_fixture, uid

BUDGET = 1000


st = quota_fixture(BUDGET)


def send(st, sub, path, body, extra=()):
    return post(st, sub, path, json.dumps(body).encode(), extra=extra)


def admitted(st, path, body, extra=(), tries=6):
    sub = uid()
    codes = [send(st, sub, path, body, extra)[0] for _ in range(tries)]
    return codes


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_control_plain_json_usage_is_debited(st):
    codes = admitted(st, "/v1/chat/completions", CHAT)
    assert codes.count(200) == 2, codes


def test_gzip_answer_hides_usage_from_the_quota(st):
    """The job asks for a compressed answer (the OpenAI SDK sends
    Accept-Encoding: gzip by default); the filter reads `usage` from the raw
    (compressed) tail, finds none and debits a body-size estimate (~10 tokens)."""
    codes = admitted(st, "/v1/chat/completions", CHAT, extra=[("accept-encoding", "gzip, deflate")])
    assert codes.count(200) <= 2, f"{codes}: budget of {BUDGET} overspent ({codes.count(200)} x 600 tokens)"


def test_responses_metadata_echo_after_usage_hides_usage(st):
    """OpenAI's Response object lists `user` and `metadata` after `usage`;
    metadata is the job's. A metadata member named `usage` becomes the
    last `"usage"` key of the tail and the real usage is ignored."""
    body = {"model": "m", "input": "hi", "metadata": {"usage": "x"}}
    codes = admitted(st, "/v1/responses", body)
    assert codes.count(200) <= 2, f"{codes}: budget of {BUDGET} overspent ({codes.count(200)} x 600 tokens)"


def test_n_choices_ignored_by_max_tokens_precheck(st):
    """check_max_tokens refuses max_tokens over what is left, but n=10 asks
    for 10 completions of max_tokens each; one request spends 5.8x the budget."""
    body = dict(CHAT, n=10, max_tokens=600)
    env, llm, key = st
    sub = uid()
    code, _, out = send(st, sub, "/v1/chat/completions", body)
    assert code == 429, f"n=10 x max_tokens=600 = 6000 > budget {BUDGET}, admitted: {out[:200]}"


def test_audit_shows_estimate_for_gzip(st):
    env, llm, key = st
    sub = uid("audit")
    code, h, _ = send(st, sub, "/v1/chat/completions", CHAT, extra=[("accept-encoding", "gzip")])
    # the gateway asks the upstream for identity encoding, so usage can be read
    assert code == 200 and h.get("content-encoding") in (None, "identity")
    import time
    time.sleep(0.5)
    recs = [r for r in env.audit_records() if (r.get("identity") or {}).get("subject") == sub]
    assert recs, "no audit record"
    u = recs[-1]["usage"]
    assert u["estimated"] is False and u["total_tokens"] == 600, u
