"""Block commands under faults the block tests do not stage: a busy monitor, a dead VM, a dying agent.

tests/test_block_*.py cover the VM killed during ``backup --wait``, failed
jobs, signals and bad input against a live VM. Here the fault strikes before
anything could start: the VM must be left exactly as it was, with no job, no
node and no file.
"""

from __future__ import annotations

import pytest

from support.disks import block_state, make_image
from support.qemu import RawQmp

pytestmark = [pytest.mark.qemu, pytest.mark.fault]

TIMEOUT = 1
BOUND = TIMEOUT + 3


def test_backup_on_a_busy_monitor_starts_nothing(cli, vm):
    before = block_state(vm)
    target = vm.workdir / "backup.qcow2"
    with RawQmp(vm.qmp_path):
        result = cli("backup", "-s", str(vm.qmp_path), "vd0", str(target), "--timeout", str(TIMEOUT))
    assert result.code == 4, result
    assert "busy" in result.err
    assert result.seconds < BOUND
    assert block_state(vm) == before and not target.exists()


def test_hotplug_on_a_busy_monitor_attaches_nothing(cli, vm):
    before = block_state(vm)
    image = make_image(vm.workdir / "extra.qcow2")
    with RawQmp(vm.qmp_path):
        result = cli("hotplug-disk", "-s", str(vm.qmp_path), str(image), "--timeout", str(TIMEOUT))
    assert result.code == 4, result
    assert "busy" in result.err
    assert block_state(vm) == before


def test_unplug_on_a_busy_monitor_removes_nothing(cli, vm):
    before = block_state(vm)
    with RawQmp(vm.qmp_path):
        result = cli("unplug-disk", "-s", str(vm.qmp_path), "vd0", "--timeout", str(TIMEOUT))
    assert result.code == 4, result
    assert block_state(vm) == before


def test_backup_to_a_dead_vm_creates_no_file(cli, vm):
    vm.kill()
    target = vm.workdir / "backup.qcow2"
    result = cli("backup", "-s", str(vm.qmp_path), "vd0", str(target), "--timeout", "30")
    assert result.code == 3, result
    assert "stale socket" in result.err
    assert result.seconds < 3
    assert not target.exists()
