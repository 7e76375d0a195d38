#!/usr/bin/env python3
"""Side-by-side throughput/latency of Envoy without a filter, with native
jwt_authn + rbac, and with nhi-gate (see scripts/bench.sh). All traffic stays
on 127.0.0.1; every load run is bounded in time.

Each wrk run also reads the gateway's user CPU time (/proc/PID/stat), so
the table gives user CPU microseconds per request. --instructions N
instead runs the three gateways under valgrind's callgrind and counts the
instructions each gateway process executes per request (all threads, user
space), over N requests on one keep-alive connection after 30 to warm up:
the same from run to run, whatever else the machine does. Together they
give each setup's instructions per ns of CPU."""
import argparse
import atexit
import glob
import http.client
import json
import os
import re
import subprocess
import sys
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))
import envoy_config  # noqa: E402
from harness import Key, claims, free_port  # noqa: E402

ISS = "https://ci.bench"
ENVOY = os.environ["ENVOY_BIN"]
WASM = str(ROOT / "dist" / "nhi_gate.wasm")


SMALL = [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "{\"result\":[]}"}}}]


def upstream_config(port, admin, routes=SMALL):
    """A second Envoy answering from direct_response routes: the fast upstream."""
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [{
            "name": "up", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "per_connection_buffer_limit_bytes": 4 << 20,
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "up",
                    "route_config": {"max_direct_response_body_size_bytes": 2 << 20,
                                     "virtual_hosts": [{"name": "up", "domains": ["*"], "routes": routes}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                }}]}]}]}}


def policy(jwk, cache_entries=1024):
    return {
        "token_cache_entries": cache_entries,
        "providers": [{"name": "ci", "issuer": ISS, "audiences": ["nhi-gate"], "max_lifetime_seconds": 3600,
                       "jwks": {"keys": [jwk]}}],
        "resources": [{"name": "vectors", "path_prefix": "/collections",
                       "operations": [{"methods": ["POST"], "path_glob": "/collections/*/points/search", "class": "read"}],
                       "read": {"any_of": ["readers"]},
                       "upstream_headers": {"api-key": "backend-secret"}}],
    }


def native_filters(jwk):
    """jwt_authn + rbac doing the same checks: issuer, audience, signature,
    groups contains 'readers' on the search path; token removed upstream."""
    return [
        {"name": "envoy.filters.http.jwt_authn", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"ci": {"issuer": ISS, "audiences": ["nhi-gate"], "forward": False,
                                 "payload_in_metadata": "jwt_payload", "clock_skew_seconds": 60,
                                 "max_lifetime": "3600s",
                                 "local_jwks": {"inline_string": json.dumps({"keys": [jwk]})}}},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "ci"}}]}},
        {"name": "envoy.filters.http.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": {"readers": {
                "permissions": [{"and_rules": {"rules": [
                    {"header": {"name": ":method", "string_match": {"exact": "POST"}}},
                    {"url_path": {"path": {"safe_regex": {"regex": "/collections/[^/]+/points/search"}}}}]}}],
                "principals": [{"metadata": {"filter": "envoy.filters.http.jwt_authn",
                                             "path": [{"key": "jwt_payload"}, {"key": "groups"}],
                                             "value": {"list_match": {"one_of": {"string_match": {"exact": "readers"}}}}}}]}}}}},
    ]


