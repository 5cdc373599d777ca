//! [`FeatureStore`]: the declarations, the online store and the metrics, with the operations
//! every entry point shares: reading features for entities, and writing rows.

use crate::definitions::{FeatureRef, FeatureView, Registry};
use crate::error::{FeatureError, Result};
use crate::metrics::FeatureMetrics;
use crate::record::{encode_key, EntityKey, Record};
use crate::store::{Change, Checkpoint, OnlineStore, StoreLocation, WriteOutcome};
use crate::value::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// A served feature value's status, as Feast reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Present,
    /// The entity has no row in the view.
    NotFound,
    /// The row is older than the view's ttl: the value is returned for information, enrichment
    /// treats it as missing.
    OutsideMaxAge,
    /// The row exists but this feature's value is missing.
    NullValue,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Present => "PRESENT",
            Self::NotFound => "NOT_FOUND",
            Self::OutsideMaxAge => "OUTSIDE_MAX_AGE",
            Self::NullValue => "NULL_VALUE",
        }
    }
}

/// One looked-up feature value.
#[derive(Debug, Clone, PartialEq)]
pub struct Served<'a> {
    pub value: Option<&'a Value>,
    pub status: Status,
    /// The row's event time (µs), 0 when there is no row.
    pub event_ts: i64,
}

/// Records of several views for several entity rows: `records[v][row]`.
pub struct Lookup {
    pub views: Vec<usize>,
    pub records: Vec<Vec<Option<Arc<Record>>>>,
    /// When the lookup ran (µs since the epoch), for ttl checks.
    pub now_us: i64,
}

impl Lookup {
    /// The value of feature `f` for entity row `row`.
    pub fn get<'a>(&'a self, registry: &Registry, f: FeatureRef, row: usize) -> Served<'a> {
        let Some(v) = self.views.iter().position(|v| *v == f.view) else {
            return Served { value: None, status: Status::NotFound, event_ts: 0 };
        };
        let Some(record) = self.records[v].get(row).and_then(|r| r.as_deref()) else {
            return Served { value: None, status: Status::NotFound, event_ts: 0 };
        };
        let view = &registry.views[f.view];
        let value = record.values.get(f.feature).and_then(|v| v.as_ref());
        let status = match value {
            _ if record.expired(view.ttl_us, self.now_us) => Status::OutsideMaxAge,
            Some(_) => Status::Present,
            None => Status::NullValue,
        };
        Served { value, status, event_ts: record.event_ts }
    }
}

/// Served values counted by (view index, status) while a response is built.
#[derive(Debug, Default)]
pub struct ServedCounts(Vec<(usize, Status, u64)>);

impl ServedCounts {
    pub fn add(&mut self, view: usize, status: Status) {
        match self.0.iter_mut().find(|(v, s, _)| *v == view && *s == status) {
            Some((_, _, n)) => *n += 1,
            None => self.0.push((view, status, 1)),
        }
    }
}

/// The feature store of a server or a CLI command.
pub struct FeatureStore {
    pub registry: Arc<Registry>,
    pub store: OnlineStore,
    pub metrics: FeatureMetrics,
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

// === impl FeatureStore ===

impl FeatureStore {
    /// Loads the declarations in `repo` and opens the online store.
    pub async fn open(repo: &Path, location: &StoreLocation, metrics: &prometheus::Registry) -> Result<Self> {
        let registry = Registry::load(repo)?;
        let store = OnlineStore::open(location, &registry).await?;
        Ok(Self { registry: Arc::new(registry), store, metrics: FeatureMetrics::new(metrics) })
    }

    /// Reads the records of `views` for entity rows whose keys `key_of(view, row)` gives.
    pub async fn lookup(
        &self,
        views: &[usize],
        rows: usize,
        mut key_of: impl FnMut(&FeatureView, usize) -> Result<EntityKey>,
    ) -> Result<Lookup> {
        let mut wants = Vec::with_capacity(views.len() * rows);
        for v in views {
            let view = &self.registry.views[*v];
            for row in 0..rows {
                wants.push((*v, key_of(view, row)?));
            }
        }
        let started = Instant::now();
        let mut flat = self.store.read(&self.registry, &wants).await?.into_iter();
        self.metrics.read_duration.with_label_values(&[self.store.kind()]).observe(started.elapsed().as_secs_f64());
        let records = views.iter().map(|_| flat.by_ref().take(rows).collect()).collect();
        Ok(Lookup { views: views.to_vec(), records, now_us: now_us() })
    }

    /// Adds served-value counts to the metrics: one update per (view, status).
    pub fn record_served(&self, counts: &ServedCounts) {
        for (view, status, n) in &counts.0 {
            let view = self.registry.views[*view].name.as_str();
            self.metrics.values_served.with_label_values(&[view, status.as_str()]).inc_by(*n);
        }
    }

