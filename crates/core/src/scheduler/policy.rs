//! What a model's configuration asks of its scheduler: batching, priority
//! levels and their queue policies, ordering, and the adaptive limit.

use crate::error::{Error, Result};
use flotilla_proto::inference::model_config::SchedulingChoice;
use flotilla_proto::inference::model_queue_policy::TimeoutAction;
use flotilla_proto::inference::{ModelConfig, ModelQueuePolicy};
use std::time::{Duration, Instant};

/// The scheduling policy of one model version.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Rows one execution may hold (the model's max_batch_size; 0 = the model does not batch).
    pub max_batch: usize,
    /// Dynamic batching, when configured on a batching model.
    pub batching: Option<Batching>,
    /// Queue policy per priority level; index 0 is level 1, the highest.
    pub levels: Vec<LevelPolicy>,
    /// Index into `levels` for requests that name no (or an out-of-range) priority.
    pub default_level: usize,
    /// Answer requests in the order they arrived, whatever order their batches finish in.
    pub preserve_ordering: bool,
    /// Adaptive concurrency limit (config parameter `adaptive_concurrency`).
    pub adaptive: Option<super::adaptive::Settings>,
    /// Most estimated engine time (ns) for a request to run on its own task instead of an
    /// instance thread (config parameter `inline_max_us`; 0: never). See [`super::INLINE_MAX_NS`].
    pub inline_max_ns: u64,
}

/// `dynamic_batching` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Batching {
    /// Preferred batch sizes (rows), ascending, each ≤ max_batch.
    pub preferred: Vec<usize>,
    /// Longest the batcher may hold a request to grow a batch.
    pub max_delay: Duration,
}

/// The queue policy of one priority level.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LevelPolicy {
    /// Most requests that may wait at this level (0 = no limit).
    pub max_queue: usize,
    /// Timeout for requests that set none (None = no timeout).
    pub default_timeout: Option<Duration>,
    /// Whether a request's own `timeout` may shorten `default_timeout`.
    pub allow_override: bool,
    /// On timeout, move the request behind the others instead of rejecting it.
    pub delay_on_timeout: bool,
}

/// The config parameter `inline_max_us`: whole microseconds, 0 to 1000 (a request run on a
/// network thread must not hold it for long); absent: [`super::INLINE_MAX_NS`].
fn inline_max_ns(config: &ModelConfig, origin: &str) -> Result<u64> {
    let Some(p) = config.parameters.get("inline_max_us") else { return Ok(super::INLINE_MAX_NS) };
    match p.string_value.trim().parse::<u64>() {
        Ok(us) if us <= 1000 => Ok(us * 1000),
        _ => Err(Error::invalid(format!(
            "{origin}: parameter inline_max_us must be a whole number of microseconds from 0 to 1000, not '{}'",
            p.string_value
        ))),
    }
}

// === impl Policy ===

impl Policy {
    /// Reads the policy from a configuration; `origin` names it in errors.
    pub fn from_config(config: &ModelConfig, origin: &str) -> Result<Self> {
        let max_batch = usize::try_from(config.max_batch_size.max(0)).unwrap_or(0);
        let adaptive = super::adaptive::Settings::from_config(config, origin)?;
        let inline_max_ns = inline_max_ns(config, origin)?;
        let Some(SchedulingChoice::DynamicBatching(d)) = config.scheduling_choice.as_ref() else {
            return Ok(Self {
                max_batch,
                batching: None,
                levels: vec![LevelPolicy::default()],
                default_level: 0,
                preserve_ordering: false,
                adaptive,
                inline_max_ns,
            });
        };
        let mut preferred = Vec::with_capacity(d.preferred_batch_size.len());
        for &p in &d.preferred_batch_size {
            if p < 1 || (max_batch > 0 && p as usize > max_batch) {
                return Err(Error::invalid(format!(
                    "{origin}: dynamic_batching preferred_batch_size {p} must be within 1..={}",
                    config.max_batch_size
                )));
            }
            preferred.push(p as usize);
        }
        preferred.sort_unstable();
        preferred.dedup();
        let levels_n = usize::try_from(d.priority_levels).unwrap_or(usize::MAX).max(1);
        if levels_n > 1024 {
            return Err(Error::invalid(format!(
                "{origin}: dynamic_batching priority_levels {} is more than 1024",
                d.priority_levels
            )));
        }
        let default_level = match (d.priority_levels, d.default_priority_level) {
            (0, _) => 0,
            (n, l) if (1..=n).contains(&l) => (l - 1) as usize,
            (n, l) => {
                return Err(Error::invalid(format!(
                    "{origin}: dynamic_batching default_priority_level {l} must be within 1..={n} (priority_levels)"
                )))
            }
        };
        let base = d.default_queue_policy.as_ref().map(LevelPolicy::from_proto).unwrap_or_default();
        let mut levels = vec![base; levels_n];
        for (&level, p) in &d.priority_queue_policy {
            if level < 1 || level > d.priority_levels {
                return Err(Error::invalid(format!(
                    "{origin}: dynamic_batching priority_queue_policy names level {level}; levels are 1..={}",
                    d.priority_levels
                )));
            }
            levels[(level - 1) as usize] = LevelPolicy::from_proto(p);
        }
        let batching = (max_batch > 0)
            .then(|| Batching { preferred, max_delay: Duration::from_micros(d.max_queue_delay_microseconds) });
        Ok(Self {
            max_batch,
            batching,
            levels,
            default_level,
            preserve_ordering: d.preserve_ordering,
            adaptive,
            inline_max_ns,
        })
    }

