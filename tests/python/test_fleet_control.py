"""The fleet's desired state and traffic policies, black-box: a router watching `fleet.toml` in
front of workers in explicit model control mode. Zero-downtime rollout under load, a canary that
ramps to promotion, a faulty canary rolled back automatically (event, metric, webhook), A/B
stickiness by header over HTTP and gRPC, a shadow that never changes the caller's answer, and a
malformed file that leaves the last good state in force.
"""
import http.server
import signal
import json
import random
import re
import threading
import time

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient

from conftest import Router, Server, wait_for
from test_fleet import Loop, readme_shell, simple_body

DELAY = {"FLOTILLA_TEST_BACKENDS": "delay"}
MODEL = "tv"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """`tv`: the delay backend (2 ms, 4 instances) in versions 1, 2 and 3; version 3 fails every
    request whose first input is above 0.5. Workers start with version 1 only."""
    r = tmp_path_factory.mktemp("control-repo")
    d = r / MODEL
    for v in (1, 2, 3):
        (d / str(v)).mkdir(parents=True)
    (d / "3" / "fail_above").write_text("0.5\n")
    (d / "config.pbtxt").write_text(f"""
name: "{MODEL}"
backend: "delay"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ count: 4 kind: KIND_CPU }} ]
version_policy: {{ specific {{ versions: [ 1 ] }} }}
parameters {{ key: "execute_delay_ms" value: {{ string_value: "2" }} }}
""")
    return r


class ControlFleet:
    """A router watching `fleet.toml` in `tmp`, and two workers in explicit mode."""

    def __init__(self, repo, tmp, text, n=2):
        self.file = tmp / "fleet.toml"
        self.file.write_text(text)
        self.router = Router("--worker-ttl-ms", "2000", "--desired-state", str(self.file))
        self.workers = [
            Server(repo, "--join", self.router.url, "--worker-id", f"w{i}", "--feature-repo", "none",
                   "--heartbeat-ms", "200", "--model-control-mode", "explicit", "--load-model", MODEL, env=DELAY)
            for i in range(n)
        ]
        self.router.wait_workers([f"w{i}" for i in range(n)])

    def write(self, text):
        self.file.write_text(text)

    def traffic(self):
        return {m["model"]: m for m in requests.get(self.router.url + "/v2/fleet/traffic", timeout=10).json()["models"]}

    def versions(self):
        """Ready versions of `tv` on each worker, as the router sees them."""
        return {w["id"]: next((m["versions"] for m in w["models"] if m["name"] == MODEL), [])
                for w in self.router.fleet()["workers"]}

    def wait_versions(self, want, timeout=30):
        wait_for(lambda: all(v == want for v in self.versions().values()), timeout=timeout,
                 what=f"every worker with versions {want}: {self.versions()}\n{self.router.log()[-2000:]}")

    def stop(self):
        for w in self.workers:
            w.stop()
        self.router.stop()


@pytest.fixture
def control(repo, tmp_path):
    fleets = []

    def make(text, n=2):
        f = ControlFleet(repo, tmp_path, text, n)
        fleets.append(f)
        return f

    yield make
    for f in fleets:
        assert f.router.alive(), f.router.log()
        f.stop()


def body(x=None):
    x = random.random() if x is None else x
    return {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [x, 0, 0, 0]}]}


class VersionLoop(Loop):
    """Client threads sending unversioned requests back to back; counts answers by version and
    keeps each failure's time."""

    def __init__(self, url, threads=4, x=None):
        self.x = x
        self.by_version = {}
        super().__init__(url, model=MODEL, threads=threads)

    def next_body(self):
        return body(self.x)

    def answered(self, r):
        v = r.json()["model_version"]
        self.by_version[v] = self.by_version.get(v, 0) + 1

    def failed(self, status, text):
        self.failures.append((time.time(), status, text))

    def count(self):
        with self.lock:
            return sum(self.by_version.values())

    def finish(self):
        super().finish()
        return dict(self.by_version), list(self.failures)


def wait_requests(loop, n, timeout=60):
    start = loop.count()
    wait_for(lambda: loop.count() >= start + n, timeout=timeout, what=f"{n} more requests")


