//! In-process online read benchmark of the embedded store (bench/features/run.sh runs it).
//!
//! Writes a feature repository with one view of 10 float32 features (ttl 0) and a Parquet source
//! of N entities (event times now) into a temporary folder, ingests it into an embedded store
//! there, then times single-entity reads of all 10 features: `FeatureStore::lookup` and
//! `FeatureStore::get_online_features` (request parsed beforehand), each call timed alone.
//! Prints one line `BENCHJSON {...}` with percentiles in µs.
//!
//! Usage: bench_online [--entities 100000] [--reads 1000000] [--warmup 100000]

use arrow_array::{Float32Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use flotilla_features::record::encode_key;
use flotilla_features::store::StoreLocation;
use flotilla_features::value::Value;
use flotilla_features::FeatureStore;
use parquet::arrow::ArrowWriter;
use std::sync::Arc;
use std::time::Instant;

mod common;
use common::percentiles;

const FEATURES: usize = 10;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: not a number")))
        .unwrap_or(default)
}

/// A small xorshift generator: deterministic keys without extra dependencies.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn write_repo(dir: &std::path::Path, entities: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("data"))?;
    let features: Vec<String> =
        (0..FEATURES).map(|i| format!("  {{ name = \"f{i}\", dtype = \"float32\" }},")).collect();
    std::fs::write(
        dir.join("repo.toml"),
        format!(
            "[[entity]]\nname = \"item\"\njoin_key = \"item_id\"\nvalue_type = \"int64\"\n\n\
             [[feature_view]]\nname = \"item_stats\"\nentities = [\"item\"]\nttl = \"0\"\n\
             source = {{ path = \"data/item_stats.parquet\", timestamp_field = \"event_timestamp\" }}\n\
             features = [\n{}\n]\n",
            features.join("\n")
        ),
    )?;
    let mut fields = vec![
        Field::new("item_id", DataType::Int64, false),
        Field::new("event_timestamp", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
    ];
    fields.extend((0..FEATURES).map(|i| Field::new(format!("f{i}"), DataType::Float32, true)));
    let schema = Arc::new(Schema::new(fields));
    let now = flotilla_features::feature_store::now_us();
    let mut columns: Vec<arrow_array::ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(1..=entities as i64)),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values((0..entities).map(|i| now - i as i64)).with_timezone("UTC"),
        ),
    ];
    for f in 0..FEATURES {
        columns.push(Arc::new(Float32Array::from_iter_values((0..entities).map(|i| (i * (f + 1)) as f32 * 0.25))));
    }
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let file = std::fs::File::create(dir.join("data/item_stats.parquet"))?;
    let mut writer = ArrowWriter::try_new(file, schema, None)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let entities = arg(&args, "--entities", 100_000);
    let reads = arg(&args, "--reads", 1_000_000);
    let warmup = arg(&args, "--warmup", 100_000);

    let tmp = tempfile::tempdir()?;
    let repo = tmp.path().join("repo");
    write_repo(&repo, entities)?;
    let location = StoreLocation::Embedded(tmp.path().join("online.redb"));
    let fs = FeatureStore::open(&repo, &location, &prometheus::Registry::new()).await?;
    let started = Instant::now();
    let report = flotilla_features::ingest::ingest(
        &flotilla_features::ingest::Sink::Store(&fs),
        &fs.registry.views[0],
        None,
        None,
        false,
    )
    .await?;
    let ingest_s = started.elapsed().as_secs_f64();
    eprintln!("ingest: {report}");
    assert_eq!(report.applied as usize, entities, "every entity is stored");

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let keys: Vec<i64> = (0..reads.max(warmup)).map(|_| 1 + (rng.next() % entities as u64) as i64).collect();

    // lookup: the store read of one entity's record (all 10 features).
    let mut found = 0usize;
    let mut lookup_ns = Vec::with_capacity(reads);
    for (i, k) in keys.iter().take(warmup).chain(keys.iter().take(reads)).enumerate() {
        let key = Value::Int64(*k);
        let t = Instant::now();
        let l = fs.lookup(&[0], 1, |view, _| encode_key(view, &[Some(&key)])).await?;
        let ns = t.elapsed().as_nanos() as u64;
        found += l.records[0][0].is_some() as usize;
        if i >= warmup {
            lookup_ns.push(ns);
        }
    }
    assert_eq!(found, warmup + reads, "every key is found");

    // get_online_features: lookup + statuses + the response columns (no JSON), request parsed beforehand.
    let refs: Vec<String> = (0..FEATURES).map(|i| format!("\"item_stats:f{i}\"")).collect();
    let body: serde_json::Value =
        serde_json::from_str(&format!("{{\"features\": [{}], \"entities\": {{\"item_id\": [1]}}}}", refs.join(",")))?;
    let template = fs.parse_online_request(&body)?;
    let requests: Vec<_> = keys
        .iter()
        .take(4096)
        .map(|k| {
            let mut r = template.clone();
            r.entities[0].1[0] = Value::Int64(*k);
            r
        })
        .collect();
    let mut gof_ns = Vec::with_capacity(reads);
    let mut present = 0usize;
    for i in 0..warmup + reads {
        let req = &requests[i % requests.len()];
        let t = Instant::now();
        let resp = fs.get_online_features(req).await?;
        let ns = t.elapsed().as_nanos() as u64;
        present += resp.columns[1].values[0].is_some() as usize;
        if i >= warmup {
            gof_ns.push(ns);
        }
    }
    assert_eq!(present, warmup + reads, "every value is present");

    // get_online_features + Feast's JSON (to_json + serialisation), for reference.
    let mut json_ns = Vec::with_capacity(reads / 10);
    for i in 0..(warmup + reads) / 10 {
        let req = &requests[i % requests.len()];
        let t = Instant::now();
        let resp = fs.get_online_features(req).await?;
        let text = serde_json::to_vec(&resp.to_json())?;
        let ns = t.elapsed().as_nanos() as u64;
        std::hint::black_box(text);
        if i >= warmup / 10 {
            json_ns.push(ns);
        }
    }

    let out = serde_json::json!({
        "entities": entities, "features": FEATURES, "reads": reads, "warmup": warmup,
        "ingest_s": ingest_s, "ingest_rows_per_s": entities as f64 / ingest_s,
        "lookup": percentiles("lookup", lookup_ns),
        "get_online_features": percentiles("get_online_features", gof_ns),
        "get_online_features_json": percentiles("get_online_features + to_json + serialise", json_ns),
    });
    println!("BENCHJSON {out}");
    Ok(())
}
