"""Per-layer data separation: trace ratio, load curve and curvature.

For representations ``h`` (N samples) with class means ``mu_c`` and global
mean ``mu``,

    Sigma_B = 1/N sum_c n_c (mu_c - mu)(mu_c - mu)^T
    Sigma_W = 1/N sum_c sum_{i in c} (h_i - mu_c)(h_i - mu_c)^T
    log D   = log Tr Sigma_W - log Tr Sigma_B.

The trace ratio is used rather than ``Tr(Sigma_W Sigma_B^+)``: it needs no
pseudo-inverse, so it is stable on small data (Shi, Pan & Dokmanic use both).
It is invariant to translations, rotations and a global rescaling of ``h``.

A network's separation profile ``log D_0 .. log D_L`` (input, then each
layer) gives the *load* of layer l, ``d_l = log D_{l-1} - log D_l``, and the
*curvature* ``c = d_1 - d_L``, normalised by ``log D_0 - log D_L``:
``c < 0`` is a concave profile (deep layers do the work, "lazy"), ``c > 0`` a
convex one (shallow layers do the work, "active"), ``c = 0`` the linear "law
of data separation".

Everything is batched: leading dimensions (networks, layers, ...) pass through.
"""

from __future__ import annotations

import numpy as np
import torch

from .validation import Boolean, Integer, Optional, validate_params, value_text


@validate_params({"n_classes": Optional(Integer(low=2))})
def log_separation(h, labels, *, n_classes: int | None = None) -> np.ndarray:
    """``log Tr Sigma_W - log Tr Sigma_B`` of representations ``h`` (..., N, F), in float64.

    ``labels`` (N,) are integers in ``[0, n_classes)`` shared by every leading
    index (``n_classes`` defaults to ``max(labels) + 1``). Identical classes
    give ``+inf`` (no between-class spread); classes collapsed to points give
    ``-inf`` (no within-class spread). Returns an array of shape ``h.shape[:-2]``.
    """
    h = torch.as_tensor(h).to(torch.float64)
    labels = torch.as_tensor(labels)
    if h.ndim < 2:
        raise ValueError(f"h must have shape (..., n_samples, n_features); got shape {tuple(h.shape)}")
    if not bool(torch.isfinite(h).all()):
        raise ValueError(f"h must be finite; got {value_text(h)}, with non-finite entries")
    n = h.shape[-2]
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) (one per sample of h); got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers; got dtype {labels.dtype}")
    if n == 0:
        raise ValueError(f"h must have n_samples >= n_classes >= 2; got shape {tuple(h.shape)}, with no samples")
    if int(labels.min()) < 0:
        raise ValueError(f"labels must be >= 0; got minimum {int(labels.min())}")
    if n_classes is None:
        n_classes = int(labels.max()) + 1
        if n_classes < 2:
            raise ValueError(f"labels must hold at least 2 classes; got a single class ({int(labels.max())})")
    if int(labels.max()) >= n_classes:
        raise ValueError(f"labels must be < n_classes = {n_classes}; got maximum {int(labels.max())}")
    if n < n_classes:
        raise ValueError(f"h must have n_samples >= n_classes = {n_classes}; got fewer samples ({n}) than classes")
    present = torch.bincount(labels, minlength=n_classes)
    if int((present > 0).sum()) < 2:
        raise ValueError(f"labels must hold at least 2 classes; got a single class ({int(labels.max())})")

    onehot = torch.nn.functional.one_hot(labels.long(), n_classes).to(h.device, torch.float64)  # (N, C)
    counts = onehot.sum(0)                                                                       # (C,)
    means = (onehot.T @ h) / counts.clamp(min=1)[:, None]                                        # (..., C, F)
    mean = h.mean(-2, keepdim=True)                                                              # (..., 1, F)
    within = ((h - means[..., labels, :]) ** 2).sum((-2, -1)) / n
    between = (counts[:, None] * (means - mean) ** 2).sum((-2, -1)) / n
    with np.errstate(divide="ignore"):
        return np.log(within.cpu().numpy()) - np.log(between.cpu().numpy())


def load_curve(log_d) -> np.ndarray:
    """Loads ``d_l = log D_{l-1} - log D_l`` (..., L) from a profile ``log D_0..log D_L`` (..., L+1)."""
    log_d = _profile(log_d)
    return -np.diff(log_d, axis=-1)


def normalised_profile(log_d) -> np.ndarray:
    """``(log D_l - log D_L) / (log D_0 - log D_L)``: runs from 1 at the input to 0 at the last layer."""
    log_d = _profile(log_d)
    return (log_d - log_d[..., -1:]) / _total_drop(log_d)[..., None]


