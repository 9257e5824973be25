"""``restore CHAIN`` without writing a whole image: ``--serve``, ``--instant``, ``--ls``/``--cat``/``--extract``.

A point is served over NBD (``--serve``), a thin overlay is created on it to
boot from at once (``--instant``), or single files are read from it.

Each mode verifies the point's images first, as a plain restore does, and
opens them read-only.
"""

from __future__ import annotations

from qmpctl.cli.common import Common, emit
from qmpctl.errors import ExitCode, UsageError
from qmpctl.output import to_json
from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Optional

MODES = ("serve", "instant", "ls", "cat", "extract")
"""The options that each choose a mode, in the order their flags are named in messages."""
FILES = ("ls", "cat", "extract")
ONLY_WITH: dict[str, tuple[str, ...]] = {"serve_for": ("serve",), "writable": ("serve",), "allow_remote": ("serve",),
                                         "to": ("extract",), "filesystem": FILES, "verify": ("instant",)}
"""Options that belong to some modes only (``--wait-timeout`` and ``--point``/``--at`` go with every one)."""


def _flag(name: str) -> str:
    return "--" + {"serve_for": "for"}.get(name, name).replace("_", "-")


def chosen(target: Optional[str], modes: dict[str, Any], *, force: bool, image_format: str, progress: str,
           boot_check: bool, qemu_args: list[str], check_command: Optional[str]) -> Optional[str]:
    """The mode the options choose (None: write TARGET), after refusing every combination that makes no sense."""
    picked = [name for name in MODES if modes.get(name) not in (None, False)]
    if len(picked) > 1:
        raise UsageError(f"give one of {', '.join(_flag(name) for name in picked)}, not several")
    mode = picked[0] if picked else None
    for name, owners in ONLY_WITH.items():
        if modes.get(name) not in (None, False) and mode not in owners:
            raise UsageError(f"{_flag(name)} goes with {' or '.join(_flag(owner) for owner in owners)}")
    if mode == "extract" and modes.get("to") is None:
        raise UsageError("--extract needs --to DIR, the local folder to write into")
    if mode is None:
        if target is None:
            raise UsageError("restore needs TARGET, the image file to write (or one of "
                             f"{', '.join(_flag(name) for name in MODES)})")
        return None
    if target is not None:
        raise UsageError(f"{_flag(mode)} writes no TARGET: leave {target!r} out")
    for given, flag in ((boot_check, "--boot-check"), (qemu_args, "--qemu-arg"), (check_command, "--check-command"),
                        (image_format != "qcow2", "--format"), (progress != "auto", "--progress"),
                        (force and mode != "extract", "--force")):
        if given:
            raise UsageError(f"{flag} is for writing TARGET, not for {_flag(mode)}")
    return mode


def restore(common: Common, *, chain: str, target: Optional[str], point: Optional[int], at: Optional[str],
            force: bool, image_format: str, progress: str, wait_timeout: Optional[float], boot_check: bool,
            qemu_args: list[str], boot_timeout: float, check_command: Optional[str], serve: Optional[str],
            serve_for: Optional[float], writable: bool, allow_remote: bool, instant: Optional[str],
            ls: Optional[str], cat: Optional[str], extract: Optional[str], to: Optional[str],
            filesystem: Optional[str], verify: bool) -> int:
    """``restore CHAIN TARGET`` (:func:`qmpctl.cli.chain.restore_chain`), or the mode an option chooses."""
    from qmpctl.cli.chain import restore_chain
    from qmpctl.timing import OFFLINE_TIMEOUT

    modes: dict[str, Any] = {"serve": serve, "serve_for": serve_for, "writable": writable,
                             "allow_remote": allow_remote, "instant": instant, "ls": ls, "cat": cat,
                             "extract": extract, "to": to, "filesystem": filesystem, "verify": verify}
    mode = chosen(target, modes, force=force, image_format=image_format, progress=progress, boot_check=boot_check,
                  qemu_args=qemu_args, check_command=check_command)
    if mode is None:
        assert target is not None
        return restore_chain(common, chain=chain, target=target, point=point, at=at, force=force,
                             image_format=image_format, progress=progress, wait_timeout=wait_timeout,
                             boot_check=boot_check, qemu_args=qemu_args, boot_timeout=boot_timeout,
                             check_command=check_command)
    wait = wait_timeout or OFFLINE_TIMEOUT
    if mode == "instant":
        assert instant is not None
        return instant_overlay(common, chain=chain, point=point, at=at, wait_timeout=wait, target=instant,
                               checksums=verify)
    if mode in FILES:
        return files(common, mode, chain=chain, point=point, at=at, wait_timeout=wait, path=str(modes[mode]),
                     to=to, force=force, filesystem=filesystem)
    assert serve is not None
    return serve_point(common, chain=chain, point=point, at=at, wait_timeout=wait, listen=serve,
                       serve_for=serve_for, writable=writable, allow_remote=allow_remote)


