"""Token verification and group policy inside real Envoy (both tested lines).

One Envoy per Envoy version serves the module-scoped stack; JWKS behaviour
tests (cold start, rotation, outage) start their own Envoy and JWKS server.
Every rejection test also proves the upstream never saw the request.
"""
import contextlib
import json
import subprocess
import time

import pytest

from harness import ROOT, Envoy, JwksServer, Key, Upstream, b64u, claims, forge

CI_ISS = "https://ci.test"
KC_ISS = "https://kc.test/realms/ci"


def policy(jwks_port, kc_jwk, **fetch):
    return {
        "realm": "rag-test",
        "clock_skew_seconds": 60,
        "max_token_bytes": 4096,
        "jwks_fetch": {"min_refetch_seconds": 1, "cold_start_wait_ms": 3000, "timeout_ms": 1000, **fetch},
        "providers": [
            {"name": "ci", "issuer": CI_ISS, "audiences": ["nhi-gate", "other-aud"], "max_lifetime_seconds": 900,
             "jwks_uri": f"http://127.0.0.1:{jwks_port}/jwks", "cluster": "jwks"},
            {"name": "kc", "issuer": KC_ISS, "audiences": ["rag"], "groups_claim": "realm_access.roles",
             "token_header": "x-ci-token", "jwks": {"keys": [kc_jwk]}},
            {"name": "disc", "issuer": f"http://127.0.0.1:{jwks_port}", "audiences": ["nhi-gate"],
             "discovery": True, "cluster": "jwks"},
        ],
        "resources": [
            {"name": "vectors", "path_prefix": "/collections",
             "operations": [{"methods": ["POST"], "path_glob": "/collections/*/points/search", "class": "read"}],
             "read": {"any_of": ["readers", "writers"]}, "write": {"any_of": ["writers"]},
             "upstream_headers": {"api-key": "backend-secret"}, "identity_headers": True},
            {"name": "llm", "path_prefix": "/v1/", "providers": ["ci"], "scopes": ["rag"],
             "operations": [{"methods": ["POST"], "path_glob": "/v1/chat/completions", "class": "read"}],
             "read": {"any_of": ["llm"]},
             "upstream_headers": {"authorization": "Bearer llm-backend-key"}},
            {"name": "admin", "path_prefix": "/admin", "read": {"all_of": ["ops", "oncall"]}},
            {"name": "forward", "path_prefix": "/forward", "read": {"any_of": ["readers"]}, "forward_authorization": True},
        ],
    }


@pytest.fixture(scope="module")
def stack(envoy_bin, keys):
    jwks = JwksServer([keys["rs"], keys["ps"], keys["es"], keys["ed"]])
    up = Upstream()
    env = Envoy(envoy_bin, policy(jwks.port, keys["kc"].jwk), up.port, {"jwks": jwks.port})
    yield {"envoy": env, "up": up, "jwks": jwks, "keys": keys}
    env.stop()
    up.close()
    jwks.close()


def bearer(token):
    return [("authorization", f"Bearer {token}")]


SEARCH = ("POST", "/collections/docs/points/search")


def call(stack, token=None, method="POST", path="/collections/docs/points/search", headers=(), body=b"{}"):
    h = list(headers) + (bearer(token) if token is not None else [])
    return stack["envoy"].request(method, path, h, body)


def assert_denied(stack, resp, status, reason, before):
    code, headers, body = resp
    assert code == status, (code, body)
    doc = json.loads(body)
    assert doc["reason"] == reason, doc
    assert doc["error"] == ("unauthorized" if status == 401 else "forbidden")
    assert doc["request_id"], doc
    assert headers.get("x-nhi-reason") == reason
    if status == 401:
        challenge = headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="rag-test"')
        if reason != "missing_token":
            assert 'error="invalid_token"' in challenge and f'error_description="{reason}' in challenge
    assert stack["up"].count == before, "upstream saw a rejected request"


