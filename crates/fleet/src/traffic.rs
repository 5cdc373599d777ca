//! Per-model traffic policies, from the desired state ([`crate::desired`]): which version an
//! unversioned request goes to (the stable version, a rollout's target once it is ready), a
//! canary ramp that advances while the canary's error rate and p99 stay within bounds of the
//! stable version's over the same window and rolls back on a breach, an A/B split by a stable
//! hash of a header, parameter or entity key, and a shadow that mirrors a share of requests.
//!
//! A request that names a version goes to that version: policies route only the model's
//! unversioned traffic. The state here is pure bookkeeping; [`crate::control`] drives it on a
//! tick with what the fleet has ready.

use crate::desired::{AbSpec, CanarySpec, ModelSpec, Policy, ShadowSpec, SplitBy};
use flotilla_core::{ErrorKind, InferRequest, ParamValue};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Where one request goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The version to ask for; empty: the latest each worker has ready.
    pub version: String,
    /// `stable`, `canary`, an A/B arm's name, or `pinned` (the request named its version).
    pub arm: String,
    /// The shadow to mirror this request to, its answer discarded.
    pub shadow: Option<ShadowSpec>,
}

/// Latencies and errors of one arm over a window.
#[derive(Debug, Default, Clone)]
pub struct Window {
    pub requests: u64,
    pub errors: u64,
    latencies_ms: Vec<f32>,
    next: usize,
}

const WINDOW_SAMPLES: usize = 4096;
/// Successful requests each arm needs before p99s are compared.
const MIN_P99_SAMPLES: usize = 200;
/// A p99 difference below this is noise (milliseconds), whatever the ratio.
const P99_SLACK_MS: f64 = 1.0;

impl Window {
    pub fn record(&mut self, ms: f64, error: bool) {
        self.requests += 1;
        self.errors += u64::from(error);
        if error {
            return;
        }
        if self.latencies_ms.len() < WINDOW_SAMPLES {
            self.latencies_ms.push(ms as f32);
        } else {
            self.latencies_ms[self.next] = ms as f32;
            self.next = (self.next + 1) % WINDOW_SAMPLES;
        }
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// The 99th percentile of the latencies of successful requests (the last 4,096).
    pub fn p99_ms(&self) -> Option<f64> {
        if self.latencies_ms.is_empty() {
            return None;
        }
        let mut v = self.latencies_ms.clone();
        v.sort_by(f32::total_cmp);
        let i = ((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1;
        Some(f64::from(v[i]))
    }
}

/// Whether a failed request counts against the version that answered it: the model's fault or
/// the fleet's, not the client's.
pub fn counts_as_error(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::Internal | ErrorKind::DeadlineExceeded | ErrorKind::Unavailable | ErrorKind::Draining)
}

/// Where a canary is.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CanaryState {
    /// The canary version is not ready on any worker yet: no traffic moves.
    Waiting,
    /// At `steps[step]` percent since `since`.
    Ramping { step: usize, percent: f64 },
    /// Passed every step: it takes all the model's unversioned traffic.
    Promoted,
    /// A breach sent all traffic back to the stable version.
    RolledBack { reason: String },
}

/// A rollout of the stable version: traffic moves when the new version is ready.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rollout {
    pub from: String,
    pub to: String,
    /// Traffic has moved to `to`.
    pub shifted: bool,
    /// `from` is no longer needed on workers (traffic moved and nothing is in flight on it).
    pub finished: bool,
    /// Why it waits, when it does.
    pub waiting_for: Option<String>,
}

/// A mirrored request's comparison with the primary answer.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowSample {
    pub at_ms: u64,
    pub id: String,
    /// `match`, `differ`, or `error` (the candidate failed).
    pub outcome: String,
    pub max_abs_diff: f64,
    pub elements_differing: u64,
    pub detail: String,
}

/// Shadow counters.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ShadowTotals {
    pub mirrored: u64,
    pub skipped_busy: u64,
    pub matched: u64,
    pub differed: u64,
    pub errors: u64,
}

/// Something the controller must tell operators.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub model: String,
    /// `canary_step`, `canary_promoted`, `canary_rolled_back`, `canary_ready`, `rollout_shifted`,
    /// `rollout_finished`.
    pub kind: &'static str,
    pub detail: String,
    /// Whether the declaration's webhook is told.
    pub notify: Option<String>,
}

