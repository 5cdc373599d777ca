//! A worker's measured capacity per model: the requests per second it sustains while a
//! request's latency stays within the model's target, learned from its own traffic.
//!
//! Two limits, the lower wins:
//! - **engine**: from the measured engine time per request `s` (batching included) and the
//!   instance count `c`, the highest arrival rate at which the 99th percentile of queueing
//!   (M/M/c, Erlang C) plus `s` stays within the target;
//! - **CPU**: the process's CPU time per request (from `/proc/self/stat`, shared among models
//!   by their engine time) against the CPU it is allowed (cgroup quota and CPU affinity), so a
//!   worker held to half a core by its cgroup advertises half the capacity of one on a full core.
//!   Until a CPU sample exists (0.02 s of CPU over at least 5 requests), the engine limit alone.

use std::collections::HashMap;

/// One model's counters at a point in time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    /// Requests answered.
    pub requests: u64,
    /// Engine time, nanoseconds (each execution once, whatever its batch).
    pub busy_ns: u64,
}

#[derive(Debug, Default)]
struct ModelState {
    /// The reading the engine time was last sampled at (samples wait for enough requests).
    sampled: Option<Counters>,
    /// Moving average of engine seconds per request.
    service_s: Option<f64>,
    /// Moving average of the process's CPU seconds per request of this model.
    cpu_s: Option<f64>,
}

/// The process's CPU and every model's counters when CPU was last sampled.
#[derive(Debug)]
struct CpuMark {
    cpu_s: f64,
    counters: HashMap<String, Counters>,
}

/// Learns capacity from successive readings of the counters.
#[derive(Debug)]
pub struct Estimator {
    models: HashMap<String, ModelState>,
    cpu_mark: Option<CpuMark>,
    /// CPUs the process may use (quota and affinity).
    allowance: f64,
}

/// Fewest requests for an engine-time sample.
const MIN_REQUESTS: u64 = 5;
/// Least CPU time for a CPU sample.
const MIN_CPU_S: f64 = 0.02;

/// Folds `sample` into a moving average, busier samples weighing more (up to half).
fn fold(average: Option<f64>, sample: f64, requests: u64) -> f64 {
    let w = (requests as f64 / 200.0).clamp(0.1, 0.5);
    match average {
        None => sample,
        Some(a) => a * (1.0 - w) + sample * w,
    }
}

impl Estimator {
    pub fn new(allowance: f64) -> Self {
        Self { models: HashMap::new(), cpu_mark: None, allowance: allowance.max(0.01) }
    }

    /// Takes a reading: every model's counters, and the process's CPU seconds so far.
    pub fn update(&mut self, counters: &HashMap<String, Counters>, cpu_s: Option<f64>) {
        self.models.retain(|name, _| counters.contains_key(name));
        for (name, c) in counters {
            let state = self.models.entry(name.clone()).or_default();
            let Some(base) = state.sampled else {
                state.sampled = Some(*c);
                continue;
            };
            // Requests accumulate across readings until there are enough for a sample.
            let requests = c.requests.saturating_sub(base.requests);
            let busy = c.busy_ns.saturating_sub(base.busy_ns) as f64 / 1e9;
            if requests >= MIN_REQUESTS && busy > 0.0 {
                state.sampled = Some(*c);
                state.service_s = Some(fold(state.service_s, busy / requests as f64, requests));
            }
        }
        let Some(cpu) = cpu_s else { return };
        let Some(mark) = &self.cpu_mark else {
            self.cpu_mark = Some(CpuMark { cpu_s: cpu, counters: counters.clone() });
            return;
        };
        let used = cpu - mark.cpu_s;
        if used < MIN_CPU_S {
            return;
        }
        // The CPU of the interval, shared among models by their engine time.
        let delta = |name: &str, c: &Counters| {
            let m = mark.counters.get(name).copied().unwrap_or_default();
            (c.requests.saturating_sub(m.requests), c.busy_ns.saturating_sub(m.busy_ns) as f64)
        };
        let total_busy: f64 = counters.iter().map(|(n, c)| delta(n, c).1).sum();
        for (name, c) in counters {
            let (requests, busy) = delta(name, c);
            if requests >= MIN_REQUESTS && total_busy > 0.0 {
                let state = self.models.entry(name.clone()).or_default();
                let share = used * busy / total_busy;
                state.cpu_s = Some(fold(state.cpu_s, share / requests as f64, requests));
            }
        }
        self.cpu_mark = Some(CpuMark { cpu_s: cpu, counters: counters.clone() });
    }

