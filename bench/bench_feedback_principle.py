"""Batched vs per-network timings of the feedback-principle chapter, at the book preset's sizes.

The lazy/rich grid of Fig. 6a: every (lambda, scale) cell of the 2-2-2
linear network trained by ONE batched ``train`` run
(``linear.lambda_grid_runs``, closed-form gradients), against
``train.train_loop``, the same full-batch GD with plain autograd one network
at a time. A second row takes the closed form out: the same batched run with
autograd gradients (``gradients="stacked"``), so the gain of batching alone is
on record. The loop trains an evenly spaced subset of the cells and is scaled
to the whole grid; its final weights are checked against the batched run's,
so both sides do the same work.
"""

from __future__ import annotations

import time

import numpy as np

from learning_dynamics import emergence, grokking, linear, presets, tasks
from learning_dynamics.tasks import digits
from learning_dynamics.train import train_loop

LOOP_NETWORKS = 16


def _grid(cfg):
    x, y = tasks.random_regression(10, 2, 2, seed=cfg.seed)
    lams = np.linspace(-9, 9, cfg.grid_points)
    scales = np.linspace(1, 20, cfg.grid_points)
    lam_grid, scale_grid = np.meshgrid(lams, scales, indexing="ij")
    return x, y, lam_grid.ravel(), scale_grid.ravel()


def rows() -> list[dict]:
    cfg = presets.resolve("feedback_principle", "book")
    x, y, lams, scales = _grid(cfg)
    start = time.perf_counter()
    batched_run = linear.lambda_grid_runs(x, y, lams, scales, lr=cfg.grid_lr, steps=cfg.grid_steps, seed=cfg.seed)
    batched = time.perf_counter() - start

    start = time.perf_counter()
    autograd_run = linear.lambda_grid_runs(x, y, lams, scales, lr=cfg.grid_lr, steps=cfg.grid_steps, seed=cfg.seed,
                                           closed_form=False)
    batched_autograd = time.perf_counter() - start

    picks = np.linspace(0, len(lams) - 1, LOOP_NETWORKS).astype(int)
    w1, w2 = linear.lambda_grid_init(x, y, lams, scales, seed=cfg.seed)
    data = linear.lambda_grid_data(x, y, scales)
    start = time.perf_counter()
    final = train_loop(linear.matrix_loss, {"w1": w1[picks], "w2": w2[picks]}, steps=cfg.grid_steps, lr=cfg.grid_lr,
                       data=tuple(d[picks] for d in data))
    loop = (time.perf_counter() - start) * len(lams) / len(picks)
    gram = (final["w1"].transpose(-1, -2) @ final["w1"]).numpy()
    mismatch = np.max(np.abs(gram - batched_run.at_end("w1tw1")[picks]))
    mismatch_auto = np.max(np.abs(autograd_run.at_end("w1tw1") - batched_run.at_end("w1tw1")))
    note = f"{len(lams)} networks x {cfg.grid_steps} GD steps; loop timed on {len(picks)} networks and scaled"
    return [dict(benchmark="feedback_principle: lazy/rich grid, batched vs one network at a time",
                 batched_s=batched, loop_s=loop, ratio=loop / batched,
                 note=f"{note}; closed-form gradients; max |W1^T W1| difference {mismatch:.1e}"),
            dict(benchmark="feedback_principle: lazy/rich grid, batched (autograd) vs one network at a time",
                 batched_s=batched_autograd, loop_s=loop, ratio=loop / batched_autograd,
                 note=f"{note}; both with autograd; max |W1^T W1| difference from the closed form {mismatch_auto:.1e}"),
            _zero_product(cfg), _collapse(cfg), _relu_emergence(cfg), _grokking(cfg)]


def _grokking(cfg, epochs: int = 15) -> dict:
    """Fig. 8: the variants x networks in one run against one grokking_runs call per network (a slice of epochs)."""
    images = digits.load(cfg.grok_train, seed=0)
    settings = dict(width=cfg.grok_width, epochs=epochs, batch=cfg.grok_batch, lr=cfg.grok_lr,
                    weight_decay=cfg.grok_weight_decay, record_every=cfg.grok_record_every)
    start = time.perf_counter()
    batched_run = grokking.grokking_runs(*images, n_seeds=cfg.grok_networks, seed=cfg.seed, **settings)
    batched = time.perf_counter() - start
    start = time.perf_counter()
    single = [grokking.grokking_runs(*images, variants=[name], n_seeds=1, seed=cfg.seed, **settings)
              for name in grokking.VARIANTS]
    loop = (time.perf_counter() - start) * cfg.grok_networks
    mismatch = max(abs(float(run.records["test_accuracy"][-1, 0]) - float(batched_run.records["test_accuracy"][-1, j * cfg.grok_networks]))
                   for j, run in enumerate(single))
    return dict(benchmark="feedback_principle: grokking MLPs, batched vs one network at a time",
                batched_s=batched, loop_s=loop, ratio=loop / batched,
                note=f"{len(grokking.VARIANTS) * cfg.grok_networks} networks x {epochs} of the book's {cfg.grok_epochs} "
                     f"epochs (width {cfg.grok_width}); loop timed on one network per variant and scaled; "
                     f"largest final test-accuracy difference of the same network {mismatch:.2g}")


