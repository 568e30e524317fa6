#!/usr/bin/env bash
# Blog-scale cost on one GPU, with no download: OpenLLaMA-3b-v2's architecture
# with random weights, the course's sample data, the post's three set-ups
# (NF4 q/v, NF4 all linear, 8-bit all linear), blog vs recommended trainer
# settings. Budget: under 8 minutes on one H100/H200-class GPU.
#
#   scripts/gpu_bench.sh OUT_DIR
#
# Writes OUT_DIR/results/<profile>/bench/<experiment>.json per experiment (see lora_course/bench.py).
# PROFILE=smoke ROWS=8 runs the same steps on a CPU with a tiny architecture (the tests do).
set -euo pipefail
out=${1:?usage: scripts/gpu_bench.sh OUT_DIR}
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
profile=${PROFILE:-gpu}
mkdir -p "$out"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
fi

run() {  # experiment, extra flags
    "$py" -m lora_course bench --profile "$profile" --random-weights --data sample \
        --experiment "$1" --results "$out/results" ${ROWS:+--rows "$ROWS"} "${@:2}"
}
# Latency for the first experiment only: each latency model is one more load of the base.
# EXPERIMENTS="a b" measures other set-ups (the tests run two).
set -- ${EXPERIMENTS:-qlora-r8-qv qlora-r8-all lora8bit-r8-all}
run "$1" --repeats 3
for experiment in "${@:2}"; do
    run "$experiment" --no-latency
done
echo "results: $out/results"
