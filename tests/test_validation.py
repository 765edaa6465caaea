"""Validation as data: the constraint objects, ``validate_params``, and bad-input tests generated from every declaration.

The generated tests walk :func:`learning_dynamics.validation.declared_functions`:
for every declared parameter of every declared function they make a valid call
(from ``VALID`` below), replace that one argument by its constraint's
``invalid_example()`` and expect a ``ValueError`` naming the parameter and the
value given. A function that gains declarations needs an entry in ``VALID``
(``test_every_declared_function_has_a_valid_example`` says which are missing).
"""

from __future__ import annotations

import functools
import inspect
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from learning_dynamics import validation as V
from learning_dynamics.tasks import hierarchy, kpath
from learning_dynamics.validation import (AnyOf, Array, Boolean, Device, InstanceOf, Integer, Optional, Options, Real,
                                          Seed, as_constraint, declared_functions, validate_params)

# ---------------------------------------------------------------------------
# The constraints, one by one
# ---------------------------------------------------------------------------


def message(constraint, value, name="x") -> str:
    with pytest.raises(ValueError) as err:
        constraint.check(name, value)
    return str(err.value)


def test_integer():
    c = Integer(low=1, high=8)
    assert c.check("depth", np.int64(3)) == 3 and type(c.check("depth", np.int64(3))) is int
    assert message(c, 0, "depth") == "depth must be in [1, 8]; got 0"
    assert message(c, 9, "depth") == "depth must be in [1, 8]; got 9"
    for bad in (True, 2.0, "3", None):
        assert f"got {bad!r}" in message(c, bad, "depth")
    assert Integer().check("i", -5) == -5
    assert Integer(low=0).describe() == "an integer >= 0" and Integer(high=2).describe() == "an integer <= 2"
    with pytest.raises(ValueError, match="low must be <= high"):
        Integer(low=2, high=1)


def test_real():
    c = Real(low=0.0, high=1.0, strict_low=True)
    assert c.check("rate", 1) == 1.0 and type(c.check("rate", 1)) is float
    assert message(c, 0.0, "rate") == "rate must be in (0.0, 1.0]; got 0.0"
    assert message(c, 1.5, "rate") == "rate must be in (0.0, 1.0]; got 1.5"
    assert message(c, float("nan"), "rate") == "rate must be finite; got nan"
    assert message(c, "0.5", "rate") == "rate must be a real number in (0.0, 1.0]; got '0.5'"
    assert "got True" in message(c, True)
    assert Real().check("x", np.float32(0.25)) == 0.25
    assert "inf" in message(Real(), float("inf"))


def test_options():
    c = Options("rnn", "gru")
    assert c.check("kind", "gru") == "gru"
    assert message(c, "lstm", "kind") == "kind must be one of 'rnn', 'gru'; got 'lstm'"
    assert "got array([1, 2])" in message(c, np.array([1, 2]), "kind")  # no "truth value is ambiguous"
    assert c.invalid_example() not in c.choices
    assert Options("not-an-option").invalid_example() != "not-an-option"


def test_array():
    out = Array(ndim=2).check("features", [[1, 2], [3, 4]])
    assert out.dtype == np.float64 and out.shape == (2, 2)
    assert message(Array(ndim=2), [1.0, 2.0], "features") == "features must have 2 dimension(s); got [1.0, 2.0]"
    assert message(Array(), [1.0, np.nan], "y0") == "y0 must be finite; got [1.0, nan], with non-finite entries"
    assert message(Array(positive=True), [1.0, -2.0], "lrs") == \
        "lrs must be > 0 everywhere; got [1.0, -2.0], with minimum -2.0"
    assert message(Array(), "abc", "t") == "t must be an array of real numbers; got 'abc'"
    # a long value is described by its type and shape, not printed
    assert message(Array(ndim=1), np.zeros((100, 3)), "t") == "t must have 1 dimension(s); got ndarray of shape (100, 3)"


def test_device():
    assert Device().check("device", "cpu") == "cpu"
    assert message(Device(), "tpu", "device") == "device must be 'cpu', 'cuda' or 'cuda:N'; got 'tpu'"
    assert "got 0" in message(Device(), 0, "device")
    if not torch.cuda.is_available():
        assert "must be 'cpu' on this machine" in message(Device(), "cuda:0", "device")


def test_seed():
    gen = torch.Generator()
    assert Seed().check("seed", gen) is gen
    assert Seed().check("seed", np.int64(7)) == 7 and type(Seed().check("seed", np.int64(7))) is int
    for bad in (-1, 1.5, True, "0", None, np.random.default_rng(0)):
        assert message(Seed(), bad, "seed") == f"seed must be an integer >= 0 or a torch.Generator; got {bad!r}"


def test_callable_boolean_instance_of():
    fn = V.Callable()
    assert fn.check("rhs", len) is len
    assert message(fn, 3, "rhs") == "rhs must be a callable; got 3"
    assert Boolean().check("uniform", np.bool_(True)) is True
    assert message(Boolean(), 1, "uniform") == "uniform must be True or False; got 1"
    c = InstanceOf(torch.nn.Module)
    layer = torch.nn.Linear(1, 1)
    assert c.check("step", layer) is layer
    assert message(c, "x", "step") == "step must be an instance of torch.nn.modules.module.Module; got 'x'"
    assert message(InstanceOf(int, str), 1.5) == "x must be an instance of int or str; got 1.5"
    assert message(InstanceOf(dict, description="a dict of tensors"), 1) == "x must be a dict of tensors; got 1"
    with pytest.raises(ValueError, match="types must be one or more classes"):
        InstanceOf("dict")


