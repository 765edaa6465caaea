"""Multitask sparse parity data and the ReLU-network emergence runner (learning_dynamics.emergence)."""

from __future__ import annotations

import learning_dynamics  # noqa: F401, I001  first: its thread policy applies before torch loads

import numpy as np
import pytest
import torch

from learning_dynamics import emergence as em
from learning_dynamics import linear, tasks
from learning_dynamics.tasks import parity

from test_devices import DEVICE, audit, meta_device  # noqa: F401  (the fixture)


def _batch(task, size, seed=0):
    return parity.parity_sampler(task, size)(torch.Generator().manual_seed(seed), 0)


def test_skill_frequencies_follow_the_power_law():
    task = parity.parity_task(5, 0.6, n_networks=2, seed=3)
    x, _ = _batch(task, 100_000)
    counts = x[..., :5].mean(1).numpy()  # (networks, skills)
    p = tasks.skill_frequencies(5, 0.6)
    np.testing.assert_allclose(p / p[0], np.arange(1, 6) ** -1.6)
    np.testing.assert_allclose(counts, np.broadcast_to(p, counts.shape), atol=4 * np.sqrt(0.25 / 100_000))


def test_control_bits_are_one_hot_and_task_bits_uniform():
    task = parity.parity_task(n_networks=3, seed=1)
    x, _ = _batch(task, 20_000)
    assert x.shape == (3, 20_000, 37)
    control, bits = x[..., :5], x[..., 5:]
    assert torch.all((control == 0) | (control == 1)) and torch.all(control.sum(-1) == 1)
    assert torch.all((bits == 0) | (bits == 1))
    assert float((bits.mean(1) - 0.5).abs().max()) < 4 * np.sqrt(0.25 / 20_000) * 1.5


def test_skills_use_disjoint_bits_per_network():
    task = parity.parity_task(n_networks=4, seed=2)
    assert task.skill_bits.shape == (4, 5, 3)
    for bits in task.skill_bits:
        assert len(set(bits.flatten().tolist())) == 15
    assert not torch.equal(task.skill_bits[0], task.skill_bits[1]), "each network draws its own skills"


def test_parity_targets_are_balanced_and_match_the_skills_bits():
    task = parity.parity_task(n_networks=2, seed=4, strength=5.0)
    x, y = _batch(task, 50_000)
    assert set(torch.unique(y).tolist()) == {-5.0, 5.0}
    for k in range(5):
        rows = x[..., k] == 1
        assert abs(float((y[rows] > 0).double().mean()) - 0.5) < 0.03, f"skill {k} parity balanced"
    n, b = 0, 0  # recompute one target by hand
    k = int(x[n, b, :5].argmax())
    odd = int(x[n, b, 5 + task.skill_bits[n, k]].sum()) % 2
    assert float(y[n, b]) == (5.0 if odd else -5.0)
    g = parity.skill_basis(task, x)
    assert torch.equal(g.abs().sum(-1), torch.ones_like(y)) and torch.equal(5.0 * g.sum(-1), y)


def test_fast_sampler_targets_agree_with_the_reference_targets():
    task = parity.parity_task(n_networks=3, n_bits=16, seed=8)
    x, y = task.sample(torch.Generator().manual_seed(1), 3000)
    assert torch.equal(y, task.targets(x)), "the drawn skill's parity, read directly, is the full target"
    assert torch.all(x[..., :5].sum(-1) == 1) and torch.all((x[..., 5:] == 0) | (x[..., 5:] == 1))


def test_blocked_forward_matches_one_block():
    params = em.relu_init(2, 37, 7, 0.5, seed=2)
    x = torch.randint(0, 2, (2, 3 * em._CHUNK + 5, 37), generator=torch.Generator().manual_seed(0)).double()
    hidden = (torch.arange(7)[None, :] < torch.tensor([[4], [7]])).double()
    whole = em._output(params, em._hidden(params, x, hidden))
    torch.testing.assert_close(em.relu_forward(params, x, hidden), whole, rtol=1e-13, atol=1e-13)


def test_probe_is_exactly_balanced_per_skill():
    task = parity.parity_task(n_networks=2, seed=5)
    x, y = parity.parity_probe(task, 64, seed=1)
    per = y.reshape(2, 5, 64)
    assert torch.all(per.mean(-1) == 0) and torch.allclose(per.std(-1, unbiased=False), torch.full((2, 5), 5.0,
                                                                                                   dtype=torch.float64))
    assert torch.all(x[..., :5].reshape(2, 5, 64, 5).argmax(-1) == torch.arange(5)[None, :, None])
    with pytest.raises(ValueError, match="n_per_skill must be even"):
        parity.parity_probe(task, 63)


