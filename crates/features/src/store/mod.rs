//! Online stores: the latest record per (feature view, entity).
//!
//! - [`embedded::Embedded`] (default): records in a redb file, mirrored in memory for reads.
//! - [`redis::RedisStore`]: records in Redis hashes, one pipelined round trip per read.
//! - [`redis_cluster::RedisClusterStore`]: the same on a Redis Cluster, an entity's views in one
//!   slot, one pipelined round trip per node a read involves.
//!
//! Both apply writes last-write-wins on event time (then created time), whatever the order
//! in which rows arrive.

pub mod embedded;
pub mod redis;
pub mod redis_cluster;
pub mod redis_tls;

use crate::definitions::{FeatureView, Registry};
use crate::error::{FeatureError, Result};
use crate::record::{EntityKey, Record};
use std::path::PathBuf;
use std::sync::Arc;

/// What a write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Rows that replaced the stored record (or were the first for their entity).
    pub applied: usize,
    /// Rows older than the stored record, left out.
    pub stale: usize,
    /// Entities whose row a change removed (change streams only).
    pub deleted: usize,
}

/// One change of a change stream (database CDC, Debezium): the entity's new row, or `None` when
/// the row was deleted. Changes are applied in the order given, with no time comparison: the
/// source's commit order is the truth, and commit timestamps can disagree with it by a little.
pub type Change = (EntityKey, Option<Record>);

/// A source's read position, stored with the data it led to (atomically, in the embedded store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub source: String,
    pub position: Vec<u8>,
}

/// Which online store to open, from `--online-store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// `embedded:PATH` (or a bare path): a redb file.
    Embedded(PathBuf),
    /// `redis://host:port[/db]`, or `rediss://` for TLS (see [`redis_tls`] for its options).
    Redis(String),
    /// `redis+cluster://host:port,host:port,...` (`rediss+cluster://` for TLS): seed nodes of a
    /// Redis Cluster (as `redis[s]://[user:password@]host:port[?options]` URLs).
    RedisCluster(Vec<String>),
}

impl std::str::FromStr for StoreLocation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("redis://") || s.starts_with("rediss://") {
            return Ok(Self::Redis(s.to_string()));
        }
        let cluster = s.strip_prefix("redis+cluster://").map(|r| ("redis", r));
        if let Some((scheme, rest)) = cluster.or_else(|| s.strip_prefix("rediss+cluster://").map(|r| ("rediss", r))) {
            let (rest, query) = match rest.split_once('?') {
                Some((rest, query)) => (rest, format!("?{query}")),
                None => (rest, String::new()),
            };
            let (auth, hosts) = match rest.rsplit_once('@') {
                Some((auth, hosts)) => (format!("{auth}@"), hosts),
                None => (String::new(), rest),
            };
            let seeds: Vec<String> = hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| format!("{scheme}://{auth}{}{query}", h.trim_end_matches('/')))
                .collect();
            if seeds.is_empty() || hosts.split(',').any(|h| !h.trim().contains(':')) {
                return Err(
                    "--online-store: give redis+cluster://HOST:PORT[,HOST:PORT...] (the cluster's seed nodes)".into()
                );
            }
            return Ok(Self::RedisCluster(seeds));
        }
        let path = s.strip_prefix("embedded:").unwrap_or(s);
        if path.is_empty() {
            return Err("--online-store: give embedded:PATH or redis://HOST:PORT".into());
        }
        Ok(Self::Embedded(PathBuf::from(path)))
    }
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded(p) => write!(f, "embedded:{}", p.display()),
            // Never print a password that the URL may carry.
            Self::Redis(url) => match url.split_once('@') {
                Some((scheme_user, host)) => {
                    let scheme = scheme_user.split("://").next().unwrap_or("redis");
                    write!(f, "{scheme}://***@{host}")
                }
                None => f.write_str(url),
            },
            Self::RedisCluster(seeds) => {
                let hosts: Vec<&str> = seeds
                    .iter()
                    .map(|u| u.split_once("://").map_or(u.as_str(), |(_, rest)| rest))
                    .map(|h| h.split_once('?').map_or(h, |(host, _)| host))
                    .map(|h| h.rsplit_once('@').map_or(h, |(_, host)| host))
                    .collect();
                let auth = if seeds.iter().any(|u| u.contains('@')) { "***@" } else { "" };
                let scheme = if seeds.iter().any(|u| u.starts_with("rediss://")) { "rediss" } else { "redis" };
                write!(f, "{scheme}+cluster://{auth}{}", hosts.join(","))
            }
        }
    }
}

/// The online store the server, the ingesters and the serving API share.
#[derive(Clone)]
pub enum OnlineStore {
    Embedded(Arc<embedded::Embedded>),
    Redis(Arc<redis::RedisStore>),
    RedisCluster(Arc<redis_cluster::RedisClusterStore>),
}

// === impl OnlineStore ===

