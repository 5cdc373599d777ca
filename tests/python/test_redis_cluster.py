"""The online store on a real Redis Cluster the test starts: Debian's redis-server in cluster
mode, three masters and three replicas on loopback ports, made one cluster by
`redis-cli --cluster create`. Enrichment and streams write to and read from it (an entity's
views share a slot, the keys spread over the three masters), and a master is killed during reads
and writes: its replica takes over, and no acknowledged write is lost."""
import datetime
import json
import random
import socket
import shutil
import signal
import subprocess
import threading
import time
import uuid

import numpy as np
import pytest
import redis as redis_client
import tritonclient.http as httpclient

from conftest import EXAMPLES, Server, wait_for
from test_features import (FEATURES, REDIS_DB, column, online, post, push_fresh_cards, reference_input,
                           txn_repo)

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
                                reason="redis-server and redis-cli (Debian's redis-server) are needed")


BASE = datetime.datetime(2026, 11, 2, tzinfo=datetime.timezone.utc)


def cluster_ports(n):
    """`n` ports below 55536 whose cluster bus ports (10000 higher) are free too."""
    ports = []
    while len(ports) < n:
        p = random.randrange(20000, 45000)
        if p in ports:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + 10000))
        except OSError:
            continue
        ports.append(p)
    return ports


