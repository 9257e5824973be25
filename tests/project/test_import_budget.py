"""The start-up budget: what a command imports decides how long every call takes.

Each check runs the command in a fresh interpreter through ``run_cli`` against
a real QEMU or qemu-ga, then lists ``sys.modules``. ``import jsonschema``
alone costs more than a whole ``virsh`` call; Typer (with its click, rich and
pydantic) several; ``dataclasses`` drags in ``inspect``. Every command is read
by the start-up parser (qmpctl/cli/parse.py) and needs neither Typer nor
jsonschema. The quick commands (``QUICK`` in tests/support/quick.py: one or
two exchanges, run by scripts in loops) are held to the whole budget: no
``typing``, ``dataclasses`` or ``inspect`` at run time either, and none of the long
workflows' modules, which may use them. The long workflows (backups, restore,
migration, saved state, agent cp, fsfreeze, hotplug) take seconds to hours:
a few milliseconds of imports are nothing to them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qmpctl.cli.spec import COMMANDS, Command
from support.examples import dry_run_words
from support.qga import HostAgent, have_qemu_ga
from support.quick import QUICK

# What qmpctl imports does not depend on the QEMU it talks to.
pytestmark = pytest.mark.one_qemu

REPO = Path(__file__).resolve().parents[2]

HEAVY = {
    "jsonschema": "validation uses qmpctl.wire.schema; jsonschema is for the test suite only",
    "rich": "Typer brings rich, and Typer is only for --help and mistakes",
    "pydantic": "Typer brings pydantic, and Typer is only for --help and mistakes",
    "asyncio": "qmpctl talks over plain blocking sockets with deadlines",
    "libvirt": "only --domain needs libvirt",
    "libvirt_qemu": "only --domain needs libvirt",
    "qmpctl.wire.libvirt": "only --domain needs libvirt",
    "qmpctl.vm.block": "only the block commands need it",
    "qmpctl.backup.full": "only backup needs it",
    "qmpctl.vm.jobs": "only the job commands need it",
    "qmpctl.cli.readings": "only progress bars need it",
    "qmpctl.guest.exec": "only agent exec needs it",
}
NO_TYPER = {
    "typer": "the start-up parser (qmpctl/cli/parse.py) reads every well-formed line without Typer",
    "click": "the start-up parser (qmpctl/cli/parse.py) reads every well-formed line without click",
}
FAST_PATH_EXTRA = {
    **NO_TYPER,
    "dataclasses": "dataclasses imports inspect: a few ms per call (use a NamedTuple on the hot path)",
    "inspect": "inspect costs a few ms per call and the hot path does not need it",
    "typing": "typing costs about 3 ms per call: qmpctl names its types under TYPE_CHECKING (see qmpctl/records.py)",
}

# QUICK (tests/support/quick.py): the commands held to the start-up budget (FAST_PATH_EXTRA); every other one
# only to ANY_COMMAND.
ANY_COMMAND = {
    **NO_TYPER,
    "jsonschema": "validation uses qmpctl.wire.schema; jsonschema is for the test suite only",
}
LONG_WORKFLOWS = {
    "qmpctl.vm.migration": "only migrate needs it, and it may use typing and dataclasses",
    "qmpctl.vm.savedstate": "only migrate --to-file/--from-file need it, and it may use typing and dataclasses",
    "qmpctl.guest.files": "only agent cp needs it, and it may use typing and dataclasses",
    "qmpctl.guest.freeze": "only fsfreeze and backup --freeze need it, and it may use typing and contextlib",
    "qmpctl.backup": "only backup and restore need it",
}

PROBE = """
import json, sys
from qmpctl.cli import run_cli
code = run_cli(sys.argv[2:])
with open(sys.argv[1], "w") as handle:
    json.dump({"code": code, "modules": sorted(sys.modules)}, handle)
