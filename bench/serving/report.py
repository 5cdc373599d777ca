"""Markdown for bench/results/serving.md from the run's result dict (see bench.py)."""


def fmt(p, key, digits=0):
    return "—" if p is None or key not in p else f"{p[key]:,.{digits}f}"


def side_by_side(res, model, peer, client, protocol):
    rows = []
    for c in sorted({p["concurrency"] for p in res["points"]
                     if (p["model"], p["client"], p["protocol"]) == (model, client, protocol)}):
        def get(server):
            return next((p for p in res["points"] if (p["server"], p["model"], p["client"], p["protocol"],
                                                      p["concurrency"]) == (server, model, client, protocol, c)), None)
        f, q = get("flotilla"), get(peer)
        ratio = f"**{f['req_s'] / q['req_s']:.1f}×**" if f and q and "req_s" in f and "req_s" in q and q["req_s"] else "—"
        cells = []
        for p in (f, q):
            if p is not None and "error" in p:
                cells += ["failed", "", "", p["error"].splitlines()[-1][:60].replace("|", "/") if p["error"] else "?"]
            else:
                cells += [fmt(p, "req_s"), fmt(p, "p50_us"), fmt(p, "p99_us"), fmt(p, "errors")]
        rows.append(f"| {client} | {protocol} | {c} | " + " | ".join(cells) + f" | {ratio} |")
    return rows


