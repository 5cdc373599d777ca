//! Where the aggregator's CPU work runs. In a server: one dedicated thread at the scheduler's
//! idle priority (Linux `SCHED_IDLE`), so folding and scoring use only CPU time no request
//! wants, and a request thread that wakes up preempts it at once. When the machine is
//! saturated the folding falls behind, the bounded queue fills and requests are skipped and
//! counted: monitoring samples under overload instead of slowing serving. Tests with a paused
//! clock use the runtime's blocking pool (tokio holds the paused clock while it works).

use std::panic::AssertUnwindSafe;

/// Which thread folds what the serving path queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folding {
    /// A dedicated thread at idle priority (what the server uses).
    IdleThread,
    /// tokio's blocking pool at normal priority (tests with `tokio::time::pause`).
    BlockingPool,
}

type Job = Box<dyn FnOnce() + Send>;

pub(crate) enum Worker {
    Idle(std::sync::mpsc::Sender<Job>),
    Blocking,
}

impl Worker {
    pub(crate) fn start(folding: Folding) -> Worker {
        if folding == Folding::BlockingPool {
            return Worker::Blocking;
        }
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new().name("flotilla-drift".into()).spawn(move || {
            flotilla_core::observe::idle_priority("drift aggregator");
            // ends when the monitor (the only sender) is dropped
            while let Ok(job) = rx.recv() {
                if std::panic::catch_unwind(AssertUnwindSafe(job)).is_err() {
                    tracing::error!("drift aggregator job panicked; the monitor goes on");
                }
            }
        });
        match spawned {
            Ok(_) => Worker::Idle(tx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the drift thread; folding on the blocking pool");
                Worker::Blocking
            }
        }
    }

    /// Runs `f` on the worker and waits for its result (None if it panicked).
    pub(crate) async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        match self {
            Worker::Idle(tx) => {
                let (done, result) = tokio::sync::oneshot::channel();
                tx.send(Box::new(move || {
                    let _ = done.send(f());
                }))
                .ok()?;
                result.await.ok()
            }
            Worker::Blocking => tokio::task::spawn_blocking(f).await.ok(),
        }
    }
}
