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
    /// In an append view's stored record: the event time of each item, oldest first (the
    /// values are lists of as many items). Empty elsewhere.
    pub item_ts: Vec<i64>,
}

/// Records without item times.
const FORMAT: u8 = 1;
/// Records of append views: [`FORMAT`] followed by the items' event times.
const FORMAT_ITEMS: u8 = 2;

// === impl Record ===

impl Record {
    pub fn new(event_ts: i64, created_ts: i64, values: Vec<Option<Value>>) -> Self {
        Self { event_ts, created_ts, values, item_ts: Vec::new() }
    }

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
        let mut out = Vec::with_capacity(24 + 16 * self.values.len() + 8 * self.item_ts.len());
        out.push(if self.item_ts.is_empty() { FORMAT } else { FORMAT_ITEMS });
        out.extend_from_slice(&self.event_ts.to_le_bytes());
        out.extend_from_slice(&self.created_ts.to_le_bytes());
        out.extend_from_slice(&(self.values.len() as u32).to_le_bytes());
        for (f, v) in view.features.iter().zip(&self.values) {
            put_bytes(f.name.as_bytes(), &mut out);
            Value::encode(v.as_ref(), &mut out);
        }
        if !self.item_ts.is_empty() {
            out.extend_from_slice(&(self.item_ts.len() as u32).to_le_bytes());
            for t in &self.item_ts {
                out.extend_from_slice(&t.to_le_bytes());
            }
        }
        out
    }

    /// Decodes into `view`'s current feature order; features the record lacks, or whose
    /// stored type no longer matches the declaration, are missing.
    pub fn decode(bytes: &[u8], view: &FeatureView) -> Result<Record> {
        let mut input = bytes;
        let format = take(&mut input, 1)?[0];
        if format != FORMAT && format != FORMAT_ITEMS {
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
        let mut item_ts = Vec::new();
        if format == FORMAT_ITEMS {
            let n = u32::from_le_bytes(array(take(&mut input, 4)?)) as usize;
            if n > input.len() / 8 {
                return Err(FeatureError::Store("stored record is corrupt: more item times than bytes".into()));
            }
            item_ts =
                (0..n).map(|_| take(&mut input, 8).map(|b| i64::from_le_bytes(array(b)))).collect::<Result<_>>()?;
        }
        Ok(Record { event_ts, created_ts, values, item_ts })
    }

    /// How many items a row written to an append view carries: every feature holds a list
    /// (a scalar was read as a list of one) and all lists are equally long.
    pub fn items(&self, view: &FeatureView) -> Result<usize> {
        let mut n = None;
        for (f, v) in view.features.iter().zip(&self.values) {
            let len = match v.as_ref().and_then(Value::items) {
                Some(items) => items.len(),
                None => {
                    return Err(FeatureError::invalid(format!(
                        "feature view '{}' appends items: feature '{}' is missing (every item needs every feature)",
                        view.name, f.name
                    )))
                }
            };
            match n {
                Some(m) if m != len => {
                    return Err(FeatureError::invalid(format!(
                    "feature view '{}' appends items: feature '{}' has {len} items but the features before it have {m}",
                    view.name, f.name
                )))
                }
                _ => n = Some(len),
            }
        }
        Ok(n.unwrap_or(0))
    }
}

/// One item of an append view: its time, the created time of its row, and one value per feature.
struct Item {
    ts: i64,
    created: i64,
    /// The row (in the rows given) it came from; `None` for an item already stored.
    row: Option<usize>,
    values: Vec<Value>,
}

