"""One batched trainer: many networks (seeds x grid points) trained at once.

Parameters are stacked: every tensor in ``params`` has the network index as
its leading dimension, so a grid of 1,600 networks costs one Python loop over
steps, not over networks. ``gradients=`` says where the per-network gradients
come from (after neural-tangents' ``implementation=`` argument):

- ``"stacked"`` (the default): the loss takes the stacked parameters and
  returns one loss per network; one backward pass of their sum gives every
  network's gradient, exactly, because the networks do not interact;
- ``"vmap"``: the loss is written for ONE network and vectorised with
  ``torch.func.vmap(torch.func.grad_and_value(...))``;
- a callable ``grad_and_value(params, *batch) -> (grads, losses)``: closed-form
  gradients of the stacked parameters, for tiny models where a step is a
  handful of products and autograd's overhead would dominate.

Optimisers are small objects with ``init(params)`` and
``update(params, grads, state, rates, step)``: :class:`GD` and :class:`Adam`
(``optimizer="gd"`` and ``"adam"`` name their defaults). ``data=`` is either fixed
(a tuple of tensors, full batch) or a sampler drawing a fresh batch at every
step; either way the batch carries the network dimension in front. The learning rate may be a
scalar or one value per network. A step whose loss is not finite, or exceeds
:data:`MAX_LOSS`, raises :class:`TrainingDiverged`: the trainer never returns
NaN curves.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import vmap
from tqdm import tqdm

from .results import Run
from .threads import small_problem
from .validation import AnyOf, InstanceOf, Integer, Optional, Options, check_choice, check_float, check_generator, \
    check_positive, validate_params, value_text
from .validation import Callable as AnyCallable

GRADIENTS = ("stacked", "vmap")
MAX_LOSS = 1e12  # a loss above this counts as diverged


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


def progress_enabled() -> bool:
    """Progress bars are on unless LD_PROGRESS=0 (tests, nbval and the book set it)."""
    return os.environ.get("LD_PROGRESS", "1") != "0"


def progress(iterable=None, **kwargs):
    """The library's one progress bar (tqdm), silenced by LD_PROGRESS=0.

    Where LD_PROGRESS_FILE names a file (``python -m learning_dynamics run`` sets it for the chapter's
    kernel, whose own output never reaches the terminal), the loop also appends its state to that file
    as JSON lines ``{"desc", "n", "total", "done"}``: at its start, at most four times a second, and at
    its end, whether or not the bar itself shows. It then returns a plain iterator, not the tqdm object.
    """
    bar = tqdm(iterable, disable=not progress_enabled(), leave=False, **kwargs)
    path = os.environ.get("LD_PROGRESS_FILE")
    if not path or iterable is None:
        return bar
    import json
    import time

    total = kwargs.get("total")
    if total is None:
        try:
            total = len(iterable)
        except TypeError:
            total = None
    desc = kwargs.get("desc") or ""

    def report(n: int, done: bool = False) -> None:
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"desc": desc, "n": n, "total": total, "done": done}) + "\n")
        except OSError:
            pass  # progress is a courtesy: an unwritable file never stops a computation

    def reported():
        n, last = kwargs.get("initial", 0), time.monotonic()  # a resumed loop (sweep) starts at initial
        report(n)
        try:
            for item in bar:
                yield item
                n += 1
                now = time.monotonic()
                if now - last >= 0.25:
                    report(n)
                    last = now
        finally:
            report(n, done=True)

    return reported()


def n_networks(params: dict[str, torch.Tensor]) -> int:
    """The shared leading dimension of stacked parameters."""
    if not params:
        raise ValueError(f"params must hold at least one tensor; got {params!r}")
    sizes = {name: p.shape[0] if p.ndim else None for name, p in params.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise ValueError(f"every parameter needs the same leading (network) dimension; got {sizes}")
    return next(iter(sizes.values()))


@dataclass(frozen=True)
class GD:
    """Plain gradient descent: theta <- theta - lr * grad."""

    def init(self, params: dict[str, torch.Tensor]) -> dict:
        return {}

    def update(self, params, grads, state, rates, step: int) -> dict[str, torch.Tensor]:
        return {name: params[name] - rates[name] * g for name, g in grads.items()}


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba 2015) with bias correction, one state per stacked network.

    ``weight_decay`` is L2 coupled into the gradient, as in ``torch.optim.Adam`` (not AdamW):
    g <- g + weight_decay * theta before the moments. At 0 (the default) the update is exactly
    plain Adam's.
    """

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self):
        check_float("weight_decay", self.weight_decay, low=0.0)

    def init(self, params: dict[str, torch.Tensor]) -> dict:
        return {k: (torch.zeros_like(v), torch.zeros_like(v)) for k, v in params.items()}

    def update(self, params, grads, state, rates, step: int) -> dict[str, torch.Tensor]:
        (b1, b2), new = self.betas, {}
        for name, g in grads.items():
            m, v = state[name]
            if self.weight_decay:
                g = g + self.weight_decay * params[name]
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            m_hat = m / (1 - b1 ** (step + 1))
            v_hat = v / (1 - b2 ** (step + 1))
            new[name] = params[name] - rates[name] * m_hat / (v_hat.sqrt() + self.eps)
        return new


OPTIMIZERS = {"gd": GD, "adam": Adam}


