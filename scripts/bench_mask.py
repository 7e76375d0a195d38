#!/usr/bin/env python3
"""Masking throughput inside Envoy (see scripts/bench-mask.sh): JSON bodies
of 1 KiB, 64 KiB and 1 MiB, clean and PII-dense, through Envoy without a
filter and through nhi-gate with response masking on. One worker, wrk,
interleaved rounds, medians; MB/s = requests/s x body size."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ISS, WASM, start, upstream_config, wait_ok, wrk  # noqa: E402
import envoy_config  # noqa: E402
from harness import Key, claims, free_port  # noqa: E402

SIZES = {"1k": 1024, "64k": 64 * 1024, "1m": 1024 * 1024}


def body(size, dense):
    """A JSON search result of about `size` bytes; dense: every record holds an email, phone and card."""
    recs, i = [], 0
    while len(json.dumps({"result": recs})) < size:
        text = (f"contact user{i}@example.com or +1 415-555-{i % 10000:04d}, card 4111 1111 1111 1111"
                if dense else f"chunk {i} of the onboarding runbook: restart the indexer and check the queue depth")
        recs.append({"id": i, "score": 0.5, "payload": {"text": text}})
        i += 1
    return json.dumps({"result": recs})


def upstream(port, admin):
    routes = []
    for name, size in SIZES.items():
        for dense in (False, True):
            routes.append({"match": {"path": f"/data/{'pii' if dense else 'clean'}-{name}"},
                           "direct_response": {"status": 200, "body": {"inline_string": body(size, dense)}},
                           "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}]})
    return upstream_config(port, admin, routes)


def gateway(jwk, port, admin, up_port, with_filter):
    policy = {"providers": [{"name": "ci", "issuer": ISS, "audiences": ["nhi-gate"], "jwks": {"keys": [jwk]}}],
              "resources": [{"name": "data", "path_prefix": "/data/", "read": {"any_of": ["readers"]},
                             "mask": {"max_buffer_bytes": 4 << 20}}]}
    cfg = envoy_config.render(json.dumps(policy), WASM, port, admin, [("upstream", up_port)], [("/", "upstream")], with_filter)
    cfg["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] = 8 << 20
    cfg["static_resources"]["clusters"][0]["per_connection_buffer_limit_bytes"] = 8 << 20
    return cfg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--connections", type=int, default=8)
    a = ap.parse_args()
    key = Key("ES256", "m1")
    token = key.sign(claims(ISS, groups=["readers"], ttl=3000))
    up_port = free_port()
    procs = [start(upstream(up_port, free_port()))]
    gws = {}
    try:
        for kind in ("passthrough", "nhi-gate"):
            port = free_port()
            procs.append(start(gateway(key.jwk, port, free_port(), up_port, kind == "nhi-gate")))
            gws[kind] = port
        for port in gws.values():
            wait_ok(f"http://127.0.0.1:{port}/data/clean-1k", [f"authorization: Bearer {token}"], method="GET")
        check = subprocess.run(["curl", "-s", "-H", f"authorization: Bearer {token}",
                                f"http://127.0.0.1:{gws['nhi-gate']}/data/pii-1k"], capture_output=True, text=True).stdout
        if "@example.com" in check or "[EMAIL]" not in check:
            raise RuntimeError("nhi-gate did not mask the PII-dense body: " + check[:300])
        res = {}
        for r in range(a.rounds):
            for name in SIZES:
                for dense in ("clean", "pii"):
                    for kind, port in gws.items():
                        out = wrk(f"http://127.0.0.1:{port}/data/{dense}-{name}", token, a.seconds, a.connections, method="GET")
                        res.setdefault((name, dense, kind), []).append(out)
    finally:
        for p in procs:
            p.terminate()
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(f"\n1 worker, wrk -c{a.connections}, {a.rounds} rounds x {a.seconds}s interleaved, medians\n")
    print("| body | passthrough req/s | nhi-gate req/s | nhi-gate MB/s | ratio | p50 passthrough ms | p50 nhi-gate ms |")
    print("|---|---|---|---|---|---|---|")
    for name, size in SIZES.items():
        for dense in ("clean", "pii"):
            p = [med([x[i] for x in res[(name, dense, "passthrough")]]) for i in range(3)]
            g = [med([x[i] for x in res[(name, dense, "nhi-gate")]]) for i in range(3)]
            mbs = g[0] * len(body(size, dense == "pii")) / 1e6
            print(f"| {dense} {name} | {p[0]:.0f} | {g[0]:.0f} | {mbs:.1f} | {g[0] / p[0]:.2f}x | {p[1]:.3f} | {g[1]:.3f} |")


if __name__ == "__main__":
    main()
