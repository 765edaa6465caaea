"""Gated deep linear networks and the neural race reduction (Saxe, Sodhani & Lewallen 2022).

A gated deep linear network (GDLN) is a directed acyclic graph: nodes are
layers of linear units and edges are weight matrices. Every node v and edge e
carries a gate, g_v and g_e in {0, 1} (any real value is allowed), which
depends on the sample. A node's activity is

    h_v = g_v sum_{e into v} g_e W_e h_source(e),     h_v = g_v x_v at input nodes,

so an output node sums over the pathways p that reach it,
y_hat = sum_p g_p W_p x_p, with g_p the product of the gates and W_p the product
of the weights along p. Each pathway is linear; the gating makes the network a
nonlinear function of its input.

With samples n of weight w_n and the loss L = 1/2 sum_n w_n sum_v |y_v - y_hat_v|^2,
gradient flow (time t = learning rate x steps) depends on the data only through
the gated correlations

    Sigma_yx(p) = sum_n w_n g_p y x_p^T,      Sigma_xx(q, p) = sum_n w_n g_q g_p x_q x_p^T.

When every Sigma_yx(p) = U S_p V^T and Sigma_xx(q, p) = V D_qp V^T share singular
vectors, and the weights start aligned with them (W_e = R_t diag(b_e) R_s^T),
every edge stays diagonal and each mode alpha follows the scalar ODEs

    db_e/dt = sum_{p through e} (prod_{e' in p, e' != e} b_e') (s_p - sum_q d_qp pi_q),

with pi_p the product of the b's along p: the neural race reduction. All
pathways feed one error, so they race; a pathway that is active in many
contexts collects gradient from all of them and wins.

Where the pathways through a chain of edges are all equivalent, the race
collapses to one chain ODE db_e/dt = w_e prod_{e' != e} b_e' (s - pi)
(:func:`chain_solve`), solved in closed form when b_e^2 / w_e is the same for
every edge (Saxe et al. 2014; :func:`learning_dynamics.linear.deep_mode`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from . import linear
from .ode import integrate
from .threads import small_problem
from .train import TrainResult, progress, train
from .validation import check_array, check_generator, check_int, check_positive

# ---------------------------------------------------------------------------
# The graph
# ---------------------------------------------------------------------------


class GDLN:
    """A gated deep linear network: named nodes (widths) joined by named edges.

    ``nodes`` maps a node name to its width; ``edges`` maps an edge name to a
    ``(source, target)`` pair of node names. Input nodes are those without
    incoming edges, output nodes those without outgoing edges. The graph must
    be acyclic and every edge must join two declared nodes; otherwise a
    ``ValueError`` names the problem.

    >>> net = GDLN({"x": 3, "h": 5, "y": 2}, {"W1": ("x", "h"), "W2": ("h", "y")})
    >>> net.pathways
    (('W1', 'W2'),)
    """

    def __init__(self, nodes: dict[str, int], edges: dict[str, tuple[str, str]]):
        if not isinstance(nodes, dict) or not nodes:
            raise ValueError(f"nodes must be a non-empty dict of name -> width; got {nodes!r}")
        if not isinstance(edges, dict) or not edges:
            raise ValueError(f"edges must be a non-empty dict of name -> (source, target); got {edges!r}")
        self.nodes = {str(name): check_int(f"width of node {name!r}", width, low=1) for name, width in nodes.items()}
        self.edges: dict[str, tuple[str, str]] = {}
        for name, pair in edges.items():
            if not (isinstance(pair, tuple | list) and len(pair) == 2):
                raise ValueError(f"edge {name!r} must be a (source, target) pair; got {pair!r}")
            for end in pair:
                if end not in self.nodes:
                    raise ValueError(f"edge {name!r} is dangling: node {end!r} does not exist (nodes: {', '.join(self.nodes)})")
            self.edges[str(name)] = (pair[0], pair[1])
        touched = {v for pair in self.edges.values() for v in pair}
        isolated = [v for v in self.nodes if v not in touched]
        if isolated:
            raise ValueError(f"node(s) {isolated} have no edges; every node must lie on a pathway")
        self.order = self._topological_order()
        self.inputs = tuple(v for v in self.order if not self.incoming(v))
        self.outputs = tuple(v for v in self.order if not self.outgoing(v))
        self.pathways = self._enumerate_pathways()

    def incoming(self, node: str) -> list[str]:
        return [e for e, (_, t) in self.edges.items() if t == node]

    def outgoing(self, node: str) -> list[str]:
        return [e for e, (s, _) in self.edges.items() if s == node]

    def edge_shape(self, edge: str) -> tuple[int, int]:
        """(width of target, width of source): the weight matrix maps source to target."""
        source, target = self.edges[edge]
        return self.nodes[target], self.nodes[source]

    def source(self, pathway) -> str:
        return self.edges[pathway[0]][0]

    def target(self, pathway) -> str:
        return self.edges[pathway[-1]][1]

    def pathway_nodes(self, pathway) -> tuple[str, ...]:
        return (self.source(pathway),) + tuple(self.edges[e][1] for e in pathway)

    def _topological_order(self) -> tuple[str, ...]:
        indegree = {v: 0 for v in self.nodes}
        for _, t in self.edges.values():
            indegree[t] += 1
        ready = [v for v in self.nodes if indegree[v] == 0]
        order = []
        while ready:
            v = ready.pop(0)
            order.append(v)
            for e in self.outgoing(v):
                t = self.edges[e][1]
                indegree[t] -= 1
                if indegree[t] == 0:
                    ready.append(t)
        if len(order) < len(self.nodes):
            stuck = [v for v in self.nodes if v not in order]
            raise ValueError(f"the graph has a cycle through node(s) {stuck}; a GDLN must be acyclic")
        return tuple(order)

    def _enumerate_pathways(self) -> tuple[tuple[str, ...], ...]:
        paths = []

        def walk(node, prefix):
            out = self.outgoing(node)
            if not out:
                paths.append(tuple(prefix))
            for e in out:
                walk(self.edges[e][1], prefix + [e])

        for v in self.inputs:
            walk(v, [])
        return tuple(paths)

    def __repr__(self) -> str:
        return f"GDLN({len(self.nodes)} nodes, {len(self.edges)} edges, {len(self.pathways)} pathways)"


# ---------------------------------------------------------------------------
# Data: inputs, targets, gates and sample weights
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GatedData:
    """Samples for a GDLN: arrays with the sample index first.

    ``inputs[v]`` (N, width) for every input node, ``targets[v]`` (N, width) for
    every output node (zero wherever the output node is gated off),
    ``node_gates`` / ``edge_gates`` (N,) for any node or edge (missing ones are
    always on) and ``weights`` (N,), the weight of each sample in the loss.
    Build it with :func:`gated_data`, which validates everything.
    """

    inputs: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    node_gates: dict[str, np.ndarray]
    edge_gates: dict[str, np.ndarray]
    weights: np.ndarray

    @property
    def n_samples(self) -> int:
        return len(self.weights)


def gated_data(net: GDLN, inputs: dict, targets: dict, *, node_gates: dict | None = None,
               edge_gates: dict | None = None, weights=None) -> GatedData:
    """Validate and complete a dataset for ``net`` (see :class:`GatedData`)."""
    node_gates, edge_gates = dict(node_gates or {}), dict(edge_gates or {})
    for name, expected, given in (("inputs", net.inputs, inputs), ("targets", net.outputs, targets)):
        if set(given) != set(expected):
            raise ValueError(f"{name} must hold exactly the nodes {list(expected)}; got {sorted(given)}")
    n = len(next(iter(inputs.values())))
    arrays = {}
    for kind, given in (("inputs", inputs), ("targets", targets)):
        arrays[kind] = {}
        for v, a in given.items():
            a = check_array(f"{kind}[{v!r}]", a, ndim=2)
            if a.shape != (n, net.nodes[v]):
                raise ValueError(f"{kind}[{v!r}] must have shape (N, width) = ({n}, {net.nodes[v]}); got {a.shape}")
            arrays[kind][v] = a
    gates = {}
    for kind, known, given in (("node", net.nodes, node_gates), ("edge", net.edges, edge_gates)):
        unknown = [k for k in given if k not in known]
        if unknown:
            raise ValueError(f"{kind} gates given for unknown {kind}(s) {unknown}")
        gates[kind] = {}
        for k in known:
            g = check_array(f"gate of {kind} {k!r}", given.get(k, np.ones(n)))
            if g.shape != (n,):
                raise ValueError(f"gate of {kind} {k!r} must have shape (N,) = ({n},), one value per sample; got {g.shape}")
            gates[kind][k] = g
    weights = check_array("weights", np.ones(n) if weights is None else weights, ndim=1)
    if weights.shape != (n,) or np.any(weights < 0):
        raise ValueError(f"weights must be >= 0 with shape ({n},); got shape {weights.shape}")
    for v in net.outputs:
        if np.any((gates["node"][v] == 0)[:, None] & (arrays["targets"][v] != 0)):
            raise ValueError(f"targets[{v!r}] must be zero where output node {v!r} is gated off")
    return GatedData(arrays["inputs"], arrays["targets"], gates["node"], gates["edge"], weights)


def pathway_gates(net: GDLN, data: GatedData) -> np.ndarray:
    """g_p per sample and pathway, shape (N, P): the product of node and edge gates along p."""
    out = np.ones((data.n_samples, len(net.pathways)))
    for k, p in enumerate(net.pathways):
        for v in net.pathway_nodes(p):
            out[:, k] *= data.node_gates[v]
        for e in p:
            out[:, k] *= data.edge_gates[e]
    return out


@dataclass(frozen=True)
class Correlations:
    """Gated correlations: ``yx[p]`` (out x in) and ``xx[(q, p)]`` for pathways q, p into one output node."""

    yx: list[np.ndarray]
    xx: dict[tuple[int, int], np.ndarray]


def gated_correlations(net: GDLN, data: GatedData) -> Correlations:
    """Sigma_yx(p) = sum_n w g_p y x_p^T and Sigma_xx(q, p) = sum_n w g_q g_p x_q x_p^T."""
    gates = pathway_gates(net, data)
    g = gates * data.weights[:, None]
    yx = [np.einsum("n,ni,nj->ij", g[:, k], data.targets[net.target(p)], data.inputs[net.source(p)])
          for k, p in enumerate(net.pathways)]
    xx = {}
    for q, pq in enumerate(net.pathways):
        for k, p in enumerate(net.pathways):
            if net.target(pq) == net.target(p):
                xx[(q, k)] = np.einsum("n,ni,nj->ij", g[:, k] * gates[:, q],
                                       data.inputs[net.source(pq)], data.inputs[net.source(p)])
    return Correlations(yx, xx)


# ---------------------------------------------------------------------------
# Full gradient descent on the gated network (batched over networks)
# ---------------------------------------------------------------------------


def data_tensors(net: GDLN, data: GatedData | list[GatedData], n_networks: int | None = None, device="cpu") -> tuple:
    """The tuple of tensors :func:`loss_function` expects, with the network dimension in front.

    Give one dataset (shared by ``n_networks`` networks, without copying) or a
    list with one dataset per network (all with the same number of samples).
    """
    datasets = data if isinstance(data, list) else [data]
    sizes = {d.n_samples for d in datasets}
    if len(sizes) != 1:
        raise ValueError(f"every network's data needs the same number of samples; got {sorted(sizes)}")

    def stack(get):
        return torch.as_tensor(np.stack([get(d) for d in datasets]), dtype=torch.float64, device=device)

    parts = [stack(lambda d, v=v: d.inputs[v]) for v in net.inputs]
    parts += [stack(lambda d, v=v: d.targets[v]) for v in net.outputs]
    parts.append(stack(lambda d: np.stack([d.node_gates[v] for v in net.order], axis=-1)))
    parts.append(stack(lambda d: np.stack([d.edge_gates[e] for e in net.edges], axis=-1)))
    parts.append(stack(lambda d: d.weights))
    if isinstance(data, list):
        if n_networks is not None and n_networks != len(datasets):
            raise ValueError(f"n_networks ({n_networks}) must equal the number of datasets ({len(datasets)})")
        return tuple(parts)
    n_networks = check_int("n_networks", 1 if n_networks is None else n_networks, low=1)
    return tuple(p.expand(n_networks, *p.shape[1:]) for p in parts)


def forward(net: GDLN, params: dict[str, torch.Tensor], *batch) -> list[torch.Tensor]:
    """Outputs of ONE network (one tensor (N, width) per output node) on a batch from :func:`data_tensors`."""
    n_in, n_out = len(net.inputs), len(net.outputs)
    xs, node_gates, edge_gates = batch[:n_in], batch[n_in + n_out], batch[n_in + n_out + 1]
    edge_index = {e: k for k, e in enumerate(net.edges)}
    h = {}
    for k, v in enumerate(net.order):
        if v in net.inputs:
            total = xs[net.inputs.index(v)]
        else:
            total = sum(edge_gates[..., edge_index[e], None] * (h[net.edges[e][0]] @ params[e].transpose(-1, -2))
                        for e in net.incoming(v))
        h[v] = node_gates[..., k, None] * total
    return [h[v] for v in net.outputs]


def loss_function(net: GDLN):
    """The loss 1/2 sum_n w_n sum_v |y_v - y_hat_v|^2, per network (broadcasts over leading dimensions)."""
    n_in, n_out = len(net.inputs), len(net.outputs)

    def loss(params, *batch):
        targets, weights = batch[n_in:n_in + n_out], batch[-1]
        outputs = forward(net, params, *batch)
        return 0.5 * sum((weights[..., None] * (y - y_hat) ** 2).sum((-1, -2)) for y, y_hat in zip(targets, outputs))

    return loss


def errors(net: GDLN, params: dict[str, torch.Tensor], batch: tuple, groups=None, n_groups: int | None = None) -> torch.Tensor:
    """1/2 |y - y_hat|^2 per network and sample (unweighted), or summed per group of samples.

    ``batch`` comes from :func:`data_tensors`; ``groups`` gives each sample's
    group id (for example its (input, output) module pair). Returns a tensor of
    shape (networks, N) or (networks, n_groups).
    """
    n_in, n_out = len(net.inputs), len(net.outputs)
    with torch.no_grad():
        outputs = forward(net, params, *batch)
        per_sample = 0.5 * sum(((y - y_hat) ** 2).sum(-1) for y, y_hat in zip(batch[n_in:n_in + n_out], outputs))
    if groups is None:
        return per_sample
    groups = np.asarray(groups)
    onehot = np.zeros((len(groups), int(n_groups or groups.max() + 1)))
    onehot[np.arange(len(groups)), groups] = 1.0
    return per_sample @ torch.as_tensor(onehot, dtype=per_sample.dtype, device=per_sample.device)


@dataclass(frozen=True)
class _LossGroup:
    """Output nodes whose pathways are handled together in :func:`correlation_loss`.

    ``paths[g]`` lists the kept pathways into output node ``outputs[g]`` (the
    column order of its Sigma_yx and Sigma_xx blocks). When every node of the
    group reaches all its pathways through one last edge (``last[g]``) from the
    same prefixes, the products [W_p1, W_p2, ...] are W_last @ [prefix products]
    for all nodes at once; otherwise the group is a single node.
    """

    outputs: tuple
    paths: tuple
    last: tuple | None
    prefixes: tuple | None

    def __len__(self):  # the number of kept pathways per node
        return len(self.paths[0])


def correlation_batch(net: GDLN, data: GatedData | list[GatedData], n_networks: int | None = None, device="cpu"):
    """The gated correlations as tensors for :func:`correlation_loss`, with the network dimension in front.

    Pathways are grouped by output node; an output node is kept if some
    pathway into it has a non-zero correlation in some network, and then all
    its pathways are kept (zero blocks cost less than separate products).
    Output nodes that share their pathways' prefixes and last-edge structure
    are stacked. Returns ``(groups, tensors)``: ``groups`` describes the
    groups, ``tensors`` is (constant, then per group the Sigma_yx of its
    pathways side by side, shape (G, out, sum of input widths), and the block
    matrix of their Sigma_xx, shape (G, sum, sum)).
    """
    datasets = data if isinstance(data, list) else [data]
    corrs = [gated_correlations(net, d) for d in datasets]

    def stack(values):
        return torch.as_tensor(np.stack(values), dtype=torch.float64, device=device)

    classes: dict = {}
    for v in net.outputs:
        into = [k for k, p in enumerate(net.pathways) if net.target(p) == v]
        if not any(np.any(c.yx[k]) or any(np.any(c.xx[(q, k)]) for q in into) for c in corrs for k in into):
            continue
        paths = tuple(net.pathways[k] for k in into)
        lasts = {p[-1] for p in paths}
        if len(lasts) == 1 and all(len(p) > 1 for p in paths):
            key = ("shared", tuple(p[:-1] for p in paths), net.nodes[v])
        else:
            key = ("single", v)
        classes.setdefault(key, []).append((v, into, paths))
    groups, tensors = [], [stack([0.5 * sum((d.weights[:, None] * d.targets[v] ** 2).sum() for v in net.outputs)
                                  for d in datasets])]
    for key, members in classes.items():
        shared = key[0] == "shared"
        groups.append(_LossGroup(tuple(m[0] for m in members), tuple(m[2] for m in members),
                                 tuple(m[2][0][-1] for m in members) if shared else None, key[1] if shared else None))
        tensors.append(stack([np.stack([np.concatenate([c.yx[k] for k in into], axis=1) for _, into, _ in members])
                              for c in corrs]))
        tensors.append(stack([np.stack([np.block([[c.xx[(q, k)] for k in into] for q in into]) for _, into, _ in members])
                              for c in corrs]))
    if not isinstance(data, list):
        n_networks = check_int("n_networks", 1 if n_networks is None else n_networks, low=1)
        tensors = [t.expand(n_networks, *t.shape[1:]) for t in tensors]
    return groups, tuple(tensors)


class _Products:
    """Side-by-side pathway products [W_p1, W_p2, ...] for pathways into one node, compiled once.

    ``add(paths)`` returns the slot of that product; pathways sharing their last edge become
    W_last @ [products of their prefixes], and equal sub-products are computed once. ``run(params)``
    evaluates every slot in order (a flat list of products and concatenations, no per-step bookkeeping).
    """

    def __init__(self):
        self.steps: list = []
        self.slots: dict = {}

    def add(self, paths: tuple) -> int:
        if paths not in self.slots:
            blocks, start = [], 0
            while start < len(paths):
                end = start
                while end < len(paths) and paths[end][-1] == paths[start][-1]:
                    end += 1
                run, edge = paths[start:end], paths[start][-1]
                child = self.add(tuple(p[:-1] for p in run)) if len(run[0]) > 1 else None
                self.steps.append((edge, child, None))
                blocks.append(len(self.steps) - 1)
                start = end
            if len(blocks) > 1:
                self.steps.append((None, None, tuple(blocks)))
            self.slots[paths] = len(self.steps) - 1
        return self.slots[paths]

    def run(self, params: dict) -> list:
        values = []
        for edge, child, parts in self.steps:
            if parts is not None:
                values.append(torch.cat([values[k] for k in parts], dim=-1))
            elif child is None:
                values.append(params[edge])
            else:
                values.append(params[edge] @ values[child])
        return values


def side_by_side(paths: tuple, params: dict) -> torch.Tensor:
    """[W_p1, W_p2, ...] for pathways into one node, sharing common suffixes: (..., width, sum of input widths)."""
    plan = _Products()
    slot = plan.add(tuple(paths))
    return plan.run(params)[slot]


def correlation_loss(net: GDLN, groups):
    """The same loss as :func:`loss_function`, written through the gated correlations only.

    L = c - sum_p <W_p, Sigma_yx(p)> + 1/2 sum_{q,p} <W_q Sigma_xx(q,p), W_p>, with
    c = 1/2 sum_n w_n |y_n|^2: the learning dynamics see the data only through
    these correlations. The pathways into one output node are handled side by
    side ([W_p1, W_p2, ...] against block matrices), pathway products share
    their common suffixes and prefixes, and output nodes reached through the
    same prefixes are stacked, so the loss is a handful of batched products.
    Takes the tensors of :func:`correlation_batch`; broadcasts over leading
    (network) dimensions and returns one loss per network.
    """

    plan = _Products()
    slots = [plan.add(group.prefixes) if group.last is not None else plan.add(group.paths[0]) for group in groups]

    def loss(params, constant, *corr):
        values = plan.run(params)
        total = constant
        for g, group in enumerate(groups):
            yx, xx = corr[2 * g], corr[2 * g + 1]
            if group.last is not None:
                prefix = values[slots[g]]                                        # (..., h, sum)
                last = params[group.last[0]] if len(group.last) == 1 else torch.cat([params[e] for e in group.last], dim=-2)
                w = last @ prefix                                                # (..., G out, sum): one product
                w = w.reshape(w.shape[:-2] + (len(group.last), -1, w.shape[-1]))  # (..., G, out, sum)
            else:
                w = values[slots[g]].unsqueeze(-3)
            total = total - (w * yx).sum((-1, -2, -3)) + 0.5 * ((w @ xx) * w).sum((-1, -2, -3))
        return total

    return loss


def train_gdln(net: GDLN, params: dict[str, torch.Tensor], data, *, steps: int, lr, record=None,
               record_every: int = 1, seed: int = 0, desc: str = "gated network") -> TrainResult:
    """Full-batch gradient descent of stacked GDLNs (leading network dimension) via :func:`train`.

    ``data`` is one :class:`GatedData` shared by all networks or a list with one
    per network. The loss is :func:`correlation_loss` (identical to the
    per-sample loss, cheaper). Time is t = lr x step.
    """
    n = next(iter(params.values())).shape[0]
    device = next(iter(params.values())).device
    groups, batch = correlation_batch(net, data, None if isinstance(data, list) else n, device=device)
    return train(correlation_loss(net, groups), params, data=batch, steps=steps, lr=lr, record=record,
                 record_every=record_every, seed=seed, desc=desc)


# ---------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------


def orthogonal_init(net: GDLN, scale: float | np.ndarray, n_networks: int, seed: int, device="cpu") -> dict[str, torch.Tensor]:
    """Random (semi-)orthogonal weights times ``scale``: every singular value of every W_e equals scale.

    ``scale`` may be one value per network. Each draw is Haar-distributed
    (QR of a Gaussian with the sign of diag(R) fixed).
    """
    n_networks = check_int("n_networks", n_networks, low=1)
    gen = check_generator(seed)
    scale = torch.as_tensor(check_array("scale", np.broadcast_to(scale, (n_networks,)), positive=True).copy())
    params = {}
    for e in net.edges:
        rows, cols = net.edge_shape(e)
        tall = torch.randn(n_networks, max(rows, cols), min(rows, cols), generator=gen, dtype=torch.float64)
        with small_problem(tall.numel(), "cpu"):
            q, r = torch.linalg.qr(tall)
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
        w = q if rows >= cols else q.transpose(-1, -2)
        params[e] = (scale[:, None, None] * w).to(device)
    return params


def node_bases(net: GDLN, modes_in: dict, modes_out: dict, seed: int) -> dict[str, np.ndarray]:
    """An orthonormal basis R_v (width x r) per node: the data's V at inputs, U at outputs, random elsewhere."""
    rank = {np.asarray(m).shape[1] for m in list(modes_in.values()) + list(modes_out.values())}
    if len(rank) != 1:
        raise ValueError(f"every mode basis needs the same number of modes; got {sorted(rank)}")
    r = rank.pop()
    rng = np.random.default_rng(check_int("seed", seed, low=0))
    bases = {}
    for v, width in net.nodes.items():
        if v in net.inputs:
            bases[v] = np.asarray(modes_in[v], dtype=np.float64)
        elif v in net.outputs:
            bases[v] = np.asarray(modes_out[v], dtype=np.float64)
        else:
            if width < r:
                raise ValueError(f"node {v!r} has width {width} < {r} modes; the aligned init needs width >= modes")
            bases[v] = np.linalg.qr(rng.standard_normal((width, r)))[0]
    return bases


