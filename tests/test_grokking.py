"""Grokking on real data (Nam et al. 2025, Sec. 7): the stacked MLP, Adam's weight decay, the sampler, the delay."""

import learning_dynamics  # noqa: F401, I001  first: its thread policy applies before torch loads

import math

import numpy as np
import pytest
import torch

from learning_dynamics import grokking, linear
from learning_dynamics.train import Adam, train
from test_devices import DEVICE, audit, meta_device  # noqa: F401  (meta_device is a fixture)


def tiny_data(n_train=40, n_test=30, n_in=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n_train + n_test, n_in, generator=gen)
    y = torch.arange(n_train + n_test) % 3
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def test_variants_are_the_authors_scales():
    assert set(grokking.VARIANTS) == {"a", "b", "c", "d", "f"}
    a = grokking.VARIANTS["a"]
    assert (a.weight_scale, a.target_scale, a.input_scale, a.output_scale) == (5.0, 3.0, 1.0, 1.0)
    for name, changed in [("b", "weight_scale"), ("c", "target_scale"), ("d", "input_scale"), ("f", "output_scale")]:
        other = grokking.VARIANTS[name]
        assert [s for s in grokking.SCALES if getattr(other, s) != getattr(a, s)] == [changed]
    with pytest.raises(ValueError, match="weight_scale must be"):
        grokking.Variant(0.0, 1.0, 1.0, 1.0)


def test_init_statistics_and_layout():
    params, scales = grokking.mlp_inits(40, 300, 10, ["a", "b"], 3, seed=2, dtype=torch.float64)
    assert params["W0"].shape == (6, 300, 40) and params["W1"].shape == (6, 300, 300) and params["W3"].shape == (6, 10, 300)
    assert params["b0"].shape == (6, 300) and params["b3"].shape == (6, 10)
    assert list(scales["variant"]) == ["a"] * 3 + ["b"] * 3 and list(scales["seed"]) == [6, 7, 8] * 2
    for layer, fan_in in enumerate([40, 300, 300, 300]):
        w, b = params[f"W{layer}"], params[f"b{layer}"]
        for i, ws in enumerate([5.0] * 3 + [1.0] * 3):
            assert float(w[i].std()) == pytest.approx(ws / math.sqrt(fan_in), rel=0.1)
            assert abs(float(w[i].mean())) < 4 * ws / math.sqrt(fan_in) / math.sqrt(w[i].numel())
        assert float(b.abs().max()) <= 1 / math.sqrt(fan_in)
        assert float(b.std()) == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.15)  # U(-c, c) has std c / sqrt(3)
    torch.testing.assert_close(params["W1"][:3] / 5, params["W1"][3:])  # one seed, the same draws in every variant
    torch.testing.assert_close(params["b1"][:3], params["b1"][3:])
    assert not torch.equal(params["W0"][0], params["W0"][1])
    torch.testing.assert_close(scales["target_scale"], torch.tensor([3.0] * 6, dtype=torch.float64))


def test_a_network_depends_only_on_its_own_seed_and_float32_rounds_float64():
    many, _ = grokking.mlp_inits(5, 7, 3, ["c", "a"], 4, seed=10)  # network seeds 40..43
    one, _ = grokking.mlp_inits(5, 7, 3, "a", 1, seed=42, dtype=torch.float64)
    for name in many:
        torch.testing.assert_close(many[name][4 + 2], one[name][0].float(), rtol=0, atol=0)


def test_reader_seeds_train_disjoint_networks():
    seen = {}
    for seed in range(10):
        params, scales = grokking.mlp_inits(4, 5, 3, "a", 2, seed=seed)
        assert list(scales["seed"]) == [2 * seed, 2 * seed + 1]
        for i, net_seed in enumerate(scales["seed"]):
            seen[int(net_seed)] = params["W0"][i]
    assert sorted(seen) == list(range(20))
    firsts = torch.stack(list(seen.values()))
    assert len({tuple(w.flatten().tolist()) for w in firsts}) == 20  # no two reader seeds share a network


