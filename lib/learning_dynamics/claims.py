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

A measured value that is not finite (a half time the run never reached, a
maximum over no cases) does not stop the chapter: the claim fails with status
"not reached" ("not reached in this run" in the tables), and :func:`report`
raises on it like on any other failure, after the table has been shown and
glued, so that a rerun can record what it measured.
"""

from __future__ import annotations

import ast
import json
import math
from dataclasses import asdict, dataclass, fields

import numpy as np


class ClaimFailed(AssertionError):
    """Raised by :func:`report` when a claim fails, is not reached, or a known discrepancy passes."""


NOT_REACHED = "not reached"
STATUSES = ("pass", "FAIL", "does not reproduce", "unexpectedly passes", NOT_REACHED)
STATUS_LABELS = {NOT_REACHED: "not reached in this run"}  # how the tables show a status, where it differs


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
    def reached(self) -> bool:
        """Whether the measured value is finite (a NaN half time was never reached)."""
        return math.isfinite(self.ours)

    @property
    def status(self) -> str:
        if not self.reached:
            return NOT_REACHED
        if self.known_discrepancy:
            return "unexpectedly passes" if self.passed else "does not reproduce"
        return "pass" if self.passed else "FAIL"

    @property
    def ok(self) -> bool:
        """As declared: a pass, or a known discrepancy that still fails; never a value not reached."""
        return self.reached and self.passed != bool(self.known_discrepancy)

    @property
    def label(self) -> str:
        """The status as the tables show it."""
        return STATUS_LABELS.get(self.status, self.status)


def _measured(value) -> float:
    """The measured value as a float; NaN or inf is kept (the claim is then not reached)."""
    return float(value)


def close(statement, ours, expected, *, rtol=None, atol=None, figure="", known_discrepancy="",
          machine_dependent=False) -> Claim:
    """|ours - expected| <= atol + rtol |expected|."""
    if rtol is None and atol is None:
        raise ValueError("close() needs rtol or atol")
    ours = _measured(ours)
    expected = float(expected)
    bound = (atol or 0.0) + (rtol or 0.0) * abs(expected)
    parts = [f"rel {rtol:g}" if rtol else "", f"abs {atol:g}" if atol else ""]
    return Claim(statement, _fmt(expected), ours, " + ".join(p for p in parts if p),
                 math.isfinite(ours) and abs(ours - expected) <= bound, figure, known_discrepancy, machine_dependent)


def below(statement, ours, bound, *, paper=None, figure="", known_discrepancy="", machine_dependent=False) -> Claim:
    """ours < bound (an error, a drift, a distance)."""
    ours = _measured(ours)
    return Claim(statement, paper or f"< {_fmt(bound)}", ours, f"< {_fmt(bound)}",
                 math.isfinite(ours) and ours < bound, figure, known_discrepancy, machine_dependent)


def above(statement, ours, bound, *, paper=None, figure="", known_discrepancy="", machine_dependent=False) -> Claim:
    """ours > bound."""
    ours = _measured(ours)
    return Claim(statement, paper or f"> {_fmt(bound)}", ours, f"> {_fmt(bound)}",
                 math.isfinite(ours) and ours > bound, figure, known_discrepancy, machine_dependent)


def fraction(statement, flags, *, paper="all", need=1.0, figure="", known_discrepancy="", machine_dependent=False) -> Claim:
    """The fraction of True in ``flags`` is at least ``need`` (1.0 = every case); no cases: not reached."""
    flags = np.asarray(flags, dtype=bool)
    share = float(flags.mean()) if flags.size else math.nan
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


def rounded(x: float | None, digits: int = 3) -> str:
    """Significant-figure rounding, so that reruns print the same text (None, a record's not reached: nan)."""
    if x is None:
        return "nan"
    if x == 0 or not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"


def table_markdown(claims: list[Claim]) -> str:
    """A Markdown table: statement, paper, ours, tolerance, status."""
    lines = ["| claim | paper / theory | ours | tolerance | status | figure |", "|---|---|---|---|---|---|"]
    for c in claims:
        status = c.label if not c.known_discrepancy or not c.reached else f"{c.status}: {c.known_discrepancy}"
        figure = f"{{numref}}`{c.figure}`" if c.figure else ""
        cells = (c.statement, c.paper, shown(c), c.tolerance, status, figure)
        lines.append("| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |")
    if any(c.machine_dependent for c in claims):
        lines += ["", MACHINE_NOTE]
    return "\n".join(lines)


def table_text(claims: list[Claim]) -> str:
    """Plain-text table with rounded numbers, for terminals and tests (the notebooks show :func:`table_markdown`)."""
    rows = [(c.statement, c.paper, shown(c), c.tolerance, c.label) for c in claims]
    head = ("claim", "paper / theory", "ours", "tolerance", "status")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(5)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def to_records(claims: list[Claim]) -> list[dict]:
    """JSON-ready dicts (with ``status`` and ``ours`` rounded for stable files; null where not reached)."""
    out = []
    for c in claims:
        record = asdict(c)
        # machine_dependent right before ours, so that the regression check's sanitizer can mask that value
        record = {"statement": c.statement, "paper": c.paper, "machine_dependent": c.machine_dependent,
                  **{k: v for k, v in record.items() if k not in ("statement", "paper", "machine_dependent")}}
        record["ours"] = float(rounded(c.ours, 6)) if c.reached else None  # strict JSON has no NaN
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


RECORD_FIELDS = ("statement", "paper", "machine_dependent", "ours", "tolerance", "passed", "figure",
                 "known_discrepancy", "status")  # every record has all of them, in this order
_TEXT_FIELDS = ("statement", "paper", "tolerance", "figure", "known_discrepancy", "status")


def from_glued(glued) -> list[Claim]:
    """The claims of a ``{"chapter": ..., "claims": [records]}`` object, checked against the schema.

    Raises ValueError with a one-line message that names the field, e.g.
    ``claims[2].passed must be true or false; got 'yes'``.
    """
    if not isinstance(glued, dict):
        raise ValueError(f"expected an object with 'chapter' and 'claims'; got {type(glued).__name__}")
    chapter = glued.get("chapter")
    if not isinstance(chapter, str) or not chapter:
        raise ValueError(f"field 'chapter' must be a non-empty string; got {chapter!r}")
    records = glued.get("claims")
    if not isinstance(records, list):
        raise ValueError(f"field 'claims' must be a list of claim records; got {_kind(records)}")
    if not records:
        raise ValueError("field 'claims' is empty: a chapter checks at least one claim")
    return from_records(records)


def from_records(records: list[dict]) -> list[Claim]:
    """Claims rebuilt from :func:`to_records` output; a malformed record or a status that disagrees is an error."""
    return [_from_record(r, f"claims[{i}]") for i, r in enumerate(records)]


def _kind(value) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]


