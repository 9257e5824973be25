"""restore CHAIN --instant TARGET, then stream: a VM runs on a backup at once and ends up on a standalone disk."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from pathlib import Path

import pytest

from support.disks import wait_for_job, write_pattern
from support.waits import interrupt_twice

pytestmark = pytest.mark.qemu

MiB = 1 << 20


def chain_with_data(cli, vm, into: Path, megabytes: int = 4) -> str:
    """A chain of two backups: ``megabytes`` MiB of 0x11 at 0, then 1 MiB of 0x77 at 20 MiB."""
    write_pattern(vm, [(0x11, 0, megabytes * MiB)])
    first = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--progress", "none")
    assert first.code == 0, first
    write_pattern(vm, [(0x77, 20 * MiB, MiB)])
    second = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--progress", "none")
    assert second.code == 0, second
    return json.loads(first.out)["return"]["chain"]


def sums(chain: str) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(Path(chain).iterdir())
            if path.suffix == ".qcow2"}


def info(qemu_build, image: Path) -> dict:
    done = subprocess.run([qemu_build.qemu_img, "info", "-U", "--output", "json", str(image)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)


def on_overlay(vm_factory, overlay: Path):
    """A VM whose disk vd0 is ``overlay`` (started paused: the guest cannot write, the disk only by the job)."""
    return vm_factory(qemu_args_disk=False, extra_args=[
        "-blockdev", f"driver=qcow2,node-name=disk0,file.driver=file,file.filename={overlay}",
        "-device", "virtio-blk-pci,drive=disk0,id=vd0"])


def instant(cli, qemu_build, chain: str, target: Path, *arguments: str) -> dict:
    made = cli("restore", chain, "--instant", str(target), *arguments, env=qemu_build.tools_env())
    assert made.code == 0, made
    return json.loads(made.out)["return"]


def test_instant_boot_then_stream_gives_the_point_standalone(cli, vm_factory, qemu_build, tmp_path):
    source = vm_factory(disk_size="32M")
    chain = chain_with_data(cli, source, tmp_path / "b")
    before = sums(chain)
    expected = tmp_path / "expected.qcow2"
    restored = cli("restore", chain, str(expected), "--progress", "none")
    assert restored.code == 0, restored
    overlay = tmp_path / "run" / "vd0.qcow2"
    overlay.parent.mkdir()
    made = instant(cli, qemu_build, chain, overlay)
    assert made["seconds"] < 1 and made["point"] == 2 and made["target"] == str(overlay)
    assert info(qemu_build, overlay)["full-backing-filename"] == str(Path(chain) / "0002-inc.qcow2")
    assert overlay.stat().st_size < MiB  # thin: whatever the disk's size
    reference = Path(made["reference"])
    assert reference.parent == Path(chain) and json.loads(reference.read_text())["target"] == str(overlay)
    vm = on_overlay(vm_factory, overlay)
    streamed = cli("stream", "-s", str(vm.qmp_path), "vd0", "--progress", "none")
    assert streamed.code == 0, streamed
    done = json.loads(streamed.out)["return"]
    assert done["standalone"] is True and done["bytes"] == 32 * MiB and done["released"] == str(reference)
    assert vm.alive()
    assert "backing-filename" not in info(qemu_build, overlay)  # on the host's disk while the VM still runs
    compared = subprocess.run([qemu_build.qemu_img, "compare", "-U", str(expected), str(overlay)],
                              capture_output=True, text=True)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert not reference.exists() and sums(chain) == before
    with vm.check() as qmp:
        assert qmp.cmd("query-jobs") == []
    again = cli("stream", "-s", str(vm.qmp_path), "vd0")
    assert again.code == 0 and json.loads(again.out)["return"]["bytes"] == 0, again


def test_ctrl_c_mid_stream_cancels_and_stream_again_finishes(cli, vm_factory, qemu_build, tmp_path):
    source = vm_factory(disk_size="32M")
    chain = chain_with_data(cli, source, tmp_path / "b", megabytes=16)
    before = sums(chain)
    overlay = tmp_path / "vd0.qcow2"
    instant(cli, qemu_build, chain, overlay, "--point", "1")
    vm = on_overlay(vm_factory, overlay)
    child = cli.popen("stream", "-s", str(vm.qmp_path), "vd0", "--speed", "1M", "--progress", "none")
    wait_for_job(vm, "running", job_type="stream")
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert b"stream again" in err
    assert vm.alive()
    with vm.check() as qmp:
        assert qmp.cmd("query-jobs") == []
        assert qmp.cmd("query-status")["status"] in ("prelaunch", "paused", "running")
    assert info(qemu_build, overlay)["full-backing-filename"] == str(Path(chain) / "0001-full.qcow2")
    started = cli("stream", "-s", str(vm.qmp_path), "vd0", "--no-wait")
    assert started.code == 0 and json.loads(started.out)["return"]["job-id"] == "stream-vd0", started
    listed = cli("jobs", "-s", str(vm.qmp_path), "--return-value")
    assert "stream-vd0" in listed.out, listed
    finished = cli("stream", "-s", str(vm.qmp_path), "vd0", "--progress", "none")
    assert finished.code == 0, finished
    assert json.loads(finished.out)["return"]["resumed"] is True
    assert "backing-filename" not in info(qemu_build, overlay)
    expected = tmp_path / "expected.qcow2"
    assert cli("restore", chain, str(expected), "--point", "1", "--progress", "none").code == 0
    compared = subprocess.run([qemu_build.qemu_img, "compare", "-U", str(expected), str(overlay)],
                              capture_output=True, text=True)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert sums(chain) == before


def test_ctrl_c_twice_mid_stream_leaves_no_job_and_the_vm_on_its_overlay(cli, vm_factory, qemu_build, tmp_path):
    source = vm_factory(disk_size="32M")
    chain = chain_with_data(cli, source, tmp_path / "b", megabytes=16)
    overlay = tmp_path / "vd0.qcow2"
    made = instant(cli, qemu_build, chain, overlay)
    vm = on_overlay(vm_factory, overlay)
    child = cli.popen("stream", "-s", str(vm.qmp_path), "vd0", "--speed", "1M", "--progress", "none")
    wait_for_job(vm, "running", job_type="stream")
    interrupt_twice(child)  # the second lands while the first one's cleanup runs
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert b"cancelled" in err and b"stream again" in err
    assert vm.alive()
    with vm.check() as qmp:
        assert qmp.cmd("query-jobs") == []
        assert qmp.cmd("query-status")["status"] in ("prelaunch", "paused", "running")
        disk = [entry for entry in qmp.cmd("query-block") if entry.get("inserted")][0]["inserted"]
        assert disk["image"]["filename"] == str(overlay)  # still on its overlay, never switched or closed
    assert info(qemu_build, overlay)["full-backing-filename"] == str(Path(chain) / "0002-inc.qcow2")
    assert Path(made["reference"]).exists()  # the overlay still needs the chain: it stays held


@pytest.mark.one_qemu
def test_rotation_keeps_a_chain_an_overlay_depends_on(cli, vm_factory, qemu_build, tmp_path):
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    first = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--progress", "none")
    assert first.code == 0, first
    old = json.loads(first.out)["return"]["chain"]
    overlay = tmp_path / "vd0.qcow2"
    instant(cli, qemu_build, old, overlay)
    for _ in range(2):
        rotated = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--full", "--keep-chains", "1",
                      "--progress", "none")
        assert rotated.code == 0, rotated
    assert Path(old).is_dir() and "instant restore" in rotated.out
    assert sorted(path.name for path in into.iterdir() if path.is_dir() and path.name != old) != []
    assert len([path for path in into.iterdir() if path.is_dir()]) == 2  # the held one and the current one
    assert cli("backup-verify", str(into)).code == 0  # a reference file is no stray image


@pytest.mark.one_qemu
def test_instant_reads_no_data_unless_verify_and_verify_finds_a_flipped_byte(cli, vm_factory, qemu_build, tmp_path):
    """A byte of the full image flipped (its size, metadata and backing unchanged): only the sha256 tells."""
    vm = vm_factory(disk_size="32M")
    chain = chain_with_data(cli, vm, tmp_path / "b")
    full = Path(chain) / "0001-full.qcow2"
    data = bytearray(full.read_bytes())
    offset = len(data) - 4096  # inside the last cluster of guest data, far from the qcow2 header
    data[offset] ^= 0x01
    full.write_bytes(bytes(data))
    quick = instant(cli, qemu_build, chain, tmp_path / "quick.qcow2")
    assert quick["checksums"].startswith("not read") and quick["seconds"] < 1, quick
    checked = cli("restore", chain, "--instant", str(tmp_path / "checked.qcow2"), "--verify",
                  env=qemu_build.tools_env())
    assert checked.code == 6 and "sha256 differs" in checked.err, checked
    assert not (tmp_path / "checked.qcow2").exists()
    wrong = cli("restore", chain, str(tmp_path / "t.qcow2"), "--verify")
    assert wrong.code == 2 and "--verify goes with --instant" in wrong.err, wrong


@pytest.mark.one_qemu
def test_instant_never_overwrites(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    made = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(tmp_path / "b"), "--progress", "none")
    chain = json.loads(made.out)["return"]["chain"]
    target = tmp_path / "keep.qcow2"
    target.write_bytes(b"precious")
    refused = cli("restore", chain, "--instant", str(target))
    assert refused.code == 2 and "exists" in refused.err and target.read_bytes() == b"precious"
    assert list(tmp_path.glob(".keep*")) == [] and not list(Path(chain).glob("instant-*"))
    both = cli("restore", chain, "--instant", str(tmp_path / "x.qcow2"), "--serve", f"unix:{tmp_path}/s")
    assert both.code == 2 and "not several" in both.err
