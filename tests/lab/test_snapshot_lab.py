"""Internal snapshots of a booted guest, its clock after a load, and vCPUs it gives back: the lab guest.

One guest for the module, started without the raw ext2 filesystem
(``data_fs=False``): a writable raw disk cannot hold internal snapshots, and
leaving it out of a snapshot would let its filesystem drift from the guest's
memory. What remains is the qcow2 data disk (``/dev/vda``), which holds the
snapshot and its VM state. The guest has one vCPU and room for a second
(``-smp 1,maxcpus=2``); its kernel takes hot-plugged vCPUs and ejects them
again on request (ACPI).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from support.lab import guest_sh, lab_guest
from support.qemu import RawQmp
from support.qga import agent_request
from support.runner import CliRunner

pytestmark = pytest.mark.lab

HOUR = 3600


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory, qemu_build) -> Iterator:
    with lab_guest(tmp_path_factory.mktemp("snap"), qemu_build, data_fs=False,
                   extra_qemu_args=("-smp", "1,maxcpus=2")) as booted:
        yield booted


def guest_offset(guest) -> float:
    """The guest's clock minus the host's, in seconds, asked without qmpctl."""
    return agent_request(guest.agent_path, "guest-get-time") / 1e9 - time.time()


def run_state(guest) -> str:
    with RawQmp(guest.qmp_path, timeout=30) as qmp:
        return qmp.cmd("query-status")["status"]


def vcpu_ids(guest) -> list[str]:
    with RawQmp(guest.qmp_path, timeout=30) as qmp:
        return [slot["qom-path"].rsplit("/", 1)[-1] for slot in qmp.cmd("query-hotpluggable-cpus")
                if slot.get("qom-path", "").startswith("/machine/peripheral/")]


def guest_cpus(cli: CliRunner, guest) -> list[str]:
    """The CPUs the guest's kernel knows (online or not), from sysfs."""
    return guest_sh(cli, guest, "cd /sys/devices/system/cpu && ls -d cpu[0-9]*").split()


# ----------------------------------------------------------------------------- snapshots


def test_a_loaded_snapshot_forgets_what_the_guest_did_and_sync_time_sets_its_clock(cli, guest):
    qmp = str(guest.qmp_path)
    guest_sh(cli, guest, f"date -u -s @{int(time.time()) - HOUR} >/dev/null")  # the saved guest is an hour behind
    saved = cli("snapshot", "save", "-s", qmp, "clean", "--wait-timeout", "300", timeout=330)
    assert saved.code == 0, saved
    assert json.loads(saved.out)["return"]["disks"] == ["disk0"]
    assert run_state(guest) == "running"

    guest_sh(cli, guest, "echo after > /tmp/after-save && sync")
    assert guest_sh(cli, guest, "cat /tmp/after-save") == "after\n"
    guest_sh(cli, guest, f"date -u -s @{int(time.time())} >/dev/null")  # right again, until the load

    loaded = cli("snapshot", "load", "-s", qmp, "clean", "--sync-time", "-a", str(guest.agent_path),
                 "--wait-timeout", "300", timeout=330)
    assert loaded.code == 0, loaded
    result = json.loads(loaded.out)["return"]
    assert result["name"] == "clean" and result["time-synced"] is True, result
    assert result["time-offset-before"] < -HOUR + 60, result  # the snapshot's clock came back with it
    assert abs(result["time-offset"]) < 2, result
    assert run_state(guest) == "running"
    assert agent_request(guest.agent_path, "guest-ping") == {}
    gone = cli("agent", "exec", "-a", str(guest.agent_path), "--", "cat", "/tmp/after-save")
    assert gone.code == 1 and "No such file" in gone.out + gone.err, gone
    assert abs(guest_offset(guest)) < 2  # read back without qmpctl

    assert cli("snapshot", "delete", "-s", qmp, "clean", "--wait-timeout", "120", timeout=150).code == 0


def test_sync_time_with_an_agent_that_does_not_answer_is_a_warning_after_the_load(cli, guest, tmp_path):
    qmp = str(guest.qmp_path)
    assert cli("snapshot", "save", "-s", qmp, "mute", "--wait-timeout", "300", timeout=330).code == 0
    guest_sh(cli, guest, "echo after > /tmp/after-mute")
    nobody = tmp_path / "nobody.sock"  # nothing listens there
    loaded = cli("snapshot", "load", "-s", qmp, "mute", "--sync-time", "-a", str(nobody), "--timeout", "5",
                 "--wait-timeout", "300", timeout=330)
    assert loaded.code == 0, loaded
    result = json.loads(loaded.out)["return"]
    assert result["time-synced"] is False and str(nobody) in result["time-sync-warning"], result
    assert "clock was not set" in result["time-sync-warning"]
    gone = cli("agent", "exec", "-a", str(guest.agent_path), "--", "cat", "/tmp/after-mute")
    assert gone.code == 1, gone  # the load itself happened
    assert cli("snapshot", "delete", "-s", qmp, "mute", "--wait-timeout", "120", timeout=150).code == 0


# ----------------------------------------------------------------------------- vCPUs


def test_vcpus_below_the_count_unplugs_the_hot_plugged_vcpu_the_guest_was_using(cli, guest):
    qmp = str(guest.qmp_path)
    plugged = cli("vcpus", "-s", qmp, "2", "--return-value")
    assert plugged.code == 0 and json.loads(plugged.out)["added"] == ["vcpu1"], plugged
    assert vcpu_ids(guest) == ["vcpu1"]
    cpu1 = "/sys/devices/system/cpu/cpu1/online"  # appears once the guest has seen the plug
    assert guest_sh(cli, guest, f"for i in $(seq 100); do [ -e {cpu1} ] && break; sleep 0.1; done; echo 1 > {cpu1}; "
                                "cat /sys/devices/system/cpu/online") == "0-1\n"  # the guest uses it
    assert guest_cpus(cli, guest) == ["cpu0", "cpu1"]

    unplugged = cli("vcpus", "-s", qmp, "1", "--wait-timeout", "60", "--return-value")
    assert unplugged.code == 0, unplugged
    assert json.loads(unplugged.out) == {"vcpus": 1, "was": 2, "max": 2, "removed": ["vcpu1"]}
    assert vcpu_ids(guest) == []  # QEMU's own view: DEVICE_DELETED came
    assert guest_cpus(cli, guest) == ["cpu0"]  # the guest's: it offlined and ejected it
    assert guest_sh(cli, guest, "cat /sys/devices/system/cpu/online") == "0\n"

    again = cli("vcpus", "-s", qmp, "1", "--return-value")
    assert again.code == 0 and json.loads(again.out)["added"] == [], again  # already there: nothing to do
