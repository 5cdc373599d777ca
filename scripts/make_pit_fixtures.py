#!/usr/bin/env python3
"""Point-in-time (PIT) parity fixtures for Flotilla's feature store, made by Feast itself.

Writes tests/fixtures/features/pit/:
  entities.toml, views.toml, services.toml   a Flotilla feature repository (TOML schema of the crate)
  data/user_stats.parquet                    source of view user_stats     (entity user,  ttl 2h,  created column)
  data/merchant_risk.parquet                 source of view merchant_risk  (entity merchant (string key), no ttl)
  data/user_merchant.parquet                 source of view user_merchant  (entities user + merchant, ttl 1d)
  entity_df.parquet                          user_id, merchant_id, event_timestamp (~800 rows, duplicates incl.)
  features.txt                               the feature refs requested, one a line, in request order
  expected.parquet                           Feast's get_historical_features(entity_df, features).to_arrow(),
                                             sorted (see manifest.json "row_order")
  manifest.json                              columns, dtypes, ordering, naming, the observed semantics
  cases.json                                 the hand-made edge cases: entity row -> what Feast returned

Expected output comes from Feast's own offline store `duckdb` (ibis point_in_time_join), provider local,
on a Feast repo this script writes to a temp dir with the same definitions. The default file (Dask)
offline store is not used. The script also checks the edge cases against the facts below and stops if
Feast changes behaviour.

Semantics observed with feast 0.67.0 + duckdb 2.0.0 (asserted below, see CASES):
  * A feature row matches an entity row when the join keys are equal and
        feature.event_ts <= entity.event_ts                     (upper bound INCLUSIVE: a row exactly at
                                                                 entity_ts is used; 1 µs later is not)
    and, when the view has a ttl > 0,
        feature.event_ts + ttl >= entity.event_ts               (lower bound INCLUSIVE: a row exactly at
                                                                 entity_ts - ttl IS used; 1 µs older is not)
    A view with no ttl (ttl 0 / unset) has no lower bound (a 5-day-old row is used).
  * Among matching rows the one with the greatest event_ts wins; equal event_ts are broken by the
    greatest created timestamp (created_timestamp_column). File order plays no part (late data, i.e.
    a row that comes later in the file with an earlier event time, is handled by time alone).
    Rows tying on both event_ts and created are resolved arbitrarily: the fixture has none.
  * created_timestamp is only a tie-break: a row whose created timestamp is AFTER the entity
    timestamp is still used (get_historical_features(filter_by_created_timestamp=False), the default).
  * Null feature values: the winning row's value is returned as is, null included; Feast does NOT fall
    back to an older row with a non-null value. Columns are per view: a null in one feature does not
    affect the others.
  * No matching row (unknown key, entity row before the first feature row, all rows outside ttl):
    every feature of that view is null.
  * Duplicate entity rows (same keys and timestamp) each come back, with identical features.
  * Output columns: the entity_df columns in entity_df order, then, per feature view in the order the
    views first appear in the requested refs, that view's features in request order. With
    full_feature_names=False (used here) a column is the bare feature name; with True it is
    "<view>__<feature>" (checked: same values). Feast's row order is not defined (duckdb): expected is
    sorted by (event_timestamp, user_id, merchant_id), stable, so duplicate rows stay adjacent.
  * Timestamp dtype out: timestamp[us, tz=UTC] for entity event_timestamp (input was the same).
    Feature dtypes pass through from the source Parquet unchanged (int32 stays int32, bool stays bool,
    nulls kept as nulls; to_df() would turn int columns with nulls into float64: to_arrow() is used).
  * Entity keys compare by value within their type: merchant "007" and "7" are different keys.

Run: python3 -m venv /tmp/feastvenv && /tmp/feastvenv/bin/pip install -r scripts/requirements-feast.txt
     /tmp/feastvenv/bin/python scripts/make_pit_fixtures.py
Deterministic: fixed seed, fixed base time, no wall clock (the Parquet files are byte-identical between
runs with the pinned versions).
"""
import datetime as dt
import json
import pathlib
import sys
import tempfile
import tomllib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "features" / "pit"

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
TS = pa.timestamp("us", tz="UTC")
US = dt.timedelta(microseconds=1)

