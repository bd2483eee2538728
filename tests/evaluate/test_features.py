"""The shipped Fashion-MNIST classifier and the feature extractors built on it."""

import importlib.util
import json

import pytest
import torch

from ddim.data import ImageData, load_dataset
from fmnist import needs_full_fmnist
from ddim.evaluate import (CLASSIFIER_RECORD, CLASSIFIER_WEIGHTS, FashionClassifier, FeatureExtractor,
                           InceptionFeatureExtractor, extract_features, file_sha256, load_classifier)

# The accuracy the project promises for the shipped weights (issue #5): measured on all 10,000 test images.
MIN_TEST_ACCURACY = 0.92


@pytest.fixture(scope="module")
def held_out_split():
    return load_dataset("fashion-mnist", split="test")


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor()


def test_shipped_files_are_small_and_recorded():
    record = json.loads(CLASSIFIER_RECORD.read_text())
    assert CLASSIFIER_WEIGHTS.stat().st_size <= 2 * 1024 * 1024
    for key in ("config", "seed", "epochs", "command", "date", "train_time_s", "test_accuracy"):
        assert key in record, key
    assert record["weights_sha256"] == file_sha256(CLASSIFIER_WEIGHTS)   # the record describes these weights
    assert record["test_images"] == 10_000


@needs_full_fmnist
def test_accuracy_claim_holds_on_the_whole_test_split(held_out_split):
    model, record = load_classifier()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(held_out_split), 2000):
            logits = model(held_out_split.to_float(slice(s, s + 2000)))
            correct += int((logits.argmax(1) == held_out_split.labels[s:s + 2000]).sum())
    accuracy = correct / len(held_out_split)
    assert accuracy >= MIN_TEST_ACCURACY
    # Same number as recorded at training time, up to a few images whose logits are near-ties
    # (another thread count may round convolutions differently).
    assert abs(accuracy - record["test_accuracy"]) <= 5e-4


def test_features_shape_determinism_and_batch_independence(extractor, held_out_split):
    x = held_out_split.to_float(slice(0, 64))
    f = extractor(x)
    assert f.shape == (64, extractor.num_features) and f.dtype == torch.float32
    assert torch.equal(f, extractor(x))
    # Eval-mode BatchNorm: an image's features do not depend on its batch-mates.
    torch.testing.assert_close(extractor(x[:5]), f[:5], rtol=1e-5, atol=1e-5)
    assert float(f.std(0).mean()) > 0   # not a constant map


def test_extractor_never_trains(extractor):
    extractor.train()
    assert not extractor.training and not extractor.classifier.training
    assert not any(p.requires_grad for p in extractor.parameters())


def test_normalize_flag_takes_zero_one_inputs(extractor, held_out_split):
    x = held_out_split.to_float(slice(0, 16))
    unit = FeatureExtractor(normalize=True)
    torch.testing.assert_close(unit((x + 1) / 2), extractor(x), rtol=1e-5, atol=1e-5)
    assert unit.sha256 == extractor.sha256 == file_sha256(CLASSIFIER_WEIGHTS)


def test_extract_features_from_imagedata_equals_float_tensor(extractor, held_out_split):
    subset = ImageData(held_out_split.images[:50])
    a = extract_features(extractor, subset, batch_size=16)
    b = extract_features(extractor, subset.to_float(), batch_size=50)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_refuses_other_image_sizes(extractor):
    with pytest.raises(ValueError, match="needs 1x28x28 images; got 3x32x32"):
        extractor(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="float tensor"):
        extractor(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="float tensor"):
        extractor(torch.zeros(1, 28, 28))


@pytest.mark.parametrize("kwargs, match", [
    ({"weights": "/nonexistent/w.safetensors"}, "do not exist"),
    ({"normalize": "yes"}, "normalize must be"),
])
def test_extractor_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeatureExtractor(**kwargs)


def test_extract_features_bad_arguments(extractor):
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(extractor, torch.zeros(2, 1, 28, 28), batch_size=0)
    with pytest.raises(ValueError, match="ImageData or a float tensor"):
        extract_features(extractor, [1, 2, 3])
    with pytest.raises(ValueError, match="empty"):
        extract_features(extractor, torch.zeros(0, 1, 28, 28))


def test_classifier_bad_arguments():
    with pytest.raises(ValueError, match="channels"):
        FashionClassifier(channels=())
    with pytest.raises(ValueError, match="feature_dim"):
        FashionClassifier(feature_dim=0)


def test_inception_needs_a_local_weights_file(tmp_path):
    with pytest.raises(ValueError, match="Inception weights .* do not exist; download"):
        InceptionFeatureExtractor(tmp_path / "missing.pth")


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity is installed")
def test_inception_names_its_missing_dependency(tmp_path):
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"not really weights")
    with pytest.raises(ValueError, match="pip install torchmetrics torch-fidelity"):
        InceptionFeatureExtractor(weights)
