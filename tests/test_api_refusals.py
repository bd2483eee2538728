"""The public API refuses bad values with one ValueError/TypeError line naming them: silent casts ("no" read as
True, 1.5 as 1, float labels kept), raw AttributeErrors and NaN results that used to get through. Each row was
found by a hostile tester; each failed before its fix."""

import math

import pytest
import torch

import ddim
from ddim import Denoiser, SampleOptions
from ddim.edit import sdedit
from ddim.evaluate.runner import consistency, reconstruction_errors
from ddim.generate import GuidanceOptions, RunOptions, generate_batch
from ddim.inversion import InversionOptions, invert_image, regenerate
from ddim.samplers import FastSampler, Solver, register
from ddim.samplers.solvers import SOLVERS
from ddim.samplers.solvers.ddim import DDIM

S = ddim.Schedule.linear(1000)
X = torch.zeros(2, 1, 4, 4)
T5 = torch.tensor([5, 5])


def eps0(x, t):
    return torch.zeros_like(x)


def nan_net(x, t):
    return torch.full_like(x, math.nan)


class _Cond(torch.nn.Module):
    """A tiny class-conditional stand-in for a UNet: what invert_image reads (null_label, label_embedding,
    label_emb, config.num_classes)."""

    null_label = 3

    class config:  # noqa: N801  (the attribute a UNet has)
        num_classes, in_channels, image_size = 3, 1, 4

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(4, 2)

    def label_embedding(self, y):
        return self.emb(y)

    def forward(self, x, t, y=None, label_emb=None):
        return 0.1 * x


@pytest.fixture(scope="module")
def cond():
    return _Cond()


