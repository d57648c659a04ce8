"""The demo's data: scikit-learn's bundled handwritten digits, 1797 images of 8x8 pixels, 10 classes.

They ship inside scikit-learn (no download); one fixed shuffle splits them into training and test.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .extras import require

#: the split never depends on the training seed, so every run is tested on the same images
SPLIT_SEED = 0
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Digits:
    """Images (n, 1, 8, 8), standardised over all pixels, and labels (n,), for training and test."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_digits_split(limit: int | None = None) -> Digits:
    """The digits split 80/20 by a fixed shuffle; ``limit`` keeps only the first images of it.

    >>> digits = load_digits_split(limit=100)
    >>> digits.train_images.shape, digits.test_labels.shape
    (torch.Size([80, 1, 8, 8]), torch.Size([20]))
    """
    datasets = require("sklearn.datasets", "scikit-learn", "load the handwritten digits")
    bunch = datasets.load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)
    # centred inputs let a distance variant's near-zero initial filters tell the fields apart
    images = (images - images.mean()) / images.std()
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    order = order[:limit] if limit is not None else order
    test_count = round(len(order) * TEST_FRACTION)
    test, train = order[:test_count], order[test_count:]
    return Digits(images[train], labels[train], images[test], labels[test])
