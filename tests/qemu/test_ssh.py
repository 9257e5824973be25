"""VMs on "another host": ssh:// addresses through a real OpenSSH server on 127.0.0.1.

The sshd (tests/support/sshd.py) has its own port, throw-away keys and
known_hosts; qmpctl reaches it with ``QMPCTL_SSH="ssh -F CONFIG"``. Behind it
are real QEMUs, a real qemu-ga, and real files: the remote host is this
machine, so tests check results on the file system directly. Connections are
counted in sshd's log: a fleet on one host is one SSH login.
"""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path
from typing import Iterator

import pytest

from support.disks import jobs, wait_for_job
from support.qemu import QemuVM
from support.qga import HostAgent, have_qemu_ga
from support.sshd import Sshd, sshd  # noqa: F401  (a fixture)
from support.waits import wait_for

pytestmark = pytest.mark.qemu

FLEET = 4


@pytest.fixture(scope="module")
def vms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[QemuVM]]:
    """A small fleet in one folder, as a hypervisor keeps its monitors (/run/qemu/*.qmp)."""
    folder = tmp_path_factory.mktemp("hv")
    started = []
    try:
        for number in range(FLEET):
            vm = QemuVM(folder / f"vm{number}")
            vm.start()
            started.append(vm)
        yield started
    finally:
        for vm in started:
            vm.kill()


def ssh_cli(cli, sshd: Sshd, *args: str, config: Path | None = None, **kwargs):
    result = cli(*args, env=sshd.env(config), **kwargs)
    sshd.wait_all_closed()  # qmpctl stopped its master connection on the way out
    return result


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A TMPDIR short enough that qmpctl keeps its sockets there, so a test can look at them."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="qssh-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_status_over_ssh_leaves_nothing_behind(cli, sshd, vms, short_tmp):
    own_tmp = short_tmp
    result = cli("status", "-s", sshd.url(vms[0].qmp_path), env={**sshd.env(), "TMPDIR": str(own_tmp)})
    assert result.code == 0, result
    assert json.loads(result.out)["return"]["status"] == "prelaunch"
    with vms[0].check() as qmp:
        assert qmp.cmd("query-status")["status"] == "prelaunch"
    sshd.wait_all_closed()  # the master connection was told to exit
    assert list(own_tmp.iterdir()) == []  # its ControlPath folder and forwarded sockets are gone


def test_a_long_tmpdir_still_leaves_room_for_the_socket_paths(cli, sshd, vms, tmp_path):
    """A test runner's or CI job's TMPDIR can be long: ssh must still be able to bind its control socket."""
    long_tmp = tmp_path / ("t" * 60) / ("u" * 40)
    long_tmp.mkdir(parents=True)
    result = cli("status", "-s", sshd.url(vms[0].qmp_path), env={**sshd.env(), "TMPDIR": str(long_tmp)})
    assert result.code == 0, result
    sshd.wait_all_closed()
    assert list(long_tmp.iterdir()) == []


def test_monitor_command_over_ssh(cli, sshd, vms):
    result = ssh_cli(cli, sshd, "monitor-command", "-s", sshd.url(vms[1].qmp_path),
                     '{"execute":"query-block"}', "--return-value")
    assert result.code == 0, result
    assert [entry["qdev"] for entry in json.loads(result.out)] == ["/machine/peripheral/vd0/virtio-backend"]
    hmp = ssh_cli(cli, sshd, "monitor-command", "-s", sshd.url(vms[1].qmp_path), "--hmp", "info", "status")
    assert hmp.code == 0 and "prelaunch" in hmp.out, hmp


def test_fleet_behind_one_host_is_one_ssh_connection(cli, sshd, vms):
    before = sshd.accepted()
    folder = vms[0].workdir.parent
    result = ssh_cli(cli, sshd, "status", "-s", sshd.url(f"{folder}/vm*/qmp.sock"))
    assert result.code == 0, result
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert [line["target"] for line in lines] == [sshd.url(vm.qmp_path) for vm in vms]
    assert all(line["return"]["status"] == "prelaunch" for line in lines)
    assert sshd.accepted() - before == 1


