"""Token quotas kept in an external rate-limit service (Envoy RLS v3,
ShouldRateLimit with hits_addend), for fleets of Envoys: a conforming test
server (tests/rls_server.py, gRPC on loopback) counts the tokens; the filter
checks before forwarding (1 token), debits the rest of the reported usage
after the response, answers 429 with the service's limit when it says
OVER_LIMIT, and fails closed (503) when the service is down."""
import json
import time

import pytest

from harness import Envoy, claims
from rls_server import RlsServer
from test_quota import PER_REQUEST, Llm, chat

ISS = "https://ci.test"


def policy(jwk):
    return {
        "providers": [{"name": "ci", "issuer": ISS, "audiences": ["nhi-gate"], "jwks": {"keys": [jwk]}}],
        "resources": [{"name": "llm", "path_prefix": "/llm/", "read": {"any_of": ["llm-users"]},
                       "operations": [{"methods": ["POST"], "path_glob": "/llm/**", "class": "read"}],
                       "quota": {"tokens": 1000, "window": "minute",
                                 "service": {"cluster": "rls", "domain": "nhi-gate", "timeout_ms": 1000}}}],
    }


def test_budget_in_a_rate_limit_service(envoy_bin, keys):
    llm = Llm()
    # a fixed clock: the service's window never turns over during the test
    rls = RlsServer(limit=3 * PER_REQUEST, unit_seconds=60, clock=lambda: 1_800_000_030.0)
    env = Envoy(envoy_bin, policy(keys["es"].jwk), llm.port, clusters={"rls": rls.port}, grpc_clusters=("rls",))
    try:
        for i in range(3):
            st, _, out = chat(env, keys, "/llm/v1/chat/completions", "job-1", i % 2 == 0)
            assert st == 200, out
            time.sleep(0.4)  # the debit goes out on the next tick of the root context
        assert len(llm.bodies) == 3
        st, h, out = chat(env, keys, "/llm/v1/chat/completions", "job-1", False)
        assert st == 429 and json.loads(out)["reason"] == "quota_exceeded" and len(llm.bodies) == 3
        assert h["x-ratelimit-limit-tokens"] == str(3 * PER_REQUEST) and h["x-ratelimit-remaining-tokens"] == "0"
        assert 1 <= int(h["retry-after"]) <= 60
        # another identity has its own counter at the service
        st, _, _ = chat(env, keys, "/llm/v1/chat/completions", "job-2", False)
        assert st == 200
        time.sleep(0.4)
        calls = [c for c in rls.calls if ("identity", "job-1") in c["descriptors"][0]]
        assert all(c["domain"] == "nhi-gate" and c["descriptors"] == [[("resource", "llm"), ("issuer", ISS), ("identity", "job-1")]]
                   for c in calls)
        # per admitted request: a 1-token check, then the rest of the reported usage
        assert [c["hits_addend"] for c in calls] == [1, PER_REQUEST - 1] * 3 + [1]
        rls.close()
        st, _, out = chat(env, keys, "/llm/v1/chat/completions", "job-3", False)
        assert st == 503 and json.loads(out)["reason"] == "quota_unavailable" and len(llm.bodies) == 4
    finally:
        env.stop()
        llm.close()
        rls.close()
