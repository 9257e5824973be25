"""The fast path past Typer reads every command line it takes exactly as Typer would.

Typer stays the reference: for each command line the shortcut accepts, the
same line parsed by Typer must reach the same options (or the same error), and
the same request must go out. Lines outside the shortcut's grammar must be
left to Typer, so help, completion and usage errors come from one place.
"""

from __future__ import annotations

import json
from typing import Any

import click
import pytest
import typer

from qmpctl.cli import app, common, fastpath, root, run_cli
from qmpctl.errors import QmpctlError

TARGET_VARIABLES = ("QMPCTL_QMP", "QMPCTL_AGENT", "QMPCTL_TIMEOUT", "LIBVIRT_DEFAULT_URI", "_QMPCTL_COMPLETE")

TAKEN: list[tuple[list[str], dict[str, str]]] = [
    (["status", "-s", "/tmp/a.sock"], {}),
    (["status", "--qmp", "/tmp/a.sock", "--qmp=/tmp/b.sock", "-s/tmp/c.sock", "-s", "unix:/tmp/d,server=on"], {}),
    (["status", "-s", "/tmp/vm*/qmp.sock", "--timeout", "2.5", "-j", "4", "--pretty", "--return-value",
      "--dry-run"], {}),
    (["status", "--timeout=1e1", "--jobs=8", "-j3", "-s", "x", "--timeout", " 7 "], {}),
    (["stop", "-d", "dom1", "--domain", "dom2", "-c", "qemu:///session"], {}),
    (["cont", "-s", "tcp:127.0.0.1:4444", "--connect=qemu+ssh://h/system"], {}),
    (["status"], {"QMPCTL_QMP": "/tmp/a.sock  /tmp/b.sock\t/tmp/c.sock", "QMPCTL_TIMEOUT": "3"}),
    (["status", "-s", "/tmp/x.sock"], {"QMPCTL_QMP": "/tmp/ignored.sock", "QMPCTL_TIMEOUT": "0.5"}),
    (["status", "-d", "dom"], {"LIBVIRT_DEFAULT_URI": "qemu:///session"}),
    (["status", "--timeout", "0", "-s", "x"], {}),
    (["status", "--timeout", "nan", "-s", "x"], {}),
    (["status", "--jobs", "0", "-s", "x"], {}),
    (["status", "-s", "x"], {"QMPCTL_TIMEOUT": "inf"}),
    (["agent", "ping", "-a", "/tmp/qga.sock"], {}),
    (["agent", "info", "--agent=/tmp/qga.sock", "--pretty"], {"QMPCTL_QMP": "/tmp/not-for-agents.sock"}),
    (["agent", "interfaces"], {"QMPCTL_AGENT": "/tmp/one.sock /tmp/two.sock"}),
]

LEFT_TO_TYPER: list[tuple[list[str], dict[str, str]]] = [
    ([], {}),
    (["--version"], {}),
    (["--help"], {}),
    (["agent"], {}),
    (["status", "--help"], {}),
    (["status", "-h"], {}),
    (["agent", "ping", "--help"], {}),
    (["status", "-s"], {}),
    (["status", "-s", "--pretty"], {}),
    (["status", "-s", ""], {}),
    (["status", "--qmp="], {}),
    (["status", "extra", "-s", "x"], {}),
    (["status", "--", "-s", "x"], {}),
    (["status", "--bogus", "-s", "x"], {}),
    (["status", "--no-pretty", "-s", "x"], {}),
    (["status", "--pretty=yes", "-s", "x"], {}),
    (["status", "-p", "-s", "x"], {}),
    (["status", "--timeout", "soon", "-s", "x"], {}),
    (["status", "--timeout", "-1", "-s", "x"], {}),
    (["status", "-j", "four", "-s", "x"], {}),
    (["status", "--time", "5", "-s", "x"], {}),
    (["status", "-s", "x"], {"_QMPCTL_COMPLETE": "bash_complete"}),
    (["status"], {"QMPCTL_QMP": ""}),
    (["status"], {"QMPCTL_QMP": "   "}),
    (["status", "-s", "x"], {"QMPCTL_TIMEOUT": "soon"}),
    (["monitor-command", "-s", "x", "query-status"], {}),
    (["block", "-s", "x"], {}),
    (["agent", "command", "-a", "x", "guest-ping"], {}),
]


