#!/usr/bin/env python3
"""Generate reference fixtures for the pure-Rust tree-ensemble engine (crates/trees).

Every case is trained on synthetic data made here (fixed seeds, no downloads) with the
REAL xgboost / lightgbm wheels, and the libraries' own predictions on held-out rows are
stored next to the model file, so the Rust engine can be checked bit-for-bit (up to
float tolerance) against the reference implementations.

Run:  .venv/bin/python scripts/make_tree_fixtures.py   (from the repository root)

Generated with (pinned here for reproducibility; other versions still run, with a warning,
but the bytes will differ):
    xgboost-cpu   3.2.0
    lightgbm      4.7.0
    numpy         1.26.4
    scikit-learn  1.9.1   (only for the XGBClassifier case)
    Python        3.x, Linux x86_64

Output: tests/fixtures/trees/<case>/
    model.json | model.ubj | model.txt   the model as the library saves it
    case.json     metadata (library, version, objective, shapes, missing value, ...)
    X.f32         R x F test rows, little-endian float32, row-major, NaN = missing
    predict.f64   R x predict_cols little-endian float64: library's default prediction
    margin.f64    R x margin_cols little-endian float64: raw margins
                  (XGBoost output_margin=True, LightGBM raw_score=True)

Held-out rows contain ~10% NaN in numeric features, exact 0.0 / -0.0, values exactly equal
to split thresholds taken from the trained model and their float32 neighbours
(np.nextafter), so `<` vs `<=` and f32-vs-f64 comparison bugs show up. Categorical
columns also contain unseen codes (larger than any seen in training), negative codes
and NaN.

Omitted combinations: none -- every case in the brief trains with the versions above.
(For LightGBM thresholds are doubles and usually not representable in float32, so the
"exact threshold" rows hold the nearest float32 and its two float32 neighbours.)
"""

import json
import os
import shutil
import sys
import warnings

import numpy as np

import lightgbm as lgb
import xgboost as xgb

EXPECTED = {"xgboost": "3.2.0", "lightgbm": "4.7.0", "numpy": "1.26.4"}
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "trees")
N_TRAIN = 1200
N_TEST = 300


# --------------------------------------------------------------------------- data
def make_features(rng, n, f):
    """Mixed-distribution numeric features (float32-representable)."""
    cols = []
    for j in range(f):
        kind = j % 4
        if kind == 0:
            c = rng.normal(size=n)
        elif kind == 1:
            c = rng.uniform(-2.0, 3.0, size=n)
        elif kind == 2:
            c = rng.integers(0, 11, size=n).astype(np.float64)  # integer valued
        else:
            c = rng.lognormal(0.0, 0.7, size=n)
        cols.append(c)
    return np.stack(cols, axis=1).astype(np.float32)


def latent(X):
    """A smooth nonlinear score of the (NaN -> 0) features, roughly standardised."""
    Z = np.nan_to_num(X.astype(np.float64), nan=0.0)
    z = (
        1.2 * Z[:, 0]
        - 0.8 * Z[:, 1]
        + 0.25 * (Z[:, 2] - 5.0)
        + 0.6 * np.log1p(np.abs(Z[:, 3]))
        + 0.5 * Z[:, 0] * Z[:, 1]
        + np.sin(Z[:, 4] if Z.shape[1] > 4 else Z[:, 0])
    )
    if Z.shape[1] > 5:
        z += 0.4 * Z[:, 5]
    return (z - z.mean()) / (z.std() + 1e-9)