    /// The level index of a request's `priority` parameter (1 is highest; 0 or out of range
    /// means the default level, as Triton does).
    pub fn level(&self, priority: Option<u64>) -> usize {
        match priority {
            Some(p) if p >= 1 && (p as usize) <= self.levels.len() => (p - 1) as usize,
            _ => self.default_level,
        }
    }

    /// When a request queued at `level` at `started` gives up, from its own `timeout` (µs) and
    /// the level's policy: a configured default timeout wins unless the policy allows a shorter
    /// override; with no default, the request's timeout applies.
    pub fn deadline(&self, level: usize, timeout_us: Option<u64>, started: Instant) -> Option<Instant> {
        let p = &self.levels[level];
        let asked = timeout_us.filter(|t| *t > 0).map(Duration::from_micros);
        let timeout = match (p.default_timeout, asked) {
            (Some(d), Some(a)) if p.allow_override => Some(a.min(d)),
            (Some(d), _) => Some(d),
            (None, a) => a,
        };
        timeout.and_then(|t| started.checked_add(t))
    }
}

impl LevelPolicy {
    fn from_proto(p: &ModelQueuePolicy) -> Self {
        Self {
            max_queue: p.max_queue_size as usize,
            default_timeout: (p.default_timeout_microseconds > 0)
                .then(|| Duration::from_micros(p.default_timeout_microseconds)),
            allow_override: p.allow_timeout_override,
            delay_on_timeout: p.timeout_action == TimeoutAction::Delay as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_pbtxt;

    fn policy(text: &str) -> Result<Policy> {
        Policy::from_config(&parse_pbtxt(text, "m/config.pbtxt").unwrap(), "m")
    }

    #[test]
    fn reads_triton_dynamic_batching() {
        let p = policy(
            r#"max_batch_size: 16
            dynamic_batching {
              preferred_batch_size: [ 8, 4 ]
              max_queue_delay_microseconds: 300
              preserve_ordering: true
              priority_levels: 3
              default_priority_level: 2
              default_queue_policy { max_queue_size: 5 default_timeout_microseconds: 1000 allow_timeout_override: true }
              priority_queue_policy { key: 1 value { timeout_action: DELAY max_queue_size: 0 } }
            }"#,
        )
        .unwrap();
        assert_eq!(p.max_batch, 16);
        let b = p.batching.as_ref().unwrap();
        assert_eq!((b.preferred.clone(), b.max_delay), (vec![4, 8], Duration::from_micros(300)));
        assert!(p.preserve_ordering);
        assert_eq!(p.levels.len(), 3);
        assert_eq!(p.default_level, 1);
        assert!(p.levels[0].delay_on_timeout && p.levels[0].max_queue == 0);
        assert_eq!(p.levels[2].max_queue, 5);
        assert_eq!((p.level(None), p.level(Some(0)), p.level(Some(1)), p.level(Some(9))), (1, 1, 0, 1));
    }

    #[test]
    fn deadlines_follow_the_queue_policy() {
        let t0 = Instant::now();
        let us = Duration::from_micros;
        let free = policy("max_batch_size: 4").unwrap();
        assert_eq!(free.deadline(0, Some(50), t0), Some(t0 + us(50)));
        assert_eq!(free.deadline(0, None, t0), None);
        assert_eq!(free.deadline(0, Some(0), t0), None);
        let fixed = policy("dynamic_batching { default_queue_policy { default_timeout_microseconds: 100 } }").unwrap();
        assert_eq!(fixed.deadline(0, Some(50), t0), Some(t0 + us(100)), "override not allowed");
        let over = policy(
            "dynamic_batching { default_queue_policy { default_timeout_microseconds: 100 allow_timeout_override: true } }",
        )
        .unwrap();
        assert_eq!(over.deadline(0, Some(50), t0), Some(t0 + us(50)));
        assert_eq!(over.deadline(0, Some(500), t0), Some(t0 + us(100)), "an override only shortens");
        assert!(fixed.batching.is_none(), "a model without max_batch_size does not batch");
    }

    #[test]
    fn inconsistent_settings_are_load_errors() {
        for (text, needle) in [
            ("max_batch_size: 4 dynamic_batching { preferred_batch_size: 8 }", "preferred_batch_size 8"),
            ("max_batch_size: 4 dynamic_batching { preferred_batch_size: 0 }", "preferred_batch_size 0"),
            ("dynamic_batching { priority_levels: 2 default_priority_level: 3 }", "default_priority_level 3"),
            ("dynamic_batching { priority_levels: 2 default_priority_level: 0 }", "default_priority_level 0"),
            (
                "dynamic_batching { priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 5 value { } } }",
                "level 5",
            ),
        ] {
            let e = policy(text).unwrap_err();
            assert!(e.message.contains(needle), "{text}: {e}");
        }
    }
}
