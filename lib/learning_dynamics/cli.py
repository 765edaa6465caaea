"""The command line: ``python -m learning_dynamics list | run | check``.

- ``list``: every chapter, its figures, presets and measured run times.
- ``run CHAPTER``: validate the parameters, execute the chapter with
  papermill into a temporary folder next to ``--out``, and move it into place
  only when the whole chapter succeeded (notebook, figures, ``claims.json``).
- ``check [DIR]``: every chapter's claims as one table; non-zero exit if any
  claim fails or a known discrepancy starts to pass.

Errors in what the reader typed go to stderr without a traceback (exit 2); a
chapter that fails while running exits 1.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from collections import Counter
from pathlib import Path

from . import claims, presets
from .validation import check_choice

ROOT = Path(__file__).resolve().parents[2]  # lib/learning_dynamics/ -> repository root
TIMINGS = Path("bench") / "timings.json"
NOT_MEASURED = "not measured"


class UsageError(Exception):
    """A bad command line: printed plainly, exit code 2."""


# ---- shared helpers (also used by tests and the book) ----------------------------------------


def notebooks_dir(root: Path = ROOT) -> Path:
    """The chapter folder, or a clear error if this is not a checkout of the book."""
    folder = root / "notebooks"
    if not folder.is_dir():
        raise UsageError(f"no notebooks/ folder at {root}; run from a source checkout (pip install -e .)")
    return folder


def chapter_notebooks(root: Path = ROOT) -> dict[str, Path]:
    """Chapter name -> notebook, for every notebook whose stem registered presets."""
    registered = set(presets.chapters())
    return {nb.stem: nb for nb in sorted(notebooks_dir(root).glob("*.ipynb")) if nb.stem in registered}


def read_notebook(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def figures(nb: dict) -> list[tuple[str, str]]:
    """(label, caption) of every figure, from the cells' ``mystnb.figure`` metadata, in order."""
    out = []
    for cell in nb.get("cells", []):
        fig = cell.get("metadata", {}).get("mystnb", {}).get("figure")
        if cell.get("cell_type") == "code" and fig and "name" in fig:
            out.append((fig["name"], fig.get("caption", "")))
    return out


def figure_labels(nb: dict) -> list[str]:
    """The figure labels of a notebook, in order."""
    return [label for label, _ in figures(nb)]


def read_timings(root: Path = ROOT) -> dict:
    """``bench/timings.json`` as {chapter: {preset: seconds}}; {} if absent or unreadable."""
    path = root / TIMINGS
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        print(f"warning: ignoring {path}: {err}", file=sys.stderr)
        return {}
    return data if isinstance(data, dict) else {}


