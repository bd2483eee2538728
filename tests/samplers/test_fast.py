"""The fast sampling path (``ddim.samplers.fast``): same results as ``ddim.sample`` where it falls back,
the same errors, one warning per reason; on CUDA, bf16 + compile + one captured graph."""

import dataclasses
import warnings

import numpy as np
import pytest
import torch

import ddim
from ddim.generate import RunOptions, conditioned, generate, initial_noise
from ddim.samplers import FastSampler, fast_module, fast_sample
from ddim.samplers import fast as fast_mod
from ddim.samplers.loop import SampleOptions, sample_setup

from .fastpaths import (S1000, affine_model, bundled, our_warnings, perturbed_tiny_unet, quiet_sampler, run_quietly,
                        within_bf16)

@pytest.mark.parametrize("kwargs", [
    dict(steps=7),
    dict(steps=6, eta=1.0, per_sample=True),
    dict(steps=5, eta="large", per_sample=True),
    dict(steps=5, eta=(1.0, 1.0, 0.0, 0.5, 0.0), per_sample=True),
    dict(steps=5, eta=0.3, spacing="quadratic", prediction="v"),
    dict(steps=4, clip=1.0, eps_from_clipped_x0=True),
    dict(steps=4, threshold=0.9, threshold_max=2.0, prediction="sample"),
])
def test_cpu_fallback_equals_sample_exactly(kwargs):
    """On the CPU an elementwise model gives exactly ``sample``'s numbers (channels_last reorders memory,
    not arithmetic), with the same per-sample noise."""
    kwargs = dict(kwargs)
    per_sample = kwargs.pop("per_sample", False)
    x = 2 * torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    gens = (lambda: ddim.generators(4, range(3))) if per_sample else (lambda: None)
    torch.manual_seed(9)  # the global RNG where no generator is given
    want = ddim.sample(affine_model, S1000, x, generator=gens(), **kwargs)
    torch.manual_seed(9)
    got = run_quietly(quiet_sampler().sample, affine_model, S1000, x, generator=gens(), **kwargs)
    assert got.is_contiguous() and got.dtype == want.dtype
    assert torch.equal(got, want)


def test_cpu_trajectory_and_callback_match_sample():
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    seen = []
    want, traj = ddim.sample(affine_model, S1000, x, steps=5, return_trajectory=True)
    got, got_traj = run_quietly(quiet_sampler().sample, affine_model, S1000, x, steps=5, return_trajectory=True,
                                callback=lambda k, t, xt, x0: seen.append(t))
    assert torch.equal(got, want) and torch.equal(got_traj.x, traj.x) and torch.equal(got_traj.x0_pred, traj.x0_pred)
    assert seen == ddim.timesteps(1000, 5).tolist()


def test_cpu_warns_once_naming_the_reason():
    s = FastSampler()
    x = torch.randn(2, 1, 4, 4)
    with pytest.warns(RuntimeWarning, match="not CUDA") as record:
        s.sample(affine_model, S1000, x, steps=3)
        s.sample(affine_model, S1000, x, steps=3)
    assert len([w for w in record if "ddim fast sampling" in str(w.message)]) == 1
    assert len(s.reasons) == 1 and "not CUDA" in s.reasons[0]


def test_unet_with_channels_last_copy_matches_sample():
    """A channels_last copy of a UNet on the CPU: the conv sums run in another order, nothing else."""
    net = perturbed_tiny_unet()
    fast_net = fast_module(net)
    assert next(p for p in fast_net.parameters() if p.ndim == 4).is_contiguous(memory_format=torch.channels_last)
    assert all(p.is_contiguous() for p in net.parameters())  # the caller's module is untouched
    labels = torch.arange(4) % 10
    x, gens = initial_noise(3, range(4), (1, 8, 8))
    _, gens2 = initial_noise(3, range(4), (1, 8, 8))
    with torch.inference_mode():
        want = ddim.sample(conditioned(net, labels), S1000, x, 10, eta=1.0, generator=gens)
        got = run_quietly(quiet_sampler().sample, conditioned(fast_net, labels), S1000, x, 10, eta=1.0,
                          generator=gens2)
    # fp32 rounding (2^-24 relative per operation) in another order, over 10 steps: far below 1e-5 of
    # the scale (this random network's x̂_0 reaches ~200)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