def aligned_init(net: GDLN, bases: dict[str, np.ndarray], strengths, device="cpu") -> dict[str, torch.Tensor]:
    """W_e = R_target diag(b_e) R_source^T: the decoupled init under which the race reduction is exact.

    ``strengths`` has shape (..., E, r) (edges in ``net.edges`` order); leading
    dimensions become the network dimension (one network if there are none).
    """
    b = np.asarray(strengths, dtype=np.float64)
    if b.ndim == 2:
        b = b[None]
    if b.shape[-2] != len(net.edges):
        raise ValueError(f"strengths must have shape (networks, {len(net.edges)} edges, modes); got {b.shape}")
    params = {}
    for k, (e, (s, t)) in enumerate(net.edges.items()):
        w = np.einsum("ia,na,ja->nij", bases[t], b[:, k, :], bases[s])
        params[e] = torch.as_tensor(w, device=device)
    return params


# ---------------------------------------------------------------------------
# Reading mode strengths off a trained network
# ---------------------------------------------------------------------------


def pathway_projector(net: GDLN, modes_in: dict, modes_out: dict, dtype=torch.float64, device="cpu"):
    """A function params -> :func:`pathway_strengths`, with the mode bases prepared once (for recording every step)."""
    plan = []
    for v in net.outputs:
        into = [k for k, p in enumerate(net.pathways) if net.target(p) == v]
        if not into:
            continue
        paths = tuple(net.pathways[k] for k in into)
        vs = [np.asarray(modes_in[net.source(p)], dtype=np.float64) for p in paths]
        r = vs[0].shape[1]
        block = np.zeros((sum(x.shape[0] for x in vs), len(vs), r))      # block-diagonal V: columns -> (pathway, mode)
        row = 0
        for k, x in enumerate(vs):
            block[row:row + x.shape[0], k] = x
            row += x.shape[0]
        u = torch.as_tensor(np.asarray(modes_out[v], dtype=np.float64), dtype=dtype, device=device)
        plan.append((into, paths, u, torch.as_tensor(block, dtype=dtype, device=device)))
    order = np.argsort(np.concatenate([into for into, *_ in plan]))
    identity = bool(np.all(order == np.arange(len(order))))
    order = torch.as_tensor(order, device=device)
    products = _Products()
    slots = [products.add(paths) for _, paths, _, _ in plan]

    def project(params):
        values = products.run(params)
        out = [torch.einsum("ia,nij,jka->nka", u, values[slot], block)              # values: (n, out, sum of widths)
               for slot, (_, _, u, block) in zip(slots, plan)]
        pi = out[0] if len(out) == 1 else torch.cat(out, dim=1)
        return pi if identity else pi[:, order]

    return project


