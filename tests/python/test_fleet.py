"""The elastic fleet, black-box: `flotilla route` in front of `flotilla serve --join` workers.

Real processes on free ports; tritonclient (HTTP, gRPC, streaming) and perf_analyzer through the
router; SIGTERM and kill -9 of workers under a client loop; retries, idempotency, joining,
overload, the NATS JetStream KV registry with two routers and a NATS restart.
"""
import concurrent.futures
import contextlib
import json
import os
import pathlib
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from functools import partial

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import BIN, EXAMPLES, ROOT, Router, Server, free_port, wait_for
from test_features import TXN_VIEW
from test_perf_analyzer import perf_analyzer

DELAY = {"FLOTILLA_TEST_BACKENDS": "delay"}


def delay_model(repo, name, delay_ms, instances, max_batch=8, extra=""):
    d = repo / name
    (d / "1").mkdir(parents=True)
    (d / "config.pbtxt").write_text(f"""
name: "{name}"
backend: "delay"
max_batch_size: {max_batch}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
parameters {{ key: "execute_delay_ms" value: {{ string_value: "{delay_ms}" }} }}
{extra}
""")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """`simple` from the examples plus `slow` (20 ms per execution, 4 instances) and `slower` (400 ms, 1)."""
    r = tmp_path_factory.mktemp("fleet-repo")
    shutil.copytree(EXAMPLES / "simple", r / "simple")
    delay_model(r, "slow", 20, 4)
    delay_model(r, "slower", 400, 1)
    return r


def start_worker(router, repo, wid, *args, join=None):
    return Server(repo, "--join", join or router.url, "--worker-id", wid, "--feature-repo", "none",
                  "--heartbeat-ms", "200", *args, env=DELAY)


class Fleet:
    def __init__(self, repo, n=3, router_args=(), classes=None):
        self.router = Router("--worker-ttl-ms", "2000", *router_args)
        self.workers = {}
        for i in range(n):
            cls = (classes or ["guaranteed"] * n)[i]
            self.add(repo, f"w{i}", "--capacity-class", cls)
        self.router.wait_workers(list(self.workers))

    def add(self, repo, wid, *args):
        self.workers[wid] = start_worker(self.router, repo, wid, *args)
        return self.workers[wid]

    def stop(self):
        for w in self.workers.values():
            w.stop(signal.SIGKILL)
        self.router.stop()


@pytest.fixture(scope="module")
def fleet(repo):
    f = Fleet(repo)
    yield f
    assert f.router.alive(), f.router.log()
    f.stop()


def simple_body(batch=1):
    return {"inputs": [
        {"name": "INPUT0", "shape": [batch, 16], "datatype": "INT32", "data": list(range(16)) * batch},
        {"name": "INPUT1", "shape": [batch, 16], "datatype": "INT32", "data": [1] * 16 * batch},
    ]}


def slow_body(parameters=None):
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    if parameters:
        body["parameters"] = parameters
    return body


