"""The one declaration of qmpctl's command line: every command, argument and option, as data.

Everything else is derived from :data:`COMMANDS`:

- the start-up parser (:mod:`qmpctl.cli.parse`), which runs every
  well-formed command line without importing Typer or click;
- the Typer application (:mod:`qmpctl.cli.typer_app`), the source of
  ``--help``, usage errors and shell completion for whatever the start-up
  parser does not fully understand;
- the man page (``man/generate.py`` reads the Typer application built from
  this table);
- the parser tests, which generate command lines from this table and require
  both parsers to read them alike (``tests/unit/test_cli_parsers.py``).

Why the table is written by hand and Typer is built from it, and not the
other way round: the start-up parser must know the grammar without importing
Typer (its import costs more than a whole QMP exchange), so the grammar has to
live in plain data anyway; building Typer from that data at ``--help`` time
keeps a single source instead of a source plus an extracted copy that a build
step must keep in sync. Handlers are named as ``"module:function"`` strings and
imported only when their command runs, as pip's ``commands_dict`` does, so
listing the commands imports none of them.

A handler is a plain function ``handler(common, **values) -> int``: ``common``
is :class:`qmpctl.cli.common.Common` (the shared options), and ``values`` holds
one keyword per declared argument and option, already converted.

This module is imported on every run: keep it to NamedTuples and literals.
"""

from __future__ import annotations

from qmpctl.timing import DEFAULT_TIMEOUT
from qmpctl.records import TYPE_CHECKING, NamedTuple
from qmpctl.wire.targets import AGENT, MONITOR

if TYPE_CHECKING:
    from typing import Any


class Option(NamedTuple):
    """One option of a command.

    ``type`` is one of: ``flag`` (``--x``, a bool that defaults to False),
    ``switch`` (``--x``/``--no-x``: ``flags`` turn it on, ``off_flags`` off),
    ``text``, ``int``, ``float``, ``choice`` (one of ``choices``, kept as text),
    ``list`` (repeatable text; the handler gets a list, empty when absent).
    """

    name: str
    """The keyword the handler receives."""
    flags: tuple[str, ...]
    type: str
    default: Any = None
    help: str = ""
    metavar: str | None = None
    envvar: str | None = None
    choices: tuple[str, ...] = ()
    off_flags: tuple[str, ...] = ()
    show_default: bool = True
    complete: str | None = None
    """``socket``: shell completion offers sockets and the folders leading to them."""


class Argument(NamedTuple):
    """One positional argument; ``variadic`` takes one or more words (all that remain)."""

    name: str
    metavar: str
    help: str
    type: str = "text"
    """``text`` or ``int``."""
    variadic: bool = False
    required: bool = True


class Command(NamedTuple):
    words: tuple[str, ...]
    handler: str
    """``module:function``, imported when the command runs."""
    summary: str
    description: str = ""
    example: str = ""
    """One command line, or several separated by ``;  `` (two spaces): the tests run each."""
    kind: str = MONITOR
    """Which shared options the command takes: MONITOR (``-s``) or AGENT (``-a``)."""
    arguments: tuple[Argument, ...] = ()
    options: tuple[Option, ...] = ()
    interspersed: bool = True
    """False: the first positional word ends the options (``agent exec -- PROGRAM --its-flag``)."""
    usage_exit: int = 2
    """The exit code of a usage mistake (125 for ``agent exec``, whose program may exit 2 itself)."""


GROUPS: dict[str, str] = {
    "agent": "Guest-agent (qemu-ga) commands.",
    "snapshot": "Internal snapshots of the VM state and its qcow2 disks.",
    "media": "CD-ROM and floppy media.",
}
"""Command groups (first word of a two-word command) and their help text."""

LOCAL = "local"
"""The kind of a command that talks to no VM (``help``): it takes none of the shared options."""


class Manual(NamedTuple):
    """One manual page: its name, man section, one-line summary, and the commands it documents.

    ``man/generate.py`` writes ``man/NAME.SECTION`` from the commands' declarations
    below and the page's hand-written text, ``man/pages/NAME.md``; ``qmpctl help
    TOPIC`` shows the page that documents the command TOPIC names.
    """

    name: str
    section: str
    summary: str
    commands: tuple[str, ...]
    """The commands as typed (``"agent exec"``), in the order the page describes them."""


MANUALS: tuple[Manual, ...] = (
    Manual("qmpctl", "1", "one-shot QMP and qemu-guest-agent commands with exit codes scripts can trust",
           ("help",)),
    Manual("qmpctl-lifecycle", "1", "a VM's run state, power button, reset, quit, events and raw QMP",
           ("status", "stop", "cont", "monitor-command", "events", "powerdown", "reset", "quit")),
    Manual("qmpctl-performance", "1", "a VM's I/O counters, disk I/O limits and memory balloon",
           ("stats", "throttle", "balloon")),
    Manual("qmpctl-block", "1", "a VM's disks and jobs: list, hot-plug, unplug",
           ("block", "hotplug-disk", "unplug-disk", "jobs")),
    Manual("qmpctl-devices", "1", "state and devices for CI: snapshots, media, NICs, vCPUs and memory",
           ("snapshot save", "snapshot load", "snapshot list", "snapshot delete", "media insert", "media eject",
            "hotplug-nic", "unplug-nic", "nics", "vcpus", "hotplug-memory", "unplug-memory")),
    Manual("qmpctl-backup", "1", "backups that never overwrite, backup chains, verification and restore",
           ("backup", "backup-verify", "restore", "stream")),
    Manual("qmpctl-migrate", "1", "live migration to another QEMU, and a VM's state saved to a file",
           ("migrate",)),
    Manual("qmpctl-agent", "1", "the guest agent: ping, raw commands, programs, files, passwords, freeze, shutdown",
           ("agent ping", "agent info", "agent interfaces", "agent command", "agent exec", "agent exec-status",
            "agent cp", "agent set-password", "agent fsfreeze", "agent shutdown", "agent time",
            "agent guestinfo")),
    Manual("qmpctl-remote", "7", "VMs managed by libvirt, VMs on other hosts over SSH, and fleets of VMs", ()),
)
"""Every manual page; each declared command is on exactly one (tests/project/test_manpage.py)."""

DEFAULT_JOBS = 16

SYNC_TIME_OPTION = Option(
    "sync_time", ("--sync-time",), "flag", False,
    "Once the VM runs again, set the guest's clock from the host's (guest-set-time through the agent: -a, or "
    "the --domain's). No agent given: exit 2 before anything is done. An agent that does not answer is a "
    "warning in the result (\"time-synced\": false), exit 0: the VM state was restored.")
SYNC_AGENT_OPTION = Option(
    "agent", ("-a", "--agent"), "text", None,
    "The guest agent's channel socket, for --sync-time.", metavar="ADDR", show_default=False, complete="socket")


def shared_options(kind: str) -> tuple[Option, ...]:
    """The options every monitor command (``-s``) or agent command (``-a``) takes; none for LOCAL ones."""
    if kind == LOCAL:
        return ()
    if kind == AGENT:
        target = Option(
            "target_sockets", ("-a", "--agent"), "list", None,
            "Guest-agent channel socket: PATH, unix:PATH, tcp:HOST:PORT, or ssh://[USER@]HOST[:PORT]/PATH on "
            "another machine. Repeat it, or use a glob (expanded where the sockets are), for many VMs.",
            metavar="ADDR", envvar="QMPCTL_AGENT", show_default=False, complete="socket")
    else:
        target = Option(
            "target_sockets", ("-s", "--qmp"), "list", None,
            "QMP socket, as given to QEMU's -qmp: PATH, unix:PATH, tcp:HOST:PORT, HOST:PORT, or "
            "ssh://[USER@]HOST[:PORT]/PATH on another machine (through ssh; QMPCTL_SSH replaces the ssh "
            "command). Repeat it, or use a glob (expanded where the sockets are), for many VMs.",
            metavar="ADDR", envvar="QMPCTL_QMP", show_default=False, complete="socket")
    return (
        target,
        Option("domain", ("-d", "--domain"), "list", None,
               "libvirt domain name, UUID or id (needs the libvirt extra), or URI/DOMAIN for a domain on its own "
               "URI (qemu+ssh://hv1/system/vm1). Repeatable.", metavar="DOMAIN",
               show_default=False),
        Option("connect_uri", ("-c", "--connect"), "text", None,
               "libvirt connection URI for --domain, e.g. qemu+ssh://root@hv1/system [default: qemu:///system].",
               metavar="URI",
               envvar="LIBVIRT_DEFAULT_URI", show_default=False),
        Option("timeout", ("--timeout",), "float", DEFAULT_TIMEOUT,
               "One deadline for connect (SSH login included), greeting, negotiation and reply.",
               metavar="SECONDS",
               envvar="QMPCTL_TIMEOUT"),
        Option("pretty", ("--pretty",), "flag", False, "Indent the JSON by 2, like virsh --pretty."),
        Option("return_value", ("--return-value",), "flag", False, "Print only the reply's return value."),
        Option("dry_run", ("--dry-run",), "flag", False, "Print the validated request(s) and connect to nothing."),
        Option("jobs", ("--jobs", "-j"), "int", DEFAULT_JOBS, "With many targets: how many to talk to at once.",
               metavar="N"),
    )


