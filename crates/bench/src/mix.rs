//! The request mix: a JSON file of weighted request kinds, each an HTTP request or a KServe v2
//! gRPC `ModelInfer`, prepared once (bodies and protobuf messages are built before the run).
//!
//! ```json
//! {"kinds": [
//!   {"name": "valid_http", "weight": 55, "http": {"path": "/v2/models/m/infer", "json": {"inputs": []}}},
//!   {"name": "malformed", "weight": 5, "http": {"path": "/v2/models/m/infer", "text": "{\"inputs\": ["}},
//!   {"name": "valid_grpc", "weight": 20, "grpc": {"model_name": "m", "inputs": [
//!       {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [0, 1]}]}}
//! ]}
//! ```
//! An HTTP kind has `path`, an optional `method` (POST when it has a body, else GET), and its body
//! as `json` (any JSON value, sent as `application/json`) or `text` (sent as given, with
//! `content_type`). A gRPC kind lists its inputs as tritonclient sends them: data in
//! `raw_input_contents`, little-endian, BYTES elements each after a 4-byte length.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use flotilla_proto::inference::{model_infer_request::InferInputTensor, ModelInferRequest};
use serde::Deserialize;

#[derive(Deserialize)]
struct MixFile {
    kinds: Vec<KindSpec>,
}

#[derive(Deserialize)]
struct KindSpec {
    name: String,
    weight: f64,
    http: Option<HttpSpec>,
    grpc: Option<GrpcSpec>,
}

#[derive(Deserialize)]
struct HttpSpec {
    path: String,
    method: Option<String>,
    json: Option<serde_json::Value>,
    text: Option<String>,
    content_type: Option<String>,
}

#[derive(Deserialize)]
struct GrpcSpec {
    model_name: String,
    #[serde(default)]
    model_version: String,
    inputs: Vec<InputSpec>,
}

#[derive(Deserialize)]
struct InputSpec {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    data: Vec<serde_json::Value>,
}

/// One prepared request.
pub enum Request {
    Http { method: hyper::Method, path: String, body: Bytes, content_type: Option<String> },
    Grpc(Box<ModelInferRequest>),
}

pub struct Kind {
    pub name: String,
    pub request: Request,
}

/// The kinds and their cumulative weights, for drawing one at random.
pub struct Mix {
    pub kinds: Vec<Kind>,
    cumulative: Vec<f64>,
}

impl Mix {
    pub fn load(path: &std::path::Path) -> Result<Mix> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: MixFile = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Mix::from_specs(file.kinds)
    }

    fn from_specs(specs: Vec<KindSpec>) -> Result<Mix> {
        if specs.is_empty() {
            bail!("the mix has no kinds");
        }
        let (mut kinds, mut cumulative, mut total) = (Vec::new(), Vec::new(), 0.0);
        for spec in specs {
            if !(spec.weight.is_finite() && spec.weight > 0.0) {
                bail!("kind {}: weight must be a positive number", spec.name);
            }
            let request = match (spec.http, spec.grpc) {
                (Some(h), None) => http_request(h),
                (None, Some(g)) => grpc_request(g).with_context(|| format!("kind {}", spec.name))?,
                _ => bail!("kind {}: give exactly one of `http` and `grpc`", spec.name),
            };
            total += spec.weight;
            cumulative.push(total);
            kinds.push(Kind { name: spec.name, request });
        }
        for c in &mut cumulative {
            *c /= total;
        }
        Ok(Mix { kinds, cumulative })
    }

    /// The kind for a uniform draw `u` in [0, 1).
    pub fn pick(&self, u: f64) -> usize {
        self.cumulative.partition_point(|c| *c <= u).min(self.kinds.len() - 1)
    }

    pub fn needs(&self) -> (bool, bool) {
        let http = self.kinds.iter().any(|k| matches!(k.request, Request::Http { .. }));
        let grpc = self.kinds.iter().any(|k| matches!(k.request, Request::Grpc(_)));
        (http, grpc)
    }
}

fn http_request(h: HttpSpec) -> Request {
    let (body, content_type) = match (h.json, h.text) {
        (Some(v), _) => (Bytes::from(v.to_string()), Some("application/json".to_string())),
        (None, Some(t)) => (Bytes::from(t), h.content_type),
        (None, None) => (Bytes::new(), None),
    };
    let method = match h.method.as_deref() {
        Some(m) => hyper::Method::from_bytes(m.as_bytes()).unwrap_or(hyper::Method::POST),
        None if body.is_empty() => hyper::Method::GET,
        None => hyper::Method::POST,
    };
    Request::Http { method, path: h.path, body, content_type }
}