struct Inner {
    spec: ModelSpec,
    /// The version unversioned traffic goes to now (empty: each worker's latest).
    stable: String,
    rollout: Option<Rollout>,
    canary: Option<CanaryState>,
    step_started: Instant,
    windows: BTreeMap<String, Window>,
}

/// One model's traffic policy and its live state.
pub struct ModelTraffic {
    pub model: String,
    inner: Mutex<Inner>,
    shadow_in_flight: AtomicUsize,
    shadow_log: Mutex<VecDeque<ShadowSample>>,
    shadow_totals: Mutex<ShadowTotals>,
    /// Requests the router has outstanding, by the version they asked for.
    in_flight: Mutex<HashMap<String, usize>>,
}

/// A request outstanding on a version, counted until dropped.
pub struct InFlight<'a> {
    traffic: &'a ModelTraffic,
    version: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut map = self.traffic.in_flight.lock();
        if let Some(n) = map.get_mut(&self.version) {
            *n = n.saturating_sub(1);
        }
    }
}

const SHADOW_LOG: usize = 100;

/// What `GET /v2/fleet` shows of a model's traffic.
#[derive(Debug, Serialize)]
pub struct TrafficView {
    pub model: String,
    pub stable_version: String,
    pub policy: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowTotals>,
    /// Per arm over the current window: requests, errors, p99.
    pub arms: BTreeMap<String, ArmView>,
}

#[derive(Debug, Serialize)]
pub struct CanaryView {
    pub version: String,
    #[serde(flatten)]
    pub state: CanaryState,
    pub step_for_s: f64,
}

#[derive(Debug, Serialize)]
pub struct ArmView {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p99_ms: Option<f64>,
}

/// A stable 64-bit hash of a split key (FNV-1a, then MurmurHash3's finalizer so that keys that
/// differ only in their last characters spread over the whole range): the same user lands in the
/// same arm in every router process, across restarts.
pub fn stable_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The A/B key of a request, as bytes, if it carries one.
fn split_key(split: &SplitBy, request: &InferRequest) -> Option<Vec<u8>> {
    let param = |name: &str| {
        request.parameters.get(name).map(|p| match p {
            ParamValue::String(s) => s.as_bytes().to_vec(),
            ParamValue::Int(i) => i.to_string().into_bytes(),
            ParamValue::Uint(u) => u.to_string().into_bytes(),
            ParamValue::Double(d) => d.to_string().into_bytes(),
            ParamValue::Bool(b) => b.to_string().into_bytes(),
        })
    };
    match split {
        SplitBy::Random => None,
        SplitBy::Header(h) => param(h),
        SplitBy::Parameter(p) => param(p),
        SplitBy::Input(name) => {
            let t = request.inputs.iter().find(|t| t.name == *name)?;
            if t.datatype == flotilla_core::DataType::Bytes {
                flotilla_core::tensor::split_bytes_elements(&t.data, name).ok()?.first().map(|e| e.to_vec())
            } else {
                let size = t.datatype.size()?;
                t.data.get(..size).map(<[u8]>::to_vec)
            }
        }
    }
}

