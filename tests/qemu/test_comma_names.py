"""A comma in a socket path: QEMU's option syntax cuts it there, and qmpctl says so."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.qemu


def test_a_path_cut_at_a_comma_says_how_to_write_it(cli, vm, tmp_path):
    link = tmp_path / "w,d.sock"
    link.symlink_to(vm.qmp_path)
    result = cli("status", "-s", str(link))
    assert result.code == 3, result
    assert f"no such socket: {tmp_path}/w, but {link} exists" in result.err
    assert "a comma starts QEMU options; write ,, for a comma in a path" in result.err
    escaped = cli("status", "-s", str(link).replace(",", ",,"))
    assert escaped.code == 0, escaped


def test_qemu_options_after_a_missing_path_give_no_comma_hint(cli, tmp_path):
    result = cli("status", "-s", f"{tmp_path}/gone.sock,server=on,wait=off")
    assert result.code == 3, result
    assert result.err.strip() == f"qmpctl: no such socket: {tmp_path}/gone.sock"
