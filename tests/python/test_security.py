"""Security, black-box: bearer tokens with scopes on every listener (HTTP, gRPC, the metrics
port, GraphQL, a router and its workers), refusals through the one error table (401/403,
UNAUTHENTICATED/PERMISSION_DENIED), token files reloaded and never logged; TLS on HTTP and gRPC
with real clients (requests, tritonclient gRPC), mutual TLS (a client certificate from another CA
or an expired one is refused), and certificates reloaded without a restart."""
import json
import socket
import ssl
import time

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from certs import Ca
from conftest import BIN, EXAMPLES, Router, Server, wait_for

INFER = "infer-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"
WRITER = "writer-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
FLEET = "fleet-token-0123456789abcdef"
SECRETS = [INFER, READER, WRITER, ADMIN, FLEET]

TOKENS = f"""
[[token]]
name = "scorer"
token = "{INFER}"
scopes = ["infer"]

[[token]]
name = "feature-reader"
token = "{READER}"
scopes = ["features:read"]

[[token]]
name = "feature-writer"
token_env = "WRITER_TOKEN"
scopes = ["features:write"]

[[token]]
name = "ops"
token = "{ADMIN}"
scopes = ["admin"]

[[token]]
name = "fleet"
token = "{FLEET}"
scopes = ["infer", "features:read", "features:write", "admin"]
"""


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def grpc_bearer(token):
    """gRPC metadata keys are lower-case."""
    return {"authorization": f"Bearer {token}"}


def simple_inputs():
    return {"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
    ]}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "tokens.toml"
    path.write_text(TOKENS)
    return path


@pytest.fixture(scope="module")
def server(tokens):
    s = Server(EXAMPLES, "--auth-tokens", str(tokens), "--model-control-mode", "explicit",
               "--load-model", "*", "--log-level", "debug",
               env={"WRITER_TOKEN": WRITER})
    yield s
    assert s.alive(), s.log()
    s.stop()
    for secret in SECRETS:
        assert secret not in s.log(), "a token was logged"


def test_health_probes_stay_open_and_everything_else_needs_a_token(server):
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert requests.get(server.url + path, timeout=5).status_code == 200
    for method, path in [("GET", "/v2"), ("GET", "/v2/models/simple"), ("POST", "/v2/models/simple/infer"),
                         ("POST", "/v2/repository/index"), ("POST", "/v2/repository/models/simple/unload"),
                         ("POST", "/get-online-features"), ("POST", "/push"), ("POST", "/graphql"),
                         ("GET", "/v2/nothing-here")]:
        r = requests.request(method, server.url + path, json={}, timeout=5)
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.headers["flotilla-error-kind"] == "unauthenticated"
        assert "Authorization: Bearer" in r.json()["error"]
    for header in ({"Authorization": "Bearer not-a-known-token-000000"}, {"Authorization": f"Basic {INFER}"},
                   {"Authorization": INFER}):
        r = requests.get(server.url + "/v2", headers=header, timeout=5)
        assert r.status_code == 401, (header, r.text)
        assert INFER not in r.text


def test_scopes_over_http(server):
    r = requests.post(server.url + "/v2/models/simple/infer", json=simple_inputs(), headers=bearer(INFER), timeout=10)
    assert r.status_code == 200, r.text
    assert requests.get(server.url + "/v2/models/simple/config", headers=bearer(INFER), timeout=5).status_code == 200
    # infer cannot change the repository; admin can, and admin alone cannot infer
    r = requests.post(server.url + "/v2/repository/models/simple/load", headers=bearer(INFER), timeout=10)
    assert r.status_code == 403, r.text
    assert r.headers["flotilla-error-kind"] == "permission_denied"
    assert "'scorer'" in r.json()["error"] and "'admin'" in r.json()["error"]
    assert requests.post(server.url + "/v2/repository/models/simple/load", headers=bearer(ADMIN),
                         timeout=60).status_code == 200
    r = requests.post(server.url + "/v2/models/simple/infer", json=simple_inputs(), headers=bearer(ADMIN), timeout=10)
    assert r.status_code == 403
    # features: read and write are separate scopes
    read = {"features": ["card_profile:avg_amount_30d"], "entities": {"card_id": [1]}}
    push = {"push_source_name": "card_profile_push",
            "df": {"card_id": [424242], "event_timestamp": ["2026-11-02T00:00:00Z"], "avg_amount_30d": [12.5]}}
    assert requests.post(server.url + "/get-online-features", json=read, headers=bearer(INFER), timeout=5).status_code == 403
    assert requests.post(server.url + "/get-online-features", json=read, headers=bearer(READER), timeout=5).status_code == 200
    assert requests.post(server.url + "/push", json=push, headers=bearer(READER), timeout=5).status_code == 403
    r = requests.post(server.url + "/push", json=push, headers=bearer(WRITER), timeout=5)
    assert r.status_code == 200, r.text
    # refusals are counted like every answer
    metrics = requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", headers=bearer(INFER), timeout=5).text
    assert 'code="401"' in metrics and 'code="403"' in metrics


