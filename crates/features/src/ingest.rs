//! Batch ingestion: a view's Parquet or CSV rows into the online store (`flotilla features
//! ingest` / `materialize`), last write wins, with a progress bar and a throughput report.

use crate::definitions::FeatureView;
use crate::error::{FeatureError, Result};
use crate::feature_store::FeatureStore;
use crate::files;
use crate::record::Record;
use crate::value::Value;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;
use std::time::{Duration, Instant};

/// Rows written per durable commit.
const COMMIT_ROWS: usize = 50_000;

/// What an ingestion did.
#[derive(Debug, Clone, Default)]
pub struct IngestReport {
    pub view: String,
    /// Rows read from the file.
    pub rows: u64,
    /// Rows outside the `--start`/`--end` window, left out.
    pub skipped: u64,
    pub applied: u64,
    pub stale: u64,
    pub elapsed: Duration,
}

impl std::fmt::Display for IngestReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "{}: {} rows read, {} applied, {} superseded by newer rows, {} outside the window in {:.2} s ({:.0} rows/s)",
            self.view,
            self.rows,
            self.applied,
            self.stale,
            self.skipped,
            secs,
            self.rows as f64 / secs
        )
    }
}

/// Where ingested rows go.
pub enum Sink<'a> {
    /// Straight into an online store this process opened.
    Store(&'a FeatureStore),
    /// Through a running server's `POST /push` (its online store stays with it), e.g.
    /// `http://127.0.0.1:8000`; the view's name is the push source.
    Server { client: reqwest::Client, url: String },
}

/// Event-time window of `materialize` (inclusive, µs).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

