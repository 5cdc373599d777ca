"""List features, append views (edge lists) and graph models, black-box: the real binary, real
NATS JetStream and Redis, tritonclient over HTTP and gRPC, and examples/graph/sage.py (NumPy) as
the reference outside Flotilla for sampling and the GraphSAGE forward pass."""
import concurrent.futures
import datetime as dt
import json
import shutil
import sys
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis as redis_client
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import ROOT, Server, wait_for
from streams import NatsSource
from test_features import cli, column, online, post

GRAPH = ROOT / "examples" / "graph"
sys.path.insert(0, str(GRAPH))
import sage  # noqa: E402

REDIS_DB = 12  # a database of its own on the local Redis, flushed by the tests that use it
HOPS = [10, 5]


def iso(seconds):
    return (dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=seconds)).isoformat()


# --- list dtypes end to end ------------------------------------------------------------------------

LISTS = """
[[entity]]
name = "user"
join_key = "user_id"

[[feature_view]]
name = "prefs"
entities = ["user"]
source = { path = "prefs.parquet" }
features = [
  { name = "tags", dtype = "string[]" },
  { name = "scores", dtype = "Array(Float32)" },
  { name = "seen", dtype = "int64[]" },
  { name = "age", dtype = "int64" },
]

[[feature_view]]
name = "recent"
entities = ["user"]
max_items = 3
push_source = "recent_push"
source = { path = "recent.csv" }
features = [{ name = "item", dtype = "int64[]" }, { name = "rating", dtype = "float64[]" }]
"""


def list_repo(tmp_path):
    repo = tmp_path / "lists"
    repo.mkdir()
    (repo / "repo.toml").write_text(LISTS)
    ts = pa.array([dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)] * 3, type=pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({
        "user_id": [1, 2, 3],
        "tags": pa.array([["a", "b"], [], None], type=pa.list_(pa.string())),
        "scores": pa.array([[0.5, 1.5], [2.0], [3.0]], type=pa.large_list(pa.float64())),
        "seen": pa.array([[7, 8, 9], [1], []], type=pa.list_(pa.int32())),
        "age": [30, 40, 50],
        "event_timestamp": ts,
    }), repo / "prefs.parquet")
    # An edge file: one item per row (scalar columns), or several in a JSON array cell.
    (repo / "recent.csv").write_text(
        "user_id,item,rating,event_timestamp\n"
        f"1,10,1.0,{iso(1)}\n1,11,2.0,{iso(2)}\n1,12,3.0,{iso(3)}\n1,13,4.0,{iso(4)}\n"
        f"2,\"[20, 21]\",\"[5.0, 6.0]\",{iso(5)}\n")
    return repo


