"""The built book in a real browser: headless Chromium (Debian's) driven by Playwright.

Serves the session's one build of the book (``built_book`` in conftest.py) on
127.0.0.1 and, for every page, checks that the images load, no request fails,
MathJax renders all the math, every in-book link with a fragment (citations
included) lands on an id that exists, and the console stays clean. It also runs
Sphinx's search for one key term per chapter, and saves a full-page screenshot
of each chapter to _build/screenshots/<chapter>.png for a person to look at.

The layout, on a laptop (1280 px) and on a phone (390 px): no display equation
is wider than the text column at 1280 px; at 390 px no page is wider than the
viewport, and an equation too wide for the phone scrolls in its own box, with
a shade at the edge that hides more of it; figure captions and references are
numbered by chapter ("Fig. 5.1"); the scorecard opens with one summary row per
chapter whose counts are those of ``python -m learning_dynamics check``, its
tables folded until a link unfolds them; the intro has one "Chapters" heading.
Screenshots: _build/screenshots/phone/<page>.png (390 px, full page) and
_build/screenshots/scorecard-*.png.

Needs ``apt-get install chromium`` and the pinned ``playwright`` package (never
``playwright install``: the test uses the Debian browser). Without them the test
skips, except under CI (env var CI set), where it fails.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import threading
import tomllib
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urldefrag

import pytest

from conftest import NOTEBOOKS, ROOT

pytestmark = pytest.mark.slow

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
SCREENSHOTS = ROOT / "_build" / "screenshots"
TIMEOUT_MS = 30_000

# One key term per chapter that Sphinx's search must lead to that chapter.
SEARCH_TERMS = {
    "feedback_principle": "emergence",
    "three_mechanisms": "disalignment",
    "neural_race": "pathway",
    "kpflow": "propagator",
    "spring_block": "spring",
}
CHAPTERS = [n.stem for n in NOTEBOOKS]


def _playwright_pin() -> str:
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next((p for p in pins if p.startswith("playwright==")), "playwright")


def _unavailable(reason: str):
    """Skip with how to install; under CI (which installs both) fail instead."""
    how = (f"{reason}. Install Debian's Chromium with `apt-get install chromium` and the pinned "
           f"package with `pip install {_playwright_pin()}` (do not run `playwright install`).")
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"CI is set, so a missing browser is an error, not a skip: {how}")
    pytest.skip(how)


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium; requested before ``site`` so a skip comes before the book build."""
    executable = next((p for p in CHROMIUM_PATHS if Path(p).is_file()), shutil.which("chromium"))
    if executable is None:
        _unavailable(f"no Chromium at {' or '.join(CHROMIUM_PATHS)} or on PATH")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the Python package playwright is not installed")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, headless=True)
        yield chromium
        chromium.close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def site(built_book):
    """The built html folder served on a free port of 127.0.0.1 from a background thread."""
    handler = functools.partial(_QuietHandler, directory=str(built_book))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", built_book
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _pages(html: Path) -> list[str]:
    """Every page of the book, relative to the html folder: the chapters and the book/ pages.

    (index.html only redirects to book/intro.html: test_index_redirects_to_intro.)
    """
    return (sorted(f"notebooks/{p.name}" for p in (html / "notebooks").glob("*.html"))
            + sorted(f"book/{p.name}" for p in (html / "book").glob("*.html")))


# Math and images, read in the page after MathJax's startup promise has settled.
PAGE_STATE_JS = """() => {
  const skip = "pre, code, script, style, textarea, mjx-container, .highlight, .output, .cell_output";
  const raw = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const t = n.textContent;
    if (/\\\\\\(|\\\\\\[|\\$\\$/.test(t) && !n.parentElement.closest(skip)) raw.push(t.trim().slice(0, 80));
  }
  return {
    math: document.querySelectorAll(".math").length,
    unrendered: Array.from(document.querySelectorAll(".math"))
      .filter(e => !e.querySelector("mjx-container")).map(e => e.textContent.trim().slice(0, 80)),
    containers: document.querySelectorAll("mjx-container").length,
    // TeX errors (merror) and undefined macros (noundefined typesets them as red mtext).
    errors: (window.MathJax && MathJax.startup && MathJax.startup.document
             ? Array.from(MathJax.startup.document.math) : [])
      .filter(m => /<merror|<mtext mathcolor="red">\\\\/.test(MathJax.startup.toMML(m.root)))
      .map(m => m.math.slice(0, 80)),
    raw: raw,
    images: document.images.length,
    broken: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
    links: Array.from(document.querySelectorAll("a[href]")).map(a => a.href),
  };
}"""


