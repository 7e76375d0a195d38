"""Approval service and audit collector instances with raw-request helpers,
for tests/test_leaks_services.py (files under the test run folder)."""
import json, os, subprocess, time, http.client

from harness import CLI, ApprovalService, free_port, scratch_dir, stop_process, wait_port

CLI = str(CLI)
TOKENS = ApprovalService.TOKENS
SECRET = "callout-secret-xyz"


class Proc:
    def stop(self):
        stop_process(self.proc)
        self.log.close()

    def rss_kb(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    def threads(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))

    def req(self, method, path, body=None, headers=None, timeout=10):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = dict(headers or {})
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            h.setdefault("content-type", "application/json")
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        try:
            return r.status, json.loads(data)
        except Exception:
            return r.status, data


class Approvals(Proc):
    def __init__(self, *extra, secret=SECRET, approvers=TOKENS):
        self.port = free_port()
        self.dir = scratch_dir("apr-")
        self.db = os.path.join(self.dir, "a.db")
        args = [CLI, "approvals", "serve", "--listen", f"127.0.0.1:{self.port}", "--db", self.db]
        for n, t in approvers.items():
            args += ["--approver", f"{n}={t}"]
        if secret:
            args += ["--secret", secret]
        self.secret = secret
        self.log = open(os.path.join(self.dir, "log"), "a")
        self.proc = subprocess.Popen(args + list(extra), stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port, "approval service")

    def callout(self, c, timeout=30, path="/v1/check"):
        h = {"authorization": f"Bearer {self.secret}"} if self.secret else {}
        return self.req("POST", path, c, h, timeout=timeout)

    def api(self, method, path, body=None, who="alice"):
        return self.req(method, path, body, {"authorization": f"Bearer {TOKENS[who]}"})


def callout(hold="h" * 32, subject="ci-ingest", approval_id=None, wait_ms=0, body_sha="a" * 64, path="/collections/docs/points",
            preview="{}", uses=1, window=900, issuer="http://idp"):
    return {"version": 1, "hold_id": hold, "request_id": "r", "approval_id": approval_id, "wait_ms": wait_ms,
            "time_ms": int(time.time() * 1000),
            "identity": {"provider": "p", "issuer": issuer, "subject": subject, "groups": ["g"], "jti": ""},
            "resource": "vector-store", "operation": "write", "method": "PUT", "authority": "127.0.0.1:10000",
            "path": path, "path_sha256": "b" * 64, "body": {"sha256": body_sha, "size": 2, "preview": preview, "truncated": False},
            "source": "127.0.0.1:1", "grant": {"uses": uses, "window_seconds": window}}


class Collector(Proc):
    def __init__(self, token=None):
        self.port = free_port()
        self.dir = scratch_dir("aud-")
        self.db = os.path.join(self.dir, "audit.db")
        args = [CLI, "audit", "serve", "--listen", f"127.0.0.1:{self.port}", "--db", self.db]
        if token:
            args += ["--token", token]
        self.token = token
        self.log = open(os.path.join(self.dir, "log"), "a")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port, "audit collector")

    def post(self, records, token=None):
        h = {"authorization": f"Bearer {token or self.token}"} if (token or self.token) else {}
        return self.req("POST", "/v1/records", {"records": records}, h)

    def audit(self, *args):
        return subprocess.run([CLI, "audit", *args, "--db", self.db], capture_output=True, timeout=30)


def record(i=1, **kw):
    r = {"version": 1, "time_ms": 1764430000000 + i, "request_id": f"r{i}", "node": "n",
         "identity": {"subject": "ci"}, "session": "s1", "source": "x", "resource": "llm", "operation": "write",
         "method": "POST", "authority": "a", "path": "/v1/chat/completions", "decision": "allow", "reason": None,
         "status": 200, "approval": None, "request_body": None, "response_body": None, "masking": {}, "usage": None,
         "timings_ms": {}, "aborted": False}
    r.update(kw)
    return r
