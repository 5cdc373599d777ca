"""Change data capture benchmark (bench/cdc/run.sh runs it): Flotilla's PostgreSQL stream against
pg_recvlogical on the same changes, and commit-to-visible latency at a steady update rate.
Writes bench/results/cdc.{md,json}."""
import argparse
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import psycopg
import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]
DSN = "postgresql://postgres@127.0.0.1:5432/test"
LIBPQ = "host=127.0.0.1 port=5432 user=postgres dbname=test"
TABLE = "flotilla_bench_cards"
SLOT = PUB = "flotilla_bench"
KEYS = 10_000
UPDATE_SQL = f"\\set id random(1, {KEYS})\nUPDATE {TABLE} SET balance = balance + 1, updated_at = now() WHERE card_id = :id;\n"

VIEW = f"""
[[entity]]
name = "card"
join_key = "card_id"
value_type = "int64"

[[feature_view]]
name = "bench_cards"
entities = ["card"]
ttl = "0"
stream = {{ type = "postgres", url = "{DSN}", table = "{TABLE}", slot = "{SLOT}", publication = "{PUB}", batch = 4096 }}
features = [
  {{ name = "balance", dtype = "int64" }},
  {{ name = "updated_at", dtype = "unix_timestamp" }},
]
"""


def sql(q, *args):
    with psycopg.connect(DSN, autocommit=True) as c:
        cur = c.execute(q, args or None)
        return cur.fetchall() if cur.description else None


def drop_slot(name):
    for _ in range(50):
        row = sql("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", name)
        if not row:
            return
        if row[0][0] is not None:
            sql("SELECT pg_terminate_backend(%s)", row[0][0])
            time.sleep(0.1)
            continue
        sql("SELECT pg_drop_replication_slot(%s)", name)


