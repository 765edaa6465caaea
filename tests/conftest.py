"""Shared test setup: no progress bars, a headless matplotlib, float64 checks."""

import os
from pathlib import Path

os.environ.setdefault("LD_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
