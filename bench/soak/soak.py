"""Soak under overload and faults, against the real binary and real services of its own.

First the server's capacity is measured: flotilla-load (crates/bench), closed loop over the valid
kinds, counts what is answered 200 a second. Then for DURATION seconds (default 600) flotilla-load
offers 3x that rate, open loop (it does not slow down when the server does), over HTTP and gRPC:
valid requests to `soak_model` (queue bounded at 8: 429 with Retry-After beyond it), malformed JSON,
bodies over --max-request-bytes, wrong shapes over HTTP and gRPC, unknown models, requests enriched
from the online store. Meanwhile:
- Redis (the online store, append-only file) is restarted twice;
- the NATS server (JetStream, feeding a feature view) is restarted once, while a producer keeps
  publishing rows;
- a private PostgreSQL (its own initdb, wal_level = logical) whose table feeds a view by change
  data capture is restarted once (fast shutdown), while a writer keeps updating rows;
- `soak_model` is reloaded every 10 s through the repository API.

The server must never crash; valid requests either succeed or get a clear 429/503 (with
Retry-After on 429); malformed ones get a 4xx; RSS is sampled every second; and afterwards the
online store equals what the producer published (each key's newest row: nothing lost, nothing
applied twice) and what the PostgreSQL table holds. Writes bench/results/soak.md. PostgreSQL's part
needs Debian's PostgreSQL binaries and root (initdb runs as the postgres user); without them it is
left out and the report says so.

    .venv/bin/python bench/soak/soak.py [--duration 600] [--bin target/release/flotilla] [--overload 3]
"""
import argparse
import asyncio
import collections
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


class Service:
    """A private redis-server or nats-server that can be restarted."""

    def __init__(self, name, cmd, port):
        self.name, self.cmd, self.port, self.proc = name, cmd, port, None
        self.restarts = []

    def start(self):
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def restart(self, down=2.0):
        t0 = time.time()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        time.sleep(down)
        self.start()
        self.restarts.append((t0, time.time()))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


PG_BIN = max(pathlib.Path("/usr/lib/postgresql").glob("*/bin"), default=None) \
    if pathlib.Path("/usr/lib/postgresql").exists() else None
CDC_TABLE = "soak_limits"
CDC_KEYS = 1000