def labels(kind, z, rng, k=3):
    n = len(z)
    if kind == "reg":
        return z * 2.0 + 1.0 + rng.normal(scale=0.3, size=n)
    if kind == "unit":  # continuous in [0, 1]
        return 1.0 / (1.0 + np.exp(-(2.0 * z + rng.normal(scale=0.5, size=n))))
    if kind == "binary":
        return (z + rng.normal(scale=0.6, size=n) > 0.1).astype(np.float64)
    if kind == "multi":
        s = z + rng.normal(scale=0.5, size=n)
        qs = np.quantile(s, np.linspace(0, 1, k + 1)[1:-1])
        return np.digitize(s, qs).astype(np.float64)
    if kind == "count":
        return rng.poisson(np.exp(0.6 * z + 0.5)).astype(np.float64)
    if kind == "tweedie":
        cnt = rng.poisson(np.exp(0.5 * z - 0.2))
        return np.array([rng.gamma(2.0, 1.0, size=c).sum() for c in cnt])
    if kind == "gamma":
        return rng.gamma(2.0, np.exp(0.4 * z) / 2.0) + 1e-3
    if kind == "laplace":
        return z * 2.0 + rng.laplace(scale=0.5, size=n)
    if kind == "rank":
        s = z + rng.normal(scale=0.5, size=n)
        return np.digitize(s, np.quantile(s, [0.4, 0.7, 0.85, 0.95])).astype(np.float64)
    raise ValueError(kind)


def groups(rng, n):
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(8, 30)))
    sizes[-1] -= sum(sizes) - n
    if sizes[-1] <= 0:
        sizes.pop()
        sizes[-1] += n - sum(sizes)
    return np.array(sizes)


def f32_neighbours(t):
    t32 = np.float32(t)
    return [t32, np.nextafter(t32, np.float32(np.inf)), np.nextafter(t32, np.float32(-np.inf))]


def test_rows(rng, f, thresholds, cat_features=(), cat_seen=None, missing_value=None,
              nan_frac=0.10):
    """Held-out rows: random rows, threshold-hitting rows, NaN / zero / special cells."""
    X = make_features(rng, N_TEST, f)
    numeric = [j for j in range(f) if j not in cat_features]
    # rows 100.. : pin features to (neighbours of) split thresholds from the model
    for i in range(100, N_TEST):
        for j in numeric:
            ts = thresholds.get(j)
            if ts and rng.random() < 0.6:
                t = ts[int(rng.integers(len(ts)))]
                X[i, j] = f32_neighbours(t)[int(rng.integers(3))]
    # exact zeros and negative zeros (LightGBM zero handling)
    for j in numeric:
        m = rng.random(N_TEST) < 0.02
        X[m, j] = 0.0
        m = rng.random(N_TEST) < 0.01
        X[m, j] = -0.0
    # categorical columns: seen codes, unseen codes, negative codes, NaN
    for j in cat_features:
        c = cat_seen[j]
        col = rng.integers(0, c, size=N_TEST).astype(np.float32)
        special = np.array([c, c + 1, c + 7, 1000, -1, -2, np.nan], dtype=np.float32)
        m = rng.random(N_TEST) < 0.15
        col[m] = special[rng.integers(len(special), size=int(m.sum()))]
        X[:, j] = col
    # missing numeric cells
    for j in numeric:
        m = rng.random(N_TEST) < nan_frac
        X[m, j] = np.nan
        if missing_value is not None:
            m = rng.random(N_TEST) < 0.08
            X[m, j] = missing_value
    return X.astype(np.float32)


