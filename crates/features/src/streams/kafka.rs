//! Kafka: a consumer in a consumer group, offsets committed only after the rows they carried
//! are durable (auto-commit and auto offset store are off). After a crash the group resumes
//! from the last commit, so a message is read again rather than lost; writes are idempotent.
//! The topic and its dead-letter topic are created (broker defaults) when they do not exist.

use super::{dead_letter_body, read, write, ConsumerError};
use crate::definitions::{StreamSource, StreamSpec};
use crate::feature_store::FeatureStore;
use futures::FutureExt;
use prometheus::IntGauge;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, Statistics, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long broker requests (metadata, topic creation, dead-letter sends) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

consumer! {
    /// A Kafka topic read by a consumer group.
    Kafka
}

/// Consumes until `stop` turns true.
async fn run(
    store: &FeatureStore,
    view_index: usize,
    spec: &StreamSpec,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ConsumerError> {
    let StreamSource::Kafka { brokers, topic, group } = &spec.source else {
        return Err(ConsumerError::stop("not a Kafka source"));
    };
    let view = &store.registry.views[view_index];
    let label = spec.label();
    ensure_topics(brokers, &[topic, &spec.dead_letter]).await?;
    let context = Context {
        topic: topic.clone(),
        lag: Some(store.metrics.stream_lag_messages.with_label_values(&[label.as_str()])),
    };
    let consumer: StreamConsumer<Context> = client_config(brokers)
        .set("group.id", group)
        .set("client.id", super::consumer_name())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "2000")
        .set("statistics.interval.ms", "1000")
        .create_with_context(context)
        .map_err(|e| ConsumerError::stop(format!("Kafka consumer for {brokers}: {e}")))?;
    let consumer = Arc::new(consumer);
    consumer.subscribe(&[topic.as_str()]).map_err(|e| format!("subscribe to {topic}: {e}"))?;
    let producer: FutureProducer<Context> = client_config(brokers)
        .set("message.timeout.ms", REQUEST_TIMEOUT.as_millis().to_string())
        .create_with_context(Context { topic: spec.dead_letter.clone(), lag: None })
        .map_err(|e| ConsumerError::stop(format!("Kafka producer for {brokers}: {e}")))?;
    tracing::info!(source = %label, view = %view.name, group = %group, "consuming");
    loop {
        let first = tokio::select! {
            m = consumer.recv() => m,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        // One message waited for, then whatever else is already fetched, up to a batch.
        let mut batch = Vec::with_capacity(spec.batch);
        let mut next = Some(first);
        while let Some(received) = next {
            match received {
                Ok(m) => batch.push((m.partition(), m.offset(), m.payload().unwrap_or_default().to_vec())),
                Err(e) => consumer_error(store, &label, e)?,
            }
            next = if batch.len() < spec.batch { consumer.recv().now_or_never() } else { None };
        }
        if batch.is_empty() {
            continue;
        }
        let payloads: Vec<&[u8]> = batch.iter().map(|(_, _, p)| p.as_slice()).collect();
        let decoded = read(store, &label, view, &payloads);
        let bad = decoded.bad;
        write(store, view, &label, decoded.items).await?;
        for (i, reason) in &bad {
            let (partition, offset, _) = &batch[*i];
            let source = format!("{label} partition {partition} offset {offset}");
            let body = dead_letter_body(&view.name, &source, reason, payloads[*i]);
            producer
                .send(FutureRecord::<(), _>::to(&spec.dead_letter).payload(&body), REQUEST_TIMEOUT)
                .await
                .map_err(|(e, _)| format!("dead letter to {}: {e}", spec.dead_letter))?;
        }
        commit(store, &label, &consumer, topic, &batch).await;
    }
}

/// Commits, per partition, the offset after the last message of the batch. A failed commit
/// (say, the partition moved to another consumer in a rebalance) is logged and counted: the
/// messages are read again by whoever owns the partition, and rewriting them changes nothing.
async fn commit(
    store: &FeatureStore,
    label: &str,
    consumer: &Arc<StreamConsumer<Context>>,
    topic: &str,
    batch: &[(i32, i64, Vec<u8>)],
) {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for (partition, offset, _) in batch {
        let entry = next.entry(*partition).or_insert(0);
        *entry = (*entry).max(offset + 1);
    }
    let mut offsets = TopicPartitionList::new();
    for (partition, offset) in next {
        if let Err(e) = offsets.add_partition_offset(topic, partition, Offset::Offset(offset)) {
            tracing::warn!(source = label, error = %e, "cannot record a Kafka offset to commit");
        }
    }
    let consumer = consumer.clone();
    let result = tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync)).await;
    let error = match result {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    store.metrics.stream_errors.with_label_values(&[label]).inc();
    tracing::warn!(source = label, error, "Kafka offset commit failed; the batch will be read again");
}

