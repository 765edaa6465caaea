"""Build the book with -W from the committed (nbval-checked) outputs and inspect the HTML."""

import re

import pytest

from conftest import NOTEBOOKS


@pytest.fixture
def html(built_book):
    """The session's one build of the book (tests/conftest.py), shared with test_browser.py."""
    return built_book


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_chapter_page_has_figures_math_and_no_traceback(html, notebook):
    page = (html / "notebooks" / f"{notebook.stem}.html").read_text()
    figures = re.findall(r'<figure[^>]*id="(fig-[^"]+)"', page)
    assert figures, "numbered figures with their labels"
    for label in figures:
        block = page[page.index(f'id="{label}"'):]
        block = block[: block.index("</figure>")]
        assert "<img" in block and "figcaption" in block
    images = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert all((html / "notebooks" / src).resolve().exists() for src in images if not src.startswith("http"))
    assert 'class="math' in page, "math is marked up for MathJax"
    assert "Traceback" not in page and "ClaimFailed" not in page
    assert "<table" in page, "the claims table is rendered"


@pytest.mark.slow
def test_scorecard_lists_every_chapter_with_figure_links(html):
    page = (html / "book" / "scorecard.html").read_text()
    for notebook in NOTEBOOKS:
        assert f'id="scorecard-notebooks-{notebook.stem}"' in page
        assert f"../notebooks/{notebook.stem}.html#fig-" in page
    assert "FAIL" not in page


@pytest.mark.slow
def test_status_bibliography_and_local_mathjax(html):
    assert (html / "book" / "status.html").exists()
    refs = (html / "book" / "references.html").read_text()
    assert "Nam" in refs and "Saxe" in refs
    assert (html / "_static" / "mathjax" / "tex-mml-chtml.js").exists()
    assert "_static/mathjax/tex-mml-chtml.js" in (html / "book" / "intro.html").read_text()


@pytest.mark.slow
def test_library_reference_documents_the_public_api(html):
    page = (html / "book" / "api.html").read_text(encoding="utf-8")
    for name in ("train.train", "train.Adam", "ode.integrate", "validation.check_generator", "gated.race.race_solve",
                 "operators.KPFlow", "spectra.leading_spectrum", "claims.close"):
        assert f'id="learning_dynamics.{name}"' in page, name
    assert "Used in" in page and 'href="../notebooks/neural_race.html"' in page  # the back-links to the chapters