# --------------------------------------------------------------------------- output
def write_case(name, library, objective, model_file, X, pred, margin, missing=None,
               cat_features=(), num_class=1, notes=""):
    d = os.path.join(ROOT, name)
    assert os.path.isdir(d)
    X = np.ascontiguousarray(X, dtype="<f4")
    pred = np.asarray(pred, dtype="<f8")
    margin = np.asarray(margin, dtype="<f8")
    if pred.ndim == 1:
        pred = pred.reshape(-1, 1)
    if margin.ndim == 1:
        margin = margin.reshape(-1, 1)
    assert pred.shape[0] == margin.shape[0] == X.shape[0]
    assert np.all(np.isfinite(pred)) and np.all(np.isfinite(margin)), name
    X.tofile(os.path.join(d, "X.f32"))
    np.ascontiguousarray(pred).tofile(os.path.join(d, "predict.f64"))
    np.ascontiguousarray(margin).tofile(os.path.join(d, "margin.f64"))
    meta = {
        "library": library,
        "library_version": xgb.__version__ if library == "xgboost" else lgb.__version__,
        "objective": objective,
        "model_file": model_file,
        "n_features": int(X.shape[1]),
        "n_rows": int(X.shape[0]),
        "missing": missing,
        "categorical_features": [int(c) for c in cat_features],
        "num_class": int(num_class),
        "predict_cols": int(pred.shape[1]),
        "margin_cols": int(margin.shape[1]),
        "notes": notes,
    }
    with open(os.path.join(d, "case.json"), "w") as fh:
        json.dump(meta, fh, indent=2)
        fh.write("\n")
    print(f"{name:34s} pred {pred.shape} margin {margin.shape}")


def case_dir(name):
    d = os.path.join(ROOT, name)
    os.makedirs(d, exist_ok=True)
    return d


# --------------------------------------------------------------------------- xgboost
def xgb_trees(booster):
    gb = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]
    if gb["name"] == "dart":
        gb = gb["gbtree"]
    return gb["model"]["trees"]


def xgb_thresholds(booster):
    out = {}
    for t in xgb_trees(booster):
        for lc, st, fi, c in zip(t["left_children"], t["split_type"], t["split_indices"],
                                 t["split_conditions"]):
            if lc != -1 and st == 0:
                out.setdefault(fi, set()).add(float(np.float32(c)))
    return {k: sorted(v) for k, v in out.items()}


def xgb_objective(booster):
    return json.loads(booster.save_config())["learner"]["objective"]["name"]


def xgb_case(name, seed, objective, label_kind, f=8, rounds=20, params=None, k=1,
             train_nan=0.0, missing=None, cat_features=(), cat_levels=None, fmt="json",
             rank=False, notes="", check_dart=False):
    rng = np.random.default_rng(seed)
    X = make_features(rng, N_TRAIN, f)
    cat_seen = {}
    for j in cat_features:
        c = cat_levels[j]
        X[:, j] = rng.integers(0, c, size=N_TRAIN)
        cat_seen[j] = c
    z = latent(X)
    for j in cat_features:  # make categories matter, non-monotonically
        eff = rng.normal(size=cat_levels[j]) * 1.5
        z = z + eff[X[:, j].astype(int)]
    y = labels(label_kind, z, rng, k=max(k, 2))
    if train_nan:
        m = rng.random(X.shape) < train_nan
        X[m] = np.nan
    if missing is not None:
        m = rng.random(X.shape) < 0.06
        X[m] = missing
    ftypes = ["c" if j in cat_features else "q" for j in range(f)] if cat_features else None
    dm_kw = dict(missing=np.nan if missing is None else missing)
    if cat_features:
        dm_kw.update(feature_types=ftypes, enable_categorical=True)
    qid = None
    if rank:
        qid = np.repeat(np.arange(len(g := groups(rng, N_TRAIN))), g)
    dtrain = xgb.DMatrix(X, y, qid=qid, **dm_kw)
    p = {"objective": objective, "nthread": 1, "seed": seed, "max_depth": 4, "eta": 0.3,
         "tree_method": "hist"}
    if k > 1:
        p["num_class"] = k
    p.update(params or {})
    booster = xgb.train(p, dtrain, num_boost_round=rounds)

    d = case_dir(name)
    model_file = "model." + fmt
    booster.save_model(os.path.join(d, model_file))
    # reload from disk, so the predictions are of exactly the saved model
    booster = xgb.Booster(model_file=os.path.join(d, model_file))
    booster.set_param({"nthread": 1})

    Xt = test_rows(rng, f, xgb_thresholds(booster), cat_features, cat_seen, missing)
    dtest = xgb.DMatrix(Xt, **dm_kw)
    pred = booster.predict(dtest)
    margin = booster.predict(dtest, output_margin=True)
    # cross-check against inplace_predict (no DMatrix); DART differs in the last ulp
    # (different summation order), everything else is bit-identical
    ip = np.asarray(booster.inplace_predict(Xt, missing=dm_kw["missing"])).reshape(pred.shape)
    assert np.allclose(ip, pred, rtol=1e-6, atol=1e-6), name
    if check_dart:
        wd = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["weight_drop"]
        assert len(set(wd)) > 1, "DART weights all equal; drops did not happen"
    write_case(name, "xgboost", xgb_objective(booster), model_file, Xt, pred, margin,
               missing=missing, cat_features=cat_features, num_class=k, notes=notes)
    return booster


