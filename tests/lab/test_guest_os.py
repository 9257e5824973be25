"""Into the guest OS, against the lab guest's real qemu-ga: agent cp, set-password, fsfreeze, shutdown.

One guest is booted for the module (booting costs seconds under TCG); the
shutdown tests boot their own, since they end the guest.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.lab import lab_guest, lab_guest_module
from support.qemu import RawQmp
from support.runner import CliRunner
from support.waits import wait_for

pytestmark = pytest.mark.lab

PASSWORD = "Lab-pw 7f3c9e21 with spaces"


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory, qemu_build) -> Iterator:
    """One lab guest per build: on qemu10.0 its QEMU and the qemu-ga inside are 10.0's."""
    with lab_guest(tmp_path_factory.mktemp("gos"), qemu_build) as booted:
        yield booted


def agent(cli: CliRunner, guest, *args: str, **kwargs):
    return cli("agent", *args[:1], "-a", str(guest.agent_path), *args[1:], **kwargs)


def guest_sh(cli: CliRunner, guest, script: str) -> str:
    result = agent(cli, guest, "exec", "--", "sh", "-c", script)
    assert result.code == 0, result
    return result.out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- agent cp


@pytest.mark.one_qemu  # bulk copying is qmpctl's side; the smaller copies below run on every qemu-ga
def test_copy_5_mib_in_and_out_with_equal_hashes(cli, guest, tmp_path):
    data = os.urandom(5 * 1024 * 1024)
    source = tmp_path / "random.bin"
    source.write_bytes(data)
    copied_in = agent(cli, guest, "cp", str(source), "guest:/mnt/data/random.bin", timeout=180)
    assert copied_in.code == 0, copied_in
    result = json.loads(copied_in.out)["return"]
    assert result["bytes"] == len(data) and result["seconds"] > 0 and result["verified"] is True, result
    assert result["sha256"] == sha256(data)
    assert guest_sh(cli, guest, "sha256sum /mnt/data/random.bin").split()[0] == sha256(data)

    back = tmp_path / "back.bin"
    copied_out = agent(cli, guest, "cp", "guest:/mnt/data/random.bin", str(back), timeout=180)
    assert copied_out.code == 0, copied_out
    assert json.loads(copied_out.out)["return"]["verified"] is True
    assert sha256(back.read_bytes()) == sha256(data)
    assert not [name for name in os.listdir(tmp_path) if "qmpctl" in name], "a temporary file was left behind"
    guest_sh(cli, guest, "rm /mnt/data/random.bin")


def test_dash_is_stdin_and_stdout_binary_safe(cli, guest):
    data = bytes(range(256)) * 300 + b"\r\n\x00\xff"
    sent = agent(cli, guest, "cp", "-", "guest:/tmp/from-stdin", input=data)
    assert sent.code == 0 and json.loads(sent.out)["return"]["bytes"] == len(data), sent
    received = agent(cli, guest, "cp", "guest:/tmp/from-stdin", "-")
    assert received.code == 0 and received.out_bytes == data, received
    into_grep = subprocess.run(f"{' '.join(cli.argv())} agent cp -a {guest.agent_path} guest:/etc/os-release - "
                               "| grep ^ID=", shell=True, capture_output=True, env=cli.env(), timeout=60, check=False)
    assert into_grep.stdout == b"ID=qmpctl-lab\n", into_grep


def test_existing_destinations_are_refused_on_both_sides_and_kept(cli, guest, tmp_path):
    local = tmp_path / "exists.txt"
    local.write_bytes(b"local original\n")
    agent(cli, guest, "cp", "-", "guest:/tmp/exists.txt", input=b"guest original\n")

    out = agent(cli, guest, "cp", "guest:/tmp/exists.txt", str(local))
    assert out.code == 2 and str(local) in out.err and "--force" in out.err, out
    assert local.read_bytes() == b"local original\n"

    into = agent(cli, guest, "cp", str(local), "guest:/tmp/exists.txt")
    assert into.code == 2 and "guest:/tmp/exists.txt exists" in into.err, into
    assert agent(cli, guest, "cp", "guest:/tmp/exists.txt", "-").out_bytes == b"guest original\n"

    forced = agent(cli, guest, "cp", "--force", str(local), "guest:/tmp/exists.txt")
    assert forced.code == 0, forced
    assert agent(cli, guest, "cp", "guest:/tmp/exists.txt", "-").out_bytes == b"local original\n"
    forced_out = agent(cli, guest, "cp", "--force", "guest:/etc/hostname", str(local))
    assert forced_out.code == 0 and local.read_bytes() == b"lab\n", forced_out


