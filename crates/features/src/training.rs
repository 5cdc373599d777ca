//! Point-in-time correct training sets, with Feast's semantics: for each entity row (keys +
//! event timestamp) and each feature view, the latest feature row of the same entity with
//! `entity_ts − ttl ≤ feature_ts ≤ entity_ts` (no lower bound when the view has no ttl); equal
//! event times are decided by the created timestamp; no such row gives nulls.
//!
//! Each view's source is read once, projected to the requested columns and indexed per entity
//! by (event time, created time); entity rows then stream through in batches, each feature
//! column gathered with Arrow's `take`, and the result is written as Parquet batch by batch.

use crate::definitions::{FeatureRef, FeatureView, Registry};
use crate::error::{FeatureError, Result};
use crate::files;
use crate::record::EntityKey;
use arrow_array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow_schema::{Field, Schema};
use indicatif::{ProgressBar, ProgressStyle};
use parquet::arrow::ArrowWriter;
use std::collections::HashMap;
use std::path::Path;
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
}

/// What a build did.
#[derive(Debug, Clone, Default)]
pub struct TrainingReport {
    pub entity_rows: u64,
    pub feature_rows: u64,
    /// Feature values found (not null) over all rows and features.
    pub matched: u64,
    pub elapsed: Duration,
}

/// One source row in the index: entity id, event time, created time, position in the file.
type Entry = (u32, i64, i64, u32);

