#!/usr/bin/env python3
"""Graph-model benchmark (bench/graph/run.sh builds the binaries and runs this): examples/graph's
fraud_sage, a 2-hop (10, 5) GraphSAGE over the payment graph, on the embedded store and on Redis.

1. In-process (`bench_graph`): the inputs of one request — fetch (the edge lists of both hops, one
   batched store read per hop, sampled) and gather (node features of every distinct node in one
   read, the tensors) — each request timed alone, for 1 and 8 target nodes.
2. Served: `flotilla serve` with the example, one target node per request over HTTP (KServe v2
   JSON, one persistent connection, requests one at a time): the client's latency, and the
   server's own split into fetch, gather and model from its histograms
   (flotilla_graph_input_duration_seconds, flotilla_inference_compute_duration_seconds; quantiles
   interpolated within buckets, as Prometheus's histogram_quantile does).

Target: fetch + gather of one target node <= 1 ms p99 on the embedded store.
Writes bench/results/graph.{md,json}. Stdlib only.
"""
import argparse
import http.client
import json
import os
import pathlib
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
GRAPH = ROOT / "examples" / "graph"
REPO = GRAPH / "features"
PLAN = GRAPH / "repository" / "fraud_sage" / "graph.toml"
REDIS = "redis://127.0.0.1:6379/11"
RESULTS = ROOT / "bench" / "results"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flush_redis():
    with socket.create_connection(("127.0.0.1", 6379), timeout=5) as s:
        s.sendall(b"*2\r\n$6\r\nSELECT\r\n$2\r\n11\r\n*1\r\n$7\r\nFLUSHDB\r\n")
        time.sleep(0.2)
        s.recv(100)


def store_location(kind, tmp):
    if kind == "redis":
        flush_redis()
        return REDIS
    return f"embedded:{tmp}/graph-{time.monotonic_ns()}.redb"


