"""The one-hidden-layer linear network on one-dimensional data (Xu & Ziyin 2025).

The network is f(x) = gamma u.w x with u, w in R^d (first and second layer),
trained on data with E[x^2] = 1 and c = E[xy]. Up to a constant the loss is
L = (F - c)^2 / 2 with the output slope F = gamma u.w, and gradient flow with
layer-wise learning rates reads

    du/dt = eta_u r w,   dw/dt = eta_w r u,   r = gamma (c - F).

In the rescaled weights U = u / sqrt(eta_u), W = w / sqrt(eta_w) both layers
move at the same rate k r with k = sqrt(eta_u eta_w), so the sum S = U + W
grows by a factor g(t) and the difference D = U - W shrinks by 1/g(t). The
matrix U U^T - W W^T = (S0 D0^T + D0 S0^T) / 2 is conserved, and h = g^2 obeys

    dh/dt = 2 gamma k (c h - P h^2 + M),   F = P h - M / h,
    P = gamma k |S0|^2 / 4,   M = gamma k |D0|^2 / 4,

the Riccati equation solved by :func:`learning_dynamics.linear.product_growth`
(rate gamma k, target c). The solution therefore depends on the init only
through the overlaps |u0|^2, |w0|^2 and u0.w0, which is why every function
below is vectorised over any grid of inits and hyperparameters at once.

Observables (NTK K = gamma^2 (eta_w |u|^2 + eta_u |w|^2), dF/dt = -K (F - c);
alignment zeta = cos(u, w)) and the statistics of the three mechanisms
(alignment, disalignment, rescaling) are read off h(t). :func:`gd_runs`
trains the same network by gradient descent through the batched trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .linear import conserved_matrix, growth_fixed_point, product_growth
from . import sweep
from .ode import integrate
from .results import Run
from .train import train
from .validation import (Array, Device, InstanceOf, Integer, Optional, Real, Seed, check_array, check_generator, check_int,
                         check_positive, validate_params, value_text)

OBSERVABLES = ("F", "loss", "norm_u", "norm_w", "cos", "angle", "ntk", "g")
MECHANISMS = ("kernel", "alignment", "disalignment", "rescaling")

# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------


# What the public entry points declare (see :func:`learning_dynamics.validation.validate_params`).
_HYPER = {"gamma": Array(positive=True), "c": Array(), "eta_u": Array(positive=True), "eta_w": Array(positive=True)}
_OVERLAPS = {"uu": Array(), "ww": Array(), "uw": Array(), "cross": Optional(Array())}
_INIT = {"u0": Array(), "w0": Array()}
_RATE = Real(low=0.0, strict_low=True)
_STATS = InstanceOf(dict, description="a dict of statistics (mechanism_stats)")


def _hyper(gamma, c, eta_u, eta_w):
    """Validated float64 arrays of the hyperparameters."""
    return (check_array("gamma (output scale)", gamma, positive=True), check_array("c = E[xy]", c),
            check_array("eta_u (learning rate of u)", eta_u, positive=True),
            check_array("eta_w (learning rate of w)", eta_w, positive=True))


def _init_vectors(u0, w0):
    u0, w0 = np.asarray(u0, dtype=np.float64), np.asarray(w0, dtype=np.float64)
    if u0.ndim == 0 or u0.shape != w0.shape:
        raise ValueError(f"u0 and w0 must be arrays of equal shape (..., width); got {u0.shape} and {w0.shape}")
    check_int("width (last dimension of u0 and w0)", u0.shape[-1], low=1)
    return check_array("u0", u0), check_array("w0", w0)


def angle(u, w):
    """The angle between u and w along the last axis, 2 atan2(|u^ - w^|, |u^ + w^|).

    Accurate to rounding even when u and w are nearly parallel (where
    arccos of the cosine loses half the digits). numpy or torch.
    """
    if isinstance(u, torch.Tensor):
        uh, wh = u / u.norm(dim=-1, keepdim=True), w / w.norm(dim=-1, keepdim=True)
        return 2 * torch.atan2((uh - wh).norm(dim=-1), (uh + wh).norm(dim=-1))
    uh, wh = u / np.linalg.norm(u, axis=-1, keepdims=True), w / np.linalg.norm(w, axis=-1, keepdims=True)
    return 2 * np.arctan2(np.linalg.norm(uh - wh, axis=-1), np.linalg.norm(uh + wh, axis=-1))


@validate_params(_INIT)
def overlaps(u0, w0):
    """(|u0|^2, |w0|^2, u0.w0, |u0||w0| sin(angle)) along the last axis: all the solution needs."""
    u0, w0 = _init_vectors(u0, w0)
    uu, ww, uw = (u0 * u0).sum(-1), (w0 * w0).sum(-1), (u0 * w0).sum(-1)
    with np.errstate(invalid="ignore"):
        cross = np.where((uu > 0) & (ww > 0), np.sqrt(uu * ww) * np.sin(angle(u0, w0)), 0.0)
    return uu, ww, uw, cross


# ---------------------------------------------------------------------------
# The exact solution
# ---------------------------------------------------------------------------


def _prepare(uu, ww, uw, cross, gamma, c, eta_u, eta_w):
    """Validate and broadcast the overlaps and hyperparameters (with a trailing time axis of 1)."""
    gamma, c, eta_u, eta_w = _hyper(gamma, c, eta_u, eta_w)
    uu, ww, uw = (check_array(n, v) for n, v in (("|u0|^2", uu), ("|w0|^2", ww), ("u0.w0", uw)))
    if np.any(uu < 0) or np.any(ww < 0):
        raise ValueError(f"|u0|^2 and |w0|^2 must be >= 0; got uu = {value_text(uu)} and ww = {value_text(ww)}, "
                         f"with minimum {min(float(np.min(uu)), float(np.min(ww)))!r}")
    if np.any(uw**2 > uu * ww * (1 + 1e-12) + 1e-300):
        raise ValueError(f"u0.w0 must satisfy (u0.w0)^2 <= |u0|^2 |w0|^2 (Cauchy-Schwarz); got uw = {value_text(uw)} "
                         f"with (u0.w0)^2 - |u0|^2 |w0|^2 up to {float(np.max(uw**2 - uu * ww))!r}")
    if cross is None:
        cross = np.sqrt(np.maximum(uu * ww - uw**2, 0.0))
    args = np.broadcast_arrays(uu, ww, uw, check_array("cross", cross), gamma, c, eta_u, eta_w)
    uu, ww, uw, cross, gamma, c, eta_u, eta_w = (x[..., None] for x in args)
    return (*_riccati(uu, ww, uw, gamma, c, eta_u, eta_w), cross, gamma, c, eta_u, eta_w)


def _riccati(uu, ww, uw, gamma, c, eta_u, eta_w):
    """|S0|^2, |D0|^2, S0.D0, k and the (plus, minus, rate) of the h equation."""
    k = np.sqrt(eta_u * eta_w)
    a0, b0, c0 = uu / eta_u + ww / eta_w + 2 * uw / k, uu / eta_u + ww / eta_w - 2 * uw / k, uu / eta_u - ww / eta_w
    a0, b0 = np.maximum(a0, 0.0), np.maximum(b0, 0.0)  # rounding of |S0|^2, |D0|^2 at exact (anti)alignment
    return a0, b0, c0, k, gamma * k * a0 / 4, gamma * k * b0 / 4, gamma * k


def _growth(t, plus, minus, target, rate):
    """h(t) for every case, including the empty growing direction and c < 0.

    For c < 0 the roles of S and D swap (flip w -> -w), so h -> 1/h with
    plus and minus exchanged. If the direction that should grow is empty
    (plus = 0, e.g. a zero init) the equation is linear:
    dh/dt = 2 rate (s h + M).
    """
    flip = target < 0
    p, m, s = np.where(flip, minus, plus), np.where(flip, plus, minus), np.abs(target)
    live = p > 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        h = product_growth(t, np.where(live, p, 1.0), m, s, rate)
        # balanced start (M = 0) towards s = 0: dh/dt = -2 rate P h^2
        h = np.where((m == 0) & (s == 0), 1.0 / (1.0 + 2 * rate * p * t), h)
        s_safe = np.where(s > 0, s, 1.0)
        dead = np.where(s > 0, (1 + m / s_safe) * np.exp(2 * rate * s * t) - m / s_safe, 1 + 2 * rate * m * t)
        h = np.where(live, h, dead)
        return np.where(flip, 1.0 / h, h)


def _fixed_point(plus, minus, target):
    """h(inf): the positive root of P h^2 - c h - M = 0 (with the same flips as :func:`_growth`)."""
    flip = target < 0
    p, m, s = np.where(flip, minus, plus), np.where(flip, plus, minus), np.abs(target)
    live = p > 0
    with np.errstate(divide="ignore"):
        h = np.where(live, growth_fixed_point(np.where(live, p, 1.0), m, s), np.inf)
        h = np.where(live | (m > 0) | (s > 0), h, 1.0)  # a zero init never moves
        return np.where(flip, 1.0 / h, h)


def _observables(h, a0, b0, c0, k, cross, gamma, c, eta_u, eta_w):
    """Every observable from h = g^2 and the init invariants (all broadcast)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        a = np.where(a0 == 0, 0.0, a0 * h)  # |S|^2
        b = np.where(b0 == 0, 0.0, b0 / h)  # |D|^2
        uu = np.maximum(eta_u * (a + b + 2 * c0) / 4, 0.0)
        ww = np.maximum(eta_w * (a + b - 2 * c0) / 4, 0.0)
        uw = k * (a - b) / 4
        f = gamma * uw
        return {
            "F": f,
            "loss": 0.5 * (f - c) ** 2,
            "norm_u": np.sqrt(uu),
            "norm_w": np.sqrt(ww),
            "cos": uw / np.sqrt(uu * ww),
            "angle": np.arctan2(cross, uw),
            "ntk": gamma**2 * k**2 * (a + b) / 2,
            "g": np.sqrt(h),
        }


