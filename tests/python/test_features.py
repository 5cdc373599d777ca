"""The feature store, black-box: the real binary, real NATS JetStream and Redis, Feast's JSON,
tritonclient for enriched inference, and Feast's own point-in-time output as the reference."""
import datetime as dt
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import time
import uuid

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import redis as redis_client
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import BIN, EXAMPLES, ROOT, Server, wait_for
from streams import KafkaBroker, KafkaSource, NatsSource, RabbitSource

FEATURES = ROOT / "examples" / "features"
PIT = ROOT / "tests" / "fixtures" / "features" / "pit"
REDIS_DB = 13  # a database of its own on the local Redis, flushed by the tests that use it


def now_iso(offset_s=0.0):
    t = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=offset_s)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def cli(*args, check=True):
    p = subprocess.run([BIN, "features", *args], capture_output=True, text=True, timeout=300, cwd=ROOT)
    if check and p.returncode != 0:
        raise AssertionError(f"flotilla features {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
    return p


def post(server, path, body):
    return requests.post(f"http://127.0.0.1:{server.http_port}{path}", json=body, timeout=30)


def online(server, features, entities, **extra):
    r = post(server, "/get-online-features", {"features": features, "entities": entities, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def column(response, name):
    i = response["metadata"]["feature_names"].index(name)
    return response["results"][i]


TXN_VIEW = """
[[entity]]
name = "card"
join_key = "card_id"
value_type = "int64"

[[feature_view]]
name = "txn"
entities = ["card"]
ttl = "0"
push_source = "txn_push"
{stream}
features = [
  {{ name = "amount", dtype = "float32" }},
  {{ name = "n", dtype = "int64" }},
  {{ name = "tag", dtype = "string" }},
]
"""


def txn_repo(tmp_path, stream=""):
    repo = tmp_path / f"features-{uuid.uuid4().hex[:8]}"
    repo.mkdir()
    (repo / "repo.toml").write_text(TXN_VIEW.format(stream=stream))
    return repo


@pytest.fixture
def store_path(tmp_path):
    return f"embedded:{tmp_path}/online.redb"


# --- batch ingestion and Feast's get-online-features ------------------------------------------

@pytest.fixture(scope="module")
def example_server(tmp_path_factory):
    """The example feature repository ingested into a fresh embedded store, served with the examples."""
    store = f"embedded:{tmp_path_factory.mktemp('online')}/online.redb"
    out = cli("ingest", "--feature-repo", str(FEATURES), "--online-store", store).stdout
    assert "card_profile:" in out and "card_txn_1h:" in out and "rows/s" in out, out
    s = Server(EXAMPLES, "--feature-repo", str(FEATURES), env={"FLOTILLA_ONLINE_STORE": store})
    s.online_store = store
    yield s
    assert s.stop() == 0, s.log()


def latest_rows(path, key, features):
    """The newest row per key (event time, then created), as Feast and Flotilla keep online."""
    table = pq.read_table(path)
    rows = table.to_pylist()
    best = {}
    for r in rows:
        k = r[key]
        order = (r["event_timestamp"], r.get("created") or dt.datetime.min.replace(tzinfo=dt.timezone.utc))
        if k not in best or order >= best[k][0]:
            best[k] = (order, r)
    return {k: v[1] for k, v in best.items()}


def test_ingested_values_are_the_latest_rows_with_feast_shaped_response(example_server):
    profile = latest_rows(FEATURES / "data" / "card_profile.parquet", "card_id",
                          ["card_age_days", "avg_amount_30d", "home_country"])
    cards = sorted(profile)[:50] + [999_999_999]
    r = online(example_server, ["card_profile:card_age_days", "card_profile:home_country"], {"card_id": cards})
    assert r["metadata"]["feature_names"] == ["card_id", "card_age_days", "home_country"]
    keys = r["results"][0]
    assert keys["values"] == cards and set(keys["statuses"]) == {"PRESENT"}
    assert set(keys["event_timestamps"]) == {"1970-01-01T00:00:00Z"}
    age, country = column(r, "card_age_days"), column(r, "home_country")
    for i, card in enumerate(cards[:-1]):
        want = profile[card]
        assert math.isclose(age["values"][i], want["card_age_days"], rel_tol=1e-6)
        assert country["values"][i] == want["home_country"]
        ts = want["event_timestamp"].astimezone(dt.timezone.utc)
        assert dt.datetime.fromisoformat(age["event_timestamps"][i].replace("Z", "+00:00")) == ts
        # The example data is from 2026-11-01: rows older than the 30-day ttl are flagged.
        fresh = dt.datetime.now(dt.timezone.utc) - ts <= dt.timedelta(days=30)
        assert age["statuses"][i] == ("PRESENT" if fresh else "OUTSIDE_MAX_AGE")
    assert age["values"][-1] is None and age["statuses"][-1] == "NOT_FOUND"
    assert age["event_timestamps"][-1] == "1970-01-01T00:00:00Z"

    full = online(example_server, ["card_profile:card_age_days"], {"card_id": cards[:2]}, full_feature_names=True)
    assert full["metadata"]["feature_names"] == ["card_id", "card_profile__card_age_days"]
    service = post(example_server, "/get-online-features",
                   {"feature_service": "fraud_v1", "entities": {"card_id": cards[:3]}}).json()
    assert len(service["metadata"]["feature_names"]) == 1 + 8
    assert requests.get(f"http://127.0.0.1:{example_server.http_port}/health", timeout=5).status_code == 200


@pytest.mark.parametrize("body,status,message", [
    ({"features": ["nope:x"], "entities": {"card_id": [1]}}, 404, "unknown feature view 'nope'"),
    ({"features": ["card_profile:nope"], "entities": {"card_id": [1]}}, 404, "has no feature 'nope'"),
    ({"features": ["card_profile"], "entities": {"card_id": [1]}}, 400, "must be \"view:feature\""),
    ({"feature_service": "nope", "entities": {"card_id": [1]}}, 404, "unknown feature service 'nope'"),
    ({"features": ["card_profile:card_age_days"], "entities": {"card_id": ["abc"]}}, 400, "entities.card_id[0]: expected int64"),
    ({"features": ["card_profile:card_age_days"], "entities": {"card_id": [1.5]}}, 400, "expected int64"),
    ({"features": ["card_profile:card_age_days"], "entities": {"card_id": [None]}}, 400, "is null"),
    ({"features": ["card_profile:card_age_days"], "entities": {"card_id": 1}}, 400, "must be a list"),
    ({"features": ["card_profile:card_age_days"], "entities": {"user": [1]}}, 400, "unknown entity key 'user'"),
    ({"features": ["card_profile:card_age_days"], "entities": {}}, 400, "needs entity key 'card_id'"),
    ({"features": ["card_profile:card_age_days"]}, 400, "has no 'entities'"),
    ({"entities": {"card_id": [1]}}, 400, "no 'features' and no 'feature_service'"),
    ({"features": "card_profile:card_age_days", "entities": {"card_id": [1]}}, 400, "must be a list of strings"),
    ({"features": ["card_profile:card_age_days"], "entities": {"card_id": list(range(100_001))}}, 400, "at most 100000"),
    ([1, 2], 400, "must be a JSON object"),
])
def test_get_online_features_rejects_bad_requests_clearly(example_server, body, status, message):
    r = post(example_server, "/get-online-features", body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"], r.text


def test_malformed_and_oversized_bodies(example_server):
    url = f"http://127.0.0.1:{example_server.http_port}"
    r = requests.post(url + "/get-online-features", data=b"{not json", timeout=5)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = requests.post(url + "/push", data=b"\xff\xfe", timeout=5)
    assert r.status_code == 400
    big = b'{"features": ["card_profile:card_age_days"], "entities": {"card_id": [' + b"1," * (40 << 20) + b"1]}}"
    r = requests.post(url + "/get-online-features", data=big, timeout=60)
    assert r.status_code == 413, r.status_code
    assert example_server.alive()


def test_cli_get_prints_feast_json(example_server, tmp_path):
    # The server holds its store; the CLI reads a store of its own.
    store = f"embedded:{tmp_path}/online.redb"
    cli("ingest", "--feature-repo", str(FEATURES), "--online-store", store, "--view", "card_profile")
    out = cli("get", "--feature-repo", str(FEATURES), "--online-store", store,
              "--features", "card_profile:home_country", "--entities", '{"card_id": [1]}').stdout
    assert json.loads(out)["metadata"]["feature_names"] == ["card_id", "home_country"]
    # The embedded store belongs to one process: the server's is refused with a way out.
    locked = cli("ingest", "--feature-repo", str(FEATURES), "--online-store", example_server.online_store, check=False)
    assert locked.returncode != 0 and "open in another process" in locked.stderr and "POST /push" in locked.stderr
    bad_entities = cli("get", "--feature-repo", str(FEATURES), "--online-store", store, "--features",
                       "card_profile:home_country", "--entities", "card_id=1", check=False)
    assert bad_entities.returncode != 0 and "--entities must be JSON" in bad_entities.stderr


# --- push: last write wins on event time --------------------------------------------------------

def test_push_keeps_the_newest_event_whatever_the_arrival_order(tmp_path, store_path):
    repo = txn_repo(tmp_path)
    s = Server(EXAMPLES, "--feature-repo", str(repo), env={"FLOTILLA_ONLINE_STORE": store_path})
    try:
        def push(card, ts, amount):
            return post(s, "/push", {"push_source_name": "txn_push", "to": "online", "df": {
                "card_id": [card], "event_timestamp": [ts], "amount": [amount], "n": [1], "tag": ["x"]}})
        assert push(1, "2026-11-02T00:00:00Z", 2.0).json() == {"applied": 1, "stale": 0}
        assert push(1, "2026-11-01T00:00:00Z", 1.0).json() == {"applied": 0, "stale": 1}
        assert push(1, "2026-11-02T00:00:00+00:00", 3.0).json() == {"applied": 1, "stale": 0}, "equal event time: later wins"
        r = online(s, ["txn:amount", "txn:tag"], {"card_id": [1]})
        assert column(r, "amount")["values"] == [3.0]
        assert column(r, "amount")["event_timestamps"] == ["2026-11-02T00:00:00Z"]
        # A row without some features stores them as missing (NULL_VALUE).
        post(s, "/push", {"push_source_name": "txn", "df": {"card_id": [2], "event_timestamp": ["2026-11-02T00:00:00Z"]}})
        assert column(online(s, ["txn:amount"], {"card_id": [2]}), "amount")["statuses"] == ["NULL_VALUE"]

        bad = [
            ({"push_source_name": "nope", "df": {"card_id": [1]}}, 404, "unknown push source 'nope'"),
            ({"df": {"card_id": [1]}}, 400, "'push_source_name'"),
            ({"push_source_name": "txn_push", "df": {"card_id": [1], "amount": [1.0]}}, 400, "event time) is missing"),
            ({"push_source_name": "txn_push", "df": {"card_id": [1], "event_timestamp": ["yesterday"]}}, 400, "is not a timestamp"),
            ({"push_source_name": "txn_push", "df": {"card_id": ["x"], "event_timestamp": ["2026-11-02T00:00:00Z"]}}, 400, "join key 'card_id'"),
            ({"push_source_name": "txn_push", "df": {"card_id": [1], "event_timestamp": ["2026-11-02T00:00:00Z"], "amount": ["a lot"]}}, 400, "feature 'amount'"),
            ({"push_source_name": "txn_push", "df": {"card_id": [1, 2], "event_timestamp": ["2026-11-02T00:00:00Z"]}}, 400, "has 1 values but other columns have 2"),
            ({"push_source_name": "txn_push", "to": "offline", "df": {"card_id": [1]}}, 400, "online store only"),
            ({"push_source_name": "txn_push", "df": [1]}, 400, "'df' must map"),
        ]
        for body, status, message in bad:
            r = post(s, "/push", body)
            assert r.status_code == status and message in r.json()["error"], (body, r.status_code, r.text)
        assert column(online(s, ["txn:amount"], {"card_id": [1]}), "amount")["values"] == [3.0], "rejected pushes wrote nothing"
    finally:
        assert s.stop() == 0, s.log()


# --- enrichment through tritonclient -------------------------------------------------------------

FRAUD_FEATURES = ["card_txn_1h:last_amount", "card_txn_1h:last_hour", "card_txn_1h:last_merchant_category",
                  "card_txn_1h:last_country", "card_profile:card_age_days", "card_txn_1h:txn_count_1h",
                  "card_profile:avg_amount_30d", "card_txn_1h:last_distance_km"]


def push_fresh_cards(server, cards):
    rng = np.random.default_rng(7)
    n = len(cards)
    txn = {"card_id": cards, "event_timestamp": [now_iso(-5)] * n,
           "last_amount": rng.lognormal(3.5, 1.2, n).round(2).tolist(), "last_hour": rng.integers(0, 24, n).tolist(),
           "last_merchant_category": rng.integers(0, 12, n).tolist(), "last_country": rng.integers(0, 30, n).tolist(),
           "last_distance_km": [None if i % 4 == 0 else float(i) for i in range(n)],
           "txn_count_1h": rng.integers(0, 6, n).tolist()}
    assert post(server, "/push", {"push_source_name": "card_txn_push", "df": txn}).status_code == 200
    prof = {"card_id": cards[:-1], "event_timestamp": [now_iso(-60)] * (n - 1),
            "card_age_days": rng.exponential(400, n - 1).round(1).tolist(),
            "avg_amount_30d": [None if i % 3 == 0 else 50.0 + i for i in range(n - 1)],
            "home_country": rng.integers(0, 30, n - 1).tolist()}
    assert post(server, "/push", {"push_source_name": "card_profile", "df": prof}).status_code == 200


def reference_input(server, cards):
    """input__0 as the model expects it, from get-online-features (NaN for missing or expired)."""
    r = online(server, FRAUD_FEATURES, {"card_id": cards})
    cols = []
    for f in FRAUD_FEATURES:
        c = column(r, f.split(":")[1])
        cols.append([v if (s == "PRESENT" and v is not None) else np.nan for v, s in zip(c["values"], c["statuses"])])
    return np.array(cols, dtype=np.float32).T


def test_inference_with_only_the_entity_key_over_http_and_grpc(example_server):
    cards = [101, 202, 303, 404, 505, 987_654_321]  # the last has no profile row at all
    push_fresh_cards(example_server, cards)
    x = reference_input(example_server, cards)
    assert np.isnan(x[-1, 4]) and np.isnan(x[0, 7]), "missing features arrive as NaN"

    http = httpclient.InferenceServerClient(f"127.0.0.1:{example_server.http_port}")
    direct_in = httpclient.InferInput("input__0", list(x.shape), "FP32")
    direct_in.set_data_from_numpy(x)
    direct = http.infer("fraud_xgb", [direct_in]).as_numpy("output__0")

    key = np.array(cards, dtype=np.int64)
    for binary in (True, False):
        k = httpclient.InferInput("card_id", [len(cards)], "INT64")
        k.set_data_from_numpy(key, binary_data=binary)
        got = http.infer("fraud_xgb", [k]).as_numpy("output__0")
        np.testing.assert_array_equal(got, direct)

    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{example_server.grpc_port}")
    k = grpcclient.InferInput("card_id", [len(cards), 1], "INT64")
    k.set_data_from_numpy(key.reshape(-1, 1))
    got = grpc.infer("fraud_xgb", [k]).as_numpy("output__0")
    np.testing.assert_array_equal(got, direct)
    assert any(float(v) != float(direct[0, 0]) for v in direct[1:, 0]), "different cards, different scores"

    metrics = requests.get(f"http://127.0.0.1:{example_server.metrics_port}/metrics", timeout=5).text
    assert 'flotilla_feature_enrich_duration_seconds_count{model="fraud_xgb"}' in metrics
    assert 'flotilla_feature_values_served_total{status="NOT_FOUND",view="card_profile"}' in metrics
    # freshness: the pushed rows' event times (5 s and 60 s ago) are the newest each view holds
    pushed = time.time() - 5
    newest = metric(example_server, "flotilla_feature_view_newest_event_timestamp_seconds", view="card_txn_1h")
    assert abs(newest - pushed) < 2, (newest, pushed)
    assert metric(example_server, "flotilla_feature_view_newest_event_timestamp_seconds", view="card_profile") < newest


def test_enrichment_errors_are_clear(example_server):
    url = f"http://127.0.0.1:{example_server.http_port}/v2/models/fraud_xgb/infer"
    cases = [
        ({"inputs": [{"name": "other", "datatype": "INT64", "shape": [1], "data": [1]}]}, "send the entity key input 'card_id'"),
        ({"inputs": [{"name": "card_id", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, "send INT64 or INT32, not FP32"),
        ({"inputs": [{"name": "card_id", "datatype": "INT64", "shape": [1, 2], "data": [1, 2]}]}, "must be [rows] or [rows, 1]"),
        ({"inputs": [{"name": "card_id", "datatype": "INT64", "shape": [0], "data": []}]}, "hold no rows"),
        ({"inputs": [{"name": "card_id", "datatype": "BYTES", "shape": [1], "data": ["1"]}]}, "send INT64 or INT32, not BYTES"),
    ]
    for body, message in cases:
        r = requests.post(url, json=body, timeout=10)
        assert r.status_code == 400 and message in r.json()["error"], (body, r.text)
    assert example_server.alive()


# --- streams -------------------------------------------------------------------------------------

def metric(server, name, default=0.0, **labels):
    """The sample of `name` with exactly `labels`, or `default` when there is none."""
    text = requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{") and line.split("}")[0][len(name) + 1:] == want:
            return float(line.rsplit(" ", 1)[1])
    return default


@pytest.fixture(scope="session")
def kafka_broker():
    broker = KafkaBroker()
    yield broker
    broker.stop()


@pytest.fixture(params=["nats", "kafka", "rabbitmq"])
def stream_source(request):
    """A fresh subject (NATS JetStream), topic (Kafka on a tansu broker) or queue (RabbitMQ) to consume from."""
    sources = {"nats": NatsSource, "rabbitmq": RabbitSource,
               "kafka": lambda: KafkaSource(request.getfixturevalue("kafka_broker"))}
    source = sources[request.param]()
    yield source
    source.close()


def consuming_server(repo, store_path):
    """A server consuming the streams of `repo`, once its consumer is up."""
    s = Server(EXAMPLES, "--feature-repo", str(repo),
               env={"FLOTILLA_ONLINE_STORE": store_path, "FLOTILLA_CONSUME_STREAMS": "true"})
    wait_for(lambda: "consuming" in s.log(), what="the consumer to start")
    return s


def test_stream_rows_and_dead_letters(tmp_path, store_path, stream_source):
    src = stream_source
    repo = txn_repo(tmp_path, src.decl())
    s = consuming_server(repo, store_path)
    try:
        rows = [{"card_id": i, "event_timestamp": "2026-11-02T00:00:00Z", "amount": i / 2, "n": i, "tag": f"t{i}"}
                for i in range(200)]
        old = {"card_id": 5, "event_timestamp": "2026-11-01T00:00:00Z", "amount": -1.0, "n": -1, "tag": "old"}
        bad = [b"not json", json.dumps([1, 2]).encode(), json.dumps({"card_id": "x", "event_timestamp": "2026-11-02T00:00:00Z"}).encode(),
               json.dumps({"card_id": 7}).encode()]
        src.publish(rows + [old] + bad)
        wait_for(lambda: metric(s, "flotilla_feature_stream_messages_total", source=src.label, outcome="ok") >= 201,
                 what="201 rows applied")
        wait_for(lambda: metric(s, "flotilla_feature_stream_messages_total", source=src.label, outcome="dead_letter") >= 4,
                 what="4 dead letters")
        r = online(s, ["txn:amount", "txn:n", "txn:tag"], {"card_id": list(range(200))})
        assert column(r, "n")["values"] == list(range(200)), "the late row for card 5 did not overwrite"
        assert set(column(r, "n")["statuses"]) == {"PRESENT"}
        dead = src.dead_letters(4)
        reasons = sorted(d["reason"] for d in dead)
        assert any("not JSON" in m for m in reasons) and any("expected a JSON object" in m for m in reasons)
        assert any("join key 'card_id'" in m for m in reasons) and any("event time) is missing" in m for m in reasons)
        assert all(d["feature_view"] == "txn" and d["payload"] for d in dead)
        wait_for(lambda: metric(s, "flotilla_feature_stream_lag_messages", default=None, source=src.label) == 0,
                 what="lag 0")
        if src.kind in ("kafka", "rabbitmq"):
            assert src.committed() == 205, "every message, the dead letters too, is committed once handled"
    finally:
        assert s.stop() == 0, s.log()


def debezium(op, before=None, after=None, ts_ms=1_795_000_000_000, schema=None):
    payload = {"before": before, "after": after, "op": op, "ts_ms": ts_ms + 5,
               "source": {"connector": "postgresql", "db": "shop", "table": "cards", "ts_ms": ts_ms, "lsn": 1}}
    return {"schema": schema, "payload": payload} if schema is not None else payload


def test_debezium_change_events(tmp_path, store_path, stream_source):
    """Debezium's JSON envelopes, bare and with the schema wrapper: creates, updates, snapshot reads,
    deletes (NOT_FOUND after), tombstones (skipped), truncates, and bad events dead-lettered."""
    src = stream_source
    repo = txn_repo(tmp_path, src.decl())
    s = consuming_server(repo, store_path)
    try:
        # The schema says amount is a Connect Decimal (scale 2, base64 of 12345 = 123.45).
        schema = {"type": "struct", "name": "shop.cards.Envelope", "fields": [
            {"field": "after", "type": "struct", "optional": True, "fields": [
                {"field": "card_id", "type": "int64"},
                {"field": "amount", "type": "bytes", "name": "org.apache.kafka.connect.data.Decimal",
                 "parameters": {"scale": "2"}},
                {"field": "n", "type": "int64"}, {"field": "tag", "type": "string"}]}]}
        events = [
            debezium("c", after={"card_id": 1, "amount": "MDk=", "n": 1, "tag": "wrapped"}, schema=schema),
            debezium("c", after={"card_id": 2, "amount": 2.5, "n": 2, "tag": "bare"}),
            debezium("c", after={"card_id": 3, "amount": 3.5, "n": 3, "tag": "doomed"}),
            debezium("u", before={"card_id": 2}, after={"card_id": 2, "amount": 2.5, "n": 20, "tag": "updated"},
                     ts_ms=1_795_000_000_001),
            debezium("d", before={"card_id": 3, "amount": 3.5, "n": 3, "tag": "doomed"}),
            b"",  # the tombstone Debezium writes after a delete
            debezium("r", after={"card_id": 4, "amount": 4.0, "n": 4, "tag": "snapshot"}),
            debezium("x", after={"card_id": 5}),
            debezium("d", before=None),
        ]
        src.publish(events)
        wait_for(lambda: metric(s, "flotilla_feature_stream_messages_total", source=src.label, outcome="ok") >= 6,
                 what="6 change events applied")
        wait_for(lambda: metric(s, "flotilla_feature_stream_messages_total", source=src.label,
                                outcome="dead_letter") >= 2, what="2 dead letters")
        assert metric(s, "flotilla_feature_stream_messages_total", source=src.label, outcome="skipped") == 1
        r = online(s, ["txn:amount", "txn:n", "txn:tag"], {"card_id": [1, 2, 3, 4]})
        assert column(r, "amount")["values"][0] == pytest.approx(123.45, rel=1e-6)
        assert column(r, "n")["values"][:2] == [1, 20] and column(r, "n")["values"][3] == 4
        assert column(r, "n")["statuses"] == ["PRESENT", "PRESENT", "NOT_FOUND", "PRESENT"]
        assert column(r, "n")["event_timestamps"][1] == "2026-11-18T11:06:40.001Z", "event time is the commit time"
        reasons = sorted(d["reason"] for d in src.dead_letters(2))
        assert any("unknown Debezium op 'x'" in m for m in reasons), reasons
        assert any("'d' event without 'before'" in m for m in reasons), reasons
        src.publish([debezium("t", ts_ms=1_795_000_000_100)])
        wait_for(lambda: column(online(s, ["txn:n"], {"card_id": [1, 2, 4]}), "n")["statuses"] == ["NOT_FOUND"] * 3,
                 what="the truncate to empty the view")
    finally:
        assert s.stop() == 0, s.log()


def test_stream_kill_9_mid_ingest_loses_nothing(tmp_path, store_path, stream_source):
    src = stream_source
    # Small batches: many durable commits, so a kill lands in the middle of the ingestion.
    repo = txn_repo(tmp_path, src.decl(batch=10))
    total = 20_000
    env = {"FLOTILLA_ONLINE_STORE": store_path, "FLOTILLA_CONSUME_STREAMS": "true"}
    # Create the stream or topic by starting a consumer once, then publish everything.
    s = Server(EXAMPLES, "--feature-repo", str(repo), env=env)
    wait_for(lambda: "consuming" in s.log(), what="the consumer to start")
    s.stop()
    rows = [{"card_id": i, "event_timestamp": "2026-11-02T00:00:00Z", "amount": float(i), "n": i, "tag": "k"}
            for i in range(total)]
    src.publish(rows)
    kills = 0
    for _ in range(3):
        s = Server(EXAMPLES, "--feature-repo", str(repo), env=env)
        deadline = time.time() + 60
        applied = 0.0
        while applied == 0 and time.time() < deadline:
            applied = metric(s, "flotilla_feature_stream_messages_total", source=src.label, outcome="ok")
        assert applied > 0, "ingestion did not start:\n" + s.log()
        if applied >= total:
            s.stop()
            break
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait()
        kills += 1
    assert kills >= 1, "ingestion finished before the server could be killed; publish more rows"
    s = Server(EXAMPLES, "--feature-repo", str(repo), env=env)
    try:
        def all_present():
            r = online(s, ["txn:n"], {"card_id": list(range(total))})
            return column(r, "n")["values"] == list(range(total))
        wait_for(all_present, timeout=120, what="every row after the kills")
        wait_for(lambda: metric(s, "flotilla_feature_stream_lag_messages", default=None, source=src.label) == 0,
                 what="lag 0")
        if src.kind in ("kafka", "rabbitmq"):
            wait_for(lambda: src.committed() == total, what="every offset committed")
    finally:
        assert s.stop() == 0, s.log()


@pytest.fixture
def redis_db():
    r = redis_client.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    r.flushdb()
    yield r
    r.flushdb()


def test_redis_streams_with_pending_recovery_and_dead_letters(tmp_path, store_path, redis_db):
    key = f"flotilla_test:{uuid.uuid4().hex[:8]}"
    decl = f'stream = {{ type = "redis", url = "redis://127.0.0.1:6379/{REDIS_DB}", stream = "{key}", group = "g" }}'
    repo = txn_repo(tmp_path, decl)
    # Entries delivered to this consumer before a "crash" and never acknowledged:
    redis_db.xgroup_create(key, "g", id="0", mkstream=True)
    redis_db.xadd(key, {"card_id": "1", "event_timestamp": "2026-11-02T00:00:00Z", "amount": "1.5", "n": "10", "tag": "fields"})
    redis_db.xadd(key, {"json": json.dumps({"card_id": 2, "event_timestamp": "2026-11-02T00:00:00Z", "amount": 2.5, "n": 20, "tag": "json"})})
    redis_db.xreadgroup("g", "flotilla-testhost", {key: ">"}, count=10)
    assert redis_db.xpending(key, "g")["pending"] == 2
    env = {"FLOTILLA_ONLINE_STORE": store_path, "FLOTILLA_CONSUME_STREAMS": "true", "HOSTNAME": "testhost"}
    s = Server(EXAMPLES, "--feature-repo", str(repo), env=env)
    try:
        redis_db.xadd(key, {"card_id": "3", "event_timestamp": "2026-11-02T00:00:00Z", "amount": "3.5", "n": "30", "tag": "new"})
        redis_db.xadd(key, {"card_id": "oops", "event_timestamp": "2026-11-02T00:00:00Z"})
        wait_for(lambda: redis_db.xpending(key, "g")["pending"] == 0 and redis_db.xlen(key + ":dead_letter") == 1,
                 what="all entries acknowledged")
        r = online(s, ["txn:n", "txn:tag", "txn:amount"], {"card_id": [1, 2, 3]})
        assert column(r, "n")["values"] == [10, 20, 30]
        assert column(r, "tag")["values"] == ["fields", "json", "new"]
        assert column(r, "amount")["values"] == [1.5, 2.5, 3.5]
        (entry_id, fields), = redis_db.xrange(key + ":dead_letter")
        assert "join key 'card_id'" in json.loads(fields[b"json"])["reason"]
    finally:
        assert s.stop() == 0, s.log()


def test_redis_online_store_last_write_wins_and_enrichment(tmp_path, redis_db):
    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    out = cli("ingest", "--feature-repo", str(FEATURES), "--online-store", url, "--view", "card_profile").stdout
    assert "card_profile:" in out
    s = Server(EXAMPLES, "--feature-repo", str(FEATURES), env={"FLOTILLA_ONLINE_STORE": url})
    try:
        cards = [11, 22, 33, 44]
        push_fresh_cards(s, cards)
        stale = post(s, "/push", {"push_source_name": "card_txn_push", "df": {
            "card_id": [11], "event_timestamp": ["2026-11-01T00:00:00Z"], "last_amount": [-1.0]}}).json()
        assert stale == {"applied": 0, "stale": 1}
        x = reference_input(s, cards)
        assert not np.isnan(x[0, 0]) and x[0, 0] != -1.0
        http = httpclient.InferenceServerClient(f"127.0.0.1:{s.http_port}")
        direct_in = httpclient.InferInput("input__0", list(x.shape), "FP32")
        direct_in.set_data_from_numpy(x)
        k = httpclient.InferInput("card_id", [len(cards)], "INT64")
        k.set_data_from_numpy(np.array(cards, dtype=np.int64))
        np.testing.assert_array_equal(http.infer("fraud_xgb", [k]).as_numpy("output__0"),
                                      http.infer("fraud_xgb", [direct_in]).as_numpy("output__0"))
        assert redis_db.exists(b"flotilla:card_txn_1h:i" + (11).to_bytes(8, "big"))
    finally:
        assert s.stop() == 0, s.log()


def test_redis_down_is_a_clear_error_at_start(tmp_path):
    s = subprocess.run([BIN, "features", "get", "--feature-repo", str(FEATURES), "--online-store", "redis://127.0.0.1:1",
                        "--features", "card_profile:home_country", "--entities", '{"card_id": [1]}'],
                       capture_output=True, text=True, timeout=60)
    assert s.returncode != 0 and "online store unavailable" in s.stderr, s.stderr


# --- definitions and CLI errors ------------------------------------------------------------------

def test_definition_errors_name_the_file_and_line(tmp_path):
    repo = tmp_path / "bad"
    shutil.copytree(FEATURES, repo, ignore=shutil.ignore_patterns("data"))
    text = (repo / "card_txn_1h.toml").read_text().replace('entities = ["card"]', 'entities = ["cards"]')
    (repo / "card_txn_1h.toml").write_text(text)
    p = cli("ingest", "--feature-repo", str(repo), "--online-store", f"embedded:{tmp_path}/s.redb", check=False)
    line = next(i + 1 for i, l in enumerate(text.splitlines()) if l.startswith("entities"))
    assert p.returncode != 0
    assert f"card_txn_1h.toml:{line}: feature view 'card_txn_1h': unknown entity 'cards'" in p.stderr, p.stderr


def test_ingest_reports_the_bad_column_and_row(tmp_path):
    repo = txn_repo(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("card_id,event_timestamp,amount,n,tag\n1,2026-11-01T00:00:00Z,1.5,2,a\n2,2026-11-01T00:00:00Z,lots,3,b\n")
    p = cli("ingest", "--feature-repo", str(repo), "--online-store", f"embedded:{tmp_path}/s.redb",
            "--view", "txn", "--path", str(bad), check=False)
    assert p.returncode != 0 and "column 'amount' row 2: 'lots' is not a valid float32" in p.stderr, p.stderr


# --- point-in-time training sets -----------------------------------------------------------------

@pytest.mark.parametrize("memory", ["default", "spilled"])
def test_training_set_matches_feasts_own_output(tmp_path, memory):
    features = (PIT / "features.txt").read_text().split()
    out = tmp_path / "train.parquet"
    # A 1 KB limit: every view is hash-partitioned to spill files and joined a partition at a time.
    limit = ["--memory-limit", "1KB", "--spill-dir", str(tmp_path)] if memory == "spilled" else []
    report = cli("training-set", "--feature-repo", str(PIT), "--entities", str(PIT / "entity_df.parquet"),
                 "--features", ",".join(features), "--out", str(out), *limit).stdout
    assert "789 entity rows" in report, report
    assert ("spilled:" in report) == (memory == "spilled"), report
    assert not list(tmp_path.glob("flotilla-training-*")), "the spill folder is removed"
    ours, theirs = pq.read_table(out), pq.read_table(PIT / "expected.parquet")
    assert sorted(ours.column_names) == sorted(theirs.column_names)
    key = [("event_timestamp", "ascending"), ("user_id", "ascending"), ("merchant_id", "ascending")]
    ours, theirs = ours.sort_by(key), theirs.sort_by(key)
    assert ours.num_rows == theirs.num_rows == 789
    for name in theirs.column_names:
        a, b = ours.column(name).to_pylist(), theirs.column(name).to_pylist()
        assert a == b, f"column {name} differs at rows {[i for i, (x, y) in enumerate(zip(a, b)) if x != y][:10]}"
    # A feature service gives the same columns; full names prefix the view.
    full = tmp_path / "full.parquet"
    cli("training-set", "--feature-repo", str(PIT), "--entities", str(PIT / "entity_df.parquet"),
        "--feature-service", "pit_all", "--full-feature-names", "--out", str(full))
    assert "user_stats__spend" in pq.read_table(full).column_names


# --- Feast's gRPC serving API ------------------------------------------------------------------

def test_feast_grpc_get_online_features(example_server):
    """feast.serving.ServingService/GetOnlineFeatures, with messages built from server reflection."""
    import grpc
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    channel = grpc.insecure_channel(f"127.0.0.1:{example_server.grpc_port}")
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    service = pool.FindServiceByName("feast.serving.ServingService")
    assert [m.name for m in service.methods] == ["GetFeastServingInfo", "GetOnlineFeatures"]
    Request = message_factory.GetMessageClass(pool.FindMessageTypeByName("feast.serving.GetOnlineFeaturesRequest"))
    Response = message_factory.GetMessageClass(pool.FindMessageTypeByName("feast.serving.GetOnlineFeaturesResponse"))
    call = channel.unary_unary("/feast.serving.ServingService/GetOnlineFeatures",
                               request_serializer=Request.SerializeToString, response_deserializer=Response.FromString)
    cards = [101, 202, 987_654_321]
    push_fresh_cards(example_server, cards)
    req = Request(full_feature_names=False)
    req.features.val.extend(["card_txn_1h:last_amount", "card_profile:home_country"])
    for c in cards:
        req.entities["card_id"].val.add(int64_val=c)
    got = call(req, timeout=10)
    assert list(got.metadata.feature_names.val) == ["card_id", "last_amount", "home_country"]
    want = online(example_server, ["card_txn_1h:last_amount", "card_profile:home_country"], {"card_id": cards})
    status_names = {1: "PRESENT", 2: "NULL_VALUE", 3: "NOT_FOUND", 4: "OUTSIDE_MAX_AGE"}
    for vec, col in zip(got.results, want["results"]):
        values = [None if v.WhichOneof("val") in (None, "null_val") else getattr(v, v.WhichOneof("val")) for v in vec.values]
        assert values == col["values"]
        assert [status_names[s] for s in vec.statuses] == col["statuses"]
        micros = [t.seconds * 1_000_000 + t.nanos // 1000 for t in vec.event_timestamps]
        epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
        assert micros == [(dt.datetime.fromisoformat(x.replace("Z", "+00:00")) - epoch) // dt.timedelta(microseconds=1)
                          for x in col["event_timestamps"]]
    bad = Request()
    bad.features.val.append("nope:x")
    bad.entities["card_id"].val.add(int64_val=1)
    with pytest.raises(grpc.RpcError) as e:
        call(bad, timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "unknown feature view 'nope'" in e.value.details()
    wrong = Request()
    wrong.features.val.append("card_profile:home_country")
    wrong.entities["card_id"].val.add(string_val="abc")
    with pytest.raises(grpc.RpcError) as e:
        call(wrong, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "expected int64" in e.value.details()


def test_materialize_window_and_consume_alone(tmp_path):
    store = f"embedded:{tmp_path}/online.redb"
    out = cli("materialize", "--feature-repo", str(FEATURES), "--online-store", store, "--view", "card_txn_1h",
              "--start", "2026-11-01T06:00:00Z", "--end", "2026-11-01T12:00:00Z").stdout
    rows = int(out.split(" rows read")[0].split()[-1])
    skipped = int(out.split(" outside the window")[0].split()[-1])
    table = pq.read_table(FEATURES / "data" / "card_txn_1h.parquet")
    ts = table.column("event_timestamp")
    start, end = dt.datetime(2026, 11, 1, 6, tzinfo=dt.timezone.utc), dt.datetime(2026, 11, 1, 12, tzinfo=dt.timezone.utc)
    inside = pc.sum(pc.and_(pc.greater_equal(ts, start), pc.less_equal(ts, end))).as_py()
    assert rows == table.num_rows and rows - skipped == inside, out
    bad = cli("materialize", "--feature-repo", str(FEATURES), "--online-store", store,
              "--start", "2026-11-02T00:00:00Z", "--end", "2026-11-01T00:00:00Z", check=False)
    assert bad.returncode != 0 and "is after --end" in bad.stderr

    # `flotilla features consume` on its own, stopped by SIGINT, then read back by the CLI.
    src = NatsSource()
    repo = txn_repo(tmp_path, src.decl())
    own = f"embedded:{tmp_path}/consume.redb"
    p = subprocess.Popen([BIN, "features", "consume", "--feature-repo", str(repo), "--online-store", own],
                         stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while "consuming" not in "".join(lines):
            lines.append(p.stderr.readline())
            assert p.poll() is None, "".join(lines)
        src.publish([{"card_id": 9, "event_timestamp": now_iso(), "amount": 1.25, "n": 3, "tag": "c"}])
        wait_for(lambda: src.committed() >= 1, what="the message to be acknowledged")
    finally:
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=30) == 0
        src.close()
    got = json.loads(cli("get", "--feature-repo", str(repo), "--online-store", own, "--features", "txn:amount,txn:n",
                         "--entities", '{"card_id": [9]}').stdout)
    assert [r["values"] for r in got["results"]] == [[9], [1.25], [3]]


def test_feature_repo_none_serves_without_a_feature_store():
    s = Server(EXAMPLES, "--feature-repo", "none")
    try:
        r = post(s, "/get-online-features", {"features": ["card_profile:home_country"], "entities": {"card_id": [1]}})
        assert r.status_code == 404 and "no endpoint at /get-online-features" in r.json()["error"]
        r = post(s, "/v2/models/fraud_xgb/infer",
                 {"inputs": [{"name": "card_id", "datatype": "INT64", "shape": [1], "data": [1]}]})
        assert r.status_code == 400 and "unknown input 'card_id'" in r.json()["error"], r.text
        assert "feature store open" not in s.log()
    finally:
        assert s.stop() == 0, s.log()


def test_ingest_through_a_running_servers_push_api(store_path):
    s = Server(EXAMPLES, "--feature-repo", str(FEATURES), env={"FLOTILLA_ONLINE_STORE": store_path})
    try:
        url = f"http://127.0.0.1:{s.http_port}"
        out = cli("ingest", "--feature-repo", str(FEATURES), "--server", url, "--view", "card_profile").stdout
        assert "card_profile:" in out and " applied" in out, out
        profile = latest_rows(FEATURES / "data" / "card_profile.parquet", "card_id",
                              ["card_age_days", "avg_amount_30d", "home_country"])
        cards = sorted(profile)[:200]
        r = online(s, ["card_profile:card_age_days", "card_profile:avg_amount_30d", "card_profile:home_country"],
                   {"card_id": cards})
        for i, card in enumerate(cards):
            want = profile[card]
            assert column(r, "home_country")["values"][i] == want["home_country"]
            got_avg, want_avg = column(r, "avg_amount_30d")["values"][i], want["avg_amount_30d"]
            assert (got_avg is None and (want_avg is None or math.isnan(want_avg))) or math.isclose(got_avg, want_avg, rel_tol=1e-6)
            ts = want["event_timestamp"].astimezone(dt.timezone.utc)
            assert dt.datetime.fromisoformat(column(r, "card_age_days")["event_timestamps"][i].replace("Z", "+00:00")) == ts
        # Again: the same rows replace themselves (idempotent); nothing changes.
        cli("ingest", "--feature-repo", str(FEATURES), "--server", url, "--view", "card_profile")
        assert online(s, ["card_profile:card_age_days", "card_profile:avg_amount_30d", "card_profile:home_country"],
                      {"card_id": cards}) == r
        down = cli("ingest", "--feature-repo", str(FEATURES), "--server", "http://127.0.0.1:1", "--view", "card_profile",
                   check=False)
        assert down.returncode != 0 and "online store unavailable: http://127.0.0.1:1/push" in down.stderr, down.stderr
    finally:
        assert s.stop() == 0, s.log()


@pytest.mark.parametrize("kind", ["redis_not_a_stream", "rabbitmq_wrong_password", "redis_bad_ca"])
def test_unreadable_stream_sources_stop_with_their_reason(tmp_path, store_path, redis_db, kind):
    """A source that can never be read as declared is not retried: its consumer stops once with
    the reason, and the server serves on."""
    key = f"flotilla_test:{uuid.uuid4().hex[:8]}"
    if kind == "redis_not_a_stream":
        redis_db.set(key, "a string, not a stream")
        decl = f'stream = {{ type = "redis", url = "redis://127.0.0.1:6379/{REDIS_DB}", stream = "{key}" }}'
        reason = "WRONGTYPE"
    elif kind == "rabbitmq_wrong_password":
        decl = f'stream = {{ type = "rabbitmq", url = "amqp://guest:wrong-password@127.0.0.1:5672/%2f", queue = "{key}" }}'
        reason = "ACCESS_REFUSED"
    else:
        decl = f'stream = {{ type = "redis", url = "rediss://127.0.0.1:6379/0?ssl_ca_certs=/nonexistent/ca.pem", stream = "{key}" }}'
        reason = "/nonexistent/ca.pem"
    repo = txn_repo(tmp_path, decl)
    s = Server(EXAMPLES, "--feature-repo", str(repo),
               env={"FLOTILLA_ONLINE_STORE": store_path, "FLOTILLA_CONSUME_STREAMS": "true"})
    try:
        wait_for(lambda: "its consumer stopped" in s.log(), timeout=30, what="the consumer stopping:\n" + s.log()[-2000:])
        time.sleep(1.5)
        log = s.log()
        assert reason in log, log[-3000:]
        assert "retrying" not in log and "wrong-password" not in log, log[-3000:]
        assert requests.get(s.url + "/v2/health/live", timeout=5).status_code == 200
    finally:
        assert s.stop() == 0, s.log()
