"""Claims: a paper's statement, checked against our own numbers.

A :class:`Claim` holds what the paper (or the closed form) says, what we
measured, the tolerance, and whether it passed. The constructors below are
the only ways to make one, so every claim is a real comparison that can
fail. :func:`report` prints the rounded table that nbval compares, glues it
for the book's scorecard, and raises :class:`ClaimFailed` if a claim fails.

A result known not to reproduce is declared with ``known_discrepancy=...``:
the table shows it as "does not reproduce" with the reason, and it becomes
an error if it starts to pass (like a strict xfail), so the book never keeps
a stale excuse.

A value from a float32 training run whose digits depend on the machine's
kernels (a float64 rerun of the spring-block network moves its curvatures by
up to 30%) is declared with ``machine_dependent=True``: the tables mark it
with a dagger, and the regression check (tests/sanitize.cfg) compares its
status but not its digits.
"""

from __future__ import annotations

import ast
import json
import math
from dataclasses import asdict, dataclass, fields

import numpy as np


class ClaimFailed(AssertionError):
    """Raised by :func:`report` when a claim fails or a known discrepancy passes."""


@dataclass(frozen=True)
class Claim:
    statement: str
    paper: str
    ours: float
    tolerance: str
    passed: bool
    figure: str = ""
    known_discrepancy: str = ""
    machine_dependent: bool = False

    @property
    def status(self) -> str:
        if self.known_discrepancy:
            return "unexpectedly passes" if self.passed else "does not reproduce"
        return "pass" if self.passed else "FAIL"

    @property
    def ok(self) -> bool:
        return self.passed != bool(self.known_discrepancy)


def _finite(name: str, value) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"claim {name!r}: measured value is not finite ({value})")
    return value


def close(statement, ours, expected, *, rtol=None, atol=None, figure="", known_discrepancy="",
          machine_dependent=False) -> Claim:
    """|ours - expected| <= atol + rtol |expected|."""
    if rtol is None and atol is None:
        raise ValueError("close() needs rtol or atol")
    ours = _finite(statement, ours)
    expected = float(expected)
    bound = (atol or 0.0) + (rtol or 0.0) * abs(expected)
    parts = [f"rel {rtol:g}" if rtol else "", f"abs {atol:g}" if atol else ""]
    return Claim(statement, _fmt(expected), ours, " + ".join(p for p in parts if p),
                 abs(ours - expected) <= bound, figure, known_discrepancy, machine_dependent)


def below(statement, ours, bound, *, paper=None, figure="", known_discrepancy="", machine_dependent=False) -> Claim:
    """ours < bound (an error, a drift, a distance)."""
    ours = _finite(statement, ours)
    return Claim(statement, paper or f"< {_fmt(bound)}", ours, f"< {_fmt(bound)}",
                 ours < bound, figure, known_discrepancy, machine_dependent)


def above(statement, ours, bound, *, paper=None, figure="", known_discrepancy="", machine_dependent=False) -> Claim:
    """ours > bound."""
    ours = _finite(statement, ours)
    return Claim(statement, paper or f"> {_fmt(bound)}", ours, f"> {_fmt(bound)}",
                 ours > bound, figure, known_discrepancy, machine_dependent)


def fraction(statement, flags, *, paper="all", need=1.0, figure="", known_discrepancy="", machine_dependent=False) -> Claim:
    """The fraction of True in ``flags`` is at least ``need`` (1.0 = every case)."""
    flags = np.asarray(flags, dtype=bool)
    if flags.size == 0:
        raise ValueError(f"claim {statement!r}: no cases to check")
    share = float(flags.mean())
    tolerance = f"all {flags.size}" if need >= 1 else f">= {need:.0%} of {flags.size}"
    return Claim(statement, paper, share, tolerance, share >= need, figure, known_discrepancy, machine_dependent)


MACHINE_MARK = "\u2020"  # dagger: a float32 value whose digits depend on the machine
MACHINE_NOTE = (f"{MACHINE_MARK} trained in float32: these digits depend on the machine's kernels; "
                "the regression check compares the status, not the value.")


def shown(c: Claim) -> str:
    """The rounded value as the tables print it, marked when its digits depend on the machine."""
    return rounded(c.ours) + (MACHINE_MARK if c.machine_dependent else "")


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def rounded(x: float, digits: int = 3) -> str:
    """Significant-figure rounding, so that reruns print the same text."""
    if x == 0 or not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"


