//! The fleet's recent events (joins, drains, ejections, departures) with wall-clock times, for
//! `GET /v2/fleet/events`, the logs and the benchmark's notice→drained and eject timings.

use parking_lot::Mutex;
use serde::Serialize;
use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

const KEEP: usize = 4096;

/// One thing that happened to a worker.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// Unix time, milliseconds (fractional).
    pub at_ms: f64,
    pub worker: String,
    /// `joined`, `first_answer`, `draining`, `drained`, `left`, `expired`, `ejected`, `returned`.
    pub kind: &'static str,
    pub detail: String,
    /// The event's measure, when it has one: notice→drained for `drained`, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_ms: Option<f64>,
}

/// A bounded log of events, newest last, counted by kind when it has a counter.
#[derive(Debug, Default)]
pub struct Events {
    log: Mutex<VecDeque<Event>>,
    counter: Option<prometheus::IntCounterVec>,
}

/// Unix time now in milliseconds.
pub fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

impl Events {
    /// A log that also counts its events by kind in `counter` (labels: `kind`).
    pub fn counted(counter: prometheus::IntCounterVec) -> Events {
        Events { log: Mutex::default(), counter: Some(counter) }
    }

    pub fn push(&self, worker: &str, kind: &'static str, detail: impl Into<String>) {
        self.push_measured(worker, kind, detail, None);
    }

    /// An event with a measure (`value_ms`).
    pub fn push_measured(&self, worker: &str, kind: &'static str, detail: impl Into<String>, value_ms: Option<f64>) {
        let detail = detail.into();
        tracing::info!(worker, event = kind, %detail, "fleet");
        if let Some(c) = &self.counter {
            c.with_label_values(&[kind]).inc();
        }
        let mut log = self.log.lock();
        if log.len() == KEEP {
            log.pop_front();
        }
        log.push_back(Event { at_ms: now_ms(), worker: worker.to_string(), kind, detail, value_ms });
    }

    /// Events after `since_ms` (all kept events when None), oldest first.
    pub fn since(&self, since_ms: Option<f64>) -> Vec<Event> {
        let log = self.log.lock();
        log.iter().filter(|e| since_ms.is_none_or(|t| e.at_ms > t)).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest() {
        let e = Events::default();
        for i in 0..KEEP + 10 {
            e.push(&format!("w{i}"), "joined", "");
        }
        let all = e.since(None);
        assert_eq!(all.len(), KEEP);
        assert_eq!(all[0].worker, "w10");
        let last = all[all.len() - 2].at_ms;
        assert!(e.since(Some(last)).len() <= 1 + all.iter().filter(|x| x.at_ms == last).count());
    }
}
