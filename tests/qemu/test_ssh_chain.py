"""Backup chains of a VM reached over ssh://: DIR is on the VM's host, and qmpctl works there through SSH.

The "remote host" is this machine, so a test could pass while qmpctl quietly
used the local file system. It cannot here: qmpctl runs in a mount namespace
of its own (``unshare -m``) where the host's folder (the VM, its DIRs) is an
empty tmpfs, so only sshd and QEMU, outside it, see those files; the tests
check them directly. sshd's log counts the remote commands of a run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from support.disks import flush, hmp, images_identical, make_image, wait_for_job, write_pattern
from support.qemu import QemuVM
from support.runner import CliRunner
from support.sshd import Sshd, sshd  # noqa: F401  (a fixture)
from support.waits import wait_for

pytestmark = [pytest.mark.qemu, pytest.mark.one_qemu]

MiB = 1 << 20
HIDE = 'mount -t tmpfs -o size=1m qmpctl-admin "$1" && shift && exec "$@"'


class AdminCli(CliRunner):
    """qmpctl in a private mount namespace where ``hidden`` (the VM host's folder) is an empty tmpfs."""

    def __init__(self, cwd: Path, hidden: Path) -> None:
        super().__init__(cwd)
        self.hidden = hidden

    def argv(self, *args: str | bytes) -> list[str | bytes]:
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", HIDE, "sh", str(self.hidden),
                *super().argv(*args)]


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The VM host's folder: the VM and the chain folders; qmpctl cannot see into it."""
    folder = tmp_path_factory.mktemp("hv")
    (folder / "seen").touch()
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", HIDE, "sh", str(folder),
                            "ls", "-A", str(folder)], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"a private mount namespace (unshare -m, root) is not available: {probe.stderr.strip()}")
    assert probe.stdout == "", "the tmpfs did not hide the host's folder"
    (folder / "seen").unlink()
    return folder


@pytest.fixture(scope="module")
def hv(host: Path) -> Iterator[QemuVM]:
    """One VM for the module, on the host: vd0, and vd1 for the several-disks run."""
    (host / "vm").mkdir()
    second = make_image(host / "vm" / "disk1.qcow2", "qcow2", "16M")
    vm = QemuVM(host / "vm", disk_size="32M", extra_args=[
        "-blockdev", f"driver=qcow2,node-name=disk1,file.driver=file,file.filename={second}",
        "-device", "virtio-blk-pci,drive=disk1,id=vd1"])
    vm.start()
    yield vm
    vm.kill()


@pytest.fixture
def admin(host: Path, tmp_path: Path) -> AdminCli:
    return AdminCli(tmp_path, host)


def run(admin: AdminCli, sshd: Sshd, vm: QemuVM, into: Path | str, *arguments: str):
    result = admin("backup", "-s", sshd.url(vm.qmp_path), "vd0", "--into", str(into), "--progress", "none",
                   *arguments, env=sshd.env())
    sshd.wait_all_closed()  # the master and the lock's channel end with qmpctl
    return result


def ok(admin: AdminCli, sshd: Sshd, vm: QemuVM, into: Path, *arguments: str) -> dict:
    result = run(admin, sshd, vm, into, *arguments)
    assert result.code == 0, result
    return json.loads(result.out)["return"]


def popen(admin: AdminCli, sshd: Sshd, vm: QemuVM, into: Path, *arguments: str) -> subprocess.Popen:
    return admin.popen("backup", "-s", sshd.url(vm.qmp_path), "vd0", "--into", str(into), "--progress", "none",
                       *arguments, env=sshd.env())


