"""Every runner honours ``device``: each tensor it computes with lives on the device it was asked for.

There is no GPU here, so torch's ``meta`` device stands in for one: tensors with a shape and a dtype but
no data, on which every op runs (torch refuses to mix them with CPU tensors in most ops, as it would with
CUDA ones). ``validation.check_device`` is patched to accept ``"meta"`` and each runner runs with
``device="meta"`` under :class:`DeviceAudit`, a ``TorchDispatchMode`` that sees every op (factories too)
and

- fails an op that takes a meta tensor and a CPU tensor of one or more dimensions (on CUDA that raises, or
  for a few ops such as ``@`` that meta lets through, silently runs where the CPU tensor is);
- fails every CPU tensor the runner makes that does not end up on the device: a CPU tensor is allowed
  only when it (or a tensor computed from it) is then moved with ``.to(device)`` (the deliberate CPU-side
  init draws, which make every device see the same init), when it was copied back from the device
  (``.cpu().numpy()`` of the results), or when it only feeds a check read as a Python number; 0-d CPU
  tensors are scalars, which CUDA ops accept as well;
- answers what needs data, which meta tensors lack, so that the runner goes on to its end: a Python number
  read from a meta tensor is 1.0 (a float), 2 (an integer) or True (a bool; False for ``any()``), so that
  the trainer's finiteness and learning-rate checks pass; a copy back to the CPU is zeros; and an op
  without a meta kernel (``bincount``, in the separation measure after ``mlp.train_grid``) gets its output
  shapes from a run on CPU zeros (counted in ``fallbacks``).

The trainer's losses must also be on the device (``train._check_finite`` sees every step's loss), which
catches a runner that trains on the CPU and moves only its result; and the meta run must return the
same records, with the same shapes, as a CPU run of the same case. Three runners written wrong on
purpose (ignoring ``device``, mixing a CPU tensor in, training on the CPU and moving the result) check
that the audit fails them. The spring-block chain is numpy: it must refuse any device but the CPU.
"""

from __future__ import annotations

import learning_dynamics  # noqa: F401, I001  first: its thread policy applies before torch loads

import sys
import traceback
import warnings

import numpy as np
import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from learning_dynamics import gated, linear, mlp, operators, shallow, springblock, tasks, validation
from learning_dynamics import train as train_module
from learning_dynamics.tasks import digits, hierarchy, recurrent

DEVICE = "meta"
aten = torch.ops.aten
MOVES = (aten._to_copy, aten.copy_)


class MetaGenerator(torch.Generator):
    """A CPU generator that says it is on the meta device (meta has no generators): draws with it on meta work."""

    @property
    def device(self):
        return torch.device(DEVICE)


