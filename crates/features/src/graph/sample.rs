//! Building a graph model's inputs for a request: the k-hop neighbourhood of its target nodes
//! (one batched store read per hop, for every target at once), sampled, then the node features
//! (one more batched read) laid out as the plan says.
//!
//! Sampling, so that a reference outside Flotilla can reproduce it:
//! - A node's candidates are the items of its edge features, in the order the plan lists them,
//!   each list oldest first. Items older than their view's ttl are left out. A node with no
//!   more candidates than the fan-out keeps them all (in candidate order for `uniform`, newest
//!   first for `newest`); the rest of its slots are padding.
//! - `newest`: the candidates by item time (append views; a plain list's items all have the
//!   record's event time), newest first; equal times: the later candidate first.
//! - `uniform`: a partial Fisher–Yates shuffle of the candidate positions, drawing
//!   `j = i + next() % (n - i)` for `i = 0, 1, ...` from SplitMix64 whose state starts at
//!   `seed ^ fnv1a64(key) ^ (hop * 0x9E3779B97F4A7C15)`; `key` is the node's key as 8
//!   little-endian bytes (integer keys) or its bytes (string and bytes keys); hops count from 1.

use super::plan::{GraphPlan, Layout, Sampling};
use crate::definitions::FeatureView;
use crate::error::{FeatureError, Result};
use crate::feature_store::{now_us, FeatureStore};
use crate::record::{encode_key, EntityKey, Record};
use crate::value::Value;
use bytes::Bytes;
use flotilla_core::{DataType, Tensor};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a request's graph inputs spent their time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Reading edge lists and sampling, all hops.
    pub fetch: Duration,
    /// Reading node features and building the tensors.
    pub gather: Duration,
}

/// The sampled neighbourhood of a request's targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbourhood {
    /// `levels[h][i]`: the node in slot `i` of hop `h` (hop 0: the targets), `None` in padding.
    /// Slot `i` of hop `h` was sampled for slot `i / hops[h - 1]` of hop `h - 1`.
    pub levels: Vec<Vec<Option<EntityKey>>>,
}

/// The model inputs `plan` describes for `targets` (values of the node's join key), with node
/// features as `datatype` (FP32 or FP64).
pub async fn build(
    store: &FeatureStore,
    plan: &GraphPlan,
    targets: &[Value],
    datatype: DataType,
) -> Result<(Vec<Tensor>, Timings)> {
    let started = Instant::now();
    let hood = neighbourhood(store, plan, targets).await?;
    let fetch = started.elapsed();
    let started = Instant::now();
    let tensors = tensors(store, plan, &hood, datatype).await?;
    Ok((tensors, Timings { fetch, gather: started.elapsed() }))
}

/// The view every node key is encoded for (all of a plan's views share the node's join key).
fn node_view<'a>(store: &'a FeatureStore, plan: &GraphPlan) -> &'a FeatureView {
    &store.registry.views[plan.edges[0].view]
}

