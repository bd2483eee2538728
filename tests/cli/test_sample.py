"""`ddim sample | invert | reconstruct | interpolate | edit` end to end on the bundled Fashion-MNIST
model, checked by what they write."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddim.checkpoint import BUNDLED_MODEL
from ddim.cli import build_parser, main

TINY = ["--dataset", "digits", "--image-size", "8", "--base-channels", "16", "--channel-mult", "1,2",
        "--num-res-blocks", "1", "--norm-groups", "8", "--sample-every", "0", "--device", "cpu", "--quiet",
        "--batch-size", "32", "--lr", "2e-3", "--warmup", "10"]
DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


TILE = 28 + 2  # grids put 2 pixels of padding around every 28×28 image


@pytest.fixture(scope="module")
def ckpt():
    """The bundled class-conditional Fashion-MNIST model (the default --checkpoint)."""
    return str(BUNDLED_MODEL)


@pytest.fixture(scope="module")
def uncond(tmp_path_factory):
    out = tmp_path_factory.mktemp("uncond")
    assert main(["train", *TINY, "--out", str(out), "--steps", "2", "--no-class-cond"]) == 0
    return str(out)


def run(*args):
    return main([*args, "--quiet"])


def png(path):
    return np.asarray(Image.open(path))


def test_default_checkpoint_is_the_bundled_model(ckpt, tmp_path):
    assert run("sample", "--n", "2", "--steps", "3", "--out", str(tmp_path / "a.png")) == 0
    assert run("sample", "--checkpoint", ckpt, "--n", "2", "--steps", "3", "--out", str(tmp_path / "b.png")) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_sample_writes_grid_and_is_deterministic(ckpt, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for out in (a, b):
        assert run("sample", "--checkpoint", ckpt, "--n", "6", "--steps", "5", "--seed", "3", "--out", str(out),
                   "--images-dir", str(tmp_path / "each"), "--npz", str(tmp_path / "s.npz")) == 0
    assert a.read_bytes() == b.read_bytes()  # byte-identical PNGs for a fixed seed
    assert png(a).shape == (2 * TILE + 2, 3 * TILE + 2)  # 3×2 tiles
    assert len(list((tmp_path / "each").glob("*.png"))) == 6
    images = np.load(tmp_path / "s.npz")["images"]
    assert images.shape == (6, 1, 28, 28) and np.isfinite(images).all()
    assert np.abs(images).max() <= 1.0  # --clip 1 by default: the last step returns the clamped x̂_0
    run("sample", "--checkpoint", ckpt, "--n", "6", "--steps", "5", "--seed", "4", "--out", str(b))
    assert a.read_bytes() != b.read_bytes()


@pytest.mark.parametrize("eta", ["0", "1"])
def test_per_sample_seed_invariance(ckpt, tmp_path, eta):
    """Image i depends on (seed, i) only: not on --n, not on --batch-size."""
    common = ["--checkpoint", ckpt, "--steps", "5", "--seed", "11", "--eta", eta, "--out", str(tmp_path / "g.png")]
    run("sample", *common, "--n", "7", "--batch-size", "7", "--npz", str(tmp_path / "n7.npz"))
    run("sample", *common, "--n", "3", "--batch-size", "2", "--npz", str(tmp_path / "n3.npz"))
    a, b = np.load(tmp_path / "n7.npz")["images"], np.load(tmp_path / "n3.npz")["images"]
    # float kernels may round differently for other batch sizes: equal to well below one 8-bit level
    np.testing.assert_allclose(b, a[:3], atol=1e-5)
    assert np.abs(a[3] - a[0]).max() > 0.1


def test_trajectory_and_ddpm(ckpt, uncond, tmp_path):
    assert run("sample", "--checkpoint", ckpt, "--n", "2", "--steps", "4", "--out", str(tmp_path / "g.png"),
               "--trajectory", str(tmp_path / "t.png")) == 0
    assert png(tmp_path / "t.png").shape == (4 * TILE + 2, 4 * TILE + 2)  # 2 samples × (x_t, x̂_0) rows, 4 steps
    assert run("sample", "--checkpoint", ckpt, "--n", "2", "--steps", "4", "--out", str(tmp_path / "g.png"),
               "--trajectory", str(tmp_path / "t.gif")) == 0
    assert Image.open(tmp_path / "t.gif").n_frames == 4
    # 1000 ancestral steps: on the tiny 8×8 model, to keep the suite fast
    assert run("sample", "--checkpoint", uncond, "--n", "2", "--sampler", "ddpm", "--out", str(tmp_path / "d.png"),
               "--npz", str(tmp_path / "d.npz")) == 0
    assert int(np.load(tmp_path / "d.npz")["steps"]) == 1000


def test_guidance_rescale_flag(ckpt, tmp_path):
    """--guidance-rescale 1 changes guided samples (pulls their scale back); with it 0 they are as before."""
    outs = {}
    for phi in ("0", "1"):
        assert run("sample", "--checkpoint", ckpt, "--n", "2", "--steps", "5", "--class", "3", "--guidance", "4",
                   "--guidance-rescale", phi, "--out", str(tmp_path / "g.png"), "--npz", str(tmp_path / f"{phi}.npz")) == 0
        outs[phi] = np.load(tmp_path / f"{phi}.npz")["images"]
    assert not np.allclose(outs["0"], outs["1"], atol=1e-3)


def test_class_and_guidance(ckpt, tmp_path):
    """--class picks the class and --guidance is applied, as the shipped classifier reads the images: 16 Shirts
    (the hardest class) unguided and at w = 3, same seeds (measured: 14/16 and 16/16)."""
    from ddim.evaluate import load_classifier

    classifier, agree = load_classifier()[0], {}
    for w in ("0", "3"):
        assert run("sample", "--checkpoint", ckpt, "--n", "16", "--class", "6", "--guidance", w, "--out",
                   str(tmp_path / f"c{w}.png"), "--npz", str(tmp_path / f"c{w}.npz")) == 0
        x = torch.from_numpy(np.load(tmp_path / f"c{w}.npz")["images"]).clamp(-1, 1)
        with torch.no_grad():
            agree[w] = int((classifier(x).argmax(1) == 6).sum())
    assert png(tmp_path / "c3.png").shape == (4 * TILE + 2, 4 * TILE + 2)
    assert agree["0"] >= 12 and agree["3"] >= agree["0"] + 2, agree


def _fashion_pngs(tmp_path, n=3):
    """Fashion-MNIST test images (labels 9, 2, 1, ...) saved at another size and mode than the model's."""
    from ddim.data import load_dataset

    d = load_dataset("fashion-mnist", split="test")
    paths = []
    for i in range(n):
        p = tmp_path / f"item{i}.png"
        Image.fromarray(d.images[i, 0].numpy()).resize((56, 56)).convert("RGB").save(p)
        paths.append(str(p))
    return paths