# ---------------------------------------------------------------- accept

@pytest.mark.parametrize("name", ["rs", "ps", "es", "ed"])
def test_accepts_each_algorithm(stack, name):
    k = stack["keys"][name]
    before = stack["up"].count
    code, _, body = call(stack, k.sign(claims(CI_ISS)))
    assert code == 200, body
    assert stack["up"].count == before + 1


def test_scheme_is_case_insensitive_and_aud_array_overlaps(stack):
    t = stack["keys"]["rs"].sign(claims(CI_ISS, aud=["someone-else", "other-aud"]))
    code, _, _ = call(stack, headers=[("authorization", f"bEaReR {t}")])
    assert code == 200


def test_no_kid_tries_keys_of_the_right_type(stack):
    t = forge_without_kid(stack["keys"]["es"], claims(CI_ISS))
    code, _, body = call(stack, t)
    assert code == 200, body


def forge_without_kid(key, c):
    import jwt as pyjwt
    return pyjwt.encode(c, key.private, algorithm=key.alg)


def test_second_provider_by_issuer_with_own_header_and_nested_groups(stack):
    t = stack["keys"]["kc"].sign(claims(KC_ISS, aud="rag", groups=None, realm_access={"roles": ["readers"]}))
    code, _, body = call(stack, headers=[("x-ci-token", t)])
    assert code == 200, body
    seen = stack["up"].last()["headers"]
    assert "x-ci-token" not in seen


def test_discovery_provider(stack):
    jwks = stack["jwks"]
    t = stack["keys"]["rs"].sign(claims(jwks.issuer))
    code, _, body = call(stack, t)
    assert code == 200, body
    assert jwks.discovery_hits >= 1


def test_headers_stripped_and_credential_injected(stack):
    t = stack["keys"]["rs"].sign(claims(CI_ISS, sub="job-42", groups=["readers", "extra"]))
    code, _, _ = call(stack, t, headers=[("x-nhi-subject", "spoofed-admin"), ("x-nhi-groups", "writers"), ("api-key", "client-key")])
    assert code == 200
    seen = stack["up"].last()["headers"]
    assert "authorization" not in seen
    assert seen["api-key"] == ["backend-secret"]
    assert seen["x-nhi-subject"] == ["job-42"]
    assert seen["x-nhi-groups"] == ["readers,extra"]


def test_backend_authorization_replaces_callers(stack):
    t = stack["keys"]["rs"].sign(claims(CI_ISS, groups=["llm"], scope="rag other"))
    code, _, body = call(stack, t, path="/v1/chat/completions")
    assert code == 200, body
    seen = stack["up"].last()["headers"]
    assert seen["authorization"] == ["Bearer llm-backend-key"]
    assert "x-nhi-subject" not in seen


def test_forward_authorization_opt_in(stack):
    t = stack["keys"]["rs"].sign(claims(CI_ISS))
    code, _, _ = call(stack, t, method="GET", path="/forward/x")
    assert code == 200
    assert stack["up"].last()["headers"]["authorization"] == [f"Bearer {t}"]


def test_cached_token_is_still_checked_against_policy(stack):
    t = stack["keys"]["rs"].sign(claims(CI_ISS))
    before = stack["up"].count
    for _ in range(5):
        assert call(stack, t)[0] == 200
    assert call(stack, t, method="PUT", path="/collections/docs/points")[0] == 403
    assert stack["up"].count == before + 5


# ---------------------------------------------------------------- reject: token

def test_missing_token(stack):
    before = stack["up"].count
    assert_denied(stack, call(stack), 401, "missing_token", before)


@pytest.mark.parametrize("auth", [
    [("authorization", "Bearer ")],
    [("authorization", "Basic dXNlcjpwYXNz")],
    [("authorization", "Bearer not-a-jwt")],
    [("authorization", "Bearer a.b")],
])
def test_malformed_authorization(stack, auth):
    before = stack["up"].count
    assert_denied(stack, call(stack, headers=auth), 401, "malformed", before)


