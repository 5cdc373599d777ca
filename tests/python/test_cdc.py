"""PostgreSQL change data capture, black-box: the real binary against the local PostgreSQL
(scripts/postgres-logical.sh sets wal_level = logical). A random workload of inserts, updates,
deletes, rollbacks, a large transaction and an added column runs while Flotilla streams; the
online store must then equal SELECT of the table, and the count of changes applied (kept with
the data) must equal the count the workload committed, through kill -9s."""
import random
import signal
import threading
import time
import uuid

import psycopg
import pytest
import requests

from conftest import EXAMPLES, Server, wait_for
from test_features import cli, column, metric, online

DSN = "postgresql://postgres@127.0.0.1:5432/test"
FEATURES = ["limit_amount", "status", "blocked", "n", "updated_at"]

VIEW = """
[[entity]]
name = "card"
join_key = "card_id"
value_type = "int64"

[[feature_view]]
name = "cards"
entities = ["card"]
ttl = "0"
{stream}
features = [
  {{ name = "limit_amount", dtype = "float64" }},
  {{ name = "status", dtype = "string" }},
  {{ name = "blocked", dtype = "bool" }},
  {{ name = "n", dtype = "int64" }},
  {{ name = "updated_at", dtype = "unix_timestamp" }},
]
"""


def connect():
    return psycopg.connect(DSN, autocommit=True)


class Table:
    """A fresh table with its own slot and publication names; dropped (with them) afterwards."""

    def __init__(self, tmp_path, extra=""):
        tag = uuid.uuid4().hex[:8]
        self.name = f"cdc_cards_{tag}"
        self.slot = f"flotilla_test_{tag}"
        self.label = f"postgres:{self.name}"
        with connect() as c:
            c.execute(f"""CREATE TABLE {self.name} (
                card_id bigint PRIMARY KEY, limit_amount numeric(12, 2), status text,
                blocked boolean, n integer, updated_at timestamptz)""")
        self.repo = tmp_path / f"features-{tag}"
        self.repo.mkdir()
        self.write_view(extra)
        self.store = f"embedded:{tmp_path}/online-{tag}.redb"

    def write_view(self, extra="", stream=True):
        decl = (f'stream = {{ type = "postgres", url = "{DSN}", table = "{self.name}", slot = "{self.slot}", '
                f'publication = "{self.slot}"{extra} }}') if stream else ""
        (self.repo / "repo.toml").write_text(VIEW.format(stream=decl))

    def serve(self):
        return Server(EXAMPLES, "--feature-repo", str(self.repo),
                      env={"FLOTILLA_ONLINE_STORE": self.store, "FLOTILLA_CONSUME_STREAMS": "true"})

    def slot_exists(self):
        with connect() as c:
            return c.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)).fetchone()[0] == 1

    def publication_exists(self):
        with connect() as c:
            return c.execute("SELECT count(*) FROM pg_publication WHERE pubname = %s", (self.slot,)).fetchone()[0] == 1

    def drop(self):
        with connect() as c:
            for _ in range(50):
                row = c.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)).fetchone()
                if row is None:
                    break
                if row[0] is not None:
                    c.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                    time.sleep(0.1)
                    continue
                c.execute("SELECT pg_drop_replication_slot(%s)", (self.slot,))
            c.execute(f'DROP PUBLICATION IF EXISTS "{self.slot}"')
            c.execute(f"DROP TABLE IF EXISTS {self.name}")

    def rows(self):
        with connect() as c:
            cur = c.execute(f"SELECT card_id, {', '.join(FEATURES)} FROM {self.name}")
            return {r[0]: r[1:] for r in cur.fetchall()}


@pytest.fixture
def table(tmp_path):
    t = Table(tmp_path)
    yield t
    t.drop()


def changes_applied(server, t):
    return metric(server, "flotilla_feature_cdc_changes_applied_total", default=-1, source=t.label)


def assert_store_equals_table(server, t, keys):
    """Every key ever used: present ones carry the table's values, deleted ones are NOT_FOUND."""
    want = t.rows()
    keys = sorted(set(keys) | set(want))
    r = online(server, [f"cards:{f}" for f in FEATURES], {"card_id": keys})
    for fi, f in enumerate(FEATURES):
        col = column(r, f)
        for key, value, status in zip(keys, col["values"], col["statuses"]):
            if key not in want:
                assert status == "NOT_FOUND", f"card {key} was deleted but {f} is {status} {value}"
                continue
            expected = want[key][fi]
            if expected is None:
                assert status == "NULL_VALUE", f"card {key} {f}: {status} {value}, want null"
                continue
            assert status == "PRESENT", f"card {key} {f}: {status}"
            if f == "limit_amount":
                assert abs(value - float(expected)) < 1e-9, (key, f, value, expected)
            elif f == "updated_at":
                got = value.replace("Z", "+00:00")
                import datetime as dt
                assert dt.datetime.fromisoformat(got) == expected, (key, f, value, expected)
            else:
                assert value == expected, (key, f, value, expected)


