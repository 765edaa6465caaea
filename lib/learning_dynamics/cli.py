"""The command line: ``python -m learning_dynamics list | run | check``.

- ``list``: every chapter, its figures, presets and measured run times.
- ``run CHAPTER`` (or ``run --all``: every chapter in turn, a summary line
  each, non-zero exit if any failed): validate the parameters, execute the chapter with
  papermill into a temporary folder next to ``--out``, and move it into place
  only when the whole chapter succeeded (notebook, figures, ``claims.json``).
  A run whose claims fail still finishes: it goes to ``OUT.failed`` (notebook,
  figures, ``claims.json``, ``error.txt``) and ``OUT`` keeps the last run whose
  claims all passed; a run that stops in an earlier cell leaves its partial
  notebook there. ``OUT.lock`` (an flock) allows one run per folder, and a run
  removes the temporary folders of runs that died. It shows the current cell,
  the elapsed time and the library's progress bars as they happen (``--quiet``
  or LD_PROGRESS=0: none). ``--scheduler local:N`` (or a dask scheduler
  address) sets the preset's ``scheduler`` parameter: where the chapter's
  grids run.
- ``check [DIR | FILE]``: every chapter's claims as one table, from claims.json
  files or executed notebooks, checked against the records' schema; non-zero
  exit if any claim fails, is not reached, or a known discrepancy passes.

Errors in what the reader typed go to stderr without a traceback (exit 2); a
chapter that fails while running exits 1.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import claims, presets
from .validation import check_choice

ROOT = Path(__file__).resolve().parents[2]  # lib/learning_dynamics/ -> repository root
TIMINGS = Path("bench") / "timings.json"
PAPER_TIMES = Path("bench") / "paper_times.json"  # bench/paper_times.py: measured, or extrapolated from slices
NOT_MEASURED = "not measured"
PROGRESS_FILE_ENV = "LD_PROGRESS_FILE"  # train.progress appends its loops' state to this file
PROGRESS_FILE = ".progress"  # inside the run's temporary folder; removed before the folder moves
ERROR_FILE = "error.txt"  # the one-line reason, in OUT.failed
ENGINE = "learning_dynamics"  # papermill's nbclient engine, reporting each cell as it starts


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


def read_timings(root: Path = ROOT, path: Path = TIMINGS) -> dict:
    """``bench/timings.json`` as {chapter: {preset: seconds}} (or another bench JSON file); {} if absent or unreadable."""
    path = root / path
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


def duration(seconds: float) -> str:
    """``"42 s"``, ``"6.5 min"`` or ``"31 h"``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _paper_seconds(entry) -> str:
    """A bench/paper_times.json entry as ``58 s (measured)``, ``~53 min (extrapolated)`` or ``>= 31 h (at least)``."""
    if not isinstance(entry, dict) or not isinstance(entry.get("seconds"), (int, float)):
        return NOT_MEASURED
    how = entry.get("how")
    mark = {"measured": "", "extrapolated": "~", "at least": ">= "}.get(how)
    if mark is None:
        return NOT_MEASURED
    return f"{mark}{duration(entry['seconds'])} ({how})"


# ---- list ------------------------------------------------------------------------------------


def cmd_list(args) -> int:
    timings, paper_times = read_timings(), read_timings(path=PAPER_TIMES)
    head = ("chapter", *presets.PRESET_NAMES, "figure", "caption")
    rows = []
    for chapter, path in chapter_notebooks().items():
        times = [_seconds(timings, chapter, p) for p in presets.PRESET_NAMES if p != "paper"]
        times.append(_paper_seconds(paper_times.get(chapter)))
        for k, (label, caption) in enumerate(figures(read_notebook(path)) or [("(none)", "")]):
            lead = (chapter, *times) if k == 0 else ("",) * (1 + len(times))
            rows.append((*lead, label, _short(caption)))
    print(format_table(head, rows))
    print(f"\nrun times: wall time on this machine, from {TIMINGS} (`make bench`); paper: from {PAPER_TIMES} "
          "(`bench/paper_times.py`): measured, or extrapolated from two runs with the paper's training cut short "
          "('at least': the estimate leaves out work that those runs skip; see the file's note).")
    return 0