def test_scopes_over_grpc_with_tritonclient(server):
    client = grpcclient.InferenceServerClient(server.grpc)
    assert client.is_server_live() and client.is_server_ready()  # open, for probes
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
    inputs[1].set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("simple", inputs)
    assert e.value.status() == "StatusCode.UNAUTHENTICATED"
    result = client.infer("simple", inputs, headers=grpc_bearer(INFER))
    assert result.as_numpy("OUTPUT0").tolist() == [list(range(1, 17))]
    assert client.get_model_metadata("simple", headers=grpc_bearer(INFER)).name == "simple"
    with pytest.raises(InferenceServerException) as e:
        client.load_model("simple", headers=grpc_bearer(INFER))
    assert e.value.status() == "StatusCode.PERMISSION_DENIED"
    assert "'admin'" in e.value.message()
    client.load_model("simple", headers=grpc_bearer(ADMIN))
    with pytest.raises(InferenceServerException) as e:
        client.infer("simple", inputs, headers={"authorization": "Bearer wrong-token-0000000000"})
    assert e.value.status() == "StatusCode.UNAUTHENTICATED"


def test_tritonclient_http_with_a_token(server):
    client = httpclient.InferenceServerClient(server.http)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
    inputs[1].set_data_from_numpy(np.ones((1, 16), dtype=np.int32), binary_data=True)
    result = client.infer("simple", inputs, headers=bearer(INFER))
    assert result.as_numpy("OUTPUT0").tolist() == [list(range(1, 17))]
    with pytest.raises(InferenceServerException) as e:
        client.infer("simple", inputs)
    assert "authentication required" in str(e.value)


def test_metrics_port_and_dashboard(server):
    base = f"http://127.0.0.1:{server.metrics_port}"
    assert requests.get(base + "/metrics", timeout=5).status_code == 401
    assert requests.get(base + "/metrics", headers=bearer(READER), timeout=5).status_code == 200
    # the page carries no data (it sends ?token= as a Bearer header); its API calls need a token
    assert requests.get(base + "/dashboard", timeout=5).status_code == 200
    assert requests.get(base + "/dashboard/api/pages", timeout=5).status_code == 401
    assert requests.get(base + "/dashboard/api/pages", headers=bearer(INFER), timeout=5).status_code == 200


def test_graphql_fields_check_their_scope(server):
    def query(token, q):
        r = requests.post(server.url + "/graphql", json={"query": q}, headers=bearer(token), timeout=10)
        assert r.status_code == 200, r.text
        return r.json()
    models = query(INFER, "{ models { name } }")
    assert "errors" not in models and {m["name"] for m in models["data"]["models"]} >= {"simple"}
    online = '{ onlineFeatures(features: ["card_profile:avg_amount_30d"], entities: {card_id: [1]}) { featureNames } }'
    denied = query(INFER, online)
    assert denied["errors"][0]["extensions"]["code"] == "permission_denied", denied
    assert "features:read" in denied["errors"][0]["message"]
    assert "errors" not in query(READER, online)
    assert query(READER, "{ models { name } }")["errors"][0]["extensions"]["code"] == "permission_denied"


