"""One evaluation of one model, cached on disk: what chapters 2, 4, 5 and 6 compare.

    evaluate_model(model, tokenizer, profile, test, out_dir)
        -> generations for the blog's prompts, metrics on the held-out rows,
           response loss; written to out_dir/eval.json and reused when present.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Profile, RunConfig
from .data import BLOG_PROMPTS, RESPONSE_SUFFIX, product_prompt
from .evaluate import EvalResult, evaluate_generations, response_loss
from .generate import Generation, generate_detailed
from .results import read_json, write_json
from .tracking import track_run

EVAL_FILE = "eval.json"


@dataclass
class ModelEvaluation:
    """Blog-prompt generations, held-out metrics with intervals, and held-out response loss."""

    name: str
    blog_generations: list[dict[str, Any]]  # product, category, text, raw, stopped, new_tokens
    heldout: EvalResult
    loss: dict[str, Any]  # loss, perplexity, tokens, per_row
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "blog_generations": self.blog_generations, "heldout": self.heldout.to_dict(),
                "loss": self.loss, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelEvaluation":
        return cls(d["name"], d["blog_generations"], EvalResult.from_dict(d["heldout"]), d["loss"], d["seconds"])

    def metric(self, name: str) -> float:
        if name == "response_loss":
            return float(self.loss["loss"])
        return float(self.heldout.summary.loc[name, "mean"])


def _fingerprint(profile: Profile, prompts: list[str], references: list[str]) -> str:
    """Identifies what was evaluated, so a cached eval.json is only reused for the same question."""
    blob = json.dumps([profile.name, profile.max_new_tokens, profile.train.max_length, prompts, references])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def evaluate_model(model, tokenizer, profile: Profile, test, out_dir: str | Path, name: str,
                   *, reuse: bool = True, batch_size: int = 8, config: RunConfig | None = None) -> ModelEvaluation:
    """Evaluate `model` on the held-out split `test` and the blog's three prompts.

    Greedy generation with the profile's `max_new_tokens`; metrics and 95%
    bootstrap intervals from `evaluate_generations`; response loss on the
    held-out references. The result is cached as out_dir/eval.json, and logged
    to MLflow when the run's `config` is given.
    """
    import time

    out_dir = Path(out_dir)
    prompts, references = list(test["prompt"]), list(test["description"])
    key = _fingerprint(profile, prompts, references)
    if reuse and (cached := cached_evaluation(out_dir, profile, test)) is not None:
        return cached

    start = time.perf_counter()
    blog = generate_detailed(model, tokenizer, [product_prompt(p, c) for p, c in BLOG_PROMPTS], profile.max_new_tokens,
                             batch_size=batch_size)
    heldout_gens = generate_detailed(model, tokenizer, prompts, profile.max_new_tokens, batch_size=batch_size)
    heldout = evaluate_generations(heldout_gens, references, max_new_tokens=profile.max_new_tokens)
    responses = [r + RESPONSE_SUFFIX for r in references]
    loss = response_loss(model, tokenizer, prompts, responses, max_length=profile.train.max_length)
    evaluation = ModelEvaluation(
        name=name,
        blog_generations=[_generation_row(g, p, c) for g, (p, c) in zip(blog, BLOG_PROMPTS)],
        heldout=heldout,
        loss=loss,
        seconds=time.perf_counter() - start,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / EVAL_FILE, {"fingerprint": key, **evaluation.to_dict()})
    if config is not None:
        with track_run(config, run_name=f"{config.experiment.name}/eval") as tracker:
            tracker.log_metrics({f"heldout_{m}": float(r["mean"]) for m, r in evaluation.heldout.summary.iterrows()})
            tracker.log_metrics({"heldout_response_loss": loss["loss"], "heldout_perplexity": loss["perplexity"]})
            tracker.log_dict(evaluation.blog_generations, "blog_generations.json")
    return evaluation


def cached_evaluation(out_dir: str | Path, profile: Profile, test) -> ModelEvaluation | None:
    """The saved evaluation in out_dir, if it answers the same question (same rows, same limits)."""
    path = Path(out_dir) / EVAL_FILE
    if not path.exists():
        return None
    saved = read_json(path)
    if saved.get("fingerprint") != _fingerprint(profile, list(test["prompt"]), list(test["description"])):
        return None
    return ModelEvaluation.from_dict(saved)


def run_and_evaluate(config: RunConfig, test, *, retrain: bool = False) -> tuple[Any, ModelEvaluation]:
    """Train (or reuse) one experiment, then evaluate (or reuse) its adapter on `test`.

    Models are loaded only for what is not on disk yet, and released afterwards.
    """
    from .merge import load_adapter_model
    from .model import load_tokenizer
    from .train import run_experiment

    run = run_experiment(config, retrain=retrain)
    evaluation = None if retrain else cached_evaluation(run.out_dir, config.profile, test)
    if evaluation is None:
        model = run.model or load_adapter_model(config.profile, run.adapter_dir, config.experiment.quantization)
        tokenizer = run.tokenizer or load_tokenizer(config.profile)
        evaluation = evaluate_model(model, tokenizer, config.profile, test, run.out_dir, config.experiment.name,
                                    reuse=False, config=config)
    run.model = None  # free the weights; the adapter is on disk
    return run, evaluation


# --------------------------------------------------------------------------- comparisons
HIGHER_IS_BETTER = {"stopped": True, "runs_on": False, "repeated_trigram_share": False, "has_repeated_sentence": False,
                    "rouge_l": True, "semantic_similarity": True, "response_loss": False}


def interval(evaluation: ModelEvaluation, metric: str) -> tuple[float, float, float]:
    """(mean, low, high) of a held-out metric; response loss is bootstrapped over its per-row losses."""
    from .evaluate import bootstrap_ci

    if metric == "response_loss":
        return bootstrap_ci(evaluation.loss["row_losses"])
    row = evaluation.heldout.summary.loc[metric]
    return float(row["mean"]), float(row["ci_low"]), float(row["ci_high"])


@dataclass(frozen=True)
class Comparison:
    metric: str
    a: tuple[float, float, float]
    b: tuple[float, float, float]

    @property
    def differs(self) -> bool:
        """The two 95% intervals do not overlap."""
        return self.a[2] < self.b[1] or self.b[2] < self.a[1]

    @property
    def b_better(self) -> bool:
        return (self.b[0] > self.a[0]) == HIGHER_IS_BETTER[self.metric]


def compare(a: ModelEvaluation, b: ModelEvaluation, metric: str) -> Comparison:
    return Comparison(metric, interval(a, metric), interval(b, metric))


def format_interval(evaluation: ModelEvaluation, metric: str, fmt: str = "{:.2f}") -> str:
    """ "mean [low, high]" of a held-out metric, for tables."""
    mean, low, high = interval(evaluation, metric)
    return f"{fmt.format(mean)} [{fmt.format(low)}, {fmt.format(high)}]"


def evidence_table(evals: dict[str, ModelEvaluation], a: str, b: str, metrics: list[str]):
    """Runs a and b side by side: mean [95% interval] per metric, whether the intervals separate, and which is better."""
    import pandas as pd

    rows = []
    for m in metrics:
        c = compare(evals[a], evals[b], m)
        rows.append({"metric": m, a: format_interval(evals[a], m, "{:.3f}"), b: format_interval(evals[b], m, "{:.3f}"),
                     "intervals apart": c.differs, "better": (b if c.b_better else a) if c.differs else "-"})
    return pd.DataFrame(rows).set_index("metric")


def verdict_b_better(comparisons: list[Comparison]) -> str:
    """The claim "b is better than a", judged on several metrics.

    "confirmed" if b is clearly better (intervals apart) on at least one metric
    and clearly worse on none; "not confirmed" if b is clearly worse on any;
    otherwise the intervals overlap everywhere: "not measurable at this scale".
    """
    if any(c.differs and not c.b_better for c in comparisons):
        return "not confirmed"
    if any(c.differs and c.b_better for c in comparisons):
        return "confirmed"
    return "not measurable at this scale"


def verdict_no_better(comparisons: list[Comparison]) -> str:
    """The claim "b is no better than a" (e.g. doubling r does not help).

    "not confirmed" if b is clearly better on some metric; otherwise "confirmed"
    (no metric separates them) — with the caveat that overlap is absence of
    evidence, which the chapter states.
    """
    return "not confirmed" if any(c.differs and c.b_better for c in comparisons) else "confirmed"


def _generation_row(g: Generation, product: str, category: str) -> dict[str, Any]:
    return {"product": product, "category": category, "text": g.text, "raw": g.raw, "stopped": g.stopped,
            "new_tokens": g.new_tokens}


def load_evaluation(out_dir: str | Path) -> ModelEvaluation | None:
    path = Path(out_dir) / EVAL_FILE
    return ModelEvaluation.from_dict(read_json(path)) if path.exists() else None


def latency_verdict(latency: dict[str, dict[str, float]]) -> str:
    """The claim "merging removes the adapter's latency", from `measure_latency` results.

    Needs keys "base", "base + adapter (unmerged)" and "merged". "confirmed" when
    the unmerged model is slower than every base run while the merged model's
    median lies within the base's min-max spread (or below); "not measurable at
    this scale" when the unmerged model is not clearly slower than the base;
    otherwise "not confirmed".
    """
    base, unmerged, merged = latency["base"], latency["base + adapter (unmerged)"], latency["merged"]
    if unmerged["min_s"] <= base["max_s"]:
        return "not measurable at this scale"
    return "confirmed" if merged["median_s"] <= base["max_s"] else "not confirmed"
