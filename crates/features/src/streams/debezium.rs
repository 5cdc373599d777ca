//! Debezium change events, as Debezium's JSON converter writes them to Kafka or NATS: the
//! envelope `{before, after, op, ts_ms, source}`, either bare (`schemas.enable=false`) or inside
//! `{"schema": ..., "payload": ...}`. `c`, `u` and `r` (snapshot read) write `after`, `d`
//! deletes the entity named by `before`, `t` truncates the view; `m` (a logical-decoding
//! message) is skipped. Event time is the source's commit time (`source.ts_us`, else
//! `source.ts_ms`, else the envelope's `ts_ms`).
//!
//! Values follow the schema when the wrapper carries one (`io.debezium.time.*` timestamps and
//! dates, Connect `Decimal` and Debezium's `VariableScaleDecimal`, base64 `bytes`). Without
//! it, Debezium's defaults are assumed: bytes are base64, and a number for a timestamp feature
//! is read by magnitude as epoch seconds, milliseconds or microseconds.

use crate::definitions::FeatureView;
use crate::record::{encode_key, EntityKey, Record};
use crate::store::Change;
use crate::value::{shorten, Value, ValueType};
use base64::Engine;
use serde_json::{Map, Value as Json};

/// What one Debezium event asks of the online store.
pub(crate) enum Event {
    Change(Change),
    Truncate,
    /// Nothing to write (a logical-decoding message).
    Skip,
}

/// The envelope inside `object`, if `object` is a Debezium change event (bare or wrapped).
pub(crate) fn envelope(object: &Map<String, Json>) -> Option<(&Map<String, Json>, Option<&Json>)> {
    let looks = |o: &Map<String, Json>| {
        o.get("op").is_some_and(Json::is_string) && (o.contains_key("after") || o.contains_key("before"))
    };
    if let (Some(Json::Object(payload)), Some(schema)) = (object.get("payload"), object.get("schema")) {
        if looks(payload) {
            return Some((payload, Some(schema)));
        }
    }
    looks(object).then_some((object, None))
}

/// Reads one envelope into a change of `view`.
pub(crate) fn event(view: &FeatureView, payload: &Map<String, Json>, schema: Option<&Json>) -> Result<Event, String> {
    let op = payload.get("op").and_then(Json::as_str).unwrap_or_default();
    let ts = commit_time(payload)?;
    let row = |side: &str| -> Result<&Map<String, Json>, String> {
        match payload.get(side) {
            Some(Json::Object(o)) => Ok(o),
            _ => Err(format!("Debezium '{op}' event without '{side}'")),
        }
    };
    let fields = |side: &str| schema.map(|s| Fields { schema: side_schema(s, side) });
    match op {
        "c" | "u" | "r" => {
            let after = row("after")?;
            let f = fields("after");
            let key = key_of(view, after, f.as_ref())?;
            let mut values = Vec::with_capacity(view.features.len());
            for feature in &view.features {
                let v = value(after, &feature.name, feature.dtype, f.as_ref())
                    .map_err(|m| format!("feature '{}': {m}", feature.name))?;
                values.push(v);
            }
            Ok(Event::Change((key, Some(Record::new(ts, 0, values)))))
        }
        "d" => {
            let before = row("before").map_err(|e| {
                format!("{e}: the source table needs a primary key or REPLICA IDENTITY so deletes name the row")
            })?;
            Ok(Event::Change((key_of(view, before, fields("before").as_ref())?, None)))
        }
        "t" => Ok(Event::Truncate),
        "m" => Ok(Event::Skip),
        other => Err(format!("unknown Debezium op '{}' (expected c, u, d, r, t or m)", shorten(other, 20))),
    }
}

/// The commit time in µs: `source.ts_us`, `source.ts_ms`, or the envelope's `ts_ms`.
fn commit_time(payload: &Map<String, Json>) -> Result<i64, String> {
    let source = payload.get("source").and_then(Json::as_object);
    let int = |o: Option<&Map<String, Json>>, k: &str| o.and_then(|o| o.get(k)).and_then(Json::as_i64);
    if let Some(us) = int(source, "ts_us") {
        return Ok(us);
    }
    if let Some(ms) = int(source, "ts_ms").or_else(|| int(Some(payload), "ts_ms")) {
        return Ok(ms * 1000);
    }
    Err("Debezium event without 'ts_ms' (neither in 'source' nor in the envelope)".into())
}

fn key_of(view: &FeatureView, row: &Map<String, Json>, fields: Option<&Fields>) -> Result<EntityKey, String> {
    let mut keys = Vec::with_capacity(view.join_keys.len());
    for (name, ty) in &view.join_keys {
        let v = value(row, name, *ty, fields)
            .map_err(|m| format!("join key '{name}': {m}"))?
            .ok_or_else(|| format!("join key '{name}' is missing from the row"))?;
        keys.push(v);
    }
    encode_key(view, &keys.iter().map(Some).collect::<Vec<_>>()).map_err(|e| e.to_string())
}

/// The field schemas of the envelope's `before` or `after` struct.
struct Fields<'a> {
    schema: Option<&'a Json>,
}

fn side_schema<'a>(schema: &'a Json, side: &str) -> Option<&'a Json> {
    schema.get("fields")?.as_array()?.iter().find(|f| f.get("field").and_then(Json::as_str) == Some(side))
}

