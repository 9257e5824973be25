"""Chain commands: backup DEVICE... --into DIR, backup-verify DIR, restore CHAIN TARGET.

The work happens in :mod:`qmpctl.backup.chain` and :mod:`qmpctl.backup.restore`; these
handlers check the options, pick the agent for --freeze, and print.
"""

from __future__ import annotations

from qmpctl.timing import OFFLINE_TIMEOUT
from qmpctl.cli.common import Common, emit, printed_plan, run
from qmpctl.errors import ExitCode, QmpctlError, UsageError, VerificationFailed
from qmpctl.output import render_reply, to_json
from qmpctl.records import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Optional
    from qmpctl.wire.session import HostFiles


NO_REMOTE_FLEECE = ("--fleece is not supported with a VM reached over ssh://: DIR2 would have to be on the VM's "
                    "host, where QEMU opens the temporary images; back that VM up without --fleece")


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
    from qmpctl.cli.common import agent_for

    return agent_for(common, agent)


def _ssh_files(common: Common) -> Optional[HostFiles]:
    """The files of an ``ssh://`` VM's host, known from how the target is written: nothing is connected."""
    from qmpctl.wire.session import OVER_SSH

    for target in common.written_targets():
        files = target.host_files()
        if files.reach == OVER_SSH:
            return files
    return None


def _is_fleet(common: Common) -> bool:
    """Several VMs as written (several -s or -d, or a glob): each VM's chains then go in DIR/<vm>/."""
    return len(common.sockets) + len(common.domains) > 1 or any(
        character in value for value in common.sockets for character in "*?[")


AGENT_FIELDS = ("{vm}", "{sock}")
"""What -a may hold in a fleet: each VM's name, and its socket's file name without the extension."""


def _is_pattern(agent: Optional[str]) -> bool:
    """-a holds a field to fill in per VM."""
    return agent is not None and any(field in agent for field in AGENT_FIELDS)


def _check_agent_pattern(agent: Optional[str]) -> None:
    """In a fleet, -a is a pattern for each VM's agent socket: it must name the VM, or every VM would share one."""
    if agent is not None and not _is_pattern(agent):
        raise UsageError(f"-a {agent} names one guest agent, and this run backs up several VMs: give a pattern "
                         "with {vm} (the VM's name) or {sock} (its socket's file name without the extension), "
                         "e.g. -a '/run/qemu/{vm}.qga'; a -d DOMAIN uses its own agent")


def _vm_agent(vm: Any, uri: Optional[str], pattern: Optional[str], name: str) -> Any:
    """For --freeze in a fleet: a libvirt domain's own agent channel; for a socket VM, -a's pattern filled in
    with its name (on the VM's host, for a VM reached over ssh://), else none."""
    import os

    from qmpctl.wire.targets import AGENT, resolve_targets

    if hasattr(vm, "uri") and hasattr(vm, "name"):
        return resolve_targets(AGENT, [], [vm.label or vm.name], uri)[0]
    address = getattr(vm, "address", None)
    if pattern is None or address is None:
        return None
    stem = os.path.splitext(os.path.basename(address.path or ""))[0]
    text = pattern.replace("{vm}", name).replace("{sock}", stem)
    if address.via is not None and text.startswith("/"):
        text = f"ssh://{address.via}{text}"
    return resolve_targets(AGENT, [text], [], None)[0]


