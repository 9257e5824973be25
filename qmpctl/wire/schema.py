"""Validate requests against the JSON Schemas in ``schemas/`` before anything is sent.

``import jsonschema`` alone costs more than a whole ``virsh`` call, so the hot
path uses this small checker for the subset of JSON Schema (draft 2020-12)
that qmpctl's schemas are written in. The test suite proves, with the real
``jsonschema`` as the reference, that every schema uses only this subset and
that both agree on accepted and rejected instances.
"""

from __future__ import annotations

import json
import os
import re

from qmpctl.errors import UsageError
from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

SUPPORTED_KEYWORDS = frozenset(
    {
        "$schema", "$id", "$defs", "$ref", "$comment", "title", "description", "examples",
        "type", "properties", "required", "additionalProperties", "enum", "const",
        "pattern", "minLength", "maxLength", "minimum", "maximum", "items", "minItems",
        "maxItems", "anyOf", "oneOf", "minProperties", "default",
    }
)

_TYPE_CHECKS: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}

_cache: dict[str, dict[str, Any]] = {}
_patterns: dict[str, re.Pattern[str]] = {}


def schema_dir() -> str:
    """The installed copy inside the package, else the source tree's top-level folder."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # qmpctl/, above wire/
    installed = os.path.join(package, "schemas")
    if os.path.isdir(installed):
        return installed
    return os.path.join(os.path.dirname(package), "schemas")


def load_schema(name: str) -> dict[str, Any]:
    """Load ``schemas/NAME.json`` once per process."""
    schema = _cache.get(name)
    if schema is None:
        path = os.path.join(schema_dir(), name + ".json")
        try:
            with open(path, "rb") as handle:
                schema = json.load(handle)
        except FileNotFoundError:
            raise LookupError(f"qmpctl has no schema {name!r} (looked for {path})") from None
        _cache[name] = schema
    return schema


def _end_anchored(pattern: str) -> str:
    """``pattern`` with each ``$`` outside a character class (``[...]``) replaced by ``\\Z``."""
    out: list[str] = []
    class_start = -1  # index of the class's first member while inside [...], else -1
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            out.append(pattern[index:index + 2])
            index += 2
            continue
        if class_start >= 0:
            if char == "^" and index == class_start:
                class_start += 1
            elif char == "]" and index > class_start:  # a ] first in the class is a member (Python's re)
                class_start = -1
        elif char == "[":
            class_start = index + 1
        elif char == "$":
            char = r"\Z"
        out.append(char)
        index += 1
    return "".join(out)


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A schema ``pattern`` as JSON Schema means it: ``$`` is the end of the string, as in ECMA-262.

    Python's ``$`` also matches before a final newline, so ``^[A-Za-z]+$``
    would let ``"backup\\n"`` through to QEMU; each ``$`` outside a character
    class becomes ``\\Z``. (The schemas write ``$(?!\\n)`` as well, so the
    reference ``jsonschema``, which uses Python's ``re`` as it is, agrees.)
    """
    compiled = _patterns.get(pattern)
    if compiled is None:
        compiled = _patterns[pattern] = re.compile(_end_anchored(pattern))
    return compiled


def _where(path: str) -> str:
    return path or "the request"


def _kind(value: Any) -> str:
    for name in ("boolean", "integer", "number", "string", "array", "object", "null"):
        if _TYPE_CHECKS[name](value):
            return name
    return type(value).__name__


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def errors(schema: dict[str, Any], instance: Any, root: dict[str, Any] | None = None, path: str = "") -> list[str]:
    """Every reason ``instance`` fails ``schema``, each naming the field (empty when valid)."""
    root = root if root is not None else schema
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/$defs/"):
            raise LookupError(f"unsupported $ref {ref!r}")
        found = errors(root["$defs"][ref[len("#/$defs/"):]], instance, root, path)
        if found:
            return found
    problems: list[str] = []
    expected = schema.get("type")
    if expected is not None:
        names = expected if isinstance(expected, list) else [expected]
        if not any(_TYPE_CHECKS[name](instance) for name in names):
            return [f"{_where(path)}: expected {' or '.join(names)}, got {_kind(instance)} {_short(instance)}"]
    if "const" in schema and not _equal(instance, schema["const"]):
        problems.append(f"{_where(path)}: must be {_short(schema['const'])}, got {_short(instance)}")
    if "enum" in schema and not any(_equal(instance, option) for option in schema["enum"]):
        options = ", ".join(_short(option) for option in schema["enum"])
        problems.append(f"{_where(path)}: {_short(instance)} is not one of {options}")
    if isinstance(instance, str):
        if "minLength" in schema and len(instance) < schema["minLength"]:
            problems.append(f"{_where(path)}: must not be shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(instance) > schema["maxLength"]:
            problems.append(f"{_where(path)}: must not be longer than {schema['maxLength']} characters")
        if "pattern" in schema:
            if not compile_pattern(schema["pattern"]).search(instance):
                problems.append(f"{_where(path)}: {_short(instance)} does not match {schema['pattern']}")
    if _TYPE_CHECKS["number"](instance):
        if "minimum" in schema and instance < schema["minimum"]:
            problems.append(f"{_where(path)}: {instance} is less than the minimum {schema['minimum']}")
        if "maximum" in schema and instance > schema["maximum"]:
            problems.append(f"{_where(path)}: {instance} is more than the maximum {schema['maximum']}")
    if isinstance(instance, list):
        if "minItems" in schema and len(instance) < schema["minItems"]:
            problems.append(f"{_where(path)}: needs at least {schema['minItems']} items")
        if "maxItems" in schema and len(instance) > schema["maxItems"]:
            problems.append(f"{_where(path)}: allows at most {schema['maxItems']} items")
        if "items" in schema:
            for index, item in enumerate(instance):
                problems.extend(errors(schema["items"], item, root, f"{path}[{index}]"))
    if isinstance(instance, dict):
        problems.extend(_object_errors(schema, instance, root, path))
    for keyword in ("anyOf", "oneOf"):
        if keyword in schema:
            matching = sum(1 for option in schema[keyword] if not errors(option, instance, root, path))
            if matching == 0 or (keyword == "oneOf" and matching > 1):
                problems.append(f"{_where(path)}: {_short(instance)} matches none of the allowed forms"
                                if matching == 0 else f"{_where(path)}: matches more than one allowed form")
    return problems


def _object_errors(schema: dict[str, Any], instance: dict[str, Any], root: dict[str, Any], path: str) -> list[str]:
    problems: list[str] = []
    prefix = f"{path}." if path else ""
    properties = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in instance:
            problems.append(f"{prefix}{name}: is required")
    if "minProperties" in schema and len(instance) < schema["minProperties"]:
        problems.append(f"{_where(path)}: needs at least {schema['minProperties']} members")
    extra = schema.get("additionalProperties", True)
    for name, value in instance.items():
        if name in properties:
            problems.extend(errors(properties[name], value, root, prefix + name))
        elif extra is False:
            problems.append(f"{prefix}{name}: unknown field")
        elif isinstance(extra, dict):
            problems.extend(errors(extra, value, root, prefix + name))
    return problems


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: booleans are not numbers, 1 == 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and bool(a == b)
    return bool(a == b)


def validate(name: str, instance: Any) -> None:
    """Raise :class:`UsageError` (exit 2, nothing sent) when ``instance`` fails schema ``name``."""
    problems = errors(load_schema(name), instance)
    if problems:
        raise UsageError(f"invalid request ({name}): " + "; ".join(problems[:5]), sent=instance)
