"""Block-device commands: block, jobs (hotplug-disk, unplug-disk, backup live in their own modules)."""

from __future__ import annotations

import typer

from qmpctl.cli import app
from qmpctl.cli.common import Common, command, execute_one, run
from qmpctl.request import Request


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
def jobs(*, common: Common) -> int:
    """Show the VM's jobs (query-jobs): id, type, status, progress, error."""
    request = Request("query-jobs")
    return run(common, execute_one(request), [request])
