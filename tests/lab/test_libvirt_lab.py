"""``--domain`` agent commands against a real qemu-ga inside the lab guest, run by libvirt.

The lab guest (tests/lab) boots a Debian kernel whose initramfs runs qemu-ga
on ``org.qemu.guest_agent.0``; libvirtd owns that channel, so qmpctl reaches
the agent only through ``virDomainQemuAgentCommand``. The reference is
``virsh qemu-agent-command`` for the same domain.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import Iterator

import pytest

from support.libvirt import TestDomain, libvirtd, virsh  # noqa: F401 (fixtures)
from support.lab import lab_guest_module as _lab_guest_module
from support.runner import CliRunner
from support.waits import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.libvirt]

AGENT_READY_SECONDS = 120


def _wait_for_agent(domain: TestDomain) -> None:
    """Retry ``agent ping --domain`` until the guest's qemu-ga answers (boot takes seconds under TCG)."""
    cli = CliRunner()
    results = []

    def answered() -> bool:
        results.append(cli("agent", "ping", "--domain", domain.name, "--timeout", "3"))
        if results[-1].code not in (0, 4):  # 4: no answer yet; anything else will not get better
            raise TimeoutError(f"agent ping exited {results[-1].code}")
        return results[-1].code == 0

    try:
        wait_for(answered, "the agent answering through libvirt", AGENT_READY_SECONDS, pause=0.5)
    except TimeoutError:
        console = domain.workdir / "console.log"
        tail = console.read_text(errors="replace")[-2000:] if console.exists() else "(no console log)"
        raise AssertionError(f"agent never answered through libvirt: {results[-1]}\nconsole: {tail}") from None


@pytest.fixture(scope="module")
def lab_domain(libvirtd: None) -> Iterator[TestDomain]:
    lab = _lab_guest_module()
    kernel, initrd = lab.lab_build.build()
    domain = TestDomain("lab")
    xml = lab.libvirt_domain_xml(
        domain.name, kernel, initrd, domain.disk, console_log=domain.workdir / "console.log")
    domain.start(xml)
    try:
        _wait_for_agent(domain)
        yield domain
    finally:
        if domain.state() == "paused":
            virsh("resume", domain.name, check=False)
        domain.remove()


def _virsh_agent(domain: TestDomain, request: str) -> str:
    return virsh("qemu-agent-command", domain.name, request).stdout


def test_agent_ping_equals_virsh(cli, lab_domain):
    reference = _virsh_agent(lab_domain, '{"execute":"guest-ping"}')
    result = cli("agent", "ping", "--domain", lab_domain.name)
    assert result.code == 0, result
    assert result.out == reference == '{"return":{}}\n'


def test_agent_info_equals_virsh(cli, lab_domain):
    reference = _virsh_agent(lab_domain, '{"execute":"guest-info"}')
    result = cli("agent", "info", "--domain", lab_domain.name)
    assert result.code == 0, result
    assert result.out == reference
    info = json.loads(result.out)["return"]
    assert info["version"].startswith("7.2")
    assert {"name": "guest-exec", "enabled": True, "success-response": True} in info["supported_commands"]


def test_agent_interfaces_match_virsh(cli, lab_domain):
    """Names and addresses; traffic counters may move between the two calls."""

    def stable(text: str) -> list[tuple]:
        return [(i["name"], i.get("hardware-address"), json.dumps(i.get("ip-addresses"), sort_keys=True))
                for i in json.loads(text)["return"]]

    reference = _virsh_agent(lab_domain, '{"execute":"guest-network-get-interfaces"}')
    result = cli("agent", "interfaces", "--domain", lab_domain.name, "--pretty")
    assert result.code == 0, result
    assert stable(result.out) == stable(reference)
    assert ("lo", "00:00:00:00:00:00") in [name_and_mac[:2] for name_and_mac in stable(result.out)]


