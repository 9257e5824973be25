"""Unix sockets on other machines, reached through the system's ``ssh`` client.

Nothing but OpenSSH is needed on the remote host. Per host, qmpctl starts one
master connection (``ssh -M -N -f``, ControlPath in a private folder) and asks
it for a local forward per socket (``ssh -O forward -L LOCAL:REMOTE``):
connecting to the local end opens a ``direct-streamlocal`` channel to the
remote socket, so the QMP and agent code talk to a plain local unix socket and
fifty VMs on one host cost one SSH handshake. (``ssh -W`` cannot be used: the
OpenSSH 9.2 client ignores ``-W`` with a socket path.)

Remote globs, file checks and failure diagnoses are ``sh -c`` scripts run
through the same master. ``BatchMode=yes``: ssh never waits for a password or
a host-key answer. Every step is bounded by the caller's :class:`Deadline`;
ssh children are killed and reaped on every path, and the masters are told to
exit (and the folder removed) when qmpctl exits. ``ControlPersist`` makes a
master that outlives a killed qmpctl go away by itself once idle.

``QMPCTL_SSH`` replaces the ``ssh`` command, like ``GIT_SSH_COMMAND``: e.g.
``QMPCTL_SSH="ssh -F /etc/qmpctl/ssh_config"``. Its options win over qmpctl's.
"""

from __future__ import annotations

import atexit
import itertools
import math
import os
import shlex
import shutil
import subprocess
import tempfile
import threading

from qmpctl.timing import (CONTROL_PERSIST_SECONDS, SSH_CHECK_SECONDS, SSH_EXIT_SECONDS, SSH_RELEASE_SECONDS,
                           SSH_START_GRACE)
from qmpctl.wire.address import Address, SshHost
from qmpctl.deadline import Deadline
from qmpctl.errors import ConnectError, ConnectionClosed, Interrupted, QmpctlError, UsageError
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.transport import Connection, _connect_unix

if TYPE_CHECKING:
    from typing import Any, Optional, Sequence

SSH_ENV = "QMPCTL_SSH"
SSH_FAILED = 255
"""ssh's own exit status: no connection, or the connection was lost; a remote command's is its own."""
NOISE = ("Warning: Permanently added", "debug", "Transferred:", "Bytes per second", "Exit request sent",
         "Authenticated to", "** WARNING", "** This session", "** The server", "** upgraded")

KINDS_SCRIPT = (
    'for p; do if [ -S "$p" ]; then echo socket; elif [ -b "$p" ]; then echo block; '
    'elif [ -d "$p" ]; then echo dir; elif [ -f "$p" ]; then echo file; '
    'elif [ -e "$p" ] || [ -L "$p" ]; then echo other; else echo missing; fi; done')
"""One line per path: what it is on the remote host (``missing`` also when it cannot be seen)."""
GLOB_SCRIPT = """IFS=''; for p in $1; do if [ -e "$p" ] || [ -L "$p" ]; then printf '%s\\0' "$p"; fi; done"""
"""Expand the pattern $1 (IFS empty: no word splitting, only pathname expansion); NUL after each match."""
HEAD_SCRIPT = 'dd if="$1" bs="$2" count=1 2>/dev/null'
REMOVE_SCRIPT = 'rm -f -- "$1"'


def ssh_command() -> list[str]:
    """The ssh client and the user's own options (``QMPCTL_SSH``), before qmpctl's."""
    words = shlex.split(os.environ.get(SSH_ENV, "") or "ssh")
    return words or ["ssh"]


def _destination(host: SshHost) -> list[str]:
    args = ["-l", host.user] if host.user else []
    if host.port:
        args += ["-p", str(host.port)]
    return args + [host.host]


def summarise(stderr: str, host: SshHost, returncode: int) -> str:
    """ssh's diagnostics as one line that names the failure: unreachable, refused login, unknown host key."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.strip().startswith(NOISE)]
    text = " ".join(lines)
    last = lines[-1] if lines else f"ssh exited with {returncode}"
    if "Could not resolve hostname" in text:
        return f"cannot reach {host}: unknown host name ({last})"
    for reason in ("Connection refused", "No route to host", "Network is unreachable", "Connection timed out"):
        if reason in text:
            return f"cannot reach {host}: {reason.lower()} (is it up, and is sshd on that port?)"
    if "Permission denied" in text or "Too many authentication failures" in text:
        return (f"{host} refused the SSH authentication ({last}): qmpctl runs ssh with BatchMode=yes, so it "
                "needs a key (ssh-agent, IdentityFile) this user may log in with; it never asks for a password")
    if "Host key verification failed" in text or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        return (f"the SSH host key of {host} is unknown or has changed (Host key verification failed): "
                "check it and add it to known_hosts (e.g. connect once with ssh)")
    if "kex_exchange_identification" in text or "Connection closed by" in text or "Connection reset" in text:
        return f"{host} closed the SSH connection during the handshake ({last})"
    return f"ssh to {host} failed: {last}"


_children: set["subprocess.Popen[Any]"] = set()
"""ssh processes still running: an interrupt in one fleet thread leaves the others' to :func:`close_all`."""
_children_lock = threading.Lock()
_closing = threading.Event()
"""Set by :func:`close_all`: a fleet thread still running then starts no new ssh."""
_starting = [0]
"""How many ssh children are being started right now (forked, not yet recorded): :func:`close_all` waits for them."""
_started = threading.Condition(_children_lock)


