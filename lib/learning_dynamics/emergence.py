"""Emergence in a two-layer ReLU network on multitask sparse parity (Nam et al. 2024; 2025, Fig. 4a-c).

The network is f(x) = w2 . relu(W1 x + b1) + b2 with every weight and bias drawn N(0, init^2) (the authors' ``FCN``),
trained with the authors' loss, the mean squared error without a 1/2, on :mod:`learning_dynamics.tasks.parity` data.
Many networks train at once through :func:`learning_dynamics.train.train`, stacked with the network axis first:
seeds, and either widths (hidden units masked off, so the widths share one stack) or dataset sizes (per-sample
weights over one shared draw).

The skill strength of a network is measured as the authors do (``utils.check_corrs``): on held-out samples of skill k
alone, R_k = cov(y, f) / std(y), and the learned fraction is R_k / S (1 for the target, 0 for a constant).

The theory is the layerwise model, calibrated as in the authors' ``plot_emergence_all.py``, with one constant per
panel fitted on the network:

- time: R_k/S = 1 / (1 + c exp(-4 p_k S eta T / B)) after T SGD steps at rate eta, the sigmoid of
  :func:`learning_dynamics.linear.sigmoid_mode` at rate 2 p_k / B on the clock t = eta T (the 4 instead of 2: the
  loss has no 1/2), with c = 3.6 S / init^2 - 1, the authors' estimate of S / R_k(0) - 1; the authors fit B = 22
  on a one-skill network (``train1_time.py``, ``plot_emergence_calibration_all.py``);
- data: R_k/S = 1 - sqrt(max(0, 1 - D p_k / B)) for a training set of D samples (authors: B = 800);
- parameters: R_k/S = clip((N - (k - 1) B) / B, 0, 1) for width N (authors: B = 4): each skill takes B hidden units,
  in order of frequency.

Cost (2 busy cores, float64, one intra-op thread): a training step is four batched products (``baddbmm``/``bmm``,
no einsum temporaries) and the probe is evaluated in blocks of 256 samples; the time panel at 3 networks,
width 200, batch 200, n_probe 1000 costs about 0.5 ms per network-step (1.45 ms before), mostly BLAS. Results are
bitwise identical on 1 and 2 threads.

What the time panel reproduces (16 task bits instead of 32, width 400, batch 200, lr 0.05, init 0.01, 3 networks,
8000 steps, about 20 s; seeds 0-9): all five skills emerge in order, in every network; B fitted on skill 1 is 19.7-21.4
(authors: 22 at width 1000); t_k/t_1 follows k^1.6 for k = 2, 3 (within 9%) but the late skills are slower, t_4/t_1 =
9.6-10.4 (theory 9.19) and t_5/t_1 = 13.7-15.4 (13.13), up to 17.5% off. A larger batch (1000, one network) does not
remove the lag, so it is not gradient noise; a narrower network (width 100) lags more. Larger rates are slower in
lr x step (lr 0.1 roughly doubles t_1 on that clock), so lr 0.05 is near the largest usable.

feedback_principle chapter, emergence in a ReLU network.
"""

from __future__ import annotations

import numpy as np
import torch

from .linear import crossing_times, sigmoid_half_time, sigmoid_mode
from .results import Run
from .tasks.parity import ParityTask, parity_dataset, parity_probe, parity_sampler, parity_task
from .train import train
from .validation import Array, Device, InstanceOf, Integer, Optional, Real, Seed, check_array, check_generator, \
    validate_params, value_text

__all__ = ["INIT_CONSTANT", "relu_init", "relu_forward", "relu_loss", "relu_grad_and_value", "learned_fraction",
           "skill_fractions", "parity_runs", "half_times", "initial_strength", "time_theory", "time_half_times",
           "calibrate_time", "data_theory", "width_theory"]

INIT_CONSTANT = 3.6  # the authors' R_k(0) = init^2 / 3.6 (plot_emergence_all.theo_time: c = 3.6 S / init^2 - 1)

_POSITIVE = Real(low=0.0, strict_low=True)


