"""Make a running VM's disk standalone: copy its backing data into it (``block-stream``, like virsh blockpull).

The job runs in QEMU while the guest keeps using the disk; ``qmpctl stream``
waits for it, and when it has completed flushes the disk, so the new
metadata (the image no longer names a backing file) is on the host's disk
before success is reported: a host crash right after cannot take the copied
data back. QEMU has no QMP command that flushes one disk: the HMP
``qemu-io DEVICE "flush"`` does it (what the guest's own flush does).

Interrupted (Ctrl-C, SIGTERM, --wait-timeout) the job is cancelled; what it
copied stays copied, the VM keeps running on its overlay, and ``stream``
again continues where the image still lacks data. A job started with
``--no-wait`` shows in ``qmpctl jobs``; ``stream`` again waits for it (or,
once it has ended, reads its outcome and flushes).
"""

from __future__ import annotations

import re
import time

from qmpctl.deadline import Deadline
from qmpctl.errors import Busy, DeadlineExceeded, Interrupted, JobFailed, ProtocolError, UsageError
from qmpctl.records import TYPE_CHECKING, NamedTuple
from qmpctl.signals import shielded
from qmpctl.timing import STREAM_CANCEL_GRACE
from qmpctl.vm.block import block_devices, device_id_of
from qmpctl.vm.jobs import cancel_job, dismiss, failure_detail, find_job, wait_for_end
from qmpctl.wire.request import Request
from qmpctl.wire.targets import Session
from qmpctl.wire.waiting import CHECK_EVERY

if TYPE_CHECKING:
    from typing import Any, Optional
    from qmpctl.vm.jobs import Progress


class StreamDisk(NamedTuple):
    """The disk to stream, as query-block describes it."""

    name: str
    node: str
    drive: str
    qdev: str
    file: str
    backing: Optional[str]
    """The backing file's full path, None when the disk stands alone."""


def job_id_for(name: str) -> str:
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40]
    return f"stream-{label}"


def find_stream_disk(session: Session, deadline: Deadline, name: str) -> StreamDisk:
    for entry in block_devices(session, deadline):
        inserted = entry.get("inserted")
        if not isinstance(inserted, dict):
            continue
        drive, node = str(entry.get("device") or ""), str(inserted.get("node-name") or "")
        qdev = str(entry.get("qdev") or "")
        if name in (drive, node) or (qdev and device_id_of(qdev) == name):
            described = inserted.get("image")
            image: dict[str, Any] = described if isinstance(described, dict) else {}
            backing = image.get("full-backing-filename") or image.get("backing-filename")
            return StreamDisk(name, node or drive, drive, qdev, str(image.get("filename") or inserted.get("file")),
                              str(backing) if backing else None)
    raise UsageError(f"the VM has no disk {name!r}: give a device id, drive name or node name "
                     "(qmpctl block lists them)")


def stream_request(job_id: str, node: str, speed: Optional[int]) -> Request:
    arguments: dict[str, Any] = {"job-id": job_id, "device": node, "auto-dismiss": False}
    if speed is not None:
        arguments["speed"] = speed
    return Request("block-stream", arguments)


def flush(session: Session, disk: StreamDisk, deadline: Deadline) -> None:
    """Write what QEMU holds of ``disk`` (its image's cached metadata included) to the host's disk."""
    where = f"-d {disk.qdev}" if disk.qdev else disk.drive or disk.node
    request = Request("human-monitor-command", {"command-line": f'qemu-io {where} "flush"'})
    said = session.execute(request, deadline).get("return")
    if isinstance(said, str) and said.strip():
        raise JobFailed(f"the stream of {disk.name} completed, but flushing it failed: {said.strip()}",
                        sent=request.as_dict(), received=said)


def stream(session: Session, deadline: Deadline, name: str, *, speed: Optional[int] = None, wait: bool = True,
           wait_timeout: float = 86400.0, progress: Optional[Progress] = None,
           progress_every: float = CHECK_EVERY) -> dict[str, Any]:
    """Copy ``name``'s backing data into it and wait; the result says what was copied and that it stands alone."""
    disk = find_stream_disk(session, deadline, name)
    job_id = job_id_for(name)
    result: dict[str, Any] = {"device": name, "job-id": job_id, "image": disk.file, "backing": disk.backing}
    existing = find_job(session, job_id, deadline)
    if existing is None and disk.backing is None:
        flush(session, disk, deadline)
        return {**result, "standalone": True, "bytes": 0, "seconds": 0.0,
                           "note": "the disk has no backing file: nothing to stream"}
    if existing is not None and existing.type != "stream":
        raise Busy(f"busy: job {job_id} of {name} is a {existing.type} job, not a stream")
    result["resumed"] = existing is not None  # a stream --no-wait started it, or a qmpctl that was killed left it
    started = time.monotonic()
    limit = Deadline(wait_timeout)
    try:
        if existing is None:
            session.execute(stream_request(job_id, disk.node, speed), deadline)
        if not wait:
            return result
        with deadline.paused():
            final = wait_for_end(session, job_id, limit, deadline, progress, progress_every)
    except (DeadlineExceeded, KeyboardInterrupt) as exc:
        with shielded():
            state = cancel_job(session, job_id, Deadline(STREAM_CANCEL_GRACE))
        kept = "the VM keeps running on its overlay; run stream again to continue"
        if state is not None and state.status == "concluded" and not state.error:
            kept = "it had completed just before; run stream again to flush and check the disk"
        copied = f" after {state.done} of {state.total} bytes" if state is not None and state.total else ""
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(f"interrupted: stream job {job_id} cancelled{copied}; {kept}") from None
        if limit.expired():
            raise DeadlineExceeded(f"stream job {job_id} did not finish within --wait-timeout {wait_timeout:g}s; "
                                   f"cancelled{copied}; {kept}") from None
        raise DeadlineExceeded(f"{exc}; stream job {job_id} cancelled{copied}; {kept}") from None
    except ProtocolError as exc:
        raise ProtocolError(f"the VM went away while stream job {job_id} was running ({exc.message})",
                            sent=exc.sent, received=exc.received) from None
    dismiss(session, job_id, deadline)
    if final.error:
        raise JobFailed(f"stream job {job_id} failed{failure_detail(session, job_id)}: {final.error}; the VM "
                        "keeps running on its overlay", received=final._asdict())
    if progress is not None:
        progress(final)
    flush(session, disk, deadline)
    after = find_stream_disk(session, deadline, name)
    if after.backing is not None:
        raise JobFailed(f"stream job {job_id} completed, but {name} still names a backing file ({after.backing})")
    return {**result, "standalone": True, "bytes": final.total,
                       "seconds": round(time.monotonic() - started, 3)}
