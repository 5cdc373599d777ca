//! Engine instances on dedicated threads. The async runtime hands a batch to
//! the pool and awaits the answer; engine work never runs on runtime threads.
//! An engine panic fails only that batch; the thread carries on.

use crate::engine::{Engine, Phases};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use parking_lot::Mutex;
use std::panic::AssertUnwindSafe;
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

struct Job {
    inputs: Vec<Tensor>,
    enqueued: Instant,
    span: tracing::Span,
    reply: oneshot::Sender<Completed>,
}

/// A fixed set of threads running one engine. Dropping the pool lets the
/// threads finish what is queued and exit.
pub struct InstancePool {
    sender: mpsc::Sender<Job>,
    label: String,
}

// === impl InstancePool ===

impl InstancePool {
    /// Starts `count` instance threads for `engine`; `label` names the model version in errors and thread names.
    pub fn start(engine: Arc<dyn Engine>, count: usize, label: &str) -> Result<Self> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..count.max(1) {
            let receiver = receiver.clone();
            let engine = engine.clone();
            let label_owned = label.to_string();
            std::thread::Builder::new()
                .name(format!("engine-{}-{i}", truncate(label, 8)))
                .spawn(move || instance_loop(engine, receiver, label_owned))
                .map_err(|e| Error::internal(format!("{label}: cannot start an engine thread: {e}")))?;
        }
        Ok(Self { sender, label: label.to_string() })
    }

    /// Runs one batch on the next free instance.
    pub async fn run(&self, inputs: Vec<Tensor>) -> Completed {
        let enqueued = Instant::now();
        let (reply, answer) = oneshot::channel();
        let job = Job { inputs, enqueued, span: tracing::Span::current(), reply };
        if self.sender.send(job).is_err() {
            return self.failed(enqueued, "its engine threads have stopped");
        }
        match answer.await {
            Ok(done) => done,
            Err(_) => self.failed(enqueued, "its engine thread dropped the request"),
        }
    }

    fn failed(&self, enqueued: Instant, why: &str) -> Completed {
        Completed {
            outputs: Err(Error::internal(format!("model {}: {why}", self.label))),
            enqueued,
            phases: Phases::start(),
            finished: Instant::now(),
        }
    }
}

fn instance_loop(engine: Arc<dyn Engine>, receiver: Arc<Mutex<mpsc::Receiver<Job>>>, label: String) {
    loop {
        let job = {
            let guard = receiver.lock();
            match guard.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let _entered = job.span.enter();
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
        let pool = InstancePool::start(Arc::new(Echo), 2, "echo/1").unwrap();
        let t = Tensor::new("x", DataType::U8, vec![1], vec![7u8]);
        let done = pool.run(vec![t.clone()]).await;
        assert_eq!(done.outputs.unwrap(), vec![t.clone()]);
        let err = pool.run(vec![]).await.outputs.unwrap_err();
        assert!(err.message.contains("deliberate test panic") && err.message.contains("echo/1"), "{err}");
        for _ in 0..4 {
            assert!(pool.run(vec![t.clone()]).await.outputs.is_ok());
        }
    }
}