impl OnlineStore {
    pub async fn open(location: &StoreLocation, registry: &Registry) -> Result<Self> {
        Ok(match location {
            StoreLocation::Embedded(path) => {
                let (path, registry) = (path.clone(), registry.clone());
                let store = tokio::task::spawn_blocking(move || embedded::Embedded::open(&path, &registry))
                    .await
                    .map_err(FeatureError::store)??;
                Self::Embedded(Arc::new(store))
            }
            StoreLocation::Redis(url) => {
                Self::Redis(Arc::new(redis::RedisStore::connect(url, redis::RedisOptions::default()).await?))
            }
            StoreLocation::RedisCluster(seeds) => Self::RedisCluster(Arc::new(
                redis_cluster::RedisClusterStore::connect(seeds, redis::RedisOptions::default()).await?,
            )),
        })
    }

    /// Writes rows of one view (last write wins on event time); `checkpoint` is stored with them.
    /// Returns once the rows are durable.
    pub async fn write(
        &self,
        view: &FeatureView,
        rows: Vec<(EntityKey, Record)>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<WriteOutcome> {
        match self {
            Self::Embedded(s) => {
                let view = view.clone();
                blocking(s, move |s| s.write(&view, rows, checkpoint.as_ref())).await
            }
            Self::Redis(_) | Self::RedisCluster(_) if view.max_items.is_some() => {
                let max = view.max_items.unwrap_or(1);
                let outcome = append_swapping(self, view, rows, max).await?;
                match self {
                    Self::Redis(s) => s.write(view, Vec::new(), checkpoint).await?,
                    Self::RedisCluster(s) => s.write(view, Vec::new(), checkpoint).await?,
                    Self::Embedded(_) => WriteOutcome::default(),
                };
                Ok(outcome)
            }
            Self::Redis(s) => s.write(view, rows, checkpoint).await,
            Self::RedisCluster(s) => s.write(view, rows, checkpoint).await,
        }
    }

    /// Applies changes in order (upserts and deletes), atomically with `checkpoint`, and returns
    /// once they are durable.
    pub async fn apply(
        &self,
        view: &FeatureView,
        changes: Vec<Change>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<WriteOutcome> {
        if view.max_items.is_some() {
            // An append view takes a change stream's rows as items; deleting a source row keeps them.
            let rows: Vec<(EntityKey, Record)> = changes.into_iter().filter_map(|(k, r)| Some((k, r?))).collect();
            return Box::pin(self.write(view, rows, checkpoint)).await;
        }
        match self {
            Self::Embedded(s) => {
                let view = view.clone();
                blocking(s, move |s| s.apply(&view, changes, checkpoint.as_ref())).await
            }
            Self::Redis(s) => s.apply(view, changes, checkpoint).await,
            Self::RedisCluster(s) => s.apply(view, changes, checkpoint).await,
        }
    }

    /// Reads the records of `(view index, key)` pairs, in one round trip for Redis.
    pub async fn read(&self, registry: &Registry, wants: &[(usize, EntityKey)]) -> Result<Vec<Option<Arc<Record>>>> {
        match self {
            Self::Embedded(s) => Ok(wants.iter().map(|(view, key)| s.get(*view, key)).collect()),
            Self::Redis(s) => s.read(registry, wants).await,
            Self::RedisCluster(s) => s.read(registry, wants).await,
        }
    }

    /// The last stored position of a stream source, if any.
    pub async fn checkpoint(&self, source: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Self::Embedded(s) => s.checkpoint(source),
            Self::Redis(s) => s.checkpoint(source).await,
            Self::RedisCluster(s) => s.checkpoint(source).await,
        }
    }

    /// Removes every row of `view`, with `checkpoint`; returns how many there were.
    pub async fn truncate(&self, view: &FeatureView, checkpoint: Option<Checkpoint>) -> Result<usize> {
        match self {
            Self::Embedded(s) => {
                let view = view.clone();
                blocking(s, move |s| s.truncate(&view, checkpoint.as_ref())).await
            }
            Self::Redis(s) => s.truncate(view, checkpoint).await,
            Self::RedisCluster(s) => s.truncate(view, checkpoint).await,
        }
    }

    /// Every stored position whose source starts with `prefix`.
    pub async fn checkpoints(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let all = match self {
            Self::Embedded(s) => s.checkpoints()?,
            Self::Redis(s) => s.checkpoints().await?,
            Self::RedisCluster(s) => s.checkpoints().await?,
        };
        Ok(all.into_iter().filter(|(source, _)| source.starts_with(prefix)).collect())
    }

    /// Removes the stored position of `source` (its stream was dropped).
    pub async fn forget_checkpoint(&self, source: &str) -> Result<()> {
        match self {
            Self::Embedded(s) => {
                let source = source.to_string();
                blocking(s, move |s| s.forget_checkpoint(&source)).await
            }
            Self::Redis(s) => s.forget_checkpoint(source).await,
            Self::RedisCluster(s) => s.forget_checkpoint(source).await,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Embedded(_) => "embedded",
            Self::Redis(_) => "redis",
            Self::RedisCluster(_) => "redis-cluster",
        }
    }
}

/// Rows grouped by entity, in the order each entity first appears, each group in the order given.
pub(crate) fn by_key(rows: Vec<(EntityKey, Record)>) -> Vec<(EntityKey, Vec<Record>)> {
    let mut at: std::collections::HashMap<EntityKey, usize> = std::collections::HashMap::with_capacity(rows.len());
    let mut out: Vec<(EntityKey, Vec<Record>)> = Vec::new();
    for (key, record) in rows {
        match at.get(&key) {
            Some(i) => out[*i].1.push(record),
            None => {
                at.insert(key.clone(), out.len());
                out.push((key, vec![record]));
            }
        }
    }
    out
}

/// Appends rows to an append view in Redis: read the stored records, add the items, and write
/// each back only if it is still what was read (compare and set on the server); entities that
/// another writer changed in between are read and merged again.
async fn append_swapping(
    store: &OnlineStore,
    view: &FeatureView,
    rows: Vec<(EntityKey, Record)>,
    max: usize,
) -> Result<WriteOutcome> {
    let groups = by_key(rows);
    let mut outcome = WriteOutcome::default();
    let mut todo: Vec<usize> = (0..groups.len()).collect();
    for _ in 0..APPEND_ATTEMPTS {
        if todo.is_empty() {
            return Ok(outcome);
        }
        let keys: Vec<EntityKey> = todo.iter().map(|i| groups[*i].0.clone()).collect();
        let stored = match store {
            OnlineStore::Redis(s) => s.raw(view, &keys).await?,
            OnlineStore::RedisCluster(s) => s.raw(view, &keys).await?,
            OnlineStore::Embedded(_) => {
                return Err(FeatureError::Store("compare-and-set append on the embedded store".into()))
            }
        };
        let mut swaps = Vec::new();
        for (i, bytes) in todo.iter().zip(stored) {
            let (key, rows) = &groups[*i];
            let current = bytes.as_deref().map(|b| Record::decode(b, view)).transpose()?;
            match crate::record::append(view, current.as_ref(), rows, max) {
                (Some(record), added) => swaps.push((*i, key.clone(), bytes, record, added)),
                (None, _) => outcome.stale += rows.len(),
            }
        }
        let writes: Vec<(EntityKey, Option<Vec<u8>>, &Record)> =
            swaps.iter().map(|(_, k, old, r, _)| (k.clone(), old.clone(), r)).collect();
        let done = match store {
            OnlineStore::Redis(s) => s.swap(view, &writes).await?,
            OnlineStore::RedisCluster(s) => s.swap(view, &writes).await?,
            OnlineStore::Embedded(_) => Vec::new(),
        };
        todo.clear();
        for ((i, _, _, _, added), ok) in swaps.iter().zip(done) {
            if ok {
                outcome.applied += added;
                outcome.stale += groups[*i].1.len() - added;
            } else {
                todo.push(*i);
            }
        }
    }
    if todo.is_empty() {
        return Ok(outcome);
    }
    Err(FeatureError::Unavailable(format!(
        "feature view '{}': {} entities changed under {APPEND_ATTEMPTS} attempts to append to them",
        view.name,
        todo.len()
    )))
}

const APPEND_ATTEMPTS: usize = 32;

/// Runs a write of the embedded store on the blocking pool (it waits for an fsync).
async fn blocking<T: Send + 'static>(
    s: &Arc<embedded::Embedded>,
    f: impl FnOnce(&embedded::Embedded) -> Result<T> + Send + 'static,
) -> Result<T> {
    let s = s.clone();
    tokio::task::spawn_blocking(move || f(&s)).await.map_err(FeatureError::store)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_hide_passwords() {
        assert_eq!("embedded:/tmp/x.redb".parse(), Ok(StoreLocation::Embedded("/tmp/x.redb".into())));
        assert_eq!("data/x.redb".parse(), Ok(StoreLocation::Embedded("data/x.redb".into())));
        let r: StoreLocation = "redis://:secret@127.0.0.1:6379/2".parse().unwrap();
        assert_eq!(r.to_string(), "redis://***@127.0.0.1:6379/2");
        assert!("embedded:".parse::<StoreLocation>().is_err());
        let c: StoreLocation = "redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7000".parse().unwrap();
        assert_eq!(
            c,
            StoreLocation::RedisCluster(vec!["redis://:pw@10.0.0.1:7000".into(), "redis://:pw@10.0.0.2:7000".into()])
        );
        assert_eq!(c.to_string(), "redis+cluster://***@10.0.0.1:7000,10.0.0.2:7000");
        assert!("redis+cluster://".parse::<StoreLocation>().is_err());
        assert!("redis+cluster://hostwithoutport".parse::<StoreLocation>().is_err());
    }
}
