"""Fleet control-plane benchmark: digest-based sync of 100 models to six workers, a zero-downtime
rollout under open-loop load, a faulty canary rolled back, and an A/B split's accuracy.
Started by bench/fleet/run.sh --control (or directly with the bench venv); writes
bench/results/fleet-control.{md,json}. Never asserts on times: targets are PASS/MISS.
"""
import argparse, asyncio, json, os, platform, re, sys, threading, time
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as fb  # noqa: E402  (processes, metrics, helpers of the data-plane benchmark)

WORK = fb.WORK / "control"
MODEL = "tv"


def router(fleet_toml, *args):
    return fb.router_with_metrics("--desired-state", str(fleet_toml), *args)


def worker(rt, name, cls, repo, *extra, heartbeat_ms=1000):
    return fb.Proc(name, ["serve", "--model-repository", str(repo), "--http-port", "0", "--grpc-port", "0",
                          "--metrics-port", "0", "--join", rt.url, "--worker-id", name, "--capacity-class", cls,
                          "--feature-repo", "none", "--drift-monitoring", "false", "--heartbeat-ms", str(heartbeat_ms),
                          "--exit-timeout-secs", "5", "--model-control-mode", "explicit", *extra])


def delay_config(name, delay_ms, instances, policy=""):
    return f"""name: "{name}"
backend: "delay"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
parameters {{ key: "execute_delay_ms" value: {{ string_value: "{delay_ms}" }} }}
{policy}
"""


# === sync: 100 models, 6 workers ===

def sync_bytes(rt, kind):
    return fb.fleet_metric(rt, "flotilla_fleet_sync_bytes_total", ["kind"]).get((kind,), 0.0)


def in_sync(rt):
    ws = fb.get(rt.url + "/v2/fleet")["workers"]
    return {w["id"]: w["applied_digest"] for w in ws}, all(w["applied_digest"] and w["applied_digest"] == w["desired_digest"] for w in ws)


def sync_section(changes):
    root = WORK / "sync"
    models = root / "models"
    for i in range(100):
        d = models / f"m{i:03d}"
        (d / "1").mkdir(parents=True, exist_ok=True)
        (d / "1" / "model.delay").write_text(f"model {i}\n")
        (d / "config.pbtxt").write_text(delay_config(f"m{i:03d}", 1, 1))
    toml = root / "fleet.toml"
    toml.write_text("".join(f'[models.m{i:03d}]\nartifact = "models/m{i:03d}"\n' for i in range(100)))
    rt = router(toml)
    classes = ["guaranteed"] * 2 + ["opportunistic"] * 4
    started = time.time()
    ids = []
    for i, cls in enumerate(classes):
        repo = root / f"repo-w{i}"
        repo.mkdir(exist_ok=True)
        worker(rt, f"w{i}", cls, repo)
        ids.append(f"w{i}")
    fb.wait_fleet(rt, ids)
    while not (in_sync(rt)[1] and all(len(w["models"]) == 100 for w in fb.get(rt.url + "/v2/fleet")["workers"])):
        time.sleep(0.05)
    initial_s = time.time() - started
    fb.log(f"sync: 6 workers x 100 models applied in {initial_s:.1f} s")
    # Steady state: what the sync costs per worker per heartbeat.
    kinds = ["digest", "assignment", "manifest", "blob"]
    before = {k: sync_bytes(rt, k) for k in kinds}
    window = 20.0
    time.sleep(window)
    after = {k: sync_bytes(rt, k) for k in kinds}
    steady = {k: after[k] - before[k] for k in kinds}
    heartbeats = len(ids) * window / 1.0
    record = json.loads(json.dumps(fb.get(rt.url + "/v2/fleet")["workers"][0]))
    digest_in_record = len(record["applied_digest"] or "")
    # Change one model at a time: time from the write to every worker having applied it.
    times = []
    moved = []
    for n in range(changes):
        digests, _ = in_sync(rt)
        b0 = {k: sync_bytes(rt, k) for k in ("manifest", "blob")}
        target = models / f"m{(n * 37) % 100:03d}" / "1" / "model.delay"
        body = f"model changed {n} {time.time()}\n"
        t0 = time.time()
        target.write_text(body)
        while True:
            now, ok = in_sync(rt)
            if ok and all(now[w] != digests[w] for w in now):
                break
            time.sleep(0.005)
            if time.time() - t0 > 30:
                raise SystemExit(f"change {n} not applied: {fb.get(rt.url + '/v2/fleet')}")
        times.append((time.time() - t0) * 1000)
        b1 = {k: sync_bytes(rt, k) for k in ("manifest", "blob")}
        moved.append({"blob": b1["blob"] - b0["blob"], "manifest": b1["manifest"] - b0["manifest"], "file": len(body)})
        time.sleep(0.3)
    only_that = all(m["blob"] == len(ids) * m["file"] for m in moved)
    fb.Proc.stop_all()
    return {
        "workers": len(ids), "models": 100, "initial_apply_s": initial_s,
        "steady_window_s": window, "steady_bytes": steady, "heartbeat_answers": heartbeats,
        "digest_bytes_per_answer": steady["digest"] / heartbeats if heartbeats else None,
        "digest_bytes_in_record": digest_in_record,
        "change_apply_ms": times, "moved": moved, "only_changed_model_moved": only_that,
    }


