#!/usr/bin/env bash
# The GPU machine's whole check in one command (docs/gpu.md): unpack the Debian packages it lacks
# (.gpu-debs/, made by scripts/gpu-debs.sh and carried with the call), configure the engine-only
# build against its CUDA LibTorch (scripts/configure-cuda.sh), build with ninja on all cores, run
# the kernel, CUDA-kernel, gradient, training and NCCL tests and the device benchmark, and write
# a JSON summary. Device time is scarce: it must finish in under 8 minutes on 16 cores, and each
# step has a time limit so that a hang costs one step, not the call.
#   scripts/gpu-check.sh             on the GPU machine; with $OUT set (the device call's folder,
#                                    which returns at most 8 files), $OUT gets gpu-check.json and
#                                    gpu-check-logs.tar.gz; without, everything is in out/gpu-check
#   scripts/gpu-check.sh --rehearse  here, on the CPU: the same steps and targets with Debian's
#                                    LibTorch, the CUDA tests skipping, the benchmark small on cpu
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rehearse=0
[[ "${1:-}" == "--rehearse" ]] && rehearse=1
out=${SAEGRID_GPU_RESULTS:-$root/out/gpu-check}
[[ -n "${OUT:-}" ]] && out=${SAEGRID_GPU_RESULTS:-/tmp/saegrid-gpu-results}
build=${SAEGRID_GPU_BUILD:-/tmp/saegrid-gpu-build}
debs=${SAEGRID_GPU_DEBS:-$root/.gpu-debs}
debroot=${SAEGRID_GPU_DEBROOT:-/tmp/saegrid-debroot}
jobs=$(nproc)
mkdir -p "$out"
: > "$out/steps.jsonl"
started=$(date +%s)

# step NAME LIMIT_SECONDS COMMAND...: runs it with its output in $OUT/NAME.log, records rc and time.
step() {
  local name=$1 limit=$2
  shift 2
  local t0 rc
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  printf '{"step": "%s", "rc": %d, "seconds": %d}\n' "$name" "$rc" "$(($(date +%s) - t0))" >>"$out/steps.jsonl"
  echo "saegrid gpu-check: $name rc=$rc ($(($(date +%s) - t0)) s)"
  return $rc
}

unpack() {
  rm -rf "$debroot"
  mkdir -p "$debroot"
  local f
  for f in "$debs"/*.deb; do dpkg-deb -x "$f" "$debroot" || return 1; done
  ls "$debroot/usr/lib/x86_64-linux-gnu/cmake"
}

if ! ls "$debs"/*.deb >/dev/null 2>&1; then
  echo "saegrid gpu-check: no Debian packages in $debs (run scripts/gpu-debs.sh here and carry .gpu-debs)" >&2
  exit 2
fi
export -f unpack
export debs debroot
step unpack 60 bash -c unpack || exit 1
export LD_LIBRARY_PATH="$debroot/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

export SAEGRID_EXTRA_PREFIX="$debroot/usr"
step configure 180 "$root/scripts/configure-cuda.sh" "$build" -DSAEGRID_BUILD_SERVICE=OFF \
  -DSAEGRID_BUILD_TESTS=ON -DSAEGRID_BUILD_BENCH=ON || exit 1

tests=(kernels_test running_topk_test fused_adam_test portable_kernels_test cuda_kernels_test
       gradient_equivalence_test cuda_training_test communicator_test communicator_probe)
step build 330 cmake --build "$build" -j "$jobs" --target "${tests[@]}" device_step_bench || exit 1

# The tests: each writes its GoogleTest JSON report beside its log.
failed=0
for t in kernels_test running_topk_test fused_adam_test portable_kernels_test cuda_kernels_test \
         gradient_equivalence_test cuda_training_test; do
  step "$t" 240 "$build/tests/$t" "--gtest_output=json:$out/$t.json" || failed=1
done
step nccl 120 "$build/tests/communicator_test" --gtest_filter='NcclCollectives.*' \
  "--gtest_output=json:$out/nccl.json" || failed=1

if [[ $rehearse == 1 ]]; then
  bench=(--device cpu --batch 512 --d 64 --k 8 --latents 1024,4096 --huge-latents 16384 --repeats 2 --threads 2)
else
  bench=(--device cuda --batch 8192 --d 768 --k 32 --latents 32768,131072 --huge-latents 1048576 --repeats 10)
fi
export OUT_JSON="$out/bench.json"
step bench 240 sh -c '"$0" "$@" > "$OUT_JSON"' "$build/bench/device_step_bench" "${bench[@]}" || failed=1

python3 - "$out" "$(($(date +%s) - started))" "$rehearse" <<'PY' || failed=1
import json, os, sys
out, seconds, rehearse = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
summary = {"seconds": seconds, "rehearsal": rehearse, "steps": [], "tests": {}, "bench": None}
with open(os.path.join(out, "steps.jsonl")) as f:
    summary["steps"] = [json.loads(line) for line in f if line.strip()]
for name in sorted(os.listdir(out)):
    if not name.endswith(".json") or name in ("bench.json", "gpu-check.json"):
        continue
    try:
        report = json.load(open(os.path.join(out, name)))
    except ValueError:
        continue
    cases = [c for s in report.get("testsuites", []) for c in s.get("testsuite", [])]
    summary["tests"][name[:-5]] = {
        "tests": len(cases),
        "failed": [c["classname"] + "." + c["name"] for c in cases if c.get("failures")],
        "skipped": sum(1 for c in cases if c.get("result") == "SKIPPED"),
    }
try:
    summary["bench"] = json.load(open(os.path.join(out, "bench.json")))
except (OSError, ValueError) as e:
    summary["bench"] = {"error": str(e)}
json.dump(summary, open(os.path.join(out, "gpu-check.json"), "w"), indent=2)
print(json.dumps({k: summary[k] for k in ("seconds", "rehearsal", "tests")}, indent=1))
PY
if [[ -n "${OUT:-}" && "$out" != "$OUT" ]]; then
  mkdir -p "$OUT"
  cp "$out/gpu-check.json" "$OUT/" 2>/dev/null || true
  tar -czf "$OUT/gpu-check-logs.tar.gz" -C "$out" . || failed=1
fi
exit $failed
