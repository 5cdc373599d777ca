//! Protocol rules that every adapter shares — HTTP, gRPC and the fleet router — written once:
//! requested outputs and their parameters, request parameters the server acts on (`priority`,
//! `timeout`, `idempotent`), repository load parameters, and the gRPC deadline header.
//!
//! Adapters turn their wire form (JSON values, protobuf oneofs) into [`ParamValue`]s and call
//! these; the rules and their error messages live here only.

use crate::error::{Error, Result};
use crate::request::{ParamValue, Parameters, RequestedOutput};
use std::time::{Duration, Instant};

/// The request parameter that marks an inference request as not safe to run twice.
pub const IDEMPOTENT: &str = "idempotent";

/// A requested output decoded from its name and parameters: `classification` becomes the top-k
/// count, `binary_data` (an HTTP encoding choice) is returned apart, every other parameter is
/// kept on the output as the client sent it.
pub fn requested_output(name: String, mut parameters: Parameters) -> Result<(RequestedOutput, Option<bool>)> {
    let what = format!("output '{name}'");
    let binary = match parameters.remove("binary_data") {
        None => None,
        Some(b) => Some(b.as_bool().ok_or_else(|| Error::invalid(format!("{what}: binary_data must be a bool")))?),
    };
    let classification = match parameters.remove("classification") {
        None => None,
        Some(k) => Some(
            k.as_i64()
                .and_then(|k| usize::try_from(k).ok())
                .ok_or_else(|| Error::invalid(format!("{what}: classification must be a non-negative integer")))?,
        ),
    };
    Ok((RequestedOutput { name, classification, parameters }, binary))
}

/// The parameters of a requested output as they travel to another server (the inverse of
/// [`requested_output`], without `binary_data`).
pub fn output_parameters(output: &RequestedOutput) -> Parameters {
    let mut p = output.parameters.clone();
    if let Some(k) = output.classification {
        p.insert("classification".into(), ParamValue::Uint(k as u64));
    }
    p
}

fn non_negative(parameters: &Parameters, key: &str, what: &str) -> Result<Option<u64>> {
    match parameters.get(key) {
        None => Ok(None),
        Some(v) => v.as_i64().and_then(|t| u64::try_from(t).ok()).map(Some).ok_or_else(|| {
            Error::invalid(format!("request parameter '{key}' must be a non-negative integer ({what})"))
        }),
    }
}

/// The `priority` request parameter: 1 is the highest level, 0 (or none) the model's default.
pub fn priority(parameters: &Parameters) -> Result<Option<u64>> {
    non_negative(parameters, "priority", "1 is the highest level, 0 the model's default")
}

/// The `timeout` request parameter, in microseconds, as Triton's clients send it.
pub fn timeout_us(parameters: &Parameters) -> Result<Option<u64>> {
    non_negative(parameters, "timeout", "microseconds")
}

/// When a request that arrived at `started` must be answered by, from its `timeout`.
pub fn deadline(parameters: &Parameters, started: Instant) -> Result<Option<Instant>> {
    Ok(timeout_us(parameters)?.and_then(|us| started.checked_add(Duration::from_micros(us))))
}

/// Whether the request may run twice (a router may retry or hedge it): the `idempotent`
/// parameter, true unless the client says otherwise.
pub fn idempotent(parameters: &Parameters) -> Result<bool> {
    match parameters.get(IDEMPOTENT) {
        None => Ok(true),
        Some(v) => v.as_bool().ok_or_else(|| {
            Error::invalid(format!("request parameter '{IDEMPOTENT}' must be a bool (false: never run it twice)"))
        }),
    }
}

/// A client's deadline (gRPC `grpc-timeout`) bounds queueing too, unless the request names its
/// own `timeout`.
pub fn apply_deadline(parameters: &mut Parameters, micros: u64) {
    parameters.entry("timeout".into()).or_insert(ParamValue::Uint(micros));
}

/// The gRPC deadline header (`grpc-timeout: <digits><H|M|S|m|u|n>`) in microseconds.
pub fn grpc_timeout_micros(value: &str) -> Option<u64> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let us = match unit {
        "H" => n.checked_mul(3_600_000_000)?,
        "M" => n.checked_mul(60_000_000)?,
        "S" => n.checked_mul(1_000_000)?,
        "m" => n.checked_mul(1_000)?,
        "u" => n,
        "n" => n / 1_000,
        _ => return None,
    };
    Some(us.max(1))
}

