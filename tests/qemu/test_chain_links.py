"""DIR may be writable by QEMU's user while qmpctl runs as root: a symbolic link planted where qmpctl creates or
opens a file (the lock, the manifest's temporary file, an image, a chain folder, DIR itself) is refused, never
followed; what it points to stays untouched. (The same on a VM's host over SSH: test_ssh_chain.py.)"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from support.disks import wait_for_job, write_pattern

pytestmark = pytest.mark.qemu

MiB = 1 << 20
PRECIOUS = b"root's file, not qmpctl's to write\n"


def backup(cli, vm, into: Path, *arguments: str):
    return cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--progress", "none", *arguments)


def full_chain(cli, vm, into: Path) -> Path:
    result = backup(cli, vm, into)
    assert result.code == 0, result
    return Path(json.loads(result.out)["return"]["chain"])


def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_bytes(PRECIOUS)
    return path


def tree(path: Path) -> dict[str, bytes | str]:
    """Every entry under ``path`` with its bytes (a link: where it points): what must not change."""
    found: dict[str, bytes | str] = {}
    for entry in sorted(path.rglob("*")):
        key = str(entry.relative_to(path))
        found[key] = os.readlink(entry) if entry.is_symlink() else entry.read_bytes() if entry.is_file() else "dir"
    return found


@pytest.mark.parametrize("target", ["missing", "existing"])
def test_a_link_planted_as_the_lock_file_is_refused_and_its_target_untouched(cli, vm_factory, tmp_path, target):
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    into.mkdir()
    aim = victim(tmp_path) if target == "existing" else tmp_path / "created-by-root"
    (into / ".vd0.lock").symlink_to(aim)
    result = backup(cli, vm, into)
    assert result.code == 6 and f"{into}/.vd0.lock is a symbolic link" in result.err, result
    assert (aim.read_bytes() == PRECIOUS) if target == "existing" else not aim.exists()
    assert sorted(path.name for path in into.iterdir()) == [".vd0.lock"]


def test_the_old_manifest_temp_name_is_not_used_and_a_link_there_is_refused_next(cli, vm_factory, tmp_path):
    """The temporary manifest was chain.json.tmp-PID: a link planted at that name got the manifest written
    through it. Its name is unpredictable now and created exclusively; a link in a chain folder stops the next run."""
    vm = vm_factory(disk_size="32M")
    into = tmp_path / "b"
    chain = full_chain(cli, vm, into)
    aim = victim(tmp_path)
    write_pattern(vm, [(0x3C, 0, 8 * MiB)])
    child = cli.popen("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--speed", "4M",
                      "--progress", "none")
    wait_for_job(vm, "running")  # DIR was listed: the run goes on to write its manifest
    (chain / f"chain.json.tmp-{child.pid}").symlink_to(aim)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert aim.read_bytes() == PRECIOUS
    assert [image["file"] for image in json.loads((chain / "chain.json").read_text())["images"]] == [
        "0001-full.qcow2", "0002-inc.qcow2"]
    before = tree(into)
    again = backup(cli, vm, into)
    assert again.code == 6 and f"chain.json.tmp-{child.pid} is a symbolic link in a chain folder" in again.err, again
    assert tree(into) == before and aim.read_bytes() == PRECIOUS


def test_a_link_planted_as_the_next_image_is_refused_and_its_target_untouched(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    chain = full_chain(cli, vm, into)
    aim = victim(tmp_path)
    (chain / "0002-inc.qcow2").symlink_to(aim)
    before = tree(into)
    result = backup(cli, vm, into)
    assert result.code == 6 and "0002-inc.qcow2 is a symbolic link in a chain folder" in result.err, result
    assert tree(into) == before and aim.read_bytes() == PRECIOUS
    verified = cli("backup-verify", str(chain))
    assert verified.code == 0, verified  # the manifest lists one image, and it is sound


def test_a_chain_folder_replaced_by_a_link_is_refused_and_what_it_points_to_untouched(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    chain = full_chain(cli, vm, into)
    elsewhere = tmp_path / "elsewhere"
    chain.rename(elsewhere)
    chain.symlink_to(elsewhere)
    before = tree(elsewhere)
    result = backup(cli, vm, into)
    assert result.code == 6 and f"{chain} is a symbolic link to a folder" in result.err, result
    assert tree(elsewhere) == before
    for command in (["backup-verify", str(into)], ["restore", str(into), str(tmp_path / "r.img")]):
        refused = cli(*command)
        assert refused.code == 6 and f"{chain} is a symbolic link to a folder" in refused.err, refused
    assert tree(elsewhere) == before and not (tmp_path / "r.img").exists()


def test_dir_itself_as_a_link_is_refused(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "b").symlink_to(real)
    result = backup(cli, vm, tmp_path / "b")
    assert result.code == 6 and f"{tmp_path / 'b'} is a symbolic link" in result.err, result
    assert list(real.iterdir()) == []


def test_a_chain_folder_of_another_user_is_refused(cli, vm_factory, tmp_path):
    if os.geteuid() != 0:
        pytest.fail("this test gives a folder to another user: run the suite as root, as CI does")
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    chain = full_chain(cli, vm, into)
    os.chown(chain, 12345, 12345)
    before = tree(into)
    result = backup(cli, vm, into)
    assert result.code == 6 and f"{chain} belongs to user 12345" in result.err, result
    assert tree(into) == before


def test_the_folder_writes_nothing_through_links_planted_in_the_race(tmp_path, monkeypatch):
    """What a run cannot show: a link planted between the listing and the write, at the very name qmpctl
    then creates (the image) or its temporary manifest (its random part made known here)."""
    import secrets

    from qmpctl.backup.folder import LocalFolder, NewImage
    from qmpctl.backup.manifest import MANIFEST
    from qmpctl.deadline import Deadline
    from qmpctl.errors import VerificationFailed
    from qmpctl.wire.schema import load_schema

    into = tmp_path / "b"
    chain = into / "c"
    chain.mkdir(parents=True)
    aim = victim(tmp_path)
    folder = LocalFolder(str(into))
    with folder.lock([("vd0", "vd0")], Deadline(10)):
        (chain / "0001-full.qcow2").symlink_to(aim)
        image = NewImage(str(chain), str(chain / "0001-full.qcow2"), MiB, None, make_dir=False)
        with pytest.raises(VerificationFailed, match="0001-full.qcow2 is a symbolic link"):
            folder.create([image], Deadline(10))
        assert not image.created
        monkeypatch.setattr(secrets, "token_hex", lambda size: "0" * 2 * size)
        (chain / f".{MANIFEST}.{'0' * 16}.tmp").symlink_to(aim)
        with pytest.raises(VerificationFailed, match=r"\.tmp is a symbolic link"):
            folder.write_manifest(str(chain), load_schema("chain")["examples"][0], Deadline(10))
    assert aim.read_bytes() == PRECIOUS and not (chain / MANIFEST).exists()


def test_restore_writes_its_target_through_no_link(cli, vm_factory, tmp_path, monkeypatch):
    """restore's temporary file is created exclusively and written through its descriptor; --force replaces
    a link at TARGET, never what it points to."""
    vm = vm_factory(disk_size="16M")
    chain = full_chain(cli, vm, tmp_path / "b")
    aim = victim(tmp_path)
    target = tmp_path / "out" / "r.qcow2"
    target.parent.mkdir()
    target.symlink_to(aim)
    refused = cli("restore", str(chain), str(target), "--progress", "none")
    assert refused.code == 2 and "exists" in refused.err and aim.read_bytes() == PRECIOUS
    forced = cli("restore", str(chain), str(target), "--force", "--progress", "none")
    assert forced.code == 0, forced
    assert not target.is_symlink() and aim.read_bytes() == PRECIOUS
    assert sorted(path.name for path in target.parent.iterdir()) == ["r.qcow2"]
    import secrets

    from qmpctl.backup import restore
    from qmpctl.deadline import Deadline
    from qmpctl.errors import VerificationFailed

    monkeypatch.setattr(secrets, "token_hex", lambda size: "0" * 2 * size)
    planted = target.parent / f".new.qcow2.{'0' * 16}.tmp"
    planted.symlink_to(aim)
    started = time.monotonic()
    with pytest.raises(VerificationFailed, match=r"\.tmp is a symbolic link"):
        restore.restore(str(chain), str(target.parent / "new.qcow2"), Deadline(30))
    assert aim.read_bytes() == PRECIOUS and time.monotonic() - started < 30
