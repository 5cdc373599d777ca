//! One inference request through the fleet: choose a worker, send, and on a failure that
//! another worker can fix, retry on a different worker within the retry budget and the
//! request's deadline; hedge after the model's p95 when the model asks for it.
//!
//! What may be retried: a request a worker never ran (connection refused, a draining worker's
//! DRAINING, a full queue, a stale model list) always; one it may have run (connection lost
//! mid-request, no answer in time) only when the request is idempotent (the default; the
//! `idempotent: false` parameter says otherwise).

use crate::balance::{self, Choice, Snapshot};
use crate::desired::ShadowSpec;
use crate::member::{EjectReason, Lane, Member, Outstanding};
use crate::router::Fleet;
use crate::traffic::{ModelTraffic, ShadowSample};
use flotilla_core::error::KIND_HEADER;
use flotilla_core::{protocol, stage};
use flotilla_core::{Error, ErrorKind, InferRequest, InferResponse, Result};
use flotilla_proto::inference::{InferParameter, ModelInferRequest};
use std::sync::Arc;
use std::time::Instant;
use tower::retry::budget::Budget;
use tracing::Instrument;

/// What a failed attempt tells the router.
#[derive(Debug)]
pub(crate) struct Failure {
    pub error: Error,
    /// The worker may have run the request (it reached it, and no answer says it did not).
    pub maybe_ran: bool,
    /// Another worker could answer it.
    pub retryable: bool,
    pub signal: Signal,
}

/// What a failure says about the worker's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Nothing: the worker answered as it should (bad input, a full queue).
    Fine,
    /// A failure or a timeout: counts towards ejection.
    Failed,
    /// The connection failed: out of rotation at once.
    Connection,
    /// It is draining (preempted).
    Draining,
    /// It does not have the model its record lists.
    Stale,
}

/// The fleet's answer for a model no worker can take now.
fn no_worker(model: &str, known: bool) -> Error {
    if known {
        Error::unavailable(format!(
            "model '{model}': no worker is ready to serve it now (all draining or out of rotation)"
        ))
    } else {
        // Triton's wording, as a worker says it.
        Error::not_found(format!("Request for unknown model: '{model}' is not found"))
    }
}

/// Decodes a worker's gRPC error: the exact kind when the worker sent it, else a transport
/// failure (refused: never ran; anything else: may have run).
pub(crate) fn classify(worker: &str, status: tonic::Status) -> Failure {
    let kind = status.metadata().get(KIND_HEADER).and_then(|v| v.to_str().ok()).and_then(ErrorKind::parse);
    if let Some(kind) = kind {
        let error = Error::new(kind, status.message());
        let (maybe_ran, retryable, signal) = match kind {
            ErrorKind::Draining => (false, true, Signal::Draining),
            ErrorKind::ResourceExhausted => (false, true, Signal::Fine),
            ErrorKind::Unavailable => (false, true, Signal::Failed),
            ErrorKind::NotFound => (false, true, Signal::Stale),
            ErrorKind::Internal => (true, false, Signal::Failed),
            ErrorKind::InvalidArgument
            | ErrorKind::PayloadTooLarge
            | ErrorKind::DeadlineExceeded
            | ErrorKind::FailedPrecondition
            | ErrorKind::Unimplemented
            | ErrorKind::Unauthenticated
            | ErrorKind::PermissionDenied => (false, false, Signal::Fine),
        };
        return Failure { error, maybe_ran, retryable, signal };
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&status);
    let mut refused = false;
    while let Some(e) = source {
        refused |= e.downcast_ref::<tonic::ConnectError>().is_some();
        source = e.source();
    }
    let error = Error::unavailable(format!("worker '{worker}' failed: {}", status.message()));
    Failure { error, maybe_ran: !refused, retryable: true, signal: Signal::Connection }
}

/// The forwarded request's `timeout` parameter: what is left of the client's.
fn set_remaining(proto: &mut ModelInferRequest, deadline: Option<Instant>) {
    if let Some(d) = deadline {
        let us = d.saturating_duration_since(Instant::now()).as_micros().max(1);
        let choice = flotilla_proto::inference::infer_parameter::ParameterChoice::Uint64Param(
            u64::try_from(us).unwrap_or(u64::MAX),
        );
        proto.parameters.insert("timeout".into(), InferParameter { parameter_choice: Some(choice) });
    }
}

