"""Tests of the scoresde.data package as a whole: its re-exports (what it may import, even
transitively: tests/test_layout.py).

The loaders are tested one module each: test_data_dataset.py, test_data_digits.py,
test_data_mnist.py, test_data_cifar10.py, test_data_toy.py, test_data_registry.py and
test_data_batches.py (shared tiny-file writers: _data_files.py; the grid itself: test_quantize.py).
"""
from __future__ import annotations

import scoresde.data
import scoresde.quantize


#: Every name other modules, tests, studies and docs import from scoresde.data.
KEPT = ("CIFAR10_ARCHIVE", "CIFAR10_CLASSES", "CIFAR10_DIR", "CIFAR10_TEST", "CIFAR10_TRAIN", "DATASETS", "MNIST_FILES",
        "TOY_DATASETS", "Dataset", "dequantize", "iterate_batches", "load_cifar10", "load_dataset", "load_digits",
        "load_mnist", "load_toy", "scale", "to_levels")


def test_names_kept_importable_from_scoresde_data():
    missing = [n for n in KEPT + tuple(scoresde.data.__all__) if not hasattr(scoresde.data, n)]
    assert not missing, f"scoresde.data no longer exports {missing}"
    assert scoresde.data.scale is scoresde.quantize.grid_values
    assert scoresde.data.to_levels is scoresde.quantize.to_levels
    assert scoresde.data.dequantize is scoresde.quantize.dequantize