class Loop:
    """Client threads sending requests back to back through the router; counts answers by status."""

    def __init__(self, url, model="slow", threads=6, body=None, honour_retry_after=False):
        self.url = f"{url}/v2/models/{model}/infer"
        self.body = body or slow_body()
        # a client that honours 429 + Retry-After waits and sends the request again
        self.honour_retry_after = honour_retry_after
        self.shed = 0
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures = []
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def next_body(self):
        return self.body

    def answered(self, r):
        """Called under the lock for each 200."""
        self.ok += 1

    def failed(self, status, text):
        """Called under the lock for each failure (status -1: no answer)."""
        self.failures.append((status, text))

    def run(self):
        s = requests.Session()
        while not self.stop_flag.is_set():
            r = None
            try:
                r = s.post(self.url, json=self.next_body(), timeout=30)
                status, text = r.status_code, r.text
            except requests.RequestException as e:
                status, text = -1, str(e)
            with self.lock:
                if status == 200:
                    self.answered(r)
                elif status == 429 and self.honour_retry_after and r.headers.get("retry-after"):
                    self.shed += 1
                else:
                    self.failed(status, text)
            if status == 429 and self.honour_retry_after and r is not None and r.headers.get("retry-after"):
                time.sleep(min(float(r.headers["retry-after"]), 1.0))

    def finish(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(60)
        return self.ok, self.failures


# --- protocol through the router ------------------------------------------------------------

def test_health_and_fleet_view(fleet):
    r = fleet.router
    assert requests.get(r.url + "/v2/health/live").status_code == 200
    assert requests.get(r.url + "/v2/health/ready").status_code == 200
    view = r.fleet()
    assert view["policy"] == "elastic-first"
    ids = sorted(w["id"] for w in view["workers"])
    assert ids == ["w0", "w1", "w2"]
    w = view["workers"][0]
    assert w["capacity_class"] == "guaranteed" and w["hardware"].startswith("cpu-")
    assert {m["name"] for m in w["models"]} == {"simple", "slow", "slower"}


def test_router_is_live_before_any_worker_and_ready_after():
    r = Router()
    try:
        assert requests.get(r.url + "/v2/health/live").status_code == 200
        assert requests.get(r.url + "/v2/health/ready").status_code == 503
        resp = requests.post(r.url + "/v2/models/simple/infer", json=simple_body())
        assert resp.status_code == 404, resp.text
    finally:
        r.stop()


def test_tritonclient_http(fleet):
    c = httpclient.InferenceServerClient(fleet.router.http)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("simple")
    assert not c.is_model_ready("nope")
    assert c.get_model_metadata("simple")["inputs"][0]["name"] == "INPUT0"
    assert c.get_model_config("simple")["max_batch_size"] == 8
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.ones((2, 16), dtype=np.int32)
    for binary in (True, False):
        i0 = httpclient.InferInput("INPUT0", [2, 16], "INT32")
        i1 = httpclient.InferInput("INPUT1", [2, 16], "INT32")
        i0.set_data_from_numpy(a, binary_data=binary)
        i1.set_data_from_numpy(b, binary_data=binary)
        outs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
        for comp in (None, "gzip", "deflate"):
            r = c.infer("simple", [i0, i1], outputs=outs, request_compression_algorithm=comp,
                        response_compression_algorithm=comp)
            np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a + b)
    r = c.infer("simple", [i0, i1], outputs=[httpclient.InferRequestedOutput("OUTPUT1", class_count=2)])
    assert r.as_numpy("OUTPUT1").shape == (2, 2)


def test_tritonclient_grpc_and_streaming(fleet):
    c = grpcclient.InferenceServerClient(fleet.router.grpc)
    assert c.is_server_ready() and c.is_model_ready("simple") and not c.is_model_ready("nope")
    assert c.get_model_metadata("simple", as_json=True)["platform"]
    assert c.get_model_config("simple", as_json=True)["config"]["name"] == "simple"
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    i0 = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
    i1 = grpcclient.InferInput("INPUT1", [1, 16], "INT32")
    i0.set_data_from_numpy(a)
    i1.set_data_from_numpy(b)
    for comp in (None, "gzip"):
        r = c.infer("simple", [i0, i1], request_id="r1", compression_algorithm=comp)
        np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), a - b)
        assert r.get_response().id == "r1"
    results = queue.Queue()
    c.start_stream(callback=lambda result, error: results.put((result, error)))
    for i in range(10):
        c.async_stream_infer("simple", [i0, i1], request_id=str(i))
    c.async_stream_infer("nope", [i0, i1], request_id="bad")
    got = [results.get(timeout=30) for _ in range(11)]
    c.stop_stream()
    ok = [r for r, e in got if e is None]
    errors = [e for r, e in got if e is not None]
    assert [r.get_response().id for r in ok] == [str(i) for i in range(10)]
    assert len(errors) == 1 and "unknown model" in str(errors[0])
    with pytest.raises(Exception, match="unknown model"):
        c.infer("nope", [i0, i1])