impl ModelTraffic {
    pub fn new(model: &str, spec: ModelSpec) -> Self {
        let canary = matches!(spec.policy, Some(Policy::Canary(_))).then_some(CanaryState::Waiting);
        ModelTraffic {
            model: model.to_string(),
            inner: Mutex::new(Inner {
                stable: spec.version.clone(),
                spec,
                rollout: None,
                canary,
                step_started: Instant::now(),
                windows: BTreeMap::new(),
            }),
            shadow_in_flight: AtomicUsize::new(0),
            shadow_log: Mutex::new(VecDeque::new()),
            shadow_totals: Mutex::new(ShadowTotals::default()),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a request on `version` until the guard drops.
    pub fn enter(&self, version: &str) -> InFlight<'_> {
        *self.in_flight.lock().entry(version.to_string()).or_default() += 1;
        InFlight { traffic: self, version: version.to_string() }
    }

    /// Requests outstanding on `version`.
    pub fn in_flight(&self, version: &str) -> usize {
        self.in_flight.lock().get(version).copied().unwrap_or(0)
    }

    pub fn spec(&self) -> ModelSpec {
        self.inner.lock().spec.clone()
    }

    /// Takes a new declaration. A policy declared as before keeps its live state; a new stable
    /// version starts a rollout from the version traffic goes to now.
    pub fn update(&self, spec: ModelSpec) {
        let mut inner = self.inner.lock();
        if inner.spec.policy != spec.policy {
            inner.canary = matches!(spec.policy, Some(Policy::Canary(_))).then_some(CanaryState::Waiting);
            inner.step_started = Instant::now();
            inner.windows.clear();
        }
        let current = inner.stable.clone();
        if spec.version != current && !spec.version.is_empty() {
            inner.rollout = Some(Rollout {
                from: current,
                to: spec.version.clone(),
                shifted: false,
                finished: false,
                waiting_for: None,
            });
        } else if spec.version.is_empty() {
            inner.stable.clear();
            inner.rollout = None;
        }
        inner.spec = spec;
    }

    /// The route of one request.
    pub fn route(&self, request: &InferRequest) -> Route {
        if !request.version.is_empty() {
            return Route { version: request.version.clone(), arm: "pinned".into(), shadow: None };
        }
        let inner = self.inner.lock();
        let stable = Route { version: inner.stable.clone(), arm: "stable".into(), shadow: None };
        match (&inner.spec.policy, &inner.canary) {
            (Some(Policy::Canary(c)), Some(CanaryState::Ramping { percent, .. })) => {
                if fastrand::f64() * 100.0 < *percent {
                    Route { version: c.version.clone(), arm: "canary".into(), shadow: None }
                } else {
                    stable
                }
            }
            (Some(Policy::Canary(c)), Some(CanaryState::Promoted)) => {
                Route { version: c.version.clone(), arm: "canary".into(), shadow: None }
            }
            (Some(Policy::Ab(ab)), _) => ab_route(ab, request),
            (Some(Policy::Shadow(s)), _) => {
                let mirror = fastrand::f64() * 100.0 < s.percent;
                Route { shadow: mirror.then(|| s.clone()), ..stable }
            }
            _ => stable,
        }
    }

    /// Records an answer (or failure) of `arm`.
    pub fn record(&self, arm: &str, took: Duration, error: Option<ErrorKind>) {
        let failed = error.is_some_and(counts_as_error);
        let mut inner = self.inner.lock();
        inner.windows.entry(arm.to_string()).or_default().record(took.as_secs_f64() * 1000.0, failed);
    }

    /// Versions that must be ready for this policy now (stable, canary, arms, shadow, a
    /// rollout's both ends until it finished); empty strings left out.
    pub fn needed_versions(&self) -> Vec<String> {
        let inner = self.inner.lock();
        let mut v = vec![inner.stable.clone(), inner.spec.version.clone()];
        if let Some(r) = &inner.rollout {
            if !r.finished {
                v.push(r.from.clone());
            }
            v.push(r.to.clone());
        }
        match &inner.spec.policy {
            Some(Policy::Canary(c)) if !matches!(inner.canary, Some(CanaryState::RolledBack { .. })) => {
                v.push(c.version.clone())
            }
            Some(Policy::Ab(ab)) => v.extend(ab.arms.iter().map(|a| a.version.clone())),
            Some(Policy::Shadow(s)) => v.push(s.version.clone()),
            _ => {}
        }
        v.retain(|x| !x.is_empty());
        v.sort_by_key(|x| x.parse::<u64>().unwrap_or(0));
        v.dedup();
        v
    }

    /// One step of the controller. `ready(version)` says whether every worker in rotation that
    /// serves the model has `version` ready; `any_ready(version)` whether at least one has;
    /// `in_flight(version)` how many requests the router has outstanding on it.
    pub fn tick(
        &self,
        ready: impl Fn(&str) -> bool,
        any_ready: impl Fn(&str) -> bool,
        in_flight: impl Fn(&str) -> usize,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        let mut inner = self.inner.lock();
        let model = self.model.clone();
        let event = |kind: &'static str, detail: String, notify: Option<String>| Transition {
            model: model.clone(),
            kind,
            detail,
            notify,
        };
        // A rollout shifts when the new version is ready everywhere the model is served.
        if let Some(mut r) = inner.rollout.clone() {
            if !r.shifted {
                if ready(&r.to) {
                    r.shifted = true;
                    r.waiting_for = None;
                    inner.stable = r.to.clone();
                    out.push(event(
                        "rollout_shifted",
                        format!("traffic moved from version {} to {}", show(&r.from), r.to),
                        None,
                    ));
                } else {
                    r.waiting_for = Some(format!("version {} to be ready on every worker that serves the model", r.to));
                }
            } else if !r.finished {
                let busy = if r.from.is_empty() { 0 } else { in_flight(&r.from) };
                if busy == 0 {
                    r.finished = true;
                    r.waiting_for = None;
                    out.push(event(
                        "rollout_finished",
                        format!("nothing in flight on version {}", show(&r.from)),
                        None,
                    ));
                } else {
                    r.waiting_for = Some(format!("{busy} requests in flight on version {}", show(&r.from)));
                }
            }
            inner.rollout = Some(r);
        }
        if let (Some(Policy::Canary(c)), Some(state)) = (inner.spec.policy.clone(), inner.canary.clone()) {
            if let Some(t) = self.canary_tick(&mut inner, &c, state, &any_ready) {
                out.push(event(t.0, t.1, c.webhook.clone().filter(|_| t.2)));
            }
        }
        out
    }

