"""The documentation cannot rot: every example in README.md and in the manual pages runs for real.

The examples are the ``sh`` and ``crontab`` blocks of README.md and of each
manual page's hand-written text, ``man/pages/NAME.md`` (the pages show them
as they are). ``sh`` blocks are bash scripts run with ``set -euo pipefail``; a block
whose first line is ``# exit: N`` shows a failure and must exit with N. Before
a block runs, its example paths are replaced by real resources (see
:data:`PLACEHOLDERS`): one QEMU, one qemu-ga, a folder of several VMs' sockets,
and, for blocks that name the domain ``web1``, a libvirt domain. ``crontab``
blocks run each line's command with ``sh`` as cron would. ``qmpctl`` on PATH is
a wrapper running this source tree.

The host qemu-ga runs programs on THIS machine as root, so blocks may only
start harmless programs through it; :func:`refuse_harmful` enforces that.

The same goes for every command's ``--help`` example, and for the demo of
"Try it" (``bash tests/lab/demo.sh``, marker ``lab``).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from support.docs import man_module
from support.lab import lab_guest_module
from support.libvirt import LibvirtUnavailable, TestDomain, ensure_libvirtd, remove_stale_test_domains
from support.qemu import QemuVM, RawQmp
from support.qga import HostAgent, have_qemu_ga
from support.runner import REPO
from support.shell import qmpctl_on_path, shell_env
from support.sshd import Sshd

pytestmark = [pytest.mark.qemu, pytest.mark.agent]

readme_module = man_module("readme")
README = readme_module.Readme.load()
DOCUMENTS = readme_module.documents()
"""README.md, then every manual page's hand-written text: all the example blocks there are."""
BLOCKS = [block for document in DOCUMENTS for block in document.blocks]

EXAMPLES_BEFORE_THE_MANUAL_PAGES = 48
"""How many README blocks ran when README.md was the only source; moving text to the pages must not lose one."""
HELP_EXAMPLES_BEFORE = 31
"""How many ``--help`` example lines ran then."""
README_MOST_LINES = 400

PLACEHOLDERS = {
    "/var/lib/libvirt/qemu/web1.qmp": "the second QMP socket the README's <qemu:commandline> gives the libvirt domain",
    "/tmp/vm.sock": "a real QEMU's QMP socket: disk vd0 (virtio-blk-pci), node disk0",
    "/tmp/channel.sock": "a real qemu-ga, run on the host",
    "/run/qemu/": "a folder of VMs' sockets: web.sock (running), db.sock (paused), web.qga (an agent), db.qga (stale)",
    "/var/backups/vms": "an empty folder, new for each block (writable by libvirt-qemu in libvirt blocks)",
    "/var/lib/images": "an empty folder, new for each block",
    "web1": "a running libvirt test domain (no OS; its disk is virtio-disk0)",
    "/tmp/lab": "an empty folder for the lab guest (blocks that boot it run in the checkout, marker lab)",
    "/run/vm1.sock": "a running QEMU to migrate or snapshot (disk vd0), new for each block that names it",
    "/run/vm1-new.sock": "its twin: the same hardware, waiting with -incoming defer (new for each block)",
    "root@hv1": "a test sshd on loopback (root on this machine); an ssh first on PATH carries its keys",
    "root@hv2": "the same sshd under another name (localhost), so it counts as a second host",
}
"""Example names the documentation uses, and what tests run them against (tests/README.md lists them)."""

HARMLESS_PROGRAMS = {"uname", "sh", "cat", "echo", "printf", "true", "sleep", "df", "ls"}
HARMFUL_AGENT_COMMANDS = re.compile(r"guest-(shutdown|suspend|set-|file-|fsfreeze|fstrim|ssh-|exec\b)")
BLOCK_TIMEOUT = 120


