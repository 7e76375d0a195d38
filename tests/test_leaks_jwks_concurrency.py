"""Concurrent requests during a JWKS refetch, and key rotation vs the token cache."""
import threading
import time

from identity_stack import CI_ISS, PATH, bearer, claims, reason, stack


def test_second_request_with_new_kid_during_refetch_is_not_refused(envoy_bin, keys):
    """A refetch for a new kid is in flight (IdP answers after 1 s). A second
    request carrying the same new kid, arriving while that fetch is in flight,
    must wait for it like the first one does; it is refused at once with
    401 unknown_kid instead (the lease held for the in-flight callout is read as
    'refetch not allowed')."""
    with stack(envoy_bin, [keys["rs"]], concurrency=1, min_refetch_seconds=1) as (env, jwks, up):
        assert env.request("POST", PATH, bearer(keys["rs"].sign(claims(CI_ISS))), b"{}")[0] == 200
        time.sleep(1.5)  # past min_refetch_seconds
        jwks.keys.append(keys["rs2"])
        jwks.delay = 1.0
        results = {}

        def first():
            results["a"] = env.request("POST", PATH, bearer(keys["rs2"].sign(claims(CI_ISS, sub="a"))), b"{}")

        t = threading.Thread(target=first)
        t.start()
        time.sleep(0.4)  # the callout is now in flight
        code_b, _, body_b = env.request("POST", PATH, bearer(keys["rs2"].sign(claims(CI_ISS, sub="b"))), b"{}")
        t.join(10)
        code_a, _, body_a = results["a"]
        assert code_a == 200, body_a
        assert code_b == 200, (code_b, reason(body_b))


def test_rotation_removing_a_key_invalidates_cached_tokens(envoy_bin, keys):
    with stack(envoy_bin, [keys["rs"], keys["rs2"]], concurrency=2, min_refetch_seconds=1) as (env, jwks, up):
        old = keys["rs"].sign(claims(CI_ISS, sub="old"))
        for _ in range(6):
            assert env.request("POST", PATH, bearer(old), b"{}")[0] == 200
        jwks.keys = [keys["rs2"]]
        time.sleep(1.2)
        # force a refetch with an unknown kid
        env.request("POST", PATH, bearer(keys["rs2"].sign(claims(CI_ISS), kid="nope")), b"{}")
        time.sleep(0.5)
        codes = [env.request("POST", PATH, bearer(old), b"{}")[0] for _ in range(6)]
        assert codes == [401] * 6, codes
