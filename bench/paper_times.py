"""How long each chapter's `paper` preset takes on this machine: measured, or extrapolated from two slices.

A slice is the paper preset with every training-length field (the step and
epoch counts in ``SCALED``) cut to a fraction ``f`` of its paper value, and
every other field, the sizes, grids and seeds, at the paper's. Its wall time
is ``t(f) = a + b f``: ``a`` is what does not grow with training (kernel
start, data, closed forms, analyses of a fixed number of records) and ``b``
the training at full length. Two slices, at ``f`` and ``2 f``, give ``a`` and
``b``; the paper run takes about ``t(1) = a + b``. A chapter whose estimate is
under ``--measure-below`` seconds is then also run whole, and that measured
time is what ``list`` shows, next to the estimate it checks, with the
counts of its claims' statuses (the claims at paper scale).

Runs go through ``python -m learning_dynamics run CHAPTER --preset paper``
(a claim that fails at a short slice does not matter here; an error does) and
the result goes to ``bench/paper_times.json``, which ``python -m
learning_dynamics list`` reads. The 1-minute load average before each run is
recorded with it: a busy machine makes every number larger.

    .venv/bin/python bench/paper_times.py                       # every chapter
    .venv/bin/python bench/paper_times.py kpflow --fraction 0.002
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER_TIMES = ROOT / "bench" / "paper_times.json"

# The training-length fields a slice cuts.
SCALED = {
    "feedback_principle": ("skill_steps", "grid_steps", "toy_steps", "zp_steps", "nc_steps", "em_steps",
                           "grok_epochs"),
    "kpflow": ("steps", "mt_steps"),
    "neural_race": ("saxe_steps", "xor_steps", "race_steps", "routing_epochs", "gen_epochs", "km_epochs", "kpath_steps"),
    "spring_block": ("steps", "chain_steps", "sde_steps"),
    "three_mechanisms": ("digits_steps", "deep_steps"),
}
# Fields named like step counts that a slice keeps at the paper's value, and why.
KEPT = {
    "kpflow": {"check_steps": "trial length of the dense operator check, not training",
               "analysis_every": "in records, not steps",
               "record_every": "an interval: a slice records fewer checkpoints (see LOWER_BOUND)",
               "mt_record_every": "an interval: a slice records fewer checkpoints (see LOWER_BOUND)"},
    "three_mechanisms": {"records": "the number of recorded points, not steps"},
    "feedback_principle": {"grok_record_every": "an interval in epochs: a slice records fewer accuracies"},
}
# Chapters whose estimate leaves out work that a slice does not do, and what.
LOWER_BOUND = {
    "kpflow": "a slice of a few Adam steps records 1-2 checkpoints where the paper run records 100 per "
              "experiment, so the operator analyses of those checkpoints are not in the estimate",
}
# The first slice's f (the second is 2 f): a share of the paper's training whose run takes a minute or two.
FRACTION = {"kpflow": 0.0004, "spring_block": 0.02, "neural_race": 0.25, "feedback_principle": 0.01,
            "three_mechanisms": 0.1}
DEFAULT_FRACTION = 0.05


def training_fields(chapter: str) -> list[str]:
    """Every integer field of the chapter whose name says it counts steps, epochs or records."""
    from learning_dynamics import presets

    cfg = presets.resolve(chapter, "paper")
    words = ("steps", "epochs", "every", "records")
    return [f.name for f in dataclasses.fields(cfg)
            if isinstance(getattr(cfg, f.name), int) and any(w in f.name for w in words)]


def slice_overrides(chapter: str, fraction: float) -> dict[str, int]:
    """The paper preset's training lengths cut to ``fraction`` (at least 1)."""
    from learning_dynamics import presets

    cfg = presets.resolve(chapter, "paper")
    return {name: max(1, round(getattr(cfg, name) * fraction)) for name in SCALED[chapter]}


