"""Serving benchmark: Flotilla against MLServer 1.7 and Ray Serve (XGBoost) and Triton 2.51 (Python
backend, onnxruntime MLP), the raw engine in-process, an overload point and memory across reloads,
in one run on one machine with the same models and clients. Started by bench/serving/run.sh, which
installs everything; writes bench/results/serving.{md,json} (--smoke: a short run, --only: some
sections; their tables go to bench/.work-serving/serving-{smoke,partial}.{md,json}). Never asserts
on times: targets are reported PASS/MISS.
"""
import argparse, csv, json, os, platform, shutil, signal, socket, subprocess, sys, time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "bench" / "serving"
WORK = ROOT / "bench" / ".work-serving"
VENV = {k: ROOT / "bench" / f".venv-serving-{k}" for k in ("mlserver", "triton", "client", "ray")}
SITE = "lib/python3.11/site-packages"
PORTS = {"flotilla": 18200, "mlserver": 18210, "triton": 18220, "memory": 18230, "floor": 18240, "ray": 18250}
QUEUE_SIZE = 4  # xgb_q's max_queue_size
BIG_QUEUE_SIZE = 2  # mlp_big_q's max_queue_size (run.sh passes both to make_models.py)


SECTIONS = ("raw", "mlserver", "ray", "floor", "triton", "batching", "overload", "memory")


def log(msg):
    print(f"==> {msg}", flush=True)


# === servers ===

class Server:
    """A server in its own process group; stop() ends the whole group."""
    running = []

    def __init__(self, name, cmd, ready_urls, env=None, cwd=None):
        self.name = name
        self.log = open(WORK / f"{name}.log", "w")
        self.proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, cwd=cwd, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        Server.running.append(self)
        deadline = time.time() + 180
        for url in ready_urls:
            while not http_ok(url):
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    tail = (WORK / f"{name}.log").read_text()[-3000:]
                    raise SystemExit(f"{name} did not become ready ({url}); log tail:\n{tail}")
                time.sleep(0.2)

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self in Server.running:
            Server.running.remove(self)
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self.log.close()

    @classmethod
    def stop_all(cls):
        for s in list(cls.running):
            s.stop()


