"""--dry-run tells the truth: requests that depend on the VM are printed as a labelled plan.

--dry-run connects to nothing, so it cannot know the VM's drive names, free
ids, or whether QEMU takes drive-backup; it says so instead of printing
requests a run might never send.
"""

from __future__ import annotations

import json

import pytest

from support.disks import make_image


def dry(cli, tmp_path, *args: str):
    result = cli(*args[:1], "-s", str(tmp_path / "absent.sock"), *args[1:], "--dry-run")
    assert result.code == 0, result
    (line,) = result.out.splitlines()
    return json.loads(line)


def test_backup_dry_run_is_a_plan_naming_the_blockdev_flow(cli, tmp_path):
    shown = dry(cli, tmp_path, "backup", "vd0", str(tmp_path / "b.qcow2"))
    assert [request["execute"] for request in shown["plan"]] == ["drive-backup"]
    assert shown["plan"][0]["arguments"]["device"] == "vd0"
    assert "a plan" in shown["note"] and "blockdev-backup" in shown["note"] and "backup-vd0-2" in shown["note"]


def test_backup_no_wait_dry_run_shows_the_blockdev_flow_it_takes(cli, tmp_path):
    shown = dry(cli, tmp_path, "backup", "vd0", str(tmp_path / "b.qcow2"), "--no-wait", "--job-id", "nightly")
    (request,) = shown["plan"]
    assert request["execute"] == "blockdev-backup" and request["arguments"]["target"] == "nightly-target"
    assert "always takes this flow" in shown["note"] and "job id" not in shown["note"]


@pytest.mark.parametrize("args, phrase", [([], "first free diskN"),
                                          (["--id", "data0", "--bus", "scsi"], "virtio-scsi-pci")])
def test_hotplug_dry_run_that_depends_on_the_vm_is_a_plan(cli, tmp_path, args, phrase):
    image = make_image(tmp_path / "extra.qcow2")
    shown = dry(cli, tmp_path, "hotplug-disk", str(image), *args)
    assert [request["execute"] for request in shown["plan"]] == ["blockdev-add", "device_add"]
    assert phrase in shown["note"]


@pytest.mark.parametrize("args, first", [(["unplug-disk", "disk1"], "device_del"),
                                         (["jobs", "--dismiss", "nightly"], "job-dismiss"),
                                         (["jobs", "--cancel", "nightly"], "job-cancel")])
def test_commands_of_several_requests_show_a_plan(cli, tmp_path, args, first):
    shown = dry(cli, tmp_path, *args)
    assert [request["execute"] for request in shown["plan"]] == [first]
    assert "blockdev-del" in shown["note"]


def test_a_plain_jobs_listing_is_still_its_one_request(cli, tmp_path):
    assert dry(cli, tmp_path, "jobs") == {"execute": "query-jobs"}


def test_whole_vm_and_fleet_dry_runs_say_the_disks_are_picked_at_run_time(cli, tmp_path):
    whole = dry(cli, tmp_path, "backup", "--into", str(tmp_path / "b"), "--exclude", "cd0")
    assert [request["execute"] for request in whole["plan"]] == ["transaction"]
    assert "DISK stands for each disk the run picks" in whole["note"]
    fleet = cli("backup", "-s", str(tmp_path / "*.sock"), "--into", str(tmp_path / "b"), "--dry-run")
    assert fleet.code == 0, fleet
    shown = json.loads(fleet.out)
    assert [request["execute"] for request in shown["plan"]] == ["query-name", "transaction"]
    assert "DIR/<vm>/" in shown["note"] and not (tmp_path / "b").exists()


def test_backup_options_of_whole_vms_are_checked_before_connecting(cli, tmp_path):
    twice = cli("backup", "-s", str(tmp_path / "absent.sock"), "--into", str(tmp_path / "b"), "--exclude", "a",
                "--exclude", "a")
    assert twice.code == 2 and "once" in twice.err
    alone = cli("backup", "-s", str(tmp_path / "absent.sock"), "vd0", str(tmp_path / "x.qcow2"), "--metrics",
                str(tmp_path / "m.prom"))
    assert alone.code == 2 and "--metrics" in alone.err and "only with --into" in alone.err
    agent = cli("backup", "-s", str(tmp_path / "a.sock"), "-s", str(tmp_path / "b.sock"), "--into",
                str(tmp_path / "b"), "--freeze", "-a", str(tmp_path / "qga.sock"))
    assert agent.code == 2 and "-d DOMAIN" in agent.err
