#!/usr/bin/env python3
"""Generates the graph-model example examples/graph/: a payment graph with planted fraud rings,
its feature repository, and a GraphSAGE fraud model (mean aggregator, 2 layers, node
classification) trained here in NumPy on the neighbourhoods Flotilla samples, exported to ONNX.

examples/graph/
  features/entities.toml   entity `account` (join key account_id, int64)
  features/accounts.toml   views account_profile (node features), paid and paid_by (append views,
                           max_items 50: the accounts an account paid, and was paid by)
  features/data/*.parquet  accounts.parquet, payments_out.parquet, payments_in.parquet (one row per
                           payment, both directions), labels.parquet (account_id, is_fraud)
  repository/fraud_sage/   config.pbtxt, graph.toml (2 hops: 10 then 5, newest edges), 1/model.onnx
  sage.py                  (hand-written) sampling and forward pass in NumPy: the reference

The graph: 3,000 accounts. Legitimate accounts pay a few others, mostly 150 merchants. 30 rings of
4 to 8 fraud accounts (6% of accounts) pay each other over and over, pay merchants a little to
blend in, and receive payments from victims. Fraud accounts are younger and emptier on average,
but the features overlap: the graph is what separates them well (the script prints both AUCs).

Run: .venv/bin/python scripts/make_graph_example.py (numpy, pyarrow, onnx; examples/requirements.txt).
Deterministic: fixed seed, fixed base date, no wall clock.
"""
import datetime as dt
import pathlib
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "examples" / "graph"
sys.path.insert(0, str(OUT))
import sage  # noqa: E402

ACCOUNTS = 3000
MERCHANTS = 150
RINGS = 30
HOPS = [10, 5]
MAX_ITEMS = 50
HIDDEN = 16
FEATURES = ["age_days", "balance", "txn_count_30d", "avg_amount", "country_risk", "devices"]
BASE = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
SEED = 20261101


def graph(rng):
    ids = np.arange(1, ACCOUNTS + 1, dtype=np.int64)
    fraud = np.zeros(ACCOUNTS, dtype=bool)
    merchants = rng.choice(ids, MERCHANTS, replace=False)
    pool = np.setdiff1d(ids, merchants)
    rings = []
    chosen = rng.choice(pool, RINGS * 8, replace=False)
    at = 0
    for _ in range(RINGS):
        size = int(rng.integers(4, 9))
        ring = chosen[at:at + size]
        at += size
        rings.append(ring)
        fraud[ring - 1] = True
    src, dst = [], []
    for a in ids:
        if fraud[a - 1]:
            continue
        for _ in range(rng.poisson(8)):
            b = rng.choice(merchants) if rng.random() < 0.6 else rng.choice(ids)
            if b != a:
                src.append(a)
                dst.append(b)
    for ring in rings:
        for a in ring:
            for _ in range(rng.integers(6, 14)):
                b = rng.choice(ring)
                if b != a:
                    src.append(a)
                    dst.append(b)
            for _ in range(rng.integers(1, 4)):
                src.append(a)
                dst.append(rng.choice(merchants))
        for _ in range(rng.integers(3, 10)):  # victims pay into the ring
            src.append(rng.choice(pool[~fraud[pool - 1]]))
            dst.append(rng.choice(ring))
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    # Unique event times over the 30 days before BASE, in microseconds.
    span = 30 * 86_400 * 1_000_000
    times = np.sort(rng.choice(span, len(src), replace=False)) - span + int(BASE.timestamp() * 1e6)
    perm = rng.permutation(len(src))
    amount = np.round(rng.lognormal(3.5, 1.0, len(src)), 2).astype(np.float32)
    amount[fraud[src - 1] & fraud[dst - 1]] *= 3
    return ids, fraud, src[perm], dst[perm], times, amount


