"""The book's benchmarks, as one table: `make bench`.

1. Each chapter notebook's wall time at the ``smoke`` and ``book`` presets
   (papermill, kernel start included), written to ``bench/timings.json``,
   which ``python -m learning_dynamics list`` and the intro page read.
2. Every ``bench/bench_*.py`` module's ``rows()``: batched vs per-network
   (or ours vs a reference package) timings, with their ratio measured in the
   same run.

``python bench/run.py --only-notebooks`` or ``--only-rows`` runs one half.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = ROOT / "bench" / "timings.json"
BUDGET_S = {"smoke": 15.0, "book": 120.0}


def time_notebooks(presets=("smoke", "book")) -> dict[str, dict[str, float]]:
    """Execute every chapter at each preset; return {chapter: {preset: seconds}}."""
    import papermill as pm

    timings: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
            for preset in presets:
                start = time.perf_counter()
                done = pm.execute_notebook(str(notebook), str(Path(tmp) / notebook.name), parameters={"preset": preset},
                                           kernel_name="python3", cwd=str(ROOT), progress_bar=False)
                seconds = round(time.perf_counter() - start, 1)
                cells = sum(c["metadata"].get("papermill", {}).get("duration") or 0.0 for c in done["cells"])
                timings.setdefault(notebook.stem, {})[preset] = seconds
                print(f"  {notebook.stem:<22} {preset:<6} {seconds:7.1f} s wall, {cells:6.1f} s in cells "
                      "(the rest is kernel start)", flush=True)
    return timings


def bench_rows() -> list[dict]:
    rows = []
    for path in sorted((ROOT / "bench").glob("bench_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(f"  {path.name} ...", flush=True)
        rows.extend(module.rows())
    return rows


def print_timings(timings: dict[str, dict[str, float]]) -> None:
    print("\n| chapter | smoke (s) | book (s) | within budget (15 s / 120 s) |\n|---|---|---|---|")
    for chapter, t in sorted(timings.items()):
        ok = all(t[p] <= BUDGET_S[p] for p in t)
        print(f"| {chapter} | {t.get('smoke', float('nan')):.1f} | {t.get('book', float('nan')):.1f} | {'yes' if ok else 'NO'} |")


def print_rows(rows: list[dict]) -> None:
    print("\n| benchmark | batched / ours (s) | loop / other (s) | ratio | note |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['benchmark']} | {r['batched_s']:.3g} | {r['loop_s']:.3g} | {r['ratio']:.3g}x | {r['note']} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only-notebooks", action="store_true", help="only time the chapters")
    parser.add_argument("--only-rows", action="store_true", help="only the batched-vs-loop benchmarks")
    args = parser.parse_args(argv)
    os.environ.setdefault("LD_PROGRESS", "0")
    if not args.only_rows:
        print("chapter wall times (papermill, kernel start included):")
        timings = time_notebooks()
        TIMINGS.write_text(json.dumps(timings, indent=2, sort_keys=True) + "\n")
        print_timings(timings)
    if not args.only_notebooks:
        print("\nbenchmarks:")
        print_rows(bench_rows())
    return 0


if __name__ == "__main__":
    sys.exit(main())
