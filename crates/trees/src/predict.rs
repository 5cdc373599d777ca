//! Prediction kernels. A forest is compiled once, at load, into one of two layouts:
//!
//! - **Complete** (the fast path): every tree padded to the forest's depth `D` as a
//!   complete binary tree in breadth-first arrays of 8-byte nodes (f32 threshold,
//!   feature index with the default-left bit), so a row's path is `D` branch-free
//!   steps `i = 2i + 1 + go_right`. Rows are evaluated in blocks: a batch of
//!   lanes (rows × trees) walks down one level at a time, so the loads of
//!   independent lanes overlap instead of waiting on each other. Used when every
//!   split is numeric with NaN-or-none missing handling and `D` is small.
//! - **General**: the trees as they are (deep, unbalanced, leaf-wise), with every
//!   split kind (categorical sets, LightGBM zero-as-missing, linear leaves). Without
//!   linear leaves, rows walk a tree together as lanes too: 12-byte nodes, leaves
//!   that loop to themselves so a lane that arrived waits without a branch, numeric
//!   splits decided branch-free and the other kinds by a call; a tree's walk ends
//!   when every lane stands on a leaf. With linear leaves, row by row.
//!
//! Sums follow the library's precision and tree order exactly: for each row the
//! trees of a group are added one after the other (f32 for XGBoost, f64 for
//! LightGBM), starting from the base margin.

use crate::cores::Lease;
use crate::forest::{Forest, LinearLeaf, Node, Precision, Split};

/// Deepest tree the complete layout accepts (2^D leaves per tree).
const MAX_COMPLETE_DEPTH: usize = 10;
/// Lanes (row × tree pairs) walked together.
const LANES: usize = 32;
/// Rows per block: their features stay in cache while all trees pass over them (a multiple of LANES).
const BLOCK_ROWS: usize = 32;
/// A batch is split over threads only when each gets at least this many rows.
const MIN_ROWS_PER_THREAD: usize = 128;
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
    /// The lane walk (empty when a leaf is linear: row-by-row traversal then): its
    /// nodes, renumbered so that a node's children are adjacent, each tree's root and
    /// depth, and per walk node its value (leaves) and its index in `nodes` (for the
    /// split kinds decided by a call).
    walk: Vec<WNode>,
    walk_roots: Vec<u32>,
    depths: Vec<u32>,
    values: Vec<f64>,
    origin: Vec<u32>,
}

/// A node of the lane walk. `bits`: the feature, and the flags below. The children
/// are `left` and `left + 1`, so a step is `i = left + went_right`, without a branch.
#[derive(Clone, Copy)]
struct WNode {
    threshold: f32,
    bits: u32,
    left: u32,
}

const W_DEFAULT_LEFT: u32 = 1 << 31;
/// Not a plain `x <= threshold` split: decided by [`General::goes_left`].
const W_SPECIAL: u32 = 1 << 30;
const W_LEAF: u32 = 1 << 29;
const W_FEATURE: u32 = W_LEAF - 1;
/// Rows whose features stay in cache while every tree passes over them in lanes.
const WALK_BLOCK_ROWS: usize = 128;

// === impl Predictor ===

impl Predictor {
    pub fn new(forest: &Forest) -> Self {
        let depths = tree_depths(forest);
        let depth = depths.iter().max().copied().unwrap_or(0) as usize;
        let simple = forest.trees.iter().all(|t| {
            t.nodes.iter().all(|n| match n {
                Node::Split { split, .. } => matches!(split, Split::Le(_)),
                Node::Leaf { linear, .. } => linear.is_none(),
            })
        });
        let layout = if simple && depth <= MAX_COMPLETE_DEPTH {
            Layout::Complete(Complete::new(forest, depth))
        } else {
            Layout::General(General::new(forest, depths))
        };
        Self::with_layout(forest, layout)
    }

    /// The general layout whatever the forest, walked by lanes or (`lanes` false) row by
    /// row: for tests that hold every layout to the same answers.
    #[cfg(test)]
    pub(crate) fn general(forest: &Forest, lanes: bool) -> Self {
        let mut g = General::new(forest, tree_depths(forest));
        if !lanes {
            g.walk.clear();
        }
        Self::with_layout(forest, Layout::General(g))
    }

