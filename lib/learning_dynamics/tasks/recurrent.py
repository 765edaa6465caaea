"""Recurrent tasks of the KPFlow chapter: memory-pro and its three siblings, and the flip-flop.

The memory tasks follow the simplified versions in the authors' package
(after Driscoll, Shenoy & Sussillo's shared dynamical motifs). Inputs are
[fixation, cos(angle), sin(angle)]; the fixation input is 1 until the
response period and the target's first channel copies it. In the response
period the target is (cos, sin) of the stimulus angle ("pro") or its
opposite ("anti"). In a "memory" task the stimulus is shown only in the
stimulus period and must be held through the memory period; in a "delay"
task it stays on the whole trial. Input noise is Gaussian with standard
deviation ``noise`` (the paper uses 0.1 sqrt(2)).

Every generator draws from an explicit ``torch.Generator`` (or a seed).
"""

from __future__ import annotations

import math

import torch

from ..validation import Boolean, Device, Integer, Real, Seed, check_choice, check_generator, validate_params
from ..validation import Callable as AnyCallable

PAPER_NOISE = 0.1 * math.sqrt(2.0)
MEMORY_TASKS = ("MP", "MA", "DP", "DA")  # memory-pro, memory-anti, delay-pro, delay-anti
# Pairs of MEMORY_TASKS, named as in the paper's multi-task figure: "pro/anti" pairs share the
# response rule (MP-DP, MA-DA), "delay/memory" pairs share the timing (MP-MA, DP-DA).
PRO_ANTI_PAIRS = ((0, 2), (1, 3))
DELAY_MEMORY_PAIRS = ((0, 1), (2, 3))


@validate_params({"n_trials": Integer(low=1), "uniform": Boolean(), "generator": Seed()})
def task_angles(n_trials: int, *, uniform: bool, generator=0, dtype=torch.float64) -> torch.Tensor:
    """``n_trials`` stimulus angles: evenly spaced on [0, 2 pi) or uniformly random."""
    if uniform:
        return torch.arange(n_trials, dtype=dtype) * (2 * math.pi / n_trials)
    gen = check_generator(generator)
    return torch.rand(n_trials, generator=gen, dtype=torch.float64, device=gen.device).to(dtype) * 2 * math.pi


_DURATIONS = {"t_stim": Integer(low=1), "t_memory": Integer(low=0), "t_response": Integer(low=1)}