def cmd_params(args) -> int:
    """Every parameter of a chapter: its allowed values, its value at each preset, and its help."""
    try:
        described = presets.describe(args.chapter)
    except ValueError as err:
        raise UsageError(str(err)) from None
    head = ("parameter", "allowed", *presets.PRESET_NAMES, "help")
    rows = [(d["name"], d["allowed"], *(_value_text(d["values"][p]) for p in presets.PRESET_NAMES), d["help"])
            for d in described]
    print(format_table(head, rows))
    print(f"\noverride with `run {args.chapter} -p NAME=VALUE` (or papermill's -p overrides '{{\"NAME\": VALUE}}').")
    return 0


def _value_text(value) -> str:
    text = repr(value)
    return text if len(text) <= 30 else text[:27] + "..."


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


def validate_run(args, chapter: str | None = None) -> dict:
    """Everything a run needs, checked before any kernel starts; raises UsageError.

    ``chapter`` (default ``args.chapter``) is one chapter of ``run --all``, which goes to
    ``DIR/CHAPTER-PRESET`` with ``DIR`` from ``--out`` (default runs/).
    """
    chapter = chapter if chapter is not None else args.chapter
    notebooks = chapter_notebooks()
    overrides = parse_params(args.param)
    seed = overrides.pop("seed", args.seed)
    device = overrides.pop("device", args.device)
    scheduler = getattr(args, "scheduler", None)
    if scheduler is not None:  # the preset's scheduler parameter, as -p scheduler=... sets it
        value = parse_value(scheduler.strip())
        if "scheduler" in overrides and overrides["scheduler"] != value:
            raise UsageError(f"--scheduler {scheduler} and -p scheduler={overrides['scheduler']} differ; give one")
        overrides["scheduler"] = value
    try:
        check_choice("chapter", chapter, sorted(notebooks))
        presets.resolve(chapter, args.preset, seed=seed, device=device, overrides=overrides)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if getattr(args, "all", False):
        out = (Path(args.out) if args.out else ROOT / "runs") / f"{chapter}-{args.preset}"
    else:
        out = Path(args.out) if args.out else ROOT / "runs" / f"{chapter}-{args.preset}"
    out = out.expanduser().resolve()
    failed = failed_folder(out)
    try:
        _check_out(out, failed)
    except OSError as err:  # e.g. a folder we may not read
        raise UsageError(f"cannot write to {out}: {err.strerror or err}") from None
    if overrides.get("cache") is not None:  # the kernel may run elsewhere: an absolute folder
        overrides["cache"] = str(Path(overrides["cache"]).expanduser().resolve())
    parameters = {"preset": args.preset, "seed": seed, "device": device, "overrides": _as_lists(overrides)}
    return {"chapter": chapter, "notebook": notebooks[chapter], "out": out, "failed": failed,
            "parameters": parameters, "own_cache": "cache" not in overrides,
            "cache": cache_folder(out) if "cache" not in overrides else
            (Path(overrides["cache"]) if overrides["cache"] is not None else None)}


def _check_out(out: Path, failed: Path) -> None:
    """``out`` is new, empty or an earlier run, and ``OUT.failed`` new, empty or an earlier failed run."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out must be a folder; {out} is a file")
    if out.is_dir() and any(out.iterdir()) and not (out / "claims.json").exists():
        raise UsageError(f"--out {out} exists and is not an earlier run (no claims.json); "
                         "choose a new or empty folder")
    if failed.exists() and not (failed.is_dir() and ((failed / ERROR_FILE).exists() or not any(failed.iterdir()))):
        raise UsageError(f"{failed} exists and is not a failed run (no {ERROR_FILE}); move it away, "
                         "since a failed run would replace it")


def failed_folder(out: Path) -> Path:
    """``OUT.failed``: the latest run into ``out`` whose claims failed (or that stopped early)."""
    return out.with_name(out.name + ".failed")


def _with_cache(job: dict) -> dict:
    """The notebook's parameters, with ``cache=OUT.cache`` unless the reader gave ``-p cache=...``."""
    if not job.get("own_cache"):
        return job["parameters"]
    parameters = dict(job["parameters"])
    parameters["overrides"] = {**parameters["overrides"], "cache": str(job["cache"])}
    return parameters


