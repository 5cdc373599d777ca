"""Fleet-wide drift, black-box: two workers monitor `fraud_xgb`, each sees part of the traffic;
the router merges the windows they close into fleet windows, scores them once, and alerts once
per change of the fleet's state (one webhook from the router, none from the workers)."""
import shutil
import signal

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
import tritonclient.http as httpclient

from conftest import EXAMPLES, Router, Server, wait_for
from test_drift import FEATURES, TRAIN, Receiver, send


def fleet_drift(router):
    return requests.get(router.url + "/v2/models/fraud_xgb/drift", timeout=10)


def windows(router):
    doc = fleet_drift(router).json()
    return doc["versions"][0]["windows"] if doc.get("versions") else []


@pytest.fixture
def drift_fleet(tmp_path):
    repo = tmp_path / "repository"
    shutil.copytree(EXAMPLES, repo)
    receiver = Receiver()
    (repo / "fraud_xgb" / "drift.toml").write_text(
        f'[window]\nrows = 300\nseconds = 0\n[alerts]\nconsecutive = 1\nwebhook = "{receiver.url}"\n')
    router = Router("--worker-ttl-ms", "2000")
    workers = []
    try:
        for wid in ("da", "db"):
            workers.append(Server(repo, "--join", router.url, "--worker-id", wid, "--feature-repo", "none",
                                  "--heartbeat-ms", "200"))
        router.wait_workers(["da", "db"])
        yield router, workers, receiver
    finally:
        for w in workers:
            w.stop(signal.SIGKILL)
        router.stop()
        receiver.stop()


def test_fleet_drift_merges_two_workers_windows_and_alerts_once_for_the_fleet(drift_fleet):
    router, (a, b), receiver = drift_fleet
    table = pq.read_table(TRAIN, columns=FEATURES)
    normal = np.column_stack([table.column(f).to_numpy(zero_copy_only=False) for f in FEATURES]).astype(np.float32)
    rng = np.random.default_rng(11)
    clients = [httpclient.InferenceServerClient(f"127.0.0.1:{w.http_port}") for w in (a, b)]

    # Each worker closes one window of its own 300 rows; the fleet window holds both.
    for c in clients:
        send(c, normal[rng.choice(len(normal), 300)])
    got = wait_for(lambda: windows(router), what="the first fleet window:\n" + router.log()[-2000:])
    first = got[0]
    assert first["rows"] == 600 and sorted(first["workers"]) == ["da", "db"], first
    doc = fleet_drift(router).json()
    assert doc["scope"] == "fleet" and sorted(doc["workers"]) == ["da", "db"]
    assert doc["settings"]["window_rows"] == 300 and doc["reference"]["rows"] == 20000
    assert set(doc["versions"][0]["alerts"].values()) == {"ok"}, doc["versions"][0]["alerts"]
    # the worker's own view has half the rows
    own = requests.get(f"http://127.0.0.1:{a.http_port}/v2/models/fraud_xgb/drift", timeout=10).json()
    assert own["versions"][0]["windows"][0]["rows"] == 300

    # A window from one worker alone waits for the other (the fleet window is both workers' rows).
    send(clients[0], normal[rng.choice(len(normal), 300)])
    pending = wait_for(lambda: fleet_drift(router).json()["versions"][0]["pending"], what="a pending fleet window")
    assert pending == {"rows": 300, "workers": ["da"]} and len(windows(router)) == 1
    # ... and open windows merge too
    send(clients[0], normal[rng.choice(len(normal), 100)])
    send(clients[1], normal[rng.choice(len(normal), 50)])
    open_rows = lambda: requests.get(router.url + "/v2/models/fraud_xgb/drift/window", timeout=10).json()["versions"]["1"]["rows"]
    wait_for(lambda: open_rows() == 150, what="the workers' open windows merged")

    # Shifted traffic on both workers: the fleet alerts once per feature, from the router.
    for c in clients:
        shifted = normal[rng.choice(len(normal), 600)].copy()
        shifted[:, 0] *= 5
        shifted[:, 7] += 100
        send(c, shifted)
    doc = wait_for(lambda: (d := fleet_drift(router).json())["versions"][0]["alerts"].get("amount") == "significant" and d,
                   what="the fleet's amount alert")
    latest = doc["versions"][0]["windows"][0]
    amount = next(f for f in latest["features"] if f["name"] == "amount")
    assert amount["scores"]["psi"] > 0.25 and "psi" in amount["breaches"]
    events = wait_for(lambda: [e for e in receiver.events if e["feature"] == "amount"], what="the webhook")
    assert len(events) == 1 and events[0]["scope"] == "fleet", events
    assert (events[0]["previous"], events[0]["state"]) == ("ok", "significant")
    # the workers alerted in their own views, but left the webhook to the router
    own = requests.get(f"http://127.0.0.1:{b.http_port}/v2/models/fraud_xgb/drift", timeout=10).json()
    assert own["versions"][0]["alerts"]["amount"] == "significant"
    assert all(e.get("scope") == "fleet" for e in receiver.events), receiver.events
    assert router.events(kind="drift_alert")
    metrics = requests.get(f"http://127.0.0.1:{router.metrics_port}/metrics", timeout=5).text
    assert 'flotilla_fleet_drift_alert{feature="amount",model="fraud_xgb",version="1"} 2' in metrics
    assert 'flotilla_fleet_drift_windows_total{model="fraud_xgb",version="1"}' in metrics


def test_fleet_drift_errors_are_clear(drift_fleet):
    router, _, _ = drift_fleet
    r = requests.get(router.url + "/v2/models/nope/drift", timeout=10)
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = requests.get(router.url + "/v2/models/simple/drift", timeout=10)
    assert r.status_code == 503 and "monitors its drift" in r.json()["error"], r.text
