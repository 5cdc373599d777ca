//! The online store on a Redis Cluster, for users who outgrow one Redis node.
//!
//! Keys: `{prefix}{<entity key, hex>}<view>`. The hash tag is the entity, so every view of one
//! entity lives in one slot: enriching a request for one card reads one node. A request's reads
//! are grouped by the node that serves their slots and sent as one pipeline per node, all nodes
//! at once: one round trip per node involved. Writes are grouped the same way, with a `WAIT` for
//! one replica on nodes that have one, so an acknowledged write survives its master failing
//! over.
//!
//! The slot map comes from `CLUSTER SLOTS` and is read again when a node answers `MOVED`,
//! `ASK`, `TRYAGAIN` or `CLUSTERDOWN`, or cannot be reached (a failover); the group is then sent
//! again until the operation's deadline. (The cluster client of the `redis` crate routes single
//! commands and single-slot pipelines by itself; it refuses a pipeline across slots, which is
//! what a read of many entities is — hence the grouping here.)
//!
//! Positions: a change stream's changes span slots, so they cannot share a MULTI/EXEC with the
//! position as on one node. They are written first, the position after them. A crash between
//! the two replays changes already written; each change sets the whole row (or deletes it), so
//! the replay ends in the same state, and the count of changes applied, kept in the position,
//! moves only with it.

use super::redis::{RedisOptions, SWAP_SCRIPT, WRITE_SCRIPT};
use super::{Change, Checkpoint, WriteOutcome};
use crate::definitions::{FeatureView, Registry};
use crate::error::{FeatureError, Result};
use crate::record::{EntityKey, Record};
use parking_lot::RwLock;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Pipeline, RedisError, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Redis Cluster's slot count.
const SLOTS: u16 = 16384;
/// How long a write waits for one replica to have it.
const WAIT_REPLICA_MS: u64 = 200;
/// Writes keep retrying through a failover this long.
const WRITE_DEADLINE: Duration = Duration::from_secs(15);

/// The slot of a key (CRC16/XMODEM of the key, or of its `{hash tag}`), as the cluster computes it.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| key[open + 1..].iter().position(|b| *b == b'}').map(|close| &key[open + 1..open + 1 + close]))
        .filter(|tag| !tag.is_empty());
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % SLOTS
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Node {
    host: String,
    port: u16,
}

/// Which master serves each slot, and whether it has replicas.
#[derive(Default)]
struct SlotMap {
    /// (first slot, last slot, index into `masters`), sorted.
    ranges: Vec<(u16, u16, usize)>,
    masters: Vec<(Node, usize)>,
}

impl SlotMap {
    fn master_of(&self, slot: u16) -> Option<usize> {
        let i = self.ranges.partition_point(|(_, last, _)| *last < slot);
        self.ranges.get(i).filter(|(first, _, _)| *first <= slot).map(|(_, _, m)| *m)
    }

    /// Parses `CLUSTER SLOTS`: [[first, last, [host, port, id], [replica]...], ...].
    fn parse(v: &Value) -> Option<SlotMap> {
        let Value::Array(entries) = v else { return None };
        let mut map = SlotMap::default();
        for e in entries {
            let Value::Array(parts) = e else { return None };
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return None;
            };
            let host = match master.first()? {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                Value::SimpleString(s) => s.clone(),
                _ => return None,
            };
            let Value::Int(port) = master.get(1)? else { return None };
            let node = Node { host, port: u16::try_from(*port).ok()? };
            let replicas = parts.len().saturating_sub(3);
            let index = match map.masters.iter().position(|(n, _)| *n == node) {
                Some(i) => i,
                None => {
                    map.masters.push((node, replicas));
                    map.masters.len() - 1
                }
            };
            map.ranges.push((u16::try_from(*first).ok()?, u16::try_from(*last).ok()?, index));
        }
        map.ranges.sort();
        Some(map)
    }
}