def test_statistics_and_index_aggregate(fleet):
    c = httpclient.InferenceServerClient(fleet.router.http)
    before = c.get_inference_statistics("simple")["model_stats"][0]["inference_stats"]["success"]["count"]
    for _ in range(12):
        requests.post(fleet.router.url + "/v2/models/simple/infer", json=simple_body()).raise_for_status()
    after = c.get_inference_statistics("simple")["model_stats"][0]["inference_stats"]["success"]["count"]
    assert after - before == 12, "the router sums its workers' statistics"
    per_worker = [requests.get(w.url + "/v2/models/simple/stats").json()["model_stats"][0]["inference_stats"]
                  ["success"]["count"] for w in fleet.workers.values()]
    assert sum(per_worker) == after
    index = c.get_model_repository_index()
    assert {(m["name"], m.get("state")) for m in index} >= {("simple", "READY"), ("slow", "READY")}
    with pytest.raises(Exception, match="unknown model"):
        c.get_inference_statistics("nope")


BAD_BODIES = [
    b"{bad json",
    b"[]",
    json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [1]}]}).encode(),
    json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16},
                           {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}]}).encode(),
    json.dumps({"inputs": [{"name": "X", "shape": [1], "datatype": "INT32", "data": [1]}]}).encode(),
    json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}]}).encode(),
    json.dumps({**simple_body(), "outputs": [{"name": "NOPE"}]}).encode(),
    json.dumps({**simple_body(), "parameters": {"idempotent": "maybe"}}).encode(),
    json.dumps({**simple_body(), "parameters": {"timeout": -1}}).encode(),
    json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 2 ** 62], "datatype": "INT32", "data": [1]}]}).encode(),
]


@pytest.mark.parametrize("i", range(len(BAD_BODIES)))
def test_bad_input_gets_the_workers_answer(fleet, i):
    body = BAD_BODIES[i]
    worker = next(iter(fleet.workers.values()))
    direct = requests.post(worker.url + "/v2/models/simple/infer", data=body)
    routed = requests.post(fleet.router.url + "/v2/models/simple/infer", data=body)
    assert 400 <= direct.status_code < 500, direct.text
    assert (routed.status_code, routed.json()) == (direct.status_code, direct.json())


def test_bad_grpc_input_gets_the_workers_answer(fleet):
    worker = next(iter(fleet.workers.values()))
    i0 = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    i0.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
    answers = []
    for target in (worker.grpc, fleet.router.grpc):
        with pytest.raises(Exception) as e:
            grpcclient.InferenceServerClient(target).infer("simple", [i0])
        answers.append((e.value.status(), e.value.message()))
    assert answers[0] == answers[1]
    assert answers[0][0] == "StatusCode.INVALID_ARGUMENT"


def test_unknown_model_is_404(fleet):
    r = requests.post(fleet.router.url + "/v2/models/nope/infer", json=simple_body())
    assert r.status_code == 404 and r.json()["error"] == "Request for unknown model: 'nope' is not found"
    assert requests.get(fleet.router.url + "/v2/models/nope").status_code == 404
    assert requests.get(fleet.router.url + "/v2/models/simple/versions/9/ready").status_code == 404
    with pytest.raises(Exception) as e:
        grpcclient.InferenceServerClient(fleet.router.grpc).get_model_metadata("nope")
    assert e.value.status() == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_through_the_router(fleet, protocol, tmp_path):
    exe, env = perf_analyzer()
    url = fleet.router.http if protocol == "http" else fleet.router.grpc
    cmd = [str(exe), "-m", "simple", "-u", url, "-i", protocol, "--concurrency-range", "1:4",
           "--measurement-interval", "800", "--stability-percentage", "100"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"Concurrency: 4, throughput: [\d.]+ infer/sec", p.stdout), p.stdout


def test_traffic_spreads_and_capacity_is_measured(fleet):
    loop = Loop(fleet.router.url, threads=8)
    time.sleep(3)
    ok, failures = loop.finish()
    assert not failures and ok > 50
    counts = {wid: requests.get(w.url + "/v2/models/slow/stats").json()["model_stats"][0]["inference_stats"]
              ["success"]["count"] for wid, w in fleet.workers.items()}
    assert all(n > 0 for n in counts.values()), counts
    def measured():
        return all(m["capacity_rps"] for w in fleet.router.fleet()["workers"]
                   for m in w["models"] if m["name"] == "slow")
    wait_for(measured, timeout=10, what="every worker advertising a measured capacity for slow")
    view = fleet.router.fleet()
    for w in view["workers"]:
        slow = next(m for m in w["models"] if m["name"] == "slow")
        # 4 instances of 20 ms: below 200/s, and the service time it measured is about 20 ms
        assert 0 < slow["capacity_rps"] < 200, slow
        assert 15 < slow["service_ms"] < 60, slow