def test_list_features_ingest_serve_push_and_train(tmp_path):
    repo = list_repo(tmp_path)
    store = f"embedded:{tmp_path}/online.redb"
    out = cli("ingest", "--feature-repo", str(repo), "--online-store", store).stdout
    # User 1's four items arrive in one batch: the cap of 3 keeps the newest, so one row is superseded.
    assert "prefs: 3 rows read, 3 applied" in out and "recent: 5 rows read, 4 applied, 1 superseded" in out, out
    s = Server(GRAPH / "repository", "--feature-repo", str(repo), env={"FLOTILLA_ONLINE_STORE": store})
    try:
        r = online(s, ["prefs:tags", "prefs:scores", "prefs:seen", "prefs:age", "recent:item", "recent:rating"],
                   {"user_id": [1, 2, 3, 4]})
        # Feast's JSON: a list value is a plain array of its items.
        assert column(r, "tags")["values"] == [["a", "b"], [], None, None]
        assert column(r, "tags")["statuses"] == ["PRESENT", "PRESENT", "NULL_VALUE", "NOT_FOUND"]
        assert column(r, "scores")["values"][:3] == [[0.5, 1.5], [2.0], [3.0]]
        assert column(r, "seen")["values"][:3] == [[7, 8, 9], [1], []]
        assert column(r, "age")["values"][:3] == [30, 40, 50]
        # The append view kept the newest 3 items of user 1, oldest first.
        assert column(r, "item")["values"][:2] == [[11, 12, 13], [20, 21]]
        assert column(r, "rating")["values"][:2] == [[2.0, 3.0, 4.0], [5.0, 6.0]]
        # Push: lists as JSON arrays; a scalar appends one item; a redelivered row appends nothing.
        row = {"user_id": [1], "item": [14], "rating": [9.5], "event_timestamp": [iso(10)]}
        assert post(s, "/push", {"push_source_name": "recent_push", "df": row}).json() == {"applied": 1, "stale": 0}
        assert post(s, "/push", {"push_source_name": "recent_push", "df": row}).json() == {"applied": 0, "stale": 1}
        late = {"user_id": [1], "item": [[99]], "rating": [[0.0]], "event_timestamp": [iso(0)]}
        assert post(s, "/push", {"push_source_name": "recent_push", "df": late}).json()["applied"] == 0, \
            "older than every kept item: beyond the cap"
        pushed = {"user_id": [5], "tags": [["x", "y", "z"]], "scores": [[1, 2]], "seen": [[]], "age": [7],
                  "event_timestamp": [iso(20)]}
        assert post(s, "/push", {"push_source_name": "prefs", "df": pushed}).json() == {"applied": 1, "stale": 0}
        r = online(s, ["recent:item", "prefs:tags", "prefs:scores"], {"user_id": [1, 5]})
        assert column(r, "item")["values"][0] == [12, 13, 14]
        assert column(r, "tags")["values"][1] == ["x", "y", "z"]
        assert column(r, "scores")["values"][1] == [1.0, 2.0]
        # Bad list values: clear 400s that name the feature and item.
        for df, message in [
            ({"tags": [["a", None]]}, "item 1 is null"),
            ({"tags": [[1]]}, "item 0: expected string"),
            ({"seen": [["x"]]}, "expected int64"),
            ({"seen": [{"a": 1}]}, "expected int64[]"),
        ]:
            body = {"push_source_name": "prefs", "df": {"user_id": [9], "event_timestamp": [iso(1)], **df}}
            resp = post(s, "/push", body)
            assert resp.status_code == 400 and message in resp.text, resp.text
        ragged = {"user_id": [1], "item": [[1, 2]], "rating": [[1.0]], "event_timestamp": [iso(30)]}
        resp = post(s, "/push", {"push_source_name": "recent_push", "df": ragged})
        assert resp.status_code == 400 and "'rating' has 1 items but the features before it have 2" in resp.text
    finally:
        assert s.stop() == 0, s.log()
    # A training set carries list features as Arrow lists.
    entities = tmp_path / "entities.parquet"
    pq.write_table(pa.table({"user_id": [1, 2, 3],
                             "event_timestamp": pa.array([dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)] * 3,
                                                         type=pa.timestamp("us", tz="UTC"))}), entities)
    train = tmp_path / "train.parquet"
    cli("training-set", "--feature-repo", str(repo), "--entities", str(entities),
        "--features", "prefs:tags,prefs:seen,prefs:age", "--out", str(train))
    t = pq.read_table(train).sort_by("user_id")
    assert t.column("tags").to_pylist() == [["a", "b"], [], None]
    assert t.column("seen").to_pylist() == [[7, 8, 9], [1], []]
    assert pa.types.is_list(t.schema.field("seen").type)
    # An append view's lists as of each entity row: the items up to then, the newest 3 kept, as
    # the online store kept them from the same file.
    at = lambda s: dt.datetime.fromisoformat(iso(s))  # noqa: E731
    pq.write_table(pa.table({"user_id": [1, 1, 1, 2, 2],
                             "event_timestamp": pa.array([at(0.5), at(2), at(60), at(4), at(60)],
                                                         type=pa.timestamp("us", tz="UTC"))}), entities)
    cli("training-set", "--feature-repo", str(repo), "--entities", str(entities),
        "--features", "recent:item,recent:rating", "--out", str(train))
    t = pq.read_table(train)
    assert t.column("item").to_pylist() == [None, [10, 11], [11, 12, 13], None, [20, 21]]
    assert t.column("rating").to_pylist() == [None, [1.0, 2.0], [2.0, 3.0, 4.0], None, [5.0, 6.0]]


