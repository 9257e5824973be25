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

from qmpctl.wire.address import parse_address
from qmpctl.deadline import Deadline
from qmpctl.errors import DeadlineExceeded, Interrupted, JobFailed, UsageError
from qmpctl.vm.migration import MigrateOptions, migrate
from qmpctl.vm.savedstate import restore, save
from qmpctl.wire.qmp import QmpSession
from support.qemu import QemuVM
from support.sshd import sshd  # noqa: F401  (a fixture)
from support.waits import wait_for

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
    summary = result
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
    assert result["destination"] == {"status": "paused"}
    assert state(destination) == "paused"


def test_wait_timeout_gives_the_vm_back_to_the_source(make_vm):
    source, destination = make_vm(), make_vm(incoming=True)
    with session(source) as src, session(destination) as dst:
        with pytest.raises(DeadlineExceeded) as failure:
            migrate(src, dst, Deadline(10), MigrateOptions(speed=1024 * 1024, wait_timeout=2))
    assert "--wait-timeout 2s" in failure.value.message and "the source is running" in failure.value.message
    assert state(source) == "running"
    assert migration_status(source)["status"] == "cancelled"
    wait_for(lambda: not_waiting(destination), "the destination is left waiting", timeout=15)


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
    wait_for(lambda: not_waiting(destination), "the destination no longer waiting", timeout=15)


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


# ------------------------------------------------------------------ through the command line


def test_cli_migrates_with_json_progress_ending_in_completed(cli, make_vm):
    source, destination = make_vm(), make_vm(incoming=True)
    result = cli("migrate", "-s", str(source.qmp_path), "--to", str(destination.qmp_path), "--progress", "json",
                 "--speed", "8M", "--downtime", "500", "--auto-converge")
    assert result.code == 0, result
    with source.check() as qmp:
        parameters = qmp.cmd("query-migrate-parameters")
        capabilities = {entry["capability"]: entry["state"] for entry in qmp.cmd("query-migrate-capabilities")}
    assert (parameters["max-bandwidth"], parameters["downtime-limit"]) == (8 * 1024 * 1024, 500)
    assert capabilities["auto-converge"] and capabilities["events"] and not capabilities["postcopy-ram"]
    summary = json.loads(result.out)["return"]
    assert summary["source"]["status"] == "postmigrate" and summary["destination"]["status"] == "running"
    lines = [json.loads(line) for line in result.err.splitlines()]
    assert len(lines) >= 2, result.err
    assert lines[-1]["status"] == "completed" and lines[-1]["remaining"] == 0
    assert {"transferred", "remaining", "dirty-rate", "expected-downtime", "pass"} <= set(lines[0])


def test_cli_refuses_a_destination_that_does_not_wait(cli, make_vm):
    source, destination = make_vm(), make_vm()
    result = cli("migrate", "-s", str(source.qmp_path), "--to", str(destination.qmp_path))
    assert result.code == 2, result
    assert "-incoming defer" in result.err and "source was not touched" in result.err
    with source.check() as qmp:
        assert qmp.cmd("query-migrate") == {} and qmp.cmd("query-status")["status"] == "running"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_sigint_cancels_and_the_source_runs_again(cli, make_vm, signum):
    source, destination = make_vm(), make_vm(incoming=True)
    process = cli.popen("migrate", "-s", str(source.qmp_path), "--to", str(destination.qmp_path),
                        "--speed", "1M", "--progress", "json")
    first = process.stderr.readline()
    assert json.loads(first)["status"] == "active", first
    process.send_signal(signum)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert b"the source is running" in err, err
    assert state(source) == "running" and migration_status(source)["status"] == "cancelled"
    wait_for(lambda: not_waiting(destination), "the destination no longer waiting", timeout=15)


