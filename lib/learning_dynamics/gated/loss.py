"""Gradient descent on gated networks, batched over networks: the forward pass, the loss in three forms and the trainer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import sweep
from ..results import Run
from ..train import train
from ..validation import AnyOf, InstanceOf, Integer, Optional, validate_params
from ..validation import Callable as AnyCallable
from .graph import _DEVICE, _NET, GDLN, GatedData, _Products, gated_correlations

# What the public entry points declare (see :func:`learning_dynamics.validation.validate_params`).
_DATA = AnyOf(InstanceOf(GatedData, description="a GatedData"), InstanceOf(list, description="a list of GatedData"))

# ---------------------------------------------------------------------------
# Full gradient descent on the gated network (batched over networks)
# ---------------------------------------------------------------------------


@validate_params({"net": _NET, "data": _DATA, "n_networks": Optional(Integer(low=1)), "device": _DEVICE})
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
            raise ValueError(f"n_networks must equal the number of datasets ({len(datasets)}); got {n_networks!r}")
        return tuple(parts)
    n_networks = 1 if n_networks is None else n_networks
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


@validate_params({"net": _NET})
def loss_function(net: GDLN):
    """The loss 1/2 sum_n w_n sum_v |y_v - y_hat_v|^2, per network (broadcasts over leading dimensions)."""
    n_in, n_out = len(net.inputs), len(net.outputs)

    def loss(params, *batch):
        targets, weights = batch[n_in:n_in + n_out], batch[-1]
        outputs = forward(net, params, *batch)
        return 0.5 * sum((weights[..., None] * (y - y_hat) ** 2).sum((-1, -2)) for y, y_hat in zip(targets, outputs))

    return loss


@validate_params({"net": _NET, "params": InstanceOf(dict), "batch": InstanceOf(tuple),
                  "n_groups": Optional(Integer(low=1))})
def output_errors(net: GDLN, params: dict[str, torch.Tensor], batch: tuple, groups=None, n_groups: int | None = None) -> torch.Tensor:
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


@validate_params({"net": _NET, "data": _DATA, "n_networks": Optional(Integer(low=1)), "device": _DEVICE})
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
        n_networks = 1 if n_networks is None else n_networks
        tensors = [t.expand(n_networks, *t.shape[1:]) for t in tensors]
    return groups, tuple(tensors)


@validate_params({"net": _NET})
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


@validate_params({"net": _NET, "params": InstanceOf(dict, description="a dict of stacked tensors"), "data": _DATA,
                  "steps": Integer(low=1), "record": Optional(AnyCallable()), "record_every": Integer(low=1),
                  "seed": Integer(low=0), "desc": InstanceOf(str), "chunks": Optional(Integer(low=1))})
def train_gdln(net: GDLN, params: dict[str, torch.Tensor], data, *, steps: int, lr, record=None,
               record_every: int = 1, seed: int = 0, desc: str = "gated network", client=None, chunks=None) -> Run:
    """Full-batch gradient descent of stacked GDLNs (leading network dimension) via :func:`train`.

    ``data`` is one :class:`GatedData` shared by all networks or a list with one
    per network. The loss is :func:`correlation_loss` (identical to the
    per-sample loss, cheaper). Time is t = lr x step. With a ``client``
    (:func:`learning_dynamics.sweep.client`) or ``chunks`` the networks train
    in chunks (:func:`learning_dynamics.sweep.map_runs`; full-batch GD of
    independent networks, so the result is the same; the final ``params``
    are not kept).
    """
    if not params:
        raise ValueError(f"params must hold at least one stacked weight tensor; got {params!r}")
    n = next(iter(params.values())).shape[0]
    if client or chunks is not None:
        def part(index):
            idx = torch.as_tensor(index)
            rates = lr if np.ndim(lr) == 0 else torch.as_tensor(lr)[idx]
            return train_gdln(net, {k: v[idx] for k, v in params.items()},
                              [data[i] for i in index] if isinstance(data, list) else data, steps=steps, lr=rates,
                              record=record, record_every=record_every, seed=seed, desc=desc)
        return sweep.map_runs(part, n, client=client, chunks=chunks, desc=desc)
    device = next(iter(params.values())).device
    groups, batch = correlation_batch(net, data, None if isinstance(data, list) else n, device=device)
    return train(correlation_loss(net, groups), params, data=batch, steps=steps, lr=lr, record=record,
                 record_every=record_every, seed=seed, desc=desc)
