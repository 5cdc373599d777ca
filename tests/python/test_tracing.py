"""OpenTelemetry traces, black-box: `--otlp-endpoint` pointed at an OTLP/HTTP receiver in this
process (protobuf decoded with the official opentelemetry-proto messages). A client's W3C
`traceparent` becomes the parent of the request span; the stages (decode, enrich, queue,
execute, encode) are its descendants; through a router, the router's pick and attempt spans
and the worker's spans are one trace, the worker's request span a child of the attempt.
"""
import concurrent.futures
import http.server
import os
import secrets
import signal
import threading

import numpy as np
import pytest
import requests
import subprocess
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from conftest import BIN, EXAMPLES, ROOT, Router, Server, wait_for
from test_fleet import DELAY, delay_model

FEATURES = ROOT / "examples" / "features"
# export within ~100 ms instead of the batch exporter's default 5 s
FAST = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


class Receiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces with an ExportTraceServiceRequest."""

    def __init__(self):
        self.spans = []  # (service name, span)
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                with receiver.lock:
                    for rs in request.resource_spans:
                        service = next((a.value.string_value for a in rs.resource.attributes
                                        if a.key == "service.name"), "")
                        for ss in rs.scope_spans:
                            receiver.spans.extend((service, s) for s in ss.spans)
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id):
        with self.lock:
            return [(svc, s) for svc, s in self.spans if s.trace_id.hex() == trace_id]

    def close(self):
        self.server.shutdown()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def traceparent():
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent_id, f"00-{trace_id}-{parent_id}-01"


def attribute(span, key):
    for a in span.attributes:
        if a.key == key:
            v = a.value
            return v.string_value or v.int_value or v.bool_value
    return None


def tree(spans):
    """span name -> span, and span id -> its children's names."""
    children = {}
    for _, s in spans:
        children.setdefault(s.parent_span_id.hex(), []).append(s.name)
    return children


def wait_spans(receiver, trace_id, names, what):
    def ready():
        got = receiver.trace(trace_id)
        return got if names <= {s.name for _, s in got} else None
    return wait_for(ready, timeout=20, what=f"{what}: spans {sorted(names)} (got {[s.name for _, s in receiver.trace(trace_id)]})")


def by_name(spans, name, service=None):
    found = [s for svc, s in spans if s.name == name and (service is None or svc == service)]
    assert found, f"no span {name!r} ({service}) in {[(svc, s.name) for svc, s in spans]}"
    return found