def pathway_strengths(net: GDLN, params: dict[str, torch.Tensor], modes_in: dict, modes_out: dict) -> torch.Tensor:
    """pi_p^alpha = u_alpha^T W_p v_alpha for every network, pathway and mode: shape (networks, P, r)."""
    w = next(iter(params.values()))
    return pathway_projector(net, modes_in, modes_out, w.dtype, w.device)(params)


def edge_projector(net: GDLN, bases: dict[str, np.ndarray], dtype=torch.float64, device="cpu"):
    """A function params -> :func:`edge_strengths`, with the bases prepared once and edges of one shape stacked."""
    classes: dict = {}
    for k, (e, (s, t)) in enumerate(net.edges.items()):
        classes.setdefault(net.edge_shape(e), []).append((k, e, s, t))
    plan = []
    for members in classes.values():
        rt = torch.as_tensor(np.stack([bases[t] for *_, t in members]), dtype=dtype, device=device)
        rs = torch.as_tensor(np.stack([bases[s] for _, _, s, _ in members]), dtype=dtype, device=device)
        plan.append(([e for _, e, _, _ in members], rt, rs))
    order = np.argsort(np.concatenate([[k for k, *_ in members] for members in classes.values()]))
    identity = bool(np.all(order == np.arange(len(order))))
    order = torch.as_tensor(order, device=device)

    def project(params):
        out = [torch.einsum("eia,neij,eja->nea", rt, torch.stack([params[e] for e in edges], dim=1), rs)
               for edges, rt, rs in plan]
        b = out[0] if len(out) == 1 else torch.cat(out, dim=1)
        return b if identity else b[:, order]

    return project