FEATURES = [  # request order on purpose interleaves views and differs from the registry's view order
    "merchant_risk:risk",
    "user_stats:spend",
    "user_merchant:txn_count",
    "user_stats:clicks",
    "merchant_risk:flagged",
    "user_stats:tier",
]
# Feast's output columns for FEATURES (after the entity_df columns), asserted below.
EXPECTED_FEATURE_COLUMNS = ["risk", "flagged", "spend", "clicks", "tier", "txn_count"]


def at(h, m=0, s=0, us=0, day=0):
    return T0 + dt.timedelta(days=day, hours=h, minutes=m, seconds=s, microseconds=us)


# ---------------------------------------------------------------------------------------------------
# Hand-made edge cases. Users 1..49 and merchants "e*" are reserved for them; bulk data uses users
# 100.. and merchants "m000".. Each case adds source rows (in the given file order) and entity rows,
# and says what Feast must return for those entity rows (None = null).
# ---------------------------------------------------------------------------------------------------
def edge_cases():
    us_rows, mr_rows, um_rows, ent, cases = [], [], [], [], []

    def user(uid, ev, created, clicks, spend, tier):
        us_rows.append((uid, ev, created, clicks, spend, tier))

    def merch(mid, ev, risk, flagged):
        mr_rows.append((mid, ev, risk, flagged))

    def pair(uid, mid, ev, n):
        um_rows.append((uid, mid, ev, n))

    def entity(name, uid, mid, ts, **expect):
        ent.append((uid, mid, ts))
        cases.append({"case": name, "user_id": uid, "merchant_id": mid, "event_timestamp": ts, "expect": expect})

    # 1. exact tie on event_ts: larger created wins (written FIRST in the file, so not file order).
    user(1, at(10), at(10, 10), 2, 20.0, "gold")
    user(1, at(10), at(10, 5), 1, 10.0, "silver")
    user(1, at(10), at(10, 1), 0, 0.0, "bronze")
    entity("tie_on_event_ts_broken_by_created", 1, "e1", at(11), clicks=2, spend=20.0, tier="gold")
    # 2. feature row exactly at entity_ts: included; a row 1 µs after entity_ts: not.
    user(2, at(11), at(11), 5, 5.0, "a")
    user(2, at(12), at(12), 6, 6.0, "b")
    user(2, at(13, us=1), at(13, us=1), 7, 7.0, "c")
    entity("row_exactly_at_entity_ts", 2, "e1", at(12), clicks=6, spend=6.0, tier="b")
    entity("row_1us_after_entity_ts_excluded", 2, "e1", at(13), clicks=6, spend=6.0, tier="b")
    # 3. row exactly at entity_ts - ttl (2h): included.
    user(3, at(10), at(10), 3, 3.5, "x")
    entity("row_exactly_at_entity_ts_minus_ttl", 3, "e1", at(12), clicks=3, spend=3.5, tier="x")
    # 4. just outside ttl: 1 µs and 1 s older than entity_ts - ttl.
    user(4, at(10, us=-1), at(10), 4, 4.5, "y")
    entity("row_1us_outside_ttl", 4, "e1", at(12), clicks=None, spend=None, tier=None)
    user(5, at(9, 59, 59), at(10), 5, 5.5, "z")
    entity("row_1s_outside_ttl", 5, "e1", at(12), clicks=None, spend=None, tier=None)
    # 5. late data: the later-in-file row has the EARLIER event time.
    user(6, at(13), at(13), 61, 61.0, "late_first_in_file")
    user(6, at(12, 30), at(14), 62, 62.0, "early_last_in_file")
    entity("late_data_between", 6, "e1", at(12, 45), clicks=62, spend=62.0, tier="early_last_in_file")
    entity("late_data_after_both", 6, "e1", at(13, 30), clicks=61, spend=61.0, tier="late_first_in_file")
    # 6. entity key with no feature rows at all (user 7, merchant e_none).
    entity("user_without_rows", 7, "e_none", at(12), clicks=None, spend=None, tier=None, risk=None,
           flagged=None, txn_count=None)
    # 7. entity row before any feature row of its key.
    user(8, at(15), at(15), 8, 8.0, "later")
    entity("entity_before_first_feature_row", 8, "e1", at(9), clicks=None, spend=None, tier=None)
    # 8. duplicate entity rows (same keys + ts, three times).
    user(9, at(11), at(11), 9, 9.0, "dup")
    for _ in range(3):
        entity("duplicate_entity_rows", 9, "e1", at(11, 30), clicks=9, spend=9.0, tier="dup")
    # 9. nulls: the newest row has null spend and tier -> null, no fallback to the older non-null.
    user(10, at(10), at(10), 100, 100.0, "old")
    user(10, at(11), at(11), 101, None, None)
    entity("null_in_winning_row_no_fallback", 10, "e1", at(11, 30), clicks=101, spend=None, tier=None)
    entity("older_row_before_null_row", 10, "e1", at(10, 30), clicks=100, spend=100.0, tier="old")
    # 10. created after entity_ts: still used (created is only a tie-break).
    user(11, at(10), at(18), 11, 11.0, "created_late")
    entity("created_after_entity_ts_still_used", 11, "e1", at(12), clicks=11, spend=11.0, tier="created_late")
    # 11. tie on event_ts where the larger created is also after entity_ts.
    user(12, at(10), at(10), 120, 120.0, "on_time")
    user(12, at(10), at(20), 121, 121.0, "created_after_entity")
    entity("tie_larger_created_after_entity_ts", 12, "e1", at(12), clicks=121, spend=121.0,
           tier="created_after_entity")
    # 12. sub-second entity timestamps.
    user(13, at(12, us=500_000), at(12, us=500_000), 13, 13.0, "half")
    entity("entity_ts_500ms_before_row", 13, "e1", at(12, us=499_999), clicks=None, spend=None, tier=None)
    entity("entity_ts_at_row_subsecond", 13, "e1", at(12, us=500_000), clicks=13, spend=13.0, tier="half")

    # merchant_risk: string keys, no ttl.
    merch("e1", at(0), 0.1, False)
    merch("e_old", at(12, day=-5), 0.9, True)
    entity("no_ttl_5_day_old_row_used", 20, "e_old", at(12), risk=0.9, flagged=True)
    merch("007", at(6), 0.07, True)
    merch("7", at(6), 0.7, False)
    entity("string_key_007", 20, "007", at(7), risk=0.07, flagged=True)
    entity("string_key_7", 20, "7", at(7), risk=0.7, flagged=False)
    merch("e_at", at(12), 0.5, None)
    merch("e_at", at(12, us=1), 0.6, True)
    entity("merchant_row_exactly_at_entity_ts_null_bool", 20, "e_at", at(12), risk=0.5, flagged=None)
    merch("e_nullrisk", at(8), None, True)
    entity("merchant_null_risk", 20, "e_nullrisk", at(9), risk=None, flagged=True)

    # user_merchant: compound key, ttl 1d, no created column.
    pair(30, "e1", at(10), 3)
    pair(30, "e2", at(10), 4)
    pair(31, "e1", at(12, day=-1), 5)         # exactly entity_ts - 1d
    pair(32, "e1", at(12, day=-1, us=-1), 6)  # 1 µs outside 1d
    entity("compound_key_a", 30, "e1", at(12), txn_count=3)
    entity("compound_key_b", 30, "e2", at(12), txn_count=4)
    entity("compound_key_other_merchant_absent", 30, "e3", at(12), txn_count=None)
    entity("compound_exactly_at_ttl_1d", 31, "e1", at(12), txn_count=5)
    entity("compound_1us_outside_ttl_1d", 32, "e1", at(12), txn_count=None)
    return us_rows, mr_rows, um_rows, ent, cases