@validate_params({"n_networks": Integer(low=1), "n_inputs": Integer(low=1), "width": Integer(low=1),
                  "init": _POSITIVE, "seed": Seed(), "device": Device()})
def relu_init(n_networks: int, n_inputs: int, width: int, init: float, *, seed=0, dtype=torch.float64, device="cpu"):
    """Stacked two-layer ReLU networks, every weight and bias N(0, init^2), drawn on the CPU and moved to ``device``.

    Returns {"W1": (n, width, n_inputs), "b1": (n, width), "w2": (n, width), "b2": (n,)}.
    """
    gen = check_generator(seed)
    shapes = {"W1": (n_networks, width, n_inputs), "b1": (n_networks, width), "w2": (n_networks, width),
              "b2": (n_networks,)}
    return {k: (init * torch.randn(s, generator=gen, dtype=torch.float64)).to(dtype=dtype, device=device)
            for k, s in shapes.items()}


_CHUNK = 256  # samples per block of a long forward pass: its activations stay in cache (4x faster on a 10^4 probe)


def _hidden(params, x, hidden=None):
    """relu(W1 x + b1), masked: (n, batch, width)."""
    act = torch.baddbmm(params["b1"][:, None, :], x, params["W1"].transpose(1, 2)).relu_()
    if hidden is not None:
        act = act * hidden[:, None, :]
    return act


def _output(params, act):
    return torch.baddbmm(params["b2"][:, None, None], act, params["w2"][:, :, None]).squeeze(-1)


def relu_forward(params, x, hidden=None) -> torch.Tensor:
    """Outputs (n, batch) of stacked networks on x (n, batch, n_inputs); ``hidden`` (n, width) in {0, 1} masks units.

    A long batch is evaluated in blocks of a few hundred samples (the same numbers, less memory traffic).
    """
    if x.shape[1] <= 2 * _CHUNK:
        return _output(params, _hidden(params, x, hidden))
    return torch.cat([_output(params, _hidden(params, x[:, i:i + _CHUNK], hidden))
                      for i in range(0, x.shape[1], _CHUNK)], dim=1)


def relu_loss(params, x, y, weight, hidden=None) -> torch.Tensor:
    """sum_b weight_b (f(x_b) - y_b)^2 per network: the authors' MSE (no 1/2) when weight = 1/batch."""
    return (weight * (relu_forward(params, x, hidden) - y) ** 2).sum(-1)


def relu_grad_and_value(params, x, y, weight, hidden=None):
    """Closed-form gradients and losses of :func:`relu_loss` for the stacked networks (no autograd graph).

    With d_b = 2 weight_b (f(x_b) - y_b) and the unit gate m_bw = 1[W1 x_b + b1 > 0] (times ``hidden``):
    dW1 = w2 * (m^T (d x)), db1 = w2 * (m^T d), dw2 = act^T d, db2 = sum_b d_b: four batched products.
    """
    act = _hidden(params, x, hidden)
    r = _output(params, act) - y
    d = 2.0 * weight * r  # dL/df per sample
    gate = act.sign()  # 1 where a unit is active (and unmasked), else 0
    w2 = params["w2"]
    grads = {"W1": torch.bmm((d[:, :, None] * x).transpose(1, 2), gate).transpose(1, 2).mul_(w2[:, :, None]),
             "b1": torch.bmm(d[:, None, :], gate).squeeze(1).mul_(w2),
             "w2": torch.bmm(d[:, None, :], act).squeeze(1), "b2": d.sum(-1)}
    return grads, (weight * r**2).sum(-1)


