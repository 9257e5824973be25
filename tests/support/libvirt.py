"""A real libvirtd and throw-away TCG domains for the ``--domain`` tests.

Everything here talks to libvirt through ``virsh``, never through qmpctl, so
the tests compare qmpctl with the tool it replaces.

Facts about this kind of host (Debian 12, libvirt 9.0, no AppArmor, DAC
security driver with dynamic_ownership) that the helpers work around:

- QEMU runs as ``libvirt-qemu`` (64055). libvirt chowns a domain's own disk
  images to it at start, but the user must be able to *traverse* the image's
  directory: a pytest ``tmp_path`` (under a 0700 directory) fails with
  "Cannot access storage file ... (as uid:64055, gid:64055): Permission
  denied". Images therefore live in ``/var/lib/libvirt/images/qmpctl-test-*``.
- Files QEMU opens later through raw QMP (hotplug, backup targets) are not
  relabelled by libvirt at all: they must be usable by ``libvirt-qemu`` already.
- When ``/dev/kvm`` exists but ``libvirt-qemu`` cannot open it (a sandbox whose
  KVM node is root-only, without udev), libvirt probes QEMU *with* KVM and then
  finds "KVM was enabled when probing, but it is not available now": its
  capability cache is thrown away and re-probed on every lookup, and starting one
  domain takes 1-2 minutes instead of under a second. Giving the node Debian's
  usual owner (group ``kvm``, mode 0660, what udev does on a normal host) ends
  that; domains of type ``qemu`` still run under TCG.
"""

from __future__ import annotations

import fcntl
import grp
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator
from xml.sax.saxutils import quoteattr

import pytest

from support.waits import wait_for

SYSTEM_URI = "qemu:///system"
IMAGES_ROOT = Path("/var/lib/libvirt/images")
TEST_PREFIX = "qmpctl-test-"
QEMU_USER = "libvirt-qemu"
KVM_NODE = Path("/dev/kvm")
LIBVIRT_SOCKET = Path("/run/libvirt/libvirt-sock")
VIRTLOGD_SOCKET = Path("/run/libvirt/virtlogd-sock")
STARTER_LOCK = Path("/run/lock/qmpctl-tests-libvirtd.lock")
ID_PATTERN = re.compile(r'"id": ?"libvirt-\d+"')


class LibvirtUnavailable(RuntimeError):
    """libvirtd cannot run here; the reason is the skip message."""


