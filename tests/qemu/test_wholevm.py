"""Whole-VM backups against a real QEMU: every disk the guest can write, what is left out and why, fleets."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from support.disks import flush, hmp, images_identical, make_image, reads_pattern, whole_vm_args, write_pattern
from support.qemu import RawQmp
from support.uefi import OVMF_VARS, run_firmware_until_it_writes, uefi_args
from support.waits import wait_for

pytestmark = pytest.mark.qemu

MiB = 1 << 20
VD1 = "/machine/peripheral/vd1/virtio-backend"


def write_vd1(vm, pattern: int, offset: int, length: int) -> None:
    hmp(vm, f'qemu-io -d {VD1} "write -P {pattern:#x} {offset} {length}"')
    flush(vm, VD1)


def backup(cli, sockets: list[str], into: Path, *arguments: str):
    targets = [word for socket in sockets for word in ("-s", socket)]
    return cli("backup", *targets, "--into", str(into), "--progress", "none", *arguments)


def test_no_device_backs_up_every_writable_disk_and_says_what_it_skipped(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M", extra_args=whole_vm_args(tmp_path / "files"))
    write_pattern(vm, [(0x11, 0, MiB)])
    write_vd1(vm, 0x22, MiB, MiB)
    into = tmp_path / "b"
    result = backup(cli, [str(vm.qmp_path)], into)
    assert result.code == 0, result
    reply = json.loads(result.out)["return"]
    disks = {disk["device"]: disk for disk in reply["disks"]}
    assert set(disks) == {"vd0", "vd1", "pflash1"}
    assert all(disk["level"] == "full" for disk in disks.values())
    assert "memory" in disks["pflash1"]["note"] and "note" not in disks["vd0"]
    skipped = {item["device"]: item["reason"] for item in reply["skipped"]}
    assert set(skipped) == {"pflash0", "cdrom0", "cdrom1"}
    assert "firmware" in skipped["pflash0"] and "read-only" in skipped["cdrom0"] and "medium" in skipped["cdrom1"]
    for disk in reply["disks"]:
        assert json.loads((Path(disk["chain"]) / "chain.json").read_text())["device"] == disk["device"]
    out = tmp_path / "vars.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", disks["pflash1"]["image"], str(out)], check=True)
    assert out.read_bytes() == (tmp_path / "files" / "vars.fd").read_bytes()
    assert reads_pattern(Path(disks["vd1"]["image"]), 0x22, MiB, MiB)
    write_vd1(vm, 0x33, 4 * MiB, MiB)
    again = backup(cli, [str(vm.qmp_path)], into)
    assert again.code == 0, again
    levels = {disk["device"]: (disk["level"], disk["bytes"]) for disk in json.loads(again.out)["return"]["disks"]}
    assert levels == {"vd0": ("incremental", 0), "vd1": ("incremental", MiB), "pflash1": ("incremental", 0)}


def test_exclude_narrows_the_set_by_any_name(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M", extra_args=whole_vm_args(tmp_path / "files"))
    result = backup(cli, [str(vm.qmp_path)], tmp_path / "b", "--exclude", "disk1", "--exclude", "pflash1")
    assert result.code == 0, result
    reply = json.loads(result.out)["return"]
    assert [disk["device"] for disk in reply["disks"]] == ["vd0"]
    named = backup(cli, [str(vm.qmp_path)], tmp_path / "c", "vd0", "vd1", "--exclude", VD1)
    assert named.code == 0, named
    assert [disk["device"] for disk in json.loads(named.out)["return"]["disks"]] == ["vd0"]
    unknown = backup(cli, [str(vm.qmp_path)], tmp_path / "d", "--exclude", "nosuch")
    assert unknown.code == 2 and "nosuch" in unknown.err and not (tmp_path / "d").exists()


def test_a_fleet_backs_up_each_vm_into_its_own_folder_and_one_failure_stops_none(cli, vm_factory, tmp_path):
    vms = [vm_factory(disk_size="16M", extra_args=["-name", name]) for name in ("alpha", "beta", "gamma")]
    into = tmp_path / "nightly"
    broken = into / "beta" / "20260101T000000Z"
    broken.mkdir(parents=True)
    (broken / "chain.json").write_text("{not json")
    before = {path: path.read_bytes() for path in broken.rglob("*")}
    result = backup(cli, [str(tmp_path / "vm*" / "qmp.sock")], into, "-j", "2")
    assert result.code == 6, result
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert [line["target"] for line in lines] == [f"unix:{vm.qmp_path}" for vm in vms]
    by_vm = {line["return"]["vm"]: line for line in lines if "return" in line}
    assert set(by_vm) == {"alpha", "gamma"}
    for name, line in by_vm.items():
        assert line["return"]["disks"][0]["chain"].startswith(str(into / name) + "/")
    assert lines[1]["exit"] == 6 and "chain.json" in lines[1]["error"]["desc"]
    assert {path: path.read_bytes() for path in broken.rglob("*")} == before
    assert sorted(path.name for path in (into / "beta").iterdir() if not path.name.startswith(".")) == [broken.name]


def test_a_vm_name_that_cannot_be_a_folder_is_refused(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M", extra_args=["-name", ".hidden"])
    result = backup(cli, [str(vm.qmp_path), str(vm.qmp_path)], tmp_path / "n")
    assert result.code == 2, result
    assert all(json.loads(line)["exit"] == 2 for line in result.out.splitlines())
    assert list((tmp_path / "n").iterdir()) == []


def read_metrics(path: Path) -> dict[tuple[str, frozenset], float]:
    """A textfile's samples, parsed here (not by qmpctl): {(name, labels): value}; HELP and TYPE checked."""
    samples: dict[tuple[str, frozenset], float] = {}
    typed = set()
    for line in path.read_text().splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, labels = head.partition("{")
        assert name in typed, f"{name} has no # TYPE line"
        pairs = [item.split("=", 1) for item in labels.rstrip("}").split(",")] if labels else []
        samples[(name, frozenset((key, text.strip('"')) for key, text in pairs))] = float(value)
    return samples


