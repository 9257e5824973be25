"""``restore CHAIN`` without writing a whole image: serve a point over NBD (``--serve``), or create a thin
overlay on it to boot from at once (``--instant``).

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

MODES = ("serve", "instant")
"""The options that each choose a mode, in the order their flags are named in messages."""
ONLY_WITH = {"serve_for": "serve", "writable": "serve", "allow_remote": "serve"}
"""Options that belong to one mode."""


def _flag(name: str) -> str:
    return "--" + {"serve_for": "for"}.get(name, name).replace("_", "-")


def chosen(target: Optional[str], modes: dict[str, Any], *, force: bool, image_format: str, progress: str,
           boot_check: bool, qemu_args: list[str], check_command: Optional[str]) -> Optional[str]:
    """The mode the options choose (None: write TARGET), after refusing every combination that makes no sense."""
    picked = [name for name in MODES if modes.get(name) not in (None, False)]
    if len(picked) > 1:
        raise UsageError(f"give one of {', '.join(_flag(name) for name in picked)}, not several")
    mode = picked[0] if picked else None
    for name, owner in ONLY_WITH.items():
        if modes.get(name) not in (None, False) and mode != owner:
            raise UsageError(f"{_flag(name)} goes with {_flag(owner)}")
    if mode is None:
        if target is None:
            raise UsageError("restore needs TARGET, the image file to write (or one of "
                             f"{', '.join(_flag(name) for name in MODES)})")
        return None
    if target is not None:
        raise UsageError(f"{_flag(mode)} writes no TARGET: leave {target!r} out")
    for given, flag in ((boot_check, "--boot-check"), (qemu_args, "--qemu-arg"), (check_command, "--check-command"),
                        (image_format != "qcow2", "--format"), (progress != "auto", "--progress"),
                        (force, "--force")):
        if given:
            raise UsageError(f"{flag} is for writing TARGET, not for {_flag(mode)}")
    return mode


def restore(common: Common, *, chain: str, target: Optional[str], point: Optional[int], at: Optional[str],
            force: bool, image_format: str, progress: str, wait_timeout: Optional[float], boot_check: bool,
            qemu_args: list[str], boot_timeout: float, check_command: Optional[str], serve: Optional[str],
            serve_for: Optional[float], writable: bool, allow_remote: bool, instant: Optional[str]) -> int:
    """``restore CHAIN TARGET`` (:func:`qmpctl.cli.chain.restore_chain`), or the mode an option chooses."""
    from qmpctl.cli.chain import OFFLINE_TIMEOUT, restore_chain

    modes: dict[str, Any] = {"serve": serve, "serve_for": serve_for, "writable": writable,
                             "allow_remote": allow_remote, "instant": instant}
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
        return instant_overlay(common, chain=chain, point=point, at=at, wait_timeout=wait, target=instant)
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
                    target: str) -> int:
    """``restore CHAIN --instant TARGET``: a thin overlay on the verified point."""
    from qmpctl.backup.instant import create_instant
    from qmpctl.backup.point import verified_point
    from qmpctl.deadline import Deadline
    from qmpctl.output import render_reply

    deadline = Deadline(wait_timeout)
    found = verified_point(chain, deadline, point=point, at=at)
    reply = {"return": create_instant(found, target, deadline)}
    emit(render_reply(reply, pretty=common.pretty, return_value=common.return_value), final=True)
    return ExitCode.OK