def test_adam_weight_decay_matches_torch_adam():
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    x, y = torch.randn(16, 4, generator=gen, dtype=torch.float64), torch.randn(16, 3, generator=gen, dtype=torch.float64)

    def loss_one(w):
        return ((x @ w.T - y) ** 2).mean()

    ref = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=0.05, weight_decay=0.3)
    for _ in range(25):
        opt.zero_grad()
        loss_one(ref).backward()
        opt.step()
    run = train(lambda p, xb, yb: ((xb @ p["w"].transpose(-1, -2) - yb) ** 2).mean((-1, -2)), {"w": w0[None]}, steps=25,
                lr=0.05, data=(x[None], y[None]), optimizer=Adam(weight_decay=0.3))
    torch.testing.assert_close(run.params["w"][0], ref.detach(), rtol=1e-10, atol=1e-12)
    plain = train(lambda p, xb, yb: ((xb @ p["w"].transpose(-1, -2) - yb) ** 2).mean((-1, -2)), {"w": w0[None]}, steps=25,
                  lr=0.05, data=(x[None], y[None]), optimizer=Adam())
    assert not torch.allclose(plain.params["w"], run.params["w"])


def test_adam_without_weight_decay_is_unchanged_bitwise():
    params = {"a": torch.full((2, 3), 0.3, dtype=torch.float64), "b": torch.full((2, 3), -0.2, dtype=torch.float64)}
    grads = {"a": torch.full((2, 3), 0.7, dtype=torch.float64), "b": torch.full((2, 3), 1e-3, dtype=torch.float64)}
    rates = {k: torch.full((2, 1), 0.01, dtype=torch.float64) for k in params}
    explicit, default = Adam(weight_decay=0.0), Adam()
    s1, s2 = explicit.init(params), default.init(params)
    for step in range(3):
        p1, p2 = explicit.update(params, grads, s1, rates, step), default.update(params, grads, s2, rates, step)
    for k in params:
        assert torch.equal(p1[k], p2[k])
    b1, b2 = default.betas
    m, v = 0.7 * (1 - b1 ** 3) / (1 - b1 ** 3), 0.49
    assert float(p2["a"][0, 0]) == pytest.approx(0.3 - 0.01 * m / (math.sqrt(v) + 1e-8), rel=1e-12)
    with pytest.raises(ValueError, match="weight_decay must be"):
        Adam(weight_decay=-1e-4)


@pytest.mark.parametrize("streams", [None, [0, 1, 0, 2]])
def test_sampler_walks_every_sample_once_an_epoch(streams):
    x = torch.arange(10, dtype=torch.float64)[:, None].repeat(1, 3)
    y = torch.arange(10)
    data = grokking.epoch_sampler(x, y, 4, 4, streams=streams)
    gen = torch.Generator().manual_seed(0)
    assert data.steps_per_epoch == 3
    epochs = []
    for epoch in range(2):
        batches = [data(gen, 3 * epoch + k) for k in range(3)]
        assert [b[0].shape for b in batches] == [(4, 4, 3), (4, 4, 3), (4, 2, 3)] and batches[2][1].shape == (4, 2)
        labels = torch.cat([b[1] for b in batches], dim=1)
        for net in range(4):
            assert sorted(labels[net].tolist()) == list(range(10))  # every sample once
        assert torch.equal(torch.cat([b[0] for b in batches], 1)[..., 0].long(), labels)  # x and y stay paired
        epochs.append(labels)
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled
    same = [torch.equal(epochs[0][0], epochs[0][i]) for i in range(4)]
    assert same == ([True] * 4 if streams is None else [True, False, True, False])


def test_sampler_and_inits_reject_bad_input():
    x, y = torch.zeros(10, 3), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match=r"y must hold one label per row of x, shape \(10,\)"):
        grokking.epoch_sampler(x, y[:5], 2, 4)
    with pytest.raises(ValueError, match=r"streams must hold one integer >= 0 per network, shape \(2,\)"):
        grokking.epoch_sampler(x, y, 2, 4, streams=[0, 1, 2])
    with pytest.raises(ValueError, match=r"variants must be names from \['a', 'b', 'c', 'd', 'f'\].*unknown \['e'\]"):
        grokking.mlp_inits(3, 4, 2, ["a", "e"], 1)
    with pytest.raises(ValueError, match="variants must map names to Variant"):
        grokking.mlp_inits(3, 4, 2, {"a": (5, 3, 1, 1)}, 1)
    with pytest.raises(ValueError, match="width must be"):
        grokking.mlp_inits(3, 0, 2, "a", 1)