def _where() -> str:
    """The innermost line of the library (or of this file) that led to the current op."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        name = frame.filename.replace("\\", "/")
        if "/learning_dynamics/" in name or name.endswith("test_devices.py"):
            return f"{name.rsplit('/', 1)[-1]}:{frame.lineno} ({(frame.line or '').strip()})"
    return "?"


class DeviceAudit(TorchDispatchMode):
    """Every op while a runner runs on meta: where CPU tensors come from and go, with data faked where needed."""

    def __init__(self):
        super().__init__()
        self.nodes: list[dict] = []     # one per op that made a CPU tensor: op, where, parents, consumers, ndim
        self.producer: dict[int, int] = {}  # id(CPU tensor) -> its node
        self.keep: list = []            # every tensor whose id is a key above stays alive, so ids stay unique
        self.moved: set[int] = set()    # nodes with a descendant moved to the device
        self.from_device: set[int] = set()  # nodes computed from a copy back from the device
        self.read: set[int] = set()     # nodes read as a Python number
        self.truth: dict[int, bool] = {}  # the answer bool() gives for a meta all() / any()
        self.mixing: list[str] = []
        self.reads = self.copies = self.meta_ops = 0
        self.fallbacks: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        meta_in = [t for t in tensors if t.device.type == DEVICE]
        cpu_in = [t for t in tensors if t.device.type == "cpu"]
        packet = func.overloadpacket
        if packet is aten._local_scalar_dense:  # float(t), int(t), bool(t), t.item()
            t = args[0]
            if t.device.type != DEVICE:
                self.read.add(self.producer.get(id(t)))
                return func(*args, **kwargs)
            self.reads += 1
            if t.dtype == torch.bool:
                return self.truth.get(id(t), True)
            return 1.0 if t.is_floating_point() or t.is_complex() else 2
        if packet is aten._to_copy and meta_in and torch.device(kwargs.get("device") or DEVICE).type == "cpu":
            self.copies += 1  # t.cpu(): no data to copy, so zeros
            out = torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
            self._record(func, [out], [], from_device=True)
            return out
        if packet is aten.copy_ and args[0].device.type == "cpu" and args[1].device.type == DEVICE:
            self.copies += 1
            args[0].zero_()
            self._record(func, [args[0]], [self.producer.get(id(args[0]))], from_device=True)
            return args[0]
        if meta_in and packet not in MOVES:
            mixed = [tuple(t.shape) for t in cpu_in if t.ndim > 0]
            if mixed:
                self.mixing.append(f"{func} takes meta and CPU tensors (CPU shapes {mixed}) at {_where()}")
        try:
            out = func(*args, **kwargs)
        except NotImplementedError as err:  # an op without a meta kernel: its shapes from a run on CPU zeros
            if not meta_in or "Meta" not in str(err):
                raise
            self.fallbacks.append(str(func))
            zeros = lambda t: torch.zeros(t.shape, dtype=t.dtype) if isinstance(t, torch.Tensor) and t.is_meta else t  # noqa: E731
            out = func(*pytree.tree_map(zeros, args), **pytree.tree_map(zeros, kwargs))
            out = pytree.tree_map(lambda t: torch.empty(t.shape, dtype=t.dtype, device=DEVICE)
                                  if isinstance(t, torch.Tensor) else t, out)
        self.meta_ops += bool(meta_in)
        outs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if packet in (aten.all, aten.any):
            for t in outs:
                self.truth[id(t)] = packet is aten.all
                self.keep.append(t)
        parents = [self.producer.get(id(t)) for t in cpu_in]
        if cpu_in and any(t.device.type == DEVICE for t in outs):  # a move (or a CPU scalar in a device op)
            self._mark_moved(parents)
        cpu_out = [t for t in outs if t.device.type == "cpu"]
        if cpu_out:
            self._record(func, cpu_out, parents, from_device=bool(meta_in))
        return out

    def _record(self, func, outs, parents, from_device=False):
        parents = sorted({p for p in parents if p is not None})
        n = len(self.nodes)
        self.nodes.append({"op": str(func), "where": _where(), "parents": parents, "consumers": [],
                           "ndim": max(t.ndim for t in outs)})
        for p in parents:
            self.nodes[p]["consumers"].append(n)
        if from_device or any(p in self.from_device for p in parents):
            self.from_device.add(n)
        for t in outs:
            self.producer[id(t)] = n
            self.keep.append(t)

    def _mark_moved(self, start):
        stack = [n for n in start if n is not None]
        while stack:
            n = stack.pop()
            if n not in self.moved:
                self.moved.add(n)
                stack.extend(self.nodes[n]["parents"])

    def stray_cpu_tensors(self) -> list[str]:
        """CPU tensors (of one or more dimensions) that never reach the device, never came from it, and are not checks."""
        checks = set()  # nodes that feed only Python-number reads
        for n in reversed(range(len(self.nodes))):
            consumers = self.nodes[n]["consumers"]
            if (n in self.read or consumers) and all(c in checks for c in consumers):
                checks.add(n)
        # views an op made of a moved tensor on its way (diag_embed's transposes), used by nothing
        spare = {n for n, node in enumerate(self.nodes)
                 if not node["consumers"] and node["parents"] and all(p in self.moved for p in node["parents"])}
        allowed = self.moved | self.from_device | checks | spare
        return [f"{node['op']} made a CPU tensor {'(' + str(node['ndim']) + '-d)'} at {node['where']}"
                for n, node in enumerate(self.nodes) if node["ndim"] > 0 and n not in allowed]


@pytest.fixture
def meta_device(monkeypatch):
    """``device="meta"`` accepted, generators on "meta" made as :class:`MetaGenerator`; the trainer's losses recorded."""
    check_device, check_generator, check_finite = validation.check_device, validation.check_generator, \
        train_module._check_finite

    def accept_meta(name, value):
        return value if value == DEVICE else check_device(name, value)

    def generator(seed, device="cpu"):
        if torch.device(device).type != DEVICE or isinstance(seed, torch.Generator):
            return check_generator(seed, device)
        return MetaGenerator().manual_seed(validation.check_int("seed", seed, low=0))

    for name, module in list(sys.modules.items()):  # every module that imported them by name
        if name == "learning_dynamics" or name.startswith("learning_dynamics."):
            if getattr(module, "check_device", None) is check_device:
                monkeypatch.setattr(module, "check_device", accept_meta)
            if getattr(module, "check_generator", None) is check_generator:
                monkeypatch.setattr(module, "check_generator", generator)
    losses = []

    def finite(loss, *args):
        losses.append(loss.device.type)
        return check_finite(loss, *args)

    monkeypatch.setattr(train_module, "_check_finite", finite)
    return losses


