//! Membership in NATS JetStream KV, for several routers: workers put their record under
//! `workers.<id>` every heartbeat; routers watch the bucket. An existing system (watch,
//! compare-and-set, TTL), not a home-made consensus.
//!
//! The router expires a worker by its own clock (no refresh within the TTL); the bucket's
//! `max_age` only clears entries nobody refreshed for long. While NATS is unreachable, routers
//! freeze expiry and keep routing on their last-known view.

use crate::members::Members;
use crate::record::WorkerRecord;
use async_nats::jetstream::kv::{Operation, Store};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// Default bucket of the fleet's membership.
pub const DEFAULT_BUCKET: &str = "flotilla-fleet";

/// Key of a worker's record.
pub fn key(id: &str) -> String {
    format!("workers.{id}")
}

/// A lazily connected KV bucket that reconnects (and re-creates the bucket) after failures.
pub struct Kv {
    url: String,
    bucket: String,
    client: tokio::sync::Mutex<Option<async_nats::Client>>,
    store: tokio::sync::Mutex<Option<Store>>,
}

impl Kv {
    pub fn new(url: &str, bucket: &str) -> Self {
        Self {
            url: url.to_string(),
            bucket: bucket.to_string(),
            client: tokio::sync::Mutex::new(None),
            store: tokio::sync::Mutex::new(None),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The bucket, connecting and creating it when needed.
    pub async fn store(&self) -> Result<Store, String> {
        if let Some(s) = self.store.lock().await.clone() {
            return Ok(s);
        }
        let client = {
            let mut c = self.client.lock().await;
            match c.clone() {
                Some(client) => client,
                None => {
                    let address = self.url.trim_start_matches("nats://").to_string();
                    let connect = async_nats::ConnectOptions::new()
                        .connection_timeout(Duration::from_secs(2))
                        .connect(address.as_str());
                    let client = tokio::time::timeout(Duration::from_secs(3), connect)
                        .await
                        .map_err(|_| format!("NATS at {}: no connection within 3 s", self.url))?
                        .map_err(|e| format!("NATS at {}: {e}", self.url))?;
                    *c = Some(client.clone());
                    client
                }
            }
        };
        let js = async_nats::jetstream::new(client);
        let store = match tokio::time::timeout(Duration::from_secs(3), js.get_key_value(&self.bucket)).await {
            Ok(Ok(store)) => store,
            _ => self.create(&js).await?,
        };
        *self.store.lock().await = Some(store.clone());
        Ok(store)
    }

    /// Creates the bucket: the stream a KV bucket is (`KV_<bucket>` over `$KV.<bucket>.>`, one
    /// value per key, rollups allowed, deletes by marker). Made directly rather than through
    /// `create_key_value`, which first reads the account's API level — an answer NATS 2.9
    /// servers (Debian 12's) give in a form the client does not parse.
    async fn create(&self, js: &async_nats::jetstream::Context) -> Result<Store, String> {
        use async_nats::jetstream::stream;
        let config = stream::Config {
            name: format!("KV_{}", self.bucket),
            description: Some("Flotilla fleet membership (one record per worker)".into()),
            subjects: vec![format!("$KV.{}.>", self.bucket)],
            max_messages_per_subject: 1,
            max_age: Duration::from_secs(300),
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        };
        let wait =
            |what: &'static str| move |_| format!("NATS bucket '{}': no answer to {what} within 3 s", self.bucket);
        tokio::time::timeout(Duration::from_secs(3), js.get_or_create_stream(config))
            .await
            .map_err(wait("create"))?
            .map_err(|e| format!("NATS bucket '{}': cannot create it: {e}", self.bucket))?;
        tokio::time::timeout(Duration::from_secs(3), js.get_key_value(&self.bucket))
            .await
            .map_err(wait("open"))?
            .map_err(|e| format!("NATS bucket '{}': {e}", self.bucket))
    }

    /// Forgets the bucket handle, so the next call re-creates it (after a NATS restart).
    pub async fn reset(&self) {
        *self.store.lock().await = None;
    }

    /// Whether the client is connected now.
    pub async fn connected(&self) -> bool {
        self.client
            .lock()
            .await
            .as_ref()
            .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected)
    }

    pub async fn put(&self, record: &WorkerRecord) -> Result<(), String> {
        let store = self.store().await?;
        let body = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_secs(2), store.put(key(&record.id), body.into())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                self.reset().await;
                Err(format!("NATS put: {e}"))
            }
            Err(_) => {
                self.reset().await;
                Err("NATS put: no answer within 2 s".into())
            }
        }
    }

    pub async fn delete(&self, id: &str) -> Result<(), String> {
        let store = self.store().await?;
        tokio::time::timeout(Duration::from_secs(2), store.delete(key(id)))
            .await
            .map_err(|_| "NATS delete: no answer within 2 s".to_string())?
            .map_err(|e| format!("NATS delete: {e}"))
    }
}

