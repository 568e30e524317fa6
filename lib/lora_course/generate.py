"""Generation: greedy by default, stops at "### End", returns the response text only."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from time import perf_counter

import torch
from transformers import GenerationConfig

from .data import END_MARKER
from .errors import CourseError
from .model import DEQUANTISED_ON_CPU, dequantised


@dataclass(frozen=True)
class Generation:
    prompt: str
    raw: str  # everything the model wrote after the prompt, special tokens removed
    text: str  # the response: `raw` cut at the first "###" (the blog's post-processing)
    new_tokens: int
    stopped: bool  # `stopped` with the EOS seen: "### End", an EOS (the limit's last token too) or under the limit
    seconds: float  # wall time of the batch this row was generated in


def wrap(text: str, width: int = 88) -> str:
    """Text broken into lines of at most `width` characters, its own line breaks kept (for printing)."""
    return "\n".join(textwrap.fill(line, width) if line.strip() else line for line in text.split("\n"))


def stopped(raw: str, new_tokens: int, max_new_tokens: int, ended_by_eos: bool = False) -> bool:
    """The generation ended by itself: it wrote "### End", ended before the token limit, or its last token
    was EOS (`ended_by_eos`).

    Only the generator sees the EOS (`raw` has special tokens removed), and only an EOS that is the last
    token the limit allows needs it: an earlier one already ends the row under the limit. The held-out
    metric judges from the text (evaluate.evaluate_generations), so it counts that one row as not stopped.
    """
    return ended_by_eos or END_MARKER in raw or new_tokens < max_new_tokens


def cut_response(raw: str) -> str:
    """The response part of a generation: up to the first "###" marker, stripped."""
    return raw.split("###", 1)[0].strip()


def generation_config(tokenizer, max_new_tokens: int, do_sample: bool = False, stop_strings=(END_MARKER,), **sampling):
    """A fresh GenerationConfig: greedy unless asked, stopping at EOS and at `stop_strings`.

    Built from scratch rather than from the model's own config, whose sampling
    defaults (temperature, top_p) would only produce warnings under greedy decoding.
    """
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        stop_strings=list(stop_strings) or None,
        **sampling,
    )


@torch.no_grad()
def check_count(name: str, value) -> None:
    """A count the caller gives (tokens, repeats, rows) must be a whole number from 1 up."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CourseError(f"{name} must be a whole number of 1 or more, got {value!r}: e.g. {name}=16.")


def generate_detailed(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 128,
    *,
    do_sample: bool = False,
    batch_size: int = 8,
    stop_strings: tuple[str, ...] = (END_MARKER,),
    dequantise: bool = True,
    **sampling,
) -> list[Generation]:
    """Greedy (or sampled) generations for `prompts`, `batch_size` at a time, each with its raw text,
    its response and whether it stopped.

    dequantise  on a CPU, generate with the frozen NF4 weights dequantised once for the call rather
                than at every token (`model.dequantised`: the same values, so the same tokens); False
                generates with the model exactly as it is (a timing of the 4-bit model itself)
    """
    check_count("max_new_tokens", max_new_tokens)
    gen_config = generation_config(tokenizer, max_new_tokens, do_sample=do_sample, stop_strings=stop_strings, **sampling)
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # a batch must end where the generation starts
    device = next(model.parameters()).device
    out: list[Generation] = []
    try:
        with dequantised(model, DEQUANTISED_ON_CPU if dequantise else ()):
            for i in range(0, len(prompts), batch_size):
                batch = prompts[i : i + batch_size]
                enc = tokenizer(batch, return_tensors="pt", padding=True).to(device)
                start = perf_counter()
                ids = model.generate(**enc, generation_config=gen_config, tokenizer=tokenizer)
                seconds = perf_counter() - start
                new = ids[:, enc["input_ids"].shape[1] :]
                for prompt, row in zip(batch, new):
                    n = _length_without_padding(row, tokenizer)
                    raw = tokenizer.decode(row[:n], skip_special_tokens=True)
                    ended_by_eos = n > 0 and int(row[n - 1]) == tokenizer.eos_token_id
                    out.append(Generation(prompt, raw, cut_response(raw), n,
                                          stopped(raw, n, max_new_tokens, ended_by_eos), seconds))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def _length_without_padding(row: torch.Tensor, tokenizer) -> int:
    """Generated tokens up to and including the first EOS (the rest is padding)."""
    eos = tokenizer.eos_token_id
    hits = (row == eos).nonzero()
    return int(hits[0]) + 1 if len(hits) else len(row)


def generate(model, tokenizer, prompts: str | list[str], max_new_tokens: int = 128, **kwargs) -> str | list[str]:
    """Response text for one prompt (a string) or several (a list)."""
    single = isinstance(prompts, str)
    gens = generate_detailed(model, tokenizer, [prompts] if single else list(prompts), max_new_tokens, **kwargs)
    texts = [g.text for g in gens]
    return texts[0] if single else texts


def time_generation(model, tokenizer, prompts: list[str], new_tokens: int = 32, repeats: int = 5,
                    warmup: int = 1) -> list[float]:
    """Wall time (s) of each of `repeats` greedy generations of exactly `new_tokens` tokens per prompt.

    Stopping is switched off (min_new_tokens = max_new_tokens, no stop strings)
    so that every model does the same amount of work; `warmup` untimed runs
    come first.
    """
    check_count("repeats", repeats)
    check_count("new_tokens", new_tokens)
    times = []
    for i in range(warmup + repeats):
        start = perf_counter()
        generate_detailed(model, tokenizer, prompts, new_tokens, batch_size=len(prompts), stop_strings=(),
                          min_new_tokens=new_tokens, dequantise=False)  # the model timed as it is
        elapsed = perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
    return times