@validate_params({"t": Array(ndim=1), **_OVERLAPS, **_HYPER})
def solve_overlaps(t, uu, ww, uw, cross=None, *, gamma, c, eta_u=1.0, eta_w=1.0):
    """The exact gradient-flow trajectory from init overlaps |u0|^2, |w0|^2, u0.w0.

    ``uu, ww, uw, gamma, c, eta_u, eta_w`` (and ``cross`` = |u0||w0| sin of the
    initial angle, conserved; computed from the overlaps if not given) broadcast
    to a batch shape; ``t`` is a 1-D array of times >= 0. Returns a dict of
    arrays of shape batch + (len(t),) with keys :data:`OBSERVABLES`.
    """
    if np.any(t < 0):
        raise ValueError(f"t must be >= 0 everywhere; got {value_text(t)}, with minimum {float(np.min(t))!r}")
    a0, b0, c0, k, plus, minus, rate, cross, gamma, c, eta_u, eta_w = _prepare(uu, ww, uw, cross, gamma, c, eta_u, eta_w)
    return _observables(_growth(t, plus, minus, c, rate), a0, b0, c0, k, cross, gamma, c, eta_u, eta_w)


@validate_params({"t": Array(ndim=1), **_INIT, **_HYPER})
def solve(t, u0, w0, *, gamma, c, eta_u=1.0, eta_w=1.0):
    """The exact trajectory from initial weights u0, w0 of shape (..., width); see :func:`solve_overlaps`."""
    uu, ww, uw, cross = overlaps(u0, w0)
    return solve_overlaps(t, uu, ww, uw, cross, gamma=gamma, c=c, eta_u=eta_u, eta_w=eta_w)


@validate_params({**_OVERLAPS, **_HYPER})
def final_state(uu, ww, uw, cross=None, *, gamma, c, eta_u=1.0, eta_w=1.0):
    """The state at t = infinity, from the fixed point h(inf) of the quadratic P h^2 - c h - M = 0.

    Same arguments as :func:`solve_overlaps`; returns the observables with a
    trailing time axis of length 2: (t = 0, t = infinity).
    """
    a0, b0, c0, k, plus, minus, rate, cross, gamma, c, eta_u, eta_w = _prepare(uu, ww, uw, cross, gamma, c, eta_u, eta_w)
    h = np.concatenate([np.ones_like(plus), _fixed_point(plus, minus, c)], axis=-1)
    return _observables(h, a0, b0, c0, k, cross, gamma, c, eta_u, eta_w)


@validate_params({"t": Array(ndim=1), **_INIT, **_HYPER})
def weights(t, u0, w0, *, gamma, c, eta_u=1.0, eta_w=1.0):
    """u(t) and w(t) themselves, shape batch + (len(t), width): they stay in span{u0, w0}.

    u = sqrt(eta_u) (S0 g + D0 / g) / 2 and w = sqrt(eta_w) (S0 g - D0 / g) / 2.
    """
    u0, w0 = _init_vectors(u0, w0)
    g = solve(t, u0, w0, gamma=gamma, c=c, eta_u=eta_u, eta_w=eta_w)["g"][..., None]
    eta_u, eta_w = (np.broadcast_to(np.asarray(e, dtype=np.float64), u0.shape[:-1])[..., None, None] for e in (eta_u, eta_w))
    big_u, big_w = u0[..., None, :] / np.sqrt(eta_u), w0[..., None, :] / np.sqrt(eta_w)
    with np.errstate(invalid="ignore"):
        s = np.where(big_u + big_w == 0, 0.0, (big_u + big_w) * g)
        d = np.where(big_u - big_w == 0, 0.0, (big_u - big_w) / g)
    return np.sqrt(eta_u) * (s + d) / 2, np.sqrt(eta_w) * (s - d) / 2


@validate_params({"u": Array(), "w": Array(), "eta_u": Array(positive=True), "eta_w": Array(positive=True)})
def conserved(u, w, eta_u=1.0, eta_w=1.0):
    """u u^T / eta_u - w w^T / eta_w along the last axis (batched numpy), conserved by gradient flow.

    The layer-wise-rate version of :func:`learning_dynamics.linear.conserved_matrix`
    for W1 = w / sqrt(eta_w) (a column) and W2 = u^T / sqrt(eta_u) (a row).
    """
    u = torch.as_tensor(np.asarray(u, dtype=np.float64) / np.sqrt(np.asarray(eta_u, dtype=np.float64))[..., None])
    w = torch.as_tensor(np.asarray(w, dtype=np.float64) / np.sqrt(np.asarray(eta_w, dtype=np.float64))[..., None])
    return conserved_matrix(w[..., :, None], u[..., None, :]).numpy()