def gateway_config(kind, jwk, port, admin, up_port):
    if kind == "native":
        cfg = envoy_config.render("{}", WASM, port, admin, [("upstream", up_port)], [("/", "upstream")], with_filter=False)
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"] = native_filters(jwk) + hcm["http_filters"]
        hcm["route_config"]["virtual_hosts"][0]["request_headers_to_add"] = [
            {"header": {"key": "api-key", "value": "backend-secret"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
        return cfg
    cache = 0 if kind == "nhi-gate-cold" else 1024
    with_filter = kind != "no-filter"
    return envoy_config.render(json.dumps(policy(jwk, cache)), WASM, port, admin, [("upstream", up_port)],
                               [("/", "upstream")], with_filter=with_filter)


# Envoy configs and logs of this run: removed when the script ends,
# kept (and named) when it ends with an error.
RUN_DIR = tempfile.mkdtemp(prefix="nhi-gate-bench-")
_failed = []


def _on_error(*exc):
    _failed.append(True)
    print(f"bench: Envoy configs and logs kept in {RUN_DIR}", file=sys.stderr)
    sys.__excepthook__(*exc)


sys.excepthook = _on_error
atexit.register(lambda: _failed or shutil.rmtree(RUN_DIR, True))


def start(cfg, concurrency=1):
    d = tempfile.mkdtemp(dir=RUN_DIR)
    p = os.path.join(d, "envoy.json")
    Path(p).write_text(json.dumps(cfg))
    log = open(os.path.join(d, "envoy.log"), "w")
    proc = subprocess.Popen([ENVOY, "-c", p, "--concurrency", str(concurrency), "--disable-hot-restart",
                             "--log-level", "warn", "--base-id", str(free_port())], stdout=log, stderr=subprocess.STDOUT)
    return proc


def wait_ok(url, headers, timeout=30, method="POST"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, url] + (["-d", "{}"] if method == "POST" else [])
                           + sum([["-H", h] for h in headers], []), capture_output=True, text=True)
        last = r.stdout
        if last == "200":
            return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not answering 200 (last {last})")


def start_callgrind(cfg, name):
    """Starts Envoy (one worker) from `cfg` under valgrind's callgrind; its
    config, log and dumps are `RUN_DIR/*-{name}*`. Envoy with V8 takes
    minutes to start under valgrind."""
    path = os.path.join(RUN_DIR, f"envoy-{name}.json")
    Path(path).write_text(json.dumps(cfg))
    log = open(os.path.join(RUN_DIR, f"valgrind-{name}.log"), "w")
    return subprocess.Popen(["valgrind", "--tool=callgrind", "--smc-check=all-non-file", "--cache-sim=no",
                             f"--callgrind-out-file={RUN_DIR}/callgrind-{name}.%p", ENVOY, "-c", path,
                             "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn",
                             "--base-id", str(free_port())], stdout=log, stderr=subprocess.STDOUT)


def instructions_per_request(proc, name, send, n):
    """Instructions the callgrind'ed Envoy `proc` (from `start_callgrind`)
    executes per request: `send(30)` to warm up, counters zeroed, `send(n)`,
    counters dumped and divided by n."""
    send(30)
    subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
    send(n)
    subprocess.run(["callgrind_control", "-d", "requests", str(proc.pid)], check=True, capture_output=True)
    dump = max(glob.glob(f"{RUN_DIR}/callgrind-{name}.{proc.pid}.*"), key=os.path.getmtime)
    total = next(int(line.split()[1]) for line in open(dump) if line.startswith(("summary:", "totals:")))
    return total / n


UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


TICK = os.sysconf("SC_CLK_TCK")


def user_seconds(pid):
    """User CPU time of process `pid` (all threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK


def wrk(url, token, seconds, connections, method="POST", pid=None):
    """Runs wrk once; returns (requests/s, p50 ms, p99 ms, user CPU us per
    request of process `pid`, or 0). Any non-2xx answer is an error."""
    cpu0 = user_seconds(pid) if pid else 0.0
    args = []
    if method == "POST":
        script = "wrk.method = 'POST'\nwrk.body = '{\"vector\":[1,0,0]}'\nwrk.headers['content-type'] = 'application/json'\n"
        sp = Path(tempfile.mkstemp(suffix=".lua", dir=RUN_DIR)[1])
        sp.write_text(script)
        args = ["-s", str(sp)]
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *args,
                          "-H", f"authorization: Bearer {token}", url], capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {m.group(1): float(m.group(2)) * UNIT[m.group(3)] for m in re.finditer(r"\s(50|99)%\s+([\d.]+)(us|ms|s)\b", out)}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} non-2xx responses:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    cpu_us = 1e6 * (user_seconds(pid) - cpu0) / requests if pid and requests else 0.0
    return rps, lat["50"], lat["99"], cpu_us


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--instructions", type=int, default=0, metavar="N",
                    help="only instructions per request under callgrind, N requests per gateway")
    a = ap.parse_args()
    if a.instructions > 0:
        return instructions(a.instructions)

    key = Key("RS256", "bench-1")
    token = key.sign(claims(ISS, groups=["readers"], ttl=3000))
    up_port = free_port()
    up = start(upstream_config(up_port, free_port()), concurrency=1)
    kinds = ["no-filter", "native", "nhi-gate", "nhi-gate-cold"]
    gws = {}
    try:
        for k in kinds:
            port = free_port()
            gws[k] = (start(gateway_config(k, key.jwk, port, free_port(), up_port)), port)
        for k, (_, port) in gws.items():
            wait_ok(f"http://127.0.0.1:{port}/collections/docs/points/search", [f"authorization: Bearer {token}"])
        # sanity: both filtering setups refuse a request without a token
        for k in ("native", "nhi-gate", "nhi-gate-cold"):
            r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d", "{}",
                                f"http://127.0.0.1:{gws[k][1]}/collections/docs/points/search"], capture_output=True, text=True)
            if r.stdout not in ("401", "403"):
                raise RuntimeError(f"{k} let an unauthenticated request through ({r.stdout})")
        results = {k: [] for k in kinds}
        for r in range(a.rounds):
            for k in kinds:
                url = f"http://127.0.0.1:{gws[k][1]}/collections/docs/points/search"
                results[k].append(wrk(url, token, a.seconds, a.connections, pid=gws[k][0].pid))
                rps, p50, p99, cpu = results[k][-1]
                print(f"round {r + 1} {k:14s} {rps:10.0f} req/s  p50 {p50:.3f} ms  p99 {p99:.3f} ms  user CPU {cpu:.1f} us/request",
                      file=sys.stderr)
    finally:
        for p, _ in gws.values():
            p.terminate()
        up.terminate()

    def med(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2]

    summary = {k: tuple(med([x[i] for x in v]) for i in range(4)) for k, v in results.items()}
    print(f"\nEnvoy {subprocess.run([ENVOY, '--version'], capture_output=True, text=True).stdout.split('version:')[-1].strip()}, "
          f"1 worker, wrk -c{a.connections}, {a.rounds} rounds x {a.seconds}s interleaved, RS256, medians\n")
    print(f"| setup | req/s | p50 ms | p99 ms | user CPU us/request |\n|---|---|---|---|---|")
    for k in kinds:
        rps, p50, p99, cpu = summary[k]
        print(f"| {k} | {rps:.0f} | {p50:.3f} | {p99:.3f} | {cpu:.1f} |")
    n, g, f = summary["native"], summary["nhi-gate"], summary["no-filter"]
    print(f"\nnhi-gate / native:    throughput {g[0] / n[0]:.2f}x, p50 {g[1] / n[1]:.2f}x, p99 {g[2] / n[2]:.2f}x")
    print(f"nhi-gate / no filter: throughput {g[0] / f[0]:.2f}x, p50 {g[1] / f[1]:.2f}x")
    print(f"cold path (cache off, every request an RS256 verification): {summary['nhi-gate-cold'][0]:.0f} verifications/s "
          f"({summary['nhi-gate-cold'][0] / n[0]:.2f}x native jwt_authn)")


def instructions(n):
    """--instructions N (module doc): instructions per request of each gateway under callgrind."""
    key = Key("RS256", "bench-1")
    token = key.sign(claims(ISS, groups=["readers"], ttl=3000))
    up_port = free_port()
    procs = [start(upstream_config(up_port, free_port()), concurrency=1)]
    gws = {}
    try:
        for k in ("no-filter", "native", "nhi-gate"):
            port = free_port()
            gws[k] = (port, start_callgrind(gateway_config(k, key.jwk, port, free_port(), up_port), k))
            procs.append(gws[k][1])
        for port, _ in gws.values():
            wait_ok(f"http://127.0.0.1:{port}/collections/docs/points/search", [f"authorization: Bearer {token}"], timeout=1200)
        counts = {}
        for k, (port, proc) in gws.items():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

            def send(count):
                for _ in range(count):
                    conn.request("POST", "/collections/docs/points/search", body=b'{"vector":[1,0,0]}',
                                 headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
                    r = conn.getresponse()
                    body = r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{k}: {r.status} {body[:200]!r}")
            counts[k] = instructions_per_request(proc, k, send, n)
            conn.close()
    finally:
        for p in procs:
            p.terminate()
    print(f"\ninstructions per request (callgrind, whole gateway process, {n} POST searches on one connection "
          "after 30 to warm up)\n")
    print("| setup | instructions |\n|---|---|")
    for k, c in counts.items():
        print(f"| {k} | {c / 1e3:.0f}k |")


if __name__ == "__main__":
    main()