def test_two_authorization_headers(stack):
    t = stack["keys"]["rs"].sign(claims(CI_ISS))
    before = stack["up"].count
    assert_denied(stack, call(stack, headers=bearer(t) + bearer(t)), 401, "malformed", before)


def test_token_too_large(stack):
    t = stack["keys"]["rs"].sign(claims(CI_ISS, padding="x" * 5000))
    before = stack["up"].count
    assert_denied(stack, call(stack, t), 401, "token_too_large", before)


def test_non_utf8_and_huge_headers_do_not_break_the_filter(stack):
    before = stack["up"].count
    resp = call(stack, headers=[("authorization", "Bearer \xff\xfe.\x80.x"), ("x-junk", "\xff" * 20000)])
    assert_denied(stack, resp, 401, "malformed", before)
    assert call(stack, stack["keys"]["rs"].sign(claims(CI_ISS)))[0] == 200


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_in_any_spelling(stack, alg):
    t = forge({"alg": alg, "typ": "JWT"}, claims(CI_ISS), b"")
    t = t.rsplit(".", 1)[0] + ".AA"
    before = stack["up"].count
    assert_denied(stack, call(stack, t), 401, "algorithm", before)


def test_hs256_with_public_key_as_secret(stack):
    import hashlib
    import hmac
    k = stack["keys"]["rs"]
    h, p, _ = forge({"alg": "HS256", "kid": "rs-1"}, claims(CI_ISS)).split(".")
    sig = hmac.new(json.dumps(k.jwk).encode(), f"{h}.{p}".encode(), hashlib.sha256).digest()
    before = stack["up"].count
    assert_denied(stack, call(stack, f"{h}.{p}.{b64u(sig)}"), 401, "algorithm", before)


@pytest.mark.parametrize("member", ["jwk", "jku", "x5u", "x5c"])
def test_key_carrying_headers_are_refused(stack, member):
    k = stack["keys"]["rs"]
    value = k.jwk if member == "jwk" else ["MIIB"] if member == "x5c" else "http://127.0.0.1:1/keys"
    t = k.sign(claims(CI_ISS), **{member: value})
    before = stack["up"].count
    assert_denied(stack, call(stack, t), 401, "untrusted_header", before)


def test_unknown_crit_is_refused(stack):
    t = stack["keys"]["rs"].sign(claims(CI_ISS), crit=["exp-ext"], **{"exp-ext": 1})
    before = stack["up"].count
    assert_denied(stack, call(stack, t), 401, "crit_unsupported", before)


def test_padded_segments_are_refused(stack):
    t = stack["keys"]["rs"].sign(claims(CI_ISS))
    h, p, s = t.split(".")
    padded = f"{h}{'=' * (-len(h) % 4) or '=='}.{p}.{s}"
    before = stack["up"].count
    assert_denied(stack, call(stack, padded), 401, "malformed", before)


def test_der_encoded_ecdsa_signature_is_refused(stack):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    k = stack["keys"]["es"]
    h, p, _ = k.sign(claims(CI_ISS)).split(".")
    der = k.private.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256()))
    before = stack["up"].count
    assert_denied(stack, call(stack, f"{h}.{p}.{b64u(der)}"), 401, "signature", before)


def test_forged_signature(stack):
    t = stack["keys"]["other"].sign(claims(CI_ISS))
    before = stack["up"].count
    assert_denied(stack, call(stack, t), 401, "signature", before)


def test_tampered_claims(stack):
    h, _, s = stack["keys"]["rs"].sign(claims(CI_ISS)).split(".")
    p = b64u(json.dumps(claims(CI_ISS, groups=["writers"])).encode())
    before = stack["up"].count
    assert_denied(stack, call(stack, f"{h}.{p}.{s}"), 401, "signature", before)


