"""The book style's figure helpers: one layout pass in show, saved figures, log minor ticks."""

import io

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from learning_dynamics import plotting  # noqa: E402

plt = plotting.plt


def _figure():
    fig = plt.figure(figsize=(6.0, 4.0), layout="constrained")
    grid = fig.subplot_mosaic([["map", "log"], ["wide", "wide"]])
    image = grid["map"].imshow(np.random.default_rng(0).random((4, 4)))
    fig.colorbar(image, ax=grid["map"], label="value")
    grid["log"].loglog(np.arange(1, 200), np.arange(1, 200) ** 2.0)
    grid["log"].set(title="$\\mathcal{K}$", xlabel="step")
    grid["wide"].plot([1, 3, 2], label="a line")
    grid["wide"].legend()
    return fig


def _png(fig) -> bytes:
    """The image a notebook displays (matplotlib-inline renders at the figure's dpi, no tight box)."""
    buffer = io.BytesIO()
    fig.canvas.print_figure(buffer, format="png", dpi=fig.dpi, bbox_inches=None)
    return buffer.getvalue()


def _shown(monkeypatch, fig, label="fig-test") -> bytes:
    """What plotting.show puts on screen for fig."""
    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(_png(plt.figure(fig.number))))
    plotting.show(fig, label)
    assert len(shown) == 1 and not plt.fignum_exists(fig.number)
    return shown[0]


def test_show_displays_the_same_image_with_one_layout_pass(monkeypatch):
    plotting.use_style()
    reference = _figure()
    plotting.thin_log_minor_ticks(reference)
    expected = _png(reference)  # constrained layout attached: matplotlib lays out, then draws
    plt.close(reference)
    assert _shown(monkeypatch, _figure()) == expected


def test_show_saves_png_and_svg_when_asked(monkeypatch, tmp_path):
    monkeypatch.setenv(plotting.FIGURE_DIR_ENV, str(tmp_path / "figures"))
    _shown(monkeypatch, _figure(), "fig-saved")
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["fig-saved.png", "fig-saved.svg"]


@pytest.mark.parametrize("top, thinned", [(1e3, True), (5.0, False)])
def test_log_minor_ticks_thinned_only_beyond_one_decade(top, thinned):
    fig, ax = plt.subplots()
    ax.semilogy([1.0, top])
    ax.set_ylim(1.0, top)
    plotting.thin_log_minor_ticks(fig)
    first_decade = sorted(round(t, 6) for t in ax.yaxis.get_minorticklocs() if 1 < t < min(top, 10))
    plt.close(fig)
    assert (first_decade == list(plotting.LOG_MINOR_SUBS)) is thinned