def test_invert_and_reconstruct(ckpt, tmp_path, capsys):
    """Round trips through the CLI stay close to the images. Whether the error falls with S is the model's
    business (the oracle test shows the sampler's error does): on the bundled v-prediction model these
    3 images give 0.014, 0.024, 0.018 at S = 5, 20, 100 (README "Results", Table 2 analogue)."""
    files = _fashion_pngs(tmp_path)
    assert run("invert", "--checkpoint", ckpt, "--images", *files, "--steps", "10",
               "--out", str(tmp_path / "z.npz")) == 0
    z = np.load(tmp_path / "z.npz")
    assert z["latents"].shape == (3, 1, 28, 28) and list(z["files"]) == files
    errors = []
    for steps in (5, 20, 100):
        capsys.readouterr()
        assert run("reconstruct", "--checkpoint", ckpt, "--images", *files, "--steps", str(steps),
                   "--out", str(tmp_path / f"r{steps}.png")) == 0
        errors.append(float(re.search(r"mean\tmse ([0-9.e-]+)", capsys.readouterr().out).group(1)))
    assert png(tmp_path / "r5.png").shape == (2 * TILE + 2, 3 * TILE + 2)
    assert all(0 < e < 0.03 for e in errors), errors  # two different test images: 0.04-0.40