def test_rsa_kid_with_ecdsa_alg(stack):
    k = stack["keys"]["es"]
    t = k.sign(claims(CI_ISS), kid="rs-1")
    before = stack["up"].count
    assert_denied(stack, call(stack, t), 401, "alg_key_mismatch", before)


@pytest.mark.parametrize("overrides,reason", [
    ({"exp": -120}, "expired"),
    ({"nbf": 600}, "not_yet_valid"),
    ({"iat": 600}, "not_yet_valid"),
    ({"exp_absent": True}, "missing_exp"),
    ({"exp_string": True}, "malformed"),
    ({"lifetime": 3600}, "lifetime"),
    ({"lifetime_no_iat": 3600}, "lifetime"),
])
def test_time_claims(stack, overrides, reason):
    now = int(time.time())
    c = claims(CI_ISS)
    if "exp" in overrides:
        c["exp"] = now + overrides["exp"]
        c["iat"] = c["nbf"] = now - 300
    if "nbf" in overrides:
        c["nbf"] = now + overrides["nbf"]
    if "iat" in overrides:
        c["iat"] = now + overrides["iat"]
    if "exp_absent" in overrides:
        del c["exp"]
    if "exp_string" in overrides:
        c["exp"] = str(now + 300)
    if "lifetime" in overrides:
        c["exp"] = now + overrides["lifetime"]
    if "lifetime_no_iat" in overrides:
        del c["iat"]
        c["exp"] = now + overrides["lifetime_no_iat"]
    t = stack["keys"]["rs"].sign(c)
    before = stack["up"].count
    assert_denied(stack, call(stack, t), 401, reason, before)


def test_clock_skew_tolerates_a_just_expired_token(stack):
    now = int(time.time())
    t = stack["keys"]["rs"].sign(claims(CI_ISS, iat=now - 100, nbf=now - 100, exp=now - 10))
    assert call(stack, t)[0] == 200


def test_unknown_issuer(stack):
    t = stack["keys"]["rs"].sign(claims("https://evil.test"))
    before = stack["up"].count
    assert_denied(stack, call(stack, t), 401, "unknown_issuer", before)


@pytest.mark.parametrize("aud", ["wrong", ["a", "b"], None])
def test_audience(stack, aud):
    c = claims(CI_ISS, aud=aud)
    if aud is None:
        del c["aud"]
    before = stack["up"].count
    assert_denied(stack, call(stack, stack["keys"]["rs"].sign(c)), 401, "audience", before)


# ---------------------------------------------------------------- reject: policy

def test_write_needs_write_group(stack):
    t = stack["keys"]["rs"].sign(claims(CI_ISS, groups=["readers"]))
    before = stack["up"].count
    assert_denied(stack, call(stack, t, method="PUT", path="/collections/docs/points"), 403, "group_not_allowed", before)
    t = stack["keys"]["rs"].sign(claims(CI_ISS, groups=["writers"]))
    assert call(stack, t, method="PUT", path="/collections/docs/points")[0] == 200
    assert stack["up"].count == before + 1


def test_default_deny(stack):
    t = stack["keys"]["rs"].sign(claims(CI_ISS))
    before = stack["up"].count
    assert_denied(stack, call(stack, t, method="GET", path="/elsewhere"), 403, "no_matching_resource", before)


def test_all_of_groups(stack):
    before = stack["up"].count
    t = stack["keys"]["rs"].sign(claims(CI_ISS, groups=["ops"]))
    assert_denied(stack, call(stack, t, method="GET", path="/admin/x"), 403, "group_not_allowed", before)
    t = stack["keys"]["rs"].sign(claims(CI_ISS, groups=["ops", "oncall"]))
    assert call(stack, t, method="GET", path="/admin/x")[0] == 200


def test_scope_required(stack):
    t = stack["keys"]["rs"].sign(claims(CI_ISS, groups=["llm"], scope="other"))
    before = stack["up"].count
    code, headers, body = call(stack, t, path="/v1/chat/completions")
    assert_denied(stack, (code, headers, body), 403, "scope_missing", before)
    assert 'error="insufficient_scope"' in headers["www-authenticate"]