class Workload:
    """Random transactions; counts the changes (rows inserted, updated, deleted) that committed."""

    def __init__(self, t, seed, keys=range(1, 400)):
        self.t = t
        self.rng = random.Random(seed)
        self.keys = list(keys)
        self.committed_changes = 0
        self.used = set()
        self.added_column = False

    def statement(self, cur):
        rng, name = self.rng, self.t.name
        k = rng.choice(self.keys)
        self.used.add(k)
        kind = rng.random()
        if kind < 0.45:
            cur.execute(
                f"INSERT INTO {name} VALUES (%s, %s, %s, %s, %s, now() - %s * interval '1 second') "
                f"ON CONFLICT (card_id) DO UPDATE SET limit_amount = excluded.limit_amount, status = excluded.status, "
                f"n = excluded.n",
                (k, round(rng.uniform(0, 10_000), 2), rng.choice(["open", "frozen", None, "closed ü"]),
                 rng.choice([True, False, None]), rng.randint(-1000, 1000), rng.randint(0, 10 ** 6)))
        elif kind < 0.8:
            cur.execute(f"UPDATE {name} SET n = coalesce(n, 0) + 1, blocked = NOT coalesce(blocked, false) "
                        f"WHERE card_id BETWEEN %s AND %s", (k, k + rng.randint(0, 5)))
            self.used.update(range(k, k + 6))
        else:
            cur.execute(f"DELETE FROM {name} WHERE card_id = %s", (k,))
        return cur.rowcount

    def transaction(self, conn):
        statements = self.rng.randint(1, 4)
        rollback = self.rng.random() < 0.15
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            n = sum(self.statement(cur) for _ in range(statements))
            if self.added_column:
                cur.execute(f"UPDATE {self.t.name} SET extra = %s WHERE card_id = %s",
                            (self.rng.randint(0, 9), self.rng.choice(self.keys)))
                n += cur.rowcount
            cur.execute("ROLLBACK" if rollback else "COMMIT")
        if not rollback:
            self.committed_changes += n

    def large_transaction(self, conn, rows=20_000):
        """One transaction of `rows` inserts and as many updates."""
        base = 1_000_000
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute(f"INSERT INTO {self.t.name} SELECT g, g / 100.0, 'bulk', false, 0, now() "
                        f"FROM generate_series(%s, %s) g", (base, base + rows - 1))
            n = cur.rowcount
            cur.execute(f"UPDATE {self.t.name} SET n = 1 WHERE card_id >= %s", (base,))
            n += cur.rowcount
            cur.execute("COMMIT")
        self.committed_changes += n
        self.used.update(range(base, base + rows))

    def add_column(self, conn):
        conn.execute(f"ALTER TABLE {self.t.name} ADD COLUMN extra integer")
        self.added_column = True


def test_cdc_snapshot_then_random_workload_equals_select(table):
    with connect() as c:
        c.execute(f"INSERT INTO {table.name} SELECT g, g * 1.5, 'snap', g % 2 = 0, g, now() FROM generate_series(1, 300) g")
    s = table.serve()
    try:
        wait_for(lambda: "consuming" in s.log(), what="the stream to start")
        assert metric(s, "flotilla_feature_cdc_snapshot_rows_total", source=table.label) == 300
        assert_store_equals_table(s, table, range(1, 301))
        assert table.slot_exists() and table.publication_exists()
        w = Workload(table, seed=7)
        with connect() as conn:
            for i in range(300):
                w.transaction(conn)
                if i == 100:
                    w.large_transaction(conn)
                if i == 150:
                    w.add_column(conn)
        want = w.committed_changes
        wait_for(lambda: changes_applied(s, table) >= want, timeout=120,
                 what=f"{want} changes applied (at {changes_applied(s, table)})")
        time.sleep(0.5)
        assert changes_applied(s, table) == want, "a change was applied twice"
        assert_store_equals_table(s, table, w.used | set(range(1, 301)))
        # Caught up: nothing behind, nothing unreadable.
        wait_for(lambda: metric(s, "flotilla_feature_cdc_lag_bytes", default=None, source=table.label) == 0,
                 what="lag 0 bytes", timeout=30)
        assert metric(s, "flotilla_feature_cdc_bad_values_total", source=table.label) == 0
        assert metric(s, "flotilla_feature_cdc_slot_lag_warning", default=None, source=table.label, slot=table.slot) == 0
        assert metric(s, "flotilla_feature_cdc_visibility_seconds_count", source=table.label) > 0
    finally:
        assert s.stop() == 0, s.log()


