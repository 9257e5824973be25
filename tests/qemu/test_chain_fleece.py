"""backup --into DIR --fleece DIR2 against a real QEMU: the image is the disk at the switch, later guest writes land
in the next incremental, and nothing of the fleecing (nodes, the drive's switch, temporary files) stays behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from support.disks import (flush, hmp, images_identical, make_image, mounted_tmpfs, reads_pattern, scsi_hd_args,
                           throttled_vm, wait_for_job, whole_vm_args, write_pattern)
from support.interrupts import InterruptAfter
from support.waits import interrupt_twice

pytestmark = pytest.mark.qemu

MiB = 1 << 20
VD0 = "/machine/peripheral/vd0/virtio-backend"
VD1 = "/machine/peripheral/vd1/virtio-backend"
SECOND_DISK = ["-blockdev", "driver=qcow2,node-name=disk1,file.driver=file,file.filename={image}",
               "-device", "virtio-blk-pci,drive=disk1,id=vd1"]


def backup(cli, vm, into: Path, fleece: Path, *arguments: str, device: tuple[str, ...] = ("vd0",)):
    result = cli("backup", "-s", str(vm.qmp_path), *device, "--into", str(into), "--fleece", str(fleece),
                 "--progress", "none", *arguments)
    return result.code, json.loads(result.out)["return"] if result.code == 0 else None, result.err


def ok(cli, vm, into: Path, fleece: Path, *arguments: str, device: tuple[str, ...] = ("vd0",)) -> dict:
    code, reply, err = backup(cli, vm, into, fleece, *arguments, device=device)
    assert code == 0, err
    return reply


def popen(cli, vm, into: Path, fleece: Path, *arguments: str, device: tuple[str, ...] = ("vd0",)):
    return cli.popen("backup", "-s", str(vm.qmp_path), *device, "--into", str(into), "--fleece", str(fleece),
                     "--progress", "none", *arguments)


def restored(cli, chain: str, target: Path, *arguments: str) -> Path:
    result = cli("restore", chain, str(target), "--progress", "none", *arguments)
    assert result.code == 0, result
    return target


def manifest(chain: str) -> dict:
    return json.loads((Path(chain) / "chain.json").read_text())


def drive_of(vm, qdev: str = VD0) -> str:
    """The node the device reads, from query-block."""
    with vm.check() as qmp:
        return next(entry["inserted"]["node-name"] for entry in qmp.cmd("query-block") if entry["qdev"] == qdev)


def fleecing_nodes(vm) -> list[str]:
    with vm.check() as qmp:
        return sorted(node["node-name"] for node in qmp.cmd("query-named-block-nodes")
                      if node.get("drv") in ("copy-before-write", "snapshot-access")
                      or "-fleece" in node.get("node-name", "") or node.get("node-name", "").startswith("chain-"))


def left_nothing(vm, fleece: Path, drives: dict[str, str] | None = None) -> None:
    assert list(fleece.iterdir()) == []
    assert fleecing_nodes(vm) == []
    for qdev, node in (drives or {VD0: "disk0"}).items():
        assert drive_of(vm, qdev) == node
    with vm.check() as qmp:
        assert qmp.cmd("query-jobs") == []


def copy_while_paused(vm, tmp_path: Path, name: str, disk: Path | None = None) -> Path:
    """The disk as it is now (the VM is paused: nothing writes to it), flushed and copied aside."""
    flush(vm)
    return Path(shutil.copy(disk or vm.disk, tmp_path / name))


def test_full_and_incremental_restore_to_the_disk_at_the_switch(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    into, scratch = tmp_path / "b", tmp_path / "scratch"
    scratch.mkdir()
    write_pattern(vm, [(0x11, 0, MiB)])
    at_full = copy_while_paused(vm, tmp_path, "at-full.qcow2")
    full = ok(cli, vm, into, scratch)
    assert full["level"] == "full" and full["fleece"] == str(scratch) and "paused" not in full, full
    left_nothing(vm, scratch)
    write_pattern(vm, [(0x22, 4 * MiB, MiB)])
    at_second = copy_while_paused(vm, tmp_path, "at-second.qcow2")
    second = ok(cli, vm, into, scratch)
    assert (second["level"], second["chain"], second["bytes"]) == ("incremental", full["chain"], MiB), second
    left_nothing(vm, scratch)
    first = restored(cli, full["chain"], tmp_path / "first.qcow2", "--point", "1")
    assert images_identical(at_full, first).returncode == 0
    both = restored(cli, full["chain"], tmp_path / "both.qcow2")
    assert images_identical(at_second, both).returncode == 0
    with vm.check() as qmp:  # only the chain's newest bitmap stays on the disk, persistent
        bitmaps = next(entry["inserted"].get("dirty-bitmaps", []) for entry in qmp.cmd("query-block")
                       if entry["qdev"] == VD0)
    assert [(bitmap["name"], bitmap["persistent"]) for bitmap in bitmaps] == [(second["bitmap"], True)]


def test_a_guest_write_during_the_job_is_not_in_the_image_but_in_the_next(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    into, scratch = tmp_path / "b", tmp_path / "scratch"
    scratch.mkdir()
    write_pattern(vm, [(0x31, 2 * MiB, MiB)])
    full = ok(cli, vm, into, scratch)
    write_pattern(vm, [(0x32, 6 * MiB, 2 * MiB)])
    at_switch = copy_while_paused(vm, tmp_path, "at-switch.qcow2")
    child = popen(cli, vm, into, scratch, "--speed", "64K")
    job = wait_for_job(vm, "running")
    assert drive_of(vm) == "chain-vd0-cbw" and len(list(scratch.iterdir())) == 1  # the guest writes through the filter
    hmp(vm, f'qemu-io -d {VD0} "write -P 0x33 6M 64K"')  # over what the incremental copies
    hmp(vm, f'qemu-io -d {VD0} "write -P 0x34 12M 64K"')  # where it copies nothing
    flush(vm)
    with vm.check() as qmp:
        qmp.cmd("block-job-set-speed", device=job["id"], speed=0)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    during = json.loads(out)["return"]
    assert (during["level"], during["bytes"]) == ("incremental", 2 * MiB), during
    left_nothing(vm, scratch)
    image = restored(cli, full["chain"], tmp_path / "during.qcow2")
    assert images_identical(at_switch, image).returncode == 0  # neither write is in it
    after = copy_while_paused(vm, tmp_path, "after.qcow2")
    last = ok(cli, vm, into, scratch)
    assert last["bytes"] == 128 << 10, last  # both writes, and only them
    assert images_identical(after, restored(cli, full["chain"], tmp_path / "last.qcow2")).returncode == 0


def test_several_disks_of_a_running_vm_share_one_instant_and_it_runs_again(cli, vm_factory, tmp_path):
    second = make_image(tmp_path / "disk1.qcow2", "qcow2", "8M")
    extra = [arg.format(image=second) for arg in SECOND_DISK]
    vm = vm_factory(disk_size="8M", extra_args=extra, paused=False)
    into, scratch = tmp_path / "b", tmp_path / "scratch"
    scratch.mkdir()
    both = ok(cli, vm, into, scratch, device=("vd0", "vd1"))
    assert [disk["level"] for disk in both["disks"]] == ["full", "full"]
    assert both["fleece"] == str(scratch) and 0 < both["paused"] < 5, both
    with vm.check() as qmp:
        assert qmp.cmd("query-status")["status"] == "running"
        starts = {disk["chain"]: manifest(disk["chain"])["images"][0]["started"] for disk in both["disks"]}
    assert len(set(starts.values())) == 1, starts  # one instant for both
    left_nothing(vm, scratch, {VD0: "disk0", VD1: "disk1"})


def test_several_disks_of_a_paused_vm_leave_it_paused(cli, vm_factory, tmp_path):
    second = make_image(tmp_path / "disk1.qcow2", "qcow2", "8M")
    vm = vm_factory(disk_size="8M", extra_args=[arg.format(image=second) for arg in SECOND_DISK])
    into, scratch = tmp_path / "b", tmp_path / "scratch"
    scratch.mkdir()
    hmp(vm, f'qemu-io -d {VD1} "write -P 0x51 1M 1M"')
    flush(vm, VD1)
    aside = [copy_while_paused(vm, tmp_path, "vd0.qcow2"), copy_while_paused(vm, tmp_path, "vd1.qcow2", second)]
    both = ok(cli, vm, into, scratch, device=("vd0", "vd1"))
    assert "paused" not in both, both  # it was paused already: nothing to pause
    with vm.check() as qmp:
        assert qmp.cmd("query-status")["status"] == "prelaunch"
    for disk, copy in zip(both["disks"], aside, strict=True):
        assert images_identical(copy, restored(cli, disk["chain"], tmp_path / f"r-{copy.name}")).returncode == 0
    left_nothing(vm, scratch, {VD0: "disk0", VD1: "disk1"})


@pytest.mark.parametrize("command", ["stop", "qom-set", "transaction", "cont"])
def test_an_interrupt_in_the_switch_leaves_the_vm_running_and_nothing_behind(vm_factory, tmp_path, command):
    """Ctrl-C right after QEMU answered: cont runs whatever happened, and every node and file goes."""
    from qmpctl.backup import chain
    from qmpctl.deadline import Deadline
    from qmpctl.errors import Interrupted
    from qmpctl.wire.address import parse_address
    from qmpctl.wire.qmp import QmpSession

    second = make_image(tmp_path / "disk1.qcow2", "qcow2", "8M")
    vm = vm_factory(disk_size="8M", extra_args=[arg.format(image=second) for arg in SECOND_DISK], paused=False)
    into, scratch = tmp_path / "b", tmp_path / "scratch"
    scratch.mkdir()
    options = chain.ChainOptions(("vd0", "vd1"), str(into), fleece=str(scratch))
    with QmpSession.connect(parse_address(str(vm.qmp_path)), Deadline(10)) as session:
        with pytest.raises(Interrupted):
            chain.backup_chain(InterruptAfter(session, command), Deadline(10), options)
    with vm.check() as qmp:
        assert qmp.cmd("query-status")["status"] == "running"
        assert all(not entry["inserted"].get("dirty-bitmaps") for entry in qmp.cmd("query-block"))
    left_nothing(vm, scratch, {VD0: "disk0", VD1: "disk1"})
    assert not list(into.glob("*/chain.json"))


class InterruptBefore(InterruptAfter):
    """Ctrl-C after the run marked a node as added and before it sent the blockdev-add: the node never was."""

    def execute(self, request, deadline, *args):
        if request.execute == "blockdev-add" and request.arguments.get("node-name") == self.command:
            raise KeyboardInterrupt
        return self.session.execute(request, deadline, *args)


def test_an_interrupt_before_a_node_was_added_takes_back_the_rest_without_a_false_alarm(vm_factory, tmp_path):
    """Taking back skips the nodes that were never added, instead of failing to delete them."""
    from qmpctl.backup import chain
    from qmpctl.deadline import Deadline
    from qmpctl.errors import Interrupted
    from qmpctl.wire.address import parse_address
    from qmpctl.wire.qmp import QmpSession

    vm = vm_factory(disk_size="8M")
    into, scratch = tmp_path / "b", tmp_path / "scratch"
    scratch.mkdir()
    options = chain.ChainOptions(("vd0",), str(into), fleece=str(scratch))
    with QmpSession.connect(parse_address(str(vm.qmp_path)), Deadline(10)) as session:
        with pytest.raises(Interrupted) as caught:
            chain.backup_chain(InterruptBefore(session, chain.job_id_for("vd0") + "-cbw"), Deadline(10), options)
    assert "could not" not in caught.value.message, caught.value.message
    left_nothing(vm, scratch, {VD0: "disk0"})


def test_a_throttle_filter_under_the_device_stays(cli, vm_factory, tmp_path):
    vm = throttled_vm(vm_factory, tmp_path)
    into, scratch = tmp_path / "b", tmp_path / "scratch"
    scratch.mkdir()
    full = ok(cli, vm, into, scratch)
    left_nothing(vm, scratch, {VD0: "thr0"})
    write_pattern(vm, [(0x46, 4 * MiB, MiB)])
    again = ok(cli, vm, into, scratch)
    assert (again["level"], again["bytes"]) == ("incremental", MiB), again
    left_nothing(vm, scratch, {VD0: "thr0"})
    assert images_identical(vm.disk, restored(cli, full["chain"], tmp_path / "r.qcow2")).returncode == 0


def test_a_scsi_disk_named_by_its_id_is_switched_and_put_back(cli, vm_factory, tmp_path):
    """query-block names a scsi-hd with an id by the id alone ("sd0"): its QOM path is /machine/peripheral/sd0."""
    image = make_image(tmp_path / "sd0.qcow2", "qcow2", "8M")
    vm = vm_factory(disk_size="8M", extra_args=scsi_hd_args(image, "sd0-fmt", "sd0"))
    hmp(vm, 'qemu-io -d sd0 "write -P 0x5c 1M 1M"')
    flush(vm, "sd0")
    into, scratch = tmp_path / "b", tmp_path / "scratch"
    scratch.mkdir()
    full = ok(cli, vm, into, scratch, device=("sd0",))
    left_nothing(vm, scratch, {VD0: "disk0", "sd0": "sd0-fmt"})
    assert images_identical(image, restored(cli, full["chain"], tmp_path / "r.qcow2")).returncode == 0


FAILING_DISK = ["-blockdev", json.dumps({"driver": "raw", "node-name": "bad", "file": {
    "driver": "blkdebug", "inject-error": [{"event": "read_aio", "errno": 5}],
    "image": {"driver": "null-co", "size": 8 << 20}}}), "-device", "virtio-blk-pci,drive=bad,id=vd1"]


def test_a_failed_job_leaves_nothing_and_the_chain_as_it_was(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="8M", extra_args=FAILING_DISK)
    into, scratch = tmp_path / "b", tmp_path / "scratch"
    scratch.mkdir()
    code, _, err = backup(cli, vm, into, scratch, device=("vd0", "vd1"))
    assert code == 6 and "Input/output error" in err, err
    left_nothing(vm, scratch, {VD0: "disk0", VD1: "bad"})
    assert sorted(path.name for path in into.iterdir()) == [".vd0.lock", ".vd1.lock"]
    with vm.check() as qmp:
        assert all(not entry["inserted"].get("dirty-bitmaps") for entry in qmp.cmd("query-block"))


def test_wait_timeout_leaves_nothing_and_the_next_run_catches_up(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    into, scratch = tmp_path / "b", tmp_path / "scratch"
    scratch.mkdir()
    full = ok(cli, vm, into, scratch)
    write_pattern(vm, [(0x4D, 2 * MiB, 2 * MiB)])
    code, _, err = backup(cli, vm, into, scratch, "--speed", "64K", "--wait-timeout", "1")
    assert code == 4 and "--wait-timeout" in err, err
    left_nothing(vm, scratch)
    assert [image["file"] for image in manifest(full["chain"])["images"]] == ["0001-full.qcow2"]
    assert ok(cli, vm, into, scratch)["bytes"] == 2 * MiB



@pytest.fixture
def small_scratch(tmp_path: Path) -> Iterator[Path]:
    """DIR2 on a 1 MiB tmpfs."""
    yield from mounted_tmpfs(tmp_path / "small", "1m")


def test_a_full_fleece_folder_fails_the_job_not_the_guest_and_leaves_nothing(cli, vm_factory, tmp_path, small_scratch):
    """Old data the guest overwrites outgrows DIR2: the guest's write still succeeds (the filter breaks the
    snapshot instead), the job fails saying why, everything is taken back, and the next run copies the change."""
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    full = ok(cli, vm, into, small_scratch)
    write_pattern(vm, [(0x22, 8 * MiB, 2 * MiB)])
    child = popen(cli, vm, into, small_scratch, "--speed", "64K")
    job = wait_for_job(vm, "running")
    hmp(vm, f'qemu-io -d {VD0} "write -P 0x23 8M 2M"')  # 2 MiB of old data to keep: more than DIR2 holds
    flush(vm)
    assert reads_pattern(vm.disk, 0x23, 8 * MiB, 2 * MiB)  # the guest lost nothing
    with vm.check() as qmp:
        qmp.cmd("block-job-set-speed", device=job["id"], speed=0)
    err = child.communicate(timeout=60)[1].decode()
    assert child.returncode == 6, err
    assert "the snapshot broke" in err and str(small_scratch) in err, err
    left_nothing(vm, small_scratch)
    assert [image["file"] for image in manifest(full["chain"])["images"]] == ["0001-full.qcow2"]
    after = ok(cli, vm, into, tmp_path)  # DIR2 with room: the region both writes changed, in the same chain
    assert (after["chain"], after["level"], after["bytes"]) == (full["chain"], "incremental", 2 * MiB), after


def slow_incremental(cli, vm_factory, tmp_path: Path, pattern: int):
    """A chain's full, 2 MiB written, and a run copying them at 64 KiB/s, its job running: (vm, DIR, DIR2, the
    full's result, the running qmpctl)."""
    vm = vm_factory(disk_size="16M")
    into, scratch = tmp_path / "b", tmp_path / "scratch"
    scratch.mkdir()
    full = ok(cli, vm, into, scratch)
    write_pattern(vm, [(pattern, 2 * MiB, 2 * MiB)])
    child = popen(cli, vm, into, scratch, "--speed", "64K")
    wait_for_job(vm, "running")
    return vm, into, scratch, full, child


