"""`ddim demo`'s work without a browser or Gradio: each tab's function against the subcommand it mirrors, pixel
for pixel, its command lines run back through the CLI, and its refusals."""

import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ddim.cli import build_parser, main
from ddim.demo import (EditSettings, Guidance, InterpolateSettings, Model, SampleSettings, Sampler, command_line,
                       compare, interpolate_images, interpolate_seeds, invert_and_edit, items, sample)
from ddim.demo.outputs import Scratch
from ddim.demo.work import load_image
from ddim.guidance import MethodOptions
from ddim.images import MAX_PIXELS

from subprocesses import ROOT, ddim_env


TINY = ["--dataset", "digits", "--image-size", "8", "--base-channels", "16", "--channel-mult", "1,2",
        "--num-res-blocks", "1", "--norm-groups", "8", "--sample-every", "0", "--device", "cpu", "--quiet",
        "--batch-size", "32", "--steps", "2"]


@pytest.fixture(scope="module")
def model():
    return Model()


@pytest.fixture(scope="module")
def uncond(tmp_path_factory):
    """A two-step unconditional model on 8×8 digits, in a folder whose name a shell must quote."""
    out = tmp_path_factory.mktemp("runs") / "my run"
    assert main(["train", *TINY, "--no-class-cond", "--out", str(out)]) == 0
    return out


@pytest.fixture
def scratch():
    s = Scratch()
    yield s
    s.close()


def png(path):
    return np.asarray(Image.open(path))


def cli_png(argv, out):
    """Run a demo command line (argv from ``ddim``) in-process with ``--out`` replaced; the PNG it wrote."""
    assert argv[0] == "ddim" and argv[-2] == "--out"
    assert main([*argv[1:-1], str(out), "--quiet"]) == 0
    return png(out)


