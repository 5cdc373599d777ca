"""TLS from Flotilla to the services it reads and writes, black-box with real servers: the Redis
online store and a Redis stream over `rediss://` against a redis-server the test starts with TLS
(certificates made at test time, mutual TLS, a wrong CA refused), and PostgreSQL change data
capture with libpq's `sslmode` against the local PostgreSQL (require; verify-full refused with a
CA that did not sign it) and against a private PostgreSQL the test starts with its own
certificate (verify-full accepted)."""
import os
import pathlib
import shutil
import subprocess
import tempfile
import time
import uuid

import psycopg
import pytest
import redis as redis_client
import requests

from certs import Ca
from conftest import BIN, EXAMPLES, Server, free_port, wait_for
from test_features import FEATURES, column, online, push_fresh_cards

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is needed")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca, other = Ca(folder), Ca(folder, "Other CA")
    return {"folder": folder, "ca": ca, "other": other,
            "server": ca.issue("server", "redis", server=True),
            "client": ca.issue("client", "flotilla"),
            "stranger": other.issue("stranger", "stranger")}


class TlsRedis:
    """redis-server with TLS only (no plain port); clients must present a certificate."""

    def __init__(self, tmp, pki):
        self.port = free_port()
        cert, key = pki["server"]
        self.dir = tmp / f"redis-{self.port}"
        self.dir.mkdir()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
             "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(pki["ca"].pem),
             "--tls-auth-clients", "yes", "--save", "", "--appendonly", "no", "--dir", str(self.dir),
             "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client_cert, client_key = pki["client"]
        self.client = redis_client.Redis(host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=str(pki["ca"].pem),
                                         ssl_certfile=str(client_cert), ssl_keyfile=str(client_key), socket_timeout=2)
        wait_for(self.ping, what="redis-server with TLS")

    def ping(self):
        try:
            return self.client.ping()
        except redis_client.RedisError:
            return False

    def url(self, pki, ca="ca", client="client", db=0):
        base = f"rediss://127.0.0.1:{self.port}/{db}?ssl_ca_certs={pki[ca].pem}"
        if client:
            cert, key = pki[client]
            base += f"&ssl_certfile={cert}&ssl_keyfile={key}"
        return base

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def tls_redis(tmp_path, pki):
    r = TlsRedis(tmp_path, pki)
    yield r
    r.stop()


def test_redis_online_store_over_mutual_tls(tls_redis, pki):
    s = Server(EXAMPLES, "--feature-repo", str(FEATURES), env={"FLOTILLA_ONLINE_STORE": tls_redis.url(pki)})
    try:
        cards = [11, 22, 33]
        push_fresh_cards(s, cards)
        r = online(s, ["card_txn_1h:txn_count_1h"], {"card_id": cards})
        assert all(v is not None for v in column(r, "txn_count_1h")["values"]), r
        # the rows are in the TLS-only Redis (read with redis-py over TLS)
        assert tls_redis.client.exists(b"flotilla:card_txn_1h:i" + (11).to_bytes(8, "big"))
    finally:
        assert s.stop() == 0, s.log()


