"""Closed forms of `linear` against independent numerical integration and autograd."""

import numpy as np
import pytest
import torch

from learning_dynamics import linear, tasks
from learning_dynamics.ode import integrate as integrate_ode


def integrate(rhs, y0, t):
    """Rows: the state's components; columns: the times (from t = 0)."""
    return integrate_ode(rhs, t, np.atleast_1d(y0), rtol=1e-12, atol=1e-14).T


@pytest.mark.parametrize("target,u0,imbalance,rate", [(5, 0.01, 0, 0.3), (1, 0.3, 2, 1), (2, 3, 0.5, 0.7), (1, -0.5, 1, 1), (1, 0.5, -20, 1)])
def test_mode_product_matches_integrated_product_ode(target, u0, imbalance, rate):
    t = np.linspace(0, 8, 60)
    ode = integrate(lambda u: rate * np.sqrt(imbalance**2 + 4 * u**2) * (target - u), u0, t)[0]
    np.testing.assert_allclose(linear.mode_product(t, target, u0, imbalance, rate), ode, rtol=1e-8, atol=1e-10)


def test_mode_product_matches_two_layer_flow():
    """Integrate the two layers themselves, not the reduced product equation."""
    a0, b0, target, p = 0.7, -0.2, 1.5, 0.8
    t = np.linspace(0, 10, 50)
    z = integrate(lambda z: [-p * z[1] * (z[0] * z[1] - target), -p * z[0] * (z[0] * z[1] - target)], [a0, b0], t)
    theory = linear.mode_product(t, target, a0 * b0, a0**2 - b0**2, p)
    np.testing.assert_allclose(theory, z[0] * z[1], rtol=1e-8, atol=1e-10)


def test_sigmoid_is_balanced_special_case_and_half_time():
    t = np.linspace(0, 6, 100)
    np.testing.assert_allclose(linear.mode_product(t, 5, 0.01, 0.0, 0.3), linear.sigmoid_mode(t, 5, 0.01, 0.3), rtol=1e-12)
    t_half = linear.sigmoid_half_time(5, 0.01, 0.3)
    assert linear.sigmoid_mode(t_half, 5, 0.01, 0.3) == pytest.approx(2.5, rel=1e-12)


def test_lazy_limit_is_exponential():
    t = np.linspace(0, 0.5, 20)
    big = 1e4
    lazy = 1 - (1 - 0.2) * np.exp(-big * 1e-3 * t)
    np.testing.assert_allclose(linear.mode_product(t, 1.0, 0.2, big, 1e-3), lazy, rtol=1e-3)


def test_linear_model_half_time():
    assert linear.one_layer_mode(linear.one_layer_half_time(0.4), 3.0, 0.4) == pytest.approx(1.5)


def test_gamma_plus_is_fixed_point_of_the_width_toy_flow():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 0.5, 50), rng.normal(0, 0.5, 50)
    sigma0, s0 = np.mean(a**2 + b**2) / 2, np.mean(a * b)

    def rhs(z):
        a, b = z[:50], z[50:]
        err = np.mean(a * b) - 1.0
        return np.concatenate([-err * b, -err * a])

    z = integrate(rhs, np.concatenate([a, b]), np.array([0.0, 60.0]))[:, -1]
    growth = (z[:50] + z[50:]) / (a + b)
    np.testing.assert_allclose(growth**2, linear.gamma_plus(sigma0, s0, 1.0), rtol=1e-7)


def test_product_growth_validates():
    with pytest.raises(ValueError, match="minus"):
        linear.product_growth(1.0, 1.0, -1.0, 1.0)
    with pytest.raises(ValueError, match="t must be"):
        linear.product_growth(-1.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="u0"):
        linear.mode_product(1.0, 1.0, -0.1, 0.0)
    with pytest.raises(ValueError, match="S0"):
        linear.gamma_plus(1.0, 2.0, 1.0)


def random_rotations(d, seed):
    gen = torch.Generator().manual_seed(seed)
    u, _, vt = torch.linalg.svd(torch.randn(d, d, generator=gen, dtype=torch.float64))
    r, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return u, vt, r


