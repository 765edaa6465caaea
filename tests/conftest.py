"""Shared test setup: no progress bars (the kernels keep their inline figures, which nbval compares).

Also the one book build of a test session (``built_book``), shared by
tests/test_book.py and tests/test_browser.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import learning_dynamics  # noqa: F401  first: its CPU thread policy applies before any test imports torch

os.environ.setdefault("LD_PROGRESS", "0")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
JB = Path(sys.executable).with_name("jupyter-book")


def build_book(out: Path) -> Path:
    """Build the book into ``out`` with -W, execution off; return the html folder."""
    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    local = config["sphinx"].get("local_extensions", {})  # paths are read relative to the config file
    config["sphinx"]["local_extensions"] = {name: str(ROOT / path) for name, path in local.items()}
    config_path = out / "_config.yml"
    config_path.write_text(yaml.safe_dump(config))
    result = subprocess.run([str(JB), "build", str(ROOT), "--path-output", str(out), "--config", str(config_path), "-W", "--keep-going"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out / "_build" / "html"


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """Build once per test session; execution is off because nbval re-executes the notebooks."""
    return build_book(tmp_path_factory.mktemp("book"))
