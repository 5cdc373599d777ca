#!/usr/bin/env python3
"""Generates the example feature repository examples/features/ (card fraud) and the fraud_xgb
model's enrichment file examples/repository/fraud_xgb/features.toml.

examples/features/
  entities.toml        entity `card` (join key card_id, int64)
  card_profile.toml    view card_profile (ttl 30d): card_age_days, avg_amount_30d, home_country;
                       1-2 rows per card (a snapshot before the day, an update during it for ~40%,
                       a restatement with the same event time and a later `created` for ~1%)
  card_txn_1h.toml     view card_txn_1h (ttl 2h): the card's latest transaction context, one row per
                       transaction over 2026-11-01 (UTC); push source card_txn_push; NATS stream
                       features.card_txn_1h
  services.toml        feature services fraud_v1 (the model's 8 features) and card_summary
  data/*.parquet       sources (timestamps are Arrow timestamp[us, tz=UTC]) and entity_df.parquet
                       (card_id + event_timestamp rows, for a training-set example)
  README.md            what is where
  stream_producer.py   is NOT generated here (hand-written; publishes rows to NATS JetStream)

Distributions follow scripts/make_tree_examples.py fraud() so that fraud_xgb (features amount, hour,
merchant_category, country, card_age_days, txn_count_1h, avg_amount_30d, distance_km) scores them
sensibly: amount lognormal(3.5, 1.2) overall, amount / avg_amount_30d ~ lognormal(0, 0.5),
merchant_category 0..11, country 0..29, card_age exponential(400), distance exponential(30) with 15%
null, avg_amount_30d null for cards younger than 30 days. About 1% of cards get a fraud-like burst
(night, risky merchant and country, several large transactions within minutes).

Run: /tmp/feastvenv/bin/python scripts/make_feature_examples.py (numpy, pyarrow; see
scripts/requirements-feast.txt). Deterministic: fixed seed and base date, no wall clock.
"""
import datetime as dt
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "examples" / "features"
MODEL = ROOT / "examples" / "repository" / "fraud_xgb"

N_CARDS = 10_000
BASE = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
BASE_US = int(BASE.timestamp()) * 1_000_000
DAY_US = 86_400 * 1_000_000
HOUR_US = 3_600 * 1_000_000
TS = pa.timestamp("us", tz="UTC")
RISKY_MCC = [3, 7, 11]
RISKY_COUNTRY = [5, 17, 23]


def ts_array(us):
    return pa.array(np.asarray(us, dtype=np.int64), pa.int64()).cast(TS)


def f32(x, decimals=None):
    x = np.asarray(x, dtype=np.float64)
    if decimals is not None:
        x = np.round(x, decimals)
    return x.astype(np.float32)


def nullable(values, mask, type_):
    return pa.array(values, type_, mask=np.asarray(mask, dtype=bool))