def learned_fraction(outputs, targets, strength: float):
    """The authors' skill strength over the last axis, R = cov(y, f) / std(y), divided by S.

    ``outputs`` and ``targets`` are arrays (numpy or torch) of the same shape; population moments, as in
    ``utils.check_corrs``. 1 for f = y when std(y) = S (a balanced probe, :func:`~learning_dynamics.tasks.parity.parity_probe`),
    0 for a constant f.
    """
    f, y = torch.as_tensor(outputs), torch.as_tensor(targets)
    if f.shape != y.shape or f.ndim < 1 or f.shape[-1] < 2:
        raise ValueError(f"outputs and targets must have one shape with >= 2 samples on the last axis; got "
                         f"{tuple(f.shape)} and {tuple(y.shape)}")
    yc = y - y.mean(-1, keepdim=True)
    fc = f - f.mean(-1, keepdim=True)
    std = yc.pow(2).mean(-1).sqrt()
    if torch.any(std == 0):
        raise ValueError("targets must vary along the last axis (std(y) > 0); got a constant target")
    return (yc * fc).mean(-1) / std / strength


def skill_fractions(params, task: ParityTask, probe, hidden=None) -> torch.Tensor:
    """R_k / S of every stacked network on a :func:`parity_probe`: shape (n_networks, n_skills)."""
    x, y = probe
    n = x.shape[0]
    f = relu_forward(params, x, hidden).reshape(n, task.n_skills, -1)
    return learned_fraction(f, y.reshape(n, task.n_skills, -1), task.strength)


@validate_params({"n_seeds": Integer(low=1), "n_skills": Integer(low=1), "alpha": Real(low=0.0),
                  "strength": _POSITIVE, "n_bits": Integer(low=1), "bits_per_skill": Integer(low=1),
                  "width": Integer(low=1), "init": _POSITIVE, "lr": _POSITIVE, "steps": Integer(low=1),
                  "batch_size": Integer(low=1), "record_every": Integer(low=1), "widths": Optional(Array(ndim=1)),
                  "n_samples": Optional(Array(ndim=1)), "n_probe": Integer(low=2), "seed": Integer(low=0),
                  "dtype": InstanceOf(torch.dtype, description="a torch float dtype"), "device": Device()})
