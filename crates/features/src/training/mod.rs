//! Point-in-time correct training sets, with Feast's semantics: for each entity row (keys +
//! event timestamp) and each feature view, the latest feature row of the same entity with
//! `entity_ts − ttl ≤ feature_ts ≤ entity_ts` (no lower bound when the view has no ttl); equal
//! event times are decided by the created timestamp, then by file order (the last row wins);
//! no such row gives nulls. The output keeps the entity rows' order.
//!
//! - [`index`]: a view's rows read in parallel and indexed per entity in memory.
//! - [`spill`]: the same join when the indexes would not fit in `memory_limit`: both sides
//!   hash-partitioned by entity to Arrow IPC files, joined a partition at a time, and merged back
//!   in entity-row order.
//!
//! Entity rows stream through in batches; a writer thread encodes the output Parquet while the
//! next batch is joined.

mod index;
mod spill;
#[cfg(test)]
mod tests;

use crate::definitions::{FeatureRef, FeatureView, Registry};
use crate::error::{FeatureError, Result};
use crate::files;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use index::{BatchKeys, Chunk, ViewIndex};
use indicatif::{ProgressBar, ProgressStyle};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settings of one training-set build.
pub struct TrainingSet<'a> {
    pub registry: &'a Registry,
    pub features: Vec<FeatureRef>,
    /// Name of the entity rows' event-time column.
    pub timestamp_field: String,
    /// Name feature columns `view__feature` instead of `feature`.
    pub full_feature_names: bool,
    pub progress: bool,
    /// Bytes the views' indexes may take in memory; above it the join spills to disk.
    pub memory_limit: Option<u64>,
    /// Where spill files go (a temporary folder inside it, removed afterwards); default: the
    /// system's temporary folder.
    pub spill_dir: Option<PathBuf>,
    /// Threads for reading and indexing (0: every core).
    pub threads: usize,
}

/// What a build did.
#[derive(Debug, Clone, Default)]
pub struct TrainingReport {
    pub entity_rows: u64,
    pub feature_rows: u64,
    /// Feature rows found, counted once per requested feature (a found row's value may be null).
    pub matched: u64,
    pub elapsed: Duration,
    /// Where the time went.
    pub phases: Phases,
    /// Estimated bytes of the in-memory indexes, which decided whether to spill.
    pub memory_estimate: u64,
    /// Set when the join spilled to disk.
    pub spill: Option<SpillReport>,
}

/// Wall time per phase. Reading and indexing run before the join; the join and the Parquet
/// writer run side by side (`write` is the writer thread's busy time).
#[derive(Debug, Clone, Default)]
pub struct Phases {
    /// Decoding the views' sources (and, when spilling, writing their partitions).
    pub read: Duration,
    /// Building the per-entity indexes.
    pub index: Duration,
    /// Reading entity rows, finding each one's feature row and gathering the values.
    pub join: Duration,
    /// Encoding and writing the output Parquet.
    pub write: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct SpillReport {
    /// Partitions per spilled view.
    pub partitions: usize,
    /// Bytes written to spill files.
    pub bytes: u64,
}

/// A view taking part in the build, with the request positions of its features.
struct ViewPlan<'a> {
    view: &'a FeatureView,
    /// Request positions of the view's features, and their output types.
    wanted: Vec<usize>,
    dtypes: Vec<DataType>,
    /// The view's features read from its source, and their types: the wanted ones, or every
    /// feature of an append view (its items are told apart by all their values).
    read: Vec<usize>,
    read_dtypes: Vec<DataType>,
    estimate: u64,
}