def refuse_harmful(script: str) -> None:
    """The host's qemu-ga is root on this machine: only let examples run harmless programs through it."""
    if re.search(r"--freeze\b", script):
        raise AssertionError("an example freezes through the host's qemu-ga, which would freeze this machine: "
                             "show it in a block that is not run, or run it on the lab guest")
    for line in script.splitlines():
        if re.search(r"\bagent time\b.*--sync\b", line) and "--dry-run" not in line:
            raise AssertionError("an example syncs the clock through the host's qemu-ga, which would set this "
                                 "machine's clock: add --dry-run, or show it in a block that is not run")
    found = HARMFUL_AGENT_COMMANDS.search(script)
    if found:
        raise AssertionError(f"an example sends {found.group(0)!r} to the agent, which runs on this machine: "
                             "document it in a block that is not run (not 'sh'), or change the example")
    for program in re.findall(r"agent exec\b[^|;&\n]*?\s--\s+(\S+)", script):
        if program not in HARMLESS_PROGRAMS:
            raise AssertionError(f"an example runs {program!r} through the host's qemu-ga; the doc tests only run "
                                 f"{sorted(HARMLESS_PROGRAMS)}")


@dataclass
class World:
    """The real things README's example names stand for."""

    root: Path
    bin: Path
    vm: QemuVM
    agent: HostAgent
    fleet: Path
    domain: TestDomain | None = None
    domain_qmp: Path | None = None
    sshd: Sshd | None = None
    ssh_bin: Path | None = None
    """A folder with an ``ssh`` that uses the sshd's client set-up, as ~/.ssh/config would."""
    second_host: str = ""

    def scratch(self, name: str) -> Path:
        """A new empty folder."""
        folder = self.root / "scratch" / name
        folder.mkdir(parents=True)
        return folder

    def mapping(self, name: str, for_libvirt: bool) -> dict[str, str]:
        values = {
            "/tmp/vm.sock": str(self.vm.qmp_path),
            "/tmp/channel.sock": str(self.agent.path),
            "/run/qemu/": f"{self.fleet}/",
            "/var/lib/images": str(self.scratch(f"{name}-images")),
        }
        if for_libvirt:
            assert self.domain is not None and self.domain_qmp is not None
            values["/var/backups/vms"] = str(self.domain.qemu_folder(f"{name}-backups"))
            values["/var/lib/libvirt/qemu/web1.qmp"] = str(self.domain_qmp)
            values["web1"] = self.domain.name
        else:
            values["/var/backups/vms"] = str(self.scratch(f"{name}-backups"))
        if self.sshd is not None:
            values["root@hv1"] = self.sshd.destination
            values["root@hv2"] = self.second_host
        return values


def substitute(text: str, values: dict[str, str]) -> str:
    """Replace the example names in one pass (a replacement is never replaced again), longest first,
    names like ``web1`` only as whole words."""
    names = sorted(values, key=len, reverse=True)
    pattern = "|".join(rf"\b{re.escape(name)}\b" if name[0].isalnum() else re.escape(name) for name in names)
    return re.sub(pattern, lambda found: values[found.group(0)], text)


def stale_socket(path: Path) -> None:
    """A socket file whose listener is gone: what a VM that died leaves behind."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    for binary in ("qemu-system-x86_64", "qemu-img"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed (run tests/setup-host)")
    if not have_qemu_ga():
        pytest.skip("qemu-ga is not installed (run tests/setup-host)")
    root = tmp_path_factory.mktemp("docs")
    vms: list[QemuVM] = []
    agents: list[HostAgent] = []

    def start_vm(name: str) -> QemuVM:
        vm = QemuVM(root / name)
        vms.append(vm)
        vm.start()
        return vm

    def start_agent(name: str) -> HostAgent:
        agent = HostAgent(root / name)
        agents.append(agent)
        return agent.start()

    try:
        main_vm, main_agent = start_vm("vm"), start_agent("qga")
        fleet = root / "fleet"
        fleet.mkdir()
        web, db = start_vm("web"), start_vm("db")
        with RawQmp(web.qmp2_path) as qmp:
            qmp.cmd("cont")
        with RawQmp(db.qmp2_path) as qmp:
            qmp.cmd("cont")
            qmp.cmd("stop")
        (fleet / "web.sock").symlink_to(web.qmp_path)
        (fleet / "db.sock").symlink_to(db.qmp_path)
        (fleet / "web.qga").symlink_to(start_agent("web-qga").path)
        stale_socket(fleet / "db.qga")
        yield World(root, qmpctl_on_path(root / "bin"), main_vm, main_agent, fleet)
    finally:
        for agent in agents:
            agent.stop()
        for vm in vms:
            vm.kill()


MIGRATION_PAIR = re.compile(r"/run/vm1(-new)?\.sock")


def migration_pair(root: Path) -> tuple[QemuVM, QemuVM]:
    """A running QEMU and its destination twin (same hardware, ``-incoming defer``) for the migration examples."""
    source = QemuVM(root / "vm1", paused=False)
    destination = QemuVM(root / "vm1-new", paused=False, extra_args=["-incoming", "defer"])
    source.start()
    try:
        destination.start()
    except BaseException:
        source.kill()
        raise
    return source, destination


def readme_qemu_commandline() -> tuple[str, ...]:
    """The QEMU arguments of README's <qemu:commandline> example, so that example is what the domain runs."""
    xml = next(block.text for block in BLOCKS if block.info == "xml" and "<qemu:commandline>" in block.text)
    return tuple(re.findall(r"<qemu:arg value='([^']*)'/>", xml))