def virsh(*args: str, uri: str = SYSTEM_URI, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """``virsh -q -c URI ARGS``; stdout/stderr as text exactly as written, CRs kept.

    ``-q`` drops the blank line virsh adds after each command.
    """
    proc = subprocess.run(["virsh", "-q", "-c", uri, *args], capture_output=True, timeout=timeout)
    proc.stdout = proc.stdout.decode("utf-8")
    proc.stderr = proc.stderr.decode("utf-8", "replace")
    if check and proc.returncode != 0:
        raise RuntimeError(f"virsh {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def strip_libvirt_id(text: str) -> str:
    """virsh's reply text without libvirt's ``"id": "libvirt-N"`` member, wherever it stands."""
    text, count = re.subn(r',\s*' + ID_PATTERN.pattern, "", text)
    if not count:
        text, count = re.subn(ID_PATTERN.pattern + r',\s*', "", text)
    if count != 1:
        raise AssertionError(f"expected exactly one libvirt id in {text!r}")
    return text


def socket_is_served(path: Path) -> bool:
    """Whether a process accepts connections on the unix socket ``path`` (a stale file does not)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(5)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _daemon_answers() -> bool:
    try:
        return virsh("version", check=False, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_libvirtd(timeout: float = 60) -> None:
    """Make ``qemu:///system`` usable: start virtlogd and libvirtd as root when they are not running."""
    if shutil.which("virsh") is None or shutil.which("libvirtd") is None:
        raise LibvirtUnavailable("libvirt-daemon-system and libvirt-clients are not installed (run tests/setup-host)")
    if not _daemon_answers():
        if os.geteuid() != 0:
            raise LibvirtUnavailable("libvirtd is not running and only root can start it")
        # Test workers run side by side: one of them starts the daemons.
        with open(STARTER_LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            # A socket file and pid file may be left from a daemon of an earlier
            # boot (a container restored from a snapshot keeps /run): only a
            # socket that accepts a connection means the daemon is there.
            if not socket_is_served(VIRTLOGD_SOCKET):
                subprocess.run(["virtlogd", "-d"], check=False, timeout=30)
            if not socket_is_served(LIBVIRT_SOCKET):
                subprocess.run(["libvirtd", "-d"], check=False, timeout=30)
            try:
                wait_for(_daemon_answers, f"libvirtd answering on {LIBVIRT_SOCKET}", timeout, pause=0.5)
            except TimeoutError:
                raise LibvirtUnavailable(f"libvirtd did not answer on {LIBVIRT_SOCKET} within {timeout:g}s") from None
    fix_kvm_node_for_libvirt()


def _user_can_open(path: Path, user: str) -> bool:
    entry = pwd.getpwnam(user)
    groups = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    mode = path.stat()
    if mode.st_uid == entry.pw_uid:
        return mode.st_mode & 0o600 == 0o600
    if mode.st_gid in groups:
        return mode.st_mode & 0o060 == 0o060
    return mode.st_mode & 0o006 == 0o006


def fix_kvm_node_for_libvirt() -> str | None:
    """Give /dev/kvm Debian's usual group and mode when QEMU's user cannot open it (see the module doc).

    Returns what was changed, or None.
    """
    if os.geteuid() != 0 or not KVM_NODE.exists():
        return None
    try:
        if _user_can_open(KVM_NODE, QEMU_USER):
            return None
        kvm_gid = grp.getgrnam("kvm").gr_gid
    except KeyError:
        return None
    os.chown(KVM_NODE, -1, kvm_gid)
    os.chmod(KVM_NODE, 0o660)
    return f"{KVM_NODE}: group kvm, mode 0660"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_test_domains() -> None:
    """Tear down test domains and image folders left by test runs that died (their pid is gone)."""
    listing = virsh("list", "--all", "--name", check=False).stdout.split()
    for name in listing:
        found = re.fullmatch(re.escape(TEST_PREFIX) + r"(\d+)-\w+", name)
        if found and not _pid_alive(int(found.group(1))):
            virsh("destroy", name, check=False)
            virsh("undefine", name, "--nvram", check=False)
    for folder in IMAGES_ROOT.glob(f"{TEST_PREFIX}*"):
        found = re.match(re.escape(TEST_PREFIX) + r"(\d+)-", folder.name)
        if found and not _pid_alive(int(found.group(1))):
            shutil.rmtree(folder, ignore_errors=True)


def domain_xml(name: str, disk: Path, qemu_args: tuple[str, ...] = (), memory_mb: int = 64) -> str:
    """A minimal TCG domain: one qcow2 virtio disk, no graphics, no video, no balloon, no USB.

    ``qemu_args`` go to QEMU as they are, through libvirt's ``<qemu:commandline>``.
    """
    commandline = ""
    if qemu_args:
        args = "".join(f"\n    <qemu:arg value={quoteattr(arg)}/>" for arg in qemu_args)
        commandline = f"\n  <qemu:commandline>{args}\n  </qemu:commandline>"
    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mb}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='none'/>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>{commandline}
</domain>
"""


class TestDomain:
    """A defined, running libvirt domain with its own image folder; :meth:`remove` undoes everything."""

    __test__ = False  # not a pytest class

    def __init__(self, label: str = "vm") -> None:
        self.name = f"{TEST_PREFIX}{os.getpid()}-{label}{uuid.uuid4().hex[:6]}"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=IMAGES_ROOT))
        os.chmod(self.workdir, 0o755)  # libvirt-qemu must traverse it
        self.disk = self.workdir / "disk.qcow2"
        self.uri = SYSTEM_URI

    def qemu_folder(self, name: str) -> Path:
        """A folder in the workdir where QEMU (as libvirt-qemu) may create files and sockets."""
        folder = self.workdir / name
        folder.mkdir(exist_ok=True)
        return self.qemu_writable(folder)

    def qemu_writable(self, path: Path) -> Path:
        """Hand a file QEMU will open itself (hotplug, backup) to QEMU's user, as libvirt would not."""
        entry = pwd.getpwnam(QEMU_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        return path

    def start(self, xml: str | None = None, disk_size: str = "64M", qemu_args: tuple[str, ...] = ()) -> "TestDomain":
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(self.disk), disk_size], check=True)
        xml_path = self.workdir / "domain.xml"
        xml_path.write_text(xml or domain_xml(self.name, self.disk, qemu_args))
        virsh("define", str(xml_path))
        try:
            virsh("start", self.name)
        except BaseException:
            self.remove()
            raise
        return self

    def state(self) -> str:
        return virsh("domstate", self.name).stdout.strip()

    def monitor(self, *args: str) -> subprocess.CompletedProcess:
        """``virsh qemu-monitor-command`` for this domain: the reference output."""
        return virsh("qemu-monitor-command", self.name, *args)

    def remove(self) -> None:
        virsh("destroy", self.name, check=False)
        virsh("undefine", self.name, "--nvram", check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


# --- pytest fixtures (import them into a test module to use them) -----------------


@pytest.fixture(scope="module")
def libvirtd() -> None:
    """A running system libvirtd (started if need be), with leftovers of dead test runs removed."""
    try:
        ensure_libvirtd()
    except LibvirtUnavailable as exc:
        pytest.skip(f"libvirtd cannot run here: {exc}")
    remove_stale_test_domains()


@pytest.fixture(scope="module")
def domain(libvirtd: None) -> Iterator[TestDomain]:
    """One running TCG domain without an OS for the whole test module; removed afterwards."""
    started = TestDomain("mon").start()
    try:
        yield started
    finally:
        started.remove()