class Postgres:
    """A private PostgreSQL (initdb as the postgres user), restarted with a fast shutdown."""

    def __init__(self, port):
        self.port, self.restarts = port, []
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="flotilla-soak-pg-"))
        shutil.chown(self.dir, "postgres")
        self.data = self.dir / "data"
        self.run(["initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres"])
        self.dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def run(self, args):
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / args[0]), *args[1:]], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

    def start(self):
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
                "-c wal_level=logical -c max_wal_senders=4 -c max_replication_slots=4")
        self.run(["pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "pg.log"), "-w", "start"])
        wait_port(self.port)

    def restart(self, down=2.0):
        t0 = time.time()
        self.run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"])
        time.sleep(down)
        self.start()
        self.restarts.append((t0, time.time()))

    def stop(self):
        try:
            self.run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def cdc_writer(dsn, stop, errors, committed):
    """Updates random rows of the CDC table in small transactions until `stop`; reconnects
    through the restart. Counts the transactions that committed."""
    import psycopg
    rng = random.Random(11)
    conn = None
    while not stop.is_set():
        try:
            if conn is None:
                conn = psycopg.connect(dsn, autocommit=False, connect_timeout=2)
            with conn.transaction():
                for _ in range(rng.randrange(1, 6)):
                    k = rng.randrange(1, CDC_KEYS + 1)
                    conn.execute(f"UPDATE {CDC_TABLE} SET limit_amount = %s, status = %s WHERE card_id = %s",
                                 (round(rng.uniform(0, 10_000), 2), rng.choice(["ok", "hold", "closed"]), k))
            committed.append(1)
            time.sleep(0.005)
        except Exception as e:  # the server restarting: wait and reconnect
            errors.append(type(e).__name__)
            conn = None
            time.sleep(0.5)
    if conn is not None:
        conn.close()


def cdc_mismatches(base, dsn):
    import psycopg
    with psycopg.connect(dsn) as c:
        truth = {k: (a, s) for k, a, s in c.execute(f"SELECT card_id, limit_amount, status FROM {CDC_TABLE}")}
    keys = sorted(truth)
    bad = []
    for i in range(0, len(keys), 500):
        chunk = keys[i:i + 500]
        body = {"features": ["card_limits_cdc:limit_amount", "card_limits_cdc:status"], "entities": {"card_id": chunk}}
        res = requests.post(base + "/get-online-features", json=body, timeout=30).json()["results"]
        for j, k in enumerate(chunk):
            if (res[1]["values"][j], res[2]["values"][j]) != truth[k]:
                bad.append((k, truth[k], res[1]["values"][j], res[2]["values"][j]))
    return bad


def write_repos(work, nats_port, redis_port, pg=None):
    models = work / "models"
    shutil.copytree(ROOT / "examples/repository/fraud_xgb", models / "fraud_xgb")
    shutil.copytree(ROOT / "examples/repository/simple", models / "soak_model")
    cfg = (models / "soak_model/config.pbtxt").read_text().replace('name: "simple"', 'name: "soak_model"')
    cfg += "\ndynamic_batching {\n  max_queue_delay_microseconds: 200\n  default_queue_policy { max_queue_size: 8 }\n}\n"
    (models / "soak_model/config.pbtxt").write_text(cfg)
    # no drift profile: the soak is about serving and the feature store
    (models / "fraud_xgb/drift_profile.json").unlink(missing_ok=True)
    features = work / "features"
    shutil.copytree(ROOT / "examples/features", features)
    txn = features / "card_txn_1h.toml"
    txn.write_text(txn.read_text().replace(
        'stream = { type = "nats", subject = "features.card_txn_1h" }',
        f'stream = {{ type = "nats", url = "nats://127.0.0.1:{nats_port}", subject = "soak.card_txn_1h", '
        f'stream = "SOAK_TXN", durable = "soak", ack_wait = "5s" }}'))
    if pg is not None:
        (features / "card_limits_cdc.toml").write_text(f"""
[[feature_view]]
name = "card_limits_cdc"
entities = ["card"]
ttl = "0"
stream = {{ type = "postgres", url = "{pg.dsn}?sslmode=disable", table = "{CDC_TABLE}", slot = "soak", publication = "soak" }}
features = [{{ name = "limit_amount", dtype = "float64" }}, {{ name = "status", dtype = "string" }}]
""")
    return models, features


def producer(nats_port, stop, published, errors):
    """Publishes card_txn_1h rows for 2,000 cards with increasing event times; keeps the newest
    per card (what the store must hold at the end). Retries through the NATS restart."""
    import nats
    from nats.js.errors import NoStreamResponseError

    async def run():
        nc = js = None
        seq = 0
        while not stop.is_set():
            try:
                if nc is None or not nc.is_connected:
                    async def quiet(_):
                        pass
                    nc = await nats.connect(f"nats://127.0.0.1:{nats_port}", max_reconnect_attempts=0,
                                            connect_timeout=1, error_cb=quiet)
                    js = nc.jetstream()
                card = random.randrange(1, 2001)
                seq += 1
                ts = 1_800_000_000 + seq
                row = {"card_id": card, "event_timestamp": ts, "last_amount": float(seq % 997),
                       "txn_count_1h": seq}
                await js.publish("soak.card_txn_1h", json.dumps(row).encode(), timeout=2)
                published[card] = (ts, float(seq % 997), seq)
                if seq % 200 == 0:
                    await asyncio.sleep(0.05)
            except (NoStreamResponseError, Exception) as e:  # the server is down: wait and reconnect
                errors.append(type(e).__name__)
                nc = None
                await asyncio.sleep(0.5)
        if nc is not None:
            await nc.drain()

    asyncio.run(run())


def write_mix(path, valid_only=False):
    """The request kinds flotilla-load draws from (crates/bench/src/mix.rs), with their weights."""
    good = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
                       {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}]}
    wrong = {"inputs": [{"name": "INPUT0", "shape": [1, 15], "datatype": "INT32", "data": list(range(15))},
                        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}]}
    enriched = {"inputs": [{"name": "card_id", "shape": [2], "datatype": "INT64", "data": [1, 2]}]}
    grpc_good = {"model_name": "soak_model", "inputs": [dict(i) for i in good["inputs"]]}
    grpc_bad = {"model_name": "soak_model", "inputs": [dict(i) for i in wrong["inputs"]]}
    infer = "/v2/models/soak_model/infer"
    kinds = [
        {"name": "valid_http", "weight": 55, "http": {"path": infer, "json": good}},
        {"name": "valid_grpc", "weight": 20, "grpc": grpc_good},
        {"name": "enriched_http", "weight": 8, "http": {"path": "/v2/models/fraud_xgb/infer", "json": enriched}},
    ]
    if not valid_only:
        big = '{"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [' + "1," * 50_000 + '1]}]}'
        kinds += [
            {"name": "malformed", "weight": 6, "http": {"path": infer, "text": '{"inputs": [{"name": ',
                                                          "content_type": "application/json"}},
            {"name": "oversized", "weight": 1, "http": {"path": infer, "text": big, "content_type": "application/json"}},
            {"name": "wrong_shape", "weight": 4, "http": {"path": infer, "json": wrong}},
            {"name": "wrong_shape_grpc", "weight": 3, "grpc": grpc_bad},
            {"name": "unknown_model", "weight": 3, "http": {"path": "/v2/models/nope/infer", "json": good}},
        ]
    path.write_text(json.dumps({"kinds": kinds}))
    return path


