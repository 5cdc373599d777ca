//! Engine instances on dedicated threads. The async runtime hands a batch to
//! the pool and awaits the answer; engine work never runs on runtime threads.
//! An engine panic fails only that batch; the thread carries on.
//!
//! Admission: the queue is bounded (`max_queue_size`; a full queue answers at
//! once with RESOURCE_EXHAUSTED / 429), a request whose deadline passed while
//! it waited is answered DEADLINE_EXCEEDED without running, and a request whose
//! client went away (its future dropped) is skipped.

use crate::engine::{Engine, Phases};
use crate::error::{Error, ErrorKind, Result};
use crate::tensor::Tensor;
use parking_lot::Mutex;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// What an instance reports back for one batch.
#[derive(Debug)]
pub struct Completed {
    pub outputs: Result<Vec<Tensor>>,
    pub enqueued: Instant,
    pub phases: Phases,
    pub finished: Instant,
}

impl Completed {
    /// A batch that failed before it ran.
    fn failure(enqueued: Instant, error: Error) -> Self {
        Self { outputs: Err(error), enqueued, phases: Phases::start(), finished: Instant::now() }
    }
}

struct Job {
    inputs: Vec<Tensor>,
    enqueued: Instant,
    deadline: Option<Instant>,
    span: tracing::Span,
    reply: oneshot::Sender<Completed>,
}

/// A fixed set of threads running one engine. Dropping the pool lets the
/// threads finish what is queued and exit.
pub struct InstancePool {
    sender: mpsc::Sender<Job>,
    label: String,
    /// Requests waiting for an instance.
    queued: Arc<AtomicUsize>,
    /// Most requests that may wait (0 = no limit).
    max_queue: usize,
}

// === impl InstancePool ===

impl InstancePool {
    /// Starts `count` instance threads for `engine`; `label` names the model version in errors and
    /// thread names; at most `max_queue` requests wait for an instance (0 = no limit).
    pub fn start(engine: Arc<dyn Engine>, count: usize, label: &str, max_queue: usize) -> Result<Self> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let queued = Arc::new(AtomicUsize::new(0));
        for i in 0..count.max(1) {
            let receiver = receiver.clone();
            let engine = engine.clone();
            let queued = queued.clone();
            let label_owned = label.to_string();
            std::thread::Builder::new()
                .name(format!("engine-{}-{i}", truncate(label, 8)))
                .spawn(move || instance_loop(engine, receiver, queued, label_owned))
                .map_err(|e| Error::internal(format!("{label}: cannot start an engine thread: {e}")))?;
        }
        Ok(Self { sender, label: label.to_string(), queued, max_queue })
    }

    /// Runs one batch on the next free instance; a batch still queued at `deadline` fails
    /// with DEADLINE_EXCEEDED without running.
    pub async fn run(&self, inputs: Vec<Tensor>, deadline: Option<Instant>) -> Completed {
        let enqueued = Instant::now();
        let waiting = self.queued.fetch_add(1, Ordering::AcqRel);
        if self.max_queue > 0 && waiting >= self.max_queue {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            let e = Error::new(
                ErrorKind::ResourceExhausted,
                format!(
                    "model {}: queue is full ({waiting} requests waiting, max_queue_size {})",
                    self.label, self.max_queue
                ),
            );
            return Completed::failure(enqueued, e);
        }
        let (reply, answer) = oneshot::channel();
        let job = Job { inputs, enqueued, deadline, span: tracing::Span::current(), reply };
        if self.sender.send(job).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return self.failed(enqueued, "its engine threads have stopped");
        }
        match answer.await {
            Ok(done) => done,
            Err(_) => self.failed(enqueued, "its engine thread dropped the request"),
        }
    }

    /// Requests waiting for an instance now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    fn failed(&self, enqueued: Instant, why: &str) -> Completed {
        Completed::failure(enqueued, Error::internal(format!("model {}: {why}", self.label)))
    }
}

