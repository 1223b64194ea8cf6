"""Checking a search space: every problem in the document becomes one `file:line: field: what; what to do` line,
all collected into one `BadInput`; a document without problems becomes a `SearchSpace`."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splice_model.config import CONFIG_FIELDS, SpliceConfig
from splice_tune.errors import BadInput
from splice_tune.spaces.document import Where
from splice_tune.spaces.messages import At, dotted, kind_of, shown, suggest
from splice_tune.spaces.model import (
    FIELD_TYPES,
    METRICS,
    PARAM_TYPES,
    SAMPLERS,
    SCHEDULERS,
    SECTION_TYPES,
    SECTIONS,
    ParamSpec,
    SearchSpace,
    section_keys,
)


@dataclass(frozen=True)
class _Context:
    """What every check needs: where to report, where relative paths start, and the fixed settings' config
    with its own problems (reported once, for fixed; a parameter's check repeats none of them)."""

    problem: Callable[[At, str], None]
    folder: Callable[[At], Path]
    base: SpliceConfig
    base_problems: frozenset[str]


def build(raw: dict, where: Where, path: Path | None, problems: list[str], notes: list[str]) -> SearchSpace:
    """Validate the raw document and build the `SearchSpace` (with `notes` for the user), or raise `BadInput`
    with every problem (those in `problems`, found while reading, included)."""
    problems = list(problems)

    def problem(at: At, what: str) -> None:
        problems.append(f"{where(at)}: {dotted(at)}: {what}")

    def folder(at: At) -> Path:
        # vit_weights paths are relative to the YAML's folder, or to the working folder for --set.
        return Path.cwd() if where.is_override(at) or path is None else path.resolve().parent

    for key in raw:
        if key not in SECTIONS:
            problem((key,), f"is not a known section; {suggest(str(key), SECTIONS, 'sections are')}")
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

    context = _Context(problem, folder, base, frozenset(base_problems))
    params = {}
    raw_params = _mapping(raw, "params", problem)
    for name, spec in raw_params.items():
        checked = _check_param(str(name), spec, fixed, context)
        if checked is not None:
            params[name] = checked

    sections = _check_sections(raw, bool(raw_params), problem)
    space = SearchSpace(path, description.strip(), fixed, params, **sections, notes=tuple(notes))
    metric = space.objective.metric
    if metric.startswith("judge_") and None in space.values("judge_vit"):
        problem(
            ("objective", "metric"),
            f"{metric} needs a judge, but the space names none; set judge_vit in fixed (a ViT preset other "
            f"than vit), or use {metric.removeprefix('judge_')}",
        )
    if problems:
        raise BadInput(problems)
    return space


def _mapping(raw: dict, section: str, problem: Callable) -> dict:
    """A section's mapping ({} when absent or null); a problem when it is something else."""
    value = raw.get(section)
    if value is None:
        return {}
    if not isinstance(value, dict):
        problem(
            (section,), f"must be a mapping of 'name: value' lines, got {kind_of(value)}; see search_spaces/README.md"
        )
        return {}
    return value


# ---------------------------------------------------------------------------------------------- fixed


def _check_fixed(values: dict, problem: Callable, folder: Callable) -> dict[str, Any]:
    """The fixed settings that are valid, converted to their field types (problems for the rest)."""
    fixed = {}
    for name, value in values.items():
        at = ("fixed", name)
        if name not in CONFIG_FIELDS:
            problem(at, f"is not a Splice setting; {suggest(str(name), CONFIG_FIELDS, 'settings are')}")
            continue
        value, error = _field_value(name, value, folder(at))
        if error:
            problem(at, error)
        else:
            fixed[name] = value
    return fixed


def _field_value(name: str, value: Any, folder: Path) -> tuple[Any, str | None]:
    """`value` converted to the SpliceConfig field's type, or an error saying what is wrong and what to do."""
    error = _type_error(value, FIELD_TYPES[name])
    if error:
        return None, error
    if FIELD_TYPES[name] is float:
        value = float(value)
    if name in ("vit", "judge_vit") and value is not None:
        from splice_model.presets import VIT_PRESETS

        if value not in VIT_PRESETS:
            return None, f"unknown ViT preset '{value}'; {suggest(value, list(VIT_PRESETS), 'presets are')}"
    if name in ("vit_weights", "judge_vit_weights") and value is not None:
        weights = (folder / Path(value).expanduser()).resolve()
        if not weights.is_file():
            return None, (
                f"weights file '{value}' not found ({weights}); relative paths start at the search "
                f"space's folder (at the working folder for --set)"
            )
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
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        bool: isinstance(value, bool),
    }[kind]
    if ok:
        return None
    wanted = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}[kind]
    wanted += " or null" if nullable else ""
    if isinstance(value, str) and kind in (int, float) and _looks_numeric(value):
        return f"must be {wanted}, got the text '{value}'; remove the quotes"
    if kind is int and isinstance(value, float) and not isinstance(value, bool) and value.is_integer():
        return f"must be {wanted}, got {value!r}; write {int(value)}"
    return f"must be {wanted}, got {shown(value)}"


