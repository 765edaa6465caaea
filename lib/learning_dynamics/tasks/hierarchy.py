"""Hierarchical items and the gated tasks built on them (Saxe et al. 2014; Saxe, Sodhani & Lewallen 2022).

Items are one-hot inputs (X = I), so the input correlation is the identity and
the learning dynamics are set by the item-feature matrix Y alone. Three tasks:

- :func:`tree_task`: items at the leaves of a binary tree, with a feature per
  tree node (the canonical dataset of Saxe et al. 2014), learned by an
  ungated two-layer network;
- :func:`routing_task`: the authors' routing network, M input and M output
  modules joined through one shared hidden pathway, trained on a subset of
  (input, output) module pairs chosen by a gate;
- :func:`context_task`: one shared pathway racing against one private
  pathway per context, on targets with shared and context-specific structure.

Each returns a :class:`GatedTask`: the network, its data, and the mode bases
in which the neural race reduction holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..gated import GDLN, GatedData, gated_data, side_by_side
from ..validation import Array, InstanceOf, Integer, Optional, Real, check_int, check_positive, validate_params, value_text


@dataclass(frozen=True)
class GatedTask:
    """A GDLN with its training data and the data's modes.

    ``modes_in`` / ``modes_out`` map input / output nodes to orthonormal mode
    bases (width x r). ``test`` holds evaluation data (if any) whose samples
    belong to ``test_groups`` (one group id per sample); ``trained_groups``
    flags the groups seen in training.
    """

    net: GDLN
    data: GatedData
    modes_in: dict
    modes_out: dict
    test: GatedData | None = None
    test_groups: np.ndarray | None = field(default=None, repr=False)
    trained_groups: np.ndarray | None = field(default=None, repr=False)


# ---------------------------------------------------------------------------
# Item-feature matrices
# ---------------------------------------------------------------------------


@validate_params({"depth": Integer(low=1, high=8)})
def tree_features(depth: int) -> np.ndarray:
    """Features x items of a binary tree with 2**depth leaf items: feature f is on for item i if node f is an ancestor of i (or i).

    Rows are the tree's nodes in level order (root first), so the matrix has
    2**(depth+1) - 1 rows.
    """
    n_items = 2**depth
    rows = []
    for level in range(depth + 1):
        span = n_items // 2**level
        for node in range(2**level):
            row = np.zeros(n_items)
            row[node * span:(node + 1) * span] = 1.0
            rows.append(row)
    return np.array(rows)


def routing_targets() -> np.ndarray:
    """The authors' 7 features x 4 items: a shared row of 6s, two group rows of 4s, item rows 3 I.

    Singular values sqrt(185), sqrt(41), 3, 3.
    """
    return np.vstack([np.full((1, 4), 6.0), [[4, 4, 0, 0], [0, 0, 4, 4]], 3 * np.eye(4)])


@validate_params({"features": Array(ndim=2), "tol": Real(low=0.0)})
def modes_of(features: np.ndarray, tol: float = 1e-10):
    """(U, s, V) of a features x items matrix, keeping the modes with s > tol s_max."""
    u, s, vt = np.linalg.svd(features, full_matrices=False)
    keep = s > tol * s[0]
    return u[:, keep], s[keep], vt[keep].T


# ---------------------------------------------------------------------------
# Saxe et al. 2014: an ungated two-layer network on tree items
# ---------------------------------------------------------------------------


@validate_params({"depth": Integer(low=1, high=8), "hidden": Integer(low=1), "layers": Integer(low=1, high=12)})
def tree_task(depth: int = 3, hidden: int = 16, layers: int = 2) -> GatedTask:
    """Linear network of ``layers`` weight layers on the tree's items, loss 1/2 sum_items |y - W_L ... W_1 x|^2.

    Two layers (the default) is x -> h -> y; deeper chains have hidden nodes
    h1, ..., h_{L-1} of width ``hidden`` (the chapter's learning time against
    depth, notebooks/neural_race.ipynb).
    """
    features = tree_features(depth)
    n_features, n_items = features.shape
    hidden_nodes = ["h"] if layers == 2 else [f"h{k}" for k in range(1, layers)]
    chain = ["x"] + hidden_nodes + ["y"]
    nodes = {v: n_items if v == "x" else n_features if v == "y" else hidden for v in chain}
    net = GDLN(nodes, {f"W{k + 1}": (chain[k], chain[k + 1]) for k in range(layers)})
    data = gated_data(net, {"x": np.eye(n_items)}, {"y": features.T})
    u, _, v = modes_of(features)
    return GatedTask(net, data, {"x": v}, {"y": u})


# ---------------------------------------------------------------------------
# The routing network of Saxe, Sodhani & Lewallen (2022)
# ---------------------------------------------------------------------------


@validate_params({"n_modules": Integer(low=1), "n_trained": Integer(low=1)})
def routing_gate(n_modules: int, n_trained: int) -> np.ndarray:
    """Which (input, output) module pairs are trained: the authors' "K_plus_minus_mod" gate.

    Input i is trained with outputs i + o (mod M) for offsets o from
    -floor((K-1)/2) to floor(K/2); K = 4 gives i-1, i, i+1, i+2. Returns a
    boolean (M, M) matrix, K trained pairs per row and per column.
    """
    n_trained = check_int("n_trained", n_trained, low=1, high=n_modules)
    gate = np.zeros((n_modules, n_modules), dtype=bool)
    for i in range(n_modules):
        for offset in range(-((n_trained - 1) // 2), n_trained // 2 + 1):
            gate[i, (i + offset) % n_modules] = True
    return gate


@validate_params({"n_modules": Integer(low=1), "width_in": Integer(low=1), "hidden": Integer(low=1),
                  "width_out": Integer(low=1)})
def routing_network(n_modules: int, width_in: int, hidden: int, width_out: int) -> GDLN:
    """M input modules x_i (``width_in``) -> h1 -> h2 (``hidden``) -> M output modules y_j (``width_out``).

    Edges in{i} (x_i -> h1), shared (h1 -> h2) and out{j} (h2 -> y_j): the graph of :func:`routing_task` and of
    :func:`learning_dynamics.tasks.kpath.permuted_task`.
    """
    nodes = {**{f"x{i}": width_in for i in range(n_modules)}, "h1": hidden, "h2": hidden,
             **{f"y{j}": width_out for j in range(n_modules)}}
    edges = {**{f"in{i}": (f"x{i}", "h1") for i in range(n_modules)}, "shared": ("h1", "h2"),
             **{f"out{j}": ("h2", f"y{j}") for j in range(n_modules)}}
    return GDLN(nodes, edges)


@validate_params({"net": InstanceOf(GDLN, description="a GDLN"),
                  "pairs": InstanceOf(list, description="a list of (input, output) module pairs"),
                  "items": InstanceOf(list), "targets": InstanceOf(list), "weight": Optional(Real(low=0.0, strict_low=True))})
def pair_samples(net: GDLN, pairs, items, targets, weight: float | None = None) -> GatedData:
    """The samples of a :func:`routing_network` for (input i, output j) module pairs, one block of items per pair.

    Pair (i, j) contributes the rows of ``items[i]`` (items x width_in) on x_i and of ``targets[j]``
    (items x width_out) on y_j, with only x_i and y_j gated on; every sample weighs ``weight`` (default 1).
    """
    n_items = len(items[0])
    n = len(pairs) * n_items
    inputs = {v: np.zeros((n, net.nodes[v])) for v in net.inputs}
    outputs = {v: np.zeros((n, net.nodes[v])) for v in net.outputs}
    gates = {v: np.zeros(n) for v in list(inputs) + list(outputs)}
    for k, (i, j) in enumerate(pairs):
        rows = slice(k * n_items, (k + 1) * n_items)
        inputs[f"x{i}"][rows] = items[i]
        outputs[f"y{j}"][rows] = targets[j]
        gates[f"x{i}"][rows] = 1.0
        gates[f"y{j}"][rows] = 1.0
    return gated_data(net, inputs, outputs, node_gates=gates, weights=None if weight is None else np.full(n, weight))


@validate_params({"hidden": Integer(low=1), "features": Optional(Array(ndim=2))})
def routing_task(gate, hidden: int = 64, features=None) -> GatedTask:
    """M input modules -> shared hidden pathway -> M output modules, trained on the pairs flagged by ``gate``.

    Nodes x0..x{M-1} (one-hot items), h1, h2 (width ``hidden``) and
    y0..y{M-1}; edges in{i} (x_i -> h1), shared (h1 -> h2) and out{j}
    (h2 -> y_j). A sample is an (input i, output j, item) triple: only x_i and
    y_j are gated on, and the target is the item's feature vector. The loss is
    the authors' sum over trained pairs of the mean squared error over items
    and features, so each sample weighs 2 / (items x features). ``test`` holds
    every pair, with group id i M + j.
    """
    given = gate
    gate = np.asarray(gate, dtype=bool)
    if gate.ndim != 2 or gate.shape[0] != gate.shape[1] or not gate.any():
        raise ValueError(f"gate must be a square boolean (M, M) matrix with a trained pair; got {value_text(given, gate)}")
    features = routing_targets() if features is None else features
    m = gate.shape[0]
    n_out, n_items = features.shape
    net = routing_network(m, n_items, hidden, n_out)
    items, targets = [np.eye(n_items)] * m, [features.T] * m
    samples = lambda pairs: pair_samples(net, pairs, items, targets, weight=2.0 / (n_items * n_out))

    trained = [tuple(p) for p in np.argwhere(gate)]
    every = [(i, j) for i in range(m) for j in range(m)]
    u, _, v = modes_of(features)
    return GatedTask(net, samples(trained), {f"x{i}": v for i in range(m)}, {f"y{j}": u for j in range(m)},
                     test=samples(every), test_groups=np.repeat(np.arange(m * m), n_items),
                     trained_groups=gate.ravel().copy())


def routing_pair_errors(task: GatedTask, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """The test error of every (input, output) module pair of a :func:`routing_task` network: shape (networks, M^2).

    The same numbers as ``gated.output_errors(net, params, batch(task.test), task.test_groups, M^2)``, computed from the
    pathway products: pair (i, j) sees the one-hot items of x_i through W_p = W_out{j} W_shared W_in{i} alone,
    so its error is 1/2 |Y - W_p|_F^2 (Y: features x items). Entry i M + j.
    """
    net = task.net
    m = len(net.inputs)
    n_items = net.nodes["x0"]
    features = task.test.targets["y0"][:n_items].T                    # pair (0, 0): the features of each item
    n_out = features.shape[0]
    with torch.no_grad():
        prefix = side_by_side(tuple((f"in{i}", "shared") for i in range(m)), params)            # (n, h, M items)
        outs = torch.stack([params[f"out{j}"] for j in range(m)], dim=1)                          # (n, M, out, h)
        w = (outs @ prefix.unsqueeze(1)).reshape(prefix.shape[0], m, n_out, m, n_items)          # (n, j, out, i, item)
        y = torch.as_tensor(features, dtype=w.dtype, device=w.device)
        err = 0.5 * ((w - y[:, None, :]) ** 2).sum((2, 4))                                       # (n, j, i)
    return err.transpose(1, 2).reshape(err.shape[0], m * m)


# ---------------------------------------------------------------------------
# A shared pathway racing private ones
# ---------------------------------------------------------------------------

HAAR_4 = np.array([[1, 1, 1, 1], [1, 1, -1, -1], [np.sqrt(2), -np.sqrt(2), 0, 0], [0, 0, np.sqrt(2), -np.sqrt(2)]]).T / 2.0


def routing_code_similarity(task: GatedTask, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cosine similarity of the shared layer's codes W_shared W_in{i} x of every (input module i, item x) of a
    :func:`routing_task` network: shape (networks, M items, M items), module-major (neural_race, fig-neural-race-lazy).

    The representational similarity (RSA) matrix of the authors' vs-NTK notebook, from the pathway products.
    """
    m = len(task.net.inputs)
    with torch.no_grad():
        codes = side_by_side(tuple((f"in{i}", "shared") for i in range(m)), params)            # (n, h, M items)
        codes = codes / codes.norm(dim=-2, keepdim=True)
        return codes.transpose(-1, -2) @ codes