/// A chosen worker for one attempt.
pub(crate) struct Pick {
    pub member: Arc<Member>,
    pub lane: Arc<Lane>,
}

// === impl Fleet (forwarding) ===

impl Fleet {
    /// Chooses a worker for `model`/`version` among those not in `tried`.
    pub(crate) fn pick(&self, model: &str, version: &str, tried: &[String]) -> Result<Pick> {
        let members = self.members.all();
        let mut known = false;
        let mut offers = Vec::new();
        for m in &members {
            let r = m.record();
            let Some(offer) = r.offer(model, version) else {
                continue;
            };
            known = true;
            if !m.available() || tried.iter().any(|t| *t == m.id) {
                continue;
            }
            let lane = m.lane(model);
            if lane.stale() {
                continue;
            }
            offers.push((
                m.clone(),
                lane,
                r.capacity_class,
                offer.capacity_rps,
                offer.latency_target_ms,
                offer.instances,
                r.hardware.clone(),
            ));
        }
        if !known && !version.is_empty() && members.iter().any(|m| m.record().offer(model, "").is_some()) {
            return Err(Error::not_found(format!(
                "Request for unknown model: '{model}' version {version} is not found"
            )));
        }
        if offers.is_empty() {
            return Err(no_worker(model, known));
        }
        let snapshots: Vec<Snapshot> = offers
            .iter()
            .map(|(_, lane, class, capacity, target_ms, instances, hardware)| {
                let known = capacity.or_else(|| self.members.stand_in(model, hardware, *instances));
                let target_ns = target_ms * 1e6;
                // At capacity a worker holds capacity × target requests (Little); twice that (and
                // at least two per engine instance) is the most the router keeps outstanding on
                // it before it counts as saturated.
                let limit = match known {
                    Some(c) => ((c * target_ms / 1000.0 * 2.0).ceil() as usize).max(2 * instances.max(&1)),
                    None => self.settings.default_limit,
                };
                let capacity = known.filter(|c| *c > 0.0).unwrap_or(1.0);
                Snapshot {
                    class: *class,
                    latency_ns: lane.peak.estimate_ns(),
                    base_ns: lane.base.value_ns(),
                    recent_ns: lane.base.recent_ns(),
                    outstanding: lane.outstanding.load(std::sync::atomic::Ordering::Acquire),
                    rate: lane.rate.per_second(),
                    capacity,
                    target_ns,
                    limit: limit.max(self.settings.min_limit),
                }
            })
            .collect();
        match balance::choose(&snapshots, self.settings.policy, fastrand::f64) {
            Choice::Worker(i) => {
                let (member, lane, ..) = offers.swap_remove(i);
                Ok(Pick { member, lane })
            }
            Choice::Saturated => {
                self.metrics.shed.with_label_values(&[model]).inc();
                Err(Error::exhausted(format!(
                    "model '{model}': every worker that serves it is at its limit; retry after the Retry-After delay"
                )))
            }
        }
    }

    /// Sends one attempt and records what it says about the worker.
    /// [`Fleet::attempt`] in its trace span (`attempt` or `hedge`, the worker and the attempt's
    /// number: 0 first, then retries), whose context the worker receives as `traceparent`.
    async fn traced_attempt(
        &self,
        what: &'static str,
        attempt: usize,
        pick: &Pick,
        model: &str,
        proto: ModelInferRequest,
        deadline: Option<Instant>,
    ) -> std::result::Result<InferResponse, Failure> {
        let span = stage!("attempt", otel.name = what, otel.kind = "client", worker = %pick.member.id, attempt,
            otel.status_code = tracing::field::Empty, otel.status_description = tracing::field::Empty);
        let result = self.attempt(pick, model, proto, deadline).instrument(span.clone()).await;
        if let Err(f) = &result {
            flotilla_core::trace::failed(&span, &f.error);
        }
        result
    }

