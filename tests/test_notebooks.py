"""Every chapter notebook: its shape, a papermill run at `smoke`, and bad parameters.

The `book`-preset regression check is nbval over notebooks/ (see pyproject.toml).
"""

import json
import os
import re

import papermill as pm
import pytest

from conftest import NOTEBOOKS, ROOT

PARAMETER_NAMES = {"preset", "seed", "device", "overrides"}
ids = [nb.stem for nb in NOTEBOOKS]


def cells(path):
    return json.loads(path.read_text())["cells"]


def figure_labels(path):
    return {c["metadata"]["mystnb"]["figure"]["name"] for c in cells(path)
            if c["cell_type"] == "code" and "figure" in c["metadata"].get("mystnb", {})}


def test_there_are_chapters():
    assert NOTEBOOKS, "no notebooks found under notebooks/"


MAX_CELL_LINES = 30  # QuantEcon's pattern: a paragraph, a short compute cell, a captioned figure cell


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=ids)
def test_structure(notebook):
    code = [c for c in cells(notebook) if c["cell_type"] == "code"]
    tagged = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    names = {line.split("=")[0].strip() for line in "".join(tagged[0]["source"]).splitlines() if "=" in line}
    assert names == PARAMETER_NAMES, "the parameters cell holds only preset, seed, device, overrides"
    setup = "".join(code[code.index(tagged[0]) + 1]["source"])
    assert f'presets.start_chapter("{notebook.stem}"' in setup
    imports = [line for line in setup.splitlines() if line.startswith(("import ", "from "))]
    assert imports[0].startswith("from learning_dynamics"), "the library first: its thread policy applies before torch"
    assert any(c.get("outputs") for c in code), "committed with outputs (nbval compares them)"
    assert not any(o.get("output_type") == "error" for c in code for o in c["outputs"])
    assert figure_labels(notebook), "every chapter has numbered, captioned figures"
    assert "report(" in "".join(code[-1]["source"]), "the last code cell reports the claims"
    longest = max(len("".join(c["source"]).splitlines()) for c in code)
    assert longest <= MAX_CELL_LINES, f"a code cell of {longest} lines: split it (a compute cell, then a figure cell)"
    for c in code:  # a figure's caption sits on the cell that draws it
        assert ("figure" in c["metadata"].get("mystnb", {})) == ("plotting.show(" in "".join(c["source"])), \
            "".join(c["source"])[:80]
    text = "".join("".join(c["source"]) for c in cells(notebook) if c["cell_type"] == "markdown")
    assert "{cite:" in text and ":::{exercise}" in text and ":::{solution}" in text
    solutions = re.findall(r":::\{solution\}[^\n]*\n((?::[a-z]+:[^\n]*\n)*)", text)
    assert all(":class: dropdown" in options for options in solutions), "solutions are hidden by default"


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=ids)
def test_smoke_preset_runs_and_saves_every_figure(notebook, tmp_path, monkeypatch):
    monkeypatch.setenv("LD_FIGURE_DIR", str(tmp_path / "figures"))
    pm.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), parameters={"preset": "smoke"},
                        kernel_name="python3", cwd=str(ROOT), progress_bar=False)
    saved = {p.stem for p in (tmp_path / "figures").glob("*.png")}
    assert saved == figure_labels(notebook)
    assert {p.stem for p in (tmp_path / "figures").glob("*.svg")} == saved


BAD = [
    ({"preset": "huge"}, "preset must be one of"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"overrides": {"lr": -1.0}}, "lr must be"),
]


@pytest.mark.slow
@pytest.mark.parametrize("parameters,message", BAD, ids=["unknown-preset", "non-integer-seed", "negative-lr"])
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=ids)
def test_bad_parameters_fail_clearly(notebook, parameters, message, tmp_path):
    if "lr" in parameters.get("overrides", {}) and "lr" not in _fields(notebook):
        parameters = {"overrides": {next(f for f in _fields(notebook) if f.endswith("lr")): -1.0}}
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), parameters=parameters,
                            kernel_name="python3", cwd=str(ROOT), progress_bar=False)
    assert err.value.ename == "ValueError"
    assert message.split()[0] in err.value.evalue and "must be" in err.value.evalue


def _fields(notebook):
    from learning_dynamics import presets

    return presets.fields_of(notebook.stem)
