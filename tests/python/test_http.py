"""tritonclient.http and plain HTTP against the example repository."""
import gzip
import json
import zlib

import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.http as httpclient

from conftest import EXAMPLES


@pytest.fixture(scope="module")
def client(server):
    return httpclient.InferenceServerClient(server.http, concurrency=4)


def simple_inputs(batch=1, binary=True):
    a = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16)
    b = np.ones((batch, 16), dtype=np.int32) * 3
    i0 = httpclient.InferInput("INPUT0", list(a.shape), "INT32")
    i1 = httpclient.InferInput("INPUT1", list(b.shape), "INT32")
    i0.set_data_from_numpy(a, binary_data=binary)
    i1.set_data_from_numpy(b, binary_data=binary)
    return a, b, [i0, i1]


def test_health_and_server_metadata(client, server):
    assert client.is_server_live()
    assert client.is_server_ready()
    md = client.get_server_metadata()
    assert md["name"] == "triton"  # what Triton's clients check; --server-name changes it
    assert "classification" in md["extensions"]
    assert requests.get(server.url + "/v2").json()["version"]
    # Open Inference Protocol bodies (the KServe SDK reads them; tritonclient reads the status)
    assert requests.get(server.url + "/v2/health/live").json() == {"live": True}
    assert requests.get(server.url + "/v2/health/ready").json() == {"ready": True}
    assert requests.get(server.url + "/v2/models/simple/ready").json() == {"name": "simple", "ready": True}


def test_model_metadata_and_config(client):
    assert client.is_model_ready("simple")
    assert client.is_model_ready("simple", "1")
    assert not client.is_model_ready("simple", "7")
    md = client.get_model_metadata("simple")
    assert md["name"] == "simple" and md["versions"] == ["1"]
    assert md["platform"] == "onnxruntime_onnx"
    assert md["inputs"] == [
        {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]},
        {"name": "INPUT1", "datatype": "INT32", "shape": [-1, 16]},
    ]
    cfg = client.get_model_config("simple")
    assert cfg["max_batch_size"] == 8
    assert cfg["input"][0]["data_type"] == "TYPE_INT32"
    assert [int(d) for d in cfg["input"][0]["dims"]] == [16]
    assert cfg["version_policy"] == {"latest": {"num_versions": 1}}


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("batch", [1, 8])
def test_simple_infer(client, binary, batch):
    a, b, inputs = simple_inputs(batch, binary)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary),
    ]
    r = client.infer("simple", inputs, outputs=outputs, request_id="req-42")
    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), a - b)
    assert r.get_response()["id"] == "req-42"
    assert r.get_response()["model_version"] == "1"


def test_default_outputs_are_all_outputs(client):
    a, b, inputs = simple_inputs()
    r = client.infer("simple", inputs)
    np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), a - b)


def test_output_selection(client):
    a, b, inputs = simple_inputs()
    r = client.infer("simple", inputs, outputs=[httpclient.InferRequestedOutput("OUTPUT1")])
    names = [o["name"] for o in r.get_response()["outputs"]]
    assert names == ["OUTPUT1"]
    assert r.as_numpy("OUTPUT0") is None


def test_async_infer(client):
    a, b, inputs = simple_inputs(2)
    pending = [client.async_infer("simple", inputs) for _ in range(8)]
    for p in pending:
        np.testing.assert_array_equal(p.get_result().as_numpy("OUTPUT0"), a + b)


@pytest.mark.parametrize("algo", ["gzip", "deflate"])
def test_compression(client, algo):
    a, b, inputs = simple_inputs(4)
    r = client.infer(
        "simple", inputs, request_compression_algorithm=algo, response_compression_algorithm=algo
    )
    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a + b)