def test_ctrl_c_twice_leaves_nothing(cli, vm_factory, tmp_path):
    vm, into, scratch, full, child = slow_incremental(cli, vm_factory, tmp_path, 0x5A)
    interrupt_twice(child)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 130, err
    left_nothing(vm, scratch)
    assert len(manifest(full["chain"])["images"]) == 1
    assert ok(cli, vm, into, scratch)["bytes"] == 2 * MiB


def test_after_kill_9_the_next_run_takes_the_fleecing_back_and_the_chain_goes_on(cli, vm_factory, tmp_path):
    vm, into, scratch, full, child = slow_incremental(cli, vm_factory, tmp_path, 0x6B)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert drive_of(vm) == "chain-vd0-cbw" and len(list(scratch.iterdir())) == 1  # what the killed run left
    again = ok(cli, vm, into, scratch)
    assert (again["level"], again["chain"], again["bytes"]) == ("incremental", full["chain"], 2 * MiB), again
    assert any("took back the fleecing of vd0" in warning for warning in again["warnings"]), again
    left_nothing(vm, scratch)
    assert images_identical(vm.disk, restored(cli, again["chain"], tmp_path / "r.qcow2")).returncode == 0


KILLED_IN_THE_PAUSE = """
import os, sys
from qmpctl.backup import chain
from qmpctl.deadline import Deadline
from qmpctl.wire.address import parse_address
from qmpctl.wire.qmp import QmpSession


class KilledAfter:
    def __init__(self, session, command):
        self.session, self.command = session, command

    def __getattr__(self, name):
        return getattr(self.session, name)

    def execute(self, request, deadline, *args):
        reply = self.session.execute(request, deadline, *args)
        if request.execute == self.command:
            os._exit(9)  # as kill -9 would: no finally, no context manager runs
        return reply


socket, into, scratch, command = sys.argv[1:]
options = chain.ChainOptions(("vd0", "vd1"), into, fleece=scratch)
with QmpSession.connect(parse_address(socket), Deadline(10)) as session:
    chain.backup_chain(KilledAfter(session, command), Deadline(10), options)
"""