def test_cli_stall_timeout_cancels_when_the_destination_hangs(cli, make_vm):
    """A destination that stops reading (here SIGSTOP) leaves ram.remaining where it was."""
    source, destination = make_vm(), make_vm(incoming=True)
    process = cli.popen("migrate", "-s", str(source.qmp_path), "--to", str(destination.qmp_path),
                        "--speed", "4M", "--stall-timeout", "1.5", "--progress", "json")
    try:
        assert json.loads(process.stderr.readline())["status"] == "active"
        destination.proc.send_signal(signal.SIGSTOP)
        # The cleanup asks the destination how it is; let it answer once the source has given up.
        wait_for(lambda: migration_status(source).get("status") == "cancelled", "the migration cancelled", timeout=30)
    finally:
        destination.proc.send_signal(signal.SIGCONT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 4, err
    assert b"stalled" in err and b"the source is running" in err, err
    assert state(source) == "running"
    wait_for(lambda: not_waiting(destination), "the destination no longer waiting", timeout=15)


def test_cli_no_wait_status_and_cancel(cli, make_vm):
    source, destination = make_vm(), make_vm(incoming=True)
    started = cli("migrate", "-s", str(source.qmp_path), "--to", str(destination.qmp_path), "--speed", "1M",
                  "--no-wait")
    assert started.code == 0, started
    assert json.loads(started.out)["return"]["status"] == "active"
    shown = cli("migrate", "-s", str(source.qmp_path), "--status", "--return-value")
    assert shown.code == 0, shown
    assert json.loads(shown.out)["migration"]["status"] == "active"
    second = cli("migrate", "-s", str(source.qmp_path), "--to", str(make_vm(incoming=True).qmp_path))
    assert second.code == 2 and "already under way" in second.err, second
    cancelled = cli("migrate", "-s", str(source.qmp_path), "--cancel", "--return-value")
    assert cancelled.code == 0, cancelled
    assert json.loads(cancelled.out) == {"migration": "cancelled", "run-state": "running"}
    wait_for(lambda: not_waiting(destination), "the destination no longer waiting", timeout=15)


def test_cli_save_quit_restore(cli, make_vm, vm_factory, blob, tmp_path):
    source = make_vm()
    saved = tmp_path / "vm.state"
    result = cli("migrate", "-s", str(source.qmp_path), "--to-file", str(saved), "--then", "quit")
    assert result.code == 0, result
    assert json.loads(result.out)["return"]["bytes"] == saved.stat().st_size
    wait_for(lambda: not source.alive(), "the source QEMU gone", timeout=15)
    destination = vm_factory(extra_args=["-incoming", "defer"], paused=False)
    restored = cli("migrate", "--from-file", str(saved), "-s", str(destination.qmp_path), "--return-value")
    assert restored.code == 0, restored
    assert json.loads(restored.out)["run-state"] == "running"
    assert memory_of(destination, tmp_path) == blob.read_bytes()


def test_cli_refuses_an_existing_file_and_tcp(cli, make_vm, tmp_path):
    source = make_vm(tcp=True)
    saved = tmp_path / "vm.state"
    saved.write_bytes(b"keep me")
    exists = cli("migrate", "-s", str(source.qmp_path), "--to-file", str(saved))
    assert exists.code == 2 and "exists" in exists.err, exists
    assert saved.read_bytes() == b"keep me"
    over_tcp = cli("migrate", "-s", source.tcp_address, "--to-file", str(tmp_path / "new.state"))
    assert over_tcp.code == 2 and "TCP" in over_tcp.err, over_tcp
    assert not (tmp_path / "new.state").exists()
    restore_over_tcp = cli("migrate", "--from-file", str(saved), "-s", source.tcp_address)
    assert restore_over_tcp.code == 2 and "TCP" in restore_over_tcp.err, restore_over_tcp
    assert state(source) == "running" and migration_status(source) == {}


@pytest.mark.parametrize("argv, says", [
    (["-d", "vm1", "--to", "/tmp/b.sock"], "virsh migrate"),
    (["-s", "/tmp/a.sock"], "give one of"),
    (["-s", "/tmp/a.sock", "--to", "/tmp/b.sock", "--to-file", "/tmp/x"], "--to and --to-file"),
    (["-s", "/tmp/a.sock", "--to-file", "/tmp/x", "--auto-converge"], "--auto-converge does not go"),
    (["-s", "/tmp/a.sock", "--to", "/tmp/b.sock", "--uri", "exec:cat > /tmp/x"], "tcp:HOST:PORT"),
    (["-s", "/tmp/a.sock", "--to", "/tmp/a.sock"], "the source itself"),
])
def test_cli_usage_mistakes_exit_2_before_connecting(cli, argv, says):
    result = cli("migrate", *argv)
    assert result.code == 2 and says in result.err, result


def test_cli_postcopy_after_finishes_a_throttled_migration(cli, make_vm):
    """At 1 MiB/s the RAM would take about 16 s; postcopy moves the VM at once and pulls the rest unthrottled."""
    source, destination = make_vm(), make_vm(incoming=True)
    result = cli("migrate", "-s", str(source.qmp_path), "--to", str(destination.qmp_path), "--speed", "1M",
                 "--postcopy-after", "0.5", "--progress", "none")
    assert result.code == 0, result
    summary = json.loads(result.out)["return"]
    assert summary["destination"]["status"] == "running" and summary["seconds"] < 8, summary
    assert (state(source), state(destination)) == ("postmigrate", "running")


@pytest.mark.one_qemu  # QEMU 7.2's own refusal: postcopy and x-ignore-shared do not go together there
def test_postcopy_a_source_refuses_is_exit_2_before_anything_moves(cli, make_vm):
    source, destination = make_vm(), make_vm(incoming=True)
    with source.check() as qmp:
        qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}])
    result = cli("migrate", "-s", str(source.qmp_path), "--to", str(destination.qmp_path),
                 "--postcopy-after", "1", "--progress", "none")
    assert result.code == 2, result
    assert "--postcopy-after: the source cannot do postcopy" in result.err, result
    assert "ignore-shared" in result.err, result  # QEMU's reason
    assert (state(source), state(destination)) == ("running", "inmigrate")
    with source.check() as qmp:
        assert qmp.cmd("query-migrate") == {}  # no migration was started