def test_list_files_with_bad_items_name_the_column_and_row(tmp_path):
    repo = list_repo(tmp_path)
    (repo / "recent.csv").write_text(f"user_id,item,rating,event_timestamp\n1,\"[1, null]\",\"[1.0, 2.0]\",{iso(1)}\n")
    p = cli("ingest", "--feature-repo", str(repo), "--online-store", f"embedded:{tmp_path}/o.redb",
            "--view", "recent", check=False)
    assert p.returncode != 0 and "column 'item' row 1" in p.stderr and "item 1 is null" in p.stderr, p.stderr
    (repo / "recent.csv").write_text(f"user_id,item,rating,event_timestamp\n1,[1,1.0,{iso(1)}\n")
    p = cli("ingest", "--feature-repo", str(repo), "--online-store", f"embedded:{tmp_path}/o.redb",
            "--view", "recent", check=False)
    assert p.returncode != 0 and "column 'item' row 1" in p.stderr and "not JSON" in p.stderr, p.stderr
    bad = LISTS.replace('{ name = "item", dtype = "int64[]" }', '{ name = "item", dtype = "int64" }')
    (repo / "repo.toml").write_text(bad)
    p = cli("ingest", "--feature-repo", str(repo), "--online-store", f"embedded:{tmp_path}/o.redb", check=False)
    assert p.returncode != 0 and "repo.toml:" in p.stderr and "must be a list, such as 'int64[]'" in p.stderr, p.stderr


@pytest.fixture
def redis_db():
    r = redis_client.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    r.flushdb()
    yield r
    r.flushdb()


def test_append_view_on_redis_keeps_every_concurrent_item_and_the_cap(tmp_path, redis_db):
    """Many writers append to one entity at once: compare-and-set on the server loses none."""
    repo = list_repo(tmp_path)
    (repo / "repo.toml").write_text(LISTS.replace("max_items = 3", "max_items = 500"))
    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    s = Server(GRAPH / "repository", "--feature-repo", str(repo), env={"FLOTILLA_ONLINE_STORE": url})
    try:
        def push(i):
            row = {"user_id": [7], "item": [i], "rating": [float(i)], "event_timestamp": [iso(i)]}
            return post(s, "/push", {"push_source_name": "recent_push", "df": row}).json()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(push, range(200)))
        assert all(a == {"applied": 1, "stale": 0} for a in answers), answers[:5]
        r = online(s, ["recent:item", "recent:rating"], {"user_id": [7]})
        assert column(r, "item")["values"][0] == list(range(200)), "every item once, in time order"
    finally:
        assert s.stop() == 0, s.log()


def test_a_stream_appends_edges_and_redelivery_adds_nothing(tmp_path):
    source = NatsSource()
    repo = list_repo(tmp_path)
    text = LISTS.replace('push_source = "recent_push"', 'push_source = "recent_push"\n' + source.decl())
    (repo / "repo.toml").write_text(text)
    store = f"embedded:{tmp_path}/online.redb"
    s = Server(GRAPH / "repository", "--feature-repo", str(repo),
               env={"FLOTILLA_ONLINE_STORE": store, "FLOTILLA_CONSUME_STREAMS": "true"})
    try:
        # The consumer creates the stream when it starts: publish once it has.
        wait_for(lambda: "consuming" in s.log(), what="the consumer to start")
        rows = [{"user_id": 3, "item": 100 + i, "rating": 1.0, "event_timestamp": iso(100 + i)} for i in range(5)]
        source.publish(rows + rows[:2] + [{"user_id": 3, "item": [1, 2], "rating": [1.0], "event_timestamp": iso(1)}])

        def items():
            return column(online(s, ["recent:item"], {"user_id": [3]}), "item")["values"][0]
        wait_for(lambda: items() == [102, 103, 104], what="the newest 3 items of the stream")
    finally:
        assert s.stop() == 0, s.log()


# --- neighbourhood sampling, checked on a hand-made graph -----------------------------------------

SMALL = """
[[entity]]
name = "node"
join_key = "node_id"

[[feature_view]]
name = "props"
entities = ["node"]
features = [{ name = "nid", dtype = "float32" }]

[[feature_view]]
name = "out"
entities = ["node"]
max_items = 3
features = [{ name = "to", dtype = "int64[]" }]

[[feature_view]]
name = "plain"
entities = ["node"]
features = [{ name = "nbrs", dtype = "int64[]" }]
"""


