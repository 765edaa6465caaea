"""Sphinx extension of the book (listed in _config.yml under local_extensions).

- Serves MathJax 3 from the pinned ``django-static-mathjax`` wheel instead of a
  CDN, so the book renders math offline (and in the browser test).
- Drops the duplicate inline scripts that Sphinx 7.4 writes into every page.
- ``{claims-scorecard}``: one section per chapter notebook in the TOC, each
  with a table built from the claims that the chapter glued under ``claims``
  in this build, linking every claim to the figure it checks. Nothing in the
  scorecard is typed by hand, and a new chapter appears on it with no change
  to this file.
- The library reference (autodoc): plain-text ``|x|`` norms in docstrings are
  escaped, and every function or class ends with the chapters whose code
  calls it ("Used in", after d2l's "Defined in"), found by reading the
  notebooks, so the links never go stale.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

from learning_dynamics.claims import GLUE_NAME, STATUS_LABELS, parse_glued, rounded

logger = logging.getLogger(__name__)

CHAPTER_DIR = "notebooks/"
MATHJAX_KEEP = ("tex-mml-chtml.js", "input", "output/chtml", "a11y", "ui")


def _mathjax_source() -> Path:
    import mathjax  # from django-static-mathjax (no Django needed for the files)

    return Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"


def copy_mathjax(app, exception) -> None:
    """Copy the parts of MathJax that tex-mml-chtml.js loads into _static/mathjax."""
    if exception is not None or app.builder.format != "html":
        return
    source, target = _mathjax_source(), Path(app.outdir) / "_static" / "mathjax"
    for part in MATHJAX_KEEP:
        src, dst = source / part, target / part
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)


def dedupe_inline_scripts(app, pagename, templatename, context, doctree) -> None:
    """Drop the second copy of each inline (body-only) script on a page.

    Sphinx 7.4's ``prepare_writing`` re-adds every registered script with its
    filename ``None`` turned into ``''``, so an inline script that an extension
    added after the builder started (sphinx-thebe's ``const THEBE_JS_URL = ...``)
    appears twice, and the second ``const`` is a SyntaxError in the browser.
    """
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, keep = set(), []
    for js in scripts:
        key = (js.filename or "", js.priority, tuple(sorted(js.attributes.items())))
        if key not in seen:
            seen.add(key)
            keep.append(js)
    scripts[:] = keep


def toc_chapters(env) -> list[str]:
    """The chapter notebooks' docnames, in _toc.yml order (sphinx-external-toc's site map)."""
    order = list(getattr(env, "external_site_map", None) or [])
    found = [d for d in env.found_docs if d.startswith(CHAPTER_DIR)]
    return sorted(found, key=lambda d: (order.index(d) if d in order else len(order), d))


class scorecard_placeholder(nodes.General, nodes.Element):
    """Where one chapter's claims table goes, filled in once every chapter has run."""


class scorecard_summary(nodes.General, nodes.Element):
    """Where the summary (one row per chapter) goes, filled in once every chapter has run."""


def _section_id(doc: str) -> str:
    return f"scorecard-{doc.replace('/', '-')}"


def _dropdown(title: str, body: nodes.Node, classes=()) -> nodes.Element:
    """A collapsed sphinx-design dropdown (``<details>`` in html; a titled container elsewhere)."""
    from sphinx_design.shared import create_component  # loaded by Jupyter Book with sphinx_design

    container = create_component("dropdown", opened=False, type="dropdown", has_title=True, icon=None,
                                 chevron=None, container_classes=["sd-mb-3", *classes],
                                 title_classes=[], body_classes=[])
    container += nodes.rubric(title, "", nodes.Text(title))
    container += body
    return container


