#!/usr/bin/env python3
"""How fast qmpctl is: start-up and fleet mode next to virsh, agent exec, backups (chains, fleets), agent cp, snapshots.

Not part of the test suite (pytest does not collect this file). Run it from the
repository with the project's venv:

    .venv/bin/python tests/bench/bench.py            # everything, about 1-2 minutes
    .venv/bin/python tests/bench/bench.py --quick    # fewer runs, 20 VMs in the fleet
    .venv/bin/python tests/bench/bench.py --typer-versions   # pick the Typer/click releases
    .venv/bin/python tests/bench/bench.py --only cp  # agent cp throughput on the lab guest, a few minutes
    .venv/bin/python tests/bench/bench.py --only ssh  # ssh:// against ssh HOST qmpctl (starts an sshd)
    .venv/bin/python tests/bench/bench.py --only snapshot  # snapshot load of the lab guest against a boot
    QMPCTL_BENCH_QMPBACKUP=DIR .venv/bin/python tests/bench/bench.py --only chains  # backups vs qmpbackup
    .venv/bin/python tests/bench/bench.py --only chains --source --baseline OLD  # and vs the tree in OLD
    .venv/bin/python tests/bench/bench.py --only fleet-backup  # 20 VMs' backups in one call vs a loop of calls
    .venv/bin/python tests/bench/bench.py --only instant  # restore --instant vs a full restore, to a booted guest
    .venv/bin/python tests/bench/bench.py --only fleece  # a guest's write latency during a backup to a slow DIR

It starts its own QEMU VMs (TCG, paused), a host qemu-ga, and a transient
libvirt domain named ``qmpctl-bench-*`` (starting virtlogd and libvirtd when
they are not running and we are root), and tears them all down at the end.
Commands being compared run alternately (A, B, A, B, ...) so that load from
elsewhere on the machine hits them all alike; it prints medians, ratios and
each program's peak RSS (from wait4, per call), a PASS/MISS line per target,
and exits 1 when a target was missed.

It measures the INSTALLED qmpctl (``.venv/bin/qmpctl``) and warns when the
installed copy differs from the source tree (``.venv/bin/pip install --no-deps .``);
``--source`` runs the same console script on the source tree instead.
"""

from __future__ import annotations

import argparse
import filecmp
import functools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
QMPCTL = VENV_BIN / "qmpctl"
PYTHON = VENV_BIN / "python"
LIBVIRT_URI = "qemu:///system"
DOMAIN_PREFIX = "qmpctl-bench-"
QUERY_STATUS = '{"execute":"query-status"}'
MIB = 1024.0
FLEET_TARGET_VMS = 50
"""The fleet target (0.1x a virsh loop) is stated for this many VMs; fewer amortise start-up less."""

sys.path.insert(0, str(REPO / "tests"))

BARE_QMP_SCRIPT = '''\
"""The least a Python client can do: connect, greeting, qmp_capabilities, query-status, print."""
import json, socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
stream = sock.makefile("rwb")
stream.readline()
stream.write(b'{"execute":"qmp_capabilities"}\\n'); stream.flush(); stream.readline()
stream.write(b'{"execute":"query-status"}\\n'); stream.flush()
print(json.dumps(json.loads(stream.readline()), separators=(",", ":")))
'''


BARE_AGENT_CP_SCRIPT = '''\
"""The least a client must do to move a file through qemu-ga: a guest-file-write/read loop, no checks."""
import base64, json, socket, sys
path, direction, local, remote, chunk = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
sock = socket.socket(socket.AF_UNIX)
sock.connect(path)
stream = sock.makefile("rwb")
def call(execute, **arguments):
    stream.write(json.dumps({"execute": execute, "arguments": arguments}).encode() + b"\\n")
    stream.flush()
    while True:
        line = stream.readline().lstrip(b"\\xff")
        if line.strip():
            reply = json.loads(line)
            if "error" in reply:
                raise SystemExit(str(reply["error"]))
            return reply["return"]
stream.write(b'\\xff{"execute":"guest-sync-delimited","arguments":{"id":424242}}\\n')
stream.flush()
while b"424242" not in stream.readline():
    pass
if direction == "in":
    handle = call("guest-file-open", path=remote, mode="w")
    with open(local, "rb") as source:
        while data := source.read(chunk):
            call("guest-file-write", handle=handle, **{"buf-b64": base64.b64encode(data).decode()})
else:
    handle = call("guest-file-open", path=remote, mode="r")
    with open(local, "wb") as sink:
        while True:
            result = call("guest-file-read", handle=handle, count=chunk)
            sink.write(base64.b64decode(result["buf-b64"]))
            if result["eof"] or not result["count"]:
                break
call("guest-file-close", handle=handle)
'''
CP_FILE_MIB = 32
CP_PROBE_MIB = 8
CP_BARE_CHUNKS_IN = (256 * 1024, 1024 * 1024, 4 * 1024 * 1024, 16 * 1024 * 1024)
CP_BARE_CHUNKS_OUT = (1024 * 1024, 4 * 1024 * 1024, 16 * 1024 * 1024, 48 * 1024 * 1024)
EXEC_MAX_MIB = 15
"""agent exec --stdin sends at most 16 MiB and qemu-ga captures at most 16 MiB of output."""


# --- measuring -------------------------------------------------------------------------------

@dataclass
class Case:
    """One command line to time; ``check`` inspects the output of the first (warm-up) run."""

    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    cwd: Path | None = None
    check: Callable[[bytes], None] | None = None


@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)
    max_rss_kib: list[int] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.seconds) * 1000

    @property
    def peak_rss_mib(self) -> float:
        return max(self.max_rss_kib) / MIB


