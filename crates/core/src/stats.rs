//! Per model-version statistics in Triton's shape (what `perf_analyzer` and
//! `tritonclient.get_inference_statistics` read).

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A count and a total duration in nanoseconds.
#[derive(Debug, Default)]
pub struct Duration2 {
    count: AtomicU64,
    ns: AtomicU64,
}

/// A snapshot of [`Duration2`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountNs {
    pub count: u64,
    pub ns: u64,
}

impl Duration2 {
    fn add(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }
    fn get(&self) -> CountNs {
        CountNs { count: self.count.load(Ordering::Relaxed), ns: self.ns.load(Ordering::Relaxed) }
    }
}

/// Live counters of one model version.
#[derive(Debug, Default)]
pub struct ModelStats {
    last_inference_ms: AtomicU64,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    success: Duration2,
    fail: Duration2,
    queue: Duration2,
    compute_input: Duration2,
    compute_infer: Duration2,
    compute_output: Duration2,
    batches: Mutex<BTreeMap<u64, [CountNs; 3]>>,
}

/// Timings of one executed batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchTiming {
    pub batch_size: u64,
    pub compute_input: Duration,
    pub compute_infer: Duration,
    pub compute_output: Duration,
}

/// A consistent-enough snapshot for reporting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub last_inference_ms: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub success: CountNs,
    pub fail: CountNs,
    pub queue: CountNs,
    pub compute_input: CountNs,
    pub compute_infer: CountNs,
    pub compute_output: CountNs,
    /// batch size → (compute_input, compute_infer, compute_output)
    pub batches: BTreeMap<u64, [CountNs; 3]>,
}

// === impl ModelStats ===

impl ModelStats {
    /// Records a request that completed successfully after `total` (queue included); `batch`
    /// holds the request's own rows and the compute times of the batch it ran in.
    pub fn request_success(&self, total: Duration, queue: Duration, batch: BatchTiming) {
        self.success.add(total);
        self.queue.add(queue);
        self.compute_input.add(batch.compute_input);
        self.compute_infer.add(batch.compute_infer);
        self.compute_output.add(batch.compute_output);
        self.inference_count.fetch_add(batch.batch_size, Ordering::Relaxed);
        self.touch();
    }

    /// Records one engine execution (a batch of one or more requests, `batch.batch_size` rows).
    pub fn execution(&self, batch: BatchTiming) {
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        let mut batches = self.batches.lock();
        let entry = batches.entry(batch.batch_size).or_default();
        for (slot, d) in entry.iter_mut().zip([batch.compute_input, batch.compute_infer, batch.compute_output]) {
            slot.count += 1;
            slot.ns += d.as_nanos().min(u64::MAX as u128) as u64;
        }
    }

    /// Records a request that failed after reaching the model.
    pub fn request_failure(&self, total: Duration) {
        self.fail.add(total);
        self.touch();
    }

    fn touch(&self) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        self.last_inference_ms.store(now, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            last_inference_ms: self.last_inference_ms.load(Ordering::Relaxed),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            success: self.success.get(),
            fail: self.fail.get(),
            queue: self.queue.get(),
            compute_input: self.compute_input.get(),
            compute_infer: self.compute_infer.get(),
            compute_output: self.compute_output.get(),
            batches: self.batches.lock().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_requests_and_batches() {
        let s = ModelStats::default();
        let ms = Duration::from_millis;
        let b = BatchTiming { batch_size: 2, compute_input: ms(1), compute_infer: ms(2), compute_output: ms(3) };
        s.request_success(ms(10), ms(4), b);
        s.request_success(ms(10), ms(4), b);
        s.execution(b);
        s.execution(b);
        s.request_failure(ms(1));
        let snap = s.snapshot();
        assert_eq!(snap.inference_count, 4);
        assert_eq!(snap.execution_count, 2);
        assert_eq!(snap.success, CountNs { count: 2, ns: 20_000_000 });
        assert_eq!(snap.fail.count, 1);
        assert_eq!(snap.batches[&2][1], CountNs { count: 2, ns: 4_000_000 });
        assert!(snap.last_inference_ms > 0);
    }
}
