"""The fast path for ``sample``: same arguments, same step math, fewer and cheaper kernels.

On CUDA, in this order (each part can be switched off; when a call fails, plain ``ddim.sample`` gives
its result, and if that works the failing part is dropped for later calls with a one-time warning
naming the reason: first the graph, then compile, then everything; an error ``sample`` raises too is
the caller's and is raised as is):

    bf16 autocast      the model runs in bfloat16; the sampler's own state and eq. 12 stay float32
    channels_last      x_t is kept NHWC (conv kernels' native layout); see ``fast_module`` for weights
    torch.compile      the model call plus the prediction conversion (``denoise``), static shapes
    CUDA graph         the whole S-step loop (``sample_loop``) captured once per (model, shape, plan,
                       options) and replayed per batch: coefficients live on the device, the noise z
                       of every noisy step is drawn before the replay into a static buffer from the
                       caller's generators (in the order ``sample`` draws it), and nothing in the loop
                       reads a device value back to the host; a loop whose noise would take over a
                       quarter of the free device memory (``NOISE_MEMORY_SHARE``) runs uncaptured

On the CPU, channels_last (a ``fast_module`` copy: the convs' native layout there too) and bf16 autocast
where the CPU has bf16 in hardware (AMX or AVX512-BF16, ``ddim.device.cpu_native_bf16``; emulated bf16 is
slower than float32, so elsewhere it stays off); graphs are off, and torch.compile unless ``compile=True``.

Results: float32 samples equal ``sample``'s up to the bf16 rounding inside the model where bf16 is on;
otherwise up to the order of the convs' additions (channels_last), exactly for elementwise models.

What a captured graph assumes: the model reads nothing but (x, t) and device tensors that stay in
place between calls (update such tensors with ``copy_``, as ``ddim.generate`` does for labels), and
its weights are updated in place if at all. Models that sync with the host cannot be captured: the
loop then runs uncaptured (one warning).
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..checks import check_bool, check_finite_result, check_int
from ..denoiser import Denoiser
from ..device import cpu_native_bf16
from ..noise import Generators, randn
from ..schedule import Schedule
from .loop import (Model, Plan, SampleOptions, SampleSetup, Trajectory, _work_dtype, bind, denoise, noise_drawer,
                   run_sample, sample_loop, sample_setup)

__all__ = ["FastSampler", "fast_sample", "fast_module"]

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
# A captured loop holds the noise of all its noisy steps at once (1000-step DDPM at CIFAR batch 256:
# 3 GiB); beyond this share of the free device memory the loop runs uncaptured instead.
NOISE_MEMORY_SHARE = 0.25


def fast_module(net: nn.Module, channels_last: bool = True) -> nn.Module:
    """An inference copy of ``net`` for the fast path: eval mode, no gradients, channels_last weights.

    A copy, not in place: the caller's module keeps its layout (safetensors saves only contiguous
    tensors, and a network still being trained must not be re-strided under its optimizer).
    """
    m = copy.deepcopy(net).eval().requires_grad_(False)
    return m.to(memory_format=torch.channels_last) if channels_last else m


class _CaptureError(RuntimeError):
    """Capturing or replaying the loop as a CUDA graph failed (the uncaptured loop may still work)."""


@dataclass
class _Graph:
    """One captured loop: replay after filling x_in ((B, …) x_T) and z ((noisy steps, B, …) N(0, I) draws,
    or None); the result appears in x_out. coef (the plan on the device) and predict (holding the model
    whose weights the graph reads) are kept alive with the graph, which reads them in place."""

    graph: torch.cuda.CUDAGraph
    x_in: torch.Tensor
    z: Optional[torch.Tensor]
    x_out: torch.Tensor
    coef: Plan
    predict: object


def _static_noise(setup: SampleSetup, z: Optional[torch.Tensor]):
    """``noise_at`` reading the pre-drawn buffer: draw j of step k is z[slot_k + j], slot_k counting the
    draws of the steps before k (the order ``noise_drawer`` draws them in)."""
    slot = [sum(setup.draws[:k]) for k in range(len(setup.draws))]
    return lambda k, j=0: z[slot[k] + j] if j < setup.draws[k] else None


def _noise_buffer(n: int, x: torch.Tensor) -> Optional[torch.Tensor]:
    """(n, B, …) for n noisy steps, each slice laid out like x (channels_last slices for a channels_last
    x, so eq. 12's sums keep one layout); None for n = 0."""
    if n == 0:
        return None
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        B, C, H, W = x.shape
        return torch.empty((n, B, H, W, C), device=x.device, dtype=x.dtype).permute(0, 1, 4, 2, 3)
    return torch.empty((n, *x.shape), device=x.device, dtype=x.dtype)


def noise_buffer_bytes(setup: SampleSetup, x_T: torch.Tensor) -> int:
    """Bytes of the pre-drawn noise a captured loop holds: one x-sized slice per draw."""
    return sum(setup.draws) * x_T.numel() * torch.empty((), dtype=_work_dtype(x_T)).element_size()


def noise_fits(nbytes: int, free_bytes: int, share: Optional[float] = None) -> bool:
    """Whether a noise buffer of ``nbytes`` may take device memory of which ``free_bytes`` are free, at most
    ``share`` of it (None: ``NOISE_MEMORY_SHARE`` as it is when called, not when this was defined)."""
    return nbytes <= (NOISE_MEMORY_SHARE if share is None else share) * free_bytes


def _plan_key(setup: SampleSetup) -> tuple:
    """What a captured loop bakes in from the plan: the grid, every coefficient (its exact float64 values;
    they are read from device memory captured with the graph) and the noisy steps (the buffer's size)."""
    p = setup.plan
    return (tuple(p.timesteps.tolist()), setup.draws, sum(setup.draws), setup.solver,
            *(tuple(getattr(p, f).tolist()) for f in ("abar_t", "abar_prev", "sigma", "noise_std")),
            *((name, tuple(col.flatten().tolist())) for name, col in sorted(p.table.items())))


def _rng_rewind(generator: Generators, device: torch.device):
    """A function putting what ``sample`` draws from back in its present state (the generators, or for
    None the global CPU RNG and ``device``'s CUDA one): undoes a failed fast attempt's draws."""
    if generator is None:
        saved = [(torch.set_rng_state, torch.get_rng_state())]
        if device.type == "cuda":
            saved.append((lambda s: torch.cuda.set_rng_state(s, device), torch.cuda.get_rng_state(device)))
    else:
        try:
            gens = [generator] if isinstance(generator, torch.Generator) else list(generator)
            saved = [(g.set_state, g.get_state()) for g in gens]
        except (TypeError, AttributeError):  # not generators: ``sample`` raises its own error
            saved = []
    return lambda: [restore(state) for restore, state in saved]


def _fill_noise(z: Optional[torch.Tensor], setup: SampleSetup, generator: Generators) -> None:
    """Draw z (if any) for every noisy step, in step order, from ``generator`` (one or one per sample),
    exactly as ``sample`` would during its loop."""
    for j in range(0 if z is None else z.shape[0]):
        z[j].copy_(randn(z.shape[1:], generator, z.device, z.dtype))


class FastSampler:
    """``sample`` with bf16, channels_last, torch.compile and a CUDA-graph-captured loop (see module doc).

    Holds its compiled models and captured graphs between calls (least recently used dropped beyond
    ``max_graphs``), so one sampler should serve all batches of a run.

    Args:
        bf16: autocast the model to bfloat16 (CUDA, and CPUs with bf16 in hardware).
        channels_last: keep x_t in channels_last (also on the CPU).
        compile: torch.compile the model call; None = on CUDA only.
        compile_mode: torch.compile's mode, "default" (compiles in about a minute) or "max-autotune-no-
            cudagraphs" (tunes longer); modes with CUDA graphs of their own would clash with ours.
        cuda_graph: capture the whole loop (CUDA only).
        max_graphs: captured loops kept (each holds its activation memory).
    """

    def __init__(self, *, bf16: bool = True, channels_last: bool = True, compile: Optional[bool] = None,
                 compile_mode: str = "default", cuda_graph: bool = True, max_graphs: int = 2):
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode {compile_mode!r} is not allowed (allowed: "
                             f"{', '.join(map(repr, COMPILE_MODES))}): the fast path captures its own CUDA "
                             "graph, and modes such as 'reduce-overhead' and 'max-autotune' capture theirs")
        for name, v in (("bf16", bf16), ("channels_last", channels_last), ("cuda_graph", cuda_graph)):
            check_bool(name, v)
        if compile is not None:
            check_bool("compile", compile)
        check_int("max_graphs", max_graphs, 1)
        self.bf16, self.channels_last, self.compile = bf16, channels_last, compile
        self.compile_mode, self.cuda_graph, self.max_graphs = compile_mode, cuda_graph, max_graphs
        self.reasons: list[str] = []  # every fallback so far, in order (each also warned once)
        self._broken = False  # the CUDA fast path failed: plain ``sample`` from now on
        self._predicts: OrderedDict = OrderedDict()  # key -> (model call, model); bounded like the graphs
        self._graphs: OrderedDict = OrderedDict()
        self._streams: dict = {}  # CUDA device index -> the side stream of warm-ups and captures there

    def _note(self, reason: str) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)
            warnings.warn(f"ddim fast sampling: {reason}", RuntimeWarning, stacklevel=3)

    def sample(self, model: Model, schedule: Schedule, x_T: torch.Tensor, steps: Optional[int] = 50, *,
               generator: Generators = None, options: Optional[SampleOptions] = None,
               return_trajectory: bool = False, callback=None, **option_kwargs):
        """As ``ddim.sample`` (same arguments, errors and return value), except that everything after ``steps``
        is keyword-only: ``generator=``, and the options as keywords or as ``options=``. ``callback`` or
        ``return_trajectory`` need the host at every step, so such calls run the loop uncaptured."""
        opts = SampleOptions.of(options, steps=steps, **option_kwargs)
        result = self._sample(model, schedule, x_T, opts, generator, return_trajectory, callback)
        check_finite_result(result[0] if return_trajectory else result)  # a diverged model, not the fast path
        return result

    def _sample(self, model, schedule, x_T, opts, generator, return_trajectory, callback):
        """``sample``'s result, by the fastest path that works."""
        denoiser = Denoiser.of(model, schedule, opts.prediction)
        opts = bind(denoiser, opts)
        setup = sample_setup(schedule, x_T, opts)  # sample's checks
        denoiser.start_run()
        plain = lambda: run_sample(denoiser, x_T, opts, generator,  # noqa: E731
                                   return_trajectory=return_trajectory, callback=callback)
        # the io dtype last (``_predict`` reads it); the device type decides bf16 and compile
        key = (id(denoiser.net), *setup.model_key(), x_T.device.type, x_T.dtype)
        on_cuda = x_T.device.type == "cuda"
        if self._broken:
            return plain()
        if not on_cuda:
            off = self._bf16_off(x_T.device.type, denoiser.io_dtype or x_T.dtype)
            self._note(f"x_T is on {x_T.device.type}, not CUDA: CUDA graphs are off"
                       + ("" if self.compile else ", and so is torch.compile") + (f"; bf16 too ({off})" if off else ""))
        rewind = _rng_rewind(generator, x_T.device) if any(setup.draws) else (lambda: None)
        try:
            use_graph = (on_cuda and self.cuda_graph and callback is None and not return_trajectory
                         and denoiser.graph_safe)
            if use_graph and any(setup.draws):   # η = 0 pre-draws nothing
                nbytes, free = noise_buffer_bytes(setup, x_T), torch.cuda.mem_get_info(x_T.device)[0]
                if not noise_fits(nbytes, free):
                    use_graph = False
                    self._note(f"the noise of {sum(setup.draws)} noisy steps ({nbytes / 2**30:.1f} GiB) would take "
                               f"over {NOISE_MEMORY_SHARE:.0%} of the {free / 2**30:.1f} GiB free on {x_T.device}; "
                               "running this loop uncaptured (fewer steps, a smaller batch or η = 0 capture)")
            x, traj = self._run(denoiser, setup, x_T, generator, key, use_graph, return_trajectory, callback)
            return (x, traj) if return_trajectory else x
        except Exception as e:  # noqa: BLE001  the fallback must always work
            rewind()  # the attempt may have drawn noise: the fallback draws the same numbers again
            result = plain()  # raises the model's own errors exactly as ddim.sample does
            self._drop_feature(e, on_cuda)  # it worked, so the failure was the fast path's
            return result

    def _drop_feature(self, error: Exception, on_cuda: bool) -> None:
        """After a failure: no graphs if capture or replay failed, else no compile, else (on the CPU) no bf16,
        else plain ``sample``. The captured graphs (and their memory pools) go in every case: none is replayed
        again unchecked."""
        self._graphs.clear()
        if isinstance(error, _CaptureError):
            self.cuda_graph = False
            self._note(f"the CUDA graph of the loop failed ({error.__cause__!r}); running it uncaptured")
        elif self._compiles(on_cuda):
            self.compile = False
            self._predicts.clear()
            self._note(f"the compiled model failed ({error!r}); running it uncompiled")
        elif not on_cuda and self.bf16 and cpu_native_bf16():
            self.bf16 = False
            self._predicts.clear()
            self._note(f"the model failed under bf16 autocast ({error!r}); running it in float32")
        else:
            self._broken = True
            self._note(f"the fast path failed ({error!r}); using ddim.sample")

    def _bf16_off(self, device_type: str, model_dtype: torch.dtype) -> Optional[str]:
        """Why bf16 autocast stays off for a model run in ``model_dtype`` on ``device_type``; None: it is on
        (or was not asked for)."""
        if not self.bf16 or device_type == "cuda":
            return None
        if device_type != "cpu":
            return f"not on {device_type}"
        if model_dtype != torch.float32:  # e.g. a half model: CPU autocast would mix dtypes in its norms
            return f"the model runs in {model_dtype}, not float32"
        if not cpu_native_bf16():
            return "this CPU has neither AMX nor AVX512-BF16, and emulated bf16 is slower"
        return None

    def _bf16_on(self, device_type: str, model_dtype: torch.dtype) -> bool:
        return self.bf16 and self._bf16_off(device_type, model_dtype) is None

    def _compiles(self, on_cuda: bool) -> bool:
        return bool(self.compile) if self.compile is not None else on_cuda

    def _predict(self, denoiser: Denoiser, setup: SampleSetup, key, on_cuda: bool):
        """``denoise`` bound to the denoiser (bf16-autocast where ``_bf16_on``) and options, compiled if asked;
        cached."""
        if key in self._predicts:
            self._predicts.move_to_end(key)
            return self._predicts[key][0]
        io_dtype, device_type = key[-1], key[-2]
        bf16 = self._bf16_on(device_type, denoiser.io_dtype or io_dtype)

        def predict(x, t, abar_t):
            # cache_enabled=False: autocast's weight-cast cache must not outlive a graph capture.
            amp = torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=False) if bf16 else nullcontext()
            with amp:
                return denoise(denoiser, x, t, abar_t, setup.post, setup.eps_from_clipped_x0, io_dtype)

        fn = torch.compile(predict, mode=self.compile_mode, dynamic=False) if self._compiles(on_cuda) else predict
        self._predicts[key] = (fn, denoiser)  # the network stays referenced, so id(net) stays unique
        while len(self._predicts) > max(4, 2 * self.max_graphs):  # e.g. a new closure per call
            self._predicts.popitem(last=False)
        return fn

    def _run(self, denoiser, setup, x_T, generator, key, use_graph, return_trajectory, callback):
        on_cuda = x_T.device.type == "cuda"
        predict = self._predict(denoiser, setup, key, on_cuda)
        # Normal (not inference) tensors even under an outer inference_mode: the static buffers of a
        # graph are written in place by later calls, whatever mode those run in.
        with torch.inference_mode(False), torch.no_grad():
            x = x_T.to(_work_dtype(x_T))
            if self.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            if use_graph:
                gkey = key + (tuple(x.shape), str(x.device), _plan_key(setup))
                return self._replay(predict, setup, x, generator, gkey).to(x_T.dtype), None
            coef = setup.plan.to(x.device, x.dtype)
            res = sample_loop(predict, setup, coef, x, noise_drawer(setup, coef, x, generator),
                              return_trajectory=return_trajectory, callback=callback)
        if not return_trajectory:
            return res.to(x_T.dtype, memory_format=torch.contiguous_format), None
        x, xs, x0s = res
        return x.to(x_T.dtype, memory_format=torch.contiguous_format), Trajectory(setup.plan.timesteps, xs, x0s)

    def _replay(self, predict, setup: SampleSetup, x: torch.Tensor, generator: Generators, key) -> torch.Tensor:
        """Fill the static inputs of the graph for ``key`` and replay it; a new key is captured instead
        (its warm-up gives this call's result). On x's device, whichever device is current."""
        with torch.cuda.device(x.device):
            g = self._graphs.get(key)
            if g is None:
                g, x0 = self._capture(predict, setup, x, generator)
                self._graphs[key] = g  # only a complete capture is kept
                while len(self._graphs) > self.max_graphs:
                    self._graphs.popitem(last=False)
                return x0
            self._graphs.move_to_end(key)
            g.x_in.copy_(x)
            _fill_noise(g.z, setup, generator)
            try:
                g.graph.replay()
                return g.x_out.clone(memory_format=torch.contiguous_format)  # the next replay overwrites x_out
            except Exception as e:
                del self._graphs[key]
                raise _CaptureError(f"replay: {e}") from e

    def _capture(self, predict, setup: SampleSetup, x: torch.Tensor, generator: Generators):
        """Fill static buffers with this call's x_T and noise, warm up (compile, autotune, allocate) by
        running the loop on them on a side stream, capture the loop over the same buffers (under
        ``torch.cuda.device(x.device)``). Returns (the graph, the warm-up's x_0): the warm-up ran this
        call's loop on its inputs and noise with the computation the graph holds, so that x_0 is this
        call's result, and the first call costs one loop and a capture (which runs nothing), not a
        replay on top. A shorter warm-up would not do: compile must meet every step's inputs first."""
        dev = x.device
        coef = setup.plan.to(dev, x.dtype)
        x_in = x.clone()
        z = _noise_buffer(sum(setup.draws), x)
        _fill_noise(z, setup, generator)
        noise_at = _static_noise(setup, z)
        if dev.index not in self._streams:  # one per device, for all warm-ups and captures there
            self._streams[dev.index] = torch.cuda.Stream(dev)
        main, side = torch.cuda.current_stream(dev), self._streams[dev.index]
        side.wait_stream(main)
        with torch.cuda.stream(side):
            # errors here are the model's or compile's
            x0 = sample_loop(predict, setup, coef, x_in, noise_at).contiguous(memory_format=torch.contiguous_format)
        main.wait_stream(side)
        x0.record_stream(main)  # allocated on ``side``, read on ``main`` by the caller
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(dev)
        # capture_begin/end by hand, not ``torch.cuda.graph`` (whose exit skips restoring the stream when
        # capture_end raises): this stream context restores the caller's stream however the capture ends.
        try:
            with torch.cuda.stream(side):
                graph.capture_begin()
                try:
                    x_out = sample_loop(predict, setup, coef, x_in, noise_at)
                except BaseException:
                    with suppress(Exception):  # end the (invalidated) capture; its error adds nothing
                        graph.capture_end()
                    raise
                graph.capture_end()
        except Exception as e:
            raise _CaptureError(str(e)) from e  # the graph (half-built or not) is dropped here
        return _Graph(graph, x_in, z, x_out, coef, predict), x0


_DEFAULT: Optional[FastSampler] = None


def fast_sample(model: Model, schedule: Schedule, x_T: torch.Tensor, steps: Optional[int] = 50, **kwargs):
    """``ddim.sample`` through one process-wide ``FastSampler`` (graphs kept between calls; each
    fallback warned once per process). Arguments and result as in ``FastSampler.sample``: those after
    ``steps`` by keyword."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = FastSampler()
    return _DEFAULT.sample(model, schedule, x_T, steps, **kwargs)
