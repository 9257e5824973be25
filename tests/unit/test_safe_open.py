"""safe_open.replacement: a file appears at its name only whole, and nothing of a failed write stays."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from qmpctl.backup import safe_open
from qmpctl.errors import UsageError


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[int]:
    descriptor = safe_open.open_dir(str(tmp_path), str(tmp_path))
    yield descriptor
    os.close(descriptor)


def names(tmp_path: Path) -> list[str]:
    return sorted(path.name for path in tmp_path.iterdir())


def test_the_file_replaces_the_old_one_whole_with_its_mode(tmp_path, folder):
    (tmp_path / "f").write_text("old")
    with safe_open.replacement("f", str(tmp_path / "f"), folder, 0o644) as descriptor:
        safe_open.write_all(descriptor, b"new")
        assert (tmp_path / "f").read_text() == "old"  # not yet: only when the block ends
    assert (tmp_path / "f").read_text() == "new"
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644 & ~current_umask()
    assert names(tmp_path) == ["f"]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path, folder, error):
    (tmp_path / "f").write_text("old")
    with pytest.raises(type(error)):
        with safe_open.replacement("f", str(tmp_path / "f"), folder) as descriptor:
            safe_open.write_all(descriptor, b"half")
            raise error
    assert names(tmp_path) == ["f"] and (tmp_path / "f").read_text() == "old"


def test_without_overwrite_a_file_that_appeared_meanwhile_stays(tmp_path, folder):
    with pytest.raises(UsageError, match="appeared while qmpctl wrote it"):
        with safe_open.replacement("f", str(tmp_path / "f"), folder, overwrite=False) as descriptor:
            safe_open.write_all(descriptor, b"ours")
            (tmp_path / "f").write_text("theirs")
    assert names(tmp_path) == ["f"] and (tmp_path / "f").read_text() == "theirs"


def test_without_overwrite_a_new_name_gets_the_file(tmp_path, folder):
    with safe_open.replacement("f", str(tmp_path / "f"), folder, overwrite=False) as descriptor:
        safe_open.write_all(descriptor, b"ours")
    assert names(tmp_path) == ["f"] and (tmp_path / "f").read_text() == "ours"


def test_a_link_at_the_name_is_replaced_never_followed(tmp_path, folder):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("keep")
    (tmp_path / "f").symlink_to(elsewhere)
    with safe_open.replacement("f", str(tmp_path / "f"), folder) as descriptor:
        safe_open.write_all(descriptor, b"new")
    assert not (tmp_path / "f").is_symlink() and (tmp_path / "f").read_text() == "new"
    assert elsewhere.read_text() == "keep"


def test_write_all_goes_on_after_a_short_write(tmp_path, folder, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda descriptor, data: real_write(descriptor, bytes(data[:3])))
    with safe_open.replacement("f", str(tmp_path / "f"), folder) as descriptor:
        safe_open.write_all(descriptor, b"0123456789")
    assert (tmp_path / "f").read_text() == "0123456789"


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