/// Keeps `members` in step with the bucket until the task is dropped: initial values, then
/// every put and delete. While the bucket cannot be watched, the view is frozen (kept).
pub fn spawn_watch(kv: Arc<Kv>, members: Arc<Members>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut warned = false;
        loop {
            let watch = match kv.store().await {
                Ok(store) => store.watch_all().await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            let mut watch = match watch {
                Ok(w) => w,
                Err(e) => {
                    members.set_frozen(true);
                    if !warned {
                        tracing::warn!(registry = kv.url(), error = %e, "cannot watch the fleet registry; retrying");
                        warned = true;
                    }
                    kv.reset().await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            warned = false;
            members.set_frozen(false);
            tracing::info!(registry = kv.url(), "watching the fleet registry");
            loop {
                tokio::select! {
                    entry = watch.next() => match entry {
                        Some(Ok(e)) => apply(&members, e.key.as_str(), e.operation, &e.value),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "fleet registry watch failed");
                            break;
                        }
                        None => break,
                    },
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {
                        if !kv.connected().await {
                            break;
                        }
                    }
                }
            }
            members.set_frozen(true);
            kv.reset().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

fn apply(members: &Members, key: &str, op: Operation, value: &[u8]) {
    let Some(id) = key.strip_prefix("workers.") else {
        return;
    };
    match op {
        Operation::Put => match serde_json::from_slice::<WorkerRecord>(value) {
            Ok(record) if record.id == id => {
                if let Err(e) = members.apply(record) {
                    tracing::warn!(worker = id, error = %e, "registry entry refused");
                }
            }
            Ok(_) => tracing::warn!(worker = id, "registry entry names another worker; ignored"),
            Err(e) => tracing::warn!(worker = id, error = %e, "registry entry is not a worker record; ignored"),
        },
        Operation::Delete | Operation::Purge => members.remove(id, "left", "deleted from the registry"),
    }
}

/// Key of the control lease: one router at a time places models and drives version loads.
pub const LEASE_KEY: &str = "control.leader";

/// Who holds the control lease, until when (Unix ms, the holder's clock).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Lease {
    pub holder: String,
    pub expires_ms: u64,
}

impl Kv {
    /// Takes or renews the control lease for `me` for `ttl`; returns the holder after the attempt.
    pub async fn acquire(&self, me: &str, ttl: Duration) -> Result<Lease, String> {
        self.acquire_key(LEASE_KEY, me, ttl).await
    }

    /// The JSON value under `key` (None when there is none).
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        let store = self.store().await?;
        let v = tokio::time::timeout(Duration::from_secs(2), store.get(key))
            .await
            .map_err(|_| format!("NATS read of {key}: no answer within 2 s"))?
            .map_err(|e| format!("NATS read of {key}: {e}"))?;
        match v {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("NATS {key}: {e}")),
        }
    }

    /// Puts `value` as JSON under `key`.
    pub async fn put_json<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<(), String> {
        let store = self.store().await?;
        let body: bytes::Bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?.into();
        tokio::time::timeout(Duration::from_secs(2), store.put(key, body))
            .await
            .map_err(|_| format!("NATS write of {key}: no answer within 2 s"))?
            .map(|_| ())
            .map_err(|e| format!("NATS write of {key}: {e}"))
    }

    /// Hands the lease under `key` back when `me` holds it (an expired lease under its revision).
    pub async fn release_key(&self, key: &str, me: &str) -> Result<(), String> {
        let store = self.store().await?;
        let entry = tokio::time::timeout(Duration::from_secs(2), store.entry(key))
            .await
            .map_err(|_| "NATS lease read: no answer within 2 s".to_string())?
            .map_err(|e| format!("NATS lease read: {e}"))?;
        let Some(e) = entry.filter(|e| e.operation == Operation::Put) else { return Ok(()) };
        match serde_json::from_slice::<Lease>(&e.value) {
            Ok(l) if l.holder == me => {
                let gone: bytes::Bytes = serde_json::to_vec(&Lease { holder: String::new(), expires_ms: 0 })
                    .map_err(|e| e.to_string())?
                    .into();
                tokio::time::timeout(Duration::from_secs(2), store.update(key, gone, e.revision))
                    .await
                    .map_err(|_| "NATS lease update: no answer within 2 s".to_string())?
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            _ => Ok(()),
        }
    }

    /// The live leases under `prefix` (`leases.`), by key without the prefix.
    pub async fn leases(&self, prefix: &str) -> Result<std::collections::BTreeMap<String, Lease>, String> {
        let store = self.store().await?;
        let mut keys = tokio::time::timeout(Duration::from_secs(2), store.keys())
            .await
            .map_err(|_| "NATS keys: no answer within 2 s".to_string())?
            .map_err(|e| e.to_string())?;
        let now = crate::events::now_ms() as u64;
        let mut out = std::collections::BTreeMap::new();
        while let Ok(Some(Ok(key))) = tokio::time::timeout(Duration::from_secs(2), keys.next()).await {
            let Some(name) = key.strip_prefix(prefix) else { continue };
            if let Ok(Ok(Some(v))) = tokio::time::timeout(Duration::from_secs(2), store.get(&key)).await {
                if let Ok(l) = serde_json::from_slice::<Lease>(&v) {
                    if l.expires_ms > now && !l.holder.is_empty() {
                        out.insert(name.to_string(), l);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Takes or renews the lease under `key` for `me` for `ttl`, by compare-and-set on the
    /// key's revision; returns the holder after the attempt.
    pub async fn acquire_key(&self, key: &str, me: &str, ttl: Duration) -> Result<Lease, String> {
        let store = self.store().await?;
        let now = crate::events::now_ms() as u64;
        let mine = Lease { holder: me.to_string(), expires_ms: now + ttl.as_millis() as u64 };
        let body: bytes::Bytes = serde_json::to_vec(&mine).map_err(|e| e.to_string())?.into();
        let wait = |what: &str| format!("NATS lease {what}: no answer within 2 s");
        let entry = tokio::time::timeout(Duration::from_secs(2), store.entry(key))
            .await
            .map_err(|_| wait("read"))?
            .map_err(|e| format!("NATS lease read: {e}"))?;
        let current = entry
            .as_ref()
            .filter(|e| e.operation == Operation::Put)
            .and_then(|e| serde_json::from_slice::<Lease>(&e.value).ok().map(|l| (l, e.revision)));
        let attempt = match &current {
            // Someone else holds a live lease.
            Some((lease, _)) if lease.holder != me && lease.expires_ms > now => return Ok(lease.clone()),
            Some((_, revision)) => tokio::time::timeout(Duration::from_secs(2), store.update(key, body, *revision))
                .await
                .map_err(|_| wait("update"))?
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => match entry {
                Some(e) => tokio::time::timeout(Duration::from_secs(2), store.update(key, body, e.revision))
                    .await
                    .map_err(|_| wait("update"))?
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                None => tokio::time::timeout(Duration::from_secs(2), store.create(key, body))
                    .await
                    .map_err(|_| wait("create"))?
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            },
        };
        match attempt {
            Ok(()) => Ok(mine),
            // Lost a race: whoever won holds it now.
            Err(_) => {
                let e = tokio::time::timeout(Duration::from_secs(2), store.get(key))
                    .await
                    .map_err(|_| wait("read"))?
                    .map_err(|e| format!("NATS lease read: {e}"))?;
                e.and_then(|v| serde_json::from_slice::<Lease>(&v).ok())
                    .ok_or_else(|| "the lease changed hands but cannot be read".to_string())
            }
        }
    }
}

/// Keeps trying to hold the control lease for `me`; `leader` says whether this router holds it.
/// While the registry is unreachable a holder keeps leading until its lease would have run out.
pub fn spawn_lease(
    kv: Arc<Kv>,
    me: String,
    leader: Arc<std::sync::atomic::AtomicBool>,
    holder: Arc<parking_lot::RwLock<Option<Lease>>>,
    events: Arc<crate::events::Events>,
) -> tokio::task::JoinHandle<()> {
    const TTL: Duration = Duration::from_secs(3);
    tokio::spawn(async move {
        let mut was = false;
        loop {
            let now = crate::events::now_ms() as u64;
            let lead = match kv.acquire(&me, TTL).await {
                Ok(lease) => {
                    let mine = lease.holder == me;
                    *holder.write() = Some(lease);
                    mine
                }
                Err(e) => {
                    tracing::debug!(error = %e, "control lease not renewed");
                    kv.reset().await;
                    holder.read().as_ref().is_some_and(|l| l.holder == me && l.expires_ms > now)
                }
            };
            leader.store(lead, std::sync::atomic::Ordering::Release);
            if lead != was {
                let what = if lead { "acquired the control lease" } else { "does not hold the control lease" };
                events.push(&format!("router:{me}"), "control_lease", what);
                was = lead;
            }
            tokio::time::sleep(TTL / 3).await;
        }
    })
}
