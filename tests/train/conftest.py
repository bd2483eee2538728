"""Shared fixtures for the training tests: a tiny UNet on 8×8 digits, so CPU runs take seconds."""

from __future__ import annotations

import pytest
from subprocesses import ddim_env, run_ddim  # noqa: F401  (re-exported for the training tests)

from tiny import TINY, TINY_CLI, tiny_config  # noqa: F401  (re-exported for the training tests)


@pytest.fixture(scope="session")
def digits8():
    from ddim.data import load_dataset

    return load_dataset("digits", image_size=8)