def _check_config_value(name: str, value: Any, at: At, context: _Context) -> bool:
    """Report what `SpliceConfig.validate` finds with `name` set to `value` (beyond the fixed settings')."""
    ok = True
    for line in context.base.replace(**{name: value}).validate():
        if line in context.base_problems:
            continue
        field, _, what = line.partition(": ")
        context.problem(at, what if field == name else line)
        ok = False
    return ok


# ---------------------------------------------------------------------------------------------- params


def _check_param(name: str, spec: Any, fixed: dict, context: _Context) -> ParamSpec | None:
    """One entry of `params` as a ParamSpec, or None after reporting what is wrong with it."""
    kind = _param_type(name, spec, fixed, context.problem)
    if kind is None:
        return None
    if kind == "categorical":
        return _check_choices(name, spec.get("choices"), context)
    if not _range_fits_field(name, kind, context.problem):
        return None
    at, number = ("params", name), int if kind == "int" else float
    bounds = _check_bounds(at, spec, kind, number, context.problem)
    log = _check_log(at, spec.get("log", False), context.problem)
    step = _check_step(at, spec.get("step"), number, log, context.problem)
    if len(bounds) < 2 or not _check_range(name, bounds["low"], bounds["high"], log, step, context.problem):
        return None
    # Every bound is checked before deciding, so the problems of both are reported.
    fits = [_check_config_value(name, value, at + (key,), context) for key, value in bounds.items()]
    if not all(fits):
        return None
    return ParamSpec(name, kind, bounds["low"], bounds["high"], log, step)


def _param_type(name: str, spec: Any, fixed: dict, problem: Callable) -> str | None:
    """The parameter's `type`; None after a problem that ends its check (an unknown setting, one both fixed and
    sampled, not a mapping, no known type). Unknown options are reported without ending it."""
    at = ("params", name)
    if name not in CONFIG_FIELDS:
        problem(at, f"is not a Splice setting; {suggest(name, CONFIG_FIELDS, 'settings are')}")
        return None
    if name in fixed:
        problem(at, "is both fixed and sampled; remove it from fixed or from params")
        return None
    if not isinstance(spec, dict):
        problem(at, f"must be a mapping like {{type: float, low: 0.02, high: 0.5}}, got {kind_of(spec)}")
        return None
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        what = "is missing" if kind is None else f"'{kind}' is not known"
        hint = suggest(str(kind), PARAM_TYPES, "types are") if kind is not None else "use float, int or categorical"
        problem(at + ("type",), f"{what}; {hint}")
        return None
    allowed = ("type", "choices") if kind == "categorical" else ("type", "low", "high", "log", "step")
    for key in spec:
        if key not in allowed:
            problem(
                at + (key,),
                f"is not an option of a {kind} parameter; {suggest(str(key), allowed[1:], 'its options are')}",
            )
    return kind


def _range_fits_field(name: str, kind: str, problem: Callable) -> bool:
    """Whether a float/int range can set this field (a problem when it cannot)."""
    field_type = FIELD_TYPES[name]
    if field_type not in (int, float, int | None):
        problem(
            ("params", name, "type"),
            f"{name} is not a number setting, so it cannot be a range; use type: categorical with choices",
        )
        return False
    if kind == "float" and field_type is not float:
        problem(("params", name, "type"), f"{name} is a whole-number setting; use type: int")
        return False
    return True


def _check_bounds(at: At, spec: dict, kind: str, number: type, problem: Callable) -> dict[str, float | int]:
    """The range's low and high that are given and are numbers of its type (problems for the others)."""
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
    return bounds


def _check_log(at: At, log: Any, problem: Callable) -> bool:
    """The range's `log` flag (False after a problem)."""
    if not isinstance(log, bool):
        problem(at + ("log",), f"must be true or false, got {shown(log)}")
        return False
    return log


def _check_step(at: At, step: Any, number: type, log: bool, problem: Callable) -> float | int | None:
    """The range's `step`, converted to its type; None when not given, or after a problem."""
    if step is None:
        return None
    error = _type_error(step, number)
    if error or step <= 0:
        problem(at + ("step",), error or f"must be > 0, got {step!r}")
        return None
    if log:
        problem(
            at + ("step",),
            "cannot be combined with log: true (Optuna samples either on a log scale or on a grid); drop one",
        )
        return None
    return number(step)


