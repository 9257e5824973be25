"""A second signal while qmpctl cleans up must not cut the cleanup short.

A user pressing Ctrl-C twice, or a supervisor sending SIGTERM twice, sends the
second signal while the first one's cleanup (cancel the job, wait for it to
conclude, dismiss it, remove the partial target) is still running. Against a
real QEMU: whatever the gap, exit 130, no job left, no partial target.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from support.disks import block_state, wait_for_job

REPO = Path(__file__).resolve().parents[2]

PAIRS = {
    "two SIGINTs 2 ms apart": (signal.SIGINT, signal.SIGINT, 0.002),
    "two SIGINTs 10 ms apart": (signal.SIGINT, signal.SIGINT, 0.010),
    "two SIGTERMs 5 ms apart": (signal.SIGTERM, signal.SIGTERM, 0.005),
    "two SIGTERMs 20 ms apart": (signal.SIGTERM, signal.SIGTERM, 0.020),
    "SIGINT then SIGTERM": (signal.SIGINT, signal.SIGTERM, 0.003),
}


@pytest.mark.qemu
@pytest.mark.parametrize("case", PAIRS)
def test_a_second_signal_during_cleanup_leaves_no_job_and_no_file(cli, vm, case):
    first, second, gap = PAIRS[case]
    before = block_state(vm)
    target = vm.workdir / "backup.qcow2"
    process = cli.popen("backup", "-s", str(vm.qmp_path), "vd0", str(target), "--speed", "1M")
    wait_for_job(vm)
    process.send_signal(first)
    time.sleep(gap)  # not synchronisation: the gap between two key presses is what is under test
    process.send_signal(second)
    _, err = process.communicate(timeout=15)
    assert process.returncode == 130, err
    assert b"interrupted" in err
    assert block_state(vm) == before  # query-jobs empty, no target node left
    assert not target.exists()


@pytest.mark.qemu
def test_a_second_signal_during_the_blockdev_flows_cleanup_leaves_no_node(cli, vm_factory):
    """The blockdev flow has more to take back (two nodes as well as the job) and the same guarantee."""
    vm = vm_factory(extra_args=["-compat", "deprecated-input=reject"])
    before = block_state(vm)
    target = vm.workdir / "backup.qcow2"
    process = cli.popen("backup", "-s", str(vm.qmp_path), "vd0", str(target), "--speed", "1M")
    wait_for_job(vm)
    process.send_signal(signal.SIGINT)
    time.sleep(0.003)  # the gap between two key presses
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=15)
    assert process.returncode == 130, err
    assert block_state(vm) == before and not target.exists()


def run_in_child(code: str) -> subprocess.CompletedProcess:
    """Signal handlers and masks are per process: try them in a fresh interpreter."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=False, capture_output=True, text=True,
                          timeout=30, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_shielded_delivers_a_signal_only_after_the_block():
    result = run_in_child("""
        import os, signal
        from qmpctl import signals
        signals.install()
        steps = []
        try:
            with signals.shielded():
                os.kill(os.getpid(), signal.SIGTERM)
                steps.append("cleanup finished")
            steps.append("not reached")
        except KeyboardInterrupt:
            steps.append("interrupted after")
        print(steps)
    """)
    assert result.stdout.strip() == "['cleanup finished', 'interrupted after']", result


def test_after_the_first_signal_later_ones_wait_for_the_exit():
    result = run_in_child("""
        import os, signal
        from qmpctl import signals
        signals.install()
        try:
            os.kill(os.getpid(), signal.SIGINT)
            while True:
                pass
        except KeyboardInterrupt:
            for _ in range(3):
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGINT)
            print("cleanup finished", signals._caught == signal.SIGINT)
    """)
    assert result.returncode == 0 and result.stdout.strip() == "cleanup finished True", result


def test_after_no_return_a_signal_changes_nothing():
    result = run_in_child("""
        import os, signal
        from qmpctl import signals
        signals.install()
        signals.no_return()
        os.kill(os.getpid(), signal.SIGTERM)
        print("printed")
        raise SystemExit(0)
    """)
    assert (result.returncode, result.stdout.strip()) == (0, "printed"), result