def backup_into(common: Common, *, devices: list[str], into: str, full: bool, exclude: list[str],
                keep_chains: Optional[int], speed: Optional[str], wait: bool, wait_timeout: Optional[float],
                progress: str, freeze: str, freeze_timeout: Optional[float], agent: Optional[str],
                metrics: Optional[str] = None, new_chain_after: Optional[str] = None,
                max_incrementals: Optional[int] = None, compress: bool = False, estimate: bool = False,
                skip_below: Optional[str] = None, fleece: Optional[str] = None) -> int:
    """``backup [DEVICE...] --into DIR``: extend each disk's chain, or start one; no DEVICE: the whole VM."""
    from qmpctl.backup import chain
    from qmpctl.backup.full import parse_speed
    from qmpctl.timing import BLOCK_JOB_WAIT_TIMEOUT, FREEZE_TIMEOUT
    from qmpctl.units import parse_duration, parse_size

    if not wait:
        raise UsageError("--no-wait is refused with --into: a chain is only extended by a backup qmpctl saw finish")
    speed_value = parse_speed(speed) if speed else None
    wait_value = BLOCK_JOB_WAIT_TIMEOUT if wait_timeout is None else wait_timeout
    freeze_value = FREEZE_TIMEOUT if freeze_timeout is None else freeze_timeout

    new_chain_seconds = None if new_chain_after is None else parse_duration(new_chain_after, "--new-chain-after")
    skip_bytes = None if skip_below is None else parse_size(skip_below, "--skip-below", allow_zero=True)
    if fleece is not None and not common.dry_run:
        from qmpctl.backup.fleece import prepare_dir

        fleece = prepare_dir(fleece)
    elif fleece is not None:
        import os

        fleece = os.path.abspath(fleece)

    def options_for(chosen: tuple[str, ...], where: str) -> chain.ChainOptions:
        return chain.ChainOptions(chosen, where, full, keep_chains, speed_value, wait_value, freeze, freeze_value,
                                  compress=compress, new_chain_after=new_chain_seconds,
                                  max_incrementals=max_incrementals, estimate=estimate, skip_below=skip_bytes,
                                  fleece=fleece)

    whole = not devices or bool(exclude)
    fleet = _is_fleet(common)
    if len(set(exclude)) != len(exclude):
        raise UsageError("each --exclude NAME may be given once")
    options = options_for(tuple(devices) or ("DISK",), into)  # checks the options before connecting
    if metrics is not None and estimate:
        raise UsageError("--metrics records the backups a run makes, and --estimate makes none: give one of them")
    outcomes = None
    if metrics is not None and not common.dry_run:
        from qmpctl.backup.metrics import check_path

        outcomes = _Outcomes(check_path(metrics))
    if fleet:
        return _backup_fleet(common, options, options_for, tuple(devices), tuple(exclude), into, agent, outcomes)
    remote = _ssh_files(common)
    if remote is not None and fleece is not None:
        raise UsageError(NO_REMOTE_FLEECE)
    if remote is not None:  # DIR is on the VM's host: here only its form can be checked, before connecting
        into = chain.prepare_dir(into, is_local=False, side=remote.side)
    note = options.plan_note(None if remote is None else remote.side)
    if whole:
        note += "; with no DEVICE, DISK stands for each disk the run picks (every writable disk of the VM, "
        note += "less --exclude)"
    if printed_plan(common, options.requests(), note):
        return ExitCode.OK
    targets = common.targets()
    if len(targets) > 1:
        raise UsageError(f"--into backs up one VM, not {len(targets)}: run one qmpctl per VM")
    if remote is None:
        into = chain.prepare_dir(into, is_local=targets[0].host_files().is_local)  # before connecting to anything
    pattern = agent if _is_pattern(agent) else None
    agent_target = _agent_target(common, agent) if options.freeze != "no" and pattern is None else None
    show, every, printer = _printer(progress)

    def action(session: Any, deadline: Any, vm: Any) -> dict[str, Any]:
        from qmpctl.backup.remote_folder import folder_for

        nonlocal agent_target
        if pattern is not None and options.freeze != "no":  # the fleet's -a pattern, for one VM of it
            from qmpctl.backup.wholevm import vm_name

            agent_target = _vm_agent(vm, common.uri, pattern, vm_name(session, deadline, vm))

        if whole:
            from qmpctl.backup import wholevm

            return {"return": wholevm.backup_vm(session, deadline, lambda chosen: options_for(chosen, into),
                                                tuple(devices), tuple(exclude), agent=agent_target, progress=show,
                                                progress_every=every, folder=folder_for(vm, into))}
        return {"return": chain.backup_chain(session, deadline, options, agent=agent_target, progress=show,
                                             progress_every=every, folder=folder_for(vm, into))}

    if outcomes is not None:
        targets, action = outcomes.watch(targets), outcomes.recorded(action)
    try:
        return run(common, action, options.requests(), targets=targets)
    finally:
        if printer is not None:
            printer.close()
        if outcomes is not None:
            outcomes.write(targets)


