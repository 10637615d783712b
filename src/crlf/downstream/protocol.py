"""Protocol guards that run on every evaluation and are recorded in ``metrics.json["protocol"]``.

* The test split is disjoint from the images pretraining saw: every pretraining image and a sample of test
  images are hashed (exact pixel bytes) and looked up. A leak (the test folder inside the train folder,
  or the same folder given twice) duplicates most test images and raises :class:`ProtocolError`; a few
  exact duplicates are a property of some datasets (both splits drawn from one photo pool) and are
  recorded with a warning, not fatal.
* Features are deterministic: a few images are embedded again and must give the same features. Random
  augmentation, dropout or BatchNorm in train mode would all break this.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np

from crlf.evaluate import ProtocolError, assert_frozen, extract_features

MAX_OVERLAP_FRACTION = 0.01  # above this share of duplicated test images, the test split leaked into train
OVERLAP_SAMPLE = 10_000  # test images hashed (all of CIFAR-10's test split)


def image_hashes(images: np.ndarray) -> list[bytes]:
    """One 16-byte digest of the raw uint8 pixels per image of ``(N, 3, H, W)``."""
    return [hashlib.blake2b(np.ascontiguousarray(img).tobytes(), digest_size=16).digest() for img in images]


def check_disjoint(train_images: np.ndarray, test_images: np.ndarray, sample: int = OVERLAP_SAMPLE,
                   seed: int = 0, max_fraction: float = MAX_OVERLAP_FRACTION) -> dict:
    """Hash the pretraining images and a sample of test images; raise if too many test images are in train."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(test_images), size=min(sample, len(test_images)), replace=False))
    train_set = set(image_hashes(train_images))
    dup = [int(i) for i, h in zip(idx, image_hashes(test_images[idx])) if h in train_set]
    record = {"test_images_checked": int(len(idx)), "train_images_hashed": int(len(train_images)),
              "duplicates": len(dup), "duplicate_test_indices": dup[:20], "hash": "blake2b of uint8 pixels",
              "max_fraction": max_fraction}
    if len(dup) > max_fraction * len(idx):
        raise ProtocolError(
            f"{len(dup)} of {len(idx)} sampled test images are also in the pretraining images: the test split "
            f"leaked into training (is the test folder inside the train folder, or the same folder twice?).")
    if dup:
        warnings.warn(f"{len(dup)} of {len(idx)} sampled test images also occur in the training split "
                      f"(exact duplicates in the dataset); recorded in metrics.json['protocol'].", stacklevel=2)
    return record


def check_deterministic(encoder, images: np.ndarray, features: np.ndarray, mean, std, device,
                        count: int = 8, atol: float = 1e-4) -> dict:
    """Embed the first ``count`` images again: un-augmented, eval-mode features are a function of the image."""
    assert_frozen(encoder)
    again = extract_features(encoder, images[:count], mean, std, device, progress=False)  # (count, D)
    err = float(np.abs(again - features[:count]).max()) if len(again) else 0.0
    scale = float(np.abs(features[:count]).max()) if len(again) else 1.0
    if err > atol * max(1.0, scale):
        raise ProtocolError(f"features differ between two passes over the same images (max |diff| {err:.3g}): "
                            "evaluation must use un-augmented images with the encoder in eval mode.")
    return {"images_rechecked": int(len(again)), "max_abs_diff": err}


def protocol_record(encoder, train_images, test_images, test_x, mean, std, device, seed: int = 0) -> dict:
    """Run both guards (they raise on a violation) and describe the protocol for metrics.json."""
    assert_frozen(encoder)
    return {
        "encoder": "frozen (requires_grad=False), eval() mode, torch.inference_mode(); backbone features, "
                   "not the projection head",
        "features": "un-augmented images, normalised only",
        "feature_determinism": check_deterministic(encoder, test_images, test_x, mean, std, device),
        "pretraining_data": "training split only, without labels",
        "train_test_overlap": check_disjoint(train_images, test_images, seed=seed),
        "probe_hyperparameters": "weight decay chosen on a held-out part of the training split, never on test",
    }
