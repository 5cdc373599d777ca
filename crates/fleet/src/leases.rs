//! Leases on sources that have exactly one consumer (a PostgreSQL replication slot), so that
//! workers sharing one online store do not fight over them: one worker streams a source,
//! another takes over within seconds when the holder is preempted or dies.
//!
//! The lease lives in the registry: the router's table with the embedded registry (`PUT` /
//! `DELETE /v2/fleet/leases/{source}`, the router's clock), or the NATS JetStream KV bucket
//! (`leases.<source>`, compare-and-set). A holder renews every third of the TTL and stops
//! consuming when it cannot renew before its lease would run out; on a preemption notice it
//! stops at once and hands the lease back, so the next worker needs no TTL to pass.

use crate::events::now_ms;
use crate::nats::{Kv, Lease};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long a source lease lasts unless renewed.
pub const TTL: Duration = Duration::from_secs(3);

/// The KV key of a source's lease.
pub fn kv_key(source: &str) -> String {
    format!("leases.{source}")
}

/// The router's lease table (the embedded registry).
#[derive(Default)]
pub struct LeaseTable {
    leases: Mutex<BTreeMap<String, Lease>>,
}

impl LeaseTable {
    /// Grants or renews `source` to `holder` when it is free, expired or already theirs;
    /// returns the holder after the attempt.
    pub fn acquire(&self, source: &str, holder: &str, ttl: Duration) -> Lease {
        let now = now_ms() as u64;
        let mut leases = self.leases.lock();
        match leases.get(source) {
            Some(l) if l.holder != holder && l.expires_ms > now => l.clone(),
            _ => {
                let lease = Lease { holder: holder.to_string(), expires_ms: now + ttl.as_millis() as u64 };
                leases.insert(source.to_string(), lease.clone());
                lease
            }
        }
    }

    /// Hands `source` back when `holder` holds it.
    pub fn release(&self, source: &str, holder: &str) -> bool {
        let mut leases = self.leases.lock();
        match leases.get(source) {
            Some(l) if l.holder == holder => {
                leases.remove(source);
                true
            }
            _ => false,
        }
    }

    /// Replaces the table with the registry's leases (NATS registry: the router mirrors the
    /// bucket so that its fleet view never waits on NATS).
    pub fn mirror(&self, leases: BTreeMap<String, Lease>) {
        *self.leases.lock() = leases;
    }

    /// The live leases.
    pub fn live(&self) -> BTreeMap<String, Lease> {
        let now = now_ms() as u64;
        self.leases.lock().iter().filter(|(_, l)| l.expires_ms > now).map(|(k, l)| (k.clone(), l.clone())).collect()
    }
}

