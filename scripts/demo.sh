#!/usr/bin/env bash
# The main job end to end on embedded defaults: a coordinator (SQLite + a local data directory)
# and two workers on this machine, a 2-shard toy TopK job (capacity factor 2) submitted with the
# saegrid client, its progress streamed, the checkpoint downloaded (sha256 checked), the
# evaluation printed (probes and shrinkage included), and the checkpoint evaluated again locally
# with its figures; then a second job that trains on a GPT-2-style model's activations made on the
# fly (examples/lm_service.yaml, on the small random-weight model scripts/make-tiny-lm.py writes)
# and runs the model-based evaluations; then everything shuts down. Tokens are generated for this
# run.
set -euo pipefail
build_dir=${1:-build}
bin="$build_dir/bin"
work=${SAEGRID_DEMO_OUT:-out/demo}
rm -rf "$work"
mkdir -p "$work"
work=$(cd "$work" && pwd)

head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/client.token"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/worker.token"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

"$bin/saegrid-coordinator" --listen 127.0.0.1:0 --port-file "$work/port" --data-dir "$work/coordinator" \
  --client-token-file "$work/client.token" --worker-token-file "$work/worker.token" \
  --metrics-listen 127.0.0.1:0 --metrics-port-file "$work/coordinator.metrics-port" \
  > "$work/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
[ -s "$work/port" ] || { echo "demo: the coordinator did not start:"; cat "$work/coordinator.log"; exit 1; }
address="127.0.0.1:$(cat "$work/port")"
echo "demo: coordinator on $address (data in $work/coordinator, /metrics on port $(cat "$work/coordinator.metrics-port"))"

# Two workers sharing this machine's cores.
threads=$(( $(nproc) / 2 )); [ "$threads" -ge 1 ] || threads=1
for i in 1 2; do
  "$bin/saegrid-worker" --coordinator "$address" --worker-id "worker-$i" --data-dir "$work/worker-$i" \
    --worker-token-file "$work/worker.token" --threads "$threads" \
    --metrics-listen 127.0.0.1:0 --metrics-port-file "$work/worker-$i.metrics-port" > "$work/worker-$i.log" 2>&1 &
  pids+=($!)
done
echo "demo: workers worker-1 and worker-2 started"

export SAEGRID_COORDINATOR="$address" SAEGRID_CLIENT_TOKEN="$(cat "$work/client.token")"
job=$("$bin/saegrid" submit examples/toy_service.yaml --json | jq -r .job.job_id)
echo "demo: submitted $job"
"$bin/saegrid" watch "$job"
"$bin/saegrid" download "$job" -o "$work/download"
echo
"$bin/saegrid" results "$job"
echo
"$bin/saegrid" get "$job" --events
step_dir=$(ls -d "$work/download"/step_* | tail -1)
echo
echo "checkpoint: $step_dir"
echo "  sparsify layout: $step_dir/sparsify/sae/{cfg.json,sae.safetensors} (a sparsify run directory: $step_dir/sparsify)"
echo "  SAELens layout:  $step_dir/saelens/{cfg.json,sae_weights.safetensors,sparsity.safetensors}"
echo "  evaluation:      $step_dir/evaluation.json"

# The same checkpoint evaluated locally (docs/evaluations.md): shrinkage, and the figures.
echo
"$bin/saegrid" eval --checkpoint "$step_dir" --config examples/toy_service.yaml --only shrinkage \
  --output-dir "$work/eval" --threads "$(nproc)"

# The language-model job: the workers run in this directory, where the example's relative
# model_path and tokens_path resolve.
echo
scripts/make-tiny-lm.py out/tiny-gpt2
lm_job=$("$bin/saegrid" submit examples/lm_service.yaml --json | jq -r .job.job_id)
echo "demo: submitted $lm_job (an SAE on blocks.2.hook_resid_post of out/tiny-gpt2/model, on the fly, 2 shards)"
"$bin/saegrid" watch "$lm_job"
"$bin/saegrid" results "$lm_job"