def test_a_destination_that_cannot_load_the_state_gives_the_vm_back(make_vm):
    """Everything is sent, then the destination (lacking the source's disk) fails: the intact source resumes."""
    source, destination = make_vm(), make_vm(incoming=True, qemu_args_disk=False)
    with session(source) as src, session(destination) as dst:
        with pytest.raises(JobFailed) as failure:
            migrate(src, dst, Deadline(10), MigrateOptions())
    assert "the source is running" in failure.value.message, failure.value.message
    assert state(source) == "running"
    wait_for(lambda: not destination.alive(), "the destination QEMU gone", timeout=15)


def test_cli_a_migration_may_take_longer_than_timeout(cli, make_vm, tmp_path):
    """--timeout bounds each exchange; the migration (2 s at 8 MiB/s) and the save are bounded by --wait-timeout."""
    source, destination = make_vm(), make_vm(incoming=True)
    result = cli("migrate", "-s", str(source.qmp_path), "--to", str(destination.qmp_path), "--speed", "8M",
                 "--timeout", "1", "--progress", "none")
    assert result.code == 0, result
    assert json.loads(result.out)["return"]["seconds"] > 1
    saved = cli("migrate", "-s", str(destination.qmp_path), "--to-file", str(tmp_path / "vm.state"), "--speed", "8M",
                "--then", "cont", "--timeout", "1", "--return-value")
    assert saved.code == 0, saved
    assert json.loads(saved.out)["run-state"] == "running"


