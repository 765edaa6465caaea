"""MNIST from a local file that the user names (the book downloads nothing).

:func:`load` reads the one-file ``mnist.npz`` layout that Keras and many
mirrors ship: arrays ``x_train`` (N, 28, 28) uint8, ``y_train`` (N,),
``x_test`` and ``y_test``. It returns the same four tensors as
:func:`learning_dynamics.tasks.digits.load` (pixels in [0, 1], flattened,
and integer labels), so a chapter's `paper` preset can put MNIST where its
`book` preset uses scikit-learn's digits. ``name`` is the chapter parameter
that holds the path: every error about the file names it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from ..validation import Device, Integer, Optional, validate_params

N_CLASSES = 10
KEYS = ("x_train", "y_train", "x_test", "y_test")


@validate_params({"n_train": Optional(Integer(low=N_CLASSES)), "seed": Integer(low=0), "device": Device()})
def load(path, n_train: int | None = None, *, seed: int = 0, name: str = "path", dtype=torch.float32, device="cpu"):
    """``(x_train, y_train, x_test, y_test)`` from an ``mnist.npz`` file: pixels / 255 as (N, 784), labels as (N,).

    With ``n_train`` the training set is a seeded random subset of that size
    (the authors of the spring-block paper train on 2,560 images); the test
    set is always the file's whole test set.
    """
    arrays = _read(path, name)
    x_train, y_train, x_test, y_test = (arrays[k] for k in KEYS)
    if n_train is not None:
        if n_train > len(y_train):
            raise ValueError(f"n_train must be at most the {len(y_train)} training images in {name} = {str(path)!r}; "
                             f"got {n_train}")
        keep = np.random.default_rng(seed).permutation(len(y_train))[:n_train]
        x_train, y_train = x_train[keep], y_train[keep]

    def pixels(x):
        return torch.as_tensor(x.reshape(len(x), -1) / 255.0, dtype=dtype, device=device)

    def labels(y):
        return torch.as_tensor(y, dtype=torch.long, device=device)

    return pixels(x_train), labels(y_train), pixels(x_test), labels(y_test)


def _read(path, name: str) -> dict[str, np.ndarray]:
    """The four arrays of the file, checked: a missing or malformed file is a ValueError naming ``name``."""
    where = f"{name} = {path if path is None else str(path)!r}"
    layout = "an mnist.npz with arrays x_train (N, 28, 28) uint8, y_train (N,), x_test, y_test (the Keras layout)"
    if path is None or not Path(path).is_file():
        raise ValueError(f"{where}: no such file; pass the path of {layout}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, AttributeError, TypeError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"{where}: not a readable .npz file ({error}); expected {layout}") from None
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{where}: the file lacks {missing} (it holds {sorted(arrays)}); expected {layout}")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
            raise ValueError(f"{where}: x_{split} must be (N, 28, 28) uint8 images; got shape {x.shape}, dtype {x.dtype}")
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{where}: y_{split} must hold one integer label per image, shape ({len(x)},); "
                             f"got shape {y.shape}, dtype {y.dtype}")
        if len(y) and (y.min() < 0 or y.max() >= N_CLASSES):
            raise ValueError(f"{where}: y_{split} labels must lie in 0..{N_CLASSES - 1}; got {y.min()}..{y.max()}")
    return arrays
