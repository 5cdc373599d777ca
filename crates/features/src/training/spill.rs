//! The join when the views' indexes would not fit in the memory limit (grace hash partitioning,
//! as databases spill a hash join):
//!
//! 1. Each view's source rows go to `parts` Arrow IPC files by a hash of their entity key, one
//!    file per reader thread and partition, so that reading a partition's files in thread order
//!    gives its rows in file order (ties between equal rows keep being decided by it).
//! 2. The entity rows go to the same partitions, per view: row number, key, event time.
//! 3. One partition at a time is indexed in memory (about 1/parts of the view) and joined; its
//!    results (row number + feature values) are written in entity-row order.
//! 4. The entity file is read again in order; each row takes the next result of its partition.
//!
//! Memory then holds one partition's index and a few batches per open file. An entity with more
//! rows than a partition's share still lands in one partition: such skew makes that partition
//! larger than the limit's share, not wrong.

use super::index::{key_types, BatchKeys, Chunk, ViewIndex};
use super::{entity_keys, read_chunks, source_name, Emit, Outcome, Phases, SpillReport, TrainingSet, ViewPlan};
use crate::error::{FeatureError, Result};
use crate::files;
use arrow_array::cast::AsArray;
use arrow_array::types::{TimestampMicrosecondType, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch, UInt32Array, UInt64Array};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use arrow_select::coalesce::BatchCoalescer;
use parking_lot::Mutex;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The most partitions per view (each is an open file while partitioning).
const MAX_PARTS: usize = 128;
/// Rows per spilled batch.
const SPILL_ROWS: usize = 2048;