def test_sample_defaults_match_ddim_sample_and_its_command(model, scratch, tmp_path):
    """The Sample tab's first grid: the 16 images `ddim sample --checkpoint bundled --n 16` draws by default (the
    demo explores the teacher's samplers), and the command it offers writes the same PNG from a shell (its
    --solver alone selects the teacher)."""
    drawn = sample(model, SampleSettings())
    grid = png(scratch.grid(scratch.folder(), "samples.png", drawn.images))
    assert grid.shape == (4 * 30 + 2, 4 * 30 + 2)
    assert drawn.command == ["ddim", "sample", "--n", "16", "--seed", "0", "--solver", "dpmpp-2m", "--steps", "10",
                             "--spacing", "logsnr", "--guidance", "2", "--guidance-method", "interval", "--clip", "1",
                             "--out", "samples.png"]
    assert drawn.calls == 10 and drawn.seconds > 0 and drawn.x0_steps.shape == (10, 16, 1, 28, 28)
    # the defaults are the teacher's in `ddim sample`: the command without the flags that repeat them writes it too
    assert np.array_equal(cli_png(["ddim", "sample", "--checkpoint", "bundled", "--n", "16", "--out", "x.png"],
                                  tmp_path / "plain.png"), grid)
    line = command_line(drawn.command).replace("ddim", f"{shlex.quote(sys.executable)} -m ddim", 1) + " --quiet"
    done = subprocess.run(line, shell=True, cwd=tmp_path, env=ddim_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(png(tmp_path / "samples.png"), grid)


@pytest.mark.parametrize("settings", [
    SampleSettings(n=5, seed=3, sampler=Sampler("ddim", 7, eta=1.0), guidance=Guidance(class_id=3, w=1.5), clip=0),
    SampleSettings(n=3, seed=11, sampler=Sampler("unipc", 6, spacing="karras"),
                   guidance=Guidance(w=0.75, method=MethodOptions("interval", interval=(0.5, 3.25)))),
    SampleSettings(n=2, sampler=Sampler("dpmpp-2m", 4),
                   guidance=Guidance(w=1.0, method=MethodOptions("apg", apg_eta=0.25, apg_norm_cap=2.5,
                                                                 apg_momentum=-0.5))),
    SampleSettings(n=2, sampler=Sampler("ddim", 5),
                   guidance=Guidance(class_id=7, w=0.5, method=MethodOptions("cfgpp"))),
    SampleSettings(n=2, sampler=Sampler("heun", 3), guidance=Guidance(class_id=1, w=0.0, classifier_scale=2.0)),
], ids=["ddim-eta1-class-noclip", "unipc-interval", "apg", "cfgpp", "classifier"])
def test_sample_settings_match_their_command(model, scratch, tmp_path, settings):
    drawn = sample(model, settings)
    grid = png(scratch.grid(scratch.folder(), "samples.png", drawn.images))
    assert np.array_equal(cli_png(drawn.command, tmp_path / "cli.png"), grid)


def test_another_checkpoint_is_named_in_the_command(uncond, scratch, tmp_path):
    m = Model(uncond, "cpu")
    assert (m.conditional, m.class_names, m.checkpoint, m.default_w) == (False, (), uncond.resolve(), 0.0)
    m.warm_up()  # what `ddim demo` does before serving
    drawn = sample(m, SampleSettings(n=3, guidance=Guidance(w=0.0)))
    assert drawn.command[2:6] == ["--checkpoint", str(uncond.resolve()), "--device", "cpu"]
    grid = png(scratch.grid(scratch.folder(), "samples.png", drawn.images))
    assert grid.shape == (2 * 10 + 2, 2 * 10 + 2) and np.array_equal(cli_png(drawn.command, tmp_path / "c.png"), grid)
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        sample(m, SampleSettings(n=3))  # the default guidance, 2: refused, as `ddim sample --guidance 2`
    with pytest.raises(ValueError, match="editing needs a class-conditional model"):
        invert_and_edit(m, load_image(m, items()[0].path)[0], EditSettings(target=1))


def test_command_names_a_checkpoint_and_device_and_quotes_them(tmp_path):
    weird = tmp_path / "my run's dir"
    argv = SampleSettings(n=4).command(checkpoint=weird, device="cpu", out="a b.png")
    line = command_line(argv)
    assert shlex.split(line) == argv
    args = build_parser().parse_args(argv[1:])
    assert (args.checkpoint, args.device, args.out, args.n, args.guidance) == (str(weird), "cpu", "a b.png", 4, 2.0)
    # numbers the CLI reads back to the same float, whatever their digits
    g = Guidance(w=0.1 + 0.2, method=MethodOptions("apg", apg_momentum=-1 / 3))
    args = build_parser().parse_args(SampleSettings(guidance=g).command()[1:])
    assert args.guidance == 0.1 + 0.2 and args.apg_momentum == -1 / 3


@pytest.mark.parametrize("make,message", [
    (lambda: SampleSettings(n=65), "number of images must be an integer in [1, 64], got 65"),
    (lambda: SampleSettings(n=2.5), "number of images must be an integer"),
    (lambda: SampleSettings(seed=-1), "seed must be an integer >= 0"),
    (lambda: Sampler(steps=0), "steps must be an integer >= 1, got 0"),
    (lambda: Sampler("dpmpp-2m", eta=0.5), "applies to solver 'ddim' only"),
    (lambda: Sampler("nope"), "unknown solver"),
    (lambda: Guidance(w=-1.0), "guidance weight w must be a finite number"),
    (lambda: Guidance(method=MethodOptions("auto")), "is not in the demo"),
    (lambda: InterpolateSettings(frames=1), "frames must be an integer in [2, 32]"),
    (lambda: EditSettings(target=1, method="edict"), "needs the image's class"),
    (lambda: EditSettings(target=1, strength=1.5), "strength must be a finite number in [0, 1]"),
])
def test_bad_settings_are_one_line(make, message):
    with pytest.raises(ValueError) as e:
        make()
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("settings,message", [
    (SampleSettings(n=2, sampler=Sampler("ddim", 5000)), "steps"),
    (SampleSettings(n=2, sampler=Sampler("ddim", 3), guidance=Guidance(class_id=12)), "class 12 is out of range"),
    (SampleSettings(n=2, sampler=Sampler("dpmpp-2m", 3), guidance=Guidance(w=0.5, method=MethodOptions("cfgpp"))),
     "CFG\\+\\+.*solver .dpmpp-2m. reads one of them alone"),
])
def test_what_the_library_refuses_is_a_value_error(model, settings, message):
    with pytest.raises(ValueError, match=message):
        sample(model, settings)


def test_compare_draws_one_x_T_per_setting(model):
    settings = [Sampler("ddim", 4), Sampler("ddim", 4, eta=1.0), Sampler("dpmpp-2m", 4)]
    drawn = compare(model, settings, n=3, seed=5, guidance=Guidance(w=0.0))
    assert [d.label for d in drawn] == ["ddim, 4 steps", "ddim, 4 steps, η 1", "dpmpp-2m, 4 steps"]
    for d, s in zip(drawn, settings):
        alone = sample(model, SampleSettings(n=3, seed=5, sampler=s, guidance=Guidance(w=0.0)), trajectory=False)
        assert torch.equal(d.images, alone.images) and d.calls == 4
    assert not torch.equal(drawn[0].images, drawn[1].images)
    with pytest.raises(ValueError, match="compare two to four sampler settings, got 1"):
        compare(model, settings[:1])


def test_interpolate_seeds_matches_ddim_interpolate(model, scratch, tmp_path):
    s = InterpolateSettings(seeds=(2, 9), frames=4, class_id=5, sampler=Sampler("dpmpp-2m", 5), w=0.5)
    drawn = interpolate_seeds(model, s)
    strip = png(scratch.grid(scratch.folder(), "interpolation.png", drawn.images, nrow=4))
    assert strip.shape == (30 + 2, 4 * 30 + 2)
    assert np.array_equal(cli_png(drawn.command, tmp_path / "cli.png"), strip)
    with pytest.raises(ValueError, match="decodes deterministically"):
        interpolate_seeds(model, InterpolateSettings(frames=3, sampler=Sampler("ddim", 3, eta=1.0)))


def test_interpolate_images_starts_and_ends_at_the_images(model):
    x0 = torch.cat([load_image(model, item.path)[0] for item in items()[:2]])
    drawn = interpolate_images(model, x0, 3, Sampler("ddim", 20))
    assert drawn.images.shape == (3, 1, 28, 28)
    assert ((drawn.images[[0, -1]] - x0) / 2).pow(2).mean() < 0.01  # the frames at both ends reconstruct them


def test_invert_and_edit_an_item(model):
    path, k, _ = items()[9]
    x0 = load_image(model, path)[0]
    e = invert_and_edit(model, x0, EditSettings(source=k, target=5, steps=20, strength=0.6))
    assert e.mse < 0.005 and e.calls == (40, 2 * 12)
    assert (e.edit - e.original).abs().mean() > 0.05  # it changed
    exact = invert_and_edit(model, x0, EditSettings(source=k, target=5, method="edict", steps=5, strength=0.4))
    assert exact.mse < 1e-8  # EDICT gives the image back to float precision at any S
    with pytest.raises(ValueError, match=r"strength must be a number in \(0, 1\], got 0.0"):
        invert_and_edit(model, x0, EditSettings(source=k, target=5, steps=5, strength=0.0))


def test_shipped_items_one_per_class(model):
    found = items()
    assert [item.class_id for item in found] == list(range(10))
    assert (found[0].index, found[9].index) == (19, 0)  # the first T-shirt and the first ankle boot of the test split
    for item in found:
        assert Image.open(item.path).size == (28, 28) and item.path.stat().st_size < 1000
    assert found[0].path.parent.parent.parent == ROOT / "src" / "ddim"


def test_uploads_that_are_not_images_are_refused_by_their_name(model, tmp_path):
    text = tmp_path / "upload-1234" / "notes.png"
    text.parent.mkdir()
    text.write_text("not a picture")
    with pytest.raises(ValueError, match="^notes.png is not a readable image") as e:
        load_image(model, text, "notes.png")
    assert str(tmp_path) not in str(e.value)
    huge = tmp_path / "huge.png"
    Image.new("L", (5000, 5000)).save(huge)
    with pytest.raises(ValueError, match=f"huge.png is too large: 5000×5000 pixels; at most {MAX_PIXELS:,}"):
        load_image(model, huge, "huge.png")
    rgb = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(rgb)
    x0, notes = load_image(model, rgb, "photo.jpg")
    assert x0.shape == (1, 1, 28, 28) and any("photo.jpg: resized 64x48" in n for n in notes)


def test_scratch_writes_only_inside_its_folder_and_removes_it():
    s = Scratch()
    folder = s.folder()
    images = torch.ones(4, 1, 28, 28)
    paths = [s.grid(folder, "g.png", images), s.animation(folder, "a.gif", [images, -images]),
             s.text(folder, "c.sh", "ddim sample\n")]
    assert all(p.parent == folder and folder.parent == s.root and p.exists() for p in paths)
    assert Image.open(paths[1]).n_frames == 2  # the held last frame: one frame shown longer
    s.close()
    assert not s.root.exists()
