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
      metric: splice_score  # splice_score | structure_score | appearance_score (default splice_score)
      mode: min             # every score is lower-is-better, so min is the only mode

Numbers like `5e-4` are read as numbers (YAML 1.2 rules), not as the text YAML 1.1 would make of them.
`vit_weights` paths are relative to the YAML file's folder.

`load_space` validates everything before a search starts and raises one `BadInput` listing every problem,
each as `file:line: field: what is wrong; what to do`. `--set key=value` overrides (a SpliceConfig field,
or `section.key` such as `budget.trials_per_pair`) are validated the same way; setting a sampled parameter
pins it: it leaves `params` and becomes fixed, and the space's `notes` say so.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
import re
import site
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from splice_model.config import CONFIG_FIELDS, SpliceConfig
from splice_tune.errors import BadInput

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution


def shipped_spaces_dir(repo: Path | None = None, prefixes: typing.Sequence[Path] | None = None) -> Path:
    """Where the shipped search spaces are: the repository's `search_spaces/` beside the `splice_tune`
    package (a checkout, an editable install), else PREFIX/share/splice-tune/search_spaces, where a wheel
    install puts them (pyproject's data-files; PREFIX is the environment's, or the user base of a --user
    install). When none exists, the repository's path (load_space then says the folder is missing)."""
    repo = repo if repo is not None else Path(__file__).resolve().parent.parent / "search_spaces"
    if prefixes is None:
        prefixes = [Path(sys.prefix), Path(site.getuserbase())]
    for folder in [repo, *(Path(prefix) / "share" / "splice-tune" / "search_spaces" for prefix in prefixes)]:
        if folder.is_dir():
            return folder
    return repo


SPACES_DIR = shipped_spaces_dir()
"""The shipped search spaces (see `shipped_spaces_dir`)."""

PARAM_TYPES = ("float", "int", "categorical")
SCHEDULERS = ("asha", "none")
SAMPLERS = ("tpe", "random")
METRICS = ("splice_score", "structure_score", "appearance_score")
SECTIONS = ("description", "fixed", "params", "budget", "scheduler", "sampler", "objective")

_FIELD_TYPES = typing.get_type_hints(SpliceConfig)
_At = tuple  # a location inside the YAML document, e.g. ("params", "alpha", "low")


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also reads `5e-4` as a float (YAML 1.2), which PyYAML would leave as text."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


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
    """The score that drives early stopping and picks each pair's winner (all scores: lower is better)."""

    metric: str = "splice_score"
    mode: str = "min"


_SECTION_TYPES = {"budget": Budget, "scheduler": Scheduler, "sampler": Sampler, "objective": Objective}


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

    def config_for(self, sampled: dict[str, Any]) -> SpliceConfig:
        """The training settings of one trial: SpliceConfig defaults, then `fixed`, then the sampled values.

        `sampled` must hold exactly the parameters of this space (a mismatch is a programming error).
        """
        if set(sampled) != set(self.params):
            raise ValueError(f"sampled parameters {sorted(sampled)} do not match the space's {sorted(self.params)}")
        values = dict(self.fixed)
        for name, value in sampled.items():
            # Optuna returns ints for int ranges and categorical ints; float settings want floats.
            values[name] = float(value) if _FIELD_TYPES[name] is float else value
        return SpliceConfig(**values)

    def with_overrides(self, values: dict[str, Any]) -> "SearchSpace":
        """A copy with `--set`-style changes: keys are SpliceConfig fields or `section.key`; validated again.

        Setting a sampled parameter pins it (it moves from `params` to `fixed`). Raises `BadInput`.
        """
        raw = self.to_dict()
        overrides = [(key, value, f"{key}={value}") for key, value in values.items()]
        shown = str(self.path) if self.path else "search space"
        problems, located, notes = _apply_overrides(raw, overrides, shown)
        return _build(raw, _Where(shown, {}, located), self.path, problems, notes)

    def to_dict(self) -> dict[str, Any]:
        """The YAML form of this space (for logging it with a search, or writing it back out)."""
        return {
            "description": self.description,
            "fixed": dict(self.fixed),
            "params": {name: spec.to_dict() for name, spec in self.params.items()},
            **{section: dataclasses.asdict(getattr(self, section)) for section in _SECTION_TYPES},
        }

    def min_image_side(self) -> int:
        """The smallest short side an input image may have: two patches of the largest-patch ViT it may use."""
        from splice_model.presets import VIT_PRESETS

        vits = self.params["vit"].choices if "vit" in self.params else [self.fixed.get("vit", SpliceConfig.vit)]
        return 2 * max(VIT_PRESETS[vit].patch_size for vit in vits)