def write(table, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", use_dictionary=True)


def cards(rng):
    ids = np.arange(1, N_CARDS + 1, dtype=np.int64)
    home = rng.integers(0, 30, N_CARDS)
    age_at_base = rng.exponential(400, N_CARDS)
    log_mean = rng.normal(3.5, 1.1, N_CARDS)  # card's typical log amount; amount sd ~1.2 overall
    return ids, home, age_at_base, log_mean


def profile(rng, ids, home, age_at_base, log_mean):
    rows = []  # (card_id, event_us, created_us, age, avg_or_nan, home)

    def avg30(age):
        return np.nan if age < 30 else float(np.exp(log_mean[i] + 0.125 + rng.normal(0, 0.1)))

    for i in range(N_CARDS):
        if rng.random() < 0.02:  # stale snapshot, older than the 30d ttl
            back_days = rng.uniform(31, 60)
        else:
            back_days = rng.uniform(0.5, 25)
        back_days = min(back_days, age_at_base[i] * rng.uniform(0.2, 1.0)) if age_at_base[i] < back_days else back_days
        ev = BASE_US - int(back_days * 86_400) * 1_000_000
        age = max(age_at_base[i] - back_days, 0.0)
        created = ev + int(rng.integers(1, 600)) * 1_000_000
        rows.append((ids[i], ev, created, age, avg30(age), home[i]))
        if rng.random() < 0.01:  # restatement: same event time, later created, corrected values
            rows.append((ids[i], ev, created + 6 * HOUR_US, age, avg30(age), home[i]))
        if rng.random() < 0.4:  # update during the day
            off = int(rng.integers(0, 86_400)) * 1_000_000
            age2 = age_at_base[i] + off / DAY_US
            rows.append((ids[i], BASE_US + off, BASE_US + off + int(rng.integers(1, 600)) * 1_000_000,
                         age2, avg30(age2), home[i]))
    rows.sort(key=lambda r: (r[1], r[0], r[2]))
    cid, ev, cr, age, avg, hc = map(np.array, zip(*rows))
    return pa.table({
        "card_id": pa.array(cid, pa.int64()),
        "event_timestamp": ts_array(ev),
        "created": ts_array(cr),
        "card_age_days": pa.array(f32(age, 2), pa.float32()),
        "avg_amount_30d": nullable(f32(np.nan_to_num(avg), 2), np.isnan(avg), pa.float32()),
        "home_country": pa.array(hc, pa.int64()),
    })


def transactions(rng, ids, home, log_mean):
    rows = []  # (card_id, t_us, amount, mcc, country, distance_or_nan, count_1h)
    for i in range(N_CARDS):
        times, amounts, mccs, countries, dists = [], [], [], [], []
        if rng.random() < 0.15:
            continue  # no transaction that day
        for _ in range(1 + rng.poisson(0.8)):  # ordinary sessions
            t = int(rng.integers(0, 86_400)) * 1_000_000
            for _ in range(1 + rng.poisson(0.7)):
                if t >= DAY_US:
                    break
                foreign = rng.random() < 0.1
                times.append(t)
                amounts.append(np.exp(log_mean[i] + rng.normal(0, 0.5)))
                mccs.append(int(rng.integers(0, 12)))
                countries.append(int(rng.integers(0, 30)) if foreign else int(home[i]))
                dists.append(np.nan if rng.random() < 0.15 else rng.exponential(120 if foreign else 25))
                t += int(rng.exponential(8 * 60)) * 1_000_000 + 1_000_000
        if rng.random() < 0.01:  # fraud-like burst at night
            t = int(rng.integers(0, 4 * 3_600)) * 1_000_000
            country = int(rng.choice(RISKY_COUNTRY))
            for _ in range(int(rng.integers(3, 7))):
                times.append(t)
                amounts.append(np.exp(log_mean[i] + 0.125) * rng.uniform(4, 10))
                mccs.append(int(rng.choice(RISKY_MCC)))
                countries.append(country)
                dists.append(rng.uniform(500, 3000))
                t += int(rng.integers(30, 300)) * 1_000_000
        order = np.argsort(times, kind="stable")
        ts = np.array(times)[order]
        for j, k in enumerate(order):
            count = int(np.sum((ts > ts[j] - HOUR_US) & (ts <= ts[j])))
            rows.append((ids[i], BASE_US + int(ts[j]), amounts[k], mccs[k], countries[k], dists[k], count))
    rows.sort(key=lambda r: (r[1], r[0]))
    cid, t, amount, mcc, country, dist, count = map(np.array, zip(*rows))
    hour = ((t - BASE_US) // HOUR_US) % 24
    return pa.table({
        "card_id": pa.array(cid, pa.int64()),
        "event_timestamp": ts_array(t),
        "last_amount": pa.array(f32(amount, 2), pa.float32()),
        "last_hour": pa.array(f32(hour), pa.float32()),
        "last_merchant_category": pa.array(f32(mcc), pa.float32()),
        "last_country": pa.array(f32(country), pa.float32()),
        "last_distance_km": nullable(f32(np.nan_to_num(dist), 1), np.isnan(dist), pa.float32()),
        "txn_count_1h": pa.array(count, pa.int64()),
    })


def entity_df(rng, txn):
    """Training-set entity rows: 80% at a transaction (at its time or 1..30 s after, as a model scoring
    it would see it), 20% at random times of the day, some for unknown cards (ids above 10000)."""
    n = 5_000
    k = int(n * 0.8)
    pick = np.sort(rng.choice(txn.num_rows, k, replace=False))
    t_txn = txn["event_timestamp"].cast(pa.int64()).to_numpy()[pick]
    lag = np.where(rng.random(k) < 0.5, 0, rng.integers(1, 31, k)) * 1_000_000
    cid = np.concatenate([txn["card_id"].to_numpy()[pick], rng.integers(1, N_CARDS + 51, n - k)])
    t = np.concatenate([t_txn + lag, BASE_US + rng.integers(0, 86_400, n - k) * 1_000_000])
    order = np.lexsort((cid, t))
    return pa.table({"card_id": pa.array(cid[order], pa.int64()), "event_timestamp": ts_array(t[order])})


HEADER = "# Generated by scripts/make_feature_examples.py; edit the script, not this file.\n"

ENTITIES = HEADER + '''[[entity]]
name = "card"
join_key = "card_id"
value_type = "int64"
description = "A payment card"
'''

CARD_PROFILE = HEADER + '''[[feature_view]]
name = "card_profile"
entities = ["card"]
ttl = "30d"
description = "Slowly changing card attributes from a daily batch job; a restatement has the same event_timestamp and a later created"
push_source = "card_profile_push"
source = { path = "data/card_profile.parquet", timestamp_field = "event_timestamp", created_timestamp_column = "created" }
features = [
  { name = "card_age_days", dtype = "float32" },
  { name = "avg_amount_30d", dtype = "float32" },   # null for cards younger than 30 days
  { name = "home_country", dtype = "int64" },
]
'''

CARD_TXN_1H = HEADER + '''[[feature_view]]
name = "card_txn_1h"
entities = ["card"]
ttl = "2h"
description = "The card's latest transaction and its count over the last hour; streamed on NATS, batch history in Parquet"
push_source = "card_txn_push"
source = { path = "data/card_txn_1h.parquet", timestamp_field = "event_timestamp" }
stream = { type = "nats", subject = "features.card_txn_1h" }
features = [
  { name = "last_amount", dtype = "float32" },
  { name = "last_hour", dtype = "float32" },
  { name = "last_merchant_category", dtype = "float32" },
  { name = "last_country", dtype = "float32" },
  { name = "last_distance_km", dtype = "float32" },   # null for ~15% of transactions
  { name = "txn_count_1h", dtype = "int64" },
]
'''

SERVICES = HEADER + '''[[feature_service]]
name = "fraud_v1"
features = ["card_txn_1h", "card_profile:card_age_days", "card_profile:avg_amount_30d"]

[[feature_service]]
name = "card_summary"
features = ["card_profile"]
'''

MODEL_FEATURES = '''# Generated by scripts/make_feature_examples.py; edit the script, not this file.
# Feature enrichment of fraud_xgb: a request carrying card_id gets input__0 filled from the feature
# repository examples/features, in the model's feature order (see features.txt):
# amount, hour, merchant_category, country, card_age_days, txn_count_1h, avg_amount_30d, distance_km.
keys = ["card_id"]

[[input]]
name = "input__0"
features = ["card_txn_1h:last_amount", "card_txn_1h:last_hour", "card_txn_1h:last_merchant_category", "card_txn_1h:last_country", "card_profile:card_age_days", "card_txn_1h:txn_count_1h", "card_profile:avg_amount_30d", "card_txn_1h:last_distance_km"]
missing = "nan"
'''

README = '''# Example feature repository: card fraud

Generated by `scripts/make_feature_examples.py` (deterministic; edit the script, not these files),
except `stream_producer.py`. Everything is synthetic.

| file | what |
| --- | --- |
| `entities.toml` | entity `card`, join key `card_id` (int64), cards 1..10000 |
| `card_profile.toml` | view `card_profile`, ttl 30d, push source `card_profile_push` |
| `card_txn_1h.toml` | view `card_txn_1h`, ttl 2h, push source `card_txn_push`, NATS subject `features.card_txn_1h` |
| `services.toml` | feature services `fraud_v1` (the 8 inputs of `fraud_xgb`) and `card_summary` |
| `data/card_profile.parquet` | {profile_rows} rows: `card_id`, `event_timestamp`, `created`, `card_age_days`, `avg_amount_30d`, `home_country` |
| `data/card_txn_1h.parquet` | {txn_rows} rows: `card_id`, `event_timestamp`, `last_amount`, `last_hour`, `last_merchant_category`, `last_country`, `last_distance_km`, `txn_count_1h` |
| `data/entity_df.parquet` | {entity_rows} rows: `card_id`, `event_timestamp` on 2026-11-01, the entity rows of a training-set (point-in-time) example: 80% at a transaction (its time or 1..30 s after), 20% at random times (some for unknown cards, ids above 10000) |
| `stream_producer.py` | publishes `card_txn_1h` rows as JSON to NATS JetStream |

All timestamps are Arrow `timestamp[us, tz=UTC]`.

## card_profile (ttl 30d)
Slowly changing card attributes, as a daily batch job would write them. Every card has a snapshot
taken 0.5 to 25 days before 2026-11-01 (2% of cards: 31 to 60 days, so it is outside the ttl and the
features are missing); 40% get an update during 2026-11-01; 1% get a restatement: a row with the
same `event_timestamp` and a `created` 6 hours later, which wins the tie.
- `card_age_days` (float32): age of the card at `event_timestamp`.
- `avg_amount_30d` (float32): average amount over 30 days, null for cards younger than 30 days.
- `home_country` (int64): country code 0..29.

## card_txn_1h (ttl 2h)
The card's latest transaction, one row per transaction on 2026-11-01 (85% of cards transact that
day, in one to a few sessions of minutes; 1% of cards have a night-time burst of 3 to 6 large
transactions at a risky merchant and country). Its values are the context the fraud model scores.
- `last_amount` (float32), `last_hour` (float32, UTC hour 0..23 of the transaction),
  `last_merchant_category` (float32 code 0..11), `last_country` (float32 code 0..29; the card's home
  country 90% of the time), `last_distance_km` (float32, null for ~15%).
- `txn_count_1h` (int64): the card's transactions in the hour up to and including this one.
The same rows arrive live on NATS subject `features.card_txn_1h` (`stream_producer.py`).

## Using it with fraud_xgb
`examples/repository/fraud_xgb/features.toml` maps the model's `input__0` (8 features, in the order of
its `features.txt`) to these views: a request that carries `card_id` gets the vector filled in, with
NaN for missing values (unknown card, value outside ttl, null).

## Streaming
```
python3 -m venv /tmp/feastvenv && /tmp/feastvenv/bin/pip install -r scripts/requirements-feast.txt
/tmp/feastvenv/bin/python examples/features/stream_producer.py --url nats://127.0.0.1:4222 --count 1000 --rate 200
```
It creates the JetStream stream `FEATURES` (subjects `features.>`) when absent and publishes rows like
`{{"card_id": 42, "event_timestamp": "2026-11-24T12:00:00.123Z", "last_amount": 12.5, "last_hour": 12.0,
"last_merchant_category": 3.0, "last_country": 7.0, "last_distance_km": null, "txn_count_1h": 2}}`.
'''


def main():
    rng = np.random.default_rng(20261101)
    ids, home, age_at_base, log_mean = cards(rng)
    prof = profile(rng, ids, home, age_at_base, log_mean)
    txn = transactions(rng, ids, home, log_mean)
    ent = entity_df(rng, txn)
    write(prof, OUT / "data" / "card_profile.parquet")
    write(txn, OUT / "data" / "card_txn_1h.parquet")
    write(ent, OUT / "data" / "entity_df.parquet")
    (OUT / "entities.toml").write_text(ENTITIES)
    (OUT / "card_profile.toml").write_text(CARD_PROFILE)
    (OUT / "card_txn_1h.toml").write_text(CARD_TXN_1H)
    (OUT / "services.toml").write_text(SERVICES)
    (OUT / "README.md").write_text(README.format(profile_rows=prof.num_rows, txn_rows=txn.num_rows,
                                                 entity_rows=ent.num_rows))
    (MODEL / "features.toml").write_text(MODEL_FEATURES)
    import tomllib
    for f in ["entities.toml", "card_profile.toml", "card_txn_1h.toml", "services.toml"]:
        tomllib.loads((OUT / f).read_text())
    tomllib.loads((MODEL / "features.toml").read_text())
    for name, t in [("card_profile", prof), ("card_txn_1h", txn), ("entity_df", ent)]:
        print(f"{name}: {t.num_rows} rows, {(OUT / 'data' / (name + '.parquet')).stat().st_size} bytes")


if __name__ == "__main__":
    main()