/// Transient consumer errors are librdkafka's to recover from (it reconnects and rejoins);
/// they are counted and logged. A fatal client error is retried with a new client; an unusable
/// configuration or a refused authorisation stops this consumer.
fn consumer_error(store: &FeatureStore, label: &str, e: KafkaError) -> Result<(), ConsumerError> {
    store.metrics.stream_errors.with_label_values(&[label]).inc();
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::Fatal) => Err(format!("Kafka consumer: {e}").into()),
        Some(
            RDKafkaErrorCode::InvalidConfig
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed,
        ) => Err(ConsumerError::stop(format!("Kafka consumer: {e}"))),
        _ => {
            tracing::warn!(source = label, error = %e, "Kafka consumer error");
            Ok(())
        }
    }
}

fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers).set_log_level(RDKafkaLogLevel::Warning);
    config
}

/// A producer of one topic (the payload log's Kafka sink); the topic is created when absent.
pub struct TopicProducer {
    producer: rdkafka::producer::BaseProducer,
    topic: String,
}

impl TopicProducer {
    pub async fn connect(brokers: &str, topic: &str) -> Result<Self, String> {
        ensure_topics(brokers, &[topic]).await.map_err(|e| e.to_string())?;
        let producer = client_config(brokers)
            .set("linger.ms", "20")
            .set("message.timeout.ms", "30000")
            .create()
            .map_err(|e| format!("Kafka producer for {brokers}: {e}"))?;
        Ok(Self { producer, topic: topic.to_string() })
    }

    /// Queues one message (sent in the background); an error when the producer's queue is full.
    pub fn send(&self, key: &str, payload: &[u8]) -> Result<(), String> {
        use rdkafka::producer::BaseRecord;
        let sent =
            self.producer.send(BaseRecord::to(&self.topic).key(key).payload(payload)).map_err(|(e, _)| e.to_string());
        self.producer.poll(Duration::ZERO);
        sent
    }

    /// Waits until queued messages are delivered (or `timeout`).
    pub fn flush(&self, timeout: Duration) -> Result<(), String> {
        use rdkafka::producer::Producer;
        self.producer.flush(timeout).map_err(|e| e.to_string())
    }
}