def node_features(rng, fraud):
    n = len(fraud)
    age = np.where(fraud, rng.exponential(180, n), rng.exponential(500, n)) + 1
    balance = np.where(fraud, rng.lognormal(6.0, 1.2, n), rng.lognormal(6.8, 1.2, n))
    txns = rng.poisson(np.where(fraud, 14, 10))
    avg = np.where(fraud, rng.lognormal(3.9, 0.8, n), rng.lognormal(3.5, 0.8, n))
    risk = np.clip(rng.beta(np.where(fraud, 2.5, 2.0), 5.0), 0, 1)
    devices = rng.poisson(np.where(fraud, 2.2, 1.5)) + 1
    return np.stack([age, balance, txns, avg, risk, devices], axis=1).astype(np.float32)


def auc(y, s):
    order = np.argsort(s)
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    pos = y.sum()
    return (ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos))


def train(inputs, y, mu, sd, rng, epochs=400, lr=0.01):
    x0, x1, x2, m1, m2 = [np.asarray(a, dtype=np.float64) for a in inputs]
    f = x0.shape[1]
    p = {
        "ws1": rng.normal(0, 1 / np.sqrt(f), (f, HIDDEN)), "wn1": rng.normal(0, 1 / np.sqrt(f), (f, HIDDEN)),
        "b1": np.zeros(HIDDEN), "ws2": rng.normal(0, 1 / np.sqrt(HIDDEN), (HIDDEN, 1)),
        "wn2": rng.normal(0, 1 / np.sqrt(HIDDEN), (HIDDEN, 1)), "b2": np.zeros(1),
    }
    adam = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in p.items()}
    n0, n1, n2 = (x0 - mu) / sd, (x1 - mu) / sd, (x2 - mu) / sd
    m1e, m2e = m1[..., None], m2[..., None]
    c1 = np.maximum(m1e.sum(1), 1.0)
    c2 = np.maximum(m2e.sum(2), 1.0)
    mean1 = (n1 * m1e).sum(1) / c1
    mean2 = (n2 * m2e).sum(2) / c2
    weight = np.where(y == 1, (1 - y.mean()) / y.mean(), 1.0)[:, None]
    for step in range(1, epochs + 1):
        a0 = n0 @ p["ws1"] + mean1 @ p["wn1"] + p["b1"]
        h0 = np.maximum(a0, 0)
        a1 = n1 @ p["ws1"] + mean2 @ p["wn1"] + p["b1"]
        h1 = np.maximum(a1, 0)
        sh = (h1 * m1e).sum(1) / c1
        z = h0 @ p["ws2"] + sh @ p["wn2"] + p["b2"]
        prob = 1 / (1 + np.exp(-z))
        dz = (prob - y[:, None]) * weight / len(y)
        g = {"ws2": h0.T @ dz, "wn2": sh.T @ dz, "b2": dz.sum(0)}
        dh0 = dz @ p["ws2"].T
        dh1 = ((dz @ p["wn2"].T) / c1)[:, None, :] * m1e
        da0 = dh0 * (a0 > 0)
        da1 = dh1 * (a1 > 0)
        g["ws1"] = n0.T @ da0 + np.einsum("bkf,bkh->fh", n1, da1)
        g["wn1"] = mean1.T @ da0 + np.einsum("bkf,bkh->fh", mean2, da1)
        g["b1"] = da0.sum(0) + da1.sum((0, 1))
        for k in p:
            m, v = adam[k]
            m[...] = 0.9 * m + 0.1 * g[k]
            v[...] = 0.999 * v + 0.001 * g[k] ** 2
            p[k] = p[k] - lr * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
    return p


