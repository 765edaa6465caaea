#!/usr/bin/env bash
# bench/gpu_check.sh: does every chapter find on the GPU what it finds on the CPU?
#
# Runs every chapter at the smoke preset twice, `python -m learning_dynamics run --all --preset smoke
# --device cuda` and then `--device cpu` (into $OUT/device and $OUT/cpu; both are emptied first), and
# compares the two runs' claims.json (for a chapter whose claims failed, its CHAPTER-smoke.failed/claims.json),
# claim by claim, in order:
#   - statement: the same text (it names the claim, with a few numbers from the preset);
#   - status (pass, FAIL, not reached, does not reproduce, unexpectedly passes): exactly equal;
#   - the measured number (`ours`, which claims.json keeps to 6 significant digits; null where not reached,
#     which must be null on both), |cuda - cpu| <= rtol * max(|cuda|, |cpu|) + ATOL:
#       tight, rtol = RTOL = 1e-4 and ATOL = 1e-8, for claims computed deterministically in float64: the two
#         devices differ only in the order of their sums (about 1e-16 relative per operation, which long
#         trainings amplify a little), and the record's rounding to 6 digits alone is up to 1e-5 relative;
#       loose, rtol = RTOL_LOOSE = 0.5, for claims marked machine_dependent (float32 trainings, whose last
#         digits depend on the kernels and then grow through training: the claims module notes that even a
#         float64 rerun moves the spring-block curvatures by up to 30%), and for claims measured on a random
#         stream that the device draws (STOCHASTIC below: the trainer makes its generator on the parameters'
#         device, and CUDA's Philox stream is not the CPU's Mersenne Twister, so the GPU trains on another,
#         equally valid sample): the order of magnitude must agree; their status is the real check.
# It prints one row per claim and a count, and exits 0 when every claim agrees, 1 when a claim differs or a
# chapter stopped before its claims on either device, 2 when it cannot run (no .venv, no CUDA).
#
# Usage, from the repository root, on a machine with a GPU and a built .venv (`make .venv/.installed`):
#   bash bench/gpu_check.sh
# Environment: DEVICE (cuda; cuda:1; DEVICE=cpu runs the device half on the CPU too, to try the script on a
# machine without a GPU), OUT (runs/gpu-check), PRESET (smoke), PYTHON (.venv/bin/python), RTOL, ATOL,
# RTOL_LOOSE, STOCHASTIC (a regular expression matched at the start of "chapter: statement"), COMPARE_ONLY=1
# (compare the runs already in OUT, running nothing).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

PYTHON=${PYTHON:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-runs/gpu-check}
PRESET=${PRESET:-smoke}
export RTOL=${RTOL:-1e-4} ATOL=${ATOL:-1e-8} RTOL_LOOSE=${RTOL_LOOSE:-0.5}
# Claims measured on the trainer's random stream (see above); machine_dependent claims are loose anyway.
export STOCHASTIC=${STOCHASTIC:-"feedback_principle: (sigmoid = SGD|half-time ratios|linear model half time)|spring_block: DNN:"}

if [ ! -x "$PYTHON" ]; then
    echo "gpu_check: no $PYTHON; build the environment first (make .venv/.installed)" >&2
    exit 2
fi
case "$DEVICE" in
    cpu) echo "gpu_check: DEVICE=cpu: both halves on the CPU (the script's path, not a GPU check)" ;;
    cuda | cuda:[0-9]*)
        "$PYTHON" - "$DEVICE" <<'EOF' || exit 2
import sys

import learning_dynamics  # noqa: F401  (its thread policy before torch)
import torch

device = sys.argv[1]
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False"
             + ("; this is a CPU-only build of torch" if "+cpu" in torch.__version__ or torch.version.cuda is None else "")
             + "); run it on a machine with a GPU, or with DEVICE=cpu to try the script's path")
index = int(device.partition(":")[2] or 0)
if index >= torch.cuda.device_count():
    sys.exit(f"gpu_check: DEVICE={device}, but torch sees {torch.cuda.device_count()} CUDA device(s)")
print(f"gpu_check: {device} is {torch.cuda.get_device_name(index)} (torch {torch.__version__}, CUDA {torch.version.cuda})")
EOF
        ;;
    *) echo "gpu_check: DEVICE must be cuda, cuda:N or cpu; got '$DEVICE'" >&2; exit 2 ;;
esac

