"""Every chapter's claims at seeds 0-9 of the smoke preset (``seed`` is a reader's parameter)."""

import subprocess
import sys

import pytest

from conftest import NOTEBOOKS, ROOT


@pytest.mark.slow
@pytest.mark.parametrize("chapter", [nb.stem for nb in NOTEBOOKS])
def test_every_claim_holds_at_seeds_0_to_9(chapter):
    result = subprocess.run([sys.executable, "-m", "learning_dynamics.seeds", chapter, "--preset", "smoke", "--seeds", "0-9"],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


SCRIPT = """
import json, sys
from learning_dynamics import claims, seeds
import torch
out = {}
for chapter in sys.argv[1:]:
    table = seeds.run(chapter, "smoke", [0])[0]
    out[chapter] = claims.table_text(table)
print(json.dumps({"threads": torch.get_num_threads(), "tables": out}))
"""


@pytest.mark.slow
def test_claims_print_the_same_with_one_or_two_threads():
    import json
    import os

    runs = []
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        result = subprocess.run([sys.executable, "-c", SCRIPT, "feedback_principle", "neural_race"], env=env,
                                capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    assert [r["threads"] for r in runs] == [1, 2]
    assert runs[0]["tables"] == runs[1]["tables"]
