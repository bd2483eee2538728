"""Run configuration: frozen dataclasses that validate themselves and round-trip through JSON.

``RunConfig`` is what a checkpoint's config.json holds: the training hyper-parameters (``TrainConfig``),
the data (``DataConfig``), the network (``UNetConfig``), the noise schedule (``Schedule.to_config()``) and,
for a distilled student only, how it was made (``DistillConfig``).
It lives below checkpoints, networks' users and the trainer, so loading a model never imports training.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from .checks import check_interval, check_power_of_two
from .forward import PREDICTIONS
from .nn.unet_config import from_mapping

__all__ = ["TrainConfig", "DataConfig", "DistillConfig", "RunConfig", "resolve_model_config", "fit_preset",
           "config_diff", "check_t_sampling", "T_SAMPLINGS", "DISTILL_PHASES", "DISTILL_METHODS", "DISTILL_WEIGHTINGS",
           "DISTILL_TEACHER_SOLVERS", "DISTILL_SPACING", "DEFAULT_TARGET_DECAY", "RESUMABLE_FIELDS", "FORMAT",
           "VERSION"]

FORMAT, VERSION = "ddim-run", 1

# TrainConfig fields a resumed run may change without changing what is computed step by step.
# ``lr_decay`` is one of them because, like ``steps``, it only places the final decay window: extending a
# finished constant-rate run with a cool-down is the common reason to resume.
# ``init_from`` is one because it is read only at step 0: a resumed fine-tune has its own weights.
RESUMABLE_FIELDS = ("steps", "lr_decay", "checkpoint_every", "keep_last", "sample_every", "log_every", "init_from")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _need_int(name: str, v: Any, lo: int) -> None:
    if not _is_int(v) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")


def _need_num(name: str, v: Any, lo: float, hi: float = math.inf, lo_open: bool = False,
              hi_open: bool = False) -> None:
    ok = _is_num(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{name} must be a number in {lb}{lo}, {hi}{rb}, got {v!r}")


T_SAMPLINGS = ("uniform", "lognormal")


def check_t_sampling(name: str) -> str:
    """``name`` if it is a way of drawing training steps (``T_SAMPLINGS``), else a ValueError naming it."""
    if name not in T_SAMPLINGS:
        raise ValueError(f"unknown t_sampling {name!r}; allowed: {', '.join(T_SAMPLINGS)}")
    return name


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of one training run.

    Attributes:
        steps: optimizer steps in total (a resumed run continues up to this).
        batch_size: global batch (split evenly across ranks under torchrun).
        lr: peak AdamW learning rate, reached after ``warmup`` steps of linear ramp.
        warmup: steps of linear warm-up (0: none).
        lr_decay: steps of linear decay to zero at the end of the run (0: none; warm-up, constant, decay).
        weight_decay: AdamW's decoupled weight decay.
        adam_betas: AdamW's (β1, β2).
        grad_clip: max global gradient L2 norm (0: no clipping; the norm is still logged).
        ema_decay: long-run EMA decay (with warm-up min(decay, (1+n)/(10+n))).
        prediction: the regression target, "epsilon", "sample" (x_0) or "v".
        min_snr_gamma: γ of Min-SNR-γ loss weighting, or None for plain L_simple.
        label_dropout: probability of replacing a label by ∅ (classifier-free guidance training).
        t_sampling: how training steps are drawn: "uniform" (DDPM) or "lognormal" (EDM's ln σ ~ N(−1.2, 1.2²),
            see ``ddim.train.loss.lognormal_t``).
        seed: the one seed every random stream (init, data order, noise) is derived from.
        checkpoint_every: steps between checkpoints (0: only at the end).
        keep_last: checkpoints kept on disk (0: keep all).
        sample_every: steps between sample grids (0: none).
        sample_steps: DDIM steps for those grids.
        num_samples: images per grid.
        log_every: steps between metrics lines.
        bf16: bfloat16 autocast for the forward pass, on CUDA and on the CPU (fast on CPUs with AMX or
            AVX512-BF16; elsewhere the CPU emulates it, slower than float32). Weights, optimizer and loss stay
            float32.
        compile: wrap the network in torch.compile.
        init_from: start from this checkpoint's (EMA) weights instead of a random init, i.e. fine-tune
            (any path ``ddim.load_checkpoint`` reads; its model shape must be this run's). None: random init.
    """

    steps: int = 10_000
    batch_size: int = 128
    lr: float = 2e-4
    warmup: int = 500
    lr_decay: int = 0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    prediction: str = "epsilon"
    min_snr_gamma: Optional[float] = None
    label_dropout: float = 0.1
    t_sampling: str = "uniform"
    seed: int = 0
    checkpoint_every: int = 1000
    keep_last: int = 3
    sample_every: int = 1000
    sample_steps: int = 20
    num_samples: int = 16
    log_every: int = 10
    bf16: bool = False
    compile: bool = False
    init_from: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.adam_betas, (list, tuple)):
            raise ValueError(f"adam_betas must be two numbers (β1, β2), got {self.adam_betas!r}")
        object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
        _need_int("steps", self.steps, 1)
        _need_int("batch_size", self.batch_size, 1)
        _need_num("lr", self.lr, 0.0, lo_open=True)
        _need_int("warmup", self.warmup, 0)
        _need_int("lr_decay", self.lr_decay, 0)
        if self.lr_decay > self.steps:
            raise ValueError(f"lr_decay must be at most steps ({self.steps}), got {self.lr_decay}")
        _need_num("weight_decay", self.weight_decay, 0.0)
        if len(self.adam_betas) != 2:
            raise ValueError(f"adam_betas must be two numbers (β1, β2), got {self.adam_betas!r}")
        for b in self.adam_betas:
            _need_num("each of adam_betas", b, 0.0, 1.0, hi_open=True)
        _need_num("grad_clip", self.grad_clip, 0.0)
        _need_num("ema_decay", self.ema_decay, 0.0, 1.0, hi_open=True)
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; allowed: {', '.join(PREDICTIONS)}")
        if self.min_snr_gamma is not None:
            _need_num("min_snr_gamma", self.min_snr_gamma, 0.0, lo_open=True)
        _need_num("label_dropout", self.label_dropout, 0.0, 1.0)
        check_t_sampling(self.t_sampling)
        _need_int("seed", self.seed, 0)
        for name in ("checkpoint_every", "keep_last", "sample_every"):
            _need_int(name, getattr(self, name), 0)
        for name in ("sample_steps", "num_samples", "log_every"):
            _need_int(name, getattr(self, name), 1)
        for name in ("bf16", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from):
            raise ValueError(f"init_from must be a checkpoint path or None, got {self.init_from!r}")

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based): linear warm-up, constant, then linear decay.

        The decay takes the last ``lr_decay`` steps from ``lr`` down to ``lr / lr_decay`` at the final step
        (never exactly 0, so every step still moves the weights).
        """
        ramp = 1.0 if self.warmup == 0 else min(1.0, (step + 1) / self.warmup)
        fall = 1.0 if self.lr_decay == 0 else min(1.0, (self.steps - step) / self.lr_decay)
        return self.lr * min(ramp, fall)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        return from_mapping(cls, d)


@dataclass(frozen=True)
class DataConfig:
    """Which images to train on.

    Attributes:
        dataset: one of ``ddim.data.DATASETS``.
        data_dir: where its files are (None: the dataset's default, if it has one).
        image_size: resize to this side in pixels (None: native).
        channels: convert to 1 or 3 channels (None: native).
        hflip: random horizontal flips (p = 1/2) as augmentation.
        split: "train" or "test".
    """

    dataset: str
    data_dir: Optional[str] = None
    image_size: Optional[int] = None
    channels: Optional[int] = None
    hflip: bool = False
    split: str = "train"

    def __post_init__(self) -> None:
        from .data import DATASETS, SPLITS

        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; allowed: {', '.join(DATASETS)}")
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; allowed: {', '.join(SPLITS)}")
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", str(self.data_dir))
        if self.image_size is not None:
            from .nn.unet import LIMITS

            _need_int("image_size", self.image_size, 1)
            if self.image_size > LIMITS["image_size"]:  # before resizing a dataset to it (an allocation error)
                raise ValueError(f"image_size must be an integer in [1, {LIMITS['image_size']}], got {self.image_size}")
        if self.channels is not None and (not _is_int(self.channels) or self.channels not in (1, 3)):
            raise ValueError(f"channels must be 1, 3 or None, got {self.channels!r}")
        if not isinstance(self.hflip, bool):
            raise ValueError(f"hflip must be true or false, got {self.hflip!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DataConfig":
        return from_mapping(cls, d)


DISTILL_PHASES = ("guided", "halve", "consistency")
DISTILL_METHODS = ("progressive", "consistency")  # what follows the (shared) guided phase: halvings, or one CD phase
DISTILL_WEIGHTINGS = ("truncated-snr", "snr+1", "uniform")
DISTILL_TEACHER_SOLVERS = ("ddim", "heun")  # a halving round's teacher steps: Algorithm 2's DDIM, or EDM's Heun
DISTILL_SPACING = "trailing"  # a student's grid: it starts at T − 1 and the N-step grid nests in the 2N-step one
DEFAULT_TARGET_DECAY = 0.95  # μ of the consistency target θ⁻ (Song et al. 2023, their distillation runs)


@dataclass(frozen=True)
class DistillConfig:
    """How a distilled student was made (``ddim distill``); saved in its checkpoint's config.json as "distill".

    Attributes:
        phase: "guided" (Meng et al. 2023, stage 1: one forward matches the w-guided teacher on its own grid),
            "halve" (one round of progressive distillation: N student steps do 2N teacher steps) or
            "consistency" (consistency distillation, Song et al. 2023: the student's x̂_0 is a consistency
            function of the teacher's DDIM chain on its grid; ``method`` is then "consistency").
        steps: N, the student's sampling steps on the trailing grid, what ``ddim sample`` runs: DDIM (η = 0), or
            for "consistency" multistep consistency sampling (solver "consistency"), any power of two up to
            ``teacher_steps``.
        teacher_steps: the teacher's grid (2N for "halve", N for "guided", the training grid for "consistency").
        teacher: the checkpoint this phase distils (for "halve", the previous phase's run directory).
        origin: the first teacher of the chain (the model the whole distillation started from).
        w_min, w_max: the range guidance weights are drawn from (U[w_min, w_max]) for a w-input student.
        weighting: "truncated-snr" (max(SNR, 1)), "snr+1" (the v-loss) or "uniform" (λ = 1).
        teacher_clip: the teacher's x̂_0 rule in its DDIM steps (clamp to ±clip, ε̂ re-derived; None: none).
        clip: the student's own rule (what ``ddim sample`` uses by default): the teacher's for "guided",
            None after halving (x̃ may lie outside the data range: a clamp would undo the match).
        rounds: the phases before this one, oldest first, each {"phase", "steps", "train_steps", "run"}.
        target_decay: μ of the target network θ⁻ ← μ θ⁻ + (1 − μ) θ ("consistency" only; None for the others,
            and then absent from the JSON, so records written before consistency distillation read back as
            written).
        guidance_interval: (σ_lo, σ_hi): the guided teacher's w applies only where σ = √((1 − ᾱ)/ᾱ) lies in
            (σ_lo, σ_hi] (guidance interval, Kynkäänniemi et al. 2024), its conditional prediction alone
            elsewhere; the student's w input then means that method's weight. None: plain CFG at every level
            (and absent from the JSON). Kept by every later phase: it says what w means.
        teacher_solver: how a "halve" phase's teacher takes its two steps t → t' → t'': "ddim" (η = 0, Salimans &
            Ho's Algorithm 2) or "heun" (EDM's second-order step, Euler onto x_0; 4 teacher calls per target
            instead of 2: a closer view of the ODE than the teacher's own DDIM chain; for a teacher that is a
            denoiser, not a halved student, whose x̂_0 only means "two steps in one"). "ddim" is absent from the
            JSON.
    """

    phase: str
    steps: int
    teacher_steps: int
    teacher: str
    origin: str
    w_min: float = 0.0
    w_max: float = 2.0
    weighting: str = "truncated-snr"
    teacher_clip: Optional[float] = 1.0
    clip: Optional[float] = None
    rounds: tuple = ()
    target_decay: Optional[float] = None
    guidance_interval: Optional[tuple] = None
    teacher_solver: str = "ddim"

    def __post_init__(self) -> None:
        if self.phase not in DISTILL_PHASES:
            raise ValueError(f"distill phase must be one of {', '.join(DISTILL_PHASES)}, got {self.phase!r}")
        check_power_of_two("distill.steps", self.steps)
        check_power_of_two("distill.teacher_steps", self.teacher_steps)
        if self.phase == "consistency":
            if self.steps > self.teacher_steps:
                raise ValueError(f"a consistency student samples in at most its teacher's {self.teacher_steps} "
                                 f"steps, got steps={self.steps}")
            if self.target_decay is None:
                raise ValueError("a consistency phase needs target_decay (μ of its target network)")
            _need_num("target_decay", self.target_decay, 0.0, 1.0, hi_open=True)
            object.__setattr__(self, "target_decay", float(self.target_decay))
        else:
            want = self.steps * (2 if self.phase == "halve" else 1)
            if self.teacher_steps != want:
                raise ValueError(f"a {self.phase} phase of {self.steps} steps has a teacher of {want}, got "
                                 f"{self.teacher_steps}")
            if self.target_decay is not None:
                raise ValueError(f"target_decay belongs to a consistency phase, not to a {self.phase} one")
        for name in ("teacher", "origin"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"distill.{name} must be a path, got {getattr(self, name)!r}")
        _need_num("w_min", self.w_min, 0.0)
        _need_num("w_max", self.w_max, 0.0)
        if self.w_max < self.w_min:
            raise ValueError(f"w_max ({self.w_max}) must be at least w_min ({self.w_min})")
        if self.weighting not in DISTILL_WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; allowed: {', '.join(DISTILL_WEIGHTINGS)}")
        object.__setattr__(self, "w_min", float(self.w_min))
        object.__setattr__(self, "w_max", float(self.w_max))
        for name in ("teacher_clip", "clip"):  # 0 and None both mean "no clamp"
            v = getattr(self, name)
            if v is not None:
                _need_num(name, v, 0.0)
                object.__setattr__(self, name, float(v) or None)
        if not isinstance(self.rounds, (list, tuple)) or not all(isinstance(r, Mapping) for r in self.rounds):
            raise ValueError(f"distill.rounds must be a list of objects, got {self.rounds!r}")
        object.__setattr__(self, "rounds", tuple(dict(r) for r in self.rounds))
        if self.guidance_interval is not None:
            object.__setattr__(self, "guidance_interval", check_interval(self.guidance_interval))
        if self.teacher_solver not in DISTILL_TEACHER_SOLVERS:
            raise ValueError(f"unknown teacher solver {self.teacher_solver!r}; allowed: "
                             f"{', '.join(DISTILL_TEACHER_SOLVERS)}")
        if self.teacher_solver != "ddim" and self.phase != "halve":
            raise ValueError(f"teacher_solver {self.teacher_solver!r} belongs to a halving round, not to a "
                             f"{self.phase} phase")

    @property
    def method(self) -> str:
        """"consistency" for a consistency student, else "progressive" (a guided or halved one)."""
        return "consistency" if self.phase == "consistency" else "progressive"

    @property
    def solver(self) -> str:
        """The solver the student samples with (``ddim.samplers.SOLVERS``): "consistency" (Song et al.'s
        Algorithm 1) for a consistency student, "ddim" (η = 0) for the others."""
        return "consistency" if self.phase == "consistency" else "ddim"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["rounds"] = [dict(r) for r in self.rounds]
        for name in ("target_decay", "guidance_interval"):
            if d[name] is None:
                del d[name]
        if d["teacher_solver"] == "ddim":  # records written before Heun teachers read back as written
            del d["teacher_solver"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DistillConfig":
        return from_mapping(cls, d)


def _default_schedule() -> dict:
    return {"name": "linear", "num_steps": 1000, "beta_start": 1e-4, "beta_end": 0.02}


@dataclass(frozen=True)
class RunConfig:
    """Everything needed to rebuild a run: train, data (None for imported models), model, schedule.

    ``model`` is a ``ddim.nn.UNetConfig`` (a denoiser), a ``ddim.nn.ClassifierConfig`` (a noisy classifier,
    ``ddim train-classifier``) or a ``ddim.nn.ForeignUNetConfig`` (a diffusers model run through diffusers; loaded,
    never trained or saved); ``schedule`` is ``Schedule.to_config()`` (plain JSON). ``distill`` is the record of
    a distilled student (None for any other model, and then absent from the JSON).
    """

    model: Any
    train: TrainConfig = field(default_factory=TrainConfig)
    data: Optional[DataConfig] = None
    schedule: Mapping[str, Any] = field(default_factory=_default_schedule)
    distill: Optional[DistillConfig] = None

    def __post_init__(self) -> None:
        from .nn import ClassifierConfig, ForeignUNetConfig, UNetConfig
        from .schedule import Schedule

        if self.distill is not None and not isinstance(self.distill, DistillConfig):
            raise ValueError(f"distill must be a DistillConfig or None, got {type(self.distill).__name__}")
        if not isinstance(self.model, (UNetConfig, ClassifierConfig, ForeignUNetConfig)):
            raise ValueError(f"model must be a UNetConfig, ClassifierConfig or ForeignUNetConfig (a diffusers model "
                             f"run through diffusers), got {type(self.model).__name__}")
        Schedule.from_config(self.schedule)  # validates (a JSON list fails here, named); rebuilt on demand
        object.__setattr__(self, "schedule", dict(self.schedule))

    @property
    def is_classifier(self) -> bool:
        """Whether this run trains a noisy classifier (else a denoiser)."""
        from .nn import ClassifierConfig

        return isinstance(self.model, ClassifierConfig)

    @property
    def prediction(self) -> str:
        """What the network predicts: "epsilon", "sample" or "v"."""
        return self.train.prediction

    def make_schedule(self):
        """The ``ddim.Schedule`` this run trains with."""
        from .schedule import Schedule

        return Schedule.from_config(self.schedule)

    def to_dict(self) -> dict:
        """Plain JSON: {"format", "version", "model", "train", "data", "schedule"[, "distill"]}."""
        d = {"format": FORMAT, "version": VERSION, "model": self.model.to_dict(), "train": self.train.to_dict(),
             "data": None if self.data is None else self.data.to_dict(), "schedule": dict(self.schedule)}
        if self.distill is not None:
            d["distill"] = self.distill.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        from .nn import ClassifierConfig, UNetConfig
        from .nn.classifier import CLASSIFIER_KIND

        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise ValueError(f"not a ddim run config (expected \"format\": \"{FORMAT}\")")
        if type(d.get("version")) is not int or d.get("version") != VERSION:
            raise ValueError(f"unsupported run config version {d.get('version')!r}; this ddim reads {VERSION}")
        missing = [k for k in ("model", "schedule") if k not in d]
        if missing:
            raise ValueError(f"the run config has no {' or '.join(map(repr, missing))} section")
        data = d.get("data")
        model = d["model"]
        if not isinstance(model, Mapping):
            raise ValueError(f"the run config's model must be a JSON object, got {type(model).__name__}")
        build = ClassifierConfig.from_dict if model.get("kind") == CLASSIFIER_KIND else UNetConfig.from_dict
        distill = d.get("distill")
        return cls(model=build(model), train=TrainConfig.from_dict(d.get("train", {})),
                   data=None if data is None else DataConfig.from_dict(data), schedule=d["schedule"],
                   distill=None if distill is None else DistillConfig.from_dict(distill))


def resolve_model_config(preset: str, image_size: int, channels: int, num_classes: Optional[int],
                         **overrides: Any):
    """A ``UNetConfig`` from a preset, fitted to the data.

    The preset's attention stays on the same levels (by index) when the image size changes, e.g.
    "small" has attention at 7×7 (its third level) for 28×28 inputs, and at 2×2 for 8×8 inputs.

    Args:
        preset: a key of ``ddim.nn.PRESETS``.
        image_size, channels: the training images' side (pixels) and channels.
        num_classes: classes for a class-conditional model, or None for an unconditional one.
        overrides: any other UNetConfig field (None values are ignored, meaning "as in the preset").
    """
    from .nn import PRESETS, UNetConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    base = PRESETS[preset]
    fields = fit_preset(base, image_size, overrides)
    d = {**base.to_dict(), **fields, "image_size": image_size, "in_channels": channels,
         "out_channels": channels, "num_classes": num_classes}
    return UNetConfig.from_dict(d)


def fit_preset(base, image_size: int, overrides: Mapping[str, Any]) -> dict:
    """The non-None ``overrides`` of a preset (a UNetConfig, or a ClassifierConfig through its ``encoder``),
    with attention kept on the preset's levels (by index) unless ``attn_resolutions`` is overridden."""
    enc = getattr(base, "encoder", base)
    fields = {k: v for k, v in overrides.items() if v is not None}
    mult = tuple(fields.get("channel_mult", enc.channel_mult))
    if "attn_resolutions" not in fields:
        levels = [i for i, r in enumerate(enc.resolutions) if r in enc.attn_resolutions]
        patch = fields.get("patch_size", enc.patch_size)
        # a bad patch_size (0: ZeroDivisionError here) is left for UNetConfig to name
        fields["attn_resolutions"] = (tuple(image_size // patch // 2**i for i in levels if i < len(mult))
                                      if _is_int(patch) and patch >= 1 else ())
    return fields


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the keys whose values differ between two nested JSON dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out