@pytest.fixture(scope="module")
def libvirt_world(world: World) -> Iterator[World]:
    try:
        ensure_libvirtd()
    except LibvirtUnavailable as exc:
        pytest.skip(f"libvirtd cannot run here: {exc}")
    remove_stale_test_domains()
    domain = TestDomain("doc")
    qmp = domain.qemu_folder("qmp") / "web1.qmp"
    args = tuple(arg.replace("/var/lib/libvirt/qemu/web1.qmp", str(qmp)) for arg in readme_qemu_commandline())
    assert any(str(qmp) in arg for arg in args), f"README's <qemu:commandline> example changed: {args}"
    domain.start(qemu_args=args)
    world.domain, world.domain_qmp = domain, qmp
    try:
        yield world
    finally:
        world.domain = world.domain_qmp = None
        domain.remove()


@pytest.fixture(scope="module")
def ssh_world(world: World) -> Iterator[World]:
    """``root@hv1`` and ``root@hv2``: a real sshd on loopback under two names, and an ``ssh`` that knows it."""
    if not Path("/usr/sbin/sshd").exists() and os.environ.get("CI") != "true":
        pytest.skip("openssh-server is not installed (run tests/setup-host)")
    sshd = Sshd(world.root / "sshd").start()
    world.sshd, world.ssh_bin, world.second_host = sshd, sshd.ssh_wrapper().parent, sshd.also_known_as("localhost")
    try:
        yield world
    finally:
        world.sshd = world.ssh_bin = None
        sshd.stop()


