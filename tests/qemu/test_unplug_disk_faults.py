"""An unplug cut short must not leave block nodes behind that nothing in qmpctl can remove.

Against a real QEMU: the interrupt is raised at the exact point a signal
would strike (right after device_del was answered), by a session wrapper,
so the test does not depend on timing.
"""

from __future__ import annotations

import json
import signal

import pytest

from support.disks import block_state, hmp, make_image
from support.waits import wait_for
from support.interrupts import InterruptAfter

pytestmark = pytest.mark.qemu

SCSI_VM = ["-device", "virtio-scsi-pci,id=hba0"]


def hotplugged(cli, vm, device_id: str, bus: str) -> None:
    image = make_image(vm.workdir / f"{device_id}.qcow2")
    result = cli("hotplug-disk", "-s", str(vm.qmp_path), str(image), "--id", device_id, "--bus", bus)
    assert result.code == 0, result




def unplug_interrupted(vm, device_id: str):
    from qmpctl.vm import block
    from qmpctl.wire.address import parse_address
    from qmpctl.deadline import Deadline
    from qmpctl.errors import Interrupted
    from qmpctl.wire.qmp import QmpSession

    with QmpSession.connect(parse_address(str(vm.qmp_path)), Deadline(10)) as session:
        with pytest.raises(Interrupted) as caught:
            block.unplug(InterruptAfter(session, "device_del"), Deadline(10), device_id, wait_seconds=30)
    return caught.value


def test_interrupt_after_device_del_still_deletes_the_nodes_once_the_device_is_gone(cli, vm_factory):
    vm = vm_factory(extra_args=SCSI_VM)
    before = block_state(vm)
    hotplugged(cli, vm, "sd1", "scsi")
    error = unplug_interrupted(vm, "sd1")
    assert "the guest released sd1; deleted its block node(s) sd1-format" in error.message
    assert block_state(vm) == before  # no orphan sd1-format / sd1-file holding the image's lock


def test_interrupt_while_the_guest_holds_on_says_what_stays_and_how_to_remove_it(cli, vm, monkeypatch):
    from qmpctl.vm import block

    monkeypatch.setattr(block, "INTERRUPTED_UNPLUG_GRACE", 0.5)
    hotplugged(cli, vm, "vd1", "virtio")
    error = unplug_interrupted(vm, "vd1")
    assert ("device vd1 stays attached with its unplug request pending; its block node(s) vd1-format, vd1-file stay "
            "with it; once the guest has released it, 'qmpctl unplug-disk vd1' deletes what is left") in error.message


def test_unplug_of_a_device_already_gone_deletes_the_nodes_it_left(cli, vm):
    """The state an interrupted unplug used to leave: nodes ID-format and ID-file, no device."""
    before = block_state(vm)
    image = make_image(vm.workdir / "vd1.qcow2")
    with vm.check() as qmp:
        qmp.cmd("blockdev-add", driver="qcow2", **{"node-name": "vd1-format"},
                file={"driver": "file", "filename": str(image), "node-name": "vd1-file"})
    result = cli("unplug-disk", "-s", str(vm.qmp_path), "vd1")
    assert result.code == 0, result
    reply = json.loads(result.out)["return"]
    assert reply["deleted-nodes"] == ["vd1-format"]
    assert "vd1 was already gone; deleted the block node(s) it left behind" in reply["note"]
    assert block_state(vm) == before
    again = cli("hotplug-disk", "-s", str(vm.qmp_path), str(image), "--id", "vd1")  # the lock is free again
    assert again.code == 0, again


def test_unplug_of_an_unknown_id_with_no_nodes_is_still_exit_2(cli, vm):
    before = block_state(vm)
    result = cli("unplug-disk", "-s", str(vm.qmp_path), "nosuch")
    assert result.code == 2, result
    assert "has no device with id 'nosuch'" in result.err
    assert block_state(vm) == before


def pending_unplugs(vm) -> int:
    """The slots the VM's ACPI PCI hotplug controller asks the guest to eject (0xae04, PCI_DOWN_BASE)."""
    reply = hmp(vm, "i /w 0xae04")
    return int(reply.split("=")[-1], 16)


def wait_for_pending_unplug(vm, timeout: float = 20) -> int:
    return wait_for(lambda: pending_unplugs(vm), "device_del reaching the VM", timeout, pause=0.02)


def test_sigterm_twice_after_device_del_then_the_guest_lets_go(cli, vm):
    """The fault as reported: TERM (twice) after device_del, and the guest releases the disk a moment later.

    No OS runs in the VM, so the test plays the guest's part with QEMU's own
    hotplug controller: it writes the pending slots to the eject register
    (0xae08), exactly what a guest's ACPI code does.
    """
    before = block_state(vm)
    hotplugged(cli, vm, "vd1", "virtio")
    process = cli.popen("unplug-disk", "-s", str(vm.qmp_path), "vd1", "--wait-timeout", "60")
    slots = wait_for_pending_unplug(vm)  # device_del was sent; qmpctl waits for the guest
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGTERM)
    hmp(vm, f"o /w 0xae08 {slots}")  # the guest lets go
    _, err = process.communicate(timeout=15)
    assert process.returncode == 130, err
    assert b"interrupted while unplugging vd1: the guest released vd1; deleted its block node(s) vd1-format" in err
    assert block_state(vm) == before  # no vd1-format / vd1-file left holding the image's lock


def test_sigterm_after_device_del_with_a_guest_that_holds_on_names_what_stays(cli, vm):
    hotplugged(cli, vm, "vd1", "virtio")
    process = cli.popen("unplug-disk", "-s", str(vm.qmp_path), "vd1", "--wait-timeout", "60")
    wait_for_pending_unplug(vm)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=15)
    assert process.returncode == 130, err
    assert b"'qmpctl unplug-disk vd1' deletes what is left" in err
