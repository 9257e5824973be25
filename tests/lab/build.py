#!/usr/bin/env python3
"""Build a tiny Linux lab guest (kernel + initramfs running qemu-ga) from Debian packages.

The guest exists so qmpctl can be tested end to end against a real QEMU and a
real qemu-guest-agent without a disk image, network access or KVM.  Everything
comes from Debian's package registry (the kernel is downloaded with
``apt-get download`` and unpacked, never installed) and the result is cached
outside the work tree, keyed by the package versions it was made from, so a
warm call costs well under a second.

CLI:    python3 tests/lab/build.py [--force] [--agent QEMU_GA]   -> prints KERNEL=... and INITRD=...
Import: from build import build; kernel, initrd = build()   # build(agent=Path(...)) for another qemu-ga
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import gzip
import io
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

DEFAULT_CACHE_ROOT = Path("/var/cache/qmpctl-lab")
KERNEL_META_PACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
AGENT_PACKAGE = "qemu-guest-agent"
AGENT_BINARY = Path("/usr/sbin/qemu-ga")
AGENT_CHANNEL_NAME = "org.qemu.guest_agent.0"
GUEST_PATH = "/bin:/sbin:/usr/bin:/usr/sbin"
KEEP_BUILDS = 6  # two qemu-ga builds times a few recipes (checkouts) in use at once

# Loaded in this order after dependency resolution; anything a module depends
# on is pulled in ahead of it automatically.
WANTED_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_console",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "virtio_net",
    "button",  # ACPI power button: QMP system_powerdown reaches acpid through it
    "evdev",  # /dev/input/event*, which busybox acpid reads
)
# Shipped but not loaded by the module list; the kernel loads them through
# modprobe when needed, e.g. when /init mounts the ext2 data filesystem.
# efivarfs: UEFI variables in /sys/firmware/efi/efivars, when the guest boots under OVMF.
ON_DEMAND_MODULES = ("crc32c_generic", "ext4", "efivarfs")
# Needed for the guest to reach the agent at all; the build fails without them.
ESSENTIAL_MODULES = frozenset({"virtio_ring", "virtio", "virtio_pci", "virtio_console", "virtio_blk"})

BUSYBOX_APPLET_DIRS = {"bin", "sbin", "usr/bin", "usr/sbin"}


def log(message: str) -> None:
    """Progress goes to stderr so stdout stays machine-readable (KERNEL=/INITRD=)."""
    print(f"[lab-build] {message}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kwargs)


def cache_root() -> Path:
    return Path(os.environ.get("QMPCTL_LAB_CACHE") or DEFAULT_CACHE_ROOT)


# --------------------------------------------------------------------------- packages


def installed_version(package: str) -> str | None:
    """dpkg-query is ~10 ms, so it is the cheap way to key the cache."""
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}\t${Version}", package],
        text=True,
        capture_output=True,
    )
    if result.returncode != 0:
        return None
    status, _, version = result.stdout.partition("\t")
    return version if status.endswith(" installed") else None


def ensure_installed(package: str) -> str:
    version = installed_version(package)
    if version:
        return version
    log(f"installing {package} with apt-get")
    apt_get_update_if_needed()
    run(["apt-get", "install", "-y", "--no-install-recommends", package],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    version = installed_version(package)
    if not version:
        raise RuntimeError(f"{package} is still not installed after apt-get install")
    return version


_apt_updated = False


def apt_get_update_if_needed(force: bool = False) -> None:
    global _apt_updated
    lists = Path("/var/lib/apt/lists")
    has_lists = lists.is_dir() and any(p.name.endswith("_Packages") for p in lists.iterdir())
    if _apt_updated or (has_lists and not force):
        return
    log("running apt-get update")
    run(["apt-get", "update"])
    _apt_updated = True


@dataclass(frozen=True)
class KernelPackage:
    name: str
    version: str


def _apt_lists_stamp() -> str:
    """Changes whenever `apt-get update` rewrites the package lists."""
    lists = Path("/var/lib/apt/lists")
    try:
        st = lists.stat()
    except FileNotFoundError:
        return "none"
    return f"{st.st_mtime_ns}"


def resolve_kernel_package(root: Path) -> KernelPackage:
    """Ask apt which kernel linux-image-amd64 currently means.

    apt-cache costs ~0.5 s here (no pkgcache.bin), so the answer is remembered
    until the apt lists change.
    """
    memo = root / "kernel-package.json"
    stamp = _apt_lists_stamp()
    try:
        remembered = json.loads(memo.read_text())
        if remembered.get("lists_stamp") == stamp:
            return KernelPackage(remembered["name"], remembered["version"])
    except (OSError, ValueError, KeyError):
        pass

    def query() -> KernelPackage | None:
        result = subprocess.run(
            ["apt-cache", "show", "--no-all-versions", KERNEL_META_PACKAGE],
            text=True, capture_output=True,
        )
        match = re.search(r"^Depends:.*?\b(linux-image-[\w.+-]+)\s*\(=\s*([^)\s]+)\)", result.stdout, re.M)
        return KernelPackage(match.group(1), match.group(2)) if match else None

    package = query()
    if package is None:
        apt_get_update_if_needed(force=True)
        package = query()
    if package is None:
        raise RuntimeError(f"apt-cache cannot resolve {KERNEL_META_PACKAGE}; is Debian's archive configured?")
    root.mkdir(parents=True, exist_ok=True)
    write_atomically(memo, json.dumps({"lists_stamp": _apt_lists_stamp(), "name": package.name,
                                       "version": package.version}))
    return package


def write_atomically(path: Path, text: str) -> None:
    """Parallel test workers may build at once; readers must never see half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def apt_download(package: str, version: str | None, dest: Path) -> Path:
    """Fetch a .deb into dest; dest is opened to _apt so apt can drop privileges."""
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o777)
    spec = f"{package}={version}" if version else package
    try:
        run(["apt-get", "download", spec], cwd=dest)
    except subprocess.CalledProcessError:
        apt_get_update_if_needed(force=True)
        run(["apt-get", "download", spec], cwd=dest)
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download {spec} produced no .deb")
    return debs[-1]