def test_repeated_addresses_on_one_host_share_the_connection(cli, sshd, vms):
    before = sshd.accepted()
    result = ssh_cli(cli, sshd, "status", *[arg for vm in vms for arg in ("-s", sshd.url(vm.qmp_path))])
    assert result.code == 0, result
    assert len(result.out.splitlines()) == FLEET
    assert sshd.accepted() - before == 1


def test_glob_matching_nothing_on_the_host_is_exit_3(cli, sshd, tmp_path):
    result = ssh_cli(cli, sshd, "status", "-s", sshd.url(f"{tmp_path}/none-*.sock"))
    assert result.code == 3, result
    assert "no socket matches" in result.err and sshd.destination in result.err


def test_missing_remote_socket_is_exit_3_naming_the_host(cli, sshd, tmp_path):
    result = ssh_cli(cli, sshd, "status", "-s", sshd.url(tmp_path / "gone.sock"))
    assert result.code == 3, result
    assert result.err == f"qmpctl: no such socket on {sshd.destination}: {tmp_path}/gone.sock " \
                         "(or the login user may not see it)\n"


def test_a_remote_path_that_is_no_socket(cli, sshd, tmp_path):
    result = ssh_cli(cli, sshd, "status", "-s", sshd.url(tmp_path))
    assert result.code == 3, result
    assert "is not a socket" in result.err


def test_refused_authentication_is_exit_3_at_once_without_a_prompt(cli, sshd, vms):
    before = sshd.accepted()
    result = cli("status", "--timeout", "30", "-s", sshd.url(vms[0].qmp_path),
                 env=sshd.env(sshd.wrong_key_config()))
    assert result.code == 3, result
    assert "refused the SSH authentication" in result.err and "Permission denied" in result.err
    assert len(result.err.splitlines()) == 1
    assert result.seconds < 10
    assert sshd.accepted() == before


def test_unreachable_host_is_exit_3(cli, sshd, vms):
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = cli("status", "-s", f"ssh://root@127.0.0.1:{port}{vms[0].qmp_path}", env=sshd.env())
    assert result.code == 3, result
    assert result.err == f"qmpctl: cannot reach root@127.0.0.1:{port}: connection refused (is it up, and is " \
                         "sshd on that port?)\n"


def test_unknown_host_key_is_exit_3(cli, sshd, vms, tmp_path):
    config = tmp_path / "config"
    config.write_text(sshd.config.read_text().replace(str(sshd.known_hosts), str(tmp_path / "empty")))
    result = cli("status", "-s", sshd.url(vms[0].qmp_path), env=sshd.env(config))
    assert result.code == 3, result
    assert "host key" in result.err and len(result.err.splitlines()) == 1


def test_host_that_never_answers_ssh_is_exit_4_at_the_deadline(cli, sshd, vms):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts TCP (the kernel completes the handshake) but never says a word
    port = silent.getsockname()[1]
    try:
        result = cli("status", "--timeout", "1.5", "-s", f"ssh://root@127.0.0.1:{port}{vms[0].qmp_path}",
                     env=sshd.env())
    finally:
        silent.close()
    assert result.code == 4, result
    assert "timed out after 1.5s waiting for an SSH connection" in result.err
    assert 1.5 <= result.seconds < 4.5


def test_remote_backup_is_written_on_the_host_and_never_overwrites(cli, sshd, vms):
    vm = vms[2]
    target = vm.workdir / "remote-backup.qcow2"
    result = ssh_cli(cli, sshd, "backup", "-s", sshd.url(vm.qmp_path), "vd0", str(target))
    assert result.code == 0, result
    assert json.loads(result.out)["return"]["target"] == str(target)
    assert target.exists()
    written = target.read_bytes()
    again = ssh_cli(cli, sshd, "backup", "-s", sshd.url(vm.qmp_path), "vd0", str(target))
    assert again.code == 2, again
    assert f"{target} exists on {sshd.destination}" in again.err
    assert target.read_bytes() == written
    assert jobs(vm) == []


