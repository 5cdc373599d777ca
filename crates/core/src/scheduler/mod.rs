//! The scheduler of one model version: a bounded priority queue in front of
//! `count` engine instances on dedicated threads (engine work never runs on
//! the async runtime's threads), with Triton's dynamic batching.
//!
//! - Admission: a level whose queue holds `max_queue_size` requests answers at
//!   once with RESOURCE_EXHAUSTED (429); so does the adaptive limit when on.
//! - Deadlines: a request still queued at its deadline is answered
//!   DEADLINE_EXCEEDED without running (or, with the DELAY action, moved
//!   behind the others). A request whose caller went away leaves the queue.
//! - Batching: see [`queue`]; joined inputs run once and outputs are split back.
//! - Panics: an engine panic fails that batch's requests with an error naming
//!   the model; the instance's thread is retired and a new one replaces it.
//! - Cheap requests run inline: when nothing is queued, an instance is free and
//!   the engine's measured cost for the request's rows is at most
//!   [`INLINE_MAX_NS`] (or the model's `inline_max_us`), the calling task runs
//!   it itself and skips the hand-off to an instance thread and back (two
//!   wake-ups, the larger part of a small model's latency). It still takes one
//!   of the `count` instance slots, so no more than `count` executions ever
//!   run at once. Not with dynamic batching (a lone request would give up the
//!   chance to join a batch), not with `preserve_ordering`, and never again for
//!   a scheduler whose engine panicked inline.

pub mod adaptive;
pub mod batch;
pub mod policy;
mod queue;
#[cfg(test)]
mod tests;

use crate::engine::{Engine, Phases};
use crate::error::{Error, ErrorKind, Result};
use crate::tensor::Tensor;
use adaptive::Limiter;
use parking_lot::{Condvar, Mutex};
pub use policy::Policy;
use queue::{Decision, Queue};
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// The most a request's estimated engine time may be for it to run inline, on the calling
/// task's thread (nanoseconds), unless the model's config parameter `inline_max_us` says
/// otherwise (0 turns it off). The hand-off it saves costs 20-50 µs on a loaded 2-core machine
/// (`bench/results/serving.md`: 48 µs of queue time for a 4 µs tree model); blocking an async
/// worker for up to 50 µs costs the other connections on that worker no more than parsing a
/// large JSON body does.
pub const INLINE_MAX_NS: u64 = 50_000;

/// What a request gets back from the scheduler.
#[derive(Debug)]
pub struct Completed {
    pub outputs: Result<Vec<Tensor>>,
    pub enqueued: Instant,
    /// Phase marks of the batch the request ran in.
    pub phases: Phases,
    pub finished: Instant,
    /// Rows in the executed batch (0 when the request never ran).
    pub batch_rows: usize,
    /// Set on exactly one request of each executed batch, so executions are counted once.
    pub records_batch: bool,
    /// The instance that ran the batch panicked and was replaced.
    pub instance_replaced: bool,
}

impl Completed {
    /// A request that failed before it ran.
    fn failure(enqueued: Instant, error: Error) -> Self {
        let now = Instant::now();
        Self {
            outputs: Err(error),
            enqueued,
            phases: Phases::start(),
            finished: now,
            batch_rows: 0,
            records_batch: false,
            instance_replaced: false,
        }
    }
}

/// How a request asks to be scheduled.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    /// The `priority` request parameter (1 is highest; 0/None the model's default).
    pub priority: Option<u64>,
    /// The `timeout` request parameter, microseconds from `started`.
    pub timeout_us: Option<u64>,
    /// When the request arrived.
    pub started: Instant,
}

impl Admission {
    /// Default priority, no timeout of its own, arriving now.
    pub fn now() -> Self {
        Self { priority: None, timeout_us: None, started: Instant::now() }
    }
}

/// A queued request.
pub(crate) struct Job {
    inputs: Vec<Tensor>,
    rows: usize,
    level: usize,
    enqueued: Instant,
    deadline: Option<Instant>,
    /// Moved behind the others by the DELAY timeout action.
    delayed: bool,
    seq: u64,
    span: tracing::Span,
    reply: oneshot::Sender<Completed>,
}