def test_provider_not_accepted_by_resource(stack):
    t = stack["keys"]["kc"].sign(claims(KC_ISS, aud="rag", groups=None, realm_access={"roles": ["llm"]}, scope="rag"))
    before = stack["up"].count
    assert_denied(stack, call(stack, t, path="/v1/chat/completions"), 403, "provider_not_allowed", before)


@pytest.mark.parametrize("marker", [{"_claim_names": {"groups": "src1"}}, {"hasgroups": True}])
def test_group_overage_is_refused(stack, marker):
    t = stack["keys"]["rs"].sign(claims(CI_ISS, groups=None, **marker))
    before = stack["up"].count
    assert_denied(stack, call(stack, t), 403, "groups_overage", before)


# ---------------------------------------------------------------- JWKS behaviour

@contextlib.contextmanager
def jwks_stack(envoy_bin, keys, idp=None, **fetch):
    """A JWKS server publishing `keys` (its knobs preset from `idp`, e.g.
    {"delay": 1.5}), an upstream, and an Envoy of their own; all stopped after."""
    jwks = JwksServer(keys)
    for k, v in (idp or {}).items():
        setattr(jwks, k, v)
    up = Upstream()
    env = None
    try:
        env = Envoy(envoy_bin, policy(jwks.port, Key("ES256", "unused").jwk, **fetch), up.port, {"jwks": jwks.port})
        yield env, jwks, up
    finally:
        if env:
            env.stop()
        up.close()
        jwks.close()


def test_cold_start_waits_for_first_fetch(envoy_bin, keys):
    with jwks_stack(envoy_bin, [keys["rs"]], timeout_ms=2500, idp={"delay": 1.5}) as (env, jwks, up):
        code, _, body = env.request("POST", "/collections/c/points/search", bearer(keys["rs"].sign(claims(CI_ISS))), b"{}")
        assert code == 200, body
        assert up.count == 1
        # forwarded only after the first JWKS answer went out
        assert jwks.served_at and up.last()["t"] >= min(jwks.served_at)


def test_no_keys_means_401_jwks_unavailable(envoy_bin, keys):
    with jwks_stack(envoy_bin, [keys["rs"]], cold_start_wait_ms=800, idp={"status": 503}) as (env, jwks, up):
        code, headers, body = env.request("POST", "/collections/c/points/search", bearer(keys["rs"].sign(claims(CI_ISS))), b"{}")
        assert code == 401 and json.loads(body)["reason"] == "jwks_unavailable", body
        jwks.status, jwks.raw = 200, b"{not json"
        code, _, body = env.request("POST", "/collections/c/points/search", bearer(keys["rs"].sign(claims(CI_ISS))), b"{}")
        assert code == 401 and json.loads(body)["reason"] == "jwks_unavailable", body
        assert up.count == 0


def test_rotation_via_unknown_kid_and_refetch_is_rate_limited(envoy_bin, keys):
    with jwks_stack(envoy_bin, [keys["rs"]], min_refetch_seconds=30) as (env, jwks, up):
        path = "/collections/c/points/search"
        assert env.request("POST", path, bearer(keys["rs"].sign(claims(CI_ISS))), b"{}")[0] == 200
        time.sleep(0.5)
        hits = jwks.hits
        # A new key appears at the IdP; a token with its kid triggers one refetch... but
        # the refetch interval (30 s) has not passed since the first fetch.
        jwks.keys.append(keys["es"])
        code, _, body = env.request("POST", path, bearer(keys["es"].sign(claims(CI_ISS))), b"{}")
        assert code == 401 and json.loads(body)["reason"] == "unknown_kid"
        assert jwks.hits == hits


