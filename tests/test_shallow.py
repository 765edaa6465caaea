"""Unit tests of learning_dynamics.shallow: the exact solution of the 1-D linear network (Xu & Ziyin)."""

import numpy as np
import pytest
import torch

from learning_dynamics import shallow

T = np.linspace(0.0, 8.0, 33)


def rel_error(a, b, keys=("F", "loss", "norm_u", "norm_w", "cos", "ntk")):
    return max(float(np.max(np.abs(a[k] - b[k]) / np.max(np.abs(b[k])))) for k in keys)


def ode_observables(t, u0, w0, **hyper):
    u, w = shallow.integrate_flow(t, u0, w0, **hyper)
    col = {k: np.asarray(v, dtype=np.float64)[..., None] for k, v in hyper.items()}
    return shallow.observables_of_weights(u, w, **col), (u, w)


CASES = [  # gamma, c, eta_u, eta_w, init scale
    (1.0, 1.0, 1.0, 1.0, 0.1),  # alignment from a small init
    (0.05, 0.2, 1.0, 3.0, 1.0),  # unequal rates, output overshoots the target
    (0.3, -0.7, 2.0, 0.5, 0.5),  # negative target
    (1.0, 0.1, 1.0, 1.0, 1.0),  # large init (kernel)
    (0.5, 0.0, 1.0, 1.0, 0.5),  # zero target
]


@pytest.mark.parametrize("gamma, c, eta_u, eta_w, scale", CASES)
def test_closed_form_matches_ode_integration(gamma, c, eta_u, eta_w, scale):
    rng = np.random.default_rng(0)
    u0, w0 = scale * rng.standard_normal(12), scale * rng.standard_normal(12)
    hyper = dict(gamma=gamma, c=c, eta_u=eta_u, eta_w=eta_w)
    exact = shallow.solve(T, u0, w0, **hyper)
    ode, (u, w) = ode_observables(T, u0, w0, **hyper)
    assert rel_error(exact, ode) < 1e-8
    assert np.max(np.abs(exact["angle"] - ode["angle"])) < 1e-8
    # the weights themselves, and the conserved matrix
    u_exact, w_exact = shallow.weights(T, u0, w0, **hyper)
    assert np.max(np.abs(u_exact - u)) < 1e-8 * np.max(np.abs(u)) and np.max(np.abs(w_exact - w)) < 1e-8 * np.max(np.abs(w))
    q = shallow.conserved(u, w, eta_u, eta_w)
    assert np.max(np.abs(q - q[0])) < 1e-9 * np.max(np.abs(q[0]))


def test_batched_grid_broadcasts_like_single_calls():
    rng = np.random.default_rng(1)
    u0, w0 = rng.standard_normal((3, 1, 5)), rng.standard_normal((3, 1, 5))
    gamma = np.array([0.5, 1.0])[None, :]  # (1, 2) against a (3, 1) batch of inits
    batch = shallow.solve(T, u0[..., 0, :][:, None], w0[..., 0, :][:, None], gamma=gamma, c=1.0)
    assert batch["F"].shape == (3, 2, T.size)
    single = shallow.solve(T, u0[2, 0], w0[2, 0], gamma=1.0, c=1.0)
    np.testing.assert_allclose(batch["F"][2, 1], single["F"], rtol=1e-14)


def test_closed_form_matches_gd_with_equal_and_unequal_learning_rates():
    rng = np.random.default_rng(2)
    d = 20
    u0, w0 = 0.3 * rng.standard_normal((4, d)), 0.3 * rng.standard_normal((4, d))
    eta_u = np.array([1.0, 1.0, 4.0, 0.25])
    eta_w = np.array([1.0, 1.0, 0.25, 4.0])
    gd = shallow.gd_runs(u0, w0, gamma=0.5, c=1.0, eta_u=eta_u, eta_w=eta_w, lr=1e-3, steps=4000, record_every=100)
    exact = shallow.solve(gd.times, u0, w0, gamma=0.5, c=1.0, eta_u=eta_u, eta_w=eta_w)
    assert rel_error({k: gd.trajectory(k) for k in gd.records}, exact) < 1e-3
    # unequal rates really change the trajectory
    assert np.max(np.abs(exact["norm_u"][2] - exact["norm_u"][0])) > 0.1


