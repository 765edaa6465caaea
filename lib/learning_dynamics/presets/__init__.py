"""Each chapter's ``smoke`` / ``book`` / ``paper`` sizes, validated.

A chapter defines a frozen dataclass deriving from :class:`ChapterPreset` in
its own submodule of this package, declares each field with :func:`param`
(default, allowed range, a one-line help), and registers its three sizes with
:func:`register`. Submodules are discovered automatically, so adding a chapter
touches no shared file.

>>> cfg = resolve("feedback_principle", "smoke", seed=1)
>>> cfg.seed
1
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any

from ..validation import check_choice, check_device, check_float, check_int

PRESET_NAMES = ("smoke", "book", "paper")


def param(default, *, low=None, high=None, strict_low=False, choices=None, help: str = ""):
    """A preset field with its allowed range, checked when the preset is built."""
    kind = "int" if isinstance(default, int) and not isinstance(default, bool) else "float"
    if choices is not None:
        kind = "choice"
    elif isinstance(default, tuple):
        kind = "tuple"
    meta = {"kind": kind, "low": low, "high": high, "strict_low": strict_low, "choices": choices, "help": help}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ChapterPreset:
    """Fields every chapter has; subclasses add their own with :func:`param`."""

    preset: str = "book"
    seed: int = param(0, low=0, help="seed of every random draw in the chapter")
    device: str = "cpu"

    def __post_init__(self):
        check_choice("preset", self.preset, PRESET_NAMES)
        check_device("device", self.device)
        for f in dataclasses.fields(self):
            meta = f.metadata
            if not meta:
                continue
            value = getattr(self, f.name)
            if meta["kind"] == "int":
                check_int(f.name, value, low=meta["low"], high=meta["high"])
            elif meta["kind"] == "float":
                check_float(f.name, value, low=meta["low"], high=meta["high"], strict_low=meta["strict_low"])
            elif meta["kind"] == "choice":
                check_choice(f.name, value, meta["choices"])
            elif meta["kind"] == "tuple":
                if isinstance(value, list):  # papermill and JSON/YAML parameters have lists, not tuples
                    object.__setattr__(self, f.name, tuple(value))
                elif not isinstance(value, tuple):
                    raise ValueError(f"{f.name} must be a tuple (or list); got {value!r}")

    def tunable(self) -> dict[str, str]:
        """Chapter fields a reader may override, with their allowed range."""
        return {f.name: describe_field(f) for f in dataclasses.fields(self) if f.name not in ("preset", "device")}


def describe_field(f: dataclasses.Field) -> str:
    """``"int >= 0: seed of ..."`` for listings and error messages."""
    meta = f.metadata
    if not meta:
        return ""
    if meta["kind"] == "choice":
        allowed = "one of " + ", ".join(map(repr, meta["choices"]))
    else:
        low, high = meta["low"], meta["high"]
        lo_sym = ">" if meta["strict_low"] else ">="
        if low is not None and high is not None:
            allowed = f"{meta['kind']} in {'(' if meta['strict_low'] else '['}{low}, {high}]"
        elif low is not None:
            allowed = f"{meta['kind']} {lo_sym} {low}"
        else:
            allowed = meta["kind"]
    return f"{allowed}: {meta['help']}" if meta["help"] else allowed


_REGISTRY: dict[str, tuple[type[ChapterPreset], dict[str, dict[str, Any]]]] = {}


def register(chapter: str, cls: type[ChapterPreset], *, smoke: dict, book: dict, paper: dict) -> None:
    """Record a chapter's preset class and the field values of its three sizes."""
    _REGISTRY[chapter] = (cls, {"smoke": smoke, "book": book, "paper": paper})


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


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
    overrides = dict(overrides or {})
    known = {f.name for f in dataclasses.fields(cls)} - {"preset", "seed", "device"}
    for name in overrides:
        if name not in known:
            raise ValueError(
                f"unknown parameter {name!r} for chapter {chapter!r}; allowed: {', '.join(sorted(known))}"
            )
    values = {**sizes[preset], **overrides}
    return cls(preset=preset, seed=seed, device=device, **values)


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


def fields_of(chapter: str) -> dict[str, str]:
    """Each overridable parameter of a chapter with its allowed range and help."""
    _discover()
    check_choice("chapter", chapter, sorted(_REGISTRY))
    cls, _ = _REGISTRY[chapter]
    return {f.name: describe_field(f) for f in dataclasses.fields(cls) if f.metadata}
