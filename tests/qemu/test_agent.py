"""Guest-agent commands against the real qemu-ga (run on the host in unix-listen mode).

Tests that take an agent run once per qemu-ga build (``qemu_build``: the
system's 7.2 and the unpacked 10.0); those that test qmpctl's own side of a
call (sizes, usage, timing) are ``one_qemu``.

qemu-ga runs as the test user and guest-exec starts host programs, so only
harmless ones appear here. Results are checked against independent sources
(the host's own interfaces, /proc, qemu-ga --version), not against qmpctl.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import statistics
import time
from pathlib import Path

import pytest

from qmpctl.wire.request import Request
from support.qga import ChannelAgent, HostAgent, have_qemu_ga, qemu_ga_version
from support.waits import sleeping, wait_for, wait_for_child

pytestmark = [pytest.mark.agent, pytest.mark.skipif(not have_qemu_ga(), reason="qemu-ga is not installed")]

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def agent(tmp_path_factory, qemu_build):
    """One qemu-ga for the module: it serves one client at a time, and tests run one at a time."""
    host_agent = HostAgent(tmp_path_factory.mktemp("qga"), binary=qemu_build.qemu_ga).start()
    yield host_agent
    host_agent.stop()


@pytest.fixture
def own_agent(tmp_path, qemu_build):
    """A qemu-ga a test may restart or disturb without touching the others."""
    host_agent = HostAgent(tmp_path / "own", binary=qemu_build.qemu_ga).start()
    yield host_agent
    host_agent.stop()


def agent_cli(cli, agent, *args, **kwargs):
    return cli("agent", args[0], "-a", str(agent.path), *args[1:], **kwargs)


def exec_cli(cli, agent, *args, **kwargs):
    """``qmpctl agent exec -a SOCK ARGS...``; ARGS holds the options, then -- and the program."""
    return cli("agent", "exec", "-a", str(agent.path), *args, **kwargs)


# --- ping, info, interfaces, command ---

def test_ping(cli, agent):
    result = agent_cli(cli, agent, "ping")
    assert result.code == 0, result
    assert json.loads(result.out) == {"return": {}}
    assert result.out == '{"return":{}}\n'


def test_info_reports_the_installed_agent_version(cli, agent):
    result = agent_cli(cli, agent, "info", "--return-value")
    assert result.code == 0, result
    info = json.loads(result.out)
    assert info["version"] == qemu_ga_version(agent.binary)
    commands = {entry["name"]: entry["enabled"] for entry in info["supported_commands"]}
    assert commands["guest-exec"] is True and commands["guest-exec-status"] is True


def test_interfaces_match_the_hosts_own(cli, agent):
    result = agent_cli(cli, agent, "interfaces", "--pretty")
    assert result.code == 0, result
    assert result.out.startswith('{\n  "return": [')
    reported = {entry["name"]: entry for entry in json.loads(result.out)["return"]}
    assert set(reported) == {name for _, name in socket.if_nameindex()}
    loopback = [address["ip-address"] for address in reported["lo"]["ip-addresses"]]
    assert "127.0.0.1" in loopback


def test_command_passthrough_like_virsh(cli, agent):
    result = agent_cli(cli, agent, "command", '{"execute":"guest-get-host-name"}', "--return-value")
    assert result.code == 0, result
    assert json.loads(result.out) == {"host-name": socket.gethostname()}
    words = agent_cli(cli, agent, "command", "guest-exec-status", '"pid":', "1")
    assert words.code == 1, words
    # The agent's own reason, as it said it: 7.2 "Invalid parameter 'pid'", 10.0 "PID ld does not exist".
    assert words.err.startswith("qmpctl: GenericError: ") and "pid" in words.err.lower(), words


def test_a_command_the_agent_does_not_offer_is_exit_1_with_its_reason(cli, agent):
    """Debian's qemu-ga 7.2 reports guest-get-devices "disabled", 10.0 does not build it ("has not been found")."""
    result = agent_cli(cli, agent, "command", "guest-get-devices")
    assert result.code == 1, result
    assert result.err.startswith("qmpctl: CommandNotFound: ") and "guest-get-devices" in result.err, result


