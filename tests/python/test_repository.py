"""Repository control: explicit load/unload, poll-mode hot reload under load, failed loads."""
import shutil
import threading
import time

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import EXAMPLES, Server


def infer_simple(client):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    return client.infer("simple", inputs)


def test_explicit_load_unload(repo_copy):
    s = Server(repo_copy, "--model-control-mode", "explicit", "--load-model", "simple", metrics=False)
    try:
        c = httpclient.InferenceServerClient(s.http)
        assert c.is_model_ready("simple")
        assert not c.is_model_ready("mlp_iris")
        index = {m["name"]: m for m in c.get_model_repository_index()}
        assert index["simple"]["state"] == "READY"
        assert "state" not in index["mlp_iris"]
        c.load_model("mlp_iris")
        assert c.is_model_ready("mlp_iris")
        c.unload_model("simple")
        assert not c.is_model_ready("simple")
        with pytest.raises(InferenceServerException) as e:
            infer_simple(c)
        assert "unloaded" in str(e.value)
        index = {m["name"]: m for m in c.get_model_repository_index()}
        assert index["simple"]["state"] == "UNAVAILABLE"
        c.load_model("simple")
        infer_simple(c)
        # load with a config override (Triton's `config` parameter)
        cfg = c.get_model_config("simple")
        cfg["max_batch_size"] = 2
        import json
        c.load_model("simple", config=json.dumps(cfg))
        assert c.get_model_config("simple")["max_batch_size"] == 2
        # a partial override: the rest is completed from the ONNX graph, as Triton does
        c.load_model("simple", config='{"max_batch_size":"16"}')
        cfg = c.get_model_config("simple")
        assert cfg["max_batch_size"] == 16 and [i["name"] for i in cfg["input"]] == ["INPUT0", "INPUT1"]
        a16 = np.zeros((16, 16), dtype=np.int32)
        inputs = [httpclient.InferInput(n, [16, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        for i in inputs:
            i.set_data_from_numpy(a16)
        assert c.infer("simple", inputs).as_numpy("OUTPUT0").shape == (16, 16)
        with pytest.raises(InferenceServerException) as e:
            c.load_model("simple", config='"parameters": {"config": {{"max_batch_size": "16"}}}')
        assert "failed to load" in str(e.value)
        with pytest.raises(InferenceServerException) as e:
            c.load_model("does_not_exist")
        assert "does_not_exist" in str(e.value)
        # gRPC repository API
        g = grpcclient.InferenceServerClient(s.grpc)
        g.unload_model("mlp_iris")
        assert not g.is_model_ready("mlp_iris")
        g.load_model("mlp_iris")
        assert g.is_model_ready("mlp_iris")
        ready = g.get_model_repository_index(as_json=True)["models"]
        assert all(m.get("state") == "READY" for m in ready if m["name"] in ("simple", "mlp_iris"))
    finally:
        assert s.stop() == 0


def write_model_atomically(src, dst):
    tmp = dst.with_suffix(".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


def test_poll_hot_reload_under_load_has_zero_failures(repo_copy):
    s = Server(repo_copy, "--model-control-mode", "poll", "--repository-poll-secs", "1", metrics=False)
    stop = threading.Event()
    failures, counts = [], {"ok": 0}
    versions_seen = set()

    def loop(protocol):
        if protocol == "http":
            c = httpclient.InferenceServerClient(s.http)
        else:
            c = grpcclient.InferenceServerClient(s.grpc)
        mod = httpclient if protocol == "http" else grpcclient
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        while not stop.is_set():
            inputs = [mod.InferInput("INPUT0", [1, 16], "INT32"), mod.InferInput("INPUT1", [1, 16], "INT32")]
            inputs[0].set_data_from_numpy(a)
            inputs[1].set_data_from_numpy(a)
            try:
                r = c.infer("simple", inputs)
                out = r.as_numpy("OUTPUT0")
                resp = r.get_response()
                versions_seen.add(resp["model_version"] if protocol == "http" else resp.model_version)
                if not np.array_equal(out, a + a):
                    failures.append(f"wrong answer {out}")
                counts["ok"] += 1
            except Exception as e:  # noqa: BLE001 - every failure counts
                failures.append(repr(e))

    threads = [threading.Thread(target=loop, args=(p,)) for p in ("http", "http", "grpc")]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        model = repo_copy / "simple" / "1" / "model.onnx"
        # 1) rewrite version 1 in place (same content, new mtime) -> reload of version 1
        for _ in range(3):
            time.sleep(0.3)
            write_model_atomically(model, model)
            time.sleep(1.5)
        # 2) add version 2 -> latest policy moves to version 2
        (repo_copy / "simple" / "2").mkdir()
        write_model_atomically(model, repo_copy / "simple" / "2" / "model.onnx")
        deadline = time.time() + 20
        while "2" not in versions_seen and time.time() < deadline:
            time.sleep(0.2)
        # 3) a broken version 3: the index shows why, version 2 keeps serving
        (repo_copy / "simple" / "3").mkdir()
        (repo_copy / "simple" / "3" / "model.onnx").write_bytes(b"not an onnx model")
        time.sleep(3)
        stop.set()
        for t in threads:
            t.join()
        assert failures == [], failures[:5]
        assert counts["ok"] > 50
        assert versions_seen >= {"1", "2"}
        c = httpclient.InferenceServerClient(s.http)
        assert c.get_model_metadata("simple")["versions"] == ["2"]
        index = [m for m in c.get_model_repository_index() if m["name"] == "simple"]
        v3 = [m for m in index if m.get("version") == "3"]
        assert v3 and v3[0]["state"] == "UNAVAILABLE" and "ONNX" in v3[0]["reason"], index
        infer_simple(c)
        # 4) the model folder disappears -> unloaded
        shutil.rmtree(repo_copy / "mlp_iris")
        deadline = time.time() + 10
        while c.is_model_ready("mlp_iris") and time.time() < deadline:
            time.sleep(0.2)
        assert not c.is_model_ready("mlp_iris")
    finally:
        stop.set()
        assert s.stop() == 0


def test_bad_config_keeps_old_version_serving(repo_copy):
    s = Server(repo_copy, "--model-control-mode", "explicit", "--load-model", "*", metrics=False)
    try:
        c = httpclient.InferenceServerClient(s.http)
        assert c.is_model_ready("simple") and c.is_model_ready("mlp_iris")
        (repo_copy / "simple" / "config.pbtxt").write_text("name: \"simple\"\nmax_batch_size: \"eight\"\n")
        with pytest.raises(InferenceServerException) as e:
            c.load_model("simple")
        assert "config.pbtxt" in str(e.value)
        infer_simple(c)  # still serving the previous load
        row = [m for m in c.get_model_repository_index() if m["name"] == "simple"][0]
        assert row["state"] == "READY"
    finally:
        assert s.stop() == 0


def test_config_autocomplete_without_pbtxt(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES / "mlp_iris", repo / "iris_auto")
    (repo / "iris_auto" / "config.pbtxt").unlink()
    s = Server(repo, metrics=False)
    try:
        c = httpclient.InferenceServerClient(s.http)
        cfg = c.get_model_config("iris_auto")
        assert cfg["max_batch_size"] == 4
        assert cfg["input"][0]["name"] == "input" and cfg["input"][0]["data_type"] == "TYPE_FP32"
        assert [int(d) for d in cfg["input"][0]["dims"]] == [4]
        assert cfg["output"][0]["name"] == "probabilities"
        md = c.get_model_metadata("iris_auto")
        assert md["inputs"][0]["shape"] == [-1, 4]
        inp = httpclient.InferInput("input", [2, 4], "FP32")
        inp.set_data_from_numpy(np.ones((2, 4), dtype=np.float32))
        assert c.infer("iris_auto", [inp]).as_numpy("probabilities").shape == (2, 3)
    finally:
        assert s.stop() == 0


def test_strict_readiness_and_failed_model_reason(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES, repo)
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"garbage")
    s = Server(repo, metrics=False)
    try:
        assert requests.get(f"{s.url}/v2/health/live").status_code == 200
        assert requests.get(f"{s.url}/v2/health/ready").status_code == 503
        r = requests.post(f"{s.url}/v2/models/broken/infer", json={"inputs": []})
        assert r.status_code == 503 and "not ready" in r.json()["error"]
        row = [m for m in requests.post(f"{s.url}/v2/repository/index").json() if m["name"] == "broken"]
        assert row[0]["state"] == "UNAVAILABLE" and "ONNX" in row[0]["reason"]
        assert requests.post(f"{s.url}/v2/models/simple/infer", json={"inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [0] * 16},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [0] * 16}]}).status_code == 200
    finally:
        assert s.stop() == 0
    s = Server(repo, "--strict-readiness", "false", metrics=False)
    try:
        assert requests.get(f"{s.url}/v2/health/ready").status_code == 200
    finally:
        assert s.stop() == 0


def test_graceful_drain_finishes_in_flight(repo_copy):
    s = Server(repo_copy, metrics=False)
    c = httpclient.InferenceServerClient(s.http, concurrency=8)
    a = np.zeros((8, 16), dtype=np.int32)
    inputs = [httpclient.InferInput("INPUT0", [8, 16], "INT32"), httpclient.InferInput("INPUT1", [8, 16], "INT32")]
    for i in inputs:
        i.set_data_from_numpy(a)
    pending = [c.async_infer("simple", inputs) for _ in range(32)]
    assert s.stop() == 0
    for p in pending:
        p.get_result()  # every request accepted before SIGTERM is answered
