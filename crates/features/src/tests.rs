//! Store, ingestion, enrichment-plan and training-set tests on temporary files.

use crate::definitions::Registry;
use crate::enrich::{Item, ModelFeatures};
use crate::error::FeatureError;
use crate::feature_store::{FeatureStore, Status};
use crate::ingest::{ingest, Window};
use crate::record::{encode_key, Record};
use crate::store::{embedded::Embedded, Checkpoint, StoreLocation};
use crate::training::TrainingSet;
use crate::value::Value;
use std::path::{Path, PathBuf};

const REPO: &str = r#"
[[entity]]
name = "card"
join_key = "card_id"

[[feature_view]]
name = "txn"
entities = ["card"]
ttl = "1h"
source = { path = "txn.csv", created_timestamp_column = "created" }
features = [{ name = "amount", dtype = "float32" }, { name = "count", dtype = "int64" }, { name = "note", dtype = "string" }]
"#;

fn repo(dir: &Path, csv: &str) -> Registry {
    std::fs::write(dir.join("repo.toml"), REPO).unwrap();
    std::fs::write(dir.join("txn.csv"), csv).unwrap();
    Registry::load(dir).unwrap()
}

fn key(reg: &Registry, card: i64) -> Vec<u8> {
    encode_key(&reg.views[0], &[Some(&Value::Int64(card))]).unwrap()
}

fn record(event_ts: i64, created_ts: i64, amount: f32) -> Record {
    Record::new(event_ts, created_ts, vec![Some(Value::Float32(amount)), None, None])
}

#[test]
fn embedded_store_keeps_the_newest_event_across_reopen_and_stores_checkpoints_with_rows() {
    let dir = tempfile::tempdir().unwrap();
    let reg = repo(dir.path(), "card_id,event_timestamp,amount,count,note,created\n");
    let path = dir.path().join("online.redb");
    {
        let store = Embedded::open(&path, &reg).unwrap();
        let view = &reg.views[0];
        // Newest first, then older rows: the older ones must not win; ties go to the later created.
        let rows = vec![
            (key(&reg, 1), record(20, 0, 2.0)),
            (key(&reg, 1), record(10, 0, 1.0)),
            (key(&reg, 2), record(5, 1, 5.0)),
        ];
        let out = store.write(view, rows, Some(&Checkpoint { source: "s".into(), position: b"7".to_vec() })).unwrap();
        assert_eq!((out.applied, out.stale), (2, 1));
        let out = store
            .write(view, vec![(key(&reg, 1), record(15, 9, 9.0)), (key(&reg, 2), record(5, 2, 6.0))], None)
            .unwrap();
        assert_eq!((out.applied, out.stale), (1, 1));
        assert_eq!(store.checkpoint("s").unwrap(), Some(b"7".to_vec()));
        let again = Embedded::open(&path, &reg).err().expect("a second open of the same file must fail");
        assert!(matches!(again, FeatureError::Unavailable(ref m) if m.contains("open in another process")), "{again}");
    }
    let store = Embedded::open(&path, &reg).unwrap();
    assert_eq!(store.get(0, &key(&reg, 1)).unwrap().values[0], Some(Value::Float32(2.0)));
    assert_eq!(store.get(0, &key(&reg, 2)).unwrap().values[0], Some(Value::Float32(6.0)));
    assert!(store.get(0, &key(&reg, 3)).is_none());
    assert_eq!(store.len(0), 2);
}

async fn open(dir: &Path) -> FeatureStore {
    let location = StoreLocation::Embedded(dir.join("online.redb"));
    FeatureStore::open(dir, &location, &prometheus::Registry::new()).await.unwrap()
}