def cache_folder(out: Path) -> Path:
    """``OUT.cache``: the finished chunks of a run's grids, kept until the run into ``out`` succeeds."""
    return out.with_name(out.name + ".cache")


def lock_file(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


def _as_lists(value):
    """Tuples as lists, recursively: papermill would pass a tuple on as its string."""
    if isinstance(value, dict):
        return {k: _as_lists(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_as_lists(v) for v in value]
    return value


class ClaimsFailed(Exception):
    """The chapter ran to its end but :func:`claims.report` raised: some claims did not pass."""

    def __init__(self, glued: dict, failed: list[claims.Claim], total: int):
        self.glued, self.failed, self.total = glued, failed, total
        shown = ", ".join(f"{c.statement!r} ({c.status})" for c in failed)
        super().__init__(f"{len(failed)} of {total} claims did not pass: {shown}")


@contextlib.contextmanager
def _environment(values: dict[str, str | None]):
    """Set (None: unset) environment variables, which the kernel inherits; restore the old values afterwards."""
    previous = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _register_engine() -> None:
    """Papermill's nbclient engine, calling ``on_cell(k, n)`` as the k-th of n code cells starts."""
    from papermill.engines import NBClientEngine, papermill_engines

    class LiveEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, on_cell=None, **kwargs):
            if on_cell is not None:
                code = [i for i, cell in enumerate(nb_man.nb.cells) if cell.get("cell_type") == "code"]
                started = nb_man.cell_start

                def cell_start(cell, cell_index=None, **kw):
                    started(cell, cell_index, **kw)
                    if cell_index in code:
                        with contextlib.suppress(Exception):  # the display never stops a run
                            on_cell(code.index(cell_index) + 1, len(code))

                nb_man.cell_start = cell_start
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(ENGINE, LiveEngine)


def execute(job: dict, folder: Path, display: LiveProgress | None = None) -> None:
    """Run the chapter into ``folder``: executed notebook, figures, claims.json; raise if incomplete.

    Raises :class:`ClaimsFailed` (after writing claims.json) when the chapter ran to its end and only
    its claims failed; any other failure raises as it came.
    """
    import papermill as pm

    from .plotting import FIGURE_DIR_ENV

    chapter = job["chapter"]
    executed = folder / f"{chapter}.ipynb"
    # The kernel inherits these: plotting.show saves there; its tqdm bars would land in the notebook, so they
    # are off and train.progress reports to the display's file instead.
    env = {FIGURE_DIR_ENV: str(folder), "LD_PROGRESS": "0",
           PROGRESS_FILE_ENV: str(display.path) if display is not None else None}
    _register_engine()
    with _environment(env):
        try:
            pm.execute_notebook(str(job["notebook"]), str(executed), parameters=_with_cache(job), kernel_name="python3",
                                cwd=str(ROOT), progress_bar=False, engine_name=ENGINE,
                                on_cell=display.cell if display is not None else None)
        except Exception as err:
            if getattr(err, "ename", None) != claims.ClaimFailed.__name__:
                raise
            try:  # the claims cell showed and glued its table before it raised
                glued = claims.records_from_notebook(read_notebook(executed))
                recorded = claims.from_glued(glued)
            except (OSError, ValueError):
                raise err from None
            (folder / "claims.json").write_text(json.dumps(glued, indent=2) + "\n")
            raise ClaimsFailed(glued, [c for c in recorded if not c.ok], len(recorded)) from err
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
    """Move ``new`` to ``out``; an earlier ``out`` is moved aside first and deleted last.

    The aside folder's name holds this process's id, so that if the run dies between the two moves the
    next run can put the earlier ``out`` back (:func:`remove_stale`).
    """
    if not out.exists():
        new.rename(out)
        return
    aside = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-{os.getpid()}-", dir=out.parent))
    out.rename(aside / out.name)
    try:
        new.rename(out)
    except BaseException:
        (aside / out.name).rename(out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


# ---- one run per folder ----------------------------------------------------------------------


def acquire_lock(out: Path) -> int:
    """Hold ``OUT.lock`` (an exclusive flock, released by the kernel if the run dies); UsageError if held.

    The file holds the owner's pid and host, for the message a second run prints. A lock file that its
    last owner removed between our open and our flock is a different file: open again.
    """
    path = lock_file(out)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 300).decode(errors="replace").split()
            os.close(fd)
            who = f"pid {owner[0]} on {owner[1]}" if len(owner) >= 2 else "pid unknown"
            raise UsageError(f"another run ({who}) is writing to {out}; wait for it to finish or choose "
                             f"another --out (lock: {path})") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return fd


def release_lock(fd: int, out: Path) -> None:
    """Remove the lock file (while still holding it, so no one else holds that file) and release it."""
    with contextlib.suppress(OSError):
        if os.path.samestat(os.fstat(fd), os.stat(lock_file(out))):
            lock_file(out).unlink()
    os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a zombie, killed but not yet reaped, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def remove_stale(out: Path) -> list[Path]:
    """Remove ``OUT.tmp-PID-*`` and ``OUT[.failed].old-PID-*`` folders whose process is dead; return them.

    Called with the lock held, so no live run of this version owns them; the pid check also spares a
    folder of a live run that did not take the lock. An ``.old-`` folder holds the previous result of a
    run that died between its two moves: it is put back if nothing replaced it.
    """
    removed = []
    for target, kind in ((out, "tmp"), (out, "old"), (failed_folder(out), "old")):
        pattern = re.compile(re.escape(f"{target.name}.{kind}-") + r"(\d+)-")
        for path in sorted(out.parent.iterdir()):
            match = pattern.match(path.name)
            if not match or not path.is_dir() or pid_alive(int(match[1])):
                continue
            kept = path / target.name
            if kind == "old" and kept.is_dir() and not target.exists():
                kept.rename(target)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


# ---- live progress ---------------------------------------------------------------------------


class LiveProgress:
    """The current cell, the elapsed time and the kernel's progress bars, on stderr while a chapter runs.

    The kernel's own output never reaches the terminal, so ``train.progress`` appends its state to
    :attr:`path` (LD_PROGRESS_FILE) and a thread reads what is new four times a second. On a terminal
    it is one line, redrawn; elsewhere (a log) a line per cell and at most one every 10 s in between.
    """

    def __init__(self, chapter: str, path: Path, stream=None, interval: float = 0.25, every: float = 10.0):
        self.chapter, self.path, self.interval, self.every = chapter, Path(path), interval, every
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.current = None  # (k, n, start) of the running code cell
        self.bar = None  # the latest progress record of that cell
        self.offset, self.printed, self.last = 0, 0.0, ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ld-progress", daemon=True)

    def __enter__(self):
        self.path.touch()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if self.tty and self.last:
            self._write("\r\x1b[K")

    def cell(self, k: int, n: int) -> None:
        with self._lock:
            self._read()
            self.current, self.bar = (k, n, time.monotonic()), None
            self._show(force=True)

    def _run(self):
        while not self._stop.wait(self.interval):
            with self._lock:
                self._read()
                self._show()

    def _read(self):
        """The progress records appended since the last read (complete lines only)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return
        lines = chunk.split(b"\n")[:-1]
        self.offset += sum(len(line) + 1 for line in lines)
        for line in lines:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                self.bar = None if record.get("done") else record

    def line(self) -> str:
        now = time.monotonic()
        parts = [self.chapter, _clock(now - self.started)]
        if self.current is None:
            parts.append("starting the kernel")
        else:
            k, n, start = self.current
            parts.append(f"cell {k}/{n} ({_clock(now - start)})")
        if self.bar:
            done, total = self.bar.get("n", 0), self.bar.get("total")
            count = f"{done}/{total} ({done / total:.0%})" if total else f"{done}"
            parts.append(f"{self.bar.get('desc') or 'progress'}: {count}")
        return "  ".join(parts)

    def _show(self, force: bool = False):
        line = self.line()
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self._write("\r" + line[:width] + "\x1b[K")
        elif force or time.monotonic() - self.printed >= self.every:
            self._write(line + "\n")
            self.printed = time.monotonic()
        self.last = line

    def _write(self, text: str):
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(text)
            self.stream.flush()


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"


# ---- run: the command -------------------------------------------------------------------------------------


def _shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


@dataclass
class Outcome:
    """How one chapter's run ended: ``passed``, ``failed claims`` or ``error`` (with why), and its wall time."""

    chapter: str
    status: str
    detail: str
    seconds: float
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return self.status == PASSED


PASSED, FAILED_CLAIMS, ERROR, NOT_RUN = "passed", "failed claims", "error", "not run"


def _quiet(args) -> bool:
    return args.quiet or os.environ.get("LD_PROGRESS", "1") == "0"  # as train.progress_enabled, without torch


def cmd_run(args) -> int:
    if args.all:
        if args.chapter:
            raise UsageError(f"run takes a CHAPTER or --all, not both; got {args.chapter!r} and --all")
        return run_all(args)
    if not args.chapter:
        raise UsageError("run needs a CHAPTER (see `list`) or --all")
    return 0 if run_job(validate_run(args), _quiet(args)).ok else 1


def run_job(job: dict, quiet: bool = False) -> Outcome:
    """Run one validated chapter into its folder (lock, temporary folder, OUT.failed); print how it ended.

    Raises UsageError when the run cannot start (its folder is locked or cannot be written); every
    failure after that is an :class:`Outcome`.
    """
    out, failed, chapter = job["out"], job["failed"], job["chapter"]
    start = time.monotonic()
    lock = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = acquire_lock(out)
        for path in remove_stale(out):
            print(f"note: removed {_shown(path)}, left by a run that died", file=sys.stderr)
        folder = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-{os.getpid()}-", dir=out.parent))
        mask = os.umask(0)
        os.umask(mask)
        folder.chmod(0o777 & ~mask)  # mkdtemp makes it private; the result is an ordinary folder
    except OSError as err:
        if lock is not None:
            release_lock(lock, out)
        raise UsageError(f"cannot write to {out}: {err.strerror or err}") from None
    display = None if quiet else LiveProgress(chapter, folder / PROGRESS_FILE)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a killed run cleans up like Ctrl-C
    try:
        with display or contextlib.nullcontext():
            execute(job, folder, display)
        (folder / PROGRESS_FILE).unlink(missing_ok=True)
        replace_folder(folder, out)
    except ClaimsFailed as err:
        where = _keep_failed(folder, failed, f"{chapter}: {err}")
        print(f"error: {chapter} failed: {err}; {where}; {_kept(out)}{_resume_note(job)}", file=sys.stderr)
        return Outcome(chapter, FAILED_CLAIMS, f"{len(err.failed)} of {err.total} claims did not pass; {where}",
                       time.monotonic() - start)
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt):  # the cell's own traceback, which the kernel's tasks log as they die
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        reason = describe_failure(err)
        where = None
        if not isinstance(err, KeyboardInterrupt) and (folder / f"{chapter}.ipynb").exists():
            where = _keep_failed(folder, failed, f"{chapter}: {reason}", partial=True)
        shutil.rmtree(folder, ignore_errors=True)
        print(f"error: {chapter} failed: {reason}; {where + '; ' if where else ''}{_kept(out)}{_resume_note(job)}",
              file=sys.stderr)
        return Outcome(chapter, ERROR, reason + (f"; {where}" if where else ""), time.monotonic() - start,
                       interrupted=isinstance(err, KeyboardInterrupt))
    finally:
        signal.signal(signal.SIGTERM, previous)
        release_lock(lock, out)
    note = ""
    if job.get("own_cache"):  # the run is complete: its chunks are no longer needed
        shutil.rmtree(job["cache"], ignore_errors=True)
    if failed.exists():  # an earlier failed run into this folder is superseded
        shutil.rmtree(failed, ignore_errors=True)
        note = f" (removed {_shown(failed)}, an earlier failed run)"
    print(f"{chapter} ({job['parameters']['preset']}): notebook, figures and claims.json in {_shown(out)}{note}")
    return Outcome(chapter, PASSED, f"{_claim_count(out)} in {_shown(out)}", time.monotonic() - start)


