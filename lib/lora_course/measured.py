"""Measurements are results too: each is saved with the fingerprint of what it measured, and reused
while that fingerprint holds.

    fingerprint(*parts)                          a short hash of what a measurement depends on
    file_digest(path)                            a file's sha256, remembered per process while it is unchanged
    environment_report()                         the stack's versions and the device in use
    imports_of(module)                           the library modules one module imports, anywhere in it
    code_source(modules)                         the fingerprint of those library modules and all they import
    measured(results, name, key, measure, ...)   the saved value when `key` is unchanged, else measure() and save it

The fingerprint covers the `key` a chapter passes (profile, prompts, token counts,
adapter folders by their content), the stack and device the measurement ran on,
and the source of the library modules that compute it (`code`, with every module
they import; the whole library when none are named): a change to any of them
measures again; a change to a chapter's prose, or to a module the measurement
does not import (the book's build, its plots, the claims check), does not.
Values live in results/<profile>/measurements/<name>.json.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.metadata as md
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import torch

from .generate import Generation, generate_detailed
from .results import Results, read_json, write_json

T = TypeVar("T")
LIBRARY = Path(__file__).resolve().parent
_SOURCE_HASH: dict[tuple[str, ...], str] = {}  # per process: the code does not change under it


_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256, per process
_RECENT_NS = 2_000_000_000  # a file written in the last 2 s may be rewritten within one clock tick


def file_digest(f: Path) -> str:
    """The sha256 of a file's bytes, read 4 MiB at a time (checkpoints are large, about 2 s a gigabyte).
    Remembered per process while the file's size and mtime stay, unless it was written in the last 2 s:
    a rewrite of the same size within one clock tick keeps its mtime."""
    stat = f.stat()
    key = (str(f), stat.st_size, stat.st_mtime_ns)
    if key in _DIGESTS:
        return _DIGESTS[key]
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    if time.time_ns() - stat.st_mtime_ns > _RECENT_NS:
        _DIGESTS[key] = h.hexdigest()
    return h.hexdigest()


def _feed(h, part: Any) -> None:
    if isinstance(part, Path):
        files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
        for f in files:  # a folder by its files' names and bytes, so a retrained adapter is a new key
            h.update(str(f.relative_to(part) if part.is_dir() else f.name).encode())
            h.update(file_digest(f).encode())
        return
    if dataclasses.is_dataclass(part) and not isinstance(part, type):
        part = dataclasses.asdict(part)
    if isinstance(part, dict):
        for k in sorted(part):
            h.update(json.dumps(str(k)).encode())
            _feed(h, part[k])
        return
    if isinstance(part, (list, tuple)):
        h.update(b"[")
        for x in part:
            _feed(h, x)
        h.update(b"]")
        return
    h.update(json.dumps(part, default=str).encode())


def fingerprint(*parts: Any) -> str:
    """A 16-hex-digit hash of `parts` (dicts, lists, dataclasses, plain values; Paths by their files' content)."""
    h = hashlib.sha256()
    for part in parts:
        _feed(h, part)
    return h.hexdigest()[:16]


def environment_report() -> dict[str, str]:
    """Versions of the stack and the device in use."""
    versions = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "trl", "bitsandbytes"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "not installed"
    if torch.cuda.is_available():
        versions["device"] = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        versions["device"] = f"cpu ({os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()} kernels)"
    return versions


def imports_of(module: str) -> set[str]:
    """The library modules that `module` imports anywhere, inside functions included."""
    found = set()
    for node in ast.walk(ast.parse((LIBRARY / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found |= {a.name for a in node.names}
            elif node.module and node.module.startswith("lora_course."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("lora_course.")}
    return found - {module}


def imported_modules(modules: Sequence[str]) -> list[str]:
    """`modules` of the library and every library module they import, at the top or inside a function."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen or not (LIBRARY / f"{name}.py").exists():
            continue
        seen.add(name)
        todo += imports_of(name)
    return sorted(seen)


def code_source(modules: Sequence[str] = ()) -> str:
    """The fingerprint of the library's code that `modules` run (every module when none are named)."""
    key = tuple(modules)
    if key not in _SOURCE_HASH:
        names = imported_modules(key) if key else sorted(p.stem for p in LIBRARY.glob("*.py"))
        _SOURCE_HASH[key] = fingerprint(*[(n, (LIBRARY / f"{n}.py").read_text()) for n in names])
    return _SOURCE_HASH[key]


def measured(results: Results, name: str, key: dict[str, Any], measure: Callable[[], T],
             to_json: Callable[[T], Any] = lambda x: x, from_json: Callable[[Any], T] = lambda x: x,
             code: Sequence[str] = ()) -> T:
    """The measurement `name` of this profile: reused from disk when its fingerprint (key, stack and
    device, the source of the library modules `code` and what they import) is the one saved with it,
    else made by `measure()` and saved."""
    path = results.path("measurements", f"{name}.json")
    key_hash = fingerprint(key, environment_report(), code_source(code))
    if path.exists():
        saved = read_json(path)
        if saved.get("fingerprint") == key_hash:
            return from_json(saved["value"])
    value = measure()
    write_json(path, {"fingerprint": key_hash, "value": to_json(value)})
    return value


def generations_to_json(gens) -> list[dict[str, Any]]:
    return [dataclasses.asdict(g) for g in gens]


def generations_from_json(rows: list[dict[str, Any]]):
    return [Generation(**row) for row in rows]


def measured_generations(results: Results, name: str, model, tokenizer, prompts: list[str], max_new_tokens: int,
                         *, model_key: dict[str, Any], **kwargs):
    """`generate.generate_detailed(model, tokenizer, prompts, max_new_tokens, **kwargs)` as a measurement:
    reused while `model_key` (what identifies the model: profile, quantisation, adapter folder), the
    prompts and the settings are unchanged."""
    key = dict(model=model_key, prompts=list(prompts), max_new_tokens=max_new_tokens, settings=kwargs)
    return measured(results, name, key, lambda: generate_detailed(model, tokenizer, prompts, max_new_tokens, **kwargs),
                    generations_to_json, generations_from_json, code=("generate", "model"))