"""


def imported_by(tmp_path: Path, *argv: str) -> tuple[int, str, set[str]]:
    """Run one command line in a fresh interpreter; its exit code, stdout and every module it imported."""
    report = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QMPCTL_", "LIBVIRT_DEFAULT_URI", "_QMPCTL"))}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-c", PROBE, str(report), *argv], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)
    assert report.exists(), proc.stderr
    found = json.loads(report.read_text())
    return found["code"], proc.stdout, set(found["modules"])


def offenders(modules: set[str], budget: dict[str, str]) -> list[str]:
    """Each forbidden module found (a package counts when any of its submodules was imported)."""
    return [f"{name}: {why}" for name, why in budget.items()
            if any(module == name or module.startswith(name + ".") for module in modules)]


@pytest.fixture(scope="module")
def agent(tmp_path_factory) -> HostAgent:
    if not have_qemu_ga():
        pytest.skip("qemu-ga is not installed (run tests/setup-host)")
    running = HostAgent(tmp_path_factory.mktemp("qga")).start()
    yield running
    running.stop()


@pytest.mark.qemu
def test_status_against_a_real_vm_stays_light(vm, tmp_path):
    code, out, modules = imported_by(tmp_path, "status", "-s", str(vm.qmp_path))
    assert code == 0 and json.loads(out)["return"]["status"] == "prelaunch", out
    assert offenders(modules, {**HEAVY, **FAST_PATH_EXTRA, **LONG_WORKFLOWS}) == []
    assert "qmpctl.wire.qmp" in modules  # it really connected: the probe sees imports


@pytest.mark.qemu
def test_status_of_a_fleet_stays_light(vm_factory, tmp_path):
    vms = [vm_factory() for _ in range(2)]
    code, out, modules = imported_by(tmp_path, "status", "-s", str(vms[0].workdir.parent / "vm*" / "qmp.sock"))
    assert code == 0 and len(out.splitlines()) == 2, out
    assert offenders(modules, {**HEAVY, **FAST_PATH_EXTRA}) == []


@pytest.mark.qemu
@pytest.mark.parametrize("listing", [("snapshot", "list"), ("nics",), ("vcpus",)], ids=" ".join)
def test_listings_against_a_real_vm_stay_light(listing, vm, tmp_path):
    """The listings of the device commands are quick commands too, unlike the changes they go with."""
    code, out, modules = imported_by(tmp_path, *listing, "-s", str(vm.qmp_path))
    assert code == 0 and "return" in json.loads(out), out
    assert offenders(modules, {**HEAVY, **FAST_PATH_EXTRA}) == []


def test_status_dry_run_stays_light(tmp_path):
    code, out, modules = imported_by(tmp_path, "status", "-s", str(tmp_path / "vm.sock"), "--dry-run")
    assert code == 0 and json.loads(out) == {"execute": "query-status"}, out
    assert offenders(modules, {**HEAVY, **FAST_PATH_EXTRA}) == []


@pytest.mark.qemu
def test_monitor_command_stays_clear_of_heavy_modules(vm, tmp_path):
    code, out, modules = imported_by(tmp_path, "monitor-command", "-s", str(vm.qmp_path), '{"execute":"query-status"}')
    assert code == 0 and "return" in json.loads(out), out
    assert offenders(modules, {**HEAVY, **NO_TYPER}) == []


@pytest.mark.qemu
def test_hmp_monitor_command_stays_clear_of_heavy_modules(vm, tmp_path):
    code, out, modules = imported_by(tmp_path, "monitor-command", "-s", str(vm.qmp_path), "--hmp", "info status")
    assert code == 0 and "VM status" in out, out
    assert offenders(modules, HEAVY) == []


@pytest.mark.agent
def test_agent_ping_against_a_real_agent_stays_light(agent, tmp_path):
    code, out, modules = imported_by(tmp_path, "agent", "ping", "-a", str(agent.path))
    assert code == 0 and json.loads(out) == {"return": {}}, out
    assert offenders(modules, {**HEAVY, **FAST_PATH_EXTRA, **LONG_WORKFLOWS}) == []
    assert "qmpctl.wire.agent" in modules


def test_a_heavy_import_is_caught(tmp_path):
    """The budget can fail: help goes through Typer, and the probe sees it."""
    code, _, modules = imported_by(tmp_path, "status", "--help")
    assert code == 0
    assert offenders(modules, FAST_PATH_EXTRA)


@pytest.mark.agent
def test_agent_exec_stays_clear_of_typer_and_heavy_modules(agent, tmp_path):
    code, out, modules = imported_by(tmp_path, "agent", "exec", "-a", str(agent.path), "--", "echo", "hi")
    assert code == 0 and out == "hi\n", out
    exec_budget = {name: why for name, why in HEAVY.items() if name != "qmpctl.guest.exec"}
    exec_budget.update(NO_TYPER)
    assert offenders(modules, exec_budget) == []
    assert "qmpctl.guest.exec" in modules


def dry_run_line(command: Command, tmp_path: Path) -> list[str]:
    """The command's own example, pointed at a socket that is not there, with --dry-run right after its words."""
    line = dry_run_words(command)
    for index, word in enumerate(line[:-1]):
        if word in ("-s", "-a"):
            line[index + 1] = str(tmp_path / "absent.sock")
    return line


def test_the_quick_commands_are_declared_commands():
    assert QUICK <= {command.words for command in COMMANDS}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c.words))
def test_every_command_runs_without_typer_or_jsonschema_and_the_quick_ones_within_the_budget(command, tmp_path):
    code, out, modules = imported_by(tmp_path, *dry_run_line(command, tmp_path))
    assert code in (0, 2, 3), out  # 2 or 3: its own checks of the example's files and socket, read without Typer
    assert offenders(modules, ANY_COMMAND) == []
    if command.words in QUICK:
        budget = {name: why for name, why in HEAVY.items() if not name.startswith("qmpctl.")}
        assert offenders(modules, {**budget, **FAST_PATH_EXTRA, **LONG_WORKFLOWS}) == []


HELP_BUDGET = {
    "pydantic": "typer 0.29 imports pydantic on every `import typer`: --help and usage errors took 2.6x as long "
                "(430 ms against 165 ms with typer 0.28, measured side by side); pyproject.toml pins typer<0.29",
}


@pytest.mark.parametrize("argv", [("status", "--help"), ("backup", "--bogus")], ids=["help", "usage-error"])
def test_typers_path_stays_clear_of_pydantic(argv, tmp_path):
    code, _, modules = imported_by(tmp_path, *argv)
    assert code in (0, 2)
    assert "typer" in modules  # the probe really took Typer's path
    assert offenders(modules, HELP_BUDGET) == []


QUICK_LINES = [("stop",), ("cont",), ("block",), ("block", "--nodes"), ("jobs",), ("stats",), ("throttle", "vd0"),
               ("balloon",), ("events", "--count", "1", "--timeout", "0.3")]


@pytest.mark.qemu
@pytest.mark.parametrize("line", QUICK_LINES, ids=" ".join)
def test_quick_commands_against_a_real_vm_stay_within_the_budget(line, vm, tmp_path):
    code, out, modules = imported_by(tmp_path, *line, "-s", str(vm.qmp_path))
    assert code in (0, 1, 4), out  # 1: no balloon device; 4: no event within the time
    budget = {name: why for name, why in HEAVY.items() if not name.startswith("qmpctl.")}
    assert offenders(modules, {**budget, **FAST_PATH_EXTRA, **LONG_WORKFLOWS}) == []
    assert "qmpctl.wire.qmp" in modules
