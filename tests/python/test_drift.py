"""Drift monitoring, black-box: `flotilla profile` on the example's training data, then the real
server under normal and shifted traffic from tritonclient: /v2/models/{m}/drift, the Prometheus
gauges and the alert webhook (a real HTTP receiver)."""
import http.server
import json
import signal
import subprocess
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
import tritonclient.http as httpclient

from conftest import BIN, ROOT, Server, wait_for

TRAIN = ROOT / "examples" / "drift" / "fraud_train.parquet"
FEATURES = ["amount", "hour", "merchant_category", "country", "card_age_days", "txn_count_1h",
            "avg_amount_30d", "distance_km"]


def profile(*args, check=True):
    p = subprocess.run([BIN, "profile", *args], capture_output=True, text=True, timeout=300, cwd=ROOT)
    if check and p.returncode != 0:
        raise AssertionError(f"flotilla profile failed:\n{p.stdout}\n{p.stderr}")
    return p


class Receiver:
    """An HTTP server that records the JSON bodies POSTed to it."""

    def __init__(self):
        self.events = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.events.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


def send(client, rows):
    for start in range(0, len(rows), 50):
        batch = rows[start:start + 50]
        t = httpclient.InferInput("input__0", list(batch.shape), "FP32")
        t.set_data_from_numpy(batch, binary_data=True)
        client.infer("fraud_xgb", [t])


def drift(server, model="fraud_xgb"):
    return requests.get(f"http://127.0.0.1:{server.http_port}/v2/models/{model}/drift", timeout=10)


def version_1(server):
    """The first version's monitoring state, {} before the aggregator has folded anything (it drains every 20 ms)."""
    versions = drift(server).json()["versions"]
    return versions[0] if versions else {}


def test_profile_then_alert_on_shifted_traffic_with_webhook(repo_copy):
    out = profile("--model-repository", str(repo_copy), "--model", "fraud_xgb", "--data", str(TRAIN),
                  "--categorical", "merchant_category,country").stdout
    assert "fraud_xgb: 20000 rows, 8 features, 2 outputs" in out, out
    doc = json.loads((repo_copy / "fraud_xgb" / "drift_profile.json").read_text())
    assert doc["format"] == "flotilla-drift-profile" and doc["version"] == 1
    assert [c["name"] for c in doc["features"]] == FEATURES
    kinds = {c["name"]: c["kind"] for c in doc["features"]}
    assert kinds["country"] == kinds["merchant_category"] == "categorical" and kinds["amount"] == "numeric"
    # the category codes as the FP32 tensor carries them: 30 countries, "0" .. "29"
    assert sorted(doc["features"][3]["counts"], key=float) == [str(i) for i in range(30)]
    receiver = Receiver()
    (repo_copy / "fraud_xgb" / "drift.toml").write_text(
        f'[window]\nrows = 500\nseconds = 0\n[alerts]\nconsecutive = 2\nwebhook = "{receiver.url}"\n')
    s = Server(repo_copy, "--feature-repo", "none")
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{s.http_port}")
        table = pq.read_table(TRAIN, columns=FEATURES)
        normal = np.column_stack([table.column(f).to_numpy(zero_copy_only=False) for f in FEATURES]).astype(np.float32)
        rng = np.random.default_rng(7)
        send(client, normal[rng.choice(len(normal), 2000)])
        r = wait_for(lambda: len(version_1(s).get("windows", [])) == 4 and drift(s).json(), what="4 windows")
        v = r["versions"][0]
        assert set(v["alerts"].values()) == {"ok"}, v["alerts"]
        assert r["reference"]["rows"] == 20000 and r["settings"]["window_rows"] == 500
        psi_amount = v["windows"][0]["features"][0]["scores"]["psi"]
        assert psi_amount < 0.1, psi_amount
        assert receiver.events == []
        # Shifted traffic: amounts five times larger, distances 100 km further, a third of the
        # transactions from countries the training data never had.
        shifted = normal[rng.choice(len(normal), 1000)].copy()
        shifted[:, 0] *= 5
        shifted[:, 7] += 100
        shifted[::3, 3] = 40 + rng.integers(0, 5, len(shifted[::3]))
        send(client, shifted)
        r = wait_for(lambda: version_1(s).get("alerts", {}).get("amount") == "significant" and drift(s).json(),
                     what="the amount alert")
        v = r["versions"][0]
        assert v["alerts"]["distance_km"] == "significant"
        country = next(f for f in v["windows"][0]["features"] if f["name"] == "country")
        assert 0.25 < country["scores"]["new_category_rate"] < 0.42 and "new_category_rate" in country["breaches"]
        assert v["alerts"]["country"] == "significant"
        assert v["alerts"]["merchant_category"] == "ok"
        assert v["alerts"]["hour"] == "ok", "an unshifted feature stays quiet"
        latest = v["windows"][0]
        amount = next(f for f in latest["features"] if f["name"] == "amount")
        assert amount["scores"]["psi"] > 0.25 and amount["scores"]["ks"] > 0.2 and "psi" in amount["breaches"]
        events = wait_for(lambda: [e for e in receiver.events if e["feature"] == "amount"], what="the webhook")
        assert len(events) == 1, "one alert per feature per state change"
        e = events[0]
        assert (e["model"], e["version"], e["previous"], e["state"]) == ("fraud_xgb", "1", "ok", "significant")
        assert e["metrics"]["psi"] > 0.25
        # the open window whole (sketches and counts), for a fleet view to merge across workers
        w = requests.get(f"http://127.0.0.1:{s.http_port}/v2/models/fraud_xgb/drift/window", timeout=10).json()
        assert w["model"] == "fraud_xgb" and w["profile_created"] == doc["created"]
        open_window = w["versions"]["1"]
        assert open_window["rows"] < 500 and len(open_window["features"]) == 8 and len(open_window["outputs"]) == 2
        assert open_window["features"][3]["kind"] == "categorical"
        metrics = requests.get(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=5).text
        assert 'flotilla_drift_alert{feature="amount",model="fraud_xgb",version="1"} 2' in metrics
        assert 'flotilla_drift_score{feature="amount",metric="psi",model="fraud_xgb",version="1"}' in metrics
        # rows are counted into the metric once per drain, after the windows it closed
        wait_for(lambda: 'flotilla_drift_rows_total{model="fraud_xgb",version="1"} 3000' in requests.get(
            f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=5).text, timeout=10, what="the rows counted")
    finally:
        receiver.stop()
        assert s.stop() == 0, s.log()


