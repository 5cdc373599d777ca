//! Feast's feature-server API, protocol-neutral: `get-online-features` and `push` requests
//! parsed from their JSON, and the response in Feast's column-wise shape.

use crate::definitions::{list, FeatureRef};
use crate::error::{FeatureError, Result};
use crate::feature_store::{FeatureStore, ServedCounts, Status};
use crate::store::WriteOutcome;
use crate::value::{format_timestamp, Value, ValueType};
use serde_json::{Map, Value as Json};

/// Entity rows beyond this many in one request are refused (400).
pub const MAX_ENTITY_ROWS: usize = 100_000;

/// Join key name → one value per entity row.
pub type KeyColumns = Vec<(String, Vec<Value>)>;

/// A parsed `get-online-features` request.
#[derive(Debug, Clone)]
pub struct OnlineRequest {
    pub features: Vec<FeatureRef>,
    /// Join key name → one value per entity row, in request order.
    pub entities: KeyColumns,
    pub rows: usize,
    pub full_feature_names: bool,
}

/// One column of the response.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub values: Vec<Option<Value>>,
    pub statuses: Vec<Status>,
    pub event_timestamps: Vec<i64>,
}

/// The response: entity columns first, then the features in requested order.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineResponse {
    pub feature_names: Vec<String>,
    pub columns: Vec<Column>,
}

// === impl OnlineResponse ===

impl OnlineResponse {
    /// Feast's JSON: `{"metadata": {"feature_names": [...]}, "results": [{"values", "statuses", "event_timestamps"}]}`.
    pub fn to_json(&self) -> Json {
        serde_json::to_value(self).unwrap_or(Json::Null)
    }
}

/// Serialised straight to JSON text (no intermediate `serde_json::Value` tree): the answer of
/// `/get-online-features` is built per request.
impl serde::Serialize for OnlineResponse {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Names<'a>(&'a [String]);
        impl serde::Serialize for Names<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("feature_names", self.0)?;
                m.end()
            }
        }
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("metadata", &Names(&self.feature_names))?;
        m.serialize_entry("results", &self.columns)?;
        m.end()
    }
}

impl serde::Serialize for Column {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        struct Values<'a>(&'a [Option<Value>]);
        impl serde::Serialize for Values<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for v in self.0 {
                    match v {
                        None => seq.serialize_element(&())?,
                        Some(Value::Int32(i)) => seq.serialize_element(i)?,
                        Some(Value::Int64(i)) => seq.serialize_element(i)?,
                        // NaN and infinities have no JSON form: null, as Feast writes them.
                        Some(Value::Float32(f)) if f.is_finite() => seq.serialize_element(&f64::from(*f))?,
                        Some(Value::Float64(f)) if f.is_finite() => seq.serialize_element(f)?,
                        Some(Value::Float32(_) | Value::Float64(_)) => seq.serialize_element(&())?,
                        Some(Value::Bool(b)) => seq.serialize_element(b)?,
                        Some(Value::String(t)) => seq.serialize_element(&**t)?,
                        Some(other) => seq.serialize_element(&other.to_json())?,
                    }
                }
                seq.end()
            }
        }
        struct Statuses<'a>(&'a [Status]);
        impl serde::Serialize for Statuses<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(|x| x.as_str()))
            }
        }
        struct Stamps<'a>(&'a [i64]);
        impl serde::Serialize for Stamps<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for t in self.0 {
                    if *t == 0 {
                        seq.serialize_element("1970-01-01T00:00:00Z")?;
                    } else {
                        seq.serialize_element(&format_timestamp(*t))?;
                    }
                }
                seq.end()
            }
        }
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("values", &Values(&self.values))?;
        m.serialize_entry("statuses", &Statuses(&self.statuses))?;
        m.serialize_entry("event_timestamps", &Stamps(&self.event_timestamps))?;
        m.end()
    }
}

// === impl FeatureStore (serving) ===