pub(super) fn build(
    set: &TrainingSet,
    plans: &[ViewPlan],
    entities: &Path,
    limit: u64,
    threads: usize,
    emit: &mut Emit,
) -> Result<(Outcome, Phases)> {
    let base = set.spill_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("flotilla-training-")
        .tempdir_in(&base)
        .map_err(|e| FeatureError::invalid(format!("cannot make a spill folder in {}: {e}", base.display())))?;
    let mut phases = Phases::default();
    let mut outcome = Outcome::default();
    let mut spilled = SpillReport::default();
    // Half the limit per partition: the other half for batches, buffers and the output writer.
    let budget = (limit / 2).max(1);
    let parts: Vec<usize> = plans
        .iter()
        .map(|p| usize::try_from(p.estimate.div_ceil(budget)).unwrap_or(MAX_PARTS).clamp(2, MAX_PARTS))
        .collect();
    spilled.partitions = parts.iter().copied().max().unwrap_or(0);

    // 1. Sources into partitions.
    let t = Instant::now();
    let mut sources = Vec::with_capacity(plans.len());
    for (v, (plan, parts)) in plans.iter().zip(&parts).enumerate() {
        let (files, rows, bytes) = partition_source(plan, *parts, threads, dir.path(), v)?;
        outcome.feature_rows += rows;
        spilled.bytes += bytes;
        sources.push(files);
    }
    // 2. Entity rows into the same partitions, per view.
    let what = entities.display().to_string();
    let mut writers: Vec<Vec<PartWriter>> = Vec::with_capacity(plans.len());
    for (v, (plan, parts)) in plans.iter().zip(&parts).enumerate() {
        let mut fields = vec![Field::new("row", DataType::UInt64, false)];
        fields.extend(key_fields(plan));
        fields.push(Field::new("ts", files::arrow_type(crate::value::ValueType::UnixTimestamp), false));
        let schema = Arc::new(Schema::new(fields));
        writers
            .push((0..*parts).map(|p| PartWriter::new(dir.path().join(format!("e{v}-{p}")), schema.clone())).collect());
    }
    let mut first = 0u64;
    let mut buf = Vec::with_capacity(32);
    let mut split: Vec<Vec<u32>> = Vec::new();
    for batch in files::open(entities)?.batches {
        let batch = batch?;
        let ts = files::timestamp_array(&batch, &set.timestamp_field, &what, first, true)?;
        let rows: ArrayRef = Arc::new(UInt64Array::from_iter_values(first..first + batch.num_rows() as u64));
        for ((plan, parts), writers) in plans.iter().zip(&parts).zip(&mut writers) {
            let keys = entity_keys(&batch, plan.view, &what, first)?;
            let mut columns = vec![rows.clone()];
            columns.extend(keys.columns());
            columns.push(Arc::new(ts.clone()));
            let spilled_batch = RecordBatch::try_new(writers[0].schema.clone(), columns).map_err(store)?;
            split_rows(&keys, batch.num_rows(), *parts, &mut buf, &mut split);
            for (writer, rows) in writers.iter_mut().zip(&split) {
                if !rows.is_empty() {
                    writer.push(&spilled_batch, rows)?;
                }
            }
        }
        first += batch.num_rows() as u64;
    }
    for writers in writers {
        for w in writers {
            spilled.bytes += w.finish()?;
        }
    }
    phases.read = t.elapsed();

    // 3. Each partition indexed and joined alone; results in entity-row order.
    let mut results: Vec<Vec<PathBuf>> = Vec::with_capacity(plans.len());
    for (v, (plan, parts)) in plans.iter().zip(&parts).enumerate() {
        let mut fields = vec![Field::new("row", DataType::UInt64, false)];
        fields.extend(plan.dtypes.iter().enumerate().map(|(i, d)| Field::new(format!("f{i}"), d.clone(), true)));
        let schema = Arc::new(Schema::new(fields));
        let mut paths = Vec::with_capacity(*parts);
        for (p, files) in sources[v].iter().enumerate() {
            let t = Instant::now();
            let mut chunks = Vec::new();
            for path in files {
                for batch in read_ipc(path)? {
                    chunks.push(chunk(plan, &batch?)?);
                }
            }
            let index = ViewIndex::build(plan, &set.features, chunks, threads, &source_name(plan.view))?;
            phases.index += t.elapsed();
            let t = Instant::now();
            let path = dir.path().join(format!("r{v}-{p}"));
            let mut writer = PartWriter::new(path.clone(), schema.clone());
            for batch in read_ipc(&dir.path().join(format!("e{v}-{p}")))? {
                let batch = batch?;
                let keys = keys_of(plan, &batch, 1);
                let ts = batch.column(batch.num_columns() - 1).as_primitive::<TimestampMicrosecondType>();
                let (found, joined) = index.join(&keys, ts.values(), threads)?;
                outcome.matched += found * plan.wanted.len() as u64;
                let mut columns = vec![batch.column(0).clone()];
                columns.extend(joined);
                let result = RecordBatch::try_new(schema.clone(), columns).map_err(store)?;
                writer.push_all(result)?;
            }
            spilled.bytes += writer.finish()?;
            paths.push(path);
            phases.join += t.elapsed();
        }
        results.push(paths);
    }

    // 4. The entity rows again, in order, each taking the next result of its partition.
    let t = Instant::now();
    let mut cursors: Vec<Vec<Cursor>> = results
        .iter()
        .map(|paths| paths.iter().map(|p| Cursor::open(p)).collect::<Result<_>>())
        .collect::<Result<_>>()?;
    let mut first = 0u64;
    for batch in files::open(entities)?.batches {
        let batch = batch?;
        let mut columns: Vec<Option<ArrayRef>> = vec![None; set.features.len()];
        for ((plan, parts), cursors) in plans.iter().zip(&parts).zip(&mut cursors) {
            let keys = entity_keys(&batch, plan.view, &what, first)?;
            let mut sources: Vec<RecordBatch> = Vec::new();
            for c in cursors.iter_mut() {
                c.source = None;
            }
            let mut indices = Vec::with_capacity(batch.num_rows());
            for row in 0..batch.num_rows() {
                let p = keys.partition(row, *parts, &mut buf);
                indices.push(cursors[p].next(first + row as u64, &mut sources)?);
            }
            for (j, pos) in plan.wanted.iter().enumerate() {
                let arrays: Vec<&dyn Array> = sources.iter().map(|b| b.column(j + 1).as_ref()).collect();
                let col = match arrays.is_empty() {
                    true => arrow_array::new_null_array(&plan.dtypes[j], 0),
                    false => arrow_select::interleave::interleave(&arrays, &indices).map_err(store)?,
                };
                columns[*pos] = Some(col);
            }
        }
        first += batch.num_rows() as u64;
        emit(&batch, columns)?;
    }
    phases.join += t.elapsed();
    outcome.spill = Some(spilled);
    Ok((outcome, phases))
}