/// Every message of `topic`, from the start of each partition to its end (partition by
/// partition, in offset order): how `flotilla replay` reads a payload log sent to Kafka. The end
/// is where each partition reported its end and then nothing more came for [`QUIET`] (a broker's
/// high watermark may lag what it serves). No consumer group offsets are read or committed.
/// Blocking.
pub fn read_topic(brokers: &str, topic: &str, timeout: Duration) -> Result<Vec<Vec<u8>>, String> {
    use rdkafka::consumer::BaseConsumer;
    use std::collections::BTreeSet;
    use std::time::Instant;
    let consumer: BaseConsumer<Context> = client_config(brokers)
        .set("group.id", "flotilla-replay")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create_with_context(Context { topic: topic.to_string(), lag: None })
        .map_err(|e| format!("Kafka client for {brokers}: {e}"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|e| format!("cannot reach Kafka at {brokers}: {e}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(format!("Kafka at {brokers} has no topic '{topic}'"));
    }
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        assignment.add_partition_offset(topic, *p, Offset::Beginning).map_err(|e| e.to_string())?;
    }
    consumer.assign(&assignment).map_err(|e| format!("{topic}: {e}"))?;
    let started = Instant::now();
    let mut last = Instant::now();
    let mut open: BTreeSet<i32> = partitions.into_iter().collect();
    let mut by_partition: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    while !open.is_empty() || last.elapsed() < QUIET {
        if started.elapsed() > timeout {
            return Err(format!("{topic}: not read to its end within {timeout:?} (partitions left: {open:?})"));
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                by_partition.entry(m.partition()).or_default().push(m.payload().unwrap_or_default().to_vec());
                last = Instant::now();
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => tracing::warn!(topic, error = %e, "Kafka read error; retrying"),
        }
    }
    Ok(by_partition.into_values().flatten().collect())
}

/// How long a topic read to its end waits for more messages.
const QUIET: Duration = Duration::from_secs(1);

/// Creates the topics that the broker does not know, with the broker's default partition
/// count and replication (`-1`), or one partition where the broker does not take defaults.
async fn ensure_topics(brokers: &str, topics: &[&str]) -> Result<(), ConsumerError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers)
        .create()
        .map_err(|e| ConsumerError::stop(format!("Kafka admin client for {brokers}: {e}")))?;
    let metadata = {
        let consumer: rdkafka::consumer::BaseConsumer = client_config(brokers)
            .create()
            .map_err(|e| ConsumerError::stop(format!("Kafka client for {brokers}: {e}")))?;
        tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, REQUEST_TIMEOUT))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot reach Kafka at {brokers}: {e}"))?
    };
    let missing: Vec<&str> =
        topics.iter().copied().filter(|t| !metadata.topics().iter().any(|m| m.name() == *t)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    for (partitions, replication) in [(-1, -1), (1, 1)] {
        let new: Vec<NewTopic> =
            missing.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replication))).collect();
        let results =
            admin.create_topics(&new, &options).await.map_err(|e| format!("create topics {missing:?}: {e}"))?;
        let failed: Vec<String> = results
            .into_iter()
            .filter_map(|r| match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => None,
                Err((topic, code)) => Some(format!("{topic}: {code}")),
            })
            .collect();
        if failed.is_empty() {
            tracing::info!(topics = ?missing, "created Kafka topics");
            return Ok(());
        }
        if partitions == 1 {
            // The broker refuses (a policy, a permission): it will refuse again.
            return Err(ConsumerError::stop(format!(
                "cannot create Kafka topics ({}); create them on the broker",
                failed.join(", ")
            )));
        }
    }
    Ok(())
}

/// librdkafka's callbacks: its log lines and errors go to `tracing`, its statistics to the lag gauge.
struct Context {
    topic: String,
    lag: Option<IntGauge>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, message),
            RDKafkaLogLevel::Info | RDKafkaLogLevel::Notice => tracing::info!(target: "librdkafka", facility, message),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, message),
            _ => tracing::error!(target: "librdkafka", facility, message),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition, which a topic read to its end asks to be told.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        tracing::warn!(target: "librdkafka", topic = %self.topic, %error, reason, "Kafka client error");
    }

    /// Messages behind: the broker's high watermark minus the group's committed offset, summed over partitions.
    fn stats(&self, statistics: Statistics) {
        let (Some(gauge), Some(topic)) = (&self.lag, statistics.topics.get(&self.topic)) else { return };
        let lags = topic.partitions.values().filter(|p| p.partition >= 0 && p.consumer_lag >= 0);
        gauge.set(lags.map(|p| p.consumer_lag).sum());
    }
}

impl ConsumerContext for Context {}