def test_cdc_kill_9_five_times_loses_and_doubles_nothing(table):
    with connect() as c:
        c.execute(f"INSERT INTO {table.name} SELECT g, g, 'snap', false, 0, now() FROM generate_series(1, 200) g")
    s = table.serve()
    wait_for(lambda: "consuming" in s.log(), what="the snapshot and the stream")
    w = Workload(table, seed=11)
    done = threading.Event()
    failure = []

    def run():
        try:
            with connect() as conn:
                i = 0
                while not done.is_set():
                    w.transaction(conn)
                    if i == 200:
                        w.large_transaction(conn, rows=8_000)
                    i += 1
                    time.sleep(0.002)
        except Exception as e:  # noqa: BLE001 - reported by the test below
            failure.append(e)

    writer = threading.Thread(target=run)
    writer.start()
    rng = random.Random(3)
    kills = 0
    try:
        for _ in range(5):
            time.sleep(rng.uniform(0.3, 2.0))
            s.proc.send_signal(signal.SIGKILL)
            s.proc.wait()
            kills += 1
            s = table.serve()
            wait_for(lambda: "consuming" in s.log(), what="the stream to resume")
        done.set()
        writer.join()
        assert not failure, failure
        want = w.committed_changes
        wait_for(lambda: changes_applied(s, table) >= want, timeout=180,
                 what=f"{want} changes applied after {kills} kills (at {changes_applied(s, table)})")
        time.sleep(0.5)
        assert changes_applied(s, table) == want, "a change was applied twice"
        assert metric(s, "flotilla_feature_cdc_snapshot_rows_total", source=table.label) == 0, "no second snapshot"
        assert_store_equals_table(s, table, w.used | set(range(1, 201)))
    finally:
        done.set()
        writer.join()
        assert s.stop() == 0, s.log()


def test_cdc_slot_hygiene_drop_command_removed_view_and_lag_warning(tmp_path):
    t = Table(tmp_path, extra=", max_lag_mb = 1")
    try:
        s = t.serve()
        try:
            wait_for(lambda: "consuming" in s.log(), what="the stream to start")
            assert t.slot_exists()
            # A transaction left open pins the slot's restart point; 4 MB of WAL go by meanwhile.
            with connect() as holder, connect() as c:
                holder.execute("BEGIN")
                holder.execute(f"INSERT INTO {t.name} (card_id) VALUES (-1)")
                c.execute(f"CREATE TABLE {t.name}_filler AS SELECT g, repeat('x', 400) AS pad FROM generate_series(1, 10000) g")
                c.execute(f"DROP TABLE {t.name}_filler")
                wait_for(lambda: metric(s, "flotilla_feature_cdc_slot_lag_warning", default=None,
                                        source=t.label, slot=t.slot) == 1, timeout=30, what="the slot lag warning")
                assert metric(s, "flotilla_feature_cdc_slot_retained_bytes", source=t.label, slot=t.slot) > 1 << 20
                holder.execute("ROLLBACK")
        finally:
            assert s.stop() == 0, s.log()
        args = ["--feature-repo", str(t.repo), "--online-store", t.store]
        status = cli("cdc", "status", *args, check=False)
        assert status.returncode == 0 and t.slot in status.stdout and "changes applied" in status.stdout, status
        dropped = cli("cdc", "drop", "--view", "cards", *args, check=False)
        assert dropped.returncode == 0, dropped.stderr
        assert not t.slot_exists() and not t.publication_exists()
        assert "no PostgreSQL source" in cli("cdc", "status", *args, check=False).stdout
        unknown = cli("cdc", "drop", "--view", "nope", *args, check=False)
        assert unknown.returncode != 0 and "nope" in unknown.stderr
        # Streaming again makes a new slot and copies the table; removing the view's stream drops it.
        s = t.serve()
        try:
            wait_for(lambda: "consuming" in s.log(), what="the stream to start again")
            assert t.slot_exists()
        finally:
            assert s.stop() == 0, s.log()
        t.write_view(stream=False)
        s = t.serve()
        try:
            wait_for(lambda: not t.slot_exists(), timeout=30, what="the undeclared slot to be dropped")
            assert not t.publication_exists()
        finally:
            assert s.stop() == 0, s.log()
    finally:
        t.drop()


