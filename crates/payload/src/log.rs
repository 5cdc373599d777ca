//! The payload log: requests of models with a `payload.toml`, sampled on the request path (a
//! counter and a hash: no lock), handed to one writer thread at idle priority through a bounded
//! queue (a full queue drops the request and counts it: serving never waits for the log, and the
//! writer only takes CPU time no request wants). The request path never wakes the writer: it
//! wakes itself every [`POLL`] and takes all that waits (a wake-up per request would cost each
//! request two context switches). Rows are written as
//! Parquet (see [`crate::columns`] for the schema), one row group per flush, into
//! `DIR/<model>/<model>-v<version>-<start>.parquet` — a file being written ends in `.partial` and
//! is renamed when it reaches the size or age limit, or when the server stops — or sent as one
//! JSON message per request to a [`MessageSink`] (a Kafka topic), see [`json`].

use crate::columns::{self, Column, Values};
use crate::settings::{Settings, FILE_NAME};
use crate::{PayloadError, Result};
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use flotilla_core::observe::{Recorder, Recording, Served};
use flotilla_core::repository::ModelVersion;
use parking_lot::{Mutex, RwLock};
use parquet::arrow::ArrowWriter;
use prometheus::{IntCounter, IntCounterVec};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where messages go when the log is not files: a Kafka topic (`--payload-log kafka://...`).
pub trait MessageSink: Send {
    /// Queues one message; an error when it cannot be queued (it is counted as dropped).
    fn send(&mut self, key: &str, payload: &[u8]) -> std::result::Result<(), String>;
    /// Delivers what is queued (at shutdown).
    fn flush(&mut self);
}

/// Where the log goes.
pub enum Sink {
    /// Parquet files under this folder.
    Files(PathBuf),
    /// JSON messages.
    Messages(Box<dyn MessageSink>),
}

/// Where and how the log is written (`flotilla serve --payload-log ...`).
pub struct Options {
    pub sink: Sink,
    /// A file is closed (and a new one started) past this size...
    pub max_bytes: u64,
    /// ... or this age.
    pub max_age: Duration,
    /// Requests waiting for the writer; more are dropped (and counted).
    pub queue: usize,
    /// Salt of hashed inputs' digests.
    pub salt: Vec<u8>,
    /// CPU the writer may use, as a share of one core (0.03 = 3%); above it, the request path
    /// keeps only one request in N (counted as `over_budget`). 0 = no limit.
    pub cpu_budget: f64,
}

/// Rows buffered per file before they are written as a row group.
const ROW_GROUP: usize = 1024;
/// Buffered rows are written at least this often.
const FLUSH: Duration = Duration::from_secs(1);
/// The writer wakes this often and takes every request that waits.
pub const POLL: Duration = Duration::from_millis(20);
/// The writer offers its core back after this many rows.
const YIELD_EVERY: usize = 32;

/// One model version's logging, from its model's `payload.toml`: what a request gets from
/// [`PayloadLog`]'s `recording`, and what the writer gets with each row.
struct VersionLog {
    model: String,
    version: String,
    /// `model/version`: the writer's key for this version's open file.
    key: Arc<str>,
    settings: Settings,
    columns: Arc<Vec<Column>>,
    /// The sampling counter.
    counter: AtomicU64,
    queue: SyncSender<Message>,
    pending: Arc<Pending>,
    written: IntCounter,
    dropped: IntCounter,
    over_budget: IntCounter,
}

enum Message {
    Row(Box<Entry>),
    /// Write what is buffered, close every file, answer.
    Close(SyncSender<()>),
}

struct Entry {
    log: Arc<VersionLog>,
    served: Served,
}

/// Rows in the queue, against its capacity: a request that would find the queue full is not
/// captured at all (when serving leaves the writer no CPU time, logging then costs requests an
/// atomic load).
struct Pending {
    rows: std::sync::atomic::AtomicUsize,
    capacity: usize,
}

