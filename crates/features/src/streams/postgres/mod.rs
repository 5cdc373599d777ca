//! PostgreSQL change data capture: a view's `stream = { type = "postgres", table = ... }` keeps
//! the online store equal to the table.
//!
//! 1. A publication of the table and a logical replication slot (`pgoutput`) are created. The
//!    slot exports a snapshot; the table is copied as of that snapshot, so no change between
//!    the copy and the stream is missed or doubled.
//! 2. Changes stream from the slot. Whole transactions are applied in commit order (inserts
//!    and updates write the row, deletes remove it), several per durable write.
//! 3. Each write stores the position (the end LSN of the last applied transaction, and how far
//!    into a transaction too large to hold, plus the count of changes ever applied) in the
//!    same store transaction as the rows. After a restart or a `kill -9`, transactions up to
//!    that position are skipped: nothing is lost or applied twice.
//! 4. The slot's confirmed LSN is advanced only to what is durable, so the server keeps every
//!    change that is not.
//!
//! Event time is the transaction's commit time (the snapshot's time for copied rows).

pub mod pgoutput;
mod setup;
mod types;
pub(crate) mod wire;

use self::pgoutput::{Datum, Frame, Message, Relation};
use self::setup::Table;
use self::wire::{Conn, ConnInfo};
use crate::definitions::{FeatureView, StreamSource, StreamSpec};
use crate::feature_store::{now_us, FeatureStore};
use crate::record::{encode_key, EntityKey, Record};
use crate::store::{Change, Checkpoint};
use crate::streams::ConsumerError;
use crate::value::ValueType;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A transaction with more than this many times the view's `batch` changes is written in parts
/// (its position says how far), so memory stays bounded.
const LARGE_TRANSACTION_BATCHES: usize = 20;
/// Rows per write during the snapshot copy.
const SNAPSHOT_CHUNK: usize = 10_000;
/// Status updates go to the server at least this often (its `wal_sender_timeout` is 60 s by default).
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// After a durable write the server hears of it within this long (one status update for many
/// writes; until then a restart re-reads those transactions and the position skips them).
const CONFIRM_EVERY: Duration = Duration::from_secs(1);
/// How often the slot's retained WAL is measured.
const SLOT_CHECK_EVERY: Duration = Duration::from_secs(5);

/// What the online store keeps for a PostgreSQL source, written with every batch of changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub view: String,
    /// The database URL without its password.
    pub url: String,
    pub slot: String,
    pub publication: String,
    /// Whether Flotilla created the publication (and drops it with the slot).
    pub owns_publication: bool,
    /// End LSN of the last transaction applied whole.
    pub applied_end: u64,
    /// (final LSN, changes applied) of a large transaction applied in part.
    pub partial: Option<(u64, u64)>,
    /// Changes applied ever (inserts, updates, deletes, truncates), each once.
    pub changes: u64,
}

impl Position {
    fn checkpoint(&self) -> Checkpoint {
        Checkpoint { source: checkpoint_key(&self.slot), position: serde_json::to_vec(self).unwrap_or_default() }
    }
}

/// What the store's checkpoint names of PostgreSQL sources start with.
const CHECKPOINT_PREFIX: &str = "postgres:";

/// The store's checkpoint name of a slot.
pub fn checkpoint_key(slot: &str) -> String {
    format!("{CHECKPOINT_PREFIX}{slot}")
}

struct Source<'a> {
    store: &'a FeatureStore,
    view: &'a FeatureView,
    label: String,
    info: ConnInfo,
    table: String,
    slot: String,
    publication: String,
    max_lag_bytes: u64,
    batch: usize,
}

consumer! {
    /// A PostgreSQL table read by logical replication.
    Postgres
}