# --- preemption -----------------------------------------------------------------------------

def test_sigterm_under_load_loses_nothing(repo):
    f = Fleet(repo)
    try:
        loop = Loop(f.router.url, threads=8)
        time.sleep(1.5)
        victim = f.workers["w1"]
        assert victim.stop(signal.SIGTERM) == 0, victim.log()
        time.sleep(1.5)
        ok, failures = loop.finish()
        assert failures == [], failures[:5]
        assert ok > 50
        kinds = [e["kind"] for e in f.router.events(worker="w1")]
        assert "draining" in kinds and "drained" in kinds and "left" in kinds, kinds
        assert "w1" not in [w["id"] for w in f.router.fleet()["workers"]]
    finally:
        f.stop()


def test_preempt_hook_hands_back_queued_requests(repo):
    f = Fleet(repo, n=2)
    try:
        # `slower` runs one request at a time for 400 ms: 12 concurrent clients queue on both workers.
        # Once w0 is gone, w1 alone may shed some of them (429 + Retry-After, the router's "every
        # worker at its limit"): these clients honour it and send again, as real ones do.
        loop = Loop(f.router.url, model="slower", threads=12, honour_retry_after=True)
        time.sleep(1.0)
        w0 = f.workers["w0"]
        r = requests.post(w0.url + "/v2/admin/preempt", json={"deadline_ms": 100})
        assert r.status_code == 200, r.text
        report = r.json()
        assert report["state"] == "draining" and report["deadline_ms"] == 100
        assert report["handed_back"] >= 1, report
        wait_for(lambda: any(e["kind"] == "drained" for e in f.router.events(worker="w0")), timeout=10,
                 what="w0 drained")
        assert requests.get(w0.url + "/v2/health/ready").status_code == 503
        # a late request straight to the drained worker is refused as DRAINING, never run
        late = requests.post(w0.url + "/v2/models/slower/infer", json=slow_body())
        assert late.status_code == 503 and late.headers["flotilla-error-kind"] == "draining"
        time.sleep(1.0)
        ok, failures = loop.finish()
        assert failures == [], failures[:5]
        assert ok > 10
        drained = [e for e in f.router.events(worker="w0") if e["kind"] == "drained"]
        assert "ms after the notice" in drained[0]["detail"]
        bad = requests.post(f.workers["w1"].url + "/v2/admin/preempt", json={"deadline_ms": -5})
        assert bad.status_code == 400 and "deadline_ms" in bad.json()["error"]
    finally:
        f.stop()


def test_kill_9_under_load_retries_and_ejects(repo):
    f = Fleet(repo)
    try:
        loop = Loop(f.router.url, threads=8)
        time.sleep(1.5)
        f.workers["w2"].stop(signal.SIGKILL)
        time.sleep(1.5)
        ok, failures = loop.finish()
        assert failures == [], failures[:5]
        assert ok > 50
        ejected = f.router.events(kind="ejected", worker="w2")
        assert ejected, f.router.events(worker="w2")
        retried = requests.get(f"http://127.0.0.1:{f.router.metrics_port}/metrics").text
        assert "flotilla_fleet_retries_total" in retried
    finally:
        f.stop()


def test_a_frozen_worker_is_taken_out_and_comes_back(repo):
    """SIGSTOP: no connection error, only silence (as a cut link). Probes take the worker out,
    requests waiting on it are retried elsewhere; SIGCONT brings it back."""
    f = Fleet(repo)
    try:
        loop = Loop(f.router.url, threads=8)
        time.sleep(1.5)
        frozen = f.workers["w0"]
        frozen.proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: f.router.events(kind="ejected", worker="w0"), timeout=10, what="w0 ejected")
        time.sleep(1.0)
        frozen.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: f.router.events(kind="returned", worker="w0"), timeout=10, what="w0 back")
        time.sleep(1.0)
        ok, failures = loop.finish()
        assert failures == [], failures[:5]
        assert ok > 50
    finally:
        for w in f.workers.values():
            w.proc.send_signal(signal.SIGCONT)
        f.stop()


