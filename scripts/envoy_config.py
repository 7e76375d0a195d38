#!/usr/bin/env python3
"""Renders an Envoy bootstrap (YAML-compatible JSON) that loads nhi-gate.

Single source of the Envoy configuration used by scripts/run.sh, the
end-to-end tests and the committed example envoy/envoy.yaml.

    envoy_config.py --policy policies/rag-demo.json --wasm dist/nhi_gate.wasm \
        --listen 10000 --admin 9901 --cluster idp=9400 --cluster upstream=9401 \
        --route /collections=upstream --route /v1/=upstream

Filter settings follow Envoy's envoy.extensions.filters.http.wasm.v3.Wasm and
envoy.extensions.wasm.v3.PluginConfig (failure_policy: FAIL_CLOSED,
allow_on_headers_stop_iteration: true; both accepted by Envoy 1.36 and 1.40).
"""
import argparse
import json
import sys


def wasm_filter(policy_text, wasm_path):
    return {
        "name": "nhi-gate",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "nhi-gate",
                "root_id": "nhi-gate",
                "failure_policy": "FAIL_CLOSED",
                "allow_on_headers_stop_iteration": True,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": policy_text,
                },
                "vm_config": {
                    "vm_id": "nhi-gate",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm_path}},
                },
            },
        },
    }


def cluster(name, port, host="127.0.0.1", http2=False, trailers=False):
    """A loopback cluster; `http2` for gRPC services (e.g. a rate-limit service);
    `trailers` keeps HTTP/1.1 chunked trailers (Envoy drops them by default)."""
    c = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}],
        },
    }
    if http2:
        c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    elif trailers:
        c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http_protocol_options": {"enable_trailers": True}}}}
    return c


def audit_log(path):
    """File access log writing one nhi-gate audit record (JSON) per line: the
    record is the filter state `wasm.nhi_gate_audit` set in the filter's on_log
    (docs/audit-record.md). Any other Envoy access logger (OpenTelemetry, gRPC
    ALS) can ship the same %FILTER_STATE(...)% value."""
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path,
            "log_format": {"text_format_source": {"inline_string": AUDIT + "\n"}},
        },
    }


AUDIT = "%FILTER_STATE(wasm.nhi_gate_audit:PLAIN)%"


def audit_otel(cluster_name):
    """OpenTelemetry access log: each audit record is the body of one OTLP log record."""
    return {
        "name": "envoy.access_loggers.open_telemetry",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
            "common_config": {"log_name": "nhi-gate-audit", "transport_api_version": "V3",
                              "grpc_service": {"envoy_grpc": {"cluster_name": cluster_name}}},
            "body": {"string_value": AUDIT},
        },
    }


def audit_grpc_als(cluster_name):
    """gRPC access-log service (envoy.service.accesslog.v3): the record travels
    as the filter state object wasm.nhi_gate_audit of each HTTP log entry."""
    return {
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
            "common_config": {"log_name": "nhi-gate-audit", "transport_api_version": "V3",
                              "grpc_service": {"envoy_grpc": {"cluster_name": cluster_name}},
                              "filter_state_objects_to_log": ["wasm.nhi_gate_audit"]},
        },
    }


def render(policy_text, wasm_path, listen, admin, clusters, routes, with_filter=True, audit_path=None, node="nhi-gate",
           grpc_clusters=(), otel_cluster=None, als_cluster=None, trailers=False):
    http_filters = [wasm_filter(policy_text, wasm_path)] if with_filter else []
    http_filters.append({"name": "envoy.filters.http.router",
                         "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
    loggers = ([audit_log(audit_path)] if audit_path else []) + ([audit_otel(otel_cluster)] if otel_cluster else []) \
        + ([audit_grpc_als(als_cluster)] if als_cluster else [])
    hcm_extra = {"access_log": loggers} if loggers else {}
    if trailers:
        # HTTP/1.1 trailers kept end to end (tests of bodies that end with trailers)
        hcm_extra["http_protocol_options"] = {"enable_trailers": True}
    return {
        "node": {"id": node, "cluster": "nhi-gate"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{
                "name": "rag",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "rag",
                        "generate_request_id": True,
                        # Policy matches the path the upstream will act on: RFC 3986
                        # dot-segment removal, merged slashes, and no encoded slashes.
                        "normalize_path": True,
                        "merge_slashes": True,
                        "path_with_escaped_slashes_action": "REJECT_REQUEST",
                        "route_config": {"name": "rag", "virtual_hosts": [{
                            "name": "rag", "domains": ["*"],
                            "routes": [{"match": {"prefix": prefix}, "route": {"cluster": target, "timeout": "60s"}}
                                       for prefix, target in routes],
                        }]},
                        "http_filters": http_filters,
                        **hcm_extra,
                    },
                }]}],
            }],
            "clusters": [cluster(name, port, http2=name in grpc_clusters, trailers=trailers) for name, port in clusters],
        },
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True)
    ap.add_argument("--wasm", default="dist/nhi_gate.wasm")
    ap.add_argument("--listen", type=int, default=10000)
    ap.add_argument("--admin", type=int, default=9901)
    ap.add_argument("--cluster", action="append", default=[], help="name=port (127.0.0.1)")
    ap.add_argument("--route", action="append", default=[], help="prefix=cluster")
    ap.add_argument("--no-filter", action="store_true", help="Envoy without nhi-gate (benchmark baseline)")
    ap.add_argument("--audit-log", help="file for the audit records (one JSON per line)")
    ap.add_argument("--audit-otel", help="cluster (HTTP/2) of an OpenTelemetry collector for the audit records")
    ap.add_argument("--audit-grpc-als", help="cluster (HTTP/2) of a gRPC access-log service for the audit records")
    a = ap.parse_args()
    with open(a.policy) as f:
        if a.policy.endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError:
                sys.exit(f"{a.policy}: reading a YAML policy needs PyYAML (pip install pyyaml); or give the policy as JSON")
            policy = json.dumps(yaml.safe_load(f), indent=2)
        else:
            policy = json.dumps(json.load(f), indent=2)
    clusters = [(c.split("=")[0], int(c.split("=")[1])) for c in a.cluster]
    routes = [tuple(r.split("=", 1)) for r in a.route]
    grpc = tuple(c for c in (a.audit_otel, a.audit_grpc_als) if c)
    cfg = render(policy, a.wasm, a.listen, a.admin, clusters, routes, not a.no_filter, a.audit_log,
                 grpc_clusters=grpc, otel_cluster=a.audit_otel, als_cluster=a.audit_grpc_als)
    json.dump(cfg, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
