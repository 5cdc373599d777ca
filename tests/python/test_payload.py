"""The payload log and `flotilla replay`, black-box: the real binary, files read back with pyarrow,
and a candidate model that differs from the primary on a known subset of requests."""
import hashlib
import json
import subprocess
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from conftest import BIN, Server, wait_for
from test_features import kafka_broker  # noqa: F401 (a fixture)

SALT = "s3cret"


def scorer(folder, version, bump):
    """score = sigmoid(x · w - 0.35 + 0 × tag), plus `bump` where x[0] > 0.5 (the candidate's change)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.array([[0.3], [-0.2], [0.5], [0.1]], dtype=np.float32), "w")
    e0 = numpy_helper.from_array(np.array([[1.0], [0.0], [0.0], [0.0]], dtype=np.float32), "e0")
    consts = [numpy_helper.from_array(np.array(v, dtype=np.float32), n) for n, v in
              (("half", 0.5), ("zero", 0.0), ("bump", bump), ("bias", -0.35))]
    n = helper.make_node
    nodes = [n("MatMul", ["x", "w"], ["z0"]), n("Mul", ["tag", "zero"], ["t0"]), n("Add", ["z0", "t0"], ["z0t"]), n("Add", ["z0t", "bias"], ["z1"]),
             n("MatMul", ["x", "e0"], ["x0"]), n("Greater", ["x0", "half"], ["big"]),
             n("Cast", ["big"], ["bigf"], to=TensorProto.FLOAT), n("Mul", ["bigf", "bump"], ["b"]),
             n("Add", ["z1", "b"], ["z"]), n("Sigmoid", ["z"], ["score"])]
    g = helper.make_graph(nodes, "scorer",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
                           helper.make_tensor_value_info("tag", TensorProto.FLOAT, ["n", 1])],
                          [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n", 1])], [w, e0, *consts])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(folder / str(version) / "model.onnx"))


def repository(tmp_path, payload):
    repo = tmp_path / "models"
    model = repo / "scorer"
    scorer(model, 1, 0.0)
    scorer(model, 2, 3.0)
    (model / "config.pbtxt").write_text("""name: "scorer"
