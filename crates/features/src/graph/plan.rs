//! `graph.toml`: parsed and checked against the feature repository; every error names the file
//! and line.

use crate::definitions::{FeatureRef, Registry};
use crate::error::FeatureError;
use crate::value::ValueType;
use serde::Deserialize;
use std::path::Path;
use toml::Spanned;

pub const FILE_NAME: &str = "graph.toml";

/// The most nodes one target's neighbourhood may hold (the product of the fan-outs, summed
/// over the hops): a bound on the work and memory of one request.
pub const MAX_NODES_PER_TARGET: usize = 100_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    node: Spanned<String>,
    edges: Spanned<Vec<Spanned<String>>>,
    hops: Spanned<Vec<i64>>,
    sample: Option<Spanned<String>>,
    seed: Option<Spanned<i64>>,
    features: Spanned<Vec<Spanned<String>>>,
    missing: Option<Spanned<toml::Value>>,
    layout: Option<Spanned<String>>,
}

/// How a node's neighbours are chosen when it has more than the hop's fan-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// The newest edges first (by item time in append views, list order otherwise).
    Newest,
    /// A uniform sample without replacement, the same for the same node, hop and seed.
    Uniform { seed: u64 },
}

/// How the neighbourhood is laid out in the model's inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Dense per-hop tensors, batched on the first dimension: `x0` `[B, F]`, `x1` `[B, k1, F]`,
    /// `x2` `[B, k1, k2, F]`, ... and `mask1` `[B, k1]`, `mask2` `[B, k1, k2]` (1 where a
    /// neighbour is, 0 in padding).
    Tree,
    /// A node feature matrix `x` `[N, F]` (the targets first, then each distinct node in the
    /// order met), `edge_index` `[2, E]` (source = neighbour, target = the node it was sampled
    /// for, as PyTorch Geometric's message passing reads it) and `target_index` `[B]`.
    EdgeIndex,
}

/// A model's graph inputs, checked against the feature repository.
#[derive(Debug, Clone)]
pub struct GraphPlan {
    /// The node entity's join key: the request input that names the target nodes.
    pub key: String,
    pub key_type: ValueType,
    /// List features holding neighbour keys, of views keyed by the node entity alone.
    pub edges: Vec<FeatureRef>,
    /// Fan-out per hop.
    pub hops: Vec<usize>,
    pub sampling: Sampling,
    /// Numeric node features, of views keyed by the node entity alone, in column order.
    pub features: Vec<FeatureRef>,
    pub missing: f64,
    pub layout: Layout,
}