def manifest(chain: str | Path) -> dict:
    return json.loads((Path(chain) / "chain.json").read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def state(vm: QemuVM) -> tuple[list, list[str]]:
    """Jobs, and block nodes a chain run adds: both must be gone after any run."""
    with vm.check() as qmp:
        nodes = [node["node-name"] for node in qmp.cmd("query-named-block-nodes")
                 if node["node-name"].startswith("chain-")]
        return qmp.cmd("query-jobs"), nodes


def test_qmpctl_cannot_see_the_host_folder(admin, host, hv):
    """The proof the other tests rest on: a local path in the host's folder is not there for qmpctl."""
    result = admin("backup", "-s", str(hv.qmp_path), "vd0", "--into", str(host / "b0"))
    assert result.code == 3 and f"{hv.qmp_path}" in result.err, result  # the socket is not there either
    assert not (host / "b0").exists()


def test_full_then_incremental_on_the_host(cli, admin, sshd, hv, host, tmp_path):
    into = host / "b1"
    write_pattern(hv, [(0x11, 0, MiB)])
    before = sshd.commands()
    full = ok(admin, sshd, hv, into)
    full_commands = sshd.commands() - before
    assert full["level"] == "full" and full["host"] == sshd.destination
    assert f"in {into} on {sshd.destination} yet" in full["reason"]
    chain = Path(full["chain"])
    assert chain.parent == into and full["image"] == str(chain / "0001-full.qcow2")
    write_pattern(hv, [(0x77, 20 * MiB, MiB)])
    before = sshd.commands()
    incremental = ok(admin, sshd, hv, into)
    incremental_commands = sshd.commands() - before
    assert (incremental["level"], incremental["chain"], incremental["bytes"]) == ("incremental", str(chain), MiB)
    assert incremental["image"] == str(chain / "0002-inc.qcow2")
    listed = manifest(chain)
    assert [image["file"] for image in listed["images"]] == ["0001-full.qcow2", "0002-inc.qcow2"]
    for image in listed["images"]:  # what qmpctl measured on the host is what the files hold
        assert (image["sha256"], image["size"]) == (sha256(chain / image["file"]),
                                                    (chain / image["file"]).stat().st_size)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output", "json", str(chain / "0002-inc.qcow2")],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["backing-filename"] == "0001-full.qcow2" and info["backing-filename-format"] == "qcow2"
    assert sorted(path.name for path in into.iterdir()) == [".vd0.lock", chain.name]
    verify = cli("backup-verify", str(into), "--json")  # offline, on this (the host's) side
    assert verify.code == 0, verify
    restored = tmp_path / "r.qcow2"
    assert cli("restore", str(chain), str(restored), "--progress", "none").code == 0
    assert images_identical(hv.disk, restored).returncode == 0
    assert state(hv) == ([], [])
    assert (full_commands, incremental_commands) == (4, 4)  # lock and list, create, measure, manifest


def test_several_disks_cost_one_more_remote_command_each_for_its_manifest(admin, sshd, hv, host):
    into = host / "b7"

    def both() -> list[dict]:
        before = sshd.commands()
        result = admin("backup", "-s", sshd.url(hv.qmp_path), "vd0", "vd1", "--into", str(into), "--progress",
                       "none", env=sshd.env())
        sshd.wait_all_closed()
        assert result.code == 0, result
        assert sshd.commands() - before == 5  # the scripts take every disk at once, but one manifest each
        return json.loads(result.out)["return"]["disks"]

    assert [(disk["level"], disk["host"]) for disk in both()] == [("full", sshd.destination)] * 2
    write_pattern(hv, [(0x21, 0, MiB)])
    hmp(hv, 'qemu-io -d /machine/peripheral/vd1/virtio-backend "write -P 0x22 1M 1M"')
    flush(hv, "/machine/peripheral/vd1/virtio-backend")
    disks = both()
    assert [(disk["device"], disk["level"], disk["bytes"]) for disk in disks] == [
        ("vd0", "incremental", MiB), ("vd1", "incremental", MiB)]
    for disk in disks:
        chain = Path(disk["chain"])
        assert [image["sha256"] for image in manifest(chain)["images"]] == [
            sha256(chain / name) for name in ("0001-full.qcow2", "0002-inc.qcow2")]
    assert sorted(path.name for path in into.iterdir() if not path.is_dir()) == [".vd0.lock", ".vd1.lock"]


def test_full_keep_chains_deletes_old_chains_on_the_host(admin, sshd, hv, host):
    into = host / "b2"
    chains = [ok(admin, sshd, hv, into, "--full", "--keep-chains", "1")["chain"] for _ in range(2)]
    assert chains[0] != chains[1]
    assert sorted(path.name for path in into.iterdir() if path.is_dir()) == [Path(chains[1]).name]


def test_an_image_left_in_the_chain_is_never_overwritten(admin, sshd, hv, host):
    into = host / "b3"
    full = ok(admin, sshd, hv, into)
    stray = Path(full["chain"]) / "0002-inc.qcow2"
    stray.write_bytes(b"precious")
    again = ok(admin, sshd, hv, into)
    assert again["level"] == "full" and "not in the chain's manifest" in again["reason"]
    assert f"{stray} on {sshd.destination}" in again["reason"]
    assert stray.read_bytes() == b"precious"


def test_a_killed_first_run_is_removed_on_the_host_and_nothing_else(admin, sshd, hv, host):
    """Only a folder with qmpctl's marker of this disk and no manifest goes; another disk's and a stranger's stay."""
    into = host / "b4"
    for name, marker in (("20200101T000000Z", "vd0\nthe first run\n"), ("20200101T000001Z", "vd9\n"),
                         ("20200101T000002Z", None)):
        (into / name).mkdir(parents=True)
        (into / name / "0001-full.qcow2").write_bytes(b"x")
        if marker is not None:
            (into / name / ".qmpctl-new-chain").write_text(marker)
    full = ok(admin, sshd, hv, into)
    assert full["level"] == "full"
    assert sorted(path.name for path in into.iterdir() if path.is_dir()) == [
        "20200101T000001Z", "20200101T000002Z", Path(full["chain"]).name]
    assert any("killed before it wrote" in warning for warning in full["warnings"]), full
    assert sorted(path.name for path in Path(full["chain"]).iterdir()) == ["0001-full.qcow2", "chain.json"]


@pytest.fixture
def remote_folder(sshd, host, monkeypatch):
    """The library's view of a folder on the host, reached through the test sshd (for what a run cannot show)."""
    from qmpctl.wire.address import SshHost
    from qmpctl.backup.remote_folder import RemoteFolder
    from qmpctl.wire import ssh
    from qmpctl.wire.ssh import RemoteFiles, close_all

    monkeypatch.setenv("QMPCTL_SSH", sshd.env()["QMPCTL_SSH"])
    user, address = sshd.destination.split("@")
    name, port = address.split(":")
    folder = Path(tempfile.mkdtemp(prefix="lib-", dir=host))
    yield RemoteFolder(str(folder), RemoteFiles(SshHost(name, user, int(port))))
    close_all()  # as at qmpctl's exit; this process goes on, and the next test may start ssh again
    ssh._closing.clear()


def test_the_hosts_exclusive_create_refuses_any_existing_name(remote_folder, sshd):
    """Between the listing and the creation a file may appear: the creation itself refuses it."""
    from qmpctl.backup.folder import NewImage
    from qmpctl.deadline import Deadline
    from qmpctl.errors import UsageError

    folder = Path(remote_folder.into)
    (folder / "taken.qcow2").write_bytes(b"precious")
    (folder / "dangling.qcow2").symlink_to(folder / "nowhere")
    for name in ("taken.qcow2", "dangling.qcow2"):
        image = NewImage(str(folder), str(folder / name), MiB, None, make_dir=False)
        with pytest.raises(UsageError, match=f"{name} on {sshd.destination} exists"):
            remote_folder.create([image], Deadline(10))
        assert not image.created
    assert (folder / "taken.qcow2").read_bytes() == b"precious" and not (folder / "nowhere").exists()


def test_a_manifest_cut_on_the_way_never_replaces_the_whole_one(remote_folder):
    """stdin also ends when qmpctl or the connection dies: the host checks the length before the rename."""
    from qmpctl.backup.remote_folder import MANIFEST_SCRIPT
    from qmpctl.deadline import Deadline
    from qmpctl.wire.schema import load_schema

    folder = Path(remote_folder.into)
    (folder / "chain.json").write_text('{"images": []}\n')
    cut = remote_folder.master.run(MANIFEST_SCRIPT, [str(folder), "100"], Deadline(10), "write", b'{"ima')
    assert cut.returncode == 1 and b"did not arrive whole" in cut.stderr
    assert (folder / "chain.json").read_text() == '{"images": []}\n' and os.listdir(folder) == ["chain.json"]
    whole = load_schema("chain")["examples"][0]  # a manifest that does not match its schema is never written
    remote_folder.write_manifest(str(folder), whole, Deadline(10))
    assert manifest(folder) == whole


def test_a_held_lock_is_busy_and_a_killed_run_lets_it_go(cli, admin, sshd, hv, host):
    into = host / "b5"
    into.mkdir()
    with open(into / ".vd0.lock", "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        refused = run(admin, sshd, hv, into)
    assert refused.code == 4, refused
    assert f"busy: another qmpctl is backing up vd0 into {into} on {sshd.destination}" in refused.err
    assert [path.name for path in into.iterdir()] == [".vd0.lock"]
    with open(into / ".vd1.lock", "a+b") as held:  # of two disks, the message names the one that is busy
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        refused = admin("backup", "-s", sshd.url(hv.qmp_path), "vd0", "vd1", "--into", str(into), env=sshd.env())
    assert refused.code == 4 and f"(it holds {into}/.vd1.lock)" in refused.err, refused
    own_tmp = Path(tempfile.mkdtemp(prefix="qssh-", dir="/tmp"))  # short: ssh's sockets go there
    child = admin.popen("backup", "-s", sshd.url(hv.qmp_path), "vd0", "--into", str(into), "--speed", "64K",
                        env={**sshd.env(), "TMPDIR": str(own_tmp)})
    job = wait_for_job(hv, "running")
    child.kill()  # SIGKILL: no cleanup at all; the SSH channel holding the lock closes with the process
    child.wait(timeout=10)

    def free() -> bool:
        with open(into / ".vd0.lock", "a+b") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

    wait_for(free, "the killed run's lock on the host to be released")
    cancelled = cli("jobs", "-s", sshd.url(hv.qmp_path), "--cancel", job["id"], env=sshd.env())
    assert cancelled.code == 0, cancelled
    for control in own_tmp.glob("qmpctl-ssh-*/m*[0-9]"):  # the killed qmpctl's master, rather than 15 s idle
        subprocess.run(["ssh", "-S", str(control), "-O", "exit", "hv"], capture_output=True)
    shutil.rmtree(own_tmp)
    sshd.wait_all_closed()
    assert state(hv) == ([], [])


def test_sigterm_during_the_job_takes_everything_back_on_the_host(admin, sshd, hv, host):
    into = host / "b6"
    full = ok(admin, sshd, hv, into)
    chain = Path(full["chain"])
    before = (chain / "chain.json").read_bytes()
    write_pattern(hv, [(0x3C, 8 * MiB, 2 * MiB)])
    child = popen(admin, sshd, hv, into, "--speed", "64K")
    wait_for_job(hv, "running")
    # A second qmpctl on the same disk and DIR (through the VM's other monitor: QEMU serves one client on
    # each): the lock on the host says no, before anything is sent.
    second = admin("backup", "-s", sshd.url(hv.qmp2_path), "vd0", "--into", str(into), env=sshd.env())
    assert second.code == 4 and "another qmpctl" in second.err, second
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 130, err
    assert f"removed the incomplete {chain}/0002-inc.qcow2 on {sshd.destination}".encode() in err
    sshd.wait_all_closed()
    assert state(hv) == ([], [])
    assert sorted(path.name for path in chain.iterdir()) == ["0001-full.qcow2", "chain.json"]
    assert (chain / "chain.json").read_bytes() == before
    assert ok(admin, sshd, hv, into)["bytes"] == 2 * MiB  # the bitmap kept every change


def test_a_missing_parent_on_the_host_is_exit_2_naming_it(admin, sshd, hv, host):
    into = host / "no" / "b"
    result = run(admin, sshd, hv, into)
    assert result.code == 2, result
    assert result.err == (f"qmpctl: --into {into} on {sshd.destination}: the directory {into.parent} "
                          "does not exist\n")
    assert not (host / "no").exists() and state(hv) == ([], [])


def test_a_relative_dir_and_a_dry_run_connect_to_nothing(admin, sshd, hv):
    before = sshd.accepted()
    relative = run(admin, sshd, hv, "backups")
    assert relative.code == 2 and f"give an absolute path on {sshd.destination}" in relative.err, relative
    dry = admin("backup", "--dry-run", "-s", sshd.url(hv.qmp_path), "vd0", "--into", "/srv/backups",
                env=sshd.env())
    assert dry.code == 0, dry
    shown = json.loads(dry.out)
    assert [action["type"] for action in shown["plan"][0]["arguments"]["actions"]] == [
        "block-dirty-bitmap-add", "blockdev-backup"]
    assert f"DIR is on {sshd.destination}, worked on over SSH" in shown["note"]
    assert sshd.accepted() == before
    tcp = admin("backup", "-s", "tcp:192.0.2.1:4444", "vd0", "--into", "/srv/backups")  # refused before connecting
    assert tcp.code == 2 and "on this host or reached over ssh://" in tcp.err, tcp


# -- links planted in DIR on the host: refused, never followed ------------------------------------------

PRECIOUS = b"root's file on the host, not qmpctl's to write\n"


def planted(host: Path, name: str) -> Path:
    aim = host / name
    aim.write_bytes(PRECIOUS)
    return aim


def listing(path: Path) -> dict[str, bytes | str]:
    return {str(entry.relative_to(path)): os.readlink(entry) if entry.is_symlink()
            else entry.read_bytes() if entry.is_file() else "dir" for entry in sorted(path.rglob("*"))}


@pytest.mark.parametrize("target", ["missing", "existing"])
def test_a_link_planted_as_the_lock_file_on_the_host_is_refused(admin, sshd, hv, host, target):
    into = host / f"l1-{target}"
    into.mkdir()
    aim = planted(host, f"victim-l1-{target}") if target == "existing" else host / f"created-by-root-{target}"
    (into / ".vd0.lock").symlink_to(aim)
    result = run(admin, sshd, hv, into)
    assert result.code == 6 and f"{into}/.vd0.lock on {sshd.destination} is a symbolic link" in result.err, result
    assert (aim.read_bytes() == PRECIOUS) if target == "existing" else not aim.exists()
    assert sorted(path.name for path in into.iterdir()) == [".vd0.lock"] and state(hv) == ([], [])


def test_a_link_planted_in_a_chain_on_the_host_is_refused(admin, sshd, hv, host):
    into = host / "l2"
    chain = Path(ok(admin, sshd, hv, into)["chain"])
    aim = planted(host, "victim-l2")
    (chain / "0002-inc.qcow2").symlink_to(aim)
    before = listing(into)
    result = run(admin, sshd, hv, into)
    assert result.code == 6 and f"0002-inc.qcow2 on {sshd.destination} is a symbolic link in a chain folder" \
        in result.err, result
    assert listing(into) == before and aim.read_bytes() == PRECIOUS and state(hv) == ([], [])


def test_a_chain_folder_replaced_by_a_link_on_the_host_is_refused(admin, sshd, hv, host):
    into = host / "l3"
    chain = Path(ok(admin, sshd, hv, into)["chain"])
    elsewhere = host / "l3-elsewhere"
    chain.rename(elsewhere)
    chain.symlink_to(elsewhere)
    before = listing(elsewhere)
    result = run(admin, sshd, hv, into)
    assert result.code == 6 and f"{chain} on {sshd.destination} is a symbolic link to a folder" in result.err, result
    assert listing(elsewhere) == before and state(hv) == ([], [])


def test_dir_as_a_link_on_the_host_is_refused(admin, sshd, hv, host):
    real = host / "l4-real"
    real.mkdir()
    (host / "l4").symlink_to(real)
    result = run(admin, sshd, hv, host / "l4")
    assert result.code == 6 and f"{host / 'l4'} on {sshd.destination} is a symbolic link" in result.err, result
    assert list(real.iterdir()) == []


def test_a_chain_folder_of_another_user_on_the_host_is_refused(admin, sshd, hv, host):
    into = host / "l5"
    chain = Path(ok(admin, sshd, hv, into)["chain"])
    os.chown(chain, 12345, 12345)
    before = listing(into)
    result = run(admin, sshd, hv, into)
    assert result.code == 6 and f"{chain} on {sshd.destination} belongs to user 12345" in result.err, result
    assert listing(into) == before


def test_the_hosts_scripts_write_nothing_through_links_planted_in_the_race(remote_folder, host):
    """What a run cannot show: links planted between the listing and the write."""
    from qmpctl.backup.folder import NewImage
    from qmpctl.deadline import Deadline
    from qmpctl.errors import VerificationFailed
    from qmpctl.wire.schema import load_schema

    folder = Path(remote_folder.into)
    aim = planted(host, f"victim-{folder.name}")
    elsewhere = folder / "elsewhere"
    elsewhere.mkdir()
    (folder / "c").symlink_to(elsewhere)  # the chain folder, swapped for a link after the listing
    image = NewImage(str(folder / "c"), str(folder / "c" / "0001-full.qcow2"), MiB, None, make_dir=False)
    with pytest.raises(VerificationFailed, match=f"{folder}/c is a symbolic link, not a folder"):
        remote_folder.create([image], Deadline(10))
    whole = load_schema("chain")["examples"][0]
    with pytest.raises(VerificationFailed, match=f"{folder}/c is a symbolic link, not a folder"):
        remote_folder.write_manifest(str(folder / "c"), whole, Deadline(10))
    with pytest.raises(VerificationFailed, match=f"{folder}/c is a symbolic link, not a folder"):
        remote_folder.measure([str(folder / "c" / "0001-full.qcow2")], Deadline(10))
    assert list(elsewhere.iterdir()) == []
    chain = folder / "d"
    chain.mkdir()
    (chain / "chain.json").symlink_to(aim)  # the manifest is renamed over the link, never written through it
    (chain / "0001-full.qcow2").symlink_to(aim)
    remote_folder.write_manifest(str(chain), whole, Deadline(10))
    assert manifest(chain) == whole and not (chain / "chain.json").is_symlink()
    with pytest.raises(VerificationFailed, match="0001-full.qcow2 is a symbolic link or not a regular file"):
        remote_folder.measure([str(chain / "0001-full.qcow2")], Deadline(10))
    assert aim.read_bytes() == PRECIOUS
    assert sorted(path.name for path in chain.iterdir()) == ["0001-full.qcow2", "chain.json"]  # no temp left


def test_a_fleet_on_the_host_backs_up_each_vm_into_its_folder_there(admin, sshd, host):
    """An ssh:// glob: every VM on the host, each into DIR/<vm>/ there; one that fails stops none."""
    started = []
    try:
        for name in ("alpha", "beta", "gamma"):
            vm = QemuVM(host / f"fleet-{name}", disk_size="16M", extra_args=["-name", name])
            vm.start()
            started.append(vm)
        started[1].kill()  # beta is down: its line says so, the others are backed up
        into = host / "nightly"
        into.mkdir()
        result = admin("backup", "-s", sshd.url(host / "fleet-*" / "qmp.sock"), "--into", str(into),
                       "--progress", "none", env=sshd.env())
        sshd.wait_all_closed()
        assert result.code == 3, result
        lines = [json.loads(line) for line in result.out.splitlines()]
        assert [line.get("return", {}).get("vm") for line in lines] == ["alpha", None, "gamma"]
        assert lines[1]["exit"] == 3
        for line in (lines[0], lines[2]):
            disk = line["return"]["disks"][0]
            assert disk["host"] == sshd.destination and disk["level"] == "full"
            assert Path(disk["chain"]).parent == into / line["return"]["vm"]
            assert manifest(disk["chain"])["images"][0]["sha256"] == sha256(Path(disk["image"]))
        assert sorted(path.name for path in into.iterdir()) == ["alpha", "gamma"]
    finally:
        for vm in started:
            vm.kill()
