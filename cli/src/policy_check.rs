//! `nhi-gate policy check`: the filter's own validator, run offline.

use nhi_gate::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

const WASM_FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// The nhi-gate configurations found in a file, each as JSON text with a label:
/// - a policy document (JSON, or YAML by `.yaml`/`.yml` extension);
/// - an Istio `WasmPlugin` manifest: its `spec.pluginConfig`;
/// - an Envoy bootstrap (`static_resources`) or an Istio `EnvoyFilter`
///   manifest: the `configuration` string of every
///   `envoy.extensions.filters.http.wasm.v3.Wasm` filter.
///
/// A JSON policy is handed to the validator as written, so duplicate
/// members are reported like the filter reports them.
pub fn load(path: &PathBuf) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let yaml = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
    let v: serde_json::Value = if yaml {
        // Through serde_yaml's own Value, which refuses duplicate keys.
        let y: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| format!("(document): not YAML: {e}"))?;
        serde_json::to_value(y).map_err(|e| format!("(document): {e}"))?
    } else {
        serde_json::from_str(&text).map_err(|e| format!("(document): not JSON: {e}"))?
    };
    if v.get("kind").and_then(|k| k.as_str()) == Some("WasmPlugin") {
        let pc = v.pointer("/spec/pluginConfig").ok_or("spec.pluginConfig: missing in WasmPlugin manifest")?;
        return Ok(vec![("spec.pluginConfig".into(), pc.to_string())]);
    }
    if v.get("static_resources").is_some() || v.get("kind").and_then(|k| k.as_str()) == Some("EnvoyFilter") {
        let mut found = Vec::new();
        wasm_configs(&v, "", &mut found);
        if found.is_empty() {
            return Err("(document): Envoy config without an envoy.filters.http.wasm filter configuration".into());
        }
        return Ok(found);
    }
    Ok(vec![(String::new(), if yaml { v.to_string() } else { text })])
}

fn wasm_configs(v: &serde_json::Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            if m.get("@type").and_then(|t| t.as_str()) == Some(WASM_FILTER) {
                if let Some(s) = v.pointer("/config/configuration/value").and_then(|s| s.as_str()) {
                    out.push((format!("{at}.config.configuration.value"), s.to_string()));
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
        for (label, text) in docs {
            let name = if label.is_empty() { f.display().to_string() } else { format!("{} ({label})", f.display()) };
            match Config::from_json(text.as_bytes()) {
                Ok(c) => println!("{name}: ok ({}, {})", plural(c.providers.len(), "provider"), plural(c.resources.len(), "resource")),
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
