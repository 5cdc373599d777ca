//! PostgreSQL column types and feature types: which column can feed which feature, and reading
//! a column's text form (as the snapshot copy and `pgoutput` send it, with the session's
//! `DateStyle=ISO`, `TimeZone=UTC` and `bytea_output=hex`) into a feature value.

use crate::value::{parse_timestamp, Value, ValueType};

const BOOL: u32 = 16;
const BYTEA: u32 = 17;
const NAME: u32 = 19;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const TEXT: u32 = 25;
const OID: u32 = 26;
const JSON: u32 = 114;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const BPCHAR: u32 = 1042;
const VARCHAR: u32 = 1043;
const DATE: u32 = 1082;
const TIMESTAMP: u32 = 1114;
const TIMESTAMPTZ: u32 = 1184;
const NUMERIC: u32 = 1700;
const UUID: u32 = 2950;
const JSONB: u32 = 3802;

/// The item type of a one-dimensional array type (`bigint[]` → `bigint`).
fn element_oid(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => BOOL,
        1001 => BYTEA,
        1003 => NAME,
        1005 => INT2,
        1007 => INT4,
        1009 => TEXT,
        1014 => BPCHAR,
        1015 => VARCHAR,
        1016 => INT8,
        1021 => FLOAT4,
        1022 => FLOAT8,
        1115 => TIMESTAMP,
        1182 => DATE,
        1185 => TIMESTAMPTZ,
        1231 => NUMERIC,
        2951 => UUID,
        _ => return None,
    })
}

/// The feature types a column of type `oid` can be read as. Every column can be read as a
/// string (its text form); an array column as a list of what its items can be read as.
pub fn readable_as(oid: u32) -> Vec<ValueType> {
    match element_oid(oid) {
        Some(item) => scalar_readable_as(item).iter().filter_map(|t| t.list()).chain([ValueType::String]).collect(),
        None => scalar_readable_as(oid).to_vec(),
    }
}

fn scalar_readable_as(oid: u32) -> &'static [ValueType] {
    use ValueType::*;
    match oid {
        BOOL => &[Bool, String],
        INT2 | INT4 => &[Int32, Int64, Float32, Float64, String],
        INT8 | OID => &[Int64, Float32, Float64, String],
        FLOAT4 | FLOAT8 | NUMERIC => &[Float32, Float64, String],
        BYTEA => &[Bytes, String],
        DATE | TIMESTAMP | TIMESTAMPTZ => &[UnixTimestamp, String],
        TEXT | VARCHAR | BPCHAR | NAME | UUID | JSON | JSONB => &[String, Bytes],
        _ => &[String],
    }
}

/// Whether a column of type `oid` can feed a feature of type `ty`; the error says what can.
pub fn check(column: &str, type_name: &str, oid: u32, feature: &str, ty: ValueType) -> Result<(), String> {
    let can = readable_as(oid);
    if can.contains(&ty) {
        return Ok(());
    }
    let names: Vec<&str> = can.iter().map(|t| t.as_str()).collect();
    Err(format!(
        "column '{column}' is {type_name}, which cannot be read as {ty} for '{feature}' (it can be read as: {}); \
         change the feature's dtype or cast the column",
        names.join(", ")
    ))
}

/// Reads a column's text form as a value of `ty` (checked with [`check`] beforehand).
pub fn parse(text: &str, oid: u32, ty: ValueType) -> Result<Value, String> {
    let bad = |e: &dyn std::fmt::Display| format!("'{}' is not {ty}: {e}", crate::value::shorten(text, 40));
    if let Some(item) = ty.element() {
        let item_oid = element_oid(oid).unwrap_or(TEXT);
        let mut items = Vec::new();
        for x in array_items(text).map_err(|e| bad(&e))? {
            let x = x.ok_or_else(|| bad(&"a NULL item (list items cannot be missing)"))?;
            items.push(parse(&x, item_oid, item)?);
        }
        return Ok(Value::List(item, items.into()));
    }
    Ok(match ty {
        ValueType::String => Value::String(text.into()),
        ValueType::Bool => match text {
            "t" | "true" => Value::Bool(true),
            "f" | "false" => Value::Bool(false),
            _ => return Err(bad(&"expected t or f")),
        },
        ValueType::Int32 => Value::Int32(text.parse().map_err(|e| bad(&e))?),
        ValueType::Int64 => Value::Int64(text.parse().map_err(|e| bad(&e))?),
        ValueType::Float32 => Value::Float32(float(text).map_err(|e| bad(&e))? as f32),
        ValueType::Float64 => Value::Float64(float(text).map_err(|e| bad(&e))?),
        ValueType::Bytes if oid == BYTEA => {
            let hex = text.strip_prefix("\\x").ok_or_else(|| bad(&"bytea is not in hex form"))?;
            Value::Bytes(unhex(hex).ok_or_else(|| bad(&"bad hex digits"))?.into())
        }
        ValueType::Bytes => Value::Bytes(text.as_bytes().into()),
        ValueType::UnixTimestamp => Value::UnixTimestamp(parse_timestamp(text).map_err(|e| bad(&e))?),
        _ => return Err(bad(&"not a list type")),
    })
}