def test_rollout_under_load_loads_first_shifts_then_unloads_with_no_failure(control):
    f = control(f'[models.{MODEL}]\nversion = 1\nunload_previous = true\n')
    f.wait_versions(["1"])
    loop = VersionLoop(f.router.url)
    try:
        wait_requests(loop, 200)
        f.write(f'[models.{MODEL}]\nversion = 2\nunload_previous = true\n')
        wait_for(lambda: f.router.events("rollout_finished"), timeout=30, what="rollout finished")
        f.wait_versions(["2"])
        after = dict(loop.by_version)
        wait_requests(loop, 300)
    finally:
        by_version, failures = loop.finish()
    assert failures == [], failures[:5]
    assert by_version.get("1", 0) >= 200 and by_version["2"] - after.get("2", 0) >= 300, by_version
    # The new version was loaded and ready before traffic moved: no request answered by
    # version 2 before the shift, none by version 1 after the old version was unloaded.
    kinds = [e["kind"] for e in f.router.events() if e["worker"] in ("model:tv",) or e["kind"].startswith("versions")]
    assert kinds.index("rollout_shifted") < kinds.index("rollout_finished"), kinds
    view = f.traffic()[MODEL]
    assert view["stable_version"] == "2" and view["rollout"]["finished"], view


def test_canary_ramps_to_promotion_on_a_healthy_candidate(control):
    f = control(f'[models.{MODEL}]\nversion = 1\n')
    f.wait_versions(["1"])
    loop = VersionLoop(f.router.url, x=0.1)
    try:
        wait_requests(loop, 100)
        f.write(f'[models.{MODEL}]\nversion = 1\n[models.{MODEL}.canary]\nversion = 2\n'
                'steps = [10, 50, 100]\nhold_s = 1\nmin_requests = 20\n')
        wait_for(lambda: f.router.events("canary_promoted"), timeout=60,
                 what="canary promoted: " + json.dumps(f.traffic().get(MODEL)))
        wait_requests(loop, 100)
    finally:
        by_version, failures = loop.finish()
    assert failures == [], failures[:5]
    steps = [e["detail"] for e in f.router.events("canary_step")]
    assert len(steps) == 3 and "10% → 50%" in steps[1] and "50% → 100%" in steps[2], steps
    view = f.traffic()[MODEL]
    assert view["canary"]["state"] == "promoted", view
    r = requests.post(f"{f.router.url}/v2/models/{MODEL}/infer", json=body(0.1), timeout=10)
    assert r.json()["model_version"] == "2"
    metrics = requests.get(f"http://127.0.0.1:{f.router.metrics_port}/metrics", timeout=10).text
    assert f'flotilla_fleet_canary_state{{model="{MODEL}"}} 2' in metrics
    assert f'flotilla_fleet_arm_requests_total{{arm="canary",model="{MODEL}",outcome="ok",version="2"}}' in metrics
    assert 'flotilla_fleet_served_total{class="guaranteed",hardware="cpu-' in metrics
    assert 'flotilla_fleet_workers_by_hardware{class="guaranteed",hardware="cpu-' in metrics