@pytest.mark.parametrize("command", ["stop", "qom-set"])
def test_a_run_killed_while_the_vm_is_paused_has_the_next_run_let_it_run(cli, vm_factory, tmp_path, command):
    second = make_image(tmp_path / "disk1.qcow2", "qcow2", "8M")
    vm = vm_factory(disk_size="8M", extra_args=[arg.format(image=second) for arg in SECOND_DISK], paused=False)
    into, scratch = tmp_path / "b", tmp_path / "scratch"
    scratch.mkdir()
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_THE_PAUSE, str(vm.qmp_path), str(into), str(scratch),
                             command], env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
                            capture_output=True, text=True, timeout=60)
    assert killed.returncode == 9, killed.stderr
    with vm.check() as qmp:
        assert qmp.cmd("query-status")["status"] == "paused"  # what the killed run left
    both = ok(cli, vm, into, scratch, device=("vd0", "vd1"))
    assert any("let the VM run again" in warning for warning in both["warnings"]), both
    with vm.check() as qmp:
        assert qmp.cmd("query-status")["status"] == "running"
    left_nothing(vm, scratch, {VD0: "disk0", VD1: "disk1"})


def test_a_temporary_image_a_killed_run_never_used_is_removed_and_anothers_kept(cli, vm_factory, tmp_path):
    import hashlib

    vm = vm_factory(disk_size="8M")
    into, scratch = tmp_path / "b", tmp_path / "scratch"
    scratch.mkdir()
    tag = hashlib.sha256(str(into).encode()).hexdigest()[:8]
    unused = scratch / f"qmpctl-fleece-{tag}-vd0-{'ab' * 8}.qcow2"
    anothers = [scratch / f"qmpctl-fleece-{'0' * 8}-vd0-{'ab' * 8}.qcow2", scratch / "notes.txt"]
    for path in (unused, *anothers):
        path.write_bytes(b"x")
    reply = ok(cli, vm, into, scratch)
    assert any(f"removed {unused}" in warning for warning in reply["warnings"]), reply
    assert sorted(scratch.iterdir()) == sorted(anothers)


