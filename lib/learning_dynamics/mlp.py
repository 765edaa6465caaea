"""A deep BatchNorm MLP, written once for one network or a stack, trained as a stacked ensemble.

The architecture of Shi, Pan & Dokmanic: input BatchNorm, then ``depth``
blocks ``Linear(w, w) -> BatchNorm -> LeakyReLU(alpha) -> Dropout(p)``, then
a Linear read-out. BatchNorm runs in training mode, from the statistics of
the batch inside the loss; evaluation reuses the statistics of the clean
training set (the population statistics that PyTorch's running averages
estimate). Parameters are stacked with a leading network dimension, so a
whole grid of networks (nonlinearity x noise x seed) trains in one call of
:func:`learning_dynamics.train.train`, and :func:`train_grid` measures each
network's separation profile and test accuracy afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from . import separation, sweep
from .results import Run
from .tasks import digits
from .train import train
from .validation import (Array, Device, InstanceOf, Integer, Optional, Options, Real, check_float, check_generator, check_positive,
                         validate_params)

NOISE_KINDS = ("data", "dropout", "lr")
BN_EPS = 1e-5
_DTYPE = InstanceOf(torch.dtype)


@validate_params({"n_networks": Integer(low=1), "n_in": Integer(low=1), "width": Integer(low=1), "depth": Integer(low=1),
                  "n_out": Integer(low=1), "generator": InstanceOf(torch.Generator), "dtype": _DTYPE, "device": Device()})
def init_params(n_networks: int, *, n_in: int, width: int, depth: int, n_out: int,
                generator: torch.Generator, dtype=torch.float32, device="cpu") -> dict[str, torch.Tensor]:
    """PyTorch's default init for every network: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` weights and biases,
    BatchNorm scale 1 and shift 0. Each tensor has the network dimension in front."""
    def uniform(*shape, fan_in):
        bound = 1.0 / math.sqrt(fan_in)
        return (torch.rand((n_networks,) + shape, generator=generator, dtype=dtype, device=device) * 2 - 1) * bound

    params = {"bn_in.scale": torch.ones(n_networks, n_in, dtype=dtype, device=device),
              "bn_in.shift": torch.zeros(n_networks, n_in, dtype=dtype, device=device)}
    fan_in = n_in
    for i in range(depth):
        params[f"w{i}"] = uniform(width, fan_in, fan_in=fan_in)
        params[f"b{i}"] = uniform(width, fan_in=fan_in)
        params[f"bn{i}.scale"] = torch.ones(n_networks, width, dtype=dtype, device=device)
        params[f"bn{i}.shift"] = torch.zeros(n_networks, width, dtype=dtype, device=device)
        fan_in = width
    params["w_out"] = uniform(n_out, width, fan_in=width)
    params["b_out"] = uniform(n_out, fan_in=width)
    return params


def depth_of(params) -> int:
    """Number of hidden blocks."""
    return sum(1 for name in params if name.startswith("w") and name != "w_out")


def forward(params, x, alpha, masks=None, stats=None):
    """``(logits, representations, stats)`` for one network or for stacked networks.

    Written once for both: a leading network dimension on every parameter,
    on ``x`` (N, n_in) -> (n, N, n_in) and on ``alpha`` () -> (n,) is carried
    through by batched matmuls, which is cheaper than vmap for a network this
    small. ``representations`` lists the input after BatchNorm and each
    block's output after the activation (before dropout): depth+1 tensors
    ([n,] N, width). ``masks`` ([n,] depth, N, width) are dropout masks
    already scaled by ``1/(1-p)``; ``stats`` (from a previous call) replaces
    the batch statistics of every BatchNorm.
    """
    used = []

    def norm(h, name, i):
        if stats is None:
            mean = h.mean(-2, keepdim=True)
            centred = h - mean
            var = (centred * centred).mean(-2, keepdim=True)
        else:
            mean, var = stats[i]
            centred = h - mean
        used.append((mean, var))
        scale = params[f"{name}.scale"].unsqueeze(-2) * torch.rsqrt(var + BN_EPS)
        return centred * scale + params[f"{name}.shift"].unsqueeze(-2)

    slope = torch.as_tensor(alpha, dtype=x.dtype)
    slope = slope.reshape(slope.shape + (1, 1))
    h = norm(x, "bn_in", 0)
    reps = [h]
    for i in range(depth_of(params)):
        h = norm(h @ params[f"w{i}"].transpose(-1, -2) + params[f"b{i}"].unsqueeze(-2), f"bn{i}", i + 1)
        h = h * (slope + (1 - slope) * (h > 0).to(h.dtype)).detach()   # LeakyReLU(alpha): a piecewise-constant gain
        reps.append(h)
        if masks is not None:
            h = h * masks[..., i, :, :]
    logits = h @ params["w_out"].transpose(-1, -2) + params["b_out"].unsqueeze(-2)
    return logits, reps, used


def loss(params, x, y, alpha, masks=None):
    """Cross-entropy on a (noisy) batch, BatchNorm from that batch: a scalar, or one value per stacked network."""
    logits = forward(params, x, alpha, masks)[0]
    return -torch.log_softmax(logits, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(-1)


@dataclass(kw_only=True)
class GridResult(Run):
    """A :class:`~learning_dynamics.results.Run` of the grid (``records["loss"]`` per step and network) with, per network (alpha, noise,
    seed), the separation profile log D_0..log D_L and the test accuracy."""

    alphas: np.ndarray
    noises: np.ndarray
    noise_kind: str
    log_d: np.ndarray        # (n_alpha, n_noise, n_seed, depth + 1)
    accuracy: np.ndarray     # (n_alpha, n_noise, n_seed), in [0, 1]
    train_loss: np.ndarray   # (n_alpha, n_noise, n_seed), last step

    @property
    def curvature(self) -> np.ndarray:
        """Normalised curvature of each network's profile (n_alpha, n_noise, n_seed)."""
        return separation.curvature(self.log_d)


