"""The approval flow end to end: Envoy with nhi-gate, the real reference
service (`nhi-gate approvals serve`, SQLite) and approvers using the
`nhi-gate approvals` CLI. Upstream counters and timestamps prove what was
forwarded, when, and how often."""
import json
import socket
import threading
import time

import pytest

from harness import ApprovalService, Envoy, Upstream, claims

ISS = "https://ci.test"
HOLD_S = 3


def policy(jwk):
    approval = {"cluster": "approvals", "hold_seconds": HOLD_S, "preview_bytes": 256}
    return {
        "providers": [{"name": "ci", "issuer": ISS, "audiences": ["nhi-gate"], "jwks": {"keys": [jwk]}}],
        "resources": [
            {"name": "vectors", "path_prefix": "/collections", "read": {"any_of": ["ingest"]}, "write": {"any_of": ["ingest"]},
             "approval": approval},
            {"name": "ingest", "path_prefix": "/ingest", "write": {"any_of": ["ingest"]},
             "approval": {**approval, "grant": {"uses": 2, "window_seconds": 2}}},
        ],
    }


@pytest.fixture(scope="module")
def stack(envoy_bin, keys):
    svc = ApprovalService()
    up = Upstream()
    env = Envoy(envoy_bin, policy(keys["es"].jwk), up.port, clusters={"approvals": svc.port})
    yield env, svc, up
    env.stop()
    up.close()
    svc.stop()


def auth(keys, sub="ci-ingest"):
    return ("authorization", "Bearer " + keys["es"].sign(claims(ISS, sub=sub, groups=("ingest",))))


def fresh(up):
    with up.lock:
        up.requests.clear()


def in_background(env, *args, **kw):
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", env.request(*args, **kw)))
    t.start()
    return t, box


def test_approved_inline_releases_exactly_the_approved_body_once(stack, keys):
    env, svc, up = stack
    fresh(up)
    body = json.dumps({"points": [{"id": 7, "vector": [0.3, 0.1], "payload": {"text": "quarterly report"}}]}).encode()
    t, box = in_background(env, "PUT", "/collections/docs/points", [auth(keys)], body)
    [p] = svc.wait_pending()
    assert up.count == 0, "forwarded before the decision"
    assert p["identity"]["subject"] == "ci-ingest" and p["method"] == "PUT" and p["path"] == "/collections/docs/points"
    assert p["body"]["size"] == len(body) and "quarterly report" in p["body"]["preview"]
    t_decided = time.time()
    svc.cli("approve", p["approval_id"], "--reason", "looks fine")
    t.join(15)
    st, _, out = box["r"]
    assert st == 200, out
    assert up.count == 1 and up.last()["body"] == body and up.last()["t"] >= t_decided
    a = svc.show(p["approval_id"])
    assert a["status"] == "used" and a["votes"][0]["approver"] == "alice"


def test_denied_by_an_approver_is_403_with_the_reason(stack, keys):
    env, svc, up = stack
    fresh(up)
    t, box = in_background(env, "DELETE", "/collections/docs", [auth(keys)])
    [p] = svc.wait_pending()
    svc.cli("deny", p["approval_id"], "--reason", "deleting prod collections needs a ticket", approver="bob")
    t.join(15)
    st, h, out = box["r"]
    assert st == 403 and up.count == 0
    j = json.loads(out)
    assert j["reason"] == "approval_denied" and "needs a ticket" in j["detail"]


def test_hold_expires_202_then_approved_retry_passes_once(stack, keys):
    env, svc, up = stack
    fresh(up)
    body = b'{"points":[{"id":8}]}'
    t0 = time.time()
    st, h, out = env.request("PUT", "/collections/docs/points", [auth(keys)], body)
    assert st == 202 and up.count == 0 and HOLD_S - 1 < time.time() - t0 < HOLD_S + 3
    j = json.loads(out)
    assert j["status"] == "pending" and int(h["retry-after"]) == j["retry_after"] >= 1
    aid = j["approval_id"]
    assert j["status_url"].endswith(aid)
    # retried before anyone decided: held again, then 202 with the same id; nothing forwarded
    st, _, out = env.request("PUT", "/collections/docs/points", [auth(keys), ("x-nhi-approval", aid)], body)
    assert st == 202 and json.loads(out)["approval_id"] == aid and up.count == 0
    svc.cli("approve", aid)
    st, _, out = env.request("PUT", "/collections/docs/points", [auth(keys), ("x-nhi-approval", aid)], body)
    assert st == 200, out
    assert up.count == 1 and up.last()["body"] == body and "x-nhi-approval" not in up.last()["headers"]
    st, _, out = env.request("PUT", "/collections/docs/points", [auth(keys), ("x-nhi-approval", aid)], body)
    assert st == 403 and json.loads(out)["reason"] == "approval_used" and up.count == 1