def reset():
    for s in (SLOT, SLOT + "_warm", SLOT + "_recv", SLOT + "_peek"):
        drop_slot(s)
    sql(f"DROP PUBLICATION IF EXISTS {PUB}")
    sql(f"DROP TABLE IF EXISTS {TABLE}")
    sql(f"CREATE TABLE {TABLE} (card_id bigint PRIMARY KEY, balance bigint NOT NULL, updated_at timestamptz)")
    sql(f"INSERT INTO {TABLE} SELECT g, 0, now() FROM generate_series(0, {KEYS}) g")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Flotilla:
    def __init__(self, binary, repo, store, models):
        self.http, self.metrics_port = free_port(), free_port()
        env = dict(os.environ, FLOTILLA_ONLINE_STORE=f"embedded:{store}", FLOTILLA_CONSUME_STREAMS="true",
                   RUST_LOG="info")
        self.log = open(tempfile.mktemp(prefix="flotilla-cdc-", suffix=".log"), "w+")
        self.proc = subprocess.Popen(
            [binary, "serve", "--model-repository", str(models), "--feature-repo", str(repo), "--host", "127.0.0.1",
             "--http-port", str(self.http), "--grpc-port", str(free_port()), "--metrics-port", str(self.metrics_port)],
            env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        self.started = time.time()

    def text(self):
        self.log.flush()
        return pathlib.Path(self.log.name).read_text()

    def wait_consuming(self, timeout=600):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if "consuming" in self.text():
                return time.time()
            if self.proc.poll() is not None:
                raise RuntimeError("flotilla exited:\n" + self.text())
            time.sleep(0.01)
        raise RuntimeError("flotilla did not start streaming:\n" + self.text())

    def metrics(self):
        return requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def metric(self, name, labels=""):
        for line in self.metrics().splitlines():
            if line.startswith(name + "{") and labels in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def histogram(self, name):
        buckets = {}
        for line in self.metrics().splitlines():
            m = re.match(name + r'_bucket\{.*le="([^"]+)"\} (\S+)', line)
            if m:
                buckets[float(m.group(1))] = float(m.group(2))
        return sorted(buckets.items())

    def balance(self, card):
        r = requests.post(f"http://127.0.0.1:{self.http}/get-online-features",
                          json={"features": ["bench_cards:balance"], "entities": {"card_id": [card]}}, timeout=5)
        return r.json()["results"][1]["values"][0]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


def pgbench(args, script):
    f = tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False)
    f.write(script)
    f.close()
    t0 = time.time()
    # synchronous_commit = off: this VM's disk flushes ~1k commits/s, too few for 5k updates/s;
    # the WAL writer still flushes every 200 ms, and changes stream once flushed.
    env = dict(os.environ, PGOPTIONS="-c synchronous_commit=off")
    p = subprocess.run(["pgbench", "-n", "-h", "127.0.0.1", "-U", "postgres", *args, "-f", f.name, "test"],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(p.stdout + p.stderr)
    tps = float(re.search(r"tps = ([0-9.]+)", p.stdout).group(1))
    return tps, time.time() - t0


def recvlogical(slot, end, out):
    """pg_recvlogical from the slot to `end`, its output to the file `out`."""
    subprocess.run(["pg_recvlogical", "-d", LIBPQ, "--slot", slot, "--start", "--endpos", end, "--no-loop",
                    "-o", "proto_version=1", "-o", f"publication_names={PUB}", "-f", out], check=True)


def recvlogical_timed(slot, size):
    """Seconds until pg_recvlogical has written `size` bytes (all the changes, as the warm-up pass
    wrote them) to its output pipe, read and dropped here. Timing the bytes, not the process's
    exit, leaves out its wait at the end for a keepalive that passes --endpos."""
    t0 = time.time()
    p = subprocess.Popen(["pg_recvlogical", "-d", LIBPQ, "--slot", slot, "--start", "--no-loop",
                          "-o", "proto_version=1", "-o", f"publication_names={PUB}", "-f", "-"],
                         stdout=subprocess.PIPE)
    got = 0
    while got < size:
        chunk = p.stdout.read1(1 << 20)
        if not chunk:
            raise RuntimeError(f"pg_recvlogical ended after {got} of {size} bytes")
        got += len(chunk)
    elapsed = time.time() - t0
    p.terminate()
    p.wait()
    return elapsed


def quantile_from_histogram(before, after, q):
    deltas = [(le, a - dict(before).get(le, 0.0)) for le, a in after]
    total = deltas[-1][1]
    if total <= 0:
        return None
    want, prev_le, prev_n = q * total, 0.0, 0.0
    for le, n in deltas:
        if n >= want:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (want - prev_n) / max(n - prev_n, 1e-9)
        prev_le, prev_n = le, n
    return None


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flotilla", required=True)
    ap.add_argument("--updates", type=int, default=1_000_000)
    ap.add_argument("--rate", type=int, default=5_000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cdc"))
    a = ap.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="flotilla-bench-cdc-"))
    repo, models = work / "features", work / "models"
    repo.mkdir()
    models.mkdir()
    (repo / "repo.toml").write_text(VIEW)
    store = work / "online.redb"
    reset()
    result = {"updates": a.updates, "keys": KEYS, "cores": os.cpu_count(), "rate": a.rate, "seconds": a.seconds}

    print("==> snapshot: slot and copy")
    f = Flotilla(a.flotilla, repo, store, models)
    f.wait_consuming()
    f.stop()
    sql("SELECT pg_copy_logical_replication_slot(%s, %s)", SLOT, SLOT + "_warm")
    sql("SELECT pg_copy_logical_replication_slot(%s, %s)", SLOT, SLOT + "_recv")
    sql("SELECT pg_copy_logical_replication_slot(%s, %s)", SLOT, SLOT + "_peek")

    print(f"==> committing {a.updates} single-row updates (nothing reading the slots)")
    clients = 4
    gen_tps, _ = pgbench(["-c", str(clients), "-j", "2", "-t", str(a.updates // clients)], UPDATE_SQL)
    end = sql("SELECT pg_current_wal_lsn()::text")[0][0]
    result["generate_tps"] = gen_tps

    print("==> pg_recvlogical: warm-up pass, then the timed pass")
    warm = work / "recvlogical.out"
    recvlogical(SLOT + "_warm", end, str(warm))
    t_recv = recvlogical_timed(SLOT + "_recv", warm.stat().st_size)
    result["pg_recvlogical_seconds"] = t_recv
    result["pg_recvlogical_changes_per_s"] = a.updates / t_recv

    print("==> the server decoding alone: pg_logical_slot_peek_binary_changes (no client, no network)")
    t0 = time.time()
    sql("SELECT count(*) FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, 'proto_version', '1', "
        "'publication_names', %s)", SLOT + "_peek", PUB)
    result["peek_seconds"] = time.time() - t0
    result["peek_changes_per_s"] = a.updates / result["peek_seconds"]
    drop_slot(SLOT + "_peek")

    print("==> flotilla: drain the same backlog")
    f = Flotilla(a.flotilla, repo, store, models)
    t0 = f.wait_consuming()
    label = f'source="postgres:{TABLE}"'
    while f.metric("flotilla_feature_cdc_changes_applied_total", label) < a.updates:
        time.sleep(0.02)
        if time.time() - t0 > 3600:
            raise RuntimeError("flotilla did not catch up within an hour")
    t_flo = time.time() - t0
    result["flotilla_seconds"] = t_flo
    result["flotilla_changes_per_s"] = a.updates / t_flo
    result["ratio"] = result["flotilla_changes_per_s"] / result["pg_recvlogical_changes_per_s"]
    drop_slot(SLOT + "_warm")
    drop_slot(SLOT + "_recv")

    print(f"==> visibility at {a.rate} updates/s for {a.seconds} s")
    before = f.histogram("flotilla_feature_cdc_visibility_seconds")
    latencies, stop = [], threading.Event()

    def probe():
        with psycopg.connect(DSN, autocommit=True) as c:
            seq = 0
            while not stop.is_set():
                seq += 1
                c.execute(f"UPDATE {TABLE} SET balance = %s WHERE card_id = 0", (10 ** 9 + seq,))
                committed = time.time()
                while f.balance(0) != 10 ** 9 + seq:
                    if time.time() - committed > 30:
                        raise RuntimeError("probe update not visible within 30 s")
                    time.sleep(0.0005)
                latencies.append(time.time() - committed)
                time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    load_tps, _ = pgbench(["-c", "8", "-j", "2", "-R", str(a.rate), "-T", str(a.seconds)], UPDATE_SQL)
    stop.set()
    prober.join()
    after = f.histogram("flotilla_feature_cdc_visibility_seconds")
    f.stop()
    result.update({
        "load_tps": load_tps,
        "probe_samples": len(latencies),
        "probe_p50_s": pct(latencies, 0.5),
        "probe_p99_s": pct(latencies, 0.99),
        "probe_max_s": max(latencies),
        "histogram_p50_s": quantile_from_histogram(before, after, 0.5),
        "histogram_p99_s": quantile_from_histogram(before, after, 0.99),
    })
    drop_slot(SLOT)
    sql(f"DROP PUBLICATION IF EXISTS {PUB}")
    sql(f"DROP TABLE IF EXISTS {TABLE}")
    shutil.rmtree(work, ignore_errors=True)
    write(result, a.out)


def write(r, out):
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(r, indent=2) + "\n")
    ms = lambda s: f"{s * 1000:.1f} ms" if s is not None else "n/a"  # noqa: E731
    md = f"""# Change data capture: PostgreSQL → online store

`bench/cdc/run.sh` on this machine ({r['cores']} cores): PostgreSQL 15 on 127.0.0.1, a table of {r['keys']:,} cards.

## Apply rate: {r['updates']:,} single-row UPDATE transactions

Committed first ({r['generate_tps']:,.0f} tps with pgbench, `synchronous_commit = off`, nothing reading the
slots), then drained from the same position: pg_recvlogical first on one copy of Flotilla's slot (a
warm-up, so both timed readers find the WAL in the page cache, which also gives the byte count of all
the changes), timed on a second copy until it has written that many bytes to a pipe, then Flotilla
(from its `consuming` log line to the moment its applied-changes counter reaches the count):

| reader | seconds | changes/s | vs pg_recvlogical |
|---|---|---|---|
| pg_recvlogical → a pipe, discarded (the issue's physical limit) | {r['pg_recvlogical_seconds']:.1f} | {r['pg_recvlogical_changes_per_s']:,.0f} | 100% |
| Flotilla → embedded online store (durable, visible) | {r['flotilla_seconds']:.1f} | {r['flotilla_changes_per_s']:,.0f} | {r['ratio'] * 100:.0f}% |
| reference: the server decoding alone (`pg_logical_slot_peek_binary_changes`, no client) | {r['peek_seconds']:.1f} | {r['peek_changes_per_s']:,.0f} | {r['peek_changes_per_s'] / r['pg_recvlogical_changes_per_s'] * 100:.0f}% |

On this 2-core machine pg_recvlogical is not the limit the issue expected: it writes each of the
3 messages per transaction (begin, update, commit) with its own system calls, and shares the two
cores with the walsender; Flotilla reads the stream in 256 KiB pieces and writes several thousand
transactions per durable store commit. The server's decoding alone bounds any reader.

## Commit → visible at a steady {r['load_tps']:,.0f} updates/s

pgbench `-R {r['rate']}` (8 clients, `synchronous_commit = off`) while Flotilla streams; the probe's own
updates commit synchronously.

| measure | p50 | p99 | max |
|---|---|---|---|
| probe: UPDATE committed → value served by get-online-features ({r['probe_samples']} samples) | {ms(r['probe_p50_s'])} | {ms(r['probe_p99_s'])} | {ms(r['probe_max_s'])} |
| Flotilla's histogram (commit timestamp → durable and visible, every transaction) | {ms(r['histogram_p50_s'])} | {ms(r['histogram_p99_s'])} | |
"""
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
