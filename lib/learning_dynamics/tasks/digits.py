"""scikit-learn's bundled handwritten digits (1,797 images of 8x8, 10 classes; no download).

:func:`load` scales pixels to [0, 1] (like MNIST's ``ToTensor``) and makes
a seeded train/test split. :func:`data_noise` is the "data noise" knob of
Shi, Pan & Dokmanic, drawn afresh at every training step for many networks
at once: a fraction ``s`` of the labels is redrawn uniformly at random and
the inputs get ``X + N(0, 1) * std(X) * s``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from ..validation import Device, Integer, validate_params

N_CLASSES = 10
N_SAMPLES = 1797


@validate_params({"n_train": Integer(low=N_CLASSES, high=N_SAMPLES - N_CLASSES), "seed": Integer(low=0),
                  "device": Device()})
def load(n_train: int = 1200, *, seed: int = 0, dtype=torch.float32, device="cpu"):
    """``(x_train, y_train, x_test, y_test)``: pixels in [0, 1] as (N, 64), integer labels as (N,).

    The split is a seeded permutation of all 1,797 images; the test set is
    everything not used for training.
    """
    pixels, labels = _bundled_digits()
    order = np.random.default_rng(seed).permutation(len(labels))
    x = torch.as_tensor(pixels[order] / 16.0, dtype=dtype, device=device)
    y = torch.as_tensor(labels[order], dtype=torch.long, device=device)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def _bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """The file behind ``sklearn.datasets.load_digits``, read directly: importing
    ``sklearn.datasets`` costs about half a second, reading the file 0.05 s."""
    sklearn_dir = Path(importlib.util.find_spec("sklearn").submodule_search_locations[0])
    table = np.loadtxt(sklearn_dir / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    return table[:, :-1], table[:, -1].astype(int)


def data_noise(x, y, level, generator: torch.Generator):
    """Noisy copies of ``(x, y)`` for every network: shapes (n, N, F) and (n, N).

    ``level`` (n,) holds each network's noise ``s`` in [0, 1]: exactly
    ``floor(s N)`` labels, chosen at random, are redrawn uniformly from the 10
    classes, and ``x + N(0, 1) * std(x) * s`` (``std`` over all of ``x``).
    """
    level = torch.as_tensor(level, dtype=x.dtype, device=x.device)
    if level.ndim != 1:
        raise ValueError(f"level must have shape (n_networks,); got shape {tuple(level.shape)}")
    if bool((level < 0).any()) or bool((level > 1).any()):
        raise ValueError(f"level must lie in [0, 1] (a fraction of labels); got range "
                         f"[{float(level.min())}, {float(level.max())}]")
    n, (n_samples, n_features) = level.shape[0], x.shape
    noise = torch.randn((n, n_samples, n_features), generator=generator, dtype=x.dtype, device=x.device)
    x_noisy = x + noise * (x.std() * level)[:, None, None]
    rank = torch.rand((n, n_samples), generator=generator, device=x.device).argsort(-1).argsort(-1)
    redraw = rank < torch.floor(level * n_samples)[:, None]
    fresh = torch.randint(0, N_CLASSES, (n, n_samples), generator=generator, device=x.device)
    return x_noisy, torch.where(redraw, fresh, y)
