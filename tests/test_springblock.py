"""The spring-block chain: stationary states against their closed forms, and bad inputs."""

import numpy as np
import pytest

from learning_dynamics import separation, springblock


def naive_chain(mu_fwd, mu_back, steps, n_blocks=7, k=1.0, eta=0.01, pull=1.0):
    """An independent, block-by-block loop of the noise-free first-order update (Jacobi sweep)."""
    x = [0.0] * n_blocks
    for _ in range(steps):
        new = list(x)
        for i in range(n_blocks):
            left = x[i - 1] if i > 0 else 0.0
            right = x[i + 1] if i < n_blocks - 1 else pull
            force = k * (right - 2 * x[i] + left)
            threshold = mu_fwd if force > 0 else mu_back
            if abs(force) > threshold:
                new[i] = x[i] + eta * (force - np.sign(force) * threshold)
        x = new
    return np.array(x)


def test_dry_friction():
    force = np.array([-1.0, -0.2, 0.0, 0.05, 0.5])
    assert springblock.dry_friction(force, 0.1, 0.3) == pytest.approx([-0.7, 0.0, 0.0, 0.0, 0.4])


def test_vectorised_chain_matches_a_naive_loop():
    run = springblock.first_order([0.02, 0.05], [0.04, 0.05], 0.0, steps=300)
    for cell, (mu_f, mu_b) in enumerate([(0.02, 0.04), (0.05, 0.05)]):
        assert run.x[cell, 0] == pytest.approx(naive_chain(mu_f, mu_b, 300), abs=1e-13)


@pytest.mark.parametrize("mu", [0.0, 0.01, 0.03, 0.05, 0.1, 0.2, 0.5, 1.5])
def test_zero_noise_stationary_state_is_the_closed_form(mu):
    run = springblock.first_order(mu, mu, 0.0, steps=10_000)
    d = run.d_final[0]
    theory = springblock.profile_no_noise(mu)
    assert d == pytest.approx(theory, abs=1e-6)
    moved = run.x[0] > 0
    assert np.abs(np.diff(d) - mu)[moved] == pytest.approx(0.0, abs=1e-6)   # k (d_{l+1} - d_l) = mu, k = 1
    assert theory.sum() == pytest.approx(1.0)


def test_zero_noise_closed_form_is_vectorised_and_consistent():
    mu = np.array([0.0, 0.05, 0.4, 2.0, 7.0])
    d = springblock.profile_no_noise(mu, n_blocks=5, k=2.0, pull=3.0)
    assert d.shape == (5, 6)
    assert d.sum(-1) == pytest.approx(np.full(5, 3.0))
    assert d[0] == pytest.approx(np.full(6, 0.5))                   # no friction: equal loads
    assert d[3] == pytest.approx([0, 0, 0, 0, 1.0, 2.0])            # mu/k = 1: two springs, steps of 1
    assert d[4] == pytest.approx([0, 0, 0, 0, 0, 3.0])              # mu > k y: nothing moves
    for i, m in enumerate(mu):
        assert d[i] == pytest.approx(springblock.profile_no_noise(m, n_blocks=5, k=2.0, pull=3.0))


def test_large_noise_profiles():
    cells = dict(mu_fwd=[0.1, 0.1, 0.05], mu_back=[0.1, 0.1, 0.1], eps=[0.2, 0.5, 0.5])
    run = springblock.first_order(**cells, replicas=32, seed=3)
    assert np.abs(run.d_mean[:2] - 1 / 8).max() < 0.02
    ratchet = run.d_mean[2]
    assert np.all(np.diff(ratchet) < 0)
    slope = np.polyfit(np.arange(8), ratchet, 1)[0]
    assert slope == pytest.approx(-(0.1 - 0.05) / 2, rel=0.1)
    theory = springblock.profile_large_noise(cells["mu_fwd"], cells["mu_back"])
    assert np.abs(run.d_mean - theory).max() < 0.02
    assert theory.sum(-1) == pytest.approx(np.ones(3))


def test_chain_diagram_signs_and_shape():
    run = springblock.chain_diagram([0.2, 0.02], [0.5, 0.0], asymmetry=1.5, replicas=8, steps=6000, seed=1)
    assert run.d_mean.shape == (2, 2, 8)
    c = run.curvature
    assert c[0, 1] < 0 < c[1, 0]      # concave at high friction without noise, convex at low friction shaken
    assert c == pytest.approx(separation.curvature(springblock.profile(run.d_mean, 1.0)))


def test_second_order_without_noise_freezes_in_static_equilibrium():
    run = springblock.second_order([0.003, 0.01], [0.004, 0.01], 0.0, k=0.1, steps=14_000)
    force = springblock.spring_forces(run.x, 0.1, 1.0)
    assert np.all(force <= np.array([0.003, 0.01])[:, None, None] + 1e-6)   # still creeping towards F = mu
    assert np.all(force >= -np.array([0.004, 0.01])[:, None, None] - 1e-6)
    assert run.d_final[0, 0] == pytest.approx(springblock.profile_no_noise(0.003, k=0.1), abs=1e-4)


def test_records_and_averages():
    run = springblock.first_order(0.1, 0.1, 0.3, replicas=4, steps=1000, record_every=100, average_last=0.2)
    assert run.times == pytest.approx(0.01 * np.arange(0, 1001, 100))
    assert run.records["x_mean"].shape == (11, 7)
    assert run.x.shape == (4, 7)
    assert run.d_mean.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(mu_fwd=-0.1, mu_back=0.1, eps=0.1), "mu_fwd must be >= 0"),
    (dict(mu_fwd=0.1, mu_back=-0.1, eps=0.1), "mu_back must be >= 0"),
    (dict(mu_fwd=0.1, mu_back=0.1, eps=-1.0), "eps must be >= 0"),
    (dict(mu_fwd=[0.1, 0.2], mu_back=[0.1, 0.2, 0.3], eps=0.1), "broadcast"),
    (dict(mu_fwd=0.1, mu_back=0.1, eps=0.1, eta=0.6), "eta \\* k must be < 0.5"),
    (dict(mu_fwd=0.1, mu_back=0.1, eps=0.1, n_blocks=0), "n_blocks must be"),
    (dict(mu_fwd=np.nan, mu_back=0.1, eps=0.1), "mu_fwd must be finite"),
])
def test_bad_inputs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        springblock.first_order(**kwargs, steps=10)


def test_bad_closed_form_and_sde_inputs():
    with pytest.raises(ValueError, match="mu must be finite and >= 0"):
        springblock.profile_no_noise(-0.1)
    with pytest.raises(ValueError, match="mu_back must be finite and >= 0"):
        springblock.profile_large_noise(0.1, -0.2)
    with pytest.raises(ValueError, match="mu_fwd must be >= 0"):
        springblock.second_order(-0.1, 0.1, 0.0, steps=10)
    with pytest.raises(ValueError, match="dt \\* damping must be < mass"):
        springblock.second_order(0.1, 0.1, 0.0, dt=2.0, steps=10)
    with pytest.raises(ValueError, match="mass must be"):
        springblock.second_order(0.1, 0.1, 0.0, mass=0.0, steps=10)


def test_the_chain_runs_on_the_cpu_only_and_says_so():
    with pytest.raises(ValueError, match="device must be 'cpu'.*got 'cuda"):
        springblock.first_order(0.1, 0.1, 0.0, steps=10, device="cuda")
    with pytest.raises(ValueError, match="device"):
        springblock.second_order(0.1, 0.1, 0.0, steps=10, device="tpu")
