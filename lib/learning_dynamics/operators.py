"""The K and P operators of a recurrent model's gradient flow, matrix-free.

Take a recurrent model h_t = F(h_{t-1}, x_t; theta), t = 1..T, from a fixed
h_0, with a loss L(h_1, ..., h_T) and error e_t = dL/dh_t. Gradient flow on
theta moves the whole hidden trajectory as (Hazelden et al. 2025)

    dh/dtau = - P K P* e,

- K, the **parameter operator**: (K z)_s = sum_{s'} dF_s/dtheta (dF_{s'}/dtheta)^T z_{s'},
  with dF_s/dtheta taken at the recorded (h_{t-1}, x_t) of every trial and time s;
- P, the **linearised flow propagator**: (P z)_t = sum_{s<=t} Phi(t, s) z_s, with
  Phi(t, s) = J_t J_{t-1} ... J_{s+1} and J_t = dF/dh at (h_{t-1}, x_t); it maps a
  forcing added to every step to the change of the trajectory;
- P*, its adjoint: backpropagation through time.

No operator is ever stored as a matrix. The forward products (P, J_theta and
the push of P K P*) are ``torch.func.jvp`` of a rollout, with many probe
tensors pushed through together by ``vmap``; the adjoint products (P*, which is
backpropagation through time, and J_theta^T) are ``torch.autograd.grad`` on a
graph recorded once per operator object, with ``is_grads_batched`` for many
probes. P is the jvp of a forced rollout with respect to the forcing, P* the
backward pass of the same rollout, and K = J_theta J_theta^T evaluates the step
on all (trial, time) pairs at once.

Two implementation details keep this fast. Inside every jvp, every input of
the rollout (forcing, parameters, h0, inputs) carries a tangent, zero for the
constants: an operation between a tensor with a tangent and one without gets
a symbolic zero tangent, and PyTorch evaluates those through its Python
reference kernels, several times slower (and it imports ``torch._dynamo``, a
few seconds, on first use). And the adjoint products use plain autograd, not
``torch.func.vjp``, whose backward pass also imports ``torch._dynamo``.

On top sit the leading spectra (randomised SVD), the partial Gram matrices
the paper's effective ranks are read from (random +-1 probes), the effective
rank and participation ratio, and the alignment of sub-task objectives.

Shapes: inputs (B, T, n_in), hidden and every trajectory-shaped tensor
(B, T, H); operators accept one tensor (B, T, H) or a stack (n, B, T, H).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cached_property

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jvp, vmap

from . import sweep
from .spectra import KEEP, effective_rank, leading_eigenpairs, leading_spectrum, partial_gram, participation_ratio, \
    rademacher, trajectory_singular_values
from .threads import small_problem
from .tasks.recurrent import sampler as recurrent_sampler
from .train import progress, train
from .validation import Callable as AnyCallable
from .validation import Array, Device, InstanceOf, Integer, Optional, Options, Real, Seed, check_choice, check_device, \
    check_generator, check_int, validate_params, value_text

# ---------------------------------------------------------------------------
# Recurrent steps F(h, x; theta)
# ---------------------------------------------------------------------------

PARAM_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # nn.RNNCell / nn.GRUCell names


class RNNStep(nn.Module):
    """Vanilla RNN step h' = tanh(W_ih x + b_ih + W_hh h + b_hh) (the equations and names of nn.RNNCell).

    ``drive`` and ``recur`` take rows of inputs or states, (rows, n) for one
    network or (N, rows, n) with parameters stacked over N networks.
    """

    def __init__(self, n_in: int, n_hidden: int):
        super().__init__()
        self.n_in, self.n_hidden = check_int("n_in", n_in, low=1), check_int("n_hidden", n_hidden, low=1)
        self.weight_ih = nn.Parameter(torch.zeros(n_hidden, n_in))
        self.weight_hh = nn.Parameter(torch.zeros(n_hidden, n_hidden))
        self.bias_ih = nn.Parameter(torch.zeros(n_hidden))
        self.bias_hh = nn.Parameter(torch.zeros(n_hidden))

    @staticmethod
    def drive(theta, x):
        """The input part of the step (all time steps at once in a rollout)."""
        return x @ theta["weight_ih"].mT + (theta["bias_ih"] + theta["bias_hh"])[..., None, :]

    @staticmethod
    def recur(theta, h, drive):
        """The recurrent part: the next h from h and the input drive."""
        return torch.tanh(drive + h @ theta["weight_hh"].mT)

    def forward(self, h, x):
        theta = {name: getattr(self, name) for name in PARAM_NAMES}
        return self.recur(theta, h, self.drive(theta, x))


class GRUStep(nn.Module):
    """GRU step with the equations and parameter names of nn.GRUCell (gates r, z, n stacked in rows).

    ``drive`` and ``recur`` work for one network or stacked ones, as in :class:`RNNStep`.
    """

    def __init__(self, n_in: int, n_hidden: int):
        super().__init__()
        self.n_in, self.n_hidden = check_int("n_in", n_in, low=1), check_int("n_hidden", n_hidden, low=1)
        self.weight_ih = nn.Parameter(torch.zeros(3 * n_hidden, n_in))
        self.weight_hh = nn.Parameter(torch.zeros(3 * n_hidden, n_hidden))
        self.bias_ih = nn.Parameter(torch.zeros(3 * n_hidden))
        self.bias_hh = nn.Parameter(torch.zeros(3 * n_hidden))

    @staticmethod
    def drive(theta, x):
        """The input part of the step (all time steps at once in a rollout)."""
        return x @ theta["weight_ih"].mT + theta["bias_ih"][..., None, :]

    @staticmethod
    def recur(theta, h, drive):
        """The recurrent part: the next h from h and the input drive."""
        hidden = h.shape[-1]
        d_rz, d_n = drive.split([2 * hidden, hidden], -1)
        g_rz, g_n = (h @ theta["weight_hh"].mT + theta["bias_hh"][..., None, :]).split([2 * hidden, hidden], -1)
        r, z = torch.sigmoid(d_rz + g_rz).split([hidden, hidden], -1)
        n = torch.tanh(d_n + r * g_n)
        return n + z * (h - n)

    def forward(self, h, x):
        theta = {name: getattr(self, name) for name in PARAM_NAMES}
        return self.recur(theta, h, self.drive(theta, x))


STEPS = {"rnn": RNNStep, "gru": GRUStep}

# What the public entry points declare (see :func:`learning_dynamics.validation.validate_params`).
_STEP = InstanceOf(nn.Module, description="a torch.nn.Module (a recurrent step F(h, x) -> next h)")
_THRESHOLD = Real(low=0.0, high=1.0, strict_low=True)
_CHUNKS = Optional(Integer(low=1))


@validate_params({"kind": Options(*STEPS), "n_in": Integer(low=1), "n_hidden": Integer(low=1)})
def make_step(kind: str, n_in: int, n_hidden: int) -> nn.Module:
    """A vanilla RNN (``"rnn"``) or GRU (``"gru"``) step module."""
    return STEPS[kind](n_in, n_hidden)


@validate_params({"step": _STEP, "n_out": Integer(low=1), "n_networks": Integer(low=1), "seed": Seed(),
                  "device": Device()})
def init_params(
    step: nn.Module,
    n_out: int,
    *,
    n_networks: int = 1,
    g=1.0,
    seed: int = 0,
    dtype=torch.float64,
    device: str = "cpu",
) -> dict[str, torch.Tensor]:
    """Stacked parameters of ``n_networks`` step + linear-readout models.

    Every weight and bias is uniform on +-1/sqrt(H) (PyTorch's default for
    recurrent cells and linear layers), and the recurrent weights are then
    multiplied by the init level ``g`` (a scalar or one value per network),
    as in the paper's sweep over g. The readout is ``readout_w`` (n_out, H)
    and ``readout_b`` (n_out,).
    """
    gen = check_generator(seed)
    hidden = step.n_hidden
    bound = 1.0 / math.sqrt(hidden)
    shapes = {name: tuple(p.shape) for name, p in step.named_parameters()}
    shapes.update(readout_w=(n_out, hidden), readout_b=(n_out,))
    params = {
        name: (torch.rand((n_networks, *shape), generator=gen, dtype=torch.float64) * 2 - 1) * bound
        for name, shape in shapes.items()
    }
    scale = torch.as_tensor(g, dtype=torch.float64)
    if scale.ndim == 0:
        scale = scale.expand(n_networks)
    if scale.shape != (n_networks,) or not torch.all(torch.isfinite(scale)) or torch.any(scale < 0):
        raise ValueError(f"g must be a scalar or {n_networks} values, each finite and >= 0; got {g!r}")
    params["weight_hh"] = params["weight_hh"] * scale[:, None, None]
    return {k: v.to(dtype=dtype, device=device) for k, v in params.items()}


# ---------------------------------------------------------------------------
# Rollouts and the model's loss
# ---------------------------------------------------------------------------


def step_params(step: nn.Module, params: dict) -> dict[str, torch.Tensor]:
    """The entries of ``params`` that belong to ``step`` (the readout is dropped)."""
    names = [name for name, _ in step.named_parameters()]
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"params must hold the step's parameters {names}; got {sorted(params)}, "
                         f"missing the step parameters {missing}")
    return {n: params[n] for n in names}


def rollout(step: nn.Module, params: dict, inputs: torch.Tensor, h0=None, forcing=None) -> torch.Tensor:
    """Hidden trajectory (B, T, H): h_t = F(h_{t-1}, x_t) + forcing_t, from h0 (zeros by default).

    Written for one network and one batch, so it can be vmapped over stacked
    parameters and differentiated with torch.func. For the batched trainer it
    also takes stacked parameters (a leading network dimension N) with inputs
    (N, B, T, n_in), and returns (N, B, T, H): a step with ``drive`` and
    ``recur`` runs them on every network at once with batched products.
    """
    theta = step_params(step, params)
    stacked = inputs.ndim == 4
    batch, steps = inputs.shape[-3], inputs.shape[-2]
    h = inputs.new_zeros(*inputs.shape[:-3], batch, step.n_hidden) if h0 is None else h0
    if hasattr(step, "drive") and hasattr(step, "recur"):
        # fast path: the input part of every step in one product, only the recurrence in the loop
        rows = inputs.flatten(1, 2) if stacked else inputs  # (N, B T, n_in): one batched product per network
        drives = step.drive(theta, rows).reshape(*inputs.shape[:-1], -1).unbind(-2)

        def advance(h, t):
            return step.recur(theta, h, drives[t])
    elif stacked:
        raise ValueError(f"step must have drive() and recur() to run stacked parameters (inputs (N, B, T, n_in)); "
                         f"got a {type(step).__name__}, which lacks them: vmap over networks instead")
    else:  # any module F(h, x): one functional call per step
        xs = inputs.unbind(1)

        def advance(h, t):
            return functional_call(step, theta, (h, xs[t]))

    pushes = forcing.unbind(-2) if forcing is not None else None  # unbind, not [:, t]: a cheap backward
    out = []
    for t in range(steps):
        h = advance(h, t)
        if pushes is not None:
            h = h + pushes[t]
        out.append(h)
    return torch.stack(out, -2)


def readout(params: dict, hidden: torch.Tensor) -> torch.Tensor:
    """y_t = W h_t + b with ``readout_w`` and ``readout_b``, for one network (B, T, H) or stacked ones (N, B, T, H)."""
    rows = hidden.flatten(-3, -2)  # ([N,] B T, H): one product per network
    return (rows @ params["readout_w"].mT + params["readout_b"][..., None, :]).reshape(*hidden.shape[:-1], -1)


@validate_params({"step": _STEP})
def mse_loss(step: nn.Module) -> Callable:
    """``loss(params, inputs, targets)``: mean squared error of the readout over all entries.

    For one network, a scalar; for stacked networks (inputs (N, B, T, n_in)),
    one loss per network, for ``train(..., gradients="stacked")``.
    """

    def loss(params, inputs, targets):
        squared = (readout(params, rollout(step, params, inputs)) - targets) ** 2
        return squared.flatten(1).mean(1) if inputs.ndim == 4 else squared.mean()

    return loss


def _grad(output, inputs, grad_outputs=None, batched=False, **kwargs):
    """torch.autograd.grad with grad mode on; unused inputs get zero gradients."""
    return torch.autograd.grad(output, inputs, grad_outputs, is_grads_batched=batched, materialize_grads=True, **kwargs)


def _leaves(params: dict) -> dict[str, torch.Tensor]:
    """Detached copies of the parameters that autograd records a graph in."""
    return {k: v.detach().requires_grad_(True) for k, v in params.items()}


def hidden_error(params: dict, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """e = dL/dh for the mean-squared loss of :func:`mse_loss`, shape (B, T, H)."""
    with torch.enable_grad():
        h = hidden.detach().requires_grad_(True)
        return _grad(((readout(params, h) - targets) ** 2).mean(), h)[0]


# ---------------------------------------------------------------------------
# The operators
# ---------------------------------------------------------------------------


class KPFlow:
    """The operators K, P, P* and P K P* of one model at one parameter point, on one batch of inputs.

    >>> step = make_step("gru", 3, 8)
    >>> params = {k: v[0] for k, v in init_params(step, 3).items()}
    >>> ops = KPFlow(step, torch.randn(2, 5, 3, dtype=torch.float64), params)
    >>> ops.hidden.shape
    torch.Size([2, 5, 8])

    ``params`` defaults to the module's own parameters (readout entries are
    ignored); ``device`` moves everything there (``"cpu"``, ``"cuda"``, ...).
    """

    def __init__(self, step: nn.Module, inputs, params: dict | None = None, h0=None, device: str | None = None):
        if not isinstance(step, nn.Module):
            raise ValueError(f"step must be a torch.nn.Module F(h, x) -> next h; got {value_text(step)}")
        if not hasattr(step, "n_hidden"):
            raise ValueError(f"step must expose n_hidden (the size of h), as RNNStep and GRUStep do; "
                             f"got a {type(step).__name__} without it")
        inputs = torch.as_tensor(inputs)
        if inputs.ndim != 3 or inputs.shape[0] < 1 or inputs.shape[1] < 1:
            raise ValueError(f"inputs must have shape (trials, time, n_in) with trials, time >= 1; got {tuple(inputs.shape)}")
        if not inputs.is_floating_point():
            raise ValueError(f"inputs must be a floating-point tensor; got dtype {inputs.dtype}")
        device = check_device("device", device) if device is not None else str(inputs.device)
        dtype = inputs.dtype
        if params is None:
            params = dict(step.named_parameters())
        self.step = step
        self.params = {k: v.detach().to(device=device, dtype=dtype) for k, v in step_params(step, params).items()}
        self.inputs = inputs.to(device)
        batch, steps = inputs.shape[:2]
        self.n_hidden = step.n_hidden
        if h0 is None:
            h0 = self.inputs.new_zeros(batch, self.n_hidden)
        h0 = torch.as_tensor(h0).to(device=device, dtype=dtype)
        if h0.shape != (batch, self.n_hidden):
            raise ValueError(f"h0 must have shape ({batch}, {self.n_hidden}) (trials, hidden); got {tuple(h0.shape)}")
        self.h0 = h0
        self.shape = (batch, steps, self.n_hidden)
        with torch.no_grad():
            try:
                probe = functional_call(step, self.params, (h0, self.inputs[:, 0]))
            except (RuntimeError, TypeError) as err:
                raise ValueError(f"step must be a recurrent step F(h, x) -> next h for h {tuple(h0.shape)} and x "
                                 f"{tuple(self.inputs[:, 0].shape)}; got a {type(step).__name__}, which is not a "
                                 f"recurrent step for them: {err}") from err
            if not torch.is_tensor(probe) or probe.shape != h0.shape:
                got = tuple(probe.shape) if torch.is_tensor(probe) else type(probe).__name__
                raise ValueError(f"step must map h of shape {tuple(h0.shape)} to a next h of the same shape; got {got}")
            self.hidden = rollout(step, self.params, self.inputs, h0)
        self.h_prev = torch.cat([h0[:, None], self.hidden[:, :-1]], 1)

    # -- shape checks, the forced rollout and the step at every record ----
    def check_trajectory(self, z, name="z"):
        """``z`` as a trajectory-shaped tensor (trials, time, hidden), or a stack of them, on this model's device and dtype."""
        z = torch.as_tensor(z)
        if z.shape[-3:] != self.shape or z.ndim not in (3, 4):
            raise ValueError(f"{name} must have shape {self.shape} (trials, time, hidden) or (n, *that); got {tuple(z.shape)}")
        return z.to(device=self.hidden.device, dtype=self.hidden.dtype)

    def _batched(self, fn, z, name="z"):
        """A forward (jvp) product on one tensor or, vmapped, on a stack."""
        z = self.check_trajectory(z, name)
        return fn(z) if z.ndim == 3 else vmap(fn)(z)

    def _pull(self, graph, z, name="z"):
        """An adjoint product: backpropagate z (one tensor or a stack) through a recorded (inputs, output) graph."""
        z = self.check_trajectory(z, name)
        inputs, output = graph
        return _grad(output, inputs, z, batched=z.ndim == 4, retain_graph=True)

    def forced_rollout(self, forcing, theta=None, h0=None, inputs=None):
        """The forced rollout; theta, h0 and inputs default to the recorded ones."""
        return rollout(self.step, self.params if theta is None else theta, self.inputs if inputs is None else inputs,
                       self.h0 if h0 is None else h0, forcing)

    def step_at_records(self, theta, h_prev=None, inputs=None):
        """F evaluated at every (trial, time) with the recorded h_{t-1}: a (B, T, H) function of theta."""
        b, t, h = self.shape
        h_prev = self.h_prev if h_prev is None else h_prev
        inputs = self.inputs if inputs is None else inputs
        flat = functional_call(self.step, theta, (h_prev.reshape(b * t, h), inputs.reshape(b * t, -1)))
        return flat.reshape(b, t, h)

    # -- cached tangents and graphs (each built once per KPFlow object) ----
    @cached_property
    def _zero(self):
        return torch.zeros(self.shape, dtype=self.hidden.dtype, device=self.hidden.device)

    @cached_property
    def _zero_tangents(self):
        """Zero tangents for (theta, h0, inputs, h_prev): constants inside a jvp carry them (see the module notes)."""
        return ({k: torch.zeros_like(v) for k, v in self.params.items()}, torch.zeros_like(self.h0),
                torch.zeros_like(self.inputs), torch.zeros_like(self.h_prev))

    @cached_property
    def _forcing_graph(self):
        """The forced rollout recorded at zero forcing, for P*."""
        with torch.enable_grad():
            forcing = self._zero.clone().requires_grad_(True)
            return [forcing], self.forced_rollout(forcing)

    @cached_property
    def _step_graph(self):
        """The step at every (trial, time) recorded in theta, for J_theta^T."""
        with torch.enable_grad():
            theta = _leaves(self.params)
            return list(theta.values()), self.step_at_records(theta)

    @cached_property
    def _step_adjoint_graph(self):
        """J_theta^T u recorded with its graph in u: its backward pass is J_theta (a vjp of a vjp)."""
        with torch.enable_grad():
            inputs, output = self._step_graph
            u = self._zero.clone().requires_grad_(True)
            return [u], _grad(output, inputs, u, create_graph=True, retain_graph=True)

    @cached_property
    def _trajectory_graph(self):
        """The rollout recorded in theta, for J_h^T = (P J_theta)^T."""
        with torch.enable_grad():
            theta = _leaves(self.params)
            return list(theta.values()), self._trajectory(theta)

    def _trajectory(self, theta, h0=None, inputs=None):
        return rollout(self.step, theta, self.inputs if inputs is None else inputs, self.h0 if h0 is None else h0)

    def _as_params(self, grads):
        return dict(zip(self.params, grads))

    # -- P and P* ---------------------------------------------------------
    def P(self, z):
        """(P z)_t = sum_{s<=t} Phi(t, s) z_s: the jvp of the forced rollout in its forcing."""
        primals = (self._zero, self.params, self.h0, self.inputs)
        d_theta, d_h0, d_inputs, _ = self._zero_tangents
        return self._batched(lambda v: jvp(self.forced_rollout, primals, (v, d_theta, d_h0, d_inputs))[1], z)

    def P_adj(self, z):
        """(P* z)_s = sum_{t>=s} Phi(t, s)^T z_t: backpropagation through time (the backward pass of the forced rollout)."""
        return self._pull(self._forcing_graph, z)[0]

    # -- J_theta, K -------------------------------------------------------
    def J_theta(self, dtheta: dict):
        """dF/dtheta . dtheta at every (trial, time): parameter perturbation -> forcing (B, T, H)."""
        missing = set(self.params) - set(dtheta)
        if missing:
            raise ValueError(f"dtheta must hold every step parameter {sorted(self.params)}; got {sorted(dtheta)}, "
                             f"missing {sorted(missing)}")
        tangent = {k: torch.as_tensor(dtheta[k]).to(self.hidden) for k in self.params}
        for k, v in tangent.items():
            if v.shape != self.params[k].shape:
                raise ValueError(f"dtheta[{k!r}] must have shape {tuple(self.params[k].shape)}; got {tuple(v.shape)}")
        _, _, d_inputs, d_h_prev = self._zero_tangents
        return jvp(self.step_at_records, (self.params, self.h_prev, self.inputs), (tangent, d_h_prev, d_inputs))[1]

    def J_theta_adj(self, z):
        """(dF/dtheta)^T z summed over trials and time: a dict shaped like the parameters."""
        return self._as_params(self._pull(self._step_graph, z))

    def K(self, z):
        """K z = J_theta J_theta^T z, the parameter operator (self-adjoint, positive semi-definite).

        J_theta is applied as the transpose of the recorded J_theta^T (a backward
        pass through its backward pass), which is faster here than a fresh jvp.
        """
        z = self.check_trajectory(z)
        pulled = self._pull(self._step_graph, z)
        inputs, output = self._step_adjoint_graph
        return _grad(output, inputs, pulled, batched=z.ndim == 4, retain_graph=True)[0]

    def K_adj(self, z):
        """K* z; K is self-adjoint, so this is K z (kept for symmetry with P and P*)."""
        return self.K(z)

    def PKP(self, z):
        """P K P* z, the hidden-state NTK: -lr P K P* e is the first-order change of h after one GD step.

        Since dh/dtheta = P J_theta, P K P* = (P J_theta)(P J_theta)^T = J_h J_h^T
        with J_h = dh/dtheta through the whole rollout; it is applied that way,
        one backward pass and one jvp of the rollout in theta, which is faster
        than P(K(P* z)) and equal to it (see the tests).
        """
        z = self.check_trajectory(z)
        pulled = self._as_params(self._pull(self._trajectory_graph, z))
        _, d_h0, d_inputs, _ = self._zero_tangents
        primals = (self.params, self.h0, self.inputs)
        push = lambda d: jvp(self._trajectory, primals, (d, d_h0, d_inputs))[1]  # noqa: E731
        return push(pulled) if z.ndim == 3 else vmap(push)(pulled)

    def PP(self, z):
        """P P* z."""
        return self.P(self.P_adj(z))

    def gradient(self, e) -> dict:
        """dL/dtheta = J_theta^T P* e for an error e = dL/dh of shape (B, T, H)."""
        return self.J_theta_adj(self.P_adj(self.check_trajectory(e, "e")))

    def operator(self, name: str) -> Callable:
        """The bound method for one of :data:`OPERATOR_NAMES` (``"K"``, ``"P"``, ``"PKP"``, ...)."""
        check_choice("name", name, OPERATOR_NAMES)
        return getattr(self, name)

    def dense(self, name: str) -> torch.Tensor:
        """The operator as a (BTH, BTH) matrix, from matrix-free products (toy sizes only)."""
        size = math.prod(self.shape)
        if size > 4096:
            raise ValueError(f"dense() is for toy sizes: B*T*H must be <= 4096; got {size}")
        eye = torch.eye(size, dtype=self.hidden.dtype, device=self.hidden.device).reshape(size, *self.shape)
        return self.operator(name)(eye).reshape(size, size).T