    /// Returns (kind, detail, whether to notify the webhook) when the canary changed state.
    fn canary_tick(
        &self,
        inner: &mut Inner,
        c: &CanarySpec,
        state: CanaryState,
        any_ready: &impl Fn(&str) -> bool,
    ) -> Option<(&'static str, String, bool)> {
        let reset = |inner: &mut Inner| {
            inner.step_started = Instant::now();
            inner.windows.clear();
        };
        match state {
            CanaryState::Waiting => {
                if any_ready(&c.version) && (inner.stable.is_empty() || any_ready(&inner.stable)) {
                    inner.canary = Some(CanaryState::Ramping { step: 0, percent: c.steps[0] });
                    reset(inner);
                    return Some((
                        "canary_step",
                        format!("version {} ready: {}% of traffic", c.version, c.steps[0]),
                        false,
                    ));
                }
                None
            }
            CanaryState::Ramping { step, percent } => {
                let canary = inner.windows.get("canary").cloned().unwrap_or_default();
                let stable = inner.windows.get("stable").cloned().unwrap_or_default();
                if canary.requests >= c.min_requests {
                    if let Some(reason) = breach(c, &canary, &stable) {
                        inner.canary = Some(CanaryState::RolledBack { reason: reason.clone() });
                        return Some((
                            "canary_rolled_back",
                            format!("version {} at {percent}%: {reason}", c.version),
                            true,
                        ));
                    }
                }
                let held = inner.step_started.elapsed().as_secs_f64() >= c.hold_s;
                if held && canary.requests >= c.min_requests {
                    if step + 1 < c.steps.len() {
                        let next = c.steps[step + 1];
                        inner.canary = Some(CanaryState::Ramping { step: step + 1, percent: next });
                        reset(inner);
                        return Some((
                            "canary_step",
                            format!("version {}: {percent}% → {next}% of traffic", c.version),
                            false,
                        ));
                    }
                    inner.canary = Some(CanaryState::Promoted);
                    return Some(("canary_promoted", format!("version {} passed every step", c.version), true));
                }
                None
            }
            CanaryState::Promoted | CanaryState::RolledBack { .. } => None,
        }
    }