@validate_params({"u0": Array(), "w0": Array(), "u1": Array(), "w1": Array(), "eta_u": Array(positive=True),
                  "eta_w": Array(positive=True)})
def conserved_drift(u0, w0, u1, w1, eta_u=1.0, eta_w=1.0):
    """Frobenius norm of Q(u1, w1) - Q(u0, w0), Q = :func:`conserved`, without forming the width x width matrices.

    The difference is V^T S V with V the four rows u1, w1, u0, w0 (scaled by
    the rates) and S = diag(1, -1, -1, 1); with V^T = Q R (thin QR), its norm
    is that of the 4 x 4 matrix R S R^T. Memory O(width), where
    :func:`conserved` needs width^2 per network (800 MB at width 10,000).
    """
    root_u = np.sqrt(np.asarray(eta_u, dtype=np.float64))[..., None]
    root_w = np.sqrt(np.asarray(eta_w, dtype=np.float64))[..., None]
    rows = np.stack(np.broadcast_arrays(u1 / root_u, w1 / root_w, u0 / root_u, w0 / root_w), -1)  # (..., width, 4)
    r = np.linalg.qr(rows, mode="r")
    signs = np.array([1.0, -1.0, -1.0, 1.0])
    return np.linalg.norm((r * signs) @ np.swapaxes(r, -1, -2), axis=(-2, -1))


@validate_params({"uu": Array(), "ww": Array(), "uw": Array(), **_HYPER})
def kernel_ratio(uu, ww, uw, *, gamma, c, eta_u=1.0, eta_w=1.0):
    """K(inf)/K(0) from the invariant K^2 - 4 eta_u eta_w gamma^2 F^2 (independent of the fixed point).

    K_inf / K0 = sqrt(1 + (1 - F0^2 / c^2) / kappa^2),  kappa = K0 / (2 sqrt(eta_u eta_w) gamma |c|).
    """
    gamma, c, eta_u, eta_w = _hyper(gamma, c, eta_u, eta_w)
    k0 = gamma**2 * (eta_w * np.asarray(uu) + eta_u * np.asarray(ww))
    f0 = gamma * np.asarray(uw)
    return np.sqrt(k0**2 + 4 * eta_u * eta_w * gamma**2 * (c**2 - f0**2)) / k0


