"""Address parsing: every form users paste from QEMU's -qmp, and the mistakes they make."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qmpctl.wire.address import Address, SshHost, parse_address
from qmpctl.wire.connect import expand_addresses
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


@pytest.mark.parametrize("text, expected", [
    ("ssh://hv1/run/qemu/vm1.qmp", Address(path="/run/qemu/vm1.qmp", via=SshHost("hv1"))),
    ("ssh://root@hv1:2222/run/vm.qmp", Address(path="/run/vm.qmp", via=SshHost("hv1", "root", 2222))),
    ("ssh://[::1]:22/a/b.sock", Address(path="/a/b.sock", via=SshHost("::1", None, 22))),
    ("ssh://admin@[fe80::1]/x", Address(path="/x", via=SshHost("fe80::1", "admin"))),
    # The path is taken as it is: no QEMU options are stripped, a colon is no port.
    ("ssh://hv1/run/a,server=on", Address(path="/run/a,server=on", via=SshHost("hv1"))),
    ("ssh://hv1/run/qemu/*.qmp", Address(path="/run/qemu/*.qmp", via=SshHost("hv1"))),
])
def test_ssh_forms(text, expected):
    address = parse_address(text)
    assert address == expected
    assert not address.is_unix  # not a socket on this machine
    assert str(address) == text


@pytest.mark.parametrize("text", ["ssh://hv1", "ssh://hv1/", "ssh:///run/vm.qmp", "ssh://@hv1/x", "ssh://hv1:0/x",
                                  "ssh://hv1:ssh/x", "ssh://-oProxyCommand=x/y", "ssh://-l@hv1/x",
                                  "ssh://[::1/x", "ssh://h v/x", "ssh://hv1/run/a:b.sock"])
def test_ssh_invalid(text):
    with pytest.raises(UsageError):
        parse_address(text)


def test_the_same_path_on_another_host_is_another_socket():
    addresses = expand_addresses(["/run/vm.qmp", "ssh://hv1/run/vm.qmp", "ssh://hv2/run/vm.qmp",
                                  "ssh://hv1/run/vm.qmp"])
    assert [str(address) for address in addresses] == ["unix:/run/vm.qmp", "ssh://hv1/run/vm.qmp",
                                                       "ssh://hv2/run/vm.qmp"]
