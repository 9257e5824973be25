"""backup against a real QEMU: the data arrives, nothing is overwritten, no job or node is left behind."""

from __future__ import annotations

import json
import signal
import time

import pytest

from support.disks import block_state, images_identical, jobs, reads_pattern, wait_for_job, write_pattern
from support.fakes import FakeServer

pytestmark = pytest.mark.qemu

PATTERN = [(0x5A, 0, 1 << 20), (0xA5, 32 << 20, 512 << 10)]
REJECT_DEPRECATED = ["-compat", "deprecated-input=reject"]
FLOWS = {"drive-backup": [], "blockdev-backup": REJECT_DEPRECATED}
FAILING_DISK = ["-blockdev", json.dumps({"driver": "raw", "node-name": "bad", "file": {
    "driver": "blkdebug", "inject-error": [{"event": "read_aio", "errno": 5}],
    "image": {"driver": "null-co", "size": 8 << 20}}})]


def started_vm(vm_factory, flow: str, extra: list[str] | None = None):
    vm = vm_factory(extra_args=FLOWS[flow] + (extra or []))
    write_pattern(vm, PATTERN)
    return vm


@pytest.mark.parametrize("image_format", ["qcow2", "raw"])
@pytest.mark.parametrize("flow", FLOWS)
def test_backup_copies_the_disk(cli, vm_factory, flow, image_format):
    vm = started_vm(vm_factory, flow)
    before = block_state(vm)
    target = vm.workdir / f"backup.{image_format}"
    result = cli("backup", "-s", str(vm.qmp_path), "vd0", str(target), "--format", image_format)
    assert result.code == 0, result
    reply = json.loads(result.out)["return"]
    assert reply["method"] == flow and reply["device"] == "disk0" and reply["target"] == str(target)
    assert reply["bytes"] == 64 << 20
    assert images_identical(vm.disk, target).stdout.strip() == "Images are identical."
    assert all(reads_pattern(target, *write) for write in PATTERN)
    assert block_state(vm) == before  # no job, no target node left behind


def test_existing_target_is_refused_and_kept_byte_for_byte(cli, vm):
    target = vm.workdir / "backup.qcow2"
    target.write_bytes(b"yesterday's backup\n" * 1000)
    result = cli("backup", "-s", str(vm.qmp_path), "vd0", str(target))
    assert result.code == 2, result
    assert "exists" in result.err and "--force" in result.err
    assert target.read_bytes() == b"yesterday's backup\n" * 1000
    assert jobs(vm) == []


def test_existing_target_is_refused_before_connecting(cli, tmp_path):
    target = tmp_path / "backup.qcow2"
    target.write_bytes(b"keep me")
    with FakeServer(tmp_path / "qmp.sock", None) as server:
        result = cli("backup", "-s", str(tmp_path / "qmp.sock"), "vd0", str(target))
    assert result.code == 2, result
    assert server.connections == 0 and bytes(server.received) == b""


@pytest.mark.parametrize("flow", FLOWS)
def test_force_overwrites_an_existing_target(cli, vm_factory, flow):
    vm = started_vm(vm_factory, flow)
    target = vm.workdir / "backup.qcow2"
    target.write_bytes(b"old" * 100_000)
    result = cli("backup", "-s", str(vm.qmp_path), "vd0", str(target), "--force")
    assert result.code == 0, result
    assert images_identical(vm.disk, target).returncode == 0


BAD_INPUT = {
    "target directory missing": (["vd0", "{workdir}/no/such/dir/backup.qcow2"], "does not exist"),
    "target is a directory": (["vd0", "{workdir}"], "is a directory"),
    "unknown disk": (["vd9", "{workdir}/backup.qcow2"], "has no disk 'vd9'"),
    "the VM's own image": (["vd0", "{workdir}/disk0.qcow2", "--force"], "an image the VM is using"),
    "top sync into raw": (["vd0", "{workdir}/backup.img", "--sync", "top", "--format", "raw"], "needs a qcow2"),
    "zero speed": (["vd0", "{workdir}/backup.qcow2", "--speed", "0"], "--speed"),
    "job id not valid": (["vd0", "{workdir}/backup.qcow2", "--job-id", "a b"], "--job-id"),
}