/// Replicates until `stop` turns true.
async fn run(
    store: &FeatureStore,
    view_index: usize,
    spec: &StreamSpec,
    stop: watch::Receiver<bool>,
) -> Result<(), ConsumerError> {
    let StreamSource::Postgres { url, table, slot, publication, max_lag_bytes } = &spec.source else {
        return Err(ConsumerError::Stop("not a PostgreSQL source".into()));
    };
    let view = &store.registry.views[view_index];
    let source = Source {
        store,
        view,
        label: spec.label(),
        info: ConnInfo::parse(url)
            .map_err(|e| ConsumerError::Stop(format!("feature view '{}': stream url: {e}", view.name)))?,
        table: table.clone(),
        slot: slot.clone(),
        publication: publication.clone(),
        max_lag_bytes: *max_lag_bytes,
        batch: spec.batch,
    };
    source.run(stop).await
}

impl Source<'_> {
    async fn run(&self, stop: watch::Receiver<bool>) -> Result<(), ConsumerError> {
        let mut sql = Conn::connect(&self.info, false).await?;
        setup::check_server(&mut sql, self.view).await?;
        let table = setup::describe(&mut sql, self.view, &self.table).await?;
        let owns_publication = setup::ensure_publication(&mut sql, self.view, &self.publication, &table).await?;
        let stored = self.stored().await?;
        let plugin = setup::slot_plugin(&mut sql, &self.slot).await?;
        if let Some(p) = plugin.as_deref().filter(|p| *p != "pgoutput") {
            return Err(ConsumerError::Stop(format!(
                "feature view '{}': slot '{}' uses plugin {p}, not pgoutput",
                self.view.name, self.slot
            )));
        }
        let position = match (stored, plugin.is_some()) {
            (Some(p), true) if p.slot == self.slot => p,
            (stored, slot_exists) => {
                if slot_exists {
                    tracing::warn!(view = %self.view.name, slot = %self.slot, "the slot has no checkpoint in this online store; recreating it and copying the table again");
                    setup::drop_slot(&self.info, &self.slot, None).await?;
                } else if stored.is_some() {
                    tracing::warn!(view = %self.view.name, slot = %self.slot, "the replication slot is gone (dropped?); copying the table again");
                }
                let changes = stored.map(|p| p.changes).unwrap_or(0);
                let mut stopped = stop.clone();
                tokio::select! {
                    p = self.snapshot(&mut sql, &table, owns_publication, changes) => p?,
                    // The slot stays without a position: the next start copies the table again.
                    _ = stopped.wait_for(|s| *s) => return Ok(()),
                }
            }
        };
        self.store.metrics.cdc_changes.with_label_values(&[&self.label]).reset();
        self.store.metrics.cdc_changes.with_label_values(&[&self.label]).inc_by(position.changes);
        let monitor = tokio::spawn(monitor_slot(
            sql,
            self.store.metrics.clone(),
            self.label.clone(),
            self.slot.clone(),
            self.max_lag_bytes,
        ));
        let _monitor = AbortOnDrop(monitor);
        Ok(self.stream(table, position, stop).await?)
    }

    async fn stored(&self) -> Result<Option<Position>, String> {
        let bytes = self.store.store.checkpoint(&checkpoint_key(&self.slot)).await.map_err(|e| e.to_string())?;
        match bytes {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| format!("stored position of slot '{}': {e}", self.slot)),
        }
    }

    /// Creates the slot and copies the table as of its snapshot; the copy's last write stores
    /// the slot's consistent point.
    async fn snapshot(
        &self,
        sql: &mut Conn,
        table: &Table,
        owns_publication: bool,
        changes: u64,
    ) -> Result<Position, String> {
        let started = Instant::now();
        let mut replication = Conn::connect(&self.info, true).await?;
        let slot = setup::create_slot(&mut replication, self.view, &self.slot).await?;
        tracing::info!(view = %self.view.name, slot = %self.slot, lsn = %setup::format_lsn(slot.consistent_point), "created replication slot; copying the table");
        // Rows of an earlier copy may be gone from the table: start from nothing.
        self.store.truncate(self.view, &self.label, None).await.map_err(|e| e.to_string())?;
        let layout = Layout::of_view(self.view);
        let columns: Vec<&str> = layout.names.iter().map(String::as_str).collect();
        let oids: Vec<u32> =
            columns.iter().map(|c| table.columns.iter().find(|t| t.0 == *c).map(|t| t.1).unwrap_or(0)).collect();
        let mut copied = 0u64;
        let layout = layout.with_oids(&oids);
        let ts = setup::begin_copy(sql, table, &slot.snapshot, &columns).await?;
        loop {
            let (rows, done) = setup::copy_chunk(sql, SNAPSHOT_CHUNK).await?;
            let mut changes = Vec::with_capacity(rows.len());
            for row in rows {
                let datums: Vec<Datum> = row
                    .into_iter()
                    .map(|v| v.map(|s| Datum::Text(s.into_bytes().into())).unwrap_or(Datum::Null))
                    .collect();
                if let Some(change) = self.upsert(&layout, &datums, ts, None) {
                    changes.push(change);
                }
            }
            copied += changes.len() as u64;
            self.store.apply(self.view, changes, &self.label, None).await.map_err(|e| e.to_string())?;
            if done {
                break;
            }
        }
        let position = Position {
            view: self.view.name.clone(),
            url: self.info.redacted(),
            slot: self.slot.clone(),
            publication: self.publication.clone(),
            owns_publication,
            applied_end: slot.consistent_point,
            partial: None,
            changes,
        };
        self.store
            .apply(self.view, Vec::new(), &self.label, Some(position.checkpoint()))
            .await
            .map_err(|e| e.to_string())?;
        replication.close().await;
        self.store.metrics.cdc_snapshot_rows.with_label_values(&[&self.label]).inc_by(copied);
        tracing::info!(view = %self.view.name, rows = copied, seconds = started.elapsed().as_secs_f64(), "snapshot copied");
        Ok(position)
    }
}

