//! Command-line flags (each with a `FLOTILLA_*` environment fallback).

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use flotilla_features::store::StoreLocation;
use std::net::IpAddr;
use std::path::PathBuf;

/// Flotilla: a real-time ML inference server speaking the KServe v2 / Triton protocols.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start; boxing the serve flags would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a model repository over HTTP (KServe v2 REST), gRPC and Prometheus metrics.
    Serve(ServeConfig),
    /// Route requests over a fleet of `serve --join` workers: the same protocol as one worker,
    /// no models of its own.
    Route(RouteConfig),
    /// The feature store: ingest batch files, consume streams, build training sets.
    #[command(subcommand)]
    Features(FeaturesCommand),
    /// Build a model's drift reference profile from its training data (written into its folder).
    Profile(ProfileArgs),
    /// Run a model's logged requests (its payload log) through a candidate version and report how
    /// it would have answered them.
    Replay(ReplayArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The payload log: its folder (`serve --payload-log DIR`; its `<model>/` folder is read), or
    /// the Kafka topic it was sent to (`kafka://BROKER:PORT[,...]/TOPIC`, read from its start).
    #[arg(long)]
    pub log: PathBuf,
    /// The logged model.
    #[arg(long)]
    pub model: String,
    /// The candidate: a version number of the model, a model folder (its newest version) or a
    /// version folder.
    #[arg(long)]
    pub candidate: String,
    /// The model repository holding the model (its config, and the logged primary version).
    #[arg(long, env = "FLOTILLA_MODEL_REPOSITORY", default_value = "examples/repository")]
    pub model_repository: PathBuf,
    /// Labels by request id: a Parquet file with `request_id` and a label column.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// The labels file's label column.
    #[arg(long, default_value = "label")]
    pub label_column: String,
    /// The output whose classes and scores are judged (default: the first).
    #[arg(long)]
    pub output: Option<String>,
    /// A request whose outputs differ from the logged ones by more than this is "changed".
    #[arg(long, default_value_t = 1e-6)]
    pub tolerance: f64,
    /// Most rows per replayed batch (consecutive requests with the same shapes are joined).
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Take the canary's bounds from this fleet.toml's `[models.M.canary]`.
    #[arg(long)]
    pub fleet: Option<PathBuf>,
    /// Canary bound: the candidate's error rate may exceed the primary's by at most this (default 0.01).
    #[arg(long)]
    pub max_error_rate_increase: Option<f64>,
    /// Canary bound: the candidate's p99 may be at most this times the primary's (default 1.5).
    #[arg(long)]
    pub max_p99_ratio: Option<f64>,
    /// Report files: OUT.md and OUT.json (default: replay-<model>.md/.json here).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ProfileArgs {
    /// The model repository holding the model.
    #[arg(long, env = "FLOTILLA_MODEL_REPOSITORY", default_value = "examples/repository")]
    pub model_repository: PathBuf,
    /// The model to profile.
    #[arg(long)]
    pub model: String,
    /// Training data: Parquet or CSV with one column per feature.
    #[arg(long)]
    pub data: PathBuf,
    /// The data columns that make the model's (single) 2-D input, in order. Default: the model
    /// folder's features.txt (one name per line), else its features.toml's feature names.
    #[arg(long, value_delimiter = ',')]
    pub columns: Vec<String>,
    /// For models with several inputs: `--input NAME=col1,col2,...`, once per input.
    #[arg(long = "input", conflicts_with = "columns")]
    pub inputs: Vec<String>,
    /// Numeric columns that hold category codes: profiled as categories (PSI/JS on categories,
    /// new-category rate) instead of as numbers. Text columns feeding BYTES inputs always are.
    #[arg(long, value_delimiter = ',')]
    pub categorical: Vec<String>,
    /// At most this many rows (the first ones) are profiled.
    #[arg(long)]
    pub max_rows: Option<usize>,
    /// Where to write the profile. Default: <model folder>/drift_profile.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Where the feature store's declarations and online data are.
#[derive(Debug, Clone, Args)]
pub struct FeatureStoreArgs {
    /// Feature repository: a folder of TOML files declaring entities, feature views and feature services.
    #[arg(long, env = "FLOTILLA_FEATURE_REPO", default_value = "examples/features")]
    pub feature_repo: PathBuf,

    /// Online store: `embedded:PATH` (a redb file; one process at a time) or `redis://HOST:PORT[/DB]`.
    #[arg(long, env = "FLOTILLA_ONLINE_STORE", default_value = DEFAULT_ONLINE_STORE)]
    pub online_store: StoreLocation,
}

pub const DEFAULT_ONLINE_STORE: &str = "embedded:.flotilla/online.redb";

/// `flotilla features cdc ...`
#[derive(Debug, clap::Subcommand)]
pub enum CdcCommand {
    /// List the PostgreSQL sources this online store has positions for: slot, applied LSN,
    /// changes applied, and the WAL each slot holds back on its server.
    Status {
        #[command(flatten)]
        store: FeatureStoreArgs,
    },
    /// Drop the replication slot (and the publication Flotilla created) of feature views, and
    /// forget their position: the next start copies the table again.
    Drop {
        #[command(flatten)]
        store: FeatureStoreArgs,
        /// Feature view whose slot to drop (repeatable).
        #[arg(long = "view", required_unless_present = "all")]
        views: Vec<String>,
        /// Every slot this online store has a position for.
        #[arg(long, conflicts_with = "views")]
        all: bool,
    },
}

/// `flotilla features ...`
#[derive(Debug, Subcommand)]
pub enum FeaturesCommand {
    /// Write feature views' batch files (their declared source, or --path) into the online store.
    Ingest {
        #[command(flatten)]
        store: FeatureStoreArgs,
        /// Feature view to ingest (repeatable; default: every view with a batch source).
        #[arg(long = "view")]
        views: Vec<String>,
        /// A Parquet or CSV file to read instead of the view's declared source (needs exactly one --view).
        #[arg(long)]
        path: Option<PathBuf>,
        /// Push the rows to a running server's POST /push (e.g. http://127.0.0.1:8000) instead of
        /// opening the online store, which the server holds.
        #[arg(long)]
        server: Option<String>,
    },
    /// Like ingest, for rows whose event time is within [--start, --end] (Feast's materialize).
    Materialize {
        #[command(flatten)]
        store: FeatureStoreArgs,
        /// Earliest event time, RFC 3339 (e.g. 2026-11-01T00:00:00Z).
        #[arg(long)]
        start: String,
        /// Latest event time, RFC 3339.
        #[arg(long)]
        end: String,
        /// Feature view (repeatable; default: every view with a batch source).
        #[arg(long = "view")]
        views: Vec<String>,
        /// Push the rows to a running server's POST /push instead of opening the online store.
        #[arg(long)]
        server: Option<String>,
    },
    /// Consume the streams the feature views declare into the online store, until SIGINT/SIGTERM.
    Consume {
        #[command(flatten)]
        store: FeatureStoreArgs,
    },
    /// PostgreSQL change data capture: the replication slots of feature views (stop the server first).
    Cdc {
        #[command(subcommand)]
        command: CdcCommand,
    },
    /// Print online features for entities as Feast's get-online-features JSON.
    Get {
        #[command(flatten)]
        store: FeatureStoreArgs,
        /// Features: view:feature or view, comma-separated.
        #[arg(long, value_delimiter = ',', required_unless_present = "feature_service")]
        features: Vec<String>,
        /// A feature service instead of --features.
        #[arg(long, conflicts_with = "features")]
        feature_service: Option<String>,
        /// Entity keys as JSON, e.g. '{"card_id": [1, 2]}'.
        #[arg(long)]
        entities: String,
        /// Name each feature `view__feature` (Feast's full_feature_names), e.g. when two views
        /// have a feature of the same name.
        #[arg(long)]
        full_feature_names: bool,
    },
    /// Build a point-in-time correct training set (Parquet) for entity rows (keys + event time).
    TrainingSet {
        /// Feature repository folder.
        #[arg(long, env = "FLOTILLA_FEATURE_REPO", default_value = "examples/features")]
        feature_repo: PathBuf,
        /// Entity rows: Parquet or CSV with the join keys and an event-time column.
        #[arg(long)]
        entities: PathBuf,
        /// Features: view:feature or view, comma-separated.
        #[arg(long, value_delimiter = ',', required_unless_present = "feature_service")]
        features: Vec<String>,
        /// A feature service instead of --features.
        #[arg(long, conflicts_with = "features")]
        feature_service: Option<String>,
        /// Output Parquet file.
        #[arg(long)]
        out: PathBuf,
        /// The entity rows' event-time column.
        #[arg(long, default_value = "event_timestamp")]
        timestamp_field: String,
        /// Name feature columns view__feature (needed when two views share a feature name).
        #[arg(long)]
        full_feature_names: bool,
        /// Memory the views' indexes may take (512MB, 2GB, 1.5GiB, or bytes); above it the join
        /// spills to disk. Default: 80% of the machine's memory (or its container's), as DuckDB's memory_limit.
        #[arg(long, value_parser = flotilla_features::training::parse_memory)]
        memory_limit: Option<u64>,
        /// Folder for spill files (a temporary folder inside it is removed afterwards). Default: $TMPDIR or /tmp.
        #[arg(long)]
        spill_dir: Option<PathBuf>,
        /// Threads reading and indexing the views' sources (0: every core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
}

/// How the repository decides what to load (as Triton's --model-control-mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ControlModeArg {
    /// Load every model at start; the repository API cannot load or unload.
    None,
    /// Load every model at start, then rescan the repository every --repository-poll-secs and reload what changed.
    Poll,
    /// Load only --load-model models; the repository API loads and unloads.
    Explicit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where a server listens (`serve` and `route` alike).
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// Address to listen on.
    #[arg(long, env = "FLOTILLA_HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// HTTP port for the KServe v2 REST API (0 = any free port, printed at start).
    #[arg(long, env = "FLOTILLA_HTTP_PORT", default_value_t = 8000)]
    pub http_port: u16,

    /// gRPC port for inference.GRPCInferenceService, health and reflection (0 = any free port).
    #[arg(long, env = "FLOTILLA_GRPC_PORT", default_value_t = 8001)]
    pub grpc_port: u16,

    /// Port for Prometheus metrics at /metrics (0 = disabled).
    #[arg(long, env = "FLOTILLA_METRICS_PORT", default_value_t = 8002)]
    pub metrics_port: u16,
}

/// Who may call a server and how its listeners encrypt (README, "Security").
#[derive(Debug, Clone, Default, Args)]
pub struct SecurityArgs {
    /// Turns authentication on: a TOML file of named bearer tokens and their scopes (`infer`,
    /// `features:read`, `features:write`, `admin`); re-read when it changes. Off by default.
    #[arg(long, env = "FLOTILLA_AUTH_TOKENS")]
    pub auth_tokens: Option<PathBuf>,

    /// The bearer token this process sends to the other members of its fleet (a worker to its
    /// routers, a router to its workers) when they check tokens; give it from the environment.
    #[arg(long, env = "FLOTILLA_FLEET_TOKEN", hide_env_values = true)]
    pub fleet_token: Option<String>,

    /// PEM certificate chain: HTTP and gRPC are served over TLS (the metrics port too).
    /// Certificate and key are re-read when they change.
    #[arg(long, env = "FLOTILLA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "FLOTILLA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s): clients must present a certificate it signed (mutual TLS).
    #[arg(long, env = "FLOTILLA_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// PEM CA certificate(s) that signed the other fleet members' certificates: links to their
    /// `https://` addresses (a router to its workers, a worker to `--join https://...`) verify
    /// them against it, and present this member's --tls-cert when asked (mutual TLS). Defaults
    /// to --tls-client-ca, then to the system's trust store.
    #[arg(long, env = "FLOTILLA_FLEET_CA")]
    pub fleet_ca: Option<PathBuf>,
}

/// How a server logs.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, env = "FLOTILLA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives such as `flotilla=debug`.
    #[arg(long, env = "FLOTILLA_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Export request traces (OpenTelemetry, OTLP over HTTP/protobuf) to this collector, e.g.
    /// http://127.0.0.1:4318 (`/v1/traces` is added when the path is empty). Off by default.
    /// Clients' W3C `traceparent` headers become the parents of the request spans; a router
    /// passes its context on to the worker it picks.
    #[arg(long, env = "FLOTILLA_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// The `service.name` of the exported spans (default: `flotilla` for serve, `flotilla-router`
    /// for route; `OTEL_SERVICE_NAME` works too).
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub otlp_service_name: Option<String>,

    /// The share of traces started here (not continued from a sampled `traceparent`) that are
    /// exported, 0 to 1.
    #[arg(long, env = "FLOTILLA_OTLP_SAMPLE_RATIO", default_value_t = 1.0)]
    pub otlp_sample_ratio: f64,
}