def test_retry_must_match_subject_method_path_and_body(stack, keys):
    env, svc, up = stack
    fresh(up)
    body = b'{"points":[{"id":9}]}'
    # `key` is one of the query parameters the shown path redacts: the
    # approval binds the exact path all the same
    path = "/collections/docs/points?key=tmp-cache-1"
    st, _, out = env.request("PUT", path, [auth(keys)], body)
    assert st == 202
    aid = json.loads(out)["approval_id"]
    svc.cli("approve", aid)
    tries = [
        ("PUT", path, auth(keys), b'{"points":[{"id":666}]}'),                         # other body
        ("PUT", "/collections/docs/points?key=ALL-PRODUCTION", auth(keys), body),       # other query value, shown alike
        ("PUT", "/collections/other/points", auth(keys), body),                         # other path
        ("PUT", path, auth(keys, "someone-else"), body),                                # other subject
        ("POST", path, auth(keys), body),                                               # other method
    ]
    for method, p, a, b in tries:
        st, _, out = env.request(method, p, [a, ("x-nhi-approval", aid)], b)
        assert st == 403 and json.loads(out)["reason"] == "approval_mismatch", (method, p, out)
    assert up.count == 0
    st, _, out = env.request("PUT", path, [auth(keys), ("x-nhi-approval", aid)], body)
    assert st == 200 and up.count == 1
    st, _, out = env.request("PUT", "/collections/docs/points", [auth(keys), ("x-nhi-approval", "apr_doesnotexist")], body)
    assert st == 403 and json.loads(out)["reason"] == "approval_unknown"


def test_grant_of_two_uses_and_window_expiry(stack, keys):
    env, svc, up = stack
    fresh(up)
    body = b"doc-1"
    st, _, out = env.request("POST", "/ingest/run", [auth(keys)], body)
    assert st == 202
    aid = json.loads(out)["approval_id"]
    svc.cli("approve", aid)
    for _ in range(2):
        st, _, _ = env.request("POST", "/ingest/run", [auth(keys), ("x-nhi-approval", aid)], body)
        assert st == 200
    st, _, out = env.request("POST", "/ingest/run", [auth(keys), ("x-nhi-approval", aid)], body)
    assert st == 403 and json.loads(out)["reason"] == "approval_used" and up.count == 2
    # a second grant, redeemed after its 2 s window
    st, _, out = env.request("POST", "/ingest/run", [auth(keys)], body)
    aid = json.loads(out)["approval_id"]
    svc.cli("approve", aid)
    time.sleep(2.5)
    st, _, out = env.request("POST", "/ingest/run", [auth(keys), ("x-nhi-approval", aid)], body)
    assert st == 403 and json.loads(out)["reason"] == "approval_expired" and up.count == 2


def test_held_requests_approved_in_another_order(stack, keys):
    env, svc, up = stack
    fresh(up)
    names = ["a", "b", "c"]
    runs = {}
    for n in names:
        runs[n] = in_background(env, "PUT", f"/collections/{n}/points", [auth(keys)], n.encode() * 4)
        time.sleep(0.2)
    pend = {p["path"].split("/")[2]: p["approval_id"] for p in svc.wait_pending(3)}
    assert set(pend) == set(names) and up.count == 0
    for n in ["c", "a", "b"]:
        svc.cli("approve", pend[n])
        deadline = time.time() + 5
        while not any(r["path"] == f"/collections/{n}/points" for r in list(up.requests)) and time.time() < deadline:
            time.sleep(0.02)
    for n in names:
        runs[n][0].join(15)
        assert runs[n][1]["r"][0] == 200
    assert [r["path"].split("/")[2] for r in up.requests] == ["c", "a", "b"]
    assert [r["body"] for r in up.requests] == [b"cccc", b"aaaa", b"bbbb"]


def test_client_abort_while_held_marks_the_approval_abandoned(stack, keys):
    env, svc, up = stack
    fresh(up)
    a = auth(keys)
    s = socket.create_connection(("127.0.0.1", env.port), timeout=10)
    s.sendall(f"PUT /collections/docs/points HTTP/1.1\r\nhost: x\r\n{a[0]}: {a[1]}\r\ncontent-length: 2\r\n\r\n{{}}".encode())
    [p] = svc.wait_pending()
    s.close()
    deadline = time.time() + 5
    while svc.show(p["approval_id"])["status"] != "abandoned" and time.time() < deadline:
        time.sleep(0.1)
    assert svc.show(p["approval_id"])["status"] == "abandoned"
    r = svc.cli("approve", p["approval_id"], check=False)
    assert r.returncode != 0  # nothing left to approve
    time.sleep(0.3)
    assert up.count == 0


def test_pending_approvals_survive_a_service_restart(stack, keys):
    env, svc, up = stack
    fresh(up)
    body = b'{"points":[{"id":10}]}'
    st, _, out = env.request("PUT", "/collections/docs/points", [auth(keys)], body)
    assert st == 202
    aid = json.loads(out)["approval_id"]
    svc.restart()
    assert [p["approval_id"] for p in svc.pending()] == [aid]
    svc.cli("approve", aid)
    st, _, out = env.request("PUT", "/collections/docs/points", [auth(keys), ("x-nhi-approval", aid)], body)
    assert st == 200 and up.count == 1 and up.last()["body"] == body


def test_approver_cannot_approve_own_request(envoy_bin, keys):
    svc = ApprovalService()
    up = Upstream()
    env = Envoy(envoy_bin, policy(keys["es"].jwk), up.port, clusters={"approvals": svc.port})
    try:
        st, _, out = env.request("PUT", "/collections/docs/points", [auth(keys, "alice")], b"{}")
        assert st == 202
        aid = json.loads(out)["approval_id"]
        r = svc.cli("approve", aid, approver="alice", check=False)
        assert r.returncode != 0 and svc.show(aid)["status"] == "pending"
        svc.cli("approve", aid, approver="bob")
        st, _, _ = env.request("PUT", "/collections/docs/points", [auth(keys, "alice"), ("x-nhi-approval", aid)], b"{}")
        assert st == 200 and up.count == 1
    finally:
        env.stop()
        up.close()
        svc.stop()
