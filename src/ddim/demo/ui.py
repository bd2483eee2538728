"""`ddim demo`'s web page: four Gradio tabs over ``ddim.demo.work``, nothing more.

Each handler reads the page's fields into the settings of ``ddim.demo.settings`` (the library's checks), calls
one function of ``ddim.demo.work`` with a progress callback, and writes the pictures into the server's
``Scratch`` folder. A refusal (``ValueError``/``OSError``: a bad field, an upload that is not an image, one too
large) becomes a message in the page. All work shares one queue slot: a second request waits for the first.
Importing this module imports Gradio (the ``demo`` extra); only `ddim demo` does.
"""

from __future__ import annotations

import functools
import html
import math
import sys
from pathlib import Path

import gradio as gr
import torch

from ..data import FASHION_MNIST_CLASSES
from ..generate import DEFAULT_GUIDANCE_METHOD
from ..guidance import MethodOptions
from ..inversion import METHODS
from ..samplers import SOLVERS
from ..timesteps import SPACINGS
from . import work
from .outputs import Scratch
from .settings import (DEMO_METHODS, MAX_FRAMES, MAX_IMAGES, EditSettings, Guidance, InterpolateSettings,
                       SampleSettings, Sampler, command_line)

__all__ = ["build", "launch"]

QUEUE = "model"  # every event that runs the network waits in this one queue slot
EVERY_CLASS = -1
CLIPS = [("clip x̂₀ to [−1, 1], ε̂ re-derived (ddim sample's default)", 1.0), ("off: the paper's plain update", 0.0)]
COMPARE_ROWS = (("ddim", 10, 0.0), ("ddim", 50, 0.0), ("dpmpp-2m", 10, 0.0), ("ddim", 10, 1.0))
CSS = """
.pixels img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
"""  # 28-pixel images drawn large, each pixel a sharp square


def _in_page(fn):
    """A handler whose refusals show as one message in the page, and as one line on the server's console
    (never a stack trace)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, OSError, MemoryError) as e:
            message = " ".join(str(e).split()) or type(e).__name__
            print(f"ddim demo: refused: {message}", file=sys.stderr)
            # the page renders the message as HTML: a file name must not become markup
            raise gr.Error(html.escape(message), duration=None, print_exception=False) from None
    return run


def _int(value, name: str):
    """A whole number from a page field (Gradio gives 16.0 for 16), else the value, for the check to name."""
    if value is None:
        raise ValueError(f"{name} is empty; give a whole number")
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _float(value, name: str, empty=None) -> float:
    """A number from a page field; an empty one is ``empty`` where that means something, else refused."""
    if value is None:
        if empty is None:
            raise ValueError(f"{name} is empty; give a number")
        return empty
    return float(value)


def _counter(progress, total: int, desc: str):
    """on_step for the library: each call moves the page's progress bar one step of ``total``."""
    done = [0]

    def on_step() -> None:
        done[0] += 1
        progress((min(done[0], total), total), desc=desc, unit="steps")
    return on_step


def _class(value):
    return None if value in (None, EVERY_CLASS) else _int(value, "class")


def _sampler(solver, steps, eta) -> Sampler:
    return Sampler(solver, _int(steps, "steps"), _float(eta, "η"))


def _seconds(s: float) -> str:
    return f"{s:.2f} s"


