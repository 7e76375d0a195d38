import shutil

import pytest

import harness
from harness import Envoy, JwksServer, Key, Upstream, envoy_binaries


def pytest_sessionfinish(session, exitstatus):
    """Removes the servers' folder (harness.run_dir) after a run in which
    every test passed; after a failure it stays for its logs."""
    d = harness._RUN_DIR
    if d and exitstatus == 0:
        shutil.rmtree(d, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, exitstatus):
    d = harness._RUN_DIR
    if d and exitstatus != 0:
        terminalreporter.write_line(f"nhi-gate: Envoy, approval service and collector logs of this run are kept in {d}")


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
        "rs2": Key("RS256", "rs-2"),  # a second RSA key, for rotations
    }


@pytest.fixture()
def upstream():
    u = Upstream()
    yield u
    u.close()