    /// Writes rows of one view and counts them under `source`.
    pub async fn write(
        &self,
        view: &FeatureView,
        rows: Vec<(EntityKey, Record)>,
        source: &str,
        checkpoint: Option<Checkpoint>,
    ) -> Result<WriteOutcome> {
        if view.max_items.is_some() {
            for (_, r) in &rows {
                r.items(view)?;
            }
        }
        let newest = rows.iter().map(|(_, r)| r.event_ts).max();
        let outcome = self.store.write(view, rows, checkpoint).await?;
        if outcome.applied > 0 {
            self.saw_event(view, newest);
        }
        let m = &self.metrics.rows_written;
        m.with_label_values(&[view.name.as_str(), source, "applied"]).inc_by(outcome.applied as u64);
        m.with_label_values(&[view.name.as_str(), source, "stale"]).inc_by(outcome.stale as u64);
        Ok(outcome)
    }

    /// Applies a change stream's changes in order (upserts and deletes) with `checkpoint`, and
    /// counts them under `source`.
    pub async fn apply(
        &self,
        view: &FeatureView,
        changes: Vec<Change>,
        source: &str,
        checkpoint: Option<Checkpoint>,
    ) -> Result<WriteOutcome> {
        let newest = changes.iter().filter_map(|(_, r)| r.as_ref().map(|r| r.event_ts)).max();
        let outcome = self.store.apply(view, changes, checkpoint).await?;
        if outcome.applied > 0 {
            self.saw_event(view, newest);
        }
        let m = &self.metrics.rows_written;
        m.with_label_values(&[view.name.as_str(), source, "applied"]).inc_by(outcome.applied as u64);
        m.with_label_values(&[view.name.as_str(), source, "superseded"]).inc_by(outcome.stale as u64);
        m.with_label_values(&[view.name.as_str(), source, "deleted"]).inc_by(outcome.deleted as u64);
        Ok(outcome)
    }

    /// Moves the view's newest-event gauge forward to `event_us` (µs since the epoch).
    fn saw_event(&self, view: &FeatureView, event_us: Option<i64>) {
        let Some(us) = event_us else { return };
        let gauge = self.metrics.view_newest_event.with_label_values(&[view.name.as_str()]);
        let seconds = us as f64 / 1e6;
        if seconds > gauge.get() {
            gauge.set(seconds);
        }
    }

    /// Removes every row of `view` (a truncated source table), with `checkpoint`.
    pub async fn truncate(&self, view: &FeatureView, source: &str, checkpoint: Option<Checkpoint>) -> Result<usize> {
        let removed = self.store.truncate(view, checkpoint).await?;
        self.metrics.rows_written.with_label_values(&[view.name.as_str(), source, "deleted"]).inc_by(removed as u64);
        Ok(removed)
    }

    /// One row from a JSON object (a stream message or a pushed row): the view's join keys,
    /// its timestamp field (`event_timestamp` by default), an optional created timestamp and
    /// any of its features. Other fields are ignored; missing features are stored as missing.
    pub fn row_from_json(
        &self,
        view: &FeatureView,
        object: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(EntityKey, Record)> {
        let field = |name: &str| object.get(name).unwrap_or(&serde_json::Value::Null);
        let mut keys = Vec::with_capacity(view.join_keys.len());
        for (name, ty) in &view.join_keys {
            let v = ty
                .from_json(field(name))
                .map_err(|m| FeatureError::invalid(format!("join key '{name}': {m}")))?
                .ok_or_else(|| FeatureError::invalid(format!("join key '{name}' is missing")))?;
            keys.push(v);
        }
        let key = encode_key(view, &keys.iter().map(Some).collect::<Vec<_>>())?;
        let ts_field = timestamp_field(view);
        let event_ts = json_timestamp(object, &[ts_field, "event_timestamp"])?
            .ok_or_else(|| FeatureError::invalid(format!("'{ts_field}' (the event time) is missing")))?;
        let created = view.source.as_ref().and_then(|s| s.created_timestamp_column.as_deref()).unwrap_or("created");
        let created_ts = json_timestamp(object, &[created])?.unwrap_or(0);
        let mut values = Vec::with_capacity(view.features.len());
        for f in &view.features {
            let v = f
                .dtype
                .from_json(field(&f.name))
                .map_err(|m| FeatureError::invalid(format!("feature '{}': {m}", f.name)))?;
            values.push(v);
        }
        let record = Record::new(event_ts, created_ts, values);
        if view.max_items.is_some() {
            record.items(view)?;
        }
        Ok((key, record))
    }
}

/// The name of a view's event-time column.
pub fn timestamp_field(view: &FeatureView) -> &str {
    view.source.as_ref().map(|s| s.timestamp_field.as_str()).unwrap_or("event_timestamp")
}

fn json_timestamp(object: &serde_json::Map<String, serde_json::Value>, names: &[&str]) -> Result<Option<i64>> {
    for name in names {
        if let Some(v) = object.get(*name).filter(|v| !v.is_null()) {
            return match crate::value::ValueType::UnixTimestamp.from_json(v) {
                Ok(Some(Value::UnixTimestamp(t))) => Ok(Some(t)),
                Ok(_) => Ok(None),
                Err(m) => Err(FeatureError::invalid(format!("'{name}': {m}"))),
            };
        }
    }
    Ok(None)
}
