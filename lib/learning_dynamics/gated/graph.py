"""The gated network itself: its graph, its gated data and correlations, initialisations, and mode strengths read off trained weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..threads import small_problem
from ..validation import AnyOf, Array, Device, InstanceOf, Integer, Optional, Seed, check_array, check_generator, check_int, \
    validate_params, value_text

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


# What the public entry points declare (see :func:`learning_dynamics.validation.validate_params`).
_NET = InstanceOf(GDLN, description="a GDLN")
_DICT = InstanceOf(dict)
_DEVICE = AnyOf(Device(), InstanceOf(torch.device, description="a torch.device"))  # a tensor's .device too


@validate_params({"net": _NET, "inputs": _DICT, "targets": _DICT, "node_gates": Optional(_DICT),
                  "edge_gates": Optional(_DICT), "weights": Optional(Array(ndim=1))})
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
    weights = np.ones(n) if weights is None else weights
    if weights.shape != (n,) or np.any(weights < 0):
        raise ValueError(f"weights must be >= 0 with shape ({n},); got {value_text(weights)} of shape {weights.shape}")
    for v in net.outputs:
        stray = (gates["node"][v] == 0)[:, None] & (arrays["targets"][v] != 0)
        if np.any(stray):
            raise ValueError(f"targets[{v!r}] must be zero where output node {v!r} is gated off; got {int(stray.sum())} "
                             f"non-zero entries there, in sample(s) {np.flatnonzero(stray.any(-1))[:10].tolist()}")
    return GatedData(arrays["inputs"], arrays["targets"], gates["node"], gates["edge"], weights)


@validate_params({"net": _NET, "data": InstanceOf(GatedData, description="a GatedData")})
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


@validate_params({"net": _NET, "data": InstanceOf(GatedData, description="a GatedData")})
def gated_correlations(net: GDLN, data: GatedData) -> Correlations:
    """Sigma_yx(p) = sum_n w g_p y x_p^T and Sigma_xx(q, p) = sum_n w g_q g_p x_q x_p^T."""
    gates = pathway_gates(net, data)
    yx, xx = [None] * len(net.pathways), {}
    for v in net.outputs:                         # one product per output node: its pathways side by side
        into = [k for k, p in enumerate(net.pathways) if net.target(p) == v]
        if not into:
            continue
        gated_inputs = np.concatenate([data.inputs[net.source(net.pathways[k])] * gates[:, k, None] for k in into], axis=1)
        weighted = gated_inputs * data.weights[:, None]
        cuts = np.cumsum([net.nodes[net.source(net.pathways[k])] for k in into])[:-1]
        for k, block in zip(into, np.split(data.targets[v].T @ weighted, cuts, axis=1)):
            yx[k] = block
        for q, row in zip(into, np.split(weighted.T @ gated_inputs, cuts, axis=0)):
            for k, block in zip(into, np.split(row, cuts, axis=1)):
                xx[(q, k)] = block
    return Correlations(yx, xx)


# ---------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------


@validate_params({"net": _NET, "scale": Array(positive=True), "n_networks": Integer(low=1), "seed": Seed(), "device": _DEVICE})
def orthogonal_init(net: GDLN, scale: float | np.ndarray, n_networks: int, seed: int, device="cpu") -> dict[str, torch.Tensor]:
    """Random (semi-)orthogonal weights times ``scale``: every singular value of every W_e equals scale.

    ``scale`` may be one value per network. Each draw is Haar-distributed
    (QR of a Gaussian with the sign of diag(R) fixed).
    """
    gen = check_generator(seed)
    try:
        scale = torch.as_tensor(np.broadcast_to(scale, (n_networks,)).copy())
    except ValueError as err:
        raise ValueError(f"scale must be one value or one per network, shape ({n_networks},); got {value_text(scale)} of "
                         f"shape {scale.shape}") from err
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


@validate_params({"net": _NET, "modes_in": _DICT, "modes_out": _DICT, "seed": Integer(low=0)})
def node_bases(net: GDLN, modes_in: dict, modes_out: dict, seed: int) -> dict[str, np.ndarray]:
    """An orthonormal basis R_v (width x r) per node: the data's V at inputs, U at outputs, random elsewhere."""
    rank = {np.asarray(m).shape[1] for m in list(modes_in.values()) + list(modes_out.values())}
    if len(rank) != 1:
        raise ValueError(f"every mode basis needs the same number of modes; got {sorted(rank)}")
    r = rank.pop()
    rng = np.random.default_rng(seed)
    bases = {}
    for v, width in net.nodes.items():
        if v in net.inputs:
            bases[v] = np.asarray(modes_in[v], dtype=np.float64)
        elif v in net.outputs:
            bases[v] = np.asarray(modes_out[v], dtype=np.float64)
        else:
            if width < r:
                raise ValueError(f"net must have hidden nodes at least as wide as the {r} modes (the aligned init needs width "
                                 f">= modes); got node {v!r} of width {width}")
            bases[v] = np.linalg.qr(rng.standard_normal((width, r)))[0]
    return bases


@validate_params({"net": _NET, "bases": _DICT, "strengths": Array(), "device": _DEVICE})
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


@validate_params({"net": _NET, "modes_in": _DICT, "modes_out": _DICT, "dtype": InstanceOf(torch.dtype), "device": _DEVICE})
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


@validate_params({"net": _NET, "bases": _DICT, "dtype": InstanceOf(torch.dtype), "device": _DEVICE})
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
