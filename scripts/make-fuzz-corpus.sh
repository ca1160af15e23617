#!/usr/bin/env bash
# Regenerates the fuzzers' seed corpora (fuzz/corpus/<harness>/) from real files: checkpoints of
# tiny synthetic runs of the trainer (TopK with EMA and evaluation, ReLU, JumpReLU, two latent
# shards),
# packed by the project's own writer and by GNU tar; .npy files written by NumPy; the shipped job
# specifications; and, kept as they are, the inputs a fuzzer once failed on (regression_*). Small
# on purpose (a few KiB each): mutations should land in headers, not data.
#
#   scripts/make-fuzz-corpus.sh SAEGRID_BINARY [FUZZ_BUILD_DIR]
#
# SAEGRID_BINARY: the saegrid client of a normal build (e.g. build/bin/saegrid); FUZZ_BUILD_DIR
# (default build-fuzz, configured by scripts/fuzz.sh) provides fuzz_pack_directory.
set -euo pipefail
cd "$(dirname "$0")/.."
saegrid="$(realpath "$1")"
fuzz_build="${2:-build-fuzz}"
cmake --build "$fuzz_build" --target fuzz_pack_directory >/dev/null
pack="$fuzz_build/fuzz/fuzz_pack_directory"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
corpus=fuzz/corpus
# Inputs the fuzzers once crashed on (regression_*) are kept; everything else is regenerated.
[ -d "$corpus" ] && find "$corpus" -type f ! -name 'regression_*' -delete
mkdir -p "$corpus"/{safetensors_header,npy_header,trainer_state,checkpoint_archive,job_spec}

# One tiny run per layout; the last step directory of each is the seed material.
run() {  # NAME MODEL CHECKPOINT_EXTRA OTHER_YAML
  cat > "$work/$1.yaml" <<YAML
name: seed-$1
model: {$2}
data:
  synthetic: {num_samples: 1024, num_features: 8, d: 4, avg_active_features: 2}
  batch_size: 16
  block_rows: 16
  eval_max_tokens: 64
training: {total_tokens: 32}
checkpoint: {output_dir: $work/$1$3}
$4
YAML
  "$saegrid" train --config "$work/$1.yaml" --threads 1 > "$work/$1.log" 2>&1 || { cat "$work/$1.log" >&2; exit 1; }
  ls -d "$work/$1"/checkpoints/step_* | tail -1
}
topk=$(run topk_ema "num_latents: 8, k: 2" "" "optimizer: {ema_decay: 0.9}")
relu=$(run relu "architecture: relu, num_latents: 8, k: 2" ", hookpoint: layers.3" "")
# export_saelens: false applies to TopK only (the other architectures' only export is SAELens').
sharded=$(run sharded "num_latents: 8, k: 2" ", export_saelens: false" "parallelism: {shards: 2}")
# JumpReLU: log_threshold in the state slice, threshold in the SAELens export, no sparsify layout.
jumprelu=$(run jumprelu "architecture: jumprelu, num_latents: 8" "" "")

cp "$topk/trainer_state.safetensors" "$corpus/safetensors_header/state_slice_ema.safetensors"
cp "$topk/sparsify/sae/sae.safetensors" "$corpus/safetensors_header/sparsify_sae.safetensors"
cp "$topk/saelens/sae_weights.safetensors" "$corpus/safetensors_header/saelens_weights.safetensors"
cp "$topk/saelens/sparsity.safetensors" "$corpus/safetensors_header/saelens_sparsity.safetensors"
cp "$(ls "$sharded"/trainer_state.shard-*.safetensors | head -1)" "$corpus/safetensors_header/state_shard.safetensors"
cp "$jumprelu/saelens/sae_weights.safetensors" "$corpus/safetensors_header/saelens_jumprelu_weights.safetensors"

cp "$topk/trainer_state.json" "$corpus/trainer_state/topk_ema.json"
cp "$relu/trainer_state.json" "$corpus/trainer_state/relu.json"
cp "$sharded/trainer_state.json" "$corpus/trainer_state/sharded.json"
cp "$jumprelu/trainer_state.json" "$corpus/trainer_state/jumprelu.json"

"$pack" "$topk" "$corpus/checkpoint_archive/topk_ema.tar"
"$pack" "$sharded" "$corpus/checkpoint_archive/sharded.tar"
"$pack" "$jumprelu" "$corpus/checkpoint_archive/jumprelu.tar"
tar --format=gnu -cf "$corpus/checkpoint_archive/relu_gnu_tar.tar" -C "$(dirname "$relu")" "$(basename "$relu")"

/usr/bin/python3 - "$corpus/npy_header" <<'PY'
import sys, numpy as np
out = sys.argv[1]
np.save(f"{out}/f4_2d.npy", np.arange(12, dtype="<f4").reshape(3, 4))
np.save(f"{out}/f2_1d.npy", np.arange(5, dtype="<f2"))
np.save(f"{out}/u2_bf16_bits.npy", np.arange(6, dtype="<u2").reshape(2, 3))
np.save(f"{out}/i8_scalar.npy", np.array(7, dtype="<i8"))
np.save(f"{out}/u1_empty.npy", np.zeros((0, 3), dtype="|u1"))
with open(f"{out}/f8_v2.npy", "wb") as f:
    np.lib.format.write_array(f, np.ones((2, 2), dtype="<f8"), version=(2, 0))
with open(f"{out}/f4_v3.npy", "wb") as f:
    np.lib.format.write_array(f, np.ones((1, 2), dtype="<f4"), version=(3, 0))
PY

cp examples/*.yaml "$corpus/job_spec/"
cat > "$corpus/job_spec/small.json" <<'JSON'
{"model": {"num_latents": 64, "k": 4}, "data": {"synthetic": {"num_samples": 4096, "d": 16}, "batch_size": 128}, "training": {"total_tokens": 1024}}
JSON
cat > "$corpus/job_spec/aliases.yaml" <<'YAML'
model: {num_latents: &n 64, k: 4}
data: {synthetic: {num_samples: *n, d: 16}, batch_size: *n}
training: {total_tokens: 1024}
YAML
du -sh "$corpus"
