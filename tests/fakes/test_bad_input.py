"""The bad-input table: every mistake is exit 2 with a message naming it, and nothing reaches the socket.

Most rows run the CLI in-process (``run_cli``), so the table can be wide and
still fast; rows that need real argv bytes (non-UTF-8, megabyte arguments)
run ``python -m qmpctl`` as a child process. Every row points the targets at a
listening fake server and then asserts it saw no connection and no byte.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Iterator

import pytest

from qmpctl.cli import run_cli
from qmpctl.cli.spec import COMMANDS, Command, all_options
from support.fakes import FakeServer, Tripwire

pytestmark = pytest.mark.fault

USAGE = 2
EXEC_USAGE = 125
"""``agent exec`` reports its own usage errors as 125: its exit status is the guest program's."""


@pytest.fixture
def server(tmp_path, monkeypatch) -> Iterator[Tripwire]:
    """A listening socket every command is pointed at (through the environment): it must stay untouched."""
    with Tripwire(tmp_path / "target.sock") as tripwire:
        for name in ("QMPCTL_QMP", "QMPCTL_AGENT"):
            monkeypatch.setenv(name, str(tripwire.path))
        for name in ("QMPCTL_TIMEOUT", "LIBVIRT_DEFAULT_URI"):
            monkeypatch.delenv(name, raising=False)
        yield tripwire
        assert tripwire.touched() == (0, b""), "qmpctl connected or sent although the input was invalid"


def qmpctl(capsys, *argv: str, fast_path: bool = True) -> tuple[int, str]:
    """Run one command line in this process; returns (exit code, stderr).

    ``fast_path=False`` forces the full Typer parser for commands the
    start-up fast path would otherwise handle, so both are held to the table.
    """
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code = run_cli(list(argv), fast_path=fast_path)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return code, capsys.readouterr().err


def usage_exit(path: tuple[str, ...]) -> int:
    return EXEC_USAGE if path == ("agent", "exec") else USAGE


# --- every typed option of every command -------------------------------------

def commands() -> list[tuple[tuple[str, ...], Command]]:
    return [(command.words, command) for command in COMMANDS]


def typed_parameters() -> list[tuple[tuple[str, ...], list[str], str, str]]:
    """(command path, bad words, expected phrase, parameter name) for each int, float, choice or flag parameter."""
    rows = []
    for path, command in commands():
        for option in all_options(command):
            if option.type in ("flag", "switch"):
                rows.append((path, [f"{option.flags[-1]}=maybe"], "does not take a value", option.flags[-1]))
            elif option.type in ("int", "float", "choice"):
                rows.append((path, [option.flags[0], "abc"], "Invalid value", option.flags[0]))
        if command.arguments and command.arguments[0].type in ("int", "float"):
            rows.append((path, ["abc"], "Invalid value", command.arguments[0].metavar))
    return rows


def required_values(command: Command, tmp_path: Path) -> list[str]:
    """Well-typed values for the required arguments, so parsing reaches the check under test."""
    return ["1" if argument.type in ("int", "float") else "x" for argument in command.arguments if argument.required]


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "typer"])
@pytest.mark.parametrize("path, words, phrase, name", typed_parameters(),
                         ids=lambda value: " ".join(value) if isinstance(value, (tuple, list)) else "")
def test_wrong_type_in_a_typed_parameter(capsys, server, path, words, phrase, name, fast_path):
    code, err = qmpctl(capsys, *path, *words, fast_path=fast_path)
    assert code == usage_exit(path), err
    assert phrase in err and name in err


SHARED_BAD_VALUES = [
    ("--timeout", "0", "--timeout must be more than 0"),
    ("--timeout", "-1", "--timeout must be more than 0"),
    ("--timeout", "nan", "--timeout must be more than 0"),
    ("--timeout", "inf", "at most 31536000 seconds"),
    ("--timeout", "1e12", "at most 31536000 seconds"),
    ("--timeout", "", "Invalid value for '--timeout'"),
    ("--jobs", "0", "--jobs must be at least 1"),
    ("--jobs", "-4", "--jobs must be at least 1"),
    ("--jobs", "1.5", "Invalid value for '--jobs'"),
]


@pytest.mark.parametrize("path", [path for path, command in commands()
                                  if any("--timeout" in o.flags for o in all_options(command))], ids=" ".join)