/// Settings of `flotilla serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Model repository folder, in Triton's layout (<model>/config.pbtxt, <model>/<version>/model.onnx).
    #[arg(long, env = "FLOTILLA_MODEL_REPOSITORY", default_value = "examples/repository")]
    pub model_repository: PathBuf,

    #[command(flatten)]
    pub listen: ListenArgs,

    #[command(flatten)]
    pub security: SecurityArgs,

    /// Which models are loaded, and whether the repository API may load and unload.
    #[arg(long, env = "FLOTILLA_MODEL_CONTROL_MODE", value_enum, default_value_t = ControlModeArg::None)]
    pub model_control_mode: ControlModeArg,

    /// Seconds between repository scans in poll mode.
    #[arg(long, env = "FLOTILLA_REPOSITORY_POLL_SECS", default_value_t = 15)]
    pub repository_poll_secs: u64,

    /// Model to load at start in explicit mode (repeatable; `*` loads every model).
    #[arg(long = "load-model", env = "FLOTILLA_LOAD_MODEL", value_delimiter = ',')]
    pub load_model: Vec<String>,

    /// Report ready on /v2/health/ready only when every model the server was asked to serve is ready.
    #[arg(long, env = "FLOTILLA_STRICT_READINESS", default_value_t = true, action = ArgAction::Set)]
    pub strict_readiness: bool,

    /// On SIGTERM/SIGINT: stop accepting, let in-flight requests finish for up to this many seconds, then exit.
    #[arg(long, env = "FLOTILLA_EXIT_TIMEOUT_SECS", default_value_t = 30)]
    pub exit_timeout_secs: u64,

    #[command(flatten)]
    pub log: LogArgs,

    /// Largest accepted request body in bytes, before and after decompression (413 above it);
    /// also the largest gRPC message.
    #[arg(long, env = "FLOTILLA_MAX_REQUEST_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_request_bytes: usize,

    /// max_batch_size given to models without config.pbtxt whose tensors all have a variable first dimension.
    #[arg(long, env = "FLOTILLA_DEFAULT_MAX_BATCH_SIZE", default_value_t = 4)]
    pub default_max_batch_size: i32,

    /// Server name reported by server metadata (`GET /v2`, ServerMetadata). "triton" by default
    /// because Triton's clients and example scripts check for it; the version field is Flotilla's.
    #[arg(long, env = "FLOTILLA_SERVER_NAME", default_value = "triton")]
    pub server_name: String,

    /// Engine instances (threads) per model version when its config has no instance_group (0 = one per core, at most 4).
    #[arg(long, env = "FLOTILLA_INSTANCES", default_value_t = 0)]
    pub instances: usize,

    /// Feature repository for request-time enrichment, Feast's /get-online-features and /push, and
    /// stream ingestion; `none` = no feature store. Default: examples/features when that folder exists.
    #[arg(long, env = "FLOTILLA_FEATURE_REPO")]
    pub feature_repo: Option<PathBuf>,

    /// Online store: `embedded:PATH` (a redb file, one process's) or `redis://HOST:PORT[/DB]`
    /// (shared by workers). Default: embedded:.flotilla/online.redb, or, for a fleet worker
    /// (--join), embedded:.flotilla/workers/<worker id>/online.redb.
    #[arg(long, env = "FLOTILLA_ONLINE_STORE")]
    pub online_store: Option<StoreLocation>,

    /// Consume the streams the feature views declare while serving.
    #[arg(long, env = "FLOTILLA_CONSUME_STREAMS", default_value_t = true, action = ArgAction::Set)]
    pub consume_streams: bool,

    /// Watch the inputs and outputs of models whose folder has a drift_profile.json (made by
    /// `flotilla profile`): windows, drift scores, alerts, GET /v2/models/{m}/drift.
    #[arg(long, env = "FLOTILLA_DRIFT_MONITORING", default_value_t = true, action = ArgAction::Set)]
    pub drift_monitoring: bool,

    /// Log sampled requests of models whose folder has a payload.toml (inputs after enrichment,
    /// outputs, latency) as Parquet files under this folder (`<dir>/<model>/`), or as JSON
    /// messages to a Kafka topic (`kafka://BROKER:PORT[,...]/TOPIC`); `none` = off.
    #[arg(long, env = "FLOTILLA_PAYLOAD_LOG")]
    pub payload_log: Option<PathBuf>,

    /// A payload log file is completed (and a new one started) past this size...
    #[arg(long, env = "FLOTILLA_PAYLOAD_LOG_MAX_MB", default_value_t = 64)]
    pub payload_log_max_mb: u64,

    /// ... or this age, in seconds.
    #[arg(long, env = "FLOTILLA_PAYLOAD_LOG_MAX_AGE_SECS", default_value_t = 60.0)]
    pub payload_log_max_age_secs: f64,

    /// CPU the payload log's writer may use, as a share of one core (0.03 = 3%); above it, only
    /// one request in N is logged (counted as `over_budget`). 0 = no limit.
    #[arg(long, env = "FLOTILLA_PAYLOAD_LOG_CPU_BUDGET", default_value_t = 0.03)]
    pub payload_log_cpu_budget: f64,

    /// Requests waiting for the payload log's writer; beyond it requests are not logged (counted
    /// as dropped), so logging never slows serving.
    #[arg(long, env = "FLOTILLA_PAYLOAD_LOG_QUEUE", default_value_t = 10_000)]
    pub payload_log_queue: usize,

    /// Where drift windows and alert states are kept across restarts (`<dir>/<model>.json`); `none` =
    /// not kept. Default: .flotilla/drift, or .flotilla/workers/<worker id>/drift for a fleet worker.
    #[arg(long, env = "FLOTILLA_DRIFT_STATE_DIR")]
    pub drift_state_dir: Option<PathBuf>,

    /// CPU the drift monitor may use, as a share of one core (0.02 = 2%); above it, it observes
    /// one request in N (counted as skipped, reason "sampled"). 0 = no limit.
    #[arg(long, env = "FLOTILLA_DRIFT_CPU_BUDGET", default_value_t = 0.02)]
    pub drift_cpu_budget: f64,

    /// ONNX Runtime shared library (libonnxruntime.so) that runs ONNX models; `none` leaves them to tract.
    /// Unset: ORT_DYLIB_PATH, else the onnxruntime Python wheel in $VIRTUAL_ENV or ./.venv, else tract (with a warning).
    #[arg(long, env = "FLOTILLA_ONNXRUNTIME_LIB")]
    pub onnxruntime_lib: Option<PathBuf>,

    #[command(flatten)]
    pub fleet: WorkerArgs,
}

