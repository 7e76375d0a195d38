"""The audit record shipped by Envoy's own access loggers, as in
envoy/envoy-audit-shipping.yaml: an OpenTelemetry collector (OTLP logs over
gRPC) and a gRPC access-log service (envoy.service.accesslog.v3) — both real
gRPC servers on loopback here, which look for each record's bytes in what
they receive — plus the committed file being the rendered example."""
import json
import subprocess
import threading
import time
from concurrent import futures

import grpc

import envoy_config
from harness import ROOT, WASM, Envoy, Upstream, claims

ISS = "https://ci.test"


class RawGrpcSink:
    """Accepts the given gRPC methods (unary or client-streaming) and keeps the raw request bytes."""

    def __init__(self, unary=(), streaming=()):
        self.received = []
        self.lock = threading.Lock()
        ident = lambda b: b  # noqa: E731

        def keep(data):
            with self.lock:
                self.received.append(bytes(data))

        def unary_handler(request, context):
            keep(request)
            return b""  # an empty protobuf message: the Export*Response

        def stream_handler(request_iterator, context):
            for r in request_iterator:
                keep(r)
            return b""

        handlers = {}
        for path in unary:
            service, method = path.rsplit("/", 1)
            handlers.setdefault(service, {})[method] = grpc.unary_unary_rpc_method_handler(
                unary_handler, request_deserializer=ident, response_serializer=ident)
        for path in streaming:
            service, method = path.rsplit("/", 1)
            handlers.setdefault(service, {})[method] = grpc.stream_unary_rpc_method_handler(
                stream_handler, request_deserializer=ident, response_serializer=ident)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        for service, methods in handlers.items():
            self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, methods),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def blob(self):
        with self.lock:
            return b"".join(self.received)

    def close(self):
        self.server.stop(0)


def test_otel_and_grpc_als_receive_every_record(envoy_bin, keys):
    otel = RawGrpcSink(unary=["opentelemetry.proto.collector.logs.v1.LogsService/Export"])
    als = RawGrpcSink(streaming=["envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"])
    up = Upstream()
    pol = {"providers": [{"name": "ci", "issuer": ISS, "audiences": ["nhi-gate"], "jwks": {"keys": [keys["es"].jwk]}}],
           "resources": [{"name": "r", "path_prefix": "/", "read": {"any_of": ["readers"]}}]}
    # the two gRPC loggers of envoy/envoy-audit-shipping.yaml, besides the harness's file log
    env = Envoy(envoy_bin, pol, up.port, clusters={"otel-collector": otel.port, "als": als.port},
                grpc_clusters=("otel-collector", "als"), otel_cluster="otel-collector", als_cluster="als")
    try:
        tok = keys["es"].sign(claims(ISS))
        ids = []
        for i in range(3):
            st, h, out = env.request("GET", f"/doc/{i}", [("authorization", f"Bearer {tok}")])
            assert st == 200
        st, _, out = env.request("GET", "/doc/x")
        assert st == 401
        recs = env.audit_records(4)
        assert len(recs) == 4
        ids = [r["request_id"] for r in recs]
        deadline = time.time() + 15
        while time.time() < deadline and not all(i.encode() in otel.blob() and i.encode() in als.blob() for i in ids):
            time.sleep(0.2)
        for i in ids:
            assert i.encode() in otel.blob(), "OpenTelemetry collector did not get the record"
            assert i.encode() in als.blob(), "gRPC access-log service did not get the record"
        # the records travel whole: the JSON of one record is in both streams
        one = json.dumps(recs[0], separators=(",", ":")).encode()
        assert one[:200] in otel.blob() and one[:200] in als.blob()
    finally:
        env.stop()
        up.close()
        otel.close()
        als.close()


def test_committed_shipping_example_is_rendered_and_valid(envoy_bin, tmp_path):
    text = json.dumps(json.load(open(ROOT / "policies" / "rag-demo.json")), indent=2)
    want = envoy_config.render(text, "dist/nhi_gate.wasm", 10000, 9901,
                               [("idp", 9400), ("upstream", 9401), ("approvals", 9402), ("otel-collector", 4317), ("als", 9404)],
                               [("/collections", "upstream"), ("/v1/", "upstream")], audit_path="/dev/stdout",
                               grpc_clusters=("otel-collector", "als"), otel_cluster="otel-collector", als_cluster="als")
    have = json.load(open(ROOT / "envoy" / "envoy-audit-shipping.yaml"))
    assert have == want, "envoy/envoy-audit-shipping.yaml is stale: regenerate it (see README)"
    p = tmp_path / "e.json"
    p.write_text(json.dumps(have).replace('"dist/nhi_gate.wasm"', json.dumps(str(WASM))))
    r = subprocess.run([envoy_bin, "--mode", "validate", "-c", str(p), "--disable-hot-restart"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
