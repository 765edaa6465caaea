"""Batched vs per-network timings of the three-mechanisms chapter, at the book preset's sizes.

- Closed form over a grid: the trajectories of many networks of the
  1-D linear network in ONE broadcast call of ``shallow.solve_overlaps``,
  against one call per network.
- Closed form vs ODE: the same grid, against integrating each network's
  2 x width gradient-flow equations with scipy (what one would do without
  the exact solution); the loop runs on a subset and is scaled.
- GD: the chapter's networks (zero-padded to one width) in ONE batched
  ``train`` run (``shallow.gd_runs``), against ``train.train_loop``, plain
  autograd one network at a time; the loop runs on a subset and is scaled.
- Activations (the paper's Fig. 1): the chapter's networks, five activations
  x two prototypes x draws, in ONE ``shallow.activation_runs`` call, against
  one call per network; the loop runs on a subset and is scaled.
- Deep tanh networks on digits: the chapter's grid (output scale x init
  scale x seeds) in ONE ``shallow.deep_runs`` call, against one call per
  network; the loop runs on a subset and is scaled.
"""

from __future__ import annotations

import time

import learning_dynamics  # noqa: F401  (first: it sets the CPU thread policy before torch loads)
import numpy as np
import torch

from learning_dynamics import presets, shallow
from learning_dynamics.train import train_loop

GRID = 2000
LOOP_ODE = 20
LOOP_GD = 3


