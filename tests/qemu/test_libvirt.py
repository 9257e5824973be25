"""``--domain``: qmpctl against a libvirt-managed QEMU, compared with virsh itself.

One TCG domain (no OS, a qcow2 disk) serves most of the module. The reference
output is always ``virsh qemu-monitor-command`` run by the test; qmpctl must
print the same reply with libvirt's ``"id": "libvirt-N"`` removed.

Where virsh 9.0 and qmpctl differ by design, the tests pin the difference:
virsh prints no newline after ``--pretty`` / ``--return-value`` output (qmpctl
always ends with one), HMP text keeps QEMU's CRLF in virsh (qmpctl prints
LF), and yajl writes ``\\u001F`` where Python writes ``\\u001f``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from support.fakes import FakeServer
from support.libvirt import TestDomain, domain, libvirtd, strip_libvirt_id, virsh  # noqa: F401 (fixtures)
from support.runner import REPO

pytestmark = pytest.mark.libvirt

NO_DAEMON_URI = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"


def _running(domain: TestDomain) -> None:
    """Put the shared domain back in the running state whatever an earlier test did."""
    if domain.state().startswith("paused"):
        virsh("resume", domain.name)


# --- Output equal to virsh -------------------------------------------------------


def test_status_prints_what_virsh_prints_without_the_libvirt_id(cli, domain):
    _running(domain)
    expected = strip_libvirt_id(domain.monitor('{"execute":"query-status"}').stdout)
    result = cli("status", "--domain", domain.name)
    assert result.code == 0, result
    assert result.out == expected
    reply = json.loads(result.out)["return"]  # "singlestep" too before QEMU 8.1: only fields every release has
    assert (reply["status"], reply["running"]) == ("running", True), reply


@pytest.mark.parametrize("words", [['{"execute":"query-block"}'], ["query-block"]], ids=["json", "word"])
def test_monitor_command_query_block_equals_virsh(cli, domain, words):
    reference = domain.monitor('{"execute":"query-block"}').stdout
    expected = strip_libvirt_id(reference)
    result = cli("monitor-command", "--domain", domain.name, *words)
    assert result.code == 0, result
    assert json.loads(result.out) == {k: v for k, v in json.loads(reference).items() if k != "id"}
    assert result.out == expected
    inserted = json.loads(result.out)["return"][0]["inserted"]
    assert inserted["file"] == str(domain.disk)
    assert re.fullmatch(r"libvirt-\d+-format", inserted["node-name"])  # libvirt attaches disks by node


def test_pretty_equals_virsh_pretty(cli, domain):
    reference = domain.monitor("--pretty", '{"execute":"query-block"}').stdout
    result = cli("monitor-command", "-d", domain.name, "--pretty", '{"execute":"query-block"}')
    assert result.code == 0, result
    assert not reference.endswith("\n")  # virsh 9.0 prints --pretty output without a final newline
    assert result.out == strip_libvirt_id(reference) + "\n"


def test_return_value_equals_virsh_return_value(cli, domain):
    _running(domain)
    reference = domain.monitor("--return-value", '{"execute":"query-status"}').stdout
    result = cli("status", "-d", domain.name, "--return-value")
    assert result.code == 0, result
    assert result.out == reference + "\n"


def test_hmp_prints_the_text_virsh_prints(cli, domain):
    reference = domain.monitor("--hmp", "info block").stdout
    result = cli("monitor-command", "--domain", domain.name, "--hmp", "info block")
    assert result.code == 0, result
    assert str(domain.disk) in result.out
    assert reference.endswith("\r\n\n")  # QEMU's CRLF text, then virsh's own newline
    assert result.out == reference[:-1].replace("\r\n", "\n")


def test_strings_are_escaped_like_virsh_except_the_case_of_hex_digits(cli, domain):
    """Non-ASCII stays UTF-8 and '/' stays unescaped in both; yajl writes \\u001F, Python \\u001f."""
    request = json.dumps({"execute": "human-monitor-command",
                          "arguments": {"command-line": "info x\u00e9\u4e2d\U0001F600\u0001\u001f\u007f\"\\/"}})
    reference = domain.monitor(request).stdout
    result = cli("monitor-command", "-d", domain.name, request)
    assert result.code == 0, result
    expected = strip_libvirt_id(reference)
    assert json.loads(result.out) == json.loads(expected)
    assert "\u00e9\u4e2d\U0001F600" in result.out and "\\u0001" in result.out
    upper_hex = re.sub(r"\\u00([0-9a-f]{2})", lambda m: "\\u00" + m.group(1).upper(), result.out)
    assert upper_hex == expected


# --- Commands that change the VM ---------------------------------------------------


def test_stop_and_cont_through_the_domain(cli, domain):
    _running(domain)
    stopped = cli("stop", "--domain", domain.name)
    assert stopped.code == 0, stopped
    assert stopped.out == '{"return":{}}\n'
    assert domain.state().startswith("paused")
    resumed = cli("cont", "--domain", domain.name)
    assert resumed.code == 0, resumed
    assert domain.state() == "running"


def test_dry_run_with_domain_sends_nothing(cli, domain):
    _running(domain)
    result = cli("stop", "--domain", domain.name, "--dry-run")
    assert result.code == 0, result
    assert result.out == '{"execute":"stop"}\n'
    assert domain.state() == "running"


# --- Finding the domain -------------------------------------------------------------


@pytest.mark.parametrize("form", ["id", "uuid"])
def test_domain_by_id_or_uuid(cli, domain, form):
    _running(domain)
    key = virsh("domid" if form == "id" else "domuuid", domain.name).stdout.strip()
    result = cli("status", "-d", key)
    assert result.code == 0, result
    assert json.loads(result.out)["return"]["status"] == "running"


def test_connect_uri_from_environment(cli, domain):
    result = cli("status", "-d", domain.name, env={"LIBVIRT_DEFAULT_URI": domain.uri})
    assert result.code == 0, result
    unreachable = cli("status", "-d", domain.name, env={"LIBVIRT_DEFAULT_URI": NO_DAEMON_URI})
    assert unreachable.code == 3, unreachable


def test_fleet_of_domains_one_line_each_worst_exit(cli, domain):
    _running(domain)
    result = cli("status", "-d", domain.name, "-d", "qmpctl-no-such-domain")
    assert result.code == 3, result
    first, second = [json.loads(line) for line in result.out.splitlines()]
    assert set(first) == {"target", "return"} and first["target"] == f"domain:{domain.name}"
    assert (first["return"]["status"], first["return"]["running"]) == ("running", True), first
    assert second["target"] == "domain:qmpctl-no-such-domain"
    assert second["exit"] == 3 and "Domain not found" in second["error"]["desc"]


def test_second_qmp_socket_from_qemu_commandline_serves_the_socket_path(cli, libvirtd):
    """The alternative to --domain: a -qmp of qmpctl's own added through <qemu:commandline>.

    libvirt keeps its monitor; QEMU creates the second socket as libvirt-qemu,
    so its folder must be writable by that user. Both ways see the same VM.
    """
    vm = TestDomain("qmp")
    socket_path = vm.qemu_folder("sockets") / "qmp.sock"
    vm.start(qemu_args=("-qmp", f"unix:{socket_path},server=on,wait=off"))
    try:
        direct = cli("status", "-s", str(socket_path))
        through_libvirt = cli("status", "-d", vm.name)
        assert direct.code == 0 and through_libvirt.code == 0, (direct, through_libvirt)
        assert direct.out == through_libvirt.out
        paused = cli("stop", "-s", str(socket_path))
        assert paused.code == 0, paused
        assert vm.state().startswith("paused")  # libvirt sees the STOP event on its own monitor
    finally:
        vm.remove()


# --- Errors and exit codes ------------------------------------------------------------


def test_unknown_domain_is_exit_3_with_libvirts_reason(cli, domain):
    result = cli("status", "--domain", "qmpctl-no-such-domain")
    assert result.code == 3, result
    assert result.out == ""
    assert "Domain not found: no domain with matching name 'qmpctl-no-such-domain'" in result.err
    assert result.err.count("\n") == 1  # qmpctl's one line; libvirt's own printer is silenced


def test_libvirtd_not_running_is_exit_3_with_libvirts_reason(cli):
    result = cli("status", "--domain", "anything", "--connect", NO_DAEMON_URI)
    assert result.code == 3, result
    assert "Failed to connect socket to '/nonexistent/libvirt-sock'" in result.err


@pytest.mark.fault
def test_libvirtd_that_never_answers_is_bounded_by_the_timeout(cli, tmp_path):
    """libvirt's own RPC has no timeout; qmpctl's deadline must still end the call."""
    path = tmp_path / "silent-libvirt.sock"
    with FakeServer(path, None) as server:
        result = cli("status", "-d", "vm", "-c", f"qemu+unix:///system?socket={path}", "--timeout", "1")
    assert result.code == 4, result
    assert "timed out after 1s waiting for libvirt to open domain vm (libvirtd is not answering)" in result.err
    assert result.seconds < 5
    assert server.connections == 1


def test_vm_error_is_exit_1_where_virsh_says_0(cli, domain):
    request = '{"execute":"qmpctl-no-such-command"}'
    reference = virsh("qemu-monitor-command", domain.name, request, check=False)
    assert reference.returncode == 0  # virsh prints the error as if it were a reply
    error = json.loads(reference.stdout)["error"]
    result = cli("monitor-command", "-d", domain.name, request)
    assert result.code == 1, result
    assert result.out == ""
    assert f"{error['class']}: {error['desc']}" in result.err


def test_agent_on_a_domain_without_agent_channel_is_exit_3(cli, domain):
    result = cli("agent", "ping", "--domain", domain.name)
    assert result.code == 3, result
    assert "QEMU guest agent is not configured" in result.err


@pytest.fixture
def without_libvirt_python(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import libvirt`` fails, as on a host without the extra."""
    blocker = tmp_path / "no-libvirt"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['libvirt'] = None\n"
                                              "sys.modules['libvirt_qemu'] = None\n")
    return {"PYTHONPATH": f"{blocker}:{REPO}"}


