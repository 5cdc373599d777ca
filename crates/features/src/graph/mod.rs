//! Graph models: a model folder's `graph.toml` says how to build a GNN's inputs from the
//! feature store at request time. A request names target nodes only; the server fetches their
//! k-hop neighbourhood from edge lists (list features, usually of append views), gathers node
//! features and builds the model's input tensors.
//!
//! ```toml
//! node = "account"                      # the node entity; requests send its join key (account_id)
//! edges = ["paid:dst", "shares_device:other"]   # list features of views keyed by the node entity
//! hops = [10, 5]                        # fan-out per hop
//! sample = "newest"                     # or "uniform" (with `seed`, reproducible)
//! features = ["account_profile"]        # node features (numeric), in column order
//! missing = 0.0                         # value of a missing node feature
//! ```
//!
//! - [`plan`]: the parsed, checked `graph.toml`.
//! - [`sample`]: neighbourhood fetch (one batched store read per hop), sampling and the tensors.

pub mod plan;
pub mod sample;

pub use plan::{GraphPlan, Sampling, FILE_NAME};
pub use sample::{build, Neighbourhood, Timings};
