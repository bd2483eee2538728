"""Feature extractors for FID, KID and precision/recall: a small Fashion-MNIST CNN shipped with the
package, and (for RGB datasets) torchmetrics' Inception-v3 from a weights file on disk.

Both extractors share one interface, the one ``metrics`` and ``reference`` rely on:

    extractor(x) -> (N, d) float32 features,  x float (N, C, H, W) in [-1, 1] (the package's convention)
    extractor.num_features -> d
    extractor.sha256       -> hex SHA-256 of the weights file (a cache key for reference statistics)

Why a Fashion-MNIST classifier and not Inception: Inception-v3 was trained on 299×299 ImageNet photos;
upsampled 28×28 grayscale clothing is far from its domain, and its weights cannot be downloaded here.
A classifier trained on Fashion-MNIST itself gives features that separate the dataset's own
modes (its penultimate layer is to this dataset what Inception's pool3 is to ImageNet). Numbers from it
are comparable only with numbers from the same weights: always report ``sha256`` beside them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

__all__ = ["FashionClassifier", "FeatureExtractor", "InceptionFeatureExtractor", "load_classifier", "extract_features",
           "CLASSIFIER_WEIGHTS", "CLASSIFIER_RECORD", "INCEPTION_WEIGHTS_NAME", "file_sha256"]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CLASSIFIER_WEIGHTS = ASSETS / "fashion_mnist_classifier.safetensors"
CLASSIFIER_RECORD = CLASSIFIER_WEIGHTS.with_suffix(".json")   # config, training record, test accuracy
# The file torch-fidelity (and so torchmetrics' FID) downloads on first use; see InceptionFeatureExtractor.
INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                         + INCEPTION_WEIGHTS_NAME)
_IMAGE_SHAPE = (1, 28, 28)


def file_sha256(path: Union[str, Path]) -> str:
    """Hex SHA-256 of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------- the CNN

def _conv_bn_relu(c_in: int, c_out: int) -> list:
    # No conv bias: the BatchNorm shift that follows makes it redundant.
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class FashionClassifier(nn.Module):
    """A compact CNN for 1×28×28 images: stages of conv-BN-ReLU, 2×2 max-pool between stages,
    global average pooling, a feature layer (Linear-BN-ReLU) and a linear head.

    Stage k works at 28/2^k pixels with ``channels[k]`` channels; the first stage has one conv (at
    28×28 a second one would cost most of the compute), later stages two.

    Args:
        channels: channels per stage, e.g. (16, 32, 64).
        feature_dim: width d of the penultimate layer, whose activations are the features.
        num_classes: outputs of the head.
        dropout: dropout probability before the head (training only).
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 64), feature_dim: int = 128, num_classes: int = 10,
                 dropout: float = 0.0):
        super().__init__()
        if not channels or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels!r}")
        if feature_dim < 1 or num_classes < 2:
            raise ValueError(f"feature_dim must be >= 1 and num_classes >= 2, got {feature_dim}, {num_classes}")
        layers, c = [], 1
        for k, c_out in enumerate(channels):
            layers += _conv_bn_relu(c, c_out)
            if k > 0:
                layers += _conv_bn_relu(c_out, c_out)
            if k < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            c = c_out
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(c, feature_dim, bias=False), nn.BatchNorm1d(feature_dim),
                                   nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))
        self.config = {"channels": [int(c) for c in channels], "feature_dim": int(feature_dim),
                       "num_classes": int(num_classes), "dropout": float(dropout)}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) float in [-1, 1] -> (N, feature_dim) penultimate activations (>= 0)."""
        return self.embed(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) float in [-1, 1] -> (N, num_classes) logits."""
        return self.head(self.features(x))


def load_classifier(weights: Optional[Union[str, Path]] = None) -> tuple[FashionClassifier, dict]:
    """The shipped (or a given) classifier in eval mode, and its JSON record.

    Args:
        weights: a ``.safetensors`` file with a ``.json`` beside it holding ``{"config": {...}}``;
            None: ``CLASSIFIER_WEIGHTS``, shipped with the package (nothing is downloaded).
    Returns:
        (model on the CPU in eval mode with float32 weights, the record dict).
    """
    from ..checkpoint import load_weights, read_json, read_tensors

    path = Path(weights) if weights is not None else CLASSIFIER_WEIGHTS
    if not path.is_file():
        raise ValueError(f"classifier weights {path} do not exist; pass the path of a .safetensors file "
                         f"written by benchmarks/train_classifier.py")
    record = read_json(path.with_suffix(".json"))
    if not isinstance(record.get("config"), dict):
        raise ValueError(f"{path.with_suffix('.json')} has no 'config' object; allowed: a record written by "
                         f"benchmarks/train_classifier.py")
    model = FashionClassifier(**record["config"])
    # Weights may be stored as fp16 to save space; compute in fp32. Integer buffers stay as they are.
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in read_tensors(path).items()}
    load_weights(model, tensors, str(path))
    return model.eval(), record


# ---------------------------------------------------------------------------------------- extractors

def _check_images(x, shape: Optional[tuple], what: str) -> None:
    """Refuse anything but a float (N, C, H, W) tensor of the given (C, H, W) (None: any)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 4:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} takes a float tensor (N, C, H, W); got {got}")
    if shape is not None and tuple(x.shape[1:]) != shape:
        raise ValueError(f"{what} needs {'x'.join(map(str, shape))} images; got {'x'.join(map(str, x.shape[1:]))}")


