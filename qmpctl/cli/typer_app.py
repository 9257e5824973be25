"""The Typer application: ordinary Typer code, generated from the declaration (:mod:`qmpctl.cli.spec`).

Do not edit: run ``man/generate_typer_app.py`` after changing the declaration
(tests/project/test_typer_app.py fails while this file is out of date).

Typer is the source of ``--help``, usage errors and shell completion. It is
imported only for command lines the start-up parser (:mod:`qmpctl.cli.parse`)
leaves to it, and :func:`build_app` then turns only the command the line
names into a click command: that costs about a millisecond each.
"""

import os
from typing import Any, Callable, Literal, Optional

import typer

from qmpctl import __version__
from qmpctl.cli.common import complete_socket
from qmpctl.cli import dispatch
from qmpctl.cli.spec import COMMANDS, GROUPS, Command

ROOT_HELP = """Talk to QEMU VMs over QMP and to their guest agents.

qmpctl help COMMAND shows a command's manual page; qmpctl help, the index.

Exit codes: 0 success, 1 the VM or agent answered with an error, 2 bad usage or
invalid input (nothing sent), 3 could not connect, 4 timed out (also a busy
monitor), 5 protocol error, 6 a block job failed, 70 internal error (a bug in
qmpctl), 74 the result could not be written (the command itself succeeded),
124 agent exec: program outlived --wait-timeout, 125 agent exec: qmpctl could
not run it, 130 interrupted.
"""

DECLARED: dict[tuple[str, ...], Command] = {command.words: command for command in COMMANDS}


def _show_version(value: bool) -> None:
    if value:
        print(f"qmpctl {__version__}")
        raise typer.Exit()


def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_show_version, is_eager=True,
                                           help="Print the version and exit."),
) -> None:
    pass


_root.__doc__ = ROOT_HELP

# -- the options every command takes, by kind (-s for the monitor, -a for the agent) -----------------------------

MONITOR_TARGET_SOCKETS: Any = typer.Option(None, '-s', '--qmp', envvar='QMPCTL_QMP', metavar='ADDR',
                                           show_default=False, autocompletion=complete_socket,
                                           help=("QMP socket, as given to QEMU's -qmp: PATH, unix:PATH, "
                                                 'tcp:HOST:PORT, HOST:PORT, or ssh://[USER@]HOST[:PORT]/PATH on '
                                                 'another machine (through ssh; QMPCTL_SSH replaces the ssh '
                                                 'command). Repeat it, or use a glob (expanded where the sockets '
                                                 'are), for many VMs.'))
DOMAIN: Any = typer.Option(None, '-d', '--domain', metavar='DOMAIN', show_default=False,
                           help=('libvirt domain name, UUID or id (needs the libvirt extra), or URI/DOMAIN for a '
                                 'domain on its own URI (qemu+ssh://hv1/system/vm1). Repeatable.'))
CONNECT_URI: Any = typer.Option(None, '-c', '--connect', envvar='LIBVIRT_DEFAULT_URI', metavar='URI',
                                show_default=False,
                                help=('libvirt connection URI for --domain, e.g. qemu+ssh://root@hv1/system '
                                      '[default: qemu:///system].'))
TIMEOUT: Any = typer.Option(10.0, '--timeout', envvar='QMPCTL_TIMEOUT', metavar='SECONDS', show_default=True,
                            help='One deadline for connect (SSH login included), greeting, negotiation and reply.')
PRETTY: Any = typer.Option(False, '--pretty', show_default=False, help='Indent the JSON by 2, like virsh --pretty.')
RETURN_VALUE: Any = typer.Option(False, '--return-value', show_default=False,
                                 help="Print only the reply's return value.")
DRY_RUN: Any = typer.Option(False, '--dry-run', show_default=False,
                            help='Print the validated request(s) and connect to nothing.')
JOBS: Any = typer.Option(16, '--jobs', '-j', metavar='N', show_default=True,
                         help='With many targets: how many to talk to at once.')
AGENT_TARGET_SOCKETS: Any = typer.Option(None, '-a', '--agent', envvar='QMPCTL_AGENT', metavar='ADDR',
                                         show_default=False, autocompletion=complete_socket,
                                         help=('Guest-agent channel socket: PATH, unix:PATH, tcp:HOST:PORT, or '
                                               'ssh://[USER@]HOST[:PORT]/PATH on another machine. Repeat it, or use '
                                               'a glob (expanded where the sockets are), for many VMs.'))


# -- one function per command ------------------------------------------------------------------------------------------


def help(
    *,
    topic: Optional[list[str]] = typer.Argument(None, metavar='TOPIC', show_default=False,
                                                help="A command, a command group or a manual page's name."),
) -> int:
    """Show the manual page of a command, or the index of every page.

    On a terminal with man installed, man shows the page (its pager, its width). Otherwise the page is rendered as plain text on stdout: by mandoc, else groff, else a rough rendering of the page's source. The page is the source tree's man/ when qmpctl runs from a checkout, else the installed one (share/man under the installation prefix). TOPIC is a command (backup, agent exec), a command group (agent) or a page's name (remote, qmpctl-remote); none is the index, qmpctl(1). Exit 2 for an unknown topic, naming the topics there are.
    """
    return dispatch.invoke(DECLARED[('help',)], locals())


