//! What each client task records (answers by kind and outcome, latencies, a per-second
//! timeline) and the merged JSON report.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

/// How an answer counts on the timeline.
#[derive(Clone, Copy)]
pub enum Class {
    Ok,
    Shed,
    Other,
}

impl Class {
    /// HTTP 200 and gRPC OK are `Ok`; 429, 503 and their gRPC codes are `Shed`.
    pub fn of(outcome: &str) -> Class {
        match outcome {
            "200" | "grpc Ok" => Class::Ok,
            "429" | "503" | "grpc ResourceExhausted" | "grpc Unavailable" => Class::Shed,
            _ => Class::Other,
        }
    }
}

#[derive(Default)]
pub struct Recorder {
    /// (kind, outcome) → service times in µs (from the request's send to its whole answer).
    latencies: BTreeMap<(usize, String), Vec<u32>>,
    /// (kind, outcome) → µs from when an open-loop schedule meant to send it to its whole answer.
    from_schedule: BTreeMap<(usize, String), Vec<u32>>,
    timeline: Vec<[u64; 3]>,
    pub shed_with_retry_after: u64,
}

impl Recorder {
    pub fn record(&mut self, kind: usize, outcome: String, second: usize, service: Duration, late: Option<Duration>) {
        let micros = |d: Duration| u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        if self.timeline.len() <= second {
            self.timeline.resize(second + 1, [0; 3]);
        }
        self.timeline[second][Class::of(&outcome) as usize] += 1;
        if let Some(late) = late {
            self.from_schedule.entry((kind, outcome.clone())).or_default().push(micros(service + late));
        }
        self.latencies.entry((kind, outcome)).or_default().push(micros(service));
    }

    pub fn merge(&mut self, other: Recorder) {
        for (k, v) in other.latencies {
            self.latencies.entry(k).or_default().extend(v);
        }
        for (k, v) in other.from_schedule {
            self.from_schedule.entry(k).or_default().extend(v);
        }
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize(other.timeline.len(), [0; 3]);
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(other.timeline) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
        self.shed_with_retry_after += other.shed_with_retry_after;
    }

    pub fn answered(&self) -> u64 {
        self.latencies.values().map(|v| v.len() as u64).sum()
    }

    /// `{kind: {outcome: {count, p50_us, p90_us, p99_us, p999_us, max_us, [scheduled_p99_us]}}}`,
    /// the timeline as `[[ok, shed, other], …]` per second, and totals by class.
    pub fn report(mut self, names: &[String]) -> Value {
        let mut kinds = serde_json::Map::new();
        let mut totals = [0u64; 3];
        for ((kind, outcome), mut v) in std::mem::take(&mut self.latencies) {
            totals[Class::of(&outcome) as usize] += v.len() as u64;
            v.sort_unstable();
            let mut entry = percentiles(&v);
            if let Some(mut s) = self.from_schedule.remove(&(kind, outcome.clone())) {
                s.sort_unstable();
                entry["scheduled_p50_us"] = json!(at(&s, 0.5));
                entry["scheduled_p99_us"] = json!(at(&s, 0.99));
            }
            let name = names.get(kind).cloned().unwrap_or_else(|| kind.to_string());
            let slot = kinds.entry(name).or_insert_with(|| json!({}));
            slot[outcome.as_str()] = entry;
        }
        json!({
            "kinds": kinds,
            "ok": totals[0], "shed": totals[1], "other": totals[2],
            "shed_with_retry_after": self.shed_with_retry_after,
            "timeline": self.timeline,
        })
    }
}

fn at(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn percentiles(sorted: &[u32]) -> Value {
    json!({
        "count": sorted.len(),
        "p50_us": at(sorted, 0.5), "p90_us": at(sorted, 0.9), "p99_us": at(sorted, 0.99),
        "p999_us": at(sorted, 0.999), "max_us": sorted.last().copied().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(at(&v, 0.5), 50);
        assert_eq!(at(&v, 0.99), 99);
        assert_eq!(at(&v, 1.0), 100);
        assert_eq!(at(&[], 0.5), 0);
    }

    #[test]
    fn merged_recorders_add_up() {
        let (mut a, mut b) = (Recorder::default(), Recorder::default());
        a.record(0, "200".into(), 0, Duration::from_micros(10), None);
        b.record(0, "429".into(), 2, Duration::from_micros(20), Some(Duration::from_micros(5)));
        b.shed_with_retry_after += 1;
        a.merge(b);
        assert_eq!(a.answered(), 2);
        let r = a.report(&["valid".to_string()]);
        assert_eq!(r["ok"], 1);
        assert_eq!(r["shed"], 1);
        assert_eq!(r["kinds"]["valid"]["429"]["scheduled_p99_us"], 25);
        assert_eq!(r["timeline"], json!([[1, 0, 0], [0, 0, 0], [0, 1, 0]]));
    }
}
