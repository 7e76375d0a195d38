"""scripts/run.sh as a newcomer uses it: start, paste the printed curl lines,
Ctrl-C. Also checks the demo backends (dev IdP, dev upstream) behind Envoy."""
import json
import hashlib
import os
import re
import shlex
import signal
import subprocess
import threading
import time

import pytest

from harness import ROOT, free_port


@pytest.fixture(scope="module")
def demo(envoy_bin, tmp_path_factory):
    port, admin = free_port(), free_port()
    env = dict(os.environ, ENVOY_BIN=envoy_bin, NHI_GATE_PORT=str(port), NHI_GATE_ADMIN_PORT=str(admin),
               NHI_GATE_RUN_DIR=str(tmp_path_factory.mktemp("run")))
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "run.sh")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = []
    deadline = time.time() + 300
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        out.append(line)
        if "Press Ctrl-C" in line:
            break
    text = "".join(out)
    assert "Press Ctrl-C" in text, text[-3000:]
    yield {"proc": proc, "text": text, "port": port}
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)


def curl_lines(text):
    env = {}
    for line in text.splitlines():
        if line.strip().startswith("export "):
            env.update(re.findall(r"(\w+)='([^']*)'", line))
    lines = [l.strip() for l in text.splitlines()]
    return env, [l for l in lines if l.startswith("curl ") and ("$READER" in l or "$WRITER" in l)]


def run_curl(line, env, timeout=30):
    r = subprocess.run(["bash", "-c", line + " -w '\\n%{http_code}'"], env=dict(os.environ, **env),
                       capture_output=True, text=True, timeout=timeout)
    body, _, code = r.stdout.rpartition("\n")
    return int(code), body


def test_printed_curl_lines_work(demo):
    env, lines = curl_lines(demo["text"])
    assert set(env) == {"READER", "WRITER", "NHI_GATE_APPROVALS_URL", "NHI_GATE_APPROVER_TOKEN"}
    cli = [l.strip() for l in demo["text"].splitlines() if l.strip().startswith("dist/nhi-gate approvals")]
    assert [c.split()[2] for c in cli] == ["list", "approve"], cli
    results = [run_curl(l, env) for l in lines[:2]]
    # the writer's upsert waits for an approver: approve it with the printed CLI lines
    box = {}
    writer = threading.Thread(target=lambda: box.setdefault("r", run_curl(lines[2], env, timeout=90)))
    writer.start()
    approval_id = None
    deadline = time.time() + 20
    while approval_id is None and time.time() < deadline:
        r = subprocess.run(["bash", "-c", cli[0] + " --json"], cwd=ROOT, env=dict(os.environ, **env), capture_output=True, text=True)
        pending = json.loads(r.stdout)["approvals"] if r.returncode == 0 else []
        approval_id = pending[0]["approval_id"] if pending else None
        time.sleep(0.2)
    assert approval_id, "the writer's upsert never showed up as pending"
    r = subprocess.run(["bash", "-c", cli[1].replace("<approval_id>", approval_id)], cwd=ROOT, env=dict(os.environ, **env),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    writer.join(60)
    results.append(box["r"])
    results += [run_curl(l, env) for l in lines[3:]]
    codes = [c for c, _ in results]
    # search 200, reader upsert 403, writer upsert 200 once approved, streamed chat 200
    assert codes == [200, 403, 200, 200], list(zip(codes, lines))
    search = json.loads(results[0][1])
    assert search["status"] == "ok" and search["result"], search
    # the demo documents carry fake PII; the gateway masks it
    assert "jane.doe@example.com" not in results[0][1] and "[EMAIL]" in results[0][1]
    assert "jane.doe@example.com" not in results[3][1] and "123-45-6789" not in results[3][1]
    assert json.loads(results[1][1])["reason"] == "group_not_allowed"
    assert "data: [DONE]" in results[3][1] and "chat.completion.chunk" in results[3][1]


def test_backend_credential_is_injected_and_callers_token_not_forwarded(demo):
    env, lines = curl_lines(demo["text"])
    r = subprocess.run(["bash", "-c", lines[0] + " -D -"], env=dict(os.environ, **env), capture_output=True, text=True)
    # the demo backend answers with a fingerprint of the credential it got
    # (a response header holding the credential itself would be dropped)
    fp = hashlib.sha256(b"demo-vector-store-key").hexdigest()[:12]
    assert f"x-demo-upstream-auth: api-key sha256:{fp}" in r.stdout
    assert "demo-vector-store-key" not in r.stdout
    assert env["READER"] not in r.stdout


def test_no_token_is_401(demo):
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                        f"http://127.0.0.1:{demo['port']}/collections/docs/points/search", "-d", "{}"],
                       capture_output=True, text=True)
    assert r.stdout == "401"


def test_ctrl_c_stops_everything(demo):
    proc = demo["proc"]
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(30)
    time.sleep(0.5)
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{demo['port']}/"],
                       capture_output=True, text=True)
    assert r.stdout == "000", "Envoy still answers after Ctrl-C"
    for port in (9400, 9401, 9402):
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/healthz"],
                           capture_output=True, text=True)
        assert r.stdout == "000", f"demo process on {port} still running"