class RunnerFailed(AssertionError):
    """The runner raised on meta: the error, and what the audit had seen by then (usually the cause)."""


def audit(run, losses, uses_trainer=True):
    """Run ``run()`` on meta under the audit; return (result, problems)."""
    losses.clear()
    seen = DeviceAudit()
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):  # zeros for results: log(0), 0/0 in numpy after
            warnings.simplefilter("ignore")
            with seen:
                result = run()
    except Exception as err:
        problems = seen.mixing + seen.stray_cpu_tensors()
        raise RunnerFailed(f"{type(err).__name__}: {err}\n  " + "\n  ".join(problems[:20])) from err
    problems = seen.mixing + seen.stray_cpu_tensors()
    if uses_trainer:
        if not losses:
            problems.append("train.train never checked a loss")
        elif set(losses) != {DEVICE}:
            problems.append(f"train.train stepped on {sorted(set(losses))}, not only on {DEVICE!r}")
    params = getattr(result, "params", None) or {}
    problems += [f"final parameter {k!r} is on {v.device}" for k, v in params.items() if v.device.type != DEVICE]
    return result, problems


# ---- the runners, at small sizes: case(device) -> a thunk that runs the runner -------------------------


def _skill(device):
    sampler = tasks.skill_sampler([0.6, 0.4], 1.0, 2, 4, device=device)
    return lambda: linear.skill_runs(sampler, 2, init=0.1, lr=0.01, steps=3, n_seeds=2, seed=0, record_every=1,
                                     device=device)


def _lambda_grid(device, aligned=False, closed_form=True):
    x, y = tasks.random_regression(10, 2, 2, seed=0)
    return lambda: linear.lambda_grid_runs(x, y, [0.0, 1.0], [1.0, 2.0], lr=0.01, steps=3, seed=0, aligned=aligned,
                                           closed_form=closed_form, device=device)


def _width_toy(device):
    return lambda: linear.width_toy_runs([0.1, 1.0], 3, 1.0, lr=1e-3, steps=3, n_seeds=2, seed=0, record_every=1,
                                         device=device)


def _zero_product(device):
    x, y = tasks.random_regression(4, 3, 2, seed=0, whitened=False)
    return lambda: linear.zero_product_runs(x, y, [0.0, 0.5], [1.0, 2.0], hidden=4, init_scale=0.1, lr=0.01, steps=3,
                                            seed=0, device=device)


def _collapse(device):
    return lambda: linear.collapse_runs(2, 3, 3, [0.1, 0.2], within=1e-3, lr=0.1, steps=3, n_seeds=2, seed=0,
                                        record_every=1, device=device)


def _gd(device):
    rng = np.random.default_rng(0)
    u0, w0 = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    return lambda: shallow.gd_runs(u0, w0, gamma=1.0, c=1.0, eta_u=2.0, eta_w=[0.5, 1.0], lr=0.01, steps=3,
                                   device=device)


def _activations(device):
    rng = np.random.default_rng(0)
    u0, w0 = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    return lambda: shallow.activation_runs(u0, w0, ["relu", "sigmoid"], [1.0, -1.0], gamma=1.0, c=1.0, lr=0.01, steps=3,
                                           device=device)


def _deep(device):
    params, gamma, _ = shallow.deep_inits([0.5], [1.0], 2, n_in=4, width=3, depth=3, seed=0, device=device)
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return lambda: shallow.deep_runs(params, gamma, x.to(device), torch.sign(x[:, 0]).to(device), lr=0.01, steps=3, n_probe=3)


def _tanh(device):
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    return lambda: shallow.tanh_runs(x, y, 3, lr=0.1, steps=3, seed=0, device=device)


def _aligned(device):
    task = hierarchy.tree_task(depth=1, hidden=3)
    return lambda: gated.aligned_runs([task], 0.1, lr=0.01, steps=3, records=3, seed=0, device=device)


