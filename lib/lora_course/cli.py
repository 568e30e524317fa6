"""Command line: python -m lora_course {list,params,train,generate,merge,bench,sweep,train-check,book,check-book,device-run} --help

Under `accelerate launch` (e.g. `accelerate launch --num_processes 2 -m lora_course train ...`, or
`python -m lora_course train --processes 2 ...`, which launches it) every process trains on its shard
of the rows and only the main process writes results. A refusal or an interruption is said once, by
the first process that meets it; every process that meets one exits with its status (2 or 130).

Each command imports what it runs (torch, transformers, pandas) inside its function, so that --help
and `list` start without them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
from pathlib import Path

from . import quiet
from .catalogue import MODELS
from .config import DEFAULT_SEED, RunConfig, check_run_name
from .errors import INTERRUPTED, REFUSED, CourseError
from .presets import EXPERIMENTS, EXTRA_EXPERIMENTS, PROFILES, get_experiment, get_profile
from .settings import DataSettings, LoraSettings, TrainSettings, parse_setting
from .targets import TARGET_SETS

ALL_EXPERIMENTS = {**EXPERIMENTS, **EXTRA_EXPERIMENTS}


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad argument reported in one sentence instead of the usage block."""

    def error(self, message: str):
        say_once(f"error: {message}: see {self.prog} --help.")
        raise SystemExit(REFUSED)




def say_once(line: str) -> None:
    """Print a refusal or interruption on stderr; under a launcher, only the first process to meet one prints it.

    torchrun (under `accelerate launch`) gives each launch attempt a scratch folder of its own
    (TORCHELASTIC_ERROR_FILE lies in it): the first process to create the marker there speaks.
    Under another launcher, each process that fails says it, rather than none.
    """
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and error_file:
        marker = os.path.join(os.path.dirname(os.path.dirname(error_file)), "lora_course-said")
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        except OSError:
            pass  # no marker possible: say it
    print(line, file=sys.stderr, flush=True)