class ClaimsScorecard(SphinxDirective):
    """A summary table, then one section per chapter notebook in the TOC with its table collapsed.

    The counts and the tables are filled in at write time (:class:`FillScorecard`), when every
    chapter has been read and has glued its claims.
    """

    has_content = False

    def run(self):
        chapters = toc_chapters(self.env)
        if not chapters:
            raise self.error("claims-scorecard: no chapter notebooks under notebooks/ in the TOC")
        out = [scorecard_summary(chapters=chapters)]
        for doc in chapters:
            self.env.note_dependency(self.env.doc2path(doc))
            section = nodes.section(ids=[_section_id(doc)], classes=["scorecard-chapter"])
            title = nodes.title()
            xref = addnodes.pending_xref("", refdomain="std", reftype="doc", reftarget="/" + doc,
                                         refexplicit=False, refdoc=self.env.docname)
            xref += nodes.inline(text=_notebook_title(Path(self.env.doc2path(doc))) or doc)  # the page's TOC
            title += xref
            section += title
            section += scorecard_placeholder(chapter=doc)
            out.append(section)
        return out


def _notebook_title(path: Path) -> str:
    """The first ``# heading`` of a notebook's markdown cells ('' if none).

    The section titles resolve to the chapter's title only at write time; the page's own table
    of contents (the right-hand "Contents") is built at read time, so it gets this text.
    """
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] == "markdown":
            found = re.search(r"^# (.+)$", "".join(cell["source"]), re.M)
            if found:
                return found.group(1).strip()
    return ""


# How the scorecard counts a claim's status (claims.STATUSES): every status other than these two
# ("FAIL", "unexpectedly passes", "not reached") is a failure, as `python -m learning_dynamics check` has it.
PASS, KNOWN = "pass", "does not reproduce"


def _counts(records: list[dict]) -> dict[str, int]:
    statuses = [r["status"] for r in records]
    known = statuses.count(KNOWN)
    return {"claims": len(statuses), "pass": statuses.count(PASS), "known": known,
            "fail": len(statuses) - statuses.count(PASS) - known}


def _in_words(c: dict[str, int]) -> str:
    """ "12 claims: 11 pass, 1 does not reproduce, 0 fail" """
    known = f"{c['known']} {'does' if c['known'] == 1 else 'do'} not reproduce"
    return (f"{c['claims']} claim{'s' * (c['claims'] != 1)}: {c['pass']} pass"
            + (f", {known}" if c["known"] else "") + f", {c['fail']} fail")


def _row_id(doc: str, index: int) -> str:
    return f"{_section_id(doc)}-claim-{index + 1}"


class FillScorecard(SphinxPostTransform):
    """Fill in the summary and replace each placeholder with the chapter's collapsed claims table."""

    default_priority = 5  # before the references resolve (10) and sphinx-design's dropdowns (199)

    def run(self, **kwargs):
        from myst_nb.ext.glue.crossref import read_glue_cache

        records = {}
        for node in list(self.document.findall(scorecard_placeholder)):
            chapter = node["chapter"]
            records[chapter] = _glued_records(read_glue_cache(self.env.mystnb_config.output_folder, chapter))
            if records[chapter] is None:
                logger.warning(f"claims-scorecard: {chapter} glued no JSON claims under {GLUE_NAME!r}", location=node)
                node.parent.remove(node)
                continue
            table = _claims_table(records[chapter], chapter, self.env.docname)
            counts = _counts(records[chapter])
            node.replace_self(_dropdown(_in_words(counts), table, classes=["scorecard-dropdown"]
                                        + (["scorecard-has-fail"] if counts["fail"] else [])
                                        + (["scorecard-has-known"] if counts["known"] else [])))
        for node in list(self.document.findall(scorecard_summary)):
            node.replace_self(self._summary(node["chapters"], records))

    def _summary(self, chapters: list[str], records: dict[str, list[dict] | None]) -> list[nodes.Node]:
        """A sentence with the totals, then one row per chapter: counts, each linked to its rows."""
        rows, flags, total = [], [], {"claims": 0, "pass": 0, "known": 0, "fail": 0}
        for doc in chapters:
            number = self.env.toc_secnumbers.get(doc, {}).get("")
            title = (".".join(map(str, number)) + ". " if number else "") + self.env.titles[doc].astext()
            chapter = nodes.reference("", "", nodes.Text(title), internal=True, refid=_section_id(doc))
            found = records.get(doc)
            if found is None:
                rows.append([chapter] + [nodes.Text("none glued")] + [nodes.Text("")] * 3)
                flags.append("fail")
                continue
            counts = _counts(found)
            for key in total:
                total[key] += counts[key]
            cells = [chapter, nodes.Text(str(counts["claims"])), nodes.Text(str(counts["pass"]))]
            for key, wanted in (("known", lambda s: s == KNOWN), ("fail", lambda s: s not in (PASS, KNOWN))):
                first = next((i for i, r in enumerate(found) if wanted(r["status"])), None)
                cells.append(nodes.Text("0") if first is None else nodes.reference(
                    "", "", nodes.Text(str(counts[key])), internal=True, refid=_row_id(doc, first)))
            rows.append(cells)
            flags.append("fail" if counts["fail"] else "known" if counts["known"] else None)
        line = nodes.paragraph(classes=["scorecard-total"])
        line += nodes.Text(f"{_in_words(total)}, in {len(chapters)} chapters. Each chapter's table is "
                           "folded below; a count links to the first claim it counts, and rows that do "
                           "not pass are marked.")
        header = ("chapter", "claims", "pass", "does not reproduce", "failures")
        return [line, _table(header, rows, flags, classes=["scorecard-summary"])]


