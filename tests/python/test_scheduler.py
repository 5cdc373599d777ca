"""The scheduler through the real server and real clients: dynamic batching on every engine
(tree, ONNX Runtime, tract, text) gives each client exactly what it gets unbatched, with fewer
executions; a full queue answers 429 + Retry-After / RESOURCE_EXHAUSTED at once; a request whose
timeout passes in the queue is answered 504 / DEADLINE_EXCEEDED; bad scheduling settings are
load errors; bad `priority` / `timeout` parameters are 400s."""
import os
import re
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import EXAMPLES, ROOT, Server

sys.path.insert(0, str(ROOT / "scripts"))
import fetch_minilm  # noqa: E402

BATCHING = "\ndynamic_batching { max_queue_delay_microseconds: 2000 }\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n"


def add_model(repo, source, name, extra, drop=()):
    """Copies example model `source` to `name` with `extra` appended to its config."""
    shutil.copytree(EXAMPLES / source, repo / name)
    cfg = (repo / name / "config.pbtxt").read_text()
    cfg = re.sub(r'^name: "[^"]*"', f'name: "{name}"', cfg, count=1, flags=re.M)
    for pattern in drop:
        cfg = re.sub(pattern, "", cfg)
    (repo / name / "config.pbtxt").write_text(cfg + extra)


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("batching")
    for source in ("fraud_xgb", "simple", "mlp_iris"):
        shutil.copytree(EXAMPLES / source, repo / source)
        add_model(repo, source, source + "_batched", BATCHING, drop=[r"instance_group \[[^\]]*\]"])
    add_model(repo, "simple", "simple_tract_batched", BATCHING + 'backend: "tract"\n')
    files = fetch_minilm.ensure()
    for name, extra in (("minilm", ""), ("minilm_batched", BATCHING)):
        (repo / name / "1").mkdir(parents=True)
        cfg = fetch_minilm.CONFIG.read_text().replace('name: "minilm"', f'name: "{name}"')
        (repo / name / "config.pbtxt").write_text(cfg + extra)
        os.symlink(files["model"], repo / name / "1" / "model.onnx")
        os.symlink(files["tokenizer"], repo / name / "1" / "tokenizer.json")
    s = Server(repo, metrics=False)
    yield s
    assert s.alive(), s.log()
    assert s.stop() == 0, s.log()


def requests_for(model, i):
    """Model inputs of request i: numpy arrays with 1 to 3 rows, different per request."""
    rng = np.random.default_rng(i)
    rows = 1 + i % 3
    if model.startswith("fraud_xgb"):
        x = rng.normal(50, 30, (rows, 8)).astype(np.float32)
        x[rng.random(x.shape) < 0.1] = np.nan
        return [("input__0", x, "FP32")]
    if model.startswith("simple"):
        return [("INPUT0", rng.integers(-100, 100, (rows, 16)).astype(np.int32), "INT32"),
                ("INPUT1", rng.integers(-100, 100, (rows, 16)).astype(np.int32), "INT32")]
    if model.startswith("mlp_iris"):
        return [("input", rng.normal(4, 2, (rows, 4)).astype(np.float32), "FP32")]
    words = ["fraud", "card", "payment", "declined", "the", "merchant", "refund", "a", "chargeback"]
    text = [" ".join(rng.choice(words, 1 + (i * 7 + r) % 12)).encode() for r in range(rows)]
    return [("TEXT", np.array(text, dtype=np.object_).reshape(rows, 1), "BYTES")]


def run(client_mod, url, model, inputs):
    client = client_mod.InferenceServerClient(url)
    tensors = []
    for name, data, dt in inputs:
        t = client_mod.InferInput(name, list(data.shape), dt)
        t.set_data_from_numpy(data)
        tensors.append(t)
    result = client.infer(model, tensors)
    response = result.get_response()
    if isinstance(response, dict):  # HTTP: JSON header
        names = [o["name"] for o in response["outputs"]]
    else:  # gRPC: ModelInferResponse
        names = [o.name for o in response.outputs]
    return {n: result.as_numpy(n) for n in names}