def inprocess(bench, kind, targets, requests, tmp):
    cmd = [bench, "--feature-repo", str(REPO), "--graph", str(PLAN), "--online-store", store_location(kind, tmp),
           "--ingest", "--targets", str(targets), "--requests", str(requests), "--warmup", str(requests // 10)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCHJSON "))
    return json.loads(line[len("BENCHJSON "):])


def histograms(text, name, labels):
    """{le: cumulative count} of one histogram series, and its sum and count."""
    buckets, total, count = {}, 0.0, 0.0
    for line in text.splitlines():
        if not line.startswith(name) or not all(f'{k}="{v}"' in line for k, v in labels.items()):
            continue
        value = float(line.split()[-1])
        if line.startswith(name + "_bucket"):
            le = re.search(r'le="([^"]+)"', line).group(1)
            buckets[float("inf") if le == "+Inf" else float(le)] = value
        elif line.startswith(name + "_sum"):
            total = value
        elif line.startswith(name + "_count"):
            count = value
    return buckets, total, count


def quantile(q, before, after):
    """histogram_quantile over the difference of two scrapes, in µs."""
    les = sorted(after[0])
    counts = [after[0][le] - before[0].get(le, 0.0) for le in les]
    n = counts[-1] if counts else 0
    if n <= 0:
        return None
    rank = q * n
    prev_le, prev_c = 0.0, 0.0
    for le, c in zip(les, counts):
        if c >= rank:
            if le == float("inf"):
                return prev_le * 1e6
            return (prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9)) * 1e6
        prev_le, prev_c = le, c
    return None


def served(flotilla, kind, requests, tmp):
    store = store_location(kind, tmp)
    subprocess.run([flotilla, "features", "ingest", "--feature-repo", str(REPO), "--online-store", store],
                   check=True, capture_output=True, cwd=ROOT)
    http_port, metrics_port = free_port(), free_port()
    proc = subprocess.Popen([flotilla, "serve", "--model-repository", str(GRAPH / "repository"),
                             "--feature-repo", str(REPO), "--online-store", store, "--host", "127.0.0.1",
                             "--http-port", str(http_port), "--grpc-port", "0", "--metrics-port", str(metrics_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.time() + 60
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
                c.request("GET", "/v2/models/fraud_sage/ready")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("flotilla serve did not get ready")
            time.sleep(0.2)

        def scrape():
            m = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=5)
            m.request("GET", "/metrics")
            text = m.getresponse().read().decode()
            return {
                "fetch": histograms(text, "flotilla_graph_input_duration_seconds", {"phase": "fetch"}),
                "gather": histograms(text, "flotilla_graph_input_duration_seconds", {"phase": "gather"}),
                "model": histograms(text, "flotilla_inference_compute_duration_seconds",
                                    {"model": "fraud_sage", "phase": "compute_infer"}),
            }
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        headers = {"Content-Type": "application/json"}
        lat = []
        before = None
        for i in range(requests // 10 + requests):
            if i == requests // 10:
                before = scrape()
            node = 1 + (i * 7919) % 3000
            body = json.dumps({"inputs": [{"name": "account_id", "datatype": "INT64", "shape": [1], "data": [node]}]})
            t = time.perf_counter()
            conn.request("POST", "/v2/models/fraud_sage/infer", body, headers)
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}")
            if i >= requests // 10:
                lat.append((time.perf_counter() - t) * 1e6)
        after = scrape()
    finally:
        proc.terminate()
        proc.wait(30)
    lat.sort()
    out = {"requests": len(lat), "client_p50_us": lat[len(lat) // 2], "client_p99_us": lat[int(len(lat) * 0.99)]}
    for phase in ("fetch", "gather", "model"):
        b, a = before[phase], after[phase]
        n = a[2] - b[2]
        out[phase] = {"mean_us": (a[1] - b[1]) / n * 1e6 if n else None,
                      "p50_us": quantile(0.5, b, a), "p99_us": quantile(0.99, b, a)}
    return out


def fmt(x):
    return "—" if x is None else f"{x:,.0f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flotilla", required=True)
    ap.add_argument("--bench", required=True)
    ap.add_argument("--requests", type=int, default=5000)
    a = ap.parse_args()
    load = os.getloadavg()
    res = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "load_before": load[0]}, "inprocess": [], "served": []}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("embedded", "redis"):
            for targets in (1, 8):
                r = inprocess(a.bench, kind, targets, a.requests, tmp)
                r["kind"] = kind
                res["inprocess"].append(r)
                print(f"{kind} in-process, {targets} target(s): fetch+gather p50 "
                      f"{r['fetch_gather']['p50_us']:.0f} µs, p99 {r['fetch_gather']['p99_us']:.0f} µs", flush=True)
            s = served(a.flotilla, kind, a.requests, tmp)
            s["kind"] = kind
            res["served"].append(s)
            print(f"{kind} served: client p50 {s['client_p50_us']:.0f} µs, p99 {s['client_p99_us']:.0f} µs", flush=True)
    res["machine"]["load_after"] = os.getloadavg()[0]
    emb = next(r for r in res["inprocess"] if r["kind"] == "embedded" and r["targets"] == 1)
    p99 = emb["fetch_gather"]["p99_us"]
    lines = [
        "# Graph models: a 2-hop (10, 5) GraphSAGE request",
        "",
        f"`bench/graph/run.sh` ({time.strftime('%Y-%m-%d')}; {res['machine']['cores']} cores, load "
        f"{res['machine']['load_before']:.1f} → {res['machine']['load_after']:.1f}). Model: examples/graph's "
        "`fraud_sage` (3,000 accounts, edges `paid:dst` and `paid_by:src`, newest-first sampling, 6 node "
        "features); up to 1 + 10 + 50 nodes per target. Redis: the local server, db 11.",
        "",
        "## Inputs alone, in-process (`bench_graph`, each request timed alone, µs)",
        "",
        "| store | targets | fetch p50 | fetch p99 | gather p50 | gather p99 | fetch + gather p50 | fetch + gather p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["inprocess"]:
        f, g, b = r["fetch"], r["gather"], r["fetch_gather"]
        lines.append(f"| {r['kind']} | {r['targets']} | {fmt(f['p50_us'])} | {fmt(f['p99_us'])} | {fmt(g['p50_us'])} | "
                     f"{fmt(g['p99_us'])} | {fmt(b['p50_us'])} | {fmt(b['p99_us'])} |")
    lines += [
        "",
        "## Served (`flotilla serve`, one target per request, HTTP JSON, one request at a time, µs)",
        "",
        "Client latency measured by the client; the split is the server's own histograms over the same requests.",
        "",
        "| store | client p50 | client p99 | fetch p50 / p99 | gather p50 / p99 | model p50 / p99 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in res["served"]:
        split = " | ".join(f"{fmt(s[p]['p50_us'])} / {fmt(s[p]['p99_us'])}" for p in ("fetch", "gather", "model"))
        lines.append(f"| {s['kind']} | {fmt(s['client_p50_us'])} | {fmt(s['client_p99_us'])} | {split} |")
    verdict = "PASS" if p99 <= 1000 else "**MISS**"
    lines += [
        "",
        "## Target",
        "",
        "| target | measured | result |",
        "|---|---|---|",
        f"| fetch + gather of one target node ≤ 1 ms p99, embedded store | {p99:,.0f} µs | {verdict} |",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "graph.json").write_text(json.dumps(res, indent=1) + "\n")
    (RESULTS / "graph.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