@validate_params({"normalise": Boolean()})
def curvature(log_d, *, normalise: bool = True) -> np.ndarray:
    """``c = d_1 - d_L`` (first load minus last), divided by ``log D_0 - log D_L`` when ``normalise``.

    Negative: concave profile (lazy, deep layers separate); positive: convex
    (active, shallow layers separate).
    """
    loads = load_curve(log_d)
    c = loads[..., 0] - loads[..., -1]
    return c / _total_drop(np.asarray(log_d, dtype=np.float64)) if normalise else c


def _profile(log_d) -> np.ndarray:
    given = log_d
    log_d = np.asarray(log_d, dtype=np.float64)
    if log_d.ndim < 1 or log_d.shape[-1] < 3:
        raise ValueError(f"log_d must hold at least 3 layers (2 loads) on its last axis; got shape {log_d.shape}")
    if not np.all(np.isfinite(log_d)):
        raise ValueError(f"log_d must be finite (a layer with identical classes (+inf) or collapsed classes (-inf) "
                         f"has no load curve); got {value_text(given, log_d)}")
    return log_d


def _total_drop(log_d: np.ndarray) -> np.ndarray:
    drop = log_d[..., 0] - log_d[..., -1]
    if np.any(drop == 0):
        raise ValueError(f"log_d must have a net separation (log D_0 != log D_L) to be normalised; got "
                         f"{value_text(log_d)}, with no net separation")
    return drop


@validate_params({"every_marker": Integer(low=1)})
def profile_grid(fig, profiles, *, row_labels, col_labels, shade=None, cmap="Greys_r", vmin=None, vmax=None,
                 shade_label="", row_title="", col_title="", every_marker: int = 1):
    """A phase diagram of load curves: one small panel per cell, shaded by ``shade``.

    ``profiles`` (rows, cols, L+1) are normalised profiles (1 at the input,
    0 at the end), drawn as markers over the straight "law of data
    separation" line. ``shade`` (rows, cols) colours each panel's background
    (e.g. test accuracy) with a colour bar. Returns the axes (rows, cols).
    """
    import matplotlib as mpl

    from . import plotting

    profiles = np.asarray(profiles, dtype=np.float64)
    if profiles.ndim != 3:
        raise ValueError(f"profiles must have shape (rows, cols, layers); got {profiles.shape}")
    rows, cols, n_points = profiles.shape
    if len(row_labels) != rows or len(col_labels) != cols:
        raise ValueError(f"row_labels and col_labels must have {rows} and {cols} entries (the rows and columns of "
                         f"profiles); got {len(row_labels)} and {len(col_labels)}")
    axes = np.atleast_2d(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False))
    layers = np.arange(n_points)
    norm = None
    if shade is not None:
        shade = np.asarray(shade, dtype=np.float64)
        norm = mpl.colors.Normalize(vmin=np.min(shade) if vmin is None else vmin,
                                    vmax=np.max(shade) if vmax is None else vmax)
        colours = mpl.colormaps[cmap]
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            if shade is not None:
                ax.set_facecolor(colours(norm(shade[r, c])))
            plotting.theory(ax, [0, n_points - 1], [1, 0], color="0.6", lw=0.8)
            plotting.simulation(ax, layers, profiles[r, c], color="#D55E00", every=every_marker, markersize=2.5)
            ax.set(xticks=[], yticks=[], xlim=(-0.5, n_points - 0.5), ylim=(-0.15, 1.15))
            for side in ("top", "right", "bottom", "left"):
                ax.spines[side].set_visible(True)
                ax.spines[side].set_color("0.7")
            if c == 0:
                ax.set_ylabel(row_labels[r], rotation=0, ha="right", va="center")
            if r == rows - 1:
                ax.set_xlabel(col_labels[c])
    fig.supylabel(row_title)
    fig.supxlabel(col_title)
    if shade is not None:
        fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.8, label=shade_label)
    return axes


def spearman(a, b) -> float:
    """Spearman's rank correlation of two equal-length samples (ties get average ranks).

    The same number as ``scipy.stats.spearmanr(a, b).statistic``, without the
    two seconds that importing ``scipy.stats`` costs a chapter.
    """
    a, b = np.ravel(np.asarray(a, dtype=np.float64)), np.ravel(np.asarray(b, dtype=np.float64))
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"a and b must be two samples of the same length >= 2; got lengths {a.size} and {b.size}")
    return float(np.corrcoef(_average_ranks(a), _average_ranks(b))[0, 1])


def _average_ranks(x: np.ndarray) -> np.ndarray:
    ranks = np.empty(x.size)
    ranks[np.argsort(x, kind="stable")] = np.arange(1, x.size + 1)
    _, group, size = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(group, weights=ranks) / size)[group]
