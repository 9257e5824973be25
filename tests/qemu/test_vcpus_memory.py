"""vcpus and hotplug-memory/unplug-memory against a real, paused QEMU with no guest: the plug side."""

from __future__ import annotations

import json
import signal

import pytest
from support.disks import hmp
from support.interrupts import InterruptAfter
from support.waits import wait_for

pytestmark = pytest.mark.qemu

SMP = ["-smp", "1,maxcpus=4"]
SLOTS = ["-m", "64,slots=2,maxmem=512M"]  # after the fixture's -m 64: the last -m counts
MEMORY_HOTPLUG_PORTS = 0xA00
"""QEMU's ACPI memory-hotplug registers (its docs/specs/acpi_mem_hotplug.rst): the slot selector at +0, the
selected DIMM's status (bit 2: removal asked) and control (bit 3: eject) at +0x14. A test writes them as the
guest's ACPI code would."""


def cpu_count(vm) -> int:
    with vm.check() as qmp:
        return len(qmp.cmd("query-cpus-fast"))


def dimm_state(vm) -> dict:
    with vm.check() as qmp:
        return {"dimms": sorted(d["data"]["id"] for d in qmp.cmd("query-memory-devices")),
                "objects": sorted(o["name"] for o in qmp.cmd("qom-list", path="/objects")
                                  if o["type"].startswith("child<memory-backend"))}


def test_vcpus_lists_the_slots(cli, vm_factory):
    vm = vm_factory(extra_args=SMP)
    result = cli("vcpus", "-s", str(vm.qmp_path), "--return-value")
    assert result.code == 0, result
    listed = json.loads(result.out)
    assert listed["vcpus"] == 1 and listed["max"] == 4 and len(listed["slots"]) == 4
    assert [slot["plugged"] for slot in listed["slots"]] == [True, False, False, False]
    assert listed["slots"][1]["props"]["core-id"] == 1 and listed["slots"][1]["type"].endswith("-cpu")


def test_vcpus_n_plugs_the_free_slots_in_order(cli, vm_factory):
    vm = vm_factory(extra_args=SMP)
    result = cli("vcpus", "-s", str(vm.qmp_path), "3", "--return-value")
    assert result.code == 0, result
    assert json.loads(result.out) == {"vcpus": 3, "was": 1, "max": 4, "added": ["vcpu1", "vcpu2"]}
    assert cpu_count(vm) == 3
    listed = json.loads(cli("vcpus", "-s", str(vm.qmp_path), "--return-value").out)
    assert [slot["id"] for slot in listed["slots"]] == [None, "vcpu1", "vcpu2", None]
    result = cli("vcpus", "-s", str(vm.qmp_path), "4", "--return-value")
    assert json.loads(result.out)["added"] == ["vcpu3"] and cpu_count(vm) == 4
    result = cli("vcpus", "-s", str(vm.qmp_path), "4", "--return-value")
    assert result.code == 0 and json.loads(result.out)["added"] == []  # already there: nothing to do


@pytest.mark.parametrize("count, message", [("5", "at most 4 vCPUs (its maxcpus), not 5"),
                                            ("0", "at least 1")])
def test_vcpus_out_of_range_is_exit_2_and_changes_nothing(cli, vm_factory, count, message):
    vm = vm_factory(extra_args=SMP)
    result = cli("vcpus", "-s", str(vm.qmp_path), count)
    assert result.code == 2, result
    assert message in result.err and cpu_count(vm) == 1


def test_vcpus_below_the_current_count_is_refused_for_the_vcpus_the_vm_started_with(cli, vm_factory):
    vm = vm_factory(extra_args=["-smp", "2,maxcpus=4"])
    result = cli("vcpus", "-s", str(vm.qmp_path), "1")
    assert result.code == 2, result
    assert "2 were present at start and cannot be unplugged" in result.err and cpu_count(vm) == 2
    assert "/machine/unattached/device[" in result.err and "core-id=1" in result.err, result
    assert "nothing was changed" in result.err


def test_an_unplug_that_would_take_a_vcpu_the_vm_started_with_sends_nothing(cli, vm_factory):
    vm = vm_factory(extra_args=["-smp", "2,maxcpus=4"])
    assert cli("vcpus", "-s", str(vm.qmp_path), "3").code == 0
    result = cli("vcpus", "-s", str(vm.qmp_path), "1", "--wait-timeout", "1")
    assert result.code == 2 and "cannot be unplugged" in result.err, result
    assert cpu_count(vm) == 3  # vcpu1 was not asked to go either


def modern_cpu_hotplug(vm) -> None:
    """What a booting guest OS does through ACPI: switch the PIIX4's CPU hotplug to its modern interface.

    Until then QEMU refuses to unplug a vCPU; after, it sends the guest the
    eject request and waits for the guest (here: forever, there is no OS).
    """
    with vm.check() as qmp:  # /machine/unattached/device[18] on 7.2; device[3]/pm (in the PIIX3) on 10.0
        parents = ["/machine/unattached"]
        for depth in range(2):
            children = []
            for parent in parents:
                for child in qmp.cmd("qom-list", path=parent):
                    path = f"{parent}/{child['name']}"
                    if child["type"] == "child<PIIX4_PM>":
                        qmp.cmd("qom-set", path=path, property="cpu-hotplug-legacy", value=False)
                        return
                    if child["type"].startswith("child<") and depth == 0:
                        children.append(path)
            parents = children
    raise AssertionError("the VM has no PIIX4_PM")


