"""An agent channel with nobody behind it: QEMU's chardev socket accepts, then stays silent."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.qemu

TIMEOUT = 1.5
MARGIN = 2.5  # Python start-up and teardown on a loaded 2-core machine


@pytest.fixture
def silent_channel(vm_factory, tmp_path):
    """A VM with the qemu-ga virtio-serial port wired up but no guest to run the agent."""
    path = tmp_path / "channel.sock"
    vm_factory(extra_args=[
        "-chardev", f"socket,path={path},server=on,wait=off,id=qga0",
        "-device", "virtio-serial", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
    ])
    return path


def test_silent_channel_is_a_timeout_saying_the_agent_is_not_responding(cli, silent_channel):
    result = cli("agent", "ping", "-a", str(silent_channel), "--timeout", str(TIMEOUT))
    assert result.code == 4, result
    assert "guest agent is not responding" in result.err
    assert "guest-sync-delimited" in result.err
    assert TIMEOUT <= result.seconds < TIMEOUT + MARGIN, result


def test_silent_channel_in_exec_is_125(cli, silent_channel):
    result = cli("agent", "exec", "-a", str(silent_channel), "--timeout", str(TIMEOUT), "--", "true")
    assert result.code == 125, result
    assert "guest agent is not responding" in result.err
    assert TIMEOUT <= result.seconds < TIMEOUT + MARGIN, result