# --------------------------------------------------------------------------- kernel


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """Unwrap the ELF vmlinux from a bzImage so QEMU can boot it via its PVH note.

    Booting the ELF directly skips the in-guest self-decompression, which under
    TCG halves the time to a usable guest.  Returns None if the payload is not
    recognised, in which case the caller keeps the bzImage.
    """
    candidates: list[int] = []
    if len(bzimage) > 0x250 and bzimage[0x202:0x206] == b"HdrS":
        setup_sects = bzimage[0x1F1] or 4
        protocol = struct.unpack_from("<H", bzimage, 0x206)[0]
        if protocol >= 0x208:
            payload_offset = struct.unpack_from("<I", bzimage, 0x248)[0]
            candidates.append((setup_sects + 1) * 512 + payload_offset)
    for magic in (b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"\x1f\x8b\x08"):
        position = bzimage.find(magic)
        while position != -1 and len(candidates) < 16:
            candidates.append(position)
            position = bzimage.find(magic, position + 1)
    for offset in candidates:
        payload = bzimage[offset:]
        elf = _decompress_any(payload)
        if elf and elf[:4] == b"\x7fELF" and has_pvh_note(elf):
            return elf
    return None


def _decompress_any(payload: bytes) -> bytes | None:
    try:
        if payload.startswith(b"\xfd7zXZ\x00"):
            decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            data = decompressor.decompress(payload)
            return data if decompressor.eof else None
        if payload.startswith(b"\x1f\x8b\x08"):
            return gzip.GzipFile(fileobj=io.BytesIO(payload)).read()
        if payload.startswith(b"\x28\xb5\x2f\xfd"):
            zstd = shutil.which("zstd")
            if not zstd:
                return None
            return subprocess.run([zstd, "-dc"], input=payload, capture_output=True).stdout or None
    except (lzma.LZMAError, OSError, EOFError):
        return None
    return None


def has_pvh_note(elf: bytes) -> bool:
    """QEMU only boots an uncompressed kernel that carries XEN_ELFNOTE_PHYS32_ENTRY (18)."""
    try:
        return _find_pvh_note(elf)
    except (struct.error, IndexError):
        return False