def test_optional_and_any_of():
    c = Optional(Integer(low=1))
    assert c.check("n_slots", None) is None and c.check("n_slots", np.int64(2)) == 2
    assert message(c, 0, "n_slots") == "n_slots must be an integer >= 1 or None; got 0"
    either = AnyOf(Options("auto"), Real(low=0.0))
    assert either.check("lr", "auto") == "auto" and either.check("lr", 1) == 1.0
    assert message(either, -1.0, "lr") == "lr must be one of 'auto' or a finite real number >= 0.0; got -1.0"
    assert not either.is_satisfied_by(either.invalid_example())
    assert repr(c) == "Optional(Integer(low=1))"


def test_as_constraint():
    assert isinstance(as_constraint(Integer()), Integer)
    assert as_constraint(None).check("x", None) is None
    assert isinstance(as_constraint(dict), InstanceOf)
    listed = as_constraint([Integer(low=0), None])
    assert isinstance(listed, AnyOf) and listed.check("x", None) is None and listed.check("x", 3) == 3
    assert message(listed, -1) == "x must be an integer >= 0 or None; got -1"
    with pytest.raises(TypeError, match="must be a Constraint"):
        as_constraint("int")


EVERY_KIND = [Integer(), Integer(low=1), Integer(high=3), Integer(low=1, high=8), Real(), Real(low=0.0, strict_low=True),
              Real(high=1.0), Options("a", "b"), Array(), Array(ndim=1), Array(ndim=2), Array(positive=True), Device(),
              Seed(), V.Callable(), Boolean(), InstanceOf(torch.nn.Module), Optional(Integer(low=1)),
              Optional(Array(ndim=2)), AnyOf(Options("auto"), Real(low=0.0)), as_constraint([Seed(), None])]


@pytest.mark.parametrize("constraint", EVERY_KIND, ids=repr)
def test_invalid_example_is_rejected_with_its_repr(constraint):
    bad = constraint.invalid_example()
    assert not constraint.is_satisfied_by(bad)
    text = message(constraint, bad, "param")
    assert text.startswith("param must ") and f"; got {bad!r}" in text


# ---------------------------------------------------------------------------
# The decorator
# ---------------------------------------------------------------------------


@validate_params({"n": Integer(low=1), "kind": Options("rnn", "gru"), "lr": Real(low=0.0, strict_low=True)})
def _example(n, kind="rnn", *, lr=0.1, extra=None):
    """An example entry point."""
    return n, kind, lr, extra


def test_validate_params_checks_and_converts_given_arguments():
    assert _example(np.int64(3)) == (3, "rnn", 0.1, None)
    assert type(_example(np.int64(3))[0]) is int
    assert _example(2, "gru", lr=1, extra="anything") == (2, "gru", 1.0, "anything")
    assert _example(n=2, kind="gru") == (2, "gru", 0.1, None)
    with pytest.raises(ValueError, match=r"^n must be >= 1; got 0$"):
        _example(0)
    with pytest.raises(ValueError, match="kind must be one of 'rnn', 'gru'; got 'lstm'"):
        _example(1, kind="lstm")
    with pytest.raises(ValueError, match=r"lr must be > 0.0; got -1"):
        _example(1, lr=-1)
    # a call that does not fit the signature fails with the function's own TypeError, before any check
    with pytest.raises(TypeError, match="too many positional arguments"):
        _example(1, 2, 3)
    with pytest.raises(TypeError, match="multiple values for argument 'n'"):
        _example(0, n=0)
    with pytest.raises(TypeError, match="missing 1 required positional argument"):
        _example(kind="gru")


def test_validate_params_keeps_the_function_metadata():
    assert _example.__name__ == "_example" and _example.__doc__ == "An example entry point."
    assert _example.__module__ == __name__ and _example.__qualname__ == "_example"
    assert str(inspect.signature(_example)) == "(n, kind='rnn', *, lr=0.1, extra=None)"
    assert inspect.unwrap(_example) is _example.__wrapped__
    assert list(_example.__param_constraints__) == ["n", "kind", "lr"]  # signature order
    from sphinx.util.inspect import signature  # what autodoc shows

    assert str(signature(_example)) == "(n, kind='rnn', *, lr=0.1, extra=None)"


def test_validate_params_rejects_bad_declarations():
    with pytest.raises(TypeError, match=r"has no parameter\(s\) \['m'\]"):
        validate_params({"m": Integer()})(lambda n: n)
    with pytest.raises(TypeError, match=r"cannot declare \*args"):
        validate_params({"args": Integer()})(lambda *args: args)
    with pytest.raises(TypeError, match="must be a Constraint"):
        validate_params({"n": "positive"})


def test_validate_params_overhead_is_small():
    plain = _example.__wrapped__
    calls = 2000
    start = time.perf_counter()
    for _ in range(calls):
        _example(3, "gru", lr=0.5)
    wrapped = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(calls):
        plain(3, "gru", lr=0.5)
    overhead = (wrapped - (time.perf_counter() - start)) / calls
    assert overhead < 100e-6, f"validate_params costs {overhead * 1e6:.1f} us a call"


