"""OIDC Discovery 1.0 §4.3: the `issuer` in the discovery document MUST equal
the configured issuer, else the document MUST NOT be used. nhi-gate used to
take `jwks_uri` from any discovery document."""
import sys
import json

from harness import Envoy, Handler, Upstream, _Server, claims


class LyingDiscovery(_Server):
    def __init__(self, key, issuer_in_doc):
        outer = self
        self.key = key

        def factory(_):
            class H(Handler):
                def do_GET(self):
                    if self.path == "/.well-known/openid-configuration":
                        body = {"issuer": issuer_in_doc, "jwks_uri": f"http://127.0.0.1:{outer.port}/jwks"}
                    else:
                        body = {"keys": [outer.key.jwk]}
                    self.reply(200, json.dumps(body).encode())
            return H
        super().__init__(factory)


def test_discovery_document_with_another_issuer_is_not_used(envoy_bin, keys):
    disc = LyingDiscovery(keys["rs"], "https://some-other-tenant.example")
    iss = f"http://127.0.0.1:{disc.port}"
    up = Upstream()
    pol = {"jwks_fetch": {"cold_start_wait_ms": 2000, "timeout_ms": 1000},
           "providers": [{"name": "d", "issuer": iss, "audiences": ["nhi-gate"], "discovery": True, "cluster": "idp"}],
           "resources": [{"name": "r", "path_prefix": "/", "read": {"any_of": ["readers"]}, "write": {"any_of": ["readers"]}}]}
    env = Envoy(envoy_bin, pol, up.port, {"idp": disc.port})
    try:
        code, _, body = env.request("GET", "/x", [("authorization", "Bearer " + keys["rs"].sign(claims(iss)))])
        assert code == 401, (code, body)
        assert up.count == 0
    finally:
        env.stop(); up.close(); disc.close()
