"""Backup chains of a real guest: --freeze through its agent, and a restore that boots and reads back its data."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from support.lab import guest_sh, lab_guest_module
from support.qemu import RawQmp
from support.qga import agent_request
from support.runner import CliRunner

pytestmark = pytest.mark.lab

MARKER = "written before the backup, never synced by the guest"
FS_DEVICE = "fs0"
"""The lab guest's ext2 filesystem, /mnt/data (a raw image: its bitmap lives as long as the QEMU)."""


def in_guest(cli: CliRunner, guest, script: str) -> str:
    return guest_sh(cli, guest, script, wait_timeout=120)


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One booted lab guest; its ext2 filesystem (device fs0) is mounted at /mnt/data."""
    lab = lab_guest_module()
    workdir = tmp_path_factory.mktemp("lab")
    check = ["-qmp", f"unix:{workdir}/check.sock,server=on,wait=off"]  # QMP takes one client at a time
    with lab.LabGuest(workdir, extra_qemu_args=check) as booted:
        booted.check_path = workdir / "check.sock"
        yield booted


def chain_backup(cli: CliRunner, guest, into: Path, *arguments: str):
    return cli("backup", "-s", str(guest.qmp_path), FS_DEVICE, "--into", str(into),
               "--progress", "none", *arguments)


def read_file_from(image: Path, name: str, workdir: Path) -> str:
    raw = workdir / "restored.raw"
    raw.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
    shown = subprocess.run(["debugfs", "-R", f"cat /{name}", str(raw)], capture_output=True, text=True)
    return shown.stdout


def test_freeze_brackets_the_job_start_and_the_image_holds_what_the_guest_had_not_synced(cli, guest, tmp_path):
    into = tmp_path / "b"
    assert chain_backup(cli, guest, into).code == 0
    in_guest(cli, guest, f"echo '{MARKER}' > /mnt/data/marker")  # in the guest's page cache only
    result = chain_backup(cli, guest, into, "--freeze", "-a", str(guest.agent_path))
    assert result.code == 0, result
    reply = json.loads(result.out)["return"]
    assert reply["level"] == "incremental" and reply["freeze"]["frozen"] >= 1
    assert reply["freeze"]["thawed"] == reply["freeze"]["frozen"]
    assert agent_request(guest.agent_path, "guest-fsfreeze-status") == "thawed"
    restored = tmp_path / "restored.qcow2"
    assert cli("restore", reply["chain"], str(restored)).code == 0
    assert read_file_from(restored, "marker", tmp_path).strip() == MARKER  # the freeze flushed it first


def fs0_drive(guest) -> str:
    with RawQmp(guest.check_path) as qmp:
        return next(entry["inserted"]["node-name"] for entry in qmp.cmd("query-block")
                    if entry.get("qdev", "") == FS_DEVICE)  # a scsi-hd with an id: query-block names it by its id


def test_a_fleeced_frozen_backup_of_a_running_guest_holds_what_it_had_not_synced(cli, guest, tmp_path):
    """--fleece with --freeze: the guest is frozen around the switch, and thawed; nothing of the fleecing stays."""
    into, scratch = tmp_path / "b", tmp_path / "scratch"
    scratch.mkdir()
    drive = fs0_drive(guest)
    assert chain_backup(cli, guest, into, "--fleece", str(scratch)).code == 0
    in_guest(cli, guest, f"echo '{MARKER} (fleeced)' > /mnt/data/fleeced")  # in the guest's page cache only
    result = chain_backup(cli, guest, into, "--freeze", "-a", str(guest.agent_path), "--fleece", str(scratch))
    assert result.code == 0, result
    reply = json.loads(result.out)["return"]
    assert reply["level"] == "incremental" and reply["freeze"]["frozen"] >= 1 and reply["fleece"] == str(scratch)
    assert agent_request(guest.agent_path, "guest-fsfreeze-status") == "thawed"
    assert list(scratch.iterdir()) == [] and fs0_drive(guest) == drive
    in_guest(cli, guest, "echo after > /mnt/data/fleeced && sync")  # the guest writes on, through its own node
    restored = tmp_path / "restored.qcow2"
    assert cli("restore", reply["chain"], str(restored)).code == 0
    assert read_file_from(restored, "fleeced", tmp_path).strip() == f"{MARKER} (fleeced)"


def test_freeze_without_an_agent_starts_nothing_and_try_backs_up_unfrozen(cli, guest, tmp_path):
    into = tmp_path / "b"
    missing = tmp_path / "no-agent.sock"
    refused = chain_backup(cli, guest, into, "--freeze", "-a", str(missing))
    assert refused.code == 3 and "agent" in refused.err, refused
    assert not any(into.glob("*/*.qcow2"))
    tried = chain_backup(cli, guest, into, "--freeze-try", "-a", str(missing))
    assert tried.code == 0, tried
    reply = json.loads(tried.out)["return"]
    assert reply["freeze"]["frozen"] is False and "cannot be reached" in reply["freeze"]["reason"]


def test_an_interrupted_frozen_backup_leaves_the_guest_thawed(cli, guest, tmp_path):
    into = tmp_path / "b"
    assert chain_backup(cli, guest, into).code == 0
    in_guest(cli, guest, "dd if=/dev/urandom of=/mnt/data/big bs=1M count=4 2>/dev/null && sync")
    child = cli.popen("backup", "-s", str(guest.qmp_path), FS_DEVICE, "--into", str(into),
                      "--freeze", "-a", str(guest.agent_path), "--speed", "128K", "--progress", "none")

    with RawQmp(guest.check_path) as qmp:
        deadline = time.monotonic() + 30
        while not any(job["status"] == "running" for job in qmp.cmd("query-jobs")):
            assert time.monotonic() < deadline and child.poll() is None
        child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 130, err
    assert agent_request(guest.agent_path, "guest-fsfreeze-status") == "thawed", err
    with RawQmp(guest.check_path) as qmp:
        assert qmp.cmd("query-jobs") == []
    in_guest(cli, guest, "echo still writable > /mnt/data/after && sync")


def test_a_signal_between_the_frozen_block_and_the_thaw_still_thaws(guest, monkeypatch):
    """Ctrl-C landing after the block ended, before the thaw shielded itself from signals: the guest is thawed.

    A real signal cannot be aimed at that window (a few bytecodes), so the thaw's first attempt raises the
    KeyboardInterrupt the signal handler would; the guest and its agent are real.
    """
    from qmpctl.guest import freeze as guest_freeze
    from qmpctl.wire.address import parse_address
    from qmpctl.deadline import Deadline
    from qmpctl.errors import Interrupted
    from qmpctl.wire.targets import AGENT, SocketTarget

    real_thaw = guest_freeze.thaw_for_sure
    attempts = []

    def interrupted_first(session, thaw_timeout=guest_freeze.THAW_TIMEOUT):
        attempts.append(thaw_timeout)
        if len(attempts) == 1:
            raise KeyboardInterrupt
        return real_thaw(session, thaw_timeout)

    monkeypatch.setattr(guest_freeze, "thaw_for_sure", interrupted_first)
    session = SocketTarget(parse_address(str(guest.agent_path)), AGENT).open(Deadline(10))
    try:
        try:
            with guest_freeze.frozen(session, Deadline(60)) as report:
                assert report.frozen >= 1
        except Interrupted:
            pass
        except KeyboardInterrupt:
            pytest.fail("the interrupt escaped the freeze without the thaw being sent")
        else:
            pytest.fail("the interrupt was swallowed")
        after = guest_freeze.status(session, Deadline(10))
    finally:
        real_thaw(session)  # never leave the module's guest frozen, whatever happened above
        session.close()
    assert after == "thawed"
    assert len(attempts) == 2


def test_restore_boot_check_boots_the_restored_disk_and_reads_back_the_data(cli, guest, tmp_path):
    into = tmp_path / "b"
    in_guest(cli, guest, f"echo '{MARKER}' > /mnt/data/drill && sync")
    backed = chain_backup(cli, guest, into, "--freeze", "-a", str(guest.agent_path))
    assert backed.code == 0, backed
    kernel, initrd = lab_guest_module().lab_build.build()
    boot = ["--qemu-arg=-kernel", f"--qemu-arg={kernel}", "--qemu-arg=-initrd", f"--qemu-arg={initrd}",
            "--qemu-arg=-append", "--qemu-arg=console=ttyS0 quiet panic=-1", "--qemu-arg=-m", "--qemu-arg=256",
            "--qemu-arg=-M", "--qemu-arg=pc", "--qemu-arg=-accel", "--qemu-arg=tcg", "--boot-timeout", "90"]
    chain = json.loads(backed.out)["return"]["chain"]
    drill = cli("restore", chain, str(tmp_path / "drill.qcow2"), "--boot-check", *boot,
                "--check-command", "mount -t ext2 /dev/vda /mnt && cat /mnt/drill", timeout=150)
    assert drill.code == 0, drill
    checked = json.loads(drill.out)["return"]["boot-check"]
    assert checked["booted"] and checked["check"]["stdout"].strip() == MARKER


def test_restore_boot_check_of_a_guest_that_never_answers_is_exit_6_with_the_console(cli, guest, tmp_path):
    backed = chain_backup(cli, guest, tmp_path / "b")
    assert backed.code == 0, backed
    chain = json.loads(backed.out)["return"]["chain"]
    silent = cli("restore", chain, str(tmp_path / "r.qcow2"), "--boot-check", "--boot-timeout", "3",
                 "--qemu-arg=-accel", "--qemu-arg=tcg", "--check-command", "true")
    assert silent.code == 6 and "did not answer within --boot-timeout 3s" in silent.err, silent
    assert "serial console stayed empty" in silent.err  # SeaBIOS alone prints nothing on ttyS0
    assert (tmp_path / "r.qcow2").exists()  # the restore itself stays


def test_a_freeze_that_takes_too_long_is_thawed_and_nothing_starts(cli, guest, tmp_path):
    into = tmp_path / "b"
    in_guest(cli, guest, "dd if=/dev/urandom of=/mnt/data/dirty bs=1M count=4 2>/dev/null")  # the freeze syncs it
    result = chain_backup(cli, guest, into, "--freeze", "-a", str(guest.agent_path), "--freeze-timeout", "0.01")
    assert result.code == 4 and "did not freeze" in result.err and "nothing was started" in result.err, result
    assert agent_request(guest.agent_path, "guest-fsfreeze-status") == "thawed"
    assert not list(into.glob("2*"))
    with RawQmp(guest.check_path) as qmp:
        assert qmp.cmd("query-jobs") == []
        assert not [node for node in qmp.cmd("query-named-block-nodes") if node["node-name"].startswith("chain-")]
    in_guest(cli, guest, "rm /mnt/data/dirty && sync")
