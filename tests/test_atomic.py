"""ddim.atomic: a link in a file's place is replaced, not written through (unless the caller named that path
itself, and then only a regular file behind it is replaced); any name the file system takes works."""

from __future__ import annotations

import os
import stat

import pytest

from ddim.atomic import atomic_write


def _put(data: bytes):
    return lambda f: f.write(data)


def test_a_link_in_the_files_place_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "outside" / "notes.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"precious data")
    out = tmp_path / "out"
    out.mkdir()
    (out / "chunk.npy").symlink_to(victim)
    (out / "new.npy").symlink_to(tmp_path / "outside" / "created_by_ddim.npy")  # leads nowhere yet
    for name in ("chunk.npy", "new.npy"):
        atomic_write(out / name, _put(b"new bytes"))
        assert not (out / name).is_symlink() and (out / name).read_bytes() == b"new bytes"
    assert victim.read_bytes() == b"precious data"
    assert sorted(p.name for p in victim.parent.iterdir()) == ["notes.txt"]  # nothing created outside


def test_a_followed_link_replaces_only_a_regular_file(tmp_path):
    target = tmp_path / "real.png"
    target.write_bytes(b"old")
    (tmp_path / "link.png").symlink_to(target)
    atomic_write(tmp_path / "link.png", _put(b"new"), follow_symlinks=True)  # a path the user named
    assert (tmp_path / "link.png").is_symlink() and target.read_bytes() == b"new"
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "to-pipe.png").symlink_to(tmp_path / "pipe")
    with pytest.raises(ValueError, match="to-pipe.png: it links to .*pipe, which is not a regular file"):
        atomic_write(tmp_path / "to-pipe.png", _put(b"new"), follow_symlinks=True)
    assert stat.S_ISFIFO(os.stat(tmp_path / "pipe").st_mode)  # as root, /dev/zero would have become a file


def test_a_name_that_is_not_utf8_is_written(tmp_path):
    path = tmp_path / os.fsdecode(b"\xff\xfe-" + b"\xe9" * 240 + b".npy")  # Latin-1 bytes, 245 of them
    atomic_write(path, _put(b"x"))
    assert path.read_bytes() == b"x" and not list(tmp_path.glob(".*.tmp"))
