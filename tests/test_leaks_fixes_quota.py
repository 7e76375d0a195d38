"""Quota: usage behind up to 16 KiB of caller metadata is still read, and a
JSON body under a non-JSON declared type gets the strict-JSON rule."""
import codecs, json
import pytest
from llm_upstream import Llm, post, quota_fixture, uid

BUDGET = 100000


class BigLlm(Llm):
    # a reasoning model / previous_response_id / file input: usage far above body bytes / 4
    COMPLETION = 49980


st = quota_fixture(BUDGET, BigLlm)


def test_control_usage_debited(st):
    sub = uid()
    body = json.dumps({"model": "m", "input": "hi"}).encode()
    codes = [post(st, sub, "/v1/responses", body)[0] for _ in range(4)]
    assert codes.count(200) == 2, codes


def test_responses_metadata_pushes_usage_out_of_tail(st):
    """OpenAI's Response object puts `metadata` (the caller's: 16 keys x 512 chars
    allowed) after `usage`. ~6 KiB of metadata moved the real usage out of the last
    4 KiB that were read, so a body-size estimate (~3k tokens) was debited instead
    of the reported 50k; the filter now keeps the last 16 KiB."""
    sub = uid()
    meta = {f"k{i:02d}": "x" * 500 for i in range(12)}
    body = json.dumps({"model": "m", "input": "hi", "metadata": meta}).encode()
    codes = [post(st, sub, "/v1/responses", body)[0] for _ in range(6)]
    assert codes.count(200) <= 2, f"{codes}: budget {BUDGET} overspent ({codes.count(200)} x 50000 tokens)"


def test_multipart_declared_lenient_json_skips_max_tokens_check(st):
    """A body declared multipart/form-data skips the strict-JSON check; a UTF-8 BOM
    then keeps the gateway from reading max_tokens, while a backend that parses the
    body as JSON whatever its type (Starlette request.json(): json.loads on bytes
    reads the BOM as utf-8-sig; SGLang, this mock) reads max_tokens 10**6."""
    sub = uid()
    body = codecs.BOM_UTF8 + json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                         "max_tokens": 1000000}).encode()
    code, _, out = post(st, sub, "/v1/chat/completions", body, ctype="multipart/form-data; boundary=x")
    assert code in (400, 429), f"max_tokens 1e6 > budget {BUDGET} admitted ({code}): {out[:200]}"