/// Which tuple column feeds each join key and feature.
#[derive(Clone)]
struct Layout {
    /// Column names: the join keys, then the features.
    names: Vec<String>,
    types: Vec<ValueType>,
    /// Per name: (tuple position, column type OID), `None` when the table lacks the column.
    at: Vec<Option<(usize, u32)>>,
    keys: usize,
}

impl Layout {
    fn of_view(view: &FeatureView) -> Self {
        let mut names = Vec::new();
        let mut types = Vec::new();
        for (n, t) in &view.join_keys {
            names.push(n.clone());
            types.push(*t);
        }
        for f in &view.features {
            names.push(f.name.clone());
            types.push(f.dtype);
        }
        let at = (0..names.len()).map(|i| Some((i, 0))).collect();
        Self { names, types, at, keys: view.join_keys.len() }
    }

    /// For the snapshot copy: columns in name order, with their types.
    fn with_oids(&self, oids: &[u32]) -> Self {
        let mut l = self.clone();
        l.at = (0..l.names.len()).map(|i| Some((i, oids.get(i).copied().unwrap_or(0)))).collect();
        l
    }

    /// For a Relation message: where each name sits in the tuples that follow.
    fn of_relation(view: &FeatureView, rel: &Relation) -> Result<Self, String> {
        let mut l = Self::of_view(view);
        for (i, name) in l.names.iter().enumerate() {
            let found = rel.columns.iter().position(|c| c.name == *name);
            if let Some(pos) = found {
                let oid = rel.columns[pos].type_oid;
                types::check(name, &format!("type {oid}"), oid, name, l.types[i]).map_err(|e| {
                    format!("feature view '{}': table {}.{} changed: {e}", view.name, rel.namespace, rel.name)
                })?;
            } else if i < l.keys {
                return Err(format!(
                    "feature view '{}': table {}.{} has no column '{name}' any more",
                    view.name, rel.namespace, rel.name
                ));
            }
            l.at[i] = found.map(|p| (p, rel.columns[p].type_oid));
        }
        Ok(l)
    }
}

/// The transaction being read.
struct Transaction {
    final_lsn: u64,
    commit_us: i64,
    /// Already applied whole before a restart.
    skip: bool,
    /// Changes of it applied before a restart (a large transaction written in part).
    skip_first: u64,
    /// Changes of it seen so far.
    seen: u64,
}

