//! Feature repository declarations: entities, feature views and feature services, read from
//! the `*.toml` files of a folder and checked as a whole. Every error names the file and line.

mod raw;
mod stream;
#[cfg(test)]
mod tests;

pub use stream::{StreamSource, StreamSpec, DEFAULT_NATS_ACK_WAIT};

use crate::duration::parse_micros;
use crate::error::{FeatureError, Result};
use crate::value::ValueType;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// An entity: the thing features describe, found by its join key.
#[derive(Debug, Clone)]
pub struct Entity {
    pub name: String,
    pub join_key: String,
    pub value_type: ValueType,
    pub description: String,
}

#[derive(Debug, Clone)]
pub struct Feature {
    pub name: String,
    pub dtype: ValueType,
    pub description: String,
}

/// Where a view's batch rows come from.
#[derive(Debug, Clone)]
pub struct BatchSource {
    /// A Parquet (`.parquet`) or CSV (`.csv`) file, resolved against the repository folder.
    pub path: PathBuf,
    pub timestamp_field: String,
    pub created_timestamp_column: Option<String>,
}

/// A feature view: typed features of one or more entities, with a time to live.
#[derive(Debug, Clone)]
pub struct FeatureView {
    pub name: String,
    /// Position in [`Registry::views`].
    pub index: usize,
    pub entities: Vec<String>,
    /// The view's key columns, in entity order, with their types.
    pub join_keys: Vec<(String, ValueType)>,
    /// Values older than this (µs) are OUTSIDE_MAX_AGE online and not joined in training sets; 0 = forever.
    pub ttl_us: i64,
    pub features: Vec<Feature>,
    pub online: bool,
    pub source: Option<BatchSource>,
    pub stream: Option<StreamSpec>,
    pub push_source: Option<String>,
    /// An append view (`max_items = N`, an edge list): every feature is a list, a written row
    /// appends its items (a scalar is one item) in event-time order, and the newest N are kept.
    pub max_items: Option<usize>,
    pub description: String,
    pub tags: std::collections::BTreeMap<String, String>,
}

/// The largest `max_items` of an append view: a record holds every item of its entity.
pub const MAX_ITEMS_LIMIT: i64 = 100_000;

/// One feature of one view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FeatureRef {
    pub view: usize,
    pub feature: usize,
}

#[derive(Debug, Clone)]
pub struct FeatureService {
    pub name: String,
    pub features: Vec<FeatureRef>,
    pub description: String,
}

/// Everything a feature repository declares.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub root: PathBuf,
    pub entities: Vec<Entity>,
    pub views: Vec<FeatureView>,
    pub services: Vec<FeatureService>,
}

// === impl FeatureView ===

impl FeatureView {
    pub fn feature_index(&self, name: &str) -> Option<usize> {
        self.features.iter().position(|f| f.name == name)
    }
}

// === impl Registry ===