def bulk(rng):
    """Random data over the day; timestamps on whole minutes so that exact hits happen by chance too."""
    users = np.arange(100, 300)
    merchants = [f"m{i:03d}" for i in range(50)]
    us_rows, mr_rows, um_rows, ent = [], [], [], []
    for u in users:
        k = int(rng.integers(6, 16))
        mins = np.sort(rng.integers(0, 24 * 60, k))
        for i, m in enumerate(mins):
            ev = at(0, int(m))
            # created: a few seconds to hours after; make some exact event ties with distinct created.
            reps = 2 if rng.random() < 0.15 else 1
            for r in range(reps):
                created = ev + dt.timedelta(seconds=int(rng.integers(1, 7200)) + r * 7201)
                spend = None if rng.random() < 0.12 else float(np.round(rng.lognormal(3, 1), 2))
                tier = None if rng.random() < 0.1 else str(rng.choice(["bronze", "silver", "gold"]))
                us_rows.append((int(u), ev, created, int(rng.poisson(4)), spend, tier))
    for mid in merchants:
        k = int(rng.integers(1, 7))
        for m in np.sort(rng.choice(np.arange(-3 * 24 * 60, 24 * 60), k, replace=False)):
            risk = None if rng.random() < 0.1 else float(np.float32(np.round(rng.random(), 3)))
            flagged = None if rng.random() < 0.1 else bool(rng.random() < 0.2)
            mr_rows.append((mid, at(0, int(m)), risk, flagged))
    for _ in range(1000):
        u = int(rng.integers(100, 300))
        mid = merchants[int(rng.integers(0, 50))]
        um_rows.append((u, mid, at(0, int(rng.integers(-24 * 60, 24 * 60))), int(rng.integers(1, 20))))
    # user_merchant has no created column: drop exact (key, ts) duplicates so no tie is arbitrary.
    seen, um_unique = set(), []
    for row in um_rows:
        if (row[0], row[1], row[2]) not in seen:
            seen.add((row[0], row[1], row[2]))
            um_unique.append(row)
    for _ in range(760):
        if rng.random() < 0.5:  # a (user, merchant) pair that has rows, at or after one of its rows
            u, mid, ts, _ = um_unique[int(rng.integers(0, len(um_unique)))]
            ts = max(ts, T0) + dt.timedelta(minutes=int(rng.choice([0, 0, 1, 30, 300, 1440, 1441])))
            ent.append((u, mid, ts))
            continue
        u = int(rng.integers(100, 310))              # 300..309 have no rows
        mid = f"m{int(rng.integers(0, 55)):03d}"     # m050..m054 have no rows
        ent.append((u, mid, at(0, int(rng.integers(0, 24 * 60)))))
    return us_rows, mr_rows, um_unique, ent


