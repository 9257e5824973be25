"""Chain policy against a real QEMU: compressed images every reader reads, and one cron line for weekly fulls
and daily incrementals (--new-chain-after, --max-incrementals)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support.disks import images_identical, make_image, write_pattern

pytestmark = pytest.mark.qemu

MiB = 1 << 20


def ok(cli, vm, into: Path, *arguments: str) -> dict:
    result = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--progress", "none", *arguments)
    assert result.code == 0, result
    return json.loads(result.out)["return"]


def test_a_compressed_chain_is_smaller_and_every_restore_path_reads_it(cli, vm_factory, qemu_build, tmp_path):
    vm = vm_factory(disk_size="32M")
    write_pattern(vm, [(0x11, 0, 8 * MiB)])
    plain, packed = ok(cli, vm, tmp_path / "plain"), ok(cli, vm, tmp_path / "packed", "--compress")
    write_pattern(vm, [(0x22, 16 * MiB, 4 * MiB)])
    plain2, packed2 = ok(cli, vm, tmp_path / "plain"), ok(cli, vm, tmp_path / "packed", "--compress")
    assert (packed2["level"], packed2["chain"]) == ("incremental", packed["chain"])
    # 8 MiB, then 4 MiB, of one byte: a plain image holds every byte, a compressed one a few KiB per cluster run
    assert packed["size"] * 4 < plain["size"] and packed2["size"] * 4 < plain2["size"], (packed, plain)
    chain = packed["chain"]

    restored = cli("restore", chain, str(tmp_path / "r.qcow2"), "--progress", "none")
    assert restored.code == 0, restored
    assert images_identical(vm.disk, tmp_path / "r.qcow2").returncode == 0

    verified = cli("backup-verify", chain, "--json")
    assert verified.code == 0 and all(json.loads(line)["ok"] for line in verified.out.splitlines()), verified

    overlay = tmp_path / "instant.qcow2"
    made = cli("restore", chain, "--instant", str(overlay), env=qemu_build.tools_env())
    assert made.code == 0, made
    compared = subprocess.run([qemu_build.qemu_img, "compare", str(tmp_path / "r.qcow2"), str(overlay)],
                              capture_output=True, text=True)
    assert compared.returncode == 0, compared.stdout + compared.stderr

    sock = tmp_path / "serve.sock"
    env = {**qemu_build.tools_env(), "TMPDIR": str(tmp_path)}
    child = cli.popen("restore", chain, "--serve", f"unix:{sock}", "--point", "1", env=env)
    try:
        line = child.stdout.readline()
        assert line, child.communicate(timeout=30)
        served = json.loads(line)
        point1 = cli("restore", chain, str(tmp_path / "p1.qcow2"), "--point", "1", "--progress", "none")
        assert point1.code == 0, point1
        compared = subprocess.run([qemu_build.qemu_img, "compare", "-f", "qcow2", "-F", "raw",
                                   str(tmp_path / "p1.qcow2"), served["uri"]], capture_output=True, text=True)
        assert compared.returncode == 0, compared.stdout + compared.stderr
    finally:
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err


def test_max_incrementals_starts_a_new_chain_with_its_reason_and_keep_chains_rotates(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    policy = ("--max-incrementals", "2", "--keep-chains", "1")
    first = ok(cli, vm, into, *policy)
    levels = []
    for number in range(3):
        write_pattern(vm, [(0x30 + number, number * MiB, MiB)])
        levels.append(ok(cli, vm, into, *policy))
    assert [run["level"] for run in levels] == ["incremental", "incremental", "full"]
    assert [run["chain"] for run in levels[:2]] == [first["chain"], first["chain"]]
    assert "has 2 incremental(s): --max-incrementals 2" in levels[2]["reason"], levels[2]
    assert levels[2]["chain"] != first["chain"] and levels[2]["deleted-chains"] == [first["chain"]]
    assert not Path(first["chain"]).exists()
    with vm.check() as qmp:
        names = [bitmap["name"] for entry in qmp.cmd("query-block")
                 if entry["qdev"].startswith("/machine/peripheral/vd0/")
                 for bitmap in entry["inserted"].get("dirty-bitmaps", [])]
    assert names == [levels[2]["bitmap"]]
    again = ok(cli, vm, into, "--max-incrementals", "0")
    assert again["level"] == "full" and "--max-incrementals 0" in again["reason"]


def test_new_chain_after_starts_a_full_once_the_chain_is_older(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    first = ok(cli, vm, into, "--new-chain-after", "1h")
    write_pattern(vm, [(0x41, 0, MiB)])
    second = ok(cli, vm, into, "--new-chain-after", "1h")
    assert (second["level"], second["chain"], second["bytes"]) == ("incremental", first["chain"], MiB)
    time.sleep(1.1)
    third = ok(cli, vm, into, "--new-chain-after", "1s")
    assert third["level"] == "full" and third["chain"] != first["chain"], third
    assert "--new-chain-after 1s starts a new chain" in third["reason"], third
    assert images_identical(vm.disk, Path(third["image"])).returncode == 0


@pytest.mark.parametrize("arguments, said", [
    (("--new-chain-after", "soon"), "--new-chain-after wants a duration"),
    (("--new-chain-after", "0"), "--new-chain-after wants a duration"),
    (("--max-incrementals", "-1"), "--max-incrementals must be 0 or more"),
])
def test_policy_misuse_is_exit_2(cli, tmp_path, arguments, said):
    result = cli("backup", "-s", str(tmp_path / "none.sock"), "vd0", "--into", str(tmp_path / "b"), *arguments)
    assert result.code == 2 and said in result.err, result
    assert not (tmp_path / "b").exists()


def test_policy_options_need_into(cli, tmp_path):
    result = cli("backup", "-s", str(tmp_path / "none.sock"), "vd0", str(tmp_path / "t.qcow2"), "--compress")
    assert result.code == 2 and "--compress: only with --into DIR" in result.err, result


def node_bitmaps(vm) -> dict[str, int]:
    with vm.check() as qmp:
        return {bitmap["name"]: bitmap["count"] for entry in qmp.cmd("query-block")
                if entry["qdev"].startswith("/machine/peripheral/vd0/")
                for bitmap in entry["inserted"].get("dirty-bitmaps", [])}


def tree(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_size for path in sorted(folder.rglob("*"))}


def test_estimate_says_level_and_bytes_and_changes_nothing(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    write_pattern(vm, [(0x51, 0, 2 * MiB)])
    into = tmp_path / "b"
    first = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--estimate")
    assert first.code == 0, first
    said = json.loads(first.out)["return"]
    assert (said["estimate"], said["level"]) == (True, "full") and said["bytes"] >= 2 * MiB, said
    assert "no chain of vd0" in said["reason"]
    assert not into.exists() and node_bitmaps(vm) == {}
    full = ok(cli, vm, into)
    write_pattern(vm, [(0x52, 4 * MiB, 3 * MiB)])
    before, marks = tree(into), node_bitmaps(vm)
    second = cli("backup", "-s", str(vm.qmp_path), "vd0", "--into", str(into), "--estimate")
    assert second.code == 0, second
    said = json.loads(second.out)["return"]
    assert (said["level"], said["bytes"], said["chain"]) == ("incremental", 3 * MiB, full["chain"]), said
    assert tree(into) == before and node_bitmaps(vm) == marks == {full["bitmap"]: 3 * MiB}


def test_skip_below_leaves_a_small_change_for_the_next_run(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    into = tmp_path / "b"
    full = ok(cli, vm, into, "--skip-below", "4M")
    assert full["level"] == "full"  # a full is never skipped
    write_pattern(vm, [(0x61, 0, 3 * MiB)])
    before = tree(into)
    skipped = ok(cli, vm, into, "--skip-below", "4M")
    assert (skipped["level"], skipped["bytes"], skipped["chain"]) == ("skipped", 3 * MiB, full["chain"]), skipped
    assert "below --skip-below" in skipped["reason"]
    assert tree(into) == before and node_bitmaps(vm) == {full["bitmap"]: 3 * MiB}
    write_pattern(vm, [(0x62, 8 * MiB, 2 * MiB)])
    then = ok(cli, vm, into, "--skip-below", "4M")
    assert (then["level"], then["bytes"], then["chain"]) == ("incremental", 5 * MiB, full["chain"]), then
    assert images_identical(vm.disk, Path(then["image"])).returncode == 0


def test_with_several_disks_only_the_small_change_is_skipped_and_estimate_lists_each(cli, vm_factory, tmp_path):
    second = make_image(tmp_path / "disk1.qcow2", "qcow2", "16M")
    vm = vm_factory(disk_size="16M", extra_args=[
        "-blockdev", f"driver=qcow2,node-name=disk1,file.driver=file,file.filename={second}",
        "-device", "virtio-blk-pci,drive=disk1,id=vd1"])
    into = tmp_path / "b"
    disks = ("vd0", "vd1")
    first = cli("backup", "-s", str(vm.qmp_path), *disks, "--into", str(into), "--progress", "none")
    assert first.code == 0, first
    chains = [disk["chain"] for disk in json.loads(first.out)["return"]["disks"]]
    write_pattern(vm, [(0x71, 0, 3 * MiB)])
    said = cli("backup", "-s", str(vm.qmp_path), *disks, "--into", str(into), "--estimate", "--skip-below", "1M")
    assert said.code == 0, said
    estimate = json.loads(said.out)["return"]
    assert [(disk["device"], disk["level"], disk["bytes"]) for disk in estimate["disks"]] == [
        ("vd0", "incremental", 3 * MiB), ("vd1", "skipped", 0)] and estimate["bytes"] == 3 * MiB, estimate
    before = tree(Path(chains[1]))
    run = cli("backup", "-s", str(vm.qmp_path), *disks, "--into", str(into), "--progress", "none",
              "--skip-below", "1M")
    assert run.code == 0, run
    done = json.loads(run.out)["return"]["disks"]
    assert [(disk["level"], disk["bytes"], disk["chain"]) for disk in done] == [
        ("incremental", 3 * MiB, chains[0]), ("skipped", 0, chains[1])], done
    assert tree(Path(chains[1])) == before
    assert images_identical(vm.disk, Path(done[0]["image"])).returncode == 0