@validate_params({"loss_fn": AnyCallable(), "params": InstanceOf(dict, description="a dict of stacked tensors"),
                  "steps": Integer(low=1), "gradients": AnyOf(Options(*GRADIENTS), AnyCallable()),
                  "record": Optional(AnyCallable()), "record_every": Integer(low=1), "seed": Integer(low=0),
                  "desc": InstanceOf(str)})
def train(
    loss_fn: Callable,
    params: dict[str, torch.Tensor],
    *,
    steps: int,
    lr,
    data: tuple | Callable,
    optimizer="gd",
    gradients="stacked",
    record: Callable | None = None,
    record_every: int = 1,
    seed: int = 0,
    desc: str = "training",
) -> Run:
    """Train every stacked network for ``steps`` steps and return a :class:`~learning_dynamics.results.Run`.

    The run's ``records[name]`` have shape ``(n_records, n_networks, ...)``
    (``loss`` is always recorded), its ``params`` are the final stacked
    parameters, and its ``times`` are lr x step; with one learning rate per
    network they are the steps themselves, and the runner sets its own clock.

    Args:
        loss_fn: ``loss_fn(params, *batch)``; with ``gradients="stacked"`` it
            takes the stacked parameters and returns one loss per network,
            with ``"vmap"`` it is written for one network.
        params: stacked tensors, network index first.
        steps: optimiser steps.
        lr: a scalar or one learning rate per network.
        data: a tuple of tensors with the network dimension in front (use
            ``expand`` to share), for full-batch training, or a sampler
            ``data(generator, step)`` returning such a tuple at every step.
        optimizer: ``"gd"``, ``"adam"``, or an object with ``init`` and
            ``update`` (:class:`GD`, :class:`Adam`).
        gradients: ``"stacked"``, ``"vmap"``, or a closed-form
            ``grad_and_value(params, *batch) -> (grads, losses)`` on the stacked
            parameters; ``loss_fn`` is then the definition it must agree with
            (the tests check each pair).
        record: ``record(params)`` returns a dict of stacked tensors to keep at
            steps 0, record_every, ... and at the final step.
        record_every: recording interval in steps.
        seed: seed of the sampler's generator (unused with a fixed batch).
        desc: label of the progress bar.
    """
    if isinstance(optimizer, str):
        check_choice("optimizer", optimizer, tuple(OPTIMIZERS))
        optimizer = OPTIMIZERS[optimizer]()
    elif not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise ValueError(f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))} or an object with init(params) and "
                         f"update(params, grads, state, rates, step); got {value_text(optimizer)}")
    if not (callable(data) or isinstance(data, tuple)):
        raise ValueError(f"data must be a tuple of tensors (full batch) or a sampler(generator, step); got {type(data).__name__}")
    n = n_networks(params)
    first = next(iter(params.values()))
    clock = float(lr) if np.ndim(lr) == 0 else 1.0  # t = lr x step, or the step for per-network rates
    lr = _learning_rates(lr, n, first)
    params = {k: v.detach().clone() for k, v in params.items()}
    step_fn = _gradient_path(gradients, loss_fn, params)
    generator = check_generator(seed, first.device)
    state = optimizer.init(params)

    rates = {name: lr.reshape((n,) + (1,) * (p.ndim - 1)) for name, p in params.items()}
    record_steps = sorted(set(range(0, steps + 1, record_every)) | {steps})
    recorded = set(record_steps)
    kept: dict[str, list] = {"loss": []}
    with small_problem(sum(p.numel() for p in params.values()), first.device):
        for step in progress(range(steps + 1), desc=desc, total=steps + 1):
            batch = data(generator, step) if callable(data) else data
            grads, loss = step_fn(params, *batch)
            _check_finite(loss, step, MAX_LOSS)
            if step in recorded:
                kept["loss"].append(loss.detach().cpu().numpy())
                if record is not None:
                    for name, value in record(params).items():
                        kept.setdefault(name, []).append(value.detach().cpu().numpy())
            if step == steps:
                break
            with torch.no_grad():
                params = optimizer.update(params, grads, state, rates, step)
    records = {k: np.stack(v) for k, v in kept.items()}
    record_steps = np.array(record_steps)
    return Run(times=record_steps * clock, records=records, params=params, steps=record_steps)


def _gradient_path(gradients, loss_fn: Callable, like: dict[str, torch.Tensor]) -> Callable:
    """``step(params, *batch) -> (grads, losses)`` for the ``gradients=`` choice."""
    if callable(gradients):
        return _closed_form(gradients, like)
    if gradients not in GRADIENTS:
        raise ValueError(f"gradients must be one of {', '.join(map(repr, GRADIENTS))} or a callable "
                         f"grad_and_value(params, *batch); got {gradients!r}")
    if gradients == "stacked":
        return _summed_backward(loss_fn)
    return vmap(torch.func.grad_and_value(loss_fn))


def _summed_backward(loss_fn: Callable) -> Callable:
    """Per-network gradients of a loss that returns one value per stacked network."""

    def step(params, *batch):
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        loss = loss_fn(leaves, *batch)
        if loss.ndim != 1:
            raise ValueError(f"with gradients='stacked' the loss must return one value per network; got shape "
                             f"{tuple(loss.shape)} (write it for one network and pass gradients='vmap')")
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