/// Copies the headers `wanted` names (lower case) into `params` as string parameters, unless
/// the request sets that parameter itself; values that are not text are skipped.
pub fn forward_headers<'a>(
    params: &mut Parameters,
    headers: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    wanted: impl Fn(&str) -> bool,
) {
    for (name, value) in headers {
        if let Some(value) = value {
            if wanted(name) && !params.contains_key(name) {
                params.insert(name.to_string(), ParamValue::String(value.to_string()));
            }
        }
    }
}

/// What a repository load request asks for, from its parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Triton's `config` parameter: the model configuration as JSON, overriding config.pbtxt.
    pub config: Option<String>,
}

/// Reads repository load parameters (Triton's `config` string; `file:` uploads are refused).
/// `params` yields each key with its value, or None for a value that is not a string.
pub fn load_options<'a>(params: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Result<LoadOptions> {
    let mut options = LoadOptions::default();
    for (key, value) in params {
        match (key, value) {
            ("config", Some(text)) => options.config = Some(text.to_string()),
            ("config", None) => {
                return Err(Error::invalid("load parameter 'config' must be a string holding the model config JSON"))
            }
            (k, _) if k.starts_with("file:") => {
                return Err(Error::unimplemented(format!(
                    "load parameter '{k}': uploading model files with a load request is not supported; put the files in the repository"
                )))
            }
            _ => {}
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, ParamValue)]) -> Parameters {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn outputs_keep_their_parameters_and_round_trip() {
        let p = params(&[
            ("classification", ParamValue::Int(3)),
            ("binary_data", ParamValue::Bool(true)),
            ("custom", ParamValue::String("x".into())),
        ]);
        let (out, binary) = requested_output("prob".into(), p).unwrap();
        assert_eq!((out.classification, binary), (Some(3), Some(true)));
        assert_eq!(out.parameters, params(&[("custom", ParamValue::String("x".into()))]));
        let back = output_parameters(&out);
        let (again, _) = requested_output("prob".into(), back).unwrap();
        assert_eq!(again, out);
        let bad = requested_output("p".into(), params(&[("classification", ParamValue::Int(-1))]));
        assert_eq!(bad.unwrap_err().message, "output 'p': classification must be a non-negative integer");
        assert!(requested_output("p".into(), params(&[("binary_data", ParamValue::Int(1))])).is_err());
    }

    #[test]
    fn request_parameters() {
        let p = params(&[("timeout", ParamValue::Uint(5)), ("priority", ParamValue::Int(2))]);
        assert_eq!((timeout_us(&p).unwrap(), priority(&p).unwrap()), (Some(5), Some(2)));
        assert!(timeout_us(&params(&[("timeout", ParamValue::Int(-5))])).is_err());
        assert!(idempotent(&Parameters::new()).unwrap());
        assert!(!idempotent(&params(&[(IDEMPOTENT, ParamValue::Bool(false))])).unwrap());
        assert!(idempotent(&params(&[(IDEMPOTENT, ParamValue::String("no".into()))])).is_err());
        let mut p = params(&[("timeout", ParamValue::Uint(9))]);
        apply_deadline(&mut p, 100);
        assert_eq!(timeout_us(&p).unwrap(), Some(9), "the request's own timeout wins");
    }

    #[test]
    fn grpc_timeout_header_units() {
        for (v, want) in
            [("5S", Some(5_000_000)), ("250m", Some(250_000)), ("7u", Some(7)), ("1H", Some(3_600_000_000))]
        {
            assert_eq!(grpc_timeout_micros(v), want, "{v}");
        }
        for bad in ["", "S", "12x", "99999999999999999999S"] {
            assert_eq!(grpc_timeout_micros(bad), None, "{bad}");
        }
    }

    #[test]
    fn load_parameters() {
        assert_eq!(load_options([("config", Some("{}"))]).unwrap().config.as_deref(), Some("{}"));
        assert_eq!(load_options([("config", None)]).unwrap_err().kind, crate::ErrorKind::InvalidArgument);
        assert_eq!(load_options([("file:1/model.onnx", None)]).unwrap_err().kind, crate::ErrorKind::Unimplemented);
        assert_eq!(load_options([("other", None)]).unwrap(), LoadOptions::default());
    }
}