def test_remote_backup_into_a_missing_folder_names_the_host(cli, sshd, vms, tmp_path):
    target = tmp_path / "no" / "backup.qcow2"
    result = ssh_cli(cli, sshd, "backup", "-s", sshd.url(vms[2].qmp_path), "vd0", str(target))
    assert result.code == 2, result
    assert f"{target} on {sshd.destination}: the directory" in result.err


def test_remote_backup_target_must_be_absolute_said_before_logging_in(cli, sshd, vms):
    before = sshd.accepted()
    result = ssh_cli(cli, sshd, "backup", "-s", sshd.url(vms[2].qmp_path), "vd0", "backup.qcow2")
    assert result.code == 2, result
    assert "give an absolute path: the VM runs on another host" in result.err
    assert sshd.accepted() == before


def test_hotplug_reads_the_image_on_the_host(cli, sshd, vms, tmp_path):
    import subprocess

    image = tmp_path / "data.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    vm = vms[3]
    missing = ssh_cli(cli, sshd, "hotplug-disk", "-s", sshd.url(vm.qmp_path), str(tmp_path / "none.qcow2"))
    assert missing.code == 2, missing
    assert f"no such image file on {sshd.destination}" in missing.err
    result = ssh_cli(cli, sshd, "hotplug-disk", "-s", sshd.url(vm.qmp_path), str(image), "--id", "remote0")
    assert result.code == 0, result
    with vm.check() as qmp:
        nodes = {node["node-name"]: node for node in qmp.cmd("query-named-block-nodes")}
    assert nodes["remote0-format"]["drv"] == "qcow2" and nodes["remote0-file"]["file"] == str(image)


def test_a_probed_remote_image_naming_another_file_is_refused(cli, sshd, vms, tmp_path):
    """The header is read on the host, and a qcow2 that makes QEMU open another file needs --format."""
    import subprocess

    (tmp_path / "base.raw").write_bytes(bytes(1 << 20))
    image = tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(tmp_path / "base.raw"), "-F", "raw",
                    str(image)], check=True)
    result = ssh_cli(cli, sshd, "hotplug-disk", "-s", sshd.url(vms[3].qmp_path), str(image))
    assert result.code == 2, result
    assert f"{image} on {sshd.destination} looks like a qcow2 image that makes QEMU open another file" in result.err


def test_media_insert_checks_the_file_on_the_vms_host(cli, sshd, vms, tmp_path):
    """FILE is where QEMU opens it: looked up and read on the remote host before anything is sent."""
    missing = ssh_cli(cli, sshd, "media", "insert", "-s", sshd.url(vms[3].qmp_path), "vd0", str(tmp_path / "no.iso"))
    assert missing.code == 2, missing
    assert f"no such image file on {sshd.destination}" in missing.err
    (tmp_path / "disc.iso").write_bytes(bytes(1 << 20))
    fixed = ssh_cli(cli, sshd, "media", "insert", "-s", sshd.url(vms[3].qmp_path), "vd0", str(tmp_path / "disc.iso"))
    assert fixed.code == 2, fixed  # the file passed; the VM then says vd0 is no removable drive
    assert "vd0 is not a CD-ROM or floppy drive" in fixed.err


@pytest.mark.agent
@pytest.mark.skipif(not have_qemu_ga(), reason="qemu-ga is not installed")
def test_agent_over_ssh(cli, sshd, tmp_path):
    agents = [HostAgent(tmp_path / f"qga{number}").start() for number in range(2)]
    try:
        result = ssh_cli(cli, sshd, "agent", "ping", "-a", sshd.url(agents[0].path))
        assert result.code == 0, result
        assert result.out == '{"return":{}}\n'
        info = ssh_cli(cli, sshd, "agent", "info", "-a", sshd.url(agents[0].path))
        assert info.code == 0 and json.loads(info.out)["return"]["version"], info
        before = sshd.accepted()
        fleet = ssh_cli(cli, sshd, "agent", "ping", "-a", sshd.url(f"{tmp_path}/qga*/qga.sock"))
        assert fleet.code == 0, fleet
        assert [json.loads(line)["target"] for line in fleet.out.splitlines()] == [
            sshd.url(agent.path) for agent in agents]
        assert sshd.accepted() - before == 1
    finally:
        for agent in agents:
            agent.stop()


