"""Attack (fixed): the backend credential injected by the gateway (`upstream_headers`)
reaches the job when the upstream reflects request headers - in a masked JSON
body, in a response header, or in a redirect Location - and it is written to
the audit record (README: "backend credentials are never recorded").

Expected: the filter knows the exact credential values it injected for this
resource; a response that carries one of them is redacted or refused (5xx),
never delivered, and never recorded."""
import json
import pytest
from leak_upstream import SECRET, auth_headers, stack_fixture, token


stack = stack_fixture()


def test_echoed_credential_in_masked_json_body(stack):
    env, up = stack
    up.respond = None  # default: JSON echo of the request headers (like httpbin /anything, debug/error handlers)
    code, headers, body = env.request("POST", "/collections/docs/points/search", auth_headers(), b"{}")
    assert up.requests[-1]["headers"]["api-key"] == [SECRET]  # injected upstream, as designed
    assert SECRET.encode() not in body, f"backend credential returned to the job ({code}): {body[:300]!r}"


def test_llm_bearer_credential_echoed_in_error(stack):
    env, up = stack
    def err(h, req):
        # e.g. a backend/proxy error that quotes the offending header
        h.reply(401, json.dumps({"error": {"message": "invalid key: " + req["headers"]["authorization"][0]}}).encode())
    up.respond = err
    code, headers, body = env.request("POST", "/v1/chat/completions", auth_headers(), b'{"messages": []}')
    assert SECRET.encode() not in body, f"backend credential returned to the job ({code}): {body[:300]!r}"


def test_echoed_credential_in_response_header(stack):
    env, up = stack
    def f(h, req):
        h.send_response(200)
        h.send_header("content-type", "application/json")
        h.send_header("x-debug-api-key", req["headers"]["api-key"][0])
        h.send_header("content-length", "2")
        h.end_headers()
        h.wfile.write(b"{}")
    up.respond = f
    code, headers, body = env.request("GET", "/collections/docs", auth_headers())
    assert not any(SECRET in v for v in headers.values()), f"backend credential in a response header: {headers}"


def test_echoed_credential_in_redirect_location(stack):
    env, up = stack
    def f(h, req):
        h.send_response(302)
        h.send_header("location", "/collections/docs?api_key=" + req["headers"]["api-key"][0])
        h.send_header("content-type", "text/plain")
        h.send_header("content-length", "0")
        h.end_headers()
    up.respond = f
    code, headers, body = env.request("GET", "/collections/docs", auth_headers())
    assert SECRET not in headers.get("location", ""), f"backend credential in Location: {headers.get('location')}"


def test_echoed_credential_not_in_audit_record(stack):
    env, up = stack
    up.respond = None
    env.request("POST", "/collections/docs/points/search", auth_headers(), b"{}")
    import time
    time.sleep(0.6)
    recs = env.audit_records()
    assert recs
    assert not any(SECRET in json.dumps(r) for r in recs), "backend credential written to the audit record"
