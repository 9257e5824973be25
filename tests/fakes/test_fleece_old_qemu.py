"""backup --into --fleece on a QEMU older than 7.1 (no such build is installed here): exit 2 before anything."""

from __future__ import annotations

import json

import pytest

from support.fakes import FakeServer, Peer

pytestmark = pytest.mark.fault


def test_fleece_on_qemu_7_0_is_refused_before_anything_is_changed(cli, tmp_path):
    seen: list[str] = []

    def script(peer: Peer) -> None:
        peer.handshake()
        while True:
            request = peer.read_request()
            if not request:
                return
            seen.append(request["execute"])
            if request["execute"] == "query-version":
                peer.reply(request, {"qemu": {"major": 7, "minor": 0, "micro": 0}, "package": "Debian 1:7.0"})
            else:
                peer.reply(request, {})

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with FakeServer(tmp_path / "m.sock", script):
        result = cli("backup", "-s", str(tmp_path / "m.sock"), "vd0", "--into", str(tmp_path / "b"), "--fleece",
                     str(scratch), "--progress", "none")
    assert result.code == 2, result
    assert "--fleece needs QEMU 7.1 or later (this VM runs 7.0.0)" in result.err, result.err
    assert seen == ["query-version"]  # nothing asked of the disks, nothing changed
    assert not (tmp_path / "b").exists() and list(scratch.iterdir()) == []
    assert json.loads(result.out or "null") is None