def test_an_earlier_client_that_left_half_a_request(cli, agent):
    agent.raw(b'{"execute": "guest-exec", "argu')
    result = agent_cli(cli, agent, "info", "--return-value")
    assert result.code == 0, result
    assert json.loads(result.out)["version"] == qemu_ga_version(agent.binary)


def test_qmpctl_leaves_no_unread_reply_behind(own_agent):
    """qemu-ga 7.2 in unix-listen mode exits when a client closes with a reply unread."""
    from qmpctl.wire.address import parse_address
    from qmpctl.wire.agent import AgentSession
    from qmpctl.deadline import Deadline

    session = AgentSession.connect(parse_address(str(own_agent.path)), Deadline(5))
    session.execute_no_reply(Request("guest-info", protocol="qga"), Deadline(5))  # its reply goes unread
    session.close()
    # qemu-ga serves one client at a time: an answer to the next one means it has dealt with the close.
    assert own_agent.raw(b'{"execute":"guest-ping"}\n', read=True) == b'{"return": {}}\n'
    assert own_agent.alive()


def test_agent_restarted_between_calls(cli, own_agent):
    first = agent_cli(cli, own_agent, "ping")
    assert first.code == 0, first
    own_agent.stop()
    down = agent_cli(cli, own_agent, "ping", "--timeout", "2")
    assert down.code == 3, down
    assert "refused" in down.err or "no such socket" in down.err
    own_agent.start()
    second = agent_cli(cli, own_agent, "ping")
    assert second.code == 0, second
    assert json.loads(second.out) == {"return": {}}


@pytest.fixture
def channel_agent(tmp_path, qemu_build):
    """The real qemu-ga behind a channel that keeps its output for the next client, as a guest's does."""
    host_agent = ChannelAgent(tmp_path / "channel", binary=qemu_build.qemu_ga).start()
    yield host_agent
    host_agent.close()


def test_stale_replies_of_several_earlier_clients_on_a_guest_like_channel(cli, channel_agent):
    channel_agent.raw(b'{"execute":"guest-info"}\n')
    channel_agent.raw(b'{"execute":"guest-exec-status","arguments":{"pid":1}}\n')
    channel_agent.raw(b'\xff{"execute":"guest-sync-delimited","arguments":{"id":4242}}\n')
    channel_agent.raw(b'{"execute":"guest-exec","arguments":{"path":"printf","arg":["stale"]}}\n')
    channel_agent.raw(b'{"execute": "guest-exec", "argu')  # a client cut off mid-request
    channel_agent.wait_until_idle()  # the agent answers them all into the channel, for nobody
    result = agent_cli(cli, channel_agent, "info", "--return-value", "--timeout", "5")
    assert result.code == 0, result
    assert json.loads(result.out)["version"] == qemu_ga_version(channel_agent.binary)
    executed = exec_cli(cli, channel_agent, "--timeout", "5", "--", "printf", "mine")
    assert (executed.code, executed.out_bytes) == (0, b"mine"), executed


def test_agent_restarted_behind_a_channel(cli, channel_agent):
    assert agent_cli(cli, channel_agent, "ping").code == 0
    channel_agent.stop()
    down = agent_cli(cli, channel_agent, "ping", "--timeout", "1")
    assert down.code == 4, down
    assert "guest agent is not responding" in down.err
    channel_agent.start()
    up = agent_cli(cli, channel_agent, "ping", "--timeout", "5")
    assert up.code == 0, up
    assert json.loads(up.out) == {"return": {}}


# --- exec: output, exit codes, stdin, env ---

def test_exec_passes_stdout_stderr_and_exit_code(cli, agent):
    result = exec_cli(cli, agent, "--", "sh", "-c", "printf 'out\\n'; printf 'err\\n' >&2; exit 3")
    assert result.code == 3, result
    assert result.out_bytes == b"out\n"
    assert result.err == "err\n"


