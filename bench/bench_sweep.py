"""One process against a dask LocalCluster of 2 workers (``sweep.map``), on this 2-core machine.

``batched_s`` (the "ours" column) is the sweep on ``sweep.client("local:2")``:
two worker processes, one thread each, one chunk per worker; ``loop_s`` (the
"other" column) is the same sweep in this process as ONE batched call
(``sweep.map`` without a client, the chapters' default). ``ratio = loop_s /
batched_s`` (> 1: the cluster is faster). Both are measured in the same run;
the cluster's start (worker processes, their torch import) is not included,
the note gives it.

- feedback_principle's lambda x scale grid at the paper preset (40 x 40
  networks, 4000 full-batch GD steps; the book uses the same grid): the
  chunks give bitwise the one-call result (the note checks it). Each step is
  tiny, so the in-process run is on one thread already (``threads.small_problem``).
- spring_block's DNN phase diagram with the paper's networks (width 100, depth
  7, 1500 digits, 100 Adam steps), on a few cells: the paper's 6 slopes x 2
  noise levels x 1 seed, one noise level (a column of the diagram) per chunk.
  The in-process call runs on both cores (torch threads). The per-step noise
  is drawn for the networks of one call, so a column trained alone draws other
  noise than the same column trained with the rest: equal in distribution,
  not bitwise (chunked runs are bitwise equal to each other on any cluster).
"""

from __future__ import annotations

import os
import time

import learning_dynamics  # noqa: F401  (first: it sets the CPU thread policy before torch loads)
import numpy as np

from learning_dynamics import linear, mlp, presets, sweep, tasks
from learning_dynamics.tasks import digits

os.environ.setdefault("LD_PROGRESS", "0")


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def lambda_chunk(chunk, *, x, y, lr, steps, seed):
    """A chunk of the (lambda, scale) grid: the kernel distance and final loss of each network."""
    run = linear.lambda_grid_runs(x, y, chunk["lam"], chunk["scale"], lr=lr, steps=steps, seed=seed)
    grams = run.records["w1tw1"], run.records["w2w2t"]
    distance = linear.grams_kernel_distance((grams[0][0], grams[1][0]), (grams[0][-1], grams[1][-1]), x)
    return {"distance": np.asarray(distance), "loss": run.records["loss"][-1]}


def dnn_chunk(noises, *, data, alphas, n_seeds, width, depth, steps, lr, seed):
    """Noise levels (a chunk of the diagram's columns): test accuracy and curvature, (noise, alpha, seed)."""
    result = mlp.train_grid(data, alphas, noises, n_seeds, width=width, depth=depth, steps=steps, lr=lr, seed=seed)
    return {"accuracy": result.accuracy.transpose(1, 0, 2), "curvature": result.curvature.transpose(1, 0, 2)}


def _row(label, fn, items, chunks, conn, start_s, note, same_check) -> dict:
    t_one, one = _timed(lambda: sweep.map(fn, items))
    t_cluster, on_cluster = _timed(lambda: sweep.map(fn, items, client=conn, chunks=chunks))
    same = same_check(one, on_cluster)
    return dict(benchmark=label, batched_s=t_cluster, loop_s=t_one, ratio=t_one / t_cluster,
                note=f"{note}; {same}; cluster start {start_s:.1f} s (not timed)")


def _bitwise(a, b) -> str:
    equal = all(np.array_equal(a[k], b[k]) for k in a)
    return "bitwise identical to the one call" if equal else "NOT identical to the one call"


def _close(a, b) -> str:
    gap = float(np.abs(a["accuracy"] - b["accuracy"]).max())
    return f"max |accuracy difference| vs the one call {gap:.3f} (other noise draws)"


def rows() -> list[dict]:
    fp = presets.resolve("feedback_principle", "paper")
    x, y = tasks.random_regression(10, 2, 2, seed=fp.seed, singular_values=fp.target_singular_values)
    lam_grid = sweep.grid(lam=np.linspace(-9, 9, fp.grid_points), scale=np.linspace(1, 20, fp.grid_points))
    lam_fn = _partial(lambda_chunk, x=x, y=y, lr=fp.grid_lr, steps=fp.grid_steps, seed=fp.seed)

    sb = presets.resolve("spring_block", "paper")
    alphas, noises = sb.alphas, np.array([max(sb.noises), min(sb.noises)])
    data = digits.load(sb.n_train, seed=sb.seed)
    dnn_fn = _partial(dnn_chunk, data=data, alphas=alphas, n_seeds=1, width=sb.width, depth=sb.depth,
                      steps=sb.steps, lr=sb.lr, seed=sb.seed)

    start_s, conn = _timed(lambda: sweep.client("local:2"))
    with conn:
        return [
            _row(f"sweep: feedback_principle lambda x scale grid (paper, {lam_grid.size} networks), 2 workers vs 1 process",
                 lam_fn, lam_grid, lam_grid.size // 2, conn, start_s,
                 f"{fp.grid_steps} GD steps of 2-2-2 linear networks, 2 chunks of {lam_grid.size // 2}", _bitwise),
            _row(f"sweep: spring_block DNN grid (paper networks, {len(alphas)} x {len(noises)} cells), 2 workers vs 1 process",
                 dnn_fn, noises, 1, conn, start_s,
                 f"width {sb.width}, depth {sb.depth}, {sb.n_train} digits, {sb.steps} Adam steps; one noise level "
                 f"({len(alphas)} networks) per chunk", _close),
        ]


def _partial(fn, **kwargs):
    import functools

    return functools.partial(fn, **kwargs)


if __name__ == "__main__":
    for row in rows():
        print(f"{row['benchmark']:<90} cluster {row['batched_s']:.3g} s  one process {row['loop_s']:.3g} s  "
              f"ratio {row['ratio']:.3g}  ({row['note']})")
