"""End-to-end harness: real Envoy, real HTTP servers on loopback, real keys.

- `Envoy`: runs a stock Envoy binary with a config rendered by
  scripts/envoy_config.py (the same renderer scripts/run.sh uses).
- `Upstream`: an HTTP backend that records every request it receives, so
  tests can prove what reached it (and that rejected requests never did).
- `JwksServer`: an OIDC issuer endpoint (discovery + JWKS) that tests can
  rotate, slow down or break.
- `Key`: a signing key (RS256/PS256/ES256/ES384/EdDSA) with its public JWK.
All servers bind 127.0.0.1 only.
"""
import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import envoy_config  # noqa: E402

WASM = Path(os.environ.get("NHI_GATE_WASM", ROOT / "dist" / "nhi_gate.wasm"))


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_RUN_DIR = None


def run_dir() -> str:
    """This test process's folder for server files (configs, logs, SQLite
    files), created on first use; conftest.py removes it after a run in
    which every test passed and keeps it (naming it) otherwise."""
    global _RUN_DIR
    if _RUN_DIR is None:
        _RUN_DIR = tempfile.mkdtemp(prefix="nhi-gate-tests-")
    return _RUN_DIR


def scratch_dir(prefix: str) -> str:
    """A fresh folder under `run_dir()` for one server or test."""
    return tempfile.mkdtemp(prefix=prefix, dir=run_dir())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc, timeout=10, kill=True):
    """Stops a child process: SIGTERM, then up to `timeout` seconds for it to
    exit. One still running then is, with `kill`, sent SIGKILL and reaped;
    without `kill`, subprocess.TimeoutExpired propagates (the caller's test
    fails: the process should have exited on SIGTERM)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        if not kill:
            raise
        proc.kill()
        proc.wait()


def raw(port, data: bytes, timeout=5, read=True, mark_errors=False) -> bytes:
    """Sends raw bytes on a new connection to 127.0.0.1:port and returns what
    comes back until the peer closes (b"" without `read`). A read timeout ends
    the answer and another socket error propagates; with `mark_errors`, any
    socket error (a timeout too) ends it with `<<repr(error)>>` appended."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while read:
                b = s.recv(65536)
                if not b:
                    break
                out += b
        except OSError as e:
            if mark_errors:
                out += f"<<{e!r}>>".encode()
            elif not isinstance(e, socket.timeout):
                raise
        return out


def envoy_binaries():
    """Envoy binaries under test: ENVOY_BIN (one), else ENVOY_BINS (colon list)."""
    if os.environ.get("ENVOY_BIN"):
        return [os.environ["ENVOY_BIN"]]
    bins = [b for b in os.environ.get("ENVOY_BINS", "").split(":") if b]
    if not bins:
        bins = sorted(str(p) for p in (ROOT / ".tools").glob("envoy-*/envoy/_bin/envoy"))
    if not bins:
        raise RuntimeError("no Envoy binary: run scripts/setup.sh or set ENVOY_BIN")
    return bins


class Key:
    """A signing key and its public JWK (RFC 7517 §4, RFC 7518 §6, RFC 8037 §2)."""

    def __init__(self, alg: str, kid: str | None):
        self.alg, self.kid = alg, kid
        if alg in ("RS256", "PS256", "RS384", "RS512", "PS384", "PS512"):
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            nums = self.private.public_key().public_numbers()
            n = nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")
            self.jwk = {"kty": "RSA", "n": b64u(n), "e": b64u(nums.e.to_bytes(3, "big"))}
        elif alg in ("ES256", "ES384"):
            curve, size, crv = (ec.SECP256R1(), 32, "P-256") if alg == "ES256" else (ec.SECP384R1(), 48, "P-384")
            self.private = ec.generate_private_key(curve)
            nums = self.private.public_key().public_numbers()
            self.jwk = {"kty": "EC", "crv": crv, "x": b64u(nums.x.to_bytes(size, "big")), "y": b64u(nums.y.to_bytes(size, "big"))}
        elif alg == "EdDSA":
            self.private = ed25519.Ed25519PrivateKey.generate()
            from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
            raw = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            self.jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw)}
        else:
            raise ValueError(alg)
        self.jwk["use"] = "sig"
        if kid:
            self.jwk["kid"] = kid

    def sign(self, claims: dict, alg: str | None = None, **header) -> str:
        headers = dict(header)
        if self.kid and "kid" not in headers:
            headers["kid"] = self.kid
        return pyjwt.encode(claims, self.private, algorithm=alg or self.alg, headers=headers)


