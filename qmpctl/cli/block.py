"""Block-device commands: block, jobs, hotplug-disk, unplug-disk, backup (declared in :mod:`qmpctl.cli.spec`).

The work happens in :mod:`qmpctl.vm.block` and :mod:`qmpctl.backup.full`, imported
inside the commands so that other commands do not pay for them.
"""

from __future__ import annotations

from qmpctl.cli.common import Common, execute_one, printed_plan, run
from qmpctl.errors import ExitCode, UsageError
from qmpctl.records import TYPE_CHECKING
from qmpctl.wire.request import Request
from qmpctl.wire.session import HERE, OVER_SSH, HostFiles

if TYPE_CHECKING:
    from typing import Any, Optional
    from qmpctl.wire.targets import Target


def block(common: Common, *, nodes: bool) -> int:
    """Show the VM's block devices (query-block)."""
    request = Request("query-named-block-nodes" if nodes else "query-block")
    return run(common, execute_one(request), [request])


def jobs(common: Common, *, dismiss: Optional[str], cancel: Optional[str]) -> int:
    """query-jobs, or end one job: its help is declared in :mod:`qmpctl.cli.spec`."""
    if dismiss is not None and cancel is not None:
        raise UsageError("--dismiss and --cancel contradict each other: give one")
    if dismiss is None and cancel is None:
        request = Request("query-jobs")
        return run(common, execute_one(request), [request])
    from qmpctl.backup import full as backup_lib

    job_id = dismiss if dismiss is not None else cancel
    assert job_id is not None
    end = backup_lib.dismiss_job if dismiss is not None else backup_lib.cancel_backup_job
    request = Request("job-dismiss" if dismiss is not None else "job-cancel", {"id": job_id})

    def action(session: Any, deadline: Any, target: Target) -> dict[str, Any]:
        return {"return": end(session, deadline, job_id, target_is_local=target.host_files().is_local)}

    if printed_plan(common, [request], backup_lib.END_JOB_PLAN_NOTE):
        return ExitCode.OK
    return run(common, action, [request])


def _the_vm(common: Common, why: str) -> tuple[list[Target], HostFiles]:
    """The one VM a command works on, resolved once (to hand to run()), and where its files are.

    --dry-run resolves and asks nothing: it plans as if the files were here,
    unless a target is written as ``ssh://``, whose host is known from the text.
    """
    if common.dry_run:
        over_ssh = [files for files in (target.host_files() for target in common.written_targets())
                    if files.reach == OVER_SSH]
        return [], over_ssh[0] if over_ssh else HostFiles(HERE)
    targets = common.targets()
    if len(targets) > 1:
        raise UsageError(f"{why}: give exactly one VM, not {len(targets)}")
    return targets, targets[0].host_files()


def hotplug_disk(common: Common, *, file: str, bus: str, device_id: Optional[str],
                 image_format: Optional[str], readonly: bool) -> int:
    """blockdev-add + device_add, all or nothing (help in :mod:`qmpctl.cli.spec`)."""
    from qmpctl.vm import block as block_lib

    targets, files = _the_vm(common, "hotplug-disk attaches one image")
    if files.reach == OVER_SSH and not common.dry_run:  # the image is checked on the VM's host, once connected

        def attach(session: Any, deadline: Any, target: Any) -> dict[str, Any]:
            filename, detected = block_lib.check_image(file, image_format, is_local=False,
                                                       files=files.remote(), deadline=deadline)
            return {"return": block_lib.hotplug(session, deadline,
                                                block_lib.HotplugPlan(filename, detected, bus, device_id, readonly))}

        return run(common, attach, [], targets=targets)
    filename, detected = block_lib.check_image(file, image_format, is_local=files.is_local)
    plan = block_lib.HotplugPlan(filename, detected, bus, device_id, readonly)
    if printed_plan(common, plan.requests(), plan.plan_note()):
        return ExitCode.OK
    return run(common, lambda session, deadline, target: {"return": block_lib.hotplug(session, deadline, plan)},
               plan.requests(), targets=targets)


def unplug_disk(common: Common, *, device_id: str, wait_timeout: float) -> int:
    """device_del, wait for the release, blockdev-del (help in :mod:`qmpctl.cli.spec`)."""
    from qmpctl.vm import block as block_lib

    if not wait_timeout > 0:
        raise UsageError(f"--wait-timeout must be more than 0 seconds, got {wait_timeout:g}")
    request = Request("device_del", {"id": device_id})
    if printed_plan(common, [request], block_lib.UNPLUG_PLAN_NOTE):
        return ExitCode.OK
    return run(common, lambda session, deadline, target: {"return": block_lib.unplug(session, deadline, device_id,
                                                                                     wait_timeout)}, [request])