class Hook(http.server.BaseHTTPRequestHandler):
    received = []

    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        Hook.received.append(json.loads(self.rfile.read(n)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_faulty_canary_is_rolled_back_with_a_reason_and_a_webhook(control):
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    port = hook.server_address[1]
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    Hook.received.clear()
    f = control(f'[models.{MODEL}]\nversion = 1\n')
    f.wait_versions(["1"])
    loop = VersionLoop(f.router.url)
    try:
        wait_requests(loop, 100)
        f.write(f'[models.{MODEL}]\nversion = 1\n[models.{MODEL}.canary]\nversion = 3\nsteps = [20, 100]\n'
                f'hold_s = 60\nmin_requests = 20\nwebhook = "http://127.0.0.1:{port}/hook"\n')
        wait_for(lambda: f.router.events("canary_rolled_back"), timeout=30,
                 what="canary rolled back: " + json.dumps(f.traffic().get(MODEL)))
        rolled_back = time.time()
        wait_requests(loop, 300)
    finally:
        by_version, failures = loop.finish()
        hook.shutdown()
    event = f.router.events("canary_rolled_back")[0]
    assert "error rate" in event["detail"], event
    # Failures are version 3's (injected) and stop with the rollback.
    assert failures and all("injected fault" in text for _, _, text in failures), failures[:3]
    assert not [t for t, _, _ in failures if t > rolled_back + 1.0], "failures after the rollback"
    canary_answers = sum(1 for _ in failures) + by_version.get("3", 0)
    assert len(failures) <= canary_answers
    assert f.traffic()[MODEL]["canary"]["state"] == "rolled_back"
    wait_for(lambda: Hook.received, timeout=10, what="the webhook")
    assert Hook.received[0]["event"] == "canary_rolled_back" and Hook.received[0]["model"] == MODEL
    metrics = requests.get(f"http://127.0.0.1:{f.router.metrics_port}/metrics", timeout=10).text
    assert f'flotilla_fleet_traffic_transitions_total{{kind="canary_rolled_back",model="{MODEL}"}} 1' in metrics


def test_ab_split_is_sticky_by_header_over_http_and_grpc_and_near_its_weights(control):
    f = control(f'[models.{MODEL}.ab]\nsplit_by = "header:x-user"\n'
                'arms = [{ name = "a", version = 1, weight = 90 }, { name = "b", version = 2, weight = 10 }]\n')
    f.wait_versions(["1", "2"])
    s = requests.Session()
    url = f"{f.router.url}/v2/models/{MODEL}/infer"
    arm_of = {}
    for i in range(2000):
        r = s.post(url, json=body(0.1), headers={"x-user": f"user-{i}"}, timeout=10)
        assert r.status_code == 200, r.text
        arm_of[f"user-{i}"] = r.json()["model_version"]
    share = sum(1 for v in arm_of.values() if v == "2") / len(arm_of)
    assert 0.07 <= share <= 0.13, share
    client = grpcclient.InferenceServerClient(f.router.grpc)
    x = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    x.set_data_from_numpy(np.array([[0.1, 0, 0, 0]], dtype=np.float32))
    for user in list(arm_of)[:100]:
        again = s.post(url, json=body(0.1), headers={"x-user": user}, timeout=10).json()["model_version"]
        over_grpc = client.infer(MODEL, [x], headers={"x-user": user}).get_response().model_version
        assert again == over_grpc == arm_of[user], user
    arms = f.traffic()[MODEL]["arms"]
    assert arms["a"]["requests"] + arms["b"]["requests"] == 2200, arms


def test_shadow_never_changes_the_callers_answer_and_records_differences(control):
    f = control(f'[models.{MODEL}]\nversion = 1\n[models.{MODEL}.shadow]\nversion = 3\npercent = 100\n')
    f.wait_versions(["1", "3"])
    wait_for(lambda: f.traffic()[MODEL]["policy"] == "shadow", what="shadow policy")
    s = requests.Session()
    url = f"{f.router.url}/v2/models/{MODEL}/infer"
    for i in range(200):
        x = 0.9 if i % 2 else 0.1
        r = s.post(url, json=body(x), timeout=10)
        assert r.status_code == 200 and r.json()["model_version"] == "1", r.text
        assert r.json()["outputs"][0]["data"][0] == pytest.approx(x)
    shadow = wait_for(lambda: (lambda t: t if t["mirrored"] >= 150 and t["matched"] + t["errors"] + t["differed"]
                                >= t["mirrored"] - 5 else None)(f.traffic()[MODEL]["shadow"]), what="mirrors done")
    assert shadow["errors"] > 20 and shadow["matched"] > 20, shadow
    samples = requests.get(f"{f.router.url}/v2/fleet/traffic/{MODEL}/shadow", timeout=10).json()["samples"]
    assert samples and all(x["outcome"] == "error" and "injected fault" in x["detail"] for x in samples), samples[:3]


def test_a_malformed_desired_state_is_refused_with_its_line_and_the_last_good_state_stays(control):
    f = control(f'[models.{MODEL}]\nversion = 1\n[models.{MODEL}.shadow]\nversion = 2\npercent = 10\n')
    wait_for(lambda: MODEL in f.traffic(), what="the desired state applied")
    f.write(f'[models.{MODEL}]\nversion = 1\n[models.{MODEL}.shadow]\nversion = 2\npercent = 150\n')
    status = wait_for(lambda: (lambda d: d if d.get("error") else None)(f.router.fleet()["desired_state"]),
                      what="the refusal")
    assert f"{f.file}:3:" in status["error"] and "percent = 150" in status["error"], status
    assert f.traffic()[MODEL]["policy"] == "shadow", "the last good state stays in force"
    assert f.router.events("desired_state_refused")
    metrics = requests.get(f"http://127.0.0.1:{f.router.metrics_port}/metrics", timeout=10).text
    assert 'flotilla_fleet_desired_state_reloads_total{outcome="refused"} 1' in metrics
    # A fixed file is taken again.
    f.write(f'[models.{MODEL}]\nversion = 1\n')
    wait_for(lambda: f.traffic()[MODEL]["policy"] == "stable", what="the fixed file applied")
    assert f.router.fleet()["desired_state"]["error"] is None
    r = requests.post(f"{f.router.url}/v2/models/{MODEL}/infer", json=body(0.1), timeout=10)
    assert r.status_code == 200 and r.json()["model_version"] == "1"


def test_readme_canary_example(tmp_path):
    """The README's canary walk-through, pasted into a shell (its /tmp paths moved under tmp_path)."""
    with readme_shell("canary-example", tmp_path, wait=False) as (proc, _):
        out, _ = proc.communicate(timeout=240)
    counts = {v: int(n) for n, v in re.findall(r'^\s*(\d+) "model_version":"(\d+)"', out, re.M)}
    assert counts.get("1", 0) > 0 and counts.get("2", 0) > 0 and sum(counts.values()) == 600, out[-3000:]
    assert '"state":"promoted"' in out, out[-3000:]


# --- placement and digest-based sync of models served from the router's artifacts ----------

def artifact_models(root, n, delay_ms=1):
    """`n` small delay-backend models m000.. under root/models, each a config and a version file."""
    models = root / "models"
    for i in range(n):
        d = models / f"m{i:03d}"
        (d / "1").mkdir(parents=True, exist_ok=True)
        (d / "1" / "model.delay").write_text(f"model {i}\n")
        (d / "config.pbtxt").write_text(f"""
name: "m{i:03d}"
backend: "delay"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
parameters {{ key: "execute_delay_ms" value: {{ string_value: "{delay_ms}" }} }}
""")
    return models


def placed_toml(names, **fields):
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items())
    return "".join(f'[models.{n}]\nartifact = "models/{n}"\n{extra}' for n in names)


class SyncFleet:
    """A router serving artifacts from `root`, and workers with empty repositories (explicit mode)."""

    def __init__(self, root, text, classes):
        self.root = root
        self.file = root / "fleet.toml"
        self.file.write_text(text)
        self.router = Router("--worker-ttl-ms", "1000", "--desired-state", str(self.file))
        self.workers = {}
        for i, cls in enumerate(classes):
            self.start(f"{cls[0]}{i}", cls)
        self.router.wait_workers(list(self.workers))

    def start(self, wid, cls, repo=None):
        repo = repo or (self.root / f"repo-{wid}")
        repo.mkdir(exist_ok=True)
        self.workers[wid] = Server(repo, "--join", self.router.url, "--worker-id", wid, "--feature-repo", "none",
                                   "--heartbeat-ms", "1000", "--capacity-class", cls,
                                   "--model-control-mode", "explicit", env=DELAY)
        return self.workers[wid]

    def in_sync(self, ids=None):
        ws = [w for w in self.router.fleet()["workers"] if ids is None or w["id"] in ids]
        return ws and all(w["applied_digest"] and w["applied_digest"] == w["desired_digest"] for w in ws)

    def metric(self, name, **labels):
        text = requests.get(f"http://127.0.0.1:{self.router.metrics_port}/metrics", timeout=10).text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self):
        for w in self.workers.values():
            w.stop(9)
        self.router.stop()


