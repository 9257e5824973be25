"""``--domain``: the monitor and guest agent of a libvirt-managed VM, through libvirtd.

libvirtd holds the VM's QMP socket itself, so a direct client cannot use it;
libvirt passes a request on instead (``virDomainQemuMonitorCommand``,
``virDomainQemuAgentCommand``). The sessions here give every command the same
``execute(request, deadline)`` as the socket sessions, with libvirt's own reply
id removed, so output and exit codes do not depend on the way in.

libvirt-python is an optional extra and loads slowly, so it is imported only
here, only when ``--domain`` is used. Its C calls release the GIL but have no
timeouts of their own that follow ``--timeout`` (opening a remote URI, a busy
domain job lock, libvirt's own 5 s agent sync), so each one runs in a daemon
thread that the caller waits for no longer than the deadline allows.
"""

from __future__ import annotations

import json
import math
import queue
import re
import threading
from types import ModuleType
from typing import Any, Callable, NamedTuple, TypeVar

from qmpctl.timing import EVENT_POLL_SECONDS, NO_REPLY_GRACE_SECONDS
from qmpctl.wire.agent import SILENT_HINT, disabled_command_error, is_frozen
from qmpctl.deadline import Deadline
from qmpctl.errors import (ConnectError, ConnectionClosed, DeadlineExceeded, ProtocolError, QmpctlError,
                           UsageError, VmError)
from qmpctl.wire.qmp import checked_reply
from qmpctl.wire.request import Request
from qmpctl.wire import trace
from qmpctl.wire.session import AGENT, HERE, MONITOR, UNREACHABLE, HostFiles, WithoutEvents

DEFAULT_URI = "qemu:///system"
INSTALL_HINT = (
    "--domain needs libvirt-python: pip install 'qmpctl[libvirt]' (it compiles against the host's "
    "libvirt: on Debian first apt-get install libvirt-dev pkg-config gcc python3-dev), or use the "
    "distribution's build (Debian: apt-get install python3-libvirt) from a Python that can see it"
)
LOOPBACK_HOSTS = ("", "localhost", "127.0.0.1", "::1")
LIBVIRTD_HINT = "libvirtd is not answering"
MONITOR_HINT = "libvirtd or QEMU's monitor is busy or not answering"

LIBVIRT_STRING_MAX = 4 * 1024 * 1024
"""libvirt's RPC carries a command or a reply as one string of at most 4 MiB
(REMOTE_STRING_MAX); anything larger fails as "Unable to encode message payload"."""
TOO_LARGE_FOR_LIBVIRT = "Unable to encode message payload"

AGENT_COMMAND_ERROR = re.compile(r"unable to execute QEMU agent command '(?P<name>[^']*)': (?P<desc>.*)", re.S)
"""libvirt turns an agent's ``{"error": ...}`` into this text and drops the class."""

# Error codes by name, resolved against the installed libvirt (names are stable, numbers too,
# but a name missing from an old libvirt must not break the import).
_TIMEOUT_CODES = ("VIR_ERR_OPERATION_TIMEOUT", "VIR_ERR_AGENT_UNRESPONSIVE")
_UNREACHABLE_CODES = (
    "VIR_ERR_NO_DOMAIN", "VIR_ERR_OPERATION_INVALID", "VIR_ERR_SYSTEM_ERROR", "VIR_ERR_NO_CONNECT",
    "VIR_ERR_INVALID_CONN", "VIR_ERR_INVALID_DOMAIN", "VIR_ERR_AUTH_FAILED", "VIR_ERR_AUTH_CANCELLED",
    "VIR_ERR_AUTH_UNAVAILABLE", "VIR_ERR_ACCESS_DENIED", "VIR_ERR_OPERATION_DENIED", "VIR_ERR_RPC",
    "VIR_ERR_ARGUMENT_UNSUPPORTED", "VIR_ERR_NO_SUPPORT",
)

T = TypeVar("T")
_loaded: tuple[ModuleType, ModuleType] | None = None
_load_lock = threading.Lock()


def _ignore_error(context: object, error: object) -> None:
    """libvirt's default handler prints every error on stderr; qmpctl reports them itself."""


def load_libvirt() -> tuple[ModuleType, ModuleType]:
    """``(libvirt, libvirt_qemu)``, imported on first use; missing bindings are a usage error (exit 2)."""
    global _loaded
    with _load_lock:
        if _loaded is None:
            try:
                import libvirt
                import libvirt_qemu
            except ImportError as exc:
                raise UsageError(f"{INSTALL_HINT} [{exc}]") from None
            libvirt.registerErrorHandler(_ignore_error, None)
            _loaded = (libvirt, libvirt_qemu)
        return _loaded