def run_shell(argv: list[str], world: World, tmp_path: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run in ``cwd`` (default ``tmp_path``) with a private HOME under ``tmp_path``."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = shell_env(world.bin, home)
    if world.ssh_bin is not None:
        env["PATH"] = f"{world.ssh_bin}{os.pathsep}{env['PATH']}"
    return subprocess.run(argv, cwd=cwd or tmp_path, env=env, capture_output=True, text=True,
                          timeout=BLOCK_TIMEOUT)


def boots_lab_guest(block) -> bool:
    return "tests/lab/guest.py" in block.text


def report(script: str, proc: subprocess.CompletedProcess) -> str:
    return f"\n--- script\n{script}\n--- exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def crontab_commands(text: str) -> list[str]:
    """The commands of crontab lines, as cron hands them to sh: after 5 time fields, ``\\%`` read as ``%``."""
    commands = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            found = re.fullmatch(r"\s*(?:\S+\s+){5}(.+)", line)
            assert found and "%" not in found.group(1).replace("\\%", ""), \
                f"not a crontab line cron runs as meant: {line}"
            commands.append(found.group(1).replace("\\%", "%"))
    return commands


# --- the examples of README and the manual pages ---------------------------------------------


def runnable_blocks() -> list:
    return [block for block in BLOCKS if block.info in (readme_module.RUNNABLE, readme_module.CRONTAB)]


def where(block) -> str:
    return f"{block.source}:{block.line}"


def _example_params() -> list:
    params = []
    for block in runnable_blocks():
        slug = re.sub(r"[^a-z0-9]+", "-", block.heading.lower()).strip("-")
        page = "readme" if block.source == "README.md" else Path(block.source).stem
        marks = [pytest.mark.libvirt] if re.search(r"\bweb1\b", block.text) else []
        marks += [pytest.mark.lab] if boots_lab_guest(block) else []
        params.append(pytest.param(block, id=f"{page}-{slug}-L{block.line}", marks=marks))
    return params


def test_no_example_was_lost_when_the_readme_became_a_front_page():
    """Every block that ran before README's long sections moved to the pages still runs (or more do)."""
    assert len(_example_params()) >= EXAMPLES_BEFORE_THE_MANUAL_PAGES
    assert len(_help_examples()) >= HELP_EXAMPLES_BEFORE
    pages = {block.source for block in runnable_blocks()}
    assert {path.relative_to(REPO).as_posix() for path in readme_module.page_sources()} <= pages, \
        "a manual page's text without an example that runs"


def test_readme_is_a_front_page():
    lines = README.text.splitlines()
    assert len(lines) <= README_MOST_LINES, (
        f"README.md has {len(lines)} lines, more than {README_MOST_LINES}: move the detail to a manual page's "
        "text (man/pages/NAME.md) and point to it")


@pytest.mark.parametrize("block", _example_params())
def test_readme_example(block, world: World, request: pytest.FixtureRequest, tmp_path: Path):
    for_libvirt = bool(re.search(r"\bweb1\b", block.text))
    if for_libvirt:
        request.getfixturevalue("libvirt_world")
    if re.search(r"\broot@hv[12]\b", block.text):
        request.getfixturevalue("ssh_world")
    values = world.mapping(f"{Path(block.source).stem}-L{block.line}", for_libvirt)
    if MIGRATION_PAIR.search(block.text):
        source, destination = migration_pair(tmp_path / "migration")
        request.addfinalizer(source.kill)
        request.addfinalizer(destination.kill)
        values["/run/vm1.sock"], values["/run/vm1-new.sock"] = str(source.qmp_path), str(destination.qmp_path)
    if boots_lab_guest(block):
        values["/tmp/lab"] = str(tmp_path / "lab")
        lab = lab_guest_module()
        request.addfinalizer(lambda: lab.main(["down", values["/tmp/lab"], "--purge"]))
    else:
        refuse_harmful(block.text)  # a lab guest is a real guest; the host's qemu-ga is this machine
    script = substitute(block.text, values)
    if block.info == readme_module.CRONTAB:
        for command in crontab_commands(script):
            proc = run_shell(["sh", "-c", command], world, tmp_path)
            assert proc.returncode == 0, f"{where(block)}: crontab command failed" + report(command, proc)
        return
    cwd = REPO if boots_lab_guest(block) else None  # its commands name files of the checkout
    proc = run_shell(["bash", "-c", "set -euo pipefail\n" + script], world, tmp_path, cwd)
    assert proc.returncode == block.expected_exit, (
        f"{where(block)}: expected exit {block.expected_exit}" + report(script, proc))
    assert "Traceback" not in proc.stderr, report(script, proc)


def test_readme_uses_only_the_example_names_the_tests_know():
    """A path the tests do not replace would make an example touch the real machine, or fail."""
    known = re.compile("|".join(re.escape(name) for name in PLACEHOLDERS))
    for block in runnable_blocks():
        for path in re.findall(r"(?<![\w$.])/(?:tmp|run|var|srv|etc|home)/[\w./*-]*", block.text):
            assert known.match(path), f"{where(block)}: {path} is not one of {sorted(PLACEHOLDERS)}"


def _commandline(line: str) -> str:
    return re.sub(r"\s+#.*$", "", line).strip()


def test_qmpctl_commands_are_shown_only_in_blocks_that_run():
    """Output blocks show output; a command shown anywhere else could rot unnoticed."""
    for block in BLOCKS:
        if block.info in (readme_module.RUNNABLE, readme_module.CRONTAB):
            continue
        for line in block.text.splitlines():
            assert not re.match(r"\s*(\$\s+)?qmpctl\s", line), (
                f"{where(block)}: a qmpctl command in a {block.info or 'plain'} block is never run: "
                f"put it in an 'sh' block ({line.strip()})")


def test_command_table_covers_every_command_with_an_example_that_runs():
    from qmpctl.cli.spec import COMMANDS

    names = {" ".join(command.words) for command in COMMANDS}
    table = next(rows for rows in readme_module.tables(README.section("Commands").text) if rows[0][0] == "command")
    run_lines = {_commandline(line) for block in BLOCKS if block.info == readme_module.RUNNABLE
                 for line in block.text.splitlines()}
    documented = set()
    for command, _, example in table[1:]:
        name = command.strip("`")
        documented.add(name)
        code = example.strip("`")
        assert code.startswith(f"qmpctl {name} "), f"the example of {name} runs another command: {code}"
        assert code in run_lines, f"the example of {name} is not in any 'sh' block, so it never runs: {code}"
    assert documented == names


def test_exit_code_table_is_the_exit_code_contract():
    from qmpctl.errors import ExitCode

    table = readme_module.tables(README.section("Exit codes").text)[0]
    assert [int(row[0]) for row in table[1:]] == sorted(code.value for code in ExitCode)


def test_every_test_named_in_the_readme_exists():
    """Each guarantee names the test behind it; a renamed or deleted test must not leave a false promise."""
    references = re.findall(r"`(?:tests/)?((?:\w+/)?test_\w+\.py)::(\w+)(?:\[[^\]]*\])?`", README.text)
    assert len(references) >= 30
    for document in DOCUMENTS[1:] + [readme_module.Readme.load(REPO / "tests" / "README.md")]:
        references += re.findall(r"`(?:tests/)?((?:\w+/)?test_\w+\.py)::(\w+)(?:\[[^\]]*\])?`", document.text)
    for filename, name in references:
        path = REPO / "tests" / filename
        assert path.is_file(), f"README names {filename}, which does not exist"
        assert re.search(rf"^\s*def {name}\(", path.read_text(), re.MULTILINE), f"README names {filename}::{name}"
    for row in readme_module.tables(README.section("Guarantees").text)[0][1:]:
        assert re.search(r"test_\w+\.py::\w+", row[1]), f"a guarantee without a test: {row[0]}"


def test_set_up_commands_are_the_ones_that_work():
    """"Try it" shows the demo, and exactly the test command .ci/run runs."""
    ci = [line for line in (REPO / ".ci/run").read_text().splitlines()
          if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == ["bash tests/setup-host && .venv/bin/python -m pytest"]
    try_it = [block.text for block in README.blocks if block.section == "Try it"]
    assert try_it == ["bash tests/lab/demo.sh", ci[0]]


# --- every command's --help example ---------------------------------------------------------


def _help_examples() -> list:
    from qmpctl.cli.spec import COMMANDS

    found = []
    for command in COMMANDS:
        name = " ".join(command.words)
        for index, line in enumerate(command.example.split(";  ")):
            found.append(pytest.param(name, " ".join(line.split()), id=f"{name.replace(' ', '-')}-{index}"))
    return found


def _prepare_help_example(name: str, world: World, tmp_path: Path,
                          request: pytest.FixtureRequest) -> dict[str, str]:
    """What a help example assumes exists: an image to attach, a disk to detach, a program to ask about."""
    values = {"/tmp/vm.sock": str(world.vm.qmp_path), "/tmp/channel.sock": str(world.agent.path)}
    if name.startswith("snapshot "):  # a VM of its own: the shared one's disk gets the backup chains' bitmaps,
        own = QemuVM(tmp_path / "vm")  # and QEMU loads no snapshot onto a disk with dirty bitmaps
        request.addfinalizer(own.kill)
        own.start()
        values["/tmp/vm.sock"] = str(own.qmp_path)
    if name == "hotplug-disk":
        images = tmp_path / "images"
        images.mkdir()
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(images / "data.qcow2"), "16M"], check=True)
        values["/var/lib/vm/"] = f"{images}/"
    if name == "unplug-disk":
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "disk1.qcow2"), "16M"], check=True)
        attached = run_shell(["qmpctl", "hotplug-disk", "-s", str(world.vm.qmp_path), str(tmp_path / "disk1.qcow2"),
                              "--bus", "scsi", "--id", "disk1"], world, tmp_path)
        assert attached.returncode == 0, attached.stderr
    if name in ("backup", "backup-verify", "restore"):
        (tmp_path / "backup").mkdir()
        values["/backup/"] = f"{tmp_path}/backup/"
    if name == "agent set-password":
        (tmp_path / "alice.password").write_text("new secret\n")
    if name in ("backup-verify", "restore"):
        chained = run_shell(["qmpctl", "backup", "-s", str(world.vm.qmp_path), "vd0", "--into",
                             str(tmp_path / "backup" / "vm1")], world, tmp_path)
        assert chained.returncode == 0, chained.stderr
    if name == "media insert":
        images = tmp_path / "images"
        images.mkdir()
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(images / "install.iso"), "1M"], check=True)
        values["/var/lib/images/"] = f"{images}/"
    if name in ("snapshot load", "snapshot delete"):
        saved = run_shell(["qmpctl", "snapshot", "save", "-s", values["/tmp/vm.sock"], "before-upgrade", "--force"],
                          world, tmp_path)
        assert saved.returncode == 0, saved.stderr
    if name == "agent exec-status":
        started = run_shell(["qmpctl", "agent", "exec", "-a", str(world.agent.path), "--no-wait", "--return-value",
                             "--", "true"], world, tmp_path)
        assert started.returncode == 0, started.stderr
        values["1234"] = re.sub(r"\D", "", started.stdout)
    return values


