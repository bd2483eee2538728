"""Suite-wide settings."""

import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_intra_op_thread():
    """The suite's tensors are small, and it runs with one pytest-xdist worker per core: one intra-op
    thread per worker is fastest, and two threads fighting over a busy core were measured ~100× slower.
    Child processes (torchrun tests) inherit OMP_NUM_THREADS."""
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(before)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(autouse=True)
def fp32_fast_path_on_the_cpu(monkeypatch):
    """The CPU fast path turns bf16 on where the CPU has it in hardware (``ddim.device.cpu_native_bf16``);
    the suite holds it to float32 so that its tolerances do not depend on the machine's CPU. Tests of the
    bf16 path set it back to True themselves."""
    monkeypatch.setattr("ddim.samplers.fast.cpu_native_bf16", lambda: False)


# Imported here, before any test module, so that without the full Fashion-MNIST every test (and every
# subprocess a test starts) reads the shipped subset.
import fmnist  # noqa: E402,F401
