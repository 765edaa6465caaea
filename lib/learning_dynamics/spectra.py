"""Spectra of matrix-free operators, effective rank and participation ratio (the KPFlow chapter's measures).

- :func:`leading_spectrum`: top singular values by randomised SVD or block
  Krylov, from products with the operator only, and :func:`leading_eigenpairs`:
  the eigenvectors (eigenfunctions) of a self-adjoint one too;
- :func:`rademacher` probes and :func:`partial_gram`, the reduced Gram the
  paper's effective ranks are read from;
- :func:`effective_rank` (95% of the squared spectrum) and
  :func:`participation_ratio`, and :func:`trajectory_singular_values` of
  hidden trajectories.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .validation import Device, Integer, Optional, Options, Real, Seed, check_generator, validate_params
from .validation import Callable as AnyCallable


@validate_params({"n": Integer(low=1), "seed": Seed(), "device": Device()})
def rademacher(n: int, shape, *, seed: int = 0, dtype=torch.float64, device: str = "cpu") -> torch.Tensor:
    """``n`` random +-1 probes of ``shape`` (drawn on the CPU from ``seed``, so every device sees the same)."""
    gen = check_generator(seed)
    signs = torch.randint(0, 2, (n, *shape), generator=gen).to(dtype) * 2 - 1
    return signs.to(device)


KEEP = {"hidden": 2, "time": 1, "trial": 0}


@validate_params({"keep": Options(*KEEP)})
def partial_gram(outputs: torch.Tensor, keep: str = "hidden") -> torch.Tensor:
    """The Gram of an operator A seen through one index, from A applied to random probes.

    ``outputs`` is A S for n random +-1 probes S, shape (n, B, T, H). Since
    E[S S^T] = I, the estimate C = (1/n) sum_probes sum_{other indices} y y^T
    is unbiased for the partial trace of A A* over the other indices. ``keep``
    is ``"hidden"`` (H x H: the directions in state space that A's outputs
    occupy), ``"time"`` (T x T) or ``"trial"`` (B x B). Its eigenvalues are the
    squared singular values of A seen through that index.
    """
    if outputs.ndim != 4:
        raise ValueError(f"outputs must have shape (n_probes, trials, time, hidden); got {tuple(outputs.shape)}")
    axis = KEEP[keep] + 1
    y = outputs.movedim(axis, -1).reshape(-1, outputs.shape[axis])
    return y.T @ y / outputs.shape[0]


@validate_params({"threshold": Real(low=0.0, high=1.0, strict_low=True)})
def effective_rank(singular_values, threshold: float = 0.95) -> torch.Tensor:
    """The number of leading singular values that carry ``threshold`` of the squared spectrum.

    The paper's effective rank (threshold 0.95). Works over any leading
    (batch) dimensions; values are sorted inside.
    """
    s = torch.as_tensor(singular_values)
    if s.ndim < 1 or s.shape[-1] < 1:
        raise ValueError(f"singular_values must have at least one entry; got shape {tuple(s.shape)}")
    power = (s.abs() ** 2).sort(dim=-1, descending=True).values
    share = power.cumsum(-1) / power.sum(-1, keepdim=True).clamp_min(torch.finfo(power.dtype).tiny)
    return (share < threshold - 1e-12).sum(-1) + 1


def participation_ratio(singular_values) -> torch.Tensor:
    """(sum s^2)^2 / sum s^4: the participation ratio of the squared spectrum."""
    s2 = torch.as_tensor(singular_values) ** 2
    return s2.sum(-1) ** 2 / (s2**2).sum(-1).clamp_min(torch.finfo(s2.dtype).tiny)


def trajectory_singular_values(hidden: torch.Tensor) -> torch.Tensor:
    """Singular values of the mean-centred (B*T, H) matrix of hidden states (PCA), over leading dims."""
    hidden = torch.as_tensor(hidden)
    if hidden.ndim < 3:
        raise ValueError(f"hidden must have shape (..., trials, time, hidden); got {tuple(hidden.shape)}")
    flat = hidden.reshape(*hidden.shape[:-3], -1, hidden.shape[-1])
    return torch.linalg.svdvals(flat - flat.mean(-2, keepdim=True))


def _block_krylov(apply: Callable, q: torch.Tensor, n_iter: int, orth: Callable):
    """An orthonormal block Krylov basis (rows, flattened) of a self-adjoint operator from the start block ``q``,
    and the symmetrised Rayleigh-Ritz matrix of the operator on it."""
    width, shape = q.shape[0], q.shape[1:]
    size = math.prod(shape)
    blocks, images = [], []
    n_blocks = max(1, min(n_iter + 1, size // width))  # the Krylov space cannot outgrow the space itself
    for i in range(n_blocks):
        blocks.append(q.reshape(width, size))
        images.append(apply(q).reshape(width, size))
        if i < n_blocks - 1:
            basis = torch.cat(blocks)
            y = images[-1]
            for _ in range(2):  # full reorthogonalisation, twice for stability
                y = y - (y @ basis.T) @ basis
            q = orth(y.reshape(width, *shape))
    basis, image = torch.cat(blocks), torch.cat(images)
    ritz = basis @ image.T
    return basis, (ritz + ritz.T) / 2


@validate_params({"apply": AnyCallable(), "k": Integer(low=1), "oversample": Integer(low=0), "n_iter": Integer(low=0),
                  "seed": Seed(), "device": Device()})
def leading_eigenpairs(apply, shape, k: int, *, oversample: int = 10, n_iter: int = 3, seed: int = 0,
                       dtype=torch.float64, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` eigenvalues (by size) and eigenvectors of a matrix-free self-adjoint operator such as K.

    The randomised block Krylov space and Rayleigh-Ritz step of
    :func:`leading_spectrum` (the same draws: its eigenvalues are that
    function's, with their signs), keeping the Ritz vectors. Returns
    ``(values (k,), vectors (k, *shape))``, unit vectors, largest |value| first;
    for an eigenfunction of K over (trials, time, hidden), ``vectors[i]``.
    """
    size = math.prod(shape)
    width = min(k + oversample, size)
    omega = torch.randn((width, *shape), generator=check_generator(seed), dtype=dtype).to(device)

    def orth(y):
        return torch.linalg.qr(y.reshape(width, size).T).Q.T.reshape(width, *shape)

    basis, ritz = _block_krylov(apply, orth(omega), n_iter, orth)
    values, vectors = torch.linalg.eigh(ritz)
    order = values.abs().argsort(descending=True)[:k]
    return values[order], (vectors[:, order].T @ basis).reshape(len(order), *shape)