def _count(text: str) -> int:
    """argparse type of a count: a whole number from 1 up (argparse puts the option's name before the message)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give 1 or more") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {value}; give 1 or more")
    return value


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", required=True, help=f"one of: {', '.join(ALL_EXPERIMENTS)}")
    p.add_argument("--profile", default="cpu", help=f"one of: {', '.join(PROFILES)} (default: cpu)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--results", default="results", help="results root folder (default: results)")
    p.add_argument("--model", default=None,
                   help="the profile's model replaced by a local folder, a hub id (owner/name) or a registered name")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m lora_course", description="LoRA/QLoRA course: train, generate, merge.")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="list models, profiles and experiments")

    p = sub.add_parser("params", help="count trainable and total parameters from the architecture alone (no download)")
    p.add_argument("--model", required=True, help=f"a local folder, a hub id (owner/name), or one of: {', '.join(MODELS)}")
    p.add_argument("--r", type=int, default=8, help="LoRA rank (LoraConfig's r, the post's lora_r)")
    p.add_argument("--targets", nargs="+", default=["q_proj", "v_proj"], help=f"module names, or a target set: {', '.join(TARGET_SETS)}")
    p.add_argument("--json", action="store_true", help="print JSON instead of a sentence")

    p = sub.add_parser("train", help="train one experiment and write results/<profile>/<run>/")
    _run_args(p)
    p.add_argument("--data", default=None, help="data source: 'sample', a hub dataset id, or a CSV/JSONL/parquet path")
    p.add_argument("--columns", default=None, metavar="ROLE=COLUMN,...",
                   help="map the data's columns to roles, e.g. instruction=question,response=answer (Alpaca: "
                        "instruction, input, output; or prompt, completion)")
    p.add_argument("--max-steps", type=int, default=None, help="override the profile's step budget")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a trainer (SFTConfig), LoRA (LoraConfig) or data setting by its name, "
                        "e.g. learning_rate=1e-4, target_modules=q_proj,k_proj or test_size=2")
    p.add_argument("--precision", action="append", default=[], metavar="NAME=VALUE",
                   help="override a precision setting, e.g. quant_storage=fp32 for FSDP (see PrecisionSettings)")
    p.add_argument("--name", default="", help="the run's folder name (default: the experiment's)")
    p.add_argument("--retrain", action="store_true", help="train even if a finished run of the same config exists")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run's folder")
    p.add_argument("--keep-global-batch", action="store_true",
                   help="under accelerate launch, divide gradient accumulation by the number of processes")
    p.add_argument("--processes", type=_count, default=1,
                   help="data-parallel processes on this machine, started through accelerate launch (default: 1)")

    p = sub.add_parser("generate", help="generate a description with a trained adapter (or the base model)")
    _run_args(p)
    p.add_argument("--product", default="Corelogic Smooth Mouse")
    p.add_argument("--category", default="Optical Mouse")
    p.add_argument("--instruction", default=None,
                   help="an instruction in the Alpaca template instead of a product (for your own data)")
    p.add_argument("--base", action="store_true", help="use the untuned base model, no adapter")
    p.add_argument("--max-new-tokens", type=_count, default=None, help="tokens to generate (default: the profile's)")

    p = sub.add_parser("merge", help="merge a trained adapter into a float base and check the logits")
    _run_args(p)
    p.add_argument("--out", default=None, help="folder for the merged model (default: <results>/<profile>/<run>/merged)")

    p = sub.add_parser("bench", help="measure training throughput, memory and generation latency side by side")
    p.add_argument("--experiment", default="qlora-r8-qv", help=f"one of: {', '.join(EXPERIMENTS)}")
    p.add_argument("--profile", default="cpu", help=f"one of: {', '.join(PROFILES)} (default: cpu)")
    p.add_argument("--rows", type=_count, default=None, help="training rows, one pass per trainer setting (default: the profile's bench_rows)")
    p.add_argument("--random-weights", action="store_true", help="the profile model's architecture with random weights (no download)")
    p.add_argument("--data", default=None, help="data source override, e.g. 'sample' for a gpu run offline")
    p.add_argument("--repeats", type=_count, default=3, help="timed generation runs per model (default: 3)")
    p.add_argument("--no-latency", action="store_true", help="measure training only")
    p.add_argument("--results", default="results", help="results root folder (default: results)")
    p.add_argument("--model", default=None,
                   help="the profile's model replaced by a local folder, a hub id (owner/name) or a registered name")

    p = sub.add_parser("sweep", help="run the sweep of chapter 7 (rank, lora_alpha rule, targets), each point cached")
    p.add_argument("--profile", default="cpu", help=f"one of: {', '.join(PROFILES)} (default: cpu)")
    p.add_argument("--results", default="results", help="results root folder (default: results)")
    p.add_argument("--model", default=None,
                   help="the profile's model replaced by a local folder, a hub id (owner/name) or a registered name")

    p = sub.add_parser("train-check", help="the profile's trainer on random weights: loss, adapter movement, memory (JSON)")
    p.add_argument("--profile", default="gpu", help=f"one of: {', '.join(PROFILES)} (default: gpu)")
    p.add_argument("--steps", type=_count, default=40, help="optimizer steps per run (default: 40)")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--results", default="results", help="results root folder (default: results)")

    p = sub.add_parser("book", help="run every chapter with papermill, then render the book")
    p.add_argument("--profile", default="cpu", help=f"one of: {', '.join(PROFILES)} (default: cpu)")
    p.add_argument("--skip-run", action="store_true", help="render the chapters already executed in _build/src")
    p.add_argument("--no-render", action="store_true",
                   help="only execute the chapters, into --out (default _build/executed-<profile>), e.g. at gpu-mini")
    p.add_argument("--out", default=None, help="folder for --no-render's executed chapters")
    p.add_argument("--results", default=None, help="results root folder for --no-render (default: results)")
    p.add_argument("--side-by-side", action="store_true",
                   help="with --no-render: two chapters at a time, one thread each, each once the chapters it "
                        "reads have run (small models; not for timing claims)")
    p.add_argument("--chapter", action="append", default=[], metavar="NN",
                   help="run only this chapter (number or file name; repeatable), render with the others' last "
                        "executed copies (with --no-render: execute only these chapters)")

    sub.add_parser("check-book", help="serve the built book under a sub-path and load every page in headless Chromium")

    p = sub.add_parser("device-run", help="on a GPU machine: the trainer check, then every chapter, in a time budget")
    p.add_argument("--profile", default="gpu-device", help="profile the chapters run at (default: gpu-device)")
    p.add_argument("--check-profile", default="gpu", help="profile of the trainer check (default: gpu)")
    p.add_argument("--check-steps", type=int, default=10, help="optimizer steps per check run (default: 10)")
    p.add_argument("--budget-s", type=float, default=450, help="seconds for both stages (default: 450)")
    p.add_argument("--out", required=True, help="folder for device-run.json, train-check.json, chapters.tar.gz")
    p.add_argument("--work", required=True, help="scratch folder for results and executed chapters")
    p.add_argument("--chapters", default="", help="only these chapters, by number (e.g. '01 04'); default all")
    return parser


def _exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that a process stopped by its launcher (torchrun stops every
    rank when one fails) cleans up like any other failure instead of leaving half a results folder."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> int:
    quiet.install()
    _exit_on_sigterm()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return COMMANDS[args.command](args)
    except CourseError as exc:
        say_once(f"error: {exc}")
        return REFUSED
    except KeyboardInterrupt as exc:  # Ctrl-C: one line, with what was kept, and the shell's code for SIGINT
        kept = "; ".join(getattr(exc, "__notes__", ())) or "nothing was written"
        say_once(f"interrupted: {kept}.")
        return INTERRUPTED


def _parse_sets(items: list[str]) -> tuple[dict, dict, dict]:
    """NAME=VALUE pairs split into TrainSettings, LoraSettings and DataSettings overrides, each value read
    as its field's declared type."""
    kinds = {"trainer": TrainSettings, "LoRA": LoraSettings, "data": DataSettings}
    found: dict[str, dict] = {kind: {} for kind in kinds}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise CourseError(f"--set {item!r} is not NAME=VALUE: write e.g. --set learning_rate=1e-4.")
        kind = next((k for k, cls in kinds.items() if name in cls.__dataclass_fields__), None)
        if kind is None:
            known = "; ".join(f"{k} settings: {', '.join(sorted(cls.__dataclass_fields__))}" for k, cls in kinds.items())
            raise CourseError(f"--set {name}: no trainer, LoRA or data setting has that name; {known}.")
        found[kind][name] = parse_setting(kinds[kind], name, text)
    return found["trainer"], found["LoRA"], found["data"]