# === rollout, canary, A/B on two workers ===

def versions_repo():
    repo = WORK / "versions-repo"
    d = repo / MODEL
    for v in (1, 2, 3):
        (d / str(v)).mkdir(parents=True, exist_ok=True)
    (d / "3" / "fail_above").write_text("0.5\n")
    (d / "config.pbtxt").write_text(delay_config(MODEL, 5, 8, "version_policy: { specific { versions: [ 1 ] } }"))
    return repo


def two_workers(toml_text):
    toml = WORK / "fleet-versions.toml"
    toml.write_text(toml_text)
    rt = router(toml)
    repo = versions_repo()
    for i in range(2):
        worker(rt, f"v{i}", "guaranteed", repo, "--load-model", MODEL, heartbeat_ms=200)
    fb.wait_fleet(rt, ["v0", "v1"])
    return rt, toml


def inputs(x):
    i = grpcaio.InferInput("INPUT0", [1, 4], "FP32")
    i.set_data_from_numpy(np.array([[x, 0, 0, 0]], dtype=np.float32))
    return [i]


async def open_loop(url, rate, seconds, rec, x=None, events=None):
    """`rate` unversioned requests/s of `tv` for `seconds`; latency from each request's due time."""
    client = grpcaio.InferenceServerClient(url)
    loop = asyncio.get_running_loop()
    start = loop.time()
    pending = set()
    rng = np.random.default_rng(1)

    async def one(due, value):
        try:
            r = await client.infer(MODEL, inputs(value), client_timeout=30)
            rec.append((due - start, loop.time() - due, r.get_response().model_version, None))
        except InferenceServerException as e:
            rec.append((due - start, loop.time() - due, None, e.message()))

    n = 0
    while True:
        due = start + n / rate
        if due - start >= seconds:
            break
        if events:
            for at, fn in list(events):
                if due - start >= at:
                    events.remove((at, fn))
                    threading.Thread(target=fn, daemon=True).start()
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(one(due, float(rng.uniform()) if x is None else x))
        pending.add(task)
        task.add_done_callback(pending.discard)
        n += 1
    if pending:
        await asyncio.wait(pending, timeout=35)
    await client.close()


def events(rt, kind):
    return [e for e in fb.get(rt.url + "/v2/fleet/events")["events"] if e["kind"] == kind]


def rollout_section(rate, seconds):
    rt, toml = two_workers(f"[models.{MODEL}]\nversion = 1\nunload_previous = true\n")
    while not all(m["versions"] == ["1"] for w in fb.get(rt.url + "/v2/fleet")["workers"] for m in w["models"]):
        time.sleep(0.1)
    at = seconds / 2
    t_write = {}

    def roll():
        t_write["t"] = time.time()
        toml.write_text(f"[models.{MODEL}]\nversion = 2\nunload_previous = true\n")

    rec = []
    t0 = time.time()
    asyncio.run(open_loop(f"127.0.0.1:{rt.grpc}", rate, seconds, rec, x=0.1, events=[(at, roll)]))
    finished = events(rt, "rollout_finished")
    shifted = events(rt, "rollout_shifted")
    end_s = (finished[0]["at_ms"] / 1000 - t0) if finished else seconds
    steady = [l * 1000 for t, l, v, e in rec if 2 <= t < at and e is None]
    during = [l * 1000 for t, l, v, e in rec if at <= t <= end_s + 1 and e is None]
    failed = [e for *_, e in rec if e is not None]
    by_version = {}
    for _, _, v, e in rec:
        if e is None:
            by_version[v] = by_version.get(v, 0) + 1
    versions_after = sorted({v for w in fb.get(rt.url + "/v2/fleet")["workers"] for m in w["models"] for v in m["versions"]})
    fb.Proc.stop_all()
    return {
        "rate": rate, "seconds": seconds, "sent": len(rec), "failed": len(failed), "failures": failed[:5],
        "by_version": by_version, "steady_p99_ms": fb.pct(steady, 99), "rollout_p99_ms": fb.pct(during, 99),
        "steady_p50_ms": fb.pct(steady, 50), "rollout_p50_ms": fb.pct(during, 50),
        "write_to_shift_ms": (shifted[0]["at_ms"] - t_write["t"] * 1000) if shifted and t_write else None,
        "write_to_finished_ms": (finished[0]["at_ms"] - t_write["t"] * 1000) if finished and t_write else None,
        "versions_after": versions_after,
    }