class Page:
    """The handlers, bound to one loaded model and one scratch folder."""

    def __init__(self, model: work.Model, scratch: Scratch):
        self.model, self.scratch = model, scratch

    # ---- Sample -----------------------------------------------------------------------------------
    @_in_page
    def sample(self, class_id, seed, n, solver, steps, spacing, eta, w, method, lo, hi, apg_eta, apg_cap, apg_beta,
               classifier_scale, clip, progress=gr.Progress()):
        method = MethodOptions(method, interval=(_float(lo, "σ low"), _float(hi, "σ high")),
                               apg_eta=_float(apg_eta, "apg η"), apg_norm_cap=_float(apg_cap, "norm cap", math.inf),
                               apg_momentum=_float(apg_beta, "momentum"))
        s = SampleSettings(n=_int(n, "number of images"), seed=_int(seed, "seed"),
                           sampler=Sampler(solver, _int(steps, "steps"), _float(eta, "η"), spacing),
                           guidance=Guidance(_class(class_id), _float(w, "w"), method,
                                             _float(classifier_scale, "classifier scale")),
                           clip=_float(clip, "x̂₀ rule"))
        drawn = work.sample(self.model, s, _counter(progress, s.sampler.steps, "sampling"))
        folder = self.scratch.folder()
        grid = self.scratch.grid(folder, "samples.png", drawn.images)
        steps_gif = self.scratch.animation(folder, "x0_trajectory.gif", [*drawn.x0_steps, drawn.images])
        command = command_line(drawn.command)
        script = self.scratch.text(folder, "ddim_sample.sh", command + "\n")
        info = (f"**{s.n} images**, {drawn.label}: **{drawn.calls} model calls** per image, "
                f"**{_seconds(drawn.seconds)}**")
        return str(grid), str(steps_gif), info, [str(grid), str(script)], command

    # ---- Compare ----------------------------------------------------------------------------------
    @_in_page
    def compare(self, class_id, seed, n, w, clip, *rows, progress=gr.Progress()):
        used = [i for i in range(len(COMPARE_ROWS)) if rows[4 * i]]
        samplers = [_sampler(*rows[4 * i + 1:4 * i + 4]) for i in used]
        drawn = work.compare(self.model, samplers, n=_int(n, "number of images"), seed=_int(seed, "seed"),
                             guidance=Guidance(_class(class_id), float(w)), clip=float(clip),
                             on_step=_counter(progress, sum(s.steps for s in samplers), "sampling"))
        folder = self.scratch.folder()
        images, captions = [None] * len(COMPARE_ROWS), ["(not used)"] * len(COMPARE_ROWS)
        for i, d in zip(used, drawn):
            images[i] = str(self.scratch.grid(folder, f"compare_{i + 1}.png", d.images))
            captions[i] = f"**{d.label}**: {d.calls} model calls, {_seconds(d.seconds)}"
        return *images, *captions, "\n".join(command_line(d.command) for d in drawn)

    # ---- Interpolate ------------------------------------------------------------------------------
    @_in_page
    def interpolate(self, source, seed_a, seed_b, file_a, file_b, frames, class_id, solver, steps, w,
                    progress=gr.Progress()):
        frames, sampler = _int(frames, "frames"), _sampler(solver, steps, 0.0)
        if source == "seeds":
            s = InterpolateSettings(seeds=(_int(seed_a, "seed A"), _int(seed_b, "seed B")), frames=frames,
                                    class_id=_class(class_id), sampler=sampler, w=float(w))
            progress(0.0, desc="decoding")
            drawn = work.interpolate_seeds(self.model, s)
        else:
            if not file_a or not file_b:
                raise ValueError("upload two images (A and B), or interpolate between two seeds")
            x0 = torch.cat([self._upload(f)[0] for f in (file_a, file_b)])
            drawn = work.interpolate_images(self.model, x0, frames, sampler,
                                            on_step=_counter(progress, sampler.steps, "inverting"))
        folder = self.scratch.folder()
        strip = self.scratch.grid(folder, "interpolation.png", drawn.images, nrow=len(drawn.images))
        frames_there_and_back = [*drawn.images, *drawn.images.flip(0)[1:-1]]
        anim = self.scratch.animation(folder, "interpolation.gif", [f[None] for f in frames_there_and_back], hold=1)
        info = (f"**{len(drawn.images)} frames**, {drawn.label}: **{drawn.calls} model calls**, "
                f"**{_seconds(drawn.seconds)}**")
        return str(strip), str(anim), info, command_line(drawn.command) if drawn.command else ""

    # ---- Invert and edit --------------------------------------------------------------------------
    def _upload(self, path) -> tuple:
        return work.load_image(self.model, path, Path(path).name)

    @_in_page
    def invert_edit(self, source, item, upload, source_class, method, steps, w, target, strength,
                    progress=gr.Progress()):
        if source == "item":
            x0, notes = work.load_image(self.model, work.items()[_int(item, "item")].path)
        elif not upload:
            raise ValueError("upload an image, or pick a Fashion-MNIST test item")
        else:
            x0, notes = self._upload(upload)
        e = EditSettings(target=_int(target, "target class"), source=_class(source_class), method=method,
                         steps=_int(steps, "steps"), strength=float(strength), w=float(w))
        progress(0.0, desc=f"inverting ({method})")  # the ddim method reports each step of its way there and back
        edited = work.invert_and_edit(self.model, x0, e, on_step=_counter(progress, 2 * e.steps, "reconstructing"))
        folder = self.scratch.folder()
        row = torch.cat([edited.original, edited.reconstruction, edited.edit])
        path = self.scratch.grid(folder, "invert_edit.png", row, nrow=3)
        names = self.model.class_names
        info = (f"original | reconstruction ({method}, {e.steps} steps each way): **MSE {edited.mse:.5f}** per "
                f"dimension on the [0, 1] scale, {edited.calls[0]} model calls, {_seconds(edited.seconds[0])} | "
                f"edit to **{names[e.target]}** at strength {e.strength:g}, w = {e.w:g}: {edited.calls[1]} model "
                f"calls, {_seconds(edited.seconds[1])}")
        return str(path), "\n\n".join([info, *notes])