impl GraphPlan {
    /// Parses `text` (the contents of `path`) against `registry`.
    pub fn parse(path: &Path, text: &str, registry: &Registry) -> Result<Self, FeatureError> {
        let file = path.display();
        let raw: Raw = toml::from_str(text)
            .map_err(|e| FeatureError::Definition(format!("{file}: {}", e.to_string().trim_end())))?;
        let at = |span: std::ops::Range<usize>, m: String| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            FeatureError::Definition(format!("{file}:{line}: {m}"))
        };
        let entity = registry.entities.iter().find(|e| &e.name == raw.node.get_ref()).ok_or_else(|| {
            at(
                raw.node.span(),
                format!(
                    "node: unknown entity '{}'; declared entities are {}",
                    raw.node.get_ref(),
                    crate::definitions::list(registry.entities.iter().map(|e| e.name.as_str()))
                ),
            )
        })?;
        let keyed_by_node = |f: FeatureRef| {
            let v = &registry.views[f.view];
            v.join_keys.len() == 1 && v.join_keys[0].0 == entity.join_key
        };
        let mut edges = Vec::new();
        for e in raw.edges.get_ref() {
            let refs = registry.resolve(&[e.get_ref()]).map_err(|m| at(e.span(), format!("edges: {m}")))?;
            for f in refs {
                let name = registry.ref_name(f);
                if !keyed_by_node(f) {
                    return Err(at(
                        e.span(),
                        format!("edges: '{name}' is in a view not keyed by '{}' alone", entity.join_key),
                    ));
                }
                let dtype = registry.feature(f).dtype;
                let fits = match (dtype.element(), entity.value_type) {
                    (Some(ValueType::Int64 | ValueType::Int32), ValueType::Int64 | ValueType::Int32) => true,
                    (Some(item), key) => item == key,
                    (None, _) => false,
                };
                if !fits {
                    return Err(at(
                        e.span(),
                        format!(
                            "edges: '{name}' is {dtype}; neighbours of '{}' ({}) need a list of {} keys",
                            entity.name, entity.value_type, entity.value_type
                        ),
                    ));
                }
                edges.push(f);
            }
        }
        if edges.is_empty() {
            return Err(at(raw.edges.span(), "edges: name at least one list feature of neighbour keys".into()));
        }
        let mut hops = Vec::new();
        for h in raw.hops.get_ref() {
            if !(1..=1000).contains(h) {
                return Err(at(raw.hops.span(), format!("hops: a fan-out of {h}; each must be between 1 and 1000")));
            }
            hops.push(*h as usize);
        }
        if hops.is_empty() || hops.len() > 4 {
            return Err(at(raw.hops.span(), "hops: give the fan-out of 1 to 4 hops, such as [10, 5]".into()));
        }
        let nodes = nodes_per_target(&hops);
        if nodes > MAX_NODES_PER_TARGET {
            return Err(at(
                raw.hops.span(),
                format!("hops: {nodes} nodes per target node; at most {MAX_NODES_PER_TARGET} are allowed"),
            ));
        }
        let sampling = match raw.sample.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("newest") => {
                if let Some(s) = &raw.seed {
                    return Err(at(s.span(), "seed: only sample = \"uniform\" takes a seed".into()));
                }
                Sampling::Newest
            }
            Some("uniform") => Sampling::Uniform { seed: raw.seed.as_ref().map_or(0, |s| *s.get_ref() as u64) },
            Some(other) => {
                let span = raw.sample.as_ref().map(|s| s.span()).unwrap_or(0..0);
                return Err(at(span, format!("sample: '{other}' is not a sampling rule (newest or uniform)")));
            }
        };
        let mut features = Vec::new();
        for f in raw.features.get_ref() {
            let refs = registry.resolve(&[f.get_ref()]).map_err(|m| at(f.span(), format!("features: {m}")))?;
            for r in refs {
                let name = registry.ref_name(r);
                if !keyed_by_node(r) {
                    return Err(at(
                        f.span(),
                        format!("features: '{name}' is in a view not keyed by '{}' alone", entity.join_key),
                    ));
                }
                let dtype = registry.feature(r).dtype;
                if !dtype.is_numeric() {
                    return Err(at(f.span(), format!("features: '{name}' is {dtype}; node features must be numbers")));
                }
                features.push(r);
            }
        }
        if features.is_empty() {
            return Err(at(raw.features.span(), "features: name at least one numeric node feature".into()));
        }
        let missing = match raw.missing.as_ref().map(|m| (m.span(), m.get_ref())) {
            None => 0.0,
            Some((_, toml::Value::Float(f))) => *f,
            Some((_, toml::Value::Integer(i))) => *i as f64,
            Some((_, toml::Value::String(s))) if s.eq_ignore_ascii_case("nan") => f64::NAN,
            Some((span, other)) => return Err(at(span, format!("missing: a number or \"nan\", not {other}"))),
        };
        let layout = match raw.layout.as_ref().map(|l| l.get_ref().as_str()) {
            None | Some("tree") => Layout::Tree,
            Some("edge_index") => Layout::EdgeIndex,
            Some(other) => {
                let span = raw.layout.as_ref().map(|s| s.span()).unwrap_or(0..0);
                return Err(at(span, format!("layout: '{other}' is not a layout (tree or edge_index)")));
            }
        };
        Ok(Self {
            key: entity.join_key.clone(),
            key_type: entity.value_type,
            edges,
            hops,
            sampling,
            features,
            missing,
            layout,
        })
    }

    /// The names of the model inputs this plan fills.
    pub fn input_names(&self) -> Vec<String> {
        match self.layout {
            Layout::Tree => (0..=self.hops.len())
                .map(|h| format!("x{h}"))
                .chain((1..=self.hops.len()).map(|h| format!("mask{h}")))
                .collect(),
            Layout::EdgeIndex => vec!["x".into(), "edge_index".into(), "target_index".into()],
        }
    }
}

/// Nodes of one target's neighbourhood with these fan-outs, the target included.
pub fn nodes_per_target(hops: &[usize]) -> usize {
    let mut level = 1usize;
    let mut total = 1usize;
    for k in hops {
        level = level.saturating_mul(*k);
        total = total.saturating_add(level);
    }
    total
}
