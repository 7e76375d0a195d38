"""The audit trail inside real Envoy (2 workers): exactly one record per
request over a mixed run — allowed, each kind of denial, held and approved,
pending, masked, streamed, client-aborted — in the file access log (filter
state wasm.nhi_gate_audit) and at the collector; no secret in any record;
a collector that is down never stops traffic and its drops are counted."""
import json
import socket
import time

import pytest

from harness import Envoy, FakeApprovals, FakeCollector, Handler, _Server, claims, free_port

ISS = "https://ci.test"
EMAIL = "jane.doe@example.com"
BACKEND_KEY = "backend-secret-key-0042"
COOKIE = "session=cookie-secret-77"
QUERY_SECRET = "query-secret-31337"


class Backend(_Server):
    """Never echoes what it receives (so a leak in a record is the filter's)."""

    def __init__(self):
        outer = self
        self.hits = 0

        class H(Handler):
            def do_GET(self):
                outer.hits += 1
                if "/slow" in self.path:
                    time.sleep(2)
                if "/brotli" in self.path:  # an encoding the masker cannot read: 502, fail closed
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-encoding", "br")
                    self.send_header("content-length", "4")
                    self.end_headers()
                    self.wfile.write(b"\x0b\x02\x80{")
                    return
                self.reply(200, json.dumps({"doc": f"contact {EMAIL}", "n": 1}).encode())

            def do_HEAD(self):
                outer.hits += 1
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", "40")
                self.end_headers()

            def do_PUT(self):
                outer.hits += 1
                self.read_body()
                self.reply(200, b'{"ok":true}')

            def do_POST(self):
                outer.hits += 1
                req = json.loads(self.read_body() or b"{}")
                if req.get("stream"):
                    events = [{"choices": [{"index": 0, "delta": {"content": "Hello "}}], "usage": None},
                              {"choices": [{"index": 0, "delta": {"content": "world"}}], "usage": None}]
                    if (req.get("stream_options") or {}).get("include_usage"):
                        events.append({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}})
                    self.stream_sse(events)
                    return
                out = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                       "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}
                self.reply(200, json.dumps(out).encode())

        super().__init__(lambda _: H)


def policy(jwk, collector=None):
    p = {
        "providers": [{"name": "ci", "issuer": ISS, "audiences": ["nhi-gate"], "jwks": {"keys": [jwk]}}],
        "resources": [
            {"name": "docs", "path_prefix": "/docs", "read": {"any_of": ["readers"]}, "write": {"any_of": ["writers"]},
             "upstream_headers": {"api-key": BACKEND_KEY}, "mask": {},
             "approval": {"cluster": "approvals", "hold_seconds": 1}},
            {"name": "llm", "path_prefix": "/v1/", "read": {"any_of": ["readers"]},
             "operations": [{"methods": ["POST"], "path_glob": "/v1/chat/completions", "class": "read"}],
             "upstream_headers": {"authorization": f"Bearer {BACKEND_KEY}"}, "mask": {"requests": "chat_messages"}},
        ],
        "audit": {"session_claim": "run_id"},
    }
    if collector:
        p["audit"]["collector"] = collector
    return p


@pytest.fixture(scope="module")
def stack(envoy_bin, keys):
    be = Backend()
    col = FakeCollector()
    appr = FakeApprovals()
    env = Envoy(envoy_bin, policy(keys["es"].jwk, {"cluster": "collector", "flush_ms": 200}), be.port,
                clusters={"approvals": appr.port, "collector": col.port})
    yield env, be, col, appr
    env.stop()
    be.close()
    col.close()
    appr.close()


def tok(keys, groups=("readers",), sub="ci-job", **extra):
    return keys["es"].sign(claims(ISS, sub=sub, groups=groups, run_id="run-4711", **extra))