def test_exec_success_is_exit_zero_with_nothing_printed(cli, agent):
    result = exec_cli(cli, agent, "--", "true")
    assert (result.code, result.out_bytes, result.err) == (0, b"", ""), result


@pytest.mark.one_qemu  # qmpctl's side of the call: the same on every qemu-ga
def test_exec_program_options_need_no_double_dash(cli, agent):
    result = exec_cli(cli, agent, "printf", "-%s-", "--json")
    assert result.code == 0, result
    assert result.out_bytes == b"---json-"


def test_exec_output_is_raw_bytes(cli, agent):
    result = exec_cli(cli, agent, "--", "printf", "\\000\\001\\377\\200\\r\\n")
    assert result.code == 0, result
    assert result.out_bytes == b"\x00\x01\xff\x80\r\n"


@pytest.mark.one_qemu  # qmpctl's side of the call: the same on every qemu-ga
def test_exec_stdin_round_trips_binary(cli, agent):
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    result = exec_cli(cli, agent, "--stdin", "--", "cat", input=data)
    assert result.code == 0, result
    assert result.out_bytes == data


@pytest.mark.one_qemu  # qmpctl's side of the call: the same on every qemu-ga
def test_exec_stdin_up_to_16_mib(cli, agent):
    data = os.urandom(16 * MIB)
    result = exec_cli(cli, agent, "--stdin", "--", "sha256sum", input=data, timeout=120)
    assert result.code == 0, result
    assert result.out.split()[0] == hashlib.sha256(data).hexdigest()
    over = exec_cli(cli, agent, "--stdin", "--", "wc", "-c", input=data + b"!")
    assert over.code == 125, over
    assert "over 16 MiB" in over.err


def test_exec_without_stdin_reads_empty_input(cli, agent):
    result = exec_cli(cli, agent, "--", "cat", input=b"not sent")
    assert (result.code, result.out_bytes) == (0, b""), result


@pytest.mark.one_qemu  # qmpctl's side of the call: the same on every qemu-ga
def test_exec_output_over_one_mib_on_both_streams(cli, agent):
    result = exec_cli(cli, agent, "--", "sh", "-c", "head -c 3000000 /dev/zero; head -c 1500000 /dev/zero >&2")
    assert result.code == 0, result
    assert result.out_bytes == b"\0" * 3000000
    assert len(result.err) == 1500000 and set(result.err) == {"\0"}


@pytest.mark.one_qemu  # qmpctl's side of the call: the same on every qemu-ga
def test_exec_truncated_output_is_reported(cli, agent):
    result = exec_cli(cli, agent, "--", "head", "-c", str(17 * MIB), "/dev/zero", timeout=120)
    assert result.code == 0, result
    assert len(result.out_bytes) == 16 * MIB
    assert "truncated the program's stdout at 16 MiB" in result.err


@pytest.mark.parametrize(("name", "number"), [("TERM", 15), ("KILL", 9)])
def test_exec_killed_by_signal_exits_128_plus_n(cli, agent, name, number):
    result = exec_cli(cli, agent, "--", "sh", "-c", f"printf before; kill -{name} $$")
    assert result.code == 128 + number, result
    assert result.out_bytes == b"before"


def test_exec_env_replaces_the_environment(cli, agent):
    result = exec_cli(cli, agent, "--env", "GREETING=hello world", "--env", "EMPTY=", "--", "sh", "-c", "env")
    assert result.code == 0, result
    lines = set(result.out.splitlines())
    assert {"GREETING=hello world", "EMPTY="} <= lines
    assert not any(line.startswith("PATH=") for line in lines)  # qemu-ga's own PATH is gone
    inherited = exec_cli(cli, agent, "--", "sh", "-c", "env")
    assert "PATH=/usr/sbin:/usr/bin:/sbin:/bin" in inherited.out.splitlines()


