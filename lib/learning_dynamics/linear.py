"""Two-layer and deep linear networks: closed-form mode dynamics and kernels.

The workhorse is :func:`product_growth`. Take one mode of a two-layer
linear model (or the scalar toy of the grokking section, or the
one-hidden-layer network of Xu & Ziyin): the sum of the two layers grows
by a factor g(t) and their difference shrinks by 1/g(t). With h = g^2
and a product u = P h - M / h, gradient flow gives the Riccati equation

    dh/dt = 2 r h (s - u) = 2 r (s h - P h^2 + M),

which has the exact solution used below. The sigmoid of a small balanced
start (M = 0), the exponential of the lazy limit (|C| >> s) and the
growth factor gamma_+ of the grokking toy (h at t = infinity) are all
special cases, so they share one implementation.

Everything is float64 numpy and broadcasts over its arguments.
"""

from __future__ import annotations

import numpy as np
import torch

from .ode import integrate
from . import sweep
from .results import Run
from .threads import small_problem
from .train import progress, train
from .validation import Array, Boolean, Device, Integer, Optional, Real, Seed, check_generator, validate_params, value_text
from .validation import Callable as AnyCallable

# What the public entry points declare (see :func:`learning_dynamics.validation.validate_params`).
_ARRAY = Array()
_POSITIVE = Array(positive=True)
_RATE = Real(low=0.0, strict_low=True)


def _minimum(name: str, value: np.ndarray, allowed: str) -> str:
    """``"<name> must be <allowed>; got <value>, with minimum <min>"``: the message of an element-wise bound."""
    return f"{name} must be {allowed}; got {value_text(value)}, with minimum {float(np.min(value))!r}"

# ---------------------------------------------------------------------------
# One mode: the exact solution of the two-layer product dynamics
# ---------------------------------------------------------------------------


@validate_params({"u0": _ARRAY, "imbalance": _ARRAY})
def plus_minus_from_product(u0, imbalance):
    """(P, M) with P - M = u0 and 16 P M = C^2, for product u0 and C = a0^2 - b0^2."""
    u0 = np.asarray(u0, dtype=np.float64)
    c = np.asarray(imbalance, dtype=np.float64)
    root = np.sqrt(u0**2 + c**2 / 4.0)
    plus = (u0 + root) / 2.0
    return plus, plus - u0


@validate_params({"plus": _POSITIVE, "minus": _ARRAY, "target": _ARRAY})
def growth_fixed_point(plus, minus, target):
    """h(inf) = g(inf)^2: the positive root of P h^2 - s h - M = 0 (``plus`` > 0: a component that can grow)."""
    plus, minus, target = (np.asarray(a, dtype=np.float64) for a in (plus, minus, target))
    return (target + np.sqrt(target**2 + 4.0 * plus * minus)) / (2.0 * plus)


@validate_params({"t": _ARRAY, "plus": _POSITIVE, "minus": _ARRAY, "target": _ARRAY, "rate": _POSITIVE})
def product_growth(t, plus, minus, target, rate=1.0):
    """h(t) = g(t)^2 for dh/dt = 2 rate (s h - P h^2 + M), h(0) = 1.

    The product is u(t) = P h - M / h; the sum of the layers scales with
    sqrt(h) and their difference with 1/sqrt(h).
    """
    t = np.asarray(t, dtype=np.float64)
    plus, minus, target, rate = (np.asarray(a, dtype=np.float64) for a in (plus, minus, target, rate))
    if np.any(minus < 0):
        raise ValueError(_minimum("minus", minus, ">= 0 everywhere (it is a squared norm)"))
    if np.any(t < 0):
        raise ValueError(_minimum("t", t, ">= 0 everywhere"))
    h_plus = growth_fixed_point(plus, minus, target)
    h_minus = -minus / (plus * h_plus)  # product of the roots is -M/P
    ratio = (1.0 - h_plus) / (1.0 - h_minus)
    q = ratio * np.exp(-2.0 * rate * plus * (h_plus - h_minus) * t)
    return (h_plus - h_minus * q) / (1.0 - q)


@validate_params({"t": _ARRAY, "target": _ARRAY, "u0": _ARRAY, "imbalance": _ARRAY, "rate": _POSITIVE})
def mode_product(t, target, u0, imbalance=0.0, rate=1.0):
    """u(t) of one two-layer mode: du/dt = rate sqrt(C^2 + 4u^2) (s - u).

    ``imbalance`` is C = a0^2 - b0^2 (lambda for matrices); C = 0 is the
    balanced sigmoid, |C| >> s the lazy exponential.
    """
    u0 = np.asarray(u0, dtype=np.float64)
    c = np.asarray(imbalance, dtype=np.float64)
    if np.any((c == 0) & (u0 <= 0)):
        raise ValueError(f"u0 must be > 0 where imbalance = 0 (a balanced mode at u0 <= 0 never grows); got u0 = "
                         f"{value_text(u0)} with imbalance = {value_text(c)}")
    plus, minus = plus_minus_from_product(u0, c)
    h = product_growth(t, plus, minus, target, rate)
    return plus * h - minus / h


@validate_params({"t": _ARRAY, "target": _ARRAY, "u0": _POSITIVE, "rate": _POSITIVE})
def sigmoid_mode(t, target, u0, rate=1.0):
    """Balanced small start: u/s = 1 / (1 + (s/u0 - 1) exp(-2 s rate t)) (Saxe et al. 2014)."""
    t, target, u0, rate = (np.asarray(a, dtype=np.float64) for a in (t, target, u0, rate))
    return target / (1.0 + (target / u0 - 1.0) * np.exp(-2.0 * target * rate * t))