/// A worker's place in a fleet (`flotilla serve --join ...`).
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Join a fleet: routers' HTTP addresses (e.g. http://127.0.0.1:8000) and/or a NATS registry
    /// (nats://127.0.0.1:4222), comma-separated. The worker registers, refreshes its
    /// registration every --heartbeat-ms, and drains on SIGTERM or POST /v2/admin/preempt.
    #[arg(long, env = "FLOTILLA_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,

    /// This worker's id in the fleet. Default: <hostname>-<HTTP port>.
    #[arg(long, env = "FLOTILLA_WORKER_ID")]
    pub worker_id: Option<String>,

    /// guaranteed (on-demand, reserved: stays) or opportunistic (spot, preemptible, borrowed).
    #[arg(long, env = "FLOTILLA_CAPACITY_CLASS", value_enum, default_value_t = CapacityClassArg::Guaranteed)]
    pub capacity_class: CapacityClassArg,

    /// Hardware kind, free text (cpu-2c, h100, l4, ...). Default: cpu-<CPUs this process may use>c.
    #[arg(long, env = "FLOTILLA_HARDWARE")]
    pub hardware: Option<String>,

    /// The host routers reach this worker at. Default: --host, or when that is 0.0.0.0 / ::, the
    /// local address on the route to the first --join address.
    #[arg(long, env = "FLOTILLA_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,

    /// How often the registration is refreshed, milliseconds.
    #[arg(long, env = "FLOTILLA_HEARTBEAT_MS", default_value_t = 1000)]
    pub heartbeat_ms: u64,

    /// Latency target a model's capacity is measured against, milliseconds (a model's config.pbtxt
    /// parameter latency_target_ms overrides it).
    #[arg(long, env = "FLOTILLA_LATENCY_TARGET_MS", default_value_t = 100.0)]
    pub latency_target_ms: f64,

    /// Deadline of a POST /v2/admin/preempt that names none, milliseconds.
    #[arg(long, env = "FLOTILLA_PREEMPT_DEADLINE_MS", default_value_t = 30_000)]
    pub preempt_deadline_ms: u64,

    /// NATS JetStream KV bucket holding the fleet's membership.
    #[arg(long, env = "FLOTILLA_REGISTRY_BUCKET", default_value = flotilla_fleet::nats::DEFAULT_BUCKET)]
    pub registry_bucket: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CapacityClassArg {
    Guaranteed,
    Opportunistic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    /// Opportunistic workers first, up to their measured capacity within the latency target;
    /// guaranteed workers take the rest.
    ElasticFirst,
    /// Every worker by its capacity-weighted load, whatever its class.
    Balanced,
    /// Guaranteed workers first (the baseline elastic-first is measured against).
    GuaranteedFirst,
}

