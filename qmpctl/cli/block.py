"""Block-device commands: block, jobs, hotplug-disk, unplug-disk, backup.

The work happens in :mod:`qmpctl.block` and :mod:`qmpctl.backup`, imported
inside the commands so that other commands do not pay for them.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional

import typer

from qmpctl.cli import app
from qmpctl.cli.common import Common, command, execute_one, run
from qmpctl.errors import UsageError
from qmpctl.request import Request


def _choice(*values: str) -> Any:
    """A choice option's type: the value stays a plain str."""
    import click

    return click.Choice(values)


BAR_EVERY = 0.25
JSON_EVERY = 1.0


@app.command("block", epilog="Example: qmpctl block -s /tmp/vm.sock --pretty")
@command()
def block(
    nodes: bool = typer.Option(False, "--nodes", help="List every named block node (query-named-block-nodes), "
                               "including nodes no device uses yet."),
    *, common: Common,
) -> int:
    """Show the VM's block devices (query-block)."""
    request = Request("query-named-block-nodes" if nodes else "query-block")
    return run(common, execute_one(request), [request])


@app.command("jobs", epilog="Example: qmpctl jobs -s /tmp/vm.sock --return-value")
@command()
def jobs(
    dismiss: Optional[str] = typer.Option(None, "--dismiss", metavar="JOB_ID", help="Instead, dismiss a concluded "
                                          "job (job-dismiss) and delete the target nodes a backup --no-wait "
                                          "added for it."),
    *, common: Common,
) -> int:
    """Show the VM's jobs (query-jobs): id, type, status, progress, error.

    A job qmpctl started (backup) stays listed once it has ended, with status
    "concluded" and an "error" member when it failed, until it is dismissed:
    that is how a script checks a backup --no-wait later.
    """
    if dismiss is None:
        request = Request("query-jobs")
        return run(common, execute_one(request), [request])
    request = Request("job-dismiss", {"id": dismiss})

    def action(session: Any, deadline: Any, target: Any) -> dict[str, Any]:
        from qmpctl.backup import dismiss_job

        return dismiss_job(session, deadline, dismiss)

    return run(common, action, [request])


def _only_target_is_local(common: Common, why: str) -> bool:
    """Whether qmpctl can see the VM's files; the command works on exactly one VM."""
    if common.dry_run:
        return True
    targets = common.targets()
    if len(targets) > 1:
        raise UsageError(f"{why}: give exactly one VM, not {len(targets)}")
    return targets[0].is_local


@app.command("hotplug-disk", epilog="Example: qmpctl hotplug-disk -s /tmp/vm.sock /var/lib/vm/data.qcow2 --id data0 "
             "--return-value")
@command()
def hotplug_disk(
    file: str = typer.Argument(..., metavar="FILE", help="The image to attach (a path on the VM's host)."),
    bus: str = typer.Option("virtio", "--bus", click_type=_choice("virtio", "scsi"), help="virtio: a virtio-blk-pci disk; scsi: a scsi-hd on a "
                            "virtio-scsi-pci controller (added when the VM has none)."),
    device_id: Optional[str] = typer.Option(None, "--id", metavar="NAME", show_default=False,
                                            help="The device id; its nodes are NAME-format and NAME-file "
                                            "[default: the first free diskN]."),
    image_format: Optional[str] = typer.Option(None, "--format", click_type=_choice("qcow2", "raw"),
                                               show_default=False,
                                               help="The image format [default: read from its header]."),
    readonly: bool = typer.Option(False, "--readonly", help="Attach the image read-only."),
    *, common: Common,
) -> int:
    """Attach an image as a new disk (blockdev-add + device_add), all or nothing.

    Prints the device id and node names. When a step fails, everything this
    call added is removed again and the exit code says why: 2 for what qmpctl
    can tell before sending (no such file, not a qcow2, an id in use), 1 when
    QEMU refused.
    """
    from qmpctl import block as block_lib

    is_local = _only_target_is_local(common, "hotplug-disk attaches one image")
    filename, detected = block_lib.check_image(file, image_format, is_local=is_local)
    plan = block_lib.HotplugPlan(filename, detected, bus, device_id, readonly)
    return run(common, lambda session, deadline, target: block_lib.hotplug(session, deadline, plan),
               plan.requests())