def _backup_fleet(common: Common, options: Any, options_for: Any, devices: tuple[str, ...],
                  exclude: tuple[str, ...], into: str, agent: Optional[str], outcomes: Optional[_Outcomes]) -> int:
    """Every VM the targets name, each into DIR/<vm>/, -j at once; one JSON line per VM, the highest exit code."""
    import os
    import threading

    from qmpctl.backup import chain
    from qmpctl.cli.common import run_fleet
    from qmpctl.cli.spec import DEFAULT_JOBS
    from qmpctl.wire.request import Request

    _check_agent_pattern(agent)
    note = (options.plan_note(None) + "; for each VM: its name first (query-name), then DISK stands for each disk "
            "the run picks in DIR/<vm>/")
    if printed_plan(common, [Request("query-name"), *options.requests()], note):
        return ExitCode.OK
    targets = common.targets()
    roots: dict[int, str] = {}
    for index, vm in enumerate(targets):  # every DIR is checked before any VM is asked
        files = vm.host_files()
        side = files.side if files.remote() is not None else None
        if side is not None and options.fleece is not None:
            raise UsageError(NO_REMOTE_FLEECE)
        roots[index] = chain.prepare_dir(into, is_local=files.is_local, side=side)
    local = {root for index, root in roots.items() if targets[index].host_files().remote() is None}
    for root in local:
        if not os.path.isdir(root):
            os.mkdir(root)
    if common.jobs == DEFAULT_JOBS:
        common = common._replace(jobs=min(4, os.cpu_count() or 1))
    if outcomes is not None:
        targets = outcomes.watch(targets)
    index_of = {id(vm): index for index, vm in enumerate(targets)}
    claimed: dict[tuple[str, str], str] = {}
    claiming = threading.Lock()

    def action(session: Any, deadline: Any, vm: Any) -> dict[str, Any]:
        from qmpctl.backup import wholevm
        from qmpctl.backup.remote_folder import folder_for

        name = wholevm.vm_name(session, deadline, vm)
        root = roots[index_of[id(vm)]]
        with claiming:  # two VMs of one name would mix their chains in one folder
            first = claimed.setdefault((str(vm.host_files().side), name), str(vm))
        if first != str(vm):
            raise UsageError(f"{first} is also named {name!r}: DIR/{name} would mix the chains of two VMs; "
                             "give each VM its own -name")
        where = os.path.join(root, name) if vm.host_files().remote() else wholevm.make_vm_folder(root, name)
        vm_agent = _vm_agent(vm, common.uri, agent, name) if options.freeze != "no" else None
        result = wholevm.backup_vm(session, deadline, lambda chosen: options_for(chosen, where), devices, exclude,
                                   agent=vm_agent, progress_every=1.0, folder=folder_for(vm, where))
        return {"return": {"vm": name, **result}}

    if outcomes is None:
        return run_fleet(targets, common, action)
    try:
        return run_fleet(targets, common, outcomes.recorded(action))
    finally:
        outcomes.write(targets)


class _Watched:
    """A target whose run is recorded for --metrics, from its connection on (a failed connect counts too)."""

    def __init__(self, target: Any, index: int, outcomes: _Outcomes) -> None:
        self.target = target
        self.index = index
        self.outcomes = outcomes

    def open(self, deadline: Any) -> Any:
        try:
            return self.target.open(deadline)
        except QmpctlError as exc:
            self.outcomes.failed(self.index, int(exc.exit_code))
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)

    def __str__(self) -> str:
        return str(self.target)


