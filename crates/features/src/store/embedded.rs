//! The embedded online store: records in a [redb](https://www.redb.org) file (ACID, crash-safe
//! copy-on-write B-trees, every commit fsynced), mirrored in sharded in-memory maps so reads
//! never touch the disk or take a lock that writers hold for long.
//!
//! One table per feature view (`view:<name>`, entity key → encoded [`Record`]) and a
//! `checkpoints` table (source → position) written in the same transaction as the rows a
//! position led to, so a restart resumes exactly where the durable data ends.

use super::{Change, Checkpoint, WriteOutcome};
use crate::definitions::{FeatureView, Registry};
use crate::error::{FeatureError, Result};
use crate::record::{EntityKey, Record};
use parking_lot::{Mutex, RwLock};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::path::Path;
use std::sync::Arc;

const SHARDS: usize = 16;
const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");

type Shard = RwLock<HashMap<EntityKey, Arc<Record>>>;

/// The embedded store of one process (redb allows one writer process per file).
pub struct Embedded {
    db: Database,
    /// Per view (by registry index): the latest record of every entity.
    memory: Vec<Vec<Shard>>,
    hasher: RandomState,
    /// Serialises writers so memory and disk agree on what is newest.
    writer: Mutex<()>,
}

fn table_name(view: &FeatureView) -> String {
    format!("view:{}", view.name)
}

// === impl Embedded ===