def test_lambda_balanced_init_conserved_matrix_and_product():
    u, vt, r = random_rotations(3, 1)
    lams = torch.tensor([-2.0, 0.0, 3.5], dtype=torch.float64)
    svals = torch.tensor([[0.5, 1.0, 2.0]] * 3, dtype=torch.float64)
    w1, w2 = linear.lambda_balanced_init(lams, svals, u, vt, r)
    q = linear.conserved_matrix(w1, w2)
    torch.testing.assert_close(q, lams[:, None, None] * torch.eye(3, dtype=torch.float64).expand(3, 3, 3))
    torch.testing.assert_close(torch.linalg.svdvals(w2 @ w1), svals.flip(-1))


def test_ntk_matches_autograd_jacobian():
    gen = torch.Generator().manual_seed(2)
    w1, w2 = torch.randn(3, 2, generator=gen, dtype=torch.float64), torch.randn(2, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 4, generator=gen, dtype=torch.float64)

    def outputs(w1, w2):  # ordered as (output index, sample)
        return (w2 @ w1 @ x).reshape(-1)

    j1, j2 = torch.autograd.functional.jacobian(outputs, (w1, w2))
    jac = torch.cat([j1.reshape(8, -1), j2.reshape(8, -1)], dim=1)
    torch.testing.assert_close(linear.ntk_two_layer(w1, w2, x), jac @ jac.T)


def test_kernel_distance_properties():
    k = torch.eye(4, dtype=torch.float64) + 0.1
    assert float(linear.kernel_distance(k, 3 * k)) == pytest.approx(0.0, abs=1e-15)
    assert float(linear.kernel_distance(k, -k)) == pytest.approx(2.0)


def test_aligned_closed_form_grams_match_gradient_descent():
    x, y = tasks.random_regression(10, 2, 2, seed=3)
    lams, scales = np.array([-1.0, 0.3, 2.0]), np.array([1.0, 1.0, 2.0])
    lr, steps = 0.001, 5000
    run = linear.lambda_grid_runs(x, y, lams, scales, lr=lr, steps=steps, seed=0, aligned=True)
    u, s, vt = np.linalg.svd(y @ x.T / 10)
    for j, (lam, scale) in enumerate(zip(lams, scales)):
        w1tw1, w2w2t = linear.aligned_layer_grams(lr * steps, lam, s / scale, np.full(2, np.sqrt(scale)), u, vt.T)
        np.testing.assert_allclose(run.at_end("w1tw1")[j], w1tw1, atol=2e-3)
        np.testing.assert_allclose(run.at_end("w2w2t")[j], w2w2t, atol=2e-3)


def test_whiten_gives_identity_covariance():
    x = linear.whiten(np.random.default_rng(0).normal(size=(3, 20)))
    np.testing.assert_allclose(x @ x.T / 20, np.eye(3), atol=1e-12)
    with pytest.raises(ValueError, match="number of samples"):
        linear.whiten(np.ones((3, 3)))


