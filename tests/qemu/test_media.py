"""media insert/eject against a real QEMU with an IDE CD-ROM and a floppy drive; a locked tray from a fake."""

from __future__ import annotations

import json

import pytest

from support.disks import make_image
from support.fakes import FakeServer

pytestmark = pytest.mark.qemu

DRIVES = ["-drive", "if=none,id=cd0,media=cdrom", "-device", "ide-cd,drive=cd0,id=cdrom0,bus=ide.0,unit=0",
          "-drive", "if=none,id=fd0", "-device", "floppy,drive=fd0,id=floppy0"]


def drive(vm, qdev: str) -> dict:
    with vm.check() as qmp:
        return next(entry for entry in qmp.cmd("query-block") if entry.get("qdev") == qdev)


@pytest.fixture
def media_vm(vm_factory):
    return vm_factory(extra_args=DRIVES)


def test_insert_and_eject_a_cdrom(cli, media_vm, tmp_path):
    iso = make_image(tmp_path / "install.iso", "raw", "1M")
    result = cli("media", "insert", "-s", str(media_vm.qmp_path), "cdrom0", str(iso), "--return-value")
    assert result.code == 0, result
    assert json.loads(result.out) == {"device": "cdrom0", "filename": str(iso), "format": "raw"}
    inserted = drive(media_vm, "cdrom0")["inserted"]
    assert inserted["file"] == str(iso) and inserted["drv"] == "raw" and inserted["ro"] is True
    result = cli("media", "eject", "-s", str(media_vm.qmp_path), "cdrom0", "--return-value")
    assert result.code == 0, result
    assert json.loads(result.out) == {"device": "cdrom0", "ejected": str(iso)}
    assert "inserted" not in drive(media_vm, "cdrom0")


def test_a_qcow2_medium_is_detected_and_replaces_the_one_inside(cli, media_vm, tmp_path):
    first = make_image(tmp_path / "first.img", "raw", "1M")
    second = make_image(tmp_path / "second.qcow2", "qcow2", "1M")
    assert cli("media", "insert", "-s", str(media_vm.qmp_path), "floppy0", str(first)).code == 0
    result = cli("media", "insert", "-s", str(media_vm.qmp_path), "floppy0", str(second), "--read-only",
                 "--return-value")
    assert result.code == 0, result
    assert json.loads(result.out) == {"device": "floppy0", "filename": str(second), "format": "qcow2",
                                      "replaced": str(first)}
    inserted = drive(media_vm, "floppy0")["inserted"]
    assert inserted["drv"] == "qcow2" and inserted["ro"] is True


def test_a_qcow2_naming_a_backing_file_is_never_probed(cli, media_vm, tmp_path):
    base = make_image(tmp_path / "base.qcow2")
    overlay = tmp_path / "overlay.qcow2"
    import subprocess

    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay)],
                   check=True)
    result = cli("media", "insert", "-s", str(media_vm.qmp_path), "cdrom0", str(overlay))
    assert result.code == 2, result
    assert "makes QEMU open another file" in result.err
    assert "inserted" not in drive(media_vm, "cdrom0")


@pytest.mark.parametrize("case", ["missing", "fixed disk", "no such drive"])
def test_refused_before_anything_is_sent(cli, media_vm, tmp_path, case):
    image = make_image(tmp_path / "x.img", "raw", "1M")
    device, message = "cdrom0", ""
    if case == "missing":
        image, message = tmp_path / "absent.iso", "no such image file"
    elif case == "fixed disk":
        device, message = "vd0", "vd0 is not a CD-ROM or floppy drive"
    else:
        device, message = "cdrom9", "no drive 'cdrom9' (its CD-ROM and floppy drives: cdrom0, floppy0)"
    result = cli("media", "insert", "-s", str(media_vm.qmp_path), device, str(image), "--format", "raw")
    assert result.code == 2, result
    assert message in result.err
    assert "inserted" not in drive(media_vm, "cdrom0")


def locked_tray(peer):
    """A QEMU whose guest holds the CD-ROM tray locked (a guest OS with the disc mounted does so)."""
    peer.handshake()
    request = peer.read_request()
    assert request["execute"] == "query-block"
    peer.reply(request, [{"device": "cd0", "qdev": "cdrom0", "removable": True, "locked": True, "tray_open": False,
                          "inserted": {"file": "/srv/disc.iso", "node-name": "#block1", "drv": "raw", "ro": True}}])
    request = peer.read_request()
    assert request["execute"] == "eject"
    if request["arguments"].get("force"):
        peer.reply(request)
        return
    peer.send({"error": {"class": "GenericError", "desc": "Device 'cd0' is locked and force was not specified, "
                                                          "wait for tray to open and try again"},
               "id": request["id"]})


@pytest.mark.one_qemu
def test_a_locked_tray_is_exit_1_with_qemus_words_unless_forced(cli, tmp_path):
    with FakeServer(tmp_path / "qmp.sock", locked_tray):
        result = cli("media", "eject", "-s", str(tmp_path / "qmp.sock"), "cdrom0")
        assert result.code == 1, result
        assert "Device 'cd0' is locked and force was not specified" in result.err
        result = cli("media", "eject", "-s", str(tmp_path / "qmp.sock"), "cdrom0", "--force", "--return-value")
        assert result.code == 0, result
        assert json.loads(result.out) == {"device": "cdrom0", "ejected": "/srv/disc.iso"}


@pytest.mark.one_qemu
def test_dry_run_checks_the_file_and_sends_nothing(cli, tmp_path):
    iso = make_image(tmp_path / "install.iso", "raw", "1M")
    result = cli("media", "insert", "-s", str(tmp_path / "absent.sock"), "cdrom0", str(iso), "--dry-run")
    assert result.code == 0, result
    assert json.loads(result.out)["plan"] == [{"execute": "blockdev-change-medium", "arguments": {
        "id": "cdrom0", "filename": str(iso), "format": "raw"}}]
    result = cli("media", "insert", "-s", str(tmp_path / "absent.sock"), "cdrom0", str(tmp_path / "no.iso"),
                 "--dry-run")
    assert result.code == 2 and "no such image file" in result.err


@pytest.mark.one_qemu
def test_an_unreadable_file_is_refused_before_anything_is_sent(tmp_path, monkeypatch):
    """Tests run as root, who reads any file: the check is made to see what an unprivileged user's QEMU would."""
    from qmpctl.errors import UsageError
    from qmpctl.vm import media

    image = make_image(tmp_path / "x.iso", "raw", "1M")
    monkeypatch.setattr(media.os, "access", lambda path, mode: False)
    with pytest.raises(UsageError, match="cannot read .*x.iso: permission denied"):
        media.check_medium(str(image), "raw", is_local=True)


def test_eject_of_an_empty_drive_says_nothing_was_inside(cli, media_vm):
    result = cli("media", "eject", "-s", str(media_vm.qmp_path), "fd0", "--return-value")  # by its drive name
    assert result.code == 0, result
    assert json.loads(result.out) == {"device": "floppy0", "ejected": None}
