"""Seeing and limiting a VM: stats, throttle and balloon against real QEMU and the lab guest.

The limits are measured where they matter: a real guest reading its disk
with O_DIRECT, so neither the guest's page cache nor QEMU's hides the limit.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import pytest

from qmpctl.vm import balloon
from qmpctl.vm import stats
from qmpctl.vm import throttle
from qmpctl.wire.address import parse_address
from qmpctl.deadline import Deadline
from qmpctl.errors import DeadlineExceeded, UsageError, VmError
from qmpctl.wire.qmp import QmpSession
from support.lab import lab_guest_module
from support.waits import wait_for

MiB = 1024 * 1024


def connect(path: Path) -> QmpSession:
    return QmpSession.connect(parse_address(str(path)), Deadline(10))


@pytest.fixture
def session(vm_factory) -> Iterator[QmpSession]:
    vm = vm_factory(extra_args=["-device", "virtio-balloon-pci,id=balloon0"])
    with connect(vm.qmp_path) as opened:
        yield opened


# -- real QEMU without a guest --------------------------------------------------------------------

@pytest.mark.qemu
def test_stats_document_names_disks_vcpus_balloon_and_says_why_query_stats_is_empty(session):
    document = stats.collect(session, Deadline(10))
    disk = document["disks"][0]
    assert (disk["device"], disk["qdev"], disk["node-name"]) == ("vd0", "/machine/peripheral/vd0/virtio-backend",
                                                                  "disk0")
    assert {"rd_bytes", "wr_bytes", "rd_operations", "wr_operations", "flush_operations",
            "rd_total_time_ns"} <= set(disk)
    assert document["vcpus"][0]["cpu-index"] == 0 and document["vcpus"][0]["thread-id"] > 0
    assert document["balloon"]["actual"] == 64 * MiB
    assert "query-stats" not in document and stats.EMPTY_QUERY_STATS in document["notes"]  # TCG has no counters


@pytest.mark.qemu
def test_stats_without_a_balloon_leaves_it_out_with_a_note(vm):
    with connect(vm.qmp_path) as opened:
        document = stats.collect(opened, Deadline(10))
    assert "balloon" not in document and stats.NO_BALLOON in document["notes"]


def test_rates_come_from_consecutive_samples():
    rates = stats.Rates()
    first = rates.update("a", {"disks": [{"qdev": "q", "device": "d", "node-name": "n", "rd_bytes": 100}]}, 10.0)
    assert "rates" not in first["disks"][0]
    second = rates.update("a", {"disks": [{"qdev": "q", "device": "d", "node-name": "n", "rd_bytes": 300}]}, 12.0)
    assert second["disks"][0]["rates"] == {"rd_bytes_per_s": 100.0} and second["interval"] == 2.0


def test_ticks_keep_a_fixed_schedule_and_skip_missed_ones():
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    times = []
    for at in stats.ticks(1.0, 4, clock=lambda: now[0], sleep=sleep):
        times.append(at)
        now[0] += 0.25 if len(times) != 2 else 2.5  # the second sample is slow
    assert times == [0.0, 1.0, 3.5, 4.5]  # late: sampled at once, then on a new schedule


@pytest.mark.qemu
def test_throttle_changes_only_what_is_named_and_off_clears_all(session):
    deadline = Deadline(10)
    assert throttle.show(session, deadline, "vd0")["limits"] == dict.fromkeys(throttle.BASE, 0)
    limits = throttle.set_limits(session, deadline, "vd0", {"bps_rd": MiB})["limits"]
    assert limits["bps_rd"] == MiB
    limits = throttle.set_limits(session, deadline, "vd0", {"iops": 100, "iops_max": 200})["limits"]
    assert (limits["bps_rd"], limits["iops"], limits["iops_max"]) == (MiB, 100, 200)
    limits = throttle.set_limits(session, deadline, "vd0", {"bps": 2 * MiB})["limits"]
    assert (limits["bps"], limits["bps_rd"], limits["iops"]) == (2 * MiB, 0, 100)  # total replaces read/write
    # Addressed by the qdev path as well as by the device id.
    limits = throttle.show(session, deadline, "/machine/peripheral/vd0/virtio-backend")["limits"]
    assert limits["bps"] == 2 * MiB
    cleared = throttle.set_limits(session, deadline, "vd0", {}, off=True)["limits"]
    assert cleared == dict.fromkeys(throttle.BASE, 0)


def test_merge_keeps_what_is_not_named_and_a_kind_is_either_total_or_split():
    current = {"bps": 2 * MiB, "bps_max": 4 * MiB, "bps_max_length": 5, "bps_rd": 0, "bps_wr": 0,
               "iops": 0, "iops_rd": 100, "iops_wr": 0, "iops_size": 4096, "group": "g"}
    merged = throttle.merge(current, {"bps_rd": MiB})
    assert merged == {"bps": 0, "bps_rd": MiB, "bps_wr": 0, "iops": 0, "iops_rd": 100, "iops_wr": 0,
                      "iops_size": 4096, "group": "g"}
    merged = throttle.merge(current, {"iops": 50})
    assert (merged["iops"], merged["iops_rd"], merged["bps"], merged["bps_max"]) == (50, 0, 2 * MiB, 4 * MiB)
    # Turning a limit off takes its burst (and the last iops limit --iops-size) along: QEMU would refuse them alone.
    assert throttle.merge(current, {"bps": 0, "iops_rd": 0}) == dict.fromkeys(throttle.BASE, 0)
    throttle.check_limits(throttle.merge(current, {"bps": 0}))


CONTRADICTIONS = [
    ({"bps": MiB, "bps_rd": MiB}, "cannot be combined with --bps-rd"),
    ({"iops_wr_max_length": 3}, "--iops-wr-max-length needs a burst rate"),
    ({"bps_max": MiB}, "--bps-max is a burst above --bps"),
    ({"bps": 2 * MiB, "bps_max": MiB}, "cannot be lower than --bps"),
    ({"iops_size": 4096}, "--iops-size needs an operations limit"),
    ({"group": "g1"}, "--group puts the disk's limits in a group, and the disk has none"),
]


@pytest.mark.qemu
def test_contradictory_limits_are_refused_before_anything_is_sent(session):
    for changes, reason in CONTRADICTIONS:  # one VM for all: each case must leave it as it was
        with pytest.raises(UsageError, match=reason):
            throttle.set_limits(session, Deadline(10), "vd0", changes)
        assert throttle.show(session, Deadline(10), "vd0")["limits"] == dict.fromkeys(throttle.BASE, 0)


@pytest.mark.qemu
def test_throttle_of_an_unknown_disk_names_the_disks_there_are(session):
    with pytest.raises(UsageError, match=r"no disk 'vd9'.*\(disks: vd0\)"):
        throttle.show(session, Deadline(10), "vd9")


@pytest.mark.qemu
def test_balloon_shows_and_sets_and_a_wait_says_how_far_the_guest_got(session):
    assert balloon.query(session, Deadline(10)) == {"actual": 64 * MiB}
    # Without a guest nothing gives memory back: the request is taken, the wait runs out.
    with pytest.raises(DeadlineExceeded, match=f"did not reach {32 * MiB} bytes within 0.5 s: it has {64 * MiB}"):
        balloon.set_target(session, Deadline(10), 32 * MiB, Deadline(0.5))
    assert balloon.set_target(session, Deadline(10), 64 * MiB, Deadline(5)) == {"actual": 64 * MiB,
                                                                                "target": 64 * MiB}


@pytest.mark.qemu
def test_balloon_without_a_device_names_the_device_to_add(vm):
    with connect(vm.qmp_path) as opened, pytest.raises(VmError, match="-device virtio-balloon-pci") as caught:
        balloon.query(opened, Deadline(10))
    assert caught.value.error_class == "DeviceNotActive"


# -- through the command line ----------------------------------------------------------------------------

@pytest.mark.qemu
def test_cli_throttle_shows_sets_and_refuses_contradictions_with_exit_2(cli, vm):
    sock = str(vm.qmp_path)
    shown = cli("throttle", "-s", sock, "vd0", "--return-value")
    assert shown.code == 0 and json.loads(shown.out)["limits"] == dict.fromkeys(throttle.BASE, 0), shown
    both = cli("throttle", "-s", sock, "vd0", "--bps", "1M", "--bps-rd", "1M")
    assert both.code == 2 and "cannot be combined with --bps-rd" in both.err, both
    length = cli("throttle", "-s", sock, "vd0", "--iops-max-length", "3")
    assert length.code == 2 and "needs a burst rate" in length.err, length
    off_and_limit = cli("throttle", "-s", sock, "vd0", "--off", "--iops", "3")
    assert off_and_limit.code == 2, off_and_limit
    suffix = cli("throttle", "-s", sock, "vd0", "--bps-wr", "10M", "--iops-size", "4K", "--iops-wr", "50",
                 "--return-value")
    limits = json.loads(suffix.out)["limits"]
    assert (limits["bps_wr"], limits["iops_size"], limits["iops_wr"]) == (10 * MiB, 4096, 50), suffix
    plan = json.loads(cli("throttle", "-s", sock, "vd0", "--iops", "9", "--dry-run").out)
    assert [request["execute"] for request in plan["plan"]] == ["query-block", "block_set_io_throttle"]
    assert "a plan" in plan["note"] and "keeps those not named" in plan["note"]
    unknown = cli("throttle", "-s", sock, "vd9")
    assert unknown.code == 2 and "(disks: vd0)" in unknown.err, unknown


@pytest.mark.qemu
def test_cli_balloon_with_and_without_a_device(cli, vm_factory):
    with_balloon = vm_factory(extra_args=["-device", "virtio-balloon-pci"])
    shown = cli("balloon", "-s", str(with_balloon.qmp_path))
    assert shown.code == 0 and json.loads(shown.out) == {"return": {"actual": 64 * MiB}}, shown
    asked = cli("balloon", "-s", str(with_balloon.qmp_path), "32M")
    assert asked.code == 0 and json.loads(asked.out)["return"]["target"] == 32 * MiB, asked
    waited = cli("balloon", "-s", str(with_balloon.qmp_path), "32M", "--wait-timeout", "0.5")
    assert waited.code == 4 and f"it has {64 * MiB} bytes" in waited.err, waited
    without = vm_factory()
    missing = cli("balloon", "-s", str(without.qmp_path))
    assert missing.code == 1 and "-device virtio-balloon-pci" in missing.err, missing


@pytest.mark.qemu
def test_cli_stats_of_a_fleet_is_one_line_per_vm(cli, vm_factory):
    first, second = vm_factory(), vm_factory()
    result = cli("stats", "-s", str(first.qmp_path), "-s", str(second.qmp_path))
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert result.code == 0, result
    assert [line["target"] for line in lines] == [f"unix:{first.qmp_path}", f"unix:{second.qmp_path}"]
    assert all(line["return"]["disks"][0]["device"] == "vd0" for line in lines)


# -- the lab guest ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One booted lab guest for the module; its data disk is /dev/vda in the guest."""
    with lab_guest_module().LabGuest(tmp_path_factory.mktemp("perf"), data_fs=False) as booted:
        yield booted


