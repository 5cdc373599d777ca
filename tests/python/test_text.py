"""Text models end to end: strings in, embeddings out, against the Python
tokenizers package + onnxruntime (scripts/fetch_minilm.py's `reference`)."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import ROOT, Server

sys.path.insert(0, str(ROOT / "scripts"))
import fetch_minilm  # noqa: E402

SENTENCES = [
    "Hello, world!",
    "A man is playing a guitar.",
    "Someone is playing an instrument.",
    "Ünïcödé: café, naïve, Straße, 東京タワー, emoji 🚀🙂, Ελληνικά",
    "",
    "   leading and trailing spaces, tabs\tand\nnewlines   ",
    " ".join(["a long sentence that goes on and on past the truncation limit"] * 30),
]

# max_batch_size 0 and dims [-1]: rows come as shape [N]; pooling none passes the
# graph's own pooled output (sentence-transformers' mean pooling inside the ONNX) through.
FLAT_CONFIG = """
backend: "text"
max_batch_size: 0
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "pooled" data_type: TYPE_FP32 dims: [ -1, 384 ] } ]
parameters { key: "pooling" value { string_value: "none" } }
parameters { key: "encoder_output" value { string_value: "461" } }
"""


@pytest.fixture(scope="module")
def files():
    return fetch_minilm.ensure()


@pytest.fixture(scope="module", params=["onnx-default", "tract"])
def server(request, files, tmp_path_factory):
    """One server per ONNX engine under the text backend: the default (ONNX Runtime when its
    library is found) and tract (`FLOTILLA_ONNXRUNTIME_LIB=none`)."""
    repo = tmp_path_factory.mktemp("text")
    # minilm: the committed example config (mean pooling, normalised, max_length 128)
    (repo / "minilm" / "1").mkdir(parents=True)
    shutil.copyfile(fetch_minilm.CONFIG, repo / "minilm" / "config.pbtxt")
    os.symlink(files["model"], repo / "minilm" / "1" / "model.onnx")
    os.symlink(files["tokenizer"], repo / "minilm" / "1" / "tokenizer.json")
    # minilm_auto: no config.pbtxt, tokenizer.json in the model folder: recognised and completed
    (repo / "minilm_auto" / "1").mkdir(parents=True)
    os.symlink(files["model"], repo / "minilm_auto" / "1" / "model.onnx")
    os.symlink(files["tokenizer"], repo / "minilm_auto" / "tokenizer.json")
    # minilm_flat: see FLAT_CONFIG
    (repo / "minilm_flat" / "1").mkdir(parents=True)
    (repo / "minilm_flat" / "config.pbtxt").write_text(FLAT_CONFIG)
    os.symlink(files["model"], repo / "minilm_flat" / "1" / "model.onnx")
    os.symlink(files["tokenizer"], repo / "minilm_flat" / "1" / "tokenizer.json")
    saved = os.environ.get("FLOTILLA_ONNXRUNTIME_LIB")
    if request.param == "tract":
        os.environ["FLOTILLA_ONNXRUNTIME_LIB"] = "none"
    try:
        s = Server(repo, metrics=False)
    finally:
        if saved is None:
            os.environ.pop("FLOTILLA_ONNXRUNTIME_LIB", None)
        else:
            os.environ["FLOTILLA_ONNXRUNTIME_LIB"] = saved
    if request.param == "tract":
        assert "ONNX Runtime loaded" not in s.log()
    yield s
    assert s.alive(), s.log()
    assert s.stop() == 0, s.log()


@pytest.fixture(scope="module")
def reference(files):
    return fetch_minilm.reference(SENTENCES)


def strings(items, shape=None):
    arr = np.array([s.encode() if isinstance(s, str) else s for s in items], dtype=np.object_)
    return arr.reshape(shape or (len(items), 1))


def embed(mod, url, items, model="minilm", output="embedding", shape=None):
    c = mod.InferenceServerClient(url)
    data = strings(items, shape)
    inp = mod.InferInput("TEXT", list(data.shape), "BYTES")
    inp.set_data_from_numpy(data)
    return c.infer(model, [inp]).as_numpy(output)


def cosine(a, b):
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_batch_matches_the_python_reference(server, reference, protocol):
    mod, url = (httpclient, server.http) if protocol == "http" else (grpcclient, server.grpc)
    got = embed(mod, url, SENTENCES)
    assert got.shape == (len(SENTENCES), 384) and got.dtype == np.float32
    cos = cosine(got, reference)
    assert cos.min() >= 1 - 1e-4, dict(zip(SENTENCES, cos))
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, reference, atol=2e-4)


def test_padding_in_a_batch_changes_nothing(server):
    batched = embed(httpclient, server.http, SENTENCES)
    for i, s in enumerate(SENTENCES):
        alone = embed(grpcclient, server.grpc, [s])[0]
        assert cosine(alone, batched[i]) >= 1 - 1e-6, s
        np.testing.assert_allclose(alone, batched[i], atol=1e-5, err_msg=s)


def test_paraphrases_are_closer_than_unrelated_sentences(server):
    e = embed(httpclient, server.http, ["A man is playing a guitar.", "Someone plays an instrument.",
                                        "The stock market fell sharply today."])
    assert e[0] @ e[1] > 0.4 > e[0] @ e[2]


def test_config_is_completed_for_a_folder_with_only_model_and_tokenizer(server, files, reference):
    c = httpclient.InferenceServerClient(server.http)
    cfg = c.get_model_config("minilm_auto")
    assert cfg["backend"] == "text" and cfg["max_batch_size"] == 64
    assert [(i["name"], i["data_type"], i["dims"]) for i in cfg["input"]] == [("TEXT", "TYPE_STRING", ["1"])]
    assert [(o["name"], o["data_type"], o["dims"]) for o in cfg["output"]] == [("embedding", "TYPE_FP32", ["384"])]
    got = embed(httpclient, server.http, SENTENCES, model="minilm_auto")
    # no normalisation by default: the raw mean-pooled vectors
    raw = fetch_minilm.reference(SENTENCES, normalize=False)
    assert cosine(got, raw).min() >= 1 - 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(raw, axis=1), rtol=1e-4)


def test_flat_rows_and_logits_passthrough(server):
    got = embed(grpcclient, server.grpc, SENTENCES[:3], model="minilm_flat", output="pooled", shape=(3,))
    raw = fetch_minilm.reference(SENTENCES[:3], normalize=False)
    assert got.shape == (3, 384)
    assert cosine(got, raw).min() >= 1 - 1e-4


def test_json_strings_like_curl(server, reference):
    body = {"inputs": [{"name": "TEXT", "shape": [2, 1], "datatype": "BYTES", "data": SENTENCES[:2]}]}
    r = requests.post(f"{server.url}/v2/models/minilm/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["name"] == "embedding" and out["shape"] == [2, 384] and out["datatype"] == "FP32"
    assert cosine(np.array(out["data"]).reshape(2, 384), reference[:2]).min() >= 1 - 1e-4


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_invalid_utf8_is_a_client_error(server, protocol):
    mod, url = (httpclient, server.http) if protocol == "http" else (grpcclient, server.grpc)
    with pytest.raises(InferenceServerException) as e:
        embed(mod, url, [b"fine", b"caf\xc3"])
    assert "element 1 is not valid UTF-8" in str(e.value)
    assert e.value.status() in ("400", "StatusCode.INVALID_ARGUMENT"), e.value.status()
    assert server.alive()


@pytest.mark.parametrize("shape,data,fragment", [
    ([1, 2], ["a", "b"], "does not match"),
    ([0, 1], [], "batch size 0"),
    ([65, 1], ["x"] * 65, "outside 1..=64"),
])
def test_bad_shapes_are_400(server, shape, data, fragment):
    body = {"inputs": [{"name": "TEXT", "shape": shape, "datatype": "BYTES", "data": data}]}
    r = requests.post(f"{server.url}/v2/models/minilm/infer", data=json.dumps(body))
    assert r.status_code == 400 and fragment in r.json()["error"], r.text


def test_empty_flat_batch_is_400(server):
    body = {"inputs": [{"name": "TEXT", "shape": [0], "datatype": "BYTES", "data": []}]}
    r = requests.post(f"{server.url}/v2/models/minilm_flat/infer", data=json.dumps(body))
    assert r.status_code == 400 and "empty" in r.json()["error"], r.text
