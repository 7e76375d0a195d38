"""The approval hold inside real Envoy, against a scriptable approval service
(harness.FakeApprovals) for the answers and faults a real service rarely gives:
what is held and what is not, the callout's content, approved / denied /
pending answers, fail-closed 503s, body limits, client aborts, out-of-order
decisions, and a hold that starts after a JWKS wait (root-dispatched callout).
The end-to-end flow with the real `nhi-gate approvals serve` is in
test_approval_service.py."""
import hashlib
import json
import socket
import threading
import time

import pytest

from harness import Envoy, FakeApprovals, JwksServer, Upstream, claims

ISS = "https://ci.test"
HOLD_S = 2


def policy(jwk=None, issuer=ISS, cluster="approvals", **approval):
    provider = {"name": "ci", "issuer": issuer, "audiences": ["nhi-gate"]}
    if jwk:
        provider["jwks"] = {"keys": [jwk]}
    else:
        provider.update({"jwks_uri": f"{issuer}/jwks", "cluster": "jwks"})
    a = {"cluster": cluster, "hold_seconds": HOLD_S, "timeout_ms": 2000, "exempt_groups": ["break-glass"], "max_body_bytes": 4096,
         "preview_bytes": 64, "requests": [{"methods": ["GET"], "path_glob": "/collections/*/export"}]}
    a.update(approval)
    return {
        "providers": [provider],
        "resources": [{
            "name": "vectors", "path_prefix": "/collections",
            "operations": [{"methods": ["POST"], "path_glob": "/collections/*/points/search", "class": "read"}],
            "read": {"any_of": ["readers", "ingest"]}, "write": {"any_of": ["ingest"]},
            "upstream_headers": {"api-key": "backend-key"},
            "approval": a,
        }],
    }


@pytest.fixture(scope="module")
def stack(envoy_bin, keys):
    fake = FakeApprovals()
    up = Upstream()
    env = Envoy(envoy_bin, policy(keys["es"].jwk), up.port, clusters={"approvals": fake.port})
    yield env, fake, up
    env.stop()
    up.close()
    fake.close()


def auth(keys, sub="ci-ingest", groups=("ingest",)):
    return ("authorization", "Bearer " + keys["es"].sign(claims(ISS, sub=sub, groups=groups, jti=f"j-{sub}")))


def reset(fake, up, decide):
    fake.decide = decide
    with fake.lock:
        fake.calls.clear()
        fake.abandons.clear()
    with up.lock:
        up.requests.clear()


def test_approved_inline_forwards_exact_body_once_after_decision(stack, keys):
    env, fake, up = stack
    decided = []

    def decide(call):
        time.sleep(0.5)  # a person clicking "approve"
        decided.append(time.time())
        return fake.answer("approved", approval_id="apr_ok", approver="alice")

    reset(fake, up, decide)
    body = json.dumps({"points": [{"id": 1, "vector": [0.1, 0.2], "payload": {"t": "x" * 100}}]}).encode()
    st, h, out = env.request("PUT", "/collections/docs/points", [auth(keys), ("content-type", "application/json")], body)
    assert st == 200, out
    assert up.count == 1
    got = up.last()
    assert got["body"] == body and got["method"] == "PUT"
    assert got["t"] >= decided[0], "upstream saw the request before the decision"
    assert got["headers"]["api-key"] == ["backend-key"] and "authorization" not in got["headers"]
    # the callout carries what approvers need, bound to the body digest
    [call] = fake.calls
    c = call["json"]
    assert call["path"] == "/v1/check" and call["headers"]["content-type"] == "application/json"
    assert c["version"] == 1 and c["approval_id"] is None and len(c["hold_id"]) == 32
    assert c["identity"]["subject"] == "ci-ingest" and c["identity"]["groups"] == ["ingest"]
    assert c["identity"]["jti"] == "j-ci-ingest" and c["identity"]["issuer"] == ISS
    assert (c["resource"], c["operation"], c["method"], c["path"]) == ("vectors", "write", "PUT", "/collections/docs/points")
    assert c["body"]["sha256"] == hashlib.sha256(body).hexdigest() and c["body"]["size"] == len(body)
    assert c["body"]["preview"] == body[:64].decode() and c["body"]["truncated"] is True
    assert c["wait_ms"] == HOLD_S * 1000 and c["grant"] == {"uses": 1, "window_seconds": 900}
    assert c["source"].startswith("127.0.0.1:") and c["request_id"]
    assert abs(c["time_ms"] / 1000 - call["t"]) < 5