def guest_read_arguments(guest, mebibytes: int) -> list[str]:
    """qmpctl reading ``mebibytes`` from the guest's data disk past every cache (O_DIRECT), through the agent."""
    return ["agent", "exec", "-a", str(guest.agent_path), "--timeout", "120",
            "--", "dd", "if=/dev/vda", "of=/dev/null", "bs=64k", f"count={mebibytes * 16}", "iflag=direct"]


def guest_read(cli, guest, mebibytes: int) -> float:
    started = time.monotonic()
    done = cli(*guest_read_arguments(guest, mebibytes), timeout=150)
    assert done.code == 0, done.err
    return time.monotonic() - started


def disk_read_bytes(guest) -> int:
    """The data disk's rd_bytes, read with qmpctl's library on a connection of its own."""
    with connect(guest.qmp_path) as opened:
        disks = stats.collect(opened, Deadline(10))["disks"]
    return next(disk["rd_bytes"] for disk in disks if disk["device"] == guest.data_disk_device_id)


@pytest.mark.lab
def test_stats_counters_grow_by_what_the_guest_reads(cli, guest):
    def read_bytes() -> int:
        result = cli("stats", "-s", str(guest.qmp_path), "--return-value")
        assert result.code == 0, result
        disks = json.loads(result.out)["disks"]
        return next(disk["rd_bytes"] for disk in disks if disk["device"] == guest.data_disk_device_id)

    before = read_bytes()
    guest_read(cli, guest, 4)
    assert read_bytes() - before >= 4 * MiB