impl Registry {
    /// Reads every `*.toml` file directly in `dir` (in name order).
    pub fn load(dir: &Path) -> Result<Self> {
        let listing = std::fs::read_dir(dir).map_err(|e| {
            FeatureError::Definition(format!("feature repository {}: cannot read the folder: {e}", dir.display()))
        })?;
        let mut files: Vec<PathBuf> = listing
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        files.sort();
        let mut sources = Vec::with_capacity(files.len());
        for path in files {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| FeatureError::Definition(format!("{}: cannot read: {e}", path.display())))?;
            sources.push((path, text));
        }
        Self::from_sources(dir, &sources)
    }

    /// Builds a registry from `(file name, TOML text)` pairs; paths resolve against `root`.
    pub fn from_sources(root: &Path, sources: &[(PathBuf, String)]) -> Result<Self> {
        let mut parsed = Vec::with_capacity(sources.len());
        for (path, text) in sources {
            let file: raw::File = toml::from_str(text)
                .map_err(|e| FeatureError::Definition(format!("{}: {}", path.display(), e.to_string().trim_end())))?;
            parsed.push((Located { path, text }, file));
        }
        let mut reg = Registry { root: root.to_path_buf(), ..Default::default() };
        for (at, file) in &parsed {
            for e in &file.entity {
                reg.add_entity(at, e)?;
            }
        }
        for (at, file) in &parsed {
            for v in &file.feature_view {
                reg.add_view(at, v)?;
            }
        }
        for (at, file) in &parsed {
            for s in &file.feature_service {
                reg.add_service(at, s)?;
            }
        }
        Ok(reg)
    }

    fn add_entity(&mut self, at: &Located, e: &raw::Entity) -> Result<()> {
        let name = e.name.get_ref();
        check_name(at, &e.name, "entity")?;
        if self.entities.iter().any(|x| &x.name == name) {
            return Err(at.error(e.name.span(), format!("entity '{name}' is declared twice")));
        }
        let value_type = ValueType::parse(e.value_type.get_ref()).filter(|t| t.is_key()).ok_or_else(|| {
            at.error(
                e.value_type.span(),
                format!(
                    "entity '{name}': value_type '{}' is not a key type (int64, int32, string or bytes)",
                    e.value_type.get_ref()
                ),
            )
        })?;
        let join_key = e.join_key.as_ref().map(|k| k.get_ref().clone()).unwrap_or_else(|| name.clone());
        if let Some(other) = self.entities.iter().find(|x| x.join_key == join_key && x.value_type != value_type) {
            let span = e.join_key.as_ref().map(|k| k.span()).unwrap_or(e.name.span());
            return Err(at.error(
                span,
                format!(
                    "entity '{name}': join key '{join_key}' is {value_type} here but {} in entity '{}'",
                    other.value_type, other.name
                ),
            ));
        }
        self.entities.push(Entity { name: name.clone(), join_key, value_type, description: e.description.clone() });
        Ok(())
    }

    fn add_view(&mut self, at: &Located, v: &raw::FeatureView) -> Result<()> {
        let name = v.name.get_ref();
        check_name(at, &v.name, "feature view")?;
        if self.views.iter().any(|x| &x.name == name) {
            return Err(at.error(v.name.span(), format!("feature view '{name}' is declared twice")));
        }
        let mut join_keys = Vec::new();
        for e in &v.entities {
            let entity = self.entities.iter().find(|x| &x.name == e.get_ref()).ok_or_else(|| {
                at.error(
                    e.span(),
                    format!(
                        "feature view '{name}': unknown entity '{}'; declared entities are {}",
                        e.get_ref(),
                        list(self.entities.iter().map(|x| x.name.as_str()))
                    ),
                )
            })?;
            if join_keys.iter().any(|(k, _)| k == &entity.join_key) {
                return Err(
                    at.error(e.span(), format!("feature view '{name}': entity '{}' is listed twice", e.get_ref()))
                );
            }
            join_keys.push((entity.join_key.clone(), entity.value_type));
        }
        let ttl_us = match &v.ttl {
            None => 0,
            Some(t) => {
                parse_micros(t.get_ref()).map_err(|m| at.error(t.span(), format!("feature view '{name}': ttl {m}")))?
            }
        };
        let mut features: Vec<Feature> = Vec::with_capacity(v.features.len());
        for f in &v.features {
            let fname = f.name.get_ref();
            check_name(at, &f.name, "feature")?;
            if features.iter().any(|x| &x.name == fname) {
                return Err(
                    at.error(f.name.span(), format!("feature view '{name}': feature '{fname}' is declared twice"))
                );
            }
            if join_keys.iter().any(|(k, _)| k == fname) {
                return Err(at.error(
                    f.name.span(),
                    format!("feature view '{name}': feature '{fname}' has the name of the view's join key"),
                ));
            }
            let dtype = ValueType::parse(f.dtype.get_ref()).ok_or_else(|| at.error(f.dtype.span(), format!(
                "feature '{name}:{fname}': unknown dtype '{}' (int32, int64, float32, float64, string, bool, bytes, unix_timestamp, or a list of one of them: int64[], Array(Float32), ...)",
                f.dtype.get_ref()
            )))?;
            features.push(Feature { name: fname.clone(), dtype, description: f.description.clone() });
        }
        if features.is_empty() {
            return Err(at.error(v.name.span(), format!("feature view '{name}' declares no features")));
        }
        let source = v.source.as_ref().map(|s| BatchSource {
            path: self.root.join(s.path.get_ref()),
            timestamp_field: s.timestamp_field.clone(),
            created_timestamp_column: s.created_timestamp_column.clone(),
        });
        if let Some(s) = &v.source {
            let p = s.path.get_ref();
            if !(p.ends_with(".parquet") || p.ends_with(".csv")) {
                return Err(at.error(
                    s.path.span(),
                    format!("feature view '{name}': source path '{p}' must end in .parquet or .csv"),
                ));
            }
        }
        let stream = match &v.stream {
            None => None,
            Some(s) => Some(StreamSpec::parse(name, s.get_ref()).map_err(|m| at.error(s.span(), m))?),
        };
        let max_items = match &v.max_items {
            None => None,
            Some(n) if !(1..=MAX_ITEMS_LIMIT).contains(n.get_ref()) => {
                return Err(at.error(
                    n.span(),
                    format!("feature view '{name}': max_items must be between 1 and {MAX_ITEMS_LIMIT}"),
                ))
            }
            Some(n) => {
                if let Some(f) =
                    v.features.iter().find(|f| ValueType::parse(f.dtype.get_ref()).is_some_and(|t| !t.is_list()))
                {
                    return Err(at.error(
                        f.dtype.span(),
                        format!(
                            "feature view '{name}' appends items (max_items), so feature '{}' must be a list, such as '{}[]'",
                            f.name.get_ref(),
                            f.dtype.get_ref()
                        ),
                    ));
                }
                Some(*n.get_ref() as usize)
            }
        };
        let push_source = v.push_source.as_ref().map(|p| p.get_ref().clone());
        if let Some(p) = &v.push_source {
            if let Some(other) = self.views.iter().find(|x| x.push_source.as_deref() == Some(p.get_ref())) {
                return Err(at.error(
                    p.span(),
                    format!(
                        "feature view '{name}': push source '{}' is already used by feature view '{}'",
                        p.get_ref(),
                        other.name
                    ),
                ));
            }
        }
        self.views.push(FeatureView {
            name: name.clone(),
            index: self.views.len(),
            entities: v.entities.iter().map(|e| e.get_ref().clone()).collect(),
            join_keys,
            ttl_us,
            features,
            online: v.online,
            source,
            stream,
            push_source,
            max_items,
            description: v.description.clone(),
            tags: v.tags.clone(),
        });
        Ok(())
    }

    fn add_service(&mut self, at: &Located, s: &raw::FeatureService) -> Result<()> {
        let name = s.name.get_ref();
        check_name(at, &s.name, "feature service")?;
        if self.services.iter().any(|x| &x.name == name) {
            return Err(at.error(s.name.span(), format!("feature service '{name}' is declared twice")));
        }
        let mut features: Vec<FeatureRef> = Vec::new();
        for r in &s.features {
            let refs = self
                .resolve_one(r.get_ref())
                .map_err(|m| at.error(r.span(), format!("feature service '{name}': {m}")))?;
            for f in refs {
                if features.contains(&f) {
                    return Err(
                        at.error(r.span(), format!("feature service '{name}': '{}' is listed twice", self.ref_name(f)))
                    );
                }
                features.push(f);
            }
        }
        self.services.push(FeatureService { name: name.clone(), features, description: s.description.clone() });
        Ok(())
    }

    pub fn view(&self, name: &str) -> Option<&FeatureView> {
        self.views.iter().find(|v| v.name == name)
    }

    pub fn service(&self, name: &str) -> Result<&FeatureService> {
        self.services.iter().find(|s| s.name == name).ok_or_else(|| {
            FeatureError::not_found(format!(
                "unknown feature service '{name}'; declared services are {}",
                list(self.services.iter().map(|s| s.name.as_str()))
            ))
        })
    }

    /// The view a push source name (or, failing that, a view name) stands for.
    pub fn push_target(&self, name: &str) -> Result<&FeatureView> {
        self.views.iter().find(|v| v.push_source.as_deref() == Some(name)).or_else(|| self.view(name)).ok_or_else(
            || FeatureError::not_found(format!("unknown push source '{name}' (no feature view declares it)")),
        )
    }

    /// `view:feature` as written in requests.
    pub fn ref_name(&self, r: FeatureRef) -> String {
        let v = &self.views[r.view];
        format!("{}:{}", v.name, v.features[r.feature].name)
    }

    pub fn feature(&self, r: FeatureRef) -> &Feature {
        &self.views[r.view].features[r.feature]
    }

    /// Resolves feature references (`view:feature`, or `view` for all its features), in order.
    pub fn resolve(&self, refs: &[impl AsRef<str>]) -> Result<Vec<FeatureRef>> {
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            out.extend(self.resolve_one(r.as_ref()).map_err(FeatureError::NotFound)?);
        }
        Ok(out)
    }

    fn resolve_one(&self, r: &str) -> Result<Vec<FeatureRef>, String> {
        let (view_name, feature) = match r.split_once(':') {
            Some((v, f)) => (v, Some(f)),
            None => (r, None),
        };
        let view = self.view(view_name).ok_or_else(|| {
            format!(
                "unknown feature view '{view_name}' in '{r}'; declared views are {}",
                list(self.views.iter().map(|v| v.name.as_str()))
            )
        })?;
        match feature {
            None => Ok((0..view.features.len()).map(|feature| FeatureRef { view: view.index, feature }).collect()),
            Some(f) => {
                let feature = view.feature_index(f).ok_or_else(|| {
                    format!(
                        "feature view '{view_name}' has no feature '{f}'; it has {}",
                        list(view.features.iter().map(|x| x.name.as_str()))
                    )
                })?;
                Ok(vec![FeatureRef { view: view.index, feature }])
            }
        }
    }
}

/// A file being read, for error positions.
struct Located<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Located<'_> {
    fn error(&self, span: Range<usize>, message: String) -> FeatureError {
        if span.start == 0 && span.end == 0 {
            return FeatureError::Definition(format!("{}: {message}", self.path.display()));
        }
        let line = self.text[..span.start.min(self.text.len())].matches('\n').count() + 1;
        FeatureError::Definition(format!("{}:{line}: {message}", self.path.display()))
    }
}

fn check_name(at: &Located, name: &toml::Spanned<String>, what: &str) -> Result<()> {
    let n = name.get_ref();
    let ok = !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(at.error(name.span(), format!("{what} name '{n}' must be letters, digits, '_' or '-'")))
    }
}

pub(crate) fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<String> = names.map(|n| format!("'{n}'")).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
