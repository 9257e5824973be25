"""restore CHAIN --ls/--cat/--extract: single files of a backup point, through libguestfs, never written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support.waits import alive, descendants, interrupt_twice, wait_for

pytestmark = pytest.mark.qemu

OLD = b"version 1\nno newline at the end"
NEW = b"version 2, written after the backup\n"
WHEN = 1_700_000_000  # 2023-11-14T22:13:20Z


def guestfs_env(tmp_path: Path) -> dict[str, str]:
    """qmpctl's libguestfs temp folder under the test's TMPDIR (checked empty after), the appliance cached as usual."""
    private = tmp_path / "tmp"
    private.mkdir(exist_ok=True)
    return {"TMPDIR": str(private), "LIBGUESTFS_CACHEDIR": os.environ.get("LIBGUESTFS_CACHEDIR", "/var/tmp")}


def need_guestfish() -> None:
    if shutil.which("guestfish") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("guestfish is not installed (run tests/setup-host)")
        pytest.skip("guestfish is not installed (run tests/setup-host)")


def ext2_disk(tmp_path: Path, bulk: int = 0) -> Path:
    """A raw disk holding an ext2 filesystem made from a folder (mke2fs -d): /etc/app.conf and a /data tree;
    with ``bulk``, also /bulk holding that many bytes of random data in 1 MiB files (a copy that takes a while)."""
    source = tmp_path / "tree"
    (source / "etc").mkdir(parents=True)
    (source / "data" / "sub").mkdir(parents=True)
    (source / "etc" / "app.conf").write_bytes(OLD)
    (source / "data" / "big.bin").write_bytes(bytes(range(256)) * 1024)
    (source / "data" / "sub" / "secret").write_bytes(b"only root\n")
    os.chmod(source / "data" / "sub" / "secret", 0o640)
    for path in (source / "data" / "sub" / "secret", source / "data" / "big.bin"):
        os.utime(path, (WHEN, WHEN))
    if bulk:
        (source / "bulk").mkdir()
        for number in range(bulk >> 20):
            (source / "bulk" / f"{number:03}.bin").write_bytes(os.urandom(1 << 20))
    disk = tmp_path / "fs.raw"
    size = f"{16 + 2 * (bulk >> 20)}M"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", "-d", str(source), str(disk), size], check=True)
    return disk


def backed_up(cli, vm_factory, tmp_path: Path, disk: Path) -> str:
    """A chain of the VM whose disk vd0 is ``disk`` (raw), then the VM gone and ``/etc/app.conf`` changed."""
    vm = vm_factory(qemu_args_disk=False, extra_args=[
        "-blockdev", f"driver=raw,node-name=disk0,file.driver=file,file.filename={disk}",
        "-device", "virtio-blk-pci,drive=disk0,id=vd0"])
    made = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(tmp_path / "b"), "--progress", "none")
    assert made.code == 0, made
    vm.kill()
    new = tmp_path / "new.conf"
    new.write_bytes(NEW)
    for request in ("rm /etc/app.conf", f"write {new} /etc/app.conf"):
        subprocess.run(["debugfs", "-w", "-R", request, str(disk)], check=True, capture_output=True)
    now = subprocess.run(["debugfs", "-R", "cat /etc/app.conf", str(disk)], check=True, capture_output=True)
    assert now.stdout == NEW
    return json.loads(made.out)["return"]["chain"]


def sums(chain: str) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(Path(chain).iterdir())}


def test_cat_gives_the_file_as_it_was_at_the_backup(cli, vm_factory, tmp_path):
    need_guestfish()
    chain = backed_up(cli, vm_factory, tmp_path, ext2_disk(tmp_path))
    before = sums(chain)
    result = cli("restore", chain, "--cat", "/etc/app.conf", env=guestfs_env(tmp_path), timeout=600)
    assert result.code == 0, result
    assert result.out_bytes == OLD  # exact bytes: no newline added
    assert list((tmp_path / "tmp").iterdir()) == [] and sums(chain) == before


@pytest.mark.one_qemu
def test_extract_writes_a_tree_with_modes_and_times_and_ls_lists_it(cli, vm_factory, tmp_path):
    need_guestfish()
    chain = backed_up(cli, vm_factory, tmp_path, ext2_disk(tmp_path))
    before = sums(chain)
    out = tmp_path / "out"
    out.mkdir()
    one_out = tmp_path / "one"
    one_out.mkdir()
    # three independent reads of the same chain, each booting its own appliance: at once
    result, one, listed = cli.concurrently(("restore", chain, "--extract", "/data", "--to", str(out)),
                                           ("restore", chain, "--extract", "/data/sub/secret", "--to", str(one_out)),
                                           ("restore", chain, "--ls", "/data"),
                                           env=guestfs_env(tmp_path), timeout=600)
    assert result.code == 0, result
    done = json.loads(result.out)["return"]
    assert (done["to"], done["type"], done["files"], done["bytes"]) == (str(out / "data"), "directory", 2,
                                                                       256 * 1024 + 10)
    secret = out / "data" / "sub" / "secret"
    assert secret.read_bytes() == b"only root\n" and secret.stat().st_mode & 0o777 == 0o640
    assert int(secret.stat().st_mtime) == WHEN and int((out / "data" / "big.bin").stat().st_mtime) == WHEN
    assert sorted(path.name for path in out.iterdir()) == ["data"]  # no staging folder left
    again = cli("restore", chain, "--extract", "/data", "--to", str(out))
    assert again.code == 2 and "exists" in again.err  # refused before libguestfs starts
    assert one.code == 0, one
    assert json.loads(one.out)["return"]["type"] == "file"
    single = one_out / "secret"
    assert single.read_bytes() == b"only root\n" and single.stat().st_mode & 0o777 == 0o640
    assert int(single.stat().st_mtime) == WHEN
    assert sorted(path.name for path in one_out.iterdir()) == ["secret"]
    assert listed.code == 0, listed
    entries = {entry["name"]: entry for entry in json.loads(listed.out)["return"]["entries"]}
    assert sorted(entries) == ["big.bin", "sub"]
    assert entries["big.bin"]["size"] == 256 * 1024 and entries["sub"]["type"] == "directory"
    assert entries["big.bin"]["mtime"] == "2023-11-14T22:13:20Z"
    assert list((tmp_path / "tmp").iterdir()) == [] and sums(chain) == before


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
