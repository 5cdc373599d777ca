//! Prediction kernels. A forest is compiled once, at load, into one of two layouts:
//!
//! - **Complete** (the fast path): every tree padded to the forest's depth `D` as a
//!   complete binary tree in breadth-first arrays of 8-byte nodes (f32 threshold,
//!   feature index with the default-left bit), so a row's path is `D` branch-free
//!   steps `i = 2i + 1 + go_right`. Rows are evaluated in blocks: a batch of
//!   lanes (rows × trees) walks down one level at a time, so the loads of
//!   independent lanes overlap instead of waiting on each other. Used when every
//!   split is numeric with NaN-or-none missing handling and `D` is small.
//! - **General**: node-by-node traversal with every split kind (categorical sets,
//!   LightGBM zero-as-missing, linear leaves), for the rest.
//!
//! Sums follow the library's precision and tree order exactly: for each row the
//! trees of a group are added one after the other (f32 for XGBoost, f64 for
//! LightGBM), starting from the base margin.

use crate::forest::{Forest, LinearLeaf, Node, Precision, Split};

/// Deepest tree the complete layout accepts (2^D leaves per tree).
const MAX_COMPLETE_DEPTH: usize = 10;
/// Lanes (row × tree pairs) walked together.
const LANES: usize = 32;
/// Rows per block: their features stay in L1 while all trees pass over them.
const BLOCK_ROWS: usize = 32;
const FEATURE_MASK: u32 = 0x7fff_ffff;
const ZERO_THRESHOLD: f64 = 1e-35f32 as f64;

/// A compiled forest, ready to predict margins.
pub struct Predictor {
    layout: Layout,
    groups: usize,
    features: usize,
    base: Vec<f64>,
    precision: Precision,
    group: Vec<u32>,
}

enum Layout {
    Complete(Complete),
    General(General),
}

#[derive(Clone, Copy, Default)]
struct CNode {
    threshold: f32,
    /// Feature index; the top bit is set when missing values go left.
    feature: u32,
}

struct Complete {
    depth: usize,
    nodes: Vec<CNode>,
    leaves: Vec<f64>,
}

#[derive(Clone, Copy)]
enum Kind {
    Le,
    ZeroAsMissing,
    CatInRight,
    CatInLeft,
    Leaf,
}

#[derive(Clone, Copy)]
struct GNode {
    kind: Kind,
    default_left: bool,
    feature: u32,
    threshold: f32,
    /// Children (node indices), or for a leaf: `left` = leaf index.
    left: u32,
    right: u32,
    /// Category bitset range in `General::bits`.
    bits: (u32, u32),
}

struct General {
    nodes: Vec<GNode>,
    roots: Vec<u32>,
    leaves: Vec<f64>,
    linear: Vec<Option<LinearLeaf>>,
    bits: Vec<u32>,
}

// === impl Predictor ===

impl Predictor {
    pub fn new(forest: &Forest) -> Self {
        let depth = forest.trees.iter().map(|t| t.depth()).max().unwrap_or(0);
        let simple = forest.trees.iter().all(|t| {
            t.nodes.iter().all(|n| match n {
                Node::Split { split, .. } => matches!(split, Split::Le(_)),
                Node::Leaf { linear, .. } => linear.is_none(),
            })
        });
        let layout = if simple && depth <= MAX_COMPLETE_DEPTH {
            Layout::Complete(Complete::new(forest, depth))
        } else {
            Layout::General(General::new(forest))
        };
        Self {
            layout,
            groups: forest.num_groups,
            features: forest.num_features,
            base: forest.base_margin.clone(),
            precision: forest.precision,
            group: forest.tree_group.clone(),
        }
    }

    /// Whether the branch-free complete layout is in use (for tests and logs).
    pub fn is_complete(&self) -> bool {
        matches!(self.layout, Layout::Complete(_))
    }

    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Margins of `rows` (row-major, `features` per row) into `out` (`groups` per row),
    /// on up to `threads` threads.
    pub fn margins(&self, rows: &[f32], out: &mut [f64], threads: usize) {
        let n = out.len() / self.groups;
        debug_assert_eq!(rows.len(), n * self.features);
        // Below a few blocks per thread, spawning costs more than it saves.
        let threads = threads.clamp(1, n.div_ceil(4 * BLOCK_ROWS).max(1));
        if threads == 1 {
            return self.margins_serial(rows, out);
        }
        let per = n.div_ceil(threads).div_ceil(BLOCK_ROWS) * BLOCK_ROWS;
        std::thread::scope(|s| {
            for (i, o) in out.chunks_mut(per * self.groups).enumerate() {
                let rows_here = o.len() / self.groups;
                let x = &rows[i * per * self.features..(i * per + rows_here) * self.features];
                s.spawn(move || self.margins_serial(x, o));
            }
        });
    }

