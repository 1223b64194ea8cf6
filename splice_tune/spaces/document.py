"""Reading a search space: the YAML document with the line of every key, and the `--set` overrides."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from splice_model.config import CONFIG_FIELDS
from splice_tune.errors import BadInput
from splice_tune.spaces.messages import At, dotted, suggest
from splice_tune.spaces.model import SECTION_TYPES, SECTIONS, section_keys


class Loader(yaml.SafeLoader):
    """Safe YAML loader that also reads `5e-4` as a float (YAML 1.2), which PyYAML would leave as text."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


class Where:
    """Turns a location inside the document into `file:line` (or `--set key=value` for overridden values)."""

    def __init__(self, shown: str, lines: dict[At, int], overrides: dict[At, str]):
        self.shown, self.lines, self.overrides = shown, lines, overrides

    def __call__(self, at: At) -> str:
        for n in range(len(at), 0, -1):
            if at[:n] in self.overrides:
                return f"--set {self.overrides[at[:n]]}"
        for n in range(len(at), -1, -1):
            if at[:n] in self.lines:
                return f"{self.shown}:{self.lines[at[:n]]}"
        return self.shown

    def is_override(self, at: At) -> bool:
        """Whether the value at `at` came from `--set` rather than the file."""
        return any(at[:n] in self.overrides for n in range(len(at), 0, -1))


def parse(path: Path, shown: str) -> tuple[Any, dict[At, int], list[str]]:
    """The document's data, the line of every key, and problems found while reading (duplicate keys)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise BadInput(f"{shown}: cannot be read ({error.strerror}); check its permissions") from None
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise BadInput(f"{shown}:{line}: is not UTF-8 text; save the file as UTF-8") from None
    loader = Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        context, what = getattr(error, "context", None), getattr(error, "problem", None)
        what = f"{context}, {what}" if context and what else what or str(error).splitlines()[0]
        raise BadInput(
            f"{shown}{line}: not valid YAML ({what}); fix the syntax (indent with spaces, "
            f"quote text containing ': ' or '#')"
        ) from None
    finally:
        loader.dispose()
    if node is None:
        raise BadInput(
            f"{shown}: is empty; a search space needs at least fixed: or params: (see search_spaces/README.md)"
        )
    if not isinstance(data, dict):
        raise BadInput(
            f"{shown}:{node.start_mark.line + 1}: the top level must be a mapping of sections "
            f"({', '.join(SECTIONS)}); see search_spaces/README.md"
        )
    lines: dict[At, int] = {(): node.start_mark.line + 1}
    problems: list[str] = []
    _record_lines(node, (), lines, problems, shown)
    return data, lines, problems


def _record_lines(
    node: yaml.Node, at: At, lines: dict[At, int], problems: list[str], shown: str, seen: set[int] | None = None
) -> None:
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
                problems.append(
                    f"{shown}:{line}: {dotted(at + (key,))}: given twice (first on line {first[key]}); keep one"
                )
            first[key] = line
            lines[at + (key,)] = line
            _record_lines(value_node, at + (key,), lines, problems, shown, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[at + (index,)] = item.start_mark.line + 1
            _record_lines(item, at + (index,), lines, problems, shown, seen)


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> tuple[list[tuple[str, Any, str]], list[str]]:
    """Split `key=value` strings and read each value as YAML; problems for malformed ones."""
    parsed, problems = [], []
    for text in overrides:
        key, equals, value = text.partition("=")
        key = key.strip()
        if not equals or not key:
            problems.append(f"--set {text}: expected key=value, e.g. --set steps=500")
            continue
        try:
            parsed.append((key, yaml.load(value, Loader=Loader), text))
        except yaml.YAMLError:
            problems.append(f"--set {text}: the value is not valid YAML; quote it, e.g. --set {key}='...'")
    return parsed, problems


def apply_overrides(
    raw: dict, overrides: list[tuple[str, Any, str]], shown: str
) -> tuple[list[str], dict[At, str], list[str]]:
    """Write overrides into the raw document (pinning sampled parameters): problems for unknown keys, where
    each override went, and a note for every sampled parameter an override pinned."""
    problems, located, notes = [], {}, []
    known = list(CONFIG_FIELDS) + [f"{s}.{k}" for s in SECTION_TYPES for k in section_keys(s)]
    for key, value, text in overrides:
        target = _override_target(key)
        if target is None:
            problems.append(f"--set {text}: '{key}' is not a setting; {suggest(key, known, 'settings are')}")
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
            notes.append(
                f"--set {text}: {name} is sampled by {shown}; it is now fixed at {given} for every "
                f"trial and no longer searched"
            )
        located[target] = text
    return problems, located, notes


def _override_target(key: str) -> At | None:
    """Where `--set key=...` goes in the document, or None for an unknown key."""
    if key in CONFIG_FIELDS:
        return ("fixed", key)
    section, _, name = key.partition(".")
    if section == "fixed" and name in CONFIG_FIELDS:
        return ("fixed", name)
    if section in SECTION_TYPES and name in section_keys(section):
        return (section, name)
    return None
