"""Tree-engine benchmark: Flotilla's engine against XGBoost, LightGBM and lleaves.

One run, same machine, same rows, single thread, every engine timed in-process
(Python libraries: the predict call in a loop, per call; Flotilla: Engine::infer in a
Rust loop, tensor in -> tensor out). Models: 500 trees, depth 8, 50 features, binary
logistic, trained here on synthetic data with NaNs. Results: a markdown table and a
JSON file under bench/results/, with the machine description and library versions.
"""
import argparse, json, os, platform, socket, subprocess, sys, time
from pathlib import Path

import numpy as np
import xgboost as xgb
import lightgbm as lgb

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "bench" / ".work-trees"
FEATURES, TREES, DEPTH = 50, 500, 8
BATCHES = [1, 1024]


def data(rows, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    X[rng.random(X.shape) < 0.05] = np.nan
    z = np.nan_to_num(X[:, 0] * X[:, 1] + np.sin(X[:, 2] * 3) + X[:, 3:10].sum(axis=1) * 0.3)
    y = (z + rng.normal(scale=0.5, size=rows) > 0).astype(np.float32)
    return X, y


def train(X, y):
    WORK.mkdir(parents=True, exist_ok=True)
    xm, lm = WORK / "xgb.json", WORK / "lgb.txt"
    if not xm.exists():
        print("training XGBoost (500 trees, depth 8)...", flush=True)
        params = {"objective": "binary:logistic", "max_depth": DEPTH, "eta": 0.05, "tree_method": "hist",
                  "min_child_weight": 0.1, "nthread": os.cpu_count(), "seed": 0}
        xgb.train(params, xgb.DMatrix(X, label=y), num_boost_round=TREES).save_model(xm)
    if not lm.exists():
        print("training LightGBM (500 trees, depth 8)...", flush=True)
        params = {"objective": "binary", "max_depth": DEPTH, "num_leaves": 2 ** DEPTH - 1, "learning_rate": 0.05,
                  "min_data_in_leaf": 3, "verbose": -1, "num_threads": os.cpu_count(), "seed": 0}
        lgb.train(params, lgb.Dataset(X, label=y), num_boost_round=TREES).save_model(str(lm))
    return xm, lm


def time_calls(fn, seconds):
    """Median and mean µs per call of fn(), after a warm-up."""
    for _ in range(5):
        fn()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 10:
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1e3)
    times.sort()
    return {"median_us": times[len(times) // 2], "mean_us": sum(times) / len(times), "calls": len(times)}


def cycle(X, batch):
    """Callable argument source cycling through the rows, as requests would."""
    starts = [(i * batch) % (len(X) - batch + 1) for i in range(64)]
    chunks = [np.ascontiguousarray(X[s:s + batch]) for s in starts]
    state = {"i": 0}

    def nxt():
        state["i"] += 1
        return chunks[state["i"] % len(chunks)]
    return nxt


def flotilla(harness, model, rows_file, seconds):
    out = subprocess.run([harness, str(model), str(rows_file), str(FEATURES), str(seconds),
                          ",".join(map(str, BATCHES)), f"1,{os.cpu_count()}"],
                         check=True, capture_output=True, text=True).stdout
    res = {}
    for line in out.splitlines():
        r = json.loads(line)
        res[(r["batch"], r["threads"])] = r
    preds = np.fromfile(model.with_suffix(".flotilla.f64"), dtype="<f8")
    return res, preds


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(), "arch": platform.machine(),
            "python": platform.python_version()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--harness", required=True)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    Xtr, ytr = data(20000, 0)
    Xte, _ = data(4096, 1)
    xm, lm = train(Xtr, ytr)
    rows_file = WORK / "rows.f32"
    Xte.astype("<f4").tofile(rows_file)

    results = {"machine": machine(), "versions": {"xgboost": xgb.__version__, "lightgbm": lgb.__version__},
               "model": {"trees": TREES, "depth": DEPTH, "features": FEATURES, "objective": "binary"}, "rows": []}

    booster = xgb.Booster(model_file=str(xm))
    booster.set_param({"nthread": 1})
    lgbm = lgb.Booster(model_file=str(lm))
    try:
        import lleaves
        from importlib.metadata import version
        results["versions"]["lleaves"] = version("lleaves")
        ll = lleaves.Model(model_file=str(lm))
        print("compiling the LightGBM model with lleaves (LLVM)...", flush=True)
        ll.compile(cache=str(WORK / "lgb.lleaves.so"))
    except Exception as e:  # lleaves is optional: say so in the table
        print(f"lleaves unavailable: {e}", file=sys.stderr)
        ll = None

    fx, fx_preds = flotilla(args.harness, xm, rows_file, args.seconds)
    fl, fl_preds = flotilla(args.harness, lm, rows_file, args.seconds)
    parity = {
        "xgboost_max_abs_diff": float(np.max(np.abs(fx_preds - booster.inplace_predict(Xte[:1024])))),
        "lightgbm_max_abs_diff": float(np.max(np.abs(fl_preds - lgbm.predict(Xte[:1024], num_threads=1)))),
    }
    if ll is not None:
        parity["lleaves_vs_lightgbm_max_abs_diff"] = float(
            np.max(np.abs(ll.predict(Xte[:1024].astype(np.float64), n_jobs=1) - lgbm.predict(Xte[:1024]))))
    results["parity"] = parity

    for batch in BATCHES:
        nx = cycle(Xte, batch)
        x = time_calls(lambda: booster.inplace_predict(nx()), args.seconds)
        nl = cycle(Xte, batch)
        l = time_calls(lambda: lgbm.predict(nl(), num_threads=1), args.seconds)
        nd = cycle(Xte.astype(np.float64), batch)
        ll_t = time_calls(lambda: ll.predict(nd(), n_jobs=1), args.seconds) if ll is not None else None
        results["rows"].append({
            "batch": batch,
            "flotilla_xgb_1t": fx[(batch, 1)], "flotilla_xgb_all": fx[(batch, os.cpu_count())],
            "xgboost_1t": x,
            "flotilla_lgb_1t": fl[(batch, 1)], "flotilla_lgb_all": fl[(batch, os.cpu_count())],
            "lightgbm_1t": l, "lleaves_1t": ll_t,
        })

    m = results["machine"]
    lines = [f"# Tree engine vs XGBoost / LightGBM / lleaves ({time.strftime('%Y-%m-%d')}, {m['cpu']}, "
             f"{m['cores']} cores)", "",
             f"500 trees, depth 8, 50 features, binary logistic; median µs per predict call, in-process, "
             f"single thread unless noted. xgboost {xgb.__version__}, lightgbm {lgb.__version__}, "
             f"lleaves {results['versions'].get('lleaves', 'n/a')}.", "",
             "| model | batch | Flotilla | peer | peer µs | speed-up | Flotilla all cores |",
             "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        b = r["batch"]
        rows = [("XGBoost", r["flotilla_xgb_1t"], "xgboost inplace_predict", r["xgboost_1t"], r["flotilla_xgb_all"]),
                ("LightGBM", r["flotilla_lgb_1t"], "lightgbm predict", r["lightgbm_1t"], r["flotilla_lgb_all"])]
        if r["lleaves_1t"]:
            rows.append(("LightGBM", r["flotilla_lgb_1t"], "lleaves predict", r["lleaves_1t"], r["flotilla_lgb_all"]))
        for name, ours, peer, theirs, allc in rows:
            lines.append(f"| {name} | {b} | {ours['median_us']:.1f} µs | {peer} | {theirs['median_us']:.1f} | "
                         f"**{theirs['median_us'] / ours['median_us']:.2f}×** | {allc['median_us']:.1f} µs |")
    lines += ["", "Parity on the first 1024 rows (max |Flotilla − library|): " +
              ", ".join(f"{k} {v:.2e}" for k, v in parity.items()), ""]
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    (out / f"trees-{host}.md").write_text("\n".join(lines))
    (out / f"trees-{host}.json").write_text(json.dumps(results, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
