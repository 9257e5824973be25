"""Backup chains against a real QEMU: increments hold what changed, restores are identical, nothing breaks silently."""

from __future__ import annotations

import fcntl
import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from support.disks import (block_state, flush, hmp, images_identical, make_image, reads_pattern, scsi_hd_args,
                           throttled_vm, wait_for_job, write_pattern)
from support.libvirt import domain, libvirtd  # noqa: F401 (fixtures)
from support.qemu import wait_for_socket

pytestmark = pytest.mark.qemu

MiB = 1 << 20
SECOND_DISK = ["-blockdev", "driver=qcow2,node-name=disk1,file.driver=file,file.filename={image}",
               "-device", "virtio-blk-pci,drive=disk1,id=vd1"]


def backup(cli, vm, into: Path, *arguments: str, device: tuple[str, ...] = ("vd0",)):
    """``qmpctl backup DEVICE... --into DIR``: the exit code, the reply's return (or None) and stderr."""
    result = cli("backup", "-s", str(vm.qmp_path), *device, "--into", str(into), "--progress", "none", *arguments)
    reply = json.loads(result.out)["return"] if result.code == 0 else None
    return result.code, reply, result.err


def ok(cli, vm, into: Path, *arguments: str, device: tuple[str, ...] = ("vd0",)) -> dict:
    code, reply, err = backup(cli, vm, into, *arguments, device=device)
    assert code == 0, err
    return reply


def restored(cli, chain: str, target: Path, *arguments: str) -> Path:
    result = cli("restore", chain, str(target), "--progress", "none", *arguments)
    assert result.code == 0, result
    return target


def bitmaps(vm, device: str = "vd0") -> dict[str, dict]:
    with vm.check() as qmp:
        for entry in qmp.cmd("query-block"):
            if entry.get("qdev", "").startswith(f"/machine/peripheral/{device}/"):
                return {bitmap["name"]: bitmap for bitmap in entry["inserted"].get("dirty-bitmaps", [])}
    raise AssertionError(f"no {device}")


