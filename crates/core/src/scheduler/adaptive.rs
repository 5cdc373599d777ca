//! Adaptive concurrency limit, as Netflix's concurrency-limits does it: the
//! number of requests a model version holds (queued + running) is capped by a
//! limit that follows the latency they see in the scheduler. `gradient`
//! shrinks the limit when short-term latency rises above the long-term
//! baseline (Gradient2); `aimd` adds one while latency stays under a target and
//! cuts by 10% when it does not. Requests over the limit get RESOURCE_EXHAUSTED
//! / 429 at once. Enabled per model with config parameters:
//!
//! ```text
//! parameters { key: "adaptive_concurrency" value { string_value: "gradient" } }   # or "aimd"
//! parameters { key: "adaptive_initial_limit" value { string_value: "20" } }
//! parameters { key: "adaptive_min_limit" value { string_value: "1" } }
//! parameters { key: "adaptive_max_limit" value { string_value: "1000" } }
//! parameters { key: "adaptive_target_latency_us" value { string_value: "5000" } }   # aimd only
//! ```

use crate::error::{Error, Result};
use flotilla_proto::inference::ModelConfig;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Which algorithm and its bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub mode: Mode,
    pub initial: usize,
    pub min: usize,
    pub max: usize,
    /// AIMD: latency above which the limit is cut.
    pub target: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Gradient,
    Aimd,
}

/// Gradient2 constants (Netflix's defaults).
const TOLERANCE: f64 = 1.5;
const SMOOTHING: f64 = 0.2;
const LONG_WINDOW: f64 = 600.0;
/// Samples averaged into one short-term latency.
const SHORT_WINDOW: u32 = 10;

// === impl Settings ===

impl Settings {
    pub fn from_config(config: &ModelConfig, origin: &str) -> Result<Option<Self>> {
        let get = |key: &str| config.parameters.get(key).map(|p| p.string_value.trim()).filter(|s| !s.is_empty());
        let number = |key: &str, default: usize| -> Result<usize> {
            match get(key) {
                None => Ok(default),
                Some(s) => s.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    Error::invalid(format!("{origin}: parameter '{key}' must be a positive integer, got '{s}'"))
                }),
            }
        };
        let mode = match get("adaptive_concurrency").map(str::to_ascii_lowercase).as_deref() {
            None | Some("off") | Some("false") | Some("none") => return Ok(None),
            Some("gradient") | Some("gradient2") => Mode::Gradient,
            Some("aimd") => Mode::Aimd,
            Some(other) => {
                return Err(Error::invalid(format!(
                    "{origin}: parameter 'adaptive_concurrency' is '{other}'; use gradient, aimd or off"
                )))
            }
        };
        let s = Self {
            mode,
            initial: number("adaptive_initial_limit", 20)?,
            min: number("adaptive_min_limit", 1)?,
            max: number("adaptive_max_limit", 1000)?,
            target: Duration::from_micros(number("adaptive_target_latency_us", 5000)? as u64),
        };
        if s.min > s.max || s.initial < s.min || s.initial > s.max {
            return Err(Error::invalid(format!(
                "{origin}: adaptive limits need min ≤ initial ≤ max, got {} ≤ {} ≤ {}",
                s.min, s.initial, s.max
            )));
        }
        Ok(Some(s))
    }
}

/// The live limit of one model version.
#[derive(Debug)]
pub struct Limiter {
    settings: Settings,
    /// Requests admitted and not yet answered.
    held: AtomicUsize,
    /// The current limit, read on every admission.
    limit: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    estimate: f64,
    /// Long-term latency baseline, seconds (0 until the first sample).
    long: f64,
    long_samples: f64,
    window_sum: f64,
    window_n: u32,
    window_held: usize,
}

// === impl Limiter ===

impl Limiter {
    pub fn new(settings: Settings) -> Self {
        let state = State {
            estimate: settings.initial as f64,
            long: 0.0,
            long_samples: 0.0,
            window_sum: 0.0,
            window_n: 0,
            window_held: 0,
        };
        Self {
            limit: AtomicUsize::new(settings.initial),
            held: AtomicUsize::new(0),
            settings,
            state: Mutex::new(state),
        }
    }

    /// Admits one request, or returns the limit it ran into.
    pub fn try_acquire(&self) -> std::result::Result<(), usize> {
        let limit = self.limit.load(Ordering::Relaxed);
        let held = self.held.fetch_add(1, Ordering::AcqRel);
        if held >= limit {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return Err(limit);
        }
        Ok(())
    }

    /// A request admitted by `try_acquire` was turned away before it queued.
    pub fn cancel(&self) {
        self.held.fetch_sub(1, Ordering::AcqRel);
    }

