"""A chapter's claims at many seeds, in one process: ``python -m learning_dynamics.seeds CHAPTER``.

``seed`` is a reader's parameter, so every claim must hold at seeds 0-9. A
papermill run per seed pays the kernel start and the imports each time; this
runs the chapter's code cells in one interpreter instead (figures drawn with
the Agg backend and closed, nothing displayed), once per seed, and collects
each run's claims. Prints one line per seed and exits non-zero if any claim
failed at any seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import claims, presets


def code_cells(notebook: Path) -> list[str]:
    """The notebook's code cells after its ``parameters`` cell, as source strings."""
    cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    return ["".join(c["source"]) for c in code if "parameters" not in c["metadata"].get("tags", [])]


def run(chapter: str, preset: str, seeds, overrides=None, notebook: Path | None = None):
    """{seed: list of Claim} for each seed; a run that fails before its claims maps to the exception."""
    os.environ.setdefault("LD_PROGRESS", "0")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import plotting

    from .cli import chapter_notebooks

    presets.resolve(chapter, preset, overrides=overrides)  # bad input fails here, before any work
    source = code_cells(notebook or chapter_notebooks()[chapter])
    captured = []
    real_report, real_show = claims.report, plotting.show
    claims.report = lambda table, name: captured.append(list(table))
    plotting.show = lambda fig, *args, **kwargs: plt.close(fig)
    results = {}
    try:
        for seed in seeds:
            namespace = {"preset": preset, "seed": seed, "device": "cpu", "overrides": dict(overrides or {}),
                         "display": lambda *args, **kwargs: None}
            try:
                for cell in source:
                    exec(compile(cell, f"{chapter} seed {seed}", "exec"), namespace)
                results[seed] = captured.pop()
            except Exception as error:  # noqa: BLE001 - reported per seed
                results[seed] = error
            finally:
                plt.close("all")
                captured.clear()
    finally:
        claims.report, plotting.show = real_report, real_show
    return results


def _seed_list(text: str) -> list[int]:
    if "-" in text:
        low, high = (int(x) for x in text.split("-"))
        return list(range(low, high + 1))
    return [int(x) for x in text.split(",")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m learning_dynamics.seeds", description=__doc__.splitlines()[0])
    parser.add_argument("chapter", choices=presets.chapters())
    parser.add_argument("--preset", default="smoke", choices=presets.PRESET_NAMES)
    parser.add_argument("--seeds", default="0-9", help="a range 0-9 or a list 0,3,7 (default 0-9)")
    args = parser.parse_args(argv)
    failed = 0
    for seed, outcome in run(args.chapter, args.preset, _seed_list(args.seeds)).items():
        if isinstance(outcome, Exception):
            failed += 1
            print(f"{args.chapter} {args.preset} seed {seed}: ERROR {type(outcome).__name__}: {outcome}", flush=True)
            continue
        bad = [c for c in outcome if not c.ok]
        failed += bool(bad)
        print(f"{args.chapter} {args.preset} seed {seed}: {len(outcome) - len(bad)} of {len(outcome)} claims pass"
              + "".join(f"\n    {c.status}: {c.statement} (ours {claims.rounded(c.ours)}, {c.tolerance})" for c in bad),
              flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    start = time.perf_counter()
    code = main()
    print(f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    sys.exit(code)