platform: "onnxruntime_onnx"
max_batch_size: 64
version_policy: { specific: { versions: [1] } }
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "tag" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "score" data_type: TYPE_FP32 dims: [ 1 ] } ]
""")
    (model / "payload.toml").write_text(payload)
    return repo


def infer(server, x, tag, rid=None):
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()},
                       {"name": "tag", "datatype": "FP32", "shape": [len(x), 1], "data": tag}]}
    if rid:
        body["id"] = rid
    return requests.post(f"http://127.0.0.1:{server.http_port}/v2/models/scorer/infer", json=body, timeout=10)


def read_log(folder):
    files = sorted((folder / "scorer").glob("*.parquet"))
    assert files, f"no completed log files in {folder}"
    assert not list((folder / "scorer").glob("*.partial")), "a stopped server completes its files"
    return pa.concat_tables([pq.read_table(f) for f in files])


def test_log_schema_sampling_errors_and_redaction(tmp_path):
    repo = repository(tmp_path, 'sample = 0.5\nhash = ["tag"]\n')
    log = tmp_path / "log"
    s = Server(repo, "--payload-log", str(log), "--payload-log-cpu-budget", "0", env={"FLOTILLA_PAYLOAD_SALT": SALT})
    rng = np.random.default_rng(1)
    try:
        for i in range(400):
            assert infer(s, rng.random((1, 4), dtype=np.float32), [float(i)], rid=f"ok-{i}").status_code == 200
        for i in range(10):  # the wrong shape: failed requests are always logged
            r = infer(s, rng.random((1, 3), dtype=np.float32), [1.0], rid=f"bad-{i}")
            assert r.status_code == 400
        written = []

        def settled():
            m = requests.get(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=10).text
            v = [float(x.split()[-1]) for x in m.splitlines()
                 if x.startswith('flotilla_payload_log_rows_total{model="scorer",outcome="written"}')]
            written.append(v[0] if v else 0.0)
            time.sleep(1.5)  # the writer flushes every second
            return len(written) > 1 and written[-1] == written[-2] > 0
        wait_for(settled, timeout=30, what="the payload log's written rows settle")
    finally:
        assert s.stop() == 0, s.log()
    t = read_log(log)
    names = t.column_names
    for c in ["request_id", "time", "model", "version", "status", "error", "latency_us", "trace_id",
              "input.x", "input.x.shape", "input.tag", "input.tag.shape", "output.score", "output.score.shape"]:
        assert c in names, names
    assert t.schema.field("time").type == pa.timestamp("us", tz="UTC")
    assert t.schema.field("input.x").type == pa.list_(pa.float32())
    assert t.schema.field("input.tag").type == pa.list_(pa.string()), "a hashed input holds digests"
    rows = t.to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    bad = [r for r in rows if r["status"] != "ok"]
    assert 150 <= len(ok) <= 250, f"{len(ok)} of 400 successful requests logged at sample = 0.5"
    assert sorted(r["request_id"] for r in bad) == sorted(f"bad-{i}" for i in range(10))
    assert all(r["status"] == "invalid_argument" and r["error"] and r["output.score"] is None for r in bad)
    r = ok[0]
    i = int(r["request_id"].split("-")[1])
    want = hashlib.sha256(SALT.encode() + np.float32(i).tobytes()).hexdigest()
    assert r["input.tag"] == [want] and r["input.tag.shape"] == [1, 1]
    assert len(r["input.x"]) == 4 and r["input.x.shape"] == [1, 4] and len(r["output.score"]) == 1
    assert r["model"] == "scorer" and r["version"] == "1" and r["latency_us"] > 0
    assert written[-1] == len(rows), "every logged row is counted as written"


def test_replay_finds_exactly_the_changed_requests(tmp_path):
    repo = repository(tmp_path, "sample = 1.0\n")
    log = tmp_path / "log"
    s = Server(repo, "--payload-log", str(log), "--payload-log-cpu-budget", "0", "--model-control-mode", "explicit",
               "--load-model", "scorer")
    rng = np.random.default_rng(2)
    changed, labels = set(), {}
    try:
        for i in range(300):
            rows = 1 + i % 3
            x = rng.random((rows, 4), dtype=np.float32)
            rid = f"r{i}"
            assert infer(s, x, [0.0] * rows, rid=rid).status_code == 200
            if (x[:, 0] > 0.5).any():
                changed.add(rid)
            labels[rid] = int(x[0, 0] > 0.5)
    finally:
        assert s.stop() == 0, s.log()
    pq.write_table(pa.table({"request_id": list(labels), "label": list(labels.values())}), tmp_path / "labels.parquet")
    out = tmp_path / "report"
    p = subprocess.run([BIN, "replay", "--log", str(log), "--model", "scorer", "--candidate", "2",
                        "--model-repository", str(repo), "--labels", str(tmp_path / "labels.parquet"),
                        "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["replayed"] == 300 and report["logged"] == 300 and report["candidate_errors"] == 0
    assert set(report["changed_requests"]) == changed, "exactly the requests with x[0] > 0.5 changed"
    assert report["outputs"][0]["changed"] == len(changed)
    assert report["primary_latency"] is not None, "the logged primary (version 1) ran too"
    assert report["candidate_metrics"]["auc"] > report["primary_metrics"]["auc"] + 0.2
    assert 0 < report["class_agreement"] < 1
    md = (tmp_path / "report.md").read_text()
    assert "Changed requests" in md and "Against labels" in md and "Canary bounds" in md
    # The candidate as its own folder gives the same answer; version 1 against itself changes nothing.
    same = subprocess.run([BIN, "replay", "--log", str(log), "--model", "scorer", "--candidate", "1",
                           "--model-repository", str(repo), "--out", str(tmp_path / "same"), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert same.returncode == 0, same.stderr
    assert json.loads((tmp_path / "same.json").read_text())["changed_requests"] == []


def test_replay_errors_are_clear(tmp_path):
    repo = repository(tmp_path, "sample = 1.0\n")
    cases = [
        (["--log", str(tmp_path / "nowhere"), "--candidate", "2"], "nowhere"),
        (["--log", str(tmp_path), "--candidate", "7"], "has no version 7"),
    ]
    (tmp_path / "scorer").mkdir()
    for args, message in cases:
        p = subprocess.run([BIN, "replay", "--model", "scorer", "--model-repository", str(repo), *args],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode != 0 and message in p.stderr, p.stderr


@pytest.mark.parametrize("payload, message", [
    ("sample = 2\n", "payload.toml:1: sample: 2 is not a fraction between 0 and 1"),
    ('sample = 1\ndrop = ["nope"]\n', "payload.toml:2: drop: 'nope' is not an input of the model"),
])
def test_a_bad_payload_toml_is_named_and_the_model_still_serves(tmp_path, payload, message):
    repo = repository(tmp_path, payload)
    s = Server(repo, "--payload-log", str(tmp_path / "log"))
    try:
        assert infer(s, np.zeros((1, 4), dtype=np.float32), [0.0]).status_code == 200
    finally:
        assert s.stop() == 0
    assert message in s.log()


def test_files_rotate_by_age_while_serving(tmp_path):
    repo = repository(tmp_path, "sample = 1.0\n")
    log = tmp_path / "log"
    s = Server(repo, "--payload-log", str(log), "--payload-log-max-age-secs", "1", "--payload-log-cpu-budget", "0")
    try:
        deadline = time.time() + 4
        n = 0
        while time.time() < deadline:
            assert infer(s, np.zeros((1, 4), dtype=np.float32), [0.0], rid=f"q{n}").status_code == 200
            n += 1
            time.sleep(0.01)
        wait_for(lambda: len(list((log / "scorer").glob("*.parquet"))) >= 2, timeout=10,
                 what="files completed while the server runs")
    finally:
        assert s.stop() == 0, s.log()
    ids = pa.concat_tables([pq.read_table(f) for f in sorted((log / "scorer").glob("*.parquet"))]).column("request_id")
    assert sorted(ids.to_pylist(), key=lambda x: int(x[1:])) == [f"q{i}" for i in range(n)], "every request once"


def test_payload_log_to_a_kafka_topic(tmp_path, kafka_broker):
    from confluent_kafka import Consumer
    topic = f"flotilla_payload_{uuid.uuid4().hex[:8]}"
    repo = repository(tmp_path, 'sample = 1.0\nhash = ["tag"]\n')
    s = Server(repo, "--payload-log", f"kafka://{kafka_broker.address}/{topic}", "--payload-log-cpu-budget", "0",
               env={"FLOTILLA_PAYLOAD_SALT": SALT})
    try:
        for i in range(20):
            assert infer(s, np.full((1, 4), 0.25, dtype=np.float32), [float(i)], rid=f"k{i}").status_code == 200
        assert infer(s, np.zeros((1, 3), dtype=np.float32), [0.0], rid="k-bad").status_code == 400
    finally:
        assert s.stop() == 0, s.log()  # stopping delivers what is queued
    consumer = Consumer({"bootstrap.servers": kafka_broker.address, "group.id": f"g-{topic}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got = {}
    deadline = time.time() + 60
    while len(got) < 21 and time.time() < deadline:
        m = consumer.poll(1.0)
        if m is not None and m.error() is None:
            got[m.key().decode()] = json.loads(m.value())
    consumer.close()
    assert sorted(got) == sorted([f"k{i}" for i in range(20)] + ["k-bad"]), sorted(got)
    m = got["k3"]
    assert (m["model"], m["version"], m["status"], m["error"]) == ("scorer", "1", "ok", None)
    assert m["inputs"]["x"] == {"datatype": "FP32", "shape": [1, 4], "data": [0.25] * 4}
    assert m["inputs"]["tag"]["data"] == [hashlib.sha256(SALT.encode() + np.float32(3).tobytes()).hexdigest()]
    assert m["inputs"]["tag"]["hashed"] is True and "hashed" not in m["inputs"]["x"]
    assert m["outputs"]["score"]["shape"] == [1, 1] and m["latency_us"] > 0 and m["time"].endswith("Z")
    assert got["k-bad"]["status"] == "invalid_argument" and got["k-bad"]["outputs"] is None


def test_replay_reads_a_log_sent_to_kafka(tmp_path, kafka_broker):
    topic = f"flotilla_payload_{uuid.uuid4().hex[:8]}"
    repo = repository(tmp_path, "sample = 1.0\n")
    s = Server(repo, "--payload-log", f"kafka://{kafka_broker.address}/{topic}", "--payload-log-cpu-budget", "0",
               "--model-control-mode", "explicit", "--load-model", "scorer")
    rng = np.random.default_rng(5)
    changed = set()
    try:
        for i in range(120):
            x = rng.random((1 + i % 2, 4), dtype=np.float32)
            assert infer(s, x, [0.0] * len(x), rid=f"q{i}").status_code == 200
            if (x[:, 0] > 0.5).any():
                changed.add(f"q{i}")
        assert infer(s, np.zeros((1, 3), dtype=np.float32), [0.0], rid="q-bad").status_code == 400
    finally:
        assert s.stop() == 0, s.log()
    out = tmp_path / "report"
    p = subprocess.run([BIN, "replay", "--log", f"kafka://{kafka_broker.address}/{topic}", "--model", "scorer",
                        "--candidate", "2", "--model-repository", str(repo), "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["logged"], report["replayed"]) == (121, 120), "the failed request is logged, not replayed"
    assert set(report["changed_requests"]) == changed
    missing = subprocess.run([BIN, "replay", "--log", f"kafka://{kafka_broker.address}/nope_{topic}", "--model",
                              "scorer", "--candidate", "2", "--model-repository", str(repo), "--no-progress"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "no topic" in missing.stderr, missing.stderr


def test_the_writer_keeps_to_its_cpu_budget_by_logging_fewer_requests(tmp_path):
    repo = repository(tmp_path, "sample = 1.0\n")
    log = tmp_path / "log"
    s = Server(repo, "--payload-log", str(log), "--payload-log-cpu-budget", "0.00001")
    try:
        x = np.zeros((1, 4), dtype=np.float32)
        deadline = time.time() + 4
        while time.time() < deadline:
            assert infer(s, x, [0.0]).status_code == 200

        def over_budget():
            m = requests.get(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=10).text
            return sum(float(x.split()[-1]) for x in m.splitlines()
                       if x.startswith('flotilla_payload_log_rows_total{model="scorer",outcome="over_budget"}'))
        assert over_budget() > 0, "past its budget, the request path logs one request in N"
    finally:
        assert s.stop() == 0, s.log()
