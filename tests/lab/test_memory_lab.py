"""Memory a running guest takes and gives back: hotplug-memory and unplug-memory against the lab guest.

One guest for the module, started with room for DIMMs (``-m 256M,slots=2,maxmem=1G``)
and without the raw ext2 filesystem (nothing here needs it). Its kernel sees a
hot-plugged DIMM as new memory blocks in ``/sys/devices/system/memory`` and
leaves them offline (``auto_online_blocks`` is ``offline``); the test onlines
them as movable memory, so the kernel can empty them again and let the DIMM go
when QEMU asks (an ACPI eject).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from support.lab import guest_sh, lab_guest
from support.qemu import RawQmp
from support.runner import CliRunner

pytestmark = pytest.mark.lab

MEMORY = "/sys/devices/system/memory"
DIMM_SIZE = 128 * 1024 * 1024


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory, qemu_build) -> Iterator:
    with lab_guest(tmp_path_factory.mktemp("mem"), qemu_build, data_fs=False,
                   extra_qemu_args=("-m", "256M,slots=2,maxmem=1G")) as booted:
        yield booted


def mem_total_kib(cli: CliRunner, guest) -> int:
    return int(guest_sh(cli, guest, "grep MemTotal /proc/meminfo").split()[1])


def memory_blocks(cli: CliRunner, guest) -> dict[str, str]:
    """Each memory block the guest's kernel knows, with its state (online/offline)."""
    out = guest_sh(cli, guest, f"cd {MEMORY} && for m in memory[0-9]*; do echo $m $(cat $m/state); done")
    return dict(line.split() for line in out.splitlines())


def qemu_memory(guest) -> dict:
    """QEMU's own view, without qmpctl: the DIMMs and the memory backends."""
    with RawQmp(guest.qmp_path, timeout=30) as qmp:
        return {"dimms": [dimm["data"]["id"] for dimm in qmp.cmd("query-memory-devices")],
                "backends": sorted(entry["name"] for entry in qmp.cmd("qom-list", path="/objects")
                                   if entry["type"].startswith("child<memory-backend"))}


def plug_and_online_movable(cli: CliRunner, guest, device_id: str) -> list[str]:
    """hotplug-memory, wait for the guest to see the new blocks, online them as movable; the blocks' names."""
    before = memory_blocks(cli, guest)
    plugged = cli("hotplug-memory", "-s", str(guest.qmp_path), "128M", "--id", device_id, "--return-value")
    assert plugged.code == 0, plugged
    assert json.loads(plugged.out)["memdev"] == f"{device_id}-mem"
    expected = DIMM_SIZE // int(guest_sh(cli, guest, f"cat {MEMORY}/block_size_bytes"), 16)
    guest_sh(cli, guest, f"cd {MEMORY}; for i in $(seq 200); do "  # the ACPI notification takes a moment
                         f"[ $(ls -d memory[0-9]* | wc -l) -ge {len(before) + expected} ] && break; sleep 0.1; done")
    new = sorted(set(memory_blocks(cli, guest)) - set(before))
    assert len(new) == expected, (before, new)
    assert {memory_blocks(cli, guest)[block] for block in new} == {"offline"}  # the kernel waits to be told
    guest_sh(cli, guest, "".join(f"echo online_movable > {MEMORY}/{block}/state; " for block in new))
    zones = guest_sh(cli, guest, "".join(f"cat {MEMORY}/{block}/valid_zones; " for block in new))
    assert zones.split() == ["Movable"] * len(new), zones
    return new


def test_unplug_memory_of_a_dimm_the_guest_onlined_as_movable_gives_it_back(cli, guest):
    qmp = str(guest.qmp_path)
    total = mem_total_kib(cli, guest)
    blocks = memory_blocks(cli, guest)
    assert qemu_memory(guest) == {"dimms": [], "backends": ["pc.ram"]}

    new = plug_and_online_movable(cli, guest, "dimm1")
    assert mem_total_kib(cli, guest) == total + DIMM_SIZE // 1024  # the guest uses it
    assert qemu_memory(guest) == {"dimms": ["dimm1"], "backends": ["dimm1-mem", "pc.ram"]}

    unplugged = cli("unplug-memory", "-s", qmp, "dimm1", "--wait-timeout", "60", "--return-value", timeout=90)
    assert unplugged.code == 0, unplugged
    assert json.loads(unplugged.out) == {"id": "dimm1", "deleted-memdev": "dimm1-mem"}
    assert qemu_memory(guest) == {"dimms": [], "backends": ["pc.ram"]}  # DIMM and backend gone
    assert mem_total_kib(cli, guest) == total  # the guest offlined and removed it
    remaining = memory_blocks(cli, guest)
    assert remaining == blocks and not set(new) & set(remaining)


def test_the_id_and_the_slot_of_an_unplugged_dimm_can_be_used_again(cli, guest):
    total = mem_total_kib(cli, guest)
    plug_and_online_movable(cli, guest, "dimm1")
    plug_and_online_movable(cli, guest, "dimm2")  # both slots
    assert mem_total_kib(cli, guest) == total + 2 * DIMM_SIZE // 1024
    for device_id in ("dimm2", "dimm1"):
        unplugged = cli("unplug-memory", "-s", str(guest.qmp_path), device_id, "--wait-timeout", "60", timeout=90)
        assert unplugged.code == 0, unplugged
    assert qemu_memory(guest) == {"dimms": [], "backends": ["pc.ram"]}
    assert mem_total_kib(cli, guest) == total
