//! Redis Streams: XREADGROUP in a consumer group, XACK after the write. On start the consumer
//! first re-reads its own pending entries (delivered before a crash, never acknowledged) and
//! claims entries other consumers left pending for over a minute.
//!
//! An entry is one row: either a field `json` (or `data`, `payload`) holding a JSON object, or
//! the row's columns as fields (`card_id 42 event_timestamp 2026-11-01T12:00:00Z ...`).

use super::{consumer_name, dead_letter_body, read, write, ConsumerError};
use crate::definitions::{FeatureView, StreamSource, StreamSpec};
use crate::feature_store::FeatureStore;
use crate::store::redis_tls::RedisUrl;
use crate::value::ValueType;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamInfoGroupsReply, StreamReadReply};
use std::time::Duration;
use tokio::sync::watch;

const BLOCK_MS: u64 = 500;
/// Entries pending this long with another consumer are taken over.
const CLAIM_IDLE_MS: u64 = 60_000;

consumer! {
    /// A Redis stream read by a consumer group.
    RedisStream
}

/// Consumes until `stop` turns true.
async fn run(
    store: &FeatureStore,
    view_index: usize,
    spec: &StreamSpec,
    stop: watch::Receiver<bool>,
) -> Result<(), ConsumerError> {
    let StreamSource::Redis { url, stream, group } = &spec.source else {
        return Err(ConsumerError::stop("not a Redis source"));
    };
    let view = &store.registry.views[view_index];
    let label = spec.label();
    // A URL or certificate file that does not work will not work on the next try either.
    let client = RedisUrl::parse(url).and_then(|u| u.client()).map_err(ConsumerError::stop)?;
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_millis(BLOCK_MS + 5_000)));
    let mut con = client.get_multiplexed_async_connection_with_config(&config).await.map_err(|e| {
        let message = format!("cannot connect to {}: {e}", flotilla_core::secret::redact_url(url));
        // A certificate that does not verify arrives as an I/O error carrying rustls's reason.
        let bad_certificate = message.contains("invalid peer certificate");
        match e.kind() {
            redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::InvalidClientConfig => {
                ConsumerError::Stop(message)
            }
            _ if bad_certificate => ConsumerError::Stop(message),
            _ => ConsumerError::Retry(message),
        }
    })?;
    let created: Result<(), redis::RedisError> =
        redis::cmd("XGROUP").arg("CREATE").arg(stream).arg(group).arg("0").arg("MKSTREAM").query_async(&mut con).await;
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => {}
        // The key holds something other than a stream, or this user may not read it.
        Err(e) if matches!(e.code(), Some("WRONGTYPE" | "NOPERM" | "NOAUTH" | "WRONGPASS")) => {
            return Err(ConsumerError::stop(format!("XGROUP CREATE {stream} {group}: {e}")))
        }
        Err(e) => return Err(format!("XGROUP CREATE {stream} {group}: {e}").into()),
        Ok(()) => {}
    }
    let consumer = consumer_name();
    tracing::info!(source = %label, view = %view.name, group = %group, consumer = %consumer, "consuming");
    // Pending entries of this consumer first (id 0), then others' stale ones, then new ones (>).
    let mut own_pending = true;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let entries: Vec<StreamId> = if own_pending {
            let reply: StreamReadReply = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(group)
                .arg(&consumer)
                .arg("COUNT")
                .arg(spec.batch)
                .arg("STREAMS")
                .arg(stream)
                .arg("0")
                .query_async(&mut con)
                .await
                .map_err(|e| format!("XREADGROUP: {e}"))?;
            let ids: Vec<StreamId> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
            if ids.is_empty() {
                own_pending = false;
                let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                    .arg(stream)
                    .arg(group)
                    .arg(&consumer)
                    .arg(CLAIM_IDLE_MS)
                    .arg("0")
                    .arg("COUNT")
                    .arg(spec.batch)
                    .query_async(&mut con)
                    .await
                    .map_err(|e| format!("XAUTOCLAIM: {e}"))?;
                claimed.claimed
            } else {
                ids
            }
        } else {
            let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(group)
                .arg(&consumer)
                .arg("COUNT")
                .arg(spec.batch)
                .arg("BLOCK")
                .arg(BLOCK_MS)
                .arg("STREAMS")
                .arg(stream)
                .arg(">")
                .query_async(&mut con)
                .await
                .map_err(|e| format!("XREADGROUP: {e}"))?;
            reply.map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect()).unwrap_or_default()
        };
        if entries.is_empty() {
            continue;
        }
        let payloads: Vec<Vec<u8>> = entries.iter().map(|e| entry_json(view, e)).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let decoded = read(store, &label, view, &refs);
        let bad = decoded.bad;
        write(store, view, &label, decoded.items).await?;
        if !bad.is_empty() {
            let mut pipe = redis::pipe();
            for (i, reason) in &bad {
                let body = dead_letter_body(&view.name, &label, reason, &payloads[*i]);
                pipe.cmd("XADD").arg(&spec.dead_letter).arg("*").arg("id").arg(&entries[*i].id).arg("json").arg(body);
            }
            let () =
                pipe.query_async(&mut con).await.map_err(|e| format!("dead letter to {}: {e}", spec.dead_letter))?;
        }
        let mut ack = redis::cmd("XACK");
        ack.arg(stream).arg(group);
        for e in &entries {
            ack.arg(&e.id);
        }
        let _: i64 = ack.query_async(&mut con).await.map_err(|e| format!("XACK: {e}"))?;
        let info: Result<StreamInfoGroupsReply, _> =
            redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(&mut con).await;
        if let Some(lag) = info.ok().and_then(|i| i.groups.into_iter().find(|g| &g.name == group)).and_then(|g| g.lag) {
            store.metrics.stream_lag_messages.with_label_values(&[label.as_str()]).set(lag as i64);
        }
    }
}

/// A stable name, so a restarted server finds its own pending entries.
/// The entry as a JSON object: its `json`/`data`/`payload` field, or its fields typed by the view.
fn entry_json(view: &FeatureView, entry: &StreamId) -> Vec<u8> {
    let text = |v: &redis::Value| -> Option<String> {
        match v {
            redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            redis::Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        }
    };
    for key in ["json", "data", "payload"] {
        if let Some(v) = entry.map.get(key).and_then(text) {
            return v.into_bytes();
        }
    }
    let mut object = serde_json::Map::new();
    for (field, value) in &entry.map {
        let Some(s) = text(value) else { continue };
        let declared = view
            .join_keys
            .iter()
            .map(|(k, t)| (k.as_str(), *t))
            .chain(view.features.iter().map(|f| (f.name.as_str(), f.dtype)))
            .find(|(n, _)| *n == field)
            .map(|(_, t)| t);
        // Text fields of numeric or boolean columns are read as JSON literals.
        let json = match declared {
            Some(ValueType::String | ValueType::Bytes | ValueType::UnixTimestamp) | None => {
                serde_json::Value::String(s)
            }
            Some(_) => serde_json::from_str(&s).unwrap_or(serde_json::Value::String(s)),
        };
        object.insert(field.clone(), json);
    }
    serde_json::Value::Object(object).to_string().into_bytes()
}
