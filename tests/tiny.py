"""A tiny UNet on 8×8 digits, so CPU training runs take seconds: its config and its CLI flags."""

from __future__ import annotations

from ddim.train import DataConfig, RunConfig, TrainConfig, resolve_model_config

# About 150 k parameters: two levels (16, 32 channels) at 8×8 and 4×4, attention at 4×4.
TINY = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, norm_groups=8)


def tiny_config(steps: int = 20, batch_size: int = 16, dropout: float = 0.1, class_cond: bool = True,
                **train) -> RunConfig:
    """A RunConfig for the tiny UNet on digits at 8×8; ``train`` overrides TrainConfig fields."""
    model = resolve_model_config("small", 8, 1, 10 if class_cond else None, dropout=dropout, **TINY)
    opts = dict(steps=steps, batch_size=batch_size, lr=2e-3, warmup=5, checkpoint_every=0, sample_every=0,
                log_every=1)
    opts.update(train)
    return RunConfig(model=model, train=TrainConfig(**opts), data=DataConfig("digits", image_size=8, hflip=True))


TINY_CLI = ["--dataset", "digits", "--image-size", "8", "--hflip", "--base-channels", "16", "--channel-mult", "1,2",
            "--num-res-blocks", "1", "--norm-groups", "8", "--dropout", "0.1", "--lr", "2e-3", "--warmup", "5",
            "--sample-every", "0", "--log-every", "1", "--device", "cpu", "--quiet"]
