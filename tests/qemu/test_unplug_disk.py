"""unplug-disk against a real QEMU: a SCSI disk goes at once; a PCI disk without a guest never does."""

from __future__ import annotations

import json

import pytest

from support.disks import block_state, make_image

pytestmark = pytest.mark.qemu

SCSI_VM = ["-device", "virtio-scsi-pci,id=hba0"]


def attach(vm, device_id: str, driver: str, *, separate_file_node: bool = False) -> None:
    """Attach a disk with the test's own monitor, the way a user or libvirt would."""
    image = make_image(vm.workdir / f"{device_id}.qcow2")
    with vm.check() as qmp:
        if separate_file_node:  # as libvirt does: the file node is added on its own
            qmp.cmd("blockdev-add", driver="file", filename=str(image), **{"node-name": f"{device_id}-storage"})
            qmp.cmd("blockdev-add", driver="qcow2", file=f"{device_id}-storage", **{"node-name": f"{device_id}-fmt"})
        else:
            qmp.cmd("blockdev-add", driver="qcow2", file={"driver": "file", "filename": str(image)},
                    **{"node-name": f"{device_id}-fmt"})
        qmp.cmd("device_add", driver=driver, drive=f"{device_id}-fmt", id=device_id)


@pytest.mark.parametrize("separate_file_node", [False, True], ids=["inline-file-node", "separate-file-node"])
def test_unplug_of_a_scsi_disk_completes_and_deletes_its_nodes(cli, vm_factory, separate_file_node):
    vm = vm_factory(extra_args=SCSI_VM)
    before = block_state(vm)
    attach(vm, "sd1", "scsi-hd", separate_file_node=separate_file_node)
    result = cli("unplug-disk", "-s", str(vm.qmp_path), "sd1")
    assert result.code == 0, result
    deleted = ["sd1-fmt", "sd1-storage"] if separate_file_node else ["sd1-fmt"]
    assert json.loads(result.out) == {"return": {"device": "sd1", "deleted-nodes": deleted}}
    assert block_state(vm) == before


def test_unplug_of_a_pci_disk_without_a_guest_times_out_and_deletes_nothing(cli, vm):
    attach(vm, "vd1", "virtio-blk-pci")
    before = block_state(vm)
    result = cli("unplug-disk", "-s", str(vm.qmp_path), "vd1", "--wait-timeout", "1")
    assert result.code == 4, result
    assert "the guest did not release vd1 within 1s" in result.err and "nothing was deleted" in result.err
    assert result.seconds < 5
    assert block_state(vm) == before  # the device and its node are still there


@pytest.mark.parametrize("device_id, message", [("nosuch", "has no device with id 'nosuch'"),
                                                ("hba0", "'hba0' is not a disk")])
def test_unplug_of_something_that_is_not_a_disk_is_exit_2(cli, vm_factory, device_id, message):
    vm = vm_factory(extra_args=SCSI_VM)
    before = block_state(vm)
    result = cli("unplug-disk", "-s", str(vm.qmp_path), device_id)
    assert result.code == 2, result
    assert message in result.err
    assert block_state(vm) == before


def test_unplug_polls_where_the_session_has_no_events(vm_factory):
    """The libvirt path: no events on the session, so qmpctl polls until the device is gone."""
    from qmpctl.vm import block
    from qmpctl.wire.address import parse_address
    from qmpctl.deadline import Deadline
    from qmpctl.wire.qmp import QmpSession

    vm = vm_factory(extra_args=SCSI_VM)
    before = block_state(vm)
    attach(vm, "sd1", "scsi-hd")
    with QmpSession.connect(parse_address(str(vm.qmp_path)), Deadline(10)) as session:
        session.supports_events = False
        session.wait_event = lambda *args: pytest.fail("waited for an event on a session without events")
        reply = block.unplug(session, Deadline(10), "sd1", wait_seconds=10)
    assert reply == {"device": "sd1", "deleted-nodes": ["sd1-fmt"]}
    assert block_state(vm) == before
