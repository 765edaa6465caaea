"""The matrix-free KPFlow operators against dense autograd Jacobians, and the recurrent tasks."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from learning_dynamics import operators as O
from learning_dynamics import spectra
from learning_dynamics.tasks import recurrent as R

KINDS = ("rnn", "gru", "leaky")


class LeakyStep(nn.Module):
    """A user's own step, without the fast drive/recur path: h' = (1 - a) h + a tanh(W h + U x)."""

    def __init__(self, n_in, n_hidden, leak=0.3):
        super().__init__()
        self.n_hidden, self.leak = n_hidden, leak
        self.weight_hh = nn.Parameter(torch.zeros(n_hidden, n_hidden, dtype=torch.float64))
        self.weight_ih = nn.Parameter(torch.zeros(n_hidden, n_in, dtype=torch.float64))

    def forward(self, h, x):
        return (1 - self.leak) * h + self.leak * torch.tanh(h @ self.weight_hh.T + x @ self.weight_ih.T)


def toy(kind, hidden=4, trials=2, steps=5, n_in=3, g=1.5, seed=0):
    step = LeakyStep(n_in, hidden) if kind == "leaky" else O.make_step(kind, n_in, hidden)
    params = {k: v[0] for k, v in O.init_params(step, 2, g=g, seed=seed).items()}
    x = torch.randn(trials, steps, n_in, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    return step, params, x


def flat_jacobian(fn, params):
    """d fn / d params as a (outputs, n_params) matrix, by torch.autograd.functional (not torch.func)."""
    names = list(params)

    def of_tuple(*tensors):
        return fn(dict(zip(names, tensors)))

    jac = jacobian(of_tuple, tuple(params[n] for n in names))
    out = fn(params).numel()
    return torch.cat([j.reshape(out, -1) for j in jac], 1)


@pytest.mark.parametrize("kind", KINDS)
def test_every_operator_matches_dense_autograd(kind):
    step, params, x = toy(kind)
    ops = O.KPFlow(step, x, params)
    b, t, h = ops.shape
    size = b * t * h
    theta = O.step_params(step, params)
    zero = torch.zeros(ops.shape, dtype=torch.float64)
    p_dense = jacobian(lambda u: O.rollout(step, theta, x, forcing=u), zero).reshape(size, size)
    h_prev = torch.cat([torch.zeros(b, 1, h, dtype=torch.float64), ops.hidden[:, :-1]], 1)
    j_step = flat_jacobian(lambda th: torch.func.functional_call(step, th, (h_prev.reshape(-1, h), x.reshape(b * t, -1))), theta)
    j_traj = flat_jacobian(lambda th: O.rollout(step, th, x), theta)
    reference = {
        "P": p_dense,
        "P_adj": p_dense.T,
        "K": j_step @ j_step.T,
        "K_adj": (j_step @ j_step.T).T,
        "PKP": j_traj @ j_traj.T,
        "PP": p_dense @ p_dense.T,
    }
    for name, matrix in reference.items():
        assert torch.allclose(ops.dense(name), matrix, atol=1e-10, rtol=0), name
    # the library's own dense reference (torch.autograd.functional.jacobian) agrees too
    for name, matrix in O.dense_reference(ops).items():
        assert torch.allclose(matrix, reference[name], atol=1e-10, rtol=0), name
    # K* is K, P* is the transpose of P, and J_theta / J_theta^T are adjoint
    assert torch.allclose(ops.dense("K"), ops.dense("K").T, atol=1e-12)
    dtheta = {k: torch.randn_like(v) for k, v in theta.items()}
    z = torch.randn(ops.shape, dtype=torch.float64)
    lhs = (ops.J_theta(dtheta) * z).sum()
    rhs = sum((dtheta[k] * v).sum() for k, v in ops.J_theta_adj(z).items())
    assert abs(float(lhs - rhs)) < 1e-10
    assert torch.allclose(ops.PKP(z), ops.P(ops.K(ops.P_adj(z))), atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_P_is_causal_and_batched_products_match_single_ones(kind):
    step, params, x = toy(kind, steps=4)
    ops = O.KPFlow(step, x, params)
    z = torch.zeros(ops.shape, dtype=torch.float64)
    z[:, 2] = 1.0
    out = ops.P(z)
    assert torch.all(out[:, :2] == 0) and torch.all(out[:, 2] == 1.0)
    back = ops.P_adj(z)
    assert torch.all(back[:, 3] == 0) and torch.all(back[:, 2] == 1.0)
    stack = torch.randn(3, *ops.shape, dtype=torch.float64)
    for name in O.OPERATOR_NAMES:
        batched = ops.operator(name)(stack)
        single = torch.stack([ops.operator(name)(s) for s in stack])
        assert torch.allclose(batched, single, atol=1e-12), name


@pytest.mark.parametrize("kind, cell", [("rnn", nn.RNNCell), ("gru", nn.GRUCell)])
def test_steps_equal_torch_cells(kind, cell):
    step, params, x = toy(kind, hidden=6)
    torch_cell = cell(3, 6).double()
    torch_cell.load_state_dict(O.step_params(step, params))
    h = torch.randn(2, 6, dtype=torch.float64)
    ours = torch.func.functional_call(step, O.step_params(step, params), (h, x[:, 0]))
    assert torch.allclose(ours, torch_cell(x[:, 0], h), atol=1e-12)
    # the fast rollout path (drive + recur) and the generic one agree
    generic = []
    hh = torch.zeros(2, 6, dtype=torch.float64)
    for t in range(x.shape[1]):
        hh = torch_cell(x[:, t], hh)
        generic.append(hh)
    assert torch.allclose(O.rollout(step, params, x), torch.stack(generic, 1), atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_first_order_prediction_matches_a_small_gd_step(kind):
    step = LeakyStep(3, 8) if kind == "leaky" else O.make_step(kind, 3, 8)
    params = {k: v[0] for k, v in O.init_params(step, 3, g=1.0, seed=0).items()}
    x, y = R.memory_pro(4, 3, 3, 4, generator=0)
    predicted, actual = O.first_order_check(step, params, x, y, 1e-4)
    assert float((predicted - actual).norm() / actual.norm()) < 1e-3
    # the remainder is second order: ten times the step, about ten times the relative error
    p2, a2 = O.first_order_check(step, params, x, y, 1e-3)
    ratio = float((p2 - a2).norm() / a2.norm()) / float((predicted - actual).norm() / actual.norm())
    assert 5 < ratio < 20


def test_gradient_and_alignment_match_autograd():
    x, y, task = R.memory_multitask(3, 2, 2, 2, 2, noise=0.0, uniform=True, dtype=torch.float64)
    step = O.make_step("gru", 7, 6)
    params = {k: v[0] for k, v in O.init_params(step, 3, seed=3).items()}
    ops = O.KPFlow(step, x, params)
    errors = O.task_errors(params, ops.hidden, y, task, 4)
    assert torch.allclose(errors.sum(0), O.hidden_error(params, ops.hidden, y))
    grads = []
    for k in range(4):
        def loss_k(p, k=k):  # task k's share of the mean squared error
            out = O.readout(p, O.rollout(step, p, x))
            return (((out - y) ** 2).sum((1, 2)) * (task == k)).sum() / out.numel()
        g = torch.func.grad(loss_k)(params)
        grads.append(torch.cat([g[n].flatten() for n in O.step_params(step, params)]))
    grads = torch.stack(grads)
    ours = ops.gradient(errors.sum(0))
    full = torch.func.grad(O.mse_loss(step))(params, x, y)
    for name, value in ours.items():
        assert torch.allclose(value, full[name], atol=1e-12), name
    assert torch.allclose(O.gradient_alignment(ops, errors), O.cosine_matrix(grads), atol=1e-10)
    updates = (ops.dense("PKP") @ errors.reshape(4, -1).T).T
    assert torch.allclose(O.task_alignment(ops, errors), O.cosine_matrix(updates), atol=1e-10)


def test_spectra_effective_rank_and_participation_ratio():
    assert int(spectra.effective_rank(torch.tensor([1.0, 0.0, 0.0]))) == 1
    assert int(spectra.effective_rank(torch.ones(20))) == 19  # 19 of 20 equal values carry 95%
    s = torch.tensor([3.0, 2.0, 1.0])
    assert int(spectra.effective_rank(s, 0.9)) == 2  # 9 + 4 = 13 of 14
    assert float(spectra.participation_ratio(torch.ones(7))) == pytest.approx(7.0)
    assert float(spectra.participation_ratio(torch.tensor([1.0, 0.0]))) == pytest.approx(1.0)
    # randomised SVD of a matrix-free operator against a dense SVD
    step, params, x = toy("gru", hidden=5, steps=6)
    ops = O.KPFlow(step, x, params)
    exact = torch.linalg.svdvals(ops.dense("P"))[:5]
    approx = spectra.leading_spectrum(ops.P, ops.shape, 5, adjoint=ops.P_adj, n_iter=6, oversample=20)
    assert torch.allclose(approx, exact, rtol=1e-6)
    exact_k = torch.linalg.eigvalsh(ops.dense("PKP")).flip(0)[:4]
    assert torch.allclose(spectra.leading_spectrum(ops.PKP, ops.shape, 4, n_iter=4, oversample=6), exact_k, rtol=1e-6)
    # eigenpairs of K: the dense eigenvalues, and unit eigenvectors that K maps onto themselves
    dense_k = ops.dense("K")
    values, vectors = spectra.leading_eigenpairs(ops.K, ops.shape, 3, n_iter=4, oversample=6)
    assert torch.allclose(values, torch.linalg.eigvalsh(dense_k).flip(0)[:3], rtol=1e-6)
    assert torch.allclose(values.abs(), spectra.leading_spectrum(ops.K, ops.shape, 3, n_iter=4, oversample=6))
    flat = vectors.reshape(3, -1)
    assert torch.allclose(flat @ flat.T, torch.eye(3, dtype=flat.dtype), atol=1e-10)
    residual = (flat @ dense_k.T - values[:, None] * flat).norm(dim=1) / values.abs()
    assert float(residual.max()) < 1e-4  # Ritz vectors converge more slowly than Ritz values (about 1e-5 here)
    # the probe Gram: for the identity, its diagonal over the hidden index is exactly trials x time
    probes = spectra.rademacher(3, ops.shape, seed=1)
    gram = spectra.partial_gram(probes, "hidden")
    assert torch.allclose(torch.diagonal(gram), torch.full((5,), 12.0, dtype=torch.float64))
    # trajectories on a 2-d plane have effective rank 2 whatever the hidden size
    plane = torch.randn(3, 10, 2, dtype=torch.float64) @ torch.randn(2, 9, dtype=torch.float64)
    assert int(spectra.effective_rank(spectra.trajectory_singular_values(plane), 0.999)) == 2


@pytest.mark.parametrize("kind", ["rnn", "gru"])
def test_stacked_loss_and_rollout_match_the_vmapped_ones(kind):
    """The chapter trains with the stacked loss (gradients="stacked"); it must equal vmap over networks."""
    step = O.make_step(kind, 3, 6)
    params = O.init_params(step, 2, n_networks=3, g=[0.5, 1.0, 5.0], seed=2)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, 5, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(3, 4, 5, 2, generator=gen, dtype=torch.float64)
    forcing = torch.randn(3, 4, 5, 6, generator=gen, dtype=torch.float64)
    vmapped = torch.func.vmap(lambda p, xx, f: O.rollout(step, p, xx, forcing=f))(params, x, forcing)
    assert torch.allclose(O.rollout(step, params, x, forcing=forcing), vmapped, atol=1e-14)
    loss = O.mse_loss(step)
    assert torch.allclose(loss(params, x, y), torch.func.vmap(loss)(params, x, y), atol=1e-14)
    with pytest.raises(ValueError, match="drive\\(\\) and recur\\(\\)"):
        O.rollout(LeakyStep(3, 6), params, x)


def test_operator_ranks_and_histories_run_on_a_short_training():
    from learning_dynamics.train import train

    step = O.make_step("gru", 3, 8)
    params0 = O.init_params(step, 3, n_networks=2, g=[0.5, 2.0], seed=0, dtype=torch.float32)
    sampler = R.sampler(lambda n, gen: R.memory_pro(n, 2, 2, 3, generator=gen, dtype=torch.float32), 2, 8)
    x, y = R.memory_pro(4, 2, 2, 3, noise=0.0, uniform=True, dtype=torch.float32)
    run = train(O.mse_loss(step), params0, steps=6, lr=1e-2, optimizer="adam", data=sampler,
                record=O.recorder(step, x, y), record_every=3)
    assert run.records["hidden_rank"].shape == (3, 2)
    ranks = O.rank_history(step, run.records, x, every=2, n_probes=4)
    assert ranks["K"].shape == (2, 2) and ranks["spectra"]["P"].shape == (2, 2, 7)
    assert np.all(ranks["K"] >= 1) and np.all(ranks["PKP"] <= 7)
    final = O.final_spectra(step, run.records, x, 5, index=0, seed=1)
    ops = O.KPFlow(step, x, O.checkpoint(run.records, 0, 1, dtype=torch.float32))
    s = spectra.leading_spectrum(ops.P, ops.shape, 5, adjoint=ops.P_adj, n_iter=2, seed=1, dtype=torch.float32)
    assert final["K"].shape == (2, 5) and np.allclose(final["P"][1], (s / s[0]).numpy())


def test_bad_inputs_raise_clear_errors():
    step, params, x = toy("gru")
    with pytest.raises(ValueError, match="inputs must have shape"):
        O.KPFlow(step, x[0], params)
    with pytest.raises(ValueError, match="not a recurrent step"):
        O.KPFlow(_Linear(), x)
    with pytest.raises(ValueError, match="same shape"):
        O.KPFlow(_Shrinks(), x, {})
    with pytest.raises(ValueError, match="torch.nn.Module"):
        O.KPFlow(lambda h, x: h, x, params)
    ops = O.KPFlow(step, x, params)
    with pytest.raises(ValueError, match=r"z must have shape \(2, 5, 4\)"):
        ops.P(torch.zeros(2, 5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="z must have shape"):
        ops.K(torch.zeros(1, 1, 2, 5, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="h0 must have shape"):
        O.KPFlow(step, x, params, h0=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="missing the step parameters"):
        O.KPFlow(step, x, {"weight_ih": params["weight_ih"]})
    with pytest.raises(ValueError, match="kind must be one of"):
        O.make_step("lstm", 3, 4)
    with pytest.raises(ValueError, match="g must be"):
        O.init_params(step, 2, g=-1.0)
    with pytest.raises(ValueError, match="threshold"):
        spectra.effective_rank(torch.ones(3), 1.5)
    with pytest.raises(ValueError, match="keep must be one of"):
        spectra.partial_gram(torch.zeros(2, 2, 5, 4), "batch")
    with pytest.raises(ValueError, match="device"):
        O.KPFlow(step, x, params, device="tpu")
    with pytest.raises(ValueError, match="t_stim"):
        R.memory_pro(4, 0, 2, 2)
    with pytest.raises(ValueError, match="targets must have shape"):
        O.first_order_check(step, params, x, torch.zeros(2, 5, 3, dtype=torch.float64), 1e-3)
    with pytest.raises(ValueError, match="errors must have shape"):
        O.task_alignment(ops, torch.zeros(2, 5, 4, dtype=torch.float64))


class _Linear(nn.Module):
    """A feed-forward layer: not a recurrent step."""

    n_hidden = 4

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(7, 4).double()

    def forward(self, x):
        return self.layer(x)


class _Shrinks(nn.Module):
    n_hidden = 4

    def forward(self, h, x):
        return h[:, :2]


def test_memory_tasks_and_flip_flop():
    angles = torch.tensor([0.0, math.pi / 2])
    x, y = R.memory_task(angles, 2, 3, 4)
    assert x.shape == y.shape == (2, 9, 3)
    assert torch.all(x[:, :5, 0] == 1) and torch.all(x[:, 5:, 0] == 0)
    assert torch.allclose(x[1, :2, 1:], torch.tensor([0.0, 1.0], dtype=x.dtype).expand(2, 2), atol=1e-6)
    assert torch.all(x[:, 2:, 1:] == 0)  # memory task: the stimulus goes off
    assert torch.allclose(y[1, 5:, 1:], torch.tensor([0.0, 1.0], dtype=y.dtype).expand(4, 2), atol=1e-6)
    xa, ya = R.memory_task(angles, 2, 3, 4, anti=True, delay=True)
    assert torch.allclose(ya[:, :, 1:], -y[:, :, 1:]) and torch.all(xa[1, :, 2] == 1)
    xm, ym, task = R.memory_multitask(3, 2, 2, 2, 2, noise=0.0, uniform=True)
    assert xm.shape == (12, 8, 7) and ym.shape == (12, 8, 3) and task.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert torch.all(xm[:, :2, 3:].argmax(-1) == task[:, None]) and torch.all(xm[:, 2:, 3:] == 0)
    xf, yf = R.flip_flop(5, 30, n_bits=2, rate=0.2, generator=1)
    for trial in range(5):
        for bit in range(2):
            held = 0.0
            for t in range(30):
                if xf[trial, t, bit] != 0:
                    held = float(xf[trial, t, bit])
                assert float(yf[trial, t, bit]) == held
    # the sampler deals trials out so every network sees every task
    sample = R.sampler(lambda n, gen: R.memory_multitask(n // 4, 2, 2, 2, 2, generator=gen)[:2], 2, 8)
    xs, _ = sample(torch.Generator().manual_seed(0), 0)
    assert xs.shape == (2, 8, 8, 7)
    assert sorted(set(xs[0, :, 0, 3:].argmax(-1).tolist())) == [0, 1, 2, 3]


def test_operators_never_import_torch_dynamo():
    """Every product stays off the code paths that import torch._dynamo (seconds on first use).

    torch.func.vjp / grad import it for their backward pass, and a jvp in which
    an operation mixes a tensor with a tangent and one without evaluates a
    symbolic zero through PyTorch's Python reference kernels, which import it too.
    """
    import subprocess
    import sys

    code = """
