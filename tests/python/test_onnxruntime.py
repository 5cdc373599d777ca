"""ONNX Runtime engine: picked when its library is given, parity with onnxruntime in Python, tract when asked
for or when no library is found, clear start errors, KIND_GPU falling back to CPU."""
import glob
import json
import os
import shutil
import subprocess

import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import BIN, EXAMPLES, Server
from test_models import minilm_path

TOL = dict(rtol=1e-5, atol=1e-5)


def ort_library():
    """libonnxruntime.so.X.Y.Z shipped inside the onnxruntime wheel this Python uses."""
    capi = os.path.join(os.path.dirname(ort.__file__), "capi")
    libs = sorted(p for p in glob.glob(os.path.join(capi, "libonnxruntime.*")) if ".so" in p or ".dylib" in p)
    if not libs:
        pytest.fail(f"no libonnxruntime in {capi} (tests/requirements.txt installs onnxruntime)")
    return libs[-1]


LIB = ort_library()
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def records(server):
    """The server's JSON log lines as dicts: level plus the event's fields."""
    out = []
    for line in server.lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        out.append({"level": rec.get("level"), **rec.get("fields", {})})
    return out


def engine_lines(server, model):
    return [r for r in records(server) if r.get("model") == model and "model runs on" in r.get("message", "")]


def iris(server):
    """Class probabilities of one iris row (every test infers once before it stops the server)."""
    inp = httpclient.InferInput("input", [1, 4], "FP32")
    inp.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32))
    return httpclient.InferenceServerClient(server.http).infer("mlp_iris", [inp]).as_numpy("probabilities")


@pytest.fixture(scope="module")
def ort_server():
    s = Server(EXAMPLES, "--onnxruntime-lib", LIB, metrics=False)
    yield s
    assert s.stop() == 0, s.log()


def test_log_and_config_say_onnxruntime_runs_the_models(ort_server):
    loaded = [r for r in records(ort_server) if r.get("message", "").startswith("ONNX Runtime loaded")]
    assert len(loaded) == 1 and loaded[0]["library"] == LIB, ort_server.log()
    for model in ["simple", "mlp_iris"]:
        lines = engine_lines(ort_server, model)
        assert len(lines) == 1 and lines[0]["provider"] == "CPUExecutionProvider", ort_server.log()
        cfg = requests.get(f"{ort_server.url}/v2/models/{model}/config", timeout=5).json()
        assert (cfg["platform"], cfg["backend"]) == ("onnxruntime_onnx", "onnxruntime")


def test_examples_match_onnxruntime_in_python(ort_server):
    rng = np.random.default_rng(7)
    client = httpclient.InferenceServerClient(ort_server.http)
    a, b = (rng.integers(-1000, 1000, size=(3, 16), dtype=np.int32) for _ in range(2))
    ref = ort.InferenceSession(str(EXAMPLES / "simple" / "1" / "model.onnx")).run(None, {"INPUT0": a, "INPUT1": b})
    ins = [httpclient.InferInput("INPUT0", [3, 16], "INT32"), httpclient.InferInput("INPUT1", [3, 16], "INT32")]
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(b)
    r = client.infer("simple", ins)
    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), ref[0])
    np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), ref[1])

    x = rng.normal(3.0, 2.0, size=(5, 4)).astype(np.float32)
    sess = ort.InferenceSession(str(EXAMPLES / "mlp_iris" / "1" / "model.onnx"))
    (want,) = sess.run(None, {"input": x})
    for mod, url in [(httpclient, ort_server.http), (grpcclient, ort_server.grpc)]:
        inp = mod.InferInput("input", [5, 4], "FP32")
        inp.set_data_from_numpy(x)
        got = mod.InferenceServerClient(url).infer("mlp_iris", [inp]).as_numpy("probabilities")
        np.testing.assert_allclose(got, want, **TOL)


