//! `nhi-gate policy check`: the filter's own validator, run offline.

use nhi_gate::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// Reads a policy as JSON, or as YAML when the extension is `.yaml`/`.yml`.
/// For a YAML file the document may also be an Istio `WasmPlugin` manifest,
/// whose `spec.pluginConfig` is then checked.
pub fn load(path: &PathBuf) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let yaml = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
    let v: serde_json::Value = if yaml {
        serde_yaml::from_str(&text).map_err(|e| format!("(document): not YAML: {e}"))?
    } else {
        serde_json::from_str(&text).map_err(|e| format!("(document): not JSON: {e}"))?
    };
    if v.get("kind").and_then(|k| k.as_str()) == Some("WasmPlugin") {
        return v
            .pointer("/spec/pluginConfig")
            .cloned()
            .ok_or_else(|| "spec.pluginConfig: missing in WasmPlugin manifest".to_string());
    }
    Ok(v)
}

pub fn run(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for f in files {
        let name = f.display();
        match load(f).map_err(|e| vec![e]).and_then(|v| {
            Config::from_value(&v).map_err(|errs| errs.iter().map(|e| format!("invalid configuration: {e}")).collect())
        }) {
            Ok(c) => println!("{name}: ok ({} providers, {} resources)", c.providers.len(), c.resources.len()),
            Err(errs) => {
                failed = true;
                for e in errs {
                    eprintln!("{name}: {e}");
                }
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
