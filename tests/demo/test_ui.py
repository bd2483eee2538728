"""The page's handlers without a browser: fields in, files and one-line refusals out (Gradio needed; the
browser test drives the same handlers through the page)."""

import numpy as np
import pytest
from PIL import Image

from ddim.cli import main
from ddim.cli.demo import INSTALL
from ddim.demo import Model
from ddim.demo.outputs import Scratch

gr = pytest.importorskip("gradio", reason=f"needs Gradio, the demo extra: {INSTALL}")
from ddim.demo import ui  # noqa: E402  (imports Gradio)


@pytest.fixture(scope="module")
def page():
    scratch = Scratch()
    yield ui.Page(Model(), scratch)
    scratch.close()


def no_progress(*args, **kwargs):
    pass


SAMPLE = dict(class_id=ui.EVERY_CLASS, seed=0, n=4.0, solver="ddim", steps=3.0, spacing="uniform", eta=0.0, w=0.5,
              method="cfg", lo=0.28, hi=5.42, apg_eta=0.0, apg_cap=None, apg_beta=0.0, classifier_scale=0.0,
              clip=1.0)


def test_sample_writes_the_grid_its_command_and_an_animation(page, tmp_path):
    grid, animation, info, files, command = page.sample(**SAMPLE, progress=no_progress)
    assert command == ("ddim sample --n 4 --seed 0 --solver ddim --steps 3 --spacing uniform --guidance 0.5 "
                       "--guidance-method cfg --clip 1 --out samples.png")
    assert files[0] == grid and files[1].startswith(str(page.scratch.root)) and files[1].endswith("ddim_sample.sh")
    assert open(files[1]).read() == command + "\n" and animation.endswith(".gif") and "**3 model calls**" in info
    assert main(command.split()[1:-1] + [str(tmp_path / "cli.png"), "--quiet"]) == 0
    assert np.array_equal(np.asarray(Image.open(grid)), np.asarray(Image.open(tmp_path / "cli.png")))


@pytest.mark.parametrize("change, message", [
    ({"steps": 5000.0}, "steps must be an integer with 1 &lt;= steps &lt;= T=1000, got 5000"),
    ({"steps": None}, "steps is empty; give a whole number"),
    ({"steps": 2.5}, "steps must be an integer, got 2.5"),
    ({"solver": "unipc", "eta": 1.0}, "applies to solver &#x27;ddim&#x27; only"),
    ({"lo": 6.0}, "the guidance interval (σ_lo, σ_hi] must have 0 &lt;= σ_lo &lt; σ_hi"),
    ({"n": 65.0}, "number of images must be an integer in [1, 64], got 65"),
])
def test_bad_fields_are_one_escaped_message(page, change, message, capsys):
    with pytest.raises(gr.Error) as e:
        page.sample(**{**SAMPLE, **change}, progress=no_progress)
    assert message in e.value.message and "\n" not in e.value.message
    assert capsys.readouterr().err.startswith("ddim demo: refused: ")


def test_uploads_are_named_by_their_file_name(page, tmp_path):
    folder = tmp_path / "gradio" / "0123abcd"
    folder.mkdir(parents=True)
    (folder / "<i>notes.png").write_text("not an image")
    with pytest.raises(gr.Error) as e:
        page.invert_edit("upload", 0, str(folder / "<i>notes.png"), ui.EVERY_CLASS, "ddim", 10, 2.0, 5, 0.6,
                         progress=no_progress)
    assert e.value.message == "&lt;i&gt;notes.png is not a readable image (UnidentifiedImageError)"
    with pytest.raises(gr.Error, match="upload two images"):
        page.interpolate("images", 0, 1, None, None, 5, ui.EVERY_CLASS, "ddim", 5, 0.0, progress=no_progress)


def test_compare_leaves_unused_settings_empty(page):
    rows = [True, "ddim", 3, 0.0, False, "ddim", 50, 0.0, True, "dpmpp-2m", 3, 0.0, False, "ddim", 10, 1.0]
    *shown, commands = page.compare(ui.EVERY_CLASS, 0, 2, 0.0, 1.0, *rows, progress=no_progress)
    images, captions = shown[:4], shown[4:]
    assert [i is None for i in images] == [False, True, False, True]
    assert captions[1] == "(not used)" and captions[2].startswith("**dpmpp-2m, 3 steps**: 3 model calls")
    assert len(commands.splitlines()) == 2
    with pytest.raises(gr.Error, match="compare two to four sampler settings, got 1"):
        page.compare(ui.EVERY_CLASS, 0, 2, 0.0, 1.0, *rows[:4], *[False] * 12, progress=no_progress)


def test_the_page_builds_for_any_model(tmp_path, recwarn):
    out = tmp_path / "uncond"
    assert main(["train", "--dataset", "digits", "--image-size", "8", "--base-channels", "16", "--channel-mult",
                 "1,2", "--num-res-blocks", "1", "--norm-groups", "8", "--sample-every", "0", "--device", "cpu",
                 "--quiet", "--batch-size", "32", "--steps", "1", "--no-class-cond", "--out", str(out)]) == 0
    scratch = Scratch()
    for checkpoint in (None, out):
        assert isinstance(ui.build(Model(checkpoint), scratch), gr.Blocks)
    scratch.close()
    assert not [w for w in recwarn if "gr.Dropdown" in str(w.message)]  # every field's value is one of its choices