/// Settings of `flotilla route`.
#[derive(Debug, Clone, Args)]
pub struct RouteConfig {
    #[command(flatten)]
    pub listen: ListenArgs,

    #[command(flatten)]
    pub security: SecurityArgs,

    /// Fleet membership: `embedded` (workers register with this router) or a NATS JetStream KV
    /// registry `nats://HOST:PORT` shared by several routers.
    #[arg(long, env = "FLOTILLA_REGISTRY", default_value = "embedded")]
    pub registry: String,

    /// The fleet's desired state (per-model stable version, canary, A/B, shadow), watched: a
    /// change applies within a quarter second; a file that is not valid is refused with its line
    /// and the last good state stays. Absent: no traffic policies.
    #[arg(long, env = "FLOTILLA_DESIRED_STATE", default_value = "fleet.toml")]
    pub desired_state: std::path::PathBuf,

    /// NATS JetStream KV bucket holding the fleet's membership.
    #[arg(long, env = "FLOTILLA_REGISTRY_BUCKET", default_value = flotilla_fleet::nats::DEFAULT_BUCKET)]
    pub registry_bucket: String,

    /// A worker that has not refreshed its registration for this long leaves the view, milliseconds.
    #[arg(long, env = "FLOTILLA_WORKER_TTL_MS", default_value_t = 3000)]
    pub worker_ttl_ms: u64,

