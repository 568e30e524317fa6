"""lora_course: the library under every chapter of the LoRA/QLoRA course.

Modules read top-down: config (settings as data), data, model, lora, train,
generate, merge, results. Chapters import what they need from here.
"""

from . import quiet as _quiet

_quiet.install()

from .config import (  # noqa: E402
    EXPERIMENTS,
    MODELS,
    PROFILES,
    DataSettings,
    Experiment,
    ModelSpec,
    Profile,
    RunConfig,
    TrainSettings,
    get_experiment,
    get_profile,
)
from .errors import CourseError  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "EXPERIMENTS",
    "MODELS",
    "PROFILES",
    "CourseError",
    "DataSettings",
    "Experiment",
    "ModelSpec",
    "Profile",
    "RunConfig",
    "TrainSettings",
    "get_experiment",
    "get_profile",
]
