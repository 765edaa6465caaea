"""Grokking on real data as a lazy-to-rich transition (Nam et al. 2025, Sec. 7, Fig. 8).

The authors train a tanh MLP ``n_in - width - width - width - n_out`` (tanh after each hidden
layer, the read-out multiplied by ``output_scale``) on 1,000 MNIST images with Adam (lr 1e-3,
weight decay 1e-4 coupled into the gradient, as ``torch.optim.Adam`` does), minibatches of 128
shuffled every epoch, and an MSE loss (mean) against ``target_scale`` x one-hot targets on inputs
multiplied by ``input_scale``. Every weight matrix is N(0, (weight_scale / sqrt(fan_in))^2), every
bias PyTorch's ``nn.Linear`` default U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Variant ``a`` (large
weights, small targets) groks: train accuracy reaches 100% long before test accuracy rises.
Variants ``b``-``f`` change one scale each and grok little or not at all.

The width-Z toy of :func:`learning_dynamics.linear.gamma_plus` says why: a network whose output,
with its layers aligned, is already much larger than the target (gamma_+ near 1) fits the
training set lazily, without learning features; weight decay then slowly shrinks it into the
rich regime, where it generalises. :func:`init_gamma_plus` measures gamma_+ of every network
from its own init.

:func:`mlp_inits` draws the stacked networks (variants x seeds), :func:`grokking_runs` trains
them all in one call of :func:`learning_dynamics.train.train`, and :func:`delay` reads the
grokking delay off the accuracy curves. Feedback-principle chapter, fig-grokking.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .linear import crossing_times, gamma_plus as toy_gamma_plus
from .results import Run
from .train import Adam, train
from .validation import (Array, Boolean, Device, InstanceOf, Integer, Optional, Options, Real, Seed, check_float, check_generator,
                         validate_params, value_text)

SHUFFLES = ("seed", "shared", "network")


@dataclass(frozen=True)
class Variant:
    """The four scales of one of the authors' runs (train_mnist_grokking.py, ``subfig_arr``)."""

    weight_scale: float
    target_scale: float
    input_scale: float
    output_scale: float

    def __post_init__(self):
        for name in ("weight_scale", "target_scale", "input_scale", "output_scale"):
            check_float(name, getattr(self, name), low=0.0, strict_low=True)


# The authors' panels of Fig. 8. Their variant "e" (a's scales with dropout 0.6 before the read-out)
# is left out: the stacked trainer here has no dropout, and the chapter's argument needs only the scales.
VARIANTS: dict[str, Variant] = {
    "a": Variant(weight_scale=5.0, target_scale=3.0, input_scale=1.0, output_scale=1.0),  # groks
    "b": Variant(weight_scale=1.0, target_scale=3.0, input_scale=1.0, output_scale=1.0),  # small weights
    "c": Variant(weight_scale=5.0, target_scale=30.0, input_scale=1.0, output_scale=1.0),  # large targets
    "d": Variant(weight_scale=5.0, target_scale=3.0, input_scale=0.01, output_scale=1.0),  # small inputs
    "f": Variant(weight_scale=5.0, target_scale=3.0, input_scale=1.0, output_scale=0.1),  # small read-out
}
SCALES = ("weight_scale", "target_scale", "input_scale", "output_scale")
_VARIANTS = InstanceOf(str, list, tuple, dict, description="variant names from VARIANTS, or a dict name -> Variant")


def _resolve(variants) -> dict[str, Variant]:
    """``variants`` as an ordered dict name -> Variant."""
    if isinstance(variants, str):
        variants = [variants]
    if isinstance(variants, Mapping):
        resolved = dict(variants)
        bad = [k for k, v in resolved.items() if not isinstance(v, Variant)]
        if bad:
            raise ValueError(f"variants must map names to Variant(weight_scale, target_scale, input_scale, output_scale); "
                             f"got {value_text(variants)}, with non-Variant values for {bad}")
    else:
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"variants must be names from {sorted(VARIANTS)} (or a dict name -> Variant); "
                             f"got {value_text(variants)}, with unknown {unknown}")
        resolved = {name: VARIANTS[name] for name in variants}
    if not resolved or len(resolved) != len(list(variants)):
        raise ValueError(f"variants must hold at least one variant, each once; got {value_text(variants)}")
    return resolved


# ---------------------------------------------------------------------------
# The stacked MLP
# ---------------------------------------------------------------------------


@validate_params({"n_in": Integer(low=1), "width": Integer(low=1), "n_out": Integer(low=2), "variants": _VARIANTS,
                  "n_seeds": Integer(low=1), "seed": Integer(low=0), "depth": Integer(low=1),
                  "dtype": InstanceOf(torch.dtype), "device": Device()})