def test_equal_rates_only_set_the_clock():
    rng = np.random.default_rng(3)
    u0, w0 = rng.standard_normal(6), rng.standard_normal(6)
    slow = shallow.solve(T, u0, w0, gamma=0.7, c=0.4, eta_u=2.0, eta_w=0.5)
    fast = shallow.solve(T / 3, u0, w0, gamma=0.7, c=0.4, eta_u=6.0, eta_w=1.5)
    for key in ("F", "norm_u", "norm_w", "cos"):
        np.testing.assert_allclose(fast[key], slow[key], rtol=1e-12, atol=1e-14)


def test_zero_norm_init_stays_at_zero():
    zero = np.zeros(4)
    exact = shallow.solve(T, zero, zero, gamma=1.0, c=1.5)
    np.testing.assert_array_equal(exact["F"], 0.0)
    np.testing.assert_array_equal(exact["norm_u"], 0.0)
    np.testing.assert_allclose(exact["loss"], 0.5 * 1.5**2)
    end = shallow.final_state(0.0, 0.0, 0.0, gamma=1.0, c=1.5)
    assert end["F"][-1] == 0.0 and end["ntk"][-1] == 0.0
    gd = shallow.gd_runs(zero[None], zero[None], gamma=1.0, c=1.5, lr=1e-2, steps=10)
    np.testing.assert_array_equal(gd.final["u"], 0.0)


@pytest.mark.parametrize("kind", ["one layer zero", "anti-aligned", "aligned, negative target"])
def test_degenerate_inits_match_ode(kind):
    rng = np.random.default_rng(4)
    v = rng.standard_normal(5)
    u0, w0, c = {"one layer zero": (np.zeros(5), 0.5 * v, 1.0),
                 "anti-aligned": (0.3 * v, -0.3 * v, 1.0),  # S0 = 0: the growing direction is empty
                 "aligned, negative target": (0.3 * v, 0.3 * v, -1.0)}[kind]  # D0 = 0 and c < 0
    exact = shallow.solve(T, u0, w0, gamma=1.0, c=c)
    ode, _ = ode_observables(T, u0, w0, gamma=1.0, c=c)
    keys = ("F", "loss", "norm_u", "norm_w", "ntk")
    assert rel_error(exact, ode, keys) < 1e-8
    assert np.all(np.isfinite(exact["F"]))


