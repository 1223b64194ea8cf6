"""How the search-space problems spell things: locations, values, suggestions (shared by reading and checks)."""

from __future__ import annotations

import difflib
import typing
from typing import Any

At = tuple
"""A location inside the YAML document, e.g. ("params", "alpha", "low")."""


def suggest(word: str, options: typing.Iterable[str], listing: str) -> str:
    """'did you mean X?' when something is close, else the full list of options."""
    options = list(options)
    close = difflib.get_close_matches(word, options, n=1)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"{listing} {', '.join(options)}"


def dotted(at: At) -> str:
    """A location as messages name it: `params.vit_size.choices[1]`."""
    return ".".join(str(part) if not isinstance(part, int) else f"[{part}]" for part in at).replace(".[", "[")


def shown(value: Any) -> str:
    """A value as a message shows it: YAML spelling for true/false/null, 'text' marking strings."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, str):
        return f"text {value!r}"
    return kind_of(value) if isinstance(value, (list, dict)) else repr(value)


def kind_of(value: Any) -> str:
    """What sort of YAML value this is, in words ("a list", "text", ...)."""
    names = {
        bool: "true/false",
        int: "a number",
        float: "a number",
        str: "text",
        list: "a list",
        dict: "a mapping",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)
