"""Command line: python -m lora_course {params,train,generate,merge,list} --help"""

from __future__ import annotations

import argparse
import json
import sys

from .config import ALL_LINEAR, EXPERIMENTS, MODELS, PROFILES, RunConfig
from .errors import CourseError


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", required=True, help=f"one of: {', '.join(EXPERIMENTS)}")
    p.add_argument("--profile", default="cpu", help=f"one of: {', '.join(PROFILES)} (default: cpu)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--results", default="results", help="results root folder (default: results)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lora_course", description="LoRA/QLoRA course: train, generate, merge.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("params", help="count trainable and total parameters from the architecture alone (no download)")
    p.add_argument("--model", required=True, help=f"one of: {', '.join(MODELS)}")
    p.add_argument("--r", type=int, default=8, help="LoRA rank (lora_r)")
    p.add_argument("--targets", nargs="+", default=["q_proj", "v_proj"], help=f"module names, or '{ALL_LINEAR}'")
    p.add_argument("--json", action="store_true", help="print JSON instead of a sentence")

    p = sub.add_parser("train", help="train one experiment and write results/<profile>/<experiment>/")
    _run_args(p)
    p.add_argument("--data", default=None, help="data source: 'sample', a hub dataset id, or a CSV/JSONL/parquet path")
    p.add_argument("--max-steps", type=int, default=None, help="override the profile's step budget")
    p.add_argument("--retrain", action="store_true", help="train even if a finished run of the same config exists")

    p = sub.add_parser("generate", help="generate a description with a trained adapter (or the base model)")
    _run_args(p)
    p.add_argument("--product", default="Corelogic Smooth Mouse")
    p.add_argument("--category", default="Optical Mouse")
    p.add_argument("--base", action="store_true", help="use the untuned base model, no adapter")
    p.add_argument("--max-new-tokens", type=int, default=None)

    p = sub.add_parser("merge", help="merge a trained adapter into a float base and check the logits")
    _run_args(p)
    p.add_argument("--out", default=None, help="folder for the merged model (default: <results>/<profile>/<experiment>/merged)")

    p = sub.add_parser("book", help="run every chapter with papermill, then render the book")
    p.add_argument("--profile", default="cpu", help=f"one of: {', '.join(PROFILES)} (default: cpu)")
    p.add_argument("--skip-run", action="store_true", help="render the chapters already executed in _build/src")

    sub.add_parser("check-book", help="load every chapter page of the built book in headless Chromium")

    p = sub.add_parser("bench", help="measure training throughput, memory and generation latency side by side")
    p.add_argument("--experiment", default="qlora-r8-qv", help=f"one of: {', '.join(EXPERIMENTS)}")
    p.add_argument("--profile", default="cpu", help=f"one of: {', '.join(PROFILES)} (default: cpu)")
    p.add_argument("--rows", type=int, default=None, help="training rows, one pass per trainer setting (default: the profile's bench_rows)")
    p.add_argument("--random-weights", action="store_true", help="the profile model's architecture with random weights (no download)")
    p.add_argument("--data", default=None, help="data source override, e.g. 'sample' for a gpu run offline")
    p.add_argument("--repeats", type=int, default=3, help="timed generation runs per model (default: 3)")
    p.add_argument("--no-latency", action="store_true", help="measure training only")
    p.add_argument("--out", default=None, help="folder for the JSON (default: results/<profile>/bench)")

    sub.add_parser("list", help="list models, profiles and experiments")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except CourseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_params(args) -> int:
    from .lora import count_lora_parameters
    from .model import meta_model

    targets = ALL_LINEAR if args.targets == [ALL_LINEAR] else tuple(args.targets)
    report = count_lora_parameters(meta_model(args.model), args.r, targets)
    if args.json:
        print(json.dumps({"model": args.model, **report.to_dict()}, indent=2))
    else:
        print(f"{args.model}, r={args.r}, targets={', '.join(report.target_modules)}")
        print(f"trainable: {report.trainable:,}  total: {report.total:,}  base: {report.total - report.trainable:,}  ({report.percent:.4f}% trainable)")
    return 0


def _config(args, **overrides) -> RunConfig:
    return RunConfig.create(args.experiment, args.profile, seed=args.seed, results_dir=args.results, **overrides)


def cmd_train(args) -> int:
    from .train import run_experiment

    overrides = {}
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    config = _config(args, data_source=args.data, **overrides)
    run = run_experiment(config, retrain=args.retrain, keep_model=False)
    r = run.result
    print(f"{config.experiment.name} @ {config.profile.name}: {r.steps} steps, loss {r.first_loss:.3f} -> {r.final_loss:.3f}, "
          f"{r.wall_time_s:.0f} s, {r.tokens_trained:,} tokens, peak {r.peak_memory_mib:,.0f} MiB ({r.memory_kind})")
    print(f"results: {run.out_dir}")
    return 0


def cmd_generate(args) -> int:
    from .data import product_prompt
    from .generate import generate
    from .merge import load_adapter_model
    from .model import load_model, load_tokenizer

    config = _config(args)
    prompt = product_prompt(args.product, args.category)
    tokenizer = load_tokenizer(config.profile)
    if args.base:
        model = load_model(config.profile, config.experiment.quantization)
    else:
        model = load_adapter_model(config.profile, config.out_dir / "adapter", config.experiment.quantization)
    print(generate(model, tokenizer, prompt, args.max_new_tokens or config.profile.max_new_tokens))
    return 0


def cmd_merge(args) -> int:
    from .data import BLOG_PROMPTS, product_prompt
    from .merge import merge_and_check, save_merged

    config = _config(args)
    prompts = [product_prompt(p, c) for p, c in BLOG_PROMPTS]
    report = merge_and_check(config.profile, config.out_dir / "adapter", prompts)
    out = save_merged(report.merged_model, report.tokenizer, args.out or config.out_dir / "merged")
    print(f"max |logit(adapter) - logit(merged)| = {report.max_abs_logit_diff:.3g}")
    print(f"merged model: {out}")
    return 0


def cmd_book(args) -> int:
    from .book import build_book, build_html, copy_book_sources
    from .config import get_profile

    get_profile(args.profile)
    if args.skip_run:
        copy_book_sources()
        build_html()
    else:
        build_book(args.profile)
    return 0


def cmd_check_book(args) -> int:
    from .book import BUILD_DIR, check_book_in_browser

    problems = check_book_in_browser()
    for p in problems:
        print(f"browser check: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"browser check: every chapter page loads, images included; screenshot in {BUILD_DIR / 'screenshots'}")
    return 0


def cmd_bench(args) -> int:
    from pathlib import Path

    from .bench import bench, save
    from .config import get_profile

    result = bench(get_profile(args.profile), args.experiment, rows=args.rows, random_weights=args.random_weights,
                   data_source=args.data, latency_repeats=args.repeats, latency=not args.no_latency)
    out = save(result, args.out or Path("results") / args.profile / "bench")
    print(result.table())
    print(f"json: {out}")
    return 0


def cmd_list(args) -> int:
    for name, m in MODELS.items():
        print(f"model       {name:18} {m.description}")
    for name, p in PROFILES.items():
        print(f"profile     {name:18} {p.description}")
    for name, e in EXPERIMENTS.items():
        print(f"experiment  {name:18} {e.title}")
    return 0


COMMANDS = {
    "params": cmd_params,
    "train": cmd_train,
    "generate": cmd_generate,
    "merge": cmd_merge,
    "book": cmd_book,
    "check-book": cmd_check_book,
    "bench": cmd_bench,
    "list": cmd_list,
}