def _claim_count(out: Path) -> str:
    try:
        return f"{len(json.loads((out / 'claims.json').read_text())['claims'])} claims"
    except (OSError, ValueError, KeyError, TypeError):
        return "claims"


def run_all(args) -> int:
    """``run --all``: every chapter (each its own kernel, as ``run CHAPTER``), then one line per chapter.

    Every chapter's parameters and folder are checked before the first kernel starts. Without a
    scheduler the chapters run one after another; Ctrl-C stops the sequence. With one (``--scheduler``
    or ``-p scheduler=...``) they run at the same time, each in its own process, sharing one cluster:
    ``local:N`` is started once here and every chapter connects to its address. A chapter whose run
    cannot start (a locked folder) is an error and the others run. Exit 1 if any chapter did not pass.
    """
    chapters = list(chapter_notebooks())
    if not chapters:
        raise UsageError(f"no chapter notebooks in {notebooks_dir()}")
    jobs = [validate_run(args, chapter) for chapter in chapters]
    scheduler = jobs[0]["parameters"]["overrides"].get("scheduler")
    start = time.monotonic()
    outcomes = _run_together(jobs, scheduler) if scheduler is not None else _run_in_turn(jobs, _quiet(args))
    print(summary(outcomes, args.preset, time.monotonic() - start))
    return 0 if all(o.ok for o in outcomes) else 1