impl TrainingSet<'_> {
    /// Builds the training set for the entity rows in `entities` into `out` (Parquet).
    pub fn build(&self, entities: &Path, out: &Path) -> Result<TrainingReport> {
        let started = Instant::now();
        let reg = self.registry;
        let mut names: Vec<String> = Vec::with_capacity(self.features.len());
        for f in &self.features {
            let view = &reg.views[f.view];
            let feature = &view.features[f.feature];
            let name =
                if self.full_feature_names { format!("{}__{}", view.name, feature.name) } else { feature.name.clone() };
            if names.contains(&name) {
                return Err(FeatureError::invalid(format!(
                    "two requested features are named '{name}'; use --full-feature-names"
                )));
            }
            names.push(name);
        }
        let mut views: Vec<usize> = self.features.iter().map(|f| f.view).collect();
        views.sort_unstable();
        views.dedup();
        let mut plans = Vec::with_capacity(views.len());
        for v in views {
            let view = &reg.views[v];
            let source = view.source.as_ref().ok_or_else(|| {
                FeatureError::invalid(format!(
                    "feature view '{}' has no batch source to build training data from",
                    view.name
                ))
            })?;
            let wanted: Vec<usize> =
                self.features.iter().enumerate().filter(|(_, f)| f.view == v).map(|(i, _)| i).collect();
            let dtypes: Vec<DataType> =
                wanted.iter().map(|i| files::arrow_type(view.features[self.features[*i].feature].dtype)).collect();
            let read: Vec<usize> = match view.max_items {
                Some(_) => (0..view.features.len()).collect(),
                None => wanted.iter().map(|i| self.features[*i].feature).collect(),
            };
            let read_dtypes: Vec<DataType> = read.iter().map(|f| files::arrow_type(view.features[*f].dtype)).collect();
            let estimate = estimate(&source.path, &read_dtypes)?;
            plans.push(ViewPlan { view, wanted, dtypes, read, read_dtypes, estimate });
        }
        let mut report =
            TrainingReport { memory_estimate: plans.iter().map(|p| p.estimate).sum(), ..Default::default() };
        let threads = match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let spilling = self.memory_limit.is_some_and(|limit| report.memory_estimate > limit);
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(if spilling { 1 << 17 } else { 1 << 20 }))
            .build();
        let (tx, rx) = mpsc::sync_channel::<RecordBatch>(2);
        let out_path = out.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("training-writer".into())
            .spawn(move || write_parquet(&out_path, rx, props))
            .map_err(|e| FeatureError::store(format!("cannot start the writer thread: {e}")))?;
        let bar = self.progress_bar(entities);
        let mut emit = |batch: &RecordBatch, columns: Vec<Option<ArrayRef>>| -> Result<()> {
            let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
            let mut arrays: Vec<ArrayRef> = batch.columns().to_vec();
            for (name, col) in names.iter().zip(columns) {
                let col = col.ok_or_else(|| FeatureError::store("a feature column was not built"))?;
                fields.push(Arc::new(Field::new(name, col.data_type().clone(), true)));
                arrays.push(col);
            }
            let out_batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
                .map_err(|e| FeatureError::invalid(format!("{}: {e}", entities.display())))?;
            report.entity_rows += batch.num_rows() as u64;
            bar.set_position(report.entity_rows);
            // A closed channel means the writer failed: its error is reported below.
            let _ = tx.send(out_batch);
            Ok(())
        };
        let joined = if spilling {
            let limit = self.memory_limit.unwrap_or(u64::MAX);
            spill::build(self, &plans, entities, limit, threads, &mut emit)
        } else {
            self.in_memory(&plans, entities, threads, &mut emit)
        };
        drop(tx);
        let written = writer.join().unwrap_or_else(|_| Err(FeatureError::store("the writer thread panicked")));
        let (outcome, timing) = joined?;
        let write_time = written?;
        bar.finish_and_clear();
        report.feature_rows = outcome.feature_rows;
        report.matched = outcome.matched;
        report.spill = outcome.spill;
        report.phases = Phases { write: write_time, ..timing };
        if report.entity_rows == 0 {
            return Err(FeatureError::invalid(format!("{} holds no entity rows", entities.display())));
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    fn progress_bar(&self, entities: &Path) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let rows = parquet_rows(entities).unwrap_or(0);
        let bar = ProgressBar::new(rows);
        bar.set_style(
            ProgressStyle::with_template("training set [{bar:30}] {human_pos}/{human_len} entity rows {per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    }

    /// Every view indexed in memory, then the entity rows streamed through.
    fn in_memory(
        &self,
        plans: &[ViewPlan],
        entities: &Path,
        threads: usize,
        emit: &mut Emit,
    ) -> Result<(Outcome, Phases)> {
        let mut phases = Phases::default();
        let mut outcome = Outcome::default();
        let mut indexes = Vec::with_capacity(plans.len());
        for plan in plans {
            let t = Instant::now();
            let chunks = self.read_view(plan, threads)?;
            outcome.feature_rows += chunks.iter().map(|c| c.rows() as u64).sum::<u64>();
            phases.read += t.elapsed();
            let t = Instant::now();
            let what = source_name(plan.view);
            indexes.push(ViewIndex::build(plan, &self.features, chunks, threads, &what)?);
            phases.index += t.elapsed();
        }
        let t = Instant::now();
        let file = files::open(entities)?;
        let what = entities.display().to_string();
        let mut first = 0u64;
        let (mut join_t, mut emit_t) = (Duration::ZERO, Duration::ZERO);
        for batch in file.batches {
            let batch = batch?;
            let ts = files::timestamp_array(&batch, &self.timestamp_field, &what, first, true)?;
            let mut columns: Vec<Option<ArrayRef>> = vec![None; self.features.len()];
            for (plan, index) in plans.iter().zip(&indexes) {
                let keys = entity_keys(&batch, plan.view, &what, first)?;
                let tp = Instant::now();
                let (found, joined) = index.join(&keys, ts.values(), threads)?;
                outcome.matched += found * plan.wanted.len() as u64;
                for (col, pos) in joined.into_iter().zip(&plan.wanted) {
                    columns[*pos] = Some(col);
                }
                join_t += tp.elapsed();
            }
            first += batch.num_rows() as u64;
            let tp = Instant::now();
            emit(&batch, columns)?;
            emit_t += tp.elapsed();
        }
        phases.join = t.elapsed();
        tracing::debug!(join = ?join_t, emit = ?emit_t, "training set: entity rows joined");
        Ok((outcome, phases))
    }

    /// A view's source decoded in parallel into chunks (file order), columns checked and typed.
    fn read_view(&self, plan: &ViewPlan, threads: usize) -> Result<Vec<Chunk>> {
        let parts = read_chunks(plan, threads, |chunk, _, _| Ok(chunk))?;
        Ok(parts.into_iter().flatten().collect())
    }
}

/// Parses a memory size as DuckDB's `memory_limit` does: `512MB`, `2GB` (powers of 1000),
/// `1.5GiB`, `512MiB` (powers of 1024), or a number of bytes.
pub fn parse_memory(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| {
        FeatureError::invalid(format!("'{text}' is not a memory size (like 512MB, 2GB, 1.5GiB or a number of bytes)"))
    })?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "tb" | "t" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(FeatureError::invalid(format!(
                "'{text}': unknown unit '{other}' (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            )))
        }
    };
    let bytes = number * scale as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(FeatureError::invalid(format!("'{text}' is not a usable memory size")));
    }
    Ok(bytes as u64)
}

/// The default memory limit: 80% of the memory this process may use, as DuckDB's: the
/// machine's, or its container's (cgroup v2 `memory.max`) when lower. None when unknown.
pub fn default_memory_limit() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse().ok()?;
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|t| t.trim().parse::<u64>().ok());
    let total = cgroup.map_or(kib * 1024, |c| c.min(kib * 1024));
    Some(total / 10 * 8)
}

