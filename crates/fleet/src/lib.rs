//! # Flotilla's elastic fleet
//!
//! `flotilla route` in front of many `flotilla serve --join` workers on guaranteed and
//! opportunistic capacity of several hardware kinds.
//!
//! ## Layout
//! - [`record`]: what a worker advertises (class, hardware, ready models with measured capacity, load).
//! - [`load`]: the load signals the router keeps (peak-EWMA and usual latency, request rate, recent latencies).
//! - [`balance`]: the choice of a worker (capacity-weighted P2C in capacity-class tiers), a pure function.
//! - [`member`], [`members`]: the router's view of the fleet (health, ejection, expiry).
//! - [`router`]: [`router::Fleet`], the protocol's operations answered by the fleet; [`forward`]:
//!   one inference request through it (retry budget, hedging, deadlines).
//! - [`http`]: the router's fleet endpoints (registration, view, events, pass-through) and the
//!   worker's admin endpoints (preempt).
//! - [`feast`]: Feast's gRPC serving API on the router, forwarded to a worker with a feature store.
//! - [`nats`]: membership in NATS JetStream KV, for several routers.
//! - [`leases`]: one consumer at a time for a source with one (a PostgreSQL replication
//!   slot) among workers that share an online store.
//! - [`agent`]: the worker's side: registration, heartbeats, preemption drain; [`capacity`]:
//!   the capacity it measures per model.
//! - [`desired`]: the desired state (`fleet.toml`) and its checks; [`traffic`]: per-model
//!   policies (stable version and rollout, canary with automatic rollback, A/B, shadow);
//!   [`control`]: the loop that watches the file, advances the policies and has workers load
//!   the versions they need; [`placement`]: which workers serve the models the router serves
//!   from artifacts; [`sync`]: digest-based sync of those models to workers (both sides).
//! - [`drift`]: the fleet's drift view, merged from the windows the workers closed, with one
//!   alert state (and webhook) per change for the whole fleet.
//! - [`link`]: the clients members reach each other with (the fleet token on every call).
//! - [`events`], [`metrics`]: what happened, for operators and the benchmark.
#![forbid(unsafe_code)]

pub mod agent;
pub mod balance;
pub mod capacity;
pub mod control;
pub mod desired;
pub mod drift;
pub mod events;
pub mod feast;
pub mod forward;
pub mod http;
pub mod leases;
pub mod link;
pub mod load;
pub mod member;
pub mod members;
pub mod metrics;
pub mod nats;
pub mod placement;
pub mod record;
pub mod router;
pub mod sync;
pub mod traffic;
