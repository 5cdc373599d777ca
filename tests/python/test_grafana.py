"""The Grafana dashboard in deploy/grafana/: its JSON is well formed (unique ids, panels that do not
overlap, every query on the `$datasource` variable), every PromQL expression parses (`promtool check
rules`), and every metric it queries is one Flotilla really exports: scraped from a live worker and
router after traffic that makes the families appear (inference through the router, feature pushes
and enrichment, drift windows that close and alert, a webhook that fails). The few families that need
a broker, a Postgres or a fleet.toml to appear are named in EVENT_ONLY with the reason, and must at
least be registered in the Rust source under that exact name."""
import json
import re
import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
import yaml

from conftest import EXAMPLES, ROOT, Router, Server, wait_for

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "flotilla.json"
FEATURES = ROOT / "examples" / "features"
TRAIN = ROOT / "examples" / "drift" / "fraud_train.parquet"
DRIFT_FEATURES = ["amount", "hour", "merchant_category", "country", "card_age_days", "txn_count_1h",
                  "avg_amount_30d", "distance_km"]
# Grafana's own variables, which a dashboard uses without defining them.
BUILTIN_VARS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms"}
SUBSTITUTE = {"$__rate_interval": "1m", "$__interval": "30s", "$__range": "1h", "$model": "simple"}

# Families the dashboard shows that appear only after events this test cannot cheaply cause.
EVENT_ONLY = {
    "flotilla_feature_stream_messages_total": "a stream source (NATS, Kafka, RabbitMQ, Redis) consuming",
    "flotilla_feature_stream_errors_total": "a stream source consuming",
    "flotilla_feature_stream_lag_seconds": "a stream source consuming",
    "flotilla_feature_stream_lag_messages": "a stream source consuming",
    "flotilla_feature_cdc_lag_seconds": "a Postgres CDC source",
    "flotilla_feature_cdc_visibility_seconds": "a Postgres CDC source",
    "flotilla_feature_cdc_lag_bytes": "a Postgres CDC source",
    "flotilla_feature_cdc_slot_retained_bytes": "a Postgres CDC source",
    "flotilla_feature_cdc_slot_lag_warning": "a Postgres CDC source",
    "flotilla_feature_cdc_changes_applied_total": "a Postgres CDC source",
    "flotilla_feature_cdc_snapshot_rows_total": "a Postgres CDC source",
    "flotilla_feature_cdc_bad_values_total": "a Postgres CDC source",
    "flotilla_fleet_retries_total": "a worker failing mid-request",
    "flotilla_fleet_retries_refused_total": "a worker failing a non-idempotent request",
    "flotilla_fleet_hedges_total": "a hedged model (route --hedge) slower than its hedge delay",
    "flotilla_fleet_hedge_wins_total": "a hedged model slower than its hedge delay",
    "flotilla_fleet_shed_total": "every worker at its limit",
    "flotilla_fleet_ejections_total": "a worker ejected (errors, missed heartbeats)",
    "flotilla_fleet_canary_state": "a canary in fleet.toml (route --desired-state)",
    "flotilla_fleet_canary_percent": "a canary in fleet.toml",
    "flotilla_fleet_arm_requests_total": "a traffic policy in fleet.toml",
    "flotilla_fleet_arm_request_duration_seconds": "a traffic policy in fleet.toml",
    "flotilla_fleet_traffic_transitions_total": "a canary or rollout in fleet.toml changing state",
    "flotilla_fleet_shadow_requests_total": "a shadow in fleet.toml",
    "flotilla_fleet_desired_state_reloads_total": "route --desired-state",
    "flotilla_fleet_desired_state_valid": "route --desired-state",
    "flotilla_fleet_version_syncs_total": "route --desired-state syncing a version",
    "flotilla_fleet_placement_changes_total": "route --desired-state placing a model",
    "flotilla_fleet_sync_bytes_total": "route --desired-state syncing a version",
}
HIST_SUFFIXES = ("_bucket", "_sum", "_count")


@pytest.fixture(scope="module")
def dashboard():
    return json.loads(DASHBOARD.read_text())


def all_panels(dash):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def queries(dash):
    """(panel id, refId, expr) of every query."""
    return [(p["id"], t["refId"], t["expr"]) for p in all_panels(dash) for t in p.get("targets", [])]


def metric_names(dash):
    names = set()
    for _, _, expr in queries(dash):
        names |= set(re.findall(r"\bflotilla_[a-z0-9_]+", expr))
    return names