def _favicon(url: str) -> bool:
    """The browser asks for /favicon.ico by itself; the book has no favicon, and needs none."""
    return url.endswith("/favicon.ico")


class _Visit:
    """One page in a fresh browser context, with everything that went wrong on the way."""

    def __init__(self, browser, base: str, path: str, width: int = 1280):
        self.base, self.url = base, base + path
        self.context = browser.new_context(viewport={"width": width, "height": 900 if width > 600 else 844})
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and not _favicon(m.location.get("url", ""))
                     and self.problems.append(f"console error: {m.text} at {m.location.get('url')}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url} ({r.failure})"))
        self.page.on("response", lambda r: r.status >= 400 and r.url.startswith(base) and not _favicon(r.url)
                     and self.problems.append(f"HTTP {r.status}: {r.url}"))

    def open(self) -> dict:
        self.page.goto(self.url, wait_until="load")
        if self.page.locator(".math").count():
            self.page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
            self.page.evaluate("() => MathJax.startup.promise.then(() => true)")
        # The fonts that MathJax's output asked for (after a forced layout); not "networkidle",
        # which can wait out the timeout on a busy machine.
        self.page.evaluate("() => { void document.body.offsetHeight; return document.fonts.ready.then(() => true); }")
        return self.page.evaluate(PAGE_STATE_JS)

    def close(self):
        self.context.close()


_ids_cache: dict[str, set[str]] = {}


def _ids(visit: _Visit, url: str) -> set[str]:
    if url not in _ids_cache:
        response = visit.context.request.get(url)
        text = response.text() if response.ok else ""
        _ids_cache[url] = set(re.findall(r'\bid="([^"]+)"', text))
    return _ids_cache[url]


def _check_page(browser, base: str, path: str, screenshot: Path | None = None) -> None:
    visit = _Visit(browser, base, path)
    try:
        state = visit.open()
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            visit.page.screenshot(path=str(screenshot), full_page=True)
        problems = list(visit.problems)
        problems += [f"image did not load: {src}" for src in state["broken"]]
        if state["math"]:
            if not state["containers"]:
                problems.append(f"{state['math']} math elements but MathJax rendered none")
            problems += [f"math left unrendered: {t!r}" for t in state["unrendered"]]
            problems += [f"MathJax error: {t!r}" for t in state["errors"]]
        problems += [f"raw TeX delimiters in the text: {t!r}" for t in state["raw"]]
        here = urldefrag(visit.url).url
        for link in state["links"]:
            target, fragment = urldefrag(link)
            if not fragment or not link.startswith(base):
                continue
            if unquote(fragment) not in _ids(visit, target):
                kind = "citation" if "references.html" in target else "link"
                where = "this page" if target == here else target[len(base):]
                problems.append(f"{kind} {link[len(base):]} points at no id on {where}")
        assert not problems, f"{path}:\n  " + "\n  ".join(problems)
    finally:
        visit.close()


def test_every_chapter_has_a_page(browser, site):
    _, html = site
    assert sorted(p for p in _pages(html) if p.startswith("notebooks/")) == [f"notebooks/{c}.html" for c in CHAPTERS]
    assert set(SEARCH_TERMS) == set(CHAPTERS), "one search term per chapter in SEARCH_TERMS"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_page_in_browser(browser, site, chapter):
    """Images, math, links, console; and the full-page screenshot _build/screenshots/<chapter>.png."""
    base, _ = site
    _check_page(browser, base, f"notebooks/{chapter}.html", SCREENSHOTS / f"{chapter}.png")


def test_other_pages_in_browser(browser, site):
    base, html = site
    failures = []
    pages = [p for p in _pages(html) if p.startswith("book/")]
    assert "book/references.html" in pages and "book/intro.html" in pages
    for path in pages:
        try:
            _check_page(browser, base, path)
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, "\n".join(failures)


def test_index_redirects_to_intro(browser, site):
    base, _ = site
    visit = _Visit(browser, base, "index.html")
    try:
        visit.page.goto(visit.url)
        visit.page.wait_for_url(base + "book/intro.html")
        assert not visit.problems, "\n".join(visit.problems)
    finally:
        visit.close()