@validate_params({"similarity": Array(), "n_modules": Integer(low=2)})
def cross_module_similarity(similarity, n_modules: int) -> np.ndarray:
    """Mean similarity between the codes of one item from two different input modules: shape similarity.shape[:-2].

    ``similarity`` is (..., M items, M items), module-major (:func:`routing_code_similarity`). A code shared by all
    modules gives 1; unrelated random codes give about 0.
    """
    s = np.asarray(similarity, dtype=np.float64)
    size = s.shape[-1]
    if s.ndim < 2 or s.shape[-2] != size or size % n_modules:
        raise ValueError(f"similarity must be (..., M items, M items) with M = n_modules = {n_modules}; "
                         f"got shape {s.shape}")
    items = size // n_modules
    blocks = s.reshape(*s.shape[:-2], n_modules, items, n_modules, items)
    same_item = np.diagonal(blocks, axis1=-3, axis2=-1).mean(-1)                               # (..., M, M)
    off = ~np.eye(n_modules, dtype=bool)
    return same_item[..., off].mean(-1)


@validate_params({"n_contexts": Integer(low=1)})
def context_targets(n_contexts: int, strengths=(3.0, 2.0, 1.5)) -> np.ndarray:
    """Features x items for each context, shape (C, 4, 4): Y_c = diag(s_c) V^T on four hierarchical items.

    V is the tree's Haar basis (all items, group A vs B, and the two
    within-group contrasts). Feature 1 (all items) and feature 2 (group) have
    the same strengths in every context: the shared structure. Features 3 and 4
    (within-group contrasts) have strength +s_spec in even contexts and
    -s_spec in odd ones: the context-specific structure.
    """
    if len(strengths) != 3:
        raise ValueError(f"strengths must hold 3 values (all items, group, within-group); got {strengths!r}")
    s_all, s_group, s_spec = (check_positive(f"strengths[{k}]", s) for k, s in enumerate(strengths))
    sign = np.where(np.arange(n_contexts) % 2 == 0, 1.0, -1.0)
    s = np.stack([np.full(n_contexts, s_all), np.full(n_contexts, s_group), sign * s_spec, sign * s_spec], axis=1)
    return np.einsum("ca,ia->cai", s, HAAR_4)