def backup(common: Common, *, words: list[str], into: Optional[str], full: bool, exclude: list[str],
           metrics: Optional[str], keep_chains: Optional[int], new_chain_after: Optional[str],
           max_incrementals: Optional[int], compress: bool, estimate: bool, skip_below: Optional[str],
           fleece: Optional[str], freeze: bool, freeze_try: bool, freeze_timeout: Optional[float],
           agent: Optional[str], sync: str, image_format: str, speed: Optional[str], force: bool, wait: bool,
           wait_timeout: Optional[float], progress: str, job_id: Optional[str]) -> int:
    """A full backup (DEVICE TARGET) or a chain run (DEVICE... --into DIR); help in :mod:`qmpctl.cli.spec`."""
    if into is not None:
        from qmpctl.cli.chain import backup_into

        single = {"--sync": sync != "full", "--format": image_format != "qcow2", "--force": force,
                  "--job-id": job_id is not None}
        if any(single.values()):
            raise UsageError(f"{', '.join(flag for flag, given in single.items() if given)}: not with --into "
                             "(a chain's images are qcow2 files qmpctl names itself)")
        return backup_into(common, devices=words or [], into=into, full=full, exclude=exclude or [],
                           keep_chains=keep_chains, new_chain_after=new_chain_after,
                           max_incrementals=max_incrementals, compress=compress, estimate=estimate,
                           skip_below=skip_below, fleece=fleece,
                           speed=speed,
                           wait=wait, wait_timeout=wait_timeout, progress=progress,
                           freeze="try" if freeze_try else "yes" if freeze else "no",
                           freeze_timeout=freeze_timeout, agent=agent, metrics=metrics)
    chained = {"--full": full, "--exclude": bool(exclude), "--metrics": metrics is not None,
               "--keep-chains": keep_chains is not None,
               "--new-chain-after": new_chain_after is not None, "--max-incrementals": max_incrementals is not None,
               "--compress": compress, "--estimate": estimate, "--skip-below": skip_below is not None,
               "--fleece": fleece is not None,
               "--freeze": freeze,
               "--freeze-try": freeze_try, "--freeze-timeout": freeze_timeout is not None, "-a": agent is not None}
    if any(chained.values()):
        raise UsageError(f"{', '.join(flag for flag, given in chained.items() if given)}: only with --into DIR")
    if len(words) != 2:
        raise UsageError(f"give DEVICE TARGET (got {len(words)} word(s)), or DEVICE... --into DIR for a backup chain")
    device, target = words
    from qmpctl.backup import full as backup_lib
    from qmpctl.timing import BLOCK_JOB_WAIT_TIMEOUT

    options = backup_lib.BackupOptions(
        device, target, image_format, sync, backup_lib.parse_speed(speed) if speed else None, force,
        wait, BLOCK_JOB_WAIT_TIMEOUT if wait_timeout is None else wait_timeout, job_id)
    targets, files = _the_vm(common, "a backup writes one TARGET")
    if files.reach == OVER_SSH:  # the VM's host is checked through the session's connection
        backup_lib.check_target(target, is_local=False, force=True)  # here: only that the path is absolute
    else:
        backup_lib.check_target(target, is_local=files.is_local, force=force)  # before connecting to anything
    if printed_plan(common, options.requests(files.is_local), options.plan_note()):
        return ExitCode.OK
    from qmpctl.cli.progress import printer_for
    from qmpctl.timing import CHECK_EVERY
    from qmpctl.cli.readings import Meter, bar_text, json_text

    printer = printer_for(progress, bar=bar_text, json=json_text,
                          finished=lambda reading: reading.status == "concluded",
                          changed=lambda reading: reading.done) if wait else None
    meter = Meter()

    def show(state: Any) -> None:
        if printer is not None:
            printer(meter.read(state))

    def action(session: Any, deadline: Any, vm: Any) -> dict[str, Any]:
        return {"return": backup_lib.backup(session, deadline, options, target_is_local=files.is_local,
                                            progress=show if printer is not None else None,
                                            progress_every=printer.every if printer is not None else CHECK_EVERY,
                                            files=files.remote())}

    try:
        return run(common, action, options.requests(files.is_local), targets=targets)
    finally:
        if printer is not None:
            printer.close()