def edge_strengths(net: GDLN, params: dict[str, torch.Tensor], bases: dict[str, np.ndarray]) -> torch.Tensor:
    """b_e^alpha = R_target[:, alpha]^T W_e R_source[:, alpha]: shape (networks, E, r)."""
    w = next(iter(params.values()))
    return edge_projector(net, bases, w.dtype, w.device)(params)


# ---------------------------------------------------------------------------
# The neural race reduction
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Race:
    """The reduced race of one GDLN on one dataset, for r modes.

    ``drive[p, a]`` is s_p^a, ``coupling[q, p, a]`` is d_qp^a (zero unless q and
    p end at the same output node), ``index`` lists each pathway's edges
    (padded with E, a slot that holds 1) and ``constant`` is 1/2 sum_n w_n |y_n|^2.
    """

    net: GDLN = field(repr=False)
    drive: np.ndarray
    coupling: np.ndarray
    index: np.ndarray = field(repr=False)
    constant: float = 0.0

    @property
    def n_edges(self) -> int:
        return len(self.net.edges)


def race_reduction(net: GDLN, data: GatedData, modes_in: dict, modes_out: dict, *, tol: float = 1e-8) -> Race:
    """Project the gated correlations on the data's modes and check the reduction's assumptions.

    ``modes_in[v]`` (width x r) and ``modes_out[v]`` (width x r) are orthonormal
    mode bases at the input and output nodes. Raises ``ValueError`` if some
    Sigma_yx(p) or Sigma_xx(q, p) is not diagonal in them (relative error > tol),
    for then the neural race reduction does not apply.
    """
    for kind, nodes, modes in (("modes_in", net.inputs, modes_in), ("modes_out", net.outputs, modes_out)):
        if set(modes) != set(nodes):
            raise ValueError(f"{kind} must give a basis for exactly the nodes {list(nodes)}; got {sorted(modes)}")
        for v in nodes:
            m = np.asarray(modes[v])
            if m.ndim != 2 or m.shape[0] != net.nodes[v] or not np.allclose(m.T @ m, np.eye(m.shape[1]), atol=1e-10):
                raise ValueError(f"{kind}[{v!r}] must be (width {net.nodes[v]}) x r with orthonormal columns")
    corr = gated_correlations(net, data)
    paths = net.pathways
    r = np.asarray(next(iter(modes_in.values()))).shape[1]
    drive = np.zeros((len(paths), r))
    coupling = np.zeros((len(paths), len(paths), r))
    scale = max([np.abs(c).max() for c in corr.yx] + [np.abs(c).max() for c in corr.xx.values()] + [1e-300])
    for k, p in enumerate(paths):
        u, v = np.asarray(modes_out[net.target(p)]), np.asarray(modes_in[net.source(p)])
        drive[k] = np.einsum("ia,ij,ja->a", u, corr.yx[k], v)
        residual = np.abs(corr.yx[k] - (u * drive[k]) @ v.T).max()
        if residual > tol * scale:
            raise ValueError(f"Sigma_yx of pathway {p} is not diagonal in the given modes (residual {residual:.3g}); "
                             "the neural race reduction does not apply")
    for (q, k), c in corr.xx.items():
        vq, vk = np.asarray(modes_in[net.source(paths[q])]), np.asarray(modes_in[net.source(paths[k])])
        coupling[q, k] = np.einsum("ia,ij,ja->a", vq, c, vk)
        residual = np.abs(c @ vk - vq * coupling[q, k]).max()
        if residual > tol * scale:
            raise ValueError(f"Sigma_xx of pathways {paths[q]}, {paths[k]} is not diagonal in the given modes "
                             f"(residual {residual:.3g}); the neural race reduction does not apply")
    edge_index = {e: i for i, e in enumerate(net.edges)}
    depth = max(len(p) for p in paths)
    index = np.full((len(paths), depth), len(net.edges))
    for k, p in enumerate(paths):
        index[k, :len(p)] = [edge_index[e] for e in p]
    constant = 0.5 * sum((data.weights[:, None] * data.targets[v] ** 2).sum() for v in net.outputs)
    return Race(net, drive, coupling, index, float(constant))


