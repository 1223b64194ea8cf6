"""Search spaces: which Splice settings a search samples, which it holds fixed, and how hard it searches.

A search space is a YAML file (`search_spaces/README.md` is the user-facing reference; the shipped spaces
`default`, `quick` and `paper` are examples):

    description: one line shown in --help / ls    # optional
    fixed:                  # SpliceConfig fields held constant; unnamed fields keep SpliceConfig's defaults
      vit: random_tiny8
      steps: 60
    params:                 # what Optuna samples per trial; names are SpliceConfig fields
      alpha: {type: float, low: 0.02, high: 0.5, log: true}
      blur_p: {type: float, low: 0.0, high: 0.5, step: 0.05}
      steps: {type: int, low: 100, high: 400, step: 100}
      vit_size: {type: categorical, choices: [112, 224]}
    budget:
      trials_per_pair: 3    # >= 1 (default 8)
      max_concurrent: 2     # >= 1 trials at once across all pairs; null = as many as resources allow (default)
    scheduler:
      type: asha            # asha | none (default asha)
      grace_period: 1       # evals (reports) before a trial may be stopped, >= 1 (default 1)
      reduction_factor: 2   # >= 2 (default 2)
    sampler:
      type: tpe             # tpe | random (default tpe)
      seed: 0               # each pair's study seed is derived from this and the pair name; null = unseeded
      startup_trials: 2     # optional: TPE's random trials before it starts modelling
    objective:
      metric: splice_score  # splice_score | structure_score | appearance_score, or judge_* of these
                            # (needs fixed.judge_vit); default splice_score
      mode: min             # every score is lower-is-better, so min is the only mode

Numbers like `5e-4` are read as numbers (YAML 1.2 rules), not as the text YAML 1.1 would make of them.
`vit_weights` paths are relative to the YAML file's folder.

`load_space` validates everything before a search starts and raises one `BadInput` listing every problem,
each as `file:line: field: what is wrong; what to do`. `--set key=value` overrides (a SpliceConfig field,
or `section.key` such as `budget.trials_per_pair`) are validated the same way; setting a sampled parameter
pins it: it leaves `params` and becomes fixed, and the space's `notes` say so.

The modules: `model` (the dataclasses), `shipped` (which file a name means), `document` (the YAML with its
line numbers, and `--set`), `checks` (validation into a `SearchSpace`), `messages` (how problems spell things).
"""

from __future__ import annotations

import os

from splice_tune.spaces.checks import build
from splice_tune.spaces.document import Where, apply_overrides, parse, parse_overrides
from splice_tune.spaces.model import (
    METRICS,
    PARAM_TYPES,
    SAMPLERS,
    SCHEDULERS,
    SECTIONS,
    Budget,
    Objective,
    ParamSpec,
    Sampler,
    Scheduler,
    SearchSpace,
)
from splice_tune.spaces.shipped import SPACES_DIR, locate, shipped_spaces, shipped_spaces_dir

__all__ = [
    "METRICS",
    "PARAM_TYPES",
    "SAMPLERS",
    "SCHEDULERS",
    "SECTIONS",
    "SPACES_DIR",
    "Budget",
    "Objective",
    "ParamSpec",
    "Sampler",
    "Scheduler",
    "SearchSpace",
    "load_space",
    "shipped_spaces",
    "shipped_spaces_dir",
]


def load_space(name_or_path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> SearchSpace:
    """Read and validate a search space, then apply `--set key=value` overrides.

    A bare name (no path separator, no .yaml/.yml suffix) means a shipped space in `search_spaces/`.
    Override values are read as YAML (`steps=50` is an int, `vit_weights=null` is None). Raises `BadInput`
    listing every problem in the file and the overrides at once.
    """
    path, shown = locate(str(name_or_path))
    raw, lines, problems = parse(path, shown)
    parsed, bad_overrides = parse_overrides(overrides)
    unknown_keys, located, notes = apply_overrides(raw, parsed, shown)
    return build(raw, Where(shown, lines, located), path, problems + bad_overrides + unknown_keys, notes)