@app.command("unplug-disk", epilog="Example: qmpctl unplug-disk -s /tmp/vm.sock disk1 --wait-timeout 60")
@command()
def unplug_disk(
    device_id: str = typer.Argument(..., metavar="ID", help="The disk's device id (as hotplug-disk printed it)."),
    wait_timeout: float = typer.Option(30.0, "--wait-timeout", metavar="SECONDS",
                                       help="How long the guest may take to release the device."),
    *, common: Common,
) -> int:
    """Detach a disk: device_del, wait for the guest to release it, then blockdev-del its nodes.

    A PCI disk (virtio) needs the guest's cooperation; a guest that does not
    release it in time ends in exit 4 with nothing deleted (the request stays
    pending in QEMU). A SCSI disk is released at once.
    """
    from qmpctl import block as block_lib

    if not wait_timeout > 0:
        raise UsageError(f"--wait-timeout must be more than 0 seconds, got {wait_timeout:g}")
    request = Request("device_del", {"id": device_id})
    return run(common, lambda session, deadline, target: block_lib.unplug(session, deadline, device_id,
                                                                          wait_timeout), [request])


class _ProgressPrinter:
    """Renders job progress on stderr: a redrawn bar, or one JSON line per change (at most one a second)."""

    def __init__(self, mode: str) -> None:
        from qmpctl.progress import Meter

        self.mode = mode
        self.meter = Meter()
        self.shown_at = float("-inf")
        self.shown_done: Optional[int] = None
        self.drawn = False

    def __call__(self, state: Any) -> None:
        from qmpctl.progress import bar_text, json_text

        reading = self.meter.read(state)
        now = time.monotonic()
        if self.mode == "bar":
            if not (state.concluded or now - self.shown_at >= BAR_EVERY):
                return
            self._write("\r" + bar_text(reading) + "\x1b[K" + ("\n" if state.concluded else ""))
            self.drawn = not state.concluded  # a finished bar ends its line before the result is printed
        else:
            if not (state.concluded or (state.done != self.shown_done and now - self.shown_at >= JSON_EVERY)):
                return
            self._write(json_text(reading) + "\n")
        self.shown_at, self.shown_done = now, state.done

    def close(self) -> None:
        """End a bar that did not finish (an error message follows it)."""
        if self.drawn:
            self._write("\n")

    @staticmethod
    def _write(text: str) -> None:
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except OSError:
            pass  # a closed stderr must not cost the backup


@app.command("backup", epilog="Example: qmpctl backup -s /tmp/vm.sock vd0 /backup/vd0-$(date +%F).qcow2 "
             "--progress json")
@command()
def backup(
    words: list[str] = typer.Argument(..., metavar="DEVICE... [TARGET]", help="The disk: its device id (vd0), drive "
                                      "name or node name; then the image file to create (it must not exist). With "
                                      "--into: one or more disks, no TARGET."),
    into: Optional[str] = typer.Option(None, "--into", metavar="DIR", show_default=False,
                                       help="Chain mode: extend each disk's backup chain in DIR by an incremental "
                                       "(the first run makes a full one)."),
    full: bool = typer.Option(False, "--full", help="With --into: start a new chain with a full backup."),
    keep_chains: Optional[int] = typer.Option(None, "--keep-chains", metavar="N", show_default=False,
                                              help="With --into: after success, delete the oldest chains beyond N."),
    freeze: Optional[str] = typer.Option(None, "--freeze", is_flag=False, flag_value="yes", metavar="[=try]",
                                         show_default=False,
                                         help="With --into: freeze the guest's filesystems through the guest agent "
                                         "while the jobs start; try: back up unfrozen when the agent is not there."),
    freeze_timeout: Optional[float] = typer.Option(None, "--freeze-timeout", metavar="SECONDS", show_default=False,
                                                   help="How long the freeze may take [default: 10]."),
    agent: Optional[str] = typer.Option(None, "-a", "--agent", metavar="ADDR", show_default=False,
                                        help="The guest agent for --freeze."),
    sync: str = typer.Option("full", "--sync", click_type=_choice("full", "top"), help="full: the whole disk; top: only what the top "
                                  "image holds (the target then names the source's backing file)."),
    image_format: str = typer.Option("qcow2", "--format", click_type=_choice("qcow2", "raw"),
                                     help="The target's format."),
    speed: Optional[str] = typer.Option(None, "--speed", metavar="BYTES_PER_SEC", show_default=False,
                                        help="Limit the copy rate, e.g. 10M [default: no limit]."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing TARGET; also needed when the VM "
                               "runs on another host, where qmpctl cannot check it."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the job has finished (default), or "
                              "return once it started and print its job id."),
    wait_timeout: Optional[float] = typer.Option(None, "--wait-timeout", metavar="SECONDS", show_default=False,
                                                 help="Cancel the job and exit 4 when it takes longer "
                                                 "[default: one day]."),
    progress: str = typer.Option("auto", "--progress", click_type=_choice("auto", "bar", "json", "none"), help="While waiting, show progress on "
                                          "stderr: bar, json (one line per update), none; auto: a bar when "
                                          "stderr is a terminal."),
    job_id: Optional[str] = typer.Option(None, "--job-id", metavar="ID", show_default=False,
                                         help="Name the job [default: backup-DEVICE]."),
    *, common: Common,
) -> int:
    """Back a disk up to a new image file, and wait until the copy is complete.

    Exit 0 only when the job finished without error. Exit 2: TARGET exists
    (untouched; --force overwrites) or cannot be written. Exit 6: the job
    failed (the reason follows). Exit 4 (--wait-timeout) and 130 (Ctrl-C,
    SIGTERM): the job was cancelled first. An incomplete TARGET qmpctl created
    is removed. Uses drive-backup, or the blockdev flow where QEMU refuses it.
    """
    if into is not None:
        from qmpctl.cli.chain import backup_into

        return backup_into(common, devices=words, into=into, full=full, keep_chains=keep_chains, speed=speed,
                           wait=wait, wait_timeout=wait_timeout, progress=progress, freeze=freeze,
                           freeze_timeout=freeze_timeout, agent=agent)
    if len(words) != 2:
        raise UsageError("give DEVICE TARGET, or DEVICE... --into DIR for a backup chain")
    device, target = words
    from qmpctl import backup as backup_lib

    options = backup_lib.BackupOptions(
        device, target, image_format, sync, backup_lib.parse_speed(speed) if speed else None, force,
        wait, backup_lib.DEFAULT_WAIT_TIMEOUT if wait_timeout is None else wait_timeout, job_id)
    is_local = _only_target_is_local(common, "a backup writes one TARGET")
    backup_lib.check_target(target, is_local=is_local, force=force)  # before connecting to anything
    mode = progress
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "none"
    printer = _ProgressPrinter(mode) if wait and mode != "none" else None

    def action(session: Any, deadline: Any, vm: Any) -> dict[str, Any]:
        return backup_lib.backup(session, deadline, options, target_is_local=vm.is_local, progress=printer,
                                 progress_every=BAR_EVERY if mode == "bar" else JSON_EVERY)

    try:
        return run(common, action, options.requests(is_local))
    finally:
        if printer is not None:
            printer.close()