def test_stall_is_judged_within_one_pass():
    """A new pass starts from what the guest dirtied: remaining grows then, which is progress, not a stall."""
    from qmpctl.vm.migration import MigrationReading, _Watch

    watch = _Watch(None, 1.0, MigrateOptions(stall_timeout=1.0), None, "migration")  # type: ignore[arg-type]

    def reading(passes: int, remaining: int) -> MigrationReading:
        return MigrationReading("active", remaining=remaining, total=100, passes=passes)

    watch._watch_stall(reading(1, 100), 0.0)
    watch._watch_stall(reading(1, 10), 0.5)
    watch._watch_stall(reading(2, 50), 2.0)  # above pass 1's lowest, but a new pass
    watch._watch_stall(reading(2, 40), 2.9)
    with pytest.raises(DeadlineExceeded, match="stalled"):
        watch._watch_stall(reading(2, 40), 4.0)


def test_cli_tcp_channel_on_a_port_the_destination_picks(cli, make_vm):
    source, destination = make_vm(), make_vm(incoming=True)
    result = cli("migrate", "-s", str(source.qmp_path), "--to", str(destination.qmp_path),
                 "--uri", "tcp:127.0.0.1:0", "--return-value")
    assert result.code == 0, result
    summary = json.loads(result.out)
    host, port = summary["uri"][4:].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0, summary
    assert (state(source), state(destination)) == ("postmigrate", "running")


@pytest.mark.parametrize("mode, first", [(["--to", "/tmp/b.sock"], "migrate-set-capabilities"),
                                         (["--to-file", "vm.state"], "stop"),
                                         (["--cancel"], "migrate_cancel")])
def test_dry_run_is_a_labelled_plan_and_connects_to_nothing(cli, tmp_path, mode, first):
    result = cli("migrate", "-s", str(tmp_path / "absent.sock"), *mode, "--dry-run")
    assert result.code == 0, result
    shown = json.loads(result.out)
    assert shown["plan"][0]["execute"] == first and "a plan" in shown["note"]
    assert not (tmp_path / "vm.state").exists()


def test_cli_migrates_between_monitors_reached_over_ssh(cli, sshd, make_vm, tmp_path):
    """Both monitors through ssh://: the channel is named with --uri; saved state is refused (no fd over SSH)."""
    source, destination = make_vm(), make_vm(incoming=True)
    refused = cli("migrate", "-s", sshd.url(source.qmp_path), "--to", sshd.url(destination.qmp_path),
                  env=sshd.env())
    assert refused.code == 2 and "--uri" in refused.err, refused
    moved = cli("migrate", "-s", sshd.url(source.qmp_path), "--to", sshd.url(destination.qmp_path),
                "--uri", f"unix:{tmp_path / 'channel.sock'}", "--return-value", env=sshd.env())
    assert moved.code == 0, moved
    assert json.loads(moved.out)["destination"]["status"] == "running"
    assert (state(source), state(destination)) == ("postmigrate", "running")
    saved = cli("migrate", "-s", sshd.url(destination.qmp_path), "--to-file", str(tmp_path / "vm.state"),
                env=sshd.env())
    assert saved.code == 2 and "TCP or SSH" in saved.err, saved
    assert not (tmp_path / "vm.state").exists() and state(destination) == "running"


def _saved_state(make_vm, tmp_path: Path) -> Path:
    source = make_vm()
    saved = tmp_path / "vm.state"
    with session(source) as src:
        save(src, Deadline(10), str(saved), then="quit")
    return saved


def _untouched(destination: QemuVM) -> None:
    """Nothing was loaded: the destination still waits for an incoming state, and no migration ran."""
    assert state(destination) == "inmigrate"
    assert migration_status(destination).get("status") in (None, "none")


