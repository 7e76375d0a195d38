"""A gateway with `requests: chat_messages` in front of a recording upstream,
for tests/test_leaks_prompt_fields.py."""
import sys
import json
from harness import Envoy, Key, Upstream, claims

ISS = "https://ci.test"
EMAIL = "jane.doe@example.com"
SSN = "123-45-6789"
CARD = "4111 1111 1111 1111"
PII = [EMAIL, SSN, CARD]


def policy(jwk, **llm_mask):
    return {
        "providers": [{"name": "ci", "issuer": ISS, "audiences": ["nhi-gate"], "jwks": {"keys": [jwk]}}],
        "resources": [
            {"name": "llm", "path_prefix": "/v1/", "read": {"any_of": ["readers"]},
             "operations": [{"methods": ["POST"], "path_glob": "/v1/**", "class": "read"}],
             "upstream_headers": {"authorization": "Bearer backend-secret-value"},
             "mask": dict({"requests": "chat_messages", "max_buffer_bytes": 65536}, **llm_mask)},
            {"name": "echo", "path_prefix": "/echo", "read": {"any_of": ["readers"]}, "write": {"any_of": ["readers"]},
             "mask": {"requests": "json"}},
        ],
    }


def start(envoy_bin):
    key = Key("ES256", "k1")
    up = Upstream()
    env = Envoy(envoy_bin, policy(key.jwk), up.port)
    token = key.sign(claims(ISS, ttl=900))
    return {"env": env, "up": up, "token": token, "auth": [("authorization", f"Bearer {token}")]}


def post(g, path, body, headers=(("content-type", "application/json"),)):
    if not isinstance(body, (bytes, bytearray)):
        body = json.dumps(body).encode()
    n = g["up"].count
    code, h, out = g["env"].request("POST", path, g["auth"] + list(headers), body)
    sent = g["up"].last()["body"] if g["up"].count > n else None
    return code, out, sent


def leaked(sent):
    if sent is None:
        return []
    s = sent.decode("utf-8", "replace")
    return [v for v in PII if v in s]
