"""Shipped configuration stays valid: example policies, the Envoy example,
the Istio manifest, and the CLI validator agrees with the filter's own."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import ROOT, WASM

sys.path.insert(0, str(ROOT / "scripts"))
import envoy_config  # noqa: E402

CLI = os.environ.get("NHI_GATE_CLI", str(ROOT / "target" / "release" / "nhi-gate"))
POLICIES = sorted(p for p in (ROOT / "policies").iterdir() if p.suffix in (".json", ".yaml", ".yml"))


def load(p: Path):
    text = p.read_text()
    return yaml.safe_load(text) if p.suffix in (".yaml", ".yml") else json.loads(text)


def envoy_validate(envoy_bin, policy_text, tmp_path):
    cfg = envoy_config.render(policy_text, str(WASM), 10000, 9901,
                              [("idp", 9400), ("upstream", 9401), ("jwks", 1), ("github_oidc", 2), ("keycloak", 3)],
                              [("/", "upstream")])
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(cfg))
    return subprocess.run([envoy_bin, "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
                          capture_output=True, text=True, timeout=120)


def test_policies_exist():
    assert len(POLICIES) >= 3


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
def test_example_policy_passes_cli_check(policy):
    r = subprocess.run([CLI, "policy", "check", str(policy)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
def test_example_policy_loads_in_envoy(envoy_bin, policy, tmp_path):
    r = envoy_validate(envoy_bin, json.dumps(load(policy)), tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "configured" in r.stdout + r.stderr


BAD = [
    ({"providers": [{"name": "a", "issuer": "i", "audiences": []}], "resources": []}, "providers[0].audiences"),
    ({"providers": [{"name": "a", "issuer": "i", "audiences": ["x"], "jwks_uri": "ftp://x", "cluster": "c"}],
      "resources": [{"name": "r", "read": {"any_of": ["g"]}}]}, "providers[0].jwks_uri"),
    ({"providers": [{"name": "a", "issuer": "i", "audiences": ["x"], "jwks": {"keys": []}}],
      "resources": [{"name": "r", "read": {"any_of": ["g"]}}]}, "providers[0].jwks"),
    ({"providers": [], "resources": [], "typo_field": 1}, "typo_field"),
    # a stricter sub-path after the broad path never matches: readers would get it
    ({"providers": [{"name": "a", "issuer": "i", "audiences": ["x"], "jwks_uri": "https://idp/jwks", "cluster": "idp"}],
      "resources": [{"name": "data", "path_prefix": "/data/", "read": {"any_of": ["readers"]}},
                    {"name": "secret", "path_prefix": "/data/secret/", "read": {"any_of": ["admins"]}}]}, "resources[1]"),
]


@pytest.mark.parametrize("doc,field", BAD, ids=[f for _, f in BAD])
def test_cli_and_envoy_reject_invalid_policy_with_the_same_message(envoy_bin, doc, field, tmp_path):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(doc))
    r = subprocess.run([CLI, "policy", "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 1
    cli_lines = [l.split(": ", 1)[1] for l in r.stderr.splitlines() if "invalid configuration" in l]
    assert cli_lines and any(field in l for l in cli_lines), r.stderr
    e = envoy_validate(envoy_bin, json.dumps(doc), tmp_path)
    assert e.returncode != 0
    out = e.stdout + e.stderr
    for line in cli_lines:
        assert line in out, (line, out[-2000:])


def test_yaml_policy_errors_name_the_field(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("providers:\n  - name: a\n    issuer: i\n    audiences: [x]\n    max_lifetime_seconds: 99999\n"
                 "    jwks_uri: https://idp/keys\n    cluster: idp\nresources:\n  - name: r\n    read: {any_of: [g]}\n")
    r = subprocess.run([CLI, "policy", "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "providers[0].max_lifetime_seconds" in r.stderr


def test_committed_envoy_example_is_the_rendered_demo(envoy_bin, tmp_path):
    text = json.dumps(json.load(open(ROOT / "policies" / "rag-demo.json")), indent=2)
    want = envoy_config.render(text, "dist/nhi_gate.wasm", 10000, 9901, [("idp", 9400), ("upstream", 9401), ("approvals", 9402)],
                               [("/collections", "upstream"), ("/v1/", "upstream")], audit_path="/dev/stdout")
    have = json.load(open(ROOT / "envoy" / "envoy.yaml"))
    assert have == want, "envoy/envoy.yaml is stale: regenerate it with scripts/envoy_config.py (see README)"
    wasm = have["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
    assert wasm["typed_config"]["config"]["failure_policy"] == "FAIL_CLOSED"
    assert wasm["typed_config"]["config"]["allow_on_headers_stop_iteration"] is True
    path = tmp_path / "envoy.json"
    have_abs = json.loads(json.dumps(have).replace('"dist/nhi_gate.wasm"', json.dumps(str(WASM))))
    path.write_text(json.dumps(have_abs))
    r = subprocess.run([envoy_bin, "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:]


def test_istio_wasmplugin_carries_the_demo_policy():
    doc = yaml.safe_load(open(ROOT / "envoy" / "istio" / "wasmplugin.yaml"))
    assert doc["kind"] == "WasmPlugin"
    assert doc["spec"]["failStrategy"] == "FAIL_CLOSE"
    assert doc["spec"]["pluginConfig"] == json.load(open(ROOT / "policies" / "rag-demo.json"))
    r = subprocess.run([CLI, "policy", "check", str(ROOT / "envoy" / "istio" / "wasmplugin.yaml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_istio_envoyfilter_is_the_rendered_filter_and_loads_in_envoy(envoy_bin, tmp_path):
    """The EnvoyFilter form exists because WasmPlugin cannot set
    allow_on_headers_stop_iteration: its patch is exactly the filter entry
    scripts/envoy_config.py renders (flag and FAIL_CLOSED included), with the
    demo policy, and Envoy accepts it in place of the demo's entry."""
    doc = yaml.safe_load(open(ROOT / "envoy" / "istio" / "envoyfilter.yaml"))
    assert doc["kind"] == "EnvoyFilter"
    patch = doc["spec"]["configPatches"][0]
    assert patch["applyTo"] == "HTTP_FILTER" and patch["patch"]["operation"] == "INSERT_BEFORE"
    assert patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == "envoy.filters.http.router"
    flt = patch["patch"]["value"]
    config = flt["typed_config"]["config"]
    path = config["vm_config"]["code"]["local"]["filename"]
    policy = json.load(open(ROOT / "policies" / "rag-demo.json"))
    assert json.loads(config["configuration"]["value"]) == policy
    assert flt == envoy_config.wasm_filter(config["configuration"]["value"], path)
    assert config["allow_on_headers_stop_iteration"] is True and config["failure_policy"] == "FAIL_CLOSED"
    cfg = envoy_config.render("{}", str(WASM), 10000, 9901, [("idp", 9400), ("upstream", 9401), ("approvals", 9402)], [("/", "upstream")])
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    local = json.loads(json.dumps(flt).replace(json.dumps(path), json.dumps(str(WASM))))
    hcm["http_filters"] = [local] + [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.router"]
    f = tmp_path / "envoy.json"
    f.write_text(json.dumps(cfg))
    r = subprocess.run([envoy_bin, "--mode", "validate", "-c", str(f), "--disable-hot-restart"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:]
    r = subprocess.run([CLI, "policy", "check", str(ROOT / "envoy" / "istio" / "envoyfilter.yaml")], capture_output=True, text=True)
    assert r.returncode == 0 and "ok (1 provider, 2 resources)" in r.stdout, r.stdout + r.stderr
    bad = tmp_path / "bad-envoyfilter.yaml"
    bad.write_text(open(ROOT / "envoy" / "istio" / "envoyfilter.yaml").read().replace('"max_lifetime_seconds": 3600', '"max_lifetime_seconds": 0'))
    r = subprocess.run([CLI, "policy", "check", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and "providers[0].max_lifetime_seconds" in r.stderr, r.stderr


@pytest.mark.parametrize("name,text", [
    ("dup.json", '{"providers":[{"name":"a","issuer":"i","audiences":["x"],"jwks_uri":"https://i/k","cluster":"c"}],'
                 '"resources":[{"name":"r","write":{"any_of":["w"]},"write":{"any_of":["w","readers"]}}]}'),
    ("dup.yaml", "providers: []\nresources: []\nresources: []\n"),
])
def test_duplicate_keys_in_a_policy_are_errors(tmp_path, name, text):
    f = tmp_path / name
    f.write_text(text)
    r = subprocess.run([CLI, "policy", "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "duplicate" in r.stderr


def test_cli_checks_the_policy_inside_an_envoy_bootstrap():
    r = subprocess.run([CLI, "policy", "check", str(ROOT / "envoy" / "envoy.yaml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "configuration.value): ok (1 provider, 2 resources)" in r.stdout


def test_policy_check_reads_every_document_of_a_manifest(tmp_path):
    """Istio manifests bundle documents with `---`: each WasmPlugin or
    EnvoyFilter among them is checked, other kinds are skipped."""
    plugin = (ROOT / "envoy" / "istio" / "wasmplugin.yaml").read_text()
    flt = (ROOT / "envoy" / "istio" / "envoyfilter.yaml").read_text()
    deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: rag-gateway}\n"
    f = tmp_path / "bundle.yaml"
    f.write_text(deployment + "---\n" + plugin + "---\n" + flt.replace('"max_lifetime_seconds": 3600', '"max_lifetime_seconds": 0'))
    r = subprocess.run([CLI, "policy", "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "(document 2: spec.pluginConfig): ok (1 provider, 2 resources)" in r.stdout, r.stdout
    assert "document 3: " in r.stderr and "providers[0].max_lifetime_seconds" in r.stderr, r.stderr
    f.write_text(deployment)
    r = subprocess.run([CLI, "policy", "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 1 and "kind" not in r.stdout


def test_policy_check_finds_clusters_missing_from_an_envoy_config(tmp_path):
    """Envoy accepts a bootstrap whose policy names a cluster it lacks, and
    then every callout fails at run time; the check names the field."""
    have = json.load(open(ROOT / "envoy" / "envoy.yaml"))
    f = tmp_path / "envoy.json"
    f.write_text(json.dumps(have))
    r = subprocess.run([CLI, "policy", "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    f.write_text(json.dumps(have).replace('\\"cluster\\": \\"idp\\"', '\\"cluster\\": \\"idp-typo\\"')
                 .replace('\\"cluster\\": \\"approvals\\"', '\\"cluster\\": \\"approval\\"'))
    r = subprocess.run([CLI, "policy", "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 1
    assert 'providers[0].cluster: no cluster "idp-typo"' in r.stderr, r.stderr
    assert 'resources[0].approval.cluster: no cluster "approval"' in r.stderr, r.stderr


def test_policy_check_holds_masking_limits_to_the_listeners_buffer_limit(tmp_path):
    """A body is masked in Envoy's buffer; past the listener's
    per_connection_buffer_limit_bytes Envoy answers 500 from inside the
    filter's call. The demo masks with the default 1 MiB limit."""
    have = json.load(open(ROOT / "envoy" / "envoy.yaml"))
    have["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] = 16384
    f = tmp_path / "envoy.json"
    f.write_text(json.dumps(have))
    r = subprocess.run([CLI, "policy", "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 1
    for i in (0, 1):  # both demo resources mask
        assert f"resources[{i}].mask.max_buffer_bytes: 1048576 is over the listener's per_connection_buffer_limit_bytes 16384" in r.stderr, r.stderr
    # and the vector store holds writes for approval: their bodies wait in the same buffer
    assert "resources[0].approval.max_body_bytes: 1048576 is over the listener's per_connection_buffer_limit_bytes 16384" in r.stderr, r.stderr
    have["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] = 2 << 20
    f.write_text(json.dumps(have))
    assert subprocess.run([CLI, "policy", "check", str(f)], capture_output=True, text=True).returncode == 0


def test_policy_check_needs_allow_on_headers_stop_iteration_for_bodies(tmp_path, envoy_bin):
    """Without the PluginConfig's allow_on_headers_stop_iteration, Envoy turns
    nhi-gate's pause at the headers into StopAllIteration and a masked
    response never reaches the filter's body callback: the request hangs.
    The check refuses such a bootstrap (naming each resource that reads a
    body), and warns for an Istio WasmPlugin, which cannot set the field."""
    have = json.load(open(ROOT / "envoy" / "envoy.yaml"))
    cfg = have["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]["config"]
    assert cfg.pop("allow_on_headers_stop_iteration") is True
    f = tmp_path / "envoy.json"
    f.write_text(json.dumps(have))
    r = subprocess.run([CLI, "policy", "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 1
    for field in ("resources[0].mask", "resources[0].approval", "resources[1].mask"):
        assert f"{field}: the Wasm filter's config lacks allow_on_headers_stop_iteration: true" in r.stderr, r.stderr
    # protobuf's lowerCamel JSON name, and YAML 1.1's yes as Kubernetes reads it
    for key, value in (("allowOnHeadersStopIteration", True), ("allow_on_headers_stop_iteration", "yes")):
        cfg[key] = value
        f.write_text(json.dumps(have))
        r = subprocess.run([CLI, "policy", "check", str(f)], capture_output=True, text=True)
        assert r.returncode == 0, (key, r.stderr)
        del cfg[key]
    # a policy that reads no body passes without it
    pol = json.loads(cfg["configuration"]["value"])
    for res in pol["resources"]:
        res.pop("mask", None), res.pop("approval", None)
    cfg["configuration"]["value"] = json.dumps(pol)
    f.write_text(json.dumps(have))
    r = subprocess.run([CLI, "policy", "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([CLI, "policy", "check", str(ROOT / "envoy" / "istio" / "wasmplugin.yaml")], capture_output=True, text=True)
    assert r.returncode == 0 and "warning: resources[0].mask: Istio's WasmPlugin cannot set allow_on_headers_stop_iteration" in r.stderr, r.stderr


def test_policy_check_reads_standard_input_and_hints_at_yaml(tmp_path):
    """`-` reads the policy from standard input (kubectl get … -o yaml | …):
    JSON when it opens like JSON, else YAML; YAML in a .json file gets a hint."""
    yaml_text = (ROOT / "policies" / "ingestion-writers.yaml").read_text()
    for text in (yaml_text, (ROOT / "policies" / "rag-demo.json").read_text(), (ROOT / "envoy" / "istio" / "envoyfilter.yaml").read_text()):
        r = subprocess.run([CLI, "policy", "check", "-"], input=text, capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.startswith("-"), r.stdout + r.stderr
    r = subprocess.run([CLI, "policy", "check", "-"], input="providers: []\nresources: []\n", capture_output=True, text=True)
    assert r.returncode == 1 and "-: invalid configuration: providers: at least one provider is required" in r.stderr, r.stderr
    f = tmp_path / "policy.json"
    f.write_text(yaml_text)
    r = subprocess.run([CLI, "policy", "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 1 and "not JSON" in r.stderr and "name the file .yaml or .yml" in r.stderr, r.stderr


def test_policy_check_reads_a_typedstruct_envoyfilter(tmp_path):
    """The TypedStruct form of an Istio EnvoyFilter (type_url names the Wasm filter)."""
    doc = yaml.safe_load(open(ROOT / "envoy" / "istio" / "envoyfilter.yaml"))
    tc = doc["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]
    wasm_type = tc.pop("@type")
    doc["spec"]["configPatches"][0]["patch"]["value"]["typed_config"] = {
        "@type": "type.googleapis.com/udpa.type.v1.TypedStruct", "type_url": wasm_type, "value": tc}
    tc["config"]["configuration"]["value"] = tc["config"]["configuration"]["value"].replace('"max_lifetime_seconds": 3600', '"max_lifetime_seconds": 0')
    f = tmp_path / "typed.yaml"
    f.write_text(yaml.safe_dump(doc))
    r = subprocess.run([CLI, "policy", "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 1 and ".value.config.configuration.value" in r.stderr and "providers[0].max_lifetime_seconds" in r.stderr, r.stderr


def test_policy_check_skips_other_envoyfilters_and_reads_merge_keys(tmp_path):
    limit = ("apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: buffer-limit}\n"
             "spec:\n  configPatches:\n  - applyTo: LISTENER\n    patch:\n      operation: MERGE\n"
             "      value: {per_connection_buffer_limit_bytes: 2097152}\n")
    f = tmp_path / "bundle.yaml"
    f.write_text(limit + "---\n" + (ROOT / "envoy" / "istio" / "envoyfilter.yaml").read_text())
    r = subprocess.run([CLI, "policy", "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 0 and "document 2: " in r.stdout, r.stdout + r.stderr
    # `read` merges the group rule written once for `write` (kubectl reads `<<` the same way)
    f.write_text("providers: [{name: ci, issuer: 'https://ci', audiences: [a], jwks_uri: 'https://ci/k', cluster: idp}]\n"
                 "resources:\n- name: r\n  write: &rule {any_of: [writers]}\n  read:\n    <<: *rule\n")
    r = subprocess.run([CLI, "policy", "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
