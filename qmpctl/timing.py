"""Every grace period, default wait and polling pace of qmpctl, in seconds, each with the reason for its value.

Kept in one place so two waits for the same thing cannot drift apart, and a
value is changed knowing what else depends on it. This module imports nothing:
the quick commands load it on every call.
"""

# -- a call's own clock ------------------------------------------------------------------------------

DEFAULT_TIMEOUT = 10.0
"""--timeout: a QMP or agent exchange takes milliseconds; 10 s leaves room for a busy host or a slow libvirtd,
and still ends a call to a hung peer while the user is waiting for it."""
OFFLINE_TIMEOUT = 86400.0
"""Reading a chain's images takes as long as the disk is big: offline work gets a day unless told."""

# -- long waits the user can bound with --wait-timeout ----------------------------------------------------

MIGRATION_WAIT_TIMEOUT = 86400.0
"""A migration (or a state save) ends when the guest's memory converges, which may take hours: a day by default."""
POWERDOWN_WAIT = 60.0
"""``powerdown --wait``: an ACPI shutdown of an ordinary guest takes seconds; one minute before giving up."""
GUEST_SHUTDOWN_WAIT = 60.0
"""``agent shutdown`` with -s: the same minute a guest gets to go down as for ``powerdown``."""
BLOCK_JOB_WAIT_TIMEOUT = 86400.0
"""--wait-timeout of a backup or a stream: copying a disk takes as long as it is big, hours for a large one on a
slow target; a day unless told."""
FREEZE_TIMEOUT = 10.0
"""--freeze-timeout: how long the agent may take to freeze the guest's filesystems before they are thawed and
nothing starts; qemu-ga freezes in milliseconds unless a filesystem has much to flush."""
THAW_TIMEOUT = 10.0
"""How long a thaw may take once the guest must be thawed: its own deadline, whatever the call's says
(qemu-ga thaws in milliseconds; 10 s covers a guest under load)."""

# -- cleanup: fresh, short deadlines that hold even when the call's own has passed ----------------------

CLEANUP_SECONDS = 5.0
"""How long closing a guest-side handle after a failure may take; a thaw has its own, documented limit."""
MIGRATION_CLEANUP_SECONDS = 15.0
"""The most one migration cleanup step may take: a cancel takes milliseconds, a destination that hangs must not
hang us; longer than the others because a source still finalizing a failed migration answers late."""
ROLLBACK_GRACE = 5.0
"""How long undoing a half-done block operation (blockdev-del, removing a target file) may take."""
NODE_RELEASE_GRACE = 2.0
"""After DEVICE_DELETED, how long blockdev-del is retried while QEMU finishes letting go of the node."""
INTERRUPTED_UNPLUG_GRACE = 3.0
"""After Ctrl-C or SIGTERM following device_del: how long the guest may take to release the device (short:
the user asked to stop)."""
STREAM_CANCEL_GRACE = 30.0
"""How long cancelling a block-stream may take on the way out: the job first finishes the copy it has in flight,
which on a slow disk takes longer than undoing a node."""
SNAPSHOT_CLEANUP_GRACE = 10.0
"""How long deleting a half-made snapshot may take after a failure or Ctrl-C: a snapshot-delete job on every disk
(the VM state is not written)."""
CHILD_STOP_GRACE = 5.0
"""How long a program qmpctl started (qemu-nbd, the restore drill's QEMU) may take to exit after SIGTERM before
it is killed: both exit at once when nothing is left to write."""
GUESTFISH_STOP_GRACE = 10.0
"""guestfish's ``exit`` shuts its libguestfs appliance (a small VM) down cleanly, which takes seconds under TCG;
then the appliance is killed."""
NBD_START_TIMEOUT = 30.0
"""How long qemu-nbd (and creating its overlay) may take to be ready to serve: it opens the point's whole backing
chain first, and a loaded host may be slow at that."""
FORCE_GRACE = 10.0
"""How long ``quit`` may take after a forced powerdown (the --timeout clock has often run out by then)."""
NO_REPLY_GRACE_SECONDS = 1
"""How long to wait for an answer to an agent command that answers only when it fails (guest-shutdown): long
enough for a quick refusal; whole seconds, libvirt's smallest timeout."""

# -- ssh masters ------------------------------------------------------------------------------------------

