"""What the post reported and claimed, as data: its figures, its conclusions, its trainer arguments.

Chapters put the course's measurements beside these; `evidence.judge` turns
each claim into a verdict. Nothing here is measured by the course.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# What the post reports for its four runs (one A100 80 GB, 3 epochs of 4,750 rows).
# Times are the post's approximate figures; None where it gives none.
REPORTED: dict[str, dict[str, Any]] = {
    "qlora-r8-qv": {"trainable": 2_662_400, "minutes": 12.0,
                    "verdict": "coherent but short; one self-referential sentence"},
    "qlora-r16-qv": {"trainable": 5_324_800, "minutes": None,
                     "verdict": "no visible change from r=8"},
    "qlora-r8-all": {"trainable": 12_994_560, "minutes": 15.5,
                     "verdict": "the best: longest, logically sound text"},
    "lora8bit-r8-all": {"trainable": 12_994_560, "minutes": None,
                        "verdict": "not visibly better than 4-bit QLoRA"},
}

# The post's qualitative evidence: what its example outputs (the mouse and the vacuum cleaner)
# showed for each run, summarised in the course's words.
EXAMPLES: dict[str, str] = {
    "qlora-r8-qv": "On topic and well formed, but short; one sentence explains the vacuum's dust container "
                   "by the dust container itself.",
    "qlora-r16-qv": "Read much like the r = 8 answers: twice the adapter, no difference the post could see.",
    "qlora-r8-all": "The longest answers, each feature following from the one before; the post's favourite.",
    "lora8bit-r8-all": "Comparable to the 4-bit all-linear answers; the post saw no gain from the 8-bit base.",
}

# What the post's set-up did that this course does not, and what the course does instead.
NOT_REPRODUCED: tuple[tuple[str, str, str], ...] = (
    # (topic, the post, the course)
    ("base at inference", "every adapter, 4-bit or 8-bit trained, was loaded onto the base in 8-bit to generate",
     "each adapter generates on the base it was trained on (NF4, 8-bit or float)"),
    ("end of sequence", "its 2023 stack learned no end-of-sequence token: answers ran to the token limit and "
     "were cut at the next \"###\"",
     "the trainer appends the tokenizer's end-of-sequence token to every training text, so a run can learn "
     "to stop; the stop rate measures whether it did"),
)

# The eval loss the companion code logged for experiment 1, by optimizer step (epoch 1 and epoch 3).
EVAL_LOSS: dict[int, float] = {297: 2.08, 891: 1.93}
TRAIN_ROWS = 4750
EPOCHS = 3
POST_PROMPT_COUNT = 2  # the post shows two unseen products; the companion code adds a third


@dataclass(frozen=True)
class Claim:
    """One conclusion, as a comparison the course can run: `candidate` against `reference`.

    kind "better":    the candidate is better than the reference
    kind "no_better": the candidate is no better than the reference (within a margin)
    kind "latency":   merging removes the unmerged adapter's generation cost
    """

    key: str
    text: str
    source: str  # who claims it
    kind: Literal["better", "no_better", "latency"]
    reference: str = ""
    candidate: str = ""


CLAIMS: tuple[Claim, ...] = (
    Claim("rank", "Beyond some point a larger r does not help (r = 16 is no better than r = 8 on q/v)", "the post",
          "no_better", reference="qlora-r8-qv", candidate="qlora-r16-qv"),
    Claim("targets", "Adapting every linear layer beats q/v only (r = 8)", "the post",
          "better", reference="qlora-r8-qv", candidate="qlora-r8-all"),
    Claim("8bit", "8-bit LoRA is no better than 4-bit QLoRA (r = 8, all linear)", "the post",
          "no_better", reference="qlora-r8-all", candidate="lora8bit-r8-all"),
    Claim("16bit", "A 16-bit base is no better than a 4-bit one (r = 8, all linear)", "the QLoRA paper",
          "no_better", reference="qlora-r8-all", candidate="lora-r8-all"),
    Claim("merge", "Merging removes the adapter's latency", "the post", "latency"),
)

# The companion code's trainer arguments (2023 names) and what each became in this
# course's TrainSettings / PrecisionSettings (transformers 5, TRL 1.x names).
TRAINER_NAMES: tuple[tuple[str, Any, str, Any], ...] = (
    # (post's name, post's value, today's field, today's value)
    ("per_device_train_batch_size", 4, "per_device_train_batch_size", 4),
    ("gradient_accumulation_steps", 4, "gradient_accumulation_steps", 4),
    ("optim", "adamw_hf", "optim", "adamw_torch"),  # transformers' own AdamW was removed; torch's is the same algorithm
    ("learning_rate", 1e-5, "learning_rate", 1e-5),
    ("max_grad_norm", 0.3, "max_grad_norm", 0.3),
    ("warmup_ratio", 0.03, "warmup_steps", 0.03),  # a float below 1 is a share of all steps
    ("lr_scheduler_type", "linear", "lr_scheduler_type", "linear"),
    ("num_train_epochs", 3, "num_train_epochs", 3),
    ("fp16", True, "precision.mixed_precision", "fp16"),
    ("group_by_length", True, "train_sampling_strategy", "group_by_length"),
    ("evaluation_strategy", "epoch", "eval_strategy", "epoch"),
    ("save_strategy", "epoch", "save_strategy", "epoch"),
    ("max_seq_length", 256, "max_length", 256),
    ("packing", False, "packing", False),
    ("gradient_checkpointing", True, "activation_checkpointing", True),  # prepare_model_for_kbit_training's default
    ("bnb_4bit_compute_dtype", "bfloat16", "precision.compute_dtype", "bf16"),
)
HUB_DATASET_ROWS = 21_183  # rows in the hub dataset, from its card


# What the QLoRA paper (Dettmers et al. 2023, arXiv:2305.14314) reports at scale, beside which a
# 4-bit-versus-float result of this course is read: LLaMA models of these sizes (billions of parameters),
# trained in 16 bits, fine-tuned on an NF4 base with double quantisation.
QLORA_PAPER_SIZES_B: tuple[int, ...] = (7, 13, 33, 65)
QLORA_PAPER = "Dettmers et al. 2023, arXiv:2305.14314"


def qlora_at_scale(facts=None) -> str:
    """The QLoRA paper's finding at scale, in one sentence with its reference; with a model's
    `model.ModelFacts`, one more saying how far this course's model is from the paper's."""
    *first, last = [f"{b}B" for b in QLORA_PAPER_SIZES_B]
    paper = (f"For comparison at scale: the QLoRA paper ({QLORA_PAPER}) fine-tuned LLaMA models of "
             f"{', '.join(first)} and {last} parameters, stored in 16 bits, on an NF4 base with double quantisation, "
             "and the 4-bit runs matched 16-bit LoRA on 5-shot MMLU; on its smaller-model benchmarks (RoBERTa on "
             "GLUE, T5 on Super-NaturalInstructions) 4-bit training matched 16-bit full fine-tuning as well.")
    if facts is None:
        return paper
    if facts.weights == "random":
        return (f"{paper} This profile's model has {facts.size_label} parameters of random weights: a cost "
                "measured here checks the mechanics, nothing more.")
    share = facts.parameters / (min(QLORA_PAPER_SIZES_B) * 1e9)
    size = f"This course's model has {facts.size_label} parameters, {share:.1%} of the smallest of those"
    if facts.weights == "quantised":
        return (f"{paper} {size}, and its float weights were stored in {facts.stored_bits}-bit before the course "
                "read them: a cost measured here is what NF4 does to this model, not what QLoRA costs at scale.")
    return f"{paper} {size}; its weights are a {facts.stored_as} checkpoint, as theirs were in 16 bits."