/// A model's versions' logging (`None`: not logged).
type Versions = HashMap<String, Option<Arc<VersionLog>>>;

/// The payload log of a server (a [`Recorder`]).
pub struct PayloadLog {
    repository: PathBuf,
    /// Per model, per version (`None`: not logged).
    models: RwLock<HashMap<String, Versions>>,
    queue: SyncSender<Message>,
    pending: Arc<Pending>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// One request in this many is kept (the CPU budget's verdict); 1 = all.
    keep_one_in: Arc<AtomicU64>,
    requests: AtomicU64,
    metrics: Metrics,
}

#[derive(Clone)]
struct Metrics {
    rows: IntCounterVec,
    files: IntCounterVec,
}

impl PayloadLog {
    /// Starts the writer thread; metrics are registered in `registry`.
    pub fn start(repository: &Path, mut options: Options, registry: &prometheus::Registry) -> Result<Self> {
        if let Sink::Files(dir) = &options.sink {
            std::fs::create_dir_all(dir)
                .map_err(|e| PayloadError::Io(format!("--payload-log {}: {e}", dir.display())))?;
        }
        let messages = match std::mem::replace(&mut options.sink, Sink::Files(PathBuf::new())) {
            Sink::Messages(m) => Some(m),
            files => {
                options.sink = files;
                None
            }
        };
        let rows = IntCounterVec::new(
            prometheus::Opts::new(
                "flotilla_payload_log_rows_total",
                "Requests offered to the payload log, by model and outcome (written, dropped: the queue was full).",
            ),
            &["model", "outcome"],
        )
        .map_err(|e| PayloadError::Io(e.to_string()))?;
        let files = IntCounterVec::new(
            prometheus::Opts::new("flotilla_payload_log_files_total", "Payload log files completed, by model."),
            &["model"],
        )
        .map_err(|e| PayloadError::Io(e.to_string()))?;
        let _ = registry.register(Box::new(rows.clone()));
        let _ = registry.register(Box::new(files.clone()));
        let metrics = Metrics { rows, files };
        let (queue, rx) = sync_channel(options.queue.max(1));
        let pending = Arc::new(Pending { rows: Default::default(), capacity: options.queue.max(1) });
        let taken = pending.clone();
        let m = metrics.clone();
        let keep_one_in = Arc::new(AtomicU64::new(1));
        let budget = Budget {
            share: options.cpu_budget,
            keep_one_in: keep_one_in.clone(),
            busy: Duration::ZERO,
            cpu: None,
            since: Instant::now(),
        };
        let writer = std::thread::Builder::new()
            .name("payload-log".into())
            .spawn(move || {
                // The writer runs on CPU time no request wants; when serving leaves it none, its
                // queue fills and requests go unlogged (counted), never slower.
                flotilla_core::observe::idle_priority("payload log writer");
                Writer { options, messages, files: HashMap::new(), metrics: m, budget, pending: taken }.run(rx)
            })
            .map_err(|e| PayloadError::Io(format!("payload log writer: {e}")))?;
        Ok(Self {
            repository: repository.to_path_buf(),
            models: RwLock::new(HashMap::new()),
            queue,
            pending,
            writer: Mutex::new(Some(writer)),
            keep_one_in,
            requests: AtomicU64::new(0),
            metrics,
        })
    }

