"""Full backups of a VM's disk to a new image file: nothing overwritten, no job left behind.

drive-backup does it in one command where the VM accepts it. Where it is
refused (``-compat deprecated-input=reject``, or a QEMU that dropped it), the
same backup runs through the blockdev flow: blockdev-create of the target,
blockdev-add, blockdev-backup, then blockdev-del. Both start the job with
auto-dismiss off (see :mod:`qmpctl.vm.jobs`), and both refuse an existing target
file before sending anything, because QEMU would silently truncate it.
"""

from __future__ import annotations

import os
import re
import time

from qmpctl.vm.block import (ROLLBACK_GRACE, blockdev_del, check_id, first_free, named_nodes, undo_all,
                          with_notes)
from qmpctl.vm.disks import find_disk
from qmpctl.deadline import Deadline
from qmpctl.errors import DeadlineExceeded, Interrupted, JobFailed, ProtocolError, QmpctlError, UsageError, VmError
from qmpctl.vm.jobs import (JobState, cancel_job, dismiss, failure_detail, find_job, finish, list_jobs,
                         wait_for_end)
from qmpctl.records import TYPE_CHECKING, NamedTuple
from qmpctl.wire.request import Request
from qmpctl.signals import shielded
from qmpctl.timing import BLOCK_JOB_WAIT_TIMEOUT
from qmpctl.wire.targets import Session
from qmpctl.units import parse_size
from qmpctl.wire.waiting import CHECK_EVERY

if TYPE_CHECKING:
    from typing import Any, Optional
    from qmpctl.vm.block import UndoStep
    from qmpctl.vm.jobs import Progress
    from qmpctl.wire.ssh import RemoteFiles

MAX_JOB_ID = 19
"""Target node names add up to 12 characters to the job id, and QEMU allows 31."""

END_JOB_PLAN_NOTE = ("a plan, not all the requests (--dry-run connects to nothing): the run reads the job's state "
                     "first (query-jobs), then deletes the target nodes a backup --no-wait added for it "
                     "(blockdev-del), and removes the target file when the job failed and the backup created it")
BUSY_MARK = "is busy: block device is in use by block job"
"""QEMU's words for a disk a job holds (block_job_add_bdrv / bdrv_op_is_blocked)."""


def parse_speed(text: str) -> int:
    """Bytes per second: ``1048576``, ``512K``, ``10M``, ``1G`` (powers of 1024)."""
    return parse_size(text, "--speed", "bytes per second")


class BackupOptions:
    """What ``backup`` was asked to do; invalid combinations are refused on construction.

    A plain class, not a dataclass: ``dataclasses`` imports ``inspect``, a few
    milliseconds on every call of the command.
    """

    __slots__ = ("device", "target", "format", "sync", "speed", "force", "wait", "wait_timeout", "job_id")

    def __init__(self, device: str, target: str, format: str = "qcow2", sync: str = "full",
                 speed: Optional[int] = None, force: bool = False, wait: bool = True,
                 wait_timeout: float = BLOCK_JOB_WAIT_TIMEOUT, job_id: Optional[str] = None) -> None:
        self.device = device
        self.target = target
        self.format = format
        self.sync = sync
        self.speed = speed
        self.force = force
        self.wait = wait
        self.wait_timeout = wait_timeout
        self.job_id = job_id
        if self.sync == "top" and self.format == "raw":
            raise UsageError("--sync top needs a qcow2 target: a raw image cannot name the backing file "
                             "the unchanged data stays in")
        if not self.wait_timeout > 0:
            raise UsageError(f"--wait-timeout must be more than 0 seconds, got {self.wait_timeout:g}")
        if self.job_id is not None:
            check_id(self.job_id, "--job-id", MAX_JOB_ID)

    def default_job_id(self) -> str:
        label = re.sub(r"[^A-Za-z0-9_.-]", "-", self.device.strip("#/")) or "disk"
        return f"backup-{label}"[:MAX_JOB_ID].rstrip("-.")

    def requests(self, is_local: bool = True) -> list[Request]:
        """The request as --dry-run shows it: DEVICE as given (the real run resolves it to a node name)."""
        path = os.path.abspath(self.target) if is_local else self.target
        job_id = self.job_id or self.default_job_id()
        if not self.wait:
            target = target_nodes(job_id)[0] if self.format == "qcow2" else target_nodes(job_id)[1]
            return [Request("blockdev-backup", _backup_arguments(self, job_id, self.device, target))]
        return [drive_backup_request(self, job_id, self.device, path)]

    def plan_note(self) -> str:
        """Why --dry-run shows a plan: what the real run learns from the VM first (--dry-run connects to nothing)."""
        job = self.job_id or self.default_job_id()
        note = (f"a plan, not the exact requests: the run first asks the VM, resolves {self.device} to its drive "
                "or node name")
        if self.job_id is None:
            note += f", and picks the job id {job} or, when that is taken, {job[:MAX_JOB_ID - 5]}-2 and so on"
        if self.wait:
            return note + ("; where QEMU refuses drive-backup it creates the target with blockdev-create, adds "
                           "it with blockdev-add and runs blockdev-backup instead")
        return note + ("; before blockdev-backup it creates the target with blockdev-create and adds it with "
                       "blockdev-add (a --no-wait backup always takes this flow)")