def _glued_records(glue_cache: dict) -> list[dict] | None:
    """The claim records a chapter glued as JSON under GLUE_NAME, or None."""
    glued = glue_cache.get(GLUE_NAME, {}).get("data", {}).get("text/plain")
    value = parse_glued(glued) if glued is not None else None
    return value["claims"] if value else None


HEADER = ("claim", "paper / theory", "ours", "tolerance", "status", "figure")


def _figure_ref(label: str, docname: str) -> nodes.Node:
    """A numbered cross-reference ("Fig. 2.1") to a chapter figure, resolved by Sphinx."""
    xref = addnodes.pending_xref("", refdomain="std", reftype="numref", reftarget=label,
                                 refexplicit=False, refdoc=docname, refwarn=True)
    xref += nodes.literal(text=label)
    return xref


def _claims_table(records: list[dict], chapter: str, docname: str) -> nodes.table:
    rows, flags = [], []
    for r in records:
        status = STATUS_LABELS.get(r["status"], r["status"]) + (f": {r['known_discrepancy']}" if r["known_discrepancy"] else "")
        link = _figure_ref(r["figure"], docname) if r["figure"] else nodes.Text("")
        flag = None if r["status"] == PASS else "known" if r["status"] == KNOWN else "fail"
        rows.append([nodes.Text(r["statement"]), nodes.Text(r["paper"]), nodes.Text(rounded(r["ours"])),
                     nodes.Text(r["tolerance"]), nodes.strong(text=status) if flag else nodes.Text(status), link])
        flags.append(flag)
    table = _table(HEADER, rows, flags, classes=["scorecard"])
    for i, row in enumerate(table.findall(nodes.row)):
        if i:  # the header row is the first
            row["ids"].append(_row_id(chapter, i - 1))
    return table


def _table(header, rows, flags=None, classes=()) -> nodes.table:
    """A docutils table of header strings and rows of inline nodes.

    A row flagged "fail" gets class scorecard-fail, one flagged "known" (does not reproduce)
    scorecard-known.
    """
    table = nodes.table(classes=["colwidths-auto", *classes])  # columns as wide as their text, not 1/n each
    group = nodes.tgroup(cols=len(header))
    table += group
    group.extend(nodes.colspec(colwidth=1) for _ in header)
    head, body = nodes.thead(), nodes.tbody()
    group += head
    group += body
    head += _row([nodes.Text(h) for h in header])
    for i, cells in enumerate(rows):
        body += _row(cells, flag=flags[i] if flags else None)
    return table


def _row(cells, flag: str | None = None) -> nodes.row:
    row = nodes.row(classes=[f"scorecard-{flag}"] if flag else [])
    for cell in cells:
        entry = nodes.entry()
        para = nodes.paragraph()
        para += cell
        entry += para
        row += entry
    return row


