"""guest-shutdown and guest-suspend-* answer only when they fail.

The success path (a real guest powering off) is in tests/lab/test_lab.py; these
fakes show the refusal and the two ways success looks from the host. The real
host qemu-ga is never sent guest-shutdown: it runs as root on this machine.
"""

from __future__ import annotations

import pytest

from support.fakes import FakeServer, Peer
from support.qga import answer, answer_sync

pytestmark = pytest.mark.fault


def shutdown(cli, path, *extra):
    return cli("agent", "command", "-a", str(path), "guest-shutdown", "--timeout", "5", *extra)


def test_refusal_is_exit_1_with_the_agents_reason(cli, tmp_path):
    def script(peer: Peer) -> None:
        answer_sync(peer)
        answer(peer, "guest-shutdown", error={"class": "CommandNotFound",
                                               "desc": "Command guest-shutdown has been disabled"})

    with FakeServer(tmp_path / "qga.sock", script):
        result = shutdown(cli, tmp_path / "qga.sock")
    assert result.code == 1, result
    assert "guest-shutdown is disabled in the guest agent's configuration" in result.err


def test_silence_means_the_agent_took_it(cli, tmp_path):
    def script(peer: Peer) -> None:
        answer_sync(peer)
        assert peer.read_request()["execute"] == "guest-shutdown"

    with FakeServer(tmp_path / "qga.sock", script):
        result = shutdown(cli, tmp_path / "qga.sock")
    assert result.code == 0 and result.out == "", result
    assert result.seconds < 5, "the grace period for a refusal must stay short"


def test_channel_closing_as_the_guest_goes_down_is_success(cli, tmp_path):
    def script(peer: Peer) -> None:
        answer_sync(peer)
        peer.read_request()
        peer.sock.close()

    with FakeServer(tmp_path / "qga.sock", script):
        result = shutdown(cli, tmp_path / "qga.sock")
    assert result.code == 0, result
