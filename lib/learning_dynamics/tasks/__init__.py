"""Data and tasks, all generated from an explicit seed (nothing is downloaded).

Each family of tasks lives in its own submodule (skills and regression here;
hierarchical items, recurrent tasks, digits in siblings); import them as
``learning_dynamics.tasks.<name>``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..linear import whiten
from ..validation import Boolean, Device, Integer, Real, check_int, validate_params


@validate_params({"n_skills": Integer(low=1), "alpha": Real(low=0.0)})
def skill_frequencies(n_skills: int, alpha: float) -> np.ndarray:
    """Power-law skill frequencies p_k proportional to k^-(alpha + 1), summing to 1."""
    weights = np.arange(1, n_skills + 1, dtype=np.float64) ** -(alpha + 1.0)
    return weights / weights.sum()


@validate_params({"strength": Real(low=0.0, strict_low=True), "n_networks": Integer(low=1),
                  "batch_size": Integer(low=1), "device": Device()})
def skill_sampler(frequencies, strength: float, n_networks: int, batch_size: int, dtype=torch.float64, device="cpu"):
    """Online skill data: each sample exercises one skill k ~ p, with x = e_k and y = S.

    The skill features are orthogonal with E[x_k^2] = p_k, the decorrelated
    inputs of the layerwise model. Returns ``sampler(generator, step)`` giving
    (x, y) of shapes (n_networks, batch, K) and (n_networks, batch), a fresh
    batch per network and step, as :func:`learning_dynamics.train.train` expects.
    """
    probs = torch.as_tensor(frequencies, dtype=dtype, device=device)
    n_skills = probs.numel()

    features = torch.eye(n_skills, dtype=dtype, device=device)  # row k is the one-hot input of skill k
    targets = torch.full((n_networks, batch_size), strength, dtype=dtype, device=device)

    def sample(generator, step):
        skills = torch.multinomial(probs.expand(n_networks, n_skills), batch_size, replacement=True, generator=generator)
        return features[skills], targets

    return sample


@validate_params({"n_samples": Integer(low=2), "in_dim": Integer(low=1), "out_dim": Integer(low=1),
                  "seed": Integer(low=0), "whitened": Boolean()})
def random_regression(n_samples: int, in_dim: int, out_dim: int, seed: int, singular_values=None, whitened: bool = True):
    """Whitened Gaussian inputs X (in x N, X X^T / N = I) and Gaussian targets Y (out x N).

    With ``whitened=False``, X is left standard normal, as in the paper's
    Fig. 6b (any number of samples; ``singular_values`` then needs whitening).

    With ``singular_values``, the target map Y X^T / N has exactly those
    singular values, with random singular vectors: Y = U diag(s) V^T X plus
    Gaussian noise orthogonal to X's rows (which GD on whitened inputs never
    sees). The feedback-principle chapter fixes them at the median spectrum
    of the plain random tasks, since its kernel distance depends on the
    spectrum: a nearly isotropic target (one in 16 random draws) barely turns
    the kernel even in the rich regime.
    """
    rng = np.random.default_rng(seed)
    if not whitened:
        if singular_values is not None:
            raise ValueError("singular_values needs whitened inputs; got whitened=False with singular_values = "
                             f"{singular_values!r}")
        return rng.standard_normal((in_dim, n_samples)), rng.standard_normal((out_dim, n_samples))
    n_samples = check_int("n_samples", n_samples, low=in_dim + 1)
    x = whiten(rng.standard_normal((in_dim, n_samples)))
    y = rng.standard_normal((out_dim, n_samples))
    if singular_values is None:
        return x, y
    s = np.asarray(singular_values, dtype=np.float64)
    rank = min(in_dim, out_dim)
    if s.shape != (rank,) or np.any(s < 0) or not np.all(np.isfinite(s)):
        raise ValueError(f"singular_values must be {rank} finite values >= 0; got {singular_values!r}")
    u = np.linalg.qr(rng.standard_normal((out_dim, rank)))[0]
    v = np.linalg.qr(rng.standard_normal((in_dim, rank)))[0]
    noise = y - (y @ x.T / n_samples) @ x  # the part of Y that X cannot reach
    return x, u @ np.diag(s) @ v.T @ x + noise