/// Samples the neighbourhood of `targets`: one batched read of every edge view per hop.
pub async fn neighbourhood(store: &FeatureStore, plan: &GraphPlan, targets: &[Value]) -> Result<Neighbourhood> {
    let registry = &store.registry;
    let view = node_view(store, plan);
    let mut level: Vec<Option<EntityKey>> = Vec::with_capacity(targets.len());
    for t in targets {
        level.push(Some(encode_key(view, &[Some(t)])?));
    }
    let mut edge_views: Vec<usize> = plan.edges.iter().map(|f| f.view).collect();
    edge_views.sort_unstable();
    edge_views.dedup();
    let now = now_us();
    let mut levels = vec![level];
    for (h, &k) in plan.hops.iter().enumerate() {
        let frontier = distinct(&levels[h]);
        let wants: Vec<(usize, EntityKey)> =
            edge_views.iter().flat_map(|v| frontier.iter().map(move |key| (*v, (*key).clone()))).collect();
        let records = store.store.read(registry, &wants).await?;
        let found: HashMap<(usize, &[u8]), &Arc<Record>> = wants
            .iter()
            .zip(&records)
            .filter_map(|((v, key), r)| r.as_ref().map(|r| ((*v, key.as_slice()), r)))
            .collect();
        let mut next = Vec::with_capacity(levels[h].len() * k);
        for slot in &levels[h] {
            let Some(node) = slot else {
                next.extend(std::iter::repeat_n(None, k));
                continue;
            };
            let mut candidates: Vec<(i64, &Value)> = Vec::new();
            for f in &plan.edges {
                let Some(record) = found.get(&(f.view, node.as_slice())) else { continue };
                let ttl = registry.views[f.view].ttl_us;
                let Some(items) = record.values.get(f.feature).and_then(|v| v.as_ref()).and_then(Value::items) else {
                    continue;
                };
                let timed = record.item_ts.len() == items.len();
                for (i, item) in items.iter().enumerate() {
                    let t = if timed { record.item_ts[i] } else { record.event_ts };
                    if ttl > 0 && now.saturating_sub(t) > ttl {
                        continue;
                    }
                    candidates.push((t, item));
                }
            }
            let chosen = choose(plan.sampling, &candidates, k, node, h + 1);
            for i in chosen.iter().take(k) {
                next.push(Some(encode_key(view, &[Some(candidates[*i].1)])?));
            }
            next.extend(std::iter::repeat_n(None, k - chosen.len().min(k)));
        }
        levels.push(next);
    }
    Ok(Neighbourhood { levels })
}

/// The distinct nodes of a level, in the order met.
fn distinct(level: &[Option<EntityKey>]) -> Vec<&EntityKey> {
    let mut seen = std::collections::HashSet::with_capacity(level.len());
    level.iter().flatten().filter(|k| seen.insert(k.as_slice())).collect()
}

/// Positions (in `candidates`) of up to `k` neighbours of `node` at `hop`.
fn choose(sampling: Sampling, candidates: &[(i64, &Value)], k: usize, node: &[u8], hop: usize) -> Vec<usize> {
    let n = candidates.len();
    match sampling {
        Sampling::Newest => {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|a, b| (candidates[*b].0, *b).cmp(&(candidates[*a].0, *a)));
            order.truncate(k);
            order
        }
        Sampling::Uniform { .. } if n <= k => (0..n).collect(),
        Sampling::Uniform { seed } => {
            let state = seed ^ fnv1a64(&key_bytes(node)) ^ (hop as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            shuffle_prefix(state, n, k)
        }
    }
}

/// The first `k` of `0..n` after a partial Fisher–Yates shuffle driven by SplitMix64 from
/// `state`. Far more candidates than slots (a hub with thousands of edges) are shuffled
/// sparsely: only the moved positions are kept, so the cost follows `k`, not `n`; the draws and
/// the result are the same.
fn shuffle_prefix(mut state: u64, n: usize, k: usize) -> Vec<usize> {
    let k = k.min(n);
    if n <= 4 * k {
        let mut order: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + (splitmix64(&mut state) % (n - i) as u64) as usize;
            order.swap(i, j);
        }
        order.truncate(k);
        return order;
    }
    let mut moved: HashMap<usize, usize, foldhash::fast::FixedState> =
        HashMap::with_capacity_and_hasher(2 * k, Default::default());
    let mut order = Vec::with_capacity(k);
    for i in 0..k {
        let j = i + (splitmix64(&mut state) % (n - i) as u64) as usize;
        let at_j = moved.get(&j).copied().unwrap_or(j);
        let at_i = moved.get(&i).copied().unwrap_or(i);
        moved.insert(j, at_i);
        order.push(at_j);
    }
    order
}