def _run_one(job: dict, quiet: bool) -> Outcome:
    print(f"{job['chapter']} ({job['parameters']['preset']}) -> {_shown(job['out'])}", file=sys.stderr, flush=True)
    try:
        return run_job(job, quiet)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return Outcome(job["chapter"], ERROR, str(err), 0.0)


def _run_in_turn(jobs: list[dict], quiet: bool) -> list[Outcome]:
    outcomes = []
    for k, job in enumerate(jobs, 1):
        print(f"[{k}/{len(jobs)}] ", end="", file=sys.stderr)
        outcomes.append(_run_one(job, quiet))
        if outcomes[-1].interrupted:
            outcomes += [Outcome(j["chapter"], NOT_RUN, "after the interrupt", 0.0) for j in jobs[k:]]
            break
    return outcomes


def _run_together(jobs: list[dict], scheduler) -> list[Outcome]:
    """Every chapter at once, one process each (their own environment, figures and signals), on one cluster."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from . import sweep

    # The chapters' processes fork before the cluster's client starts its threads (a fork copies only the
    # forking thread); forked, they also run the very code this process runs.
    pool = ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("fork"))
    pool.submit(int).result()  # starts every process now
    try:
        connection = sweep.client(scheduler)
    except ValueError as err:
        pool.shutdown()
        raise UsageError(str(err)) from None
    with connection:
        address = connection.client.scheduler.address
        for job in jobs:
            job["parameters"]["overrides"]["scheduler"] = address
        print(f"{len(jobs)} chapters at once on the dask cluster at {address} ({connection.n_workers} workers)",
              file=sys.stderr, flush=True)
        futures = [pool.submit(_run_one, job, True) for job in jobs]
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            outcomes = [f.result() for f in futures]
        except KeyboardInterrupt:  # each chapter cleans up as a killed run does, then reports
            for process in list(getattr(pool, "_processes", {}).values()):
                with contextlib.suppress(OSError):
                    process.terminate()
            outcomes = [f.result() if not f.cancelled() and f.exception() is None else
                        Outcome(j["chapter"], ERROR, "interrupted", 0.0, interrupted=True) for f, j in zip(futures, jobs)]
        finally:
            signal.signal(signal.SIGTERM, previous)
            pool.shutdown(wait=True, cancel_futures=True)
    return outcomes


def summary(outcomes: list[Outcome], preset: str, elapsed: float) -> str:
    """One line per chapter (status, wall time, detail) and a count of each status, in ``elapsed`` seconds in all."""
    rows = [(o.chapter, o.status, f"{o.seconds:.1f} s", _cut(o.detail)) for o in outcomes]
    counts = Counter(o.status for o in outcomes)
    tally = ", ".join(f"{s}: {counts[s]}" for s in (PASSED, FAILED_CLAIMS, ERROR, NOT_RUN) if counts[s])
    return (f"\n{format_table(('chapter', 'status', 'wall', 'detail'), rows)}\n\n"
            f"{len(outcomes)} chapters at {preset} in {elapsed:.1f} s: {tally}")


def _cut(text: str, width: int = 110) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _keep_failed(folder: Path, failed: Path, reason: str, partial: bool = False) -> str:
    """Move the run's folder to ``OUT.failed`` (replacing an older one), with error.txt; say where it is."""
    try:
        (folder / PROGRESS_FILE).unlink(missing_ok=True)
        (folder / ERROR_FILE).write_text(reason + "\n")
        replace_folder(folder, failed)
    except OSError as err:
        shutil.rmtree(folder, ignore_errors=True)
        return f"could not keep it in {_shown(failed)} ({err.strerror or err})"
    what = "the partial notebook" if partial else "notebook, figures and claims.json"
    return f"{what} in {_shown(failed)}"


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def describe_failure(err: BaseException) -> str:
    """One line: the failing cell's error, an interrupt, or the exception itself."""
    if hasattr(err, "ename") and hasattr(err, "exec_count"):  # papermill.PapermillExecutionError
        return f"cell [{err.exec_count}] raised {err.ename}: {_one_line(err.evalue)}"
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    return f"{type(err).__name__}: {_one_line(str(err))}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _kept(out: Path) -> str:
    return f"{_shown(out)} was left as it was" if out.exists() else f"nothing was written to {_shown(out)}"