@validate_params({"alphas": Array(ndim=1), "noises": Array(ndim=1), "n_seeds": Integer(low=1),
                  "noise_kind": Options(*NOISE_KINDS), "width": Integer(low=1), "depth": Integer(low=1),
                  "steps": Integer(low=1), "lr": Real(low=0.0, strict_low=True), "dropout": Real(low=0.0, high=0.95),
                  "data_noise": Real(low=0.0, high=1.0), "seed": Integer(low=0), "dtype": _DTYPE, "device": Device(),
                  "chunks": Optional(Integer(low=1))})
def train_grid(data, alphas, noises, n_seeds: int, *, noise_kind: str = "data", width: int = 64, depth: int = 7,
               steps: int = 100, lr: float = 1e-3, dropout: float = 0.0, data_noise: float = 0.0,
               seed: int = 0, dtype=torch.float32, device: str = "cpu", client=None, chunks=None) -> GridResult:
    """Train the alpha x noise x seed grid in ONE batched run (full-batch Adam) and measure every network.

    ``data = (x_train, y_train, x_test, y_test)``. ``noise_kind`` picks what
    the ``noises`` axis sets: ``"data"`` (label redraw fraction and input
    noise ``s``), ``"dropout"`` (drop probability ``p``) or ``"lr"`` (Adam
    step); the other knobs stay at ``lr``, ``dropout`` and ``data_noise``.
    Networks with the same seed index share their initialisation; the
    initialisation and the per-step noise come from independent streams
    spawned from ``seed``. Every network trains on ``device``, where ``data``
    must already be (:func:`learning_dynamics.tasks.digits.load` takes ``device``).

    With a ``client`` (:func:`learning_dynamics.sweep.client`) or ``chunks``
    the noise levels (columns) train in chunks of ``chunks`` columns. The
    initialisations stay the same, but the per-step noise is drawn for the
    networks of a chunk together, so a chunked grid is another draw of the
    same experiment, not a bitwise copy (tests/test_sweep_runners.py bounds the
    difference).
    """
    x_train, y_train, x_test, y_test = data
    wanted = torch.device(device)
    if any(t.device.type != wanted.type or wanted.index not in (None, t.device.index) for t in data):
        raise ValueError(f"data must be on device {device!r}; got tensors on {sorted({str(t.device) for t in data})} "
                         f"(load them with device={device!r})")
    if not len(alphas) or not len(noises):
        raise ValueError(f"alphas and noises must be non-empty 1-D sequences; got shapes {alphas.shape} and "
                         f"{noises.shape}")
    for a in alphas:
        check_float("alpha", a, low=0.0, high=1.0)
    lr, dropout, data_noise = float(lr), float(dropout), float(data_noise)  # the defaults too
    for value in noises:
        if noise_kind == "lr":
            check_positive("noises (learning rates)", value)
        else:
            check_float(f"noises ({noise_kind} levels)", value, low=0.0, high=0.95 if noise_kind == "dropout" else 1.0)

    if client or chunks is not None:
        return _train_columns(data, alphas, noises, n_seeds, client, chunks, dict(
            noise_kind=noise_kind, width=width, depth=depth, steps=steps, lr=lr, dropout=dropout,
            data_noise=data_noise, seed=seed, dtype=dtype, device=device))
    points = sweep.grid(alpha=alphas, noise=noises, seed=np.arange(n_seeds))
    shape, n = points.shape, points.size
    grid_alpha, grid_noise, grid_seed = points.flat["alpha"], points.flat["noise"], points.flat["seed"]
    init_seed, noise_seed = (int(v) for v in np.random.SeedSequence(seed).generate_state(2))
    generator = check_generator(init_seed, device)
    base = init_params(n_seeds, n_in=x_train.shape[1], width=width, depth=depth, n_out=digits.N_CLASSES,
                       generator=generator, dtype=dtype, device=device)
    index = torch.as_tensor(grid_seed, device=device)
    params = {name: value[index].clone() for name, value in base.items()}

    def per_network(kind, default):
        return torch.as_tensor(np.where(noise_kind == kind, grid_noise, default), dtype=dtype, device=device)

    alpha = torch.as_tensor(grid_alpha, dtype=dtype, device=device)
    level, drop, rates = per_network("data", data_noise), per_network("dropout", dropout), per_network("lr", lr)
    keep = 1.0 - drop

    def sampler(gen, step):
        if bool((level > 0).any()):
            x, y = digits.data_noise(x_train, y_train, level, gen)
        else:
            x, y = x_train.expand(n, *x_train.shape), y_train.expand(n, *y_train.shape)
        if not bool((drop > 0).any()):
            return x, y, alpha
        shape_mask = (n, depth, x_train.shape[0], width)
        u = torch.rand(shape_mask, generator=gen, dtype=dtype, device=device)
        masks = (u < keep[:, None, None, None]).to(dtype) / keep[:, None, None, None]
        return x, y, alpha, masks

    result = train(loss, params, steps=steps, lr=rates, data=sampler, optimizer="adam", seed=noise_seed,
                   desc="phase-diagram grid")
    log_d, accuracy = measure(result.params, alpha, data)
    return GridResult(times=result.times, steps=result.steps, records=result.records, params=result.params,
                      alphas=alphas, noises=noises, noise_kind=noise_kind, log_d=log_d.reshape(shape + (-1,)),
                      accuracy=accuracy.reshape(shape), train_loss=result.records["loss"][-1].reshape(shape))


