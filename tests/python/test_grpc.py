"""tritonclient.grpc against the example repository: unary, streaming, raw and typed contents."""
import queue
from functools import partial

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc


@pytest.fixture(scope="module")
def client(server):
    return grpcclient.InferenceServerClient(server.grpc)


def simple_inputs(batch=1):
    a = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16)
    b = np.full((batch, 16), 5, dtype=np.int32)
    i0 = grpcclient.InferInput("INPUT0", list(a.shape), "INT32")
    i1 = grpcclient.InferInput("INPUT1", list(b.shape), "INT32")
    i0.set_data_from_numpy(a)
    i1.set_data_from_numpy(b)
    return a, b, [i0, i1]


def test_health_metadata_config(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("simple")
    md = client.get_model_metadata("simple", as_json=True)
    assert md["inputs"][0] == {"name": "INPUT0", "datatype": "INT32", "shape": ["-1", "16"]}
    cfg = client.get_model_config("simple", as_json=True)["config"]
    assert cfg["max_batch_size"] == 8
    assert cfg["input"][1]["name"] == "INPUT1"
    assert client.get_server_metadata().name == "triton"


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_infer(client, batch):
    a, b, inputs = simple_inputs(batch)
    r = client.infer("simple", inputs, request_id="g1",
                     outputs=[grpcclient.InferRequestedOutput("OUTPUT0"), grpcclient.InferRequestedOutput("OUTPUT1")])
    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), a - b)
    assert r.get_response().id == "g1"


@pytest.mark.parametrize("algo", ["gzip", "deflate"])
def test_compression(client, algo):
    a, b, inputs = simple_inputs(4)
    r = client.infer("simple", inputs, compression_algorithm=algo)
    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a + b)


def test_output_selection_and_classification(client):
    a, b, inputs = simple_inputs()
    r = client.infer("simple", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT1", class_count=3)])
    assert [o.name for o in r.get_response().outputs] == ["OUTPUT1"]
    top = r.as_numpy("OUTPUT1")
    assert top.shape == (1, 3)
    # a - b = i - 5: the three largest are indices 15, 14, 13
    assert [t.decode() for t in top[0]] == ["10:15", "9:14", "8:13"]


def test_async_infer(client):
    a, b, inputs = simple_inputs(2)
    results = queue.Queue()
    for _ in range(6):
        client.async_infer("simple", inputs, partial(lambda q, result, error: q.put((result, error)), results))
    for _ in range(6):
        r, e = results.get(timeout=30)
        assert e is None
        np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a + b)


def test_stream_infer(client):
    results = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i in range(5):
            a, b, inputs = simple_inputs(1 + i % 3)
            client.async_stream_infer("simple", inputs, request_id=str(i))
        seen = {}
        for _ in range(5):
            r, e = results.get(timeout=30)
            assert e is None, e
            seen[r.get_response().id] = r
        assert sorted(seen) == ["0", "1", "2", "3", "4"]
        # a bad request on the stream gets an error message, and the stream keeps working
        bad = grpcclient.InferInput("NOPE", [1, 16], "INT32")
        bad.set_data_from_numpy(np.zeros((1, 16), dtype=np.int32))
        client.async_stream_infer("simple", [bad], request_id="bad")
        r, e = results.get(timeout=30)
        assert e is not None and "unknown input 'NOPE'" in str(e)
        a, b, inputs = simple_inputs()
        client.async_stream_infer("simple", inputs, request_id="after")
        r, e = results.get(timeout=30)
        assert e is None and r.get_response().id == "after"
    finally:
        client.stop_stream()


def test_typed_contents_and_raw(server):
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc))
    req = service_pb2.ModelInferRequest(model_name="simple")
    for name, vals in [("INPUT0", list(range(16))), ("INPUT1", [2] * 16)]:
        t = req.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        t.contents.int_contents.extend(vals)
    resp = stub.ModelInfer(req)
    assert len(resp.raw_output_contents) == 2
    out0 = np.frombuffer(resp.raw_output_contents[0], dtype=np.int32)
    np.testing.assert_array_equal(out0, np.arange(16) + 2)
    # raw contents count mismatch -> INVALID_ARGUMENT
    req = service_pb2.ModelInferRequest(model_name="simple")
    req.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
    req.inputs.add(name="INPUT1", datatype="INT32", shape=[1, 16])
    req.raw_input_contents.append(np.zeros(16, dtype=np.int32).tobytes())
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents" in e.value.details()


def test_statistics_and_index(client):
    _, _, inputs = simple_inputs()
    client.infer("simple", inputs)
    stats = client.get_inference_statistics("simple", as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) >= 1
    assert "compute_infer" in stats["inference_stats"]
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "simple", "version": "1", "state": "READY"} in index


def test_unimplemented_rpcs_answer_at_once(client):
    for call in (client.get_system_shared_memory_status, client.get_cuda_shared_memory_status,
                 client.get_trace_settings, client.get_log_settings):
        with pytest.raises(Exception) as e:
            call()
        assert "UNIMPLEMENTED" in str(e.value) or "not supported" in str(e.value)


def test_health_and_reflection(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    channel = grpc.insecure_channel(server.grpc)
    health = health_pb2_grpc.HealthStub(channel)
    for svc in ("", "inference.GRPCInferenceService"):
        assert health.Check(health_pb2.HealthCheckRequest(service=svc)).status == \
            health_pb2.HealthCheckResponse.SERVING
    db = ProtoReflectionDescriptorDatabase(channel)
    services = db.get_services()
    assert "inference.GRPCInferenceService" in services
