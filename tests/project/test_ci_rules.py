"""The suite's own rules, tested: no skip hides a missing peer in CI, no fake server's failure goes unseen."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support.fakes import FakeServer, Peer

TESTS = Path(__file__).resolve().parents[1]

SAMPLE = '''
import pytest

def test_qemu_missing():
    pytest.skip("qemu-system-x86_64 is not installed (run tests/setup-host)")

@pytest.mark.skipif(True, reason="qemu-ga is not installed")
def test_agent_missing():
    pass

def test_libvirtd_missing():
    pytest.skip("libvirtd cannot run here: no /dev/kvm")

def test_not_applicable():
    pytest.skip("only meaningful on a big-endian host")

def test_passes():
    pass
'''


def _outcomes(tmp_path: Path, ci: str | None) -> dict[str, str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    report = tmp_path / "report.json"
    plugin = tmp_path / "outcomes.py"
    plugin.write_text(textwrap.dedent(f'''
        import json
        seen = {{}}
        def pytest_runtest_logreport(report):
            if report.when == "call" or report.outcome != "passed":
                seen[report.nodeid.split("::")[-1]] = report.outcome
        def pytest_sessionfinish(session):
            with open({str(report)!r}, "w") as handle:
                json.dump(seen, handle)
    '''))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{TESTS}:{tmp_path}"}
    if ci is not None:
        env["CI"] = ci
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "support.ci", "-p", "outcomes", "-p",
                    "no:cacheprovider", str(tmp_path / "test_sample.py")],
                   cwd=tmp_path, env=env, capture_output=True, timeout=60, check=False)
    return json.loads(report.read_text())


def test_in_ci_a_skip_for_a_missing_peer_fails(tmp_path):
    assert _outcomes(tmp_path, "true") == {"test_qemu_missing": "failed", "test_agent_missing": "failed",
                                           "test_libvirtd_missing": "failed", "test_not_applicable": "skipped",
                                           "test_passes": "passed"}


@pytest.mark.parametrize("ci", [None, "", "false"])
def test_outside_ci_it_stays_a_skip(tmp_path, ci):
    assert _outcomes(tmp_path, ci) == {"test_qemu_missing": "skipped", "test_agent_missing": "skipped",
                                       "test_libvirtd_missing": "skipped", "test_not_applicable": "skipped",
                                       "test_passes": "passed"}


def _send_one_request(path: Path, request: bytes) -> None:
    """Connect and send; a script that already failed may have closed its end, which is what is tested."""
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
        try:
            client.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass


def test_a_fake_servers_failed_assertion_fails_the_test(tmp_path):
    def script(peer: Peer) -> None:
        assert peer.read_request()["execute"] == "qmp_capabilities", "the client skipped negotiation"

    with pytest.raises(AssertionError, match="the fake server's script failed .*the client skipped negotiation"):
        with FakeServer(tmp_path / "f.sock", script) as server:
            _send_one_request(server.path, b'{"execute": "query-status"}\n')


def test_a_test_that_fails_anyway_keeps_its_own_error_first(tmp_path):
    def script(peer: Peer) -> None:
        raise ValueError("script bug")

    with pytest.raises(KeyError) as caught:
        with FakeServer(tmp_path / "f.sock", script) as server:
            _send_one_request(server.path, b"{}\n")
            server.close()  # let the script run and fail before the test's own error
            raise KeyError("the test's own failure")
    assert any("script bug" in note for note in caught.value.__notes__)


def test_a_script_that_passes_passes(tmp_path):
    def script(peer: Peer) -> None:
        assert peer.read_request() == {"execute": "query-status"}

    with FakeServer(tmp_path / "f.sock", script) as server:
        _send_one_request(server.path, b'{"execute": "query-status"}\n')
    assert server.connections == 1 and server.errors == []


def test_a_daemon_socket_left_from_an_earlier_boot_is_not_taken_for_a_running_daemon(tmp_path):
    """A machine restored from a snapshot keeps /run: libvirtd's socket file is there, libvirtd is not."""
    from support.libvirt import socket_is_served

    path = tmp_path / "libvirt-sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    assert socket_is_served(path)
    listener.close()
    assert path.exists()
    assert not socket_is_served(path)
    assert not socket_is_served(tmp_path / "never-made")
