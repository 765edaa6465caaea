"""Presets of the KPFlow chapter (Hazelden et al. 2025): dynamic collapse and multi-task alignment."""

import math
import re
from dataclasses import dataclass

from ..sweep import CHUNKS_PER_THREAD
from ..validation import Real
from . import ChapterPreset, param, register


@dataclass(frozen=True)
class KPFlowPreset(ChapterPreset):
    # Experiment 1: a GRU on memory-pro, one network per init level g
    cell: str = param("gru", choices=("gru", "rnn"), help="recurrent step F: GRU (the paper's) or vanilla tanh RNN")
    hidden: int = param(64, low=2, high=2048, help="hidden size H")
    t_stim: int = param(15, low=1, help="stimulus period (steps)")
    t_memory: int = param(15, low=0, help="memory period (steps)")
    t_response: int = param(20, low=1, help="response period (steps)")
    g_values: tuple = param((0.01, 1.0, 5.0), items=Real(low=0.0, strict_low=True), min_len=1, help="init levels g of the recurrent weights, one network (panel) each")
    batch: int = param(32, low=1, help="fresh noisy trials per Adam step")
    steps: int = param(300, low=1, help="Adam steps")
    lr: float = param(5e-3, low=0.0, strict_low=True, help="Adam learning rate")
    record_every: int = param(10, low=1, help="record hidden-state ranks every this many steps")
    analysis_every: int = param(4, low=1, help="rebuild the operators at every this-many-th record")
    eval_trials: int = param(8, low=1, help="noise-free evaluation trials (evenly spaced angles)")
    n_probes: int = param(32, low=2, help="random +-1 probes per effective-rank estimate")
    spectrum_k: int = param(20, low=2, help="leading singular values of the full operators (randomised SVD)")
    tail_index: int = param(10, low=0, help="index i at which the trained networks' whole spectra s_i / s_1 of "
                            "P K P* and K are compared (0: not compared; at most spectrum_k)")
    # What training must reach (the paper's trained networks; the smoke preset's tiny, briefly trained ones are
    # held to the qualitative direction only)
    min_p_fall: float = param(4.0, low=1.0, help="least start / end ratio of P's effective rank at the middle g")
    max_hidden_share: float = param(0.25, low=0.0, high=1.0, strict_low=True,
                                    help="largest end hidden-trajectory effective rank over the hidden size")
    max_dm_cosine: float = param(0.55, low=-1.0, high=1.0, help="largest end hidden-state cosine of delay/memory pairs")
    # Operator checks (float64)
    check_hidden: int = param(5, low=1, high=16, help="hidden size of the toy model checked against dense Jacobians")
    check_steps: int = param(6, low=1, high=20, help="time steps of the toy model")
    check_trials: int = param(2, low=1, high=8, help="trials of the toy model")
    fo_lr: float = param(1e-4, low=0.0, strict_low=True, help="GD step of the first-order check")
    fo_points: int = param(11, low=3, high=100, help="learning rates from 1e-6 to 0.1 in the error-vs-step scan")
    # Experiment 2: four related tasks (MP, MA, DP, DA) in one GRU
    mt_hidden: int = param(64, low=2, high=2048, help="hidden size of the multi-task GRU")
    mt_t_context: int = param(3, low=1, help="context period carrying the task cue")
    mt_t_stim: int = param(6, low=1, help="stimulus period")
    mt_t_memory: int = param(6, low=0, help="memory period")
    mt_t_response: int = param(8, low=1, help="response period")
    mt_batch: int = param(64, low=4, help="trials per Adam step (split evenly over the four tasks)")
    mt_steps: int = param(500, low=1, help="Adam steps")
    mt_lr: float = param(5e-3, low=0.0, strict_low=True, help="Adam learning rate")
    mt_seeds: int = param(2, low=1, help="independent multi-task networks")
    mt_record_every: int = param(25, low=1, help="alignment matrices every this many steps")
    mt_eval_per_task: int = param(8, low=1, help="noise-free evaluation trials per task")

    def __post_init__(self):
        super().__post_init__()
        if self.tail_index > self.spectrum_k:
            raise ValueError(f"tail_index must be at most spectrum_k = {self.spectrum_k} (the singular values "
                             f"computed), or 0 to skip the comparison; got {self.tail_index}")

    def memory_needs(self) -> dict[str, float]:
        # float32 GRUs: backpropagation through time keeps (networks, batch, T, hidden) activations (about 15 per
        # unit and step: the paper's four-task run of 20 GRUs peaked at 18.6 GB), for the networks that train at
        # once in this machine's processes; the recorder keeps every record's parameters (3 H x H per network),
        # Adam a few copies more
        t = self.t_stim + self.t_memory + self.t_response
        t_mt = self.mt_t_context + self.mt_t_stim + self.mt_t_memory + self.mt_t_response
        records, mt_records = self.steps // self.record_every + 1, self.mt_steps // self.mt_record_every + 1
        n, n_mt = len(self.g_values), self.mt_seeds
        return {"hidden": 4.0 * self.hidden * (15 * self._at_once(n) * self.batch * t
                                               + n * (3 * self.hidden * (records + 4) + self.eval_trials * t)),
                "mt_hidden": 4.0 * self.mt_hidden * (15 * self._at_once(n_mt) * self.mt_batch * t_mt
                                                     + n_mt * (3 * self.mt_hidden * (mt_records + 4)
                                                               + 4 * self.mt_eval_per_task * t_mt))}

    def _at_once(self, n: int) -> int:
        """Networks that train at the same time on this machine: all (in process), a chunk per local worker
        (``operators.train_networks`` on ``local:N``), or none (a remote cluster's memory is its own)."""
        if self.scheduler is None:
            return n
        local = re.fullmatch(r"local:(\d+)", self.scheduler.strip())
        if local is None:
            return 0
        workers = int(local.group(1))
        return min(n, workers * math.ceil(n / (CHUNKS_PER_THREAD * workers)))


