//! Feature values and their types (Feast's scalar value types and their lists, Feast's
//! `Array(...)`), the compact binary encoding the online stores keep, and conversion from and
//! to JSON.

use crate::error::{FeatureError, Result};
use std::fmt;
use std::sync::Arc;

/// The type of a feature or entity key, as declared in the feature repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    Int32,
    Int64,
    Float32,
    Float64,
    String,
    Bool,
    Bytes,
    /// A point in time, kept as microseconds since the Unix epoch (UTC).
    UnixTimestamp,
    /// Lists of the scalars above (`int64[]`, Feast's `Array(Int64)`): items are never null.
    Int32List,
    Int64List,
    Float32List,
    Float64List,
    StringList,
    BoolList,
    BytesList,
    UnixTimestampList,
}

/// One feature value. Missing values are `None` where a value is optional.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int32(i32),
    Int64(i64),
    Float32(f32),
    Float64(f64),
    String(Arc<str>),
    Bool(bool),
    Bytes(Arc<[u8]>),
    /// Microseconds since the Unix epoch.
    UnixTimestamp(i64),
    /// A list of values of one scalar type (the first field), none of them a list.
    List(ValueType, Arc<[Value]>),
}

// === impl ValueType ===

impl ValueType {
    /// Parses a declared type: our lower-case names or Feast's (`Float32`, `Int64`, `UnixTimestamp`, ...);
    /// lists as `int64[]`, Feast's `Array(Int64)` or its value type name `INT64_LIST`.
    pub fn parse(s: &str) -> Option<Self> {
        let lower = s.trim().to_ascii_lowercase().replace('_', "");
        let inner = lower
            .strip_suffix("[]")
            .or_else(|| lower.strip_prefix("array(").and_then(|r| r.strip_suffix(')')))
            .or_else(|| lower.strip_prefix("list<").and_then(|r| r.strip_suffix('>')))
            .or_else(|| lower.strip_suffix("list"));
        if let Some(inner) = inner {
            return Self::parse(inner).filter(|t| !t.is_list()).and_then(Self::list);
        }
        let t = match lower.as_str() {
            "int32" => Self::Int32,
            "int64" => Self::Int64,
            "float32" | "float" => Self::Float32,
            "float64" | "double" => Self::Float64,
            "string" => Self::String,
            "bool" => Self::Bool,
            "bytes" => Self::Bytes,
            "unixtimestamp" | "timestamp" => Self::UnixTimestamp,
            _ => return None,
        };
        Some(t)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Int32 => "int32",
            Self::Int64 => "int64",
            Self::Float32 => "float32",
            Self::Float64 => "float64",
            Self::String => "string",
            Self::Bool => "bool",
            Self::Bytes => "bytes",
            Self::UnixTimestamp => "unix_timestamp",
            Self::Int32List => "int32[]",
            Self::Int64List => "int64[]",
            Self::Float32List => "float32[]",
            Self::Float64List => "float64[]",
            Self::StringList => "string[]",
            Self::BoolList => "bool[]",
            Self::BytesList => "bytes[]",
            Self::UnixTimestampList => "unix_timestamp[]",
        }
    }

    /// The item type of a list type; `None` for a scalar.
    pub fn element(self) -> Option<Self> {
        Some(match self {
            Self::Int32List => Self::Int32,
            Self::Int64List => Self::Int64,
            Self::Float32List => Self::Float32,
            Self::Float64List => Self::Float64,
            Self::StringList => Self::String,
            Self::BoolList => Self::Bool,
            Self::BytesList => Self::Bytes,
            Self::UnixTimestampList => Self::UnixTimestamp,
            _ => return None,
        })
    }

    /// The list type of a scalar type; `None` for a list (lists do not nest).
    pub fn list(self) -> Option<Self> {
        Some(match self {
            Self::Int32 => Self::Int32List,
            Self::Int64 => Self::Int64List,
            Self::Float32 => Self::Float32List,
            Self::Float64 => Self::Float64List,
            Self::String => Self::StringList,
            Self::Bool => Self::BoolList,
            Self::Bytes => Self::BytesList,
            Self::UnixTimestamp => Self::UnixTimestampList,
            _ => return None,
        })
    }

    pub fn is_list(self) -> bool {
        self.element().is_some()
    }

    /// Whether values of this type can be fed to a model as numbers.
    pub fn is_numeric(self) -> bool {
        matches!(self, Self::Int32 | Self::Int64 | Self::Float32 | Self::Float64 | Self::Bool | Self::UnixTimestamp)
    }

    /// Whether this type may be an entity join key.
    pub fn is_key(self) -> bool {
        matches!(self, Self::Int32 | Self::Int64 | Self::String | Self::Bytes)
    }

    /// Reads a JSON value as this type. `null` is `Ok(None)`. Numbers are accepted for
    /// floats and, when integral and in range, for integers; timestamps take RFC 3339
    /// strings or epoch seconds.
    pub fn from_json(self, v: &serde_json::Value) -> Result<Option<Value>, String> {
        use serde_json::Value as J;
        if v.is_null() {
            return Ok(None);
        }
        let bad = || format!("expected {}, got {}", self.as_str(), short_json(v));
        if let Some(item) = self.element() {
            // A scalar is a list of one (a stream row that appends one edge).
            let J::Array(items) = v else {
                let one = item.from_json(v).map_err(|_| bad())?;
                return Ok(one.map(|x| Value::List(item, vec![x].into())));
            };
            let mut out = Vec::with_capacity(items.len());
            for (i, x) in items.iter().enumerate() {
                match item.from_json(x) {
                    Ok(Some(x)) => out.push(x),
                    Ok(None) => {
                        return Err(format!("{}: item {i} is null (list items cannot be missing)", self.as_str()))
                    }
                    Err(e) => return Err(format!("{}: item {i}: {e}", self.as_str())),
                }
            }
            return Ok(Some(Value::List(item, out.into())));
        }
        let out = match (self, v) {
            (Self::Int64, J::Number(n)) => Value::Int64(n.as_i64().ok_or_else(bad)?),
            (Self::Int32, J::Number(n)) => {
                Value::Int32(n.as_i64().and_then(|i| i32::try_from(i).ok()).ok_or_else(bad)?)
            }
            (Self::Float32, J::Number(n)) => Value::Float32(n.as_f64().ok_or_else(bad)? as f32),
            (Self::Float64, J::Number(n)) => Value::Float64(n.as_f64().ok_or_else(bad)?),
            // NaN and infinities arrive as strings from clients that cannot write them as numbers.
            (Self::Float32 | Self::Float64, J::String(s)) => {
                let f = match s.as_str() {
                    "NaN" | "nan" => f64::NAN,
                    "Infinity" | "inf" => f64::INFINITY,
                    "-Infinity" | "-inf" => f64::NEG_INFINITY,
                    _ => return Err(bad()),
                };
                if self == Self::Float32 {
                    Value::Float32(f as f32)
                } else {
                    Value::Float64(f)
                }
            }
            (Self::String, J::String(s)) => Value::String(s.as_str().into()),
            (Self::Bool, J::Bool(b)) => Value::Bool(*b),
            (Self::Bytes, J::String(s)) => Value::Bytes(s.as_bytes().into()),
            (Self::UnixTimestamp, J::String(s)) => Value::UnixTimestamp(parse_timestamp(s)?),
            (Self::UnixTimestamp, J::Number(n)) => {
                let secs = n.as_f64().ok_or_else(bad)?;
                Value::UnixTimestamp((secs * 1e6).round() as i64)
            }
            _ => return Err(bad()),
        };
        Ok(Some(out))
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Value ===

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Self::Int32(_) => ValueType::Int32,
            Self::Int64(_) => ValueType::Int64,
            Self::Float32(_) => ValueType::Float32,
            Self::Float64(_) => ValueType::Float64,
            Self::String(_) => ValueType::String,
            Self::Bool(_) => ValueType::Bool,
            Self::Bytes(_) => ValueType::Bytes,
            Self::UnixTimestamp(_) => ValueType::UnixTimestamp,
            Self::List(item, _) => item.list().unwrap_or(*item),
        }
    }

    /// The items of a list value (`None` for a scalar).
    pub fn items(&self) -> Option<&[Value]> {
        match self {
            Self::List(_, items) => Some(items),
            _ => None,
        }
    }

    /// The value as a number for a model input (`None` for strings and bytes).
    /// Timestamps become seconds since the epoch.
    pub fn as_f64(&self) -> Option<f64> {
        Some(match self {
            Self::Int32(v) => f64::from(*v),
            Self::Int64(v) => *v as f64,
            Self::Float32(v) => f64::from(*v),
            Self::Float64(v) => *v,
            Self::Bool(v) => f64::from(u8::from(*v)),
            Self::UnixTimestamp(us) => *us as f64 / 1e6,
            Self::String(_) | Self::Bytes(_) | Self::List(..) => return None,
        })
    }

    /// JSON as Feast's feature server writes it (NaN and infinities as null, which JSON lacks).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Self::Int32(v) => J::from(*v),
            Self::Int64(v) => J::from(*v),
            Self::Float32(v) => serde_json::Number::from_f64(f64::from(*v)).map(J::Number).unwrap_or(J::Null),
            Self::Float64(v) => serde_json::Number::from_f64(*v).map(J::Number).unwrap_or(J::Null),
            Self::String(s) => J::String(s.to_string()),
            Self::Bool(b) => J::Bool(*b),
            Self::Bytes(b) => J::String(String::from_utf8_lossy(b).into_owned()),
            Self::UnixTimestamp(us) => J::String(format_timestamp(*us)),
            // Feast's feature server writes a list as a plain JSON array of its items.
            Self::List(_, items) => J::Array(items.iter().map(Value::to_json).collect()),
        }
    }

    /// Appends the tagged binary form of `value` (or of a missing value) to `out`.
    pub fn encode(value: Option<&Value>, out: &mut Vec<u8>) {
        let Some(value) = value else {
            out.push(0);
            return;
        };
        match value {
            Self::Int32(v) => {
                out.push(1);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Self::Int64(v) => {
                out.push(2);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Self::Float32(v) => {
                out.push(3);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Self::Float64(v) => {
                out.push(4);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Self::String(s) => {
                out.push(5);
                put_bytes(s.as_bytes(), out);
            }
            Self::Bool(b) => {
                out.push(6);
                out.push(u8::from(*b));
            }
            Self::Bytes(b) => {
                out.push(7);
                put_bytes(b, out);
            }
            Self::UnixTimestamp(v) => {
                out.push(8);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Self::List(item, items) => {
                out.push(9);
                out.push(scalar_tag(*item));
                out.extend_from_slice(&(items.len() as u32).to_le_bytes());
                for v in items.iter() {
                    Value::encode(Some(v), out);
                }
            }
        }
    }

    /// Reads one value written by [`Value::encode`] from the front of `input`.
    pub fn decode(input: &mut &[u8]) -> Result<Option<Value>> {
        let tag = take(input, 1)?[0];
        let v = match tag {
            0 => return Ok(None),
            1 => Self::Int32(i32::from_le_bytes(array(take(input, 4)?))),
            2 => Self::Int64(i64::from_le_bytes(array(take(input, 8)?))),
            3 => Self::Float32(f32::from_le_bytes(array(take(input, 4)?))),
            4 => Self::Float64(f64::from_le_bytes(array(take(input, 8)?))),
            5 => {
                let b = take_bytes(input)?;
                Self::String(std::str::from_utf8(b).map_err(|_| corrupt("string is not UTF-8"))?.into())
            }
            6 => Self::Bool(take(input, 1)?[0] != 0),
            7 => Self::Bytes(take_bytes(input)?.into()),
            8 => Self::UnixTimestamp(i64::from_le_bytes(array(take(input, 8)?))),
            9 => {
                let item = tag_type(take(input, 1)?[0]).ok_or_else(|| corrupt("unknown list item tag"))?;
                let n = u32::from_le_bytes(array(take(input, 4)?)) as usize;
                // Every item takes at least two bytes: a count beyond that is corrupt, not a huge list.
                if n > input.len() / 2 {
                    return Err(corrupt("list longer than its record"));
                }
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    match Self::decode(input)? {
                        Some(v) if v.value_type() == item => items.push(v),
                        _ => return Err(corrupt("list item of another type")),
                    }
                }
                Self::List(item, items.into())
            }
            t => return Err(corrupt(&format!("unknown value tag {t}"))),
        };
        Ok(Some(v))
    }
}

/// The tag [`Value::encode`] writes before a scalar of type `ty` (0 for a list type, never written).
fn scalar_tag(ty: ValueType) -> u8 {
    match ty {
        ValueType::Int32 => 1,
        ValueType::Int64 => 2,
        ValueType::Float32 => 3,
        ValueType::Float64 => 4,
        ValueType::String => 5,
        ValueType::Bool => 6,
        ValueType::Bytes => 7,
        ValueType::UnixTimestamp => 8,
        _ => 0,
    }
}

fn tag_type(tag: u8) -> Option<ValueType> {
    Some(match tag {
        1 => ValueType::Int32,
        2 => ValueType::Int64,
        3 => ValueType::Float32,
        4 => ValueType::Float64,
        5 => ValueType::String,
        6 => ValueType::Bool,
        7 => ValueType::Bytes,
        8 => ValueType::UnixTimestamp,
        _ => return None,
    })
}

fn corrupt(what: &str) -> FeatureError {
    FeatureError::Store(format!("stored record is corrupt: {what}"))
}

pub(crate) fn put_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

pub(crate) fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if input.len() < n {
        return Err(corrupt("record ends early"));
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

pub(crate) fn take_bytes<'a>(input: &mut &'a [u8]) -> Result<&'a [u8]> {
    let n = u32::from_le_bytes(array(take(input, 4)?)) as usize;
    take(input, n)
}

pub(crate) fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

fn short_json(v: &serde_json::Value) -> String {
    shorten(&v.to_string(), 40)
}

/// `s` cut to at most `max` characters, with `…` where it was cut (for error messages).
pub(crate) fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Parses an RFC 3339 timestamp (`2026-11-01T12:00:00Z`, offsets, fractional seconds) or the
/// space-separated form pandas writes (`2026-11-01 12:00:00`, taken as UTC) into epoch µs.
pub fn parse_timestamp(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_micros());
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = chrono::DateTime::parse_from_str(s, fmt) {
            return Ok(t.timestamp_micros());
        }
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(t.and_utc().timestamp_micros());
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_micros()).unwrap_or(0));
    }
    Err(format!("'{s}' is not a timestamp (RFC 3339 such as 2026-11-01T12:00:00Z)"))
}