def test_denied_gives_403_with_the_approvers_reason(stack, keys):
    env, fake, up = stack
    reset(fake, up, lambda call: fake.answer("denied", approval_id="apr_no", reason="approval_denied", message="not during the freeze"))
    st, h, out = env.request("DELETE", "/collections/docs", [auth(keys)])
    assert st == 403 and up.count == 0
    j = json.loads(out)
    assert j["reason"] == "approval_denied" and j["detail"] == "not during the freeze"
    assert h["x-nhi-reason"] == "approval_denied"


def test_pending_gives_202_with_retry_after_and_nothing_forwarded(stack, keys):
    env, fake, up = stack
    reset(fake, up, lambda call: fake.answer("pending", approval_id="apr_wait", status_url="http://approvals/v1/approvals/apr_wait", retry_after=7))
    st, h, out = env.request("POST", "/collections/docs/points/delete", [auth(keys)], b'{"points":[1]}')
    assert st == 202 and up.count == 0
    assert h["retry-after"] == "7" and h["x-nhi-approval-id"] == "apr_wait"
    assert json.loads(out) == {"approval_id": "apr_wait", "status": "pending", "status_url": "http://approvals/v1/approvals/apr_wait", "retry_after": 7}


def test_retry_header_is_sent_as_a_redeem_and_never_forwarded(stack, keys):
    env, fake, up = stack
    reset(fake, up, lambda call: fake.answer("approved", approval_id=call["json"]["approval_id"]))
    st, _, _ = env.request("PUT", "/collections/docs/points", [auth(keys), ("x-nhi-approval", "apr_wait")], b"{}")
    assert st == 200 and fake.calls[0]["json"]["approval_id"] == "apr_wait"
    assert "x-nhi-approval" not in up.last()["headers"]
    # a service that approves some other approval than the one redeemed is not trusted
    reset(fake, up, lambda call: fake.answer("approved", approval_id="apr_other"))
    st, _, out = env.request("PUT", "/collections/docs/points", [auth(keys), ("x-nhi-approval", "apr_wait")], b"{}")
    assert st == 503 and up.count == 0
    # malformed ids never reach the service
    reset(fake, up, lambda call: fake.answer("approved", approval_id="x"))
    for bad in ["apr wait", "a" * 129, "apr_1/../x"]:
        st, _, out = env.request("PUT", "/collections/docs/points", [auth(keys), ("x-nhi-approval", bad)], b"{}")
        assert st == 403 and json.loads(out)["reason"] == "approval_unknown"
    assert fake.calls == [] and up.count == 0


@pytest.mark.parametrize("kind", ["garbage", "not_object", "unknown_status", "http_500", "pending_without_id", "empty"])
def test_bad_answers_fail_closed_with_503(stack, keys, kind):
    env, fake, up = stack
    answers = {
        "garbage": (200, b"<html>oops"),
        "not_object": (200, b"[1,2]"),
        "unknown_status": fake.answer("maybe", approval_id="apr_1"),
        "http_500": (500, b'{"status":"approved"}'),
        "pending_without_id": fake.answer("pending"),
        "empty": (200, b""),
    }
    reset(fake, up, lambda call: answers[kind])
    st, h, out = env.request("PUT", "/collections/docs/points", [auth(keys)], b"{}")
    assert st == 503 and json.loads(out)["reason"] == "approval_unavailable"
    assert up.count == 0