    /// Engine time per request of `model`, seconds, once measured.
    pub fn service_time(&self, model: &str) -> Option<f64> {
        self.models.get(model)?.service_s
    }

    /// The capacity of `model` with `instances` engine instances and a latency target, in
    /// requests per second, once its engine time is measured (0 when even one request alone
    /// takes longer than the target).
    pub fn capacity(&self, model: &str, instances: usize, target_s: f64) -> Option<f64> {
        let state = self.models.get(model)?;
        let engine = engine_capacity(instances.max(1), state.service_s?, target_s);
        Some(match state.cpu_s {
            Some(cpu) => engine.min(0.9 * self.allowance / cpu.max(1e-9)),
            None => engine,
        })
    }
}

/// Erlang B → C: the probability that an arrival waits, with `c` servers and offered load `a`.
fn erlang_c(c: usize, a: f64) -> f64 {
    let mut b = 1.0;
    for k in 1..=c {
        b = a * b / (k as f64 + a * b);
    }
    let rho = a / c as f64;
    if rho >= 1.0 {
        return 1.0;
    }
    b / (1.0 - rho * (1.0 - b))
}

/// The 99th percentile of the wait in an M/M/c queue.
fn p99_wait(c: usize, s: f64, lambda: f64) -> f64 {
    let mu = 1.0 / s;
    let spare = c as f64 * mu - lambda;
    if spare <= 0.0 {
        return f64::INFINITY;
    }
    let p_wait = erlang_c(c, lambda * s);
    if p_wait <= 0.01 {
        0.0
    } else {
        (p_wait / 0.01).ln() / spare
    }
}

/// Highest arrival rate at which `s` plus the p99 wait stays within `target`.
pub fn engine_capacity(c: usize, s: f64, target: f64) -> f64 {
    if s <= 0.0 || !s.is_finite() {
        return 0.0;
    }
    if s >= target {
        return 0.0;
    }
    let (mut lo, mut hi) = (0.0, c as f64 / s);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if s + p99_wait(c, s, mid) <= target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// CPUs this process may use: its affinity mask, lowered by a cgroup CPU quota (v1 or v2).
pub fn cpu_allowance() -> f64 {
    let affinity = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:").map(|v| count_cpus(v.trim()))))
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let quota = cgroup_quota().unwrap_or(f64::INFINITY);
    (affinity as f64).min(quota)
}

/// Counts the CPUs of a list such as `0-3,6`.
fn count_cpus(list: &str) -> usize {
    list.split(',')
        .filter_map(|part| {
            let part = part.trim();
            match part.split_once('-') {
                Some((a, b)) => Some(b.parse::<usize>().ok()?.checked_sub(a.parse::<usize>().ok()?)? + 1),
                None => part.parse::<usize>().ok().map(|_| 1),
            }
        })
        .sum()
}

/// The CPU quota of this process's cgroup in CPUs, if it has one.
fn cgroup_quota() -> Option<f64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.is_empty() {
            // cgroup v2: cpu.max holds "<quota> <period>" or "max <period>"
            let text = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/cpu.max")).ok();
            if let Some(q) = text.and_then(|t| {
                let mut it = t.split_whitespace();
                let quota: f64 = it.next()?.parse().ok()?;
                let period: f64 = it.next()?.parse().ok()?;
                Some(quota / period)
            }) {
                return Some(q);
            }
        } else if controllers.split(',').any(|c| c == "cpu") {
            for mount in ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"] {
                let read = |f: &str| -> Option<f64> {
                    std::fs::read_to_string(format!("{mount}{path}/{f}")).ok()?.trim().parse().ok()
                };
                if let (Some(quota), Some(period)) = (read("cpu.cfs_quota_us"), read("cpu.cfs_period_us")) {
                    if quota > 0.0 && period > 0.0 {
                        return Some(quota / period);
                    }
                    return None;
                }
            }
        }
    }
    None
}

