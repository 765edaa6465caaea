"""Every chapter's `paper` preset follows the paper's table (``PAPER`` in its presets module), or says why not.

Each entry of a chapter's ``paper_source`` is the value the paper (or the
authors' code) gives a preset field. The `paper` preset must take that value,
unless the entry carries a note ``"differs: <why>"``; such a note must then be
true (the values really differ), so that a stale excuse fails like a passing
xfail. :func:`presets.paper_table` shows one row per entry.
"""

import json

import pytest

from conftest import NOTEBOOKS
from learning_dynamics import presets

CHAPTERS = presets.chapters()


def paper_values(chapter):
    return {row["name"]: row["values"]["paper"] for row in presets.describe(chapter)}


def table_rows(text):
    """The body rows of the Markdown table in ``text`` (header and rule left out)."""
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    return [row for row in rows[1:] if not row.startswith("| ---")]


def test_every_chapter_registers_the_papers_settings():
    assert CHAPTERS
    for chapter in CHAPTERS:
        entries, note = presets._PAPER[chapter]
        assert entries or note, f"{chapter}: register(..., paper_source=PAPER) (or a paper_note saying why it is empty)"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_each_chapter_shows_its_paper_table_after_the_setup(notebook):
    """Right after the setup cell: a short markdown cell, then the table, committed with today's rendering."""
    cells = json.loads(notebook.read_text())["cells"]
    setup = next(i for i, c in enumerate(cells) if "presets.start_chapter(" in "".join(c["source"]))
    text, code = cells[setup + 1], cells[setup + 2]
    assert text["cell_type"] == "markdown" and "".join(text["source"]).startswith("The paper's settings against this book's")
    assert code["cell_type"] == "code"
    assert f'presets.paper_table("{notebook.stem}")' in "".join(code["source"])
    shown = [o for o in code["outputs"] if "text/markdown" in o.get("data", {})]
    assert len(shown) == 1, "the table renders as Markdown"
    assert "".join(shown[0]["data"]["text/markdown"]) == presets.paper_table(notebook.stem), \
        "the committed table is stale: re-execute the notebook"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_paper_preset_takes_the_papers_values_or_documents_why_not(chapter):
    values = paper_values(chapter)
    for name, entry in presets.paper_source(chapter).items():
        assert entry["source"].strip(), f"{chapter}.{name}: no source given"
        same = presets.same_value(entry["value"], values[name])
        if entry["note"]:
            assert entry["note"].startswith(presets.DIFFERS) and entry["note"][len(presets.DIFFERS):].strip()
            assert not same, f"{chapter}.{name}: documented as differing, but the paper preset now takes {values[name]!r}"
        else:
            assert same, (f"{chapter}.{name}: the paper gives {entry['value']!r} ({entry['source']}), "
                          f"the paper preset {values[name]!r}")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_the_paper_preset_resolves(chapter):
    """The `paper` preset, with the paper's values, passes every field's check (memory aside: it is sized for a
    large machine)."""
    cls, sizes = presets._REGISTRY[chapter]
    cfg = cls(preset="paper", **sizes["paper"])
    for name, entry in presets.paper_source(chapter).items():
        if not entry["note"]:
            assert presets.same_value(getattr(cfg, name), entry["value"])


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_paper_table_has_one_row_per_entry(chapter):
    source = presets.paper_source(chapter)
    rows = table_rows(presets.paper_table(chapter))
    assert len(rows) == len(source)
    for row, (name, entry) in zip(rows, source.items()):
        cells = [c.strip().replace("\x00", "\\|") for c in row.strip().strip("|").replace("\\|", "\x00").split("|")]
        assert len(cells) == 6, row
        assert cells[0] == f"`{name}`"
        assert cells[1].startswith(presets._cell(entry["value"]))
        assert cells[4] == presets._cell(entry["note"])
        values = presets.describe(chapter)
        book = next(r["values"]["book"] for r in values if r["name"] == name)
        assert cells[3] == presets._cell(book)


def test_paper_table_columns():
    text = presets.paper_table("spring_block")
    header = text.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "parameter", "paper (source)", "`paper` preset", "`book` preset", "note", "help"]
    differing = [row for row in table_rows(text) if "| differs: " in row]
    assert len(differing) == sum(bool(e["note"]) for e in presets.paper_source("spring_block").values()) > 0


def test_register_refuses_a_bad_paper_source():
    cls = presets._REGISTRY["feedback_principle"][0]
    kwargs = dict(smoke={}, book={}, paper={})
    with pytest.raises(ValueError, match="not one of its preset fields"):
        presets.register("_test_chapter", cls, **kwargs, paper_source={"no_such_field": (1, "Fig. 1")})
    with pytest.raises(ValueError, match=r"\(value, source\)"):
        presets.register("_test_chapter", cls, **kwargs, paper_source={"alpha": 0.6})
    with pytest.raises(ValueError, match="differs: "):
        presets.register("_test_chapter", cls, **kwargs, paper_source={"alpha": (0.6, "Fig. 1", "because")})
    assert "_test_chapter" not in presets._REGISTRY and "_test_chapter" not in presets._PAPER


def test_same_value():
    assert presets.same_value((0.1, 1), [0.1, 1.0])
    assert presets.same_value(1e-3, 0.001)
    assert not presets.same_value((0.1,), 0.1)
    assert not presets.same_value("gru", "rnn")
    assert not presets.same_value(700, 1000)


def _paper_times():
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("paper_times", ROOT / "bench" / "paper_times.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_the_paper_time_slice_decides_on_every_training_length(chapter):
    """bench/paper_times.py cuts a chapter's training lengths to estimate its paper run: every field named like a
    step count is either cut (SCALED) or kept with a reason (KEPT), so a new one cannot be missed silently."""
    times = _paper_times()
    scaled, kept = set(times.SCALED[chapter]), set(times.KEPT.get(chapter, {}))
    assert not scaled & kept
    assert set(times.training_fields(chapter)) == scaled | kept
    cut = times.slice_overrides(chapter, times.FRACTION[chapter])
    presets.resolve(chapter, "paper", overrides=cut)  # a slice is a valid run
    full = presets.resolve(chapter, "paper")
    assert all(1 <= cut[name] < getattr(full, name) for name in scaled)