@pytest.mark.parametrize("solver", ["ddim", "dpmpp-2m"])
def test_interpolation_endpoints_are_the_plain_samples(ckpt, tmp_path, solver):
    for seed in ("3", "7"):
        run("sample", "--checkpoint", ckpt, "--n", "1", "--steps", "6", "--seed", seed, "--solver", solver,
            "--guidance", "0", "--out", str(tmp_path / f"s{seed}.png"))  # interpolate decodes unguided
    assert run("interpolate", "--checkpoint", ckpt, "--seeds", "3", "7", "--frames", "5", "--steps", "6",
               "--solver", solver, "--out", str(tmp_path / "i.png")) == 0
    strip = png(tmp_path / "i.png").astype(int)
    assert strip.shape == (TILE + 2, 5 * TILE + 2)
    first, last = strip[2:TILE, 2:TILE], strip[2:TILE, 4 * TILE + 2:5 * TILE]
    for tile, seed in ((first, "3"), (last, "7")):
        assert np.abs(tile - png(tmp_path / f"s{seed}.png").astype(int)[2:TILE, 2:TILE]).max() <= 1
    assert np.abs(first - last).max() > 20
    files = _fashion_pngs(tmp_path, 2)
    assert run("interpolate", "--checkpoint", ckpt, "--images", *files, "--frames", "3", "--steps", "5",
               "--out", str(tmp_path / "j.png")) == 0


def _error(capsys, args):
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("args,msg", [
    (["--steps", "0"], "1 <= steps <= T=1000, got 0"),
    (["--steps", "2000"], "1 <= steps <= T=1000, got 2000"),
    (["--eta", "-1"], "eta must be a finite number >= 0 or 'large', got -1.0"),
    (["--eta", "big"], "expected a number >= 0 or 'large', got 'big'"),
    (["--clip", "-1"], "--clip must be a number >= 0 (0: off), got -1.0"),
    (["--class", "11"], "class 11 is out of range for a model with 10 classes (allowed: 0..9)"),
    (["--n", "0"], "--n must be an integer in [1, 1,000,000], got 0"),
    (["--guidance-rescale", "1.5"], "guidance rescale must be a number in [0, 1], got 1.5"),
])
def test_bad_sample_input(ckpt, tmp_path, capsys, args, msg):
    code, err = _error(capsys, ["sample", "--checkpoint", ckpt, "--out", str(tmp_path / "x.png"), *args])
    assert code == 2 and len(err) == 1 and err[0].startswith("ddim: error:") and msg in err[0], err