def parity_runs(n_seeds: int, *, n_skills: int = 5, alpha: float = 0.6, strength: float = 5.0, n_bits: int = 32,
                bits_per_skill: int = 3, width: int = 1000, init: float = 0.01, lr: float = 0.02, steps: int,
                batch_size: int = 4000, record_every: int = 50, widths=None, n_samples=None, n_probe: int = 2000,
                seed: int = 0, dtype=torch.float64, device="cpu") -> Run:
    """Train two-layer ReLU networks with SGD on multitask sparse parity; record each skill's learned fraction.

    Three layouts (one network per row, the seed axis fastest):

    - neither ``widths`` nor ``n_samples``: ``n_seeds`` networks of ``width`` units, online SGD, a fresh batch of
      ``batch_size`` every step (the time panel);
    - ``widths`` (integers >= 1): len(widths) x n_seeds networks, online, the units beyond each network's width
      masked off (the parameter panel); ``width`` is ignored;
    - ``n_samples`` (integers >= 2): len(n_samples) x n_seeds networks, each trained by full-batch GD on its own
      first D samples of one draw of max(n_samples) (the data panel); ``batch_size`` is ignored.

    Network i of seed index s has its own skills' bits (:func:`parity_task`), init and data stream; every draw comes
    from ``seed``. The records are ``fraction``, R_k/S on a balanced held-out probe of ``n_probe`` samples per skill,
    shape (n_records, n_networks, n_skills), and ``loss``; ``times`` are lr x step, ``steps`` the steps. ``final``
    holds ``widths``, ``n_samples``, ``seed_index`` (one per network), ``frequencies`` and ``skill_bits``.
    """
    if widths is not None and n_samples is not None:
        raise ValueError("give widths (the parameter panel) or n_samples (the data panel), not both; got both")
    if n_probe % 2:
        raise ValueError(f"n_probe must be even (balanced antithetic pairs); got {n_probe}")
    grid, hidden = np.array([width]), None
    if widths is not None:
        grid = _integers("widths", widths, low=1)
        width = int(grid.max())
    elif n_samples is not None:
        grid = _integers("n_samples", n_samples, low=2)
    n = len(grid) * n_seeds
    per_net = np.repeat(grid, n_seeds)
    gen = np.random.SeedSequence(seed).generate_state(4, dtype=np.uint64).astype(np.int64) & 0x7FFFFFFFFFFFFFFF
    task = parity_task(n_skills, alpha, strength, n_bits=n_bits, bits_per_skill=bits_per_skill, n_networks=n,
                       seed=int(gen[0]), device=device)
    params = relu_init(n, task.n_inputs, width, init, seed=int(gen[1]), dtype=dtype, device=device)
    probe = parity_probe(task, n_probe, seed=int(gen[2]), dtype=dtype)
    if widths is not None:
        units = torch.arange(width, device=device)
        hidden = (units[None, :] < torch.as_tensor(per_net, device=device)[:, None]).to(dtype)
        params = {k: (v * hidden if k in ("b1", "w2") else v * hidden[..., None] if k == "W1" else v)
                  for k, v in params.items()}  # masked units start at 0 and stay there
    if n_samples is not None:
        x, y = parity_dataset(task, int(grid.max()), seed=int(gen[3]), dtype=dtype)
        index = torch.arange(x.shape[1], device=device)
        size = torch.as_tensor(per_net, device=device, dtype=dtype)
        weight = (index[None, :] < size[:, None]).to(dtype) / size[:, None]
        data = (x, y, weight, None)
    else:
        sampler = parity_sampler(task, batch_size, dtype=dtype)
        weight = torch.full((n, batch_size), 1.0 / batch_size, dtype=dtype, device=device)

        def data(generator, step):
            return (*sampler(generator, step), weight, hidden)

    run = train(relu_loss, params, steps=steps, lr=lr, data=data, gradients=relu_grad_and_value,
                record=lambda p: {"fraction": skill_fractions(p, task, probe, hidden)}, record_every=record_every,
                seed=int(gen[3]), desc="ReLU networks on sparse parity")
    run.final = {"widths": np.repeat(grid, n_seeds) if widths is not None else np.full(n, width),
                 "n_samples": per_net if n_samples is not None else np.zeros(n, dtype=np.int64),
                 "seed_index": np.tile(np.arange(n_seeds), len(grid)), "frequencies": task.frequencies,
                 "skill_bits": task.skill_bits.cpu().numpy()}
    return run


def _integers(name, values, low):
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0 or np.any(arr != np.round(arr)) or np.any(arr < low):
        raise ValueError(f"{name} must be a non-empty 1-D array of integers >= {low}; got {value_text(values)}")
    return arr.astype(np.int64)


@validate_params({"run": InstanceOf(Run, description="a Run with a 'fraction' record (parity_runs)"),
                  "level": Real(low=0.0, high=1.0, strict_low=True)})
def half_times(run: Run, level: float = 0.5, *, mean: bool = False) -> np.ndarray:
    """First time each skill's learned fraction crosses ``level`` (:func:`learning_dynamics.linear.crossing_times`).

    Shape (n_networks, n_skills), on the run's clock (lr x step); NaN where a skill never gets there. With
    ``mean=True``, of the mean curve over networks (the authors' plotted mean), shape (n_skills,).
    """
    if "fraction" not in run.records:
        raise ValueError(f"run must have a 'fraction' record (parity_runs); got records {sorted(run.records)}")
    curves = run.trajectory("fraction")  # (n_networks, n_skills, n_records)
    if mean:
        curves = curves.mean(0)
    return crossing_times(run.times, curves, level)


@validate_params({"strength": _POSITIVE, "init": _POSITIVE})
def initial_strength(strength: float, init: float) -> float:
    """The authors' R_k(0) = S / (1 + c), c = 3.6 S / init^2 - 1: init^2 / 3.6 (``plot_emergence_all.theo_time``)."""
    return float(init) ** 2 / INIT_CONSTANT


def _frequencies(frequencies):
    p = check_array("frequencies", frequencies, ndim=1, positive=True)
    if p.size == 0:
        raise ValueError("frequencies must hold at least one skill probability; got none")
    return p