def test_unplugging_a_vcpu_before_an_os_switched_cpu_hotplug_on_is_exit_1_and_changes_nothing(cli, vm_factory):
    vm = vm_factory(extra_args=SMP)
    assert cli("vcpus", "-s", str(vm.qmp_path), "3").code == 0
    result = cli("vcpus", "-s", str(vm.qmp_path), "2")
    assert result.code == 1, result
    assert "vCPU vcpu2 was not asked to go" in result.err and "has not booted an OS" in result.err, result
    assert cpu_count(vm) == 3


def test_unplugging_vcpus_without_a_guest_times_out_naming_the_pending_one(cli, vm_factory):
    """No OS answers the ACPI eject: the highest hot-plugged vCPU is asked first and stays pending."""
    vm = vm_factory(extra_args=SMP)
    assert cli("vcpus", "-s", str(vm.qmp_path), "3").code == 0
    modern_cpu_hotplug(vm)
    result = cli("vcpus", "-s", str(vm.qmp_path), "1", "--wait-timeout", "1")
    assert result.code == 4, result
    assert "did not release vCPU vcpu2 within 1s" in result.err and "unplug request pending" in result.err
    assert "vcpu1" not in result.err  # asked one at a time: vcpu1 was never asked
    assert cpu_count(vm) == 3


@pytest.mark.one_qemu  # qmpctl's own check
def test_vcpus_wait_timeout_must_be_positive(cli, tmp_path):
    result = cli("vcpus", "-s", str(tmp_path / "absent.sock"), "1", "--wait-timeout", "0")
    assert result.code == 2 and "--wait-timeout must be more than 0" in result.err, result


def test_hotplug_memory_adds_a_dimm(cli, vm_factory):
    vm = vm_factory(extra_args=SLOTS)
    result = cli("hotplug-memory", "-s", str(vm.qmp_path), "128M", "--id", "dimm1", "--return-value")
    assert result.code == 0, result
    assert json.loads(result.out) == {"id": "dimm1", "size": 134217728, "memdev": "dimm1-mem",
                                      "memory": 201326592, "max": 536870912}
    assert dimm_state(vm) == {"dimms": ["dimm1"], "objects": ["dimm1-mem", "pc.ram"]}


MEMORY_FAILURES = {
    # name: (QEMU arguments, SIZE, options, exit code, message)
    "no slots": ([], "128M", ["--id", "dimm1"], 2, "start QEMU with -m SIZE,slots=N,maxmem=M"),
    "past maxmem": (SLOTS, "512M", ["--id", "dimm1"], 2, "would exceed the VM's maxmem (512 MiB"),
    "not 2 MiB aligned": (SLOTS, "3M", ["--id", "dimm1"], 2, "multiple of 2 MiB"),
    "no id": (SLOTS, "128M", [], 2, "needs --id"),
    "id in use": (SLOTS, "128M", ["--id", "vd0"], 2, "already has a device with id 'vd0'"),
    "backend refused": (SLOTS + ["-object", "memory-backend-ram,id=dimm1-mem,size=2M"], "128M", ["--id", "dimm1"],
                        1, "dimm1-mem"),
}


@pytest.mark.parametrize("case", MEMORY_FAILURES)
def test_hotplug_memory_failure_leaves_the_vm_unchanged(cli, vm_factory, case):
    args, size, options, code, message = MEMORY_FAILURES[case]
    vm = vm_factory(extra_args=args)
    before = dimm_state(vm)
    result = cli("hotplug-memory", "-s", str(vm.qmp_path), size, *options)
    assert result.code == code, result
    assert message in result.err
    assert dimm_state(vm) == before


def test_all_slots_used_is_exit_2(cli, vm_factory):
    vm = vm_factory(extra_args=SLOTS)
    assert cli("hotplug-memory", "-s", str(vm.qmp_path), "128M", "--id", "dimm1").code == 0
    assert cli("hotplug-memory", "-s", str(vm.qmp_path), "128M", "--id", "dimm2").code == 0
    before = dimm_state(vm)
    result = cli("hotplug-memory", "-s", str(vm.qmp_path), "128M", "--id", "dimm3")
    assert result.code == 2 and "all 2 memory slots" in result.err
    assert dimm_state(vm) == before


def test_unplug_memory_without_a_guest_times_out_and_deletes_nothing(cli, vm_factory):
    vm = vm_factory(extra_args=SLOTS)
    assert cli("hotplug-memory", "-s", str(vm.qmp_path), "128M", "--id", "dimm1").code == 0
    before = dimm_state(vm)
    result = cli("unplug-memory", "-s", str(vm.qmp_path), "dimm1", "--wait-timeout", "1")
    assert result.code == 4, result
    assert "did not release dimm1 within 1s" in result.err and "memory backend dimm1-mem stays" in result.err
    assert dimm_state(vm) == before
    result = cli("unplug-memory", "-s", str(vm.qmp_path), "nosuch")
    assert result.code == 2 and "no DIMM with id 'nosuch'" in result.err