CONTROL_PERSIST_SECONDS = 15
"""How long an idle ssh master stays up: covers the gaps of one call, ends masters a killed qmpctl left behind."""
SSH_CHECK_SECONDS = 2.0
"""How long asking a master whether it still stands may take, when a channel ended unexpectedly."""
SSH_EXIT_SECONDS = 2.0
"""How long ``ssh -O exit`` may take at exit; a master that does not answer expires by ControlPersist."""
SSH_START_GRACE = 2.0
"""At exit, how long to wait for an ssh another thread is starting (fork and exec take milliseconds), so that it
is killed and reaped rather than left running."""
SSH_RELEASE_SECONDS = 5.0
"""How long a script holding something on the host (a lock) may take to end once told to."""

# -- polling: fast at first so short waits stay short, backing off so long ones stay cheap ----------------

POLL_FIRST = 0.01
"""First pause of a wait polled without events (jobs and devices through libvirt, a failed migration settling):
QEMU usually gets there within milliseconds."""
POLL_MAX = 0.2
"""Longest pause of such a wait: one poll in 200 ms costs QEMU nothing and keeps the answer prompt."""
CHECK_EVERY = 1.0
"""With events (or without a progress printer): how often a wait reads the state anyway, a guard against a
missed event."""
SETTLE_POLL_FIRST = 0.005
"""After ``completed``, QEMU stops the migration clock within milliseconds: poll for it from 5 ms."""
SETTLE_POLL_MAX = 0.1
"""... up to 100 ms: the settling never takes long, and its reading is the one the user sees."""
BALLOON_POLL_FIRST = 0.05
"""A guest gives memory back page by page over tens of milliseconds: a balloon wait polls from 50 ms."""
BALLOON_POLL_MAX = 0.5
"""... up to half a second: a guest may take many seconds, and each poll is a round trip to QEMU."""
BOOT_CHECK_POLL = 0.2
"""How often the restore drill looks for the booted guest's agent: a boot under TCG takes seconds, and each look
is a connect and a ping."""
EXEC_POLL_FIRST = 0.001
"""A guest program as short as ``true`` ends within a millisecond: its status is polled that soon."""
EXEC_POLL_MAX = 0.2
"""Longest pause between exec status polls: a long program costs the agent five requests a second at most."""
SIGNAL_CHECK_SECONDS = 0.5
"""The longest a blocking read waits before Python looks at pending signals again: a Ctrl-C that lands between
Python's last look and the start of the read is handled within half a second, not at the deadline."""
QUEUE_FULL_RETRY_SECONDS = 0.05
"""A unix socket whose listen queue is full refuses at once: try again after 50 ms, within the deadline."""
EVENT_POLL_SECONDS = 0.5
"""How often a wait for a libvirt event looks at Ctrl-C and its deadline."""

# -- progress output --------------------------------------------------------------------------------------

BAR_EVERY = 0.25
"""A progress bar is redrawn at most this often: smooth to the eye, cheap on a slow terminal."""
JSON_EVERY = 1.0
"""A JSON progress line is written at most this often, and only when the reading changed."""
RATE_WINDOW = 5.0
"""A rate is measured over the last few seconds, so it follows a --speed change or a slow patch."""
CBW_TIMEOUT = 30
"""Seconds a guest write may wait for its old data to reach the fleecing image (``copy-before-write``'s
``cbw-timeout``); then the write goes through and the snapshot breaks (``on-cbw-error: break-snapshot``), so the
backup fails instead of the guest stalling on a broken scratch disk. The image is on a fast local folder: a copy
there takes milliseconds."""
FLEECE_DRAIN_GRACE = 120.0
"""After a failure or Ctrl-C in a --fleece run: how long a cancelled job may take to end. It ends once the writes
it had queued to DIR are done, which on a slow DIR (the reason for --fleece) takes seconds, not the milliseconds
:data:`ROLLBACK_GRACE` allows; until it has ended, its snapshot cannot go and the device's drive cannot be put
back. Measured: a job with 64 MiB queued to a DIR writing 2 MiB/s took 30 s to end."""
FLEECE_JOB_WORKERS = 8
"""How many requests a --fleece job keeps in flight (blockdev-backup's x-perf max-workers; QEMU's default is 64).
Each write to DIR holds a thread of QEMU's I/O thread pool (64 threads) until DIR has taken it: with 64 of them
queued on a slow DIR, a guest write found no free thread and waited 32 s behind them (measured, bench --only
fleece). Eight keep a slow DIR busy and leave the pool to the guest."""
