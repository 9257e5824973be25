"""Jobs left behind: a backup whose qmpctl was killed, and a --no-wait backup that failed.

Against a real QEMU 7.2, checked with the tests' own QMP client.
"""

from __future__ import annotations

import json
import signal

import pytest

from support.disks import block_state, jobs, wait_for_job

pytestmark = pytest.mark.qemu

FAILING_DISK = ["-blockdev", json.dumps({"driver": "raw", "node-name": "bad", "file": {
    "driver": "blkdebug", "inject-error": [{"event": "read_aio", "errno": 5}],
    "image": {"driver": "null-co", "size": 8 << 20}}})]


def left_by_a_killed_qmpctl(cli, vm) -> None:
    process = cli.popen("backup", "-s", str(vm.qmp_path), "vd0", str(vm.workdir / "b.qcow2"), "--speed", "1M")
    wait_for_job(vm)
    process.send_signal(signal.SIGKILL)  # no cleanup at all: the OOM killer, kill -9
    process.communicate(timeout=15)


def test_a_busy_disk_names_the_job_and_how_to_cancel_it(cli, vm):
    left_by_a_killed_qmpctl(cli, vm)
    result = cli("backup", "-s", str(vm.qmp_path), "vd0", str(vm.workdir / "again.qcow2"))
    assert result.code == 1, result
    assert "in use by block job backup-vd0 (backup, running)" in result.err
    assert "'qmpctl jobs --cancel backup-vd0' cancels it" in result.err
    assert not (vm.workdir / "again.qcow2").exists()
    assert [job["id"] for job in jobs(vm)] == ["backup-vd0"]  # the new attempt left nothing of its own


def test_cancel_job_cancels_waits_and_dismisses(cli, vm):
    from qmpctl.wire.address import parse_address
    from qmpctl.deadline import Deadline
    from qmpctl.vm.jobs import cancel_job
    from qmpctl.wire.qmp import QmpSession

    left_by_a_killed_qmpctl(cli, vm)
    with QmpSession.connect(parse_address(str(vm.qmp_path)), Deadline(10)) as session:
        state = cancel_job(session, "backup-vd0", Deadline(10))
        assert state is not None and state.concluded and state.error == "Operation canceled"
        assert cancel_job(session, "backup-vd0", Deadline(10)) is None
    assert jobs(vm) == []


def test_cancel_job_of_a_job_that_dismisses_itself(vm):
    """A job someone else started with auto-dismiss on goes away once cancelled: that counts as done."""
    from qmpctl.wire.address import parse_address
    from qmpctl.deadline import Deadline
    from qmpctl.vm.jobs import cancel_job
    from qmpctl.wire.qmp import QmpSession

    with vm.check() as qmp:
        qmp.cmd("drive-backup", device="disk0", target=str(vm.workdir / "other.qcow2"), sync="full",
                format="qcow2", speed=1 << 20, **{"job-id": "theirs"})
    with QmpSession.connect(parse_address(str(vm.qmp_path)), Deadline(10)) as session:
        state = cancel_job(session, "theirs", Deadline(10))
    assert state is not None and state.id == "theirs"
    assert jobs(vm) == []


def test_dismissing_a_failed_no_wait_backup_says_so_and_removes_the_target(cli, vm_factory):
    vm = vm_factory(extra_args=FAILING_DISK)
    before = block_state(vm)
    target = vm.workdir / "backup.img"
    started = cli("backup", "-s", str(vm.qmp_path), "bad", str(target), "--format", "raw", "--no-wait")
    assert started.code == 0, started
    wait_for_job(vm, "concluded")
    result = cli("jobs", "-s", str(vm.qmp_path), "--dismiss", "backup-bad")
    assert result.code == 6, result
    assert "job backup-bad had failed: Input/output error" in result.err
    assert f"removed the incomplete {target}" in result.err and not target.exists()
    assert block_state(vm) == before


def test_dismissing_a_failed_backup_keeps_a_target_it_did_not_create(cli, vm_factory):
    vm = vm_factory(extra_args=FAILING_DISK)
    target = vm.workdir / "backup.img"
    target.write_bytes(b"somebody's file")
    started = cli("backup", "-s", str(vm.qmp_path), "bad", str(target), "--format", "raw", "--no-wait", "--force")
    assert started.code == 0, started
    wait_for_job(vm, "concluded")
    result = cli("jobs", "-s", str(vm.qmp_path), "--dismiss", "backup-bad")
    assert result.code == 6, result
    assert "removed" not in result.err and target.exists()


def test_dismissing_a_backup_that_succeeded_is_exit_0_with_its_status(cli, vm):
    before = block_state(vm)
    started = cli("backup", "-s", str(vm.qmp_path), "vd0", str(vm.workdir / "ok.qcow2"), "--no-wait")
    assert started.code == 0, started
    wait_for_job(vm, "concluded")
    result = cli("jobs", "-s", str(vm.qmp_path), "--dismiss", "backup-vd0", "--return-value")
    assert result.code == 0, result
    reply = json.loads(result.out)
    assert (reply["dismissed"], reply["status"]) == ("backup-vd0", "concluded") and "error" not in reply
    assert block_state(vm) == before and (vm.workdir / "ok.qcow2").exists()


def test_jobs_cancel_ends_a_leftover_job_so_the_next_backup_runs(cli, vm):
    left_by_a_killed_qmpctl(cli, vm)
    result = cli("jobs", "-s", str(vm.qmp_path), "--cancel", "backup-vd0", "--return-value")
    assert result.code == 0, result
    reply = json.loads(result.out)
    assert (reply["cancelled"], reply["status"], reply["error"]) == ("backup-vd0", "concluded", "Operation canceled")
    assert jobs(vm) == []
    again = cli("backup", "-s", str(vm.qmp_path), "vd0", str(vm.workdir / "again.qcow2"))
    assert again.code == 0, again


def test_jobs_cancel_of_a_no_wait_backup_removes_its_nodes_and_partial_target(cli, vm):
    before = block_state(vm)
    target = vm.workdir / "slow.qcow2"
    started = cli("backup", "-s", str(vm.qmp_path), "vd0", str(target), "--no-wait", "--speed", "1M")
    assert started.code == 0, started
    result = cli("jobs", "-s", str(vm.qmp_path), "--cancel", "backup-vd0", "--return-value")
    assert result.code == 0, result
    assert json.loads(result.out)["removed"] == str(target) and not target.exists()
    assert block_state(vm) == before


def test_jobs_cancel_of_no_such_job_is_exit_1(cli, vm):
    result = cli("jobs", "-s", str(vm.qmp_path), "--cancel", "nosuch")
    assert result.code == 1, result
    assert "no job 'nosuch'" in result.err
