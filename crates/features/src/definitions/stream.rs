//! A feature view's `stream = { type = ..., ... }` declaration.

use std::collections::BTreeMap;
use std::time::Duration;

/// How long NATS waits for the acknowledgement of a fetched message before it delivers it
/// again: the bound on how stale a key can be after its consumer is killed (plus a restart).
pub const DEFAULT_NATS_ACK_WAIT: Duration = Duration::from_secs(10);

/// Where a view's stream rows come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamSource {
    /// NATS JetStream: a durable pull consumer on `subject` (the stream holding it is created when absent).
    /// Messages a consumer fetched and did not acknowledge (it died) are delivered again after
    /// `ack_wait` (setting `ack_wait`, default [`DEFAULT_NATS_ACK_WAIT`]).
    Nats { url: String, subject: String, stream: String, durable: String, ack_wait: std::time::Duration },
    /// Redis Streams: XREADGROUP on `stream` in consumer group `group`.
    Redis { url: String, stream: String, group: String },
    /// Kafka: a consumer group on `topic`.
    Kafka { brokers: String, topic: String, group: String },
    /// RabbitMQ: a consumer with manual acks on the durable `queue` (declared when absent).
    Rabbitmq { url: String, queue: String },
    /// PostgreSQL logical replication of `table` (change data capture): an exported-snapshot
    /// copy, then `pgoutput` changes from `slot` over `publication`.
    Postgres {
        url: String,
        table: String,
        slot: String,
        publication: String,
        /// WAL the slot may hold back (bytes) before the warning metric turns on.
        max_lag_bytes: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    pub source: StreamSource,
    /// Where bad messages go, with their reason (a subject, stream key or topic).
    pub dead_letter: String,
    /// Most messages written to the online store in one durable write.
    pub batch: usize,
}

impl StreamSpec {
    pub(super) fn parse(view: &str, table: &BTreeMap<String, toml::Value>) -> Result<Self, String> {
        let get = |key: &str| -> Result<Option<String>, String> {
            match table.get(key) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(format!("feature view '{view}': stream {key} must be a string, not {other}")),
            }
        };
        let need = |key: &str| -> Result<String, String> {
            get(key)?.ok_or_else(|| format!("feature view '{view}': stream needs '{key}'"))
        };
        let kind = need("type")?;
        let (source, allowed, default_dead): (StreamSource, &[&str], String) = match kind.as_str() {
            "nats" => {
                let subject = need("subject")?;
                let dead = format!("{subject}.dead_letter");
                let source = StreamSource::Nats {
                    url: get("url")?.unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
                    stream: get("stream")?
                        .unwrap_or_else(|| format!("FLOTILLA_{}", view.to_uppercase().replace('-', "_"))),
                    durable: get("durable")?.unwrap_or_else(|| format!("flotilla-{view}")),
                    subject,
                    ack_wait: match get("ack_wait")? {
                        None => DEFAULT_NATS_ACK_WAIT,
                        Some(text) => {
                            let micros = crate::duration::parse_micros(&text)
                                .map_err(|e| format!("feature view '{view}': stream ack_wait: {e}"))?;
                            if !(1_000_000..=3_600_000_000).contains(&micros) {
                                return Err(format!(
                                    "feature view '{view}': stream ack_wait must be from 1s to 1h, not '{text}'"
                                ));
                            }
                            Duration::from_micros(micros as u64)
                        }
                    },
                };
                (source, &["url", "subject", "stream", "durable", "ack_wait"], dead)
            }
            "redis" => {
                let stream = need("stream")?;
                let dead = format!("{stream}:dead_letter");
                let source = StreamSource::Redis {
                    url: get("url")?.unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
                    group: get("group")?.unwrap_or_else(|| "flotilla".into()),
                    stream,
                };
                (source, &["url", "stream", "group"], dead)
            }
            "kafka" => {
                let topic = need("topic")?;
                let dead = format!("{topic}.dead_letter");
                let source = StreamSource::Kafka {
                    brokers: get("brokers")?.unwrap_or_else(|| "127.0.0.1:9092".into()),
                    group: get("group")?.unwrap_or_else(|| "flotilla".into()),
                    topic,
                };
                (source, &["brokers", "topic", "group"], dead)
            }
            "rabbitmq" => {
                let queue = need("queue")?;
                let dead = format!("{queue}.dead_letter");
                let url = get("url")?.unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
                (StreamSource::Rabbitmq { url, queue }, &["url", "queue"], dead)
            }
            "postgres" => {
                let max_lag_mb = match table.get("max_lag_mb") {
                    None => 1024,
                    Some(toml::Value::Integer(n)) if *n >= 1 => *n as u64,
                    Some(other) => {
                        return Err(format!(
                            "feature view '{view}': stream max_lag_mb must be a positive integer, not {other}"
                        ))
                    }
                };
                // Slot and publication names: lower-case letters, digits and underscores.
                let name =
                    format!("flotilla_{}", view.to_lowercase().replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
                let slot = get("slot")?.unwrap_or_else(|| name.clone());
                let valid = |n: &str| {
                    !n.is_empty()
                        && n.len() <= 63
                        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                };
                if !valid(&slot) {
                    return Err(format!(
                        "feature view '{view}': stream slot '{slot}' must be 1 to 63 lower-case letters, digits or underscores"
                    ));
                }
                let source = StreamSource::Postgres {
                    url: get("url")?.unwrap_or_else(|| "postgresql://postgres@127.0.0.1:5432/postgres".into()),
                    slot,
                    publication: get("publication")?.unwrap_or(name),
                    max_lag_bytes: max_lag_mb << 20,
                    table: need("table")?,
                };
                (source, &["url", "table", "slot", "publication", "max_lag_mb"], String::new())
            }
            other => {
                return Err(format!(
                    "feature view '{view}': stream type '{other}' is not one of nats, redis, kafka, rabbitmq, postgres"
                ));
            }
        };
        for key in table.keys() {
            if !(allowed.contains(&key.as_str()) || ["type", "dead_letter", "batch"].contains(&key.as_str())) {
                return Err(format!(
                    "feature view '{view}': unknown stream setting '{key}' for type {kind} (allowed: type, {}, dead_letter, batch)",
                    allowed.join(", ")
                ));
            }
        }
        let batch = match table.get("batch") {
            None => 512,
            Some(toml::Value::Integer(n)) if (1..=100_000).contains(n) => *n as usize,
            Some(other) => return Err(format!("feature view '{view}': stream batch must be 1..=100000, not {other}")),
        };
        Ok(Self { source, dead_letter: get("dead_letter")?.unwrap_or(default_dead), batch })
    }