def family(name):
    for s in HIST_SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


# --- structure -------------------------------------------------------------------------------

def test_dashboard_structure(dashboard):
    d = dashboard
    assert d["schemaVersion"] == 39 and d["uid"] and d["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    model = variables["model"]
    assert model["type"] == "query" and model["datasource"]["uid"] == "${datasource}"
    assert re.fullmatch(r"label_values\(flotilla_[a-z_]+, model\)", model["definition"]), model["definition"]

    panels = list(all_panels(d))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    rows = [p for p in panels if p["type"] == "row"]
    assert [r["title"] for r in rows] == ["Serving", "Feature store", "Drift", "Fleet"]

    cells = {}
    for p in panels:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) and g[k] >= 0 for k in "hwxy") and g["h"] > 0 and g["w"] > 0, p["title"]
        assert g["x"] + g["w"] <= 24, f"panel {p['id']} {p['title']!r} is wider than the grid"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['id']} {p['title']!r} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p.get("description", "").strip(), f"panel {p['title']!r} has no description"
        assert p["fieldConfig"]["defaults"].get("unit"), f"panel {p['title']!r} has no unit"
        assert p["targets"], f"panel {p['title']!r} has no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"]["uid"] == "${datasource}", (p["title"], t)

    used = set()
    for p in panels:
        for text in [json.dumps(p.get("datasource", {}))] + [t["expr"] for t in p.get("targets", [])]:
            used |= set(re.findall(r"\$\{?(\w+)", text))
    used |= set(re.findall(r"\$\{?(\w+)", json.dumps(d["templating"])))
    unknown = used - set(variables) - BUILTIN_VARS
    assert not unknown, f"variables used but not defined: {unknown}"


def test_provisioning_files():
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards.yaml").read_text())
    assert providers["apiVersion"] == 1
    p = providers["providers"][0]
    assert p["type"] == "file" and p["options"]["path"]
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources.yaml").read_text())
    ds = sources["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"


# --- PromQL ----------------------------------------------------------------------------------

def concrete(expr):
    for var, value in SUBSTITUTE.items():
        expr = expr.replace("${" + var[1:] + "}", value).replace(var, value)
    assert "$" not in expr, f"a variable this test does not substitute: {expr}"
    return expr


def promtool_check(tmp_path, exprs):
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/test.sh installs Debian's prometheus package"
    rules = [{"record": f"grafana:panel{pid}:{ref.lower()}", "expr": concrete(e)} for pid, ref, e in exprs]
    f = tmp_path / "rules.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "flotilla-dashboard", "rules": rules}]}))
    return subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True, timeout=30)


def test_every_query_parses(dashboard, tmp_path):
    exprs = queries(dashboard)
    assert len(exprs) > 40
    p = promtool_check(tmp_path, exprs)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in p.stdout, p.stdout
    # ... and the check can fail: an unbalanced parenthesis is refused.
    bad = promtool_check(tmp_path, [(1, "A", "sum(rate(flotilla_inference_requests_total[$__rate_interval])")])
    assert bad.returncode != 0


# --- every metric is exported ----------------------------------------------------------------

def scrape(process):
    text = requests.get(f"http://127.0.0.1:{process.metrics_port}/metrics", timeout=10).text
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)", text, re.M))
    samples = {}
    for name, labels in re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? ", text, re.M):
        samples.setdefault(name, set()).update(re.findall(r'(\w+)="', labels or ""))
    return types, samples


def exported(types, samples, name):
    """A name a query may use: a sample's name, or a counter/gauge family (not a bare histogram)."""
    return name in samples or (name in types and types[name] != "histogram")


