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


@pytest.mark.slow
def test_scorecard_opens_with_a_summary_and_folds_the_tables(html):
    page = (html / "book" / "scorecard.html").read_text()
    summary = page[page.index('class="scorecard-summary table'):]
    summary = summary[: summary.index("</table>")]
    assert summary.count("<tr") == len(NOTEBOOKS) + 1, "a header and one row per chapter"
    assert page.index("scorecard-summary") < page.index('class="scorecard table"'), "the summary comes first"
    folded = re.findall(r"<details[^>]*scorecard-dropdown[^>]*>", page)
    assert len(folded) == len(NOTEBOOKS) and not any(" open" in d for d in folded)
    assert 'ld_book.css' in page and 'ld_book.js' in page


@pytest.mark.slow
def test_figures_are_numbered_by_chapter(html):
    for notebook in NOTEBOOKS:
        page = (html / "notebooks" / f"{notebook.stem}.html").read_text()
        number = re.search(r'<h1><span class="section-number">(\d+)\. </span>', page).group(1)
        captions = re.findall(r'<span class="caption-number">Fig\. ([\d.]+) </span>', page)
        assert captions == [f"{number}.{k}" for k in range(1, len(captions) + 1)], (notebook.stem, captions)


@pytest.mark.slow
def test_intro_has_one_chapters_heading(html):
    page = (html / "book" / "intro.html").read_text()
    article = page[page.index('<article class="bd-article">'):page.index("</article>")]
    assert len(re.findall(r">Chapters<", article)) == 1