OPERATOR_NAMES = ("K", "K_adj", "P", "P_adj", "PKP", "PP")
_OPS = InstanceOf(KPFlow, description="a KPFlow")


@validate_params({"ops": _OPS})
def dense_reference(ops: KPFlow) -> dict[str, torch.Tensor]:
    """The operators as dense matrices built from autograd Jacobians (reverse mode, ``torch.autograd.functional.jacobian``), toy sizes only.

    P = d h / d forcing and K = J_F J_F^T with J_F = dF/dtheta at the recorded
    states; P K P* is the product of those dense matrices, while
    :meth:`KPFlow.PKP` applies it as J_h J_h^T through the rollout, so the
    comparison checks the decomposition itself.
    """
    size = math.prod(ops.shape)
    if size > 4096:
        raise ValueError(f"ops must have B*T*H <= 4096 (dense_reference is for toy sizes); got {size}")
    zero = torch.zeros(ops.shape, dtype=ops.hidden.dtype, device=ops.hidden.device)
    prop = torch.autograd.functional.jacobian(ops.forced_rollout, zero, vectorize=True).reshape(size, size)
    names = list(ops.params)
    jac = torch.autograd.functional.jacobian(lambda *theta: ops.step_at_records(dict(zip(names, theta))),
                                             tuple(ops.params.values()), vectorize=True)
    j_step = torch.cat([v.reshape(size, -1) for v in jac], 1)
    kernel = j_step @ j_step.T
    return {"P": prop, "P_adj": prop.T, "K": kernel, "K_adj": kernel.T, "PKP": prop @ kernel @ prop.T,
            "PP": prop @ prop.T}