def stack_races(races) -> Race:
    """One :class:`Race` for several reductions of the same graph: drive (n, P, r), coupling (n, P, P, r).

    Strengths of shape (..., n, E, r) then follow all n races at once (one ODE
    solve instead of n); the races must share the graph's pathway index.
    """
    races = list(races)
    if not races:
        raise ValueError("stack_races needs at least one Race")
    index = races[0].index
    if any(r.index.shape != index.shape or np.any(r.index != index) for r in races):
        raise ValueError("every race must come from the same graph (the same pathways and edges)")
    return Race(races[0].net, np.stack([r.drive for r in races]), np.stack([r.coupling for r in races]), index,
                np.array([r.constant for r in races]))


def race_products(b, race: Race) -> np.ndarray:
    """pi_p = prod_{e in p} b_e for strengths b of shape (..., E, r): shape (..., P, r)."""
    b = np.asarray(b, dtype=np.float64)
    ext = np.concatenate([b, np.ones(b.shape[:-2] + (1, b.shape[-1]))], axis=-2)
    return np.prod(ext[..., race.index, :], axis=-2)


def race_loss(b, race: Race) -> np.ndarray:
    """The loss in reduced variables, c - sum s_p pi_p + 1/2 sum d_qp pi_q pi_p over pathways and modes: shape (...).

    Exact when the targets lie in the span of the modes (the loss of the
    target components outside them is a constant that this leaves out).
    """
    pi = race_products(b, race)
    return (race.constant - (race.drive * pi).sum((-1, -2))
            + 0.5 * np.einsum("...qpa,...qa,...pa->...", race.coupling, pi, pi))