    fn version(&self, mv: &ModelVersion) -> Option<Arc<VersionLog>> {
        if let Some(v) = self.models.read().get(&mv.name).and_then(|m| m.get(&mv.version_str)) {
            return v.clone();
        }
        let path = self.repository.join(&mv.name).join(FILE_NAME);
        let log = match std::fs::read_to_string(&path) {
            Err(_) => None,
            Ok(text) => {
                let inputs: Vec<&str> = mv.config.input.iter().map(|i| i.name.as_str()).collect();
                match Settings::parse(&path, &text, &inputs) {
                    Ok(settings) => Some(Arc::new(VersionLog {
                        model: mv.name.clone(),
                        version: mv.version_str.clone(),
                        key: format!("{}/{}", mv.name, mv.version_str).into(),
                        columns: Arc::new(columns::layout(&mv.config, &settings.drop, &settings.hash)),
                        settings,
                        counter: AtomicU64::new(0),
                        queue: self.queue.clone(),
                        pending: self.pending.clone(),
                        written: self.metrics.rows.with_label_values(&[mv.name.as_str(), "written"]),
                        dropped: self.metrics.rows.with_label_values(&[mv.name.as_str(), "dropped"]),
                        over_budget: self.metrics.rows.with_label_values(&[mv.name.as_str(), "over_budget"]),
                    })),
                    Err(e) => {
                        tracing::warn!(model = %mv.name, error = %e, "payload logging of this model is off");
                        None
                    }
                }
            }
        };
        self.models.write().entry(mv.name.clone()).or_default().insert(mv.version_str.clone(), log.clone());
        log
    }

    /// Writes what is buffered and closes every file (at shutdown); later rows are dropped.
    pub fn close(&self) {
        let (tx, rx) = sync_channel(1);
        if self.queue.send(Message::Close(tx)).is_ok() {
            if let Some(w) = self.writer.lock().as_ref() {
                w.thread().unpark();
            }
            let _ = rx.recv_timeout(Duration::from_secs(30));
        }
        if let Some(w) = self.writer.lock().take() {
            drop(w);
        }
    }
}

impl Drop for PayloadLog {
    fn drop(&mut self) {
        self.close();
    }
}

impl Recorder for PayloadLog {
    fn recording(&self, mv: &ModelVersion) -> Option<Arc<dyn Recording>> {
        let log = self.version(mv)?;
        if self.pending.rows.load(Ordering::Relaxed) >= self.pending.capacity {
            log.dropped.inc();
            return None;
        }
        let n = self.keep_one_in.load(Ordering::Relaxed);
        if n > 1 && !self.requests.fetch_add(1, Ordering::Relaxed).is_multiple_of(n) {
            log.over_budget.inc();
            return None;
        }
        Some(log)
    }

    fn model_changed(&self, model: &str) {
        self.models.write().remove(model);
    }
}

impl VersionLog {
    /// Whether this request falls in the sample: a counter spread by SplitMix64, compared with
    /// the rate (no lock, no shared random state).
    fn sampled(&self) -> bool {
        let rate = self.settings.sample;
        if rate >= 1.0 {
            return true;
        }
        let mut z = self.counter.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 <= rate && rate > 0.0
    }
}

impl Recording for VersionLog {
    fn keeps(&self, failed: bool) -> bool {
        if failed {
            self.settings.errors
        } else {
            self.sampled()
        }
    }

    /// Hands the request to the writer without waking it; a full queue drops it (counted).
    fn record(self: Arc<Self>, served: Served) {
        let entry = Entry { log: Arc::clone(&self), served };
        self.pending.rows.fetch_add(1, Ordering::Relaxed);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(Message::Row(Box::new(entry)))
        {
            self.pending.rows.fetch_sub(1, Ordering::Relaxed);
            self.dropped.inc();
        }
    }
}

/// An open log file and the rows not yet written to it.
struct OpenFile {
    writer: ArrowWriter<File>,
    path: PathBuf,
    columns: Arc<Vec<Column>>,
    schema: Arc<arrow_schema::Schema>,
    opened: Instant,
    rows: Vec<Entry>,
    last_flush: Instant,
}

/// The writer's CPU budget: its CPU time per second against `share`, and the verdict the
/// request path reads (keep one request in N).
struct Budget {
    share: f64,
    keep_one_in: Arc<AtomicU64>,
    /// Time spent working (where the thread's CPU time cannot be read).
    busy: Duration,
    /// The writer thread's CPU time at `since`.
    cpu: Option<Duration>,
    since: Instant,
}