def _spawn(argv: list[str], at_exit: bool = False, **kwargs: Any) -> "subprocess.Popen[bytes]":
    """Start an ssh step, recorded until reaped; none but ``at_exit`` ones once :func:`close_all` runs."""
    with _children_lock:
        if _closing.is_set() and not at_exit:
            raise Interrupted("qmpctl is exiting: no new SSH step")
        _starting[0] += 1
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    proc: Optional[subprocess.Popen[bytes]] = None
    try:
        proc = subprocess.Popen(argv, **kwargs)
    except OSError as exc:
        raise ConnectError(f"cannot run {argv[0]}: {exc.strerror or exc} (install OpenSSH's client, "
                           f"or point {SSH_ENV} at it)") from exc
    finally:
        with _children_lock:  # recorded before close_all looks: it waits for every child being started
            _starting[0] -= 1
            if proc is not None:
                _children.add(proc)
                if _closing.is_set() and not at_exit:  # close_all is running: it kills and reaps this one
                    proc.kill()
            _started.notify_all()
    return proc


def _kill(proc: "subprocess.Popen[Any]") -> None:
    """Kill and reap an ssh child; nothing of it outlives the step that started it."""
    if proc.poll() is None:
        try:
            proc.kill()
        except OSError:
            pass
    try:
        proc.wait()
    except BaseException:  # a second Ctrl-C: the child is killed already, reaping is not worth hanging for
        pass
    _reaped(proc)


def _reaped(proc: "subprocess.Popen[Any]") -> None:
    with _children_lock:
        _children.discard(proc)


