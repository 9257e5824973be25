"""A chain of a disk holding an ext2 filesystem, for the tests that read single files of a backup point."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

OLD = b"version 1\nno newline at the end"
NEW = b"version 2, written after the backup\n"
WHEN = 1_700_000_000  # 2023-11-14T22:13:20Z


def guestfs_env(tmp_path: Path) -> dict[str, str]:
    """qmpctl's libguestfs temp folder under the test's TMPDIR (checked empty after), the appliance cached as usual."""
    private = tmp_path / "tmp"
    private.mkdir(exist_ok=True)
    return {"TMPDIR": str(private), "LIBGUESTFS_CACHEDIR": os.environ.get("LIBGUESTFS_CACHEDIR", "/var/tmp")}


def need_guestfish() -> None:
    if shutil.which("guestfish") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("guestfish is not installed (run tests/setup-host)")
        pytest.skip("guestfish is not installed (run tests/setup-host)")


def ext2_disk(tmp_path: Path, bulk: int = 0) -> Path:
    """A raw disk holding an ext2 filesystem made from a folder (mke2fs -d): /etc/app.conf and a /data tree;
    with ``bulk``, also /bulk holding that many bytes of random data in 1 MiB files (a copy that takes a while)."""
    source = tmp_path / "tree"
    (source / "etc").mkdir(parents=True)
    (source / "data" / "sub").mkdir(parents=True)
    (source / "etc" / "app.conf").write_bytes(OLD)
    (source / "data" / "big.bin").write_bytes(bytes(range(256)) * 1024)
    (source / "data" / "sub" / "secret").write_bytes(b"only root\n")
    os.chmod(source / "data" / "sub" / "secret", 0o640)
    for path in (source / "data" / "sub" / "secret", source / "data" / "big.bin"):
        os.utime(path, (WHEN, WHEN))
    if bulk:
        (source / "bulk").mkdir()
        for number in range(bulk >> 20):
            (source / "bulk" / f"{number:03}.bin").write_bytes(os.urandom(1 << 20))
    disk = tmp_path / "fs.raw"
    size = f"{16 + 2 * (bulk >> 20)}M"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", "-d", str(source), str(disk), size], check=True)
    return disk


def backed_up(cli, vm_factory, tmp_path: Path, disk: Path) -> str:
    """A chain of the VM whose disk vd0 is ``disk`` (raw), then the VM gone and ``/etc/app.conf`` changed."""
    vm = vm_factory(qemu_args_disk=False, extra_args=[
        "-blockdev", f"driver=raw,node-name=disk0,file.driver=file,file.filename={disk}",
        "-device", "virtio-blk-pci,drive=disk0,id=vd0"])
    made = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(tmp_path / "b"), "--progress", "none")
    assert made.code == 0, made
    vm.kill()
    new = tmp_path / "new.conf"
    new.write_bytes(NEW)
    for request in ("rm /etc/app.conf", f"write {new} /etc/app.conf"):
        subprocess.run(["debugfs", "-w", "-R", request, str(disk)], check=True, capture_output=True)
    now = subprocess.run(["debugfs", "-R", "cat /etc/app.conf", str(disk)], check=True, capture_output=True)
    assert now.stdout == NEW
    return json.loads(made.out)["return"]["chain"]


def sums(chain: str) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(Path(chain).iterdir())}