pub struct RedisClusterStore {
    connection: ClusterConnection,
    map: RwLock<Arc<SlotMap>>,
    options: RedisOptions,
}

fn unavailable(e: impl std::fmt::Display) -> FeatureError {
    FeatureError::Unavailable(format!("redis cluster: {e}"))
}

/// Whether an error is the cluster moving (failover, resharding): read the slot map again.
fn moving(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(e.code(), Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "LOADING"))
}

// === impl RedisClusterStore ===

impl RedisClusterStore {
    /// Connects to the cluster through any of `seeds` (`host:port` or `redis://host:port`).
    pub async fn connect(seeds: &[String], options: RedisOptions) -> Result<Self> {
        let mut urls = Vec::with_capacity(seeds.len());
        for seed in seeds {
            let seed = if seed.contains("://") { seed.clone() } else { format!("redis://{seed}") };
            urls.push(super::redis_tls::RedisUrl::parse(&seed)?);
        }
        let certs = urls.iter().find_map(|u| u.certs.clone());
        let mut builder = redis::cluster::ClusterClient::builder(urls.into_iter().map(|u| u.url));
        if let Some(certs) = certs {
            builder = builder.certs(certs);
        }
        let client = builder
            .connection_timeout(options.timeout)
            .response_timeout(options.timeout)
            .retries(3)
            .build()
            .map_err(|e| FeatureError::invalid(format!("--online-store: {e}")))?;
        let connection = client.get_async_connection().await.map_err(unavailable)?;
        let store = Self { connection, map: RwLock::new(Arc::new(SlotMap::default())), options };
        store.refresh().await?;
        Ok(store)
    }