SHARED_NAMES = tuple(option.name for option in shared_options(MONITOR))

WAIT_TIMEOUT_EXEC_HELP = ("Give up waiting after this long: exit 124, the program keeps running "
                          "[default: no limit].")
EXEC_JSON_HELP = ("Print the decoded result as one JSON object: pid, exited, exitcode, signal, stdout, stderr "
                  "(UTF-8 text, invalid bytes as U+FFFD), out-truncated, err-truncated.")
PROGRESS_HELP = ("While waiting, show progress on stderr: bar, json (one line per update), none; auto: a bar "
                 "when stderr is a terminal.")
PROGRESS_CHOICES = ("auto", "bar", "json", "none")
REQUEST_WORDS_HELP = ("A JSON request object, or a command name followed by its arguments as JSON members "
                      "(like virsh); '-' reads the request from standard input, @FILE from FILE.")


COMMANDS: tuple[Command, ...] = (
    # --- the manual ------------------------------------------------------------------------
    Command(
        ("help",), "qmpctl.cli.manual:show",
        "Show the manual page of a command, or the index of every page.",
        "On a terminal with man installed, man shows the page (its pager, its width). Otherwise the page is "
        "rendered as plain text on stdout: by mandoc, else groff, else a rough rendering of the page's source. "
        "The page is the source tree's man/ when qmpctl runs from a checkout, else the installed one "
        "(share/man under the installation prefix). TOPIC is a command (backup, agent exec), a command group "
        "(agent) or a page's name (remote, qmpctl-remote); none is the index, qmpctl(1). Exit 2 for an "
        "unknown topic, naming the topics there are.",
        example="qmpctl help backup;  qmpctl help agent exec",
        kind=LOCAL,
        arguments=(Argument("topic", "TOPIC", "A command, a command group or a manual page's name.",
                            variadic=True, required=False),),
    ),
    # --- VM-wide ---------------------------------------------------------------------------
    Command(("status",), "qmpctl.cli.vm:status", "Show the VM's run state (query-status).",
            example="qmpctl status -s /tmp/vm.sock --return-value"),
    Command(("stop",), "qmpctl.cli.vm:stop", "Pause the VM's CPUs (stop).", example="qmpctl stop -s /tmp/vm.sock"),
    Command(("cont",), "qmpctl.cli.vm:cont", "Resume a paused VM (cont).", example="qmpctl cont -s /tmp/vm.sock"),
    Command(
        ("monitor-command",), "qmpctl.cli.vm:monitor_command",
        "Send any QMP command, like virsh qemu-monitor-command.",
        "The words are joined with spaces. Text that starts with { must be a request object: "
        '{"execute": NAME, "arguments": {...}}. Otherwise the first word is the command name and the '
        "rest its arguments as JSON members. A request too long for the command line is read from "
        "standard input (-) or a file (@FILE), and validated the same way.",
        example="qmpctl monitor-command -s /tmp/vm.sock '{\"execute\":\"query-block\"}' --pretty;  "
                "qmpctl monitor-command -s /tmp/vm.sock --hmp 'info block'",
        arguments=(Argument("words", "CMD...", REQUEST_WORDS_HELP, variadic=True),),
        options=(Option("hmp", ("--hmp",), "flag", False,
                        "Send the text as an HMP command line and print its text."),),
    ),
    # --- lifecycle and events ----------------------------------------------------------------
    Command(
        ("events",), "qmpctl.cli.lifecycle:events",
        "Print the VM's QMP events as JSON lines as they arrive, or wait for one.",
        "Each line is {\"event\", \"data\", \"timestamp\"} as QEMU sent it (with \"target\" first when "
        "there are several VMs). Only events from the moment qmpctl connected are seen: QEMU keeps none. "
        "Without --wait or --count the stream runs until Ctrl-C, which ends it with exit 0. With --wait or "
        "--count, --timeout is the time to wait: exit 4 with \"no NAME within S s\" when it runs out. A --wait "
        "name that is not an event of this VM (its query-qmp-schema) is exit 2 at once, naming close matches. "
        "Through --domain the events come from libvirt's QEMU monitor event API.",
        example="qmpctl events -s /tmp/vm.sock --wait SHUTDOWN --timeout 120 --dry-run",
        options=(
            Option("count", ("--count",), "int", None, "End after N events (that pass --wait/--match).",
                   metavar="N", show_default=False),
            Option("wait", ("--wait",), "list", None,
                   "End at the first event with one of these names (comma-separated, repeatable), exit 0.",
                   metavar="NAME[,NAME...]", show_default=False),
            Option("match", ("--match",), "list", None,
                   "Only events whose data has KEY equal to VALUE; dotted KEY for nested members, JSON text "
                   "for non-strings (guest=true). Repeatable: all must match.", metavar="KEY=VALUE",
                   show_default=False),
        ),
    ),
    Command(
        ("powerdown",), "qmpctl.cli.lifecycle:powerdown",
        "Press the ACPI power button (system_powerdown) and wait until the guest has shut down.",
        "Waits for the SHUTDOWN event on the same connection, so it cannot be missed. Exit 4 when the guest "
        "ignores the button for --wait-timeout. --force-after SECONDS waits that long instead and then makes "
        "QEMU quit, exit 0 with \"forced\": true (not through --domain: use virsh destroy).",
        example="qmpctl powerdown -s /tmp/vm.sock --no-wait",
        options=(
            Option("wait", ("--wait",), "switch", True,
                   "Wait for SHUTDOWN (default), or return once the button is pressed.", off_flags=("--no-wait",)),
            Option("wait_timeout", ("--wait-timeout",), "float", None,
                   "How long the guest may take to shut down [default: 60].", metavar="SECONDS",
                   show_default=False),
            Option("force_after", ("--force-after",), "float", None,
                   "Make QEMU quit when the guest has not shut down after this long.", metavar="SECONDS",
                   show_default=False),
        ),
    ),
    Command(("reset",), "qmpctl.cli.lifecycle:reset",
            "Reset the machine (system_reset) and wait for QEMU's RESET event.",
            "The guest reboots without shutting down. A QEMU started with -no-reboot shuts down instead; "
            "the output then carries a note.",
            example="qmpctl reset -s /tmp/vm.sock"),
    Command(("quit",), "qmpctl.cli.lifecycle:quit",
            "Make QEMU exit at once (quit), like pulling the plug.",
            "The monitor closing after the reply is the success (exit 0). Refused with --domain: libvirt "
            "must know the VM stops, use virsh destroy.",
            example="qmpctl quit -s /tmp/vm.sock --dry-run"),
    # --- performance -------------------------------------------------------------------------
    Command(
        ("stats",), "qmpctl.cli.performance:stats",
        "Show how the VM performs: disk I/O counters, vCPU threads, balloon size, hypervisor counters.",
        "One JSON document per VM from query-blockstats, query-cpus-fast, query-balloon and query-stats. "
        "What the VM cannot give (no balloon, a QEMU before 7.1, TCG without counters) is left out with a "
        "note in \"notes\". --watch prints one line per sample with per-second rates of each disk since the "
        "sample before; Ctrl-C ends it with exit 0. --timeout applies to each sample.",
        example="qmpctl stats -s /tmp/vm.sock --watch 1 --count 2",
        options=(
            Option("watch", ("--watch",), "float", None, "Sample every SECONDS, one JSON line each.",
                   metavar="SECONDS", show_default=False),
            Option("count", ("--count",), "int", None, "With --watch: stop after N samples [default: Ctrl-C].",
                   metavar="N", show_default=False),
        ),
    ),
    Command(
        ("throttle",), "qmpctl.cli.performance:throttle",
        "Show or set a disk's I/O limits (block_set_io_throttle), changing only those named.",
        "Without limits it shows the ones in force. With limits it reads the current ones first and sends "
        "them back with only the named ones changed (QEMU resets whatever it is not given); a total limit "
        "(--bps) replaces the read/write limits of its kind and the other way round. Prints the limits in "
        "force afterwards. Exit 2 before anything is sent for contradictory values. Rates in bytes take "
        "suffixes: 512K, 10M, 1G.",
        example="qmpctl throttle -s /tmp/vm.sock vd0 --bps-rd 10M --iops 500",
        arguments=(Argument("device", "DEVICE", "The disk: its device id (vd0), qdev path or drive name."),),
        options=(
            *(Option(name, ("--" + name.replace("_", "-"),), "text", None, f"{what} [default: unchanged].",
                     metavar="BYTES_PER_SEC", show_default=False)
              for name, what in (("bps", "Total bytes per second"), ("bps_rd", "Bytes read per second"),
                                 ("bps_wr", "Bytes written per second"))),
            *(Option(name, ("--" + name.replace("_", "-"),), "int", None, f"{what} [default: unchanged].",
                     metavar="N", show_default=False)
              for name, what in (("iops", "Total operations per second"), ("iops_rd", "Reads per second"),
                                 ("iops_wr", "Writes per second"))),
            *(Option(f"{name}_max", ("--" + name.replace("_", "-") + "-max",), "text" if name.startswith("bps")
                     else "int", None, f"Burst rate above --{name.replace('_', '-')}.",
                     metavar="BYTES_PER_SEC" if name.startswith("bps") else "N", show_default=False)
              for name in ("bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr")),
            *(Option(f"{name}_max_length", ("--" + name.replace("_", "-") + "-max-length",), "int", None,
                     f"How many seconds the --{name.replace('_', '-')}-max burst may last.", metavar="SECONDS",
                     show_default=False)
              for name in ("bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr")),
            Option("iops_size", ("--iops-size",), "text", None,
                   "Count an operation larger than this as several.", metavar="BYTES", show_default=False),
            Option("group", ("--group",), "text", None, "Share the limits with the other disks of this group.",
                   metavar="NAME", show_default=False),
            Option("off", ("--off",), "flag", False, "Clear every limit of the disk."),
        ),
    ),
    Command(
        ("balloon",), "qmpctl.cli.performance:balloon",
        "Show the guest's memory size through the balloon, or ask the guest for SIZE.",
        "Without SIZE prints query-balloon's reply (actual, in bytes). With SIZE (512M, 1G) asks the guest "
        "and returns; --wait-timeout waits until the guest has it, else exit 4 saying how far it got. A VM "
        "without a balloon device is exit 1 naming the device to add (-device virtio-balloon-pci).",
        example="qmpctl balloon -s /tmp/vm.sock 512M --dry-run",
        arguments=(Argument("size", "SIZE", "The memory the guest should have, in bytes or with a suffix.",
                            required=False),),
        options=(Option("wait_timeout", ("--wait-timeout",), "float", None,
                        "Wait up to this long for the guest to reach SIZE.", metavar="SECONDS",
                        show_default=False),),
    ),
    # --- block devices ---------------------------------------------------------------------
    Command(
        ("block",), "qmpctl.cli.block:block", "Show the VM's block devices (query-block).",
        example="qmpctl block -s /tmp/vm.sock --pretty",
        options=(Option("nodes", ("--nodes",), "flag", False,
                        "List every named block node (query-named-block-nodes), including nodes no device "
                        "uses yet."),),
    ),
    Command(
        ("jobs",), "qmpctl.cli.block:jobs", "Show the VM's jobs (query-jobs): id, type, status, progress, error.",
        "A job qmpctl started (backup) stays listed once it has ended, with status \"concluded\" and an "
        "\"error\" member when it failed, until it is dismissed: that is how a script checks a backup "
        "--no-wait later.",
        example="qmpctl jobs -s /tmp/vm.sock --return-value",
        options=(
            Option("dismiss", ("--dismiss",), "text", None,
                   "Instead, dismiss a concluded job (job-dismiss) and delete the target nodes a backup --no-wait "
                   "added for it. Exit 6 when the job had failed (its error on stderr); the incomplete target "
                   "file that backup created is removed.", metavar="JOB_ID", show_default=False),
            Option("cancel", ("--cancel",), "text", None,
                   "Instead, cancel a job (job-cancel), wait until it has ended, dismiss it and delete what a "
                   "backup --no-wait added for it: for a job a killed qmpctl left running.",
                   metavar="JOB_ID", show_default=False),
        ),
    ),
    Command(
        ("hotplug-disk",), "qmpctl.cli.block:hotplug_disk",
        "Attach an image as a new disk (blockdev-add + device_add), all or nothing.",
        "Prints the device id and node names. When a step fails, everything this call added is removed "
        "again and the exit code says why: 2 for what qmpctl can tell before sending (no such file, not a "
        "qcow2, an id in use), 1 when QEMU refused.",
        example="qmpctl hotplug-disk -s /tmp/vm.sock /var/lib/vm/data.qcow2 --id data0 --return-value",
        arguments=(Argument("file", "FILE", "The image to attach (a path on the VM's host)."),),
        options=(
            Option("bus", ("--bus",), "choice", "virtio",
                   "virtio: a virtio-blk-pci disk; scsi: a scsi-hd on a virtio-scsi-pci controller (added when "
                   "the VM has none).", choices=("virtio", "scsi")),
            Option("device_id", ("--id",), "text", None,
                   "The device id; its nodes are NAME-format and NAME-file [default: the first free diskN].",
                   metavar="NAME", show_default=False),
            Option("image_format", ("--format",), "choice", None,
                   "The image format [default: read from its header].", choices=("qcow2", "raw"),
                   show_default=False),
            Option("readonly", ("--readonly",), "flag", False, "Attach the image read-only."),
        ),
    ),
    Command(
        ("unplug-disk",), "qmpctl.cli.block:unplug_disk",
        "Detach a disk: device_del, wait for the guest to release it, then blockdev-del its nodes.",
        "A PCI disk (virtio) needs the guest's cooperation; a guest that does not release it in time ends "
        "in exit 4 with nothing deleted (the request stays pending in QEMU). A SCSI disk is released at once.",
        example="qmpctl unplug-disk -s /tmp/vm.sock disk1 --wait-timeout 60",
        arguments=(Argument("device_id", "ID", "The disk's device id (as hotplug-disk printed it)."),),
        options=(Option("wait_timeout", ("--wait-timeout",), "float", 30.0,
                        "How long the guest may take to release the device.", metavar="SECONDS"),),
    ),
    # --- snapshots ---------------------------------------------------------------------------
    Command(
        ("snapshot", "save"), "qmpctl.cli.snapshot:snapshot_save",
        "Save the VM state and every writable qcow2 disk as internal snapshot NAME (snapshot-save).",
        "The VM state goes on the first writable qcow2 disk (or --vmstate DEVICE). Read-only media are left out "
        "and listed in the result (\"read-only\"). A writable disk that cannot hold snapshots (raw) is exit 2 "
        "before anything starts, naming it, unless --exclude leaves it out (then listed in \"excluded\"). An "
        "existing NAME is exit 2; --force replaces it, saving the new state under a temporary name first, so a "
        "complete snapshot exists at every moment. A failed save (6), one that outlives --wait-timeout (4) or "
        "is interrupted (130) deletes its tag from every disk again. The VM pauses while its state is written.",
        example="qmpctl snapshot save -s /tmp/vm.sock before-upgrade --force",
        arguments=(Argument("name", "NAME", "The snapshot's name (tag); not only digits."),),
        options=(
            Option("vmstate", ("--vmstate",), "text", None,
                   "The disk that holds the VM state [default: the first writable qcow2 disk].",
                   metavar="DEVICE", show_default=False),
            Option("exclude", ("--exclude",), "list", None,
                   "Leave this disk out (repeatable): it is neither saved nor, by load, restored.",
                   metavar="DEVICE", show_default=False),
            Option("force", ("--force",), "flag", False, "Replace an existing snapshot NAME."),
            Option("wait_timeout", ("--wait-timeout",), "float", None,
                   "Give up after this long, exit 4, leaving no part of the snapshot [default: one hour].",
                   metavar="SECONDS", show_default=False),
        ),
    ),
    Command(
        ("snapshot", "load"), "qmpctl.cli.snapshot:snapshot_load",
        "Go back to internal snapshot NAME: the VM state and every disk that holds it (snapshot-load).",
        "Every writable qcow2 disk must hold NAME (--exclude leaves one out): otherwise exit 2 before the VM is "
        "touched, naming the disks that lack it, because a failed snapshot-load leaves a running VM stopped in "
        "restore-vm; the same for a disk with dirty bitmaps (a backup chain's), onto which QEMU loads no "
        "snapshot. A running VM runs on from the snapshot, a paused one stays paused. Exit 6 when QEMU fails "
        "the load; the message then says the state the VM is left in.",
        example="qmpctl snapshot load -s /tmp/vm.sock before-upgrade",
        arguments=(Argument("name", "NAME", "The snapshot to go back to."),),
        options=(
            Option("exclude", ("--exclude",), "list", None,
                   "Leave this disk as it is (repeatable).", metavar="DEVICE", show_default=False),
            Option("wait_timeout", ("--wait-timeout",), "float", None,
                   "Give up waiting after this long, exit 4 [default: one hour].", metavar="SECONDS",
                   show_default=False),
            SYNC_TIME_OPTION,
            SYNC_AGENT_OPTION,
        ),
    ),
    Command(
        ("snapshot", "list"), "qmpctl.cli.snapshot:snapshot_list",
        "List the VM's internal snapshots: the disks holding each, date, VM state size, VM clock.",
        "One JSON object per snapshot name, oldest first: \"disks\" that hold it, \"date\" (UTC), "
        "\"vm-state-size\" in bytes (0: a disk-only snapshot) with the disk that holds it (\"vmstate\"), and "
        "\"vm-clock\", the guest's running time when it was taken.",
        example="qmpctl snapshot list -s /tmp/vm.sock --pretty",
    ),
    Command(
        ("snapshot", "delete"), "qmpctl.cli.snapshot:snapshot_delete",
        "Delete internal snapshot NAME from every writable disk that holds it (snapshot-delete).",
        "Exit 2 when no disk holds NAME. A read-only disk keeps its copy (listed in \"kept-on-read-only\").",
        example="qmpctl snapshot delete -s /tmp/vm.sock before-upgrade",
        arguments=(Argument("name", "NAME", "The snapshot to delete."),),
        options=(
            Option("wait_timeout", ("--wait-timeout",), "float", None,
                   "Give up waiting after this long, exit 4 [default: one hour].", metavar="SECONDS",
                   show_default=False),
        ),
    ),
    # --- removable media ---------------------------------------------------------------------
    Command(
        ("media", "insert"), "qmpctl.cli.devices:media_insert",
        "Put an image into a CD-ROM or floppy drive (blockdev-change-medium), always naming its format.",
        "FILE is checked (it exists and can be read; for an ssh:// VM on its host) before anything is sent. "
        "Its format is --format, or read "
        "from its first bytes: QEMU is never left to probe it, since a qcow2 header can name a backing file "
        "QEMU would then open (such an image needs --format qcow2). A medium already in the drive is replaced "
        "(\"replaced\" names it). Exit 2: no such drive, a fixed disk, FILE missing or unreadable; exit 1: "
        "QEMU refused, for instance a tray the guest holds locked.",
        example="qmpctl media insert -s /tmp/vm.sock cdrom0 /var/lib/images/install.iso --format raw --dry-run",
        arguments=(
            Argument("device", "DEVICE", "The drive: its device id (cdrom0) or drive name."),
            Argument("file", "FILE", "The image to insert (a path on the VM's host)."),
        ),
        options=(
            Option("image_format", ("--format",), "choice", None,
                   "The image format [default: read from its header].", choices=("raw", "qcow2"),
                   show_default=False),
            Option("read_only", ("--read-only",), "flag", False,
                   "Insert it read-only (a CD-ROM always is)."),
        ),
    ),
    Command(
        ("media", "eject"), "qmpctl.cli.devices:media_eject",
        "Take the medium out of a CD-ROM or floppy drive (eject).",
        "A guest that holds the tray locked makes QEMU refuse: exit 1 with QEMU's words (QEMU also asks the "
        "guest to open the tray). --force ejects anyway, behind the guest's back. The result names the "
        "medium that was ejected (null: the drive was empty).",
        example="qmpctl media eject -s /tmp/vm.sock cdrom0 --dry-run",
        arguments=(Argument("device", "DEVICE", "The drive: its device id (cdrom0) or drive name."),),
        options=(Option("force", ("--force",), "flag", False, "Eject even when the guest has locked the tray."),),
    ),
    # --- network cards -----------------------------------------------------------------------
    Command(
        ("hotplug-nic",), "qmpctl.cli.devices:hotplug_nic",
        "Add a network card (netdev_add + device_add), all or nothing.",
        "The backend is ID-net: user networking (QEMU's own NAT, no root needed), an existing tap interface "
        "(tap:IFNAME, no scripts run) or a bridge (bridge:BRIDGE, through QEMU's qemu-bridge-helper). When "
        "device_add is refused, the backend is deleted again: exit 1 with QEMU's words, nothing left. Exit 2: "
        "an id in use, a bad MAC or --net, nothing sent. Prints the id, model, MAC (QEMU's pick without "
        "--mac) and backend.",
        example="qmpctl hotplug-nic -s /tmp/vm.sock --id net1 --mac 52:54:00:12:34:57 --dry-run",
        options=(
            Option("device_id", ("--id",), "text", None, "The NIC's device id; its backend is ID-net.",
                   metavar="ID", show_default=False),
            Option("model", ("--model",), "choice", "virtio-net-pci", "The device model.",
                   choices=("virtio-net-pci", "e1000", "e1000e", "rtl8139")),
            Option("mac", ("--mac",), "text", None, "The MAC address [default: QEMU picks one].", metavar="MAC",
                   show_default=False),
            Option("net", ("--net",), "text", "user", "The backend: user, tap:IFNAME or bridge:BRIDGE.",
                   metavar="NET"),
            Option("bus", ("--bus",), "text", None, "The PCI bus to plug into [default: QEMU's choice].",
                   metavar="BUS", show_default=False),
        ),
    ),
    Command(
        ("unplug-nic",), "qmpctl.cli.devices:unplug_nic",
        "Remove a network card: device_del, wait for the guest to release it, then netdev_del its backend.",
        "A PCI NIC needs the guest's cooperation: a guest that does not release it within --wait-timeout is "
        "exit 4 with nothing deleted (the request stays pending in QEMU). Ctrl-C or SIGTERM after device_del "
        "gives the guest a few seconds more and deletes the backend if it let go; otherwise the message says "
        "what stays, and unplug-nic ID deletes a backend left behind by a device already gone.",
        example="qmpctl unplug-nic -s /tmp/vm.sock net1 --wait-timeout 60 --dry-run",
        arguments=(Argument("device_id", "ID", "The NIC's device id (as hotplug-nic or nics shows it)."),),
        options=(Option("wait_timeout", ("--wait-timeout",), "float", 30.0,
                        "How long the guest may take to release the device.", metavar="SECONDS"),),
    ),
    Command(
        ("nics",), "qmpctl.cli.devices:list_nics",
        "List the VM's network cards (id, model, MAC, backend), or set one's link up or down (set_link).",
        "Each NIC is {\"id\", \"model\", \"mac\", \"netdev\", \"path\"}; a NIC added without an id has "
        "\"id\": null. QEMU has no command that reports a link's state, so none is shown. --link ID up|down "
        "sets it as the guest sees it (carrier lost or back).",
        example="qmpctl nics -s /tmp/vm.sock --pretty",
        arguments=(Argument("state", "up|down", "With --link: the link state to set.", required=False),),
        options=(Option("link", ("--link",), "text", None, "Set this NIC's link (its id) to STATE.", metavar="ID",
                        show_default=False),),
    ),
    # --- vCPUs and memory ----------------------------------------------------------------------
    Command(
        ("vcpus",), "qmpctl.cli.devices:vcpus",
        "Show the VM's vCPU slots, or plug or unplug vCPUs until it has N (device_add, device_del).",
        "Without N: {\"vcpus\", \"max\", \"slots\"}, each slot with its CPU type, placement properties and "
        "whether it is plugged (query-hotpluggable-cpus). With N above the current count: the free slots are "
        "filled in order, one device_add each with every property QEMU names for the slot; a failure asks the "
        "vCPUs this call added to go again (exit 1). N above the VM's maxcpus is exit 2 naming the maximum. "
        "With N below the current count: the highest hot-plugged vCPUs are unplugged one at a time "
        "(device_del), each awaited until the guest has released it (DEVICE_DELETED); a guest that does not "
        "within --wait-timeout is exit 4, naming the vCPU whose unplug request stays pending. vCPUs the VM "
        "started with (-smp) cannot be unplugged: exit 2 naming them, before anything is sent.",
        example="qmpctl vcpus -s /tmp/vm.sock --pretty",
        arguments=(Argument("count", "N", "The number of vCPUs the VM should have.", type="int", required=False),),
        options=(Option("wait_timeout", ("--wait-timeout",), "float", None,
                        "When unplugging: how long the guest may take to release the vCPUs, all together "
                        "[default: 30].", metavar="SECONDS", show_default=False),),
    ),
    Command(
        ("hotplug-memory",), "qmpctl.cli.devices:hotplug_memory",
        "Add a DIMM of SIZE (object-add memory-backend-ram + device_add pc-dimm), all or nothing.",
        "The VM must have been started with memory slots (-m SIZE,slots=N,maxmem=M): without, or with every "
        "slot used, or when SIZE would go past maxmem, exit 2 before anything is sent. SIZE is a multiple of "
        "2 MiB. The backend is ID-mem; it is deleted again when the DIMM is refused (exit 1).",
        example="qmpctl hotplug-memory -s /tmp/vm.sock 1G --id dimm1 --dry-run",
        arguments=(Argument("size", "SIZE", "The DIMM's size: 512M, 1G (a multiple of 2 MiB)."),),
        options=(Option("device_id", ("--id",), "text", None, "The DIMM's device id; its backend is ID-mem.",
                        metavar="ID", show_default=False),),
    ),
    Command(
        ("unplug-memory",), "qmpctl.cli.devices:unplug_memory",
        "Remove a DIMM: device_del, wait for the guest to release it, then object-del its backend.",
        "The guest must offline the memory first: one that does not release the DIMM within --wait-timeout is "
        "exit 4 with nothing deleted (the request stays pending). Ctrl-C or SIGTERM after device_del gives it "
        "a few seconds more and deletes the backend if it let go, else says what stays; unplug-memory ID of a "
        "DIMM already gone deletes the backend it left.",
        example="qmpctl unplug-memory -s /tmp/vm.sock dimm1 --wait-timeout 60 --dry-run",
        arguments=(Argument("device_id", "ID", "The DIMM's device id."),),
        options=(Option("wait_timeout", ("--wait-timeout",), "float", 30.0,
                        "How long the guest may take to release the DIMM.", metavar="SECONDS"),),
    ),
    Command(
        ("backup",), "qmpctl.cli.block:backup",
        "Back a disk up to a new image file, or extend its backup chain (--into), and wait until the copy is "
        "complete.",
        "DEVICE TARGET: one full copy. Exit 0 only when the job finished without error. Exit 2: TARGET exists "
        "(untouched; --force overwrites) or cannot be written. Exit 6: the job failed (the reason follows). "
        "Exit 4 (--wait-timeout) and 130 (Ctrl-C, SIGTERM): the job was cancelled first. An incomplete TARGET "
        "qmpctl created is removed. Uses drive-backup, or the blockdev flow where QEMU refuses it.\n\n"
        "DEVICE... --into DIR: the first run makes a full backup and starts a chain in DIR/<chain>/ with a dirty "
        "bitmap on the disk; every later run adds an incremental image holding only what was written since, "
        "and a new bitmap (the one before is removed once the image is recorded). When the bitmap cannot be "
        "trusted (QEMU killed, a raw disk restarted, removed by hand, the disk put back from an older copy) the "
        "run starts a new chain with a full backup and says why (\"reason\"). Several DEVICEs are backed up "
        "from one instant, all or none. A failed, timed-out or interrupted run leaves the chain as it was and the "
        "bitmap keeps every change; what a killed qmpctl left (job, nodes, image, bitmap) is cleaned up by the "
        "next run. Exit 4 \"busy\": another qmpctl is backing up the same disk. For an ssh:// VM, DIR "
        "is on its host, and the lock, images and manifest are handled there through the SSH connection.\n\n"
        "--into DIR with no DEVICE: the whole VM, every disk with a medium, a guest device and data the guest "
        "can write (UEFI variables on pflash too); read-only media, empty drives and a TPM are listed under "
        "\"skipped\" with the reason. --exclude leaves a disk out. Several VMs (-s GLOB, several -s or -d): "
        "each VM's chains go in DIR/<vm>/ (its -name, libvirt's domain name, else its socket's file name), "
        "one JSON line per VM, -j of them at once [default for backup: min(4, CPUs)]; a VM that fails leaves "
        "its chains as they were and the others go on; the exit code is the highest.",
        example="qmpctl backup -s /tmp/vm.sock vd0 /backup/vd0-$(date +%F).qcow2 --progress json;  "
                "qmpctl backup -s /tmp/vm.sock vd0 --into /backup/vm1 --keep-chains 4;  "
                "qmpctl backup -s /tmp/vm.sock --into /backup/whole",
        arguments=(
            Argument("words", "DEVICE...",
                     "The disk: its device id (vd0), drive name or node name; then TARGET, the image file to "
                     "create, a path on the VM's host (checked there over ssh://); it must not exist. With "
                     "--into: the disks to back up and no TARGET [default: every disk of the VM], each by a name "
                     "that stays (device id, QOM path, drive name, a node name you chose; not QEMU's #block123).",
                     variadic=True, required=False),
        ),
        options=(
            Option("into", ("--into",), "text", None,
                   "Chain mode: extend each DEVICE's backup chain in DIR (created if only its last level is "
                   "missing). DIR is where QEMU opens the images: on the VM's host for an ssh:// VM (an absolute "
                   "path there, worked on over the same SSH connection).", metavar="DIR", show_default=False),
            Option("full", ("--full",), "flag", False, "With --into: start a new chain with a full backup."),
            Option("exclude", ("--exclude",), "list", None,
                   "With --into: leave this disk out (repeatable): its device id, drive name, node name or QOM "
                   "path.", metavar="NAME", show_default=False),
            Option("metrics", ("--metrics",), "text", None,
                   "With --into: update FILE, a Prometheus textfile (node_exporter's textfile collector), with "
                   "each VM's and disk's last success, level, bytes, seconds and chain length, or one more "
                   "failure; written whole (temporary file, then rename). Not with --estimate, which backs "
                   "nothing up.", metavar="FILE", show_default=False),
            Option("keep_chains", ("--keep-chains",), "int", None,
                   "With --into: after a successful backup, delete the oldest chains of the disk beyond N "
                   "(never the current one).", metavar="N", show_default=False),
            Option("new_chain_after", ("--new-chain-after",), "text", None,
                   "With --into: start a new chain with a full backup when the current one's first backup is "
                   "older than DURATION (90s, 12h, 7d, 2w); its \"reason\" says so.", metavar="DURATION",
                   show_default=False),
            Option("max_incrementals", ("--max-incrementals",), "int", None,
                   "With --into: start a new chain with a full backup when the current one already has N "
                   "incrementals; its \"reason\" says so.", metavar="N", show_default=False),
            Option("estimate", ("--estimate",), "flag", False,
                   "With --into: print, per disk, what the next run would do (\"level\") and copy (\"bytes\": "
                   "the bitmap's count for an incremental, the disk's allocated size for a full), and start, "
                   "lock, create or change nothing."),
            Option("skip_below", ("--skip-below",), "text", None,
                   "With --into: a disk with less than SIZE changed since its last backup (512K, 10M) is not "
                   "backed up this run (\"level\": \"skipped\"); its bitmap keeps recording.", metavar="SIZE",
                   show_default=False),
            Option("fleece", ("--fleece",), "text", None,
                   "With --into: image fleecing, so a slow DIR never slows the guest's writes: the old data a "
                   "guest write replaces goes to a temporary image in DIR2 (a fast folder on this host, QEMU 7.1 "
                   "or later; not for ssh:// VMs), and the jobs copy from that snapshot to DIR at their own pace. "
                   "Several disks of a running VM are switched with the VM paused for a moment (\"paused\": "
                   "seconds). The temporary files and nodes are removed on every path.", metavar="DIR2",
                   show_default=False),
            Option("compress", ("--compress",), "flag", False,
                   "With --into: write compressed qcow2 images (smaller, slower to write); restore, "
                   "backup-verify, --serve and --instant read them as any other."),
            Option("freeze", ("--freeze",), "flag", False,
                   "With --into: freeze the guest's filesystems through its agent (-a, or --domain) while the "
                   "jobs start, and thaw them right after, on every path. No agent: exit 3, nothing started."),
            Option("freeze_try", ("--freeze-try",), "flag", False,
                   "Like --freeze, but back up unfrozen (and say so) when the agent cannot be reached or does "
                   "not freeze."),
            Option("freeze_timeout", ("--freeze-timeout",), "float", None,
                   "How long the agent may take to freeze; then it is thawed [default: 10].", metavar="SECONDS",
                   show_default=False),
            Option("agent", ("-a", "--agent"), "text", None,
                   "The guest agent's channel socket, for --freeze. Several VMs: a pattern, {vm} standing for "
                   "each VM's name and {sock} for its socket's file name without the extension "
                   "(-a '/run/qemu/{vm}.qga'; a VM over ssh:// finds an absolute path on its host).",
                   metavar="ADDR", show_default=False,
                   complete="socket"),
            Option("sync", ("--sync",), "choice", "full",
                   "full: the whole disk; top: only what the top image holds (the target then names the "
                   "source's backing file).", choices=("full", "top")),
            Option("image_format", ("--format",), "choice", "qcow2", "The target's format.",
                   choices=("qcow2", "raw")),
            Option("speed", ("--speed",), "text", None, "Limit the copy rate, e.g. 10M [default: no limit].",
                   metavar="BYTES_PER_SEC", show_default=False),
            Option("force", ("--force",), "flag", False,
                   "Overwrite an existing TARGET; also needed when the VM runs on another host, where qmpctl "
                   "cannot check it."),
            Option("wait", ("--wait",), "switch", True,
                   "Wait until the job has finished (default), or return once it started and print its job id "
                   "(refused with --into).",
                   off_flags=("--no-wait",)),
            Option("wait_timeout", ("--wait-timeout",), "float", None,
                   "Cancel the job and exit 4 when it takes longer [default: one day].", metavar="SECONDS",
                   show_default=False),
            Option("progress", ("--progress",), "choice", "auto", PROGRESS_HELP, choices=PROGRESS_CHOICES),
            Option("job_id", ("--job-id",), "text", None, "Name the job [default: backup-DEVICE].", metavar="ID",
                   show_default=False),
        ),
    ),
    Command(
        ("stream",), "qmpctl.cli.stream:stream",
        "Copy a disk's backing data into it while the VM runs, so it stands alone (block-stream, like virsh "
        "blockpull).",
        "For a VM started on an overlay (restore --instant): when the job has completed qmpctl flushes the disk, "
        "so the copied data and the image's new header are on the host's disk, checks that the disk names no "
        "backing file any more, and prints the bytes copied; then the chain the overlay was made on is no "
        "longer needed, and its reference to the overlay is removed. A disk that already stands alone is flushed "
        "and reported (exit 0). The job (stream-DEVICE) shows in qmpctl jobs. Exit 4 (--wait-timeout) and 130 "
        "(Ctrl-C, SIGTERM): the job is cancelled, what it copied stays, the VM keeps running on its overlay, and "
        "stream again continues. --no-wait returns once the job started; stream again later waits for it, or "
        "reads how it ended, and flushes. Exit 6: the job failed (the reason follows).",
        example="qmpctl stream -s /tmp/vm.sock vd0 --speed 100M --progress none",
        arguments=(Argument("device", "DEVICE", "The disk: its device id (vd0), drive name or node name."),),
        options=(
            Option("speed", ("--speed",), "text", None, "Limit the copy rate, e.g. 10M [default: no limit].",
                   metavar="BYTES_PER_SEC", show_default=False),
            Option("wait", ("--wait",), "switch", True,
                   "Wait until the disk stands alone (default), or return once the job started.",
                   off_flags=("--no-wait",)),
            Option("wait_timeout", ("--wait-timeout",), "float", None,
                   "Cancel the job and exit 4 when it takes longer [default: one day].", metavar="SECONDS",
                   show_default=False),
            Option("progress", ("--progress",), "choice", "auto", PROGRESS_HELP, choices=PROGRESS_CHOICES),
        ),
    ),
    # --- backup chains, offline ------------------------------------------------------------
    Command(
        ("backup-verify",), "qmpctl.cli.chain:backup_verify",
        "Check every image of the backup chains in DIR, offline.",
        "Each image must pass qemu-img check, be backed by the image before it in the manifest (chain.json), "
        "and have the size and sha256 the manifest recorded. Exit 0 when all are sound; exit 6 naming the first "
        "broken image. No VM is needed; the shared options other than --pretty do not apply. DIR is read on this "
        "host: for a chain on a VM's host (backup -s ssh://... --into), run it there or over a mount.",
        example="qmpctl backup-verify /backup/vm1 --json;  qmpctl backup-verify /backup/vm1 --max-age 36h",
        arguments=(Argument("path", "DIR", "A folder of chains (as given to backup --into), or one chain folder."),),
        options=(
            Option("json_lines", ("--json",), "flag", False, "Print one JSON line per image (ok, problem)."),
            Option("max_age", ("--max-age",), "text", None,
                   "Also exit 6, naming each, when a disk's newest backup started longer ago than DURATION "
                   "(90m, 36h, 7d, 1d12h).", metavar="DURATION", show_default=False),
            Option("wait_timeout", ("--wait-timeout",), "float", None,
                   "Give up (exit 4) when reading the images takes longer [default: one day].", metavar="SECONDS",
                   show_default=False),
        ),
    ),
    Command(
        ("restore",), "qmpctl.cli.restore_modes:restore",
        "Get a disk back as it was at one backup of a chain: a standalone image, an NBD export (--serve), a thin "
        "overlay to boot from at once (--instant), or single files (--ls, --cat, --extract).",
        "Verifies the chain's images up to that backup first (as backup-verify does), then writes TARGET with "
        "qemu-img convert; TARGET is never overwritten (exit 2) unless --force. No VM is needed; the chain is read "
        "on this host (a chain on a VM's host: run it there, or over a mount). --boot-check "
        "then boots the restored image in a throwaway QEMU (-snapshot: nothing is written to it) with a guest "
        "agent channel, waits for guest-ping, runs --check-command in the guest, and exits 6 with the console's "
        "last lines when the guest did not come up or the check failed.\n\n"
        "--serve ADDR writes nothing: it verifies the point's images the same way, then serves the point "
        "read-only over NBD with qemu-nbd (format given, never probed), prints the NBD URI as one JSON line and "
        "serves until Ctrl-C, SIGTERM or --for SECONDS, each a normal end (exit 0); the server is then stopped "
        "and its socket removed. --writable serves a throwaway qcow2 overlay on top instead, deleted at the end."
        "\n\n--instant TARGET creates TARGET as a thin qcow2 overlay whose backing file is the point's image "
        "(never overwriting: exit 2 when it exists), in milliseconds; a VM started on it runs at once, and qmpctl "
        "stream copies the rest into it while it runs. Until then the chain folder holds "
        "instant-HASH.json naming TARGET, and backup --keep-chains keeps that chain.\n\n"
        "--ls PATH, --cat PATH and --extract PATH --to DIR read single files of the point through libguestfs "
        "(guestfish, read-only, format given), with the filesystem found by inspection, the disk's only one, or "
        "--filesystem. --cat writes the file's exact bytes; --extract keeps modes and times, never replaces an "
        "existing file (exit 2) unless --force, and prints what it wrote. A PATH the backup does not hold is "
        "exit 1 naming it; a filesystem that cannot be read is exit 6. Each call boots libguestfs's appliance "
        "(seconds with KVM, a minute or more under emulation).\n\n"
        "A whole VM: when CHAIN is a VM's folder holding chains of several disks (DIR, or DIR/<vm> of a fleet), "
        "or TARGET is a folder (an existing one, or written with a trailing /), every disk of one backup of the "
        "VM (the same grouped run: --at TIME, --point N with one chain per disk, or the latest) is written to "
        "TARGET/<device>.qcow2, all or none; --boot-check boots them together, disks in the order of their "
        "names and the UEFI variables (pflash1) as the second flash, after the firmware's code given with "
        "--qemu-arg.",
        example="qmpctl restore /backup/vm1 /backup/vd0-restored.qcow2 --point 1",
        arguments=(
            Argument("chain", "CHAIN", "A chain folder, a folder of one disk's chains (then the latest chain), or "
                     "a VM's folder of chains (a whole VM)."),
            Argument("target", "TARGET", "The image file to write (a folder for a whole VM); it must not exist. "
                     "Not with --serve.", required=False),
        ),
        options=(
            Option("point", ("--point",), "int", None, "Backup N of the chain, 1 being the full [default: the "
                   "latest].", metavar="N", show_default=False),
            Option("at", ("--at",), "text", None, "The last backup started at or before TIME (ISO 8601; UTC "
                   "unless it has a zone).", metavar="TIME", show_default=False),
            Option("force", ("--force",), "flag", False, "Replace an existing TARGET."),
            Option("image_format", ("--format",), "choice", "qcow2", "TARGET's format.", choices=("qcow2", "raw")),
            Option("progress", ("--progress",), "choice", "auto", PROGRESS_HELP, choices=PROGRESS_CHOICES),
            Option("wait_timeout", ("--wait-timeout",), "float", None,
                   "Give up (exit 4) when verifying and writing take longer [default: one day].",
                   metavar="SECONDS", show_default=False),
            Option("boot_check", ("--boot-check",), "flag", False,
                   "Boot the restored image and wait for its guest agent (a restore drill); QEMU is told "
                   "--format, never a format guessed from the guest's bytes."),
            Option("qemu_args", ("--qemu-arg",), "list", None,
                   "One more QEMU argument for --boot-check, repeatable: --qemu-arg=-m --qemu-arg=512, "
                   "-kernel/-initrd for a guest that does not boot from its disk, -accel kvm.", metavar="ARG",
                   show_default=False),
            Option("boot_timeout", ("--boot-timeout",), "float", 120.0,
                   "How long the restored guest may take to answer guest-ping.", metavar="SECONDS"),
            Option("check_command", ("--check-command",), "text", None,
                   "A shell command to run in the booted guest (sh -c) through its agent; it must exit 0.",
                   metavar="CMD", show_default=False),
            Option("serve", ("--serve",), "text", None,
                   "Instead of writing TARGET, serve the point read-only over NBD at unix:PATH or tcp:HOST:PORT "
                   "(loopback only unless --allow-remote) until Ctrl-C, SIGTERM or --for.", metavar="ADDR",
                   show_default=False),
            Option("serve_for", ("--for",), "float", None,
                   "With --serve: stop serving after this long (exit 0) [default: until Ctrl-C or SIGTERM].",
                   metavar="SECONDS", show_default=False),
            Option("writable", ("--writable",), "flag", False,
                   "With --serve: serve a throwaway overlay that takes writes (deleted at the end); the chain's "
                   "images stay read-only."),
            Option("instant", ("--instant",), "text", None,
                   "Instead of writing a whole image, create TARGET as a thin qcow2 overlay on the point, at "
                   "once whatever the disk's size; a VM can start on it, and qmpctl stream makes it standalone. "
                   "The images' metadata is checked first; their sha256 only with --verify.",
                   metavar="TARGET", show_default=False),
            Option("verify", ("--verify",), "flag", False,
                   "With --instant: first compare every image the point needs with its sha256, as restore does "
                   "(reads them all: seconds per GiB)."),
            Option("ls", ("--ls",), "text", None,
                   "Instead, list the folder PATH of the disk at that point (or the file PATH), through libguestfs.",
                   metavar="PATH", show_default=False),
            Option("cat", ("--cat",), "text", None,
                   "Instead, write the exact bytes of the file PATH of the disk at that point to stdout.",
                   metavar="PATH", show_default=False),
            Option("extract", ("--extract",), "text", None,
                   "Instead, copy the file or folder PATH of the disk at that point into --to DIR (modes and times "
                   "kept; an existing one is not replaced unless --force).", metavar="PATH", show_default=False),
            Option("to", ("--to",), "text", None, "With --extract: the local folder to write into.",
                   metavar="DIR", show_default=False),
            Option("filesystem", ("--filesystem",), "text", None,
                   "With --ls/--cat/--extract: the filesystem to read, like /dev/sda1 [default: found by inspection, "
                   "or the disk's only filesystem].", metavar="DEVICE", show_default=False),
            Option("allow_remote", ("--allow-remote",), "flag", False,
                   "With --serve tcp:HOST:PORT: allow an address other than loopback (NBD has no authentication)."),
        ),
    ),
    # --- migration -------------------------------------------------------------------------
    Command(
        ("migrate",), "qmpctl.cli.migrate:migrate",
        "Move a running VM to another QEMU (live migration), or save its state to a file and restore it.",
        "--to ADDR: DEST is the destination QEMU's monitor; it has the same hardware and was started with "
        "-incoming defer (a destination that is not waiting is refused with exit 2 before the source is "
        "touched). Both sides get the same capabilities, the destination listens (a private unix socket in a "
        "fresh directory when both are on this machine, else --uri), the source sends, and qmpctl waits until "
        "both agree: source postmigrate, destination running (paused when the source was). Exit 0 only then."
        "\n\nOn a failure (6), --wait-timeout or --stall-timeout (4), Ctrl-C or SIGTERM (130) the migration is "
        "cancelled, the source runs again if it was running, and a destination that never ran is told to "
        "quit; the message names the source's final state."
        "\n\n--to-file FILE pauses the VM and writes its whole state into a new FILE (like virsh save); "
        "--from-file FILE loads it into a QEMU started with -incoming defer and continues it. The file is "
        "handed to QEMU as a file descriptor over the unix socket (not possible over TCP). "
        "--domain is refused: use virsh migrate, libvirt owns its domains' migration.",
        example="qmpctl migrate -s /tmp/vm.sock --status --pretty",
        options=(
            Option("to", ("--to",), "text", None, "Destination QEMU's QMP address (started with -incoming defer).",
                   metavar="ADDR", show_default=False, complete="socket"),
            Option("uri", ("--uri",), "text", None,
                   "Migration channel: tcp:HOST:PORT (port 0: the destination picks one) or unix:PATH "
                   "[default: a private unix socket, when both QEMUs are on this machine].",
                   metavar="URI", show_default=False),
            Option("speed", ("--speed",), "text", None,
                   "Bandwidth limit in bytes/s, e.g. 100M [default: no limit; QEMU's own is low].",
                   metavar="BYTES_PER_SEC", show_default=False),
            Option("downtime", ("--downtime",), "int", None,
                   "Longest pause of the VM at the switch-over, in ms (downtime-limit) [default: QEMU's, 300].",
                   metavar="MS", show_default=False),
            Option("auto_converge", ("--auto-converge",), "flag", False,
                   "Slow the guest's CPUs down when it dirties memory faster than it can be sent."),
            Option("postcopy_after", ("--postcopy-after",), "float", None,
                   "Switch to postcopy after this long without converging (both QEMUs must support it, "
                   "else exit 2 before starting); from then on it cannot be cancelled.",
                   metavar="SECONDS", show_default=False),
            Option("stall_timeout", ("--stall-timeout",), "float", None,
                   "Cancel (exit 4) when the remaining RAM has not shrunk for this long.", metavar="SECONDS",
                   show_default=False),
            Option("wait", ("--wait",), "switch", True,
                   "Wait until both sides agree (default), or return once the source is sending and print "
                   "the migration status.", off_flags=("--no-wait",)),
            Option("wait_timeout", ("--wait-timeout",), "float", None,
                   "Cancel and exit 4 when it takes longer [default: one day].", metavar="SECONDS",
                   show_default=False),
            Option("progress", ("--progress",), "choice", "auto", PROGRESS_HELP, choices=PROGRESS_CHOICES),
            Option("status", ("--status",), "flag", False,
                   "Instead, show the VM's run state and its migration (query-migrate)."),
            Option("cancel", ("--cancel",), "flag", False,
                   "Instead, cancel the VM's outgoing migration and wait until QEMU says it is over."),
            Option("to_file", ("--to-file",), "text", None,
                   "Save the VM's state into this new file (the VM is paused first).", metavar="FILE",
                   show_default=False),
            Option("then", ("--then",), "choice", "stay",
                   "After --to-file: stay (leave the VM paused), cont (resume it) or quit (end its QEMU).",
                   choices=("stay", "cont", "quit")),
            Option("force", ("--force",), "flag", False,
                   "With --to-file: replace an existing FILE, once the new state is complete."),
            Option("from_file", ("--from-file",), "text", None,
                   "Restore the state saved in FILE into this QEMU (started with -incoming defer). FILE is "
                   "checked first against the record --to-file wrote: truncated or corrupted is exit 6, another "
                   "machine type or an older QEMU exit 2, before the destination is touched.",
                   metavar="FILE", show_default=False),
            Option("paused", ("--paused",), "flag", False, "With --from-file: leave the restored VM paused."),
            SYNC_TIME_OPTION,
            SYNC_AGENT_OPTION,
        ),
    ),
    # --- guest agent -----------------------------------------------------------------------
    Command(("agent", "ping"), "qmpctl.cli.agent:ping", "Check that the guest agent answers (guest-ping).",
            example="qmpctl agent ping -a /tmp/channel.sock", kind=AGENT),
    Command(("agent", "info"), "qmpctl.cli.agent:info",
            "Show the agent's version and supported commands (guest-info).",
            example="qmpctl agent info -a /tmp/channel.sock --pretty", kind=AGENT),
    Command(("agent", "interfaces"), "qmpctl.cli.agent:interfaces",
            "Show the guest's network interfaces (guest-network-get-interfaces).",
            example="qmpctl agent interfaces -a /tmp/channel.sock --pretty", kind=AGENT),
    Command(
        ("agent", "command"), "qmpctl.cli.agent:agent_command",
        "Send any guest-agent command, like virsh qemu-agent-command.",
        "guest-shutdown and guest-suspend-* answer only when they fail: for them qmpctl waits a second for "
        "a refusal and prints nothing on success.",
        example="qmpctl agent command -a /tmp/channel.sock '{\"execute\":\"guest-get-osinfo\"}' --pretty",
        kind=AGENT,
        arguments=(Argument("words", "CMD...", REQUEST_WORDS_HELP, variadic=True),),
    ),
    Command(
        ("agent", "exec"), "qmpctl.cli.exec_run:agent_exec",
        "Run a program in the guest like ssh would (guest-exec + guest-exec-status).",
        "Its stdout and stderr come out as raw bytes on qmpctl's stdout and stderr, and qmpctl exits with "
        "its exit code (128+N when signal N killed it). Exit 124: it outlived --wait-timeout (its guest pid "
        "is printed on stderr), or the agent stopped answering after the program was started. Exit 125: "
        "qmpctl itself failed (bad usage, cannot connect, agent not responding, guest-exec disabled, program "
        "cannot be started), with the reason on stderr. Each exchange with the agent is bounded by "
        "--timeout; the program may run longer.",
        example="qmpctl agent exec -a /tmp/channel.sock -- sh -c 'uname -a; df -h /'",
        kind=AGENT,
        arguments=(Argument("program", "PROGRAM [ARGS]...",
                            "The program to run in the guest (looked up in the agent's PATH) and its arguments; "
                            "put -- before it.", variadic=True),),
        options=(
            Option("stdin", ("--stdin",), "flag", False,
                   "Send qmpctl's standard input (up to 16 MiB) to the program; without it the program reads "
                   "an empty input.", show_default=False),
            Option("env", ("--env",), "list", None,
                   "Set an environment variable (repeatable). The guest agent then REPLACES the whole "
                   "environment with these: include PATH=... if the program needs it.", metavar="NAME=VALUE",
                   show_default=False),
            Option("wait_timeout", ("--wait-timeout",), "float", None, WAIT_TIMEOUT_EXEC_HELP,
                   metavar="SECONDS", show_default=False),
            Option("no_wait", ("--no-wait",), "flag", False,
                   'Print the agent\'s reply with the guest pid ({"return":{"pid":N}}) and return; read the '
                   "result with agent exec-status.", show_default=False),
            Option("json_output", ("--json",), "flag", False, EXEC_JSON_HELP, show_default=False),
        ),
        interspersed=False,
        usage_exit=125,
    ),
    Command(
        ("agent", "exec-status"), "qmpctl.cli.agent:exec_status",
        "Show how a program started with agent exec --no-wait is doing (guest-exec-status).",
        "Prints the agent's reply as it is (out-data/err-data in base64), or with --json the decoded object "
        "agent exec --json prints. Once a reply has said the program exited, the agent forgets the pid: a "
        "second read exits 1.",
        example="qmpctl agent exec-status -a /tmp/channel.sock 1234 --wait --json",
        kind=AGENT,
        arguments=(Argument("pid", "PID", "The guest pid that agent exec --no-wait printed.", type="int"),),
        options=(
            Option("wait", ("--wait",), "flag", False, "Poll until the program exits (backing off like agent exec)."),
            Option("wait_timeout", ("--wait-timeout",), "float", None,
                   "With --wait (implied): give up after this long, exit 124.", metavar="SECONDS",
                   show_default=False),
            Option("json_output", ("--json",), "flag", False,
                   EXEC_JSON_HELP.replace("Print", "Instead of the agent's reply, print")),
        ),
    ),
    Command(
        ("agent", "time"), "qmpctl.cli.guestinfo:agent_time",
        "Show the guest's clock against the host's (guest-get-time), or set it from the host's (--sync).",
        "Prints the guest's and the host's time (UTC), the offset in seconds (guest minus host) and its "
        "uncertainty (half the round trip). --sync sends the host's time with guest-set-time; the agent sets "
        "the guest's clock and writes its RTC with /sbin/hwclock, and refuses the call (exit 1, its words) in a "
        "guest without hwclock, or where guest-set-time is disabled. The output then adds the offset before.",
        example="qmpctl agent time -a /tmp/channel.sock --pretty",
        kind=AGENT,
        options=(Option("sync", ("--sync",), "flag", False, "Set the guest's clock to the host's time."),),
    ),
    Command(
        ("agent", "guestinfo"), "qmpctl.cli.guestinfo:guestinfo",
        "Show what the agent knows about the guest: OS, hostname, timezone, users, filesystems, disks, vCPUs.",
        "One JSON document, one section per agent command (guest-get-osinfo, -host-name, -timezone, -users, "
        "-fsinfo, -disks, -vcpus). A section whose command the agent lacks, has disabled or refuses holds "
        "{\"error\": {\"class\", \"desc\"}} instead; the exit code is 0 unless the agent cannot be reached "
        "or stops answering.",
        example="qmpctl agent guestinfo -a /tmp/channel.sock --pretty",
        kind=AGENT,
    ),
    # --- guest agent: into the guest OS (files, passwords, freeze, shutdown) ---------------
    Command(
        ("agent", "cp"), "qmpctl.cli.guest:cp",
        "Copy a file into or out of the guest (guest-file-open/read/write/close).",
        "One side is guest:/PATH, the other a local path, or - for stdin/stdout. Binary-safe, in chunks "
        "sized for the agent (and for libvirt's 4 MiB messages with --domain); the guest file's handle is "
        "closed on every path, Ctrl-C included. Never overwrites without --force: an existing local "
        "destination is refused before anything is read, an existing guest file before anything is written "
        "(exit 2). A guest: path ending in / or a local directory gets the source's name. After a failure "
        "the error names the partial guest file. With --verify (default) the guest's sha256sum is compared "
        "with the bytes sent or received: a mismatch exits 6; a guest without sha256sum (or guest-exec) is "
        "noted in the JSON result instead. The result (bytes, seconds, sha256, verified) is printed as JSON, "
        "unless the file itself goes to stdout. --timeout bounds each exchange with the agent; "
        "--wait-timeout the whole copy. The guest's own errors (no such file, permission denied, "
        "read-only filesystem, a directory) exit 1.",
        example="qmpctl agent cp -a /tmp/channel.sock --dry-run guest:/etc/os-release -",
        kind=AGENT,
        arguments=(
            Argument("source", "SRC", "guest:/PATH, a local PATH, or - (stdin)."),
            Argument("destination", "DST", "guest:/PATH (or guest:/DIR/), a local PATH or DIR, or - (stdout)."),
        ),
        options=(
            Option("force", ("--force",), "flag", False, "Overwrite an existing destination.",
                   show_default=False),
            Option("verify", ("--verify",), "switch", True,
                   "Compare the guest's sha256sum of the file with the bytes copied (needs sha256sum and "
                   "guest-exec in the guest; skipped, and said so, without them).", off_flags=("--no-verify",)),
            Option("progress", ("--progress",), "choice", "auto",
                   "Show progress on stderr: bar, json (one line per update), none; auto: a bar on a terminal "
                   "for copies over 4 MiB.", choices=PROGRESS_CHOICES),
            Option("wait_timeout", ("--wait-timeout",), "float", None,
                   "Give up the whole copy after this long: exit 4 [default: no limit].", metavar="SECONDS",
                   show_default=False),
        ),
    ),
    Command(
        ("agent", "set-password"), "qmpctl.cli.guest:set_password",
        "Set a guest user's password (guest-set-user-password).",
        "The password is the first line of standard input (prompted for without echo on a terminal) or of "
        "--password-file, never an argument, where ps would show it. It is sent base64-encoded as the agent "
        "requires and appears nowhere else: --dry-run and error messages show it masked. Linux guests run "
        "chpasswd; a refusal (no such user, chpasswd missing) exits 1.",
        example="qmpctl agent set-password -a /tmp/channel.sock --dry-run --password-file alice.password alice",
        kind=AGENT,
        arguments=(Argument("user", "USER", "The guest user whose password changes."),),
        options=(
            Option("password_file", ("--password-file",), "text", None,
                   "Read the password from the first line of this file instead of standard input.",
                   metavar="PATH", show_default=False),
            Option("crypted", ("--crypted",), "flag", False,
                   "The password is already hashed (a crypt(3) string such as $6$...), passed to chpasswd -e.",
                   show_default=False),
        ),
    ),
    Command(
        ("agent", "fsfreeze"), "qmpctl.cli.guest:fsfreeze",
        "Freeze or thaw the guest's filesystems, or show whether they are frozen (guest-fsfreeze-*).",
        "status prints frozen or thawed. freeze syncs and freezes every local filesystem (or only those at "
        "--mountpoint) and prints how many; the guest then stays frozen, writes inside it waiting, until "
        "thaw (a warning on stderr says so). freeze --for SECONDS freezes, waits, and always thaws, also "
        "on errors and Ctrl-C, with --thaw-timeout of its own; it prints how many were frozen and thawed "
        "and for how long, for scripts that snapshot storage outside QEMU. While frozen the agent refuses "
        "agent exec and agent cp; qmpctl says why (exit 1, 125 for exec).",
        example="qmpctl agent fsfreeze -a /tmp/channel.sock --dry-run freeze --mountpoint /srv --for 5",
        kind=AGENT,
        arguments=(Argument("action", "ACTION", "status, freeze or thaw."),),
        options=(
            Option("mountpoint", ("--mountpoint",), "list", None,
                   "With freeze: only the filesystem mounted here (repeatable) [default: all].", metavar="PATH",
                   show_default=False),
            Option("for_seconds", ("--for",), "float", None,
                   "With freeze: thaw again after this long (and on any error or Ctrl-C).", metavar="SECONDS",
                   show_default=False),
            Option("thaw_timeout", ("--thaw-timeout",), "float", 10.0,
                   "With freeze --for: how long the thaw may take, whatever --timeout says.", metavar="SECONDS"),
        ),
    ),
    Command(
        ("agent", "shutdown"), "qmpctl.cli.guest:shutdown",
        "Shut the guest down through its agent (guest-shutdown).",
        "The agent answers only when it refuses: qmpctl waits a second for a refusal (exit 1) and otherwise "
        "prints nothing. With -s (the VM's QMP socket) it waits until QEMU reports the guest down (the "
        "SHUTDOWN event, RESET for a reboot QEMU survives, or QEMU exiting) and prints what it saw; "
        "--wait-timeout bounds that wait (exit 4). A halt stops the CPUs without QEMU noticing: no event.",
        example="qmpctl agent shutdown -a /tmp/channel.sock --mode reboot --dry-run",
        kind=AGENT,
        options=(
            Option("mode", ("--mode",), "choice", "powerdown", "powerdown, reboot or halt.",
                   choices=("powerdown", "reboot", "halt")),
            Option("qmp", ("-s", "--qmp"), "text", None,
                   "The VM's QMP socket: wait until QEMU reports the guest down.", metavar="ADDR",
                   show_default=False, complete="socket"),
            Option("wait_timeout", ("--wait-timeout",), "float", None,
                   "With -s: give up waiting after this long, exit 4 [default: 60].", metavar="SECONDS",
                   show_default=False),
        ),
    ),
)


def find(argv: list[str]) -> tuple[Command, list[str]] | None:
    """The command ``argv`` starts with (its words first), and the words after them."""
    for command in COMMANDS:
        count = len(command.words)
        if tuple(argv[:count]) == command.words:
            return command, argv[count:]
    return None


def all_options(command: Command) -> tuple[Option, ...]:
    """The command's own options, then the shared ones."""
    return command.options + shared_options(command.kind)
