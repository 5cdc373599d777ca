"""GraphSAGE (mean aggregator, 2 layers) in NumPy: the neighbourhood sampling Flotilla does for
graph.toml's `newest` and `uniform` rules, and the forward pass of examples/graph/repository/
fraud_sage, from the model's own ONNX weights. scripts/make_graph_example.py trains with it;
tests/python/test_graph.py uses it as the reference outside Flotilla.

The tree layout (graph.toml's default), for B targets and fan-outs [k1, k2]:
  x0 [B, F], x1 [B, k1, F], x2 [B, k1, k2, F]   node features (0 in padding slots)
  mask1 [B, k1], mask2 [B, k1, k2]              1 where a neighbour is, 0 in padding
"""
import numpy as np

MASK64 = (1 << 64) - 1


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & MASK64
    return h


class EdgeLists:
    """Per node, the candidates of graph.toml's `edges` (in their order), each list oldest first
    and cut to the append view's newest `max_items`."""

    def __init__(self, views, max_items):
        # views: list of (node ids, neighbour ids, times) arrays, one per edge feature
        self.lists = []
        for nodes, nbrs, times in views:
            by_node = {}
            order = np.lexsort((times, nodes))
            for i in order:
                by_node.setdefault(int(nodes[i]), []).append((int(times[i]), int(nbrs[i])))
            self.lists.append({n: items[-max_items:] for n, items in by_node.items()})

    def candidates(self, node):
        out = []
        for lists in self.lists:
            out.extend(lists.get(node, []))
        return out


def choose(rule, candidates, k, node, hop, seed=0):
    """Positions of up to k neighbours among candidates [(time, id)], as Flotilla chooses them."""
    n = len(candidates)
    if rule == "newest":
        order = sorted(range(n), key=lambda i: (candidates[i][0], i), reverse=True)
        return order[:k]
    if n <= k:
        return list(range(n))
    state = (seed ^ fnv1a64(int(node).to_bytes(8, "little", signed=True)) ^ ((hop * 0x9E3779B97F4A7C15) & MASK64)) & MASK64
    order = list(range(n))
    for i in range(k):
        state, r = splitmix64(state)
        j = i + r % (n - i)
        order[i], order[j] = order[j], order[i]
    return order[:k]


def neighbourhood(edges, targets, hops, rule="newest", seed=0):
    """levels[h]: node ids per slot (-1 in padding), as graph.toml's tree layout lays them out."""
    levels = [np.asarray(targets, dtype=np.int64)]
    for h, k in enumerate(hops):
        nxt = np.full(len(levels[-1]) * k, -1, dtype=np.int64)
        for s, node in enumerate(levels[-1]):
            if node < 0:
                continue
            c = edges.candidates(int(node))
            for j, i in enumerate(choose(rule, c, k, node, h + 1, seed)):
                nxt[s * k + j] = c[i][1]
        levels.append(nxt)
    return levels


def tree_inputs(levels, hops, features, missing=0.0):
    """x0, x1, x2, ..., mask1, mask2, ... from sampled levels and {node id: feature row}."""
    width = len(next(iter(features.values())))
    b = len(levels[0])
    xs, masks = [], []
    shape = [b]
    for h, level in enumerate(levels):
        if h:
            shape.append(hops[h - 1])
        x = np.zeros((len(level), width), dtype=np.float32)
        for i, node in enumerate(level):
            if node >= 0:
                x[i] = features.get(int(node), np.full(width, missing, dtype=np.float32))
        xs.append(x.reshape(shape + [width]))
        if h:
            masks.append((level >= 0).astype(np.float32).reshape(shape))
    return xs + masks


def forward(params, x0, x1, x2, mask1, mask2):
    """The served model's forward pass in float64: a fraud probability per target, [B, 1]."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    n0, n1, n2 = [(np.asarray(x, dtype=np.float64) - p["mu"]) / p["sd"] for x in (x0, x1, x2)]
    m1 = np.asarray(mask1, dtype=np.float64)[..., None]
    m2 = np.asarray(mask2, dtype=np.float64)[..., None]
    c1 = np.maximum(m1.sum(1), 1.0)
    c2 = np.maximum(m2.sum(2), 1.0)
    mean1 = (n1 * m1).sum(1) / c1
    mean2 = (n2 * m2).sum(2) / c2
    h0 = np.maximum(n0 @ p["ws1"] + mean1 @ p["wn1"] + p["b1"], 0.0)
    h1 = np.maximum(n1 @ p["ws1"] + mean2 @ p["wn1"] + p["b1"], 0.0)
    sh = (h1 * m1).sum(1) / c1
    z = h0 @ p["ws2"] + sh @ p["wn2"] + p["b2"]
    return 1.0 / (1.0 + np.exp(-z))


def onnx_params(path):
    """The weights of the exported model (initializers named as forward() names them)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer if t.name in
            ("mu", "sd", "ws1", "wn1", "b1", "ws2", "wn2", "b2")}
