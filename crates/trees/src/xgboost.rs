//! XGBoost models: JSON (`save_model("m.json")`) and UBJSON (`.ubj`), the
//! formats XGBoost itself writes since 1.0 / 1.6, for the `gbtree` and `dart`
//! boosters.

use crate::forest::{check_outputs, lt_to_le, Forest, Node, Precision, Split, Tree};
use crate::objective::Objective;
use serde::Deserialize;

/// Parses an XGBoost model from JSON text or UBJSON bytes (told apart by the first byte).
pub fn parse(bytes: &[u8]) -> Result<Forest, String> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let model: ModelJson = match first {
        None => return Err("the file is empty".into()),
        Some(b'{') if looks_like_json(bytes) => {
            serde_json::from_slice(bytes).map_err(|e| format!("invalid XGBoost JSON: {e}"))?
        }
        Some(_) => {
            let value = crate::ubjson::parse(bytes)?;
            serde_json::from_value(value).map_err(|e| format!("invalid XGBoost UBJSON model: {e}"))?
        }
    };
    build(model.learner)
}

/// UBJSON objects also start with `{`; JSON follows it with whitespace, `"` or `}`.
fn looks_like_json(bytes: &[u8]) -> bool {
    let mut it = bytes.iter().skip_while(|b| b.is_ascii_whitespace()).skip(1);
    matches!(it.find(|b| !b.is_ascii_whitespace()), Some(b'"') | Some(b'}') | None)
}

#[derive(Deserialize)]
struct ModelJson {
    learner: LearnerJson,
}

#[derive(Deserialize)]
struct LearnerJson {
    #[serde(default)]
    feature_names: Vec<String>,
    gradient_booster: BoosterJson,
    learner_model_param: LearnerParamJson,
    objective: ObjectiveJson,
}

#[derive(Deserialize)]
struct LearnerParamJson {
    base_score: String,
    #[serde(default)]
    num_class: Option<String>,
    num_feature: String,
    #[serde(default)]
    num_target: Option<String>,
}

#[derive(Deserialize)]
struct ObjectiveJson {
    name: String,
}

#[derive(Deserialize)]
struct BoosterJson {
    name: String,
    #[serde(default)]
    model: Option<GbTreeJson>,
    /// DART: the wrapped gbtree booster and one weight per tree.
    #[serde(default)]
    gbtree: Option<Box<BoosterJson>>,
    #[serde(default)]
    weight_drop: Option<Vec<f32>>,
}

#[derive(Deserialize)]
struct GbTreeJson {
    tree_info: Vec<i64>,
    trees: Vec<TreeJson>,
}

#[derive(Deserialize)]
struct TreeJson {
    left_children: Vec<i64>,
    right_children: Vec<i64>,
    split_indices: Vec<i64>,
    split_conditions: Vec<f32>,
    default_left: Vec<BoolOrInt>,
    #[serde(default)]
    split_type: Vec<i64>,
    #[serde(default)]
    categories: Vec<i64>,
    #[serde(default)]
    categories_nodes: Vec<i64>,
    #[serde(default)]
    categories_segments: Vec<i64>,
    #[serde(default)]
    categories_sizes: Vec<i64>,
    #[serde(default)]
    tree_param: Option<TreeParamJson>,
}

#[derive(Deserialize)]
struct TreeParamJson {
    #[serde(default)]
    size_leaf_vector: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum BoolOrInt {
    B(bool),
    I(i64),
}

fn number<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.trim().parse().map_err(|_| format!("learner_model_param.{what} = {s:?} is not a number"))
}

/// base_score: "5E-1" (XGBoost < 3.1) or "[5E-1]" / "[a,b,c]" (a vector, per output).
fn base_scores(s: &str) -> Result<Vec<f32>, String> {
    let inner = s.trim().trim_start_matches('[').trim_end_matches(']');
    inner.split(',').map(|p| number::<f32>(p, "base_score")).collect()
}

