//! Request-time enrichment. A model folder's `features.toml` says which request inputs carry
//! entity keys and which model input is assembled from which features, in what order:
//!
//! ```toml
//! keys = ["card_id"]                # request inputs named as the join keys
//! [[input]]
//! name = "input__0"
//! features = ["card_txn_1h:last_amount", "request:amount", "card_profile:card_age_days"]
//! # or: feature_service = "fraud_v1"
//! missing = "nan"                   # value for missing, expired or null features
//! ```
//!
//! `request:NAME` takes the value from a request input `NAME` (one number per row) instead of
//! the store. A client that sends the assembled input itself skips its enrichment.

use crate::definitions::{FeatureRef, Registry};
use crate::error::FeatureError;
use crate::feature_store::{FeatureStore, ServedCounts, Status};
use crate::graph::GraphPlan;
use crate::record::encode_key;
use crate::serving::KeyColumns;
use crate::value::{Value, ValueType};
use bytes::Bytes;
use flotilla_core::config::input_datatype;
use flotilla_core::enrich::Enricher;
use flotilla_core::repository::ModelVersion;
use flotilla_core::tensor::split_bytes_elements;
use flotilla_core::{DataType, Error, InferRequest, Tensor};
use futures::future::BoxFuture;
use parking_lot::RwLock;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use toml::Spanned;

pub const FILE_NAME: &str = "features.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    keys: Vec<Spanned<String>>,
    input: Vec<RawInput>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    name: String,
    #[serde(default)]
    features: Vec<Spanned<String>>,
    feature_service: Option<Spanned<String>>,
    missing: Option<toml::Value>,
}

/// Where one column of an assembled input comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Feature(FeatureRef),
    /// A request input of this name, one number per row.
    Request(String),
}

#[derive(Debug, Clone)]
pub struct InputPlan {
    pub name: String,
    pub items: Vec<Item>,
    pub missing: f64,
}

/// A model's enrichment, checked against the feature repository.
#[derive(Debug, Clone)]
pub struct ModelFeatures {
    pub keys: Vec<(String, ValueType)>,
    pub inputs: Vec<InputPlan>,
}

impl ModelFeatures {
    /// Parses `text` (the contents of `path`) against `registry`.
    pub fn parse(path: &Path, text: &str, registry: &Registry) -> Result<Self, FeatureError> {
        let file = path.display();
        let raw: RawPlan = toml::from_str(text)
            .map_err(|e| FeatureError::Definition(format!("{file}: {}", e.to_string().trim_end())))?;
        let at = |span: std::ops::Range<usize>, m: String| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            FeatureError::Definition(format!("{file}:{line}: {m}"))
        };
        let mut keys = Vec::new();
        for k in &raw.keys {
            let ty = registry.entities.iter().find(|e| &e.join_key == k.get_ref()).map(|e| e.value_type).ok_or_else(
                || {
                    at(
                        k.span(),
                        format!(
                            "'{}' is not a join key of the feature repository (declared: {})",
                            k.get_ref(),
                            crate::definitions::list(registry.entities.iter().map(|e| e.join_key.as_str()))
                        ),
                    )
                },
            )?;
            keys.push((k.get_ref().clone(), ty));
        }
        let mut inputs = Vec::new();
        for input in &raw.input {
            let mut items = Vec::new();
            match (&input.feature_service, input.features.is_empty()) {
                (Some(s), true) => {
                    let service = registry.service(s.get_ref()).map_err(|e| at(s.span(), e.to_string()))?;
                    items.extend(service.features.iter().map(|f| Item::Feature(*f)));
                }
                (None, false) => {
                    for f in &input.features {
                        if let Some(name) = f.get_ref().strip_prefix("request:") {
                            items.push(Item::Request(name.to_string()));
                            continue;
                        }
                        let refs = registry.resolve(&[f.get_ref()]).map_err(|e| at(f.span(), e.to_string()))?;
                        items.extend(refs.into_iter().map(Item::Feature));
                    }
                }
                _ => {
                    return Err(FeatureError::Definition(format!(
                        "{file}: input '{}' needs either 'features' or 'feature_service'",
                        input.name
                    )))
                }
            }
            for item in &items {
                let Item::Feature(f) = item else { continue };
                let feature = registry.feature(*f);
                if !feature.dtype.is_numeric() {
                    return Err(FeatureError::Definition(format!(
                        "{file}: input '{}': feature '{}' is {} and cannot feed a numeric model input",
                        input.name,
                        registry.ref_name(*f),
                        feature.dtype
                    )));
                }
                let view = &registry.views[f.view];
                if let Some((k, _)) = view.join_keys.iter().find(|(k, _)| !keys.iter().any(|(x, _)| x == k)) {
                    return Err(FeatureError::Definition(format!(
                        "{file}: input '{}': feature view '{}' is keyed by '{k}', which is not in keys",
                        input.name, view.name
                    )));
                }
            }
            let missing = match &input.missing {
                None => f64::NAN,
                Some(toml::Value::String(s)) if s.eq_ignore_ascii_case("nan") => f64::NAN,
                Some(toml::Value::Float(f)) => *f,
                Some(toml::Value::Integer(i)) => *i as f64,
                Some(other) => {
                    return Err(FeatureError::Definition(format!(
                        "{file}: input '{}': missing must be a number or \"nan\", not {other}",
                        input.name
                    )))
                }
            };
            inputs.push(InputPlan { name: input.name.clone(), items, missing });
        }
        Ok(Self { keys, inputs })
    }
}