/// CPU seconds this process's threads have run: the sum of `/proc/self/task/*/schedstat`
/// (nanoseconds; `/proc/self/stat` counts in 10 ms ticks, too coarse for a worker held to a few
/// percent of a core), else `/proc/self/stat`'s user + system time.
pub fn process_cpu_seconds() -> Option<f64> {
    let from_tasks = std::fs::read_dir("/proc/self/task").ok().map(|tasks| {
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum::<u64>() as f64
            / 1e9
    });
    if let Some(cpu) = from_tasks.filter(|c| *c > 0.0) {
        return Some(cpu);
    }
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12th and 13th after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture Flotilla builds for.
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_capacity_grows_with_instances_and_respects_the_target() {
        let one = engine_capacity(1, 0.02, 0.1);
        let ten = engine_capacity(10, 0.02, 0.1);
        assert!(one > 0.0 && one < 50.0, "{one}");
        assert!(ten > 8.0 * one && ten < 500.0, "{ten} vs {one}");
        // a tighter target allows less
        assert!(engine_capacity(10, 0.02, 0.03) < ten);
        // a request alone over the target: no capacity
        assert_eq!(engine_capacity(4, 0.2, 0.1), 0.0);
        // at the found rate the p99 wait fits
        assert!(0.02 + p99_wait(10, 0.02, ten) <= 0.1 + 1e-9);
    }

    #[test]
    fn estimator_learns_service_time_and_cpu_limit() {
        let mut e = Estimator::new(0.5);
        let reading = |req: u64, busy_ms: u64| {
            [("m".to_string(), Counters { requests: req, busy_ns: busy_ms * 1_000_000 })].into_iter().collect()
        };
        e.update(&reading(0, 0), Some(0.0));
        assert_eq!(e.capacity("m", 1, 0.1), None, "nothing measured yet");
        // too few requests for a sample: they add up over readings
        e.update(&reading(2, 2), Some(0.0));
        assert_eq!(e.service_time("m"), None);
        // 1 ms of engine time per request; CPU below the sampling floor: engine-bound (4 instances: < 4000/s)
        e.update(&reading(100, 100), Some(0.01));
        let s = e.service_time("m").unwrap();
        assert!((s - 0.001).abs() < 1e-6, "{s}");
        let c = e.capacity("m", 4, 0.1).unwrap();
        assert!(c > 3000.0 && c < 4000.0, "{c}");
        // 0.3 CPU seconds over 300 requests: 1 ms of CPU each, allowance 0.5 CPU -> 0.9 * 0.5 / 0.001 = 450/s
        e.update(&reading(300, 300), Some(0.3));
        let c = e.capacity("m", 4, 0.1).unwrap();
        assert!((c - 450.0).abs() < 1.0, "CPU-bound: {c}");
        // a second model shares the CPU by engine time
        let two = |a: u64, b: u64| -> HashMap<String, Counters> {
            [
                ("m".to_string(), Counters { requests: a, busy_ns: a * 1_000_000 }),
                ("n".to_string(), Counters { requests: b, busy_ns: b * 3_000_000 }),
            ]
            .into_iter()
            .collect()
        };
        let mut e = Estimator::new(1.0);
        e.update(&two(0, 0), Some(0.0));
        e.update(&two(100, 100), Some(0.4));
        // m: 0.4 * 100/400 / 100 = 1 ms per request; n: 3 ms
        let (cm, cn) = (e.capacity("m", 64, 1.0).unwrap(), e.capacity("n", 64, 1.0).unwrap());
        assert!((cm - 900.0).abs() < 1.0 && (cn - 300.0).abs() < 1.0, "{cm} {cn}");
    }

    #[test]
    fn cpu_lists_and_proc_readings() {
        assert_eq!(count_cpus("0-3,6"), 5);
        assert_eq!(count_cpus("1"), 1);
        assert!(cpu_allowance() > 0.0);
        assert!(process_cpu_seconds().is_some());
    }
}
