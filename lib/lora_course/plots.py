"""Figures for the chapters: losses, metric bars with intervals, parameters vs quality, cost, lengths.

Every function builds a `matplotlib.figure.Figure` directly (no pyplot state, so
it works under any backend, Agg included), returns it (a notebook cell shows
it), and with `path=` also saves it as a PNG, creating the folders it needs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
from matplotlib.figure import Figure

from .errors import CourseError


def _save(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    return fig


def loss_curves(runs: Mapping[str, list[Mapping[str, float]]], path: str | os.PathLike | None = None, title: str = "Training loss") -> Figure:
    """One line per run: training loss against optimizer step."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for name, losses in runs.items():
        points = [(e["step"], e["loss"]) for e in losses if "loss" in e]
        if not points:
            raise CourseError(f"Run {name!r} has no logged loss: train it first, or leave it out of the plot.")
        steps, values = zip(*points)
        ax.plot(steps, values, marker="." if len(points) < 40 else None, label=name)
    ax.set(xlabel="optimizer step", ylabel="loss (nats per token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _interval(summary: pd.DataFrame, metric: str, run: str) -> tuple[float, float, float]:
    if metric not in summary.index:
        raise CourseError(f"Run {run!r} has no metric {metric!r}: choose one of {', '.join(map(str, summary.index))}.")
    row = summary.loc[metric]
    return float(row["mean"]), float(row["ci_low"]), float(row["ci_high"])


def metric_bars(summaries: Mapping[str, pd.DataFrame], metric: str, path: str | os.PathLike | None = None) -> Figure:
    """One bar per run (baseline included): the metric's mean, with its 95% interval as error bar."""
    names = list(summaries)
    stats = [_interval(summaries[n], metric, n) for n in names]
    means = [m for m, _, _ in stats]
    errors = [[m - lo for m, lo, _ in stats], [hi - m for m, _, hi in stats]]
    fig = Figure(figsize=(max(4, 1.3 * len(names) + 1), 4))
    ax = fig.add_subplot()
    ax.bar(names, means, yerr=errors, capsize=4, color="tab:blue", alpha=0.8)
    ax.set(ylabel=metric, title=f"{metric}: mean and 95% interval")
    ax.tick_params(axis="x", rotation=20)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def params_vs_quality(
    points: Mapping[str, tuple[int, float, float, float]],
    metric: str = "metric",
    path: str | os.PathLike | None = None,
) -> Figure:
    """Trainable parameters (log axis) against a metric's mean and 95% interval, one point per run.

    `points` maps a run to (trainable parameters, mean, ci_low, ci_high). A run
    with 0 trainable parameters (the untuned base model) has no place on a log
    axis; it is drawn as a dashed horizontal line at its mean.
    """
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for name, (params, mean, low, high) in points.items():
        if params <= 0:
            ax.axhline(mean, linestyle="--", color="grey", label=f"{name} (no training)")
            continue
        ax.errorbar([params], [mean], yerr=[[mean - low], [high - mean]], fmt="o", capsize=4, label=name)
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters (log scale)", ylabel=metric, title=f"{metric} against adapter size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return _save(fig, path)


def cost_bars(costs: Mapping[str, Mapping[str, Any]], path: str | os.PathLike | None = None) -> Figure:
    """Two panels, one bar per run: wall time (s) and peak memory (MiB), as in metrics.json."""
    names = list(costs)
    fig = Figure(figsize=(max(7, 2.2 * len(names)), 4))
    panels = (("wall_time_s", "wall time (s)"), ("peak_memory_mib", "peak memory (MiB)"))
    for i, (key, label) in enumerate(panels, start=1):
        missing = [n for n in names if key not in costs[n]]
        if missing:
            raise CourseError(f"Run(s) {', '.join(missing)} lack {key!r}: pass each run's metrics.json dict.")
        ax = fig.add_subplot(1, 2, i)
        ax.bar(names, [float(costs[n][key]) for n in names], color="tab:orange" if i == 1 else "tab:green")
        ax.set(ylabel=label, title=label)
        ax.tick_params(axis="x", rotation=20)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def length_histograms(card, max_length: int | None = None, path: str | os.PathLike | None = None, bins: int = 30) -> Figure:
    """Histograms of a DataCard: description words, and training-text tokens with `max_length` marked.

    A card made without a tokenizer has no token counts: only the words panel is drawn.
    """
    tokens = card.text_tokens
    fig = Figure(figsize=(10 if tokens is not None else 5, 4))
    ax = fig.add_subplot(1, 2 if tokens is not None else 1, 1)
    ax.hist(card.description_words, bins=bins, color="tab:blue", alpha=0.8)
    ax.set(xlabel="words", ylabel="rows", title="description length")
    if tokens is not None:
        ax = fig.add_subplot(1, 2, 2)
        ax.hist(tokens, bins=bins, color="tab:purple", alpha=0.8)
        ax.set(xlabel="tokens (prompt + response + EOS)", ylabel="rows", title="training text length")
        if max_length is not None:
            share = card.share_over(max_length)
            ax.axvline(max_length, color="red", linestyle="--", label=f"max_length={max_length} ({share:.0%} of rows longer)")
            ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)