@pytest.mark.one_qemu  # refused before anything is sent
@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_exit_2_and_changes_nothing(cli, vm, case):
    arguments, message = BAD_INPUT[case]
    before = block_state(vm)
    files = sorted(vm.workdir.iterdir())
    result = cli("backup", "-s", str(vm.qmp_path), *(a.format(workdir=vm.workdir) for a in arguments))
    assert result.code == 2, result
    assert message in result.err
    assert block_state(vm) == before and sorted(vm.workdir.iterdir()) == files


@pytest.mark.parametrize("flow", FLOWS)
def test_target_qemu_cannot_create_is_exit_1(cli, vm_factory, flow):
    vm = vm_factory(extra_args=FLOWS[flow])
    before = block_state(vm)
    result = cli("backup", "-s", str(vm.qmp_path), "vd0", "/proc/backup.qcow2")
    assert result.code == 1, result
    assert "/proc/backup.qcow2" in result.err
    assert block_state(vm) == before


@pytest.mark.parametrize("flow", FLOWS)
def test_failed_job_is_exit_6_with_the_reason(cli, vm_factory, flow):
    vm = vm_factory(extra_args=FLOWS[flow] + FAILING_DISK)
    before = block_state(vm)
    target = vm.workdir / "backup.img"
    result = cli("backup", "-s", str(vm.qmp_path), "bad", str(target), "--format", "raw")
    assert result.code == 6, result
    assert "failed (reading the source failed): Input/output error" in result.err
    assert f"removed the incomplete {target}" in result.err and not target.exists()
    assert block_state(vm) == before


@pytest.mark.parametrize("flow", FLOWS)
def test_sigint_cancels_a_slow_backup_and_leaves_no_job(cli, vm_factory, flow):
    vm = vm_factory(extra_args=FLOWS[flow])
    before = block_state(vm)
    target = vm.workdir / "backup.qcow2"
    process = cli.popen("backup", "-s", str(vm.qmp_path), "vd0", str(target), "--speed", "1M", "--progress", "json")
    wait_for_job(vm)
    # The job shows in query-jobs before qmpctl has its reply; its first progress line says it is waiting.
    assert b'"status":"running"' in process.stderr.readline()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=15)
    assert process.returncode == 130, err
    assert b"interrupted: backup job backup-vd0 was cancelled" in err and out == b""
    assert block_state(vm) == before  # the job is gone from query-jobs, the target nodes too
    assert not target.exists()


def test_sigterm_cancels_like_sigint(cli, vm):
    process = cli.popen("backup", "-s", str(vm.qmp_path), "vd0", str(vm.workdir / "b.qcow2"), "--speed", "1M")
    wait_for_job(vm)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=15)
    assert process.returncode == 130, err
    assert jobs(vm) == []


def test_wait_timeout_cancels_the_job_and_exits_4(cli, vm):
    before = block_state(vm)
    target = vm.workdir / "backup.qcow2"
    result = cli("backup", "-s", str(vm.qmp_path), "vd0", str(target), "--speed", "1M", "--wait-timeout", "1")
    assert result.code == 4, result
    assert "did not finish within --wait-timeout 1s; it was cancelled" in result.err
    assert result.seconds < 6
    assert block_state(vm) == before and not target.exists()


def test_vm_killed_during_the_wait_is_exit_5_at_once(cli, vm):
    target = vm.workdir / "backup.qcow2"
    process = cli.popen("backup", "-s", str(vm.qmp_path), "vd0", str(target), "--speed", "1M")
    wait_for_job(vm)
    killed_at = time.monotonic()
    vm.kill()
    _, err = process.communicate(timeout=15)
    assert process.returncode == 5, err
    assert time.monotonic() - killed_at < 3
    assert b"the VM went away while backup job backup-vd0 was running" in err
    assert not target.exists()


@pytest.mark.parametrize("flow", FLOWS)
def test_no_wait_prints_the_job_id_and_jobs_reports_the_outcome(cli, vm_factory, flow):
    vm = vm_factory(extra_args=FLOWS[flow])
    before = block_state(vm)
    target = vm.workdir / "backup.qcow2"
    started = cli("backup", "-s", str(vm.qmp_path), "vd0", str(target), "--no-wait", "--return-value")
    assert started.code == 0, started
    job_id = json.loads(started.out)["job-id"]
    assert job_id == "backup-vd0"
    wait_for_job(vm, "concluded")
    listed = cli("jobs", "-s", str(vm.qmp_path), "--return-value")
    assert listed.code == 0, listed
    (job,) = json.loads(listed.out)
    assert (job["id"], job["status"], "error" in job) == (job_id, "concluded", False)
    dismissed = cli("jobs", "-s", str(vm.qmp_path), "--dismiss", job_id)
    assert dismissed.code == 0, dismissed
    assert block_state(vm) == before
    assert images_identical(vm.disk, target).returncode == 0