/// The calling thread's CPU time (Linux: `/proc/thread-self/schedstat`, its first field in ns):
/// unlike wall time, it does not count the time the writer waited for a core.
fn thread_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok().map(Duration::from_nanos)
}

impl Budget {
    /// Once a second: halve or double N (up to the ratio of use to budget) as the writer's time
    /// stays under half the budget or goes above it.
    fn check(&mut self) {
        let elapsed = self.since.elapsed();
        if elapsed < Duration::from_secs(1) || self.share <= 0.0 {
            return;
        }
        let cpu = thread_cpu();
        let busy = match (cpu, self.cpu) {
            (Some(now), Some(then)) => now.saturating_sub(then),
            _ => self.busy,
        };
        let used = busy.as_secs_f64() / elapsed.as_secs_f64();
        let n = self.keep_one_in.load(Ordering::Relaxed).max(1);
        let next = if used > self.share {
            ((n as f64 * used / self.share).ceil() as u64).clamp(n + 1, 1 << 20)
        } else if used < self.share / 2.0 {
            (n / 2).max(1)
        } else {
            n
        };
        self.keep_one_in.store(next, Ordering::Relaxed);
        self.busy = Duration::ZERO;
        self.cpu = cpu;
        self.since = Instant::now();
    }
}

/// The writer thread's state.
struct Writer {
    budget: Budget,
    options: Options,
    messages: Option<Box<dyn MessageSink>>,
    /// Per `model/version`.
    files: HashMap<Arc<str>, OpenFile>,
    metrics: Metrics,
    pending: Arc<Pending>,
}

impl Writer {
    /// Every [`POLL`] (or when [`PayloadLog::close`] unparks it): takes every request that
    /// waits, then flushes and rotates files.
    fn run(mut self, rx: Receiver<Message>) {
        self.budget.cpu = thread_cpu();
        loop {
            let started = Instant::now();
            let mut taken = 0usize;
            loop {
                match rx.try_recv() {
                    Ok(Message::Row(entry)) => {
                        self.pending.rows.fetch_sub(1, Ordering::Relaxed);
                        self.add(*entry);
                        // An idle-priority thread that got a core keeps it until the next tick;
                        // handing it back often keeps a long queue from delaying requests.
                        taken += 1;
                        if taken.is_multiple_of(YIELD_EVERY) {
                            std::thread::yield_now();
                        }
                    }
                    Ok(Message::Close(done)) => {
                        self.close_all();
                        let _ = done.send(());
                        return;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.close_all();
                        return;
                    }
                }
            }
            self.tick();
            self.budget.busy += started.elapsed();
            self.budget.check();
            std::thread::park_timeout(POLL);
        }
    }

    fn add(&mut self, entry: Entry) {
        if let Some(sink) = self.messages.as_mut() {
            match sink.send(&entry.served.id, &json(&entry, &self.options.salt)) {
                Ok(()) => entry.log.written.inc(),
                Err(e) => {
                    tracing::debug!(error = %e, "payload log message not sent");
                    entry.log.dropped.inc();
                }
            }
            return;
        }
        // A version reloaded with another layout of columns starts a new file.
        let same = |f: &OpenFile| Arc::ptr_eq(&f.columns, &entry.log.columns) || f.columns == entry.log.columns;
        if !self.files.get(&*entry.log.key).is_some_and(same) {
            if let Some(f) = self.files.remove(&*entry.log.key) {
                self.finish(f);
            }
            match self.open(&entry) {
                Ok(f) => {
                    self.files.insert(entry.log.key.clone(), f);
                }
                Err(e) => {
                    tracing::warn!(model = %entry.log.model, error = %e, "payload log file not opened; request dropped");
                    entry.log.dropped.inc();
                    return;
                }
            }
        }
        if let Some(f) = self.files.get_mut(&*entry.log.key) {
            f.rows.push(entry);
            if f.rows.len() >= ROW_GROUP {
                flush(f, &self.options.salt);
            }
        }
    }

