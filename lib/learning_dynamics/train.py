"""One batched trainer: many networks (seeds x grid points) trained at once.

Parameters are stacked: every tensor in ``params`` has the network index as
its leading dimension, so a grid of 1,600 networks costs one Python loop over
steps, not over networks. The gradients come one of three ways:

- the loss is written for ONE network and vectorised with
  ``torch.func.vmap(torch.func.grad_and_value(...))`` (the default);
- the loss takes the stacked parameters and returns one loss per network
  (``batched_loss=True``): one backward pass of the summed loss;
- the loss also has its gradient in closed form (``grad_and_value=``), for
  tiny models where a step is a handful of products and autograd's overhead
  would dominate.

Data is either fixed (full-batch GD, ``data=``) or drawn afresh at every
step (online SGD, ``sampler=``); either way it carries the network
dimension in front. The learning rate may be a scalar or one value per
network. A step whose loss is not finite, or exceeds ``max_loss``, raises
:class:`TrainingDiverged`: the trainer never returns NaN curves.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import vmap
from tqdm import tqdm

from .threads import small_problem
from .validation import check_choice, check_int, check_positive

OPTIMIZERS = ("gd", "adam")


class TrainingDiverged(RuntimeError):
    """The loss of at least one network became non-finite or exploded."""

    def __init__(self, step: int, networks: list[int], loss: float):
        self.step, self.networks, self.loss = step, networks, loss
        shown = networks[:10]
        more = f" (+{len(networks) - 10} more)" if len(networks) > 10 else ""
        super().__init__(
            f"training diverged at step {step}: networks {shown}{more} reached loss {loss:.3g}; "
            "lower the learning rate or the initial scale"
        )


@dataclass
class TrainResult:
    """Final stacked parameters and what was recorded along the way.

    ``records[name]`` has shape ``(len(steps), n_networks, ...)``; ``loss`` is
    always recorded.
    """

    params: dict[str, torch.Tensor]
    steps: np.ndarray
    records: dict[str, np.ndarray]


def progress_enabled() -> bool:
    """Progress bars are on unless LD_PROGRESS=0 (tests, nbval and the book set it)."""
    return os.environ.get("LD_PROGRESS", "1") != "0"


def progress(iterable=None, **kwargs):
    """The library's one progress bar (tqdm), silenced by LD_PROGRESS=0."""
    return tqdm(iterable, disable=not progress_enabled(), leave=False, **kwargs)


