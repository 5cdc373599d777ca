"""The read-only GraphQL API at /graphql, black-box with the `gql` client library: models,
readiness, config and statistics compared with the REST endpoints' answers; feature views and
online values after a Feast push; drift state of fraud_xgb; fleet workers through a router;
depth and complexity limits and bad input."""
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
import tritonclient.http as httpclient
from gql import Client, gql
from gql.transport.exceptions import TransportQueryError
from gql.transport.requests import RequestsHTTPTransport

from conftest import EXAMPLES, ROOT, Router, Server, wait_for
from test_features import FEATURES, push_fresh_cards

TRAIN = ROOT / "examples" / "drift" / "fraud_train.parquet"
DRIFT_FEATURES = ["amount", "hour", "merchant_category", "country", "card_age_days", "txn_count_1h",
                  "avg_amount_30d", "distance_km"]
MAX_BYTES = 1 << 20


def client(process, schema=False):
    """A gql client; with `schema`, it fetches the schema by introspection and checks queries against it."""
    transport = RequestsHTTPTransport(url=process.url + "/graphql", timeout=30, retries=0)
    return Client(transport=transport, fetch_schema_from_transport=schema)


def query(process, text, variables=None):
    with client(process) as session:
        return session.execute(gql(text), variable_values=variables)


def refused(process, text, variables=None):
    """The error messages of a query the server answers with errors (and no data)."""
    with pytest.raises(TransportQueryError) as e:
        query(process, text, variables)
    return " | ".join(err["message"] for err in e.value.errors)


def rest(process, path, method="get", **kw):
    r = requests.request(method, process.url + path, timeout=30, **kw)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    store = f"embedded:{tmp_path_factory.mktemp('online')}/online.redb"
    s = Server(EXAMPLES, "--feature-repo", str(FEATURES), "--max-request-bytes", str(MAX_BYTES),
               env={"FLOTILLA_ONLINE_STORE": store})
    # 600 training rows through fraud_xgb in six requests: statistics, and one closed drift window (500 rows).
    table = pq.read_table(TRAIN, columns=DRIFT_FEATURES)
    rows = np.column_stack([table.column(f).to_numpy(zero_copy_only=False) for f in DRIFT_FEATURES]).astype(np.float32)
    http = httpclient.InferenceServerClient(s.http)
    for start in range(0, 600, 100):
        t = httpclient.InferInput("input__0", [100, 8], "FP32")
        t.set_data_from_numpy(rows[start:start + 100], binary_data=True)
        http.infer("fraud_xgb", [t])
    yield s
    assert s.alive(), s.log()
    assert s.stop() == 0, s.log()


MODELS = """
query {
  server { name live ready }
  models {
    name ready notReadyReason config
    statistics { version inferenceCount executionCount successCount failCount document }
    versions { version state reason ready config statistics { inferenceCount } }
  }
}
"""


def test_models_versions_readiness_config_and_statistics_match_rest(worker):
    data = query(worker, MODELS)
    assert data["server"]["name"] == rest(worker, "/v2")["name"] and data["server"]["ready"] is True
    index = rest(worker, "/v2/repository/index", method="post", json={})
    models = {m["name"]: m for m in data["models"]}
    assert sorted(models) == sorted({e["name"] for e in index})
    for e in index:
        versions = {v["version"]: v for v in models[e["name"]]["versions"]}
        assert versions[e["version"]]["state"] == e["state"]
    fraud = models["fraud_xgb"]
    assert fraud["ready"] is True and fraud["notReadyReason"] is None
    assert fraud["config"] == rest(worker, "/v2/models/fraud_xgb/config")
    assert fraud["versions"][0]["ready"] is True
    assert fraud["versions"][0]["config"] == rest(worker, "/v2/models/fraud_xgb/versions/1/config")
    stats = rest(worker, "/v2/models/fraud_xgb/stats")["model_stats"]
    assert [s["document"] for s in fraud["statistics"]] == stats
    s = fraud["statistics"][0]
    assert s["inferenceCount"] == stats[0]["inference_count"] == 600
    assert s["executionCount"] == stats[0]["execution_count"] and s["successCount"] == 6 and s["failCount"] == 0
    assert fraud["versions"][0]["statistics"]["inferenceCount"] == 600
    # one model by name, with a variable; an unknown one is an error that says so
    one = query(worker, "query($m: String!) { model(name: $m) { name versions { version } } }", {"m": "mlp_iris"})
    assert one["model"]["name"] == "mlp_iris"
    assert "unknown model: 'nope'" in refused(worker, '{ model(name: "nope") { name } }')