def _gdln(device):
    task = hierarchy.tree_task(depth=2, hidden=4)
    params = gated.orthogonal_init(task.net, np.array([0.1, 0.5]), 2, seed=0, device=device)  # device: the params'
    return lambda: gated.train_gdln(task.net, params, task.data, steps=3, lr=0.01, record=lambda p: {"W1": p["W1"]})


def _mlp(device, noise_kind="data"):
    data = digits.load(40, seed=0, dtype=torch.float32, device=device)
    return lambda: mlp.train_grid(data, [0.0, 0.5], [0.0, 0.3], 1, noise_kind=noise_kind, width=4, depth=2, steps=3,
                                  dropout=0.2, seed=0, device=device)


_GRU = operators.make_step("gru", 3, 4)  # the step module (its own zero parameters are not trained)


def _kpflow(device):
    sampler = recurrent.sampler(lambda n, gen: recurrent.memory_pro(n, 2, 1, 2, generator=gen, dtype=torch.float32),
                                2, 4, device=device)
    x, y = (t.to(device) for t in recurrent.memory_pro(3, 2, 1, 2, noise=0.0, uniform=True, dtype=torch.float32))

    def run():
        params = operators.init_params(_GRU, 3, n_networks=2, g=[0.5, 2.0], seed=0, dtype=torch.float32, device=device)
        return train_module.train(operators.mse_loss(_GRU), params, steps=3, lr=1e-2, optimizer="adam", data=sampler,
                                  record=operators.recorder(_GRU, x, y), record_every=1, seed=0)

    return run


def _kpflow_networks(device):
    make = lambda n, gen: recurrent.memory_pro(n, 2, 1, 2, generator=gen, dtype=torch.float32)  # noqa: E731
    x, y = (t.to(device) for t in recurrent.memory_pro(3, 2, 1, 2, noise=0.0, uniform=True, dtype=torch.float32))

    def run():
        params = operators.init_params(_GRU, 3, n_networks=2, g=[0.5, 2.0], seed=0, dtype=torch.float32, device=device)
        return operators.train_networks(_GRU, params, make, 4, x, y, steps=3, lr=1e-2, record_every=1, seed=0)

    return run


def _kpflow_analyses(device):
    """memory-pro GRUs trained on ``device``, then every per-checkpoint analysis of them there."""
    train_run = _kpflow(device)
    x = recurrent.memory_pro(3, 2, 1, 2, noise=0.0, uniform=True, dtype=torch.float32)[0]
    mx, my, task = recurrent.memory_multitask(1, 1, 2, 1, 2, noise=0.0, uniform=True, dtype=torch.float32)
    mt_step = operators.make_step("gru", 3 + len(recurrent.MEMORY_TASKS), 4)

    def run():
        result = train_run()
        operators.rank_history(_GRU, result.records, x, n_probes=2, seed=0, device=device)
        operators.final_spectra(_GRU, result.records, x, 2, seed=0, device=device)
        mt_params = operators.init_params(mt_step, 3, n_networks=2, seed=0, dtype=torch.float32, device=device)
        records = {operators.PARAM_PREFIX + k: torch.stack([v.cpu()] * 2) for k, v in mt_params.items()}
        from torch.fx.experimental import _config as fx_config  # meta cannot know how many trials a task mask picks

        with fx_config.patch(meta_nonzero_assume_all_nonzero=True):
            operators.alignment_history(mt_step, records, mx, my, task, len(recurrent.MEMORY_TASKS), device=device)
        return result

    return run


RUNNERS = {
    "linear.skill_runs": _skill,
    "linear.lambda_grid_runs": _lambda_grid,
    "linear.lambda_grid_runs-aligned-autograd": lambda d: _lambda_grid(d, aligned=True, closed_form=False),
    "linear.width_toy_runs": _width_toy,
    "linear.zero_product_runs": _zero_product,
    "linear.collapse_runs": _collapse,
    "shallow.gd_runs": _gd,
    "shallow.activation_runs": _activations,
    "shallow.deep_runs": _deep,
    "shallow.tanh_runs": _tanh,
    "gated.aligned_runs": _aligned,
    "gated.train_gdln": _gdln,
    "mlp.train_grid": _mlp,
    "mlp.train_grid-dropout-noise": lambda d: _mlp(d, noise_kind="dropout"),
    "operators.init_params+train.train": _kpflow,
    "operators.rank_history+final_spectra+alignment_history": _kpflow_analyses,
    "operators.train_networks": _kpflow_networks,
}
NOT_HONOURED: dict[str, str] = {}  # runner -> why, for runners that do not honour device (xfail strict)