@pytest.mark.lab
def test_a_read_limit_holds_in_the_guest_is_seen_in_watch_and_kept_by_other_limits(cli, guest):
    sock, device = str(guest.qmp_path), guest.data_disk_device_id
    unthrottled = guest_read(cli, guest, 8)
    limited = cli("throttle", "-s", sock, device, "--bps-rd", "1M", "--return-value")
    assert limited.code == 0 and json.loads(limited.out)["limits"]["bps_rd"] == MiB, limited
    try:
        before = disk_read_bytes(guest)
        started = time.monotonic()
        reader = cli.popen(*guest_read_arguments(guest, 8))
        # The watch below is to see the guest reading, so wait until it has begun.
        wait_for(lambda: disk_read_bytes(guest) != before, "the guest beginning to read", 30)
        watched = cli("stats", "-s", sock, "--watch", "1", "--count", "3", "--return-value")
        assert reader.wait(timeout=120) == 0, reader.stderr.read() if reader.stderr else ""
        throttled = time.monotonic() - started
        more = cli("throttle", "-s", sock, device, "--iops", "100", "--return-value")
        assert more.code == 0, more
        limits = json.loads(more.out)["limits"]
        assert (limits["bps_rd"], limits["iops"]) == (MiB, 100)
    finally:
        cleared = cli("throttle", "-s", sock, device, "--off", "--return-value")
    print(f"8 MiB with O_DIRECT: {throttled:.2f} s at 1 MiB/s, {unthrottled:.2f} s unthrottled")
    # 1 MiB/s, minus the burst QEMU allows at the start: at least about 6 s.
    assert throttled >= 6 and unthrottled < throttled / 3
    assert cleared.code == 0 and json.loads(cleared.out)["limits"] == dict.fromkeys(throttle.BASE, 0)
    samples = [json.loads(line) for line in watched.out.splitlines()]
    assert watched.code == 0 and len(samples) == 3, watched
    disk_rates = [next(d for d in sample["disks"] if d["device"] == device).get("rates") for sample in samples]
    assert disk_rates[0] is None and all(rates is not None for rates in disk_rates[1:])
    # While the guest reads at the limit, the watch sees about 1 MiB/s (the burst and sampling blur it).
    assert all(0.3 * MiB < rates["rd_bytes_per_s"] < 2 * MiB for rates in disk_rates[1:]), disk_rates


@pytest.mark.qemu
def test_cli_stats_watch_of_a_fleet_reports_a_dead_vm_and_goes_on(cli, vm, tmp_path):
    absent = tmp_path / "absent.sock"
    result = cli("stats", "-s", str(vm.qmp_path), "-s", str(absent), "--watch", "0.2", "--count", "2")
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert result.code == 3 and len(lines) == 4, result
    assert [line["target"] for line in lines] == [f"unix:{vm.qmp_path}", f"unix:{absent}"] * 2
    assert "rates" in lines[2]["return"]["disks"][0] and lines[3]["exit"] == 3