def stats(url, model):
    s = httpclient.InferenceServerClient(url).get_inference_statistics(model)["model_stats"][0]
    return s["inference_count"], s["execution_count"]


@pytest.mark.parametrize("model", ["fraud_xgb", "simple", "simple_tract", "mlp_iris", "minilm"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_dynamic_batching_gives_every_client_its_unbatched_answer(batching_server, model, protocol):
    mod, url = (httpclient, batching_server.http) if protocol == "http" else (grpcclient, batching_server.grpc)
    unbatched = "simple" if model == "simple_tract" else model
    n = 48
    inputs = [requests_for(model, i) for i in range(n)]
    want = [run(mod, url, unbatched, x) for x in inputs]
    before = stats(batching_server.http, model + "_batched")
    barrier = threading.Barrier(16)

    def call(i):
        if i < 16:
            barrier.wait()
        return run(mod, url, model + "_batched", inputs[i])

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(call, range(n)))
    for i in range(n):
        assert got[i].keys() == want[i].keys()
        for name in want[i]:
            a, b = got[i][name], want[i][name]
            assert a.shape == b.shape and a.dtype == b.dtype, (i, name, a.shape, b.shape)
            if a.dtype.kind == "f":
                # text: padding to a longer row changes float summation order only
                assert np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True), (i, name)
            else:
                assert np.array_equal(a, b), (i, name)
    after = stats(batching_server.http, model + "_batched")
    rows = sum(1 + i % 3 for i in range(n))
    assert after[0] - before[0] == rows
    assert after[1] - before[1] < n, f"{n} concurrent requests ran in {after[1] - before[1]} executions"


def test_batch_statistics_record_joined_batches(batching_server):
    cfg = requests.get(f"{batching_server.url}/v2/models/fraud_xgb_batched/config").json()
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] in ("2000", 2000)
    s = httpclient.InferenceServerClient(batching_server.http).get_inference_statistics("fraud_xgb_batched")
    sizes = [int(b["batch_size"]) for b in s["model_stats"][0].get("batch_stats", [])]
    assert any(size > 3 for size in sizes), sizes


@pytest.fixture(scope="module")
def admission_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("admission")
    add_model(repo, "fraud_xgb", "tight", "\ndynamic_batching { default_queue_policy { max_queue_size: 1 } }\n",
              drop=[r"instance_group \[[^\]]*\]"])
    (repo / "tight" / "config.pbtxt").write_text(
        (repo / "tight" / "config.pbtxt").read_text() + "instance_group [ { count: 1 kind: KIND_CPU } ]\n")
    add_model(repo, "fraud_xgb", "bad_preferred", "\ndynamic_batching { preferred_batch_size: 9000 }\n")
    add_model(repo, "fraud_xgb", "bad_priority",
              "\ndynamic_batching { priority_levels: 2 default_priority_level: 3 }\n")
    shutil.copytree(EXAMPLES / "fraud_xgb", repo / "fraud_xgb")
    s = Server(repo, "--strict-readiness", "false", metrics=False)
    yield s
    assert s.alive(), s.log()
    assert s.stop() == 0, s.log()


def big_body(rows=8192):
    x = np.random.default_rng(1).normal(50, 30, (rows, 8)).astype(np.float32)
    return x


