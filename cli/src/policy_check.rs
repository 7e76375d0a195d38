//! `nhi-gate policy check`: the filter's own validator, run offline.

use nhi_gate::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

const WASM_FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// One nhi-gate configuration found in a file.
pub struct Found {
    /// Where in the file (empty for a whole policy document).
    pub label: String,
    /// The configuration, JSON text.
    pub text: String,
    /// The clusters of the Envoy bootstrap it came from ([`static_clusters`]).
    pub clusters: Option<Vec<String>>,
    /// The smallest `per_connection_buffer_limit_bytes` of that bootstrap's
    /// listeners (Envoy's default 1048576 where unset).
    pub buffer_limit: Option<u64>,
    /// Whether the Wasm filter's config sets `allow_on_headers_stop_iteration:
    /// true` (`None`: not known, a policy document; `Some(false)` for an
    /// Istio `WasmPlugin`, which cannot set it).
    pub stop_iteration: Option<bool>,
}

/// The nhi-gate configurations found in a file (`-`: standard input, read
/// as JSON when it starts with `{` or `[`, else as YAML):
/// - a policy document (JSON, or YAML by `.yaml`/`.yml` extension);
/// - an Istio `WasmPlugin` manifest: its `spec.pluginConfig`;
/// - an Envoy bootstrap (`static_resources`) or an Istio `EnvoyFilter`
///   manifest: the `configuration` string of every
///   `envoy.extensions.filters.http.wasm.v3.Wasm` filter.
///
/// A YAML file may hold several documents (`---`, as Istio manifests do):
/// each `WasmPlugin`, `EnvoyFilter`, bootstrap or policy among them is
/// checked, other kinds are skipped. A JSON policy is handed to the
/// validator as written, so duplicate members are reported like the filter
/// reports them.
pub fn load(path: &PathBuf) -> Result<Vec<Found>, String> {
    let stdin = path.as_os_str() == "-";
    let text = if stdin {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("cannot read standard input: {e}"))?
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?
    };
    // standard input: JSON when it opens like JSON, else YAML
    let yaml = if stdin {
        !text.trim_start_matches('\u{feff}').trim_start().starts_with(['{', '['])
    } else {
        matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
    };
    if !yaml {
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            let hint = if text.starts_with('\u{feff}') {
                " (the file starts with a byte-order mark, which the filter refuses too: remove it)"
            } else if text.trim_start().starts_with(['{', '[']) {
                ""
            } else {
                " (YAML? name the file .yaml or .yml)"
            };
            format!("(document): not JSON: {e}{hint}")
        })?;
        return from_document(&v, Some(text), "");
    }
    let mut docs = Vec::new();
    for d in serde_yaml::Deserializer::from_str(&text) {
        // Through serde_yaml's own Value, which refuses duplicate keys.
        let y = <serde_yaml::Value as serde::Deserialize>::deserialize(d).map_err(|e| format!("(document): not YAML: {e}"))?;
        if !y.is_null() {
            let mut y = y;
            // `<<: *anchor` merge keys, as kubectl reads them
            y.apply_merge().map_err(|e| format!("(document): {e}"))?;
            docs.push(serde_json::to_value(y).map_err(|e| format!("(document): {e}"))?);
        }
    }
    if let [v] = docs.as_slice() {
        return from_document(v, None, "");
    }
    let mut found = Vec::new();
    for (i, v) in docs.iter().enumerate() {
        let kind = v.get("kind").and_then(|k| k.as_str());
        let mut wasm = Vec::new();
        wasm_configs(v, "", &mut wasm);
        // an EnvoyFilter without the Wasm filter (e.g. one raising a buffer limit) is another kind
        let ours = kind == Some("WasmPlugin")
            || ((kind == Some("EnvoyFilter") || v.get("static_resources").is_some()) && !wasm.is_empty())
            || (kind.is_none() && (v.get("providers").is_some() || v.get("resources").is_some()));
        if ours {
            found.extend(from_document(v, None, &format!("document {}: ", i + 1))?);
        }
    }
    if found.is_empty() {
        return Err("(document): no WasmPlugin, EnvoyFilter, Envoy config or policy among its documents".into());
    }
    Ok(found)
}