def test_exec_json_decodes_the_result(cli, agent):
    result = exec_cli(cli, agent, "--json", "--", "sh", "-c", "printf 'out\\377'; printf 'e' >&2; exit 7")
    assert result.code == 7, result
    decoded = json.loads(result.out)
    assert decoded == {"pid": decoded["pid"], "exited": True, "exitcode": 7, "signal": None,
                       "stdout": "out\ufffd", "stderr": "e", "out-truncated": False, "err-truncated": False}
    killed = exec_cli(cli, agent, "--json", "--", "sh", "-c", "kill -TERM $$")
    assert killed.code == 143 and json.loads(killed.out)["signal"] == 15, killed


@pytest.mark.one_qemu  # qmpctl's side of the call: the same on every qemu-ga
def test_short_exec_costs_about_one_round_trip(agent):
    """The poll starts within a millisecond, so `true` is back long before a slow poll's first tick."""
    from qmpctl.guest import exec as guest_exec
    from qmpctl.wire.address import parse_address
    from qmpctl.wire.agent import AgentSession
    from qmpctl.deadline import Deadline

    timings = []
    with AgentSession.connect(parse_address(str(agent.path)), Deadline(10)) as session:
        for _ in range(7):
            started = time.monotonic()
            pid = guest_exec.start(session, guest_exec.exec_request(["true"]), Deadline(10))
            status, _ = guest_exec.wait_for_exit(session, pid, reply_timeout=10)
            timings.append(time.monotonic() - started)
            assert status.exit_status == 0
    assert statistics.median(timings) < 0.025, timings


# --- exec: waiting, pids, exec-status ---

def test_exec_wait_timeout_exits_124_and_names_the_pid(cli, agent):
    result = exec_cli(cli, agent, "--wait-timeout", "0.3", "--", "sleep", "2")
    assert result.code == 124, result
    assert result.seconds < 2, result
    pid = int(result.err.split("exec-status ")[1].split("'")[0])
    assert f"pid {pid}" in result.err
    assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x002\x00"  # really still running
    later = agent_cli(cli, agent, "exec-status", str(pid), "--wait", "--json")
    assert later.code == 0, later
    assert json.loads(later.out)["exitcode"] == 0


def test_exec_wait_timeout_json_says_not_exited(cli, agent):
    result = exec_cli(cli, agent, "--json", "--wait-timeout", "0.2", "--", "sleep", "1")
    assert result.code == 124, result
    status = json.loads(result.out)
    assert status["exited"] is False and status["exitcode"] is None
    assert agent_cli(cli, agent, "exec-status", str(status["pid"]), "--wait").code == 0


def test_no_wait_then_exec_status(cli, agent, tmp_path):
    go = tmp_path / "go"  # the program runs until the test has seen it running, however slow the machine
    started = exec_cli(cli, agent, "--no-wait", "--", "sh", "-c",
                       f"until [ -e {go} ]; do sleep 0.01; done; printf done; printf e >&2; exit 4")
    assert started.code == 0, started
    pid = json.loads(started.out)["return"]["pid"]

    running = agent_cli(cli, agent, "exec-status", str(pid))
    assert running.code == 0, running
    assert json.loads(running.out) == {"return": {"exited": False}}
    go.touch()

    finished = agent_cli(cli, agent, "exec-status", str(pid), "--wait-timeout", "10", "--json")
    assert finished.code == 0, finished
    assert json.loads(finished.out) == {"pid": pid, "exited": True, "exitcode": 4, "signal": None,
                                        "stdout": "done", "stderr": "e", "out-truncated": False,
                                        "err-truncated": False}

    forgotten = agent_cli(cli, agent, "exec-status", str(pid))
    assert forgotten.code == 1, forgotten
    # qemu-ga 10.0 says "PID ld does not exist" (a format bug in the agent): qmpctl names the pid itself.
    assert f"pid {pid} is unknown" in forgotten.err and "already read" in forgotten.err, forgotten


def test_exec_status_raw_reply_keeps_base64(cli, agent):
    started = exec_cli(cli, agent, "--no-wait", "--return-value", "--", "printf", "hi")
    pid = json.loads(started.out)["pid"]
    result = agent_cli(cli, agent, "exec-status", str(pid), "--wait")
    assert result.code == 0, result
    assert json.loads(result.out)["return"]["out-data"] == "aGk="