    /// How traffic spreads over capacity classes.
    #[arg(long, env = "FLOTILLA_POLICY", value_enum, default_value_t = PolicyArg::ElasticFirst)]
    pub policy: PolicyArg,

    /// Attempts per request, the first included (retries go to a different worker).
    #[arg(long, env = "FLOTILLA_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: usize,

    /// Retry budget: retries may add this percentage of requests...
    #[arg(long, env = "FLOTILLA_RETRY_BUDGET_PERCENT", default_value_t = 20.0)]
    pub retry_budget_percent: f32,

    /// ... plus this many retries a second.
    #[arg(long, env = "FLOTILLA_RETRY_MIN_PER_SEC", default_value_t = 3)]
    pub retry_min_per_sec: u32,

    /// Longest wait for one attempt on a worker when the request has no deadline, milliseconds.
    #[arg(long, env = "FLOTILLA_ATTEMPT_TIMEOUT_MS", default_value_t = 30_000)]
    pub attempt_timeout_ms: u64,

    /// Hedge this model's requests: a second copy to another worker after the model's p95
    /// (repeatable; `*` = every model). Off by default.
    #[arg(long = "hedge", env = "FLOTILLA_HEDGE", value_delimiter = ',')]
    pub hedge: Vec<String>,

    /// Hedged copies may add at most this percentage of requests.
    #[arg(long, env = "FLOTILLA_HEDGE_BUDGET_PERCENT", default_value_t = 5.0)]
    pub hedge_budget_percent: f32,