def _class_choices(model: work.Model, every: str):
    if not model.conditional:
        return [("unconditional model", EVERY_CLASS)]
    return ([(every, EVERY_CLASS)] if every else []) + [(name, i) for i, name in enumerate(model.class_names)]


def _solver_defaults(solver):
    s = Sampler(solver)
    return gr.update(value=s.steps), gr.update(value=s.spacing)


def _image(elem_id: str, label: str, height: int = 360):
    return gr.Image(type="filepath", format="png", label=label, elem_id=elem_id, height=height, interactive=False,
                    elem_classes=["pixels"], buttons=["download", "fullscreen"])


def _sample_tab(page: Page, model: work.Model) -> None:
    d = SampleSettings()
    with gr.Row():
        with gr.Column(scale=1):
            class_id = gr.Dropdown(_class_choices(model, "every class in turn"), value=EVERY_CLASS, label="class")
            with gr.Row():
                seed = gr.Number(d.seed, precision=0, minimum=0, label="seed (image i: seed, i)")
                n = gr.Slider(1, MAX_IMAGES, d.n, step=1, label="number of images")
            with gr.Row():
                solver = gr.Dropdown(list(SOLVERS), value=d.sampler.solver, label="solver")
                steps = gr.Number(d.sampler.steps, precision=0, label="steps S", elem_id="sample-steps")
            with gr.Row():
                spacing = gr.Dropdown(list(SPACINGS), value=d.sampler.spacing, label="grid")
                eta = gr.Number(0.0, minimum=0, label="η (solver ddim)")
            w = gr.Slider(0, 8, model.default_w, step=0.05, label="guidance weight w (0: off)")
            method = gr.Radio(list(DEMO_METHODS), value=DEFAULT_GUIDANCE_METHOD, label="guidance method")
            m = MethodOptions()
            with gr.Accordion("guidance method settings, classifier guidance", open=False):
                with gr.Row():
                    lo = gr.Number(m.interval[0], label="interval: σ low")
                    hi = gr.Number(m.interval[1], label="interval: σ high")
                with gr.Row():
                    apg_eta = gr.Number(m.apg_eta, label="apg: η")
                    apg_cap = gr.Number(None, label="apg: norm cap r (empty: none)")
                    apg_beta = gr.Number(m.apg_momentum, label="apg: momentum β")
                classifier = gr.Slider(0, 8, 0.0, step=0.1, label="classifier guidance scale s (bundled classifier)")
            clip = gr.Radio(CLIPS, value=1.0, label="x̂₀ rule")
            run = gr.Button("Generate", variant="primary", elem_id="sample-run")
        with gr.Column(scale=2):
            with gr.Row():
                grid = _image("sample-grid", "samples", 420)
                trajectory = _image("sample-trajectory", "x̂₀ at each step", 420)
            info = gr.Markdown(elem_id="sample-info")
            command = gr.Textbox(label="the same PNG from the command line", elem_id="sample-command",
                                 interactive=False, buttons=["copy"])
            files = gr.File(label="downloads: the PNG and the command", file_count="multiple", elem_id="sample-files",
                            interactive=False)
    solver.change(_solver_defaults, solver, [steps, spacing], queue=False)
    run.click(page.sample, [class_id, seed, n, solver, steps, spacing, eta, w, method, lo, hi, apg_eta, apg_cap,
                            apg_beta, classifier, clip], [grid, trajectory, info, files, command],
              concurrency_id=QUEUE, concurrency_limit=1)


