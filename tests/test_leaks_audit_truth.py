"""Audit records say what happened: a client leaving while a masked body is
buffered, streams the filter resets, approvals answered for another id, and
denials naming the approval and its denier (each used to be recorded wrongly)."""
import json, subprocess, threading, time
import pytest
from audit_stack import *
from harness import Envoy, FakeApprovals


@pytest.fixture(scope="module")
def stack(envoy_bin, keys):
    be = Backend()
    appr = FakeApprovals()
    env = Envoy(envoy_bin, policy(keys["es"].jwk), be.port, clusters={"approvals": appr.port}, trailers=True)
    yield env, be, appr
    env.stop(); be.close(); appr.close()


def one(env, path):
    recs = record_for(env, path)
    assert len(recs) == 1, recs
    return recs[0]


def test_client_hangup_while_masked_json_is_buffered_is_recorded_as_deny(stack, keys):
    """Upstream sent its headers (paused for masking), body still coming; the client leaves.
    Observed: decision deny, reason downstream_remote_disconnect, status 200, aborted false.
    Expected: allowed and forwarded, the client aborted: decision allow, aborted true, status 0."""
    env, be, _ = stack
    t = tok(keys)
    s = socket.create_connection(("127.0.0.1", env.port))
    s.sendall(b"GET /docs/slowjson?h1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + t.encode() + b"\r\n\r\n")
    time.sleep(0.6)
    s.close()
    time.sleep(2.5)
    r = one(env, "/docs/slowjson?h1")
    assert (r["decision"], r["reason"], r["aborted"], r["status"]) == ("allow", None, True, 0), r


def test_h2_client_reset_while_masked_json_is_buffered(stack, keys):
    env, be, _ = stack
    t = tok(keys)
    subprocess.run(["curl", "-s", "-o", "/dev/null", "--http2-prior-knowledge", "-m", "0.5", "-H", f"authorization: Bearer {t}",
                    f"http://127.0.0.1:{env.port}/docs/slowjson?h2"], timeout=10)
    time.sleep(2.5)
    r = one(env, "/docs/slowjson?h2")
    assert (r["decision"], r["aborted"]) == ("allow", True), r


def test_stream_reset_for_nul_bytes_is_not_a_client_abort(stack, keys):
    """The filter resets a streamed text/plain answer holding NUL bytes (UTF-16).
    Observed: decision allow, reason null, status 200, aborted true (= "the client hung up").
    Expected: the record names the failure (reason unmaskable_charset) and does not blame the client."""
    env, be, _ = stack
    try:
        env.request("GET", "/docs/nul", A(tok(keys)))
    except Exception:
        pass
    r = one(env, "/docs/nul")
    assert r["reason"] == "unmaskable_charset" and r["decision"] != "allow" and r["aborted"] is False, r


def test_stream_tail_reset_is_recorded(stack, keys):
    """A streamed text body ending with trailers is reset by the filter (README known limit),
    but its record says decision allow, reason null, masking {}, aborted true (client hung up)."""
    env, be, _ = stack
    try:
        env.request("GET", "/docs/tailreset", A(tok(keys)))
    except Exception:
        pass
    r = one(env, "/docs/tailreset")
    assert r["reason"] is not None and r["decision"] != "allow" and r["aborted"] is False, r


def test_redeem_answered_with_another_approval_is_not_recorded_as_approved(stack, keys):
    """The service approves apr_other for a redeem of apr_mine: the filter refuses 503
    approval_unavailable (correct) but the record says approval.outcome approved, approval_id
    apr_other, approver mallory, decided_ms set."""
    env, be, appr = stack
    appr.decide = lambda call: FakeApprovals.answer("approved", approval_id="apr_other", approver="mallory")
    st, _, _ = env.request("PUT", "/docs/redeem-other", A(tok(keys, ("writers",), "ci-ingest")) + [("x-nhi-approval", "apr_mine")], b"{}")
    assert st == 503
    r = one(env, "/docs/redeem-other")
    assert r["reason"] == "approval_unavailable"
    assert r["approval"]["outcome"] == "unavailable", r["approval"]
    assert r["approval"]["approval_id"] in (None, "apr_mine"), r["approval"]


def test_denial_record_keeps_the_services_approval_id_and_denier(stack, keys):
    """A new request denied by approver bob for approval apr_no: the record has approval_id null
    and approver null, so it cannot be linked to the approval nor say who denied
    (protocol: `approver` names who approved or who denied)."""
    env, be, appr = stack
    appr.decide = lambda call: FakeApprovals.answer("denied", approval_id="apr_no", reason="approval_denied", approver="bob", message="no")
    st, _, _ = env.request("PUT", "/docs/denied", A(tok(keys, ("writers",), "ci-ingest")), b"{}")
    assert st == 403
    r = one(env, "/docs/denied")
    assert (r["approval"]["approval_id"], r["approval"]["approver"]) == ("apr_no", "bob"), r["approval"]