def shuffle_late(rng, rows, ts_index):
    """File order: mostly by time, but ~10% of rows moved to the end (late-arriving data)."""
    rows = sorted(rows, key=lambda r: r[ts_index])
    late = rng.random(len(rows)) < 0.1
    return [r for r, l in zip(rows, late) if not l] + [r for r, l in zip(rows, late) if l]


def write(table, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(None), path, compression="zstd", use_dictionary=True)


def main():
    rng = np.random.default_rng(20261101)
    e_us, e_mr, e_um, e_ent, cases = edge_cases()
    b_us, b_mr, b_um, b_ent = bulk(rng)

    us_rows = e_us + shuffle_late(rng, b_us, 1)
    mr_rows = e_mr + sorted(b_mr, key=lambda r: r[1])
    um_rows = e_um + shuffle_late(rng, b_um, 2)
    ent_rows = e_ent + b_ent

    user_stats = pa.table({
        "user_id": pa.array([r[0] for r in us_rows], pa.int64()),
        "event_timestamp": pa.array([r[1] for r in us_rows], TS),
        "created": pa.array([r[2] for r in us_rows], TS),
        "clicks": pa.array([r[3] for r in us_rows], pa.int64()),
        "spend": pa.array([r[4] for r in us_rows], pa.float64()),
        "tier": pa.array([r[5] for r in us_rows], pa.string()),
    })
    merchant_risk = pa.table({
        "merchant_id": pa.array([r[0] for r in mr_rows], pa.string()),
        "ts": pa.array([r[1] for r in mr_rows], TS),
        "risk": pa.array([r[2] for r in mr_rows], pa.float32()),
        "flagged": pa.array([r[3] for r in mr_rows], pa.bool_()),
    })
    user_merchant = pa.table({
        "user_id": pa.array([r[0] for r in um_rows], pa.int64()),
        "merchant_id": pa.array([r[1] for r in um_rows], pa.string()),
        "event_timestamp": pa.array([r[2] for r in um_rows], TS),
        "txn_count": pa.array([r[3] for r in um_rows], pa.int32()),
    })
    entity_df = pa.table({
        "user_id": pa.array([r[0] for r in ent_rows], pa.int64()),
        "merchant_id": pa.array([r[1] for r in ent_rows], pa.string()),
        "event_timestamp": pa.array([r[2] for r in ent_rows], TS),
    })

    for f in OUT.glob("**/*"):
        if f.is_file():
            f.unlink()
    write(user_stats, OUT / "data" / "user_stats.parquet")
    write(merchant_risk, OUT / "data" / "merchant_risk.parquet")
    write(user_merchant, OUT / "data" / "user_merchant.parquet")
    write(entity_df, OUT / "entity_df.parquet")
    write_toml()

    expected, full = run_feast(entity_df)
    key = ["event_timestamp", "user_id", "merchant_id"]
    expected = expected.replace_schema_metadata(None)
    idx = pa.compute.sort_indices(expected, sort_keys=[(k, "ascending") for k in key])  # stable
    expected = expected.take(idx)
    write(expected, OUT / "expected.parquet")
    (OUT / "features.txt").write_text("\n".join(FEATURES) + "\n")

    n_ent = len(entity_df.column_names)
    assert expected.column_names[:n_ent] == entity_df.column_names, expected.column_names
    assert expected.column_names[n_ent:] == EXPECTED_FEATURE_COLUMNS, expected.column_names
    check_cases(expected, cases)
    check_reference(expected, entity_df, user_stats, merchant_risk, user_merchant)
    check_full_names(expected, full, key)
    write_manifest(expected, entity_df, cases)
    total = sum(f.stat().st_size for f in OUT.glob("**/*") if f.is_file())
    print(f"wrote {OUT} ({expected.num_rows} rows, {total} bytes)")