def serve_point(common: Common, *, chain: str, point: Optional[int], at: Optional[str], wait_timeout: float,
                listen: str, serve_for: Optional[float], writable: bool, allow_remote: bool) -> int:
    """``restore CHAIN --serve ADDR``: the URI on stdout, then serve until a signal or --for; both end with 0."""
    from qmpctl.backup.point import verified_point
    from qmpctl.backup.serve import Server, parse_listen
    from qmpctl.deadline import Deadline

    if serve_for is not None and not serve_for > 0:
        raise UsageError(f"--for must be more than 0 seconds, got {serve_for:g}")
    address = parse_listen(listen, allow_remote=allow_remote)
    found = verified_point(chain, Deadline(wait_timeout), point=point, at=at)
    serving = False
    try:
        with Server(found, address, writable=writable) as server:
            serving = True  # a signal from here on, even while the URI is written, is the normal end
            emit(to_json(server.summary(), common.pretty))
            server.wait(serve_for)
    except KeyboardInterrupt:
        if not serving:
            raise
    return ExitCode.OK


def instant_overlay(common: Common, *, chain: str, point: Optional[int], at: Optional[str], wait_timeout: float,
                    target: str, checksums: bool = False) -> int:
    """``restore CHAIN --instant TARGET``: a thin overlay on the point, at once whatever the disk's size.

    The images are checked as far as their metadata goes (regular files of the recorded size, sound, each
    backed by the one before, no external data file); their sha256, which reads every byte, only with
    ``--verify``: the result says which.
    """
    from qmpctl.backup.instant import create_instant
    from qmpctl.backup.point import verified_point
    from qmpctl.deadline import Deadline
    from qmpctl.output import render_reply

    deadline = Deadline(wait_timeout)
    found = verified_point(chain, deadline, point=point, at=at, checksums=checksums)
    made = create_instant(found, target, deadline)
    made["checksums"] = "compared" if checksums else (
        "not read (--verify compares them first; qmpctl backup-verify CHAIN does at any time)")
    reply = {"return": made}
    emit(render_reply(reply, pretty=common.pretty, return_value=common.return_value), final=True)
    return ExitCode.OK


def files(common: Common, mode: str, *, chain: str, point: Optional[int], at: Optional[str], wait_timeout: float,
          path: str, to: Optional[str], force: bool, filesystem: Optional[str]) -> int:
    """``--ls PATH`` (JSON), ``--cat PATH`` (the exact bytes on stdout), ``--extract PATH --to DIR`` (JSON)."""
    import os
    import sys

    from qmpctl.backup.guestfs import Guestfs, guest_path
    from qmpctl.backup.point import verified_point
    from qmpctl.deadline import Deadline
    from qmpctl.errors import OutputError
    from qmpctl.output import render_reply

    inside = guest_path(path, _flag(mode))
    folder = None
    if mode == "extract":
        assert to is not None
        folder = os.path.abspath(to)
        if not os.path.isdir(folder):
            raise UsageError(f"--to {folder}: no such directory")
        if inside == "/":
            raise UsageError("--extract wants a file or folder under /, not / itself")
        final = os.path.join(folder, os.path.basename(inside))
        if os.path.lexists(final) and not force:
            raise UsageError(f"{final} exists; --extract does not overwrite it (pass --force to replace it)")
    deadline = Deadline(wait_timeout)
    found = verified_point(chain, deadline, point=point, at=at)
    with Guestfs(found, deadline, filesystem=filesystem) as guest:
        if mode == "cat":
            local = guest.download(inside)
            out = sys.stdout.buffer if sys.stdout is not None else None
            if out is None:
                raise OutputError("standard output is closed")
            try:
                with open(local, "rb") as handle:
                    while chunk := handle.read(1 << 20):
                        out.write(chunk)
                out.flush()
            except BrokenPipeError:
                os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
            except OSError as exc:
                raise OutputError(f"{inside} could not be written to standard output: {exc.strerror or exc}") \
                    from None
            return ExitCode.OK
        if mode == "ls":
            result = guest.listing(inside)
        else:
            assert folder is not None
            result = guest.extract(inside, folder, force=force)
    result.update({"filesystems": guest.mounted, **found.summary()})
    emit(render_reply({"return": result}, pretty=common.pretty, return_value=common.return_value), final=True)
    return ExitCode.OK