@validate_params({"a0": _ARRAY, "b0": _ARRAY, "target": _ARRAY, "rate": _POSITIVE, "rtol": _RATE, "atol": Real(low=0.0)})
def layerwise_flow(t, a0, b0, target, rate=1.0, *, rtol: float = 1e-12, atol: float = 1e-14):
    """The two layers of u = a b under gradient flow, integrated numerically (:func:`learning_dynamics.ode.integrate`).

    da/dt = -rate b (a b - s), db/dt = -rate a (a b - s), for a vector of
    modes at once; the check of :func:`sigmoid_mode`, which solves the product
    alone. Returns a(t), b(t) of shape (len(t), modes).
    """
    a0, b0, target, rate = (np.atleast_1d(x) for x in np.broadcast_arrays(*(np.asarray(x, dtype=np.float64)
                                                                             for x in (a0, b0, target, rate))))

    def rhs(z):
        a, b = z
        r = a * b - target
        return np.stack([-rate * b * r, -rate * a * r])

    z = integrate(rhs, t, np.stack([a0, b0]), rtol=rtol, atol=atol)
    return z[:, 0], z[:, 1]


@validate_params({"target": _ARRAY, "u0": _POSITIVE, "rate": _POSITIVE})
def sigmoid_half_time(target, u0, rate=1.0):
    """Time at which a balanced mode reaches half its target: ln(s/u0 - 1) / (2 s rate)."""
    target, u0, rate = (np.asarray(a, dtype=np.float64) for a in (target, u0, rate))
    return np.log(target / u0 - 1.0) / (2.0 * target * rate)


@validate_params({"t": _ARRAY, "target": _ARRAY, "rate": _POSITIVE, "theta0": _ARRAY})
def one_layer_mode(t, target, rate=1.0, theta0=0.0):
    """A linear (one-layer) parameter: theta(t) = s - (s - theta0) exp(-rate t)."""
    t, target, rate, theta0 = (np.asarray(a, dtype=np.float64) for a in (t, target, rate, theta0))
    return target - (target - theta0) * np.exp(-rate * t)


@validate_params({"rate": _POSITIVE})
def one_layer_half_time(rate=1.0):
    """Half time of a linear parameter from zero: ln 2 / rate (no delay)."""
    return np.log(2.0) / np.asarray(rate, dtype=np.float64)


@validate_params({"sigma0": _POSITIVE, "s0": _ARRAY, "target": _ARRAY})
def gamma_plus(sigma0, s0, target):
    """Growth factor of every (a_i + b_i)^2 in the width-Z toy (Nam et al. 2025, Sec. 7).

    gamma_+ = (S + sqrt(Sigma0^2 - S0^2 + S^2)) / (Sigma0 + S0), with
    Sigma0 = sum(a^2 + b^2) / 2Z and S0 = sum(a b) / Z. It is h(inf) of
    :func:`product_growth` with P = (Sigma0 + S0)/2, M = (Sigma0 - S0)/2.
    """
    sigma0, s0 = np.asarray(sigma0, dtype=np.float64), np.asarray(s0, dtype=np.float64)
    excess = np.abs(s0) - sigma0
    if np.any(excess > 0):
        raise ValueError(f"|S0| must be <= Sigma0 (by Cauchy-Schwarz); got s0 = {value_text(s0)} and sigma0 = "
                         f"{value_text(sigma0)}, with |S0| - Sigma0 up to {float(np.max(excess))!r}")
    return growth_fixed_point((sigma0 + s0) / 2.0, (sigma0 - s0) / 2.0, target)


# ---------------------------------------------------------------------------
# Matrices: conserved quantities, lambda-balanced init, NTK and kernel distance
# ---------------------------------------------------------------------------


def conserved_matrix(w1, w2):
    """W2^T W2 - W1 W1^T, conserved by gradient flow on any loss of W2 W1 (batched)."""
    return w2.transpose(-1, -2) @ w2 - w1 @ w1.transpose(-1, -2)


def lambda_balanced_init(lam, product_singular_values, u, vt, r):
    """W1 = R S1 V^T, W2 = U S2 R^T with S2^2 - S1^2 = lambda and S1 S2 = product singular values.

    Square case (in = hidden = out), batched over leading dimensions of the
    arguments. Then W2^T W2 - W1 W1^T = lambda I exactly.
    """
    lam = torch.as_tensor(lam, dtype=u.dtype)[..., None]
    s = torch.as_tensor(product_singular_values, dtype=u.dtype)
    root = torch.sqrt(lam**2 + 4 * s**2)
    s2 = torch.sqrt((root + lam) / 2)
    s1 = torch.sqrt((root - lam) / 2)
    w1 = r @ torch.diag_embed(s1) @ vt
    w2 = u @ torch.diag_embed(s2) @ r.transpose(-1, -2)
    return w1, w2


def ntk_from_grams(w1tw1, w2w2t, x):
    """NTK of f(x) = W2 W1 x from W1^T W1 and W2 W2^T: I (x) X^T W1^T W1 X + W2 W2^T (x) X^T X.

    Batched over leading dimensions of the grams; ``x`` is (in x N). Returns
    (..., out N, out N).
    """
    gram1 = x.transpose(-1, -2) @ w1tw1 @ x
    gram0 = (x.transpose(-1, -2) @ x).expand(gram1.shape)
    eye = torch.eye(w2w2t.shape[-1], dtype=x.dtype, device=x.device).expand(w2w2t.shape)
    return _kron(eye, gram1) + _kron(w2w2t, gram0)


def ntk_two_layer(w1, w2, x):
    """NTK of f(x) = W2 W1 x on inputs X, batched over the weights' leading dimensions."""
    return ntk_from_grams(w1.transpose(-1, -2) @ w1, w2 @ w2.transpose(-1, -2), x)


