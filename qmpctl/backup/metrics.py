"""``backup --into DIR --metrics FILE``: what the run did, as a Prometheus node_exporter textfile.

node_exporter's textfile collector (``--collector.textfile.directory=DIR``)
reads every ``*.prom`` file in its folder at each scrape, so the file must be
whole whenever it is read: it is written to a temporary file created
exclusively beside it, synced, then renamed over FILE (a symbolic link at
FILE is replaced, never followed).

Per VM and disk: the time of the last successful backup, its level, the
bytes its job copied, how long the run took and the chain's length; per VM:
runs that failed (a counter), the time and outcome of the last run. A failed
run only counts: the success figures of the last success are carried over
from the previous file, as is every series of VMs this run did not touch
(one file may serve several cron jobs).
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, NamedTuple, Optional

from qmpctl.backup import safe_open
from qmpctl.errors import UsageError, VerificationFailed

PREFIX = "qmpctl_backup_"
HELP = {
    "last_success_timestamp_seconds": ("gauge", "When the disk's last successful backup ended (Unix time)."),
    "last_level": ("gauge", "The level of the disk's last successful backup (1 for the level named)."),
    "last_bytes": ("gauge", "Bytes the last successful backup's job copied."),
    "last_duration_seconds": ("gauge", "How long the last successful run took."),
    "chain_length": ("gauge", "Images in the disk's chain after its last successful backup."),
    "failures_total": ("counter", "Runs for this VM that failed."),
    "last_run_timestamp_seconds": ("gauge", "When the last run for this VM ended (Unix time)."),
    "last_run_success": ("gauge", "1 when the last run for this VM succeeded, else 0."),
    "last_run_exit_code": ("gauge", "qmpctl's exit code for this VM at its last run."),
    "target_info": ("gauge", "How qmpctl reaches the VM (1): names a VM that cannot be reached by a run."),
}
PER_DISK = ("last_success_timestamp_seconds", "last_level", "last_bytes", "last_duration_seconds", "chain_length")
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?\Z")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')
MAX_BYTES = 16 << 20

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], str]


class Outcome(NamedTuple):
    """One VM's run: its name, its result (``None`` when it failed) and its exit code.

    ``target`` is how the VM was reached; ``vm`` is empty when the VM could not
    be asked its name: then the name a previous run found for that target is
    used (series ``target_info``), else ``fallback``.
    """

    vm: str
    result: Optional[dict[str, Any]]
    exit_code: int
    target: str = ""
    fallback: str = ""


def check_path(path: str) -> str:
    """FILE, absolute, checked before anything runs: its folder exists, FILE is not a link or a folder."""
    path = os.path.abspath(path)
    if not os.path.isdir(os.path.dirname(path)):
        raise UsageError(f"--metrics {path}: the directory {os.path.dirname(path)} does not exist")
    if os.path.islink(path) or os.path.isdir(path):
        raise UsageError(f"--metrics {path}: it is a {'symbolic link' if os.path.islink(path) else 'directory'}; "
                         "qmpctl writes a regular file there and never follows a link")
    return path


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda match: "\n" if match.group(1) == "n" else match.group(1), value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def parse(text: str) -> Samples:
    """The samples of a textfile (qmpctl's series only); comments and anything else are skipped."""
    samples: Samples = {}
    for line in text.splitlines():
        found = _SAMPLE.match(line.strip())
        if line.startswith("#") or found is None or not found.group(1).startswith(PREFIX):
            continue
        labels = tuple(sorted((name, _unescape(value)) for name, value in _LABEL.findall(found.group(2) or "")))
        samples[(found.group(1)[len(PREFIX):], labels)] = found.group(3)
    return samples


def read(path: str) -> Samples:
    """The previous file's samples; none when there is no file yet."""
    try:
        descriptor = safe_open.open_regular(path, path, None)
    except FileNotFoundError:
        return {}
    try:
        data = os.read(descriptor, MAX_BYTES)
    finally:
        os.close(descriptor)
    return parse(data.decode("utf-8", "replace"))


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) and not value.is_integer() else str(int(value))