#[tokio::test]
async fn csv_ingestion_applies_rows_and_names_the_column_and_row_of_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let csv = "card_id,event_timestamp,amount,count,note,created\n\
               1,2026-11-01T10:00:00Z,1.5,3,a,2026-11-01T10:00:00Z\n\
               1,2026-11-01T09:00:00Z,9.5,1,old,2026-11-01T09:00:00Z\n\
               2,2026-11-01 11:00:00,2.5,,b,\n";
    repo(dir.path(), csv);
    let fs = open(dir.path()).await;
    let view = fs.registry.views[0].clone();
    let report = ingest(&crate::ingest::Sink::Store(&fs), &view, None, None, false).await.unwrap();
    assert_eq!((report.rows, report.applied, report.stale), (3, 2, 1));
    let lookup = fs.lookup(&[0], 2, |v, row| encode_key(v, &[Some(&Value::Int64(row as i64 + 1))])).await.unwrap();
    let f = |feature, row| lookup.get(&fs.registry, crate::definitions::FeatureRef { view: 0, feature }, row);
    assert_eq!(f(0, 0).value, Some(&Value::Float32(1.5)));
    assert_eq!(f(1, 1).status, Status::OutsideMaxAge, "2026-11-01 is more than an hour ago");
    assert_eq!(f(1, 1).value, None);

    let window = Window { start: 0, end: 1 };
    let skipped = ingest(&crate::ingest::Sink::Store(&fs), &view, None, Some(window), false).await.unwrap();
    assert_eq!((skipped.skipped, skipped.applied), (3, 0));

    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "card_id,event_timestamp,amount,count,note\n1,2026-11-01T10:00:00Z,1.5,3,a\n2,2026-11-01T10:00:00Z,1.5,three,a\n").unwrap();
    let e = ingest(&crate::ingest::Sink::Store(&fs), &view, Some(&bad), None, false).await.unwrap_err().to_string();
    assert!(e.contains("bad.csv") && e.contains("count") && e.contains("three"), "{e}");

    let missing = dir.path().join("missing.csv");
    std::fs::write(&missing, "card_id,event_timestamp,amount,note\n1,2026-11-01T10:00:00Z,1.5,a\n").unwrap();
    let e = ingest(&crate::ingest::Sink::Store(&fs), &view, Some(&missing), None, false).await.unwrap_err().to_string();
    assert!(e.contains("column 'count' is missing"), "{e}");

    let wrong = dir.path().join("wrong.csv");
    std::fs::write(&wrong, "card_id,event_timestamp,amount,count,note\nabc,2026-11-01T10:00:00Z,1.5,3,a\n").unwrap();
    let e = ingest(&crate::ingest::Sink::Store(&fs), &view, Some(&wrong), None, false).await.unwrap_err().to_string();
    assert!(e.contains("card_id") && e.contains("abc"), "{e}");

    let not_parquet = dir.path().join("x.parquet");
    std::fs::write(&not_parquet, b"PAR1 not really").unwrap();
    let e =
        ingest(&crate::ingest::Sink::Store(&fs), &view, Some(&not_parquet), None, false).await.unwrap_err().to_string();
    assert!(e.contains("not a readable Parquet file"), "{e}");
}

#[test]
fn training_sets_take_the_latest_row_within_ttl_inclusive_with_created_tie_breaks() {
    let dir = tempfile::tempdir().unwrap();
    // card 1: rows at 10:00 (created 1 and 2, same event time) and 11:00; card 2: one row at 08:00.
    let csv = "card_id,event_timestamp,amount,count,note,created\n\
               1,2026-11-01T10:00:00Z,1.0,1,late,2026-11-01T10:00:02Z\n\
               1,2026-11-01T10:00:00Z,2.0,2,early,2026-11-01T10:00:01Z\n\
               1,2026-11-01T11:00:00Z,3.0,3,x,2026-11-01T11:00:00Z\n\
               2,2026-11-01T08:00:00Z,4.0,4,y,2026-11-01T08:00:00Z\n";
    let reg = repo(dir.path(), csv);
    let entities = dir.path().join("entities.csv");
    std::fs::write(
        &entities,
        "card_id,event_timestamp\n\
         1,2026-11-01T09:59:59Z\n\
         1,2026-11-01T10:00:00Z\n\
         1,2026-11-01T10:59:59Z\n\
         1,2026-11-01T12:00:00Z\n\
         1,2026-11-01T12:00:01Z\n\
         2,2026-11-01T09:00:00Z\n\
         3,2026-11-01T09:00:00Z\n",
    )
    .unwrap();
    // In memory, and spilled to disk (a 1-byte limit: every view partitioned).
    for limit in [None, Some(1)] {
        let out = dir.path().join("out.parquet");
        let spill = dir.path().join("spill");
        std::fs::create_dir_all(&spill).unwrap();
        let set = TrainingSet {
            registry: &reg,
            features: reg.resolve(&["txn:amount", "txn:note"]).unwrap(),
            timestamp_field: "event_timestamp".into(),
            full_feature_names: false,
            progress: false,
            memory_limit: limit,
            spill_dir: Some(spill.clone()),
            threads: 2,
        };
        let report = set.build(&entities, &out).unwrap();
        assert_eq!((report.entity_rows, report.feature_rows, report.spill.is_some()), (7, 4, limit.is_some()));
        assert_eq!(std::fs::read_dir(&spill).unwrap().count(), 0, "spill files are removed");
        let file = crate::files::open(&out).unwrap();
        let batch = file.batches.map(|b| b.unwrap()).next().unwrap();
        let amount = crate::files::column(&batch, "amount", crate::value::ValueType::Float32, "out", 0).unwrap();
        let got: Vec<Option<Value>> =
            (0..7).map(|r| crate::files::value_at(amount.as_ref(), crate::value::ValueType::Float32, r)).collect();
        let want = [None, Some(1.0), Some(1.0), Some(3.0), None, Some(4.0), None];
        let want: Vec<Option<Value>> = want.iter().map(|v| v.map(Value::Float32)).collect();
        // 09:59:59 before any row; 10:00 exactly (inclusive), the tie goes to the later created;
        // 12:00:00 is exactly ttl after 11:00 (inclusive); 12:00:01 is outside; card 3 has no rows.
        assert_eq!(got, want, "memory limit {limit:?}");
    }
}

