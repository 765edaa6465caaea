"""The library's CPU thread policy, set in one place (DESIGN.md), on import.

torch's CPU kernels run on GNU OpenMP threads, which by default spin while
they wait for the next parallel region. On an idle machine that saves a few
microseconds; on a shared one a spinning worker holds a core that the main
thread needs, and a chapter ran 6-10x slower for a 2x share of the CPU.
``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep instead.

libgomp reads the variable once, when torch loads it, so the policy must be
in the environment before ``import torch``. Importing ``learning_dynamics``
does that (every chapter imports it first), and the processes it starts
(papermill kernels, dask workers) inherit it. A value the user set is kept.
If torch was imported first, the spinning threads are already running: the
library then uses one intra-op thread, which cannot spin, and warns.

Small problems (:func:`small_problem`, used by the trainer and the operator
analyses) run on one intra-op thread: their steps are dozens of tiny
products, so a second thread only adds synchronisation. Training the kpflow
chapter's three GRUs (book preset) took 17.9 s on two sleeping-wait threads
and 9.0 s on one; with two CPU-bound processes beside it, 24.6 s and 14.0 s.
"""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager

WAIT_POLICY = "PASSIVE"


def apply() -> str:
    """Set the policy; return what was done ("set", "user", or "single thread")."""
    if os.environ.get("OMP_WAIT_POLICY"):
        return "user"
    os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
    if "torch" not in sys.modules:
        return "set"
    import torch

    torch.set_num_threads(1)
    warnings.warn(
        "torch was imported before learning_dynamics, so its OpenMP threads spin while waiting and slow "
        "down badly on a busy machine; using one CPU thread. Import learning_dynamics first, or set "
        "OMP_WAIT_POLICY=PASSIVE in the environment, to keep every thread.",
        RuntimeWarning,
        stacklevel=3,
    )
    return "single thread"


SINGLE_THREAD_BELOW = 150_000  # stacked entries below which small_problem uses one CPU thread (Adam on 126k: 1.4x faster on one)


@contextmanager
def small_problem(size: int, device="cpu"):
    """One intra-op CPU thread for a problem of ``size`` weight entries below SINGLE_THREAD_BELOW.

    Each step is a few dozen tiny products: a second thread only adds synchronisation, and when the
    other cores are busy every parallel region waits for a thread to be scheduled (a first batched QR
    of 64 x 64 matrices took 0.2 s on two busy cores, against 2 ms on one thread). The previous
    setting is restored afterwards.
    """
    import torch

    threads = torch.get_num_threads()
    single = torch.device(device).type == "cpu" and size < SINGLE_THREAD_BELOW and threads > 1
    if single:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if single:
            torch.set_num_threads(threads)
