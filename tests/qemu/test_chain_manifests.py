"""A chain's manifest is data from disk: backup, backup-verify and restore refuse one that does not match its
schema (exit 6, naming the file and the first problem) and never act on what it says."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from support.disks import write_pattern

pytestmark = pytest.mark.qemu

MiB = 1 << 20


def edit(manifest: dict, change) -> bytes:
    changed = json.loads(json.dumps(manifest))
    change(changed)
    return json.dumps(changed).encode()


def setitem(path: tuple, value):
    def change(manifest: dict) -> None:
        node = manifest
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


BROKEN = {
    "an image entry that is not an object": (lambda m: edit(m, setitem(("images", 0), 7)), "images[0]"),
    "an image size that is not a number": (lambda m: edit(m, setitem(("images", 0, "size"), "big")),
                                           "images[0].size"),
    "images that is not a list": (lambda m: edit(m, setitem(("images",), {"a": 1})), "images"),
    "no image at all": (lambda m: edit(m, setitem(("images",), [])), "images"),
    "an image named outside the chain": (lambda m: edit(m, setitem(("images", 0, "file"), "../../etc/passwd")),
                                         "images[0].file"),
    "a second full backup": (lambda m: edit(m, lambda c: c["images"].append(dict(c["images"][0]))),
                             "images[1].file"),
    "a start time that is no time": (lambda m: edit(m, setitem(("images", 0, "started"), "yesterday")),
                                     "images[0].started"),
    "an unknown version": (lambda m: edit(m, setitem(("version",), 3)), "version"),
    "no device": (lambda m: edit(m, lambda c: c.pop("device")), "device"),
    "not JSON": (lambda m: b'{"images": [', "not JSON"),
    "not an object": (lambda m: b"[]", "expected object"),
}


def test_a_manifest_that_does_not_match_is_refused_by_every_command(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    result = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--progress", "none")
    assert result.code == 0, result
    chain = Path(json.loads(result.out)["return"]["chain"])
    good = json.loads((chain / "chain.json").read_text())
    write_pattern(vm, [(0x21, 0, MiB)])
    pristine = tmp_path / "pristine"
    shutil.copytree(chain, pristine)
    for case, (make, problem) in BROKEN.items():
        shutil.rmtree(chain)
        shutil.copytree(pristine, chain)
        broken = make(good)
        (chain / "chain.json").write_bytes(broken)
        listing = sorted(path.name for path in into.rglob("*"))
        name = str(chain / "chain.json")
        verified = cli("backup-verify", str(into))
        assert verified.code == 6 and name in verified.err and problem in verified.err, (case, verified)
        for path in (into, chain):
            restored = cli("restore", str(path), str(tmp_path / "r.img"), "--progress", "none")
            assert restored.code == 6 and name in restored.err and problem in restored.err, (case, restored)
            assert not (tmp_path / "r.img").exists()
        backup = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--progress", "none")
        assert backup.code == 6 and name in backup.err and problem in backup.err, (case, backup)
        assert sorted(path.name for path in into.rglob("*")) == listing, case  # nothing made, nothing removed
        assert (chain / "chain.json").read_bytes() == broken, case
    shutil.rmtree(chain)
    shutil.copytree(pristine, chain)
    again = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--progress", "none")
    assert again.code == 0 and json.loads(again.out)["return"]["level"] == "incremental", again  # bitmap kept


def test_a_chain_folder_whose_manifest_is_not_a_file_is_refused(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    (into / "20260101T000000Z" / "chain.json").mkdir(parents=True)
    backup = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--progress", "none")
    assert backup.code == 6 and "20260101T000000Z/chain.json" in backup.err, backup
    assert sorted(path.name for path in into.iterdir()) == [".vd0.lock", "20260101T000000Z"]
    verified = cli("backup-verify", str(into))
    assert verified.code == 6 and "20260101T000000Z/chain.json is not a valid qmpctl chain manifest (version 2): " \
        "it is not a regular file" in verified.err, verified