impl Fields<'_> {
    /// (semantic name, parameters) of column `name`.
    fn of(&self, name: &str) -> Option<(&str, Option<&Json>)> {
        let field = self
            .schema?
            .get("fields")?
            .as_array()?
            .iter()
            .find(|f| f.get("field").and_then(Json::as_str) == Some(name))?;
        let semantic = field
            .get("name")
            .and_then(Json::as_str)
            .unwrap_or_else(|| field.get("type").and_then(Json::as_str).unwrap_or(""));
        Some((semantic, field.get("parameters")))
    }
}

/// Column `name` of `row` as a value of type `ty`.
fn value(row: &Map<String, Json>, name: &str, ty: ValueType, fields: Option<&Fields>) -> Result<Option<Value>, String> {
    let v = row.get(name).unwrap_or(&Json::Null);
    if v.is_null() {
        return Ok(None);
    }
    let semantic = fields.and_then(|f| f.of(name));
    let us = |n: f64| Ok(Some(Value::UnixTimestamp(n.round() as i64)));
    match (semantic.map(|(s, _)| s), ty, v) {
        (Some("io.debezium.time.Timestamp"), ValueType::UnixTimestamp, Json::Number(n)) => us(num(n)? * 1e3),
        (Some("io.debezium.time.MicroTimestamp"), ValueType::UnixTimestamp, Json::Number(n)) => us(num(n)?),
        (Some("io.debezium.time.NanoTimestamp"), ValueType::UnixTimestamp, Json::Number(n)) => us(num(n)? / 1e3),
        (Some("io.debezium.time.Date"), ValueType::UnixTimestamp, Json::Number(n)) => us(num(n)? * 86_400e6),
        (Some("org.apache.kafka.connect.data.Decimal"), _, Json::String(s)) => {
            let scale = semantic.and_then(|(_, p)| p?.get("scale")?.as_str()?.parse::<i32>().ok()).unwrap_or(0);
            number(decimal(s, scale)?, ty)
        }
        (Some("io.debezium.data.VariableScaleDecimal"), _, Json::Object(o)) => {
            let scale = o.get("scale").and_then(Json::as_i64).unwrap_or(0) as i32;
            let digits = o.get("value").and_then(Json::as_str).ok_or("VariableScaleDecimal without 'value'")?;
            number(decimal(digits, scale)?, ty)
        }
        (_, ValueType::Bytes, Json::String(s)) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(|b| Some(Value::Bytes(b.into())))
            .map_err(|e| format!("bytes are base64 in Debezium events: {e}")),
        // Without a schema: epoch seconds, milliseconds or microseconds, by magnitude.
        (None, ValueType::UnixTimestamp, Json::Number(n)) => {
            let x = num(n)?;
            us(if x.abs() >= 1e14 {
                x
            } else if x.abs() >= 1e11 {
                x * 1e3
            } else {
                x * 1e6
            })
        }
        _ => ty.from_json(v),
    }
}

fn num(n: &serde_json::Number) -> Result<f64, String> {
    n.as_f64().ok_or_else(|| format!("{n} is not a number"))
}

fn number(x: f64, ty: ValueType) -> Result<Option<Value>, String> {
    match ty {
        ValueType::Float32 => Ok(Some(Value::Float32(x as f32))),
        ValueType::Float64 => Ok(Some(Value::Float64(x))),
        ValueType::Int64 if x.fract() == 0.0 && x.abs() < 9.2e18 => Ok(Some(Value::Int64(x as i64))),
        ValueType::Int32 if x.fract() == 0.0 && x.abs() <= f64::from(i32::MAX) => Ok(Some(Value::Int32(x as i32))),
        _ => Err(format!("decimal {x} does not fit {ty}")),
    }
}

/// A Connect `Decimal`: the unscaled value as base64 big-endian two's complement.
fn decimal(base64_digits: &str, scale: i32) -> Result<f64, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(base64_digits)
        .map_err(|e| format!("decimal is not base64: {e}"))?;
    if bytes.is_empty() || bytes.len() > 16 {
        return Err(format!("decimal of {} bytes (1 to 16 supported)", bytes.len()));
    }
    let mut unscaled: i128 = if bytes[0] & 0x80 != 0 { -1 } else { 0 };
    for b in bytes {
        unscaled = (unscaled << 8) | i128::from(b);
    }
    Ok(unscaled as f64 / 10f64.powi(scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_decode_twos_complement_with_scale() {
        // 12345 with scale 2 = 123.45; -1 = 0xff.
        assert_eq!(decimal("MDk=", 2).unwrap(), 123.45);
        assert_eq!(decimal("/w==", 0).unwrap(), -1.0);
        assert!(decimal("", 0).is_err());
        assert!(decimal("not base64!", 0).is_err());
    }

    #[test]
    fn envelopes_are_found_bare_or_wrapped() {
        let bare = serde_json::json!({"op": "c", "before": null, "after": {"id": 1}, "ts_ms": 1});
        let Json::Object(o) = &bare else { unreachable!() };
        assert!(envelope(o).is_some_and(|(_, schema)| schema.is_none()));
        let wrapped = serde_json::json!({"schema": {}, "payload": bare});
        let Json::Object(o) = &wrapped else { unreachable!() };
        assert!(envelope(o).is_some_and(|(_, schema)| schema.is_some()));
        let row = serde_json::json!({"card_id": 1, "op": "refund"});
        let Json::Object(o) = &row else { unreachable!() };
        assert!(envelope(o).is_none(), "a plain row with an 'op' column is not an envelope");
    }
}