/// The items of a one-dimensional array's text form (`{1,2}`, `{"a b",NULL}`, `[0:1]={1,2}`);
/// `None` for a NULL item.
fn array_items(text: &str) -> Result<Vec<Option<String>>, &'static str> {
    let text = match text.split_once("={") {
        Some((bounds, rest)) if bounds.starts_with('[') => &text[bounds.len() + 1..][..rest.len() + 1],
        _ => text,
    };
    let inner = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')).ok_or("an array is written {a,b}")?;
    let mut items = Vec::new();
    if inner.trim().is_empty() {
        return Ok(items);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => item.push(chars.next().ok_or("an unfinished escape")?),
                    Some('"') => break,
                    Some(c) => item.push(c),
                    None => return Err("an unclosed quote"),
                }
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '{' {
                    return Err("only one-dimensional arrays can be read as lists");
                }
                item.push(c);
                chars.next();
            }
            item = item.trim().to_string();
        }
        let null = !quoted && item.eq_ignore_ascii_case("NULL");
        items.push(if null { None } else { Some(item) });
        match chars.next() {
            Some(',') => continue,
            None => return Ok(items),
            Some(_) => return Err("text after a quoted item"),
        }
    }
}

fn float(text: &str) -> Result<f64, std::num::ParseFloatError> {
    match text {
        "NaN" => Ok(f64::NAN),
        "Infinity" => Ok(f64::INFINITY),
        "-Infinity" => Ok(f64::NEG_INFINITY),
        _ => text.parse(),
    }
}

fn unhex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_read_as_feature_values() {
        assert_eq!(parse("t", BOOL, ValueType::Bool).unwrap(), Value::Bool(true));
        assert_eq!(parse("-7", INT4, ValueType::Int64).unwrap(), Value::Int64(-7));
        assert_eq!(parse("12.50", NUMERIC, ValueType::Float64).unwrap(), Value::Float64(12.5));
        assert!(matches!(parse("NaN", FLOAT8, ValueType::Float32).unwrap(), Value::Float32(f) if f.is_nan()));
        assert_eq!(parse("\\x00ff", BYTEA, ValueType::Bytes).unwrap(), Value::Bytes(vec![0, 255].into()));
        assert_eq!(
            parse("2026-11-01 12:00:00.5+00", TIMESTAMPTZ, ValueType::UnixTimestamp).unwrap(),
            Value::UnixTimestamp(parse_timestamp("2026-11-01T12:00:00.5Z").unwrap())
        );
        assert_eq!(
            parse("2026-11-01", DATE, ValueType::UnixTimestamp).unwrap(),
            Value::UnixTimestamp(parse_timestamp("2026-11-01T00:00:00Z").unwrap())
        );
        assert!(parse("infinity", TIMESTAMPTZ, ValueType::UnixTimestamp).is_err());
        assert!(parse("99999999999", INT8, ValueType::Int32).is_err());
        assert!(parse("\\x0", BYTEA, ValueType::Bytes).is_err());
    }

    #[test]
    fn arrays_read_as_lists() {
        let ints = parse("{3,1,2}", 1016, ValueType::Int64List).unwrap();
        assert_eq!(ints, Value::List(ValueType::Int64, vec![Value::Int64(3), Value::Int64(1), Value::Int64(2)].into()));
        assert_eq!(parse("{}", 1016, ValueType::Int64List).unwrap(), Value::List(ValueType::Int64, Vec::new().into()));
        let s = parse(r#"{"a,b","c\"d",plain}"#, 1009, ValueType::StringList).unwrap();
        assert_eq!(s.to_json(), serde_json::json!(["a,b", "c\"d", "plain"]));
        assert_eq!(parse("[0:1]={5,6}", 1007, ValueType::Int32List).unwrap().to_json(), serde_json::json!([5, 6]));
        assert!(parse("{1,NULL}", 1016, ValueType::Int64List).unwrap_err().contains("NULL item"));
        assert!(parse("{{1,2},{3,4}}", 1016, ValueType::Int64List).unwrap_err().contains("one-dimensional"));
        assert!(parse("{1,x}", 1016, ValueType::Int64List).is_err());
        assert!(parse("1,2", 1016, ValueType::Int64List).is_err());
        assert!(check("ids", "bigint[]", 1016, "ids", ValueType::Int64List).is_ok());
        assert!(check("ids", "bigint[]", 1016, "ids", ValueType::Int64).unwrap_err().contains("int64[]"));
    }

    #[test]
    fn incompatible_columns_name_what_they_can_be() {
        let e = check("location", "point", 600, "location", ValueType::Float32).unwrap_err();
        assert!(e.contains("point") && e.contains("string"), "{e}");
        assert!(check("limit", "bigint", INT8, "limit", ValueType::Int32).unwrap_err().contains("int64"));
        assert!(check("limit", "integer", INT4, "limit", ValueType::Int64).is_ok());
        assert!(check("note", "interval", 1186, "note", ValueType::String).is_ok());
    }
}
