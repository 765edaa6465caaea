"""Our matrix-free operators against the authors' KPFlow package, on the same GRU.

Every row times one computation on the same model, inputs and random +-1
probes: ``batched_s`` is ours (``learning_dynamics.operators``), ``loop_s``
is the KPFlow package's (or, in the last row, ours one probe at a time), and
``ratio = loop_s / batched_s`` (> 1: ours is faster). Each time includes
building the operator (a rollout for us; per-step Jacobians for KPFlow's P)
and is the best of a few repeats after a warm-up. The note gives the
largest relative difference between the two results.

KPFlow is never a dependency of this project. Install it in a separate
environment and point ``KPFLOW_PATH`` at its ``src`` folder (the one that
holds ``kpflow/``); without it the rows say "kpflow not installed".
"""

from __future__ import annotations

import importlib
import os
import sys
import time

import learning_dynamics  # noqa: F401  (first: it sets the CPU thread policy before torch loads)
import numpy as np
import torch
from torch import nn

from learning_dynamics import operators as O
from learning_dynamics import spectra
from learning_dynamics.tasks import recurrent as R

SIZES = {  # (hidden, trials, time, probes)
    "book": (64, 8, 50, 32),
    "paper": (256, 20, 90, 8),
}
REPEATS = 5
SPECTRUM_K = 10


def _kpflow():
    """The KPFlow modules, or None."""
    path = os.environ.get("KPFLOW_PATH")
    if path and path not in sys.path:
        sys.path.insert(0, path)
    try:
        return {name: importlib.import_module(f"kpflow.{name}") for name in ("parameter_op", "propagation_op", "grad_op")}
    except ImportError:
        return None


def _best(fn):
    fn()  # warm-up
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


class _Hidden(nn.Module):
    """nn.GRU returning its hidden states, the model form KPFlow's hidden NTK expects."""

    def __init__(self, gru):
        super().__init__()
        self.gru = gru

    def forward(self, x):
        return self.gru(x)[0]


def _setup(hidden, trials, steps, n_probes):
    torch.manual_seed(0)
    step = O.make_step("gru", 3, hidden)
    params = {k: v[0] for k, v in O.init_params(step, 3, g=1.0, seed=0, dtype=torch.float32).items()}
    third = steps // 3
    x, _ = R.memory_pro(trials, third, third, steps - 2 * third, noise=0.0, uniform=True, dtype=torch.float32)
    theta = O.step_params(step, params)
    cell = nn.GRUCell(3, hidden)
    cell.load_state_dict(theta)
    gru = nn.GRU(3, hidden, batch_first=True)
    gru.load_state_dict({k + "_l0": v for k, v in theta.items()})
    probes = spectra.rademacher(n_probes, (trials, steps, hidden), seed=1, dtype=torch.float32)
    return step, params, x, cell, gru, probes


def _rel(a, b) -> float:
    return float((torch.as_tensor(a) - torch.as_tensor(b)).norm() / torch.as_tensor(b).norm())


def _ranks_from_outputs(outputs):
    """The authors' effective-rank recipe on probe outputs: reduced Gram over time, 95% of sum(eig^2)."""
    out = {}
    for name, y in outputs.items():
        evals = torch.linalg.eigvalsh(spectra.partial_gram(y, "time")).flip(-1).clamp_min(0)
        out[name] = int(spectra.effective_rank(evals))
    return out