def xgb_sklearn_case(name, seed):
    from xgboost import XGBClassifier

    rng = np.random.default_rng(seed)
    f = 7
    X = make_features(rng, N_TRAIN, f)
    y = labels("binary", latent(X), rng).astype(int)
    X[rng.random(X.shape) < 0.05] = np.nan
    clf = XGBClassifier(n_estimators=25, max_depth=4, learning_rate=0.25, n_jobs=1,
                        random_state=seed, tree_method="hist")
    clf.fit(X, y)
    d = case_dir(name)
    clf.save_model(os.path.join(d, "model.json"))
    booster = xgb.Booster(model_file=os.path.join(d, "model.json"))
    booster.set_param({"nthread": 1})
    Xt = test_rows(rng, f, xgb_thresholds(booster))
    dtest = xgb.DMatrix(Xt)
    pred = booster.predict(dtest)
    margin = booster.predict(dtest, output_margin=True)
    assert np.allclose(clf.predict_proba(Xt)[:, 1], pred), name
    write_case(name, "xgboost", xgb_objective(booster), "model.json", Xt, pred, margin,
               notes="XGBClassifier(n_estimators=25, max_depth=4).fit(X, y).save_model(): the "
                     "JSON carries learner.attributes.scikit_learn. predict.f64 is the "
                     "Booster's P(class 1) (== predict_proba[:, 1]), one column.")


# --------------------------------------------------------------------------- lightgbm
def lgb_thresholds(booster):
    out = {}

    def walk(node):
        if "split_feature" not in node:
            return
        if node["decision_type"] == "<=":
            out.setdefault(node["split_feature"], set()).add(float(node["threshold"]))
        walk(node["left_child"])
        walk(node["right_child"])

    for t in booster.dump_model()["tree_info"]:
        walk(t["tree_structure"])
    return {k: sorted(v) for k, v in out.items()}


def lgb_objective(booster):
    text = booster.model_to_string()
    for line in text.splitlines():
        if line.startswith("objective="):
            return line[len("objective="):].split(" ")[0], line[len("objective="):]
    raise ValueError("no objective line")