/// Receives a batch of entity rows and its feature columns (request order).
type Emit<'a> = dyn FnMut(&RecordBatch, Vec<Option<ArrayRef>>) -> Result<()> + 'a;

/// Counts from the join.
#[derive(Default)]
struct Outcome {
    feature_rows: u64,
    matched: u64,
    spill: Option<SpillReport>,
}

/// Reads a view's source with `threads` threads, handing each decoded, checked chunk to `each`
/// (with its first row and thread); results per thread, in file order.
fn read_chunks<T: Send>(
    plan: &ViewPlan,
    threads: usize,
    each: impl Fn(Chunk, u64, usize) -> Result<T> + Sync,
) -> Result<Vec<Vec<T>>> {
    let view = plan.view;
    let source =
        view.source.as_ref().ok_or_else(|| FeatureError::invalid(format!("view '{}' has no source", view.name)))?;
    let what = source.path.display().to_string();
    let features: Vec<&crate::definitions::Feature> = plan.read.iter().map(|f| &view.features[*f]).collect();
    let mut columns: Vec<&str> = view.join_keys.iter().map(|(k, _)| k.as_str()).collect();
    columns.push(&source.timestamp_field);
    if let Some(c) = &source.created_timestamp_column {
        columns.push(c);
    }
    columns.extend(features.iter().map(|f| f.name.as_str()));
    files::read_parallel(&source.path, &columns, threads, |batch, first, thread| {
        let chunk = Chunk {
            keys: BatchKeys::read(&batch, view, &what, first)?,
            ts: files::timestamp_array(&batch, &source.timestamp_field, &what, first, true)?,
            created: match &source.created_timestamp_column {
                Some(c) => Some(files::timestamp_array(&batch, c, &what, first, false)?),
                None => None,
            },
            features: features
                .iter()
                .map(|f| files::column(&batch, &f.name, f.dtype, &what, first))
                .collect::<Result<_>>()?,
        };
        if view.max_items.is_some() {
            check_items(view, &chunk.features, &what, first)?;
        }
        each(chunk, first, thread)
    })
}