def test_rotation_picked_up_and_random_kids_do_not_hammer(envoy_bin, keys):
    with jwks_stack(envoy_bin, [keys["rs"]], min_refetch_seconds=1) as (env, jwks, up):
        path = "/collections/c/points/search"
        assert env.request("POST", path, bearer(keys["rs"].sign(claims(CI_ISS))), b"{}")[0] == 200
        time.sleep(1.2)
        jwks.keys.append(keys["es"])
        code, _, body = env.request("POST", path, bearer(keys["es"].sign(claims(CI_ISS))), b"{}")
        assert code == 200, body
        hits = jwks.hits
        t0 = time.time()
        rejected = 0
        for i in range(30):
            t = keys["rs"].sign(claims(CI_ISS), kid=f"random-{i}")
            code, _, body = env.request("POST", path, bearer(t), b"{}")
            rejected += code == 401 and json.loads(body)["reason"] == "unknown_kid"
        elapsed = time.time() - t0
        assert rejected == 30
        # at most one refetch per started second of the run (min_refetch_seconds = 1)
        assert jwks.hits - hits <= int(elapsed) + 1, (jwks.hits - hits, elapsed)
        assert up.count == 2


def test_outage_keeps_last_good_keys(envoy_bin, keys):
    with jwks_stack(envoy_bin, [keys["rs"]], min_refetch_seconds=1) as (env, jwks, up):
        path = "/collections/c/points/search"
        assert env.request("POST", path, bearer(keys["rs"].sign(claims(CI_ISS))), b"{}")[0] == 200
        jwks.status = 500
        time.sleep(1.2)
        hits = jwks.hits
        # unknown kid forces a refetch, which fails
        t = keys["rs"].sign(claims(CI_ISS), kid="not-there")
        assert env.request("POST", path, bearer(t), b"{}")[0] == 401
        assert jwks.hits > hits
        # the old key still verifies (fresh token: not served from the cache)
        assert env.request("POST", path, bearer(keys["rs"].sign(claims(CI_ISS, sub="other"))), b"{}")[0] == 200


def test_slow_jwks_beyond_timeout_fails_closed(envoy_bin, keys):
    with jwks_stack(envoy_bin, [keys["rs"]], cold_start_wait_ms=1500, timeout_ms=300, idp={"delay": 5}) as (env, jwks, up):
        code, _, body = env.request("POST", "/collections/c/points/search", bearer(keys["rs"].sign(claims(CI_ISS))), b"{}")
        assert code == 401 and json.loads(body)["reason"] == "jwks_unavailable", body
        assert up.count == 0


# ---------------------------------------------------------------- configuration

def test_invalid_config_is_refused_with_the_field_named(envoy_bin, keys):
    up = Upstream()
    bad = policy(1, keys["kc"].jwk)
    bad["providers"][0]["max_lifetime_seconds"] = 0
    env = Envoy(envoy_bin, bad, up.port, {"jwks": 1}, wait=False)
    try:
        env.proc.wait(30)
        assert env.proc.returncode != 0
        assert "invalid configuration: providers[0].max_lifetime_seconds" in env.logs()
    finally:
        env.stop(), up.close()


# ---------------------------------------------------------------- path and header tricks

@pytest.mark.parametrize("path", [
    "/v1/../collections/docs/points",
    "/v1/%2e%2e/collections/docs/points",
    "/v1/..%2fcollections/docs/points",
    "/v1//../collections/docs/points",
    "/collections/docs%2fpoints%2fdelete/points/search",
    "/collections/%64ocs/points",
])
def test_path_tricks_never_reach_another_resource(stack, path):
    # an LLM-only caller may not touch the vector store, however the path is spelled:
    # either refused, or what reaches the upstream is a path of the LLM resource.
    t = stack["keys"]["rs"].sign(claims(CI_ISS, groups=["llm"], scope="rag"))
    before = stack["up"].count
    code, _, body = stack["envoy"].request("GET", path, bearer(t))
    if code == 200:
        assert stack["up"].count == before + 1
        assert stack["up"].last()["path"].startswith("/v1/"), stack["up"].last()["path"]
    else:
        assert code in (400, 403, 404), (code, body)
        assert stack["up"].count == before