def test_agent_exec_uname_through_the_domain(cli, lab_domain):
    result = cli("agent", "exec", "--domain", lab_domain.name, "--", "uname", "-a")
    assert result.code == 0, result
    assert result.out.startswith("Linux ") and "x86_64" in result.out


def test_agent_exec_exit_code_and_stderr_through_the_domain(cli, lab_domain):
    result = cli("agent", "exec", "-d", lab_domain.name, "--", "sh", "-c", "echo oops >&2; exit 7")
    assert result.code == 7, result
    assert result.err == "oops\n"


def test_hotplugged_virtio_disk_is_seen_by_the_guest_and_released_on_unplug(cli, lab_domain):
    """A PCI unplug needs the guest's consent (ACPI); through libvirt qmpctl polls for it to finish."""
    image = lab_domain.workdir / "hotplug.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "8M"], check=True)
    lab_domain.qemu_writable(image)
    plugged = cli("hotplug-disk", "-d", lab_domain.name, str(image), "--id", "labhp0")
    assert plugged.code == 0, plugged
    wait_for(lambda: "vdb" in cli("agent", "exec", "-d", lab_domain.name, "--", "ls", "/dev").out,
             "the guest to see the hotplugged disk as /dev/vdb", timeout=20, pause=0.5)
    unplugged = cli("unplug-disk", "-d", lab_domain.name, "labhp0", "--wait-timeout", "30")
    assert unplugged.code == 0, unplugged
    assert "vdb" not in cli("agent", "exec", "-d", lab_domain.name, "--", "ls", "/dev").out
    blocks = json.loads(virsh("qemu-monitor-command", lab_domain.name, '{"execute":"query-block"}').stdout)
    assert not [b for b in blocks["return"] if "labhp0" in b.get("qdev", "")]


def test_agent_command_error_keeps_class_and_desc(cli, lab_domain):
    """libvirt reports agent errors as text; qmpctl gives them back as exit 1 with QEMU's class."""
    result = cli("agent", "command", "-d", lab_domain.name, '{"execute":"guest-no-such-command"}')
    assert result.code == 1, result
    assert "CommandNotFound: The command guest-no-such-command has not been found" in result.err


def test_output_beyond_libvirts_4_mib_string_limit_is_reported(cli, lab_domain):
    """libvirt's RPC carries a reply of at most 4 MiB; 3.5 MB of output is 4.7 MB of base64."""
    result = cli("agent", "exec", "-d", lab_domain.name, "--", "head", "-c", "3500000", "/dev/zero")
    assert result.code == 125, result
    assert "Unable to encode message payload" in result.err and "larger than libvirt passes on" in result.err


def test_input_beyond_libvirts_limit_is_refused_before_sending(cli, lab_domain):
    result = cli("agent", "exec", "-d", lab_domain.name, "--stdin", "--", "wc", "-c", input=b"x" * (4 << 20))
    assert result.code == 125, result
    assert "more than libvirt passes on" in result.err
    assert cli("agent", "ping", "-d", lab_domain.name).code == 0


def test_paused_domain_refuses_agent_commands_with_exit_3(cli, lab_domain):
    """libvirt does not even try the agent of a domain that is not running; qmpctl keeps libvirt's reason."""
    virsh("suspend", lab_domain.name)
    try:
        result = cli("agent", "ping", "-d", lab_domain.name)
    finally:
        virsh("resume", lab_domain.name)
    assert result.code == 3, result
    assert "domain is not running" in result.err


FROZEN_AGENT_SECONDS = 20