def write_toml():
    (OUT / "entities.toml").write_text('''# PIT parity fixture (generated by scripts/make_pit_fixtures.py; do not edit)
[[entity]]
name = "user"
join_key = "user_id"
value_type = "int64"
description = "A user (integer key)"

[[entity]]
name = "merchant"
join_key = "merchant_id"
value_type = "string"
description = "A merchant (string key)"
''')
    (OUT / "views.toml").write_text('''# PIT parity fixture (generated by scripts/make_pit_fixtures.py; do not edit)
[[feature_view]]
name = "user_stats"
entities = ["user"]
ttl = "2h"
description = "Per-user stats; ties on event_timestamp broken by created"
source = { path = "data/user_stats.parquet", timestamp_field = "event_timestamp", created_timestamp_column = "created" }
features = [
  { name = "clicks", dtype = "int64" },
  { name = "spend", dtype = "float64" },
  { name = "tier", dtype = "string" },
]

[[feature_view]]
name = "merchant_risk"
entities = ["merchant"]
ttl = "0"
description = "Per-merchant risk; never expires; timestamp column named ts"
source = { path = "data/merchant_risk.parquet", timestamp_field = "ts" }
features = [
  { name = "risk", dtype = "float32" },
  { name = "flagged", dtype = "bool" },
]

[[feature_view]]
name = "user_merchant"
entities = ["user", "merchant"]
ttl = "1d"
description = "Per (user, merchant) pair"
source = { path = "data/user_merchant.parquet", timestamp_field = "event_timestamp" }
features = [
  { name = "txn_count", dtype = "int32" },
]
''')
    (OUT / "services.toml").write_text('''# PIT parity fixture (generated by scripts/make_pit_fixtures.py; do not edit)
[[feature_service]]
name = "pit_all"
features = ["merchant_risk:risk", "user_stats:spend", "user_merchant:txn_count", "user_stats:clicks", "merchant_risk:flagged", "user_stats:tier"]
''')
    for f in ("entities.toml", "views.toml", "services.toml"):
        tomllib.loads((OUT / f).read_text())


