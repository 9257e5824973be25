"""A full disk where qmpctl writes: exit code, nothing half-written left behind, the VM as it was.

Each test points qmpctl at a small tmpfs mounted for it (root only; CI runs
as root), so the filesystem really fills up: QEMU's writes of a backup or a
saved state, or qmpctl's own writes of a copied file, fail with ENOSPC.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import pytest

from support.disks import block_state, mounted_tmpfs, write_pattern
from support.qga import HostAgent, have_qemu_ga

pytestmark = [pytest.mark.qemu, pytest.mark.one_qemu]

DATA = [(0x5A, 0, 4 << 20), (0xA5, 16 << 20, 4 << 20)]
"""8 MiB of data on the 64 MiB disk: more than the small filesystem holds."""


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted afterwards."""
    yield from mounted_tmpfs(tmp_path / "small", "1m")


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: less than even an idle VM's saved state (about 760 KiB at 64 MiB of RAM)."""
    yield from mounted_tmpfs(tmp_path / "tiny", "256k")


def entries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_a_backup_that_fills_the_disk_fails_and_leaves_no_file_and_no_job(cli, vm, small_fs):
    write_pattern(vm, DATA)
    before = block_state(vm)
    result = cli("backup", "-s", str(vm.qmp_path), "vd0", str(small_fs / "vd0.qcow2"), "--progress", "none")
    assert result.code == 6, result
    assert "No space left on device" in result.err, result
    assert entries(small_fs) == []  # the partial target qmpctl created is gone
    assert block_state(vm) == before  # no job, no target node


def test_a_chain_whose_first_image_fills_the_disk_leaves_no_chain_no_bitmap_no_job(cli, vm, small_fs):
    write_pattern(vm, DATA)
    before = block_state(vm)
    result = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(small_fs), "--progress", "none")
    assert result.code == 6, result
    assert "No space left on device" in result.err, result
    assert [name for name in entries(small_fs) if not name.startswith(".")] == []  # no chain folder, no image
    assert block_state(vm) == before
    with vm.check() as qmp:
        [disk] = [d for d in qmp.cmd("query-block") if d["qdev"].endswith("vd0/virtio-backend")]
    assert disk["inserted"].get("dirty-bitmaps", []) == []  # the new chain's bitmap was taken back


def test_an_incremental_that_fills_the_disk_keeps_the_chain_and_its_bitmap(cli, vm, tmp_path, small_fs):
    """The full fits; the next run's image does not: the chain stays as it was and the next run goes on."""
    into = small_fs / "chains"
    write_pattern(vm, [(0x11, 0, 128 << 10)])
    first = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--progress", "none")
    assert first.code == 0, first
    chain = Path(json.loads(first.out)["return"]["chain"])
    manifest = (chain / "chain.json").read_bytes()
    write_pattern(vm, DATA)
    second = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--progress", "none")
    assert second.code == 6, second
    assert (chain / "chain.json").read_bytes() == manifest
    assert entries(chain) == ["0001-full.qcow2", "chain.json"]
    with vm.check() as qmp:
        assert qmp.cmd("query-jobs") == []
        [disk] = [d for d in qmp.cmd("query-block") if d["qdev"].endswith("vd0/virtio-backend")]
    bitmap = json.loads(manifest)["bitmap"]
    assert [b["name"] for b in disk["inserted"]["dirty-bitmaps"]] == [bitmap]  # kept, with every bit


def test_saving_the_state_onto_a_full_disk_resumes_the_vm_and_leaves_no_file(cli, vm_factory, tiny_fs):
    vm = vm_factory(paused=False)
    result = cli("migrate", "-s", str(vm.qmp_path), "--to-file", str(tiny_fs / "vm.state"),
                 "--progress", "none")
    assert result.code == 6, result
    assert "No space left on device" in result.err and "removed the incomplete" in result.err, result
    assert entries(tiny_fs) == []
    with vm.check() as qmp:
        assert qmp.cmd("query-status")["status"] == "running"


@pytest.fixture
def host_agent(tmp_path: Path) -> Iterator[HostAgent]:
    if not have_qemu_ga():
        pytest.skip("qemu-ga is not installed (run tests/setup-host)")
    agent = HostAgent(tmp_path / "qga").start()
    yield agent
    agent.stop()


@pytest.mark.agent
def test_a_copy_from_the_guest_onto_a_full_disk_leaves_no_partial_file(cli, host_agent, tmp_path, small_fs):
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(3 << 20))
    result = cli("agent", "cp", "-a", str(host_agent.path), f"guest:{source}", str(small_fs / "big.bin"),
                 "--progress", "none", "--no-verify")
    assert result.code == 74, result  # cannot write the output
    assert "No space left on device" in result.err, result
    assert entries(small_fs) == []
