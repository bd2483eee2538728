"""`ddim demo` in a real browser: headless Chromium driven by Selenium against `ddim demo` on a free local port.

The Sample tab's first grid must be the PNG `ddim sample` writes with the command the page offers, pixel for
pixel; Compare, Interpolate and Invert and edit run once each; a bad upload and steps out of range show a
message in the page; a second request waits in the queue. With DDIM_UPDATE_DOCS=1 each tab's screenshot is
written to docs/demo_*.png (the README shows them). Skips, naming the install command, where Gradio,
Selenium or Chromium is missing.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from subprocesses import ROOT, ddim_env

pytestmark = pytest.mark.slow

INSTALL = 'pip install -e ".[demo,test]" && apt-get install chromium chromium-driver'
DOCS = ROOT / "docs"
TILE = 28 + 2  # a grid's tile: the image and 2 pixels of padding


def _browser():
    """(chromium, chromedriver) paths, or skip naming what is missing and the install command."""
    missing = [m for m in ("gradio", "selenium") if importlib.util.find_spec(m) is None]
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    missing += [name for name, path in (("chromium", chromium), ("chromedriver", driver)) if path is None]
    if missing:
        pytest.skip(f"the browser test needs {', '.join(missing)}: {INSTALL}")
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`ddim demo` on a free port, with its own empty working folder, home and temporary folder; after the
    tests it is stopped, and all three must be empty: nothing was written outside the temporary folder, which
    the server removed on the way out."""
    _browser()
    root = tmp_path_factory.mktemp("demo")
    dirs = {name: root / name for name in ("cwd", "home", "tmp")}
    for d in dirs.values():
        d.mkdir()
    env = {**ddim_env(), "HOME": str(dirs["home"]), "TMPDIR": str(dirs["tmp"])}
    env.pop("GRADIO_TEMP_DIR", None)
    port = _free_port()
    log = open(root / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "ddim", "demo", "--port", str(port)], cwd=dirs["cwd"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.seek(0)
                pytest.fail(f"ddim demo did not start:\n{log.read()[-3000:]}")
            time.sleep(0.5)
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    log.seek(0)
    text = log.read()
    assert "Traceback" not in text, text[-3000:]
    for name, d in dirs.items():
        assert not any(d.iterdir()), f"ddim demo left files in its {name}: {sorted(map(str, d.rglob('*')))[:10]}"


@pytest.fixture(scope="module")
def browser(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = _browser()
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.binary_location = chromium
    d = webdriver.Chrome(service=Service(driver), options=options)
    yield d
    d.quit()


@pytest.fixture
def page(browser, server):
    """The demo freshly loaded: (driver, helpers)."""
    browser.set_window_size(1400, 1000)
    browser.get(server)
    _wait(browser, lambda: browser.find_elements("id", "sample-run"), 60)
    return browser


def _wait(d, condition, timeout: float = 120, every: float = 0.05):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(d, timeout, poll_frequency=every).until(lambda _: condition())


def _tab(d, name: str) -> None:
    next(b for b in d.find_elements("css selector", "button[role=tab]") if b.text == name).click()


def _run(d, tab: str, button: str, image: str) -> np.ndarray:
    """In ``tab``, click ``button`` and wait for the picture in component ``image``: its pixels."""
    _tab(d, tab)
    d.find_element("id", button).click()
    _wait(d, lambda: _image_src(d, image))
    return _pixels(_image_src(d, image))


def _image_src(d, elem_id: str):
    """The src of the image shown in component ``elem_id``, or None."""
    return d.execute_script(f"const i = document.querySelector('#{elem_id} img'); return i ? i.src : null;")


def _wait_watching_progress(d, condition) -> set:
    """Wait for ``condition``, collecting the progress texts the page shows on the way ("12/80 steps", "queue: 1/1")."""
    seen = set()

    def done() -> bool:
        seen.update(d.execute_script(
            "return Array.from(document.querySelectorAll('.progress-text')).map(e => e.textContent.trim())"))
        return bool(condition())

    _wait(d, done, every=0.1)
    return seen


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def _pixels(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(_fetch(url))))


def _text(d, elem_id: str) -> str:
    return d.execute_script(f"return document.getElementById('{elem_id}').innerText")


def _refused(d, button: str, text: str) -> None:
    """Click ``button``: the page must say ``text`` in an error message, and show no stack trace."""
    d.find_element("id", button).click()
    script = "return Array.from(document.querySelectorAll('.toast-body')).map(e => e.innerText)"
    _wait(d, lambda: any(text in t for t in d.execute_script(script)), 60)
    assert "Traceback" not in d.find_element("tag name", "body").text


def _screenshot(d, name: str) -> None:
    """docs/demo_NAME.png, the whole page, when DDIM_UPDATE_DOCS is set."""
    if not os.environ.get("DDIM_UPDATE_DOCS"):
        return
    # the window's height includes the browser's own bars: add them to the page's to show all of the page
    page_height, bars = d.execute_script(
        "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]")
    d.set_window_size(1400, min(page_height + bars, 2400))
    d.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.5)  # let the page lay itself out at the new size
    shot = Image.open(io.BytesIO(d.get_screenshot_as_png())).convert("RGB")
    shot.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(DOCS / f"demo_{name}.png", optimize=True)
    d.set_window_size(1400, 1000)