CASES = [
    # a Denoiser's own io_dtype and prediction
    ("io_dtype a string", lambda m: Denoiser(eps0, S, "epsilon", "float16"), "io_dtype must be None or a floating"),
    ("io_dtype int64", lambda m: Denoiser(eps0, S, "epsilon", torch.int64), "io_dtype must be None or a floating"),
    ("score: prediction against the Denoiser's",
     lambda m: ddim.score(Denoiser(eps0, S, "v"), S, X, T5, prediction="epsilon"), "disagrees with the Denoiser's"),
    ("score: empty prediction", lambda m: ddim.score(eps0, S, X, T5, prediction=""), "unknown prediction type ''"),
    ("Denoiser.of prediction 0", lambda m: Denoiser.of(eps0, S, 0), "unknown prediction type 0"),
    # NaN and Inf
    ("score of a NaN network", lambda m: ddim.score(nan_net, S, X, T5), "NaN or Inf in 2 of 2 scores"),
    ("FastSampler with a NaN network",
     lambda m: FastSampler(bf16=False, compile=False, cuda_graph=False).sample(nan_net, S, X, steps=2),
     "NaN or Inf in 2 of 2 samples"),
    ("invert_image of NaN images",
     lambda m: invert_image(m, S, X * math.nan, torch.tensor([0, 1]), steps=2), "x0 contains non-finite values"),
    # silent casts
    ("invert_image float timesteps",
     lambda m: invert_image(m, S, X, torch.tensor([0, 1]), timesteps=[2.7, 1.2]), "timesteps must be integers"),
    ("invert_image float labels",
     lambda m: invert_image(m, S, X, torch.tensor([0.5, 1.0]), steps=2), "labels must be integers"),
    ("null_iters -1", lambda m: InversionOptions(null_iters=-1), "null_iters must be an integer >= 0, got -1"),
    ("null_tol nan", lambda m: InversionOptions(null_tol=math.nan), "null_tol must be a finite number"),
    ("null_lr nan", lambda m: InversionOptions(null_lr=math.nan), "null_lr must be a finite number"),
    ("null_lr 0", lambda m: InversionOptions(null_lr=0.0), "null_lr must be > 0"),
    ("null_iters 2.5", lambda m: InversionOptions(null_iters=2.5), "null_iters must be an integer"),
    ("set_alpha_to_one 'no'", lambda m: SampleOptions(set_alpha_to_one="no"), "set_alpha_to_one must be True or"),
    ("eps_from_clipped_x0 'yes'", lambda m: SampleOptions(eps_from_clipped_x0="yes"), "eps_from_clipped_x0 must be"),
    ("clip True", lambda m: SampleOptions(clip=True), "clip and threshold take numbers"),
    ("RunOptions fast 'no'", lambda m: RunOptions(fast="no"), "fast must be True or False, got 'no'"),
    ("RunOptions channels_last 'no'", lambda m: RunOptions(channels_last="no"), "channels_last must be True or"),
    ("generate_batch index 1.5", lambda m: generate_batch(m, S, [1.5]), "sample index must be an integer, got 1.5"),
    ("generate_batch index True", lambda m: generate_batch(m, S, [True]), "sample index must be an integer, got True"),
    ("consistency k True", lambda m: consistency(m, S, [2], True), "k must be an integer, got True"),
    ("a network returning int64", lambda m: ddim.sample(lambda x, t: x.long(), S, X, steps=2),
     "must return a floating-point tensor, got dtype torch.int64"),
    ("a network returning complex", lambda m: ddim.sample(lambda x, t: x.to(torch.complex64), S, X, steps=2),
     "must return a floating-point tensor, got dtype torch.complex64"),
    ("a solver returning another batch size",
     lambda m: ddim.sample(eps0, S, X, steps=2, solver=_HalfBatch(name="half")), "returned x shaped (1, 1, 4, 4)"),
    # raw exceptions
    ("score of a list", lambda m: ddim.score(eps0, S, [[1.0]], T5), "x_t must be a floating-point tensor"),
    ("sdedit of a list", lambda m: sdedit(eps0, S, [[0.0]], 0.5), "x0 must be a floating-point tensor"),
    ("sdedit of int64 images", lambda m: sdedit(eps0, S, X.long(), 0.5), "x0 must be a floating-point tensor"),
    ("sdedit options a dict", lambda m: sdedit(eps0, S, X, 0.5, {"steps": 2}), "options must be a ddim.SampleOptions"),
    ("invert_image of a list", lambda m: invert_image(m, S, [[0.0]], torch.tensor([0])),
     "x0 must be a floating-point tensor"),
    ("invert_image labels a list", lambda m: invert_image(m, S, X, [0, 1]), "labels must be an int64 tensor"),
    ("invert_image label -1", lambda m: invert_image(m, S, X, torch.tensor([-1, 1]), steps=2),
     "labels must lie in 0..3, got values in [-1, 1]"),
    ("invert_image options a string", lambda m: invert_image(m, S, X, torch.tensor([0, 1]), options="x"),
     "options must be a ddim.inversion.InversionOptions, got str"),
    ("invert_image options and another steps",
     lambda m: invert_image(m, S, X, torch.tensor([0, 1]), options=InversionOptions(steps=2), steps=3),
     "not both (got options and steps)"),
    ("regenerate toward float labels", lambda m: regenerate(m, S, invert_image(m, S, X, torch.tensor([0, 1]),
                                                                               steps=2), torch.tensor([0.0, 1.0])),
     "labels must be integers"),
    ("reconstruction_errors of a list", lambda m: reconstruction_errors(eps0, S, [[0.0]], None, [2]),
     "images must be a floating-point tensor"),
    ("reconstruction_errors with clip", lambda m: reconstruction_errors(eps0, S, X, None, [2], SampleOptions(clip=1.0)),
     "reconstruction runs DDIM without clip or threshold"),
    ("RunOptions device bogus", lambda m: RunOptions(device="bogus"), "device must be like 'cpu'"),
    ("RunOptions device 5", lambda m: RunOptions(device=5), "5"),  # torch reads 5 as cuda:5 or refuses it
    ("RunOptions device cuda:99", lambda m: RunOptions(device="cuda:99"), "'cuda:99' is not available here"),
    ("generate_batch of no indices", lambda m: generate_batch(m, S, []), "indices must hold at least one sample"),
    ("generate_batch index -1", lambda m: generate_batch(m, S, [-1, 0]),
     "sample index must be an integer >= 0, got -1"),
    ("consistency k 0", lambda m: consistency(m, S, [2], 0), "k must be an integer >= 1, got 0"),
    ("timesteps 1e30", lambda m: ddim.sample(eps0, S, X, timesteps=[10**30, 0]), "got 1000000000000000000000000000000"),
    ("InversionOptions timesteps 'ab'", lambda m: InversionOptions(timesteps="ab"), "timesteps must be integers"),
    ("a classifier that is a string", lambda m: GuidanceOptions(classifier="x", classifier_scale=1.0),
     "classifier must be a network (callable), got str"),
    ("FastSampler max_graphs 0", lambda m: FastSampler(max_graphs=0), "max_graphs must be an integer >= 1, got 0"),
    ("FastSampler bf16 'no'", lambda m: FastSampler(bf16="no"), "bf16 must be True or False"),
]