def test_declared_functions_finds_declarations_in_a_package(tmp_path, monkeypatch):
    package = tmp_path / "toy_pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .mod import f  # a re-export: listed once, under its module\n")
    (package / "sub" / "mod.py").write_text(textwrap.dedent("""
        from learning_dynamics.validation import Integer, validate_params

        @validate_params({"n": Integer(low=1)})
        def f(n):
            return n

        def g(n):
            return n
    """))
    (package / "plain.py").write_text("raise RuntimeError('never imported: it declares nothing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        found = declared_functions("toy_pkg")
        assert list(found) == ["sub.mod.f"]
        assert found["sub.mod.f"](2) == 2
        assert "toy_pkg.plain" not in sys.modules
    finally:
        for name in [m for m in sys.modules if m.startswith("toy_pkg")]:
            del sys.modules[name]


# ---------------------------------------------------------------------------
# Generated bad-input tests over every declaration in the library
# ---------------------------------------------------------------------------


@functools.cache
def _rnn():
    from learning_dynamics import operators

    step = operators.make_step("rnn", 3, 4)
    params = {k: v[0] for k, v in operators.init_params(step, 3).items()}
    x = torch.randn(2, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(2, 5, 3, dtype=torch.float64)
    ops = operators.KPFlow(step, x, params)
    records = {"loss": np.zeros((2, 1)), **{operators.PARAM_PREFIX + k: torch.stack([v, v])[:, None] for k, v in params.items()}}
    return step, params, x, y, ops, records


def _step():
    return _rnn()[0]


def _operators(name):
    from learning_dynamics import operators

    step, params, x, y, ops, records = _rnn()
    errors = torch.zeros(2, *ops.shape, dtype=torch.float64)
    return {
        "alignment_history": dict(step=step, records=records, inputs=x, targets=y, task_index=[0, 1], n_tasks=2),
        "checkpoint": dict(records=records, index=-1, network=0),
        "dense_reference": dict(ops=ops),
        "final_spectra": dict(step=step, records=records, inputs=x, k=2),
        "first_order_check": dict(step=step, params=params, inputs=x, targets=y, lr=1e-3),
        "first_order_errors": dict(step=step, params=params, inputs=x, targets=y, lrs=[1e-3, 1e-2]),
        "gradient_alignment": dict(ops=ops, errors=errors),
        "init_params": dict(step=step, n_out=3, n_networks=2),
        "mse_loss": dict(step=step),
        "operator_ranks": dict(ops=ops, n_probes=4),
        "rank_history": dict(step=step, records=records, inputs=x, n_probes=4),
        "recorder": dict(step=step, inputs=x, targets=y),
        "task_alignment": dict(ops=ops, errors=errors),
        "task_errors": dict(params=params, hidden=ops.hidden, targets=y, task_index=[0, 1], n_tasks=2),
        "eigenfunctions": dict(step=step, records=records, inputs=x, k=2, n_probes=4),
        "hidden_pca": dict(hidden=ops.hidden, k=2),
        "train_networks": dict(step=step, params=operators.init_params(step, 3, n_networks=2),
                               make_batch=lambda n, gen: (torch.zeros(n, 5, 3, dtype=torch.float64),) * 2, n_trials=2,
                               eval_inputs=x, eval_targets=y, steps=2, lr=1e-3),
    }[name]


def _figure():
    from matplotlib.figure import Figure

    return Figure()


@functools.cache
def _tree():
    from learning_dynamics.tasks import hierarchy

    return hierarchy.tree_task(depth=1, hidden=3)  # 2 items, x -> h -> y: one pathway of two edges


@functools.cache
def _race():
    from learning_dynamics import gated

    task = _tree()
    return gated.race_reduction(task.net, task.data, task.modes_in, task.modes_out)


def _gated(name):
    from learning_dynamics import gated

    task, race = _tree(), _race()
    net, data, modes = task.net, task.data, dict(modes_in=task.modes_in, modes_out=task.modes_out)
    bases = gated.node_bases(net, seed=0, **modes)
    params = gated.orthogonal_init(net, 0.5, 2, seed=0)
    batch = gated.data_tensors(net, data, 2)
    start = gated.signed_strengths(race, 0.1)
    return {
        "graph.aligned_init": lambda: dict(net=net, bases=bases, strengths=np.full((2, 2), 0.1), device="cpu"),
        "graph.edge_projector": lambda: dict(net=net, bases=bases, dtype=torch.float64, device=torch.device("cpu")),
        "graph.gated_correlations": lambda: dict(net=net, data=data),
        "graph.gated_data": lambda: dict(net=net, inputs=data.inputs, targets=data.targets, node_gates={}, edge_gates=None,
                                         weights=[1.0, 0.5]),
        "graph.node_bases": lambda: dict(net=net, seed=1, **modes),
        "graph.orthogonal_init": lambda: dict(net=net, scale=[0.5, 1.0], n_networks=2, seed=0, device="cpu"),
        "graph.pathway_gates": lambda: dict(net=net, data=data),
        "graph.pathway_projector": lambda: dict(net=net, dtype=torch.float64, device="cpu", **modes),
        "loss.correlation_batch": lambda: dict(net=net, data=data, n_networks=2, device="cpu"),
        "loss.correlation_loss": lambda: dict(net=net, groups=gated.correlation_batch(net, data)[0]),
        "loss.data_tensors": lambda: dict(net=net, data=[data, data], n_networks=2, device="cpu"),
        "loss.loss_function": lambda: dict(net=net),
        "loss.output_errors": lambda: dict(net=net, params=params, batch=batch, groups=[0, 1], n_groups=2),
        "loss.train_gdln": lambda: dict(net=net, params=params, data=data, steps=2, lr=0.01, record=lambda p: {},
                                        record_every=1, seed=0, desc="gated"),
        "race.aligned_runs": lambda: dict(tasks=[task], b0=0.1, lr=0.01, steps=2, records=2, seed=0, flow=True, device="cpu"),
        "race.chain_solve": lambda: dict(t=[0.0, 0.5], b0=[0.1, 0.2], weights=[1.0, 2.0], target=1.0),
        "race.pathway_error": lambda: dict(b=start, race=race, target=np.ones(np.shape(start)[-1]), pathway=0),
        "race.race_loss": lambda: dict(b=start, race=race),
        "race.race_products": lambda: dict(b=start, race=race),
        "race.race_reduction": lambda: dict(net=net, data=data, tol=1e-8, **modes),
        "race.race_solve": lambda: dict(t=[0.0, 0.1], b0=start, race=race, rtol=1e-8, atol=1e-12),
        "race.race_steps": lambda: dict(b0=start, race=race, lr=0.01, steps=2, record_every=1),
        "race.reduced_products": lambda: dict(tasks=[task], b0=0.1, t=[0.0, 0.1]),
        "race.signed_strengths": lambda: dict(race=race, b0=0.1),
    }[name]()


@functools.cache
def _regression():
    from learning_dynamics import tasks

    return tasks.random_regression(10, 2, 2, seed=0)


def _u0_w0():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, 3)), rng.standard_normal((2, 3))