@pytest.mark.parametrize("kwargs,msg", [
    (dict(steps=0), "1 <= steps <= T=1000, got 0"),
    (dict(eta=-1.0), "eta must be a finite number >= 0 or 'large', got -1.0"),
    (dict(eta=3.0), "eta=3.0 is too large"),
    (dict(spacing="cubic"), "unknown spacing 'cubic'"),
    (dict(prediction="x0"), "unknown prediction type 'x0'"),
    (dict(clip=1.0, threshold=0.99), "either clip or threshold"),
    (dict(timesteps=[5, 10]), "strictly decreasing"),
    (dict(eta=1.0, generator=[torch.Generator()]), "1 per-sample generators for a batch of 2"),
])
def test_bad_input_raises_what_sample_raises(kwargs, msg):
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match=msg):
        ddim.sample(affine_model, S1000, x, **kwargs)
    s = quiet_sampler()
    with pytest.raises(ValueError, match=msg):
        run_quietly(s.sample, affine_model, S1000, x, **kwargs)
    assert not s._broken  # the caller's mistake does not switch the fast path off


def test_bad_tensors_and_model_errors_as_in_sample():
    s = quiet_sampler()
    bad = torch.zeros(2, 1, 4, 4)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="x_T contains non-finite"):
        run_quietly(s.sample, affine_model, S1000, bad)
    with pytest.raises(ValueError, match=r"model output has shape \(2, 1, 2, 2\), expected \(2, 1, 4, 4\)"):
        run_quietly(s.sample, lambda x, t: x[..., :2, :2], S1000, torch.zeros(2, 1, 4, 4))
    assert not s._broken


def test_failure_falls_back_to_sample_with_one_warning():
    """A model that breaks on channels_last input (a view): the result is ``sample``'s, the reason is
    warned once, and later calls go straight to ``sample``."""
    def flat_model(x, t):
        return torch.tanh(x.view(x.shape[0], -1)).view(x.shape)  # view needs contiguous memory

    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    want = ddim.sample(flat_model, S1000, x, steps=4)
    s = FastSampler()
    with pytest.warns(RuntimeWarning) as record:
        a = s.sample(flat_model, S1000, x, steps=4)
        b = s.sample(flat_model, S1000, x, steps=4)
    assert torch.equal(a, want) and torch.equal(b, want)
    fallbacks = [str(w.message) for w in record if "using ddim.sample" in str(w.message)]
    assert len(fallbacks) == 1 and "view" in fallbacks[0]
    assert s._broken and s.reasons[-1].startswith("the fast path failed")


def test_fast_sample_function_uses_one_sampler():
    x = torch.randn(2, 1, 4, 4)
    a = run_quietly(fast_sample, affine_model, S1000, x, 3)
    assert torch.equal(a, ddim.sample(affine_model, S1000, x, 3))
    assert fast_mod._DEFAULT is not None and run_quietly(fast_sample, affine_model, S1000, x, 3).shape == x.shape


def test_generate_fast_on_cpu_matches_and_keeps_per_sample_seeds():
    net = perturbed_tiny_unet()
    opts = SampleOptions(steps=4, eta=1.0)
    want = generate(net, S1000, 5, opts, run=RunOptions(seed=5, batch_size=5))
    ticks = []
    got = run_quietly(generate, net, S1000, 5, opts, run=RunOptions(seed=5, batch_size=2, fast=True),
                      on_step=lambda: ticks.append(1))
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()  # fp32 rounding in another order (see above)
    assert len(ticks) == 3 * 4  # three batches of four steps


def test_cli_sample_fast_on_cpu(tmp_path):
    from ddim.cli import main

    common = ["sample", "--n", "3", "--steps", "3", "--seed", "2", "--device", "cpu", "--quiet",
              "--out", str(tmp_path / "g.png")]
    assert main([*common, "--npz", str(tmp_path / "a.npz")]) == 0
    assert run_quietly(main, [*common, "--fast", "--npz", str(tmp_path / "b.npz")]) == 0
    a, b = (np.load(tmp_path / f)["images"] for f in ("a.npz", "b.npz"))
    np.testing.assert_allclose(b, a, atol=1e-4)