def test_bad_paths(ckpt, uncond, tmp_path, capsys):
    code, err = _error(capsys, ["sample", "--checkpoint", uncond, "--guidance", "2", "--out", str(tmp_path / "x.png")])
    assert code == 2 and len(err) == 1 and "needs a class-conditional model" in err[0]
    code, err = _error(capsys, ["sample", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")])
    assert code == 2 and len(err) == 1 and "nope" in err[0]
    notimage = tmp_path / "fake.png"
    notimage.write_text("hello")
    code, err = _error(capsys, ["invert", "--checkpoint", ckpt, "--images", str(notimage), "--out", str(tmp_path / "z.npz")])
    assert code == 2 and len(err) == 1 and "fake.png is not a readable image" in err[0]
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = _error(capsys, ["sample", "--checkpoint", ckpt, "--out", str(blocker / "x.png")])
    assert code == 2 and len(err) == 1 and "file" in err[0]


def command_help(command: str) -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width
    try:
        sub = next(a for a in build_parser()._actions if a.dest == "command")
        return sub.choices[command].format_help()
    finally:
        del os.environ["COLUMNS"]


def test_docs_cli_md_is_current():
    """docs/cli.md holds every subcommand's --help; regenerate with DDIM_UPDATE_DOCS=1 pytest -k docs_cli."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    text = ("# Command line reference\n\n"
            "The output of `ddim COMMAND --help` for every subcommand, generated by `tests/cli/test_sample.py` "
            "(which fails when\nthis page is out of date; `DDIM_UPDATE_DOCS=1 python -m pytest -q -k docs_cli "
            "tests/cli/test_sample.py` rewrites it).\nEvery command uses the bundled Fashion-MNIST model unless "
            "given `--checkpoint`. Examples: [examples](cli_examples.md).\n")
    for command in sub.choices:
        text += f"\n## `ddim {command}`\n\n```\n" + command_help(command) + "```\n"
    if os.environ.get("DDIM_UPDATE_DOCS"):
        DOCS.parent.mkdir(exist_ok=True)
        DOCS.write_text(text)
    assert DOCS.read_text() == text


def test_edit(ckpt, tmp_path):
    files = _fashion_pngs(tmp_path, 2)
    assert run("edit", "--checkpoint", ckpt, "--image", *files, "--to-class", "7", "--guidance", "3",
               "--strength", "0.6", "--steps", "10", "--out", str(tmp_path / "e.png")) == 0
    grid = png(tmp_path / "e.png").astype(int)
    assert grid.shape == (3 * TILE + 2, 2 * TILE + 2)  # rows: original, inversion edit, SDEdit
    # a weak edit toward the image's own class, unguided, is nearly a reconstruction
    assert run("edit", "--checkpoint", ckpt, "--image", files[0], "--to-class", "9", "--from-class", "9",
               "--guidance", "0", "--strength", "0.1", "--steps", "50", "--mode", "invert",
               "--out", str(tmp_path / "weak.png")) == 0
    weak = png(tmp_path / "weak.png").astype(int)
    assert np.abs(weak[2:TILE, 2:TILE] - weak[TILE + 2:2 * TILE, 2:TILE]).mean() < 8
    # the regeneration runs on the chosen solver: another image, still close to the DDIM one
    assert run("edit", "--checkpoint", ckpt, "--image", *files, "--to-class", "7", "--guidance", "3",
               "--strength", "0.6", "--steps", "10", "--solver", "unipc", "--out", str(tmp_path / "u.png")) == 0
    other = png(tmp_path / "u.png").astype(int)
    assert 0 < np.abs(other[TILE:] - grid[TILE:]).mean() < 30 and np.array_equal(other[:TILE], grid[:TILE])


@pytest.mark.parametrize("args,msg", [
    (["--strength", "0"], "strength must be a number in (0, 1], got 0.0"),
    (["--strength", "1.5"], "strength must be a number in (0, 1], got 1.5"),
    (["--to-class", "11"], "class 11 is out of range"),
    (["--guidance", "-1"], "guidance must be a finite number >= 0"),
])
def test_bad_edit_input(ckpt, tmp_path, capsys, args, msg):
    files = _fashion_pngs(tmp_path, 1)
    base = ["edit", "--checkpoint", ckpt, "--image", *files, "--out", str(tmp_path / "e.png")]
    if "--to-class" not in args:
        base += ["--to-class", "1"]
    code, err = _error(capsys, [*base, *args])
    assert code == 2 and len(err) == 1 and msg in err[0], err


def test_edit_needs_conditional_model(uncond, tmp_path, capsys):
    files = _fashion_pngs(tmp_path, 1)
    code, err = _error(capsys, ["edit", "--checkpoint", uncond, "--image", *files, "--to-class", "1",
                                "--out", str(tmp_path / "e.png")])
    assert code == 2 and "needs a class-conditional model" in err[0]


def test_help_names_the_classes_and_edit_has_no_generic_class():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for cmd in ("sample", "interpolate", "edit"):
        assert "7 Sneaker" in " ".join(sub.choices[cmd].format_help().split()), cmd
    edit = sub.choices["edit"].format_help()
    assert "--to-class" in edit and "--class " not in edit and "--class CLASS" not in edit


def test_closing_line_names_every_file(ckpt, tmp_path, capsys):
    files = {k: tmp_path / v for k, v in (("out", "g.png"), ("npz", "x.npz"), ("traj", "t.png"), ("dir", "each"))}
    capsys.readouterr()
    assert main(["sample", "--checkpoint", ckpt, "--n", "2", "--steps", "2", "--out", str(files["out"]),
                 "--npz", str(files["npz"]), "--trajectory", str(files["traj"]), "--images-dir",
                 str(files["dir"])]) == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("ddim: note: wrote") and all(str(f) in last for f in files.values()), last
    assert all(f.exists() for f in files.values())
    image = _fashion_pngs(tmp_path, 1)
    assert main(["reconstruct", "--checkpoint", ckpt, "--images", *image, "--steps", "2",
                 "--out", str(tmp_path / "r.png")]) == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"wrote {tmp_path / 'r.png'}" in last and (tmp_path / "r.png").exists()


def test_channels_last_is_the_cpu_default_and_matches_eager(ckpt, tmp_path):
    """Issue 12: the CPU default layout (channels_last) gives eager's images within 1e-4."""
    npz = {k: tmp_path / f"{k}.npz" for k in ("default", "on", "off")}
    flags = {"default": [], "on": ["--channels-last"], "off": ["--no-channels-last"]}
    for k, f in flags.items():
        assert run("sample", "--checkpoint", ckpt, "--n", "3", "--steps", "4", "--out", str(tmp_path / "g.png"),
                   "--npz", str(npz[k]), *f) == 0
    a, b, c = (np.load(npz[k])["images"] for k in ("default", "on", "off"))
    assert np.array_equal(a, b)                    # on the CPU the default is channels_last
    np.testing.assert_allclose(a, c, atol=1e-4)    # and it stays within the bar of eager


def test_solver_flag(ckpt, tmp_path, capsys):
    """`--solver dpmpp-2m --spacing logsnr` samples; its images differ from DDIM's at the same seed but
    agree closely (same ODE); bad combinations are refused before the checkpoint is even read."""
    for solver in ("ddim", "dpmpp-2m"):
        assert run("sample", "--checkpoint", ckpt, "--n", "2", "--steps", "8", "--spacing", "logsnr", "--solver",
                   solver, "--out", str(tmp_path / f"{solver}.png"), "--npz", str(tmp_path / f"{solver}.npz")) == 0
    a, b = (np.load(tmp_path / f"{s}.npz")["images"] for s in ("ddim", "dpmpp-2m"))
    assert 0 < np.abs(a - b).mean() < 0.2
    missing = str(tmp_path / "no-such-checkpoint")
    code, err = _error(capsys, ["sample", "--checkpoint", missing, "--solver", "heun", "--eta", "1",
                                "--out", str(tmp_path / "x.png")])
    assert code == 2 and "eta=1.0 applies to solver 'ddim' only" in err[0]
    code, err = _error(capsys, ["sample", "--checkpoint", missing, "--solver", "unipc", "--sampler", "ddpm",
                                "--out", str(tmp_path / "x.png")])
    assert code == 2 and "takes no --solver" in err[0]
    assert not (tmp_path / "x.png").exists()


def test_sample_defaults_follow_the_solver(tmp_path):
    """`ddim sample` on the teacher: DPM-Solver++(2M) on the log-SNR grid with 10 steps by default; --eta selects
    DDIM with its uniform 50-step grid; an explicit solver brings its own spacing and steps."""
    def out(name, *args):
        assert run("sample", "--n", "2", "--out", str(tmp_path / f"{name}.png"), *args) == 0
        return (tmp_path / f"{name}.png").read_bytes()

    assert out("a", "--checkpoint", "bundled") == out("b", "--solver", "dpmpp-2m", "--spacing", "logsnr", "--steps",
                                                      "10")
    assert out("c", "--eta", "0") == out("d", "--solver", "ddim", "--spacing", "uniform", "--steps", "50")
    assert out("e", "--solver", "ddim") == out("d", "--solver", "ddim", "--spacing", "uniform", "--steps", "50")
    assert out("a", "--checkpoint", "bundled") != out("c", "--eta", "0")


def test_sample_without_checkpoint_is_the_student_unless_an_option_needs_the_teacher(tmp_path, capsys):
    """No --checkpoint: the bundled 4-step student, with the options it honours too (--guidance feeds its w); any
    option only the teacher honours (steps, a solver, a guidance method) selects the bundled model; the closing
    note says which."""
    def out(name, *args):
        assert main(["sample", "--n", "2", "--out", str(tmp_path / f"{name}.png"), *args]) == 0
        return (tmp_path / f"{name}.png").read_bytes(), capsys.readouterr().err

    student, note = out("a")
    assert student == out("b", "--checkpoint", "distilled")[0] and "by the bundled 4-step student" in note
    assert "4 steps" in note
    assert out("c", "--guidance", "1.5", "--class", "3")[0] == out("d", "--checkpoint", "distilled", "--guidance",
                                                                   "1.5", "--class", "3")[0]
    teacher, note = out("e", "--steps", "3")
    assert teacher == out("f", "--checkpoint", "bundled", "--steps", "3")[0] and "by the bundled model" in note
    assert out("g", "--guidance-method", "interval")[0] == out("h", "--checkpoint", "bundled")[0] != student