import sys, torch
from learning_dynamics import operators as O
from learning_dynamics.tasks import recurrent as R
for kind in ("gru", "rnn"):
    step = O.make_step(kind, 3, 4)
    params = {k: v[0] for k, v in O.init_params(step, 3, g=1.5).items()}
    x, y = R.memory_pro(2, 2, 1, 2, generator=0)
    ops = O.KPFlow(step, x, params)
    z = torch.randn(3, *ops.shape, dtype=torch.float64)
    for name in O.OPERATOR_NAMES:
        ops.operator(name)(z), ops.operator(name)(z[0])
    ops.J_theta(params), ops.J_theta_adj(z), ops.gradient(z[0]), O.dense_reference(ops)
    O.first_order_check(step, params, x, y, 1e-3)
from learning_dynamics.train import train
stacked = O.init_params(step, 3, n_networks=2, g=[0.5, 2.0], dtype=torch.float32)
sampler = R.sampler(lambda n, gen: R.memory_pro(n, 2, 1, 2, generator=gen, dtype=torch.float32), 2, 4)
train(O.mse_loss(step), stacked, steps=2, lr=1e-2, optimizer="adam", data=sampler,
      record=O.recorder(step, x.float(), y.float()))
print("torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_eigenfunctions_of_k_and_hidden_pca():
    step = O.make_step("gru", 3, 4)
    params = O.init_params(step, 3, n_networks=2, g=[0.5, 1.5], seed=0)
    records = {O.PARAM_PREFIX + k: torch.stack([v, v]) for k, v in params.items()}  # two records, two networks
    x = torch.randn(2, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eig = O.eigenfunctions(step, records, x, 2, n_probes=64, seed=1)
    assert eig["values"].shape == (2, 2) and eig["profile"].shape == (2, 2, 5) and eig["vectors"].shape == (2, 2, 2, 5, 4)
    assert np.allclose(eig["profile"].sum(-1), 1.0)
    for n in range(2):  # against the dense K of the same network
        dense = O.KPFlow(step, x, O.checkpoint(records, -1, n)).dense("K")
        exact = torch.linalg.eigvalsh(dense).flip(0)
        assert np.allclose(eig["values"][n], exact[:2].numpy(), rtol=1e-5)  # 3 Krylov blocks
        assert abs(eig["share"][n, 0] - float(exact[0] / exact.sum())) < 0.2 * float(exact[0] / exact.sum())
    ring = torch.stack([torch.cos(torch.linspace(0, 6.28, 8)), torch.sin(torch.linspace(0, 6.28, 8))], -1)
    hidden = (ring @ torch.randn(2, 6, generator=torch.Generator().manual_seed(0)))[:, None].expand(8, 3, 6)  # a plane
    pca = O.hidden_pca(hidden, 3)
    assert pca["scores"].shape == (8, 3, 3) and np.isclose(pca["explained"][:2].sum(), 1.0)
