#!/usr/bin/env python3
"""Masking cost inside Envoy (see scripts/bench-mask.sh): JSON bodies of
1 KiB, 64 KiB and 1 MiB, clean and PII-dense, through three gateways in
front of the same fast upstream (a second Envoy answering from
direct_response routes), one worker each:

  passthrough  Envoy without a filter;
  no-mask      nhi-gate with the same resource but no `mask` section
               (token check, policy, audit record);
  mask         nhi-gate masking the response body.

Throughput is measured per core: wrk drives a gateway at fixed concurrency
while the gateway process's CPU time (utime + stime, /proc/PID/stat) is
read before and after, so CPU microseconds per request do not depend on
what else the 2-core machine runs. Masking MB/s per core = body bytes /
(CPU per request of `mask` - CPU per request of `no-mask`); nhi-gate MB/s
per core = body bytes / (`mask` - `passthrough`), i.e. everything the
filter adds (token check, audit, buffering, body copies, masking).

Latency: one request in flight at a time on the 1 KiB bodies, sent in
turn to each gateway and to a fourth one, **wasm-noop** (Envoy with a
proxy-wasm filter that does nothing: filter/examples/noop_filter.rs,
$NOOP_WASM, the floor any Wasm filter pays) by cli/examples/latency_ab.rs
($LATENCY_AB): interleaved request by request, so a machine that slows
down during the run slows every gateway alike. p50 per gateway; the
requests are cut into 5 consecutive blocks for the range of each ratio.
--latency-runs 1,25 adds a table sending 25 requests in a row to each
gateway (A×25, B×25, …): with K = 1 (the default) every request finds its
gateway's caches as three other Envoy processes left them, with K = 25
most requests find the worker warm, as a worker serving a steady stream
does.
The fast upstream answers at once, which puts the filter's cost in full
view; a second latency table (--upstream-delay-ms, default 2) repeats the
comparison against an upstream that takes that long to answer, as a search
backend does (SlowUpstream, in this process).

Instructions (--instructions N, instead of the tables above): the four
gateways run under valgrind's callgrind, and each 1 KiB request's cost is
the count of instructions the gateway process executes for it (all
threads, user space: Envoy, V8 and the module's compiled code), over N
requests on one keep-alive connection after 30 to warm up. The count does
not depend on what else the machine runs, so two builds compare without
the noise of a p50; it leaves out the kernel (sockets, scheduling), which
the p50 includes.
"""
import argparse
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ISS, WASM, instructions_per_request, start, start_callgrind, upstream_config, wait_ok, UNIT  # noqa: E402
import envoy_config  # noqa: E402
from harness import Key, claims, free_port  # noqa: E402

SIZES = {"1k": 1024, "64k": 64 * 1024, "1m": 1024 * 1024}
KINDS = ("passthrough", "no-mask", "mask")
TICK = os.sysconf("SC_CLK_TCK")


def body(size, dense):
    """A JSON search result of about `size` bytes; dense: every record holds an email, phone and card."""
    recs, i, total = [], 0, len('{"result": []}')
    while total < size:
        text = (f"contact user{i}@example.com or +1 415-555-{i % 10000:04d}, card 4111 1111 1111 1111"
                if dense else f"chunk {i} of the onboarding runbook: restart the indexer and check the queue depth")
        recs.append({"id": i, "score": 0.5, "payload": {"text": text}})
        total += len(json.dumps(recs[-1])) + (2 if i else 0)
        i += 1
    return json.dumps({"result": recs})