def sample(samples, name: str, **labels: str) -> float:
    return samples[(f"qmpctl_backup_{name}", frozenset(labels.items()))]


def test_metrics_record_each_success_and_count_failures_without_losing_the_last_success(cli, vm_factory, tmp_path):
    vms = [vm_factory(disk_size="16M", extra_args=["-name", name]) for name in ("alpha", "beta")]
    into, prom = tmp_path / "nightly", tmp_path / "textfile" / "qmpctl.prom"
    prom.parent.mkdir()
    glob = str(tmp_path / "vm*" / "qmp.sock")
    first = backup(cli, [glob], into, "--metrics", str(prom))
    assert first.code == 0, first
    write_pattern(vms[0], [(0x44, 0, MiB)])
    second = backup(cli, [glob], into, "--metrics", str(prom))
    assert second.code == 0, second
    samples = read_metrics(prom)
    assert sample(samples, "chain_length", vm="alpha", device="vd0") == 2
    assert sample(samples, "last_level", vm="alpha", device="vd0", level="incremental") == 1
    assert sample(samples, "last_bytes", vm="alpha", device="vd0") == MiB
    assert sample(samples, "last_bytes", vm="beta", device="vd0") == 0
    assert sample(samples, "failures_total", vm="alpha") == 0 and sample(samples, "last_run_success", vm="beta") == 1
    succeeded = sample(samples, "last_success_timestamp_seconds", vm="beta", device="vd0")
    assert abs(succeeded - time.time()) < 60
    vms[1].kill()  # beta is gone: its run fails, alpha's goes on
    third = backup(cli, [glob], into, "--metrics", str(prom))
    assert third.code == 3, third
    after = read_metrics(prom)
    assert sample(after, "failures_total", vm="beta") == 1 and sample(after, "last_run_success", vm="beta") == 0
    assert sample(after, "last_run_exit_code", vm="beta") == 3
    assert sample(after, "last_success_timestamp_seconds", vm="beta", device="vd0") == succeeded
    assert sample(after, "chain_length", vm="beta", device="vd0") == 2
    assert sample(after, "chain_length", vm="alpha", device="vd0") == 3
    assert [path.name for path in prom.parent.iterdir()] == ["qmpctl.prom"]  # no temporary file left


