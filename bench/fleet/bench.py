"""Fleet benchmark: a router in front of six workers on this machine, the AWS g4dn spot trace
replayed onto the opportunistic ones, with and without preemption notices; capacity-class
policies compared; router overhead against direct-to-worker; traffic share of slowed workers;
10x overload. Started by bench/fleet/run.sh, which installs everything; writes
bench/results/fleet.{md,json} (--smoke: short sections, table in bench/.work-fleet/).

Speeds differ only through real limits: engine instance counts (the test-only `delay` backend has
a fixed cost per execution, as Triton's identity backend with execute_delay_ms) and CPU quotas
(cgroups) for the CPU-bound tree model. Load is open-loop (a rate, not a number of connections)
through tritonclient's asyncio gRPC client. Never asserts on times: targets are PASS/MISS.
"""
import argparse, asyncio, json, math, os, platform, re, shutil, signal, subprocess, sys, threading, time
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "bench" / ".work-fleet"
BIN = Path(os.environ.get("FLOTILLA_BENCH_BIN", ROOT / "target" / "release" / "flotilla"))
TRACE = ROOT.parent / "shared" / "traces" / "spot-g4dn.csv"
CGROUP = Path("/sys/fs/cgroup/cpu")

# The rig: guaranteed workers and opportunistic groups (each stands for a quarter of the trace's
# spot nodes), by hardware kind and engine instances of the 50 ms `score` model.
GUARANTEED = [("g0", "cpu-large", 16), ("g1", "cpu-large", 16)]
GROUPS = [("spot-a", 6), ("spot-a", 6), ("spot-b", 3), ("spot-b", 3)]
DELAY_MS = 50


def log(msg):
    print(f"==> {msg}", flush=True)


def get(url, data=None, method=None):
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


# === processes ===

class Proc:
    """A flotilla process; its `listening` line gives its ports."""
    running = []

    def __init__(self, name, args, env=None, cgroup=None):
        self.name = name
        self.logpath = WORK / "logs" / f"{name}.log"
        self.logpath.parent.mkdir(parents=True, exist_ok=True)
        self.logf = open(self.logpath, "w")
        cmd = [str(BIN), *args, "--log-format", "json", "--host", "127.0.0.1"]
        if cgroup:
            cmd = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *cmd]
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.logf, cwd=WORK,
                                     env={**os.environ, "FLOTILLA_TEST_BACKENDS": "delay", **(env or {})})
        Proc.running.append(self)
        deadline = time.time() + 60
        while True:
            text = self.logpath.read_text()
            m = re.search(r'"message":"listening","http":"[^"]*:(\d+)","grpc":"[^"]*:(\d+)"', text)
            if m:
                self.http, self.grpc = int(m.group(1)), int(m.group(2))
                break
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"{name} did not start:\n{text[-3000:]}")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.http}"

    def stop(self, sig=signal.SIGTERM):
        if self in Proc.running:
            Proc.running.remove(self)
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()

    @classmethod
    def stop_all(cls):
        for p in list(cls.running):
            p.stop(signal.SIGKILL)


def worker(rt, name, cls, hardware, repo, *extra, cgroup=None):
    return Proc(name, ["serve", "--model-repository", str(repo), "--http-port", "0", "--grpc-port", "0",
                       "--metrics-port", "0", "--join", rt.url, "--worker-id", name, "--capacity-class", cls,
                       "--hardware", hardware, "--feature-repo", "none", "--drift-monitoring", "false",
                       "--heartbeat-ms", "500", "--exit-timeout-secs", "5", "--latency-target-ms", "200",
                       *extra], cgroup=cgroup)


def delay_repo(instances):
    repo = WORK / f"repo-delay-{instances}"
    if not repo.exists():
        (repo / "score" / "1").mkdir(parents=True)
        (repo / "score" / "config.pbtxt").write_text(f"""name: "score"
backend: "delay"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
parameters {{ key: "execute_delay_ms" value: {{ string_value: "{DELAY_MS}" }} }}
""")
    return repo


