"""Figures for the chapters: losses, metric bars, paired differences, parameters vs quality, cost, lengths,
and two concept figures (the LoRA bypass; an update against the 4-bit grid).

Every function builds a `matplotlib.figure.Figure` directly (no pyplot state, so
it works under any backend, Agg included), returns it (a notebook cell shows
it), and with `path=` also saves it as a PNG, creating the folders it needs.

One colour per experiment and per target family (COLOURS, through `colour`), and
one readable label per metric (LABELS, through `label`), in every chapter.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Rectangle

from .errors import CourseError
from .memory import nf4_levels, nf4_merge

# One colour per run family, decided here so that every chapter draws a run in the same colour.
COLOURS: dict[str, str] = {
    "base model": "tab:gray", "baseline": "tab:gray",
    "q, v": "tab:blue", "all linear": "tab:red",  # target families (chapters 4 and 7)
    "qlora-r8-qv": "tab:blue", "qlora-r16-qv": "tab:cyan",
    "qlora-r8-all": "tab:red", "lora8bit-r8-all": "tab:purple", "lora-r8-all": "tab:brown",
}
# Readable names for metrics, in tables and on axes.
LABELS: dict[str, str] = {
    "response_loss": "held-out loss (nats per token)",
    "stopped": "stop rate",
    "runs_on": "run-on rate",
    "repeated_trigram_share": "repeated 3-grams",
    "has_repeated_sentence": "repetition rate",
    "word_count": "words",
    "length_ratio": "length / reference",
    "rouge_l": "ROUGE-L",
    "semantic_similarity": "semantic similarity",
}
_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))


def colour(name: str) -> str | None:
    """The colour of a run or family: its own entry of COLOURS, else that of the longest entry it starts
    with ("qlora-r8-qv-seed43" is drawn as "qlora-r8-qv"), else None (matplotlib's next colour)."""
    if name in COLOURS:
        return COLOURS[name]
    starts = [k for k in COLOURS if name.startswith(k)]
    return COLOURS[max(starts, key=len)] if starts else None


def label(metric: str) -> str:
    """A metric's readable name (LABELS), or the name itself when it has none."""
    return LABELS.get(metric, metric)


def _save(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    return fig


def loss_curves(runs: Mapping[str, list[Mapping[str, float]]], path: str | os.PathLike | None = None, title: str = "Training loss") -> Figure:
    """One line per run: training loss against optimizer step. Each run has its own line style and
    marker (hollow after the first), so that curves lying on top of each other all stay visible."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for i, (name, losses) in enumerate(runs.items()):
        points = [(e["step"], e["loss"]) for e in losses if "loss" in e]
        if not points:
            raise CourseError(f"Run {name!r} has no logged loss: train it first, or leave it out of the plot.")
        steps, values = zip(*points)
        style, marker = _STYLES[i % len(_STYLES)]
        ax.plot(steps, values, linestyle=style, marker=marker if len(points) < 60 else None,
                markersize=4 + 2 * i, markerfacecolor="none" if i else None, color=colour(name), label=name,
                zorder=3 + i)
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
    ax.bar(names, means, yerr=errors, capsize=4, color=[colour(n) or "tab:blue" for n in names], alpha=0.8)
    if noise is not None:
        centre = means[names.index(noise[0])]
        ax.axhspan(centre - noise[1] / 2, centre + noise[1] / 2, color="tab:orange", alpha=0.25,
                   label=f"seed-to-seed band of {noise[0]}")
        ax.legend(fontsize="small")
    ax.set(ylabel=label(metric), title=f"{label(metric)}: mean and 95% interval")
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
    ax.set_yticks(range(len(diffs)), [f"{d.b} vs {d.a}\n({label(d.metric)})" for d in diffs], fontsize="small")
    ax.set(xlabel="improvement of the second run (positive: better); dashed: margin; band: seed noise", title=title)
    ax.grid(axis="x", alpha=0.3)
    ax.invert_yaxis()
    return _save(fig, path)


def params_vs_quality(
    lines: Mapping[str, list[tuple]],
    metric: str = "response_loss",
    path: str | os.PathLike | None = None,
    band: tuple[float, float] | None = None,
    reference: tuple[str, float] | None = None,
) -> Figure:
    """Trainable parameters (log axis) against a metric, one group of points per family (e.g. a target set).

    A point is (parameters, value) or (parameters, value, label); a label is written beside its
    point. Points of one family that share a parameter count (two base precisions, two seeds) are
    spread apart by ten percent along the axis, so none hides another; the family's line joins
    the mean value at each distinct count. `band` = (low, high) shades the seed-to-seed noise floor;
    `reference` = (label, value) draws a dashed line, e.g. the untuned base model, which has no place
    on a log axis.
    """
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for i, (name, points) in enumerate(lines.items()):
        pts = sorted(points, key=lambda p: (p[0], p[1]))
        by_count: dict[float, list[tuple]] = {}
        for p in pts:
            by_count.setdefault(p[0], []).append(p)
        c = colour(name) or f"C{i}"
        if len(by_count) > 1:
            ax.plot(list(by_count), [sum(p[1] for p in g) / len(g) for g in by_count.values()], color=c,
                    linewidth=1.2, alpha=0.7)
        xs, ys = [], []
        for count, group in by_count.items():
            for k, p in enumerate(group):
                x = count * 1.1 ** (k - (len(group) - 1) / 2)
                xs.append(x)
                ys.append(p[1])
                if len(p) > 2:  # labels of points that share a count go left and right of them in turn
                    left = k % 2 == 0 and len(group) > 1
                    ax.annotate(str(p[2]), (x, p[1]), textcoords="offset points", xytext=(-6 if left else 6, 5),
                                ha="right" if left else "left", fontsize="x-small", color=c)
        ax.scatter(xs, ys, color=c, label=name, zorder=3)
    if band is not None:
        ax.axhspan(band[0], band[1], color="tab:orange", alpha=0.2, label="seed-to-seed band")
    if reference is not None:
        ax.axhline(reference[1], linestyle="--", color="grey", label=reference[0])
    ax.set_xscale("log")
    ax.margins(x=0.12)  # room for the labels of the outermost points
    ax.set(xlabel="trainable parameters (log scale)", ylabel=label(metric), title=f"{label(metric)} against adapter size")
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
           capsize=4, color=[colour(n) or "tab:orange" for n in names])
    ax.set(ylabel="seconds per optimizer step", title="median step (first step left out)")
    ax.tick_params(axis="x", rotation=20)
    ax.grid(axis="y", alpha=0.3)
    ax = fig.add_subplot(1, 2, 2)
    ax.bar(names, [float(costs[n]["peak_memory_mib"]) for n in names], color=[colour(n) or "tab:green" for n in names])
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


# --------------------------------------------------------------------------- concept figures
def lora_bypass(d_in: int = 64, d_out: int = 64, r: int = 8, lora_alpha: float = 8,
                path: str | os.PathLike | None = None) -> Figure:
    """The LoRA layer as a drawing: the frozen W (d_out x d_in) beside the low-rank path A (r x d_in),
    then B (d_out x r), scaled by lora_alpha / r and added to W x. Box sizes follow the shapes."""
    if not 0 < r <= min(d_in, d_out):
        raise CourseError(f"r = {r} must lie between 1 and the smaller of d_in = {d_in} and d_out = {d_out}.")
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    unit = 3.0 / max(d_in, d_out)  # drawing units per row or column
    w_w, w_h = d_in * unit, d_out * unit
    ax.add_patch(Rectangle((0, 1), w_w, w_h, facecolor="lightgrey", edgecolor="black"))
    ax.text(w_w / 2, 1 + w_h / 2, f"W\nfrozen\n{d_out} x {d_in}", ha="center", va="center")
    ax_x = w_w + 1.2  # the low-rank path, to the right
    a_w, a_h = d_in * unit, r * unit
    ax.add_patch(Rectangle((ax_x, 1), a_w, a_h, facecolor="tab:blue", alpha=0.6, edgecolor="black"))
    ax.text(ax_x + a_w + 0.1, 1 + a_h / 2, f"A  ({r} x {d_in})\nrandom start", va="center", fontsize="small")
    b_w, b_h = r * unit, d_out * unit
    b_y = 1 + a_h + 0.6
    ax.add_patch(Rectangle((ax_x, b_y), b_w, b_h, facecolor="tab:red", alpha=0.6, edgecolor="black"))
    ax.text(ax_x + b_w + 0.1, b_y + b_h / 2, f"B  ({d_out} x {r})\nstarts at zero", va="center", fontsize="small")
    top = max(1 + w_h, b_y + b_h)
    ax.text(ax_x + b_w / 2, top + 0.45, f"x alpha / r = {lora_alpha:g} / {r} = {lora_alpha / r:g}", ha="center",
            fontsize="small", color="tab:red")
    plus = (w_w / 2 + (ax_x + b_w / 2)) / 2
    ax.text(plus, top + 1.2, "+", ha="center", va="center", fontsize=20)
    ax.text(plus, top + 1.85, "y = W x + (alpha / r) B A x", ha="center", va="center")
    ax.text(plus, -0.1, "x", ha="center", va="center", fontsize=14)
    arrow = dict(arrowstyle="->", mutation_scale=12, color="black")
    for a, b in [((plus, 0.1), (w_w / 2, 0.95)), ((plus, 0.1), (ax_x + a_w / 2, 0.95)),
                 ((ax_x + b_w / 2, 1 + a_h + 0.02), (ax_x + b_w / 2, b_y - 0.02)),
                 ((w_w / 2, 1 + w_h + 0.05), (plus - 0.2, top + 1.0)),
                 ((ax_x + b_w / 2, top + 0.7), (plus + 0.2, top + 1.0))]:
        ax.add_patch(FancyArrowPatch(a, b, **arrow))
    ax.text(w_w / 2, 0.55, f"{d_in * d_out:,} weights, not trained", ha="center", fontsize="x-small")
    ax.text(ax_x + a_w / 2, 0.55, f"{r * (d_in + d_out):,} trainable", ha="center", fontsize="x-small")
    ax.set_xlim(-0.3, ax_x + max(a_w, b_w) + 2.2)
    ax.set_ylim(-0.4, top + 2.2)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"The LoRA bypass at r = {r}")
    return _save(fig, path)


def update_against_grid(absmax: float, weight: float, update: float,
                        path: str | os.PathLike | None = None) -> Figure:
    """A small update to one weight of an NF4 block with scale `absmax` (see memory.nf4_merge): the
    values the block can hold, the stored weight, the weight after merging the update into the grid
    (back on its own level when the update is under half a gap), and the exact sum kept in the adapter."""
    m = nf4_merge(absmax, weight, update)
    stored, merged, kept = m["stored"], m["merged"], m["kept"]
    span = max(m["gap"], 4 * abs(update)) * 1.3
    grid = [float(v) * float(absmax) for v in nf4_levels()]
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot()
    ax.vlines([g for g in grid if abs(g - stored) <= span], 0, 3, color="lightgrey", linewidth=2,
              label="values the 4-bit block can hold")
    ax.plot([stored], [2.5], "ko", label=f"stored weight {stored:.4f}")
    ax.annotate("", xy=(kept, 2.5), xytext=(stored, 2.5), arrowprops=dict(arrowstyle="->", color="tab:red"))
    ax.plot([merged], [1.5], "s", color="tab:gray", markersize=8,
            label=f"merged into the grid: {merged:.4f} ({'update lost' if merged == stored else 'moved a whole level'})")
    ax.plot([kept], [0.5], "D", color="tab:red", label=f"kept in the adapter: {kept:.4f} (update {update:+.1e} kept)")
    ax.set_xlim(stored - span, stored + span)
    ax.set_ylim(0, 3)
    ax.set_yticks([0.5, 1.5, 2.5], ["kept apart", "merged", "before"])
    ax.set(xlabel="weight value", title="A small update against the 4-bit grid")
    ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    return _save(fig, path)


def sharding_concept(gpus: int = 4, path: str | os.PathLike | None = None) -> Figure:
    """What each GPU holds under DDP and under FSDP: a concept drawing, not a measurement.

    Each GPU is a column; its rows are the run's parameters, gradients and optimizer
    state, each cut into `gpus` equal pieces, and its activations. A filled piece is
    held by that GPU; an outlined one lives on another GPU. DDP fills every piece on
    every GPU (a full replica); FSDP fills one piece per row (GPU k holds shard k)
    and gathers a block's parameters from the others only while that block computes.
    """
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