def _race_field(race: Race):
    """db/dt as a function of b (..., E, r), with the race's index and scatter matrix prepared once."""
    index, n_edges = race.index, race.n_edges
    n_paths, depth = index.shape
    scatter = np.zeros((n_edges + 1, depth * n_paths))
    scatter[index.T.ravel(), np.arange(n_paths * depth)] = 1.0     # column k P + p: edge at position k of pathway p
    scatter = np.ascontiguousarray(scatter[:n_edges])
    drive, coupling = race.drive, race.coupling
    columns = [index[:, k] for k in range(depth)]

    def rhs(b):
        b = np.asarray(b, dtype=np.float64)
        ext = np.concatenate([b, np.ones(b.shape[:-2] + (1, b.shape[-1]))], axis=-2)
        parts = [ext[..., c, :] for c in columns]            # (..., P, r): the edge at each position of each pathway
        # prod_{e' in p, e' != e} b_e' at each position of e in p: the products before times the products after
        before, after = [None] * depth, [None] * depth
        for k in range(1, depth):
            before[k] = parts[k - 1] if k == 1 else before[k - 1] * parts[k - 1]
            after[depth - 1 - k] = parts[depth - k] if k == 1 else after[depth - k] * parts[depth - k]
        pi = parts[0] if depth == 1 else before[-1] * parts[-1]
        error = drive - (coupling * pi[..., :, None, :]).sum(-3)
        grads = []
        for k in range(depth):
            g = error if before[k] is None else before[k] * error
            grads.append(g if after[k] is None else after[k] * g)
        return scatter @ np.concatenate(grads, axis=-2)

    return rhs


