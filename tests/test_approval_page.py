"""The approver web page in headless Chromium (Debian's chromium and
chromium-driver, installed by scripts/setup.sh, driven by Selenium): a held
request appears on the page, clicking Approve releases it, and the held curl
completes with the upstream's answer. A second request is denied from the
page with a reason typed into its row."""
import json
import os
import shutil
import subprocess
import time

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from harness import ApprovalService, Envoy, Upstream, claims, scratch_dir

ISS = "https://ci.test"
CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver")


@pytest.fixture()
def browser():
    profile = scratch_dir("chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(20)
    yield drv
    drv.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_approve_and_deny_from_the_page(envoy_bin, keys, browser):
    svc = ApprovalService()
    up = Upstream()
    pol = {
        "providers": [{"name": "ci", "issuer": ISS, "audiences": ["nhi-gate"], "jwks": {"keys": [keys["es"].jwk]}}],
        "resources": [{"name": "vectors", "path_prefix": "/collections", "write": {"any_of": ["ingest"]},
                       "approval": {"cluster": "approvals", "hold_seconds": 30}}],
    }
    env = Envoy(envoy_bin, pol, up.port, clusters={"approvals": svc.port})
    tok = keys["es"].sign(claims(ISS, sub="ci-ingest", groups=("ingest",)))

    def curl(body):
        # the job's ordinary client: curl, waiting while the request is held
        return subprocess.Popen(["curl", "-s", "-w", "\n%{http_code}", "-X", "PUT", f"http://127.0.0.1:{env.port}/collections/docs/points",
                                 "-H", f"authorization: Bearer {tok}", "-H", "content-type: application/json", "-d", body],
                                stdout=subprocess.PIPE, text=True)

    try:
        held = curl('{"points":[{"id":1,"payload":{"text":"<img src=x onerror=alert(1)>"}}]}')
        [p] = svc.wait_pending()
        wait = WebDriverWait(browser, 15)
        browser.get(svc.url + "/")
        browser.find_element(By.ID, "token").send_keys(ApprovalService.TOKENS["alice"])
        browser.find_element(By.ID, "save-token").click()
        row = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, f'tr.approval[data-id="{p["approval_id"]}"]')))
        text = row.text
        assert "ci-ingest" in text and "/collections/docs/points" in text and "PUT" in text
        assert "<img src=x onerror=alert(1)>" in text, "the body preview is shown as text"
        assert up.count == 0
        row.find_element(By.CSS_SELECTOR, "button.approve").click()
        out, _ = held.communicate(timeout=20)
        body, _, code = out.rpartition("\n")
        assert code == "200" and json.loads(body)["ok"] is True
        assert up.count == 1 and b"onerror" in up.last()["body"]
        assert svc.show(p["approval_id"])["votes"][0]["approver"] == "alice"

        # deny with a reason typed into the row
        held = curl('{"points":[{"id":2}]}')
        [p] = svc.wait_pending()
        row = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, f'tr.approval[data-id="{p["approval_id"]}"]')))
        row.find_element(By.CSS_SELECTOR, "input.reason").send_keys("wrong collection")
        row.find_element(By.CSS_SELECTOR, "button.deny").click()
        out, _ = held.communicate(timeout=20)
        body, _, code = out.rpartition("\n")
        assert code == "403" and json.loads(body)["reason"] == "approval_denied" and "wrong collection" in json.loads(body)["detail"]
        assert up.count == 1
        wait.until(EC.invisibility_of_element_located((By.CSS_SELECTOR, f'tr.approval[data-id="{p["approval_id"]}"]')))
    finally:
        env.stop()
        up.close()
        svc.stop()