# What the authors' package (github.com/meeree/kpflow) fixes for the paper's experiments: examples/paper_experiment_1
# ("exp. 1", Experiment 1), the task definitions in src/kpflow/custom_tasks, and the common training code examples/train.py.
PAPER = {
    "cell": ("gru", "exp. 1 train.py: model = gru"),
    "hidden": (256, "exp. 1 train.py: hidden_size = 256"),
    "t_stim": (30, "memory_pro.py: T_stim (T = 90)"),
    "t_memory": (30, "memory_pro.py: T_memory"),
    "t_response": (30, "memory_pro.py: T_response"),
    # sweep.py's g: 10 ** linspace(log10 1e-5, log10 5, 10), to 3 digits
    "g_values": ((1e-5, 4.3e-5, 1.85e-4, 7.94e-4, 3.41e-3, 0.0147, 0.063, 0.271, 1.16, 5.0),
                 "exp. 1 sweep.py: 10 log-spaced g",
                 "differs: the figure shows three of them; the preset trains the two ends and 0.065"),
    "batch": (500, "exp. 1 train.py: 500 of 5,000 noisy trials"),
    "steps": (10000, "exp. 1 train.py: niter"),
    "lr": (1e-3, "exp. 1 train.py: Adam, lr"),
    "record_every": (100, "exp. 1 train.py: save_freq"),
    "analysis_every": (4, "eff_rank_over_gd_figure.py: every 4th checkpoint"),
    "eval_trials": (20, "eff_rank_over_gd_figure.py: 20 trials"),
    "n_probes": (100, "eff_rank_over_gd_figure.py: nsamp"),
    "mt_hidden": (256, "examples/train.py: hidden_size"),
    "mt_t_context": (30, "mix_multi_tasks.py: T_context"),
    "mt_t_stim": (30, "mix_multi_tasks.py: memory_pro's T_stim"),
    "mt_t_memory": (30, "mix_multi_tasks.py: memory_pro's T_memory"),
    "mt_t_response": (30, "mix_multi_tasks.py: memory_pro's T_response"),
}
PAPER_NOTE = (
    "Sources: the authors' package meeree/kpflow (exp. 1: examples/paper_experiment_1; the tasks: "
    "src/kpflow/custom_tasks). The paper's figure has one panel per g, three networks picked from sweep.py's ten "
    "on the command line. sweep.py trains its networks on 10 + 10 + 10-step trials, while train.py's default and "
    "every analysis script use 30 + 30 + 30 (T = 90, the paper's duration); the preset follows T = 90. The "
    "package fixes no step count, learning rate or number of networks for the four-task experiment, so the `mt_` "
    "training sizes are the book's own.")

register(
    "kpflow",
    KPFlowPreset,
    # smoke: every Adam step costs a roughly fixed ~10-20 ms of per-op overhead whatever the width or batch, so
    # the step counts are what is cut; larger Adam steps (3e-2, 2e-2) still take P's rank from ~9 to 2 and the
    # four-task network through the delay/memory split (pair cosine ~0.98 -> ~0.6) within them. The four-task
    # periods are about 2/3 of the book's (same proportions). tail_index = 0: on 16-step trials the whole spectrum
    # of P K P* is not below K's for the small-g network (s_10/s_1 0.30-0.81 against 0.28-0.66 after training,
    # and above K's at initialisation, at seeds 0-9), so the smoke preset cannot check that claim; the book
    # preset (50-step trials, 300 steps) passes it for every g at seeds 0-9.
    # Its trained-network bounds are the qualitative ones: after 30 steps P's rank falls 3-4.5x, the hidden rank
    # ends at 25-29% of 24 units, and the delay/memory cosine at 0.43-0.63 (seeds 0-9).
    smoke=dict(hidden=24, t_stim=5, t_memory=5, t_response=6, steps=30, lr=3e-2, record_every=5, analysis_every=3,
               eval_trials=4, n_probes=8, spectrum_k=10, tail_index=0, fo_points=6, min_p_fall=1.0,
               max_hidden_share=0.5, max_dm_cosine=0.8, mt_hidden=64, mt_t_context=2, mt_t_stim=4,
               mt_t_memory=4, mt_t_response=5, mt_steps=80, mt_lr=2e-2, mt_seeds=1, mt_record_every=10, mt_batch=32,
               mt_eval_per_task=4),
    book=dict(),
    paper=dict(hidden=256, t_stim=30, t_memory=30, t_response=30, g_values=(1e-5, 0.065, 5.0), batch=500,
               steps=10000, lr=1e-3, record_every=100, analysis_every=4, eval_trials=20, n_probes=100, spectrum_k=50,
               mt_hidden=256, mt_t_context=30, mt_t_stim=30, mt_t_memory=30, mt_t_response=30, mt_batch=500,
               mt_steps=5000, mt_lr=1e-3, mt_seeds=20, mt_record_every=50, mt_eval_per_task=50),
    paper_source=PAPER,
    paper_note=PAPER_NOTE,
)