def kernel_distance(k0, k1):
    """1 - <K0, K1>_F / (|K0|_F |K1|_F), batched (works for torch and numpy)."""
    inner = (k0 * k1).sum(axis=(-1, -2))
    norm0 = (k0 * k0).sum(axis=(-1, -2)) ** 0.5
    norm1 = (k1 * k1).sum(axis=(-1, -2)) ** 0.5
    return 1.0 - inner / (norm0 * norm1)


def _kron(a, b):
    """Batched Kronecker product of (..., m, n) and (..., p, q)."""
    *batch, m, n = a.shape
    p, q = b.shape[-2:]
    return (a[..., :, None, :, None] * b[..., None, :, None, :]).reshape(*batch, m * p, n * q)


def aligned_layer_grams(t, lam, target_svals, u0, u, v):
    """W1^T W1 and W2 W2^T in closed form for a lambda-balanced init aligned with the target.

    Mode i starts at product ``u0[i]`` and follows :func:`mode_product` with
    imbalance lambda towards ``target_svals[i]``; the layer singular values
    follow from S2^2 - S1^2 = lambda and S1 S2 = u_i(t), so
    W1^T W1 = V diag(S1^2) V^T and W2 W2^T = U diag(S2^2) U^T, where U and V
    are the target's singular vectors. ``t`` and ``lam`` broadcast; the
    result has shape broadcast(t, lam) + (d, d).
    """
    t, lam = np.broadcast_arrays(np.asarray(t, dtype=np.float64), np.asarray(lam, dtype=np.float64))
    prod = mode_product(t[..., None], target_svals, u0, lam[..., None])
    root = np.sqrt(lam[..., None] ** 2 + 4 * prod**2)
    s1_sq, s2_sq = (root - lam[..., None]) / 2, (root + lam[..., None]) / 2
    w1tw1 = np.einsum("ik,...k,jk->...ij", v, s1_sq, v)
    w2w2t = np.einsum("ik,...k,jk->...ij", u, s2_sq, u)
    return w1tw1, w2w2t


@validate_params({"x": Array(ndim=2)})
def whiten(x):
    """Centre and whiten columns-as-samples data X (d x N) so that X X^T / N = I."""
    d, n = x.shape
    if n < d + 1:
        raise ValueError(f"x must have a number of samples (columns) >= d + 1 = {d + 1} to be whitened; got shape {x.shape}")
    x = x - x.mean(axis=1, keepdims=True)
    cov = x @ x.T / n
    evals, evecs = np.linalg.eigh(cov)
    return evecs @ np.diag(evals**-0.5) @ evecs.T @ x


# ---------------------------------------------------------------------------
# Simulations: losses trained in batches through `train`
# ---------------------------------------------------------------------------
# Each loss is written so that it works for ONE network and, unchanged, for
# stacked networks (a leading network dimension on every argument), where it
# returns one loss per network. Beside each, ``*_grad_and_value`` gives its
# gradient in closed form with the loss (the counterpart of
# ``torch.func.grad_and_value``), checked against autograd in the tests. The
# runs below train with it (``gradients=...``): for
# these tiny models a step is a handful of small products, several times
# cheaper than an autograd graph.


def diagonal_loss(params, x, y):
    """Layerwise diagonal model f = sum_k a_k b_k x_k, loss 1/2 mean (f - y)^2."""
    return 0.5 * (((x * (params["a"] * params["b"])[..., None, :]).sum(-1) - y) ** 2).mean(-1)


def diagonal_grad_and_value(params, x, y):
    """Gradient and value of :func:`diagonal_loss`: dL/dc_k = mean (f - y) x_k for c = a b, times b (for a) or a (for b)."""
    a, b = params["a"], params["b"]
    d_coef, loss = _coefficient_grad_and_value(a * b, x, y)
    return {"a": d_coef * b, "b": d_coef * a}, loss


def linear_loss(params, x, y):
    """Linear model f = sum_k theta_k x_k, loss 1/2 mean (f - y)^2."""
    return 0.5 * (((x * params["theta"][..., None, :]).sum(-1) - y) ** 2).mean(-1)


def linear_grad_and_value(params, x, y):
    """Gradient and value of :func:`linear_loss`: dL/dtheta_k = mean (f - y) x_k."""
    d_theta, loss = _coefficient_grad_and_value(params["theta"], x, y)
    return {"theta": d_theta}, loss


def _coefficient_grad_and_value(coef, x, y):
    residual = (x * coef[..., None, :]).sum(-1) - y
    return (residual[..., None] * x).mean(-2), 0.5 * (residual**2).mean(-1)


def matrix_loss(params, x, y):
    """Two-layer linear network f = W2 W1 x on columns of X, loss 1/(2N) |W2 W1 X - Y|_F^2."""
    residual = params["w2"] @ params["w1"] @ x - y
    return 0.5 * (residual**2).sum((-2, -1)) / x.shape[-1]


def matrix_grad_and_value(params, x, y):
    """Gradient and value of :func:`matrix_loss`: with R = W2 W1 X - Y, dW1 = W2^T R X^T / N and dW2 = R (W1 X)^T / N."""
    w1, w2 = params["w1"], params["w2"]
    hidden = w1 @ x
    residual = w2 @ hidden - y
    loss = 0.5 * (residual**2).sum((-2, -1)) / x.shape[-1]
    residual = residual / x.shape[-1]
    return {"w1": w2.transpose(-1, -2) @ residual @ x.transpose(-1, -2), "w2": residual @ hidden.transpose(-1, -2)}, loss


def width_toy_loss(params, target):
    """Scalar toy f = (1/Z) sum_i a_i b_i with E[x^2] = 1: loss 1/2 (f - S)^2."""
    return 0.5 * ((params["a"] * params["b"]).mean(-1) - target) ** 2


