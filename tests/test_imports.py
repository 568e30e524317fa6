"""The package's structure: no import cycle, and importing it changes nothing outside it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lora_course.measured import imports_of

PACKAGE = Path(__file__).resolve().parents[1] / "lib" / "lora_course"


def test_the_modules_form_no_cycle():
    graph = {p.stem: imports_of(p.stem) for p in PACKAGE.glob("*.py")}
    modules = set(graph)
    assert all(deps <= modules for deps in graph.values())
    order, state = [], {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", f"import cycle: {' -> '.join(path + [m])}"
        state[m] = "open"
        for dep in sorted(graph[m]):
            visit(dep, path + [m])
        state[m] = "done"
        order.append(m)

    for m in sorted(graph):
        visit(m, [])
    # results (run types) sits below train and pipeline; nothing low imports the pipeline.
    assert "pipeline" not in graph["results"] | graph["train"] | graph["model"]
    assert order.index("results") < order.index("train") < order.index("pipeline")


def test_importing_the_package_changes_no_warning_filter_or_environment():
    code = (
        "import os, warnings\n"
        "import torch, transformers, peft, trl, pandas, datasets, matplotlib, accelerate, bitsandbytes\n"
        "filters, env = list(warnings.filters), dict(os.environ)\n"
        "import lora_course, pkgutil, importlib\n"
        "for m in pkgutil.iter_modules(lora_course.__path__):\n"
        "    if m.name != '__main__':\n"
        "        importlib.import_module('lora_course.' + m.name)\n"
        "assert list(warnings.filters) == filters, 'warning filters changed'\n"
        "assert dict(os.environ) == env, set(os.environ) ^ set(env)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-1500:]


def test_the_package_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "lora_course", "list"], capture_output=True, text=True)
    assert proc.returncode == 0 and "experiment  qlora-r8-qv" in proc.stdout


def test_the_package_docstring_names_every_module():
    import re

    import lora_course

    named = set(re.findall(r"[a-z_]+", lora_course.__doc__))
    modules = {p.stem for p in Path(lora_course.__file__).parent.glob("*.py")} - {"__init__", "__main__"}
    assert sorted(modules - named) == []