run_half() {  # run_half NAME DEVICE: every chapter into $OUT/NAME, its output also in $OUT/NAME.log
    local name=$1 device=$2 flag
    if [ "$device" = cpu ] || [ "$device" = cuda ]; then flag=(--device "$device"); else flag=(-p "device=$device"); fi
    rm -rf "${OUT:?}/$name" "$OUT/$name.log"
    mkdir -p "$OUT/$name"
    echo "gpu_check: every chapter at $PRESET on $device -> $OUT/$name"
    "$PYTHON" -m learning_dynamics run --all --preset "$PRESET" "${flag[@]}" --out "$OUT/$name" 2>&1 | tee "$OUT/$name.log"
    return 0  # a chapter that failed shows in the comparison
}

if [ "${COMPARE_ONLY:-0}" != 1 ]; then
    run_half device "$DEVICE"
    run_half cpu cpu
fi

exec "$PYTHON" - "$OUT" "$PRESET" "$DEVICE" <<'EOF'
import math
import os
import re
import sys
from pathlib import Path

from learning_dynamics import claims, cli

out, preset, device = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
label = device if device != "cpu" else "cpu (2nd)"
rtol, atol, loose = float(os.environ["RTOL"]), float(os.environ["ATOL"]), float(os.environ["RTOL_LOOSE"])
stochastic = re.compile(os.environ["STOCHASTIC"])


def chapter_claims(half: str, chapter: str):
    """(claims, where) of one chapter's run, or (None, why it has none)."""
    folder = out / half / f"{chapter}-{preset}"
    for source in (folder / "claims.json", cli.failed_folder(folder) / "claims.json"):
        if source.exists():
            return claims.from_glued(cli._glued_json(source)), source
    error = cli.failed_folder(folder) / cli.ERROR_FILE
    return None, error.read_text().strip() if error.exists() else f"no run in {folder}"


def number(x: float) -> str:
    return "null" if not math.isfinite(x) else f"{x:.6g}"


rows, bad, total = [], 0, 0
for chapter in cli.chapter_notebooks():
    ref, ref_where = chapter_claims("cpu", chapter)
    test, test_where = chapter_claims("device", chapter)
    if ref is None or test is None:
        why = "; ".join(f"{name}: {w}" for name, c, w in (("cpu", ref, ref_where), (label, test, test_where)) if c is None)
        rows.append((chapter, "(no claims)", "", "", "", "", "", "", "RUN STOPPED: " + why[:150]))
        bad += 1
        continue
    for k in range(max(len(ref), len(test))):
        total += 1
        a, b = (ref[k] if k < len(ref) else None), (test[k] if k < len(test) else None)
        if a is None or b is None:
            rows.append((chapter if k == 0 else "", (a or b).statement[:60], "", "", "", "", "", "",
                         f"MISSING on {'cpu' if a is None else label}"))
            bad += 1
            continue
        kind = "loose" if a.machine_dependent or b.machine_dependent or stochastic.match(f"{chapter}: {a.statement}") \
            else "tight"
        tol = loose if kind == "loose" else rtol
        verdicts = []
        if a.statement != b.statement:
            verdicts.append(f"STATEMENT ({b.statement[:40]!r})")
        if a.status != b.status:
            verdicts.append("STATUS")
        diff = ""
        if math.isfinite(a.ours) and math.isfinite(b.ours):
            scale = max(abs(a.ours), abs(b.ours))
            gap = abs(a.ours - b.ours)
            diff = f"{gap / scale:.1e}" if scale else "0"
            if gap > tol * scale + atol:
                verdicts.append("NUMBER")
        elif math.isfinite(a.ours) != math.isfinite(b.ours):
            verdicts.append("NUMBER")
        bad += bool(verdicts)
        rows.append((chapter if k == 0 else "", a.statement[:60], a.status, b.status, number(a.ours), number(b.ours),
                     diff, f"{kind} {tol:g}", ", ".join(verdicts) or "same"))

print()
print(cli.format_table(("chapter", "claim", "cpu", label, "cpu ours", f"{label} ours", "rel diff", "rtol",
                        "verdict"), rows))
print(f"\n{total} claims in {len(cli.chapter_notebooks())} chapters at {preset}: "
      f"{'all agree' if not bad else f'{bad} differ (or a run stopped)'}; statuses exact, numbers within rtol x max + "
      f"{atol:g} (tight: float64 deterministic; loose: float32 or the device's random stream)")
sys.exit(1 if bad else 0)
EOF
