"""The console script's quick exit (`ddim.cli.quick_exit`): the exit code, atexit handlers and buffered
output survive it, and a failed write fails the command; a running non-daemon thread, a profiler, tracer or
DDIM_QUICK_EXIT=0 make it a normal exit; `python -m ddim` takes it only as the program itself."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import ddim.cli
from tests.subprocesses import ddim_env, run_ddim


def _python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in ddim_env().items() if k != "PYTHONUNBUFFERED"}  # block-buffered pipes, as usual
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_quick_exit_keeps_code_atexit_and_buffered_output(tmp_path):
    marker = tmp_path / "atexit"
    p = _python("import atexit, sys, ddim.cli\n"
                f"atexit.register(lambda: open({str(marker)!r}, 'w').write('ran'))\n"
                "sys.stdout.write('buffered out'); sys.stderr.write('buffered err')\n"
                "ddim.cli.quick_exit(3)\n"
                "print('not reached')")
    assert p.returncode == 3
    assert p.stdout == "buffered out" and p.stderr == "buffered err"
    assert marker.read_text() == "ran"


def test_quick_exit_waits_for_a_non_daemon_thread(tmp_path):
    done = tmp_path / "thread"
    p = _python("import threading, time, ddim.cli\n"
                f"def work(): time.sleep(0.5); open({str(done)!r}, 'w').write('done')\n"
                "threading.Thread(target=work).start()\n"
                "ddim.cli.quick_exit(4)")
    assert p.returncode == 4
    assert done.read_text() == "done"   # os._exit would have killed the thread before it wrote


def test_quick_exit_in_process_path(monkeypatch):
    """The order inside one process: atexit handlers, then the flush, then os._exit with the code."""
    import threading

    # what would make it a normal exit is not this test's subject: a non-daemon thread an earlier test left
    # behind (inductor's pool), the switch, coverage (pytest-cov) or a debugger's tracer
    if sys.gettrace() is not None:
        pytest.skip("under a tracer quick_exit is a normal exit by design")
    monkeypatch.setattr(ddim.cli.threading, "enumerate", lambda: [threading.main_thread()])
    monkeypatch.delenv("DDIM_QUICK_EXIT", raising=False)
    monkeypatch.delitem(sys.modules, "coverage", raising=False)
    calls = []
    monkeypatch.setattr(ddim.cli.atexit, "_run_exitfuncs", lambda: calls.append("atexit"))
    monkeypatch.setattr(ddim.cli.os, "_exit", lambda code: calls.append(("exit", code)))
    ddim.cli.quick_exit(5)
    assert calls == ["atexit", ("exit", 5)]


@pytest.mark.parametrize("why", ["profiler", "tracer", "not an int", "DDIM_QUICK_EXIT=0"])
def test_quick_exit_is_a_normal_exit_when_someone_is_watching(monkeypatch, why):
    """Under a profiler, tracer or coverage (they report at teardown), with a code os._exit cannot take, or when
    switched off, it is sys.exit: the caller gets SystemExit and os._exit is never called."""
    monkeypatch.setattr(ddim.cli.os, "_exit", lambda code: pytest.fail("os._exit was called"))
    monkeypatch.setattr(ddim.cli.atexit, "_run_exitfuncs", lambda: pytest.fail("atexit handlers were run"))
    code = None if why == "not an int" else 6
    if why == "DDIM_QUICK_EXIT=0":
        monkeypatch.setenv("DDIM_QUICK_EXIT", "0")
    hook = {"profiler": sys.setprofile, "tracer": sys.settrace}.get(why)
    try:
        if hook is not None:
            hook(lambda *a: None)
        with pytest.raises(SystemExit) as e:
            ddim.cli.quick_exit(code)
    finally:
        if hook is not None:
            hook(None)
    assert e.value.code == code


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_quick_exit_fails_a_command_whose_output_cannot_be_written():
    """stdout on a full disk: the command fails with Python's code for it (120) and one line, not rc 0 and
    lost output."""
    with open("/dev/full", "w") as dev_full:
        full = subprocess.run([sys.executable, "-c", "import ddim.cli; print('x' * 10); ddim.cli.quick_exit(0)"],
                              stdout=dev_full, stderr=subprocess.PIPE, text=True, timeout=120,
                              env={k: v for k, v in ddim_env().items() if k != "PYTHONUNBUFFERED"})
    assert full.returncode == 120
    assert full.stderr.strip().splitlines() == ["ddim: error: could not write <stdout>: [Errno 28] No space left "
                                                "on device"]


def test_quick_exit_after_the_reader_closed_the_pipe():
    """`ddim ... | head`: the reader left before the flush; exit 120 (as Python's own exit gives) without a
    message, since stderr may be that pipe too."""
    env = {k: v for k, v in ddim_env().items() if k != "PYTHONUNBUFFERED"}
    p = subprocess.Popen([sys.executable, "-c", "import time, ddim.cli; print('x' * 10); time.sleep(1); "
                          "ddim.cli.quick_exit(0)"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.close()
    err = p.stderr.read()
    p.stderr.close()
    assert p.wait(timeout=120) == 120 and err == b""


@pytest.mark.parametrize("argv0, quick", [("__main__", True), ("-c", False), ("ddim", False)])
def test_python_m_ddim_quick_exits_only_as_the_program(monkeypatch, argv0, quick):
    """`python -m ddim` (argv[0] is ddim/__main__.py) takes entry(); under cProfile/pdb (argv[0] the module name)
    or a runpy host (argv[0] '-c') it is sys.exit(main()), so the caller goes on."""
    import os
    import runpy

    main_file = os.path.join(os.path.dirname(ddim.cli.__file__), os.pardir, "__main__.py")
    calls = []
    monkeypatch.setattr(ddim.cli, "entry", lambda: calls.append("entry"))
    monkeypatch.setattr(ddim.cli, "main", lambda: calls.append("main") or 0)
    monkeypatch.setattr(sys, "argv", [main_file if argv0 == "__main__" else argv0])
    if quick:
        runpy.run_module("ddim", run_name="__main__")
    else:
        with pytest.raises(SystemExit):
            runpy.run_module("ddim", run_name="__main__")
    assert calls == (["entry"] if quick else ["main"])


@pytest.mark.parametrize("argv, code", [(["--version"], 0), (["--help"], 0), (["no-such-command"], 2)])
def test_entry_quick_exits_after_argparse_exits(monkeypatch, argv, code):
    """--help and --version end in argparse's SystemExit; entry() turns it into the same quick exit."""
    exits = []
    monkeypatch.setattr(ddim.cli, "quick_exit", exits.append)
    monkeypatch.setattr(sys, "argv", ["ddim", *argv])
    ddim.cli.entry()
    assert exits == [code]


def test_python_m_ddim_exits_through_entry(tmp_path):
    """A usage error keeps exit code 2 and its one line; a finished command writes its file and exits 0."""
    bad = run_ddim(["sample", "--n", "0", "--out", str(tmp_path / "x.png")])
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "ddim: error: --n must be an integer in [1, 1,000,000], got 0"]
    ok = run_ddim(["sample", "--n", "2", "--quiet", "--out", str(tmp_path / "x.png")])
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "x.png").stat().st_size > 0


def test_console_script_is_entry():
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert re.findall(r'^(\w+) = "([\w.:]+)"$', section, re.M) == [("ddim", "ddim.cli:entry")]
