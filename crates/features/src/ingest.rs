//! Batch ingestion: a view's Parquet or CSV rows into the online store (`flotilla features
//! ingest` / `materialize`), last write wins, with a progress bar and a throughput report.

use crate::definitions::FeatureView;
use crate::error::{FeatureError, Result};
use crate::feature_store::FeatureStore;
use crate::files;
use crate::record::{encode_key, Record};
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

/// Event-time window of `materialize` (inclusive, µs).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

/// Reads `path` (the view's batch source when `None`) and writes its rows online.
pub async fn ingest(
    store: &FeatureStore,
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
            let key_values: Vec<Option<Value>> =
                keys.iter().zip(&view.join_keys).map(|(c, (_, t))| files::value_at(c.as_ref(), *t, row)).collect();
            let key = encode_key(view, &key_values.iter().map(Option::as_ref).collect::<Vec<_>>())
                .map_err(|e| FeatureError::invalid(format!("{what} row {}: {e}", first + row as u64 + 1)))?;
            let values =
                features.iter().zip(&view.features).map(|(c, f)| files::value_at(c.as_ref(), f.dtype, row)).collect();
            let created_ts = created.as_ref().and_then(|c| c[row]).unwrap_or(0);
            pending.push((key, Record { event_ts, created_ts, values }));
        }
        report.rows += batch.num_rows() as u64;
        if pending.len() >= COMMIT_ROWS {
            flush(store, view, &mut pending, &mut report).await?;
        }
        bar.set_position(report.rows);
    }
    flush(store, view, &mut pending, &mut report).await?;
    bar.finish_and_clear();
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn flush(
    store: &FeatureStore,
    view: &FeatureView,
    pending: &mut Vec<(Vec<u8>, Record)>,
    report: &mut IngestReport,
) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let rows = std::mem::take(pending);
    let outcome = store.write(view, rows, "batch", None).await?;
    report.applied += outcome.applied as u64;
    report.stale += outcome.stale as u64;
    Ok(())
}