def _grid(cfg):
    widths = np.array(cfg.widths)
    runs = shallow.scaled_inits(widths, GRID // len(widths), a=0.75, b=0.0, seed=cfg.seed)
    t = np.linspace(0, cfg.horizon, cfg.records)
    return runs, t


def _closed_form_rows(cfg) -> list[dict]:
    runs, t = _grid(cfg)
    ov, hyper = runs.overlaps(), runs.hyper()
    start = time.perf_counter()
    shallow.solve_overlaps(t, *ov, **hyper)
    batched = time.perf_counter() - start

    start = time.perf_counter()
    for i in range(len(runs)):
        shallow.solve_overlaps(t, *(x[i] for x in ov), **{k: v[i] for k, v in hyper.items()})
    loop = time.perf_counter() - start

    picks = np.linspace(0, len(runs) - 1, LOOP_ODE).astype(int)
    start = time.perf_counter()
    for i in picks:
        d = int(runs.width[i])
        shallow.integrate_flow(t, runs.u0[i, :d], runs.w0[i, :d], **{k: v[i] for k, v in hyper.items()})
    ode = (time.perf_counter() - start) * len(runs) / LOOP_ODE
    note = f"{len(runs)} networks (widths {tuple(cfg.widths)}) x {len(t)} times"
    return [
        dict(benchmark="three_mechanisms: closed form, batched vs per network", batched_s=batched, loop_s=loop,
             ratio=loop / batched, note=note),
        dict(benchmark="three_mechanisms: closed form (batched) vs ODE per network", batched_s=batched, loop_s=ode,
             ratio=ode / batched, note=f"{note}; scipy DOP853 rtol 1e-12 timed on {LOOP_ODE} networks and scaled"),
    ]


def _gd_row(cfg) -> dict:
    batch = (shallow.prototype_inits(cfg.widths, cfg.rescaling_widths, seed=cfg.seed)
             + shallow.scaled_inits(cfg.widths, cfg.n_seeds, a=0.5, b=0.0, seed=cfg.seed + 1)).on_clock(cfg.clock_ntk)
    steps = round(cfg.horizon / cfg.lr)
    start = time.perf_counter()
    shallow.gd_runs(batch.u0, batch.w0, **batch.hyper(), lr=cfg.lr, steps=steps, record_every=steps)
    batched = time.perf_counter() - start

    picks = np.linspace(0, len(batch) - 1, LOOP_GD).astype(int)
    root_u, root_w = np.sqrt(batch.eta_u[picks])[:, None], np.sqrt(batch.eta_w[picks])[:, None]
    params = {"U": torch.as_tensor(batch.u0[picks] / root_u), "W": torch.as_tensor(batch.w0[picks] / root_w)}
    data = (torch.as_tensor(batch.gamma[picks] * np.sqrt(batch.eta_u[picks] * batch.eta_w[picks])),
            torch.as_tensor(batch.c[picks]))
    start = time.perf_counter()
    train_loop(shallow.network_loss, params, steps=steps, lr=cfg.lr, data=data)
    loop = (time.perf_counter() - start) * len(batch) / LOOP_GD
    return dict(benchmark="three_mechanisms: GD of the 1-D linear networks", batched_s=batched, loop_s=loop,
                ratio=loop / batched,
                note=f"{len(batch)} networks padded to width {batch.u0.shape[1]} x {steps} GD steps; loop timed on "
                     f"{LOOP_GD} networks and scaled x{len(batch) / LOOP_GD:.3g}")


def _activation_row(cfg) -> dict:
    _, batch, names = shallow.activation_batch(cfg.act_width, cfg.act_seeds, seed=0, clock_ntk=cfg.clock_ntk)
    x, steps = shallow.symmetric_line_data(cfg.act_draws, seed=0), round(cfg.act_horizon / cfg.act_lr)
    start = time.perf_counter()
    shallow.activation_runs(batch.u0, batch.w0, names, x, **batch.hyper(), lr=cfg.act_lr, steps=steps, record_every=steps)
    batched = time.perf_counter() - start
    picks = np.linspace(0, len(batch) - 1, LOOP_GD).astype(int)
    hyper = batch.hyper()
    start = time.perf_counter()
    for i in picks:
        shallow.activation_runs(batch.u0[i:i + 1], batch.w0[i:i + 1], names[i], x, **{k: v[i:i + 1] for k, v in hyper.items()},
                                lr=cfg.act_lr, steps=steps, record_every=steps)
    loop = (time.perf_counter() - start) * len(batch) / LOOP_GD
    return dict(benchmark="three_mechanisms: GD with five activations (Fig. 1)", batched_s=batched, loop_s=loop,
                ratio=loop / batched, note=f"{len(batch)} networks of width {cfg.act_width} x {steps} GD steps; loop timed on "
                                           f"{LOOP_GD} networks and scaled x{len(batch) / LOOP_GD:.3g}")


def _deep_row(cfg) -> dict:
    x, y = shallow.digit_parity_data(cfg.deep_samples, seed=0)
    params, gamma, _ = shallow.deep_inits(cfg.deep_output_exponents, cfg.deep_init_scales, cfg.deep_seeds, n_in=x.shape[1],
                                          width=cfg.deep_width, depth=cfg.deep_depth, seed=0)
    start = time.perf_counter()
    shallow.deep_runs(params, gamma, x, y, lr=cfg.deep_lr, steps=cfg.deep_steps, record_every=cfg.deep_steps)
    batched = time.perf_counter() - start
    picks = np.linspace(0, len(gamma) - 1, LOOP_GD).astype(int)
    start = time.perf_counter()
    for i in picks:
        shallow.deep_runs({k: v[i:i + 1] for k, v in params.items()}, gamma[i:i + 1], x, y, lr=cfg.deep_lr,
                          steps=cfg.deep_steps, record_every=cfg.deep_steps)
    loop = (time.perf_counter() - start) * len(gamma) / LOOP_GD
    return dict(benchmark="three_mechanisms: deep tanh networks on digits", batched_s=batched, loop_s=loop,
                ratio=loop / batched, note=f"{len(gamma)} networks ({cfg.deep_depth} x {cfg.deep_width}) x {cfg.deep_steps} GD "
                                           f"steps; loop timed on {LOOP_GD} networks and scaled x{len(gamma) / LOOP_GD:.3g}")


def rows() -> list[dict]:
    cfg = presets.resolve("three_mechanisms", "book")
    return _closed_form_rows(cfg) + [_gd_row(cfg), _activation_row(cfg), _deep_row(cfg)]


if __name__ == "__main__":
    for row in rows():
        print(f"{row['benchmark']}: batched {row['batched_s']:.3g} s, loop {row['loop_s']:.3g} s, "
              f"x{row['ratio']:.3g} ({row['note']})")
