"""Reading what a user or a checkpoint hands us, and claiming an output folder.

Every file ddim reads from a checkpoint, a model folder or a data set goes through ``read_bytes``: it must
be a regular file (not a device, a FIFO or a folder; with ``follow_symlinks=False`` not a symbolic link
either) of at most ``limit`` bytes, checked on the open descriptor, so an endless ``/dev/zero`` or a file
swapped in after the check is refused rather than read until memory runs out (``open_regular`` makes the
same check for a reader that takes a file object). ``read_json`` adds a bound on nesting: Python's parser
recurses, and a config is a few levels deep.

``claim_folder`` makes one process the writer of a run folder (``ddim train``, ``ddim eval``): a second
process asking for the same folder is refused in one line while the first runs. The claim is an advisory
``flock`` on ``FOLDER/.ddim-lock``, so the kernel drops it when its process dies, even by SIGKILL, and a
stale lock file never blocks a later run (which says whose claim it takes over).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Union

__all__ = ["open_regular", "read_bytes", "read_json", "json_depth", "regular_file", "claim_folder", "check_folder_free",
           "safetensors_dtypes", "SAFETENSORS_DTYPES", "FLOAT_DTYPES", "LOCK_NAME", "MAX_JSON_BYTES",
           "MAX_JSON_DEPTH"]

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

PathLike = Union[str, os.PathLike]
MAX_JSON_BYTES = 64 << 20   # 100,000 trained betas take ~2.5 MB; 64 MiB is damage, not a config
MAX_JSON_DEPTH = 64         # ddim's configs nest 3 levels, diffusers' 3; deeper is damage or an attack
LOCK_NAME = ".ddim-lock"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def regular_file(path: PathLike, follow_symlinks: bool = True) -> os.stat_result:
    """The ``stat`` of ``path`` if it is a regular file (with ``follow_symlinks=False``: not a symbolic
    link to one either); FileNotFoundError if absent, ValueError naming what it is otherwise."""
    try:
        st = os.stat(path, follow_symlinks=follow_symlinks)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except OSError as e:  # a symbolic-link loop, a name too long, a folder we may not enter
        raise ValueError(f"{path} cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path} is {_kind(st.st_mode)}, not a regular file")
    return st


def open_regular(path: PathLike, follow_symlinks: bool = True) -> BinaryIO:
    """``path`` opened for binary reading if it is a regular file, checked on the open descriptor (module
    docstring); opening never blocks, even on a pipe.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a regular file (or a symbolic link when ``follow_symlinks`` is False).
        OSError: the open itself failed.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)  # O_NONBLOCK: opening a FIFO never waits
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except OSError as e:
        if e.errno == errno.ELOOP and not follow_symlinks:
            raise ValueError(f"{path} is a symbolic link; the files of a checkpoint must lie inside it") from None
        raise
    try:
        st = os.fstat(fd)  # the opened file itself: nothing can be swapped in between check and read
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path} is {_kind(st.st_mode)}, not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_bytes(path: PathLike, limit: int, follow_symlinks: bool = True) -> bytes:
    """The whole content of a regular file of at most ``limit`` bytes (module docstring).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a regular file (or a symbolic link when ``follow_symlinks`` is False), or larger
            than ``limit``.
        OSError: the read itself failed.
    """
    with open_regular(path, follow_symlinks) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise ValueError(f"{path} is too large: {size:,} bytes, at most {limit:,} are read")
        data = f.read(limit + 1)
    if len(data) > limit:  # grew after the fstat
        raise ValueError(f"{path} is too large: over {limit:,} bytes")
    return data


def json_depth(obj) -> int:
    """How deeply lists and objects nest in a parsed JSON value (a scalar: 0), counted without recursion."""
    depth, stack = 0, [(obj, 1)]
    while stack:
        value, d = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is not None:
            depth = max(depth, d)
            stack.extend((c, d + 1) for c in children)
    return depth


def read_json(path: PathLike, limit: int = MAX_JSON_BYTES, follow_symlinks: bool = True) -> dict:
    """The JSON object in ``path``, read with ``read_bytes`` and nested at most ``MAX_JSON_DEPTH`` deep.

    Raises:
        FileNotFoundError: no such file.
        ValueError: what ``read_bytes`` refuses, text that is not JSON, nesting deeper than the bound, or
            a value other than an object.
    """
    data = read_bytes(path, limit, follow_symlinks)
    try:
        obj = json.loads(data)
    except RecursionError:
        raise ValueError(f"{path} nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({' '.join(str(e).split())})") from None
    if json_depth(obj) > MAX_JSON_DEPTH:
        raise ValueError(f"{path} nests deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(obj, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(obj).__name__}")
    return obj


