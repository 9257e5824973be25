"""Address parsing: every form users paste from QEMU's -qmp, and the mistakes they make."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qmpctl.address import Address, expand_addresses, parse_address
from qmpctl.errors import ConnectError, QmpctlError, UsageError


@pytest.mark.parametrize("text, expected", [
    ("/tmp/vm.sock", Address(path="/tmp/vm.sock")),
    ("vm.sock", Address(path="vm.sock")),
    ("unix:/tmp/vm.sock", Address(path="/tmp/vm.sock")),
    ("unix:/tmp/vm.sock,server=on,wait=off", Address(path="/tmp/vm.sock")),
    ("unix:/opt/qmp.socket,server,nowait", Address(path="/opt/qmp.socket")),
    ("/tmp/a,,b.sock,server", Address(path="/tmp/a,b.sock")),
    ("tcp:127.0.0.1:4444", Address(host="127.0.0.1", port=4444)),
    ("tcp:127.0.0.1:4444,server,nowait", Address(host="127.0.0.1", port=4444)),
    ("localhost:4444", Address(host="localhost", port=4444)),
    ("[::1]:4444", Address(host="::1", port=4444)),
    ("tcp:[::1]:4444,server=on", Address(host="::1", port=4444)),
    ("./dir:with/colon.sock", Address(path="./dir:with/colon.sock")),
])
def test_forms(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", " ", "unix:", "tcp:host", "tcp:host:0", "tcp:host:70000", "host:port",
                                  ",server", "[::1]4444", "a\0b"])
def test_invalid(text):
    with pytest.raises(UsageError):
        parse_address(text)


def test_str_round_trips():
    for text in ["unix:/tmp/x", "tcp:127.0.0.1:1", "tcp:[::1]:5"]:
        assert str(parse_address(text)) == text


def test_glob_with_no_match_is_a_connect_error(tmp_path):
    with pytest.raises(ConnectError):
        expand_addresses([str(tmp_path / "*.sock")])


def test_glob_expands_sorted_and_deduplicated(tmp_path):
    for name in ("b.sock", "a.sock"):
        (tmp_path / name).touch()
    found = expand_addresses([str(tmp_path / "*.sock"), str(tmp_path / "a.sock")])
    assert found == [Address(path=str(tmp_path / "a.sock")), Address(path=str(tmp_path / "b.sock"))]


@given(st.text(max_size=200))
def test_any_text_parses_or_fails_cleanly(text):
    try:
        parse_address(text)
    except QmpctlError:
        pass
