"""The Helm chart (deploy/helm/flotilla), offline.

Rendered by real Helm (v3.17.1, which scripts/install-helm.sh takes from an npm package), checked
against the Kubernetes 1.30 API schemas in strict mode (kubernetes-validate: an unknown field
fails), then read for what the fleet needs. The chart's shell scripts run here too: the node-info
initContainer against a stand-in kubectl, the worker's start command against a stand-in flotilla,
and the preStop drain hook against a stand-in worker (curl and wget) and a real router and worker.
"""
import http.server
import json
import os
import pathlib
import shutil
import subprocess
import threading
import time
import tomllib

import kubernetes_validate
import pytest
import yaml

from conftest import BIN, EXAMPLES, ROOT, Router, Server, wait_for

CHART = ROOT / "deploy" / "helm" / "flotilla"
KUBE = "1.30.0"
NS = "ml"
JOIN = f"http://flotilla-router-join.{NS}.svc.cluster.local:8000"
NATS = "nats://nats.messaging.svc:4222"


@pytest.fixture(scope="module")
def helm():
    path = os.environ.get("FLOTILLA_HELM") or str(pathlib.Path.home() / ".cache/flotilla/helm-3.17.1/helm")
    if not os.access(path, os.X_OK):
        subprocess.run([str(ROOT / "scripts" / "install-helm.sh")], check=True)
    return path


@pytest.fixture(scope="module")
def default_docs(helm, tmp_path_factory):
    """The default values' manifests (rendered and validated once)."""
    return render(helm, tmp_path_factory.mktemp("default"))