def test_delay_on_synthetic_curves():
    t = np.arange(0.0, 100.0, 10.0)
    ramp = lambda start: np.clip((t - start) / 40.0, 0, 1)  # noqa: E731  reaches 1 at start + 40
    train_acc = np.stack([ramp(0), ramp(0), ramp(0), 0.5 * np.ones_like(t)], axis=1)
    test_acc = np.stack([ramp(0), ramp(30), 0.8 * ramp(0), ramp(0)], axis=1)
    np.testing.assert_array_equal(grokking.delay(t, train_acc, test_acc, 1.0), [0, 30, np.nan, np.nan])
    # 0.8 x ramp reaches 0.75 at t = 37.5, between the records at 30 and 40: the crossing is interpolated
    np.testing.assert_array_equal(grokking.delay(t, train_acc, test_acc, 1.0, test_level=0.75), [-10, 20, -2.5, np.nan])
    # censored: test never at 1.0 -> the run's end (90) minus the train time (40), a lower bound; train never -> NaN
    np.testing.assert_array_equal(grokking.delay(t, train_acc, test_acc, 1.0, censored=True), [0, 30, 50, np.nan])
    grid = grokking.delay(t, train_acc.reshape(10, 2, 2), test_acc.reshape(10, 2, 2), 1.0)
    assert grid.shape == (2, 2)
    assert float(grokking.delay(t, train_acc[:, 1], test_acc[:, 1], 0.5)) == 30.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(times=[0.0, 1.0, 1.0]), "times must be increasing"),
    (dict(train_acc=np.zeros((2, 2))), r"train_acc and test_acc must have the same shape; got \(2, 2\) and \(3, 2\)"),
    (dict(train_acc=np.full((3, 2), 2.0), test_acc=np.full((3, 2), 2.0)), r"train_acc must hold accuracies in \[0, 1\]"),
    (dict(train_acc=np.zeros((4, 2)), test_acc=np.zeros((4, 2))), "train_acc must have the record axis first, of length 3"),
    (dict(level=0.0), "level must be"),
    (dict(level=1.5), "level must be"),
    (dict(test_level=-0.1), "test_level must be"),
])
def test_delay_rejects_bad_input(kwargs, match):
    good = dict(times=[0.0, 1.0, 2.0], train_acc=np.zeros((3, 2)), test_acc=np.zeros((3, 2)), level=0.9)
    with pytest.raises(ValueError, match=match):
        grokking.delay(**(good | kwargs))


def test_gamma_plus_of_the_init_follows_the_scales():
    x, y, _, _ = tiny_data(200, 1, n_in=8)
    params, scales = grokking.mlp_inits(8, 64, 3, list(grokking.VARIANTS), 2, seed=0, dtype=torch.float64)
    gamma, sigma0, s0, target = grokking.init_gamma_plus(params, x.double(), y, scales)
    assert gamma.shape == sigma0.shape == s0.shape == target.shape == (10,)
    assert np.all(np.abs(s0) <= sigma0)
    np.testing.assert_allclose(gamma, linear.gamma_plus(sigma0, s0, target))
    by = {v: gamma[scales["variant"] == v] for v in grokking.VARIANTS}
    for other in "bcdf":
        assert np.all(by[other] > by["a"])  # every change of one scale makes the init less lazy
    np.testing.assert_allclose(by["c"], by["f"], rtol=1e-10)  # only target / output scale matters: 10x either way
    np.testing.assert_allclose(target[scales["variant"] == "c"], 10 * target[scales["variant"] == "a"])


