#!/usr/bin/env python3
"""Where an overloaded server's time goes: bench/serving's compute-bound overload point
(mlp_big_q, max_queue_size 2, clients honouring Retry-After, c = 12) run again while every thread
of the server and of the load generator is sampled from /proc/PID/task/TID/schedstat (time on
CPU, time runnable but waiting for a CPU) and /proc/PID/task/TID/comm, and again at c = 1 for the
unloaded baseline. A 429 is decided without touching the engine; if its p99 is long, the question is
whether the thread that answers it was running or waiting for a core.

Usage (after bench/serving/run.sh has built the binaries and made the models):
  bench/.venv-serving-client/bin/python bench/serving/overload_profile.py \
      --flotilla target/release/flotilla --load target/release/flotilla-load [--ort LIB] [--seconds 20]
Prints a markdown summary (bench/results/serving-profile.md keeps it).
"""
import argparse
import collections
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench  # noqa: E402


def threads(pid):
    """{tid: (name, cpu ns, wait ns)} of a process's threads."""
    out = {}
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            cpu, wait, _ = (int(x) for x in (task / "schedstat").read_text().split())
        except (OSError, ValueError):
            continue
        out[int(task.name)] = (name, cpu, wait)
    return out


def group(name):
    if name.startswith("tokio-r") or name.startswith("flotilla-rt"):
        return "async runtime workers"
    if name.startswith("engine") or name == "flotilla":
        # engine instance threads, and ONNX Runtime's own (unnamed: the process name)
        return "engine instance threads"
    return name


def delta(before, after):
    """{group: [cpu s, wait s, threads]} between two samples."""
    out = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for tid, (name, cpu, wait) in after.items():
        b = before.get(tid, (name, 0, 0))
        g = out[group(name)]
        g[0] += (cpu - b[1]) / 1e9
        g[1] += (wait - b[2]) / 1e9
        g[2] += 1
    return out


def run(a, server_pid, c, retry):
    """One flotilla-load run at concurrency c, with the server's and the loader's threads sampled."""
    mix = bench.WORK / "mix-profile.json"
    mix.write_text(json.dumps({"kinds": [{"name": "mlp_big_q", "weight": 1, "http": {
        "path": "/v2/models/mlp_big_q/infer", "text": (bench.WORK / "body_big.json").read_text(),
        "content_type": "application/json"}}]}))
    out = bench.WORK / "load-profile.json"
    load = subprocess.Popen([a.load, "--mix", str(mix), "--http", f"127.0.0.1:{bench.PORTS['flotilla']}",
                             "--connections", str(c), "--duration", str(a.seconds), "--threads", str(min(2, c)),
                             "--honour-retry-after", str(retry), "--out", str(out)])
    time.sleep(1.0)
    s0, l0, t0 = threads(server_pid), threads(load.pid), time.monotonic()
    samples = []
    stop = threading.Event()

    def runnable():
        # How many threads of the machine are runnable, sampled every 5 ms (procs_running).
        while not stop.is_set():
            for line in open("/proc/stat"):
                if line.startswith("procs_running"):
                    samples.append(int(line.split()[1]))
            time.sleep(0.005)
    th = threading.Thread(target=runnable)
    th.start()
    time.sleep(max(a.seconds - 3, 1))
    s1, l1, t1 = threads(server_pid), threads(load.pid), time.monotonic()
    stop.set()
    th.join()
    load.wait()
    r = json.loads(out.read_text())
    status = r["kinds"]["mlp_big_q"]
    return {"c": c, "window_s": t1 - t0, "server": delta(s0, s1), "loader": delta(l0, l1), "status": status,
            "runnable": samples}


def table(res, cores):
    w = res["window_s"]
    lines = ["| threads | CPU (cores busy) | waiting for a CPU (threads, on average) | wait per CPU second |",
             "|---|---:|---:|---:|"]
    for who, groups in (("server", res["server"]), ("load generator", res["loader"])):
        for g, (cpu, wait, n) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
            if cpu < 0.01 * w and wait < 0.01 * w:
                continue
            lines.append(f"| {who}: {g} ({n}) | {cpu / w:.2f} | {wait / w:.2f} | {wait / max(cpu, 1e-9):.2f} s |")
    run = res["runnable"]
    busy = sum(1 for x in run if x > cores) / max(len(run), 1)
    lines.append(f"\nRunnable threads on the machine (procs_running, {len(run)} samples): mean "
                 f"{sum(run) / max(len(run), 1):.1f} on {cores} cores; more runnable threads than cores in "
                 f"{100 * busy:.0f}% of samples.")
    st = res["status"]
    lines.append("Answers: " + ", ".join(f"{k}: {v['count']} (p50 {v['p50_us']:.0f} µs, p99 {v['p99_us']:.0f} µs)"
                                         for k, v in st.items() if not k.startswith("error")))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flotilla", required=True)
    ap.add_argument("--load", required=True)
    ap.add_argument("--ort", help="libonnxruntime.so (default: the Triton venv's, as bench.py)")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=12)
    a = ap.parse_args()
    if a.ort:
        bench.ort_lib = lambda: a.ort
    fl = bench.start_flotilla(a.flotilla, bench.WORK / "flotilla", bench.PORTS["flotilla"])
    try:
        pid = fl.proc.pid
        unloaded = run(a, pid, 1, 1.0)
        loaded = run(a, pid, a.concurrency, 1.0)
    finally:
        fl.stop()
    cores = os.cpu_count()
    print(f"## c = 1 (unloaded)\n\n{table(unloaded, cores)}\n\n## c = {a.concurrency}, honouring Retry-After\n\n"
          f"{table(loaded, cores)}")


if __name__ == "__main__":
    main()
