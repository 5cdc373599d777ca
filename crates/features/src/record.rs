//! Entity keys and the record an online store keeps per (feature view, entity): the feature
//! values with the event and created timestamps that decide which write wins.

use crate::definitions::FeatureView;
use crate::error::{FeatureError, Result};
use crate::value::{array, put_bytes, take, take_bytes, Value, ValueType};

/// The encoded join-key values of one entity of a view (in the view's entity order).
pub type EntityKey = Vec<u8>;

/// Encodes join-key values; `None` if a value is missing or not of its key's type.
pub fn encode_key(view: &FeatureView, values: &[Option<&Value>]) -> Result<EntityKey> {
    let mut out = Vec::with_capacity(12 * values.len());
    for ((name, want), v) in view.join_keys.iter().zip(values) {
        match (want, v) {
            (ValueType::Int64, Some(Value::Int64(i))) => put_int(*i, &mut out),
            // Keys written as int32 and int64 denote the same entity.
            (ValueType::Int64 | ValueType::Int32, Some(Value::Int32(i))) => put_int(i64::from(*i), &mut out),
            (ValueType::Int32, Some(Value::Int64(i))) => put_int(*i, &mut out),
            (ValueType::String, Some(Value::String(s))) => {
                out.push(b's');
                put_bytes(s.as_bytes(), &mut out);
            }
            (ValueType::Bytes, Some(Value::Bytes(b))) => {
                out.push(b'b');
                put_bytes(b, &mut out);
            }
            (_, None) => return Err(FeatureError::invalid(format!("join key '{name}' is missing"))),
            (_, Some(v)) => {
                return Err(FeatureError::invalid(format!(
                    "join key '{name}' of feature view '{}' is {want}, got {}",
                    view.name,
                    v.value_type()
                )))
            }
        }
    }
    Ok(out)
}

pub(crate) fn put_int(i: i64, out: &mut Vec<u8>) {
    out.push(b'i');
    out.extend_from_slice(&i.to_be_bytes());
}

/// The join-key values an [`EntityKey`] holds (the inverse of [`encode_key`]).
pub fn decode_key(view: &FeatureView, key: &[u8]) -> Result<Vec<Value>> {
    let mut input = key;
    let mut out = Vec::with_capacity(view.join_keys.len());
    for (_, ty) in &view.join_keys {
        let tag = take(&mut input, 1)?[0];
        let v = match (tag, ty) {
            (b'i', ValueType::Int32) => {
                let i = i64::from_be_bytes(array(take(&mut input, 8)?));
                Value::Int32(i32::try_from(i).map_err(|_| FeatureError::Store("int32 key out of range".into()))?)
            }
            (b'i', _) => Value::Int64(i64::from_be_bytes(array(take(&mut input, 8)?))),
            (b's', _) => Value::String(
                std::str::from_utf8(take_bytes(&mut input)?)
                    .map_err(|_| FeatureError::Store("key is not UTF-8".into()))?
                    .into(),
            ),
            (b'b', _) => Value::Bytes(take_bytes(&mut input)?.into()),
            (t, _) => return Err(FeatureError::Store(format!("unknown key tag {t}"))),
        };
        out.push(v);
    }
    Ok(out)
}

/// One entity's row of one feature view.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Event time, µs since the epoch: the newest event wins.
    pub event_ts: i64,
    /// Created (ingestion) time, µs: breaks ties between equal event times.
    pub created_ts: i64,
    /// One value per feature of the view, in declaration order (`None` = missing).
    pub values: Vec<Option<Value>>,
}

const FORMAT: u8 = 1;

// === impl Record ===

impl Record {
    /// Whether this record may replace `current`: a newer event time, or the same event time
    /// and a created time at least as new. Replaying the same record is therefore harmless.
    pub fn supersedes(&self, current: &Record) -> bool {
        (self.event_ts, self.created_ts) >= (current.event_ts, current.created_ts)
    }

    /// Age check: the record is older than `ttl_us` at `now_us` (ttl 0 = never).
    pub fn expired(&self, ttl_us: i64, now_us: i64) -> bool {
        ttl_us > 0 && now_us.saturating_sub(self.event_ts) > ttl_us
    }

