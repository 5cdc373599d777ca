//! NATS JetStream: a durable pull consumer with explicit acks, acknowledged after the write.

use super::{dead_letter_body, read, write, ConsumerError};
use crate::definitions::{StreamSource, StreamSpec};
use crate::feature_store::FeatureStore;
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, stream};
use async_nats::ConnectErrorKind;
use futures::StreamExt;
use std::time::Duration;
use tokio::sync::watch;

/// How long one fetch waits for messages before checking for shutdown.
const FETCH_WAIT: Duration = Duration::from_millis(500);

consumer! {
    /// A NATS JetStream source.
    Nats
}

/// Consumes until `stop` turns true.
async fn run(
    store: &FeatureStore,
    view_index: usize,
    spec: &StreamSpec,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ConsumerError> {
    let StreamSource::Nats { url, subject, stream: stream_name, durable, ack_wait } = &spec.source else {
        return Err(ConsumerError::stop("not a NATS source"));
    };
    let view = &store.registry.views[view_index];
    let label = spec.label();
    let client = async_nats::connect(url.as_str()).await.map_err(|e| {
        let message = format!("cannot connect to {}: {e}", flotilla_core::secret::redact_url(url));
        // Credentials, TLS settings or a URL that are wrong stay wrong; a server down comes back.
        match e.kind() {
            ConnectErrorKind::Authentication
            | ConnectErrorKind::AuthorizationViolation
            | ConnectErrorKind::ServerParse
            | ConnectErrorKind::Tls => ConsumerError::Stop(message),
            _ => ConsumerError::Retry(message),
        }
    })?;
    let js = jetstream::new(client);
    let stream = ensure_stream(&js, stream_name, subject).await?;
    ensure_stream(&js, &format!("{stream_name}_DEAD_LETTER"), &spec.dead_letter).await?;
    // Created, or updated to these settings when it exists (a changed ack_wait takes effect).
    let consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .create_consumer(pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: subject.clone(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: *ack_wait,
            max_ack_pending: (spec.batch * 4) as i64,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("consumer '{durable}' on {subject}: {e}"))?;
    // Logged once the durable consumer exists (tests and operators wait for this line).
    tracing::info!(source = %label, view = %view.name, durable = %durable, "consuming");
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let fetch = consumer.fetch().max_messages(spec.batch).expires(FETCH_WAIT).messages();
        let mut batch = tokio::select! {
            b = fetch => b.map_err(|e| format!("fetch: {e}"))?,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        let mut messages = Vec::with_capacity(spec.batch);
        while let Some(m) = batch.next().await {
            messages.push(m.map_err(|e| format!("fetch: {e}"))?);
        }
        if messages.is_empty() {
            continue;
        }
        let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_ref()).collect();
        let decoded = read(store, &label, view, &payloads);
        let bad = decoded.bad;
        write(store, view, &label, decoded.items).await?;
        for (i, reason) in &bad {
            let body = dead_letter_body(&view.name, &label, reason, payloads[*i]);
            js.publish(spec.dead_letter.clone(), body.into())
                .await
                .map_err(|e| format!("dead letter to {}: {e}", spec.dead_letter))?
                .await
                .map_err(|e| format!("dead letter to {}: {e}", spec.dead_letter))?;
        }
        for m in &messages {
            m.ack().await.map_err(|e| format!("ack: {e}"))?;
        }
        if let Some(pending) = messages.last().and_then(|m| m.info().ok()).map(|i| i.pending) {
            store.metrics.stream_lag_messages.with_label_values(&[label.as_str()]).set(pending as i64);
        }
    }
}

/// The stream that holds `subject`: an existing one, or `name` created for it.
async fn ensure_stream(js: &jetstream::Context, name: &str, subject: &str) -> Result<stream::Stream, String> {
    if let Ok(existing) = js.stream_by_subject(subject).await {
        return js.get_stream(&existing).await.map_err(|e| format!("stream '{existing}': {e}"));
    }
    let config = stream::Config { name: name.to_string(), subjects: vec![subject.to_string()], ..Default::default() };
    js.get_or_create_stream(config).await.map_err(|e| format!("cannot create stream '{name}' for {subject}: {e}"))
}
