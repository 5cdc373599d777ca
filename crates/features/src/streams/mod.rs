//! Stream ingestion: consumers that write JSON rows from Kafka, NATS JetStream, RabbitMQ or Redis
//! Streams into the online store, at least once and idempotently (last write wins on event time, so
//! a redelivered message changes nothing). The same consumers take Debezium change events
//! ([`debezium`]), applied in stream order with deletes; PostgreSQL is read directly by
//! [`postgres`]. A message is acknowledged only after the rows it carried are durable; a message
//! that cannot be read goes to the view's dead-letter destination with its reason, is counted, and
//! never stalls the consumer.

/// A source's consumer type, implemented by its module's `run`: the view it writes and the
/// declaration it reads (each of the five sources declares one with this).
macro_rules! consumer {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub(crate) struct $name {
            pub view: usize,
            pub spec: $crate::definitions::StreamSpec,
        }

        impl $crate::streams::Consumer for $name {
            fn run<'a>(
                &'a self,
                store: &'a $crate::feature_store::FeatureStore,
                stop: tokio::sync::watch::Receiver<bool>,
            ) -> futures::future::BoxFuture<'a, Result<(), $crate::streams::ConsumerError>> {
                Box::pin(run(store, self.view, &self.spec, stop))
            }
        }
    };
}

mod debezium;
mod kafka;
pub use kafka::{read_topic, TopicProducer};
mod nats;
pub mod postgres;
mod rabbitmq;
mod redis;

use crate::definitions::{FeatureView, StreamSource, StreamSpec};
use crate::feature_store::{now_us, FeatureStore};
use crate::record::{EntityKey, Record};
use crate::store::Change;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Why a consumer stopped reading its source.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The source cannot be read now (a broker or database down, a connection lost): the
    /// consumer connects again after a backoff.
    #[error("{0}")]
    Retry(String),
    /// The source can never be read as declared (a table without a primary key or replica
    /// identity, `wal_level` other than logical, a column of the wrong type, a publication
    /// without the table): the consumer stops, says what to change, and the server serves on.
    #[error("{0}")]
    Stop(String),
}

/// Errors a consumer does not classify are taken as passing (a broker down, a connection lost).
impl From<String> for ConsumerError {
    fn from(e: String) -> Self {
        ConsumerError::Retry(e)
    }
}

impl ConsumerError {
    /// A source that will not mend by retrying: `what` says what to change.
    pub(crate) fn stop(what: impl std::fmt::Display) -> Self {
        ConsumerError::Stop(what.to_string())
    }
}

/// A stream source's consumer. Each source implements it once ([`kafka::Kafka`],
/// [`nats::Nats`], [`rabbitmq::Rabbitmq`], [`redis::RedisStream`], [`postgres::Postgres`]), and
/// [`spawn_all`] supervises them all alike: `Ok` is a clean stop (or a lost lease),
/// [`ConsumerError::Retry`] connects again after a backoff, [`ConsumerError::Stop`] ends the
/// consumer with its reason in the log and the error counter while the server serves on.
pub(crate) trait Consumer: Send + Sync {
    /// Connects and consumes into the view until `stop` turns true.
    fn run<'a>(
        &'a self,
        store: &'a FeatureStore,
        stop: watch::Receiver<bool>,
    ) -> BoxFuture<'a, Result<(), ConsumerError>>;
}

/// The consumer that reads `spec` into view `view`.
fn consumer_for(view: usize, spec: StreamSpec) -> Box<dyn Consumer> {
    match spec.source {
        StreamSource::Nats { .. } => Box::new(nats::Nats { view, spec }),
        StreamSource::Redis { .. } => Box::new(redis::RedisStream { view, spec }),
        StreamSource::Kafka { .. } => Box::new(kafka::Kafka { view, spec }),
        StreamSource::Rabbitmq { .. } => Box::new(rabbitmq::Rabbitmq { view, spec }),
        StreamSource::Postgres { .. } => Box::new(postgres::Postgres { view, spec }),
    }
}

/// What one message asks of the online store.
pub enum Item {
    /// A JSON row: written last-write-wins on event time.
    Row(EntityKey, Record),
    /// A change event (Debezium): applied in stream order, deletes included.
    Change(Change),
    /// A truncated source table: every row of the view goes.
    Truncate,
}

/// Messages decoded, the ones that could not be (with their reasons), and the ones with
/// nothing to write (tombstones, logical-decoding messages).
pub struct Decoded {
    pub items: Vec<Item>,
    /// (message position in the batch, reason)
    pub bad: Vec<(usize, String)>,
    pub skipped: usize,
}