def _rows_for(label, kp, hidden, trials, steps, n_probes) -> list[dict]:
    step, params, x, cell, gru, probes = _setup(hidden, trials, steps, n_probes)
    size = f"GRU H={hidden}, {trials} trials x {steps} steps, {n_probes} probes, float32"

    def ours(name):
        return lambda: O.KPFlow(step, x, params).operator(name)(probes)

    rows = []
    if kp is not None:
        with torch.no_grad():
            h = _Hidden(gru)(x)
        theirs = {
            "K": lambda: kp["parameter_op"].ParameterOperator(cell, x, h).batched_call(probes),
            "P": lambda: kp["propagation_op"].PropagationOperator_LinearForm(cell, x, h).batched_call(probes),
            "P_adj": lambda: kp["propagation_op"].PropagationOperator_LinearForm(cell, x, h).batched_adjoint_call(probes),
            "PKP": lambda: kp["grad_op"].HiddenNTKOperator(_Hidden(gru), x, h).batched_call(probes),
        }
        for name, fn in theirs.items():
            t_ours, a = _best(ours(name))
            t_theirs, b = _best(fn)
            rows.append(dict(benchmark=f"kpflow [{label}]: {name} on probes, ours vs KPFlow package", batched_s=t_ours,
                             loop_s=t_theirs, ratio=t_theirs / t_ours, note=f"{size}; max rel diff {_rel(a, b):.1e}"))

        def ours_ranks():
            result = O.operator_ranks(O.KPFlow(step, x, params), n_probes=n_probes, seed=1)
            return {k: result[k] for k in ("K", "P", "PKP")}

        def theirs_ranks():
            kop = kp["parameter_op"].ParameterOperator(cell, x, h)
            pop = kp["propagation_op"].PropagationOperator_LinearForm(cell, x, h)
            gop = kp["grad_op"].HiddenNTKOperator(_Hidden(gru), x, h)
            return _ranks_from_outputs({"K": kop.batched_call(probes), "P": pop.batched_call(probes),
                                        "PKP": gop.batched_call(probes)})

        t_ours, a = _best(ours_ranks)
        t_theirs, b = _best(theirs_ranks)
        rows.append(dict(benchmark=f"kpflow [{label}]: effective ranks of K, P, PKP*", batched_s=t_ours, loop_s=t_theirs,
                         ratio=t_theirs / t_ours, note=f"{size}; ours {a}, KPFlow {b}"))

        def ours_spectrum():
            ops = O.KPFlow(step, x, params)
            return spectra.leading_spectrum(ops.PKP, ops.shape, SPECTRUM_K, n_iter=9, oversample=2, seed=0, dtype=torch.float32)

        def theirs_spectrum():
            gop = kp["grad_op"].HiddenNTKOperator(_Hidden(gru), x, h)
            return torch.as_tensor(np.array(gop.eigsh(SPECTRUM_K, tol=1e-4)).copy())

        t_ours, a = _best(ours_spectrum)
        t_theirs, b = _best(theirs_spectrum)
        rows.append(dict(benchmark=f"kpflow [{label}]: top-{SPECTRUM_K} eigenvalues of PKP*", batched_s=t_ours,
                         loop_s=t_theirs, ratio=t_theirs / t_ours,
                         note=f"{size}; ours block Krylov (10 blocks of 12, ~1e-4 accurate at the paper size), KPFlow ARPACK eigsh (tol 1e-4); "
                              f"max rel diff {_rel(a, b.to(a.dtype)):.1e}"))
    else:
        rows.append(dict(benchmark=f"kpflow [{label}]: ours vs KPFlow package", batched_s=float("nan"),
                         loop_s=float("nan"), ratio=float("nan"),
                         note="kpflow not installed (set KPFLOW_PATH to the src folder of meeree/kpflow)"))

    ops = O.KPFlow(step, x, params)
    t_batched, a = _best(lambda: ops.PKP(probes))
    t_loop, b = _best(lambda: torch.stack([ops.PKP(p) for p in probes]))
    rows.append(dict(benchmark=f"kpflow [{label}]: PKP* on probes, vmapped vs one probe at a time", batched_s=t_batched,
                     loop_s=t_loop, ratio=t_loop / t_batched, note=f"{size}; max rel diff {_rel(a, b):.1e}"))
    return rows


def rows() -> list[dict]:
    kp = _kpflow()
    out = []
    for label, sizes in SIZES.items():
        out.extend(_rows_for(label, kp, *sizes))
    return out


if __name__ == "__main__":  # python bench/bench_kpflow.py [book] [paper]: rows print as each size finishes
    kp = _kpflow()
    for label in sys.argv[1:] or list(SIZES):
        for row in _rows_for(label, kp, *SIZES[label]):
            print(f"{row['benchmark']:<70} ours {row['batched_s']:.3g} s  other {row['loop_s']:.3g} s  "
                  f"ratio {row['ratio']:.3g}  ({row['note']})", flush=True)