def _resume_note(job: dict) -> str:
    """How many finished chunks the run left in its cache, which the same command picks up."""
    chunks = len(list(job["cache"].glob("*/chunk-*.npz"))) if job.get("cache") is not None else 0
    return f"; {chunks} finished chunk(s) kept in {_shown(job['cache'])}: the same command resumes" if chunks else ""


# ---- check -----------------------------------------------------------------------------------


SKIPPED = re.compile(r"\.(tmp|old)-\d+-")  # a run's temporary or aside folder: in flight, not a result


def collect_claims(target: str | None) -> list[tuple[str, list[claims.Claim]]]:
    """(chapter, claims) from a claims.json or executed notebook, every one under a folder, or the committed notebooks.

    Under a folder, a folder's claims.json is read, else its executed notebooks' glued claims; a
    notebook that stopped before its claims cell is skipped with a note. Every record is checked
    against the schema (:func:`claims.from_glued`); a malformed one is a UsageError naming the file.
    """
    if target is None:
        sources = [("", path, _glued_notebook(path)) for path in chapter_notebooks().values()]
    else:
        base = Path(target)
        if base.is_file():
            sources = [("", base, _glued_notebook(base) if base.suffix == ".ipynb" else _glued_json(base))]
        elif base.is_dir():
            sources = _sweep(base)
            if not sources:
                raise UsageError(f"check: no claims.json under {target} (nor an executed notebook with glued claims)")
        else:
            raise UsageError(f"check: {target} is not a folder, a claims.json or an executed notebook")
    out = []
    for where, path, glued in sources:
        if glued is None:
            raise UsageError(f"{path} glued no {claims.GLUE_NAME!r} record; re-execute it")
        try:
            chapter_claims = claims.from_glued(glued)
        except ValueError as err:
            raise UsageError(f"{path}: {err}") from None
        out.append((glued["chapter"] + (f" ({where})" if where else ""), chapter_claims))
    return out