def echo_model(folder, name, inputs, batch):
    """An ONNX model that returns its inputs (as o_<name>): the served tensors, seen from outside."""
    import onnx
    from onnx import TensorProto, helper
    types = {"FP32": TensorProto.FLOAT, "INT64": TensorProto.INT64}
    lead = ["batch"] if batch else []
    ins = [helper.make_tensor_value_info(n, types[t], lead + list(d)) for n, t, d in inputs]
    outs = [helper.make_tensor_value_info("o_" + n, types[t], lead + list(d)) for n, t, d in inputs]
    nodes = [helper.make_node("Identity", [n], ["o_" + n]) for n, _, _ in inputs]
    model = helper.make_model(helper.make_graph(nodes, name, ins, outs), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (folder / name / "1").mkdir(parents=True)
    onnx.save(model, str(folder / name / "1" / "model.onnx"))
    dims = lambda d: ", ".join(str(x) for x in d)  # noqa: E731
    cfg = "\n".join([f'name: "{name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {8 if batch else 0}",
                     "input [" + ",".join(f'{{ name: "{n}" data_type: TYPE_{t} dims: [ {dims(d)} ] }}'
                                          for n, t, d in inputs) + "]",
                     "output [" + ",".join(f'{{ name: "o_{n}" data_type: TYPE_{t} dims: [ {dims(d)} ] }}'
                                           for n, t, d in inputs) + "]"])
    (folder / name / "config.pbtxt").write_text(cfg)


@pytest.fixture(scope="module")
def small_graph(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    repo, models = root / "features", root / "models"
    repo.mkdir()
    models.mkdir()
    (repo / "repo.toml").write_text(SMALL)
    tree = [("x0", "FP32", [1]), ("x1", "FP32", [2, 1]), ("x2", "FP32", [2, 2, 1]),
            ("mask1", "FP32", [2]), ("mask2", "FP32", [2, 2])]
    common = 'node = "node"\nedges = ["out:to", "plain:nbrs"]\nfeatures = ["props:nid"]\nmissing = -1\n'
    echo_model(models, "newest", tree, batch=True)
    (models / "newest" / "graph.toml").write_text(common + "hops = [2, 2]\n")
    echo_model(models, "uniform", [("x0", "FP32", [1]), ("x1", "FP32", [3, 1]), ("mask1", "FP32", [3])], batch=True)
    (models / "uniform" / "graph.toml").write_text(common + 'hops = [3]\nsample = "uniform"\nseed = 7\n')
    echo_model(models, "edges", [("x", "FP32", [-1, 1]), ("edge_index", "INT64", [2, -1]),
                                 ("target_index", "INT64", [-1])], batch=False)
    (models / "edges" / "graph.toml").write_text(common + 'hops = [2, 2]\nlayout = "edge_index"\n')
    (models / "broken").mkdir()
    (models / "broken" / "1").mkdir()
    shutil.copy(models / "newest" / "1" / "model.onnx", models / "broken" / "1" / "model.onnx")
    (models / "broken" / "config.pbtxt").write_text(
        (models / "newest" / "config.pbtxt").read_text().replace('name: "newest"', 'name: "broken"'))
    (models / "broken" / "graph.toml").write_text('node = "node"\nedges = ["out:to"]\nhops = [2]\n'
                                                  'features = ["props:nid"]\nsample = "sideways"\n')
    s = Server(models, "--feature-repo", str(repo))
    push = lambda source, df: post(s, "/push", {"push_source_name": source, "df": df}).json()  # noqa: E731
    # Node ids double as their feature, so the served tensors show which node sits in which slot.
    assert push("props", {"node_id": [1, 2, 3, 4, 5, 6], "nid": [1, 2, 3, 4, 5, 6],
                          "event_timestamp": [iso(0)] * 6})["applied"] == 6
    # 1 paid 2, 3, 4, 5 (the cap of 3 keeps 3, 4, 5); a plain list of 1 holds 9, older than them all.
    assert push("out", {"node_id": [1] * 4, "to": [2, 3, 4, 5], "event_timestamp": [iso(t) for t in (1, 2, 3, 4)]})
    assert push("plain", {"node_id": [1, 5], "nbrs": [[9], [6, 7]], "event_timestamp": [iso(0), iso(6)]})
    assert push("out", {"node_id": [5], "to": [1], "event_timestamp": [iso(5)]})
    yield s
    assert s.stop() == 0, s.log()


def infer(server, model, targets, protocol="http"):
    if protocol == "http":
        c = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        t = httpclient.InferInput("node_id", [len(targets)], "INT64")
    else:
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        t = grpcclient.InferInput("node_id", [len(targets)], "INT64")
    t.set_data_from_numpy(np.asarray(targets, dtype=np.int64))
    return c.infer(model, [t])


def test_two_hops_newest_first_with_caps_padding_and_missing_nodes(small_graph):
    r = infer(small_graph, "newest", [1, 99])
    x1, x2 = r.as_numpy("o_x1")[..., 0], r.as_numpy("o_x2")[..., 0]
    m1, m2 = r.as_numpy("o_mask1"), r.as_numpy("o_mask2")
    # Node 1: candidates 3, 4, 5 (out, kept by the cap) then 9 (plain, oldest): newest two are 5, 4.
    # Node 5: 1 (out, t=5), then 6, 7 (plain, t=6): newest two are 7 then 6. Node 4 has no edges.
    # Node 7 has no features: `missing` (-1). Node 99 does not exist: its x0 is missing too.
    np.testing.assert_array_equal(r.as_numpy("o_x0")[:, 0], [1, -1])
    np.testing.assert_array_equal(x1, [[5, 4], [0, 0]])
    np.testing.assert_array_equal(m1, [[1, 1], [0, 0]])
    np.testing.assert_array_equal(x2, [[[-1, 6], [0, 0]], [[0, 0], [0, 0]]])
    np.testing.assert_array_equal(m2, [[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    g = infer(small_graph, "newest", [1, 99], protocol="grpc")
    for name in ("o_x0", "o_x1", "o_x2", "o_mask1", "o_mask2"):
        np.testing.assert_array_equal(g.as_numpy(name), r.as_numpy(name))


def test_uniform_sampling_is_seeded_and_matches_its_definition(small_graph):
    a = infer(small_graph, "uniform", [1, 5]).as_numpy("o_x1")[..., 0]
    b = infer(small_graph, "uniform", [5, 1]).as_numpy("o_x1")[..., 0]
    np.testing.assert_array_equal(a, b[::-1], "the same node samples the same neighbours in any request")
    candidates = {1: [(2, 3), (3, 4), (4, 5), (0, 9)], 5: [(5, 1), (6, 6), (6, 7)]}
    for row, node in enumerate([1, 5]):
        chosen = sage.choose("uniform", candidates[node], 3, node, 1, seed=7)
        want = [candidates[node][i][1] for i in chosen]
        # Nodes 7 and 9 have no features: `missing`.
        np.testing.assert_array_equal(a[row], [n if n <= 6 else -1 for n in want])


def test_edge_index_layout(small_graph):
    r = infer(small_graph, "edges", [1])
    # Nodes in the order met: 1, then 5, 4 (hop 1), then 7, 6 (hop 2; 7 has no features).
    np.testing.assert_array_equal(r.as_numpy("o_x")[:, 0], [1, 5, 4, -1, 6])
    np.testing.assert_array_equal(r.as_numpy("o_edge_index"), [[1, 2, 3, 4], [0, 0, 1, 1]])
    np.testing.assert_array_equal(r.as_numpy("o_target_index"), [0])


def test_graph_request_errors_are_clear(small_graph):
    url = f"http://127.0.0.1:{small_graph.http_port}/v2/models"
    body = {"inputs": [{"name": "node_id", "datatype": "INT64", "shape": [1], "data": [1]}]}
    r = requests.post(f"{url}/broken/infer", json=body, timeout=10)
    assert r.status_code >= 400 and "graph.toml:5: sample: 'sideways' is not a sampling rule" in r.text, r.text
    r = requests.post(f"{url}/newest/infer", json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1],
                                                               "data": [1]}]}, timeout=10)
    assert r.status_code == 400 and "send the target nodes as input 'node_id'" in r.text, r.text
    r = requests.post(f"{url}/newest/infer", json={"inputs": [{"name": "node_id", "datatype": "FP32", "shape": [1],
                                                               "data": [1]}]}, timeout=10)
    assert r.status_code == 400 and "node_id" in r.text, r.text


# --- the example GraphSAGE fraud model: parity with NumPy over HTTP and gRPC ----------------------

@pytest.fixture(scope="module")
def fraud_server(tmp_path_factory):
    store = f"embedded:{tmp_path_factory.mktemp('graph')}/online.redb"
    feats = GRAPH / "features"
    out = cli("ingest", "--feature-repo", str(feats), "--online-store", store).stdout
    assert "paid:" in out and "paid_by:" in out, out
    s = Server(GRAPH / "repository", "--feature-repo", str(feats), env={"FLOTILLA_ONLINE_STORE": store})
    yield s
    assert s.stop() == 0, s.log()


@pytest.fixture(scope="module")
def reference():
    data = GRAPH / "features" / "data"
    out = pq.read_table(data / "payments_out.parquet")
    times = out.column("event_timestamp").cast(pa.int64()).to_numpy()
    src, dst = out.column("account_id").to_numpy(), out.column("dst").to_numpy()
    edges = sage.EdgeLists([(src, dst, times), (dst, src, times)], 50)
    acc = pq.read_table(data / "accounts.parquet")
    names = [f for f in acc.column_names if f not in ("account_id", "event_timestamp")]
    x = np.stack([acc.column(f).to_numpy() for f in names], axis=1).astype(np.float32)
    features = dict(zip(acc.column("account_id").to_pylist(), x))
    params = sage.onnx_params(GRAPH / "repository" / "fraud_sage" / "1" / "model.onnx")
    labels = pq.read_table(data / "labels.parquet").to_pydict()

    def score(targets):
        levels = sage.neighbourhood(edges, targets, HOPS)
        return sage.forward(params, *sage.tree_inputs(levels, HOPS, features))[:, 0]
    score.labels = dict(zip(labels["account_id"], labels["is_fraud"]))
    return score


def test_gnn_scores_equal_the_numpy_reference_over_http_and_grpc(fraud_server, reference):
    fraud = [a for a, y in reference.labels.items() if y][:10]
    targets = fraud + list(range(1, 31)) + [999_999]  # and an account the store has never seen
    want = reference(targets)
    for protocol in ("http", "grpc"):
        c = (httpclient if protocol == "http" else grpcclient).InferenceServerClient(
            f"127.0.0.1:{fraud_server.http_port if protocol == 'http' else fraud_server.grpc_port}")
        t = (httpclient if protocol == "http" else grpcclient).InferInput("account_id", [len(targets)], "INT64")
        t.set_data_from_numpy(np.asarray(targets, dtype=np.int64))
        got = c.infer("fraud_sage", [t]).as_numpy("score")[:, 0]
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=protocol)
    assert want[:10].mean() > 0.5 > want[10:40].mean(), "the model finds the planted rings"