def test_sample_grid_is_what_ddim_sample_writes(page, capsys, tmp_path):
    d = page
    d.find_element("id", "sample-run").click()
    start = time.perf_counter()
    _wait(d, lambda: _image_src(d, "sample-grid"), every=0.02)
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nddim demo: the Sample tab's first grid of 16 images appeared {seconds:.2f} s after the click")
    grid = _pixels(_image_src(d, "sample-grid"))
    assert grid.shape == (4 * TILE + 2, 4 * TILE + 2)  # 16 images of 28×28, one grey channel
    _wait(d, lambda: "model calls" in _text(d, "sample-info"))
    command = d.find_element("css selector", "#sample-command textarea").get_attribute("value")
    assert command.startswith("ddim sample --n 16 --seed 0 ") and command.endswith(" --out samples.png")
    # the command, run in a shell, writes the same PNG
    line = command.replace("ddim", f"{shlex.quote(sys.executable)} -m ddim", 1) + " --quiet"
    done = subprocess.run(line, shell=True, cwd=tmp_path, env=ddim_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "samples.png")), grid)
    # the downloads: that PNG and that command
    hrefs = [a.get_attribute("href") for a in d.find_elements("css selector", "#sample-files a")]
    links = {href.rsplit("/", 1)[1]: href for href in hrefs}
    assert _fetch(links["ddim_sample.sh"]).decode() == command + "\n"
    assert np.array_equal(_pixels(links["samples.png"]), grid)
    assert _image_src(d, "sample-trajectory").endswith(".gif")
    _screenshot(d, "sample")


def test_steps_out_of_range_show_a_message(page):
    d = page
    steps = d.find_element("css selector", "#sample-steps input")
    steps.clear()
    steps.send_keys("5000")
    _refused(d, "sample-run", "steps must be an integer with 1 <= steps <= T=1000, got 5000")


def test_compare_shows_four_settings_with_progress(page):
    d = page
    _tab(d, "Compare")
    d.find_element("id", "compare-run").click()
    seen = _wait_watching_progress(d, lambda: _image_src(d, "compare-4"))
    assert any("steps" in s for s in seen), seen  # "12/80 steps": the page showed the work going on
    for i, label in enumerate(["ddim, 10 steps", "ddim, 50 steps", "dpmpp-2m, 10 steps", "ddim, 10 steps, η 1"]):
        assert _pixels(_image_src(d, f"compare-{i + 1}")).shape == (3 * TILE + 2, 3 * TILE + 2)  # 8 images
        assert _text(d, f"compare-info-{i + 1}").startswith(f"{label}: ")
    _screenshot(d, "compare")


def test_interpolate_two_seeds(page):
    d = page
    assert _run(d, "Interpolate", "interp-run", "interp-strip").shape == (TILE + 2, 9 * TILE + 2)  # 9 frames
    assert _image_src(d, "interp-animation").endswith(".gif")
    _wait(d, lambda: "ddim interpolate --seeds 0 1" in
          d.find_element("css selector", "#interp-command textarea").get_attribute("value"))
    _screenshot(d, "interpolate")


def test_invert_and_edit_a_test_item(page):
    d = page
    shown = _run(d, "Invert and edit", "edit-run", "edit-images")
    assert shown.shape == (TILE + 2, 3 * TILE + 2)  # original | reconstruction | edit
    _wait(d, lambda: "MSE" in _text(d, "edit-info"))
    mse = float(_text(d, "edit-info").split("MSE ")[1].split()[0])
    assert mse < 0.01
    _screenshot(d, "edit")


def test_an_upload_that_is_not_an_image_shows_a_message(page, tmp_path):
    d = page
    _tab(d, "Invert and edit")
    bad = tmp_path / "notes.png"
    bad.write_text("these are not pixels")
    d.find_element("css selector", "#edit-upload input[type=file]").send_keys(str(bad))
    _wait(d, lambda: "notes" in _text(d, "edit-upload"), 60)  # uploaded: its name shows
    next(e for e in d.find_elements("css selector", "#edit-source label") if "uploaded" in e.text).click()
    _refused(d, "edit-run", "notes.png is not a readable image")


def test_a_second_request_waits_in_the_queue(page):
    d = page
    _tab(d, "Compare")
    d.find_element("id", "compare-run").click()
    _tab(d, "Sample")
    d.find_element("id", "sample-run").click()
    seen = _wait_watching_progress(d, lambda: _image_src(d, "sample-grid") and _image_src(d, "compare-4"))
    assert any(s.startswith("queue: 1/1") for s in seen), seen  # the page said it was waiting its turn
    assert not d.execute_script("return document.querySelectorAll('.toast-body').length")
