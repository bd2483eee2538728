"""The ``ddim`` command line: one subcommand per task, each parse -> config -> library call.

Adding a subcommand: in a module of this package, write ``_add_NAME(subparsers)`` that builds its parser
(with ``common.Formatter``, and the shared flags from ``common``) and sets ``func=_run_NAME``, and list it
in the module's ``SUBCOMMANDS``. Errors a user can fix (bad values, missing files, corrupted checkpoints)
come out as one line ``ddim: error: ...`` on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import os
import sys
import threading
import warnings
from typing import Optional, Sequence

from . import demo, distill, eval as eval_, inversion, sample, train
from .common import EXIT_FAILED, EXIT_USAGE, Formatter, Parser, UsageError

__all__ = ["main", "entry", "build_parser"]

SUBCOMMANDS = (*train.SUBCOMMANDS, *sample.SUBCOMMANDS, *inversion.SUBCOMMANDS, *eval_.SUBCOMMANDS,
               *distill.SUBCOMMANDS, *demo.SUBCOMMANDS)


def build_parser() -> argparse.ArgumentParser:
    """The ``ddim`` parser with every subcommand registered."""
    from .. import __version__

    parser = Parser(prog="ddim", description="Diffusion models: DDPM training, DDIM sampling.",
                    formatter_class=Formatter)
    parser.add_argument("--version", action="version", version=f"ddim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def _is_allocation_failure(e: BaseException) -> bool:
    text = str(e)
    return any(s in text for s in ("bad_alloc", "can't allocate memory", "out of memory", "DefaultCPUAllocator"))


def _fail(message: str, code: int) -> int:
    print(f"ddim: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``ddim`` console script; returns the exit code."""
    from ..allocator import keep_freed_memory

    keep_freed_memory()   # CPU speed: see ddim.allocator

    with warnings.catch_warnings():  # restores the default display when main() returns
        warnings.showwarning = _show_warning
        return _run(argv)


def entry() -> None:
    """The ``ddim`` console script and ``python -m ddim``: ``main()``, then a quick exit with its code (also
    after argparse's own exits: --help, --version)."""
    try:
        code = main()
    except SystemExit as e:  # argparse's: None or an int; anything else (a message) exits as Python would
        if e.code is not None and not isinstance(e.code, int):
            raise
        code = e.code or 0
    quick_exit(code)


def quick_exit(code: int) -> None:
    """Exit with ``code`` without tearing the interpreter down.

    After ``import torch``, interpreter teardown (module and C++ static destruction) takes about 0.3 s on
    a 2-core CPU, a fifth of a default ``ddim sample``, and frees nothing the OS would not. The atexit
    handlers still run and the standard streams (Python's and C's) are flushed; every file the commands
    write is closed (and renamed into place) before they return. A normal exit instead while a non-daemon
    thread still runs (the interpreter would wait for it), under a profiler, tracer or coverage (they
    report at teardown), for a code that is not an int, or with DDIM_QUICK_EXIT=0.
    """
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if (not isinstance(code, int) or any(t.is_alive() for t in others) or sys.gettrace() or sys.getprofile()
            or "coverage" in sys.modules or os.environ.get("DDIM_QUICK_EXIT", "1") == "0"):
        sys.exit(code)
    atexit._run_exitfuncs()
    code = _flush_streams(code)
    os._exit(code)


def _flush_streams(code: int) -> int:
    """Flush stdout and stderr as a normal exit would; a write that fails there fails the command (exit 120,
    Python's own code for it), with one line on stderr unless the reader just closed the pipe."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except BrokenPipeError:  # e.g. `ddim ... | head`: the reader has what it wanted
            code = code or 120
        except (OSError, ValueError) as e:
            with contextlib.suppress(OSError):
                os.write(2, f"ddim: error: could not write {getattr(stream, 'name', 'output')}: {e}\n".encode())
            code = code or 120
    with contextlib.suppress(Exception):  # C's stdio buffers (os._exit skips their flush); POSIX only
        ctypes.CDLL(None).fflush(None)
    return code


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each, like errors (no source path or code line)."""
    text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
    text = text[len("ddim: "):] if text.startswith("ddim: ") else text
    print(f"ddim: warning: {text}", file=file or sys.stderr)


def _run(argv: Optional[Sequence[str]]) -> int:
    from ..checkpoint import NonFiniteError

    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as e:
        return _fail(str(e), EXIT_USAGE)
    except NonFiniteError as e:
        return _fail(str(e), EXIT_FAILED)
    except (ValueError, OSError) as e:  # bad values, missing/unwritable paths, corrupted checkpoints
        return _fail(str(e), EXIT_USAGE)
    except MemoryError as e:
        return _fail(f"out of memory ({e or 'the request is too large'}); lower --batch-size or the sizes", EXIT_USAGE)
    except RuntimeError as e:  # torch's allocator reports a failed allocation as a RuntimeError
        if not _is_allocation_failure(e):
            raise
        return _fail(f"out of memory: {str(e).splitlines()[0][:200]}; lower --batch-size or the sizes", EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