def test_grokking_runs_tiny_run_shapes_and_records():
    x, y, xt, yt = tiny_data()
    run = grokking.grokking_runs(x, y, xt, yt, variants=["a", "b"], width=8, epochs=4, batch=16, n_seeds=2,
                                 record_every=2)
    np.testing.assert_array_equal(run.times, [0, 2, 4])
    np.testing.assert_array_equal(run.steps, [0, 6, 12])  # ceil(40 / 16) = 3 steps an epoch
    for name in ("train_accuracy", "test_accuracy", "norm", "loss"):
        assert run.records[name].shape == (3, 4), name
    acc = run.records["test_accuracy"]
    assert np.all((acc >= 0) & (acc <= 1)) and np.allclose(acc * 30, np.round(acc * 30), atol=1e-4)
    assert run.final["gamma_plus"].shape == (4,) and list(run.final["variant"]) == ["a", "a", "b", "b"]
    assert run.params["W0"].shape == (4, 8, 6) and run.params["W3"].shape == (4, 3, 8)
    again = grokking.grokking_runs(x, y, xt, yt, variants=["a", "b"], width=8, epochs=4, batch=16, n_seeds=2,
                                   record_every=2)
    np.testing.assert_array_equal(run.records["train_accuracy"], again.records["train_accuracy"])


def test_grokking_runs_learns_and_weight_decay_shrinks_the_weights():
    x, y, xt, yt = tiny_data(60, 60)
    runs = [grokking.grokking_runs(x, y, xt, yt, variants=["b"], width=16, epochs=60, batch=20, lr=1e-2,
                                   weight_decay=wd, record_every=60) for wd in (0.0, 0.1)]
    assert runs[0].records["train_accuracy"][-1, 0] > runs[0].records["train_accuracy"][0, 0]
    assert runs[1].records["norm"][-1, 0] < runs[0].records["norm"][-1, 0]


def test_grokking_runs_reject_bad_input():
    x, y, xt, yt = tiny_data()
    cases = [(dict(x_train=x[:, :, None]), r"x_train must be a non-empty \(N, n_in\) array"),
             (dict(y_train=y[:5]), r"y_train must hold one label per row of x_train, shape \(40,\)"),
             (dict(x_test=xt[:, :3]), "x_test must have the 6 features of x_train"),
             (dict(y_test=yt - 1), "y_train and y_test must be class indices"),
             (dict(shuffle="everyone"), "shuffle must be one of 'seed', 'shared', 'network'"),
             (dict(weight_decay=-1.0), "weight_decay must be"),
             (dict(device="tpu"), "device must be")]
    for kwargs, match in cases:
        args = dict(x_train=x, y_train=y, x_test=xt, y_test=yt) | kwargs
        with pytest.raises(ValueError, match=match):
            grokking.grokking_runs(**args, width=4, epochs=1)


def test_grokking_runs_honour_the_device(meta_device, monkeypatch):  # noqa: F811
    # results copied back from meta are zeros, where Sigma0 = 0 is (rightly) refused by the toy's gamma_+
    monkeypatch.setattr(grokking, "toy_gamma_plus", lambda sigma0, s0, target: np.ones_like(sigma0))
    x, y, xt, yt = tiny_data()
    y, yt = y.clone(), yt.clone()

    def run_on(device):
        return lambda: grokking.grokking_runs(x.to(device), y.to(device), xt.to(device), yt.to(device), variants=["a"],
                                              width=4, epochs=2, batch=16, record_every=1, device=device)

    reference = run_on("cpu")()
    result, problems = audit(run_on(DEVICE), meta_device)
    assert not problems, "\n  ".join(problems[:20])
    assert {k: v.shape for k, v in result.records.items()} == {k: v.shape for k, v in reference.records.items()}



def test_the_chapter_trains_on_a_local_mnist_file_and_names_a_bad_one(tmp_path):
    from learning_dynamics import presets
    from learning_dynamics.tasks import mnist

    rng = np.random.default_rng(0)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), y_train=np.arange(30) % 10,
             x_test=rng.integers(0, 256, (12, 28, 28), dtype=np.uint8), y_test=np.arange(12) % 10)
    cfg = presets.resolve("feedback_principle", "smoke", overrides={"mnist_file": str(path)})
    images = mnist.load(cfg.mnist_file, 20, name="mnist_file")
    run = grokking.grokking_runs(*images, variants=["a", "b"], width=4, epochs=2, batch=8, n_seeds=1)
    assert run.records["test_accuracy"].shape == (3, 2)
    with pytest.raises(ValueError, match="mnist_file = '.*missing.npz': no such file"):
        presets.resolve("feedback_principle", "paper", overrides={"mnist_file": str(tmp_path / "missing.npz")})
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="mnist_file"):
        mnist.load(str(tmp_path / "bad.npz"), name="mnist_file")
