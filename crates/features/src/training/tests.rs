//! Training sets against a brute-force reference, in memory and spilled, on one and several threads.

use super::{parse_memory, TrainingSet};
use crate::definitions::Registry;
use crate::files;
use crate::value::{Value, ValueType};
use arrow_array::{ArrayRef, Float32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use std::path::Path;
use std::sync::Arc;

const REPO: &str = r#"
[[entity]]
name = "card"
join_key = "card_id"

[[entity]]
name = "merchant"
value_type = "string"

[[feature_view]]
name = "txn"
entities = ["card"]
ttl = "2h"
source = { path = "txn.parquet", created_timestamp_column = "created" }
features = [{ name = "amount", dtype = "float32" }, { name = "note", dtype = "string" }]

[[feature_view]]
name = "shop"
entities = ["card", "merchant"]
source = { path = "shop.csv" }
features = [{ name = "visits", dtype = "int64" }]
"#;

const MINUTE: i64 = 60_000_000;
const T0: i64 = 1_790_000_000_000_000;

/// A small deterministic generator (the test must not depend on a random seed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn ts(values: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

fn write_parquet(path: &Path, batch: &RecordBatch, row_group: usize) {
    let props = WriterProperties::builder().set_max_row_group_row_count(Some(row_group)).build();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), Some(props)).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// A build of `features` with Feast's defaults (column `event_timestamp`, short names).
fn training_set<'a>(
    reg: &'a Registry,
    features: &[&str],
    memory_limit: Option<u64>,
    spill_dir: Option<&Path>,
    threads: usize,
) -> TrainingSet<'a> {
    TrainingSet {
        registry: reg,
        features: reg.resolve(features).unwrap(),
        timestamp_field: "event_timestamp".into(),
        full_feature_names: false,
        progress: false,
        memory_limit,
        spill_dir: spill_dir.map(Path::to_path_buf),
        threads,
    }
}

/// Source rows: (key, event time, created time, value) in file order.
struct Txn {
    card: Option<i64>,
    ts: i64,
    created: Option<i64>,
    amount: Option<f32>,
}

struct Shop {
    card: i64,
    merchant: String,
    ts: i64,
    visits: i64,
}

struct Entity {
    card: Option<i64>,
    merchant: Option<String>,
    ts: i64,
}

/// The latest row (event time, then created time, then file order) within the ttl, by brute force.
fn reference<R>(
    rows: &[R],
    matches: impl Fn(&R) -> bool,
    order: impl Fn(&R) -> (i64, i64),
    at: i64,
    ttl: i64,
) -> Option<&R> {
    let mut best: Option<(&R, (i64, i64, usize))> = None;
    for (i, r) in rows.iter().enumerate() {
        let (t, c) = order(r);
        if !matches(r) || t > at || (ttl > 0 && t < at - ttl) {
            continue;
        }
        if best.as_ref().is_none_or(|(_, k)| (t, c, i) > *k) {
            best = Some((r, (t, c, i)));
        }
    }
    best.map(|(r, _)| r)
}

