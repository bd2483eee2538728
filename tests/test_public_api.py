"""The public names keep their old calls: every call below was valid before the library's redesign and must stay
valid (positional order, keywords, return shapes), and so must the CLI's subcommands and flags."""

import numpy as np
import pytest
import torch
from PIL import Image

import ddim
from ddim.cli import main
from ddim.inversion import invert_image

S = ddim.Schedule.linear(1000, beta_start=1e-4, beta_end=0.02)


def affine(x, t):
    return 0.1 * x


def test_old_calls_of_the_sampling_api():
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    assert ddim.timesteps(S, steps=50, spacing="uniform").dtype == torch.int64
    a = ddim.sample(affine, S, x_T, 10, 0.0, "uniform", "epsilon", None)  # the contract's positional order
    b = ddim.sample(affine, S, x_T, steps=10, eta=0.0, spacing="uniform", prediction="epsilon", generator=None)
    assert torch.equal(a, b) and a.shape == x_T.shape
    x, traj = ddim.sample(affine, S, x_T, steps=5, eta=1.0, generator=torch.Generator().manual_seed(1),
                          return_trajectory=True, solver="ddim", clip=1.0, eps_from_clipped_x0=True)
    assert traj.x.shape == (6, *x_T.shape) and traj.x0_pred.shape == (5, *x_T.shape)
    assert ddim.invert(affine, S, a, steps=10, spacing="uniform", prediction="epsilon").shape == x_T.shape
    assert ddim.invert(affine, S, a, 10, "uniform", "epsilon", timesteps=None, set_alpha_to_one=True).shape == x_T.shape
    for schedule in (ddim.Schedule.cosine(100), ddim.Schedule.scaled_linear(100), ddim.Schedule.from_betas([0.1, 0.2])):
        assert schedule.alphas_cumprod.dtype == torch.float64
    assert ddim.score(affine, S, x_T, torch.full((2,), 10), "epsilon").shape == x_T.shape


def test_old_calls_of_models_and_guidance():
    model, schedule, config = ddim.load_checkpoint()
    assert config.prediction in ("epsilon", "sample", "v") and schedule.num_steps == 1000
    labels = torch.tensor([1, 7])
    cfg = ddim.ClassifierFreeGuidance(model, labels, w=1.0)
    also = ddim.ClassifierFreeGuidance(model, labels, scale=2.0)  # diffusers' convention, s = 1 + w
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    t = torch.full((2,), 500)
    with torch.no_grad():
        assert torch.allclose(cfg(x, t), also(x, t))
    classifier, c_schedule, _ = ddim.load_noisy_classifier()
    guided = ddim.ClassifierGuidance(cfg, classifier, labels, 1.0, schedule, config.prediction)
    with torch.no_grad():
        assert guided(x, t).shape == x.shape
    inv = invert_image(model, schedule, x.clamp(-1, 1), labels, method="negative-label", w=1.0, steps=2,
                       spacing="uniform", prediction=config.prediction)
    assert inv.x_T.shape == x.shape and inv.method == "negative-label"


def test_old_spellings_of_the_cli(tmp_path):
    """Each subcommand with flags as they were spelled before: --image on edit, --images on invert and
    reconstruct, --num-samples on eval."""
    Image.new("L", (28, 28), 128).save(tmp_path / "a.png")
    img = str(tmp_path / "a.png")
    quick = ["--steps", "2", "--quiet"]
    assert main(["sample", "--n", "2", "--out", str(tmp_path / "s.png"), *quick]) == 0
    assert main(["sample", "--n", "2", "--sampler", "ddim", "--eta", "1", "--out", str(tmp_path / "s.png"), *quick]) == 0
    assert main(["edit", "--image", img, "--to-class", "1", "--out", str(tmp_path / "e.png"), *quick]) == 0
    assert main(["edit", "--images", img, "--to-class", "1", "--out", str(tmp_path / "e2.png"), *quick]) == 0
    assert main(["invert", "--images", img, "--out", str(tmp_path / "l.npz"), *quick]) == 0
    assert np.load(tmp_path / "l.npz")["latents"].shape == (1, 1, 28, 28)
    assert main(["reconstruct", "--images", img, "--out", str(tmp_path / "r.png"), *quick]) == 0
    assert main(["interpolate", "--seeds", "1", "2", "--frames", "2", "--out", str(tmp_path / "i.png"), *quick]) == 0
    assert main(["eval", "--consistency", "--num-samples", "2", "--steps", "2", "--quiet", "--out",
                 str(tmp_path / "ev")]) == 0
    with pytest.raises(SystemExit):  # --help still exits cleanly for every subcommand
        main(["train", "--help"])