def test_token_file_is_reloaded_and_a_bad_edit_keeps_the_tokens_in_force(server, tokens):
    new = "rotated-token-0123456789abcdef"
    try:
        tokens.write_text(TOKENS + f'\n[[token]]\nname = "rotated"\ntoken = "{new}"\nscopes = ["infer"]\n')
        wait_for(lambda: requests.get(server.url + "/v2", headers=bearer(new), timeout=5).status_code == 200,
                 timeout=15, what="the new token")
        time.sleep(1.1)  # a new modification time on coarse clocks
        tokens.write_text(TOKENS + '\n[[token]]\nname = "broken"\ntoken = "broken-token-0123456789"\nscopes = ["root"]\n')
        wait_for(lambda: "token file not reloaded" in server.log(), timeout=15, what="the refusal in the log")
        assert 'unknown scope \\"root\\"' in server.log(), server.log()[-2000:]
        assert requests.get(server.url + "/v2", headers=bearer(new), timeout=5).status_code == 200
        assert requests.get(server.url + "/v2", headers=bearer(INFER), timeout=5).status_code == 200
    finally:
        time.sleep(1.1)
        tokens.write_text(TOKENS)
    wait_for(lambda: requests.get(server.url + "/v2", headers=bearer(new), timeout=5).status_code == 401,
             timeout=15, what="the removed token refused")


