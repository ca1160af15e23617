#!/usr/bin/env bash
# The main job end to end on embedded defaults: trains a TopK SAE on seed 004's synthetic data
# (512 known features in 256 dimensions) with the local `saegrid train`, then prints the
# evaluation, including how many of the true features the SAE recovered.
set -euo pipefail
build_dir=${1:-build}
out_dir=${SAEGRID_DEMO_OUT:-out/demo}
rm -rf "$out_dir"
threads=$(nproc)
"$build_dir/bin/saegrid" train --config examples/toy_topk.yaml --output-dir "$out_dir" --threads "$threads"
latest=$(cat "$out_dir/checkpoints/LATEST")
echo
echo "checkpoint: $out_dir/checkpoints/$latest"
echo "  sparsify layout: $out_dir/checkpoints/$latest/sae/{cfg.json,sae.safetensors}"
echo "  SAELens layout:  $out_dir/checkpoints/$latest/saelens/"
echo "  evaluation:      $out_dir/checkpoints/$latest/evaluation.json"