@pytest.mark.parametrize("option, value, phrase", SHARED_BAD_VALUES)
@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "typer"])
def test_out_of_range_shared_option(capsys, server, tmp_path, path, option, value, phrase, fast_path):
    command = dict(commands())[path]
    code, err = qmpctl(capsys, *path, option, value, *required_values(command, tmp_path), fast_path=fast_path)
    assert code == usage_exit(path), err
    assert phrase in err


def test_bad_timeout_from_the_environment(capsys, server, monkeypatch):
    monkeypatch.setenv("QMPCTL_TIMEOUT", "soon")
    code, err = qmpctl(capsys, "status")
    assert code == USAGE
    assert "QMPCTL_TIMEOUT" in err and "Invalid value for '--timeout'" in err


# --- raw requests (monitor-command, agent command) ------------------------------

RAW_COMMANDS = [("monitor-command",), ("agent", "command")]

BAD_REQUESTS = [
    (['{"execute": "stop"'], "the request is not valid JSON"),
    (["{'execute': 'stop'}"], "the request is not valid JSON"),
    (['{"execute": "stop"} trailing'], "the request is not valid JSON"),
    (['[{"execute": "stop"}]'], "not a JSON array"),
    (['"stop"'], "not a JSON string"),
    (['{"execute": "stop", "bogus": 1}'], "bogus: unknown field"),
    (['{"execute": "stop", "arguments": [1]}'], "arguments: expected object"),
    (['{"execute": "stop", "arguments": null}'], "arguments: expected object"),
    (['{"execute": 5}'], "execute: expected string"),
    (['{"arguments": {}}'], "execute: is required"),
    (['{"execute": ""}'], "does not match"),
    (['{"execute": "stop\\n"}'], "does not match"),
    (['{"execute": "x" }', "extra"], "not valid JSON"),
    (["1abc"], "does not match"),
    (["query;reboot"], "does not match"),
    (["a" * 300], "must not be longer than 256 characters"),
    (["query-block", '"flat": tru'], "the arguments of query-block is not valid JSON"),
    (["query-block", '"flat": true,'], "the arguments of query-block is not valid JSON"),
    (["query-block", "flat"], "the arguments of query-block is not valid JSON"),
    (["query-block", '"x": NaN'], "NaN is not JSON"),
    (["query-block", '"x": -Infinity'], "-Infinity is not JSON"),
    (["query-block", '"x": 1e999'], "1e999 is too large for a JSON number"),
    (["query-block", '"x": "\\ud800"'], "lone surrogate '\\ud800'"),
    (["query-block", '"x": ' + "[" * 5000 + "]" * 5000], "nested too deeply"),
    (["  "], "no command given"),
]


@pytest.mark.parametrize("path", RAW_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("words, phrase", BAD_REQUESTS, ids=lambda v: repr(v)[:40] if isinstance(v, list) else v)
def test_bad_raw_request_sends_nothing(capsys, server, path, words, phrase):
    code, err = qmpctl(capsys, *path, *words)
    assert code == USAGE, err
    assert phrase in err
    assert "Traceback" not in err


@pytest.mark.parametrize("path", RAW_COMMANDS, ids=" ".join)
def test_dry_run_validates_first(capsys, server, path):
    code, err = qmpctl(capsys, *path, "--dry-run", '{"execute": "stop", "bogus": 1}')
    assert code == USAGE and "bogus: unknown field" in err


def test_hmp_command_line_over_the_schema_limit(capsys, server):
    """A 1 MiB HMP line: the schema caps command-line at 64 KiB, so it is refused before connecting."""
    code, err = qmpctl(capsys, "monitor-command", "--hmp", "x" * (1024 * 1024))
    assert code == USAGE
    assert "arguments.command-line: must not be longer than 65536 characters" in err


def test_empty_hmp_command_line(capsys, server):
    code, err = qmpctl(capsys, "monitor-command", "--hmp", "")
    assert code == USAGE
    assert "command-line: must not be shorter than 1" in err


# --- targets and command lines ------------------------------------------------------

@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "typer"])
@pytest.mark.parametrize("address, phrase", [
    ("", "empty address"),
    ("unix:", "unix: needs a path"),
    ("tcp:localhost", "expected HOST:PORT"),
    ("tcp:localhost:0", "invalid port '0'"),
    ("tcp:localhost:65536", "invalid port '65536'"),
    ("tcp:localhost:²", "invalid port '²'"),
    ("localhost:qmp", "invalid port 'qmp'"),
    ("[::1]4444", "expected [IPV6]:PORT"),
    ("[]:4444", "expected [IPV6]:PORT"),
    (",server=on", "no path before the options"),
    ("/tmp/a\0b.sock", "contains a NUL byte"),
])
def test_bad_address(capsys, server, address, phrase, fast_path):
    code, err = qmpctl(capsys, "status", "-s", address, fast_path=fast_path)
    assert code == USAGE, err
    assert phrase in err