@pytest.mark.parametrize("gen", ["per_sample", "one", "global"])
def test_fallback_after_noise_was_drawn_gives_sample_s_images(gen):
    """The fast attempt fails after drawing noise for two steps: its draws are undone, so the fallback
    gives exactly ``sample``'s images from fresh generators, and leaves the RNGs where ``sample`` does."""
    calls = []

    def fails_late(x, t):  # only the fast path's x is channels_last (not contiguous)
        if not x.is_contiguous():
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("injected failure")
        return affine_model(x, t)

    make = {"per_sample": lambda: ddim.generators(7, range(3)), "one": lambda: [torch.Generator().manual_seed(7)],
            "global": lambda: None}[gen]
    pick = lambda gens: gens[0] if gen == "one" else gens  # noqa: E731
    states = lambda gens: [g.get_state() for g in gens or []] + [torch.get_rng_state()]  # noqa: E731
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(11)
    want_gens = make()
    want = ddim.sample(affine_model, S1000, x, steps=5, eta=1.0, generator=pick(want_gens))
    want_after = states(want_gens)
    torch.manual_seed(11)
    gens = make()
    with pytest.warns(RuntimeWarning, match="x_T is on cpu, not CUDA"), pytest.warns(RuntimeWarning, match="injected failure"):
        got = FastSampler().sample(fails_late, S1000, x, steps=5, eta=1.0, generator=pick(gens))
    assert len(calls) == 3 and torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(states(gens), want_after))


def test_graph_key_includes_the_plan():
    """A captured loop bakes in the plan's coefficients and the number of noise draws: any change of
    schedule, η or end point is another graph (the grid τ alone is not enough)."""
    x = torch.zeros(2, 1, 4, 4)
    key = lambda schedule=S1000, **kw: fast_mod._plan_key(  # noqa: E731
        sample_setup(schedule, x, SampleOptions(steps=10, **kw)))
    base = key()
    assert key() == base and hash(base) == hash(key())
    others = [key(ddim.Schedule.linear(1000, beta_end=0.03)), key(ddim.Schedule.cosine(1000)), key(eta=0.5),
              key(eta=1.0), key(eta="large"), key(set_alpha_to_one=False), key(spacing="quadratic")]
    assert all(k != base for k in others) and len(set(others)) == len(others)
    assert base[0] == others[0][0]  # the same grid τ with another schedule
    assert base[2] == 0 and key(eta=0.5)[2] == key(eta="large")[2] == 9  # noise draws (none on the last step)


def test_noise_buffer_size_and_the_memory_guard():
    """1000-step DDPM at CIFAR-10 batch 256 pre-draws 999 float32 noise tensors: ~2.9 GiB, more than a
    quarter of an 8 GiB card's free memory, so such a loop runs uncaptured there; η = 0 holds none."""
    x = torch.zeros(256, 3, 32, 32, dtype=torch.bfloat16)   # the buffer is float32 whatever x_T is
    ddpm = fast_mod.noise_buffer_bytes(sample_setup(S1000, x, SampleOptions(1000, eta=1.0)), x)
    assert ddpm == 999 * 256 * 3 * 32 * 32 * 4
    assert fast_mod.noise_buffer_bytes(sample_setup(S1000, x, SampleOptions(1000, eta=0.0)), x) == 0
    assert not fast_mod.noise_fits(ddpm, 8 * 2**30) and fast_mod.noise_fits(ddpm, 78 * 2**30)
    assert fast_mod.noise_fits(0, 0)


def test_the_memory_share_is_read_when_the_guard_runs(monkeypatch):
    """NOISE_MEMORY_SHARE is read at each call (the CUDA test that sets it to 0 relies on it)."""
    assert fast_mod.noise_fits(10, 1000)
    monkeypatch.setattr(fast_mod, "NOISE_MEMORY_SHARE", 0.0)
    assert not fast_mod.noise_fits(10, 1000) and fast_mod.noise_fits(10, 1000, share=0.5)


def test_model_cache_key_names_the_device_type():
    s = quiet_sampler()
    run_quietly(s.sample, affine_model, S1000, torch.zeros(2, 1, 4, 4), 3)
    assert [k[-2:] for k in s._predicts] == [("cpu", torch.float32)]


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune", "fast"])
def test_compile_modes_with_their_own_cuda_graphs_are_refused(mode):
    with pytest.raises(ValueError, match=f"compile_mode '{mode}' is not allowed.*'default', "
                                         "'max-autotune-no-cudagraphs'"):
        FastSampler(compile_mode=mode)
    for ok in fast_mod.COMPILE_MODES:
        FastSampler(compile_mode=ok)


def test_graph_failure_drops_every_graph():
    """A capture or replay failure switches graphs off and frees the captured ones (their memory pools)."""
    s = quiet_sampler()
    s._graphs["key"] = object()
    try:
        raise fast_mod._CaptureError("replay: boom") from RuntimeError("boom")
    except fast_mod._CaptureError as e:
        with pytest.warns(RuntimeWarning, match="CUDA graph of the loop failed.*boom"):
            s._drop_feature(e, on_cuda=True)
    assert not s.cuda_graph and not s._graphs and not s._broken and s.compile is None


