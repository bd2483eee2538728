"""`ddim demo`'s refusals before it serves anything: one `ddim: error:` line and exit code 2. The page itself is
tested in a browser (tests/demo/test_browser.py)."""

import importlib.util

import pytest

from ddim.cli import main
from ddim.cli.demo import INSTALL


def test_without_gradio_one_line_names_the_install_command(monkeypatch, capsys, tmp_path):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else find_spec(name, *a))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert err == f"ddim: error: ddim demo needs Gradio, the demo extra: {INSTALL}\n"
    assert INSTALL == 'pip install -e ".[demo]"' and not any(tmp_path.iterdir())  # refused before any work


@pytest.mark.parametrize("argv, message", [
    (["--port", "70000"], "--port must be an integer in [1, 65,535], got 70000"),
    (["--port", "http"], "argument --port: invalid int value: 'http'"),
    (["--checkpoint", "/nonexistent/run"], "/nonexistent/run"),
    (["--device", "tpu"], "unknown device 'tpu'"),
])
def test_bad_flags_are_one_line(argv, message, capsys, monkeypatch):
    find_spec = importlib.util.find_spec  # as if Gradio were there: the flags are refused before it is imported
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "gradio" else
                        find_spec(name, *a))
    assert main(["demo", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ddim: error: ") and message in err and err.count("\n") == 1