/// Formats epoch µs as RFC 3339 in UTC with a `Z`, as Feast does (`2026-11-01T12:00:00Z`).
pub fn format_timestamp(us: i64) -> String {
    match chrono::DateTime::from_timestamp_micros(us) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        None => us.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_value() -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            Just(None),
            any::<i32>().prop_map(|v| Some(Value::Int32(v))),
            any::<i64>().prop_map(|v| Some(Value::Int64(v))),
            any::<f32>().prop_filter("NaN != NaN", |f| !f.is_nan()).prop_map(|v| Some(Value::Float32(v))),
            any::<f64>().prop_filter("NaN != NaN", |f| !f.is_nan()).prop_map(|v| Some(Value::Float64(v))),
            ".*".prop_map(|s: String| Some(Value::String(s.into()))),
            any::<bool>().prop_map(|v| Some(Value::Bool(v))),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|v| Some(Value::Bytes(v.into()))),
            any::<i64>().prop_map(|v| Some(Value::UnixTimestamp(v))),
            proptest::collection::vec(any::<i64>(), 0..6)
                .prop_map(|v| Some(Value::List(ValueType::Int64, v.into_iter().map(Value::Int64).collect()))),
            proptest::collection::vec(".{0,5}", 0..4).prop_map(|v| Some(Value::List(
                ValueType::String,
                v.into_iter().map(|s: String| Value::String(s.into())).collect()
            ))),
        ]
    }

    proptest! {
        #[test]
        fn encoding_round_trips(values in proptest::collection::vec(any_value(), 0..10)) {
            let mut buf = Vec::new();
            for v in &values {
                Value::encode(v.as_ref(), &mut buf);
            }
            let mut input = buf.as_slice();
            for v in &values {
                prop_assert_eq!(&Value::decode(&mut input).unwrap(), v);
            }
            prop_assert!(input.is_empty());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut input = bytes.as_slice();
            while !input.is_empty() {
                if Value::decode(&mut input).is_err() {
                    break;
                }
            }
        }
    }

    #[test]
    fn json_conversions_check_types_and_ranges() {
        use serde_json::json;
        assert_eq!(ValueType::Int64.from_json(&json!(42)).unwrap(), Some(Value::Int64(42)));
        assert_eq!(ValueType::Int32.from_json(&json!(null)).unwrap(), None);
        assert!(ValueType::Int32.from_json(&json!(1u64 << 40)).unwrap_err().contains("expected int32"));
        assert!(ValueType::Int64.from_json(&json!(1.5)).is_err());
        assert!(ValueType::Float32.from_json(&json!("abc")).is_err());
        assert!(matches!(ValueType::Float32.from_json(&json!("NaN")).unwrap(), Some(Value::Float32(f)) if f.is_nan()));
        assert_eq!(ValueType::String.from_json(&json!(7)).unwrap_err(), "expected string, got 7");
        assert_eq!(
            ValueType::UnixTimestamp.from_json(&json!("2026-11-01T00:00:01Z")).unwrap(),
            Some(Value::UnixTimestamp(1_793_491_201_000_000))
        );
    }

    #[test]
    fn list_types_parse_in_our_and_feasts_spellings_and_read_json_arrays() {
        use serde_json::json;
        for s in ["int64[]", "Array(Int64)", "INT64_LIST", "list<int64>", "Int64List"] {
            assert_eq!(ValueType::parse(s), Some(ValueType::Int64List), "{s}");
        }
        assert_eq!(ValueType::parse("unix_timestamp[]"), Some(ValueType::UnixTimestampList));
        assert_eq!(ValueType::parse("Array(Float32)").map(ValueType::as_str), Some("float32[]"));
        assert_eq!(ValueType::parse("int64[][]"), None, "lists do not nest");
        assert_eq!(ValueType::parse("Array(Nothing)"), None);
        assert!(!ValueType::Int64List.is_key() && !ValueType::Int64List.is_numeric());
        let v = ValueType::Int64List.from_json(&json!([3, 1, 2])).unwrap().unwrap();
        assert_eq!(v.value_type(), ValueType::Int64List);
        assert_eq!(v.to_json(), json!([3, 1, 2]));
        assert_eq!(ValueType::StringList.from_json(&json!([])).unwrap().unwrap().to_json(), json!([]));
        assert_eq!(ValueType::Int64List.from_json(&json!(7)).unwrap().unwrap().to_json(), json!([7]), "a list of one");
        assert_eq!(ValueType::Int64List.from_json(&json!("x")).unwrap_err(), "expected int64[], got \"x\"");
        assert_eq!(
            ValueType::Int64List.from_json(&json!([1, null])).unwrap_err(),
            "int64[]: item 1 is null (list items cannot be missing)"
        );
        assert_eq!(
            ValueType::Int32List.from_json(&json!([1, "x"])).unwrap_err(),
            "int32[]: item 1: expected int32, got \"x\""
        );
        // A list count beyond the bytes that follow is corrupt, not an allocation of 4 GiB.
        let mut input: &[u8] = &[9, 2, 255, 255, 255, 255, 2];
        assert!(Value::decode(&mut input).is_err());
        let mut input: &[u8] = &[9, 2, 1, 0, 0, 0, 1, 0, 0, 0, 0];
        assert!(Value::decode(&mut input).unwrap_err().to_string().contains("another type"));
    }

    #[test]
    fn timestamps_parse_in_the_forms_clients_send() {
        let want = parse_timestamp("2026-11-01T12:00:00Z").unwrap();
        assert_eq!(parse_timestamp("2026-11-01 12:00:00").unwrap(), want);
        assert_eq!(parse_timestamp("2026-11-01T13:00:00+01:00").unwrap(), want);
        assert_eq!(parse_timestamp("2026-11-01 12:00:00.5+00:00").unwrap(), want + 500_000);
        assert_eq!(format_timestamp(want), "2026-11-01T12:00:00Z");
        assert!(parse_timestamp("yesterday").is_err());
    }
}
