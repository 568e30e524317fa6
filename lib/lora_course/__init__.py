"""lora_course: the library under every chapter of the LoRA/QLoRA course.

Modules, roughly bottom-up:
    settings     errors, catalogue (the models by name), settings (the schema, each value checked),
                 presets (the profiles and experiments), config (a run's: RunConfig, run names),
                 precision (dtypes, decided once), post (the post's figures and claims)
    the path     data, formats (other data shapes), model, external (your model), targets
                 (target sets by meaning), lora, results (run types and folders), generate,
                 evaluate, train, tracking (MLflow), merge, pipeline (config -> data -> model
                 -> LoRA -> train -> results; run_all: several at once), distributed
    evidence     evidence (paired differences, verdicts), measured (measurements cached by
                 fingerprint), bench, sweep, memory, budget (the book's workload), timing
    the book     plots, quiet, install (Colab), chapters (the notebooks, by number), claims
                 (outcome sentences backed), page (what a chapter imports: set-up, glue, guards),
                 book (papermill + jupyter-book), book_html, site_check, devicecheck (the gpu
                 path on a GPU machine), cli

Imports stand at the top of each module, except three kinds, kept in the function that needs them:
(a) torch, transformers, pandas and the library modules that import them, in the modules the
command line imports at start (cli, catalogue, targets), so that `python -m lora_course --help`
and `list` stay fast; (b) packages that may be absent: the extras (papermill, jupyter_client and
IPython of `book`; mlflow, rouge_score and sentence_transformers of `eval`; myst_nb of `colab`;
selenium of `dev`), bitsandbytes (the float paths run without it), and the Unix-only fcntl and
resource; (c) transformers and datasets where the chapter set-up (page) would import them before
it has silenced the warning their import prints in a notebook.

Importing the package changes nothing outside it: warning filters and
environment settings are applied by the chapter set-up and the command line
(`lora_course.quiet.install()`).
"""

from .catalogue import MODELS, ModelSpec
from .config import RunConfig
from .errors import CourseError
from .presets import EXPERIMENTS, PROFILES, get_experiment, get_profile
from .settings import DataSettings, Experiment, LoraSettings, PrecisionSettings, Profile, TrainSettings

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