@validate_params({"t": Array(), "frequencies": Array(ndim=1, positive=True), "strength": _POSITIVE,
                  "init": _POSITIVE, "calibration": _POSITIVE, "u0": Optional(_POSITIVE)})
def time_theory(t, frequencies, strength: float, init: float, calibration: float, u0=None) -> np.ndarray:
    """The calibrated layerwise R_k(t)/S at times t = lr x step: shape (n_skills, len(t)).

    R_k/S = 1 / (1 + (S/u0 - 1) exp(-4 p_k S t / B)), B = ``calibration``, u0 = :func:`initial_strength` unless given:
    :func:`learning_dynamics.linear.sigmoid_mode` at rate 2 p_k / B.
    """
    p = _frequencies(frequencies)
    u0 = initial_strength(strength, init) if u0 is None else u0
    if not u0 < strength:
        raise ValueError(f"u0 must be < strength (a mode that starts below its target); got u0 = {u0!r}, "
                         f"strength = {strength!r}")
    return sigmoid_mode(np.asarray(t)[None, :], strength, u0, rate=2.0 * p[:, None] / calibration) / strength


@validate_params({"frequencies": Array(ndim=1, positive=True), "strength": _POSITIVE, "init": _POSITIVE,
                  "calibration": _POSITIVE, "u0": Optional(_POSITIVE)})
def time_half_times(frequencies, strength: float, init: float, calibration: float, u0=None) -> np.ndarray:
    """Half times of :func:`time_theory`: B ln(S/u0 - 1) / (4 p_k S), per skill; t_k / t_1 = p_1 / p_k."""
    p = _frequencies(frequencies)
    u0 = initial_strength(strength, init) if u0 is None else u0
    if not u0 < strength / 2:
        raise ValueError(f"u0 must be < strength / 2 for a half time; got u0 = {u0!r}, strength = {strength!r}")
    return sigmoid_half_time(strength, u0, rate=2.0 * p / calibration)


@validate_params({"half_time": _POSITIVE, "frequency": _POSITIVE, "strength": _POSITIVE, "init": _POSITIVE,
                  "u0": Optional(_POSITIVE)})
def calibrate_time(half_time: float, frequency: float, strength: float, init: float, u0=None) -> float:
    """The time constant B that puts :func:`time_half_times` of a skill of frequency p at a measured half time.

    B = 4 p S t_half / ln(S/u0 - 1). The authors fit B on a one-skill network (p = 1); fitting it on skill 1 of the
    K-skill network is the same recipe on the same clock (one constant for all skills).
    """
    u0 = initial_strength(strength, init) if u0 is None else u0
    if not u0 < strength / 2:
        raise ValueError(f"u0 must be < strength / 2; got u0 = {u0!r}, strength = {strength!r}")
    return 4.0 * frequency * strength * half_time / np.log(strength / u0 - 1.0)


@validate_params({"n_samples": Array(ndim=1, positive=True), "frequencies": Array(ndim=1, positive=True),
                  "calibration": _POSITIVE})
def data_theory(n_samples, frequencies, calibration: float) -> np.ndarray:
    """The authors' data-emergence curve R_k/S = 1 - sqrt(max(0, 1 - D p_k / B)): shape (n_skills, len(n_samples))."""
    p = _frequencies(frequencies)
    left = np.clip(1.0 - np.asarray(n_samples)[None, :] * p[:, None] / calibration, 0.0, None)
    return 1.0 - np.sqrt(left)


@validate_params({"widths": Array(ndim=1, positive=True), "n_skills": Integer(low=1), "calibration": _POSITIVE})
def width_theory(widths, n_skills: int, calibration: float) -> np.ndarray:
    """The authors' parameter-emergence curve R_k/S = clip((N - (k-1) B) / B, 0, 1): shape (n_skills, len(widths))."""
    k = np.arange(n_skills, dtype=np.float64)[:, None]
    return np.clip((np.asarray(widths)[None, :] - k * calibration) / calibration, 0.0, 1.0)