def test_slow_service_fails_closed_after_hold_plus_grace(stack, keys):
    env, fake, up = stack
    release = threading.Event()

    def decide(call):
        release.wait(20)
        return fake.answer("approved", approval_id="apr_late")

    reset(fake, up, decide)
    t0 = time.time()
    st, _, out = env.request("PUT", "/collections/docs/points", [auth(keys)], b"{}", timeout=30)
    took = time.time() - t0
    release.set()
    assert st == 503 and json.loads(out)["reason"] == "approval_unavailable" and up.count == 0
    assert HOLD_S + 1 < took < HOLD_S + 5  # hold + timeout_ms (2 s here)


def test_reads_and_exempt_groups_are_not_held(stack, keys):
    env, fake, up = stack
    reset(fake, up, lambda call: fake.answer("denied", reason="approval_denied"))
    st, _, _ = env.request("GET", "/collections/docs", [auth(keys)])
    assert st == 200
    st, _, _ = env.request("POST", "/collections/docs/points/search", [auth(keys)], b'{"vector":[1]}')
    assert st == 200
    st, _, _ = env.request("PUT", "/collections/docs/points", [auth(keys, "oncall", ("ingest", "break-glass"))], b"{}")
    assert st == 200
    assert fake.calls == [] and up.count == 3
    # a listed method+path pattern holds a read too
    st, _, _ = env.request("GET", "/collections/docs/export", [auth(keys)])
    assert st == 403 and len(fake.calls) == 1 and up.count == 3
    # policy still applies first: a reader may not write, approval or not
    st, _, out = env.request("PUT", "/collections/docs/points", [auth(keys, "reader", ("readers",))], b"{}")
    assert st == 403 and json.loads(out)["reason"] == "group_not_allowed" and len(fake.calls) == 1


def test_body_over_limit_is_413_and_never_forwarded(stack, keys):
    env, fake, up = stack
    reset(fake, up, lambda call: fake.answer("approved", approval_id="apr_1"))
    st, _, out = env.request("PUT", "/collections/docs/points", [auth(keys)], b"x" * 5000)
    assert st == 413 and json.loads(out)["reason"] == "approval_body_too_large"
    assert fake.calls == [] and up.count == 0


def test_chunked_body_is_hashed_whole(stack, keys):
    env, fake, up = stack
    reset(fake, up, lambda call: fake.answer("approved", approval_id="apr_1"))
    parts = [b'{"points":[', b'{"id":1}', b"]}"]
    s = socket.create_connection(("127.0.0.1", env.port), timeout=10)
    a = auth(keys)
    s.sendall(f"PUT /collections/docs/points HTTP/1.1\r\nhost: x\r\n{a[0]}: {a[1]}\r\ntransfer-encoding: chunked\r\n\r\n".encode())
    for p in parts:
        s.sendall(f"{len(p):x}\r\n".encode() + p + b"\r\n")
        time.sleep(0.1)
    s.sendall(b"0\r\n\r\n")
    resp = s.recv(4096)
    s.close()
    assert resp.startswith(b"HTTP/1.1 200"), resp
    whole = b"".join(parts)
    assert fake.calls[0]["json"]["body"]["sha256"] == hashlib.sha256(whole).hexdigest()
    assert up.last()["body"] == whole


def test_client_abort_while_held_is_never_forwarded_and_abandoned(stack, keys):
    env, fake, up = stack
    release = threading.Event()

    def decide(call):
        release.wait(10)
        return fake.answer("approved", approval_id="apr_ab")

    reset(fake, up, decide)
    a = auth(keys)
    s = socket.create_connection(("127.0.0.1", env.port), timeout=10)
    s.sendall(f"PUT /collections/docs/points HTTP/1.1\r\nhost: x\r\n{a[0]}: {a[1]}\r\ncontent-length: 2\r\n\r\n{{}}".encode())
    deadline = time.time() + 5
    while not fake.calls and time.time() < deadline:
        time.sleep(0.05)
    assert fake.calls, "the request was not held"
    s.close()  # the job gives up
    deadline = time.time() + 5
    while not fake.abandons and time.time() < deadline:
        time.sleep(0.05)
    release.set()  # the approver says yes, too late
    time.sleep(0.5)
    assert fake.abandons == [fake.calls[0]["json"]["hold_id"]]
    assert up.count == 0