impl Embedded {
    /// Opens (or creates) the store file and loads every view's records into memory.
    pub fn open(path: &Path, registry: &Registry) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| FeatureError::Store(format!("cannot create {}: {e}", parent.display())))?;
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => FeatureError::Unavailable(format!(
                "{} is open in another process (a running `flotilla serve`?); stop it, or ingest through its \
                 POST /push (`flotilla features ingest --server http://HOST:PORT`), or use --online-store redis://...",
                path.display()
            )),
            e => FeatureError::Store(format!("cannot open {}: {e}", path.display())),
        })?;
        let hasher = RandomState::new();
        let memory: Vec<Vec<Shard>> =
            registry.views.iter().map(|_| (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect()).collect();
        let store = Self { db, memory, hasher, writer: Mutex::new(()) };
        store.load(registry)?;
        Ok(store)
    }

    fn load(&self, registry: &Registry) -> Result<()> {
        let txn = self.db.begin_read().map_err(FeatureError::store)?;
        for view in &registry.views {
            let name = table_name(view);
            let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&name);
            let table = match txn.open_table(def) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(FeatureError::store(e)),
            };
            let mut count = 0usize;
            for item in table.iter().map_err(FeatureError::store)? {
                let (k, v) = item.map_err(FeatureError::store)?;
                let record = Record::decode(v.value(), view)?;
                self.shard(view.index, k.value()).write().insert(k.value().to_vec(), Arc::new(record));
                count += 1;
            }
            tracing::debug!(view = %view.name, entities = count, "online store loaded");
        }
        Ok(())
    }

    fn shard(&self, view: usize, key: &[u8]) -> &Shard {
        let h = self.hasher.hash_one(key) as usize;
        &self.memory[view][h % SHARDS]
    }

    /// The record of `key` in view number `view`.
    pub fn get(&self, view: usize, key: &[u8]) -> Option<Arc<Record>> {
        self.memory.get(view)?;
        self.shard(view, key).read().get(key).cloned()
    }

    /// How many entities view number `view` holds.
    pub fn len(&self, view: usize) -> usize {
        self.memory.get(view).map(|shards| shards.iter().map(|s| s.read().len()).sum()).unwrap_or(0)
    }

    pub fn is_empty(&self, view: usize) -> bool {
        self.len(view) == 0
    }

    /// Applies rows last-write-wins and commits them (with `checkpoint`) durably before
    /// they become visible to reads.
    pub fn write(
        &self,
        view: &FeatureView,
        rows: Vec<(EntityKey, Record)>,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<WriteOutcome> {
        let _writer = self.writer.lock();
        let mut outcome = WriteOutcome::default();
        let winners = match view.max_items {
            Some(max) => self.appended(view, rows, max, &mut outcome),
            None => self.newest(view, rows, &mut outcome),
        };
        if winners.is_empty() && checkpoint.is_none() {
            return Ok(outcome);
        }
        let txn = self.db.begin_write().map_err(FeatureError::store)?;
        {
            let name = table_name(view);
            let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&name);
            let mut table = txn.open_table(def).map_err(FeatureError::store)?;
            for (key, record) in &winners {
                table.insert(key.as_slice(), record.encode(view).as_slice()).map_err(FeatureError::store)?;
            }
            if let Some(c) = checkpoint {
                save_checkpoint(&txn, c)?;
            }
        }
        txn.commit().map_err(FeatureError::store)?;
        for (key, record) in winners {
            self.shard(view.index, &key).write().insert(key, Arc::new(record));
        }
        Ok(outcome)
    }

    /// The newest row per key within a batch, judged against what is stored.
    fn newest(
        &self,
        view: &FeatureView,
        rows: Vec<(EntityKey, Record)>,
        outcome: &mut WriteOutcome,
    ) -> HashMap<EntityKey, Record> {
        let mut winners: HashMap<EntityKey, Record> = HashMap::with_capacity(rows.len());
        for (key, record) in rows {
            let beats_batch = winners.get(&key).is_none_or(|w| record.supersedes(w));
            let beats_stored = beats_batch && self.get(view.index, &key).is_none_or(|c| record.supersedes(&c));
            if beats_stored {
                if winners.insert(key, record).is_some() {
                    outcome.stale += 1;
                }
            } else {
                outcome.stale += 1;
            }
        }
        outcome.applied = winners.len();
        winners
    }

    /// An append view's records with the batch's items added (see [`crate::record::append`]).
    fn appended(
        &self,
        view: &FeatureView,
        rows: Vec<(EntityKey, Record)>,
        max: usize,
        outcome: &mut WriteOutcome,
    ) -> HashMap<EntityKey, Record> {
        let mut out = HashMap::new();
        for (key, rows) in super::by_key(rows) {
            let current = self.get(view.index, &key);
            let (record, added) = crate::record::append(view, current.as_deref(), &rows, max);
            outcome.applied += added;
            outcome.stale += rows.len() - added;
            if let Some(r) = record {
                out.insert(key, r);
            }
        }
        out
    }

    /// Applies changes in order: the last change of each entity decides its row (or its absence).
    pub fn apply(
        &self,
        view: &FeatureView,
        changes: Vec<Change>,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<WriteOutcome> {
        let _writer = self.writer.lock();
        let offered = changes.len();
        let mut last: HashMap<EntityKey, Option<Record>> = HashMap::with_capacity(changes.len());
        for (key, record) in changes {
            last.insert(key, record);
        }
        let mut outcome = WriteOutcome { stale: offered - last.len(), ..WriteOutcome::default() };
        if last.is_empty() && checkpoint.is_none() {
            return Ok(outcome);
        }
        let txn = self.db.begin_write().map_err(FeatureError::store)?;
        {
            let name = table_name(view);
            let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&name);
            let mut table = txn.open_table(def).map_err(FeatureError::store)?;
            for (key, record) in &last {
                match record {
                    Some(r) => {
                        table.insert(key.as_slice(), r.encode(view).as_slice()).map_err(FeatureError::store)?;
                        outcome.applied += 1;
                    }
                    None => {
                        if table.remove(key.as_slice()).map_err(FeatureError::store)?.is_some() {
                            outcome.deleted += 1;
                        }
                    }
                }
            }
            if let Some(c) = checkpoint {
                save_checkpoint(&txn, c)?;
            }
        }
        txn.commit().map_err(FeatureError::store)?;
        for (key, record) in last {
            let mut shard = self.shard(view.index, &key).write();
            match record {
                Some(r) => shard.insert(key, Arc::new(r)),
                None => shard.remove(&key),
            };
        }
        Ok(outcome)
    }

    /// Removes every row of `view` (and commits `checkpoint` with that).
    pub fn truncate(&self, view: &FeatureView, checkpoint: Option<&Checkpoint>) -> Result<usize> {
        let _writer = self.writer.lock();
        let removed = self.len(view.index);
        let txn = self.db.begin_write().map_err(FeatureError::store)?;
        {
            let name = table_name(view);
            let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&name);
            txn.delete_table(def).map_err(FeatureError::store)?;
            if let Some(c) = checkpoint {
                save_checkpoint(&txn, c)?;
            }
        }
        txn.commit().map_err(FeatureError::store)?;
        for shard in &self.memory[view.index] {
            shard.write().clear();
        }
        Ok(removed)
    }

    /// Removes the position stored for `source`.
    pub fn forget_checkpoint(&self, source: &str) -> Result<()> {
        let txn = self.db.begin_write().map_err(FeatureError::store)?;
        txn.open_table(CHECKPOINTS).map_err(FeatureError::store)?.remove(source).map_err(FeatureError::store)?;
        txn.commit().map_err(FeatureError::store)
    }

    /// Every stored (source, position).
    pub fn checkpoints(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let Some(table) = self.read_checkpoints()? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for item in table.iter().map_err(FeatureError::store)? {
            let (k, v) = item.map_err(FeatureError::store)?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// The last position stored for `source`.
    pub fn checkpoint(&self, source: &str) -> Result<Option<Vec<u8>>> {
        let Some(table) = self.read_checkpoints()? else { return Ok(None) };
        Ok(table.get(source).map_err(FeatureError::store)?.map(|v| v.value().to_vec()))
    }

    /// The checkpoints table for reading; `None` before any position was stored.
    fn read_checkpoints(&self) -> Result<Option<redb::ReadOnlyTable<&'static str, &'static [u8]>>> {
        let txn = self.db.begin_read().map_err(FeatureError::store)?;
        match txn.open_table(CHECKPOINTS) {
            Ok(t) => Ok(Some(t)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(FeatureError::store(e)),
        }
    }
}

/// Stores a source's position in `txn`, so it commits together with the rows it led to.
fn save_checkpoint(txn: &redb::WriteTransaction, c: &Checkpoint) -> Result<()> {
    let mut cp = txn.open_table(CHECKPOINTS).map_err(FeatureError::store)?;
    cp.insert(c.source.as_str(), c.position.as_slice()).map_err(FeatureError::store)?;
    Ok(())
}
