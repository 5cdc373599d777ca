"""Drift monitoring cost: the example fraud_xgb model served with monitoring off and on, the same
load (wrk, KServe v2 JSON bodies of 1 and 64 rows drawn like its training data), one run, points
interleaved off/on/off/on so that machine noise falls on both. Writes bench/results/drift.{md,json}.
With --what payload, the same for the payload log (every request logged: `sample = 1.0`), written to
bench/results/payload.{md,json}.

Usage (from bench/drift/run.sh): python3 bench/drift/bench.py --flotilla target/release/flotilla
  [--what drift|payload] [--seconds 8] [--smoke]"""
import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "bench" / ".work-drift"
WRK_LUA = ROOT / "bench" / "serving" / "wrk.lua"
PORTS = {"off": 18400, "on": 18410}


def log(msg):
    print(f"==> {msg}", flush=True)


def rows(n, rng):
    """Rows like examples/drift/fraud_train.parquet (scripts/make_tree_examples.py), without NaN."""
    out = []
    for _ in range(n):
        amount = rng.lognormvariate(3.5, 1.2)
        count = 0
        t = rng.expovariate(1.0)
        while t < 1.5:  # Poisson(1.5)
            count += 1
            t += rng.expovariate(1.0)
        out.append([amount, float(rng.randrange(24)), float(rng.randrange(12)), float(rng.randrange(30)),
                    rng.expovariate(1 / 400), float(count), amount * rng.lognormvariate(0, 0.5), rng.expovariate(1 / 30)])
    return out