@pytest.mark.parametrize("argv, phrase", [
    (["no-such-command"], "No such command"),
    (["status", "--no-such-option"], "No such option"),
    (["status", "extra"], "Got unexpected extra argument"),
    (["monitor-command"], "Missing argument"),
    (["agent", "command"], "Missing argument"),
    (["status", "--timeout"], "requires an argument"),
])
def test_malformed_command_line(capsys, server, argv, phrase):
    code, err = qmpctl(capsys, *argv)
    assert code == USAGE, err
    assert phrase in err


def test_no_target_at_all(capsys, monkeypatch):
    monkeypatch.delenv("QMPCTL_QMP", raising=False)
    code, err = qmpctl(capsys, "stop")
    assert code == USAGE
    assert "no target" in err


# --- real argv bytes: run as a child process --------------------------------------------

@pytest.mark.parametrize("words, phrase", [
    ([b"\xff\xfe"], "does not match"),
    ([b"query-block", b'"x": "caf\xe9"'], "not valid UTF-8 (bytes b'\\xe9')"),
    ([b'{"execute": "qom-get", "arguments": {"path": "\xc3\x28"}}'], "not valid UTF-8"),
])
def test_non_utf8_bytes_in_a_raw_request(cli, tmp_path, words, phrase):
    with FakeServer(tmp_path / "m.sock", lambda peer: peer.handshake()) as fake:
        result = cli(b"monitor-command", b"-s", str(fake.path).encode(), *words)
        assert fake.connections == 0 and fake.received == b""
    assert result.code == USAGE, result
    assert phrase in result.err


def test_non_utf8_bytes_in_an_hmp_line_and_an_agent_command(cli, tmp_path):
    with FakeServer(tmp_path / "m.sock", lambda peer: peer.handshake()) as fake:
        hmp = cli(b"monitor-command", b"-s", str(fake.path).encode(), b"--hmp", b"info \xff")
        agent = cli(b"agent", b"command", b"-a", str(fake.path).encode(), b"guest-ping", b'"x": "\x80"')
        assert fake.connections == 0 and fake.received == b""
    assert hmp.code == USAGE and "not valid UTF-8 (bytes b'\\xff')" in hmp.err, hmp
    assert agent.code == USAGE and "not valid UTF-8 (bytes b'\\x80')" in agent.err, agent


def test_non_utf8_socket_path_is_a_valid_path(cli, tmp_path):
    """Unix paths are bytes: a socket whose name is not UTF-8 is reached, not refused."""
    from support.fakes import Peer

    def script(peer: Peer) -> None:
        peer.handshake()
        peer.reply(peer.read_request(), {"status": "running", "running": True})

    path = tmp_path / "vm-\udcff.sock"  # str for b"vm-\xff.sock", as Python maps undecodable bytes
    with FakeServer(path, script):
        result = cli(b"status", b"-s", bytes(tmp_path) + b"/vm-\xff.sock", b"--return-value")
    assert result.code == 0, result
    assert '"running":true' in result.out


def test_megabyte_hmp_line_in_many_words(cli, tmp_path):
    """The realistic form of a huge argument: many argv words (one word is capped at 128 KiB by Linux)."""
    words = [b"x" * 65536] * 16
    with FakeServer(tmp_path / "m.sock", lambda peer: peer.handshake()) as fake:
        result = cli(b"monitor-command", b"-s", str(fake.path).encode(), b"--hmp", *words)
        assert fake.connections == 0 and fake.received == b""
    assert result.code == USAGE, result
    assert "must not be longer than 65536 characters" in result.err
    assert result.seconds < 5


def test_the_tripwire_notices_a_client(capsys, tmp_path, monkeypatch):
    """The table's 'nothing sent' check can fail: a valid agent call against it is seen."""
    monkeypatch.delenv("QMPCTL_TIMEOUT", raising=False)
    with Tripwire(tmp_path / "target.sock") as tripwire:
        code, err = qmpctl(capsys, "agent", "ping", "-a", str(tripwire.path), "--timeout", "0.3")
        connections, received = tripwire.touched()
    assert code == 4, err
    assert connections == 1 and received.startswith(b"\xff{")