#[test]
fn training_sets_match_a_brute_force_join_in_memory_and_spilled_on_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Lcg(7);
    // Event times on a coarse grid so that ties (same entity, same time) are common; created
    // times tie too, and some are null (they sort first).
    let txn: Vec<Txn> = (0..3000)
        .map(|_| Txn {
            card: (rng.next(50) != 0).then(|| rng.next(60) as i64 + 1),
            ts: T0 + rng.next(24 * 12) as i64 * 5 * MINUTE,
            created: (rng.next(10) != 0).then(|| T0 + rng.next(3) as i64),
            amount: (rng.next(20) != 0).then(|| rng.next(10_000) as f32 / 7.0),
        })
        .collect();
    let batch = RecordBatch::try_from_iter(vec![
        ("card_id", Arc::new(Int64Array::from(txn.iter().map(|r| r.card).collect::<Vec<_>>())) as ArrayRef),
        ("event_timestamp", ts(txn.iter().map(|r| Some(r.ts)).collect())),
        ("created", ts(txn.iter().map(|r| r.created).collect())),
        ("amount", Arc::new(Float32Array::from(txn.iter().map(|r| r.amount).collect::<Vec<_>>()))),
        ("note", Arc::new(StringArray::from_iter_values(txn.iter().map(|r| format!("n{}", r.ts % 97))))),
    ])
    .unwrap();
    // Row groups of 700 rows: the parallel reader deals several to each thread.
    write_parquet(&dir.path().join("txn.parquet"), &batch, 700);
    let shop: Vec<Shop> = (0..800)
        .map(|_| Shop {
            card: rng.next(60) as i64 + 1,
            merchant: format!("m{}", rng.next(5)),
            ts: T0 + rng.next(24 * 12) as i64 * 5 * MINUTE,
            visits: rng.next(1000) as i64,
        })
        .collect();
    let mut csv = String::from("card_id,merchant,event_timestamp,visits\n");
    for r in &shop {
        let t = chrono::DateTime::from_timestamp_micros(r.ts).unwrap().to_rfc3339();
        csv.push_str(&format!("{},{},{t},{}\n", r.card, r.merchant, r.visits));
    }
    std::fs::write(dir.path().join("shop.csv"), csv).unwrap();
    std::fs::write(dir.path().join("repo.toml"), REPO).unwrap();
    let reg = Registry::load(dir.path()).unwrap();
    // Entity rows: some unknown cards (61+), null keys, times on and off the grid.
    let ents: Vec<Entity> = (0..1500)
        .map(|_| Entity {
            card: (rng.next(40) != 0).then(|| rng.next(64) as i64 + 1),
            merchant: (rng.next(30) != 0).then(|| format!("m{}", rng.next(6))),
            ts: T0 + rng.next(26 * 60) as i64 * MINUTE,
        })
        .collect();
    let batch = RecordBatch::try_from_iter(vec![
        ("card_id", Arc::new(Int64Array::from(ents.iter().map(|e| e.card).collect::<Vec<_>>())) as ArrayRef),
        ("merchant", Arc::new(StringArray::from(ents.iter().map(|e| e.merchant.clone()).collect::<Vec<_>>()))),
        ("event_timestamp", ts(ents.iter().map(|e| Some(e.ts)).collect())),
    ])
    .unwrap();
    let entities = dir.path().join("entities.parquet");
    write_parquet(&entities, &batch, 1 << 20);

    let ttl = 2 * 60 * MINUTE;
    let txn_hits: Vec<Option<&Txn>> = ents
        .iter()
        .map(|e| {
            reference(
                &txn,
                |r| r.card.is_some() && r.card == e.card,
                |r| (r.ts, r.created.unwrap_or(i64::MIN)),
                e.ts,
                ttl,
            )
        })
        .collect();
    let want_amount: Vec<Option<Value>> =
        txn_hits.iter().map(|h| h.and_then(|r| r.amount).map(Value::Float32)).collect();
    let want_visits: Vec<Option<Value>> = ents
        .iter()
        .map(|e| {
            let same = |r: &Shop| Some(r.card) == e.card && Some(&r.merchant) == e.merchant.as_ref();
            reference(&shop, same, |r| (r.ts, i64::MIN), e.ts, 0).map(|r| Value::Int64(r.visits))
        })
        .collect();
    assert!(want_amount.iter().filter(|v| v.is_some()).count() > 500, "the data must exercise matches");

    for (limit, threads) in [(None, 1), (None, 3), (Some(1), 1), (Some(1), 3), (Some(40_000), 2)] {
        let out = dir.path().join(format!("out-{limit:?}-{threads}.parquet"));
        let set = training_set(&reg, &["txn:amount", "txn:note", "shop:visits"], limit, Some(dir.path()), threads);
        let report = set.build(&entities, &out).unwrap();
        let case = format!("memory limit {limit:?}, {threads} threads");
        assert_eq!((report.entity_rows, report.feature_rows), (1500, 3800), "{case}");
        assert_eq!(report.spill.is_some(), limit.is_some(), "{case}");
        let mut got_amount = Vec::new();
        let mut got_visits = Vec::new();
        let mut got_cards = Vec::new();
        for batch in files::open(&out).unwrap().batches {
            let batch = batch.unwrap();
            let amount = files::column(&batch, "amount", ValueType::Float32, "out", 0).unwrap();
            let visits = files::column(&batch, "visits", ValueType::Int64, "out", 0).unwrap();
            let cards = files::column(&batch, "card_id", ValueType::Int64, "out", 0).unwrap();
            for r in 0..batch.num_rows() {
                got_amount.push(files::value_at(amount.as_ref(), ValueType::Float32, r));
                got_visits.push(files::value_at(visits.as_ref(), ValueType::Int64, r));
                got_cards.push(files::value_at(cards.as_ref(), ValueType::Int64, r));
            }
        }
        let cards: Vec<Option<Value>> = ents.iter().map(|e| e.card.map(Value::Int64)).collect();
        assert_eq!(got_cards, cards, "{case}: entity rows keep their order");
        assert_eq!(got_amount, want_amount, "{case}");
        assert_eq!(got_visits, want_visits, "{case}");
        // Rows found, per feature (a found row may hold a null value).
        let matched =
            txn_hits.iter().filter(|h| h.is_some()).count() * 2 + want_visits.iter().filter(|v| v.is_some()).count();
        assert_eq!(report.matched, matched as u64, "{case}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("flotilla-training-"))
        .collect();
    assert!(leftovers.is_empty(), "spill folders are removed");
}

#[test]
fn bad_entity_rows_and_sources_get_errors_that_name_the_file_column_and_row() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("repo.toml"), REPO).unwrap();
    std::fs::write(
        dir.path().join("shop.csv"),
        "card_id,merchant,event_timestamp,visits\n1,m1,2026-11-01T10:00:00Z,3\n",
    )
    .unwrap();
    let reg = Registry::load(dir.path()).unwrap();
    let build = |entities: &str, limit: Option<u64>| {
        let path = dir.path().join("entities.csv");
        std::fs::write(&path, entities).unwrap();
        let set = training_set(&reg, &["shop:visits"], limit, Some(dir.path()), 2);
        set.build(&path, &dir.path().join("out.parquet")).map(|r| r.entity_rows).map_err(|e| e.to_string())
    };
    for limit in [None, Some(1)] {
        let ok = build("card_id,merchant,event_timestamp\n1,m1,2026-11-01T11:00:00Z\n", limit);
        assert_eq!(ok, Ok(1));
        let cases = [
            (
                "card_id,event_timestamp\n1,2026-11-01T11:00:00Z\n",
                "entity rows lack column 'merchant' (a key of feature view 'shop')",
            ),
            ("card_id,merchant,event_timestamp\n1,m1,\n", "column 'event_timestamp' row 1 has no timestamp"),
            (
                "card_id,merchant,event_timestamp\nx,m1,2026-11-01T11:00:00Z\n",
                "column 'card_id' row 1: 'x' is not a valid int64",
            ),
            ("card_id,merchant,when\n1,m1,2026-11-01T11:00:00Z\n", "column 'event_timestamp' is missing"),
            ("card_id,merchant,event_timestamp\n", "holds no entity rows"),
        ];
        for (text, want) in cases {
            let e = build(text, limit).unwrap_err();
            assert!(e.contains(want), "{limit:?}: {e}\n  does not contain: {want}");
        }
    }
    // A source row with a bad value is reported with the source file and row.
    std::fs::write(
        dir.path().join("shop.csv"),
        "card_id,merchant,event_timestamp,visits\n1,m1,2026-11-01T10:00:00Z,many\n",
    )
    .unwrap();
    for limit in [None, Some(1)] {
        let e = build("card_id,merchant,event_timestamp\n1,m1,2026-11-01T11:00:00Z\n", limit).unwrap_err();
        assert!(e.contains("shop.csv: column 'visits' row 1: 'many' is not a valid int64"), "{e}");
    }
    // Not Parquet at all.
    std::fs::write(dir.path().join("shop.csv"), "card_id,merchant,event_timestamp,visits\n").unwrap();
    std::fs::write(dir.path().join("entities.parquet"), b"PAR1 not really").unwrap();
    let set = training_set(&reg, &["shop:visits"], None, None, 0);
    let e = set.build(&dir.path().join("entities.parquet"), &dir.path().join("out.parquet")).unwrap_err().to_string();
    assert!(e.contains("not a readable Parquet file"), "{e}");
}