/// Keeps the router's lease table a copy of the NATS bucket's leases, read every second; while
/// NATS is away the last copy stays (and its leases run out in the view as they would in NATS).
pub fn spawn_mirror(kv: Arc<Kv>, fleet: Arc<crate::router::Fleet>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Ok(Ok(leases)) = tokio::time::timeout(Duration::from_secs(3), kv.leases("leases.")).await {
                fleet.leases.mirror(leases);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// Where a worker's source leases are held.
#[derive(Clone)]
enum Registry {
    Router { url: String, http: reqwest::Client },
    Nats(Arc<Kv>),
}

impl Registry {
    async fn acquire(&self, source: &str, me: &str) -> Result<Lease, String> {
        match self {
            Registry::Router { url, http } => {
                let answer = http
                    .put(format!("{url}/v2/fleet/leases/{source}"))
                    .json(&serde_json::json!({"holder": me, "ttl_ms": TTL.as_millis() as u64}))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !answer.status().is_success() {
                    return Err(format!("the router answered {}", answer.status()));
                }
                // The router's clock set the expiry: hold it for the TTL by ours.
                let lease: Lease = answer.json().await.map_err(|e| e.to_string())?;
                Ok(Lease { expires_ms: now_ms() as u64 + TTL.as_millis() as u64, ..lease })
            }
            Registry::Nats(kv) => kv.acquire_key(&kv_key(source), me, TTL).await,
        }
    }

    async fn release(&self, source: &str, me: &str) {
        let done = match self {
            Registry::Router { url, http } => http
                .delete(format!("{url}/v2/fleet/leases/{source}"))
                .query(&[("holder", me)])
                .send()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Registry::Nats(kv) => kv.release_key(&kv_key(source), me).await,
        };
        if let Err(e) = done {
            tracing::warn!(source, error = %e, "source lease not handed back; it expires by itself");
        }
    }
}

/// A worker's source leases: one task per source keeps trying to hold it.
pub struct SourceLeases {
    me: String,
    registry: Option<Registry>,
    held: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// Set on a preemption notice or on the way out: stop consuming, hand the leases back.
    leaving: watch::Sender<bool>,
    /// Lease tasks still running.
    running: watch::Sender<usize>,
}

impl SourceLeases {
    /// Leases held in the first router's table, or in the NATS registry when the worker joined
    /// one (`join` as `--join` gives it).
    pub fn new(me: &str, join: &[String], bucket: &str, link: &crate::link::Link) -> Arc<Self> {
        let nats = join.iter().find(|u| u.starts_with("nats://"));
        let router = join.iter().find(|u| u.starts_with("http://") || u.starts_with("https://"));
        let registry = match (nats, router) {
            (Some(n), _) => Some(Registry::Nats(Arc::new(Kv::new(n, bucket)))),
            (None, Some(r)) => Some(Registry::Router {
                url: r.trim_end_matches('/').to_string(),
                http: link.http(Duration::from_millis(1000)),
            }),
            (None, None) => None,
        };
        Arc::new(Self {
            me: me.to_string(),
            registry,
            held: Mutex::new(HashMap::new()),
            leaving: watch::channel(false).0,
            running: watch::channel(0).0,
        })
    }

    /// True while this worker holds `source`'s lease (without a registry: always).
    pub fn hold(self: &Arc<Self>, source: &str) -> watch::Receiver<bool> {
        let mut held = self.held.lock();
        if let Some(tx) = held.get(source) {
            return tx.subscribe();
        }
        let Some(registry) = self.registry.clone() else { return watch::channel(true).1 };
        let (tx, rx) = watch::channel(false);
        held.insert(source.to_string(), tx.clone());
        let (me, source, mut leaving) = (self.me.clone(), source.to_string(), self.leaving.subscribe());
        let running = self.running.clone();
        running.send_modify(|n| *n += 1);
        tokio::spawn(async move {
            let mut mine_until = 0u64;
            loop {
                if *leaving.borrow() {
                    break;
                }
                let now = now_ms() as u64;
                match registry.acquire(&source, &me).await {
                    Ok(lease) if lease.holder == me => mine_until = lease.expires_ms,
                    Ok(lease) => {
                        mine_until = 0;
                        tracing::debug!(source, holder = %lease.holder, "source lease held by another worker");
                    }
                    Err(e) => tracing::debug!(source, error = %e, "source lease not renewed"),
                }
                // Consume only while the lease has more than a renewal period left, so that
                // this worker stops before another can take over.
                let holds = mine_until > now + (TTL / 3).as_millis() as u64;
                if *tx.borrow() != holds {
                    tracing::info!(source, holds, "source lease");
                    tx.send_replace(holds);
                }
                tokio::select! {
                    _ = tokio::time::sleep(TTL / 3) => {}
                    _ = leaving.wait_for(|l| *l) => {}
                }
            }
            let had = tx.send_replace(false);
            if had || mine_until > now_ms() as u64 {
                // Give the consumer a moment to stop before the next worker starts.
                tokio::time::sleep(Duration::from_millis(300)).await;
                registry.release(&source, &me).await;
                tracing::info!(source, "source lease handed back");
            }
            running.send_modify(|n| *n -= 1);
        });
        rx
    }

    /// Stops consuming every leased source and hands the leases back (a preemption notice,
    /// or the way out).
    pub fn leave(&self) {
        self.leaving.send_replace(true);
    }

    /// Waits (at most `limit`) until every lease was handed back after [`Self::leave`].
    pub async fn left(&self, limit: Duration) {
        let mut running = self.running.subscribe();
        let _ = tokio::time::timeout(limit, running.wait_for(|n| *n == 0)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_until_it_lets_go_or_expires() {
        let t = LeaseTable::default();
        assert_eq!(t.acquire("slot_a", "w1", TTL).holder, "w1");
        assert_eq!(t.acquire("slot_a", "w2", TTL).holder, "w1", "held by another");
        assert_eq!(t.acquire("slot_a", "w1", TTL).holder, "w1", "renewed");
        assert_eq!(t.acquire("slot_b", "w2", TTL).holder, "w2", "sources are leased apart");
        assert!(!t.release("slot_a", "w2"), "only the holder hands it back");
        assert!(t.release("slot_a", "w1"));
        assert_eq!(t.acquire("slot_a", "w2", TTL).holder, "w2");
        // an expired lease goes to whoever asks
        assert_eq!(t.acquire("slot_c", "w1", Duration::ZERO).holder, "w1");
        assert!(!t.live().contains_key("slot_c"));
        assert_eq!(t.acquire("slot_c", "w2", TTL).holder, "w2");
        assert_eq!(t.live().keys().cloned().collect::<Vec<_>>(), ["slot_a", "slot_b", "slot_c"]);
    }

    #[tokio::test]
    async fn without_a_registry_a_worker_always_holds() {
        let leases = SourceLeases::new("w1", &[], "bucket", &Default::default());
        assert!(*leases.hold("slot").borrow());
    }
}