@validate_params({"t": Array(ndim=1), **_INIT, **_HYPER, "rtol": _RATE, "atol": Real(low=0.0)})
def integrate_flow(t, u0, w0, *, gamma, c, eta_u=1.0, eta_w=1.0, rtol=1e-12, atol=1e-14):
    """Numerical integration (scipy DOP853) of the 2 x width gradient-flow equations, for checks.

    A batch of networks (..., width) is integrated as one system. Returns
    u(t), w(t) of shape batch + (len(t), width).
    """
    u0, w0 = _init_vectors(u0, w0)
    gamma, c, eta_u, eta_w = (np.broadcast_to(x, u0.shape[:-1])[..., None] for x in _hyper(gamma, c, eta_u, eta_w))
    shape = u0.shape

    def rhs(z):
        u, w = z[: z.size // 2].reshape(shape), z[z.size // 2:].reshape(shape)
        r = gamma * (c - gamma * (u * w).sum(-1, keepdims=True))
        return np.concatenate([(eta_u * r * w).ravel(), (eta_w * r * u).ravel()])

    z = integrate(rhs, t, np.concatenate([u0.ravel(), w0.ravel()]), rtol=rtol, atol=atol)  # (len(t), 2 * size)
    half = z.shape[1] // 2
    u = np.moveaxis(z[:, :half].reshape((len(t),) + shape), 0, -2)
    w = np.moveaxis(z[:, half:].reshape((len(t),) + shape), 0, -2)
    return u, w


@validate_params(_HYPER)
def observables_of_weights(u, w, *, gamma, c, eta_u=1.0, eta_w=1.0):
    """The observables of :data:`OBSERVABLES` (except g) measured on weights u, w (..., width), numpy."""
    gamma, c, eta_u, eta_w = _hyper(gamma, c, eta_u, eta_w)
    uu, ww, uw = (u * u).sum(-1), (w * w).sum(-1), (u * w).sum(-1)
    f = gamma * uw
    with np.errstate(invalid="ignore", divide="ignore"):  # cos and angle are undefined (NaN) for a zero layer
        return {"F": f, "loss": 0.5 * (f - c) ** 2, "norm_u": np.sqrt(uu), "norm_w": np.sqrt(ww),
                "cos": uw / np.sqrt(uu * ww), "angle": angle(u, w), "ntk": gamma**2 * (eta_w * uu + eta_u * ww)}


# ---------------------------------------------------------------------------
# The three mechanisms
# ---------------------------------------------------------------------------


@validate_params({"traj": InstanceOf(Run, dict, description="a Run or a dict of observables")})
def mechanism_stats(traj):
    """Change statistics between the first and last time of a trajectory.

    ``traj`` is a :class:`~learning_dynamics.results.Run` (record axis first) or a dict of closed-form
    observables (:func:`solve`, :func:`final_state`; time = last axis).

    - ``alignment_change``: |cos(u, w)| at the end minus at the start
      (> 0 alignment, < 0 disalignment);
    - ``angle_change``: |angle(end) - angle(start)| in radians;
    - ``norm_change``: the larger relative change of |u| and |w|;
    - ``kernel_ratio``: K(end) / K(start).

    Each statistic is returned when ``traj`` holds what it needs (a
    nonlinear network records no angle or NTK, for instance).
    """
    if isinstance(traj, Run):
        traj = {name: traj.trajectory(name) for name in traj.records}
    first, last = (lambda x: np.asarray(x)[..., 0]), (lambda x: np.asarray(x)[..., -1])
    stats = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        if "cos" in traj:
            stats["alignment_change"] = np.abs(last(traj["cos"])) - np.abs(first(traj["cos"]))
        if "angle" in traj:
            stats["angle_change"] = np.abs(last(traj["angle"]) - first(traj["angle"]))
        if "norm_u" in traj and "norm_w" in traj:
            stats["norm_change"] = np.maximum(np.abs(last(traj["norm_u"]) / first(traj["norm_u"]) - 1),
                                              np.abs(last(traj["norm_w"]) / first(traj["norm_w"]) - 1))
        if "ntk" in traj:
            stats["kernel_ratio"] = last(traj["ntk"]) / first(traj["ntk"])
    return stats


KERNEL_TOL = 0.05  # the paper's kernel regime: the NTK changes by less than 5% (relative)


@validate_params({"stats": _STATS, "margin": Real(low=0.0), "kernel_tol": _RATE})
def clear_of_kernel_threshold(stats, *, margin=0.1, kernel_tol=KERNEL_TOL):
    """True where |K_inf/K0 - 1| is not within ``margin`` x kernel_tol of the kernel threshold.

    Near the threshold a GD run and the closed form may fall on different
    sides of it by rounding-level differences, so a check that their
    mechanisms agree counts only the points clear of it.
    """
    return np.abs(np.abs(stats["kernel_ratio"] - 1) - kernel_tol) > margin * kernel_tol


@validate_params({"stats": _STATS, "kernel_tol": _RATE, "angle_tol": _RATE})
def classify(stats, *, kernel_tol=KERNEL_TOL, angle_tol=1e-6):
    """Index into :data:`MECHANISMS` for each entry of :func:`mechanism_stats`.

    Kernel regime (the paper's definition): the NTK changes by less than
    ``kernel_tol`` (relative). Otherwise feature learning, by one of three
    mechanisms: rescaling if the angle between u and w changes by less than
    ``angle_tol``; else alignment or disalignment by the sign of the change
    of |cos(u, w)|.
    """
    kernel = np.abs(stats["kernel_ratio"] - 1) < kernel_tol
    rescaling = stats["angle_change"] < angle_tol
    aligning = stats["alignment_change"] > 0
    return np.where(kernel, 0, np.where(rescaling, 3, np.where(aligning, 1, 2)))


@validate_params({"n_seeds": Integer(low=1), "seed": Integer(low=0), "d_max": Optional(Integer(low=1))})
def gaussian_init(widths, n_seeds, seed, *, d_max=None):
    """Standard Gaussian u0, w0 for each width and seed, zero-padded to ``d_max`` columns.

    Returns arrays (len(widths) * n_seeds, d_max), width-major. Padded
    neurons have u_i = w_i = 0 and stay there under gradient descent, so
    networks of every width train in one batch.
    """
    widths = [check_int("width", int(d), low=1) for d in np.atleast_1d(widths)]
    d_max = check_int("d_max", d_max if d_max is not None else max(widths), low=max(widths))
    rng = np.random.default_rng(seed)
    u0, w0 = np.zeros((len(widths) * n_seeds, d_max)), np.zeros((len(widths) * n_seeds, d_max))
    for i, d in enumerate(widths):
        rows = slice(i * n_seeds, (i + 1) * n_seeds)
        u0[rows, :d] = rng.standard_normal((n_seeds, d))
        w0[rows, :d] = rng.standard_normal((n_seeds, d))
    return u0, w0


@validate_params({"n_seeds": Integer(low=1), "seed": Integer(low=0)})
def gaussian_overlaps(widths, n_seeds, seed):
    """Overlaps of two independent standard Gaussian vectors in R^d, drawn exactly without the vectors.

    |u|^2 ~ chi^2_d; given u, u.w ~ N(0, |u|^2); the part of w orthogonal to
    u has squared norm ~ chi^2_(d-1). Returns (|u|^2, |w|^2, u.w,
    |u||w| sin angle) of shape (len(widths) * n_seeds,), width-major, so the
    closed form reaches any width at the cost of three draws per network.
    """
    widths = np.repeat([check_int("width", int(d), low=1) for d in np.atleast_1d(widths)], n_seeds)
    rng = np.random.default_rng(seed)
    uu = rng.chisquare(widths)
    uw = np.sqrt(uu) * rng.standard_normal(widths.size)
    perp = np.where(widths > 1, rng.chisquare(np.maximum(widths - 1, 1)), 0.0)
    return uu, uw**2 / uu + perp, uw, np.sqrt(uu * perp)


@dataclass(frozen=True)
class Inits:
    """A batch of networks to solve and train together: initial weights and hyperparameters.

    ``u0, w0`` are (n, d_max), zero-padded beyond each network's ``width``;
    the rest are (n,). Add two batches with ``+``.
    """

    u0: np.ndarray
    w0: np.ndarray
    gamma: np.ndarray
    c: np.ndarray
    eta_u: np.ndarray
    eta_w: np.ndarray
    width: np.ndarray
    label: tuple

    def __post_init__(self):
        n = self.u0.shape[0]
        for name in ("gamma", "c", "eta_u", "eta_w", "width"):
            object.__setattr__(self, name, np.broadcast_to(np.asarray(getattr(self, name), dtype=np.float64), (n,)).copy())
        object.__setattr__(self, "label", tuple(np.broadcast_to(np.asarray(self.label, dtype=object), (n,))))
        _init_vectors(self.u0, self.w0)
        _hyper(self.gamma, self.c, self.eta_u, self.eta_w)

    def __len__(self):
        return self.u0.shape[0]

    def __add__(self, other):
        d = max(self.u0.shape[1], other.u0.shape[1])
        pad = lambda x: np.pad(x, ((0, 0), (0, d - x.shape[1])))  # noqa: E731
        return Inits(np.concatenate([pad(self.u0), pad(other.u0)]), np.concatenate([pad(self.w0), pad(other.w0)]),
                     *(np.concatenate([getattr(self, f), getattr(other, f)])
                       for f in ("gamma", "c", "eta_u", "eta_w", "width")), self.label + other.label)

    @staticmethod
    def concat(batches):
        """One batch from a list of batches (in order)."""
        batches = list(batches)
        if not batches:
            raise ValueError(f"batches must hold at least one Inits; got {batches!r}")
        out = batches[0]
        for other in batches[1:]:
            out = out + other
        return out

    def hyper(self):
        """gamma, c, eta_u, eta_w as keyword arguments for :func:`solve`, :func:`gd_runs`, ..."""
        return {"gamma": self.gamma, "c": self.c, "eta_u": self.eta_u, "eta_w": self.eta_w}

    def overlaps(self):
        """(|u0|^2, |w0|^2, u0.w0, |u0||w0| sin angle) of every network."""
        return overlaps(self.u0, self.w0)

    def mask(self, label):
        """Boolean mask of the networks with this label."""
        return np.array([lab == label for lab in self.label])

    def select(self, mask):
        """The networks flagged by a boolean ``mask`` (for example ``mask("alignment")``), in order."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(self),) or not mask.any():
            raise ValueError(f"mask must flag at least one of the {len(self)} networks; got {value_text(mask)}")
        return Inits(self.u0[mask], self.w0[mask], *(getattr(self, f)[mask] for f in ("gamma", "c", "eta_u", "eta_w", "width")),
                     tuple(np.array(self.label, dtype=object)[mask]))

    def on_clock(self, ntk):
        """The same networks with both learning rates scaled so that max(K(0), K(inf)) = ``ntk``.

        Scaling eta_u and eta_w together only rescales time, so the
        trajectories are unchanged; this puts every network on one clock
        (and bounds lr * K, the size of a GD step, for every network).
        """
        ntk = check_positive("ntk", ntk)
        kernel = final_state(*self.overlaps(), **self.hyper())["ntk"]
        factor = ntk / kernel.max(axis=-1)
        return Inits(self.u0, self.w0, self.gamma, self.c, self.eta_u * factor, self.eta_w * factor, self.width, self.label)


def _embed(vectors_by_width, d_max):
    out = np.zeros((len(vectors_by_width), d_max))
    for i, v in enumerate(vectors_by_width):
        out[i, : v.size] = v
    return out


@validate_params({"n_seeds": Integer(low=1), "a": Real(), "b": Real(), "c": Array(), "eta_ratio": _RATE,
                  "seed": Integer(low=0), "label": Optional(InstanceOf(str))})
def scaled_inits(widths, n_seeds, *, a, b, c=1.0, eta_ratio=1.0, seed=0, label=None):
    """Gaussian inits with gamma = d^-a and sigma^2 = d^-b (the paper's width scalings).

    a = 1/2, b = 0 is the NTK parametrisation; a = 1, b = 0 the mean-field
    one. ``eta_ratio`` = eta_u / eta_w (with eta_u eta_w = 1).
    """
    widths = np.atleast_1d(widths)
    z_u, z_w = gaussian_init(widths, n_seeds, seed)
    d = np.repeat(widths, n_seeds).astype(np.float64)
    sigma = d ** (-b / 2)
    return Inits(sigma[:, None] * z_u, sigma[:, None] * z_w, d**-a, c, np.sqrt(eta_ratio), 1 / np.sqrt(eta_ratio),
                 d, label or f"a={a:g}, b={b:g}")


def pair_with_overlaps(rng, d, norm_u, norm_w, cos):
    """Random directions u, w in R^d (d >= 2) with exactly |u| = norm_u, |w| = norm_w and cos(u, w) = cos."""
    e1, e2 = np.linalg.qr(rng.standard_normal((d, 2)))[0].T
    return norm_u * e1, norm_w * (cos * e1 + np.sqrt(1 - cos**2) * e2)


@validate_params({"seed": Integer(low=0)})
def prototype_inits(widths, rescaling_widths, seed=0):
    """Inits of the three mechanisms, in the mean-field scaling gamma = 1/d, eta = d.

    Alignment and disalignment at each of ``widths`` (d >= 2), rescaling at
    each of ``rescaling_widths`` (at d = 1 every init is a rescaling one).
    The flow depends on an init only through |u0|, |w0| and u0 . w0, so each
    prototype fixes these at the typical values of its random recipe and
    draws only the directions: the mechanism is the intended one at every
    seed, instead of at most of them (a width-10 draw can land anywhere).

    - ``alignment``: small init, |u0| = |w0| = 0.1 sqrt(d) with the typical
      random overlap cos = 1/sqrt(d), target c = 1: F0 << c;
    - ``disalignment``: pre-aligned u0 = v + 0.3 xi, w0 = v + 0.3 xi' in the
      large-d limit (|u0|^2 = |w0|^2 = 1.09 d, cos = 1/1.09) that overshoots
      the target c = 0.2: F0 > c;
    - ``rescaling``: parallel init u0 = s_u v, w0 = s_w v (|v|^2 = d), c = 1,
      with (s_u, s_w) cycling through (0.1, 0.3), (0.3, 0.1), (0.2, 0.2);
    - ``lazy alignment`` (one network at the first of ``widths``):
      eta_u = 100 eta_w with a small u0 (|u0| = 0.01 sqrt(d)), |w0| = sqrt(d),
      cos = 1/sqrt(d), c = 1: u aligns with w almost without changing the NTK.
    """
    widths = [check_int("width", int(d), low=2) for d in np.atleast_1d(widths)]
    rescaling_widths = [check_int("width", int(d), low=1) for d in np.atleast_1d(rescaling_widths)]
    rng = np.random.default_rng(seed)
    d_max = max(widths + rescaling_widths)
    batches = []
    for name, c in (("alignment", 1.0), ("disalignment", 0.2), ("rescaling", 1.0)):
        us, ws = [], []
        sizes = rescaling_widths if name == "rescaling" else widths
        for n, d in enumerate(sizes):
            if name == "alignment":
                u, w = pair_with_overlaps(rng, d, 0.1 * np.sqrt(d), 0.1 * np.sqrt(d), 1 / np.sqrt(d))
            elif name == "disalignment":
                u, w = pair_with_overlaps(rng, d, np.sqrt(1.09 * d), np.sqrt(1.09 * d), 1 / 1.09)
            else:
                v = rng.standard_normal(d)
                v *= np.sqrt(d) / np.linalg.norm(v)
                s_u, s_w = ((0.1, 0.3), (0.3, 0.1), (0.2, 0.2))[n % 3]
                u, w = s_u * v, s_w * v
            us.append(u), ws.append(w)
        d = np.array(sizes, dtype=np.float64)
        batches.append(Inits(_embed(us, d_max), _embed(ws, d_max), 1 / d, c, d, d, d, name))
    d = widths[0]
    u, w = pair_with_overlaps(rng, d, 0.01 * np.sqrt(d), np.sqrt(d), 1 / np.sqrt(d))
    lazy = Inits(_embed([u], d_max), _embed([w], d_max), 1 / d, 1.0, 10.0 * d, d / 10.0, d, "lazy alignment")
    return batches[0] + batches[1] + batches[2] + lazy


@validate_params({"a": Array(), "b": Array(), "width": Integer(low=1), "e": Array(), "c": Array(), "seed": Integer(low=0)})
def exponent_diagram(a, b, width, *, e=0.0, c=1.0, seed=0):
    """Closed-form mechanism statistics over a grid of scaling exponents, in one vectorised call.

    Output scale gamma = width^-a, init variance sigma^2 = width^-b and
    learning-rate ratio eta_u / eta_w = width^e (with eta_u eta_w = 1), with
    one Gaussian draw of (u0, w0) shared by every grid point (common random
    numbers). ``a``, ``b`` and ``e`` broadcast. Returns
    :func:`mechanism_stats` of :func:`final_state` (t = 0 against
    t = infinity), plus ``kappa`` = K0 / (2 sqrt(eta_u eta_w) gamma |c|) and
    ``hidden_norm_change`` = | |u_inf| / |u_0| - 1 |, the relative change of the
    first layer (the hidden representation u x). The kernel regime is
    kappa >> 1, i.e. a + b < 1 + |e| / 2.
    """
    e = np.asarray(e, dtype=np.float64)  # the default too
    uu, ww, uw, cross = (x[0] for x in gaussian_overlaps([width], 1, seed))
    gamma, var, ratio = float(width) ** -a, float(width) ** -b, float(width) ** e
    eta_u, eta_w = np.sqrt(ratio), 1 / np.sqrt(ratio)
    end = final_state(var * uu, var * ww, var * uw, var * cross, gamma=gamma, c=c, eta_u=eta_u, eta_w=eta_w)
    stats = mechanism_stats(end)
    stats["kappa"] = end["ntk"][..., 0] / (2 * gamma * np.abs(c))
    stats["hidden_norm_change"] = np.abs(end["norm_u"][..., -1] / end["norm_u"][..., 0] - 1)
    return stats


@validate_params({"scale": Array(positive=True), "zeta0": Array(), "c": Array()})
def mechanism_map(scale, zeta0, *, c=1.0):
    """Closed-form end state over the output scale and the initial alignment (balanced inits).

    ``scale`` = gamma |u0||w0| / |c| and ``zeta0`` = cos(u0, w0) (broadcast;
    zeta0 c >= 0). The init is balanced (|u0|^2/eta_u = |w0|^2/eta_w), where
    kappa = scale. The alignment change depends on (scale, zeta0) alone for
    ANY init: zeta(inf) = 1 / sqrt(1 + scale^2 (1 - zeta0^2)); so does the
    sign of the mechanism, F0 / c = scale zeta0 < 1 (alignment) or > 1
    (disalignment), with rescaling on zeta0 = 1. Returns
    :func:`mechanism_stats` of :func:`final_state`.
    """
    if np.any(np.abs(zeta0) > 1):
        raise ValueError(f"zeta0 must lie in [-1, 1] (a cosine); got {value_text(zeta0)}, with |zeta0| up to "
                         f"{float(np.max(np.abs(zeta0)))!r}")
    c = np.asarray(c, dtype=np.float64)  # the default too
    norm2 = scale * np.abs(c)  # gamma = 1, eta_u = eta_w = 1, |u0| = |w0|
    return mechanism_stats(final_state(norm2, norm2, norm2 * zeta0, norm2 * np.sqrt(1 - zeta0**2), gamma=1.0, c=c))


# ---------------------------------------------------------------------------
# Gradient descent, batched over networks
# ---------------------------------------------------------------------------


def network_loss(params, gamma_k, c):
    """Loss in the rescaled weights U = u / sqrt(eta_u), W = w / sqrt(eta_w), for one network or a stack.

    F = gamma u.w = gamma sqrt(eta_u eta_w) U.W; L = (F - c)^2 / 2 is the loss
    E[(f - y)^2] / 2 of any 1-D data set with E[x^2] = 1 and E[xy] = c, up to
    a constant. Plain GD on (U, W) with step lr is GD on (u, w) with the
    layer-wise steps lr eta_u and lr eta_w.
    """
    f = gamma_k * (params["U"] * params["W"]).sum(-1)
    return 0.5 * (f - c) ** 2


def _map_networks(run_part, n, hyper, client, chunks, desc):
    """A 1-D network runner in chunks of networks (:func:`learning_dynamics.sweep.map_runs`).

    ``run_part(index, hyper)`` trains the networks ``index`` with their rows of (gamma, c, eta_u, eta_w) as keywords.
    """
    rows = [np.broadcast_to(h, (n,)) for h in _hyper(*hyper)]

    def part(index):
        return run_part(index, dict(zip(("gamma", "c", "eta_u", "eta_w"), (h[index] for h in rows))))
    return sweep.map_runs(part, n, client=client, chunks=chunks, desc=desc)


@validate_params({**_INIT, **_HYPER, "lr": _RATE, "steps": Integer(low=1), "record_every": Integer(low=1), "device": Device(),
                  "desc": InstanceOf(str), "chunks": Optional(Integer(low=1))})
def gd_runs(u0, w0, *, gamma, c, eta_u=1.0, eta_w=1.0, lr, steps, record_every=1, device="cpu", desc="GD, 1-D linear net",
            client=None, chunks=None):
    """Full-batch GD of every network (rows of u0, w0) in one batched run.

    Layer-wise learning rates enter by the reparametrisation of
    :func:`network_loss`, so time is t = lr * step for every network.
    Returns a :class:`~learning_dynamics.results.Run` recording the observables of :data:`OBSERVABLES`
    (except g), shape (records, networks), with the final ``u`` and ``w`` in
    ``final``. With a ``client`` (:func:`learning_dynamics.sweep.client`) or
    ``chunks`` the networks run in chunks (:func:`learning_dynamics.sweep.map_runs`),
    with the same result: each network's run depends on its own init only.
    """
    u0, w0 = _init_vectors(u0, w0)
    if u0.ndim != 2:
        raise ValueError(f"u0 and w0 must have shape (networks, width); got {u0.shape}")
    n = u0.shape[0]
    if client or chunks is not None:
        return _map_networks(lambda i, hyper: gd_runs(u0[i], w0[i], **hyper, lr=lr, steps=steps, record_every=record_every,
                                                      device=device, desc=desc),
                             n, (gamma, c, eta_u, eta_w), client, chunks, desc)
    gamma, c, eta_u, eta_w = (torch.as_tensor(np.broadcast_to(x, (n,)).copy(), device=device)
                              for x in _hyper(gamma, c, eta_u, eta_w))
    root_u, root_w = eta_u.sqrt()[:, None], eta_w.sqrt()[:, None]
    params = {"U": torch.as_tensor(u0, device=device) / root_u, "W": torch.as_tensor(w0, device=device) / root_w}

    def record(p):
        u, w = p["U"] * root_u, p["W"] * root_w
        uu, ww, uw = (u * u).sum(-1), (w * w).sum(-1), (u * w).sum(-1)
        return {"F": gamma * uw, "norm_u": uu.sqrt(), "norm_w": ww.sqrt(), "cos": uw / (uu * ww).sqrt(),
                "angle": angle(u, w), "ntk": gamma**2 * (eta_w * uu + eta_u * ww)}

    result = train(network_loss, params, data=(gamma * (eta_u * eta_w).sqrt(), c), steps=steps, lr=lr,
                   record=record, record_every=record_every, desc=desc)
    result.final = {"u": (result.params["U"] * root_u).cpu().numpy(), "w": (result.params["W"] * root_w).cpu().numpy()}
    return result


# ---------------------------------------------------------------------------
# The paper's Fig. 1: the same 1-D network with a nonlinear activation
# ---------------------------------------------------------------------------

# name -> (sigma, slope of its odd part at 0). On data symmetric in x the
# network f(x) = gamma w.sigma(u x) / slope is, for small pre-activations, the
# linear network gamma u.w x: relu(z) = z / 2 + |z| / 2, swish(z) = z / 2 + O(z^2).
ACTIVATIONS = {
    "linear": (lambda z: z, 1.0),
    "relu": (torch.relu, 0.5),
    "leaky_relu": (torch.nn.functional.leaky_relu, (1.0 + 0.01) / 2),
    "swish": (torch.nn.functional.silu, 0.5),
    "sigmoid": (torch.sigmoid, 0.25),
}


@validate_params({"n_samples": Integer(low=1), "seed": Seed()})
def symmetric_line_data(n_samples, seed=0) -> np.ndarray:
    """1-D inputs x and -x for ``n_samples`` standard normal draws, scaled to mean(x^2) = 1 (targets y = c x).

    With E[x^2] = 1 the linear network's loss is (F - c)^2 / 2 up to a constant, as in :func:`network_loss`;
    the symmetry makes every even part of an activation orthogonal to the target.
    """
    x = np.random.default_rng(seed).standard_normal(n_samples)
    x = np.concatenate([x, -x])
    return x / np.sqrt(np.mean(x**2))


@validate_params({"width": Integer(low=2), "n_draws": Integer(low=1), "seed": Integer(low=0), "clock_ntk": _RATE})
def activation_batch(width, n_draws, *, seed, clock_ntk):
    """The networks of the paper's Fig. 1: (inits, batch, names).

    ``inits`` holds the alignment and disalignment prototypes (:func:`prototype_inits`) of ``n_draws`` draws
    (seeds seed, seed + 1, ...) on the clock ``clock_ntk`` (:meth:`Inits.on_clock`); ``batch`` repeats them once per
    activation of :data:`ACTIVATIONS` (activation-major) and ``names`` gives each network's activation, ready for
    :func:`activation_runs`.
    """
    drawn = Inits.concat([prototype_inits([width], [1], seed=seed + k) for k in range(n_draws)])
    inits = drawn.select(drawn.mask("alignment") | drawn.mask("disalignment")).on_clock(clock_ntk)
    names = [a for a in ACTIVATIONS for _ in range(len(inits))]
    return inits, Inits.concat([inits] * len(ACTIVATIONS)), names


def activation_loss(params, x, gamma_k, c, root_u, root_w, groups):
    """Loss mean_n (f(x_n) - c x_n)^2 / 2 of stacked networks f(x) = gamma w.sigma(u x) / slope, in U, W.

    ``groups`` maps an activation name to its networks (a slice or an index); gamma_k is gamma / slope.
    """
    u, w = params["U"] * root_u, params["W"] * root_w
    pre = u[..., None] * x[:, None, :]                                    # (n, d, samples)
    hidden = torch.empty_like(pre)
    for name, index in groups.items():
        hidden[index] = ACTIVATIONS[name][0](pre[index])
    f = gamma_k[:, None] * (hidden * w[..., None]).sum(-2)
    return 0.5 * ((f - c[:, None] * x) ** 2).mean(-1)


@validate_params({**_INIT, **_HYPER, "x": Array(ndim=1), "lr": _RATE, "steps": Integer(low=1),
                  "record_every": Integer(low=1), "device": Device(), "chunks": Optional(Integer(low=1))})
def activation_runs(u0, w0, activations, x, *, gamma, c, eta_u=1.0, eta_w=1.0, lr, steps, record_every=1, device="cpu",
                    client=None, chunks=None):
    """Full-batch GD of f(x) = gamma w.sigma(u x) / slope (:data:`ACTIVATIONS`) on inputs x, targets c x.

    One network per row of u0, w0, with ``activations`` naming each one's sigma (one name for all).
    The layer-wise rates and the clock t = lr x step are those of :func:`gd_runs`, which the ``linear``
    activation reproduces on data with mean(x^2) = 1 (test). Records ``cos``, ``norm_u``, ``norm_w`` and the loss.
    With a ``client`` or ``chunks`` the networks run in chunks (:func:`learning_dynamics.sweep.map_runs`), as in
    :func:`gd_runs`. The paper's Fig. 1 (three_mechanisms chapter, fig-three-mechanisms-activations).
    """
    u0, w0 = _init_vectors(u0, w0)
    n = u0.shape[0]
    names = [activations] * n if isinstance(activations, str) else list(activations)
    unknown = sorted(set(names) - set(ACTIVATIONS))
    if len(names) != n or unknown:
        raise ValueError(f"activations must be one of {sorted(ACTIVATIONS)} or {n} of them (one per network); "
                         f"got {value_text(activations)}")
    if client or chunks is not None:
        return _map_networks(lambda i, hyper: activation_runs(u0[i], w0[i], [names[k] for k in i], x, **hyper, lr=lr, steps=steps,
                                                              record_every=record_every, device=device),
                             n, (gamma, c, eta_u, eta_w), client, chunks, "GD, 1-D net with activations")
    groups = {}
    for a in dict.fromkeys(names):
        index = [i for i, b in enumerate(names) if b == a]
        contiguous = index == list(range(index[0], index[-1] + 1))
        groups[a] = slice(index[0], index[-1] + 1) if contiguous else torch.as_tensor(index, device=device)
    slope = torch.as_tensor([ACTIVATIONS[a][1] for a in names], dtype=torch.float64, device=device)
    gamma, c, eta_u, eta_w = (torch.as_tensor(np.broadcast_to(v, (n,)).copy(), device=device)
                              for v in _hyper(gamma, c, eta_u, eta_w))
    root_u, root_w = eta_u.sqrt()[:, None], eta_w.sqrt()[:, None]
    params = {"U": torch.as_tensor(u0, device=device) / root_u, "W": torch.as_tensor(w0, device=device) / root_w}
    x = torch.as_tensor(x, dtype=torch.float64, device=device)

    def record(p):
        u, w = p["U"] * root_u, p["W"] * root_w
        return {"cos": (u * w).sum(-1) / (u.norm(dim=-1) * w.norm(dim=-1)), "norm_u": u.norm(dim=-1), "norm_w": w.norm(dim=-1)}

    loss = lambda p, *batch: activation_loss(p, *batch, groups)  # noqa: E731
    return train(loss, params, data=(x.expand(n, -1), gamma / slope, c, root_u, root_w), steps=steps, lr=lr,
                 record=record, record_every=record_every, desc="GD, 1-D net with activations")


# ---------------------------------------------------------------------------
# Width scaling
# ---------------------------------------------------------------------------


@validate_params({"x": Array(ndim=1, positive=True), "y": Array(ndim=1)})
def power_law_exponent(x, y):
    """Least-squares slope of log|y| against log x (the scaling exponent)."""
    if x.size < 2 or x.shape != y.shape:
        raise ValueError(f"x and y must hold the same number (>= 2) of points to fit an exponent; got shapes {x.shape} "
                         f"and {y.shape}")
    return float(np.polyfit(np.log(x), np.log(np.abs(y)), 1)[0])


# ---------------------------------------------------------------------------
# The same statistics in a nonlinear network: a two-layer tanh net on digits
# ---------------------------------------------------------------------------

TANH_SETTINGS = ("kernel", "alignment", "disalignment")


@validate_params({"n_samples": Integer(low=1), "seed": Integer(low=0)})
def digit_parity_data(n_samples, seed=0):
    """scikit-learn digits as a 1-output task: standardised pixels x (N, 64), y = +1 even / -1 odd digit."""
    from .tasks import digits

    x, labels, _, _ = digits.load(n_samples, seed=seed, dtype=torch.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    return x, torch.where(labels % 2 == 0, 1.0, -1.0).to(torch.float64)


def tanh_loss(params, x, y, gamma):
    """Two-layer tanh network f(x) = gamma w . tanh(U x / sqrt(n_in)); loss mean (f - y)^2 / 2.

    Written once for one network or for stacked ones (leading network dimension).

    U (width x n_in) is the first layer and w (width) the second: for
    n_in = 1 and tanh -> identity this is the linear network above.
    """
    hidden = torch.tanh(x @ params["U"].transpose(-1, -2) / x.shape[-1] ** 0.5)
    f = torch.as_tensor(gamma).unsqueeze(-1) * (hidden @ params["w"].unsqueeze(-1)).squeeze(-1)
    return 0.5 * ((f - y) ** 2).mean(-1)


def layer_alignment(u, w):
    """zeta = |w^T U| / (|w| |U|_F) for stacked U (..., width, n_in) and w (..., width).

    It lies in [0, 1] and equals |cos(u, w)| when n_in = 1.
    """
    lib_norm = (lambda a: a.norm(dim=-1)) if isinstance(u, torch.Tensor) else (lambda a: np.linalg.norm(a, axis=-1))
    product = (w[..., None, :] @ u)[..., 0, :]
    return lib_norm(product) / (lib_norm(w) * lib_norm(u.reshape(*u.shape[:-2], -1)))


@validate_params({"width": Integer(low=1), "seed": Seed()})
def tanh_inits(x, y, width, *, seed=0):
    """Initial weights, output scales and learning-rate multipliers of the three settings.

    - ``kernel``: NTK parametrisation, U and w standard Gaussian, gamma = d^-1/2;
    - ``alignment``: mean-field, small init (0.05 x Gaussian), gamma = 1/d,
      learning rate x d;
    - ``disalignment``: NTK scale but pre-aligned, U = w0 a^T + 0.5 noise with
      a the least-squares direction of the data, and w = 3 w0, so the output
      starts about ten times too large.

    Returns (params, gamma, lr_scale) stacked over :data:`TANH_SETTINGS`.
    """
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    n_in = x.shape[-1]
    gen = check_generator(seed)
    normal = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    direction = torch.linalg.lstsq(x, y[:, None], driver="gelsd").solution[:, 0]
    direction = direction / direction.norm() * n_in**0.5
    w_shared = normal(width)
    u = torch.stack([normal(width, n_in), 0.05 * normal(width, n_in),
                     w_shared[:, None] * direction[None, :] + 0.5 * normal(width, n_in)])
    w = torch.stack([normal(width), 0.05 * normal(width), 3.0 * w_shared])
    gamma = torch.tensor([width**-0.5, 1.0 / width, width**-0.5], dtype=torch.float64)
    lr_scale = torch.tensor([1.0, float(width), 1.0], dtype=torch.float64)
    return {"U": u, "w": w}, gamma, lr_scale


@validate_params({"width": Integer(low=1), "lr": _RATE, "steps": Integer(low=1), "record_every": Integer(low=1),
                  "seed": Seed(), "device": Device()})
def tanh_runs(x, y, width, *, lr, steps, record_every=1, seed=0, device="cpu"):
    """Full-batch GD of the three settings of :func:`tanh_inits` in one batched run.

    Returns a :class:`~learning_dynamics.results.Run` (t = lr x step) recording, per setting (columns in
    the order of :data:`TANH_SETTINGS`), the loss, ``cos`` = zeta of
    :func:`layer_alignment`, ``norm_u`` = |U|_F and ``norm_w`` = |w|.
    """
    params, gamma, lr_scale = tanh_inits(x, y, width, seed=seed)
    params = {k: v.to(device) for k, v in params.items()}
    x, y = torch.as_tensor(x, dtype=torch.float64, device=device), torch.as_tensor(y, dtype=torch.float64, device=device)
    n = gamma.numel()

    def record(p):
        return {"cos": layer_alignment(p["U"], p["w"]), "norm_u": p["U"].flatten(1).norm(dim=-1), "norm_w": p["w"].norm(dim=-1)}

    result = train(tanh_loss, params, data=(x.expand(n, *x.shape), y.expand(n, *y.shape), gamma.to(device)),
                   steps=steps, lr=lr * lr_scale.to(device), record=record, record_every=record_every,
                   desc="tanh net on digits")
    result.times = result.steps * lr  # the settings' rates are lr x their scale
    return result


# ---------------------------------------------------------------------------
# A deep nonlinear network on digits, over output scale and init scale
# ---------------------------------------------------------------------------


def deep_forward(params, x, gamma):
    """f(x) = gamma w . h_L with h_l = tanh(W_l h_{l-1} / sqrt(fan_in)) and h_0 = x; one network or stacked ones."""
    h = x
    for layer in range(sum(1 for name in params if name.startswith("W"))):
        h = torch.tanh(h @ params[f"W{layer}"].transpose(-1, -2) / h.shape[-1] ** 0.5)
    return torch.as_tensor(gamma).unsqueeze(-1) * (h @ params["w"].unsqueeze(-1)).squeeze(-1)


def deep_loss(params, x, y, gamma):
    """mean (f - y)^2 / 2 of :func:`deep_forward`, per network."""
    return 0.5 * ((deep_forward(params, x, gamma) - y) ** 2).mean(-1)


def ntk_trace(params, x, gamma) -> torch.Tensor:
    """The NTK's mean diagonal, mean_n |df(x_n)/dtheta|^2, of every stacked :func:`deep_forward` network: shape (n,)."""
    from torch.func import grad, vmap

    one = lambda p, xn, g: deep_forward(p, xn[None], g)[0]  # noqa: E731
    per_sample = vmap(vmap(grad(one), in_dims=(None, 0, None)), in_dims=(0, None, 0))(params, x, gamma)
    return sum((g**2).flatten(2).sum(-1) for g in per_sample.values()).mean(-1)


@validate_params({"output_exponents": Array(ndim=1), "init_scales": Array(ndim=1, positive=True), "n_seeds": Integer(low=1),
                  "n_in": Integer(low=1), "width": Integer(low=1), "depth": Integer(low=1), "seed": Seed(), "device": Device()})
def deep_inits(output_exponents, init_scales, n_seeds, *, n_in, width, depth, seed=0, device="cpu"):
    """Stacked deep tanh networks on the grid (a, sigma, seed), a-major: weights sigma x N(0, 1), gamma = width^-a.

    Returns (params, gamma, sigma), one row per network.
    """
    a, sigma, _ = (g.ravel() for g in np.meshgrid(output_exponents, init_scales, np.arange(n_seeds), indexing="ij"))
    n, gen = len(a), check_generator(seed)
    scale = torch.as_tensor(sigma, dtype=torch.float64)
    normal = lambda *shape: torch.randn(n, *shape, generator=gen, dtype=torch.float64)  # noqa: E731
    params = {f"W{layer}": normal(width, n_in if layer == 0 else width) for layer in range(depth)}
    params["w"] = normal(width)
    params = {k: (v * scale.reshape((n,) + (1,) * (v.ndim - 1))).to(device) for k, v in params.items()}
    return params, torch.as_tensor(float(width) ** -a, dtype=torch.float64, device=device), scale.to(device)


@validate_params({"params": InstanceOf(dict, description="a dict of stacked tensors (deep_inits)"), "lr": _RATE,
                  "steps": Integer(low=1), "record_every": Integer(low=1), "n_probe": Integer(low=1),
                  "chunks": Optional(Integer(low=1))})
def deep_runs(params, gamma, x, y, *, lr, steps, record_every=1, n_probe=64, client=None, chunks=None):
    """Full-batch GD of stacked :func:`deep_forward` networks; network i steps lr / (gamma_i^2 width).

    The step keeps the NTK's scale the same at every output scale (it is lr at the NTK scaling gamma = width^-1/2).
    Records ``cos`` (:func:`layer_alignment` of the last hidden layer and the read-out), the norm of every
    layer (``norm_W0``, ..., ``norm_w``) and the loss; ``final`` holds ``ntk`` (:func:`ntk_trace` on the first
    ``n_probe`` samples) at the start and the end, shape (networks, 2), and ``output_rms`` at the start.
    With a ``client`` or ``chunks``, chunks of networks (:func:`learning_dynamics.sweep.map_runs`).
    three_mechanisms chapter, fig-three-mechanisms-deep.
    """
    n = gamma.shape[0]
    if client or chunks is not None:
        def part(index):
            idx = torch.as_tensor(index)
            return deep_runs({k: v[idx] for k, v in params.items()}, gamma[idx], x, y, lr=lr, steps=steps,
                             record_every=record_every, n_probe=n_probe)
        return sweep.map_runs(part, n, client=client, chunks=chunks, desc="deep tanh nets on digits")
    device = gamma.device
    x, y = torch.as_tensor(x, dtype=torch.float64, device=device), torch.as_tensor(y, dtype=torch.float64, device=device)
    width = params["w"].shape[-1]
    last = f"W{sum(1 for k in params if k.startswith('W')) - 1}"

    def record(p):
        return {"cos": layer_alignment(p[last], p["w"]), **{f"norm_{k}": v.flatten(1).norm(dim=-1) for k, v in p.items()}}

    probe = x[:n_probe]
    ntk0 = ntk_trace(params, probe, gamma)
    rms0 = deep_forward(params, x, gamma).pow(2).mean(-1).sqrt()
    run = train(deep_loss, params, data=(x.expand(n, *x.shape), y.expand(n, *y.shape), gamma), steps=steps,
                lr=lr / (gamma**2 * width), record=record, record_every=record_every, desc="deep tanh nets on digits")
    run.times = run.steps * lr
    run.final = {"ntk": torch.stack([ntk0, ntk_trace(run.params, probe, gamma)], -1).cpu().numpy(),
                 "output_rms": rms0.cpu().numpy()}
    return run