def _find_pvh_note(elf: bytes) -> bool:
    if elf[4] != 2 or elf[5] != 1:  # 64-bit little endian
        return False
    phoff = struct.unpack_from("<Q", elf, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for index in range(phnum):
        base = phoff + index * phentsize
        p_type, _flags, p_offset = struct.unpack_from("<IIQ", elf, base)
        p_filesz = struct.unpack_from("<Q", elf, base + 32)[0]
        if p_type != 4:  # PT_NOTE
            continue
        cursor, end = p_offset, p_offset + p_filesz
        while cursor + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", elf, cursor)
            name = elf[cursor + 12:cursor + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and note_type == 18:
                return True
            cursor += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


# --------------------------------------------------------------------------- modules


def module_name(path: Path) -> str:
    name = path.name
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def read_module(path: Path) -> bytes:
    """busybox insmod cannot read compressed modules, so they are stored plain."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
    return data


def module_depends(data: bytes) -> list[str]:
    match = re.search(rb"(?:^|\0)depends=([^\0]*)\0", data)
    if not match or not match.group(1):
        return []
    return [name.decode().replace("-", "_") for name in match.group(1).split(b",") if name]


def module_aliases(data: bytes) -> list[str]:
    """modinfo alias= entries, so the kernel's request_module("fs-ext2") finds ext4 via modprobe."""
    return [alias.decode() for alias in re.findall(rb"(?:^|\0)alias=([^\0]+)", data)]


@dataclass(frozen=True)
class KernelModule:
    name: str
    data: bytes
    depends: tuple[str, ...]
    load_at_boot: bool = True


def resolve_modules(module_dir: Path, wanted: Iterable[str], on_demand: Iterable[str] = ()) -> list[KernelModule]:
    """Order modules so each follows its dependencies (there is no modules.dep in the guest path)."""
    index = {module_name(p): p for p in module_dir.rglob("*.ko*") if p.is_file()}
    builtin_file = module_dir / "modules.builtin"
    builtin = set()
    if builtin_file.exists():
        builtin = {module_name(Path(line.strip())) for line in builtin_file.read_text().splitlines() if line.strip()}
    ordered: list[KernelModule] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...], at_boot: bool = True) -> None:
        if name in seen or name in builtin:
            return
        path = index.get(name)
        if path is None:
            if name in ESSENTIAL_MODULES:
                raise RuntimeError(f"kernel module {name} not found under {module_dir}")
            log(f"module {name} not available, skipping")
            return
        if name in chain:
            raise RuntimeError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
        data = read_module(path)
        depends = tuple(d for d in module_depends(data) if d not in builtin)
        for dependency in depends:
            visit(dependency, chain + (name,), at_boot)
        seen.add(name)
        ordered.append(KernelModule(name, data, tuple(d for d in depends if d in seen), at_boot))

    for name in wanted:
        visit(name, ())
    for name in on_demand:
        visit(name, (), at_boot=False)
    return ordered


# --------------------------------------------------------------------------- initramfs


class Cpio:
    """Minimal cpio "newc" writer: lets us add /dev/console and root-owned files without root tricks."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.inode = 1000
        self.names: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0), nlink: int = 1) -> None:
        name = name.strip("/") or "."
        if name in self.names:
            return
        self.names.add(name)
        self.inode += 1
        encoded = name.encode() + b"\0"
        header = "070701" + "".join(
            f"{value:08x}"
            for value in (
                self.inode, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0,
            )
        )
        blob = header.encode() + encoded
        blob += b"\0" * (-len(blob) % 4)
        blob += data
        blob += b"\0" * (-len(blob) % 4)
        self.chunks.append(blob)

    def directory(self, name: str, mode: int = 0o755) -> None:
        parts = name.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            self._entry("/".join(parts[:depth]), stat.S_IFDIR | mode, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self.directory(os.path.dirname(name.strip("/")) or ".")
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self.directory(os.path.dirname(name.strip("/")) or ".")
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self.directory(os.path.dirname(name.strip("/")) or ".")
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        blob = b"".join(self.chunks)
        return blob + b"\0" * (-len(blob) % 512)


INIT_SCRIPT = r"""#!/bin/sh
# PID 1 of the qmpctl lab guest: bring up just enough for qemu-ga.
export PATH=@PATH@
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/virtio-ports
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
exec </dev/console >/dev/console 2>&1
hostname lab
echo "lab: init started $(cut -d' ' -f1 /proc/uptime)s"

kver=$(uname -r)
while read -r module; do
    insmod "/lib/modules/$kver/$module.ko" || echo "lab: insmod $module failed"
done < /etc/lab-modules

ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up