def test_dismissing_a_running_job_is_exit_1(cli, vm):
    started = cli("backup", "-s", str(vm.qmp_path), "vd0", str(vm.workdir / "b.qcow2"), "--no-wait",
                  "--speed", "1M")
    assert started.code == 0, started
    result = cli("jobs", "-s", str(vm.qmp_path), "--dismiss", "backup-vd0")
    assert result.code == 1, result
    assert "cannot accept command verb 'dismiss'" in result.err


def test_progress_json_lines_go_to_stderr(cli, vm):
    result = cli("backup", "-s", str(vm.qmp_path), "vd0", str(vm.workdir / "b.qcow2"), "--speed", "32M",
                 "--progress", "json")
    assert result.code == 0, result
    assert len(result.out.splitlines()) == 1 and json.loads(result.out)["return"]["bytes"] == 64 << 20
    lines = [json.loads(line) for line in result.err.splitlines()]
    assert len(lines) >= 2, result.err
    assert all(line["job-id"] == "backup-vd0" and line["total"] == 64 << 20 for line in lines)
    assert [line["done"] for line in lines] == sorted(line["done"] for line in lines)
    assert lines[-1]["status"] == "concluded" and lines[-1]["percent"] == 100.0
    assert lines[0]["status"] == "running" and lines[0]["done"] < 64 << 20


def _session(vm):
    from qmpctl.wire.address import parse_address
    from qmpctl.deadline import Deadline
    from qmpctl.wire.qmp import QmpSession

    return QmpSession.connect(parse_address(str(vm.qmp_path)), Deadline(10))


@pytest.mark.parametrize("flow", FLOWS)
def test_backup_polls_where_the_session_has_no_events(vm_factory, flow):
    """The libvirt path: no events, so the job is polled and its outcome read from query-jobs."""
    from qmpctl.backup.full import BackupOptions, backup
    from qmpctl.deadline import Deadline

    vm = started_vm(vm_factory, flow)
    before = block_state(vm)
    target = vm.workdir / "backup.qcow2"
    with _session(vm) as session:
        session.supports_events = False
        session.wait_event = lambda *args: pytest.fail("waited for an event on a session without events")
        reply = backup(session, Deadline(10), BackupOptions("vd0", str(target)), target_is_local=True)
    assert reply["method"] == flow
    assert images_identical(vm.disk, target).returncode == 0
    assert block_state(vm) == before


def test_completion_is_noticed_within_50_ms_of_the_event(vm):
    """Event-driven: from QEMU's BLOCK_JOB_COMPLETED to backup() returning (job dismissed) under 50 ms."""
    from qmpctl.backup.full import BackupOptions, backup
    from qmpctl.deadline import Deadline

    write_pattern(vm, [(0x11, 0, 48 << 20)])  # data to copy, so the job is still running when the wait starts
    with _session(vm) as session:
        backup(session, Deadline(10), BackupOptions("vd0", str(vm.workdir / "b.qcow2"), speed=64 << 20),
               target_is_local=True)
        returned = time.time()
        (completed,) = [e for e in session.events if e["event"] == "BLOCK_JOB_COMPLETED"]
    stamp = completed["timestamp"]
    assert returned - (stamp["seconds"] + stamp["microseconds"] / 1e6) < 0.05


def test_a_vm_on_another_host_needs_force():
    from qmpctl.backup.full import check_target
    from qmpctl.errors import UsageError

    with pytest.raises(UsageError, match="cannot see that host's files"):
        check_target("/backup/vd0.qcow2", is_local=False, force=False)
    with pytest.raises(UsageError, match="absolute path"):
        check_target("vd0.qcow2", is_local=False, force=True)
    assert check_target("/backup/vd0.qcow2", is_local=False, force=True) == "/backup/vd0.qcow2"


@pytest.mark.parametrize("text, value", [("1048576", 1 << 20), ("512K", 512 << 10), ("10M", 10 << 20),
                                         ("1GiB", 1 << 30), ("2g", 2 << 30)])
def test_speed_accepts_binary_suffixes(text, value):
    from qmpctl.backup.full import parse_speed

    assert parse_speed(text) == value
