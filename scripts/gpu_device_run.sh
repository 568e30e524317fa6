#!/usr/bin/env bash
# The gpu path on a GPU, as one command: a bare machine with Python 3.12 and a CUDA torch, no
# network, no hub. Budget: at most 8 minutes on one H100/H200-class GPU.
#
#   scripts/gpu_device_run.sh WHEELS_DIR OUT_DIR
#
# 1. installs the carried wheels from WHEELS_DIR (pip --no-index --no-deps: nothing is fetched);
#    what the machine already has (torch, transformers, accelerate, peft, numpy) is kept;
# 2. gpu check: the gpu profile's exact trainer on OpenLLaMA-3b-v2's architecture with random
#    weights, NF4 and int8, CHECK_STEPS optimizer steps each (python -m lora_course train-check);
# 3. executes every chapter with papermill at profile gpu-device: the gpu profile with the 3B
#    random-weight model, 72 sample rows and 12 optimizer steps (lora_course.presets lists every
#    difference from gpu); chapters share what is left of the budget, and any not started when it
#    runs out is reported as such.
# OUT_DIR receives at most 8 files: device-run.json (GPU, versions, each stage's status and
# seconds, chapter times), device-run.log, train-check.json, chapters.tar.gz (executed notebooks).
# Exit status: 0 only if the check passed and every chapter ran.
#
# The wheels: what the lent H200 machine lacks (it has Python 3.12, torch 2.11 for CUDA 13,
# transformers, accelerate, peft, sentencepiece). Download them on a machine with network, then trim
# bitsandbytes to the CUDA library the machine's torch uses (torch.version.cuda 13.0 -> 130):
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 \
#     --platform any -d wheels \
#     trl==1.16.0 bitsandbytes==0.50.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 \
#     papermill==2.7.0 nbclient==0.11.0 nbformat==5.11.1 ipykernel==7.4.0 jupyter_client==8.10.0 \
#     jupyter_core==5.9.1 pyzmq==27.3.0 tornado==6.6.1 traitlets==5.16.1 ipython==9.18.1 comm==0.2.3 \
#     debugpy==1.8.22 matplotlib-inline==0.2.2
#   python scripts/trim_wheel.py wheels/bitsandbytes-0.50.2-*.whl --keep-cuda 130
# Sizes measured: bitsandbytes 41.1 MiB -> 3.4 MiB trimmed, trl 0.9, datasets 0.6, dill + multiprocess
# + xxhash 0.7, papermill and its kernel 7.9 (debugpy 5.1 of it): about 14 MiB. Not listed, because
# they do not fit: pyarrow (47.8 MiB, imported by datasets) and pandas (11.5 MiB); a machine without
# them needs about 65 MiB for the check alone. The chapters also import matplotlib, mlflow, myst-nb,
# rouge-score and sentence-transformers (with the encoder's 80 MB wheel): far over 60 MiB together.
# Everything the chapters import that is still missing is named in device-run.log, one line each,
# before anything runs, and chapters that cannot run are reported as not started.
#
# On a CPU the same steps run at the miniature (the tests do; nothing is installed):
#   WHEELS_DIR="" PROFILE=gpu-mini CHECK_PROFILE=smoke CHECK_STEPS=3 scripts/gpu_device_run.sh "" OUT
set -uo pipefail
wheels=${1-}
out=${2:?usage: scripts/gpu_device_run.sh WHEELS_DIR OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$out"
out=$(cd "$out" && pwd)
py=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && py=.venv/bin/python
profile=${PROFILE:-gpu-device}
check_profile=${CHECK_PROFILE:-gpu}
check_steps=${CHECK_STEPS:-10}
budget_s=${BUDGET_S:-450}  # 7.5 minutes: the rest of 8 is start-up and copying back
# CHAPTERS="01 04" runs only those chapters (default: all nine).
log="$out/device-run.log"
work=$(mktemp -d)
export PYTHONPATH="$PWD/lib${PYTHONPATH:+:$PYTHONPATH}"
export LORA_COURSE_CACHE=${LORA_COURSE_CACHE:-$work/cache}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)
: > "$log"
say() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$log"; }

if [ -n "$wheels" ]; then
    say "installing the carried wheels from $wheels"
    "$py" -m pip install --no-index --no-deps --quiet "$wheels"/*.whl >> "$log" 2>&1 \
        || say "some wheels did not install (see above)"
    "$py" -m ipykernel install --user --name python3 >> "$log" 2>&1 || true
fi
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$log" 2>&1
fi

# Stages 2 and 3, timed and recorded by the library (lora_course.devicecheck).
"$py" -m lora_course device-run --profile "$profile" --check-profile "$check_profile" \
    --check-steps "$check_steps" --budget-s "$budget_s" --out "$out" --work "$work" \
    --chapters "${CHAPTERS:-}" 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
say "exit status $status; files in $out: $(ls "$out" | tr '\n' ' ')"
rm -rf "$work"
exit "$status"