impl FeatureStore {
    /// Parses Feast's `get-online-features` body.
    pub fn parse_online_request(&self, body: &Json) -> Result<OnlineRequest> {
        let obj = body.as_object().ok_or_else(|| FeatureError::invalid("request body must be a JSON object"))?;
        let reg = &self.registry;
        let features = match (obj.get("features"), obj.get("feature_service")) {
            (Some(_), Some(_)) => {
                return Err(FeatureError::invalid("give either 'features' or 'feature_service', not both"));
            }
            (Some(Json::Array(list)), None) => {
                let mut names = Vec::with_capacity(list.len());
                for f in list {
                    let s = f.as_str().ok_or_else(|| {
                        FeatureError::invalid(format!("'features' must list strings like \"view:feature\", got {f}"))
                    })?;
                    if !s.contains(':') {
                        return Err(FeatureError::invalid(format!("feature reference '{s}' must be \"view:feature\"")));
                    }
                    names.push(s);
                }
                reg.resolve(&names)?
            }
            (Some(other), None) => {
                return Err(FeatureError::invalid(format!("'features' must be a list of strings, got {other}")));
            }
            (None, Some(Json::String(name))) => reg.service(name)?.features.clone(),
            (None, Some(other)) => {
                return Err(FeatureError::invalid(format!("'feature_service' must be a string, got {other}")))
            }
            (None, None) => {
                return Err(FeatureError::invalid("the request names no 'features' and no 'feature_service'"))
            }
        };
        if features.is_empty() {
            return Err(FeatureError::invalid("the request asks for no features"));
        }
        let full_feature_names = match obj.get("full_feature_names") {
            None | Some(Json::Null) => false,
            Some(Json::Bool(b)) => *b,
            Some(other) => {
                return Err(FeatureError::invalid(format!("'full_feature_names' must be true or false, got {other}")))
            }
        };
        let entity_map = match obj.get("entities") {
            Some(Json::Object(m)) => m,
            Some(other) => {
                return Err(FeatureError::invalid(format!(
                    "'entities' must map join keys to lists of values, got {}",
                    kind(other)
                )))
            }
            None => return Err(FeatureError::invalid("the request has no 'entities'")),
        };
        let (entities, rows) = self.parse_entities(entity_map)?;
        if !full_feature_names {
            check_unique_names(self, &features)?;
        }
        for f in &features {
            for (key, _) in &reg.views[f.view].join_keys {
                if !entities.iter().any(|(k, _)| k == key) {
                    return Err(FeatureError::invalid(format!(
                        "feature view '{}' needs entity key '{key}', which the request's 'entities' lacks",
                        reg.views[f.view].name
                    )));
                }
            }
        }
        Ok(OnlineRequest { features, entities, rows, full_feature_names })
    }

    fn parse_entities(&self, map: &Map<String, Json>) -> Result<(KeyColumns, usize)> {
        let mut rows: Option<usize> = None;
        let mut out = Vec::with_capacity(map.len());
        for (key, values) in map {
            let ty = self.key_type(key)?;
            let values = values.as_array().ok_or_else(|| {
                FeatureError::invalid(format!("entities.{key} must be a list of values, got {}", kind(values)))
            })?;
            if values.len() > MAX_ENTITY_ROWS {
                return Err(FeatureError::invalid(format!(
                    "entities.{key} has {} rows; at most {MAX_ENTITY_ROWS} per request",
                    values.len()
                )));
            }
            if let Some(n) = rows.filter(|n| *n != values.len()) {
                return Err(FeatureError::invalid(format!(
                    "entities.{key} has {} values but other entity keys have {n}",
                    values.len()
                )));
            }
            rows = Some(values.len());
            let mut parsed = Vec::with_capacity(values.len());
            for (i, v) in values.iter().enumerate() {
                let v = ty
                    .from_json(v)
                    .map_err(|m| FeatureError::invalid(format!("entities.{key}[{i}]: {m}")))?
                    .ok_or_else(|| FeatureError::invalid(format!("entities.{key}[{i}] is null")))?;
                parsed.push(v);
            }
            out.push((key.clone(), parsed));
        }
        Ok((out, rows.unwrap_or(0)))
    }

    /// The type of a join key, from the entity that declares it.
    pub fn key_type(&self, key: &str) -> Result<ValueType> {
        let reg = &self.registry;
        reg.entities.iter().find(|e| e.join_key == key).map(|e| e.value_type).ok_or_else(|| {
            FeatureError::invalid(format!(
                "unknown entity key '{key}'; declared join keys are {}",
                list(reg.entities.iter().map(|e| e.join_key.as_str()))
            ))
        })
    }

    /// Answers a parsed `get-online-features` request.
    pub async fn get_online_features(&self, req: &OnlineRequest) -> Result<OnlineResponse> {
        let reg = &self.registry;
        let mut views: Vec<usize> = req.features.iter().map(|f| f.view).collect();
        views.sort_unstable();
        views.dedup();
        let lookup = self
            .lookup(&views, req.rows, |view, row| {
                let values: Vec<Option<&Value>> = view
                    .join_keys
                    .iter()
                    .map(|(k, _)| req.entities.iter().find(|(name, _)| name == k).and_then(|(_, v)| v.get(row)))
                    .collect();
                crate::record::encode_key(view, &values)
            })
            .await?;
        let mut counts = ServedCounts::default();
        let mut names = Vec::with_capacity(req.entities.len() + req.features.len());
        let mut columns = Vec::with_capacity(names.capacity());
        for (key, values) in &req.entities {
            names.push(key.clone());
            columns.push(Column {
                values: values.iter().cloned().map(Some).collect(),
                statuses: vec![Status::Present; values.len()],
                event_timestamps: vec![0; values.len()],
            });
        }
        for f in &req.features {
            let view = &reg.views[f.view];
            let feature = &view.features[f.feature];
            names.push(if req.full_feature_names {
                format!("{}__{}", view.name, feature.name)
            } else {
                feature.name.clone()
            });
            let mut col = Column {
                values: Vec::with_capacity(req.rows),
                statuses: Vec::with_capacity(req.rows),
                event_timestamps: Vec::with_capacity(req.rows),
            };
            for row in 0..req.rows {
                let served = lookup.get(reg, *f, row);
                counts.add(f.view, served.status);
                col.values.push(served.value.cloned());
                col.statuses.push(served.status);
                col.event_timestamps.push(served.event_ts);
            }
            columns.push(col);
        }
        self.record_served(&counts);
        Ok(OnlineResponse { feature_names: names, columns })
    }

