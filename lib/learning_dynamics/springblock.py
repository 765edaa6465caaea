"""The spring-block chain of Shi, Pan & Dokmanic: layers as blocks, separation as springs.

Blocks ``l = 1..L`` sit at positions ``x_l`` between a wall ``x_0 = 0`` and a
pulling point ``x_{L+1} = y``. Spring ``l`` has elongation
``d_l = x_l - x_{l-1}`` (``l = 1..L+1``, summing to ``y``): the load of layer
``l``. The profile ``y - x_l`` plays the part of a network's ``log D_l``.
The force on block ``l`` is ``F_l = k (x_{l+1} - 2 x_l + x_{l-1}) + eps xi_l``
with fresh Gaussian noise ``xi``. Dry friction lets a block move only by what
the force exceeds the threshold in its direction: ``mu_fwd`` forwards (towards
the pull), ``mu_back`` backwards,

    x_l <- x_l + eta * sign(F_l) * max(|F_l| - mu_{sign F_l}, 0)     (first order),

and in the second-order (Langevin) variant the same dry-friction rule acts
on the momentum of blocks with mass, viscous damping and decaying noise.

Stationary profiles in closed form:

- no noise: the blocks that moved stop where ``k (d_{l+1} - d_l) = mu_fwd``,
  the others never left the wall (:func:`profile_no_noise`, concave);
- noise much larger than friction: the mean force on every block balances the
  ratchet drift ``(mu_back - mu_fwd) / 2``, so ``d_l`` is linear in ``l`` with
  slope ``-(mu_back - mu_fwd) / (2k)`` (:func:`profile_large_noise`): uniform
  for symmetric friction, decreasing (convex) when ``mu_back > mu_fwd``.

Every simulation stacks all parameter cells and replicas into one array and
advances them together: there is no Python loop over cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import separation
from .results import Run
from .train import progress
from .validation import Array, Device, Integer, Real, validate_params, value_text

# What the public entry points declare (see :func:`learning_dynamics.validation.validate_params`).
_POSITIVE = Real(low=0.0, strict_low=True)
_CHAIN = {"mu_fwd": Array(), "mu_back": Array(), "eps": Array(), "n_blocks": Integer(low=1), "k": _POSITIVE,
          "steps": Integer(low=1), "pull": _POSITIVE, "replicas": Integer(low=1),
          "average_last": Real(low=0.0, high=1.0), "record_every": Integer(low=0), "seed": Integer(low=0),
          "device": Device()}
_CLOSED_FORM = {"n_blocks": Integer(low=1), "k": _POSITIVE, "pull": _POSITIVE}


@dataclass(kw_only=True)
class ChainRun(Run):
    """A :class:`~learning_dynamics.results.Run` of a batch of chains, one per parameter cell (shape ``S``) and replica.

    ``records["x_mean"]``: replica-mean positions at ``times``, (T, S..., L);
    ``x``: final positions (S..., replicas, L); ``d_mean``: elongations
    averaged over replicas and over the last ``average_last`` of the steps
    (S..., L+1).
    """

    x: np.ndarray
    d_mean: np.ndarray
    pull: float

    @property
    def d_final(self) -> np.ndarray:
        """Elongations of the final state, per replica (S..., replicas, L+1)."""
        return elongations(self.x, self.pull)

    @property
    def curvature(self) -> np.ndarray:
        """Normalised curvature ``(d_1 - d_{L+1}) / y`` of the averaged profile (S...)."""
        return separation.curvature(profile(self.d_mean, self.pull))


def dry_friction(force, mu_fwd, mu_back):
    """``sign(F) max(|F| - mu, 0)`` with ``mu = mu_fwd`` for ``F > 0`` and ``mu_back`` for ``F < 0``."""
    mu = np.where(force > 0, mu_fwd, mu_back)
    return np.sign(force) * np.maximum(np.abs(force) - mu, 0.0)


def spring_forces(x, k: float, pull: float) -> np.ndarray:
    """Spring force ``k (x_{l+1} - 2 x_l + x_{l-1})`` on each block, wall at 0 and pull at ``pull``."""
    d = elongations(x, pull)
    return k * (d[..., 1:] - d[..., :-1])


def elongations(x, pull: float) -> np.ndarray:
    """Spring elongations ``d_1..d_{L+1}`` from block positions ``x_1..x_L`` (last axis)."""
    x = np.asarray(x, dtype=np.float64)
    shape = x.shape[:-1] + (1,)
    return np.diff(np.concatenate([np.zeros(shape), x, np.full(shape, float(pull))], axis=-1), axis=-1)


@validate_params({"d": Array(), "pull": Real()})
def profile(d, pull: float) -> np.ndarray:
    """The chain's load curve ``y - x_l`` for ``l = 0..L+1`` (runs from ``y`` to 0), the analogue of ``log D_l``."""
    d = np.asarray(d, dtype=np.float64)
    x = np.concatenate([np.zeros(d.shape[:-1] + (1,)), np.cumsum(d, axis=-1)], axis=-1)
    return pull - x