/// [`load`] for one document `v` (`written`: its JSON text as written);
/// labels start with `prefix`.
fn from_document(v: &serde_json::Value, written: Option<String>, prefix: &str) -> Result<Vec<Found>, String> {
    if v.get("kind").and_then(|k| k.as_str()) == Some("WasmPlugin") {
        let pc = v.pointer("/spec/pluginConfig").ok_or(format!("{prefix}spec.pluginConfig: missing in WasmPlugin manifest"))?;
        return Ok(vec![Found { label: format!("{prefix}spec.pluginConfig"), text: pc.to_string(), clusters: None, buffer_limit: None, stop_iteration: Some(false) }]);
    }
    if v.get("static_resources").is_some() || v.get("kind").and_then(|k| k.as_str()) == Some("EnvoyFilter") {
        let mut found = Vec::new();
        wasm_configs(v, "", &mut found);
        if found.is_empty() {
            return Err(format!("{prefix}(document): Envoy config without an envoy.filters.http.wasm filter configuration"));
        }
        let clusters = static_clusters(v);
        let buffer_limit = listener_buffer_limit(v);
        return Ok(found
            .into_iter()
            .map(|(label, text, stop)| Found { label: format!("{prefix}{label}"), text, clusters: clusters.clone(), buffer_limit, stop_iteration: Some(stop) })
            .collect());
    }
    let label = prefix.trim_end_matches(": ").to_string();
    Ok(vec![Found { label, text: written.unwrap_or_else(|| v.to_string()), clusters: None, buffer_limit: None, stop_iteration: None }])
}

/// The smallest `per_connection_buffer_limit_bytes` among a bootstrap's
/// static listeners (1048576, Envoy's default, where unset); `None` when it
/// has none (not a bootstrap, or listeners from LDS).
pub fn listener_buffer_limit(v: &serde_json::Value) -> Option<u64> {
    let listeners = v.pointer("/static_resources/listeners")?.as_array()?;
    listeners
        .iter()
        .map(|l| match l.get("per_connection_buffer_limit_bytes") {
            Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0),
            Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
            _ => 1 << 20,
        })
        .min()
}