def test_a_request_is_one_trace_under_the_clients_parent_over_http_and_grpc(receiver, tmp_path):
    store = f"embedded:{tmp_path}/online.redb"
    s = Server(EXAMPLES, "--feature-repo", str(FEATURES), "--otlp-endpoint", receiver.url,
               env={"FLOTILLA_ONLINE_STORE": store, **FAST})
    try:
        # HTTP, with an entity key only: the feature store enriches it
        trace_id, parent_id, header = traceparent()
        http = httpclient.InferenceServerClient(s.http)
        k = httpclient.InferInput("card_id", [2], "INT64")
        k.set_data_from_numpy(np.array([101, 202], np.int64))
        assert http.infer("fraud_xgb", [k], headers={"traceparent": header}).as_numpy("output__0").shape == (2, 1)
        stages = {"http infer fraud_xgb", "decode", "infer", "enrich", "queue", "execute", "encode"}
        spans = wait_spans(receiver, trace_id, stages, "the HTTP request's trace")
        assert {svc for svc, _ in spans} == {"flotilla"}
        (root,) = by_name(spans, "http infer fraud_xgb")
        assert root.parent_span_id.hex() == parent_id, "the client's span is the parent"
        assert root.kind == root.SPAN_KIND_SERVER
        assert attribute(root, "model") == "fraud_xgb"
        children = tree(spans)
        assert {"decode", "infer", "encode"} <= set(children[root.span_id.hex()])
        (infer,) = by_name(spans, "infer")
        assert {"enrich", "queue", "execute"} <= set(children[infer.span_id.hex()])
        (execute,) = by_name(spans, "execute")
        (queue,) = by_name(spans, "queue")
        assert attribute(execute, "batch_rows") == 2
        assert queue.end_time_unix_nano <= execute.start_time_unix_nano + 1_000_000
        (encode,) = by_name(spans, "encode")
        assert root.start_time_unix_nano <= infer.start_time_unix_nano <= encode.start_time_unix_nano <= root.end_time_unix_nano

        # gRPC: the same tree, under the metadata's traceparent
        trace_id, parent_id, header = traceparent()
        grpc = grpcclient.InferenceServerClient(s.grpc)
        t = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
        t.set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
        u = grpcclient.InferInput("INPUT1", [1, 16], "INT32")
        u.set_data_from_numpy(np.ones((1, 16), np.int32))
        grpc.infer("simple", [t, u], headers={"traceparent": header})
        spans = wait_spans(receiver, trace_id, {"grpc infer simple", "decode", "infer", "queue", "execute", "encode"},
                           "the gRPC request's trace")
        (root,) = by_name(spans, "grpc infer simple")
        assert root.parent_span_id.hex() == parent_id

        # A failed request is one too, marked as an error with the reason
        trace_id, parent_id, header = traceparent()
        r = requests.post(s.url + "/v2/models/simple/infer", headers={"traceparent": header},
                          json={"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]}]})
        assert r.status_code == 400
        spans = wait_spans(receiver, trace_id, {"http infer simple"}, "the failed request's trace")
        (root,) = by_name(spans, "http infer simple")
        assert root.status.code == root.status.STATUS_CODE_ERROR and "invalid" in root.status.message.lower(), root.status

        # Without a traceparent a request starts its own trace
        before = len(receiver.spans)
        requests.post(s.url + "/v2/models/simple/infer", json={"inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}]}).raise_for_status()
        wait_for(lambda: any(s.name == "http infer simple" and not s.parent_span_id
                             for _, s in receiver.spans[before:]), timeout=20, what="a root span")
    finally:
        assert s.stop() == 0, s.log()


SIMPLE = {"inputs": [
    {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
    {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}]}


def test_a_request_through_the_router_is_one_trace_across_the_fleet(receiver):
    router = Router("--worker-ttl-ms", "2000", "--otlp-endpoint", receiver.url, env=FAST)
    worker = None
    try:
        worker = Server(EXAMPLES, "--join", router.url, "--worker-id", "traced", "--feature-repo", "none",
                        "--heartbeat-ms", "200", "--otlp-endpoint", receiver.url, env=FAST)
        router.wait_workers(["traced"])
        trace_id, parent_id, header = traceparent()
        body = {"inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}]}
        r = requests.post(router.url + "/v2/models/simple/infer", json=body, headers={"traceparent": header}, timeout=10)
        assert r.status_code == 200, r.text
        spans = wait_spans(receiver, trace_id, {"http infer simple", "pick", "attempt", "grpc infer simple", "infer",
                                                "queue", "execute"}, "the fleet trace")
        services = {svc for svc, _ in spans}
        assert services == {"flotilla-router", "flotilla"}, services
        (router_root,) = by_name(spans, "http infer simple", "flotilla-router")
        assert router_root.parent_span_id.hex() == parent_id
        (attempt,) = by_name(spans, "attempt", "flotilla-router")
        assert attribute(attempt, "worker") == "traced" and attempt.kind == attempt.SPAN_KIND_CLIENT
        (worker_root,) = by_name(spans, "grpc infer simple", "flotilla")
        assert worker_root.parent_span_id == attempt.span_id, "the worker continues the router's attempt"
        children = tree(spans)
        assert {"pick", "attempt"} <= set(children[router_root.span_id.hex()])
        assert "infer" in children[worker_root.span_id.hex()]
    finally:
        if worker:
            worker.stop()
        router.stop()


def test_a_retried_request_shows_both_attempts_and_the_worker_that_answered(receiver, tmp_path):
    """The router's first choice (the opportunistic worker, elastic-first) was killed a moment
    ago and the router does not know yet (slow probes, long TTL): the trace shows the failed
    attempt on it, a second pick, and the attempt on the other worker, which continues the trace."""
    router = Router("--worker-ttl-ms", "60000", "--probe-interval-ms", "60000", "--otlp-endpoint", receiver.url,
                    env=FAST)
    workers = {}
    try:
        for wid, cls in [("first", "opportunistic"), ("second", "guaranteed")]:
            workers[wid] = Server(EXAMPLES, "--join", router.url, "--worker-id", wid, "--feature-repo", "none",
                                  "--heartbeat-ms", "200", "--capacity-class", cls, "--otlp-endpoint", receiver.url,
                                  env=FAST)
        router.wait_workers(list(workers))
        workers["first"].stop(signal.SIGKILL)
        trace_id, parent_id, header = traceparent()
        r = requests.post(router.url + "/v2/models/simple/infer", json=SIMPLE, headers={"traceparent": header},
                          timeout=30)
        assert r.status_code == 200, r.text
        spans = wait_spans(receiver, trace_id, {"http infer simple", "pick", "attempt", "grpc infer simple"},
                           "the retried request's trace")
        (root,) = by_name(spans, "http infer simple", "flotilla-router")
        attempts = sorted(by_name(spans, "attempt", "flotilla-router"), key=lambda s: s.start_time_unix_nano)
        assert [attribute(a, "worker") for a in attempts] == ["first", "second"], attempts
        assert [str(attribute(a, "attempt")) for a in attempts] == ["0", "1"]
        assert attempts[0].status.code == attempts[0].status.STATUS_CODE_ERROR, attempts[0].status
        assert attempts[1].status.code != attempts[1].status.STATUS_CODE_ERROR
        assert all(a.parent_span_id == root.span_id for a in attempts)
        assert len(by_name(spans, "pick", "flotilla-router")) == 2
        (worker_root,) = by_name(spans, "grpc infer simple", "flotilla")
        assert worker_root.parent_span_id == attempts[1].span_id, "the worker that answered continues the retry"
    finally:
        for w in workers.values():
            w.stop()
        router.stop()


def test_a_hedged_request_shows_the_hedge_beside_the_first_attempt(receiver, tmp_path):
    """A slow and a fast worker, the model hedged: once the router knows the model's p95 it sends
    a second copy when the first has not answered by then. That request's trace holds the
    `attempt` and the `hedge` under the router's request span, each on its own worker."""
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    delay_model(fast, "hedged", 5, 4)
    delay_model(slow, "hedged", 400, 4)
    router = Router("--hedge", "hedged", "--otlp-endpoint", receiver.url, env=FAST)
    workers = []
    try:
        workers = [Server(repo, "--join", router.url, "--worker-id", wid, "--feature-repo", "none",
                          "--heartbeat-ms", "200", env=DELAY)
                   for wid, repo in [("fast", fast), ("slow", slow)]]
        router.wait_workers(["fast", "slow"])
        body = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}

        def hedged_trace():
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                codes = list(pool.map(lambda _: requests.post(router.url + "/v2/models/hedged/infer", json=body,
                                                              timeout=30).status_code, range(40)))
            assert codes == [200] * 40
            with receiver.lock:
                hedges = [s for svc, s in receiver.spans if s.name == "hedge"]
            return hedges[0] if hedges else None
        hedge = wait_for(hedged_trace, timeout=120, every=0, what="a hedged request")
        spans = wait_spans(receiver, hedge.trace_id.hex(), {"http infer hedged", "attempt", "hedge"}, "the hedged trace")
        (root,) = by_name(spans, "http infer hedged", "flotilla-router")
        (attempt,) = by_name(spans, "attempt", "flotilla-router")
        assert attempt.parent_span_id == root.span_id and hedge.parent_span_id == root.span_id
        assert hedge.kind == hedge.SPAN_KIND_CLIENT
        assert {attribute(attempt, "worker"), attribute(hedge, "worker")} == {"fast", "slow"}
        assert attempt.start_time_unix_nano < hedge.start_time_unix_nano
    finally:
        for w in workers:
            w.stop()
        router.stop()


def test_bad_otlp_settings_are_refused_at_start():
    for args, message in [
        (["--otlp-endpoint", "https://collector:4318"], "expected an OTLP/HTTP collector address http://HOST:PORT"),
        (["--otlp-endpoint", "collector:4318"], "expected an OTLP/HTTP collector address"),
        (["--otlp-endpoint", "http://127.0.0.1:4318", "--otlp-sample-ratio", "2"], "expected a number from 0 to 1"),
    ]:
        p = subprocess.run([BIN, "serve", "--model-repository", str(EXAMPLES), "--http-port", "0", "--grpc-port", "0",
                            "--metrics-port", "0", *args], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "FLOTILLA_FEATURE_REPO": "none"})
        assert p.returncode != 0 and message in p.stderr, (args, p.stderr)


def test_text_logs_to_a_file_carry_no_colour_codes(tmp_path):
    """`--log-format text` into a file (or a pipe): plain text, no ANSI escapes."""
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        p = subprocess.Popen([BIN, "serve", "--model-repository", str(EXAMPLES), "--host", "127.0.0.1",
                              "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--feature-repo", "none",
                              "--log-format", "text"], stdout=out, stderr=out)
        try:
            wait_for(lambda: "listening" in log.read_text(), timeout=60, what="the server listening")
        finally:
            p.terminate()
            assert p.wait(60) == 0
    text = log.read_text()
    assert "INFO" in text and "listening" in text, text
    assert "\x1b[" not in text, text[:2000]