def _shallow(name):
    from learning_dynamics import shallow

    u0, w0 = _u0_w0()
    hyper = dict(gamma=1.0, c=1.0, eta_u=2.0, eta_w=0.5)
    overlaps = dict(uu=1.0, ww=2.0, uw=0.5, cross=float(np.sqrt(1.75)))
    stats = shallow.mechanism_stats(shallow.final_state(**overlaps, **hyper))
    digits_x, digits_y = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), \
        torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    return {
        "classify": lambda: dict(stats=stats, kernel_tol=0.05, angle_tol=1e-6),
        "clear_of_kernel_threshold": lambda: dict(stats=stats, margin=0.1, kernel_tol=0.05),
        "conserved": lambda: dict(u=u0, w=w0, eta_u=1.0, eta_w=[1.0, 2.0]),
        "conserved_drift": lambda: dict(u0=u0, w0=w0, u1=w0, w1=u0, eta_u=1.0, eta_w=[1.0, 2.0]),
        "digit_parity_data": lambda: dict(n_samples=20, seed=0),
        "exponent_diagram": lambda: dict(a=[0.5, 1.0], b=0.0, width=10, e=0.0, c=1.0, seed=0),
        "final_state": lambda: dict(**overlaps, **hyper),
        "gaussian_init": lambda: dict(widths=[2, 3], n_seeds=2, seed=0, d_max=4),
        "gaussian_overlaps": lambda: dict(widths=[2], n_seeds=2, seed=0),
        "gd_runs": lambda: dict(u0=u0, w0=w0, **hyper, lr=0.01, steps=2, record_every=1, device="cpu", desc="GD"),
        "activation_runs": lambda: dict(u0=u0, w0=w0, activations="relu", x=[1.0, -1.0], **hyper, lr=0.01, steps=2,
                                        record_every=1, device="cpu", chunks=None),
        "symmetric_line_data": lambda: dict(n_samples=3, seed=0),
        "activation_batch": lambda: dict(width=3, n_draws=1, seed=0, clock_ntk=2.0),
        "deep_inits": lambda: dict(output_exponents=[0.5], init_scales=[1.0], n_seeds=1, n_in=4, width=3, depth=3, seed=0,
                                   device="cpu"),
        "deep_runs": lambda: dict(params=shallow.deep_inits([0.5], [1.0], 1, n_in=4, width=3, depth=3)[0],
                                  gamma=torch.tensor([0.5], dtype=torch.float64), x=digits_x, y=digits_y, lr=0.01, steps=2,
                                  record_every=1, n_probe=3, chunks=None),
        "integrate_flow": lambda: dict(t=[0.0, 0.5], u0=u0, w0=w0, **hyper, rtol=1e-8, atol=1e-10),
        "kernel_ratio": lambda: dict(uu=1.0, ww=2.0, uw=0.5, **hyper),
        "mechanism_map": lambda: dict(scale=[0.5, 2.0], zeta0=0.5, c=1.0),
        "mechanism_stats": lambda: dict(traj=shallow.final_state(**overlaps, **hyper)),
        "observables_of_weights": lambda: dict(u=u0, w=w0, **hyper),
        "overlaps": lambda: dict(u0=u0, w0=w0),
        "power_law_exponent": lambda: dict(x=[1.0, 10.0], y=[1.0, 0.1]),
        "prototype_inits": lambda: dict(widths=[2], rescaling_widths=[1], seed=0),
        "scaled_inits": lambda: dict(widths=[4], n_seeds=2, a=0.5, b=0.0, c=1.0, eta_ratio=1.0, seed=0, label="NTK"),
        "solve": lambda: dict(t=[0.0, 1.0], u0=u0, w0=w0, **hyper),
        "solve_overlaps": lambda: dict(t=[0.0, 1.0], **overlaps, **hyper),
        "tanh_inits": lambda: dict(x=digits_x, y=digits_y, width=3, seed=0),
        "tanh_runs": lambda: dict(x=digits_x, y=digits_y, width=3, lr=0.1, steps=2, record_every=1, seed=0, device="cpu"),
        "weights": lambda: dict(t=[0.0, 1.0], u0=u0, w0=w0, **hyper),
    }[name]()