def test_full_queue_is_429_with_retry_after_at_once(admission_server):
    x = big_body()
    inp = httpclient.InferInput("input__0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    body, header_len = httpclient.InferenceServerClient.generate_request_body([inp])
    headers = {"Inference-Header-Content-Length": str(header_len)}
    url = f"{admission_server.url}/v2/models/tight/infer"
    seen = {}
    for _ in range(20):
        def post(_):
            r = requests.post(url, data=body, headers=headers, timeout=60)
            return r.status_code, r.headers.get("Retry-After"), r.content[:300]
        with ThreadPoolExecutor(24) as pool:
            for status, retry, text in pool.map(post, range(48)):
                seen.setdefault(status, (retry, text))
        if 429 in seen:
            break
    assert set(seen) <= {200, 429}, seen
    assert 200 in seen and 429 in seen, seen
    retry, text = seen[429]
    assert retry == "1"
    assert b"queue is full" in text and b"max_queue_size 1" in text, text


def test_full_queue_is_resource_exhausted_over_grpc(admission_server):
    x = big_body()
    inp = grpcclient.InferInput("input__0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    codes = set()

    def call(_):
        try:
            grpcclient.InferenceServerClient(admission_server.grpc).infer("tight", [inp])
            return "OK"
        except InferenceServerException as e:
            return e.status()

    for _ in range(20):
        with ThreadPoolExecutor(24) as pool:
            codes |= set(pool.map(call, range(48)))
        if "StatusCode.RESOURCE_EXHAUSTED" in codes:
            break
    assert codes <= {"OK", "StatusCode.RESOURCE_EXHAUSTED"}, codes
    assert "StatusCode.RESOURCE_EXHAUSTED" in codes, codes


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_timeout_that_passes_in_the_queue_is_504_without_running(admission_server, protocol):
    mod, url = (httpclient, admission_server.http) if protocol == "http" else (grpcclient, admission_server.grpc)
    client = mod.InferenceServerClient(url)
    x = np.ones((1, 8), dtype=np.float32)
    inp = mod.InferInput("input__0", [1, 8], "FP32")
    inp.set_data_from_numpy(x)
    before = stats(admission_server.http, "fraud_xgb")
    # 1 µs: gone before any instance can take it (Triton's clients send `timeout` in µs)
    with pytest.raises(InferenceServerException) as e:
        client.infer("fraud_xgb", [inp], timeout=1)
    if protocol == "http":
        assert "timed out" in str(e.value)
    else:
        assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED", e.value
    assert stats(admission_server.http, "fraud_xgb")[1] == before[1], "it never ran"
    assert client.infer("fraud_xgb", [inp], timeout=60_000_000).as_numpy("output__0").shape == (1, 1)


def test_timeout_status_code_over_rest(admission_server):
    body = {"parameters": {"timeout": 1},
            "inputs": [{"name": "input__0", "shape": [1, 8], "datatype": "FP32", "data": [1.0] * 8}]}
    r = requests.post(f"{admission_server.url}/v2/models/fraud_xgb/infer", json=body)
    assert r.status_code == 504, r.text


@pytest.mark.parametrize("param,value", [("priority", -1), ("priority", "high"), ("timeout", -5), ("timeout", 1.5)])
def test_bad_scheduling_parameters_are_400(admission_server, param, value):
    body = {"parameters": {param: value},
            "inputs": [{"name": "input__0", "shape": [1, 8], "datatype": "FP32", "data": [1.0] * 8}]}
    r = requests.post(f"{admission_server.url}/v2/models/fraud_xgb/infer", json=body)
    assert r.status_code == 400 and param in r.json()["error"], r.text


def test_priority_parameter_is_accepted(admission_server):
    body = {"parameters": {"priority": 1},
            "inputs": [{"name": "input__0", "shape": [1, 8], "datatype": "FP32", "data": [1.0] * 8}]}
    assert requests.post(f"{admission_server.url}/v2/models/fraud_xgb/infer", json=body).status_code == 200


@pytest.mark.parametrize("model,fragment", [
    ("bad_preferred", "preferred_batch_size 9000"),
    ("bad_priority", "default_priority_level 3"),
])
def test_inconsistent_scheduling_settings_are_load_errors(admission_server, model, fragment):
    index = requests.post(f"{admission_server.url}/v2/repository/index", json={}).json()
    entry = next(e for e in index if e["name"] == model)
    assert entry["state"] == "UNAVAILABLE" and fragment in entry["reason"], entry