def lgb_case(name, seed, objective, label_kind, f=8, rounds=25, params=None, k=1,
             train_nan=0.05, cat_features=(), cat_levels=None, rank=False, notes="",
             zeros_train=0.0):
    rng = np.random.default_rng(seed)
    X = make_features(rng, N_TRAIN, f)
    cat_seen = {}
    for j in cat_features:
        X[:, j] = rng.integers(0, cat_levels[j], size=N_TRAIN)
        cat_seen[j] = cat_levels[j]
    z = latent(X)
    for j in cat_features:
        eff = rng.normal(size=cat_levels[j]) * 1.5
        z = z + eff[X[:, j].astype(int)]
    y = labels(label_kind, z, rng, k=max(k, 2))
    if train_nan:
        X[rng.random(X.shape) < train_nan] = np.nan
    if zeros_train:
        X[rng.random(X.shape) < zeros_train] = 0.0
    p = {"objective": objective, "num_threads": 1, "deterministic": True, "verbose": -1,
         "seed": seed, "num_leaves": 15, "learning_rate": 0.2, "min_data_in_leaf": 10,
         "force_row_wise": True}
    if k > 1:
        p["num_class"] = k
    p.update(params or {})
    ds = lgb.Dataset(X, y, group=groups(rng, N_TRAIN) if rank else None,
                     categorical_feature=list(cat_features) if cat_features else "auto",
                     params={"verbose": -1}, free_raw_data=False)
    booster = lgb.train(p, ds, num_boost_round=rounds)

    d = case_dir(name)
    booster.save_model(os.path.join(d, "model.txt"))
    booster = lgb.Booster(model_file=os.path.join(d, "model.txt"))

    Xt = test_rows(rng, f, lgb_thresholds(booster), cat_features, cat_seen)
    pred = booster.predict(Xt, num_threads=1)
    margin = booster.predict(Xt, raw_score=True, num_threads=1)
    # float32 and float64 inputs must agree (the values are float32-representable)
    assert np.array_equal(booster.predict(Xt.astype(np.float64), num_threads=1), pred), name
    obj, line = lgb_objective(booster)
    note = f"model.txt objective line: '{line}'. " + notes
    write_case(name, "lightgbm", obj, "model.txt", Xt, pred, margin,
               cat_features=cat_features, num_class=k, notes=note.strip())
    return booster