def test_non_idempotent_request_is_not_retried_after_reaching_a_worker(repo):
    f = Fleet(repo, n=2)
    try:
        def run(parameters):
            out = {}
            t = threading.Thread(target=lambda: out.update(r=requests.post(
                f.router.url + "/v2/models/slower/infer", json=slow_body(parameters), timeout=30)))
            t.start()
            busy = wait_for(lambda: next((wid for wid, w in f.workers.items() if w.alive() and requests.get(
                w.url + "/v2/admin/worker").json()["load"]["in_flight"] > 0), None), timeout=10, every=0.01,
                what="the request on a worker")
            f.workers[busy].stop(signal.SIGKILL)
            t.join(30)
            return busy, out["r"]

        busy, r = run({"idempotent": False})
        assert r.status_code == 503, r.text
        assert "failed" in r.json()["error"]
        # the same request, idempotent, is retried on the other worker and succeeds
        f.workers[busy] = start_worker(f.router, repo, busy)
        f.router.wait_workers(["w0", "w1"])
        _, r = run(None)
        assert r.status_code == 200, r.text
    finally:
        f.stop()


def test_a_joining_worker_takes_traffic(repo):
    f = Fleet(repo, n=1)
    try:
        new = f.add(repo, "late")
        f.router.wait_workers(["late"])
        for _ in range(40):
            requests.post(f.router.url + "/v2/models/slow/infer", json=slow_body()).raise_for_status()
        stats = requests.get(new.url + "/v2/models/slow/stats").json()["model_stats"][0]["inference_stats"]
        assert stats["success"]["count"] > 0
    finally:
        f.stop()


def test_overload_answers_429_with_retry_after(tmp_path):
    repo = tmp_path / "repo"
    # 50 ms per request, one instance, a 100 ms target: a capacity of a few requests per second
    delay_model(repo, "tiny", 50, 1)
    f = Fleet(repo, n=1)
    try:
        for _ in range(30):
            requests.post(f.router.url + "/v2/models/tiny/infer", json=slow_body()).raise_for_status()
        wait_for(lambda: f.router.fleet()["workers"][0]["models"][0]["capacity_rps"], timeout=10,
                 what="capacity measured")
        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(lambda _: requests.post(f.router.url + "/v2/models/tiny/infer",
                                                            json=slow_body(), timeout=60), range(80)))
        shed = [a for a in answers if a.status_code == 429]
        assert shed, [a.status_code for a in answers]
        assert all(a.headers.get("Retry-After") == "1" for a in shed)
        assert all(a.status_code in (200, 429) for a in answers)
        assert f.router.alive()
        with pytest.raises(Exception) as e:
            c = grpcclient.InferenceServerClient(f.router.grpc)
            i0 = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
            i0.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
            with concurrent.futures.ThreadPoolExecutor(40) as pool:
                list(pool.map(lambda _: c.infer("tiny", [i0]), range(80)))
        assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    finally:
        f.stop()


def test_elastic_first_prefers_opportunistic_workers(repo):
    f = Fleet(repo, n=3, classes=["guaranteed", "opportunistic", "opportunistic"])
    try:
        loop = Loop(f.router.url, threads=3)
        time.sleep(4)
        ok, failures = loop.finish()
        assert not failures
        counts = {wid: requests.get(w.url + "/v2/models/slow/stats").json()["model_stats"][0]["inference_stats"]
                  ["success"]["count"] for wid, w in f.workers.items()}
        opportunistic = counts["w1"] + counts["w2"]
        assert opportunistic > 0.8 * sum(counts.values()), counts
    finally:
        f.stop()


