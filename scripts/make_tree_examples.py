#!/usr/bin/env python3
"""Generates the tree-model examples of examples/repository.

- fraud_xgb:   an XGBoost binary classifier (binary:logistic, 120 trees, depth 5) on
               synthetic card transactions with missing values (NaN) and two
               categorical features (merchant_category, country, as integer codes),
               served through Triton's FIL-style config (backend "fil",
               model_type xgboost_json). Input `input__0` FP32 [8]; outputs
               `output__0` (fraud probability) and `class_index` (0/1).
- ranker_lgbm: a LightGBM lambdarank model (80 trees) on synthetic query/document
               features, with NO config.pbtxt: Flotilla recognises model.txt and
               completes the configuration (input__0 FP32 [12], output__0 = score).

Feature order is in each folder's features.txt. fraud_xgb's training data goes to
examples/drift/fraud_train.parquet (the drift reference: `flotilla profile`). Run with the test venv:
.venv/bin/python scripts/make_tree_examples.py (xgboost-cpu, lightgbm, numpy).
Output is deterministic.
"""
import pathlib

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xgboost as xgb

ROOT = pathlib.Path(__file__).resolve().parent.parent / "examples" / "repository"

FRAUD_FEATURES = ["amount", "hour", "merchant_category", "country", "card_age_days", "txn_count_1h",
                  "avg_amount_30d", "distance_km"]
FRAUD_TYPES = ["q", "q", "c", "c", "q", "q", "q", "q"]

FRAUD_CONFIG = '''name: "fraud_xgb"
backend: "fil"
max_batch_size: 8192
input [
  {
    name: "input__0"
    data_type: TYPE_FP32
    dims: [ 8 ]
  }
]
output [
  {
    name: "output__0"
    data_type: TYPE_FP32
    dims: [ 1 ]
  },
  {
    name: "class_index"
    data_type: TYPE_INT64
    dims: [ 1 ]
  }
]
instance_group [{ kind: KIND_CPU }]
parameters { key: "model_type" value { string_value: "xgboost_json" } }
'''


def fraud_features(rng, n):
    """The fraud example's feature matrix (with its missing values) and labels."""
    amount = rng.lognormal(3.5, 1.2, n)
    hour = rng.integers(0, 24, n).astype(float)
    mcc = rng.integers(0, 12, n).astype(float)
    country = rng.integers(0, 30, n).astype(float)
    card_age = rng.exponential(400, n)
    count_1h = rng.poisson(1.5, n).astype(float)
    avg_30d = amount * rng.lognormal(0, 0.5, n)
    distance = rng.exponential(30, n)
    X = np.column_stack([amount, hour, mcc, country, card_age, count_1h, avg_30d, distance]).astype(np.float32)
    risky_mcc = np.isin(mcc, [3, 7, 11])
    risky_country = np.isin(country, [5, 17, 23])
    z = (-4 + 1.2 * (amount / avg_30d > 3) + 0.8 * risky_mcc + 1.0 * risky_country + 0.4 * count_1h
         + 0.9 * (hour < 5) - 0.002 * card_age + 0.01 * distance)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.float32)
    # Missing values: distance unknown for 15% of rows, 30-day average for new cards.
    X[rng.random(n) < 0.15, 7] = np.nan
    X[card_age < 30, 6] = np.nan
    return X, y


def fraud(rng):
    X, y = fraud_features(rng, 20000)
    # The training data, for `flotilla profile` (drift reference) and the drift example.
    table = pa.table({name: X[:, j] for j, name in enumerate(FRAUD_FEATURES)} | {"is_fraud": y})
    (ROOT.parent / "drift").mkdir(exist_ok=True)
    pq.write_table(table, ROOT.parent / "drift" / "fraud_train.parquet", compression="zstd")
    dm = xgb.DMatrix(X, label=y, feature_names=FRAUD_FEATURES, feature_types=FRAUD_TYPES, enable_categorical=True)
    params = {"objective": "binary:logistic", "max_depth": 5, "eta": 0.1, "tree_method": "hist",
              "max_cat_to_onehot": 1, "nthread": 1, "seed": 0}
    booster = xgb.train(params, dm, num_boost_round=120)
    out = ROOT / "fraud_xgb"
    (out / "1").mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out / "1" / "xgboost.json"))
    (out / "config.pbtxt").write_text(FRAUD_CONFIG)
    (out / "features.txt").write_text("\n".join(FRAUD_FEATURES) + "\n")


def ranker(rng):
    queries, per = 400, 20
    n = queries * per
    X = rng.normal(size=(n, 12)).astype(np.float32)
    rel = X[:, 0] * 1.5 + X[:, 1] - 0.5 * X[:, 2] ** 2 + rng.normal(scale=0.5, size=n)
    y = np.clip(np.digitize(rel, [-1, 0.5, 1.5, 2.5]), 0, 4)
    params = {"objective": "lambdarank", "num_leaves": 15, "learning_rate": 0.1, "min_data_in_leaf": 10,
              "verbose": -1, "num_threads": 1, "deterministic": True, "seed": 0}
    booster = lgb.train(params, lgb.Dataset(X, label=y, group=[per] * queries), num_boost_round=80)
    out = ROOT / "ranker_lgbm"
    (out / "1").mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out / "1" / "model.txt"))
    (out / "features.txt").write_text("\n".join(f"f{i}" for i in range(12)) + "\n")


if __name__ == "__main__":
    fraud(np.random.default_rng(0))
    ranker(np.random.default_rng(1))
