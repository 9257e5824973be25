"""libvirt over SSH: qemu+ssh:// URIs (libvirt's own ssh transport) through a real sshd on loopback.

The libvirtd is this host's; the sshd is the test one (tests/support/sshd.py),
so a qemu+ssh:// URI really goes through an SSH login and virt-ssh-helper.
"""

from __future__ import annotations

import json

import pytest

from support.libvirt import domain, libvirtd, virsh  # noqa: F401 (fixtures)
from support.sshd import sshd  # noqa: F401 (a fixture)

pytestmark = pytest.mark.libvirt


@pytest.mark.parametrize("transport", ["ssh", "libssh"])
def test_status_through_a_qemu_ssh_uri(cli, sshd, domain, transport):
    before = sshd.accepted()
    result = cli("status", "-c", sshd.libvirt_uri(transport), "-d", domain.name)
    assert result.code == 0, result
    expected = json.loads(virsh("qemu-monitor-command", domain.name, '{"execute":"query-status"}').stdout)
    assert json.loads(result.out)["return"] == expected["return"]
    assert sshd.accepted() == before + 1


def test_domains_on_several_uris_in_one_call(cli, sshd, domain):
    over_ssh = sshd.libvirt_uri().replace("/system?", f"/system/{domain.name}?")
    local = f"qemu:///system/{domain.name}"
    result = cli("status", "-d", over_ssh, "-d", local)
    assert result.code == 0, result
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert [line["target"] for line in lines] == [over_ssh, local]
    assert lines[0]["return"] == lines[1]["return"]


def test_a_uri_without_a_domain_is_a_usage_error(cli):
    result = cli("status", "-d", "qemu+ssh://hv1/system")
    assert result.code == 2, result
    assert "URI/DOMAIN" in result.err


def test_refused_ssh_login_through_libvirt_is_exit_3(cli, sshd, domain):
    uri = sshd.libvirt_uri().replace(f"keyfile={sshd.client_key}", f"keyfile={sshd.wrong_key}")
    uri = uri.replace(str(sshd.ssh_wrapper()), str(sshd.ssh_wrapper(sshd.wrong_key_config())))
    result = cli("status", "--timeout", "20", "-c", uri, "-d", domain.name)
    assert result.code == 3, result
    assert result.seconds < 15