def test_cdc_uses_but_never_drops_a_publication_it_did_not_create(table):
    """A DBA's publication (Flotilla's user may not own the table) is streamed from; dropping the
    view's slot leaves it alone, and one that does not publish the table is refused, not altered."""
    with connect() as c:
        c.execute(f'CREATE TABLE {table.name}_other (id int PRIMARY KEY)')
        c.execute(f'CREATE PUBLICATION "{table.slot}" FOR TABLE {table.name}_other')
    try:
        s = table.serve()
        try:
            wait_for(lambda: "does not publish" in s.log(), what="the publication error", timeout=30)
            assert "consuming" not in s.log() and not table.slot_exists()
        finally:
            assert s.stop() == 0, s.log()
        with connect() as c:
            tables = c.execute("SELECT tablename FROM pg_publication_tables WHERE pubname = %s", (table.slot,)).fetchall()
            assert tables == [(f"{table.name}_other",)], "someone else's publication was altered"
            c.execute(f'ALTER PUBLICATION "{table.slot}" ADD TABLE {table.name}')
            c.execute(f"INSERT INTO {table.name} (card_id, status) VALUES (7, 'open')")
        s = table.serve()
        try:
            wait_for(lambda: "consuming" in s.log(), what="the stream to start")
            with connect() as c:
                c.execute(f"UPDATE {table.name} SET status = 'frozen' WHERE card_id = 7")
            wait_for(lambda: changes_applied(s, table) == 1, what="the update applied")
            assert column(online(s, ["cards:status"], {"card_id": [7]}), "status")["values"] == ["frozen"]
        finally:
            assert s.stop() == 0, s.log()
        args = ["--feature-repo", str(table.repo), "--online-store", table.store]
        dropped = cli("cdc", "drop", "--view", "cards", *args, check=False)
        assert dropped.returncode == 0, dropped.stderr
        assert not table.slot_exists() and table.publication_exists()
    finally:
        with connect() as c:
            c.execute(f'DROP PUBLICATION IF EXISTS "{table.slot}"')
            c.execute(f"DROP TABLE IF EXISTS {table.name}_other")


def test_cdc_into_the_redis_online_store(table):
    """The same stream into Redis: each write of changes and its position is one MULTI/EXEC."""
    import redis
    r = redis.Redis(host="127.0.0.1", port=6379, db=14)
    r.flushdb()
    table.store = "redis://127.0.0.1:6379/14"
    with connect() as c:
        c.execute(f"INSERT INTO {table.name} SELECT g, g, 'snap', true, g, now() FROM generate_series(1, 50) g")
    s = table.serve()
    try:
        wait_for(lambda: "consuming" in s.log(), what="the stream to start")
        w = Workload(table, seed=5, keys=range(1, 80))
        with connect() as conn:
            for _ in range(150):
                w.transaction(conn)
            conn.execute(f"TRUNCATE {table.name}")
            w.committed_changes += 1
            for _ in range(50):
                w.transaction(conn)
        want = w.committed_changes
        wait_for(lambda: changes_applied(s, table) >= want, what=f"{want} changes applied")
        assert changes_applied(s, table) == want
        assert_store_equals_table(s, table, w.used | set(range(1, 51)))
    finally:
        assert s.stop() == 0, s.log()
        r.flushdb()


@pytest.mark.parametrize("ddl, message", [
    ("ALTER TABLE {t} ADD COLUMN spot point; ALTER TABLE {t} DROP COLUMN n; ALTER TABLE {t} RENAME COLUMN spot TO n",
     "column 'n' is point, which cannot be read as int64"),
    ("ALTER TABLE {t} DROP COLUMN status", "has no column 'status'"),
    ("ALTER TABLE {t} DROP CONSTRAINT {t}_pkey", "has no primary key"),
])
def test_cdc_schema_errors_are_clear(table, ddl, message):
    with connect() as c:
        for stmt in ddl.format(t=table.name).split("; "):
            c.execute(stmt)
    s = table.serve()
    try:
        wait_for(lambda: message in s.log(), what=f"the error '{message}'", timeout=30)
        assert "consuming" not in s.log()
        assert not table.slot_exists(), "no slot is made for a table that cannot stream"
        # refused, not retried: the consumer stops once and says so; the server serves on
        assert "its consumer stopped" in s.log(), s.log()[-2000:]
        time.sleep(1.5)
        assert s.log().count(message) == 1, s.log()[-3000:]
        assert "retrying" not in s.log()
        assert requests.get(s.url + "/v2/health/live", timeout=5).status_code == 200
    finally:
        assert s.stop() == 0, s.log()