def dimm_slot(vm, device_id: str) -> int:
    with vm.check() as qmp:
        return next(d["data"]["slot"] for d in qmp.cmd("query-memory-devices") if d["data"]["id"] == device_id)


def removal_asked(vm, slot: int) -> bool:
    hmp(vm, f"o /l {MEMORY_HOTPLUG_PORTS:#x} {slot}")
    return bool(int(hmp(vm, f"i /b {MEMORY_HOTPLUG_PORTS + 0x14:#x}").split("=")[1], 16) & 0x4)


def guest_ejects(vm, slot: int) -> None:
    """What the guest's ACPI code does once it has emptied the DIMM."""
    hmp(vm, f"o /l {MEMORY_HOTPLUG_PORTS:#x} {slot}")
    hmp(vm, f"o /b {MEMORY_HOTPLUG_PORTS + 0x14:#x} 0x8")


def unplugging(cli, vm, device_id: str = "dimm1"):
    """A DIMM plugged, unplug-memory running and its device_del arrived: (the qmpctl process, the DIMM's slot)."""
    assert cli("hotplug-memory", "-s", str(vm.qmp_path), "128M", "--id", device_id).code == 0
    slot = dimm_slot(vm, device_id)
    process = cli.popen("unplug-memory", "-s", str(vm.qmp_path), device_id, "--wait-timeout", "60")
    wait_for(lambda: removal_asked(vm, slot), f"device_del of {device_id}", 20, pause=0.02)
    return process, slot


def test_unplug_memory_waits_for_the_guest_then_deletes_the_backend(cli, vm_factory):
    vm = vm_factory(extra_args=SLOTS)
    before = dimm_state(vm)
    process, slot = unplugging(cli, vm)
    guest_ejects(vm, slot)
    out, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    assert json.loads(out) == {"return": {"id": "dimm1", "deleted-memdev": "dimm1-mem"}}
    assert dimm_state(vm) == before


def test_sigterm_twice_after_device_del_then_the_guest_lets_go_deletes_the_backend(cli, vm_factory):
    vm = vm_factory(extra_args=SLOTS)
    before = dimm_state(vm)
    process, slot = unplugging(cli, vm)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGTERM)
    guest_ejects(vm, slot)
    err = process.communicate(timeout=15)[1].decode()
    assert process.returncode == 130, err
    assert "interrupted while unplugging dimm1: the guest released dimm1; deleted its memory backend dimm1-mem" \
        in err, err
    assert dimm_state(vm) == before  # no backend left with no DIMM


def test_ctrl_c_after_device_del_when_the_guest_keeps_it_says_what_stays(cli, vm_factory):
    vm = vm_factory(extra_args=SLOTS)
    process, _ = unplugging(cli, vm)
    before = dimm_state(vm)
    process.send_signal(signal.SIGINT)
    err = process.communicate(timeout=15)[1].decode()
    assert process.returncode == 130, err
    assert ("DIMM dimm1 stays with its unplug request pending; its memory backend dimm1-mem stays with it; once the "
            "guest has released it, 'qmpctl unplug-memory dimm1' deletes what is left") in err, err
    assert dimm_state(vm) == before

def test_an_interrupt_after_the_backend_was_added_takes_it_away(vm_factory):
    from qmpctl.deadline import Deadline
    from qmpctl.vm import memory
    from qmpctl.wire.address import parse_address
    from qmpctl.wire.qmp import QmpSession

    vm = vm_factory(extra_args=SLOTS)
    before = dimm_state(vm)
    with QmpSession.connect(parse_address(str(vm.qmp_path)), Deadline(10)) as session:
        with pytest.raises(KeyboardInterrupt):
            memory.hotplug(InterruptAfter(session, "object-add"), Deadline(10), "dimm1", 128 * 1024 * 1024)
    assert dimm_state(vm) == before


def test_an_interrupt_after_a_vcpu_was_asked_to_go_says_it_stays_pending(cli, vm_factory):
    from qmpctl.deadline import Deadline
    from qmpctl.errors import Interrupted
    from qmpctl.vm import cpus
    from qmpctl.wire.address import parse_address
    from qmpctl.wire.qmp import QmpSession

    vm = vm_factory(extra_args=SMP)
    assert cli("vcpus", "-s", str(vm.qmp_path), "2").code == 0
    modern_cpu_hotplug(vm)
    with QmpSession.connect(parse_address(str(vm.qmp_path)), Deadline(10)) as session:
        with pytest.raises(Interrupted) as raised:
            cpus.unplug(InterruptAfter(session, "device_del"), Deadline(10), 1, 30.0)
    assert "interrupted while unplugging vCPU vcpu1" in raised.value.message
    assert "stays with its unplug request pending" in raised.value.message
    assert cpu_count(vm) == 2
