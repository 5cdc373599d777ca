"""Reference values for the drift metrics (tests/fixtures/drift), computed by scipy and numpy on
generated data with known shifts. The Rust tests recompute every metric from the same raw samples
and must agree within 1e-9; sketch-based values must stay within the sketch's error.

Run: .venv/bin/python scripts/make_drift_fixtures.py   (numpy, scipy from tests/requirements.txt)
Writes <scenario>.ref.f64 / <scenario>.win.f64 (little-endian float64, NaN = missing; 2-D
scenarios row-major with `dims` columns) and expected.json."""
import json
import pathlib

import numpy as np
import scipy
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp, wasserstein_distance

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "drift"
EPS = 1e-4  # PSI's floor on a proportion (crates/drift/src/distance.rs PSI_EPSILON)
rng = np.random.default_rng(20261124)
N_REF, N_WIN = 20_000, 5_000


def deciles(ref):
    finite = ref[np.isfinite(ref)]
    edges = np.quantile(finite, np.arange(1, 10) / 10)
    return np.array([e for i, e in enumerate(edges) if i == 0 or e != edges[i - 1]])


def counts(values, edges):
    finite = values[np.isfinite(values)]
    return np.bincount(np.searchsorted(edges, finite, side="left"), minlength=len(edges) + 1)


def psi(expected, actual):
    e = np.maximum(expected / expected.sum(), EPS)
    a = np.maximum(actual / actual.sum(), EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def numeric(name, ref, win):
    ref.astype("<f8").tofile(OUT / f"{name}.ref.f64")
    win.astype("<f8").tofile(OUT / f"{name}.win.f64")
    r, w = ref[np.isfinite(ref)], win[np.isfinite(win)]
    edges = deciles(ref)
    rc, wc = counts(ref, edges), counts(win, edges)
    return {
        "kind": "numeric", "dims": 1,
        "ks": float(ks_2samp(r, w).statistic),
        "wasserstein": float(wasserstein_distance(r, w)),
        "ref_std": float(np.std(r)),
        "bin_edges": edges.tolist(),
        "ref_bins": rc.tolist(), "win_bins": wc.tolist(),
        "psi": psi(rc, wc),
        "jensen_shannon": float(jensenshannon(rc, wc, base=2)),
        "ref_missing_rate": float(np.mean(~np.isfinite(ref))),
        "win_missing_rate": float(np.mean(~np.isfinite(win))),
        "out_of_range_rate": float(np.mean((w < r.min()) | (w > r.max()))),
    }


def categorical(name, ref, win):
    (OUT / f"{name}.ref.json").write_text(json.dumps(ref))
    (OUT / f"{name}.win.json").write_text(json.dumps(win))
    rv = [v for v in ref if v is not None]
    wv = [v for v in win if v is not None]
    cats = sorted(set(rv))
    cats += sorted(set(wv) - set(rv))
    rc = np.array([rv.count(c) for c in cats] + [0])  # last: the folded remainder (empty here)
    wc = np.array([wv.count(c) for c in cats] + [0])
    return {
        "kind": "categorical",
        "psi": psi(rc, wc),
        "jensen_shannon": float(jensenshannon(rc, wc, base=2)),
        "new_category_rate": float(np.mean([v not in set(rv) for v in wv])),
        "ref_missing_rate": float(np.mean([v is None for v in ref])),
        "win_missing_rate": float(np.mean([v is None for v in win])),
    }


def pca_errors(ref, win, variance=0.65):
    """NannyML-style: standardise by the reference, keep components explaining `variance`."""
    mean, std = ref.mean(axis=0), ref.std(axis=0)
    z = (ref - mean) / std
    values, vectors = np.linalg.eigh(np.cov(z, rowvar=False, bias=True))
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    share = np.cumsum(values) / values.sum()
    k = int(np.searchsorted(share, variance, side="left") + 1)
    p = vectors[:, :k]

    def err(x):
        zz = (x - mean) / std
        return np.linalg.norm(zz - zz @ p @ p.T, axis=1)
    return {"components": k, "explained": float(share[k - 1]), "ref_error_mean": float(err(ref).mean()),
            "ref_error_std": float(err(ref).std()), "win_error_mean": float(err(win).mean())}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    base = rng.normal(10, 2, N_REF)
    expected = {"numpy": np.__version__, "scipy": scipy.__version__, "psi_epsilon": EPS, "scenarios": {}}
    s = expected["scenarios"]
    s["no_shift"] = numeric("no_shift", base, rng.normal(10, 2, N_WIN))
    s["mean_shift"] = numeric("mean_shift", base, rng.normal(11, 2, N_WIN))
    s["variance_change"] = numeric("variance_change", base, rng.normal(10, 4, N_WIN))
    miss = rng.normal(10, 2, N_WIN)
    miss[rng.random(N_WIN) < 0.3] = np.nan
    ref_miss = base.copy()
    ref_miss[rng.random(N_REF) < 0.02] = np.nan
    s["missing_jump"] = numeric("missing_jump", ref_miss, miss)
    # a discrete feature: repeated values, fewer than 10 distinct deciles
    s["discrete"] = numeric("discrete", rng.poisson(2, N_REF).astype(float), rng.poisson(3, N_WIN).astype(float))
    s["heavy_tail"] = numeric("heavy_tail", rng.lognormal(0, 1, N_REF), rng.lognormal(0.2, 1.2, N_WIN))
    cats = ["visa", "mastercard", "amex", "discover"]
    ref_c = [str(v) for v in rng.choice(cats, N_REF, p=[0.5, 0.3, 0.15, 0.05])]
    win_c = [str(v) for v in rng.choice(cats + ["unionpay", "jcb"], N_WIN, p=[0.4, 0.3, 0.1, 0.05, 0.1, 0.05])]
    for i in range(0, N_WIN, 50):
        win_c[i] = None
    s["categories"] = categorical("categories", ref_c, win_c)
    # correlated shift: both marginals N(0, 1) in both sets, correlation +0.9 → -0.9
    def pair(n, rho):
        x = rng.normal(0, 1, n)
        y = rho * x + np.sqrt(1 - rho * rho) * rng.normal(0, 1, n)
        return np.column_stack([x, y, rng.normal(5, 1, n)])
    ref2, win2 = pair(N_REF, 0.9), pair(N_WIN, -0.9)
    ref2.astype("<f8").tofile(OUT / "correlated.ref.f64")
    win2.astype("<f8").tofile(OUT / "correlated.win.f64")
    s["correlated"] = {"kind": "multivariate", "dims": 3, **pca_errors(ref2, win2),
                       "marginal_ks": [float(ks_2samp(ref2[:, j], win2[:, j]).statistic) for j in range(3)]}
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
