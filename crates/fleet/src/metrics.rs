//! The router's fleet metrics, registered beside the protocol metrics (`flotilla_fleet_*`).

use flotilla_core::metrics::LATENCY_BUCKETS;
use flotilla_core::metrics::{counter, float_gauge, gauge, histogram};
use prometheus::{GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Registry};

#[derive(Clone)]
pub struct FleetMetrics {
    /// Attempts sent to workers by worker, model and outcome (`ok`, or the error kind).
    pub attempts: IntCounterVec,
    /// Router-side latency of one attempt, by worker.
    pub attempt_duration: HistogramVec,
    /// Retries by reason (the failed attempt's kind).
    pub retries: IntCounterVec,
    /// Retries refused because the budget was spent.
    pub retries_refused: IntCounterVec,
    /// Hedged copies sent, and how many answered first.
    pub hedges: IntCounterVec,
    pub hedge_wins: IntCounterVec,
    /// Requests the router shed because every eligible worker was saturated (429).
    pub shed: IntCounterVec,
    /// Workers taken out of rotation, by reason (`connection`, `failures`, `probe`).
    pub ejections: IntCounterVec,
    /// Members by capacity class and state.
    pub workers: IntGaugeVec,
    /// Requests outstanding on each worker.
    pub outstanding: IntGaugeVec,
    /// Capacity a worker advertised for a model, requests/s.
    pub capacity: GaugeVec,
    /// Preemption notice to drained, as workers report it, seconds.
    pub drain_seconds: Histogram,
    /// Requests by model, traffic arm (`stable`, `canary`, an A/B arm, `pinned`), version and outcome.
    pub arm_requests: IntCounterVec,
    /// Router latency by model and arm, seconds.
    pub arm_duration: HistogramVec,
    /// Canary state by model (0 waiting, 1 ramping, 2 promoted, 3 rolled back) and its share, percent.
    pub canary_state: IntGaugeVec,
    pub canary_percent: GaugeVec,
    /// Traffic-policy transitions by model and kind (`canary_rolled_back`, `rollout_shifted`, ...).
    pub transitions: IntCounterVec,
    /// Mirrored requests by model and outcome (`match`, `differ`, `error`, `skipped_busy`).
    pub shadow: IntCounterVec,
    /// Reads of the desired state (`fleet.toml`) by outcome (`applied`, `refused`).
    pub desired_reloads: IntCounterVec,
    /// 1 while the desired state on disk is valid (0: the router keeps the last good one).
    pub desired_valid: IntGaugeVec,
    /// Version loads and unloads the router asked of workers, by outcome.
    pub version_syncs: IntCounterVec,
    /// Requests answered, by model, capacity class and hardware kind of the worker that answered
    /// (the share served on opportunistic capacity is its `class="opportunistic"` part).
    pub served: IntCounterVec,
    /// Members by capacity class and hardware kind.
    pub workers_by_hardware: IntGaugeVec,
    /// Placement changes by model.
    pub placement_changes: IntCounterVec,
    /// Bytes the router served for the sync, by kind (`digest`, `assignment`, `manifest`, `blob`).
    pub sync_bytes: IntCounterVec,
    /// The fleet's drift alert state per model, version and column (0 ok, 1 moderate, 2 significant).
    pub drift_alert: IntGaugeVec,
    /// Fleet drift windows closed (each merges the windows its workers closed), by model and version.
    pub drift_windows: IntCounterVec,
    /// Fleet events by kind (`draining` is a preemption notice; see [`crate::events::Event`]).
    pub events: IntCounterVec,
    /// Fleet drift webhooks given up after their retries, by model.
    pub drift_webhook_failures: IntCounterVec,
}