def test_after_kill_9_a_run_without_fleece_cleans_up_too(cli, vm_factory, tmp_path):
    """The killed run's filter is qmpctl's own in this DIR: not another tool's (which stays Busy)."""
    vm, into, scratch, _, child = slow_incremental(cli, vm_factory, tmp_path, 0x6C)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    other = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(tmp_path / "other"), "--progress", "none")
    assert other.code == 4 and "busy" in other.err, other  # another DIR: not its to take back
    result = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--progress", "none")
    assert result.code == 0, result
    left_nothing(vm, scratch)


def test_the_whole_vm_with_uefi_variables_on_pflash(cli, vm_factory, tmp_path):
    """pflash1 is a -drive (its node a name QEMU made up) on /machine/system.flash1: switched and put back too."""
    vm = vm_factory(disk_size="16M", extra_args=whole_vm_args(tmp_path / "files"))
    drives = {qdev: drive_of(vm, qdev) for qdev in (VD0, VD1, "/machine/system.flash1")}
    into, scratch = tmp_path / "b", tmp_path / "scratch"
    scratch.mkdir()
    result = cli("backup", "-s", str(vm.qmp_path), "--into", str(into), "--fleece", str(scratch), "--progress",
                 "none")
    assert result.code == 0, result
    disks = {disk["device"]: disk for disk in json.loads(result.out)["return"]["disks"]}
    assert set(disks) == {"vd0", "vd1", "pflash1"} and all(disk["level"] == "full" for disk in disks.values())
    out = tmp_path / "vars.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", disks["pflash1"]["image"], str(out)], check=True)
    assert out.read_bytes() == (tmp_path / "files" / "vars.fd").read_bytes()
    left_nothing(vm, scratch, drives)