    /// Takes a slot for a mirrored request, or says it is busy (the mirror is skipped).
    pub fn shadow_slot(&self, spec: &ShadowSpec) -> bool {
        let taken = self
            .shadow_in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < spec.max_in_flight).then_some(n + 1))
            .is_ok();
        let mut t = self.shadow_totals.lock();
        if taken {
            t.mirrored += 1;
        } else {
            t.skipped_busy += 1;
        }
        taken
    }

    /// Frees a mirror's slot without a result.
    pub fn shadow_release(&self) {
        self.shadow_in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Records a mirrored request's comparison and frees its slot.
    pub fn shadow_done(&self, sample: ShadowSample) {
        self.shadow_release();
        {
            let mut t = self.shadow_totals.lock();
            match sample.outcome.as_str() {
                "match" => t.matched += 1,
                "differ" => t.differed += 1,
                _ => t.errors += 1,
            }
        }
        if sample.outcome == "match" {
            return;
        }
        let mut log = self.shadow_log.lock();
        if log.len() == SHADOW_LOG {
            log.pop_front();
        }
        log.push_back(sample);
    }

    /// The last mirrored requests that differed or failed, newest last.
    pub fn shadow_samples(&self) -> Vec<ShadowSample> {
        self.shadow_log.lock().iter().cloned().collect()
    }

    pub fn view(&self) -> TrafficView {
        let inner = self.inner.lock();
        let policy = match &inner.spec.policy {
            None => "stable",
            Some(Policy::Canary(_)) => "canary",
            Some(Policy::Ab(_)) => "ab",
            Some(Policy::Shadow(_)) => "shadow",
        };
        let canary = match (&inner.spec.policy, &inner.canary) {
            (Some(Policy::Canary(c)), Some(s)) => Some(CanaryView {
                version: c.version.clone(),
                state: s.clone(),
                step_for_s: inner.step_started.elapsed().as_secs_f64(),
            }),
            _ => None,
        };
        let shadow = matches!(inner.spec.policy, Some(Policy::Shadow(_))).then(|| self.shadow_totals.lock().clone());
        TrafficView {
            model: self.model.clone(),
            stable_version: inner.stable.clone(),
            policy,
            canary,
            rollout: inner.rollout.clone(),
            shadow,
            arms: inner
                .windows
                .iter()
                .map(|(k, w)| {
                    (
                        k.clone(),
                        ArmView {
                            requests: w.requests,
                            errors: w.errors,
                            error_rate: w.error_rate(),
                            p99_ms: w.p99_ms(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// The canary's state, for metrics: 0 waiting, 1 ramping, 2 promoted, 3 rolled back; None
    /// without a canary.
    pub fn canary_code(&self) -> Option<(i64, f64)> {
        match &self.inner.lock().canary {
            None => None,
            Some(CanaryState::Waiting) => Some((0, 0.0)),
            Some(CanaryState::Ramping { percent, .. }) => Some((1, *percent)),
            Some(CanaryState::Promoted) => Some((2, 100.0)),
            Some(CanaryState::RolledBack { .. }) => Some((3, 0.0)),
        }
    }
}

fn show(version: &str) -> &str {
    if version.is_empty() {
        "latest"
    } else {
        version
    }
}

/// Why the canary must roll back, if it must: its error rate or p99 over the window beyond the
/// declared bounds of the stable version's over the same window.
fn breach(c: &CanarySpec, canary: &Window, stable: &Window) -> Option<String> {
    let (ce, se) = (canary.error_rate(), stable.error_rate());
    if ce > se + c.max_error_rate_increase {
        return Some(format!(
            "error rate {:.2}% over {} requests > stable {:.2}% + {:.2} points",
            ce * 100.0,
            canary.requests,
            se * 100.0,
            c.max_error_rate_increase * 100.0
        ));
    }
    // A p99 of fewer samples is one of the few slowest requests (a version's first, cold ones):
    // latency is judged once both arms have enough successful requests for it to mean something.
    let enough = |w: &Window| w.latencies_ms.len() >= MIN_P99_SAMPLES.max(c.min_requests as usize);
    if let (Some(cp), Some(sp)) = (canary.p99_ms(), stable.p99_ms()) {
        if enough(canary) && enough(stable) && cp > sp * c.max_p99_ratio && cp - sp > P99_SLACK_MS {
            return Some(format!("p99 {cp:.1} ms > stable {sp:.1} ms × {}", c.max_p99_ratio));
        }
    }
    None
}

fn ab_route(ab: &AbSpec, request: &InferRequest) -> Route {
    let total: f64 = ab.arms.iter().map(|a| a.weight).sum();
    let point = match split_key(&ab.split_by, request) {
        Some(key) => (stable_hash(&key) >> 11) as f64 / (1u64 << 53) as f64,
        None => fastrand::f64(),
    } * total;
    let mut acc = 0.0;
    for arm in &ab.arms {
        acc += arm.weight;
        if point < acc {
            return Route { version: arm.version.clone(), arm: arm.name.clone(), shadow: None };
        }
    }
    let last = &ab.arms[ab.arms.len() - 1];
    Route { version: last.version.clone(), arm: last.name.clone(), shadow: None }
}

/// Compares a candidate's outputs with the primary's.
pub fn compare(
    primary: &flotilla_core::InferResponse,
    candidate: &flotilla_core::InferResponse,
    tolerance: f64,
) -> (bool, f64, u64, String) {
    let mut max_diff = 0.0f64;
    let mut differing = 0u64;
    let mut notes = Vec::new();
    for p in &primary.outputs {
        let Some(c) = candidate.outputs.iter().find(|c| c.name == p.name) else {
            notes.push(format!("output '{}' missing", p.name));
            continue;
        };
        if p.shape != c.shape || p.datatype != c.datatype {
            notes.push(format!("output '{}': {:?}{:?} vs {:?}{:?}", p.name, p.datatype, p.shape, c.datatype, c.shape));
            continue;
        }
        match (flotilla_core::tensor::to_f64(p.datatype, &p.data), flotilla_core::tensor::to_f64(c.datatype, &c.data)) {
            (Ok(a), Ok(b)) if p.datatype != flotilla_core::DataType::Bytes => {
                for (x, y) in a.iter().zip(&b) {
                    let d = (x - y).abs();
                    let both_nan = x.is_nan() && y.is_nan();
                    if !both_nan && (d.is_nan() || d > tolerance) {
                        differing += 1;
                    }
                    if d.is_finite() {
                        max_diff = max_diff.max(d);
                    }
                }
            }
            _ => {
                if p.data != c.data {
                    differing += 1;
                    notes.push(format!("output '{}' differs", p.name));
                }
            }
        }
    }
    for c in &candidate.outputs {
        if !primary.outputs.iter().any(|p| p.name == c.name) {
            notes.push(format!("extra output '{}'", c.name));
        }
    }
    let same = differing == 0 && notes.is_empty();
    (same, max_diff, differing, notes.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::parse;

    fn spec(text: &str) -> ModelSpec {
        parse("f", text).unwrap().models.remove("m").unwrap()
    }

    fn request(params: &[(&str, &str)]) -> InferRequest {
        InferRequest {
            model: "m".into(),
            parameters: params.iter().map(|(k, v)| (k.to_string(), ParamValue::String(v.to_string()))).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn ab_is_sticky_and_splits_by_weight() {
        let t = ModelTraffic::new(
            "m",
            spec("[models.m.ab]\nsplit_by = \"parameter:user\"\narms = [{name = \"a\", version = 1, weight = 90}, {name = \"b\", version = 2, weight = 10}]"),
        );
        let mut b = 0;
        for i in 0..10_000 {
            let r = request(&[("user", &format!("user-{i}"))]);
            let first = t.route(&r);
            assert_eq!(t.route(&r), first, "the same user lands in the same arm");
            b += usize::from(first.arm == "b");
            if i == 1999 {
                assert!((160..=240).contains(&b), "10% ± 2 points of the first 2,000: {b}");
            }
        }
        assert!((800..=1200).contains(&b), "10% ± 2 points: {b}");
        assert_eq!(stable_hash(b"user-1"), 0x41a2fca5c68401c5, "the same in every process and release");
        let pinned = InferRequest { version: "7".into(), ..request(&[]) };
        assert_eq!(t.route(&pinned).arm, "pinned");
    }

    #[test]
    fn canary_waits_ramps_and_promotes() {
        let t = ModelTraffic::new("m", spec("[models.m]\nversion = 1\n[models.m.canary]\nversion = 2\nsteps = [10, 100]\nhold_s = 0\nmin_requests = 5"));
        assert!(t.tick(|_| false, |v| v == "1", |_| 0).is_empty(), "waits for version 2");
        assert_eq!(t.route(&request(&[])).version, "1");
        let ev = t.tick(|_| true, |_| true, |_| 0);
        assert_eq!(ev[0].kind, "canary_step");
        assert_eq!(t.needed_versions(), vec!["1".to_string(), "2".to_string()]);
        for _ in 0..10 {
            t.record("canary", Duration::from_millis(5), None);
            t.record("stable", Duration::from_millis(5), None);
        }
        assert_eq!(t.tick(|_| true, |_| true, |_| 0)[0].detail, "version 2: 10% → 100% of traffic");
        for _ in 0..10 {
            t.record("canary", Duration::from_millis(5), None);
        }
        let ev = t.tick(|_| true, |_| true, |_| 0);
        assert_eq!((ev[0].kind, ev[0].notify.is_none()), ("canary_promoted", true));
        assert_eq!(t.route(&request(&[])).version, "2");
    }

    #[test]
    fn canary_rolls_back_on_errors_or_latency() {
        let text = "[models.m]\nversion = 1\n[models.m.canary]\nversion = 2\nhold_s = 100\nmin_requests = 10\nwebhook = \"http://h/\"";
        let t = ModelTraffic::new("m", spec(text));
        t.tick(|_| true, |_| true, |_| 0);
        for i in 0..20 {
            t.record("stable", Duration::from_millis(5), None);
            t.record("canary", Duration::from_millis(5), (i % 4 == 0).then_some(ErrorKind::Internal));
        }
        let ev = t.tick(|_| true, |_| true, |_| 0);
        assert_eq!(ev[0].kind, "canary_rolled_back", "{ev:?}");
        assert!(ev[0].detail.contains("error rate 25.00%"), "{}", ev[0].detail);
        assert_eq!(ev[0].notify.as_deref(), Some("http://h/"));
        assert_eq!(t.route(&request(&[])).arm, "stable");
        assert_eq!(t.needed_versions(), vec!["1".to_string()]);

        let t = ModelTraffic::new("m", spec(text));
        t.tick(|_| true, |_| true, |_| 0);
        for _ in 0..150 {
            t.record("stable", Duration::from_millis(5), None);
            t.record("canary", Duration::from_millis(50), None);
            t.record("canary", Duration::from_millis(5), Some(ErrorKind::InvalidArgument));
        }
        assert!(t.tick(|_| true, |_| true, |_| 0).is_empty(), "too few samples for a p99");
        for _ in 0..60 {
            t.record("stable", Duration::from_millis(5), None);
            t.record("canary", Duration::from_millis(50), None);
        }
        let ev = t.tick(|_| true, |_| true, |_| 0);
        assert!(ev[0].detail.contains("p99 50.0 ms > stable 5.0 ms"), "client errors do not count: {ev:?}");
    }

    #[test]
    fn rollout_waits_for_ready_then_for_in_flight() {
        let t = ModelTraffic::new("m", spec("[models.m]\nversion = 1"));
        t.update(spec("[models.m]\nversion = 2"));
        assert!(t.tick(|_| false, |_| false, |_| 0).is_empty());
        assert_eq!(t.route(&request(&[])).version, "1", "no traffic moves before version 2 is ready");
        assert_eq!(t.needed_versions(), vec!["1".to_string(), "2".to_string()]);
        assert_eq!(t.tick(|v| v == "2", |_| true, |_| 3)[0].kind, "rollout_shifted");
        assert_eq!(t.route(&request(&[])).version, "2");
        assert!(t.tick(|_| true, |_| true, |_| 3).is_empty(), "version 1 has requests in flight");
        assert_eq!(t.tick(|_| true, |_| true, |_| 0)[0].kind, "rollout_finished");
        assert_eq!(t.needed_versions(), vec!["2".to_string()]);
    }

    #[test]
    fn shadow_mirrors_within_its_slots_and_compares() {
        let t = ModelTraffic::new("m", spec("[models.m.shadow]\nversion = 2\nmax_in_flight = 1"));
        let r = t.route(&request(&[]));
        let s = r.shadow.clone().expect("mirrored");
        assert_eq!((r.version.as_str(), s.version.as_str()), ("", "2"));
        assert!(t.shadow_slot(&s) && !t.shadow_slot(&s), "a second mirror is skipped, never queued");
        let out = |v: f32| flotilla_core::InferResponse {
            outputs: vec![flotilla_core::Tensor::new(
                "y",
                flotilla_core::DataType::F32,
                vec![1],
                v.to_le_bytes().to_vec(),
            )],
            ..Default::default()
        };
        assert!(compare(&out(1.0), &out(1.0), 0.0).0);
        let (same, diff, n, _) = compare(&out(1.0), &out(1.5), 0.1);
        assert!(!same && (diff - 0.5).abs() < 1e-9 && n == 1);
        t.shadow_done(ShadowSample {
            at_ms: 0,
            id: String::new(),
            outcome: "differ".into(),
            max_abs_diff: 0.5,
            elements_differing: 1,
            detail: String::new(),
        });
        assert!(t.shadow_slot(&s), "the slot is free again");
        assert_eq!(t.shadow_samples().len(), 1);
    }
}
