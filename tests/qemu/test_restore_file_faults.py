"""restore CHAIN --cat/--ls/--extract when something is wrong: a missing path, no filesystem, bad options, Ctrl-C.

The second half of the single-file tests (see test_restore_files.py), in a module of its own so that a second
worker boots its libguestfs appliances.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from support.guestfs import backed_up, ext2_disk, guestfs_env, need_guestfish
from support.waits import alive, descendants, interrupt_twice, wait_for

pytestmark = pytest.mark.qemu


@pytest.mark.one_qemu
def test_a_missing_path_is_exit_1_and_no_filesystem_exit_6(cli, vm_factory, tmp_path):
    need_guestfish()
    chain = backed_up(cli, vm_factory, tmp_path, ext2_disk(tmp_path))
    blank = vm_factory(disk_size="16M")  # a qcow2 disk with nothing on it
    made = cli("backup", "-s", str(blank.qmp_path), "vd0", "--into", str(tmp_path / "blank"), "--progress", "none")
    assert made.code == 0, made
    missing, unreadable = cli.concurrently(("restore", chain, "--cat", "/etc/nope.conf"),
                                           ("restore", json.loads(made.out)["return"]["chain"], "--ls", "/"),
                                           env=guestfs_env(tmp_path), timeout=600)
    assert missing.code == 1 and "/etc/nope.conf" in missing.err, missing
    assert unreadable.code == 6 and "no readable filesystem" in unreadable.err, unreadable
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.one_qemu
def test_file_options_are_checked_before_anything_starts(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    made = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(tmp_path / "b"), "--progress", "none")
    chain = json.loads(made.out)["return"]["chain"]
    for arguments, said in ((("--extract", "/etc"), "--to DIR"),
                            (("--to", str(tmp_path)), "--to goes with --extract"),
                            (("--filesystem", "/dev/sda1"), "--filesystem goes with --ls or --cat or --extract"),
                            (("--cat", "etc/x"), "absolute path"),
                            (("--cat", "/x", "--force"), "--force"),
                            (("--extract", "/x", "--to", str(tmp_path / "nowhere")), "no such directory"),
                            (("--ls", "/", "--cat", "/x"), "not several")):
        result = cli("restore", chain, *arguments)
        assert result.code == 2 and said in result.err, (arguments, result)


@pytest.mark.one_qemu
def test_ctrl_c_twice_mid_extract_leaves_no_process_no_temp_files_and_nothing_in_dir(cli, vm_factory, tmp_path):
    need_guestfish()
    chain = backed_up(cli, vm_factory, tmp_path, ext2_disk(tmp_path, bulk=24 << 20))
    private = tmp_path / "tmp"
    out = tmp_path / "out"
    out.mkdir()
    child = cli.popen("restore", chain, "--extract", "/bulk", "--to", str(out), env=guestfs_env(tmp_path))

    def copying() -> bool:  # the appliance is up and files arrive in the staging folder
        assert child.poll() is None, child.communicate()
        try:
            return any(path.is_file() for path in out.rglob("*"))
        except FileNotFoundError:  # a folder went while it was listed
            return False

    wait_for(copying, "--extract writing its staging folder", timeout=300, pause=0.01)
    below = descendants(child.pid)
    assert below  # guestfish, and the appliance's QEMU under it
    interrupt_twice(child)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert list(private.iterdir()) == []
    assert list(out.iterdir()) == []  # no staging folder, no partial file
    assert [pid for pid in below if alive(pid)] == []
    left = subprocess.run(["pgrep", "-f", str(private)], capture_output=True, text=True)
    assert left.stdout == "", left.stdout
