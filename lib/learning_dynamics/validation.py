"""Input checks shared by every module.

Each check raises ``ValueError`` naming the argument, what it allows and what
it was given, in the style of scikit-learn's validation helpers.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import numpy as np


def check_generator(seed, device="cpu"):
    """The library's one way to turn a seed into randomness (after scikit-learn's ``check_random_state``).

    ``seed`` is an int >= 0 (a new ``torch.Generator`` on ``device``, seeded
    with it) or a ``torch.Generator``, returned as it is so that callers can
    share one stream.
    """
    import torch

    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator(device=device).manual_seed(check_int("seed", seed, low=0))


def check_int(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as an int in ``[low, high]``; reject bools and floats."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer{_range_text(low, high)}; got {value!r}")
    value = int(value)
    _check_bounds(name, value, low, high, strict_low=False)
    return value


def check_float(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    strict_low: bool = False,
) -> float:
    """Return ``value`` as a finite float in the given range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number{_range_text(low, high, strict_low)}; got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value!r}")
    _check_bounds(name, value, low, high, strict_low)
    return value


def check_positive(name: str, value) -> float:
    """A finite float strictly greater than zero."""
    return check_float(name, value, low=0.0, strict_low=True)


def check_choice(name: str, value, choices: Iterable) -> object:
    """``value`` must be one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}")
    return value


def check_array(name: str, value, *, ndim: int | None = None, positive: bool = False) -> np.ndarray:
    """A finite float64 array, optionally of a given rank and strictly positive."""
    array = np.asarray(value, dtype=np.float64)
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s); got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite; got non-finite entries")
    if positive and np.any(array <= 0):
        raise ValueError(f"{name} must be > 0 everywhere; got minimum {array.min()!r}")
    return array


def check_device(name: str, value) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``."""
    if not isinstance(value, str) or not (value == "cpu" or value == "cuda" or value.startswith("cuda:")):
        raise ValueError(f"{name} must be 'cpu', 'cuda' or 'cuda:N'; got {value!r}")
    if value != "cpu":
        import torch  # only here: CPU runs validate without importing torch

        if not torch.cuda.is_available():
            raise ValueError(f"{name} must be 'cpu' on this machine (torch sees no CUDA device); got {value!r}")
        index = int(value.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"{name} must be 'cpu' or 'cuda:N' with N < {torch.cuda.device_count()}; got {value!r}")
    return value


def _range_text(low, high, strict_low: bool = False) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if strict_low else '>='} {low}"
    if low is None:
        return f" <= {high}"
    return f" in {'(' if strict_low else '['}{low}, {high}]"


def _check_bounds(name, value, low, high, strict_low):
    too_low = low is not None and (value <= low if strict_low else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        raise ValueError(f"{name} must be{_range_text(low, high, strict_low)}; got {value!r}")
