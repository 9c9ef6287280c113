#!/usr/bin/env bash
# The CUDA paths on one GPU, in at most GPU_CHECK_BUDGET seconds (default 480):
#   cuda              torch sees a CUDA device (name, memory, versions into the log)
#   cuda-tests        pytest -m cuda tests/test_cuda.py: bf16 / autocast / compiled generation, understanding,
#                     feature extraction, a few training steps, on tiny models
#   mar-sampling      MAR-B shapes, random weights, batch 1/16/64, eager and torch.compile'd, interleaved
#   harmon-sampling   Harmon-0.5B shapes at 512 px, random weights, batch 1/16/64, eager and compiled; answering
#   extraction-vit    a random timm ViT-B/16: extract_features against a bare loop (bf16 autocast)
# Each step runs under its own timeout (cut to what is left of the budget; a step with too little left is
# skipped); a failed or timed-out step is recorded and the next one runs. Writes under $OUT (default
# ./gpu-check-out): mar_sampling.json, harmon_inference.json, extraction_vit.json, cuda-tests.xml, gpu-check.log
# (every step's output), summary.json and summary.txt. Exit status 0 when every step passed, else 1.
# Needs only the repository's .venv (PYTHON overrides it), no make.
#
# GPU_CHECK_TINY=1 runs the same steps at tiny sizes on the CPU (compiling with the eager backend: Dynamo traces,
# nothing is generated), to check the script itself; a loaded CPU can spend a minute importing torch, so there the
# limits are GPU_CHECK_LIMIT_SCALE (5) times longer and the budget 2400 s.
set -u
cd "$(dirname "$0")/../.."

TINY="${GPU_CHECK_TINY:-0}"
OUT="${OUT:-./gpu-check-out}"
PY="${PYTHON:-.venv/bin/python}"
BUDGET="${GPU_CHECK_BUDGET:-$([[ $TINY == 1 ]] && echo 2400 || echo 480)}"
SCALE="${GPU_CHECK_LIMIT_SCALE:-$([[ $TINY == 1 ]] && echo 5 || echo 1)}"
RESERVE=15  # seconds kept for the summary
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p "$OUT"
rm -f "$OUT"/{mar_sampling,harmon_inference,extraction_vit,summary}.json "$OUT"/{cuda-tests.xml,summary.txt}  # no stale results
LOG="$OUT/gpu-check.log"
STEPS="$(mktemp)"
trap 'rm -f "$STEPS"' EXIT
: >"$LOG"
START=$(date +%s)

if [[ $TINY == 1 ]]; then
    MODE=tiny
    COMMON=(--device cpu --threads 1 --repeats 1 --compile default --compile-backend eager)
    MAR=(--sizes tiny --batch-sizes 1,2 --num-iter 2 --diffusion-steps 2)
    HARMON=(--sizes tiny --batch-sizes 1 --steps 1 --image-size 32 --diffusion-steps 2 --answer-tokens 2)
    VIT=(--vit small --images 16 --batch-size 8 --workers 0 --device cpu --threads 1 --repeats 1)
else
    MODE=full
    COMMON=(--device cuda --dtype bf16 --repeats 2 --compile default)
    MAR=(--sizes mar_base --batch-sizes 1,16,64 --num-iter 16)
    HARMON=(--sizes harmon-0.5b --batch-sizes 1,16,64 --steps 8 --image-size 512 --answer-tokens 16)
    VIT=(--vit b16 --images 1024 --batch-size 128 --workers 0 8 --dtype bf16 --device cuda --threads 8 --repeats 2)
fi

# step NAME LIMIT_SECONDS COMMAND...: run COMMAND under `timeout` (LIMIT x SCALE, at most what the budget leaves),
# append its output to the log, record the result
step() {
    local name=$1 limit=$(($2 * SCALE))
    shift 2
    local left=$((BUDGET - RESERVE - ($(date +%s) - START)))
    ((limit > left)) && limit=$left
    if ((limit < 5)); then
        printf '%s\tskipped\t0\t0\t%s\n' "$name" "$limit" >>"$STEPS"
        echo "=== $name: skipped, ${left}s of the budget left" >>"$LOG"
        return
    fi
    echo "=== $name (limit ${limit}s): $*" >>"$LOG"
    local begin end rc
    begin=$(date +%s.%N)
    timeout -k 5 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    end=$(date +%s.%N)
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$begin" "$end" "$limit" >>"$STEPS"
}