impl FleetMetrics {
    pub fn new(registry: &Registry) -> Self {
        let m = Self {
            attempts: counter(
                "flotilla_fleet_attempts_total",
                "Requests the router sent to workers, by worker, model and outcome.",
                &["worker", "model", "outcome"],
            ),
            attempt_duration: histogram(
                "flotilla_fleet_attempt_duration_seconds",
                "Duration of one attempt on a worker as the router sees it, seconds.",
                &["worker"],
            ),
            retries: counter(
                "flotilla_fleet_retries_total",
                "Requests retried on another worker, by the failed attempt's reason.",
                &["reason"],
            ),
            retries_refused: counter(
                "flotilla_fleet_retries_refused_total",
                "Retries not made because the retry budget was spent.",
                &["model"],
            ),
            hedges: counter("flotilla_fleet_hedges_total", "Hedged copies sent to a second worker.", &["model"]),
            hedge_wins: counter(
                "flotilla_fleet_hedge_wins_total",
                "Hedged copies that answered before the first attempt.",
                &["model"],
            ),
            shed: counter(
                "flotilla_fleet_shed_total",
                "Requests answered 429 by the router because every eligible worker was saturated.",
                &["model"],
            ),
            ejections: counter(
                "flotilla_fleet_ejections_total",
                "Workers taken out of rotation, by reason.",
                &["reason"],
            ),
            workers: gauge(
                "flotilla_fleet_workers",
                "Workers the router knows, by capacity class and state.",
                &["class", "state"],
            ),
            outstanding: gauge(
                "flotilla_fleet_worker_outstanding",
                "Requests outstanding on the worker, sent by this router.",
                &["worker"],
            ),
            capacity: float_gauge(
                "flotilla_fleet_worker_capacity_rps",
                "Requests/s the worker measured it sustains for the model within its latency target.",
                &["worker", "model"],
            ),
            drain_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "flotilla_fleet_drain_seconds",
                    "Preemption notice to drained (no request left), as workers report it, seconds.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("static histogram definition is valid"),
            arm_requests: counter(
                "flotilla_fleet_arm_requests_total",
                "Requests by model, traffic arm, version and outcome.",
                &["model", "arm", "version", "outcome"],
            ),
            arm_duration: histogram(
                "flotilla_fleet_arm_request_duration_seconds",
                "Router latency of a request by model and traffic arm, seconds.",
                &["model", "arm"],
            ),
            canary_state: gauge(
                "flotilla_fleet_canary_state",
                "Canary state by model: 0 waiting, 1 ramping, 2 promoted, 3 rolled back.",
                &["model"],
            ),
            canary_percent: float_gauge(
                "flotilla_fleet_canary_percent",
                "Share of the model's unversioned traffic the canary takes, percent.",
                &["model"],
            ),
            transitions: counter(
                "flotilla_fleet_traffic_transitions_total",
                "Traffic-policy transitions by model and kind (canary steps, promotions, rollbacks, rollouts).",
                &["model", "kind"],
            ),
            shadow: counter(
                "flotilla_fleet_shadow_requests_total",
                "Mirrored (shadow) requests by model and outcome: match, differ, error, skipped_busy.",
                &["model", "outcome"],
            ),
            desired_reloads: counter(
                "flotilla_fleet_desired_state_reloads_total",
                "Reads of the desired state file by outcome (applied, refused).",
                &["outcome"],
            ),
            desired_valid: gauge(
                "flotilla_fleet_desired_state_valid",
                "1 while the desired state file is valid; 0 while the router keeps the last good state.",
                &["file"],
            ),
            version_syncs: counter(
                "flotilla_fleet_version_syncs_total",
                "Model version loads the router asked of workers to match the desired state, by outcome.",
                &["outcome"],
            ),
            served: counter(
                "flotilla_fleet_served_total",
                "Requests answered by workers, by model, capacity class and hardware kind of the worker.",
                &["model", "class", "hardware"],
            ),
            workers_by_hardware: gauge(
                "flotilla_fleet_workers_by_hardware",
                "Workers the router knows, by capacity class and hardware kind.",
                &["class", "hardware"],
            ),
            placement_changes: counter(
                "flotilla_fleet_placement_changes_total",
                "Changes of the set of workers a model served from an artifact is placed on.",
                &["model"],
            ),
            sync_bytes: counter(
                "flotilla_fleet_sync_bytes_total",
                "Bytes the router served for the digest-based sync, by kind: digest (heartbeat answers), assignment, manifest, blob.",
                &["kind"],
            ),
            drift_alert: gauge(
                "flotilla_fleet_drift_alert",
                "The fleet's drift alert state after hysteresis, per model, version and column: 0 ok, 1 moderate, 2 significant",
                &["model", "version", "feature"],
            ),
            drift_windows: counter(
                "flotilla_fleet_drift_windows_total",
                "Fleet drift windows closed (each merges the windows the workers closed since the last)",
                &["model", "version"],
            ),
            events: counter(
                "flotilla_fleet_events_total",
                "Fleet events by kind: joined, draining (a preemption notice), drained, serving, left, expired, ejected, returned, ...",
                &["kind"],
            ),
            drift_webhook_failures: counter(
                "flotilla_fleet_drift_webhook_failures_total",
                "Fleet drift alert webhooks given up after retries",
                &["model"],
            ),
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.attempts.clone()),
            Box::new(m.attempt_duration.clone()),
            Box::new(m.retries.clone()),
            Box::new(m.retries_refused.clone()),
            Box::new(m.hedges.clone()),
            Box::new(m.hedge_wins.clone()),
            Box::new(m.shed.clone()),
            Box::new(m.ejections.clone()),
            Box::new(m.workers.clone()),
            Box::new(m.outstanding.clone()),
            Box::new(m.capacity.clone()),
            Box::new(m.drain_seconds.clone()),
            Box::new(m.arm_requests.clone()),
            Box::new(m.arm_duration.clone()),
            Box::new(m.canary_state.clone()),
            Box::new(m.canary_percent.clone()),
            Box::new(m.transitions.clone()),
            Box::new(m.shadow.clone()),
            Box::new(m.desired_reloads.clone()),
            Box::new(m.desired_valid.clone()),
            Box::new(m.version_syncs.clone()),
            Box::new(m.served.clone()),
            Box::new(m.workers_by_hardware.clone()),
            Box::new(m.placement_changes.clone()),
            Box::new(m.sync_bytes.clone()),
            Box::new(m.drift_alert.clone()),
            Box::new(m.drift_windows.clone()),
            Box::new(m.events.clone()),
            Box::new(m.drift_webhook_failures.clone()),
        ];
        for c in collectors {
            registry.register(c).expect("fleet metric names are unique");
        }
        m
    }
}