class CoursePlan(SphinxDirective):
    """``{course-plan}``: one row per content line ``chapter: what it builds on``.

    The run-time columns come from ``bench/timings.json`` (written by
    ``make bench``) and ``bench/paper_times.json`` (``bench/paper_times.py``:
    measured, or extrapolated), so no time on the page is typed by hand.
    """

    has_content = True

    def run(self):
        from learning_dynamics.cli import PAPER_TIMES, ROOT, TIMINGS, _paper_seconds, read_timings

        self.env.note_dependency(str(ROOT / TIMINGS))
        self.env.note_dependency(str(ROOT / PAPER_TIMES))
        timings, paper_times = read_timings(), read_timings(path=PAPER_TIMES)
        rows = []
        for line in self.content:
            chapter, _, builds_on = line.partition(":")
            chapter = chapter.strip()
            doc = CHAPTER_DIR + chapter
            if doc not in self.env.found_docs:
                raise self.error(f"course-plan: {chapter!r} is not a chapter in the TOC")
            xref = addnodes.pending_xref("", refdomain="std", reftype="doc", reftarget="/" + doc,
                                         refexplicit=False, refdoc=self.env.docname)
            xref += nodes.inline(text=chapter)
            seconds = [timings.get(chapter, {}).get(p) for p in ("smoke", "book")]
            rows.append([xref, nodes.Text(builds_on.strip())]
                        + [nodes.Text(f"{t:.0f} s" if t is not None else "not measured") for t in seconds]
                        + [nodes.Text(_paper_seconds(paper_times.get(chapter)))])
        return [_table(("chapter", "builds on", "smoke run", "book run", "paper run"), rows)]


def chapter_uses(root: Path) -> dict[str, set[str]]:
    """{"module.name": chapters} for every library name a chapter notebook's code calls or imports."""
    uses: dict[str, set[str]] = {}
    for notebook in sorted((root / CHAPTER_DIR).glob("*.ipynb")):
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        aliases = {}  # local name -> module path below learning_dynamics
        for module, names in re.findall(r"from learning_dynamics(?:\.([\w.]+))? import ([\w, ]+)", code):
            for name in (n.strip() for n in names.split(",")):
                aliases[name] = f"{module}.{name}" if module else name
        for first, second in re.findall(r"\b(\w+)\.(\w+)\(", code):
            if first in aliases:
                uses.setdefault(f"{aliases[first].split('.')[-1]}.{second}", set()).add(notebook.stem)
        for name, path in aliases.items():
            if "." in path and re.search(rf"\b{name}\(", code):
                uses.setdefault(".".join(path.split(".")[-2:]), set()).add(notebook.stem)
    return uses


def add_chapter_links(app, what, name, obj, options, lines):
    """End the docstring of a function or class with the chapters that use it."""
    if what not in ("function", "class"):
        return
    if not hasattr(app.env, "ld_chapter_uses"):
        app.env.ld_chapter_uses = chapter_uses(Path(app.srcdir))
    *modules, last = name.split(".")  # gated.race.race_solve is called as gated.race_solve
    chapters = set().union(*(app.env.ld_chapter_uses.get(f"{m}.{last}", set()) for m in modules))
    if chapters:
        lines += ["", "Used in " + ", ".join(f":doc:`/{CHAPTER_DIR}{c}`" for c in sorted(chapters)) + "."]


def escape_bars(app, what, name, obj, options, lines):
    """Docstrings write norms as |x| in plain text; outside ``literals`` reST would read them as substitutions."""
    for i, line in enumerate(lines):
        parts = line.split("``")
        parts[::2] = [p.replace("|", "\\|") for p in parts[::2]]
        lines[i] = "``".join(parts)


def setup(app):
    app.setup_extension("sphinx.ext.autodoc")
    app.connect("autodoc-process-docstring", escape_bars)
    app.connect("autodoc-process-docstring", add_chapter_links)
    app.add_node(scorecard_placeholder)
    app.add_node(scorecard_summary)
    app.add_directive("claims-scorecard", ClaimsScorecard)
    app.add_directive("course-plan", CoursePlan)
    app.add_post_transform(FillScorecard)
    app.connect("build-finished", copy_mathjax)
    app.connect("html-page-context", dedupe_inline_scripts)
    app.config.mathjax_path = "mathjax/tex-mml-chtml.js"
    return {"parallel_read_safe": True, "parallel_write_safe": True}
