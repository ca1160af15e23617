#!/usr/bin/env bash
# Builds the libFuzzer harnesses (clang, ASan + UBSan, no LibTorch; docs/fuzzing.md) in their own
# build directory and runs each for a while from its seed corpus (fuzz/corpus/<harness>/).
# Fails when any harness finds a crash, an invariant violation, a leak, a timeout or an OOM; the
# input that did it is left in <build-dir>/artifacts/<harness>/.
#
#   scripts/fuzz.sh [--seconds N] [--build-dir DIR] [--jobs N] [HARNESS ...]
#
# --seconds: per harness (default 10, about a minute for all five); HARNESS: any of
# safetensors_header npy_header trainer_state checkpoint_archive job_spec (default all).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=10
build_dir=build-fuzz
jobs=2
harnesses=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --build-dir) build_dir="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) harnesses+=("$1"); shift ;;
  esac
done
all=(safetensors_header npy_header trainer_state checkpoint_archive job_spec)
[ ${#harnesses[@]} -eq 0 ] && harnesses=("${all[@]}")

if ! command -v clang++ >/dev/null; then
  echo "fuzz.sh: clang++ not found; install the Debian packages clang and libclang-rt-14-dev" \
       "(scripts/install-deps.sh does)" >&2
  exit 1
fi

start=$(date +%s)
mkdir -p "$build_dir"
cmake -S . -B "$build_dir" -G Ninja -DSAEGRID_BUILD_FUZZERS=ON -DCMAKE_CXX_COMPILER=clang++ \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo > "$build_dir/configure.log" 2>&1 \
  || { cat "$build_dir/configure.log" >&2; exit 1; }
targets=()
for h in "${harnesses[@]}"; do targets+=("fuzz_$h"); done
cmake --build "$build_dir" -j "$jobs" --target "${targets[@]}"
echo "fuzz.sh: built ${#targets[@]} harnesses in $(( $(date +%s) - start )) s"

# Scratch files of the harnesses (checkpoint_archive writes each input to a file), removed at the
# end whatever happens; in memory where /dev/shm exists.
scratch="$(mktemp -d /dev/shm/saegrid-fuzz.XXXXXX 2>/dev/null || mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
export SAEGRID_FUZZ_SCRATCH="$scratch"

failed=()
for h in "${harnesses[@]}"; do
  work="$build_dir/corpus/$h"      # what this run adds; the seeds in the tree stay as they are
  artifacts="$build_dir/artifacts/$h"
  log="$build_dir/fuzz-$h.log"
  mkdir -p "$work" "$artifacts"
  dict=()
  [ -f "fuzz/dict/$h.dict" ] && dict=(-dict="fuzz/dict/$h.dict")
  # -timeout: an input that takes 10 s is a hang; -rss_limit_mb: one that needs 2 GiB is a
  # memory bomb. Both count as findings.
  if "$build_dir/fuzz/fuzz_$h" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
       -print_final_stats=1 -artifact_prefix="$artifacts/" "${dict[@]}" "$work" "fuzz/corpus/$h" \
       > "$log" 2>&1; then
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
    echo "fuzz.sh: $h ok: ${done_line:-no DONE line (see $log)}"
  else
    echo "fuzz.sh: $h FAILED (log $log, inputs in $artifacts/):" >&2
    grep -E 'ERROR|invariant violated|SUMMARY|Test unit written' "$log" | head -20 >&2 || tail -30 "$log" >&2
    failed+=("$h")
  fi
done
echo "fuzz.sh: $(( $(date +%s) - start )) s in all"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: findings in: ${failed[*]}" >&2
  exit 1
fi
