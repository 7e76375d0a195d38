import pytest

from harness import Envoy, JwksServer, Key, Upstream, envoy_binaries


def pytest_generate_tests(metafunc):
    if "envoy_bin" in metafunc.fixturenames:
        bins = envoy_binaries()
        ids = [b.split("envoy-")[-1].split("/")[0] if "envoy-" in b else b for b in bins]
        metafunc.parametrize("envoy_bin", bins, ids=ids, scope="module")


@pytest.fixture(scope="session")
def keys():
    """Signing keys shared by the tests (RSA generation is slow)."""
    return {
        "rs": Key("RS256", "rs-1"),
        "ps": Key("PS256", "ps-1"),
        "es": Key("ES256", "es-1"),
        "ed": Key("EdDSA", "ed-1"),
        "kc": Key("ES384", "kc-1"),
        "other": Key("RS256", "rs-1"),  # same kid as "rs", different key: forged signature
    }


@pytest.fixture()
def upstream():
    u = Upstream()
    yield u
    u.close()