def _emergence():
    from learning_dynamics import emergence

    return emergence


def _parity():
    from learning_dynamics.tasks import parity

    return parity


def _raw():
    from learning_dynamics import tasks

    return tasks.random_regression(4, 3, 2, seed=0, whitened=False)


def _linear(name):
    from learning_dynamics import tasks

    x, y = _regression()
    return {
        "aligned_kernel_distance": lambda: dict(t=0.5, lam=[0.0, 1.0], x=x, y=y, scale=2.0),
        "crossing_times": lambda: dict(times=[0.0, 1.0, 2.0], curves=[[0.0, 0.6, 1.0]], level=0.5),
        "deep_mode": lambda: dict(t=[0.0, 1.0], target=1.5, u0=1e-3, depth=3, rate=0.4),
        "deep_mode_time": lambda: dict(u=0.5, target=1.5, u0=1e-3, depth=3, rate=0.4),
        "gamma_plus": lambda: dict(sigma0=1.0, s0=0.5, target=1.0),
        "growth_fixed_point": lambda: dict(plus=0.3, minus=0.2, target=1.0),
        "lambda_grid_init": lambda: dict(x=x, y=y, lams=[0.0, 1.0], scales=[1.0, 2.0], seed=0, aligned=True),
        "lambda_grid_runs": lambda: dict(x=x, y=y, lams=[0.0, 1.0], scales=[1.0, 2.0], lr=0.01, steps=2, seed=0,
                                         aligned=False, closed_form=True, device="cpu"),
        "layerwise_flow": lambda: dict(t=[0.0, 0.5], a0=0.1, b0=0.1, target=1.0, rate=1.0, rtol=1e-8, atol=1e-10),
        "mode_product": lambda: dict(t=[0.0, 1.0], target=1.0, u0=0.1, imbalance=0.5, rate=1.0),
        "one_layer_half_time": lambda: dict(rate=0.5),
        "one_layer_mode": lambda: dict(t=[0.0, 1.0], target=1.0, rate=1.0, theta0=0.2),
        "plus_minus_from_product": lambda: dict(u0=0.1, imbalance=1.0),
        "product_growth": lambda: dict(t=[0.0, 1.0], plus=0.3, minus=0.2, target=1.0, rate=1.0),
        "sigmoid_half_time": lambda: dict(target=1.0, u0=0.01, rate=1.0),
        "sigmoid_mode": lambda: dict(t=[0.0, 1.0], target=1.0, u0=0.01, rate=1.0),
        "skill_runs": lambda: dict(sampler=tasks.skill_sampler([0.5, 0.5], 1.0, 2, 4), n_skills=2, init=0.1, lr=0.01,
                                   steps=2, n_seeds=2, seed=0, record_every=1, device="cpu"),
        "whiten": lambda: dict(x=np.random.default_rng(0).normal(size=(2, 5))),
        "zero_product_init": lambda: dict(lams=[0.0, 0.5], in_dim=3, hidden=4, out_dim=2, init_scale=0.1, seed=0),
        "zero_product_runs": lambda: dict(x=_raw()[0], y=_raw()[1], lams=[0.0, 0.5], scales=[1.0, 2.0], hidden=4,
                                          init_scale=0.1, lr=0.01, steps=2, seed=0, device="cpu"),
        "zero_product_kernel_theory": lambda: dict(x=_raw()[0], y=_raw()[1], lams=[0.0, 0.5], scales=[1.0, 2.0],
                                                   hidden=4, init_scale=0.1, lr=0.01, steps=2, seed=0, device="cpu"),
        "collapse_runs": lambda: dict(n_classes=2, per_class=3, dim=3, inits=[0.1], within=1e-3, lr=0.1, steps=2,
                                      n_seeds=1, seed=0, record_every=1, device="cpu"),
        "collapse_closed_form": lambda: dict(t=[0.0, 1.0], per_class=3, n_classes=2, u0=[0.01], within0=[1e-6]),
        "width_toy_runs": lambda: dict(sigma0s=[0.1, 1.0], width=3, target=1.0, lr=1e-3, steps=2, n_seeds=1, seed=0,
                                       record_every=1, device="cpu"),
    }[name]()


@functools.cache
def _digits():
    from learning_dynamics.tasks import digits

    return digits.load(20, seed=0)


def _chain():
    return dict(mu_fwd=0.1, mu_back=0.2, eps=0.1, n_blocks=2, k=1.0, steps=2, pull=1.0, replicas=1, average_last=0.5,
                record_every=1, seed=0, device="cpu")


def _train():
    from learning_dynamics import linear

    ones = torch.ones(2, 2, 2, dtype=torch.float64)
    return dict(loss_fn=linear.matrix_loss, params={"w1": 0.5 * ones, "w2": 0.5 * ones}, steps=2, lr=0.1,
                data=(ones, ones), optimizer="gd", gradients="stacked", record=lambda p: {}, record_every=1, seed=0,
                desc="training")


def _small_mnist() -> str:
    """A 12 + 4 image file in the mnist.npz layout, written once per session."""
    import tempfile
    from pathlib import Path

    path = Path(tempfile.gettempdir()) / f"ld-test-mnist-{id(np)}.npz"
    if not path.exists():
        images = np.zeros((16, 28, 28), dtype=np.uint8)
        np.savez(path, x_train=images[:12], y_train=np.arange(12) % 10, x_test=images[12:], y_test=np.arange(4))
    return str(path)


