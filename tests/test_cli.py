"""The command line: `list`, `run` (validated before any kernel, atomic output folder, failed runs kept in
OUT.failed, one run per folder, live progress) and `check` (claims.json or executed notebooks, schema)."""

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
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
        assert len(re.findall(r"\d+\.\d s|not measured", times)) >= 2, row
        assert re.search(r"not measured|(~|>= )?\d+(\.\d)? (s|min|h) \((measured|extrapolated|at least)\)", times), row


def test_timings_are_read_per_chapter_and_preset(tmp_path):
    assert cli.read_timings(tmp_path) == {}
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "timings.json").write_text(json.dumps({"kpflow": {"smoke": 9.04, "book": 80}}))
    timings = cli.read_timings(tmp_path)
    assert [cli._seconds(timings, "kpflow", p) for p in presets.PRESET_NAMES] == ["9.0 s", "80.0 s", "not measured"]
    assert cli._seconds(timings, "spring_block", "smoke") == "not measured"


def test_paper_times_say_how_they_were_found(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "paper_times.json").write_text(json.dumps({
        "neural_race": {"how": "measured", "seconds": 57.7}, "spring_block": {"how": "extrapolated", "seconds": 7260},
        "kpflow": {"how": "at least", "seconds": 1.2e5}, "odd": {"how": "guessed", "seconds": 3}}))
    paper = cli.read_timings(tmp_path, cli.PAPER_TIMES)
    shown = {c: cli._paper_seconds(paper.get(c)) for c in ("neural_race", "spring_block", "kpflow", "odd", "none")}
    assert shown == {"neural_race": "58 s (measured)", "spring_block": "~2.0 h (extrapolated)",
                     "kpflow": ">= 33.3 h (at least)", "odd": "not measured", "none": "not measured"}
    assert [cli.duration(s) for s in (119, 120, 7199, 7200)] == ["119 s", "2.0 min", "120.0 min", "2.0 h"]


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
    (["run", "feedback_principle", "-p", "seed=1.5"], "seed must be an integer in [0, 4294967295]; got 1.5"),
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

    def fail(job, folder, display=None):
        (folder / "half.png").write_bytes(b"partial")
        raise error

    monkeypatch.setattr(cli, "execute", fail)
    assert cli.main(["run", "feedback_principle", "--preset", "smoke", "--out", str(out)]) == 1
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert "feedback_principle failed" in capsys.readouterr().err


def test_successful_run_replaces_earlier_folder(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _earlier_run(out)
    monkeypatch.setattr(cli, "execute", lambda job, folder, display=None: (folder / "claims.json").write_text("{}"))
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
    assert "is not a folder, a claims.json or an executed notebook" in ld("check", tmp_path / "absent").stderr
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


# ---- failed runs, one run per folder, live progress (issue 16) ------------------------------
# A tiny fake chapter stands in for a real one: the CLI validates the parameters against the
# feedback_principle preset, then executes this notebook with papermill like any chapter.

RUNNER = """
import sys
from pathlib import Path

from learning_dynamics import cli

cli.chapter_notebooks = lambda root=cli.ROOT: {"feedback_principle": Path(sys.argv[1])}
if __name__ == "__main__":  # a LocalCluster's worker processes import this file again
    sys.exit(cli.main(sys.argv[2:]))
"""


def fake_chapter(path, body="", half=0.01, figure=True):
    """A chapter notebook: parameters, a figure saved like plotting.show does, ``body``, then a claims cell.

    With papermill's injected parameters, that is six code cells, ``body`` the fifth.
    """
    import nbformat

    cell = nbformat.v4.new_code_cell
    cells = [cell('preset = "book"\nseed = 0\ndevice = "cpu"\noverrides = {}', metadata={"tags": ["parameters"]}),
             cell("import os, pathlib, time\nfrom learning_dynamics import claims")]
    if figure:
        cells.append(cell("for ext in ('png', 'svg'):\n"
                          "    pathlib.Path(os.environ['LD_FIGURE_DIR'], 'fig-fake.' + ext).write_text('fake')",
                          metadata={"mystnb": {"figure": {"name": "fig-fake", "caption": "A fake figure."}}}))
    cells += [cell(textwrap.dedent(body) or "pass"),
              cell(f'claims.report([claims.below("err", 0.1, 1.0), claims.below("half time", float("{half}"), 0.05)], '
                   '"feedback_principle")')]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def fake_run(tmp_path, notebook, *args, wait=True, env=None, **kwargs):
    """``python -m learning_dynamics run feedback_principle ARGS`` on the fake chapter (a subprocess)."""
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    command = [sys.executable, str(runner), str(notebook), "run", "feedback_principle", "--preset", "smoke", *map(str, args)]
    env = dict(os.environ, LD_PROGRESS="0") if env is None else env
    if not wait:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, **kwargs)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, **kwargs)