impl Job {
    fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }
}

/// Answers held back so requests are answered in arrival order (`preserve_ordering`).
#[derive(Default)]
struct Reorder {
    next: u64,
    held: BTreeMap<u64, (oneshot::Sender<Completed>, Option<Completed>)>,
}

struct Shared {
    engine: Arc<dyn Engine>,
    policy: Policy,
    label: String,
    queue: Mutex<Queue>,
    work: Condvar,
    reorder: Option<Mutex<Reorder>>,
    limiter: Option<Limiter>,
    /// Instance threads alive.
    live: AtomicUsize,
    /// Moving average of one execution's duration, nanoseconds (0 before the first).
    exec_ns: AtomicU64,
    /// Moving average of one execution's duration per row, nanoseconds (0 before the first).
    row_ns: AtomicU64,
    /// Cheap requests may run on the caller's thread (see [`INLINE_MAX_NS`]).
    inline: AtomicBool,
}

/// The scheduler of one model version. Dropping it lets the instances finish
/// what is queued and exit.
pub struct Scheduler {
    shared: Arc<Shared>,
}

// === impl Scheduler ===

impl Scheduler {
    /// Starts `count` instances of `engine` under `policy`; `label` (`model/version`) names the
    /// model version in errors and thread names.
    pub fn start(engine: Arc<dyn Engine>, policy: Policy, count: usize, label: &str) -> Result<Self> {
        let inline = policy.batching.is_none() && !policy.preserve_ordering && policy.inline_max_ns > 0;
        let shared = Arc::new(Shared {
            engine,
            queue: Mutex::new(Queue::new(policy.levels.len())),
            work: Condvar::new(),
            reorder: policy.preserve_ordering.then(|| Mutex::new(Reorder::default())),
            limiter: policy.adaptive.clone().map(Limiter::new),
            policy,
            label: label.to_string(),
            live: AtomicUsize::new(0),
            exec_ns: AtomicU64::new(0),
            row_ns: AtomicU64::new(0),
            inline: AtomicBool::new(inline),
        });
        for i in 0..count.max(1) {
            spawn_instance(&shared, i, 0)?;
        }
        Ok(Self { shared })
    }

    /// Requests waiting for an instance now.
    pub fn queued(&self) -> usize {
        self.shared.queue.lock().len
    }

    /// Engine instances running now.
    pub fn instances(&self) -> usize {
        self.shared.live.load(Ordering::Acquire)
    }

