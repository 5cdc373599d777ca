//! The Redis online store. Each (view, entity) is a hash `{prefix}{view}:{key}` with fields
//! `t` (event time, µs), `c` (created time, µs) and `v` (the encoded record). Writes go through
//! a Lua script that compares times on the server, so concurrent writers and late rows keep
//! last-write-wins; reads of any number of (view, entity) pairs are one pipelined round trip.
//! A few multiplexed connections are used in turn; each reconnects by itself after a failure.

use super::{Change, Checkpoint, WriteOutcome};
use crate::definitions::{FeatureView, Registry};
use crate::error::{FeatureError, Result};
use crate::record::{EntityKey, Record};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Last write wins on (event time, created time), compared on the server.
pub(super) const WRITE_SCRIPT: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 't', 'c')
if cur[1] then
  local t, c = tonumber(cur[1]), tonumber(cur[2] or '0')
  local nt, nc = tonumber(ARGV[1]), tonumber(ARGV[2])
  if nt < t or (nt == t and nc < c) then return 0 end
end
redis.call('HSET', KEYS[1], 't', ARGV[1], 'c', ARGV[2], 'v', ARGV[3])
return 1
"#;

/// Compare and set: writes the record only if the stored one is still the bytes read before
/// (an empty string for none). Appends to append views go through it.
pub(super) const SWAP_SCRIPT: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'v')
if (cur or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 't', ARGV[2], 'c', ARGV[3], 'v', ARGV[4])
return 1
"#;

#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Prefix of every key Flotilla writes.
    pub prefix: String,
    /// Connections used in turn (each multiplexes many requests).
    pub connections: usize,
    /// Longest wait for one round trip before the read or write fails as unavailable.
    pub timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self { prefix: "flotilla:".into(), connections: 4, timeout: Duration::from_secs(1) }
    }
}

pub struct RedisStore {
    connections: Vec<ConnectionManager>,
    next: AtomicUsize,
    script_sha: String,
    options: RedisOptions,
}

fn unavailable(e: impl std::fmt::Display) -> FeatureError {
    FeatureError::Unavailable(format!("redis: {e}"))
}

// === impl RedisStore ===

