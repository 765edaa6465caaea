"""One book style: theory as lines, simulation as markers, figures saved by label.

Colours come from the Okabe-Ito palette (safe for colour-blind readers). A
series keeps its colour in the theory line and in the simulation markers, so
a reader matches them by colour and tells them apart by style.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import LogLocator, NullLocator  # noqa: F401  (NullLocator re-exported for chapters)

PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
FIGURE_DIR_ENV = "LD_FIGURE_DIR"
LOG_MINOR_SUBS = (2.0, 5.0)  # minor ticks per decade on log axes that span more than one decade

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": mpl.cycler(color=PALETTE),
    "legend.frameon": False,
    "legend.fontsize": 8,
    "lines.linewidth": 1.6,
    "svg.hashsalt": "learning-dynamics",
}


def use_style() -> None:
    """Apply the book style to matplotlib (called by every chapter).

    In a notebook, figures are rendered without ``bbox_inches="tight"``: the
    constrained layout already fits them, and the tight box costs a second
    full draw of every figure.
    """
    mpl.rcParams.update(STYLE)
    if "inline" in mpl.get_backend():
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png", bbox_inches=None)


def color(i: int) -> str:
    """The i-th series colour."""
    return PALETTE[i % len(PALETTE)]


def theory(ax, x, y, *, i: int = 0, label: str | None = None, **kw):
    """A closed-form curve: a solid line."""
    return ax.plot(x, y, "-", color=kw.pop("color", color(i)), label=label, **kw)


def simulation(ax, x, y, *, i: int = 0, label: str | None = None, every: int = 1, **kw):
    """Training runs: open markers, optionally every ``every``-th point."""
    x = np.asarray(x)[::every]
    y = np.asarray(y)[..., ::every] if np.ndim(y) > 1 else np.asarray(y)[::every]
    kw.setdefault("markersize", 4)
    return ax.plot(x, y, "o", color=kw.pop("color", color(i)), mfc="none", label=label, **kw)


def simulation_mean(ax, x, samples, *, i: int = 0, label: str | None = None, **kw):
    """Training runs over seeds (the last axis of ``samples``): open markers at the mean, bars of one standard error."""
    samples = np.asarray(samples)
    if samples.shape[-1] < 2:
        raise ValueError(f"samples must hold at least 2 runs on the last axis for an error bar; got shape {samples.shape}")
    error = samples.std(-1, ddof=1) / np.sqrt(samples.shape[-1])
    kw.setdefault("markersize", 4)
    kw.setdefault("capsize", 2)
    return ax.errorbar(x, samples.mean(-1), yerr=error, fmt="o", color=kw.pop("color", color(i)), mfc="none",
                       label=label, **kw)


def legend_theory_vs_simulation(ax, theory="theory (closed form)", **kw):
    """A legend entry explaining line = theory, marker = simulation; a legend the axes already has stays."""
    if ax.get_legend() is not None:
        ax.add_artist(ax.get_legend())
    handles = [
        mpl.lines.Line2D([], [], color="0.3", ls="-", label=theory),
        mpl.lines.Line2D([], [], color="0.3", ls="none", marker="o", mfc="none", label="simulation"),
    ]
    return ax.legend(handles=handles, **kw)


def panel_labels(axes) -> None:
    """(a), (b), ... in the top-left corner of each panel."""
    for k, ax in enumerate(np.ravel(axes)):
        ax.text(-0.12, 1.04, f"({chr(97 + k)})", transform=ax.transAxes, fontweight="bold", va="bottom")


def thin_log_minor_ticks(fig) -> None:
    """Minor ticks at 2 and 5 per decade on every log axis that spans more than a decade.

    Matplotlib's default puts eight minor ticks in each decade. Each one is a
    tick object with lines and labels, measured by the constrained layout and
    drawn again: on a log-log panel they are most of the figure's draw time,
    and on a small panel they crowd it. Axes with a minor locator of their own,
    and log axes under a decade (where minor ticks carry the labels), keep it.
    """
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() != "log" or not axis.isDefault_minloc:
                continue
            low, high = sorted(axis.get_view_interval())
            if low > 0 and high / low > 10:
                axis.set_minor_locator(LogLocator(base=10, subs=LOG_MINOR_SUBS))
                axis.isDefault_minloc = True  # still the book's default: a later scale change may reset it


def show(fig, label: str) -> None:
    """Save ``fig`` as ``label``.png/.svg when LD_FIGURE_DIR is set, then display it once.

    Log axes get the book's minor ticks first (:func:`thin_log_minor_ticks`).
    The layout engine runs once here and is then detached: with an engine
    attached, every render first draws the whole figure without output just
    to run the layout, and that draw costs as much as the real one. The
    displayed image is byte-identical. The command-line runner sets
    LD_FIGURE_DIR to a temporary folder that it moves into place only when the
    whole chapter succeeded.
    """
    thin_log_minor_ticks(fig)
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)
        fig.set_layout_engine(None)
    out = os.environ.get(FIGURE_DIR_ENV)
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        fig.savefig(folder / f"{label}.png", bbox_inches="tight")
        fig.savefig(folder / f"{label}.svg", bbox_inches="tight", metadata={"Date": None})
    plt.show()
    plt.close(fig)


def subplots(*args, **kwargs):
    """``plt.subplots`` with the book style and a constrained layout."""
    use_style()
    return plt.subplots(*args, layout="constrained", **kwargs)


MECHANISM_MARKERS = {"alignment": "o", "disalignment": "s", "rescaling": "^", "lazy alignment": "D"}


def mechanism_map(fig, ax, scale, zeta0, mech, points: dict, *, kernel_tol: float = 0.05) -> None:
    """The balanced-init mechanism map of :func:`learning_dynamics.shallow.mechanism_map`, with the inits on it.

    Colour is the change of |zeta|; the hatched region is the kernel regime
    (|K_inf/K_0 - 1| < ``kernel_tol``); the dashed line is zeta0 = 1/scale.
    ``points`` maps a mechanism's name to the (scale, |zeta0|) of its inits.
    """
    mesh = ax.pcolormesh(scale, zeta0, mech["alignment_change"].T, cmap="RdBu", vmin=-1, vmax=1, shading="nearest")
    fig.colorbar(mesh, ax=ax, label="change of $|\\zeta|$")
    lazy = np.abs(mech["kernel_ratio"].T - 1)
    ax.contourf(scale, zeta0, lazy, levels=[0, kernel_tol], colors="none", hatches=["////"])
    ax.contour(scale, zeta0, lazy, levels=[kernel_tol], colors="k", linewidths=0.8)
    ax.plot(scale, np.clip(1 / scale, 0, 1), "k--", lw=1)
    for name, (x, y) in points.items():
        ax.plot(x, np.minimum(y, 0.995), MECHANISM_MARKERS[name], color="k", mfc="y", ms=6, ls="none", label=name)
    for x, y, text in ((0.03, 0.15, "alignment"), (3, 0.75, "disalignment"), (20, 0.08, "kernel")):
        ax.text(x, y, text, fontsize=8)
    ax.set(xscale="log", xlabel="output scale $\\gamma |u_0||w_0| / |c|$", ylabel="initial alignment $|\\zeta_0|$",
           title="mechanisms (balanced init)")
    ax.legend(loc="center left", fontsize=7)
