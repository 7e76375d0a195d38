"""Which tokens reach the upstream, and typ handling."""
import pytest

from identity_stack import CI_ISS, KC_ISS, PATH, Key, bearer, claims, forge, reason, stack


@pytest.fixture(scope="module")
def st(envoy_bin, keys):
    kc = Key("ES384", "kc-1")
    with stack(envoy_bin, [keys["rs"], keys["es"]], kc_key=kc) as (env, jwks, up):
        yield env, up, keys, kc


def test_unverified_token_header_is_not_forwarded_with_forward_authorization(st):
    """forward_authorization forwards the caller's verified token. A second,
    never-verified token in another provider's token header (here a forged,
    unsigned Keycloak token claiming admin roles) must not ride along to the
    backend (README: one token per request; the upstream is promised only
    verified credentials)."""
    env, up, keys, kc = st
    good = keys["rs"].sign(claims(CI_ISS))
    forged = forge({"alg": "ES384", "kid": "kc-1"}, {"iss": KC_ISS, "aud": "rag", "sub": "root",
                                                      "realm_access": {"roles": ["admins"]}, "exp": 9999999999})
    before = up.count
    code, _, body = env.request("GET", "/forward/x", bearer(good) + [("x-ci-token", forged)])
    if code == 200:
        seen = up.last()["headers"]
        assert "x-ci-token" not in seen, f"unverified token forwarded upstream: {seen['x-ci-token']}"
    else:
        assert up.count == before


def test_typ_application_jwt_is_refused_with_its_name(st):
    """The signature library reads typ `application/jwt` as no JWT; the filter
    refuses it up front as `malformed`, naming typ (it used to say `signature`)."""
    env, up, keys, kc = st
    t = keys["rs"].sign(claims(CI_ISS), typ="application/jwt")
    code, _, body = env.request("POST", PATH, bearer(t), b"{}")
    assert (code, reason(body)) == (401, "malformed"), (code, body)
    t = keys["rs"].sign(claims(CI_ISS), typ="application/at+jwt")
    assert env.request("POST", PATH, bearer(t), b"{}")[0] == 200


def test_cached_ci_token_in_kc_header_refused(st):
    env, up, keys, kc = st
    t = keys["rs"].sign(claims(CI_ISS))
    assert env.request("POST", PATH, bearer(t), b"{}")[0] == 200
    code, _, body = env.request("POST", PATH, [("x-ci-token", t)], b"{}")
    assert code == 401 and reason(body) == "unknown_issuer", (code, body)