    async fn attempt(
        &self,
        pick: &Pick,
        model: &str,
        proto: ModelInferRequest,
        deadline: Option<Instant>,
    ) -> std::result::Result<InferResponse, Failure> {
        let _outstanding = Outstanding::enter(&pick.member, &pick.lane);
        self.metrics
            .outstanding
            .with_label_values(&[&pick.member.id])
            .set(pick.member.outstanding.load(std::sync::atomic::Ordering::Relaxed) as i64);
        let limit = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(self.settings.attempt_timeout),
            None => self.settings.attempt_timeout,
        };
        let started = Instant::now();
        let mut client = pick.member.client.clone();
        let gone = pick.member.gone();
        let mut request = tonic::Request::new(proto);
        for (key, value) in flotilla_core::trace::outgoing() {
            if let Ok(value) = value.parse() {
                request.metadata_mut().insert(key, value);
            }
        }
        let answer = tokio::select! {
            a = tokio::time::timeout(limit, client.model_infer(request)) => a,
            _ = gone => {
                return Err(Failure {
                    error: Error::unavailable(format!("worker '{}' stopped answering", pick.member.id)),
                    maybe_ran: true,
                    retryable: true,
                    signal: Signal::Fine,
                })
            }
        };
        let took = started.elapsed();
        pick.lane.peak.observe(took);
        self.metrics.attempt_duration.with_label_values(&[&pick.member.id]).observe(took.as_secs_f64());
        let result = match answer {
            Ok(Ok(response)) => flotilla_grpc::convert::response_from_proto(response.into_inner())
                .map_err(|e| Failure { error: e, maybe_ran: true, retryable: false, signal: Signal::Failed }),
            Ok(Err(status)) => Err(classify(&pick.member.id, status)),
            Err(_) => Err(Failure {
                error: Error::new(
                    ErrorKind::DeadlineExceeded,
                    format!("worker '{}' did not answer within {} ms", pick.member.id, limit.as_millis()),
                ),
                maybe_ran: true,
                retryable: deadline.is_none_or(|d| Instant::now() < d),
                signal: Signal::Failed,
            }),
        };
        match &result {
            Ok(_) => {
                pick.lane.base.observe(took);
                pick.member.success();
                if !pick.member.answered.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    self.members.events.push(&pick.member.id, "first_answer", format!("model {model}"));
                }
                self.metrics.attempts.with_label_values(&[&pick.member.id, model, "ok"]).inc();
                let r = pick.member.record();
                self.metrics.served.with_label_values(&[model, r.capacity_class.as_str(), &r.hardware]).inc();
            }
            Err(f) => {
                self.metrics.attempts.with_label_values(&[&pick.member.id, model, f.error.kind.as_str()]).inc();
                self.health_signal(&pick.member, &pick.lane, f);
            }
        }
        result
    }

    /// Applies what a failure says about a worker: draining, ejection, a stale model list.
    fn health_signal(&self, member: &Arc<Member>, lane: &Lane, f: &Failure) {
        match f.signal {
            Signal::Fine => member.success(),
            Signal::Draining => {
                if member.mark_draining() {
                    self.members.events.push(&member.id, "draining", "answered DRAINING (in-band notice)");
                }
            }
            Signal::Stale => {
                *lane.stale_until.lock() = Some(Instant::now() + self.settings.stale_for);
            }
            Signal::Connection => self.eject(member, EjectReason::Connection, &f.error.message),
            Signal::Failed => {
                if member.failure() >= self.settings.eject_after {
                    self.eject(member, EjectReason::Failures, &f.error.message);
                }
            }
        }
    }

    pub(crate) fn eject(&self, member: &Arc<Member>, reason: EjectReason, why: &str) {
        if member.eject(reason, self.settings.eject_backoff) {
            self.metrics.ejections.with_label_values(&[reason.as_str()]).inc();
            self.members.events.push(&member.id, "ejected", format!("{}: {why}", reason.as_str()));
            self.members.update_gauges();
        }
    }

    /// Runs one inference request on the fleet: through the model's traffic policy when the
    /// desired state declares one (the arm's version, its counts, a shadow copy), then
    /// [`Fleet::forward_to`].
    pub(crate) async fn forward(&self, mut request: InferRequest) -> Result<InferResponse> {
        let Some(traffic) = self.control.traffic(&request.model) else {
            return self.forward_to(request).await;
        };
        let started = Instant::now();
        let route = traffic.route(&request);
        // A policy's version that no worker lists (a repository that moved on by itself) falls
        // back to each worker's latest rather than failing.
        let listed = route.version.is_empty()
            || route.arm == "pinned"
            || self.members.all().iter().any(|m| m.record().offer(&request.model, &route.version).is_some());
        request.version = if listed { route.version.clone() } else { String::new() };
        let mirror = match &route.shadow {
            Some(v) if protocol::idempotent(&request.parameters).unwrap_or(false) => Some((v.clone(), request.clone())),
            _ => None,
        };
        let model = request.model.clone();
        let result = {
            let _in_flight = traffic.enter(&request.version);
            self.forward_to(request).await
        };
        let took = started.elapsed();
        traffic.record(&route.arm, took, result.as_ref().err().map(|e| e.kind));
        let (version, outcome) = match &result {
            Ok(r) => (r.model_version.as_str(), "ok"),
            Err(e) => (if route.version.is_empty() { "latest" } else { route.version.as_str() }, e.kind.as_str()),
        };
        self.metrics.arm_requests.with_label_values(&[&model, &route.arm, version, outcome]).inc();
        self.metrics.arm_duration.with_label_values(&[&model, &route.arm]).observe(took.as_secs_f64());
        if let (Some((spec, copy)), Ok(primary)) = (mirror, &result) {
            self.mirror(traffic, spec, copy, primary.clone());
        }
        result
    }

    /// Sends a copy of a request to the shadow version, off the caller's path (a task, within
    /// the policy's in-flight limit: skipped, never queued, when busy), and records how its
    /// answer differs from the primary's.
    fn mirror(&self, traffic: Arc<ModelTraffic>, spec: ShadowSpec, mut copy: InferRequest, primary: InferResponse) {
        let model = copy.model.clone();
        if !traffic.shadow_slot(&spec) {
            self.metrics.shadow.with_label_values(&[&model, "skipped_busy"]).inc();
            return;
        }
        let Some(fleet) = self.me.upgrade() else {
            traffic.shadow_release();
            return;
        };
        copy.version = spec.version.clone();
        tokio::spawn(async move {
            let id = copy.id.clone();
            let answer = match fleet.pick(&model, &copy.version, &[]) {
                Ok(pick) => {
                    let proto = flotilla_grpc::convert::request_to_proto(&copy);
                    fleet.attempt(&pick, &model, proto, None).await.map_err(|f| f.error)
                }
                Err(e) => Err(e),
            };
            let sample = match answer {
                Ok(candidate) => {
                    let (same, max_abs_diff, elements_differing, detail) =
                        crate::traffic::compare(&primary, &candidate, spec.tolerance);
                    ShadowSample {
                        at_ms: crate::events::now_ms() as u64,
                        id,
                        outcome: if same { "match" } else { "differ" }.into(),
                        max_abs_diff,
                        elements_differing,
                        detail,
                    }
                }
                Err(e) => ShadowSample {
                    at_ms: crate::events::now_ms() as u64,
                    id,
                    outcome: "error".into(),
                    max_abs_diff: 0.0,
                    elements_differing: 0,
                    detail: format!("{}: {}", e.kind.as_str(), e.message),
                },
            };
            fleet.metrics.shadow.with_label_values(&[&model, &sample.outcome]).inc();
            traffic.shadow_done(sample);
        });
    }

    /// Runs one inference request on the fleet (retries and hedging included).
    pub(crate) async fn forward_to(&self, request: InferRequest) -> Result<InferResponse> {
        let started = Instant::now();
        let idempotent = protocol::idempotent(&request.parameters)?;
        let deadline = protocol::deadline(&request.parameters, started)?;
        protocol::priority(&request.parameters)?;
        let model = request.model.clone();
        let version = request.version.clone();
        let proto = flotilla_grpc::convert::request_to_proto(&request);
        self.retry_budget.deposit();
        let hedging = idempotent && self.settings.hedges(&model);
        if hedging {
            self.hedge_budget.deposit();
        }
        let mut tried: Vec<String> = Vec::new();
        let mut last: Option<Error> = None;
        for attempt in 0..self.settings.max_attempts.max(1) {
            let pick = match stage!("pick", attempt).in_scope(|| self.pick(&model, &version, &tried)) {
                Ok(p) => p,
                // Nobody left to try: the last worker's answer says most.
                Err(e) if e.kind == ErrorKind::Unavailable => return Err(last.unwrap_or(e)),
                Err(e) => return Err(e),
            };
            if attempt > 0 && !self.retry_budget.withdraw() {
                self.metrics.retries_refused.with_label_values(&[&model]).inc();
                return Err(last.unwrap_or_else(|| Error::unavailable("retry budget spent")));
            }
            let mut proto = proto.clone();
            set_remaining(&mut proto, deadline);
            let outcome = if hedging && attempt == 0 {
                self.hedged(pick, &model, &version, proto, deadline, &mut tried).await
            } else {
                tried.push(pick.member.id.clone());
                self.traced_attempt("attempt", attempt, &pick, &model, proto, deadline).await
            };
            let failure = match outcome {
                Ok(response) => {
                    self.latency(&model).record(started.elapsed());
                    return Ok(response);
                }
                Err(f) => f,
            };
            let out_of_time = deadline.is_some_and(|d| Instant::now() >= d);
            if !failure.retryable || (failure.maybe_ran && !idempotent) || out_of_time {
                return Err(failure.error);
            }
            self.metrics.retries.with_label_values(&[failure.error.kind.as_str()]).inc();
            last = Some(failure.error);
        }
        Err(last.unwrap_or_else(|| no_worker(&model, true)))
    }

    /// The first attempt, with a second copy on another worker when it has not answered by the
    /// model's p95 (within the hedge budget). The first success wins; the other is cancelled.
    async fn hedged(
        &self,
        pick: Pick,
        model: &str,
        version: &str,
        proto: ModelInferRequest,
        deadline: Option<Instant>,
        tried: &mut Vec<String>,
    ) -> std::result::Result<InferResponse, Failure> {
        tried.push(pick.member.id.clone());
        let Some(delay) = self.latency(model).p95(self.settings.hedge_min_samples) else {
            return self.traced_attempt("attempt", 0, &pick, model, proto, deadline).await;
        };
        let first = self.traced_attempt("attempt", 0, &pick, model, proto.clone(), deadline);
        tokio::pin!(first);
        tokio::select! {
            r = &mut first => return r,
            _ = tokio::time::sleep(delay) => {}
        }
        let second_pick = match self.pick(model, version, tried) {
            Ok(p) if self.hedge_budget.withdraw() => p,
            _ => return first.await,
        };
        tried.push(second_pick.member.id.clone());
        self.metrics.hedges.with_label_values(&[model]).inc();
        let second = self.traced_attempt("hedge", 0, &second_pick, model, proto, deadline);
        tokio::pin!(second);
        tokio::select! {
            r = &mut first => match r {
                Ok(resp) => Ok(resp),
                Err(_) => second.await,
            },
            r = &mut second => match r {
                Ok(resp) => {
                    self.metrics.hedge_wins.with_label_values(&[model]).inc();
                    Ok(resp)
                }
                Err(_) => first.await,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker_error(kind: ErrorKind) -> tonic::Status {
        flotilla_grpc::status(Error::new(kind, "x"))
    }

    #[test]
    fn worker_answers_keep_their_kind_and_say_whether_they_ran() {
        let f = classify("w", worker_error(ErrorKind::Draining));
        assert_eq!(
            (f.error.kind, f.maybe_ran, f.retryable, f.signal),
            (ErrorKind::Draining, false, true, Signal::Draining)
        );
        let f = classify("w", worker_error(ErrorKind::InvalidArgument));
        assert_eq!((f.error.kind, f.retryable, f.signal), (ErrorKind::InvalidArgument, false, Signal::Fine));
        assert_eq!(f.error.message, "x", "the worker's message reaches the client unchanged");
        let f = classify("w", worker_error(ErrorKind::ResourceExhausted));
        assert!(f.retryable && !f.maybe_ran && f.signal == Signal::Fine);
        let f = classify("w", worker_error(ErrorKind::Internal));
        assert!(!f.retryable && f.maybe_ran);
        let f = classify("w", worker_error(ErrorKind::NotFound));
        assert!(f.retryable && f.signal == Signal::Stale);
        let f = classify("w", worker_error(ErrorKind::PayloadTooLarge));
        assert_eq!(f.error.http_status(), 413, "kinds sharing a gRPC code stay apart");
    }

    #[test]
    fn transport_failures_retry_and_a_refused_connection_never_ran() {
        let refused = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        )))));
        let f = classify("w", refused);
        assert!(f.retryable && !f.maybe_ran && f.signal == Signal::Connection, "{f:?}");
        let lost = tonic::Status::unknown("transport error: connection reset");
        let f = classify("w", lost);
        assert!(f.retryable && f.maybe_ran && f.signal == Signal::Connection);
        assert_eq!(f.error.kind, ErrorKind::Unavailable);
    }
}
