"""Optimizer and RNG state as (tensors, JSON) pairs, so checkpoints need no pickle.

``torch.optim.Optimizer.state_dict()`` is {"state": {param_index: {name: tensor | number}},
"param_groups": [{hyper-parameters..., "params": [indices]}]}. Tensors go to safetensors under
``optimizer.state.{index}.{name}``; numbers and the param groups go to JSON. The RNG states
(``torch.get_rng_state()`` and each CUDA device's) are uint8 tensors under ``rng.*``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

__all__ = ["optimizer_to_flat", "optimizer_from_flat", "rng_to_flat", "rng_from_flat"]

_OPT = "optimizer.state."
_RNG_CPU, _RNG_CUDA = "rng.torch", "rng.cuda."


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into (tensors for safetensors, JSON-able dict)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, per_param in sd["state"].items():
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{_OPT}{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _tuple_like(reference: Any, value: Any) -> Any:
    """JSON turns tuples into lists; give back a tuple where the live optimizer has one."""
    return tuple(value) if isinstance(reference, tuple) and isinstance(value, list) else value


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping) -> None:
    """Inverse of ``optimizer_to_flat``: load the saved state into ``optimizer`` (same parameters)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(_OPT):
            idx, name = key[len(_OPT):].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    for idx, per_param in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(per_param)
    live = optimizer.state_dict()["param_groups"]
    saved = meta["param_groups"]
    if len(saved) != len(live) or any(len(a["params"]) != len(b["params"]) for a, b in zip(saved, live)):
        raise ValueError("the saved optimizer state is for a different set of parameters")
    groups = [{k: _tuple_like(ref.get(k), v) for k, v in g.items()} for g, ref in zip(saved, live)]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_to_flat() -> dict[str, torch.Tensor]:
    """The global torch RNG states (CPU, and every CUDA device when CUDA is initialised)."""
    out = {_RNG_CPU: torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"{_RNG_CUDA}{i}"] = s
    return out


def rng_from_flat(tensors: Mapping[str, torch.Tensor]) -> None:
    """Restore what ``rng_to_flat`` saved (CUDA states only for devices that exist here)."""
    if _RNG_CPU in tensors:
        torch.set_rng_state(tensors[_RNG_CPU].to(torch.uint8).cpu())
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            key = f"{_RNG_CUDA}{i}"
            if key in tensors:
                torch.cuda.set_rng_state(tensors[key].to(torch.uint8).cpu(), i)