def format_table(head: tuple, rows: list[tuple]) -> str:
    """Left-aligned columns separated by two spaces, with a rule under the header."""
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(f"{str(x):<{w}}" for x, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


def _short(caption: str, words: int = 7) -> str:
    """The caption's first sentence, cut to a few words."""
    first = re.split(r"(?<!\bal)\.(?:\s|$)", caption, maxsplit=1)[0]
    parts = first.split()
    return " ".join(parts[:words]) + (" ..." if len(parts) > words else "")


def _seconds(timings: dict, chapter: str, preset: str) -> str:
    value = timings.get(chapter, {}).get(preset) if isinstance(timings.get(chapter), dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.1f} s"
    return NOT_MEASURED


# ---- list ------------------------------------------------------------------------------------


def cmd_list(args) -> int:
    timings = read_timings()
    head = ("chapter", *presets.PRESET_NAMES, "figure", "caption")
    rows = []
    for chapter, path in chapter_notebooks().items():
        times = [_seconds(timings, chapter, p) for p in presets.PRESET_NAMES]
        for k, (label, caption) in enumerate(figures(read_notebook(path)) or [("(none)", "")]):
            lead = (chapter, *times) if k == 0 else ("",) * (1 + len(times))
            rows.append((*lead, label, _short(caption)))
    print(format_table(head, rows))
    print(f"\nrun times: wall seconds at each preset, from {TIMINGS} (`make bench`).")
    return 0


# ---- run -------------------------------------------------------------------------------------


def parse_value(text: str):
    """A Python literal (``3``, ``0.1``, ``(1, 2)``, ``True``), else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_params(pairs: list[str]) -> dict:
    """``["lr=0.1", "n_seeds=2"]`` -> ``{"lr": 0.1, "n_seeds": 2}``."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"-p expects NAME=VALUE; got {pair!r}")
        out[name.strip()] = parse_value(value.strip())
    return out


def validate_run(args) -> dict:
    """Everything a run needs, checked before any kernel starts; raises UsageError."""
    notebooks = chapter_notebooks()
    overrides = parse_params(args.param)
    seed = overrides.pop("seed", args.seed)
    device = overrides.pop("device", args.device)
    try:
        check_choice("chapter", args.chapter, sorted(notebooks))
        presets.resolve(args.chapter, args.preset, seed=seed, device=device, overrides=overrides)
    except ValueError as err:
        raise UsageError(str(err)) from None
    out = Path(args.out) if args.out else ROOT / "runs" / f"{args.chapter}-{args.preset}"
    out = out.expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out must be a folder; {out} is a file")
    if out.is_dir() and any(out.iterdir()) and not (out / "claims.json").exists():
        raise UsageError(f"--out {out} exists and is not an earlier run (no claims.json); "
                         "choose a new or empty folder")
    parameters = {"preset": args.preset, "seed": seed, "device": device, "overrides": _as_lists(overrides)}
    return {"chapter": args.chapter, "notebook": notebooks[args.chapter], "out": out, "parameters": parameters}


def _as_lists(value):
    """Tuples as lists, recursively: papermill would pass a tuple on as its string."""
    if isinstance(value, dict):
        return {k: _as_lists(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_as_lists(v) for v in value]
    return value


def execute(job: dict, folder: Path) -> None:
    """Run the chapter into ``folder``: executed notebook, figures, claims.json; raise if incomplete."""
    import papermill as pm

    from .plotting import FIGURE_DIR_ENV

    chapter = job["chapter"]
    executed = folder / f"{chapter}.ipynb"
    previous = os.environ.get(FIGURE_DIR_ENV)
    os.environ[FIGURE_DIR_ENV] = str(folder)  # the kernel inherits it; plotting.show saves there
    try:
        pm.execute_notebook(str(job["notebook"]), str(executed), parameters=job["parameters"], kernel_name="python3",
                            cwd=str(ROOT), progress_bar=os.environ.get("LD_PROGRESS", "1") != "0")
    finally:
        if previous is None:
            os.environ.pop(FIGURE_DIR_ENV, None)
        else:
            os.environ[FIGURE_DIR_ENV] = previous
    nb = read_notebook(executed)
    glued = claims.records_from_notebook(nb)
    if glued is None:
        raise RuntimeError(f"{chapter} glued no {claims.GLUE_NAME!r} record (does its last cell call claims.report?)")
    (folder / "claims.json").write_text(json.dumps(glued, indent=2) + "\n")
    missing = [f"{label}.{ext}" for label in figure_labels(nb) for ext in ("png", "svg")
               if not (folder / f"{label}.{ext}").exists()]
    if missing:
        raise RuntimeError(f"{chapter} did not save {', '.join(missing)} (every figure goes through plotting.show)")


def replace_folder(new: Path, out: Path) -> None:
    """Move ``new`` to ``out``; an earlier ``out`` is moved aside first and deleted last."""
    if not out.exists():
        new.rename(out)
        return
    aside = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
    out.rename(aside / out.name)
    try:
        new.rename(out)
    except BaseException:
        (aside / out.name).rename(out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def cmd_run(args) -> int:
    job = validate_run(args)
    out = job["out"]
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)  # mkdtemp makes it private; the result is an ordinary folder
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a killed run cleans up like Ctrl-C
    try:
        execute(job, folder)
        replace_folder(folder, out)
    except BaseException as err:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"error: {job['chapter']} failed: {describe_failure(err)}\n{_kept(out)}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    print(f"{job['chapter']} ({job['parameters']['preset']}): notebook, figures and claims.json in {shown}")
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def describe_failure(err: BaseException) -> str:
    """One line: the failing cell's error, an interrupt, or the exception itself."""
    if hasattr(err, "ename") and hasattr(err, "exec_count"):  # papermill.PapermillExecutionError
        return f"cell [{err.exec_count}] raised {err.ename}: {err.evalue}"
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    return f"{type(err).__name__}: {err}"


def _kept(out: Path) -> str:
    return f"{out} was left as it was" if out.exists() else f"nothing was written to {out}"


# ---- check -----------------------------------------------------------------------------------


def collect_claims(folder: str | None) -> list[tuple[str, list[claims.Claim]]]:
    """(chapter, claims) from every claims.json under ``folder``, or from the committed notebooks."""
    if folder is None:
        sources = [(chapter, path, claims.records_from_notebook(read_notebook(path)))
                   for chapter, path in chapter_notebooks().items()]
    else:
        base = Path(folder)
        if not base.is_dir():
            raise UsageError(f"check: {folder} is not a folder")
        sources = []
        for path in sorted(base.rglob("claims.json")):
            try:
                glued = json.loads(path.read_text())
            except ValueError as err:
                raise UsageError(f"{path}: not JSON ({err})") from None
            where = path.parent.relative_to(base).as_posix()
            chapter = glued.get("chapter", "?") if isinstance(glued, dict) else "?"
            sources.append((chapter if where == "." else f"{chapter} ({where})", path, glued))
        if not sources:
            raise UsageError(f"check: no claims.json under {folder}")
    out = []
    for name, path, glued in sources:
        if glued is None:
            raise UsageError(f"{path} glued no {claims.GLUE_NAME!r} record; re-execute it")
        try:
            out.append((name, claims.from_records(glued["claims"])))
        except (KeyError, TypeError, ValueError) as err:
            raise UsageError(f"{path}: malformed claims: {err}") from None
    return out


def cmd_check(args) -> int:
    collected = collect_claims(args.dir)
    rows, bad = [], 0
    for source, chapter_claims in collected:
        for k, c in enumerate(chapter_claims):
            rows.append((source if k == 0 else "", c.statement, c.paper, claims.rounded(c.ours), c.tolerance, c.status))
            bad += not c.ok
    print(format_table(("chapter", "claim", "paper / theory", "ours", "tolerance", "status"), rows))
    counts = Counter(c.status for _, cs in collected for c in cs)
    print(f"\n{sum(counts.values())} claims in {len(collected)} chapters: "
          + ", ".join(f"{status}: {n}" for status, n in sorted(counts.items())))
    return 1 if bad else 0


def cached_timings(cache_dir: Path) -> dict[str, float]:
    """Notebook file name -> seconds of its last execution in the book's jupyter-cache."""
    from jupyter_cache import get_cache

    out = {}
    for record in get_cache(str(cache_dir)).list_cache_records():
        data = record.data or {}
        if "execution_seconds" in data:
            out[Path(record.uri).name] = float(data["execution_seconds"])
    return out


def cmd_timings(args) -> int:
    cache_dir = Path(args.cache)
    if not cache_dir.exists():
        print(f"no execution cache at {cache_dir}")
        return 0
    print("chapter execution times (book preset, from the execution cache):")
    for name, seconds in sorted(cached_timings(cache_dir).items()):
        print(f"  {name:40s} {seconds:7.1f} s")
    return 0


# ---- entry point -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="learning-dynamics", description="Run and check the book's chapters.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{list,run,check,timings}")
    sub.add_parser("list", help="chapters, their figures, presets and run times").set_defaults(func=cmd_list)

    run = sub.add_parser("run", help="execute one chapter into a folder (notebook, figures, claims.json)")
    run.add_argument("chapter", help="a chapter name (see `list`)")
    run.add_argument("--preset", default="book", choices=presets.PRESET_NAMES)
    run.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                     help="override a preset field (repeatable); seed and device too")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    run.add_argument("--out", metavar="DIR", help="output folder (default: runs/CHAPTER-PRESET)")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="every chapter's claims as one table; non-zero exit on a failure")
    check.add_argument("dir", nargs="?", help="read claims.json files under DIR (default: the committed notebooks)")
    check.set_defaults(func=cmd_check)

    timings = sub.add_parser("timings", help="each chapter's last execution time in the book build (make book prints it)")
    timings.add_argument("cache", nargs="?", default="_build/.jupyter_cache", help="the book's execution cache")
    timings.set_defaults(func=cmd_timings)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `learning-dynamics check | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