/// A change waiting for the next durable write.
enum Pending {
    Change(Change),
    Truncate,
}

/// The stream's state between durable writes.
struct Stream {
    position: Position,
    pending: Vec<Pending>,
    /// Commit times of the whole transactions in `pending`.
    commits: Vec<i64>,
    /// End LSN of the last whole transaction in `pending`.
    pending_end: Option<u64>,
    /// Changes in `pending` (counted into the position when written).
    pending_changes: u64,
    transaction: Option<Transaction>,
    relations: HashMap<u32, Option<Layout>>,
    /// What the server was last told is durable.
    confirmed: u64,
    wal_end: u64,
    last_status: Instant,
}

impl Source<'_> {
    async fn stream(&self, table: Table, position: Position, mut stop: watch::Receiver<bool>) -> Result<(), String> {
        let mut conn = Conn::connect(&self.info, true).await?;
        let command = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names {})",
            wire::ident(&self.slot),
            setup::format_lsn(position.applied_end),
            wire::literal(&wire::ident(&self.publication)),
        );
        conn.start_replication(&command).await.map_err(|e| format!("feature view '{}': {e}", self.view.name))?;
        tracing::info!(source = %self.label, view = %self.view.name, slot = %self.slot, from = %setup::format_lsn(position.applied_end), "consuming");
        let mut s = Stream {
            confirmed: position.applied_end,
            wal_end: position.applied_end,
            position,
            pending: Vec::new(),
            commits: Vec::new(),
            pending_end: None,
            pending_changes: 0,
            transaction: None,
            relations: HashMap::new(),
            last_status: Instant::now(),
        };
        let table_name = (table.namespace.clone(), table.name.clone());
        loop {
            let next = tokio::select! {
                d = conn.copy_data() => Some(d?),
                () = async { drop(stop.wait_for(|s| *s).await) } => None,
                _ = tokio::time::sleep(STATUS_EVERY) => {
                    self.status(&mut s, &mut conn, false).await?;
                    continue;
                }
            };
            let Some(data) = next else {
                // Whole transactions are written; an open one is read again next time.
                if s.transaction.is_none() {
                    self.flush(&mut s, &mut conn, false).await?;
                }
                conn.close().await;
                return Ok(());
            };
            let Some(data) = data else {
                return Err(format!("feature view '{}': the server ended replication", self.view.name));
            };
            match pgoutput::frame(data)? {
                Frame::Keepalive { wal_end, reply } => {
                    s.wal_end = s.wal_end.max(wal_end);
                    // Nothing pending or open: everything up to the server's end is applied.
                    if s.pending.is_empty() && s.transaction.is_none() && s.pending_end.is_none() {
                        s.confirmed = s.confirmed.max(wal_end);
                        self.store.metrics.cdc_lag_seconds.with_label_values(&[&self.label]).set(0.0);
                    }
                    if reply || s.last_status.elapsed() >= STATUS_EVERY {
                        self.status(&mut s, &mut conn, false).await?;
                    }
                }
                Frame::XLogData { wal_end, data, .. } => {
                    s.wal_end = s.wal_end.max(wal_end);
                    self.message(&mut s, pgoutput::message(data)?, &table_name).await?;
                }
            }
            let big = s.transaction.is_some() && s.pending.len() >= LARGE_TRANSACTION_BATCHES * self.batch;
            let at_boundary = s.transaction.is_none() && s.pending_end.is_some();
            if big || (at_boundary && (s.pending.len() >= self.batch || !conn.has_message())) {
                self.flush(&mut s, &mut conn, big).await?;
            }
            let lag = s.wal_end.saturating_sub(s.confirmed.max(s.position.applied_end));
            self.store.metrics.cdc_lag_bytes.with_label_values(&[&self.label]).set(lag as i64);
        }
    }

    async fn message(&self, s: &mut Stream, m: Message, table: &(String, String)) -> Result<(), String> {
        match m {
            Message::Begin { final_lsn, commit_us, .. } => {
                let skip = final_lsn < s.position.applied_end;
                let skip_first = match s.position.partial {
                    Some((lsn, done)) if lsn == final_lsn => done,
                    _ => 0,
                };
                s.transaction = Some(Transaction { final_lsn, commit_us, skip, skip_first, seen: 0 });
            }
            Message::Commit { end_lsn, commit_us, .. } => {
                if let Some(t) = s.transaction.take() {
                    if !t.skip {
                        s.pending_end = Some(end_lsn);
                        s.commits.push(commit_us);
                    }
                }
            }
            Message::Relation(rel) => {
                let ours = (&rel.namespace, &rel.name) == (&table.0, &table.1);
                let layout = if ours { Some(Layout::of_relation(self.view, &rel)?) } else { None };
                s.relations.insert(rel.oid, layout);
            }
            Message::Insert { relation, new } => {
                if let Some((layout, ts)) = self.take(s, relation) {
                    if let Some(c) = self.upsert(&layout, &new, ts, None) {
                        s.pending.push(Pending::Change(c));
                    }
                }
            }
            Message::Update { relation, old, new } => {
                if let Some((layout, ts)) = self.take(s, relation) {
                    let new_key = self.key(&layout, &new);
                    if let (Some(old), Some(new_key)) = (old, &new_key) {
                        if let Some(old_key) = self.key(&layout, &old).filter(|k| k != new_key) {
                            s.pending.push(Pending::Change((old_key, None)));
                        }
                    }
                    let previous = match &new_key {
                        Some(k) if new.contains(&Datum::Unchanged) => self.previous(s, k).await?,
                        _ => None,
                    };
                    if let Some(c) = self.upsert(&layout, &new, ts, previous.as_deref()) {
                        s.pending.push(Pending::Change(c));
                    }
                }
            }
            Message::Delete { relation, old } => {
                if let Some((layout, _)) = self.take(s, relation) {
                    if let Some(k) = self.key(&layout, &old) {
                        s.pending.push(Pending::Change((k, None)));
                    }
                }
            }
            Message::Truncate { relations } => {
                let ours = relations.iter().any(|r| matches!(s.relations.get(r), Some(Some(_))));
                if ours && self.take_counted(s).is_some() {
                    s.pending.push(Pending::Truncate);
                }
            }
            Message::Other(_) => {}
        }
        Ok(())
    }

    /// The layout and commit time for a change of `relation`, or `None` when the change is not
    /// ours or was applied before a restart.
    fn take(&self, s: &mut Stream, relation: u32) -> Option<(Layout, i64)> {
        let layout = s.relations.get(&relation)?.clone()?;
        self.take_counted(s).map(|ts| (layout, ts))
    }

    /// Counts a change of the open transaction and returns its commit time; `None` when it was
    /// applied before a restart.
    fn take_counted(&self, s: &mut Stream) -> Option<i64> {
        let t = s.transaction.as_mut()?;
        t.seen += 1;
        if t.skip || t.seen <= t.skip_first {
            return None;
        }
        s.pending_changes += 1;
        Some(t.commit_us)
    }

    fn key(&self, layout: &Layout, tuple: &[Datum]) -> Option<EntityKey> {
        let mut values = Vec::with_capacity(layout.keys);
        for i in 0..layout.keys {
            let (pos, oid) = layout.at[i]?;
            match tuple.get(pos) {
                Some(Datum::Text(t)) => {
                    let text = std::str::from_utf8(t).ok()?;
                    match types::parse(text, oid, layout.types[i]) {
                        Ok(v) => values.push(v),
                        Err(e) => {
                            self.bad_value(&layout.names[i], &e);
                            return None;
                        }
                    }
                }
                _ => {
                    self.bad_value(&layout.names[i], "the join key is NULL or missing from the change");
                    return None;
                }
            }
        }
        encode_key(self.view, &values.iter().map(Some).collect::<Vec<_>>()).ok()
    }

    /// The new row of an insert, update or snapshot row; `previous` fills TOASTed values the
    /// change did not send.
    fn upsert(&self, layout: &Layout, tuple: &[Datum], event_ts: i64, previous: Option<&Record>) -> Option<Change> {
        let key = self.key(layout, tuple)?;
        let mut values = Vec::with_capacity(layout.names.len() - layout.keys);
        for i in layout.keys..layout.names.len() {
            let f = i - layout.keys;
            let v = match layout.at[i].and_then(|(pos, oid)| tuple.get(pos).map(|d| (d, oid))) {
                None | Some((Datum::Null, _)) => None,
                Some((Datum::Unchanged, _)) => previous.and_then(|p| p.values.get(f).cloned().flatten()),
                Some((Datum::Text(t), oid)) => match std::str::from_utf8(t)
                    .map_err(|_| "not UTF-8".to_string())
                    .and_then(|s| types::parse(s, oid, layout.types[i]))
                {
                    Ok(v) => Some(v),
                    Err(e) => {
                        self.bad_value(&layout.names[i], &e);
                        None
                    }
                },
            };
            values.push(v);
        }
        Some((key, Some(Record::new(event_ts, 0, values))))
    }

    /// The entity's latest row: a pending change, else the store's.
    async fn previous(&self, s: &Stream, key: &EntityKey) -> Result<Option<Arc<Record>>, String> {
        for p in s.pending.iter().rev() {
            match p {
                Pending::Change((k, r)) if k == key => return Ok(r.clone().map(Arc::new)),
                Pending::Truncate => return Ok(None),
                _ => {}
            }
        }
        let found = self
            .store
            .store
            .read(&self.store.registry, &[(self.view.index, key.clone())])
            .await
            .map_err(|e| e.to_string())?;
        Ok(found.into_iter().next().flatten())
    }

    fn bad_value(&self, column: &str, reason: &str) {
        self.store.metrics.cdc_bad_values.with_label_values(&[&self.label]).inc();
        tracing::warn!(source = %self.label, column, reason, "a column value could not be read; stored as missing");
    }

    /// Writes what is pending with the new position, durably, then tells the server.
    /// `partial`: the open transaction is large and is written in part.
    async fn flush(&self, s: &mut Stream, conn: &mut Conn, partial: bool) -> Result<(), String> {
        if s.pending.is_empty() && s.pending_end.is_none() && !partial {
            return Ok(());
        }
        let mut next = s.position.clone();
        if let Some(end) = s.pending_end {
            next.applied_end = end;
            next.partial = None;
        }
        if partial {
            if let Some(t) = &s.transaction {
                next.partial = Some((t.final_lsn, t.seen));
            }
        }
        next.changes += s.pending_changes;
        let mut run = Vec::new();
        let pending = std::mem::take(&mut s.pending);
        for p in pending {
            match p {
                Pending::Change(c) => run.push(c),
                Pending::Truncate => {
                    self.store
                        .apply(self.view, std::mem::take(&mut run), &self.label, None)
                        .await
                        .map_err(|e| e.to_string())?;
                    self.store.truncate(self.view, &self.label, None).await.map_err(|e| e.to_string())?;
                }
            }
        }
        self.store.apply(self.view, run, &self.label, Some(next.checkpoint())).await.map_err(|e| e.to_string())?;
        let now = now_us();
        for c in s.commits.drain(..) {
            self.store.metrics.cdc_visibility.with_label_values(&[&self.label]).observe((now - c).max(0) as f64 / 1e6);
        }
        if let Some(t) = s.transaction.as_ref().filter(|_| partial) {
            self.store
                .metrics
                .cdc_lag_seconds
                .with_label_values(&[&self.label])
                .set((now - t.commit_us).max(0) as f64 / 1e6);
        }
        self.store.metrics.cdc_changes.with_label_values(&[&self.label]).inc_by(s.pending_changes);
        s.pending_changes = 0;
        s.pending_end = None;
        s.position = next;
        s.confirmed = s.confirmed.max(s.position.applied_end);
        if s.last_status.elapsed() >= CONFIRM_EVERY {
            self.status(s, conn, false).await?;
        }
        Ok(())
    }

    async fn status(&self, s: &mut Stream, conn: &mut Conn, reply: bool) -> Result<(), String> {
        s.last_status = Instant::now();
        conn.send_copy_data(&pgoutput::status_update(s.confirmed, now_us(), reply)).await.map_err(String::from)
    }
}