class _Outcomes:
    """What each VM's run came to, written to --metrics FILE once every run has ended."""

    def __init__(self, path: str) -> None:
        import threading

        self.path = path
        self.lock = threading.Lock()
        self.names: dict[int, str] = {}
        self.results: dict[int, tuple[Optional[dict[str, Any]], int]] = {}

    def watch(self, targets: list[Any]) -> list[Any]:
        return [_Watched(target, index, self) for index, target in enumerate(targets)]

    def failed(self, index: int, code: int) -> None:
        with self.lock:
            self.results[index] = (None, code)

    def recorded(self, action: Any) -> Any:
        def watched(session: Any, deadline: Any, vm: Any) -> Any:
            from qmpctl.backup import wholevm

            try:
                name = wholevm.vm_name(session, deadline, vm)
            except UsageError:
                name = wholevm.fallback_name(vm)
            with self.lock:
                self.names[vm.index] = name
            try:
                reply = action(session, deadline, vm)
            except QmpctlError as exc:
                self.failed(vm.index, int(exc.exit_code))
                raise
            with self.lock:
                self.results[vm.index] = (reply["return"], 0)
            return reply
        return watched

    def write(self, targets: list[Any]) -> None:
        from qmpctl.backup import metrics, wholevm

        found = []
        for index, target in enumerate(targets):
            result, code = self.results.get(index, (None, int(ExitCode.INTERRUPTED)))
            found.append(metrics.Outcome(self.names.get(index, ""), None if result is None
                                         else wholevm.as_disks(result), code, str(target),
                                         wholevm.fallback_name(target)))
        try:
            metrics.write(self.path, found)
        except OSError as exc:
            raise UsageError(f"--metrics {self.path}: cannot write it: {exc.strerror or exc}") from None


def backup_verify(common: Common, *, path: str, json_lines: bool, wait_timeout: Optional[float],
                  max_age: Optional[str] = None) -> int:
    """``backup-verify DIR``: exit 0 when every image is sound, 6 naming the first broken one (and, with
    --max-age, every disk whose newest backup is too old)."""
    from qmpctl.backup import restore
    from qmpctl.deadline import Deadline

    oldest = None
    if max_age is not None:
        from qmpctl.units import parse_duration

        oldest = parse_duration(max_age, "--max-age")
    checks = restore.verify(path, Deadline(wait_timeout or OFFLINE_TIMEOUT))
    if not checks:  # a manifest lists at least one image; this is only the last line of defence
        raise VerificationFailed(f"{path}: no image to verify; a chain without an image is not a backup")
    broken = restore.first_broken(checks)
    stale = None
    if oldest is not None:
        from qmpctl.backup.metrics import too_old

        stale = too_old(sorted({check.chain for check in checks}), oldest, max_age or "")
    if json_lines:
        for number, check in enumerate(checks, 1):
            emit(to_json(check.to_json(), False), final=broken is None and stale is None and number == len(checks))
    if broken is not None and stale is not None:
        raise VerificationFailed(f"{broken.message}; and {stale.message}")
    if broken is not None:
        raise broken
    if stale is not None:
        raise stale
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
    from qmpctl.backup import vmrestore

    if vmrestore.is_whole_vm(chain, target):
        return _restore_vm(common, chain=chain, outdir=target, point=point, at=at, force=force,
                           image_format=image_format, progress=progress, wait_timeout=wait_timeout,
                           boot_check=boot_check, qemu_args=qemu_args, boot_timeout=boot_timeout,
                           check_command=check_command)
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


def _restore_vm(common: Common, *, chain: str, outdir: str, point: Optional[int], at: Optional[str], force: bool,
                image_format: str, progress: str, wait_timeout: Optional[float], boot_check: bool,
                qemu_args: list[str], boot_timeout: float, check_command: Optional[str]) -> int:
    """``restore DIR/<vm> OUTDIR``: every disk of one backup of the VM; ``--boot-check`` boots them together."""
    from qmpctl.backup import restore, vmrestore
    from qmpctl.deadline import Deadline

    show, _, printer = _printer(progress)
    try:
        restored = vmrestore.restore_vm(chain, outdir, Deadline(wait_timeout or OFFLINE_TIMEOUT), point=point,
                                        at=at, force=force, target_format=image_format, progress=show)
    finally:
        if printer is not None:
            printer.close()
    if boot_check:
        disks, flash = vmrestore.boot_disks(restored)
        if not disks:
            raise UsageError("--boot-check: the backup holds no disk to boot from")
        restored["boot-check"] = restore.boot_check(disks[0], image_format=image_format, qemu_args=qemu_args,
                                                    boot_timeout=boot_timeout, check_command=check_command,
                                                    reply_timeout=common.timeout, more_disks=tuple(disks[1:]),
                                                    flash_vars=flash)
    emit(render_reply({"return": restored}, pretty=common.pretty, return_value=common.return_value), final=True)
    return ExitCode.OK