def refused_start(*args):
    """`flotilla serve` with `args`, which must refuse to start: its stderr."""
    import subprocess
    out = subprocess.run([BIN, "serve", "--model-repository", str(EXAMPLES), "--feature-repo", "none",
                          "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", *map(str, args)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0, out.stderr
    return out.stderr


@pytest.mark.parametrize("content, reason", [
    ("[[token]]\nname='a'\ntoken='short'\nscopes=['infer']\n", "at least 16"),
    ("[[token]]\nname='a'\ntoken='0123456789abcdef-x'\nscopes=['everything']\n", "unknown scope"),
    ("not toml [", "tokens.toml"),
])
def test_a_bad_token_file_stops_the_start(tmp_path, content, reason):
    path = tmp_path / "tokens.toml"
    path.write_text(content)
    stderr = refused_start("--auth-tokens", path)
    assert reason in stderr and str(path) in stderr, stderr
    assert "0123456789abcdef" not in stderr


def test_a_fleet_with_tokens(tokens):
    """Router and worker both check tokens; the worker joins with the fleet token, and clients
    reach models through the router with their own."""
    router = Router("--auth-tokens", str(tokens), env={"WRITER_TOKEN": WRITER, "FLOTILLA_FLEET_TOKEN": FLEET})
    worker = None
    try:
        worker = Server(EXAMPLES, "--join", router.url, "--worker-id", "w-auth", "--heartbeat-ms", "200",
                        "--auth-tokens", str(tokens),
                        env={"WRITER_TOKEN": WRITER, "FLOTILLA_FLEET_TOKEN": FLEET})

        def serving():
            r = requests.get(router.url + "/v2/fleet", headers=bearer(INFER), timeout=5)
            return r.status_code == 200 and any(w["id"] == "w-auth" and w["state"] == "serving" and w["models"]
                                                for w in r.json()["workers"])
        wait_for(serving, timeout=60, what="the worker serving:\n" + router.log()[-2000:] + worker.log()[-2000:])
        assert requests.get(router.url + "/v2/fleet", timeout=5).status_code == 401
        r = requests.post(router.url + "/v2/models/simple/infer", json=simple_inputs(), timeout=10)
        assert r.status_code == 401
        r = requests.post(router.url + "/v2/models/simple/infer", json=simple_inputs(), headers=bearer(INFER), timeout=10)
        assert r.status_code == 200, r.text
        client = grpcclient.InferenceServerClient(router.grpc)
        assert client.get_model_metadata("simple", headers=grpc_bearer(INFER)).name == "simple"
        # the repository API through the router needs admin too
        r = requests.post(router.url + "/v2/repository/models/simple/load", headers=bearer(INFER), timeout=10)
        assert r.status_code == 403
    finally:
        if worker:
            worker.stop()
        router.stop()
    for secret in SECRETS:
        assert secret not in router.log() and (worker is None or secret not in worker.log())


# --- TLS ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca, other = Ca(folder), Ca(folder, "Other CA")
    return {
        "folder": folder, "ca": ca, "other": other,
        "server": ca.issue("server", "flotilla", server=True),
        "client": ca.issue("client", "scoring-service"),
        "stranger": other.issue("stranger", "stranger"),
        "expired": ca.issue("expired", "expired-client", expired=True),
    }


def peer_certificate(port, ca):
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.getpeercert(binary_form=True)


def test_tls_serves_http_and_grpc_and_reloads_its_certificate(pki, tmp_path):
    import shutil
    cert, key = tmp_path / "tls.pem", tmp_path / "tls.key"
    shutil.copy(pki["server"][0], cert)
    shutil.copy(pki["server"][1], key)
    ca = pki["ca"].pem
    s = Server(EXAMPLES, "--tls-cert", str(cert), "--tls-key", str(key), "--feature-repo", "none")
    try:
        assert s.url.startswith("https://")
        r = requests.post(s.url + "/v2/models/simple/infer", json=simple_inputs(), verify=str(ca), timeout=10)
        assert r.status_code == 200, r.text
        # a client that does not trust the CA refuses the server; plain HTTP gets no answer
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(s.url + "/v2", verify=True, timeout=5)
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://{s.http}/v2", timeout=5)
        # gRPC over TLS with tritonclient
        client = grpcclient.InferenceServerClient(s.grpc, ssl=True, root_certificates=str(ca))
        assert client.is_server_ready()
        assert client.get_model_metadata("simple").name == "simple"
        # the metrics port too
        assert requests.get(f"https://127.0.0.1:{s.metrics_port}/metrics", verify=str(ca), timeout=5).status_code == 200

        # a renewed certificate takes effect without a restart
        before = peer_certificate(s.http_port, ca)
        renewed = pki["ca"].issue("renewed", "flotilla-renewed", server=True)
        time.sleep(1.1)
        shutil.copy(renewed[1], key)
        shutil.copy(renewed[0], cert)
        wait_for(lambda: peer_certificate(s.http_port, ca) != before, timeout=15, what="the renewed certificate")
        assert "TLS certificate reloaded" in s.log()
        # a broken file is refused and the certificate in force stays
        time.sleep(1.1)
        cert.write_text("not a certificate")
        wait_for(lambda: "TLS files not reloaded" in s.log(), timeout=15, what="the refusal")
        assert requests.get(s.url + "/v2", verify=str(ca), timeout=5).status_code == 200
    finally:
        s.stop()


def test_mutual_tls_refuses_strangers_and_expired_certificates(pki):
    cert, key = pki["server"]
    ca = pki["ca"].pem
    s = Server(EXAMPLES, "--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(ca),
               "--feature-repo", "none")
    try:
        client = tuple(map(str, pki["client"]))
        r = requests.post(s.url + "/v2/models/simple/infer", json=simple_inputs(), verify=str(ca), cert=client,
                          timeout=10)
        assert r.status_code == 200, r.text
        for who in ("stranger", "expired", None):
            with pytest.raises(requests.exceptions.ConnectionError):
                requests.get(s.url + "/v2", verify=str(ca), cert=tuple(map(str, pki[who])) if who else None,
                             timeout=5)
        wait_for(lambda: "TLS handshake refused" in s.log(), timeout=10, what="the refusal in the log")
        log = s.log()
        assert "Expired" in log or "expired" in log, log[-3000:]
        assert "UnknownIssuer" in log or "unknown issuer" in log.lower(), log[-3000:]
        # gRPC with a client certificate (tritonclient)
        ok = grpcclient.InferenceServerClient(s.grpc, ssl=True, root_certificates=str(ca),
                                              private_key=client[1], certificate_chain=client[0])
        assert ok.get_model_metadata("simple").name == "simple"
        stranger = tuple(map(str, pki["stranger"]))
        bad = grpcclient.InferenceServerClient(s.grpc, ssl=True, root_certificates=str(ca),
                                               private_key=stranger[1], certificate_chain=stranger[0])
        with pytest.raises(InferenceServerException) as e:
            bad.get_model_metadata("simple", client_timeout=5)
        assert e.value.status() in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"), e.value
    finally:
        s.stop()


@pytest.mark.parametrize("args, reason", [
    (["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"], "/nonexistent/cert.pem"),
    (["--tls-cert", "KEY_AS_CERT", "--tls-key", "KEY"], "no PEM CERTIFICATE block"),
    (["--tls-cert", "CERT", "--tls-key", "CERT"], "private key"),
    (["--tls-cert", "CERT", "--tls-key", "OTHER_KEY"], "certificate and key"),
    (["--tls-cert", "CERT"], "--tls-key"),
    (["--fleet-ca", "/nonexistent/fleet-ca.pem"], "/nonexistent/fleet-ca.pem"),
    (["--fleet-ca", "KEY"], "no PEM CERTIFICATE block"),
])
def test_bad_tls_settings_stop_the_start(pki, args, reason):
    paths = {"CERT": pki["server"][0], "KEY": pki["server"][1], "KEY_AS_CERT": pki["server"][1],
             "OTHER_KEY": pki["client"][1]}
    stderr = refused_start(*[paths.get(a, a) for a in args])
    assert reason in stderr, stderr


def test_a_fleet_over_mutual_tls(pki):
    """Router and worker both serve mutual TLS: the worker joins over https:// with its member
    certificate, advertises https:// addresses, and the router forwards HTTP and gRPC to it over
    TLS, presenting its own; a worker whose certificate another CA signed is refused."""
    ca = str(pki["ca"].pem)
    router_cert = tuple(map(str, pki["ca"].issue("router", "router", member=True)))
    worker_cert = tuple(map(str, pki["ca"].issue("worker", "worker", member=True)))
    stranger_cert = tuple(map(str, pki["other"].issue("stranger-worker", "stranger", member=True)))
    client = tuple(map(str, pki["client"]))
    tls = lambda cert: ["--tls-cert", cert[0], "--tls-key", cert[1], "--tls-client-ca", ca]  # noqa: E731
    router = Router(*tls(router_cert))
    worker = stranger = None
    try:
        assert router.url.startswith("https://")
        worker = Server(EXAMPLES, "--join", router.url, "--worker-id", "w-tls", "--heartbeat-ms", "200",
                        "--feature-repo", "none", *tls(worker_cert))

        def fleet():
            return requests.get(router.url + "/v2/fleet", verify=ca, cert=client, timeout=5).json()

        def serving():
            return any(w["id"] == "w-tls" and w["state"] == "serving" and w["models"] for w in fleet()["workers"])
        wait_for(serving, timeout=60, what="the worker serving:\n" + router.log()[-2000:] + worker.log()[-2000:])
        record = next(w for w in fleet()["workers"] if w["id"] == "w-tls")
        assert record["http"].startswith("https://") and record["grpc"].startswith("https://"), record
        r = requests.post(router.url + "/v2/models/simple/infer", json=simple_inputs(), verify=ca, cert=client,
                          timeout=10)
        assert r.status_code == 200, r.text
        grpc = grpcclient.InferenceServerClient(router.grpc, ssl=True, root_certificates=ca,
                                                private_key=client[1], certificate_chain=client[0])
        inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
        for i in inputs:
            i.set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
        out = grpc.infer("simple", inputs)
        assert out.as_numpy("OUTPUT0").tolist() == [[2 * v for v in range(16)]]
        # the worker takes only clients its CA signed: a plain client and a stranger are refused
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(record["http"] + "/v2", verify=ca, timeout=5)

        # a worker whose certificate another CA signed cannot join
        stranger = Server(EXAMPLES, "--join", router.url, "--worker-id", "w-stranger", "--heartbeat-ms", "200",
                          "--feature-repo", "none", *tls(stranger_cert)[:4], "--tls-client-ca",
                          str(pki["other"].pem), "--fleet-ca", ca)
        wait_for(lambda: "TLS handshake refused" in router.log(), timeout=30, what="the router refusing it")
        time.sleep(1)
        assert all(w["id"] != "w-stranger" for w in fleet()["workers"])
    finally:
        for p in (stranger, worker):
            if p:
                p.stop()
        router.stop()