def test_held_requests_released_in_another_order(stack, keys):
    env, fake, up = stack
    gates = {}

    def decide(call):
        name = call["json"]["path"].rsplit("/", 1)[-1]
        gates[name].wait(10)
        return fake.answer("approved", approval_id=f"apr_{name}")

    reset(fake, up, decide)
    names = ["a", "b", "c"]
    for n in names:
        gates[n] = threading.Event()
    results = {}

    def send(n):
        results[n] = env.request("PUT", f"/collections/docs/points/{n}", [auth(keys)], n.encode() * 3)

    threads = [threading.Thread(target=send, args=(n,)) for n in names]
    for t in threads:
        t.start()
        time.sleep(0.1)
    deadline = time.time() + 5
    while len(fake.calls) < 3 and time.time() < deadline:
        time.sleep(0.05)
    assert len(fake.calls) == 3 and up.count == 0
    for n in ["c", "a", "b"]:
        gates[n].set()
        deadline = time.time() + 5
        while not any(r["path"].endswith("/" + n) for r in list(up.requests)) and time.time() < deadline:
            time.sleep(0.02)
    for t in threads:
        t.join(10)
    assert [r["path"].rsplit("/", 1)[-1] for r in up.requests] == ["c", "a", "b"]
    assert all(results[n][0] == 200 for n in names)
    assert {r["path"].rsplit("/", 1)[-1]: r["body"] for r in up.requests} == {n: n.encode() * 3 for n in names}


def test_service_down_or_cluster_missing_is_503(envoy_bin, keys):
    up = Upstream()
    fake = FakeApprovals()
    dead = fake.port
    fake.close()  # nothing listens there now
    pol = policy(keys["es"].jwk)
    pol["resources"].append({"name": "other", "path_prefix": "/other", "write": {"any_of": ["ingest"]},
                             "approval": {"cluster": "no-such-cluster"}})
    env = Envoy(envoy_bin, pol, up.port, clusters={"approvals": dead})
    try:
        st, _, out = env.request("PUT", "/collections/docs/points", [auth(keys)], b"{}")
        assert st == 503 and json.loads(out)["reason"] == "approval_unavailable"
        st, _, out = env.request("PUT", "/other/x", [auth(keys)], b"{}")
        assert st == 503 and json.loads(out)["reason"] == "approval_unavailable"
        assert up.count == 0
    finally:
        env.stop()
        up.close()


def test_hold_after_jwks_wait_is_dispatched_for_the_resumed_stream(envoy_bin, keys):
    """The request (with its whole body) arrives before the issuer's keys: the
    root context resumes it after the fetch and must start the hold itself."""
    jwks = JwksServer([keys["es"]])
    jwks.delay = 1.3
    fake = FakeApprovals(lambda call: FakeApprovals.answer("approved", approval_id="apr_j"))
    up = Upstream()
    env = Envoy(envoy_bin, policy(issuer=jwks.issuer), up.port, clusters={"approvals": fake.port, "jwks": jwks.port})
    try:
        tok = keys["es"].sign(claims(jwks.issuer, sub="ci-ingest", groups=("ingest",)))
        t0 = time.time()
        st, _, out = env.request("PUT", "/collections/docs/points", [("authorization", f"Bearer {tok}")], b'{"p":1}')
        assert st == 200, out
        assert time.time() - t0 > 1.0, "the request did not wait for the keys"
        assert len(fake.calls) == 1 and fake.calls[0]["json"]["body"]["size"] == 7
        assert up.count == 1 and up.last()["body"] == b'{"p":1}'
        # and a denial on that path is a local reply, not a forward
        fake.decide = lambda call: FakeApprovals.answer("denied", reason="approval_mismatch", message="other body")
        st, _, out = env.request("PUT", "/collections/docs/points", [("authorization", f"Bearer {tok}")], b'{"p":2}')
        assert st == 403 and json.loads(out)["reason"] == "approval_mismatch" and up.count == 1
    finally:
        env.stop()
        up.close()
        fake.close()
        jwks.close()