@pytest.fixture
def sync_fleet(tmp_path):
    fleets = []

    def make(text, classes):
        f = SyncFleet(tmp_path, text, classes)
        fleets.append(f)
        return f

    yield make
    for f in fleets:
        assert f.router.alive(), f.router.log()
        f.stop()


def infer_ok(url, model, x=0.1):
    r = requests.post(f"{url}/v2/models/{model}/infer", json=body(x), timeout=10)
    return r.status_code == 200


def test_100_models_sync_by_digest_and_a_change_moves_only_that_model(sync_fleet, tmp_path):
    names = [f"m{i:03d}" for i in range(100)]
    artifact_models(tmp_path, 100)
    f = sync_fleet(placed_toml(names), ["guaranteed", "opportunistic", "opportunistic"])
    wait_for(f.in_sync, timeout=120, what="every worker applied its assignment: " + json.dumps(f.router.fleet()["workers"])[:2000])
    placed = f.router.fleet()["placement"]["models"]
    assert len(placed) == 100 and all(len(p["workers"]) == 3 for p in placed.values()), list(placed.items())[:2]
    assert all(infer_ok(f.router.url, n) for n in ("m000", "m050", "m099"))
    manifests, blobs = f.metric("flotilla_fleet_sync_bytes_total", kind="manifest"), f.metric("flotilla_fleet_sync_bytes_total", kind="blob")
    # Steady state: heartbeats carry the digest only — no manifest or blob moves.
    time.sleep(2.5)
    assert f.metric("flotilla_fleet_sync_bytes_total", kind="manifest") == manifests
    assert f.metric("flotilla_fleet_sync_bytes_total", kind="blob") == blobs
    # Change one model: only it moves (three manifests, its new file three times).
    new = b"model 7, retrained\n"
    (tmp_path / "models" / "m007" / "1" / "model.delay").write_bytes(new)
    before = {w["id"]: w["applied_digest"] for w in f.router.fleet()["workers"]}
    wait_for(lambda: f.in_sync() and all(w["applied_digest"] != before[w["id"]] for w in f.router.fleet()["workers"]),
             timeout=30, what="the change applied everywhere")
    assert f.metric("flotilla_fleet_sync_bytes_total", kind="blob") - blobs == 3 * len(new)
    moved_manifests = f.metric("flotilla_fleet_sync_bytes_total", kind="manifest") - manifests
    manifest_bytes = len(requests.get(f"{f.router.url}/v2/fleet/artifacts/m007", timeout=10).content)
    assert moved_manifests == 3 * manifest_bytes
    for w in f.workers.values():
        assert (pathlib_of(w) / "m007" / "1" / "model.delay").read_bytes() == new
    assert infer_ok(f.router.url, "m007")