def test_a_fleet_gives_each_vm_its_own_temporary_files(cli, vm_factory, tmp_path):
    vms = [vm_factory(disk_size="8M", extra_args=["-name", name], paused=False) for name in ("alpha", "beta")]
    into, scratch = tmp_path / "nightly", tmp_path / "scratch"
    scratch.mkdir()
    result = cli("backup", "-s", str(tmp_path / "vm*" / "qmp.sock"), "--into", str(into), "--fleece", str(scratch),
                 "--progress", "none")
    assert result.code == 0, result
    lines = [json.loads(line)["return"] for line in result.out.splitlines()]
    assert sorted(line["vm"] for line in lines) == ["alpha", "beta"]
    assert all(line["fleece"] == str(scratch) and line["disks"][0]["level"] == "full" for line in lines), lines
    for vm in vms:
        left_nothing(vm, scratch)


def test_dry_run_shows_the_fleecing_requests(cli, tmp_path):
    result = cli("backup", "--dry-run", "-s", str(tmp_path / "absent.sock"), "vd0", "vd1", "--into",
                 str(tmp_path / "b"), "--fleece", str(tmp_path / "f"))
    assert result.code == 0, result
    shown = json.loads(result.out)
    executes = [request["execute"] for request in shown["plan"]]
    assert executes == ["blockdev-add"] * 6 + ["stop", "qom-set", "qom-set", "blockdev-add", "blockdev-add",
                                               "transaction", "cont", "blockdev-del", "blockdev-del",
                                               "transaction"], executes
    assert "--fleece" in shown["note"] and not (tmp_path / "b").exists()