    /// Encodes with feature names, so a view that gains or reorders features still reads old records.
    pub fn encode(&self, view: &FeatureView) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + 16 * self.values.len());
        out.push(FORMAT);
        out.extend_from_slice(&self.event_ts.to_le_bytes());
        out.extend_from_slice(&self.created_ts.to_le_bytes());
        out.extend_from_slice(&(self.values.len() as u32).to_le_bytes());
        for (f, v) in view.features.iter().zip(&self.values) {
            put_bytes(f.name.as_bytes(), &mut out);
            Value::encode(v.as_ref(), &mut out);
        }
        out
    }

    /// Decodes into `view`'s current feature order; features the record lacks, or whose
    /// stored type no longer matches the declaration, are missing.
    pub fn decode(bytes: &[u8], view: &FeatureView) -> Result<Record> {
        let mut input = bytes;
        let format = take(&mut input, 1)?[0];
        if format != FORMAT {
            return Err(FeatureError::Store(format!("stored record has unknown format {format}")));
        }
        let event_ts = i64::from_le_bytes(array(take(&mut input, 8)?));
        let created_ts = i64::from_le_bytes(array(take(&mut input, 8)?));
        let n = u32::from_le_bytes(array(take(&mut input, 4)?)) as usize;
        let mut values = vec![None; view.features.len()];
        for _ in 0..n {
            let name = take_bytes(&mut input)?;
            let value = Value::decode(&mut input)?;
            let at = view.features.iter().position(|f| f.name.as_bytes() == name);
            if let (Some(at), Some(v)) = (at, value) {
                if v.value_type() == view.features[at].dtype {
                    values[at] = Some(v);
                }
            }
        }
        Ok(Record { event_ts, created_ts, values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::Registry;
    use std::path::{Path, PathBuf};

    pub(crate) fn registry() -> Registry {
        let text = r#"
            [[entity]]
            name = "card"
            join_key = "card_id"
            [[feature_view]]
            name = "v"
            entities = ["card"]
            features = [{ name = "a", dtype = "float32" }, { name = "b", dtype = "string" }]
        "#;
        Registry::from_sources(Path::new("."), &[(PathBuf::from("r.toml"), text.to_string())]).unwrap()
    }

    #[test]
    fn records_round_trip_and_survive_a_changed_view() {
        let reg = registry();
        let view = &reg.views[0];
        let r = Record { event_ts: 5, created_ts: 7, values: vec![Some(Value::Float32(1.5)), None] };
        let bytes = r.encode(view);
        assert_eq!(Record::decode(&bytes, view).unwrap(), r);
        let mut changed = view.clone();
        changed.features.reverse();
        changed.features[1].dtype = ValueType::Int64;
        let back = Record::decode(&bytes, &changed).unwrap();
        assert_eq!(back.values, vec![None, None], "b was never written; a changed type");
        for cut in 0..bytes.len() {
            assert!(Record::decode(&bytes[..cut], view).is_err());
        }
    }

    #[test]
    fn newest_event_wins_then_created() {
        let at = |e, c| Record { event_ts: e, created_ts: c, values: vec![] };
        assert!(at(2, 0).supersedes(&at(1, 9)));
        assert!(!at(1, 9).supersedes(&at(2, 0)));
        assert!(at(1, 2).supersedes(&at(1, 1)));
        assert!(!at(1, 1).supersedes(&at(1, 2)));
        assert!(at(1, 1).supersedes(&at(1, 1)), "a redelivered record is applied again, harmlessly");
        assert!(at(0, 0).expired(10, 11) && !at(0, 0).expired(10, 10) && !at(0, 0).expired(0, 1 << 60));
    }

    #[test]
    fn keys_check_types_and_unify_integer_widths() {
        let reg = registry();
        let view = &reg.views[0];
        let a = encode_key(view, &[Some(&Value::Int64(42))]).unwrap();
        assert_eq!(a, encode_key(view, &[Some(&Value::Int32(42))]).unwrap());
        let e = encode_key(view, &[Some(&Value::String("42".into()))]).unwrap_err().to_string();
        assert_eq!(e, "join key 'card_id' of feature view 'v' is int64, got string");
        assert!(encode_key(view, &[None]).is_err());
        assert_eq!(decode_key(view, &a).unwrap(), vec![Value::Int64(42)]);
        assert!(decode_key(view, &a[..5]).is_err());
    }
}
