"""A run's configuration: one profile crossed with one experiment, a seed and a results folder.

The pair is a `RunConfig`, saved as JSON next to the results it produced; a `SweepPoint` is one
point of a sweep. Run names (folder names under results/<profile>/) are decided here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CourseError
from .presets import get_experiment, get_profile
from .settings import DataSettings, Experiment, LoraSettings, PrecisionSettings, Profile, TrainSettings

DEFAULT_SEED = 42


def noise_seeds(seed: int = DEFAULT_SEED) -> tuple[int, int]:
    """The two more seeds a noise floor is measured at, beside `seed` (chapter 4's runs, chapter 7's sweep)."""
    return seed + 1, seed + 2


def run_name(experiment: str, seed: int = DEFAULT_SEED) -> str:
    """A run's folder name: the experiment's, with "-seed<N>" for a seed other than DEFAULT_SEED."""
    return experiment if seed == DEFAULT_SEED else f"{experiment}-seed{seed}"


def _replace_checked(obj, kind: str, changes: dict[str, Any]):
    known = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise CourseError(f"Unknown {kind} setting(s) {', '.join(unknown)}: valid names are {', '.join(sorted(known))}.")
    return dataclasses.replace(obj, **changes)


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def check_run_name(name: str, nested: bool = False) -> None:
    """A run name is one folder name: letters, digits, '.', '_', '-', and not '.' or '..'.

    With `nested`, '/' may separate several such parts, as the library's own sweep names its points
    ("sweep/<point>"): the run's folder then lies deeper inside results/<profile>, never outside it.
    A name from the command line (--name) is always one part.
    """
    parts = name.split("/") if nested else [name]
    if not all(p and p not in (".", "..") and set(p) <= _NAME_CHARS for p in parts):
        between = " ('/' between folder names)" if nested else ""
        raise CourseError(f"The run name {name!r} is not a folder name: use letters, digits, '.', '_' and '-' "
                          f"only{between}, not '.' or '..', e.g. --name qv-long.")


@dataclass(frozen=True)
class RunConfig:
    """Everything one run depends on; its JSON is saved with the results.

    `name` is the run's folder under results/<profile>/; by default the
    experiment's name, with "-seed<N>" appended for a seed other than 42.
    """

    profile: Profile
    experiment: Experiment
    seed: int = DEFAULT_SEED
    results_dir: str = "results"
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", run_name(self.experiment.name, self.seed))
        check_run_name(self.name, nested=True)

    @classmethod
    def create(
        cls,
        experiment: str | Experiment,
        profile: str | Profile = "cpu",
        *,
        seed: int = DEFAULT_SEED,
        results_dir: str | Path = "results",
        name: str = "",
        data: dict[str, Any] | None = None,
        precision: dict[str, Any] | None = None,
        **train: Any,
    ) -> "RunConfig":
        """Build a config from names, with optional overrides of the profile.

        `data` and `precision` replace fields of the profile's DataSettings and
        PrecisionSettings; any other keyword replaces the TrainSettings field of
        the same name (e.g. `max_steps=5`).
        """
        prof = get_profile(profile) if isinstance(profile, str) else profile
        exp = get_experiment(experiment) if isinstance(experiment, str) else experiment
        if data:
            prof = dataclasses.replace(prof, data=_replace_checked(prof.data, "data", data))
        if precision:
            prof = dataclasses.replace(prof, precision=_replace_checked(prof.precision, "precision", precision))
        if train:
            prof = dataclasses.replace(prof, train=_replace_checked(prof.train, "training", train))
        return cls(profile=prof, experiment=exp, seed=seed, results_dir=str(results_dir), name=name)

    def replace(self, *, name: str = "", **train: Any) -> "RunConfig":
        """The same run with some TrainSettings changed, under a new name."""
        prof = dataclasses.replace(self.profile, train=_replace_checked(self.profile.train, "training", train))
        return dataclasses.replace(self, profile=prof, name=name or self.name)

    @property
    def out_dir(self) -> Path:
        """results/<profile>/<name>/"""
        return Path(self.results_dir) / self.profile.name / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        p = dict(d["profile"])
        p["data"] = DataSettings(**p["data"])
        p["train"] = TrainSettings(**p["train"])
        p["precision"] = PrecisionSettings(**p["precision"])
        e = dict(d["experiment"])
        if e["lora"] is not None:
            lora = dict(e["lora"])
            tm = lora["target_modules"]
            lora["target_modules"] = tm if isinstance(tm, str) else tuple(tm)
            e["lora"] = LoraSettings(**lora)
        return cls(profile=Profile(**p), experiment=Experiment(**e), seed=d["seed"],
                   results_dir=d["results_dir"], name=d["name"])

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return cls.from_dict(json.loads(text))

    def same_run_as(self, other: "RunConfig") -> bool:
        """True when both configs train the same thing (the results folder may differ)."""
        a, b = self.to_dict(), other.to_dict()
        for d in (a, b):
            d.pop("results_dir")
            d["profile"].pop("parallel_runs", None)  # how runs are scheduled, not what one trains
        return a == b


@dataclass(frozen=True)
class SweepPoint:
    """One point of a sweep: an experiment variant, training overrides, a seed and a step budget, under a group name."""

    group: str
    experiment: Experiment
    train: dict[str, Any] = field(default_factory=dict)
    seed: int = DEFAULT_SEED
    budget: int = 1  # optimizer steps, in multiples of the profile's sweep_steps

    def __post_init__(self) -> None:
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise CourseError(f"A sweep point's budget is a whole number of sweep_steps from 1 up, got "
                              f"{self.budget!r}: write e.g. budget=2 for twice the profile's sweep_steps.")

    @property
    def name(self) -> str:
        return (run_name(self.experiment.name, self.seed)
                + ("" if self.budget == 1 else f"-steps-x{self.budget}"))
