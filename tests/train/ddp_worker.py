"""Run by test_distributed.py under torchrun: train from a RunConfig JSON, then save this rank's weights.

usage: torchrun --standalone --nproc_per_node=2 ddp_worker.py CONFIG_JSON OUT_DIR
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from ddim.train import RunConfig, Trainer
from ddim.distributed import shutdown


def main(config_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    config = RunConfig.from_dict(json.loads(Path(config_path).read_text()))
    trainer = Trainer(config, out_dir, device="cpu", quiet=True)
    trainer.fit()
    tensors = {**{f"model.{k}": v for k, v in trainer.model.state_dict().items()},
               **{f"ema.{k}": v for k, v in trainer.ema.model.state_dict().items()}}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(Path(out_dir) / f"rank{trainer.info.rank}.safetensors"))
    shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:3])
