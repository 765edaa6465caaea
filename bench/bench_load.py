"""Each chapter's `book` wall time idle and with two CPU-bound processes beside it (target: at most 2.5x).

Two busy processes on two cores leave a chapter about half the CPU, so a fair
slowdown is about 2x. Before the library's thread policy (learning_dynamics.threads)
spinning OpenMP workers made it 6-10x. Both times come from the same run.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 2.5
BUSY = "while True: pass"


def book_time(notebook: Path, out: Path) -> float:
    import papermill as pm

    start = time.perf_counter()
    pm.execute_notebook(str(notebook), str(out), parameters={"preset": "book"}, kernel_name="python3",
                        cwd=str(ROOT), progress_bar=False)
    return time.perf_counter() - start


def rows() -> list[dict]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
            idle = book_time(notebook, Path(tmp) / notebook.name)
            busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(2)]
            try:
                loaded = book_time(notebook, Path(tmp) / notebook.name)
            finally:
                for process in busy:
                    process.kill()
                    process.wait()
            ratio = loaded / idle
            out.append({"benchmark": f"{notebook.stem} book under load", "batched_s": idle, "loop_s": loaded,
                        "ratio": ratio, "note": f"idle vs 2 busy processes; target <= {TARGET}x: "
                                                f"{'yes' if ratio <= TARGET else 'NO'}"})
            print(f"    {notebook.stem}: idle {idle:.1f} s, loaded {loaded:.1f} s, {ratio:.2f}x", flush=True)
    return out


if __name__ == "__main__":
    import os

    os.environ.setdefault("LD_PROGRESS", "0")
    rows()
