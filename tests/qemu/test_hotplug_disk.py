"""hotplug-disk against a real QEMU: both buses, both formats, and every failure leaves the VM as it was."""

from __future__ import annotations

import json

import pytest

from support.disks import block_state, make_image

pytestmark = pytest.mark.qemu


def attached(vm, device_id: str) -> dict:
    """The query-block entry of ``device_id`` (virtio-blk shows it under its virtio-backend child)."""
    with vm.check() as qmp:
        for entry in qmp.cmd("query-block"):
            qdev = entry.get("qdev", "")
            if qdev == device_id or qdev.startswith(f"/machine/peripheral/{device_id}/"):
                return entry
    raise AssertionError(f"{device_id} is not in query-block")


@pytest.mark.parametrize("bus", ["virtio", "scsi"])
@pytest.mark.parametrize("image_format", ["qcow2", "raw"])
def test_hotplug_attaches_an_image_on_either_bus(cli, vm, bus, image_format):
    image = make_image(vm.workdir / f"extra.{image_format}", image_format)
    result = cli("hotplug-disk", "-s", str(vm.qmp_path), str(image), "--bus", bus)
    assert result.code == 0, result
    reply = json.loads(result.out)["return"]
    assert reply["device"] == "disk1" and reply["node-name"] == "disk1-format"
    assert reply["format"] == image_format  # read from the header: no --format given
    assert reply["driver"] == {"virtio": "virtio-blk-pci", "scsi": "scsi-hd"}[bus]
    entry = attached(vm, "disk1")
    assert entry["inserted"]["node-name"] == "disk1-format"
    assert entry["inserted"]["drv"] == image_format
    assert entry["inserted"]["file"] == str(image)
    if bus == "scsi":
        assert reply["added-controller"] == "scsi0" and reply["scsi-bus"] == "scsi0.0"
        assert "scsi0" in block_state(vm)["devices"]


def test_hotplug_uses_the_vms_own_scsi_controller(cli, vm_factory):
    vm = vm_factory(extra_args=["-device", "virtio-scsi-pci,id=hba0"])
    image = make_image(vm.workdir / "extra.qcow2")
    result = cli("hotplug-disk", "-s", str(vm.qmp_path), str(image), "--bus", "scsi", "--return-value")
    assert result.code == 0, result
    reply = json.loads(result.out)
    assert reply["scsi-bus"] == "hba0.0" and "added-controller" not in reply
    assert block_state(vm)["devices"] == ["disk1", "hba0", "vd0"]


def test_hotplug_readonly_with_chosen_id_and_format(cli, vm):
    image = make_image(vm.workdir / "data.img", "raw")
    result = cli("hotplug-disk", "-s", str(vm.qmp_path), str(image), "--id", "data0", "--format", "raw",
                 "--readonly", "--return-value")
    assert result.code == 0, result
    reply = json.loads(result.out)
    assert (reply["device"], reply["node-name"], reply["file-node-name"]) == ("data0", "data0-format", "data0-file")
    assert attached(vm, "data0")["inserted"]["ro"] is True


def _not_qcow2(vm):
    return make_image(vm.workdir / "plain.img", "raw")


def _looks_like_vmdk(vm):
    path = vm.workdir / "disk.vmdk"
    path.write_bytes(b"KDMV" + bytes(1020))
    return path


def _broken_qcow2(vm):
    path = vm.workdir / "broken.qcow2"
    path.write_bytes(b"QFI\xfb" + bytes(4092))  # the magic, then a header QEMU cannot use
    return path


FAILURES = {
    # name: (image maker, extra options, exit code, message fragment)
    "missing file": (lambda vm: vm.workdir / "absent.qcow2", [], 2, "no such image file"),
    "a directory": (lambda vm: vm.workdir, [], 2, "not an image file"),
    "not qcow2 as asked": (_not_qcow2, ["--format", "qcow2"], 2, "not a qcow2 image"),
    "another image format": (_looks_like_vmdk, [], 2, "looks like a vmdk image"),
    "id in use": (lambda vm: make_image(vm.workdir / "x.qcow2"), ["--id", "vd0"], 2, "already has a device"),
    "id not valid": (lambda vm: make_image(vm.workdir / "x.qcow2"), ["--id", "9lives"], 2, "--id '9lives'"),
    "blockdev-add refused": (_broken_qcow2, [], 1, "qcow2"),
    # The VM's own disk is write-locked by its device: blockdev-add as raw works, device_add is refused.
    "device_add refused": (lambda vm: vm.disk, ["--format", "raw"], 1, "lock"),
    "device_add refused on scsi": (lambda vm: vm.disk, ["--format", "raw", "--bus", "scsi"], 1, "lock"),
}


@pytest.mark.parametrize("case", FAILURES)
def test_hotplug_failure_leaves_the_vm_unchanged(cli, vm_factory, case):
    vm = vm_factory(extra_args=["-device", "virtio-scsi-pci,id=hba0"])
    make, options, code, message = FAILURES[case]
    before = block_state(vm)
    result = cli("hotplug-disk", "-s", str(vm.qmp_path), str(make(vm)), *options)
    assert result.code == code, result
    assert message in result.err and result.out == ""
    assert block_state(vm) == before


def test_failure_after_adding_a_controller_removes_the_node_and_asks_the_controller_to_go(cli, vm):
    before = block_state(vm)
    result = cli("hotplug-disk", "-s", str(vm.qmp_path), str(vm.disk), "--format", "raw", "--bus", "scsi")
    assert result.code == 1, result
    assert "lock" in result.err
    # A PCI controller leaves only with the guest's help; this VM has no guest, so it is still listed.
    assert "controller scsi0 qmpctl added is asked to go" in result.err
    after = block_state(vm)
    assert after["nodes"] == before["nodes"] and after["jobs"] == before["jobs"]
    assert after["devices"] == sorted(before["devices"] + ["scsi0"])


def test_hotplug_dry_run_reads_the_image_and_connects_to_nothing(cli, tmp_path):
    image = make_image(tmp_path / "extra.qcow2")
    result = cli("hotplug-disk", "-s", str(tmp_path / "absent.sock"), str(image), "--id", "data0", "--dry-run")
    assert result.code == 0, result
    add, device = (json.loads(line) for line in result.out.splitlines())
    assert add == {"execute": "blockdev-add", "arguments": {
        "driver": "qcow2", "node-name": "data0-format",
        "file": {"driver": "file", "node-name": "data0-file", "filename": str(image)}}}
    assert device == {"execute": "device_add",
                      "arguments": {"driver": "virtio-blk-pci", "id": "data0", "drive": "data0-format"}}