def test_references_page_is_cited(browser, site):
    """Citations exist at all (so the link check above has something to check)."""
    _, html = site
    cited = [c for c in CHAPTERS if "../book/references.html#" in (html / "notebooks" / f"{c}.html").read_text()]
    assert cited, "no chapter cites the bibliography"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_search_finds_chapter(browser, site, chapter):
    base, _ = site
    term = SEARCH_TERMS[chapter]
    visit = _Visit(browser, base, f"search.html?q={term}")
    try:
        visit.page.goto(visit.url, wait_until="load")
        visit.page.wait_for_function(
            "() => document.querySelector('#search-results h2')?.textContent === 'Search Results'")
        hits = visit.page.eval_on_selector_all("#search-results ul.search li a", "as => as.map(a => a.href)")
        pages = sorted({urldefrag(h).url[len(base):] for h in hits if h.startswith(base)})
        assert f"notebooks/{chapter}.html" in pages, f"search for {term!r} found {pages}"
        assert not visit.problems, "\n".join(visit.problems)
    finally:
        visit.close()


# ---- The layout on a laptop and on a phone ------------------------------------------------------

LAPTOP, PHONE = 1280, 390

# Every display equation: its rendered width, the width of its box and of the article column,
# whether the box scrolls, and whether it has the scroll-shadow backgrounds (the hint that it does).
DISPLAY_MATH_JS = """() => {
  const column = document.querySelector("article.bd-article").getBoundingClientRect();
  return Array.from(document.querySelectorAll('mjx-container[display="true"]')).map(c => {
    const item = Array.from(MathJax.startup.document.math).find(m => m.typesetRoot === c);
    const box = c.getBoundingClientRect(), style = getComputedStyle(c);
    return {tex: item ? item.math.trim().slice(0, 100) : "?",
            width: c.querySelector("mjx-math").getBoundingClientRect().width,
            box: c.clientWidth, boxRight: box.right, columnRight: column.right, viewport: window.innerWidth,
            scrolls: ["auto", "scroll"].includes(style.overflowX),
            hint: (style.backgroundImage.match(/gradient/g) || []).length >= 2};
  });
}"""


def _chapter_numbers() -> dict[str, int]:
    """{chapter: its number}, in the order of the numbered part of _toc.yml."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    part = next(p for p in toc["parts"] if p.get("numbered"))
    return {Path(c["file"]).name: i + 1 for i, c in enumerate(part["chapters"])}


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_display_equations_fit_the_column_on_a_laptop(browser, site, chapter):
    base, _ = site
    visit = _Visit(browser, base, f"notebooks/{chapter}.html", width=LAPTOP)
    try:
        visit.open()
        equations = visit.page.evaluate(DISPLAY_MATH_JS)
        assert equations, "the chapter has display equations"
        wide = [f"{e['width']:.0f} px in a {e['box']} px column: {e['tex']!r}" for e in equations
                if e["width"] > e["box"] + 1 or e["boxRight"] > e["columnRight"] + 1]
        assert not wide, f"display equations wider than the column at {LAPTOP} px:\n  " + "\n  ".join(wide)
    finally:
        visit.close()


def test_no_page_is_wider_than_a_phone(browser, site):
    """At 390 px: no page scrolls sideways; a too-wide equation scrolls in its box, with the hint."""
    base, html = site
    failures, scrolling = [], 0
    for path in _pages(html):
        visit = _Visit(browser, base, path, width=PHONE)
        try:
            visit.open()
            page_width = visit.page.evaluate("() => document.documentElement.scrollWidth")
            if page_width > PHONE:
                failures.append(f"{path}: {page_width} px wide in a {PHONE} px viewport")
            for e in visit.page.evaluate(DISPLAY_MATH_JS) if path.startswith("notebooks/") else []:
                if e["boxRight"] > e["viewport"] + 1:
                    failures.append(f"{path}: an equation's box ends at {e['boxRight']:.0f} px: {e['tex']!r}")
                if e["width"] > e["box"] + 1:
                    scrolling += 1
                    if not (e["scrolls"] and e["hint"]):
                        failures.append(f"{path}: a {e['width']:.0f} px equation in a {e['box']} px box does not "
                                        f"scroll in it with a hint (scrolls={e['scrolls']}, hint={e['hint']}): {e['tex']!r}")
            shot = SCREENSHOTS / "phone" / (path.replace("/", "-").removesuffix(".html") + ".png")
            shot.parent.mkdir(parents=True, exist_ok=True)
            visit.page.screenshot(path=str(shot), full_page=True)
            failures += [f"{path}: {p}" for p in visit.problems]
        finally:
            visit.close()
    assert scrolling, "no equation is wider than a phone: the scrolling check checked nothing"
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_figures_are_numbered_by_chapter(browser, site, chapter):
    """Captions read "Fig. n.1", "Fig. n.2", ... with n the chapter's number; references resolve to one."""
    base, _ = site
    number = _chapter_numbers()[chapter]
    visit = _Visit(browser, base, f"notebooks/{chapter}.html", width=LAPTOP)
    try:
        visit.open()
        captions = visit.page.eval_on_selector_all("figure figcaption .caption-number",
                                                   "els => els.map(e => e.textContent.trim())")
        assert captions == [f"Fig. {number}.{k}" for k in range(1, len(captions) + 1)], captions
        refs = visit.page.eval_on_selector_all("a span.std-numref", "els => els.map(e => e.textContent.trim())")
        assert refs, "the chapter refers to its figures"
        assert all(re.fullmatch(rf"Fig\. {number}\.\d+", r) for r in refs), sorted(set(refs))
        heading = visit.page.text_content("article h1 .section-number").strip()
        assert heading == f"{number}.", heading
    finally:
        visit.close()