def run_feast(entity_df):
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.repo_config import RepoConfig
    from feast.types import Bool, Float32, Float64, Int32, Int64, String

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "data").mkdir()
        config = RepoConfig(
            project="pit", provider="local", registry=str(tmp / "data" / "registry.db"),
            online_store={"type": "sqlite", "path": str(tmp / "data" / "online.db")},
            offline_store={"type": "duckdb"}, repo_path=tmp, entity_key_serialization_version=3,
        )
        store = FeatureStore(config=config)
        user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
        merchant = Entity(name="merchant", join_keys=["merchant_id"], value_type=ValueType.STRING)
        data = OUT / "data"
        user_stats = FeatureView(
            name="user_stats", entities=[user], ttl=dt.timedelta(hours=2),
            schema=[Field(name="clicks", dtype=Int64), Field(name="spend", dtype=Float64),
                    Field(name="tier", dtype=String)],
            source=FileSource(path=str(data / "user_stats.parquet"), timestamp_field="event_timestamp",
                              created_timestamp_column="created"))
        merchant_risk = FeatureView(
            name="merchant_risk", entities=[merchant], ttl=dt.timedelta(0),
            schema=[Field(name="risk", dtype=Float32), Field(name="flagged", dtype=Bool)],
            source=FileSource(path=str(data / "merchant_risk.parquet"), timestamp_field="ts"))
        user_merchant = FeatureView(
            name="user_merchant", entities=[user, merchant], ttl=dt.timedelta(days=1),
            schema=[Field(name="txn_count", dtype=Int32)],
            source=FileSource(path=str(data / "user_merchant.parquet"), timestamp_field="event_timestamp"))
        store.apply([user, merchant, user_stats, merchant_risk, user_merchant])
        edf = entity_df.to_pandas()
        job = store.get_historical_features(entity_df=edf.copy(), features=FEATURES)
        out = job.to_arrow()
        df = job.to_df()
        assert len(df) == out.num_rows == entity_df.num_rows, (len(df), out.num_rows, entity_df.num_rows)
        full = store.get_historical_features(entity_df=edf.copy(), features=FEATURES,
                                             full_feature_names=True).to_arrow()
        return out, full


def _py(v):
    if isinstance(v, float):
        return round(v, 6)
    return v


def check_cases(expected, cases):
    rows = expected.to_pylist()
    bad = []
    for c in cases:
        hits = [r for r in rows if r["user_id"] == c["user_id"] and r["merchant_id"] == c["merchant_id"]
                and r["event_timestamp"] == c["event_timestamp"]]
        assert hits, c
        for r in hits:
            got = {k: _py(r[k]) for k in c["expect"]}
            want = {k: _py(v) for k, v in c["expect"].items()}
            if got != want:
                bad.append((c["case"], want, got))
        c["got"] = {k: _py(hits[0][k]) for k in ("clicks", "spend", "tier", "risk", "flagged", "txn_count")}
        c["count"] = len(hits)
    if bad:
        for b in bad:
            print("MISMATCH", *b, file=sys.stderr)
        sys.exit("Feast no longer behaves as this script's notes say: update them")