/// A view's source rows, indexed by entity.
struct ViewIndex {
    /// Encoded entity key → entity id.
    ids: HashMap<EntityKey, u32>,
    /// Every row with a key, sorted by (entity id, event time, created time), stable (file order
    /// among equals, so the last of equal rows wins).
    entries: Vec<Entry>,
    /// `entries[starts[id]..starts[id + 1]]` are entity `id`'s rows.
    starts: Vec<usize>,
    /// The requested features' columns, whole file (declared types).
    columns: Vec<ArrayRef>,
    /// Positions (in the request) of the features these columns serve.
    wanted: Vec<usize>,
    ttl_us: i64,
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
        let mut report = TrainingReport::default();
        let mut indexes = Vec::with_capacity(views.len());
        for v in &views {
            let index = self.index_view(&reg.views[*v], &mut report)?;
            indexes.push((*v, index));
        }
        // Entity rows: key columns typed as the views' join keys, the timestamp as UTC µs.
        let mut key_types: Vec<(&str, crate::value::ValueType)> = Vec::new();
        for v in &views {
            for (k, t) in &reg.views[*v].join_keys {
                if !key_types.iter().any(|(n, _)| n == k) {
                    key_types.push((k.as_str(), *t));
                }
            }
        }
        let file = files::open(entities)?;
        let bar = if self.progress { ProgressBar::new(file.rows.unwrap_or(0)) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("training set [{bar:30}] {human_pos}/{human_len} entity rows {per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let what = entities.display().to_string();
        let mut writer: Option<ArrowWriter<std::fs::File>> = None;
        for batch in file.batches {
            let batch = batch?;
            let first = report.entity_rows;
            let ts = files::timestamps(&batch, &self.timestamp_field, &what, first, true)?;
            let mut keys: HashMap<&str, ArrayRef> = HashMap::new();
            for (k, t) in &key_types {
                keys.insert(k, files::column(&batch, k, *t, &what, first)?);
            }
            let mut feature_columns: Vec<Option<ArrayRef>> = vec![None; self.features.len()];
            for (v, index) in &indexes {
                let view = &reg.views[*v];
                let picks = self.pick(view, index, &keys, &ts, first, &what)?;
                let picks = UInt32Array::from(picks);
                report.matched += (picks.len() - picks.null_count()) as u64 * index.wanted.len() as u64;
                for (col, pos) in index.columns.iter().zip(&index.wanted) {
                    let taken = arrow_select::take::take(col.as_ref(), &picks, None)
                        .map_err(|e| FeatureError::store(format!("gathering features: {e}")))?;
                    feature_columns[*pos] = Some(taken);
                }
            }
            let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
            let mut arrays: Vec<ArrayRef> = batch.columns().to_vec();
            for (name, col) in names.iter().zip(feature_columns) {
                let col = col.ok_or_else(|| FeatureError::store("a feature column was not built"))?;
                fields.push(Arc::new(Field::new(name, col.data_type().clone(), true)));
                arrays.push(col);
            }
            let out_batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
                .map_err(|e| FeatureError::invalid(format!("{what}: {e}")))?;
            if writer.is_none() {
                let f = std::fs::File::create(out)
                    .map_err(|e| FeatureError::invalid(format!("cannot create {}: {e}", out.display())))?;
                writer = Some(
                    ArrowWriter::try_new(f, out_batch.schema(), None)
                        .map_err(|e| FeatureError::store(format!("{}: {e}", out.display())))?,
                );
            }
            if let Some(w) = writer.as_mut() {
                w.write(&out_batch).map_err(|e| FeatureError::store(format!("{}: {e}", out.display())))?;
            }
            report.entity_rows += batch.num_rows() as u64;
            bar.set_position(report.entity_rows);
        }
        match writer {
            Some(w) => {
                w.close().map_err(|e| FeatureError::store(format!("{}: {e}", out.display())))?;
            }
            None => return Err(FeatureError::invalid(format!("{what} holds no entity rows"))),
        }
        bar.finish_and_clear();
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Reads a view's source and indexes its rows by entity.
    fn index_view(&self, view: &FeatureView, report: &mut TrainingReport) -> Result<ViewIndex> {
        let source = view.source.as_ref().ok_or_else(|| {
            FeatureError::invalid(format!(
                "feature view '{}' has no batch source to build training data from",
                view.name
            ))
        })?;
        let wanted: Vec<usize> =
            self.features.iter().enumerate().filter(|(_, f)| f.view == view.index).map(|(i, _)| i).collect();
        let file = files::open(&source.path)?;
        let what = source.path.display().to_string();
        let mut ids: HashMap<EntityKey, u32> = HashMap::new();
        let mut entries: Vec<Entry> = Vec::with_capacity(file.rows.unwrap_or(0) as usize);
        let mut parts: Vec<Vec<ArrayRef>> = vec![Vec::new(); wanted.len()];
        let mut n: u64 = 0;
        let mut key = Vec::with_capacity(32);
        for batch in file.batches {
            let batch = batch?;
            let keys: Vec<ArrayRef> =
                view.join_keys.iter().map(|(k, t)| files::column(&batch, k, *t, &what, n)).collect::<Result<_>>()?;
            let ts = files::timestamps(&batch, &source.timestamp_field, &what, n, true)?;
            let created = match &source.created_timestamp_column {
                Some(c) => Some(files::timestamps(&batch, c, &what, n, false)?),
                None => None,
            };
            for (slot, i) in wanted.iter().enumerate() {
                let f = &view.features[self.features[*i].feature];
                parts[slot].push(files::column(&batch, &f.name, f.dtype, &what, n)?);
            }
            for row in 0..batch.num_rows() {
                key.clear();
                // Rows with a missing key join nothing.
                if !keys.iter().zip(&view.join_keys).all(|(c, (_, t))| files::key_into(c.as_ref(), *t, row, &mut key)) {
                    continue;
                }
                let id = match ids.get(key.as_slice()) {
                    Some(id) => *id,
                    None => {
                        let id = ids.len() as u32;
                        ids.insert(key.clone(), id);
                        id
                    }
                };
                let position = u32::try_from(n + row as u64)
                    .map_err(|_| FeatureError::invalid(format!("{what}: more than 4 billion rows")))?;
                let c = created.as_ref().and_then(|c| c[row]).unwrap_or(i64::MIN);
                entries.push((id, ts[row].unwrap_or_default(), c, position));
            }
            n += batch.num_rows() as u64;
        }
        // Stable: equal (entity, event, created) keep file order, and the last one wins.
        entries.sort_by_key(|(id, t, c, _)| (*id, *t, *c));
        let mut starts = vec![0usize; ids.len() + 1];
        for (id, ..) in &entries {
            starts[*id as usize + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut columns = Vec::with_capacity(parts.len());
        for part in parts {
            let refs: Vec<&dyn Array> = part.iter().map(|a| a.as_ref()).collect();
            let col = if refs.is_empty() {
                arrow_array::new_empty_array(&arrow_schema::DataType::Null)
            } else {
                arrow_select::concat::concat(&refs).map_err(|e| FeatureError::store(format!("{what}: {e}")))?
            };
            columns.push(col);
        }
        report.feature_rows += n;
        Ok(ViewIndex { ids, entries, starts, columns, wanted, ttl_us: view.ttl_us })
    }

    /// For each entity row of a batch, the source row to take (None = no match).
    fn pick(
        &self,
        view: &FeatureView,
        index: &ViewIndex,
        keys: &HashMap<&str, ArrayRef>,
        ts: &[Option<i64>],
        first: u64,
        what: &str,
    ) -> Result<Vec<Option<u32>>> {
        let mut out = Vec::with_capacity(ts.len());
        let cols: Vec<&ArrayRef> = view
            .join_keys
            .iter()
            .map(|(k, _)| {
                keys.get(k.as_str()).ok_or_else(|| {
                    FeatureError::invalid(format!(
                        "{what}: entity rows lack column '{k}' (a key of feature view '{}')",
                        view.name
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let mut key = Vec::with_capacity(32);
        for (row, t) in ts.iter().enumerate() {
            let Some(entity_ts) = *t else {
                return Err(FeatureError::invalid(format!(
                    "{what} row {}: no event timestamp",
                    first + row as u64 + 1
                )));
            };
            key.clear();
            let complete =
                cols.iter().zip(&view.join_keys).all(|(c, (_, ty))| files::key_into(c.as_ref(), *ty, row, &mut key));
            let found = complete.then(|| index.ids.get(key.as_slice())).flatten().and_then(|id| {
                let list = &index.entries[index.starts[*id as usize]..index.starts[*id as usize + 1]];
                // The last row with event time ≤ entity time (largest created among equals).
                let end = list.partition_point(|(_, ft, _, _)| *ft <= entity_ts);
                let (_, ft, _, position) = *list.get(end.checked_sub(1)?)?;
                let fresh = index.ttl_us <= 0 || ft >= entity_ts.saturating_sub(index.ttl_us);
                fresh.then_some(position)
            });
            out.push(found);
        }
        Ok(out)
    }
}