def _backup_arguments(options: BackupOptions, job_id: str, device: str, target: str) -> dict[str, Any]:
    arguments: dict[str, Any] = {"job-id": job_id, "device": device, "target": target, "sync": options.sync}
    if options.speed is not None:
        arguments["speed"] = options.speed
    arguments["auto-dismiss"] = False
    return arguments


def drive_backup_request(options: BackupOptions, job_id: str, device: str, path: str) -> Request:
    arguments = _backup_arguments(options, job_id, device, path)
    arguments["format"] = options.format
    return Request("drive-backup", arguments)


def check_target(path: str, *, is_local: bool, force: bool, files: Optional["RemoteFiles"] = None,
                 deadline: Optional[Deadline] = None) -> str:
    """The absolute target path, or :class:`UsageError` (exit 2) before anything is sent.

    QEMU truncates an existing target without a word, so an existing file is
    refused unless ``force``; where qmpctl cannot see the VM's files it cannot
    check that, and refuses unless ``force`` too. ``files`` is the VM host's
    file system reached over SSH: the same checks run there.
    """
    if files is not None and deadline is not None:
        if not path.startswith("/"):
            raise UsageError(f"{path}: give an absolute path {files.side}, where the VM runs")
        folder = os.path.dirname(path) or "/"
        kind, folder_kind = files.kinds([path, folder], deadline)
        return _judge_target(path, folder, kind == "dir", kind != "missing", folder_kind == "dir", force,
                             f" {files.side}")
    if not is_local:
        if not force:
            raise UsageError(f"refusing to back up to {path} on a VM reached over the network: qmpctl cannot "
                             "see that host's files to check the target does not exist, and QEMU would "
                             "overwrite it; pass --force to accept that")
        if not os.path.isabs(path):
            raise UsageError(f"{path}: give an absolute path: the VM runs on another host")
        return path
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    return _judge_target(path, folder, os.path.isdir(path), os.path.lexists(path), os.path.isdir(folder), force)


def _judge_target(path: str, folder: str, is_dir: bool, exists: bool, folder_is_dir: bool, force: bool,
                  side: str = "") -> str:
    """The verdict on a target path, wherever its file system is (``side`` says where, for messages)."""
    if not folder_is_dir:
        raise UsageError(f"cannot back up to {path}{side}: the directory {folder} does not exist")
    if is_dir:
        raise UsageError(f"cannot back up to {path}{side}: it is a directory")
    if exists and not force:
        raise UsageError(f"{path} exists{side}; qmpctl does not overwrite backups (QEMU would truncate it): "
                         "choose a new name, or pass --force to overwrite it")
    return path


class Source(NamedTuple):
    """The disk to back up, resolved from a device id, drive name or node name."""

    device: str
    """What drive-backup and blockdev-backup get: the drive name where there is one, else the node name."""
    size: int
    backing_file: Optional[str]
    backing_format: Optional[str]


def resolve_source(session: Session, deadline: Deadline, name: str) -> Source:
    """The disk ``name`` means (see :func:`~qmpctl.vm.disks.find_disk`), as a backup's source."""
    disk = find_disk(session, deadline, name)
    if not disk.top:
        raise UsageError(f"disk {disk.label!r} has no medium: there is nothing to back up")
    return _source(disk.block_name, disk.info)