@validate_params({"apply": AnyCallable(), "k": Integer(low=1), "adjoint": Optional(AnyCallable()),
                  "oversample": Integer(low=0), "n_iter": Integer(low=0), "seed": Seed(), "device": Device()})
def leading_spectrum(apply: Callable, shape, k: int, *, adjoint: Callable | None = None, oversample: int = 10,
                     n_iter: int = 3, seed: int = 0, dtype=torch.float64, device: str = "cpu") -> torch.Tensor:
    """Top-``k`` singular values of a matrix-free operator by randomised SVD (Halko et al. 2011).

    ``apply`` maps a stack (n, *shape) to (n, *shape). Give ``adjoint`` for a
    general operator such as P: ``n_iter`` power iterations with A A*, then
    the SVD of Q^T A. Omit it for a self-adjoint operator such as K or
    P K P*: that gets a randomised block Krylov (block Lanczos) space of
    ``n_iter + 1`` blocks and a Rayleigh-Ritz step, which converges much
    faster for slowly decaying spectra (Musco & Musco 2015), and returns the
    absolute eigenvalues.
    """
    size = math.prod(shape)
    width = min(k + oversample, size)
    gen = check_generator(seed)
    omega = torch.randn((width, *shape), generator=gen, dtype=dtype).to(device)

    def orth(y):
        return torch.linalg.qr(y.reshape(width, size).T).Q.T.reshape(width, *shape)

    if adjoint is None:
        _, ritz = _block_krylov(apply, orth(omega), n_iter, orth)
        return torch.linalg.eigvalsh(ritz).abs().sort(descending=True).values[:k]
    q = orth(apply(omega))
    for _ in range(n_iter):
        q = orth(apply(orth(adjoint(q))))
    small = adjoint(q).reshape(width, size)  # rows: A* q_i, so small = Q^T A
    return torch.linalg.svdvals(small)[:k]