def test_random_regression_with_a_fixed_target_spectrum():
    x, y = tasks.random_regression(10, 2, 2, seed=4, singular_values=(0.54, 0.14))
    np.testing.assert_allclose(x @ x.T / 10, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(np.linalg.svd(y @ x.T / 10, compute_uv=False), [0.54, 0.14], rtol=1e-12)
    with pytest.raises(ValueError, match="singular_values must be 2"):
        tasks.random_regression(10, 2, 2, seed=0, singular_values=(1.0,))


def test_every_neuron_of_the_width_toy_shares_one_growth_factor():
    # under discrete GD every (a_i + b_i) is multiplied by the same factor at each step: an identity, not a claim
    toy = linear.width_toy_runs(np.array([0.1, 3.0]), 50, 1.0, lr=1e-3, steps=2000, n_seeds=2, seed=0, record_every=500)
    assert np.max(toy.final["growth"].std(axis=1) / toy.final["growth"].mean(axis=1)) < 1e-8


def test_layerwise_flow_integrates_the_two_layers_of_the_sigmoid_mode():
    t = np.linspace(0, 6, 40)
    a, b = linear.layerwise_flow(t, [0.05, 0.05], 0.05, 2.0, [0.5, 1.0])
    np.testing.assert_allclose(a * b, linear.sigmoid_mode(t[:, None], 2.0, 0.05**2, np.array([0.5, 1.0])), rtol=1e-8)


def test_integrate_rejects_times_that_go_backwards():
    from learning_dynamics.ode import integrate

    with pytest.raises(ValueError, match="t must be a non-empty, non-decreasing"):
        integrate(lambda y: -y, [1.0, 0.0], [1.0])


def _unwhitened(seed=0):
    return tasks.random_regression(10, 20, 2, seed=seed, whitened=False)


def test_zero_product_init_mirrors_the_halves():
    w1, w2 = linear.zero_product_init([-0.5, 0.0, 0.5], 20, 20, 2, init_scale=0.1, seed=3)
    assert torch.all((w2 @ w1).abs() < 1e-15)
    ratio = w1.norm(dim=(-2, -1)) / w2.norm(dim=(-2, -1))
    assert ratio[2] / ratio[1] == pytest.approx(6.0) and ratio[1] / ratio[0] == pytest.approx(6.0)
    with pytest.raises(ValueError, match="hidden must be even"):
        linear.zero_product_init([0.0], 3, 5, 2, init_scale=0.1, seed=0)


def test_zero_product_lazy_limit_is_second_order_and_matches_gd():
    x, y = _unwhitened()
    lams, scales = np.array([-0.25, 0.0, 0.3]), np.array([200.0, 400.0])
    settings = dict(hidden=20, init_scale=0.1, lr=0.01, steps=800, seed=1)
    theory = linear.zero_product_kernel_theory(x, y, lams, scales, **settings)
    # the first-order kernel change vanishes, so doubling the scale divides the distance by 2^4
    assert np.allclose(theory[:, 0] / theory[:, 1], 16.0, rtol=0.02)
    lam_grid, scale_grid = np.meshgrid(lams, scales, indexing="ij")
    gd = linear.zero_product_runs(x, y, lam_grid.ravel(), scale_grid.ravel(), **settings)
    assert np.allclose(gd.final["kernel_distance"].reshape(theory.shape), theory, rtol=0.02)


def test_zero_product_runs_in_chunks_are_bitwise_the_same():
    x, y = _unwhitened(2)
    lams, scales = np.array([-0.5, 0.0, 0.25, 0.5]), np.array([0.5, 1.0, 5.0, 50.0])
    settings = dict(hidden=20, init_scale=0.1, lr=0.01, steps=30, seed=4)
    whole = linear.zero_product_runs(x, y, lams, scales, **settings)
    parts = linear.zero_product_runs(x, y, lams, scales, chunks=3, **settings)
    assert np.array_equal(whole.final["kernel_distance"], parts.final["kernel_distance"])


def test_class_scatter_and_neural_collapse_by_hand():
    rng = np.random.default_rng(0)
    feats, labels = rng.standard_normal((3, 12)), np.arange(12) % 3
    within, between = linear.class_scatter(torch.as_tensor(feats), torch.as_tensor(labels), 3)
    means = np.stack([feats[:, labels == c].mean(1) for c in range(3)], 1)
    centred = feats - means[:, labels]
    assert np.allclose(within.numpy(), centred @ centred.T / 12)
    spread = means - feats.mean(1, keepdims=True)
    assert np.allclose(between.numpy(), spread @ spread.T / 3)
    collapsed = torch.as_tensor(means[:, labels])
    assert float(linear.neural_collapse(collapsed, torch.as_tensor(labels), 3)) < 1e-20


@pytest.mark.parametrize("lr", [0.1, 0.05])
def test_collapse_closed_form_matches_gd_to_first_order_in_the_step(lr):
    steps = int(round(150 / lr))
    run = linear.collapse_runs(3, 8, 6, [0.05, 0.2], within=1e-4, lr=lr, steps=steps, n_seeds=2, seed=0,
                               record_every=steps // 10)
    nc1, between, within = linear.collapse_closed_form(run.times, 8, 3, run.final["u0"], run.final["within0"])
    assert np.allclose(run.trajectory("between"), between, rtol=0.6 * lr)
    assert np.allclose(run.trajectory("within"), within, rtol=0.6 * lr)
    assert np.allclose(run.trajectory("nc1"), nc1, rtol=0.6 * lr)
    with pytest.raises(ValueError, match="dim must be >= n_classes"):
        linear.collapse_runs(3, 8, 2, [0.1], within=1e-4, lr=lr, steps=2, n_seeds=1, seed=0, record_every=1)