@pytest.mark.one_qemu  # qmpctl's side of the call: the same on every qemu-ga
def test_ctrl_c_exits_130_and_names_the_running_pid(cli, agent):
    proc = cli.popen("agent", "exec", "-a", str(agent.path), "--", "sleep", "2")
    wait_for_child(agent.proc.pid, "sleep")
    wait_for(lambda: sleeping(proc.pid), "qmpctl pausing between guest-exec-status polls")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    pid = int(err.decode().split("as pid ")[1].split()[0])
    assert os.path.exists(f"/proc/{pid}")
    assert agent_cli(cli, agent, "exec-status", str(pid), "--wait").code == 0


# --- exec: qmpctl's own failures are 125 ---

def test_program_that_cannot_start_is_125(cli, agent):
    result = exec_cli(cli, agent, "--", "/nonexistent/program")
    assert result.code == 125, result
    assert "could not start '/nonexistent/program'" in result.err and "No such file" in result.err


def test_cannot_connect_is_125_for_exec_and_3_for_ping(cli, tmp_path):
    missing = str(tmp_path / "missing.sock")
    assert cli("agent", "ping", "-a", missing).code == 3
    result = cli("agent", "exec", "-a", missing, "--", "true")
    assert result.code == 125, result
    assert "no such socket" in result.err


@pytest.mark.one_qemu  # qmpctl's side of the call: the same on every qemu-ga
@pytest.mark.parametrize("args", [
    ["--bogus-option", "--", "true"],
    [],
    ["--env", "NO_EQUALS_SIGN", "--", "true"],
    ["--env", "=value", "--", "true"],
    ["--wait-timeout", "-1", "--", "true"],
    ["--wait-timeout", "soon", "--", "true"],
    ["--no-wait", "--wait-timeout", "1", "--", "true"],
    ["--timeout", "0", "--", "true"],
])
def test_usage_errors_in_exec_are_125_not_2(cli, agent, args):
    result = exec_cli(cli, agent, *args)
    assert result.code == 125, result
    assert result.err.strip()


@pytest.mark.one_qemu  # qmpctl's side of the call: the same on every qemu-ga
def test_exec_refuses_several_targets(cli, agent, own_agent):
    result = cli("agent", "exec", "-a", str(agent.path), "-a", str(own_agent.path), "--", "true")
    assert result.code == 125, result
    assert "2 targets" in result.err


@pytest.mark.one_qemu  # qmpctl's side of the call: the same on every qemu-ga
def test_exec_dry_run_prints_the_request(cli, agent):
    result = exec_cli(cli, agent, "--dry-run", "--stdin", "--env", "A=1", "--", "cat", "-", input=b"hi")
    assert result.code == 0, result
    assert json.loads(result.out) == {"execute": "guest-exec", "arguments": {
        "path": "cat", "arg": ["-"], "env": ["A=1"], "input-data": "aGk=", "capture-output": True}}


# --- a command disabled in the agent's configuration ---

@pytest.fixture(scope="module")
def blocked_agent(tmp_path_factory, qemu_build):
    host_agent = HostAgent(tmp_path_factory.mktemp("qga-blocked"), block=["guest-exec"],
                           binary=qemu_build.qemu_ga).start()
    yield host_agent
    host_agent.stop()


def test_disabled_guest_exec_says_so(cli, blocked_agent):
    result = exec_cli(cli, blocked_agent, "--", "true")
    assert result.code == 125, result
    assert "guest-exec is disabled in the guest agent's configuration" in result.err
    raw = agent_cli(cli, blocked_agent, "command", "guest-exec", '"path": "true"')
    assert raw.code == 1, raw
    assert "guest-exec is disabled in the guest agent's configuration" in raw.err
    info = json.loads(agent_cli(cli, blocked_agent, "info", "--return-value").out)
    assert {entry["name"]: entry["enabled"] for entry in info["supported_commands"]}["guest-exec"] is False
