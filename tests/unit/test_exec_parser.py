"""``agent exec`` is read by the start-up parser past Typer, exactly as Typer would read it.

The shortcut is what lets ``agent exec -- true`` cost about what ``agent ping``
costs. Typer stays the reference: the same line must reach the same options,
the same shared options and the same errors (exit 125) by both paths.
"""

from __future__ import annotations

import pytest

from qmpctl.cli import exec_run, parse, run_cli

VARIABLES = ("QMPCTL_AGENT", "QMPCTL_TIMEOUT", "LIBVIRT_DEFAULT_URI", "_QMPCTL_COMPLETE")

TAKEN: list[tuple[list[str], dict[str, str]]] = [
    (["-a", "/tmp/q.sock", "--", "true"], {}),
    (["-a", "/tmp/q.sock", "true"], {}),
    (["-a", "/tmp/q.sock", "ls", "-l", "--json", "--", "-a"], {}),  # after the program, all is the program's
    (["-a", "/tmp/q.sock", "--", "--json"], {}),
    (["-a", "/tmp/q.sock", "-"], {}),
    (["--agent=/tmp/q.sock", "--stdin", "--env", "A=1", "--env=B=two words", "--json", "--pretty", "--", "cat"],
     {}),
    (["-a/tmp/q.sock", "--wait-timeout", "2.5", "--timeout", "3", "-j", "2", "--", "sleep", "1"], {}),
    (["--no-wait", "--return-value", "--dry-run", "sh", "-c", "exit 3"], {"QMPCTL_AGENT": "/tmp/q.sock"}),
    (["-d", "dom", "-c", "qemu:///session", "--", "uname", "-a"], {}),
    (["--", "true"], {"QMPCTL_AGENT": "/tmp/a.sock /tmp/b.sock", "QMPCTL_TIMEOUT": "4"}),
    # mistakes the shortcut sees only after parsing: 125 by both paths
    (["-a", "x", "--timeout", "0", "--", "true"], {}),
    (["-a", "x", "--wait-timeout", "0", "--", "true"], {}),
    (["-a", "x", "--env", "NO_EQUALS", "--", "true"], {}),
    (["-a", "x", "--no-wait", "--wait-timeout", "1", "--", "true"], {}),
    (["--", "true"], {}),  # no target
]

LEFT_TO_TYPER: list[list[str]] = [
    [], ["--help"], ["-h"], ["-a", "x"], ["-a", "x", "--"], ["--bogus", "--", "true"], ["--stdin=yes", "true"],
    ["--env", "--", "true"], ["--env", "-x=1", "true"], ["--wait-timeout", "-1", "true"],
    ["--wait-timeout", "soon", "true"],
    ["--timeout", "soon", "true"], ["-a"],
]


@pytest.fixture
def clean_environment(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def outcome(argv: list[str], env: dict[str, str], fast_path: bool, monkeypatch, capsys) -> tuple:
    """What a path makes of ``agent exec ARGV``: the options and shared options reached, or the exit and message."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    seen: list[tuple] = []

    def record(options, common):
        seen.append((options, common))
        return 0

    monkeypatch.setattr(exec_run, "execute_exec", record)
    code = run_cli(["agent", "exec", *argv], fast_path=fast_path)
    return code, seen, capsys.readouterr().err


@pytest.mark.parametrize(("argv", "env"), TAKEN, ids=[" ".join(a) for a, _ in TAKEN])
def test_shortcut_reads_exec_lines_as_typer_does(argv, env, clean_environment, capsys):
    assert parse.parse(["agent", "exec", *argv], env) is not None
    fast = outcome(argv, env, True, clean_environment, capsys)
    slow = outcome(argv, env, False, clean_environment, capsys)
    assert fast == slow
    if fast[1]:
        assert fast[1][0][0].program == slow[1][0][0].program


def test_mistakes_found_after_parsing_are_125_by_both_paths(clean_environment, capsys):
    for argv in (["-a", "x", "--timeout", "0", "--", "true"], ["-a", "x", "--env", "NOPE", "--", "true"]):
        fast = run_cli(["agent", "exec", *argv])
        fast_err = capsys.readouterr().err
        slow = run_cli(["agent", "exec", *argv], fast_path=False)
        assert (fast, fast_err) == (slow, capsys.readouterr().err) and fast == 125


@pytest.mark.parametrize("argv", LEFT_TO_TYPER, ids=[" ".join(a) or "-" for a in LEFT_TO_TYPER])
def test_everything_else_is_left_to_typer(argv):
    assert parse.parse(["agent", "exec", *argv], {}) is None


@pytest.mark.parametrize("argv", [a for a in LEFT_TO_TYPER if a and a[0] not in ("--help", "-h")],
                         ids=lambda a: " ".join(a))
def test_typer_usage_errors_in_exec_are_125(argv, clean_environment, capsys):
    assert run_cli(["agent", "exec", *argv]) == 125
    assert capsys.readouterr().err.strip()


def test_dry_run_prints_the_same_by_both_paths(clean_environment, capsys):
    argv = ["agent", "exec", "-a", "/nowhere.sock", "--dry-run", "--env", "A=1", "--", "printf", "%s", "x"]
    assert run_cli(argv) == 0
    fast = capsys.readouterr()
    assert run_cli(argv, fast_path=False) == 0
    assert capsys.readouterr() == fast
    assert '"path":"printf"' in fast.out


def test_exec_takes_the_shortcut_without_importing_typer(cli, tmp_path):
    """Measured in a fresh process: the shortcut is only worth it if Typer and click stay unloaded."""
    probe = ("import sys; from qmpctl.cli import run_cli; "
             "code = run_cli(['agent', 'exec', '-a', '/nowhere.sock', '--dry-run', '--', 'true']); "
             "print(code, sorted(m for m in ('typer', 'click', 'base64') if m in sys.modules))")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=cli.env(),
                         check=True).stdout
    assert out.split("\n")[-2] == "0 ['base64']"