def _compare_tab(page: Page, model: work.Model) -> None:
    rows, images, captions = [], [], []
    with gr.Row():
        class_id = gr.Dropdown(_class_choices(model, "every class in turn"), value=EVERY_CLASS, label="class")
        seed = gr.Number(0, precision=0, minimum=0, label="seed: one x_T for every setting")
        n = gr.Slider(1, 16, 8, step=1, label="images")
        w = gr.Slider(0, 8, model.default_w, step=0.05, label="guidance weight w")
        clip = gr.Radio(CLIPS, value=1.0, label="x̂₀ rule")
    run = gr.Button("Compare", variant="primary", elem_id="compare-run")
    with gr.Row():
        for i, (solver, steps, eta) in enumerate(COMPARE_ROWS):
            with gr.Column(min_width=200):
                rows.append(gr.Checkbox(True, label=f"setting {i + 1}"))
                rows.append(gr.Dropdown(list(SOLVERS), value=solver, label="solver"))
                with gr.Row():
                    rows.append(gr.Number(steps, precision=0, label="steps"))
                    rows.append(gr.Number(eta, minimum=0, label="η"))
                images.append(_image(f"compare-{i + 1}", f"setting {i + 1}", 300))
                captions.append(gr.Markdown(elem_id=f"compare-info-{i + 1}"))
    commands = gr.Textbox(label="each as a command", lines=4, interactive=False, buttons=["copy"],
                          elem_id="compare-commands")
    run.click(page.compare, [class_id, seed, n, w, clip, *rows], [*images, *captions, commands], concurrency_id=QUEUE,
              concurrency_limit=1)


def _interpolate_tab(page: Page, model: work.Model) -> None:
    deterministic = [n for n, s in SOLVERS.items() if s.noise_eta in (None, 0.0)]
    with gr.Row():
        with gr.Column(scale=1):
            source = gr.Radio([("two seeds", "seeds"), ("two uploaded images (inverted first)", "images")],
                              value="seeds", label="from", elem_id="interp-source")
            with gr.Row():
                seed_a = gr.Number(0, precision=0, minimum=0, label="seed A")
                seed_b = gr.Number(1, precision=0, minimum=0, label="seed B")
            with gr.Row():
                file_a = gr.File(label="image A", type="filepath", elem_id="interp-file-a")
                file_b = gr.File(label="image B", type="filepath", elem_id="interp-file-b")
            frames = gr.Slider(2, MAX_FRAMES, 9, step=1, label="frames")
            class_id = gr.Dropdown(_class_choices(model, "image 0's class (as ddim interpolate)"), value=EVERY_CLASS,
                                   label="class (seeds)")
            with gr.Row():
                solver = gr.Dropdown(deterministic, value="dpmpp-2m", label="solver (deterministic)")
                steps = gr.Number(10, precision=0, label="steps")
            w = gr.Slider(0, 8, 0.0, step=0.05, label="guidance weight w (seeds)")
            run = gr.Button("Interpolate", variant="primary", elem_id="interp-run")
        with gr.Column(scale=2):
            strip = _image("interp-strip", "slerp(x_T of A, x_T of B), decoded", 200)
            animation = _image("interp-animation", "as an animation", 240)
            info = gr.Markdown(elem_id="interp-info")
            command = gr.Textbox(label="the same strip from the command line", interactive=False, buttons=["copy"],
                                 elem_id="interp-command")
    run.click(page.interpolate, [source, seed_a, seed_b, file_a, file_b, frames, class_id, solver, steps, w],
              [strip, animation, info, command], concurrency_id=QUEUE, concurrency_limit=1)