def test_one_record_per_request_in_the_log_and_at_the_collector(stack, keys):
    env, be, col, appr = stack
    reader, writer = tok(keys), tok(keys, ("writers",), "ci-ingest")
    expired = keys["es"].sign(claims(ISS, ttl=-600))
    A = lambda t: [("authorization", f"Bearer {t}")]  # noqa: E731
    chat = json.dumps({"model": "m", "messages": [{"role": "user", "content": f"mail {EMAIL} please"}]}).encode()
    want = []  # (path prefix, decision, reason, status)

    def send(method, path, headers, body=None, expect=None):
        st, h, out = env.request(method, path, headers, body)
        want.append((method, path.split("?")[0], expect or st))
        return st, h, out

    st, _, out = send("GET", "/docs/a", A(reader) + [("cookie", COOKIE)])
    assert st == 200 and EMAIL not in out.decode()
    send("GET", f"/docs/b?access_token={QUERY_SECRET}&q=1", A(reader))
    send("GET", "/docs/c", [])
    send("GET", "/docs/d", A(expired))
    send("PUT", "/docs/points", A(reader), b"{}")
    send("GET", "/elsewhere", A(reader))
    st, _, _ = send("HEAD", "/docs/head", A(reader))
    assert st == 200
    st, _, _ = send("GET", "/docs/brotli", A(reader))
    assert st == 502
    appr.decide = lambda call: FakeApprovals.answer("approved", approval_id="apr_a1", approver="alice")
    st, _, _ = send("PUT", "/docs/points", A(writer), b'{"points":[1]}')
    assert st == 200
    appr.decide = lambda call: FakeApprovals.answer("pending", approval_id="apr_p1", status_url="http://a/1", retry_after=5)
    st, _, _ = send("PUT", "/docs/points", A(writer), b'{"points":[2]}')
    assert st == 202
    send("POST", "/v1/chat/completions", A(reader), chat)
    send("POST", "/v1/chat/completions", A(reader), json.dumps({"model": "m", "stream": True, "messages": []}).encode())
    # a client that gives up while the backend is slow
    s = socket.create_connection(("127.0.0.1", env.port), timeout=5)
    s.sendall(f"GET /docs/slow HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {reader}\r\n\r\n".encode())
    time.sleep(0.3)
    s.close()
    want.append(("GET", "/docs/slow", 0))

    recs = env.audit_records(len(want), timeout=10)
    time.sleep(0.5)
    recs = env.audit_records()
    assert len(recs) == len(want), [r["path"] for r in recs]
    by_path = {}
    for r in recs:
        by_path.setdefault((r["method"], r["path"].split("?")[0]), []).append(r)
    assert len({r["request_id"] for r in recs}) == len(recs)

    def one(method, path):
        [r] = by_path[(method, path)]
        return r

    r = one("GET", "/docs/a")
    assert (r["decision"], r["status"], r["resource"], r["operation"]) == ("allow", 200, "docs", "read")
    assert r["identity"]["subject"] == "ci-job" and r["session"] == "run-4711" and r["node"] == "nhi-gate"
    assert "[EMAIL]" in r["response_body"]["text"] and r["masking"].get("email") == 1
    assert r["path"] == "/docs/a" and one("GET", "/docs/b")["path"] == "/docs/b?access_token=REDACTED&q=1"
    assert (one("GET", "/docs/c")["decision"], one("GET", "/docs/c")["reason"], one("GET", "/docs/c")["identity"]) == ("deny", "missing_token", None)
    assert one("GET", "/docs/d")["reason"] == "expired" and one("GET", "/docs/d")["status"] == 401
    assert one("GET", "/elsewhere")["reason"] == "no_matching_resource"
    head = one("HEAD", "/docs/head")
    assert (head["decision"], head["status"], head["aborted"]) == ("allow", 200, False)
    br = one("GET", "/docs/brotli")
    assert (br["decision"], br["reason"], br["status"]) == ("deny", "unmaskable_encoding", 502)
    puts = by_path[("PUT", "/docs/points")]
    assert sorted((p["decision"], p["reason"], p["status"]) for p in puts) == sorted(
        [("deny", "group_not_allowed", 403), ("allow", None, 200), ("pending", "approval_pending", 202)])
    approved = next(p for p in puts if p["status"] == 200)
    assert approved["approval"]["outcome"] == "approved" and approved["approval"]["approval_id"] == "apr_a1"
    assert approved["approval"]["approver"] == "alice" and approved["request_body"]["text"] == '{"points":[1]}'
    assert len(approved["request_body"]["sha256"]) == 64 and approved["request_body"]["size"] == 14
    pending = next(p for p in puts if p["status"] == 202)
    assert pending["approval"]["outcome"] == "pending" and pending["approval"]["approval_id"] == "apr_p1"
    chats = by_path[("POST", "/v1/chat/completions")]
    plain = next(c for c in chats if "[EMAIL]" in (c["request_body"] or {}).get("text", ""))
    assert EMAIL not in json.dumps(plain), "the recorded prompt is the masked one"
    slow = one("GET", "/docs/slow")
    assert slow["aborted"] is True and slow["decision"] == "allow"

    # the collector got the same records
    deadline = time.time() + 10
    while len(col.records) < len(recs) and time.time() < deadline:
        time.sleep(0.1)
    assert sorted(r["request_id"] for r in col.records) == sorted(r["request_id"] for r in recs)

    # nothing secret anywhere
    text = open(env.audit_path).read() + json.dumps(col.records)
    for secret in [reader, writer, expired, BACKEND_KEY, COOKIE, "cookie-secret-77", QUERY_SECRET, "Bearer "]:
        assert secret not in text, secret