#[test]
fn memory_sizes_parse_as_duckdb_writes_them() {
    assert_eq!(parse_memory("512MB").unwrap(), 512_000_000);
    assert_eq!(parse_memory("2GB").unwrap(), 2_000_000_000);
    assert_eq!(parse_memory("1.5GiB").unwrap(), 3 << 29);
    assert_eq!(parse_memory(" 300 mib ").unwrap(), 300 << 20);
    assert_eq!(parse_memory("4096").unwrap(), 4096);
    for bad in ["", "MB", "-1GB", "12XB", "0", "1e400GB", "nan"] {
        assert!(parse_memory(bad).is_err(), "{bad:?} should not parse");
    }
}

const EDGES: &str = r#"
[[entity]]
name = "account"
join_key = "account_id"

[[feature_view]]
name = "paid"
entities = ["account"]
ttl = "3h"
max_items = 4
source = { path = "paid.parquet", created_timestamp_column = "created" }
features = [
  { name = "dst", dtype = "int64[]" },
  { name = "amount", dtype = "float32[]" },
  { name = "memo", dtype = "string[]" },
]
"#;

/// An edge row: an account pays one or more accounts at once (items share the row's times).
#[derive(Clone)]
struct Paid {
    account: i64,
    ts: i64,
    created: Option<i64>,
    dst: Vec<i64>,
    amount: Vec<f32>,
}