def _edit_tab(page: Page, model: work.Model) -> None:
    found = work.items()
    names = model.class_names
    fashion = names == FASHION_MNIST_CLASSES  # then an item's class is one of the model's
    labels = [(f"{FASHION_MNIST_CLASSES[it.class_id]} (test item {it.index})", i) for i, it in enumerate(found)]
    first = found[0].class_id if found and fashion else EVERY_CLASS
    with gr.Row():
        with gr.Column(scale=1):
            source = gr.Radio([("a Fashion-MNIST test item", "item"), ("an uploaded image", "upload")], value="item",
                              label="image", elem_id="edit-source")
            item = gr.Dropdown(labels, value=0 if found else None, label="test item", elem_id="edit-item")
            upload = gr.File(label="upload (PNG, JPEG, …)", type="filepath", elem_id="edit-upload")
            source_class = gr.Dropdown(_class_choices(model, "unknown (∅: the null label)"), value=first,
                                       label="the image's class")
            with gr.Row():
                method = gr.Dropdown(list(METHODS), value="ddim", label="inversion method")
                steps = gr.Number(50, precision=0, label="steps")
            w = gr.Slider(0, 8, 2.0, step=0.05, label="guidance weight w (edit; the guided methods invert for it)")
            target = gr.Dropdown(_class_choices(model, ""), value=(first + 5) % len(names) if fashion else
                                 0 if names else EVERY_CLASS,
                                 label="edit to class")
            strength = gr.Slider(0.05, 1.0, 0.6, step=0.05, label="strength: the edit starts at step strength·T")
            run = gr.Button("Invert and edit", variant="primary", elem_id="edit-run")
        with gr.Column(scale=2):
            images = _image("edit-images", "original | reconstruction | edit", 300)
            info = gr.Markdown(elem_id="edit-info")
    item.change(lambda i: found[i].class_id if fashion and i is not None else gr.update(), item, source_class,
                queue=False)
    upload.upload(lambda _: "upload", upload, source, queue=False)
    run.click(page.invert_edit, [source, item, upload, source_class, method, steps, w, target, strength],
              [images, info], concurrency_id=QUEUE, concurrency_limit=1)


def build(model: work.Model, scratch: Scratch) -> gr.Blocks:
    """The page: Sample, Compare, Interpolate, and Invert and edit, over ``model``."""
    page = Page(model, scratch)
    where = "the bundled Fashion-MNIST model" if model.checkpoint is None else f"`{model.checkpoint}`"
    with gr.Blocks(title="ddim demo", analytics_enabled=False) as demo:
        gr.Markdown(f"## ddim demo\n{where} on {model.device}. Every picture is drawn by the library's own calls; "
                    "the Sample tab gives the `ddim sample` command that writes the same PNG.")
        with gr.Tabs():
            with gr.Tab("Sample", id="sample"):
                _sample_tab(page, model)
            with gr.Tab("Compare", id="compare"):
                _compare_tab(page, model)
            with gr.Tab("Interpolate", id="interpolate"):
                _interpolate_tab(page, model)
            with gr.Tab("Invert and edit", id="edit"):
                _edit_tab(page, model)
    return demo.queue(default_concurrency_limit=1)


def launch(model: work.Model, scratch: Scratch, host: str, port: int) -> None:
    """Serve the page on host:port until interrupted (blocking)."""
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # no web fonts: the page works offline
    build(model, scratch).launch(server_name=host, server_port=port, max_file_size="20mb", theme=theme, css=CSS,
                                 allowed_paths=[str(scratch.root)], ssr_mode=False, pwa=False, mcp_server=False,
                                 enable_monitoring=False, footer_links=[], quiet=False, show_error=False)

