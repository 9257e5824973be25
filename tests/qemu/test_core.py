"""The core against a real QEMU: targets, status/stop/cont, monitor-command, output, exit codes."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from support.qemu import RawQmp
from support.waits import wait_until_blocked_on_a_socket

pytestmark = pytest.mark.qemu


def running(vm) -> bool:
    with vm.check() as qmp:
        return qmp.cmd("query-status")["running"]


def test_status_over_unix_socket(cli, vm):
    result = cli("status", "-s", str(vm.qmp_path))
    assert result.code == 0, result
    reply = json.loads(result.out)
    assert reply["return"]["status"] == "prelaunch"
    assert "id" not in reply
    assert result.out.count("\n") == 1 and ": " not in result.out  # compact, one line, like virsh


@pytest.mark.parametrize("form", ["unix:{path}", "unix:{path},server=on,wait=off", "{path},server,nowait"])
def test_pasted_qemu_qmp_values_are_accepted(cli, vm, form):
    result = cli("status", "-s", form.format(path=vm.qmp_path))
    assert result.code == 0, result


@pytest.mark.parametrize("form", ["{tcp}", "{tcp},server=on,wait=off", "127.0.0.1:{port}"])
def test_status_over_tcp(cli, vm, form):
    result = cli("status", "-s", form.format(tcp=vm.tcp_address, port=vm.tcp_port))
    assert result.code == 0, result
    assert json.loads(result.out)["return"]["running"] is False


def test_target_from_environment(cli, vm):
    result = cli("status", "--return-value", env={"QMPCTL_QMP": str(vm.qmp_path)})
    assert result.code == 0, result
    assert json.loads(result.out)["status"] == "prelaunch"


def test_stop_and_cont_change_the_run_state(cli, vm):
    with vm.check() as qmp:
        qmp.cmd("cont")
    assert running(vm)
    stopped = cli("stop", "-s", str(vm.qmp_path))
    assert stopped.code == 0 and json.loads(stopped.out) == {"return": {}}, stopped
    assert not running(vm)
    resumed = cli("cont", "-s", str(vm.qmp_path))
    assert resumed.code == 0, resumed
    assert running(vm)


def test_monitor_command_json_pretty_indents_by_two(cli, vm):
    result = cli("monitor-command", "-s", str(vm.qmp_path), '{"execute":"query-block"}', "--pretty")
    assert result.code == 0, result
    reply = json.loads(result.out)
    assert reply["return"][0]["inserted"]["node-name"] == "disk0"
    assert result.out.startswith('{\n  "return": [\n    {')


def test_monitor_command_words_like_virsh(cli, vm):
    result = cli("monitor-command", "-s", str(vm.qmp_path), "query-named-block-nodes", '"flat":', "true",
                 "--return-value")
    assert result.code == 0, result
    assert any(node["node-name"] == "disk0" for node in json.loads(result.out))


def test_monitor_command_hmp_prints_text(cli, vm):
    result = cli("monitor-command", "-s", str(vm.qmp_path), "--hmp", "info block")
    assert result.code == 0, result
    assert result.out.startswith("disk0: ")
    assert "\r" not in result.out


def test_large_reply_is_read_whole(cli, vm):
    result = cli("monitor-command", "-s", str(vm.qmp_path), "query-qmp-schema", "--return-value")
    assert result.code == 0, result
    assert len(result.out) > 100_000
    assert any(entry.get("name") == "query-status" for entry in json.loads(result.out))


def test_vm_error_is_exit_1_with_class_and_description(cli, vm):
    result = cli("monitor-command", "-s", str(vm.qmp_path), "no-such-command")
    assert result.code == 1, result
    assert "CommandNotFound" in result.err and "no-such-command" in result.err
    assert result.out == ""


def test_dry_run_connects_to_nothing(cli, tmp_path):
    result = cli("stop", "-s", str(tmp_path / "absent.sock"), "--dry-run")
    assert result.code == 0, result
    assert json.loads(result.out) == {"execute": "stop"}


def test_no_target_is_usage_error_that_says_how(cli):
    result = cli("status")
    assert result.code == 2, result
    assert "-s PATH" in result.err and "QMPCTL_QMP" in result.err


def test_missing_socket_is_exit_3_naming_it(cli, tmp_path):
    path = tmp_path / "nothing.sock"
    result = cli("status", "-s", str(path))
    assert result.code == 3, result
    assert str(path) in result.err


def test_refused_tcp_is_exit_3(cli):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = cli("status", "-s", f"127.0.0.1:{port}")
    assert result.code == 3, result
    assert f"127.0.0.1:{port}" in result.err


def test_busy_monitor_times_out_with_exit_4(cli, vm):
    with RawQmp(vm.qmp_path):
        result = cli("status", "-s", str(vm.qmp_path), "--timeout", "1")
    assert result.code == 4, result
    assert "busy" in result.err
    assert result.seconds < 5


@pytest.mark.one_qemu  # refused before anything is sent
@pytest.mark.parametrize("value", ["0", "-1"])
def test_non_positive_timeout_is_usage_error(cli, vm, value):
    result = cli("status", "-s", str(vm.qmp_path), "--timeout", value)
    assert result.code == 2, result
    assert "--timeout" in result.err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_wait_is_exit_130(cli, vm, sig):
    with RawQmp(vm.qmp_path):
        proc = cli.popen("status", "-s", str(vm.qmp_path), "--timeout", "60")
        wait_until_blocked_on_a_socket(proc.pid)  # waiting for the greeting of a monitor someone else holds
        started = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    assert b"interrupted" in err
    assert time.monotonic() - started < 5


def test_version(cli):
    from qmpctl import __version__

    result = cli("--version")
    assert result.code == 0 and result.out.strip() == f"qmpctl {__version__}"


@pytest.mark.one_qemu  # about the installed wheel, not the QEMU
def test_installed_console_script_finds_its_schemas(tmp_path, vm):
    """A non-editable install must carry schemas/ inside the wheel."""
    script = Path(sys.executable).parent / "qmpctl"
    if not script.exists():
        pytest.skip("qmpctl is not installed next to this Python (run tests/setup-host)")
    import subprocess

    proc = subprocess.run([str(script), "status", "-s", str(vm.qmp_path)], capture_output=True, cwd=tmp_path,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, timeout=30)
    assert proc.returncode == 0, proc.stderr
    installed = subprocess.run([str(script.parent / "python"), "-c",
                                "import qmpctl.wire.schema as s; print(s.schema_dir())"],
                               capture_output=True, text=True, cwd=tmp_path, timeout=30,
                               env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert "site-packages" in installed.stdout, installed


def test_fleet_prints_one_line_per_target_and_the_worst_exit(cli, vm_factory, tmp_path):
    first, second = vm_factory(), vm_factory()
    missing = tmp_path / "gone.sock"
    result = cli("status", "-s", str(first.qmp_path), "-s", str(second.qmp_path), "-s", str(missing))
    assert result.code == 3, result
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert [line["target"] for line in lines] == [f"unix:{first.qmp_path}", f"unix:{second.qmp_path}",
                                                  f"unix:{missing}"]
    assert lines[0]["return"]["status"] == "prelaunch" and lines[1]["return"]["status"] == "prelaunch"
    assert lines[2]["exit"] == 3 and "no such socket" in lines[2]["error"]["desc"]


def test_fleet_glob_expands_to_every_socket(cli, vm_factory, tmp_path):
    vms = [vm_factory() for _ in range(3)]
    result = cli("status", "-s", str(tmp_path / "vm*" / "qmp.sock"), "--return-value")
    assert result.code == 0, result
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert sorted(line["target"] for line in lines) == sorted(f"unix:{vm.qmp_path}" for vm in vms)
