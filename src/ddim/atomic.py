"""Atomic file output: every file ddim writes for a user appears whole or not at all.

``atomic_write(path, write)`` calls ``write(f)`` on a temporary sibling of ``path`` (same folder, so the
final rename never crosses file systems), fsyncs it and renames it over ``path``. If anything fails —
the writer, a full disk, a kill — the temporary file is removed and a file already at ``path`` is left
byte for byte as it was. Temporary names start with ``.`` and end in ``.tmp`` (``TEMP_GLOB``), so a
crash leftover is recognisable and never mistaken for an output.

A symbolic link at ``path`` is replaced, not written through, unless the caller named that path itself
(``follow_symlinks``): a link planted where ddim names a file (a sample chunk, a report inside an output
folder) must not redirect the write to a file elsewhere.
"""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path
from typing import Callable, Union

__all__ = ["atomic_write", "TEMP_GLOB"]

TEMP_GLOB = ".*.tmp"


def atomic_write(path: Union[str, Path], write: Callable, fsync: bool = True, follow_symlinks: bool = False) -> Path:
    """Write ``path`` through ``write(binary file)`` atomically (module docstring); returns the path.

    ``fsync=False`` skips flushing to the device (many small files, e.g. one PNG per sample): the rename
    still never exposes a partial file, but a power loss may lose the newest ones.
    ``follow_symlinks=True`` (for a path the user named): a symbolic link at ``path`` stays and the regular
    file it points to is replaced; otherwise the link itself is replaced.

    Raises:
        OSError: any OSError (a missing or unwritable folder, a full disk, the writer's own), re-raised
            with a message naming ``path`` and the original errno; other errors of ``write`` propagate
            unchanged. Either way nothing at ``path`` changed.
        ValueError: a followed link leads to something other than a regular file (a device, a pipe).
    """
    path = Path(path)
    target = _link_target(path) if follow_symlinks and path.is_symlink() else path
    # the temporary name stays within NAME_MAX (255 bytes) for any name the file system accepts, UTF-8 or not
    stem = os.fsdecode(os.fsencode(target.name)[:200])
    tmp = target.with_name(f".{stem}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        # O_EXCL: never reuse a stranger's file; 0o666 & umask: the permissions a plain open() gives
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError):
            err = OSError(f"cannot write {path}: {e.strerror or e}")
            err.errno = e.errno
            raise err from None
        raise
    return path


def _link_target(link: Path) -> Path:
    """Where a followed link leads: a regular file or nothing yet. Replacing a device or a pipe there would
    destroy it (as root, /dev/zero), not write to it."""
    target = Path(os.path.realpath(link))
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as e:  # a loop: nothing sensible to write to
        raise OSError(f"cannot write {link}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"cannot write {link}: it links to {target}, which is not a regular file")
    return target
