"""snapshot save/load/list/delete against a real, paused QEMU: all or nothing, checked before anything starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support.disks import VD0_BACKEND, flush, hmp, jobs, make_image, reads_pattern

pytestmark = pytest.mark.qemu

REPO = Path(__file__).resolve().parents[2]


def tags(vm) -> dict[str, list[str]]:
    """Snapshot names per drive (by qdev), read by the test's own monitor."""
    found = {}
    with vm.check() as qmp:
        for entry in qmp.cmd("query-block"):
            snapshots = (entry.get("inserted") or {}).get("image", {}).get("snapshots") or []
            found[entry.get("qdev") or entry["device"]] = sorted(snap["name"] for snap in snapshots)
    return found


def vd0_tags(vm) -> list[str]:
    return tags(vm)[VD0_BACKEND]


def write(vm, pattern: int, device: str = VD0_BACKEND) -> None:
    hmp(vm, f'qemu-io -d {device} "write -P {pattern:#x} 0 64k"')


def holds(vm, pattern: int) -> bool:
    """Whether vd0's first 64 KiB hold ``pattern``, read from the image file once QEMU has flushed it."""
    flush(vm)
    return reads_pattern(vm.disk, pattern, 0, 65536)


def run_state(vm) -> str:
    with vm.check() as qmp:
        return qmp.cmd("query-status")["status"]


def vm_with(vm_factory, tmp_path: Path, *disks: tuple[str, str, bool]):
    args: list[str] = []
    for device_id, image_format, read_only in disks:
        image = make_image(tmp_path / f"{device_id}.{image_format}", image_format)
        ro = ",read-only=on,file.read-only=on" if read_only else ""
        args += ["-blockdev", f"driver={image_format},node-name={device_id}-node,file.driver=file,"
                              f"file.filename={image}{ro}",
                 "-device", f"virtio-blk-pci,drive={device_id}-node,id={device_id}"]
    return vm_factory(extra_args=args)


def test_save_then_load_takes_the_disk_back(cli, vm):
    result = cli("snapshot", "save", "-s", str(vm.qmp_path), "clean", "--return-value")
    assert result.code == 0, result
    assert json.loads(result.out) == {"name": "clean", "disks": ["vd0"], "vmstate": "vd0", "read-only": [],
                                      "excluded": []}
    assert vd0_tags(vm) == ["clean"] and jobs(vm) == []
    write(vm, 0xAA)
    assert holds(vm, 0xAA)
    result = cli("snapshot", "load", "-s", str(vm.qmp_path), "clean")
    assert result.code == 0, result
    assert holds(vm, 0x00) and not holds(vm, 0xAA)  # the write is gone
    assert run_state(vm) == "prelaunch" and jobs(vm) == []  # a paused VM stays paused


def test_list_shows_disks_date_state_size_and_clock(cli, vm):
    assert cli("snapshot", "save", "-s", str(vm.qmp_path), "one").code == 0
    assert cli("snapshot", "save", "-s", str(vm.qmp_path), "two").code == 0
    result = cli("snapshot", "list", "-s", str(vm.qmp_path), "--return-value")
    assert result.code == 0, result
    listed = json.loads(result.out)
    assert [item["name"] for item in listed] == ["one", "two"]
    for item in listed:
        assert item["disks"] == ["vd0"] and item["vmstate"] == "vd0" and item["vm-state-size"] > 0
        assert item["date"].endswith("Z") and item["vm-clock"] == "00:00:00.000"  # -S: the clock never ran


def test_an_existing_name_is_exit_2_and_force_replaces_it(cli, vm):
    assert cli("snapshot", "save", "-s", str(vm.qmp_path), "base").code == 0
    write(vm, 0x5A)
    result = cli("snapshot", "save", "-s", str(vm.qmp_path), "base")
    assert result.code == 2, result
    assert "'base' already exists on vd0" in result.err and "--force" in result.err
    result = cli("snapshot", "save", "-s", str(vm.qmp_path), "base", "--force", "--return-value")
    assert result.code == 0, result
    assert json.loads(result.out)["replaced"] is True
    assert vd0_tags(vm) == ["base"] and jobs(vm) == []  # no temporary tag left, no job
    write(vm, 0x11)
    assert cli("snapshot", "load", "-s", str(vm.qmp_path), "base").code == 0
    assert holds(vm, 0x5A)  # the replacement holds the state of the second save