def infer_rows(server, rows):
    body = {"inputs": [{"name": "input__0", "shape": list(rows.shape), "datatype": "FP32",
                        "data": rows.flatten().tolist()}]}
    r = requests.post(f"http://127.0.0.1:{server.http_port}/v2/models/fraud_xgb/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A router with one worker (examples' models, the example feature repository) and a
    standalone server, after traffic; their scrapes as [(types, sample names)]."""
    repo = tmp_path_factory.mktemp("grafana") / "repository"
    shutil.copytree(EXAMPLES, repo)
    # simple with an adaptive concurrency limit (flotilla_inference_concurrency_limit)
    with open(repo / "simple" / "config.pbtxt", "a") as f:
        f.write('parameters { key: "adaptive_concurrency" value { string_value: "aimd" } }\n')
    # fraud_xgb: small windows, alerts after one window, a webhook nobody listens on
    (repo / "fraud_xgb" / "drift.toml").write_text(
        '[window]\nrows = 50\nseconds = 0\n[alerts]\nconsecutive = 1\nwebhook = "http://127.0.0.1:1/drift"\n')
    router = Router("--worker-ttl-ms", "2000")
    worker = Server(repo, "--join", router.url, "--worker-id", "w0", "--feature-repo", str(FEATURES),
                    "--heartbeat-ms", "200")
    # a fleet worker leaves drift webhooks to the router: a standalone server calls them itself
    solo = Server(repo, "--feature-repo", "none")
    try:
        router.wait_workers(["w0"])
        simple = {"inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}]}
        for _ in range(5):
            requests.post(router.url + "/v2/models/simple/infer", json=simple, timeout=30).raise_for_status()
        # the feature store: a push (rows written), then inference with only the entity key (reads, enrichment)
        push = {"push_source_name": "card_profile",
                "df": {"card_id": [101], "event_timestamp": ["2026-01-01T00:00:00Z"], "card_age_days": [12.0],
                       "avg_amount_30d": [40.0], "home_country": [3]}}
        r = requests.post(f"http://127.0.0.1:{worker.http_port}/push", json=push, timeout=30)
        assert r.status_code == 200, r.text
        keys = {"inputs": [{"name": "card_id", "shape": [2], "datatype": "INT64", "data": [101, 202]}]}
        r = requests.post(f"http://127.0.0.1:{worker.http_port}/v2/models/fraud_xgb/infer", json=keys, timeout=30)
        assert r.status_code == 200, r.text
        # drift: normal windows, then shifted ones (amounts x5) that raise an alert and call the dead webhook
        table = pq.read_table(TRAIN, columns=DRIFT_FEATURES)
        rows = np.nan_to_num(np.column_stack(
            [table.column(f).to_numpy(zero_copy_only=False) for f in DRIFT_FEATURES]).astype(np.float32))
        shifted = rows[100:200].copy()
        shifted[:, 0] *= 5
        shifted[:, 7] += 100
        for s in (worker, solo):
            infer_rows(s, rows[:100])
            infer_rows(s, shifted)

        # wait for the families to appear (drift windows and the router's pull are asynchronous);
        # after 30 s, hand over what is there and let the test name what is missing
        last = []

        def ready():
            last[:] = [scrape(worker), scrape(solo), scrape(router)]
            needed = metric_names_live_needed()
            return all(any(exported(*m, n) for m in last) for n in needed)

        try:
            wait_for(ready, timeout=30)
        except AssertionError:
            pass
        yield last
    finally:
        for p in (solo, worker, router):
            p.stop()


def metric_names_live_needed():
    return {n for n in metric_names(json.loads(DASHBOARD.read_text())) if family(n) not in EVENT_ONLY}


def test_every_metric_is_exported(dashboard, live):
    names = metric_names(dashboard)
    missing = sorted(n for n in names if family(n) not in EVENT_ONLY and not any(exported(*m, n) for m in live))
    assert not missing, f"queried but not in the workers' or the router's /metrics: {missing}"
    # the labels a selector names are labels of that metric (`le` aside, for the _bucket series)
    for _, _, expr in queries(dashboard):
        for name, selector in re.findall(r"\b(flotilla_[a-z0-9_]+)\{([^}]*)\}", expr):
            present = [m[1][name] for m in live if name in m[1]]
            if not present:
                continue  # EVENT_ONLY
            seen = set().union(*present)
            wanted = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
            assert wanted <= seen, f"{name}{{{selector}}}: no label {wanted - seen} in {sorted(seen)}"
    # EVENT_ONLY is no escape hatch: each entry is on the dashboard and registered in the source.
    source = "\n".join(p.read_text() for p in (ROOT / "crates").glob("*/src/**/*.rs"))
    used = {family(n) for n in names}
    for name, why in EVENT_ONLY.items():
        assert name in used, f"EVENT_ONLY names {name}, which the dashboard does not use"
        assert f'"{name}"' in source, f"{name} ({why}) is not registered anywhere in crates/*/src"
    for n in names:
        if family(n) in EVENT_ONLY and n != family(n):
            assert re.search(rf'"{family(n)}"', source) and n.endswith(HIST_SUFFIXES)