def test_a_truncated_state_file_is_exit_6_before_the_destination_is_touched(cli, make_vm, vm_factory, tmp_path):
    saved = _saved_state(make_vm, tmp_path)
    with open(saved, "r+b") as handle:
        handle.truncate(saved.stat().st_size // 2)
    destination = vm_factory(extra_args=["-incoming", "defer"], paused=False)
    result = cli("migrate", "--from-file", str(saved), "-s", str(destination.qmp_path))
    assert result.code == 6, result
    assert "truncated" in result.err and str(saved) in result.err, result
    _untouched(destination)


def test_a_corrupted_state_file_is_exit_6_before_the_destination_is_touched(cli, make_vm, vm_factory, tmp_path):
    saved = _saved_state(make_vm, tmp_path)
    with open(saved, "r+b") as handle:
        handle.seek(saved.stat().st_size // 3)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x40]))
    destination = vm_factory(extra_args=["-incoming", "defer"], paused=False)
    result = cli("migrate", "--from-file", str(saved), "-s", str(destination.qmp_path))
    assert result.code == 6, result
    assert "checksum" in result.err, result
    _untouched(destination)


def test_a_destination_of_another_machine_type_is_refused_before_it_is_touched(cli, make_vm, vm_factory, tmp_path):
    saved = _saved_state(make_vm, tmp_path)
    destination = vm_factory(extra_args=["-incoming", "defer", "-M", "q35"], paused=False)
    result = cli("migrate", "--from-file", str(saved), "-s", str(destination.qmp_path))
    assert result.code == 2, result
    assert "machine" in result.err and "q35" in result.err, result
    _untouched(destination)


def test_a_bare_qemu_stream_without_the_header_still_loads(cli, make_vm, vm_factory, blob, tmp_path):
    """The stream starts right after qmpctl's header, and a file with QEMU's own magic first loads unchecked."""
    saved = _saved_state(make_vm, tmp_path)
    bare = tmp_path / "bare.state"
    bare.write_bytes(saved.read_bytes()[4096:])
    assert bare.read_bytes()[:4] == b"QEVM"
    destination = vm_factory(extra_args=["-incoming", "defer"], paused=False)
    result = cli("migrate", "--from-file", str(bare), "-s", str(destination.qmp_path))
    assert result.code == 0, result
    assert memory_of(destination, tmp_path) == blob.read_bytes()


@pytest.mark.one_qemu
def test_a_state_saved_by_a_newer_qemu_is_refused_by_an_older_one(cli, blob, vm_factory, tmp_path):
    from support.qemu import QEMU10, SYSTEM_QEMU

    if QEMU10.missing():
        pytest.skip(QEMU10.missing())  # in CI the suite's rule turns this into a failure
    source = vm_factory(build=QEMU10, paused=False, extra_args=["-M", "pc-i440fx-7.2"])
    saved = tmp_path / "vm.state"
    with session(source) as src:
        save(src, Deadline(10), str(saved), then="quit")
    destination = vm_factory(build=SYSTEM_QEMU, extra_args=["-incoming", "defer"], paused=False)
    result = cli("migrate", "--from-file", str(saved), "-s", str(destination.qmp_path))
    assert result.code == 2, result
    assert "older QEMU" in result.err and "10." in result.err, result
    _untouched(destination)


@pytest.mark.one_qemu  # qmpctl's own checks, before the destination is touched
def test_sync_time_needs_an_agent_and_a_running_vm_before_anything_is_loaded(cli, make_vm, vm_factory, tmp_path):
    saved = _saved_state(make_vm, tmp_path)
    destination = vm_factory(extra_args=["-incoming", "defer"], paused=False)
    qmp = str(destination.qmp_path)
    no_agent = cli("migrate", "--from-file", str(saved), "-s", qmp, "--sync-time")
    assert no_agent.code == 2 and "--sync-time needs the guest agent" in no_agent.err, no_agent
    paused = cli("migrate", "--from-file", str(saved), "-s", qmp, "--sync-time", "--paused", "-a",
                 str(tmp_path / "agent.sock"))
    assert paused.code == 2 and "--paused" in paused.err, paused
    stray = cli("migrate", "--from-file", str(saved), "-s", qmp, "-a", str(tmp_path / "agent.sock"))
    assert stray.code == 2 and "goes with --sync-time" in stray.err, stray
    other_mode = cli("migrate", "--to-file", str(tmp_path / "new.state"), "-s", qmp, "--sync-time")
    assert other_mode.code == 2 and "--sync-time does not go with --to-file" in other_mode.err, other_mode
    _untouched(destination)
