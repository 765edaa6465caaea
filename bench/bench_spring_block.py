"""Batched vs per-network timings of the spring-block chapter, at the book preset's sizes.

- DNN grid: the alpha x data-noise x seed grid as ONE stacked run of
  ``mlp.train_grid`` (vmap over networks), against a plain loop that trains
  one network at a time with autograd and ``torch.optim.Adam``. The loop
  trains a subset of the networks and is scaled to the whole grid (the note
  says how many). Once at the book's sizes, where one network's step is
  already bound by memory traffic on a CPU, and once with smaller networks
  (400 images, width 32), where per-network overhead dominates.
- Chain phase diagram: every (friction, noise) cell in one array
  (``springblock.chain_diagram``) against one ``first_order`` call per cell
  (each still vectorised over its replicas), again on a subset of cells.
"""

from __future__ import annotations

import time

import learning_dynamics  # noqa: F401  (first: it sets the CPU thread policy before torch loads)
import numpy as np
import torch

from learning_dynamics import mlp, presets, springblock
from learning_dynamics.tasks import digits

LOOP_NETWORKS = 4
LOOP_CELLS = 6


def _dnn_rows(cfg, label: str) -> dict:
    data = digits.load(cfg.n_train, seed=cfg.seed)
    start = time.perf_counter()
    mlp.train_grid(data, cfg.alphas, cfg.noises, cfg.n_seeds, width=cfg.width, depth=cfg.depth, steps=cfg.steps,
                   lr=cfg.lr, seed=cfg.seed)
    batched = time.perf_counter() - start

    x, y, _, _ = data
    grid = np.array(np.meshgrid(cfg.alphas, cfg.noises, np.arange(cfg.n_seeds), indexing="ij")).reshape(3, -1).T
    n_total = len(grid)
    gen = torch.Generator().manual_seed(cfg.seed)
    params = mlp.init_params(LOOP_NETWORKS, n_in=x.shape[1], width=cfg.width, depth=cfg.depth,
                             n_out=digits.N_CLASSES, generator=gen)
    picks = np.linspace(0, n_total - 1, LOOP_NETWORKS).astype(int)
    start = time.perf_counter()
    for i, (alpha, level, _) in enumerate(grid[picks]):
        p = {k: v[i].clone().requires_grad_(True) for k, v in params.items()}
        opt = torch.optim.Adam(p.values(), lr=cfg.lr)
        slope, noise = torch.tensor(alpha, dtype=x.dtype), torch.tensor([level], dtype=x.dtype)
        for _ in range(cfg.steps):
            xs, ys = digits.data_noise(x, y, noise, gen)
            loss = mlp.loss(p, xs[0], ys[0], slope)
            opt.zero_grad()
            loss.backward()
            opt.step()
    loop = (time.perf_counter() - start) * n_total / LOOP_NETWORKS
    return dict(benchmark=f"spring_block: DNN alpha x noise x seed grid ({label})", batched_s=batched, loop_s=loop,
                ratio=loop / batched,
                note=f"{n_total} networks (width {cfg.width}) x {cfg.steps} Adam steps on {cfg.n_train} digits; "
                     f"loop timed on "
                     f"{LOOP_NETWORKS} networks and scaled x{n_total / LOOP_NETWORKS:g}")


def _chain_rows(cfg) -> dict:
    chain = dict(n_blocks=cfg.n_blocks, k=cfg.chain_k, eta=cfg.chain_eta, steps=cfg.chain_steps,
                 replicas=cfg.replicas, seed=cfg.seed)
    start = time.perf_counter()
    springblock.chain_diagram(cfg.frictions, cfg.shakes, asymmetry=cfg.asymmetry, **chain)
    batched = time.perf_counter() - start
    cells = [(m, e) for m in cfg.frictions for e in cfg.shakes]
    start = time.perf_counter()
    for mu, eps in cells[:LOOP_CELLS]:
        springblock.first_order(mu, cfg.asymmetry * mu, eps, **chain)
    loop = (time.perf_counter() - start) * len(cells) / LOOP_CELLS
    return dict(benchmark="spring_block: chain (mu, eps) phase diagram", batched_s=batched, loop_s=loop,
                ratio=loop / batched,
                note=f"{len(cells)} cells x {cfg.replicas} replicas x {cfg.chain_steps} steps; loop = one call per "
                     f"cell, timed on {LOOP_CELLS} cells and scaled x{len(cells) / LOOP_CELLS:g}")


def rows() -> list[dict]:
    cfg = presets.resolve("spring_block", "book")
    small = presets.resolve("spring_block", "book", overrides=dict(n_train=400, width=32, steps=30))
    return [_dnn_rows(cfg, "book sizes"), _dnn_rows(small, "small networks"), _chain_rows(cfg)]


if __name__ == "__main__":
    for row in rows():
        print(f"{row['benchmark']}: batched {row['batched_s']:.2f} s, loop {row['loop_s']:.2f} s, "
              f"x{row['ratio']:.1f} ({row['note']})")
