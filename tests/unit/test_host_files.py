"""Where a VM's files are is its target's answer: here, over ssh, or out of reach; nothing is connected to tell."""

from __future__ import annotations

import pytest

from qmpctl.wire.address import SshHost, parse_address
from qmpctl.wire.libvirt import DomainTarget
from qmpctl.wire.session import HERE, OVER_SSH, UNREACHABLE
from qmpctl.wire.targets import MONITOR, SocketTarget, written_targets


@pytest.mark.parametrize("text, reach", [
    ("/run/vm.qmp", HERE), ("unix:/run/vm.qmp", HERE), ("tcp:127.0.0.1:4444", HERE), ("tcp:localhost:4444", HERE),
    ("tcp:[::1]:4444", HERE), ("tcp:127.0.0.2:4444", HERE), ("tcp:vmhost.example:4444", UNREACHABLE),
    ("tcp:10.0.0.5:4444", UNREACHABLE), ("ssh://root@hv1/run/vm.qmp", OVER_SSH),
    ("ssh://localhost/run/vm.qmp", OVER_SSH),
])
def test_a_socket_target_says_where_the_vms_files_are(text, reach):
    target = SocketTarget(parse_address(text))
    files = target.host_files()
    assert files.reach == reach and target.is_local is (reach == HERE)
    assert (files.side != "") is (reach == OVER_SSH)


def test_over_ssh_names_the_host_as_messages_say_it():
    files = SocketTarget(parse_address("ssh://admin@hv1:2222/run/vm.qmp")).host_files()
    assert files.host == SshHost("hv1", "admin", 2222) and files.side == "on admin@hv1:2222"


@pytest.mark.parametrize("uri, reach", [
    (None, HERE), ("qemu:///system", HERE), ("qemu+ssh://localhost/system", HERE),
    ("qemu+ssh://root@virthost.example/system", UNREACHABLE), ("qemu+tls://10.0.0.5/system", UNREACHABLE),
])
def test_a_domain_on_a_remote_uri_is_out_of_reach_even_over_ssh(uri, reach):
    target = DomainTarget("vm", uri)
    assert target.host_files().reach == reach and target.is_local is (reach == HERE)
    assert target.host_files().remote() is None


def test_written_targets_expand_nothing_and_an_empty_list_is_no_error(tmp_path):
    pattern = f"{tmp_path}/*.qmp"  # matches nothing: resolving it would be an error
    (target,) = written_targets(MONITOR, [pattern], [], None)
    assert target.host_files().reach == HERE and str(target) == f"unix:{pattern}"
    (remote,) = written_targets(MONITOR, ["ssh://hv1/run/*.qmp"], [], None)
    assert remote.host_files().reach == OVER_SSH
    assert written_targets(MONITOR, [], [], None) == []