@validate_params({"n_contexts": Integer(low=1), "n_slots": Optional(Integer(low=1)),
                  "shared_depth": Integer(low=1, high=6), "hidden": Integer(low=4)})
def context_task(n_contexts: int, n_slots: int | None = None, shared_depth: int = 2, hidden: int = 8,
                 strengths=(3.0, 2.0, 1.5)) -> GatedTask:
    """One shared pathway and one private pathway per context between items x and features y.

    The shared pathway (edges shared1, ..., shared{depth}) is on in every
    context; the private pathway of context c (edges in{c}, out{c}, through
    node c{c}) only in context c. The loss sums 1/2 |y - y_hat|^2 over contexts
    and items. ``n_slots`` >= n_contexts private pathways are built (the extra
    ones get zero-weight samples) so that networks with different numbers of
    contexts can be stacked and trained together.
    """
    n_slots = check_int("n_slots", n_contexts if n_slots is None else n_slots, low=n_contexts)
    nodes = {"x": 4, **{f"s{k}": hidden for k in range(1, shared_depth)}, **{f"c{c}": hidden for c in range(n_slots)}, "y": 4}
    chain = ["x"] + [f"s{k}" for k in range(1, shared_depth)] + ["y"]
    edges = {f"shared{k + 1}": (chain[k], chain[k + 1]) for k in range(shared_depth)}
    for c in range(n_slots):
        edges[f"in{c}"] = ("x", f"c{c}")
        edges[f"out{c}"] = (f"c{c}", "y")
    net = GDLN(nodes, edges)
    targets = context_targets(n_slots, strengths)
    context = np.repeat(np.arange(n_slots), 4)
    data = gated_data(
        net, {"x": np.tile(np.eye(4), (n_slots, 1))}, {"y": np.concatenate([y.T for y in targets])},
        node_gates={f"c{c}": (context == c).astype(float) for c in range(n_slots)},
        weights=(context < n_contexts).astype(float),
    )
    return GatedTask(net, data, {"x": HAAR_4}, {"y": np.eye(4)})