/// Decodes messages: JSON rows (one object per message) or Debezium change events. An empty
/// message is a tombstone (Debezium writes one after each delete, for log compaction) and is skipped.
/// (Public for the fuzz targets of `crates/fuzz`.)
pub fn decode(store: &FeatureStore, view: &FeatureView, payloads: &[&[u8]]) -> Decoded {
    let mut out = Decoded { items: Vec::with_capacity(payloads.len()), bad: Vec::new(), skipped: 0 };
    for (i, p) in payloads.iter().enumerate() {
        if p.is_empty() {
            out.skipped += 1;
            continue;
        }
        let parsed: Result<serde_json::Value, String> = serde_json::from_slice(p).map_err(|e| format!("not JSON: {e}"));
        let item = parsed.and_then(|v| match v {
            serde_json::Value::Object(map) => match debezium::envelope(&map) {
                Some((envelope, schema)) => debezium::event(view, envelope, schema).map(|e| match e {
                    debezium::Event::Change(c) => Some(Item::Change(c)),
                    debezium::Event::Truncate => Some(Item::Truncate),
                    debezium::Event::Skip => None,
                }),
                None => store.row_from_json(view, &map).map(|(k, r)| Some(Item::Row(k, r))).map_err(|e| e.to_string()),
            },
            other => {
                Err(format!("expected a JSON object (one row), got {}", crate::value::shorten(&other.to_string(), 60)))
            }
        });
        match item {
            Ok(Some(item)) => out.items.push(item),
            Ok(None) => out.skipped += 1,
            Err(reason) => out.bad.push((i, reason)),
        }
    }
    out
}

/// Decodes a batch and counts it (see [`write`] for the rest).
pub(crate) fn read(store: &FeatureStore, label: &str, view: &FeatureView, payloads: &[&[u8]]) -> Decoded {
    let decoded = decode(store, view, payloads);
    observe(store, label, &decoded);
    decoded
}

/// Writes decoded messages durably in message order (consecutive rows in one last-write-wins
/// write, consecutive changes in one in-order apply). The caller dead-letters `decoded.bad`,
/// then acknowledges the batch.
pub(crate) async fn write(
    store: &FeatureStore,
    view: &FeatureView,
    label: &str,
    items: Vec<Item>,
) -> Result<(), String> {
    let mut rows = Vec::new();
    let mut changes = Vec::new();
    for item in items {
        match item {
            Item::Row(k, r) => {
                if !changes.is_empty() {
                    flush(store, view, label, &mut rows, &mut changes).await?;
                }
                rows.push((k, r));
            }
            Item::Change(c) => {
                if !rows.is_empty() {
                    flush(store, view, label, &mut rows, &mut changes).await?;
                }
                changes.push(c);
            }
            Item::Truncate => {
                flush(store, view, label, &mut rows, &mut changes).await?;
                store.truncate(view, label, None).await.map_err(|e| e.to_string())?;
            }
        }
    }
    flush(store, view, label, &mut rows, &mut changes).await
}

/// Writes the pending run of rows or of changes (only one of them is ever pending).
async fn flush(
    store: &FeatureStore,
    view: &FeatureView,
    label: &str,
    rows: &mut Vec<(EntityKey, Record)>,
    changes: &mut Vec<Change>,
) -> Result<(), String> {
    if !rows.is_empty() {
        store.write(view, std::mem::take(rows), label, None).await.map_err(|e| e.to_string())?;
    }
    if !changes.is_empty() {
        store.apply(view, std::mem::take(changes), label, None).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The body sent to the dead-letter destination.
pub(crate) fn dead_letter_body(view: &str, source: &str, reason: &str, payload: &[u8]) -> Vec<u8> {
    let body = serde_json::json!({
        "feature_view": view,
        "source": source,
        "reason": reason,
        "payload": String::from_utf8_lossy(payload),
        "at": crate::value::format_timestamp(now_us()),
    });
    body.to_string().into_bytes()
}

/// This process's name in consumer groups: `flotilla-$HOSTNAME`.
pub(crate) fn consumer_name() -> String {
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "local".into());
    format!("flotilla-{host}")
}

/// Records how far behind the newest applied row is, and counts messages.
pub(crate) fn observe(store: &FeatureStore, label: &str, decoded: &Decoded) {
    let m = &store.metrics;
    m.stream_messages.with_label_values(&[label, "ok"]).inc_by(decoded.items.len() as u64);
    m.stream_messages.with_label_values(&[label, "dead_letter"]).inc_by(decoded.bad.len() as u64);
    if decoded.skipped > 0 {
        m.stream_messages.with_label_values(&[label, "skipped"]).inc_by(decoded.skipped as u64);
    }
    let event_ts = |item: &Item| match item {
        Item::Row(_, r) | Item::Change((_, Some(r))) => Some(r.event_ts),
        _ => None,
    };
    if let Some(newest) = decoded.items.iter().filter_map(event_ts).max() {
        m.stream_lag_seconds.with_label_values(&[label]).set((now_us() - newest).max(0) as f64 / 1e6);
    }
    for (_, reason) in &decoded.bad {
        tracing::warn!(source = label, reason, "message sent to the dead-letter destination");
    }
}

/// Who may consume a source that has exactly one consumer (a PostgreSQL replication slot). In
/// a fleet whose workers share one online store, that is the worker holding the source's lease
/// in the registry; another takes over when it goes (the position is stored with the rows, so
/// nothing is lost or applied twice).
pub trait Exclusive: Send + Sync + 'static {
    /// True while this process may consume `source` (kept trying for until the process ends).
    fn hold(&self, source: &str) -> watch::Receiver<bool>;
}