def test_load_and_unload_through_the_router_reach_every_worker(repo):
    r = Router()
    workers = []
    try:
        workers = [start_worker(r, repo, f"x{i}", "--model-control-mode", "explicit", "--load-model", "slow")
                   for i in range(2)]
        r.wait_workers(["x0", "x1"])
        c = httpclient.InferenceServerClient(r.http)
        assert not c.is_model_ready("simple")
        c.load_model("simple")
        wait_for(lambda: all(any(m["name"] == "simple" for m in w["models"]) for w in r.fleet()["workers"]),
                 timeout=10, what="simple on both workers")
        assert c.is_model_ready("simple")
        assert all(requests.get(w.url + "/v2/models/simple/ready").status_code == 200 for w in workers)
        requests.post(r.url + "/v2/models/simple/infer", json=simple_body()).raise_for_status()
        c.unload_model("simple")
        wait_for(lambda: not c.is_model_ready("simple"), timeout=10, what="simple unloaded")
        with pytest.raises(Exception, match="no model folder|not found"):
            c.load_model("nope")
    finally:
        for w in workers:
            w.stop(signal.SIGKILL)
        r.stop()


def test_hedging_sends_a_second_copy_to_another_worker(tmp_path):
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    delay_model(fast, "hedged", 5, 4)
    delay_model(slow, "hedged", 400, 4)
    r = Router("--hedge", "hedged")
    workers = []
    try:
        workers = [start_worker(r, fast, "fast"), start_worker(r, slow, "slow")]
        r.wait_workers(["fast", "slow"])
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: requests.post(r.url + "/v2/models/hedged/infer", json=slow_body(),
                                                            timeout=30).status_code, range(400)))
        assert answers == [200] * 400
        m = requests.get(f"http://127.0.0.1:{r.metrics_port}/metrics").text
        hedges = sum(float(x) for x in re.findall(r'^flotilla_fleet_hedges_total\{model="hedged"\} (\S+)', m, re.M))
        wins = sum(float(x) for x in re.findall(r'^flotilla_fleet_hedge_wins_total\{model="hedged"\} (\S+)', m, re.M))
        assert 1 <= hedges <= 0.05 * 400 + 1, m
        assert wins >= 1
    finally:
        for w in workers:
            w.stop(signal.SIGKILL)
        r.stop()




def test_feast_and_drift_endpoints_go_to_a_worker_that_has_them(tmp_path):
    features = tmp_path / "features"
    features.mkdir()
    (features / "repo.toml").write_text(TXN_VIEW.format(stream=""))
    r = Router()
    w = None
    try:
        w = Server(EXAMPLES, "--join", r.url, "--worker-id", "fw", "--feature-repo", str(features),
                   "--heartbeat-ms", "200")
        r.wait_workers(["fw"])
        assert r.fleet()["workers"][0]["features"] is True
        push = requests.post(r.url + "/push", json={"push_source_name": "txn_push", "df": {
            "card_id": [7], "event_timestamp": ["2026-11-02T00:00:00Z"], "amount": [12.5]}})
        assert push.status_code == 200 and push.json() == {"applied": 1, "stale": 0}, push.text
        got = requests.post(r.url + "/get-online-features",
                            json={"features": ["txn:amount"], "entities": {"card_id": [7]}}).json()
        assert got["results"][1]["values"] == [12.5]
        bad = requests.post(r.url + "/push", json={"push_source_name": "nope", "df": {"card_id": [1]}})
        assert bad.status_code == 404 and "unknown push source" in bad.json()["error"]
        channel = grpc.insecure_channel(r.grpc)
        info = channel.unary_unary("/feast.serving.ServingService/GetFeastServingInfo",
                                   request_serializer=lambda _: b"", response_deserializer=lambda b: b)
        info(None, timeout=10)
        direct = requests.get(w.url + "/v2/models/fraud_xgb/drift")
        routed = requests.get(r.url + "/v2/models/fraud_xgb/drift")
        assert direct.status_code == routed.status_code == 200
        # the router answers with the fleet's view: the worker's document, plus its scope and workers
        assert routed.json().keys() == direct.json().keys() | {"scope", "workers"}
        assert routed.json()["scope"] == "fleet" and routed.json()["workers"] == ["fw"]
        assert requests.get(r.url + "/v2/models/nope/drift").status_code == 404
    finally:
        if w:
            w.stop(signal.SIGKILL)
        r.stop()


# --- NATS JetStream KV registry -------------------------------------------------------------