fn build(learner: LearnerJson) -> Result<Forest, String> {
    let p = &learner.learner_model_param;
    let num_features: usize = number(&p.num_feature, "num_feature")?;
    let num_class: usize = p.num_class.as_deref().map(|s| number(s, "num_class")).transpose()?.unwrap_or(0);
    let num_target: usize = p.num_target.as_deref().map(|s| number(s, "num_target")).transpose()?.unwrap_or(1);
    check_outputs(num_class, "num_class")?;
    check_outputs(num_target, "num_target")?;
    let num_groups = num_class.max(num_target).max(1);
    let (objective, to_margin) = Objective::xgboost(&learner.objective.name)?;

    let scores = base_scores(&p.base_score)?;
    let base_margin: Vec<f64> = match scores.len() {
        1 => vec![f64::from(to_margin(scores[0])); num_groups],
        n if n == num_groups => scores.iter().map(|s| f64::from(to_margin(*s))).collect(),
        n => return Err(format!("base_score has {n} values for {num_groups} outputs")),
    };

    let booster = learner.gradient_booster;
    let (gbtree, weights) = match booster.name.as_str() {
        "gbtree" => (booster.model.ok_or("gbtree booster without a model")?, None),
        "dart" => {
            let inner = booster.gbtree.ok_or("dart booster without its gbtree")?;
            let model = inner.model.ok_or("dart booster without a model")?;
            (model, Some(booster.weight_drop.ok_or("dart booster without weight_drop")?))
        }
        "gblinear" => return Err("gblinear (linear booster) models are not supported; only tree boosters".into()),
        other => return Err(format!("unknown booster '{other}' (expected gbtree or dart)")),
    };
    if gbtree.tree_info.len() != gbtree.trees.len() {
        return Err(format!("{} trees but tree_info has {} entries", gbtree.trees.len(), gbtree.tree_info.len()));
    }
    if let Some(w) = &weights {
        if w.len() != gbtree.trees.len() {
            return Err(format!("dart weight_drop has {} weights for {} trees", w.len(), gbtree.trees.len()));
        }
    }
    let mut trees = Vec::with_capacity(gbtree.trees.len());
    for (t, tree) in gbtree.trees.iter().enumerate() {
        let weight = weights.as_ref().map(|w| w[t]);
        trees.push(build_tree(tree, weight).map_err(|e| format!("tree {t}: {e}"))?);
    }
    let tree_group = gbtree
        .tree_info
        .iter()
        .map(|g| u32::try_from(*g).map_err(|_| format!("tree_info has a negative group {g}")))
        .collect::<Result<Vec<_>, _>>()?;
    let forest = Forest {
        library: "xgboost",
        num_features,
        num_groups,
        trees,
        tree_group,
        base_margin,
        average_over: None,
        precision: Precision::F32,
        objective,
        feature_names: learner.feature_names,
    };
    forest.validate()?;
    Ok(forest)
}

fn build_tree(t: &TreeJson, weight: Option<f32>) -> Result<Tree, String> {
    let n = t.left_children.len();
    if let Some(size) = t.tree_param.as_ref().and_then(|p| p.size_leaf_vector.as_deref()) {
        if number::<usize>(size, "size_leaf_vector")? > 1 {
            return Err("multi-output trees (multi_strategy=multi_output_tree) are not supported".into());
        }
    }
    let lens = [
        ("right_children", t.right_children.len()),
        ("split_indices", t.split_indices.len()),
        ("split_conditions", t.split_conditions.len()),
        ("default_left", t.default_left.len()),
    ];
    for (name, len) in lens {
        if len != n {
            return Err(format!("left_children has {n} entries but {name} has {len}"));
        }
    }
    if !t.split_type.is_empty() && t.split_type.len() != n {
        return Err(format!("left_children has {n} entries but split_type has {}", t.split_type.len()));
    }
    let cats = categories(t, n)?;
    let child = |c: i64| u32::try_from(c).ok().filter(|c| (*c as usize) < n);
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let value = t.split_conditions[i];
        if t.left_children[i] == -1 {
            let value = match weight {
                Some(w) => w * value,
                None => value,
            };
            nodes.push(Node::Leaf { value: f64::from(value), linear: None });
            continue;
        }
        let (Some(left), Some(right)) = (child(t.left_children[i]), child(t.right_children[i])) else {
            return Err(format!(
                "node {i}: children {} / {} out of range ({n} nodes)",
                t.left_children[i], t.right_children[i]
            ));
        };
        let feature = u32::try_from(t.split_indices[i]).map_err(|_| format!("node {i}: negative split index"))?;
        let default_left = match t.default_left[i] {
            BoolOrInt::B(b) => b,
            BoolOrInt::I(v) => v != 0,
        };
        let split = match t.split_type.get(i).copied().unwrap_or(0) {
            0 => Split::Le(lt_to_le(value)),
            1 => Split::CatInRight(
                cats.get(&i).cloned().ok_or_else(|| format!("node {i}: categorical split without categories"))?,
            ),
            other => return Err(format!("node {i}: unknown split_type {other}")),
        };
        nodes.push(Node::Split { feature, split, default_left, left, right });
    }
    Ok(Tree { nodes })
}

/// Categorical splits: node → bitset of the categories that go right.
fn categories(t: &TreeJson, n: usize) -> Result<std::collections::HashMap<usize, Vec<u32>>, String> {
    let k = t.categories_nodes.len();
    if t.categories_segments.len() != k || t.categories_sizes.len() != k {
        return Err("categories_nodes, categories_segments and categories_sizes differ in length".into());
    }
    let mut out = std::collections::HashMap::new();
    for j in 0..k {
        let node =
            usize::try_from(t.categories_nodes[j]).ok().filter(|v| *v < n).ok_or("categories_nodes out of range")?;
        let start = usize::try_from(t.categories_segments[j]).map_err(|_| "negative categories segment")?;
        let size = usize::try_from(t.categories_sizes[j]).map_err(|_| "negative categories size")?;
        let cats = start
            .checked_add(size)
            .and_then(|end| t.categories.get(start..end))
            .ok_or("categories segment out of range")?;
        let mut bits: Vec<u32> = Vec::new();
        for &c in cats {
            let c =
                u32::try_from(c).ok().filter(|c| *c < (1 << 24)).ok_or_else(|| format!("category {c} out of range"))?;
            let word = (c / 32) as usize;
            if bits.len() <= word {
                bits.resize(word + 1, 0);
            }
            bits[word] |= 1 << (c % 32);
        }
        out.insert(node, bits);
    }
    Ok(out)
}