def _members(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _source(device: str, info: dict[str, Any]) -> Source:
    image = _members(info.get("image"))
    backing_image = _members(image.get("backing-image"))
    return Source(device, int(image.get("virtual-size") or 0),
                  image.get("full-backing-filename") or image.get("backing-filename"),
                  image.get("backing-filename-format") or backing_image.get("format"))


def _refuse_vm_files(session: Session, deadline: Deadline, path: str, is_local: bool) -> None:
    """Even --force never lets a backup land on an image the VM itself uses."""
    for info in named_nodes(session, deadline).values():
        used = str(info.get("file") or "")
        if not used or used.startswith("json:"):
            continue
        same = used == path
        if is_local and not same:
            try:
                same = os.path.samefile(used, path)
            except OSError:
                same = False
        if same:
            raise UsageError(f"{path} is an image the VM is using (node {info.get('node-name')}); "
                             "a backup never goes there, not even with --force")


def target_nodes(job_id: str) -> tuple[str, str, str]:
    """The nodes the blockdev flow may add for job ``job_id``: a qcow2 target, and its file node.

    The file node is ``-target-file`` for a file this backup created and
    ``-target-over`` for one it overwrote (--force, or a VM on another
    host): so ``jobs --dismiss`` of a failed job can tell, from the VM alone,
    which target file is qmpctl's to remove.
    """
    return f"{job_id}-target", f"{job_id}-target-file", f"{job_id}-target-over"


class _BackupRun:
    """One backup in flight: what it started and added, so any failure can take it all back."""

    def __init__(self, session: Session, deadline: Deadline, options: BackupOptions, source: Source,
                 path: str, job_id: str, target_is_new: bool, files: Optional["RemoteFiles"] = None) -> None:
        self.session = session
        self.deadline = deadline
        self.options = options
        self.source = source
        self.path = path
        self.job_id = job_id
        self.target_is_new = target_is_new
        self.files = files
        self.method = "drive-backup"
        self.jobs: list[str] = []
        self.undo: list[UndoStep] = []
        self.notes: list[str] = []

    def start(self) -> None:
        """drive-backup where QEMU takes it; the blockdev flow where it does not, and for --no-wait.

        A --no-wait backup keeps its target nodes until ``jobs --dismiss``,
        and they tell which file is the target, so a failed job's partial
        file can be removed then.
        """
        self.jobs.append(self.job_id)  # before sending: an interrupt may come between request and reply
        try:
            if not self.options.wait:
                self._blockdev_flow()
                return
            try:
                self.session.execute(drive_backup_request(self.options, self.job_id, self.source.device,
                                                          self.path), self.deadline)
            except VmError as exc:
                if exc.error_class != "CommandNotFound":
                    raise
                self._blockdev_flow()
        except VmError as exc:
            if BUSY_MARK not in exc.desc:
                raise
            raise self.busy(exc) from None

    def busy(self, error: VmError) -> VmError:
        """QEMU's "Node '#block571' is busy" names an internal node: name the jobs, and how to cancel one."""
        try:
            others = [job for job in list_jobs(self.session, self.deadline).values()
                      if job.id not in self.jobs and not job.concluded]
        except QmpctlError:
            others = []
        if not others:
            return error
        listed = ", ".join(f"{job.id} ({job.type}, {job.status})" for job in others)
        return VmError(error.error_class, f"{self.options.device} is busy: in use by block job {listed}; if that is "
                       f"a leftover (a qmpctl that was killed), 'qmpctl jobs --cancel {others[0].id}' cancels it",
                       sent=error.sent, received=error.received)

    def _blockdev_flow(self) -> None:
        self.method = "blockdev-backup"
        qcow2 = self.options.format == "qcow2"
        target, new_file, overwritten = target_nodes(self.job_id)
        file_node = new_file if self.target_is_new else overwritten
        if not qcow2:
            target = file_node
        self._create({"driver": "file", "filename": self.path, "size": 0 if qcow2 else self.source.size}, "file")
        self._add({"driver": "file", "node-name": file_node, "filename": self.path})
        if qcow2:
            image: dict[str, Any] = {"driver": "qcow2", "file": file_node, "size": self.source.size}
            node: dict[str, Any] = {"driver": "qcow2", "node-name": target, "file": file_node}
            if self.options.sync == "top" and self.source.backing_file:
                image["backing-file"] = self.source.backing_file
                if self.source.backing_format:
                    image["backing-fmt"] = self.source.backing_format
                node["backing"] = None  # the chain stays the source's; the target only names it
            self._create(image, "qcow2")
            self._add(node)
        arguments = _backup_arguments(self.options, self.job_id, self.source.device, target)
        self.session.execute(Request("blockdev-backup", arguments), self.deadline)

    def _create(self, options: dict[str, Any], what: str) -> None:
        job_id = f"{self.job_id}-create-{what}"
        self.jobs.append(job_id)
        request = Request("blockdev-create", {"job-id": job_id, "options": options})
        self.session.execute(request, self.deadline)
        state = wait_for_end(self.session, job_id, self.deadline, self.deadline)
        dismiss(self.session, job_id, self.deadline)
        self.jobs.remove(job_id)
        if state.error:
            raise VmError("GenericError", f"could not create {self.path}: {state.error}",
                          sent=request.as_dict(), received=state._asdict())

    def _add(self, options: dict[str, Any]) -> None:
        node = options["node-name"]
        self.session.execute(Request("blockdev-add", options), self.deadline)
        self.undo.append((f"delete block node {node}", lambda grace: blockdev_del(self.session, node, grace)))

    def end(self) -> Optional[JobState]:
        """Cancel what still runs, dismiss every job, delete the target nodes; returns the backup job's end."""
        outcome: dict[str, Optional[JobState]] = {}

        def end_job(job_id: str) -> UndoStep:
            def step(grace: Deadline) -> None:
                outcome[job_id] = finish(self.session, job_id, grace)
            return f"end job {job_id}", step

        self.notes += undo_all(self.undo + [end_job(job) for job in self.jobs])
        self.jobs.clear()
        self.undo.clear()
        return outcome.get(self.job_id)

    def discard_target(self) -> str:
        """Remove a target this run created and did not finish; returns a note for the message."""
        if not self.target_is_new:
            return f"{self.path} is incomplete" if self.options.force else ""
        if self.files is not None:
            try:
                self.files.remove(self.path, Deadline(ROLLBACK_GRACE))
            except QmpctlError as exc:
                return f"could not remove the incomplete {self.path} {self.files.side}: {exc.message}"
            return f"removed the incomplete {self.path} {self.files.side}"
        try:
            with shielded():
                os.unlink(self.path)
        except FileNotFoundError:
            return ""
        except OSError as exc:
            return f"could not remove the incomplete {self.path}: {exc.strerror or exc}"
        return f"removed the incomplete {self.path}"

    def fail(self, error: BaseException, target_done: bool = False) -> BaseException:
        """The error to raise after taking everything back, with notes on what happened to the target."""
        notes = list(self.notes)
        if not target_done:
            notes.append(self.discard_target())
        return with_notes(error, [note for note in notes if note])


def _choose_job_id(session: Session, deadline: Deadline, options: BackupOptions) -> str:
    jobs = list_jobs(session, deadline)
    nodes = named_nodes(session, deadline)

    def taken(job_id: str) -> bool:
        return job_id in jobs or any(node in nodes for node in target_nodes(job_id))

    if options.job_id is not None:
        if taken(options.job_id):
            raise UsageError(f"the VM already has a job or node named {options.job_id!r}: choose another --job-id")
        return options.job_id
    base = options.default_job_id()
    return base if not taken(base) else first_free(f"{base[:MAX_JOB_ID - 5]}-", taken, start=2)


def _progress_text(state: Optional[JobState]) -> str:
    return f" ({state.percent:.0f}% copied)" if state is not None and state.total else ""


def backup(session: Session, deadline: Deadline, options: BackupOptions, *, target_is_local: bool,
           progress: Optional[Progress] = None, progress_every: float = CHECK_EVERY,
           files: Optional["RemoteFiles"] = None) -> dict[str, Any]:
    """Back ``options.device`` up to ``options.target``; waits for the end unless ``options.wait`` is off.

    While waiting, ``progress`` sees the job's state about every ``progress_every`` seconds. ``files``
    is the VM host's file system when it is reached over SSH: the target is checked (and a partial
    one removed) there.
    """
    path = check_target(options.target, is_local=target_is_local, force=options.force, files=files,
                        deadline=deadline)
    if files is not None:  # without --force, check_target has just seen that it does not exist
        target_is_new = not options.force or files.kinds([path], deadline) == ["missing"]
    else:
        target_is_new = target_is_local and not os.path.lexists(path)
    source = resolve_source(session, deadline, options.device)
    _refuse_vm_files(session, deadline, path, target_is_local)
    job_id = _choose_job_id(session, deadline, options)
    run = _BackupRun(session, deadline, options, source, path, job_id, target_is_new, files)
    try:
        run.start()
    except BaseException as exc:
        run.end()
        if isinstance(exc, KeyboardInterrupt):
            raise run.fail(Interrupted(f"interrupted while backup job {job_id} was being set up")) from None
        raise run.fail(exc)  # noqa: B904 (the same exception, its message amended)
    summary: dict[str, Any] = {"job-id": job_id, "device": source.device, "target": path,
                               "format": options.format, "sync": options.sync, "method": run.method}
    if not options.wait:
        return summary
    started = time.monotonic()
    wait = Deadline(options.wait_timeout)
    try:
        with deadline.paused():
            final = wait_for_end(session, job_id, wait, deadline, progress, progress_every)
    except ProtocolError as exc:
        raise run.fail(ProtocolError(
            f"the VM went away while backup job {job_id} was running ({exc.message})",
            sent=exc.sent, received=exc.received)) from None
    except (DeadlineExceeded, KeyboardInterrupt) as exc:
        state = run.end()
        completed = state is not None and not state.error
        kind: type[QmpctlError]
        if isinstance(exc, KeyboardInterrupt):
            kind, message = Interrupted, f"interrupted: backup job {job_id}"
        elif wait.expired():
            kind, message = DeadlineExceeded, (f"backup job {job_id} did not finish within --wait-timeout "
                                               f"{options.wait_timeout:g}s; it")
        else:
            kind, message = DeadlineExceeded, f"{exc}; backup job {job_id}"
        if completed:
            message += f" had completed just before: {path} is complete"
        elif state is not None:
            message += f" was cancelled{_progress_text(state)}"
        else:
            message += " could not be cancelled"
        raise run.fail(kind(message), target_done=completed) from None
    except BaseException as exc:  # e.g. the job vanished, or query-jobs failed: still take back what is ours
        run.end()
        raise run.fail(exc)  # noqa: B904 (the same exception, its message amended)
    run.end()
    if final.error:
        raise run.fail(JobFailed(f"backup job {job_id} failed{failure_detail(session, job_id)}: {final.error}",
                                 sent=Request("query-jobs").as_dict(), received=final._asdict()))
    if progress is not None:
        progress(final)
    summary.update({"bytes": final.total, "seconds": round(time.monotonic() - started, 3)})
    if run.notes:
        summary["warnings"] = run.notes
    return summary


def dismiss_job(session: Session, deadline: Deadline, job_id: str, *, target_is_local: bool) -> dict[str, Any]:
    """job-dismiss a concluded job, delete the target nodes a ``--no-wait`` backup added for it, and report.

    A job that failed is a :class:`JobFailed` (exit 6) naming its error, once
    everything is cleaned up: the nodes deleted and, where this backup created
    the target file (its node says so) on this host, the partial file removed.
    """
    state = find_job(session, job_id, deadline)
    dismiss(session, job_id, deadline)  # QEMU refuses a job that has not concluded: exit 1, nothing changed
    result, notes = _drop_target(session, deadline, job_id, state, target_is_local)
    result = {"dismissed": job_id, **result}
    if state is None or not state.error:
        return result
    raise JobFailed(f"job {job_id} had failed: {state.error}; " + "; ".join(["dismissed it"] + notes),
                    sent=Request("query-jobs").as_dict(), received=state._asdict())


def cancel_backup_job(session: Session, deadline: Deadline, job_id: str, *,
                      target_is_local: bool) -> dict[str, Any]:
    """``jobs --cancel``: end a job someone left running (a qmpctl killed by SIGKILL or the OOM killer).

    Cancels it, waits until it is gone, dismisses it, and deletes what a
    ``--no-wait`` backup added for it, with its partial target file.
    """
    state = cancel_job(session, job_id, deadline)
    if state is None:
        raise VmError("GenericError", f"the VM has no job {job_id!r} (qmpctl jobs lists them)",
                      sent=Request("query-jobs").as_dict())
    result, _ = _drop_target(session, deadline, job_id, state, target_is_local)
    return {"cancelled": job_id, **result}


def _drop_target(session: Session, deadline: Deadline, job_id: str, state: Optional[JobState],
                 target_is_local: bool) -> tuple[dict[str, Any], list[str]]:
    """Delete the target nodes of an ended backup job; remove its target file if it is incomplete and ours.

    Only a file node named ``-target-file`` marks a file this backup created.
    Returns the result members (status, error, deleted nodes, removed file) and notes for a message.
    """
    nodes = named_nodes(session, deadline)
    created = str(nodes.get(target_nodes(job_id)[1], {}).get("file") or "")
    deleted = []
    with shielded():
        for node in target_nodes(job_id):
            if node in nodes:
                blockdev_del(session, node, deadline)
                deleted.append(node)
    result: dict[str, Any] = {"status": state.status if state else "concluded"}
    if state is not None and state.error:
        result["error"] = state.error
    result["deleted-nodes"] = deleted
    notes = [f"deleted block node(s) {', '.join(deleted)}"] if deleted else []
    if state is not None and state.error and created and target_is_local and os.path.isabs(created):
        try:
            with shielded():
                os.unlink(created)
            result["removed"] = created
            notes.append(f"removed the incomplete {created}")
        except FileNotFoundError:
            pass
        except OSError as exc:
            notes.append(f"could not remove the incomplete {created}: {exc.strerror or exc}")
    return result, notes