def test_drift_endpoint_errors_are_clear(server):
    r = drift(server, "mlp_iris")
    assert r.status_code == 404 and "has no drift profile" in r.json()["error"] and "flotilla profile" in r.json()["error"]
    r = drift(server, "nope")
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = requests.get(f"http://127.0.0.1:{server.http_port}/v2/models/mlp_iris/drift/window", timeout=10)
    assert r.status_code == 404 and "has no drift profile" in r.json()["error"]


@pytest.mark.parametrize("args, message", [
    (["--columns", "amount,hour"], "has 8 columns; 2 names given"),
    (["--columns", "amount,hour,merchant_category,country,card_age_days,txn_count_1h,avg_amount_30d,nope"],
     "column 'nope' is missing"),
    (["--input", "input__9=amount"], "the model has no input 'input__9'"),
    (["--categorical", "amount,colour"], "--categorical colour: not one of the profiled columns"),
    (["--data", "/nonexistent.parquet"], "cannot open"),
])
def test_profile_rejects_bad_arguments_clearly(repo_copy, args, message):
    base = ["--model-repository", str(repo_copy), "--model", "fraud_xgb"]
    if "--data" not in args:
        base += ["--data", str(TRAIN)]
    p = profile(*base, *args, check=False)
    assert p.returncode != 0 and message in p.stderr, p.stderr
    p = profile("--model-repository", str(repo_copy), "--model", "nope", "--data", str(TRAIN), check=False)
    assert p.returncode != 0 and "no model 'nope'" in p.stderr


def test_a_bad_profile_turns_monitoring_off_for_that_model_only(repo_copy):
    (repo_copy / "fraud_xgb" / "drift_profile.json").write_text('{"format": "flotilla-drift-profile", "version": 7}')
    s = Server(repo_copy, "--feature-repo", "none")
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{s.http_port}")
        t = httpclient.InferInput("input__0", [1, 8], "FP32")
        t.set_data_from_numpy(np.ones((1, 8), np.float32))
        assert client.infer("fraud_xgb", [t]).as_numpy("output__0").shape == (1, 1)
        # the log line comes through the server's stderr pipe, not with the answer
        wait_for(lambda: "version Some(7) is not supported" in s.log(), timeout=10, what="the profile's error logged")
        r = drift(s)
        assert r.status_code == 400 and "version Some(7) is not supported" in r.json()["error"], r.text
    finally:
        assert s.stop() == 0, s.log()


