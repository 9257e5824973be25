"""--timeout is one deadline for all of a call's requests, however many there are.

A real QEMU cannot be made slow per request, so a scripted fake answers each
request after the unplug a little under the timeout: together they exceed it,
and the call must end at the deadline instead of taking a timeout per request.
"""

from __future__ import annotations

import time

from support.fakes import FakeServer, Peer

TIMEOUT = 1.0
SLOW = 0.6 * TIMEOUT
MARGIN = 2.0

EVENT_TIME = {"seconds": 1, "microseconds": 0}


def unplug_script(peer: Peer) -> None:
    """A VM with disk vd1 (nodes vd1-format, vd1-file) that releases it at once, then answers slowly."""
    peer.handshake()
    answers = {
        "qom-list": [{"name": "vd1", "type": "child<virtio-blk-pci>"}],
        "query-block": [{"device": "", "qdev": "/machine/peripheral/vd1/virtio-backend",
                         "inserted": {"node-name": "vd1-format"}}],
        "query-named-block-nodes": [{"node-name": "vd1-format", "drv": "qcow2", "file": "/x.qcow2"},
                                    {"node-name": "vd1-file", "drv": "file", "file": "/x.qcow2"}],
    }
    released = False
    while True:
        request = peer.read_request()
        if not request:
            return
        command = request["execute"]
        if released:
            time.sleep(SLOW)  # every request after the unplug: just under the timeout
        if command == "device_del":
            peer.reply(request)
            peer.send({"event": "DEVICE_DELETED", "data": {"device": "vd1", "path": "/machine/peripheral/vd1"},
                       "timestamp": EVENT_TIME})
            released = True
            answers["qom-list"] = []
        else:
            peer.reply(request, answers.get(command, {}))


def test_requests_after_the_wait_share_one_deadline(cli, tmp_path):
    with FakeServer(tmp_path / "qmp.sock", unplug_script) as server:
        result = cli("unplug-disk", "-s", str(tmp_path / "qmp.sock"), "vd1", "--timeout", str(TIMEOUT))
    assert not server.errors
    assert result.code == 4, result
    assert result.seconds < TIMEOUT + MARGIN, result
