"""The k-path task on whitened digits: the d-item training set gives the whole training set's gradients."""

import numpy as np
import pytest
import torch

from learning_dynamics import gated
from learning_dynamics.gated import gated_data
from learning_dynamics.tasks import digits, hierarchy, kpath


@pytest.fixture(scope="module")
def small():
    x, y, xt, yt = digits.load(300, seed=0, dtype=torch.float64)
    z, zt = kpath.whiten_pca(x.numpy(), xt.numpy(), 8)
    return z, y.numpy(), zt, yt.numpy(), kpath.permuted_task(z, y.numpy(), zt, yt.numpy(), hierarchy.routing_gate(4, 2),
                                                              hidden=6, seed=2)


def test_whitening_makes_the_training_covariance_the_identity(small):
    z, *_ = small
    np.testing.assert_allclose(z.T @ z / len(z), np.eye(8), atol=1e-10)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="dims must be at most the training inputs' rank"):
        kpath.whiten_pca(np.ones((5, 3)) * np.arange(5)[:, None], np.ones((2, 3)), 2)


def test_items_give_the_gradients_of_the_whole_whitened_training_set(small):
    z, y, zt, yt, pt = small
    net, gate = pt.task.net, hierarchy.routing_gate(4, 2)
    # the whole training set, every trained pair's images permuted explicitly
    pairs = [tuple(p) for p in np.argwhere(gate)]
    n = len(pairs) * len(y)
    inputs = {f"x{i}": np.zeros((n, 8)) for i in range(4)}
    targets = {f"y{j}": np.zeros((n, 10)) for j in range(4)}
    gates = {v: np.zeros(n) for v in list(inputs) + list(targets)}
    for k, (i, j) in enumerate(pairs):
        rows = slice(k * len(y), (k + 1) * len(y))
        inputs[f"x{i}"][rows], targets[f"y{j}"][rows] = z[:, pt.pixels[i]], np.eye(10)[y][:, pt.labels[j]]
        gates[f"x{i}"][rows] = gates[f"y{j}"][rows] = 1.0
    full = gated_data(net, inputs, targets, node_gates=gates, weights=np.full(n, 1.0 / len(y)))
    params = gated.orthogonal_init(net, 0.7, 1, seed=5)
    loss = gated.loss_function(net)

    def gradients(data):
        p = {k: v.clone().requires_grad_() for k, v in params.items()}
        value = loss(p, *gated.data_tensors(net, data, 1)).sum()
        return value, torch.autograd.grad(value, list(p.values()))

    (full_loss, full_grad), (item_loss, item_grad) = gradients(full), gradients(pt.task.data)
    for a, b in zip(full_grad, item_grad):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert float(full_loss.detach()) > float(item_loss.detach())                   # the two differ by the unexplained variance


def test_modes_pass_the_reduction_and_pair_accuracies_match_a_forward_pass(small):
    z, y, zt, yt, pt = small
    race = gated.race_reduction(pt.task.net, pt.task.data, pt.task.modes_in, pt.task.modes_out)
    assert race.drive.shape[-1] == 8                                # rank of Sigma_yx: min(classes - 1, d)
    params = gated.orthogonal_init(pt.task.net, np.array([0.5, 1.0]), 2, seed=1)
    accuracy = kpath.pair_accuracies(pt, params)
    for n, i, j in ((0, 1, 3), (1, 2, 0)):
        w = params[f"out{j}"][n] @ params["shared"][n] @ params[f"in{i}"][n]
        predicted = pt.labels[j][(torch.as_tensor(zt[:, pt.pixels[i]]) @ w.T).argmax(-1).numpy()]
        assert float(accuracy[n, i * 4 + j]) == pytest.approx(np.mean(predicted == yt), abs=1e-12)


def test_mode_accuracy_is_the_accuracy_of_the_reduced_classifier(small):
    z, y, zt, yt, _ = small
    pt = kpath.permuted_task(z, y, zt, yt, hierarchy.routing_gate(4, 2), hidden=8, seed=2)
    pi = np.linspace(1.0, 0.2, 8)
    params = {k: torch.zeros(1, *v, dtype=torch.float64) for k, v in
              {e: (pt.task.net.nodes[b], pt.task.net.nodes[a]) for e, (a, b) in pt.task.net.edges.items()}.items()}
    i, j = 2, 1
    w = pt.task.modes_out[f"y{j}"] @ np.diag(pi) @ pt.task.modes_in[f"x{i}"].T      # pair (i, j) with strengths pi
    params[f"in{i}"][0] = torch.as_tensor(pt.task.modes_in[f"x{i}"].T)
    params["shared"][0] = torch.as_tensor(np.diag(pi))
    params[f"out{j}"][0] = torch.as_tensor(pt.task.modes_out[f"y{j}"])
    torch.testing.assert_close(params[f"out{j}"][0] @ params["shared"][0] @ params[f"in{i}"][0], torch.as_tensor(w))
    assert kpath.mode_accuracy(pt, pi) == pytest.approx(float(kpath.pair_accuracies(pt, params)[0, i * 4 + j]), abs=1e-12)
    with pytest.raises(ValueError, match="strengths must have the 8 modes"):
        kpath.mode_accuracy(pt, np.ones(3))