QMPCTL_ENV: dict[str, str] = {}
"""Set to ``{"PYTHONPATH": REPO}`` by --source: the console script then imports the source tree."""


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """What a user's shell would pass: no test-only Python settings, no qmpctl defaults."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH", "LIBVIRT_DEFAULT_URI") and not k.startswith("QMPCTL_")}
    env.update(QMPCTL_ENV)
    env.update(extra or {})
    return env


def run_once(case: Case, output: Path) -> tuple[float, int, int]:
    """Wall seconds, peak RSS (KiB, the child and its reaped children) and exit code of one run."""
    with open(output, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(case.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=case.env or child_env(), cwd=case.cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return elapsed, usage.ru_maxrss, proc.returncode


def alternate(cases: list[Case], runs: int, scratch: Path) -> dict[str, Samples]:
    """Run every case once to warm up and check it, then ``runs`` rounds of A, B, C, A, B, C, ..."""
    output = scratch / "bench-output"
    for case in cases:
        _, _, code = run_once(case, output)
        text = output.read_bytes()
        if code != 0:
            raise SystemExit(f"bench: {case.name} failed (exit {code}): {' '.join(case.argv)}\n"
                             f"{text.decode(errors='replace')[:2000]}")
        if case.check:
            case.check(text)
    samples = {case.name: Samples() for case in cases}
    for _ in range(runs):
        for case in cases:
            seconds, rss, code = run_once(case, output)
            if code != 0:
                raise SystemExit(f"bench: {case.name} failed (exit {code}) during the runs: "
                                 f"{output.read_bytes()[:2000].decode(errors='replace')}")
            samples[case.name].seconds.append(seconds)
            samples[case.name].max_rss_kib.append(rss)
    return samples


def print_table(title: str, samples: dict[str, Samples], baseline: str | None) -> None:
    print(f"\n## {title}")
    base = samples[baseline].median_ms if baseline else None
    width = max(len(name) for name in samples)
    print(f"{'command':<{width}}  {'median':>9}  {'min':>8}  {'ratio':>6}  {'peak RSS':>9}  runs")
    for name, s in samples.items():
        ratio = f"{s.median_ms / base:5.2f}x" if base else "     -"
        print(f"{name:<{width}}  {s.median_ms:7.1f}ms  {min(s.seconds) * 1000:6.1f}ms  {ratio:>6}  "
              f"{s.peak_rss_mib:6.1f}MiB  {len(s.seconds)}")


def verdict(what: str, value: float, limit: float, unit: str = "x") -> bool:
    ok = value <= limit
    print(f"TARGET {what}: {value:.2f}{unit} (limit {limit:g}{unit}) {'PASS' if ok else 'MISS'}")
    return ok


def skip(what: str, why: str) -> None:
    print(f"SKIP {what}: {why}")


# --- the things we measure against -----------------------------------------------------------

def qemu_argv(qmp: Path, *extra: str, memory: str = "16") -> list[str]:
    return ["qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-nodefaults", "-display", "none", "-S",
            "-m", memory, "-qmp", f"unix:{qmp},server=on,wait=off", *extra]


class Processes:
    """Every process the bench starts, killed at the end whatever happens."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], log: Path, **kwargs: object) -> subprocess.Popen:
        with open(log, "ab") as handle:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=handle,
                                    **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def wait_for_sockets(paths: list[Path], procs: list[subprocess.Popen], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for path, proc in zip(paths, procs, strict=True):
        while not path.exists():
            if proc.poll() is not None:
                raise SystemExit(f"bench: QEMU for {path} exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: {path} did not appear within {timeout:g}s")
            time.sleep(0.01)


def start_vms(processes: Processes, folder: Path, count: int, *extra: str,
              each: Callable[[int], list[str]] | None = None) -> list[Path]:
    """``count`` paused TCG VMs started all at once; returns their QMP sockets (``folder/vmN.sock``).

    ``extra`` goes to every VM, ``each(N)`` to VM N only (its own disk, say)."""
    folder.mkdir(parents=True, exist_ok=True)
    sockets = [folder / f"vm{index:02d}.sock" for index in range(count)]
    procs = [processes.start(qemu_argv(path, *extra, *(each(index) if each else [])), folder / f"vm{index:02d}.log")
             for index, path in enumerate(sockets)]
    wait_for_sockets(sockets, procs)
    return sockets


def virsh(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", LIBVIRT_URI, *args], capture_output=True, text=True, timeout=timeout)


def ensure_libvirtd() -> str | None:
    """None when libvirtd answers (started here if needed and possible), else why not."""
    if shutil.which("virsh") is None:
        return "virsh is not installed"
    if virsh("version").returncode == 0:
        return None
    if os.geteuid() != 0:
        return "libvirtd is not running and starting it needs root"
    for daemon in ("virtlogd", "libvirtd"):
        if shutil.which(daemon) is None and not Path(f"/usr/sbin/{daemon}").exists():
            return f"{daemon} is not installed"
        subprocess.run([shutil.which(daemon) or f"/usr/sbin/{daemon}", "-d"], capture_output=True, timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if virsh("version").returncode == 0:
            return None
        time.sleep(0.2)
    return "libvirtd did not come up"


DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>{emulator}</emulator>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def remove_stale_domains() -> None:
    """Domains an interrupted earlier bench left behind (only ours: the qmpctl-bench- prefix)."""
    listing = virsh("list", "--all", "--name")
    for name in listing.stdout.split():
        if name.startswith(DOMAIN_PREFIX):
            virsh("destroy", name)
            virsh("undefine", name)


def create_domain(scratch: Path) -> str:
    """A transient, paused TCG domain without disks: virsh's side of every comparison."""
    remove_stale_domains()
    name = f"{DOMAIN_PREFIX}{os.getpid()}"
    xml = scratch / "domain.xml"
    xml.write_text(DOMAIN_XML.format(name=name, emulator=shutil.which("qemu-system-x86_64")))
    created = virsh("create", str(xml), "--paused", timeout=180)
    if created.returncode != 0:
        raise RuntimeError(created.stderr.strip() or created.stdout.strip())
    return name


def qmpctl_has(*command: str) -> bool:
    """Whether the installed qmpctl knows a command (``agent exec``, ``backup``) yet."""
    probe = subprocess.run([str(QMPCTL), *command, "--help"], capture_output=True, env=child_env(), timeout=60)
    return probe.returncode == 0


def installed_copy_is_stale() -> list[str]:
    """Source files that differ from what pip installed: the bench would measure old code."""
    import sysconfig

    installed = Path(sysconfig.get_paths()["purelib"]) / "qmpctl"
    differing = []
    for source in sorted((REPO / "qmpctl").rglob("*.py")):
        copy = installed / source.relative_to(REPO / "qmpctl")
        if not copy.exists() or not filecmp.cmp(source, copy, shallow=False):
            differing.append(str(source.relative_to(REPO)))
    return differing


# --- output checks ---------------------------------------------------------------------------

def expect_status_reply(text: bytes) -> None:
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        reply = json.loads(lines[-1])
    except (IndexError, ValueError):
        reply = {}
    if not isinstance(reply, dict) or "status" not in reply.get("return", {}):
        raise SystemExit(f"bench: unexpected reply {text[:300]!r}")


def expect_fleet(count: int) -> Callable[[bytes], None]:
    def check(text: bytes) -> None:
        lines = [json.loads(line) for line in text.splitlines()]
        good = [line for line in lines if "status" in line.get("return", {})]
        if len(good) != count:
            raise SystemExit(f"bench: fleet answered {len(good)} of {count}: {text[:500]!r}")

    return check


# --- the comparisons -------------------------------------------------------------------------

@dataclass
class Context:
    args: argparse.Namespace
    scratch: Path
    processes: Processes
    domain: str | None
    libvirt_problem: str | None
    results: dict[str, dict[str, Samples]] = field(default_factory=dict)
    verdicts: list[bool] = field(default_factory=list)


def virsh_case(domain: str) -> Case:
    return Case("virsh qemu-monitor-command", ["virsh", "-c", LIBVIRT_URI, "qemu-monitor-command", domain,
                                               QUERY_STATUS], check=expect_status_reply)


def bench_single(ctx: Context) -> None:
    """One call: qmpctl status next to virsh, a bare Python client and the interpreter itself."""
    [sock] = start_vms(ctx.processes, ctx.scratch / "single", 1)
    bare = ctx.scratch / "bare_qmp.py"
    bare.write_text(BARE_QMP_SCRIPT)
    cases = []
    if ctx.domain:
        cases.append(virsh_case(ctx.domain))
    cases += [
        Case("qmpctl status (console script)", [str(QMPCTL), "status", "-s", str(sock)], check=expect_status_reply),
        Case("python -m qmpctl status", [str(PYTHON), "-m", "qmpctl", "status", "-s", str(sock)],
             cwd=ctx.scratch, check=expect_status_reply),
        Case("bare Python socket script", [str(PYTHON), str(bare), str(sock)], check=expect_status_reply),
        Case("python -c pass (interpreter only)", [str(PYTHON), "-c", "pass"]),
    ]
    samples = alternate(cases, ctx.args.runs, ctx.scratch)
    ctx.results["single"] = samples
    baseline = cases[0].name if ctx.domain else None
    print_table("1. one call: query-status", samples, baseline)
    if not ctx.domain:
        skip("qmpctl status vs virsh", f"no libvirt domain ({ctx.libvirt_problem})")
    else:
        virsh_ms = samples[baseline].median_ms
        for name in ("qmpctl status (console script)", "python -m qmpctl status"):
            ctx.verdicts.append(verdict(f"{name} / virsh", samples[name].median_ms / virsh_ms, 2.5))
    ctx.verdicts.append(verdict("qmpctl status peak RSS", samples["qmpctl status (console script)"].peak_rss_mib,
                                30, " MiB"))


STARTUP_LIMIT = 1.3
"""A quick command's well-formed line may cost at most this much more than ``status`` (tests/support/quick.py);
the long workflows' lines are timed and reported, not judged."""
BARE_LIMIT = 1.4
"""``status`` may cost at most this much more than a bare Python client doing the same exchange."""


def startup_lines(sock: Path, scratch: Path) -> list[tuple[str, list[str]]]:
    """Each declared command's own example as a --dry-run line on a real VM, with real files where it names some."""
    sys.path.insert(0, str(REPO))
    from qmpctl.cli.spec import COMMANDS
    from support.examples import dry_run_words

    image = scratch / "startup.qcow2"
    if not image.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    lines = []
    for command in COMMANDS:
        line = dry_run_words(command)
        for index, word in enumerate(line):
            if index and line[index - 1] in ("-s", "-a"):
                line[index] = str(sock)
            elif word.endswith(".qcow2") and command.words == ("hotplug-disk",):
                line[index] = str(image)
            elif word.startswith("/backup/"):
                line[index] = str(scratch / Path(word).name)
        lines.append((" ".join(command.words), line))
    return lines


def bench_startup(ctx: Context) -> None:
    """Start-up of every command next to status, and status next to a bare Python client."""
    [sock] = start_vms(ctx.processes, ctx.scratch / "startup", 1)
    bare = ctx.scratch / "bare_qmp.py"
    bare.write_text(BARE_QMP_SCRIPT)
    cases = [Case("bare Python socket script", [str(PYTHON), str(bare), str(sock)], check=expect_status_reply),
             Case("status", [str(QMPCTL), "status", "-s", str(sock)], check=expect_status_reply)]
    for name, line in startup_lines(sock, ctx.scratch):
        probe = subprocess.run([str(QMPCTL), *line], capture_output=True, env=child_env(), cwd=ctx.scratch, timeout=60)
        if probe.returncode != 0:  # its example names files only a real set-up has (a chain folder, say)
            print(f"not timed: {name} --dry-run exits {probe.returncode} here: {probe.stderr.decode()[:120]!r}")
            continue
        cases.append(Case(f"{name} --dry-run", [str(QMPCTL), *line], cwd=ctx.scratch))
    cases.append(Case("status --help (Typer)", [str(QMPCTL), "status", "--help"]))
    samples = alternate(cases, ctx.args.runs, ctx.scratch)
    print_table("startup: every command's own example (--dry-run) next to status", samples, "status")
    status_ms = samples["status"].median_ms
    ctx.verdicts.append(verdict("status / bare Python client", status_ms / samples[cases[0].name].median_ms,
                                BARE_LIMIT))
    from support.quick import QUICK

    quick = {" ".join(words) + " --dry-run" for words in QUICK}
    for case in cases[2:-1]:
        ratio = samples[case.name].median_ms / status_ms
        if case.name in quick:
            ctx.verdicts.append(verdict(f"{case.name} / status", ratio, STARTUP_LIMIT))
        else:
            print(f"{case.name} / status: {ratio:.2f}x (not a quick command: reported, not judged)")
    print(f"status --help (the only Typer path here): {samples[cases[-1].name].median_ms:.1f} ms, reported")


def bench_fleet(ctx: Context) -> None:
    """Many VMs: one qmpctl call over a glob next to a shell loop of virsh calls."""
    count = ctx.args.fleet
    started = time.monotonic()
    folder = ctx.scratch / "fleet"
    start_vms(ctx.processes, folder, count)
    print(f"\n(started {count} QEMU VMs in {time.monotonic() - started:.1f}s)")
    glob_pattern = str(folder / "*.sock")
    cases = [Case(f"qmpctl status -s 'DIR/*.sock' ({count} VMs)", [str(QMPCTL), "status", "-s", glob_pattern],
                  check=expect_fleet(count))]
    if ctx.domain:
        loop = (f"for i in $(seq {count}); do virsh -c {LIBVIRT_URI} qemu-monitor-command {ctx.domain} "
                f"'{QUERY_STATUS}' >/dev/null || exit 1; done")
        cases.append(Case(f"shell loop: {count} x virsh qemu-monitor-command", ["sh", "-c", loop]))
    runs = max(3, ctx.args.runs // 3)
    samples = alternate(cases, runs, ctx.scratch)
    ctx.results["fleet"] = samples
    print_table(f"2. fleet: {count} VMs", samples, cases[-1].name if ctx.domain else None)
    fleet_ms = samples[cases[0].name].median_ms
    if "single" in ctx.results:
        start_ms = ctx.results["single"]["qmpctl status (console script)"].median_ms
        print(f"each VM adds {(fleet_ms - start_ms) / count:.2f}ms to one single-VM call ({start_ms:.1f}ms)")
    if not ctx.domain:
        skip("fleet vs virsh loop", f"no libvirt domain ({ctx.libvirt_problem})")
        return
    print(f"(the virsh loop asks one libvirt domain {count} times: {count} domains would not fit this machine)")
    if "single" in ctx.results:
        single_virsh = ctx.results["single"]["virsh qemu-monitor-command"].median_ms
        print(f"(against {count} x the single virsh median, {count * single_virsh:.0f}ms: "
              f"{fleet_ms / (count * single_virsh):.2f}x)")
    ratio = fleet_ms / samples[cases[1].name].median_ms
    if count < FLEET_TARGET_VMS:
        print(f"fleet call / virsh loop: {ratio:.2f}x (the 0.1x target is for {FLEET_TARGET_VMS} VMs: not judged)")
        return
    ctx.verdicts.append(verdict("fleet call / virsh loop", ratio, 0.1))


SSH_FLEET_VMS = 20


def bench_ssh(ctx: Context) -> None:
    """VMs behind SSH (a real sshd on loopback): qmpctl's ssh:// next to running qmpctl remotely.

    ``ssh HOST qmpctl ...`` needs qmpctl installed on the host (it is this machine here) and
    pays one SSH login per call; qmpctl's ssh:// needs nothing there and logs in once per host.
    """
    from support.sshd import Sshd

    count = min(ctx.args.fleet, SSH_FLEET_VMS)
    sshd = Sshd(ctx.scratch / "sshd").start()
    try:
        folder = ctx.scratch / "remote"
        sockets = start_vms(ctx.processes, folder, count)
        env = child_env(sshd.env())
        login = ["ssh", "-F", str(sshd.config), "-o", "BatchMode=yes", "-p", str(sshd.port), "root@127.0.0.1"]
        # The remote command gets no environment from here: --source passes PYTHONPATH in the command.
        remote_qmpctl = " ".join([f"PYTHONPATH={QMPCTL_ENV['PYTHONPATH']}"] if QMPCTL_ENV else []) + f" {QMPCTL}"
        single = [
            Case("qmpctl status -s ssh://HOST/PATH", [str(QMPCTL), "status", "-s", sshd.url(sockets[0])], env=env,
                 check=expect_status_reply),
            Case("ssh HOST qmpctl status -s PATH", [*login, f"{remote_qmpctl} status -s {sockets[0]}"],
                 check=expect_status_reply),
        ]
        samples = alternate(single, ctx.args.runs, ctx.scratch)
        ctx.results["ssh-single"] = samples
        print_table("5. one VM behind SSH: query-status", samples, single[1].name)
        loop = " ".join([f"for s in {folder}/*.sock; do", *login, f"\"{remote_qmpctl} status -s $s\"",
                         "|| exit 1; done"])
        fleet = [
            Case(f"qmpctl status -s 'ssh://HOST/DIR/*.sock' ({count} VMs)",
                 [str(QMPCTL), "status", "-s", sshd.url(f"{folder}/*.sock")], env=env, check=expect_fleet(count)),
            Case("ssh HOST qmpctl status -s 'DIR/*.sock' (one remote call)",
                 [*login, f"{remote_qmpctl} status -s '{folder}/*.sock'"], check=expect_fleet(count)),
            Case(f"shell loop: {count} x ssh HOST qmpctl status", ["sh", "-c", loop], check=expect_fleet(count)),
        ]
        before = sshd.accepted()
        samples = alternate(fleet, max(3, ctx.args.runs // 3), ctx.scratch)
        ctx.results["ssh-fleet"] = samples
        print_table(f"6. {count} VMs behind one SSH host", samples, fleet[2].name)
        runs = len(samples[fleet[0].name].seconds) + 1
        print(f"(SSH logins for those runs: {sshd.accepted() - before}; qmpctl's ssh:// runs made {runs} of them, "
              f"the loop {runs * count})")
    finally:
        sshd.stop()


def bench_agent(ctx: Context) -> None:
    """agent exec -- true next to agent ping, against a real qemu-ga on the host.

    ``agent command guest-ping`` (one request through Typer) shows what the
    fast path past Typer saves both of them.
    """
    from support.qga import HostAgent, have_qemu_ga

    if not have_qemu_ga():
        skip("agent exec vs agent ping", "qemu-ga is not installed")
        return
    if not qmpctl_has("agent", "exec"):
        skip("agent exec vs agent ping", "the installed qmpctl has no 'agent exec' yet")
        return
    agent = HostAgent(ctx.scratch / "qga").start()
    try:
        sock = str(agent.path)
        cases = [Case("qmpctl agent ping", [str(QMPCTL), "agent", "ping", "-a", sock]),
                 Case("qmpctl agent command guest-ping", [str(QMPCTL), "agent", "command", "-a", sock, "guest-ping"]),
                 Case("qmpctl agent exec -- true", [str(QMPCTL), "agent", "exec", "-a", sock, "--", "true"])]
        samples = alternate(cases, ctx.args.runs, ctx.scratch)
    finally:
        agent.stop()
    ctx.results["agent"] = samples
    print_table("3. agent exec -- true vs agent ping (host qemu-ga)", samples, cases[0].name)
    ctx.verdicts.append(verdict("agent exec / agent ping",
                                samples[cases[2].name].median_ms / samples[cases[0].name].median_ms, 1.5))


def timed(argv: list[str], stdin: Path | None = None, env: dict[str, str] | None = None) -> float:
    """Wall seconds of one run that must succeed (for transfers, where one run takes seconds)."""
    with open(stdin or os.devnull, "rb") as source:
        started = time.perf_counter()
        proc = subprocess.run(argv, stdin=source, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=env or child_env(), timeout=900, check=False)
        elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv[:8])} failed (exit {proc.returncode}): "
                         f"{proc.stderr.decode(errors='replace')[:2000]}")
    return elapsed


def bench_agent_cp(ctx: Context) -> None:
    """agent cp against a bare guest-file-write/read loop with its best chunk size, on the lab guest.

    Both directions with a 32 MiB random file, alternating the two clients;
    agent exec --stdin / -- cat move a 15 MiB file for comparison (both cap
    at 16 MiB; one request carries it all, so --timeout is raised). qmpctl
    runs with --no-verify --force, to do the same work as the bare loop; a
    verified copy is timed once as well.
    """
    if not qmpctl_has("agent", "cp"):
        skip("agent cp throughput", "the installed qmpctl has no 'agent cp' yet")
        return
    from support.lab import lab_guest_module

    rounds = 2 if ctx.args.quick else 4
    source = ctx.scratch / "cp-32m.bin"
    source.write_bytes(os.urandom(CP_FILE_MIB * 1024 * 1024))
    probe = ctx.scratch / "cp-probe.bin"
    probe.write_bytes(os.urandom(CP_PROBE_MIB * 1024 * 1024))
    small = ctx.scratch / "cp-15m.bin"
    small.write_bytes(os.urandom(EXEC_MAX_MIB * 1024 * 1024))
    back = ctx.scratch / "cp-back.bin"
    bare_script = ctx.scratch / "bare_agent_cp.py"
    bare_script.write_text(BARE_AGENT_CP_SCRIPT)
    with lab_guest_module().LabGuest(ctx.scratch / "lab", name="bench") as guest:
        sock = str(guest.agent_path)

        def bare(direction: str, local: Path, chunk: int) -> float:
            return timed([str(PYTHON), str(bare_script), sock, direction, str(local), "/tmp/bench.bin", str(chunk)],
                         env=child_env({"PYTHONPATH": ""}))

        def qmpctl_cp(direction: str, local: Path, *extra: str) -> float:
            ends = [str(local), "guest:/tmp/bench.bin"] if direction == "in" else ["guest:/tmp/bench.bin", str(local)]
            return timed([str(QMPCTL), "agent", "cp", "-a", sock, "--force", "--progress", "none", *extra, *ends])

        rates: dict[str, list[float]] = {}

        def record(name: str, mib: float, seconds: float) -> None:
            rates.setdefault(name, []).append(mib / seconds)

        best: dict[str, int] = {}
        for direction, chunks in (("in", CP_BARE_CHUNKS_IN), ("out", CP_BARE_CHUNKS_OUT)):
            if direction == "out":
                bare("in", probe, 1024 * 1024)
            probe_rates = {}
            for chunk in chunks:
                probe_rates[chunk] = CP_PROBE_MIB / bare(direction, back if direction == "out" else probe, chunk)
                print(f"  bare {direction} chunk {chunk // 1024:>6} KiB: {probe_rates[chunk]:5.2f} MiB/s "
                      f"({CP_PROBE_MIB} MiB probe)", flush=True)
            best[direction] = max(probe_rates, key=lambda chunk: probe_rates[chunk])
        for round_number in range(rounds):
            for direction in ("in", "out"):
                local = source if direction == "in" else back
                pair = [("bare " + direction, functools.partial(bare, direction, local, best[direction])),
                        ("qmpctl agent cp " + direction,
                         functools.partial(qmpctl_cp, direction, local, "--no-verify"))]
                for name, call in pair if round_number % 2 == 0 else reversed(pair):  # load drifts: alternate
                    record(name, CP_FILE_MIB, call())
        record("qmpctl agent cp in --verify", CP_FILE_MIB, qmpctl_cp("in", source))
        record("qmpctl agent cp out --verify", CP_FILE_MIB, qmpctl_cp("out", back))
        record("qmpctl agent exec --stdin -- sh -c 'cat >FILE'", EXEC_MAX_MIB,
               timed([str(QMPCTL), "agent", "exec", "-a", sock, "--timeout", "600", "--stdin", "--", "sh", "-c",
                      "cat > /tmp/bench.bin"],
                     stdin=small))
        record("qmpctl agent exec -- cat FILE", EXEC_MAX_MIB,
               timed([str(QMPCTL), "agent", "exec", "-a", sock, "--timeout", "600", "--", "cat", "/tmp/bench.bin"]))
    print(f"\n## agent cp throughput on the lab guest (TCG; {CP_FILE_MIB} MiB random file, best of {rounds}; "
          f"bare chunk in {best['in'] // 1024} KiB, out {best['out'] // 1024} KiB; exec: {EXEC_MAX_MIB} MiB)")
    for name, values in rates.items():
        print(f"{name:<52} {max(values):6.2f} MiB/s   runs: " + ", ".join(f"{v:.2f}" for v in values))
    for direction in ("in", "out"):
        slower = max(rates[f"bare {direction}"]) / max(rates[f"qmpctl agent cp {direction}"])
        ctx.verdicts.append(verdict(f"agent cp {direction}: qmpctl's time / the bare loop's (0.9x its throughput)",
                                    slower, 1 / 0.9))


class EventMonitor:
    """A second QMP monitor that only collects events, so timestamps come from QEMU itself."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.stream = self.sock.makefile("rwb")
        self.stream.readline()
        self.stream.write(b'{"execute":"qmp_capabilities"}\n')
        self.stream.flush()
        self.stream.readline()

    def next_event(self, name: str) -> dict:
        while True:
            message = json.loads(self.stream.readline())
            if message.get("event") == name:
                return message

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


def bench_backup(ctx: Context) -> None:
    """How long after QEMU's BLOCK_JOB_COMPLETED qmpctl backup has exited (QEMU's clock vs ours)."""
    if not qmpctl_has("backup"):
        skip("backup completion latency", "the installed qmpctl has no 'backup' yet")
        return
    folder = ctx.scratch / "backup"
    folder.mkdir()
    disk = folder / "disk0.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "32M"], check=True)
    events_path = folder / "events.sock"
    [sock] = start_vms(ctx.processes, folder, 1,
                       "-qmp", f"unix:{events_path},server=on,wait=off",
                       "-blockdev", f"driver=qcow2,node-name=disk0,file.driver=file,file.filename={disk}",
                       "-device", "virtio-blk-pci,drive=disk0,id=vd0")
    wait_for_sockets([events_path], ctx.processes.procs[-1:])
    monitor = EventMonitor(events_path)
    latencies = []
    try:
        for run in range(max(3, ctx.args.runs // 2)):
            target = folder / f"backup{run}.qcow2"
            case = Case("qmpctl backup", [str(QMPCTL), "backup", "-s", str(sock), "vd0", str(target)])
            seconds, _, code = run_once(case, folder / "backup.out")
            exited_at = time.time()
            if code != 0:
                skip("backup completion latency", f"qmpctl backup exited {code}: "
                     f"{(folder / 'backup.out').read_text(errors='replace')[:500]}")
                return
            event = monitor.next_event("BLOCK_JOB_COMPLETED")
            stamp = event["timestamp"]["seconds"] + event["timestamp"]["microseconds"] / 1e6
            latencies.append(exited_at - stamp)
    finally:
        monitor.close()
    print("\n## 4. backup: qmpctl's exit after QEMU's BLOCK_JOB_COMPLETED (32 MiB qcow2, idle disk)")
    print(f"latency median {statistics.median(latencies) * 1000:.1f}ms, max {max(latencies) * 1000:.1f}ms, "
          f"runs {len(latencies)} (includes qmpctl's own exit)")
    ctx.verdicts.append(verdict("backup notices completion (median)", statistics.median(latencies) * 1000, 50, " ms"))


# --- instant restore next to a full restore, each until the restored guest answers ----------------

INSTANT_DATA_MIB = 3072
"""Random data written into the backed-up filesystem: a full restore copies all of it."""
INSTANT_LIMIT = 1.0
"""restore --instant + boot may take at most as long as a full restore + boot of the same point."""
INSTANT_NOTE = "/instant-bench-note"


def bench_instant(ctx: Context) -> None:
    """Back up a lab guest filesystem holding INSTANT_DATA_MIB of data, then time, from the restore command until
    ``agent ping`` answers in a lab guest booted on the result: ``restore --instant`` (a thin overlay) against
    ``restore`` (a full copy). The two paths alternate; each boot also reads a file back, outside the timing. The
    verdict compares the best runs: a TCG boot under load varies by more than the copy costs."""
    if not qmpctl_has("stream"):
        skip("instant restore", "the installed qmpctl has no 'stream' yet (or pass --source)")
        return
    from support.lab import lab_guest_module

    lab = lab_guest_module()
    folder = ctx.scratch / "instant"
    tree = folder / "tree"
    tree.mkdir(parents=True)
    (tree / INSTANT_NOTE.lstrip("/")).write_text("backed up\n")
    with open(tree / "bulk.bin", "wb") as bulk:
        for _ in range(INSTANT_DATA_MIB):
            bulk.write(os.urandom(1 << 20))
    fs = folder / "fs.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", "-L", "labdata", "-d", str(tree), str(fs),
                    f"{INSTANT_DATA_MIB + 256}M"], check=True)
    shutil.rmtree(tree)
    [sock] = start_vms(ctx.processes, folder, 1,
                       "-blockdev", f"driver=raw,node-name=fs0,file.driver=file,file.filename={fs}",
                       "-device", "virtio-blk-pci,drive=fs0,id=fs0")
    backed = subprocess.run([str(QMPCTL), "backup", "-s", str(sock), "fs0", "--into", str(folder / "b"),
                             "--progress", "none"], capture_output=True, env=child_env(), timeout=900)
    if backed.returncode != 0:
        raise SystemExit(f"bench: the backup failed: {backed.stderr.decode(errors='replace')[:2000]}")
    ctx.processes.procs[-1].kill()
    fs.unlink()
    chain = json.loads(backed.stdout)["return"]["chain"]
    rounds = 1 if ctx.args.quick else 3
    times: dict[str, list[float]] = {"restore --instant + boot": [], "restore (full copy) + boot": []}
    alone: dict[str, list[float]] = {name: [] for name in times}
    """The restore command by itself."""

    def restore_and_boot(name: str, number: int) -> float:
        instant = "instant" in name
        workdir = folder / f"{'i' if instant else 'f'}{number}"
        workdir.mkdir()
        image = workdir / "fs.qcow2"
        command = [str(QMPCTL), "restore", chain, *(["--instant", str(image)] if instant else
                                                       [str(image), "--progress", "none"])]
        guest = lab.LabGuest(workdir, name="bench", data_fs_image=image, data_fs_format="qcow2")
        started = time.perf_counter()
        alone[name].append(timed(command))
        try:
            guest.start()
            guest.wait_agent(timeout=300)
            timed([str(QMPCTL), "agent", "ping", "-a", str(guest.agent_path)])
            elapsed = time.perf_counter() - started
            read = subprocess.run([str(QMPCTL), "agent", "exec", "-a", str(guest.agent_path), "--", "cat",
                                   f"/mnt/data{INSTANT_NOTE}"], capture_output=True, env=child_env(), timeout=120)
            if read.stdout.strip() != b"backed up":
                raise SystemExit(f"bench: the guest on the {name} did not read its file back: {read.stdout[:200]!r} "
                                 f"{read.stderr.decode(errors='replace')[:500]}")
        finally:
            guest.stop()
        shutil.rmtree(workdir)
        return elapsed

    for number in range(rounds):
        order = list(times) if number % 2 == 0 else list(reversed(times))  # load drifts: alternate
        for name in order:
            times[name].append(restore_and_boot(name, number))
            print(f"  {name}: {times[name][-1]:.1f} s (the restore itself {alone[name][-1]:.2f} s)", flush=True)
    print(f"\n## instant restore: from the restore command to the lab guest answering agent ping "
          f"(TCG; {INSTANT_DATA_MIB} MiB of data in a {INSTANT_DATA_MIB + 256} MiB filesystem; "
          f"best of {rounds})")
    best = {name: min(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"{name:<30} {best[name]:6.2f} s   runs: " + ", ".join(f"{v:.2f}" for v in values)
              + f"   (the restore itself: best {min(alone[name]):.2f} s, runs: "
              + ", ".join(f"{v:.2f}" for v in alone[name]) + ")")
    ctx.verdicts.append(verdict("restore --instant + boot / restore + boot (best runs)",
                                best["restore --instant + boot"] / best["restore (full copy) + boot"], INSTANT_LIMIT))


# --- whole-disk backups next to qmpbackup and the copy limit -----------------------------------

CHAIN_DISKS = 3
CHAIN_DISK_MIB = 1024
CHAIN_INCREMENT_MIB = 64
QMPBACKUP_LIMIT = 1.0
"""qmpctl's chain backups may take at most as long as qmpbackup's, for a full and for an incremental."""
COPY_LIMIT = 2.0
"""A full backup may take at most twice a plain copy of the same data made durable (qemu-img convert + sync)."""


BASELINE = "qmpctl backup --into (full), --baseline"
"""The same full backup by the qmpctl of another source tree (``--baseline DIR``): a change's before and after,
side by side in one run."""


def qmpbackup_command(ctx: Context) -> list[str] | None:
    """qmpbackup installed from a local copy of its source into a throwaway venv, or None (the comparison skips).

    qmpbackup is not on the package index: ``QMPCTL_BENCH_QMPBACKUP=DIR`` names a checkout of it.
    """
    source = os.environ.get("QMPCTL_BENCH_QMPBACKUP")
    if not source:
        skip("qmpbackup comparison", "set QMPCTL_BENCH_QMPBACKUP to a local copy of qmpbackup's source")
        return None
    venv = ctx.scratch / "qmpbackup-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["qemu.qmp", "colorlog"], check=True)
    subprocess.run(pip + ["--no-deps", source], check=True)
    return [str(venv / "bin" / "python"), str(venv / "bin" / "qmpbackup")]


def hmp(sock: Path, command: str) -> None:
    """One HMP command through a short QMP session of the bench's own."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(sock))
        reader = conn.makefile("rb")
        reader.readline()
        for message in ({"execute": "qmp_capabilities"},
                        {"execute": "human-monitor-command", "arguments": {"command-line": command}}):
            conn.sendall(json.dumps(message).encode() + b"\n")
            while True:
                reply = json.loads(reader.readline())
                if "return" in reply or "error" in reply:
                    break
            if "error" in reply:
                raise SystemExit(f"bench: {command}: {reply['error']}")


def durable_copy_case(name: str, disks: list[Path], folder: Path) -> Case:
    """The copy limit: qemu-img convert of each disk (in parallel, as the jobs run) and a sync of each copy."""
    steps = " & ".join(f"(qemu-img convert -U -f qcow2 -O qcow2 {disk} {folder}/copy{index}.qcow2 && "
                       f"sync {folder}/copy{index}.qcow2)" for index, disk in enumerate(disks))
    return Case(name, ["sh", "-c", f"rm -f {folder}/copy*.qcow2; {steps}; wait"])


def bench_chains(ctx: Context) -> None:
    """Full backups of 1 and of 3 disks and an incremental, next to qmpbackup and to a durable copy."""
    folder = ctx.scratch / "chains"
    folder.mkdir()
    disks = [folder / f"disk{index}.qcow2" for index in range(CHAIN_DISKS)]
    for index, disk in enumerate(disks):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), f"{CHAIN_DISK_MIB}M"], check=True)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {0x41 + index} 0 {CHAIN_DISK_MIB}M", str(disk)],
                       check=True, stdout=subprocess.DEVNULL)
    devices: list[str] = []
    for index, disk in enumerate(disks):
        devices += ["-blockdev", f"driver=qcow2,node-name=disk{index},file.driver=file,file.filename={disk}",
                    "-device", f"virtio-blk-pci,drive=disk{index},id=vd{index}"]
    [sock] = start_vms(ctx.processes, folder / "vm", 1, *devices)
    qmpbackup = qmpbackup_command(ctx)
    rounds = max(2, ctx.args.runs // 7)
    counter = iter(range(1_000_000))

    def fresh(kind: str) -> Path:
        target = folder / "targets" / f"{kind}-{next(counter)}"
        target.mkdir(parents=True)
        return target

    def qmpctl_full(names: list[str]) -> list[str]:
        return ["sh", "-c", f'd=$(mktemp -d {folder}/targets/q-XXXXXX) && '
                f'exec {QMPCTL} backup -s {sock} {" ".join(names)} --into "$d" --progress none']

    def qmpbackup_full(names: list[str]) -> list[str]:
        assert qmpbackup is not None
        include = ",".join(f"disk{name[2:]}" for name in names)
        return ["sh", "-c", f'd=$(mktemp -d {folder}/targets/b-XXXXXX) && exec {" ".join(qmpbackup)} '
                f'--socket {sock} backup --level full --target "$d" --include {include} --no-symlink']

    (folder / "targets").mkdir()
    for title, names in ((f"1 disk of {CHAIN_DISK_MIB} MiB", ["vd0"]),
                         (f"{CHAIN_DISKS} disks of {CHAIN_DISK_MIB} MiB", [f"vd{i}" for i in range(CHAIN_DISKS)])):
        cases = [Case("qmpctl backup --into (full)", qmpctl_full(names)),
                 durable_copy_case("qemu-img convert + sync", disks[:len(names)], fresh("copy"))]
        if qmpbackup:
            cases.append(Case("qmpbackup backup --level full", qmpbackup_full(names)))
        if ctx.args.baseline:
            cases.append(Case(BASELINE, qmpctl_full(names), env=child_env({"PYTHONPATH": ctx.args.baseline})))
        samples = alternate(cases, rounds, folder)
        shutil.rmtree(folder / "targets")
        (folder / "targets").mkdir()
        print_table(f"chains: a full backup of {title} (paused VM, TCG)", samples, "qemu-img convert + sync")
        mine = samples["qmpctl backup --into (full)"].median_ms
        ctx.verdicts.append(verdict(f"full of {title} vs the copy limit",
                                    mine / samples["qemu-img convert + sync"].median_ms, COPY_LIMIT))
        if qmpbackup:
            ctx.verdicts.append(verdict(f"full of {title} vs qmpbackup",
                                        mine / samples["qmpbackup backup --level full"].median_ms, QMPBACKUP_LIMIT))
        if ctx.args.baseline:
            base = samples[BASELINE].median_ms
            against = (f"; {ctx.args.baseline} / qmpbackup "
                       f"{base / samples['qmpbackup backup --level full'].median_ms:.2f}x" if qmpbackup else "")
            print(f"--baseline: this tree / {ctx.args.baseline} {mine / base:.2f}x{against}")
    if not qmpbackup:
        return
    chain_dir, qb_dir = fresh("chain"), fresh("qb")
    for argv in ([str(QMPCTL), "backup", "-s", str(sock), "vd0", "--into", str(chain_dir), "--progress", "none"],
                 qmpbackup + ["--socket", str(sock), "backup", "--level", "full", "--target", str(qb_dir),
                              "--include", "disk0", "--no-symlink"]):
        subprocess.run(argv, check=True, capture_output=True, env=child_env())
    incrementals = {"qmpctl backup --into (incremental)":
                    [str(QMPCTL), "backup", "-s", str(sock), "vd0", "--into", str(chain_dir), "--progress", "none"],
                    "qmpbackup backup --level inc":
                    qmpbackup + ["--socket", str(sock), "backup", "--level", "inc", "--target", str(qb_dir),
                                 "--include", "disk0", "--no-symlink"]}
    samples = {name: Samples() for name in incrementals}
    for round_number in range(rounds * 2):
        order = list(incrementals.items())
        if round_number % 2:
            order.reverse()
        offset = (round_number * CHAIN_INCREMENT_MIB) % (CHAIN_DISK_MIB - CHAIN_INCREMENT_MIB)
        hmp(sock, f'qemu-io -d /machine/peripheral/vd0/virtio-backend '
                  f'"write -P {0x61 + round_number % 20} {offset}M {CHAIN_INCREMENT_MIB}M"')
        for name, argv in order:
            seconds, rss, code = run_once(Case(name, argv), folder / "inc.out")
            if code != 0:
                raise SystemExit(f"bench: {name} failed: {(folder / 'inc.out').read_text(errors='replace')[:2000]}")
            samples[name].seconds.append(seconds)
            samples[name].max_rss_kib.append(rss)
    print_table(f"chains: an incremental of {CHAIN_INCREMENT_MIB} MiB (each run after the same write)", samples,
                "qmpbackup backup --level inc")
    ctx.verdicts.append(verdict(f"incremental of {CHAIN_INCREMENT_MIB} MiB vs qmpbackup",
                                samples["qmpctl backup --into (incremental)"].median_ms
                                / samples["qmpbackup backup --level inc"].median_ms, QMPBACKUP_LIMIT))


# --- a fleet's backups in one call next to a loop of calls ------------------------------------------------

FLEET_BACKUP_VMS = 20
FLEET_BACKUP_DISK_MIB = 64
FLEET_BACKUP_DATA_MIB = 16
"""Each VM's one disk: a qcow2 of 64 MiB, 16 MiB of it written (a full backup copies what is allocated)."""
FLEET_BACKUP_JOBS = 4
FLEET_BACKUP_LIMIT = 0.4
"""One ``backup -s 'GLOB' --into DIR -j 4`` may take at most 0.4x a loop of one ``backup`` call per VM."""


def bench_fleet_backup(ctx: Context) -> None:
    """A whole-VM full backup of 20 small VMs: one fleet call with -j 4 next to 20 calls in sequence (a cron
    script looping over its VMs), each round into fresh folders."""
    folder = ctx.scratch / "fleet-backup"
    folder.mkdir()
    count = FLEET_BACKUP_VMS
    disks = [folder / f"vm{index:02d}.qcow2" for index in range(count)]
    for index, disk in enumerate(disks):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), f"{FLEET_BACKUP_DISK_MIB}M"],
                       check=True)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {0x41 + index} 0 {FLEET_BACKUP_DATA_MIB}M",
                        str(disk)], check=True, stdout=subprocess.DEVNULL)
    started = time.monotonic()
    start_vms(ctx.processes, folder / "vms", count, each=lambda index: [
        "-blockdev", f"driver=qcow2,node-name=disk0,file.driver=file,file.filename={disks[index]}",
        "-device", "virtio-blk-pci,drive=disk0,id=vd0"])
    print(f"\n(started {count} QEMU VMs with a {FLEET_BACKUP_DISK_MIB} MiB disk each "
          f"({FLEET_BACKUP_DATA_MIB} MiB written) in {time.monotonic() - started:.1f}s)")
    targets = folder / "targets"
    targets.mkdir()
    glob_pattern = folder / "vms" / "*.sock"
    fleet_name = f"qmpctl backup -s 'DIR/*.sock' --into DIR -j {FLEET_BACKUP_JOBS} ({count} VMs)"
    loop_name = f"shell loop: {count} x qmpctl backup -s SOCK --into DIR/<vm>"
    fleet = Case(fleet_name, ["sh", "-c", f'd=$(mktemp -d {targets}/f-XXXXXX) && exec {QMPCTL} backup '
                                          f'-s "{glob_pattern}" --into "$d" -j {FLEET_BACKUP_JOBS}'],
                 check=expect_backed_up(count))
    loop = Case(loop_name, ["sh", "-c", f'd=$(mktemp -d {targets}/l-XXXXXX) && for s in {glob_pattern}; do '
                                        f'{QMPCTL} backup -s "$s" --into "$d/$(basename "$s" .sock)" '
                                        '--progress none || exit 1; done'],
                check=expect_backed_up(count))
    samples = alternate([fleet, loop], max(3, ctx.args.runs // 7), folder)
    print_table(f"fleet backup: a full of {count} VMs ({FLEET_BACKUP_DATA_MIB} MiB each, paused, TCG)", samples,
                loop_name)
    ctx.verdicts.append(verdict(f"fleet backup of {count} VMs with -j {FLEET_BACKUP_JOBS} vs a loop of calls",
                                samples[fleet_name].median_ms / samples[loop_name].median_ms, FLEET_BACKUP_LIMIT))


def expect_backed_up(count: int) -> Callable[[bytes], None]:
    """``count`` JSON lines, each a VM's full backup (the fleet prints one per VM; the loop one per call)."""
    def check(text: bytes) -> None:
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        good = [line for line in lines if line.get("return", {}).get("level") == "full"
                or all(disk.get("level") == "full" for disk in line.get("return", {}).get("disks", [{}]))]
        if len(good) != count:
            raise SystemExit(f"bench: {len(good)} of {count} VMs backed up: {text[:1000]!r}")

    return check


# --- the guest's write latency while a full backup runs to a slow DIR, with and without --fleece ---------------

FLEECE_DISK_MIB = 128
FLEECE_SLOW_BPS = 2 * 1024 * 1024
"""The slow DIR's write rate: a busy NFS share."""
FLEECE_WRITES = 20
"""Small writes per measurement, each to a cluster of its own the job has not copied yet."""
FLEECE_PACE = 0.1
"""Seconds between two writes: a measurement spans two seconds of the job, not its first milliseconds."""
FLEECE_LIMIT = 2.0
"""With --fleece, the guest's median write latency during a backup may be at most twice its latency without one."""
VD0_BACKEND = "/machine/peripheral/vd0/virtio-backend"


class QmpClient(EventMonitor):
    """One QMP session kept open, so a timed command costs its own exchange and no connection set-up."""

    def cmd(self, execute: str, **arguments: object) -> object:
        self.stream.write(json.dumps({"execute": execute, "arguments": arguments}).encode() + b"\n")
        self.stream.flush()
        while True:
            message = json.loads(self.stream.readline())
            if "error" in message:
                raise SystemExit(f"bench: {execute}: {message['error']}")
            if "return" in message:
                return message["return"]


class SlowFolder:
    """A real slow filesystem: ext4 mounted ``-o sync`` (as an NFS share exported ``sync`` writes through) on a
    loop device over qemu-storage-daemon's FUSE export of an image behind a throttle filter.

    device-mapper's ``delay`` target would do it with less, but this container has no device-mapper driver;
    loop devices and FUSE work. Needs root."""

    def __init__(self, processes: Processes, folder: Path) -> None:
        self.processes = processes
        self.folder = folder
        self.export = folder / "export.raw"
        self.mount = folder / "slow"
        self.loop = ""
        self.daemon: subprocess.Popen | None = None
        self.mounted = False

    def __enter__(self) -> Path:
        try:
            return self._make()
        except BaseException:
            self.__exit__()
            raise

    def _make(self) -> Path:
        if os.geteuid() != 0:
            raise RuntimeError("it needs root (losetup, mount)")
        if not Path("/dev/fuse").exists() or not shutil.which("qemu-storage-daemon"):
            raise RuntimeError("it needs /dev/fuse and qemu-storage-daemon")
        backing = self.folder / "backing.raw"
        with open(backing, "wb") as handle:
            handle.truncate(512 << 20)
        self.export.touch()
        self.daemon = self.processes.start([
            "qemu-storage-daemon", "--blockdev", f"driver=file,node-name=f0,filename={backing}",
            "--object", f"throttle-group,id=tg0,x-bps-write={FLEECE_SLOW_BPS}",
            "--blockdev", "driver=throttle,node-name=t0,throttle-group=tg0,file=f0",
            "--export", f"type=fuse,id=e0,node-name=t0,mountpoint={self.export},writable=on"],
            self.folder / "qsd.log")
        deadline = time.monotonic() + 10
        while self.export.stat().st_size != 512 << 20:
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("qemu-storage-daemon did not export its image over FUSE: "
                                   + (self.folder / "qsd.log").read_text(errors="replace")[-300:])
            time.sleep(0.05)
        for argv in (["losetup", "-f", "--show", str(self.export)], ["mkfs.ext4", "-q", "-F"],
                     ["mount", "-o", "sync"]):
            if argv[0] == "mkfs.ext4":
                argv = [*argv, self.loop]
            elif argv[0] == "mount":
                self.mount.mkdir()
                argv = [*argv, self.loop, str(self.mount)]
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
            if argv[0] == "losetup":
                self.loop = done.stdout.strip()
        self.mounted = True
        return self.mount

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            for _ in range(50):  # a job being cancelled may still have its image open
                if subprocess.run(["umount", str(self.mount)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
            else:
                subprocess.run(["umount", "-l", str(self.mount)], capture_output=True)
        if self.loop:
            subprocess.run(["losetup", "-d", self.loop], capture_output=True)
            self.loop = ""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
        if self.export.exists() and os.path.ismount(self.export):
            subprocess.run(["fusermount", "-u", str(self.export)], capture_output=True)


def write_latencies(client: QmpClient, pattern: int) -> list[float]:
    """FLEECE_WRITES writes of 4 KiB through the device (HMP qemu-io, as a guest's would go), each timed."""
    took = []
    for number in range(FLEECE_WRITES):
        offset = (FLEECE_DISK_MIB // 2 + number) << 20  # the second half: the job copies from the start
        line = f'qemu-io -d {VD0_BACKEND} "write -P {pattern} {offset} 4k"'
        started = time.perf_counter()
        said = client.cmd("human-monitor-command", **{"command-line": line})
        took.append(time.perf_counter() - started)
        time.sleep(FLEECE_PACE)
        if "failed" in str(said) or "error" in str(said).lower():
            raise SystemExit(f"bench: {line}: {said}")
    return took


def bench_fleece(ctx: Context) -> None:
    """The guest's write latency while a full backup runs to a slow DIR, without and with --fleece, next to no
    backup at all; alternating, one round each at a time."""
    folder = ctx.scratch / "fleece"
    folder.mkdir()
    disk = folder / "disk0.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), f"{FLEECE_DISK_MIB}M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x41 0 {FLEECE_DISK_MIB}M", str(disk)], check=True,
                   stdout=subprocess.DEVNULL)
    scratch2 = folder / "fleece-dir"
    scratch2.mkdir()
    try:
        with SlowFolder(ctx.processes, folder) as slow:
            writer = folder / "writer.sock"  # a second monitor: qmpctl has the first
            vms = Processes()  # stopped before the slow folder is unmounted
            try:
                [sock] = start_vms(vms, folder / "vm", 1, "-qmp", f"unix:{writer},server=on,wait=off",
                                   "-blockdev", f"driver=qcow2,node-name=disk0,file.driver=file,"
                                   f"file.filename={disk}", "-device", "virtio-blk-pci,drive=disk0,id=vd0")
                wait_for_sockets([writer], vms.procs)
                client = QmpClient(writer)
                client.sock.settimeout(600)  # a write that waits on the slow DIR may take seconds
                try:
                    samples = _fleece_rounds(ctx, client, sock, slow, scratch2)
                finally:
                    client.close()
            finally:
                vms.stop_all()
    except RuntimeError as exc:
        skip("fleece write latency", f"no slow filesystem could be made here: {exc}")
        return
    print(f"\n## fleece: a guest's 4 KiB writes while a full backup of {FLEECE_DISK_MIB} MiB runs to a DIR "
          f"writing {FLEECE_SLOW_BPS >> 20} MiB/s (ext4 -o sync over a throttled FUSE export)")
    print(f"{'':44} {'median':>10} {'p99':>10} {'max':>10} {'all writes':>11}  writes")
    for name, took in samples.items():
        ordered = sorted(took)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        print(f"{name:44} {statistics.median(took) * 1000:8.2f}ms {p99 * 1000:8.2f}ms "
              f"{ordered[-1] * 1000:8.2f}ms {sum(took):10.2f}s  {len(took)}")
    print("(a write that waits until the job has copied everything leaves the writes after it nothing to wait for: "
          "compare the max and the time all writes took, not only the median)")
    base = statistics.median(samples["no backup"])
    print(f"without --fleece: {statistics.median(samples['backup --into SLOW']) / base:.1f}x the median "
          "without a backup")
    ctx.verdicts.append(verdict("write latency during a backup with --fleece vs none (median)",
                                statistics.median(samples["backup --into SLOW --fleece LOCAL"]) / base,
                                FLEECE_LIMIT))


def _fleece_rounds(ctx: Context, client: QmpClient, sock: Path, slow: Path, local: Path) -> dict[str, list[float]]:
    modes: dict[str, list[str] | None] = {"no backup": None, "backup --into SLOW": [],
                                          "backup --into SLOW --fleece LOCAL": ["--fleece", str(local)]}
    samples: dict[str, list[float]] = {name: [] for name in modes}
    for round_number in range(max(2, ctx.args.runs // 7)):
        order = list(modes.items())
        if round_number % 2:
            order.reverse()
        for name, extra in order:
            pattern = 0x50 + round_number % 40
            if extra is None:
                samples[name] += write_latencies(client, pattern)
                continue
            into = slow / "chains"  # one DIR: a run takes back what a cancelled one could not in its grace
            child = subprocess.Popen([str(QMPCTL), "backup", "-s", str(sock), "vd0", "--into", str(into),
                                      "--progress", "none", *extra], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())
            try:
                deadline = time.monotonic() + 30
                while not any(job.get("status") == "running" for job in client.cmd("query-jobs")):  # type: ignore
                    if child.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"bench: {name}: no job ran: {child.communicate()[1].decode()[-500:]}")
                    time.sleep(0.01)
                samples[name] += write_latencies(client, pattern)
            finally:
                child.send_signal(signal.SIGINT)  # the measurement is done: the job is cancelled, nothing kept
                child.communicate(timeout=120)
                deadline = time.monotonic() + 120  # writes queued on the slow DIR drain before the job ends
                while any(job.get("status") != "concluded" for job in client.cmd("query-jobs")):  # type: ignore
                    if time.monotonic() > deadline:
                        raise SystemExit(f"bench: {name}: the cancelled job did not end")
                    time.sleep(0.05)
    return samples


# --- choosing the Typer release --------------------------------------------------------------

TYPER_CANDIDATES = [
    "typer-slim==0.16.1 click==8.1.8",
    "typer-slim==0.17.5 click==8.1.8",
    "typer-slim==0.19.2 click==8.3.1",
    "typer-slim==0.21.2 click==8.1.8",
    "typer-slim==0.21.2 click==8.4.2",
    "typer==0.28.0",  # what qmpctl pins: a vendored click, rich only when asked for
    "typer==0.29.2",  # imports pydantic on every `import typer`
]

MINIMAL_TYPER_APP = '''\
"""One Typer command doing the bare QMP exchange: the floor for any Typer CLI."""
import json, socket
import typer
app = typer.Typer()
@app.callback()
def root() -> None:
    pass
@app.command()
def status(qmp: str = typer.Option(..., "-s", "--qmp")) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(qmp)
    stream = sock.makefile("rwb")
    stream.readline()
    stream.write(b'{"execute":"qmp_capabilities"}\\n'); stream.flush(); stream.readline()
    stream.write(b'{"execute":"query-status"}\\n'); stream.flush()
    print(json.dumps(json.loads(stream.readline()), separators=(",", ":")))
app()
'''


def typer_venv(spec: str, root: Path) -> Path:
    """A cached venv with exactly these Typer/click releases (qmpctl itself runs from the source tree)."""
    folder = root / spec.replace(" ", "_").replace("==", "-")
    python = folder / "bin" / "python"
    if not python.exists():
        print(f"(creating {folder} with {spec})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                    *spec.split()], capture_output=True, text=True)
        if installed.returncode != 0:
            shutil.rmtree(folder)
            raise SystemExit(f"bench: pip could not install {spec}:\n{installed.stderr[-2000:]}")
    return python


def bench_typer_versions(ctx: Context) -> None:
    """Typer's cost differs a lot between releases: time a minimal Typer app and qmpctl's Typer path on each."""
    [sock] = start_vms(ctx.processes, ctx.scratch / "typer", 1)
    root = Path(tempfile.gettempdir()) / "qmpctl-bench-venvs"
    minimal = ctx.scratch / "minimal_typer_app.py"
    minimal.write_text(MINIMAL_TYPER_APP)
    env = child_env({"PYTHONPATH": str(REPO)})
    cases = [virsh_case(ctx.domain)] if ctx.domain else []
    cases.append(Case("python -c pass", [str(PYTHON), "-c", "pass"]))
    for spec in TYPER_CANDIDATES:
        python = typer_venv(spec, root)
        cases.append(Case(f"{spec}: minimal Typer app", [str(python), str(minimal), "status", "-s", str(sock)],
                          cwd=ctx.scratch, check=expect_status_reply))
        # monitor-command always goes through Typer: it measures the framework, not the fast path.
        qmpctl = [str(python), "-m", "qmpctl", "monitor-command", "-s", str(sock), "query-status"]
        probe = subprocess.run(qmpctl, capture_output=True, text=True, env=env, cwd=ctx.scratch, timeout=60)
        if probe.returncode == 0:
            cases.append(Case(f"{spec}: qmpctl monitor-command", qmpctl, env=env, cwd=ctx.scratch,
                              check=expect_status_reply))
        else:
            last = (probe.stderr.strip().splitlines() or ["?"])[-1]
            print(f"qmpctl does not run with {spec}: {last}")
    samples = alternate(cases, ctx.args.runs, ctx.scratch)
    print_table("Typer/click releases (qmpctl from the source tree)", samples, cases[0].name)


# --- snapshot load against a boot -----------------------------------------------------------

def bench_snapshot(ctx: Context) -> None:
    """How long ``snapshot load`` takes a booted lab guest back to a ready agent, next to booting one.

    Each round boots a fresh lab guest (QEMU started to the first answered
    guest-sync) and loads the snapshot ``ready`` (saved once, of a guest just
    booted, its agent answering) into another guest, through to its agent
    answering again; the two alternate. The guests have no raw filesystem
    (``data_fs=False``): their only writable disk is the qcow2 data disk that
    holds the snapshot, and its VM state (256 MiB of RAM, mostly never
    written). The target is only that a load beats a boot.
    """
    if not qmpctl_has("snapshot", "load"):
        skip("snapshot load against a boot", "the installed qmpctl has no 'snapshot load' yet")
        return
    from support.lab import lab_guest_module

    lab = lab_guest_module()
    rounds = 3 if ctx.args.quick else 7
    boots: list[float] = []
    loads: list[float] = []
    qmpctl_loads: list[float] = []

    def boot(number: int) -> float:
        guest = lab.LabGuest(ctx.scratch / f"boot{number}", name="boot", data_fs=False)
        started = time.perf_counter()
        try:
            guest.start()
            guest.wait_agent(timeout=120)
            return time.perf_counter() - started
        finally:
            guest.destroy()

    with lab.LabGuest(ctx.scratch / "snap", name="snap", data_fs=False) as guest:
        qmp = str(guest.qmp_path)
        saved = timed([str(QMPCTL), "snapshot", "save", "-s", qmp, "ready", "--wait-timeout", "600"])
        print(f"  snapshot save of the booted guest: {saved:.2f} s", flush=True)

        def load() -> float:
            started = time.perf_counter()
            command = timed([str(QMPCTL), "snapshot", "load", "-s", qmp, "ready", "--wait-timeout", "600"])
            guest.wait_agent(timeout=120)
            qmpctl_loads.append(command)
            return time.perf_counter() - started

        for number in range(rounds):
            pair = [(boots, functools.partial(boot, number)), (loads, load)]
            for into, call in pair if number % 2 == 0 else reversed(pair):  # load drifts: alternate
                into.append(call())
    boot_s, load_s = statistics.median(boots), statistics.median(loads)
    print(f"\n## snapshot load against a boot, lab guest (TCG, 256 MiB; median of {rounds})")
    print(f"{'boot to a ready agent':<48} {boot_s:6.2f} s   runs: " + ", ".join(f"{v:.2f}" for v in boots))
    print(f"{'snapshot load to a ready agent':<48} {load_s:6.2f} s   runs: " + ", ".join(f"{v:.2f}" for v in loads))
    print(f"{'  of which qmpctl snapshot load':<48} {statistics.median(qmpctl_loads):6.2f} s   runs: "
          + ", ".join(f"{v:.2f}" for v in qmpctl_loads))
    print(f"load / boot: {load_s / boot_s:.2f}x ({boot_s / load_s:.1f} times faster)")
    ctx.verdicts.append(verdict("snapshot load / boot, to a ready agent", load_s / boot_s, 1.0))


# --- main ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=21, help="rounds of each comparison (default 21)")
    parser.add_argument("--fleet", type=int, default=FLEET_TARGET_VMS,
                        help=f"VMs in the fleet comparison (default {FLEET_TARGET_VMS})")
    parser.add_argument("--quick", action="store_true", help="7 rounds and 20 fleet VMs: a smoke run")
    parser.add_argument("--only",
                        default="single,startup,fleet,agent,backup,cp,ssh,chains,fleet-backup,snapshot",
                        help="comma-separated subset of: single, startup, fleet, agent, backup, cp, ssh, chains, "
                             "fleet-backup, snapshot, instant (not in the default: it writes several GiB and boots "
                             "the lab guest six times), fleece (not in the default: needs root, FUSE and a loop "
                             "device)")
    parser.add_argument("--baseline", metavar="DIR",
                        help="chains: also time the full backups of the qmpctl in another source tree (e.g. "
                             "`git archive HEAD~ | tar -x -C DIR`), side by side with this one")
    parser.add_argument("--source", action="store_true",
                        help="run qmpctl from the source tree (PYTHONPATH) instead of the installed copy")
    parser.add_argument("--typer-versions", action="store_true",
                        help="instead, compare Typer/click releases (creates venvs under $TMPDIR, needs PyPI)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.fleet = min(args.runs, 7), min(args.fleet, 20)
    return args


def describe_machine() -> str:
    versions = []
    for argv in (["qemu-system-x86_64", "--version"], ["virsh", "--version"]):
        try:
            versions.append(subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.splitlines()[0])
        except (OSError, IndexError):
            pass
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{os.cpu_count()} cores, load {load}; Python {sys.version.split()[0]}; " + "; ".join(versions)


@dataclass
class Bench:
    args: argparse.Namespace

    def run(self) -> int:
        stale = [] if self.args.source else installed_copy_is_stale()
        if self.args.source:
            QMPCTL_ENV["PYTHONPATH"] = str(REPO)
            print("(qmpctl runs from the source tree)")
        if stale:
            print("WARNING: the installed qmpctl differs from the source tree in " + ", ".join(stale[:6])
                  + (" ..." if len(stale) > 6 else "") + ": run `.venv/bin/pip install --no-deps .` first")
        print(f"# qmpctl bench: {describe_machine()}")
        with self.workspace() as ctx:
            if self.args.typer_versions:
                bench_typer_versions(ctx)
                return 0
            wanted = set(self.args.only.split(","))
            for name, step in (("single", bench_single), ("startup", bench_startup), ("fleet", bench_fleet),
                               ("agent", bench_agent), ("backup", bench_backup), ("cp", bench_agent_cp),
                               ("ssh", bench_ssh), ("chains", bench_chains), ("fleet-backup", bench_fleet_backup),
                               ("snapshot", bench_snapshot), ("instant", bench_instant), ("fleece", bench_fleece)):
                if name in wanted:
                    step(ctx)
            print(f"\n{sum(ctx.verdicts)} of {len(ctx.verdicts)} targets met")
            return 0 if all(ctx.verdicts) else 1

    def workspace(self) -> "_Workspace":
        return _Workspace(self.args)


class _Workspace:
    """Scratch folder, VMs and the libvirt domain: set up on enter, all torn down on exit."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = tempfile.TemporaryDirectory(prefix="qmpctl-bench-", dir="/tmp")
        self.processes = Processes()
        self.domain: str | None = None

    def __enter__(self) -> Context:
        scratch = Path(self.tmp.name)
        problem = ensure_libvirtd()
        if problem is None:
            try:
                self.domain = create_domain(scratch)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                problem = f"could not start a libvirt domain: {exc}"
        return Context(self.args, scratch, self.processes, self.domain, problem)

    def __exit__(self, *exc: object) -> None:
        if self.domain:
            virsh("destroy", self.domain)
        self.processes.stop_all()
        self.tmp.cleanup()


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM tears down like Ctrl-C: no VM or domain is left behind."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