def claims(iss, aud="nhi-gate", sub="ci-job", groups=("readers",), ttl=300, **extra):
    now = int(time.time())
    c = {"iss": iss, "aud": aud, "sub": sub, "iat": now, "nbf": now, "exp": now + ttl, "jti": f"j-{time.monotonic_ns()}"}
    if groups is not None:
        c["groups"] = list(groups)
    c.update(extra)
    return c


def forge(header: dict, payload: dict, signature: bytes = b"sig") -> str:
    """A compact JWS with arbitrary header and payload (for attack tests)."""
    enc = lambda d: b64u(json.dumps(d, separators=(",", ":")).encode())  # noqa: E731
    return f"{enc(header)}.{enc(payload)}.{b64u(signature)}"


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler without access logs, with a JSON reply helper."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def read_body(self) -> bytes:
        """The request body, by content-length or chunked transfer coding;
        a chunked body's trailer lines (Latin-1, stripped) go to `self.trailers`."""
        self.trailers = []
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:
                        line = self.rfile.readline()
                        if line in (b"\r\n", b"\n", b""):
                            return body
                        self.trailers.append(line.decode("latin-1").strip())
                body += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def stream_sse(self, events, delay=0.0, named=False, done=True):
        """Answers 200 text/event-stream, chunked: one `data:` event per JSON
        object in `events` (each in its own chunk; `named`: after an
        `event: <its type>` line, as the Responses API sends them), then
        `data: [DONE]` (unless `done` is false)."""
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for e in events:
            time.sleep(delay)
            data = (f"event: {e['type']}\n" if named else "") + f"data: {json.dumps(e)}\n\n"
            data = data.encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        end = b"data: [DONE]\n\n" if done else b""
        self.wfile.write((f"{len(end):x}\r\n".encode() + end + b"\r\n" if end else b"") + b"0\r\n\r\n")

    def reply(self, status, body: bytes, ctype="application/json"):
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server:
    def __init__(self, handler_factory):
        self.port = free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), handler_factory(self))
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *_: None  # clients (Envoy) hanging up on purpose
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Upstream(_Server):
    """Records every request: method, path, headers (lowercased names, all
    values), body, arrival time `t`; answers 200 `{"ok": true, "path": ...}`.
    Subclasses change `METHODS` (the ones served), `record` and `answer`."""

    METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")

    def __init__(self):
        self.requests = []
        self.lock = threading.Lock()
        outer = self

        def factory(_):
            def _any(handler):
                req = outer.record(handler)
                with outer.lock:
                    outer.requests.append(req)
                outer.answer(handler, req)

            return type("H", (Handler,), {f"do_{m}": _any for m in outer.METHODS})

        super().__init__(factory)

    def record(self, handler):
        """What is kept of the request `handler` is serving (its body read)."""
        body = handler.read_body()
        hdrs = {}
        for k, v in handler.headers.items():
            hdrs.setdefault(k.lower(), []).append(v)
        return {"method": handler.command, "path": handler.path, "headers": hdrs, "body": body, "t": time.time()}

    def answer(self, handler, req):
        handler.reply(200, json.dumps({"ok": True, "path": handler.path}).encode())

    @property
    def count(self):
        with self.lock:
            return len(self.requests)

    def last(self):
        with self.lock:
            return self.requests[-1]


class JwksServer(_Server):
    """Discovery at /.well-known/openid-configuration, keys at /jwks.

    Knobs: `keys` (list of Key), `delay` seconds before answering, `status`
    to answer with, `raw` bytes to answer instead of the JWKS. `hits` counts
    JWKS requests, `discovery_hits` discovery requests."""

    def __init__(self, keys=()):
        self.keys = list(keys)
        self.delay = 0.0
        self.status = 200
        self.raw = None
        self.hits = 0
        self.discovery_hits = 0
        self.served_at = []  # time each JWKS answer was sent
        outer = self

        def factory(_):
            class H(Handler):
                def do_GET(self):
                    if self.path == "/.well-known/openid-configuration":
                        outer.discovery_hits += 1
                        body = json.dumps({"issuer": outer.issuer, "jwks_uri": f"{outer.issuer}/jwks"}).encode()
                        status = 200
                    else:
                        outer.hits += 1
                        if outer.delay:
                            time.sleep(outer.delay)
                        status = outer.status
                        body = outer.raw if outer.raw is not None else json.dumps({"keys": [k.jwk for k in outer.keys]}).encode()
                    self.reply(status, body)
                    if self.path != "/.well-known/openid-configuration":
                        outer.served_at.append(time.time())

            return H

        super().__init__(factory)

    @property
    def issuer(self):
        return f"http://127.0.0.1:{self.port}"