def _without_processes(train_args: list[str]) -> list[str]:
    """The train command's arguments less --processes (or an abbreviation argparse took for it) and its value."""
    options = [o for o in build_parser()._subparsers._group_actions[0].choices["train"]._option_string_actions
               if o.startswith("--")]
    kept, skip = [], False
    for item in train_args:
        option = item.split("=", 1)[0]
        if skip:
            skip = False
        elif item.startswith("--") and [o for o in options if o.startswith(option)] in (["--processes"],):
            skip = "=" not in item
        else:
            kept.append(item)
    return kept


def _with_model(profile, model: str | None):
    """The profile with its model replaced by `model` (a folder, a hub id or a registered name), checked now."""
    from .external import with_model_and_data

    profile = get_profile(profile) if isinstance(profile, str) else profile
    return profile if model is None else with_model_and_data(profile, model)


def _config(args, **overrides) -> RunConfig:
    profile = _with_model(args.profile, getattr(args, "model", None))
    return RunConfig.create(args.experiment, profile, seed=args.seed, results_dir=args.results, **overrides)


def cmd_params(args) -> int:
    from .lora import count_lora_parameters
    from .model import meta_model

    targets = args.targets[0] if len(args.targets) == 1 and args.targets[0] in TARGET_SETS else tuple(args.targets)
    report = count_lora_parameters(meta_model(args.model), args.r, targets)
    if args.json:
        print(json.dumps({"model": args.model, **report.to_dict()}, indent=2))
    else:
        print(f"{args.model}, r={args.r}, targets={', '.join(report.target_modules)}")
        print(f"trainable: {report.trainable:,}  total: {report.total:,}  base: {report.total - report.trainable:,}  "
              f"({report.percent:.4f}% trainable)")
    return 0