def test_learned_fraction_is_one_for_the_target_and_zero_for_a_constant():
    task = parity.parity_task(n_networks=2, seed=6)
    x, y = parity.parity_probe(task, 200)
    y = y.reshape(2, 5, -1)
    np.testing.assert_allclose(em.learned_fraction(y, y, 5.0).numpy(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(em.learned_fraction(torch.full_like(y, 3.0), y, 5.0).numpy(), 0.0, atol=1e-12)
    np.testing.assert_allclose(em.learned_fraction(-0.5 * y + 2.0, y, 5.0).numpy(), -0.5, rtol=1e-12)
    zero = {"W1": torch.zeros(2, 4, 37, dtype=torch.float64), "b1": torch.zeros(2, 4, dtype=torch.float64),
            "w2": torch.zeros(2, 4, dtype=torch.float64), "b2": torch.ones(2, dtype=torch.float64)}
    assert torch.all(em.skill_fractions(zero, task, (x, y.reshape(2, -1))) == 0)
    with pytest.raises(ValueError, match="targets must vary"):
        em.learned_fraction(y, torch.ones_like(y), 5.0)
    with pytest.raises(ValueError, match="one shape"):
        em.learned_fraction(y[..., :3], y, 5.0)


@pytest.mark.parametrize("masked", [False, True])
def test_closed_form_gradients_match_autograd(masked):
    task = parity.parity_task(n_networks=3, seed=7)
    params = em.relu_init(3, 37, 8, 0.3, seed=1)
    x, y = _batch(task, 40)
    weight = torch.full((3, 40), 1 / 40, dtype=torch.float64)
    hidden = (torch.arange(8)[None, :] < torch.tensor([[3], [8], [5]])).double() if masked else None
    grads, loss = em.relu_grad_and_value(params, x, y, weight, hidden)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    ref = em.relu_loss(leaves, x, y, weight, hidden)
    auto = torch.autograd.grad(ref.sum(), list(leaves.values()))
    torch.testing.assert_close(loss, ref.detach())
    for (name, g), a in zip(grads.items(), auto):
        torch.testing.assert_close(g, a, msg=name)
    torch.testing.assert_close(ref.detach(), ((em.relu_forward(params, x, hidden) - y) ** 2).mean(-1))


def test_parity_runs_shapes_and_layouts():
    run = em.parity_runs(2, width=6, steps=4, batch_size=8, record_every=2, n_probe=10, lr=0.05)
    assert run.records["fraction"].shape == (3, 2, 5) and run.steps.tolist() == [0, 2, 4]
    np.testing.assert_allclose(run.times, 0.05 * run.steps)
    assert run.params["W1"].shape == (2, 6, 37) and run.final["skill_bits"].shape == (2, 5, 3)
    assert em.half_times(run).shape == (2, 5) and em.half_times(run, mean=True).shape == (5,)

    wide = em.parity_runs(2, widths=[2, 5], steps=3, batch_size=8, record_every=3, n_probe=10)
    assert wide.records["fraction"].shape == (2, 4, 5) and wide.final["widths"].tolist() == [2, 2, 5, 5]
    w2 = wide.params["w2"]
    assert torch.all(w2[:2, 2:] == 0) and torch.all(wide.params["W1"][:2, 2:] == 0), "masked units stay off"

    data = em.parity_runs(3, n_samples=[4, 10], steps=2, record_every=1, n_probe=10)
    assert data.records["fraction"].shape == (3, 6, 5) and data.final["n_samples"].tolist() == [4] * 3 + [10] * 3
    assert data.final["seed_index"].tolist() == [0, 1, 2, 0, 1, 2]


def test_parity_runs_are_reproducible_and_seeded():
    a, b = (em.parity_runs(2, width=6, steps=5, batch_size=8, record_every=5, n_probe=10, seed=3) for _ in range(2))
    np.testing.assert_array_equal(a.records["fraction"], b.records["fraction"])
    c = em.parity_runs(2, width=6, steps=5, batch_size=8, record_every=5, n_probe=10, seed=4)
    assert not np.array_equal(a.records["fraction"], c.records["fraction"])


def test_a_small_network_learns_the_most_frequent_skill_first():
    """Width 64, 16 task bits: skill 1 emerges (fraction > 0.9) while skill 3 stays near 0."""
    run = em.parity_runs(1, n_bits=16, width=64, init=0.01, lr=0.05, steps=900, batch_size=200, record_every=50,
                         n_probe=100, seed=0)
    end = run.at_end("fraction")[0]
    assert end[0] > 0.9 and abs(end[2]) < 0.2, end


def test_time_theory_is_the_calibrated_sigmoid():
    p = tasks.skill_frequencies(5, 0.6)
    t = np.linspace(0, 2000, 4001)
    curves = em.time_theory(t, p, 5.0, 0.01, 22.0)
    c = 3.6 * 5 / 0.01**2 - 1
    authors = 1 / (1 + c * np.exp(-(p[:, None] * 5 * 4 / 22.0) * t[None, :]))  # plot_emergence_all.theo_time, t = lr T
    np.testing.assert_allclose(curves, authors, rtol=1e-12)
    half = em.time_half_times(p, 5.0, 0.01, 22.0)
    np.testing.assert_allclose(half, linear.crossing_times(t, curves, 0.5), rtol=1e-4)
    np.testing.assert_allclose(half / half[0], np.arange(1, 6) ** 1.6, rtol=1e-12)
    assert em.calibrate_time(half[2], p[2], 5.0, 0.01) == pytest.approx(22.0, rel=1e-12)


def test_data_and_width_theory_follow_the_authors_curves():
    p = tasks.skill_frequencies(5, 0.6)
    d = np.array([100.0, 1000.0, 5000.0])
    np.testing.assert_allclose(em.data_theory(d, p, 800.0),
                               1 - np.sqrt(np.clip(1 - d[None, :] * p[:, None] / 800.0, 0, None)))
    w = em.width_theory(np.arange(1, 21), 5, 4.0)
    assert w.shape == (5, 20) and w[0, 3] == 1 and w[1, 3] == 0 and w[1, 5] == 0.5 and w[4, 19] == 1


def test_runner_honours_the_device(meta_device):  # noqa: F811
    cpu = em.parity_runs(2, width=4, steps=2, batch_size=6, record_every=1, n_probe=4)
    result, problems = audit(lambda: em.parity_runs(2, width=4, steps=2, batch_size=6, record_every=1, n_probe=4,
                                                    device=DEVICE), meta_device)
    assert not problems, "\n".join(problems[:20])
    assert result.records["fraction"].shape == cpu.records["fraction"].shape


@pytest.mark.parametrize("call, match", [
    (lambda: em.parity_runs(0, steps=1), "n_seeds must be >= 1"),
    (lambda: em.parity_runs(1, steps=0), "steps must be >= 1"),
    (lambda: em.parity_runs(1, steps=1, lr=-0.1), "lr must be"),
    (lambda: em.parity_runs(1, steps=1, init=0.0), "init must be"),
    (lambda: em.parity_runs(1, steps=1, widths=[0, 3]), "widths must be"),
    (lambda: em.parity_runs(1, steps=1, widths=[2.5]), "widths must be"),
    (lambda: em.parity_runs(1, steps=1, n_samples=[1]), "n_samples must be"),
    (lambda: em.parity_runs(1, steps=1, widths=[2], n_samples=[4]), "not both"),
    (lambda: em.parity_runs(1, steps=1, n_probe=3), "n_probe must be even"),
    (lambda: em.parity_runs(1, steps=1, device="tpu"), "device must be"),
    (lambda: parity.parity_task(6, n_bits=16), "n_skills x bits_per_skill must be <= n_bits"),
    (lambda: parity.parity_task(alpha=-1.0), "alpha must be"),
    (lambda: em.time_theory([1.0], [0.5, -0.5], 5.0, 0.01, 22.0), "frequencies must be"),
    (lambda: em.time_theory([1.0], [1.0], 5.0, 0.01, 22.0, u0=6.0), "u0 must be < strength"),
    (lambda: em.calibrate_time(0.0, 1.0, 5.0, 0.01), "half_time must be"),
    (lambda: em.data_theory([100.0], [1.0], 0.0), "calibration must be"),
    (lambda: em.width_theory([4.0], 0, 4.0), "n_skills must be >= 1"),
    (lambda: em.half_times(linear.crossing_times), "run must be"),
])
def test_bad_input_raises_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