/// Fields of a view's key columns in spill files.
fn key_fields(plan: &ViewPlan) -> Vec<Field> {
    let types = key_types(plan.view).into_iter().enumerate();
    types.map(|(i, t)| Field::new(format!("key{i}"), files::arrow_type(t), true)).collect()
}

/// The key columns of a spilled batch, starting at column `from`.
fn keys_of(plan: &ViewPlan, batch: &RecordBatch, from: usize) -> BatchKeys {
    BatchKeys::from_columns(plan.view, &batch.columns()[from..from + plan.view.join_keys.len()])
}

/// A spilled source batch back into a chunk.
fn chunk(plan: &ViewPlan, batch: &RecordBatch) -> Result<Chunk> {
    let nk = key_fields(plan).len();
    let has_created = plan.view.source.as_ref().is_some_and(|s| s.created_timestamp_column.is_some());
    let ts_of = |i: usize| batch.column(i).as_primitive::<TimestampMicrosecondType>().clone();
    let at = nk + 1 + usize::from(has_created);
    Ok(Chunk {
        keys: keys_of(plan, batch, 0),
        ts: ts_of(nk),
        created: has_created.then(|| ts_of(nk + 1)),
        features: batch.columns()[at..].to_vec(),
    })
}

/// Splits a view's source into `parts` partitions: per partition, one file per reader thread.
/// Returns the files (partition → thread order), the rows read and the bytes written.
fn partition_source(
    plan: &ViewPlan,
    parts: usize,
    threads: usize,
    dir: &Path,
    v: usize,
) -> Result<(Vec<Vec<PathBuf>>, u64, u64)> {
    let has_created = plan.view.source.as_ref().is_some_and(|s| s.created_timestamp_column.is_some());
    let ts_type = files::arrow_type(crate::value::ValueType::UnixTimestamp);
    let mut fields = key_fields(plan);
    fields.push(Field::new("ts", ts_type.clone(), false));
    if has_created {
        fields.push(Field::new("created", ts_type, true));
    }
    fields.extend(plan.read_dtypes.iter().enumerate().map(|(i, d)| Field::new(format!("f{i}"), d.clone(), true)));
    let schema = Arc::new(Schema::new(fields));
    let writers: Vec<Mutex<Vec<PartWriter>>> = (0..threads.max(1))
        .map(|t| {
            Mutex::new((0..parts).map(|p| PartWriter::new(dir.join(format!("s{v}-{p}-{t}")), schema.clone())).collect())
        })
        .collect();
    let rows = read_chunks(plan, threads, |chunk, _, thread| {
        let n = chunk.rows();
        let mut columns = chunk.keys.columns();
        columns.push(Arc::new(chunk.ts.clone()));
        if let Some(c) = &chunk.created {
            columns.push(Arc::new(c.clone()));
        }
        columns.extend(chunk.features.iter().cloned());
        let batch = RecordBatch::try_new(schema.clone(), columns).map_err(store)?;
        let (mut buf, mut split) = (Vec::with_capacity(32), Vec::new());
        split_rows(&chunk.keys, n, parts, &mut buf, &mut split);
        let mut mine = writers[thread].lock();
        for (writer, rows) in mine.iter_mut().zip(&split) {
            if !rows.is_empty() {
                writer.push(&batch, rows)?;
            }
        }
        Ok(n as u64)
    })?;
    let mut bytes = 0;
    let mut files = vec![Vec::new(); parts];
    for writers in writers {
        for (p, w) in writers.into_inner().into_iter().enumerate() {
            let path = w.path.clone();
            if w.rows > 0 || w.coalescer.get_buffered_rows() > 0 {
                bytes += w.finish()?;
                files[p].push(path);
            }
        }
    }
    Ok((files, rows.iter().flatten().sum(), bytes))
}

/// The rows of a batch per partition.
fn split_rows(keys: &BatchKeys, n: usize, parts: usize, buf: &mut Vec<u8>, split: &mut Vec<Vec<u32>>) {
    split.resize_with(parts, Vec::new);
    for s in split.iter_mut() {
        s.clear();
    }
    for row in 0..n {
        split[keys.partition(row, parts, buf)].push(row as u32);
    }
}