    /// Failures or timeouts in a row that take a worker out of rotation.
    #[arg(long, env = "FLOTILLA_EJECT_AFTER", default_value_t = 5)]
    pub eject_after: u32,

    /// First backoff of a worker ejected for failures, milliseconds (doubles each time, up to 32x).
    #[arg(long, env = "FLOTILLA_EJECT_BACKOFF_MS", default_value_t = 1000)]
    pub eject_backoff_ms: u64,

    /// How often each worker is probed, milliseconds.
    #[arg(long, env = "FLOTILLA_PROBE_INTERVAL_MS", default_value_t = 100)]
    pub probe_interval_ms: u64,

    /// On SIGTERM/SIGINT: stop accepting, let in-flight requests finish for up to this many seconds, then exit.
    #[arg(long, env = "FLOTILLA_EXIT_TIMEOUT_SECS", default_value_t = 30)]
    pub exit_timeout_secs: u64,

    #[command(flatten)]
    pub log: LogArgs,

    /// Largest accepted request body in bytes, before and after decompression (413 above it).
    #[arg(long, env = "FLOTILLA_MAX_REQUEST_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_request_bytes: usize,

    /// Server name reported by server metadata ("triton": Triton's clients check for it).
    #[arg(long, env = "FLOTILLA_SERVER_NAME", default_value = "triton")]
    pub server_name: String,
}

