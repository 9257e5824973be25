"""A probed format never lets a guest reach another host file through a forged qcow2 header.

A guest owns the bytes of a raw disk and can write a qcow2 header into them
that names any host file as its backing or data file. Against a real QEMU:
such an image is refused before anything is sent unless --format says what
it is.
"""

from __future__ import annotations

import subprocess

import pytest

from support.disks import block_state, make_image

pytestmark = pytest.mark.qemu


def forged(tmp_path, kind: str):
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"host file a guest must not read\n".ljust(1 << 20, b"\0"))
    image = tmp_path / "guest-written.img"
    if kind == "backing":
        options = ["-b", str(secret), "-F", "raw"]
    else:
        options = ["-o", f"data_file={secret},data_file_raw=on"]
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *options, str(image), "1M"], check=True)
    return image, secret


@pytest.mark.parametrize("kind", ["backing", "data"])
def test_probed_qcow2_naming_another_file_is_refused_before_sending(cli, vm, kind):
    image, secret = forged(vm.workdir, kind)
    before = block_state(vm)
    result = cli("hotplug-disk", "-s", str(vm.qmp_path), str(image))
    assert result.code == 2, result
    assert f"{kind} file '{secret}'" in result.err and "--format qcow2" in result.err
    assert block_state(vm) == before


def test_dry_run_refuses_it_too(cli, tmp_path):
    image, _ = forged(tmp_path, "backing")
    result = cli("hotplug-disk", "-s", str(tmp_path / "none.sock"), str(image), "--dry-run")
    assert result.code == 2, result


@pytest.mark.parametrize("image_format", ["qcow2", "raw"])
def test_an_explicit_format_is_the_users_decision(cli, vm, image_format):
    image, _ = forged(vm.workdir, "backing")
    result = cli("hotplug-disk", "-s", str(vm.qmp_path), str(image), "--format", image_format)
    assert result.code == 0, result


def test_a_plain_qcow2_is_still_probed(cli, vm):
    image = make_image(vm.workdir / "plain.qcow2")
    result = cli("hotplug-disk", "-s", str(vm.qmp_path), str(image), "--return-value")
    assert result.code == 0, result
    assert '"format": "qcow2"' in result.out or '"format":"qcow2"' in result.out