def table_markdown(claims: list[Claim]) -> str:
    """A Markdown table: statement, paper, ours, tolerance, status."""
    lines = ["| claim | paper / theory | ours | tolerance | status | figure |", "|---|---|---|---|---|---|"]
    for c in claims:
        status = c.status if not c.known_discrepancy else f"{c.status}: {c.known_discrepancy}"
        figure = f"{{numref}}`{c.figure}`" if c.figure else ""
        cells = (c.statement, c.paper, shown(c), c.tolerance, status, figure)
        lines.append("| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |")
    if any(c.machine_dependent for c in claims):
        lines += ["", MACHINE_NOTE]
    return "\n".join(lines)


def table_text(claims: list[Claim]) -> str:
    """Plain-text table with rounded numbers, for terminals and tests (the notebooks show :func:`table_markdown`)."""
    rows = [(c.statement, c.paper, shown(c), c.tolerance, c.status) for c in claims]
    head = ("claim", "paper / theory", "ours", "tolerance", "status")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(5)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def to_records(claims: list[Claim]) -> list[dict]:
    """JSON-ready dicts (with ``status`` and ``ours`` rounded for stable files)."""
    out = []
    for c in claims:
        record = asdict(c)
        # machine_dependent right before ours, so that the regression check's sanitizer can mask that value
        record = {"statement": c.statement, "paper": c.paper, "machine_dependent": c.machine_dependent,
                  **{k: v for k, v in record.items() if k not in ("statement", "paper", "machine_dependent")}}
        record["ours"] = float(rounded(c.ours, 6)) if math.isfinite(c.ours) else c.ours
        record["status"] = c.status
        out.append(record)
    return out


GLUE_NAME = "claims"  # JSON records, read by the book's scorecard and the command line


def records_from_notebook(nb: dict) -> dict | None:
    """The ``{"chapter": ..., "claims": [records]}`` that a notebook (as a dict) glued, or None.

    myst-nb stores a glued string as a ``display_data`` output whose metadata
    holds ``scrapbook.name`` and whose data is the string's repr under
    ``<scrapbook.mime_prefix>text/plain``.
    """
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            book = output.get("metadata", {}).get("scrapbook", {})
            text = output.get("data", {}).get(book.get("mime_prefix", "") + "text/plain")
            if book.get("name") == GLUE_NAME and text is not None:
                return parse_glued(text)
    return None


def parse_glued(text: str) -> dict | None:
    """The {"chapter", "claims"} object from the text/plain repr that glue stores; None if it is not one."""
    try:
        value = json.loads(ast.literal_eval(text))
    except (ValueError, SyntaxError, TypeError):
        return None
    return value if isinstance(value, dict) and "claims" in value else None


def from_records(records: list[dict]) -> list[Claim]:
    """Claims rebuilt from :func:`to_records` output; a record whose status disagrees is an error."""
    names = [f.name for f in fields(Claim)]
    out = []
    for r in records:
        missing = [n for n in names[:5] if n not in r]
        if missing:
            raise ValueError(f"claim record {r.get('statement', r)!r} lacks {', '.join(missing)}")
        claim = Claim(**{n: r[n] for n in names if n in r})
        if r.get("status", claim.status) != claim.status:
            raise ValueError(f"claim {claim.statement!r}: recorded status {r['status']!r} "
                             f"but passed={claim.passed} gives {claim.status!r}")
        out.append(claim)
    return out


def report(claims: list[Claim], chapter: str) -> None:
    """Show the rounded table, glue it for the scorecard, and raise if a claim is not as declared."""
    from IPython.display import Markdown, display

    if not claims:
        raise ValueError("report() needs at least one claim")
    display(Markdown(table_markdown(claims)))
    try:
        from myst_nb import glue

        glue(GLUE_NAME, json.dumps({"chapter": chapter, "claims": to_records(claims)}), display=False)
    except ImportError:  # plain Jupyter without myst-nb: the table above is enough
        pass
    bad = [c for c in claims if not c.ok]
    if bad:
        raise ClaimFailed("; ".join(f"{c.statement}: {c.status} (ours {rounded(c.ours)}, {c.tolerance})" for c in bad))