def test_method_override_headers_are_dropped(stack):
    t = stack["keys"]["rs"].sign(claims(CI_ISS))
    code, _, _ = call(stack, t, headers=[("x-http-method-override", "DELETE"), ("x-http-method", "PUT")])
    assert code == 200
    seen = stack["up"].last()["headers"]
    assert "x-http-method-override" not in seen and "x-http-method" not in seen


def test_identity_headers_cannot_be_injected_through_claims(stack):
    t = stack["keys"]["rs"].sign(claims(CI_ISS, sub="job\r\nx-evil: 1", groups=["readers", "writers,admins"]))
    code, _, body = call(stack, t)
    assert code == 200, body
    seen = stack["up"].last()["headers"]
    assert seen["x-nhi-subject"] == ["job%0D%0Ax-evil: 1"]
    assert seen["x-nhi-groups"] == ["readers,writers%2Cadmins"]
    assert "x-evil" not in seen


def test_token_in_another_providers_header_is_refused(stack):
    t = stack["keys"]["rs"].sign(claims(CI_ISS))
    before = stack["up"].count
    assert_denied(stack, call(stack, headers=[("x-ci-token", t)]), 401, "unknown_issuer", before)


def test_duplicate_claims_are_refused(stack):
    k = stack["keys"]["rs"]
    import jwt as pyjwt
    h = b64u(json.dumps({"alg": "RS256", "kid": "rs-1"}).encode())
    c = claims(CI_ISS)
    body = json.dumps(c)[:-1] + ', "groups": ["writers"]}'
    p = b64u(body.encode())
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    sig = k.private.sign(f"{h}.{p}".encode(), padding.PKCS1v15(), hashes.SHA256())
    before = stack["up"].count
    assert_denied(stack, call(stack, f"{h}.{p}.{b64u(sig)}"), 401, "malformed", before)


def test_background_refresh_picks_up_new_keys_without_requests(envoy_bin, keys):
    # unknown-kid refetch is effectively off (1 h), so only the background refresh can load the new key
    with jwks_stack(envoy_bin, [keys["rs"]], refresh_seconds=10, min_refetch_seconds=3600) as (env, jwks, up):
        path = "/collections/c/points/search"
        assert env.request("POST", path, bearer(keys["rs"].sign(claims(CI_ISS))), b"{}")[0] == 200
        jwks.keys = [keys["es"]]
        code, _, body = env.request("POST", path, bearer(keys["es"].sign(claims(CI_ISS))), b"{}")
        assert code == 401 and json.loads(body)["reason"] == "unknown_kid"
        hits = jwks.hits
        deadline = time.time() + 25
        while time.time() < deadline and jwks.hits == hits:
            time.sleep(0.5)
        assert jwks.hits > hits, "no background refresh within 25 s"
        time.sleep(0.5)  # every worker syncs from shared data on its next tick
        code, _, body = env.request("POST", path, bearer(keys["es"].sign(claims(CI_ISS, sub="after-refresh"))), b"{}")
        assert code == 200, body


def test_path_variants_a_backend_reads_as_another_path(stack):
    """`;` path parameters (Tomcat and Spring route `/search;x` as `/search`)
    and encoded control characters are refused before matching; a trailing
    slash is the same path to the operation globs (the search stays a read)."""
    reader = stack["keys"]["es"].sign(claims(CI_ISS))
    for path in ["/collections/docs/points/search;x", "/collections/docs/points;v=1/search", "/collections/docs/points/search%09"]:
        before = stack["up"].count
        assert_denied(stack, call(stack, reader, path=path), 403, "unnormalized_path", before)
    before = stack["up"].count
    code, _, body = call(stack, reader, path="/collections/docs/points/search/")
    assert code == 200, body
    assert stack["up"].count == before + 1
