"""``ddim demo``: a local web page (Gradio, the ``demo`` extra) to sample, compare samplers, interpolate, invert
and edit with one loaded model; the work is ``ddim.demo``, the page ``ddim.demo.ui``."""

from __future__ import annotations

import os
import signal

from .common import Formatter, add_checkpoint, add_device, check_count

__all__ = ["SUBCOMMANDS", "INSTALL"]

INSTALL = 'pip install -e ".[demo]"'
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="a local web page: sample, compare samplers, interpolate, invert and edit",
                       formatter_class=Formatter,
                       description="Serve a web page (Gradio) with four tabs over one loaded model: Sample (with the "
                                   "`ddim sample` command that writes the same PNG), Compare (one x_T, two to four "
                                   "samplers), Interpolate, and Invert and edit. Needs the demo extra: "
                                   f"{INSTALL}. Files go to a temporary folder, removed when the server stops.")
    add_checkpoint(p)
    add_device(p)
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on; only this machine can reach the default (0.0.0.0: every network)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    import importlib.util

    check_count("--port", args.port, 65_535)
    if importlib.util.find_spec("gradio") is None:
        raise ValueError(f"ddim demo needs Gradio, the demo extra: {INSTALL}")
    from ..demo import Model
    from ..demo.outputs import Scratch

    model = Model(args.checkpoint, args.device)
    model.warm_up()
    scratch = Scratch()
    # Gradio's own uploads and copies go into the same folder (it reads the variable when imported)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(scratch.root / "gradio"))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("MPLCONFIGDIR", str(scratch.root / "matplotlib"))  # Gradio imports matplotlib: its cache
    # SIGTERM (a service manager, a test's terminate()) stops the server as Ctrl-C does, so the folder goes too
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        try:
            from ..demo import ui
        except ImportError as e:  # installed, but not importable (a missing dependency of its own)
            raise ValueError(f"ddim demo cannot import Gradio ({e}); reinstall the demo extra: {INSTALL}") from None
        ui.launch(model, scratch, args.host, args.port)
    finally:
        scratch.close()
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


SUBCOMMANDS = (_add_demo,)