/// What is known of one model's enrichment: its `features.toml` and its `graph.toml`.
enum Plan {
    Ready { features: Option<Arc<ModelFeatures>>, graph: Option<Arc<GraphPlan>> },
    Broken(String),
}

/// The [`Enricher`] of a server: plans read from each model folder's `features.toml` on first
/// use (and again after the model reloads), lookups in the shared [`FeatureStore`].
pub struct Enrichment {
    store: Arc<FeatureStore>,
    repository: PathBuf,
    plans: RwLock<HashMap<String, Arc<Plan>>>,
}

impl Enrichment {
    pub fn new(store: Arc<FeatureStore>, repository: PathBuf) -> Self {
        Self { store, repository, plans: RwLock::new(HashMap::new()) }
    }

    fn plan(&self, model: &str) -> Arc<Plan> {
        if let Some(p) = self.plans.read().get(model) {
            return p.clone();
        }
        let folder = self.repository.join(model);
        let registry = &self.store.registry;
        let features = read_plan(&folder.join(FILE_NAME), |path, text| ModelFeatures::parse(path, text, registry));
        let graph =
            read_plan(&folder.join(crate::graph::FILE_NAME), |path, text| GraphPlan::parse(path, text, registry));
        let plan = match (features, graph) {
            (Ok(features), Ok(graph)) => Plan::Ready { features, graph },
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(model, error = %e, "feature enrichment of this model is broken");
                Plan::Broken(e)
            }
        };
        let plan = Arc::new(plan);
        self.plans.write().insert(model.to_string(), plan.clone());
        plan
    }

    async fn run(&self, mv: &ModelVersion, request: &mut InferRequest) -> Result<(), Error> {
        let (features, graph) = match &*self.plan(&mv.name) {
            Plan::Broken(m) => return Err(Error::precondition(format!("model '{}': {m}", mv.name))),
            Plan::Ready { features, graph } => (features.clone(), graph.clone()),
        };
        if let Some(graph) = &graph {
            self.graph(mv, request, graph).await?;
        }
        if let Some(features) = &features {
            self.features(mv, request, features).await?;
        }
        strip_unused(mv, request, features.as_deref(), graph.as_deref());
        Ok(())
    }

    /// Fills a graph model's inputs from the target nodes the request names (unless the client
    /// sent them itself).
    async fn graph(&self, mv: &ModelVersion, request: &mut InferRequest, plan: &GraphPlan) -> Result<(), Error> {
        let names = plan.input_names();
        if names.iter().all(|n| request.inputs.iter().any(|t| &t.name == n)) {
            return Ok(());
        }
        let t = request.inputs.iter().find(|t| t.name == plan.key).ok_or_else(|| {
            Error::invalid(format!(
                "model '{}' is a graph model: send the target nodes as input '{}' ({}, shape [rows]), or {} itself",
                mv.name,
                plan.key,
                if matches!(plan.key_type, ValueType::String | ValueType::Bytes) { "BYTES" } else { "INT64" },
                names.join(", ")
            ))
        })?;
        let targets = tensor_keys(t, plan.key_type)?;
        if targets.is_empty() {
            return Err(Error::invalid(format!("input '{}' holds no target nodes", plan.key)));
        }
        crate::graph::sample::check_size(plan, targets.len()).map_err(FeatureError::into_core)?;
        if plan.layout == crate::graph::plan::Layout::EdgeIndex && mv.config.max_batch_size > 0 {
            return Err(Error::precondition(format!(
                "model '{}': graph.toml's edge_index layout has no batch dimension; set max_batch_size: 0",
                mv.name
            )));
        }
        let first = names.first().map(String::as_str).unwrap_or("x0");
        let datatype = mv.config.input.iter().find(|c| c.name == first).map(input_datatype).unwrap_or(DataType::F32);
        let (tensors, timings) =
            crate::graph::build(&self.store, plan, &targets, datatype).await.map_err(FeatureError::into_core)?;
        let m = &self.store.metrics.graph_duration;
        m.with_label_values(&[mv.name.as_str(), "fetch"]).observe(timings.fetch.as_secs_f64());
        m.with_label_values(&[mv.name.as_str(), "gather"]).observe(timings.gather.as_secs_f64());
        request.inputs.retain(|t| !names.contains(&t.name));
        request.inputs.extend(tensors);
        Ok(())
    }

    /// Fills the inputs a `features.toml` assembles (unless the client sent them itself).
    async fn features(&self, mv: &ModelVersion, request: &mut InferRequest, plan: &ModelFeatures) -> Result<(), Error> {
        let todo: Vec<&InputPlan> =
            plan.inputs.iter().filter(|i| !request.inputs.iter().any(|t| t.name == i.name)).collect();
        if todo.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let (keys, rows) = key_values(mv, request, plan)?;
        let mut views: Vec<usize> = todo
            .iter()
            .flat_map(|i| i.items.iter())
            .filter_map(|it| match it {
                Item::Feature(f) => Some(f.view),
                Item::Request(_) => None,
            })
            .collect();
        views.sort_unstable();
        views.dedup();
        let store = &self.store;
        let lookup = store
            .lookup(&views, rows, |view, row| {
                let values: Vec<Option<&Value>> = view
                    .join_keys
                    .iter()
                    .map(|(k, _)| keys.iter().find(|(name, _)| name == k).and_then(|(_, v)| v.get(row)))
                    .collect();
                encode_key(view, &values)
            })
            .await
            .map_err(FeatureError::into_core)?;
        let mut served = ServedCounts::default();
        for input in todo {
            let mut columns: Vec<Vec<f64>> = Vec::with_capacity(input.items.len());
            for item in &input.items {
                columns.push(match item {
                    Item::Feature(f) => (0..rows)
                        .map(|row| {
                            let s = lookup.get(&store.registry, *f, row);
                            served.add(f.view, s.status);
                            // Missing, null and expired values all become `missing`.
                            let fresh = s.value.filter(|_| s.status == Status::Present);
                            fresh.and_then(Value::as_f64).unwrap_or(input.missing)
                        })
                        .collect(),
                    Item::Request(name) => request_column(mv, request, name, rows)?,
                });
            }
            let tensor = assemble(mv, input, &columns, rows)?;
            request.inputs.push(tensor);
        }
        store.record_served(&served);
        store.metrics.enrich_duration.with_label_values(&[mv.name.as_str()]).observe(started.elapsed().as_secs_f64());
        Ok(())
    }
}