def _codes(libvirt: ModuleType, names: tuple[str, ...]) -> set[int]:
    return {getattr(libvirt, name) for name in names if hasattr(libvirt, name)}


def _bounded(deadline: Deadline, waiting_for: str, hint: str, call: Callable[..., T], *args: Any) -> T:
    """Run a blocking libvirt call in a daemon thread; give up on it when the deadline ends.

    An abandoned call keeps running in its thread until libvirt returns; the
    process does not wait for it.
    """
    outcome: dict[str, Any] = {}  # "value": T or "error": BaseException

    def runner() -> None:
        try:
            outcome["value"] = call(*args)
        except BaseException as exc:  # handed to the waiting thread below
            outcome["error"] = exc

    worker = threading.Thread(target=runner, name="qmpctl-libvirt", daemon=True)
    worker.start()
    worker.join(deadline.remaining(waiting_for))
    if worker.is_alive():
        raise deadline.exceeded(waiting_for, hint)
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


def agent_error(message: str) -> VmError | None:
    """Recover the agent's error from libvirt's wording, or None when it is not an agent error.

    libvirt keeps only ``desc``. The class comes back where QEMU's dispatcher
    fixes the wording (unknown and disabled commands are ``CommandNotFound``);
    anything else is what the agent uses for nearly everything, ``GenericError``.
    """
    found = AGENT_COMMAND_ERROR.search(message)
    if found is None:
        return None
    desc = found.group("desc").strip()
    lowered = desc.lower()
    disabled_or_unknown = "has not been found" in lowered or "has been disabled" in lowered or "not allowed" in lowered
    return VmError("CommandNotFound" if disabled_or_unknown else "GenericError", desc)


def translate(libvirt: ModuleType, exc: Exception, what: str) -> QmpctlError:
    """Map a libvirtError to qmpctl's exit codes, keeping libvirt's own reason in the message."""
    if isinstance(exc, QmpctlError):
        return exc
    if not isinstance(exc, libvirt.libvirtError):
        raise exc
    code = exc.get_error_code()
    reason = (exc.get_error_message() or str(exc)).strip()
    if code in _codes(libvirt, _TIMEOUT_CODES):
        return DeadlineExceeded(f"{what}: {reason}")
    if TOO_LARGE_FOR_LIBVIRT in reason:
        return ProtocolError(f"{what}: {reason}: the reply is larger than libvirt passes on "
                             f"({LIBVIRT_STRING_MAX // (1024 * 1024)} MiB); for this, talk to the VM's socket "
                             "directly (-s/-a, see <qemu:commandline>)")
    if code in _codes(libvirt, _UNREACHABLE_CODES):
        return ConnectError(f"{what}: {reason}")
    if code == libvirt.VIR_ERR_INTERNAL_ERROR:
        error = agent_error(reason)
        if error is not None:
            return error
    return ProtocolError(f"{what}: libvirt failed: {reason}")