def relaunch(vm, how: str, while_down=None) -> None:
    """Stop QEMU cleanly (``quit``) or kill it, then (after ``while_down()``) start it again on the same disk."""
    if how == "quit":
        with vm.check() as qmp:
            qmp.cmd("quit")
        vm.proc.wait(timeout=20)
    else:
        vm.kill()
    if while_down is not None:
        while_down()
    for path in (vm.qmp_path, vm.qmp2_path):
        path.unlink(missing_ok=True)
    vm.proc = subprocess.Popen(vm.command_line(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=open(vm.workdir / "qemu.log", "ab"))
    wait_for_socket(vm.qmp2_path)


def manifest(chain: str) -> dict:
    return json.loads((Path(chain) / "chain.json").read_text())


def test_incremental_holds_what_changed_and_every_point_restores(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="64M")
    write_pattern(vm, [(0x11, 0, MiB)])
    into = tmp_path / "backups"
    full = ok(cli, vm, into)
    assert full["level"] == "full" and "no chain" in full["reason"]
    assert full["image"].endswith("/0001-full.qcow2") and full["bytes"] == 64 * MiB
    write_pattern(vm, [(0x77, 20 * MiB, MiB)])
    incremental = ok(cli, vm, into)
    assert incremental["level"] == "incremental" and incremental["chain"] == full["chain"]
    assert incremental["image"].endswith("/0002-inc.qcow2") and "reason" not in incremental
    assert incremental["bytes"] == MiB  # only the written cluster range was copied
    assert MiB <= Path(incremental["image"]).stat().st_size < 2 * MiB
    write_pattern(vm, [(0x99, 40 * MiB, 256 << 10)])
    last = ok(cli, vm, into)  # the VM is paused (-S): the disk cannot change any more
    latest = restored(cli, full["chain"], tmp_path / "latest.qcow2")
    assert images_identical(vm.disk, latest).stdout.strip() == "Images are identical."
    first = restored(cli, full["chain"], tmp_path / "first.qcow2", "--point", "1")
    assert reads_pattern(first, 0x11, 0, MiB) and not reads_pattern(first, 0x77, 20 * MiB, MiB)
    second = restored(cli, full["chain"], tmp_path / "second.qcow2", "--at",
                      manifest(full["chain"])["images"][1]["started"])
    assert reads_pattern(second, 0x77, 20 * MiB, MiB) and not reads_pattern(second, 0x99, 40 * MiB, 256 << 10)
    listed = manifest(full["chain"])
    assert [image["file"] for image in listed["images"]] == ["0001-full.qcow2", "0002-inc.qcow2", "0003-inc.qcow2"]
    assert listed["device"] == "vd0" and listed["node"] == "disk0" and listed["bitmap"] == last["bitmap"]
    assert listed["size"] == 64 * MiB and listed["qemu"].split(" ")[0].count(".") == 2  # e.g. 7.2.22
    backing = subprocess.run(["qemu-img", "info", "--output", "json", last["image"]], capture_output=True, text=True)
    assert json.loads(backing.stdout)["backing-filename"] == "0002-inc.qcow2"  # relative: the folder can move


def test_restore_never_overwrites_and_force_does(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    chain = ok(cli, vm, tmp_path / "b")["chain"]
    target = tmp_path / "keep.qcow2"
    target.write_bytes(b"precious")
    refused = cli("restore", chain, str(target))
    assert refused.code == 2 and "exists" in refused.err and target.read_bytes() == b"precious"
    assert list(tmp_path.glob(".keep*")) == []
    forced = cli("restore", chain, str(target), "--force", "--progress", "json")
    assert forced.code == 0, forced
    assert images_identical(vm.disk, target).returncode == 0
    last = json.loads(forced.err.splitlines()[-1])  # qemu-img's own progress, in bytes of the disk
    assert (last["status"], last["done"], last["total"]) == ("concluded", 16 * MiB, 16 * MiB)


def test_bitmap_survives_a_clean_restart(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    full = ok(cli, vm, into)
    write_pattern(vm, [(0x42, 3 * MiB, MiB)])
    relaunch(vm, "quit")
    assert bitmaps(vm)[full["bitmap"]]["persistent"]
    incremental = ok(cli, vm, into)
    assert incremental["level"] == "incremental" and incremental["bytes"] == MiB
    assert images_identical(vm.disk, restored(cli, full["chain"], tmp_path / "r.qcow2")).returncode == 0


def test_after_a_kill_the_inconsistent_bitmap_gives_a_new_full_chain(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    full = ok(cli, vm, into)
    relaunch(vm, "quit")  # the bitmap is stored in the image at a clean close, and marked in use at open
    assert not bitmaps(vm)[full["bitmap"]].get("inconsistent")  # the image is open: QEMU answers QMP after that
    relaunch(vm, "kill")
    assert bitmaps(vm)[full["bitmap"]]["inconsistent"]
    again = ok(cli, vm, into)
    assert again["level"] == "full" and "inconsistent" in again["reason"] and again["chain"] != full["chain"]
    assert list(bitmaps(vm)) == [again["bitmap"]]  # the broken one is gone
    assert ok(cli, vm, into)["level"] == "incremental"


def test_a_raw_disk_loses_its_bitmap_at_restart_and_the_next_run_is_full(cli, vm_factory, tmp_path):
    raw = make_image(tmp_path / "disk.raw", "raw", "16M")
    vm = vm_factory(qemu_args_disk=False, extra_args=[
        "-blockdev", f"driver=raw,node-name=disk0,file.driver=file,file.filename={raw}",
        "-device", "virtio-blk-pci,drive=disk0,id=vd0"])
    into = tmp_path / "b"
    full = ok(cli, vm, into)
    assert not bitmaps(vm)[full["bitmap"]]["persistent"]
    assert ok(cli, vm, into)["level"] == "incremental"
    relaunch(vm, "quit")
    again = ok(cli, vm, into)
    assert again["level"] == "full" and "raw disks" in again["reason"]


def test_ctrl_c_mid_incremental_leaves_nothing_and_loses_no_change(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="32M")
    into = tmp_path / "b"
    full = ok(cli, vm, into)
    before = (Path(full["chain"]) / "chain.json").read_bytes()
    write_pattern(vm, [(0x3C, 8 * MiB, 4 * MiB)])
    child = cli.popen("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--speed", "256K",
                      "--progress", "none")
    wait_for_job(vm, "running")
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 130, err
    with vm.check() as qmp:
        assert qmp.cmd("query-jobs") == []
        assert not any(node["node-name"].startswith("chain-") for node in qmp.cmd("query-named-block-nodes"))
    assert sorted(path.name for path in Path(full["chain"]).iterdir()) == ["0001-full.qcow2", "chain.json"]
    assert (Path(full["chain"]) / "chain.json").read_bytes() == before
    assert bitmaps(vm)[full["bitmap"]]["count"] >= 4 * MiB  # on-success: the bitmap kept every bit
    incremental = ok(cli, vm, into)
    assert incremental["level"] == "incremental" and incremental["bytes"] == 4 * MiB
    assert images_identical(vm.disk, restored(cli, full["chain"], tmp_path / "r.qcow2")).returncode == 0


def test_a_second_run_on_the_same_disk_is_busy(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    into.mkdir()
    with open(into / ".vd0.lock", "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        code, _, err = backup(cli, vm, into)
    assert code == 4 and "busy" in err
    assert list(into.iterdir()) == [into / ".vd0.lock"]
    other = tmp_path / "elsewhere"  # another folder, same disk: the job in QEMU says busy
    with vm.check() as qmp:
        qmp.cmd("blockdev-add", driver="null-co", **{"node-name": "chain-vd0-target"})
    code, _, err = backup(cli, vm, other)
    assert code == 4 and "busy" in err and bitmaps(vm) == {}


def test_several_disks_from_one_instant(cli, vm_factory, tmp_path):
    second = make_image(tmp_path / "disk1.qcow2", "qcow2", "16M")
    vm = vm_factory(disk_size="16M", extra_args=[arg.format(image=second) for arg in SECOND_DISK])
    into = tmp_path / "b"
    first = ok(cli, vm, into, device=("vd0", "vd1"))
    assert [disk["level"] for disk in first["disks"]] == ["full", "full"]
    write_pattern(vm, [(0x21, 0, MiB)])
    hmp(vm, 'qemu-io -d /machine/peripheral/vd1/virtio-backend "write -P 0x22 1M 1M"')
    flush(vm, "/machine/peripheral/vd1/virtio-backend")
    then = ok(cli, vm, into, device=("vd0", "vd1"))
    assert [(disk["level"], disk["bytes"]) for disk in then["disks"]] == [("incremental", MiB)] * 2
    for disk, image in zip(then["disks"], (vm.disk, second), strict=True):
        copy = restored(cli, disk["chain"], tmp_path / f"{disk['device']}.qcow2")
        assert images_identical(image, copy).returncode == 0


def test_full_starts_a_new_chain_and_keep_chains_rotates(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    chains = [ok(cli, vm, into, "--full", "--keep-chains", "2")["chain"] for _ in range(3)]
    assert len(set(chains)) == 3
    assert sorted(str(path) for path in into.iterdir() if path.is_dir()) == chains[1:]
    assert list(bitmaps(vm)) == [manifest(chains[-1])["bitmap"]]  # the old chains' bitmaps went with them


def test_no_wait_is_refused_in_chain_mode(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    code, _, err = backup(cli, vm, tmp_path / "b", "--no-wait")
    assert code == 2 and "--no-wait" in err
    assert not (tmp_path / "b").exists()


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as image:
        image.seek(offset)
        byte = image.read(1)
        image.seek(offset)
        image.write(bytes([byte[0] ^ 0xFF]))


def test_backup_verify_names_a_flipped_byte_and_a_deleted_image(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    ok(cli, vm, into)
    write_pattern(vm, [(0x5A, 0, MiB)])
    chain = ok(cli, vm, into)["chain"]
    ok(cli, vm, into)
    good = cli("backup-verify", str(into), "--json")
    assert good.code == 0, good
    assert [json.loads(line)["ok"] for line in good.out.splitlines()] == [True, True, True]
    flip_byte(Path(chain) / "0002-inc.qcow2", 5 * (64 << 10) + 100)  # inside a data cluster
    flipped = cli("backup-verify", str(into))
    assert flipped.code == 6 and "0002-inc.qcow2" in flipped.err and "sha256" in flipped.err, flipped
    flip_byte(Path(chain) / "0002-inc.qcow2", 5 * (64 << 10) + 100)
    (Path(chain) / "0003-inc.qcow2").unlink()
    deleted = cli("backup-verify", chain)
    assert deleted.code == 6 and "0003-inc.qcow2" in deleted.err and "missing" in deleted.err, deleted
    refused = cli("restore", chain, str(tmp_path / "r.qcow2"))
    assert refused.code == 6 and not (tmp_path / "r.qcow2").exists()


@pytest.mark.libvirt
def test_a_chain_through_libvirt(cli, domain, tmp_path):
    """QEMU runs as libvirt-qemu there: the images qmpctl creates belong to the owner of DIR, which QEMU can write."""
    disk = [entry for entry in json.loads(domain.monitor('{"execute":"query-block"}').stdout)["return"]
            if entry["inserted"]["file"] == str(domain.disk)][0]
    device_id = disk["qdev"].split("/")[3]  # /machine/peripheral/virtio-disk0/virtio-backend
    into = domain.qemu_folder("chains")
    full = ok_domain(cli, domain, device_id, into)
    domain.monitor("--hmp", f'qemu-io -d {disk["qdev"]} "write -P 0x6b 2M 1M"')
    domain.monitor("--hmp", f'qemu-io -d {disk["qdev"]} "flush"')
    incremental = ok_domain(cli, domain, device_id, into)
    assert (full["level"], incremental["level"], incremental["bytes"]) == ("full", "incremental", MiB)
    restored_image = restored(cli, full["chain"], tmp_path / "r.qcow2")
    assert reads_pattern(restored_image, 0x6b, 2 * MiB, MiB)
    assert images_identical(domain.disk, restored_image).returncode == 0


def ok_domain(cli, domain, device_id: str, into: Path) -> dict:
    result = cli("backup", "--domain", domain.name, device_id, "--into", str(into), "--progress", "none")
    assert result.code == 0, result
    return json.loads(result.out)["return"]


MISUSE = {
    "chain options without --into": (["vd0", "{tmp}/t.qcow2", "--full"], "only with --into"),
    "freeze without --into": (["vd0", "{tmp}/t.qcow2", "--freeze", "-a", "{tmp}/qga.sock"], "only with --into"),
    "three words without --into": (["vd0", "vd1", "{tmp}/t.qcow2"], "give DEVICE TARGET"),
    "single-backup options with --into": (["vd0", "--into", "{tmp}/b", "--sync", "top"], "not with --into"),
    "no-wait with --into": (["vd0", "--into", "{tmp}/b", "--no-wait"], "--no-wait"),
    "a disk twice": (["vd0", "vd0", "--into", "{tmp}/b"], "once"),
    "keep no chain": (["vd0", "--into", "{tmp}/b", "--keep-chains", "0"], "--keep-chains"),
    "into a missing folder's child": (["vd0", "--into", "{tmp}/no/such/b"], "does not exist"),
}


@pytest.mark.parametrize("case", MISUSE)
def test_misuse_is_exit_2_before_connecting(cli, tmp_path, case):
    arguments, message = MISUSE[case]
    result = cli("backup", "-s", str(tmp_path / "absent.sock"), *(a.format(tmp=tmp_path) for a in arguments))
    assert result.code == 2 and message in result.err, result
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_dry_run_shows_the_transaction_and_creates_nothing(cli, tmp_path):
    result = cli("backup", "--dry-run", "-s", str(tmp_path / "absent.sock"), "vd0", "vd1", "--into",
                 str(tmp_path / "b"))
    assert result.code == 0, result
    shown = json.loads(result.out)
    bitmaps, jobs = shown["plan"]
    assert "a plan" in shown["note"] and "qemu-img formats" in shown["note"]
    assert [action["type"] for action in bitmaps["arguments"]["actions"]] == ["block-dirty-bitmap-add"] * 2
    assert [action["type"] for action in jobs["arguments"]["actions"]] == ["blockdev-backup"] * 2
    assert jobs["arguments"]["properties"] == {"completion-mode": "grouped"}  # QEMU refuses bitmaps in those
    assert not (tmp_path / "b").exists()


FAILING_DISK = ["-blockdev", json.dumps({"driver": "raw", "node-name": "bad", "file": {
    "driver": "blkdebug", "inject-error": [{"event": "read_aio", "errno": 5}],
    "image": {"driver": "null-co", "size": 8 << 20}}})]


def test_several_disks_fail_together_and_leave_nothing(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M", extra_args=FAILING_DISK)
    into = tmp_path / "b"
    before = block_state(vm)
    code, _, err = backup(cli, vm, into, device=("vd0", "bad"))
    assert code == 6 and "failed" in err and "Input/output error" in err, err
    assert sorted(path.name for path in into.iterdir()) == [".bad.lock", ".vd0.lock"]  # no chain, no image
    assert bitmaps(vm) == {}  # the new bitmaps went with the failed run
    assert block_state(vm) == before  # no job, no target node
    assert "the jobs of vd0, started with it, were cancelled" in err
    assert ok(cli, vm, into)["level"] == "full"


def test_wait_timeout_cancels_the_incremental_and_the_next_run_catches_up(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    full = ok(cli, vm, into)
    write_pattern(vm, [(0x4D, 2 * MiB, 2 * MiB)])
    code, _, err = backup(cli, vm, into, "--speed", "64K", "--wait-timeout", "1")
    assert code == 4 and "--wait-timeout" in err and "removed the incomplete" in err, err
    assert [image["file"] for image in manifest(full["chain"])["images"]] == ["0001-full.qcow2"]
    assert ok(cli, vm, into)["bytes"] == 2 * MiB


def test_a_killed_run_whose_job_completed_later_is_cleaned_up_and_the_chain_goes_on(cli, vm_factory, tmp_path):
    """QEMU finishes a job qmpctl no longer waits for: it never cleared the bitmap it copied, so the chain goes on."""
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    full = ok(cli, vm, into)
    write_pattern(vm, [(0x6E, 4 * MiB, 2 * MiB)])
    child = cli.popen("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--speed", "64K",
                      "--progress", "none")
    job = wait_for_job(vm, "running")
    child.kill()
    child.wait(timeout=10)
    with vm.check() as qmp:
        qmp.cmd("block-job-set-speed", device=job["id"], speed=0)
    wait_for_job(vm, "concluded")
    again = ok(cli, vm, into)  # nobody holds the lock in DIR: the job is the killed qmpctl's, cleaned up
    assert again["level"] == "incremental" and again["chain"] == full["chain"] and again["bytes"] == 2 * MiB, again
    assert any("dismissed job chain-vd0" in warning for warning in again["warnings"]), again
    assert any("unrecorded image" in warning for warning in again["warnings"]), again
    with vm.check() as qmp:
        assert qmp.cmd("query-jobs") == []
        assert not any(node["node-name"].startswith("chain-") for node in qmp.cmd("query-named-block-nodes"))
    assert list(bitmaps(vm)) == [again["bitmap"]]
    assert images_identical(vm.disk, restored(cli, again["chain"], tmp_path / "r.qcow2")).returncode == 0


def test_after_a_kill_9_mid_job_the_next_unchanged_run_succeeds(cli, vm_factory, tmp_path):
    """No `jobs --dismiss` by hand: the next cron run finds the job of a qmpctl that no longer holds DIR's lock."""
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    full = ok(cli, vm, into)
    write_pattern(vm, [(0x2F, 2 * MiB, 2 * MiB)])
    child = cli.popen("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--speed", "64K",
                      "--progress", "none")
    wait_for_job(vm, "running")
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert (Path(full["chain"]) / "0002-inc.qcow2").exists()  # the killed run's image, not in the manifest
    write_pattern(vm, [(0x30, 10 * MiB, MiB)])
    again = ok(cli, vm, into)
    assert again["level"] == "incremental" and again["chain"] == full["chain"], again
    assert again["bytes"] == 3 * MiB  # the bitmap the killed job read still holds every change
    assert any("cancelled job chain-vd0" in warning for warning in again["warnings"]), again
    assert block_state(vm)["jobs"] == []
    assert sorted(path.name for path in Path(full["chain"]).iterdir()) == [
        "0001-full.qcow2", "0002-inc.qcow2", "chain.json"]
    assert list(bitmaps(vm)) == [again["bitmap"]]
    assert images_identical(vm.disk, restored(cli, again["chain"], tmp_path / "r.qcow2")).returncode == 0
    assert ok(cli, vm, into)["bytes"] == 0


def test_a_killed_first_run_leaves_the_chain_going_and_its_bitmap_is_removed(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    full = ok(cli, vm, into)
    write_pattern(vm, [(0x71, 0, MiB)])
    child = cli.popen("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--full", "--speed", "64K",
                      "--progress", "none")
    job = wait_for_job(vm, "running")
    child.kill()
    child.wait(timeout=10)
    assert cli("jobs", "-s", str(vm.qmp_path), "--cancel", job["id"]).code == 0
    assert len(bitmaps(vm)) == 2  # the old chain's, and the one of the full that never finished
    then = ok(cli, vm, into)
    assert then["level"] == "incremental" and then["chain"] == full["chain"] and then["bytes"] == MiB
    assert list(bitmaps(vm)) == [then["bitmap"]]  # the chain's current one only
    assert any("never got a manifest" in warning for warning in then["warnings"])


def test_a_disk_put_back_from_an_older_copy_starts_a_new_chain_not_a_wrong_incremental(cli, vm_factory, tmp_path):
    """The copy carries the chain's bitmap as it was: only a bitmap per backup tells it from the disk of today."""
    vm = vm_factory(disk_size="16M")
    into, aside = tmp_path / "b", tmp_path / "aside.qcow2"
    full = ok(cli, vm, into)
    relaunch(vm, "quit", lambda: shutil.copy(vm.disk, aside))
    write_pattern(vm, [(0x41, 2 * MiB, MiB)])
    assert ok(cli, vm, into)["level"] == "incremental"
    relaunch(vm, "quit", lambda: shutil.copy(aside, vm.disk))
    write_pattern(vm, [(0x42, 6 * MiB, MiB)])
    again = ok(cli, vm, into)
    assert again["level"] == "full" and "older copy" in again["reason"], again
    assert again["chain"] != full["chain"]
    assert images_identical(vm.disk, restored(cli, again["chain"], tmp_path / "r.qcow2")).returncode == 0
    assert list(bitmaps(vm)) == [again["bitmap"]]  # the copy's stale bitmap of the first chain is gone
    assert [image["bitmap"] for image in manifest(again["chain"])["images"]] == [again["bitmap"]]


def test_a_disk_file_replaced_while_qemu_is_down_is_seen_and_every_point_restores(cli, vm_factory, tmp_path):
    """A copy taken between two incrementals, put back after the second: its bitmap is the chain's, but not the
    last one the chain recorded."""
    vm = vm_factory(disk_size="16M")
    into, aside, points = tmp_path / "b", tmp_path / "aside.qcow2", []

    def backed_up(*arguments: str) -> dict:
        reply = ok(cli, vm, into, *arguments)
        copy = tmp_path / f"point{len(points)}.qcow2"
        subprocess.run(["qemu-img", "convert", "-U", "-O", "qcow2", str(vm.disk), str(copy)], check=True)
        points.append((reply, copy))
        return reply

    full = backed_up()
    write_pattern(vm, [(0x51, 0, MiB)])
    assert backed_up()["level"] == "incremental"
    relaunch(vm, "quit", lambda: shutil.copy(vm.disk, aside))
    write_pattern(vm, [(0x52, 4 * MiB, MiB)])
    assert backed_up()["level"] == "incremental"
    relaunch(vm, "quit", lambda: shutil.copy(aside, vm.disk))
    write_pattern(vm, [(0x53, 8 * MiB, MiB)])
    again = backed_up()
    assert again["level"] == "full" and "older copy" in again["reason"], again
    write_pattern(vm, [(0x54, 12 * MiB, MiB)])
    assert backed_up()["level"] == "incremental"
    for reply, copy in points:
        chain = manifest(reply["chain"])
        number = [image["file"] for image in chain["images"]].index(Path(reply["image"]).name) + 1
        point = restored(cli, reply["chain"], tmp_path / f"r{len(list(tmp_path.iterdir()))}.qcow2", "--point",
                         str(number))
        assert images_identical(copy, point).returncode == 0, (reply, full)


def test_a_chain_of_the_previous_version_never_gets_a_wrong_incremental(cli, vm_factory, tmp_path):
    """One bitmap named after the chain, no bitmap in the entries: a new full with a reason, the old bitmap gone."""
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    full = ok(cli, vm, into)
    old = manifest(full["chain"])
    old_bitmap = f"qmpctl-{old['chain']}"
    with vm.check() as qmp:
        qmp.cmd("block-dirty-bitmap-remove", node="disk0", name=full["bitmap"])
        qmp.cmd("block-dirty-bitmap-add", node="disk0", name=old_bitmap, persistent=True)
    for key in ("id", "folder-tag"):
        del old[key]
    old.update({"version": 1, "bitmap": old_bitmap})
    for image in old["images"]:
        del image["bitmap"]
    (Path(full["chain"]) / "chain.json").write_text(json.dumps(old))
    write_pattern(vm, [(0x61, 0, MiB)])
    again = ok(cli, vm, into)
    assert again["level"] == "full" and "earlier qmpctl" in again["reason"], again
    assert list(bitmaps(vm)) == [again["bitmap"]]
    assert images_identical(vm.disk, restored(cli, again["chain"], tmp_path / "r.qcow2")).returncode == 0
    assert ok(cli, vm, into)["level"] == "incremental"


def test_progress_json_ends_with_the_jobs_end_and_its_outcome(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M", extra_args=FAILING_DISK)
    into = tmp_path / "b"
    done = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--progress", "json")
    assert done.code == 0, done
    last = json.loads(done.err.splitlines()[-1])
    assert (last["job-id"], last["status"], last["outcome"]) == ("chain-vd0", "concluded", "completed"), last
    assert last["done"] == last["total"] == 16 * MiB and last["eta"] == 0
    failed = cli("backup", "-s", str(vm.qmp_path), "bad", "--into", str(into), "--progress", "json")
    assert failed.code == 6, failed
    end = json.loads([line for line in failed.err.splitlines() if line.startswith("{")][-1])
    assert (end["job-id"], end["status"], end["outcome"]) == ("chain-bad", "concluded", "failed"), end
    assert "Input/output error" in end["error"]
    write_pattern(vm, [(0x33, 0, 4 * MiB)])
    child = cli.popen("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--speed", "256K",
                      "--progress", "json")
    wait_for_job(vm, "running")
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 130, err
    end = json.loads([line for line in err.decode().splitlines() if line.startswith("{")][-1])
    assert (end["status"], end["outcome"]) == ("concluded", "cancelled"), end


def test_a_first_full_killed_before_its_manifest_leaves_no_folder_behind(cli, vm_factory, tmp_path):
    """The folder's marker, written first, proves qmpctl made it: the next run removes it; a folder without is
    never touched."""
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    into.mkdir()
    (into / "20200101T000000Z").mkdir()
    (into / "20200101T000000Z" / "0001-full.qcow2").write_bytes(b"not qmpctl's")
    child = cli.popen("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--speed", "64K",
                      "--progress", "none")
    wait_for_job(vm, "running")
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    killed = [path for path in into.iterdir() if path.is_dir() and path.name != "20200101T000000Z"]
    assert len(killed) == 1 and not (killed[0] / "chain.json").exists()
    assert (killed[0] / ".qmpctl-new-chain").read_text().splitlines()[0] == "vd0"
    again = ok(cli, vm, into)
    assert again["level"] == "full" and "no chain of vd0" in again["reason"], again
    assert not killed[0].exists() or Path(again["chain"]) == killed[0]
    assert any("killed before it wrote the chain's manifest" in warning for warning in again["warnings"]), again
    assert sorted(path.name for path in into.iterdir() if path.is_dir()) == sorted(
        ["20200101T000000Z", Path(again["chain"]).name])
    assert (into / "20200101T000000Z" / "0001-full.qcow2").read_bytes() == b"not qmpctl's"
    assert sorted(path.name for path in Path(again["chain"]).iterdir()) == ["0001-full.qcow2", "chain.json"]
    assert list(bitmaps(vm)) == [again["bitmap"]] and block_state(vm)["jobs"] == []
    assert images_identical(vm.disk, restored(cli, again["chain"], tmp_path / "r.qcow2")).returncode == 0


def test_bitmaps_never_pile_up_and_another_dirs_or_tools_are_kept(cli, vm_factory, tmp_path):
    """A local and an off-site DIR on one disk: each run removes only its own DIR's bitmaps of gone chains."""
    vm = vm_factory(disk_size="16M")
    local, offsite = tmp_path / "local", tmp_path / "offsite"
    with vm.check() as qmp:
        qmp.cmd("block-dirty-bitmap-add", node="disk0", name="other-tool", persistent=True)
        qmp.cmd("block-dirty-bitmap-add", node="disk0", name="qmpctl-not-ours", persistent=True)
    strangers = {"other-tool", "qmpctl-not-ours"}

    def current() -> set[str]:
        return {manifest(chain)["bitmap"] for chain in (ok_last(local), ok_last(offsite)) if chain}

    def ok_last(into: Path) -> str | None:
        chains = sorted(path.parent.name for path in into.glob("*/chain.json")) if into.exists() else []
        return str(into / chains[-1]) if chains else None

    for _ in range(2):
        for into in (local, offsite):
            write_pattern(vm, [(0x10, 0, MiB)])
            ok(cli, vm, into)
    assert set(bitmaps(vm)) == current() | strangers and len(current()) == 2
    shutil.rmtree(ok_last(local))  # the local chain deleted by hand
    ok(cli, vm, offsite)  # the off-site DIR cannot know: the local chain's bitmap stays
    assert len(set(bitmaps(vm)) - strangers) == 2
    again = ok(cli, vm, local)
    assert again["level"] == "full" and set(bitmaps(vm)) == current() | strangers, bitmaps(vm)
    assert any("its chain is gone" in warning for warning in again["warnings"]), again
    for _ in range(3):  # rotated chains, and chains replaced by a new full
        ok(cli, vm, local, "--full", "--keep-chains", "1")
        ok(cli, vm, offsite, "--full")
    assert len(list(local.glob("*/chain.json"))) == 1 and len(list(offsite.glob("*/chain.json"))) == 4
    assert set(bitmaps(vm)) == current() | strangers, bitmaps(vm)
    last = ok(cli, vm, offsite)
    assert last["level"] == "incremental"
    assert images_identical(vm.disk, restored(cli, last["chain"], tmp_path / "r.qcow2")).returncode == 0


def named_node(vm, name: str) -> dict:
    with vm.check() as qmp:
        return next(node for node in qmp.cmd("query-named-block-nodes") if node["node-name"] == name)


def test_a_name_qemu_made_up_is_refused_naming_the_disks_stable_names(cli, vm_factory, tmp_path):
    second = make_image(tmp_path / "disk1.qcow2", "qcow2", "16M")
    vm = vm_factory(disk_size="16M", extra_args=[
        "-drive", f"file={second},format=qcow2,if=none,id=drive1", "-device", "virtio-blk-pci,drive=drive1,id=vd1"])
    with vm.check() as qmp:
        drives = {entry["device"]: entry["inserted"]["node-name"] for entry in qmp.cmd("query-block")}
        under = [node["node-name"] for node in qmp.cmd("query-named-block-nodes")
                 if node["drv"] == "file" and node["file"] == str(vm.disk)]
    assert drives["drive1"].startswith("#") and under[0].startswith("#")
    into = tmp_path / "b"
    for made_up, names in ((drives["drive1"], ("vd1", "/machine/peripheral/vd1", "drive1")),
                           (under[0], ("vd0", "/machine/peripheral/vd0", "disk0"))):
        code, _, err = backup(cli, vm, into, device=(made_up,))
        assert code == 2 and "QEMU made up" in err and all(name in err for name in names), err
    assert not into.exists() and bitmaps(vm) == {}
    assert ok(cli, vm, into, device=("drive1",))["level"] == "full"


def test_two_names_of_one_disk_are_one_chain_and_a_qom_path_finds_a_disk_without_id(cli, vm_factory, tmp_path):
    third = make_image(tmp_path / "disk2.qcow2", "qcow2", "16M")
    vm = vm_factory(disk_size="16M", extra_args=scsi_hd_args(third, "disk2"))
    into = tmp_path / "b"
    full = ok(cli, vm, into)
    for alias in ("disk0", "/machine/peripheral/vd0/virtio-backend", "/machine/peripheral/vd0"):
        write_pattern(vm, [(0x44, 0, MiB)])
        again = ok(cli, vm, into, device=(alias,))
        assert (again["level"], again["chain"], again["bytes"]) == ("incremental", full["chain"], MiB), again
    assert list(bitmaps(vm)) == [again["bitmap"]]
    code, _, err = backup(cli, vm, into, device=("vd0", "disk0"))
    assert code == 2 and "same disk" in err, err
    anonymous = "/machine/peripheral-anon/device[0]"
    first = ok(cli, vm, into, device=(anonymous,))
    hmp(vm, f'qemu-io -d {anonymous} "write -P 0x45 2M 1M"')
    flush(vm, anonymous)
    then = ok(cli, vm, into, device=("disk2",))
    assert (first["level"], then["level"], then["chain"], then["bytes"]) == ("full", "incremental", first["chain"], MiB)
    assert images_identical(third, restored(cli, then["chain"], tmp_path / "r.qcow2")).returncode == 0


def test_under_a_throttle_filter_the_bitmap_is_persistent_on_the_format_node(cli, vm_factory, tmp_path):
    vm = throttled_vm(vm_factory, tmp_path)
    image = vm.disk
    into = tmp_path / "b"
    full = ok(cli, vm, into)
    assert [(b["name"], b["persistent"]) for b in named_node(vm, "disk0")["dirty-bitmaps"]] == [(full["bitmap"], True)]
    assert "dirty-bitmaps" not in named_node(vm, "thr0") or named_node(vm, "thr0")["dirty-bitmaps"] == []
    write_pattern(vm, [(0x46, 4 * MiB, MiB)])
    relaunch(vm, "quit")
    again = ok(cli, vm, into)
    assert (again["level"], again["chain"], again["bytes"]) == ("incremental", full["chain"], MiB), again
    assert images_identical(image, restored(cli, again["chain"], tmp_path / "r.qcow2")).returncode == 0


def test_another_tools_backup_filter_makes_the_run_busy(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    full = ok(cli, vm, into)
    scratch = make_image(tmp_path / "fleece.qcow2", "qcow2", "16M")
    with vm.check() as qmp:
        qmp.cmd("blockdev-add", driver="qcow2", **{"node-name": "fl-tmp"},
                file={"driver": "file", "filename": str(scratch)})
        qmp.cmd("blockdev-add", driver="copy-before-write", **{"node-name": "fl-cbw"}, file="disk0", target="fl-tmp")
        qmp.cmd("qom-set", path="/machine/peripheral/vd0/virtio-backend", property="drive", value="fl-cbw")
    before = bitmaps_of_node(vm)
    code, _, err = backup(cli, vm, into)
    assert code == 4 and "fl-cbw" in err and "another tool" in err, err
    assert bitmaps_of_node(vm) == before and [image["file"] for image in manifest(full["chain"])["images"]] == [
        "0001-full.qcow2"]
    with vm.check() as qmp:
        qmp.cmd("qom-set", path="/machine/peripheral/vd0/virtio-backend", property="drive", value="disk0")
        qmp.cmd("blockdev-del", **{"node-name": "fl-cbw"})
        qmp.cmd("blockdev-del", **{"node-name": "fl-tmp"})
    assert ok(cli, vm, into)["level"] == "incremental"


def bitmaps_of_node(vm, node: str = "disk0") -> list[str]:
    return [bitmap.get("name", "") for bitmap in named_node(vm, node).get("dirty-bitmaps", [])]


@pytest.mark.libvirt
@pytest.mark.one_qemu
def test_a_fleet_names_a_libvirt_vm_after_its_domain(cli, domain, vm_factory, tmp_path):
    local = vm_factory(disk_size="16M")  # no -name: named after its socket, qmp.sock
    into = domain.qemu_folder("fleet")
    result = cli("backup", "-d", domain.name, "-s", str(local.qmp_path), "--into", str(into), "--progress", "none")
    assert result.code == 0, result.out
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert [line["return"]["vm"] for line in lines] == ["qmp", domain.name]  # sockets first, then domains
    for line in lines:
        chain = line["return"]["disks"][0]["chain"]
        assert Path(chain).parent == into / line["return"]["vm"] and manifest(chain)["images"][0]["level"] == "full"