# Valid keyword arguments for every declared function: "<module>.<function>" -> a function returning them.
VALID = {
    **{f"gated.{name}": functools.partial(_gated, name) for name in (
        "graph.aligned_init", "graph.edge_projector", "graph.gated_correlations", "graph.gated_data", "graph.node_bases",
        "graph.orthogonal_init", "graph.pathway_gates", "graph.pathway_projector", "loss.correlation_batch",
        "loss.correlation_loss", "loss.data_tensors", "loss.loss_function", "loss.output_errors", "loss.train_gdln",
        "race.aligned_runs", "race.chain_solve", "race.pathway_error", "race.race_loss", "race.race_products", "race.race_reduction",
        "race.race_solve", "race.race_steps", "race.reduced_products", "race.signed_strengths")},
    **{f"linear.{name}": functools.partial(_linear, name) for name in (
        "aligned_kernel_distance", "crossing_times", "deep_mode", "deep_mode_time", "gamma_plus", "growth_fixed_point",
        "lambda_grid_init", "lambda_grid_runs", "layerwise_flow", "mode_product", "one_layer_half_time", "one_layer_mode",
        "plus_minus_from_product", "product_growth", "sigmoid_half_time", "sigmoid_mode", "skill_runs", "whiten",
        "width_toy_runs", "zero_product_init", "zero_product_runs", "zero_product_kernel_theory", "collapse_runs",
        "collapse_closed_form")},
    "emergence.relu_init": lambda: dict(n_networks=2, n_inputs=37, width=4, init=0.1),
    "emergence.parity_runs": lambda: dict(n_seeds=1, width=4, steps=1, batch_size=4, n_probe=4),
    "emergence.half_times": lambda: dict(run=_emergence().parity_runs(1, width=4, steps=1, batch_size=4, n_probe=4)),
    "emergence.initial_strength": lambda: dict(strength=5.0, init=0.01),
    "emergence.time_theory": lambda: dict(t=[0.0, 1.0], frequencies=[0.6, 0.4], strength=5.0, init=0.01, calibration=22.0),
    "emergence.time_half_times": lambda: dict(frequencies=[0.6, 0.4], strength=5.0, init=0.01, calibration=22.0),
    "emergence.calibrate_time": lambda: dict(half_time=20.0, frequency=0.6, strength=5.0, init=0.01),
    "emergence.data_theory": lambda: dict(n_samples=[100.0], frequencies=[0.6, 0.4], calibration=800.0),
    "emergence.width_theory": lambda: dict(widths=[4.0], n_skills=2, calibration=4.0),
    "tasks.parity.parity_task": lambda: dict(n_networks=2),
    "tasks.parity.parity_sampler": lambda: dict(task=_parity().parity_task(), batch_size=4),
    "tasks.parity.parity_dataset": lambda: dict(task=_parity().parity_task(), n_samples=4),
    "tasks.parity.parity_probe": lambda: dict(task=_parity().parity_task(), n_per_skill=4),
    "grokking.mlp_inits": lambda: dict(n_in=3, width=4, n_out=2, variants=["a"], n_seeds=1, seed=0),
    "grokking.epoch_sampler": lambda: dict(x=torch.zeros(4, 3), y=torch.zeros(4, dtype=torch.long), n_networks=2, batch=2),
    "grokking.grokking_runs": lambda: dict(x_train=torch.rand(8, 3), y_train=torch.arange(8) % 2, x_test=torch.rand(4, 3),
                                           y_test=torch.arange(4) % 2, variants=["b"], width=3, epochs=1, batch=4),
    "grokking.delay": lambda: dict(times=[0.0, 1.0], train_acc=[0.2, 0.9], test_acc=[0.1, 0.8], level=0.5),
    "mlp.init_params": lambda: dict(n_networks=2, n_in=3, width=4, depth=2, n_out=2, generator=torch.Generator(),
                                    dtype=torch.float32, device="cpu"),
    "mlp.train_grid": lambda: dict(data=_digits(), alphas=[0.0], noises=[0.0], n_seeds=1, noise_kind="data", width=4,
                                   depth=1, steps=1, lr=1e-3, dropout=0.0, data_noise=0.0, seed=0, dtype=torch.float32,
                                   device="cpu"),
    **{f"shallow.{name}": functools.partial(_shallow, name) for name in (
        "activation_batch", "activation_runs", "classify", "clear_of_kernel_threshold", "deep_inits", "deep_runs", "conserved", "conserved_drift", "digit_parity_data", "exponent_diagram", "final_state",
        "gaussian_init", "gaussian_overlaps", "gd_runs", "integrate_flow", "kernel_ratio", "mechanism_map",
        "mechanism_stats", "observables_of_weights", "overlaps", "power_law_exponent", "prototype_inits", "scaled_inits",
        "solve", "solve_overlaps", "symmetric_line_data", "tanh_inits", "tanh_runs", "weights")},
    "springblock.chain_diagram": lambda: dict(mu=[0.1], eps=[0.0, 0.1], asymmetry=1.5, n_blocks=2, steps=2),
    "springblock.first_order": lambda: _chain() | dict(eta=0.01),
    "springblock.profile": lambda: dict(d=[0.2, 0.3, 0.5], pull=1.0),
    "springblock.profile_large_noise": lambda: dict(mu_fwd=0.1, mu_back=0.2, n_blocks=2, k=1.0, pull=1.0),
    "springblock.profile_no_noise": lambda: dict(mu=0.1, n_blocks=2, k=1.0, pull=1.0),
    "springblock.second_order": lambda: _chain() | dict(mass=1.0, damping=1.0, decay=0.001, dt=0.05),
    "train.train": _train,
    "ode.integrate": lambda: dict(rhs=lambda y: -y, t=[0.0, 0.5, 1.0], y0=[1.0, 2.0]),
    **{f"operators.{name}": functools.partial(_operators, name) for name in (
        "alignment_history", "checkpoint", "dense_reference", "final_spectra", "first_order_check",
        "first_order_errors", "gradient_alignment", "init_params", "mse_loss", "operator_ranks", "rank_history",
        "recorder", "task_alignment", "task_errors", "train_networks", "eigenfunctions", "hidden_pca")},
    "operators.make_step": lambda: dict(kind="gru", n_in=3, n_hidden=4),
    "separation.curvature": lambda: dict(log_d=[2.0, 1.5, 0.0], normalise=False),
    "separation.log_separation": lambda: dict(h=np.eye(4), labels=[0, 1, 0, 1], n_classes=2),
    "separation.profile_grid": lambda: dict(fig=_figure(), profiles=np.ones((1, 2, 3)), row_labels=["a"],
                                            col_labels=["b", "c"], every_marker=2),
    "spectra.effective_rank": lambda: dict(singular_values=[3.0, 1.0], threshold=0.9),
    "spectra.leading_spectrum": lambda: dict(apply=lambda z: z, shape=(2, 3), k=2, adjoint=None),
    "spectra.leading_eigenpairs": lambda: dict(apply=lambda z: 2 * z, shape=(2, 3), k=2),
    "spectra.partial_gram": lambda: dict(outputs=torch.ones(2, 2, 5, 4), keep="time"),
    "spectra.rademacher": lambda: dict(n=2, shape=(2, 3), seed=1),
    "tasks.digits.load": lambda: dict(n_train=100, seed=1),
    "tasks.kpath.permuted_task": lambda: dict(z_train=np.eye(10)[np.arange(20) % 10] - 0.1, y_train=np.arange(20) % 10,
                                              z_test=np.zeros((3, 10)), y_test=np.arange(3), gate=np.eye(2, dtype=bool),
                                              hidden=4, seed=0),
    "tasks.kpath.mode_accuracy": lambda: dict(permuted=kpath.permuted_task(
        np.eye(10)[np.arange(20) % 10] - 0.1, np.arange(20) % 10, np.zeros((3, 10)), np.arange(3), np.eye(2, dtype=bool),
        hidden=4, seed=0), strengths=np.ones(9)),
    "tasks.kpath.whiten_pca": lambda: dict(x_train=np.random.default_rng(0).normal(size=(20, 5)), x_test=np.zeros((3, 5)),
                                           dims=3),
    "tasks.mnist.load": lambda: dict(path=_small_mnist(), n_train=10, seed=1, name="mnist_file"),
    "tasks.hierarchy.context_targets": lambda: dict(n_contexts=2),
    "tasks.hierarchy.context_task": lambda: dict(n_contexts=2, n_slots=3, shared_depth=2, hidden=4),
    "tasks.hierarchy.cross_module_similarity": lambda: dict(similarity=np.eye(6), n_modules=2),
    "tasks.hierarchy.modes_of": lambda: dict(features=np.eye(3), tol=1e-10),
    "tasks.hierarchy.routing_gate": lambda: dict(n_modules=4, n_trained=2),
    "tasks.hierarchy.routing_network": lambda: dict(n_modules=2, width_in=3, hidden=4, width_out=2),
    "tasks.hierarchy.pair_samples": lambda: dict(net=hierarchy.routing_network(2, 3, 4, 2), pairs=[(0, 1)],
                                                 items=[np.eye(3)] * 2, targets=[np.ones((3, 2))] * 2, weight=0.5),
    "tasks.hierarchy.routing_task": lambda: dict(gate=np.eye(2, dtype=bool), hidden=8, features=np.eye(3)),
    "tasks.hierarchy.tree_features": lambda: dict(depth=2),
    "tasks.hierarchy.tree_task": lambda: dict(depth=2, hidden=4),
    "tasks.hierarchy.xor_task": lambda: dict(hidden=3),
    "tasks.random_regression": lambda: dict(n_samples=10, in_dim=2, out_dim=3, seed=0, whitened=True),
    "tasks.recurrent.flip_flop": lambda: dict(n_trials=2, steps=5, n_bits=2, rate=0.2, noise=0.1, generator=1),
    "tasks.recurrent.memory_multitask": lambda: dict(n_per_task=2, t_context=1, t_stim=1, t_memory=1, t_response=2,
                                                     noise=0.1, uniform=True, generator=0, cue_throughout=True),
    "tasks.recurrent.memory_pro": lambda: dict(n_trials=2, t_stim=1, t_memory=0, t_response=2, noise=0.1,
                                               uniform=False, generator=torch.Generator().manual_seed(0)),
    "tasks.recurrent.memory_task": lambda: dict(angles=torch.zeros(2, dtype=torch.float64), t_stim=1, t_memory=1,
                                                t_response=1, anti=True, delay=False, noise=0.1, generator=0),
    "tasks.recurrent.sampler": lambda: dict(make_batch=lambda n, gen: (torch.zeros(n, 1),), n_networks=2, n_trials=3),
    "tasks.recurrent.task_angles": lambda: dict(n_trials=4, uniform=False, generator=0),
    "tasks.skill_frequencies": lambda: dict(n_skills=3, alpha=0.5),
    "tasks.skill_sampler": lambda: dict(frequencies=[0.5, 0.5], strength=1.0, n_networks=2, batch_size=4),
}

