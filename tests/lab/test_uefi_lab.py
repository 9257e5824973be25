"""A UEFI guest's nightly backup and its drill: OVMF boots the restored disks with the restored variables.

The lab guest boots under OVMF (the bzImage through its EFI stub) and writes
a UEFI variable of its own from Linux (efivarfs); the whole-VM backup holds
the variables (pflash1) beside the disks, and the boot check starts OVMF on
the restored copy, where the guest reads that variable back.
"""

from __future__ import annotations

import json

import pytest

from support.lab import lab_guest_module
from support.uefi import OVMF_CODE, uefi_args

pytestmark = [pytest.mark.lab, pytest.mark.one_qemu]

VARIABLE = "QmpctlDrill-5f0e8a62-3c1b-4d8e-9a7f-2b6c4e1d0a93"
EFIVARS = "/sys/firmware/efi/efivars"
MOUNT_EFIVARS = f"mount -t efivarfs efivarfs {EFIVARS}"
UEFI_BOOT = 150.0
"""OVMF and the lab kernel to a ready agent under TCG: 20 s on a quiet machine, several times that under load."""


def test_restore_boot_check_boots_ovmf_with_the_restored_variables(cli, tmp_path):
    lab = lab_guest_module()
    kernel, initrd = lab.lab_build.build()
    bzimage = lab.lab_build.efi_kernel(kernel)
    guest = lab.LabGuest(tmp_path / "lab", kernel=bzimage, initrd=initrd,
                         extra_qemu_args=uefi_args(tmp_path / "vars.fd"))
    guest.start()
    try:
        guest.wait_agent(timeout=UEFI_BOOT)
        wrote = cli("agent", "exec", "-a", str(guest.agent_path), "--wait-timeout", "60", "--", "sh", "-c",
                    f"{MOUNT_EFIVARS} && printf '\\007\\000\\000\\000nightly' > {EFIVARS}/{VARIABLE}", timeout=90)
        assert wrote.code == 0, wrote
        backed = cli("backup", "-s", str(guest.qmp_path), "--into", str(tmp_path / "b"), "--freeze",
                     "-a", str(guest.agent_path), "--progress", "none")
        assert backed.code == 0, backed
    finally:
        guest.stop()
    reply = json.loads(backed.out)["return"]
    assert sorted(disk["device"] for disk in reply["disks"]) == ["disk0", "fs0", "pflash1"]
    assert [item["device"] for item in reply["skipped"]] == ["pflash0"]
    drill = cli("restore", str(tmp_path / "b"), str(tmp_path / "r"), "--progress", "none", "--boot-check",
                "--boot-timeout", str(UEFI_BOOT), "--qemu-arg=-M", "--qemu-arg=pc", "--qemu-arg=-accel",
                "--qemu-arg=tcg", "--qemu-arg=-m", "--qemu-arg=256", "--qemu-arg=-drive",
                f"--qemu-arg=if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                "--qemu-arg=-kernel", f"--qemu-arg={bzimage}", "--qemu-arg=-initrd", f"--qemu-arg={initrd}",
                "--qemu-arg=-append", "--qemu-arg=console=ttyS0 quiet panic=-1",
                "--check-command", f"{MOUNT_EFIVARS} && tail -c +5 {EFIVARS}/{VARIABLE}", timeout=UEFI_BOOT + 60)
    assert drill.code == 0, drill
    checked = json.loads(drill.out)["return"]["boot-check"]
    assert checked["booted"] and checked["check"]["stdout"] == "nightly", checked