impl RouteConfig {
    /// Defaults as `flotilla route` with no flags, for tests and embedding.
    pub fn defaults() -> Self {
        let cli = Cli::parse_from(["flotilla", "route"]);
        let Command::Route(c) = cli.command else { unreachable!("parsed a route command") };
        c
    }
}

impl ServeConfig {
    /// Whether this worker joins a fleet.
    pub fn joins(&self) -> bool {
        !self.fleet.join.is_empty()
    }

    /// The online store: the one given, else the default embedded file.
    pub fn online_store(&self) -> StoreLocation {
        self.online_store.clone().unwrap_or_else(|| {
            DEFAULT_ONLINE_STORE.parse().unwrap_or_else(|_| unreachable!("the default store location parses"))
        })
    }

    /// Where drift state is kept: the folder given, else `.flotilla/drift`.
    pub fn drift_state_dir(&self) -> PathBuf {
        self.drift_state_dir.clone().unwrap_or_else(|| PathBuf::from(".flotilla/drift"))
    }

    /// Defaults as `flotilla serve` with no flags, for tests and embedding.
    pub fn with_repository(path: impl Into<PathBuf>) -> Self {
        let cli = Cli::parse_from(["flotilla", "serve"]);
        let Command::Serve(mut c) = cli.command else { unreachable!("parsed a serve command") };
        c.model_repository = path.into();
        c
    }
}
