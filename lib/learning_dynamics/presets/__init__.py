"""Each chapter's ``smoke`` / ``book`` / ``paper`` sizes, validated.

A chapter defines a frozen dataclass deriving from :class:`ChapterPreset` in
its own submodule of this package, declares each field with :func:`param`
(default, allowed values as a :mod:`~learning_dynamics.validation`
constraint, a one-line help), and registers its three sizes with
:func:`register`. Submodules are discovered automatically, so adding a chapter
touches no shared file. Cross-field rules go in the chapter's
``__post_init__``, and its :meth:`ChapterPreset.memory_needs` estimates what
its largest arrays need, so that :func:`resolve` refuses a run that cannot fit
before any work starts.

>>> cfg = resolve("feedback_principle", "smoke", seed=1)
>>> cfg.seed
1
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import json
import math
import os
import pkgutil
from dataclasses import dataclass, field
from typing import Any

from ..sweep import Scheduler
from ..validation import InstanceOf, Integer, Optional, Options, Real, Sequence, check_choice, check_device

PRESET_NAMES = ("smoke", "book", "paper")
MAX_SEED = 2**32 - 1  # every generator the chapters use (numpy, torch) takes it, with the offsets chapters add


def param(default, *, low=None, high=None, strict_low=False, choices=None, items=None, min_len=0, max_len=None,
          help: str = ""):
    """A preset field and its allowed values, checked when the preset is built.

    A scalar takes a range (``low``, ``high``, ``strict_low``) or ``choices``;
    a tuple takes ``items``, the constraint every entry meets (for example
    ``Real(low=0.0)``), and a length range.
    """
    if choices is not None:
        constraint = Options(*choices)
    elif isinstance(default, tuple):
        if items is None:
            raise ValueError("a tuple field needs items=, the constraint of its entries")
        constraint = Sequence(items, min_len=min_len, max_len=max_len)
    elif isinstance(default, int) and not isinstance(default, bool):
        constraint = Integer(low, high)
    else:
        constraint = Real(low, high, strict_low=strict_low)
    return field(default=default, metadata={"constraint": constraint, "help": help})


@dataclass(frozen=True)
class ChapterPreset:
    """Fields every chapter has; subclasses add their own with :func:`param`."""

    preset: str = "book"
    seed: int = param(0, low=0, high=MAX_SEED, help="seed of every random draw in the chapter")
    device: str = "cpu"
    scheduler: str | None = field(default=None, metadata={"constraint": Scheduler(), "help": (
        "where the chapter's grids run: None (in this process), 'local:N' (a dask LocalCluster of N workers) "
        "or a dask scheduler address")})
    cache: str | None = field(default=None, repr=False, metadata={"constraint": Optional(InstanceOf(
        str, description="a folder (a string)")), "help": (
        "a folder where the grids' finished chunks are kept, so that an interrupted run resumes; "
        "`run` sets OUT.cache. Results do not depend on it (not shown with the other fields)")})

    def __post_init__(self):
        check_choice("preset", self.preset, PRESET_NAMES)
        check_device("device", self.device)
        for f in dataclasses.fields(self):
            if "constraint" in f.metadata:
                checked = f.metadata["constraint"].check(f.name, getattr(self, f.name))
                if isinstance(checked, tuple):  # papermill and JSON parameters give lists
                    object.__setattr__(self, f.name, checked)

    def memory_needs(self) -> dict[str, float]:
        """Bytes the largest arrays of the run need, keyed by the field that sets their size (chapters override)."""
        return {}

    def check_memory(self) -> None:
        """Refuse, before any work, a run whose arrays cannot fit in this machine's (or GPU's) memory."""
        have = available_memory(self.device)
        for name, need in self.memory_needs().items():
            if need > have:
                raise ValueError(f"{name} = {getattr(self, name)!r} would need about {_gigabytes(need)} of memory; "
                                 f"this {'GPU' if self.device != 'cpu' else 'machine'} has {_gigabytes(have)} "
                                 f"(lower {name}, or run on a larger machine)")

    def connect(self):
        """The chapter's :func:`~learning_dynamics.sweep.client`: its grids run on ``scheduler``, chunks cached in ``cache``.

        The cache's key is the chapter and every field but ``scheduler`` and
        ``cache`` (neither changes a result), so a rerun with the same
        parameters resumes from the chunks an interrupted run finished.
        """
        from .. import sweep

        cache = None
        if self.cache is not None:
            key = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("scheduler", "cache")}
            cache = sweep.Cache(self.cache, key={"chapter": chapter_of(self), **key})
        return sweep.client(self.scheduler, cache=cache)

    def tunable(self) -> dict[str, str]:
        """Chapter fields a reader may override, with their allowed values."""
        return {f.name: describe_field(f) for f in dataclasses.fields(self) if f.name not in ("preset", "device")}


def describe_field(f: dataclasses.Field) -> str:
    """``"an integer >= 0: seed of ..."`` for listings and error messages."""
    if "constraint" not in f.metadata:
        return ""
    allowed, help = f.metadata["constraint"].describe(), f.metadata["help"]
    return f"{allowed}: {help}" if help else allowed


def available_memory(device: str = "cpu") -> float:
    """Bytes of memory on ``device``: the GPU's total, or this machine's (or its cgroup's limit, if lower)."""
    if device != "cpu":
        import torch

        try:
            return float(torch.cuda.get_device_properties(torch.device(device)).total_memory)
        except (AssertionError, RuntimeError):  # no CUDA build here: the device check reports that, not this one
            return float("inf")
    total = float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        total = min(total, float(limit)) if limit.isdigit() else total
    except OSError:
        pass
    return total


def _gigabytes(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def parse_overrides(overrides) -> dict:
    """``overrides`` as a dict: a dict, None, or a JSON object in a string (papermill's ``-p overrides '{...}'``)."""
    if overrides is None:
        return {}
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError as err:
            raise ValueError(f"overrides must be a dict or a JSON object such as '{{\"lr\": 0.002}}'; "
                             f"got {overrides!r} ({err.msg})") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"overrides must be a dict or a JSON object such as '{{\"lr\": 0.002}}'; got {overrides!r}")
    return dict(overrides)


_REGISTRY: dict[str, tuple[type[ChapterPreset], dict[str, dict[str, Any]]]] = {}
_PAPER: dict[str, tuple[dict[str, dict[str, Any]], str]] = {}
DIFFERS = "differs: "  # how a paper value that the `paper` preset cannot take is documented


def register(chapter: str, cls: type[ChapterPreset], *, smoke: dict, book: dict, paper: dict,
             paper_source: dict | None = None, paper_note: str = "") -> None:
    """Record a chapter's preset class and the field values of its three sizes.

    ``paper_source`` maps a field to the value the paper (or the authors' code)
    gives it, ``(value, "where it says so")``, or ``(value, "where",
    "differs: why")`` where the `paper` preset cannot take that value;
    :func:`paper_table` shows it against the presets. ``paper_note`` is a
    sentence printed under that table (for example, what the paper fixes that
    is not a preset field).
    """
    names = {f.name for f in dataclasses.fields(cls) if "constraint" in f.metadata}
    entries = {}
    for name, entry in (paper_source or {}).items():
        if name not in names:
            raise ValueError(f"paper_source of {chapter!r} names {name!r}, which is not one of its preset fields")
        if not isinstance(entry, tuple) or len(entry) not in (2, 3) or not all(isinstance(e, str) for e in entry[1:]):
            raise ValueError(f"paper_source[{name!r}] of {chapter!r} must be (value, source) or (value, source, note); "
                             f"got {entry!r}")
        value, source, note = (*entry, "") if len(entry) == 2 else entry
        if note and not (note.startswith(DIFFERS) and note[len(DIFFERS):].strip()):
            raise ValueError(f"the note of paper_source[{name!r}] of {chapter!r} must read {DIFFERS!r} + the reason")
        entries[name] = {"value": tuple(value) if isinstance(value, list) else value, "source": source, "note": note}
    _REGISTRY[chapter] = (cls, {"smoke": smoke, "book": book, "paper": paper})
    _PAPER[chapter] = (entries, paper_note)


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def chapter_of(cfg: ChapterPreset) -> str:
    """The chapter whose preset ``cfg`` is."""
    _discover()
    for chapter, (cls, _) in _REGISTRY.items():
        if type(cfg) is cls:
            return chapter
    raise ValueError(f"cfg must be a registered chapter's preset; got {type(cfg).__name__}")


def chapters() -> list[str]:
    """Every chapter that registered presets, sorted."""
    _discover()
    return sorted(_REGISTRY)


def resolve(chapter: str, preset: str = "book", *, seed: int = 0, device: str = "cpu", overrides: dict | None = None):
    """Build a chapter's validated preset, with reader overrides applied.

    Raises ``ValueError`` naming the bad parameter and its allowed range.
    """
    _discover()
    check_choice("chapter", chapter, sorted(_REGISTRY))
    check_choice("preset", preset, PRESET_NAMES)
    cls, sizes = _REGISTRY[chapter]
    overrides = parse_overrides(overrides)
    known = {f.name for f in dataclasses.fields(cls)} - {"preset", "seed", "device"}
    for name in overrides:
        if name not in known:
            raise ValueError(
                f"unknown parameter {name!r} for chapter {chapter!r}; allowed: {', '.join(sorted(known))}"
            )
    values = {**sizes[preset], **overrides}
    cfg = cls(preset=preset, seed=seed, device=device, **values)
    cfg.check_memory()
    return cfg


def start_chapter(chapter: str, preset: str = "book", *, seed: int = 0, device: str = "cpu",
                  overrides: dict | None = None):
    """A chapter notebook's setup, called once its imports are done: the resolved preset, in the book style.

    It also freezes Python's garbage collector on every object that exists by
    then (torch, matplotlib, the library). They live for the whole run, so
    full collections, and the one at the kernel's exit, no longer walk them:
    about 1-2 s less per chapter.
    """
    from ..plotting import use_style

    cfg = resolve(chapter, preset, seed=seed, device=device, overrides=overrides)
    use_style()
    gc.freeze()
    return cfg


def describe(chapter: str) -> list[dict]:
    """Each parameter a reader may set: name, allowed values, help, and its value at each preset (seed first)."""
    _discover()
    check_choice("chapter", chapter, sorted(_REGISTRY))
    cls, sizes = _REGISTRY[chapter]
    out = []
    for f in dataclasses.fields(cls):
        if "constraint" not in f.metadata:
            continue
        values = {p: sizes[p].get(f.name, f.default) for p in PRESET_NAMES}
        out.append({"name": f.name, "allowed": f.metadata["constraint"].describe(), "help": f.metadata["help"],
                    "values": values})
    return out


def fields_of(chapter: str) -> dict[str, str]:
    """Each overridable parameter of a chapter with its allowed range and help."""
    _discover()
    check_choice("chapter", chapter, sorted(_REGISTRY))
    cls, _ = _REGISTRY[chapter]
    return {f.name: describe_field(f) for f in dataclasses.fields(cls) if "constraint" in f.metadata}


def paper_source(chapter: str) -> dict[str, dict[str, Any]]:
    """What the paper (or the authors' code) sets each field to: ``{field: {"value", "source", "note"}}``.

    Only the fields the paper fixes appear; ``note`` is empty, or ``"differs: ..."``
    where the `paper` preset cannot follow it.
    """
    _discover()
    check_choice("chapter", chapter, sorted(_REGISTRY))
    entries, _ = _PAPER.get(chapter, ({}, ""))
    return {name: dict(entry) for name, entry in entries.items()}


def same_value(a, b) -> bool:
    """Whether two preset values are equal (tuples entry by entry, floats to rounding)."""
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return (isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b)
                and all(same_value(x, y) for x, y in zip(a, b)))
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        return a == b
    return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)