def canary_section(rate, seconds):
    rt, toml = two_workers(f"[models.{MODEL}]\nversion = 1\n")
    at = 3.0

    def start_canary():
        toml.write_text(f"[models.{MODEL}]\nversion = 1\n[models.{MODEL}.canary]\nversion = 3\n"
                        "steps = [10, 50, 100]\nhold_s = 30\nmin_requests = 20\n")

    rec = []
    t0 = time.time()
    asyncio.run(open_loop(f"127.0.0.1:{rt.grpc}", rate, seconds, rec, events=[(at, start_canary)]))
    first_step = events(rt, "canary_step")
    rolled = events(rt, "canary_rolled_back")
    failures = sorted(t for t, _, _, e in rec if e is not None)
    first_fail = failures[0] if failures else None
    rb_s = rolled[0]["at_ms"] / 1000 - t0 if rolled else None
    canary_s = first_step[0]["at_ms"] / 1000 - t0 if first_step else None
    # Requests sent while the canary took traffic, and the canary's share (10%) of them.
    window = [t for t, *_ in rec if canary_s is not None and rb_s is not None and canary_s <= t <= rb_s]
    late = [t for t in failures if rb_s is not None and t > rb_s + 0.5]
    fb.Proc.stop_all()
    return {
        "rate": rate, "sent": len(rec), "failed": len(failures),
        "fault_to_rollback_s": (rb_s - first_fail) if rb_s is not None and first_fail is not None else None,
        "canary_start_to_rollback_s": (rb_s - canary_s) if rb_s is not None and canary_s is not None else None,
        "window_requests": len(window), "canary_share_of_window": 0.10 * len(window),
        "failures_after_rollback": len(late), "reason": rolled[0]["detail"] if rolled else None,
    }


def ab_section(n):
    rt, toml = two_workers(f'[models.{MODEL}.ab]\nsplit_by = "header:x-user"\n'
                           'arms = [{ name = "a", version = 1, weight = 90 }, { name = "b", version = 2, weight = 10 }]\n')
    while not all(m["versions"] == ["1", "2"] for w in fb.get(rt.url + "/v2/fleet")["workers"] for m in w["models"]):
        time.sleep(0.1)

    async def run():
        client = grpcaio.InferenceServerClient(f"127.0.0.1:{rt.grpc}")
        sem = asyncio.Semaphore(32)
        got = {}

        async def one(i):
            async with sem:
                r = await client.infer(MODEL, inputs(0.1), headers={"x-user": f"user-{i}"})
                got[i] = r.get_response().model_version

        await asyncio.gather(*(one(i) for i in range(n)))
        again = {}
        for i in range(0, n, 50):
            r = await client.infer(MODEL, inputs(0.1), headers={"x-user": f"user-{i}"})
            again[i] = r.get_response().model_version
        await client.close()
        return got, again

    got, again = asyncio.run(run())
    fb.Proc.stop_all()
    share = sum(1 for v in got.values() if v == "2") / len(got)
    sticky = all(got[i] == v for i, v in again.items())
    return {"requests": n, "share_b": share, "target": 0.10, "sticky": sticky, "rechecked": len(again)}


# === report ===