impl RedisStore {
    pub async fn connect(url: &str, options: RedisOptions) -> Result<Self> {
        let client = super::redis_tls::RedisUrl::parse(url)?.client()?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.timeout))
            .set_response_timeout(Some(options.timeout))
            .set_number_of_retries(2);
        let mut connections = Vec::with_capacity(options.connections.max(1));
        for _ in 0..options.connections.max(1) {
            let c = ConnectionManager::new_with_config(client.clone(), config.clone()).await.map_err(unavailable)?;
            connections.push(c);
        }
        let mut store = Self { connections, next: AtomicUsize::new(0), script_sha: String::new(), options };
        store.script_sha = store.load_script().await?;
        Ok(store)
    }

    fn connection(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        self.connections[i].clone()
    }

    async fn load_script(&self) -> Result<String> {
        let mut c = self.connection();
        redis::cmd("SCRIPT").arg("LOAD").arg(WRITE_SCRIPT).query_async(&mut c).await.map_err(unavailable)
    }

    /// The hash of source → stored position.
    fn checkpoints_key(&self) -> String {
        format!("{}checkpoints", self.options.prefix)
    }

    fn key(&self, view: &FeatureView, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.options.prefix.len() + view.name.len() + 1 + key.len());
        k.extend_from_slice(self.options.prefix.as_bytes());
        k.extend_from_slice(view.name.as_bytes());
        k.push(b':');
        k.extend_from_slice(key);
        k
    }

    async fn query<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, redis::RedisError> {
        let mut c = self.connection();
        match tokio::time::timeout(self.options.timeout, pipe.query_async(&mut c)).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {:?}", self.options.timeout),
            ))),
        }
    }

    pub async fn write(
        &self,
        view: &FeatureView,
        rows: Vec<(EntityKey, Record)>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<WriteOutcome> {
        let mut outcome = WriteOutcome::default();
        if !rows.is_empty() {
            let build = |sha: &str| {
                let mut pipe = redis::pipe();
                for (key, record) in &rows {
                    pipe.cmd("EVALSHA")
                        .arg(sha)
                        .arg(1)
                        .arg(self.key(view, key))
                        .arg(record.event_ts)
                        .arg(record.created_ts)
                        .arg(record.encode(view));
                }
                pipe
            };
            let answers: Vec<i64> = match self.query(&build(&self.script_sha)).await {
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    // The server restarted or flushed its scripts: load it again, once.
                    let sha = self.load_script().await?;
                    self.query(&build(&sha)).await.map_err(unavailable)?
                }
                other => other.map_err(unavailable)?,
            };
            outcome.applied = answers.iter().filter(|a| **a == 1).count();
            outcome.stale = answers.len() - outcome.applied;
        }
        if let Some(c) = checkpoint {
            let mut pipe = redis::pipe();
            pipe.cmd("HSET").arg(self.checkpoints_key()).arg(c.source).arg(c.position);
            let () = self.query(&pipe).await.map_err(unavailable)?;
        }
        Ok(outcome)
    }

    /// Applies changes in order in one MULTI/EXEC transaction, with the checkpoint.
    pub async fn apply(
        &self,
        view: &FeatureView,
        changes: Vec<Change>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<WriteOutcome> {
        let mut outcome = WriteOutcome::default();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (key, record) in &changes {
            let k = self.key(view, key);
            match record {
                Some(r) => {
                    pipe.cmd("DEL").arg(&k).ignore();
                    pipe.cmd("HSET").arg(&k).arg("t").arg(r.event_ts).arg("c").arg(r.created_ts).arg("v");
                    pipe.arg(r.encode(view)).ignore();
                    outcome.applied += 1;
                }
                None => {
                    pipe.cmd("DEL").arg(&k);
                }
            }
        }
        if let Some(c) = &checkpoint {
            pipe.cmd("HSET").arg(self.checkpoints_key()).arg(&c.source).arg(&c.position).ignore();
        }
        if changes.is_empty() && checkpoint.is_none() {
            return Ok(outcome);
        }
        let removed: Vec<i64> = self.query(&pipe).await.map_err(unavailable)?;
        outcome.deleted = removed.iter().filter(|n| **n > 0).count();
        Ok(outcome)
    }

    /// Removes every row of `view` (SCAN and DEL in batches: not atomic with other writers,
    /// which a change stream's single consumer does not have), then stores `checkpoint`.
    pub async fn truncate(&self, view: &FeatureView, checkpoint: Option<Checkpoint>) -> Result<usize> {
        let mut pattern = self.key(view, b"");
        pattern.push(b'*');
        let mut cursor: u64 = 0;
        let mut removed = 0usize;
        loop {
            let mut pipe = redis::pipe();
            pipe.cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
            let ((next, keys),): ((u64, Vec<Vec<u8>>),) = self.query(&pipe).await.map_err(unavailable)?;
            if !keys.is_empty() {
                let mut del = redis::pipe();
                del.cmd("DEL").arg(&keys);
                let (n,): (usize,) = self.query(&del).await.map_err(unavailable)?;
                removed += n;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        self.apply(view, Vec::new(), checkpoint).await?;
        Ok(removed)
    }

    pub async fn checkpoints(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL").arg(self.checkpoints_key());
        let (all,): (Vec<(String, Vec<u8>)>,) = self.query(&pipe).await.map_err(unavailable)?;
        Ok(all)
    }

    pub async fn forget_checkpoint(&self, source: &str) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.cmd("HDEL").arg(self.checkpoints_key()).arg(source).ignore();
        self.query::<()>(&pipe).await.map_err(unavailable)
    }

    pub async fn read(&self, registry: &Registry, wants: &[(usize, EntityKey)]) -> Result<Vec<Option<Arc<Record>>>> {
        if wants.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (view, key) in wants {
            pipe.cmd("HGET").arg(self.key(&registry.views[*view], key)).arg("v");
        }
        let answers: Vec<Option<Vec<u8>>> = self.query(&pipe).await.map_err(unavailable)?;
        let mut out = Vec::with_capacity(wants.len());
        for ((view, _), bytes) in wants.iter().zip(answers) {
            out.push(match bytes {
                None => None,
                Some(b) => Some(Arc::new(Record::decode(&b, &registry.views[*view])?)),
            });
        }
        Ok(out)
    }

    /// The stored bytes of each key of `view`.
    pub async fn raw(&self, view: &FeatureView, keys: &[EntityKey]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("HGET").arg(self.key(view, key)).arg("v");
        }
        self.query(&pipe).await.map_err(unavailable)
    }

    /// Writes each record whose key still holds the bytes given (see [`SWAP_SCRIPT`]); says which did.
    pub async fn swap(
        &self,
        view: &FeatureView,
        writes: &[(EntityKey, Option<Vec<u8>>, &Record)],
    ) -> Result<Vec<bool>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (key, old, record) in writes {
            pipe.cmd("EVAL").arg(SWAP_SCRIPT).arg(1).arg(self.key(view, key));
            pipe.arg(old.as_deref().unwrap_or_default()).arg(record.event_ts).arg(record.created_ts);
            pipe.arg(record.encode(view));
        }
        let answers: Vec<i64> = self.query(&pipe).await.map_err(unavailable)?;
        Ok(answers.into_iter().map(|a| a == 1).collect())
    }

    pub async fn checkpoint(&self, source: &str) -> Result<Option<Vec<u8>>> {
        let mut pipe = redis::pipe();
        pipe.cmd("HGET").arg(self.checkpoints_key()).arg(source);
        let (v,): (Option<Vec<u8>>,) = self.query(&pipe).await.map_err(unavailable)?;
        Ok(v)
    }
}