/// Measures how much WAL the slot holds back, every few seconds, and raises the warning gauge
/// past `max_lag_bytes`.
async fn monitor_slot(
    mut sql: Conn,
    metrics: crate::metrics::FeatureMetrics,
    label: String,
    slot: String,
    max_lag_bytes: u64,
) {
    let retained = metrics.cdc_slot_retained_bytes.with_label_values(&[&label, &slot]);
    let warning = metrics.cdc_slot_lag_warning.with_label_values(&[&label, &slot]);
    let q = retained_query(&slot);
    let mut warned = false;
    loop {
        match sql.query(&q).await {
            Ok((_, rows)) => {
                let bytes: i64 =
                    rows.first().and_then(|r| r.first().cloned().flatten()).and_then(|s| s.parse().ok()).unwrap_or(0);
                retained.set(bytes);
                let over = bytes as u64 > max_lag_bytes;
                warning.set(i64::from(over));
                if over && !warned {
                    tracing::warn!(source = %label, slot = %slot, retained_bytes = bytes, limit = max_lag_bytes, "the replication slot holds back more WAL than max_lag_mb");
                }
                warned = over;
            }
            Err(e) => {
                tracing::debug!(source = %label, error = %e, "slot check failed");
                return;
            }
        }
        tokio::time::sleep(SLOT_CHECK_EVERY).await;
    }
}