def width_toy_grad_and_value(params, target):
    """Gradient and value of :func:`width_toy_loss`: dL/da_i = (f - S) b_i / Z, and a_i for b_i."""
    a, b = params["a"], params["b"]
    error = (a * b).mean(-1) - target
    scaled = error[..., None] / a.shape[-1]
    return {"a": scaled * b, "b": scaled * a}, 0.5 * error**2


@validate_params({"sampler": AnyCallable(), "n_skills": Integer(low=1), "init": _RATE, "lr": _RATE, "steps": Integer(low=1),
                  "n_seeds": Integer(low=1), "seed": Integer(low=0), "record_every": Integer(low=1), "device": Device()})
def skill_runs(sampler, n_skills, *, init, lr, steps, n_seeds, seed, record_every, device="cpu"):
    """Online SGD of the layerwise (a_k = b_k = init) and linear (theta = 0) models on skill data.

    Returns a :class:`~learning_dynamics.results.Run` whose records ``layerwise`` (a_k b_k) and
    ``linear`` (theta_k) have shape (n_records, n_seeds, K).
    """
    shape = (n_seeds, n_skills)
    ones = torch.ones(shape, dtype=torch.float64, device=device)
    layerwise = train(
        diagonal_loss, {"a": init * ones, "b": init * ones}, data=sampler, steps=steps, lr=lr, seed=seed,
        record=lambda p: {"coef": p["a"] * p["b"]}, record_every=record_every, desc="layerwise model",
        gradients=diagonal_grad_and_value,
    )
    linear = train(
        linear_loss, {"theta": 0 * ones}, data=sampler, steps=steps, lr=lr, seed=seed + 1,
        record=lambda p: {"coef": p["theta"]}, record_every=record_every, desc="linear model",
        gradients=linear_grad_and_value,
    )
    return Run(times=layerwise.times, steps=layerwise.steps,
               records={"layerwise": layerwise.records["coef"], "linear": linear.records["coef"]})


@validate_params({"times": Array(ndim=1), "curves": _ARRAY, "level": Real()})
def crossing_times(times, curves, level):
    """First time each curve (last axis = time) crosses ``level``, linearly interpolated; NaN if never."""
    if curves.ndim < 1 or curves.shape[-1] != len(times):
        raise ValueError(f"curves must have len(times) = {len(times)} values on their last (time) axis; "
                         f"got shape {curves.shape}")
    above = curves >= level
    first = np.argmax(above, axis=-1)
    hit = above.any(axis=-1) & (first > 0)
    i = np.clip(first, 1, len(times) - 1)
    lo = np.take_along_axis(curves, (i - 1)[..., None], -1)[..., 0]
    hi = np.take_along_axis(curves, i[..., None], -1)[..., 0]
    frac = (level - lo) / np.where(hi != lo, hi - lo, 1.0)
    return np.where(hit, times[i - 1] + frac * (times[i] - times[i - 1]), np.nan)


@validate_params({"lams": Array(ndim=1), "scales": Array(ndim=1, positive=True), "seed": Seed(), "aligned": Boolean()})
def lambda_grid_init(x, y, lams, scales, *, seed, aligned=False):
    """Stacked lambda-balanced 2-2-2 inits (W1, W2) for a grid of (lambda, scale).

    Network j has W2^T W2 - W1 W1^T = lams[j] I and product singular values
    sqrt(scales[j]) (Nam et al. 2025, Fig. 6a; the authors' lambda-balanced
    init). All networks share the same random rotations (common random
    numbers), so differences between cells come from lambda and scale alone.
    With ``aligned=True`` the init shares the target's singular vectors, the
    case solved in closed form by :func:`aligned_layer_grams`.
    """
    lams = torch.as_tensor(lams, dtype=torch.float64)
    scales = torch.as_tensor(scales, dtype=torch.float64)
    if lams.shape != scales.shape:
        raise ValueError(f"lams and scales must be 1-D of equal length; got {tuple(lams.shape)} and {tuple(scales.shape)}")
    n, d = lams.numel(), x.shape[0]
    gen = check_generator(seed)
    if aligned:
        u_t, _, vt_t = np.linalg.svd(y @ x.T / x.shape[1])
        u, vt = torch.as_tensor(u_t), torch.as_tensor(vt_t)
    else:
        u, _, vt = torch.linalg.svd(torch.randn(d, d, generator=gen, dtype=torch.float64))
    r, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    svals = torch.sqrt(scales)[:, None].expand(n, d)
    return lambda_balanced_init(lams, svals, u, vt, r)


def lambda_grid_data(x, y, scales):
    """The stacked data of the grid: X for every network and Y / scale, shapes (n, d, N)."""
    scales = torch.as_tensor(scales, dtype=torch.float64)
    return torch.as_tensor(x).expand(scales.numel(), *x.shape), torch.as_tensor(y)[None] / scales[:, None, None]


@validate_params({"lams": Array(ndim=1), "scales": Array(ndim=1, positive=True), "lr": _RATE, "steps": Integer(low=1),
                  "seed": Integer(low=0), "aligned": Boolean(), "closed_form": Boolean(), "device": Device(),
                  "chunks": Optional(Integer(low=1))})