def _from_record(r, where: str) -> Claim:
    if not isinstance(r, dict):
        raise ValueError(f"{where} must be an object; got {_kind(r)}")
    missing = [n for n in RECORD_FIELDS if n not in r]
    if missing:
        raise ValueError(f"{where} ({r.get('statement', '?')!r}) lacks field {', '.join(missing)}")
    for name in _TEXT_FIELDS:
        if not isinstance(r[name], str):
            raise ValueError(f"{where}.{name} must be a string; got {_kind(r[name])}")
    for name in ("passed", "machine_dependent"):
        if not isinstance(r[name], bool):
            raise ValueError(f"{where}.{name} must be true or false; got {_kind(r[name])}")
    ours = r["ours"]
    if ours is None:
        ours = math.nan
    elif isinstance(ours, bool) or not isinstance(ours, (int, float)):
        raise ValueError(f"{where}.ours must be a number (null where not reached); got {_kind(ours)}")
    if r["status"] not in STATUSES:
        raise ValueError(f"{where}.status must be one of {', '.join(map(repr, STATUSES))}; got {r['status']!r}")
    claim = Claim(r["statement"], r["paper"], float(ours), r["tolerance"], r["passed"], r["figure"],
                  r["known_discrepancy"], r["machine_dependent"])
    if claim.passed and not claim.reached:
        raise ValueError(f"{where}.passed is true but ours is {r['ours']!r} (a value not reached cannot pass)")
    if r["status"] != claim.status:
        raise ValueError(f"{where}.status: claim {claim.statement!r}: recorded status {r['status']!r} "
                         f"but passed={str(claim.passed).lower()} gives {claim.status!r}")
    return claim


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
    bad = [c for c in claims if not c.ok]  # raised only now: the table is shown and glued above
    if bad:
        raise ClaimFailed("; ".join(f"{c.statement}: {c.status} (ours {rounded(c.ours)}, {c.tolerance})" for c in bad))