@pytest.mark.parametrize("name, line", _help_examples())
def test_help_example(name: str, line: str, world: World, tmp_path: Path, request: pytest.FixtureRequest):
    """``qmpctl COMMAND --help`` ends with an example; it must work as printed."""
    script = substitute(line, _prepare_help_example(name, world, tmp_path, request))
    refuse_harmful(script)
    proc = run_shell(["bash", "-c", "set -euo pipefail\n" + script], world, tmp_path)
    assert proc.returncode == 0, f"the --help example of {name}" + report(script, proc)


# --- "Try it": the demo on the lab guest ------------------------------------------------------

DEMO = REPO / "tests/lab/demo.sh"
DEMO_MUST_SHOW = ["qmpctl status", "qmpctl stop", "qmpctl cont", "qmpctl block", "qmpctl hotplug-disk",
                  "qmpctl unplug-disk", "qmpctl backup", "qmpctl monitor-command", "qmpctl agent ping",
                  "qmpctl agent interfaces", "qmpctl agent exec", "qmpctl agent command", "qmpctl backup-verify",
                  "qmpctl restore"]


@pytest.mark.lab
def test_demo_runs_end_to_end(tmp_path: Path):
    """README's first command: it shows each qmpctl command it runs, and the guest powers off at the end."""
    shown = [f"qmpctl {found}" for found in re.findall(r"^show qmpctl ((?:agent )?[\w-]+)", DEMO.read_text(), re.M)]
    assert set(DEMO_MUST_SHOW) <= set(shown), "the demo no longer walks through the main operations"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QMPCTL_", "LIBVIRT_DEFAULT_URI"))}
    env.update(QMPCTL_DEMO_SKIP_SETUP="1", PYTHONPATH=str(REPO))  # the source tree, like every test
    proc = subprocess.run(["bash", str(DEMO)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    output = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout)
    assert proc.returncode == 0, f"demo.sh exited {proc.returncode}\n{output}\n{proc.stderr}"
    printed = [line[2:] for line in output.splitlines() if line.startswith("$ qmpctl ")]
    position = 0
    for expected in shown:  # in the script's order
        while position < len(printed) and not printed[position].startswith(expected + " "):
            position += 1
        assert position < len(printed), f"the demo did not show '$ {expected} ...':\n{output}"
        position += 1
    assert "Traceback" not in proc.stderr
    assert output.rstrip().endswith("== done: the guest powered itself off.")