def test_feature_views_and_online_values_after_a_push(worker):
    cards = [11, 22, 33, 987_654_321]
    push_fresh_cards(worker, cards)
    views = {v["name"]: v for v in query(worker, """{
        featureViews { name entities joinKeys online features { name dtype } sources { name kind lagSeconds lagMessages } }
    }""")["featureViews"]}
    assert {"card_profile", "card_txn_1h"} <= set(views)
    txn = views["card_txn_1h"]
    assert txn["entities"] == ["card"] and txn["joinKeys"] == ["card_id"]
    assert {"name": "last_amount", "dtype": "float32"} in txn["features"]
    kinds = {s["kind"]: s for s in txn["sources"]}
    assert kinds["push"]["name"] == "card_txn_push"
    assert kinds["nats"]["name"] == "nats:features.card_txn_1h"
    assert kinds["nats"]["lagSeconds"] is None, "no consumer runs in this test: no lag reported"

    features = ["card_txn_1h:last_amount", "card_profile:card_age_days", "card_txn_1h:last_distance_km"]
    got = query(worker, """query($f: [String!], $e: JSON!) {
        onlineFeatures(features: $f, entities: $e) { featureNames columns { name values statuses eventTimestamps } }
    }""", {"f": features, "e": {"card_id": cards}})["onlineFeatures"]
    want = rest(worker, "/get-online-features", method="post", json={"features": features, "entities": {"card_id": cards}})
    assert got["featureNames"] == want["metadata"]["feature_names"] == ["card_id", "last_amount", "card_age_days",
                                                                        "last_distance_km"]
    for col, ref in zip(got["columns"], want["results"]):
        assert (col["values"], col["statuses"], col["eventTimestamps"]) == (
            ref["values"], ref["statuses"], ref["event_timestamps"])
    age = got["columns"][2]
    assert age["statuses"][-1] == "NOT_FOUND" and age["statuses"][0] == "PRESENT"
    # a feature service, and an unknown view: the feature store's own error
    summary = query(worker, '{ onlineFeatures(featureService: "card_summary", entities: {card_id: [11]}) { featureNames } }')
    assert summary["onlineFeatures"]["featureNames"][0] == "card_id"
    assert "nope" in refused(worker, '{ onlineFeatures(features: ["nope:x"], entities: {card_id: [1]}) { featureNames } }')


def test_drift_state_of_fraud_xgb(worker):
    wait_for(lambda: any(v["windows"] for v in rest(worker, "/v2/models/fraud_xgb/drift")["versions"]),
             what="a closed drift window")
    d = query(worker, """{ drift(model: "fraud_xgb") {
        model scope document
        versions { version currentWindowRows closedWindows features { name state level scores breaches } }
    } }""")["drift"]
    assert d["model"] == "fraud_xgb" and d["scope"] == "worker"
    reference = rest(worker, "/v2/models/fraud_xgb/drift")
    assert d["document"]["reference"] == reference["reference"] and d["document"]["settings"] == reference["settings"]
    # the typed fields say what the document (the same answer) says
    v, doc = d["versions"][0], d["document"]["versions"][0]
    assert v["version"] == "1" and v["closedWindows"] == len(doc["windows"]) >= 1
    assert v["currentWindowRows"] == doc["current_window"]["rows"]
    features = {f["name"]: f for f in v["features"]}
    assert set(DRIFT_FEATURES) <= set(features)
    newest = {c["name"]: c for c in doc["windows"][0]["features"]}
    for name in DRIFT_FEATURES:
        assert features[name]["state"] == doc["alerts"].get(name, "ok")
        assert features[name]["scores"] == newest[name]["scores"] and features[name]["level"] == newest[name]["level"]
    assert features["amount"]["scores"]["psi"] < 0.25, "training rows do not drift"
    # nested under the model, the same state
    nested = query(worker, '{ model(name: "fraud_xgb") { drift { versions { features { name state } } } } }')
    assert {f["name"] for f in nested["model"]["drift"]["versions"][0]["features"]} == set(features)
    assert "has no drift profile" in refused(worker, '{ drift(model: "mlp_iris") { scope } }')
    assert "not a fleet router" in refused(worker, "{ fleet { policy } }")