def test_frozen_agent_is_exit_4_from_the_deadline_and_from_libvirt(cli, lab_domain):
    """A running guest whose qemu-ga is stopped (SIGSTOP by its own child, thawed by a timer).

    With a short --timeout qmpctl's deadline ends the wait, not libvirt's 5 s
    guest-sync; with a long one libvirt gives up first and says why. Both are
    exit 4, and the agent answers again once it is thawed.
    """
    marker = f"qmpctl-agent-frozen-{uuid.uuid4().hex[:8]}"  # the stopped agent's child says so on the console
    freeze = (f"sleep 1; kill -STOP $PPID; echo {marker} > /dev/console; sleep {FROZEN_AGENT_SECONDS}; "
              "kill -CONT $PPID")
    started = cli("agent", "exec", "-d", lab_domain.name, "--no-wait", "--", "sh", "-c", freeze)
    assert started.code == 0, started
    console = lab_domain.workdir / "console.log"
    wait_for(lambda: console.exists() and marker in console.read_text(errors="replace"),
             "the guest's qemu-ga stopped", timeout=15)
    ours = cli("agent", "ping", "-d", lab_domain.name, "--timeout", "1.5")
    libvirts = cli("agent", "ping", "-d", lab_domain.name, "--timeout", "15")
    assert ours.code == 4, ours
    assert "timed out after 1.5s" in ours.err and "is qemu-ga running in the guest?" in ours.err
    assert ours.seconds < 4
    assert libvirts.code == 4, libvirts
    assert "Guest agent" in libvirts.err and "timed out after" not in libvirts.err  # libvirt's own reason
    assert libvirts.seconds < 15
    _wait_for_agent(lab_domain)


def test_agent_cp_through_libvirt_in_chunks_libvirt_delivers(cli, lab_domain, tmp_path):
    """Through libvirt a request of 256 KiB never reaches the agent, and a string over 4 MiB is refused."""
    import hashlib
    import os

    data = os.urandom(1536 * 1024)  # 24 writes of 64 KiB, two reads of 1 MiB
    source = tmp_path / "random.bin"
    source.write_bytes(data)
    copied_in = cli("agent", "cp", "--domain", lab_domain.name, str(source), "guest:/tmp/random.bin", timeout=300)
    assert copied_in.code == 0, copied_in
    assert json.loads(copied_in.out)["return"]["verified"] is True
    back = tmp_path / "back.bin"
    copied_out = cli("agent", "cp", "--domain", lab_domain.name, "guest:/tmp/random.bin", str(back), timeout=300)
    assert copied_out.code == 0, copied_out
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_a_frozen_chain_backup_through_the_domain_freezes_and_thaws_through_libvirt(cli, lab_domain):
    """--freeze with --domain: the agent is libvirt's channel; the guest is frozen while the job starts, then thawed."""
    disk = [entry for entry in json.loads(lab_domain.monitor('{"execute":"query-block"}').stdout)["return"]
            if entry["inserted"]["file"] == str(lab_domain.disk)][0]
    device_id = disk["qdev"].split("/")[3]
    result = cli("backup", "--domain", lab_domain.name, device_id, "--into", str(lab_domain.qemu_folder("chains")),
                 "--freeze", "--progress", "none")
    assert result.code == 0, result
    freeze = json.loads(result.out)["return"]["freeze"]
    assert freeze["frozen"] == freeze["thawed"] and freeze["seconds"] is not None, freeze
    status = json.loads(_virsh_agent(lab_domain, '{"execute":"guest-fsfreeze-status"}'))
    assert status == {"return": "thawed"}


def test_guest_shutdown_without_reply_powers_the_guest_off(lab_domain):
    """guest-shutdown answers only on failure; through libvirt it must still count as done. Runs last."""
    from qmpctl.deadline import Deadline
    from qmpctl.wire.libvirt import DomainTarget
    from qmpctl.wire.request import Request
    from qmpctl.wire.targets import AGENT

    session = DomainTarget(lab_domain.name, lab_domain.uri, AGENT).open(Deadline(10))
    try:
        session.execute_no_reply(Request.raw({"execute": "guest-shutdown"}, protocol="qga"), Deadline(10))
    finally:
        session.close()
    wait_for(lambda: lab_domain.state() == "shut off", "the domain shut off after guest-shutdown", timeout=60,
             pause=0.5)