def load(args, mix, http, grpc, seconds, out, rate=None, connections=64):
    """Runs flotilla-load; returns its JSON report."""
    cmd = [args.load_bin, "--mix", str(mix), "--http", http, "--grpc", grpc, "--duration", str(seconds),
           "--connections", str(connections), "--out", str(out)]
    if rate:
        cmd += ["--rate", str(rate)]
    subprocess.run(cmd, check=True, timeout=seconds + 300)
    return json.loads(out.read_text())


def rss_kb(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=int, default=600)
    p.add_argument("--bin", default=str(ROOT / "target/release/flotilla"))
    p.add_argument("--load-bin", default=None, help="flotilla-load (default: beside --bin)")
    p.add_argument("--overload", type=float, default=3.0, help="offered rate as a multiple of the measured capacity")
    p.add_argument("--capacity-seconds", type=int, default=20)
    p.add_argument("--connections", type=int, default=256, help="flotilla-load's client tasks in the soak")
    args = p.parse_args()
    args.bin = str(pathlib.Path(args.bin).resolve())
    args.load_bin = str(pathlib.Path(args.load_bin or pathlib.Path(args.bin).with_name("flotilla-load")).resolve())
    work = pathlib.Path(tempfile.mkdtemp(prefix="flotilla-soak-"))
    redis_port, nats_port = free_port(), free_port()
    redis = Service("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(work),
                              "--appendonly", "yes", "--appendfsync", "always", "--save", ""], redis_port)
    (work / "js").mkdir()
    natsd = Service("nats", ["nats-server", "-a", "127.0.0.1", "-p", str(nats_port), "-js", "-sd", str(work / "js")],
                    nats_port)
    redis.start()
    natsd.start()
    pg = None
    if PG_BIN is not None and shutil.which("runuser") and os.geteuid() == 0:
        import psycopg
        pg = Postgres(free_port())
        pg.start()
        with psycopg.connect(pg.dsn, autocommit=True) as c:
            c.execute(f"CREATE TABLE {CDC_TABLE} (card_id bigint PRIMARY KEY, limit_amount float8, status text)")
            c.execute(f"INSERT INTO {CDC_TABLE} SELECT g, g, 'new' FROM generate_series(1, {CDC_KEYS}) g")
    models, features = write_repos(work, nats_port, redis_port, pg)
    http_port, grpc_port = free_port(), free_port()
    log = open(work / "server.log", "w")
    server = subprocess.Popen(
        [args.bin, "serve", "--model-repository", str(models), "--feature-repo", str(features),
         "--online-store", f"redis://127.0.0.1:{redis_port}/0", "--model-control-mode", "explicit",
         "--load-model", "*", "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", "0",
         "--max-request-bytes", str(64 << 10), "--log-format", "json", "--drift-monitoring", "false"],
        stdout=subprocess.DEVNULL, stderr=log, cwd=work)
    base = f"http://127.0.0.1:{http_port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(base + "/v2/health/ready", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.2)
    stop = threading.Event()
    published, prod_errors = {}, []
    prod = threading.Thread(target=producer, args=(nats_port, stop, published, prod_errors), daemon=True)
    prod.start()
    pg_errors, pg_committed = [], []
    if pg is not None:
        writer = threading.Thread(target=cdc_writer, args=(pg.dsn, stop, pg_errors, pg_committed), daemon=True)
        writer.start()
    rss = []
    reloads = collections.Counter()
    faults = []
    http, grpc = f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
    # capacity: what the server completes a second of the valid kinds, closed loop, with the
    # producer and the CDC writer running as they do in the soak
    capacity_run = load(args, write_mix(work / "valid.json", valid_only=True), http, grpc,
                        args.capacity_seconds, work / "capacity.json", connections=32)
    capacity = capacity_run["ok"] / capacity_run["duration_s"]
    offered = round(args.overload * capacity)
    soak_out = work / "soak.json"
    loader = threading.Thread(target=lambda: soak_result.append(
        load(args, write_mix(work / "mix.json"), http, grpc, args.duration, soak_out, rate=offered,
             connections=args.connections)))
    soak_result = []
    t0 = time.time()
    loader.start()
    schedule = {0.25: ("redis", redis), 0.45: ("nats", natsd), 0.7: ("redis", redis)}
    if pg is not None:
        schedule[0.55] = ("postgres", pg)
    done = set()
    last_reload = t0
    while time.time() - t0 < args.duration:
        time.sleep(1)
        elapsed = time.time() - t0
        rss.append((round(elapsed), rss_kb(server.pid)))
        if server.poll() is not None:
            break
        if time.time() - last_reload >= 10:
            last_reload = time.time()
            try:
                r = requests.post(base + "/v2/repository/models/soak_model/load", timeout=60)
                reloads[r.status_code] += 1
            except requests.RequestException as e:
                reloads[type(e).__name__] += 1
        for at, (name, svc) in schedule.items():
            if at not in done and elapsed >= at * args.duration:
                done.add(at)
                svc.restart()
                faults.append(f"{name} restarted at {elapsed:.0f} s (down {svc.restarts[-1][1] - svc.restarts[-1][0]:.1f} s)")
    loader.join(args.duration + 300)
    result = soak_result[0] if soak_result else {"kinds": {}, "timeline": []}
    counts = collections.Counter({f"{kind} {outcome}": v["count"]
                                  for kind, outcomes in result["kinds"].items() for outcome, v in outcomes.items()})
    stop.set()
    prod.join(30)
    alive = server.poll() is None
    # the store equals the source: every card's newest published row, read back through Feast's API
    time.sleep(2)

    def mismatches():
        cards = sorted(published)
        bad = []
        for i in range(0, len(cards), 500):
            chunk = cards[i:i + 500]
            body = {"features": ["card_txn_1h:last_amount", "card_txn_1h:txn_count_1h"], "entities": {"card_id": chunk}}
            res = requests.post(base + "/get-online-features", json=body, timeout=30).json()["results"]
            for j, card in enumerate(chunk):
                want = published[card]
                if res[1]["values"][j] != want[1] or res[2]["values"][j] != want[2]:
                    bad.append((card, want, res[1]["values"][j], res[2]["values"][j]))
        return bad
    cdc_bad = None
    for _ in range(60 if pg is not None else 0):  # CDC catches up
        try:
            cdc_bad = cdc_mismatches(base, pg.dsn)
        except Exception as e:
            cdc_bad = [f"unreadable: {e}"]
        if not cdc_bad:
            break
        time.sleep(1)
    bad = None
    for _ in range(30):  # the consumer catches up after the last restart
        try:
            bad = mismatches()
        except requests.RequestException:
            bad = ["unreadable"]
        if not bad:
            break
        time.sleep(1)
    server.send_signal(signal.SIGTERM)
    code = server.wait(60)
    redis.stop()
    natsd.stop()
    if pg is not None:
        pg.stop()
    log.close()
    text = (work / "server.log").read_text()
    panics = text.count("panicked")
    valid = {k: v for k, v in counts.items() if k.startswith(("valid", "enriched"))}
    bad_valid = {k: v for k, v in valid.items()
                 if not k.endswith((" 200", " 429", " 503", "grpc Ok", "grpc ResourceExhausted", "grpc Unavailable"))}
    # a bad request gets a 4xx (or the gRPC codes for one); a body over the limit is answered 413
    # before it is read whole and the connection closed, which a client may see as a reset first
    fine_invalid = ("grpc InvalidArgument", "grpc NotFound", "grpc ResourceExhausted", "grpc OutOfRange")
    bad_invalid = {k: v for k, v in counts.items() if k.startswith(("malformed", "oversized", "wrong_shape", "unknown_model"))
                   and not (k.split(" ", 1)[1].startswith("4") or k.endswith(fine_invalid)
                            or (k.startswith("oversized") and k.endswith("connection closed")))}
    shed_429 = sum(v for k, v in counts.items() if k.endswith(" 429"))
    timeline = result["timeline"]
    step = max(1, len(timeline) // 20)
    ok_curve = " ".join(f"{i}s:{sum(r[0] for r in timeline[i:i + step]) // step}"
                        for i in range(0, len(timeline), step))
    rss_values = [v for _, v in rss if v]
    settled = rss_values[len(rss_values) // 10:] or rss_values
    out = ROOT / "bench/results/soak.md"
    curve = " ".join(f"{t}s:{v // 1024}" for t, v in rss[:: max(1, len(rss) // 20)] if v)
    lines = [
        "# Soak under overload and faults",
        "",
        f"`bench/soak/run.sh {args.duration}`, {time.strftime('%Y-%m-%d', time.gmtime())}, {os.cpu_count()} cores, "
        f"binary `{pathlib.Path(args.bin).name}` ({'release' if 'release' in args.bin else 'debug'} build), "
        f"flotilla-load (open loop, {args.connections} connections, not backing off on Retry-After) offering "
        f"{args.overload:g}× the measured capacity, soak_model's queue bounded at 8.",
        "",
        "| load | req/s |",
        "|---|---:|",
        f"| capacity: valid kinds answered 200 per second, closed loop, 32 connections, {args.capacity_seconds} s "
        f"| {capacity:,.0f} |",
        f"| offered in the soak ({args.overload:g}× capacity), the whole mix | {offered:,} |",
        f"| sent (offered minus `not_sent`: every client task busy) | "
        f"{(result.get('scheduled', 0) - result.get('not_sent', 0)) / max(1, args.duration):,.0f} |",
        f"| answered 200 / shed 429-503 / other, per second | {result.get('ok', 0) / max(1, args.duration):,.0f} / "
        f"{result.get('shed', 0) / max(1, args.duration):,.0f} / {result.get('other', 0) / max(1, args.duration):,.0f} |",
        "",
        "| check | result |",
        "|---|---|",
        f"| server alive to the end, exit code on SIGTERM | {alive}, {code} |",
        f"| panics in the log | {panics} |",
        f"| faults | {'; '.join(faults) or 'none'} |",
        f"| soak_model reloads (status: count) | {dict(reloads)} |",
        f"| valid requests answered other than 200/429/503 | {bad_valid or 'none'} |",
        f"| 429s with Retry-After | {result.get('shed_with_retry_after', 0)} of {shed_429} |",
        f"| bad requests answered other than 4xx | {bad_invalid or 'none'} |",
        f"| rows published to NATS (cards) / producer retries during the NATS restart | {len(published)} cards / {len(prod_errors)} |",
        f"| online store vs source after the run | {'equal' if not bad else f'{len(bad)} cards differ, e.g. {bad[:3]}'} |",
        "| PostgreSQL CDC: transactions committed / writer retries during the restart | "
        + (f"{len(pg_committed)} / {len(pg_errors)} |" if pg is not None else "not run (needs PostgreSQL binaries and root) |"),
        f"| PostgreSQL CDC: online store vs SELECT of the table ({CDC_KEYS} rows) | "
        + (("equal" if not cdc_bad else f"{len(cdc_bad)} rows differ, e.g. {cdc_bad[:3]}") if pg is not None else "not run")
        + " |",
        f"| RSS after warm-up, min / max (MiB) | {min(settled) // 1024} / {max(settled) // 1024} |",
        "",
        "Answers by kind and status:",
        "",
        "| kind and status | count |",
        "|---|---:|",
    ]
    lines = lines[:-2] + ["| kind | outcome | count | p50 ms | p99 ms | p99.9 ms |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {kind} | {outcome} | {v['count']} | {v['p50_us'] / 1000:.2f} | {v['p99_us'] / 1000:.2f} | "
              f"{v['p999_us'] / 1000:.2f} |"
              for kind, outcomes in sorted(result["kinds"].items()) for outcome, v in sorted(outcomes.items())]
    lines += ["", f"RSS curve (s: MiB): {curve}", "", f"Answered 200 per second (s: req/s): {ok_curve}", ""]
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    ok = (alive and code == 0 and panics == 0 and bool(soak_result) and not bad_valid and not bad_invalid
          and not bad and not cdc_bad and result.get("shed_with_retry_after", 0) == shed_429)
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
