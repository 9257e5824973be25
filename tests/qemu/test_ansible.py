"""The manual's Ansible play runs, as ``ansible-playbook``, so it cannot rot.

The play is read from the source of qmpctl-remote(7)
(``man/pages/qmpctl-remote.md``, section "Ansible"): an edit to the page is
what runs. Its only example name, ``/run/qemu/``, becomes a folder
of real VMs' sockets on this machine: ``web.sock`` (running), ``db.sock``
(paused) and ``gone.sock`` (stale: what a VM that died leaves). Its hypervisors
``hv1``, ``hv2`` and ``hv3`` are the test sshd on loopback under three names,
the way a user's ssh client configuration would name them: an ``ssh`` first
on PATH gives qmpctl the sshd's throw-away keys, and the inventory puts the
same names at 127.0.0.1 on the sshd's port. The play runs on ``localhost``,
the admin machine, where ``qmpctl`` on PATH runs this checkout.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.docs import man_module
from support.qemu import RawQmp
from support.shell import qmpctl_on_path, shell_env
from support.sshd import Sshd, sshd  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.qemu, pytest.mark.one_qemu]

HYPERVISORS = ("hv1", "hv2", "hv3")
FLEET_PLACEHOLDER = "/run/qemu/"
PLAY_TIMEOUT = 180


PAGE = Path(__file__).resolve().parents[2] / "man" / "pages" / "qmpctl-remote.md"


def readme_play() -> tuple[int, str]:
    """The line of the play's block in the page's source, and the play."""
    readme = man_module("readme").Readme.load(PAGE)
    plays = [block for block in readme.blocks if block.heading == "Ansible" and block.info == "yaml"]
    assert len(plays) == 1, "the \"Ansible\" section of qmpctl-remote(7) should show exactly one yaml block: the play"
    return plays[0].line, plays[0].text


@pytest.fixture(scope="module")
def playbook() -> str:
    """The ``ansible-playbook`` installed beside this Python (the ``test`` extra), else the one on PATH."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    found = str(beside) if beside.exists() else shutil.which("ansible-playbook")
    if found is None:  # a failure under CI=true (support/ci.py)
        pytest.skip("ansible-core is not installed (run tests/setup-host; it comes with the 'test' extra)")
    return found


def stale_socket(path: Path) -> None:
    """A socket file nobody listens on: what a VM that died leaves behind."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))


def client_config(sshd: Sshd) -> Path:
    """ssh's configuration as a user's would name the hypervisors: all three are the test sshd."""
    config = sshd.folder / "config-hypervisors"
    config.write_text(f"Host {' '.join(HYPERVISORS)}\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User root\n\n"
                      + sshd.client_config(sshd.client_key))
    return config


def inventory(path: Path, sshd: Sshd) -> Path:
    """localhost (the admin machine, where the play runs) and the hypervisors at 127.0.0.1 on the sshd's port."""
    hypervisors = "".join(f"{name} ansible_host=127.0.0.1 ansible_port={sshd.port} ansible_user=root\n"
                          for name in HYPERVISORS)
    path.write_text(f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n\n"
                    f"[hypervisors]\n{hypervisors}")
    return path


def test_readme_ansible_play_reports_each_vm_that_is_not_running(playbook: str, sshd: Sshd,  # noqa: F811
                                                                 vm_factory, tmp_path: Path):
    line, play = readme_play()
    assert play.count(FLEET_PLACEHOLDER) == 1, \
        f"qmpctl-remote.md:{line}: the play no longer asks for {FLEET_PLACEHOLDER}*"
    assert all(re.search(rf"\b{name}\b", play) for name in HYPERVISORS), f"qmpctl-remote.md:{line}: not {HYPERVISORS}"

    fleet = tmp_path / "fleet"
    fleet.mkdir()
    web, db = vm_factory(), vm_factory()
    with RawQmp(web.qmp2_path) as qmp:
        qmp.cmd("cont")
    with RawQmp(db.qmp2_path) as qmp:  # paused, not "prelaunch" as -S leaves it
        qmp.cmd("cont")
        qmp.cmd("stop")
    (fleet / "web.sock").symlink_to(web.qmp_path)
    (fleet / "db.sock").symlink_to(db.qmp_path)
    stale_socket(fleet / "gone.sock")

    (tmp_path / "play.yml").write_text(play.replace(FLEET_PLACEHOLDER, f"{fleet}/"))
    home = tmp_path / "home"
    home.mkdir()
    env = shell_env(qmpctl_on_path(tmp_path / "bin"), home, {
        "LC_ALL": "C.UTF-8",  # ansible-core refuses to run in a locale that is not UTF-8
        "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg"),  # none: no ansible.cfg of this machine's applies
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
    })
    env["PATH"] = f"{sshd.ssh_wrapper(client_config(sshd)).parent}:{env['PATH']}"
    before = sshd.accepted()

    started = time.monotonic()
    ran = subprocess.run([playbook, "-i", str(inventory(tmp_path / "inventory", sshd)), "play.yml"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=PLAY_TIMEOUT)
    seconds = time.monotonic() - started
    shown = f"qmpctl-remote.md:{line}: ansible-playbook exited {ran.returncode}\n{ran.stdout}\n{ran.stderr}"
    assert ran.returncode == 0, shown
    assert re.search(r"^localhost\s+: ok=2\s+changed=0\s+unreachable=0\s+failed=0", ran.stdout, re.M), shown

    reported = sorted(re.findall(r'^\s*"msg": "(.*)"$', ran.stdout, re.M))
    paused = [f"ssh://root@{name}{fleet}/db.sock: paused" for name in HYPERVISORS]
    assert [message for message in reported if message.endswith(": paused")] == paused, shown
    gone = [message for message in reported if "/gone.sock: " in message]
    assert [message.split(": ")[0] for message in gone] == [f"ssh://root@{name}{fleet}/gone.sock"
                                                            for name in HYPERVISORS], shown
    assert all(message.split(": ", 1)[1] for message in gone), "an error without its description: " + shown
    assert len(reported) == 2 * len(HYPERVISORS), "the running VM is not reported: " + shown
    assert sshd.accepted() - before >= len(HYPERVISORS), "qmpctl did not log in to each hypervisor"
    print(f"ansible-playbook ran the manual's play in {seconds:.1f} s")
