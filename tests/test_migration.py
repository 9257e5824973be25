"""Live migration and saved state between real QEMUs (no guest OS: cheap to start, RAM made non-zero).

Each VM gets a block of random bytes loaded into its RAM (``-device loader``),
so a migration has real data to send: throttled with ``--speed 1M`` it takes
many seconds, and after a restore the bytes can be read back with
``pmemsave`` and compared. The checks use a second, independent monitor.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from qmpctl.address import parse_address
from qmpctl.deadline import Deadline
from qmpctl.errors import DeadlineExceeded, Interrupted, UsageError
from qmpctl.migration import MigrateOptions, migrate, restore, save
from qmpctl.qmp import QmpSession
from support.qemu import QemuVM, RawQmp

pytestmark = pytest.mark.qemu

BLOB_ADDRESS = 0x1000000
BLOB_BYTES = 16 * 1024 * 1024


@pytest.fixture
def blob(tmp_path: Path) -> Path:
    path = tmp_path / "ram.bin"
    path.write_bytes(os.urandom(BLOB_BYTES))
    return path


@pytest.fixture
def make_vm(vm_factory, blob: Path) -> Callable[..., QemuVM]:
    """A VM whose RAM holds the blob; ``incoming=True`` makes the destination twin (same hardware)."""
    def make(incoming: bool = False, running: bool = True, **kwargs: Any) -> QemuVM:
        extra = ["-device", f"loader,file={blob},addr={BLOB_ADDRESS:#x}"]
        if incoming:
            extra += ["-incoming", "defer"]
        vm = vm_factory(extra_args=extra, paused=False, **kwargs)
        if not running:
            with vm.check() as qmp:
                qmp.cmd("stop")
        return vm
    return make


def session(vm: QemuVM, deadline: Deadline | None = None) -> QmpSession:
    return QmpSession.connect(parse_address(str(vm.qmp_path)), deadline or Deadline(10))


def state(vm: QemuVM) -> str:
    with vm.check() as qmp:
        return qmp.cmd("query-status")["status"]


def migration_status(vm: QemuVM) -> dict[str, Any]:
    with vm.check() as qmp:
        return qmp.cmd("query-migrate")


def wait_for(predicate: Callable[[], bool], seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def not_waiting(vm: QemuVM) -> bool:
    """The destination gave up: QEMU 7.2 exits after a failed incoming migration, or it was told to quit."""
    if not vm.alive():
        return True
    try:
        return state(vm) != "inmigrate"
    except OSError:
        return not vm.alive()


def memory_of(vm: QemuVM, tmp_path: Path) -> bytes:
    dump = tmp_path / f"dump-{os.getpid()}-{time.monotonic_ns()}.bin"
    with vm.check() as qmp:
        qmp.cmd("pmemsave", val=BLOB_ADDRESS, size=BLOB_BYTES, filename=str(dump))
    return dump.read_bytes()


def test_a_running_vm_moves_and_both_sides_agree(make_vm):
    source, destination = make_vm(), make_vm(incoming=True)
    readings = []
    with session(source) as src, session(destination) as dst:
        result = migrate(src, dst, Deadline(10), MigrateOptions(), progress=readings.append, progress_every=0.1)
    summary = result["return"]
    assert summary["source"] == {"status": "postmigrate", "migration": "completed"}, summary
    assert summary["destination"] == {"status": "running"}
    assert summary["bytes"] >= BLOB_BYTES
    assert summary["total-time-ms"] > 0, "read before QEMU stopped the clock"
    assert (state(source), state(destination)) == ("postmigrate", "running")
    assert readings and readings[-1].status == "completed"
    assert not os.path.exists(summary["uri"][5:]), "the private channel directory is removed"


def test_a_paused_source_arrives_paused(make_vm):
    source, destination = make_vm(running=False), make_vm(incoming=True)
    with session(source) as src, session(destination) as dst:
        result = migrate(src, dst, Deadline(10), MigrateOptions())
    assert result["return"]["destination"] == {"status": "paused"}
    assert state(destination) == "paused"


def test_wait_timeout_gives_the_vm_back_to_the_source(make_vm):
    source, destination = make_vm(), make_vm(incoming=True)
    with session(source) as src, session(destination) as dst:
        with pytest.raises(DeadlineExceeded) as failure:
            migrate(src, dst, Deadline(10), MigrateOptions(speed=1024 * 1024, wait_timeout=2))
    assert "--wait-timeout 2s" in failure.value.message and "the source is running" in failure.value.message
    assert state(source) == "running"
    assert migration_status(source)["status"] == "cancelled"
    assert wait_for(lambda: not_waiting(destination)), "the destination is left waiting"


def test_interrupt_gives_the_vm_back_and_a_paused_source_stays_paused(make_vm):
    source, destination = make_vm(running=False), make_vm(incoming=True)

    def interrupt(reading: Any) -> None:
        raise KeyboardInterrupt

    with session(source) as src, session(destination) as dst:
        with pytest.raises(Interrupted) as failure:
            migrate(src, dst, Deadline(10), MigrateOptions(speed=1024 * 1024), progress=interrupt,
                    progress_every=0.1)
    assert "the source is paused" in failure.value.message
    assert state(source) == "paused", "a source that was paused is not started by the cleanup"
    assert wait_for(lambda: not_waiting(destination))


def test_a_destination_not_waiting_is_refused_before_the_source_is_touched(make_vm):
    source, destination = make_vm(), make_vm()
    with source.check() as qmp:
        capabilities_before = qmp.cmd("query-migrate-capabilities")
    with session(source) as src, session(destination) as dst:
        with pytest.raises(UsageError) as failure:
            migrate(src, dst, Deadline(10), MigrateOptions())
    assert "-incoming defer" in failure.value.message
    with source.check() as qmp:
        assert qmp.cmd("query-migrate") == {} and qmp.cmd("query-status")["status"] == "running"
        assert qmp.cmd("query-migrate-capabilities") == capabilities_before


def test_save_quit_and_restore_into_a_new_qemu(make_vm, tmp_path):
    source = make_vm()
    saved = tmp_path / "vm.state"
    with session(source) as src:
        result = save(src, Deadline(10), str(saved), then="quit")
    assert result["return"]["run-state"] == "exited" and result["return"]["bytes"] == saved.stat().st_size
    assert saved.stat().st_size > BLOB_BYTES
    assert wait_for(lambda: not source.alive())
    destination = make_vm(incoming=True)
    with destination.check() as qmp:
        assert qmp.cmd("query-status")["status"] == "inmigrate"
    with session(destination) as dst:
        restored = restore(dst, Deadline(10), str(saved))
    assert restored["return"]["run-state"] == "running"
    assert state(destination) == "running"


def test_restored_memory_is_the_saved_memory(vm_factory, blob, tmp_path):
    """The destination has no blob of its own: what pmemsave reads there came from the file."""
    source = vm_factory(extra_args=["-device", f"loader,file={blob},addr={BLOB_ADDRESS:#x}"], paused=False)
    saved = tmp_path / "vm.state"
    with session(source) as src:
        save(src, Deadline(10), str(saved), then="stay")
    assert state(source) == "postmigrate"
    destination = vm_factory(extra_args=["-incoming", "defer"], paused=False)
    with session(destination) as dst:
        restore(dst, Deadline(10), str(saved), paused=True)
    assert state(destination) == "paused"
    assert memory_of(destination, tmp_path) == blob.read_bytes()


def test_an_existing_file_is_refused_and_kept_byte_for_byte(make_vm, tmp_path):
    source = make_vm()
    saved = tmp_path / "vm.state"
    saved.write_bytes(b"precious\x00\xff")
    with session(source) as src:
        with pytest.raises(UsageError) as failure:
            save(src, Deadline(10), str(saved))
    assert "exists" in failure.value.message
    assert saved.read_bytes() == b"precious\x00\xff"
    assert state(source) == "running" and migration_status(source) == {}


def test_force_replaces_only_once_the_new_state_is_complete(make_vm, tmp_path):
    source = make_vm()
    saved = tmp_path / "vm.state"
    saved.write_bytes(b"old state")

    def interrupt(reading: Any) -> None:
        raise KeyboardInterrupt

    with session(source) as src:
        with pytest.raises(Interrupted) as failure:
            save(src, Deadline(10), str(saved), force=True, speed=1024 * 1024,
                 progress=interrupt, progress_every=0.05)
    assert "is as it was" in failure.value.message, failure.value.message
    assert saved.read_bytes() == b"old state" and os.listdir(tmp_path).count("vm.state") == 1
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".vm.state")]
    assert state(source) == "running", "the save paused it; the cleanup resumed it"
    with session(source) as src:
        save(src, Deadline(10), str(saved), force=True, then="cont")
    assert saved.stat().st_size > BLOB_BYTES and state(source) == "running"


def test_saved_state_is_refused_over_tcp(make_vm, tmp_path):
    source = make_vm(tcp=True)
    with QmpSession.connect(parse_address(source.tcp_address), Deadline(10)) as src:
        with pytest.raises(UsageError) as failure:
            save(src, Deadline(10), str(tmp_path / "vm.state"))
    assert "TCP" in failure.value.message and "file: URI" in failure.value.message
    assert not (tmp_path / "vm.state").exists()
    assert state(source) == "running"
