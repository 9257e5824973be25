"""Both readers of the one command-line declaration agree on every line: generated, not hand-picked.

The start-up parser (qmpctl/cli/parse.py) and the Typer application
(qmpctl/cli/typer_app.py) are both built from qmpctl/cli/spec.py. Hypothesis
generates command lines from that declaration: every well-formed one must be
taken by the start-up parser (so no command needs Typer to run) and read
exactly as Typer reads it; an odd one must either be left to Typer or, again,
read as Typer reads it.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmpctl.cli import dispatch, parse, run_cli
from qmpctl.cli.spec import COMMANDS, Argument, Command, Option, all_options, find

VARIABLES = ("QMPCTL_QMP", "QMPCTL_AGENT", "QMPCTL_TIMEOUT", "LIBVIRT_DEFAULT_URI", "_QMPCTL_COMPLETE")

WORDS = st.sampled_from(["/tmp/a.sock", "unix:/tmp/b,server=on", "tcp:127.0.0.1:4444", "vm one", "x", "0",
                         "dom1", "qemu:///session", "A=1", "{\"execute\":\"query-status\"}", "-", "@/tmp/req.json",
                         "true", "sh", "é", "a=b=c", "10M", "backup-vd0"])
INTS = st.integers(min_value=-5, max_value=100_000).map(str)
FLOATS = st.one_of(st.integers(min_value=0, max_value=1000).map(str),
                   st.floats(min_value=0, max_value=1e6, allow_nan=False).map(lambda f: f"{f:.3f}"),
                   st.sampled_from(["1e1", "0.5", ".5", "7.", "0"]))


def value_for(kind: str, option: Option | None) -> st.SearchStrategy[str]:
    if option is not None and option.type == "choice":
        return st.sampled_from(option.choices)
    if kind == "int":
        return INTS.filter(lambda text: not text.startswith("-"))
    if kind == "float":
        return FLOATS
    return WORDS.filter(lambda text: text != "-" or option is None)


@st.composite
def option_tokens(draw: st.DrawFn, option: Option) -> list[str]:
    if option.type == "flag":
        return [draw(st.sampled_from(option.flags))]
    if option.type == "switch":
        return [draw(st.sampled_from(option.flags + option.off_flags))]
    flag = draw(st.sampled_from(option.flags))
    value = draw(value_for(option.type, option))
    if flag.startswith("--"):
        return draw(st.sampled_from([[flag, value], [f"{flag}={value}"]]))
    return draw(st.sampled_from([[flag, value], [f"{flag}{value}"]]))


@st.composite
def argument_words(draw: st.DrawFn, argument: Argument) -> list[str]:
    count = draw(st.integers(min_value=1, max_value=3)) if argument.variadic else 1
    return [draw(value_for(argument.type, None).filter(lambda w: not w.startswith("-"))) for _ in range(count)]


@st.composite
def well_formed(draw: st.DrawFn) -> list[str]:
    """A line a user could type: the command's words, some options, its arguments, in click's grammar."""
    command: Command = draw(st.sampled_from(COMMANDS))
    options = all_options(command)  # none for help, which talks to no VM
    chosen = draw(st.lists(st.sampled_from(options), max_size=6)) if options else []
    chunks = [draw(option_tokens(option)) for option in chosen]
    positional = [word for argument in command.arguments if argument.required or draw(st.booleans())
                  for word in draw(argument_words(argument))]
    if not command.interspersed:
        separator = ["--"] if draw(st.booleans()) or any(w.startswith("-") for w in positional) else []
        return [*command.words, *(token for chunk in chunks for token in chunk), *separator, *positional]
    tokens: list[str] = [token for chunk in chunks for token in chunk]
    if any(word == "-" or word.startswith("-") for word in positional) or draw(st.booleans()):
        return [*command.words, *tokens, "--", *positional]
    for word in positional:  # interspersed: positional words may stand anywhere between whole options
        spots = [0] + [sum(len(c) for c in chunks[:i + 1]) for i in range(len(chunks))]
        at = draw(st.sampled_from(spots))
        tokens.insert(at, word)
        chunks = [tokens]  # after the first insert, only the ends are safe spots
    return [*command.words, *tokens]


ODD = st.sampled_from(["--help", "-h", "--bogus", "-", "--", "", "-5", "--timeout", "--pretty=yes", "nan", "1_0",
                       " 7 ", "--no-pretty", "-s", "--jobs=x", "--progress", "foo", "--wait", "--no-wait", "-j0"])


@st.composite
def odd_lines(draw: st.DrawFn) -> list[str]:
    line = draw(well_formed())
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        line.insert(draw(st.integers(min_value=1, max_value=len(line))), draw(ODD))
    return line


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def normalised(values: dict[str, Any], command: Command) -> dict[str, Any]:
    out = dict(values)
    for option in all_options(command):
        if option.type == "list":
            out[option.name] = list(out.get(option.name) or [])
    for argument in command.arguments:
        if argument.variadic and out.get(argument.name) is not None:
            out[argument.name] = list(out[argument.name])
    return out


class Read(BaseException):
    """Stops the command once a parser has handed it its values."""


def read_by_typer(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """What Typer hands the handler for ``argv``, or its exit code when it refuses the line."""
    seen: list[Any] = []

    def record(command: Command, values: dict[str, Any]) -> int:
        seen.append((command.words, normalised(values, command)))
        raise Read

    with monkeypatch.context() as patch:
        patch.setattr(dispatch, "invoke", record)
        try:
            code = run_cli(argv, fast_path=False)
        except Read:
            return seen[0]
    return ("refused", code)


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(line=well_formed())
def test_every_well_formed_line_is_taken_by_the_start_up_parser_and_read_as_typer_reads_it(
        line, clean_environment, monkeypatch, capsys):
    invocation = parse.parse(line, {})
    assert invocation is not None, f"the start-up parser left a well-formed line to Typer: {line}"
    fast = (invocation.command.words, normalised(invocation.values, invocation.command))
    assert fast == read_by_typer(line, monkeypatch)
    capsys.readouterr()


@SETTINGS
@given(line=odd_lines())
def test_an_odd_line_is_left_to_typer_or_read_alike(line, clean_environment, monkeypatch, capsys):
    invocation = parse.parse(line, {})
    if invocation is not None:
        fast = (invocation.command.words, normalised(invocation.values, invocation.command))
        assert fast == read_by_typer(line, monkeypatch)
    capsys.readouterr()


ENVIRONMENTS = [
    (["status"], {"QMPCTL_QMP": "/tmp/a.sock  /tmp/b.sock\t/tmp/c.sock", "QMPCTL_TIMEOUT": "3"}),
    (["status", "-s", "/tmp/x.sock"], {"QMPCTL_QMP": "/tmp/ignored.sock", "QMPCTL_TIMEOUT": "0.5"}),
    (["status", "-d", "dom"], {"LIBVIRT_DEFAULT_URI": "qemu:///session"}),
    (["agent", "interfaces"], {"QMPCTL_AGENT": "/tmp/one.sock /tmp/two.sock"}),
    (["backup", "vd0", "/tmp/t.qcow2"], {"QMPCTL_QMP": "/tmp/a.sock"}),
]


@pytest.mark.parametrize(("argv", "env"), ENVIRONMENTS, ids=[" ".join(a) for a, _ in ENVIRONMENTS])
def test_environment_variables_are_read_alike(argv, env, clean_environment, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    invocation = parse.parse(argv, dict(os.environ))
    assert invocation is not None
    assert (invocation.command.words, normalised(invocation.values, invocation.command)) == \
        read_by_typer(argv, monkeypatch)


LEFT_TO_TYPER = [[], ["--version"], ["--help"], ["agent"], ["status", "--help"], ["status", "-h"],
                 ["backup", "--help"], ["status", "-s"], ["status", "-s", ""], ["status", "extra", "-s", "x"],
                 ["status", "--bogus"], ["status", "--timeout", "nan", "-s", "x"],
                 ["hotplug-disk", "f", "--bus", "pci"],
                 ["agent", "exec", "-a", "x"], ["agent", "exec-status", "-a", "x", "12x"], ["nope"]]


@pytest.mark.parametrize("argv", LEFT_TO_TYPER, ids=[" ".join(a) or "-" for a in LEFT_TO_TYPER])
def test_help_and_mistakes_are_left_to_typer(argv):
    assert parse.parse(argv, {}) is None
    assert parse.parse(["status", "-s", "x"], {"_QMPCTL_COMPLETE": "bash_complete"}) is None


def test_every_declared_handler_exists_and_takes_the_declared_keywords():
    import inspect

    for command in COMMANDS:
        handler = dispatch.handler_of(command)
        parameters = inspect.signature(handler).parameters
        declared = {a.name for a in command.arguments} | {o.name for o in command.options}
        assert set(parameters) - {"common"} == declared, command.words
        assert find(list(command.words)) is not None


@pytest.mark.parametrize("text, seconds", [("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("12h", 43200.0),
                                           ("7d", 604800.0), ("2w", 1209600.0), ("1.5h", 5400.0), (" 7D ", 604800.0),
                                           ("1d2h", 93600.0)])
def test_a_duration_reads_its_unit(text, seconds):
    from qmpctl.units import parse_duration

    assert parse_duration(text, "--new-chain-after") == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "-1d", "7 days", "d", "1y", "1d2"])
def test_anything_else_is_a_usage_error_naming_the_option(text):
    from qmpctl.errors import UsageError
    from qmpctl.units import parse_duration

    with pytest.raises(UsageError, match="--new-chain-after wants a duration above 0"):
        parse_duration(text, "--new-chain-after")