def race_rhs(b, race: Race) -> np.ndarray:
    """db_e/dt = sum_{p through e} (prod_{e' in p, e' != e} b_e') (s_p - sum_q d_qp pi_q), batched over (..., E, r)."""
    return _race_field(race)(b)


def race_solve(t, b0, race: Race, *, rtol: float = 1e-11, atol: float = 1e-14) -> np.ndarray:
    """Integrate the race ODEs from b0 (..., E, r) and return b at times t: shape (T, ..., E, r).

    For several races of one graph, stack them (:func:`stack_races`) and give
    b0 of shape (n, E, r): one solve follows them all.
    """
    t = check_array("t", t, ndim=1)
    if t[0] < 0 or np.any(np.diff(t) < 0):
        raise ValueError("t must be non-negative and increasing")
    b0 = np.asarray(b0, dtype=np.float64)
    if t[0] > 0:
        t = np.concatenate([[0.0], t])
        return integrate(_race_field(race), t, b0, rtol=rtol, atol=atol)[1:]
    return integrate(_race_field(race), t, b0, rtol=rtol, atol=atol)


def race_steps(b0, race: Race, lr: float, steps: int, record_every: int = 1):
    """Gradient descent on the reduced strengths, b <- b + lr db/dt: returns (recorded steps, b of shape (R, ..., E, r)).

    When the reduction holds, one GD step of the full network is exactly one
    such step, at any learning rate.
    """
    lr = check_positive("lr", lr)
    steps = check_int("steps", steps, low=1)
    record_every = check_int("record_every", record_every, low=1)
    b = np.array(b0, dtype=np.float64)
    rhs = _race_field(race)
    kept, out = [], []
    for step in progress(range(steps + 1), desc="reduced equations, GD steps"):
        if step % record_every == 0 or step == steps:
            kept.append(step)
            out.append(b.copy())
        if step < steps:
            b = b + lr * rhs(b)
    return np.array(kept), np.stack(out)


