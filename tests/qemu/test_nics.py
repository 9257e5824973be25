"""hotplug-nic, unplug-nic and nics against a real QEMU: user networking, every failure leaves the VM as it was."""

from __future__ import annotations

import json
import signal
import time

import pytest

from support.disks import hmp
from support.interrupts import InterruptAfter

pytestmark = pytest.mark.qemu

BOOT_NICS = ["-netdev", "user,id=n0", "-device", "e1000,netdev=n0,id=nic0,mac=52:54:00:00:00:01",
             "-netdev", "user,id=n1", "-device", "virtio-net-pci,netdev=n1,mac=52:54:00:00:00:02"]


def netdevs(vm) -> list[str]:
    """The backends HMP 'info network' shows (QMP has no query-netdev in 7.2 and 10.0)."""
    lines = hmp(vm, "info network").splitlines()
    return sorted(line.split(":")[0].strip(" \\") for line in lines if "type=" in line and "type=nic" not in line)


def devices(vm) -> list[str]:
    with vm.check() as qmp:
        return sorted(c["name"] for c in qmp.cmd("qom-list", path="/machine/peripheral")
                      if c["type"].startswith("child<"))


def state(vm) -> dict:
    return {"netdevs": netdevs(vm), "devices": devices(vm)}


def test_hotplug_a_user_nic_and_list_it(cli, vm):
    result = cli("hotplug-nic", "-s", str(vm.qmp_path), "--id", "net1", "--mac", "52:54:00:12:34:57",
                 "--return-value")
    assert result.code == 0, result
    assert json.loads(result.out) == {"id": "net1", "model": "virtio-net-pci", "mac": "52:54:00:12:34:57",
                                      "netdev": "net1-net", "net": "user"}
    assert state(vm) == {"netdevs": ["net1-net"], "devices": ["net1", "vd0"]}
    result = cli("nics", "-s", str(vm.qmp_path), "--return-value")
    assert result.code == 0, result
    assert json.loads(result.out) == [{"id": "net1", "model": "virtio-net-pci", "mac": "52:54:00:12:34:57",
                                       "netdev": "net1-net", "path": "/machine/peripheral/net1"}]


def test_hotplug_without_mac_reports_the_one_qemu_picked(cli, vm):
    result = cli("hotplug-nic", "-s", str(vm.qmp_path), "--id", "net1", "--model", "e1000", "--return-value")
    assert result.code == 0, result
    reply = json.loads(result.out)
    assert reply["model"] == "e1000" and reply["mac"].startswith("52:54:00:")


def test_nics_lists_boot_nics_with_and_without_an_id(cli, vm_factory):
    vm = vm_factory(extra_args=BOOT_NICS)
    result = cli("nics", "-s", str(vm.qmp_path), "--return-value")
    assert result.code == 0, result
    listed = json.loads(result.out)
    assert listed[0] == {"id": "nic0", "model": "e1000", "mac": "52:54:00:00:00:01", "netdev": "n0",
                         "path": "/machine/peripheral/nic0"}
    assert listed[1]["id"] is None and listed[1]["model"] == "virtio-net-pci"
    assert listed[1]["mac"] == "52:54:00:00:00:02" and listed[1]["netdev"] == "n1"
    assert len(listed) == 2  # the disk vd0 is no NIC
    assert all("link" not in nic for nic in listed)  # QEMU cannot report it: nothing invented


def test_link_down_and_up(cli, vm_factory):
    vm = vm_factory(extra_args=BOOT_NICS)
    result = cli("nics", "-s", str(vm.qmp_path), "--link", "nic0", "down", "--return-value")
    assert result.code == 0, result
    assert json.loads(result.out) == {"id": "nic0", "link": "down"}
    assert cli("nics", "-s", str(vm.qmp_path), "--link", "nic0", "up").code == 0
    result = cli("nics", "-s", str(vm.qmp_path), "--link", "nosuch", "down")
    assert result.code == 1 and "Device 'nosuch' not found" in result.err


FAILURES = {
    # name: (options, exit code, message fragment)
    "id in use": (["--id", "vd0"], 2, "already has a device with id 'vd0'"),
    "id not valid": (["--id", "9lives"], 2, "--id '9lives' is not valid"),
    "no id": ([], 2, "needs --id"),
    "bad mac": (["--id", "net1", "--mac", "52:54:00:12:34"], 2, "is not a MAC address"),
    "multicast mac": (["--id", "net1", "--mac", "01:00:5e:00:00:01"], 2, "multicast"),
    "bad net": (["--id", "net1", "--net", "socket"], 2, "give user, tap:IFNAME or bridge:BRIDGE"),
    "device_add refused": (["--id", "net1", "--bus", "nosuchbus"], 1, "nosuchbus"),
}


@pytest.mark.parametrize("case", FAILURES)
def test_hotplug_failure_leaves_the_vm_unchanged(cli, vm, case):
    options, code, message = FAILURES[case]
    before = state(vm)
    result = cli("hotplug-nic", "-s", str(vm.qmp_path), *options)
    assert result.code == code, result
    assert message in result.err and result.out == ""
    assert state(vm) == before  # in particular no net1-net backend left when device_add was refused


def test_tap_and_bridge_backends_are_built_right(cli, tmp_path):
    for net, expected in (("tap:tap7", {"type": "tap", "id": "n7-net", "ifname": "tap7", "script": "no",
                                        "downscript": "no"}),
                          ("bridge:br0", {"type": "bridge", "id": "n7-net", "br": "br0"})):
        result = cli("hotplug-nic", "-s", str(tmp_path / "absent.sock"), "--id", "n7", "--net", net, "--dry-run")
        assert result.code == 0, result
        add, device = (json.loads(line) for line in result.out.splitlines())
        assert add == {"execute": "netdev_add", "arguments": expected}
        assert device == {"execute": "device_add",
                          "arguments": {"driver": "virtio-net-pci", "id": "n7", "netdev": "n7-net"}}