def wait_fleet(rt, ids, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        view = {w["id"]: w for w in get(rt.url + "/v2/fleet")["workers"]}
        if all(i in view and view[i]["state"] == "serving" for i in ids):
            return view
        time.sleep(0.05)
    raise SystemExit(f"workers {ids} did not join: {get(rt.url + '/v2/fleet')}")


# === load ===

def make_inputs(model):
    if model == "score":
        x = np.ones((1, 16), dtype=np.float32)
        i = grpcaio.InferInput("INPUT0", [1, 16], "FP32")
        i.set_data_from_numpy(x)
        return [i]
    if model == "simple":
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        i0, i1 = grpcaio.InferInput("INPUT0", [1, 16], "INT32"), grpcaio.InferInput("INPUT1", [1, 16], "INT32")
        i0.set_data_from_numpy(a)
        i1.set_data_from_numpy(a)
        return [i0, i1]
    if model == "fraud_xgb":
        rows = np.random.default_rng(0).uniform(0, 1, (64, 8)).astype(np.float32)
        i = grpcaio.InferInput("input__0", [64, 8], "FP32")
        i.set_data_from_numpy(rows)
        return [i]
    raise ValueError(model)


class Recorder:
    def __init__(self):
        self.lat = []          # (sent offset s, latency s) of successes
        self.fail = {}         # status -> count
        self.fail_times = []   # (offset, status)
        self.fail_lat = []     # latency s of failures
        self.sent = 0

    def summary(self, from_s=0.0):
        lat = np.array([l for t, l in self.lat if t >= from_s]) * 1000
        ok = len(lat)
        failed = sum(1 for t, _ in self.fail_times if t >= from_s)
        pct = lambda q: float(np.percentile(lat, q)) if ok else float("nan")
        by_status = {}
        for t, s in self.fail_times:
            if t >= from_s:
                by_status[s] = by_status.get(s, 0) + 1
        return {"sent": ok + failed, "succeeded": ok, "failed": failed, "failed_by_status": by_status,
                "p50_ms": pct(50), "p99_ms": pct(99), "p999_ms": pct(99.9)}


async def open_loop(url, model, rate, seconds, rec, stop=None, timeout_s=30):
    """Sends `rate` requests/s for `seconds` (or until `stop` is set), each at its scheduled time;
    a request's latency counts from when it was due (no coordinated omission)."""
    client = grpcaio.InferenceServerClient(url)
    inputs = make_inputs(model)
    loop = asyncio.get_running_loop()
    start = loop.time()
    pending = set()

    async def one(due):
        try:
            await client.infer(model, inputs, client_timeout=timeout_s)
            rec.lat.append((due - start, loop.time() - due))
        except InferenceServerException as e:
            status = e.status() or "error"
            rec.fail[status] = rec.fail.get(status, 0) + 1
            rec.fail_times.append((due - start, status))
            rec.fail_lat.append(loop.time() - due)

    n = 0
    while True:
        due = start + n / rate
        if due - start >= seconds or (stop is not None and stop.is_set()):
            break
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(one(due))
        pending.add(task)
        task.add_done_callback(pending.discard)
        rec.sent += 1
        n += 1
    if pending:
        await asyncio.wait(pending, timeout=timeout_s + 5)
    await client.close()
    return rec


def run_load(url, model, rate, seconds, stop=None):
    rec = Recorder()
    asyncio.run(open_loop(url, model, rate, seconds, rec, stop))
    return rec


# === sections ===

def fleet_metric(rt, name, labels=None):
    """Sums a router Prometheus counter read off its /metrics text (metrics port)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{rt.metrics_port}/metrics", timeout=10).read().decode()
    total = {}
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r'(\w+)(?:\{(.*)\})? ([0-9.eE+-]+)$', line)
        if not m or m.group(1) != name:
            continue
        lab = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        key = tuple(lab.get(k, "") for k in (labels or []))
        total[key] = total.get(key, 0.0) + float(m.group(3))
    return total


def router_with_metrics(*args):
    port = free_port()
    rt = Proc("router", ["route", "--http-port", "0", "--grpc-port", "0", "--metrics-port", str(port), *args])
    rt.metrics_port = port
    return rt


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_full_fleet(rt):
    workers = {}
    for name, hw, inst in GUARANTEED:
        workers[name] = worker(rt, name, "guaranteed", hw, delay_repo(inst))
    for g, (hw, inst) in enumerate(GROUPS):
        workers[f"s{g}"] = worker(rt, f"s{g}", "opportunistic", hw, delay_repo(inst))
    wait_fleet(rt, list(workers))
    return workers


def calibrate(seconds):
    """Every worker up; a warm-up load lets each measure its capacity; the fleet's capacity is
    the sum of what its workers advertise."""
    rt = router_with_metrics()
    ws = start_full_fleet(rt)
    rec = run_load(f"127.0.0.1:{rt.grpc}", "score", 400, seconds)
    time.sleep(1.5)
    view = get(rt.url + "/v2/fleet")["workers"]
    caps = {w["id"]: next(m["capacity_rps"] for m in w["models"] if m["name"] == "score") for w in view}
    for w in ws.values():
        w.stop(signal.SIGKILL)
    rt.stop()
    return caps, rec.summary()


def trace_actions(compress, notice_s):
    """The spot trace as rig actions: (time s, action, group). Node n belongs to group n mod 4; a
    group's worker stands for its alive nodes. A node's removal preempts the group's worker (its
    notice `notice_s` earlier) and, if the group still has nodes, a fresh worker replaces it."""
    events = []
    for line in TRACE.read_text().split():
        t, op, node = line.strip().split(",")
        events.append((int(t) / 1000 / compress, op, int(node.removeprefix("node")) % len(GROUPS)))
    t0 = min(t for t, _, _ in events)
    alive = [0] * len(GROUPS)
    actions = []
    for t, op, g in events:
        t -= t0
        if op == "add":
            alive[g] += 1
            if alive[g] == 1:
                actions.append((t, "start", g))
        else:
            alive[g] -= 1
            actions.append((max(0.0, t - notice_s), "notice", g))
            actions.append((t, "kill", g))
            if alive[g] > 0:
                actions.append((t, "start", g))
    order = {"notice": 0, "kill": 1, "start": 2}
    return sorted(actions, key=lambda a: (a[0], order[a[1]])), max(t for t, _, _ in events) - t0


def replay(caps_total, compress, notice, policy, seconds_limit=None, hedge=True):
    """Replays the trace under 60% load; returns the client's view and the router's counts."""
    notice_s = 120.0 / compress if notice else 0.0
    actions, length = trace_actions(compress, notice_s)
    if seconds_limit:
        actions = [a for a in actions if a[0] < seconds_limit]
        length = min(length, seconds_limit)
    args = ["--policy", policy] + (["--hedge", "score"] if hedge else [])
    rt = router_with_metrics(*args)
    live = {}
    for name, hw, inst in GUARANTEED:
        live[name] = worker(rt, name, "guaranteed", hw, delay_repo(inst))
    wait_fleet(rt, list(live))
    rate = 0.6 * caps_total
    classes = {name: "guaranteed" for name, _, _ in GUARANTEED}
    groups = [None] * len(GROUPS)
    noticed = [None] * len(GROUPS)
    kills, starts, joins, seq = [], [], [], [0]
    stop = threading.Event()
    rec = Recorder()

    def play():
        t_start = time.time()
        for at, what, g in actions:
            delay = t_start + at - time.time()
            if delay > 0:
                time.sleep(delay)
            if what == "notice":
                w = groups[g]
                if w is not None and noticed[g] is not w and w.proc.poll() is None:
                    noticed[g] = w
                    try:
                        get(w.url + "/v2/admin/preempt", json.dumps({"deadline_ms": int(notice_s * 1000)}).encode())
                    except Exception as e:
                        log(f"notice to {w.name} failed: {e}")
            elif what == "kill":
                w = noticed[g] if notice else groups[g]
                if w is None or w.proc.poll() is not None:
                    continue
                kills.append((time.time(), w.name))
                w.stop(signal.SIGKILL)
                if groups[g] is w:
                    groups[g] = None
            elif what == "start" and groups[g] is None:
                seq[0] += 1
                hw, inst = GROUPS[g]
                name = f"s{g}-{seq[0]}"
                t = time.time()
                groups[g] = worker(rt, name, "opportunistic", hw, delay_repo(inst))
                classes[name] = "opportunistic"
                starts.append((t, name))
        stop.set()

    player = threading.Thread(target=play, daemon=True)
    player.start()
    asyncio.run(open_loop(f"127.0.0.1:{rt.grpc}", "score", rate, length + 1, rec, stop))
    player.join()
    time.sleep(1.0)
    events = get(rt.url + "/v2/fleet/events")["events"]
    attempts = fleet_metric(rt, "flotilla_fleet_attempts_total", ["worker", "outcome"])
    retries = sum(fleet_metric(rt, "flotilla_fleet_retries_total").values())
    refused = sum(fleet_metric(rt, "flotilla_fleet_retries_refused_total").values())
    hedges = sum(fleet_metric(rt, "flotilla_fleet_hedges_total").values())
    for w in list(Proc.running):
        if w is not rt:
            w.stop(signal.SIGKILL)
    rt.stop()
    served = {}
    for (w, outcome), n in attempts.items():
        if outcome == "ok":
            served[classes.get(w, "?")] = served.get(classes.get(w, "?"), 0) + n
    first = {}
    for e in events:
        first.setdefault((e["worker"], e["kind"]), e)
    eject_ms = [first[(n, "ejected")]["at_ms"] - t * 1000 for t, n in kills if (n, "ejected") in first]
    drained = [e["value_ms"] for e in events if e["kind"] == "drained" and e.get("value_ms") is not None]
    join_ms = [first[(n, "joined")]["at_ms"] - t * 1000 for t, n in starts if (n, "joined") in first]
    traffic_ms = [first[(n, "first_answer")]["at_ms"] - t * 1000 for t, n in starts if (n, "first_answer") in first]
    s = rec.summary()
    total = s["sent"]
    return {
        "policy": policy, "notice": notice, "compress": compress, "seconds": length, "rate": rate,
        **s,
        "preemptions": len(kills), "starts": len(starts),
        "retries": retries, "retries_refused": refused,
        "retry_budget": 0.2 * total + 3 * length, "hedges": hedges, "hedge_budget": 0.05 * total,
        "served_opportunistic_share": served.get("opportunistic", 0) / max(1, sum(served.values())),
        "eject_ms": eject_ms, "drained_ms": drained, "start_to_join_ms": join_ms, "start_to_traffic_ms": traffic_ms,
    }


def policies(caps_total, seconds):
    out = {}
    for policy in ("elastic-first", "balanced", "guaranteed-first"):
        rt = router_with_metrics("--policy", policy)
        ws = start_full_fleet(rt)
        classes = {n: ("guaranteed" if n.startswith("g") else "opportunistic") for n in ws}
        run_load(f"127.0.0.1:{rt.grpc}", "score", 0.6 * caps_total, 5)  # settle
        before = fleet_metric(rt, "flotilla_fleet_attempts_total", ["worker", "outcome"])
        rec = run_load(f"127.0.0.1:{rt.grpc}", "score", 0.6 * caps_total, seconds)
        after = fleet_metric(rt, "flotilla_fleet_attempts_total", ["worker", "outcome"])
        served = {}
        for (w, o), n in after.items():
            if o == "ok":
                served[classes[w]] = served.get(classes[w], 0) + n - before.get((w, o), 0)
        out[policy] = {**rec.summary(), "opportunistic_share": served.get("opportunistic", 0) / max(1, sum(served.values()))}
        for w in ws.values():
            w.stop(signal.SIGKILL)
        rt.stop()
    return out


def histogram_mean_us(port, name, label):
    """Mean of a Prometheus histogram (its _sum over its _count) on `port`, microseconds."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if label in line and line.startswith(name + "_sum"):
            total += float(line.split()[-1])
        if label in line and line.startswith(name + "_count"):
            count += float(line.split()[-1])
    return total / count * 1e6 if count else float("nan")