def _communicate(argv: list[str], deadline: Deadline, waiting_for: str, hint: str = "",
                 data: Optional[bytes] = None) -> "subprocess.CompletedProcess[bytes]":
    """Run a short ssh step (mux command or remote script) within the deadline; output captured, ``data``
    its standard input."""
    stdin = subprocess.DEVNULL if data is None else subprocess.PIPE
    proc = _spawn(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(data, timeout=deadline.remaining(waiting_for, hint))
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise deadline.exceeded(waiting_for, hint) from None
    except BaseException:
        _kill(proc)
        raise
    _reaped(proc)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


class _Master:
    """One SSH connection to a host, shared by every channel, listing and file check of this call."""

    def __init__(self, host: SshHost, folder: str, number: int) -> None:
        self.host = host
        self.control = os.path.join(folder, f"m{number}")
        self.folder = folder
        self.lock = threading.Lock()
        self.ready = False
        self.failure: Optional[QmpctlError] = None
        self.started = False

    def _ssh(self, *options: str, command: Optional[str] = None) -> list[str]:
        remote = ["--", command] if command is not None else []
        return [*ssh_command(), "-o", "BatchMode=yes", "-S", self.control, *options, *_destination(self.host),
                *remote]

    def ensure(self, deadline: Deadline) -> None:
        """Connect and authenticate once; later callers (fleet threads) reuse it, or its failure."""
        waiting_for = f"an SSH connection to {self.host}"
        if not self.lock.acquire(timeout=deadline.remaining(waiting_for)):
            raise deadline.exceeded(waiting_for)
        try:
            if self.failure is not None:
                raise type(self.failure)(self.failure.message)
            if not self.ready:
                self._start(deadline, waiting_for)
        finally:
            self.lock.release()

    def _start(self, deadline: Deadline, waiting_for: str) -> None:
        error_path = self.control + ".err"
        hint = "the host accepted no SSH session in time: down, filtered, or not an SSH server"
        # ConnectTimeout only backs the deadline up, for an ssh that outlives qmpctl (SIGKILL).
        connect_timeout = math.ceil(deadline.remaining(waiting_for, hint)) + 1
        argv = self._ssh("-M", "-N", "-f", "-o", f"ControlPersist={CONTROL_PERSIST_SECONDS}",
                         "-o", "ServerAliveInterval=15", "-o", f"ConnectTimeout={connect_timeout}")
        with open(error_path, "wb") as errors:
            # With -f, ssh forks into the background once authenticated: the foreground's exit is
            # the "ready" signal, and its exit status says whether the connection stands.
            try:
                proc = _spawn(argv, stdout=subprocess.DEVNULL, stderr=errors)
            except ConnectError as exc:
                self.failure = exc
                raise
        self.started = True
        try:
            returncode = proc.wait(timeout=deadline.remaining(waiting_for, hint))
        except subprocess.TimeoutExpired:
            _kill(proc)
            self.failure = deadline.exceeded(waiting_for, hint)
            raise self.failure from None
        except BaseException:
            _kill(proc)
            raise
        _reaped(proc)
        if returncode != 0:
            with open(error_path, "rb") as errors:
                stderr = errors.read(64 * 1024).decode("utf-8", "replace")
            self.failure = ConnectError(summarise(stderr, self.host, returncode))
            raise self.failure
        self.ready = True

    def forward(self, path: str, local: str, deadline: Deadline) -> None:
        """Ask the master to forward the local socket ``local`` to ``path`` on the host."""
        if ":" in path:
            raise UsageError(f"ssh cannot forward a socket whose path contains ':' ({path} on {self.host})")
        done = _communicate(self._ssh("-O", "forward", "-L", f"{local}:{path}"), deadline,
                            f"ssh to forward {path} on {self.host}")
        if done.returncode != 0:
            raise ConnectError(f"cannot forward {path} on {self.host}: "
                               f"{summarise(done.stderr.decode('utf-8', 'replace'), self.host, done.returncode)}")

    def _script(self, script: str, args: Sequence[str]) -> list[str]:
        remote = " ".join(["sh", "-c", shlex.quote(script), "sh", *(shlex.quote(arg) for arg in args)])
        return self._ssh("-o", "ControlMaster=no", "-T", command=remote)

    def shell(self, script: str, args: list[str], deadline: Deadline, what: str) -> bytes:
        """Run ``sh -c SCRIPT sh ARGS...`` on the host through the master; its stdout."""
        done = self.run(script, args, deadline, what)
        if done.returncode != 0:
            raise ConnectError(f"cannot {what} on {self.host}: "
                               f"{summarise(done.stderr.decode('utf-8', 'replace'), self.host, done.returncode)}")
        return done.stdout

    def run(self, script: str, args: Sequence[str], deadline: Deadline, what: str,
            data: Optional[bytes] = None) -> "subprocess.CompletedProcess[bytes]":
        """``sh -c SCRIPT sh ARGS...`` on the host, ``data`` on its stdin; the script's own exit status is the
        caller's to judge, ssh's (255: no connection, lost connection) is :class:`ConnectError`."""
        self.ensure(deadline)
        done = _communicate(self._script(script, args), deadline, f"{self.host} to {what}", data=data)
        if done.returncode == SSH_FAILED:
            raise ConnectError(f"cannot {what} on {self.host}: "
                               f"{summarise(done.stderr.decode('utf-8', 'replace'), self.host, done.returncode)}")
        return done

    def hold(self, script: str, args: Sequence[str], deadline: Deadline, what: str) -> "Held":
        """Start a script that keeps running on the host (holding a lock) until :meth:`Held.release`, or until
        qmpctl ends: its stdin then closes, and so does the channel when this process dies."""
        self.ensure(deadline)
        # A session of its own: a Ctrl-C at the terminal reaches qmpctl, which lets go when its cleanup is
        # done, not the holder, which would let go at once.
        proc = _spawn(self._script(script, args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, start_new_session=True)
        held = Held(proc, self.host, what)
        try:
            held.read_line(deadline)
        except BaseException:
            _kill(proc)
            raise
        return held

    def alive(self) -> bool:
        """Whether the master still holds its connection (``ssh -O check``, briefly bounded)."""
        try:
            done = _communicate(self._ssh("-O", "check"), Deadline(SSH_CHECK_SECONDS),
                                f"the SSH master for {self.host}")
        except QmpctlError:
            return False
        return done.returncode == 0

    def stop(self) -> None:
        """``ssh -O exit``: the master closes its connection; failures are left to ControlPersist."""
        if not self.started:
            return
        try:
            proc = _spawn(self._ssh("-O", "exit"), at_exit=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
        except ConnectError:
            return
        try:
            proc.wait(timeout=SSH_EXIT_SECONDS)
        except BaseException:
            _kill(proc)
        _reaped(proc)


class Held:
    """A script running on the host through the master, holding something (a lock) while it runs."""

    def __init__(self, proc: "subprocess.Popen[bytes]", host: SshHost, what: str) -> None:
        self.proc = proc
        self.host = host
        self.what = what
        self.line = ""
        """The first line the script printed: what it says it holds ('' when it ended without a word)."""
        self.rest = b""
        """What it printed after that line, so far."""

    def read_line(self, deadline: Deadline) -> None:
        """Wait (within ``deadline``) for the script's first line, or its end; what follows stays in :attr:`rest`."""
        while b"\n" not in self.rest and self.read_more(deadline):
            pass
        line, _, self.rest = self.rest.partition(b"\n")
        self.line = line.decode("utf-8", "replace").strip()

    def read_more(self, deadline: Deadline) -> bool:
        """Add what the script printed next to :attr:`rest` (waiting within ``deadline``); False at its end."""
        import select

        assert self.proc.stdout is not None
        waiting_for = f"{self.host} to {self.what}"
        ready, _, _ = select.select([self.proc.stdout], [], [], deadline.remaining(waiting_for))
        if not ready:
            raise deadline.exceeded(waiting_for)
        chunk = os.read(self.proc.stdout.fileno(), 65536)
        self.rest += chunk
        return bool(chunk)

    def ended(self, deadline: Deadline) -> tuple[int, str]:
        """For a script that ended without its line: exit status and stderr (ssh's 255 is ConnectError)."""
        try:
            code = self.proc.wait(timeout=deadline.remaining(f"{self.host} to {self.what}"))
        except subprocess.TimeoutExpired:
            raise deadline.exceeded(f"{self.host} to {self.what}") from None
        assert self.proc.stderr is not None
        stderr = self.proc.stderr.read(64 * 1024).decode("utf-8", "replace")
        self.release()
        if code == SSH_FAILED:
            raise ConnectError(f"cannot {self.what} on {self.host}: {summarise(stderr, self.host, code)}")
        return code, stderr

    def release(self) -> None:
        """Close the script's stdin, so it ends (and lets go); killed when it takes longer than a moment."""
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        try:
            self.proc.wait(timeout=SSH_RELEASE_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        finally:  # killed on every path; a Ctrl-C meanwhile still reaches the caller
            _kill(self.proc)


UNIX_PATH_MAX = 107
"""sun_path holds 108 bytes including the terminating NUL."""
SOCKET_NAME_ROOM = 24
"""What goes after the folder: "/m0", and the ".XXXXXXXXXXXXXXXX" ssh appends while it binds the control socket."""


def _private_folder() -> str:
    """A new folder for control and forwarded sockets, short enough for their paths.

    A long TMPDIR (a test runner's, a CI job's) would push the socket paths past
    what a unix socket can name, and ssh would refuse to listen; /tmp then serves.
    """
    for parent in (tempfile.gettempdir(), "/tmp"):
        if len(os.fsencode(parent)) + len("/qmpctl-ssh-XXXXXXXX") + SOCKET_NAME_ROOM <= UNIX_PATH_MAX:
            return tempfile.mkdtemp(prefix="qmpctl-ssh-", dir=parent)
    return tempfile.mkdtemp(prefix="qmpctl-ssh-", dir="/tmp")


class _Registry:
    """The masters of this process and their private folder, created on first use, removed at exit."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.masters: dict[SshHost, _Master] = {}
        self.folder: Optional[str] = None
        self.numbers = itertools.count()

    def master(self, host: SshHost) -> _Master:
        with self.lock:
            if self.folder is None:
                self.folder = _private_folder()
                atexit.register(close_all)
            master = self.masters.get(host)
            if master is None:
                master = self.masters[host] = _Master(host, self.folder, next(self.numbers))
            return master

    def local_path(self) -> str:
        assert self.folder is not None
        with self.lock:
            return os.path.join(self.folder, f"s{next(self.numbers)}")


_registry = _Registry()


def close_all() -> None:
    """Stop every master this process started and remove the folder of control and forwarded sockets.

    Shielded: a Ctrl-C meanwhile waits (each step is bounded), so no connection or folder is left.
    """
    from qmpctl.signals import shielded

    with shielded():
        _close_all()


def _close_all() -> None:
    with _registry.lock:
        masters = list(_registry.masters.values())
        folder = _registry.folder
        _registry.masters.clear()
        _registry.folder = None
    with _children_lock:
        _closing.set()
        _started.wait_for(lambda: _starting[0] == 0, timeout=SSH_START_GRACE)  # a fleet thread's fork and exec
        children = list(_children)
    try:
        for proc in children:  # steps of fleet threads an interrupt left running
            _kill(proc)
        for master in masters:
            master.stop()
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _remote_kinds(master: _Master, paths: list[str], deadline: Deadline) -> list[str]:
    out = master.shell(KINDS_SCRIPT, paths, deadline, "check " + ", ".join(paths))
    kinds = out.decode("utf-8", "replace").split()
    if len(kinds) != len(paths):
        raise ConnectError(f"{master.host} answered a file check with {out[:200]!r}: is its shell a POSIX sh?")
    return kinds


class SshConnection(Connection):
    """A local forward of a remote socket; an end before the first byte is diagnosed on the host."""

    def __init__(self, sock: Any, address: Address, master: _Master) -> None:
        super().__init__(sock, address)
        self.master = master
        self._heard = False

    def _diagnose(self, error: ConnectionClosed, deadline: Deadline) -> QmpctlError:
        """Why the channel closed at once: ask the host what its ``path`` is (one more remote command)."""
        path = str(self.address.path)
        try:
            (kind,) = _remote_kinds(self.master, [path], deadline)
        except QmpctlError:
            return error
        host = self.master.host
        if kind == "missing":
            return ConnectError(f"no such socket on {host}: {path} (or the login user may not see it)")
        if kind != "socket":
            return ConnectError(f"{path} on {host} is not a socket (it is a {kind})")
        return ConnectError(f"{host} could not connect to its socket {path}: stale (is the VM still "
                            f"running?) or not allowed for the login user")

    def _explain(self, error: ConnectionClosed, deadline: Deadline) -> QmpctlError:
        """An end before the first byte: what the path is on the host; a later one: was it SSH that broke?"""
        if not self._heard:
            return self._diagnose(error, deadline)
        if self.master.alive():
            return error
        return ConnectionClosed(f"the SSH connection to {self.master.host} was lost ({error.message}); "
                                "the VM there may still be running, and anything it was doing with it",
                                sent=error.sent, received=error.received)

    def send(self, data: bytes, deadline: Deadline, what: str, fds: Sequence[int] = ()) -> None:
        try:
            super().send(data, deadline, what, fds)  # fds are refused: they cannot cross the SSH forward
        except ConnectionClosed as exc:
            raise self._explain(exc, deadline) from None

    def _fill(self, deadline: Deadline, waiting_for: str, hint: str) -> None:
        try:
            super()._fill(deadline, waiting_for, hint)
        except ConnectionClosed as exc:
            raise self._explain(exc, deadline) from None
        self._heard = True


def open_channel(address: Address, deadline: Deadline) -> Connection:
    """A connection to the unix socket ``address.path`` on ``address.via``, through its host's master."""
    assert address.via is not None and address.path is not None
    master = _registry.master(address.via)
    master.ensure(deadline)
    local = _registry.local_path()
    master.forward(address.path, local, deadline)
    sock = _connect_unix(local, deadline, f"a connection to {address}")
    return SshConnection(sock, address, master)


def expand_remote(address: Address, deadline: Deadline) -> list[Address]:
    """The paths the glob in ``address.path`` matches on its host, sorted; none is an error."""
    assert address.via is not None and address.path is not None
    master = _registry.master(address.via)
    out = master.shell(GLOB_SCRIPT, [address.path], deadline, f"list {address.path}")
    matches = sorted(name for name in out.decode("utf-8", "surrogateescape").split("\0") if name)
    if not matches:
        raise ConnectError(f"no socket matches {address.path} on {address.via}")
    return [address._replace(path=match) for match in matches]


class RemoteFiles:
    """The VM host's file system, as backup and hotplug-disk need to check it: through the same master."""

    def __init__(self, host: SshHost) -> None:
        self.host = host
        self.master = _registry.master(host)

    @property
    def side(self) -> str:
        """How messages say where a path is."""
        return f"on {self.host}"

    def kinds(self, paths: list[str], deadline: Deadline) -> list[str]:
        """``missing``, ``file``, ``dir``, ``block``, ``socket`` or ``other`` for each path."""
        return _remote_kinds(self.master, paths, deadline)

    def head(self, path: str, size: int, deadline: Deadline) -> bytes:
        """The first ``size`` bytes of ``path`` (fewer for a shorter file)."""
        return self.master.shell(HEAD_SCRIPT, [path, str(size)], deadline, f"read {path}")

    def remove(self, path: str, deadline: Deadline) -> None:
        self.master.shell(REMOVE_SCRIPT, [path], deadline, f"remove {path}")

