//! The library-neutral form every tree model is parsed into: trees of split
//! and leaf nodes, the output group each tree adds to, the base margin and the
//! objective that turns margins into predictions.
//!
//! Split semantics are normalised here so the predictors need only one rule
//! per split kind: numeric splits send `x <= threshold` left (XGBoost's
//! `x < t` becomes `x <= next_down(t)`; LightGBM's double thresholds are
//! rounded down to f32, exact for f32 inputs), and missing values (NaN) take
//! the node's default direction.

use crate::objective::Objective;

/// The most outputs (classes or targets) a model may declare: far above any real model, and a
/// bound on what a header's count can make a loader allocate before the trees are read.
pub const MAX_OUTPUTS: usize = 1 << 16;

/// Refuses an output count no real model has (`what` names the header field).
pub fn check_outputs(n: usize, what: &str) -> Result<(), String> {
    if n > MAX_OUTPUTS {
        return Err(format!("{what} is {n}; at most {MAX_OUTPUTS} classes or targets are supported"));
    }
    Ok(())
}

/// How a split node decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Split {
    /// Left when `x <= threshold`; NaN goes the default direction.
    Le(f32),
    /// LightGBM missing type "Zero": NaN and |x| <= 1e-35 go the default
    /// direction, otherwise left when `x <= threshold`.
    ZeroAsMissing(f32),
    /// XGBoost categorical: NaN goes the default direction; a valid category
    /// in the set goes right; anything else (not in the set, negative,
    /// too large) goes left.
    CatInRight(Vec<u32>),
    /// LightGBM categorical: NaN and negative values go right; a category in
    /// the bitset goes left; anything else right.
    CatInLeft(Vec<u32>),
}

/// A linear model in a leaf (LightGBM `linear_tree`): `constant + Σ coeff·x[feature]`;
/// when any of its features is NaN the leaf's plain value is used instead.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LinearLeaf {
    pub constant: f64,
    pub features: Vec<u32>,
    pub coefficients: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Split { feature: u32, split: Split, default_left: bool, left: u32, right: u32 },
    Leaf { value: f64, linear: Option<LinearLeaf> },
}

/// One tree; node 0 is the root.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

/// Arithmetic the library uses to add tree outputs (results match it bit for bit
/// only when we add in the same precision and order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// XGBoost: f32 sums starting from the base margin, in tree order.
    F32,
    /// LightGBM: f64 sums in tree order.
    F64,
}

/// A whole ensemble.
#[derive(Debug, Clone)]
pub struct Forest {
    /// Which library the model came from (for messages and metadata).
    pub library: &'static str,
    pub num_features: usize,
    /// Output groups (classes for multiclass, targets, else 1).
    pub num_groups: usize,
    pub trees: Vec<Tree>,
    /// Output group of each tree.
    pub tree_group: Vec<u32>,
    /// Margin every group starts from.
    pub base_margin: Vec<f64>,
    /// Predictions divide the summed margin by this before the transform (LightGBM
    /// random forest `average_output`; its raw scores stay unaveraged).
    pub average_over: Option<f64>,
    pub precision: Precision,
    pub objective: Objective,
    /// Feature names when the model file carries them.
    pub feature_names: Vec<String>,
}

/// The threshold `t'` with `x <= t'` ⇔ `x < t` for every f32 `x` (XGBoost's rule).
pub fn lt_to_le(t: f32) -> f32 {
    if t.is_nan() {
        t
    } else {
        t.next_down()
    }
}

/// The largest f32 not above `t`: `x <= result` ⇔ `x <= t` for every f32 `x` (LightGBM's f64 thresholds).
pub fn f64_to_le(t: f64) -> f32 {
    let f = t as f32;
    if f64::from(f) > t {
        f.next_down()
    } else {
        f
    }
}

impl Tree {
    /// Depth of the deepest leaf (a single leaf has depth 0).
    pub fn depth(&self) -> usize {
        let mut max = 0;
        let mut stack = vec![(0u32, 0usize)];
        while let Some((i, d)) = stack.pop() {
            match &self.nodes[i as usize] {
                Node::Leaf { .. } => max = max.max(d),
                Node::Split { left, right, .. } => {
                    stack.push((*left, d + 1));
                    stack.push((*right, d + 1));
                }
            }
        }
        max
    }
}

impl Forest {
    /// Checks the structure (children in range, acyclic, features in range,
    /// groups in range) so prediction can never index out of bounds or loop.
    pub fn validate(&self) -> Result<(), String> {
        if self.num_groups == 0 {
            return Err("the model has no outputs (0 classes/targets)".into());
        }
        if self.tree_group.len() != self.trees.len() {
            return Err(format!(
                "{} trees but {} tree group entries (tree_info)",
                self.trees.len(),
                self.tree_group.len()
            ));
        }
        if self.base_margin.len() != self.num_groups {
            return Err(format!("{} base margins for {} outputs", self.base_margin.len(), self.num_groups));
        }
        for (t, tree) in self.trees.iter().enumerate() {
            let g = self.tree_group[t];
            if g as usize >= self.num_groups {
                return Err(format!("tree {t}: output group {g} but the model has {} outputs", self.num_groups));
            }
            if tree.nodes.is_empty() {
                return Err(format!("tree {t} has no nodes"));
            }
            // Every node reachable exactly once from the root: a tree, no cycles, no sharing.
            let mut seen = vec![false; tree.nodes.len()];
            let mut stack = vec![0u32];
            while let Some(i) = stack.pop() {
                let Some(node) = tree.nodes.get(i as usize) else {
                    return Err(format!("tree {t}: child index {i} is out of range ({} nodes)", tree.nodes.len()));
                };
                if std::mem::replace(&mut seen[i as usize], true) {
                    return Err(format!("tree {t}: node {i} is reached twice (the child arrays do not form a tree)"));
                }
                match node {
                    Node::Split { feature, left, right, split, .. } => {
                        if *feature as usize >= self.num_features {
                            return Err(format!(
                                "tree {t} node {i}: split on feature {feature} but the model has {} features",
                                self.num_features
                            ));
                        }
                        if let Split::Le(x) | Split::ZeroAsMissing(x) = split {
                            if x.is_nan() {
                                return Err(format!("tree {t} node {i}: threshold is NaN"));
                            }
                        }
                        stack.push(*left);
                        stack.push(*right);
                    }
                    Node::Leaf { linear: Some(l), .. } => {
                        if l.features.len() != l.coefficients.len() {
                            return Err(format!("tree {t} node {i}: linear leaf has mismatched features/coefficients"));
                        }
                        if let Some(f) = l.features.iter().find(|f| **f as usize >= self.num_features) {
                            return Err(format!("tree {t} node {i}: linear leaf uses feature {f} out of range"));
                        }
                    }
                    Node::Leaf { .. } => {}
                }
            }
        }
        Ok(())
    }
}
