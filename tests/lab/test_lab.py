"""End to end against the lab guest: a real Linux whose qemu-ga sits behind QEMU's virtio-serial channel.

This is exactly the path users have: QMP to QEMU, and the agent inside a guest
that boots, answers late while booting, sees hotplugged disks and powers off.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Iterator

import pytest

from support.lab import lab_guest, lab_guest_module
from support.qga import qemu_ga_version
from support.runner import CliRunner
from support.waits import wait_for

pytestmark = pytest.mark.lab

BOOT_SECONDS = 120


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory, qemu_build) -> Iterator:
    """One booted lab guest per QEMU build for the module (booting takes seconds under TCG).

    On ``qemu10.0`` both the QEMU and the guest's qemu-ga are 10.0's.
    """
    with lab_guest(tmp_path_factory.mktemp("lab"), qemu_build) as booted:
        yield booted


def guest_exec(cli: CliRunner, guest, *command: str, **kwargs):
    return cli("agent", "exec", "-a", str(guest.agent_path), "--", *command, **kwargs)


def test_agent_ping_info_interfaces_through_the_channel(cli, guest, qemu_build):
    ping = cli("agent", "ping", "-a", str(guest.agent_path))
    assert ping.code == 0 and json.loads(ping.out) == {"return": {}}, ping
    info = cli("agent", "info", "-a", str(guest.agent_path), "--return-value")
    assert info.code == 0, info
    assert json.loads(info.out)["version"] == qemu_ga_version(qemu_build.qemu_ga)  # the build's agent is inside
    names = {command["name"] for command in json.loads(info.out)["supported_commands"]}
    assert {"guest-exec", "guest-ping", "guest-network-get-interfaces"} <= names
    interfaces = cli("agent", "interfaces", "-a", str(guest.agent_path), "--return-value")
    assert interfaces.code == 0, interfaces
    assert "lo" in {interface["name"] for interface in json.loads(interfaces.out)}


def test_exec_output_streams_and_exit_codes(cli, guest):
    uname = guest_exec(cli, guest, "uname", "-s")
    assert uname.code == 0 and uname.out == "Linux\n", uname
    mixed = guest_exec(cli, guest, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (mixed.code, mixed.out, mixed.err) == (3, "out\n", "err\n")
    killed = guest_exec(cli, guest, "sh", "-c", "kill -9 $$")
    assert killed.code == 128 + 9, killed
    echoed = cli("agent", "exec", "-a", str(guest.agent_path), "--stdin", "--", "cat", input=b"bytes \x00\xff in\n")
    assert echoed.code == 0 and echoed.out_bytes == b"bytes \x00\xff in\n", echoed


def _guest_disks(cli: CliRunner, guest) -> set[str]:
    listing = guest_exec(cli, guest, "ls", "/sys/block")
    assert listing.code == 0, listing
    return {name for name in listing.out.split() if name.startswith("vd")}


@pytest.mark.one_qemu  # lab-heavy; hotplug on QEMU 10 is in qemu/test_hotplug_disk.py
def test_hotplug_then_unplug_a_disk_the_guest_really_sees(cli, guest, tmp_path):
    image = tmp_path / "extra.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    before = _guest_disks(cli, guest)
    plugged = cli("hotplug-disk", "-s", str(guest.qmp_path), str(image), "--id", "extra0")
    assert plugged.code == 0, plugged
    wait_for(lambda: len(_guest_disks(cli, guest)) == len(before) + 1, "the guest never saw the disk", timeout=15)
    unplugged = cli("unplug-disk", "-s", str(guest.qmp_path), "extra0", "--wait-timeout", "20")
    assert unplugged.code == 0, unplugged
    assert _guest_disks(cli, guest) == before
    nodes = cli("block", "-s", str(guest.qmp_path), "--nodes", "--return-value")
    assert not any(node["node-name"].startswith("extra0") for node in json.loads(nodes.out))


@pytest.mark.one_qemu  # lab-heavy; backup on QEMU 10 is in qemu/test_backup.py
def test_backup_of_a_disk_the_guest_wrote_to(cli, guest, tmp_path):
    marker = f"written by the guest at {time.time()}"
    wrote = guest_exec(cli, guest, "sh", "-c", f"echo '{marker}' | dd of=/dev/vda conv=fsync 2>/dev/null")
    assert wrote.code == 0, wrote
    target = tmp_path / "backup.qcow2"
    backup = cli("backup", "-s", str(guest.qmp_path), guest.data_disk_device_id, str(target), "--progress", "none")
    assert backup.code == 0, backup
    same = subprocess.run(["qemu-img", "compare", "-U", str(guest.data_disk), str(target)], capture_output=True)
    assert same.returncode == 0, same.stdout
    raw = tmp_path / "backup.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(target), str(raw)], check=True)
    assert raw.read_bytes()[: len(marker)] == marker.encode()


def test_resync_while_the_guest_is_still_booting_and_shutdown(cli, tmp_path_factory):
    """qmpctl connects before the agent runs: its bytes wait in the channel and are answered late."""
    lab = lab_guest_module()
    booting = lab.LabGuest(tmp_path_factory.mktemp("boot"), name="early")
    booting.start()
    try:
        ping = cli("agent", "ping", "-a", str(booting.agent_path), "--timeout", str(BOOT_SECONDS))
        assert ping.code == 0 and json.loads(ping.out) == {"return": {}}, ping
        assert ping.seconds > 1, "the agent answered at once: this test did not catch the guest booting"
        again = cli("agent", "ping", "-a", str(booting.agent_path), "--timeout", "10")
        assert again.code == 0, again
        shutdown = cli("agent", "command", "-a", str(booting.agent_path), "guest-shutdown")
        assert shutdown.code == 0 and shutdown.out == "", shutdown
        wait_for(lambda: not booting.is_running(), "the guest did not power off", timeout=20)
    finally:
        booting.stop()


@pytest.mark.one_qemu  # checks the lab image, the same under either build
def test_the_guest_offers_a_freezable_filesystem_a_user_and_sha256sum(cli, guest):
    """What agent cp, set-password and fsfreeze are tested against: it must be there at boot."""
    mounts = guest_exec(cli, guest, "cat", "/proc/mounts")
    assert mounts.code == 0, mounts
    by_mountpoint = {line.split()[1]: line.split() for line in mounts.out.splitlines()}
    assert by_mountpoint[guest.data_fs_mountpoint][:3] == ["/dev/sda", "/mnt/data", "ext2"], mounts.out
    assert "ro" in by_mountpoint["/mnt/ro"][3].split(","), mounts.out
    assert _guest_disks(cli, guest) == {"vda"}, "the filesystem's disk must not take a virtio-blk name"
    hashed = cli("agent", "exec", "-a", str(guest.agent_path), "--stdin", "--", "sha256sum", input=b"abc")
    assert hashed.out.split()[0] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", hashed
    user = guest_exec(cli, guest, "sh", "-c", "grep ^lab: /etc/passwd && test -x /usr/sbin/chpasswd")
    assert user.code == 0 and user.out.startswith("lab:x:1000:1000:"), user
