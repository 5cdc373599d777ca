//! The feature store's Prometheus metrics, registered in the server's one registry.

use flotilla_core::metrics::{counter, float_gauge, gauge, histogram};
use prometheus::{GaugeVec, HistogramVec, IntCounterVec, IntGaugeVec, Registry};

#[derive(Clone)]
pub struct FeatureMetrics {
    /// Feature values served, by view and status (PRESENT, NOT_FOUND, OUTSIDE_MAX_AGE, NULL_VALUE).
    pub values_served: IntCounterVec,
    /// Online-store read duration by store kind (one call may read many entities).
    pub read_duration: HistogramVec,
    /// Time request-time enrichment added to an inference request, per model.
    pub enrich_duration: HistogramVec,
    /// Time graph models' inputs took per request, by model and phase (`fetch`: edge lists and
    /// sampling; `gather`: node features and tensors).
    pub graph_duration: HistogramVec,
    /// Rows offered to the online store, by view, source and outcome (`applied` / `stale`).
    pub rows_written: IntCounterVec,
    /// Stream messages by source and outcome (`ok` / `dead_letter`).
    pub stream_messages: IntCounterVec,
    /// Messages waiting in the stream for this consumer (when the source reports it).
    pub stream_lag_messages: IntGaugeVec,
    /// Seconds between the event time of the last applied message and its application.
    pub stream_lag_seconds: GaugeVec,
    /// Connection or consumer errors by source (the consumer retries).
    pub stream_errors: IntCounterVec,
    /// Database changes (insert, update, delete, truncate) applied, by source; restored from the
    /// store's checkpoint at start, so it counts every change ever applied exactly once.
    pub cdc_changes: IntCounterVec,
    /// Rows copied by initial snapshots, by source.
    pub cdc_snapshot_rows: IntCounterVec,
    /// WAL bytes between the server's end and what is durable here.
    pub cdc_lag_bytes: IntGaugeVec,
    /// Seconds from the commit of the newest applied change to its visibility (0 when caught up).
    pub cdc_lag_seconds: GaugeVec,
    /// Commit-to-visible latency of each applied transaction.
    pub cdc_visibility: HistogramVec,
    /// WAL the replication slot holds back on the server (bytes since its restart LSN).
    pub cdc_slot_retained_bytes: IntGaugeVec,
    /// 1 while the slot holds back more WAL than the view's `max_lag_mb`.
    pub cdc_slot_lag_warning: IntGaugeVec,
    /// Column values that could not be read (stored as missing), by source.
    pub cdc_bad_values: IntCounterVec,
    /// The newest event time this process wrote to each view, unix seconds (freshness:
    /// `time() - flotilla_feature_view_newest_event_timestamp_seconds`).
    pub view_newest_event: GaugeVec,
}

impl FeatureMetrics {
    pub fn new(registry: &Registry) -> Self {
        let m = Self {
            values_served: counter(
                "flotilla_feature_values_served_total",
                "Feature values served online, by view and status.",
                &["view", "status"],
            ),
            read_duration: histogram(
                "flotilla_feature_read_duration_seconds",
                "Online store read duration, seconds.",
                &["store"],
            ),
            enrich_duration: histogram(
                "flotilla_feature_enrich_duration_seconds",
                "Request-time feature enrichment duration per model, seconds.",
                &["model"],
            ),
            graph_duration: histogram(
                "flotilla_graph_input_duration_seconds",
                "Time building a graph model's inputs per request, by model and phase (fetch, gather), seconds.",
                &["model", "phase"],
            ),
            rows_written: counter(
                "flotilla_feature_rows_written_total",
                "Rows offered to the online store, by view, source and outcome (applied or stale).",
                &["view", "source", "outcome"],
            ),
            stream_messages: counter(
                "flotilla_feature_stream_messages_total",
                "Stream messages by source and outcome (ok or dead_letter).",
                &["source", "outcome"],
            ),
            stream_lag_messages: gauge(
                "flotilla_feature_stream_lag_messages",
                "Messages waiting in the stream for this consumer.",
                &["source"],
            ),
            stream_lag_seconds: float_gauge(
                "flotilla_feature_stream_lag_seconds",
                "Seconds from the last applied message's event time to its application.",
                &["source"],
            ),
            stream_errors: counter(
                "flotilla_feature_stream_errors_total",
                "Stream connection or consumer errors by source (the consumer retries).",
                &["source"],
            ),
            cdc_changes: counter(
                "flotilla_feature_cdc_changes_applied_total",
                "Database changes applied to the online store, by source (restored from the checkpoint at start).",
                &["source"],
            ),
            cdc_snapshot_rows: counter(
                "flotilla_feature_cdc_snapshot_rows_total",
                "Rows copied by initial snapshots, by source.",
                &["source"],
            ),
            cdc_lag_bytes: gauge(
                "flotilla_feature_cdc_lag_bytes",
                "WAL bytes between the database's current end and what is durable in the online store.",
                &["source"],
            ),
            cdc_lag_seconds: float_gauge(
                "flotilla_feature_cdc_lag_seconds",
                "Seconds from the commit of the newest applied change to its visibility (0 when caught up).",
                &["source"],
            ),
            cdc_visibility: histogram(
                "flotilla_feature_cdc_visibility_seconds",
                "Commit-to-visible latency of applied transactions, seconds.",
                &["source"],
            ),
            cdc_slot_retained_bytes: gauge(
                "flotilla_feature_cdc_slot_retained_bytes",
                "WAL the replication slot holds back on the database server, bytes.",
                &["source", "slot"],
            ),
            cdc_slot_lag_warning: gauge(
                "flotilla_feature_cdc_slot_lag_warning",
                "1 while the replication slot holds back more WAL than the view's max_lag_mb.",
                &["source", "slot"],
            ),
            cdc_bad_values: counter(
                "flotilla_feature_cdc_bad_values_total",
                "Column values that could not be read as their feature type (stored as missing), by source.",
                &["source"],
            ),
            view_newest_event: float_gauge(
                "flotilla_feature_view_newest_event_timestamp_seconds",
                "The newest event time written to the view by this process, unix seconds (freshness: time() minus this).",
                &["view"],
            ),
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.values_served.clone()),
            Box::new(m.view_newest_event.clone()),
            Box::new(m.read_duration.clone()),
            Box::new(m.enrich_duration.clone()),
            Box::new(m.graph_duration.clone()),
            Box::new(m.rows_written.clone()),
            Box::new(m.stream_messages.clone()),
            Box::new(m.stream_lag_messages.clone()),
            Box::new(m.stream_lag_seconds.clone()),
            Box::new(m.stream_errors.clone()),
            Box::new(m.cdc_changes.clone()),
            Box::new(m.cdc_snapshot_rows.clone()),
            Box::new(m.cdc_lag_bytes.clone()),
            Box::new(m.cdc_lag_seconds.clone()),
            Box::new(m.cdc_visibility.clone()),
            Box::new(m.cdc_slot_retained_bytes.clone()),
            Box::new(m.cdc_slot_lag_warning.clone()),
            Box::new(m.cdc_bad_values.clone()),
        ];
        for c in collectors {
            // A second FeatureMetrics on the same registry (tests) shares the first's series.
            let _ = registry.register(c);
        }
        m
    }
}
