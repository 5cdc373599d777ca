"""Drift monitoring, end to end: sends fraud_xgb normal traffic (rows of its training data), then
shifted traffic (amounts x5, distances +100 km, new countries), receives the alert webhooks and prints them
and the latest window of GET /v2/models/fraud_xgb/drift. It first fills the open window so that its own
windows hold only its rows, and waits for the monitor to close them, so what it prints does not depend
on earlier traffic or timing (windows are numbered from its first).

Start the server with a drift.toml that points the webhook here (see the README), then:
    .venv/bin/python examples/drift/traffic.py [--url http://127.0.0.1:8000] [--webhook-port 9099]
Needs numpy, pyarrow, requests and tritonclient (all in the test venv made by scripts/test.sh)."""
import argparse
import http.server
import json
import pathlib
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import requests
import tritonclient.http as httpclient

FEATURES = ["amount", "hour", "merchant_category", "country", "card_age_days", "txn_count_1h",
            "avg_amount_30d", "distance_km"]
TRAIN = pathlib.Path(__file__).resolve().parent / "fraud_train.parquet"


WEBHOOKS = []  # the alert webhooks received, in arrival order


def receive_webhooks(port):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            WEBHOOKS.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def send(url, rows):
    # binary tensors: the rows carry NaN (missing values), which JSON numbers cannot
    client = httpclient.InferenceServerClient(url.split("://", 1)[-1])
    for start in range(0, len(rows), 50):
        batch = rows[start:start + 50]
        t = httpclient.InferInput("input__0", list(batch.shape), "FP32")
        t.set_data_from_numpy(batch, binary_data=True)
        client.infer("fraud_xgb", [t])


def drift(url):
    return requests.get(f"{url}/v2/models/fraud_xgb/drift", timeout=10).json()


def current(url):
    """(index, rows) of the open window of fraud_xgb's version 1: (0, 0) before its first request."""
    versions = drift(url)["versions"]
    return (versions[0]["current_window"]["index"], versions[0]["current_window"]["rows"]) if versions else (0, 0)


def wait_until(what, predicate, timeout=60):
    """Polls the server until `predicate()` holds (the monitor folds rows in the background)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what} after {timeout} s")
        time.sleep(0.1)


def align(url, pool, rng, size):
    """Fills the open window with normal rows until it closes, so this run's windows hold only its own
    rows (a window also closes by time; then it tries again). Returns the index of the first window
    this run's traffic opens."""
    for _ in range(5):
        index, rows = current(url)
        if rows == 0:
            return index
        send(url, pool[rng.choice(len(pool), size - rows)])
        try:
            wait_until("the open window to close", lambda: current(url)[0] > index, timeout=10)
        except SystemExit:
            continue
    return current(url)[0]


def traffic(url, rows, first, windows):
    """Sends `rows` and waits until the monitor has closed `windows` windows after `first`."""
    send(url, rows)
    wait_until(f"window {first + windows - 1} to close", lambda: current(url) == (first + windows, 0))


def show(url, first):
    """The alert states and the latest closed window, windows numbered from this run's first."""
    v = drift(url)["versions"][0]
    print("alerts:", json.dumps(v["alerts"], sort_keys=True))
    w = v["windows"][0]
    print(f"window {w['index'] - first + 1} ({w['rows']} rows):")
    for f in w["features"] + w["outputs"]:
        s = f["scores"]
        head = f"  {f['name']:>16} {f['level']:>11}  psi {s.get('psi', 0):6.3f}  js {s.get('jensen_shannon', 0):5.3f}"
        if "new_category_rate" in s:  # a categorical feature
            print(f"{head}  new categories {s['new_category_rate']:.1%}")
        else:
            print(f"{head}  ks {s.get('ks', 0):5.3f}  w1/std {s.get('wasserstein', 0):5.3f}")
    if "multivariate" in w:
        print(f"  {'multivariate':>16} {w['multivariate']['level']:>11}  pca error ratio {w['multivariate']['pca_error_ratio']:.2f}")


def alerts(url):
    versions = drift(url)["versions"]
    return versions[0]["alerts"] if versions else {}


def print_webhooks(url, first, before):
    """Waits for one webhook per alert state that changed since `before` (they arrive concurrently,
    each after the window that moved it), then prints them by window and feature."""
    def announced():
        told = {(e["feature"], e["state"]) for e in WEBHOOKS}
        return all((f, s) in told for f, s in alerts(url).items() if s != before.get(f, "ok"))
    wait_until("the alert webhooks", announced)
    for event in sorted(WEBHOOKS, key=lambda e: (e["window"], e["feature"])):
        metrics = {k: round(v, 3) for k, v in sorted(event["metrics"].items())}
        print(f"webhook: {event['model']} v{event['version']} {event['feature']}: "
              f"{event['previous']} -> {event['state']} (window {event['window'] - first + 1}, {metrics})")
    WEBHOOKS.clear()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--webhook-port", type=int, default=9099)
    args = ap.parse_args()
    receive_webhooks(args.webhook_port)
    table = pq.read_table(TRAIN, columns=FEATURES)
    rows = np.column_stack([table.column(f).to_numpy(zero_copy_only=False) for f in FEATURES]).astype(np.float32)
    size = drift(args.url)["settings"]["window_rows"]
    rng = np.random.default_rng(1)
    first = align(args.url, rows, np.random.default_rng(2), size)

    print(f"normal traffic: 2,000 rows (windows of {size} rows)")
    before = alerts(args.url)
    traffic(args.url, rows[rng.choice(len(rows), 2000)], first, 2000 // size)
    print_webhooks(args.url, first, before)  # none, unless an earlier run left alerts raised
    show(args.url, first)
    print("\nshifted traffic: 2,000 rows, amount x5, distance_km +100, a third from new countries")
    shifted = rows[rng.choice(len(rows), 2000)].copy()
    shifted[:, 0] *= 5
    shifted[:, 7] += 100
    shifted[::3, 3] = 40 + rng.integers(0, 5, len(shifted[::3]))  # country codes training never saw
    before = alerts(args.url)
    traffic(args.url, shifted, first, 4000 // size)
    print_webhooks(args.url, first, before)
    show(args.url, first)


if __name__ == "__main__":
    main()