@pytest.mark.parametrize("ca, client, reason", [
    ("other", "client", "UnknownIssuer"),           # the server's certificate is not from the CA we trust
    ("ca", None, "online store unavailable"),       # the server wants a client certificate
])
def test_redis_tls_refusals_are_clear(tls_redis, pki, ca, client, reason):
    out = subprocess.run([BIN, "features", "get", "--feature-repo", str(FEATURES),
                          "--online-store", tls_redis.url(pki, ca=ca, client=client),
                          "--features", "card_profile:home_country", "--entities", '{"card_id": [1]}'],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0, out.stdout
    assert "online store unavailable" in out.stderr and reason.lower() in out.stderr.lower(), out.stderr


def test_redis_url_options_are_checked(pki):
    for url, reason in [
        ("rediss://127.0.0.1:1/0?ssl_ca_certs=/nonexistent/ca.pem", "/nonexistent/ca.pem"),
        ("rediss://127.0.0.1:1/0?ssl_cert_reqs=none", "always verifies"),
        (f"redis://127.0.0.1:1/0?ssl_ca_certs={pki['ca'].pem}", "needs a rediss://"),
        (f"rediss://127.0.0.1:1/0?ssl_certfile={pki['client'][0]}", "together"),
    ]:
        out = subprocess.run([BIN, "features", "get", "--feature-repo", str(FEATURES), "--online-store", url,
                              "--features", "card_profile:home_country", "--entities", '{"card_id": [1]}'],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and reason in out.stderr, (url, out.stderr)


STREAM_VIEW = """
[[entity]]
name = "card"
join_key = "card_id"
value_type = "int64"

[[feature_view]]
name = "cards"
entities = ["card"]
ttl = "0"
stream = {stream}
features = [{{ name = "limit_amount", dtype = "float64" }}, {{ name = "status", dtype = "string" }}]
"""


def test_redis_stream_over_tls(tls_redis, pki, tmp_path):
    repo = tmp_path / "features"
    repo.mkdir()
    stream = f"s-{uuid.uuid4().hex[:6]}"
    url = tls_redis.url(pki, db=1)
    (repo / "repo.toml").write_text(STREAM_VIEW.format(
        stream=f'{{ type = "redis", url = "{url}", stream = "{stream}" }}'))
    s = Server(EXAMPLES, "--feature-repo", str(repo), env={"FLOTILLA_CONSUME_STREAMS": "true"})
    try:
        wait_for(lambda: "consuming" in s.log(), what="the stream to start:\n" + s.log()[-2000:])
        c = redis_client.Redis(host="127.0.0.1", port=tls_redis.port, db=1, ssl=True,
                               ssl_ca_certs=str(pki["ca"].pem), ssl_certfile=str(pki["client"][0]),
                               ssl_keyfile=str(pki["client"][1]))
        for i in range(1, 6):
            c.xadd(stream, {"card_id": i, "limit_amount": 100.0 * i, "status": "ok",
                            "event_timestamp": "2026-11-01T12:00:00Z"})

        def landed():
            r = online(s, ["cards:limit_amount"], {"card_id": [1, 5]})
            return column(r, "limit_amount")["values"] == [100.0, 500.0]
        wait_for(landed, timeout=30, what="the rows read over TLS:\n" + s.log()[-2000:])
    finally:
        assert s.stop() == 0, s.log()


# --- PostgreSQL ---------------------------------------------------------------------------------

PG_VIEW = """
[[entity]]
name = "card"
join_key = "card_id"
value_type = "int64"

[[feature_view]]
name = "cards"
entities = ["card"]
ttl = "0"
stream = {{ type = "postgres", url = "{url}", table = "{table}", slot = "{slot}", publication = "{slot}" }}
features = [{{ name = "limit_amount", dtype = "float64" }}, {{ name = "status", dtype = "string" }}]
"""


class PgTable:
    def __init__(self, dsn, tmp_path, url):
        tag = uuid.uuid4().hex[:8]
        self.dsn, self.name, self.slot = dsn, f"tls_cards_{tag}", f"flotilla_tls_{tag}"
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f"CREATE TABLE {self.name} (card_id bigint PRIMARY KEY, limit_amount float8, status text)")
            c.execute(f"INSERT INTO {self.name} SELECT g, g * 10, 'snap' FROM generate_series(1, 20) g")
        self.repo = tmp_path / f"features-{tag}"
        self.repo.mkdir()
        (self.repo / "repo.toml").write_text(PG_VIEW.format(url=url, table=self.name, slot=self.slot))

    def serve(self):
        return Server(EXAMPLES, "--feature-repo", str(self.repo), env={"FLOTILLA_CONSUME_STREAMS": "true"})

    def drop(self):
        with psycopg.connect(self.dsn, autocommit=True) as c:
            for _ in range(50):
                try:
                    c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                              "WHERE slot_name = %s", (self.slot,))
                    break
                except psycopg.Error:
                    time.sleep(0.2)
            c.execute(f'DROP PUBLICATION IF EXISTS "{self.slot}"')
            c.execute(f"DROP TABLE IF EXISTS {self.name}")


