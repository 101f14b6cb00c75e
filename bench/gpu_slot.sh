#!/usr/bin/env bash
# The GPU half of bench/RESULTS.md (§8-9) in one short run on a lent GPU (issue 27): about 6
# minutes on an H100, so that a rerun fits a 15-minute slot. Needs only torch and transformers (no
# Ray, vLLM, pydantic, pyarrow or internet): the repository is all it reads.
#
#   bash bench/gpu_slot.sh               # on the GPU machine; results in $OUT (default: a temp folder)
#   bash bench/gpu_slot.sh --dry-run     # (or CPU=1) every part on CPU at toy shapes, gloo for NCCL,
#                                        # FlexAttention reported as skipped; the test suite runs it
#
# Each part runs under its own time limit (`timeout … || true`: one part failing or hanging never
# costs the others) and writes its log and JSON result to $OUT as soon as it finishes, most of them
# also as they go, so a run killed at any point still returns what finished:
#   0. preflight (30 s): versions, nvidia-smi, a compiler, one tiny torch.compile on CUDA, bf16
#   1. the training path on one NCCL rank (180 s): FSDP2 + bf16 + activation checkpointing, the
#      loss on chunked log-probs, 2 micro-batches, clipping, AdamW; peak memory vs docs/memory.md;
#      sharded checkpoint saved and restored; HF export written and reloaded
#   2. chunked log-prob micro-benchmark (30 s): gradient matmul in fp32 / TF32 / bf16, vs full logits
#   3. FlexAttention recompiles (90 s): 5 packed lengths under TORCH_LOGS=recompiles, vs segments
#   4. bench/gpu_train.py subset (150 s): the TRL-like baselines and the best candidates
# and last, OUT/gpu-slot.md: the tables for bench/RESULTS.md, copied there unedited.
set -uo pipefail
cd "$(dirname "$0")/.."

dry=0
if [[ "${1:-}" == "--dry-run" || "${CPU:-0}" == "1" ]]; then
  dry=1
fi
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PYTHON:-python}
command -v "$PY" >/dev/null 2>&1 || PY=python3
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if (( dry )); then
  export CUDA_VISIBLE_DEVICES=""  # a CPU run even where a GPU is present
  tiny=(--tiny)
  cpu=(--cpu)
  repeats=(--repeats 1)
  export_dtype=(--export-dtype bfloat16)  # the CPU trains in fp32: export in bf16 to exercise the cast
else
  tiny=() cpu=() repeats=() export_dtype=()
fi
echo "bench/gpu_slot.sh: results in $OUT ($([[ $dry == 1 ]] && echo 'CPU dry run' || echo GPU))"

# part NAME LIMIT_SECONDS COMMAND…: run it under `timeout`, log to OUT/NAME.log, exit status and
# seconds to OUT/NAME.status.json; never stops the script.
part() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS rc=0
  timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
  local took=$((SECONDS - start))
  printf '{"part": "%s", "rc": %d, "seconds": %d, "limit_s": %d}\n' "$name" "$rc" "$took" "$limit" \
    >"$OUT/$name.status.json"
  local note=""
  (( rc == 124 || rc == 137 )) && note=" (time limit)"
  echo "== $name: exit $rc$note after ${took} s (limit ${limit} s)"
  tail -n 3 "$OUT/$name.log" | cut -c1-300 | sed 's/^/   /'
  return 0
}

part part0-preflight 30 "$PY" bench/slot_preflight.py --json "$OUT/part0-preflight.json" ${cpu[@]+"${cpu[@]}"}
part part1-train-path 180 "$PY" bench/slot_train_path.py --json "$OUT/part1-train-path.json" \
  ${tiny[@]+"${tiny[@]}"} ${export_dtype[@]+"${export_dtype[@]}"}
part part2-logprobs 30 "$PY" bench/slot_logprobs.py --json "$OUT/part2-logprobs.json" ${tiny[@]+"${tiny[@]}"}
TORCH_LOGS=recompiles part part3-flex 90 "$PY" bench/slot_flex.py --json "$OUT/part3-flex.json" ${tiny[@]+"${tiny[@]}"}
# The baselines first (every ratio needs them), then the candidates, flex last: a slow compile
# there cannot cost the other rows.
part part4-gpu-train 150 "$PY" bench/gpu_train.py --json "$OUT/part4-gpu-train.json" ${tiny[@]+"${tiny[@]}"} ${repeats[@]+"${repeats[@]}"} \
  --only "trl-like baseline,separate chunked AC-on,packed-segments chunked AC,packed-flex chunked AC"

timeout 60 "$PY" bench/slot_table.py "$OUT" >"$OUT/table.log" 2>&1 || echo "== table: failed (see $OUT/table.log)"
cat "$OUT/gpu-slot.md" 2>/dev/null