def export(params, mu, sd, path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f = len(mu)
    k1, k2 = HOPS
    consts = {"mu": mu, "sd": sd, **params, "one": np.array(1.0), "ax1": np.array([1]), "ax2": np.array([2]),
              "ax3": np.array([3])}
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.int64 if k.startswith("ax") else np.float32), k)
             for k, v in consts.items()]
    n = helper.make_node
    nodes = []
    for i in range(3):
        nodes += [n("Sub", [f"x{i}", "mu"], [f"d{i}"]), n("Div", [f"d{i}", "sd"], [f"n{i}"])]
    nodes += [
        n("Unsqueeze", ["mask1", "ax2"], ["m1e"]), n("Unsqueeze", ["mask2", "ax3"], ["m2e"]),
        n("Mul", ["n1", "m1e"], ["n1m"]), n("ReduceSum", ["n1m", "ax1"], ["s1"], keepdims=0),
        n("ReduceSum", ["m1e", "ax1"], ["k1"], keepdims=0), n("Max", ["k1", "one"], ["c1"]),
        n("Div", ["s1", "c1"], ["mean1"]),
        n("Mul", ["n2", "m2e"], ["n2m"]), n("ReduceSum", ["n2m", "ax2"], ["s2"], keepdims=0),
        n("ReduceSum", ["m2e", "ax2"], ["k2"], keepdims=0), n("Max", ["k2", "one"], ["c2"]),
        n("Div", ["s2", "c2"], ["mean2"]),
        n("MatMul", ["n0", "ws1"], ["p0"]), n("MatMul", ["mean1", "wn1"], ["q0"]), n("Add", ["p0", "q0"], ["r0"]),
        n("Add", ["r0", "b1"], ["a0"]), n("Relu", ["a0"], ["h0"]),
        n("MatMul", ["n1", "ws1"], ["p1"]), n("MatMul", ["mean2", "wn1"], ["q1"]), n("Add", ["p1", "q1"], ["r1"]),
        n("Add", ["r1", "b1"], ["a1"]), n("Relu", ["a1"], ["h1"]),
        n("Mul", ["h1", "m1e"], ["h1m"]), n("ReduceSum", ["h1m", "ax1"], ["sh1"], keepdims=0),
        n("Div", ["sh1", "c1"], ["sh"]),
        n("MatMul", ["h0", "ws2"], ["z0"]), n("MatMul", ["sh", "wn2"], ["z1"]), n("Add", ["z0", "z1"], ["z2"]),
        n("Add", ["z2", "b2"], ["z"]), n("Sigmoid", ["z"], ["score"]),
    ]
    fp = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("x0", fp, ["batch", f]),
        helper.make_tensor_value_info("x1", fp, ["batch", k1, f]),
        helper.make_tensor_value_info("x2", fp, ["batch", k1, k2, f]),
        helper.make_tensor_value_info("mask1", fp, ["batch", k1]),
        helper.make_tensor_value_info("mask2", fp, ["batch", k1, k2]),
    ]
    outputs = [helper.make_tensor_value_info("score", fp, ["batch", 1])]
    g = helper.make_graph(nodes, "fraud_sage", inputs, outputs, inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="make_graph_example")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


CONFIG = f"""name: "fraud_sage"
platform: "onnxruntime_onnx"
max_batch_size: 256
input [
  {{ name: "x0" data_type: TYPE_FP32 dims: [ {len(FEATURES)} ] }},
  {{ name: "x1" data_type: TYPE_FP32 dims: [ {HOPS[0]}, {len(FEATURES)} ] }},
  {{ name: "x2" data_type: TYPE_FP32 dims: [ {HOPS[0]}, {HOPS[1]}, {len(FEATURES)} ] }},
  {{ name: "mask1" data_type: TYPE_FP32 dims: [ {HOPS[0]} ] }},
  {{ name: "mask2" data_type: TYPE_FP32 dims: [ {HOPS[0]}, {HOPS[1]} ] }}
]
output [ {{ name: "score" data_type: TYPE_FP32 dims: [ 1 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 200 }}
"""

GRAPH = f"""# GraphSAGE fraud model: the inputs Flotilla builds for each target account (see README, "Graph models")
node = "account"                          # requests send account_id (INT64, shape [rows])
edges = ["paid:dst", "paid_by:src"]       # neighbours: accounts it paid, then accounts that paid it
hops = {HOPS}                             # 10 neighbours, then 5 of each of those
sample = "newest"                         # the newest payments first
features = ["account_profile"]            # {", ".join(FEATURES)}
missing = 0.0
"""

ENTITIES = """[[entity]]
name = "account"
join_key = "account_id"
description = "A payment account: a node of the payment graph"
"""

