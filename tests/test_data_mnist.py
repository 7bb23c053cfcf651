"""Tests of scoresde.data.mnist: the IDX-file loader, on tiny files written in the real format."""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest

from scoresde.data import MNIST_FILES, load_dataset, load_mnist
from scoresde.quantize import check_on_grid

from _data_files import expected_values, make_mnist, write_idx


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_idx_files(tmp_path, gz):
    imgs, labels = make_mnist(tmp_path, gz=gz)
    ds = load_mnist(tmp_path)
    assert ds.train.shape == (5, 1, 28, 28) and ds.test.shape == (3, 1, 28, 28) and ds.shape == (1, 28, 28)
    assert ds.n_levels == 256 and ds.data_range == (-1.0, 1.0) and ds.num_dims == 784
    for split in ("train", "test"):
        x = getattr(ds, split)
        np.testing.assert_allclose(x.squeeze(1).double().numpy(), expected_values(imgs[split], 256, -1, 1),
                                   rtol=0, atol=1e-7)
        np.testing.assert_array_equal(ds.labels(split).numpy(), labels[split])
        check_on_grid(x, 256, (-1.0, 1.0))
    assert float(ds.train[0, 0, 0, 0]) == -1.0 and float(ds.train[0, 0, 27, 27]) == 1 - 2 / 256


def test_mnist_torchvision_layout_and_dispatch(tmp_path):
    make_mnist(tmp_path / "MNIST" / "raw", gz=True)
    ds = load_dataset("MNIST", root=tmp_path, data_range=(0.0, 1.0))
    assert ds.name == "mnist" and ds.data_range == (0.0, 1.0) and ds.train.shape[0] == 5
    check_on_grid(ds.test, 256, (0.0, 1.0))


def test_mnist_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_mnist(tmp_path / "nowhere")
    assert all(name in str(e.value) for name in MNIST_FILES.values())
    with pytest.raises(FileNotFoundError) as e:
        load_mnist(tmp_path)
    assert all(name in str(e.value) for name in MNIST_FILES.values())
    make_mnist(tmp_path)
    os.remove(tmp_path / MNIST_FILES["test_labels"])
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte") as e:
        load_mnist(tmp_path)
    assert "missing: t10k-labels-idx1-ubyte (" in str(e.value)


def test_mnist_corrupt_files(tmp_path):
    make_mnist(tmp_path)
    img = tmp_path / MNIST_FILES["train_images"]
    good = img.read_bytes()
    img.write_bytes(struct.pack(">I", 0x00000804) + good[4:])
    with pytest.raises(ValueError, match="0x00000803"):
        load_mnist(tmp_path)
    img.write_bytes(good[:-10])
    with pytest.raises(ValueError, match="truncated"):
        load_mnist(tmp_path)
    img.write_bytes(good)
    write_idx(tmp_path / MNIST_FILES["test_labels"], np.zeros(4), magic=0x00000801)  # 4 labels for 3 images
    with pytest.raises(ValueError, match="3 images but .* 4 labels"):
        load_mnist(tmp_path)
    write_idx(tmp_path / MNIST_FILES["test_labels"], np.zeros((3, 28, 28)))  # an image file as labels
    with pytest.raises(ValueError, match="0x00000801"):
        load_mnist(tmp_path)
    (tmp_path / MNIST_FILES["test_labels"]).write_bytes(gzip.compress(b"x" * 100)[:-8])
    with pytest.raises(ValueError, match="gzip"):
        load_mnist(tmp_path)