def test_a_raw_writable_disk_is_refused_before_anything_starts(cli, vm_factory, tmp_path):
    vm = vm_with(vm_factory, tmp_path, ("vd1", "raw", False), ("vd2", "raw", True))
    result = cli("snapshot", "save", "-s", str(vm.qmp_path), "s1")
    assert result.code == 2, result
    assert "vd1 (raw) cannot hold snapshots" in result.err and "--exclude vd1" in result.err
    assert vd0_tags(vm) == [] and jobs(vm) == []
    result = cli("snapshot", "save", "-s", str(vm.qmp_path), "s1", "--exclude", "vd1", "--return-value")
    assert result.code == 0, result
    assert json.loads(result.out) == {"name": "s1", "disks": ["vd0"], "vmstate": "vd0", "read-only": ["vd2"],
                                      "excluded": ["vd1"]}
    assert vd0_tags(vm) == ["s1"]


def test_vmstate_goes_on_the_disk_named(cli, vm_factory, tmp_path):
    vm = vm_with(vm_factory, tmp_path, ("vd1", "qcow2", False))
    result = cli("snapshot", "save", "-s", str(vm.qmp_path), "s1", "--vmstate", "vd1", "--return-value")
    assert result.code == 0, result
    assert json.loads(result.out)["disks"] == ["vd0", "vd1"]
    listed = json.loads(cli("snapshot", "list", "-s", str(vm.qmp_path), "--return-value").out)
    assert listed[0]["vmstate"] == "vd1" and listed[0]["disks"] == ["vd0", "vd1"]


def test_load_of_a_name_missing_on_one_disk_is_refused_and_the_vm_keeps_running(cli, vm_factory, tmp_path):
    vm = vm_with(vm_factory, tmp_path, ("vd1", "qcow2", False))
    assert cli("snapshot", "save", "-s", str(vm.qmp_path), "partial", "--exclude", "vd1").code == 0
    assert cli("cont", "-s", str(vm.qmp_path)).code == 0
    result = cli("snapshot", "load", "-s", str(vm.qmp_path), "partial")
    assert result.code == 2, result
    assert "'partial' is missing on vd1" in result.err and "nothing was changed" in result.err
    assert run_state(vm) == "running" and jobs(vm) == []
    result = cli("snapshot", "load", "-s", str(vm.qmp_path), "nosuch")
    assert result.code == 2 and "no snapshot 'nosuch'" in result.err
    assert run_state(vm) == "running"


def test_load_leaving_a_disk_out_on_a_running_vm(cli, vm_factory, tmp_path):
    vm = vm_with(vm_factory, tmp_path, ("vd1", "qcow2", False))
    assert cli("snapshot", "save", "-s", str(vm.qmp_path), "partial", "--exclude", "vd1").code == 0
    assert cli("cont", "-s", str(vm.qmp_path)).code == 0
    result = cli("snapshot", "load", "-s", str(vm.qmp_path), "partial", "--exclude", "vd1", "--return-value")
    assert result.code == 0, result
    assert json.loads(result.out)["excluded"] == ["vd1"]
    assert run_state(vm) == "running"  # a running VM runs on from the snapshot


def test_delete_removes_the_name_and_a_missing_name_is_exit_2(cli, vm):
    assert cli("snapshot", "save", "-s", str(vm.qmp_path), "old").code == 0
    result = cli("snapshot", "delete", "-s", str(vm.qmp_path), "old", "--return-value")
    assert result.code == 0, result
    assert json.loads(result.out) == {"name": "old", "disks": ["vd0"]}
    assert vd0_tags(vm) == [] and jobs(vm) == []
    result = cli("snapshot", "delete", "-s", str(vm.qmp_path), "old")
    assert result.code == 2 and "no snapshot 'old'" in result.err


def test_a_name_of_digits_only_is_refused(cli, tmp_path):
    result = cli("snapshot", "save", "-s", str(tmp_path / "absent.sock"), "12")
    assert result.code == 2 and "not only digits" in result.err


INTERRUPTING = """
    import os, signal, sys
    from qmpctl.wire import qmp
    original = qmp.QmpSession.execute
    fired = []
    def execute(self, request, deadline, *args):
        reply = original(self, request, deadline, *args)
        if request.execute == sys.argv[1] and not fired:  # right after QEMU accepted the job: mid-save
            fired.append(1)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return reply
    qmp.QmpSession.execute = execute
    from qmpctl.cli import main
    main(sys.argv[2:])
"""


