"""A real OpenSSH server on 127.0.0.1 for the "remote host" tests, and the client set-up to reach it.

Everything is throw-away and lives in one folder: host key, client key,
``sshd_config`` (key login only, root allowed, no PAM), a client ``config``
with its own ``known_hosts``. qmpctl gets the client set-up the way a user
would give it: ``QMPCTL_SSH="ssh -F FOLDER/config"``. sshd logs at VERBOSE,
so tests count the SSH connections it accepted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from support.qemu import free_tcp_port
from support.waits import wait_for

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "qmpctl-test", "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)


class Sshd:
    """``sshd -D`` on a free loopback port; :meth:`stop` ends it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_tcp_port()
        self.log = folder / "sshd.log"
        self.client_key = folder / "client_key"
        self.wrong_key = folder / "wrong_key"
        self.config = folder / "config"
        self.known_hosts = folder / "known_hosts"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def destination(self) -> str:
        """What ``ssh://`` addresses put before the path."""
        return f"root@127.0.0.1:{self.port}"

    def url(self, path: Path | str) -> str:
        return f"ssh://{self.destination}{path}"

    def env(self, config: Path | None = None) -> dict[str, str]:
        """The environment that points qmpctl's ssh at this server's client set-up."""
        return {"QMPCTL_SSH": f"ssh -F {config or self.config}"}

    def start(self) -> "Sshd":
        host_key = self.folder / "host_key"
        for key in (host_key, self.client_key, self.wrong_key):
            _keygen(key)
        shutil.copy(self.client_key.with_suffix(".pub"), self.folder / "authorized_keys")
        (self.folder / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
            f"AuthorizedKeysFile {self.folder}/authorized_keys\nPidFile {self.folder}/sshd.pid\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "UsePAM no\nStrictModes no\nLogLevel VERBOSE\nAllowStreamLocalForwarding yes\n")
        host_public = " ".join(host_key.with_suffix(".pub").read_text().split()[:2])
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_public}\n")
        self.config.write_text(self.client_config(self.client_key))
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self.proc = subprocess.Popen([SSHD, "-D", "-f", str(self.folder / "sshd_config"), "-E", str(self.log)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''} "
                                   f"{self.log_text()}")
            return "Server listening" in self.log_text()

        try:
            wait_for(listening, "sshd listening", 10)
        except TimeoutError:
            raise TimeoutError(f"sshd did not start: {self.log_text()}") from None
        return self

    def client_config(self, key: Path) -> str:
        return (f"Host *\n  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {self.known_hosts}\n"
                "  StrictHostKeyChecking yes\n  GlobalKnownHostsFile /dev/null\n")

    def wrong_key_config(self) -> Path:
        path = self.folder / "config-wrong-key"
        path.write_text(self.client_config(self.wrong_key))
        return path

    def ssh_wrapper(self, config: Path | None = None) -> Path:
        """An ``ssh`` (alone in its folder, so it can go first on PATH) that uses this client set-up.

        What ~/.ssh/config would do for a user. Also libvirt's ``command=`` for qemu+ssh:// URIs:
        libvirt 9.0's ssh transport passes ``keyfile`` on but ignores ``known_hosts`` (only its
        libssh/libssh2 transports read it).
        """
        config = config or self.config
        path = self.folder / f"bin-{config.name}" / "ssh"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            path.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {config} "$@"\n')
            path.chmod(0o755)
        return path

    def also_known_as(self, host: str) -> str:
        """Let the client accept this server under another host name too; returns ``root@HOST:PORT``."""
        host_key = self.known_hosts.read_text().split(maxsplit=1)[1]
        with open(self.known_hosts, "a") as known:
            known.write(f"[{host}]:{self.port} {host_key}")
        return f"root@{host}:{self.port}"

    def libvirt_uri(self, transport: str = "ssh") -> str:
        """``qemu+ssh://root@127.0.0.1:PORT/system?...`` reaching the system libvirtd through this sshd."""
        base = f"qemu+{transport}://{self.destination}/system?keyfile={self.client_key}"
        if transport == "ssh":
            return f"{base}&command={self.ssh_wrapper()}"
        return f"{base}&known_hosts={self.known_hosts}&sshauth=privkey"

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def accepted(self) -> int:
        """SSH connections that logged in so far."""
        return self.log_text().count("Accepted publickey for root")

    def commands(self) -> int:
        """Remote commands run so far (each ``ssh HOST COMMAND`` through a master is one round trip)."""
        return self.log_text().count("Starting session: command for root")

    def disconnected(self) -> int:
        return self.log_text().count("Disconnected from user root")

    def wait_all_closed(self, timeout: float = 10) -> None:
        """Until every accepted connection has ended again (qmpctl stops its master at exit)."""
        try:
            wait_for(lambda: self.disconnected() >= self.accepted(), "every SSH connection closed", timeout, pause=0.02)
        except TimeoutError:
            raise AssertionError(f"{self.accepted() - self.disconnected()} SSH connection(s) still open") from None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A real sshd for the whole module (a required peer: missing it fails under CI=true)."""
    if not os.path.exists(SSHD) or shutil.which("ssh") is None:
        if os.environ.get("CI") == "true":
            raise RuntimeError("openssh-server and openssh-client are required (tests/setup-host installs them)")
        pytest.skip("openssh-server is not installed (run tests/setup-host)")
    server = Sshd(tmp_path_factory.mktemp("sshd")).start()
    try:
        yield server
    finally:
        server.stop()
