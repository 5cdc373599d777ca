//! KServe v2 JSON inference codec with the binary tensor extension: the JSON
//! header, then (optionally) raw tensor bytes in input order.

use bytes::Bytes;
use flotilla_core::protocol;
use flotilla_core::tensor::split_bytes_elements;
use flotilla_core::{DataType, Error, InferRequest, InferResponse, ParamValue, Parameters, Result, Tensor};
use half::{bf16, f16};
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::fmt;

// Unknown fields are ignored, not refused: the KServe SDK sends `model_name` and
// `model_version` in the body, and other clients add their own keys.
#[derive(Deserialize)]
struct RequestJson<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(borrow)]
    inputs: Vec<InputJson<'a>>,
    #[serde(default)]
    outputs: Option<Vec<OutputJson>>,
}

#[derive(Deserialize)]
struct InputJson<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Option<BTreeMap<String, serde_json::Value>>,
}

/// A decoded HTTP request plus which outputs the client wants as binary.
#[derive(Debug)]
pub struct DecodedRequest {
    pub request: InferRequest,
    /// Output name → binary; `default_binary` applies to the rest.
    pub binary_outputs: BTreeMap<String, bool>,
    pub default_binary: bool,
}

fn params(map: Option<BTreeMap<String, serde_json::Value>>, what: &str) -> Result<Parameters> {
    let mut out = Parameters::new();
    for (k, v) in map.unwrap_or_default() {
        let p = match v {
            serde_json::Value::Bool(b) => ParamValue::Bool(b),
            serde_json::Value::String(s) => ParamValue::String(s),
            serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => ParamValue::Int(i),
                (None, Some(u), _) => ParamValue::Uint(u),
                (None, None, Some(f)) => ParamValue::Double(f),
                _ => return Err(Error::invalid(format!("{what}: parameter '{k}' is not a usable number"))),
            },
            other => {
                return Err(Error::invalid(format!(
                    "{what}: parameter '{k}' must be a bool, number or string, got {other}"
                )))
            }
        };
        out.insert(k, p);
    }
    Ok(out)
}

/// Decodes a request: `header_len` is `Inference-Header-Content-Length` when present.
pub fn decode_request(model: &str, version: &str, body: Bytes, header_len: Option<usize>) -> Result<DecodedRequest> {
    let split = match header_len {
        Some(n) if n > body.len() => {
            return Err(Error::invalid(format!(
                "Inference-Header-Content-Length {n} is larger than the request body ({} bytes)",
                body.len()
            )))
        }
        Some(n) => n,
        None => body.len(),
    };
    let header = &body[..split];
    let rewritten: Option<Vec<u8>>;
    let parsed: RequestJson = match serde_json::from_slice(header) {
        Ok(p) => p,
        // Triton reads NaN/Infinity literals (tritonclient writes them for non-finite floats);
        // standard JSON has none, so only a body that fails to parse pays for the rewrite.
        Err(e) => {
            rewritten = quote_non_finite(header);
            match &rewritten {
                Some(r) => serde_json::from_slice(r),
                None => Err(e),
            }
            .map_err(|e| Error::invalid(format!("malformed inference request JSON: {e}")))?
        }
    };
    let mut binary = body.slice(split..);
    let parameters = params(parsed.parameters, "request")?;
    let default_binary = parameters.get("binary_data_output").and_then(ParamValue::as_bool).unwrap_or(false);

    let mut inputs = Vec::with_capacity(parsed.inputs.len());
    for i in parsed.inputs {
        let what = format!("input '{}'", i.name);
        let datatype = DataType::parse(&i.datatype).map_err(|e| Error::invalid(format!("{what}: {}", e.message)))?;
        let mut parameters = params(i.parameters, &what)?;
        let binary_size = parameters.remove("binary_data_size");
        let data = match (binary_size, i.data) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(format!("{what}: has both 'data' and binary_data_size; give one")))
            }
            (Some(size), None) => {
                let size = size.as_i64().and_then(|s| usize::try_from(s).ok()).ok_or_else(|| {
                    Error::invalid(format!("{what}: binary_data_size must be a non-negative integer"))
                })?;
                if size > binary.len() {
                    return Err(Error::invalid(format!(
                        "{what}: binary_data_size {size} exceeds the {} binary bytes left in the request",
                        binary.len()
                    )));
                }
                binary.split_to(size)
            }
            (None, Some(raw)) => Bytes::from(parse_data(raw, datatype, &what)?),
            (None, None) => {
                return Err(Error::invalid(format!("{what}: has no 'data' and no binary_data_size parameter")))
            }
        };
        let mut t = Tensor::new(i.name, datatype, i.shape, data);
        t.parameters = parameters;
        inputs.push(t);
    }
    if !binary.is_empty() {
        return Err(Error::invalid(format!(
            "{} binary bytes follow the JSON header but the inputs' binary_data_size account for fewer",
            binary.len()
        )));
    }
    let mut binary_outputs = BTreeMap::new();
    let mut outputs = Vec::new();
    for o in parsed.outputs.unwrap_or_default() {
        let parameters = params(o.parameters, &format!("output '{}'", o.name))?;
        let (output, binary) = protocol::requested_output(o.name, parameters)?;
        if let Some(b) = binary {
            binary_outputs.insert(output.name.clone(), b);
        }
        outputs.push(output);
    }
    let request = InferRequest {
        model: model.to_string(),
        version: version.to_string(),
        id: parsed.id.unwrap_or_default(),
        parameters,
        inputs,
        outputs,
    };
    Ok(DecodedRequest { request, binary_outputs, default_binary })
}

