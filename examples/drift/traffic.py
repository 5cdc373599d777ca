"""Drift monitoring, end to end: sends fraud_xgb normal traffic (rows of its training data), then
shifted traffic (amounts x5, distances +100 km, new countries), receives the alert webhook and prints the alerts
and the latest window of GET /v2/models/fraud_xgb/drift.

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


def receive_webhooks(port):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            event = json.loads(self.rfile.read(int(self.headers["content-length"])))
            print(f"webhook: {event['model']} v{event['version']} {event['feature']}: "
                  f"{event['previous']} -> {event['state']} (window {event['window']}, {event['metrics']})")
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


def show(url):
    doc = requests.get(f"{url}/v2/models/fraud_xgb/drift", timeout=10).json()
    v = doc["versions"][0]
    print("alerts:", json.dumps(v["alerts"]))
    w = v["windows"][0]
    print(f"window {w['index']} ({w['rows']} rows):")
    for f in w["features"] + w["outputs"]:
        s = f["scores"]
        head = f"  {f['name']:>16} {f['level']:>11}  psi {s.get('psi', 0):6.3f}  js {s.get('jensen_shannon', 0):5.3f}"
        if "new_category_rate" in s:  # a categorical feature
            print(f"{head}  new categories {s['new_category_rate']:.1%}")
        else:
            print(f"{head}  ks {s.get('ks', 0):5.3f}  w1/std {s.get('wasserstein', 0):5.3f}")
    if "multivariate" in w:
        print(f"  {'multivariate':>16} {w['multivariate']['level']:>11}  pca error ratio {w['multivariate']['pca_error_ratio']:.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--webhook-port", type=int, default=9099)
    args = ap.parse_args()
    receive_webhooks(args.webhook_port)
    table = pq.read_table(TRAIN, columns=FEATURES)
    rows = np.column_stack([table.column(f).to_numpy(zero_copy_only=False) for f in FEATURES]).astype(np.float32)
    rng = np.random.default_rng(1)
    print("normal traffic: 2,000 rows")
    send(args.url, rows[rng.choice(len(rows), 2000)])
    time.sleep(0.5)
    show(args.url)
    print("\nshifted traffic: 2,000 rows, amount x5, distance_km +100, a third from new countries")
    shifted = rows[rng.choice(len(rows), 2000)].copy()
    shifted[:, 0] *= 5
    shifted[:, 7] += 100
    shifted[::3, 3] = 40 + rng.integers(0, 5, len(shifted[::3]))  # country codes training never saw
    send(args.url, shifted)
    time.sleep(1.0)
    show(args.url)


if __name__ == "__main__":
    main()
