"""lora_course: the library under every chapter of the LoRA/QLoRA course.

Modules, bottom-up (each imports only those above it):
    errors, config (settings as data), precision, post (the post's figures and claims),
    data, model, lora, results (run types and folders), generate, evaluate, tracking,
    train, merge, pipeline (config -> data -> model -> LoRA -> train -> results),
    evidence, bench, sweep, plots, install, chapters (the notebooks, by number),
    claims (outcome sentences backed), book, cli.

Importing the package changes nothing outside it: warning filters and
environment settings are applied by the chapter set-up and the command line
(`lora_course.quiet.install()`).
"""

from .config import (
    EXPERIMENTS,
    MODELS,
    PROFILES,
    DataSettings,
    Experiment,
    LoraSettings,
    ModelSpec,
    PrecisionSettings,
    Profile,
    RunConfig,
    TrainSettings,
    get_experiment,
    get_profile,
)
from .errors import CourseError

__version__ = "0.2.0"

__all__ = [
    "EXPERIMENTS",
    "MODELS",
    "PROFILES",
    "CourseError",
    "DataSettings",
    "Experiment",
    "LoraSettings",
    "ModelSpec",
    "PrecisionSettings",
    "Profile",
    "RunConfig",
    "TrainSettings",
    "get_experiment",
    "get_profile",
]
