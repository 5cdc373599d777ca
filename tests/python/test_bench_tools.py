"""The benchmark tools of crates/bench against real servers: flotilla-load (closed and open loop,
HTTP and gRPC kinds, answers counted by outcome) and flotilla-floor (fixed answers that
tritonclient accepts over HTTP and gRPC)."""
import json
import pathlib
import subprocess

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import BIN, EXAMPLES, free_port, wait_for

TOOLS = pathlib.Path(BIN).parent
LOAD, FLOOR = TOOLS / "flotilla-load", TOOLS / "flotilla-floor"

GOOD = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
                   {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}]}


def mix(tmp_path):
    kinds = [
        {"name": "good_http", "weight": 3, "http": {"path": "/v2/models/simple/infer", "json": GOOD}},
        {"name": "good_grpc", "weight": 2, "grpc": {"model_name": "simple", "inputs": GOOD["inputs"]}},
        {"name": "malformed", "weight": 1, "http": {"path": "/v2/models/simple/infer", "text": "{\"inputs\": [",
                                                      "content_type": "application/json"}},
        {"name": "wrong_grpc", "weight": 1, "grpc": {"model_name": "simple", "inputs": GOOD["inputs"][:1]}},
    ]
    path = tmp_path / "mix.json"
    path.write_text(json.dumps({"kinds": kinds}))
    return path


def run_load(server, tmp_path, *extra, connections=4):
    out = tmp_path / "load.json"
    subprocess.run([str(LOAD), "--mix", str(mix(tmp_path)), "--http", server.http, "--grpc", server.grpc,
                    "--duration", "1", "--connections", str(connections), "--out", str(out), *extra],
                   check=True, timeout=60)
    return json.loads(out.read_text())


def test_closed_loop_counts_every_answer_by_kind_and_outcome(server, tmp_path):
    r = run_load(server, tmp_path)
    kinds = r["kinds"]
    assert r["mode"] == "closed" and r["answered"] > 20
    assert set(kinds["good_http"]) == {"200"} and set(kinds["good_grpc"]) == {"grpc Ok"}, kinds
    assert set(kinds["malformed"]) == {"400"}, kinds
    assert set(kinds["wrong_grpc"]) == {"grpc InvalidArgument"}, kinds
    assert r["ok"] == kinds["good_http"]["200"]["count"] + kinds["good_grpc"]["grpc Ok"]["count"]
    assert r["other"] == kinds["malformed"]["400"]["count"] + kinds["wrong_grpc"]["grpc InvalidArgument"]["count"]
    assert sum(sum(second) for second in r["timeline"]) == r["answered"]
    row = kinds["good_http"]["200"]
    assert 0 < row["p50_us"] <= row["p99_us"] <= row["max_us"]


def test_open_loop_offers_the_rate_it_is_given(server, tmp_path):
    r = run_load(server, tmp_path, "--rate", "200", connections=32)
    assert r["mode"] == "open" and r["offered_rate"] == 200
    # one second at 200/s: the schedule's count is exact to a tick, whatever the server does
    assert 180 <= r["scheduled"] <= 200, r
    assert r["answered"] + r["not_sent"] <= r["scheduled"]
    assert r["answered"] >= r["scheduled"] * 0.9, r
    assert "scheduled_p99_us" in r["kinds"]["good_http"]["200"]


def test_a_mix_it_cannot_use_is_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kinds": [{"name": "x", "weight": -1, "http": {"path": "/"}}]}))
    out = subprocess.run([str(LOAD), "--mix", str(bad), "--http", "127.0.0.1:1"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode != 0 and "weight must be a positive number" in out.stderr
    http_only = tmp_path / "grpc.json"
    http_only.write_text(json.dumps({"kinds": [{"name": "g", "weight": 1, "grpc": {"model_name": "m", "inputs": []}}]}))
    out = subprocess.run([str(LOAD), "--mix", str(http_only)], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "give --grpc" in out.stderr


@pytest.fixture
def floor():
    http, grpc = free_port(), free_port()
    proc = subprocess.Popen([str(FLOOR), "--config", str(EXAMPLES / "simple" / "config.pbtxt"),
                             "--http-port", str(http), "--grpc-port", str(grpc)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def ready():
        try:
            return requests.get(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False
    wait_for(ready, timeout=30, what="flotilla-floor ready")
    yield http, grpc
    proc.terminate()
    proc.wait(10)


def test_floor_answers_what_tritonclient_and_perf_analyzer_ask(floor):
    http, grpc = floor
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    h = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
    meta = h.get_model_metadata("simple")
    assert [i["name"] for i in meta["inputs"]] == ["INPUT0", "INPUT1"]
    assert meta["inputs"][0]["shape"] == [-1, 16] and meta["inputs"][0]["datatype"] == "INT32"
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    for i in inputs:
        i.set_data_from_numpy(a, binary_data=False)
    out = h.infer("simple", inputs)
    # a fixed answer of the configured outputs' shape and type, zeros
    assert out.as_numpy("OUTPUT0").shape == (1, 16) and not out.as_numpy("OUTPUT0").any()
    g = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}")
    assert g.is_server_live() and g.is_model_ready("simple")
    assert g.get_model_config("simple").config.name == "simple"
    assert g.get_inference_statistics("simple").model_stats[0].name == "simple"
    ginputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    for i in ginputs:
        i.set_data_from_numpy(a)
    res = g.infer("simple", ginputs, request_id="r7")
    assert res.get_response().id == "r7"
    assert res.as_numpy("OUTPUT1").dtype == np.int32 and res.as_numpy("OUTPUT1").shape == (1, 16)
    # the body is never decoded: even a malformed one gets the fixed answer
    r = requests.post(f"http://127.0.0.1:{http}/v2/models/simple/infer", data=b"{", timeout=5)
    assert r.status_code == 200 and r.json()["outputs"][0]["name"] == "OUTPUT0"
