"""The web dashboard (/dashboard on the metrics port), in a real headless browser: Debian's
/usr/bin/chromium driven by Playwright. Each page loads without console errors, its plots
(uPlot instances the page keeps on window.__plots) hold the points this test generated
(traffic, a drifted window, fleet load), its fetches carry the ?token= bearer token, and a
screenshot of each page is written to tests/output/dashboard/ for a person to look at."""
import json
import pathlib
import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
import tritonclient.http as httpclient

from conftest import BIN, EXAMPLES, ROOT, Router, Server, wait_for
from test_features import txn_repo

CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "tests" / "output" / "dashboard"
TRAIN = ROOT / "examples" / "drift" / "fraud_train.parquet"
FEATURES = ["amount", "hour", "merchant_category", "country", "card_age_days", "txn_count_1h",
            "avg_amount_30d", "distance_km"]

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not pathlib.Path(CHROMIUM).exists(), reason="needs Debian's chromium")


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


class Page:
    """A dashboard page in a fresh browser context, recording console errors and the
    Authorization header of the page's API calls."""

    def __init__(self, browser, url):
        self.context = browser.new_context(viewport={"width": 1366, "height": 900})
        self.page = self.context.new_page()
        self.errors, self.auth = [], []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: "/dashboard/api/" in r.url and self.auth.append(r.headers.get("authorization")))
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready=true]", timeout=30000)

    def plot(self, pid, timeout=30):
        """The plot's series labels and data, once it exists."""
        js = """id => { const u = window.__plots[id]; return u ? {labels: u.series.map(s => s.label), data: u.data, x_labels: u.xLabels} : null; }"""
        return wait_for(lambda: self.page.evaluate(js, pid), timeout=timeout, what=f"plot {pid}")

    def series_max(self, pid, label, timeout=30):
        """Waits until the plot has a positive value in the series `label`; returns the largest."""
        def get():
            p = self.plot(pid, timeout)
            if label not in p["labels"]:
                return None
            ys = [y for y in p["data"][p["labels"].index(label)] if y is not None]
            return max(ys) if ys and max(ys) > 0 else None
        return wait_for(get, timeout=timeout, what=f"{label} in {pid}")

    def finish(self, name):
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
        assert self.errors == [], self.errors
        assert self.auth and all(a == "Bearer t0k" for a in self.auth), self.auth
        self.context.close()