    fn margins_serial(&self, rows: &[f32], out: &mut [f64]) {
        for o in out.chunks_mut(self.groups) {
            o.copy_from_slice(&self.base);
        }
        match (&self.layout, self.precision) {
            (Layout::Complete(c), Precision::F32) => c.run::<F32Sum>(self, rows, out),
            (Layout::Complete(c), Precision::F64) => c.run::<F64Sum>(self, rows, out),
            (Layout::General(g), Precision::F32) => g.run::<F32Sum>(self, rows, out),
            (Layout::General(g), Precision::F64) => g.run::<F64Sum>(self, rows, out),
        }
    }
}

/// How a leaf value is added to a running margin.
trait Sum {
    fn add(acc: &mut f64, v: f64);
}

/// XGBoost: the running sum is an f32.
struct F32Sum;
impl Sum for F32Sum {
    #[inline(always)]
    fn add(acc: &mut f64, v: f64) {
        *acc = f64::from(*acc as f32 + v as f32);
    }
}

struct F64Sum;
impl Sum for F64Sum {
    #[inline(always)]
    fn add(acc: &mut f64, v: f64) {
        *acc += v;
    }
}

// === impl Complete ===

impl Complete {
    fn new(forest: &Forest, depth: usize) -> Self {
        let internal = (1usize << depth) - 1;
        let mut nodes = vec![CNode::default(); internal * forest.trees.len()];
        let mut leaves = vec![0.0; (internal + 1) * forest.trees.len()];
        for (t, tree) in forest.trees.iter().enumerate() {
            let nodes = &mut nodes[t * internal..(t + 1) * internal];
            let leaves = &mut leaves[t * (internal + 1)..(t + 1) * (internal + 1)];
            // (source node, complete-layout position, level)
            let mut stack = vec![(0u32, 0usize, 0usize)];
            while let Some((src, pos, level)) = stack.pop() {
                match &tree.nodes[src as usize] {
                    Node::Split { feature, split: Split::Le(th), default_left, left, right } => {
                        nodes[pos] = CNode { threshold: *th, feature: feature | (u32::from(*default_left) << 31) };
                        stack.push((*left, 2 * pos + 1, level + 1));
                        stack.push((*right, 2 * pos + 2, level + 1));
                    }
                    Node::Leaf { value, .. } => {
                        // Pad below a shallow leaf: dummy splits that always go left (x <= +inf,
                        // NaN left), and the leaf value in every leaf slot underneath.
                        let mut first = pos;
                        let mut last = pos;
                        for _ in level..depth {
                            nodes[first..=last].fill(CNode { threshold: f32::INFINITY, feature: 1 << 31 });
                            first = 2 * first + 1;
                            last = 2 * last + 2;
                        }
                        for slot in &mut leaves[first - internal..=last - internal] {
                            *slot = *value;
                        }
                    }
                    Node::Split { .. } => unreachable!("complete layout only holds numeric splits"),
                }
            }
        }
        Self { depth, nodes, leaves }
    }

    fn run<S: Sum>(&self, p: &Predictor, rows: &[f32], out: &mut [f64]) {
        let f = p.features;
        let g = p.groups;
        let internal = (1usize << self.depth) - 1;
        let trees = p.group.len();
        let n = out.len() / g;
        let mut start = 0;
        while start < n {
            let count = BLOCK_ROWS.min(n - start);
            let x = &rows[start * f..(start + count) * f];
            let o = &mut out[start * g..(start + count) * g];
            // Lanes: `per` trees × `count` rows; lane l = tree (l / count), row (l % count).
            let per = (LANES / count).max(1);
            let lanes_rows = count.min(LANES);
            let mut t0 = 0;
            while t0 < trees {
                let tc = per.min(trees - t0);
                for r0 in (0..count).step_by(lanes_rows) {
                    let rc = lanes_rows.min(count - r0);
                    let m = tc * rc;
                    let mut idx = [0u32; LANES];
                    let mut base = [0usize; LANES];
                    let mut off = [0usize; LANES];
                    for (l, (b, o)) in base[..m].iter_mut().zip(&mut off[..m]).enumerate() {
                        *b = (t0 + l / rc) * internal;
                        *o = (r0 + l % rc) * f;
                    }
                    for _ in 0..self.depth {
                        for ((i, b), o) in idx[..m].iter_mut().zip(&base[..m]).zip(&off[..m]) {
                            let node = self.nodes[b + *i as usize];
                            let v = x[o + (node.feature & FEATURE_MASK) as usize];
                            // Right when v > threshold, or v is NaN and missing goes right;
                            // bitwise (not short-circuit) so the step compiles without a branch.
                            let left = (v <= node.threshold) | (v.is_nan() & (node.feature >> 31 == 1));
                            *i = 2 * *i + 1 + u32::from(!left);
                        }
                    }
                    for (l, i) in idx[..m].iter().enumerate() {
                        let t = t0 + l / rc;
                        let r = r0 + l % rc;
                        let leaf = self.leaves[t * (internal + 1) + *i as usize - internal];
                        S::add(&mut o[r * g + p.group[t] as usize], leaf);
                    }
                }
                t0 += tc;
            }
            start += count;
        }
    }
}

