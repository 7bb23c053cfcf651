"""Tests of scoresde.data.cifar10: layouts, channel order and the restricted unpickler, on tiny
pickled batches written in the official format."""
from __future__ import annotations

import os
import pickle
import tarfile

import numpy as np
import pytest

from scoresde.data import load_cifar10, load_dataset
from scoresde.quantize import check_on_grid

from _data_files import cifar_batch, make_cifar


def check_cifar(ds):
    lo, w = -1.0, 2 / 256
    assert ds.name == "cifar10" and ds.shape == (3, 32, 32) and ds.n_levels == 256 and ds.num_dims == 3072
    assert ds.train.shape == (10, 3, 32, 32) and ds.test.shape == (2, 3, 32, 32)
    assert ds.train_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # data_batch_1..5 in order
    assert ds.test_labels.tolist() == [9, 8]
    img = ds.train[5]  # image 1 of data_batch_3
    assert float(img[0, 5, 17]) == lo + 255 * w  # red lands in channel 0 at (row 5, col 17)
    assert float(img[1, 2, 30]) == lo + 128 * w  # green: channel 1
    assert float(img[2, 31, 0]) == lo + 7 * w  # blue: channel 2
    rest = ds.train.clone()
    rest[5, 0, 5, 17] = rest[5, 1, 2, 30] = rest[5, 2, 31, 0] = lo
    assert bool((rest == lo).all()) and bool((ds.test == lo).all())
    check_on_grid(ds.train, 256, (-1.0, 1.0))
    check_on_grid(ds.test, 256, (-1.0, 1.0))


@pytest.mark.parametrize("protocol,str_keys", [(2, False), (5, True)])
@pytest.mark.parametrize("where", ["dir", "parent", "archive", "archive_parent"])
def test_cifar_layouts_and_channel_order(tmp_path, where, protocol, str_keys):
    batches = tmp_path / "src" / "cifar-10-batches-py"
    make_cifar(batches, protocol, str_keys)
    if where == "dir":
        root = batches
    elif where == "parent":
        root = batches.parent
    else:
        out = tmp_path / "dl"
        out.mkdir()
        archive = out / "cifar-10-python.tar.gz"
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(batches, arcname="cifar-10-batches-py")
        root = archive if where == "archive" else out
    check_cifar(load_cifar10(root))


def test_cifar_dispatch_and_missing(tmp_path):
    batches = tmp_path / "cifar-10-batches-py"
    make_cifar(batches)
    check_cifar(load_dataset("cifar10", root=tmp_path))
    os.remove(batches / "data_batch_4")
    os.remove(batches / "test_batch")
    with pytest.raises(FileNotFoundError) as e:
        load_cifar10(tmp_path)
    msg = str(e.value)
    assert "data_batch_4, test_batch" in msg and "cifar-10-python.tar.gz" in msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cifar10(tmp_path / "nowhere")


def test_cifar_refuses_foreign_pickles(tmp_path):
    class Exploit:
        def __init__(self, target):
            self.target = str(target)

        def __reduce__(self):
            return (os.mkdir, (self.target,))

    pickle.loads(pickle.dumps(Exploit(tmp_path / "control")))  # plain pickle runs the payload...
    assert (tmp_path / "control").is_dir()
    batches = tmp_path / "cifar-10-batches-py"
    make_cifar(batches)
    (batches / "test_batch").write_bytes(pickle.dumps({b"data": Exploit(tmp_path / "pwned"), b"labels": []}))
    with pytest.raises(ValueError, match="refusing"):
        load_cifar10(batches)
    assert not (tmp_path / "pwned").exists()  # ...the restricted one never does
    (batches / "test_batch").write_bytes(cifar_batch(np.zeros((2, 3000), np.uint8), [0, 1]))
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        load_cifar10(batches)
    (batches / "test_batch").write_bytes(cifar_batch(np.zeros((2, 3072), np.uint8), [0, 10]))
    with pytest.raises(ValueError, match="0..9"):
        load_cifar10(batches)
    (batches / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a readable CIFAR-10 batch"):
        load_cifar10(batches)