class Envoy:
    """A running Envoy with nhi-gate in front of `upstream`.

    `policy` is the plugin configuration (dict, or raw text for invalid-config
    tests); `clusters` maps extra cluster names to loopback ports."""

    def __init__(self, binary, policy, upstream_port, clusters=None, concurrency=2, wait=True, grpc_clusters=(), **render):
        self.binary = binary
        self.port = free_port()
        self.admin = free_port()
        self.dir = scratch_dir("envoy-")
        text = policy if isinstance(policy, str) else json.dumps(policy)
        cl = [("upstream", upstream_port)] + list((clusters or {}).items())
        self.audit_path = os.path.join(self.dir, "audit.log")
        cfg = envoy_config.render(text, str(WASM), self.port, self.admin, cl, [("/", "upstream")], audit_path=self.audit_path,
                                  grpc_clusters=grpc_clusters, **render)
        self.config_path = os.path.join(self.dir, "envoy.json")
        with open(self.config_path, "w") as f:
            json.dump(cfg, f)
        self.log_path = os.path.join(self.dir, "envoy.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [binary, "-c", self.config_path, "--concurrency", str(concurrency), "--disable-hot-restart",
             "--log-level", "info", "--base-id", str(self.admin), "--file-flush-interval-msec", "200"],
            stdout=self.log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Envoy exited {self.proc.returncode}:\n{self.logs()[-3000:]}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=1)
                c.request("GET", "/ready")
                if c.getresponse().status == 200:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("Envoy not ready:\n" + self.logs()[-3000:])

    def audit_records(self, n=None, timeout=5):
        """Records in the audit access log (one JSON per line); with `n`,
        waits until at least n are there (Envoy flushes the file periodically,
        possibly in the middle of a record: a last line without its line end
        is still being written and is read on a later call)."""
        deadline = time.time() + timeout
        while True:
            recs = []
            if os.path.exists(self.audit_path):
                with open(self.audit_path) as f:
                    recs = [json.loads(l) for l in f if l.endswith("\n") and l.strip() and l.strip() != "-"]
            if n is None or len(recs) >= n or time.time() > deadline:
                return recs
            time.sleep(0.1)

    def stats(self, prefix="wasmcustom.nhi_gate"):
        """Envoy counters whose name starts with `prefix`."""
        c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=5)
        c.request("GET", "/stats?format=json&filter=" + prefix)
        out = json.loads(c.getresponse().read())
        return {s["name"]: s.get("value", 0) for s in out.get("stats", []) if "name" in s}

    def logs(self):
        with open(self.log_path) as f:
            return f.read()

    def request(self, method="GET", path="/", headers=(), body=None, timeout=15):
        """Sends one request; `headers` is a list of (name, value) pairs so
        names may repeat. Returns (status, headers dict lowercased, body bytes)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        c.putrequest(method, path, skip_accept_encoding=True)
        for k, v in headers:
            c.putheader(k, v)
        if body is not None:
            c.putheader("content-length", str(len(body)))
        c.endheaders(body)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    def stop(self):
        stop_process(self.proc)
        self.log.close()


class FakeApprovals(_Server):
    """A scriptable approval service speaking docs/approval-protocol.md, for
    fault injection (the real one is `nhi-gate approvals serve`).

    `decide(call) -> (status, body_bytes)` answers each check callout; it may
    block (long poll) — e.g. on `gate`, a threading.Event the test sets.
    `calls` records every check (parsed JSON, headers, arrival time);
    `abandons` the hold ids of abandon notices."""

    def __init__(self, decide=None):
        self.calls = []
        self.abandons = []
        self.answered_at = []
        self.lock = threading.Lock()
        self.decide = decide or (lambda call: (200, json.dumps({"approval_id": "apr_1", "status": "approved"}).encode()))
        outer = self

        def factory(_):
            class H(Handler):
                def do_POST(self):
                    n = int(self.headers.get("content-length") or 0)
                    raw = self.rfile.read(n) if n else b""
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = {"_raw": raw}
                    if self.path.endswith("/abandon"):
                        with outer.lock:
                            outer.abandons.append(body.get("hold_id"))
                        self.reply(200, b"{}")
                        return
                    call = {"path": self.path, "json": body, "headers": {k.lower(): v for k, v in self.headers.items()}, "t": time.time()}
                    with outer.lock:
                        outer.calls.append(call)
                    status, out = outer.decide(call)
                    try:
                        self.reply(status, out)
                        outer.answered_at.append(time.time())
                    except OSError:
                        pass

            return H

        super().__init__(factory)

    @staticmethod
    def answer(status, **fields):
        """A 200 answer body with the given `status` and fields."""
        return 200, json.dumps({"status": status, **fields}).encode()


CLI = ROOT / "target" / "release" / "nhi-gate"


def wait_port(port, what, timeout=10):
    """Waits until something listens on 127.0.0.1:port."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start on port {port}")