def test_one_timeout_per_target_even_when_one_host_hangs(cli, sshd, vms):
    """A silent host costs its targets the deadline; targets on a good host answer meanwhile."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    try:
        result = ssh_cli(cli, sshd, "status", "--timeout", "2", "-s", sshd.url(vms[0].qmp_path),
                         "-s", f"ssh://root@127.0.0.1:{port}/run/vm.qmp")
    finally:
        silent.close()
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert [line.get("exit", 0) for line in lines] == [0, 4]
    assert result.code == 4


def ssh_processes(port: int) -> list[str]:
    """Command lines of ssh clients still running against ``port`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if words and words[0].endswith(b"ssh") and str(port).encode() in words:
            found.append(b" ".join(words).decode(errors="replace"))
    return found


def test_sigterm_while_logging_in_to_a_fleet_kills_every_ssh(cli, sshd, tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    try:
        # Several hosts (user names make them distinct), each logging in on its own fleet thread.
        targets = [arg for user in ("a", "b", "c") for arg in ("-s", f"ssh://{user}@127.0.0.1:{port}/run/vm.qmp")]
        proc = cli.popen("status", "--timeout", "60", *targets, env=sshd.env())
        wait_for(lambda: len(ssh_processes(port)) == 3, "three ssh logging in", pause=0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        silent.close()
    assert proc.returncode == 130, err
    assert ssh_processes(port) == []


def test_interrupted_remote_backup_cancels_the_job_and_removes_the_target_on_the_host(cli, sshd, vms):
    vm = vms[2]
    target = vm.workdir / "interrupted.qcow2"
    process = cli.popen("backup", "-s", sshd.url(vm.qmp_path), "vd0", str(target), "--speed", "1M",
                        env=sshd.env())
    wait_for_job(vm)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=15)
    assert process.returncode == 130, err
    # Cancelled while running, or taken back while being set up (the SIGINT may beat the reply): either way
    assert f"removed the incomplete {target} on {sshd.destination}".encode() in err
    assert jobs(vm) == [] and not target.exists()
    sshd.wait_all_closed()


def test_dry_run_of_a_remote_backup_connects_to_nothing(cli, sshd, vms):
    before = sshd.accepted()
    result = cli("backup", "--dry-run", "-s", sshd.url(vms[2].qmp_path), "vd0", "/var/backups/x.qcow2",
                 env=sshd.env())
    assert result.code == 0, result
    assert json.loads(result.out)["plan"][0]["arguments"]["target"] == "/var/backups/x.qcow2"
    relative = cli("backup", "--dry-run", "-s", sshd.url(vms[2].qmp_path), "vd0", "x.qcow2", env=sshd.env())
    assert relative.code == 2 and "absolute path" in relative.err, relative
    assert sshd.accepted() == before


def test_busy_remote_monitor_runs_into_the_same_deadline(cli, sshd, vms):
    """SSH login, channel and the wait for QEMU's greeting share one --timeout."""
    from support.qemu import RawQmp

    with RawQmp(vms[0].qmp_path):  # QEMU serves one client per monitor: the next one gets no greeting
        result = ssh_cli(cli, sshd, "status", "--timeout", "1.5", "-s", sshd.url(vms[0].qmp_path))
    assert result.code == 4, result
    assert "timed out after 1.5s" in result.err and "busy" in result.err
    assert 1.5 <= result.seconds < 4.5


def test_many_missing_sockets_on_one_host_are_each_diagnosed(cli, sshd, tmp_path):
    """More failures at once than sshd's MaxSessions (10): every one still gets its diagnosis."""
    targets = [arg for number in range(14) for arg in ("-s", sshd.url(tmp_path / f"gone{number}.sock"))]
    result = ssh_cli(cli, sshd, "status", "--timeout", "30", *targets)
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert len(lines) == 14
    assert all(line["exit"] == 3 and "no such socket on" in line["error"]["desc"] for line in lines), result.out


@pytest.mark.parametrize("stderr, expected", [
    ("ssh: Could not resolve hostname hv9: Name or service not known\r\n",
     "cannot reach root@hv9: unknown host name (ssh: Could not resolve hostname hv9: Name or service not known)"),
    ("ssh: connect to host hv9 port 22: No route to host\r\n",
     "cannot reach root@hv9: no route to host (is it up, and is sshd on that port?)"),
    ("kex_exchange_identification: Connection closed by remote host\r\nConnection closed by 10.0.0.9 port 22\r\n",
     "root@hv9 closed the SSH connection during the handshake (Connection closed by 10.0.0.9 port 22)"),
    ("Warning: Permanently added 'hv9' (ED25519) to the list of known hosts.\r\n"
     "root@hv9: Permission denied (publickey,password).\r\n",
     "root@hv9 refused the SSH authentication (root@hv9: Permission denied (publickey,password).)"),
    ("", "ssh to root@hv9 failed: ssh exited with 255"),
])
def test_ssh_diagnostics_are_summarised_in_one_line(stderr, expected):
    from qmpctl.wire.address import SshHost
    from qmpctl.wire.ssh import summarise

    summary = summarise(stderr, SshHost("hv9", "root"), 255)
    assert summary.startswith(expected) and "\n" not in summary


def test_a_missing_ssh_client_is_exit_3(cli, vms):
    result = cli("status", "-s", f"ssh://hv1{vms[0].qmp_path}", env={"QMPCTL_SSH": "/nonexistent/ssh"})
    assert result.code == 3, result
    assert result.err.startswith("qmpctl: cannot run /nonexistent/ssh: No such file or directory")


def test_remote_glob_and_paths_with_spaces_and_quotes(cli, sshd, vms, tmp_path):
    folder = tmp_path / "vms of 'hv1' $HOME"
    folder.mkdir()
    (folder / "web 1.sock").symlink_to(vms[0].qmp_path)
    (folder / "db*.sock").symlink_to(vms[1].qmp_path)
    result = ssh_cli(cli, sshd, "status", "-s", sshd.url(f"{folder}/*.sock"))
    assert result.code == 0, result
    assert [json.loads(line)["target"] for line in result.out.splitlines()] == [
        sshd.url(folder / "db*.sock"), sshd.url(folder / "web 1.sock")]


def test_a_lost_ssh_connection_is_told_apart_from_a_vm_that_went_away(cli, sshd, vms, short_tmp):
    import os
    import re
    import subprocess

    vm = vms[2]
    own_tmp = short_tmp
    process = cli.popen("backup", "-s", sshd.url(vm.qmp_path), "vd0", str(vm.workdir / "lost.qcow2"),
                        "--speed", "1M", env={**sshd.env(), "TMPDIR": str(own_tmp)})
    try:
        wait_for_job(vm)
        [control] = [path for path in own_tmp.glob("qmpctl-ssh-*/m*") if path.suffix != ".err"]
        check = subprocess.run(["ssh", "-S", str(control), "-O", "check", "hv"], capture_output=True, text=True)
        os.kill(int(re.search(r"pid=(\d+)", check.stderr).group(1)), signal.SIGKILL)  # the network "drops"
        _, err = process.communicate(timeout=15)
        assert process.returncode == 5, err
        assert f"the SSH connection to {sshd.destination} was lost".encode() in err
    finally:
        process.kill()
        process.wait()
        if jobs(vm):  # the job outlived the connection, as it would on a real host: end it
            with vm.check() as qmp:
                qmp.cmd("job-cancel", id="backup-vd0")
            wait_for_job(vm, status="concluded")
            with vm.check() as qmp:
                qmp.cmd("job-dismiss", id="backup-vd0")