def n_networks(params: dict[str, torch.Tensor]) -> int:
    """The shared leading dimension of stacked parameters."""
    if not params:
        raise ValueError("params must hold at least one tensor")
    sizes = {name: p.shape[0] if p.ndim else None for name, p in params.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise ValueError(f"every parameter needs the same leading (network) dimension; got {sizes}")
    return next(iter(sizes.values()))


def train(
    loss_fn: Callable,
    params: dict[str, torch.Tensor],
    *,
    steps: int,
    lr,
    data: tuple | None = None,
    sampler: Callable | None = None,
    optimizer: str = "gd",
    record: Callable | None = None,
    record_every: int = 1,
    seed: int = 0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    max_loss: float = 1e12,
    desc: str = "training",
    batched_loss: bool = False,
    grad_and_value: Callable | None = None,
) -> TrainResult:
    """Train every stacked network for ``steps`` steps and return a :class:`TrainResult`.

    ``loss_fn(params, *batch)`` is written for ONE network. ``data`` is a tuple
    of tensors with the network dimension in front (use ``expand`` to share),
    or ``sampler(generator, step)`` returns such a tuple per step.
    ``record(params)`` returns a dict of stacked tensors to keep at steps
    0, record_every, ... and at the final step.

    With ``batched_loss=True`` the loss already handles the leading network
    dimension (it returns one loss per network); the gradients then come from
    one backward pass of the summed loss, exact because the networks do not
    interact, and cheaper than vmap for losses made of many small operations.

    ``grad_and_value(params, *batch)``, when given, returns the per-network
    gradients in closed form (a dict like ``params``) and the losses, and
    replaces autograd; ``loss_fn`` is then the definition it must agree with
    (the tests check each pair). It needs ``batched_loss=True``: both work on
    the stacked parameters.
    """
    steps = check_int("steps", steps, low=1)
    record_every = check_int("record_every", record_every, low=1)
    seed = check_int("seed", seed, low=0)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    if (data is None) == (sampler is None):
        raise ValueError("give exactly one of data= (full batch) or sampler= (fresh batch per step)")
    n = n_networks(params)
    first = next(iter(params.values()))
    lr = _learning_rates(lr, n, first)

    params = {k: v.detach().clone() for k, v in params.items()}
    if grad_and_value is not None and not batched_loss:
        raise ValueError("grad_and_value= needs batched_loss=True: the closed-form gradients work on stacked parameters")
    if grad_and_value is not None:
        step_fn = _closed_form(grad_and_value, params)
    elif batched_loss:
        step_fn = _summed_backward(loss_fn)
    else:
        step_fn = vmap(torch.func.grad_and_value(loss_fn))
    generator = torch.Generator(device=first.device).manual_seed(seed)
    state = {k: (torch.zeros_like(v), torch.zeros_like(v)) for k, v in params.items()} if optimizer == "adam" else {}

    rates = {name: lr.reshape((n,) + (1,) * (p.ndim - 1)) for name, p in params.items()}
    record_steps = sorted(set(range(0, steps + 1, record_every)) | {steps})
    recorded = set(record_steps)
    kept: dict[str, list] = {"loss": []}
    with small_problem(sum(p.numel() for p in params.values()), first.device):
        for step in progress(range(steps + 1), desc=desc, total=steps + 1):
            batch = data if data is not None else sampler(generator, step)
            grads, loss = step_fn(params, *batch)
            _check_finite(loss, step, max_loss)
            if step in recorded:
                kept["loss"].append(loss.detach().cpu().numpy())
                if record is not None:
                    for name, value in record(params).items():
                        kept.setdefault(name, []).append(value.detach().cpu().numpy())
            if step == steps:
                break
            with torch.no_grad():
                for name, g in grads.items():
                    rate = rates[name]
                    if optimizer == "adam":
                        m, v = state[name]
                        m.mul_(betas[0]).add_(g, alpha=1 - betas[0])
                        v.mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
                        m_hat = m / (1 - betas[0] ** (step + 1))
                        v_hat = v / (1 - betas[1] ** (step + 1))
                        params[name] = params[name] - rate * m_hat / (v_hat.sqrt() + eps)
                    else:
                        params[name] = params[name] - rate * g
    records = {k: np.stack(v) for k, v in kept.items()}
    return TrainResult(params=params, steps=np.array(record_steps), records=records)


def _summed_backward(loss_fn: Callable) -> Callable:
    """Per-network gradients of a loss that returns one value per stacked network."""

    def step(params, *batch):
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        loss = loss_fn(leaves, *batch)
        if loss.ndim != 1:
            raise ValueError(f"with batched_loss=True the loss must return one value per network; got shape {tuple(loss.shape)}")
        grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
        return dict(zip(leaves, grads)), loss.detach()

    return step


def _closed_form(grad_and_value: Callable, like: dict[str, torch.Tensor]) -> Callable:
    """Closed-form per-network gradients and losses of stacked parameters, checked once, with no autograd graph."""
    checked = False

    def step(params, *batch):
        nonlocal checked
        with torch.no_grad():
            grads, loss = grad_and_value(params, *batch)
        if not checked:
            if grads.keys() != like.keys():
                raise ValueError(f"grad_and_value must return one gradient per parameter {sorted(like)}; got {sorted(grads)}")
            if loss.shape != (n_networks(like),):
                raise ValueError(f"grad_and_value must return one loss per network; got shape {tuple(loss.shape)}")
            checked = True
        return grads, loss

    return step


def train_loop(loss_fn: Callable, params: dict[str, torch.Tensor], *, steps: int, lr: float, data: tuple) -> dict:
    """Reference: the same full-batch GD, one network at a time, with plain autograd.

    For benchmarks and tests only; chapters use :func:`train`.
    """
    n = n_networks(params)
    finals = {k: [] for k in params}
    for i in range(n):
        p = {k: v[i].detach().clone().requires_grad_(True) for k, v in params.items()}
        batch = tuple(d[i] for d in data)
        for _ in range(steps):
            loss = loss_fn(p, *batch)
            grads = torch.autograd.grad(loss, list(p.values()))
            with torch.no_grad():
                for (name, value), g in zip(p.items(), grads):
                    value -= lr * g
        for k, v in p.items():
            finals[k].append(v.detach())
    return {k: torch.stack(v) for k, v in finals.items()}


def _learning_rates(lr, n: int, like: torch.Tensor) -> torch.Tensor:
    rates = torch.as_tensor(lr, dtype=like.dtype, device=like.device)
    if rates.ndim == 0:
        check_positive("lr", float(rates))
        rates = rates.expand(n)
    elif rates.shape != (n,):
        raise ValueError(f"lr must be a scalar or have shape ({n},) (one per network); got {tuple(rates.shape)}")
    if not torch.all(torch.isfinite(rates)) or torch.any(rates <= 0):
        raise ValueError(f"lr must be > 0 and finite for every network; got min {float(rates.min())!r}")
    return rates


def _check_finite(loss: torch.Tensor, step: int, max_loss: float) -> None:
    worst = float(loss.abs().max())  # NaN if any loss is NaN
    if not worst <= max_loss:
        bad = ~torch.isfinite(loss) | (loss.abs() > max_loss)
        idx = torch.nonzero(bad).flatten().tolist()
        raise TrainingDiverged(step, idx, float(loss[idx[0]]))
