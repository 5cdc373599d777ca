//! Load signals the router keeps per worker and model: peak-EWMA latency, a decaying request
//! rate, and a window of recent latencies for the hedging delay.
//!
//! Peak-EWMA is Finagle's (as in Linkerd and tower): the estimate jumps to any latency above it
//! and decays towards lower ones with time. tower's `load::PeakEwma` implements the same
//! algorithm, but its `Cost` is opaque (it can be compared, not divided), and the router needs
//! `cost / capacity` to weight workers by what they measured they can carry, so the estimate
//! is kept here, in a few lines.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Peak-EWMA of a latency.
#[derive(Debug)]
pub struct PeakEwma {
    /// (estimate in nanoseconds, when it was last updated)
    state: Mutex<(f64, Instant)>,
    decay_ns: f64,
}

impl PeakEwma {
    pub fn new(initial: Duration, decay: Duration) -> Self {
        Self {
            state: Mutex::new((initial.as_nanos() as f64, Instant::now())),
            decay_ns: (decay.as_nanos() as f64).max(1.0),
        }
    }

    /// Takes one observed latency: a peak replaces the estimate, a lower value pulls it down
    /// by how much time passed since the last update.
    pub fn observe(&self, rtt: Duration) {
        let rtt = rtt.as_nanos() as f64;
        let now = Instant::now();
        let mut s = self.state.lock();
        if rtt > s.0 {
            s.0 = rtt;
        } else {
            let w = (-(now.saturating_duration_since(s.1).as_nanos() as f64) / self.decay_ns).exp();
            s.0 = s.0 * w + rtt * (1.0 - w);
        }
        s.1 = now;
    }

    /// The estimate now, in nanoseconds: it decays towards zero while nothing is observed, so
    /// an idle worker is tried again.
    pub fn estimate_ns(&self) -> f64 {
        let s = self.state.lock();
        let idle = Instant::now().saturating_duration_since(s.1).as_nanos() as f64;
        s.0 * (-idle / self.decay_ns).exp()
    }
}

/// A time-decayed moving average of a latency (the usual level, without peak-EWMA's peaks).
#[derive(Debug)]
pub struct Ewma {
    state: Mutex<(f64, Instant)>,
    decay_ns: f64,
}

impl Ewma {
    pub fn new(initial: Duration, decay: Duration) -> Self {
        Self {
            state: Mutex::new((initial.as_nanos() as f64, Instant::now())),
            decay_ns: (decay.as_nanos() as f64).max(1.0),
        }
    }

    /// Takes one observation, weighted by the time since the previous one (at least 1%).
    pub fn observe(&self, value: Duration) {
        let now = Instant::now();
        let mut s = self.state.lock();
        let w = (-(now.saturating_duration_since(s.1).as_nanos() as f64) / self.decay_ns).exp().min(0.99);
        s.0 = s.0 * w + value.as_nanos() as f64 * (1.0 - w);
        s.1 = now;
    }

    /// The average of the observations.
    pub fn value_ns(&self) -> f64 {
        self.state.lock().0
    }

    /// The average decayed towards zero for the time nothing was observed (as peak-EWMA does),
    /// so a worker whose latency was high once is tried again after a quiet spell.
    pub fn recent_ns(&self) -> f64 {
        let s = self.state.lock();
        let idle = Instant::now().saturating_duration_since(s.1).as_nanos() as f64;
        s.0 * (-idle / self.decay_ns).exp()
    }
}

/// Requests per second over the recent past (exponentially decaying count).
#[derive(Debug)]
pub struct Rate {
    /// (decayed count, when it was last updated)
    state: Mutex<(f64, Instant)>,
    tau: f64,
}

impl Rate {
    pub fn new(tau: Duration) -> Self {
        Self { state: Mutex::new((0.0, Instant::now())), tau: tau.as_secs_f64().max(1e-3) }
    }

    pub fn tick(&self) {
        let now = Instant::now();
        let mut s = self.state.lock();
        let w = (-now.saturating_duration_since(s.1).as_secs_f64() / self.tau).exp();
        s.0 = s.0 * w + 1.0;
        s.1 = now;
    }

    pub fn per_second(&self) -> f64 {
        let s = self.state.lock();
        let w = (-Instant::now().saturating_duration_since(s.1).as_secs_f64() / self.tau).exp();
        s.0 * w / self.tau
    }
}

const WINDOW: usize = 512;

/// The latencies of a model's recent requests, and their 95th percentile (the hedging delay).
#[derive(Debug, Default)]
pub struct LatencyWindow {
    ring: Mutex<(Vec<u32>, usize, u64)>,
    p95_us: AtomicU64,
}

impl LatencyWindow {
    /// Records one latency; the percentile is recomputed every 64 requests.
    pub fn record(&self, latency: Duration) {
        let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        let mut r = self.ring.lock();
        let (ring, next, seen) = &mut *r;
        if ring.len() < WINDOW {
            ring.push(us);
        } else {
            ring[*next] = us;
        }
        *next = (*next + 1) % WINDOW;
        *seen += 1;
        if *seen % 64 == 0 {
            let mut sorted = ring.clone();
            sorted.sort_unstable();
            let at = (sorted.len() * 95 / 100).min(sorted.len() - 1);
            self.p95_us.store(u64::from(sorted[at]), Ordering::Relaxed);
        }
    }

    /// The 95th percentile of the recent latencies, once at least `min_samples` were seen.
    pub fn p95(&self, min_samples: u64) -> Option<Duration> {
        let seen = self.ring.lock().2;
        let us = self.p95_us.load(Ordering::Relaxed);
        (seen >= min_samples && us > 0).then(|| Duration::from_micros(us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_ewma_takes_peaks_and_decays() {
        let e = PeakEwma::new(Duration::from_millis(1), Duration::from_millis(50));
        e.observe(Duration::from_millis(10));
        assert!(e.estimate_ns() > 9e6);
        std::thread::sleep(Duration::from_millis(60));
        let after = e.estimate_ns();
        assert!(after < 5e6, "decays while idle: {after}");
        e.observe(Duration::from_micros(100));
        let pulled = e.estimate_ns();
        assert!(pulled > 1e5 && pulled < 5e6, "a lower observation pulls the peak down: {pulled}");
    }

    #[test]
    fn rate_counts_per_second() {
        let r = Rate::new(Duration::from_secs(10));
        for _ in 0..100 {
            r.tick();
        }
        let rate = r.per_second();
        assert!((9.0..=10.1).contains(&rate), "{rate}");
    }

    #[test]
    fn latency_window_p95() {
        let w = LatencyWindow::default();
        assert_eq!(w.p95(1), None);
        for i in 1..=1000u64 {
            w.record(Duration::from_micros(i));
        }
        let p = w.p95(100).unwrap().as_micros();
        // recomputed at the 960th: the window 449..=960, whose p95 is 935
        assert!((930..=990).contains(&p), "{p}");
        assert_eq!(w.p95(10_000), None);
    }
}