class _HalfBatch(DDIM):
    """A broken solver: its step drops half the batch (passed as an instance, never registered, so the
    registry other tests walk stays clean)."""

    def step(self, k, x, predict, t_batch, coef, state, noise_at):
        x, x0 = super().step(k, x, predict, t_batch, coef, state, noise_at)
        return x[:1], x0


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_api_refuses_in_one_line(case, cond):
    _, call, message = case
    with pytest.raises((ValueError, TypeError)) as e:
        call(cond)
    assert message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_a_denoisers_own_io_dtype_wins():
    seen = []

    def net(x, t):
        seen.append(x.dtype)
        return torch.zeros_like(x)

    ddim.sample(Denoiser(net, S, "epsilon", torch.float32), S, torch.zeros(2, 1, 4, 4, dtype=torch.float64), steps=2)
    ddim.invert(Denoiser(net, S, "epsilon", torch.float32), S, torch.zeros(2, 1, 4, 4, dtype=torch.float64), steps=2)
    ddim.score(Denoiser(net, S, "epsilon", torch.float32), S, torch.zeros(2, 1, 4, 4, dtype=torch.float64), T5)
    assert seen and set(seen) == {torch.float32}


def test_options_and_the_same_keyword_value_agree():
    o = SampleOptions(steps=3)
    assert SampleOptions.of(o, steps=3) is o  # the options' own value is no clash
    with pytest.raises(ValueError, match="not both"):
        SampleOptions.of(o, steps=4)


BAD_REGISTRATIONS = [
    ("name None", lambda: register(name=None)(DDIM), "solver name must be letters"),
    ("name empty", lambda: register(name="")(DDIM), "solver name must be letters"),
    ("name with a path", lambda: register(name="../../escape")(DDIM), "solver name must be letters"),
    ("name with a comma", lambda: register(name="a b,c")(DDIM), "solver name must be letters"),
    ("not a Solver", lambda: register(name="x")(dict), "register takes a subclass of ddim.samplers.Solver"),
    ("no step", lambda: register(name="stepless")(type("Stepless", (Solver,), {})), "must define step()"),
    ("default_steps -1", lambda: register(name="neg-steps", default_steps=-1)(DDIM),
     "default_steps must be an integer"),
    ("default_spacing bogus", lambda: register(name="bogus-sp", default_spacing="bogus")(DDIM),
     "unknown default_spacing 'bogus'"),
    ("noise_eta nan", lambda: register(name="nan-eta", noise_eta=math.nan)(DDIM), "noise_eta must be a finite"),
    ("half a family taken", lambda: register({"name": "new-a"}, {"name": "ddim"})(DDIM), "'ddim' is registered"),
]


@pytest.mark.parametrize("case", BAD_REGISTRATIONS, ids=[c[0] for c in BAD_REGISTRATIONS])
def test_register_refuses_and_registers_nothing(case):
    before = dict(SOLVERS)
    _, call, message = case
    with pytest.raises((ValueError, TypeError)) as e:
        call()
    assert message in str(e.value), str(e.value)
    assert SOLVERS == before  # all or nothing: no half-registered family, no None name breaking later errors


def test_a_broken_table_is_named():
    class BadTable(DDIM):
        def table(self, abar_t, abar_prev):
            return "oops"

    with pytest.raises(TypeError, match="table\\(\\) must return a dict of name -> tensor, got str"):
        ddim.sample(eps0, S, X, steps=2, solver=BadTable(name="bad-table"))