def http_ok(url, data=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as r:
            return 200 <= r.status < 300
    except Exception:
        return False


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def ort_lib():
    libs = sorted((VENV["triton"] / SITE / "onnxruntime" / "capi").glob("libonnxruntime.so*"))
    if not libs:
        raise SystemExit("onnxruntime wheel not found in the Triton venv")
    return str(libs[0])


def start_flotilla(binary, repo, port, extra=()):
    cmd = [binary, "serve", "--model-repository", str(repo), "--host", "127.0.0.1", "--http-port", str(port),
           "--grpc-port", str(port + 1), "--metrics-port", "0", "--log-level", "warn",
           "--onnxruntime-lib", ort_lib(), "--feature-repo", "none", *extra]
    return Server(f"flotilla-{port}", cmd, [f"http://127.0.0.1:{port}/v2/health/ready"])


def start_mlserver():
    repo = WORK / "mlserver"
    port = PORTS["mlserver"]
    (repo / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": port + 1, "metrics_port": port + 2}))
    env = {"OMP_NUM_THREADS": "1", "PATH": f"{VENV['mlserver']}/bin:{os.environ['PATH']}"}
    return Server("mlserver", [str(VENV["mlserver"] / "bin" / "mlserver"), "start", str(repo)],
                  [f"http://127.0.0.1:{port}/v2/models/xgb/ready"], env=env)


def start_ray():
    """Ray Serve (bench/serving/ray_app.py): 2 replicas behind Ray's HTTP proxy, same XGBoost file."""
    port = PORTS["ray"]
    env = {"RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{VENV['ray']}/bin:{os.environ['PATH']}"}
    server = Server("ray", [str(VENV["ray"] / "bin" / "python"), str(HERE / "ray_app.py"),
                            str(WORK / "models" / "xgb.json"), str(port)],
                    [f"http://127.0.0.1:{port}/v2/models/xgb/infer"], env=env)
    stop = server.stop

    def stop_ray():
        stop()
        # Ray's own daemons (GCS, raylet, workers) may outlive the driver's process group
        subprocess.run([str(VENV["ray"] / "bin" / "ray"), "stop", "--force"], env={**os.environ, **env},
                       capture_output=True, timeout=120)
    server.stop = stop_ray
    return server


def triton_paths():
    wheel = VENV["triton"] / SITE / "pytriton"
    return wheel / "tritonserver", VENV["triton"] / SITE / "nvidia_pytriton.libs"


def start_triton():
    tdir, libs = triton_paths()
    backends = WORK / "triton-backends"
    if not (backends / "python" / "triton_python_backend_stub").exists():
        shutil.rmtree(backends, ignore_errors=True)
        shutil.copytree(tdir / "backends", backends)
        shutil.copy(tdir / "python_backend_stubs" / "3.11" / "triton_python_backend_stub", backends / "python")
    import sysconfig
    port = PORTS["triton"]
    env = {"LD_LIBRARY_PATH": f"{sysconfig.get_config_var('LIBDIR')}:{libs}",
           "PYTHONPATH": str(VENV["triton"] / SITE)}
    cmd = [str(tdir / "bin" / "tritonserver"), "--model-repository", str(WORK / "triton"),
           "--backend-directory", str(backends), "--http-address", "127.0.0.1", "--http-port", str(port),
           "--grpc-address", "127.0.0.1", "--grpc-port", str(port + 1), "--allow-metrics", "false"]
    server = Server("triton", cmd, [f"http://127.0.0.1:{port}/v2/models/mlp/ready"], env=env)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2") as r:
        server.version = json.load(r).get("version", "?")
    return server


# === load generators ===

def wrk(port, model, c, seconds, body="body.json"):
    """REST JSON batch 1 through wrk; connections = c, threads = min(2, c)."""
    out = subprocess.run(
        ["wrk", "-t", str(min(2, c)), "-c", str(c), "-d", f"{seconds}s", "--timeout", "5s", "-s",
         str(HERE / "wrk.lua"), f"http://127.0.0.1:{port}/v2/models/{model}/infer"],
        env={**os.environ, "WRK_BODY": str(WORK / body)}, capture_output=True, text=True)
    line = next((l for l in out.stdout.splitlines() if l.startswith("WRKJSON ")), None)
    if line is None:
        return {"error": (out.stdout + out.stderr)[-500:]}
    r = json.loads(line[8:])
    return {"req_s": r["requests"] / (r["duration_us"] / 1e6), "p50_us": r["p50_us"], "p99_us": r["p99_us"],
            "errors": r["non2xx"] + r["socket_errors"] + r["timeouts"], "requests": r["requests"]}


def server_stats(port, model):
    """Triton statistics extension: cumulative (count, ns) per phase of the model's latest version."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{model}/stats", timeout=10) as r:
        m = json.load(r)["model_stats"][0]
    return {**{k: (v["count"], v["ns"]) for k, v in m["inference_stats"].items()},
            "batches": (m.get("execution_count", 0), m.get("inference_count", 0))}


def wrk_server_side(port, model, c, seconds, body="body.json"):
    """wrk, plus the server's own mean time per request over the run from its statistics, the
    mean batch and the share of the run the engine was computing (one instance: at most 1)."""
    before = server_stats(port, model)
    r = wrk(port, model, c, seconds, body)
    after = server_stats(port, model)
    phases = ("success", "queue", "compute_input", "compute_infer", "compute_output")
    mean = {}
    for k in phases:
        n, ns = after[k][0] - before[k][0], after[k][1] - before[k][1]
        mean[k] = ns / n / 1000 if n else None
    executions = after["batches"][0] - before["batches"][0]
    rows = after["batches"][1] - before["batches"][1]
    # every request of a batch is charged the batch's compute time: rows-weighted mean per batch
    busy = executions * (mean["compute_infer"] or 0) / 1e6 / seconds if executions else None
    return {**r, "server_mean_us": mean, "executions": executions, "mean_batch": rows / executions if executions else None,
            "engine_busy": busy}


def perf_analyzer(port, model, protocol, c, interval_ms):
    """perf_analyzer (binary tensors over HTTP, or gRPC), batch 1, random data."""
    csv_file = WORK / f"pa-{model}-{port}-{protocol}-{c}.csv"
    csv_file.unlink(missing_ok=True)
    env = {**os.environ, "LD_LIBRARY_PATH": cuda_runtime_lib()}
    try:
        out = subprocess.run(
            [str(VENV["client"] / "bin" / "perf_analyzer"), "-m", model, "-u", f"127.0.0.1:{port}", "-i", protocol,
             "--concurrency-range", f"{c}:{c}", "--measurement-interval", str(interval_ms),
             "--stability-percentage", "50", "--max-trials", "5", "-f", str(csv_file)],
            env=env, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        # Seen on the 2-core VM at c=32 while the server kept answering: record it, go on.
        return {"error": "perf_analyzer did not finish within 180 s (no stable measurement window)"}
    if out.returncode != 0 or not csv_file.exists():
        return {"error": (out.stdout + out.stderr).strip()[-400:]}
    row = next(csv.DictReader(open(csv_file)))
    return {"req_s": float(row["Inferences/Second"]), "p50_us": float(row["p50 latency"]),
            "p99_us": float(row["p99 latency"]), "errors": 0}


def cuda_runtime_lib():
    return str(VENV["client"] / SITE / "nvidia" / "cuda_runtime" / "lib")


def bench_load(binary, port, model, c, seconds, body="body.json", retry_after_scale=0.0):
    """flotilla-load (crates/bench), closed loop, C connections POSTing one body: each answer's
    latency is kept under its status, so admitted (200) and shed (429) answers get their own
    percentiles (wrk reports one latency for all). With retry_after_scale > 0 a connection that
    gets 429 waits Retry-After × scale before its next request."""
    mix = WORK / f"mix-{model}-{body}"
    mix.write_text(json.dumps({"kinds": [{"name": model, "weight": 1, "http": {
        "path": f"/v2/models/{model}/infer", "text": (WORK / body).read_text(), "content_type": "application/json"}}]}))
    out = WORK / f"load-{model}.json"
    subprocess.run([binary, "--mix", str(mix), "--http", f"127.0.0.1:{port}", "--connections", str(c),
                    "--duration", str(seconds), "--threads", str(min(2, c)), "--honour-retry-after", str(retry_after_scale),
                    "--out", str(out)], check=True)
    r = json.loads(out.read_text())
    status = {k: {**v, "per_s": v["count"] / r["duration_s"]}
              for k, v in r["kinds"].get(model, {}).items() if not k.startswith("error")}
    errors = sum(v["count"] for k, v in r["kinds"].get(model, {}).items() if k.startswith("error"))
    return {"connections": c, "seconds": r["duration_s"], "errors": errors, "status": status}


def raw_engine(binary, model, seconds, batch=64, callers=2):
    out = subprocess.run([binary, str(WORK / "flotilla" / model), "--seconds", str(seconds), "--batch", str(batch),
                          "--callers", str(callers), "--onnxruntime-lib", ort_lib()], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench_raw {model} failed:\n{out.stderr}")
    return {r["setting"]: r for r in map(json.loads, out.stdout.splitlines())}


# === the run ===

def memory(binary, cycles):
    """Idle RSS with examples/repository loaded, then RSS after `cycles` reloads of every model."""
    repo = WORK / "memrepo"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(ROOT / "examples" / "repository", repo, ignore=shutil.ignore_patterns("minilm"))
    models = sorted(p.name for p in repo.iterdir() if p.is_dir())
    port = PORTS["memory"]
    server = start_flotilla(binary, repo, port, ["--model-control-mode", "explicit", "--load-model", "*"])
    try:
        time.sleep(2)
        idle = rss_kib(server.pid)
        t0, failures, samples = time.time(), 0, []
        for i in range(cycles):
            if i % max(1, cycles // 10) == 0:
                samples.append((i, rss_kib(server.pid)))
            for m in models:
                stamp = time.time() + i  # a new mtime, so the load is a real reload
                for f in (repo / m).rglob("*"):
                    if f.is_file():
                        os.utime(f, (stamp, stamp))
                if not http_ok(f"http://127.0.0.1:{port}/v2/repository/models/{m}/load", data=b"{}"):
                    failures += 1
        reload_s = time.time() - t0
        time.sleep(2)
        after = rss_kib(server.pid)
    finally:
        server.stop()
    return {"models": models, "cycles": cycles, "idle_rss_kib": idle, "after_rss_kib": after,
            "change_pct": (after - idle) / idle * 100, "reload_failures": failures, "reload_seconds": reload_s,
            "samples_cycle_rss_kib": samples + [(cycles, after)]}


def versions(triton):
    def pip_version(venv, pkg):
        out = subprocess.run([str(venv / "bin" / "python"), "-c",
                              f"import importlib.metadata as m; print(m.version('{pkg}'))"], capture_output=True, text=True)
        return out.stdout.strip() or "?"
    default_workers = subprocess.run(
        [str(VENV["mlserver"] / "bin" / "python"), "-c", "from mlserver.settings import Settings; "
         "print(Settings().parallel_workers)"], capture_output=True, text=True).stdout.strip()
    git = lambda *a: subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD")
    if git("status", "--porcelain", "--", "crates", "Cargo.toml", "Cargo.lock"):
        commit += " + uncommitted changes in crates/"
    return {"flotilla": commit, "mlserver": pip_version(VENV["mlserver"], "mlserver"),
            "mlserver_parallel_workers": default_workers, "nvidia-pytriton": pip_version(VENV["triton"], "nvidia-pytriton"),
            "ray": pip_version(VENV["ray"], "ray") if VENV["ray"].exists() else "?",
            "tritonserver": triton, "onnxruntime": pip_version(VENV["triton"], "onnxruntime"),
            "xgboost": pip_version(VENV["mlserver"], "xgboost-cpu"),
            "tritonclient": pip_version(VENV["client"], "tritonclient"),
            "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split(" [")[0].strip()}


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    return {"host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "loadavg_at_start": open("/proc/loadavg").read().split()[0],
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="a few seconds per section, table in the work dir")
    ap.add_argument("--flotilla", required=True)
    ap.add_argument("--raw", required=True)
    ap.add_argument("--load", required=True)
    ap.add_argument("--floor", required=True, help="flotilla-floor: fixed-answer HTTP and gRPC servers")
    ap.add_argument("--only", default="", help="comma-separated sections to run (" + ", ".join(SECTIONS) +
                    "); the table goes to the work dir")
    a = ap.parse_args()
    only = {x.strip() for x in a.only.split(",") if x.strip()}
    if only - set(SECTIONS):
        ap.error(f"unknown sections {sorted(only - set(SECTIONS))}; known: {', '.join(SECTIONS)}")
    want = lambda section: not only or section in only
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    smoke = a.smoke
    secs = 1 if smoke else 8
    conc = [1, 8, 32] if smoke else [1, 8, 32, 128]
    pa_conc = [1, 32] if smoke else [1, 8, 32, 128]
    pa_ms = 500 if smoke else 3000
    res = {"machine": machine(), "mode": "smoke" if smoke else ("partial" if only else "full"), "points": [],
           "raw": {}}

    def point(server, model, client, protocol, c, r):
        res["points"].append({"server": server, "model": model, "client": client, "protocol": protocol,
                              "concurrency": c, **r})
        shown = f"{r['req_s']:.0f} req/s p50 {r['p50_us']:.0f} µs p99 {r['p99_us']:.0f} µs err {r['errors']}" \
            if "req_s" in r else f"error: {r['error'][:200]}"
        print(f"  {server:9} {model:8} {client:13} {protocol:4} c={c:<4} {shown}", flush=True)

    tr = None

    def wrk_side_by_side(peer, model, peer_stats):
        """Flotilla and a peer by turns at each concurrency (wrk); at c=1 with the server's own
        statistics (the peer's too when it has Triton's statistics extension)."""
        for c in conc:
            point("flotilla", model, "wrk", "json", c,
                  (wrk_server_side if c == 1 else wrk)(PORTS["flotilla"], model, c, secs))
            point(peer, model, "wrk", "json", c,
                  (wrk_server_side if c == 1 and peer_stats else wrk)(PORTS[peer], model, c, secs))

    def flotilla_xgb_points():
        """Flotilla's XGBoost wrk points, when the MLServer section (which takes them) did not run."""
        if not any(p["server"] == "flotilla" and p["model"] == "xgb" and p["client"] == "wrk" for p in res["points"]):
            for c in conc:
                point("flotilla", "xgb", "wrk", "json", c, wrk(PORTS["flotilla"], "xgb", c, secs))

    try:
        if want("raw"):
            log("raw engine in-process (bench_raw)")
            res["raw"] = {m: raw_engine(a.raw, m, 0.5 if smoke else 3) for m in ("xgb", "mlp")}
            # Compute-bound MLP, one session as served: batch 1 and batch 32 (the most c=32 batch-1 clients
            # can put in one batch: the dynamic batching target's reference), plus batch 64.
            big = raw_engine(a.raw, "mlp_big", 1 if smoke else 3, batch=32, callers=1)
            big64 = raw_engine(a.raw, "mlp_big", 1 if smoke else 3, batch=64, callers=1)["batched"]
            res["raw"]["mlp_big"] = {**big, "batched64": big64}
            for m, r in res["raw"].items():
                print(f"  {m}: " + "; ".join(f"{k} {v['calls_per_s']:.0f} calls/s {v['rows_per_s']:.0f} rows/s "
                                              f"p50 {v['p50_us']:.1f} µs" for k, v in r.items()), flush=True)

        fl = start_flotilla(a.flotilla, WORK / "flotilla", PORTS["flotilla"])
        if want("mlserver"):
            log("Flotilla vs MLServer: XGBoost, REST JSON batch 1 (wrk)")
            ml = start_mlserver()
            wrk_side_by_side("mlserver", "xgb", peer_stats=False)
            # the same model with every request handed to an engine thread (inline_max_us 0)
            point("flotilla", "xgb_hop", "wrk", "json", 1, wrk_server_side(PORTS["flotilla"], "xgb_hop", 1, secs))
            log("MLServer over gRPC (perf_analyzer), if it takes it")
            point("mlserver", "xgb", "perf_analyzer", "grpc", 1,
                  perf_analyzer(PORTS["mlserver"] + 1, "xgb", "grpc", 1, pa_ms))
            ml.stop()

        if want("ray"):
            # Ray's daemons idle on the same cores: it runs alone, then Flotilla again for the same points
            log("Flotilla vs Ray Serve: XGBoost, REST JSON batch 1 (wrk)")
            fl.stop()
            ray = start_ray()
            for c in conc:
                point("ray", "xgb", "wrk", "json", c, wrk(PORTS["ray"], "xgb", c, secs))
            ray.stop()
            fl = start_flotilla(a.flotilla, WORK / "flotilla", PORTS["flotilla"])
            flotilla_xgb_points()

        if want("floor"):
            log("the limit: fixed-answer HTTP (axum) and gRPC (tonic) servers on Flotilla's runtime settings, "
                "xgb batch 1")
            floor = Server("floor", [a.floor, "--config", str(WORK / "flotilla" / "xgb" / "config.pbtxt"),
                                     "--http-port", str(PORTS["floor"]), "--grpc-port", str(PORTS["floor"] + 1)],
                           [f"http://127.0.0.1:{PORTS['floor']}/v2/health/ready"])
            for c in conc:
                point("floor", "xgb", "wrk", "json", c, wrk(PORTS["floor"], "xgb", c, secs))
            for c in pa_conc:
                point("floor", "xgb", "perf_analyzer", "grpc", c,
                      perf_analyzer(PORTS["floor"] + 1, "xgb", "grpc", c, pa_ms))
            floor.stop()
            for c in pa_conc:
                point("flotilla", "xgb", "perf_analyzer", "grpc", c,
                      perf_analyzer(PORTS["flotilla"] + 1, "xgb", "grpc", c, pa_ms))
            flotilla_xgb_points()

        if want("triton"):
            log("Flotilla vs Triton: ONNX MLP, REST JSON (wrk), HTTP binary and gRPC (perf_analyzer)")
            tr = start_triton()
            wrk_side_by_side("triton", "mlp", peer_stats=True)
            for protocol, off in (("http", 0), ("grpc", 1)):
                for c in pa_conc:
                    point("flotilla", "mlp", "perf_analyzer", protocol, c,
                          perf_analyzer(PORTS["flotilla"] + off, "mlp", protocol, c, pa_ms))
                    point("triton", "mlp", "perf_analyzer", protocol, c,
                          perf_analyzer(PORTS["triton"] + off, "mlp", protocol, c, pa_ms))
            tr.stop()

        if want("batching"):
            log("dynamic batching (xgb_dyn: max_queue_delay_microseconds 200)")
            for c in conc[-2:]:
                point("flotilla", "xgb_dyn", "wrk", "json", c, wrk(PORTS["flotilla"], "xgb_dyn", c, secs))
            log("compute-bound MLP (256→2048→2048→1, 1 session): plain and dynamic batching (500 µs) at c=32")
            for model in ("mlp_big", "mlp_big_dyn"):
                for c in ((1, 32) if model == "mlp_big" else (32,)):
                    point("flotilla", model, "wrk", "json", c,
                          wrk_server_side(PORTS["flotilla"], model, c, secs, "body_big.json"))

        if want("overload"):
            log(f"overload (xgb_q: max_queue_size {QUEUE_SIZE}) with flotilla-load")
            sweep = [p for p in res["points"] if p["server"] == "flotilla" and p["model"] == "xgb" and "req_s" in p]
            if not sweep:
                sweep = [{"concurrency": c, **wrk(PORTS["flotilla"], "xgb", c, secs)} for c in conc]
            best = max(p.get("req_s", 0) for p in sweep)
            saturation = min(p["concurrency"] for p in sweep if p.get("req_s", 0) >= 0.9 * best)
            unloaded = bench_load(a.load, PORTS["flotilla"], "xgb_q", 1, secs)
            loaded = bench_load(a.load, PORTS["flotilla"], "xgb_q", 3 * saturation, secs)
            res["overload"] = {"model": "xgb_q", "max_queue_size": QUEUE_SIZE, "saturation_concurrency": saturation,
                               "concurrency": 3 * saturation, "unloaded": unloaded, "loaded": loaded}
            print(f"  unloaded {json.dumps(unloaded['status'])}\n  x3 saturation (c={3 * saturation}) "
                  f"{json.dumps(loaded['status'])} errors {loaded['errors']}", flush=True)
            log(f"compute-bound overload (mlp_big_q: max_queue_size {BIG_QUEUE_SIZE}) with flotilla-load")
            sweep = {c: bench_load(a.load, PORTS["flotilla"], "mlp_big_q", c, secs, "body_big.json")
                     for c in ((1, 2, 4) if smoke else (1, 2, 4, 8))}
            ok_s = {c: r["status"].get("200", {}).get("per_s", 0) for c, r in sweep.items()}
            saturation = min(c for c, v in ok_s.items() if v >= 0.9 * max(ok_s.values()))
            # clients that honour Retry-After (wait what it says after a 429), and clients that retry at once
            polite = bench_load(a.load, PORTS["flotilla"], "mlp_big_q", 3 * saturation, secs, "body_big.json",
                                retry_after_scale=1.0)
            loaded = bench_load(a.load, PORTS["flotilla"], "mlp_big_q", 3 * saturation, secs, "body_big.json")
            res["overload_big"] = {"model": "mlp_big_q", "max_queue_size": BIG_QUEUE_SIZE,
                                   "saturation_concurrency": saturation, "sweep_ok_per_s": ok_s,
                                   "concurrency": 3 * saturation, "unloaded": sweep[1], "polite": polite,
                                   "loaded": loaded}
            print(f"  200/s by c {ok_s}; unloaded {json.dumps(sweep[1]['status'])}\n  x3 saturation "
                  f"(c={3 * saturation}) {json.dumps(loaded['status'])} errors {loaded['errors']}", flush=True)
        fl.stop()

        if want("memory"):
            log("memory: idle RSS, then reload cycles (explicit mode)")
            res["memory"] = memory(a.flotilla, 20 if smoke else 1000)
            print(f"  {res['memory']}", flush=True)
        res["versions"] = versions(tr.version if tr else "?")
        res["machine"]["loadavg_at_end"] = open("/proc/loadavg").read().split()[0]
    finally:
        Server.stop_all()

    res["targets"] = targets(res)
    import report
    md = report.markdown(res)
    out = (WORK / "serving-smoke") if smoke else (WORK / "serving-partial") if only else \
        (ROOT / "bench" / "results" / "serving")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    print("\n" + md)
    print(f"wrote {out}.md and {out}.json")


def find(res, server, model, client, protocol, c):
    for p in res["points"]:
        if (p["server"], p["model"], p["client"], p["protocol"], p["concurrency"]) == (server, model, client, protocol, c):
            return p if "req_s" in p else None
    return None


def fmt_req(p):
    return f"{p['req_s']:.0f} req/s (p99 {p['p99_us']:.0f} µs)" if p else "not measured"


def targets(res):
    """Each target from the issue, with the numbers it was judged on (None when not measured)."""
    t = []

    def add(name, ok, measured, info=False):
        t.append({"target": name, "pass": ok, "measured": measured, **({"info": True} if info else {})})

    for peer, model, ratio in (("mlserver", "xgb", 25), ("ray", "xgb", 10), ("triton", "mlp", 10)):
        f, p = find(res, "flotilla", model, "wrk", "json", 32), find(res, peer, model, "wrk", "json", 32)
        if f and p and p["req_s"] > 0:
            r = f["req_s"] / p["req_s"]
            add(f"≥ {ratio}× {peer} req/s at c=32 (REST JSON) with lower p99", r >= ratio and f["p99_us"] < p["p99_us"],
                f"{r:.1f}× ({f['req_s']:.0f} vs {p['req_s']:.0f} req/s); p99 {f['p99_us']:.0f} vs {p['p99_us']:.0f} µs")
        else:
            add(f"≥ {ratio}× {peer} req/s at c=32", None, "not measured")
    for client, protocol, share in (("wrk", "json", 0.6), ("perf_analyzer", "grpc", 0.5)):
        f, p = find(res, "flotilla", "xgb", client, protocol, 32), find(res, "floor", "xgb", client, protocol, 32)
        name = f"≥ {share:.0%} of the fixed-answer server's req/s at c=32 ({client} {protocol}, xgb), p99 ≤ 2×"
        if f and p and p["req_s"] > 0:
            add(name, f["req_s"] >= share * p["req_s"] and f["p99_us"] <= 2 * p["p99_us"],
                f"{f['req_s'] / p['req_s']:.0%} ({f['req_s']:.0f} vs {p['req_s']:.0f} req/s); "
                f"p99 {f['p99_us']:.0f} vs {p['p99_us']:.0f} µs (×{f['p99_us'] / p['p99_us']:.1f})")
        else:
            add(name, None, "not measured")
    floor = find(res, "floor", "xgb", "wrk", "json", 1)
    for model in ("xgb", "mlp"):
        f, raw = find(res, "flotilla", model, "wrk", "json", 1), res["raw"].get(model, {}).get("batch1")
        if f and raw:
            d = f["p50_us"] - raw["p50_us"]
            add(f"server overhead ≤ 30 µs at c=1 ({model}: wrk p50 − raw p50)", d <= 30,
                f"{d:.0f} µs ({f['p50_us']:.0f} − {raw['p50_us']:.1f})"
                + (f"; the fixed-answer server's p50 is {floor['p50_us']:.0f} µs with no engine at all" if floor else ""))
    hop, inline = find(res, "flotilla", "xgb_hop", "wrk", "json", 1), find(res, "flotilla", "xgb", "wrk", "json", 1)
    if hop and inline:
        add("what running cheap requests inline saves at c=1 (xgb_hop p50 − xgb p50; information)", None,
            f"{hop['p50_us'] - inline['p50_us']:.0f} µs ({hop['p50_us']:.0f} with the engine-thread hand-off, "
            f"{inline['p50_us']:.0f} inline)", info=True)
    # Dynamic batching and overload: judged on the compute-bound MLP (mlp_big*, one session); the xgb
    # rows are shown too but are protocol-bound (4 µs/row engine: HTTP handling is the limit, not the
    # scheduler), so they are reported as information (result n/a), not as the target.
    big = find(res, "flotilla", "mlp_big_dyn", "wrk", "json", 32)
    raw = res["raw"].get("mlp_big", {}).get("batched")
    if big and raw:
        plain = find(res, "flotilla", "mlp_big", "wrk", "json", 32)
        add("dynamic batching (compute-bound mlp_big_dyn, c=32): req/s ≥ 90% of raw batched rows/s",
            big["req_s"] >= 0.9 * raw["rows_per_s"],
            f"{big['req_s']:.0f} req/s = {big['req_s'] / raw['rows_per_s'] * 100:.1f}% of {raw['rows_per_s']:.0f} "
            f"rows/s (batch {raw['batch']}, 1 session); without batching {fmt_req(plain)}")
    else:
        add("dynamic batching (compute-bound mlp_big_dyn, c=32): req/s ≥ 90% of raw batched rows/s", None, "not measured")
    dyn = [p for p in res["points"] if p["model"] == "xgb_dyn" and "req_s" in p]
    raw = res["raw"].get("xgb", {}).get("batched")
    if dyn and raw:
        best = max(dyn, key=lambda p: p["req_s"])
        add("dynamic batching, protocol-bound xgb_dyn (c=32/128 vs raw batched rows/s; information only)", None,
            f"{best['req_s']:.0f} req/s (c={best['concurrency']}) = {best['req_s'] / raw['rows_per_s'] * 100:.1f}% "
            f"of {raw['rows_per_s']:.0f} rows/s (batch {raw['batch']}, 1 caller)", info=True)
    for key, label, judged in (("overload_big", "compute-bound mlp_big_q", True),
                               ("overload", "protocol-bound xgb_q, information only", False)):
        o = res.get(key)
        if not o:
            if judged:
                add(f"overload ({label}): admitted p99 ≤ 2× unloaded p99", None, "not measured")
            continue
        # judged on clients that honour Retry-After; clients that retry at once are their own row
        judged_run = o.get("polite", o["loaded"])
        ok = judged_run["status"].get("200")
        base = o["unloaded"]["status"].get("200")
        rej = judged_run["status"].get("429")
        impolite = o["loaded"]["status"].get("200")
        if "polite" in o and impolite and base:
            add(f"overload ({label}), clients retrying at once: admitted p99 vs unloaded (information)", None,
                f"{impolite['p99_us']:.0f} vs {base['p99_us']:.0f} µs (×{impolite['p99_us'] / base['p99_us']:.1f})",
                info=True)
        at = f"c={o['concurrency']} = 3× saturation {o['saturation_concurrency']}"
        if ok and base:
            add(f"overload ({label}): admitted p99 ≤ 2× unloaded p99",
                ok["p99_us"] <= 2 * base["p99_us"] if judged else None,
                f"{ok['p99_us']:.0f} vs {base['p99_us']:.0f} µs (×{ok['p99_us'] / base['p99_us']:.1f}) at {at}", info=not judged)
        add(f"overload ({label}): 429 answers in < 1 ms (p99)", (rej["p99_us"] < 1000 if rej else None) if judged else None,
            f"p50 {rej['p50_us']:.0f} µs, p99 {rej['p99_us']:.0f} µs ({rej['count']} rejected) at {at}" if rej
            else f"no 429 at {at}", info=not judged)
    m = res.get("memory")
    if m:
        add(f"RSS flat (±5%) over {m['cycles']} reload cycles", abs(m["change_pct"]) <= 5,
            f"{m['idle_rss_kib'] / 1024:.1f} → {m['after_rss_kib'] / 1024:.1f} MiB ({m['change_pct']:+.1f}%)")
        warm = next((r for c, r in m["samples_cycle_rss_kib"] if c == m["cycles"] // 10 and c > 0), None)
        if warm:
            add(f"RSS from cycle {m['cycles'] // 10} to {m['cycles']}, after the allocator's first rise (information)",
                None, f"{warm / 1024:.1f} → {m['after_rss_kib'] / 1024:.1f} MiB "
                f"({(m['after_rss_kib'] - warm) / warm * 100:+.1f}%); see serving-profile.md", info=True)
    return t


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
