"""The restore drill tells its QEMU the format restore wrote: it never guesses it from the guest's bytes.

A raw restore holds the guest's bytes as they are; a guest can make its disk start with a qcow2 header naming
any host file as its backing file. Guessed from those bytes, the drill's QEMU (run as root) would open that
file for the guest to read.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from support.disks import flush, hmp
from support.qemu import RawQmp
from support.waits import wait_for


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a dead child of nobody's)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

pytestmark = [pytest.mark.qemu, pytest.mark.one_qemu]

CLUSTER = 64 << 10


def test_a_raw_restore_that_looks_like_a_qcow2_naming_a_host_file_is_booted_as_raw(cli, vm_factory, tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"a host file the guest must never read\n".ljust(1 << 20, b"\0"))
    forged = tmp_path / "forged.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(forged), "1M"],
                   check=True)
    header = tmp_path / "header.bin"
    header.write_bytes(forged.read_bytes()[:CLUSTER])
    vm = vm_factory(disk_size="16M")
    hmp(vm, f'qemu-io -d /machine/peripheral/vd0/virtio-backend "write -s {header} 0 {CLUSTER}"')  # the guest
    flush(vm)
    backup = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(tmp_path / "b"), "--progress", "none")
    assert backup.code == 0, backup
    chain = json.loads(backup.out)["return"]["chain"]
    target = tmp_path / "restored.img"
    monitor = tmp_path / "drill.sock"
    pidfile = tmp_path / "drill.pid"
    drill = cli.popen("restore", chain, str(target), "--format", "raw", "--progress", "none", "--boot-check",
                      "--boot-timeout", "20", "--qemu-arg=-accel", "--qemu-arg=tcg", "--qemu-arg=-qmp",
                      f"--qemu-arg=unix:{monitor},server=on,wait=off", "--qemu-arg=-pidfile",
                      f"--qemu-arg={pidfile}")
    try:
        deadline = time.monotonic() + 20
        while not monitor.exists():
            assert drill.poll() is None, drill.communicate()
            assert time.monotonic() < deadline, "the drill's QEMU did not start"
            time.sleep(0.05)
        assert target.read_bytes()[:4] == b"QFI\xfb"  # what the guest wrote, restored as it is
        with RawQmp(monitor) as qmp:
            disks = {entry["device"]: entry["inserted"] for entry in qmp.cmd("query-block") if "inserted" in entry}
            nodes = qmp.cmd("query-named-block-nodes")
    finally:
        drill.kill()  # SIGKILL: qmpctl cannot clean up, yet its drill QEMU must not outlive it
        drill.communicate()
    qemu_pid = int(pidfile.read_text())
    wait_for(lambda: not _alive(qemu_pid), "the drill's QEMU to end with the qmpctl that started it", timeout=15)
    restored = disks["restored"]
    assert restored["image"]["format"] in ("raw", "qcow2")  # -snapshot: a qcow2 overlay over the restore
    chain_of_images = [restored["image"]]
    while "backing-image" in chain_of_images[-1]:
        chain_of_images.append(chain_of_images[-1]["backing-image"])
    assert [image["filename"] for image in chain_of_images][-1] == str(target)
    assert chain_of_images[-1]["format"] == "raw"
    assert all(node["file"] != str(secret) for node in nodes), "the drill's QEMU opened the host file"


def test_a_chain_image_naming_an_external_data_file_is_never_read_through(cli, vm_factory, tmp_path):
    """The images are in a folder QEMU's user may write: one whose header names a host file as its data file
    (its size and sha256 put in the manifest too) is refused by backup-verify and restore, not read as root."""
    import hashlib

    vm = vm_factory(disk_size="16M")
    backup = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(tmp_path / "b"), "--progress", "none")
    assert backup.code == 0, backup
    chain = Path(json.loads(backup.out)["return"]["chain"])
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"a host file nobody may restore\n".ljust(16 << 20, b"\0"))
    image = chain / "0001-full.qcow2"
    image.unlink()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={secret},data_file_raw=on",
                    str(image), "16M"], check=True)
    manifest = json.loads((chain / "chain.json").read_text())
    manifest["images"][0].update(size=image.stat().st_size, sha256=hashlib.sha256(image.read_bytes()).hexdigest())
    (chain / "chain.json").write_text(json.dumps(manifest))
    verified = cli("backup-verify", str(chain))
    assert verified.code == 6 and f"external data file, {secret}" in verified.err, verified
    restored = cli("restore", str(chain), str(tmp_path / "r.img"), "--format", "raw", "--progress", "none")
    assert restored.code == 6 and not (tmp_path / "r.img").exists(), restored