/// An append view as of `at`, by brute force: every item of the account's rows up to then in
/// (event time, created time, file order, list order), an item equal to an earlier one at the
/// same time dropped, the newest `max` kept; none when the newest is older than the ttl.
fn items_reference(rows: &[Paid], account: Option<i64>, at: i64, max: usize, ttl: i64) -> Option<Vec<(i64, i64)>> {
    let mut mine: Vec<(usize, &Paid)> =
        rows.iter().enumerate().filter(|(_, r)| Some(r.account) == account && r.ts <= at).collect();
    mine.sort_by_key(|(i, r)| (r.ts, r.created.unwrap_or(i64::MIN), *i));
    let newest = mine.last()?.1.ts;
    if newest < at - ttl {
        return None;
    }
    // (time, dst, amount bits, memo)
    let mut items: Vec<(i64, i64, u32, String)> = Vec::new();
    for (_, r) in mine {
        for (d, a) in r.dst.iter().zip(&r.amount) {
            let item = (r.ts, *d, a.to_bits(), format!("m{d}"));
            if !items.contains(&item) {
                items.push(item);
            }
        }
    }
    let kept = &items[items.len().saturating_sub(max)..];
    Some(kept.iter().map(|(t, d, ..)| (*t, *d)).collect())
}

#[test]
fn append_views_rebuild_each_entity_rows_newest_items_as_the_online_store_appends_them() {
    use arrow_array::builder::{Float32Builder, Int64Builder, ListBuilder, StringBuilder};
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Lcg(11);
    let mut paid: Vec<Paid> = Vec::new();
    for _ in 0..2500 {
        let n = 1 + rng.next(3) as usize;
        let dst: Vec<i64> = (0..n).map(|_| 100 + rng.next(30) as i64).collect();
        let row = Paid {
            account: rng.next(40) as i64 + 1,
            // A coarse grid: many rows of an account share a time (ties decided by created time
            // and file order).
            ts: T0 + rng.next(24 * 6) as i64 * 10 * MINUTE,
            created: (rng.next(8) != 0).then(|| T0 + rng.next(3) as i64),
            amount: dst.iter().map(|_| rng.next(5) as f32).collect(),
            dst,
        };
        paid.push(row.clone());
        match rng.next(10) {
            // A redelivered row: its items are there already.
            0 => paid.push(row),
            // The same payees at the same time but other amounts: new items.
            1 => paid.push(Paid { amount: row.amount.iter().map(|a| a + 0.5).collect(), ..row }),
            _ => {}
        }
    }
    let mut dst = ListBuilder::new(Int64Builder::new());
    let mut amount = ListBuilder::new(Float32Builder::new());
    let mut memo = ListBuilder::new(StringBuilder::new());
    for r in &paid {
        dst.append_value(r.dst.iter().map(|d| Some(*d)));
        amount.append_value(r.amount.iter().map(|a| Some(*a)));
        memo.append_value(r.dst.iter().map(|d| Some(format!("m{d}"))));
    }
    let batch = RecordBatch::try_from_iter(vec![
        ("account_id", Arc::new(Int64Array::from(paid.iter().map(|r| r.account).collect::<Vec<_>>())) as ArrayRef),
        ("event_timestamp", ts(paid.iter().map(|r| Some(r.ts)).collect())),
        ("created", ts(paid.iter().map(|r| r.created).collect())),
        ("dst", Arc::new(dst.finish())),
        ("amount", Arc::new(amount.finish())),
        ("memo", Arc::new(memo.finish())),
    ])
    .unwrap();
    write_parquet(&dir.path().join("paid.parquet"), &batch, 600);
    std::fs::write(dir.path().join("repo.toml"), EDGES).unwrap();
    let reg = Registry::load(dir.path()).unwrap();
    let ents: Vec<(Option<i64>, i64)> = (0..1200)
        .map(|_| ((rng.next(30) != 0).then(|| rng.next(44) as i64 + 1), T0 + rng.next(26 * 60) as i64 * MINUTE))
        .collect();
    let batch = RecordBatch::try_from_iter(vec![
        ("account_id", Arc::new(Int64Array::from(ents.iter().map(|e| e.0).collect::<Vec<_>>())) as ArrayRef),
        ("event_timestamp", ts(ents.iter().map(|e| Some(e.1)).collect())),
    ])
    .unwrap();
    let entities = dir.path().join("entities.parquet");
    write_parquet(&entities, &batch, 1 << 20);
    let want: Vec<Option<Vec<(i64, i64)>>> =
        ents.iter().map(|(a, at)| items_reference(&paid, *a, *at, 4, 3 * 60 * MINUTE)).collect();
    assert!(want.iter().filter(|w| w.as_ref().is_some_and(|l| l.len() == 4)).count() > 300, "full lists");
    assert!(want.iter().filter(|w| w.as_ref().is_some_and(|l| l.len() < 4)).count() > 10, "short lists");
    assert!(want.iter().filter(|w| w.is_none()).count() > 30, "no items, or too old");

    // `amount` is not requested, yet it tells items apart.
    for (limit, threads) in [(None, 1), (None, 3), (Some(1), 1), (Some(1), 3)] {
        let out = dir.path().join(format!("edges-{limit:?}-{threads}.parquet"));
        let set = training_set(&reg, &["paid:memo", "paid:dst"], limit, Some(dir.path()), threads);
        let report = set.build(&entities, &out).unwrap();
        let case = format!("memory limit {limit:?}, {threads} threads");
        assert_eq!(report.matched, want.iter().filter(|w| w.is_some()).count() as u64 * 2, "{case}");
        let mut got = Vec::new();
        for batch in files::open(&out).unwrap().batches {
            let batch = batch.unwrap();
            let dst = files::column(&batch, "dst", ValueType::Int64List, "out", 0).unwrap();
            let memo = files::column(&batch, "memo", ValueType::StringList, "out", 0).unwrap();
            for r in 0..batch.num_rows() {
                let d = files::value_at(dst.as_ref(), ValueType::Int64List, r);
                let m = files::value_at(memo.as_ref(), ValueType::StringList, r);
                got.push((d, m));
            }
        }
        for (i, (w, (d, m))) in want.iter().zip(got).enumerate() {
            let want_dst =
                w.as_ref().map(|l| Value::List(ValueType::Int64, l.iter().map(|x| Value::Int64(x.1)).collect()));
            let want_memo = w.as_ref().map(|l| {
                Value::List(ValueType::String, l.iter().map(|x| Value::String(format!("m{}", x.1).into())).collect())
            });
            assert_eq!(d, want_dst, "{case}: entity row {i} {:?}", ents[i]);
            assert_eq!(m, want_memo, "{case}: entity row {i}");
        }
    }

    // A source row whose lists differ in length is refused with its row.
    let bad = RecordBatch::try_from_iter(vec![
        ("account_id", Arc::new(Int64Array::from(vec![1, 1])) as ArrayRef),
        ("event_timestamp", ts(vec![Some(T0), Some(T0)])),
        ("created", ts(vec![None, None])),
        ("dst", Arc::new(Int64Array::from(vec![5, 6])) as ArrayRef),
        ("amount", Arc::new(Float32Array::from(vec![1.0, 2.0])) as ArrayRef),
        ("memo", Arc::new(StringArray::from(vec![Some("[\"a\"]"), Some("[\"a\", \"b\"]")])) as ArrayRef),
    ])
    .unwrap();
    write_parquet(&dir.path().join("paid.parquet"), &bad, 100);
    for limit in [None, Some(1)] {
        let set = training_set(&reg, &["paid:dst"], limit, Some(dir.path()), 1);
        let e = set.build(&entities, &dir.path().join("bad.parquet")).unwrap_err().to_string();
        assert!(e.contains("paid.parquet row 2: feature 'memo' has 2 items but the features before it have 1"), "{e}");
    }
}
