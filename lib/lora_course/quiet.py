"""Silence known, harmless noise once, so chapter output stays readable.

Each filter names a message that is expected on this stack and says nothing
about the run: it is filtered here rather than in every notebook cell.
"""

from __future__ import annotations

import logging
import os
import warnings

# bitsandbytes 8-bit on CPU casts fp32 inputs to fp16 on every matmul and says so each time.
_WARNINGS = [
    r".*MatMul8bitLt: inputs will be cast from torch\.float32 to float16.*",
    r".*inputs will be cast from torch\.bfloat16 to float16.*",
    # bitsandbytes: a fused kernel package is optional; the native kernel is used instead.
    r".*Failed to load CPU gemm_4bit_forward from kernels-community.*",
    # PEFT, when lm_head shares its weight with the embedding (SmolLM2 ties them).
    r".*tied to the embedding layer.*",
    r".*Model with `tie_word_embeddings=True` and the tied_target_modules.*",
    # ... and the same note in PEFT 0.21; merge_adapter unties lm_head before merging.
    r".*a tied layer is part of the adapter, but `ensure_weight_tying` is not set.*",
    # PEFT, merging into 4-bit weights: chapter 5 does it on purpose and measures the error.
    r".*Merge lora module to 4-bit linear may get different generations.*",
    # tqdm in a notebook without ipywidgets falls back to text bars, which is what we want.
    r".*IProgress not found.*",
    # PEFT's prepare_model_for_kbit_training still calls the pre-v5 checkpointing name.
    r".*`is_gradient_checkpointing` is deprecated.*",
    r".*`gradient_checkpointing_enable` is deprecated.*",
    # PEFT, saving the trainer's per-epoch checkpoints (the gpu profile saves each epoch) with an
    # adapter on lm_head: they carry lm_head's base weight too. The run's own adapter is saved
    # without it (results.py, save_embedding_layers=False).
    r".*Setting `save_embedding_layers` to `True` as embedding layers found in `target_modules`.*",
    # torch.utils.checkpoint with use_reentrant unset.
    r".*torch\.utils\.checkpoint: the use_reentrant parameter should be passed explicitly.*",
    # PEFT on a quantised model whose dtype it cannot infer for a fresh adapter.
    r".*Could not find the bitsandbytes CUDA binary.*",
]


def install() -> None:
    for pattern in _WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # datasets' per-map progress bars: sub-second steps that bury the trainer's own bar.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # The MatMul8bitLt and kernels messages come through the logging module too.
    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            msg = record.getMessage()
            return not ("MatMul8bitLt" in msg or "gemm_4bit_forward from kernels-community" in msg)

    for name in ("bitsandbytes", "bitsandbytes.autograd._functions", "bitsandbytes.backends.cpu.ops", ""):
        logging.getLogger(name).addFilter(_Drop())
