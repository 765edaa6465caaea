"""The batched trainer: same numbers as a per-network loop, clear failures."""

import pytest
import torch

from learning_dynamics import linear, tasks
from learning_dynamics.train import TrainingDiverged, train, train_loop


def small_grid(n=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = {"w1": 0.5 * torch.randn(n, 3, 2, generator=gen, dtype=torch.float64),
              "w2": 0.5 * torch.randn(n, 2, 3, generator=gen, dtype=torch.float64)}
    x = torch.randn(2, 8, generator=gen, dtype=torch.float64).expand(n, 2, 8)
    y = torch.randn(n, 2, 8, generator=gen, dtype=torch.float64)
    return params, (x, y)


def test_batched_equals_loop():
    params, data = small_grid()
    batched = train(linear.matrix_loss, params, data=data, steps=50, lr=0.05)
    looped = train_loop(linear.matrix_loss, params, data=data, steps=50, lr=0.05)
    for name in params:
        torch.testing.assert_close(batched.params[name], looped[name], rtol=1e-12, atol=1e-12)


def test_per_network_learning_rates_and_records():
    params, data = small_grid(3)
    lr = torch.tensor([0.0, 0.01, 0.1], dtype=torch.float64) + 1e-9
    out = train(linear.matrix_loss, params, data=data, steps=10, lr=lr, record_every=4,
                record=lambda p: {"prod": p["w2"] @ p["w1"]})
    assert list(out.steps) == [0, 4, 8, 10]
    assert out.records["prod"].shape == (4, 3, 2, 2)
    assert out.records["loss"].shape == (4, 3)
    assert torch.allclose(out.params["w1"][0], params["w1"][0], atol=1e-6)


def test_adam_and_sampler_run_and_reduce_loss():
    sampler = tasks.skill_sampler(tasks.skill_frequencies(3, 0.5), 1.0, 2, 64)
    ones = torch.ones(2, 3, dtype=torch.float64)
    out = train(linear.diagonal_loss, {"a": 0.3 * ones, "b": 0.3 * ones}, data=sampler, steps=200, lr=0.05, optimizer="adam")
    assert (out.records["loss"][-1] < out.records["loss"][0]).all()


def test_same_seed_same_result():
    sampler = tasks.skill_sampler(tasks.skill_frequencies(3, 0.5), 1.0, 2, 16)
    ones = torch.ones(2, 3, dtype=torch.float64)
    runs = [train(linear.diagonal_loss, {"a": 0.3 * ones, "b": 0.3 * ones}, data=sampler, steps=20, lr=0.1, seed=4) for _ in range(2)]
    torch.testing.assert_close(runs[0].params["a"], runs[1].params["a"], rtol=0, atol=0)


def test_divergence_raises_instead_of_nan():
    params, data = small_grid(2)
    with pytest.raises(TrainingDiverged, match="diverged at step"):
        train(linear.matrix_loss, {k: 30 * v for k, v in params.items()}, data=data, steps=200, lr=1.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=-0.1), "lr must be"),
    (dict(lr=torch.ones(4)), r"lr must be a scalar or have shape \(5,\)"),
    (dict(steps=0), "steps must be"),
    (dict(optimizer="sgdm"), "optimizer must be one of"),
    (dict(gradients="auto"), "gradients must be one of 'stacked', 'vmap' or a callable"),
    (dict(data=[1, 2]), "data must be a tuple of tensors .* or a sampler.*; got list"),
])
def test_bad_arguments_name_the_parameter(kwargs, match):
    params, data = small_grid()
    base = dict(data=data, steps=5, lr=0.1)
    with pytest.raises(ValueError, match=match):
        train(linear.matrix_loss, params, **{**base, **kwargs})


def test_mismatched_network_dimension_is_rejected():
    with pytest.raises(ValueError, match="leading"):
        train(linear.diagonal_loss, {"a": torch.ones(2, 3), "b": torch.ones(3, 3)}, data=(torch.ones(2, 4, 3), torch.ones(2, 4)), steps=1, lr=0.1)


def test_linear_losses_work_for_one_network_and_for_stacked_networks():
    """The feedback-principle losses train with gradients="stacked"; it must match the vmap path."""
    gen = torch.Generator().manual_seed(3)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    cases = [
        (linear.diagonal_loss, {"a": rand(4, 3), "b": rand(4, 3)}, (rand(4, 7, 3), rand(4, 7))),
        (linear.linear_loss, {"theta": rand(4, 3)}, (rand(4, 7, 3), rand(4, 7))),
        (linear.matrix_loss, {"w1": rand(4, 2, 2), "w2": rand(4, 2, 2)}, (rand(4, 2, 10), rand(4, 2, 10))),
        (linear.width_toy_loss, {"a": rand(4, 5), "b": rand(4, 5)}, (rand(4),)),
    ]
    for loss, params, data in cases:
        stacked = train(loss, params, data=data, steps=30, lr=0.01, gradients="stacked")
        vmapped = train(loss, params, data=data, steps=30, lr=0.01, gradients="vmap")
        for name in params:
            torch.testing.assert_close(stacked.params[name], vmapped.params[name], rtol=1e-12, atol=1e-14)