def _lookup(libvirt: ModuleType, connection: Any, name: str) -> Any:
    """Find a domain by id, UUID or name, in that order, like virsh does."""
    if name.isdigit():
        try:
            return connection.lookupByID(int(name))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
    if re.fullmatch(r"[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}", name):
        try:
            return connection.lookupByUUIDString(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
    return connection.lookupByName(name)


def uri_host(uri: str) -> str:
    """The host part of a libvirt URI (``driver[+transport]://[user@]host[:port]/path?query``), '' for none.

    Parsed by hand: ``urllib.parse`` costs more to import than this whole function is worth.
    """
    authority = uri.partition("://")[2].split("/", 1)[0].split("?", 1)[0]
    host = authority.rpartition("@")[2]
    if host.startswith("["):
        return host[1:host.find("]")].lower()
    return host.partition(":")[0].lower()


def split_domain(value: str) -> tuple[str | None, str]:
    """``-d`` value -> (URI or None, domain): ``qemu+ssh://hv1/system/vm1?keyfile=k`` names vm1 on that URI.

    The domain is the last path segment; the URI is the rest, query included. So one call can
    name domains on several hypervisors. Parsed by hand, like :func:`uri_host`.
    """
    if "://" not in value:
        return None, value
    scheme, _, rest = value.partition("://")
    rest, mark, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    base, _, name = path.rpartition("/")
    if not slash or not base or not name:
        raise UsageError(f"invalid domain {value!r}: expected URI/DOMAIN, e.g. qemu+ssh://hv1/system/vm1 "
                         "(the URI's path, then the domain's name)")
    return f"{scheme}://{authority}/{base}{mark}{query}", name


class DomainTarget(NamedTuple):
    """A libvirt domain (name, UUID or id) on a connection URI; its monitor or its guest agent.

    A NamedTuple like SocketTarget: immutable and cheap to import (dataclasses pulls in inspect).
    """

    name: str
    uri: str | None = None
    kind: str = MONITOR
    label: str | None = None
    """How the user named it, when that was ``URI/DOMAIN``: fleet output names the target so."""

    @property
    def connect_uri(self) -> str:
        return self.uri or DEFAULT_URI

    def host_files(self) -> HostFiles:
        """Here for URIs without a remote host (qemu:///system, qemu+unix:///...); else out of reach.

        A ``qemu+ssh://`` URI is libvirt's own way in: qmpctl does not reach that host's files through it.
        """
        host = uri_host(self.connect_uri)
        return HostFiles(HERE if host in LOOPBACK_HOSTS or host.startswith("127.") else UNREACHABLE)

    @property
    def is_local(self) -> bool:
        return self.host_files().is_local

    def __str__(self) -> str:
        return self.label or f"domain:{self.name}"

    def describe(self) -> str:
        """How error messages name the domain: with the URI, since the same name can live on many hosts."""
        return f"domain {self.name} ({self.connect_uri})"

    def open(self, deadline: Deadline) -> "DomainMonitorSession | DomainAgentSession":
        libvirt, libvirt_qemu = load_libvirt()
        waiting_for = f"libvirt to open domain {self.name}"

        def connect() -> tuple[Any, Any]:
            connection = libvirt.open(self.connect_uri)
            try:
                return connection, _lookup(libvirt, connection, self.name)
            except BaseException:
                connection.close()
                raise

        try:
            connection, domain = _bounded(deadline, waiting_for, LIBVIRTD_HINT, connect)
        except Exception as exc:
            raise translate(libvirt, exc, self.describe()) from None
        if self.kind == AGENT:
            return DomainAgentSession(self, libvirt, libvirt_qemu, connection, domain)
        return DomainMonitorSession(self, libvirt, libvirt_qemu, connection, domain)


class DomainSession(WithoutEvents):
    """What monitor and agent sessions through libvirt share: the connection and bounded calls.

    libvirt keeps QEMU's events to itself (qmpctl would need an event loop and
    virConnectDomainQemuMonitorEventRegister to see them), so these sessions have none.
    """

    max_message_bytes: int | None = LIBVIRT_STRING_MAX
    """libvirt passes no longer string either way: bulk transfers (agent cp) size their chunks by it."""

    def __init__(self, target: DomainTarget, libvirt: ModuleType, libvirt_qemu: ModuleType,
                 connection: Any, domain: Any) -> None:
        self.domain_target = target
        self.target = str(target)
        self.libvirt = libvirt
        self.libvirt_qemu = libvirt_qemu
        self.connection = connection
        self.domain = domain
        self._abandoned = False
        self.what = target.describe()
        self.hint = MONITOR_HINT

    def _call(self, request: Request, deadline: Deadline, waiting_for: str, call: Callable[..., str],
              text: str, *args: Any) -> str:
        """libvirt's ``call(domain, text, *args)`` for ``request``: bounded, traced, its errors translated."""
        trace.sent(self.target, text)
        try:
            reply = _bounded(deadline, waiting_for, self.hint, call, self.domain, text, *args)
        except DeadlineExceeded:
            self._abandoned = True  # the call still holds the connection: leave it alone
            raise
        except Exception as exc:
            error = translate(self.libvirt, exc, self.what)
            if error.received is None and error is not exc:
                error.received = str(exc)  # libvirt's own words: all qmpctl received
            raise error from None
        trace.received(self.target, reply)
        return reply

    def _parse(self, text: str, request: Request) -> dict[str, Any]:
        """The reply object libvirt passed on, without libvirt's ``"id": "libvirt-N"``."""
        try:
            reply = json.loads(text)
        except (TypeError, ValueError):
            raise ProtocolError(f"libvirt passed on a reply to {request.execute} that is not JSON: {text!r:.200}",
                                sent=request.as_dict(), received=text) from None
        if not isinstance(reply, dict):
            raise ProtocolError(f"libvirt passed on a reply to {request.execute} that is not a JSON object",
                                sent=request.as_dict(), received=reply)
        reply.pop("id", None)
        return reply

    def _check(self, reply: dict[str, Any], request: Request) -> dict[str, Any]:
        return checked_reply(reply, request, self.target)

    def _text(self, request: Request) -> str:
        """The request as libvirt takes it; one it could not carry is refused before anything is sent."""
        text = request.wire().decode("utf-8").rstrip("\n")
        size = len(text.encode("utf-8"))
        if size > LIBVIRT_STRING_MAX:
            raise UsageError(f"the {request.execute} request is {size} bytes, more than libvirt passes on to "
                             f"{self.target} ({LIBVIRT_STRING_MAX // (1024 * 1024)} MiB); for this, talk to the "
                             "VM's socket directly (-s/-a)")
        return text

    def resync(self, deadline: Deadline) -> None:
        """Nothing to do: libvirt syncs with the agent itself before every command."""

    def close(self) -> None:
        if self._abandoned:
            return
        try:
            self.connection.close()
        except self.libvirt.libvirtError:
            pass

    def __enter__(self) -> "DomainSession":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_event_loop_lock = threading.Lock()
_event_loop_running = False


def _run_event_loop(libvirt: ModuleType) -> None:
    """libvirt's default event loop: delivers monitor events to their callbacks, for the life of the process."""
    while libvirt.virEventRunDefaultImpl() == 0:
        pass


def start_event_loop(libvirt: ModuleType) -> None:
    """Register libvirt's default event loop (once) and run it in a daemon thread.

    It must be registered before the connection that is to receive events is
    opened; the waits on its events are bounded by their deadlines, and the
    thread ends with the process.
    """
    global _event_loop_running
    with _event_loop_lock:
        if not _event_loop_running:
            libvirt.virEventRegisterDefaultImpl()
            threading.Thread(target=_run_event_loop, args=(libvirt,), name="qmpctl-libvirt-events",
                             daemon=True).start()
            _event_loop_running = True


class DomainMonitorSession(DomainSession):
    """QMP through ``virDomainQemuMonitorCommand``; HMP lines through its HMP flag, like virsh --hmp.

    Events come through libvirt's QEMU monitor event API
    (``virConnectDomainQemuMonitorEventRegister``) once :meth:`listen_events`
    has opened a second connection for them: one opened before the event loop
    was registered cannot receive events.
    """

    _events: "queue.Queue[dict[str, Any] | None] | None" = None
    _event_connection: Any = None
    _callback_ids: tuple[tuple[str, int], ...] = ()

    def listen_events(self, deadline: Deadline) -> None:
        """Start receiving the domain's QEMU monitor events (every event; QEMU's timestamps kept)."""
        if self._events is not None:
            return
        libvirt, libvirt_qemu = self.libvirt, self.libvirt_qemu
        start_event_loop(libvirt)
        events: queue.Queue[dict[str, Any] | None] = queue.Queue()

        def deliver(connection: Any, domain: Any, event: str, seconds: int, micros: int, details: str | None,
                    opaque: Any) -> None:
            try:
                data = json.loads(details) if details else {}
            except ValueError:
                data = {"details": details}
            events.put({"event": event, "data": data, "timestamp": {"seconds": seconds, "microseconds": micros}})

        def lifecycle(connection: Any, domain: Any, event: int, detail: int, opaque: Any) -> None:
            if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
                events.put(None)  # QEMU is gone: what a closed monitor socket says for a socket session

        def subscribe() -> tuple[Any, tuple[tuple[str, int], ...]]:
            connection = libvirt.open(self.domain_target.connect_uri)
            try:
                domain = _lookup(libvirt, connection, self.domain.UUIDString())
                monitor = libvirt_qemu.qemuMonitorEventRegister(connection, domain, None, deliver, None, 0)
                stopped = connection.domainEventRegisterAny(domain, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                                            lifecycle, None)
                return connection, (("monitor", monitor), ("lifecycle", stopped))
            except BaseException:
                connection.close()
                raise

        try:
            self._event_connection, self._callback_ids = _bounded(
                deadline, f"libvirt to send the events of {self.target}", LIBVIRTD_HINT, subscribe)
        except Exception as exc:
            raise translate(libvirt, exc, self.what) from None
        self._events = events

    def execute_closing(self, request: Request, deadline: Deadline) -> dict[str, Any]:
        """Refused: libvirt must know the VM stops, so it must be the one to stop it."""
        raise UsageError(f"{request.execute} through libvirt is refused: libvirt must know that {self.what} "
                         "stops; use virsh destroy")

    def next_event(self, deadline: Deadline, waiting_for: str) -> dict[str, Any]:
        """The next monitor event libvirt passed on, within ``deadline``.

        :raise ConnectionClosed: the domain stopped (as a socket's monitor closes when QEMU exits).
        """
        if self._events is None:
            self.listen_events(deadline)
        assert self._events is not None
        while True:
            left = deadline.remaining(waiting_for)
            try:
                event = self._events.get(timeout=min(left, EVENT_POLL_SECONDS))
            except queue.Empty:
                continue
            if event is None:
                raise ConnectionClosed(f"{self.what} stopped while waiting for {waiting_for}")
            return event

    def close(self) -> None:
        if self._event_connection is not None:
            try:
                for kind, callback_id in self._callback_ids:
                    if kind == "monitor":
                        self.libvirt_qemu.qemuMonitorEventDeregister(self._event_connection, callback_id)
                    else:
                        self._event_connection.domainEventDeregisterAny(callback_id)
                self._event_connection.close()
            except self.libvirt.libvirtError:
                pass
            self._event_connection = None
        super().close()

    def execute(self, request: Request, deadline: Deadline) -> dict[str, Any]:
        with trace.Exchange(self.target, request.as_dict()):
            return self._execute(request, deadline)

    def _execute(self, request: Request, deadline: Deadline) -> dict[str, Any]:
        waiting_for = f"the reply to {request.execute} from {self.target}"
        command = self.libvirt_qemu.qemuMonitorCommand
        hmp_line = _hmp_line(request)
        if hmp_line is not None:
            text = self._call(request, deadline, waiting_for, command, hmp_line,
                              self.libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
            return {"return": text}
        text = self._call(request, deadline, waiting_for, command, self._text(request), 0)
        return self._check(self._parse(text, request), request)

    def execute_no_reply(self, request: Request, deadline: Deadline) -> None:
        """Every QMP command answers, so this is :meth:`execute` with the reply dropped."""
        self.execute(request, deadline)


def _hmp_line(request: Request) -> str | None:
    """The command line of a plain human-monitor-command (no cpu-index, which the HMP flag cannot carry)."""
    arguments = request.arguments or {}
    line = arguments.get("command-line")
    if request.execute == "human-monitor-command" and set(arguments) == {"command-line"} and isinstance(line, str):
        return line
    return None


class DomainAgentSession(DomainSession):
    """qemu-ga through ``virDomainQemuAgentCommand``; libvirt does the guest-sync itself."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.what = f"guest agent of {self.what}"
        self.hint = SILENT_HINT

    def _agent_call(self, request: Request, deadline: Deadline, seconds: int) -> str:
        try:
            return self._raw_agent_call(request, deadline, seconds)
        except VmError as exc:
            def ask(status: Request) -> dict[str, Any]:
                return self._check(self._parse(self._raw_agent_call(status, deadline, seconds), status), status)

            raise disabled_command_error(exc, request.execute, lambda: is_frozen(ask)) from None

    def _raw_agent_call(self, request: Request, deadline: Deadline, seconds: int) -> str:
        waiting_for = f"the reply to {request.execute} from the guest agent of {self.target}"
        return self._call(request, deadline, waiting_for, self.libvirt_qemu.qemuAgentCommand,
                          self._text(request), seconds, 0)

    def execute(self, request: Request, deadline: Deadline) -> dict[str, Any]:
        with trace.Exchange(self.target, request.as_dict()):
            seconds = max(1, math.ceil(deadline.remaining(f"the guest agent of {self.target}")))
            text = self._agent_call(request, deadline, seconds)
            return self._check(self._parse(text, request), request)

    def execute_no_reply(self, request: Request, deadline: Deadline) -> None:
        """For guest-shutdown and friends, which answer only when they fail.

        libvirt waits for an answer to everything, so qmpctl first proves the
        agent is there (guest-ping), then treats "no answer within a second" and
        "the agent went away" as the command taking effect. An error reply still
        raises :class:`VmError`.
        """
        self.execute(Request("guest-ping", protocol="qga"), deadline)
        with trace.Exchange(self.target, request.as_dict()):
            seconds = min(NO_REPLY_GRACE_SECONDS, max(1, math.floor(deadline.remaining(request.execute))))
            try:
                text = self._agent_call(request, deadline, seconds)
            except (DeadlineExceeded, ConnectError):
                return  # silent, or the guest (and its channel) went down: the command was taken
            self._check(self._parse(text, request), request)