impl Enricher for Enrichment {
    fn enrich<'a>(&'a self, mv: &'a ModelVersion, request: &'a mut InferRequest) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.run(mv, request))
    }

    fn model_changed(&self, model: &str) {
        self.plans.write().remove(model);
    }
}

/// Removes key and `request:` inputs the model itself does not take.
fn strip_unused(
    mv: &ModelVersion,
    request: &mut InferRequest,
    plan: Option<&ModelFeatures>,
    graph: Option<&GraphPlan>,
) {
    let used = |name: &str| {
        graph.is_some_and(|g| g.key == name)
            || plan.is_some_and(|plan| {
                plan.keys.iter().any(|(k, _)| k == name)
                    || plan
                        .inputs
                        .iter()
                        .flat_map(|i| i.items.iter())
                        .any(|it| matches!(it, Item::Request(n) if n == name))
            })
    };
    request.inputs.retain(|t| !used(&t.name) || mv.config.input.iter().any(|c| c.name == t.name));
}

/// A model folder's plan file parsed by `parse`; `None` when the folder has none.
fn read_plan<T>(
    path: &Path,
    parse: impl FnOnce(&Path, &str) -> Result<T, FeatureError>,
) -> Result<Option<Arc<T>>, String> {
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
        Ok(text) => parse(path, &text).map(|p| Some(Arc::new(p))).map_err(|e| e.to_string()),
    }
}