/// One spill file being written: rows gathered into batches of [`SPILL_ROWS`].
struct PartWriter {
    path: PathBuf,
    schema: SchemaRef,
    coalescer: BatchCoalescer,
    writer: Option<StreamWriter<BufWriter<File>>>,
    rows: u64,
}

impl PartWriter {
    fn new(path: PathBuf, schema: SchemaRef) -> Self {
        let coalescer = BatchCoalescer::new(schema.clone(), SPILL_ROWS);
        Self { path, schema, coalescer, writer: None, rows: 0 }
    }

    /// Appends `rows` of `batch`.
    fn push(&mut self, batch: &RecordBatch, rows: &[u32]) -> Result<()> {
        let indices = UInt32Array::from(rows.to_vec());
        self.coalescer.push_batch_with_indices(batch.clone(), &indices).map_err(store)?;
        self.drain()
    }

    fn push_all(&mut self, batch: RecordBatch) -> Result<()> {
        self.coalescer.push_batch(batch).map_err(store)?;
        self.drain()
    }

    /// The file's writer, created at first use.
    fn writer(&mut self) -> Result<&mut StreamWriter<BufWriter<File>>> {
        if self.writer.is_none() {
            let file = File::create(&self.path)
                .map_err(|e| FeatureError::store(format!("spill file {}: {e}", self.path.display())))?;
            self.writer = Some(StreamWriter::try_new_buffered(file, &self.schema).map_err(store)?);
        }
        self.writer.as_mut().ok_or_else(|| store("no spill writer"))
    }

    fn drain(&mut self) -> Result<()> {
        while let Some(batch) = self.coalescer.next_completed_batch() {
            self.writer()?.write(&batch).map_err(store)?;
            self.rows += batch.num_rows() as u64;
        }
        Ok(())
    }

    /// Flushes and closes the file (written even when empty); returns its size.
    fn finish(mut self) -> Result<u64> {
        self.coalescer.finish_buffered_batch().map_err(store)?;
        self.drain()?;
        self.writer()?.finish().map_err(store)?;
        drop(self.writer.take());
        Ok(std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0))
    }
}

fn read_ipc(path: &Path) -> Result<impl Iterator<Item = Result<RecordBatch>>> {
    let file = File::open(path).map_err(|e| FeatureError::store(format!("spill file {}: {e}", path.display())))?;
    let reader = StreamReader::try_new(BufReader::new(file), None).map_err(store)?;
    Ok(reader.map(|b| b.map_err(store)))
}

/// The results of one partition, read in step with the entity rows.
struct Cursor {
    reader: Box<dyn Iterator<Item = Result<RecordBatch>>>,
    batch: Option<RecordBatch>,
    offset: usize,
    /// Index of `batch` in the current output batch's sources, once it was added.
    source: Option<usize>,
}

impl Cursor {
    fn open(path: &Path) -> Result<Self> {
        Ok(Self { reader: Box::new(read_ipc(path)?), batch: None, offset: 0, source: None })
    }

    /// The (source, row) of entity row `row`'s result, adding batches to `sources` as needed.
    fn next(&mut self, row: u64, sources: &mut Vec<RecordBatch>) -> Result<(usize, usize)> {
        while self.batch.as_ref().is_none_or(|b| self.offset >= b.num_rows()) {
            let next = self.reader.next().ok_or_else(|| FeatureError::store("a spill file ended early"))??;
            self.batch = Some(next);
            self.offset = 0;
            self.source = None;
        }
        let batch = self.batch.as_ref().ok_or_else(|| FeatureError::store("a spill file ended early"))?;
        let got = batch.column(0).as_primitive::<UInt64Type>().value(self.offset);
        if got != row {
            return Err(FeatureError::store(format!("spill files out of step: row {got} where {row} was due")));
        }
        let source = match self.source {
            Some(s) => s,
            None => {
                sources.push(batch.clone());
                self.source = Some(sources.len() - 1);
                sources.len() - 1
            }
        };
        self.offset += 1;
        Ok((source, self.offset - 1))
    }
}

fn store(e: impl std::fmt::Display) -> FeatureError {
    FeatureError::store(format!("training set spill: {e}"))
}