def _check_range(name: str, low: float, high: float, log: bool, step: float | None, problem: Callable) -> bool:
    """Whether low, high, log and step make a range Optuna can sample (one problem when they do not)."""
    at = ("params", name)
    if low >= high:
        problem(at + ("low",), f"low ({low}) must be below high ({high}); to hold {name} constant, move it to fixed")
        return False
    if log and low <= 0:
        problem(at + ("low",), f"must be > 0 when log: true, got {low}; raise low or drop log")
        return False
    if step is not None and not _is_multiple(high - low, step):
        problem(at + ("step",), f"high - low ({high - low:g}) is not a multiple of step {step:g}; adjust high or step")
        return False
    return True


def _check_choices(name: str, choices: Any, context: _Context) -> ParamSpec | None:
    """A categorical parameter's choices, converted and checked one by one."""
    at = ("params", name, "choices")
    if not isinstance(choices, list):
        what = "is missing" if choices is None else f"must be a list, got {kind_of(choices)}"
        context.problem(at, f"{what}; write choices: [a, b, ...]")
        return None
    if len(choices) < 2:
        context.problem(at, f"has {len(choices)} choice(s); give at least two, or move {name} to fixed")
        return None
    converted, ok = [], True
    for index, choice in enumerate(choices):
        value, error = _field_value(name, choice, context.folder(at))
        if error:
            context.problem(at + (index,), error)
            ok = False
        elif value in converted:
            context.problem(at + (index,), f"{choice!r} is listed twice; list each choice once")
            ok = False
        else:
            converted.append(value)
            ok &= _check_config_value(name, value, at + (index,), context)
    return ParamSpec(name, "categorical", choices=tuple(converted)) if ok else None


# ---------------------------------------------------------------------------------------------- sections


def _check_sections(raw: dict, sampled: bool, problem: Callable) -> dict[str, Any]:
    """budget, scheduler, sampler and objective, built from their valid keys (defaults fill the gaps)."""
    sections, given, valid = {}, {}, {}
    for section, section_type in SECTION_TYPES.items():
        given[section] = _mapping(raw, section, problem)
        valid[section] = _check_section(section, given[section], problem)
        sections[section] = section_type(**valid[section])
    trials = sections["budget"].trials_per_pair
    # An invalid trials_per_pair is reported already; the default stands in for it, so say nothing more.
    trials_valid = "trials_per_pair" in valid["budget"] or "trials_per_pair" not in given["budget"]
    if not sampled and trials > 1 and trials_valid:
        default = "" if "trials_per_pair" in given["budget"] else " (the default)"
        problem(
            ("budget", "trials_per_pair"),
            f"is {trials}{default} but nothing is sampled (params is empty), "
            f"so every trial would be the same run; set it to 1 or add params",
        )
    return sections


def _check_section(section: str, values: dict, problem: Callable) -> dict[str, Any]:
    """The valid keys of budget/scheduler/sampler/objective (problems for the rest)."""
    checks: dict[str, Callable[[Any], str | None]] = {
        "trials_per_pair": lambda v: _whole(v, 1, False, "trials each pair gets"),
        "max_concurrent": lambda v: _whole(v, 1, True, "trials running at once; null lets resources decide"),
        "grace_period": lambda v: _whole(v, 1, False, "evals a trial runs before it may be stopped"),
        "reduction_factor": lambda v: (
            _type_error(v, float)
            or (f"must be >= 2, got {v!r}; ASHA keeps 1/reduction_factor of the trials at each rung" if v < 2 else None)
        ),
        "seed": lambda v: _whole(v, 0, True, "the seed pairs' study seeds derive from; null = unseeded"),
        "startup_trials": lambda v: _whole(v, 0, True, "random trials before TPE models"),
        "type": lambda v: _one_of(v, SCHEDULERS if section == "scheduler" else SAMPLERS),
        "metric": lambda v: _one_of(v, METRICS),
        "mode": lambda v: None if v == "min" else f"must be min (every score is lower-is-better), got {v!r}",
    }
    keys = section_keys(section)
    valid = {}
    for key, value in values.items():
        if key not in keys:
            problem((section, key), f"is not a {section} setting; {suggest(str(key), keys, 'they are')}")
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
    return f"must be a whole number >= {minimum}{null} ({meaning}), got {shown(value)}"


def _one_of(value: Any, options: tuple[str, ...]) -> str | None:
    if value in options:
        return None
    return f"'{value}' is not known; {suggest(str(value), options, 'options are')}"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_multiple(span: float, step: float) -> bool:
    ratio = span / step
    return abs(ratio - round(ratio)) <= 1e-9 * max(1.0, abs(ratio))