    fn with_layout(forest: &Forest, layout: Layout) -> Self {
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
    /// on up to `threads` threads, of which it uses the cores other batches leave idle.
    pub fn margins(&self, rows: &[f32], out: &mut [f64], threads: usize) {
        let n = out.len() / self.groups;
        debug_assert_eq!(rows.len(), n * self.features);
        // Below MIN_ROWS_PER_THREAD rows per thread, spawning costs more than it saves.
        let threads = threads.clamp(1, n.div_ceil(MIN_ROWS_PER_THREAD).max(1));
        if threads == 1 {
            return self.margins_serial(rows, out);
        }
        let lease = Lease::take(threads);
        let threads = lease.threads();
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
        let n = out.len() / g;
        let mut start = 0;
        while start < n {
            let count = BLOCK_ROWS.min(n - start);
            let x = &rows[start * f..(start + count) * f];
            let o = &mut out[start * g..(start + count) * g];
            // Dense rows (no NaN in the block) skip the missing-value test in every step.
            if x.iter().any(|v| v.is_nan()) {
                self.run_block::<S, true>(p, x, o);
            } else {
                self.run_block::<S, false>(p, x, o);
            }
            start += count;
        }
    }

    /// One block of rows (`x`, at most BLOCK_ROWS) into its margins `o`; `NAN`: whether
    /// any value of the block is NaN.
    fn run_block<S: Sum, const NAN: bool>(&self, p: &Predictor, x: &[f32], o: &mut [f64]) {
        let f = p.features;
        let g = p.groups;
        let internal = (1usize << self.depth) - 1;
        let trees = p.group.len();
        let count = o.len() / g;
        // Lanes: `per` trees × `rc` rows (lane l = tree l / rc, row l % rc). Large blocks
        // take one tree at a time over groups of LANES rows; a few rows (batch 1) take
        // LANES / rows trees at once. The lane tables are made once per block.
        let rc = count.min(LANES);
        let per = LANES / rc;
        let groups = count.div_ceil(rc);
        let mut lane_tree = [0usize; LANES];
        let mut lane_base = [0usize; LANES];
        let mut lane_row = [[0usize; LANES]; BLOCK_ROWS / LANES];
        let mut lane_off = [[0usize; LANES]; BLOCK_ROWS / LANES];
        for l in 0..per * rc {
            lane_tree[l] = l / rc;
            lane_base[l] = lane_tree[l] * internal;
            for q in 0..groups {
                lane_row[q][l] = q * rc + l % rc;
                lane_off[q][l] = lane_row[q][l] * f;
            }
        }
        let mut t0 = 0;
        while t0 < trees {
            let tc = per.min(trees - t0);
            let nodes = &self.nodes[t0 * internal..];
            for (rows, off) in lane_row[..groups].iter().zip(&lane_off[..groups]) {
                let rows_here = rc.min(count - rows[0]);
                // Every tree in the group has `rows_here` rows: lanes l < tc * rc with l % rc < rows_here.
                let m = if rows_here == rc { tc * rc } else { rows_here };
                let mut idx = [0u32; LANES];
                for _ in 0..self.depth {
                    for ((i, b), o) in idx[..m].iter_mut().zip(&lane_base[..m]).zip(&off[..m]) {
                        let node = nodes[b + *i as usize];
                        let v = x[o + (node.feature & FEATURE_MASK) as usize];
                        // Right when v > threshold, or v is NaN and missing goes right;
                        // bitwise (not short-circuit) so the step compiles without a branch.
                        let left = if NAN {
                            (v <= node.threshold) | (v.is_nan() & (node.feature >> 31 == 1))
                        } else {
                            v <= node.threshold
                        };
                        *i = 2 * *i + 1 + u32::from(!left);
                    }
                }
                for (l, i) in idx[..m].iter().enumerate() {
                    let t = t0 + lane_tree[l];
                    let leaf = self.leaves[t * (internal + 1) + *i as usize - internal];
                    S::add(&mut o[rows[l] * g + p.group[t] as usize], leaf);
                }
            }
            t0 += tc;
        }
    }
}

// === impl General ===

/// Each tree's depth, as the walks need it.
fn tree_depths(forest: &Forest) -> Vec<u32> {
    forest.trees.iter().map(|t| t.depth() as u32).collect()
}

impl General {
    /// `depths`: [`tree_depths`] of `forest`.
    fn new(forest: &Forest, depths: Vec<u32>) -> Self {
        let mut g = General {
            nodes: Vec::new(),
            roots: Vec::new(),
            leaves: Vec::new(),
            linear: Vec::new(),
            bits: Vec::new(),
            walk: Vec::new(),
            walk_roots: Vec::new(),
            depths,
            values: Vec::new(),
            origin: Vec::new(),
        };
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
        let lanes = forest.num_features > 0
            && g.linear.iter().all(Option::is_none)
            && g.nodes.iter().all(|n| n.feature <= W_FEATURE);
        if lanes {
            g.build_walk();
        }
        g
    }