    /// Reads the slot map again.
    async fn refresh(&self) -> Result<()> {
        let mut c = self.connection.clone();
        let cmd = redis::cmd("CLUSTER").arg("SLOTS").clone();
        let v =
            c.route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random)).await.map_err(unavailable)?;
        let map = SlotMap::parse(&v).ok_or_else(|| unavailable("CLUSTER SLOTS answered something unreadable"))?;
        if map.ranges.is_empty() {
            return Err(unavailable("the cluster serves no slots yet"));
        }
        *self.map.write() = Arc::new(map);
        Ok(())
    }

    fn checkpoints_key(&self) -> String {
        format!("{}checkpoints", self.options.prefix)
    }

    /// `{prefix}{<hex entity key>}<view>`: one slot per entity, whatever the view.
    pub fn key(&self, view: &FeatureView, key: &[u8]) -> Vec<u8> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut k = Vec::with_capacity(self.options.prefix.len() + 2 + 2 * key.len() + view.name.len());
        k.extend_from_slice(self.options.prefix.as_bytes());
        k.push(b'{');
        for b in key {
            k.push(HEX[usize::from(b >> 4)]);
            k.push(HEX[usize::from(b & 15)]);
        }
        k.push(b'}');
        k.extend_from_slice(view.name.as_bytes());
        k
    }

    /// Runs one command per key, grouped into one pipeline per master (all masters at once),
    /// each command built by `command(i, pipe)`; with `wait`, each pipeline ends with a WAIT
    /// for a replica where the master has one. Groups that meet a moving cluster are sent again
    /// (after reading the slot map) until `deadline`. Answers come back in the keys' order.
    async fn grouped(
        &self,
        keys: &[Vec<u8>],
        wait: bool,
        deadline: Duration,
        command: impl Fn(usize, &mut Pipeline),
    ) -> Result<Vec<Value>> {
        let start = Instant::now();
        let mut answers: Vec<Option<Value>> = vec![None; keys.len()];
        let slots: Vec<u16> = keys.iter().map(|k| slot(k)).collect();
        let mut todo: Vec<usize> = (0..keys.len()).collect();
        let mut backoff = Duration::from_millis(50);
        loop {
            let map = self.map.read().clone();
            let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for &i in &todo {
                groups.entry(map.master_of(slots[i]).unwrap_or(usize::MAX)).or_default().push(i);
            }
            let sends = groups.into_iter().map(|(master, members)| {
                let mut pipe = redis::pipe();
                for &i in &members {
                    command(i, &mut pipe);
                }
                let waits = wait && map.masters.get(master).is_some_and(|(_, replicas)| *replicas > 0);
                if waits {
                    pipe.cmd("WAIT").arg(1).arg(WAIT_REPLICA_MS);
                }
                let count = pipe.len();
                let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slots[members[0]], SlotAddr::Master));
                let mut c = self.connection.clone();
                async move {
                    let answer =
                        tokio::time::timeout(self.options.timeout, c.route_pipeline(pipe, 0, count, route)).await;
                    (members, answer)
                }
            });
            let mut failed = Vec::new();
            let mut last_error = None;
            for (members, answer) in futures::future::join_all(sends).await {
                let values = match answer {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) if moving(&e) => {
                        last_error = Some(e.to_string());
                        failed.extend(members);
                        continue;
                    }
                    Ok(Err(e)) => return Err(unavailable(e)),
                    Err(_) => {
                        last_error = Some(format!("no answer within {:?}", self.options.timeout));
                        failed.extend(members);
                        continue;
                    }
                };
                for (i, v) in members.into_iter().zip(values) {
                    match v {
                        Value::ServerError(e) => {
                            let e = RedisError::from(e);
                            if !moving(&e) {
                                return Err(unavailable(e));
                            }
                            last_error = Some(e.to_string());
                            failed.push(i);
                        }
                        v => answers[i] = Some(v),
                    }
                }
            }
            if failed.is_empty() {
                return Ok(answers.into_iter().map(Option::unwrap_or_default).collect());
            }
            if start.elapsed() + backoff > deadline {
                return Err(unavailable(format!(
                    "{} of {} keys not reached within {deadline:?}: {}",
                    failed.len(),
                    keys.len(),
                    last_error.unwrap_or_default()
                )));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
            if let Err(e) = self.refresh().await {
                tracing::debug!(error = %e, "slot map not read");
            }
            todo = failed;
        }
    }

    /// A single-key command, routed by the cluster client.
    async fn single<T: redis::FromRedisValue>(&self, cmd: redis::Cmd, deadline: Duration) -> Result<T> {
        let start = Instant::now();
        loop {
            let mut c = self.connection.clone();
            let answer = tokio::time::timeout(self.options.timeout, cmd.query_async::<T>(&mut c)).await;
            let e = match answer {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if moving(&e) => e.to_string(),
                Ok(Err(e)) => return Err(unavailable(e)),
                Err(_) => format!("no answer within {:?}", self.options.timeout),
            };
            if start.elapsed() > deadline {
                return Err(unavailable(e));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn store_checkpoint(&self, checkpoint: Option<&Checkpoint>) -> Result<()> {
        let Some(c) = checkpoint else { return Ok(()) };
        let cmd = redis::cmd("HSET").arg(self.checkpoints_key()).arg(&c.source).arg(&c.position).clone();
        let _: i64 = self.single(cmd, WRITE_DEADLINE).await?;
        Ok(())
    }

    pub async fn write(
        &self,
        view: &FeatureView,
        rows: Vec<(EntityKey, Record)>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<WriteOutcome> {
        let mut outcome = WriteOutcome::default();
        if !rows.is_empty() {
            let keys: Vec<Vec<u8>> = rows.iter().map(|(k, _)| self.key(view, k)).collect();
            let values: Vec<Vec<u8>> = rows.iter().map(|(_, r)| r.encode(view)).collect();
            let answers = self
                .grouped(&keys, true, WRITE_DEADLINE, |i, pipe| {
                    let r = &rows[i].1;
                    pipe.cmd("EVAL").arg(WRITE_SCRIPT).arg(1).arg(&keys[i]).arg(r.event_ts).arg(r.created_ts);
                    pipe.arg(&values[i]);
                })
                .await?;
            outcome.applied = answers.iter().filter(|a| matches!(a, Value::Int(1))).count();
            outcome.stale = rows.len() - outcome.applied;
        }
        self.store_checkpoint(checkpoint.as_ref()).await?;
        Ok(outcome)
    }

    /// Applies changes in order (per entity, the order given), then stores `checkpoint`.
    pub async fn apply(
        &self,
        view: &FeatureView,
        changes: Vec<Change>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<WriteOutcome> {
        let mut outcome = WriteOutcome::default();
        if !changes.is_empty() {
            let keys: Vec<Vec<u8>> = changes.iter().map(|(k, _)| self.key(view, k)).collect();
            let values: Vec<Option<Vec<u8>>> =
                changes.iter().map(|(_, r)| r.as_ref().map(|r| r.encode(view))).collect();
            // A change is one command (a small script: replace the whole hash, or delete it), so
            // that a group sent again replays whole changes in order.
            let answers = self
                .grouped(&keys, true, WRITE_DEADLINE, |i, pipe| match (&changes[i].1, &values[i]) {
                    (Some(r), Some(v)) => {
                        pipe.cmd("EVAL")
                            .arg(REPLACE_SCRIPT)
                            .arg(1)
                            .arg(&keys[i])
                            .arg(r.event_ts)
                            .arg(r.created_ts)
                            .arg(v);
                    }
                    _ => {
                        pipe.cmd("DEL").arg(&keys[i]);
                    }
                })
                .await?;
            for ((_, r), a) in changes.iter().zip(&answers) {
                match r {
                    Some(_) => outcome.applied += 1,
                    None if matches!(a, Value::Int(n) if *n > 0) => outcome.deleted += 1,
                    None => {}
                }
            }
        }
        self.store_checkpoint(checkpoint.as_ref()).await?;
        Ok(outcome)
    }

    /// Removes every row of `view` (SCAN on every master, then DEL), then stores `checkpoint`.
    pub async fn truncate(&self, view: &FeatureView, checkpoint: Option<Checkpoint>) -> Result<usize> {
        let mut pattern = self.options.prefix.as_bytes().to_vec();
        pattern.extend_from_slice(b"{*}");
        pattern.extend_from_slice(view.name.as_bytes());
        let suffix = [b"}".as_slice(), view.name.as_bytes()].concat();
        let map = self.map.read().clone();
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for (node, _) in &map.masters {
            let mut cursor: u64 = 0;
            loop {
                let cmd = redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).clone();
                let route = SingleNodeRoutingInfo::ByAddress { host: node.host.clone(), port: node.port };
                let mut c = self.connection.clone();
                let v = c.route_command(cmd, RoutingInfo::SingleNode(route)).await.map_err(unavailable)?;
                let (next, found): (u64, Vec<Vec<u8>>) = redis::from_redis_value(v).map_err(unavailable)?;
                // `*` may span a `}`: keep the keys of exactly this view
                keys.extend(
                    found.into_iter().filter(|k| k.ends_with(&suffix) && k.iter().filter(|b| **b == b'}').count() == 1),
                );
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        let answers = self
            .grouped(&keys, true, WRITE_DEADLINE, |i, pipe| {
                pipe.cmd("DEL").arg(&keys[i]);
            })
            .await?;
        self.store_checkpoint(checkpoint.as_ref()).await?;
        Ok(answers.iter().filter(|a| matches!(a, Value::Int(n) if *n > 0)).count())
    }

    pub async fn checkpoints(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.single(redis::cmd("HGETALL").arg(self.checkpoints_key()).clone(), self.options.timeout).await
    }

    pub async fn forget_checkpoint(&self, source: &str) -> Result<()> {
        let _: i64 =
            self.single(redis::cmd("HDEL").arg(self.checkpoints_key()).arg(source).clone(), WRITE_DEADLINE).await?;
        Ok(())
    }

    /// Reads `(view, key)` pairs: one pipeline per master involved, all at once.
    pub async fn read(&self, registry: &Registry, wants: &[(usize, EntityKey)]) -> Result<Vec<Option<Arc<Record>>>> {
        if wants.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<Vec<u8>> = wants.iter().map(|(view, key)| self.key(&registry.views[*view], key)).collect();
        let answers = self
            .grouped(&keys, false, self.options.timeout, |i, pipe| {
                pipe.cmd("HGET").arg(&keys[i]).arg("v");
            })
            .await?;
        let mut out = Vec::with_capacity(wants.len());
        for ((view, _), v) in wants.iter().zip(answers) {
            out.push(match v {
                Value::BulkString(b) => Some(Arc::new(Record::decode(&b, &registry.views[*view])?)),
                _ => None,
            });
        }
        Ok(out)
    }

    /// The stored bytes of each key of `view`.
    pub async fn raw(&self, view: &FeatureView, keys: &[EntityKey]) -> Result<Vec<Option<Vec<u8>>>> {
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| self.key(view, k)).collect();
        let answers = self
            .grouped(&keys, false, self.options.timeout, |i, pipe| {
                pipe.cmd("HGET").arg(&keys[i]).arg("v");
            })
            .await?;
        Ok(answers
            .into_iter()
            .map(|v| match v {
                Value::BulkString(b) => Some(b),
                _ => None,
            })
            .collect())
    }

    /// Writes each record whose key still holds the bytes given (compare and set); says which did.
    pub async fn swap(
        &self,
        view: &FeatureView,
        writes: &[(EntityKey, Option<Vec<u8>>, &Record)],
    ) -> Result<Vec<bool>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<Vec<u8>> = writes.iter().map(|(k, _, _)| self.key(view, k)).collect();
        let values: Vec<Vec<u8>> = writes.iter().map(|(_, _, r)| r.encode(view)).collect();
        let answers = self
            .grouped(&keys, true, WRITE_DEADLINE, |i, pipe| {
                let (_, old, r) = &writes[i];
                pipe.cmd("EVAL").arg(SWAP_SCRIPT).arg(1).arg(&keys[i]).arg(old.as_deref().unwrap_or_default());
                pipe.arg(r.event_ts).arg(r.created_ts).arg(&values[i]);
            })
            .await?;
        Ok(answers.iter().map(|a| matches!(a, Value::Int(1))).collect())
    }

    pub async fn checkpoint(&self, source: &str) -> Result<Option<Vec<u8>>> {
        self.single(redis::cmd("HGET").arg(self.checkpoints_key()).arg(source).clone(), self.options.timeout).await
    }
}

/// A change stream's upsert: the whole row replaces what was there (source order is the truth).
const REPLACE_SCRIPT: &str = r#"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 't', ARGV[1], 'c', ARGV[2], 'v', ARGV[3])
return 1
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_the_cluster_spec() {
        // The examples of the Redis Cluster specification.
        assert_eq!(slot(b"123456789"), 0x31C3);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        // an empty tag hashes the whole key
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{}{bar}"), crc16::State::<crc16::XMODEM>::calculate(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
    }

    #[test]
    fn slot_map_parses_and_finds_masters() {
        let node = |p: i64| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let v = Value::Array(vec![
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node(7001), node(7004)]),
            Value::Array(vec![Value::Int(0), Value::Int(5460), node(7000), node(7003)]),
            Value::Array(vec![Value::Int(10923), Value::Int(16383), node(7002)]),
        ]);
        let map = SlotMap::parse(&v).unwrap();
        let port = |s| map.masters[map.master_of(s).unwrap()].0.port;
        assert_eq!((port(0), port(5460), port(5461), port(16383)), (7000, 7000, 7001, 7002));
        assert_eq!(map.masters[map.master_of(0).unwrap()].1, 1);
        assert_eq!(map.masters[map.master_of(16383).unwrap()].1, 0);
        assert!(SlotMap::parse(&Value::Int(1)).is_none());
    }
}