def apply(samples: Samples, outcomes: list[Outcome], now: float) -> Samples:
    """The samples after this run's ``outcomes``."""
    samples = dict(samples)
    for outcome in outcomes:
        if not outcome.vm:
            known = [dict(labels)["vm"] for (name, labels), _ in samples.items() if name == "target_info"
                     and dict(labels).get("target") == outcome.target and "vm" in dict(labels)]
            outcome = outcome._replace(vm=known[0] if known else outcome.fallback or outcome.target)
        elif outcome.target:
            for key in [key for key in samples if key[0] == "target_info" and dict(key[1]).get("vm") == outcome.vm]:
                del samples[key]
            samples[("target_info", tuple(sorted((("vm", outcome.vm), ("target", outcome.target)))))] = "1"
        vm_labels: Labels = (("vm", outcome.vm),)
        failures = float(samples.get(("failures_total", vm_labels), "0"))
        if outcome.result is None:
            failures += 1
        else:
            for disk in outcome.result.get("disks") or []:
                device = str(disk.get("device"))
                labels: Labels = tuple(sorted((("vm", outcome.vm), ("device", device))))
                for key in [key for key in samples if key[0] in PER_DISK and dict(key[1]).get("vm") == outcome.vm
                            and dict(key[1]).get("device") == device]:
                    del samples[key]
                image = os.path.basename(str(disk.get("image") or ""))
                samples[("last_success_timestamp_seconds", labels)] = _number(round(now, 3))
                samples[("last_level", tuple(sorted(labels + (("level", str(disk.get("level"))),))))] = "1"
                samples[("last_bytes", labels)] = _number(int(disk.get("bytes") or 0))
                samples[("last_duration_seconds", labels)] = _number(float(disk.get("seconds") or 0))
                samples[("chain_length", labels)] = str(int(image[:4])) if image[:4].isdigit() else "0"
        samples[("failures_total", vm_labels)] = _number(failures)
        samples[("last_run_timestamp_seconds", vm_labels)] = _number(round(now, 3))
        samples[("last_run_success", vm_labels)] = "1" if outcome.result is not None else "0"
        samples[("last_run_exit_code", vm_labels)] = str(outcome.exit_code)
    return samples


def render(samples: Samples) -> str:
    lines = []
    for metric, (kind, text) in HELP.items():
        series = sorted((labels, value) for (name, labels), value in samples.items() if name == metric)
        if not series:
            continue
        lines += [f"# HELP {PREFIX}{metric} {text}", f"# TYPE {PREFIX}{metric} {kind}"]
        for labels, value in series:
            inside = ",".join(f'{name}="{_escape(label)}"' for name, label in labels)
            lines.append(f"{PREFIX}{metric}{{{inside}}} {value}")
    return "\n".join(lines) + "\n"


def write(path: str, outcomes: list[Outcome]) -> None:
    """Update FILE with this run's ``outcomes``: read, apply, write a temporary file, rename it over FILE."""
    text = render(apply(read(path), outcomes, time.time()))
    folder, name = os.path.split(path)
    dir_fd = safe_open.open_dir(folder, folder)
    try:
        with safe_open.replacement(name, path, dir_fd, 0o644) as descriptor:
            safe_open.write_all(descriptor, text.encode("utf-8"))
            os.fchmod(descriptor, 0o644)  # node_exporter runs as its own user; the umask must not narrow it
    finally:
        os.close(dir_fd)


def too_old(chains: list[str], seconds: float, written: str) -> Optional[VerificationFailed]:
    """Every disk of ``chains`` whose newest backup started more than ``seconds`` ago, or None.

    A disk is a device in one folder of chains (DIR, or DIR/<vm>/ of a fleet):
    its newest backup is the latest ``started`` among its chains' images (a
    manifest lists an image only once its job succeeded).
    """
    import datetime

    from qmpctl.backup.manifest import read_manifest

    newest: dict[tuple[str, str], datetime.datetime] = {}
    for chain_dir in chains:
        manifest = read_manifest(chain_dir)
        key = (os.path.dirname(chain_dir), str(manifest.get("device")))
        for entry in manifest["images"]:
            started = datetime.datetime.fromisoformat(str(entry["started"]).replace("Z", "+00:00"))
            if key not in newest or started > newest[key]:
                newest[key] = started
    now = datetime.datetime.now(datetime.timezone.utc)
    late = [f"{device} in {folder} (newest backup {moment.isoformat(timespec='seconds').replace('+00:00', 'Z')}, "
            f"{_ago((now - moment).total_seconds())} ago)"
            for (folder, device), moment in sorted(newest.items()) if (now - moment).total_seconds() > seconds]
    if not late:
        return None
    return VerificationFailed(f"older than --max-age {written}: {'; '.join(late)}")


def _ago(seconds: float) -> str:
    minutes = int(seconds // 60)
    days, hours, minutes = minutes // 1440, minutes // 60 % 24, minutes % 60
    return " ".join(part for part in (f"{days}d" if days else "", f"{hours}h" if hours else "", f"{minutes}m")
                    if part)
