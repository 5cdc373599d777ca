//! LightGBM text models (`booster.save_model("model.txt")`): header keys, then
//! `Tree=i` blocks of `key=value` lines, until `end of trees`.

use crate::forest::{check_outputs, f64_to_le, Forest, LinearLeaf, Node, Precision, Split, Tree};
use crate::objective::Objective;
use std::collections::HashMap;

const CATEGORICAL: i64 = 1;
const DEFAULT_LEFT: i64 = 2;

pub fn parse(text: &str) -> Result<Forest, String> {
    let mut lines = text.lines().enumerate().peekable();
    let first = lines.peek().map(|(_, l)| l.trim()).unwrap_or("");
    if first != "tree" {
        return Err(format!("not a LightGBM text model (first line is {first:?}, expected \"tree\")"));
    }
    let mut header: HashMap<&str, &str> = HashMap::new();
    let mut flags: Vec<&str> = Vec::new();
    let mut blocks: Vec<(usize, HashMap<&str, &str>)> = Vec::new();
    let mut ended = false;
    for (no, line) in lines {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "end of trees" {
            ended = true;
            break;
        }
        if let Some(id) = line.strip_prefix("Tree=") {
            let _: usize = id.parse().map_err(|_| format!("line {}: bad tree header {line:?}", no + 1))?;
            blocks.push((no + 1, HashMap::new()));
            continue;
        }
        let target = match blocks.last_mut() {
            Some((_, map)) => map,
            None => &mut header,
        };
        match line.split_once('=') {
            Some((k, v)) => {
                target.insert(k, v);
            }
            None if blocks.is_empty() => flags.push(line),
            None => return Err(format!("line {}: expected key=value inside a tree, found {line:?}", no + 1)),
        }
    }
    if !ended {
        return Err("the model is truncated: no \"end of trees\" line".into());
    }
    let get = |k: &str| header.get(k).copied().ok_or_else(|| format!("header has no {k}="));
    let num_class: usize = parse_num(get("num_class")?, "num_class")?;
    let per_iteration: usize = parse_num(get("num_tree_per_iteration")?, "num_tree_per_iteration")?;
    let max_feature_idx: i64 = parse_num(get("max_feature_idx")?, "max_feature_idx")?;
    let num_features = usize::try_from(max_feature_idx + 1).map_err(|_| "max_feature_idx is negative")?;
    let objective = Objective::lightgbm(header.get("objective").copied().unwrap_or("regression"), num_class)?;
    if per_iteration == 0 {
        return Err("num_tree_per_iteration is 0".into());
    }
    // One tree per class and iteration (multiclass), else one: never more than the classes.
    check_outputs(num_class, "num_class")?;
    if per_iteration > num_class.max(1) {
        return Err(format!("num_tree_per_iteration is {per_iteration}, more than num_class ({num_class})"));
    }
    let average = flags.contains(&"average_output");
    let feature_names =
        header.get("feature_names").map(|s| s.split(' ').map(str::to_string).collect()).unwrap_or_default();

    let mut trees = Vec::with_capacity(blocks.len());
    let mut tree_group = Vec::with_capacity(blocks.len());
    for (t, (line, block)) in blocks.iter().enumerate() {
        trees.push(parse_tree(block).map_err(|e| format!("Tree={t} (line {line}): {e}"))?);
        tree_group.push((t % per_iteration) as u32);
    }
    let iterations = trees.len() / per_iteration;
    let forest = Forest {
        library: "lightgbm",
        num_features,
        num_groups: per_iteration,
        trees,
        tree_group,
        base_margin: vec![0.0; per_iteration],
        average_over: (average && iterations > 0).then_some(iterations as f64),
        precision: Precision::F64,
        objective,
        feature_names,
    };
    forest.validate()?;
    Ok(forest)
}

fn parse_num<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.trim().parse().map_err(|_| format!("{what}: {s:?} is not a number"))
}

fn list<T: std::str::FromStr>(block: &HashMap<&str, &str>, key: &str, len: usize) -> Result<Vec<T>, String> {
    let s = block.get(key).copied().ok_or_else(|| format!("missing {key}="))?;
    let v: Vec<T> = s
        .split_whitespace()
        .map(|x| x.parse().map_err(|_| format!("{key}: {x:?} is not a number")))
        .collect::<Result<_, _>>()?;
    if v.len() != len {
        return Err(format!("{key} has {} values, expected {len}", v.len()));
    }
    Ok(v)
}