fn instance_loop(
    engine: Arc<dyn Engine>,
    receiver: Arc<Mutex<mpsc::Receiver<Job>>>,
    queued: Arc<AtomicUsize>,
    label: String,
) {
    loop {
        let job = {
            let guard = receiver.lock();
            match guard.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        queued.fetch_sub(1, Ordering::AcqRel);
        if job.reply.is_closed() {
            continue; // the client went away while this request waited
        }
        let _entered = job.span.enter();
        if let Some(deadline) = job.deadline.filter(|d| Instant::now() >= *d) {
            let waited = deadline.saturating_duration_since(job.enqueued);
            let e = Error::new(
                ErrorKind::DeadlineExceeded,
                format!("model {label}: request timed out after waiting {} µs in the queue", waited.as_micros()),
            );
            let _ = job.reply.send(Completed::failure(job.enqueued, e));
            continue;
        }
        let mut phases = Phases::start();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| engine.infer(&job.inputs, &mut phases)));
        let outputs = match result {
            Ok(outputs) => outputs,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(model = %label, panic = %what, "engine panicked; failing this batch");
                Err(Error::internal(format!("model {label}: engine failed: {what}")))
            }
        };
        let done = Completed { outputs, enqueued: job.enqueued, phases, finished: Instant::now() };
        let _ = job.reply.send(done);
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datatype::DataType;

    struct Echo;
    impl Engine for Echo {
        fn infer(&self, inputs: &[Tensor], _: &mut Phases) -> Result<Vec<Tensor>> {
            if inputs.is_empty() {
                panic!("deliberate test panic");
            }
            Ok(inputs.to_vec())
        }
    }

    #[tokio::test]
    async fn runs_batches_and_survives_a_panic() {
        let pool = InstancePool::start(Arc::new(Echo), 2, "echo/1", 0).unwrap();
        let t = Tensor::new("x", DataType::U8, vec![1], vec![7u8]);
        let done = pool.run(vec![t.clone()], None).await;
        assert_eq!(done.outputs.unwrap(), vec![t.clone()]);
        let err = pool.run(vec![], None).await.outputs.unwrap_err();
        assert!(err.message.contains("deliberate test panic") && err.message.contains("echo/1"), "{err}");
        for _ in 0..4 {
            assert!(pool.run(vec![t.clone()], None).await.outputs.is_ok());
        }
    }

    /// Blocks each batch until the test releases it; counts the batches it ran.
    struct Gate {
        release: Mutex<mpsc::Receiver<()>>,
        entered: AtomicUsize,
        ran: AtomicUsize,
    }
    impl Engine for Gate {
        fn infer(&self, inputs: &[Tensor], _: &mut Phases) -> Result<Vec<Tensor>> {
            self.entered.fetch_add(1, Ordering::SeqCst);
            let _ = self.release.lock().recv();
            self.ran.fetch_add(1, Ordering::SeqCst);
            Ok(inputs.to_vec())
        }
    }

    fn gate() -> (Arc<Gate>, mpsc::Sender<()>) {
        let (tx, rx) = mpsc::channel();
        (Arc::new(Gate { release: Mutex::new(rx), entered: AtomicUsize::new(0), ran: AtomicUsize::new(0) }), tx)
    }

    async fn wait_for(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..5000 {
            if cond() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        panic!("condition not reached: {what}");
    }

    #[tokio::test]
    async fn full_queue_rejects_at_once_and_deadlines_and_cancellations_skip_the_engine() {
        let (engine, release) = gate();
        let pool = Arc::new(InstancePool::start(engine.clone(), 1, "gate/1", 1).unwrap());
        let t = Tensor::new("x", DataType::U8, vec![1], vec![1u8]);
        // One running (blocked in the engine), one waiting: the queue (max 1) is full.
        let p = pool.clone();
        let (t1, t2) = (t.clone(), t.clone());
        let running = tokio::spawn(async move { p.run(vec![t1], None).await });
        wait_for("first in the engine", || engine.entered.load(Ordering::SeqCst) == 1).await;
        let p = pool.clone();
        // Its deadline has passed by the time an instance takes it.
        let deadline = Instant::now();
        let waiting = tokio::spawn(async move { p.run(vec![t2], Some(deadline)).await });
        wait_for("second queued", || pool.queued.load(Ordering::SeqCst) == 1).await;
        let rejected = pool.run(vec![t.clone()], None).await.outputs.unwrap_err();
        assert_eq!(rejected.kind, ErrorKind::ResourceExhausted);
        assert!(rejected.message.contains("max_queue_size 1"), "{rejected}");
        // The waiting request's deadline passed while the engine was busy: it never runs.
        release.send(()).unwrap();
        let first = running.await.unwrap().outputs;
        assert!(first.is_ok(), "{first:?}");
        let late = waiting.await.unwrap().outputs.unwrap_err();
        assert_eq!(late.kind, ErrorKind::DeadlineExceeded, "{late}");
        assert_eq!(engine.ran.load(Ordering::SeqCst), 1, "the late request must not run");

        // A queued request whose client went away is skipped.
        let p = pool.clone();
        let t3 = t.clone();
        let blocker = tokio::spawn(async move { p.run(vec![t3], None).await });
        wait_for("blocker in the engine", || engine.entered.load(Ordering::SeqCst) == 2).await;
        let p = pool.clone();
        let t4 = t.clone();
        let abandoned = tokio::spawn(async move { p.run(vec![t4], None).await });
        wait_for("abandoned queued", || pool.queued.load(Ordering::SeqCst) == 1).await;
        abandoned.abort();
        let _ = abandoned.await;
        release.send(()).unwrap();
        assert!(blocker.await.unwrap().outputs.is_ok());
        let p = pool.clone();
        let after = tokio::spawn(async move { p.run(vec![t], None).await });
        release.send(()).unwrap();
        assert!(after.await.unwrap().outputs.is_ok());
        assert_eq!(engine.ran.load(Ordering::SeqCst), 3, "the abandoned request must not run");
    }
}