def lambda_grid_runs(x, y, lams, scales, *, lr, steps, seed, aligned=False, closed_form=True, device="cpu",
                     client=None, chunks=None):
    """Full-batch GD of 2-2-2 linear networks from :func:`lambda_grid_init`, fitting Y / scale, in one batched run.

    Returns a :class:`~learning_dynamics.results.Run` recording the layer grams ``w1tw1`` (W1^T W1) and
    ``w2w2t`` (W2 W2^T) and the ``loss`` at the start and the end, with the
    final drift of the conserved matrix as ``final["conserved"]``. The gradients are :func:`matrix_grad_and_value`'s closed
    form, or autograd's with ``closed_form=False`` (the benchmark compares them).
    With a ``client`` (:func:`learning_dynamics.sweep.client`) or ``chunks``
    the grid runs in chunks of networks (:func:`learning_dynamics.sweep.map_runs`),
    with bitwise the same result: the networks share their random rotations.
    """
    if client or chunks is not None:
        def part(index):
            return lambda_grid_runs(x, y, lams[index], scales[index], lr=lr, steps=steps, seed=seed, aligned=aligned,
                                    closed_form=closed_form, device=device)
        return sweep.map_runs(part, len(lams), client=client, chunks=chunks, desc="lambda x scale grid")
    w1, w2 = (w.to(device) for w in lambda_grid_init(x, y, lams, scales, seed=seed, aligned=aligned))
    lams = torch.as_tensor(lams, dtype=torch.float64, device=device)
    d = x.shape[0]
    xt, yt = (t.to(device) for t in lambda_grid_data(x, y, scales))
    grams = lambda p: {  # noqa: E731
        "w1tw1": p["w1"].transpose(-1, -2) @ p["w1"],
        "w2w2t": p["w2"] @ p["w2"].transpose(-1, -2),
    }
    result = train(matrix_loss, {"w1": w1, "w2": w2}, data=(xt, yt), steps=steps, lr=lr, seed=seed,
                   record=grams, record_every=steps, desc="lambda x scale grid",
                   gradients=matrix_grad_and_value if closed_form else "stacked")
    drift = conserved_matrix(result.params["w1"], result.params["w2"]) - lams[:, None, None] * torch.eye(d, device=device)
    result.final["conserved"] = drift.cpu().numpy()
    return result


@validate_params({"sigma0s": Array(ndim=1, positive=True), "width": Integer(low=1), "target": Real(), "lr": _RATE,
                  "steps": Integer(low=1), "n_seeds": Integer(low=1), "seed": Integer(low=0),
                  "record_every": Integer(low=1), "device": Device()})
def width_toy_runs(sigma0s, width, target, *, lr, steps, n_seeds, seed, record_every, device="cpu"):
    """GD on the width-Z scalar toy for each initial scale Sigma0 and seed, in one batched run.

    a_i, b_i ~ N(0, Sigma0) independently, so E[(a^2 + b^2)/2] = Sigma0. The
    step is lr * Z per neuron (mean-field scaling), so that time t = lr * step
    matches :func:`product_growth` with rate 1.

    Returns a :class:`~learning_dynamics.results.Run` recording the product f(t) and Sigma(t) per
    network, (n_records, networks), with ``final`` per-network Sigma0 and S0
    (measured at init), the per-neuron growth factors (a_i + b_i)(T) /
    (a_i + b_i)(0) of shape (networks, Z), and the largest drift of
    a_i^2 - b_i^2 per network, relative to a_i^2 + b_i^2 at init.
    """
    gen = check_generator(seed)
    scale = torch.as_tensor(np.repeat(sigma0s, n_seeds)).sqrt()[:, None]
    a = scale * torch.randn(scale.shape[0], width, generator=gen, dtype=torch.float64)
    b = scale * torch.randn(scale.shape[0], width, generator=gen, dtype=torch.float64)
    a, b = a.to(device), b.to(device)  # drawn on the CPU: every device sees the same init
    result = train(
        width_toy_loss, {"a": a, "b": b},
        data=(torch.full((a.shape[0],), float(target), dtype=torch.float64, device=device),),
        steps=steps, lr=lr * width, seed=seed, record_every=record_every, desc="width-Z toy",
        gradients=width_toy_grad_and_value,
        record=lambda p: {"product": (p["a"] * p["b"]).mean(-1), "sigma": ((p["a"] ** 2 + p["b"] ** 2) / 2).mean(-1)},
    )
    final = result.params
    result.times = result.steps * lr  # the trainer's step is lr * Z
    result.final = {
        "sigma0": ((a**2 + b**2) / 2).mean(-1).cpu().numpy(),
        "s0": (a * b).mean(-1).cpu().numpy(),
        "growth": ((final["a"] + final["b"]) / (a + b)).cpu().numpy(),
        "conserved_drift": (((final["a"] ** 2 - final["b"] ** 2) - (a**2 - b**2)).abs() / (a**2 + b**2)).amax(-1).cpu().numpy(),
    }
    return result


def grams_kernel_distance(grams_start, grams_end, x):
    """Kernel distance between two NTKs given as (W1^T W1, W2 W2^T) pairs (batched numpy or torch)."""
    xt = torch.as_tensor(x)
    k0, k1 = (ntk_from_grams(torch.as_tensor(w1tw1), torch.as_tensor(w2w2t), xt) for w1tw1, w2w2t in (grams_start, grams_end))
    return kernel_distance(k0, k1).numpy()


@validate_params({"t": _ARRAY, "lam": _ARRAY, "scale": _RATE})
def aligned_kernel_distance(t, lam, x, y, scale):
    """Closed-form kernel distance after time t for the aligned lambda-balanced 2-layer network.

    The init of :func:`lambda_grid_runs` with ``aligned=True``: product
    singular values sqrt(scale), targets Y / scale, whitened inputs X.
    """
    u, target_svals, vt = np.linalg.svd(y @ x.T / x.shape[1])
    u0 = np.full(target_svals.shape, np.sqrt(scale))
    grams = [aligned_layer_grams(time, lam, target_svals / scale, u0, u, vt.T) for time in (0.0, t)]
    return grams_kernel_distance(grams[0], grams[1], x)