@pytest.mark.parametrize("change, message", [
    # the model retrained on other inputs, the old 3-column profile left beside it
    (lambda p: p.update(inputs=[{**p["inputs"][0], "columns": p["inputs"][0]["columns"][:3]}],
                        features=p["features"][:3], multivariate=None),
     "the profile has 3 columns for input 'input__0', but the model's 'input__0' holds 8 values per row"),
    (lambda p: p["inputs"][0].update(tensor="features"),
     "the profile reads input tensor 'features', which the model does not have (its inputs: input__0)"),
    (lambda p: p["output_tensors"][0].update(tensor="score"),
     "the profile reads output tensor 'score', which the model does not have"),
])
def test_a_profile_that_does_not_fit_the_model_is_refused_at_load(repo_copy, change, message):
    path = repo_copy / "fraud_xgb" / "drift_profile.json"
    profile_doc = json.loads(path.read_text())
    change(profile_doc)
    path.write_text(json.dumps(profile_doc))
    s = Server(repo_copy, "--feature-repo", "none")
    try:
        # refused at load, before any request: the log, /drift and the repository index say why
        assert "drift profile refused" in s.log() and message in s.log(), s.log()[-2000:]
        r = drift(s)
        assert r.status_code == 400 and message in r.json()["error"], r.text
        assert r.headers["flotilla-error-kind"] == "failed_precondition"
        index = requests.post(s.url + "/v2/repository/index", json={}, timeout=10).json()
        row = next(m for m in index if m["name"] == "fraud_xgb")
        assert row["state"] == "READY" and "drift monitoring off" in row["reason"] and message in row["reason"], row
        # the model itself serves
        client = httpclient.InferenceServerClient(s.http)
        t = httpclient.InferInput("input__0", [1, 8], "FP32")
        t.set_data_from_numpy(np.ones((1, 8), np.float32))
        assert client.infer("fraud_xgb", [t]).as_numpy("output__0").shape == (1, 1)
    finally:
        assert s.stop() == 0, s.log()


def test_windows_survive_a_restart(repo_copy, tmp_path):
    (repo_copy / "fraud_xgb" / "drift.toml").write_text("[window]\nrows = 500\nseconds = 0\n")
    env = {"FLOTILLA_DRIFT_STATE_DIR": str(tmp_path / "drift")}
    rows = np.ones((600, 8), np.float32)
    s = Server(repo_copy, "--feature-repo", "none", env=env)
    try:
        send(httpclient.InferenceServerClient(f"127.0.0.1:{s.http_port}"), rows)
        wait_for(lambda: version_1(s).get("current_window", {}).get("rows") == 100, what="the rows folded")
    finally:
        assert s.stop() == 0, s.log()
    assert (tmp_path / "drift" / "fraud_xgb.json").exists()
    s = Server(repo_copy, "--feature-repo", "none", env=env)
    try:
        v = drift(s).json()["versions"][0]
        assert len(v["windows"]) == 1 and v["windows"][0]["rows"] == 500
        assert v["current_window"] == {**v["current_window"], "index": 1, "rows": 100}
    finally:
        assert s.stop() == 0, s.log()


def test_kill_9_loses_at_most_the_open_window(repo_copy, tmp_path):
    """Every closed window is on disk when it closes: after kill -9 the windows closed before it,
    their reports and alert states come back; only the rows of the open window are gone."""
    (repo_copy / "fraud_xgb" / "drift.toml").write_text("[window]\nrows = 100\nseconds = 0\n")
    env = {"FLOTILLA_DRIFT_STATE_DIR": str(tmp_path / "drift")}
    s = Server(repo_copy, "--feature-repo", "none", env=env)
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{s.http_port}")
        for _ in range(3):  # three windows close one after another, well within any 10 s
            send(client, np.ones((100, 8), np.float32))
        send(client, np.ones((40, 8), np.float32))
        wait_for(lambda: version_1(s).get("current_window", {}).get("rows") == 40, what="the rows folded")
        closed = [w["index"] for w in version_1(s)["windows"]]
        assert len(closed) == 3, closed
    finally:
        s.stop(sig=signal.SIGKILL)
    s = Server(repo_copy, "--feature-repo", "none", env=env)
    try:
        v = drift(s).json()["versions"][0]
        assert sorted(w["index"] for w in v["windows"]) == sorted(closed)
        assert v["current_window"]["index"] == max(closed) + 1
    finally:
        assert s.stop() == 0, s.log()
