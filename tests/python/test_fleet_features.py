"""The feature store in a fleet, black-box: workers that share one online store (Redis) take
turns on a PostgreSQL replication slot by a lease in the registry. The holder is killed with
kill -9 under a running workload; another worker takes the lease over within seconds, and the
store still equals SELECT of the table, every committed change applied exactly once."""
import signal
import threading
import time

import pytest
import redis

from conftest import EXAMPLES, Router, Server, wait_for
from test_cdc import Table, Workload, assert_store_equals_table, changes_applied, connect
from test_features import metric

STORE_DB = 12


@pytest.fixture
def table(tmp_path):
    t = Table(tmp_path)
    yield t
    t.drop()


def consumer(router, slot):
    for s in router.fleet()["sources"]:
        if s["source"] == slot:
            return s["consumer"]
    return None


def active_walsenders(slot):
    with connect() as c:
        row = c.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
        return bool(row and row[0])


def test_cdc_lease_moves_to_another_worker_when_its_holder_is_killed(table):
    r = redis.Redis(host="127.0.0.1", port=6379, db=STORE_DB)
    r.flushdb()
    store = f"redis://127.0.0.1:6379/{STORE_DB}"
    with connect() as c:
        c.execute(f"INSERT INTO {table.name} SELECT g, g, 'snap', false, 0, now() FROM generate_series(1, 100) g")
    router = Router("--worker-ttl-ms", "2000")
    workers = {}

    def start(wid):
        workers[wid] = Server(EXAMPLES, "--join", router.url, "--worker-id", wid, "--feature-repo", str(table.repo),
                              "--online-store", store, "--heartbeat-ms", "200",
                              env={"FLOTILLA_CONSUME_STREAMS": "true"})

    w = Workload(table, seed=23, keys=range(1, 150))
    done = threading.Event()
    failure = []

    def run():
        try:
            with connect() as conn:
                while not done.is_set():
                    w.transaction(conn)
                    time.sleep(0.003)
        except Exception as e:  # noqa: BLE001 - reported below
            failure.append(e)

    writer = threading.Thread(target=run)
    try:
        start("ca")
        start("cb")
        router.wait_workers(["ca", "cb"])
        holder = wait_for(lambda: consumer(router, table.slot), what="a worker holding the slot's lease")
        other = "cb" if holder == "ca" else "ca"
        wait_for(lambda: "consuming" in workers[holder].log(), what="the holder streaming:\n" + workers[holder].log()[-3000:])
        assert "consuming" not in workers[other].log(), "only the lease holder streams the slot"
        wait_for(lambda: "waiting for this source's lease" in workers[other].log(), timeout=10,
                 what="the other worker waiting for the lease")
        writer.start()
        time.sleep(1.5)
        workers[holder].proc.send_signal(signal.SIGKILL)
        workers[holder].proc.wait()
        killed = time.monotonic()
        wait_for(lambda: consumer(router, table.slot) == other, timeout=20, what="the lease moving to the other worker")
        wait_for(lambda: "consuming" in workers[other].log(), timeout=20,
                 what="the other worker streaming:\n" + workers[other].log()[-2000:])
        took_over = time.monotonic() - killed
        assert took_over < 10, f"takeover took {took_over:.1f} s"
        print(f"CDC lease: kill -9 of the holder -> the other worker streaming in {took_over:.1f} s")
        # The killed worker comes back and waits its turn.
        start(holder)
        router.wait_workers([holder])
        time.sleep(1.5)
        done.set()
        writer.join()
        assert not failure, failure
        want = w.committed_changes
        s = workers[other]
        wait_for(lambda: changes_applied(s, table) >= want, timeout=120,
                 what=f"{want} changes applied (at {changes_applied(s, table)}):\n" + s.log()[-4000:])
        time.sleep(0.5)
        assert changes_applied(s, table) == want, "a change was applied twice"
        assert metric(s, "flotilla_feature_cdc_snapshot_rows_total", source=table.label) == 0, "no second snapshot"
        assert_store_equals_table(s, table, w.used | set(range(1, 101)))
        assert "consuming" not in workers[holder].log(), "the returning worker waits for the lease"
        assert consumer(router, table.slot) == other
        # A preemption notice hands the lease back at once: the returning worker takes over.
        import requests
        requests.post(s.url + "/v2/admin/preempt", json={"deadline_ms": 1000}, timeout=10)
        wait_for(lambda: consumer(router, table.slot) == holder, timeout=15, what="the lease handed over on preemption")
        wait_for(lambda: "consuming" in workers[holder].log(), timeout=15, what="the returning worker streaming")
    finally:
        done.set()
        if writer.is_alive():
            writer.join()
        for p in workers.values():
            p.stop(signal.SIGKILL)
        router.stop()
        r.flushdb()
