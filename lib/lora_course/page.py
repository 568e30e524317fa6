"""What a chapter page imports: its set-up, and the glue and guards that tie its prose to its numbers.

    ctx = setup_chapter(PROFILE, SEED, RESULTS_DIR)   quiet known noise, check the profile, seed everything,
                                                      find the results (a ChapterContext)
    glue_text(name, value, fmt)                       a computed value for {glue:text}`name` in the prose
    say(name, condition, if_true, if_false)           the sentence the data support, glued
    guard(condition, sentence, evidence)              stop the build when the data contradict the prose (ClaimError)
    shown_path(path)                                  a path as a page prints it

The book's build (`book`) executes the pages; nothing here knows how.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import quiet
from .config import DEFAULT_SEED, RunConfig
from .data import REPO_ROOT
from .precision import for_profile
from .presets import get_profile
from .results import Results
from .settings import Profile


@dataclass(frozen=True)
class ChapterContext:
    """What a chapter's set-up cell resolves: profile, seed, and the results of that profile."""

    profile: Profile
    seed: int
    results: Results

    @property
    def results_dir(self) -> Path:
        return self.results.root

    def figure_path(self, name: str) -> Path:
        return self.results.figure(name)

    def config(self, experiment, **overrides):
        """A RunConfig for this page's profile, seed and results folder (see RunConfig.create)."""
        return RunConfig.create(experiment, self.profile, seed=overrides.pop("seed", self.seed),
                                results_dir=self.results_dir, **overrides)


def setup_chapter(profile: str, seed: int = DEFAULT_SEED, results_dir: str | os.PathLike = "results") -> ChapterContext:
    """A chapter's set-up: quiet known noise, check the profile, seed everything, find the results.

    A relative `results_dir` is taken from the repository root, so a chapter run
    from chapters/ (Jupyter), from the root (papermill) or in Colab writes to the
    same place. Prints the stack's versions and one line naming the profile and
    model behind the page's numbers (both also glued for the prose).
    """
    quiet.install()
    # Only now: these import transformers, which warns in a notebook (tqdm's IProgress) before quiet.install().
    from .generate import wrap
    from .measured import environment_report
    from .model import check_device

    prof = get_profile(profile)
    check_device(prof.device)
    _inline_figures()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    root = Path(results_dir)
    if not root.is_absolute():
        root = REPO_ROOT / root
    ctx = ChapterContext(prof, seed, Results(root, prof.name))
    spec = prof.model_spec
    model = spec.shown_name
    glue_text("profile", prof.name)
    glue_text("model", model)

    print(wrap(", ".join(f"{k} {v}" for k, v in environment_report().items())))
    print(wrap(f"Numbers on this page: profile {prof.name!r}, model {model}, seed {seed}; "
               f"precision {for_profile(prof).describe()}; results in {shown_path(ctx.results.dir)}"))
    return ctx


def shown_path(path: str | os.PathLike) -> str:
    """A path as a page prints it: relative to the repository when inside it (the same on every machine that
    builds the book), else as given."""
    path = Path(path)
    try:
        return path.resolve().relative_to(REPO_ROOT.resolve()).as_posix()
    except ValueError:
        return str(path)


def _inline_figures() -> None:
    """In a notebook, show the Figures that lora_course.plots returns as images.

    The plots are built without pyplot, so nothing registers matplotlib's image
    display in the kernel unless the inline backend is switched on here.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "kernel"):  # a notebook kernel, not a plain Python process
        shell.run_line_magic("matplotlib", "inline")


# --------------------------------------------------------------------------- glue and claims
class ClaimError(AssertionError):
    """A sentence of the book that the data contradict."""


def glue_text(name: str, value, fmt: str = "{}") -> None:
    """Glue `value`, formatted with `fmt`, for use as {glue:text}`name` in a chapter's prose.

    Every number in the prose comes through here, so it is the value the
    notebook computed, formatted once.
    """
    from myst_nb import glue

    # Glued as a str: its text form is the quoted repr, which {glue:text} unquotes
    # (a bare 21,183 would be read back as the tuple (21, 183)).
    glue(name, fmt.format(value), display=False)


def say(name: str, condition: bool, if_true: str, if_false: str) -> None:
    """Glue the sentence the data support: an outcome in the prose is computed, never typed."""
    glue_text(name, if_true if condition else if_false)


def guard(condition: bool, sentence: str, evidence: str) -> None:
    """Stop the build when the data contradict a sentence written in the page's prose."""
    if not condition:
        raise ClaimError(f"The page says: {sentence!r}, but the data disagree ({evidence}). "
                         "Fix the prose or find out what changed in the results.")