class ApprovalService:
    """The real reference service, `nhi-gate approvals serve`, on loopback with
    its SQLite file in a temp folder; approvers alice and bob. `restart()`
    keeps the database. `cli(...)` runs `nhi-gate approvals ...` as an approver."""

    TOKENS = {"alice": "tok-alice-0123456789", "bob": "tok-bob-0123456789"}

    def __init__(self, *extra):
        self.port = free_port()
        self.dir = scratch_dir("approvals-")
        self.db = os.path.join(self.dir, "approvals.db")
        self.extra = list(extra)
        self.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        args = [str(CLI), "approvals", "serve", "--listen", f"127.0.0.1:{self.port}", "--db", self.db]
        for name, tok in self.TOKENS.items():
            args += ["--approver", f"{name}={tok}"]
        self.log = open(os.path.join(self.dir, "service.log"), "a")
        self.proc = subprocess.Popen(args + self.extra, stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port, "approval service")

    def stop(self):
        stop_process(self.proc, kill=False)
        self.log.close()

    def restart(self):
        self.stop()
        self.start()

    def cli(self, *args, approver="alice", check=True):
        env = dict(os.environ, NHI_GATE_APPROVALS_URL=self.url, NHI_GATE_APPROVER_TOKEN=self.TOKENS[approver])
        try:
            r = subprocess.run([str(CLI), "approvals", *args], env=env, capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired as e:
            self.log.flush()
            with open(os.path.join(self.dir, "service.log")) as f:
                raise AssertionError(f"nhi-gate approvals {args}: no answer in 30 s; the service's threads wait in "
                                     f"{self.thread_waits()}; its log:\n{f.read()[-3000:]}") from e
        if check and r.returncode != 0:
            raise AssertionError(f"nhi-gate approvals {args} failed: {r.stderr}")
        return r

    def thread_waits(self):
        """Where the service's threads sleep in the kernel (/proc/PID/task/*/wchan,
        e.g. a futex for a lock, a journal wait for fsync): counts by place."""
        waits = {}
        for t in Path(f"/proc/{self.proc.pid}/task").glob("*"):
            try:
                w = (t / "wchan").read_text().strip() or "running"
            except OSError:
                continue
            waits[w] = waits.get(w, 0) + 1
        return waits

    def pending(self):
        return json.loads(self.cli("list", "--json").stdout)["approvals"]

    def wait_pending(self, n=1, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            p = self.pending()
            if len(p) >= n:
                return p
            time.sleep(0.1)
        raise AssertionError(f"fewer than {n} pending approvals")

    def show(self, approval_id):
        return json.loads(self.cli("show", approval_id).stdout)


class FakeCollector(_Server):
    """Records audit batches POSTed by the filter (docs/audit-record.md);
    `status` is what it answers. (The real one is `nhi-gate audit serve`.)"""

    def __init__(self):
        self.records = []
        self.received_at = []
        self.batches = 0
        self.status = 200
        self.lock = threading.Lock()
        outer = self

        def factory(_):
            class H(Handler):
                def do_POST(self):
                    body = json.loads(self.read_body() or b"{}")
                    if outer.status == 200:
                        with outer.lock:
                            for r in body.get("records", []):
                                outer.records.append(r)
                                outer.received_at.append(time.time())
                            outer.batches += 1
                    self.reply(outer.status, json.dumps({"accepted": len(body.get("records", []))}).encode())

            return H

        super().__init__(factory)


class AuditCollector:
    """The real reference collector, `nhi-gate audit serve`, on loopback with
    its SQLite file in a temp folder. `audit(...)` runs `nhi-gate audit ...`
    against that database."""

    def __init__(self):
        self.port = free_port()
        self.dir = scratch_dir("audit-")
        self.db = os.path.join(self.dir, "audit.db")
        self.log = open(os.path.join(self.dir, "collector.log"), "a")
        self.proc = subprocess.Popen([str(CLI), "audit", "serve", "--listen", f"127.0.0.1:{self.port}", "--db", self.db],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port, "audit collector")

    def audit(self, *args, check=True):
        r = subprocess.run([str(CLI), "audit", *args, "--db", self.db], capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise AssertionError(f"nhi-gate audit {args} failed: {r.stdout}{r.stderr}")
        return r

    def count(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        c.request("GET", "/healthz")
        return json.loads(c.getresponse().read())["records"]

    def close(self):
        stop_process(self.proc, kill=False)
        self.log.close()