def _relu_emergence(cfg, steps: int = 1000) -> dict:
    """Fig. 4a: the ReLU networks of one seed in one run against one parity_runs call per network (a slice of steps)."""
    settings = dict(n_bits=cfg.em_bits, width=cfg.em_width, init=cfg.em_init, lr=cfg.em_lr, steps=steps,
                    batch_size=cfg.em_batch, record_every=cfg.em_record, n_probe=cfg.em_probe)
    start = time.perf_counter()
    emergence.parity_runs(cfg.em_networks, seed=cfg.seed, **settings)
    batched = time.perf_counter() - start
    start = time.perf_counter()
    for seed in range(cfg.em_networks):
        emergence.parity_runs(1, seed=seed, **settings)
    loop = time.perf_counter() - start
    return dict(benchmark="feedback_principle: ReLU emergence, batched vs one network at a time",
                batched_s=batched, loop_s=loop, ratio=loop / batched,
                note=f"{cfg.em_networks} networks x {steps} of the book's {cfg.em_steps} SGD steps (width {cfg.em_width}, "
                     f"batch {cfg.em_batch}); the loop draws other networks of the same sizes")


def _zero_product(cfg) -> dict:
    """Fig. 6b: the 20-20-2 grid in one batched run against train_loop one network at a time."""
    x, y = tasks.random_regression(10, 20, 2, seed=cfg.seed, whitened=False)
    lam_grid, scale_grid = np.meshgrid(np.linspace(-0.5, 0.5, cfg.zp_points), np.linspace(0.1, 50, cfg.zp_points),
                                       indexing="ij")
    lams, scales = lam_grid.ravel(), scale_grid.ravel()
    settings = dict(hidden=20, init_scale=cfg.zp_init, lr=cfg.zp_lr, steps=cfg.zp_steps, seed=cfg.seed)
    start = time.perf_counter()
    batched_run = linear.zero_product_runs(x, y, lams, scales, **settings)
    batched = time.perf_counter() - start
    picks = np.linspace(0, len(lams) - 1, LOOP_NETWORKS).astype(int)
    w1, w2 = linear.zero_product_init(lams[picks], 20, 20, 2, init_scale=cfg.zp_init, seed=cfg.seed)
    data = linear.lambda_grid_data(x, y, scales[picks])
    start = time.perf_counter()
    final = train_loop(linear.matrix_loss, {"w1": w1, "w2": w2}, steps=cfg.zp_steps, lr=cfg.zp_lr, data=data)
    loop = (time.perf_counter() - start) * len(lams) / len(picks)
    mismatch = float(np.max(np.abs(final["w1"].numpy() - batched_run.params["w1"][picks].numpy())))
    return dict(benchmark="feedback_principle: Fig. 6b zero-product grid, batched vs one network at a time",
                batched_s=batched, loop_s=loop, ratio=loop / batched,
                note=f"{len(lams)} networks x {cfg.zp_steps} GD steps (closed-form gradients); loop timed on "
                     f"{len(picks)} networks and scaled; max |W1| difference {mismatch:.1e}")


def _collapse(cfg) -> dict:
    """Neural collapse: every init x seed in one run against one collapse_runs call per network."""
    settings = dict(within=cfg.nc_within, lr=cfg.nc_lr, steps=cfg.nc_steps, seed=cfg.seed,
                    record_every=max(1, cfg.nc_steps // 40))
    sizes = (cfg.nc_classes, cfg.nc_per_class, cfg.nc_dim)
    start = time.perf_counter()
    linear.collapse_runs(*sizes, cfg.nc_inits, n_seeds=cfg.n_seeds, **settings)
    batched = time.perf_counter() - start
    start = time.perf_counter()
    for a0 in cfg.nc_inits:
        linear.collapse_runs(*sizes, [a0], n_seeds=1, **settings)
    loop = (time.perf_counter() - start) * cfg.n_seeds
    return dict(benchmark="feedback_principle: neural collapse, batched vs one network at a time",
                batched_s=batched, loop_s=loop, ratio=loop / batched,
                note=f"{len(cfg.nc_inits) * cfg.n_seeds} networks x {cfg.nc_steps} GD steps; loop timed on one "
                     f"network per init and scaled")


if __name__ == "__main__":
    for row in rows():
        print(f"{row['benchmark']}: batched {row['batched_s']:.3g} s, loop {row['loop_s']:.3g} s, "
              f"x{row['ratio']:.3g} ({row['note']})")
