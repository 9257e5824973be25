"""One lookup for every DEVICE argument: each name a disk has finds the same disk, against real QEMU."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from qmpctl.deadline import Deadline
from qmpctl.errors import UsageError
from qmpctl.vm.disks import find_disk
from qmpctl.wire.address import parse_address
from qmpctl.wire.qmp import QmpSession


@pytest.fixture
def session(vm_factory, qemu_build, tmp_path: Path) -> Iterator[QmpSession]:
    """vd0 (the default disk), an anonymous device on a -drive, a disk behind a throttle filter, a loose node."""
    images = {}
    for name in ("drive1", "fmt2", "loose"):
        images[name] = tmp_path / f"{name}.qcow2"
        subprocess.run([qemu_build.qemu_img, "create", "-q", "-f", "qcow2", str(images[name]), "16M"], check=True)
    vm = vm_factory(extra_args=[
        "-drive", f"file={images['drive1']},format=qcow2,if=none,id=drive1,node-name=fmt1",
        "-device", "virtio-blk-pci,drive=drive1",
        "-object", "throttle-group,id=tg0",
        "-blockdev", f"driver=qcow2,node-name=fmt2,file.driver=file,file.filename={images['fmt2']}",
        "-blockdev", "driver=throttle,node-name=thr2,throttle-group=tg0,file=fmt2",
        "-device", "virtio-blk-pci,drive=thr2,id=vd2",
        "-blockdev", f"driver=qcow2,node-name=loose,file.driver=file,file.filename={images['loose']}",
    ])
    with QmpSession.connect(parse_address(str(vm.qmp_path)), Deadline(10)) as opened:
        yield opened


ANON = "/machine/peripheral-anon/device[0]"


@pytest.mark.qemu
def test_every_name_of_a_disk_finds_it_with_all_its_names(session):
    deadline = Deadline(10)
    for name in ("vd0", "/machine/peripheral/vd0/virtio-backend", "/machine/peripheral/vd0", "disk0"):
        disk = find_disk(session, deadline, name)
        assert (disk.device_id, disk.qdev, disk.drive, disk.top, disk.node, disk.driver) == (
            "vd0", "/machine/peripheral/vd0/virtio-backend", "", "disk0", "disk0", "qcow2"), name
        assert disk.block_name == "disk0" and disk.label == "vd0"
    for name in ("drive1", "fmt1", ANON, f"{ANON}/virtio-backend"):
        disk = find_disk(session, deadline, name)
        assert (disk.device_id, disk.qdev, disk.drive, disk.top, disk.node) == (
            "", f"{ANON}/virtio-backend", "drive1", "fmt1", "fmt1"), name
        assert disk.block_name == "drive1" and disk.label == "drive1"


@pytest.mark.qemu
def test_a_disk_behind_a_filter_names_its_format_node_and_is_found_by_it(session):
    for name in ("vd2", "thr2", "fmt2"):
        disk = find_disk(session, Deadline(10), name)
        assert (disk.device_id, disk.top, disk.node, disk.driver) == ("vd2", "thr2", "fmt2", "qcow2"), name
        assert disk.info["drv"] == "throttle"


@pytest.mark.qemu
def test_a_node_on_no_device_is_found_by_its_node_name(session):
    disk = find_disk(session, Deadline(10), "loose")
    assert (disk.device_id, disk.qdev, disk.drive, disk.top, disk.node, disk.entry) == ("", "", "", "loose",
                                                                                         "loose", {})


@pytest.mark.qemu
def test_no_match_is_a_usage_error_naming_the_disks(session):
    with pytest.raises(UsageError, match=r"has no disk 'vd9' \(disks: drive1, vd0, vd2\): give a device id, "
                                         r"QOM path, drive name or node name"):
        find_disk(session, Deadline(10), "vd9")
