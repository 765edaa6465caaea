"""Batched gradient descent of gated deep linear networks against a per-network loop.

``batched_s`` trains every network in one run of :func:`learning_dynamics.gated.train_gdln`
(stacked weights, correlation form of the loss, one backward pass for all);
``loop_s`` trains the same networks one at a time with plain autograd on the
per-sample loss (:func:`learning_dynamics.train.train_loop`). ``ratio =
loop_s / batched_s``. The note gives the largest difference between the
final weights. The last row compares the full network with its neural race
reduction stepped identically (:func:`learning_dynamics.gated.race_steps`).
The planner row times :func:`learning_dynamics.gated.correlation_loss`, whose
product planner shares common sub-products, against the same loss written
plainly: every pathway product multiplied out on its own, then the sums over
pathways and pathway pairs (the row that decides whether the planner stays).
"""

from __future__ import annotations

import os
import time

import learning_dynamics  # noqa: F401  (first: it sets the CPU thread policy before torch loads)
import numpy as np
import torch

from functools import reduce

from learning_dynamics import gated
from learning_dynamics.tasks import hierarchy
from learning_dynamics.train import train, train_loop

os.environ.setdefault("LD_PROGRESS", "0")


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _versus_loop(label, net, data, params, steps, lr, note) -> dict:
    t_batched, batched = _timed(lambda: gated.train_gdln(net, params, data, steps=steps, lr=lr).params)
    batch = gated.data_tensors(net, data, None if isinstance(data, list) else next(iter(params.values())).shape[0])
    t_loop, looped = _timed(lambda: train_loop(gated.loss_function(net), params, steps=steps, lr=lr, data=batch))
    diff = max(float((batched[k] - looped[k]).abs().max()) for k in params)
    return dict(benchmark=label, batched_s=t_batched, loop_s=t_loop, ratio=t_loop / t_batched,
                note=f"{note}; max |dW| {diff:.1e}")


def plain_correlation_loss(net, data, n_networks: int):
    """The correlation loss without the planner: each W_p = W_last ... W_first on its own (no constant term)."""
    corr = gated.gated_correlations(net, data)
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    yx = [as_tensor(m) for m in corr.yx]
    xx = {key: as_tensor(m) for key, m in corr.xx.items()}

    def loss(params):
        w = [reduce(torch.matmul, [params[e] for e in reversed(path)]) for path in net.pathways]
        total = torch.zeros(n_networks, dtype=torch.float64)
        for k, m in enumerate(yx):
            total = total - (w[k] * m).sum((-1, -2))
        for (q, k), m in xx.items():
            total = total + 0.5 * ((w[q] @ m) * w[k]).sum((-1, -2))
        return total

    return loss


def planner_row(task, params, steps: int, lr: float) -> dict:
    n = next(iter(params.values())).shape[0]
    t_planned, planned = _timed(lambda: gated.train_gdln(task.net, params, task.data, steps=steps, lr=lr).params)
    plain = plain_correlation_loss(task.net, task.data, n)
    t_plain, plainly = _timed(lambda: train(plain, params, data=(), steps=steps, lr=lr).params)
    diff = max(float((planned[k] - plainly[k]).abs().max()) for k in params)
    return dict(benchmark="neural race: routing network, product planner vs plain per-pathway products",
                batched_s=t_planned, loop_s=t_plain, ratio=t_plain / t_planned,
                note=f"{steps} GD steps, {n} networks, {len(task.net.pathways)} pathways; both batched; max |dW| {diff:.1e}")


def rows() -> list[dict]:
    out = []
    routing = hierarchy.routing_task(hierarchy.routing_gate(7, 4), hidden=64)
    scales = np.repeat(np.linspace(0.2, 2.5, 6), 2)
    out.append(_versus_loop(
        "neural race: routing network (M=7, K=4, width 64), 12 inits", routing.net, routing.data,
        gated.orthogonal_init(routing.net, scales, len(scales), seed=0), 100, 0.005,
        "100 GD steps, 15 weight matrices and 49 pathways per network"))

    contexts = (1, 2, 3, 4, 6, 8)
    tasks = [hierarchy.context_task(c, max(contexts), 2, 8) for c in contexts]
    out.append(_versus_loop(
        "neural race: shared vs private pathways, 6 context counts", tasks[0].net, [t.data for t in tasks],
        gated.orthogonal_init(tasks[0].net, 0.3, len(tasks), seed=0), 300, 1e-3,
        "300 GD steps, one network per number of contexts (each with its own data)"))

    out.append(planner_row(routing, gated.orthogonal_init(routing.net, scales, len(scales), seed=0), 100, 0.005))

    run_full, full = _timed(lambda: gated.aligned_runs([routing], 0.08, lr=0.02, steps=200, records=200, flow=False))
    t_reduced, (_, reduced) = _timed(lambda: gated.race_steps(full.final["start"][0], full.final["races"][0], 0.02, 200))
    diff = float(np.abs(full.records["edges_gd"][:, 0] - reduced).max())
    out.append(dict(benchmark="neural race: routing network, reduction (60 scalars) vs full GD", batched_s=t_reduced,
                    loop_s=run_full, ratio=run_full / t_reduced,
                    note=f"200 steps at lr 0.02 from the decoupled init; max |db| {diff:.1e}"))
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    for row in rows():
        print(f"{row['benchmark']:<68} batched {row['batched_s']:.3g} s  loop {row['loop_s']:.3g} s  "
              f"ratio {row['ratio']:.3g}  ({row['note']})")