def set_environment(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in TARGET_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


class Captured(Exception):
    """Stops the Typer command once its options are read."""


def read_by_typer(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:
    """What the Typer command makes of ``argv``: the Common it would run with, or the usage error."""
    seen: list[tuple[str, Any]] = []
    real = common.make_common

    def record(kind: str, shared: dict[str, Any]) -> common.Common:
        try:
            seen.append(("ok", real(kind, shared)))
        except QmpctlError as exc:
            seen.append(("error", (type(exc), exc.message)))
        raise Captured

    monkeypatch.setattr(common, "make_common", record)
    with pytest.raises(Captured):
        typer.main.get_command(app).main(args=list(argv), prog_name="qmpctl", standalone_mode=False)
    return seen[0]


def read_by_fast_path(argv: list[str], env: dict[str, str]) -> tuple[str, Any]:
    invocation = fastpath.parse(argv, env)
    assert invocation is not None, f"the fast path should take {argv} with {env}"
    try:
        return "ok", common.make_common(invocation.kind, invocation.shared)
    except QmpctlError as exc:
        return "error", (type(exc), exc.message)


@pytest.mark.parametrize(("argv", "env"), TAKEN, ids=[" ".join(a) or "-" for a, _ in TAKEN])
def test_fast_path_reads_options_as_typer_does(argv, env, monkeypatch):
    set_environment(monkeypatch, env)
    assert read_by_fast_path(argv, env) == read_by_typer(argv, monkeypatch)


@pytest.mark.parametrize(("argv", "env"), LEFT_TO_TYPER, ids=[" ".join(a) or "-" for a, _ in LEFT_TO_TYPER])
def test_everything_else_is_left_to_typer(argv, env):
    assert fastpath.parse(argv, env) is None


def typer_command(words: tuple[str, ...]) -> click.Command:
    group = typer.main.get_command(app)
    for word in words:
        group = group.commands[word]  # type: ignore[attr-defined]
    return group


@pytest.mark.parametrize("words", list(fastpath.SIMPLE_COMMANDS), ids=" ".join)
def test_fast_commands_take_only_the_shared_options(words):
    """A command that grows its own option must leave the fast path, or the option would be ignored."""
    kind = fastpath.SIMPLE_COMMANDS[words].kind
    params = {param.name: param for param in typer_command(words).params}
    shared = {option.name: option for option in common.shared_options(kind)}
    assert set(params) == set(shared), "a fast-path command has options of its own: drop it from SIMPLE_COMMANDS"
    for name, option in shared.items():
        param = params[name]
        assert isinstance(param, click.Option)
        assert sorted(param.opts) == sorted(option.flags) and param.secondary_opts == []
        assert param.envvar == option.envvar
        assert param.multiple == (option.value == "list")
        assert param.is_flag == (option.value == "flag")


@pytest.mark.parametrize("words", list(fastpath.SIMPLE_COMMANDS), ids=" ".join)
def test_fast_path_sends_the_request_typer_would(words, capsys, monkeypatch):
    set_environment(monkeypatch, {})
    flag = "-a" if fastpath.SIMPLE_COMMANDS[words].kind == "qga" else "-s"
    argv = [*words, flag, "/tmp/nowhere.sock", "--dry-run"]
    assert fastpath.parse(argv, {}) is not None
    assert run_cli(argv) == 0
    fast = capsys.readouterr()
    assert run_cli(argv, fast_path=False) == 0
    slow = capsys.readouterr()
    assert fast.out == slow.out and json.loads(fast.out)["execute"] == fastpath.SIMPLE_COMMANDS[words].execute


@pytest.mark.qemu
@pytest.mark.one_qemu  # compares qmpctl's two parsers, not QEMUs
@pytest.mark.parametrize("extra", [[], ["--return-value"], ["--pretty"]])
def test_both_paths_print_the_same_for_a_real_vm(vm, extra, capsys, monkeypatch):
    set_environment(monkeypatch, {})
    argv = ["status", "-s", str(vm.qmp_path), *extra]
    assert run_cli(argv) == 0
    fast = capsys.readouterr()
    assert run_cli(argv, fast_path=False) == 0
    slow = capsys.readouterr()
    assert fast == slow and "prelaunch" in fast.out


@pytest.mark.qemu
@pytest.mark.one_qemu  # compares qmpctl's two parsers, not QEMUs
def test_both_paths_fail_alike(vm, tmp_path, capsys, monkeypatch):
    set_environment(monkeypatch, {})
    argv = ["status", "-s", str(vm.qmp_path), "-s", str(tmp_path / "gone.sock")]
    assert run_cli(argv) == 3
    fast = capsys.readouterr()
    assert run_cli(argv, fast_path=False) == 3
    slow = capsys.readouterr()
    assert fast == slow
    single = ["status", "-s", str(tmp_path / "gone.sock")]
    assert run_cli(single) == 3
    fast = capsys.readouterr()
    assert run_cli(single, fast_path=False) == 3
    assert capsys.readouterr() == fast and "no such socket" in fast.err


TYPER_LINES = [
    [], ["--version"], ["--help"], ["nope"], ["stat"], ["status", "--bogus"], ["status", "extra", "-s", "x"],
    ["status", "--timeout", "soon", "-s", "x"], ["monitor-command"], ["monitor-command", "-s", "/nowhere", "query-status"],
    ["monitor-command", "--help"], ["block", "-s", "/nowhere"], ["jobs", "-s", "/nowhere", "--dry-run"],
    ["agent"], ["agent", "--help"], ["agent", "pin"], ["agent", "exec"], ["agent", "exec", "-a", "/nowhere", "--", "true"],
    ["agent", "exec-status", "-a", "/nowhere", "x"], ["agent", "command", "-a", "/nowhere", "--dry-run", "guest-ping"],
]


@pytest.mark.parametrize("argv", TYPER_LINES, ids=[" ".join(a) or "-" for a in TYPER_LINES])
def test_typer_building_only_the_invoked_command_changes_nothing(argv, capsys, monkeypatch):
    set_environment(monkeypatch, {})
    pruned = run_cli(argv, fast_path=False), capsys.readouterr()
    monkeypatch.setattr(root, "command_tree_for", lambda args: root.app)
    whole = run_cli(argv, fast_path=False), capsys.readouterr()
    assert pruned == whole


def test_typer_builds_only_the_invoked_command():
    assert [info.name for info in root.command_tree_for(["status", "-s", "x"]).registered_commands] == ["status"]
    agent_only = root.command_tree_for(["agent", "exec", "--", "true"])
    assert agent_only.registered_commands == [] and len(agent_only.registered_groups) == 1
    assert [info.name for info in agent_only.registered_groups[0].typer_instance.registered_commands] == ["exec"]
    assert root.command_tree_for(["--help"]) is root.app and root.command_tree_for(["nope"]) is root.app
