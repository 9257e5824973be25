"""The wings, checked: no import circles, and no wing imports one above it.

The floors, top to bottom: cli -> backup -> guest -> vm -> wire -> the
shared top level (errors, deadline, signals, output, units, records). A
module may import its own wing and anything below it; lazy imports inside
functions and imports under ``if TYPE_CHECKING:`` count too, since both
would tie the wings together just the same. HACKING.md draws the same map.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "qmpctl"
FLOORS = ["cli", "backup", "guest", "vm", "wire", ""]
"""Top to bottom; "" is the shared top level (qmpctl/*.py)."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the qmpctl modules it imports anywhere in its text."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "qmpctl":
                for alias in node.names:  # from qmpctl.wire import trace: the module qmpctl.wire.trace
                    candidate = f"{node.module}.{alias.name}"
                    found.add(candidate if candidate in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "qmpctl")
        graph[name] = {module for module in found if module != name}
    return graph


ENTRY_POINTS = {"qmpctl.__main__": "cli"}
"""``python -m qmpctl`` stands on the top floor: it only calls the command line."""


def floor_of(module: str) -> str:
    if module in ENTRY_POINTS:
        return ENTRY_POINTS[module]
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in FLOORS) else ""


def test_the_package_has_no_import_cycles():
    graph = _imports()
    cycles: list[list[str]] = []

    def visit(module: str, trail: list[str]) -> None:
        for imported in sorted(graph.get(module, ())):
            if imported in trail:
                cycles.append(trail[trail.index(imported):] + [imported])
            elif len(trail) < len(graph):
                visit(imported, trail + [imported])

    for module in sorted(graph):
        visit(module, [module])
    assert cycles == []


def test_no_wing_imports_one_above_it():
    upward = [f"{module} ({floor_of(module) or 'top'}) imports {imported} ({floor_of(imported) or 'top'})"
              for module, imported_modules in sorted(_imports().items())
              for imported in sorted(imported_modules)
              if imported != "qmpctl" and FLOORS.index(floor_of(imported)) < FLOORS.index(floor_of(module))]
    assert upward == []


def test_every_wing_is_where_the_map_says():
    """A new subpackage must be placed on the map (here and in HACKING.md) before it is used."""
    wings = sorted(path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists())
    assert wings == sorted(floor for floor in FLOORS if floor)


def test_the_checker_sees_an_upward_import():
    """The rule can fail: a vm module importing the backup wing is reported."""
    assert FLOORS.index(floor_of("qmpctl.backup.chain")) < FLOORS.index(floor_of("qmpctl.vm.block"))
    assert floor_of("qmpctl.errors") == "" and floor_of("qmpctl.wire") == "wire"


def test_hacking_draws_the_same_map():
    """HACKING.md names every wing and every shared top-level module, and nothing that is not there."""
    text = (PACKAGE.parent / "HACKING.md").read_text()
    tree = text.split("## The wings", 1)[1].split("```", 2)[1]
    named_wings = {line.split()[0].rstrip("/") for line in tree.splitlines()[1:] if line.startswith("  ")
                   and line.split()[0].endswith("/")}
    assert named_wings == {floor for floor in FLOORS if floor}
    top_line = next(line for line in tree.splitlines() if "errors.py" in line)
    named_modules = {word for word in top_line.split() if word.endswith(".py")}
    actual = {path.name for path in PACKAGE.glob("*.py") if path.name not in ("__init__.py", "__main__.py")}
    assert named_modules == actual
    table = text.split("| floor | may import |", 1)[1].split("\n\n", 1)[0]
    assert [row.split("|")[1].strip().strip("`") for row in table.splitlines()[2:]] == \
        [floor or "top level" for floor in FLOORS]