# ---------------------------------------------------------------------------
# Deeper chains: one balanced mode of an L-weight-layer network (Saxe et al. 2014)
# ---------------------------------------------------------------------------


@validate_params({"u": _ARRAY, "target": _ARRAY, "u0": _ARRAY, "depth": Integer(low=2), "rate": _POSITIVE})
def deep_mode_time(u, target, u0, depth, rate=1.0):
    """Time for one balanced mode of a depth-L chain to grow from u0 to u.

    The product u of L balanced layer strengths obeys
    du/dt = rate L u^(2 - 2/L) (s - u) (Saxe et al. 2014, Eq. 15, with
    N_l - 1 = L). With v = u^(1/L) the integral is elementary:

        rate s t = [v^(2-L)/(2-L) + v^2/(2s) 2F1(1, 2/L; 1 + 2/L; v^L/s)]_{v0}^{v},

    with the first term read as ln v when L = 2 (the sigmoid of
    :func:`sigmoid_half_time`). Requires 0 < u0 <= u < s.
    """
    from scipy.special import hyp2f1

    u, target, u0, rate = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (u, target, u0, rate)))
    if np.any(target <= 0) or np.any(u0 <= 0) or np.any(u0 > u) or np.any(u >= target):
        raise ValueError(f"u, u0 and target must satisfy 0 < u0 <= u < target everywhere; got u = {value_text(u)}, "
                         f"u0 = {value_text(u0)} and target = {value_text(target)}")

    def antiderivative(x):
        v = x ** (1.0 / depth)
        first = np.log(v) if depth == 2 else v ** (2 - depth) / (2 - depth)
        return first + v**2 / (2 * target) * hyp2f1(1.0, 2.0 / depth, 1.0 + 2.0 / depth, x / target)

    return (antiderivative(u) - antiderivative(u0)) / (rate * target)


@validate_params({"t": _ARRAY, "target": _ARRAY, "u0": _ARRAY, "depth": Integer(low=2), "rate": _POSITIVE})
def deep_mode(t, target, u0, depth, rate=1.0):
    """u(t) of one balanced depth-L mode from u0 (the inverse of :func:`deep_mode_time`).

    Depth 2 is :func:`sigmoid_mode`; deeper chains invert the exact time
    integral by bisection in logit(u/s), to machine precision.
    """
    if depth == 2:
        return sigmoid_mode(t, target, u0, rate)
    t, target, u0, rate = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (t, target, u0, rate)))
    if np.any(t < 0):
        raise ValueError(_minimum("t", t, ">= 0 everywhere"))
    if np.any(target <= 0) or np.any(u0 <= 0) or np.any(u0 >= target):
        raise ValueError(f"u0 and target must satisfy 0 < u0 < target everywhere; got u0 = {value_text(u0)} and "
                         f"target = {value_text(target)}")
    lo = np.log(u0 / (target - u0))  # logit of the fraction learned
    hi = np.full_like(lo, 40.0)
    for _ in range(200):
        mid = (lo + hi) / 2
        frac = 1.0 / (1.0 + np.exp(-mid))
        u = np.maximum(target * frac, u0)
        late = deep_mode_time(np.minimum(u, np.nextafter(target, 0)), target, u0, depth, rate) > t
        hi, lo = np.where(late, mid, hi), np.where(late, lo, mid)
        if np.all(hi - lo < 1e-13):
            break
    return target / (1.0 + np.exp(-(lo + hi) / 2))


# ---------------------------------------------------------------------------
# Unwhitened inputs from a zero product (Nam et al. 2025, Fig. 6b)
# ---------------------------------------------------------------------------


@validate_params({"lams": Array(ndim=1), "in_dim": Integer(low=1), "hidden": Integer(low=2), "out_dim": Integer(low=1),
                  "init_scale": Real(low=0.0, strict_low=True), "seed": Seed()})