/// The Wasm filter configurations below `v` (path `at`): where, the
/// configuration text, and whether its `config` (Envoy's `PluginConfig`)
/// sets `allow_on_headers_stop_iteration: true`.
fn wasm_configs(v: &serde_json::Value, at: &str, out: &mut Vec<(String, String, bool)>) {
    // protobuf's JSON names (snake or lowerCamel case); `yes`, `on` and
    // `y` as Kubernetes reads a YAML 1.1 manifest
    let stop = |config: Option<&serde_json::Value>| {
        let flag = config.and_then(|c| c.get("allow_on_headers_stop_iteration").or_else(|| c.get("allowOnHeadersStopIteration")));
        match flag {
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::String(s)) => matches!(s.to_ascii_lowercase().as_str(), "true" | "yes" | "on" | "y"),
            _ => false,
        }
    };
    match v {
        serde_json::Value::Object(m) => {
            let ty = m.get("@type").and_then(|t| t.as_str());
            if ty == Some(WASM_FILTER) {
                if let Some(s) = v.pointer("/config/configuration/value").and_then(|s| s.as_str()) {
                    out.push((format!("{at}.config.configuration.value"), s.to_string(), stop(v.get("config"))));
                }
            }
            // Istio EnvoyFilters often wrap the filter in a TypedStruct
            // (udpa.type.v1 / xds.type.v3) naming the Wasm type in `type_url`
            if ty.is_some_and(|t| t.ends_with(".TypedStruct")) && m.get("type_url").and_then(|t| t.as_str()) == Some(WASM_FILTER) {
                if let Some(s) = v.pointer("/value/config/configuration/value").and_then(|s| s.as_str()) {
                    out.push((format!("{at}.value.config.configuration.value"), s.to_string(), stop(v.pointer("/value/config"))));
                }
            }
            for (k, x) in m {
                wasm_configs(x, &format!("{at}.{k}"), out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                wasm_configs(x, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The clusters an Envoy bootstrap defines statically, or `None` when it
/// may get more from CDS (`dynamic_resources.cds_config`) or is not a
/// bootstrap (a policy, an Istio manifest: clusters live elsewhere).
pub fn static_clusters(v: &serde_json::Value) -> Option<Vec<String>> {
    v.get("static_resources")?;
    if v.pointer("/dynamic_resources/cds_config").is_some() || v.pointer("/dynamic_resources/cds_resources_locator").is_some() {
        return None;
    }
    let clusters = v.pointer("/static_resources/clusters").and_then(|c| c.as_array());
    Some(clusters.into_iter().flatten().filter_map(|c| c.get("name")?.as_str().map(String::from)).collect())
}

/// Every Envoy cluster a configuration calls, with the field that names it.
pub fn called_clusters(c: &Config) -> Vec<(String, String)> {
    use nhi_gate::config::KeySource;
    let mut out = Vec::new();
    for (i, p) in c.providers.iter().enumerate() {
        if let KeySource::Remote { cluster, .. } | KeySource::Discovery { cluster, .. } = &p.keys {
            out.push((format!("providers[{i}].cluster"), cluster.clone()));
        }
    }
    for (i, r) in c.resources.iter().enumerate() {
        if let Some(a) = &r.approval {
            out.push((format!("resources[{i}].approval.cluster"), a.cluster.clone()));
        }
        if let Some(s) = r.quota.as_ref().and_then(|q| q.service.as_ref()) {
            out.push((format!("resources[{i}].quota.service.cluster"), s.cluster.clone()));
        }
    }
    if let Some(col) = &c.audit.collector {
        out.push(("audit.collector.cluster".into(), col.cluster.clone()));
    }
    out
}

/// What a valid configuration `c` gets wrong about the Envoy bootstrap it
/// sits in (`clusters`, `buffer_limit`: see [`Found`]), one `field: problem`
/// line each. Envoy accepts such a bootstrap, then fails at run time:
/// - a cluster the policy calls that the bootstrap lacks: every callout
///   fails (BadArgument);
/// - a masking or held-body limit over the listener's
///   `per_connection_buffer_limit_bytes`: the body sits in Envoy's buffer,
///   and past it Envoy answers 500/413 from inside the filter's call.
pub fn deployment_problems(c: &Config, clusters: Option<&[String]>, buffer_limit: Option<u64>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(limit) = buffer_limit {
        for (i, r) in c.resources.iter().enumerate() {
            let limits = [
                r.mask.as_ref().map(|m| ("mask.max_buffer_bytes", m.max_buffer_bytes)),
                r.approval.as_ref().map(|a| ("approval.max_body_bytes", a.max_body_bytes)),
            ];
            for (field, n) in limits.into_iter().flatten().filter(|(_, n)| *n as u64 > limit) {
                out.push(format!(
                    "resources[{i}].{field}: {n} is over the listener's per_connection_buffer_limit_bytes {limit}; lower it (and envoy_buffer_limit_bytes) or raise the listener's"
                ));
            }
        }
    }
    if let Some(have) = clusters {
        for (field, cluster) in called_clusters(c).into_iter().filter(|(_, n)| !have.contains(n)) {
            out.push(format!("{field}: no cluster {cluster:?} in this Envoy config's static_resources.clusters"));
        }
    }
    out
}

const STOP_ITERATION: &str = "the Wasm filter's config lacks allow_on_headers_stop_iteration: true; without it Envoy stops all iteration when nhi-gate pauses at the headers to read a body, and such requests hang; set it next to `configuration`";

const WASM_PLUGIN_STOP: &str = "Istio's WasmPlugin cannot set allow_on_headers_stop_iteration, and without it requests whose body nhi-gate reads hang; deploy with an EnvoyFilter that sets it (envoy/istio/envoyfilter.yaml)";

/// The features of `c` for which nhi-gate pauses at the headers and reads
/// the body that follows (masked bodies, held writes, quotas): they need
/// Envoy's `allow_on_headers_stop_iteration` (the `PluginConfig` field),
/// without which Envoy turns the pause into StopAllIteration and never
/// hands the body to the filter.
pub fn paused_bodies(c: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for (i, r) in c.resources.iter().enumerate() {
        let uses = [("mask", r.mask.is_some()), ("approval", r.approval.is_some()), ("quota", r.quota.is_some())];
        out.extend(uses.into_iter().filter(|(_, on)| *on).map(|(f, _)| format!("resources[{i}].{f}")));
    }
    out
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

pub fn run(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for f in files {
        let docs = match load(f) {
            Ok(d) => d,
            Err(e) => {
                failed = true;
                eprintln!("{}: {e}", f.display());
                continue;
            }
        };
        for Found { label, text, clusters, buffer_limit, stop_iteration } in docs {
            let name = if label.is_empty() { f.display().to_string() } else { format!("{} ({label})", f.display()) };
            match Config::from_json(text.as_bytes()) {
                Ok(c) => {
                    let mut problems = deployment_problems(&c, clusters.as_deref(), buffer_limit);
                    let pausing = if stop_iteration == Some(false) { paused_bodies(&c) } else { Vec::new() };
                    if label.contains("spec.pluginConfig") {
                        // Istio's WasmPlugin has no field for it: a warning, pointing at the EnvoyFilter
                        for field in pausing {
                            eprintln!("{name}: warning: {field}: {WASM_PLUGIN_STOP}");
                        }
                    } else {
                        problems.extend(pausing.into_iter().map(|field| format!("{field}: {STOP_ITERATION}")));
                    }
                    if problems.is_empty() {
                        println!("{name}: ok ({}, {})", plural(c.providers.len(), "provider"), plural(c.resources.len(), "resource"));
                    }
                    for p in problems {
                        failed = true;
                        eprintln!("{name}: invalid configuration: {p}");
                    }
                }
                Err(errs) => {
                    failed = true;
                    for e in errs {
                        eprintln!("{name}: invalid configuration: {e}");
                    }
                }
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