#[test]
fn model_feature_plans_are_checked_against_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let reg = repo(dir.path(), "");
    let path = PathBuf::from("m/features.toml");
    let ok = "keys = [\"card_id\"]\n[[input]]\nname = \"input__0\"\nfeatures = [\"txn:amount\", \"request:hour\", \"txn:count\"]\nmissing = -1\n";
    let plan = ModelFeatures::parse(&path, ok, &reg).unwrap();
    assert_eq!(plan.inputs[0].items.len(), 3);
    assert_eq!(plan.inputs[0].items[1], Item::Request("hour".into()));
    assert_eq!(plan.inputs[0].missing, -1.0);
    let cases = [
        (ok.replace("txn:count", "txn:note"), "feature 'txn:note' is string and cannot feed a numeric model input"),
        (ok.replace("txn:count", "txn:nope"), "m/features.toml:4: feature view 'txn' has no feature 'nope'"),
        (ok.replace("[\"card_id\"]", "[\"user_id\"]"), "m/features.toml:1: 'user_id' is not a join key"),
        (ok.replace("missing = -1", "missing = true"), "missing must be a number or \"nan\""),
        (ok.replace("features =", "feature ="), "m/features.toml: TOML parse error"),
        (
            "keys = []\n[[input]]\nname = \"a\"\nfeatures = [\"txn:amount\"]\n".to_string(),
            "keyed by 'card_id', which is not in keys",
        ),
    ];
    for (text, want) in cases {
        let e = ModelFeatures::parse(&path, &text, &reg).unwrap_err().to_string();
        assert!(e.contains(want), "{e}\n  does not contain: {want}");
    }
}

#[test]
fn key_columns_encode_like_entity_keys() {
    use arrow_array::{ArrayRef, Int32Array, Int64Array, StringArray};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let reg = repo(dir.path(), "");
    let text = r#"
        [[entity]]
        name = "m"
        value_type = "string"
        [[feature_view]]
        name = "by_m"
        entities = ["m"]
        features = [{ name = "x", dtype = "int64" }]
    "#;
    let strings = Registry::from_sources(dir.path(), &[(PathBuf::from("s.toml"), text.to_string())]).unwrap();
    let cases: Vec<(&Registry, ArrayRef, crate::value::ValueType, Value)> = vec![
        (&reg, Arc::new(Int64Array::from(vec![-7i64])), crate::value::ValueType::Int64, Value::Int64(-7)),
        (&reg, Arc::new(Int32Array::from(vec![42])), crate::value::ValueType::Int32, Value::Int64(42)),
        (
            &strings,
            Arc::new(StringArray::from(vec!["m-1"])),
            crate::value::ValueType::String,
            Value::String("m-1".into()),
        ),
    ];
    for (registry, col, ty, value) in cases {
        let mut buf = Vec::new();
        assert!(crate::files::key_into(col.as_ref(), ty, 0, &mut buf));
        assert_eq!(buf, encode_key(&registry.views[0], &[Some(&value)]).unwrap(), "{ty}");
    }
    let nulls: ArrayRef = Arc::new(Int64Array::from(vec![None::<i64>]));
    assert!(!crate::files::key_into(nulls.as_ref(), crate::value::ValueType::Int64, 0, &mut Vec::new()));
}