    /// Lays the trees out for the lane walk: breadth first, children side by side.
    fn build_walk(&mut self) {
        for root in self.roots.clone() {
            self.walk_roots.push(self.walk.len() as u32);
            // (node in `nodes`, its place in `walk`)
            let mut queue = std::collections::VecDeque::from([(root, self.walk.len())]);
            self.push_walk(root);
            while let Some((src, at)) = queue.pop_front() {
                let n = self.nodes[src as usize];
                if let Kind::Leaf = n.kind {
                    // Loops to itself whichever way it goes: threshold +inf, NaN left.
                    self.walk[at] = WNode { threshold: f32::INFINITY, bits: W_LEAF | W_DEFAULT_LEFT, left: at as u32 };
                    self.values[at] = self.leaves[n.left as usize];
                    continue;
                }
                let mut bits = n.feature;
                if n.default_left {
                    bits |= W_DEFAULT_LEFT;
                }
                if !matches!(n.kind, Kind::Le) {
                    bits |= W_SPECIAL;
                }
                let left = self.walk.len();
                self.walk[at] = WNode { threshold: n.threshold, bits, left: left as u32 };
                self.push_walk(n.left);
                self.push_walk(n.right);
                queue.push_back((n.left, left));
                queue.push_back((n.right, left + 1));
            }
        }
    }

    fn push_walk(&mut self, origin: u32) {
        self.walk.push(WNode { threshold: 0.0, bits: 0, left: 0 });
        self.values.push(0.0);
        self.origin.push(origin);
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
            if let Kind::Leaf = n.kind {
                return n.left as usize;
            }
            i = if self.goes_left(n, x[n.feature as usize]) { n.left } else { n.right } as usize;
        }
    }

    /// Whether a split node sends value `v` left (any kind; a leaf: left).
    fn goes_left(&self, n: &GNode, v: f32) -> bool {
        match n.kind {
            Kind::Leaf => true,
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
        if !self.walk.is_empty() {
            return self.run_lanes::<S>(p, rows, out);
        }
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

    /// Rows in blocks; in each block every tree in turn, walked by lanes of rows.
    fn run_lanes<S: Sum>(&self, p: &Predictor, rows: &[f32], out: &mut [f64]) {
        let f = p.features;
        let g = p.groups;
        let n = out.len() / g;
        for start in (0..n).step_by(WALK_BLOCK_ROWS) {
            let count = WALK_BLOCK_ROWS.min(n - start);
            let x = &rows[start * f..(start + count) * f];
            let o = &mut out[start * g..(start + count) * g];
            // Each lane's row offset in `x`, per group of LANES rows: made once per block.
            let mut offsets = [[0usize; LANES]; WALK_BLOCK_ROWS / LANES];
            for (r, off) in offsets.iter_mut().flatten().enumerate().take(count) {
                *off = r * f;
            }
            for (t, root) in self.walk_roots.iter().enumerate() {
                let group = p.group[t] as usize;
                for (r0, off) in (0..count).step_by(LANES).zip(&offsets) {
                    let lanes = LANES.min(count - r0);
                    let mut idx = [*root; LANES];
                    let idx = &mut idx[..lanes];
                    for _ in 0..self.depths[t] {
                        let mut moving = false;
                        for (i, o) in idx.iter_mut().zip(&off[..lanes]) {
                            let w = self.walk[*i as usize];
                            let v = x[o + (w.bits & W_FEATURE) as usize];
                            // Bitwise, not short-circuit: a numeric split without a branch.
                            let mut left = (v <= w.threshold) | (v.is_nan() & (w.bits & W_DEFAULT_LEFT != 0));
                            if w.bits & W_SPECIAL != 0 {
                                left = self.goes_left(&self.nodes[self.origin[*i as usize] as usize], v);
                            }
                            moving |= w.bits & W_LEAF == 0;
                            *i = w.left + u32::from(!left);
                        }
                        if !moving {
                            break;
                        }
                    }
                    for (l, i) in idx.iter().enumerate() {
                        S::add(&mut o[(r0 + l) * g + group], self.values[*i as usize]);
                    }
                }
            }
        }
    }
}