    /// Flushes files whose rows waited long enough, and rotates those past their limits.
    fn tick(&mut self) {
        let keys: Vec<Arc<str>> = self.files.keys().cloned().collect();
        for key in keys {
            let Some(f) = self.files.get_mut(&key) else { continue };
            if !f.rows.is_empty() && f.last_flush.elapsed() >= FLUSH {
                flush(f, &self.options.salt);
            }
            let size = f.writer.bytes_written() as u64 + f.writer.in_progress_size() as u64;
            if size >= self.options.max_bytes || f.opened.elapsed() >= self.options.max_age {
                if let Some(f) = self.files.remove(&key) {
                    self.finish(f);
                }
            }
        }
    }

    fn open(&self, entry: &Entry) -> Result<OpenFile> {
        let Sink::Files(root) = &self.options.sink else {
            return Err(PayloadError::Io("the payload log sends messages, not files".into()));
        };
        let log = &entry.log;
        let dir = root.join(&log.model);
        std::fs::create_dir_all(&dir).map_err(|e| PayloadError::Io(format!("{}: {e}", dir.display())))?;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
        let path = dir.join(format!("{}-v{}-{stamp}.parquet.partial", log.model, log.version));
        let file = File::create(&path).map_err(|e| PayloadError::Io(format!("{}: {e}", path.display())))?;
        let schema = columns::schema(&log.columns);
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| PayloadError::Io(format!("{}: {e}", path.display())))?;
        Ok(OpenFile {
            writer,
            path,
            columns: log.columns.clone(),
            schema,
            opened: Instant::now(),
            rows: Vec::new(),
            last_flush: Instant::now(),
        })
    }

    fn finish(&self, mut f: OpenFile) {
        flush(&mut f, &self.options.salt);
        let model = f.path.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().to_string());
        let path = f.path.clone();
        match f.writer.close() {
            Ok(_) => {
                let done = path.with_extension("");
                if let Err(e) = std::fs::rename(&path, &done) {
                    tracing::warn!(path = %path.display(), error = %e, "payload log file not renamed");
                }
                self.metrics.files.with_label_values(&[model.unwrap_or_default().as_str()]).inc();
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "payload log file not closed"),
        }
    }

    fn close_all(&mut self) {
        for (_, f) in std::mem::take(&mut self.files) {
            self.finish(f);
        }
        if let Some(sink) = self.messages.as_mut() {
            sink.flush();
        }
    }
}

/// Writes a file's buffered rows as one row group.
fn flush(f: &mut OpenFile, salt: &[u8]) {
    f.last_flush = Instant::now();
    if f.rows.is_empty() {
        return;
    }
    let rows = std::mem::take(&mut f.rows);
    // A file holds one model's rows: their counters are the same.
    let log = &rows[0].log;
    let result = batch(&f.schema, &f.columns, &rows, salt)
        .and_then(|b| f.writer.write(&b).and_then(|_| f.writer.flush()).map_err(|e| PayloadError::Io(e.to_string())));
    match result {
        Ok(()) => log.written.inc_by(rows.len() as u64),
        Err(e) => {
            tracing::warn!(model = %log.model, error = %e, "payload log rows not written");
            log.dropped.inc_by(rows.len() as u64);
        }
    }
}