/// The entity keys of every row, from the request's key inputs.
fn key_values(mv: &ModelVersion, request: &InferRequest, plan: &ModelFeatures) -> Result<(KeyColumns, usize), Error> {
    let mut out = Vec::with_capacity(plan.keys.len());
    let mut rows: Option<usize> = None;
    for (key, ty) in &plan.keys {
        let t = request.inputs.iter().find(|t| &t.name == key).ok_or_else(|| {
            let wanted: Vec<&str> = plan.inputs.iter().map(|i| i.name.as_str()).collect();
            Error::invalid(format!(
                "model '{}' takes {} from the feature store: send the entity key input '{key}' ({}, shape [rows]) or {} itself",
                mv.name,
                wanted.join(", "),
                if matches!(ty, ValueType::String | ValueType::Bytes) { "BYTES" } else { "INT64" },
                wanted.join(", ")
            ))
        })?;
        let values = tensor_keys(t, *ty)?;
        if let Some(n) = rows.filter(|n| *n != values.len()) {
            return Err(Error::invalid(format!(
                "input '{key}' has {} rows but other key inputs have {n}",
                values.len()
            )));
        }
        rows = Some(values.len());
        out.push((key.clone(), values));
    }
    let rows = rows.unwrap_or(0);
    if rows == 0 {
        return Err(Error::invalid(format!("model '{}': the entity key inputs hold no rows", mv.name)));
    }
    Ok((out, rows))
}

fn check_column_shape(t: &Tensor) -> Result<usize, Error> {
    match t.shape.as_slice() {
        [n] | [n, 1] if *n >= 0 => Ok(*n as usize),
        _ => Err(Error::invalid(format!("input '{}': shape {:?} must be [rows] or [rows, 1]", t.name, t.shape))),
    }
}

pub(crate) fn tensor_keys(t: &Tensor, ty: ValueType) -> Result<Vec<Value>, Error> {
    let n = check_column_shape(t)?;
    t.validate(&format!("input '{}'", t.name))?;
    let what = format!("input '{}'", t.name);
    let values: Vec<Value> = match (ty, t.datatype) {
        (ValueType::Int64 | ValueType::Int32, DataType::I64) => {
            t.data.chunks_exact(8).map(|c| Value::Int64(i64::from_le_bytes(c.try_into().unwrap_or_default()))).collect()
        }
        (ValueType::Int64 | ValueType::Int32, DataType::I32) => {
            t.data.chunks_exact(4).map(|c| Value::Int32(i32::from_le_bytes(c.try_into().unwrap_or_default()))).collect()
        }
        (ValueType::Int64 | ValueType::Int32, DataType::U32) => t
            .data
            .chunks_exact(4)
            .map(|c| Value::Int64(i64::from(u32::from_le_bytes(c.try_into().unwrap_or_default()))))
            .collect(),
        (ValueType::String, DataType::Bytes) => split_bytes_elements(&t.data, &what)?
            .into_iter()
            .map(|b| {
                std::str::from_utf8(b)
                    .map(|s| Value::String(s.into()))
                    .map_err(|_| Error::invalid(format!("{what}: an entity key is not UTF-8 text")))
            })
            .collect::<Result<_, _>>()?,
        (ValueType::Bytes, DataType::Bytes) => {
            split_bytes_elements(&t.data, &what)?.into_iter().map(|b| Value::Bytes(b.into())).collect()
        }
        (ty, dt) => {
            let want = if matches!(ty, ValueType::String | ValueType::Bytes) { "BYTES" } else { "INT64 or INT32" };
            return Err(Error::invalid(format!("{what}: entity key '{}' is {ty}; send {want}, not {dt}", t.name)));
        }
    };
    if values.len() != n {
        return Err(Error::invalid(format!("{what}: {} values for shape {:?}", values.len(), t.shape)));
    }
    Ok(values)
}

