"""Chain commands: backup DEVICE... --into DIR, backup-verify DIR, restore CHAIN TARGET.

The work happens in :mod:`qmpctl.backup.chain` and :mod:`qmpctl.backup.restore`; these
handlers check the options, pick the agent for --freeze, and print.
"""

from __future__ import annotations

from qmpctl.timing import OFFLINE_TIMEOUT
from qmpctl.cli.common import Common, emit, printed_plan, run
from qmpctl.errors import ExitCode, UsageError, VerificationFailed
from qmpctl.output import render_reply, to_json
from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Optional
    from qmpctl.wire.session import HostFiles


def _printer(progress: str) -> tuple[Any, float, Any]:
    """The job-state callback for ``--progress``, how often to call it, and the printer to close."""
    from qmpctl.cli.progress import printer_for
    from qmpctl.timing import CHECK_EVERY
    from qmpctl.cli.readings import Meter, bar_text, json_text

    printer = printer_for(progress, bar=bar_text, json=json_text,
                          finished=lambda reading: reading.status == "concluded", changed=lambda reading: reading.done)
    if printer is None:
        return None, CHECK_EVERY, None
    meter = Meter()
    return (lambda state: printer(meter.read(state))), printer.every, printer


def _agent_target(common: Common, agent: Optional[str]) -> Any:
    """The guest agent --freeze talks to: -a AGENT, or the --domain's own agent channel."""
    from qmpctl.wire.targets import AGENT, resolve_targets

    if agent is not None:
        return resolve_targets(AGENT, [agent], [], None)[0]
    if common.domains:
        return resolve_targets(AGENT, [], common.domains[:1], common.uri)[0]
    return None


def _ssh_files(common: Common) -> Optional[HostFiles]:
    """The files of an ``ssh://`` VM's host, known from how the target is written: nothing is connected."""
    from qmpctl.wire.session import OVER_SSH

    for target in common.written_targets():
        files = target.host_files()
        if files.reach == OVER_SSH:
            return files
    return None


def backup_into(common: Common, *, devices: list[str], into: str, full: bool, keep_chains: Optional[int],
                new_chain_after: Optional[str] = None, max_incrementals: Optional[int] = None,
                compress: bool = False, estimate: bool = False, skip_below: Optional[str] = None,
                speed: Optional[str], wait: bool, wait_timeout: Optional[float], progress: str,
                freeze: str, freeze_timeout: Optional[float], agent: Optional[str]) -> int:
    """``backup DEVICE... --into DIR``: extend each disk's chain, or start one."""
    from qmpctl.backup import chain
    from qmpctl.backup.full import DEFAULT_WAIT_TIMEOUT, parse_speed
    from qmpctl.units import parse_duration, parse_size

    if not wait:
        raise UsageError("--no-wait is refused with --into: a chain is only extended by a backup qmpctl saw finish")
    options = chain.ChainOptions(
        tuple(devices), into, full, keep_chains, parse_speed(speed) if speed else None,
        DEFAULT_WAIT_TIMEOUT if wait_timeout is None else wait_timeout, freeze,
        chain.DEFAULT_FREEZE_TIMEOUT if freeze_timeout is None else freeze_timeout, compress=compress,
        new_chain_after=None if new_chain_after is None else parse_duration(new_chain_after, "--new-chain-after"),
        max_incrementals=max_incrementals, estimate=estimate,
        skip_below=None if skip_below is None else parse_size(skip_below, "--skip-below", allow_zero=True))
    remote = _ssh_files(common)
    if remote is not None:  # DIR is on the VM's host: here only its form can be checked, before connecting
        into = chain.prepare_dir(into, is_local=False, side=remote.side)
    if printed_plan(common, options.requests(), options.plan_note(None if remote is None else remote.side)):
        return ExitCode.OK
    targets = common.targets()
    if len(targets) > 1:
        raise UsageError(f"--into backs up one VM, not {len(targets)}: run one qmpctl per VM")
    if remote is None:
        into = chain.prepare_dir(into, is_local=targets[0].host_files().is_local)  # before connecting to anything
    agent_target = _agent_target(common, agent) if options.freeze != "no" else None
    show, every, printer = _printer(progress)

    def action(session: Any, deadline: Any, vm: Any) -> dict[str, Any]:
        from qmpctl.backup.remote_folder import folder_for

        return {"return": chain.backup_chain(session, deadline, options, agent=agent_target, progress=show,
                                             progress_every=every, folder=folder_for(vm, into))}

    try:
        return run(common, action, options.requests(), targets=targets)
    finally:
        if printer is not None:
            printer.close()




def backup_verify(common: Common, *, path: str, json_lines: bool, wait_timeout: Optional[float]) -> int:
    """``backup-verify DIR``: exit 0 when every image is sound, 6 naming the first broken one."""
    from qmpctl.backup import restore
    from qmpctl.deadline import Deadline

    checks = restore.verify(path, Deadline(wait_timeout or OFFLINE_TIMEOUT))
    if not checks:  # a manifest lists at least one image; this is only the last line of defence
        raise VerificationFailed(f"{path}: no image to verify; a chain without an image is not a backup")
    broken = restore.first_broken(checks)
    if json_lines:
        for number, check in enumerate(checks, 1):
            emit(to_json(check.to_json(), False), final=broken is None and number == len(checks))
    if broken is not None:
        raise broken
    if not json_lines:
        chains = sorted({check.chain for check in checks})
        emit(render_reply({"return": {"chains": chains, "images": len(checks), "ok": True}}, pretty=common.pretty,
                          return_value=common.return_value), final=True)
    return ExitCode.OK


def restore_chain(common: Common, *, chain: str, target: str, point: Optional[int], at: Optional[str], force: bool,
                  image_format: str, progress: str, wait_timeout: Optional[float], boot_check: bool,
                  qemu_args: list[str], boot_timeout: float, check_command: Optional[str]) -> int:
    """``restore CHAIN TARGET``: a standalone image of the disk at one backup; ``--boot-check`` boots it."""
    from qmpctl.backup import restore
    from qmpctl.deadline import Deadline

    if check_command is not None and not boot_check:
        raise UsageError("--check-command runs in the booted restore: add --boot-check")
    if qemu_args and not boot_check:
        raise UsageError("--qemu-arg is for the booted restore: add --boot-check")
    show, _, printer = _printer(progress)
    try:
        restored = restore.restore(chain, target, Deadline(wait_timeout or OFFLINE_TIMEOUT), point=point, at=at,
                                force=force, target_format=image_format, progress=show)
    finally:
        if printer is not None:
            printer.close()
    if boot_check:
        restored["boot-check"] = restore.boot_check(restored["target"], image_format=restored["format"],
                                                    qemu_args=qemu_args, boot_timeout=boot_timeout,
                                                    check_command=check_command, reply_timeout=common.timeout)
    emit(render_reply({"return": restored}, pretty=common.pretty, return_value=common.return_value), final=True)
    return ExitCode.OK
