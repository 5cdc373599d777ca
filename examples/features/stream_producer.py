#!/usr/bin/env python3
"""Publishes card_txn_1h feature rows as JSON to NATS JetStream (subject features.card_txn_1h).

Each message is one row of the view card_txn_1h (see card_txn_1h.toml), e.g.
  {"card_id": 42, "event_timestamp": "2026-11-24T12:00:00.123Z", "last_amount": 12.5, "last_hour": 12.0,
   "last_merchant_category": 3.0, "last_country": 7.0, "last_distance_km": null, "txn_count_1h": 2}
event_timestamp is the publish time (UTC, RFC 3339, milliseconds) unless --start is given, in which case
rows are stamped --start, --start + 1/rate, ... (reproducible). last_hour is the UTC hour of
event_timestamp; txn_count_1h counts the card's rows of this run within the hour up to and including it.

The JetStream stream (--stream, default FEATURES, subjects "features.>") is created when absent;
every publish waits for the JetStream ack. Needs nats-py (scripts/requirements-feast.txt).

  python examples/features/stream_producer.py --url nats://127.0.0.1:4222 --count 1000 --rate 200
"""
import argparse
import asyncio
import datetime as dt
import json
import math
import random
import sys
import time
from collections import defaultdict, deque

import nats
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

RISKY_MCC = [3, 7, 11]
RISKY_COUNTRY = [5, 17, 23]


def rfc3339(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


class Cards:
    """A small deterministic model of card behaviour (same distributions as make_feature_examples.py)."""

    def __init__(self, n, seed):
        self.rng = random.Random(seed)
        self.n = n
        self.home = {}
        self.log_mean = {}
        self.recent = defaultdict(deque)

    def row(self, t, fraud_rate):
        rng = self.rng
        card = rng.randint(1, self.n)
        if card not in self.home:
            self.home[card] = rng.randrange(30)
            self.log_mean[card] = rng.gauss(3.5, 1.1)
        fraud = rng.random() < fraud_rate
        foreign = fraud or rng.random() < 0.1
        if fraud:
            amount = math.exp(self.log_mean[card] + 0.125) * rng.uniform(4, 10)
            mcc, country, dist = rng.choice(RISKY_MCC), rng.choice(RISKY_COUNTRY), rng.uniform(500, 3000)
        else:
            amount = math.exp(self.log_mean[card] + rng.gauss(0, 0.5))
            mcc = rng.randrange(12)
            country = rng.randrange(30) if foreign else self.home[card]
            dist = None if rng.random() < 0.15 else rng.expovariate(1 / (120 if foreign else 25))
        q = self.recent[card]
        q.append(t)
        while q and q[0] <= t - dt.timedelta(hours=1):
            q.popleft()
        return {
            "card_id": card,
            "event_timestamp": rfc3339(t),
            "last_amount": round(amount, 2),
            "last_hour": float(t.hour),
            "last_merchant_category": float(mcc),
            "last_country": float(country),
            "last_distance_km": None if dist is None else round(dist, 1),
            "txn_count_1h": len(q),
        }


async def ensure_stream(js, name, subjects, subject):
    """Uses the stream that already holds `subject` (Flotilla creates one when it starts first);
    otherwise the stream `name`, created when absent."""
    try:
        holder = await js.find_stream_name_by_subject(subject)
        return f"stream {holder} holds {subject}"
    except NotFoundError:
        pass
    try:
        info = await js.stream_info(name)
        return f"stream {name} exists (subjects {info.config.subjects})"
    except NotFoundError:
        await js.add_stream(StreamConfig(name=name, subjects=subjects))
        return f"created stream {name} (subjects {subjects})"


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="nats://127.0.0.1:4222", help="NATS server URL")
    ap.add_argument("--count", type=int, default=1000, help="rows to publish")
    ap.add_argument("--rate", type=float, default=100.0, help="rows per second (0 = as fast as acks allow)")
    ap.add_argument("--subject", default="features.card_txn_1h")
    ap.add_argument("--stream", default="FEATURES", help="JetStream stream to create when no stream holds --subject")
    ap.add_argument("--stream-subjects", default="features.>")
    ap.add_argument("--cards", type=int, default=10_000, help="card ids 1..N")
    ap.add_argument("--fraud-rate", type=float, default=0.01, help="share of fraud-like rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", help="stamp rows from this RFC 3339 time instead of the clock, "
                                    "e.g. 2026-11-01T12:00:00Z")
    ap.add_argument("--print", action="store_true", help="also print each row")
    args = ap.parse_args()

    nc = await nats.connect(args.url, connect_timeout=5, max_reconnect_attempts=2)
    js = nc.jetstream()
    print(await ensure_stream(js, args.stream, [args.stream_subjects], args.subject), file=sys.stderr)

    cards = Cards(args.cards, args.seed)
    start = dt.datetime.fromisoformat(args.start.replace("Z", "+00:00")) if args.start else None
    step = 1.0 / args.rate if args.rate > 0 else 0.0
    t0 = time.monotonic()
    last_seq = None
    for i in range(args.count):
        if step:
            delay = t0 + i * step - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if start is not None:
            t = start + dt.timedelta(seconds=i * (step or 0.001))
        else:
            t = dt.datetime.now(dt.timezone.utc)
        row = cards.row(t, args.fraud_rate)
        ack = await js.publish(args.subject, json.dumps(row).encode())
        last_seq = ack.seq
        if args.print:
            print(json.dumps(row))
    elapsed = time.monotonic() - t0
    print(f"published {args.count} rows to {args.subject} in {elapsed:.2f}s "
          f"(stream {args.stream}, last seq {last_seq})", file=sys.stderr)
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