def _plain(value) -> str:
    if isinstance(value, (tuple, list)):
        return ", ".join(_plain(v) for v in value) if value else "(none)"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _cell(value) -> str:
    """A value or text as one Markdown table cell."""
    return _plain(value).replace("|", "\\|").replace("*", "\\*")


def paper_table(chapter: str) -> str:
    """A Markdown table of the paper's settings against the `paper` and `book` presets, one row per field it fixes.

    Columns: parameter | paper (source) | paper preset | book preset | note | help.
    The note is empty where the `paper` preset takes the paper's value, and
    ``differs: ...`` where it cannot. The chapter's ``paper_note`` follows the table.
    """
    entries = paper_source(chapter)
    _, note = _PAPER.get(chapter, ({}, ""))
    rows = {row["name"]: row for row in describe(chapter)}
    lines = []
    if entries:
        lines += ["| parameter | paper (source) | `paper` preset | `book` preset | note | help |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, entry in entries.items():
            row = rows[name]
            paper_cell = f"{_cell(entry['value'])} ({_cell(entry['source'])})"
            lines.append(f"| `{name}` | {paper_cell} | {_cell(row['values']['paper'])} | {_cell(row['values']['book'])} "
                         f"| {_cell(entry['note'])} | {_cell(row['help'])} |")
    else:
        lines.append("No preset value of this chapter is fixed by a source we could read, so none is compared.")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"