@validate_params({**_CHAIN, "eta": _POSITIVE})
def first_order(mu_fwd, mu_back, eps, *, n_blocks: int = 7, k: float = 1.0, eta: float = 0.01,
                steps: int = 10_000, pull: float = 1.0, replicas: int = 1, average_last: float = 0.5,
                record_every: int = 0, seed: int = 0, device: str = "cpu") -> ChainRun:
    """Overdamped chain with asymmetric static friction and noise, every cell at once.

    ``mu_fwd``, ``mu_back`` and ``eps`` broadcast to the cell shape ``S``;
    each cell runs ``replicas`` independent chains from rest (``x = 0``).
    The chain is a numpy simulation of a few blocks: ``device`` must be ``"cpu"``.
    """
    _check_cpu(device)
    mu_fwd, mu_back, eps = _cells(mu_fwd=mu_fwd, mu_back=mu_back, eps=eps)
    k, eta, pull, average_last = float(k), float(eta), float(pull), float(average_last)  # the defaults too
    if eta * k >= 0.5:
        raise ValueError(f"eta * k must be < 0.5 for a stable chain; got {eta * k!r}")

    def step(x, noise, t):
        return x + eta * dry_friction(spring_forces(x, k, pull) + eps * noise, mu_fwd, mu_back)

    return _run(step, False, mu_fwd.shape, n_blocks, steps, replicas, average_last, record_every, seed, pull,
                eta, "spring-block chain")


@validate_params({**_CHAIN, "mass": _POSITIVE, "damping": Real(low=0.0), "decay": Real(low=0.0), "dt": _POSITIVE})
def second_order(mu_fwd, mu_back, eps, *, n_blocks: int = 7, k: float = 0.1, mass: float = 1.0,
                 damping: float = 1.0, decay: float = 0.001, dt: float = 0.05, steps: int = 14_000,
                 pull: float = 1.0, replicas: int = 1, average_last: float = 0.05, record_every: int = 0,
                 seed: int = 0, device: str = "cpu") -> ChainRun:
    """Blocks with mass, viscous damping, dry friction and noise decaying as ``eps exp(-decay t)``.

    Euler-Maruyama on ``m dv = (F - damping v) dt + eps e^{-decay t} dW``,
    ``dx = v dt``, with the dry-friction rule applied to the momentum of each
    step, so friction can stop a block but never reverse it (a stuck block
    leaves only when its impulse beats the threshold). ``device`` must be ``"cpu"``, as in :func:`first_order`.
    """
    _check_cpu(device)
    mu_fwd, mu_back, eps = _cells(mu_fwd=mu_fwd, mu_back=mu_back, eps=eps)
    k, dt, pull, average_last = float(k), float(dt), float(pull), float(average_last)  # the defaults too
    mass, damping, decay = float(mass), float(damping), float(decay)
    if dt * damping >= mass:
        raise ValueError(f"dt * damping must be < mass for a stable step; got {dt * damping!r}")

    def step(state, noise, t):
        x, v = state
        kick = eps * np.exp(-decay * t) * np.sqrt(dt) * noise
        momentum = mass * v + dt * (spring_forces(x, k, pull) - damping * v) + kick
        v = dry_friction(momentum, mu_fwd * dt, mu_back * dt) / mass
        return x + dt * v, v

    return _run(step, True, mu_fwd.shape, n_blocks, steps, replicas, average_last, record_every, seed,
                pull, dt, "second-order chain")


@validate_params({"mu": Array(), "eps": Array(), "asymmetry": Real(low=0.0)})
def chain_diagram(mu, eps, *, asymmetry: float = 1.5, **chain) -> ChainRun:
    """The (friction, noise) grid in ONE simulation: rows ``mu_fwd = mu``, ``mu_back = asymmetry * mu``; columns ``eps``.

    Extra keywords go to :func:`first_order`. The result has cell shape (len(mu), len(eps)).
    """
    asymmetry = float(asymmetry)  # the default too
    mu = np.asarray(mu, dtype=np.float64).reshape(-1, 1)
    eps = np.asarray(eps, dtype=np.float64).reshape(1, -1)
    return first_order(mu, asymmetry * mu, eps, **chain)