def body(n, rng):
    data = [round(v, 4) for r in rows(n, rng) for v in r]
    return json.dumps({"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [n, 8], "data": data}]})


def http_get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


WHAT = "drift"


def feature_flags(mode):
    """The flags that turn the measured feature off or on."""
    if WHAT == "payload":
        flags = ["--drift-monitoring", "false"]
        return flags + (["--payload-log", str(WORK / "payload")] if mode == "on" else [])
    return ["--drift-monitoring", "true" if mode == "on" else "false"]


class Server:
    def __init__(self, flotilla, repo, mode):
        port = PORTS[mode]
        self.url = f"http://127.0.0.1:{port}"
        self.metrics = f"http://127.0.0.1:{port + 2}/metrics"
        self.log = open(WORK / f"server-{mode}.log", "w")
        self.proc = subprocess.Popen(
            SERVER_CPUS + [str(flotilla), "serve", "--model-repository", str(repo), "--model-control-mode", "explicit",
             "--load-model", "fraud_xgb", "--feature-repo", "none", *feature_flags(mode),
             "--drift-state-dir", "none", "--host", "127.0.0.1", "--http-port", str(port), "--grpc-port", str(port + 1),
             "--metrics-port", str(port + 2), "--log-level", "warn"],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.time() + 60
        while True:
            try:
                if "fraud_xgb" in http_get(f"{self.url}/v2/models/fraud_xgb"):
                    return
            except Exception:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"flotilla ({mode}) did not start; see {self.log.name}")
            time.sleep(0.2)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


def wrk(url, body_path, c, seconds):
    out = subprocess.run(WRK_CPUS + ["wrk", "-t", str(min(2, c)), "-c", str(c), "-d", f"{seconds}s", "--timeout", "5s", "-s",
                          str(WRK_LUA), url], env={**os.environ, "WRK_BODY": str(body_path)},
                         capture_output=True, text=True, check=True).stdout
    r = json.loads(next(l for l in out.splitlines() if l.startswith("WRKJSON "))[len("WRKJSON "):])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    if r["non2xx"] or r["socket_errors"] or r["timeouts"]:
        raise SystemExit(f"errors from {url}: {r}")
    return r


# wrk on CPU 0, the servers on the others: the load generator does not compete with the server
# (and its monitor) for a core, which takes most of the run-to-run noise away on a small machine.
if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
    WRK_CPUS = ["taskset", "-c", "0"]
    SERVER_CPUS = ["taskset", "-c", f"1-{os.cpu_count() - 1}"]
else:
    WRK_CPUS, SERVER_CPUS = [], []


def median(xs):
    xs = sorted(xs)
    return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2


def spread(xs):
    """(max - min) / median of a server's runs at one point."""
    xs = list(xs)
    return (max(xs) - min(xs)) / median(xs)


def metric(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flotilla", type=Path, required=True)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=5, help="off/on pairs per point")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--what", choices=("drift", "payload"), default="drift")
    args = ap.parse_args()
    global WHAT, WORK
    WHAT = args.what
    if WHAT == "payload":
        WORK = ROOT / "bench" / ".work-payload"
    if args.smoke:
        args.seconds, args.rounds = 2, 1
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    repo = WORK / "repository"
    shutil.copytree(ROOT / "examples" / "repository" / "fraud_xgb", repo / "fraud_xgb")
    # Monitoring as shipped, minus the example's webhook target (nothing listens during the bench).
    (repo / "fraud_xgb" / "drift.toml").write_text("[window]\nrows = 1000\nseconds = 60\n")
    # The payload log's worst case: every request logged.
    (repo / "fraud_xgb" / "payload.toml").write_text("sample = 1.0\n")
    rng = random.Random(7)
    bodies = {}
    for n in (1, 64):
        bodies[n] = WORK / f"body-{n}.json"
        bodies[n].write_text(body(n, rng))
    servers = {m: Server(args.flotilla, repo, m) for m in ("off", "on")}
    started = time.time()
    points = []
    try:
        for n in (1, 64):
            for c in (1, 8):
                runs = {"off": [], "on": []}
                url = lambda m: f"{servers[m].url}/v2/models/fraud_xgb/infer"
                wrk(url("off"), bodies[n], c, 1)  # warm-up
                wrk(url("on"), bodies[n], c, 1)
                for i in range(args.rounds):
                    # pairs alternate which server goes first, so a slow drift of the machine cancels
                    for m in (("off", "on") if i % 2 == 0 else ("on", "off")):
                        runs[m].append(wrk(url(m), bodies[n], c, args.seconds))
                p = {"rows": n, "c": c}
                for m in ("off", "on"):
                    p[m] = {"rps": median(r["rps"] for r in runs[m]),
                            "p50_us": median(r["p50_us"] for r in runs[m]),
                            "p99_us": median(r["p99_us"] for r in runs[m]),
                            "runs": [{"rps": round(r["rps"]), "p99_us": r["p99_us"]} for r in runs[m]]}
                # each pair ran back to back: the median of the pairs' ratios
                pairs = list(zip(runs["off"], runs["on"]))
                p["throughput_change"] = median(b["rps"] / a["rps"] for a, b in pairs) - 1
                p["p99_change"] = median(b["p99_us"] / a["p99_us"] for a, b in pairs) - 1
                # the noise floor: how far the off server's own runs spread (off against off)
                p["off_spread"] = {"rps": spread(r["rps"] for r in runs["off"]),
                                   "p99": spread(r["p99_us"] for r in runs["off"])}
                log(f"{n} rows c={c}: off {p['off']['rps']:,.0f} req/s p99 {p['off']['p99_us']:.0f} µs | "
                    f"on {p['on']['rps']:,.0f} req/s p99 {p['on']['p99_us']:.0f} µs | "
                    f"throughput {p['throughput_change']:+.1%}, p99 {p['p99_change']:+.1%}")
                points.append(p)
        text = http_get(servers["on"].metrics)
        payload = {
            "rows_written": metric(text, "flotilla_payload_log_rows_total", outcome="written"),
            "rows_dropped": metric(text, "flotilla_payload_log_rows_total", outcome="dropped"),
            "files": metric(text, "flotilla_payload_log_files_total"),
        }
        drift = {
            "rows_monitored": metric(text, "flotilla_drift_rows_total", model="fraud_xgb"),
            "requests_skipped_overload": metric(text, "flotilla_drift_skipped_requests_total", reason="overload"),
            "requests_sampled_out": metric(text, "flotilla_drift_skipped_requests_total", reason="sampled"),
            "windows": metric(text, "flotilla_drift_windows_total", model="fraud_xgb"),
            "alerts_raised": sum(1 for l in text.splitlines() if l.startswith("flotilla_drift_alert{") and not l.endswith(" 0")),
        }
        requests_on = sum(r["rps"] * args.seconds for p in points for r in p["on"]["runs"])
        drift["requests_served_on_approx"] = requests_on
    finally:
        for s in servers.values():
            s.stop()
    res = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "seconds": args.seconds,
           "rounds": args.rounds, "smoke": args.smoke, "took_s": time.time() - started, "points": points, "drift": drift,
           "what": WHAT, "payload": payload,
           "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
           "pinning": SERVER_CPUS[-1] if SERVER_CPUS else None,
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()}
    res["targets"] = {
        "throughput_drop_le_3pct": all(p["throughput_change"] >= -0.03 for p in points),
        "p99_increase_le_5pct": all(p["p99_change"] <= 0.05 for p in points),
    }
    out = WORK if args.smoke else ROOT / "bench" / "results"
    (out / f"{WHAT}.json").write_text(json.dumps(res, indent=1) + "\n")
    write_md(res, out / f"{WHAT}.md")
    log(f"wrote {(out / f'{WHAT}.md').relative_to(ROOT)}")
    for k, v in res["targets"].items():
        log(f"{'PASS' if v else 'MISS'}  {k}")


def verdict(res, key, ok):
    missed = [f"{p['rows']} row{'s' if p['rows'] > 1 else ''} c={p['c']}" for p in res["points"] if not ok(p[key])]
    return "met" if not missed else "**missed** at " + ", ".join(missed)


def points_table(res):
    """The off/on table of every point (drift and payload reports alike)."""
    L = ["| rows per request | c | off req/s | off p50 µs | off p99 µs | on req/s | on p50 µs | on p99 µs | throughput | p99 "
         "| noise req/s | noise p99 |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in res["points"]:
        noise = p.get("off_spread", {"rps": float("nan"), "p99": float("nan")})
        L.append(f"| {p['rows']} | {p['c']} | {p['off']['rps']:,.0f} | {p['off']['p50_us']:.0f} | {p['off']['p99_us']:.0f} | "
                 f"{p['on']['rps']:,.0f} | {p['on']['p50_us']:.0f} | {p['on']['p99_us']:.0f} | {p['throughput_change']:+.1%} | "
                 f"{p['p99_change']:+.1%} | {noise['rps']:.1%} | {noise['p99']:.1%} |")
    return L


def write_md(res, path):
    if res.get("what") == "payload":
        return write_payload_md(res, path)
    L = ["# Drift monitoring cost", "",
         f"Generated by `bench/drift/run.sh` on {res['date']} (commit {res['commit']}, took {res['took_s'] / 60:.1f} min). "
         f"One machine ({res['machine']['cores']} cores) runs both servers and wrk; only one server is loaded at a time"
         + (f"; wrk is pinned to CPU 0 and the servers to CPUs {res['pinning']}" if res.get("pinning") else "") + ".", "",
         "`fraud_xgb` (XGBoost, 120 trees, 8 features) served twice by `target/release/flotilla`: `--drift-monitoring false` "
         "and `true` (its shipped reference profile: 8 features + 2 outputs + PCA; windows of 1,000 rows). "
         f"wrk POSTs the same KServe v2 JSON body to both; each point is {res['rounds']} off/on pairs of {res['seconds']} s, "
         "back to back (which goes first alternates); the columns are medians over the runs, the changes the median "
         "of the pairs' ratios. *Noise* is how far the off server's own runs spread ((max − min) / median): a change "
         "smaller than it cannot be told from the machine's noise.", "",
         *points_table(res)]
    d = res["drift"]
    L += ["", f"Monitoring side (server with monitoring on): {d['rows_monitored']:,.0f} rows folded into "
          f"{d['windows']:,.0f} windows; {d.get('requests_sampled_out', 0):,.0f} requests left out by the CPU-budget sampling "
          f"(`--drift-cpu-budget`, default 2% of a core); {d['requests_skipped_overload']:,.0f} requests skipped because the aggregator's "
          f"queue was full; {d['alerts_raised']} alert states raised.", "",
          "Targets (at every point): throughput drop ≤ 3% " + verdict(res, "throughput_change", lambda x: x >= -0.03) +
          "; p99 increase ≤ 5% " + verdict(res, "p99_change", lambda x: x <= 0.05) + ".", "",
          "Rerun: `bench/drift/run.sh` (`--smoke`: a short check, tables in bench/.work-drift/).", ""]
    path.write_text("\n".join(L))


def write_payload_md(res, path):
    L = ["# Payload log cost", "",
         f"Generated by `bench/drift/run.sh --what payload` on {res['date']} (commit {res['commit']}, took "
         f"{res['took_s'] / 60:.1f} min). One machine ({res['machine']['cores']} cores) runs both servers and wrk; only one "
         "server is loaded at a time" + (f"; wrk is pinned to CPU 0 and the servers to CPUs {res['pinning']}"
                                          if res.get("pinning") else "") + ".", "",
         "`fraud_xgb` served twice by `target/release/flotilla`, drift monitoring off in both: without `--payload-log` and "
         "with it, the model's `payload.toml` logging **every** request (`sample = 1.0`, the worst case). "
         f"Each point is {res['rounds']} off/on pairs of {res['seconds']} s, back to back; medians, and the median of the "
         "pairs' ratios. *Noise*: the off server's own spread ((max − min) / median).", "",
         *points_table(res)]
    d = res["payload"]
    L += ["", f"Log side: {d['rows_written']:,.0f} requests written, {d['rows_dropped']:,.0f} dropped (queue full), "
          f"{d['files']:,.0f} files completed.", "",
          "Target (at every point): throughput drop ≤ 3% " + verdict(res, "throughput_change", lambda x: x >= -0.03) + ".", "",
          "Rerun: `bench/drift/run.sh --what payload`.", ""]
    path.write_text("\n".join(L))


if __name__ == "__main__":
    main()