# ---------------------------------------------------------------------------
# Alignment
# ---------------------------------------------------------------------------


def cosine_matrix(vectors) -> torch.Tensor:
    """Pairwise cosines of the first-axis entries of ``vectors`` (each flattened)."""
    v = torch.as_tensor(vectors)
    if v.ndim < 2 or v.shape[0] < 1:
        raise ValueError(f"vectors must have shape (n, ...) with n >= 1; got {tuple(v.shape)}")
    flat = v.reshape(v.shape[0], -1)
    norms = flat.norm(dim=1).clamp_min(torch.finfo(flat.dtype).tiny)
    unit = flat / norms[:, None]
    return unit @ unit.T


@validate_params({"ops": _OPS})
def task_alignment(ops: KPFlow, errors) -> torch.Tensor:
    """cos(P K P* e_A, P K P* e_B) for every pair of sub-task errors ``errors`` (n_tasks, B, T, H).

    e_A is the error of task A alone (zero on other tasks' trials); P K P* e_A
    is the change of the whole hidden trajectory that task A's objective asks
    for, so the matrix says which sub-task objectives pull the dynamics the
    same way.
    """
    errors = ops.check_trajectory(errors, "errors")
    if errors.ndim != 4:
        raise ValueError(f"errors must have shape (n_tasks, {', '.join(map(str, ops.shape))}); got {tuple(errors.shape)}")
    return cosine_matrix(ops.PKP(errors))