class FeatureExtractor(nn.Module):
    """Penultimate features of the Fashion-MNIST classifier: (N, 1, 28, 28) -> (N, d), d = 128 shipped.

    Args:
        weights: classifier ``.safetensors`` (None: the one shipped in ``ddim/assets``).
        normalize: False (default) takes floats in [-1, 1], the package's convention; True takes
            floats in [0, 1] (torchmetrics' ``normalize=True`` convention) and maps them x ↦ 2x − 1.

    The module never leaves eval mode (BatchNorm uses its stored statistics, so a batch's features
    do not depend on the rest of the batch) and runs without gradients.
    """

    image_shape = _IMAGE_SHAPE   # (C, H, W) of the images it takes

    def __init__(self, weights: Optional[Union[str, Path]] = None, normalize: bool = False):
        super().__init__()
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be True ([0, 1] inputs) or False ([-1, 1] inputs), got {normalize!r}")
        path = Path(weights) if weights is not None else CLASSIFIER_WEIGHTS
        self.classifier, self.record = load_classifier(path)
        self.classifier.requires_grad_(False)
        self.normalize = normalize
        self.weights_path = path
        self.sha256 = file_sha256(path)
        self.num_features = self.classifier.config["feature_dim"]

    def train(self, mode: bool = True) -> "FeatureExtractor":
        # Stay in eval mode whatever a caller (e.g. a torchmetrics Metric) asks.
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) float -> (N, d) float32 features on x's device."""
        _check_images(x, _IMAGE_SHAPE, "the Fashion-MNIST feature extractor")
        x = x.float()
        if self.normalize:
            x = x * 2 - 1
        return self.classifier.features(x)


class InceptionFeatureExtractor(nn.Module):
    """Inception-v3 pool3 features (2048-d, the standard FID network) for RGB images, read from a
    local weights file through torchmetrics (which needs the ``torch-fidelity`` package).

    The weights are torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` (a port of the
    TensorFlow FID Inception). Nothing is downloaded: fetch it once on a machine with internet, e.g.
    ``curl -LO https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth``,
    copy it anywhere and pass its path here (the CLI: the
    same path via its evaluation option). Images are resized to 299×299 inside the network.

    Args:
        weights_path: the ``.pth`` file above.
        antialias: torchmetrics' default (True) resizes with antialiasing; False matches pytorch-fid.
    Input: float (N, 3, H, W) in [-1, 1]; converted to uint8 0..255 as the network expects.
    """

    def __init__(self, weights_path: Union[str, Path], antialias: bool = True):
        super().__init__()
        path = Path(weights_path)
        if not path.is_file():
            raise ValueError(f"Inception weights {path} do not exist; download {INCEPTION_WEIGHTS_URL} on a "
                             f"machine with internet and pass the local file's path")
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
            import torch_fidelity  # noqa: F401  (torchmetrics builds Inception from it)
        except ImportError:
            raise ValueError("Inception features need torchmetrics and torch-fidelity; "
                             "pip install torchmetrics torch-fidelity") from None
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=str(path), antialias=antialias)
        self.weights_path = path
        self.sha256 = file_sha256(path)
        self.num_features = 2048

    def train(self, mode: bool = True) -> "InceptionFeatureExtractor":
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float in [-1, 1] -> (N, 2048) float32."""
        _check_images(x, None, "the Inception feature extractor")
        if x.shape[1] != 3:
            raise ValueError(f"the Inception feature extractor needs 3-channel (RGB) images; got {x.shape[1]} "
                             f"channels (repeat grayscale to 3 channels first)")
        # Same rounding as ddim.images.to_uint8, so features match those of the saved PNGs.
        u8 = ((x.float().clamp(-1, 1) + 1) * 127.5 + 0.5).floor().to(torch.uint8)
        return self.net(u8).float()


def extract_features(extractor: nn.Module, images, batch_size: int = 500) -> torch.Tensor:
    """Features of a whole image set, one batch at a time.

    Args:
        extractor: a module mapping float (B, C, H, W) in [-1, 1] to (B, d), e.g. ``FeatureExtractor``.
        images: ``ddim.data.ImageData`` (uint8, scaled batch by batch) or a float tensor (N, C, H, W)
            in [-1, 1] on any device.
        batch_size: images per forward pass (bounds memory; does not change the result).
    Returns:
        (N, d) float32 features on the CPU.
    """
    from ..data import ImageData

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(images, ImageData):
        n, batch = len(images), lambda s: images.to_float(slice(s, s + batch_size))
    elif isinstance(images, torch.Tensor):
        n, batch = images.shape[0] if images.ndim else 0, lambda s: images[s:s + batch_size]
    else:
        raise ValueError(f"images must be an ImageData or a float tensor (N, C, H, W); got {type(images).__name__}")
    param = next(extractor.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    out = [extractor(batch(s).to(device)).float().cpu() for s in range(0, n, batch_size)]
    if not out:
        raise ValueError("images is empty; at least one image is needed")
    return torch.cat(out)