def test_transformer_matches_onnxruntime_in_python(tmp_path):
    src = minilm_path()
    (tmp_path / "minilm" / "1").mkdir(parents=True)
    os.symlink(src, tmp_path / "minilm" / "1" / "model.onnx")
    s = Server(tmp_path, "--onnxruntime-lib", LIB, metrics=False)
    try:
        assert len(engine_lines(s, "minilm")) == 1, s.log()
        sess = ort.InferenceSession(src)
        rng = np.random.default_rng(5)
        for batch, seq in [(1, 7), (4, 33)]:
            ids = rng.integers(1000, 30000, size=(batch, seq), dtype=np.int64)
            ids[:, 0], ids[:, -1] = 101, 102
            mask = np.ones_like(ids)
            mask[-1, seq // 3:] = 0
            ref = sess.run(None, {"input_ids": ids, "attention_mask": mask})
            for mod, url in [(httpclient, s.http), (grpcclient, s.grpc)]:
                ins = [mod.InferInput("input_ids", [batch, seq], "INT64"),
                       mod.InferInput("attention_mask", [batch, seq], "INT64")]
                ins[0].set_data_from_numpy(ids)
                ins[1].set_data_from_numpy(mask)
                r = mod.InferenceServerClient(url).infer("minilm", ins)
                for out, want in zip(sess.get_outputs(), ref):
                    np.testing.assert_allclose(r.as_numpy(out.name), want, err_msg=out.name, **TOL)
    finally:
        assert s.stop() == 0, s.log()


def append_config(repo, model, text):
    with open(repo / model / "config.pbtxt", "a") as f:
        f.write("\n" + text + "\n")


def test_backend_tract_forces_tract(repo_copy):
    append_config(repo_copy, "simple", 'backend: "tract"')
    s = Server(repo_copy, "--onnxruntime-lib", LIB, metrics=False)
    try:
        assert engine_lines(s, "simple") == [], s.log()
        assert len(engine_lines(s, "mlp_iris")) == 1, s.log()
        cfg = requests.get(f"{s.url}/v2/models/simple/config", timeout=5).json()
        assert cfg["backend"] == "tract"
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        ins = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
        ins[0].set_data_from_numpy(a)
        ins[1].set_data_from_numpy(a)
        r = httpclient.InferenceServerClient(s.http).infer("simple", ins)
        np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), 2 * a)
    finally:
        assert s.stop() == 0, s.log()


def test_environment_variable_names_the_library():
    s = Server(EXAMPLES, metrics=False, env={"FLOTILLA_ONNXRUNTIME_LIB": LIB})
    try:
        assert len(engine_lines(s, "mlp_iris")) == 1, s.log()
        assert iris(s).shape == (1, 3)
    finally:
        assert s.stop() == 0, s.log()


def test_without_a_library_onnx_models_fall_back_to_tract_with_one_warning(tmp_path):
    # No flag, no ORT_DYLIB_PATH, no virtual environment, and a folder without .venv.
    s = Server(EXAMPLES, metrics=False, cwd=tmp_path,
               env={"FLOTILLA_ONNXRUNTIME_LIB": None, "ORT_DYLIB_PATH": None, "VIRTUAL_ENV": None})
    try:
        warnings = [r for r in records(s) if r["level"] == "WARN"]
        assert len(warnings) == 1, s.log()
        assert "fall back to tract" in warnings[0]["message"] and ".venv" in warnings[0]["reason"], s.log()
        assert engine_lines(s, "simple") == [] and engine_lines(s, "mlp_iris") == []
        assert abs(iris(s).sum() - 1) < 1e-5
    finally:
        assert s.stop() == 0, s.log()


@pytest.mark.parametrize("kind", ["missing", "not_a_library"])
def test_a_bad_library_path_is_a_clear_start_error(tmp_path, kind):
    path = tmp_path / "libonnxruntime.so"
    if kind == "not_a_library":
        path.write_text("not a shared library")
    p = subprocess.run([BIN, "serve", "--model-repository", str(EXAMPLES), "--host", "127.0.0.1",
                        "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
                        "--onnxruntime-lib", str(path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert f"cannot load ONNX Runtime from {path}" in p.stderr, p.stderr
    assert "listening" not in p.stderr


def test_intra_op_threads_parameter(repo_copy):
    append_config(repo_copy, "mlp_iris", 'parameters { key: "intra_op_thread_count" value { string_value: "3" } }')
    s = Server(repo_copy, "--onnxruntime-lib", LIB, metrics=False)
    try:
        (line,) = engine_lines(s, "mlp_iris")
        assert line["intra_op_threads"] == 3, s.log()
        assert iris(s).shape == (1, 3)
    finally:
        assert s.stop() == 0, s.log()


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA: KIND_GPU does not fall back")
def test_kind_gpu_without_cuda_falls_back_to_cpu(repo_copy):
    append_config(repo_copy, "mlp_iris", "instance_group [ { kind: KIND_GPU count: 2 } ]")
    s = Server(repo_copy, "--onnxruntime-lib", LIB, metrics=False)
    try:
        fallback = [r for r in records(s) if r.get("model") == "mlp_iris" and "KIND_GPU" in r.get("message", "")]
        assert len(fallback) == 1 and "falling back to CPU" in fallback[0]["message"], s.log()
        (line,) = engine_lines(s, "mlp_iris")
        assert (line["provider"], line["sessions"]) == ("CPUExecutionProvider", 2), s.log()
        inp = httpclient.InferInput("input", [2, 4], "FP32")
        x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
        inp.set_data_from_numpy(x)
        got = httpclient.InferenceServerClient(s.http).infer("mlp_iris", [inp]).as_numpy("probabilities")
        (want,) = ort.InferenceSession(str(repo_copy / "mlp_iris" / "1" / "model.onnx")).run(None, {"input": x})
        np.testing.assert_allclose(got, want, **TOL)
    finally:
        assert s.stop() == 0, s.log()
