"""The fast schema checker agrees with the reference jsonschema on every schema qmpctl ships."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmpctl.wire import schema

SCHEMA_ROOT = Path(schema.schema_dir())
SCHEMA_NAMES = sorted(str(p.relative_to(SCHEMA_ROOT).with_suffix("")) for p in SCHEMA_ROOT.rglob("*.json"))


def keywords(node: Any, inside_properties: bool = False) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if not inside_properties:
                found.add(key)
            if key in ("properties", "$defs"):
                for sub in value.values():
                    found |= keywords(sub)
            elif key in ("items", "additionalProperties") and isinstance(value, dict):
                found |= keywords(value)
            elif key in ("anyOf", "oneOf"):
                for sub in value:
                    found |= keywords(sub)
    return found


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_is_valid_and_within_the_supported_subset(name):
    loaded = schema.load_schema(name)
    jsonschema.Draft202012Validator.check_schema(loaded)
    assert keywords(loaded) <= schema.SUPPORTED_KEYWORDS


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def mutate(example: dict[str, Any], data) -> Any:
    """A request close to a valid one, so both validators see interesting cases."""
    message = json.loads(json.dumps(example))
    arguments = message.get("arguments")
    if isinstance(arguments, dict) and arguments and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(arguments)))
        arguments[key] = data.draw(json_values)
    elif data.draw(st.booleans()):
        message[data.draw(st.text(max_size=8))] = data.draw(json_values)
    return message


def examples_for(name: str) -> list[dict[str, Any]]:
    loaded = schema.load_schema(name)
    found = loaded.get("examples") or []
    execute = loaded.get("properties", {}).get("execute", {}).get("const", "query-status")
    return found or [{"execute": execute}]


@pytest.mark.parametrize("name", SCHEMA_NAMES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_fast_checker_agrees_with_jsonschema(name, data):
    loaded = schema.load_schema(name)
    base = data.draw(st.sampled_from(examples_for(name)))
    instance = mutate(base, data) if data.draw(st.booleans()) else base
    reference = jsonschema.Draft202012Validator(loaded).is_valid(instance)
    assert (not schema.errors(loaded, instance)) == reference, instance


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_examples_are_valid(name):
    for example in examples_for(name):
        if schema.load_schema(name).get("examples"):
            assert schema.errors(schema.load_schema(name), example) == []


def test_error_names_the_field():
    problems = schema.errors(schema.load_schema("qmp/human-monitor-command"),
                             {"execute": "human-monitor-command", "arguments": {"command-line": 5}})
    assert problems == ["arguments.command-line: expected string, got integer 5"]


def _string_leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, str):
        return [path]
    if isinstance(node, dict):
        return [leaf for key, value in node.items() for leaf in _string_leaves(value, path + (key,))]
    if isinstance(node, list):
        return [leaf for index, value in enumerate(node) for leaf in _string_leaves(value, path + (index,))]
    return []


def _with_newline(example: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    bent = json.loads(json.dumps(example))
    parent = bent
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] += "\n"
    return bent


def _patterns(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return own + [found for value in node.values() for found in _patterns(value)]
    if isinstance(node, list):
        return [found for value in node for found in _patterns(value)]
    return []


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_a_trailing_newline_gets_past_neither_checker(name):
    """Python's ``$`` also matches before a final newline (``jobs --dismiss $'backup\\n'``); JSON Schema's does not.

    Every string of every example, with a newline appended: a field whose
    pattern ends in ``$`` must refuse it in both checkers (the schemas say
    ``$(?!\\n)`` so the reference, which uses Python's ``re`` too, agrees).
    """
    loaded = schema.load_schema(name)
    reference = jsonschema.Draft202012Validator(loaded)
    for pattern in _patterns(loaded):
        assert not pattern.endswith("$"), f"{pattern!r}: write $(?!\\n), or Python's re accepts a final newline"
    for example in examples_for(name):
        for path in _string_leaves(example):
            bent = _with_newline(example, path)
            assert (not schema.errors(loaded, bent)) == reference.is_valid(bent), bent


@pytest.mark.parametrize("instance", ["backup\n", "backup\n\n", "back\nup"])
def test_job_ids_with_newlines_are_refused(instance):
    for name in ("qmp/job-dismiss", "qmp/job-cancel"):
        assert schema.errors(schema.load_schema(name), {"execute": name[4:], "arguments": {"id": instance}})


@pytest.mark.parametrize("pattern, text, matches", [
    ("^[a-z]+$", "abc", True),
    ("^[a-z]+$", "abc\n", False),
    ("^a$|^b$", "a\n", False),
    ("^a\\$$", "a$", True),
    ("^[$]+$", "$$", True),
    ("^[]$]+$", "]$", True),
    ("^[^]$\n]+$", "ab\n", False),
    ("^[^]$]+$", "ab$", False),
    ("^x", "xyz\n", True),
])
def test_fast_checker_reads_dollar_as_json_schema_does(pattern, text, matches):
    """The checker's own guard, for schemas that forget the lookahead: ``$`` is the end of the string."""
    assert bool(schema.compile_pattern(pattern).search(text)) is matches


def _sources() -> str:
    package = Path(schema.__file__).resolve().parents[1]
    return "".join(path.read_text() for path in package.rglob("*.py"))


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_schema_is_used(name):
    """A schema nobody validates against is a promise nobody keeps: each one is named where qmpctl uses it."""
    sources = _sources()
    if "/" in name:  # qmp/NAME, qga/NAME: validated when a Request("NAME") is built (or a transaction action)
        assert f'"{name.split("/")[1]}"' in sources, f"schemas/{name}.json: qmpctl never sends {name}"
    elif name.endswith("-request"):  # the envelope of a raw request, as f"{protocol}-request"
        assert 'f"{protocol}-request"' in sources and name.split("-")[0] in ("qmp", "qga")
    else:  # data qmpctl reads, by the name of its schema constant
        assert f'SCHEMA = "{name}"' in sources, f"schemas/{name}.json is not read by qmpctl"


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_example_is_valid(name):
    loaded = schema.load_schema(name)
    for example in loaded.get("examples", []):
        jsonschema.Draft202012Validator(loaded).validate(example)
        assert schema.errors(loaded, example) == []