def load_space(name_or_path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> SearchSpace:
    """Read and validate a search space, then apply `--set key=value` overrides.

    A bare name (no path separator, no .yaml/.yml suffix) means a shipped space in `search_spaces/`.
    Override values are read as YAML (`steps=50` is an int, `vit_weights=null` is None). Raises `BadInput`
    listing every problem in the file and the overrides at once.
    """
    path, shown = _locate(str(name_or_path))
    raw, lines, problems = _parse(path, shown)
    parsed, bad_overrides = _parse_overrides(overrides)
    unknown_keys, located, notes = _apply_overrides(raw, parsed, shown)
    return _build(raw, _Where(shown, lines, located), path, problems + bad_overrides + unknown_keys, notes)


def shipped_spaces() -> dict[str, str]:
    """Names of the shipped search spaces and their one-line descriptions (for `--help` and `ls`)."""
    spaces = {}
    for path in sorted(SPACES_DIR.glob("*.yaml")):
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            data = None
        description = data.get("description") if isinstance(data, dict) else None
        spaces[path.stem] = description if isinstance(description, str) else ""
    return spaces


# ---------------------------------------------------------------------------------------------- reading


class _Where:
    """Turns a location inside the document into `file:line` (or `--set key=value` for overridden values)."""

    def __init__(self, shown: str, lines: dict[_At, int], overrides: dict[_At, str]):
        self.shown, self.lines, self.overrides = shown, lines, overrides

    def __call__(self, at: _At) -> str:
        for n in range(len(at), 0, -1):
            if at[:n] in self.overrides:
                return f"--set {self.overrides[at[:n]]}"
        for n in range(len(at), -1, -1):
            if at[:n] in self.lines:
                return f"{self.shown}:{self.lines[at[:n]]}"
        return self.shown

    def is_override(self, at: _At) -> bool:
        return any(at[:n] in self.overrides for n in range(len(at), 0, -1))


def _locate(text: str) -> tuple[Path, str]:
    """The file a name or path refers to, and how to show it in messages."""
    if "/" in text or os.sep in text or text.endswith((".yaml", ".yml")):
        return Path(text).expanduser(), text
    if not SPACES_DIR.is_dir():
        raise BadInput(f"search space '{text}': the shipped search_spaces folder is missing from this install "
                       f"({SPACES_DIR}); pass the path of a .yaml file instead")
    path = SPACES_DIR / f"{text}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
        raise BadInput(f"search space '{text}' is not shipped; {_suggest(text, names, 'shipped spaces are')} "
                       f"(or pass the path of a .yaml file)")
    try:
        shown = str(path.relative_to(Path.cwd()))
    except ValueError:
        shown = str(path)
    return path, shown


def _parse(path: Path, shown: str) -> tuple[Any, dict[_At, int], list[str]]:
    """The document's data, the line of every key, and problems found while reading (duplicate keys)."""
    if not path.exists():
        raise BadInput(f"{shown}: no such file; check the path, or give the name of a shipped space "
                       f"({', '.join(shipped_spaces()) or 'none found'})")
    if path.is_dir():
        raise BadInput(f"{shown}: is a directory; give a .yaml file")
    if not path.is_file():
        raise BadInput(f"{shown}: is not a regular file (a FIFO, socket or device); give a .yaml file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise BadInput(f"{shown}: cannot be read ({error.strerror}); check its permissions") from None
    except UnicodeDecodeError as error:
        line = error.object[:error.start].count(b"\n") + 1
        raise BadInput(f"{shown}:{line}: is not UTF-8 text; save the file as UTF-8") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        context, what = getattr(error, "context", None), getattr(error, "problem", None)
        what = f"{context}, {what}" if context and what else what or str(error).splitlines()[0]
        raise BadInput(f"{shown}{line}: not valid YAML ({what}); fix the syntax (indent with spaces, "
                       f"quote text containing ': ' or '#')") from None
    finally:
        loader.dispose()
    if node is None:
        raise BadInput(f"{shown}: is empty; a search space needs at least fixed: or params: "
                       f"(see search_spaces/README.md)")
    if not isinstance(data, dict):
        raise BadInput(f"{shown}:{node.start_mark.line + 1}: the top level must be a mapping of sections "
                       f"({', '.join(SECTIONS)}); see search_spaces/README.md")
    lines: dict[_At, int] = {(): node.start_mark.line + 1}
    problems: list[str] = []
    _record_lines(node, (), lines, problems, shown)
    return data, lines, problems


def _record_lines(node: yaml.Node, at: _At, lines: dict[_At, int], problems: list[str], shown: str,
                  seen: set[int] | None = None) -> None:
    """Walk the composed document: note each key's line and report keys given twice (YAML keeps the last).

    Each node is walked once: an alias (`*name`) shares its anchor's node, so nested aliases would otherwise
    make the walk exponential (a "billion laughs" file never finishes) and a self-referencing one endless.
    """
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in first:
                problems.append(f"{shown}:{line}: {_dotted(at + (key,))}: given twice (first on line "
                                f"{first[key]}); keep one")
            first[key] = line
            lines[at + (key,)] = line
            _record_lines(value_node, at + (key,), lines, problems, shown, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[at + (index,)] = item.start_mark.line + 1
            _record_lines(item, at + (index,), lines, problems, shown, seen)


def _override_target(key: str) -> _At | None:
    """Where `--set key=...` goes in the document, or None for an unknown key."""
    if key in CONFIG_FIELDS:
        return ("fixed", key)
    section, _, name = key.partition(".")
    if section == "fixed" and name in CONFIG_FIELDS:
        return ("fixed", name)
    if section in _SECTION_TYPES and name in _section_keys(section):
        return (section, name)
    return None


def _section_keys(section: str) -> list[str]:
    return [f.name for f in dataclasses.fields(_SECTION_TYPES[section])]


def _parse_overrides(overrides: list[str] | tuple[str, ...]) -> tuple[list[tuple[str, Any, str]], list[str]]:
    """Split `key=value` strings and read each value as YAML; problems for malformed ones."""
    parsed, problems = [], []
    for text in overrides:
        key, equals, value = text.partition("=")
        key = key.strip()
        if not equals or not key:
            problems.append(f"--set {text}: expected key=value, e.g. --set steps=500")
            continue
        try:
            parsed.append((key, yaml.load(value, Loader=_Loader), text))
        except yaml.YAMLError:
            problems.append(f"--set {text}: the value is not valid YAML; quote it, e.g. --set {key}='...'")
    return parsed, problems


def _apply_overrides(raw: dict, overrides: list[tuple[str, Any, str]],
                     shown: str) -> tuple[list[str], dict[_At, str], list[str]]:
    """Write overrides into the raw document (pinning sampled parameters): problems for unknown keys, where
    each override went, and a note for every sampled parameter an override pinned."""
    problems, located, notes = [], {}, []
    known = list(CONFIG_FIELDS) + [f"{s}.{k}" for s in _SECTION_TYPES for k in _section_keys(s)]
    for key, value, text in overrides:
        target = _override_target(key)
        if target is None:
            problems.append(f"--set {text}: '{key}' is not a setting; {_suggest(key, known, 'settings are')}")
            continue
        section, name = target
        if raw.get(section) is None:
            raw[section] = {}
        if not isinstance(raw[section], dict):
            continue  # the section itself is malformed; validation reports it
        raw[section][name] = value
        if section == "fixed" and isinstance(raw.get("params"), dict) and name in raw["params"]:
            # Easy to do by accident (a quick experiment with one value): say that the search stops tuning it.
            raw["params"].pop(name)
            given = text.partition("=")[2].strip()
            notes.append(f"--set {text}: {name} is sampled by {shown}; it is now fixed at {given} for every "
                         f"trial and no longer searched")
        located[target] = text
    return problems, located, notes


# ---------------------------------------------------------------------------------------------- validating


def _build(raw: dict, where: _Where, path: Path | None, problems: list[str], notes: list[str]) -> SearchSpace:
    """Validate the raw document and build the `SearchSpace` (with `notes` for the user), or raise `BadInput`
    with every problem (those in `problems`, found while reading, included)."""
    problems = list(problems)

    def problem(at: _At, what: str) -> None:
        problems.append(f"{where(at)}: {_dotted(at)}: {what}")

    def folder(at: _At) -> Path:
        # vit_weights paths are relative to the YAML's folder, or to the working folder for --set.
        return Path.cwd() if where.is_override(at) or path is None else path.resolve().parent

    for key in raw:
        if key not in SECTIONS:
            problem((key,), f"is not a known section; {_suggest(str(key), SECTIONS, 'sections are')}")
    description = raw.get("description") or ""
    if not isinstance(description, str) or "\n" in description.strip():
        problem(("description",), "must be one line of text; shorten it")
        description = ""

    fixed = _check_fixed(_mapping(raw, "fixed", problem), problem, folder)
    base = SpliceConfig(**fixed)
    base_problems = base.validate()
    for line in base_problems:
        name, _, what = line.partition(": ")
        problem(("fixed", name), what if name in fixed else f"{what} (its default); set it in fixed")

    params = {}
    raw_params = _mapping(raw, "params", problem)
    for name, spec in raw_params.items():
        checked = _check_param(str(name), spec, fixed, base, set(base_problems), problem, folder)
        if checked is not None:
            params[name] = checked

    sections, given, valid = {}, {}, {}
    for section, kind in _SECTION_TYPES.items():
        given[section] = _mapping(raw, section, problem)
        valid[section] = _check_section(section, given[section], problem)
        sections[section] = kind(**valid[section])
    trials = sections["budget"].trials_per_pair
    # An invalid trials_per_pair is reported already; the default stands in for it, so say nothing more.
    trials_valid = "trials_per_pair" in valid["budget"] or "trials_per_pair" not in given["budget"]
    if not raw_params and trials > 1 and trials_valid:
        default = "" if "trials_per_pair" in given["budget"] else " (the default)"
        problem(("budget", "trials_per_pair"), f"is {trials}{default} but nothing is sampled (params is empty), "
                                               f"so every trial would be the same run; set it to 1 or add params")
    if problems:
        raise BadInput(problems)
    return SearchSpace(path, description.strip(), fixed, params, **sections, notes=tuple(notes))


def _mapping(raw: dict, section: str, problem: Callable) -> dict:
    """A section's mapping ({} when absent or null); a problem when it is something else."""
    value = raw.get(section)
    if value is None:
        return {}
    if not isinstance(value, dict):
        problem((section,), f"must be a mapping of 'name: value' lines, got {_kind(value)}; "
                            f"see search_spaces/README.md")
        return {}
    return value


def _check_fixed(values: dict, problem: Callable, folder: Callable) -> dict[str, Any]:
    """The fixed settings that are valid, converted to their field types (problems for the rest)."""
    fixed = {}
    for name, value in values.items():
        at = ("fixed", name)
        if name not in CONFIG_FIELDS:
            problem(at, f"is not a Splice setting; {_suggest(str(name), CONFIG_FIELDS, 'settings are')}")
            continue
        value, error = _field_value(name, value, folder(at))
        if error:
            problem(at, error)
        else:
            fixed[name] = value
    return fixed


def _field_value(name: str, value: Any, folder: Path) -> tuple[Any, str | None]:
    """`value` converted to the SpliceConfig field's type, or an error saying what is wrong and what to do."""
    error = _type_error(value, _FIELD_TYPES[name])
    if error:
        return None, error
    if _FIELD_TYPES[name] is float:
        value = float(value)
    if name == "vit":
        from splice_model.presets import VIT_PRESETS

        if value not in VIT_PRESETS:
            return None, f"unknown ViT preset '{value}'; {_suggest(value, list(VIT_PRESETS), 'presets are')}"
    if name == "vit_weights" and value is not None:
        weights = (folder / Path(value).expanduser()).resolve()
        if not weights.is_file():
            return None, (f"weights file '{value}' not found ({weights}); relative paths start at the search "
                          f"space's folder (at the working folder for --set)")
        value = str(weights)  # absolute, because Ray runs trials in other working folders
    return value, None


def _type_error(value: Any, hint: Any) -> str | None:
    """Why `value` does not fit a field of type `hint` (int, float, str, bool, or X | None); None if it does.

    Fields of several kinds (`amp: bool | str`) are left to `SpliceConfig.validate`, whose message names
    the values they take.
    """
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    nullable = type(None) in args
    kinds = [a for a in args if a is not type(None)]
    if value is None and nullable or len(kinds) > 1:
        return None
    kind = kinds[0]
    ok = {int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str),
          bool: isinstance(value, bool)}[kind]
    if ok:
        return None
    wanted = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}[kind]
    wanted += " or null" if nullable else ""
    if isinstance(value, str) and kind in (int, float) and _looks_numeric(value):
        return f"must be {wanted}, got the text '{value}'; remove the quotes"
    if kind is int and isinstance(value, float) and not isinstance(value, bool) and value.is_integer():
        return f"must be {wanted}, got {value!r}; write {int(value)}"
    return f"must be {wanted}, got {_shown(value)}"


def _check_param(name: str, spec: Any, fixed: dict, base: SpliceConfig, base_problems: set[str],
                 problem: Callable, folder: Callable) -> ParamSpec | None:
    """One entry of `params` as a ParamSpec, or None after reporting what is wrong with it."""
    at = ("params", name)
    if name not in CONFIG_FIELDS:
        problem(at, f"is not a Splice setting; {_suggest(name, CONFIG_FIELDS, 'settings are')}")
        return None
    if name in fixed:
        problem(at, "is both fixed and sampled; remove it from fixed or from params")
        return None
    if not isinstance(spec, dict):
        problem(at, f"must be a mapping like {{type: float, low: 0.02, high: 0.5}}, got {_kind(spec)}")
        return None
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        what = "is missing" if kind is None else f"'{kind}' is not known"
        hint = _suggest(str(kind), PARAM_TYPES, "types are") if kind is not None else "use float, int or categorical"
        problem(at + ("type",), f"{what}; {hint}")
        return None
    allowed = ("type", "choices") if kind == "categorical" else ("type", "low", "high", "log", "step")
    for key in spec:
        if key not in allowed:
            problem(at + (key,), f"is not an option of a {kind} parameter; "
                                 f"{_suggest(str(key), allowed[1:], 'its options are')}")
    field_type = _FIELD_TYPES[name]
    if kind == "categorical":
        return _check_choices(name, spec.get("choices"), base, base_problems, problem, folder)
    if field_type not in (int, float, int | None):
        problem(at + ("type",), f"{name} is not a number setting, so it cannot be a range; "
                                f"use type: categorical with choices")
        return None
    if kind == "float" and field_type is not float:
        problem(at + ("type",), f"{name} is a whole-number setting; use type: int")
        return None

    number = int if kind == "int" else float
    bounds = {}
    for key in ("low", "high"):
        if key not in spec:
            problem(at + (key,), f"is missing; a {kind} parameter needs low and high")
            continue
        error = _type_error(spec[key], number)
        if error:
            problem(at + (key,), error)
        else:
            bounds[key] = number(spec[key])
    log = spec.get("log", False)
    if not isinstance(log, bool):
        problem(at + ("log",), f"must be true or false, got {_shown(log)}")
        log = False
    step = spec.get("step")
    if step is not None:
        error = _type_error(step, number)
        if error or step <= 0:
            problem(at + ("step",), error or f"must be > 0, got {step!r}")
            step = None
        elif log:
            problem(at + ("step",), "cannot be combined with log: true (Optuna samples either on a log scale or "
                                    "on a grid); drop one")
            step = None
        else:
            step = number(step)
    if len(bounds) < 2:
        return None
    low, high = bounds["low"], bounds["high"]
    ok = True
    if low >= high:
        problem(at + ("low",), f"low ({low}) must be below high ({high}); to hold {name} constant, "
                               f"move it to fixed")
        ok = False
    elif log and low <= 0:
        problem(at + ("low",), f"must be > 0 when log: true, got {low}; raise low or drop log")
        ok = False
    elif step is not None and not _is_multiple(high - low, step):
        problem(at + ("step",), f"high - low ({high - low:g}) is not a multiple of step {step:g}; "
                                f"adjust high or step")
        ok = False
    if ok:
        for key, value in bounds.items():
            ok &= _check_config_value(name, value, at + (key,), base, base_problems, problem)
    return ParamSpec(name, kind, low, high, log, step) if ok else None


def _check_choices(name: str, choices: Any, base: SpliceConfig, base_problems: set[str], problem: Callable,
                   folder: Callable) -> ParamSpec | None:
    """A categorical parameter's choices, converted and checked one by one."""
    at = ("params", name, "choices")
    if not isinstance(choices, list):
        what = "is missing" if choices is None else f"must be a list, got {_kind(choices)}"
        problem(at, f"{what}; write choices: [a, b, ...]")
        return None
    if len(choices) < 2:
        problem(at, f"has {len(choices)} choice(s); give at least two, or move {name} to fixed")
        return None
    converted, ok = [], True
    for index, choice in enumerate(choices):
        value, error = _field_value(name, choice, folder(at))
        if error:
            problem(at + (index,), error)
            ok = False
        elif value in converted:
            problem(at + (index,), f"{choice!r} is listed twice; list each choice once")
            ok = False
        else:
            converted.append(value)
            ok &= _check_config_value(name, value, at + (index,), base, base_problems, problem)
    return ParamSpec(name, "categorical", choices=tuple(converted)) if ok else None


def _check_config_value(name: str, value: Any, at: _At, base: SpliceConfig, base_problems: set[str],
                        problem: Callable) -> bool:
    """Report what `SpliceConfig.validate` finds with `name` set to `value` (beyond the fixed settings')."""
    ok = True
    for line in base.replace(**{name: value}).validate():
        if line in base_problems:
            continue
        field, _, what = line.partition(": ")
        problem(at, what if field == name else line)
        ok = False
    return ok


def _check_section(section: str, values: dict, problem: Callable) -> dict[str, Any]:
    """The valid keys of budget/scheduler/sampler/objective (problems for the rest; defaults fill gaps)."""
    checks: dict[str, Callable[[Any], str | None]] = {
        "trials_per_pair": lambda v: _whole(v, 1, False, "trials each pair gets"),
        "max_concurrent": lambda v: _whole(v, 1, True, "trials running at once; null lets resources decide"),
        "grace_period": lambda v: _whole(v, 1, False, "evals a trial runs before it may be stopped"),
        "reduction_factor": lambda v: (_type_error(v, float) or
                                       (f"must be >= 2, got {v!r}; ASHA keeps 1/reduction_factor of the trials "
                                        f"at each rung" if v < 2 else None)),
        "seed": lambda v: _whole(v, 0, True, "the seed pairs' study seeds derive from; null = unseeded"),
        "startup_trials": lambda v: _whole(v, 0, True, "random trials before TPE models"),
        "type": lambda v: _one_of(v, SCHEDULERS if section == "scheduler" else SAMPLERS),
        "metric": lambda v: _one_of(v, METRICS),
        "mode": lambda v: None if v == "min" else f"must be min (every score is lower-is-better), got {v!r}",
    }
    keys = _section_keys(section)
    valid = {}
    for key, value in values.items():
        if key not in keys:
            problem((section, key), f"is not a {section} setting; {_suggest(str(key), keys, 'they are')}")
            continue
        error = checks[key](value)
        if error:
            problem((section, key), error)
        else:
            valid[key] = value
    return valid


def _whole(value: Any, minimum: int, nullable: bool, meaning: str) -> str | None:
    """Why `value` is not a whole number >= minimum (or null when allowed); None when it is fine."""
    if value is None and nullable:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return None
    null = " or null" if nullable else ""
    return f"must be a whole number >= {minimum}{null} ({meaning}), got {_shown(value)}"


def _one_of(value: Any, options: tuple[str, ...]) -> str | None:
    if value in options:
        return None
    return f"'{value}' is not known; {_suggest(str(value), options, 'options are')}"


# ---------------------------------------------------------------------------------------------- helpers


def _suggest(word: str, options: typing.Iterable[str], listing: str) -> str:
    """'did you mean X?' when something is close, else the full list of options."""
    options = list(options)
    close = difflib.get_close_matches(word, options, n=1)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"{listing} {', '.join(options)}"


def _dotted(at: _At) -> str:
    return ".".join(str(part) if not isinstance(part, int) else f"[{part}]" for part in at).replace(".[", "[")


def _shown(value: Any) -> str:
    """A value as a message shows it: YAML spelling for true/false/null, 'text' marking strings."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, str):
        return f"text {value!r}"
    return _kind(value) if isinstance(value, (list, dict)) else repr(value)


def _kind(value: Any) -> str:
    names = {bool: "true/false", int: "a number", float: "a number", str: "text", list: "a list",
             dict: "a mapping", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_multiple(span: float, step: float) -> bool:
    ratio = span / step
    return abs(ratio - round(ratio)) <= 1e-9 * max(1.0, abs(ratio))