def pathlib_of(worker):
    import pathlib
    i = worker.cmd.index("--model-repository") if hasattr(worker, "cmd") else None
    return pathlib.Path(worker.cmd[i + 1])


def test_a_worker_restarted_with_a_stale_cache_converges(sync_fleet, tmp_path):
    names = ["m000", "m001", "m002"]
    artifact_models(tmp_path, 3)
    f = sync_fleet(placed_toml(names), ["guaranteed", "guaranteed"])
    wait_for(f.in_sync, timeout=60, what="in sync")
    before = next(w["applied_digest"] for w in f.router.fleet()["workers"] if w["id"] == "g0")
    f.workers["g1"].stop(9)
    # While it is down, one model changes: version 1 now fails inputs above 0.5.
    (tmp_path / "models" / "m001" / "1" / "fail_above").write_text("0.5\n")
    wait_for(lambda: f.in_sync(["g0"]) and next(w["applied_digest"] for w in f.router.fleet()["workers"]
                                                if w["id"] == "g0") != before, timeout=30, what="g0 has the change")
    repo = tmp_path / "repo-g1"
    f.start("g1", "guaranteed", repo)
    f.router.wait_workers(["g1"])
    wait_for(f.in_sync, timeout=60, what="the restarted worker converged")
    assert (repo / "m001" / "1" / "fail_above").read_text() == "0.5\n"
    w = f.workers["g1"]
    for n in names:
        r = requests.post(f"{w.url}/v2/models/{n}/infer", json=body(0.9), timeout=10)
        assert (r.status_code == 200) == (n != "m001"), (n, r.text)


def test_placement_keeps_the_guaranteed_floor_when_every_opportunistic_worker_is_killed(sync_fleet, tmp_path):
    artifact_models(tmp_path, 1)
    f = sync_fleet(placed_toml(["m000"], min_guaranteed=1, max=3), ["guaranteed", "opportunistic", "opportunistic"])
    wait_for(f.in_sync, timeout=60, what="in sync")
    wait_for(lambda: f.router.fleet()["placement"]["models"]["m000"]["workers"] == ["g0", "o1", "o2"], what="placed")
    for w in ("o1", "o2"):
        f.workers[w].stop(9)
    placed = wait_for(lambda: (lambda p: p if p["workers"] == ["g0"] else None)(f.router.fleet()["placement"]["models"]["m000"]),
                      timeout=30, what="re-placed on the floor")
    assert placed["guaranteed"] == 1 and "floor 1 met" in placed["reason"], placed
    assert all(infer_ok(f.router.url, "m000") for _ in range(20))
    # Opportunistic capacity comes back: used again.
    f.start("o3", "opportunistic")
    wait_for(lambda: f.router.fleet()["placement"]["models"]["m000"]["workers"] == ["g0", "o3"], timeout=30, what="o3 placed")
    wait_for(lambda: f.in_sync(["o3"]), timeout=30, what="o3 synced")
    assert [e for e in f.router.events("placed") if e["worker"] == "model:m000"]