/// Reads `path` (the view's batch source when `None`) and writes its rows online.
pub async fn ingest(
    sink: &Sink<'_>,
    view: &FeatureView,
    path: Option<&Path>,
    window: Option<Window>,
    progress: bool,
) -> Result<IngestReport> {
    let source = view.source.as_ref();
    let path = match (path, source) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(s)) => s.path.clone(),
        (None, None) => {
            return Err(FeatureError::invalid(format!(
                "feature view '{}' has no batch source; give a file with --path",
                view.name
            )))
        }
    };
    let ts_field = source.map(|s| s.timestamp_field.clone()).unwrap_or_else(|| "event_timestamp".into());
    let created_field = source.and_then(|s| s.created_timestamp_column.clone());
    let file = files::open(&path)?;
    let bar = if progress { ProgressBar::new(file.rows.unwrap_or(0)) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {human_pos}/{human_len} rows {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(view.name.clone());
    let what = path.display().to_string();
    let started = Instant::now();
    let mut report = IngestReport { view: view.name.clone(), ..Default::default() };
    let mut pending = Vec::with_capacity(COMMIT_ROWS);
    for batch in file.batches {
        let batch = batch?;
        let first = report.rows;
        let keys: Vec<_> =
            view.join_keys.iter().map(|(k, t)| files::column(&batch, k, *t, &what, first)).collect::<Result<_>>()?;
        let features: Vec<_> = view
            .features
            .iter()
            .map(|f| files::column(&batch, &f.name, f.dtype, &what, first))
            .collect::<Result<_>>()?;
        let event = files::timestamps(&batch, &ts_field, &what, first, true)?;
        let created = match &created_field {
            Some(c) => Some(files::timestamps(&batch, c, &what, first, false)?),
            None => None,
        };
        for row in 0..batch.num_rows() {
            let event_ts = event[row].unwrap_or_default();
            if window.is_some_and(|w| event_ts < w.start || event_ts > w.end) {
                report.skipped += 1;
                continue;
            }
            let mut key = Vec::with_capacity(12 * keys.len());
            for (c, (name, t)) in keys.iter().zip(&view.join_keys) {
                if !files::key_into(c.as_ref(), *t, row, &mut key) {
                    let row = first + row as u64 + 1;
                    return Err(FeatureError::invalid(format!("{what} row {row}: join key '{name}' is missing")));
                }
            }
            let values =
                features.iter().zip(&view.features).map(|(c, f)| files::value_at(c.as_ref(), f.dtype, row)).collect();
            let created_ts = created.as_ref().and_then(|c| c[row]).unwrap_or(0);
            let record = Record::new(event_ts, created_ts, values);
            if view.max_items.is_some() {
                let row = first + row as u64 + 1;
                record.items(view).map_err(|e| FeatureError::invalid(format!("{what} row {row}: {e}")))?;
            }
            pending.push((key, record));
        }
        report.rows += batch.num_rows() as u64;
        if pending.len() >= COMMIT_ROWS {
            flush(sink, view, &mut pending, &mut report).await?;
        }
        bar.set_position(report.rows);
    }
    flush(sink, view, &mut pending, &mut report).await?;
    bar.finish_and_clear();
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn flush(
    sink: &Sink<'_>,
    view: &FeatureView,
    pending: &mut Vec<(Vec<u8>, Record)>,
    report: &mut IngestReport,
) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let rows = std::mem::take(pending);
    let (applied, stale) = match sink {
        Sink::Store(store) => {
            let outcome = store.write(view, rows, "batch", None).await?;
            (outcome.applied as u64, outcome.stale as u64)
        }
        Sink::Server { client, url } => {
            let mut applied = 0;
            let mut stale = 0;
            for chunk in rows.chunks(PUSH_ROWS) {
                let (a, s) = push(client, url, view, chunk).await?;
                applied += a;
                stale += s;
            }
            (applied, stale)
        }
    };
    report.applied += applied;
    report.stale += stale;
    Ok(())
}

/// Rows per `POST /push` request.
const PUSH_ROWS: usize = 5_000;

/// Sends rows to a server's `POST /push` as Feast's column-wise `df`.
async fn push(
    client: &reqwest::Client,
    url: &str,
    view: &FeatureView,
    rows: &[(Vec<u8>, Record)],
) -> Result<(u64, u64)> {
    use serde_json::Value as J;
    let mut columns: Vec<(String, Vec<J>)> = Vec::new();
    for (k, _) in &view.join_keys {
        columns.push((k.clone(), Vec::with_capacity(rows.len())));
    }
    let ts_field = crate::feature_store::timestamp_field(view).to_string();
    let created_field =
        view.source.as_ref().and_then(|s| s.created_timestamp_column.clone()).unwrap_or_else(|| "created".into());
    columns.push((ts_field, Vec::with_capacity(rows.len())));
    columns.push((created_field, Vec::with_capacity(rows.len())));
    for f in &view.features {
        columns.push((f.name.clone(), Vec::with_capacity(rows.len())));
    }
    let keys = view.join_keys.len();
    for (key, record) in rows {
        for (i, v) in crate::record::decode_key(view, key)?.iter().enumerate() {
            columns[i].1.push(v.to_json());
        }
        columns[keys].1.push(J::String(crate::value::format_timestamp(record.event_ts)));
        columns[keys + 1].1.push(if record.created_ts == 0 {
            J::Null
        } else {
            J::String(crate::value::format_timestamp(record.created_ts))
        });
        for (i, v) in record.values.iter().enumerate() {
            // NaN has no JSON form: send it as the string the push API reads back as NaN.
            let j = match v {
                Some(Value::Float32(f)) if f.is_nan() => J::String("NaN".into()),
                Some(Value::Float64(f)) if f.is_nan() => J::String("NaN".into()),
                Some(v) => v.to_json(),
                None => J::Null,
            };
            columns[keys + 2 + i].1.push(j);
        }
    }
    let df: serde_json::Map<String, J> = columns.into_iter().map(|(k, v)| (k, J::Array(v))).collect();
    let body = serde_json::json!({ "push_source_name": view.name, "to": "online", "df": df });
    let endpoint = format!("{}/push", url.trim_end_matches('/'));
    let response = client
        .post(&endpoint)
        .json(&body)
        .send()
        .await
        .map_err(|e| FeatureError::Unavailable(format!("{endpoint}: {e}")))?;
    let status = response.status();
    let answer: J = response.json().await.map_err(|e| FeatureError::Unavailable(format!("{endpoint}: {e}")))?;
    if !status.is_success() {
        let message = answer.get("error").and_then(J::as_str).unwrap_or("no error message").to_string();
        return Err(FeatureError::invalid(format!("{endpoint} answered {status}: {message}")));
    }
    let count = |k: &str| answer.get(k).and_then(J::as_u64).unwrap_or(0);
    Ok((count("applied"), count("stale")))
}