def test_estimate_and_skip_below_work_with_fleece(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    into, scratch = tmp_path / "b", tmp_path / "scratch"
    scratch.mkdir()
    ok(cli, vm, into, scratch)
    write_pattern(vm, [(0x71, 0, 64 << 10)])
    estimate = ok(cli, vm, into, scratch, "--estimate")
    assert (estimate["level"], estimate["bytes"]) == ("incremental", 64 << 10), estimate
    skipped = ok(cli, vm, into, scratch, "--skip-below", "1M")
    assert skipped["level"] == "skipped", skipped
    left_nothing(vm, scratch)
    assert reads_pattern(vm.disk, 0x71, 0, 64 << 10)


def test_a_missing_fleece_folder_is_refused_before_connecting(cli, tmp_path):
    result = cli("backup", "-s", str(tmp_path / "absent.sock"), "vd0", "--into", str(tmp_path / "b"), "--fleece",
                 str(tmp_path / "nowhere"))
    assert result.code == 2 and "--fleece" in result.err and "no such folder" in result.err, result
    assert not (tmp_path / "b").exists()



def test_an_ssh_vm_is_refused_before_connecting(cli, tmp_path):
    """DIR2 would have to be on the VM's host: --fleece says so, and nothing is reached or made."""
    result = cli("backup", "-s", "ssh://root@hv1.invalid/run/vm1.sock", "vd0", "--into", "/var/backups/vms",
                 "--fleece", str(tmp_path))
    assert result.code == 2 and "--fleece is not supported with a VM reached over ssh://" in result.err, result
    assert list(tmp_path.iterdir()) == []