class Cluster:
    """Six redis-server processes in cluster mode (three masters, a replica each)."""

    def __init__(self, tmp):
        self.ports = cluster_ports(6)
        self.procs = {}
        self.tmp = tmp
        for p in self.ports:
            self.start(p)
        for p in self.ports:
            wait_for(lambda p=p: self.ping(p), what=f"redis-server on {p}")
        create = subprocess.run(
            ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
             "--cluster-replicas", "1", "--cluster-yes"], capture_output=True, text=True, timeout=60)
        assert create.returncode == 0, create.stdout + create.stderr
        wait_for(self.healthy, timeout=60, what="the cluster to be ok on every node")
        # a replica can take over only once it has synced with its master
        wait_for(self.replicas_synced, timeout=60, what="every replica synced with its master")

    def start(self, port):
        d = self.tmp / f"node-{port}"
        d.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", "1000",
             "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0", "--dir", str(d), "--daemonize", "no", "--logfile", str(d / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def client(self, port):
        return redis_client.Redis(host="127.0.0.1", port=port, socket_timeout=2)

    def ping(self, port):
        try:
            return self.client(port).ping()
        except redis_client.RedisError:
            return False

    def healthy(self, ports=None):
        try:
            return all(self.client(p).execute_command("CLUSTER", "INFO").decode().find("cluster_state:ok") >= 0
                       for p in (ports or self.live()))
        except redis_client.RedisError:
            return False

    def replicas_synced(self):
        try:
            infos = [self.client(p).info("replication") for p in self.live()]
        except redis_client.RedisError:
            return False
        replicas = [i for i in infos if i["role"] == "slave"]
        return len(replicas) == 3 and all(i.get("master_link_status") == "up" for i in replicas)

    def live(self):
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def masters(self):
        """Port of the master serving each slot range, from a live node."""
        slots = self.client(self.live()[0]).execute_command("CLUSTER", "SLOTS")
        return sorted({int(entry[2][1]) for entry in slots})

    def url(self):
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.stop()


def owner_of(cluster, key):
    slot = cluster.client(cluster.live()[0]).execute_command("CLUSTER", "KEYSLOT", key)
    for entry in cluster.client(cluster.live()[0]).execute_command("CLUSTER", "SLOTS"):
        if entry[0] <= slot <= entry[1]:
            return cluster.client(int(entry[2][1]))
    raise AssertionError(f"no master serves slot {slot}")


def keys_by_master(cluster):
    return {p: cluster.client(p).dbsize() for p in cluster.masters()}


def test_enrichment_and_streams_against_a_redis_cluster(tmp_path, cluster):
    url = cluster.url()
    s = Server(EXAMPLES, "--feature-repo", str(FEATURES), env={"FLOTILLA_ONLINE_STORE": url})
    try:
        cards = list(range(1000, 1060))
        push_fresh_cards(s, cards)
        x = reference_input(s, cards)
        assert not np.isnan(x[0, 0])
        # an entity's views share a slot; the entities spread over the three masters
        counts = keys_by_master(cluster)
        assert len(counts) == 3 and all(n > 5 for n in counts.values()), counts
        tag = (b"i" + (1000).to_bytes(8, "big")).hex()  # the entity key: an int64 join key
        k1 = f"flotilla:{{{tag}}}card_txn_1h".encode()
        k2 = f"flotilla:{{{tag}}}card_profile".encode()
        assert owner_of(cluster, k1).exists(k1) and owner_of(cluster, k2).exists(k2)
        owner = cluster.client(cluster.masters()[0])
        assert owner.execute_command("CLUSTER", "KEYSLOT", k1) == owner.execute_command("CLUSTER", "KEYSLOT", k2)
        # enrichment: a request with only the entity keys equals one with the features given
        http = httpclient.InferenceServerClient(f"127.0.0.1:{s.http_port}")
        direct_in = httpclient.InferInput("input__0", list(x.shape), "FP32")
        direct_in.set_data_from_numpy(x)
        k = httpclient.InferInput("card_id", [len(cards)], "INT64")
        k.set_data_from_numpy(np.array(cards, dtype=np.int64))
        np.testing.assert_array_equal(http.infer("fraud_xgb", [k]).as_numpy("output__0"),
                                      http.infer("fraud_xgb", [direct_in]).as_numpy("output__0"))
        stale = post(s, "/push", {"push_source_name": "card_txn_push", "df": {
            "card_id": [1000], "event_timestamp": ["2026-11-01T00:00:00Z"], "last_amount": [-1.0]}}).json()
        assert stale == {"applied": 0, "stale": 1}, "last write wins on the cluster too"
        metrics = __import__("requests").get(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=5).text
        assert 'flotilla_feature_read_duration_seconds_count{store="redis-cluster"}' in metrics
    finally:
        assert s.stop() == 0, s.log()

    # A Redis Streams source (on the standalone Redis) into the cluster store.
    key = f"flotilla_test:{uuid.uuid4().hex[:8]}"
    source = redis_client.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    decl = f'stream = {{ type = "redis", url = "redis://127.0.0.1:6379/{REDIS_DB}", stream = "{key}", group = "g" }}'
    repo = txn_repo(tmp_path, decl)
    s = Server(EXAMPLES, "--feature-repo", str(repo), env={"FLOTILLA_ONLINE_STORE": url, "FLOTILLA_CONSUME_STREAMS": "true"})
    try:
        for i in range(200):
            source.xadd(key, {"json": json.dumps({"card_id": i, "event_timestamp": "2026-11-02T00:00:00Z",
                                                  "amount": i / 2, "n": i, "tag": f"t{i}"})})
        wait_for(lambda: source.exists(key) and source.xpending(key, "g")["pending"] == 0
                 and online(s, ["txn:n"], {"card_id": [199]})["results"][1]["values"] == [199],
                 what="the stream consumed into the cluster")
        r = online(s, ["txn:n", "txn:tag"], {"card_id": list(range(200))})
        assert column(r, "n")["values"] == list(range(200))
        assert column(r, "tag")["values"] == [f"t{i}" for i in range(200)]
    finally:
        assert s.stop() == 0, s.log()
        source.delete(key, key + ":dead_letter")


def test_a_master_failing_over_during_reads_and_writes_loses_no_acknowledged_write(tmp_path, cluster):
    repo = txn_repo(tmp_path)
    s = Server(EXAMPLES, "--feature-repo", str(repo), env={"FLOTILLA_ONLINE_STORE": cluster.url()})
    acked = {}  # card -> the newest n the server acknowledged
    errors = {"write": [], "read": []}
    reads_ok = [0]
    done = threading.Event()

    def writer():
        n = 0
        while not done.is_set():
            n += 1
            cards = list(range(0, 300, 7))
            # every push a millisecond later than the one before: the newest always wins
            ts = (BASE + datetime.timedelta(milliseconds=n)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            body = {"push_source_name": "txn_push", "df": {
                "card_id": cards, "event_timestamp": [ts] * len(cards),
                "n": [n] * len(cards), "amount": [1.0] * len(cards), "tag": ["w"] * len(cards)}}
            try:
                r = post(s, "/push", body)
            except Exception as e:  # noqa: BLE001
                errors["write"].append(str(e))
                continue
            if r.status_code == 200:
                for c in cards:
                    acked[c] = n
            else:
                errors["write"].append((r.status_code, r.text))
            time.sleep(0.01)

    def reader():
        while not done.is_set():
            r = post(s, "/get-online-features", {"features": ["txn:n"], "entities": {"card_id": list(range(0, 300, 7))}})
            if r.status_code == 200:
                reads_ok[0] += 1
            else:
                errors["read"].append((r.status_code, r.text))
            time.sleep(0.01)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: reads_ok[0] > 20 and len(acked) > 0, what="reads and writes flowing")
        victim = cluster.masters()[1]
        cluster.procs[victim].send_signal(signal.SIGKILL)
        cluster.procs[victim].wait()
        killed = time.monotonic()
        wait_for(lambda: victim not in cluster.masters() and cluster.healthy(), timeout=30,
                 what="the replica to take over")
        failover_s = time.monotonic() - killed
        before = reads_ok[0]
        wait_for(lambda: reads_ok[0] > before + 20, timeout=30, what="reads after the failover")
        time.sleep(1.0)
        done.set()
        for t in threads:
            t.join()
        # every acknowledged write is there: the newest n of each card
        r = online(s, ["txn:n"], {"card_id": sorted(acked)})
        got = dict(zip(sorted(acked), column(r, "n")["values"]))
        lost = {c: (acked[c], got[c]) for c in acked if got[c] is None or got[c] < acked[c]}
        assert not lost, f"acknowledged writes lost in the failover: {lost}"
        # what failed during the failover failed with a clear, retryable answer, never a crash
        for status, text in errors["read"] + [e for e in errors["write"] if isinstance(e, tuple)]:
            assert status == 503 and "redis cluster" in text, (status, text)
        assert s.alive()
        print(f"failover {failover_s:.1f} s; read errors {len(errors['read'])}, write errors {len(errors['write'])}")
    finally:
        done.set()
        for t in threads:
            if t.is_alive():
                t.join()
        assert s.stop() == 0, s.log()
