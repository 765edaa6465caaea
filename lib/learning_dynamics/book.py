"""Sphinx extension of the book (listed in _config.yml under extra_extensions).

- Serves MathJax 3 from the pinned ``django-static-mathjax`` wheel instead of a
  CDN, so the book renders math offline (and in the browser test).
- Drops the duplicate inline scripts that Sphinx 7.4 writes into every page.
- ``{claims-scorecard}``: one section per chapter notebook in the TOC, each
  with a table built from the claims that the chapter glued under ``claims``
  in this build, linking every claim to the figure it checks. Nothing in the
  scorecard is typed by hand, and a new chapter appears on it with no change
  to this file.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

from .claims import _LEGACY_GLUE_NAME, GLUE_NAME, rounded

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


class scorecard_placeholder(nodes.General, nodes.Element):
    """Where one chapter's claims table goes, filled in once every chapter has run."""


class ClaimsScorecard(SphinxDirective):
    """One section per chapter notebook in the TOC, its table filled in at write time."""

    has_content = False

    def run(self):
        chapters = sorted(d for d in self.env.found_docs if d.startswith(CHAPTER_DIR))
        if not chapters:
            raise self.error("claims-scorecard: no chapter notebooks under notebooks/ in the TOC")
        out = []
        for doc in chapters:
            self.env.note_dependency(self.env.doc2path(doc))
            section = nodes.section(ids=[f"scorecard-{doc.replace('/', '-')}"])
            title = nodes.title()
            xref = addnodes.pending_xref("", refdomain="std", reftype="doc", reftarget="/" + doc,
                                         refexplicit=False, refdoc=self.env.docname)
            xref += nodes.inline(text=doc)
            title += xref
            section += title
            section += scorecard_placeholder(chapter=doc)
            out.append(section)
        return out


class FillScorecard(SphinxPostTransform):
    """Replace each placeholder with a table built from the chapter's glued claims."""

    default_priority = 5

    def run(self, **kwargs):
        from myst_nb.ext.glue.crossref import read_glue_cache

        for node in list(self.document.findall(scorecard_placeholder)):
            chapter = node["chapter"]
            records = _glued_records(read_glue_cache(self.env.mystnb_config.output_folder, chapter))
            if records is None:
                logger.warning(f"claims-scorecard: {chapter} glued no JSON claims under {GLUE_NAME!r}", location=node)
                node.parent.remove(node)
                continue
            node.replace_self(_claims_table(records, self.env.docname))


def _glued_records(glue_cache: dict) -> list[dict] | None:
    """The claim records a chapter glued as JSON, under GLUE_NAME or the legacy name.

    A notebook executed before report() glued its JSON under GLUE_NAME holds the
    JSON under the legacy name and the Markdown table under GLUE_NAME
    (notebooks/feedback_principle.ipynb, as committed).
    """
    for name in (GLUE_NAME, _LEGACY_GLUE_NAME):
        try:
            value = json.loads(ast.literal_eval(glue_cache[name]["data"]["text/plain"]))
        except (KeyError, TypeError, ValueError, SyntaxError):
            continue  # absent, or the Markdown table an older notebook glued under GLUE_NAME
        if isinstance(value, dict) and "claims" in value:
            return value["claims"]
    return None


HEADER = ("claim", "paper / theory", "ours", "tolerance", "status", "figure")


def _figure_ref(label: str, docname: str) -> nodes.Node:
    """A numbered cross-reference ("Fig. 2") to a chapter figure, resolved by Sphinx."""
    xref = addnodes.pending_xref("", refdomain="std", reftype="numref", reftarget=label,
                                 refexplicit=False, refdoc=docname, refwarn=True)
    xref += nodes.literal(text=label)
    return xref


def _claims_table(records: list[dict], docname: str) -> nodes.table:
    table = nodes.table(classes=["scorecard"])
    group = nodes.tgroup(cols=len(HEADER))
    table += group
    group.extend(nodes.colspec(colwidth=1) for _ in HEADER)
    head, body = nodes.thead(), nodes.tbody()
    group += head
    group += body
    head += _row([nodes.Text(h) for h in HEADER])
    for r in records:
        status = r["status"] + (f": {r['known_discrepancy']}" if r["known_discrepancy"] else "")
        link = _figure_ref(r["figure"], docname) if r["figure"] else nodes.Text("")
        cells = [nodes.Text(r["statement"]), nodes.Text(r["paper"]), nodes.Text(rounded(r["ours"])),
                 nodes.Text(r["tolerance"]), nodes.Text(status), link]
        body += _row(cells, status_ok=r["status"] in ("pass", "does not reproduce"))
    return table


def _row(cells, status_ok: bool = True) -> nodes.row:
    row = nodes.row(classes=[] if status_ok else ["scorecard-fail"])
    for cell in cells:
        entry = nodes.entry()
        para = nodes.paragraph()
        para += cell
        entry += para
        row += entry
    return row


def setup(app):
    app.add_node(scorecard_placeholder)
    app.add_directive("claims-scorecard", ClaimsScorecard)
    app.add_post_transform(FillScorecard)
    app.connect("build-finished", copy_mathjax)
    app.connect("html-page-context", dedupe_inline_scripts)
    app.config.mathjax_path = "mathjax/tex-mml-chtml.js"
    return {"parallel_read_safe": True, "parallel_write_safe": True}