DECLARED = declared_functions()
CASES = [(fname, pname) for fname, func in DECLARED.items() for pname in func.__param_constraints__]


def valid_call(fname):
    if fname not in VALID:
        pytest.fail(f"{fname} declares parameters but tests/test_validation.py has no VALID entry for it")
    return VALID[fname]()


def test_every_declared_function_has_a_valid_example():
    missing = sorted(set(DECLARED) - set(VALID))
    stale = sorted(set(VALID) - set(DECLARED))
    assert not missing, f"add valid example arguments to VALID in tests/test_validation.py for {missing}"
    assert not stale, f"VALID has entries for functions that declare nothing (any more): {stale}"
    assert len(DECLARED) >= 40 and len(CASES) >= 120  # the library's own declarations are all found


@pytest.mark.parametrize("fname", list(DECLARED))
def test_defaults_satisfy_the_declarations(fname):
    func = DECLARED[fname]
    parameters = inspect.signature(func).parameters
    for pname, constraint in func.__param_constraints__.items():
        default = parameters[pname].default
        if default is not inspect.Parameter.empty:
            constraint.check(pname, default)


@pytest.mark.parametrize("fname", list(DECLARED))
def test_valid_example_passes_the_declarations_and_runs(fname):
    func = DECLARED[fname]
    kwargs = valid_call(fname)
    bound = inspect.signature(func).bind(**kwargs)
    for pname, constraint in func.__param_constraints__.items():
        if pname in bound.arguments:
            constraint.check(pname, bound.arguments[pname])
    func(**kwargs)


