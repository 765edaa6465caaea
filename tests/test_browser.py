"""The built book in a real browser: headless Chromium (Debian's) driven by Playwright.

Serves the session's one build of the book (``built_book`` in conftest.py) on
127.0.0.1 and, for every page, checks that the images load, no request fails,
MathJax renders all the math, every in-book link with a fragment (citations
included) lands on an id that exists, and the console stays clean. It also runs
Sphinx's search for one key term per chapter, and saves a full-page screenshot
of each chapter to _build/screenshots/<chapter>.png for a person to look at.

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

    def __init__(self, browser, base: str, path: str):
        self.base, self.url = base, base + path
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
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