/// A node key as the sampler hashes it: 8 little-endian bytes for an integer, else its bytes.
fn key_bytes(key: &[u8]) -> Vec<u8> {
    match key.first() {
        Some(b'i') if key.len() >= 9 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(&key[1..9]);
            i64::from_be_bytes(be).to_le_bytes().to_vec()
        }
        Some(_) if key.len() >= 5 => key[5..].to_vec(),
        _ => key.to_vec(),
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Node features of every distinct node (one batched read), laid out as the plan says.
async fn tensors(
    store: &FeatureStore,
    plan: &GraphPlan,
    hood: &Neighbourhood,
    datatype: DataType,
) -> Result<Vec<Tensor>> {
    let registry = &store.registry;
    let width = plan.features.len();
    let mut feature_views: Vec<usize> = plan.features.iter().map(|f| f.view).collect();
    feature_views.sort_unstable();
    feature_views.dedup();
    // Every distinct node, in the order met (targets first).
    let mut index: HashMap<&[u8], usize> = HashMap::new();
    let mut nodes: Vec<&EntityKey> = Vec::new();
    for key in hood.levels.iter().flatten().flatten() {
        index.entry(key.as_slice()).or_insert_with(|| {
            nodes.push(key);
            nodes.len() - 1
        });
    }
    let wants: Vec<(usize, EntityKey)> =
        feature_views.iter().flat_map(|v| nodes.iter().map(move |k| (*v, (*k).clone()))).collect();
    let records = store.store.read(registry, &wants).await?;
    let now = now_us();
    // Row-major node features, one row per distinct node.
    let mut x = vec![plan.missing; nodes.len() * width];
    for (col, f) in plan.features.iter().enumerate() {
        let at = feature_views.iter().position(|v| *v == f.view).unwrap_or(0) * nodes.len();
        let ttl = registry.views[f.view].ttl_us;
        for (n, record) in records[at..at + nodes.len()].iter().enumerate() {
            let Some(r) = record.as_ref().filter(|r| !r.expired(ttl, now)) else { continue };
            if let Some(v) = r.values.get(f.feature).and_then(|v| v.as_ref()).and_then(Value::as_f64) {
                x[n * width + col] = v;
            }
        }
    }
    let targets = hood.levels[0].len() as i64;
    let x = &x;
    let index = &index;
    let float = |values: &mut dyn Iterator<Item = f64>, shape: Vec<i64>, name: String| {
        let mut data = Vec::new();
        for v in values {
            match datatype {
                DataType::F64 => data.extend_from_slice(&v.to_le_bytes()),
                _ => data.extend_from_slice(&(v as f32).to_le_bytes()),
            }
        }
        Tensor::new(
            name,
            if datatype == DataType::F64 { DataType::F64 } else { DataType::F32 },
            shape,
            Bytes::from(data),
        )
    };
    match plan.layout {
        Layout::Tree => {
            let mut out = Vec::with_capacity(2 * hood.levels.len());
            let mut masks = Vec::new();
            let mut shape = vec![targets];
            for (h, level) in hood.levels.iter().enumerate() {
                if h > 0 {
                    shape.push(plan.hops[h - 1] as i64);
                }
                let row = |slot: &Option<EntityKey>| slot.as_ref().map(|k| index[k.as_slice()]);
                let mut values = level.iter().flat_map(|slot| {
                    let r = row(slot);
                    (0..width).map(move |c| r.map_or(0.0, |r| x[r * width + c]))
                });
                let mut features_shape = shape.clone();
                features_shape.push(width as i64);
                out.push(float(&mut values, features_shape, format!("x{h}")));
                if h > 0 {
                    let mut present = level.iter().map(|slot| if slot.is_some() { 1.0 } else { 0.0 });
                    masks.push(float(&mut present, shape.clone(), format!("mask{h}")));
                }
            }
            out.extend(masks);
            Ok(out)
        }
        Layout::EdgeIndex => {
            let mut src = Vec::new();
            let mut dst = Vec::new();
            // Each (node, hop) is expanded once, however many slots it fills.
            let mut expanded: std::collections::HashSet<(usize, usize)> = std::collections::HashSet::new();
            for h in 1..hood.levels.len() {
                let k = plan.hops[h - 1];
                for (p, parent) in hood.levels[h - 1].iter().enumerate() {
                    let Some(parent) = parent else { continue };
                    let parent = index[parent.as_slice()];
                    if !expanded.insert((parent, h)) {
                        continue;
                    }
                    for child in hood.levels[h][p * k..(p + 1) * k].iter().flatten() {
                        src.push(index[child.as_slice()] as i64);
                        dst.push(parent as i64);
                    }
                }
            }
            let edges = src.len() as i64;
            let mut data = Vec::with_capacity(16 * src.len());
            for v in src.iter().chain(&dst) {
                data.extend_from_slice(&v.to_le_bytes());
            }
            let target_index: Vec<u8> = hood.levels[0]
                .iter()
                .flat_map(|t| t.as_ref().map_or(0, |k| index[k.as_slice()] as i64).to_le_bytes())
                .collect();
            Ok(vec![
                float(&mut x.iter().copied(), vec![nodes.len() as i64, width as i64], "x".into()),
                Tensor::new("edge_index", DataType::I64, vec![2, edges], Bytes::from(data)),
                Tensor::new("target_index", DataType::I64, vec![targets], Bytes::from(target_index)),
            ])
        }
    }
}

/// Fails clearly when a request would build more nodes than a request may.
pub fn check_size(plan: &GraphPlan, targets: usize) -> Result<()> {
    let nodes = super::plan::nodes_per_target(&plan.hops).saturating_mul(targets);
    if nodes > 4 * super::plan::MAX_NODES_PER_TARGET {
        return Err(FeatureError::invalid(format!(
            "{targets} target nodes would sample up to {nodes} nodes; send at most {} targets per request",
            (4 * super::plan::MAX_NODES_PER_TARGET / super::plan::nodes_per_target(&plan.hops)).max(1)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sampler_matches_its_documented_definition() {
        // SplitMix64 from 0: the published first outputs.
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut s), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let mut key = vec![b'i'];
        key.extend_from_slice(&7i64.to_be_bytes());
        assert_eq!(key_bytes(&key), 7i64.to_le_bytes().to_vec());
        let v: Vec<Value> = (0..10).map(Value::Int64).collect();
        let c: Vec<(i64, &Value)> = v.iter().enumerate().map(|(i, v)| (i as i64 / 2, v)).collect();
        // Newest first; equal times: the later candidate first.
        assert_eq!(choose(Sampling::Newest, &c, 3, &key, 1), vec![9, 8, 7]);
        let u = choose(Sampling::Uniform { seed: 1 }, &c, 4, &key, 1);
        assert_eq!(u, choose(Sampling::Uniform { seed: 1 }, &c, 4, &key, 1), "reproducible");
        assert_ne!(u, choose(Sampling::Uniform { seed: 2 }, &c, 4, &key, 1));
        let mut sorted = u.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 4, "without replacement");
        assert_eq!(choose(Sampling::Uniform { seed: 1 }, &c[..3], 4, &key, 1), vec![0, 1, 2]);
    }

    #[test]
    fn the_sparse_shuffle_of_a_hub_draws_what_the_full_shuffle_draws() {
        for (n, k) in [(5, 1), (41, 10), (1000, 10), (100_000, 25), (257, 64)] {
            for seed in 0..20u64 {
                let state = seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
                let mut full: Vec<usize> = (0..n).collect();
                let mut s = state;
                for i in 0..k {
                    let j = i + (splitmix64(&mut s) % (n - i) as u64) as usize;
                    full.swap(i, j);
                }
                full.truncate(k);
                assert_eq!(shuffle_prefix(state, n, k), full, "n {n}, k {k}, seed {seed}");
            }
        }
    }
}