def run_paper(chapter: str, overrides: dict, timeout: float, scheduler: str | None = None) -> tuple[float, dict]:
    """Wall seconds of one run of the paper preset with ``overrides``, and its claims' statuses.

    Claims may fail (a slice trains too little); any other error raises.
    """
    from learning_dynamics import claims, cli

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "learning_dynamics", "run", chapter, "--preset", "paper", "-q",
                   "--out", str(out), "-p", "cache=None", "--scheduler", str(scheduler)]
        for name, value in overrides.items():
            command += ["-p", f"{name}={value}"]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=dict(os.environ, LD_PROGRESS="0"), capture_output=True,
                              text=True, timeout=timeout)
        seconds = time.perf_counter() - start
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        if done.returncode != 0 and not (done.returncode == 1 and any("claims did not pass" in e for e in errors)):
            raise RuntimeError(f"{chapter} {overrides}: exit {done.returncode}: {errors or done.stderr[-2000:]}")
        found = out / "claims.json" if done.returncode == 0 else cli.failed_folder(out) / "claims.json"
        recorded = claims.from_glued(cli._glued_json(found))
    statuses = dict(Counter(c.status for c in recorded))
    statuses["not passing"] = [c.statement for c in recorded if not c.ok]
    statuses["values"] = {c.statement: f"{c.ours:.3g} (paper {c.paper}; tolerance {c.tolerance}): {c.status}"
                          for c in recorded}
    return seconds, statuses


def estimate(chapter: str, fraction: float, timeout: float, scheduler: str | None = None) -> dict:
    slices = []
    for f in (fraction, 2 * fraction):
        overrides = slice_overrides(chapter, f)
        load = os.getloadavg()[0]
        seconds, _ = run_paper(chapter, overrides, timeout, scheduler)
        slices.append({"fraction": f, "overrides": overrides, "seconds": round(seconds, 1), "load": round(load, 2)})
        print(f"  {chapter:<18} slice f = {f:<6g} {seconds:8.1f} s  (load {load:.2f})  {overrides}", flush=True)
    (f1, t1), (f2, t2) = ((s["fraction"], s["seconds"]) for s in slices)
    per_unit = max(0.0, (t2 - t1) / (f2 - f1))
    fixed = t1 - per_unit * f1
    return {"seconds": round(fixed + per_unit, 1), "fixed_s": round(fixed, 1), "training_s": round(per_unit, 1),
            "slices": slices}


def main(argv=None) -> int:
    from learning_dynamics import presets
    from learning_dynamics.cli import duration

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", help="default: every chapter")
    parser.add_argument("--fraction", type=float, help="the first slice's share of the paper's training lengths")
    parser.add_argument("--measure-below", type=float, default=300.0,
                        help="also run the whole paper preset when the estimate is below this many seconds")
    parser.add_argument("--measure", action="store_true",
                        help="run the whole paper preset now, keeping the slices already in the table (no new slices)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed for one run")
    parser.add_argument("--scheduler", help="where the chapters' grids run (as `run --scheduler`); default: in process")
    args = parser.parse_args(argv)
    chapters = args.chapters or presets.chapters()
    for chapter in chapters:
        if chapter not in SCALED:
            parser.error(f"chapter must be one of {sorted(SCALED)}; got {chapter!r}")
    table = json.loads(PAPER_TIMES.read_text()) if PAPER_TIMES.exists() else {}
    for chapter in chapters:
        fraction = args.fraction or FRACTION.get(chapter, DEFAULT_FRACTION)
        if args.measure and "slices" in table.get(chapter, {}):
            entry = dict(table[chapter])
        else:
            entry = {"how": "extrapolated", "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                     "scheduler": args.scheduler, **estimate(chapter, fraction, args.timeout, args.scheduler)}
            if chapter in LOWER_BOUND:
                entry.update(how="at least", note=LOWER_BOUND[chapter])
            entry["estimate_s"] = entry["seconds"]
        if args.measure or entry["seconds"] < args.measure_below:
            load = os.getloadavg()[0]
            seconds, statuses = run_paper(chapter, {}, args.timeout, args.scheduler)
            entry.update(how="measured", seconds=round(seconds, 1), load=round(load, 2), claims=statuses,
                         date=time.strftime("%Y-%m-%d"), scheduler=args.scheduler)
        table[chapter] = entry
        PAPER_TIMES.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
        print(f"{chapter}: {entry['how']} {duration(entry['seconds'])} (estimate {duration(entry['estimate_s'])})",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