@pytest.mark.slow
def test_cpu_compile_when_asked():
    """torch.compile on the CPU only when asked (inductor's C++ build takes tens of seconds)."""
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    s = FastSampler(compile=True)
    got = run_quietly(s.sample, affine_model, S1000, x, steps=3)
    assert s.reasons == [s.reasons[0]] and "compile" not in s.reasons[0]  # only the "not CUDA" note
    torch.testing.assert_close(got, ddim.sample(affine_model, S1000, x, steps=3), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_cuda_fast_matches_fp32_within_bf16(eta):
    """generate(fast=True) on CUDA (bf16, compile, graph; labels through the in-place buffer) against
    the fp32 eager sampler, same seeds."""
    model, schedule, own = bundled("cuda")
    # batch 16, as in the other compiled tests: one compiled shape for the inductor cache to serve
    opts, run = SampleOptions(steps=50, eta=eta, **own), RunOptions(seed=1, batch_size=16, device="cuda")
    want = generate(model, schedule, 32, opts, run=run)  # two batches: the second replays the captured graph
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        got = generate(model, schedule, 32, opts, run=dataclasses.replace(run, fast=True))
    assert our_warnings(record) == []  # no fallback on CUDA
    assert within_bf16(got, want)



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replay_is_deterministic_and_takes_new_inputs(monkeypatch):
    model, schedule, own = bundled("cuda")
    labels = torch.arange(16, device="cuda") % 10
    m = conditioned(fast_module(model), labels)
    s = FastSampler()
    x1, x2 = (torch.randn(16, 1, 28, 28, device="cuda", generator=torch.Generator("cuda").manual_seed(k))
              for k in (1, 2))
    replays = []
    replay = torch.cuda.CUDAGraph.replay
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", lambda g: (replays.append(1), replay(g))[1])
    a = s.sample(m, schedule, x1, 20, **own)  # warm-up and capture: the warm-up's result, no replay
    assert replays == []
    b = s.sample(m, schedule, x1, 20, **own)  # replay
    b2 = s.sample(m, schedule, x1, 20, **own)  # replay
    c = s.sample(m, schedule, x2, 20, **own)  # replay with new x_T
    assert s.reasons == [] and len(s._graphs) == 1 and len(replays) == 3
    assert torch.equal(b, b2) and not torch.equal(b, c)
    torch.testing.assert_close(a, b, atol=1e-3, rtol=0)  # the warm-up ran what the graph holds
    fresh = FastSampler().sample(m, schedule, x2, 20, **own)
    torch.testing.assert_close(c, fresh, atol=1e-3, rtol=0)  # a new capture: same kernels, same numbers


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_eta1_reproducible_from_generators():
    model, schedule, own = bundled("cuda")
    m = conditioned(fast_module(model), torch.arange(16, device="cuda") % 10)
    s = FastSampler()
    runs = []
    for _ in range(3):  # warm-up (its result), then two replays
        x, gens = initial_noise(4, range(16), (1, 28, 28), "cuda")
        runs.append(s.sample(m, schedule, x, 30, eta=1.0, generator=gens, **own))
    assert s.reasons == [] and len(s._graphs) == 1
    assert torch.equal(runs[1], runs[2])
    torch.testing.assert_close(runs[0], runs[1], atol=1e-3, rtol=0)
    x, gens = initial_noise(4, range(16), (1, 28, 28), "cuda")
    eager = ddim.sample(conditioned(model, torch.arange(16, device="cuda") % 10), schedule, x, 30, eta=1.0,
                        generator=gens, **own)
    assert within_bf16(runs[0], eager)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_noise_too_large_for_memory_runs_uncaptured(monkeypatch):
    monkeypatch.setattr(fast_mod, "NOISE_MEMORY_SHARE", 0.0)   # any noise buffer is too large
    model = lambda x, t: 0.1 * torch.tanh(x)  # noqa: E731
    s = FastSampler(compile=False)
    schedule = ddim.Schedule.linear(1000)
    x, gens = initial_noise(1, range(4), (3, 8, 8), "cuda")
    with pytest.warns(RuntimeWarning, match="noisy steps .* running this loop uncaptured"):
        got = s.sample(model, schedule, x, 20, eta=1.0, generator=gens)
    assert not s._graphs and s.cuda_graph                        # only this call ran uncaptured
    x, gens = initial_noise(1, range(4), (3, 8, 8), "cuda")
    torch.testing.assert_close(got, ddim.sample(model, schedule, x, 20, eta=1.0, generator=gens), atol=1e-5, rtol=0)
    s.sample(model, schedule, x, 20, eta=0.0)                    # no noise: captured
    assert len(s._graphs) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_syncing_model_runs_uncaptured_with_one_warning():
    def syncing(x, t):
        if float(x.abs().max()) > 1e9:  # a host read: cannot be captured
            raise AssertionError
        return torch.tanh(x)

    s = FastSampler(compile=False)
    x = torch.randn(4, 3, 8, 8, device="cuda")
    with pytest.warns(RuntimeWarning, match="CUDA graph"):
        got = s.sample(syncing, ddim.Schedule.linear(1000), x, 5)
    assert not s.cuda_graph and not s._broken
    torch.testing.assert_close(got, ddim.sample(syncing, ddim.Schedule.linear(1000), x, 5), atol=1e-6, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_failed_capture_restores_stream_generators_and_cache():
    """Capture fails after the noise was drawn (a host sync inside the loop): the caller's stream is
    current again, no graph is kept, and the fallback's images are ``sample``'s from fresh generators."""
    def syncing(x, t):
        if float(x.abs().max()) > 1e9:
            raise AssertionError
        return torch.tanh(x)

    s = FastSampler(compile=False)
    x, gens = initial_noise(4, range(4), (3, 8, 8), "cuda")
    _, fresh = initial_noise(4, range(4), (3, 8, 8), "cuda")
    stream = torch.cuda.current_stream()
    with pytest.warns(RuntimeWarning, match="CUDA graph"):
        got = s.sample(syncing, S1000, x, 5, eta=1.0, generator=gens)
    assert torch.cuda.current_stream() == stream and not s._graphs and not s.cuda_graph
    assert torch.equal(got, ddim.sample(syncing, S1000, x, 5, eta=1.0, generator=fresh))
    assert all(torch.equal(g.get_state(), f.get_state()) for g, f in zip(gens, fresh))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_per_plan():
    """Same grid, another schedule or η: another graph, with that plan's numbers."""
    s = FastSampler(compile=False)
    x = torch.randn(4, 3, 8, 8, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    for schedule, eta in [(S1000, 0.0), (ddim.Schedule.cosine(1000), 0.0), (S1000, 0.5)]:
        for _ in range(2):  # capture, then replay
            gens = ddim.generators(1, range(4), "cuda")
            got = s.sample(affine_model, schedule, x, 10, eta=eta, generator=gens)
            want = ddim.sample(affine_model, schedule, x, 10, eta=eta, generator=ddim.generators(1, range(4), "cuda"))
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert s.reasons == [] and len(s._graphs) == 2  # max_graphs


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_graph_on_a_device_that_is_not_current():
    s = FastSampler(compile=False)
    x = torch.randn(4, 3, 8, 8, device="cuda:1")
    with torch.cuda.device(0):
        a = s.sample(affine_model, S1000, x, 5)  # capture
        b = s.sample(affine_model, S1000, x, 5)  # replay
    assert s.reasons == [] and len(s._graphs) == 1 and a.device == b.device == x.device
    want = ddim.sample(affine_model, S1000, x, 5)
    torch.testing.assert_close(a, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(b, want, atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("solver", sorted(ddim.samplers.solvers.SOLVERS))
def test_cuda_graph_runs_every_solver(solver):
    """Each solver of the seam (multistep state, UniPC's corrector, Heun's second call, the SDE noise) is
    captured in one CUDA graph, replays bit-identically, and matches the plain loop on the same device."""
    model = lambda x, t: 0.5 * torch.tanh(x) * (1 + t.view(-1, 1, 1, 1) / 1000)  # noqa: E731
    schedule = ddim.Schedule.linear(1000)
    s = FastSampler(compile=False)
    runs = []
    for _ in range(3):  # warm-up (its result), then two replays
        x, gens = initial_noise(2, range(4), (3, 8, 8), "cuda")
        runs.append(s.sample(model, schedule, x, 12, solver=solver, spacing="logsnr", generator=gens))
    assert s.reasons == [] and len(s._graphs) == 1, s.reasons
    assert torch.equal(runs[1], runs[2])
    x, gens = initial_noise(2, range(4), (3, 8, 8), "cuda")
    eager = ddim.sample(model, schedule, x, 12, solver=solver, spacing="logsnr", generator=gens)
    torch.testing.assert_close(runs[1], eager, atol=1e-5, rtol=0)  # a replay, not the uncaptured warm-up