# ---------------------------------------------------------------------------
# XoR through gating (Saxe, Sodhani & Lewallen 2022, Sec. 2)
# ---------------------------------------------------------------------------


@validate_params({"hidden": Integer(low=1)})
def xor_task(hidden: int = 8) -> GatedTask:
    """XoR y = x1 x2 on the four inputs x in {-1, +1}^2, learned by a GDLN with three pathways into y.

    ``lin`` (edges lin_in, lin_out through node h0) is ungated: an ordinary
    two-layer linear network. ``plus`` and ``minus`` (through nodes hp, hm)
    are gated by the sign of x1: hp is on when x1 = +1, hm when x1 = -1. On
    each half XoR is linear (y = x2 or y = -x2), so the gated pathways can
    solve it; the ungated one sees no correlation (sum_n y x^T = 0). All the
    gated correlations are diagonal in the input mode e2 (Sigma_xx = 2 I or
    4 I), so the neural race reduction holds with one mode: drives 0, +2, -2.
    Used in the chapter's XoR section (notebooks/neural_race.ipynb).
    """
    x = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    net = GDLN({"x": 2, "h0": hidden, "hp": hidden, "hm": hidden, "y": 1},
               {"lin_in": ("x", "h0"), "lin_out": ("h0", "y"), "plus_in": ("x", "hp"), "plus_out": ("hp", "y"),
                "minus_in": ("x", "hm"), "minus_out": ("hm", "y")})
    data = gated_data(net, {"x": x}, {"y": (x[:, 0] * x[:, 1])[:, None]},
                      node_gates={"hp": (x[:, 0] > 0).astype(float), "hm": (x[:, 0] < 0).astype(float)})
    return GatedTask(net, data, {"x": np.array([[0.0], [1.0]])}, {"y": np.ones((1, 1))})
