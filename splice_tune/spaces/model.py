"""The search-space model: what a validated space holds and what a search asks of it."""

from __future__ import annotations

import dataclasses
import hashlib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from splice_model.config import SpliceConfig

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

PARAM_TYPES = ("float", "int", "categorical")
SCHEDULERS = ("asha", "none")
SAMPLERS = ("tpe", "random")
METRICS = (
    "splice_score",
    "structure_score",
    "appearance_score",
    # The held-out judge's (a space that names judge_vit): the same scores with a ViT the generator never saw.
    "judge_splice_score",
    "judge_structure_score",
    "judge_appearance_score",
)
SECTIONS = ("description", "fixed", "params", "budget", "scheduler", "sampler", "objective")

FIELD_TYPES = typing.get_type_hints(SpliceConfig)
"""Each SpliceConfig field's type, by name."""


@dataclass(frozen=True)
class ParamSpec:
    """One sampled setting: a float/int range (optionally log-scaled or stepped) or a list of choices."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution this parameter is sampled from."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.type == "float":
            return FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return CategoricalDistribution(self.choices)

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (what a search space file would say), leaving out unset options."""
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        spec = {"type": self.type, "low": self.low, "high": self.high}
        if self.log:
            spec["log"] = True
        if self.step is not None:
            spec["step"] = self.step
        return spec


@dataclass(frozen=True)
class Budget:
    """How many trials each pair gets, and how many run at once across all pairs (None: resources decide)."""

    trials_per_pair: int = 8
    max_concurrent: int | None = None


@dataclass(frozen=True)
class Scheduler:
    """Early stopping within a pair: ASHA over the periodic evals, or none (every trial runs to the end)."""

    type: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2


@dataclass(frozen=True)
class Sampler:
    """How Optuna proposes trials: TPE or random, seeded per pair."""

    type: str = "tpe"
    seed: int | None = 0
    startup_trials: int | None = None

    def seed_for(self, pair: str) -> int | None:
        """The study seed of one pair: reproducible, yet different per pair so pairs explore differently."""
        if self.seed is None:
            return None
        digest = hashlib.sha256(f"{self.seed}:{pair}".encode()).digest()
        return int.from_bytes(digest[:4], "big")


@dataclass(frozen=True)
class Objective:
    """The score that drives early stopping and picks each pair's winner (all scores: lower is better); a
    judge_* score needs a space that names judge_vit."""

    metric: str = "splice_score"
    mode: str = "min"


SECTION_TYPES = {"budget": Budget, "scheduler": Scheduler, "sampler": Sampler, "objective": Objective}


def section_keys(section: str) -> list[str]:
    """The keys a budget/scheduler/sampler/objective section may have."""
    return [f.name for f in dataclasses.fields(SECTION_TYPES[section])]


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space; build it with `load_space`."""

    path: Path | None
    description: str
    fixed: dict[str, Any]
    params: dict[str, ParamSpec]
    budget: Budget = Budget()
    scheduler: Scheduler = Scheduler()
    sampler: Sampler = Sampler()
    objective: Objective = Objective()
    # Remarks for the user (a --set that pinned a sampled parameter); not part of what the search runs.
    notes: tuple[str, ...] = dataclasses.field(default=(), compare=False)

    def distributions(self) -> dict[str, BaseDistribution]:
        """Optuna distributions of the sampled parameters, by SpliceConfig field name."""
        return {name: spec.distribution() for name, spec in self.params.items()}

    def values(self, name: str) -> tuple:
        """The values the SpliceConfig field `name` can take in this space: a sampled parameter's choices, or
        its (low, high) bounds; else the one value it is fixed at, or SpliceConfig's default."""
        spec = self.params.get(name)
        if spec is None:
            return (getattr(SpliceConfig(**self.fixed), name),)
        return spec.choices if spec.type == "categorical" else (spec.low, spec.high)

    def config_for(self, sampled: dict[str, Any]) -> SpliceConfig:
        """The training settings of one trial: SpliceConfig defaults, then `fixed`, then the sampled values.

        `sampled` must hold exactly the parameters of this space (a mismatch is a programming error).
        """
        if set(sampled) != set(self.params):
            raise ValueError(f"sampled parameters {sorted(sampled)} do not match the space's {sorted(self.params)}")
        values = dict(self.fixed)
        for name, value in sampled.items():
            # Optuna returns ints for int ranges and categorical ints; float settings want floats.
            values[name] = float(value) if FIELD_TYPES[name] is float else value
        return SpliceConfig(**values)

    def lowest_config(self) -> SpliceConfig:
        """The settings of a valid trial: every sampled parameter at its low bound or first choice."""
        return self.config_for({name: self.values(name)[0] for name in self.params})

    def with_overrides(self, values: dict[str, Any]) -> SearchSpace:
        """A copy with `--set`-style changes: keys are SpliceConfig fields or `section.key`; validated again.

        Setting a sampled parameter pins it (it moves from `params` to `fixed`). Raises `BadInput`.
        """
        # The checks build SearchSpace objects, so they are imported when used, not by this module.
        from splice_tune.spaces.checks import build
        from splice_tune.spaces.document import Where, apply_overrides

        raw = self.to_dict()
        overrides = [(key, value, f"{key}={value}") for key, value in values.items()]
        shown = str(self.path) if self.path else "search space"
        problems, located, notes = apply_overrides(raw, overrides, shown)
        return build(raw, Where(shown, {}, located), self.path, problems, notes)

    def to_dict(self) -> dict[str, Any]:
        """The YAML form of this space (for logging it with a search, or writing it back out)."""
        return {
            "description": self.description,
            "fixed": dict(self.fixed),
            "params": {name: spec.to_dict() for name, spec in self.params.items()},
            **{section: dataclasses.asdict(getattr(self, section)) for section in SECTION_TYPES},
        }

    def min_image_side(self) -> int:
        """The smallest short side an input image may have: two patches of the largest-patch ViT it may use."""
        from splice_model.presets import VIT_PRESETS

        vits = [*self.values("vit"), *(judge for judge in self.values("judge_vit") if judge is not None)]
        return 2 * max(VIT_PRESETS[vit].patch_size for vit in vits)