@app.command("backup-verify", epilog="Example: qmpctl backup-verify /backup/vm1 --json")
@command()
def backup_verify(
    path: str = typer.Argument(..., metavar="DIR", help="A folder of chains (backup --into DIR), or one chain folder."),
    json_lines: bool = typer.Option(False, "--json", help="One JSON line per image."),
    wait_timeout: Optional[float] = typer.Option(None, "--wait-timeout", metavar="SECONDS", show_default=False,
                                                 help="[default: one day]"),
    *, common: Common,
) -> int:
    """Check every image of every chain offline: qemu-img check, backing links, sizes, sha256."""
    from qmpctl.cli.chain import backup_verify as handler

    return handler(common, path=path, json_lines=json_lines, wait_timeout=wait_timeout)


@app.command("restore", epilog="Example: qmpctl restore /backup/vm1/20261201T030000Z /tmp/vd0.qcow2 --point 3")
@command()
def restore(
    chain: str = typer.Argument(..., metavar="CHAIN", help="A chain folder (or a folder of one disk's chains: the latest)."),
    target: str = typer.Argument(..., metavar="TARGET", help="The image to write; it must not exist."),
    point: Optional[int] = typer.Option(None, "--point", metavar="N", show_default=False, help="Backup N (1: the full)."),
    at: Optional[str] = typer.Option(None, "--at", metavar="TIME", show_default=False, help="The last backup started at or before TIME."),
    force: bool = typer.Option(False, "--force", help="Replace an existing TARGET."),
    image_format: str = typer.Option("qcow2", "--format", click_type=_choice("qcow2", "raw"), help="TARGET's format."),
    progress: str = typer.Option("auto", "--progress", click_type=_choice("auto", "bar", "json", "none"), help="progress"),
    wait_timeout: Optional[float] = typer.Option(None, "--wait-timeout", metavar="SECONDS", show_default=False, help="[default: one day]"),
    boot_check: bool = typer.Option(False, "--boot-check", help="Boot the restored image and wait for its guest agent."),
    qemu_args: Optional[list[str]] = typer.Option(None, "--qemu-arg", metavar="ARG", help="Repeatable."),
    boot_timeout: float = typer.Option(120.0, "--boot-timeout", metavar="SECONDS", help="boot timeout"),
    check_command: Optional[str] = typer.Option(None, "--check-command", metavar="CMD", help="run in the guest"),
    *, common: Common,
) -> int:
    """Write a standalone image of the disk as it was at one backup of a chain."""
    from qmpctl.cli.chain import restore_chain

    return restore_chain(common, chain=chain, target=target, point=point, at=at, force=force, image_format=image_format,
                         progress=progress, wait_timeout=wait_timeout,
                         boot_check=boot_check, qemu_args=list(qemu_args or []), boot_timeout=boot_timeout,
                         check_command=check_command)