@validate_params({"mu": Array(), **_CLOSED_FORM})
def profile_no_noise(mu, *, n_blocks: int = 7, k: float = 1.0, pull: float = 1.0) -> np.ndarray:
    """Stationary elongations (..., L+1) of a chain pulled from rest without noise (closed form).

    The ``n`` springs nearest the pull stretch in steps of ``mu/k``
    (``k (d_{l+1} - d_l) = mu`` on every moved block) and sum to ``y``; the
    blocks further back never move (``d = 0``). ``n`` is the smallest count for
    which the first stuck block feels no more than ``mu``
    (``k d_first <= mu``), or ``L+1`` when every block moves.
    """
    mu = np.asarray(mu, dtype=np.float64)
    if np.any(mu < 0):
        raise ValueError(f"mu must be finite and >= 0; got {value_text(mu)}, with minimum {float(np.min(mu))!r}")
    k, pull = float(k), float(pull)  # the defaults too
    ratio = mu[..., None] / k
    counts = np.arange(1, n_blocks + 2)                                   # n = 1 .. L+1 moving springs
    first = pull / counts - ratio * (counts - 1) / 2                      # (..., L+1): d of the first moving spring
    settles = first <= ratio
    settles[..., -1] = True                                               # every block moves: no stuck neighbour
    n = counts[np.argmax(settles, axis=-1)]                               # smallest consistent n
    d_first = pull / n - mu / k * (n - 1) / 2
    j = np.arange(n_blocks + 1)                                           # spring index 0..L
    offset = j - (n_blocks + 1 - n)[..., None]
    return np.where(offset >= 0, d_first[..., None] + (mu / k)[..., None] * offset, 0.0)


@validate_params({"mu_fwd": Array(), "mu_back": Array(), **_CLOSED_FORM})
def profile_large_noise(mu_fwd, mu_back, *, n_blocks: int = 7, k: float = 1.0, pull: float = 1.0) -> np.ndarray:
    """Mean stationary elongations (..., L+1) when the noise dwarfs the friction (closed form).

    For ``eps >> mu`` the mean drift of a block is ``F + (mu_back - mu_fwd)/2``
    (errors ``O(mu^3 / eps^2)``), so every mean spring force settles at
    ``-(mu_back - mu_fwd)/2``: ``d_l`` falls linearly with slope
    ``-(mu_back - mu_fwd)/(2k)`` and sums to ``y``. Symmetric friction gives
    the uniform ``y/(L+1)``.
    """
    mu_fwd, mu_back = np.asarray(mu_fwd, dtype=np.float64), np.asarray(mu_back, dtype=np.float64)
    for name, value in (("mu_fwd", mu_fwd), ("mu_back", mu_back)):
        if np.any(value < 0):
            raise ValueError(f"{name} must be finite and >= 0; got {value_text(value)}, with minimum {float(np.min(value))!r}")
    k, pull = float(k), float(pull)  # the defaults too
    slope = -(mu_back - mu_fwd) / (2 * k)
    j = np.arange(n_blocks + 1) - n_blocks / 2                           # centred spring index
    return pull / (n_blocks + 1) + slope[..., None] * j


def _check_cpu(device) -> None:
    if device != "cpu":
        raise ValueError(f"device must be 'cpu' for the spring-block chain (a numpy simulation of a few blocks, "
                         f"which a GPU would not speed up); got {device!r}")


def _cells(**values):
    arrays = {}
    for name, value in values.items():
        array = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} must be finite; got {value_text(value, array)}, with non-finite entries")
        if np.any(array < 0):
            raise ValueError(f"{name} must be >= 0 (friction and noise are magnitudes); got minimum {array.min()!r}")
        arrays[name] = array
    try:
        shape = np.broadcast_shapes(*(a.shape for a in arrays.values()))
    except ValueError as err:
        shapes = {name: a.shape for name, a in arrays.items()}
        raise ValueError(f"mu_fwd, mu_back and eps must broadcast to one cell shape; got {shapes}") from err
    return tuple(np.broadcast_to(a, shape)[..., None, None] for a in arrays.values())


def _run(step, with_velocity, cell_shape, n_blocks, steps, replicas, average_last, record_every, seed, pull, dt,
         desc):
    """Advance every cell and replica together; average the elongations over the last steps (arguments checked by the callers)."""
    shape = tuple(cell_shape[:-2]) + (replicas, n_blocks)
    rng = np.random.default_rng(seed)
    x = np.zeros(shape)
    state = (x, np.zeros(shape)) if with_velocity else x
    start = steps - int(round(average_last * steps))
    total, count = np.zeros(shape), 0
    times, kept = [0.0], [x.mean(-2)]
    chunk = 256
    for first in progress(range(0, steps, chunk), desc=desc):
        noise_block = rng.standard_normal((min(chunk, steps - first),) + shape)
        for i, noise in enumerate(noise_block):
            t = (first + i) * dt
            state = step(state, noise, t)
            x = state[0] if with_velocity else state
            n = first + i + 1
            if n > start:
                total += x
                count += 1
            if record_every and n % record_every == 0:
                times.append(n * dt)
                kept.append(x.mean(-2))
    x_avg = total / count if count else x
    d_mean = elongations(x_avg, pull).mean(-2)
    return ChainRun(times=np.array(times), records={"x_mean": np.stack(kept)}, x=x, d_mean=d_mean, pull=pull)