def test_compressed_raw_http(server):
    body = json.dumps({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
    ]}).encode()
    for enc, data in [("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))]:
        r = requests.post(server.url + "/v2/models/simple/infer", data=data,
                          headers={"Content-Encoding": enc, "Accept-Encoding": enc})
        assert r.status_code == 200, r.text
        assert r.headers["Content-Encoding"] == enc
        assert r.json()["outputs"][0]["data"] == [i + 1 for i in range(16)]


def test_nested_json_and_curl_style(server):
    # model_name/model_version in the body (as the KServe SDK sends them) are accepted
    body = {"id": "n1", "model_name": "simple", "model_version": "1", "inputs": [
        {"name": "INPUT0", "shape": [2, 16], "datatype": "INT32", "data": [[1] * 16, [2] * 16]},
        {"name": "INPUT1", "shape": [2, 16], "datatype": "INT32", "data": [[1] * 16, [1] * 16]},
    ], "outputs": [{"name": "OUTPUT0"}]}
    r = requests.post(server.url + "/v2/models/simple/versions/1/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "n1"
    assert out["outputs"] == [{"name": "OUTPUT0", "datatype": "INT32", "shape": [2, 16],
                               "data": [2] * 16 + [3] * 16}]


def iris_reference(x):
    sess = ort.InferenceSession(str(EXAMPLES / "mlp_iris" / "1" / "model.onnx"))
    return sess.run(None, {"input": x})[0]


def test_mlp_matches_onnxruntime(client):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 8, size=(64, 4)).astype(np.float32)
    inp = httpclient.InferInput("input", [64, 4], "FP32")
    inp.set_data_from_numpy(x)
    r = client.infer("mlp_iris", [inp])
    np.testing.assert_allclose(r.as_numpy("probabilities"), iris_reference(x), rtol=1e-5, atol=1e-6)


def test_classification(client):
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    ref = iris_reference(x)
    inp = httpclient.InferInput("input", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    for binary in (True, False):
        out = httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=2)
        r = client.infer("mlp_iris", [inp], outputs=[out])
        cls = r.as_numpy("probabilities")
        assert cls.shape == (2, 2)
        for row, probs in zip(cls, ref):
            top = np.argsort(-probs)[:2]
            parsed = [c.decode() if isinstance(c, bytes) else c for c in row]
            assert [int(p.split(":")[1]) for p in parsed] == list(top)
            assert abs(float(parsed[0].split(":")[0]) - probs[top[0]]) < 1e-5
            labels = ["setosa", "versicolor", "virginica"]
            assert parsed[0].split(":")[2] == labels[top[0]]


def test_statistics(client):
    _, _, inputs = simple_inputs()
    before = client.get_inference_statistics("simple")["model_stats"][0]
    for _ in range(3):
        client.infer("simple", inputs)
    stats = client.get_inference_statistics("simple")["model_stats"][0]
    assert stats["name"] == "simple" and stats["version"] == "1"
    assert stats["inference_count"] - before["inference_count"] == 3
    assert stats["execution_count"] - before["execution_count"] == 3
    for key in ["success", "fail", "queue", "compute_input", "compute_infer", "compute_output"]:
        assert set(stats["inference_stats"][key]) == {"count", "ns"}
    assert stats["inference_stats"]["success"]["count"] >= 3
    assert stats["inference_stats"]["success"]["ns"] > 0
    assert any(b["batch_size"] == 1 for b in stats["batch_stats"])
    every = client.get_inference_statistics()["model_stats"]
    assert {m["name"] for m in every} >= {"simple", "mlp_iris"}
    assert client.get_inference_statistics("simple", "1")["model_stats"][0]["version"] == "1"


def test_repository_index_in_none_mode(client):
    index = client.get_model_repository_index()
    by_name = {m["name"]: m for m in index}
    assert by_name["simple"]["state"] == "READY"
    with pytest.raises(Exception) as e:
        client.load_model("simple")
    assert "explicit" in str(e.value)


def test_metrics_endpoint(server):
    text = requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics").text
    assert 'flotilla_inference_requests_total{model="simple",outcome="success",version="1"}' in text
    assert "flotilla_inference_request_duration_seconds_bucket" in text
    assert 'flotilla_responses_total{code="200",endpoint="/v2/models/{model}/infer",protocol="http"}' in text