def test_an_estimate_of_a_whole_vm_has_the_form_of_several_disks_and_writes_no_metrics(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    write_pattern(vm, [(0x11, 0, MiB)])
    into, prom = tmp_path / "b", tmp_path / "qmpctl.prom"
    said = backup(cli, [str(vm.qmp_path)], into, "--estimate")
    assert said.code == 0, said
    estimate = json.loads(said.out)["return"]
    assert estimate["estimate"] is True and "seconds" not in estimate, estimate  # no job ran
    assert [(disk["device"], disk["level"]) for disk in estimate["disks"]] == [("vd0", "full")]
    assert estimate["bytes"] == estimate["disks"][0]["bytes"] >= MiB
    refused = backup(cli, [str(vm.qmp_path)], into, "--estimate", "--metrics", str(prom))
    assert refused.code == 2 and "--estimate" in refused.err, refused  # it would record a backup never made
    assert not prom.exists() and not into.exists()


def test_metrics_never_follow_a_link(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M")
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    link = tmp_path / "qmpctl.prom"
    link.symlink_to(victim)
    result = backup(cli, [str(vm.qmp_path)], tmp_path / "b", "--metrics", str(link))
    assert result.code == 2 and "symbolic link" in result.err
    assert victim.read_text() == "keep\n" and not (tmp_path / "b").exists()


def test_verify_max_age_names_every_disk_whose_newest_backup_is_too_old(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M", extra_args=whole_vm_args(tmp_path / "files"))
    into = tmp_path / "b"
    done = backup(cli, [str(vm.qmp_path)], into, "--exclude", "pflash1")
    assert done.code == 0, done
    fresh = cli("backup-verify", str(into), "--max-age", "90m")
    assert fresh.code == 0, fresh
    for disk in json.loads(done.out)["return"]["disks"]:  # as if the backups had stopped 3 days ago
        manifest_path = Path(disk["chain"]) / "chain.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["images"][0]["started"] = "2026-01-01T00:00:00.000Z"
        manifest_path.write_text(json.dumps(manifest))
    stale = cli("backup-verify", str(into), "--max-age", "36h")
    assert stale.code == 6, stale
    assert "vd0 in" in stale.err and "vd1 in" in stale.err and "--max-age 36h" in stale.err
    wrong = cli("backup-verify", str(into), "--max-age", "soon")
    assert wrong.code == 2 and "--max-age" in wrong.err


def test_verify_reads_a_fleets_folder(cli, vm_factory, tmp_path):
    alpha, _ = (vm_factory(disk_size="16M", extra_args=["-name", name]) for name in ("alpha", "beta"))
    into = tmp_path / "nightly"
    assert backup(cli, [str(tmp_path / "vm*" / "qmp.sock")], into).code == 0
    verified = cli("backup-verify", str(into), "--max-age", "1d")
    assert verified.code == 0, verified
    chains = json.loads(verified.out)["return"]["chains"]
    assert sorted(Path(chain).parent.name for chain in chains) == ["alpha", "beta"]
    one_of_them = cli("restore", str(into), str(tmp_path / "which.qcow2"))  # a restore needs the VM's folder
    assert one_of_them.code == 2 and "no chain" in one_of_them.err and not (tmp_path / "which.qcow2").exists()


def started_times(chain: str) -> list[str]:
    return [image["started"] for image in json.loads((Path(chain) / "chain.json").read_text())["images"]]


def test_restore_a_whole_vm_writes_every_disk_of_one_backup(cli, vm_factory, tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    disk1 = make_image(files / "disk1.qcow2", size="8M")
    vm = vm_factory(disk_size="16M", extra_args=[
        "-blockdev", f"driver=qcow2,node-name=disk1,file.driver=file,file.filename={disk1}",
        "-device", "virtio-blk-pci,drive=disk1,id=vd1", "-name", "app"])
    write_pattern(vm, [(0x11, 0, MiB)])
    write_vd1(vm, 0x22, MiB, MiB)
    into = tmp_path / "nightly"
    glob = str(tmp_path / "vm*" / "qmp.sock")
    first = backup(cli, [glob], into)
    assert first.code == 0, first
    chain = json.loads(first.out)["return"]["disks"][0]["chain"]
    write_pattern(vm, [(0x33, 2 * MiB, MiB)])
    write_vd1(vm, 0x44, 3 * MiB, MiB)
    assert backup(cli, [glob], into).code == 0
    at_first = cli("restore", str(into / "app"), str(tmp_path / "then"), "--at", started_times(chain)[0],
                   "--progress", "none")
    assert at_first.code == 0, at_first
    reply = json.loads(at_first.out)["return"]
    assert [Path(disk["target"]).name for disk in reply["disks"]] == ["vd0.qcow2", "vd1.qcow2"]
    assert reply["started"] == started_times(chain)[0] and {disk["point"] for disk in reply["disks"]} == {1}
    then = tmp_path / "then"
    vd0, vd1 = then / "vd0.qcow2", then / "vd1.qcow2"
    assert reads_pattern(vd0, 0x11, 0, MiB) and not reads_pattern(vd0, 0x33, 2 * MiB, MiB)
    assert reads_pattern(vd1, 0x22, MiB, MiB) and not reads_pattern(vd1, 0x44, 3 * MiB, MiB)
    latest = cli("restore", str(into / "app"), str(tmp_path / "now"), "--point", "2", "--progress", "none")
    assert latest.code == 0, latest
    assert images_identical(vm.disk, tmp_path / "now" / "vd0.qcow2").returncode == 0
    assert images_identical(disk1, tmp_path / "now" / "vd1.qcow2").returncode == 0
    before = (then / "vd1.qcow2").read_bytes()
    again = cli("restore", str(into / "app"), str(then), "--progress", "none")
    assert again.code == 2 and "--force" in again.err and (then / "vd1.qcow2").read_bytes() == before


def test_boot_check_of_a_whole_vm_boots_every_disk_in_order_with_its_uefi_variables(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M", extra_args=whole_vm_args(tmp_path / "files"))
    into = tmp_path / "b"
    assert backup(cli, [str(vm.qmp_path)], into).code == 0
    code = tmp_path / "files" / "code.fd"
    no_code = cli("restore", str(into), str(tmp_path / "r0"), "--boot-check", "--boot-timeout", "5",
                  "--progress", "none")
    assert no_code.code == 2 and "firmware's code" in no_code.err
    monitor = tmp_path / "drill.sock"
    drill = cli.popen("restore", str(into), str(tmp_path / "r"), "--progress", "none", "--boot-check",
                      "--boot-timeout", "30", "--qemu-arg=-M", "--qemu-arg=pc", "--qemu-arg=-accel", "--qemu-arg=tcg",
                      "--qemu-arg=-S", "--qemu-arg=-drive", f"--qemu-arg=if=pflash,format=raw,readonly=on,file={code}",
                      "--qemu-arg=-qmp", f"--qemu-arg=unix:{monitor},server=on,wait=off")
    try:
        wait_for(lambda: monitor.exists() or drill.poll() is not None, "the drill's QEMU", 30)
        assert drill.poll() is None, drill.communicate()
        with RawQmp(monitor) as qmp:
            disks = {entry["device"]: entry["inserted"] for entry in qmp.cmd("query-block") if "inserted" in entry}
    finally:
        drill.kill()
        drill.communicate()

    def bottom(image: dict) -> str:
        while "backing-image" in image:
            image = image["backing-image"]
        return Path(image["filename"]).name

    assert {name: bottom(inserted["image"]) for name, inserted in disks.items()} == {
        "restored": "vd0.qcow2", "restored1": "vd1.qcow2", "pflash0": "code.fd", "pflash1": "pflash1.qcow2"}
    assert disks["pflash0"]["ro"] and not disks["pflash1"]["ro"]


def test_a_uefi_vm_keeps_its_disk_chain_across_a_restart_and_starts_a_new_small_one_for_its_variables(
        cli, vm_factory, tmp_path):
    """Real OVMF: the variables are backed up with the disk (the code is skipped), a firmware write is in the next
    incremental, a restart of QEMU starts a new chain for the variables only, and restore gives them back."""
    files = tmp_path / "files"
    files.mkdir()
    disk, variables = make_image(files / "disk.qcow2", size="16M"), files / "vars.fd"
    args = [*uefi_args(variables), "-blockdev", f"driver=qcow2,node-name=disk0,file.driver=file,file.filename={disk}",
            "-device", "virtio-blk-pci,drive=disk0,id=vd0"]
    vm = vm_factory(qemu_args_disk=False, extra_args=args)
    hmp(vm, f'qemu-io -d /machine/peripheral/vd0/virtio-backend "write -P 0x11 0 {MiB}"')
    flush(vm)
    into = tmp_path / "nightly"
    first = backup(cli, [str(vm.qmp_path)], into)
    assert first.code == 0, first
    reply = json.loads(first.out)["return"]
    disks = {disk["device"]: disk for disk in reply["disks"]}
    assert {name: disk["level"] for name, disk in disks.items()} == {"vd0": "full", "pflash1": "full"}
    assert "memory" in disks["pflash1"]["note"]
    assert [(item["device"], "firmware" in item["reason"]) for item in reply["skipped"]] == [("pflash0", True)]

    written = run_firmware_until_it_writes(vm, variables)  # OVMF's boot entries; the VM is paused again
    hmp(vm, f'qemu-io -d /machine/peripheral/vd0/virtio-backend "write -P 0x22 {2 * MiB} {MiB}"')
    flush(vm)
    second = backup(cli, [str(vm.qmp_path)], into)
    assert second.code == 0, second
    levels = {disk["device"]: disk for disk in json.loads(second.out)["return"]["disks"]}
    assert levels["vd0"]["level"] == "incremental" and levels["vd0"]["bytes"] == MiB
    assert levels["pflash1"]["level"] == "incremental" and 0 < levels["pflash1"]["bytes"] < len(written)

    with vm.check() as qmp:  # a clean quit: the disk's persistent bitmap is stored in its qcow2 file
        qmp.cmd("quit")
    vm.proc.wait(timeout=30)
    again = vm_factory(qemu_args_disk=False, extra_args=args)
    third = backup(cli, [str(again.qmp_path)], into)
    assert third.code == 0, third
    after = {disk["device"]: disk for disk in json.loads(third.out)["return"]["disks"]}
    assert (after["vd0"]["level"], after["vd0"]["chain"]) == ("incremental", disks["vd0"]["chain"])
    assert after["pflash1"]["level"] == "full" and after["pflash1"]["chain"] != disks["pflash1"]["chain"]
    assert "memory only" in after["pflash1"]["reason"] and "restarted" in after["pflash1"]["reason"]

    def restored(name: str, *where: str) -> Path:
        result = cli("restore", str(into), str(tmp_path / name), "--format", "raw", "--progress", "none", *where)
        assert result.code == 0, result
        assert sorted(Path(disk["target"]).name for disk in json.loads(result.out)["return"]["disks"]) == [
            "pflash1.raw", "vd0.raw"]
        return tmp_path / name

    at_first, at_second = (restored(name, "--at", started_times(disks["vd0"]["chain"])[index])
                           for name, index in (("first", 0), ("second", 1)))
    assert (at_first / "pflash1.raw").read_bytes() == OVMF_VARS.read_bytes()
    assert (at_second / "pflash1.raw").read_bytes() == written
    assert reads_pattern(at_second / "vd0.raw", 0x22, 2 * MiB, MiB)
    assert not reads_pattern(at_first / "vd0.raw", 0x22, 2 * MiB, MiB)
    latest = restored("latest")
    assert (latest / "pflash1.raw").read_bytes() == written == variables.read_bytes()


def test_a_tpm_is_named_as_skipped(cli, vm_factory, tmp_path):
    if shutil.which("swtpm") is None:
        pytest.skip("swtpm is not installed (run tests/setup-host)")
    state = tmp_path / "tpm"
    state.mkdir()
    control = state / "swtpm.sock"
    swtpm = subprocess.Popen(["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}", "--ctrl",
                              f"type=unixio,path={control}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(control.exists, "swtpm's control socket", 10)
        vm = vm_factory(disk_size="16M", extra_args=["-chardev", f"socket,id=chrtpm,path={control}",
                                                     "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
                                                     "-device", "tpm-tis,tpmdev=tpm0"])
        result = backup(cli, [str(vm.qmp_path)], tmp_path / "b")
        assert result.code == 0, result
        reply = json.loads(result.out)["return"]
        assert [disk["device"] for disk in reply["disks"]] == ["vd0"]
        assert [item["device"] for item in reply["skipped"]] == ["tpm0"]
        assert "swtpm" in reply["skipped"][0]["reason"]
    finally:
        swtpm.kill()
        swtpm.wait()


def test_two_vms_of_one_name_are_not_mixed_in_one_folder(cli, vm_factory, tmp_path):
    for _ in range(2):
        vm_factory(disk_size="16M", extra_args=["-name", "twin"])
    result = backup(cli, [str(tmp_path / "vm*" / "qmp.sock")], tmp_path / "b")
    assert result.code == 2, result
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert [line.get("exit", 0) for line in lines] == [0, 2] or [line.get("exit", 0) for line in lines] == [2, 0]
    refused = next(line for line in lines if "error" in line)
    assert "also named 'twin'" in refused["error"]["desc"]
    assert len(list((tmp_path / "b" / "twin").glob("2*"))) == 1


def test_disks_without_a_device_id_are_named_by_their_node(cli, vm_factory, tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    extra = []
    for number in (1, 2):
        image = make_image(files / f"anon{number}.qcow2", size="8M")
        extra += ["-blockdev", f"driver=qcow2,node-name=anon{number},file.driver=file,file.filename={image}",
                  "-device", f"virtio-blk-pci,drive=anon{number}"]
    vm = vm_factory(disk_size="16M", extra_args=extra)
    result = backup(cli, [str(vm.qmp_path)], tmp_path / "b")
    assert result.code == 0, result
    assert sorted(disk["device"] for disk in json.loads(result.out)["return"]["disks"]) == ["anon1", "anon2", "vd0"]
    again = backup(cli, [str(vm.qmp_path)], tmp_path / "b")
    assert again.code == 0, again
    assert {disk["level"] for disk in json.loads(again.out)["return"]["disks"]} == {"incremental"}


def test_metrics_of_one_vm_count_a_failed_run_too(cli, vm_factory, tmp_path):
    vm = vm_factory(disk_size="16M", extra_args=["-name", "solo"])
    into, prom = tmp_path / "b", tmp_path / "solo.prom"
    done = backup(cli, [str(vm.qmp_path)], into, "vd0", "--metrics", str(prom))
    assert done.code == 0, done
    chain = Path(json.loads(done.out)["return"]["chain"])
    (chain / "chain.json").write_text("{broken")
    failed = backup(cli, [str(vm.qmp_path)], into, "vd0", "--metrics", str(prom))
    assert failed.code == 6, failed
    samples = read_metrics(prom)
    assert sample(samples, "failures_total", vm="solo") == 1 and sample(samples, "last_run_exit_code", vm="solo") == 6
    assert sample(samples, "chain_length", vm="solo", device="vd0") == 1
    assert sample(samples, "last_level", vm="solo", device="vd0", level="full") == 1


def test_a_fleets_agent_pattern_reaches_each_vms_own_agent(cli, vm_factory, tmp_path, qemu_build):
    # The host's own qemu-ga must never freeze the host: it refuses the freeze, so --freeze-try backs up
    # unfrozen and says which agent answered. A VM without an agent names the socket the pattern gave it.
    from support.qga import HostAgent

    alpha, _ = (vm_factory(disk_size="16M", extra_args=["-name", name]) for name in ("alpha", "beta"))
    agent = HostAgent(tmp_path / "agents" / "alpha", block=["guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list"],
                      binary=qemu_build.qemu_ga).start()
    try:
        pattern = str(tmp_path / "agents" / "{vm}" / "qga.sock")
        result = backup(cli, [str(tmp_path / "vm*" / "qmp.sock")], tmp_path / "b", "--freeze-try", "-a", pattern)
        assert result.code == 0, result
        freeze = {line["return"]["vm"]: line["return"]["freeze"] for line in map(json.loads, result.out.splitlines())}
        assert freeze["alpha"]["frozen"] is False and "did not freeze" in freeze["alpha"]["reason"]
        assert "disabled" in freeze["alpha"]["reason"]
        assert freeze["beta"]["frozen"] is False
        assert str(tmp_path / "agents" / "beta" / "qga.sock") in freeze["beta"]["reason"]
        assert "cannot be reached" in freeze["beta"]["reason"]
        one = backup(cli, [str(tmp_path / "vm*" / "qmp.sock")], tmp_path / "c", "--freeze", "-a", str(agent.path))
        assert one.code == 2 and "{vm}" in one.err and not (tmp_path / "c").exists(), one
        single = backup(cli, [str(alpha.qmp_path)], tmp_path / "d", "--freeze-try", "-a", pattern)
        assert single.code == 0, single
        assert "disabled" in json.loads(single.out)["return"]["freeze"]["reason"], single
    finally:
        agent.stop()
