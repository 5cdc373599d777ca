"""Tree models through the real server: the example fraud_xgb (XGBoost, FIL config,
NaNs and categorical features) and ranker_lgbm (LightGBM lambdarank, no config.pbtxt),
with tritonclient over HTTP and gRPC, against the libraries' own predictions."""
import json
import shutil

import lightgbm as lgb
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import xgboost as xgb

from conftest import EXAMPLES, Server

FRAUD = EXAMPLES / "fraud_xgb" / "1" / "xgboost.json"
RANKER = EXAMPLES / "ranker_lgbm" / "1" / "model.txt"


def close(ours, theirs):
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape
    assert np.all(np.abs(ours - theirs) <= 1e-6 * np.maximum(1.0, np.abs(theirs))), np.max(np.abs(ours - theirs))


def fraud_rows(n, seed=0):
    rng = np.random.default_rng(seed)
    X = np.column_stack([
        rng.lognormal(3.5, 1.2, n), rng.integers(0, 24, n), rng.integers(0, 14, n),  # 12, 13: unseen categories
        rng.integers(-1, 32, n), rng.exponential(400, n), rng.poisson(1.5, n),
        rng.lognormal(3.5, 1.2, n), rng.exponential(30, n),
    ]).astype(np.float32)
    X[rng.random(X.shape) < 0.1] = np.nan
    return X


def fraud_reference(X):
    booster = xgb.Booster(model_file=str(FRAUD))
    return booster.inplace_predict(X)


def test_fraud_xgb_http_matches_xgboost(server):
    client = httpclient.InferenceServerClient(server.http)
    X = fraud_rows(500)
    for binary in (True, False):
        inp = httpclient.InferInput("input__0", list(X.shape), "FP32")
        inp.set_data_from_numpy(X, binary_data=binary)
        res = client.infer("fraud_xgb", [inp])
        p = res.as_numpy("output__0")
        assert p.shape == (500, 1) and p.dtype == np.float32
        close(p[:, 0], fraud_reference(X))
        assert np.array_equal(res.as_numpy("class_index")[:, 0], (fraud_reference(X) > 0.5).astype(np.int64))


def test_fraud_xgb_grpc_matches_xgboost_row_by_row(server):
    client = grpcclient.InferenceServerClient(server.grpc)
    X = fraud_rows(50, seed=3)
    want = fraud_reference(X)
    for i in range(len(X)):
        inp = grpcclient.InferInput("input__0", [1, 8], "FP32")
        inp.set_data_from_numpy(X[i:i + 1])
        p = client.infer("fraud_xgb", [inp]).as_numpy("output__0")
        close(p[0], want[i:i + 1])


def test_ranker_lgbm_autocompleted_config_and_scores(server):
    cfg = requests.get(server.url + "/v2/models/ranker_lgbm/config").json()
    assert cfg["backend"] == "fil"
    assert cfg["input"][0]["name"] == "input__0" and cfg["input"][0]["dims"] == ["12"]
    assert [o["name"] for o in cfg["output"]] == ["output__0"]
    md = requests.get(server.url + "/v2/models/ranker_lgbm").json()
    assert md["inputs"][0]["shape"] == [-1, 12]
    rng = np.random.default_rng(7)
    X = rng.normal(size=(64, 12)).astype(np.float32)
    X[::5, 3] = np.nan
    client = httpclient.InferenceServerClient(server.http)
    inp = httpclient.InferInput("input__0", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    scores = client.infer("ranker_lgbm", [inp]).as_numpy("output__0")[:, 0]
    close(scores, lgb.Booster(model_file=str(RANKER)).predict(X))


def test_wrong_feature_count_is_400_naming_the_count(server):
    body = {"inputs": [{"name": "input__0", "shape": [1, 7], "datatype": "FP32", "data": [0.0] * 7}]}
    r = requests.post(server.url + "/v2/models/fraud_xgb/infer", json=body)
    assert r.status_code == 400
    assert "8" in r.json()["error"] and "input__0" in r.json()["error"], r.text
    body = {"inputs": [{"name": "input__0", "shape": [2, 8], "datatype": "FP64", "data": [0.0] * 16}]}
    r = requests.post(server.url + "/v2/models/fraud_xgb/infer", json=body)
    assert r.status_code == 400 and "FP32" in r.json()["error"], r.text
    body = {"inputs": [{"name": "input__0", "shape": [1, 8], "datatype": "FP32", "data": ["x"] * 8}]}
    assert requests.post(server.url + "/v2/models/fraud_xgb/infer", json=body).status_code == 400


def test_fil_parameters_margin_and_class_outputs(tmp_path):
    """Triton FIL's output_class/predict_proba, and Flotilla's output_margin and missing."""
    repo = tmp_path / "repo"
    for name, params, outputs in [
        ("proba", {"output_class": "true", "predict_proba": "true"}, [("output__0", "TYPE_FP32", 2)]),
        ("label", {"output_class": "true", "predict_proba": "false"}, [("output__0", "TYPE_FP32", 1)]),
        ("margin", {"output_margin": "true", "missing": "-999"}, [("output__0", "TYPE_FP32", 1)]),
    ]:
        (repo / name / "1").mkdir(parents=True)
        shutil.copy(FRAUD, repo / name / "1" / "xgboost.json")
        p = "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in params.items())
        o = ",".join(f'{{ name: "{n}" data_type: {t} dims: [ {d} ] }}' for n, t, d in outputs)
        (repo / name / "config.pbtxt").write_text(
            f'backend: "fil"\nmax_batch_size: 1024\ninput [{{ name: "input__0" data_type: TYPE_FP32 dims: [ 8 ] }}]\n'
            f"output [{o}]\n{p}")
    s = Server(repo)
    try:
        client = httpclient.InferenceServerClient(s.http)
        X = fraud_rows(100, seed=5)
        booster = xgb.Booster(model_file=str(FRAUD))

        def infer(model, x):
            inp = httpclient.InferInput("input__0", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            return client.infer(model, [inp]).as_numpy("output__0")

        p = booster.inplace_predict(X)
        close(infer("proba", X), np.column_stack([1 - p, p]))
        assert np.array_equal(infer("label", X)[:, 0], (p > 0.5).astype(np.float32))
        Xm = X.copy()
        Xm[np.isnan(Xm)] = -999.0
        close(infer("margin", Xm)[:, 0], booster.inplace_predict(X, predict_type="margin"))
    finally:
        assert s.stop() == 0


def test_bad_tree_models_fail_to_load_with_clear_reasons(tmp_path):
    repo = tmp_path / "repo"
    text = FRAUD.read_text()
    broken = {
        "truncated": text[: len(text) // 2],
        "objective": text.replace("binary:logistic", "binary:astrology"),
        "children": text.replace('"left_children":[1,', '"left_children":[100000,', 1),
    }
    for name, body in broken.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.json").write_text(body)
    (repo / "ok" / "1").mkdir(parents=True)
    shutil.copy(RANKER, repo / "ok" / "1" / "model.txt")
    s = Server(repo, "--model-control-mode", "explicit", "--load-model", "ok")
    try:
        for name, needle in [("truncated", "EOF"), ("objective", "binary:astrology"), ("children", "out of range")]:
            r = requests.post(s.url + f"/v2/repository/models/{name}/load")
            assert r.status_code == 400, r.text
            assert needle in r.json()["error"], r.text
        assert requests.get(s.url + "/v2/models/ok/ready").status_code == 200
        assert s.alive()
    finally:
        assert s.stop() == 0