def errors(result):
    return [line for line in result.stderr.splitlines() if "[IPKernelApp]" not in line]


def error_line(result) -> str:
    """The run's one error line (a kernel or library warning on a busy machine is not one)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def contents(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_failing_claims_finish_the_run_into_out_failed(tmp_path):
    out, failed = tmp_path / "runs" / "fp", tmp_path / "runs" / "fp.failed"
    good = fake_run(tmp_path, fake_chapter(tmp_path / "good.ipynb"), "--out", out)
    assert good.returncode == 0, good.stderr
    assert sorted(p.name for p in out.iterdir()) == ["claims.json", "feedback_principle.ipynb", "fig-fake.png", "fig-fake.svg"]
    before = contents(out)

    bad = fake_run(tmp_path, fake_chapter(tmp_path / "bad.ipynb", half=float("nan")), "--out", out)
    assert bad.returncode == 1
    line = error_line(bad)
    assert line.startswith("error: feedback_principle failed: 1 of 2 claims did not pass: 'half time' (not reached); "
                           f"notebook, figures and claims.json in {failed}; {out} was left as it was"), line
    assert contents(out) == before, "out keeps the last run whose claims all passed"
    assert sorted(p.name for p in failed.iterdir()) == ["claims.json", "error.txt", "feedback_principle.ipynb",
                                                        "fig-fake.png", "fig-fake.svg"]
    recorded = json.loads((failed / "claims.json").read_text())
    assert [c["status"] for c in recorded["claims"]] == ["pass", "not reached"] and recorded["claims"][1]["ours"] is None
    assert "not reached" in (failed / "error.txt").read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["fp", "fp.failed"], "no temporary folder or lock is left"

    check = ld("check", out.parent)
    assert check.returncode == 1 and "feedback_principle (fp.failed)" in check.stdout
    assert "not reached in this run" in check.stdout and "not reached: 1, pass: 3" in check.stdout


def test_a_newer_failed_run_replaces_the_older_and_a_passing_run_removes_it(tmp_path):
    out, failed = tmp_path / "fp", tmp_path / "fp.failed"
    failed.mkdir()
    (failed / "error.txt").write_text("an older failed run\n")
    (failed / "old.png").write_text("old")
    bad = fake_run(tmp_path, fake_chapter(tmp_path / "bad.ipynb", half=float("inf")), "--out", out)
    assert bad.returncode == 1 and not (failed / "old.png").exists() and (failed / "claims.json").exists()
    assert not out.exists() and "nothing was written to" in bad.stderr
    fixed = fake_run(tmp_path, fake_chapter(tmp_path / "good.ipynb"), "--out", out)
    assert fixed.returncode == 0 and not failed.exists()
    assert fixed.stdout.strip().endswith(f"in {out} (removed {failed}, an earlier failed run)")


def test_an_error_before_the_claims_keeps_the_partial_notebook(tmp_path, capsys):
    out = tmp_path / "fp"
    before = _earlier_run(out)
    notebook = fake_chapter(tmp_path / "nb.ipynb", body="raise ValueError('no such skill')")
    result = fake_run(tmp_path, notebook, "--out", out)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = error_line(result)
    assert "cell [5] raised ValueError: no such skill; the partial notebook in" in line and "was left as it was" in line
    assert snapshot(out) == before
    failed = tmp_path / "fp.failed"
    assert sorted(p.name for p in failed.iterdir()) == ["error.txt", "feedback_principle.ipynb", "fig-fake.png", "fig-fake.svg"]
    assert cli.main(["check", str(failed)]) == 2
    err = capsys.readouterr().err
    assert "skipped" in err and "no claims.json under" in err


def test_a_failed_folder_that_is_not_a_run_is_refused(tmp_path):
    (tmp_path / "fp.failed").mkdir()
    (tmp_path / "fp.failed" / "mine.txt").write_text("keep")
    args = cli.build_parser().parse_args(["run", "feedback_principle", "--out", str(tmp_path / "fp")])
    with pytest.raises(cli.UsageError, match="fp.failed exists and is not a failed run"):
        cli.validate_run(args)


@pytest.mark.slow
def test_not_reached_claims_of_a_real_chapter_at_smoke(tmp_path):
    """The issue's reproduction at smoke: lr=0.002 reaches t = 4.5, before every half time (~12 s)."""
    out = tmp_path / "fp"
    result = ld("run", "feedback_principle", "--preset", "smoke", "-p", "lr=0.002", "--out", out, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "3 of 31 claims did not pass: 'sigmoid = SGD half times" in result.stderr and "(not reached)" in result.stderr
    assert not out.exists()
    failed = tmp_path / "fp.failed"
    recorded = json.loads((failed / "claims.json").read_text())["claims"]
    assert sum(c["status"] == "not reached" for c in recorded) == 3 and sum(c["status"] == "pass" for c in recorded) == 28
    expected = {f"{label}.{ext}" for label in labels(ROOT / "notebooks" / "feedback_principle.ipynb") for ext in ("png", "svg")}
    assert expected <= {p.name for p in failed.iterdir()}


def _wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_one_run_per_folder(tmp_path):
    out = tmp_path / "fp"
    started = tmp_path / "started"
    slow = fake_chapter(tmp_path / "slow.ipynb", body=f"""
        pathlib.Path({str(started)!r}).touch()
        time.sleep(3)
        """)
    first = fake_run(tmp_path, slow, "--out", out, wait=False)
    try:
        _wait_for(started.exists)
        second = fake_run(tmp_path, fake_chapter(tmp_path / "fast.ipynb"), "--out", out)
        assert second.returncode == 2
        assert second.stderr.strip() == (f"error: another run (pid {first.pid} on {socket.gethostname()}) is writing to "
                                         f"{out}; wait for it to finish or choose another --out (lock: {out}.lock)")
        assert first.wait(timeout=60) == 0, first.stderr.read()
    finally:
        first.kill()
        first.wait()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("fp")) == ["fp"]
    assert fake_run(tmp_path, tmp_path / "fast.ipynb", "--out", out).returncode == 0, "the lock is released"