def _train_columns(data, alphas, noises, n_seeds, client, chunks, settings) -> GridResult:
    """:func:`train_grid` in chunks of noise levels (columns), joined back into one grid."""
    alphas, noises = np.asarray(alphas, dtype=np.float64), np.asarray(noises, dtype=np.float64)

    def columns(index):
        part = train_grid(data, alphas, noises[index], n_seeds, **settings)
        loss = part.records["loss"].reshape(len(part.steps), len(alphas), len(index), n_seeds)
        return {"log_d": np.moveaxis(part.log_d, 1, 0), "accuracy": np.moveaxis(part.accuracy, 1, 0),
                "train_loss": np.moveaxis(part.train_loss, 1, 0), "loss": np.moveaxis(loss, 2, 0)}

    flat = sweep.map(columns, np.arange(len(noises)), client=client, chunks=chunks, desc="phase-diagram columns")
    steps = np.arange(settings["steps"] + 1)
    loss = np.moveaxis(flat["loss"], 0, 2).reshape(len(steps), -1)
    return GridResult(times=steps.astype(np.float64), steps=steps, records={"loss": loss}, alphas=alphas, noises=noises,
                      noise_kind=settings["noise_kind"], log_d=np.moveaxis(flat["log_d"], 0, 1),
                      accuracy=np.moveaxis(flat["accuracy"], 0, 1), train_loss=np.moveaxis(flat["train_loss"], 0, 1))


@torch.no_grad()
def measure(params, alpha, data):
    """Separation profile on the clean training set and test accuracy, for every stacked network.

    BatchNorm uses the clean training set's statistics for both (dropout off).
    """
    x_train, y_train, x_test, y_test = data
    n = alpha.shape[0]

    _, reps, stats = forward(params, x_train, alpha)                  # depth+1 tensors (n, N, width)
    accuracy = (forward(params, x_test, alpha, stats=stats)[0].argmax(-1) == y_test).double().mean(-1)
    log_d = np.stack([separation.log_separation(h, y_train) for h in reps], -1)
    return log_d.reshape(n, -1), accuracy.cpu().numpy()