# --- block commands: what qmpctl can tell from the files alone ---------------------------------

def block_case(tmp_path: Path, name: str) -> tuple[list[str], str]:
    """Build the files one bad block command line needs; returns (argv, expected phrase)."""
    existing = tmp_path / "yesterday.qcow2"
    existing.write_bytes(b"yesterday's backup")
    vmdk = tmp_path / "disk.vmdk"
    vmdk.write_bytes(b"KDMV" + bytes(1020))
    raw = tmp_path / "plain.img"
    raw.write_bytes(bytes(4096))
    forged = tmp_path / "guest-written.img"  # a qcow2 v3 header a guest wrote, naming a host file as backing
    backing = b"/etc/hostname"
    forged.write_bytes((b"QFI\xfb" + (3).to_bytes(4, "big") + (512).to_bytes(8, "big") + len(backing).to_bytes(4, "big")
                        ).ljust(100, b"\0") + (104).to_bytes(4, "big") + bytes(8)
                       + bytes(400) + backing + bytes(4096))
    cases = {
        "backup into a missing directory": (["backup", "vd0", str(tmp_path / "no" / "dir" / "b.qcow2")],
                                            "does not exist"),
        "backup onto an existing file": (["backup", "vd0", str(existing)], "pass --force"),
        "backup onto a directory": (["backup", "vd0", str(tmp_path)], "is a directory"),
        "backup at zero speed": (["backup", "vd0", str(tmp_path / "b.qcow2"), "--speed", "0"], "--speed"),
        "backup with a bad speed": (["backup", "vd0", str(tmp_path / "b.qcow2"), "--speed", "fast"], "--speed"),
        "backup with a bad job id": (["backup", "vd0", str(tmp_path / "b.qcow2"), "--job-id", "a b"], "--job-id"),
        "hotplug a missing file": (["hotplug-disk", str(tmp_path / "absent.qcow2")], "no such image file"),
        "hotplug a directory": (["hotplug-disk", str(tmp_path)], "not an image file"),
        "hotplug another format": (["hotplug-disk", str(vmdk)], "looks like a vmdk image"),
        "hotplug raw bytes as qcow2": (["hotplug-disk", str(raw), "--format", "qcow2"], "not a qcow2 image"),
        "hotplug with a bad id": (["hotplug-disk", str(raw), "--id", "9lives"], "--id '9lives'"),
        "unplug a bad id": (["unplug-disk", "bad id"], "does not match"),
        "hotplug a probed qcow2 naming a backing file": (["hotplug-disk", str(forged)],
                                                         "backing file '/etc/hostname'"),
        "jobs with --dismiss and --cancel": (["jobs", "--dismiss", "a", "--cancel", "b"], "contradict"),
        "unplug an id ending in a newline": (["unplug-disk", "vd0\n"], "does not match"),
        "backup with a job id ending in a newline": (["backup", "vd0", str(tmp_path / "b.qcow2"), "--job-id",
                                                      "b\n"], "--job-id"),
        "dismiss a job id ending in a newline": (["jobs", "--dismiss", "backup\n"], "does not match"),
        "cancel a job id ending in a newline": (["jobs", "--cancel", "backup\n"], "does not match"),
    }
    return cases[name]


BLOCK_CASES = ["backup into a missing directory", "backup onto an existing file", "backup onto a directory",
               "backup at zero speed", "backup with a bad speed", "backup with a bad job id",
               "hotplug a missing file", "hotplug a directory", "hotplug another format",
               "hotplug raw bytes as qcow2", "hotplug with a bad id", "unplug a bad id",
               "hotplug a probed qcow2 naming a backing file", "jobs with --dismiss and --cancel",
               "unplug an id ending in a newline", "backup with a job id ending in a newline",
               "dismiss a job id ending in a newline", "cancel a job id ending in a newline"]


@pytest.mark.parametrize("case", BLOCK_CASES)
def test_bad_block_input_sends_nothing(capsys, server, tmp_path, case):
    argv, phrase = block_case(tmp_path, case)
    before = {path: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    code, err = qmpctl(capsys, *argv)
    assert code == USAGE, err
    assert phrase in err
    assert {path: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == before