def test_a_killed_runs_temp_folder_is_removed_by_the_next_run(tmp_path):
    out = tmp_path / "fp"
    started = tmp_path / "started"
    stuck = fake_chapter(tmp_path / "stuck.ipynb", body=f"""
        pathlib.Path({str(started)!r}).touch()
        time.sleep(60)
        """)
    run = fake_run(tmp_path, stuck, "--out", out, wait=False)
    _wait_for(started.exists)
    os.killpg(run.pid, signal.SIGKILL)  # the run, its kernel and all
    run.wait()
    [temp] = [p for p in tmp_path.iterdir() if p.name.startswith("fp.tmp-")]
    assert temp.name.startswith(f"fp.tmp-{run.pid}-") and (tmp_path / "fp.lock").exists()

    result = fake_run(tmp_path, fake_chapter(tmp_path / "fast.ipynb"), "--out", out)
    assert result.returncode == 0, result.stderr
    assert f"note: removed {temp}, left by a run that died" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("fp")) == ["fp"]


def test_stale_folders_of_live_runs_are_kept_and_an_interrupted_swap_is_undone(tmp_path):
    out = tmp_path / "fp"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = tmp_path / f"fp.tmp-{os.getpid()}-abc"
    (tmp_path / f"fp.tmp-{dead.pid}-abc").mkdir()
    (tmp_path / "fp.tmp-older-format").mkdir()  # no owner pid: not ours to remove
    live.mkdir()
    aside = tmp_path / f"fp.old-{dead.pid}-xyz"
    (aside / "fp").mkdir(parents=True)
    (aside / "fp" / "claims.json").write_text("{}")  # died between the two moves of replace_folder
    (tmp_path / f"fp.failed.old-{dead.pid}-xyz").mkdir()
    removed = cli.remove_stale(out)
    assert sorted(p.name for p in removed) == sorted([f"fp.tmp-{dead.pid}-abc", f"fp.old-{dead.pid}-xyz",
                                                      f"fp.failed.old-{dead.pid}-xyz"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["fp", "fp.tmp-older-format", live.name])
    assert (out / "claims.json").read_text() == "{}", "the earlier result is put back"
    assert cli.pid_alive(os.getpid()) and not cli.pid_alive(dead.pid) and not cli.pid_alive(0)


def test_unwritable_out_is_one_clear_line(tmp_path):
    result = ld("run", "feedback_principle", "--preset", "smoke", "--out", "/proc/x/run", timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: cannot write to /proc/x/run: ") and len(result.stderr.splitlines()) == 1


CHECK_ERRORS = [
    (lambda r: {**r, "passed": "yes"}, "claims[0].passed must be true or false; got str 'yes'"),
    (lambda r: {**r, "status": "great"}, "claims[0].status must be one of 'pass', 'FAIL'"),
    (lambda r: {k: v for k, v in r.items() if k != "tolerance"}, "claims[0] ('err') lacks field tolerance"),
    (lambda r: {**r, "ours": "small"}, "claims[0].ours must be a number"),
    (None, "field 'claims' is empty"),
]


@pytest.mark.parametrize("change,message", CHECK_ERRORS, ids=["passed", "status", "missing", "ours", "empty"])
def test_check_validates_the_schema(tmp_path, capsys, change, message):
    record = claims.to_records([claims.below("err", 0.1, 1.0)])[0]
    path = tmp_path / "fp" / "claims.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"chapter": "demo", "claims": [change(record)] if change else []}))
    for target in (tmp_path, path):
        assert cli.main(["check", str(target)]) == 2
        err = capsys.readouterr().err
        assert err == f"error: {path}: {message}" + err[len(f"error: {path}: {message}"):] and err.count("\n") == 1, err


def test_check_reads_executed_notebooks(tmp_path, capsys):
    committed = ROOT / "notebooks" / "kpflow.ipynb"
    assert cli.main(["check", str(committed)]) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith("kpflow ")
    (tmp_path / "run").mkdir()
    shutil.copy(committed, tmp_path / "run" / "kpflow.ipynb")
    (tmp_path / "run" / ".ipynb_checkpoints").mkdir()
    shutil.copy(committed, tmp_path / "run" / ".ipynb_checkpoints" / "kpflow-checkpoint.ipynb")
    (tmp_path / "fp.tmp-1-x").mkdir()  # a run in flight is not a result
    (tmp_path / "fp.tmp-1-x" / "claims.json").write_text("{}")
    assert cli.main(["check", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "kpflow (run/kpflow.ipynb)" in out and "in 1 chapters" in out
    (tmp_path / "bad.ipynb").write_text(json.dumps({"cells": [], "metadata": {}}))
    assert cli.main(["check", str(tmp_path / "bad.ipynb")]) == 2
    assert "glued no 'claims' record" in capsys.readouterr().err


def test_live_progress_and_quiet(tmp_path):
    out = tmp_path / "fp"
    seen = tmp_path / "seen.jsonl"
    notebook = fake_chapter(tmp_path / "nb.ipynb", body=f"""
        from learning_dynamics import train
        for _ in train.progress(range(30), desc="fake loop"):
            time.sleep(0.02)
        source = os.environ.get("LD_PROGRESS_FILE")
        pathlib.Path({str(seen)!r}).write_text(pathlib.Path(source).read_text() if source else "no file")
        """)
    env = {k: v for k, v in os.environ.items() if k != "LD_PROGRESS"}
    loud = fake_run(tmp_path, notebook, "--out", out, env=env)
    assert loud.returncode == 0, loud.stderr
    shown = errors(loud)
    assert shown[0] == "feedback_principle  0:00  starting the kernel"
    assert [re.search(r"cell (\d+/\d+)", line)[1] for line in shown[1:]] == [f"{k}/6" for k in range(1, 7)]
    records = [json.loads(line) for line in seen.read_text().splitlines()]
    assert records[0] == {"desc": "fake loop", "n": 0, "total": 30, "done": False}
    assert records[-1] == {"desc": "fake loop", "n": 30, "total": 30, "done": True} and len(records) <= 6
    executed = json.loads((out / "feedback_principle.ipynb").read_text())
    assert not [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("name") == "stderr"], \
        "the kernel's bars stay out of the notebook"
    assert sorted(p.name for p in out.iterdir()) == ["claims.json", "feedback_principle.ipynb", "fig-fake.png", "fig-fake.svg"]

    light = fake_chapter(tmp_path / "light.ipynb", body=f"""
        pathlib.Path({str(seen)!r}).write_text(os.environ.get("LD_PROGRESS_FILE", "no file"))
        """)
    quiet = fake_run(tmp_path, light, "--out", out, "--quiet", env=env)
    assert quiet.returncode == 0 and errors(quiet) == []
    assert seen.read_text() == "no file", "no progress file when quiet"


def test_progress_display_on_a_terminal(tmp_path, monkeypatch):
    from learning_dynamics import train

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    path = tmp_path / "progress"
    monkeypatch.setenv("LD_PROGRESS_FILE", str(path))
    stream = Terminal()
    display = cli.LiveProgress("demo", path, stream=stream, interval=0.01)
    with display:
        display.cell(2, 7)
        for i in train.progress(range(100), desc="GD steps"):
            if i == 60:
                time.sleep(0.3)  # more than 0.25 s: the loop reports 61/100 ...
            if i == 61:
                time.sleep(0.2)  # ... and the display reads it before the loop ends
        loop = train.progress(range(10), desc="second")
        next(iter(loop))
        _wait_for(lambda: display.bar and display.bar["desc"] == "second", timeout=5)
        assert display.line().startswith("demo  0:00  cell 2/7 (0:00)  second: ")
    text = stream.getvalue()
    assert "\rdemo  0:00  cell 2/7 (0:00)  GD steps: 61/100 (61%)\x1b[K" in text
    assert text.endswith("\r\x1b[K"), "the line is cleared at the end"


def test_progress_writes_few_lines_and_nothing_without_the_file(tmp_path, monkeypatch):
    from learning_dynamics import train

    monkeypatch.delenv("LD_PROGRESS_FILE", raising=False)
    assert hasattr(train.progress(range(3)), "set_postfix"), "a plain tqdm bar without the file"
    path = tmp_path / "progress"
    monkeypatch.setenv("LD_PROGRESS_FILE", str(path))
    start = time.perf_counter()
    assert sum(train.progress(range(200_000))) == sum(range(200_000))
    elapsed = time.perf_counter() - start
    lines = path.read_text().splitlines()
    assert 2 <= len(lines) <= 2 + 4 * elapsed + 1, "at most four reports a second"
    path.unlink()
    list(train.progress(range(3), desc="resumed", initial=5))
    assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == [5, 8]
    monkeypatch.setenv("LD_PROGRESS_FILE", str(tmp_path / "absent" / "progress"))
    assert list(train.progress(range(3))) == [0, 1, 2], "an unwritable file never stops a computation"


def test_params_lists_every_field_with_its_range_and_preset_values():
    result = ld("params", "neural_race")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == ["parameter", "allowed", "smoke", "book", "paper"]
    for d in presets.describe("neural_race"):
        assert any(line.startswith(d["name"] + " ") for line in lines), d["name"]
    assert "an integer in [0, 4294967295]" in result.stdout
    bad = ld("params", "nope")
    assert bad.returncode == 2 and "chapter must be one of" in bad.stderr


# ---- --scheduler and run --all (issue 17) ---------------------------------------------------


def _no_kernel(*args, **kwargs):
    raise AssertionError("a kernel was started")


@pytest.mark.parametrize("args,message", [
    (["feedback_principle", "--scheduler", "local:0"], "got 'local:0'"),
    (["feedback_principle", "--scheduler", "tcp://host"], "got 'tcp://host'"),
    (["kpflow", "-p", "scheduler=local:x"], "got 'local:x'"),
    (["--all", "--scheduler", "8786"], "got 8786"),
], ids=["local-0", "no-port", "via-p", "all"])
def test_a_bad_scheduler_is_one_line_before_any_kernel(args, message, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "execute", _no_kernel)
    start = time.perf_counter()
    assert cli.main(["run", *args, "--preset", "smoke", "--out", str(tmp_path / "out")]) == 2
    assert time.perf_counter() - start < 2
    err = capsys.readouterr().err
    assert err == ("error: scheduler must be None, 'local:N' or a scheduler address such as tcp://host:8786; "
                   f"{message}\n")
    assert list(tmp_path.iterdir()) == []


def test_scheduler_sets_the_presets_parameter():
    parse = cli.build_parser().parse_args
    for args, expected in [(["--scheduler", "local:4"], "local:4"), (["--scheduler", " tcp://10.0.0.2:8786 "], "tcp://10.0.0.2:8786"),
                           (["-p", "scheduler=local:2"], "local:2"), (["--scheduler", "None"], None),
                           (["--scheduler", "local:2", "-p", "scheduler=local:2"], "local:2")]:
        job = cli.validate_run(parse(["run", "kpflow", *args]))
        assert job["parameters"]["overrides"] == {"scheduler": expected}, args
        assert presets.resolve("kpflow", overrides=job["parameters"]["overrides"]).scheduler == expected
    assert cli.validate_run(parse(["run", "kpflow"]))["parameters"]["overrides"] == {}, "the preset's own by default"
    with pytest.raises(cli.UsageError, match="--scheduler local:2 and -p scheduler=local:3 differ; give one"):
        cli.validate_run(parse(["run", "kpflow", "--scheduler", "local:2", "-p", "scheduler=local:3"]))


def test_run_needs_a_chapter_or_all_not_both():
    none = ld("run", timeout=60)
    assert none.returncode == 2 and none.stderr == "error: run needs a CHAPTER (see `list`) or --all\n"
    both = ld("run", "kpflow", "--all", timeout=60)
    assert both.returncode == 2 and "run takes a CHAPTER or --all, not both" in both.stderr


THREE = ["feedback_principle", "kpflow", "spring_block"]


def summary_rows(stdout):
    """The summary table of ``run --all``: chapter -> its row, in order; and the last line (the tally)."""
    lines = stdout.splitlines()
    head = max(i for i, line in enumerate(lines) if line.split()[:4] == ["chapter", "status", "wall", "detail"])
    assert set(lines[head + 1]) <= {"-", " "} and lines[-2] == ""
    return {line.split()[0]: line for line in lines[head + 2:-2]}, lines[-1]


def _fake_execute(behaviour):
    """``execute`` without a kernel: per chapter, pass, fail two of three claims, or stop in a cell."""
    calls = []

    def execute(job, folder, display=None):
        chapter = job["chapter"]
        calls.append((chapter, job["parameters"]))
        what = behaviour.get(chapter, "pass")
        (folder / f"{chapter}.ipynb").write_text("{}")
        if what == "pass":
            glued = {"chapter": chapter, "claims": claims.to_records([claims.below("err", 0.1, 1.0)])}
            (folder / "claims.json").write_text(json.dumps(glued))
            return
        if what == "claims":
            recorded = [claims.below("a", 0.1, 1.0), claims.below("b", 2.0, 1.0), claims.below("c", 3.0, 1.0)]
            glued = {"chapter": chapter, "claims": claims.to_records(recorded)}
            (folder / "claims.json").write_text(json.dumps(glued))
            raise cli.ClaimsFailed(glued, [c for c in recorded if not c.ok], len(recorded))
        if what == "interrupt":
            raise KeyboardInterrupt()
        raise RuntimeError("no such skill")

    return execute, calls


def test_run_all_runs_every_chapter_in_turn_and_summarises(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "chapter_notebooks", lambda root=cli.ROOT: {c: tmp_path / f"{c}.ipynb" for c in THREE})
    execute, calls = _fake_execute({"kpflow": "claims", "spring_block": "error"})
    monkeypatch.setattr(cli, "execute", execute)
    out = tmp_path / "runs"
    assert cli.main(["run", "--all", "--preset", "smoke", "--seed", "3", "--out", str(out), "-q"]) == 1
    assert [c for c, _ in calls] == THREE, "in order, each once"
    assert all(p == {"preset": "smoke", "seed": 3, "device": "cpu", "overrides": {}} for _, p in calls)
    assert sorted(p.name for p in out.iterdir()) == ["feedback_principle-smoke", "kpflow-smoke.failed",
                                                     "spring_block-smoke.failed"], "no temporary folder or lock left"
    assert (out / "feedback_principle-smoke" / "claims.json").exists()
    assert "2 of 3 claims did not pass" in (out / "kpflow-smoke.failed" / "error.txt").read_text()
    captured = capsys.readouterr()
    assert "[2/3] kpflow (smoke) -> " in captured.err and "error: kpflow failed: 2 of 3 claims" in captured.err
    rows, tally = summary_rows(captured.out)
    assert list(rows) == THREE
    assert re.match(r"feedback_principle  passed\s+\d+\.\d s  1 claims in .*feedback_principle-smoke$", rows["feedback_principle"])
    assert re.match(r"kpflow\s+failed claims\s+\d+\.\d s  2 of 3 claims did not pass; notebook, figures and claims.json in",
                    rows["kpflow"])
    assert re.match(r"spring_block\s+error\s+\d+\.\d s  RuntimeError: no such skill; the partial notebook in", rows["spring_block"])
    assert re.fullmatch(r"3 chapters at smoke in \d+\.\d s: passed: 1, failed claims: 1, error: 1", tally)

    execute, calls = _fake_execute({})  # all pass now: exit 0, and the failed runs are superseded
    monkeypatch.setattr(cli, "execute", execute)
    assert cli.main(["run", "--all", "--preset", "smoke", "--out", str(out), "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{c}-smoke" for c in THREE]
    assert capsys.readouterr().out.splitlines()[-1].endswith(": passed: 3")


def test_run_all_checks_every_chapter_first_and_goes_on_past_a_locked_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "chapter_notebooks", lambda root=cli.ROOT: {c: tmp_path / f"{c}.ipynb" for c in THREE})
    monkeypatch.setattr(cli, "execute", _no_kernel)
    out = tmp_path / "runs"
    assert cli.main(["run", "--all", "--preset", "smoke", "-p", "alpha=0.5", "--out", str(out)]) == 2
    assert "unknown parameter 'alpha' for chapter 'kpflow'" in capsys.readouterr().err and not out.exists()

    execute, calls = _fake_execute({"spring_block": "interrupt"})
    monkeypatch.setattr(cli, "execute", execute)
    out.mkdir()
    held = cli.acquire_lock(out / "feedback_principle-smoke")  # another run is writing there
    try:
        assert cli.main(["run", "--all", "--preset", "smoke", "--out", str(out), "-q"]) == 1
    finally:
        cli.release_lock(held, out / "feedback_principle-smoke")
    assert [c for c, _ in calls] == ["kpflow", "spring_block"]
    rows, tally = summary_rows(capsys.readouterr().out)
    assert re.match(r"feedback_principle\s+error\s+0\.0 s  another run \(pid \d+ on ", rows["feedback_principle"])
    assert re.match(r"kpflow\s+passed", rows["kpflow"])
    assert re.match(r"spring_block\s+error\s+\d+\.\d s  interrupted$", rows["spring_block"])
    assert re.fullmatch(r"3 chapters at smoke in \d+\.\d s: passed: 1, error: 2", tally)


def test_run_all_with_real_kernels(tmp_path):
    """Two fake chapters through papermill: one passes (and sees the scheduler), one fails a claim."""
    seen = tmp_path / "seen.json"
    good = fake_chapter(tmp_path / "good.ipynb", body=f"pathlib.Path({str(seen)!r}).write_text(__import__('json').dumps(overrides))")
    bad = fake_chapter(tmp_path / "bad.ipynb", half=float("nan"))
    runner = tmp_path / "runner_all.py"
    runner.write_text(RUNNER.replace('{"feedback_principle": Path(sys.argv[1])}',
                                     '{k: Path(v) for k, v in __import__("json").loads(sys.argv[1]).items()}'))
    chapters = json.dumps({"feedback_principle": str(good), "kpflow": str(bad)})
    out = tmp_path / "runs"
    result = subprocess.run([sys.executable, str(runner), chapters, "run", "--all", "--preset", "smoke", "--scheduler",
                             "local:2", "--out", str(out)], cwd=ROOT, env=dict(os.environ, LD_PROGRESS="0"),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 1, result.stderr
    seen = json.loads(seen.read_text())  # the chapters ran at once, on the one LocalCluster that run --all started
    assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", seen.pop("scheduler")), seen
    assert seen == {"cache": str(out / "feedback_principle-smoke.cache")}
    assert "2 chapters at once on the dask cluster at tcp://127.0.0.1:" in result.stderr
    rows, tally = summary_rows(result.stdout)
    assert re.match(r"feedback_principle\s+passed\s+\d+\.\d s  2 claims in ", rows["feedback_principle"])
    assert re.match(r"kpflow\s+failed claims\s+\d+\.\d s  1 of 2 claims did not pass; ", rows["kpflow"])
    assert tally.endswith(": passed: 1, failed claims: 1")
    assert sorted(p.name for p in out.iterdir()) == ["feedback_principle-smoke", "kpflow-smoke.failed"]
    assert cli.main(["check", str(out / "feedback_principle-smoke")]) == 0


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_cached_chunks(tmp_path):
    """A chapter killed mid-grid, run again: the finished chunks are loaded, not recomputed, and the claims equal
    an uninterrupted run's (feedback_principle at smoke on a LocalCluster of 2 workers, whose lambda grids are
    bitwise the same in any chunking)."""
    command = [sys.executable, "-m", "learning_dynamics", "run", "feedback_principle", "--preset", "smoke",
               "--scheduler", "local:2", "-q"]
    env = dict(os.environ, LD_PROGRESS="0")
    whole = subprocess.run(command + ["--out", str(tmp_path / "whole")], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    assert not (tmp_path / "whole.cache").exists(), "a run that succeeded removes its own cache"

    cache = tmp_path / "chunks"
    resumed = command + ["--out", str(tmp_path / "resumed"), "-p", f"cache={cache}"]
    killed = subprocess.Popen(resumed, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(cache.glob("*/chunk-*.npz")) and time.monotonic() < deadline and killed.poll() is None:
        time.sleep(0.05)
    killed.send_signal(signal.SIGTERM)
    _, err = killed.communicate(timeout=120)
    assert killed.returncode == 1, err
    assert "interrupted" in err and "the same command resumes" in err, err
    done = {p.name: p.stat().st_mtime_ns for p in cache.glob("*/chunk-*.npz")}
    assert done and not (tmp_path / "resumed").exists()

    again = subprocess.run(resumed, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    after = {p.name: p.stat().st_mtime_ns for p in cache.glob("*/chunk-*.npz")}
    assert {name: after[name] for name in done} == done, "the finished chunks were loaded, not computed again"
    assert len(after) > len(done), "the rest of the grid was computed"
    assert (tmp_path / "resumed" / "claims.json").read_text() == (tmp_path / "whole" / "claims.json").read_text()


def test_run_all_on_a_scheduler_that_does_not_answer_stops_before_any_chapter(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "chapter_notebooks", lambda root=cli.ROOT: {c: tmp_path / f"{c}.ipynb" for c in THREE})
    monkeypatch.setattr(cli, "execute", _no_kernel)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    start = time.monotonic()
    assert cli.main(["run", "--all", "--preset", "smoke", "--scheduler", f"tcp://127.0.0.1:{port}",
                     "--out", str(tmp_path / "runs")]) == 2
    assert time.monotonic() - start < 30
    assert "no scheduler answered there within 3 s" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