/// Parses JSON `data` (flat or nested arrays) straight into little-endian bytes.
pub fn parse_data(raw: &RawValue, datatype: DataType, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_str(raw.get());
    Flatten { datatype, out: &mut out }.deserialize(&mut de).map_err(|e| Error::invalid(format!("{what}: {e}")))?;
    Ok(out)
}

struct Flatten<'a> {
    datatype: DataType,
    out: &'a mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

macro_rules! push_int {
    ($self:ident, $v:expr, $E:ty) => {{
        let v = $v;
        let dt = $self.datatype;
        let bad = || <$E>::custom(format!("value {v} is out of range for {dt}"));
        match dt {
            DataType::U8 => $self.out.push(u8::try_from(v).map_err(|_| bad())?),
            DataType::I8 => $self.out.extend(i8::try_from(v).map_err(|_| bad())?.to_le_bytes()),
            DataType::U16 => $self.out.extend(u16::try_from(v).map_err(|_| bad())?.to_le_bytes()),
            DataType::I16 => $self.out.extend(i16::try_from(v).map_err(|_| bad())?.to_le_bytes()),
            DataType::U32 => $self.out.extend(u32::try_from(v).map_err(|_| bad())?.to_le_bytes()),
            DataType::I32 => $self.out.extend(i32::try_from(v).map_err(|_| bad())?.to_le_bytes()),
            DataType::U64 => $self.out.extend(u64::try_from(v).map_err(|_| bad())?.to_le_bytes()),
            DataType::I64 => $self.out.extend(i64::try_from(v).map_err(|_| bad())?.to_le_bytes()),
            _ => return $self.push_float(v as f64),
        }
        Ok(())
    }};
}