    /// Moving average of one execution's duration (zero before the first execution).
    pub fn execution_time(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.shared.exec_ns.load(Ordering::Relaxed))
    }

    /// Takes the waiting requests that would not start and finish by `deadline` (all of them
    /// when `deadline` has passed) out of the queue and answers each with `error()`: a draining
    /// worker hands them back for another replica to run. The estimate serves the queue in
    /// waves of `instances × max_batch_size` rows, each one execution long (the moving average),
    /// after the batches running now. Returns how many were handed back.
    pub fn hand_back(&self, deadline: Instant, error: impl Fn() -> Error) -> usize {
        let s = &self.shared;
        let now = Instant::now();
        let taken = {
            let mut q = s.queue.lock();
            let keep = if now >= deadline {
                0
            } else {
                let exec = self.execution_time();
                let per_wave = (s.live.load(Ordering::Acquire).max(1) * s.policy.max_batch.max(1)) as u64;
                let running = u32::from(q.busy > 0);
                let mut rows_before = 0u64;
                let mut keep = 0usize;
                for rows in q.rows_in_order() {
                    let wave = u32::try_from(rows_before / per_wave).unwrap_or(u32::MAX);
                    let finish = now + exec.saturating_mul(wave.saturating_add(1).saturating_add(running));
                    if finish > deadline {
                        break;
                    }
                    rows_before += rows as u64;
                    keep += 1;
                }
                keep
            };
            q.take_after(keep)
        };
        let n = taken.len();
        for job in taken {
            let done = Completed::failure(job.enqueued, error());
            s.deliver(job, Some(done));
        }
        n
    }

    /// The adaptive concurrency limit now, when one is configured.
    pub fn limit(&self) -> Option<usize> {
        self.shared.limiter.as_ref().map(Limiter::limit)
    }

    /// The error a request at the default priority would get at once because the queue is
    /// full or the adaptive limit is reached: lets an adapter shed load before decoding a body.
    pub fn full(&self) -> Option<Error> {
        let s = &self.shared;
        if let Some(limiter) = &s.limiter {
            if limiter.held() >= limiter.limit() {
                let why =
                    format!("model {}: adaptive concurrency limit of {} requests reached", s.label, limiter.limit());
                return Some(Error::new(ErrorKind::ResourceExhausted, why));
            }
        }
        let level = s.policy.default_level;
        let max = s.policy.levels[level].max_queue;
        if max == 0 || s.policy.levels.len() > 1 {
            return None;
        }
        let waiting = s.queue.lock().level_len(level);
        (waiting >= max).then(|| Error::new(ErrorKind::ResourceExhausted, queue_full(&s.label, waiting, max, "")))
    }

    /// Queues one request (inputs already checked against the configuration) and waits for its answer.
    pub async fn run(&self, inputs: Vec<Tensor>, admission: Admission) -> Completed {
        let s = &self.shared;
        let enqueued = Instant::now();
        let level = s.policy.level(admission.priority);
        if s.live.load(Ordering::Acquire) == 0 {
            return Completed::failure(
                enqueued,
                Error::unavailable(format!("model {}: no engine instance is running", s.label)),
            );
        }
        if let Some(limiter) = &s.limiter {
            if let Err(limit) = limiter.try_acquire() {
                let why = format!("model {}: adaptive concurrency limit of {limit} requests reached", s.label);
                return Completed::failure(enqueued, Error::new(ErrorKind::ResourceExhausted, why));
            }
        }
        let (reply, answer) = oneshot::channel();
        let rows = batch::rows(&inputs, s.policy.max_batch > 0);
        let mut inline = false;
        let seq = {
            let mut q = s.queue.lock();
            let max = s.policy.levels[level].max_queue;
            let waiting = q.level_len(level);
            if max > 0 && waiting >= max {
                drop(q);
                if let Some(limiter) = &s.limiter {
                    limiter.cancel();
                }
                let at =
                    if s.policy.levels.len() > 1 { format!(" at priority level {}", level + 1) } else { String::new() };
                let why = queue_full(&s.label, waiting, max, &at);
                return Completed::failure(enqueued, Error::new(ErrorKind::ResourceExhausted, why));
            }
            let seq = q.next_seq;
            q.next_seq += 1;
            let job = Job {
                rows,
                inputs,
                level,
                enqueued,
                deadline: s.policy.deadline(level, admission.timeout_us, admission.started),
                delayed: false,
                seq,
                span: tracing::Span::current(),
                reply,
            };
            if s.runs_inline(&q, rows) && !job.expired(Instant::now()) {
                q.busy += 1;
                drop(q);
                inline = true;
                s.execute(vec![job], true);
            } else {
                q.push(job);
            }
            seq
        };
        if !inline {
            s.work.notify_one();
        }
        let mut waiting = Waiting { shared: s, level, seq, answered: false };
        let done = answer.await;
        waiting.answered = true;
        match done {
            Ok(done) => done,
            Err(_) => Completed::failure(enqueued, Error::internal(format!("model {}: request was dropped", s.label))),
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shared.queue.lock().closed = true;
        self.shared.work.notify_all();
    }
}

fn queue_full(label: &str, waiting: usize, max: usize, at: &str) -> String {
    format!("model {label}: queue is full ({waiting} requests waiting{at}, max_queue_size {max})")
}

/// Removes a request from the queue when its caller stops waiting.
struct Waiting<'a> {
    shared: &'a Shared,
    level: usize,
    seq: u64,
    answered: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let removed = self.shared.queue.lock().remove(self.level, self.seq);
        if let Some(job) = removed {
            self.shared.deliver(job, None);
        }
    }
}