# QMP system_powerdown presses the ACPI power button: button.ko turns it into
# an input event, busybox acpid runs /etc/acpi/PWRF/00000080 for it.
acpid -c /etc/acpi -l /run/acpid.log

chown 1000:1000 /home/lab

# guest.py attaches an ext2 image and names its device on the command line
# (lab.datafs=/dev/sda), so guest-fsfreeze-* has a real filesystem to freeze.
datafs=$(sed -n 's/.*lab\.datafs=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$datafs" ]; then
    tries=0
    until [ -b "$datafs" ] || [ "$tries" -gt 200 ]; do
        tries=$((tries + 1))
        sleep 0.05
    done
    if mount -t ext2 "$datafs" /mnt/data; then
        echo "lab: $datafs on /mnt/data at $(cut -d' ' -f1 /proc/uptime)s"
    else
        echo "lab: mounting $datafs on /mnt/data failed"
    fi
fi
# A read-only mount, for "the guest refused the write" cases.
mount -t tmpfs -o ro,size=16k tmpfs /mnt/ro

# Every port named org.qemu.guest_agent.* gets its own qemu-ga: .0 is the one
# QEMU users expect; extra ones let a client talk to the agent directly while
# libvirt holds the connection to .0.
agent_ports() {
    for port in /sys/class/virtio-ports/*; do
        [ -r "$port/name" ] || continue
        name=$(cat "$port/name")
        case "$name" in
            @CHANNEL_PREFIX@*) echo "$name ${port##*/}" ;;
        esac
    done
}

tries=0
until agent_ports | grep -q "^@CHANNEL@ "; do
    tries=$((tries + 1))
    if [ "$tries" -gt 300 ]; then
        echo "lab: no virtio port named @CHANNEL@ after 30s"
        break
    fi
    sleep 0.1
done

run_agent() {
    mkdir -p "/run/qga/$1"
    while true; do
        qemu-ga -m virtio-serial -p "/dev/virtio-ports/$1" -t "/run/qga/$1"
        echo "lab: qemu-ga on $1 exited with $?, restarting"
        sleep 1
    done
}

agent_ports > /run/agent-ports
while read -r name device; do
    until [ -c "/dev/$device" ]; do sleep 0.05; done
    ln -sf "/dev/$device" "/dev/virtio-ports/$name"
    echo "lab: agent on $name (/dev/$device) at $(cut -d' ' -f1 /proc/uptime)s"
    run_agent "$name" </dev/null &
done < /run/agent-ports
echo "lab: ready"

# PID 1 must never exit; waiting also reaps orphans.
while true; do
    wait
    sleep 1
done
"""

SHUTDOWN_SHIM = r"""#!/bin/sh
# qemu-ga runs "/sbin/shutdown -P|-H|-r +0 message"; there is no init system to ask.
action=poweroff
for argument in "$@"; do
    case "$argument" in
        -r|--reboot) action=reboot ;;
        -H|--halt) action=halt ;;
        -P|-h|--poweroff) action=poweroff ;;
    esac