def infer(port, rows):
    """Binary tensor data: the training set has NaNs (missing values), which JSON cannot carry."""
    t = httpclient.InferInput("input__0", list(rows.shape), "FP32")
    t.set_data_from_numpy(rows, binary_data=True)
    httpclient.InferenceServerClient(f"127.0.0.1:{port}").infer("fraud_xgb", [t])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server whose fraud_xgb has a drift profile (windows of 200 rows), after normal then
    shifted traffic and a few requests for a model that does not exist (404s)."""
    repo = tmp_path_factory.mktemp("dash-repo")
    shutil.copytree(EXAMPLES / "fraud_xgb", repo / "fraud_xgb")
    p = subprocess.run([BIN, "profile", "--model-repository", str(repo), "--model", "fraud_xgb", "--data",
                        str(TRAIN), "--categorical", "merchant_category,country"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    (repo / "fraud_xgb" / "drift.toml").write_text("[window]\nrows = 200\nseconds = 0\n")
    s = Server(repo, "--feature-repo", "none")
    table = pq.read_table(TRAIN, columns=FEATURES)
    normal = np.column_stack([table.column(f).to_numpy(zero_copy_only=False) for f in FEATURES]).astype(np.float32)
    rng = np.random.default_rng(3)
    for _ in range(8):
        infer(s.http_port, normal[rng.choice(len(normal), 50)])
    shifted = normal[rng.choice(len(normal), 400)].copy()
    shifted[:, 0] *= 5
    for start in range(0, 400, 50):
        infer(s.http_port, shifted[start:start + 50])
    for _ in range(3):
        requests.post(f"http://127.0.0.1:{s.http_port}/v2/models/nope/infer", json={"inputs": []}, timeout=10)
    yield s
    assert s.alive(), s.log()
    s.stop()


def test_serving_page_plots_the_traffic(browser, server):
    base = f"http://127.0.0.1:{server.metrics_port}"
    assert requests.get(base + "/dashboard/assets/uPlot.iife.min.js", timeout=10).ok
    page = Page(browser, base + "/dashboard/serving?token=t0k")
    assert page.page.title() == "Flotilla · Serving"
    assert page.series_max("serving.request_rate", "fraud_xgb:1") > 0
    assert page.series_max("serving.errors_by_status", "http:404") > 0
    latency = page.plot("serving.latency")
    assert {"fraud_xgb:1 p50", "fraud_xgb:1 p95", "fraud_xgb:1 p99"} <= set(latency["labels"])
    assert page.series_max("serving.latency", "fraud_xgb:1 p99") > 0
    assert page.series_max("serving.batch_size", "fraud_xgb:1") > 0
    # the batch-size distribution: the 50-row requests fall in the 33–64 bucket
    def distribution():
        d = page.plot("serving.batch_size_distribution")
        if "fraud_xgb:1" not in d["labels"]:
            return None
        counts = d["data"][d["labels"].index("fraud_xgb:1")]
        return dict(zip(d["x_labels"], counts))
    bins = wait_for(distribution, what="batch-size distribution")
    assert bins.get("33–64", 0) >= 16, bins
    # keyboard: the first tab stop is the skip link, then the page links
    page.page.keyboard.press("Tab")
    assert page.page.evaluate("document.activeElement.textContent") == "Skip to the charts"
    page.page.evaluate("document.activeElement.blur()")  # the screenshot without the focused skip link
    page.finish("serving")


def test_drift_page_plots_the_drifted_window(browser, server):
    page = Page(browser, f"http://127.0.0.1:{server.metrics_port}/dashboard/drift?token=t0k")
    # the shifted amounts: a window whose psi is far over the significant threshold
    assert page.series_max("drift.fraud_xgb:1.amount", "psi") > 0.25
    thresholds = page.plot("drift.fraud_xgb:1.amount")["labels"]
    assert "psi significant threshold" in thresholds
    page.page.get_by_role("button", name="Show reference and current window of amount").click()
    detail = page.page.get_by_role("region", name="Detail of amount")
    assert "reference vs last window" in detail.inner_text()
    # its histograms: the reference's decile bins hold about 10 % each; the shifted window
    # (amounts × 5) piles into the top bin
    hist = page.plot("drift.hist.fraud_xgb.amount")
    assert hist["labels"][1:] == ["Reference", "Last window"], hist["labels"]
    reference, window = hist["data"][1], hist["data"][2]
    assert abs(sum(reference) - 100) < 0.01 and abs(sum(window) - 100) < 0.01
    assert 5 < reference[-1] < 15 and window[-1] > 30, (reference, window)
    assert "Histogram as a table" in detail.inner_text()
    page.finish("drift")


REDIS_DB = 14  # a database of its own on the local Redis, flushed here


def test_features_page_plots_the_stream(browser, tmp_path):
    """A Redis stream of old events (a lag in seconds of weeks) with one dead letter; online reads."""
    redis = pytest.importorskip("redis")
    r = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    try:
        r.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("needs Redis on 127.0.0.1:6379")
    r.flushdb()
    repo = txn_repo(tmp_path, f'stream = {{ type = "redis", url = "redis://127.0.0.1:6379/{REDIS_DB}", '
                              'stream = "dash_txn", group = "g" }')
    r.xgroup_create("dash_txn", "g", id="0", mkstream=True)
    env = {"FLOTILLA_ONLINE_STORE": f"embedded:{tmp_path}/online.redb", "FLOTILLA_CONSUME_STREAMS": "true"}
    s = Server(EXAMPLES, "--feature-repo", str(repo), env=env)
    try:
        for i in range(20):
            r.xadd("dash_txn", {"card_id": str(i), "event_timestamp": "2026-11-02T00:00:00Z", "amount": str(i)})
        r.xadd("dash_txn", {"card_id": "oops", "event_timestamp": "2026-11-02T00:00:00Z"})
        wait_for(lambda: r.xlen("dash_txn:dead_letter") == 1, what="the dead letter")
        body = {"features": ["txn:amount"], "entities": {"card_id": [1, 2, 3]}}
        for _ in range(5):
            assert requests.post(f"http://127.0.0.1:{s.http_port}/get-online-features", json=body, timeout=10).ok
        page = Page(browser, f"http://127.0.0.1:{s.metrics_port}/dashboard/features?token=t0k")
        src = wait_for(lambda: [n for n in page.plot("features.lag_seconds")["labels"][1:]] or None, what="a source")[0]
        assert page.series_max("features.lag_seconds", src) > 86400, "events from weeks ago"
        assert page.series_max("features.messages", f"{src}:ok") > 0
        assert page.series_max("features.dead_letters", src) > 0
        assert page.series_max("features.rows_written", "txn") > 0
        assert page.series_max("features.freshness", "txn") > 86400, "the view's newest event is weeks old"
        assert page.series_max("features.read_latency", next(
            n for n in page.plot("features.read_latency")["labels"] if n.endswith(" p99"))) > 0
        page.finish("features")
    finally:
        s.stop()
        r.flushdb()


def test_fleet_page_shows_workers_and_their_load(browser, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES / "simple", repo / "simple")
    router = Router("--worker-ttl-ms", "2000")
    worker = Server(repo, "--join", router.url, "--worker-id", "w0", "--feature-repo", "none",
                    "--heartbeat-ms", "200", "--capacity-class", "opportunistic")
    try:
        router.wait_workers(["w0"])
        body = {"inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
        ]}
        for _ in range(20):
            assert requests.post(router.url + "/v2/models/simple/infer", json=body, timeout=10).ok
        # a preemption notice: the worker drains, and the timeline shows it
        assert requests.post(worker.url + "/v2/admin/preempt", json={"deadline_ms": 100}, timeout=10).ok
        wait_for(lambda: router.events(kind="drained", worker="w0"), what="w0 drained")
        page = Page(browser, f"http://127.0.0.1:{router.metrics_port}/dashboard/fleet?token=t0k")
        page.plot("fleet.outstanding")
        timeline = page.plot("fleet.timeline")
        assert {"joined", "preemption notice", "drained"} <= set(timeline["labels"]), timeline["labels"]
        text = page.page.inner_text("main")
        assert "w0" in text and "opportunistic" in text, text
        page.finish("fleet")
    finally:
        worker.stop()
        router.stop()


def test_series_endpoint_answers_json(server):
    base = f"http://127.0.0.1:{server.metrics_port}/dashboard/api"
    doc = requests.get(base + "/series?page=serving", timeout=10).json()
    assert [c["id"] for c in doc["charts"]][:2] == ["request_rate", "failure_rate"]
    assert requests.get(base + "/series?page=nope", timeout=10).status_code == 404
    assert "drift" in requests.get(base + "/pages", timeout=10).json()["pages"]
    assert json.dumps(requests.get(base + "/drift", timeout=10).json()).count("fraud_xgb") >= 1