def perf_analyzer(url, model, rate, seconds):
    """Triton's perf_analyzer, open-loop at `rate` requests/s over gRPC: (p50, p99) in ms."""
    venv = Path(sys.executable).parent.parent
    lib = next(venv.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    out_csv = WORK / "pa.csv"
    out_csv.unlink(missing_ok=True)
    p = subprocess.run([str(venv / "bin" / "perf_analyzer"), "-m", model, "-u", url, "-i", "grpc",
                        "--request-rate-range", f"{rate}:{rate}", "--measurement-interval", str(seconds * 1000 // 3),
                        "--stability-percentage", "999", "--max-trials", "3", "-f", str(out_csv)],
                       env={**os.environ, "LD_LIBRARY_PATH": str(lib)}, capture_output=True, text=True, timeout=300)
    if p.returncode != 0 or not out_csv.exists():
        raise SystemExit(f"perf_analyzer failed:\n{p.stdout}\n{p.stderr}")
    import csv
    row = next(csv.DictReader(open(out_csv)))
    return float(row["p50 latency"]) / 1000, float(row["p99 latency"]) / 1000


def overhead(seconds, rates, rounds):
    """Router p50/p99 minus direct-to-worker p50/p99, same worker, same rate (perf_analyzer,
    open-loop), alternating rounds; and where the router's time goes (its own work, the hop to
    the worker, the worker's handling), from both processes' histograms."""
    rt = router_with_metrics()
    wport = free_port()
    w = Proc("w", ["serve", "--model-repository", str(ROOT / "examples" / "repository"), "--http-port", "0",
                   "--grpc-port", "0", "--metrics-port", str(wport), "--join", rt.url, "--worker-id", "w",
                   "--feature-repo", "none", "--drift-monitoring", "false"])
    wait_fleet(rt, ["w"])
    rows = []
    for rate in rates:
        for i in range(rounds):
            for target, url in (("direct", f"127.0.0.1:{w.grpc}"), ("router", f"127.0.0.1:{rt.grpc}")):
                p50, p99 = perf_analyzer(url, "simple", rate, seconds)
                rows.append({"rate": rate, "round": i, "target": target, "p50_ms": p50, "p99_ms": p99})
    split = {
        "router_request_us": histogram_mean_us(rt.metrics_port, "flotilla_response_duration_seconds", "ModelInfer"),
        "router_attempt_us": histogram_mean_us(rt.metrics_port, "flotilla_fleet_attempt_duration_seconds", 'worker="w"'),
        "worker_request_us": histogram_mean_us(wport, "flotilla_response_duration_seconds", "ModelInfer"),
    }
    w.stop(signal.SIGKILL)
    rt.stop()
    med = lambda rate, t, k: float(np.median([r[k] for r in rows if r["target"] == t and r["rate"] == rate]))
    by_rate = {rate: {f"{t}_{k}": med(rate, t, k) for t in ("direct", "router") for k in ("p50_ms", "p99_ms")}
               for rate in rates}
    return {"rows": rows, "by_rate": by_rate, **split}


def slowed(seconds):
    """Workers held to CPU quotas by cgroups, serving the CPU-bound tree model: full, full, half, 1/10."""
    quotas = [("full-a", 0.20), ("full-b", 0.20), ("half", 0.10), ("tenth", 0.02)]
    if not (CGROUP / "cgroup.procs").exists():
        return {"skipped": "no cgroup v1 cpu controller at /sys/fs/cgroup/cpu"}
    rt = router_with_metrics("--policy", "balanced")
    ws = {}
    for name, q in quotas:
        cg = CGROUP / f"flotilla-bench-{name}"
        cg.mkdir(exist_ok=True)
        (cg / "cpu.cfs_period_us").write_text("100000")
        (cg / "cpu.cfs_quota_us").write_text(str(int(q * 100000)))
        ws[name] = worker(rt, name, "guaranteed", f"cpu-{q}", ROOT / "examples" / "repository",
                          "--instances", "1", cgroup=cg)
    wait_fleet(rt, list(ws))
    run_load(f"127.0.0.1:{rt.grpc}", "fraud_xgb", 150, 10)  # the workers measure their capacity
    time.sleep(1.5)
    view = {w["id"]: w for w in get(rt.url + "/v2/fleet")["workers"]}
    caps = {n: next(m["capacity_rps"] or 0 for m in view[n]["models"] if m["name"] == "fraud_xgb") for n in ws}
    rate = 0.6 * sum(caps.values())
    before = fleet_metric(rt, "flotilla_fleet_attempts_total", ["worker", "outcome"])
    rec = run_load(f"127.0.0.1:{rt.grpc}", "fraud_xgb", rate, seconds)
    after = fleet_metric(rt, "flotilla_fleet_attempts_total", ["worker", "outcome"])
    served = {n: after.get((n, "ok"), 0) - before.get((n, "ok"), 0) for n in ws}
    total = max(1, sum(served.values()))
    for w in ws.values():
        w.stop(signal.SIGKILL)
    rt.stop()
    for name, _ in quotas:
        try:
            (CGROUP / f"flotilla-bench-{name}").rmdir()
        except OSError:
            pass
    return {"rate": rate, "capacity": caps, "share": {n: served[n] / total for n in ws},
            "quota": dict(quotas), **rec.summary()}


def overload(seconds):
    """Ten times what two small workers carry, open-loop: the router sheds with 429 at once."""
    repo = delay_repo(1)
    rt = router_with_metrics()
    ws = [worker(rt, f"o{i}", "guaranteed", "cpu", repo) for i in range(2)]
    wait_fleet(rt, ["o0", "o1"])
    run_load(f"127.0.0.1:{rt.grpc}", "score", 40, 5)
    time.sleep(1.0)
    true_capacity = 2 * 1000 / DELAY_MS  # one instance each, DELAY_MS per request
    rss0 = rss_kib(rt.proc.pid)
    rec = Recorder()
    asyncio.run(open_loop(f"127.0.0.1:{rt.grpc}", "score", 10 * true_capacity, seconds, rec))
    alive = rt.proc.poll() is None
    ready = get(rt.url + "/v2/health/live") == {"live": True}
    rss1 = rss_kib(rt.proc.pid)
    for w in ws:
        w.stop(signal.SIGKILL)
    rt.stop()
    s = rec.summary()
    shed_ms = np.array(rec.fail_lat) * 1000
    return {"rate": 10 * true_capacity, "true_capacity": true_capacity, **s, "alive": alive and ready,
            "shed_p50_ms": pct(list(shed_ms), 50), "shed_p99_ms": pct(list(shed_ms), 99),
            "rss_kib_before": rss0, "rss_kib_after": rss1}


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# === report ===

def pct(values, q):
    return float(np.percentile(values, q)) if values else float("nan")


def verdict(ok):
    return "PASS" if ok else "MISS"


def report(r, smoke):
    m = r["meta"]
    lines = [f"# Fleet: router + workers through the spot trace\n",
             f"`bench/fleet/run.sh`{' --smoke' if smoke else ''} on {m['machine']} ({m['cpus']} CPUs), {m['date']}. "
             "Router and workers are the release binary on loopback; load is open-loop through tritonclient's "
             "asyncio gRPC client (latency counted from each request's due time).\n"]
    if m.get("sections_of_this_run", "all") != "all":
        lines.append(f"Sections rerun since the last full run (`--only {','.join(m['sections_of_this_run'])}`, "
                     f"latest {m['date']}); the others are from the full run.\n")
    caps = r["calibration"]["capacity"]
    lines.append("## The rig\n")
    lines.append("| worker | class | hardware | engine instances (50 ms `score`) | measured capacity (req/s within 200 ms) |")
    lines.append("|---|---|---|---|---|")
    for name, hw, inst in GUARANTEED:
        lines.append(f"| {name} | guaranteed | {hw} | {inst} | {caps.get(name, 0):.0f} |")
    for g, (hw, inst) in enumerate(GROUPS):
        lines.append(f"| s{g} (group {g}) | opportunistic | {hw} | {inst} | {caps.get(f's{g}', 0):.0f} |")
    lines.append(f"\nFleet capacity {r['fleet_capacity']:.0f} req/s (guaranteed alone "
                 f"{r['guaranteed_capacity']:.0f}); load = 60% = {0.6 * r['fleet_capacity']:.0f} req/s.\n")
    lines.append("## Spot trace replay\n")
    lines.append("`../shared/traces/spot-g4dn.csv` (10.8 h, 79 nodes) compressed "
                 f"{r['replays'][0]['compress']:.0f}x; node n belongs to group n mod 4; a node's removal preempts its "
                 "group's worker and a fresh worker replaces it while the group has nodes. With notice: "
                 "`POST /v2/admin/preempt` AWS's 2 minutes (scaled) before, `kill -9` at the removal. Without: "
                 "`kill -9` at the removal.\n")
    lines.append("| run | seconds | preemptions | sent | succeeded | failed (by status) | p50 ms | p99 ms | p999 ms | retries / budget | hedges / budget | opportunistic share |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for x in r["replays"]:
        name = f"{x['policy']}, {'notice' if x['notice'] else 'kill -9'}"
        lines.append(f"| {name} | {x['seconds']:.0f} | {x['preemptions']} | {x['sent']} | {x['succeeded']} | "
                     f"{x['failed']} {x['failed_by_status'] or ''} | {x['p50_ms']:.1f} | {x['p99_ms']:.1f} | "
                     f"{x['p999_ms']:.1f} | {x['retries']:.0f} / {x['retry_budget']:.0f} | {x['hedges']:.0f} / "
                     f"{x['hedge_budget']:.0f} | {100 * x['served_opportunistic_share']:.1f}% |")
    with_notice = next(x for x in r["replays"] if x["notice"])
    kill = next(x for x in r["replays"] if not x["notice"])
    lines.append("\n| measure | p50 | p99 | max | target | |")
    lines.append("|---|---|---|---|---|---|")
    d = with_notice["drained_ms"]
    lines.append(f"| notice → drained, ms ({len(d)} preemptions) | {pct(d, 50):.1f} | {pct(d, 99):.1f} | "
                 f"{max(d) if d else float('nan'):.1f} | p99 ≤ 100 | {verdict(bool(d) and pct(d, 99) <= 100)} |")
    e = kill["eject_ms"]
    lines.append(f"| kill -9 → out of routing, ms ({len(e)} kills) | {pct(e, 50):.1f} | {pct(e, 99):.1f} | "
                 f"{max(e) if e else float('nan'):.1f} | p99 ≤ 250 | {verdict(bool(e) and pct(e, 99) <= 250)} |")
    j = with_notice["start_to_join_ms"] + kill["start_to_join_ms"]
    lines.append(f"| new worker: process start → in the router's view, ms ({len(j)}) | {pct(j, 50):.1f} | "
                 f"{pct(j, 99):.1f} | {max(j) if j else float('nan'):.1f} | | |")
    tr = with_notice["start_to_traffic_ms"] + kill["start_to_traffic_ms"]
    lines.append(f"| new worker: process start → its first answer through the router, ms ({len(tr)}) | {pct(tr, 50):.1f} | "
                 f"{pct(tr, 99):.1f} | {max(tr) if tr else float('nan'):.1f} | ≤ 2000 | {verdict(bool(tr) and max(tr) <= 2000)} |")
    failed_kill = kill["failed"] / max(1, kill["sent"])
    lines.append(f"\nTargets: with notice 0 failed — {verdict(with_notice['failed'] == 0)} "
                 f"({with_notice['failed']}); without notice ≤ 0.01% failed — {verdict(failed_kill <= 1e-4)} "
                 f"({100 * failed_kill:.4f}%); retries within budget — "
                 f"{verdict(all(x['retries'] <= x['retry_budget'] for x in r['replays']))}.\n")
    lines.append("## Capacity-class policies (every worker up, 60% load)\n")
    lines.append("| policy | requests | failed | p50 ms | p99 ms | served on opportunistic workers |")
    lines.append("|---|---|---|---|---|---|")
    for p, x in r["policies"].items():
        lines.append(f"| {p} | {x['sent']} | {x['failed']} | {x['p50_ms']:.1f} | {x['p99_ms']:.1f} | {100 * x['opportunistic_share']:.1f}% |")
    o = r["overhead"]
    lines.append("\n## Router overhead (`simple`, one worker; perf_analyzer over gRPC, open-loop at a request rate; "
                 "median of alternating rounds)\n")
    lines.append("| rate req/s | direct p50 ms | router p50 ms | p50 overhead (≤ 0.3) | direct p99 ms | router p99 ms | p99 overhead (≤ 2) |")
    lines.append("|---|---|---|---|---|---|---|")
    for rate, x in o["by_rate"].items():
        d50 = x["router_p50_ms"] - x["direct_p50_ms"]
        d99 = x["router_p99_ms"] - x["direct_p99_ms"]
        lines.append(f"| {rate} | {x['direct_p50_ms']:.3f} | {x['router_p50_ms']:.3f} | {d50:.3f} {verdict(d50 <= 0.3)} | "
                     f"{x['direct_p99_ms']:.3f} | {x['router_p99_ms']:.3f} | {d99:.3f} {verdict(d99 <= 2)} |")
    own = o["router_request_us"] - o["router_attempt_us"]
    hop = o["router_attempt_us"] - o["worker_request_us"]
    lines.append(f"\nWhere a routed request's time goes (means over the section, from the router's and the worker's "
                 f"histograms): the router's own work (decode, choose, encode) {own:.0f} µs; the hop to the worker "
                 f"and back (tonic client, loopback, the worker's HTTP/2 server) {hop:.0f} µs; the worker's handling "
                 f"{o['worker_request_us']:.0f} µs.\n")
    s = r["slowed"]
    lines.append("\n## Slowed workers (CPU quotas by cgroup; `fraud_xgb`, 64 rows a request; balanced policy)\n")
    if "skipped" in s:
        lines.append(f"Skipped: {s['skipped']}\n")
    else:
        lines.append(f"Load {s['rate']:.0f} req/s (60% of their measured capacity); {s['failed']} failed.\n")
        lines.append("| worker | CPU quota | measured capacity req/s | traffic share |")
        lines.append("|---|---|---|---|")
        for n in s["share"]:
            lines.append(f"| {n} | {100 * s['quota'][n]:.0f}% of a core | {s['capacity'][n]:.0f} | {100 * s['share'][n]:.1f}% |")
        full = (s["share"]["full-a"] + s["share"]["full-b"]) / 2
        half_ratio = s["share"]["half"] / full if full else float("nan")
        lines.append(f"\nHalf-speed worker's share / a full one's: {half_ratio:.2f} (about 0.5: "
                     f"{verdict(0.35 <= half_ratio <= 0.65)}); 1/10-speed worker: {100 * s['share']['tenth']:.1f}% "
                     f"(≤ 5%: {verdict(s['share']['tenth'] <= 0.05)}).\n")
    ov = r["overload"]
    lines.append(f"## 10x overload ({ov['rate']:.0f} req/s open-loop at two workers that carry {ov['true_capacity']:.0f})\n")
    shed = ov["failed_by_status"].get("StatusCode.RESOURCE_EXHAUSTED", 0)
    other = ov["failed"] - shed
    lines.append("| sent | served | 429 / RESOURCE_EXHAUSTED | shed latency p50 / p99 ms | other failures | router up after | router RSS before → after |")
    lines.append("|---|---|---|---|---|---|---|")
    lines.append(f"| {ov['sent']} | {ov['succeeded']} | {shed} | {ov['shed_p50_ms']:.2f} / {ov['shed_p99_ms']:.2f} | {other} | "
                 f"{ov['alive']} | {ov['rss_kib_before']} → {ov['rss_kib_after']} KiB |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--compress", type=float, default=60.0)
    ap.add_argument("--only", default="", help="comma-separated sections to rerun (calibration, replay, policies, "
                    "overhead, slowed, overload) into the existing results; the others are kept")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    smoke = args.smoke
    out = WORK if smoke else ROOT / "bench" / "results"
    name = "fleet-smoke" if smoke else "fleet"
    only = {x for x in args.only.split(",") if x}
    result = json.loads((out / f"{name}.json").read_text()) if only else {}
    run = lambda section: not only or section in only
    try:
        if run("calibration") or run("replay") or run("policies"):
            log("calibration: every worker up, measuring capacity")
            caps, _ = calibrate(8 if smoke else 20)
            result["calibration"] = {"capacity": caps}
            result["fleet_capacity"] = sum(caps.values())
            result["guaranteed_capacity"] = sum(caps[n] for n, _, _ in GUARANTEED)
            log(f"fleet capacity {result['fleet_capacity']:.0f} req/s ({caps})")
        if run("replay"):
            replays = []
            for notice in (True, False):
                log(f"spot trace replay, {'with' if notice else 'without'} notice")
                replays.append(replay(result["fleet_capacity"], args.compress, notice, "elastic-first",
                                      40 if smoke else None))
                log(json.dumps({k: v for k, v in replays[-1].items() if not isinstance(v, list)}))
            result["replays"] = replays
        if run("policies"):
            log("policies")
            result["policies"] = policies(result["fleet_capacity"], 10 if smoke else 60)
        if run("overhead"):
            log("router overhead")
            result["overhead"] = overhead(3 if smoke else 10, [100, 300, 1000], 1 if smoke else 5)
        if run("slowed"):
            log("slowed workers")
            result["slowed"] = slowed(10 if smoke else 60)
        if run("overload"):
            log("overload")
            result["overload"] = overload(5 if smoke else 15)
    finally:
        Proc.stop_all()
    rerun = sorted(set(result.get("meta", {}).get("sections_of_this_run", [])) | only) if only else "all"
    result["meta"] = {"machine": platform.node(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
                      "smoke": smoke, "sections_of_this_run": rerun}
    (out / f"{name}.json").write_text(json.dumps(result, indent=1, default=float))
    (out / f"{name}.md").write_text(report(result, smoke))
    print(report(result, smoke))


if __name__ == "__main__":
    main()
