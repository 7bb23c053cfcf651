"""Results are written atomically: a failed write leaves the old file whole and no debris."""
import os

import pytest

from scoresde.io import atomic_write


def test_atomic_write_replaces_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "result.csv"
    atomic_write(target, "a,b\n1,2\n")
    atomic_write(target, b"a,b\n3,4\n")
    assert target.read_text() == "a,b\n3,4\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.csv"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "result.csv"
    atomic_write(target, "old\n")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, "new\n")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.csv"]