def pair_average(matrices, pairs) -> np.ndarray:
    """Mean of ``matrices[..., a, b]`` over the index pairs (a, b) in ``pairs``."""
    m = np.asarray(matrices)
    if not pairs:
        raise ValueError(f"pairs must hold at least one (a, b) pair; got {pairs!r}")
    return np.mean([m[..., a, b] for a, b in pairs], axis=0)


@validate_params({"ops": _OPS})
def gradient_alignment(ops: KPFlow, errors) -> torch.Tensor:
    """cos(dL_A/dtheta, dL_B/dtheta) for every pair of sub-task errors (n_tasks, B, T, H)."""
    errors = ops.check_trajectory(errors, "errors")
    if errors.ndim != 4:
        raise ValueError(f"errors must have shape (n_tasks, {', '.join(map(str, ops.shape))}); got {tuple(errors.shape)}")
    grads = ops.J_theta_adj(ops.P_adj(errors))
    return cosine_matrix(torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], 1))


def operator_alignment(outputs_a: torch.Tensor, outputs_b: torch.Tensor) -> float:
    """<A, B>_F / (|A|_F |B|_F) estimated from A S and B S on the same random probes S (n, ...)."""
    if outputs_a.shape != outputs_b.shape:
        raise ValueError(f"outputs_a and outputs_b must have the same shape; got {tuple(outputs_a.shape)} and {tuple(outputs_b.shape)}")
    num = (outputs_a * outputs_b).sum()
    return float(num / ((outputs_a**2).sum() * (outputs_b**2).sum()).sqrt())