    /// The same source under its own consumer identity `id` (a fleet worker with an online store
    /// of its own must read the whole stream, not share it with the others): NATS durable,
    /// Redis and Kafka consumer groups, and PostgreSQL replication slots get `-<id>` (`_<id>` for
    /// slots, which allow only lowercase letters, digits and `_`). A RabbitMQ queue is one
    /// work queue whatever the consumer: it stays as it is (see [`StreamSpec::shared_by_consumers`]).
    pub fn for_consumer(&self, id: &str) -> StreamSpec {
        let mut spec = self.clone();
        match &mut spec.source {
            StreamSource::Nats { durable, .. } => *durable = format!("{durable}-{id}"),
            StreamSource::Redis { group, .. } | StreamSource::Kafka { group, .. } => *group = format!("{group}-{id}"),
            StreamSource::Postgres { slot, .. } => {
                let clean: String =
                    id.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
                let mut named = format!("{slot}_{clean}");
                named.truncate(63);
                *slot = named;
            }
            StreamSource::Rabbitmq { .. } => {}
        }
        spec
    }

    /// Whether consumers with different identities still share the messages (each gets part).
    pub fn shared_by_consumers(&self) -> bool {
        matches!(self.source, StreamSource::Rabbitmq { .. })
    }

    /// A short name for logs and metric labels (`nats:features.card_txn_1h`).
    pub fn label(&self) -> String {
        match &self.source {
            StreamSource::Nats { subject, .. } => format!("nats:{subject}"),
            StreamSource::Redis { stream, .. } => format!("redis:{stream}"),
            StreamSource::Kafka { topic, .. } => format!("kafka:{topic}"),
            StreamSource::Rabbitmq { queue, .. } => format!("rabbitmq:{queue}"),
            StreamSource::Postgres { table, .. } => format!("postgres:{table}"),
        }
    }
}