def test_final_state_is_the_fixed_point_and_satisfies_the_invariant():
    rng = np.random.default_rng(5)
    u0, w0 = rng.standard_normal((6, 8)), rng.standard_normal((6, 8))
    hyper = dict(gamma=np.linspace(0.1, 1.0, 6), c=np.array([1.0, -0.5, 2.0, 0.3, -2.0, 0.0]), eta_u=1.5, eta_w=0.7)
    ov = shallow.overlaps(u0, w0)
    end = shallow.final_state(*ov, **hyper)
    late = shallow.solve(np.array([0.0, 200.0]), u0, w0, **hyper)
    for key in ("F", "ntk", "norm_u", "norm_w", "cos"):
        np.testing.assert_allclose(late[key], end[key], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(end["F"][:, -1], hyper["c"], atol=1e-12)
    ratio = shallow.kernel_ratio(*ov[:3], **hyper)
    np.testing.assert_allclose(end["ntk"][:, 1] / end["ntk"][:, 0], ratio, rtol=1e-12)


def test_mechanisms_are_classified():
    # small init aligns, overshooting pre-aligned init disaligns, parallel init rescales, big init is lazy
    v = np.random.default_rng(6).standard_normal((4, 50))
    xi = np.random.default_rng(7).standard_normal((4, 50))
    u0 = np.stack([0.01 * xi[0], v[1] + 0.3 * xi[1], 0.1 * v[2], 5 * xi[3]])
    w0 = np.stack([0.01 * v[0], v[1] + 0.3 * xi[2], 0.2 * v[2], 5 * v[3]])
    c = np.array([1.0, 5.0, 1.0, 1.0])
    end = shallow.final_state(*shallow.overlaps(u0, w0), gamma=np.array([1.0, 1.0, 1.0, 0.02]), c=c)
    labels = [shallow.MECHANISMS[i] for i in shallow.classify(shallow.mechanism_stats(end))]
    assert labels == ["alignment", "disalignment", "rescaling", "kernel"]


def test_gaussian_overlaps_follow_the_law_of_gaussian_vectors():
    d, n = 6, 40000
    uu, ww, uw, cross = shallow.gaussian_overlaps([d], n, seed=0)
    vu, vw, vuw, vcross = shallow.overlaps(*shallow.gaussian_init([d], n, seed=1))
    for a, b in ((uu, vu), (ww, vw), (uw, vuw), (cross, vcross)):
        assert abs(a.mean() - b.mean()) < 0.1 and abs(a.std() / b.std() - 1) < 0.05
    np.testing.assert_allclose(cross**2, uu * ww - uw**2, rtol=1e-9, atol=1e-9)
    assert np.all(shallow.gaussian_overlaps([1], 5, seed=0)[3] == 0)  # d = 1: always parallel


def test_padded_batches_and_clock():
    batch = shallow.prototype_inits([3, 7], [1], seed=0) + shallow.scaled_inits([5], 2, a=0.5, b=0.0, seed=1)
    assert batch.u0.shape == (2 * 2 + 1 + 1 + 2, 7)
    assert np.all(batch.u0[batch.width == 3][:, 3:] == 0)
    clocked = batch.on_clock(2.0)
    end = shallow.final_state(*clocked.overlaps(), **clocked.hyper())
    np.testing.assert_allclose(end["ntk"].max(-1), 2.0, rtol=1e-12)
    before = shallow.final_state(*batch.overlaps(), **batch.hyper())
    # rtol 1e-9: |u|^2 comes from |S|^2 + |D|^2 + 2 S.D, which loses digits when |u| << |w| (lazy alignment)
    np.testing.assert_allclose(end["cos"], before["cos"], rtol=1e-9)


def test_exponent_diagram_sides_of_the_boundary():
    a = np.linspace(0, 2, 9)
    stats = shallow.exponent_diagram(a[:, None], np.array([0.0, 0.5])[None, :], 10_000)
    assert stats["kernel_ratio"].shape == (9, 2)
    s = a[:, None] + np.array([0.0, 0.5])[None, :]
    assert np.all(np.abs(stats["kernel_ratio"][s <= 0.75] - 1) < 0.05)
    assert np.all(stats["kernel_ratio"][s >= 1.25] > 2)
    # a learning-rate ratio pushes the boundary out to a + b = 1 + |e| / 2
    lazy = shallow.exponent_diagram(1.25, 0.0, 10_000, e=3.0)["kernel_ratio"]
    assert abs(lazy - 1) < 0.05


def test_layer_alignment_reduces_to_cosine():
    rng = np.random.default_rng(8)
    u, w = rng.standard_normal((3, 7)), rng.standard_normal((3, 7))
    zeta = shallow.layer_alignment(torch.as_tensor(u)[..., None], torch.as_tensor(w)).numpy()
    cos = (u * w).sum(-1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(w, axis=-1)
    np.testing.assert_allclose(zeta, np.abs(cos), rtol=1e-12)


def test_angle_is_accurate_for_parallel_vectors():
    v = np.array([1.0, 2.0, 3.0])
    assert shallow.angle(v, 2 * v) < 1e-15
    np.testing.assert_allclose(shallow.angle(v, -v), np.pi)
    assert float(shallow.angle(torch.as_tensor(v), torch.as_tensor(3 * v))) < 1e-15


@pytest.mark.parametrize("call, name", [
    (lambda: shallow.solve(T, np.zeros(0), np.zeros(0), gamma=1.0, c=1.0), "width"),
    (lambda: shallow.solve(T, np.ones(3), np.ones(3), gamma=1.0, c=1.0, eta_u=-1.0), "eta_u"),
    (lambda: shallow.solve(T, np.ones(3), np.ones(3), gamma=1.0, c=1.0, eta_w=0.0), "eta_w"),
    (lambda: shallow.solve(T, np.ones(3), np.ones(3), gamma=-1.0, c=1.0), "gamma"),
    (lambda: shallow.solve(-T, np.ones(3), np.ones(3), gamma=1.0, c=1.0), "t"),
    (lambda: shallow.solve(T, np.ones(3), np.ones(4), gamma=1.0, c=1.0), "u0 and w0"),
    (lambda: shallow.solve_overlaps(T, 1.0, 1.0, 2.0, gamma=1.0, c=1.0), "u0.w0"),
    (lambda: shallow.gd_runs(np.ones((2, 3)), np.ones((2, 3)), gamma=1.0, c=1.0, lr=-0.1, steps=5), "lr"),
    (lambda: shallow.gd_runs(np.ones((2, 3)), np.ones((2, 3)), gamma=1.0, c=1.0, eta_u=[1.0, -1.0], lr=0.1, steps=5), "eta_u"),
    (lambda: shallow.prototype_inits([0, 10], [1]), "width"),
    (lambda: shallow.scaled_inits([10], 0, a=0.5, b=0.0), "n_seeds"),
    (lambda: shallow.exponent_diagram(0.5, 0.0, 0), "width"),
    (lambda: shallow.mechanism_map(1.0, 1.5), "zeta0"),
])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        call()


def test_stacked_losses_match_vmap_of_one_network():
    """gd_runs and tanh_runs train with gradients="stacked": the stacked losses equal vmap over one network."""
    from torch.func import vmap

    gen = torch.Generator().manual_seed(0)
    params = {"U": torch.randn(4, 7, generator=gen, dtype=torch.float64),
              "W": torch.randn(4, 7, generator=gen, dtype=torch.float64)}
    gamma, c = torch.rand(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    assert shallow.network_loss(params, gamma, c) == pytest.approx(vmap(shallow.network_loss)(params, gamma, c), abs=1e-14)
    x, y = torch.randn(3, 20, 5, generator=gen, dtype=torch.float64), torch.randn(3, 20, generator=gen, dtype=torch.float64)
    net = {"U": torch.randn(3, 6, 5, generator=gen, dtype=torch.float64), "w": torch.randn(3, 6, generator=gen, dtype=torch.float64)}
    gammas = torch.rand(3, dtype=torch.float64)
    assert shallow.tanh_loss(net, x, y, gammas) == pytest.approx(vmap(shallow.tanh_loss)(net, x, y, gammas), abs=1e-14)


def test_parallel_init_stays_parallel_under_gd():
    # the rescaling mechanism's zero angle change is an identity of the dynamics (moved out of the claims)
    batch = shallow.prototype_inits([4], [1, 50], seed=3)
    sel = batch.mask("rescaling")
    gd = shallow.gd_runs(batch.u0[sel], batch.w0[sel], **{k: v[sel] if np.ndim(v) else v for k, v in batch.hyper().items()},
                         lr=1e-2, steps=300, record_every=300)
    assert shallow.mechanism_stats(gd)["angle_change"].max() < 1e-6


def test_prototypes_have_their_overlaps_at_every_seed():
    # the flow depends on an init only through its overlaps, so every seed gives the same mechanism statistics
    stats = []
    for seed in range(4):
        batch = shallow.prototype_inits([10, 100], [1, 100], seed=seed)
        stats.append(shallow.mechanism_stats(shallow.final_state(*batch.overlaps(), **batch.hyper())))
    for key in ("alignment_change", "norm_change", "kernel_ratio"):
        np.testing.assert_allclose(stats[0][key], stats[3][key], rtol=1e-9, atol=1e-12)
    u, w = shallow.pair_with_overlaps(np.random.default_rng(0), 7, 2.0, 3.0, 0.25)
    np.testing.assert_allclose([np.linalg.norm(u), np.linalg.norm(w), u @ w / 6.0], [2.0, 3.0, 0.25], rtol=1e-12)


def test_points_near_the_kernel_threshold_are_not_clear():
    stats = {"kernel_ratio": np.array([1.0, 1.0499, 1.056, 0.9, 3.0])}
    np.testing.assert_array_equal(shallow.clear_of_kernel_threshold(stats), [True, False, True, True, True])


def test_conserved_drift_matches_the_dense_matrices():
    rng = np.random.default_rng(3)
    u0, w0, u1, w1 = rng.standard_normal((4, 3, 7))
    eta_u, eta_w = np.array([1.0, 2.0, 0.5]), np.array([1.0, 0.3, 4.0])
    dense = np.linalg.norm(shallow.conserved(u1, w1, eta_u, eta_w) - shallow.conserved(u0, w0, eta_u, eta_w), axis=(1, 2))
    np.testing.assert_allclose(shallow.conserved_drift(u0, w0, u1, w1, eta_u, eta_w), dense, rtol=1e-12)
    assert shallow.conserved_drift(u0, w0, u0, w0, eta_u, eta_w).max() < 1e-13   # no drift: zero to rounding


def test_linear_activation_reproduces_gd_runs():
    # f = gamma w.sigma(u x) / slope with sigma = identity on data with mean(x^2) = 1 is the network of gd_runs
    batch = shallow.prototype_inits([6], [1], seed=2).on_clock(2.0)
    x = shallow.symmetric_line_data(5, seed=1)
    assert np.mean(x**2) == pytest.approx(1.0) and np.sum(x) == pytest.approx(0.0, abs=1e-12)
    act = shallow.activation_runs(batch.u0, batch.w0, "linear", x, **batch.hyper(), lr=1e-2, steps=50, record_every=10)
    gd = shallow.gd_runs(batch.u0, batch.w0, **batch.hyper(), lr=1e-2, steps=50, record_every=10)
    for key in ("cos", "norm_u", "norm_w"):
        np.testing.assert_allclose(act.records[key], gd.records[key], rtol=1e-12, atol=1e-14)


def test_activation_runs_one_activation_per_network_and_chunks_agree():
    batch = shallow.prototype_inits([5], [1], seed=0)  # four networks
    x = shallow.symmetric_line_data(4, seed=0)
    names = ["relu", "sigmoid", "relu", "swish"]
    whole = shallow.activation_runs(batch.u0, batch.w0, names, x, **batch.hyper(), lr=1e-2, steps=20, record_every=5)
    alone = shallow.activation_runs(batch.u0[1:2], batch.w0[1:2], "sigmoid", x,
                                    **{k: v[1:2] for k, v in batch.hyper().items()}, lr=1e-2, steps=20, record_every=5)
    np.testing.assert_allclose(whole.records["cos"][:, 1], alone.records["cos"][:, 0], rtol=1e-12)
    chunked = shallow.activation_runs(batch.u0, batch.w0, names, x, **batch.hyper(), lr=1e-2, steps=20, record_every=5,
                                      chunks=2)
    np.testing.assert_allclose(chunked.records["cos"], whole.records["cos"], rtol=1e-12)
    with pytest.raises(ValueError, match="activations must be one of"):
        shallow.activation_runs(batch.u0, batch.w0, ["relu", "tanh", "relu", "relu"], x, **batch.hyper(), lr=1e-2, steps=2)


def test_inits_select_keeps_the_flagged_networks():
    batch = shallow.prototype_inits([4, 8], [1], seed=0)
    picked = batch.select(batch.mask("disalignment"))
    assert set(picked.label) == {"disalignment"} and len(picked) == 2
    np.testing.assert_array_equal(picked.u0, batch.u0[batch.mask("disalignment")])
    with pytest.raises(ValueError, match="mask"):
        batch.select(np.zeros(len(batch), dtype=bool))


def test_deep_forward_stacked_equals_one_network_and_ntk_trace_matches_autograd():
    params, gamma, _ = shallow.deep_inits([0.5, 1.0], [1.0], 1, n_in=5, width=4, depth=3, seed=0)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    stacked = shallow.deep_forward(params, x, gamma)
    for i in range(2):
        one = shallow.deep_forward({k: v[i] for k, v in params.items()}, x, gamma[i])
        np.testing.assert_allclose(stacked[i].numpy(), one.numpy(), rtol=1e-13)
    expected = []
    for i in range(2):
        p = {k: v[i].clone().requires_grad_() for k, v in params.items()}
        total = 0.0
        for n in range(len(x)):
            grads = torch.autograd.grad(shallow.deep_forward(p, x[n:n + 1], gamma[i])[0], list(p.values()))
            total += sum(float((g**2).sum()) for g in grads)
        expected.append(total / len(x))
    np.testing.assert_allclose(shallow.ntk_trace(params, x, gamma).numpy(), expected, rtol=1e-12)


def test_deep_runs_chunks_agree_and_grid_is_a_major():
    params, gamma, sigma = shallow.deep_inits([0.0, 1.0], [0.5, 2.0], 2, n_in=4, width=3, depth=3, seed=0)
    assert gamma.tolist() == [1.0] * 4 + [1 / 3] * 4 and sigma.tolist() == [0.5, 0.5, 2.0, 2.0] * 2
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.sign(x[:, 0])
    whole = shallow.deep_runs(params, gamma, x, y, lr=0.05, steps=20, record_every=10, n_probe=5)
    chunked = shallow.deep_runs(params, gamma, x, y, lr=0.05, steps=20, record_every=10, n_probe=5, chunks=3)
    np.testing.assert_allclose(chunked.records["cos"], whole.records["cos"], rtol=1e-12)
    np.testing.assert_allclose(chunked.final["ntk"], whole.final["ntk"], rtol=1e-12)
    assert whole.final["ntk"].shape == (8, 2) and whole.final["output_rms"].shape == (8,)


def test_activation_batch_is_activation_major():
    inits, batch, names = shallow.activation_batch(5, 2, seed=3, clock_ntk=2.0)
    assert list(inits.label) == ["alignment", "disalignment"] * 2
    assert len(batch) == len(names) == len(inits) * len(shallow.ACTIVATIONS)
    assert names[:len(inits)] == ["linear"] * len(inits) and names[-1] == "sigmoid"
    np.testing.assert_array_equal(batch.u0[-len(inits):], inits.u0)