def check_reference(expected, entity_df, user_stats, merchant_risk, user_merchant):
    """A plain re-implementation of the rules in this file's notes must give Feast's output on every row."""
    views = [  # (table, keys, ts field, created field, ttl, features)
        (user_stats, ["user_id"], "event_timestamp", "created", dt.timedelta(hours=2), ["spend", "clicks", "tier"]),
        (merchant_risk, ["merchant_id"], "ts", None, None, ["risk", "flagged"]),
        (user_merchant, ["user_id", "merchant_id"], "event_timestamp", None, dt.timedelta(days=1), ["txn_count"]),
    ]
    index = []
    for table, keys, tsf, cf, ttl, feats in views:
        by_key = {}
        for r in table.to_pylist():
            by_key.setdefault(tuple(r[k] for k in keys), []).append(r)
        index.append((by_key, keys, tsf, cf, ttl, feats))
    got = expected.to_pylist()
    want = []
    for e in entity_df.to_pylist():
        row = dict(e)
        for by_key, keys, tsf, cf, ttl, feats in index:
            t = e["event_timestamp"]
            cands = [r for r in by_key.get(tuple(e[k] for k in keys), [])
                     if r[tsf] <= t and (ttl is None or r[tsf] + ttl >= t)]
            best = max(cands, key=lambda r: (r[tsf], r[cf] if cf else 0), default=None)
            for f in feats:
                row[f] = best[f] if best else None
        want.append(row)
    order = lambda r: (r["event_timestamp"], r["user_id"], r["merchant_id"])
    want.sort(key=order)
    for g, w in zip(got, want):
        if {k: _py(v) for k, v in g.items()} != {k: _py(v) for k, v in w.items()}:
            sys.exit(f"reference PIT differs from Feast:\n feast {g}\n ref   {w}")
    assert len(got) == len(want)


def check_full_names(expected, full, key):
    idx = pa.compute.sort_indices(full, sort_keys=[(k, "ascending") for k in key])
    full = full.take(idx)
    names = {f.split(":")[1]: f.replace(":", "__") for f in FEATURES}
    for bare, long in names.items():
        assert long in full.column_names, (long, full.column_names)
        assert full[long].equals(expected[bare]), bare
    assert [c for c in full.column_names] == [names.get(c, c) for c in expected.column_names]


def write_manifest(expected, entity_df, cases):
    cols = [{"name": f.name, "arrow_type": str(f.type), "nullable_values": expected[f.name].null_count > 0}
            for f in expected.schema]
    manifest = {
        "generator": "scripts/make_pit_fixtures.py",
        "made_by": "feast FeatureStore.get_historical_features(entity_df, features).to_arrow()",
        "feast_version": __import__("feast").__version__,
        "duckdb_version": __import__("duckdb").__version__,
        "offline_store": "duckdb", "provider": "local",
        "features_file": "features.txt",
        "features": FEATURES,
        "full_feature_names": False,
        "full_feature_names_true_naming": "<view>__<feature> (checked: same values, same column positions)",
        "entity_df": {"file": "entity_df.parquet", "rows": entity_df.num_rows,
                      "columns": [{"name": f.name, "arrow_type": str(f.type)} for f in entity_df.schema]},
        "expected": {"file": "expected.parquet", "rows": expected.num_rows, "columns": cols},
        "column_order": "entity_df columns in entity_df order, then per feature view in order of first "
                        "appearance in the requested refs, each view's features in request order",
        "row_order": "stable sort by (event_timestamp, user_id, merchant_id) ascending; Feast's own order "
                     "is undefined; duplicate entity rows are identical and adjacent",
        "timestamps": "timestamp[us, tz=UTC] in and out; sources also timestamp[us, tz=UTC]",
        "semantics": {
            "upper_bound": "feature.event_ts <= entity.event_ts (inclusive)",
            "ttl_lower_bound": "feature.event_ts >= entity.event_ts - ttl (inclusive); ttl 0 = no bound",
            "winner": "max event_ts, then max created_timestamp; file order irrelevant",
            "created_after_entity_ts": "still used (created is only a tie-break)",
            "null_values": "returned as null; no fallback to older non-null rows",
            "no_match": "all features of the view null",
            "duplicate_entity_rows": "each returned, identical",
        },
        "views": {
            "user_stats": {"entities": ["user_id"], "ttl": "2h", "timestamp_field": "event_timestamp",
                           "created_timestamp_column": "created"},
            "merchant_risk": {"entities": ["merchant_id"], "ttl": "0", "timestamp_field": "ts"},
            "user_merchant": {"entities": ["user_id", "merchant_id"], "ttl": "1d",
                              "timestamp_field": "event_timestamp"},
        },
        "cases_file": "cases.json",
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for c in cases:
        c["event_timestamp"] = c["event_timestamp"].isoformat().replace("+00:00", "Z")
    (OUT / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")


if __name__ == "__main__":
    main()
