"""The neural race reduction: the scalar ODEs of aligned mode strengths, their solution, and the chain ODE."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import linear
from ..ode import integrate
from ..results import Run
from ..train import progress
from ..validation import Array, Boolean, InstanceOf, Integer, Real, validate_params, value_text
from .graph import _DEVICE, _NET, GDLN, GatedData, aligned_init, edge_projector, gated_correlations, node_bases, \
    pathway_projector
from .loss import train_gdln

# What the public entry points declare (see :func:`learning_dynamics.validation.validate_params`).
_POSITIVE = Real(low=0.0, strict_low=True)
_TASKS = InstanceOf(list, tuple, description="a list of tasks (GatedTask) on one graph")

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


_RACE = InstanceOf(Race, description="a Race")


@validate_params({"net": _NET, "data": InstanceOf(GatedData, description="a GatedData"), "modes_in": InstanceOf(dict),
                  "modes_out": InstanceOf(dict), "tol": _POSITIVE})
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
                detail = (f"max |M^T M - I| = {float(np.abs(m.T @ m - np.eye(m.shape[1])).max()):.3g}"
                          if m.ndim == 2 and m.shape[0] == net.nodes[v] else "the wrong shape")
                raise ValueError(f"{kind}[{v!r}] must be (width {net.nodes[v]}) x r with orthonormal columns; got shape "
                                 f"{m.shape}, with {detail}")
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
        raise ValueError(f"races must hold at least one Race; got {races!r}")
    index = races[0].index
    other = [k for k, r in enumerate(races) if r.index.shape != index.shape or np.any(r.index != index)]
    if other:
        raise ValueError(f"races must all come from the same graph (the same pathways and edges); got race(s) {other} "
                         f"from a different graph than race 0")
    return Race(races[0].net, np.stack([r.drive for r in races]), np.stack([r.coupling for r in races]), index,
                np.array([r.constant for r in races]))


@validate_params({"b": Array(), "race": _RACE})
def race_products(b, race: Race) -> np.ndarray:
    """pi_p = prod_{e in p} b_e for strengths b of shape (..., E, r): shape (..., P, r)."""
    b = np.asarray(b, dtype=np.float64)
    ext = np.concatenate([b, np.ones(b.shape[:-2] + (1, b.shape[-1]))], axis=-2)
    return np.prod(ext[..., race.index, :], axis=-2)


@validate_params({"b": Array(), "race": _RACE})
def race_loss(b, race: Race) -> np.ndarray:
    """The loss in reduced variables, c - sum s_p pi_p + 1/2 sum d_qp pi_q pi_p over pathways and modes: shape (...).

    Exact when the targets lie in the span of the modes (the loss of the
    target components outside them is a constant that this leaves out).
    """
    pi = race_products(b, race)
    return (race.constant - (race.drive * pi).sum((-1, -2))
            + 0.5 * np.einsum("...qpa,...qa,...pa->...", race.coupling, pi, pi))


@validate_params({"b": Array(), "race": _RACE, "target": Array(ndim=1), "pathway": Integer(low=0)})
def pathway_error(b, race: Race, target, pathway: int = 0) -> np.ndarray:
    """One pathway's error 1/2 sum over modes (s - pi_p)^2 for strengths b (..., E, r) and targets s (r,): shape (...).

    For the routing network (:func:`learning_dynamics.tasks.hierarchy.routing_task`) this is the test error of
    a module pair in the reduction (neural_race chapter, Figs. fig-neural-race-generalisation to fig-neural-race-km).
    """
    pi = race_products(b, race)
    if pathway >= pi.shape[-2] or np.shape(target) != pi.shape[-1:]:
        raise ValueError(f"pathway must be < {pi.shape[-2]} and target must have shape {pi.shape[-1:]}; "
                         f"got pathway = {pathway} and target of shape {np.shape(target)}")
    return 0.5 * ((np.asarray(target, dtype=np.float64) - pi[..., pathway, :]) ** 2).sum(-1)


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


@validate_params({"t": Array(ndim=1), "b0": Array(), "race": _RACE, "rtol": _POSITIVE, "atol": Real(low=0.0)})
def race_solve(t, b0, race: Race, *, rtol: float = 1e-11, atol: float = 1e-14) -> np.ndarray:
    """Integrate the race ODEs from b0 (..., E, r) and return b at times t: shape (T, ..., E, r).

    For several races of one graph, stack them (:func:`stack_races`) and give
    b0 of shape (n, E, r): one solve follows them all.
    """
    if not len(t) or t[0] < 0 or np.any(np.diff(t) < 0):
        raise ValueError(f"t must be a non-empty, non-negative and non-decreasing 1-D array of times; got {value_text(t)}")
    if t[0] > 0:
        t = np.concatenate([[0.0], t])
        return integrate(_race_field(race), t, b0, rtol=rtol, atol=atol)[1:]
    return integrate(_race_field(race), t, b0, rtol=rtol, atol=atol)


@validate_params({"b0": Array(), "race": _RACE, "lr": _POSITIVE, "steps": Integer(low=1), "record_every": Integer(low=1)})
def race_steps(b0, race: Race, lr: float, steps: int, record_every: int = 1):
    """Gradient descent on the reduced strengths, b <- b + lr db/dt: returns (recorded steps, b of shape (R, ..., E, r)).

    When the reduction holds, one GD step of the full network is exactly one
    such step, at any learning rate.
    """
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


@validate_params({"tasks": _TASKS, "b0": _POSITIVE, "lr": _POSITIVE, "steps": Integer(low=1), "records": Integer(low=1),
                  "seed": Integer(low=0), "flow": Boolean(), "device": _DEVICE})
def aligned_runs(tasks, b0, *, lr: float, steps: int, records: int = 100, seed: int = 0, flow: bool = True,
                 device="cpu") -> Run:
    """GD from the decoupled (aligned) init next to the reduction, for tasks that share one graph.

    Every task gets its own network; all train in one batched run. Each
    pathway starts with |b_e| = b0 on every mode, signs following its drive
    (:func:`signed_strengths`). Returns a :class:`~learning_dynamics.results.Run` (t = lr x step)
    recording the pathway strengths from GD ``gd`` and from the reduced ODEs
    ``flow`` (both (T, tasks, P, r)), the edge strengths from GD ``edges_gd``
    and from the reduction ``flow_edges`` ((T, tasks, E, r)) and the
    ``loss``; its ``final`` holds the ``drive`` (tasks, P, r), the
    reductions ``races`` and the initial strengths ``start``. With
    ``flow=False`` the ODEs are not solved (for GD-stepped comparisons with
    :func:`race_steps`).
    """
    if not tasks:
        raise ValueError(f"tasks must hold at least one task; got {tasks!r}")
    net = tasks[0].net
    other = [k for k, t in enumerate(tasks) if t.net.nodes != net.nodes or t.net.edges != net.edges]
    if other:
        raise ValueError(f"tasks must all use the same graph (build context tasks with the same n_slots); got task(s) "
                         f"{other} on a different graph than task 0 ({net!r})")
    races = [race_reduction(net, t.data, t.modes_in, t.modes_out) for t in tasks]
    start = np.stack([signed_strengths(r, b0) for r in races])
    bases = node_bases(net, tasks[0].modes_in, tasks[0].modes_out, seed=seed)
    every = max(1, steps // records)
    pathways = pathway_projector(net, tasks[0].modes_in, tasks[0].modes_out, device=device)
    edges = edge_projector(net, bases, device=device)
    result = train_gdln(net, aligned_init(net, bases, start, device=device), [t.data for t in tasks], steps=steps, lr=lr,
                        record_every=every, seed=seed, desc="gated network, aligned init",
                        record=lambda p: {"pi": pathways(p), "b": edges(p)})
    run = Run(times=result.times, steps=result.steps, params=result.params,
              records={"gd": result.records["pi"], "edges_gd": result.records["b"], "loss": result.records["loss"]},
              final={"drive": np.stack([r.drive for r in races]), "races": races, "start": start})
    if flow:
        stacked = stack_races(races)
        edges = race_solve(run.times, start, stacked)                     # all tasks in one solve
        run.records["flow_edges"] = edges
        run.records["flow"] = race_products(edges, stacked)
    return run


@validate_params({"tasks": _TASKS, "b0": _POSITIVE, "t": Array(ndim=1)})
def reduced_products(tasks, b0, t) -> np.ndarray:
    """The reduction alone, for tasks that share one graph: pathway strengths (len(t), tasks, P, r).

    Each pathway starts as in :func:`aligned_runs` (|b_e| = b0, signs from its
    drive); all tasks are solved in one ODE call.
    """
    races = [race_reduction(task.net, task.data, task.modes_in, task.modes_out) for task in tasks]
    stacked = stack_races(races)
    edges = race_solve(t, np.stack([signed_strengths(r, b0) for r in races]), stacked)
    return race_products(edges, stacked)


@validate_params({"race": _RACE, "b0": _POSITIVE})
def signed_strengths(race: Race, b0: float) -> np.ndarray:
    """Initial strengths |b| = b0 whose pathway products have the sign of each pathway's drive.

    A pathway whose drive is negative cannot learn from a positive balanced
    start (its product would have to pass through zero), so one edge that
    belongs to that pathway alone is flipped. Shape (E, r).
    """
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


@validate_params({"t": Array(ndim=1), "b0": Array(), "weights": Array(ndim=1, positive=True), "target": Array()})
def chain_solve(t, b0, weights, target) -> np.ndarray:
    """Strengths b_e(t) of one chain mode: shape (T, ..., L) for b0 of shape (..., L).

    Closed form (:func:`learning_dynamics.linear.deep_mode`) when b_e(0)^2 / w_e
    is the same for every edge (the conserved b_e^2/w_e - b_f^2/w_f are then 0,
    so b_e = sqrt(w_e) c and pi = W c^L with W = prod sqrt(w_e)); otherwise the
    ODE is integrated numerically. ``target`` broadcasts against b0[..., 0].
    """
    b0, w = np.asarray(b0, dtype=np.float64), weights
    if b0.ndim < 1 or b0.shape[-1] != len(w):
        raise ValueError(f"b0 must hold one strength per edge ({len(w)}) on its last axis; got shape {b0.shape}")
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