# The dtypes torch reads from a safetensors file (safetensors' names).
SAFETENSORS_DTYPES = ("BOOL", "U8", "I8", "I16", "I32", "I64", "F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2")
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2")  # what network weights may be stored as
MAX_SAFETENSORS_HEADER = 100 << 20  # safetensors' own bound


def safetensors_dtypes(path: PathLike) -> dict[str, str]:
    """Tensor name -> dtype name from a safetensors file's header, read without loading any tensor.

    Raises:
        ValueError: a header that is not safetensors', or a dtype torch cannot hold (named, with the tensor).
    """
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= MAX_SAFETENSORS_HEADER:
            raise ValueError(f"cannot read {path} as safetensors: corrupted or truncated (its header length {n} is out of range)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (RecursionError, ValueError, UnicodeDecodeError):
        raise ValueError(f"cannot read {path} as safetensors: corrupted or truncated (its header is not a JSON object)") from None
    if not isinstance(header, dict):
        raise ValueError(f"cannot read {path} as safetensors: corrupted or truncated (its header is not a JSON object)")
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {dtype!r}, which torch cannot hold here; allowed: "
                             f"{', '.join(SAFETENSORS_DTYPES)}")
        out[name] = dtype
    return out


# ---------------------------------------------------------------------------------------- folder claims

def _flock(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` without waiting; False if another open file holds it."""
    if fcntl is None:  # no flock (Windows): runs are not serialised there
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _holder(lock: Path) -> str:
    try:
        text = read_bytes(lock, 4096).decode("utf-8", "replace").strip()
    except (OSError, ValueError):
        text = ""
    return text or "another process"


def _busy(folder: Path, lock: Path) -> ValueError:
    return ValueError(f"{folder} is in use by {_holder(lock)}; wait for it to finish, or choose another output "
                      "folder")


def _open_lock(lock: Path, create: bool) -> Optional[int]:
    """A descriptor of the lock file (None if absent and not ``create``), refused unless a regular file: a
    pipe, a folder or a link in its place must not block or redirect the claim."""
    flags = os.O_RDWR | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(lock, flags | (os.O_CREAT if create else 0), 0o666)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ValueError(f"{lock} cannot be used as the folder's lock file ({e.strerror}); remove it") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{lock} is {_kind(os.stat(lock, follow_symlinks=False).st_mode)}, not the folder's lock file; "
                         "remove it")
    return fd


def check_folder_free(folder: PathLike) -> None:
    """Refuse ``folder`` if another process holds its claim (``claim_folder``); creates nothing."""
    folder = Path(folder)
    lock = folder / LOCK_NAME
    if not (os.path.lexists(lock) and folder.is_dir()):
        return
    fd = _open_lock(lock, create=False)
    if fd is None:
        return
    try:
        if not _flock(fd):
            raise _busy(folder, lock)
    finally:
        os.close(fd)  # closing releases the probe's own lock


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _note_stale(fd: int, folder: Path) -> None:
    """Say whose claim this run takes over: a lock file that still names a holder although its lock was free
    was left by a run that ended without releasing the folder (killed), and is harmless."""
    left = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() if fcntl is not None else ""
    if left:
        warnings.warn(f"{folder} was still marked as used by {left}, which ended without releasing it (killed?); "
                      "taking it over", UserWarning, stacklevel=4)


@contextlib.contextmanager
def claim_folder(folder: PathLike, what: str) -> Iterator[Path]:
    """Be the only writer of ``folder`` for the ``with`` block (module docstring): creates it (and missing
    parents) if needed, and on the way out removes the lock file, and what it created if the block left
    nothing else there, so a run refused on the way leaves nothing behind.

    Args:
        folder: the output folder.
        what: how a refused process names the holder, e.g. "ddim train".
    Raises:
        ValueError: another process holds the claim (named by its pid and ``what``), or the lock file's
            place holds something other than a regular file.
    """
    folder = Path(folder)
    created, p = [], folder
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    for _ in range(10):  # a holder that just finished unlinks the file: lock the one at the path
        fd = _open_lock(lock, create=True)
        if not _flock(fd):
            os.close(fd)
            raise _busy(folder, lock)
        if _same_file(fd, lock):
            break
        os.close(fd)
    else:
        raise ValueError(f"{lock} keeps changing under this process; is another one starting in {folder}?")
    try:
        _note_stale(fd, folder)
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} ({what})\n".encode())
        yield folder
    finally:
        # unlink while still holding the lock, then release: a newcomer either meets the held file (and is
        # refused) or none (and makes its own), never an orphan it could lock beside a new holder
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)
        if created and not any(folder.iterdir()):
            for q in created:  # innermost first; stops at the first that is not empty
                try:
                    q.rmdir()
                except OSError:
                    break