/// An append view's source rows each carry items: every feature set and all lists equally long
/// (as ingestion requires); the error names the file, row and feature.
fn check_items(view: &FeatureView, columns: &[ArrayRef], what: &str, first: u64) -> Result<()> {
    use arrow_array::cast::AsArray;
    use arrow_array::Array;
    let lists: Vec<&arrow_array::ListArray> = columns.iter().map(|c| c.as_list::<i32>()).collect();
    for row in 0..lists.first().map_or(0, |l| l.len()) {
        let mut len = None;
        for (f, list) in view.features.iter().zip(&lists) {
            let at = || first + row as u64 + 1;
            if list.is_null(row) {
                return Err(FeatureError::invalid(format!(
                    "{what} row {}: feature '{}' is missing (view '{}' appends items: every item needs every feature)",
                    at(),
                    f.name,
                    view.name
                )));
            }
            let n = list.value_length(row);
            if len.is_some_and(|m| m != n) {
                return Err(FeatureError::invalid(format!(
                    "{what} row {}: feature '{}' has {n} items but the features before it have {} (view '{}')",
                    at(),
                    f.name,
                    len.unwrap_or_default(),
                    view.name
                )));
            }
            len = Some(n);
        }
    }
    Ok(())
}

/// The entity rows' keys for `view`, with an error that says which view needs a missing column.
fn entity_keys(batch: &RecordBatch, view: &FeatureView, what: &str, first: u64) -> Result<BatchKeys> {
    if let Some((k, _)) = view.join_keys.iter().find(|(k, _)| batch.column_by_name(k).is_none()) {
        return Err(FeatureError::invalid(format!(
            "{what}: entity rows lack column '{k}' (a key of feature view '{}')",
            view.name
        )));
    }
    BatchKeys::read(batch, view, what, first)
}

fn source_name(view: &FeatureView) -> String {
    view.source.as_ref().map(|s| s.path.display().to_string()).unwrap_or_else(|| view.name.clone())
}

/// The writer thread: batches to Parquet, created at the first batch; returns its busy time.
fn write_parquet(out: &Path, rx: mpsc::Receiver<RecordBatch>, props: WriterProperties) -> Result<Duration> {
    let mut busy = Duration::ZERO;
    let mut writer: Option<ArrowWriter<std::fs::File>> = None;
    let fail = |e: parquet::errors::ParquetError| FeatureError::store(format!("{}: {e}", out.display()));
    let mut props = Some(props);
    for batch in rx {
        let t = Instant::now();
        if writer.is_none() {
            let f = std::fs::File::create(out)
                .map_err(|e| FeatureError::invalid(format!("cannot create {}: {e}", out.display())))?;
            writer = Some(ArrowWriter::try_new(f, batch.schema(), props.take()).map_err(fail)?);
        }
        if let Some(w) = writer.as_mut() {
            w.write(&batch).map_err(fail)?;
        }
        busy += t.elapsed();
    }
    let t = Instant::now();
    if let Some(w) = writer {
        w.close().map_err(fail)?;
    }
    Ok(busy + t.elapsed())
}

/// Rows of a Parquet file from its footer (None for CSV or an unreadable file).
fn parquet_rows(path: &Path) -> Option<u64> {
    let file = std::fs::File::open(path).ok()?;
    let meta = parquet::file::metadata::ParquetMetaDataReader::new().parse_and_finish(&file).ok()?;
    Some(meta.file_metadata().num_rows().max(0) as u64)
}

/// Bytes a view's index takes in memory: per source row, the index (key id, sort entry, time
/// and position: ~48 bytes), the decoded key and times (24) and the requested feature values.
fn estimate(path: &Path, dtypes: &[DataType]) -> Result<u64> {
    const PER_ROW: u64 = 72;
    let name = path.display().to_string();
    let is_csv = path.extension().is_some_and(|x| x.eq_ignore_ascii_case("csv"));
    if is_csv {
        // Text is read as strings, then converted: a few times the file.
        let len =
            std::fs::metadata(path).map_err(|e| FeatureError::invalid(format!("{name}: cannot open: {e}")))?.len();
        return Ok(len.saturating_mul(4));
    }
    let file = std::fs::File::open(path).map_err(|e| FeatureError::invalid(format!("{name}: cannot open: {e}")))?;
    let meta = parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&file)
        .map_err(|e| FeatureError::invalid(format!("{name}: not a readable Parquet file: {e}")))?;
    let rows = meta.file_metadata().num_rows().max(0) as u64;
    let mut bytes = rows * PER_ROW;
    for dtype in dtypes {
        bytes += match dtype.primitive_width() {
            Some(w) => rows * w as u64 + rows / 8,
            // Strings and bytes: the file's uncompressed size of all columns bounds them.
            None => meta.row_groups().iter().map(|g| g.total_byte_size().max(0) as u64).sum::<u64>() + rows * 4,
        };
    }
    Ok(bytes)
}