fn grpc_request(g: GrpcSpec) -> Result<Request> {
    let mut inputs = Vec::new();
    let mut raw = Vec::new();
    for input in g.inputs {
        raw.push(Bytes::from(encode(&input).with_context(|| format!("input {}", input.name))?));
        inputs.push(InferInputTensor {
            name: input.name,
            datatype: input.datatype,
            shape: input.shape,
            ..Default::default()
        });
    }
    Ok(Request::Grpc(Box::new(ModelInferRequest {
        model_name: g.model_name,
        model_version: g.model_version,
        inputs,
        raw_input_contents: raw,
        ..Default::default()
    })))
}

/// The input's data as tritonclient puts it in `raw_input_contents`.
fn encode(input: &InputSpec) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for v in &input.data {
        let num = || v.as_f64().ok_or_else(|| anyhow!("{v} is not a number"));
        let int = || v.as_i64().ok_or_else(|| anyhow!("{v} is not an integer"));
        match input.datatype.as_str() {
            "BOOL" => out.push(u8::from(v.as_bool().ok_or_else(|| anyhow!("{v} is not a boolean"))?)),
            "INT8" => out.extend((int()? as i8).to_le_bytes()),
            "UINT8" => out.extend((int()? as u8).to_le_bytes()),
            "INT16" => out.extend((int()? as i16).to_le_bytes()),
            "INT32" => out.extend((int()? as i32).to_le_bytes()),
            "INT64" => out.extend(int()?.to_le_bytes()),
            "FP32" => out.extend((num()? as f32).to_le_bytes()),
            "FP64" => out.extend(num()?.to_le_bytes()),
            "BYTES" => {
                let s = v.as_str().ok_or_else(|| anyhow!("{v} is not a string"))?;
                out.extend((s.len() as u32).to_le_bytes());
                out.extend(s.as_bytes());
            }
            other => bail!("datatype {other} is not supported here"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix(json: serde_json::Value) -> Result<Mix> {
        let file: MixFile = serde_json::from_value(json)?;
        Mix::from_specs(file.kinds)
    }

    #[test]
    fn draws_follow_the_weights() -> Result<()> {
        let m = mix(serde_json::json!({"kinds": [
            {"name": "a", "weight": 3, "http": {"path": "/a"}},
            {"name": "b", "weight": 1, "http": {"path": "/b", "text": "x"}}]}))?;
        assert_eq!(m.pick(0.0), 0);
        assert_eq!(m.pick(0.74), 0);
        assert_eq!(m.pick(0.75), 1);
        assert_eq!(m.pick(0.999), 1);
        assert!(matches!(&m.kinds[0].request, Request::Http { method, .. } if method == hyper::Method::GET));
        assert!(matches!(&m.kinds[1].request, Request::Http { method, .. } if method == hyper::Method::POST));
        Ok(())
    }

    #[test]
    fn grpc_inputs_are_encoded_as_tritonclient_does() -> Result<()> {
        let m = mix(serde_json::json!({"kinds": [{"name": "g", "weight": 1, "grpc": {"model_name": "m", "inputs": [
            {"name": "A", "datatype": "INT32", "shape": [2], "data": [1, -1]},
            {"name": "S", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}}]}))?;
        let Request::Grpc(r) = &m.kinds[0].request else { bail!("not gRPC") };
        assert_eq!(&r.raw_input_contents[0][..], &[1, 0, 0, 0, 255, 255, 255, 255]);
        assert_eq!(&r.raw_input_contents[1][..], &[2, 0, 0, 0, b'h', b'i']);
        Ok(())
    }

    #[test]
    fn bad_mixes_are_refused() {
        assert!(mix(serde_json::json!({"kinds": []})).is_err());
        assert!(mix(serde_json::json!({"kinds": [{"name": "z", "weight": 0, "http": {"path": "/"}}]})).is_err());
        assert!(mix(serde_json::json!({"kinds": [{"name": "n", "weight": 1}]})).is_err());
        let wrong = serde_json::json!({"kinds": [{"name": "w", "weight": 1, "grpc": {"model_name": "m", "inputs": [
            {"name": "A", "datatype": "INT32", "shape": [1], "data": ["x"]}]}}]});
        assert!(mix(wrong).is_err());
    }
}