/// Waits until `held` (when there is a lease) and returns a stop signal that turns true on
/// `stop` or when the lease is lost, with the task that watches both. None: `stop` came first.
async fn while_held(
    stop: &watch::Receiver<bool>,
    held: Option<&watch::Receiver<bool>>,
    label: &str,
) -> Option<(watch::Receiver<bool>, Option<tokio::task::JoinHandle<()>>)> {
    let Some(held) = held else { return Some((stop.clone(), None)) };
    let (mut stopped, mut h) = (stop.clone(), held.clone());
    if !*h.borrow() {
        tracing::info!(source = label, "waiting for this source's lease (another worker consumes it)");
    }
    tokio::select! {
        r = h.wait_for(|held| *held) => { r.ok()?; }
        _ = stopped.wait_for(|s| *s) => return None,
    }
    tracing::info!(source = label, "holding this source's lease: streaming it");
    let (tx, rx) = watch::channel(false);
    let (mut stopped, mut h) = (stop.clone(), held.clone());
    let watcher = tokio::spawn(async move {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => {}
            _ = h.wait_for(|held| !*held) => {}
        }
        let _ = tx.send(true);
    });
    Some((rx, Some(watcher)))
}

/// Starts one consumer per view that declares a stream; they stop when `stop` turns true. With
/// `exclusive`, a PostgreSQL source is consumed only while this process holds its lease.
pub fn spawn_all(
    store: Arc<FeatureStore>,
    stop: watch::Receiver<bool>,
    consumer: Option<&str>,
    exclusive: Option<Arc<dyn Exclusive>>,
) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    let mut specs = Vec::new();
    for view in store.registry.views.iter().filter(|v| v.online) {
        let Some(spec) = view.stream.clone() else { continue };
        let spec = match consumer {
            Some(id) => {
                if spec.shared_by_consumers() {
                    tracing::warn!(
                        source = %spec.label(),
                        view = %view.name,
                        "this worker's online store is its own, but a RabbitMQ queue gives each consumer part of \
                         the messages: give workers that consume it a shared Redis store"
                    );
                }
                spec.for_consumer(id)
            }
            None => spec,
        };
        specs.push((view.index, spec));
    }
    let slots: Vec<String> = specs
        .iter()
        .filter_map(|(_, s)| match &s.source {
            StreamSource::Postgres { slot, .. } => Some(slot.clone()),
            _ => None,
        })
        .collect();
    let cleanup = store.clone();
    tasks.spawn(async move { postgres::drop_undeclared(&cleanup, &slots).await });
    for (index, spec) in specs {
        let (store, stop) = (store.clone(), stop.clone());
        let held = match (&spec.source, &exclusive) {
            (StreamSource::Postgres { slot, .. }, Some(e)) => Some(e.hold(slot)),
            _ => None,
        };
        tasks.spawn(async move {
            let label = spec.label();
            let consumer = consumer_for(index, spec);
            let mut backoff = Duration::from_millis(200);
            loop {
                let Some((run_stop, watcher)) = while_held(&stop, held.as_ref(), &label).await else { return };
                let started = std::time::Instant::now();
                let result = consumer.run(&store, run_stop).await;
                // A consumer that ran a while before failing starts its backoff afresh.
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_millis(200);
                }
                if let Some(w) = watcher {
                    w.abort();
                }
                match result {
                    // The lease went (preemption, or the registry gave it to another worker):
                    // wait to hold it again.
                    Ok(()) if !*stop.borrow() && held.is_some() => {
                        tracing::info!(source = %label, "lease lost: stopped consuming");
                        continue;
                    }
                    Ok(()) => return,
                    Err(ConsumerError::Stop(e)) => {
                        store.metrics.stream_errors.with_label_values(&[label.as_str()]).inc();
                        tracing::error!(source = %label, error = %e, "stream source cannot be read as declared; its consumer stopped (fix it and restart)");
                        return;
                    }
                    Err(ConsumerError::Retry(e)) => {
                        store.metrics.stream_errors.with_label_values(&[label.as_str()]).inc();
                        tracing::warn!(source = %label, error = %e, retry_in = ?backoff, "stream consumer failed; retrying");
                    }
                }
                let mut stop = stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        });
    }
    tasks
}