def zero_product_init(lams, in_dim, hidden, out_dim, *, init_scale, seed):
    """Stacked mirrored inits with W2 W1 = 0 exactly, one per lambda (the authors' ``get_lambda_unbalanced``).

    W1 = (scale + max(lambda, 0)) [A; A] and W2 = (scale + max(-lambda, 0)) [B, -B]
    with A (hidden/2 x in) and B (out x hidden/2) standard normal, shared by
    every lambda: lambda > 0 enlarges the first layer, lambda < 0 the second.
    Because the two halves of the hidden layer mirror each other, the
    product is zero, so the kernel's first-order change vanishes
    (:func:`zero_product_kernel_theory`).
    """
    if hidden % 2:
        raise ValueError(f"hidden must be even (two mirrored halves); got {hidden}")
    gen = check_generator(seed)
    a = torch.randn(hidden // 2, in_dim, generator=gen, dtype=torch.float64)
    b = torch.randn(out_dim, hidden // 2, generator=gen, dtype=torch.float64)
    lams = torch.as_tensor(lams, dtype=torch.float64)
    first = (init_scale + lams.clamp(min=0.0))[:, None, None]
    second = (init_scale + (-lams).clamp(min=0.0))[:, None, None]
    return first * torch.cat([a, a], 0), second * torch.cat([b, -b], 1)


_ZERO_PRODUCT = {"lams": Array(ndim=1), "hidden": Integer(low=2), "init_scale": Real(low=0.0, strict_low=True),
                 "lr": _RATE, "steps": Integer(low=1), "seed": Seed(), "device": Device()}


@validate_params({**_ZERO_PRODUCT, "scales": Array(ndim=1, positive=True), "chunks": Optional(Integer(low=1))})
def zero_product_runs(x, y, lams, scales, *, hidden, init_scale, lr, steps, seed, device="cpu", client=None, chunks=None):
    """Full-batch GD from :func:`zero_product_init` on Y / scale, one network per (lams[j], scales[j]).

    ``x`` (in x N) is used as given (not whitened). Returns a
    :class:`~learning_dynamics.results.Run` with ``final["kernel_distance"]``
    between the NTKs at the start and the end, and the ``loss`` records.
    With a ``client`` or ``chunks`` the grid runs in chunks through
    :func:`learning_dynamics.sweep.map_runs`, with bitwise the same result.
    """
    if client or chunks is not None:
        def part(index):
            return zero_product_runs(x, y, lams[index], scales[index], hidden=hidden, init_scale=init_scale, lr=lr,
                                     steps=steps, seed=seed, device=device)
        return sweep.map_runs(part, len(lams), client=client, chunks=chunks, desc="zero-product grid")
    if np.shape(lams) != np.shape(scales):
        raise ValueError(f"lams and scales must be 1-D of equal length; got {np.shape(lams)} and {np.shape(scales)}")
    w1, w2 = (w.to(device) for w in zero_product_init(lams, x.shape[0], hidden, y.shape[0], init_scale=init_scale,
                                                      seed=seed))
    xt, yt = (t.to(device) for t in lambda_grid_data(x, y, scales))
    result = train(matrix_loss, {"w1": w1, "w2": w2}, data=(xt, yt), steps=steps, lr=lr, seed=seed,
                   record_every=steps, desc="zero-product grid", gradients=matrix_grad_and_value)
    xd = xt[0]
    k0, k1 = ntk_two_layer(w1, w2, xd), ntk_two_layer(result.params["w1"], result.params["w2"], xd)
    result.final["kernel_distance"] = kernel_distance(k0, k1).cpu().numpy()
    return result


@validate_params({**_ZERO_PRODUCT, "scales": Array(ndim=1, positive=True)})
def zero_product_kernel_theory(x, y, lams, scales, *, hidden, init_scale, lr, steps, seed, device="cpu"):
    """The lazy limit of :func:`zero_product_runs`: its kernel distance to second order in 1 / scale.

    With eps = 1 / scale, expand the weights as W = W^(0) + eps W^(1) + eps^2 W^(2)
    and the GD map order by order. W^(1) follows the linearised dynamics
    (the fixed-kernel, "lazy" model); W^(2) is driven by products of first
    orders. From any zero product, W1^(0)^T W1^(1) is proportional to
    (W2 W1)^T = 0, and likewise W2^(0) W2^(1)^T, so the kernel's first-order
    change vanishes and the kernel distance falls as scale^-4, not scale^-2. The expansion is independent of the
    scale, so it runs once per lambda (``steps`` GD steps of the order-1
    and order-2 recursions), and the kernel distance is then evaluated for
    every ``scales``: the result has shape (len(lams), len(scales)).
    Exact as scale -> infinity; where it departs from GD, the feedback
    between the layers (the rich regime) has set in.
    """
    w1, w2 = (w.to(device) for w in zero_product_init(lams, x.shape[0], hidden, y.shape[0], init_scale=init_scale,
                                                      seed=seed))
    xd = torch.as_tensor(x, dtype=torch.float64, device=device)
    yd = torch.as_tensor(y, dtype=torch.float64, device=device)
    n = xd.shape[-1]
    xxt, yxt = xd @ xd.T / n, yd @ xd.T / n  # the GD map needs the data only through these
    w1t, w2t = w1.transpose(-1, -2), w2.transpose(-1, -2)
    u1, v1, u2, v2 = (torch.zeros_like(w) for w in (w1, w2, w1, w2))  # first and second orders of W1, W2
    with small_problem(w1.numel() + w2.numel(), device):
        for _ in progress(range(steps), desc="second-order lazy theory"):
            r1 = (w2 @ u1 + v1 @ w1) @ xxt - yxt  # R1 X^T / N
            r2 = (w2 @ u2 + v2 @ w1 + v1 @ u1) @ xxt  # R2 X^T / N
            u1, v1, u2, v2 = (u1 - lr * (w2t @ r1), v1 - lr * (r1 @ w1t),
                              u2 - lr * (w2t @ r2 + v1.transpose(-1, -2) @ r1),
                              v2 - lr * (r2 @ w1t + r1 @ u1.transpose(-1, -2)))
    first, second = (u1, v1), (u2, v2)
    eps = (1.0 / torch.as_tensor(np.asarray(scales, dtype=np.float64), device=device))[None, :, None, None]
    weights = [w0[:, None] + eps * w1_[:, None] + eps**2 * w2_[:, None] for w0, w1_, w2_ in zip((w1, w2), first, second)]
    k0 = ntk_two_layer(w1, w2, xd)[:, None]
    return kernel_distance(k0, ntk_two_layer(weights[0], weights[1], xd)).cpu().numpy()


# ---------------------------------------------------------------------------
# Neural collapse in the unconstrained-features model (Nam et al. 2025, Sec. 4)
# ---------------------------------------------------------------------------
# The unconstrained-features model f_i = W h_i is a two-layer linear network on
# one-hot sample inputs: W1 = H (features x samples), W2 = W, X = I_N. With
# balanced classes of n samples, each class is one mode with target sqrt(n)
# and rate 1 / N; the within-class directions have no target.


def _class_one_hot(n_classes: int, per_class: int, dtype=torch.float64, device="cpu"):
    labels = torch.arange(n_classes, device=device).repeat_interleave(per_class)
    return labels, torch.nn.functional.one_hot(labels, n_classes).to(dtype)


def class_scatter(features, labels, n_classes: int):
    """Within- and between-class covariances (Sigma_W, Sigma_B) of features (..., d, N) (Papyan et al. 2020).

    Sigma_W = (1/N) sum_i (h_i - mu_c(i))(h_i - mu_c(i))^T and
    Sigma_B = (1/C) sum_c (mu_c - mu)(mu_c - mu)^T, batched over leading dimensions.
    """
    one_hot = torch.nn.functional.one_hot(labels, n_classes).to(features.dtype)
    means = features @ one_hot / one_hot.sum(0)
    within = features - means @ one_hot.T
    centred = means - features.mean(-1, keepdim=True)
    return (within @ within.transpose(-1, -2) / features.shape[-1], centred @ centred.transpose(-1, -2) / n_classes)


def neural_collapse(features, labels, n_classes: int):
    """NC1 = tr(Sigma_W Sigma_B^+) / C of features (..., d, N): within-class spread in units of the between-class one."""
    within, between = class_scatter(features, labels, n_classes)
    between_inv = torch.linalg.pinv(between, hermitian=True, rtol=1e-10)
    return torch.einsum("...ij,...ji->...", within, between_inv) / n_classes


@validate_params({"n_classes": Integer(low=2), "per_class": Integer(low=1), "dim": Integer(low=2), "inits": _POSITIVE,
                  "within": Real(low=0.0, strict_low=True), "lr": _RATE, "steps": Integer(low=1),
                  "n_seeds": Integer(low=1), "seed": Seed(), "record_every": Integer(low=1), "device": Device()})
def collapse_runs(n_classes, per_class, dim, inits, *, within, lr, steps, n_seeds, seed, record_every, device="cpu"):
    """GD on the unconstrained-features model from aligned balanced class modes plus within-class noise.

    Every class mode starts at a0 = b0 = ``inits[j]`` (product u0 = a0^2)
    along a random orthonormal set of feature directions r_c, W = a0 R^T,
    and H gets within-class noise of std ``within`` (zero class means), so
    that the class modes follow :func:`sigmoid_mode` while the noise
    collapses. Networks are inits x seeds, init-major: network j has ``inits[j // n_seeds]``.
    Returns a :class:`~learning_dynamics.results.Run` recording ``nc1``
    (:func:`neural_collapse`), ``between`` (tr Sigma_B) and ``within``
    (tr P Sigma_W P, the within-class spread in the span of the class-mean
    differences); ``final["within0"]`` is that spread at init, the input of
    :func:`collapse_closed_form`.
    """
    if dim < n_classes:
        raise ValueError(f"dim must be >= n_classes = {n_classes} (one feature direction per class); got {dim}")
    gen = check_generator(seed)
    labels, one_hot = _class_one_hot(n_classes, per_class)
    sizes = np.repeat(np.asarray(inits, dtype=np.float64), n_seeds)
    a0 = torch.as_tensor(sizes)[:, None, None]
    frames = torch.linalg.qr(torch.randn(a0.shape[0], dim, n_classes, generator=gen, dtype=torch.float64))[0]
    noise = within * torch.randn(a0.shape[0], dim, one_hot.shape[0], generator=gen, dtype=torch.float64)
    noise = noise - noise @ one_hot @ one_hot.T / per_class
    features = a0 * frames @ one_hot.T / np.sqrt(per_class) + noise
    readout = a0 * frames.transpose(-1, -2)
    centre = frames @ (torch.eye(n_classes, dtype=torch.float64) - 1.0 / n_classes) @ frames.transpose(-1, -2)
    labels, one_hot, centre = labels.to(device), one_hot.to(device), centre.to(device)
    n = one_hot.shape[0]

    def record(p):
        w, b = class_scatter(p["w1"], labels, n_classes)
        return {"nc1": neural_collapse(p["w1"], labels, n_classes), "between": torch.einsum("...ii->...", b),
                "within": torch.einsum("...ii->...", centre @ w @ centre)}
    data = (torch.eye(n, dtype=torch.float64, device=device).expand(a0.shape[0], n, n), one_hot.T.expand(a0.shape[0], -1, -1))
    result = train(matrix_loss, {"w1": features.to(device), "w2": readout.to(device)}, data=data, steps=steps, lr=lr,
                   seed=seed, record=record, record_every=record_every, desc="unconstrained features",
                   gradients=matrix_grad_and_value)
    result.final["within0"] = result.records["within"][0]
    result.final["u0"] = sizes**2
    return result


@validate_params({"t": _ARRAY, "per_class": Integer(low=1), "n_classes": Integer(low=2), "u0": _POSITIVE,
                  "within0": _ARRAY})
def collapse_closed_form(t, per_class, n_classes, u0, within0):
    """NC1(t), tr Sigma_B(t) and tr P Sigma_W P(t) of :func:`collapse_runs` under gradient flow.

    Each class mode is the sigmoid u(t) = :func:`sigmoid_mode` with target
    s = sqrt(n) and rate 1/N (N = C n), so tr Sigma_B = (1 - 1/C) u / n.
    The within-class noise along the read-out decays as dh/dt = -(u / N) h,
    so tr P Sigma_W P = within0 / (1 + (u0 / s)(exp(2 s t / N) - 1)), and
    NC1 = (n / u) tr P Sigma_W P = (n within0 / u0) exp(-2 s t / N):
    one exponential, first because the classes separate and then because
    each class contracts. Returns the three arrays, broadcast over t (last axis) and the networks.
    """
    n_total = n_classes * per_class
    s = np.sqrt(per_class)
    t = np.asarray(t, dtype=np.float64)
    u0, within0 = (np.asarray(a, dtype=np.float64)[..., None] for a in (u0, within0))
    u = sigmoid_mode(t, s, u0, 1.0 / n_total)
    spread = within0 / (1.0 + (u0 / s) * np.expm1(2.0 * s * t / n_total))
    return per_class * within0 / u0 * np.exp(-2.0 * s * t / n_total), (1.0 - 1.0 / n_classes) * u / per_class, spread