def test_closed_form_gradients_match_autograd():
    """Each feedback-principle loss has its gradient in closed form; it must equal autograd's, and train the same."""
    gen = torch.Generator().manual_seed(5)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    cases = [
        (linear.diagonal_loss, linear.diagonal_grad_and_value, {"a": rand(4, 3), "b": rand(4, 3)}, (rand(4, 7, 3), rand(4, 7))),
        (linear.linear_loss, linear.linear_grad_and_value, {"theta": rand(4, 3)}, (rand(4, 7, 3), rand(4, 7))),
        (linear.matrix_loss, linear.matrix_grad_and_value, {"w1": rand(4, 3, 2), "w2": rand(4, 2, 3)}, (rand(4, 2, 10), rand(4, 2, 10))),
        (linear.width_toy_loss, linear.width_toy_grad_and_value, {"a": rand(4, 5), "b": rand(4, 5)}, (rand(4),)),
    ]
    for loss, grad_and_value, params, data in cases:
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        value = loss(leaves, *data)
        expected = torch.autograd.grad(value.sum(), list(leaves.values()))
        closed, closed_value = grad_and_value(params, *data)
        torch.testing.assert_close(closed_value, value.detach(), rtol=1e-12, atol=1e-14)
        assert list(closed) == list(params)
        for (name, grad), reference in zip(closed.items(), expected):
            torch.testing.assert_close(grad, reference, rtol=1e-12, atol=1e-14, msg=f"{grad_and_value.__name__}[{name}]")
        fast = train(loss, params, data=data, steps=30, lr=0.01, gradients=grad_and_value)
        slow = train(loss, params, data=data, steps=30, lr=0.01)
        for name in params:
            torch.testing.assert_close(fast.params[name], slow.params[name], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(torch.as_tensor(fast.records["loss"]), torch.as_tensor(slow.records["loss"]), rtol=1e-12, atol=1e-14)


def test_closed_form_gradients_need_every_parameter_and_one_loss_per_network():
    params, data = small_grid()
    with pytest.raises(ValueError, match="one gradient per parameter"):
        train(linear.matrix_loss, params, data=data, steps=2, lr=0.1,
              gradients=lambda p, x, y: ({"w1": torch.zeros_like(p["w1"])}, linear.matrix_loss(p, x, y)))
    with pytest.raises(ValueError, match="one loss per network"):
        train(linear.matrix_loss, params, data=data, steps=2, lr=0.1,
              gradients=lambda p, x, y: (linear.matrix_grad_and_value(p, x, y)[0], torch.zeros(())))


def test_a_one_network_loss_with_stacked_gradients_says_to_use_vmap():
    params, data = small_grid()
    with pytest.raises(ValueError, match="gradients='vmap'"):
        train(lambda p, x, y: linear.matrix_loss(p, x, y).sum(), params, data=data, steps=2, lr=0.1)


def test_optimizers_are_objects_and_their_names_mean_their_defaults():
    from learning_dynamics.train import GD, Adam

    sampler = tasks.skill_sampler(tasks.skill_frequencies(3, 0.5), 1.0, 2, 16)
    ones = torch.ones(2, 3, dtype=torch.float64)
    run = lambda opt: train(linear.diagonal_loss, {"a": 0.3 * ones, "b": 0.3 * ones}, data=sampler,  # noqa: E731
                            steps=20, lr=0.05, optimizer=opt).params["a"]
    torch.testing.assert_close(run("adam"), run(Adam()), rtol=0, atol=0)
    torch.testing.assert_close(run("gd"), run(GD()), rtol=0, atol=0)
    assert not torch.equal(run(Adam(betas=(0.5, 0.9))), run("adam"))


def test_check_generator_takes_a_seed_or_shares_a_generator():
    from learning_dynamics.validation import check_generator

    gen = torch.Generator().manual_seed(3)
    assert check_generator(gen) is gen
    assert torch.equal(torch.rand(3, generator=check_generator(3)), torch.rand(3, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match=r"seed must be in \[0, 9223372036854775807\]; got -1"):
        check_generator(-1)