@pytest.mark.parametrize("fname,pname", CASES, ids=[f"{f}:{p}" for f, p in CASES])
def test_bad_argument_raises_naming_the_parameter_and_the_value(fname, pname):
    func = DECLARED[fname]
    bad = func.__param_constraints__[pname].invalid_example()
    kwargs = valid_call(fname) | {pname: bad}
    with pytest.raises(ValueError) as err:
        func(**kwargs)
    text = str(err.value)
    assert pname in text and repr(bad) in text, text
    assert text.startswith(f"{pname} must "), text


# ---------------------------------------------------------------------------
# The checks left imperative (they depend on other arguments or on data) also say what was given
# ---------------------------------------------------------------------------


def test_imperative_checks_name_the_parameter_and_what_was_given():
    from learning_dynamics import operators, separation
    from learning_dynamics.ode import integrate
    from learning_dynamics.tasks import hierarchy

    step, params, x, y, ops, records = _rnn()
    cases = [
        (lambda: operators.checkpoint({"loss": np.zeros((1, 1))}, 0, 0), r"records must hold the parameters .*got \['loss'\]"),
        (lambda: operators.pair_average(np.eye(2), []), r"pairs must hold at least one \(a, b\) pair; got \[\]"),
        (lambda: ops.J_theta({}), r"dtheta must hold every step parameter .*; got \[\], missing"),
        (lambda: operators.step_params(step, {}), r"params must hold the step's parameters .*got \[\], missing the step"),
        (lambda: operators.KPFlow(torch.nn.Linear(1, 1), x), r"step must expose n_hidden .*; got a Linear without it"),
        (lambda: separation.load_curve([np.inf, 1.0, 0.0]), r"log_d must be finite .*; got \[inf, 1.0, 0.0\]"),
        (lambda: separation.curvature([1.0, 2.0, 1.0]), r"log_d must have a net separation .*got array\(\[1., 2., 1.\]\)"),
        (lambda: separation.spearman([1, 2, 3], [1, 2]), r"a and b must be .* same length >= 2; got lengths 3 and 2"),
        (lambda: separation.log_separation(np.ones((4, 2)), [0, 0, 0, 0]), r"labels must hold at least 2 classes; got a single"),
        (lambda: integrate(lambda v: -v, [1.0, 0.0], [1.0]), r"t must be a non-empty, non-decreasing .*; got \[1.0, 0.0\]"),
        (lambda: hierarchy.routing_task(np.zeros((2, 3), dtype=bool)), r"gate must be a square .*; got array\(\[\[False"),
        (lambda: hierarchy.routing_gate(3, 4), r"n_trained must be in \[1, 3\]; got 4"),
        (lambda: hierarchy.context_task(3, n_slots=2), r"n_slots must be >= 3; got 2"),
    ]
    for call, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            call()


def test_value_text_describes_big_values_without_formatting_them():
    # AnyOf builds this text for each alternative a valid value misses (train_gdln's list of datasets): keep it cheap
    assert V.value_text(np.zeros((300, 400))) == "ndarray of shape (300, 400)"
    assert V.value_text(np.arange(3)) == "array([0, 1, 2])"
    from learning_dynamics.tasks import hierarchy

    task = hierarchy.routing_task(hierarchy.routing_gate(3, 2), hidden=4)
    assert V.value_text(task.data) == "a GatedData"
    assert V.value_text([task.data] * 10) == "a list of 10 GatedData"
    assert V.value_text([np.zeros((500, 500))] * 50) == "a list of 50 ndarray"