step cuda 45 "$PY" -c "
import torch
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
assert torch.cuda.is_available(), 'no CUDA device'
p = torch.cuda.get_device_properties(0)
print(p.name, f'{p.total_memory / 2**30:.0f} GiB', 'capability', torch.cuda.get_device_capability(0))"
step cuda-tests 100 "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider --junitxml "$OUT/cuda-tests.xml"
step mar-sampling 110 "$PY" -m experiments.benchmarks.mar_sampling "${MAR[@]}" "${COMMON[@]}" \
    --out "$OUT/mar_sampling.json"
step harmon-sampling 160 "$PY" -m experiments.benchmarks.harmon_inference "${HARMON[@]}" "${COMMON[@]}" \
    --no-cache-batch 0 --out "$OUT/harmon_inference.json"
step extraction-vit 60 "$PY" -m experiments.benchmarks.extraction_throughput "${VIT[@]}" --memory-sizes \
    --out "$OUT/extraction_vit.json"

SUMMARY=$(cat <<'PY'
"""summary.json and summary.txt from the recorded steps and the benchmarks' JSON files."""
import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

steps_file, out, mode, budget, total = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
STATUS = {"0": "ok", "124": "timeout", "137": "timeout", "skipped": "skipped"}
steps = []
for line in Path(steps_file).read_text().splitlines():
    name, rc, begin, end, limit = line.split("\t")
    steps.append({"name": name, "status": STATUS.get(rc, "failed"), "rc": None if rc == "skipped" else int(rc),
                  "seconds": round(float(end) - float(begin), 1), "limit_s": int(limit)})


def read(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None


def sampling(report, rows):
    """One line per model, batch and variant: images/s and the speed-up over eager."""
    if not report:
        return []
    return [f"{r['size']} batch {r['batch']} {r['variant']}: {r['images_per_s']:.3f} images/s "
            f"(x{r['speedup_over_eager']:.2f} over eager, spread {r['seconds']['spread_pct']:.0f} %)"
            for r in report[rows]]


results = {"mar_sampling": sampling(read("mar_sampling.json"), "rows")}
harmon = read("harmon_inference.json")
results["harmon_generation"] = sampling(harmon, "generation")
results["harmon_answering"] = [
    f"{a['size']}: {a['tokens_per_s']:.1f} tokens/s overall, decoding "
    + ("-" if a["decode_tokens_per_s"] is None else f"{a['decode_tokens_per_s']:.1f}") + " tokens/s"
    for a in (harmon or {}).get("answering", [])]
vit = read("extraction_vit.json")
results["extraction"] = [] if not vit else [f"bare loop {vit['bare_images_per_second']:.0f} images/s"] + [
    f"extract_features, {p['workers']} workers: {p['images_per_second']:.0f} images/s "
    f"({p['pipeline_over_bare']:.2f} of bare)" for p in vit["pipeline"]]
try:
    suite = ElementTree.parse(out / "cuda-tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    results["cuda_tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
except (OSError, ElementTree.ParseError, IndexError):
    results["cuda_tests"] = None

summary = {"mode": mode, "budget_s": budget, "total_s": int(total),
           "passed": all(s["status"] == "ok" for s in steps), "steps": steps, "results": results}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
lines = [f"gpu check ({mode}): {'all steps passed' if summary['passed'] else 'some steps did not pass'}, "
         f"{total} s of {budget} s"]
lines += [f"  {s['name']:<16} {s['status']:<8} {s['seconds']:>6.1f} s (limit {s['limit_s']} s)" for s in steps]
for key, value in results.items():
    if isinstance(value, list):
        lines += [f"{key}:"] + [f"  {item}" for item in value]
    else:
        lines.append(f"{key}: {value}")
(out / "summary.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
sys.exit(0 if summary["passed"] else 1)
PY
)
TOTAL=$(($(date +%s) - START))
SUMMARY_PY="$PY"
"$PY" -c "" 2>/dev/null || SUMMARY_PY=python3  # the summary needs only the standard library
"$SUMMARY_PY" -c "$SUMMARY" "$STEPS" "$OUT" "$MODE" "$BUDGET" "$TOTAL"
