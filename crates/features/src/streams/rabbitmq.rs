//! RabbitMQ: a consumer with manual acks on a durable queue, a batch acknowledged (one
//! `multiple` ack) after the rows it carried are durable. Deliveries still unacknowledged when
//! the connection ends (a crash, a kill) go back to the queue and are read again; rewriting them
//! changes nothing. Bad messages go to a durable dead-letter queue through the default exchange,
//! each publish confirmed by the broker before the batch is acknowledged.

use super::{dead_letter_body, read, write, ConsumerError};
use crate::definitions::{StreamSource, StreamSpec};
use crate::feature_store::FeatureStore;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind};
use tokio::sync::watch;

/// AMQP delivery mode 2: the broker keeps the message on disk (in a durable queue).
const PERSISTENT: u8 = 2;

consumer! {
    /// A RabbitMQ queue.
    Rabbitmq
}

/// Consumes until `stop` turns true.
async fn run(
    store: &FeatureStore,
    view_index: usize,
    spec: &StreamSpec,
    stop: watch::Receiver<bool>,
) -> Result<(), ConsumerError> {
    let StreamSource::Rabbitmq { url, queue } = &spec.source else {
        return Err(ConsumerError::stop("not a RabbitMQ source"));
    };
    let shown = flotilla_core::secret::redact_url(url);
    let uri: AMQPUri = url
        .parse()
        .map_err(|e: String| ConsumerError::stop(format!("RabbitMQ url {shown}: {}", e.replace(url, &shown))))?;
    let connection = Connection::connect_uri(uri, ConnectionProperties::default())
        .await
        .map_err(|e| classify(format!("cannot connect to {shown}"), &e))?;
    let result = consume(store, view_index, spec, queue, &connection, stop).await;
    // The broker puts deliveries not yet acknowledged back in the queue.
    let _ = connection.close(200, "consumer stopped".into()).await;
    result
}

async fn consume(
    store: &FeatureStore,
    view_index: usize,
    spec: &StreamSpec,
    queue: &str,
    connection: &Connection,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ConsumerError> {
    let view = &store.registry.views[view_index];
    let label = spec.label();
    let lag = store.metrics.stream_lag_messages.with_label_values(&[label.as_str()]);
    lag.set(i64::from(ensure_queue(connection, queue).await?));
    ensure_queue(connection, &spec.dead_letter).await?;
    let channel = connection.create_channel().await.map_err(|e| format!("open a channel: {e}"))?;
    channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| format!("publisher confirms: {e}"))?;
    let prefetch = u16::try_from(spec.batch).unwrap_or(u16::MAX);
    channel.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(|e| format!("prefetch: {e}"))?;
    let manual_acks = BasicConsumeOptions { no_ack: false, ..Default::default() };
    let mut consumer = channel
        .basic_consume(queue.into(), super::consumer_name().into(), manual_acks, FieldTable::default())
        .await
        .map_err(|e| format!("consume from '{queue}': {e}"))?;
    // Logged once the consumer exists (tests and operators wait for this line).
    tracing::info!(source = %label, view = %view.name, "consuming");
    loop {
        let first = tokio::select! {
            d = consumer.next() => d,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        // One delivery waited for, then whatever else is already delivered, up to a batch.
        let mut batch = Vec::with_capacity(spec.batch);
        let mut next = Some(first);
        while let Some(delivery) = next {
            match delivery {
                Some(Ok(d)) => batch.push(d),
                Some(Err(e)) => return Err(classify(format!("consume from '{queue}'"), &e)),
                None => return Err(format!("the broker cancelled the consumer on '{queue}'").into()),
            }
            next = if batch.len() < spec.batch { consumer.next().now_or_never() } else { None };
        }
        let payloads: Vec<&[u8]> = batch.iter().map(|d| d.data.as_slice()).collect();
        let decoded = read(store, &label, view, &payloads);
        let bad = decoded.bad;
        write(store, view, &label, decoded.items).await?;
        for (i, reason) in &bad {
            let body = dead_letter_body(&view.name, &label, reason, payloads[*i]);
            dead_letter(&channel, &spec.dead_letter, &body).await?;
        }
        let Some(last) = batch.last().map(|d| d.delivery_tag) else { continue };
        channel.basic_ack(last, BasicAckOptions { multiple: true }).await.map_err(|e| format!("ack: {e}"))?;
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        if let Ok(q) = channel.queue_declare(queue.into(), passive, FieldTable::default()).await {
            lag.set(i64::from(q.message_count()));
        }
    }
}

/// Publishes one dead letter, persistent, and waits for the broker to confirm it.
async fn dead_letter(channel: &Channel, dead_letter: &str, body: &[u8]) -> Result<(), String> {
    let properties = BasicProperties::default().with_delivery_mode(PERSISTENT);
    // Mandatory: a message no queue takes comes back rather than vanishing.
    let options = BasicPublishOptions { mandatory: true, ..Default::default() };
    let confirmation = channel
        .basic_publish("".into(), dead_letter.into(), options, body, properties)
        .await
        .map_err(|e| format!("dead letter to '{dead_letter}': {e}"))?
        .await
        .map_err(|e| format!("dead letter to '{dead_letter}': {e}"))?;
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(format!("dead letter to '{dead_letter}': no such queue")),
        Confirmation::Nack(_) => Err(format!("dead letter to '{dead_letter}': the broker refused it")),
        Confirmation::NotRequested => Err("dead letters need publisher confirms".into()),
    }
}

/// Declares the queue durable unless it exists; an existing queue is used as it is (declaring
/// it with other arguments than it has would fail). Returns the messages ready in it.
async fn ensure_queue(connection: &Connection, name: &str) -> Result<u32, ConsumerError> {
    // A passive declare of a missing queue closes its channel, hence a channel of its own.
    let probe = connection.create_channel().await.map_err(|e| format!("open a channel: {e}"))?;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let options = match probe.queue_declare(name.into(), passive, FieldTable::default()).await {
        Ok(q) => {
            let _ = probe.close(200, "declared".into()).await;
            return Ok(q.message_count());
        }
        Err(e) if is_not_found(&e) => QueueDeclareOptions::durable(),
        Err(e) => return Err(classify(format!("queue '{name}'"), &e)),
    };
    let channel = connection.create_channel().await.map_err(|e| format!("open a channel: {e}"))?;
    let q = channel
        .queue_declare(name.into(), options, FieldTable::default())
        .await
        .map_err(|e| classify(format!("cannot declare queue '{name}'"), &e))?;
    let _ = channel.close(200, "declared".into()).await;
    tracing::info!(queue = name, "declared a durable RabbitMQ queue");
    Ok(q.message_count())
}

/// A refusal the broker will give again (credentials, permissions, a queue declared with other
/// arguments) stops the consumer; anything else (a broker down, a connection lost) is retried.
fn classify(what: String, e: &lapin::Error) -> ConsumerError {
    let message = format!("{what}: {e}");
    match e.kind() {
        ErrorKind::ProtocolError(p)
            if matches!(
                p.kind(),
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED | AMQPSoftError::PRECONDITIONFAILED)
                    | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
            ) =>
        {
            ConsumerError::Stop(message)
        }
        ErrorKind::AuthProviderError(_) | ErrorKind::InvalidProtocolVersion(_) => ConsumerError::Stop(message),
        _ => ConsumerError::Retry(message),
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(p) if *p.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
}
