"""CPU sampling paths for one network, interleaved in one run: eager fp32 against channels_last,
torch.compile (inductor) with and without channels_last, ONNX Runtime (when installed: ``pip install
onnxruntime onnx``; the network exported once with torch.onnx), and other thread counts.

Each path runs the same ``ddim.sample`` (η = 0, --steps steps, --batch images, class-conditional labels
i mod 10 when the network has classes) from the same x_T; reported: images/s (median of --repeats
interleaved rounds, after one untimed warm-up call that also pays any compile), the warm-up time, and the
max absolute difference of its images from eager fp32's (the issue's bar: 1e-4).

    python benchmarks/cpu_sampling.py --preset fashion --json benchmarks/results/cpu_sampling.json
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import ddim
from ddim.nn import unet_from_preset

PATHS = ("eager", "channels_last", "compile", "compile+channels_last", "onnxruntime", "eager 1 thread")


class OrtNet:
    """The network exported to ONNX and run by ONNX Runtime's CPU provider, called like the UNet."""

    def __init__(self, net, example, path: str):
        import onnxruntime as ort

        dyn = {name: {0: "batch"} for name in ("x", "t", "labels", "out")}
        torch.onnx.export(net, example, path, input_names=["x", "t", "labels"], output_names=["out"],
                          dynamic_axes=dyn, opset_version=18, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def __call__(self, x, t, labels):
        feed = {"x": x.numpy(), "t": t.numpy(), "labels": labels.numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])


def build(preset: str, seed: int = 0):
    """A network of the preset with every weight perturbed (the DDPM init zeroes the output layers)."""
    torch.manual_seed(seed)
    net = unet_from_preset(preset).eval().requires_grad_(False)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net


def path_model(net, path: str, example, tmp: str):
    if path == "onnxruntime":
        return OrtNet(net, example, f"{tmp}/net.onnx")
    m = copy.deepcopy(net)
    if "channels_last" in path:
        m = m.to(memory_format=torch.channels_last)
    if "compile" in path:
        m = torch.compile(m, dynamic=False)
    return m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fashion")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--paths", default=",".join(PATHS))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    paths = args.paths.split(",")
    if paths[0] != "eager":
        p.error("--paths must start with eager: it is the baseline of every ratio and difference")
    if "onnxruntime" in paths and importlib.util.find_spec("onnxruntime") is None:
        print("onnxruntime is not installed (pip install onnxruntime onnx): that path is left out")
        paths.remove("onnxruntime")
    net = build(args.preset)
    c = net.config
    schedule = ddim.Schedule.linear(1000)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(args.batch, c.in_channels, c.image_size, c.image_size, generator=g)
    labels = None if c.num_classes is None else torch.arange(args.batch) % c.num_classes
    threads = torch.get_num_threads()

    def run(model, path):
        torch.set_num_threads(1 if "1 thread" in path else threads)
        f = (lambda x, t: model(x, t, labels)) if labels is not None else model
        with torch.inference_mode():
            return ddim.sample(f, schedule, x_T, steps=args.steps, eta=0.0, prediction="v")

    if labels is None and "onnxruntime" in paths:
        print("the onnxruntime path exports a class-conditional network only: left out")
        paths.remove("onnxruntime")
    models, warm, outs = {}, {}, {}
    example = (x_T, torch.zeros(args.batch, dtype=torch.long), labels)
    tmp = tempfile.mkdtemp()
    for path in paths:
        models[path] = path_model(net, path, example, tmp)
        t0 = time.perf_counter()
        outs[path] = run(models[path], path)
        warm[path] = time.perf_counter() - t0
    rates = {path: [] for path in paths}
    for _ in range(args.repeats):
        for path in paths:
            t0 = time.perf_counter()
            run(models[path], path)
            rates[path].append(args.batch / (time.perf_counter() - t0))
    torch.set_num_threads(threads)
    base = statistics.median(rates[paths[0]])
    rows = []
    print(f"{args.preset}, batch {args.batch}, {args.steps} steps, {threads} threads, torch {torch.__version__}")
    print(f"{'path':<24} {'images/s':>9} {'vs eager':>9} {'warm-up s':>10} {'max |Δ|':>9}")
    for path in paths:
        r = statistics.median(rates[path])
        diff = float((outs[path] - outs[paths[0]]).abs().max())
        rows.append({"path": path, "images_per_s": round(r, 2), "speedup": round(r / base, 3),
                     "warmup_s": round(warm[path], 2), "max_abs_diff": diff})
        print(f"{path:<24} {r:>9.2f} {r / base:>9.3f} {warm[path]:>10.2f} {diff:>9.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": "python benchmarks/cpu_sampling.py " + " ".join(__import__("sys").argv[1:]),
            "date": time.strftime("%Y-%m-%d"), "threads": threads, "torch": torch.__version__,
            "preset": args.preset, "batch": args.batch, "steps": args.steps, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