fn spawn_instance(shared: &Arc<Shared>, index: usize, generation: u32) -> Result<()> {
    let s = shared.clone();
    let short: String = shared.label.chars().take(8).collect();
    let name = if generation == 0 {
        format!("engine-{short}-{index}")
    } else {
        format!("engine-{short}-{index}.{generation}")
    };
    shared.live.fetch_add(1, Ordering::AcqRel);
    std::thread::Builder::new().name(name).spawn(move || instance_loop(s, index, generation)).map(|_| ()).map_err(|e| {
        shared.live.fetch_sub(1, Ordering::AcqRel);
        Error::internal(format!("{}: cannot start an engine thread: {e}", shared.label))
    })
}

fn instance_loop(shared: Arc<Shared>, index: usize, generation: u32) {
    while let Some(jobs) = shared.next_batch() {
        let panicked = shared.execute(jobs, false);
        if panicked {
            tracing::error!(model = %shared.label, instance = index, "engine instance panicked; replacing it");
            let replaced = spawn_instance(&shared, index, generation.wrapping_add(1));
            shared.live.fetch_sub(1, Ordering::AcqRel);
            if let Err(e) = replaced {
                tracing::error!(error = %e, "no replacement instance");
                shared.fail_all_if_none_left();
            }
            return;
        }
    }
    shared.live.fetch_sub(1, Ordering::AcqRel);
}

// === impl Shared ===

impl Shared {
    /// Blocks until there is a batch to run (None once the scheduler is closed and drained).
    fn next_batch(&self) -> Option<Vec<Job>> {
        let mut q = self.queue.lock();
        loop {
            if q.busy >= self.live.load(Ordering::Acquire) && !q.closed {
                // every instance slot is taken (a request runs inline): it wakes one when it ends
                self.work.wait(&mut q);
                continue;
            }
            let mut dropped = Vec::new();
            let decision = q.next(&self.policy, Instant::now(), &mut dropped);
            if !dropped.is_empty() {
                parking_lot::MutexGuard::unlocked(&mut q, || self.answer_dropped(dropped));
                // The queue may have changed (and its wake-up gone by) while unlocked: decide again.
                if !matches!(decision, Decision::Run(_)) {
                    continue;
                }
            }
            match decision {
                Decision::Run(jobs) => {
                    q.busy += 1;
                    return Some(jobs);
                }
                Decision::Wait(until) => {
                    self.work.wait_until(&mut q, until);
                }
                Decision::Idle if q.closed => return None,
                Decision::Idle => self.work.wait(&mut q),
            }
        }
    }

    /// Answers requests taken off the queue without running: timed out, or abandoned.
    fn answer_dropped(&self, dropped: Vec<Job>) {
        let now = Instant::now();
        for job in dropped {
            if job.reply.is_closed() {
                self.deliver(job, None);
                continue;
            }
            let deadline = job.deadline.unwrap_or(now);
            let waited = deadline.saturating_duration_since(job.enqueued);
            let e = Error::new(
                ErrorKind::DeadlineExceeded,
                format!("model {}: request timed out after waiting {} µs in the queue", self.label, waited.as_micros()),
            );
            let done = Completed::failure(job.enqueued, e);
            self.deliver(job, Some(done));
        }
    }

    /// Whether a request of `rows` rows runs on the caller's thread now (see [`INLINE_MAX_NS`]):
    /// nothing waits before it, an instance slot is free, and the engine's measured time for
    /// that many rows is small.
    fn runs_inline(&self, q: &Queue, rows: usize) -> bool {
        if !self.inline.load(Ordering::Relaxed) || q.len > 0 || q.closed || q.busy >= self.live.load(Ordering::Acquire)
        {
            return false;
        }
        let row_ns = self.row_ns.load(Ordering::Relaxed);
        row_ns > 0 && row_ns.saturating_mul(rows as u64) <= self.policy.inline_max_ns
    }

