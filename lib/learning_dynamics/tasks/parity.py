"""Multitask sparse parity (Michaud et al. 2023; Nam et al. 2024, 2025), generated from an explicit seed.

A sample exercises one skill k, drawn with probability p_k (power law, :func:`learning_dynamics.tasks.skill_frequencies`).
Its input is ``n_skills`` one-hot control bits naming the skill, then ``n_bits`` uniform task bits in {0, 1}; its target
is S times the skill's parity, +-S: y = S (2 (sum of the skill's ``bits_per_skill`` task bits mod 2) - 1), the
convention of the authors' code (yoonsoonam119/Skill_Eigenmode, ``data_generator.Loader`` with ``zero_mean``). Each
network draws its own skills' task bits, disjoint across skills (the authors draw them afresh for every run).

The skill basis functions are g_k(x) = c_k(x) M_k(x): the control bit c_k times the parity M_k = +-1 of skill k's bits, so
that the target is f*(x) = S sum_k g_k(x). The functions here keep the network axis first, as
:func:`learning_dynamics.train.train` expects. feedback_principle chapter (emergence in a ReLU network).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import skill_frequencies
from ..validation import Device, InstanceOf, Integer, Real, Seed, check_generator, check_int, validate_params

__all__ = ["ParityTask", "parity_task", "parity_sampler", "parity_dataset", "parity_probe", "skill_basis"]


@dataclass(frozen=True)
class ParityTask:
    """Multitask sparse parity for a stack of networks.

    Attributes:
        skill_bits: (n_networks, n_skills, bits_per_skill) int64, the task-bit indices (0 .. n_bits-1) of each
            network's skills, on the task's device.
        frequencies: (n_skills,) skill probabilities p_k (float64 numpy, summing to 1).
        strength: the target strength S.
        n_bits: number of task bits.
    """

    skill_bits: torch.Tensor
    frequencies: np.ndarray
    strength: float
    n_bits: int

    @property
    def n_networks(self) -> int:
        return self.skill_bits.shape[0]

    @property
    def n_skills(self) -> int:
        return self.skill_bits.shape[1]

    @property
    def n_inputs(self) -> int:
        """Control bits plus task bits: 5 + 32 = 37 in the paper."""
        return self.n_skills + self.n_bits

    @property
    def device(self) -> torch.device:
        return self.skill_bits.device

    def parities(self, x: torch.Tensor) -> torch.Tensor:
        """M_k(x) = +-1 for every skill k: shape (n_networks, batch, n_skills), from x of shape (n_networks, batch, n_inputs)."""
        bits = x[..., self.n_skills:]
        n, batch = bits.shape[:2]
        index = self.skill_bits.reshape(n, 1, -1).expand(n, batch, -1)
        picked = torch.gather(bits, 2, index).reshape(n, batch, self.n_skills, -1)
        return 2.0 * torch.remainder(picked.sum(-1), 2.0) - 1.0

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """y = S sum_k g_k(x) = S M_k(x) for the skill k that x's control bits name: shape (n_networks, batch)."""
        return self.strength * skill_basis(self, x).sum(-1)

    def inputs(self, generator: torch.Generator, skills: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
        """Inputs for the given skills (n_networks, batch) int64: one-hot control bits, then uniform task bits."""
        n, batch = skills.shape
        control = torch.nn.functional.one_hot(skills, self.n_skills).to(dtype)
        bits = torch.randint(0, 2, (n, batch, self.n_bits), generator=generator, device=self.device).to(dtype)
        return torch.cat([control, bits], dim=-1)

    def sample(self, generator: torch.Generator, batch_size: int, dtype=torch.float64):
        """A fresh i.i.d. batch (x, y), shapes (n_networks, batch_size, n_inputs) and (n_networks, batch_size).

        The same distribution as ``inputs(generator, draw_skills(generator, batch_size))`` and :meth:`targets`, drawn
        in fewer operations: the task bits are drawn in place, and the target reads only the drawn skill's bits.
        """
        n, k = self.n_networks, self.n_skills
        skills = self.draw_skills(generator, batch_size)
        x = torch.zeros((n, batch_size, self.n_inputs), dtype=dtype, device=self.device)
        x[..., k:].random_(0, 2, generator=generator)
        x.scatter_(2, skills[..., None], 1.0)
        return x, self.strength * self._parity_of(x, skills)

    def _parity_of(self, x: torch.Tensor, skills: torch.Tensor) -> torch.Tensor:
        """M_s(x) = +-1 of the skill s = ``skills`` (n, batch) that each sample exercises: shape (n, batch)."""
        n, batch = skills.shape
        per = self.skill_bits.shape[2]
        flat = self.skill_bits.reshape(n, -1)
        slots = (skills[..., None] * per + torch.arange(per, device=self.device)).reshape(n, -1)
        index = (torch.gather(flat, 1, slots) + self.n_skills).reshape(n, batch, per)
        return 2.0 * torch.remainder(torch.gather(x, 2, index).sum(-1), 2.0) - 1.0

    def draw_skills(self, generator: torch.Generator, batch_size: int) -> torch.Tensor:
        """Skill indices k ~ p, shape (n_networks, batch_size)."""
        probs = torch.as_tensor(self.frequencies, dtype=torch.float64, device=self.device)
        return torch.multinomial(probs.expand(self.n_networks, -1), batch_size, replacement=True, generator=generator)


@validate_params({"n_skills": Integer(low=1), "alpha": Real(low=0.0), "strength": Real(low=0.0, strict_low=True),
                  "n_bits": Integer(low=1), "bits_per_skill": Integer(low=1), "n_networks": Integer(low=1),
                  "seed": Seed(), "device": Device()})
def parity_task(n_skills: int = 5, alpha: float = 0.6, strength: float = 5.0, *, n_bits: int = 32,
                bits_per_skill: int = 3, n_networks: int = 1, seed=0, device="cpu") -> ParityTask:
    """Draw each network's skills: ``bits_per_skill`` task bits per skill, disjoint across skills.

    p_k is proportional to k^-(alpha + 1) (the paper's alpha = 0.6; the authors' code calls the exponent 1.6
    ``alpha``). The draw is made on the CPU from ``seed`` and moved to ``device``, so every device sees the same task.
    """
    if n_skills * bits_per_skill > n_bits:
        raise ValueError(f"n_skills x bits_per_skill must be <= n_bits (the skills' bits are disjoint); got "
                         f"{n_skills} x {bits_per_skill} = {n_skills * bits_per_skill} > n_bits = {n_bits}")
    gen = check_generator(seed)
    picks = torch.stack([torch.randperm(n_bits, generator=gen)[: n_skills * bits_per_skill] for _ in range(n_networks)])
    bits = picks.reshape(n_networks, n_skills, bits_per_skill).to(device)
    return ParityTask(skill_bits=bits, frequencies=skill_frequencies(n_skills, alpha), strength=float(strength),
                      n_bits=n_bits)


def skill_basis(task: ParityTask, x: torch.Tensor) -> torch.Tensor:
    """g_k(x) = c_k(x) M_k(x), the skill basis functions: shape (n_networks, batch, n_skills)."""
    return x[..., : task.n_skills] * task.parities(x)


_TASK = InstanceOf(ParityTask, description="a ParityTask (parity_task)")


@validate_params({"task": _TASK, "batch_size": Integer(low=1)})
def parity_sampler(task: ParityTask, batch_size: int, dtype=torch.float64):
    """Online data: ``sampler(generator, step)`` gives a fresh (x, y) per step, shapes (n, batch, n_inputs), (n, batch).

    The authors draw 20,000 fresh samples per epoch and split them into batches; fresh i.i.d. batches are the same
    distribution.
    """

    def sample(generator, step):
        return task.sample(generator, batch_size, dtype)

    return sample


@validate_params({"task": _TASK, "n_samples": Integer(low=1), "seed": Seed()})
def parity_dataset(task: ParityTask, n_samples: int, *, seed=0, dtype=torch.float64):
    """A finite training set of ``n_samples`` per network (the data panel): (x, y), network axis first.

    A network trained on the first D of them sees a dataset of size D, so one draw serves every D of a sweep.
    """
    gen = check_generator(seed, task.device)
    x = task.inputs(gen, task.draw_skills(gen, n_samples), dtype)
    return x, task.targets(x)


@validate_params({"task": _TASK, "n_per_skill": Integer(low=2), "seed": Seed()})
def parity_probe(task: ParityTask, n_per_skill: int, *, seed=0, dtype=torch.float64):
    """Held-out probe inputs for every skill, with the parity exactly balanced.

    Returns x of shape (n_networks, n_skills * n_per_skill, n_inputs) (skill-major: sample j belongs to skill
    j // n_per_skill) and y of shape (n_networks, n_skills * n_per_skill). Half the samples are random; the other
    half are their copies with the skill's first bit flipped (antithetic pairs), so that y has mean 0 and standard
    deviation exactly S within each skill, and the authors' measure (:func:`learning_dynamics.emergence.learned_fraction`)
    is exactly 1 for the target function. The authors use 20,000 random samples per skill instead.
    """
    n_per_skill = check_int("n_per_skill", n_per_skill, low=2)
    if n_per_skill % 2:
        raise ValueError(f"n_per_skill must be even (antithetic pairs); got {n_per_skill}")
    gen = check_generator(seed, task.device)
    half = n_per_skill // 2
    skills = torch.arange(task.n_skills, device=task.device).repeat_interleave(half).expand(task.n_networks, -1)
    x = task.inputs(gen, skills.contiguous(), dtype).reshape(task.n_networks, task.n_skills, half, task.n_inputs)
    flip = torch.zeros_like(x)
    first = task.skill_bits[:, :, 0] + task.n_skills  # (n, K): the input index of each skill's first bit
    flip.scatter_(3, first[:, :, None, None].expand(-1, -1, half, 1), 1.0)
    x = torch.cat([x, (x - flip).abs()], dim=2).reshape(task.n_networks, -1, task.n_inputs)
    return x, task.targets(x)