def interrupted_run(when: str, *argv: str) -> subprocess.CompletedProcess:
    """qmpctl in a child that gets two real SIGINTs right after ``when`` was answered."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(INTERRUPTING), when, *argv], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_sigint_twice_mid_save_leaves_no_tag_and_no_job(vm):
    proc = interrupted_run("snapshot-save", "snapshot", "save", "-s", str(vm.qmp_path), "cut")
    assert proc.returncode == 130, proc.stderr
    assert "interrupted while saving snapshot 'cut': no part of snapshot 'cut' is left on any disk" in proc.stderr
    assert vd0_tags(vm) == [] and jobs(vm) == []


def test_sigint_twice_mid_replacement_keeps_a_complete_snapshot(cli, vm):
    assert cli("snapshot", "save", "-s", str(vm.qmp_path), "keep").code == 0
    proc = interrupted_run("snapshot-save", "snapshot", "save", "-s", str(vm.qmp_path), "keep", "--force")
    assert proc.returncode == 130, proc.stderr
    assert vd0_tags(vm) == ["keep"] and jobs(vm) == []  # the old one, untouched; the temporary one deleted


def test_dry_run_is_a_plan(cli, tmp_path):
    result = cli("snapshot", "save", "-s", str(tmp_path / "absent.sock"), "s1", "--dry-run")
    assert result.code == 0, result
    shown = json.loads(result.out)
    assert shown["plan"][0]["execute"] == "snapshot-save" and shown["plan"][0]["arguments"]["tag"] == "s1"
    assert "a plan, not the exact requests" in shown["note"]


def test_a_save_that_outlives_wait_timeout_leaves_no_tag_and_no_job(cli, vm):
    """QEMU writes the state after it answered snapshot-save: a 1 ms wait always runs out first."""
    result = cli("snapshot", "save", "-s", str(vm.qmp_path), "slow", "--wait-timeout", "0.001")
    assert result.code == 4, result
    assert "took longer than --wait-timeout" in result.err
    assert "no part of snapshot 'slow' is left on any disk" in result.err
    assert vd0_tags(vm) == [] and jobs(vm) == []


def test_load_onto_a_disk_with_dirty_bitmaps_is_refused_before_the_vm_is_touched(cli, vm):
    """QEMU refuses it ("Device has active dirty bitmaps") only after stopping the VM in restore-vm."""
    assert cli("snapshot", "save", "-s", str(vm.qmp_path), "s1").code == 0
    with vm.check() as qmp:
        qmp.cmd("block-dirty-bitmap-add", node="disk0", name="chain-1", persistent=True)
    assert cli("cont", "-s", str(vm.qmp_path)).code == 0
    result = cli("snapshot", "load", "-s", str(vm.qmp_path), "s1")
    assert result.code == 2, result
    assert "dirty bitmaps (vd0: chain-1)" in result.err and "nothing was changed" in result.err
    assert run_state(vm) == "running" and jobs(vm) == []


def test_save_of_a_running_vm_leaves_it_running(cli, vm):
    assert cli("cont", "-s", str(vm.qmp_path)).code == 0
    result = cli("snapshot", "save", "-s", str(vm.qmp_path), "live")
    assert result.code == 0, result
    assert run_state(vm) == "running" and vd0_tags(vm) == ["live"] and jobs(vm) == []


@pytest.mark.one_qemu  # qmpctl's own check, before anything is sent
def test_sync_time_without_an_agent_is_exit_2_before_the_load(cli, vm):
    assert cli("snapshot", "save", "-s", str(vm.qmp_path), "clean").code == 0
    write(vm, 0xAA)
    result = cli("snapshot", "load", "-s", str(vm.qmp_path), "clean", "--sync-time")
    assert result.code == 2 and "--sync-time needs the guest agent" in result.err, result
    assert holds(vm, 0xAA) and jobs(vm) == []  # not loaded
    stray = cli("snapshot", "load", "-s", str(vm.qmp_path), "clean", "-a", str(vm.qmp_path) + ".qga")
    assert stray.code == 2 and "goes with --sync-time" in stray.err, stray
    assert holds(vm, 0xAA)


def test_sync_time_on_a_vm_that_stays_paused_is_a_warning(cli, vm, tmp_path):
    """A paused VM stays paused after the load, so its clock is not set: said in the result, exit 0."""
    assert cli("snapshot", "save", "-s", str(vm.qmp_path), "clean").code == 0
    write(vm, 0xAA)
    result = cli("snapshot", "load", "-s", str(vm.qmp_path), "clean", "--sync-time", "-a",
                 str(tmp_path / "agent.sock"), "--return-value")
    assert result.code == 0, result
    loaded = json.loads(result.out)
    assert loaded["time-synced"] is False and "not running" in loaded["time-sync-warning"], loaded
    assert holds(vm, 0x00) and run_state(vm) == "prelaunch"
