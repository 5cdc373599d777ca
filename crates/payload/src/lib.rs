//! # Flotilla payload log and replay
//!
//! What a model served, kept to evaluate a candidate model on real traffic before it takes any.
//!
//! ## Layout
//! - [`settings`]: a model's `payload.toml` (sampling rate, errors, fields to drop or hash).
//! - [`columns`]: tensors as Parquet columns and back (the documented file schema).
//! - [`log`]: [`log::PayloadLog`], the [`flotilla_core::observe::Recorder`] that samples requests
//!   and writes them off the request path (bounded queue, drops counted) to Parquet files rotated
//!   by size and age.
//! - [`replay`]: logged requests read back, compared with what a candidate answers, and the report
//!   (output differences, class agreement, latency, label metrics, the canary's bounds).
#![forbid(unsafe_code)]

pub mod columns;
pub mod log;
pub mod replay;
pub mod settings;

/// What can go wrong reading settings, writing logs or replaying them.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("{0}")]
    Settings(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = PayloadError> = std::result::Result<T, E>;