# ---------------------------------------------------------------------------
# Along training: what to record, and the operators at each checkpoint
# ---------------------------------------------------------------------------

PARAM_PREFIX = "param/"


@validate_params({"step": _STEP})
def recorder(step: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> Callable:
    """``record(params)`` for :func:`learning_dynamics.train.train` (parameters stacked over networks).

    Keeps, for every network, the loss on fixed evaluation trials, the
    effective rank (95% of the variance) and participation ratio of the
    hidden trajectories on them, and the parameters themselves (under
    ``"param/<name>"``) so the operators can be rebuilt at every checkpoint.
    """
    loss = mse_loss(step)

    def record(params):
        with torch.no_grad():
            hidden = vmap(lambda p: rollout(step, p, inputs))(params)
            s = trajectory_singular_values(hidden)
            out = {
                "eval_loss": vmap(lambda p: loss(p, inputs, targets))(params),
                "hidden_rank": effective_rank(s),
                "hidden_pr": participation_ratio(s),
            }
        out.update({PARAM_PREFIX + k: v for k, v in params.items()})
        return out

    return record


def _over_networks(analyse, records: dict, *, client=None, chunks=None, desc: str = "networks") -> dict:
    """``analyse(records of one network)`` for every recorded network, through :func:`sweep.map`: arrays network-first.

    Each network's parameter records (the network axis kept, of length 1) are one item, so a chunk
    carries only its own networks' checkpoints to a worker. Every network's analysis is the same
    wherever and with whichever others it runs: the results are bitwise those of one process.
    """
    names = [k for k in records if k.startswith(PARAM_PREFIX)]
    if not names:
        raise ValueError(f"records must hold the parameters ('{PARAM_PREFIX}<name>' entries: train with "
                         f"record=recorder(...)); got {sorted(records)}")
    networks = [{k: np.asarray(records[k])[:, n:n + 1] for k in names} for n in range(records[names[0]].shape[1])]

    def chunk(items):
        outs = [analyse(network) for network in items]
        return {k: np.stack([o[k] for o in outs]) for k in outs[0]}

    return sweep.map(chunk, networks, client=client, chunks=chunks, desc=desc)


@validate_params({"step": _STEP, "make_batch": AnyCallable(), "n_trials": Integer(low=1), "steps": Integer(low=1),
                  "lr": Real(low=0.0, strict_low=True), "record_every": Integer(low=1), "seed": Seed(),
                  "desc": InstanceOf(str), "chunks": _CHUNKS})
def train_networks(step: nn.Module, params: dict, make_batch, n_trials: int, eval_inputs, eval_targets, *, steps: int,
                   lr: float, record_every: int = 1, seed: int = 0, desc: str = "recurrent networks", client=None,
                   chunks=None):
    """Adam on stacked recurrent networks ``params`` (network axis first), fresh trials every step.

    ``make_batch(n, generator)`` makes ``n`` trials (:func:`learning_dynamics.tasks.recurrent.sampler`
    deals them out to the networks); :func:`recorder` on ``eval_inputs`` / ``eval_targets`` keeps
    the evaluation loss, the hidden trajectories' ranks and every record's parameters. The networks
    train where ``params`` are. Returns a :class:`~learning_dynamics.results.Run`.

    ``client`` / ``chunks``: the networks go through :func:`sweep.map_runs` in chunks, each a batch of
    its own, which also divides the memory that backpropagation through time needs by the number of
    chunks. The one-call default trains every network in one batch, on the trials the trainer's
    ``seed`` draws. A chunk that does not start at the first network draws its trials from
    ``(seed, its first network)``: another draw of the same experiment, not bitwise the one call.
    The chunks are the same on any cluster, so chunked runs agree with each other bitwise.
    """
    names = list(params)
    n = params[names[0]].shape[0]
    device = str(params[names[0]].device)
    x, y = (torch.as_tensor(t).to(device=device, dtype=params[names[0]].dtype) for t in (eval_inputs, eval_targets))

    def part(index):
        index = np.asarray(index)
        own = {k: v[torch.as_tensor(index, device=params[k].device)] for k, v in params.items()}
        chunk_seed = seed if index[0] == 0 else int(np.random.SeedSequence([seed, int(index[0])]).generate_state(1)[0])
        return train(mse_loss(step), own, steps=steps, lr=lr, optimizer="adam", record_every=record_every,
                     data=recurrent_sampler(make_batch, len(index), n_trials, device=device),
                     record=recorder(step, x, y), seed=chunk_seed, desc=desc)

    return sweep.map_runs(part, n, client=client, chunks=chunks, desc=desc)


def _network_size(records: dict) -> int:
    """Weight entries of one recorded network (what :func:`small_problem` sizes the thread count by)."""
    return sum(math.prod(v.shape[2:]) for k, v in records.items() if k.startswith(PARAM_PREFIX))


@validate_params({"step": _STEP, "k": Integer(low=1), "index": Integer(), "n_iter": Integer(low=0), "seed": Seed(),
                  "device": Device(), "chunks": _CHUNKS})
def final_spectra(step: nn.Module, records: dict, inputs, k: int, *, index: int = -1, n_iter: int = 2, seed: int = 0,
                  dtype=torch.float32, device: str = "cpu", client=None, chunks=None) -> dict[str, np.ndarray]:
    """Leading singular values s_i / s_1 of the whole K, P and P K P* of every network at one record.

    Randomised SVD (:func:`leading_spectrum`) over matrix-free products on the
    trajectory space (trials x time x hidden); returns arrays (network, k).
    ``client`` / ``chunks``: the networks go through :func:`sweep.map`.
    """
    inputs = torch.as_tensor(inputs).to(device=device, dtype=dtype)

    def spectra(network):
        out = {}
        with small_problem(_network_size(network), device):
            ops = KPFlow(step, inputs, checkpoint(network, index, 0, dtype=dtype, device=device))
            for name, apply, adjoint in (("K", ops.K, None), ("P", ops.P, ops.P_adj), ("PKP", ops.PKP, None)):
                s = leading_spectrum(apply, ops.shape, k, adjoint=adjoint, n_iter=n_iter, seed=seed, dtype=dtype,
                                     device=device)
                out[name] = (s / s[0]).cpu().numpy()
        return out

    return _over_networks(spectra, records, client=client, chunks=chunks, desc="whole-operator spectra")


@validate_params({"step": _STEP, "k": Integer(low=1), "index": Integer(), "n_iter": Integer(low=0),
                  "n_probes": Integer(low=1), "seed": Seed(), "device": Device(), "chunks": _CHUNKS})
def eigenfunctions(step: nn.Module, records: dict, inputs, k: int, *, index: int = -1, n_iter: int = 3,
                   n_probes: int = 32, seed: int = 0, dtype=None, device: str = "cpu", client=None,
                   chunks=None) -> dict[str, np.ndarray]:
    """K's ``k`` leading eigenfunctions for every network at one record, matrix-free.

    Returns arrays indexed by network first: ``values`` (k) and ``share``
    (k: each eigenvalue over tr K, the share of K's variance it explains, with
    tr K from ``n_probes`` Rademacher probes, Hutchinson's estimator),
    ``profile`` (k, T: the eigenfunction's weight at each time step, summed
    over trials and hidden units; each row sums to 1) and ``vectors``
    (k, trials, T, H). ``client`` / ``chunks``: the networks go through
    :func:`sweep.map`.
    """
    inputs = torch.as_tensor(inputs).to(device=device, dtype=dtype)

    def leading(network):
        with small_problem(_network_size(network), device):
            ops = KPFlow(step, inputs, checkpoint(network, index, 0, dtype=inputs.dtype, device=device))
            values, vectors = leading_eigenpairs(ops.K, ops.shape, k, n_iter=n_iter, seed=seed, dtype=inputs.dtype,
                                                 device=device)
            probes = rademacher(n_probes, ops.shape, seed=seed, dtype=inputs.dtype, device=device)
            trace = (probes * ops.K(probes)).sum() / n_probes
        return {"values": values.cpu().numpy(), "share": (values / trace).cpu().numpy(),
                "profile": (vectors ** 2).sum((1, 3)).cpu().numpy(), "vectors": vectors.cpu().numpy()}

    return _over_networks(leading, records, client=client, chunks=chunks, desc="eigenfunctions of K")


@validate_params({"k": Integer(low=1)})
def hidden_pca(hidden, k: int = 3) -> dict[str, np.ndarray]:
    """Principal components of hidden trajectories (trials, T, H), pooled over trials and time.

    Returns ``scores`` (trials, T, k), the states' coordinates on the
    ``k`` leading components, ``explained`` (k: each component's share of
    the variance) and ``components`` (k, H).
    """
    states = torch.as_tensor(hidden).detach().to(torch.float64)
    flat = states.reshape(-1, states.shape[-1])
    centred = flat - flat.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(k, vh.shape[0])
    scores = (centred @ vh[:k].T).reshape(*states.shape[:-1], k)
    return {"scores": scores.cpu().numpy(), "explained": (s[:k] ** 2 / (s ** 2).sum()).cpu().numpy(),
            "components": vh[:k].cpu().numpy()}


@validate_params({"index": Integer(), "network": Integer(low=0), "device": Device()})
def checkpoint(records: dict, index: int, network: int, *, dtype=None, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The parameters of one network at one recorded step, from a :class:`~learning_dynamics.results.Run`'s ``records``."""
    names = [k for k in records if k.startswith(PARAM_PREFIX)]
    if not names:
        raise ValueError(f"records must hold the parameters ('{PARAM_PREFIX}<name>' entries: train with "
                         f"record=recorder(...)); got {sorted(records)}")
    return {k[len(PARAM_PREFIX):]: torch.as_tensor(records[k][index, network], dtype=dtype, device=device) for k in names}


@validate_params({"ops": _OPS, "n_probes": Integer(low=1), "seed": Seed(), "keep": Options(*KEEP),
                  "threshold": _THRESHOLD})
def operator_ranks(ops: KPFlow, *, n_probes: int = 32, seed: int = 0, keep: str = "time",
                   threshold: float = 0.95) -> dict:
    """Effective ranks of K, P and P K P* seen through one index, from random +-1 probes.

    The estimator of the authors' scripts: push n random +-1 probes S through
    each operator A, form the reduced Gram C (:func:`partial_gram`) and count
    the leading eigenvalues of C that carry ``threshold`` of sum(eig^2).
    Also returns the spectra (eigenvalues of C, descending) and the alignment
    between P K P* and P P* (the authors' ``op_alignment``) on the same probes.
    """
    probes = rademacher(n_probes, ops.shape, seed=seed, dtype=ops.hidden.dtype, device=str(ops.hidden.device))
    p_out = ops.P(torch.cat([probes, ops.P_adj(probes)]))
    outputs = {"K": ops.K(probes), "P": p_out[:n_probes], "PKP": ops.PKP(probes)}
    result = {"alignment_PKP_PP": operator_alignment(outputs["PKP"], p_out[n_probes:])}
    for name, out in outputs.items():
        evals = torch.linalg.eigvalsh(partial_gram(out, keep)).flip(-1).clamp_min(0)
        result[name] = int(effective_rank(evals, threshold))
        result[name + "_spectrum"] = evals.cpu().numpy()
    return result


@validate_params({"n_tasks": Integer(low=1)})
def task_errors(params: dict, hidden: torch.Tensor, targets: torch.Tensor, task_index, n_tasks: int) -> torch.Tensor:
    """e_A = dL/dh restricted to the trials of task A, stacked: (n_tasks, B, T, H)."""
    task_index = torch.as_tensor(task_index, device=hidden.device)
    if task_index.shape != hidden.shape[:1]:
        raise ValueError(f"task_index must give one task per trial, shape ({hidden.shape[0]},); got {tuple(task_index.shape)}")
    e = hidden_error(params, hidden, targets)
    masks = task_index[None, :] == torch.arange(n_tasks, device=hidden.device)[:, None]
    return e[None] * masks[:, :, None, None].to(e.dtype)


@validate_params({"step": _STEP, "lr": Real(low=0.0, strict_low=True)})
def first_order_check(step: nn.Module, params: dict, inputs, targets, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted, actual) change of the hidden trajectory after one GD step of size ``lr``.

    predicted = -lr P K P* e; actual = h(theta - lr dL/dtheta) - h(theta).
    """
    inputs, targets = torch.as_tensor(inputs), torch.as_tensor(targets)
    want = (*inputs.shape[:2], params["readout_w"].shape[0])
    if targets.shape != want:
        raise ValueError(f"targets must have shape {want} (trials, time, readout outputs); got {tuple(targets.shape)}")
    with torch.enable_grad():
        leaves = _leaves(params)
        grads = dict(zip(leaves, _grad(mse_loss(step)(leaves, inputs, targets), list(leaves.values()))))
    moved = {k: v - lr * grads[k] for k, v in params.items()}
    ops = KPFlow(step, inputs, params)
    predicted = -lr * ops.PKP(hidden_error(params, ops.hidden, targets))
    actual = rollout(step, moved, inputs) - ops.hidden
    return predicted, actual


@validate_params({"step": _STEP, "lrs": Array(positive=True)})
def first_order_errors(step: nn.Module, params: dict, inputs, targets, lrs) -> np.ndarray:
    """Relative error ||actual - predicted|| / ||actual|| of :func:`first_order_check` at each step size in ``lrs``."""
    errors = []
    for lr in np.atleast_1d(np.asarray(lrs, dtype=np.float64)):
        predicted, actual = first_order_check(step, params, inputs, targets, float(lr))
        errors.append(float((predicted - actual).norm() / actual.norm()))
    return np.array(errors)


@validate_params({"step": _STEP, "every": Integer(low=1), "n_probes": Integer(low=1), "seed": Seed(),
                  "keep": Options(*KEEP), "threshold": _THRESHOLD, "device": Device(), "chunks": _CHUNKS})
def rank_history(step: nn.Module, records: dict, inputs, *, every: int = 1, n_probes: int = 32, seed: int = 0,
                 keep: str = "time", threshold: float = 0.95, dtype=None, device: str = "cpu", client=None,
                 chunks=None) -> dict:
    """:func:`operator_ranks` of every network at every ``every``-th record of a training run.

    Returns arrays indexed (checkpoint, network): ``K``, ``P``, ``PKP`` (effective
    ranks), ``alignment_PKP_PP``, the ``index`` of the records used, and the
    reduced-Gram spectra ``spectra[name]`` (checkpoint, network, size).
    ``client`` / ``chunks``: the networks go through :func:`sweep.map`.
    """
    n_records = next(iter(records.values())).shape[0]
    index = sorted(set(range(0, n_records, every)) | {n_records - 1})
    inputs = torch.as_tensor(inputs).to(device=device, dtype=dtype)
    names = ("K", "P", "PKP", "alignment_PKP_PP", "K_spectrum", "P_spectrum", "PKP_spectrum")

    def history(network):
        with small_problem(_network_size(network), device):
            rows = [operator_ranks(KPFlow(step, inputs, checkpoint(network, i, 0, dtype=inputs.dtype, device=device)),
                                   n_probes=n_probes, seed=seed, keep=keep, threshold=threshold)
                    for i in progress(index, desc="operators along training")]
        return {name: np.array([r[name] for r in rows]) for name in names}

    flat = {k: np.swapaxes(v, 0, 1) for k, v in  # (checkpoint, network, ...)
            _over_networks(history, records, client=client, chunks=chunks, desc="operator ranks").items()}
    out = {"index": np.array(index), **{name: flat[name] for name in names[:4]}}
    out["spectra"] = {name: flat[name + "_spectrum"] for name in ("K", "P", "PKP")}
    return out


@validate_params({"step": _STEP, "n_tasks": Integer(low=1), "device": Device(), "chunks": _CHUNKS})
def alignment_history(step: nn.Module, records: dict, inputs, targets, task_index, n_tasks: int, *,
                      dtype=None, device: str = "cpu", client=None, chunks=None) -> dict:
    """Sub-task alignment matrices of every network at every record of a multi-task run.

    Returns arrays (checkpoint, network, n_tasks, n_tasks):
    ``hidden`` (cosine between the tasks' hidden trajectories, trial by trial),
    ``objective`` (:func:`task_alignment`, through P K P*) and ``gradient``
    (:func:`gradient_alignment`). Trials of every task must come in the same
    order, as :func:`learning_dynamics.tasks.recurrent.memory_multitask` makes them.
    ``client`` / ``chunks``: the networks go through :func:`sweep.map`.
    """
    inputs = torch.as_tensor(inputs).to(device=device, dtype=dtype)
    targets = torch.as_tensor(targets).to(device=device, dtype=inputs.dtype)
    task_index = torch.as_tensor(task_index, device=device)
    counts = torch.bincount(task_index, minlength=n_tasks)
    if len(counts) != n_tasks or bool((counts != counts[0]).any()):
        raise ValueError(f"task_index must hold every one of the {n_tasks} tasks equally often; got counts {counts.tolist()}")
    n_records = next(iter(records.values())).shape[0]

    def history(network):
        out = {"hidden": [], "objective": [], "gradient": []}
        with small_problem(_network_size(network), device):
            for i in progress(range(n_records), desc="task alignment along training"):
                params = checkpoint(network, i, 0, dtype=inputs.dtype, device=device)
                ops = KPFlow(step, inputs, params)
                errors = task_errors(params, ops.hidden, targets, task_index, n_tasks)
                by_task = torch.stack([ops.hidden[task_index == k] for k in range(n_tasks)])
                out["hidden"].append(cosine_matrix(by_task).cpu().numpy())
                out["objective"].append(task_alignment(ops, errors).cpu().numpy())
                out["gradient"].append(gradient_alignment(ops, errors).cpu().numpy())
        return {k: np.stack(v) for k, v in out.items()}

    return {k: np.swapaxes(v, 0, 1) for k, v in  # (checkpoint, network, n_tasks, n_tasks)
            _over_networks(history, records, client=client, chunks=chunks, desc="task alignment").items()}