impl Flatten<'_> {
    fn push_float<E: serde::de::Error>(self, v: f64) -> std::result::Result<(), E> {
        match self.datatype {
            DataType::F32 => self.out.extend((v as f32).to_le_bytes()),
            DataType::F64 => self.out.extend(v.to_le_bytes()),
            DataType::F16 => self.out.extend(f16::from_f64(v).to_le_bytes()),
            DataType::BF16 => self.out.extend(bf16::from_f64(v).to_le_bytes()),
            dt => return Err(E::custom(format!("expected {dt} values, got the number {v}"))),
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} values (flat or nested arrays)", self.datatype)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let datatype = self.datatype;
        while seq.next_element_seed(Flatten { datatype, out: &mut *self.out })?.is_some() {}
        Ok(())
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> std::result::Result<(), E> {
        if self.datatype != DataType::Bool {
            return Err(E::custom(format!("expected {} values, got the boolean {v}", self.datatype)));
        }
        self.out.push(u8::from(v));
        Ok(())
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<(), E> {
        push_int!(self, v, E)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<(), E> {
        push_int!(self, v, E)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<(), E> {
        self.push_float(v)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<(), E> {
        if self.datatype.is_float() {
            // NaN/Infinity literals, quoted by `quote_non_finite`.
            match v {
                NAN => return self.push_float(f64::NAN),
                INF => return self.push_float(f64::INFINITY),
                NEG_INF => return self.push_float(f64::NEG_INFINITY),
                _ => {}
            }
        }
        if self.datatype != DataType::Bytes {
            return Err(E::custom(format!("expected {} values, got the string {v:?}", self.datatype)));
        }
        self.out.extend((v.len() as u32).to_le_bytes());
        self.out.extend_from_slice(v.as_bytes());
        Ok(())
    }
    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<(), E> {
        Err(E::custom(format!("expected {} values, got null", self.datatype)))
    }
}

const NAN: &str = "\u{0}NaN";
const INF: &str = "\u{0}Infinity";
const NEG_INF: &str = "\u{0}-Infinity";

/// Rewrites bare `NaN`, `Infinity` and `-Infinity` tokens (outside strings) into
/// marked strings the float decoder reads back; `None` when there are none.
fn quote_non_finite(json: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(json.len() + 64);
    let mut in_string = false;
    let mut escaped = false;
    let mut changed = false;
    let mut i = 0;
    while i < json.len() {
        let c = json[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
        } else if c == b'"' {
            in_string = true;
        } else {
            let rest = &json[i..];
            let token = [("NaN", NAN), ("Infinity", INF), ("-Infinity", NEG_INF)]
                .into_iter()
                .find(|(t, _)| rest.starts_with(t.as_bytes()));
            if let Some((t, marked)) = token {
                out.push(b'"');
                out.extend_from_slice(b"\\u0000");
                out.extend_from_slice(&marked.as_bytes()[1..]);
                out.push(b'"');
                i += t.len();
                changed = true;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    changed.then_some(out)
}

/// A number as JSON text; non-finite floats as Triton's literals.
trait WriteNumber {
    fn write(self, out: &mut Vec<u8>);
}

macro_rules! write_ints {
    ($($t:ty),*) => {$(
        impl WriteNumber for $t {
            fn write(self, out: &mut Vec<u8>) {
                let _ = serde_json::to_writer(&mut *out, &self);
            }
        }
    )*};
}
write_ints!(u8, i8, u16, i16, u32, i32, u64, i64);

macro_rules! write_floats {
    ($($t:ty),*) => {$(
        impl WriteNumber for $t {
            fn write(self, out: &mut Vec<u8>) {
                if self.is_finite() {
                    let _ = serde_json::to_writer(&mut *out, &self);
                } else if self.is_nan() {
                    out.extend_from_slice(b"NaN");
                } else if self > 0.0 {
                    out.extend_from_slice(b"Infinity");
                } else {
                    out.extend_from_slice(b"-Infinity");
                }
            }
        }
    )*};
}
write_floats!(f32, f64);

/// Writes a tensor's elements as a flat JSON array.
pub fn write_data(t: &Tensor, out: &mut Vec<u8>) -> Result<()> {
    out.push(b'[');
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !first {
            out.push(b',');
        }
        first = false;
    };
    // serde_json writes integers with itoa and floats with ryu (shortest text that reads back
    // bit-exactly; f32 as f32); non-finite floats as NaN/Infinity/-Infinity, as Triton writes them.
    macro_rules! each {
        ($t:ty, $n:expr) => {
            each!($t, $n, |v: $t| v)
        };
        ($t:ty, $n:expr, $conv:expr) => {
            for c in t.data.chunks_exact($n) {
                sep(out);
                let v = $conv(<$t>::from_le_bytes(c.try_into().unwrap_or([0; $n])));
                v.write(out);
            }
        };
    }
    match t.datatype {
        DataType::Bool => {
            for b in t.data.iter() {
                sep(out);
                out.extend_from_slice(if *b != 0 { b"true" } else { b"false" });
            }
        }
        DataType::U8 => each!(u8, 1),
        DataType::I8 => each!(i8, 1),
        DataType::U16 => each!(u16, 2),
        DataType::I16 => each!(i16, 2),
        DataType::U32 => each!(u32, 4),
        DataType::I32 => each!(i32, 4),
        DataType::U64 => each!(u64, 8),
        DataType::I64 => each!(i64, 8),
        DataType::F32 => each!(f32, 4),
        DataType::F64 => each!(f64, 8),
        DataType::F16 => each!(u16, 2, |v: u16| f16::from_bits(v).to_f32()),
        DataType::BF16 => each!(u16, 2, |v: u16| bf16::from_bits(v).to_f32()),
        DataType::Bytes => {
            for e in split_bytes_elements(&t.data, &t.name)? {
                sep(out);
                let s = String::from_utf8_lossy(e);
                let _ = serde_json::to_writer(&mut *out, &s);
            }
        }
    }
    out.push(b']');
    Ok(())
}

/// Encodes a response; outputs for which `binary(name)` is true go after the JSON header.
/// Returns the body and, when any output is binary, the JSON header length.
pub fn encode_response(resp: &InferResponse, binary: impl Fn(&str) -> bool) -> Result<(Vec<u8>, Option<usize>)> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"model_name\":");
    let _ = serde_json::to_writer(&mut out, &resp.model_name);
    out.extend_from_slice(b",\"model_version\":");
    let _ = serde_json::to_writer(&mut out, &resp.model_version);
    if !resp.id.is_empty() {
        out.extend_from_slice(b",\"id\":");
        let _ = serde_json::to_writer(&mut out, &resp.id);
    }
    out.extend_from_slice(b",\"outputs\":[");
    let mut tails: Vec<&Bytes> = Vec::new();
    for (i, t) in resp.outputs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"name\":");
        let _ = serde_json::to_writer(&mut out, &t.name);
        out.extend_from_slice(b",\"datatype\":\"");
        out.extend_from_slice(t.datatype.as_str().as_bytes());
        out.extend_from_slice(b"\",\"shape\":");
        let _ = serde_json::to_writer(&mut out, &t.shape);
        if binary(&t.name) {
            out.extend_from_slice(b",\"parameters\":{\"binary_data_size\":");
            out.extend_from_slice(t.data.len().to_string().as_bytes());
            out.extend_from_slice(b"}}");
            tails.push(&t.data);
        } else {
            out.extend_from_slice(b",\"data\":");
            write_data(t, &mut out)?;
            out.push(b'}');
        }
    }
    out.extend_from_slice(b"]}");
    if tails.is_empty() {
        return Ok((out, None));
    }
    let header_len = out.len();
    for t in tails {
        out.extend_from_slice(t);
    }
    Ok((out, Some(header_len)))
}

#[cfg(test)]
mod tests;
