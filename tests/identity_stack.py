"""Two providers (a CI issuer with inline keys, a Keycloak-style issuer with a
JWKS endpoint and a token header) in front of a recording upstream, for
tests/test_leaks_token_headers.py and tests/test_leaks_jwks_concurrency.py."""
import sys
import contextlib
import json

from harness import Envoy, JwksServer, Key, Upstream, b64u, claims, forge  # noqa: F401

CI_ISS = "https://ci.test"
KC_ISS = "https://kc.test/realms/ci"
PATH = "/collections/c/points/search"


def policy(jwks_port, kc_jwk, **fetch):
    return {
        "realm": "atk",
        "clock_skew_seconds": 60,
        "max_token_bytes": 8192,
        "jwks_fetch": {"min_refetch_seconds": 1, "cold_start_wait_ms": 3000, "timeout_ms": 2000, **fetch},
        "providers": [
            {"name": "ci", "issuer": CI_ISS, "audiences": ["nhi-gate"], "max_lifetime_seconds": 900,
             "jwks_uri": f"http://127.0.0.1:{jwks_port}/jwks", "cluster": "jwks"},
            {"name": "kc", "issuer": KC_ISS, "audiences": ["rag"], "groups_claim": "realm_access.roles",
             "token_header": "x-ci-token", "jwks": {"keys": [kc_jwk]}},
        ],
        "resources": [
            {"name": "vectors", "path_prefix": "/collections",
             "operations": [{"methods": ["POST"], "path_glob": "/collections/*/points/search", "class": "read"}],
             "read": {"any_of": ["readers", "writers"]}, "write": {"any_of": ["writers"]},
             "upstream_headers": {"api-key": "backend-secret"}, "identity_headers": True},
            {"name": "forward", "path_prefix": "/forward", "read": {"any_of": ["readers"]}, "forward_authorization": True},
        ],
    }


@contextlib.contextmanager
def stack(envoy_bin, keys, kc_key=None, idp=None, concurrency=2, **fetch):
    jwks = JwksServer(keys)
    for k, v in (idp or {}).items():
        setattr(jwks, k, v)
    up = Upstream()
    env = None
    try:
        kc = (kc_key or Key("ES256", "unused")).jwk
        env = Envoy(envoy_bin, policy(jwks.port, kc, **fetch), up.port, {"jwks": jwks.port}, concurrency=concurrency)
        yield env, jwks, up
    finally:
        if env:
            env.stop()
        up.close()
        jwks.close()


def bearer(t):
    return [("authorization", f"Bearer {t}")]


def reason(body):
    try:
        return json.loads(body).get("reason")
    except ValueError:
        return body[:200]