def test_fleet_workers_and_placement_through_a_router(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES / "simple", repo / "simple")
    router = Router("--worker-ttl-ms", "2000")
    workers = []
    try:
        for wid, cls in (("g0", "guaranteed"), ("o1", "opportunistic")):
            workers.append(Server(repo, "--join", router.url, "--worker-id", wid, "--capacity-class", cls,
                                  "--feature-repo", "none", "--heartbeat-ms", "200"))
        router.wait_workers(["g0", "o1"])
        with client(router, schema=True) as session:  # introspection passes the depth limit
            data = session.execute(gql("""{
                fleet { policy leader document
                        workers { id state capacityClass hardware http models { name versions } inFlight queued }
                        placement { model workers } sources { source consumer } }
                models { name versions { version state } }
            }"""))
            assert session.client.schema.mutation_type is None and session.client.schema.subscription_type is None
        view = router.fleet()
        fleet = data["fleet"]
        assert fleet["policy"] == view["policy"] and fleet["leader"] == view["control"]["leader"]
        got = {w["id"]: w for w in fleet["workers"]}
        assert set(got) == {w["id"] for w in view["workers"]} == {"g0", "o1"}
        for w in view["workers"]:
            g = got[w["id"]]
            assert (g["state"], g["capacityClass"], g["hardware"], g["http"]) == (
                w["state"], w["capacity_class"], w["hardware"], w["http"])
            assert [(m["name"], m["versions"]) for m in g["models"]] == [(m["name"], m["versions"]) for m in w["models"]]
        assert got["o1"]["capacityClass"] == "opportunistic" and got["g0"]["models"][0]["name"] == "simple"
        assert [p["model"] for p in fleet["placement"]] == sorted(view["placement"]["models"])
        assert fleet["document"]["policy"] == view["policy"]
        # the router's models are its workers' (the same Api as its REST endpoints)
        index = rest(router, "/v2/repository/index", method="post", json={})
        assert [(m["name"], [v["state"] for v in m["versions"]]) for m in data["models"]] == [
            (e["name"], [e["state"]]) for e in index]
        # feature fields alone go to a worker with a feature store: none here
        assert "no worker with a feature store is in rotation" in refused(router, "{ featureViews { name } }")
        assert "simple" in refused(router, '{ drift(model: "simple") { scope } }')
    finally:
        for w in workers:
            assert w.stop() == 0, w.log()
        assert router.stop() == 0, router.log()


def test_feature_fields_through_a_router_are_answered_by_a_worker_with_the_store(tmp_path):
    """A router has no feature store: a query of feature fields alone runs on the worker that has
    one (as Feast's endpoints do); mixed with other fields, those fields say how to ask."""
    router = Router("--worker-ttl-ms", "2000")
    worker = Server(EXAMPLES, "--join", router.url, "--worker-id", "fw", "--feature-repo", str(FEATURES),
                    "--heartbeat-ms", "200", env={"FLOTILLA_ONLINE_STORE": f"embedded:{tmp_path}/online.redb"})
    try:
        router.wait_workers(["fw"])
        cards = [11, 22]
        push_fresh_cards(worker, cards)
        views = "{ featureViews { name joinKeys features { name dtype } } }"
        assert query(router, views) == query(worker, views)
        online = """query($e: JSON!) { __typename
            onlineFeatures(features: ["card_txn_1h:last_amount"], entities: $e) { featureNames columns { values statuses } }
        }"""
        through_router = query(router, online, {"e": {"card_id": cards}})
        assert through_router == query(worker, online, {"e": {"card_id": cards}})
        assert through_router["onlineFeatures"]["columns"][1]["statuses"] == ["PRESENT", "PRESENT"]
        assert "on their own" in refused(router, "{ fleet { policy } featureViews { name } }")
        assert "bad" in refused(router, "{ featureView(name: \"bad\") { name } }")
    finally:
        assert worker.stop() == 0, worker.log()
        assert router.stop() == 0, router.log()


def test_limits_and_bad_input_are_refused_clearly(worker):
    url = worker.url + "/graphql"
    deep = "{ __schema { queryType { fields { type { " + "ofType { " * 14 + "name" + " }" * 14 + " } } } } }"
    assert "nested too deep" in refused(worker, deep)
    wide = " ".join(f"a{i}: server {{ name }}" for i in range(1001))
    assert "too complex" in refused(worker, "{ " + wide + " }")
    assert 'Unknown field "nope"' in refused(worker, "{ server { nope } }")
    message = refused(worker, "query($m: String!) { model(name: $m) { name } }", {"m": 5})
    assert 'argument "name"' in message and "String" in message, message
    assert "mutation" in refused(worker, "mutation { x }").lower()
    # malformed and oversized bodies never reach the schema: 400 / 413 with GraphQL's error shape
    r = requests.post(url, data=b"{not json", headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 400 and "not a GraphQL request" in r.json()["errors"][0]["message"]
    r = requests.post(url, json={"variables": {}}, timeout=10)
    assert r.status_code == 400 and "query" in r.json()["errors"][0]["message"]
    big = '{"query": "{ server { name } }", "variables": {"pad": "' + "x" * MAX_BYTES + '"}}'
    r = requests.post(url, data=big.encode(), headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 413 and r.json()["errors"][0]["message"]
    # GET with ?query= for simple queries; a plain GET is the GraphiQL page
    r = requests.get(url, params={"query": "{ server { name ready } }"}, timeout=10)
    assert r.status_code == 200 and r.json()["data"]["server"]["ready"] is True
    r = requests.get(url, timeout=10)
    assert r.status_code == 200 and "graphiql" in r.text.lower() and r.headers["content-type"].startswith("text/html")
    assert worker.alive(), "bad input never brings the server down"