def test_the_guests_refusals_exit_1_in_one_line(cli, guest, tmp_path):
    source = tmp_path / "small"
    source.write_bytes(b"x")
    read_only = agent(cli, guest, "cp", str(source), "guest:/mnt/ro/small")
    assert read_only.code == 1 and "Read-only file system" in read_only.err, read_only
    missing = agent(cli, guest, "cp", "guest:/no/such/file", str(tmp_path / "missing"))
    assert missing.code == 1 and "No such file or directory" in missing.err, missing
    assert not (tmp_path / "missing").exists()
    directory = agent(cli, guest, "cp", "guest:/etc", str(tmp_path / "etc"))
    assert directory.code == 1 and "guest:/etc" in directory.err, directory
    for result in (read_only, missing, directory):
        assert result.err.count("\n") == 1, result
    both_local = agent(cli, guest, "cp", str(source), str(tmp_path / "other"))
    assert both_local.code == 2, both_local


def test_ctrl_c_during_a_copy_closes_the_guest_handle_and_names_the_partial_file(cli, guest, tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(24 * 1024 * 1024))
    copy = cli.popen("agent", "cp", "-a", str(guest.agent_path), "--progress", "json", str(source),
                     "guest:/tmp/interrupted.bin")
    assert copy.stderr is not None
    first = copy.stderr.readline()  # a progress line: the guest file is open and written to
    assert b'"done"' in first, first
    copy.send_signal(signal.SIGINT)
    _, err = copy.communicate(timeout=60)
    assert copy.returncode == 130, err
    assert b"the partial file guest:/tmp/interrupted.bin is left in the guest" in err, err
    handles = guest_sh(cli, guest, "ls -l /proc/$(pidof qemu-ga)/fd")
    assert "/tmp/interrupted.bin" not in handles, handles


def test_a_file_that_changes_under_the_copy_fails_verification_with_exit_6(cli, guest, tmp_path):
    """The guest's sha256sum runs after the copy: a file still growing then hashes differently."""
    started = agent(cli, guest, "exec", "--no-wait", "--return-value", "--", "sh", "-c",
                    "while true; do echo more >> /tmp/growing; done")
    assert started.code == 0, started
    writer = json.loads(started.out)["pid"]
    try:
        wait_for(lambda: guest_sh(cli, guest, "wc -c < /tmp/growing 2>/dev/null || echo 0").strip() != "0",
                 "the guest to start writing", timeout=30, pause=0.05)
        copied = agent(cli, guest, "cp", "guest:/tmp/growing", str(tmp_path / "growing"))
    finally:
        guest_sh(cli, guest, f"kill {writer}")
    assert copied.code == 6 and "verification failed" in copied.err, copied
    assert not (tmp_path / "growing").exists(), "a copy that failed verification must not take the name"


# ----------------------------------------------------------------------------- agent set-password


def _shadow_entry(cli, guest) -> str:
    return guest_sh(cli, guest, "grep ^lab: /etc/shadow").strip()