fn parse_tree(block: &HashMap<&str, &str>) -> Result<Tree, String> {
    let num_leaves: usize = parse_num(block.get("num_leaves").ok_or("missing num_leaves=")?, "num_leaves")?;
    if num_leaves == 0 {
        return Err("num_leaves is 0".into());
    }
    let leaf_value: Vec<f64> = list(block, "leaf_value", num_leaves)?;
    let linear = parse_linear(block, num_leaves)?;
    let leaf = |l: usize| Node::Leaf { value: leaf_value[l], linear: linear.as_ref().map(|v| v[l].clone()) };
    if num_leaves == 1 {
        return Ok(Tree { nodes: vec![leaf(0)] });
    }
    let splits = num_leaves - 1;
    let feature: Vec<u32> = list(block, "split_feature", splits)?;
    let threshold: Vec<f64> = list(block, "threshold", splits)?;
    let decision: Vec<i64> = list(block, "decision_type", splits)?;
    let left: Vec<i64> = list(block, "left_child", splits)?;
    let right: Vec<i64> = list(block, "right_child", splits)?;
    let num_cat: usize = parse_num(block.get("num_cat").copied().unwrap_or("0"), "num_cat")?;
    let (boundaries, bits): (Vec<usize>, Vec<u32>) = if num_cat > 0 {
        let b: Vec<usize> = list(block, "cat_boundaries", num_cat + 1)?;
        let total = *b.last().unwrap_or(&0);
        (b, list(block, "cat_threshold", total)?)
    } else {
        (Vec::new(), Vec::new())
    };
    // Internal nodes first (0..splits), then leaves (splits..splits+num_leaves).
    let index = |c: i64| -> Result<u32, String> {
        let i = if c < 0 { splits as i64 + !c } else { c };
        u32::try_from(i)
            .ok()
            .filter(|i| (*i as usize) < splits + num_leaves)
            .ok_or_else(|| format!("child {c} out of range"))
    };
    let mut nodes = Vec::with_capacity(splits + num_leaves);
    for i in 0..splits {
        let d = decision[i];
        let default_left = d & DEFAULT_LEFT != 0;
        let missing = (d >> 2) & 3;
        let split = if d & CATEGORICAL != 0 {
            let c = threshold[i];
            let k = (c >= 0.0 && c.fract() == 0.0 && (c as usize) < num_cat)
                .then_some(c as usize)
                .ok_or_else(|| format!("node {i}: categorical threshold {c} is not a category set index"))?;
            let (a, b) = (boundaries[k], boundaries[k + 1]);
            let set = bits.get(a..b).ok_or_else(|| format!("node {i}: cat_boundaries out of range"))?;
            Split::CatInLeft(set.to_vec())
        } else {
            let t = f64_to_le(threshold[i]);
            match missing {
                0 => {
                    // None: NaN is read as 0.0 and compared.
                    let zero_goes_left = 0.0 <= threshold[i];
                    nodes.push(Node::Split {
                        feature: feature[i],
                        split: Split::Le(t),
                        default_left: zero_goes_left,
                        left: index(left[i])?,
                        right: index(right[i])?,
                    });
                    continue;
                }
                1 => Split::ZeroAsMissing(t),
                2 => Split::Le(t),
                m => return Err(format!("node {i}: unknown missing type {m} in decision_type {d}")),
            }
        };
        nodes.push(Node::Split {
            feature: feature[i],
            split,
            default_left,
            left: index(left[i])?,
            right: index(right[i])?,
        });
    }
    for l in 0..num_leaves {
        nodes.push(leaf(l));
    }
    Ok(Tree { nodes })
}

fn parse_linear(block: &HashMap<&str, &str>, num_leaves: usize) -> Result<Option<Vec<LinearLeaf>>, String> {
    if block.get("is_linear").map(|s| s.trim()) != Some("1") {
        return Ok(None);
    }
    let constants: Vec<f64> = list(block, "leaf_const", num_leaves)?;
    let counts: Vec<usize> = list(block, "num_features", num_leaves)?;
    let total: usize = counts.iter().sum();
    let words = |key: &str| -> Vec<&str> { block.get(key).map(|s| s.split_whitespace().collect()).unwrap_or_default() };
    let features = words("leaf_features");
    let coeffs = words("leaf_coeff");
    if features.len() != total || coeffs.len() != total {
        return Err(format!(
            "linear tree: num_features sums to {total} but leaf_features has {} and leaf_coeff {}",
            features.len(),
            coeffs.len()
        ));
    }
    let mut out = Vec::with_capacity(num_leaves);
    let mut at = 0;
    for l in 0..num_leaves {
        let n = counts[l];
        let f = features[at..at + n].iter().map(|x| parse_num(x, "leaf_features")).collect::<Result<_, _>>()?;
        let c = coeffs[at..at + n].iter().map(|x| parse_num(x, "leaf_coeff")).collect::<Result<_, _>>()?;
        out.push(LinearLeaf { constant: constants[l], features: f, coefficients: c });
        at += n;
    }
    Ok(Some(out))
}
