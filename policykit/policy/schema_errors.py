"""Pydantic validation errors, said plainly.

Turns one entry of ``ValidationError.errors()`` into a diagnostic code and a
short message that names the field, what was expected and what was found,
e.g. ``erase[0].strength: must be greater than 0; got 0`` or
``defaults.neighbors: unknown key 'radiuss'; did you mean 'radius'?``.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel

from policykit.policy.schema import NAME_PATTERN, SEMVER_PATTERN, SHA256_PATTERN

_PATTERN_NAMES = {
    NAME_PATTERN: "a DNS-style name: lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63 characters",
    SEMVER_PATTERN: "a semantic version such as 1.2.0 (ASCII digits, no leading 'v')",
    SHA256_PATTERN: "a sha256 digest: 64 lower-case hexadecimal digits",
}

_TYPE_NAMES = {
    "string_type": "a string",
    "float_type": "a number",
    "float_parsing": "a number",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dict_type": "a mapping",
    "none_required": "nothing (null)",
}

_RANGE = {
    "greater_than": ("gt", "greater than"),
    "greater_than_equal": ("ge", "at least"),
    "less_than": ("lt", "less than"),
    "less_than_equal": ("le", "at most"),
    "multiple_of": ("multiple_of", "a multiple of"),
}


def describe_value(value: Any, limit: int = 40) -> str:
    """A short phrase for a YAML value, as it appears in messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= limit else value[: limit - 3] + "..."
        return f"the string {shown!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def dotted(loc: tuple) -> str:
    """``("erase", 0, "neighbors")`` as ``erase[0].neighbors``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the top level"


def field_names(model: type[BaseModel]) -> list[str]:
    """The keys a mapping for ``model`` may hold, as written in YAML (aliases)."""
    return [info.alias or name for name, info in model.model_fields.items()]


def model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at ``loc`` (None if not a model)."""
    annotation: Any = model
    for part in loc:
        annotation = _unwrap(annotation, part)
        if annotation is None:
            return None
    annotation = _unwrap(annotation, None)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _unwrap(annotation: Any, part: str | int | None) -> Any:
    """Step from ``annotation`` into ``part`` (a field name or a list index)."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = members[0] if len(members) == 1 else annotation
            if len(members) != 1:
                return None
        else:
            break
    if part is None:
        return annotation
    if isinstance(part, int):
        return typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, info in annotation.model_fields.items():
            if part in (name, info.alias):
                return info.annotation if not info.metadata else typing.Annotated[(info.annotation, *info.metadata)]
    return None


def describe_error(model: type[BaseModel], error: dict, loc: tuple) -> tuple[str, str]:
    """``(code, message)`` for one pydantic error found at ``loc``."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    where = dotted(loc[:-1]) if kind in ("missing", "extra_forbidden") else dotted(loc)

    if kind == "extra_forbidden":
        key = str(loc[-1])
        parent = model_at(model, loc[:-1])
        message = f"unknown key '{key}' in {where}"
        if key == "<<":
            return "unknown-key", f"{message}: YAML merge keys are not supported; write the values out or use extends"
        if parent is not None:
            close = difflib.get_close_matches(key, field_names(parent), n=1, cutoff=0.6)
            if close:
                message += f"; did you mean '{close[0]}'?"
            else:
                message += f" (allowed: {', '.join(field_names(parent))})"
        return "unknown-key", message
    if kind == "missing":
        return "missing-field", f"{where} needs '{loc[-1]}'"
    if kind in _TYPE_NAMES:
        hint = ""
        if kind == "string_type" and isinstance(value, (int, float)) and not isinstance(value, bool):
            hint = f" (quote it: \"{value}\")"
        return "wrong-type", f"{where}: expected {_TYPE_NAMES[kind]}, got {describe_value(value)}{hint}"
    if kind in ("literal_error", "enum"):
        expected = str(ctx.get("expected", "")).replace("'", "")
        return "invalid-value", f"{where}: expected {expected.replace(' or ', ', ') if ',' in expected else expected}; got {describe_value(value)}"
    if kind in _RANGE:
        key, phrase = _RANGE[kind]
        return "out-of-range", f"{where}: must be {phrase} {_number(ctx.get(key))}; got {_number(value)}"
    if kind in ("string_too_short", "too_short"):
        n = ctx.get("min_length")
        what = "character" if kind.startswith("string") else "entry"
        if kind == "string_too_short" and n == 1:
            return "out-of-range", f"{where}: must not be empty"
        return "out-of-range", f"{where}: needs at least {n} {what}{'s' if n != 1 else ''}"
    if kind in ("string_too_long", "too_long"):
        n = ctx.get("max_length")
        what = "characters" if kind.startswith("string") else "entries"
        return "out-of-range", f"{where}: at most {n} {what} allowed"
    if kind == "string_pattern_mismatch":
        pattern = ctx.get("pattern", "")
        expected = _PATTERN_NAMES.get(pattern, f"text matching {pattern}")
        return "invalid-format", f"{where}: expected {expected}; got {describe_value(value)}"
    if kind in ("value_error", "assertion_error"):
        message = str(error.get("msg", "")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return "invalid-value", f"{where}: {message}"
    if kind in ("finite_number",):
        return "not-finite", f"{where}: expected a finite number"
    return "invalid-value", f"{where}: {error.get('msg', kind)}"


def _number(value: Any) -> str:
    """``0.0`` as ``0``, other values as written."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, (int, float)) else str(value)