def status(
    *,
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Show the VM's run state (query-status)."""
    return dispatch.invoke(DECLARED[('status',)], locals())


def stop(
    *,
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Pause the VM's CPUs (stop)."""
    return dispatch.invoke(DECLARED[('stop',)], locals())


def cont(
    *,
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Resume a paused VM (cont)."""
    return dispatch.invoke(DECLARED[('cont',)], locals())


def monitor_command(
    *,
    words: list[str] = typer.Argument(..., metavar='CMD...', show_default=False,
                                      help=('A JSON request object, or a command name followed by its arguments as '
                                            "JSON members (like virsh); '-' reads the request from standard input, "
                                            '@FILE from FILE.')),
    hmp: bool = typer.Option(False, '--hmp', show_default=False,
                             help='Send the text as an HMP command line and print its text.'),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Send any QMP command, like virsh qemu-monitor-command.

    The words are joined with spaces. Text that starts with { must be a request object: {"execute": NAME, "arguments": {...}}. Otherwise the first word is the command name and the rest its arguments as JSON members. A request too long for the command line is read from standard input (-) or a file (@FILE), and validated the same way.
    """
    return dispatch.invoke(DECLARED[('monitor-command',)], locals())


def events(
    *,
    count: Optional[int] = typer.Option(None, '--count', metavar='N', show_default=False,
                                        help='End after N events (that pass --wait/--match).'),
    wait: Optional[list[str]] = typer.Option(None, '--wait', metavar='NAME[,NAME...]', show_default=False,
                                             help=('End at the first event with one of these names '
                                                   '(comma-separated, repeatable), exit 0.')),
    match: Optional[list[str]] = typer.Option(None, '--match', metavar='KEY=VALUE', show_default=False,
                                              help=('Only events whose data has KEY equal to VALUE; dotted KEY for '
                                                    'nested members, JSON text for non-strings (guest=true). '
                                                    'Repeatable: all must match.')),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Print the VM's QMP events as JSON lines as they arrive, or wait for one.

    Each line is {"event", "data", "timestamp"} as QEMU sent it (with "target" first when there are several VMs). Only events from the moment qmpctl connected are seen: QEMU keeps none. Without --wait or --count the stream runs until Ctrl-C, which ends it with exit 0. With --wait or --count, --timeout is the time to wait: exit 4 with "no NAME within S s" when it runs out. A --wait name that is not an event of this VM (its query-qmp-schema) is exit 2 at once, naming close matches. Through --domain the events come from libvirt's QEMU monitor event API.
    """
    return dispatch.invoke(DECLARED[('events',)], locals())


def powerdown(
    *,
    wait: bool = typer.Option(True, '--wait/--no-wait', show_default=True,
                              help='Wait for SHUTDOWN (default), or return once the button is pressed.'),
    wait_timeout: Optional[float] = typer.Option(None, '--wait-timeout', metavar='SECONDS', show_default=False,
                                                 help='How long the guest may take to shut down [default: 60].'),
    force_after: Optional[float] = typer.Option(None, '--force-after', metavar='SECONDS', show_default=False,
                                                help=('Make QEMU quit when the guest has not shut down after this '
                                                      'long.')),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Press the ACPI power button (system_powerdown) and wait until the guest has shut down.

    Waits for the SHUTDOWN event on the same connection, so it cannot be missed. Exit 4 when the guest ignores the button for --wait-timeout. --force-after SECONDS waits that long instead and then makes QEMU quit, exit 0 with "forced": true (not through --domain: use virsh destroy).
    """
    return dispatch.invoke(DECLARED[('powerdown',)], locals())


def reset(
    *,
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Reset the machine (system_reset) and wait for QEMU's RESET event.

    The guest reboots without shutting down. A QEMU started with -no-reboot shuts down instead; the output then carries a note.
    """
    return dispatch.invoke(DECLARED[('reset',)], locals())


def quit(
    *,
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Make QEMU exit at once (quit), like pulling the plug.

    The monitor closing after the reply is the success (exit 0). Refused with --domain: libvirt must know the VM stops, use virsh destroy.
    """
    return dispatch.invoke(DECLARED[('quit',)], locals())


def stats(
    *,
    watch: Optional[float] = typer.Option(None, '--watch', metavar='SECONDS', show_default=False,
                                          help='Sample every SECONDS, one JSON line each.'),
    count: Optional[int] = typer.Option(None, '--count', metavar='N', show_default=False,
                                        help='With --watch: stop after N samples [default: Ctrl-C].'),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Show how the VM performs: disk I/O counters, vCPU threads, balloon size, hypervisor counters.

    One JSON document per VM from query-blockstats, query-cpus-fast, query-balloon and query-stats. What the VM cannot give (no balloon, a QEMU before 7.1, TCG without counters) is left out with a note in "notes". --watch prints one line per sample with per-second rates of each disk since the sample before; Ctrl-C ends it with exit 0. --timeout applies to each sample.
    """
    return dispatch.invoke(DECLARED[('stats',)], locals())


def throttle(
    *,
    device: str = typer.Argument(..., metavar='DEVICE', show_default=False,
                                 help='The disk: its device id (vd0), qdev path or drive name.'),
    bps: Optional[str] = typer.Option(None, '--bps', metavar='BYTES_PER_SEC', show_default=False,
                                      help='Total bytes per second [default: unchanged].'),
    bps_rd: Optional[str] = typer.Option(None, '--bps-rd', metavar='BYTES_PER_SEC', show_default=False,
                                         help='Bytes read per second [default: unchanged].'),
    bps_wr: Optional[str] = typer.Option(None, '--bps-wr', metavar='BYTES_PER_SEC', show_default=False,
                                         help='Bytes written per second [default: unchanged].'),
    iops: Optional[int] = typer.Option(None, '--iops', metavar='N', show_default=False,
                                       help='Total operations per second [default: unchanged].'),
    iops_rd: Optional[int] = typer.Option(None, '--iops-rd', metavar='N', show_default=False,
                                          help='Reads per second [default: unchanged].'),
    iops_wr: Optional[int] = typer.Option(None, '--iops-wr', metavar='N', show_default=False,
                                          help='Writes per second [default: unchanged].'),
    bps_max: Optional[str] = typer.Option(None, '--bps-max', metavar='BYTES_PER_SEC', show_default=False,
                                          help='Burst rate above --bps.'),
    bps_rd_max: Optional[str] = typer.Option(None, '--bps-rd-max', metavar='BYTES_PER_SEC', show_default=False,
                                             help='Burst rate above --bps-rd.'),
    bps_wr_max: Optional[str] = typer.Option(None, '--bps-wr-max', metavar='BYTES_PER_SEC', show_default=False,
                                             help='Burst rate above --bps-wr.'),
    iops_max: Optional[int] = typer.Option(None, '--iops-max', metavar='N', show_default=False,
                                           help='Burst rate above --iops.'),
    iops_rd_max: Optional[int] = typer.Option(None, '--iops-rd-max', metavar='N', show_default=False,
                                              help='Burst rate above --iops-rd.'),
    iops_wr_max: Optional[int] = typer.Option(None, '--iops-wr-max', metavar='N', show_default=False,
                                              help='Burst rate above --iops-wr.'),
    bps_max_length: Optional[int] = typer.Option(None, '--bps-max-length', metavar='SECONDS', show_default=False,
                                                 help='How many seconds the --bps-max burst may last.'),
    bps_rd_max_length: Optional[int] = typer.Option(None, '--bps-rd-max-length', metavar='SECONDS', show_default=False,
                                                    help='How many seconds the --bps-rd-max burst may last.'),
    bps_wr_max_length: Optional[int] = typer.Option(None, '--bps-wr-max-length', metavar='SECONDS', show_default=False,
                                                    help='How many seconds the --bps-wr-max burst may last.'),
    iops_max_length: Optional[int] = typer.Option(None, '--iops-max-length', metavar='SECONDS', show_default=False,
                                                  help='How many seconds the --iops-max burst may last.'),
    iops_rd_max_length: Optional[int] = typer.Option(None, '--iops-rd-max-length', metavar='SECONDS',
                                                     show_default=False,
                                                     help='How many seconds the --iops-rd-max burst may last.'),
    iops_wr_max_length: Optional[int] = typer.Option(None, '--iops-wr-max-length', metavar='SECONDS',
                                                     show_default=False,
                                                     help='How many seconds the --iops-wr-max burst may last.'),
    iops_size: Optional[str] = typer.Option(None, '--iops-size', metavar='BYTES', show_default=False,
                                            help='Count an operation larger than this as several.'),
    group: Optional[str] = typer.Option(None, '--group', metavar='NAME', show_default=False,
                                        help='Share the limits with the other disks of this group.'),
    off: bool = typer.Option(False, '--off', show_default=False, help='Clear every limit of the disk.'),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Show or set a disk's I/O limits (block_set_io_throttle), changing only those named.

    Without limits it shows the ones in force. With limits it reads the current ones first and sends them back with only the named ones changed (QEMU resets whatever it is not given); a total limit (--bps) replaces the read/write limits of its kind and the other way round. Prints the limits in force afterwards. Exit 2 before anything is sent for contradictory values. Rates in bytes take suffixes: 512K, 10M, 1G.
    """
    return dispatch.invoke(DECLARED[('throttle',)], locals())


def balloon(
    *,
    size: Optional[str] = typer.Argument(None, metavar='SIZE', show_default=False,
                                         help='The memory the guest should have, in bytes or with a suffix.'),
    wait_timeout: Optional[float] = typer.Option(None, '--wait-timeout', metavar='SECONDS', show_default=False,
                                                 help='Wait up to this long for the guest to reach SIZE.'),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Show the guest's memory size through the balloon, or ask the guest for SIZE.

    Without SIZE prints query-balloon's reply (actual, in bytes). With SIZE (512M, 1G) asks the guest and returns; --wait-timeout waits until the guest has it, else exit 4 saying how far it got. A VM without a balloon device is exit 1 naming the device to add (-device virtio-balloon-pci).
    """
    return dispatch.invoke(DECLARED[('balloon',)], locals())


def block(
    *,
    nodes: bool = typer.Option(False, '--nodes', show_default=False,
                               help=('List every named block node (query-named-block-nodes), including nodes no '
                                     'device uses yet.')),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Show the VM's block devices (query-block)."""
    return dispatch.invoke(DECLARED[('block',)], locals())


def jobs(
    *,
    dismiss: Optional[str] = typer.Option(None, '--dismiss', metavar='JOB_ID', show_default=False,
                                          help=('Instead, dismiss a concluded job (job-dismiss) and delete the '
                                                'target nodes a backup --no-wait added for it. Exit 6 when the job '
                                                'had failed (its error on stderr); the incomplete target file that '
                                                'backup created is removed.')),
    cancel: Optional[str] = typer.Option(None, '--cancel', metavar='JOB_ID', show_default=False,
                                         help=('Instead, cancel a job (job-cancel), wait until it has ended, '
                                               'dismiss it and delete what a backup --no-wait added for it: for a '
                                               'job a killed qmpctl left running.')),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Show the VM's jobs (query-jobs): id, type, status, progress, error.

    A job qmpctl started (backup) stays listed once it has ended, with status "concluded" and an "error" member when it failed, until it is dismissed: that is how a script checks a backup --no-wait later.
    """
    return dispatch.invoke(DECLARED[('jobs',)], locals())


def hotplug_disk(
    *,
    file: str = typer.Argument(..., metavar='FILE', show_default=False,
                               help="The image to attach (a path on the VM's host)."),
    bus: Literal['virtio', 'scsi'] = typer.Option('virtio', '--bus', show_default=True,
                                                  help=('virtio: a virtio-blk-pci disk; scsi: a scsi-hd on a '
                                                        'virtio-scsi-pci controller (added when the VM has none).')),
    device_id: Optional[str] = typer.Option(None, '--id', metavar='NAME', show_default=False,
                                            help=('The device id; its nodes are NAME-format and NAME-file [default: '
                                                  'the first free diskN].')),
    image_format: Optional[Literal['qcow2', 'raw']] = typer.Option(None, '--format', show_default=False,
                                                                   help=('The image format [default: read from its '
                                                                         'header].')),
    readonly: bool = typer.Option(False, '--readonly', show_default=False, help='Attach the image read-only.'),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Attach an image as a new disk (blockdev-add + device_add), all or nothing.

    Prints the device id and node names. When a step fails, everything this call added is removed again and the exit code says why: 2 for what qmpctl can tell before sending (no such file, not a qcow2, an id in use), 1 when QEMU refused.
    """
    return dispatch.invoke(DECLARED[('hotplug-disk',)], locals())


def unplug_disk(
    *,
    device_id: str = typer.Argument(..., metavar='ID', show_default=False,
                                    help="The disk's device id (as hotplug-disk printed it)."),
    wait_timeout: float = typer.Option(30.0, '--wait-timeout', metavar='SECONDS', show_default=True,
                                       help='How long the guest may take to release the device.'),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Detach a disk: device_del, wait for the guest to release it, then blockdev-del its nodes.

    A PCI disk (virtio) needs the guest's cooperation; a guest that does not release it in time ends in exit 4 with nothing deleted (the request stays pending in QEMU). A SCSI disk is released at once.
    """
    return dispatch.invoke(DECLARED[('unplug-disk',)], locals())


def snapshot_save(
    *,
    name: str = typer.Argument(..., metavar='NAME', show_default=False,
                               help="The snapshot's name (tag); not only digits."),
    vmstate: Optional[str] = typer.Option(None, '--vmstate', metavar='DEVICE', show_default=False,
                                          help=('The disk that holds the VM state [default: the first writable '
                                                'qcow2 disk].')),
    exclude: Optional[list[str]] = typer.Option(None, '--exclude', metavar='DEVICE', show_default=False,
                                                help=('Leave this disk out (repeatable): it is neither saved nor, '
                                                      'by load, restored.')),
    force: bool = typer.Option(False, '--force', show_default=False, help='Replace an existing snapshot NAME.'),
    wait_timeout: Optional[float] = typer.Option(None, '--wait-timeout', metavar='SECONDS', show_default=False,
                                                 help=('Give up after this long, exit 4, leaving no part of the '
                                                       'snapshot [default: one hour].')),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Save the VM state and every writable qcow2 disk as internal snapshot NAME (snapshot-save).

    The VM state goes on the first writable qcow2 disk (or --vmstate DEVICE). Read-only media are left out and listed in the result ("read-only"). A writable disk that cannot hold snapshots (raw) is exit 2 before anything starts, naming it, unless --exclude leaves it out (then listed in "excluded"). An existing NAME is exit 2; --force replaces it, saving the new state under a temporary name first, so a complete snapshot exists at every moment. A failed save (6), one that outlives --wait-timeout (4) or is interrupted (130) deletes its tag from every disk again. The VM pauses while its state is written.
    """
    return dispatch.invoke(DECLARED[('snapshot', 'save')], locals())


def snapshot_load(
    *,
    name: str = typer.Argument(..., metavar='NAME', show_default=False, help='The snapshot to go back to.'),
    exclude: Optional[list[str]] = typer.Option(None, '--exclude', metavar='DEVICE', show_default=False,
                                                help='Leave this disk as it is (repeatable).'),
    wait_timeout: Optional[float] = typer.Option(None, '--wait-timeout', metavar='SECONDS', show_default=False,
                                                 help='Give up waiting after this long, exit 4 [default: one hour].'),
    sync_time: bool = typer.Option(False, '--sync-time', show_default=False,
                                   help=("Once the VM runs again, set the guest's clock from the host's "
                                         "(guest-set-time through the agent: -a, or the --domain's). No agent "
                                         'given: exit 2 before anything is done. An agent that does not answer is a '
                                         'warning in the result ("time-synced": false), exit 0: the VM state was '
                                         'restored.')),
    agent: Optional[str] = typer.Option(None, '-a', '--agent', metavar='ADDR', show_default=False,
                                        autocompletion=complete_socket,
                                        help="The guest agent's channel socket, for --sync-time."),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Go back to internal snapshot NAME: the VM state and every disk that holds it (snapshot-load).

    Every writable qcow2 disk must hold NAME (--exclude leaves one out): otherwise exit 2 before the VM is touched, naming the disks that lack it, because a failed snapshot-load leaves a running VM stopped in restore-vm; the same for a disk with dirty bitmaps (a backup chain's), onto which QEMU loads no snapshot. A running VM runs on from the snapshot, a paused one stays paused. Exit 6 when QEMU fails the load; the message then says the state the VM is left in.
    """
    return dispatch.invoke(DECLARED[('snapshot', 'load')], locals())


def snapshot_list(
    *,
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """List the VM's internal snapshots: the disks holding each, date, VM state size, VM clock.

    One JSON object per snapshot name, oldest first: "disks" that hold it, "date" (UTC), "vm-state-size" in bytes (0: a disk-only snapshot) with the disk that holds it ("vmstate"), and "vm-clock", the guest's running time when it was taken.
    """
    return dispatch.invoke(DECLARED[('snapshot', 'list')], locals())


def snapshot_delete(
    *,
    name: str = typer.Argument(..., metavar='NAME', show_default=False, help='The snapshot to delete.'),
    wait_timeout: Optional[float] = typer.Option(None, '--wait-timeout', metavar='SECONDS', show_default=False,
                                                 help='Give up waiting after this long, exit 4 [default: one hour].'),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Delete internal snapshot NAME from every writable disk that holds it (snapshot-delete).

    Exit 2 when no disk holds NAME. A read-only disk keeps its copy (listed in "kept-on-read-only").
    """
    return dispatch.invoke(DECLARED[('snapshot', 'delete')], locals())


def media_insert(
    *,
    device: str = typer.Argument(..., metavar='DEVICE', show_default=False,
                                 help='The drive: its device id (cdrom0) or drive name.'),
    file: str = typer.Argument(..., metavar='FILE', show_default=False,
                               help="The image to insert (a path on the VM's host)."),
    image_format: Optional[Literal['raw', 'qcow2']] = typer.Option(None, '--format', show_default=False,
                                                                   help=('The image format [default: read from its '
                                                                         'header].')),
    read_only: bool = typer.Option(False, '--read-only', show_default=False,
                                   help='Insert it read-only (a CD-ROM always is).'),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Put an image into a CD-ROM or floppy drive (blockdev-change-medium), always naming its format.

    FILE is checked (it exists and can be read; for an ssh:// VM on its host) before anything is sent. Its format is --format, or read from its first bytes: QEMU is never left to probe it, since a qcow2 header can name a backing file QEMU would then open (such an image needs --format qcow2). A medium already in the drive is replaced ("replaced" names it). Exit 2: no such drive, a fixed disk, FILE missing or unreadable; exit 1: QEMU refused, for instance a tray the guest holds locked.
    """
    return dispatch.invoke(DECLARED[('media', 'insert')], locals())


def media_eject(
    *,
    device: str = typer.Argument(..., metavar='DEVICE', show_default=False,
                                 help='The drive: its device id (cdrom0) or drive name.'),
    force: bool = typer.Option(False, '--force', show_default=False,
                               help='Eject even when the guest has locked the tray.'),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Take the medium out of a CD-ROM or floppy drive (eject).

    A guest that holds the tray locked makes QEMU refuse: exit 1 with QEMU's words (QEMU also asks the guest to open the tray). --force ejects anyway, behind the guest's back. The result names the medium that was ejected (null: the drive was empty).
    """
    return dispatch.invoke(DECLARED[('media', 'eject')], locals())


def hotplug_nic(
    *,
    device_id: Optional[str] = typer.Option(None, '--id', metavar='ID', show_default=False,
                                            help="The NIC's device id; its backend is ID-net."),
    model: Literal['virtio-net-pci', 'e1000', 'e1000e', 'rtl8139'] = typer.Option('virtio-net-pci', '--model',
                                                                                  show_default=True,
                                                                                  help='The device model.'),
    mac: Optional[str] = typer.Option(None, '--mac', metavar='MAC', show_default=False,
                                      help='The MAC address [default: QEMU picks one].'),
    net: str = typer.Option('user', '--net', metavar='NET', show_default=True,
                            help='The backend: user, tap:IFNAME or bridge:BRIDGE.'),
    bus: Optional[str] = typer.Option(None, '--bus', metavar='BUS', show_default=False,
                                      help="The PCI bus to plug into [default: QEMU's choice]."),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Add a network card (netdev_add + device_add), all or nothing.

    The backend is ID-net: user networking (QEMU's own NAT, no root needed), an existing tap interface (tap:IFNAME, no scripts run) or a bridge (bridge:BRIDGE, through QEMU's qemu-bridge-helper). When device_add is refused, the backend is deleted again: exit 1 with QEMU's words, nothing left. Exit 2: an id in use, a bad MAC or --net, nothing sent. Prints the id, model, MAC (QEMU's pick without --mac) and backend.
    """
    return dispatch.invoke(DECLARED[('hotplug-nic',)], locals())


def unplug_nic(
    *,
    device_id: str = typer.Argument(..., metavar='ID', show_default=False,
                                    help="The NIC's device id (as hotplug-nic or nics shows it)."),
    wait_timeout: float = typer.Option(30.0, '--wait-timeout', metavar='SECONDS', show_default=True,
                                       help='How long the guest may take to release the device.'),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Remove a network card: device_del, wait for the guest to release it, then netdev_del its backend.

    A PCI NIC needs the guest's cooperation: a guest that does not release it within --wait-timeout is exit 4 with nothing deleted (the request stays pending in QEMU). Ctrl-C or SIGTERM after device_del gives the guest a few seconds more and deletes the backend if it let go; otherwise the message says what stays, and unplug-nic ID deletes a backend left behind by a device already gone.
    """
    return dispatch.invoke(DECLARED[('unplug-nic',)], locals())


def nics(
    *,
    state: Optional[str] = typer.Argument(None, metavar='up|down', show_default=False,
                                          help='With --link: the link state to set.'),
    link: Optional[str] = typer.Option(None, '--link', metavar='ID', show_default=False,
                                       help="Set this NIC's link (its id) to STATE."),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """List the VM's network cards (id, model, MAC, backend), or set one's link up or down (set_link).

    Each NIC is {"id", "model", "mac", "netdev", "path"}; a NIC added without an id has "id": null. QEMU has no command that reports a link's state, so none is shown. --link ID up|down sets it as the guest sees it (carrier lost or back).
    """
    return dispatch.invoke(DECLARED[('nics',)], locals())


def vcpus(
    *,
    count: Optional[int] = typer.Argument(None, metavar='N', show_default=False,
                                          help='The number of vCPUs the VM should have.'),
    wait_timeout: Optional[float] = typer.Option(None, '--wait-timeout', metavar='SECONDS', show_default=False,
                                                 help=('When unplugging: how long the guest may take to release the '
                                                       'vCPUs, all together [default: 30].')),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Show the VM's vCPU slots, or plug or unplug vCPUs until it has N (device_add, device_del).

    Without N: {"vcpus", "max", "slots"}, each slot with its CPU type, placement properties and whether it is plugged (query-hotpluggable-cpus). With N above the current count: the free slots are filled in order, one device_add each with every property QEMU names for the slot; a failure asks the vCPUs this call added to go again (exit 1). N above the VM's maxcpus is exit 2 naming the maximum. With N below the current count: the highest hot-plugged vCPUs are unplugged one at a time (device_del), each awaited until the guest has released it (DEVICE_DELETED); a guest that does not within --wait-timeout is exit 4, naming the vCPU whose unplug request stays pending. vCPUs the VM started with (-smp) cannot be unplugged: exit 2 naming them, before anything is sent.
    """
    return dispatch.invoke(DECLARED[('vcpus',)], locals())


def hotplug_memory(
    *,
    size: str = typer.Argument(..., metavar='SIZE', show_default=False,
                               help="The DIMM's size: 512M, 1G (a multiple of 2 MiB)."),
    device_id: Optional[str] = typer.Option(None, '--id', metavar='ID', show_default=False,
                                            help="The DIMM's device id; its backend is ID-mem."),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Add a DIMM of SIZE (object-add memory-backend-ram + device_add pc-dimm), all or nothing.

    The VM must have been started with memory slots (-m SIZE,slots=N,maxmem=M): without, or with every slot used, or when SIZE would go past maxmem, exit 2 before anything is sent. SIZE is a multiple of 2 MiB. The backend is ID-mem; it is deleted again when the DIMM is refused (exit 1).
    """
    return dispatch.invoke(DECLARED[('hotplug-memory',)], locals())


def unplug_memory(
    *,
    device_id: str = typer.Argument(..., metavar='ID', show_default=False, help="The DIMM's device id."),
    wait_timeout: float = typer.Option(30.0, '--wait-timeout', metavar='SECONDS', show_default=True,
                                       help='How long the guest may take to release the DIMM.'),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Remove a DIMM: device_del, wait for the guest to release it, then object-del its backend.

    The guest must offline the memory first: one that does not release the DIMM within --wait-timeout is exit 4 with nothing deleted (the request stays pending). Ctrl-C or SIGTERM after device_del gives it a few seconds more and deletes the backend if it let go, else says what stays; unplug-memory ID of a DIMM already gone deletes the backend it left.
    """
    return dispatch.invoke(DECLARED[('unplug-memory',)], locals())


def backup(
    *,
    words: Optional[list[str]] = typer.Argument(None, metavar='DEVICE...', show_default=False,
                                                help=('The disk: its device id (vd0), drive name or node name; then '
                                                      "TARGET, the image file to create, a path on the VM's host "
                                                      '(checked there over ssh://); it must not exist. With --into: '
                                                      'the disks to back up and no TARGET [default: every disk of '
                                                      'the VM], each by a name that stays (device id, QOM path, '
                                                      "drive name, a node name you chose; not QEMU's #block123).")),
    into: Optional[str] = typer.Option(None, '--into', metavar='DIR', show_default=False,
                                       help=("Chain mode: extend each DEVICE's backup chain in DIR (created if only "
                                             'its last level is missing). DIR is where QEMU opens the images: on '
                                             "the VM's host for an ssh:// VM (an absolute path there, worked on "
                                             'over the same SSH connection).')),
    full: bool = typer.Option(False, '--full', show_default=False,
                              help='With --into: start a new chain with a full backup.'),
    exclude: Optional[list[str]] = typer.Option(None, '--exclude', metavar='NAME', show_default=False,
                                                help=('With --into: leave this disk out (repeatable): its device '
                                                      'id, drive name, node name or QOM path.')),
    metrics: Optional[str] = typer.Option(None, '--metrics', metavar='FILE', show_default=False,
                                          help=("With --into: update FILE, a Prometheus textfile (node_exporter's "
                                                "textfile collector), with each VM's and disk's last success, "
                                                'level, bytes, seconds and chain length, or one more failure; '
                                                'written whole (temporary file, then rename). Not with --estimate, '
                                                'which backs nothing up.')),
    keep_chains: Optional[int] = typer.Option(None, '--keep-chains', metavar='N', show_default=False,
                                              help=('With --into: after a successful backup, delete the oldest '
                                                    'chains of the disk beyond N (never the current one).')),
    new_chain_after: Optional[str] = typer.Option(None, '--new-chain-after', metavar='DURATION', show_default=False,
                                                  help=('With --into: start a new chain with a full backup when the '
                                                        "current one's first backup is older than DURATION (90s, "
                                                        '12h, 7d, 2w); its "reason" says so.')),
    max_incrementals: Optional[int] = typer.Option(None, '--max-incrementals', metavar='N', show_default=False,
                                                   help=('With --into: start a new chain with a full backup when '
                                                         'the current one already has N incrementals; its "reason" '
                                                         'says so.')),
    estimate: bool = typer.Option(False, '--estimate', show_default=False,
                                  help=('With --into: print, per disk, what the next run would do ("level") and '
                                        'copy ("bytes": the bitmap\'s count for an incremental, the disk\'s '
                                        'allocated size for a full), and start, lock, create or change nothing.')),
    skip_below: Optional[str] = typer.Option(None, '--skip-below', metavar='SIZE', show_default=False,
                                             help=('With --into: a disk with less than SIZE changed since its last '
                                                   'backup (512K, 10M) is not backed up this run ("level": '
                                                   '"skipped"); its bitmap keeps recording.')),
    fleece: Optional[str] = typer.Option(None, '--fleece', metavar='DIR2', show_default=False,
                                         help=("With --into: image fleecing, so a slow DIR never slows the guest's "
                                               'writes: the old data a guest write replaces goes to a temporary '
                                               'image in DIR2 (a fast folder on this host, QEMU 7.1 or later; not '
                                               'for ssh:// VMs), and the jobs copy from that snapshot to DIR at '
                                               'their own pace. Several disks of a running VM are switched with the '
                                               'VM paused for a moment ("paused": seconds). The temporary files and '
                                               'nodes are removed on every path.')),
    compress: bool = typer.Option(False, '--compress', show_default=False,
                                  help=('With --into: write compressed qcow2 images (smaller, slower to write); '
                                        'restore, backup-verify, --serve and --instant read them as any other.')),
    freeze: bool = typer.Option(False, '--freeze', show_default=False,
                                help=("With --into: freeze the guest's filesystems through its agent (-a, or "
                                      '--domain) while the jobs start, and thaw them right after, on every path. No '
                                      'agent: exit 3, nothing started.')),
    freeze_try: bool = typer.Option(False, '--freeze-try', show_default=False,
                                    help=('Like --freeze, but back up unfrozen (and say so) when the agent cannot '
                                          'be reached or does not freeze.')),
    freeze_timeout: Optional[float] = typer.Option(None, '--freeze-timeout', metavar='SECONDS', show_default=False,
                                                   help=('How long the agent may take to freeze; then it is thawed '
                                                         '[default: 10].')),
    agent: Optional[str] = typer.Option(None, '-a', '--agent', metavar='ADDR', show_default=False,
                                        autocompletion=complete_socket,
                                        help=("The guest agent's channel socket, for --freeze. Several VMs: a "
                                              "pattern, {vm} standing for each VM's name and {sock} for its "
                                              "socket's file name without the extension (-a '/run/qemu/{vm}.qga'; a "
                                              'VM over ssh:// finds an absolute path on its host).')),
    sync: Literal['full', 'top'] = typer.Option('full', '--sync', show_default=True,
                                                help=('full: the whole disk; top: only what the top image holds '
                                                      "(the target then names the source's backing file).")),
    image_format: Literal['qcow2', 'raw'] = typer.Option('qcow2', '--format', show_default=True,
                                                         help="The target's format."),
    speed: Optional[str] = typer.Option(None, '--speed', metavar='BYTES_PER_SEC', show_default=False,
                                        help='Limit the copy rate, e.g. 10M [default: no limit].'),
    force: bool = typer.Option(False, '--force', show_default=False,
                               help=('Overwrite an existing TARGET; also needed when the VM runs on another host, '
                                     'where qmpctl cannot check it.')),
    wait: bool = typer.Option(True, '--wait/--no-wait', show_default=True,
                              help=('Wait until the job has finished (default), or return once it started and print '
                                    'its job id (refused with --into).')),
    wait_timeout: Optional[float] = typer.Option(None, '--wait-timeout', metavar='SECONDS', show_default=False,
                                                 help=('Cancel the job and exit 4 when it takes longer [default: '
                                                       'one day].')),
    progress: Literal['auto', 'bar', 'json', 'none'] = typer.Option('auto', '--progress', show_default=True,
                                                                    help=('While waiting, show progress on stderr: '
                                                                          'bar, json (one line per update), none; '
                                                                          'auto: a bar when stderr is a terminal.')),
    job_id: Optional[str] = typer.Option(None, '--job-id', metavar='ID', show_default=False,
                                         help='Name the job [default: backup-DEVICE].'),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Back a disk up to a new image file, or extend its backup chain (--into), and wait until the copy is complete.

    DEVICE TARGET: one full copy. Exit 0 only when the job finished without error. Exit 2: TARGET exists (untouched; --force overwrites) or cannot be written. Exit 6: the job failed (the reason follows). Exit 4 (--wait-timeout) and 130 (Ctrl-C, SIGTERM): the job was cancelled first. An incomplete TARGET qmpctl created is removed. Uses drive-backup, or the blockdev flow where QEMU refuses it.

    DEVICE... --into DIR: the first run makes a full backup and starts a chain in DIR/<chain>/ with a dirty bitmap on the disk; every later run adds an incremental image holding only what was written since, and a new bitmap (the one before is removed once the image is recorded). When the bitmap cannot be trusted (QEMU killed, a raw disk restarted, removed by hand, the disk put back from an older copy) the run starts a new chain with a full backup and says why ("reason"). Several DEVICEs are backed up from one instant, all or none. A failed, timed-out or interrupted run leaves the chain as it was and the bitmap keeps every change; what a killed qmpctl left (job, nodes, image, bitmap) is cleaned up by the next run. Exit 4 "busy": another qmpctl is backing up the same disk. For an ssh:// VM, DIR is on its host, and the lock, images and manifest are handled there through the SSH connection.

    --into DIR with no DEVICE: the whole VM, every disk with a medium, a guest device and data the guest can write (UEFI variables on pflash too); read-only media, empty drives and a TPM are listed under "skipped" with the reason. --exclude leaves a disk out. Several VMs (-s GLOB, several -s or -d): each VM's chains go in DIR/<vm>/ (its -name, libvirt's domain name, else its socket's file name), one JSON line per VM, -j of them at once [default for backup: min(4, CPUs)]; a VM that fails leaves its chains as they were and the others go on; the exit code is the highest.
    """
    return dispatch.invoke(DECLARED[('backup',)], locals())


def stream(
    *,
    device: str = typer.Argument(..., metavar='DEVICE', show_default=False,
                                 help='The disk: its device id (vd0), drive name or node name.'),
    speed: Optional[str] = typer.Option(None, '--speed', metavar='BYTES_PER_SEC', show_default=False,
                                        help='Limit the copy rate, e.g. 10M [default: no limit].'),
    wait: bool = typer.Option(True, '--wait/--no-wait', show_default=True,
                              help='Wait until the disk stands alone (default), or return once the job started.'),
    wait_timeout: Optional[float] = typer.Option(None, '--wait-timeout', metavar='SECONDS', show_default=False,
                                                 help=('Cancel the job and exit 4 when it takes longer [default: '
                                                       'one day].')),
    progress: Literal['auto', 'bar', 'json', 'none'] = typer.Option('auto', '--progress', show_default=True,
                                                                    help=('While waiting, show progress on stderr: '
                                                                          'bar, json (one line per update), none; '
                                                                          'auto: a bar when stderr is a terminal.')),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Copy a disk's backing data into it while the VM runs, so it stands alone (block-stream, like virsh blockpull).

    For a VM started on an overlay (restore --instant): when the job has completed qmpctl flushes the disk, so the copied data and the image's new header are on the host's disk, checks that the disk names no backing file any more, and prints the bytes copied; then the chain the overlay was made on is no longer needed, and its reference to the overlay is removed. A disk that already stands alone is flushed and reported (exit 0). The job (stream-DEVICE) shows in qmpctl jobs. Exit 4 (--wait-timeout) and 130 (Ctrl-C, SIGTERM): the job is cancelled, what it copied stays, the VM keeps running on its overlay, and stream again continues. --no-wait returns once the job started; stream again later waits for it, or reads how it ended, and flushes. Exit 6: the job failed (the reason follows).
    """
    return dispatch.invoke(DECLARED[('stream',)], locals())


def backup_verify(
    *,
    path: str = typer.Argument(..., metavar='DIR', show_default=False,
                               help='A folder of chains (as given to backup --into), or one chain folder.'),
    json_lines: bool = typer.Option(False, '--json', show_default=False,
                                    help='Print one JSON line per image (ok, problem).'),
    max_age: Optional[str] = typer.Option(None, '--max-age', metavar='DURATION', show_default=False,
                                          help=("Also exit 6, naming each, when a disk's newest backup started "
                                                'longer ago than DURATION (90m, 36h, 7d, 1d12h).')),
    wait_timeout: Optional[float] = typer.Option(None, '--wait-timeout', metavar='SECONDS', show_default=False,
                                                 help=('Give up (exit 4) when reading the images takes longer '
                                                       '[default: one day].')),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Check every image of the backup chains in DIR, offline.

    Each image must pass qemu-img check, be backed by the image before it in the manifest (chain.json), and have the size and sha256 the manifest recorded. Exit 0 when all are sound; exit 6 naming the first broken image. No VM is needed; the shared options other than --pretty do not apply. DIR is read on this host: for a chain on a VM's host (backup -s ssh://... --into), run it there or over a mount.
    """
    return dispatch.invoke(DECLARED[('backup-verify',)], locals())


def restore(
    *,
    chain: str = typer.Argument(..., metavar='CHAIN', show_default=False,
                                help=("A chain folder, a folder of one disk's chains (then the latest chain), or a "
                                      "VM's folder of chains (a whole VM).")),
    target: Optional[str] = typer.Argument(None, metavar='TARGET', show_default=False,
                                           help=('The image file to write (a folder for a whole VM); it must not '
                                                 'exist. Not with --serve.')),
    point: Optional[int] = typer.Option(None, '--point', metavar='N', show_default=False,
                                        help='Backup N of the chain, 1 being the full [default: the latest].'),
    at: Optional[str] = typer.Option(None, '--at', metavar='TIME', show_default=False,
                                     help=('The last backup started at or before TIME (ISO 8601; UTC unless it has '
                                           'a zone).')),
    force: bool = typer.Option(False, '--force', show_default=False, help='Replace an existing TARGET.'),
    image_format: Literal['qcow2', 'raw'] = typer.Option('qcow2', '--format', show_default=True,
                                                         help="TARGET's format."),
    progress: Literal['auto', 'bar', 'json', 'none'] = typer.Option('auto', '--progress', show_default=True,
                                                                    help=('While waiting, show progress on stderr: '
                                                                          'bar, json (one line per update), none; '
                                                                          'auto: a bar when stderr is a terminal.')),
    wait_timeout: Optional[float] = typer.Option(None, '--wait-timeout', metavar='SECONDS', show_default=False,
                                                 help=('Give up (exit 4) when verifying and writing take longer '
                                                       '[default: one day].')),
    boot_check: bool = typer.Option(False, '--boot-check', show_default=False,
                                    help=('Boot the restored image and wait for its guest agent (a restore drill); '
                                          "QEMU is told --format, never a format guessed from the guest's bytes.")),
    qemu_args: Optional[list[str]] = typer.Option(None, '--qemu-arg', metavar='ARG', show_default=False,
                                                  help=('One more QEMU argument for --boot-check, repeatable: '
                                                        '--qemu-arg=-m --qemu-arg=512, -kernel/-initrd for a guest '
                                                        'that does not boot from its disk, -accel kvm.')),
    boot_timeout: float = typer.Option(120.0, '--boot-timeout', metavar='SECONDS', show_default=True,
                                       help='How long the restored guest may take to answer guest-ping.'),
    check_command: Optional[str] = typer.Option(None, '--check-command', metavar='CMD', show_default=False,
                                                help=('A shell command to run in the booted guest (sh -c) through '
                                                      'its agent; it must exit 0.')),
    serve: Optional[str] = typer.Option(None, '--serve', metavar='ADDR', show_default=False,
                                        help=('Instead of writing TARGET, serve the point read-only over NBD at '
                                              'unix:PATH or tcp:HOST:PORT (loopback only unless --allow-remote) '
                                              'until Ctrl-C, SIGTERM or --for.')),
    serve_for: Optional[float] = typer.Option(None, '--for', metavar='SECONDS', show_default=False,
                                              help=('With --serve: stop serving after this long (exit 0) [default: '
                                                    'until Ctrl-C or SIGTERM].')),
    writable: bool = typer.Option(False, '--writable', show_default=False,
                                  help=('With --serve: serve a throwaway overlay that takes writes (deleted at the '
                                        "end); the chain's images stay read-only.")),
    instant: Optional[str] = typer.Option(None, '--instant', metavar='TARGET', show_default=False,
                                          help=('Instead of writing a whole image, create TARGET as a thin qcow2 '
                                                "overlay on the point, at once whatever the disk's size; a VM can "
                                                "start on it, and qmpctl stream makes it standalone. The images' "
                                                'metadata is checked first; their sha256 only with --verify.')),
    verify: bool = typer.Option(False, '--verify', show_default=False,
                                help=('With --instant: first compare every image the point needs with its sha256, '
                                      'as restore does (reads them all: seconds per GiB).')),
    ls: Optional[str] = typer.Option(None, '--ls', metavar='PATH', show_default=False,
                                     help=('Instead, list the folder PATH of the disk at that point (or the file '
                                           'PATH), through libguestfs.')),
    cat: Optional[str] = typer.Option(None, '--cat', metavar='PATH', show_default=False,
                                      help=('Instead, write the exact bytes of the file PATH of the disk at that '
                                            'point to stdout.')),
    extract: Optional[str] = typer.Option(None, '--extract', metavar='PATH', show_default=False,
                                          help=('Instead, copy the file or folder PATH of the disk at that point '
                                                'into --to DIR (modes and times kept; an existing one is not '
                                                'replaced unless --force).')),
    to: Optional[str] = typer.Option(None, '--to', metavar='DIR', show_default=False,
                                     help='With --extract: the local folder to write into.'),
    filesystem: Optional[str] = typer.Option(None, '--filesystem', metavar='DEVICE', show_default=False,
                                             help=('With --ls/--cat/--extract: the filesystem to read, like '
                                                   "/dev/sda1 [default: found by inspection, or the disk's only "
                                                   'filesystem].')),
    allow_remote: bool = typer.Option(False, '--allow-remote', show_default=False,
                                      help=('With --serve tcp:HOST:PORT: allow an address other than loopback (NBD '
                                            'has no authentication).')),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Get a disk back as it was at one backup of a chain: a standalone image, an NBD export (--serve), a thin overlay to boot from at once (--instant), or single files (--ls, --cat, --extract).

    Verifies the chain's images up to that backup first (as backup-verify does), then writes TARGET with qemu-img convert; TARGET is never overwritten (exit 2) unless --force. No VM is needed; the chain is read on this host (a chain on a VM's host: run it there, or over a mount). --boot-check then boots the restored image in a throwaway QEMU (-snapshot: nothing is written to it) with a guest agent channel, waits for guest-ping, runs --check-command in the guest, and exits 6 with the console's last lines when the guest did not come up or the check failed.

    --serve ADDR writes nothing: it verifies the point's images the same way, then serves the point read-only over NBD with qemu-nbd (format given, never probed), prints the NBD URI as one JSON line and serves until Ctrl-C, SIGTERM or --for SECONDS, each a normal end (exit 0); the server is then stopped and its socket removed. --writable serves a throwaway qcow2 overlay on top instead, deleted at the end.

    --instant TARGET creates TARGET as a thin qcow2 overlay whose backing file is the point's image (never overwriting: exit 2 when it exists), in milliseconds; a VM started on it runs at once, and qmpctl stream copies the rest into it while it runs. Until then the chain folder holds instant-HASH.json naming TARGET, and backup --keep-chains keeps that chain.

    --ls PATH, --cat PATH and --extract PATH --to DIR read single files of the point through libguestfs (guestfish, read-only, format given), with the filesystem found by inspection, the disk's only one, or --filesystem. --cat writes the file's exact bytes; --extract keeps modes and times, never replaces an existing file (exit 2) unless --force, and prints what it wrote. A PATH the backup does not hold is exit 1 naming it; a filesystem that cannot be read is exit 6. Each call boots libguestfs's appliance (seconds with KVM, a minute or more under emulation).

    A whole VM: when CHAIN is a VM's folder holding chains of several disks (DIR, or DIR/<vm> of a fleet), or TARGET is a folder (an existing one, or written with a trailing /), every disk of one backup of the VM (the same grouped run: --at TIME, --point N with one chain per disk, or the latest) is written to TARGET/<device>.qcow2, all or none; --boot-check boots them together, disks in the order of their names and the UEFI variables (pflash1) as the second flash, after the firmware's code given with --qemu-arg.
    """
    return dispatch.invoke(DECLARED[('restore',)], locals())


def migrate(
    *,
    to: Optional[str] = typer.Option(None, '--to', metavar='ADDR', show_default=False, autocompletion=complete_socket,
                                     help="Destination QEMU's QMP address (started with -incoming defer)."),
    uri: Optional[str] = typer.Option(None, '--uri', metavar='URI', show_default=False,
                                      help=('Migration channel: tcp:HOST:PORT (port 0: the destination picks one) '
                                            'or unix:PATH [default: a private unix socket, when both QEMUs are on '
                                            'this machine].')),
    speed: Optional[str] = typer.Option(None, '--speed', metavar='BYTES_PER_SEC', show_default=False,
                                        help=("Bandwidth limit in bytes/s, e.g. 100M [default: no limit; QEMU's own "
                                              'is low].')),
    downtime: Optional[int] = typer.Option(None, '--downtime', metavar='MS', show_default=False,
                                           help=('Longest pause of the VM at the switch-over, in ms '
                                                 "(downtime-limit) [default: QEMU's, 300].")),
    auto_converge: bool = typer.Option(False, '--auto-converge', show_default=False,
                                       help=("Slow the guest's CPUs down when it dirties memory faster than it can "
                                             'be sent.')),
    postcopy_after: Optional[float] = typer.Option(None, '--postcopy-after', metavar='SECONDS', show_default=False,
                                                   help=('Switch to postcopy after this long without converging '
                                                         '(both QEMUs must support it, else exit 2 before '
                                                         'starting); from then on it cannot be cancelled.')),
    stall_timeout: Optional[float] = typer.Option(None, '--stall-timeout', metavar='SECONDS', show_default=False,
                                                  help=('Cancel (exit 4) when the remaining RAM has not shrunk for '
                                                        'this long.')),
    wait: bool = typer.Option(True, '--wait/--no-wait', show_default=True,
                              help=('Wait until both sides agree (default), or return once the source is sending '
                                    'and print the migration status.')),
    wait_timeout: Optional[float] = typer.Option(None, '--wait-timeout', metavar='SECONDS', show_default=False,
                                                 help='Cancel and exit 4 when it takes longer [default: one day].'),
    progress: Literal['auto', 'bar', 'json', 'none'] = typer.Option('auto', '--progress', show_default=True,
                                                                    help=('While waiting, show progress on stderr: '
                                                                          'bar, json (one line per update), none; '
                                                                          'auto: a bar when stderr is a terminal.')),
    status: bool = typer.Option(False, '--status', show_default=False,
                                help="Instead, show the VM's run state and its migration (query-migrate)."),
    cancel: bool = typer.Option(False, '--cancel', show_default=False,
                                help=("Instead, cancel the VM's outgoing migration and wait until QEMU says it is "
                                      'over.')),
    to_file: Optional[str] = typer.Option(None, '--to-file', metavar='FILE', show_default=False,
                                          help="Save the VM's state into this new file (the VM is paused first)."),
    then: Literal['stay', 'cont', 'quit'] = typer.Option('stay', '--then', show_default=True,
                                                         help=('After --to-file: stay (leave the VM paused), cont '
                                                               '(resume it) or quit (end its QEMU).')),
    force: bool = typer.Option(False, '--force', show_default=False,
                               help='With --to-file: replace an existing FILE, once the new state is complete.'),
    from_file: Optional[str] = typer.Option(None, '--from-file', metavar='FILE', show_default=False,
                                            help=('Restore the state saved in FILE into this QEMU (started with '
                                                  '-incoming defer). FILE is checked first against the record '
                                                  '--to-file wrote: truncated or corrupted is exit 6, another '
                                                  'machine type or an older QEMU exit 2, before the destination is '
                                                  'touched.')),
    paused: bool = typer.Option(False, '--paused', show_default=False,
                                help='With --from-file: leave the restored VM paused.'),
    sync_time: bool = typer.Option(False, '--sync-time', show_default=False,
                                   help=("Once the VM runs again, set the guest's clock from the host's "
                                         "(guest-set-time through the agent: -a, or the --domain's). No agent "
                                         'given: exit 2 before anything is done. An agent that does not answer is a '
                                         'warning in the result ("time-synced": false), exit 0: the VM state was '
                                         'restored.')),
    agent: Optional[str] = typer.Option(None, '-a', '--agent', metavar='ADDR', show_default=False,
                                        autocompletion=complete_socket,
                                        help="The guest agent's channel socket, for --sync-time."),
    target_sockets: Optional[list[str]] = MONITOR_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Move a running VM to another QEMU (live migration), or save its state to a file and restore it.

    --to ADDR: DEST is the destination QEMU's monitor; it has the same hardware and was started with -incoming defer (a destination that is not waiting is refused with exit 2 before the source is touched). Both sides get the same capabilities, the destination listens (a private unix socket in a fresh directory when both are on this machine, else --uri), the source sends, and qmpctl waits until both agree: source postmigrate, destination running (paused when the source was). Exit 0 only then.

    On a failure (6), --wait-timeout or --stall-timeout (4), Ctrl-C or SIGTERM (130) the migration is cancelled, the source runs again if it was running, and a destination that never ran is told to quit; the message names the source's final state.

    --to-file FILE pauses the VM and writes its whole state into a new FILE (like virsh save); --from-file FILE loads it into a QEMU started with -incoming defer and continues it. The file is handed to QEMU as a file descriptor over the unix socket (not possible over TCP). --domain is refused: use virsh migrate, libvirt owns its domains' migration.
    """
    return dispatch.invoke(DECLARED[('migrate',)], locals())


def agent_ping(
    *,
    target_sockets: Optional[list[str]] = AGENT_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Check that the guest agent answers (guest-ping)."""
    return dispatch.invoke(DECLARED[('agent', 'ping')], locals())


def agent_info(
    *,
    target_sockets: Optional[list[str]] = AGENT_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Show the agent's version and supported commands (guest-info)."""
    return dispatch.invoke(DECLARED[('agent', 'info')], locals())


def agent_interfaces(
    *,
    target_sockets: Optional[list[str]] = AGENT_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Show the guest's network interfaces (guest-network-get-interfaces)."""
    return dispatch.invoke(DECLARED[('agent', 'interfaces')], locals())


def agent_command(
    *,
    words: list[str] = typer.Argument(..., metavar='CMD...', show_default=False,
                                      help=('A JSON request object, or a command name followed by its arguments as '
                                            "JSON members (like virsh); '-' reads the request from standard input, "
                                            '@FILE from FILE.')),
    target_sockets: Optional[list[str]] = AGENT_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Send any guest-agent command, like virsh qemu-agent-command.

    guest-shutdown and guest-suspend-* answer only when they fail: for them qmpctl waits a second for a refusal and prints nothing on success.
    """
    return dispatch.invoke(DECLARED[('agent', 'command')], locals())


def agent_exec(
    *,
    program: list[str] = typer.Argument(..., metavar='PROGRAM [ARGS]...', show_default=False,
                                        help=("The program to run in the guest (looked up in the agent's PATH) and "
                                              'its arguments; put -- before it.')),
    stdin: bool = typer.Option(False, '--stdin', show_default=False,
                               help=("Send qmpctl's standard input (up to 16 MiB) to the program; without it the "
                                     'program reads an empty input.')),
    env: Optional[list[str]] = typer.Option(None, '--env', metavar='NAME=VALUE', show_default=False,
                                            help=('Set an environment variable (repeatable). The guest agent then '
                                                  'REPLACES the whole environment with these: include PATH=... if '
                                                  'the program needs it.')),
    wait_timeout: Optional[float] = typer.Option(None, '--wait-timeout', metavar='SECONDS', show_default=False,
                                                 help=('Give up waiting after this long: exit 124, the program '
                                                       'keeps running [default: no limit].')),
    no_wait: bool = typer.Option(False, '--no-wait', show_default=False,
                                 help=('Print the agent\'s reply with the guest pid ({"return":{"pid":N}}) and '
                                       'return; read the result with agent exec-status.')),
    json_output: bool = typer.Option(False, '--json', show_default=False,
                                     help=('Print the decoded result as one JSON object: pid, exited, exitcode, '
                                           'signal, stdout, stderr (UTF-8 text, invalid bytes as U+FFFD), '
                                           'out-truncated, err-truncated.')),
    target_sockets: Optional[list[str]] = AGENT_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Run a program in the guest like ssh would (guest-exec + guest-exec-status).

    Its stdout and stderr come out as raw bytes on qmpctl's stdout and stderr, and qmpctl exits with its exit code (128+N when signal N killed it). Exit 124: it outlived --wait-timeout (its guest pid is printed on stderr), or the agent stopped answering after the program was started. Exit 125: qmpctl itself failed (bad usage, cannot connect, agent not responding, guest-exec disabled, program cannot be started), with the reason on stderr. Each exchange with the agent is bounded by --timeout; the program may run longer.
    """
    return dispatch.invoke(DECLARED[('agent', 'exec')], locals())


def agent_exec_status(
    *,
    pid: int = typer.Argument(..., metavar='PID', show_default=False,
                              help='The guest pid that agent exec --no-wait printed.'),
    wait: bool = typer.Option(False, '--wait', show_default=False,
                              help='Poll until the program exits (backing off like agent exec).'),
    wait_timeout: Optional[float] = typer.Option(None, '--wait-timeout', metavar='SECONDS', show_default=False,
                                                 help='With --wait (implied): give up after this long, exit 124.'),
    json_output: bool = typer.Option(False, '--json', show_default=False,
                                     help=("Instead of the agent's reply, print the decoded result as one JSON "
                                           'object: pid, exited, exitcode, signal, stdout, stderr (UTF-8 text, '
                                           'invalid bytes as U+FFFD), out-truncated, err-truncated.')),
    target_sockets: Optional[list[str]] = AGENT_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Show how a program started with agent exec --no-wait is doing (guest-exec-status).

    Prints the agent's reply as it is (out-data/err-data in base64), or with --json the decoded object agent exec --json prints. Once a reply has said the program exited, the agent forgets the pid: a second read exits 1.
    """
    return dispatch.invoke(DECLARED[('agent', 'exec-status')], locals())


def agent_time(
    *,
    sync: bool = typer.Option(False, '--sync', show_default=False, help="Set the guest's clock to the host's time."),
    target_sockets: Optional[list[str]] = AGENT_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Show the guest's clock against the host's (guest-get-time), or set it from the host's (--sync).

    Prints the guest's and the host's time (UTC), the offset in seconds (guest minus host) and its uncertainty (half the round trip). --sync sends the host's time with guest-set-time; the agent sets the guest's clock and writes its RTC with /sbin/hwclock, and refuses the call (exit 1, its words) in a guest without hwclock, or where guest-set-time is disabled. The output then adds the offset before.
    """
    return dispatch.invoke(DECLARED[('agent', 'time')], locals())


def agent_guestinfo(
    *,
    target_sockets: Optional[list[str]] = AGENT_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Show what the agent knows about the guest: OS, hostname, timezone, users, filesystems, disks, vCPUs.

    One JSON document, one section per agent command (guest-get-osinfo, -host-name, -timezone, -users, -fsinfo, -disks, -vcpus). A section whose command the agent lacks, has disabled or refuses holds {"error": {"class", "desc"}} instead; the exit code is 0 unless the agent cannot be reached or stops answering.
    """
    return dispatch.invoke(DECLARED[('agent', 'guestinfo')], locals())


def agent_cp(
    *,
    source: str = typer.Argument(..., metavar='SRC', show_default=False,
                                 help='guest:/PATH, a local PATH, or - (stdin).'),
    destination: str = typer.Argument(..., metavar='DST', show_default=False,
                                      help='guest:/PATH (or guest:/DIR/), a local PATH or DIR, or - (stdout).'),
    force: bool = typer.Option(False, '--force', show_default=False, help='Overwrite an existing destination.'),
    verify: bool = typer.Option(True, '--verify/--no-verify', show_default=True,
                                help=("Compare the guest's sha256sum of the file with the bytes copied (needs "
                                      'sha256sum and guest-exec in the guest; skipped, and said so, without them).')),
    progress: Literal['auto', 'bar', 'json', 'none'] = typer.Option('auto', '--progress', show_default=True,
                                                                    help=('Show progress on stderr: bar, json (one '
                                                                          'line per update), none; auto: a bar on a '
                                                                          'terminal for copies over 4 MiB.')),
    wait_timeout: Optional[float] = typer.Option(None, '--wait-timeout', metavar='SECONDS', show_default=False,
                                                 help=('Give up the whole copy after this long: exit 4 [default: no '
                                                       'limit].')),
    target_sockets: Optional[list[str]] = AGENT_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Copy a file into or out of the guest (guest-file-open/read/write/close).

    One side is guest:/PATH, the other a local path, or - for stdin/stdout. Binary-safe, in chunks sized for the agent (and for libvirt's 4 MiB messages with --domain); the guest file's handle is closed on every path, Ctrl-C included. Never overwrites without --force: an existing local destination is refused before anything is read, an existing guest file before anything is written (exit 2). A guest: path ending in / or a local directory gets the source's name. After a failure the error names the partial guest file. With --verify (default) the guest's sha256sum is compared with the bytes sent or received: a mismatch exits 6; a guest without sha256sum (or guest-exec) is noted in the JSON result instead. The result (bytes, seconds, sha256, verified) is printed as JSON, unless the file itself goes to stdout. --timeout bounds each exchange with the agent; --wait-timeout the whole copy. The guest's own errors (no such file, permission denied, read-only filesystem, a directory) exit 1.
    """
    return dispatch.invoke(DECLARED[('agent', 'cp')], locals())


def agent_set_password(
    *,
    user: str = typer.Argument(..., metavar='USER', show_default=False, help='The guest user whose password changes.'),
    password_file: Optional[str] = typer.Option(None, '--password-file', metavar='PATH', show_default=False,
                                                help=('Read the password from the first line of this file instead '
                                                      'of standard input.')),
    crypted: bool = typer.Option(False, '--crypted', show_default=False,
                                 help=('The password is already hashed (a crypt(3) string such as $6$...), passed '
                                       'to chpasswd -e.')),
    target_sockets: Optional[list[str]] = AGENT_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Set a guest user's password (guest-set-user-password).

    The password is the first line of standard input (prompted for without echo on a terminal) or of --password-file, never an argument, where ps would show it. It is sent base64-encoded as the agent requires and appears nowhere else: --dry-run and error messages show it masked. Linux guests run chpasswd; a refusal (no such user, chpasswd missing) exits 1.
    """
    return dispatch.invoke(DECLARED[('agent', 'set-password')], locals())


def agent_fsfreeze(
    *,
    action: str = typer.Argument(..., metavar='ACTION', show_default=False, help='status, freeze or thaw.'),
    mountpoint: Optional[list[str]] = typer.Option(None, '--mountpoint', metavar='PATH', show_default=False,
                                                   help=('With freeze: only the filesystem mounted here '
                                                         '(repeatable) [default: all].')),
    for_seconds: Optional[float] = typer.Option(None, '--for', metavar='SECONDS', show_default=False,
                                                help=('With freeze: thaw again after this long (and on any error or '
                                                      'Ctrl-C).')),
    thaw_timeout: float = typer.Option(10.0, '--thaw-timeout', metavar='SECONDS', show_default=True,
                                       help='With freeze --for: how long the thaw may take, whatever --timeout says.'),
    target_sockets: Optional[list[str]] = AGENT_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Freeze or thaw the guest's filesystems, or show whether they are frozen (guest-fsfreeze-*).

    status prints frozen or thawed. freeze syncs and freezes every local filesystem (or only those at --mountpoint) and prints how many; the guest then stays frozen, writes inside it waiting, until thaw (a warning on stderr says so). freeze --for SECONDS freezes, waits, and always thaws, also on errors and Ctrl-C, with --thaw-timeout of its own; it prints how many were frozen and thawed and for how long, for scripts that snapshot storage outside QEMU. While frozen the agent refuses agent exec and agent cp; qmpctl says why (exit 1, 125 for exec).
    """
    return dispatch.invoke(DECLARED[('agent', 'fsfreeze')], locals())


def agent_shutdown(
    *,
    mode: Literal['powerdown', 'reboot', 'halt'] = typer.Option('powerdown', '--mode', show_default=True,
                                                                help='powerdown, reboot or halt.'),
    qmp: Optional[str] = typer.Option(None, '-s', '--qmp', metavar='ADDR', show_default=False,
                                      autocompletion=complete_socket,
                                      help="The VM's QMP socket: wait until QEMU reports the guest down."),
    wait_timeout: Optional[float] = typer.Option(None, '--wait-timeout', metavar='SECONDS', show_default=False,
                                                 help=('With -s: give up waiting after this long, exit 4 [default: '
                                                       '60].')),
    target_sockets: Optional[list[str]] = AGENT_TARGET_SOCKETS,
    domain: Optional[list[str]] = DOMAIN,
    connect_uri: Optional[str] = CONNECT_URI,
    timeout: float = TIMEOUT,
    pretty: bool = PRETTY,
    return_value: bool = RETURN_VALUE,
    dry_run: bool = DRY_RUN,
    jobs: int = JOBS,
) -> int:
    """Shut the guest down through its agent (guest-shutdown).

    The agent answers only when it refuses: qmpctl waits a second for a refusal (exit 1) and otherwise prints nothing. With -s (the VM's QMP socket) it waits until QEMU reports the guest down (the SHUTDOWN event, RESET for a reboot QEMU survives, or QEMU exiting) and prints what it saw; --wait-timeout bounds that wait (exit 4). A halt stops the CPUs without QEMU noticing: no event.
    """
    return dispatch.invoke(DECLARED[('agent', 'shutdown')], locals())


CALLBACKS: dict[tuple[str, ...], Callable[..., int]] = {
    ('help',): help,
    ('status',): status,
    ('stop',): stop,
    ('cont',): cont,
    ('monitor-command',): monitor_command,
    ('events',): events,
    ('powerdown',): powerdown,
    ('reset',): reset,
    ('quit',): quit,
    ('stats',): stats,
    ('throttle',): throttle,
    ('balloon',): balloon,
    ('block',): block,
    ('jobs',): jobs,
    ('hotplug-disk',): hotplug_disk,
    ('unplug-disk',): unplug_disk,
    ('snapshot', 'save'): snapshot_save,
    ('snapshot', 'load'): snapshot_load,
    ('snapshot', 'list'): snapshot_list,
    ('snapshot', 'delete'): snapshot_delete,
    ('media', 'insert'): media_insert,
    ('media', 'eject'): media_eject,
    ('hotplug-nic',): hotplug_nic,
    ('unplug-nic',): unplug_nic,
    ('nics',): nics,
    ('vcpus',): vcpus,
    ('hotplug-memory',): hotplug_memory,
    ('unplug-memory',): unplug_memory,
    ('backup',): backup,
    ('stream',): stream,
    ('backup-verify',): backup_verify,
    ('restore',): restore,
    ('migrate',): migrate,
    ('agent', 'ping'): agent_ping,
    ('agent', 'info'): agent_info,
    ('agent', 'interfaces'): agent_interfaces,
    ('agent', 'command'): agent_command,
    ('agent', 'exec'): agent_exec,
    ('agent', 'exec-status'): agent_exec_status,
    ('agent', 'time'): agent_time,
    ('agent', 'guestinfo'): agent_guestinfo,
    ('agent', 'cp'): agent_cp,
    ('agent', 'set-password'): agent_set_password,
    ('agent', 'fsfreeze'): agent_fsfreeze,
    ('agent', 'shutdown'): agent_shutdown,
}


def epilog(command: Command) -> str:
    examples = command.example.split(";  ")
    return ("Examples: " if len(examples) > 1 else "Example: ") + ";  ".join(examples)


def build_app(argv: list[str] | None = None) -> typer.Typer:
    """The application holding every command, or only the one ``argv`` names (shell completion gets all)."""
    app = typer.Typer(name="qmpctl", help=ROOT_HELP, no_args_is_help=True, add_completion=True,
                      rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})
    app.callback()(_root)
    chosen = list(COMMANDS)
    if argv and "_QMPCTL_COMPLETE" not in os.environ:
        named = [command for command in COMMANDS if tuple(argv[:len(command.words)]) == command.words]
        in_group = [command for command in COMMANDS if len(command.words) == 2 and command.words[0] == argv[0]]
        chosen = named or in_group or chosen
    groups: dict[str, typer.Typer] = {}
    for command in chosen:
        target = app
        if len(command.words) == 2:
            group = command.words[0]
            if group not in groups:
                groups[group] = typer.Typer(help=GROUPS[group], no_args_is_help=True, rich_markup_mode=None)
                app.add_typer(groups[group], name=group)
            target = groups[group]
        settings: dict[str, Any] = {}
        if not command.interspersed:
            settings["allow_interspersed_args"] = False
        target.command(command.words[-1], epilog=epilog(command), context_settings=settings)(
            CALLBACKS[command.words])
    return app
