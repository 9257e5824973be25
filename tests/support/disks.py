"""Disk helpers for the block tests: images, data patterns written through QEMU, the VM's block state.

Everything here talks to QEMU over the test's own monitor (``vm.check()``)
or runs qemu-img / qemu-io, never through qmpctl.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from support.waits import wait_for

VD0_BACKEND = "/machine/peripheral/vd0/virtio-backend"


def make_image(path: Path, image_format: str = "qcow2", size: str = "16M") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", image_format, str(path), size], check=True)
    return path


def mounted_tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``mountpoint`` (made here), lazily unmounted afterwards: a filesystem that really fills.

    Mounting needs root, which CI has; elsewhere the test is skipped.
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "qmpctl-test-full", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def hmp(vm, command_line: str) -> str:
    with vm.check() as qmp:
        return qmp.cmd("human-monitor-command", **{"command-line": command_line})


def write_pattern(vm, writes: list[tuple[int, int, int]], device: str = VD0_BACKEND) -> None:
    """Write (pattern byte, offset, length) through the running QEMU, flush, and check the image holds it."""
    for pattern, offset, length in writes:
        hmp(vm, f'qemu-io -d {device} "write -P {pattern:#x} {offset} {length}"')
    flush(vm, device)
    assert all(reads_pattern(vm.disk, *write) for write in writes)


def flush(vm, device: str = VD0_BACKEND) -> None:
    hmp(vm, f'qemu-io -d {device} "flush"')


def images_identical(first: Path, second: Path) -> subprocess.CompletedProcess:
    """qemu-img compare (-U: the source is still open in QEMU, which has flushed it)."""
    return subprocess.run(["qemu-img", "compare", "-U", str(first), str(second)], capture_output=True, text=True)


def reads_pattern(image: Path, pattern: int, offset: int, length: int) -> bool:
    result = subprocess.run(["qemu-io", "-U", "-r", "-c", f"read -P {pattern:#x} {offset} {length}", str(image)],
                            capture_output=True, text=True)
    return result.returncode == 0 and "verification failed" not in result.stdout + result.stderr


def block_state(vm) -> dict[str, Any]:
    """What a failed or cleaned-up operation must leave as it was: node names, devices, jobs."""
    with vm.check() as qmp:
        return {
            "nodes": sorted(n["node-name"] for n in qmp.cmd("query-named-block-nodes")),
            "devices": sorted(c["name"] for c in qmp.cmd("qom-list", path="/machine/peripheral")
                              if c["type"].startswith("child<")),
            "jobs": qmp.cmd("query-jobs"),
        }


def jobs(vm) -> list[dict[str, Any]]:
    with vm.check() as qmp:
        return qmp.cmd("query-jobs")


def wait_for_job(vm, status: str = "running", job_type: str = "backup", timeout: float = 20) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        return next((job for job in jobs(vm) if job["status"] == status and job["type"] == job_type), None)

    try:
        return wait_for(reached, f"a {job_type} job {status}", timeout, pause=0.02)
    except TimeoutError:
        raise TimeoutError(f"no {job_type} job reached {status}: {jobs(vm)}") from None


def throttled_vm(vm_factory, tmp_path: Path):
    """A VM whose device vd0 reads a throttle filter ``thr0`` over its qcow2 node ``disk0``."""
    (tmp_path / "vm0").mkdir()
    image = make_image(tmp_path / "vm0" / "disk0.qcow2", "qcow2", "16M")
    return vm_factory(qemu_args_disk=False, extra_args=[
        "-object", "throttle-group,id=tg0,x-bps-total=1000000000",
        "-blockdev", f"driver=qcow2,node-name=disk0,file.driver=file,file.filename={image}",
        "-blockdev", "driver=throttle,node-name=thr0,throttle-group=tg0,file=disk0",
        "-device", "virtio-blk-pci,drive=thr0,id=vd0"])


def whole_vm_args(workdir: Path) -> list[str]:
    """A second disk, a CD-ROM with a medium and an empty one, and a raw pflash pair (code, UEFI variables)."""
    workdir.mkdir(parents=True, exist_ok=True)
    disk1 = make_image(workdir / "disk1.qcow2", size="8M")
    iso = make_image(workdir / "cd.iso", "raw", "1M")
    code, variables = workdir / "code.fd", workdir / "vars.fd"
    code.write_bytes(bytes(128 << 10))
    variables.write_bytes(b"\x5a" * (64 << 10) + bytes(64 << 10))
    return ["-drive", f"if=pflash,format=raw,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,file={variables}",
            "-blockdev", f"driver=qcow2,node-name=disk1,file.driver=file,file.filename={disk1}",
            "-device", "virtio-blk-pci,drive=disk1,id=vd1",
            "-drive", f"if=none,id=cd0,format=raw,readonly=on,file={iso}", "-device", "ide-cd,drive=cd0,id=cdrom0",
            "-device", "ide-cd,id=cdrom1"]


def scsi_hd_args(image: Path, node: str, device_id: str = "") -> list[str]:
    """A qcow2 ``image`` (node ``node``) on a scsi-hd, with ``device_id`` or none, on a virtio-scsi controller."""
    return ["-device", "virtio-scsi-pci,id=scsi0",
            "-blockdev", f"driver=qcow2,node-name={node},file.driver=file,file.filename={image}",
            "-device", f"scsi-hd,bus=scsi0.0,drive={node}" + (f",id={device_id}" if device_id else "")]