def streams_with_tls(s, table, dsn):
    """Snapshot and changes arrive, and PostgreSQL reports Flotilla's connections encrypted."""
    wait_for(lambda: "consuming" in s.log(), what="the stream to start:\n" + s.log()[-3000:])
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"UPDATE {table.name} SET limit_amount = 7777, status = 'live' WHERE card_id = 3")

    def landed():
        r = online(s, ["cards:limit_amount", "cards:status"], {"card_id": [1, 3]})
        return (column(r, "limit_amount")["values"] == [10.0, 7777.0]
                and column(r, "status")["values"] == ["snap", "live"])
    wait_for(landed, timeout=30, what="the snapshot and the change:\n" + s.log()[-3000:])
    with psycopg.connect(dsn, autocommit=True) as c:
        rows = c.execute("SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                         "WHERE a.application_name = 'flotilla'").fetchall()
    assert rows and all(r[0] for r in rows), rows


LOCAL = "postgresql://postgres@127.0.0.1:5432/test"


def local_pg_has_ssl():
    try:
        with psycopg.connect(LOCAL, autocommit=True) as c:
            return c.execute("SHOW ssl").fetchone()[0] == "on"
    except psycopg.Error:
        return False


@pytest.mark.skipif(not local_pg_has_ssl(), reason="the local PostgreSQL does not serve TLS (ssl = off)")
def test_cdc_with_sslmode_require(tmp_path):
    t = PgTable(LOCAL, tmp_path, LOCAL + "?sslmode=require")
    s = t.serve()
    try:
        streams_with_tls(s, t, LOCAL)
    finally:
        assert s.stop() == 0, s.log()
        t.drop()


@pytest.mark.skipif(not local_pg_has_ssl(), reason="the local PostgreSQL does not serve TLS (ssl = off)")
def test_cdc_verify_full_with_a_wrong_ca_is_refused_and_not_retried(tmp_path, pki):
    url = f"{LOCAL}?sslmode=verify-full&sslrootcert={pki['other'].pem}"
    t = PgTable(LOCAL, tmp_path, url)
    s = t.serve()
    try:
        wait_for(lambda: "its consumer stopped" in s.log(), timeout=30, what="the refusal:\n" + s.log()[-3000:])
        log = s.log()
        assert "PostgreSQL TLS" in log and "sslmode=verify-full" in log, log[-3000:]
        assert "consuming" not in log and "retrying" not in log
        assert requests.get(s.url + "/v2/health/live", timeout=5).status_code == 200
    finally:
        assert s.stop() == 0, s.log()
        t.drop()


PG_BIN = next(iter(sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None) \
    if pathlib.Path("/usr/lib/postgresql").exists() else None


class PrivatePostgres:
    """A PostgreSQL of the test's own (initdb as the postgres user) serving TLS with a
    certificate the test's CA signed, for 127.0.0.1."""

    def __init__(self, pki):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="flotilla-pg-"))
        self.port = free_port()
        cert, key = pki["server"]
        for src, name in [(cert, "server.crt"), (key, "server.key")]:
            shutil.copy(src, self.dir / name)
        os.chmod(self.dir / "server.key", 0o600)
        shutil.chown(self.dir, "postgres")
        for name in ("server.crt", "server.key"):
            shutil.chown(self.dir / name, "postgres")
        run = ["runuser", "-u", "postgres", "--"]
        data = self.dir / "data"
        subprocess.run([*run, str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                       check=True, capture_output=True, timeout=120)
        self.proc = subprocess.Popen(
            [*run, str(PG_BIN / "postgres"), "-D", str(data), "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
             "-c", f"unix_socket_directories={self.dir}", "-c", "ssl=on",
             "-c", f"ssl_cert_file={self.dir / 'server.crt'}", "-c", f"ssl_key_file={self.dir / 'server.key'}",
             "-c", "wal_level=logical", "-c", "fsync=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

        def up():
            try:
                with psycopg.connect(self.dsn + "?sslmode=disable", connect_timeout=2):
                    return True
            except psycopg.Error:
                return False
        wait_for(up, timeout=60, what="the private PostgreSQL")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.mark.skipif(PG_BIN is None or shutil.which("runuser") is None or os.geteuid() != 0,
                    reason="needs Debian's PostgreSQL binaries and root (initdb runs as the postgres user)")
def test_cdc_with_sslmode_verify_full_against_a_server_the_ca_signed(tmp_path, pki):
    pg = PrivatePostgres(pki)
    try:
        url = f"{pg.dsn}?sslmode=verify-full&sslrootcert={pki['ca'].pem}"
        t = PgTable(pg.dsn, tmp_path, url)
        s = t.serve()
        try:
            streams_with_tls(s, t, pg.dsn)
        finally:
            assert s.stop() == 0, s.log()
            t.drop()
    finally:
        pg.stop()