def test_collector_down_keeps_serving_and_counts_drops(envoy_bin, keys):
    be = Backend()
    dead = free_port()
    appr = FakeApprovals()
    env = Envoy(envoy_bin, policy(keys["es"].jwk, {"cluster": "collector", "flush_ms": 100, "queue_max": 5, "batch_max": 2}),
                be.port, clusters={"approvals": appr.port, "collector": dead})
    try:
        t = tok(keys)
        for i in range(30):
            st, _, _ = env.request("GET", f"/docs/{i}", [("authorization", f"Bearer {t}")])
            assert st == 200
        assert len(env.audit_records(30)) == 30, "the file log keeps every record"
        deadline = time.time() + 10
        stats = {}
        while time.time() < deadline:
            stats = env.stats()
            if stats.get("wasmcustom.nhi_gate_audit_dropped", 0) > 0 and stats.get("wasmcustom.nhi_gate_audit_failed", 0) > 0:
                break
            time.sleep(0.2)
        # kept: queue_max (5) in the shared queue, plus one batch (2) held for retry by each
        # root context that drains it (2 workers and the main thread); the rest is dropped
        assert 30 - 5 - 2 * 3 <= stats.get("wasmcustom.nhi_gate_audit_dropped", 0) <= 30 - 5, stats
        assert stats.get("wasmcustom.nhi_gate_audit_failed", 0) > 0 and stats.get("wasmcustom.nhi_gate_audit_sent", 0) == 0
    finally:
        env.stop()
        be.close()
        appr.close()


def test_sync_audit_forwards_only_after_the_collector_acknowledged(envoy_bin, keys):
    from harness import Upstream
    up = Upstream()
    col = FakeCollector()
    pol = {
        "providers": [{"name": "ci", "issuer": ISS, "audiences": ["nhi-gate"], "jwks": {"keys": [keys["es"].jwk]}}],
        "resources": [{"name": "ingest", "path_prefix": "/ingest", "write": {"any_of": ["writers"]}, "audit": "sync"},
                      {"name": "other", "path_prefix": "/other", "read": {"any_of": ["writers"]}}],
        "audit": {"collector": {"cluster": "collector", "flush_ms": 100, "timeout_ms": 1000}},
    }
    env = Envoy(envoy_bin, pol, up.port, clusters={"collector": col.port})
    try:
        a = [("authorization", "Bearer " + tok(keys, ("writers",), "loader"))]
        st, _, _ = env.request("POST", "/ingest/doc", a, b'{"text":"quarterly numbers"}')
        assert st == 200 and up.count == 1
        part = next(r for r in col.records if r["path"] == "/ingest/doc" and r["status"] is None)
        t_part = col.received_at[col.records.index(part)]
        assert t_part <= up.last()["t"], "forwarded before the collector acknowledged"
        assert part["decision"] == "allow" and part["request_body"]["text"] == '{"text":"quarterly numbers"}'
        assert part["response_body"] is None and part["identity"]["subject"] == "loader"
        # the final record follows, with the response
        deadline = time.time() + 5
        while not any(r["path"] == "/ingest/doc" and r["status"] == 200 for r in col.records) and time.time() < deadline:
            time.sleep(0.1)
        assert any(r["path"] == "/ingest/doc" and r["status"] == 200 for r in col.records)
        # the collector refuses: fail closed, the upstream never sees the request
        col.status = 500
        st, _, out = env.request("POST", "/ingest/doc2", a, b"{}")
        assert st == 503 and json.loads(out)["reason"] == "audit_unavailable" and up.count == 1
        # other (async) resources keep flowing
        st, _, _ = env.request("GET", "/other/x", a)
        assert st == 200 and up.count == 2
        # the collector is gone
        col.close()
        st, _, out = env.request("POST", "/ingest/doc3", a, b"{}")
        assert st == 503 and json.loads(out)["reason"] == "audit_unavailable" and up.count == 2
        recs = env.audit_records(4)
        assert [r["reason"] for r in recs if r["path"].startswith("/ingest/doc")] == [None, "audit_unavailable", "audit_unavailable"]
    finally:
        env.stop()
        up.close()