    /// Feast's push: `{"push_source_name", "df": {column: [values]}, "to": "online"}`.
    pub async fn push(&self, body: &Json) -> Result<WriteOutcome> {
        let obj = body.as_object().ok_or_else(|| FeatureError::invalid("request body must be a JSON object"))?;
        let name = obj
            .get("push_source_name")
            .and_then(Json::as_str)
            .ok_or_else(|| FeatureError::invalid("'push_source_name' (a string) is required"))?;
        match obj.get("to").and_then(Json::as_str).unwrap_or("online") {
            "online" => {}
            "offline" | "online_and_offline" => {
                return Err(FeatureError::invalid(
                    "Flotilla's push writes to the online store only (\"to\": \"online\"); offline data comes from the view's batch source",
                ))
            }
            other => return Err(FeatureError::invalid(format!("'to' must be \"online\", got \"{other}\""))),
        }
        let view = self.registry.push_target(name)?.clone();
        let df = match obj.get("df") {
            Some(Json::Object(m)) => m,
            _ => return Err(FeatureError::invalid("'df' must map column names to lists of values")),
        };
        let mut rows: Option<usize> = None;
        for (col, values) in df {
            let n = values
                .as_array()
                .ok_or_else(|| FeatureError::invalid(format!("df.{col} must be a list, got {}", kind(values))))?
                .len();
            if let Some(m) = rows.filter(|m| *m != n) {
                return Err(FeatureError::invalid(format!("df.{col} has {n} values but other columns have {m}")));
            }
            rows = Some(n);
        }
        let rows = rows.unwrap_or(0);
        if rows > MAX_ENTITY_ROWS {
            return Err(FeatureError::invalid(format!("df has {rows} rows; at most {MAX_ENTITY_ROWS} per push")));
        }
        let mut out = Vec::with_capacity(rows);
        for i in 0..rows {
            let row: Map<String, Json> = df.iter().map(|(k, v)| (k.clone(), v[i].clone())).collect();
            let parsed =
                self.row_from_json(&view, &row).map_err(|e| FeatureError::invalid(format!("df row {i}: {e}")))?;
            out.push(parsed);
        }
        self.write(&view, out, "push", None).await
    }
}

fn check_unique_names(store: &FeatureStore, features: &[FeatureRef]) -> Result<()> {
    for (i, f) in features.iter().enumerate() {
        let name = &store.registry.feature(*f).name;
        if let Some(g) = features[..i].iter().find(|g| &store.registry.feature(**g).name == name) {
            return Err(FeatureError::invalid(format!(
                "feature name '{name}' is requested from both '{}' and '{}'; set \"full_feature_names\": true (on the CLI: features get --full-feature-names)",
                store.registry.ref_name(*g),
                store.registry.ref_name(*f)
            )));
        }
    }
    Ok(())
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_serialise_as_feast_writes_them() {
        let r = OnlineResponse {
            feature_names: vec!["card_id".into(), "amount".into()],
            columns: vec![
                Column {
                    values: vec![Some(Value::Int64(1)), Some(Value::Int64(2))],
                    statuses: vec![Status::Present; 2],
                    event_timestamps: vec![0, 0],
                },
                Column {
                    values: vec![Some(Value::Float32(1.5)), Some(Value::Float32(f32::NAN))],
                    statuses: vec![Status::Present, Status::OutsideMaxAge],
                    event_timestamps: vec![1_793_491_201_000_000, 1_793_491_201_250_000],
                },
            ],
        };
        let want = serde_json::json!({
            "metadata": {"feature_names": ["card_id", "amount"]},
            "results": [
                {"values": [1, 2], "statuses": ["PRESENT", "PRESENT"],
                 "event_timestamps": ["1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z"]},
                {"values": [1.5, null], "statuses": ["PRESENT", "OUTSIDE_MAX_AGE"],
                 "event_timestamps": ["2026-11-01T00:00:01Z", "2026-11-01T00:00:01.250Z"]},
            ]
        });
        assert_eq!(r.to_json(), want);
        let text: Json = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(text, want);
    }
}