@pytest.mark.parametrize("command", [["status"], ["agent", "ping"]], ids=["monitor", "agent"])
def test_missing_libvirt_python_is_exit_2_saying_how_to_install(cli, without_libvirt_python, command):
    result = cli(*command, "--domain", "vm", env=without_libvirt_python)
    assert result.code == 2, result
    assert "pip install 'qmpctl[libvirt]'" in result.err
    assert "libvirt-dev" in result.err


def test_dry_run_with_domain_needs_no_libvirt_python(cli, without_libvirt_python):
    result = cli("status", "--domain", "vm", "--dry-run", env=without_libvirt_python)
    assert result.code == 0, result
    assert result.out == '{"execute":"query-status"}\n'


# --- Pure mapping rules ---------------------------------------------------------------


@pytest.mark.parametrize("uri, local", [
    (None, True), ("qemu:///system", True), ("qemu:///session", True),
    ("qemu+unix:///system?socket=/run/x", True), ("qemu+ssh://localhost/system", True),
    ("qemu+ssh://root@virthost.example/system", False), ("qemu+tls://10.0.0.5/system", False),
    ("qemu+tcp://[::1]:16509/system", True), ("qemu+ssh://admin@[2001:db8::5]:2222/system", False),
    ("qemu+ssh://LOCALHOST:22/system?keyfile=/k", True), ("qemu+tcp://127.0.0.2/system", True),
])
def test_is_local_follows_the_uri_host(uri, local):
    from qmpctl.wire.libvirt import DomainTarget

    assert DomainTarget("vm", uri).is_local is local


@pytest.mark.parametrize("message, error_class, desc", [
    ("internal error: unable to execute QEMU agent command 'guest-nope': The command guest-nope has not been found",
     "CommandNotFound", "The command guest-nope has not been found"),
    ("internal error: unable to execute QEMU agent command 'guest-exec': Command guest-exec has been disabled",
     "CommandNotFound", "Command guest-exec has been disabled"),
    ("internal error: unable to execute QEMU agent command 'guest-exec-status': Invalid parameter 'pid'",
     "GenericError", "Invalid parameter 'pid'"),
])
def test_agent_errors_are_recovered_from_libvirts_wording(message, error_class, desc):
    from qmpctl.wire.libvirt import agent_error

    error = agent_error(message)
    assert error is not None
    assert (error.error_class, error.desc) == (error_class, desc)
    assert agent_error("internal error: End of file from agent socket") is None
