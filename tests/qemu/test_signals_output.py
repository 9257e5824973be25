"""The outcome a script reads: a printed result stands, and an unwritable stdout is exit 74, not a bug."""

from __future__ import annotations

import subprocess
import sys

import pytest

# How qmpctl writes its result does not depend on the QEMU that gave it.
pytestmark = [pytest.mark.qemu, pytest.mark.one_qemu]

KILL_ON_WRITE = """
import os, signal, sys
class Stdout:
    # Writing the result is where a supervisor's TERM lands: deliver it right then.
    def __init__(self, real):
        self.real = real
    def write(self, text):
        os.kill(os.getpid(), signal.SIGTERM)
        return self.real.write(text)
    def flush(self):
        self.real.flush()
    def fileno(self):
        return self.real.fileno()
sys.stdout = Stdout(sys.stdout)
from qmpctl.cli import main
main(sys.argv[1:])
"""


def test_a_late_sigterm_after_the_result_does_not_change_the_exit_code(vm, cli):
    proc = subprocess.run([sys.executable, "-c", KILL_ON_WRITE, "status", "-s", str(vm.qmp_path)],
                          capture_output=True, text=True, env=cli.env(), timeout=30)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert '"status":"prelaunch"' in proc.stdout


def test_a_full_stdout_is_exit_74_saying_the_command_succeeded(vm, cli):
    with open("/dev/full", "w") as full:
        proc = subprocess.run(cli.argv("status", "-s", str(vm.qmp_path)), stdout=full, stderr=subprocess.PIPE,
                              text=True, env=cli.env(), timeout=30)
    assert proc.returncode == 74, proc.stderr
    assert proc.stderr.count("\n") == 1 and "succeeded" in proc.stderr and "No space left" in proc.stderr


def test_a_closed_stdout_is_exit_74(vm, cli):
    argv = " ".join(f"'{word}'" for word in cli.argv("cont", "-s", str(vm.qmp_path)))
    proc = subprocess.run(["bash", "-c", f"{argv} >&-"], capture_output=True, text=True, env=cli.env(), timeout=30)
    assert proc.returncode == 74, proc.stderr
    assert "succeeded" in proc.stderr and "standard output is closed" in proc.stderr
    with vm.check() as qmp:
        assert qmp.cmd("query-status")["status"] == "running"  # the work itself was done


def test_agent_exec_output_to_a_full_disk_is_exit_74(tmp_path, cli):
    from support.qga import HostAgent, have_qemu_ga

    if not have_qemu_ga():
        pytest.skip("qemu-ga is not installed (run tests/setup-host)")
    agent = HostAgent(tmp_path / "qga").start()
    try:
        with open("/dev/full", "w") as full:
            proc = subprocess.run(cli.argv("agent", "exec", "-a", str(agent.path), "--", "echo", "hi"), stdout=full,
                                  stderr=subprocess.PIPE, text=True, env=cli.env(), timeout=30)
    finally:
        agent.stop()
    assert proc.returncode == 74, proc.stderr