# -- unplug -----------------------------------------------------------------------------------------

def pending_unplugs(vm) -> int:
    """The slots the VM's ACPI PCI hotplug controller asks the guest to eject (0xae04, PCI_DOWN_BASE)."""
    return int(hmp(vm, "i /w 0xae04").split("=")[-1], 16)


def wait_for_pending_unplug(vm, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        slots = pending_unplugs(vm)
        if slots:
            return slots
        time.sleep(0.02)
    raise TimeoutError("device_del never reached the VM")


def plugged(cli, vm, device_id: str = "net1") -> None:
    result = cli("hotplug-nic", "-s", str(vm.qmp_path), "--id", device_id)
    assert result.code == 0, result


def test_unplug_waits_for_the_guest_then_deletes_the_backend(cli, vm):
    """No OS runs in the VM: the test plays the guest, writing the pending slots to the eject register."""
    before = state(vm)
    plugged(cli, vm)
    process = cli.popen("unplug-nic", "-s", str(vm.qmp_path), "net1", "--wait-timeout", "60", "--return-value")
    hmp(vm, f"o /w 0xae08 {wait_for_pending_unplug(vm)}")  # the guest lets go
    out, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    assert json.loads(out) == {"id": "net1", "deleted-netdev": "net1-net"}
    assert state(vm) == before


def test_unplug_without_a_guest_times_out_and_deletes_nothing(cli, vm):
    plugged(cli, vm)
    before = state(vm)
    result = cli("unplug-nic", "-s", str(vm.qmp_path), "net1", "--wait-timeout", "1")
    assert result.code == 4, result
    assert "the guest did not release net1 within 1s" in result.err and "nothing was deleted" in result.err
    assert "its network backend net1-net stays" in result.err
    assert state(vm) == before


def test_sigterm_twice_after_device_del_then_the_guest_lets_go(cli, vm):
    before = state(vm)
    plugged(cli, vm)
    process = cli.popen("unplug-nic", "-s", str(vm.qmp_path), "net1", "--wait-timeout", "60")
    slots = wait_for_pending_unplug(vm)  # device_del was sent; qmpctl waits for the guest
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGTERM)
    hmp(vm, f"o /w 0xae08 {slots}")  # the guest lets go
    _, err = process.communicate(timeout=15)
    assert process.returncode == 130, err
    assert b"interrupted while unplugging net1: the guest released net1; deleted its network backend net1-net" in err
    assert state(vm) == before  # no backend left with no device


def test_sigint_after_device_del_with_a_guest_that_holds_on_names_what_stays(cli, vm):
    plugged(cli, vm)
    process = cli.popen("unplug-nic", "-s", str(vm.qmp_path), "net1", "--wait-timeout", "60")
    wait_for_pending_unplug(vm)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=15)
    assert process.returncode == 130, err
    assert b"its network backend net1-net stays with it" in err and b"'qmpctl unplug-nic net1'" in err
    # the guest lets go later: unplug-nic again deletes the backend the device left
    hmp(vm, f"o /w 0xae08 {pending_unplugs(vm)}")
    deadline = time.monotonic() + 10
    while "net1" in devices(vm) and time.monotonic() < deadline:
        time.sleep(0.02)
    result = cli("unplug-nic", "-s", str(vm.qmp_path), "net1", "--return-value")
    assert result.code == 0, result
    assert json.loads(result.out)["deleted-netdev"] == "net1-net"
    assert state(vm) == {"netdevs": [], "devices": ["vd0"]}


@pytest.mark.parametrize("device_id, message", [("nosuch", "has no device with id 'nosuch'"),
                                                ("vd0", "'vd0' is not a NIC")])
def test_unplug_of_something_that_is_not_a_nic_is_exit_2(cli, vm, device_id, message):
    before = state(vm)
    result = cli("unplug-nic", "-s", str(vm.qmp_path), device_id)
    assert result.code == 2, result
    assert message in result.err
    assert state(vm) == before


def test_a_refused_netdev_add_adds_nothing(cli, vm_factory):
    vm = vm_factory(extra_args=["-netdev", "user,id=net1-net"])  # a backend left by someone else, same name
    before = state(vm)
    result = cli("hotplug-nic", "-s", str(vm.qmp_path), "--id", "net1")
    assert result.code == 1, result
    assert "net1-net" in result.err
    assert state(vm) == before




@pytest.mark.parametrize("command", ["netdev_add", "device_add"])
def test_an_interrupt_during_hotplug_takes_everything_back(vm, command):
    """The signal strikes right after QEMU answered: what it had added must go again."""
    from qmpctl.deadline import Deadline
    from qmpctl.vm import nics
    from qmpctl.wire.address import parse_address
    from qmpctl.wire.qmp import QmpSession

    before = state(vm)
    with QmpSession.connect(parse_address(str(vm.qmp_path)), Deadline(10)) as session:
        with pytest.raises(KeyboardInterrupt):
            nics.hotplug(InterruptAfter(session, command), Deadline(10), nics.NicPlan("net1").check())
    if command == "device_add":  # a PCI NIC leaves only with a guest's help: it was asked to go; play the guest
        hmp(vm, f"o /w 0xae08 {wait_for_pending_unplug(vm)}")
        deadline = time.monotonic() + 10
        while state(vm) != before and time.monotonic() < deadline:
            time.sleep(0.02)
    assert state(vm) == before  # the backend went with the NIC