def report(r):
    m = r["meta"]
    v = fb.verdict
    lines = [f"# Fleet control plane: sync, rollout, canary, A/B\n",
             f"`bench/fleet/run.sh --control` on {m['machine']} ({m['cpus']} CPUs), {m['date']}; binary `{m['binary']}`. "
             "Router and workers on loopback; load open-loop through tritonclient's asyncio gRPC client.\n"]
    s = r.get("sync")
    if s:
        ch = s["change_apply_ms"]
        per = (s["digest_bytes_per_answer"] or 0) + s["digest_bytes_in_record"]
        lines += ["## Digest-based sync (6 workers: 2 guaranteed, 4 opportunistic; 100 models served from the router's artifacts; heartbeat 1 s)\n",
                  "| measure | value | target | |", "|---|---|---|---|",
                  f"| first apply, 6 × 100 models | {s['initial_apply_s']:.1f} s | | |",
                  f"| steady state, sync bytes per worker per heartbeat | {per:.0f} B (digest in the record {s['digest_bytes_in_record']} + in the answer {s['digest_bytes_per_answer']:.0f}) | ≤ 128 B of digest | {v(per <= 128)} |",
                  f"| steady state, assignments / manifests / blobs moved in {s['steady_window_s']:.0f} s | {s['steady_bytes']['assignment']:.0f} / {s['steady_bytes']['manifest']:.0f} / {s['steady_bytes']['blob']:.0f} B | 0 | {v(s['steady_bytes']['manifest'] == 0 and s['steady_bytes']['blob'] == 0)} |",
                  f"| one model changed ({len(ch)} times): only its file moved | {'yes' if s['only_changed_model_moved'] else 'no'} (blob bytes = 6 × the file) | only that model | {v(s['only_changed_model_moved'])} |",
                  f"| write → every worker applied, p50 / p99 / max | {fb.pct(ch, 50):.0f} / {fb.pct(ch, 99):.0f} / {max(ch):.0f} ms | p99 ≤ 500 ms | {v(fb.pct(ch, 99) <= 500)} |",
                  "", "The router rescans artifact folders every 250 ms tick (unchanged files are not read again) and pokes the workers whose assignment digest changed; a worker fetches the assignment, the changed model's manifest and the blobs its cache lacks, verifies each hash, stages the folder, swaps it in and loads it.\n"]
    ro = r.get("rollout")
    if ro:
        ratio = ro["rollout_p99_ms"] / ro["steady_p99_ms"] if ro["steady_p99_ms"] else float("nan")
        lines += [f"## Zero-downtime rollout (version 1 → 2 with unload_previous, {ro['rate']} req/s open-loop, 2 workers)\n",
                  "| sent | failed | answers by version | steady p50 / p99 ms | during rollout p50 / p99 ms | p99 ratio | write → shift / → old version unloadable ms | versions after |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {ro['sent']} | {ro['failed']} | {ro['by_version']} | {ro['steady_p50_ms']:.2f} / {ro['steady_p99_ms']:.2f} | {ro['rollout_p50_ms']:.2f} / {ro['rollout_p99_ms']:.2f} | {ratio:.2f} | {ro['write_to_shift_ms']:.0f} / {ro['write_to_finished_ms']:.0f} | {ro['versions_after']} |",
                  "", f"Targets: 0 failed — {v(ro['failed'] == 0)}; p99 during rollout ≤ 1.25× steady — {v(ratio <= 1.25)}.\n"]
    c = r.get("canary")
    if c:
        ok_time = c["fault_to_rollback_s"] is not None and c["fault_to_rollback_s"] <= 5
        lines += [f"## Faulty canary (version 3 fails inputs above 0.5, i.e. half; 10% step; {c['rate']} req/s)\n",
                  "| sent | failed | first failure → rollback s | canary start → rollback s | requests in that window | canary share of them | failures after rollback | reason |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {c['sent']} | {c['failed']} | {c['fault_to_rollback_s']:.2f} | {c['canary_start_to_rollback_s']:.2f} | {c['window_requests']} | {c['canary_share_of_window']:.0f} | {c['failures_after_rollback']} | {c['reason']} |",
                  "", f"Targets: rolled back within 5 s — {v(ok_time)}; failed ≤ the canary share of the window — {v(c['failed'] <= c['canary_share_of_window'])}.\n"]
    ab = r.get("ab")
    if ab:
        lines += ["## A/B split (90/10 by `x-user` header, distinct users, gRPC)\n",
                  "| requests | share on arm b | target | sticky on recheck |", "|---|---|---|---|",
                  f"| {ab['requests']} | {ab['share_b'] * 100:.2f}% | 10% ± 2 points — {v(abs(ab['share_b'] - 0.10) <= 0.02)} | {ab['sticky']} ({ab['rechecked']} users) |", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if not fb.BIN.exists():
        raise SystemExit(f"{fb.BIN} is missing (cargo build --release, or FLOTILLA_BENCH_BIN)")
    WORK.mkdir(parents=True, exist_ok=True)
    smoke = args.smoke
    result = {}
    try:
        fb.log("sync: 100 models to 6 workers")
        result["sync"] = sync_section(5 if smoke else 30)
        fb.log("rollout under load")
        result["rollout"] = rollout_section(100 if smoke else 300, 16 if smoke else 40)
        fb.log("faulty canary")
        result["canary"] = canary_section(100 if smoke else 300, 12 if smoke else 20)
        fb.log("A/B split")
        result["ab"] = ab_section(2000 if smoke else 10_000)
    finally:
        fb.Proc.stop_all()
    result["meta"] = {"machine": platform.node(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
                      "smoke": smoke, "binary": str(fb.BIN.relative_to(fb.ROOT)) if fb.BIN.is_relative_to(fb.ROOT) else str(fb.BIN)}
    out = WORK if smoke else fb.ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "fleet-control.json").write_text(json.dumps(result, indent=1, default=float))
    (out / "fleet-control.md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()