def test_readme_placement_example(tmp_path):
    """The README's placement block, pasted into a shell: both workers get `simple` from the router."""
    def synced():
        try:
            ws = requests.get("http://127.0.0.1:8000/v2/fleet", timeout=1).json()["workers"]
        except requests.RequestException:
            return False
        return len(ws) == 2 and all(w["applied_digest"] == w["desired_digest"] and w["models"] for w in ws)

    with readme_shell("placement-example", tmp_path):
        wait_for(synced, timeout=120, what="the README placement fleet in sync")
        r = requests.post("http://127.0.0.1:8000/v2/models/simple/infer", json=simple_body(), timeout=10)
        assert r.status_code == 200, r.text
        for w in ("w1", "w2"):
            assert (tmp_path / "placed" / w / "simple" / "1" / "model.onnx").is_file()


def test_two_routers_on_the_nats_registry_agree_and_only_the_lease_holder_places(tmp_path):
    """The desired state lives in the registry: one router has the file, the other none; an
    edit of the file reaches both, and only the lease holder places."""
    from test_fleet import Nats
    artifact_models(tmp_path, 2)
    toml = tmp_path / "fleet.toml"
    toml.write_text(placed_toml(["m000"]))
    nats = Nats()
    url = f"nats://127.0.0.1:{nats.port}"
    routers = [Router("--registry", url, "--worker-ttl-ms", "1500", "--desired-state", str(f))
               for f in (toml, tmp_path / "absent.toml")]
    workers = []
    try:
        join = ",".join([url] + [r.url for r in routers])
        for i in range(2):
            repo = tmp_path / f"repo-n{i}"
            repo.mkdir()
            workers.append(Server(repo, "--join", join, "--worker-id", f"n{i}", "--feature-repo", "none",
                                  "--heartbeat-ms", "300", "--model-control-mode", "explicit", env=DELAY))

        def leaders():
            return [r.fleet()["control"]["leader"] for r in routers]

        wait_for(lambda: sorted(leaders()) == [False, True], timeout=30, what=f"one lease holder: {leaders()}")
        lead, follow = (routers[0], routers[1]) if leaders()[0] else (routers[1], routers[0])

        def synced(r, n):
            ws = r.fleet()["workers"]
            return len(ws) == 2 and all(w["applied_digest"] == w["desired_digest"] and len(w["models"]) == n for w in ws)

        wait_for(lambda: synced(lead, 1), timeout=60, what="workers synced from the lease holder")
        # The router without a file has the state from the registry; an edit reaches both.
        for r in routers:
            d = r.fleet()["desired_state"]
            assert d["source"] == "nats" and d["models"] == 1 and str(toml) in d["published_by"], d
        time.sleep(0.05)
        toml.write_text(placed_toml(["m000", "m001"]))
        wait_for(lambda: all(r.fleet()["desired_state"]["models"] == 2 for r in routers), timeout=15,
                 what="the edit in force on both routers")
        wait_for(lambda: synced(lead, 2), timeout=60, what="workers synced to the edit")
        # A bad edit is refused where it is made; the registry keeps the last good state.
        toml.write_text("[models.m000]\nartifact = 7\n")
        wait_for(lambda: routers[0].fleet()["desired_state"]["error"], timeout=15, what="the bad edit refused")
        assert "fleet.toml:2" in routers[0].fleet()["desired_state"]["error"]
        assert all(r.fleet()["desired_state"]["models"] == 2 for r in routers)
        # Both routers serve the placed models; only the holder placed them.
        for r in routers:
            assert infer_ok(r.url, "m000") and infer_ok(r.url, "m001")
        assert lead.events("placed") and not follow.events("placed")
        assert all(w["desired_digest"] is None for w in follow.fleet()["workers"])
        # The holder goes: the other takes the lease and places the same models.
        digests = {w["id"]: w["applied_digest"] for w in lead.fleet()["workers"]}
        lead.stop(signal.SIGKILL)
        wait_for(lambda: follow.fleet()["control"]["leader"], timeout=30, what="the lease moved")
        wait_for(lambda: synced(follow, 2), timeout=30, what="in sync with the new holder")
        assert {w["id"]: w["applied_digest"] for w in follow.fleet()["workers"]} == digests, "same placement, no churn"
        assert infer_ok(follow.url, "m001")
    finally:
        for w in workers:
            w.stop(signal.SIGKILL)
        for r in routers:
            r.stop()
        nats.stop()
