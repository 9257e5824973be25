"""restore CHAIN --cat/--ls/--extract of a point's files, through libguestfs, the backup never written.

One libguestfs appliance boots per call under TCG: the file-reading tests are
split over this module and test_restore_file_faults.py, so two workers run them.
"""

from __future__ import annotations

import json

import pytest

from support.guestfs import OLD, WHEN, backed_up, ext2_disk, guestfs_env, need_guestfish, sums

pytestmark = pytest.mark.qemu


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