VIEWS = f"""[[feature_view]]
name = "account_profile"
entities = ["account"]
source = {{ path = "data/accounts.parquet" }}
push_source = "account_profile_push"
features = [
{chr(10).join(f'  {{ name = "{f}", dtype = "float32" }},' for f in FEATURES)}
]

# Edge lists: every payment appends an item; the newest {MAX_ITEMS} per account are kept.
[[feature_view]]
name = "paid"
entities = ["account"]
max_items = {MAX_ITEMS}
source = {{ path = "data/payments_out.parquet" }}
push_source = "paid_push"
features = [{{ name = "dst", dtype = "int64[]" }}, {{ name = "amount", dtype = "float32[]" }}]

[[feature_view]]
name = "paid_by"
entities = ["account"]
max_items = {MAX_ITEMS}
source = {{ path = "data/payments_in.parquet" }}
push_source = "paid_by_push"
features = [{{ name = "src", dtype = "int64[]" }}, {{ name = "amount", dtype = "float32[]" }}]
"""


def main():
    rng = np.random.default_rng(SEED)
    ids, fraud, src, dst, times, amount = graph(rng)
    x = node_features(rng, fraud)
    data = OUT / "features" / "data"
    data.mkdir(parents=True, exist_ok=True)
    ts = pa.array(times, type=pa.timestamp("us", tz="UTC"))
    snapshot = pa.array(np.full(len(ids), int((BASE - dt.timedelta(days=31)).timestamp() * 1e6)),
                        type=pa.timestamp("us", tz="UTC"))
    cols = {"account_id": ids, **{f: x[:, i] for i, f in enumerate(FEATURES)}, "event_timestamp": snapshot}
    pq.write_table(pa.table(cols), data / "accounts.parquet")
    pq.write_table(pa.table({"account_id": src, "dst": dst, "amount": amount, "event_timestamp": ts}),
                   data / "payments_out.parquet")
    pq.write_table(pa.table({"account_id": dst, "src": src, "amount": amount, "event_timestamp": ts}),
                   data / "payments_in.parquet")
    pq.write_table(pa.table({"account_id": ids, "is_fraud": fraud.astype(np.int64)}), data / "labels.parquet")
    (OUT / "features" / "entities.toml").write_text(ENTITIES)
    (OUT / "features" / "accounts.toml").write_text(VIEWS)

    edges = sage.EdgeLists([(src, dst, times), (dst, src, times)], MAX_ITEMS)
    levels = sage.neighbourhood(edges, ids, HOPS)
    feats = {int(i): x[i - 1] for i in ids}
    inputs = sage.tree_inputs(levels, HOPS, feats)
    mu = x.mean(0).astype(np.float64)
    sd = x.std(0).astype(np.float64) + 1e-6
    y = fraud.astype(np.float64)
    test = rng.random(len(ids)) < 0.3
    train_idx = ~test
    params = train([a[train_idx] for a in inputs], y[train_idx], mu, sd, rng)
    params = {k: v.astype(np.float32) for k, v in params.items()}
    full = {"mu": mu.astype(np.float32), "sd": sd.astype(np.float32), **params}
    score = sage.forward(full, *inputs)[:, 0]
    # The features alone: a logistic regression on the same standardised node features.
    z = (x - mu) / sd
    w = np.zeros(z.shape[1])
    b = 0.0
    for _ in range(2000):
        p = 1 / (1 + np.exp(-(z[train_idx] @ w + b)))
        w -= 0.1 * z[train_idx].T @ (p - y[train_idx]) / train_idx.sum()
        b -= 0.1 * (p - y[train_idx]).mean()
    flat = z @ w + b
    print(f"held-out AUC: GraphSAGE {auc(y[test], score[test]):.3f}, node features alone {auc(y[test], flat[test]):.3f}"
          f" ({int(fraud.sum())} fraud of {len(ids)} accounts, {len(src)} payments)")
    model = OUT / "repository" / "fraud_sage"
    export(params, full["mu"], full["sd"], model / "1" / "model.onnx")
    (model / "config.pbtxt").write_text(CONFIG)
    (model / "graph.toml").write_text(GRAPH)


if __name__ == "__main__":
    main()