fn retained_query(slot: &str) -> String {
    format!(
        "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = {}",
        wire::literal(slot)
    )
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Drops the slot (and the publication Flotilla created) of every PostgreSQL position in the
/// store whose slot is not in `declared` (the slots this process consumes its views from),
/// and forgets the position.
/// Only for the embedded store, which one process owns; a Redis store may be shared by servers
/// with other feature repositories, so there slots are dropped by hand (`features cdc drop`).
pub async fn drop_undeclared(store: &FeatureStore, declared: &[String]) {
    if store.store.kind() != "embedded" {
        return;
    }
    let stored = match positions(store).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the stored PostgreSQL positions");
            return;
        }
    };
    for p in stored.into_iter().filter(|p| !declared.contains(&p.slot)) {
        match drop_position(store, &p).await {
            Ok(()) => {
                tracing::info!(view = %p.view, slot = %p.slot, "the view no longer streams from PostgreSQL: dropped its replication slot")
            }
            Err(e) => {
                tracing::warn!(view = %p.view, slot = %p.slot, error = %e, "cannot drop the replication slot of a removed view; drop it with `flotilla features cdc drop`")
            }
        }
    }
}

/// Drops a position's slot (and owned publication) and forgets the position.
pub async fn drop_position(store: &FeatureStore, p: &Position) -> Result<(), String> {
    let info = ConnInfo::parse(&p.url)?;
    setup::drop_slot(&info, &p.slot, p.owns_publication.then_some(p.publication.as_str())).await?;
    store.store.forget_checkpoint(&checkpoint_key(&p.slot)).await.map_err(|e| e.to_string())
}

/// WAL the position's slot holds back on its server (`None`: no such slot).
pub async fn retained_bytes(p: &Position) -> Result<Option<i64>, String> {
    let mut sql = Conn::connect(&ConnInfo::parse(&p.url)?, false).await?;
    let (_, rows) = sql.query(&retained_query(&p.slot)).await?;
    sql.close().await;
    Ok(rows.into_iter().next().map(|r| r.into_iter().next().flatten().and_then(|s| s.parse().ok()).unwrap_or(0)))
}

pub use setup::format_lsn;

/// The stored positions of PostgreSQL sources.
pub async fn positions(store: &FeatureStore) -> Result<Vec<Position>, String> {
    let all = store.store.checkpoints(CHECKPOINT_PREFIX).await.map_err(|e| e.to_string())?;
    Ok(all.into_iter().filter_map(|(_, b)| serde_json::from_slice(&b).ok()).collect())
}