def helm_template(helm, values, tmp_path):
    """`helm template flotilla CHART -f values` as a CompletedProcess (values: a dict, or None)."""
    cmd = [helm, "template", "flotilla", str(CHART), "--namespace", NS, "--kube-version", KUBE]
    if values is not None:
        f = tmp_path / f"values-{time.monotonic_ns()}.yaml"
        f.write_text(yaml.safe_dump(values))
        cmd += ["-f", str(f)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def render(helm, tmp_path, values=None):
    """The rendered manifests, each checked against the Kubernetes API schemas (strict)."""
    done = helm_template(helm, values, tmp_path)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    errors = schema_errors(docs)
    assert errors == [], "\n".join(errors)
    return docs


def refused(helm, tmp_path, values):
    """Helm's error for values the chart refuses."""
    done = helm_template(helm, values, tmp_path)
    assert done.returncode != 0, "rendered values it should refuse:\n" + done.stdout[:2000]
    return done.stderr


def schema_errors(docs, strict=True):
    errors = []
    for d in docs:
        try:
            kubernetes_validate.validate(d, KUBE, strict=strict)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{d['kind']}/{d['metadata']['name']}: {path}: {e.message}")
    return errors


def one(docs, kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found among " + str([(d["kind"], d["metadata"]["name"]) for d in docs])
    return found[0]


def container(deployment, name):
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def pre_stop(deployment):
    return container(deployment, "worker")["lifecycle"]["preStop"]["exec"]["command"]


def kinds(docs):
    return sorted((d["kind"], d["metadata"]["name"]) for d in docs)


def test_default_values_render_valid_kubernetes_1_30(helm, default_docs):
    docs = default_docs
    assert kinds(docs) == [
        ("ClusterRole", f"{NS}-flotilla-node-reader"),
        ("ClusterRoleBinding", f"{NS}-flotilla-node-reader"),
        ("ConfigMap", "flotilla-fleet"),
        ("Deployment", "flotilla-router"),
        ("Deployment", "flotilla-worker-on-demand"),
        ("Deployment", "flotilla-worker-spot"),
        ("Service", "flotilla-router"),
        ("Service", "flotilla-router-join"),
        ("ServiceAccount", "flotilla-node-reader"),
    ]
    lint = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_router_serves_the_three_listeners_and_watches_the_fleet_toml(default_docs):
    docs = default_docs
    router = one(docs, "Deployment", "flotilla-router")
    pod = router["spec"]["template"]
    c = container(router, "router")
    assert c["command"] == ["flotilla", "route"]
    assert {"--http-port=8000", "--grpc-port=8001", "--metrics-port=8002",
            "--desired-state=/etc/flotilla/fleet/fleet.toml"} <= set(c["args"])
    assert not any(a.startswith("--registry") for a in c["args"])
    assert router["spec"]["replicas"] == 1 and router["spec"]["strategy"]["type"] == "Recreate"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert pod["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "8002", "prometheus.io/path": "/metrics"}
    # fleet.toml: the ConfigMap, mounted where --desired-state points, and valid TOML
    mount = next(m for m in c["volumeMounts"] if m["name"] == "fleet")
    assert mount["mountPath"] == "/etc/flotilla/fleet"
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "fleet")
    config = one(docs, "ConfigMap", volume["configMap"]["name"])
    assert tomllib.loads(config["data"]["fleet.toml"]) == {}
    # clients: one Service with the three ports, selecting the router pods
    service = one(docs, "Service", "flotilla-router")
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "http": (8000, "http"), "grpc": (8001, "grpc"), "metrics": (8002, "metrics")}
    labels = pod["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    # workers: the headless join Service lists routers before they are ready (a router is ready
    # only once a worker has joined it)
    join = one(docs, "Service", "flotilla-router-join")
    assert join["spec"]["clusterIP"] == "None" and join["spec"]["publishNotReadyAddresses"] is True
    assert join["spec"]["selector"].items() <= labels.items()
    assert [p["port"] for p in join["spec"]["ports"]] == [8000]


def test_workers_join_the_router_and_drain_on_prestop(default_docs):
    docs = default_docs
    for pool, grace in (("on-demand", 60), ("spot", 25)):
        d = one(docs, "Deployment", f"flotilla-worker-{pool}")
        spec = d["spec"]["template"]["spec"]
        c = container(d, "worker")
        assert d["spec"]["replicas"] == 2
        assert f"--join={JOIN}" in c["args"]
        assert {"--worker-id=$(POD_NAME)", "--advertise-host=$(POD_IP)", "--model-repository=/models"} <= set(c["args"])
        assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
        # preStop: a preemption notice with a deadline inside the grace period, then wait for drained
        assert spec["terminationGracePeriodSeconds"] == grace
        hook = pre_stop(d)
        script = hook[-1]
        assert hook[:2] == ["/bin/sh", "-c"] and "/v2/admin/preempt" in script and "/v2/admin/worker" in script
        deadline_ms = json.loads(script.split("body='")[1].split("'")[0])["deadline_ms"]
        assert deadline_ms == (grace - 5) * 1000
        assert spec["terminationGracePeriodSeconds"] * 1000 > deadline_ms
        assert f"--preempt-deadline-ms={deadline_ms}" in c["args"]
        assert "--exit-timeout-secs=2" in c["args"]  # half the 5 s margin: SIGTERM after the drain
    # the spot pool: opportunistic, scheduled on spot nodes only, tolerating their taint
    spot = one(docs, "Deployment", "flotilla-worker-spot")
    spec = spot["spec"]["template"]["spec"]
    assert "--capacity-class=opportunistic" in container(spot, "worker")["args"]
    assert spec["tolerations"] == [
        {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [
        {"key": "cloud.google.com/gke-spot", "operator": "In", "values": ["true"]}]}]
    # the on-demand pool: anywhere, its class from its node
    on_demand = one(docs, "Deployment", "flotilla-worker-on-demand")
    assert "tolerations" not in on_demand["spec"]["template"]["spec"]
    assert not any(a.startswith("--capacity-class") for a in container(on_demand, "worker")["args"])
    assert "--capacity-class" in container(on_demand, "worker")["command"][2]


def test_node_labels_come_through_an_init_container_with_its_own_token(default_docs):
    docs = default_docs
    role = one(docs, "ClusterRole", f"{NS}-flotilla-node-reader")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    binding = one(docs, "ClusterRoleBinding", f"{NS}-flotilla-node-reader")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "flotilla-node-reader", "namespace": NS}]
    for pool in ("on-demand", "spot"):
        spec = one(docs, "Deployment", f"flotilla-worker-{pool}")["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] == "flotilla-node-reader"
        assert spec["automountServiceAccountToken"] is False
        (init,) = spec["initContainers"]
        env = {e["name"]: e for e in init["env"]}
        assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
        token_mounts = lambda c: [m for m in c.get("volumeMounts", []) if m["name"] == "kube-api-access"]
        assert token_mounts(init) and not token_mounts(spec["containers"][0])
        # the node-info emptyDir: written by the initContainer, read by the worker
        assert {m["name"] for m in init["volumeMounts"]} >= {"node-info"}
        assert {"name": "node-info", "mountPath": "/etc/flotilla/node", "readOnly": True} in spec["containers"][0]["volumeMounts"]


def test_nats_registry_with_two_routers(helm, tmp_path):
    desired = '[models.simple]\nversion = 1\n\n[models.simple.canary]\nversion = 2\nsteps = [10, 50, 100]\n'
    docs = render(helm, tmp_path, {"registry": {"nats": NATS}, "router": {"replicas": 2},
                                   "fleet": {"desiredState": desired}})
    router = one(docs, "Deployment", "flotilla-router")
    assert router["spec"]["replicas"] == 2 and "strategy" not in router["spec"]
    args = container(router, "router")["args"]
    assert f"--registry={NATS}" in args and "--registry-bucket=flotilla-fleet" in args
    config = one(docs, "ConfigMap", "flotilla-fleet")["data"]["fleet.toml"]
    assert config == desired
    assert tomllib.loads(config)["models"]["simple"]["canary"]["steps"] == [10, 50, 100]
    for pool in ("on-demand", "spot"):
        args = container(one(docs, "Deployment", f"flotilla-worker-{pool}"), "worker")["args"]
        assert f"--join={NATS},{JOIN}" in args and "--registry-bucket=flotilla-fleet" in args


def test_readme_values_render(helm, tmp_path):
    text = (ROOT / "README.md").read_text().split("### Kubernetes (Helm)", 1)[1]
    values = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    docs = render(helm, tmp_path, values)
    assert one(docs, "Deployment", "flotilla-router")["spec"]["replicas"] == 2
    spot = one(docs, "Deployment", "flotilla-worker-spot")
    assert '"deadline_ms": 20000' in pre_stop(spot)[-1]


def test_two_routers_need_the_nats_registry(helm, tmp_path):
    assert "router.replicas > 1 needs registry.nats" in refused(helm, tmp_path, {"router": {"replicas": 2}})
    assert "registry.nats" in refused(helm, tmp_path, {"registry": {"nats": "redis://x:6379"}})


def test_pools_with_fixed_class_and_hardware_need_no_rbac(helm, tmp_path):
    pools = [
        {"name": "gpu", "replicas": 1, "capacityClass": "guaranteed", "hardware": "h100",
         "resources": {"limits": {"nvidia.com/gpu": 1, "cpu": "8", "memory": "32Gi"}},
         "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}},
        {"name": "spot-l4", "replicas": 3, "capacityClass": "opportunistic", "hardware": "l4",
         "nodeSelector": {"eks.amazonaws.com/capacityType": "SPOT"}},
    ]
    docs = render(helm, tmp_path, {"pools": pools})
    assert not [k for k, _ in kinds(docs) if k in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")]
    for name, cls, hw in (("gpu", "guaranteed", "h100"), ("spot-l4", "opportunistic", "l4")):
        d = one(docs, "Deployment", f"flotilla-worker-{name}")
        spec = d["spec"]["template"]["spec"]
        c = container(d, "worker")
        assert "initContainers" not in spec and "serviceAccountName" not in spec
        assert "kube-api-access" not in [v["name"] for v in spec["volumes"]]
        assert c["command"] == ["flotilla", "serve"]
        assert f"--capacity-class={cls}" in c["args"] and f"--hardware={hw}" in c["args"]
    gpu = container(one(docs, "Deployment", "flotilla-worker-gpu"), "worker")
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_model_repository_and_artifact_volumes(helm, tmp_path):
    docs = render(helm, tmp_path, {
        "modelRepository": {"source": "persistentVolumeClaim", "claimName": "models"},
        "router": {"artifacts": {"claimName": "artifacts"}}})
    spec = one(docs, "Deployment", "flotilla-worker-spot")["spec"]["template"]["spec"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in spec["volumes"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in spec["containers"][0]["volumeMounts"]
    router = one(docs, "Deployment", "flotilla-router")["spec"]["template"]["spec"]
    assert {"name": "artifacts", "persistentVolumeClaim": {"claimName": "artifacts", "readOnly": True}} in router["volumes"]
    # placed models: an empty, writable repository per worker, synced from the router
    docs = render(helm, tmp_path, {"modelRepository": {"source": "emptyDir"}, "worker": {"modelControlMode": "explicit"}})
    d = one(docs, "Deployment", "flotilla-worker-on-demand")
    assert {"name": "models", "emptyDir": {}} in d["spec"]["template"]["spec"]["volumes"]
    assert "--model-control-mode=explicit" in container(d, "worker")["args"]
    assert "claimName" in refused(helm, tmp_path, {"modelRepository": {"source": "persistentVolumeClaim"}})


def test_values_the_chart_refuses(helm, tmp_path):
    # values.schema.json: the chart's own keys and enums
    assert "capasityClass" in refused(helm, tmp_path, {"pools": [{"name": "a", "capasityClass": "guaranteed"}]})
    assert "capacityClass" in refused(helm, tmp_path, {"worker": {"capacityClass": "spot"}})
    assert "pools" in refused(helm, tmp_path, {"pools": [{"name": "Spot_Pool"}]})
    # the templates: what a schema cannot say
    assert "named twice" in refused(helm, tmp_path, {"pools": [{"name": "a"}, {"name": "a"}]})
    assert "must exceed drainMarginSeconds" in refused(
        helm, tmp_path, {"pools": [{"name": "a", "terminationGracePeriodSeconds": 5, "drainMarginSeconds": 5}]})
    assert "serviceAccountName" in refused(helm, tmp_path, {"nodeInfo": {"rbac": {"create": False}}})


@pytest.mark.parametrize("values, field", [
    # a typo inside a Kubernetes object passed through values: Helm renders it, strict validation catches it
    ({"worker": {"securityContext": {"allowPrivilegeEscalaton": False}}}, "allowPrivilegeEscalaton"),
    ({"pools": [{"name": "spot", "tolerations": [{"key": "k", "operater": "Exists"}]}]}, "operater"),
    # a wrong type: caught with or without strict
    ({"worker": {"env": [{"name": "FLOTILLA_INSTANCES", "value": 2}]}}, "2 is not of type 'string'"),
])
def test_the_validator_catches_mistakes_helm_renders(helm, tmp_path, values, field):
    done = helm_template(helm, values, tmp_path)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    errors = schema_errors(docs)
    assert errors and all(e.startswith("Deployment/flotilla-worker-") for e in errors), errors
    assert any(field in e for e in errors), errors
    if "not of type" not in field:
        # without strict the unknown field passes: strict mode is what catches it
        assert schema_errors(docs, strict=False) == []


# --- the chart's scripts, run here ---

def stub(folder, name, body):
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def path_with(folder, *tools):
    """A PATH of `folder` plus links to the named system tools only."""
    for tool in tools:
        found = shutil.which(tool)
        if found is None:
            pytest.skip(f"{tool} not installed")
        (folder / tool).symlink_to(found)
    return str(folder)


NODES = {
    # GKE Spot VM
    "gke-spot": ({"cloud.google.com/gke-spot": "true", "node.kubernetes.io/instance-type": "n2-standard-8",
                  "kubernetes.io/hostname": "gke-spot-1"}, "opportunistic", "n2-standard-8"),
    # AKS on-demand GPU node labelled by GPU feature discovery: the GPU names the hardware
    "aks-gpu": ({"kubernetes.azure.com/scalesetpriority": "regular", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
                 "node.kubernetes.io/instance-type": "Standard_ND96asr_v4"}, "guaranteed", "NVIDIA-A100-SXM4-80GB"),
    # EKS spot
    "eks-spot": ({"eks.amazonaws.com/capacityType": "SPOT", "node.kubernetes.io/instance-type": "c6i.2xlarge"},
                 "opportunistic", "c6i.2xlarge"),
    # a bare node: guaranteed, and the worker keeps its own cpu-<N>c
    "bare": ({"kubernetes.io/hostname": "n1"}, "guaranteed", ""),
}


@pytest.mark.parametrize("node", list(NODES))
def test_node_info_script_and_worker_command(default_docs, tmp_path, node):
    labels, want_class, want_hardware = NODES[node]
    docs = default_docs
    d = one(docs, "Deployment", "flotilla-worker-on-demand")
    (init,) = d["spec"]["template"]["spec"]["initContainers"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # kubectl 1.30 prints a jsonpath map as compact JSON; the stand-in checks what it was asked
    stub(bin_dir, "kubectl",
         f'[ "$*" = "get node {node} -o jsonpath={{.metadata.labels}}" ] || {{ echo "unexpected: $*" >&2; exit 2; }}\n'
         f"printf '%s' '{json.dumps(labels, separators=(',', ':'))}'\n")
    out_dir = tmp_path / "node"
    out_dir.mkdir()
    env = {"PATH": path_with(bin_dir, "tr", "cat"), "NODE_NAME": node, "NODE_INFO_DIR": str(out_dir)}
    assert init["command"][:2] == ["/bin/sh", "-c"]
    run = subprocess.run(init["command"], env=env, capture_output=True, text=True, timeout=10)
    assert run.returncode == 0, run.stderr
    assert (out_dir / "capacity-class").read_text() == want_class
    assert (out_dir / "hardware").read_text() == want_hardware
    # the worker's command adds them to its flags (a stand-in flotilla prints its argv)
    c = container(d, "worker")
    stub(bin_dir, "flotilla", 'for a in "$@"; do printf "%s\\n" "$a"; done\n')
    run = subprocess.run(c["command"] + c["args"], env=env, capture_output=True, text=True, timeout=10)
    assert run.returncode == 0, run.stderr
    argv = run.stdout.splitlines()
    assert argv[0] == "serve" and argv[1:len(c["args"]) + 1] == c["args"]
    extra = argv[len(c["args"]) + 1:]
    assert extra == ["--capacity-class", want_class] + (["--hardware", want_hardware] if want_hardware else [])


def test_node_info_fails_loudly_without_access(default_docs, tmp_path):
    docs = default_docs
    (init,) = one(docs, "Deployment", "flotilla-worker-spot")["spec"]["template"]["spec"]["initContainers"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub(bin_dir, "kubectl", 'echo \'Error from server (Forbidden): nodes "n1" is forbidden\' >&2; exit 1\n')
    env = {"PATH": path_with(bin_dir, "tr", "cat"), "NODE_NAME": "n1", "NODE_INFO_DIR": str(tmp_path)}
    run = subprocess.run(init["command"], env=env, capture_output=True, text=True, timeout=10)
    assert run.returncode != 0 and "Forbidden" in run.stderr
    assert not (tmp_path / "capacity-class").exists()


class StandInWorker(http.server.ThreadingHTTPServer):
    """Answers the preStop hook: records the preempt body; reports draining `draining_polls` times, then drained."""

    def __init__(self, draining_polls):
        self.notices, self.polls, self.draining_polls = [], 0, draining_polls
        worker = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, body):
                data = json.dumps(body, separators=(",", ":")).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                assert self.path == "/v2/admin/preempt"
                worker.notices.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.answer({"state": "draining", "deadline_ms": worker.notices[-1]["deadline_ms"]})

            def do_GET(self):
                assert self.path == "/v2/admin/worker"
                worker.polls += 1
                drained = worker.draining_polls is not None and worker.polls > worker.draining_polls
                self.answer({"id": "w", "state": "drained" if drained else "draining", "models": []})

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def hook_for_port(helm, tmp_path, port, grace, margin=2):
    docs = render(helm, tmp_path, {"ports": {"http": port},
                                   "pools": [{"name": "spot", "terminationGracePeriodSeconds": grace,
                                              "drainMarginSeconds": margin}]})
    return pre_stop(one(docs, "Deployment", "flotilla-worker-spot"))


@pytest.mark.parametrize("client", ["curl", "wget"])
def test_prestop_posts_the_notice_and_waits_for_drained(helm, tmp_path, client):
    worker = StandInWorker(draining_polls=1)
    try:
        hook = hook_for_port(helm, tmp_path, worker.server_address[1], grace=12)
        env = {"PATH": path_with(tmp_path, client, "date", "sleep")}
        started = time.monotonic()
        run = subprocess.run(hook, env=env, capture_output=True, text=True, timeout=30)
        took = time.monotonic() - started
        assert run.returncode == 0, run.stderr
        assert worker.notices == [{"deadline_ms": 10000}]
        assert worker.polls == 2 and took < 8, (worker.polls, took)
    finally:
        worker.shutdown()


def test_prestop_gives_up_at_the_deadline(helm, tmp_path):
    worker = StandInWorker(draining_polls=None)  # never drains
    try:
        hook = hook_for_port(helm, tmp_path, worker.server_address[1], grace=4)
        env = {"PATH": path_with(tmp_path, "curl", "date", "sleep")}
        started = time.monotonic()
        run = subprocess.run(hook, env=env, capture_output=True, text=True, timeout=30)
        took = time.monotonic() - started
        assert run.returncode == 0, run.stderr
        assert worker.notices == [{"deadline_ms": 2000}]
        assert 1 <= took < 4, took  # within the grace period, leaving the margin to SIGTERM
    finally:
        worker.shutdown()


@pytest.mark.skipif(not os.access(BIN, os.X_OK), reason="flotilla binary not built")
def test_prestop_drains_a_real_worker(helm, tmp_path):
    repo = tmp_path / "repository"
    shutil.copytree(EXAMPLES / "simple", repo / "simple")
    router = Router()
    worker = None
    try:
        worker = Server(repo, "--join", router.url, "--worker-id", "w1")
        router.wait_workers(["w1"])
        hook = hook_for_port(helm, tmp_path, worker.http_port, grace=12)
        run = subprocess.run(hook, env={"PATH": path_with(tmp_path, "curl", "date", "sleep")},
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout.splitlines()[0])["deadline_ms"] == 10000  # the preempt report
        kinds_seen = [e["kind"] for e in router.events(worker="w1")]
        assert "draining" in kinds_seen and "drained" in kinds_seen, kinds_seen
        # then SIGTERM, as the kubelet sends after the hook: the drained worker leaves at once
        assert worker.stop() == 0, worker.log()
        wait_for(lambda: "w1" not in [w["id"] for w in router.fleet()["workers"]], timeout=10, what="w1 left")
    finally:
        if worker is not None:
            worker.stop()
        router.stop()
