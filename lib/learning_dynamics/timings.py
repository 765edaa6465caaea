"""Print each chapter's last execution time from the book's jupyter-cache.

``make book`` calls this after the build (``python -m learning_dynamics.timings``),
so the timings the status page shows are also printed in the terminal.
"""

from __future__ import annotations

import sys
from pathlib import Path


def cached_timings(cache_dir: str | Path = "_build/.jupyter_cache") -> dict[str, float]:
    """Notebook path -> seconds of its last cached execution."""
    from jupyter_cache import get_cache

    cache = get_cache(str(cache_dir))
    out = {}
    for record in cache.list_cache_records():
        data = record.data or {}
        if "execution_seconds" in data:
            out[Path(record.uri).name] = float(data["execution_seconds"])
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cache_dir = Path(argv[0]) if argv else Path("_build/.jupyter_cache")
    if not cache_dir.exists():
        print(f"no execution cache at {cache_dir}")
        return 0
    timings = cached_timings(cache_dir)
    print("chapter execution times (book preset, from the execution cache):")
    for name, seconds in sorted(timings.items()):
        print(f"  {name:40s} {seconds:7.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
