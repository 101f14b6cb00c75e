#!/usr/bin/env bash
# The GPU half of the curation benchmark, prepared as one short script for a lent GPU machine
# (no hub there: a randomly initialised Qwen2.5-1.5B-shaped teacher, fixed output lengths).
# Prints the same table as on CPU; copy it into bench/RESULTS.md with the machine it ran on.
#
#   bash bench/gpu.sh [PROMPTS] [PRESET]      # defaults: 2000 qwen2.5-1.5b
#
# Needs the gpu extra installed (vllm with CUDA torch): pip install -e ".[gpu]".
set -euo pipefail
cd "$(dirname "$0")/.."
prompts=${1:-2000}
preset=${2:-qwen2.5-1.5b}
model=$(mktemp -d)/teacher
python bench/random_teacher.py --preset "$preset" --output "$model"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python bench/curation.py --model "$model" --dummy-weights --ignore-eos --max-tokens 512 \
  --prompts "$prompts" --repeats 1
