"""The one result type every runner returns.

A runner trains or simulates a batch of systems and records them along the
way. Its :class:`~learning_dynamics.results.Run` holds the recorded ``times`` (t = lr x step for gradient
descent, so that runs at different rates share one clock), the ``records``
over those times (the record axis first), and the ``final`` values and
summaries that have no record axis. Trainers also keep the final stacked
``params`` and the recorded ``steps``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Run:
    """What a runner recorded.

    Attributes:
        times: ``(n_records,)`` recorded times.
        records: name -> array of shape ``(n_records, ...)``; trainers add the
            network axis second, ``(n_records, n_networks, ...)``.
        final: name -> end-of-run value or summary (no record axis).
        params: the final stacked parameters (torch tensors), for trainers.
        steps: ``(n_records,)`` recorded step indices, where there are steps.
    """

    times: np.ndarray
    records: dict[str, np.ndarray] = field(default_factory=dict)
    final: dict = field(default_factory=dict)
    params: dict | None = None
    steps: np.ndarray | None = None

    def __post_init__(self):
        self.times = np.asarray(self.times, dtype=np.float64)
        if self.times.ndim != 1:
            raise ValueError(f"times must be 1-D; got shape {self.times.shape}")
        for name, value in self.records.items():
            if np.shape(value)[:1] != self.times.shape:
                raise ValueError(f"records[{name!r}] must have the record axis first, of length {len(self.times)}; "
                                 f"got shape {np.shape(value)}")

    def at_end(self, name: str) -> np.ndarray:
        """``records[name]`` at the last record."""
        return self.records[name][-1]

    def trajectory(self, name: str) -> np.ndarray:
        """``records[name]`` with the record axis last, the layout of the closed forms' curves."""
        return np.moveaxis(self.records[name], 0, -1)