def mlp_inits(n_in, width, n_out, variants, n_seeds, seed=0, *, depth=3, dtype=torch.float32, device="cpu"):
    """Stacked tanh MLPs for every (variant, seed), variant-major: ``(params, scales)``.

    ``params`` holds ``W0 .. W{depth}`` (n, fan_out, fan_in) and ``b0 .. b{depth}`` (n, fan_out):
    weights ``weight_scale / sqrt(fan_in) x N(0, 1)``, biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
    (PyTorch's ``nn.Linear`` default). ``seed`` is the reader's seed: network ``v * n_seeds + i`` is
    variant ``v`` at network seed ``seed * n_seeds + i``, so seeds 0, 1, ... train disjoint networks
    (seeds 0..K-1 together hold network seeds 0..K n_seeds - 1). Each is drawn on the CPU in float64
    from its own generator, so a network depends only on its network seed (not on the other
    variants), every variant at one network seed shares the same standard-normal draws, and every
    device and dtype sees the same init. ``scales`` holds the four scales of :class:`Variant` as (n,)
    tensors, plus ``"variant"`` (n,) names and ``"seed"`` (n,) network seeds as numpy arrays.
    Feedback-principle chapter.
    """
    chosen = _resolve(variants)
    sizes = [n_in] + [width] * depth + [n_out]
    draws = []
    network_seeds = seed * n_seeds + np.arange(n_seeds)
    for net_seed in network_seeds:  # one generator per network seed: the same network in any batch
        gen = check_generator(int(net_seed))
        one = {}
        for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            one[f"W{layer}"] = torch.randn(fan_out, fan_in, generator=gen, dtype=torch.float64) / math.sqrt(fan_in)
            bound = 1.0 / math.sqrt(fan_in)
            one[f"b{layer}"] = (torch.rand(fan_out, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        draws.append(one)
    weight = torch.tensor([v.weight_scale for v in chosen.values() for _ in range(n_seeds)], dtype=torch.float64)
    params = {}
    for name in draws[0]:
        stacked = torch.stack([d[name] for d in draws]).repeat((len(chosen),) + (1,) * draws[0][name].ndim)
        if name.startswith("W"):
            stacked = stacked * weight.reshape((-1,) + (1,) * (stacked.ndim - 1))
        params[name] = stacked.to(dtype=dtype, device=device)
    scales = {s: torch.tensor([getattr(v, s) for v in chosen.values() for _ in range(n_seeds)], dtype=dtype).to(device)
              for s in SCALES}
    scales["variant"] = np.repeat(np.array(list(chosen)), n_seeds)
    scales["seed"] = np.tile(network_seeds, len(chosen))
    return params, scales


def _layers(params) -> int:
    return sum(1 for name in params if name.startswith("W"))


def hidden(params, x, input_scale):
    """The last hidden layer's features h(x) of every stacked network: (n, N, width).

    ``x`` is (N, n_in) shared by every network or (n, N, n_in); the input scale multiplies the first
    layer's product, (s x) W^T = s (x W^T).
    """
    h = torch.matmul(x, params["W0"].transpose(-1, -2)) * input_scale[:, None, None] + params["b0"][:, None, :]
    h = torch.tanh(h)
    for layer in range(1, _layers(params) - 1):
        h = torch.tanh(torch.baddbmm(params[f"b{layer}"][:, None, :], h, params[f"W{layer}"].transpose(-1, -2)))
    return h


def forward(params, x, input_scale, output_scale):
    """The outputs of every stacked network, ``output_scale x (W_L h(x) + b_L)``: (n, N, n_out)."""
    last = _layers(params) - 1
    h = hidden(params, x, input_scale)
    out = torch.baddbmm(params[f"b{last}"][:, None, :], h, params[f"W{last}"].transpose(-1, -2))
    return out * output_scale[:, None, None]


def mse_loss(params, x, labels, input_scale, output_scale, target_scale):
    """Mean squared error (over samples and classes, like ``nn.MSELoss()``) against ``target_scale`` x one-hot: (n,)."""
    out = forward(params, x, input_scale, output_scale)
    target = torch.nn.functional.one_hot(labels, out.shape[-1]).to(out.dtype) * target_scale[:, None, None]
    return ((out - target) ** 2).mean((-1, -2))


def accuracy(params, x, labels, input_scale, output_scale, chunk=4096):
    """Fraction of ``labels`` (N,) that every stacked network's argmax output gets right: (n,)."""
    correct = 0
    with torch.no_grad():
        for start in range(0, x.shape[-2], chunk):
            out = forward(params, x[..., start:start + chunk, :], input_scale, output_scale)
            correct = correct + (out.argmax(-1) == labels[start:start + chunk]).sum(-1)
    return correct.to(input_scale.dtype) / x.shape[-2]


@validate_params({"x": InstanceOf(torch.Tensor), "y": InstanceOf(torch.Tensor), "n_networks": Integer(low=1),
                  "batch": Integer(low=1), "streams": Optional(InstanceOf(torch.Tensor, np.ndarray, list, tuple))})
def epoch_sampler(x, y, n_networks, batch, streams=None):
    """``data(generator, step)`` for :func:`~learning_dynamics.train.train`: minibatches of shuffled epochs.

    Every epoch reshuffles the N samples and walks through them in ``ceil(N / batch)`` steps (the last
    batch holds the rest, like a ``DataLoader`` that keeps its last batch). ``streams`` (n_networks,)
    says which shuffle each network follows: networks with the same stream see the same minibatches
    (all zeros, the default: one shuffle for all; ``arange(n)``: each its own). Returns
    ``(x_batch, y_batch)`` of shapes (n, B, n_in) and (n, B), a shared batch expanded without a copy.
    """
    n_samples = x.shape[0]
    if y.shape != (n_samples,):
        raise ValueError(f"y must hold one label per row of x, shape ({n_samples},); got shape {tuple(y.shape)}")
    streams = torch.zeros(n_networks, dtype=torch.long) if streams is None else torch.as_tensor(streams, dtype=torch.long)
    if streams.shape != (n_networks,) or (streams.numel() and int(streams.min()) < 0):
        raise ValueError(f"streams must hold one integer >= 0 per network, shape ({n_networks},); got {value_text(streams)}")
    n_streams = int(streams.max()) + 1
    streams = streams.to(x.device)
    per_epoch = math.ceil(n_samples / batch)
    shuffled = {"epoch": None, "order": None}

    def data(generator, step):
        epoch, k = divmod(step, per_epoch)
        if shuffled["epoch"] != epoch:
            keys = torch.rand((n_streams, n_samples), generator=generator, device=x.device, dtype=torch.float64)
            shuffled["epoch"], shuffled["order"] = epoch, keys.argsort(-1)
        idx = shuffled["order"][:, k * batch:(k + 1) * batch]
        if n_streams == 1:
            return x[idx[0]].expand(n_networks, -1, -1), y[idx[0]].expand(n_networks, -1)
        idx = idx[streams]
        return x[idx], y[idx]

    data.steps_per_epoch = per_epoch
    return data


# ---------------------------------------------------------------------------
# gamma_+ of an MLP's init
# ---------------------------------------------------------------------------


def init_gamma_plus(params, x, labels, scales):
    """gamma_+ of the width-Z toy for every stacked network at its init: ``(gamma_plus, sigma0, s0, target)``, each (n,).

    The toy f = (1/Z) sum_i a_i b_i fits a target S; Sigma0 = sum(a^2 + b^2) / 2Z is what f would be if
    every term a_i b_i had the target's sign (with |a_i| = |b_i|), S0 = f at init. An MLP's output
    is the same kind of sum over the last hidden features, f_c(x) = output_scale sum_i W[c, i] h_i(x)
    + b_c, with one such sum for every class c and input x. We take:

    - only the part that varies over the inputs: h~_i(x) = h_i(x) - mean_x h_i(x), and the targets
      y~_c(x) = target_scale (onehot_c(x) - mean_x onehot_c(x)). A constant output fits nothing but
      the class frequencies, and the centring removes the read-out bias exactly, so the toy's
      product f~ = output_scale W h~ is the network's own centred output;
    - S = RMS over (x, c) of y~, the target's size;
    - S0 = mean over (x, c) of f~ y~ / S, the initial output's projection on the target;
    - Sigma0 = RMS over (x, c) of output_scale sum_i |W[c, i] h~_i(x)|, the output with every term
      aligned: the toy's Sigma0 at balance |a_i| = |b_i| (an MLP's features are not parameters, so the
      split of the scale between W and h~ means nothing, and the product is what the balanced toy sees).

    Then |S0| <= RMS(f~) <= Sigma0 by Cauchy-Schwarz and the triangle inequality, with no clipping.
    ``x`` (N, n_in) and ``labels`` (N,) are the training set; ``scales`` is :func:`mlp_inits`'s.
    gamma_+ near 1 means the init already holds a far larger output than the target needs (lazy);
    large gamma_+ means the weights must grow (rich).
    """
    with torch.no_grad():
        h = hidden(params, x, scales["input_scale"])
        h = h - h.mean(-2, keepdim=True)
        last = params[f"W{_layers(params) - 1}"] * scales["output_scale"][:, None, None]  # (n, C, width)
        out = torch.matmul(h, last.transpose(-1, -2))  # (n, N, C), the centred output
        aligned = torch.matmul(h.abs(), last.abs().transpose(-1, -2))
        onehot = torch.nn.functional.one_hot(labels, last.shape[-2]).to(h.dtype)
        target = (onehot - onehot.mean(0)) * scales["target_scale"][:, None, None]
        s = target.pow(2).mean((-1, -2)).sqrt()
        s0 = (out * target).mean((-1, -2)) / s
        sigma0 = aligned.pow(2).mean((-1, -2)).sqrt()
    s, s0, sigma0 = (v.double().cpu().numpy() for v in (s, s0, sigma0))
    s0 = np.clip(s0, -sigma0, sigma0)  # only rounding can cross the bound
    return toy_gamma_plus(sigma0, s0, s), sigma0, s0, s


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


_TENSOR = InstanceOf(torch.Tensor, np.ndarray, description="a tensor or an array")
_RATE = Real(low=0.0, strict_low=True)


@validate_params({"x_train": _TENSOR, "y_train": _TENSOR, "x_test": _TENSOR, "y_test": _TENSOR, "variants": _VARIANTS,
                  "width": Integer(low=1), "depth": Integer(low=1), "epochs": Integer(low=1), "batch": Integer(low=1),
                  "lr": _RATE, "weight_decay": Real(low=0.0), "n_seeds": Integer(low=1), "seed": Integer(low=0),
                  "shuffle": Options(*SHUFFLES), "record_every": Integer(low=1), "dtype": InstanceOf(torch.dtype),
                  "device": Device()})
def grokking_runs(x_train, y_train, x_test, y_test, *, variants=tuple(VARIANTS), width=512, depth=3, epochs=2000,
                  batch=128, lr=1e-3, weight_decay=1e-4, n_seeds=1, seed=0, shuffle="seed", record_every=1,
                  dtype=torch.float32, device="cpu") -> Run:
    """Train the stacked :func:`mlp_inits` networks with Adam (coupled weight decay) and minibatch MSE.

    All ``len(variants) x n_seeds`` networks train in one call of :func:`~learning_dynamics.train.train`,
    ``ceil(N / batch)`` steps an epoch (:func:`epoch_sampler`); ``shuffle`` says whose minibatches
    are shared: ``"seed"`` (the default) gives every seed its own shuffle, the same for every variant,
    so that variants at one seed differ only in their scales; ``"shared"`` one shuffle for all;
    ``"network"`` each its own. The inputs are multiplied by each network's ``input_scale``, the
    targets are ``target_scale`` x one-hot. ``seed`` is the reader's seed: it picks the network seeds
    ``seed * n_seeds .. seed * n_seeds + n_seeds - 1`` (:func:`mlp_inits`), so different seeds train
    disjoint networks, and the shuffles, from a generator hashed from it
    (``numpy.random.SeedSequence(seed)``) that no init shares.

    Returns a :class:`~learning_dynamics.results.Run` on the clock of epochs (``times`` = 0,
    record_every, ..., epochs): ``records`` ``train_accuracy``, ``test_accuracy`` (on the whole sets),
    ``norm`` (all parameters' norm) and the minibatch ``loss``, each (n_records, n_networks), recorded
    before the epoch's first step (the authors' order); ``final`` holds :func:`init_gamma_plus`'s
    ``gamma_plus``, ``sigma0``, ``s0`` and ``target`` of every network's init, and its ``variant``
    names and ``seed``. Feedback-principle chapter, fig-grokking.
    """
    x_train, x_test = (torch.as_tensor(v, dtype=dtype, device=device) for v in (x_train, x_test))
    y_train, y_test = (torch.as_tensor(v, dtype=torch.long, device=device) for v in (y_train, y_test))
    for name, x, y in (("x_train", x_train, y_train), ("x_test", x_test, y_test)):
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"{name} must be a non-empty (N, n_in) array; got shape {tuple(x.shape)}")
        label = "y" + name[1:]
        if y.shape != (len(x),):
            raise ValueError(f"{label} must hold one label per row of {name}, shape ({len(x)},); got shape {tuple(y.shape)}")
    if x_test.shape[1] != x_train.shape[1]:
        raise ValueError(f"x_test must have the {x_train.shape[1]} features of x_train; got shape {tuple(x_test.shape)}")
    n_out = int(max(int(y_train.max()), int(y_test.max()))) + 1
    if int(min(int(y_train.min()), int(y_test.min()))) < 0 or n_out < 2:
        raise ValueError(f"y_train and y_test must be class indices 0..C-1 with C >= 2; got range "
                         f"[{int(min(y_train.min(), y_test.min()))}, {n_out - 1}]")
    params, scales = mlp_inits(x_train.shape[1], width, n_out, variants, n_seeds, seed, depth=depth, dtype=dtype,
                               device=device)
    n = params["W0"].shape[0]
    gamma, sigma0, s0, target = init_gamma_plus(params, x_train, y_train, scales)
    streams = {"shared": np.zeros(n, dtype=int), "network": np.arange(n), "seed": np.tile(np.arange(n_seeds), n // n_seeds)}
    sampler = epoch_sampler(x_train, y_train, n, batch, streams=streams[shuffle])
    per_epoch = sampler.steps_per_epoch
    consts = (scales["input_scale"], scales["output_scale"], scales["target_scale"])

    def data(generator, step):
        return sampler(generator, step) + consts

    def record(p):
        return {"train_accuracy": accuracy(p, x_train, y_train, *consts[:2]),
                "test_accuracy": accuracy(p, x_test, y_test, *consts[:2]),
                "norm": torch.sqrt(sum(v.flatten(1).pow(2).sum(-1) for v in p.values()))}

    # the shuffles' generator: hashed from the reader's seed, so that it is never one of the inits' generators
    shuffle_seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
    run = train(mse_loss, params, steps=epochs * per_epoch, lr=lr, data=data, optimizer=Adam(weight_decay=weight_decay),
                record=record, record_every=record_every * per_epoch, seed=shuffle_seed, desc="grokking MLPs")
    run.times = run.steps / per_epoch
    run.final = {"gamma_plus": gamma, "sigma0": sigma0, "s0": s0, "target": target,
                 "variant": scales["variant"], "seed": scales["seed"]}
    return run


# ---------------------------------------------------------------------------
# Reading the delay off the curves
# ---------------------------------------------------------------------------


@validate_params({"times": Array(ndim=1), "train_acc": Array(), "test_acc": Array(),
                  "level": Real(low=0.0, high=1.0, strict_low=True), "test_level": Optional(Real(low=0.0, high=1.0, strict_low=True)),
                  "censored": Boolean()})
def delay(times, train_acc, test_acc, level=0.95, test_level=None, censored=False):
    """Grokking delay of every network: when test accuracy first reaches ``test_level`` (default ``level``)
    minus when train accuracy first reached ``level``, each crossing linearly interpolated between
    records (:func:`learning_dynamics.linear.crossing_times`).

    ``train_acc`` and ``test_acc`` are (n_records, ...) accuracies in [0, 1] (a Run's records);
    returns shape ``...``, in the units of ``times``. NaN where either curve never gets there: a
    network that never generalises has no finite delay (count those separately, e.g. with
    ``np.isnan``). A negative delay means test got there first. With ``censored=True``, a network
    whose train accuracy reached ``level`` but whose test accuracy had not reached ``test_level`` by
    the last record gets ``times[-1]`` minus its train time instead of NaN: a lower bound of its
    delay (the run ended first), which is what a claim "the delay is at least X" needs. A network
    whose train accuracy never got there stays NaN either way.
    """
    times = np.asarray(times, dtype=np.float64)
    train_acc, test_acc = np.asarray(train_acc, dtype=np.float64), np.asarray(test_acc, dtype=np.float64)
    if np.any(np.diff(times) <= 0):
        raise ValueError(f"times must be increasing; got {value_text(times)}")
    if train_acc.shape != test_acc.shape:
        raise ValueError(f"train_acc and test_acc must have the same shape; got {train_acc.shape} and {test_acc.shape}")
    if train_acc.ndim == 0 or train_acc.shape[0] != len(times):
        raise ValueError(f"train_acc must have the record axis first, of length {len(times)} (that of times); "
                         f"got shape {train_acc.shape}")
    for name, acc in (("train_acc", train_acc), ("test_acc", test_acc)):
        if acc.size and (acc.min() < 0 or acc.max() > 1):
            raise ValueError(f"{name} must hold accuracies in [0, 1]; got range [{acc.min()!r}, {acc.max()!r}]")
    test_level = level if test_level is None else test_level
    test_time, train_time = (crossing_times(times, np.moveaxis(acc, 0, -1), lvl)
                             for acc, lvl in ((test_acc, test_level), (train_acc, level)))
    if censored:
        test_time = np.where(np.isnan(test_time), times[-1], test_time)
    return test_time - train_time