def upstream(port, admin):
    """The fast upstream: /data/{clean,pii}-{1k,64k,1m} answer at once."""
    routes = [{"match": {"path": f"/data/{'pii' if dense else 'clean'}-{name}"},
               "direct_response": {"status": 200, "body": {"inline_string": body(size, dense)}},
               "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}]}
              for name, size in SIZES.items() for dense in (False, True)]
    return upstream_config(port, admin, routes)


class SlowUpstream:
    """/data/slow/{clean,pii}-1k: the 1 KiB bodies after `delay_ms`, like a
    backend that takes that long to search. A thread per connection sleeps
    (nanosleep: ~0.1 ms late at most) and answers in one write with
    TCP_NODELAY. (Envoy's fault filter, used first, fires on its event loop's
    timer: the p50s came out bimodal, ~3.1 or ~4.7 ms for a 2 ms delay,
    whichever mode a gateway's median fell in.)"""

    def __init__(self, delay_ms):
        answers = {}
        for dense in ("clean", "pii"):
            b = body(1024, dense == "pii").encode()
            answers[f"/data/slow/{dense}-1k"] = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                                 + f"content-length: {len(b)}\r\n\r\n".encode() + b)

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self):
                time.sleep(delay_ms / 1000)
                self.wfile.write(answers.get(self.path, b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"))

            def log_message(self, *_):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def gateway(kind, jwk, port, admin, up_port, slow_port):
    resource = {"name": "data", "path_prefix": "/data/", "read": {"any_of": ["readers"]}}
    if kind == "mask":
        resource["mask"] = {"max_buffer_bytes": 4 << 20}
    if kind == "wasm-noop":
        cfg = envoy_config.render("{}", os.environ["NOOP_WASM"], port, admin, [("upstream", up_port), ("slow", slow_port)],
                                  [("/data/slow/", "slow"), ("/", "upstream")], True)
        cfg["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] = 8 << 20
        return cfg
    policy = {"providers": [{"name": "ci", "issuer": ISS, "audiences": ["nhi-gate"], "jwks": {"keys": [jwk]}}],
              "resources": [resource]}
    if kind == "mask":
        # the listener below buffers up to 8 MiB (1 MiB bodies, masked)
        policy["envoy_buffer_limit_bytes"] = 8 << 20
    cfg = envoy_config.render(json.dumps(policy), WASM, port, admin, [("upstream", up_port), ("slow", slow_port)],
                              [("/data/slow/", "slow"), ("/", "upstream")], kind != "passthrough")
    cfg["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] = 8 << 20
    cfg["static_resources"]["clusters"][0]["per_connection_buffer_limit_bytes"] = 8 << 20
    return cfg


def cpu_seconds(pid):
    """utime + stime of a process, seconds (proc(5): fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wrk(url, token, seconds, connections, pid):
    """One bounded wrk run; returns (requests/s, p50 ms, gateway CPU us per request)."""
    before = cpu_seconds(pid)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-H", f"authorization: Bearer {token}", url], capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    cpu = cpu_seconds(pid) - before
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise RuntimeError(f"{url}: non-2xx responses:\n{out}")
    n = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"\s50%\s+([\d.]+)(us|ms|s)\b", out)
    return rps, float(m.group(1)) * UNIT[m.group(2)], cpu * 1e6 / max(n, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--latency-only", action="store_true", help="only the 1 KiB p50 comparison")
    ap.add_argument("--latency-requests", type=int, default=5000, help="requests per gateway and body in the latency comparison")
    ap.add_argument("--latency-runs", default="1",
                    help="comma-separated K: one latency table per K, sending K requests in a row to each gateway")
    ap.add_argument("--upstream-delay-ms", type=float, default=2.0,
                    help="second latency table: the upstream answers after this delay (0: skip it)")
    ap.add_argument("--instructions", type=int, default=0, metavar="N",
                    help="only the instructions-per-request table (callgrind), N requests per gateway and body")
    a = ap.parse_args()
    if a.instructions > 0:
        return instructions(a.instructions)
    runs = [int(k) for k in a.latency_runs.split(",") if k.strip()]
    if not runs or any(k < 1 for k in runs):
        ap.error("--latency-runs: positive integers, e.g. 1,25")
    # delayed-upstream table: fewer requests (each takes the delay; the p50 needs no more)
    slow_n = max(500, a.latency_requests // 2)
    key = Key("ES256", "m1")
    token = key.sign(claims(ISS, groups=["readers"], ttl=3000))
    up_port = free_port()
    procs = [start(upstream(up_port, free_port()))]
    slow_up = SlowUpstream(a.upstream_delay_ms)
    gws = {}
    try:
        for kind in KINDS + ("wasm-noop",):
            port = free_port()
            p = start(gateway(kind, key.jwk, port, free_port(), up_port, slow_up.port))
            procs.append(p)
            gws[kind] = (port, p.pid)
        for port, _ in gws.values():
            wait_ok(f"http://127.0.0.1:{port}/data/clean-1k", [f"authorization: Bearer {token}"], method="GET")
        for kind, want_masked in (("mask", True), ("no-mask", False)):
            check = subprocess.run(["curl", "-s", "-H", f"authorization: Bearer {token}",
                                    f"http://127.0.0.1:{gws[kind][0]}/data/pii-1k"], capture_output=True, text=True).stdout
            if ("[EMAIL]" in check and "@example.com" not in check) != want_masked:
                raise RuntimeError(f"{kind}: unexpected body: " + check[:300])
        thr, lat = {}, {}
        for _ in range(a.rounds):
            for name in ([] if a.latency_only else SIZES):
                for dense in ("clean", "pii"):
                    for kind in KINDS:
                        port, pid = gws[kind]
                        url = f"http://127.0.0.1:{port}/data/{dense}-{name}"
                        thr.setdefault((name, dense, kind), []).append(wrk(url, token, a.seconds, a.connections, pid))
        for run in runs:
            for dense in ("clean", "pii"):
                lat.setdefault(run, {})[dense] = latency_ab(gws, dense, token, a.latency_requests, run)
        slow = {}
        if a.upstream_delay_ms > 0:
            for dense in ("clean", "pii"):
                slow[dense] = latency_ab(gws, f"slow/{dense}", token, slow_n)
    finally:
        for p in procs:
            p.terminate()
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(f"\nthroughput: 1 worker per gateway, wrk -c{a.connections}, {a.rounds} rounds x {a.seconds}s interleaved, medians")
    print("CPU = gateway process CPU time per request (us); MB/s per core = body bytes / extra CPU per request\n")
    print("| body | req/s passthrough / no-mask / mask | CPU us passthrough / no-mask / mask "
          "| masking MB/s per core | nhi-gate MB/s per core |")
    print("|---|---|---|---|---|")
    for name in ([] if a.latency_only else SIZES):
        for dense in ("clean", "pii"):
            r = {k: [med([x[i] for x in thr[(name, dense, k)]]) for i in range(3)] for k in KINDS}
            size = len(body(SIZES[name], dense == "pii"))
            mask_us = r["mask"][2] - r["no-mask"][2]
            gate_us = r["mask"][2] - r["passthrough"][2]
            mbs = lambda us: f"{size / us:.0f}" if us > 0 else "n/a"  # noqa: E731  (bytes/us = MB/s)
            print(f"| {dense} {name} | {r['passthrough'][0]:.0f} / {r['no-mask'][0]:.0f} / {r['mask'][0]:.0f} "
                  f"| {r['passthrough'][2]:.1f} / {r['no-mask'][2]:.1f} / {r['mask'][2]:.1f} | {mbs(mask_us)} | {mbs(gate_us)} |")
    names = list(gws)
    for run in runs:
        order = "request by request" if run == 1 else f"in runs of {run} requests per gateway"
        print(f"\nlatency: 1 KiB bodies, one request in flight, interleaved {order} across the gateways "
              f"({a.latency_requests} requests each, after 200 to warm up); ratios of the p50s, with the range over 5 "
              "consecutive blocks of the run\n")
        latency_table(lat[run], names)
    if slow:
        print(f"\nthe same with an upstream that answers after {a.upstream_delay_ms:g} ms ({slow_n} requests each)\n")
        latency_table(slow, names)
    print(f"\nCPU us per request in the first latency run (K = {runs[0]}; gateway process CPU time / its requests)\n")
    print("| body | passthrough | wasm-noop | no-mask | mask |")
    print("|---|---|---|---|---|")
    for dense in ("clean", "pii"):
        c = lat[runs[0]][dense][2]
        print(f"| {dense} 1k | {c['passthrough']:.1f} | {c['wasm-noop']:.1f} | {c['no-mask']:.1f} | {c['mask']:.1f} |")


def instructions(n):
    """The --instructions table (module doc): instructions per 1 KiB request by gateway and body."""
    key = Key("ES256", "m1")
    token = key.sign(claims(ISS, groups=["readers"], ttl=3000))
    up_port = free_port()
    procs = [start(upstream(up_port, free_port()))]
    slow_up = SlowUpstream(1)
    gws = {}
    try:
        for kind in ("passthrough", "wasm-noop", "no-mask", "mask"):
            port = free_port()
            p = start_callgrind(gateway(kind, key.jwk, port, free_port(), up_port, slow_up.port), kind)
            procs.append(p)
            gws[kind] = (port, p)
        # Envoy with V8 starts in minutes under valgrind
        for port, _ in gws.values():
            wait_ok(f"http://127.0.0.1:{port}/data/clean-1k", [f"authorization: Bearer {token}"], timeout=1200, method="GET")
        counts = {}
        for dense in ("clean", "pii"):
            for kind, (port, proc) in gws.items():
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

                def get(k):
                    for _ in range(k):
                        conn.request("GET", f"/data/{dense}-1k", headers={"authorization": f"Bearer {token}"})
                        r = conn.getresponse()
                        body = r.read()
                        if r.status != 200:
                            raise RuntimeError(f"{kind}: {r.status} {body[:200]!r}")
                counts[(dense, kind)] = instructions_per_request(proc, kind, get, n)
                conn.close()
    finally:
        for p in procs:
            p.terminate()
    print(f"\ninstructions per 1 KiB request (thousands; callgrind, whole gateway process, {n} requests on one "
          "connection after 30 to warm up)\n")
    print("| body | passthrough | wasm-noop | no-mask | mask | wasm-noop / passthrough | mask / no-mask | mask / passthrough |")
    print("|---|---|---|---|---|---|---|---|")
    for dense in ("clean", "pii"):
        c = {k: counts[(dense, k)] for k in gws}
        print(f"| {dense} 1k | {c['passthrough'] / 1e3:.0f} | {c['wasm-noop'] / 1e3:.0f} | {c['no-mask'] / 1e3:.0f} | "
              f"{c['mask'] / 1e3:.0f} | {c['wasm-noop'] / c['passthrough']:.3f}x | {c['mask'] / c['no-mask']:.3f}x | "
              f"{c['mask'] / c['passthrough']:.3f}x |")


def latency_table(lat, names):
    """Prints the p50s and ratios of latency_ab runs by body (clean, pii)."""
    print("| body | p50 ms passthrough | p50 ms wasm-noop | p50 ms no-mask | p50 ms mask "
          "| wasm-noop / passthrough | mask / no-mask | mask / passthrough |")
    print("|---|---|---|---|---|---|---|---|")
    for dense in ("clean", "pii"):
        p50, blocks, _ = lat[dense]

        def ratio(x, y):
            i, j = names.index(x), names.index(y)
            rs = sorted(b[i] / b[j] for b in blocks)
            return f"{p50[x] / p50[y]:.3f}x ({rs[0]:.2f}-{rs[-1]:.2f})"
        print(f"| {dense} 1k | {p50['passthrough']:.3f} | {p50['wasm-noop']:.3f} | {p50['no-mask']:.3f} | {p50['mask']:.3f} "
              f"| {ratio('wasm-noop', 'passthrough')} | {ratio('mask', 'no-mask')} | {ratio('mask', 'passthrough')} |")


def latency_ab(gws, dense, token, requests, run=1):
    """One interleaved latency run over all gateways (see the module doc):
    (p50 ms by gateway, per-block p50 lists in gateway order, CPU us per
    request by gateway)."""
    client = os.environ["LATENCY_AB"]
    names = list(gws)
    before = {k: cpu_seconds(pid) for k, (_, pid) in gws.items()}
    out = subprocess.run([client, "--requests", str(requests), "--run", str(run), "--header", f"authorization: Bearer {token}"]
                         + [f"http://127.0.0.1:{gws[k][0]}/data/{dense}-1k" for k in names],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"latency_ab failed: {out.stderr}")
    r = json.loads(out.stdout)
    cpu = {k: (cpu_seconds(pid) - before[k]) * 1e6 / (requests + 200) for k, (_, pid) in gws.items()}
    return {k: t["p50_ms"] for k, t in zip(names, r["targets"])}, r["blocks"], cpu


if __name__ == "__main__":
    main()
