"""hotplug-disk, unplug-disk and backup through ``--domain``, checked with virsh.

libvirt attaches its disks with -blockdev, so query-block shows ``"device": ""``
and node names like ``libvirt-1-format``; qmpctl must find disks by device id or
node name. libvirt sets file ownership only for the disks in its XML: files
QEMU opens later through QMP (hotplugged images, backup targets) must already
suit QEMU's user (libvirt-qemu on Debian), and the tests pin what happens
when they do not. There are no QMP events through libvirt here, so waiting for
a job or a released device is polled.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from support.libvirt import TestDomain, domain, libvirtd  # noqa: F401 (fixtures)

pytestmark = pytest.mark.libvirt


def _virsh_json(domain: TestDomain, execute: str) -> object:
    return json.loads(domain.monitor(json.dumps({"execute": execute})).stdout)["return"]


def _node_names(domain: TestDomain) -> set[str]:
    return {node["node-name"] for node in _virsh_json(domain, "query-named-block-nodes")}


def _new_image(domain: TestDomain, name: str, owner_is_qemu: bool = True) -> Path:
    path = domain.workdir / name
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return domain.qemu_writable(path) if owner_is_qemu else path


def test_hotplug_and_unplug_a_disk_through_the_domain(cli, domain):
    """A scsi-hd is released at once, so unplug completes without a guest OS (polled: no events via libvirt)."""
    image = _new_image(domain, "hotplug.qcow2")
    plugged = cli("hotplug-disk", "--domain", domain.name, str(image), "--bus", "scsi", "--id", "hp0")
    assert plugged.code == 0, plugged
    attached = [b for b in _virsh_json(domain, "query-block") if "hp0" in b.get("qdev", "")]
    assert len(attached) == 1 and attached[0]["inserted"]["file"] == str(image)
    unplugged = cli("unplug-disk", "--domain", domain.name, "hp0", "--wait-timeout", "10")
    assert unplugged.code == 0, unplugged
    assert not [b for b in _virsh_json(domain, "query-block") if "hp0" in b.get("qdev", "")]
    assert not {name for name in _node_names(domain) if name.startswith("hp0")}


def test_hotplug_of_an_image_qemu_cannot_open_is_exit_1_and_adds_nothing(cli, domain):
    """libvirt relabels only the disks in its XML: a file QEMU opens through QMP must suit libvirt-qemu already."""
    image = _new_image(domain, "root-only.qcow2", owner_is_qemu=False)
    image.chmod(0o600)
    before = _node_names(domain)
    result = cli("hotplug-disk", "-d", domain.name, str(image), "--id", "hp1")
    assert result.code == 1, result
    assert "Permission denied" in result.err
    assert _node_names(domain) == before


def _has_pattern(image: Path) -> bool:
    """Whether the image's first MiB holds 0x5a bytes (read beside the running VM: -U)."""
    check = subprocess.run(["qemu-io", "-U", "-r", "-f", "qcow2", "-c", "read -P 0x5a 0 1M", str(image)],
                           capture_output=True, text=True)
    return check.returncode == 0 and "verification failed" not in check.stdout


def test_backup_through_the_domain_copies_the_disk(cli, domain):
    """The disk gets a pattern through virsh's HMP qemu-io first, so the copy has something to prove."""
    disk = [b for b in _virsh_json(domain, "query-block") if b["inserted"]["file"] == str(domain.disk)][0]
    node = disk["inserted"]["node-name"]
    device_id = disk["qdev"].split("/")[3]  # /machine/peripheral/virtio-disk0/virtio-backend
    domain.monitor("--hmp", f"qemu-io -d {disk['qdev']} \"write -P 0x5a 0 1M\"")
    assert _has_pattern(domain.disk)
    target = domain.qemu_folder("backups") / "copy.qcow2"  # QEMU creates the target as libvirt-qemu
    result = cli("backup", "--domain", domain.name, device_id, str(target), "--progress", "none")
    assert result.code == 0, result
    assert json.loads(result.out)["return"]["device"] == node
    compared = subprocess.run(["qemu-img", "compare", "-U", str(domain.disk), str(target)],
                              capture_output=True, text=True)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert _has_pattern(target)
    assert _virsh_json(domain, "query-jobs") == []


def test_backup_into_a_folder_qemu_cannot_write_is_exit_1_and_leaves_nothing(cli, domain):
    target = domain.workdir / "not-for-qemu" / "copy.qcow2"
    target.parent.mkdir()
    result = cli("backup", "-d", domain.name, "libvirt-1-format", str(target), "--progress", "none")
    assert result.code == 1, result
    assert "Permission denied" in result.err
    assert not target.exists()
    assert _virsh_json(domain, "query-jobs") == []