def test_concurrent_graph_requests_are_batched_and_each_gets_its_own_neighbourhood(fraud_server, reference):
    url = f"http://127.0.0.1:{fraud_server.http_port}/v2/models/fraud_sage/infer"
    groups = [list(range(1 + 7 * i, 1 + 7 * i + 1 + i % 3)) for i in range(48)]

    def runs():
        """Engine runs and rows of fraud_sage so far, and the graph phases' metrics."""
        m = requests.get(f"http://127.0.0.1:{fraud_server.metrics_port}/metrics", timeout=10).text
        lines = [line for line in m.splitlines() if 'model="fraud_sage"' in line]
        total = lambda name: sum(float(x.split()[-1]) for x in lines if x.startswith(name))  # noqa: E731
        phases = [x for x in lines if x.startswith("flotilla_graph_input_duration_seconds_count")]
        return total("flotilla_inference_batch_size_count"), total("flotilla_inference_batch_size_sum"), phases

    def one(targets):
        body = {"inputs": [{"name": "account_id", "datatype": "INT64", "shape": [len(targets)], "data": targets}]}
        r = requests.post(url, json=body, timeout=30)
        assert r.status_code == 200, r.text
        return np.asarray(r.json()["outputs"][0]["data"], dtype=np.float64)
    count0, rows0, _ = runs()
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(one, groups))
    for targets, got in zip(groups, answers):
        np.testing.assert_allclose(got, reference(targets), atol=1e-5)
    count, rows, phases = runs()
    assert any('phase="fetch"' in p for p in phases) and any('phase="gather"' in p for p in phases), phases
    assert rows - rows0 == sum(len(g) for g in groups)
    # The model batch is joined: fewer engine runs than requests.
    assert count - count0 < len(groups), f"{count - count0} engine runs for {len(groups)} requests"