# --------------------------------------------------------------------------- cases
def main():
    for lib, mod in (("xgboost", xgb), ("lightgbm", lgb), ("numpy", np)):
        if mod.__version__ != EXPECTED[lib]:
            print(f"warning: {lib} {mod.__version__} != {EXPECTED[lib]} (fixtures will change)",
                  file=sys.stderr)
    warnings.filterwarnings("ignore")
    if os.path.isdir(ROOT):
        for e in os.listdir(ROOT):
            if os.path.isdir(os.path.join(ROOT, e)):
                shutil.rmtree(os.path.join(ROOT, e))
    os.makedirs(ROOT, exist_ok=True)

    s = iter(range(1000, 2000))
    # ---- XGBoost
    xgb_case("xgb_reg_squarederror", next(s), "reg:squarederror", "reg", rounds=20)
    xgb_case("xgb_reg_logistic", next(s), "reg:logistic", "unit", rounds=20)
    xgb_case("xgb_binary_logistic", 4242, "binary:logistic", "binary", rounds=25,
             train_nan=0.08, notes="NaN in training data, so default_left varies.")
    xgb_case("xgb_binary_logistic_ubj", 4242, "binary:logistic", "binary", rounds=25,
             train_nan=0.08, fmt="ubj",
             notes="Same training as xgb_binary_logistic, saved as UBJSON (model.ubj).")
    xgb_case("xgb_binary_logitraw", next(s), "binary:logitraw", "binary", rounds=20)
    xgb_case("xgb_multi_softprob", next(s), "multi:softprob", "multi", k=3, rounds=15,
             notes="num_class 3: trees are interleaved class 0,1,2,0,1,2,... (tree_info).")
    xgb_case("xgb_multi_softmax", next(s), "multi:softmax", "multi", k=4, rounds=12,
             f=10, notes="num_class 4: predict is the arg-max class index (1 column).")
    xgb_case("xgb_count_poisson", next(s), "count:poisson", "count", rounds=20)
    xgb_case("xgb_reg_tweedie", next(s), "reg:tweedie", "tweedie", rounds=20,
             params={"tweedie_variance_power": 1.4}, notes="tweedie_variance_power=1.4")
    xgb_case("xgb_reg_gamma", next(s), "reg:gamma", "gamma", rounds=20)
    xgb_case("xgb_rank_pairwise", next(s), "rank:pairwise", "rank", rounds=20, rank=True,
             notes="Trained with qid groups; prediction is per-row (margin == predict).")
    xgb_case("xgb_rank_ndcg", next(s), "rank:ndcg", "rank", rounds=20, rank=True,
             notes="Trained with qid groups; prediction is per-row (margin == predict).")
    xgb_case("xgb_reg_absoluteerror", next(s), "reg:absoluteerror", "laplace", rounds=20,
             notes="base_score is the label median; leaves are refreshed by line search.")
    xgb_case("xgb_binary_hinge", next(s), "binary:hinge", "binary", rounds=20,
             notes="predict is 1.0 where margin > 0 else 0.0.")
    xgb_case("xgb_binary_logistic_base_score", next(s), "binary:logistic", "binary",
             rounds=15, params={"base_score": 0.3}, notes="explicit base_score=0.3")
    xgb_case("xgb_reg_squarederror_base_score", next(s), "reg:squarederror", "reg",
             rounds=15, params={"base_score": 2.5}, notes="explicit base_score=2.5")
    xgb_case("xgb_rf_reg_squarederror", next(s), "reg:squarederror", "reg", rounds=1,
             params={"num_parallel_tree": 4, "subsample": 0.8, "colsample_bynode": 0.8,
                     "eta": 1.0, "max_depth": 6},
             notes="Random forest: num_parallel_tree=4, subsample=0.8, colsample_bynode=0.8, "
                   "1 round, learning_rate=1 (tree outputs are summed, no averaging).")
    xgb_case("xgb_boosted_rf_binary_logistic", next(s), "binary:logistic", "binary", rounds=5,
             params={"num_parallel_tree": 3, "subsample": 0.8, "colsample_bynode": 0.8},
             notes="Boosted random forest: num_parallel_tree=3, 5 rounds (15 trees).")
    xgb_case("xgb_dart_reg_squarederror", next(s), "reg:squarederror", "reg", rounds=20,
             params={"booster": "dart", "rate_drop": 0.3, "skip_drop": 0.0},
             check_dart=True,
             notes="DART (rate_drop=0.3, skip_drop=0): inference uses all trees, each scaled "
                   "by gradient_booster.weight_drop[i].")
    xgb_case("xgb_missing_value", next(s), "reg:squarederror", "reg", rounds=20,
             missing=-999.0,
             notes="Trained and predicted with missing=-999.0; test rows hold -999.0 and NaN "
                   "(both are missing).")
    xgb_case("xgb_categorical_partition", next(s), "reg:squarederror", "reg", rounds=20,
             cat_features=(0, 1), cat_levels={0: 8, 1: 40}, train_nan=0.03,
             params={"max_cat_to_onehot": 1},
             notes="feature_types c,c,q,...; max_cat_to_onehot=1 -> partition (set) splits. "
                   "Test rows hold unseen codes (>= levels), negative codes and NaN in "
                   "categorical columns. Levels: f0 8, f1 40.")
    xgb_case("xgb_categorical_onehot", next(s), "binary:logistic", "binary", rounds=20,
             cat_features=(0, 3), cat_levels={0: 6, 3: 5}, train_nan=0.03,
             params={"max_cat_to_onehot": 64},
             notes="max_cat_to_onehot=64 -> one-hot (single category) splits. Levels: f0 6, "
                   "f3 5.")
    xgb_case("xgb_multi_categorical", next(s), "multi:softprob", "multi", k=3, rounds=12,
             cat_features=(1,), cat_levels={1: 12}, train_nan=0.03,
             params={"max_cat_to_onehot": 1},
             notes="multi:softprob num_class 3 with a categorical feature f1 (12 levels).")
    xgb_sklearn_case("xgb_sklearn_classifier", next(s))

    # ---- LightGBM
    s = iter(range(3000, 4000))
    lgb_case("lgb_regression", next(s), "regression", "reg")
    lgb_case("lgb_regression_l1", next(s), "regression_l1", "laplace")
    lgb_case("lgb_huber", next(s), "huber", "reg", params={"alpha": 1.5}, notes="alpha=1.5")
    lgb_case("lgb_poisson", next(s), "poisson", "count")
    lgb_case("lgb_tweedie", next(s), "tweedie", "tweedie",
             params={"tweedie_variance_power": 1.4})
    lgb_case("lgb_gamma", next(s), "gamma", "gamma")
    lgb_case("lgb_binary", next(s), "binary", "binary")
    lgb_case("lgb_binary_sigmoid", next(s), "binary", "binary", params={"sigmoid": 0.7},
             notes="sigmoid=0.7: predict = 1 / (1 + exp(-0.7 * raw)).")
    lgb_case("lgb_multiclass", next(s), "multiclass", "multi", k=3, rounds=15)
    lgb_case("lgb_multiclassova", next(s), "multiclassova", "multi", k=3, rounds=15,
             notes="One-vs-all: each class column is an independent sigmoid (not normalised).")
    lgb_case("lgb_lambdarank", next(s), "lambdarank", "rank", rank=True,
             notes="Trained with query groups; prediction is per-row.")
    lgb_case("lgb_cross_entropy", next(s), "cross_entropy", "unit")
    lgb_case("lgb_quantile", next(s), "quantile", "reg", params={"alpha": 0.8},
             notes="alpha=0.8")
    lgb_case("lgb_rf_regression", next(s), "regression", "reg", rounds=10,
             params={"boosting": "rf", "bagging_fraction": 0.7, "bagging_freq": 1,
                     "feature_fraction": 0.8, "num_leaves": 31},
             notes="boosting=rf (model.txt has average_output): predict is the MEAN of the "
                   "trees, but raw_score (margin.f64) is their plain SUM -- LightGBM only "
                   "averages in Predict, not in PredictRaw.")
    lgb_case("lgb_rf_multiclass", next(s), "multiclass", "multi", k=3, rounds=6,
             params={"boosting": "rf", "bagging_fraction": 0.7, "bagging_freq": 1,
                     "feature_fraction": 0.8},
             notes="boosting=rf, multiclass (3): predict = softmax(per-class sum / 6 "
                   "iterations); raw_score (margin.f64) is the unaveraged per-class sum.")
    lgb_case("lgb_categorical", next(s), "regression", "reg", cat_features=(0, 1),
             cat_levels={0: 10, 1: 45}, params={"cat_smooth": 1.0, "min_data_per_group": 10},
             notes="categorical_feature=[0,1] (10 and 45 levels; f1 needs a multi-word "
                   "bitset). Test rows hold unseen codes, negative codes and NaN.")
    lgb_case("lgb_categorical_binary", next(s), "binary", "binary", cat_features=(2, 5),
             cat_levels={2: 6, 5: 3}, params={"min_data_per_group": 10},
             notes="categorical_feature=[2,5]: f2 has 6 levels (> max_cat_to_onehot=4, "
                   "many-vs-many splits), f5 has 3 levels (one-vs-rest splits); both are "
                   "stored as bitsets. NaN also in training rows.")
    lgb_case("lgb_zero_as_missing", next(s), "regression", "reg", zeros_train=0.05,
             params={"zero_as_missing": True},
             notes="zero_as_missing=True: 0, -0, |x|<=1e-35 and NaN all take the default "
                   "branch (missing_type Zero).")
    lgb_case("lgb_no_missing", next(s), "regression", "reg", params={"use_missing": False},
             notes="use_missing=False: missing_type None, NaN at predict time is treated as "
                   "0.0.")
    lgb_case("lgb_linear_tree", next(s), "regression", "reg", rounds=15,
             params={"linear_tree": True, "linear_lambda": 0.01},
             notes="linear_tree=True: leaf output = leaf_const + sum(coeff * x); if any of "
                   "the leaf's features is NaN, the plain leaf_value is used instead.")


if __name__ == "__main__":
    main()