def _shapes(run) -> dict[str, tuple]:
    return {name: np.shape(value) for name, value in run.records.items()}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=NOT_HONOURED[n]))
                                  if n in NOT_HONOURED else n for n in RUNNERS])
def test_runner_makes_every_tensor_on_the_requested_device(name, meta_device):
    reference = RUNNERS[name]("cpu")()
    result, problems = audit(RUNNERS[name](DEVICE), meta_device)
    assert not problems, f"{name} with device={DEVICE!r}:\n  " + "\n  ".join(problems[:20])
    assert _shapes(result) == _shapes(reference), "the meta run went through the whole runner"


@pytest.mark.parametrize("runner", [springblock.first_order, springblock.second_order], ids=["first_order", "second_order"])
def test_springblock_refuses_every_device_but_the_cpu(runner, meta_device, monkeypatch):
    with pytest.raises(ValueError, match="device must be 'cpu' on this machine"):  # no CUDA here
        runner(0.1, 0.1, 0.0, steps=10, device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with a GPU: the chain itself refuses
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for device in ("cuda", "cuda:0", DEVICE):
        with pytest.raises(ValueError, match=r"device must be 'cpu' for the spring-block chain \(a numpy simulation"):
            runner(0.1, 0.1, 0.0, steps=10, device=device)
    with DeviceAudit() as seen:
        run = runner([0.1, 0.2], 0.2, 0.1, steps=10, replicas=2, device="cpu")
    assert isinstance(run.x, np.ndarray) and not seen.nodes and not seen.meta_ops, "numpy only: no tensors at all"


# ---- the audit fails runners that do not honour device -----------------------------------------------------


def _ones(*shape, device="cpu"):
    return torch.ones(*shape, dtype=torch.float64, device=device)


def _ignores_device(device):
    return lambda: train_module.train(linear.matrix_loss, {"w1": _ones(2, 2, 2), "w2": _ones(2, 2, 2)}, steps=2, lr=0.1,
                                      data=(_ones(2, 2, 3), _ones(2, 2, 3)))


def _mixes_a_cpu_tensor_in(device):
    # the matmul with the CPU inputs x runs on meta, but x - y does not: on CUDA the first product would already fail
    return lambda: train_module.train(linear.matrix_loss, {"w1": _ones(2, 2, 2, device=device),
                                                           "w2": _ones(2, 2, 2, device=device)},
                                      steps=2, lr=0.1, data=(_ones(2, 2, 3), _ones(2, 2, 3, device=device)))


def _moves_only_the_result(device):
    def run():
        result = _ignores_device(device)()
        result.params = {k: v.to(device) for k, v in result.params.items()}
        return result

    return run


@pytest.mark.parametrize("wrong,message", [
    (_ignores_device, "made a CPU tensor"),
    (_mixes_a_cpu_tensor_in, "takes meta and CPU tensors (CPU shapes [(2, 2, 3)]) at linear.py"),
    (_moves_only_the_result, "train.train stepped on ['cpu'], not only on 'meta'"),
], ids=["ignores-device", "mixes-a-cpu-tensor-in", "moves-only-the-result"])
def test_the_audit_fails_a_runner_that_does_not_honour_device(wrong, message, meta_device):
    try:
        _, problems = audit(wrong(DEVICE), meta_device)
    except RunnerFailed as err:  # torch itself refused to mix them, after the audit saw the first op that did
        problems = str(err).splitlines()
    assert any(message in p for p in problems), problems


def test_the_audit_allows_cpu_draws_moved_to_the_device_and_results_copied_back(meta_device):
    def run():
        gen = torch.Generator().manual_seed(0)
        w = (torch.randn(3, 4, generator=gen, dtype=torch.float64) * 0.5).to(DEVICE)  # drawn on the CPU, then moved
        scale = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
        if not bool(torch.isfinite(scale).all()):  # a CPU check, read as a Python bool
            raise AssertionError
        out = (w * scale.to(DEVICE)[:, None]).sum(-1)
        return np.log(out.cpu().numpy())  # copied back: zeros here

    _, problems = audit(run, meta_device, uses_trainer=False)
    assert problems == []
    with DeviceAudit() as seen, np.errstate(divide="ignore"):
        run()
    assert seen.copies == 1 and seen.reads == 0