/// A `request:NAME` column: one number per row from the request input `NAME`.
fn request_column(mv: &ModelVersion, request: &InferRequest, name: &str, rows: usize) -> Result<Vec<f64>, Error> {
    let t = request.inputs.iter().find(|t| t.name == name).ok_or_else(|| {
        Error::invalid(format!("model '{}' needs request input '{name}' (one number per row)", mv.name))
    })?;
    let what = format!("input '{name}'");
    let n = check_column_shape(t)?;
    t.validate(&what)?;
    if n != rows {
        return Err(Error::invalid(format!("{what} has {n} rows but the entity keys have {rows}")));
    }
    let d = &t.data;
    let out: Vec<f64> = match t.datatype {
        DataType::F32 => {
            d.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap_or_default()))).collect()
        }
        DataType::F64 => d.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default())).collect(),
        DataType::I64 => {
            d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()) as f64).collect()
        }
        DataType::I32 => {
            d.chunks_exact(4).map(|c| f64::from(i32::from_le_bytes(c.try_into().unwrap_or_default()))).collect()
        }
        dt => return Err(Error::invalid(format!("{what} is {dt}; send FP32, FP64, INT64 or INT32"))),
    };
    Ok(out)
}

/// Builds the model input from its columns, in the datatype and shape the model declares.
fn assemble(mv: &ModelVersion, input: &InputPlan, columns: &[Vec<f64>], rows: usize) -> Result<Tensor, Error> {
    let config = &mv.config;
    let c = config.input.iter().find(|c| c.name == input.name).ok_or_else(|| {
        Error::precondition(format!(
            "model '{}': features.toml fills input '{}', which the model does not have",
            mv.name, input.name
        ))
    })?;
    let width = columns.len();
    let declared: i64 = c.dims.iter().product();
    if c.dims.iter().all(|d| *d >= 0) && declared != width as i64 {
        return Err(Error::precondition(format!(
            "model '{}': features.toml assembles {width} values per row for input '{}', but the model takes {:?}",
            mv.name, input.name, c.dims
        )));
    }
    let shape: Vec<i64> = if config.max_batch_size > 0 {
        vec![rows as i64, width as i64]
    } else if rows == 1 {
        vec![width as i64]
    } else {
        return Err(Error::invalid(format!("model '{}' does not batch: send one entity key", mv.name)));
    };
    let datatype = input_datatype(c);
    let mut data = Vec::with_capacity(rows * width * datatype.size().unwrap_or(4));
    for row in 0..rows {
        for col in columns {
            let v = col[row];
            match datatype {
                DataType::F32 => data.extend_from_slice(&(v as f32).to_le_bytes()),
                DataType::F64 => data.extend_from_slice(&v.to_le_bytes()),
                DataType::I64 | DataType::I32 if v.is_nan() => {
                    return Err(Error::precondition(format!(
                        "model '{}': a feature of input '{}' is missing and the input is {datatype}; set `missing` in features.toml",
                        mv.name, input.name
                    )))
                }
                DataType::I64 => data.extend_from_slice(&(v as i64).to_le_bytes()),
                DataType::I32 => data.extend_from_slice(&(v as i32).to_le_bytes()),
                dt => {
                    return Err(Error::precondition(format!(
                        "model '{}': input '{}' is {dt}; features can fill FP32, FP64, INT64 or INT32 inputs",
                        mv.name, input.name
                    )))
                }
            }
        }
    }
    Ok(Tensor::new(input.name.clone(), datatype, shape, Bytes::from(data)))
}