@validate_params({**_DURATIONS, "anti": Boolean(), "delay": Boolean(), "noise": Real(low=0.0), "generator": Seed()})
def memory_task(angles, t_stim: int, t_memory: int, t_response: int, *, anti: bool = False, delay: bool = False,
                noise: float = 0.0, generator=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (B, T, 3) and targets (B, T, 3) of memory/delay-pro/anti for the given angles (B,).

    T = t_stim + t_memory + t_response.
    """
    angles = torch.as_tensor(angles)
    if angles.ndim != 1 or not angles.is_floating_point():
        raise ValueError(f"angles must be a 1-d float tensor of stimulus angles; got shape {tuple(angles.shape)}, "
                         f"dtype {angles.dtype}")
    steps = t_stim + t_memory + t_response
    respond = t_stim + t_memory
    time = torch.arange(steps, device=angles.device)
    fixation = (time < respond).to(angles.dtype).expand(angles.shape[0], steps)
    stim_on = (torch.ones_like(time, dtype=torch.bool) if delay else time < t_stim).to(angles.dtype)
    cue = torch.stack([angles.cos(), angles.sin()], -1)  # (B, 2)
    x = torch.cat([fixation[..., None], stim_on[None, :, None] * cue[:, None, :]], -1)
    sign = -1.0 if anti else 1.0
    y = torch.cat([fixation[..., None], sign * (time >= respond).to(angles.dtype)[None, :, None] * cue[:, None, :]], -1)
    if noise > 0:
        gen = check_generator(generator)
        x = x + noise * torch.randn(x.shape, generator=gen, dtype=x.dtype, device=gen.device).to(x.device)
    return x, y


@validate_params({"n_trials": Integer(low=1), **_DURATIONS, "noise": Real(low=0.0), "uniform": Boolean(),
                  "generator": Seed()})
def memory_pro(n_trials: int, t_stim: int, t_memory: int, t_response: int, *, noise: float = PAPER_NOISE,
               uniform: bool = False, generator=0, dtype=torch.float64):
    """Memory-pro trials (the paper's Experiment 1): random angles (or evenly spaced with uniform=True)."""
    gen = check_generator(generator)
    angles = task_angles(n_trials, uniform=uniform, generator=gen, dtype=dtype)
    return memory_task(angles, t_stim, t_memory, t_response, noise=noise, generator=gen)


@validate_params({"n_per_task": Integer(low=1), "t_context": Integer(low=1), **_DURATIONS, "noise": Real(low=0.0),
                  "uniform": Boolean(), "generator": Seed(), "cue_throughout": Boolean()})
def memory_multitask(n_per_task: int, t_context: int, t_stim: int, t_memory: int, t_response: int, *,
                     tasks=MEMORY_TASKS, noise: float = PAPER_NOISE, uniform: bool = False, generator=0,
                     cue_throughout: bool = False, dtype=torch.float64):
    """The four related tasks MP, MA, DP, DA in one batch, cued by a one-hot input during a context period.

    Returns inputs (n_tasks * n_per_task, T, 3 + n_tasks), targets (..., T, 3)
    and the task index of every trial. All tasks share the same angles, so
    trial i of one task and trial i of another see the same stimulus and
    their hidden states can be compared entry by entry.
    """
    tasks = tuple(tasks)
    for k, name in enumerate(tasks):
        check_choice(f"tasks[{k}]", name, MEMORY_TASKS)
    gen = check_generator(generator)
    angles = task_angles(n_per_task, uniform=uniform, generator=gen, dtype=dtype)
    xs, ys = [], []
    for k, name in enumerate(tasks):
        x, y = memory_task(angles, t_stim, t_memory, t_response, anti=name[1] == "A", delay=name[0] == "D")
        context = torch.zeros(n_per_task, t_context, 3, dtype=dtype)
        context[..., 0] = 1.0
        cue = torch.zeros(n_per_task, t_context + x.shape[1], len(tasks), dtype=dtype)
        cue[:, : (cue.shape[1] if cue_throughout else t_context), k] = 1.0
        xs.append(torch.cat([torch.cat([context, x], 1), cue], -1))
        ys.append(torch.cat([context, y], 1))
    x, y = torch.cat(xs), torch.cat(ys)
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=gen, dtype=dtype, device=gen.device).to(x.device)
    task_index = torch.arange(len(tasks)).repeat_interleave(n_per_task)
    return x, y, task_index


@validate_params({"n_trials": Integer(low=1), "steps": Integer(low=1), "n_bits": Integer(low=1),
                  "rate": Real(low=0.0, high=1.0), "noise": Real(low=0.0), "generator": Seed()})
def flip_flop(n_trials: int, steps: int, *, n_bits: int = 3, rate: float = 0.05, noise: float = 0.0,
              generator=0, dtype=torch.float64):
    """The n-bit flip-flop: +-1 pulses arrive at rate ``rate`` per step; each output holds its last pulse."""
    gen = check_generator(generator)
    shape = (n_trials, steps, n_bits)
    fire = torch.rand(shape, generator=gen, dtype=torch.float64, device=gen.device) < rate
    sign = torch.randint(0, 2, shape, generator=gen, device=gen.device) * 2 - 1
    x = (fire * sign).to(dtype)
    time = torch.arange(1, steps + 1, device=x.device)[None, :, None]
    last = torch.cummax(fire * time, dim=1).values  # index (1-based) of the latest pulse, 0 if none yet
    held = torch.gather(torch.cat([torch.zeros_like(x[:, :1]), x], 1), 1, last)
    if noise > 0:
        x = x + noise * torch.randn(shape, generator=gen, dtype=dtype, device=gen.device)
    return x, held


@validate_params({"make_batch": AnyCallable(), "n_networks": Integer(low=1), "n_trials": Integer(low=1),
                  "device": Device()})
def sampler(make_batch, n_networks: int, n_trials: int, device: str = "cpu"):
    """``sampler(generator, step)`` for :func:`learning_dynamics.train.train`: fresh trials every step.

    ``make_batch(n, generator)`` returns a tuple of tensors with ``n`` trials in
    front; the sampler draws ``n_networks * n_trials`` of them at once (on the
    CPU, from a seed taken from the trainer's generator) and deals them out
    like cards: network k gets trials k, k + n_networks, ..., so a batch
    ordered by task (as :func:`memory_multitask` makes it) gives every
    network its share of every task. Shapes: (n_networks, n_trials, ...).
    """

    def sample(generator, step):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        parts = make_batch(n_networks * n_trials, check_generator(seed))
        return tuple(p.reshape(n_trials, n_networks, *p.shape[1:]).transpose(0, 1).to(device) for p in parts)

    return sample
