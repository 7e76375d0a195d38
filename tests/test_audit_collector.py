"""Envoy with nhi-gate pushing audit records to the real collector
(`nhi-gate audit serve`, SQLite hash chain): every record arrives once;
`audit replay` shows a job's session as the exchange the job saw (masked
answers); `audit query` filters; `audit verify` passes, then names an edited
and a deleted record."""
import csv
import io
import json
import sqlite3
import time

import pytest

from harness import AuditCollector, Envoy, claims
from test_audit import Backend, EMAIL

ISS = "https://ci.test"


@pytest.fixture(scope="module")
def stack(envoy_bin, keys):
    be = Backend()
    col = AuditCollector()
    pol = {
        "providers": [{"name": "ci", "issuer": ISS, "audiences": ["nhi-gate"], "jwks": {"keys": [keys["es"].jwk]}}],
        "resources": [
            {"name": "llm", "path_prefix": "/v1/", "read": {"any_of": ["readers"]},
             "operations": [{"methods": ["POST"], "path_glob": "/v1/chat/completions", "class": "read"}],
             "mask": {"requests": "chat_messages"}},
            {"name": "docs", "path_prefix": "/docs", "read": {"any_of": ["readers"]}, "mask": {}},
        ],
        "audit": {"session_claim": "run_id", "collector": {"cluster": "collector", "flush_ms": 100}},
    }
    env = Envoy(envoy_bin, pol, be.port, clusters={"collector": col.port})
    yield env, col, keys
    env.stop()
    be.close()
    col.close()


def test_records_reach_the_collector_replay_and_verify(stack, tmp_path):
    env, col, keys = stack
    run = f"run-{time.time_ns()}"
    tok = keys["es"].sign(claims(ISS, sub="rag-job", groups=("readers",), run_id=run))
    auth = [("authorization", f"Bearer {tok}"), ("content-type", "application/json")]
    seen = []
    for q in ["first question", f"mail {EMAIL} the summary"]:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": q}]}).encode()
        st, _, out = env.request("POST", "/v1/chat/completions", auth, body)
        assert st == 200
        seen.append(json.loads(out)["choices"][0]["message"]["content"])
    st, _, doc = env.request("GET", "/docs/1", auth)
    assert st == 200 and EMAIL not in doc.decode()
    st, _, _ = env.request("GET", "/docs/2")  # denied, no identity: not in the session
    assert st == 401
    deadline = time.time() + 10
    while col.count() < 4 and time.time() < deadline:
        time.sleep(0.1)
    assert col.count() == 4
    assert len(env.audit_records(4)) == 4

    out = col.audit("replay", "--session", run).stdout
    lines = out.splitlines()
    assert "> first question" in lines and f"< {seen[0]}" in lines
    assert "> mail [EMAIL] the summary" in lines, out  # the prompt as it went upstream: masked
    assert any("[EMAIL]" in l and l.startswith("< ") for l in lines) and EMAIL not in out
    assert out.index("first question") < out.index("the summary") < out.index("/docs/1")

    rows = list(csv.DictReader(io.StringIO(col.audit("query", "--decision", "deny", "--format", "csv").stdout)))
    assert [(r["path"], r["reason"], r["status"]) for r in rows] == [("/docs/2", "missing_token", "401")]
    js = json.loads(col.audit("query", "--session", run, "--format", "json").stdout)
    assert [r["path"] for r in js] == ["/v1/chat/completions", "/v1/chat/completions", "/docs/1"]

    assert col.audit("verify").stdout.startswith("ok: 4 records")
    db = sqlite3.connect(col.db)
    # an allowed record (the records of the four requests may reach the
    # collector in any order, so the denied one can be any seq)
    seq, rec = db.execute("SELECT seq, record FROM records WHERE record LIKE '%\"decision\":\"allow\"%' "
                          "ORDER BY seq LIMIT 1").fetchone()
    db.execute("UPDATE records SET record = ? WHERE seq = ?", (rec.replace('"decision":"allow"', '"decision":"deny"'), seq))
    db.commit()
    r = col.audit("verify", check=False)
    assert r.returncode == 1 and f"seq {seq}" in r.stdout + r.stderr and "edited" in r.stdout + r.stderr
    db.execute("UPDATE records SET record = ? WHERE seq = ?", (rec, seq))
    db.commit()
    assert col.audit("verify").returncode == 0
    db.execute("DELETE FROM records WHERE seq = 3")
    db.commit()
    r = col.audit("verify", check=False)
    assert r.returncode == 1 and "seq 3" in r.stdout + r.stderr and "missing" in r.stdout + r.stderr
    db.close()
