"""The functional BatchNorm MLP against torch.nn, the digits task and the batched grid."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import vmap

from learning_dynamics import mlp
from learning_dynamics.tasks import digits


def reference_model(params, index, alpha, depth):
    """The same network built from torch.nn modules (BatchNorm1d, LeakyReLU), weights copied in."""
    width = params["w0"].shape[1]
    n_in = params["w0"].shape[2]
    layers = [nn.BatchNorm1d(n_in)]
    for i in range(depth):
        layers += [nn.Linear(params[f"w{i}"].shape[2], width), nn.BatchNorm1d(width), nn.LeakyReLU(alpha)]
    layers.append(nn.Linear(width, params["w_out"].shape[1]))
    model = nn.Sequential(*layers).double()
    with torch.no_grad():
        model[0].weight.copy_(params["bn_in.scale"][index])
        model[0].bias.copy_(params["bn_in.shift"][index])
        for i in range(depth):
            lin, bn = model[1 + 3 * i], model[2 + 3 * i]
            lin.weight.copy_(params[f"w{i}"][index])
            lin.bias.copy_(params[f"b{i}"][index])
            bn.weight.copy_(params[f"bn{i}.scale"][index])
            bn.bias.copy_(params[f"bn{i}.shift"][index])
        model[-1].weight.copy_(params["w_out"][index])
        model[-1].bias.copy_(params["b_out"][index])
    return model


@pytest.fixture(scope="module")
def setup():
    x, y, x_test, y_test = digits.load(300, seed=0, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    params = mlp.init_params(3, n_in=64, width=16, depth=3, n_out=10, generator=gen, dtype=torch.float64)
    with torch.no_grad():     # move the BatchNorm affine parameters away from (1, 0)
        for name in params:
            if name.endswith("scale") or name.endswith("shift"):
                params[name] += 0.3 * torch.randn(params[name].shape, generator=gen, dtype=torch.float64)
    return x, y, x_test, y_test, params


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_forward_matches_torch_nn_in_train_and_eval_mode(setup, alpha):
    x, y, x_test, _, params = setup
    model = reference_model(params, 1, alpha, depth=3)
    one = {k: v[1] for k, v in params.items()}
    logits, reps, stats = mlp.forward(one, x, torch.tensor(alpha, dtype=torch.float64))
    model.train()
    assert logits == pytest.approx(model(x).detach(), abs=1e-10)
    assert len(reps) == 4 and reps[0].shape == (300, 64) and reps[1].shape == (300, 16)
    # Eval mode with the running statistics set to the clean training set's (population variance).
    for bn, (mean, var) in zip([model[0]] + [model[2 + 3 * i] for i in range(3)], stats):
        bn.running_mean.copy_(mean.squeeze(0))
        bn.running_var.copy_(var.squeeze(0))
    model.eval()
    test_logits = mlp.forward(one, x_test, torch.tensor(alpha, dtype=torch.float64), stats=stats)[0]
    assert test_logits == pytest.approx(model(x_test).detach(), abs=1e-10)


def test_stacked_gradients_match_per_network_autograd(setup):
    x, y, _, _, params = setup
    alpha = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    grads, losses = vmap(torch.func.grad_and_value(mlp.loss))(params, x.expand(3, *x.shape), y.expand(3, *y.shape),
                                                               alpha)
    for i in range(3):
        model = reference_model(params, i, float(alpha[i]), depth=3)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        assert float(losses[i]) == pytest.approx(loss.item(), abs=1e-12)
        assert grads["w1"][i] == pytest.approx(model[4].weight.grad, abs=1e-10)
        assert grads["bn0.scale"][i] == pytest.approx(model[2].weight.grad, abs=1e-10)


def test_stacked_loss_matches_vmap_of_the_one_network_loss(setup):
    """The batched-matmul path that train_grid uses agrees with vmap over the one-network loss."""
    x, y, _, _, params = setup
    alpha = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    masks = (torch.rand(3, 3, 300, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) < 0.8) / 0.8
    xs, ys = x.expand(3, *x.shape), y.expand(3, *y.shape)
    stacked = mlp.loss(params, xs, ys, alpha, masks)
    one_by_one = vmap(mlp.loss)(params, xs, ys, alpha, masks.to(torch.float64))
    assert stacked.shape == (3,)
    assert stacked == pytest.approx(one_by_one, abs=1e-12)


def test_digits_split():
    x, y, x_test, y_test = digits.load(1000, seed=3)
    assert x.shape == (1000, 64) and x_test.shape == (797, 64)
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert set(y.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="n_train must be"):
        digits.load(5)


def test_data_noise():
    x, y, _, _ = digits.load(500, seed=0)
    gen = torch.Generator().manual_seed(0)
    level = torch.tensor([0.0, 0.5, 1.0])
    xn, yn = digits.data_noise(x, y, level, gen)
    assert xn.shape == (3, 500, 64) and yn.shape == (3, 500)
    assert torch.equal(xn[0], x) and torch.equal(yn[0], y)
    assert float((xn[2] - x).std()) == pytest.approx(float(x.std()), rel=0.02)
    # Half of the labels are redrawn uniformly, so about 9/10 of those (225) change.
    assert 180 < int((yn[1] != y).sum()) < 270
    assert int((yn[2] != y).sum()) > 400
    with pytest.raises(ValueError, match="level must lie in"):
        digits.data_noise(x, y, torch.tensor([1.5]), gen)


def test_grid_is_deterministic_and_shares_inits_across_cells():
    data = digits.load(200, seed=0)
    grid = mlp.train_grid(data, [0.2, 0.2], [0.0, 0.0], 2, width=8, depth=3, steps=5, seed=1)
    assert grid.log_d.shape == (2, 2, 2, 4) and grid.accuracy.shape == (2, 2, 2)
    assert np.all((grid.accuracy >= 0) & (grid.accuracy <= 1))
    # Same alpha, no noise, same seed index: identical networks, identical results.
    for a in range(2):
        for s in range(2):
            assert grid.log_d[a, s] == pytest.approx(grid.log_d[0, 0], abs=1e-5)
    assert not np.allclose(grid.log_d[0, 0, 0], grid.log_d[0, 0, 1])      # different seeds differ
    again = mlp.train_grid(data, [0.2], [0.0], 2, width=8, depth=3, steps=5, seed=1)
    assert again.log_d[0, 0] == pytest.approx(grid.log_d[0, 0], abs=1e-6)


def test_grid_noise_knobs_run():
    data = digits.load(200, seed=0)
    for kind, noises in (("dropout", [0.3]), ("lr", [1e-2]), ("data", [0.5])):
        grid = mlp.train_grid(data, [0.0], noises, 1, noise_kind=kind, width=8, depth=3, steps=3)
        assert np.all(np.isfinite(grid.log_d))


@pytest.mark.parametrize("kwargs,message", [
    (dict(noise_kind="batch"), "noise_kind must be one of"),
    (dict(alphas=[1.5]), "alpha must be"),
    (dict(noises=[1.2]), "noises \\(data levels\\) must be"),
    (dict(noise_kind="lr", noises=[-1e-3]), "noises \\(learning rates\\) must be"),
    (dict(noise_kind="dropout", noises=[1.0]), "noises \\(dropout levels\\) must be"),
    (dict(n_seeds=0), "n_seeds must be"),
])
def test_grid_bad_inputs(kwargs, message):
    data = digits.load(200, seed=0)
    args = dict(alphas=[0.0], noises=[0.0], n_seeds=1, width=8, depth=3, steps=1) | kwargs
    with pytest.raises(ValueError, match=message):
        mlp.train_grid(data, args.pop("alphas"), args.pop("noises"), args.pop("n_seeds"), **args)


def test_bundled_digits_are_sklearn_load_digits():
    from sklearn.datasets import load_digits

    pixels, labels = digits._bundled_digits()
    reference = load_digits()
    assert np.array_equal(pixels, reference.data) and np.array_equal(labels, reference.target)