    /// Runs one batch, frees its instance slot (`busy`, taken by the caller) and answers its
    /// requests; returns whether the engine panicked. `inline`:
    /// on a request's own task (a panic there turns inline runs off instead of replacing a thread).
    fn execute(&self, jobs: Vec<Job>, inline: bool) -> bool {
        let rows: Vec<usize> = jobs.iter().map(|j| j.rows).collect();
        let span = jobs[0].span.clone();
        let _entered = span.enter();
        let mut phases = Phases::start();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<Vec<Vec<Tensor>>> {
            if let [job] = jobs.as_slice() {
                return Ok(vec![self.engine.infer(&job.inputs, &mut phases)?]);
            }
            let parts: Vec<&[Tensor]> = jobs.iter().map(|j| j.inputs.as_slice()).collect();
            let joined = batch::join(&parts);
            let outputs = self.engine.infer(&joined, &mut phases)?;
            batch::split(outputs, &rows, &self.label)
        }));
        let finished = Instant::now();
        let panicked = result.is_err();
        if !panicked {
            // moving averages (1/8) of the execution time, whole and per row
            let took = finished.saturating_duration_since(phases.start).as_nanos().min(u128::from(u64::MAX)) as u64;
            let per_row = (took / rows.iter().sum::<usize>().max(1) as u64).max(1);
            for (average, sample) in [(&self.exec_ns, took), (&self.row_ns, per_row)] {
                let before = average.load(Ordering::Relaxed);
                average.store(if before == 0 { sample } else { before - before / 8 + sample / 8 }, Ordering::Relaxed);
            }
        }
        {
            // the slot is free before the answers go out, so a caller answered here finds it free
            let mut q = self.queue.lock();
            q.busy -= 1;
            // an instance held back while every slot was taken may run what waits (this
            // instance's thread takes one itself when it loops)
            if q.len > usize::from(!inline) {
                self.work.notify_one();
            }
        }
        if panicked && inline {
            tracing::warn!(model = %self.label, "engine panicked on a request's own thread; its requests now always go to instance threads");
            self.inline.store(false, Ordering::Relaxed);
        }
        let mut per_request: Vec<Result<Vec<Tensor>>> = match result {
            Ok(Ok(parts)) => parts.into_iter().map(Ok).collect(),
            Ok(Err(e)) => vec![Err(e); jobs.len()],
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(model = %self.label, panic = %what, "engine panicked; failing this batch");
                let e = Error::internal(format!("model {}: engine failed: {what}", self.label));
                vec![Err(e); jobs.len()]
            }
        };
        let batch_rows = rows.iter().sum();
        for (i, (job, outputs)) in jobs.into_iter().zip(per_request.drain(..)).enumerate() {
            let done = Completed {
                outputs,
                enqueued: job.enqueued,
                phases,
                finished,
                batch_rows,
                records_batch: i == 0,
                instance_replaced: panicked && !inline,
            };
            self.deliver(job, Some(done));
        }
        panicked
    }

    /// Hands a request its answer (None: its caller is gone), in arrival order when asked to.
    fn deliver(&self, job: Job, done: Option<Completed>) {
        if let Some(limiter) = &self.limiter {
            limiter.release(job.enqueued.elapsed());
        }
        let Some(reorder) = &self.reorder else {
            if let Some(done) = done {
                let _ = job.reply.send(done);
            }
            return;
        };
        let mut r = reorder.lock();
        r.held.insert(job.seq, (job.reply, done));
        loop {
            let next = r.next;
            let Some((reply, done)) = r.held.remove(&next) else { break };
            if let Some(done) = done {
                let _ = reply.send(done);
            }
            r.next += 1;
        }
    }

    /// With no instance left, nothing would ever answer the queue: fail it.
    fn fail_all_if_none_left(&self) {
        if self.live.load(Ordering::Acquire) > 0 {
            return;
        }
        let jobs = self.queue.lock().drain();
        for job in jobs {
            let e = Error::unavailable(format!("model {}: no engine instance is running", self.label));
            let done = Completed::failure(job.enqueued, e);
            self.deliver(job, Some(done));
        }
    }
}