def cmd_train(args) -> int:
    from .pipeline import run

    if args.name:
        check_run_name(args.name)  # one folder name; only the library nests runs (sweep/<point>)
    train, lora, data = _parse_sets(args.set)
    if args.max_steps is not None:
        train["max_steps"] = args.max_steps
    experiment = get_experiment(args.experiment)
    if experiment.lora is None:
        raise CourseError(f"The experiment {experiment.name!r} is the untuned base model: it has nothing to train; "
                          f"see its output with generate --base, or pick a LoRA experiment to train.")
    if lora:
        experiment = experiment.with_lora(**lora)
    launching = args.processes > 1 and "WORLD_SIZE" not in os.environ  # this process starts the others
    world = args.processes if launching else int(os.environ.get("WORLD_SIZE", "1"))
    profile = _with_model(get_profile(args.profile), args.model)
    accumulation = train.get("gradient_accumulation_steps", profile.train.gradient_accumulation_steps)
    if args.keep_global_batch:
        if accumulation % world:
            raise CourseError(f"--keep-global-batch needs gradient accumulation ({accumulation}) divisible by the "
                              f"{world} processes: set --set gradient_accumulation_steps=<a multiple of {world}>.")
        accumulation //= world
        train["gradient_accumulation_steps"] = accumulation
    if args.data is not None:
        data["source"] = args.data
    if args.columns is not None:
        from .formats import parse_columns

        data["columns"] = parse_columns(args.columns)
    precision = {}
    for item in args.precision:
        name, sep, value = item.partition("=")
        if not sep:
            raise CourseError(f"--precision {item!r} is not NAME=VALUE: write e.g. --precision quant_storage=fp32.")
        precision[name] = value
    config = RunConfig.create(experiment, profile, seed=args.seed, results_dir=args.results, name=args.name,
                              data=data or None, precision=precision or None, **train)
    if launching:  # every check above ran once, here, before any process starts
        from .distributed import launch

        return launch(args.processes, _without_processes(args.argv[1:]))
    micro = config.profile.train.per_device_train_batch_size
    if world > 1 and os.environ.get("RANK", "0") == "0":
        print(f"{world} processes x {micro} rows x {accumulation} accumulation = {world * micro * accumulation} rows "
              f"per optimizer step (one process: {micro * profile.train.gradient_accumulation_steps})", flush=True)
    r = run(config, retrain=args.retrain, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":
        t = r.result
        if r.reused:
            print(f"reused the finished run in {r.out_dir}: it has the same settings (--retrain trains it again)")
        for note in r.data_report.get("notes", []):
            print(f"data: {note}")
        print(f"{config.name} @ {config.profile.name}: {t.steps} steps, loss {t.first_loss:.3f} -> {t.final_loss:.3f}, "
              f"{t.wall_time_s:.0f} s, {t.tokens_trained:,} tokens, peak {t.peak_memory_mib:,.0f} MiB ({t.memory_kind})")
        print(f"results: {r.out_dir}")
    return 0


def cmd_generate(args) -> int:
    from .data import product_prompt
    from .generate import generate
    from .merge import load_adapter_model
    from .model import load_model, load_tokenizer
    from .results import adapter_folder

    config = _config(args)
    if args.instruction is not None and args.instruction.strip():
        from .data import format_prompt

        prompt = format_prompt(args.instruction.strip())
    else:
        prompt = product_prompt(args.product, args.category)  # an empty product or category is an error here
    tokenizer = load_tokenizer(config.profile)
    if args.base:
        model = load_model(config.profile, config.experiment.quantization)
    else:
        model = load_adapter_model(config.profile, adapter_folder(config.out_dir), config.experiment.quantization)
    max_new_tokens = args.max_new_tokens if args.max_new_tokens is not None else config.profile.max_new_tokens
    print(generate(model, tokenizer, prompt, max_new_tokens))
    return 0


def cmd_merge(args) -> int:
    from .data import BLOG_PROMPTS, product_prompt
    from .merge import check_merged_out, merge_and_check, save_merged
    from .results import adapter_folder

    config = _config(args)
    out_dir = args.out or config.out_dir / "merged"
    check_merged_out(out_dir)
    prompts = [product_prompt(p, c) for p, c in BLOG_PROMPTS]
    report = merge_and_check(config.profile, adapter_folder(config.out_dir), prompts)
    out = save_merged(report.merged_model, report.tokenizer, out_dir)
    print(f"max |logit(adapter) - logit(merged)| = {report.max_abs_logit_diff:.3g}")
    print(f"merged model: {out}")
    return 0


def _profile_with(args):
    from .bench import random_weights

    profile = _with_model(get_profile(args.profile), getattr(args, "model", None))
    if getattr(args, "random_weights", False):
        profile = random_weights(profile)
    if getattr(args, "data", None) is not None:
        profile = dataclasses.replace(profile, data=dataclasses.replace(profile.data, source=args.data, n_rows=None))
    return profile


def cmd_bench(args) -> int:
    from .bench import bench, save
    from .results import Results

    profile = _profile_with(args)
    result = bench(profile, args.experiment, results_dir=args.results, rows=args.rows, latency_repeats=args.repeats,
                   latency=not args.no_latency)
    out = save(result, Results(args.results, profile.name))
    print(result.table())
    print(f"json: {out}")
    return 0


def cmd_sweep(args) -> int:
    from .sweep import SWEEP, run_sweep, sweep_table

    table = sweep_table(run_sweep(SWEEP, _with_model(get_profile(args.profile), args.model), args.results))
    print(table.to_string())
    return 0 if not table["status"].str.startswith("failed").any() else 1


def cmd_train_check(args) -> int:
    from .bench import describe_utilisation, train_check
    from .results import write_json

    report = train_check(get_profile(args.profile), steps=args.steps, results_dir=args.results)
    write_json(Path(args.out), report)
    for name, r in report["runs"].items():
        print(f"{name}: loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f} (finite: {r['finite']}), lora_A moved "
              f"{r['moved_share']['lora_A']:.1%}, peak {r['peak_memory_mib']:,.0f} MiB, "
              f"{r['tokens_per_second']:,.0f} tokens/s, utilisation {describe_utilisation(r['utilisation'])}")
    if not report["ok"]:
        print("error: an adapter froze (some adapted module moved under 99% of its lora_A entries) or a loss was not finite", file=sys.stderr)
        return 1
    return 0


def cmd_book(args) -> int:
    from .book import build_book, build_html, copy_book_sources, rebuild_chapters

    get_profile(args.profile)
    if args.no_render:
        from .book import execute_chapters

        execute_chapters(args.profile, Path(args.out) if args.out else None, args.results, args.chapter or None,
                         side_by_side=args.side_by_side)
    elif args.skip_run:
        copy_book_sources()
        build_html()
    elif args.chapter:
        rebuild_chapters(args.profile, args.chapter)
    else:
        build_book(args.profile)
    return 0


def cmd_device_run(args) -> int:
    from .devicecheck import device_run

    get_profile(args.profile), get_profile(args.check_profile)
    return device_run(args.profile, args.check_profile, args.check_steps, args.budget_s, Path(args.out), Path(args.work),
                      tuple(args.chapters.split()))


def cmd_check_book(args) -> int:
    from .book import BUILD_DIR, check_book_in_browser

    report = check_book_in_browser()
    for p in report.problems:
        print(f"browser check: {p}", file=sys.stderr)
    print(f"browser check: {report.summary()}")
    if report.problems:
        print(f"browser check: {len(report.problems)} problem(s) above", file=sys.stderr)
        return 1
    print(f"browser check: every page, request and internal link works; screenshot in {BUILD_DIR / 'screenshots'}")
    return 0


def cmd_list(args) -> int:
    for name, m in MODELS.items():
        print(f"model       {name:18} {m.description}")
    for name, p in PROFILES.items():
        print(f"profile     {name:18} {p.description}")
    for name, e in ALL_EXPERIMENTS.items():
        print(f"experiment  {name:18} {e.title}")
    return 0


COMMANDS = {
    "list": cmd_list,
    "params": cmd_params,
    "train": cmd_train,
    "generate": cmd_generate,
    "merge": cmd_merge,
    "bench": cmd_bench,
    "sweep": cmd_sweep,
    "train-check": cmd_train_check,
    "book": cmd_book,
    "check-book": cmd_check_book,
    "device-run": cmd_device_run,
}
