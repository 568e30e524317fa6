#!/usr/bin/env bash
# The gpu profile's exact trainer, checked on one GPU with no download: OpenLLaMA-3b-v2's
# architecture with random weights, the course's sample data, NF4 and 8-bit, about 40
# optimizer steps each. Budget: under 8 minutes on one H100/H200-class GPU.
#
#   scripts/gpu_check.sh OUT_DIR
#
# Writes OUT_DIR/train-check.json: loss per step (finite, falling?), the share of lora_A and
# lora_B entries that moved, peak memory, non-padding tokens/s and utilisation per run.
# Exits non-zero if an adapter froze (some adapted module moved under 99% of its lora_A entries)
# or a loss was not finite.
# PROFILE=smoke STEPS=4 runs the same steps on a CPU with a tiny architecture (the tests do).
set -euo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
fi
"$py" -m lora_course train-check --profile "${PROFILE:-gpu}" --steps "${STEPS:-40}" \
    --out "$out/train-check.json" --results "$out/results"
echo "results: $out/train-check.json"