/// Appends the items of `rows` to `current` in an append view with room for `max` items:
/// items are kept in event-time order (rows that arrive late take their place in time), an item
/// equal to one already there (same time and values: a redelivered row) is not added twice, and
/// only the newest `max` stay. Returns the new record, or `None` when nothing changed, and how
/// many of `rows` added an item that stayed. Rows must have passed [`Record::items`].
pub fn append(view: &FeatureView, current: Option<&Record>, rows: &[Record], max: usize) -> (Option<Record>, usize) {
    let features = view.features.len();
    let mut items: Vec<Item> = Vec::new();
    if let Some(c) = current {
        let n = c.item_ts.len();
        let lists: Vec<Option<&[Value]>> =
            c.values.iter().map(|v| v.as_ref().and_then(Value::items).filter(|l| l.len() == n)).collect();
        // A stored record that no longer lines up with the view (a feature added since) starts afresh.
        if lists.len() == features && lists.iter().all(Option::is_some) {
            for (i, ts) in c.item_ts.iter().enumerate() {
                let values = lists.iter().map(|l| l.map(|l| l[i].clone()).unwrap_or(Value::Bool(false))).collect();
                items.push(Item { ts: *ts, created: c.created_ts, row: None, values });
            }
        }
    }
    let stored = items.len();
    for (r, row) in rows.iter().enumerate() {
        let lists: Vec<&[Value]> =
            row.values.iter().map(|v| v.as_ref().and_then(Value::items).unwrap_or(&[])).collect();
        let n = lists.first().map_or(0, |l| l.len());
        for i in 0..n {
            let values: Vec<Value> = lists.iter().map(|l| l.get(i).cloned().unwrap_or(Value::Bool(false))).collect();
            let duplicate = items.iter().any(|x| x.ts == row.event_ts && x.values == values);
            if !duplicate {
                items.push(Item { ts: row.event_ts, created: row.created_ts, row: Some(r), values });
            }
        }
    }
    if items.len() == stored {
        return (None, 0);
    }
    // Stable: equal times keep the stored items first, then rows in the order given.
    items.sort_by_key(|x| x.ts);
    let kept = &items[items.len().saturating_sub(max)..];
    let mut added: Vec<usize> = kept.iter().filter_map(|x| x.row).collect();
    added.sort_unstable();
    added.dedup();
    if added.is_empty() {
        return (None, 0);
    }
    let values = (0..features)
        .map(|f| {
            let item = view.features[f].dtype.element().unwrap_or(view.features[f].dtype);
            Some(Value::List(item, kept.iter().map(|x| x.values[f].clone()).collect()))
        })
        .collect();
    let record = Record {
        event_ts: kept.iter().map(|x| x.ts).max().unwrap_or(0),
        created_ts: kept.iter().map(|x| x.created).max().unwrap_or(0),
        values,
        item_ts: kept.iter().map(|x| x.ts).collect(),
    };
    (Some(record), added.len())
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
        let r = Record::new(5, 7, vec![Some(Value::Float32(1.5)), None]);
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

    fn edges() -> FeatureView {
        let text = r#"
            [[entity]]
            name = "account"
            [[feature_view]]
            name = "paid"
            entities = ["account"]
            max_items = 3
            features = [{ name = "dst", dtype = "int64[]" }, { name = "amount", dtype = "float32[]" }]
        "#;
        let reg = Registry::from_sources(Path::new("."), &[(PathBuf::from("r.toml"), text.to_string())]).unwrap();
        reg.views[0].clone()
    }

    fn edge(ts: i64, dst: &[i64], amount: &[f32]) -> Record {
        let ints = dst.iter().map(|d| Value::Int64(*d)).collect();
        let floats = amount.iter().map(|a| Value::Float32(*a)).collect();
        Record::new(
            ts,
            0,
            vec![Some(Value::List(ValueType::Int64, ints)), Some(Value::List(ValueType::Float32, floats))],
        )
    }

    fn dst(r: &Record) -> Vec<i64> {
        r.values[0]
            .as_ref()
            .and_then(Value::items)
            .unwrap()
            .iter()
            .map(|v| match v {
                Value::Int64(i) => *i,
                _ => panic!("{v:?}"),
            })
            .collect()
    }

    #[test]
    fn append_views_keep_the_newest_items_in_time_order_once() {
        let view = edges();
        assert_eq!(view.max_items, Some(3));
        let (r, added) = append(&view, None, &[edge(10, &[1], &[1.0]), edge(30, &[3], &[3.0])], 3);
        let r = r.unwrap();
        assert_eq!((dst(&r), r.item_ts.clone(), r.event_ts, added), (vec![1, 3], vec![10, 30], 30, 2));
        // A late row takes its place in time; a redelivered one changes nothing.
        let (r, added) = append(&view, Some(&r), &[edge(20, &[2], &[2.0]), edge(30, &[3], &[3.0])], 3);
        let r = r.unwrap();
        assert_eq!((dst(&r), r.item_ts.clone(), added), (vec![1, 2, 3], vec![10, 20, 30], 1));
        assert_eq!(append(&view, Some(&r), &[edge(30, &[3], &[3.0])], 3), (None, 0));
        // Over the cap: the oldest go; a row older than everything kept is stale.
        let (r, added) = append(&view, Some(&r), &[edge(40, &[4, 5], &[4.0, 5.0])], 3);
        let r = r.unwrap();
        assert_eq!((dst(&r), r.item_ts.clone(), added), (vec![3, 4, 5], vec![30, 40, 40], 1));
        assert_eq!(append(&view, Some(&r), &[edge(5, &[9], &[9.0])], 3), (None, 0));
        // The item times survive the store's encoding.
        assert_eq!(Record::decode(&r.encode(&view), &view).unwrap(), r);
        let bytes = r.encode(&view);
        for cut in 0..bytes.len() {
            assert!(Record::decode(&bytes[..cut], &view).is_err());
        }
        // Rows must carry every feature, as lists of one length.
        assert_eq!(edge(1, &[1, 2], &[1.0, 2.0]).items(&view).unwrap(), 2);
        let e = edge(1, &[1, 2], &[1.0]).items(&view).unwrap_err().to_string();
        assert!(e.contains("'amount' has 1 items but the features before it have 2"), "{e}");
        let mut missing = edge(1, &[1], &[1.0]);
        missing.values[1] = None;
        assert!(missing.items(&view).unwrap_err().to_string().contains("'amount' is missing"));
    }

    #[test]
    fn newest_event_wins_then_created() {
        let at = |e, c| Record::new(e, c, vec![]);
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
