"""Figures for the chapters: losses, metric bars, paired differences, parameters vs quality, cost, lengths.

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


def metric_bars(summaries: Mapping[str, pd.DataFrame], metric: str, path: str | os.PathLike | None = None,
                noise: tuple[str, float] | None = None) -> Figure:
    """One bar per run (baseline included): the metric's mean, with its 95% interval as error bar.

    `noise` = (run, spread) shades the seed-to-seed band around that run's mean.
    """
    names = list(summaries)
    stats = [_interval(summaries[n], metric, n) for n in names]
    means = [m for m, _, _ in stats]
    errors = [[m - lo for m, lo, _ in stats], [hi - m for m, _, hi in stats]]
    fig = Figure(figsize=(max(4, 1.3 * len(names) + 1), 4))
    ax = fig.add_subplot()
    ax.bar(names, means, yerr=errors, capsize=4, color="tab:blue", alpha=0.8)
    if noise is not None:
        centre = means[names.index(noise[0])]
        ax.axhspan(centre - noise[1] / 2, centre + noise[1] / 2, color="tab:orange", alpha=0.25,
                   label=f"seed-to-seed band of {noise[0]}")
        ax.legend(fontsize="small")
    ax.set(ylabel=metric, title=f"{metric}: mean and 95% interval")
    ax.tick_params(axis="x", rotation=20)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def differences(diffs, path: str | os.PathLike | None = None, title: str = "Paired differences") -> Figure:
    """One row per `evidence.Difference`: b's mean improvement over a with its 90% interval,
    the margin as dashed lines and the seed-to-seed noise floor as a band around zero."""
    diffs = list(diffs)
    if not diffs:
        raise CourseError("No differences to plot: compare at least one pair of runs.")
    fig = Figure(figsize=(7, 0.7 * len(diffs) + 1.6))
    ax = fig.add_subplot()
    for i, d in enumerate(diffs):
        ax.errorbar([d.mean], [i], xerr=[[d.mean - d.low], [d.high - d.mean]], fmt="o", capsize=4, color="tab:blue")
        if d.noise:
            ax.fill_between([-d.noise, d.noise], i - 0.35, i + 0.35, color="tab:orange", alpha=0.25, linewidth=0)
        ax.plot([d.margin, d.margin], [i - 0.4, i + 0.4], "k--", linewidth=1)
        ax.plot([-d.margin, -d.margin], [i - 0.4, i + 0.4], "k--", linewidth=1)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yticks(range(len(diffs)), [f"{d.b} vs {d.a}\n({d.metric})" for d in diffs], fontsize="small")
    ax.set(xlabel="improvement of the second run (positive: better); dashed: margin; band: seed noise", title=title)
    ax.grid(axis="x", alpha=0.3)
    ax.invert_yaxis()
    return _save(fig, path)


def params_vs_quality(
    lines: Mapping[str, list[tuple[int, float]]],
    metric: str = "held-out response loss",
    path: str | os.PathLike | None = None,
    band: tuple[float, float] | None = None,
    reference: tuple[str, float] | None = None,
) -> Figure:
    """Trainable parameters (log axis) against a metric, one line of points per group (e.g. a target set).

    `band` = (low, high) shades the seed-to-seed noise floor; `reference` = (label,
    value) draws a dashed line, e.g. the untuned base model, which has no place
    on a log axis.
    """
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for name, points in lines.items():
        pts = sorted(points)
        ax.plot([p for p, _ in pts], [v for _, v in pts], marker="o", label=name)
    if band is not None:
        ax.axhspan(band[0], band[1], color="tab:orange", alpha=0.2, label="seed-to-seed band")
    if reference is not None:
        ax.axhline(reference[1], linestyle="--", color="grey", label=reference[0])
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters (log scale)", ylabel=metric, title=f"{metric} against adapter size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return _save(fig, path)


def cost_bars(costs: Mapping[str, Mapping[str, Any]], path: str | os.PathLike | None = None) -> Figure:
    """Two panels, one bar per run: median seconds per optimizer step (the first, warm-up step left out,
    whiskers min to max) and peak memory (MiB)."""
    names = list(costs)
    missing = [n for n in names if not {"step_seconds", "peak_memory_mib"} <= set(costs[n])]
    if missing:
        raise CourseError(f"Run(s) {', '.join(missing)} lack step_seconds or peak_memory_mib: pass each run's metrics.")
    fig = Figure(figsize=(max(7, 2.2 * len(names)), 4))
    ax = fig.add_subplot(1, 2, 1)
    steps = [pd.Series(costs[n]["step_seconds"][1:] or costs[n]["step_seconds"]) for n in names]
    med = [float(s.median()) for s in steps]
    ax.bar(names, med, yerr=[[m - float(s.min()) for m, s in zip(med, steps)], [float(s.max()) - m for m, s in zip(med, steps)]],
           capsize=4, color="tab:orange")
    ax.set(ylabel="seconds per optimizer step", title="median step (first step left out)")
    ax.tick_params(axis="x", rotation=20)
    ax.grid(axis="y", alpha=0.3)
    ax = fig.add_subplot(1, 2, 2)
    ax.bar(names, [float(costs[n]["peak_memory_mib"]) for n in names], color="tab:green")
    ax.set(ylabel="peak memory (MiB)", title="peak memory")
    ax.tick_params(axis="x", rotation=20)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def epochs(train_losses: list[Mapping[str, float]], eval_losses: list[Mapping[str, float]], steps_per_epoch: float,
           path: str | os.PathLike | None = None) -> Figure:
    """Training loss per step and held-out loss per epoch on one axis of epochs."""
    if not eval_losses:
        raise CourseError("No held-out loss per epoch to plot: train with eval_strategy='epoch'.")
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.plot([e["step"] / steps_per_epoch for e in train_losses], [e["loss"] for e in train_losses], alpha=0.6,
            label="training loss (per step)")
    ax.plot([e["step"] / steps_per_epoch for e in eval_losses], [e["eval_loss"] for e in eval_losses], marker="o",
            label="held-out loss (after each epoch)")
    ax.set(xlabel="epoch", ylabel="loss (nats per token)", title="Training and held-out loss over epochs")
    ax.grid(alpha=0.3)
    ax.legend()
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


def sharding_concept(gpus: int = 4, path: str | os.PathLike | None = None) -> Figure:
    """What each GPU holds under DDP and under FSDP: a concept drawing, not a measurement.

    Each GPU is a column; its rows are the run's parameters, gradients and optimizer
    state, each cut into `gpus` equal pieces, and its activations. A filled piece is
    held by that GPU; an outlined one lives on another GPU. DDP fills every piece on
    every GPU (a full replica); FSDP fills one piece per row (GPU k holds shard k)
    and gathers a block's parameters from the others only while that block computes.
    """
    from matplotlib.patches import Rectangle

    if gpus < 2:
        raise CourseError(f"A sharding drawing needs 2 GPUs or more, not {gpus}: pass gpus=2 or more.")
    parts = ("parameters", "gradients", "optimizer state")
    colours = {"parameters": "#4C72B0", "gradients": "#DD8452", "optimizer state": "#55A868", "activations": "#8172B3"}
    fig = Figure(figsize=(3.2 + 1.9 * gpus, 5.6))
    axes = fig.subplots(2, 1)
    for ax, (strategy, sharded) in zip(axes, (("DDP: every GPU holds a full replica", False),
                                              ("FSDP: every GPU holds one shard of each", True))):
        for g in range(gpus):
            x0 = g * 1.25
            for row, part in enumerate(parts):
                y = 3 - row
                for piece in range(gpus):
                    held = not sharded or piece == g
                    ax.add_patch(Rectangle((x0 + piece / gpus, y), 1 / gpus, 0.8, facecolor=colours[part] if held else "white",
                                           edgecolor=colours[part], linewidth=1))
            ax.add_patch(Rectangle((x0, 0), 1, 0.8, facecolor=colours["activations"], edgecolor=colours["activations"]))
            ax.text(x0 + 0.5, -0.35, f"GPU {g}", ha="center", va="center", fontsize=9)
        for row, part in enumerate((*parts, "activations (its own rows)")):
            ax.text(-0.1, 3 - row + 0.4, part, ha="right", va="center", fontsize=9)
        ax.set_title(strategy, fontsize=10, loc="left")
        ax.set_xlim(-2.4, gpus * 1.25)
        ax.set_ylim(-0.6, 4)
        ax.axis("off")
    fig.text(0.5, 0.01, "filled: held by this GPU; outlined: held by another GPU (FSDP gathers a block's parameters "
             "while it computes)", ha="center", fontsize=8)
    return _save(fig, path)
