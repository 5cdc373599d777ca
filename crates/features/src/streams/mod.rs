//! Stream ingestion: consumers that write JSON rows from Kafka, NATS JetStream or Redis Streams into
//! the online store, at least once and idempotently (last write wins on event time, so a
//! redelivered message changes nothing). A message is acknowledged only after the rows it
//! carried are durable; a message that cannot be read goes to the view's dead-letter
//! destination with its reason, is counted, and never stalls the consumer.

mod kafka;
mod nats;
mod redis;

use crate::definitions::{FeatureView, StreamSource};
use crate::feature_store::{now_us, FeatureStore};
use crate::record::{EntityKey, Record};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Messages decoded into rows, and the ones that could not be, with their reasons.
pub(crate) struct Decoded {
    pub rows: Vec<(EntityKey, Record)>,
    /// (message position in the batch, reason)
    pub bad: Vec<(usize, String)>,
}

/// Decodes JSON rows (one object per message).
pub(crate) fn decode(store: &FeatureStore, view: &FeatureView, payloads: &[&[u8]]) -> Decoded {
    let mut out = Decoded { rows: Vec::with_capacity(payloads.len()), bad: Vec::new() };
    for (i, p) in payloads.iter().enumerate() {
        let parsed: Result<serde_json::Value, String> = serde_json::from_slice(p).map_err(|e| format!("not JSON: {e}"));
        let row = parsed.and_then(|v| match v {
            serde_json::Value::Object(map) => store.row_from_json(view, &map).map_err(|e| e.to_string()),
            other => {
                Err(format!("expected a JSON object (one row), got {}", crate::value::shorten(&other.to_string(), 60)))
            }
        });
        match row {
            Ok(r) => out.rows.push(r),
            Err(reason) => out.bad.push((i, reason)),
        }
    }
    out
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
    m.stream_messages.with_label_values(&[label, "ok"]).inc_by(decoded.rows.len() as u64);
    m.stream_messages.with_label_values(&[label, "dead_letter"]).inc_by(decoded.bad.len() as u64);
    if let Some(newest) = decoded.rows.iter().map(|(_, r)| r.event_ts).max() {
        m.stream_lag_seconds.with_label_values(&[label]).set((now_us() - newest).max(0) as f64 / 1e6);
    }
    for (_, reason) in &decoded.bad {
        tracing::warn!(source = label, reason, "message sent to the dead-letter destination");
    }
}

/// Starts one consumer per view that declares a stream; they stop when `stop` turns true.
pub fn spawn_all(store: Arc<FeatureStore>, stop: watch::Receiver<bool>) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    for view in store.registry.views.iter().filter(|v| v.online) {
        let Some(spec) = view.stream.clone() else { continue };
        let (store, stop, index) = (store.clone(), stop.clone(), view.index);
        tasks.spawn(async move {
            let label = spec.label();
            let mut backoff = Duration::from_millis(200);
            loop {
                let result = match &spec.source {
                    StreamSource::Nats { .. } => nats::run(&store, index, &spec, stop.clone()).await,
                    StreamSource::Redis { .. } => redis::run(&store, index, &spec, stop.clone()).await,
                    StreamSource::Kafka { .. } => kafka::run(&store, index, &spec, stop.clone()).await,
                };
                match result {
                    Ok(()) => return,
                    Err(e) => {
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
