"""The command line: `list`, `run` (validated before any kernel, atomic output folder) and `check`."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import NOTEBOOKS, ROOT
from learning_dynamics import claims, cli, presets

CHAPTERS = [nb.stem for nb in NOTEBOOKS if nb.stem in presets.chapters()]


def ld(*args, timeout=900):
    """Run ``python -m learning_dynamics ARGS``; return the CompletedProcess."""
    env = dict(os.environ, LD_PROGRESS="0")
    return subprocess.run([sys.executable, "-m", "learning_dynamics", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def labels(notebook):
    return [c["metadata"]["mystnb"]["figure"]["name"] for c in json.loads(notebook.read_text())["cells"]
            if c["cell_type"] == "code" and "figure" in c["metadata"].get("mystnb", {})]


def snapshot(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_list_shows_every_chapter_figure_and_preset():
    result = ld("list")
    assert result.returncode == 0, result.stderr
    assert CHAPTERS
    for notebook in NOTEBOOKS:
        assert notebook.stem in result.stdout
        assert all(label in result.stdout for label in labels(notebook))
    header = result.stdout.splitlines()[0]
    assert header.split()[:4] == ["chapter", "smoke", "book", "paper"]
    for chapter in CHAPTERS:
        row = next(line for line in result.stdout.splitlines() if line.startswith(chapter + " "))
        times = row[:header.index("figure")]
        assert len(re.findall(r"\d+\.\d s|not measured", times)) == 3, row


def test_timings_are_read_per_chapter_and_preset(tmp_path):
    assert cli.read_timings(tmp_path) == {}
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "timings.json").write_text(json.dumps({"kpflow": {"smoke": 9.04, "book": 80}}))
    timings = cli.read_timings(tmp_path)
    assert [cli._seconds(timings, "kpflow", p) for p in presets.PRESET_NAMES] == ["9.0 s", "80.0 s", "not measured"]
    assert cli._seconds(timings, "spring_block", "smoke") == "not measured"


def test_figure_labels_and_glued_claims_of_committed_notebooks():
    for notebook in NOTEBOOKS:
        nb = cli.read_notebook(notebook)
        assert cli.figure_labels(nb) == labels(notebook)
        glued = claims.records_from_notebook(nb)
        assert glued["chapter"] == notebook.stem and claims.from_records(glued["claims"])


BAD_RUNS = [
    (["run", "nope"], "chapter must be one of 'feedback_principle'"),
    (["run", "feedback_principle", "--preset", "huge"], "invalid choice: 'huge' (choose from 'smoke', 'book', 'paper')"),
    (["run", "feedback_principle", "-p", "bogus=1"], "unknown parameter 'bogus' for chapter 'feedback_principle'; allowed: alpha"),
    (["run", "feedback_principle", "-p", "seed=1.5"], "seed must be an integer >= 0; got 1.5"),
    (["run", "feedback_principle", "-p", "device=tpu"], "device must be 'cpu', 'cuda' or 'cuda:N'; got 'tpu'"),
    (["run", "feedback_principle", "-p", "lr"], "-p expects NAME=VALUE; got 'lr'"),
    (["run", "feedback_principle", "--out", "README.md"], "--out must be a folder"),
    (["run", "feedback_principle", "--out", "lib"], "is not an earlier run (no claims.json)"),
]


@pytest.mark.parametrize("args,message", BAD_RUNS,
                         ids=["chapter", "preset", "unknown-parameter", "seed", "device", "no-equals", "out-file", "out-not-a-run"])
def test_bad_run_arguments_fail_before_any_kernel(args, message):
    result = ld(*args, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_seed_device_and_tuples_from_p(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    args = cli.build_parser().parse_args(["run", "kpflow", "-p", "seed=3", "-p", "device=cuda:1", "-p", "g_values=(0.1, 1.0)"])
    job = cli.validate_run(args)
    assert job["parameters"] == {"preset": "book", "seed": 3, "device": "cuda:1", "overrides": {"g_values": [0.1, 1.0]}}
    assert presets.resolve("kpflow", overrides=job["parameters"]["overrides"]).g_values == (0.1, 1.0)
    assert cli.parse_value("x1") == "x1" and cli.parse_value("1e-3") == 1e-3


def _earlier_run(folder):
    folder.mkdir(parents=True)
    (folder / "claims.json").write_text("{}")
    (folder / "fig-old.png").write_bytes(b"old")
    return snapshot(folder)


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_failed_run_leaves_earlier_folder_and_no_temp(tmp_path, monkeypatch, capsys, error):
    out = tmp_path / "run"
    before = _earlier_run(out)

    def fail(job, folder):
        (folder / "half.png").write_bytes(b"partial")
        raise error

    monkeypatch.setattr(cli, "execute", fail)
    assert cli.main(["run", "feedback_principle", "--preset", "smoke", "--out", str(out)]) == 1
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert "feedback_principle failed" in capsys.readouterr().err


def test_successful_run_replaces_earlier_folder(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _earlier_run(out)
    monkeypatch.setattr(cli, "execute", lambda job, folder: (folder / "claims.json").write_text("{}"))
    assert cli.main(["run", "feedback_principle", "--preset", "smoke", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["claims.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.slow
def test_run_writes_notebook_figures_claims_and_a_bad_rerun_keeps_them(tmp_path):
    out = tmp_path / "x"
    result = ld("run", "feedback_principle", "--preset", "smoke", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = {f"{label}.{ext}" for label in labels(ROOT / "notebooks" / "feedback_principle.ipynb") for ext in ("png", "svg")}
    assert {p.name for p in out.iterdir()} == expected | {"feedback_principle.ipynb", "claims.json"}
    glued = json.loads((out / "claims.json").read_text())
    assert glued["chapter"] == "feedback_principle"
    assert glued["claims"] and all(c.ok for c in claims.from_records(glued["claims"]))
    assert ld("check", tmp_path).returncode == 0

    before = snapshot(out)
    start = time.perf_counter()
    bad = ld("run", "feedback_principle", "--preset", "smoke", "--out", out, "-p", "lr=-1")
    assert time.perf_counter() - start < 5
    assert bad.returncode == 2 and "lr must be > 0.0; got -1" in bad.stderr and "Traceback" not in bad.stderr
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["x"], "no temporary folder is left behind"


def test_check_committed_notebooks_passes_and_lists_every_chapter():
    result = ld("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(chapter in result.stdout for chapter in CHAPTERS)
    assert f"in {len(CHAPTERS)} chapters" in result.stdout


@pytest.mark.parametrize("known_discrepancy,status", [("", "FAIL"), ("reason", "unexpectedly passes")])
def test_check_fails_on_a_doctored_claim(tmp_path, known_discrepancy, status):
    glued = claims.records_from_notebook(cli.read_notebook(ROOT / "notebooks" / "kpflow.ipynb"))
    record = glued["claims"][0]
    record.update(passed=bool(known_discrepancy), known_discrepancy=known_discrepancy, status=status)
    (tmp_path / "kpflow-smoke").mkdir()
    (tmp_path / "kpflow-smoke" / "claims.json").write_text(json.dumps(glued))
    result = ld("check", tmp_path)
    assert result.returncode == 1 and status in result.stdout and "kpflow (kpflow-smoke)" in result.stdout


def test_check_rejects_missing_or_inconsistent_records(tmp_path):
    assert "no claims.json under" in ld("check", tmp_path).stderr
    good = claims.to_records([claims.below("err", 0.1, 1.0)])
    (tmp_path / "claims.json").write_text(json.dumps({"chapter": "demo", "claims": [{**good[0], "status": "FAIL"}]}))
    result = ld("check", tmp_path)
    assert result.returncode == 2 and "recorded status 'FAIL'" in result.stderr


def test_cuda_without_a_gpu_fails_before_any_kernel(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = cli.build_parser().parse_args(["run", "kpflow", "--device", "cuda"])
    with pytest.raises(cli.UsageError, match="device must be 'cpu' on this machine"):
        cli.validate_run(args)


def test_timings_without_a_cache_says_so(tmp_path, capsys):
    assert cli.main(["timings", str(tmp_path / "absent")]) == 0
    assert "no execution cache" in capsys.readouterr().out