class Nats:
    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="flotilla-nats-")
        self.start()

    def start(self):
        exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.proc = subprocess.Popen([exe, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", self.port)) == 0, timeout=30, what="nats")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def test_nats_registry_two_routers_survive_a_nats_restart(repo):
    nats = Nats()
    url = f"nats://127.0.0.1:{nats.port}"
    routers = [Router("--registry", url, "--worker-ttl-ms", "1500") for _ in range(2)]
    workers = []
    try:
        workers = [Server(repo, "--join", url, "--worker-id", f"n{i}", "--feature-repo", "none",
                          "--heartbeat-ms", "300", env=DELAY) for i in range(2)]
        for r in routers:
            r.wait_workers(["n0", "n1"])

        def serve_all(n=20):
            for r in routers:
                for _ in range(n):
                    resp = requests.post(r.url + "/v2/models/simple/infer", json=simple_body(), timeout=10)
                    assert resp.status_code == 200, resp.text

        serve_all()
        nats.stop()
        wait_for(lambda: all(r.fleet()["registry_frozen"] for r in routers), timeout=10, what="routers frozen")
        time.sleep(2.5)  # past the TTL: the last-known view holds while the registry is away
        serve_all()
        assert all(len(r.fleet()["workers"]) == 2 for r in routers)
        nats.start()
        wait_for(lambda: not any(r.fleet()["registry_frozen"] for r in routers), timeout=30,
                 what="routers watching again")
        time.sleep(2.0)
        serve_all()
        for r in routers:
            r.wait_workers(["n0", "n1"])
        # a worker that leaves disappears from both routers through the registry
        assert workers[1].stop() == 0
        for r in routers:
            wait_for(lambda: [w["id"] for w in r.fleet()["workers"]] == ["n0"], timeout=15, what="n1 gone")
        serve_all()
    finally:
        for w in workers:
            w.stop(signal.SIGKILL)
        for r in routers:
            r.stop()
        nats.stop()


# --- the README's fleet example ---------------------------------------------------------------

def readme_block(marker):
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {marker} -->\s*```sh\n(.*?)```", text, re.S)
    assert m, f"README has no block after <!-- {marker} -->"
    return m.group(1)


@contextlib.contextmanager
def readme_shell(marker, tmp_path, wait=True):
    """The README's block after `<!-- marker -->`, pasted into bash in a copy of the repository's
    examples (its `/tmp/` paths moved under `tmp_path`, no FLOTILLA_ variables); yields the shell
    process and its folder, and stops its whole process group after. `wait`: the shell waits for
    what the block started in the background."""
    work = tmp_path / "checkout"
    work.mkdir()
    shutil.copytree(ROOT / "examples", work / "examples")
    # README paths under /tmp/ move under tmp_path first, so a binary that lives under /tmp stays put
    script = readme_block(marker).replace("/tmp/", f"{tmp_path}/").replace("target/release/flotilla", BIN)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOTILLA_")}
    proc = subprocess.Popen(["bash", "-c", script + ("\nwait" if wait else "")], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        yield proc, work
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_readme_fleet_example(tmp_path):
    """The README's fleet block, pasted into a shell in a copy of the repository folder."""
    with readme_shell("fleet-example", tmp_path) as (proc, work):
        wait_for(lambda: requests.get("http://127.0.0.1:8000/v2/fleet", timeout=1).json()["workers"].__len__() == 3
                 if _up("http://127.0.0.1:8000/v2/health/live") else False, timeout=120, what="the README fleet")
        r = requests.post("http://127.0.0.1:8000/v2/models/simple/infer", json=simple_body(), timeout=10)
        assert r.status_code == 200, r.text
        classes = sorted(w["capacity_class"] for w in requests.get("http://127.0.0.1:8000/v2/fleet").json()["workers"])
        assert classes == ["guaranteed", "opportunistic", "opportunistic"]
        # each worker its own embedded store under .flotilla/workers/<id>/
        stores = sorted(str(p.relative_to(work)) for p in work.rglob("online.redb"))
        assert len(stores) == 3 and all(s.startswith(".flotilla/workers/") for s in stores), stores


def _up(url):
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False