def _glued_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read it ({err})") from None
    except ValueError as err:
        raise UsageError(f"{path}: not JSON ({err})") from None


def _glued_notebook(path: Path) -> dict | None:
    nb = _glued_json(path)
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise UsageError(f"{path}: not a notebook (no list of cells)")
    return claims.records_from_notebook(nb)


def _sweep(base: Path) -> list[tuple[str, Path, dict]]:
    """(where, path, glued) of every claims.json under ``base``, and of notebooks in folders without one."""
    sources = []
    for folder, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not SKIPPED.search(d))
        folder = Path(folder)
        where = folder.relative_to(base).as_posix()
        if "claims.json" in files:
            sources.append(("" if where == "." else where, folder / "claims.json", _glued_json(folder / "claims.json")))
            continue
        for name in sorted(f for f in files if f.endswith(".ipynb")):
            glued = _glued_notebook(folder / name)
            if glued is None:
                print(f"note: skipped {folder / name}: no glued claims (it stopped before its claims cell, "
                      "or is not executed)", file=sys.stderr)
                continue
            sources.append((name if where == "." else f"{where}/{name}", folder / name, glued))
    return sources


def cmd_check(args) -> int:
    collected = collect_claims(args.dir)
    rows, bad = [], 0
    for source, chapter_claims in collected:
        for k, c in enumerate(chapter_claims):
            rows.append((source if k == 0 else "", c.statement, c.paper, claims.rounded(c.ours), c.tolerance, c.label))
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
    sub = parser.add_subparsers(dest="command", required=True, metavar="{list,params,run,check,timings}")
    sub.add_parser("list", help="chapters, their figures, presets and run times").set_defaults(func=cmd_list)
    params = sub.add_parser("params", help="every parameter of a chapter: allowed values and the value at each preset")
    params.add_argument("chapter", help="a chapter name (see `list`)")
    params.set_defaults(func=cmd_params)

    run = sub.add_parser("run", help="execute one chapter (or --all) into a folder (notebook, figures, claims.json)")
    run.add_argument("chapter", nargs="?", help="a chapter name (see `list`); or --all")
    run.add_argument("--all", action="store_true",
                     help="every chapter, one after another, each into DIR/CHAPTER-PRESET; a summary line per chapter; "
                          "non-zero exit if any failed")
    run.add_argument("--preset", default="book", choices=presets.PRESET_NAMES)
    run.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                     help="override a preset field (repeatable); seed and device too")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    run.add_argument("--scheduler", metavar="S",
                     help="where the chapter's grids run: 'local:N' (a dask LocalCluster of N workers), a dask scheduler "
                          "address such as tcp://host:8786, or None (in process); default: the preset's. "
                          "The same as -p scheduler=S")
    run.add_argument("--out", metavar="DIR", help="output folder (default: runs/CHAPTER-PRESET); "
                     "a run whose claims fail goes to DIR.failed. With --all, the folder of every chapter's "
                     "CHAPTER-PRESET (default: runs)")
    run.add_argument("-q", "--quiet", action="store_true",
                     help="no live progress (current cell, elapsed time, progress bars) on stderr")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="every chapter's claims as one table; non-zero exit on a failure")
    check.add_argument("dir", nargs="?", metavar="PATH",
                       help="a claims.json, an executed notebook, or a folder: every claims.json under it (else its "
                            "executed notebooks); default: the committed notebooks")
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