def test_set_password_changes_the_shadow_entry_and_shows_the_password_nowhere(cli, guest, tmp_path):
    before = _shadow_entry(cli, guest)
    process = subprocess.Popen([*cli.argv("agent", "set-password", "-a", str(guest.agent_path), "lab")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli.env())
    assert process.stdin is not None
    visible = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
    out, err = process.communicate(PASSWORD.encode() + b"\n", timeout=60)
    assert process.returncode == 0, err
    assert PASSWORD not in visible and PASSWORD.encode() not in cmdline
    after = _shadow_entry(cli, guest)
    assert after != before and after.split(":")[1].startswith("$6$"), after
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # the guest's chpasswd hashes with crypt(3) sha512
    hashed = after.split(":")[1]
    assert crypt.crypt(PASSWORD, hashed) == hashed
    assert PASSWORD.encode() not in out + err

    secret_file = tmp_path / "pw"
    secret_file.write_text(PASSWORD + "\n")
    dry = agent(cli, guest, "set-password", "--dry-run", "--password-file", str(secret_file), "lab")
    refused = agent(cli, guest, "set-password", "--password-file", str(secret_file), "nosuchuser")
    assert dry.code == 0 and '"password":"********"' in dry.out, dry
    assert refused.code == 1 and "nosuchuser" in refused.err, refused
    encoded = __import__("base64").b64encode(PASSWORD.encode()).decode()
    for result in (dry, refused):
        assert PASSWORD not in result.out + result.err and encoded not in result.out + result.err, result


def test_set_password_crypted_passes_the_hash_through(cli, guest):
    hashed = "$6$labsalt$" + "A" * 86
    done = agent(cli, guest, "set-password", "--crypted", "lab", input=hashed.encode() + b"\n")
    assert done.code == 0, done
    assert _shadow_entry(cli, guest).split(":")[1] == hashed


# ----------------------------------------------------------------------------- agent fsfreeze


def _status(cli, guest) -> str:
    result = agent(cli, guest, "fsfreeze", "status", "--return-value")
    assert result.code == 0, result
    return json.loads(result.out)


def test_freeze_status_thaw_and_what_is_refused_while_frozen(cli, guest):
    frozen = agent(cli, guest, "fsfreeze", "freeze", "--mountpoint", guest.data_fs_mountpoint)
    try:
        assert frozen.code == 0 and json.loads(frozen.out) == {"return": 1}, frozen
        assert "stay frozen" in frozen.err and "fsfreeze thaw" in frozen.err
        assert _status(cli, guest) == "frozen"
        exec_refused = agent(cli, guest, "exec", "--", "touch", "/mnt/data/x")
        assert exec_refused.code == 125 and "frozen" in exec_refused.err, exec_refused
        cp_refused = agent(cli, guest, "cp", "-", "guest:/mnt/data/x", input=b"x")
        assert cp_refused.code == 1 and "frozen" in cp_refused.err and "thaw" in cp_refused.err, cp_refused
        assert cp_refused.seconds < 10
    finally:
        thawed = agent(cli, guest, "fsfreeze", "thaw")
    assert thawed.code == 0 and json.loads(thawed.out) == {"return": 1}, thawed
    assert _status(cli, guest) == "thawed"


def test_freeze_for_thaws_after_the_time(cli, guest):
    held = agent(cli, guest, "fsfreeze", "freeze", "--for", "2")
    assert held.code == 0, held
    result = json.loads(held.out)["return"]
    assert result["frozen"] >= 1 and result["thawed"] == result["frozen"] and result["seconds"] >= 2, result
    assert held.seconds >= 2
    assert _status(cli, guest) == "thawed"


def test_freeze_for_thaws_on_ctrl_c(cli, guest):
    held = cli.popen("agent", "fsfreeze", "-a", str(guest.agent_path), "freeze", "--for", "300")
    assert held.stderr is not None
    line = held.stderr.readline()
    assert b"froze" in line, line
    started = time.monotonic()
    held.send_signal(signal.SIGINT)
    _, err = held.communicate(timeout=30)
    assert held.returncode == 130, err
    assert time.monotonic() - started < 20
    assert _status(cli, guest) == "thawed"


# ----------------------------------------------------------------------------- agent time


def test_time_sync_sets_the_guests_clock_from_the_hosts(cli, guest):
    """The lab guest's busybox has /sbin/hwclock, which guest-set-time needs to write the RTC."""
    guest_sh(cli, guest, f"date -u -s @{int(time.time()) - 3600} >/dev/null")  # an hour behind
    result = agent(cli, guest, "time", "--return-value")
    assert result.code == 0, result
    assert -3610 < json.loads(result.out)["offset"] < -3590
    result = agent(cli, guest, "time", "--sync", "--return-value")
    assert result.code == 0, result
    synced = json.loads(result.out)
    assert synced["synced"] is True and -3610 < synced["offset-before"] < -3590
    assert abs(synced["offset"]) < 2  # TCG and a busy host: the clock is set, give or take a second
    assert abs(json.loads(agent(cli, guest, "time", "--return-value").out)["offset"]) < 2


def test_guestinfo_of_the_lab_guest(cli, guest):
    result = agent(cli, guest, "guestinfo", "--return-value")
    assert result.code == 0, result
    report = json.loads(result.out)
    assert report["os"]["kernel-release"] and isinstance(report["vcpus"], list)


# ----------------------------------------------------------------------------- shutdown (last: ends the guest)


def test_system_powerdown_presses_the_power_button_the_lab_guest_obeys(tmp_path_factory):
    lab = lab_guest_module()
    with lab.LabGuest(tmp_path_factory.mktemp("off"), name="off") as own_guest:
        with RawQmp(own_guest.qmp_path, timeout=10) as qmp:
            qmp.cmd("system_powerdown")
        wait_for(lambda: not own_guest.is_running(), "the guest to power off on the ACPI button", timeout=60,
                 pause=0.05)
        assert "lab: power button" in own_guest.console_log.read_text()


def test_shutdown_with_qmp_returns_once_qemu_reports_it(cli, guest):
    """The module's guest goes down here, so this test comes last."""
    dry = agent(cli, guest, "shutdown", "--mode", "halt", "--dry-run")
    assert json.loads(dry.out) == {"execute": "guest-shutdown", "arguments": {"mode": "halt"}}, dry
    down = agent(cli, guest, "shutdown", "-s", str(guest.qmp_path), "--wait-timeout", "60")
    assert down.code == 0, down
    seen = json.loads(down.out)["return"]
    assert seen["event"] == "SHUTDOWN" and seen["data"]["reason"] == "guest-shutdown", seen
    wait_for(lambda: not guest.is_running(), "QEMU to exit after the guest powered off", timeout=30, pause=0.05)