def aligned_runs(tasks, b0, *, lr: float, steps: int, records: int = 100, seed: int = 0, flow: bool = True,
                 device="cpu") -> dict:
    """GD from the decoupled (aligned) init next to the reduction, for tasks that share one graph.

    Every task gets its own network; all train in one batched run. Each
    pathway starts with |b_e| = b0 on every mode, signs following its drive
    (:func:`signed_strengths`). Returns the times t = lr x step, the pathway
    strengths from GD ``gd`` and from the reduced ODEs ``flow`` (both (T,
    tasks, P, r)), the edge strengths from GD ``edges_gd`` and the reduction
    ``flow_edges`` ((T, tasks, E, r)), the drives (tasks, P, r), the losses,
    the reductions ``races`` and the initial strengths ``start``. With
    ``flow=False`` the ODEs are not solved (for GD-stepped comparisons with
    :func:`race_steps`).
    """
    net = tasks[0].net
    if any(t.net.nodes != net.nodes or t.net.edges != net.edges for t in tasks):
        raise ValueError("every task must use the same graph (build context tasks with the same n_slots)")
    races = [race_reduction(net, t.data, t.modes_in, t.modes_out) for t in tasks]
    start = np.stack([signed_strengths(r, b0) for r in races])
    bases = node_bases(net, tasks[0].modes_in, tasks[0].modes_out, seed=seed)
    every = max(1, steps // records)
    pathways = pathway_projector(net, tasks[0].modes_in, tasks[0].modes_out, device=device)
    edges = edge_projector(net, bases, device=device)
    result = train_gdln(net, aligned_init(net, bases, start, device=device), [t.data for t in tasks], steps=steps, lr=lr,
                        record_every=every, seed=seed, desc="gated network, aligned init",
                        record=lambda p: {"pi": pathways(p), "b": edges(p)})
    times = result.steps * lr
    out = {"times": times, "gd": result.records["pi"], "edges_gd": result.records["b"], "loss": result.records["loss"],
           "drive": np.stack([r.drive for r in races]), "races": races, "start": start}
    if flow:
        stacked = stack_races(races)
        edges = race_solve(times, start, stacked)                     # all tasks in one solve
        out["flow_edges"] = edges
        out["flow"] = race_products(edges, stacked)
    return out


def signed_strengths(race: Race, b0: float) -> np.ndarray:
    """Initial strengths |b| = b0 whose pathway products have the sign of each pathway's drive.

    A pathway whose drive is negative cannot learn from a positive balanced
    start (its product would have to pass through zero), so one edge that
    belongs to that pathway alone is flipped. Shape (E, r).
    """
    b0 = check_positive("b0", b0)
    b = np.full((race.n_edges, race.drive.shape[1]), b0)
    owners = np.bincount(race.index[race.index < race.n_edges].ravel(), minlength=race.n_edges)
    for k in range(len(race.index)):
        own = [e for e in race.index[k] if e < race.n_edges and owners[e] == 1]
        if own:
            b[own[0]] = np.where(race.drive[k] < 0, -b0, b0)
    return b


# ---------------------------------------------------------------------------
# One chain of equivalent pathways: the brief's generic chain ODE
# ---------------------------------------------------------------------------


def chain_rhs(b, weights, target) -> np.ndarray:
    """db_e/dt = w_e prod_{e' != e} b_e' (s - pi) for b of shape (..., L) (last axis: edges)."""
    b = np.asarray(b, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    pi = np.prod(b, axis=-1, keepdims=True)
    ones = np.ones_like(b[..., :1])
    before = np.cumprod(np.concatenate([ones, b[..., :-1]], -1), -1)
    after = np.flip(np.cumprod(np.concatenate([ones, np.flip(b, -1)[..., :-1]], -1), -1), -1)
    return w * before * after * (np.asarray(target, dtype=np.float64)[..., None] - pi)


def chain_solve(t, b0, weights, target) -> np.ndarray:
    """Strengths b_e(t) of one chain mode: shape (T, ..., L) for b0 of shape (..., L).

    Closed form (:func:`learning_dynamics.linear.deep_mode`) when b_e(0)^2 / w_e
    is the same for every edge (the conserved b_e^2/w_e - b_f^2/w_f are then 0,
    so b_e = sqrt(w_e) c and pi = W c^L with W = prod sqrt(w_e)); otherwise the
    ODE is integrated numerically. ``target`` broadcasts against b0[..., 0].
    """
    t = check_array("t", t, ndim=1)
    b0 = np.asarray(b0, dtype=np.float64)
    w = check_array("weights", weights, ndim=1, positive=True)
    if b0.shape[-1] != len(w):
        raise ValueError(f"b0 needs one strength per edge ({len(w)}) on its last axis; got shape {b0.shape}")
    target = np.broadcast_to(np.asarray(target, dtype=np.float64), b0.shape[:-1])
    ratio = b0**2 / w
    balanced = np.allclose(ratio, ratio[..., :1], rtol=1e-12) and np.all(b0 > 0) and np.all(target > 0)
    if balanced and np.all(np.prod(b0, -1) < target):
        depth = len(w)
        big_w = np.prod(np.sqrt(w))
        pi = linear.deep_mode(t.reshape((-1,) + (1,) * target.ndim), target, np.prod(b0, -1), depth, big_w ** (2.0 / depth))
        c = (pi / big_w) ** (1.0 / depth)
        return c[..., None] * np.sqrt(w)
    if t[0] > 0:
        return integrate(lambda b: chain_rhs(b, w, target), np.concatenate([[0.0], t]), b0, rtol=1e-12, atol=1e-14)[1:]
    return integrate(lambda b: chain_rhs(b, w, target), t, b0, rtol=1e-12, atol=1e-14)