/// One request as a JSON message: the file schema's fields, with each logged tensor as KServe
/// v2 writes one (`{"datatype", "shape", "data"}`) under `inputs` / `outputs`.
fn json(entry: &Entry, salt: &[u8]) -> Vec<u8> {
    use serde_json::{json, Map, Value as J};
    let served = &entry.served;
    let mut inputs = Map::new();
    let mut outputs = Map::new();
    for c in entry.log.columns.iter() {
        let list = if c.input { Some(&served.inputs) } else { served.outputs.as_ref().ok() };
        let Some(t) = list.and_then(|l| l.iter().find(|t| t.name == c.tensor)) else { continue };
        let Some(values) = columns::values(t, c.kind, salt) else { continue };
        let data = match values {
            Values::F32(v) => json!(v),
            Values::F64(v) => json!(v),
            Values::I64(v) => json!(v),
            Values::U64(v) => json!(v),
            Values::Bool(v) => json!(v),
            Values::Bytes(v) => {
                J::Array(v.iter().map(|b| J::String(String::from_utf8_lossy(b).into_owned())).collect())
            }
            Values::Digest(v) => json!(v),
        };
        let tensor = if c.kind == columns::Kind::Digest {
            json!({"datatype": "BYTES", "shape": t.shape, "data": data, "hashed": true})
        } else {
            json!({"datatype": c.datatype.as_str(), "shape": t.shape, "data": data})
        };
        if c.input {
            inputs.insert(c.tensor.clone(), tensor);
        } else {
            outputs.insert(c.tensor.clone(), tensor);
        }
    }
    let time =
        chrono::DateTime::<chrono::Utc>::from(served.started).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let message = json!({
        "request_id": served.id,
        "time": time,
        "model": entry.log.model,
        "version": entry.log.version,
        "status": served.outputs.as_ref().map_or_else(|e| e.kind.as_str(), |_| "ok"),
        "error": served.outputs.as_ref().err().map(|e| e.message.clone()),
        "latency_us": served.latency.as_micros() as i64,
        "trace_id": served.trace_id,
        "inputs": inputs,
        "outputs": if served.outputs.is_ok() { J::Object(outputs) } else { J::Null },
    });
    serde_json::to_vec(&message).unwrap_or_default()
}

/// The record batch of `rows` (tensors converted here, off the request path).
fn batch(schema: &Arc<arrow_schema::Schema>, columns: &[Column], rows: &[Entry], salt: &[u8]) -> Result<RecordBatch> {
    let text =
        |f: &dyn Fn(&Entry) -> Option<String>| -> ArrayRef { Arc::new(rows.iter().map(f).collect::<StringArray>()) };
    let mut arrays: Vec<ArrayRef> = vec![
        text(&|e| Some(e.served.id.clone())),
        Arc::new(
            TimestampMicrosecondArray::from(
                rows.iter()
                    .map(|e| e.served.started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64))
                    .collect::<Vec<i64>>(),
            )
            .with_timezone("UTC"),
        ),
        text(&|e| Some(e.log.model.clone())),
        text(&|e| Some(e.log.version.clone())),
        text(&|e| Some(e.served.outputs.as_ref().map_or_else(|err| err.kind.as_str(), |_| "ok").to_string())),
        text(&|e| e.served.outputs.as_ref().err().map(|err| err.message.clone())),
        Arc::new(rows.iter().map(|e| e.served.latency.as_micros() as i64).collect::<Int64Array>()),
        text(&|e| e.served.trace_id.clone()),
    ];
    for c in columns {
        let tensors: Vec<Option<&flotilla_core::Tensor>> = rows
            .iter()
            .map(|e| {
                let list = if c.input { Some(&e.served.inputs) } else { e.served.outputs.as_ref().ok() };
                list.and_then(|l| l.iter().find(|t| t.name == c.tensor))
            })
            .collect();
        let values: Vec<Option<Values>> =
            tensors.iter().map(|t| t.and_then(|t| columns::values(t, c.kind, salt))).collect();
        let shapes: Vec<Option<&[i64]>> =
            tensors.iter().zip(&values).map(|(t, v)| v.as_ref().and(t.map(|t| t.shape.as_slice()))).collect();
        arrays.push(columns::list_array(c.kind, &values.iter().map(Option::as_ref).collect::<Vec<_>>()));
        arrays.push(columns::shape_array(&shapes));
    }
    RecordBatch::try_new(schema.clone(), arrays).map_err(|e| PayloadError::Io(e.to_string()))
}