    /// A request admitted by `try_acquire` is done after `latency` in the scheduler.
    pub fn release(&self, latency: Duration) {
        let held = self.held.fetch_sub(1, Ordering::AcqRel);
        let mut s = self.state.lock();
        let rtt = latency.as_secs_f64();
        let next = match self.settings.mode {
            Mode::Aimd => aimd(&self.settings, s.estimate, rtt, held),
            Mode::Gradient => {
                s.window_sum += rtt;
                s.window_n += 1;
                s.window_held = s.window_held.max(held);
                if s.window_n < SHORT_WINDOW {
                    return;
                }
                let short = s.window_sum / f64::from(s.window_n);
                let held = s.window_held;
                (s.window_sum, s.window_n, s.window_held) = (0.0, 0, 0);
                gradient(&mut s, short, held)
            }
        };
        let next = next.clamp(self.settings.min as f64, self.settings.max as f64);
        s.estimate = next;
        self.limit.store(next.floor().max(1.0) as usize, Ordering::Relaxed);
    }

    /// Requests admitted and not yet answered.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }
}

fn aimd(settings: &Settings, estimate: f64, rtt: f64, held: usize) -> f64 {
    if rtt > settings.target.as_secs_f64() {
        estimate * 0.9
    } else if held as f64 * 2.0 >= estimate {
        estimate + 1.0 / estimate.max(1.0)
    } else {
        estimate
    }
}

fn gradient(s: &mut State, short: f64, held: usize) -> f64 {
    // Long-term baseline: a plain mean while warming up, then an exponential one.
    s.long_samples += 1.0;
    let weight = 1.0 / s.long_samples.min(LONG_WINDOW);
    s.long = if s.long == 0.0 { short } else { s.long * (1.0 - weight) + short * weight };
    if short > 0.0 && s.long / short > 2.0 {
        s.long *= 0.95; // recover from a baseline that drifted high
    }
    if (held as f64) < s.estimate / 2.0 {
        return s.estimate; // not using the limit: latency says nothing about it
    }
    let gradient = if short > 0.0 { (TOLERANCE * s.long / short).clamp(0.5, 1.0) } else { 1.0 };
    let queue = s.estimate.sqrt().max(1.0);
    let next = s.estimate * gradient + queue;
    s.estimate * (1.0 - SMOOTHING) + next * SMOOTHING
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: Mode) -> Settings {
        Settings { mode, initial: 20, min: 2, max: 200, target: Duration::from_millis(5) }
    }

    fn drive(l: &Limiter, rounds: usize, latency: Duration) {
        for _ in 0..rounds {
            let mut admitted = 0;
            while l.try_acquire().is_ok() {
                admitted += 1;
            }
            for _ in 0..admitted {
                l.release(latency);
            }
        }
    }

    #[test]
    fn admits_up_to_the_limit() {
        let l = Limiter::new(settings(Mode::Gradient));
        for _ in 0..20 {
            assert!(l.try_acquire().is_ok());
        }
        assert_eq!(l.try_acquire(), Err(20));
        l.release(Duration::from_millis(1));
        assert!(l.try_acquire().is_ok());
    }

    #[test]
    fn gradient_grows_at_steady_latency_and_shrinks_when_latency_climbs() {
        let l = Limiter::new(settings(Mode::Gradient));
        drive(&l, 50, Duration::from_millis(1));
        let grown = l.limit();
        assert!(grown > 20, "steady latency lets the limit grow: {grown}");
        drive(&l, 30, Duration::from_millis(20));
        let shrunk = l.limit();
        assert!(shrunk < grown, "rising latency shrinks the limit: {grown} -> {shrunk}");
        assert!(shrunk >= 2);
    }

    #[test]
    fn aimd_cuts_above_target_and_creeps_up_below_it() {
        let l = Limiter::new(settings(Mode::Aimd));
        drive(&l, 5, Duration::from_millis(50));
        assert!(l.limit() < 20, "{}", l.limit());
        let low = l.limit();
        drive(&l, 50, Duration::from_millis(1));
        assert!(l.limit() > low);
    }

    #[test]
    fn parameters_are_checked() {
        let mut c = ModelConfig::default();
        assert_eq!(Settings::from_config(&c, "m").unwrap(), None);
        let set = |c: &mut ModelConfig, k: &str, v: &str| {
            c.parameters.insert(k.into(), flotilla_proto::inference::ModelParameter { string_value: v.into() });
        };
        set(&mut c, "adaptive_concurrency", "gradient");
        assert_eq!(Settings::from_config(&c, "m").unwrap().unwrap().mode, Mode::Gradient);
        set(&mut c, "adaptive_min_limit", "50");
        assert!(Settings::from_config(&c, "m").unwrap_err().message.contains("min ≤ initial"));
        set(&mut c, "adaptive_min_limit", "-1");
        assert!(Settings::from_config(&c, "m").unwrap_err().message.contains("adaptive_min_limit"));
        set(&mut c, "adaptive_concurrency", "vegas");
        assert!(Settings::from_config(&c, "m").unwrap_err().message.contains("vegas"));
    }
}