def _scorecard_summary(page) -> list[dict]:
    return page.eval_on_selector_all("table.scorecard-summary tbody tr", """rows => rows.map(r => {
        const cells = Array.from(r.querySelectorAll("td")).map(td => td.textContent.trim());
        return {href: r.querySelector("td a").getAttribute("href"), cells: cells, cls: r.className};
    })""")


def test_scorecard_summary_matches_check(browser, site):
    """One summary row per chapter, its counts those of `python -m learning_dynamics check`;
    the tables are folded, their non-passing rows marked, and a count's link unfolds its table."""
    from learning_dynamics.cli import collect_claims

    expected = {}
    for chapter, found in collect_claims(None):
        statuses = [c.status for c in found]
        known = statuses.count("does not reproduce")
        expected[chapter] = [str(len(statuses)), str(statuses.count("pass")), str(known),
                             str(len(statuses) - statuses.count("pass") - known)]
    base, _ = site
    for width in (LAPTOP, PHONE):
        visit = _Visit(browser, base, "book/scorecard.html", width=width)
        try:
            visit.open()
            page = visit.page
            page.screenshot(path=str(SCREENSHOTS / f"scorecard-{width}.png"), full_page=True)
            rows = _scorecard_summary(page)
            assert len(rows) == len(CHAPTERS) == len(expected)
            for row in rows:
                chapter = row["href"].removeprefix("#scorecard-notebooks-")
                assert row["cells"][1:] == expected[chapter], (chapter, row["cells"], expected[chapter])
                assert page.locator(row["href"]).count() == 1, f"{row['href']} points at no chapter table"
                bad = expected[chapter][2] != "0" or expected[chapter][3] != "0"
                assert ("scorecard-" in row["cls"]) == bad, (chapter, row["cls"])
            details = page.locator("details.scorecard-dropdown")
            assert details.count() == len(CHAPTERS)
            assert not any(details.evaluate_all("ds => ds.map(d => d.open)")), "tables are folded by default"
            known = sum(int(e[2]) for e in expected.values())
            failed = sum(int(e[3]) for e in expected.values())
            assert page.locator("table.scorecard tr.scorecard-known").count() == known
            assert page.locator("table.scorecard tr.scorecard-fail").count() == failed
            if width == LAPTOP:  # the page used to be a 10,500 px wall of tables
                height = page.evaluate("() => document.documentElement.scrollHeight")
                assert height < 4000, f"the folded scorecard is {height} px tall"
            # Following a count's link unfolds the chapter's table at the claim it counts.
            link = page.locator("table.scorecard-summary tbody td a[href*='-claim-']").first
            if link.count():
                target = link.get_attribute("href")
                link.click()
                page.wait_for_function("id => document.getElementById(id).closest('details').open", arg=target[1:])
                assert page.locator(target).is_visible()
                page.screenshot(path=str(SCREENSHOTS / f"scorecard-{width}-unfolded.png"))
            assert not visit.problems, "\n".join(visit.problems)
        finally:
            visit.close()


def test_intro_has_one_chapters_heading(browser, site):
    base, _ = site
    visit = _Visit(browser, base, "book/intro.html", width=LAPTOP)
    try:
        visit.open()
        headings = visit.page.eval_on_selector_all(
            "article :is(h1, h2, h3, h4, h5, h6, [role=heading])", "els => els.map(e => e.textContent.trim())")
        assert [h for h in headings if h.rstrip("#").strip() == "Chapters"] == ["Chapters"], headings
    finally:
        visit.close()