// === impl General ===

impl General {
    fn new(forest: &Forest) -> Self {
        let mut g =
            General { nodes: Vec::new(), roots: Vec::new(), leaves: Vec::new(), linear: Vec::new(), bits: Vec::new() };
        for tree in &forest.trees {
            let offset = g.nodes.len() as u32;
            g.roots.push(offset);
            for node in &tree.nodes {
                let n = match node {
                    Node::Leaf { value, linear } => {
                        g.leaves.push(*value);
                        g.linear.push(linear.clone());
                        let leaf = (g.leaves.len() - 1) as u32;
                        GNode {
                            kind: Kind::Leaf,
                            default_left: false,
                            feature: 0,
                            threshold: 0.0,
                            left: leaf,
                            right: leaf,
                            bits: (0, 0),
                        }
                    }
                    Node::Split { feature, split, default_left, left, right } => {
                        let (kind, threshold, bits) = match split {
                            Split::Le(t) => (Kind::Le, *t, (0, 0)),
                            Split::ZeroAsMissing(t) => (Kind::ZeroAsMissing, *t, (0, 0)),
                            Split::CatInRight(b) | Split::CatInLeft(b) => {
                                let start = g.bits.len() as u32;
                                g.bits.extend_from_slice(b);
                                let kind = if matches!(split, Split::CatInRight(_)) {
                                    Kind::CatInRight
                                } else {
                                    Kind::CatInLeft
                                };
                                (kind, 0.0, (start, b.len() as u32))
                            }
                        };
                        GNode {
                            kind,
                            default_left: *default_left,
                            feature: *feature,
                            threshold,
                            left: offset + left,
                            right: offset + right,
                            bits,
                        }
                    }
                };
                g.nodes.push(n);
            }
        }
        g
    }

    fn in_set(&self, bits: (u32, u32), category: f32) -> bool {
        let c = category as u64;
        let word = (c / 32) as usize;
        word < bits.1 as usize && self.bits[bits.0 as usize + word] & (1 << (c % 32)) != 0
    }

    /// The leaf index a row reaches in the tree rooted at `root`.
    fn leaf(&self, root: u32, x: &[f32]) -> usize {
        let mut i = root as usize;
        loop {
            let n = &self.nodes[i];
            let v = x[n.feature as usize];
            let left = match n.kind {
                Kind::Leaf => return n.left as usize,
                Kind::Le => {
                    if v.is_nan() {
                        n.default_left
                    } else {
                        v <= n.threshold
                    }
                }
                Kind::ZeroAsMissing => {
                    if v.is_nan() || f64::from(v).abs() <= ZERO_THRESHOLD {
                        n.default_left
                    } else {
                        v <= n.threshold
                    }
                }
                Kind::CatInRight => {
                    if v.is_nan() {
                        n.default_left
                    } else if !(0.0..16_777_216.0).contains(&v) {
                        true
                    } else {
                        !self.in_set(n.bits, v)
                    }
                }
                Kind::CatInLeft => {
                    let c = v.trunc();
                    !v.is_nan() && (0.0..2_147_483_648.0).contains(&c) && self.in_set(n.bits, c)
                }
            };
            i = if left { n.left } else { n.right } as usize;
        }
    }

    fn leaf_value(&self, leaf: usize, x: &[f32]) -> f64 {
        match &self.linear[leaf] {
            None => self.leaves[leaf],
            Some(l) => {
                let mut out = l.constant;
                for (f, c) in l.features.iter().zip(&l.coefficients) {
                    let v = x[*f as usize];
                    if v.is_nan() {
                        return self.leaves[leaf];
                    }
                    out += f64::from(v) * c;
                }
                out
            }
        }
    }

    fn run<S: Sum>(&self, p: &Predictor, rows: &[f32], out: &mut [f64]) {
        let f = p.features;
        let g = p.groups;
        for (r, o) in out.chunks_exact_mut(g).enumerate() {
            let x = &rows[r * f..(r + 1) * f];
            for (t, root) in self.roots.iter().enumerate() {
                let leaf = self.leaf(*root, x);
                S::add(&mut o[p.group[t] as usize], self.leaf_value(leaf, x));
            }
        }
    }
}
