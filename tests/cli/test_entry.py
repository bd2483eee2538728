"""The console script's quick exit (`ddim.cli.quick_exit`): the exit code, atexit handlers and buffered
output survive it; a running non-daemon thread makes it a normal exit; `python -m ddim` goes through it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
    calls = []
    monkeypatch.setattr(ddim.cli.atexit, "_run_exitfuncs", lambda: calls.append("atexit"))
    monkeypatch.setattr(ddim.cli.os, "_exit", lambda code: calls.append(("exit", code)))
    ddim.cli.quick_exit(5)
    assert calls == ["atexit", ("exit", 5)]


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