done
sync
umount /mnt/data 2>/dev/null
echo "lab: shutdown $action" > /dev/console
$action -f
"""

POWER_BUTTON_ACTION = r"""#!/bin/sh
# busybox acpid runs this for the ACPI power button (QMP system_powerdown).
echo "lab: power button" > /dev/console
exec /sbin/shutdown -P
"""

CHPASSWD_SHIM = r"""#!/bin/sh
# Debian's busybox-static has no chpasswd.  qemu-ga's guest-set-user-password
# runs `chpasswd [-e]` with "user:password" lines on stdin; -e means the
# password is already hashed.  The password never appears in an argv.
encrypted=
case "$1" in -e|--encrypted) encrypted=1 ;; esac
status=0
while IFS= read -r line; do
    user=${line%%:*}
    password=${line#*:}
    if ! grep -q "^$user:" /etc/shadow; then
        echo "chpasswd: unknown user $user" >&2
        status=1
        continue
    fi
    if [ -z "$encrypted" ]; then
        password=$(printf '%s' "$password" | mkpasswd -m sha512) || exit 1
    fi
    LAB_USER=$user LAB_HASH=$password awk -F: -v OFS=: \
        '$1 == ENVIRON["LAB_USER"] { $2 = ENVIRON["LAB_HASH"] } { print }' /etc/shadow > /etc/shadow.new \
        && chmod 600 /etc/shadow.new && mv /etc/shadow.new /etc/shadow || status=1
done
exit $status
"""


def shared_libraries(binary: Path) -> list[Path]:
    """Everything the dynamic loader will open for binary, plus the loader itself."""
    output = run(["ldd", str(binary)]).stdout
    libraries: list[Path] = []
    for line in output.splitlines():
        line = line.strip()
        match = re.match(r"\S+\s+=>\s+(/\S+)", line) or re.match(r"(/\S+)\s+\(0x", line)
        if match:
            libraries.append(Path(match.group(1)))
        elif "not found" in line:
            raise RuntimeError(f"{binary}: {line}")
    return libraries


def build_initramfs(busybox: Path, agent: Path, modules: list[KernelModule], kernel_release: str) -> bytes:
    archive = Cpio()
    for directory in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run", "tmp",
                      "root", "var", "lib64", "lib/x86_64-linux-gnu", f"lib/modules/{kernel_release}", "mnt",
                      "mnt/data", "mnt/ro", "home/lab", "etc/acpi/PWRF"):
        archive.directory(directory)
    archive.symlink("var/run", "../run")
    archive.char_device("dev/console", 5, 1)
    archive.char_device("dev/null", 1, 3, 0o666)

    archive.file("bin/busybox", busybox.read_bytes(), 0o755)
    applets = run([str(busybox), "--list-full"]).stdout.split()
    for applet in applets:
        directory = os.path.dirname(applet)
        if directory in BUSYBOX_APPLET_DIRS and applet != "bin/busybox":
            archive.symlink(applet, "/bin/busybox")
    for essential in ("bin/sh", "sbin/insmod", "sbin/poweroff", "sbin/reboot", "sbin/halt"):
        archive.symlink(essential, "/bin/busybox")

    archive.file("usr/sbin/qemu-ga", agent.read_bytes(), 0o755)
    for library in shared_libraries(agent):
        archive.file(str(library), library.read_bytes(), 0o755)

    # modules.dep lets `modprobe` work in the guest too; init itself uses the ordered list.
    dependency_lines = []
    for module in modules:
        archive.file(f"lib/modules/{kernel_release}/{module.name}.ko", module.data, 0o644)
        dependency_lines.append(f"{module.name}.ko: " + " ".join(f"{d}.ko" for d in reversed(module.depends)))
    archive.file(f"lib/modules/{kernel_release}/modules.dep", ("\n".join(dependency_lines) + "\n").encode())
    alias_lines = [f"alias {alias} {module.name}" for module in modules for alias in module_aliases(module.data)]
    archive.file(f"lib/modules/{kernel_release}/modules.alias", ("\n".join(alias_lines) + "\n").encode())
    boot_modules = [module.name for module in modules if module.load_at_boot]
    archive.file("etc/lab-modules", ("\n".join(boot_modules) + "\n").encode())

    # "lab" is an ordinary user whose password tests may change (guest-set-user-password).
    archive.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nlab:x:1000:1000:lab user:/home/lab:/bin/sh\n")
    archive.file("etc/group", b"root:x:0:\nlab:x:1000:\n")
    archive.file("etc/shadow", b"root::19000:0:99999:7:::\nlab:!:19000:0:99999:7:::\n", 0o600)
    archive.file("etc/hostname", b"lab\n")
    archive.file("etc/hosts", b"127.0.0.1 localhost lab\n::1 localhost\n")
    archive.file("etc/profile", f"export PATH={GUEST_PATH}\n".encode())
    archive.file("etc/os-release", (
        'NAME="qmpctl lab"\nID=qmpctl-lab\nID_LIKE=debian\nVERSION_ID="1"\n'
        f'PRETTY_NAME="qmpctl lab guest (Debian kernel {kernel_release})"\n'
    ).encode())
    archive.file("init", render_init().encode(), 0o755)
    archive.file("sbin/shutdown", SHUTDOWN_SHIM.encode(), 0o755)
    archive.file("usr/sbin/chpasswd", CHPASSWD_SHIM.encode(), 0o755)
    archive.file("etc/acpi/PWRF/00000080", POWER_BUTTON_ACTION.encode(), 0o755)
    return archive.finish()


def render_init() -> str:
    return (
        INIT_SCRIPT.replace("@PATH@", GUEST_PATH)
        .replace("@CHANNEL_PREFIX@", AGENT_CHANNEL_NAME.rsplit(".", 1)[0] + ".")
        .replace("@CHANNEL@", AGENT_CHANNEL_NAME)
    )


# --------------------------------------------------------------------------- orchestration


def recipe_fingerprint() -> str:
    """Rebuild when this recipe changes, not only when packages do."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:10]


def busybox_binary(scratch: Path) -> Path:
    """Use the installed busybox-static if present; otherwise unpack the package without installing it."""
    if installed_version(BUSYBOX_PACKAGE):
        for candidate in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
            if candidate.exists():
                return candidate
    deb = apt_download(BUSYBOX_PACKAGE, None, scratch / "busybox-deb")
    unpacked = scratch / "busybox-root"
    run(["dpkg", "-x", str(deb), str(unpacked)])
    for candidate in (unpacked / "bin/busybox", unpacked / "usr/bin/busybox"):
        if candidate.exists():
            return candidate
    raise RuntimeError("busybox-static package contained no busybox binary")


def safe_component(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]", "_", text)


def agent_binary_version(agent: Path) -> str:
    """``10.0.2`` from ``QEMU Guest Agent 10.0.2``: keys the cache for a qemu-ga that is not the installed one."""
    out = run([str(agent), "--version"]).stdout
    match = re.search(r"QEMU Guest Agent (\S+)", out)
    if match is None:
        raise RuntimeError(f"{agent} --version said {out!r}")
    return match.group(1)


def build(force: bool = False, agent: Path | None = None) -> tuple[Path, Path]:
    """Return (kernel, initrd) paths, building them only if the cache has no match.

    ``agent`` is the qemu-ga binary to put in the guest (e.g. one unpacked from
    another release's package); the installed package's by default.
    """
    root = cache_root()
    if not root.is_dir():
        root.mkdir(parents=True)
        root.chmod(0o755)  # libvirt's QEMU (user libvirt-qemu) must reach the kernel and initrd
    kernel_package = resolve_kernel_package(root)
    if installed_version(BUSYBOX_PACKAGE):
        busybox_version = installed_version(BUSYBOX_PACKAGE)
    else:
        busybox_version = "dl-" + (_candidate_version(BUSYBOX_PACKAGE) or "unknown")
    agent_version = ensure_installed(AGENT_PACKAGE) if agent is None else agent_binary_version(agent)
    key = "_".join(
        safe_component(part)
        for part in (
            f"{kernel_package.name}={kernel_package.version}",
            f"busybox={busybox_version}",
            f"qga={agent_version}",
            f"recipe={recipe_fingerprint()}",
        )
    )
    target = root / key
    initrd_path = target / "initrd.cpio"
    if not force:
        cached = cached_kernel(target)
        if cached and initrd_path.exists():
            mark_used(target)
            return cached, initrd_path

    # Parallel test workers share the cache: one builds, the others wait and reuse.
    with open(root / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cached = cached_kernel(target)
        if force or not (cached and initrd_path.exists()):
            build_into(target, kernel_package, busybox_version, agent_version, agent or AGENT_BINARY)
            prune_cache(root, keep=KEEP_BUILDS)
    kernel_path = cached_kernel(target)
    if kernel_path is None:
        raise RuntimeError(f"build finished but {target} is incomplete")
    mark_used(target)
    return kernel_path, initrd_path


def build_into(target: Path, kernel_package: KernelPackage, busybox_version: str, agent_version: str,
               agent: Path) -> None:
    """Assemble kernel + initramfs in a staging dir and move it into place whole."""
    started = time.monotonic()
    log(f"building {target.name}")
    with tempfile.TemporaryDirectory(prefix="qmpctl-lab-") as scratch_name:
        scratch = Path(scratch_name)
        deb = apt_download(kernel_package.name, kernel_package.version, scratch / "kernel-deb")
        unpacked = scratch / "kernel-root"
        run(["dpkg", "-x", str(deb), str(unpacked)])
        vmlinuz = next(iter(sorted((unpacked / "boot").glob("vmlinuz-*"))), None)
        if vmlinuz is None:
            raise RuntimeError(f"{deb.name} contains no /boot/vmlinuz-*")
        kernel_release = vmlinuz.name[len("vmlinuz-"):]
        module_dir = unpacked / "lib/modules" / kernel_release
        if not module_dir.is_dir():
            module_dir = unpacked / "usr/lib/modules" / kernel_release
        modules = resolve_modules(module_dir, WANTED_MODULES, ON_DEMAND_MODULES)
        log("modules: " + " ".join(module.name + ("" if module.load_at_boot else "(on demand)") for module in modules))

        bzimage = vmlinuz.read_bytes()
        vmlinux = extract_vmlinux(bzimage)
        kernel_format = "vmlinux-pvh" if vmlinux else "bzImage"
        if vmlinux is None:
            log("could not extract an ELF vmlinux with a PVH note; using the bzImage")

        busybox = busybox_binary(scratch)
        initramfs = build_initramfs(busybox, agent, modules, kernel_release)

        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        kernel_name = "vmlinux" if vmlinux else "bzImage"
        # The bzImage is kept beside the vmlinux: UEFI firmware (OVMF) boots it through its EFI stub, not PVH.
        (staging / "bzImage").write_bytes(bzimage)
        if vmlinux:
            (staging / "vmlinux").write_bytes(vmlinux)
        (staging / "initrd.cpio").write_bytes(initramfs)
        (staging / "manifest.json").write_text(json.dumps({
            "kernel_package": kernel_package.name,
            "kernel_package_version": kernel_package.version,
            "kernel_release": kernel_release,
            "kernel_format": kernel_format,
            "busybox_static": busybox_version,
            "qemu_guest_agent": agent_version,
            "modules": [module.name for module in modules if module.load_at_boot],
            "modules_on_demand": [module.name for module in modules if not module.load_at_boot],
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(time.monotonic() - started, 2),
        }, indent=2) + "\n")
        (staging / "complete").write_text(kernel_name + "\n")
        for path in staging.iterdir():
            path.chmod(0o644)
        # libvirt runs QEMU as libvirt-qemu, which must be able to read these.
        staging.chmod(0o755)
        if target.exists():
            retired = target.with_name(f".retired-{target.name}-{os.getpid()}")
            target.rename(retired)
            shutil.rmtree(retired, ignore_errors=True)
        staging.rename(target)
    log(f"built {kernel_format} + initramfs ({len(initramfs) // 1024} KiB) in {time.monotonic() - started:.1f}s")


def efi_kernel(kernel: Path) -> Path:
    """The bzImage of the build whose kernel :func:`build` returned: what ``-kernel`` takes under UEFI
    firmware (OVMF loads it through its EFI stub; the ELF vmlinux boots only through PVH under SeaBIOS)."""
    return kernel.with_name("bzImage")


def mark_used(target: Path) -> None:
    """The "complete" marker's mtime records last use, so pruning drops what nobody uses."""
    try:
        os.utime(target / "complete")
    except OSError:
        pass


def prune_cache(root: Path, keep: int) -> None:
    """Each build is ~85 MB; keep the most recently used few (other checkouts may want older recipes)."""
    builds = []
    for entry in root.iterdir():
        marker = entry / "complete"
        if entry.is_dir() and not entry.name.startswith(".") and marker.exists():
            builds.append((marker.stat().st_mtime, entry))
    for _, stale in sorted(builds, reverse=True)[keep:]:
        log(f"removing old build {stale.name}")
        shutil.rmtree(stale, ignore_errors=True)
        (root / f".{stale.name}.lock").unlink(missing_ok=True)


def cached_kernel(target: Path) -> Path | None:
    """The "complete" marker names the kernel file and is written last."""
    try:
        kernel = target / (target / "complete").read_text().strip()
    except OSError:
        return None
    return kernel if kernel.name and kernel.exists() else None


def _candidate_version(package: str) -> str | None:
    result = subprocess.run(["apt-cache", "policy", package], text=True, capture_output=True)
    match = re.search(r"Candidate:\s*(\S+)", result.stdout)
    return match.group(1) if match and match.group(1) != "(none)" else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache matches")
    parser.add_argument("--agent", type=Path, metavar="QEMU_GA",
                        help=f"the qemu-ga binary for the guest (default: the installed {AGENT_BINARY})")
    args = parser.parse_args(argv)
    kernel, initrd = build(force=args.force, agent=args.agent)
    print(f"KERNEL={kernel}")
    print(f"INITRD={initrd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
