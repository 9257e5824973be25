"""Instant recovery of a real guest: boot on an --instant overlay of its backup, stream, drop the chain, boot again."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from support.guestfs import guestfs_env, need_guestfish
from support.lab import guest_sh, lab_guest_module
from support.qga import agent_request
from support.runner import CliRunner

pytestmark = pytest.mark.lab

OLD = "written before the backup"
NEW = "written by the restored guest"
FS_DEVICE = "fs0"
"""The lab guest's ext2 filesystem, /mnt/data (raw in the first guest, the qcow2 overlay in the restored one)."""


def in_guest(cli: CliRunner, guest, script: str) -> str:
    return guest_sh(cli, guest, script, wait_timeout=120)




def backing_of(image: Path) -> str | None:
    shown = subprocess.run(["qemu-img", "info", "-U", "--output", "json", str(image)], capture_output=True,
                           text=True, check=True)
    return json.loads(shown.stdout).get("full-backing-filename")


def test_a_guest_boots_on_its_instant_restore_streams_it_and_outlives_the_chain(cli, tmp_path):
    need_guestfish()
    lab = lab_guest_module()
    into = tmp_path / "b"
    with lab.LabGuest(tmp_path / "old") as old:
        in_guest(cli, old, f"echo '{OLD}' > /mnt/data/note && sync")
        backed = cli("backup", "-s", str(old.qmp_path), FS_DEVICE, "--into", str(into), "--freeze",
                     "-a", str(old.agent_path), "--progress", "none")
        assert backed.code == 0, backed
    chain = Path(json.loads(backed.out)["return"]["chain"])  # the old guest is gone: only its backup is left

    overlay = tmp_path / "new" / "fs.qcow2"
    overlay.parent.mkdir()
    made = cli("restore", str(chain), "--instant", str(overlay))
    assert made.code == 0, made
    assert backing_of(overlay) == str(chain / "0001-full.qcow2")
    restored = lab.LabGuest(tmp_path / "new", data_fs_image=overlay, data_fs_format="qcow2")
    with restored:
        assert in_guest(cli, restored, "cat /mnt/data/note").strip() == OLD
        assert agent_request(restored.agent_path, "guest-ping") == {}
        in_guest(cli, restored, f"echo '{NEW}' > /mnt/data/note && sync")
        cat = cli.popen("restore", str(chain), "--cat", "/note", env=guestfs_env(tmp_path))  # alongside the stream
        streamed = cli("stream", "-s", str(restored.qmp_path), FS_DEVICE, "--progress", "none", timeout=300)
        assert streamed.code == 0, streamed
        done = json.loads(streamed.out)["return"]
        assert done["standalone"] is True and done["released"] == made_reference(made)
        assert backing_of(overlay) is None
        assert in_guest(cli, restored, "cat /mnt/data/note").strip() == NEW
        out, err = cat.communicate(timeout=600)
        assert cat.returncode == 0, err
        assert out.decode().strip() == OLD  # the chain is never written: the guest wrote to its overlay
        assert list((tmp_path / "tmp").iterdir()) == []
    shutil.rmtree(into)  # the whole backup folder: the disk must stand alone now

    rebooted = lab.LabGuest(tmp_path / "new", data_fs_image=overlay, data_fs_format="qcow2")
    with rebooted:
        ping = cli("agent", "ping", "-a", str(rebooted.agent_path))
        assert ping.code == 0, ping
        assert in_guest(cli, rebooted, "cat /mnt/data/note").strip() == NEW


def made_reference(made) -> str:
    return json.loads(made.out)["return"]["reference"]
