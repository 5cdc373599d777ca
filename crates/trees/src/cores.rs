//! Cores shared by every tree model in the process.
//!
//! A large batch splits its rows over helper threads, but only over cores no
//! other tree batch is using at that moment: a server started with 2 instances
//! on 2 cores runs one large batch on both cores while the other instance is
//! idle, and two concurrent batches on one core each. The count is advisory (the
//! async runtime's threads are not in it); it keeps concurrent batches from
//! multiplying threads past the machine.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Tree batches running now, and the helper threads they took.
static BUSY: AtomicUsize = AtomicUsize::new(0);

/// The machine's cores (as the process sees them: cgroup quota and affinity included).
pub fn available() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// The calling thread's core plus the idle ones it took; given back on drop.
pub struct Lease {
    busy: &'static AtomicUsize,
    held: usize,
}

impl Lease {
    /// Counts the calling thread as busy and takes up to `want - 1` more cores
    /// that no other batch holds. [`Lease::threads`] says how many it got (≥ 1).
    pub fn take(want: usize) -> Self {
        Self::take_from(&BUSY, available(), want)
    }

    fn take_from(busy: &'static AtomicUsize, cores: usize, want: usize) -> Self {
        let mut now = busy.load(Ordering::Relaxed);
        loop {
            let idle = cores.saturating_sub(now + 1);
            let held = 1 + idle.min(want.saturating_sub(1));
            match busy.compare_exchange_weak(now, now + held, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Self { busy, held },
                Err(seen) => now = seen,
            }
        }
    }

    /// Threads this batch may run on.
    pub fn threads(&self) -> usize {
        self.held
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.busy.fetch_sub(self.held, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_takes_only_the_cores_others_leave_idle() {
        let busy: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
        let first = Lease::take_from(busy, 4, 3);
        assert_eq!(first.threads(), 3);
        let second = Lease::take_from(busy, 4, 4);
        assert_eq!(second.threads(), 1, "one core left: the caller's own");
        let third = Lease::take_from(busy, 4, 2);
        assert_eq!(third.threads(), 1, "the caller always runs, even on a full machine");
        assert_eq!(busy.load(Ordering::Relaxed), 5);
        drop((first, second, third));
        assert_eq!(busy.load(Ordering::Relaxed), 0, "every lease gives its cores back");
        assert_eq!(Lease::take_from(busy, 4, 8).threads(), 4);
    }
}