def markdown(res):
    m, v = res["machine"], res.get("versions", {})
    out = [f"# Serving benchmark: Flotilla vs MLServer, Ray Serve and Triton ({m['date']}, {res['mode']} run)", "",
           f"Machine: `{m['host']}`, {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}; 1-minute load average "
           f"{m.get('loadavg_at_start')} at the start, {m.get('loadavg_at_end')} at the end (a shared machine). "
           "Servers and load generators share these cores; one run, same models, same clients. Latencies in µs.", "",
           f"Versions: Flotilla `{v.get('flotilla')}` (release build), MLServer {v.get('mlserver')} "
           f"(xgboost {v.get('xgboost')}), Ray Serve {v.get('ray')}, Triton {v.get('tritonserver')} (nvidia-pytriton {v.get('nvidia-pytriton')}), "
           f"onnxruntime {v.get('onnxruntime')}, {v.get('wrk')}, perf_analyzer from tritonclient {v.get('tritonclient')}.",
           "",
           "Configuration: every server has 2 model instances on 2 cores, no dynamic batching (except `xgb_dyn`, `xgb_q`, `mlp_big_dyn`, `mlp_big_q`). "
           f"MLServer: default settings (parallel_workers = {v.get('mlserver_parallel_workers')}), `OMP_NUM_THREADS=1`. "
           "Triton: default HTTP/gRPC threads, Python backend (`instance_group` count 2) running the ONNX file "
           "through onnxruntime with 1 intra-op and 1 inter-op thread per instance. Ray Serve (`bench/serving/ray_app.py`): "
           "2 replicas of 1 CPU behind Ray's HTTP proxy, XGBoost with 1 thread per replica, Ray Serve's defaults "
           "otherwise; it runs with the other servers stopped (Ray's daemons idle on the same cores). Flotilla: tree engine "
           "(`backend: \"fil\"`, 2 instances) and ONNX Runtime from the same wheel (2 sessions, "
           "`intra_op_thread_count` 1). Clients: wrk (REST JSON batch 1, threads = min(2, c), "
           "connections = c) and perf_analyzer (binary tensors over HTTP, and gRPC, batch 1). The compute-bound MLP "
           "(`mlp_big*`, Flotilla only) is one engine instance (`instance_group` count 1, one ONNX Runtime session, "
           "so one batch at a time) with `intra_op_thread_count` 2; on a 2-core machine those threads share the "
           "cores with the protocol side.", ""]

    head = ("| client | protocol | c | Flotilla req/s | p50 | p99 | errors | {peer} req/s | p50 | p99 | errors "
            "| Flotilla/{peer} |")
    sep = "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    out += ["## XGBoost (100 trees, 30 features, binary:logistic): Flotilla vs MLServer", "",
            head.format(peer="MLServer"), sep]
    out += side_by_side(res, "xgb", "mlserver", "wrk", "json")
    out += side_by_side(res, "xgb", "mlserver", "perf_analyzer", "grpc")
    if any(p["server"] == "ray" for p in res["points"]):
        out += ["", "## XGBoost: Flotilla vs Ray Serve", "", head.format(peer="Ray Serve"), sep]
        out += side_by_side(res, "xgb", "ray", "wrk", "json")
    out += ["", "## The limit: Flotilla vs fixed-answer servers (`flotilla-floor`), XGBoost batch 1", "",
            "`flotilla-floor` (`crates/bench`) is an axum HTTP server and a tonic gRPC server on the runtime settings "
            "`flotilla serve` uses, answering the infer call with a fixed, valid response without decoding the "
            "request: what any server on this runtime, machine and client can reach.", "",
            head.format(peer="floor"), sep]
    out += side_by_side(res, "xgb", "floor", "wrk", "json")
    out += side_by_side(res, "xgb", "floor", "perf_analyzer", "grpc")
    out += ["", "## ONNX MLP (30→64→64→1): Flotilla (ONNX Runtime) vs Triton (Python backend + onnxruntime)", "",
            head.format(peer="Triton"), sep]
    for client, protocol in (("wrk", "json"), ("perf_analyzer", "http"), ("perf_analyzer", "grpc")):
        out += side_by_side(res, "mlp", "triton", client, protocol)

    out += ["", "## Raw engine in-process (`crates/server/examples/bench_raw.rs`: `Engine::infer` in a loop)", "",
            "| model | batch | callers | calls/s | rows/s | p50 | p99 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for model, settings in res["raw"].items():
        for s in settings.values():
            out.append(f"| {model} | {s['batch']} | {s['callers']} | {s['calls_per_s']:,.0f} | {s['rows_per_s']:,.0f} "
                       f"| {s['p50_us']:.1f} | {s['p99_us']:.1f} |")

    inside = [p for p in res["points"] if "server_mean_us" in p and p["concurrency"] == 1]
    if inside:
        out += ["", "## Where the time goes at c=1 (server statistics, mean µs per request over the wrk run)", "",
                "Client p50 (wrk) against the server's own accounting (Triton statistics extension: `success` is "
                "from request arrival in the server core to response; queue and compute phases inside it). The gap "
                "between the client's time and `success` is HTTP parsing/encoding, the loopback network and the "
                "client itself.", "",
                "| server | model | client p50 | success | queue | compute input | compute infer | compute output |",
                "|---|---|---:|---:|---:|---:|---:|---:|"]
        for p in inside:
            m = p["server_mean_us"]
            cells = " | ".join("—" if m[k] is None else f"{m[k]:.1f}" for k in
                               ("success", "queue", "compute_input", "compute_infer", "compute_output"))
            out.append(f"| {p['server']} | {p['model']} | {p['p50_us']:.0f} | {cells} |")

    dyn = [p for p in res["points"] if p["model"] == "xgb_dyn"]
    if dyn:
        out += ["", "## Dynamic batching, protocol-bound (`xgb_dyn`: `max_queue_delay_microseconds: 200`, REST JSON "
                "batch 1, wrk)", "", "The tree engine takes about 4 µs per row: HTTP handling limits these rows, "
                "not the scheduler (the target is judged on the compute-bound MLP below).", "",
                "| c | req/s | p50 | p99 | errors |", "|---:|---:|---:|---:|---:|"]
        out += [f"| {p['concurrency']} | {fmt(p, 'req_s')} | {fmt(p, 'p50_us')} | {fmt(p, 'p99_us')} | "
                f"{fmt(p, 'errors')} |" for p in dyn]

    big = [p for p in res["points"] if p["model"].startswith("mlp_big")]
    if big:
        r = res["raw"].get("mlp_big", {})
        ref = " / ".join(f"batch {v['batch']}: {v['rows_per_s']:,.0f} rows/s (p50 {v['p50_us']:,.0f} µs)"
                         for v in r.values())
        out += ["", "## Compute-bound MLP (256→2048→2048→1, FP32; 1 ONNX Runtime session, 2 intra-op threads; "
                "REST JSON batch 1, wrk)", "",
                f"Raw engine, same session settings: {ref}. `mlp_big`: no dynamic batching; `mlp_big_dyn`: "
                "`dynamic_batching { max_queue_delay_microseconds: 500 }`.", "",
                "Mean batch and engine busy come from the server's statistics over the run (busy: the share of "
                "the run the one session spent computing).", "",
                "| model | c | req/s | p50 | p99 | errors | mean batch | engine busy | req/s ÷ raw batched rows/s |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        rows = r.get("batched", {}).get("rows_per_s")
        out += [f"| {p['model']} | {p['concurrency']} | {fmt(p, 'req_s')} | {fmt(p, 'p50_us')} | {fmt(p, 'p99_us')} | "
                f"{fmt(p, 'errors')} | {fmt(p, 'mean_batch', 1)} | "
                + (f"{p['engine_busy']:.0%}" if p.get("engine_busy") is not None else "—") + " | "
                + (f"{p['req_s'] / rows * 100:.1f}%" if rows and 'req_s' in p else "—") + " |" for p in big]

    for key, title in (("overload_big", "Overload, compute-bound"), ("overload", "Overload, protocol-bound")):
        o = res.get(key)
        if not o:
            continue
        model = o.get("model", "xgb_q")
        sweep = o.get("sweep_ok_per_s")
        how = (f"200 answers/s by c: {', '.join(f'{c}: {v:,.0f}' for c, v in sweep.items())}; saturation = smallest c "
               "reaching 90% of the best" if sweep else
               "Saturation concurrency: smallest c reaching 90% of the best `xgb` req/s")
        out += ["", f"## {title} (`{model}`: `max_queue_size: {o['max_queue_size']}`; `flotilla-load`, latency per status)",
                "", f"{how}: {o['saturation_concurrency']}; driven at c = {o['concurrency']}.", "",
                "| load | status | count | per s | p50 | p99 | max |", "|---|---|---:|---:|---:|---:|---:|"]
        runs = [("c=1", o["unloaded"])]
        if "polite" in o:
            runs.append((f"c={o['concurrency']}, honouring Retry-After", o["polite"]))
        runs.append((f"c={o['concurrency']}" + (", retrying at once" if "polite" in o else ""), o["loaded"]))
        for label, run in runs:
            for status, s_ in run["status"].items():
                out.append(f"| {label} | {status} | {s_['count']:,} | {s_['per_s']:,.0f} | {s_['p50_us']:.0f} | "
                           f"{s_['p99_us']:.0f} | {s_['max_us']:.0f} |")
            if run["errors"]:
                out.append(f"| {label} | transport errors | {run['errors']} | | | | |")

    mem = res.get("memory")
    if mem:
        out += ["", "## Memory", "",
                f"Flotilla with `examples/repository` ({', '.join(mem['models'])}) in explicit mode: idle RSS "
                f"**{mem['idle_rss_kib'] / 1024:.1f} MiB**; after {mem['cycles']} reload cycles (every model's files "
                f"touched, then `POST /v2/repository/models/{{m}}/load`; {mem['reload_seconds']:.0f} s, "
                f"{mem['reload_failures']} failed loads) **{mem['after_rss_kib'] / 1024:.1f} MiB** "
                f"({mem['change_pct']:+.1f}%). RSS by cycle: "
                + ", ".join(f"{c}: {r / 1024:.1f}" for c, r in mem["samples_cycle_rss_kib"]) + " MiB."]

    out += ["", "## Targets", "", "| target | measured | result |", "|---|---|---|"]
    for t in res["targets"]:
        result = "info" if t.get("info") else {True: "PASS", False: "**MISS**", None: "n/a"}[t["pass"]]
        out.append(f"| {t['target']} | {t['measured']} | {result} |")
    return "\n".join(out) + "\n"
