"""Tests of scoresde.data: the data set type and the loaders (the grid itself: test_quantize.py).

File loaders are tested on tiny files written here in the real formats (IDX for MNIST, pickled
batch dicts for CIFAR-10); nothing is downloaded. Expected values are computed independently in
NumPy float64 from the documented convention ``lo + k (hi - lo) / n_levels``.
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import sys
import tarfile

import numpy as np
import pytest
import torch

from scoresde.data import (
    CIFAR10_TEST, CIFAR10_TRAIN, DATASETS, MNIST_FILES, TOY_DATASETS, Dataset, dequantize, iterate_batches,
    load_cifar10, load_dataset, load_digits, load_mnist, load_toy, to_levels,
)
from scoresde.evaluate import check_on_grid, evaluate_bpd
from scoresde.sde import VPSDE

sklearn = pytest.importorskip("sklearn.datasets")


def expected_values(levels, n_levels, lo, hi):
    """The documented convention, computed independently in float64."""
    return lo + np.asarray(levels, dtype=np.float64) * ((hi - lo) / n_levels)


# ---------------------------------------------------------------------------------------------
# Tiny files in the real formats.
# ---------------------------------------------------------------------------------------------
def write_idx(path, array, gz=False, magic=None):
    """An IDX file of unsigned bytes: magic 0x0000 08 ndim, big-endian uint32 dims, C-order data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim if magic is None else magic
    blob = struct.pack(">I", magic) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes()
    if gz:
        blob = gzip.compress(blob)
        path = path.with_name(path.name + ".gz")
    path.write_bytes(blob)
    return path


def make_mnist(root, gz=False, n_train=5, n_test=3):
    rng = np.random.RandomState(1)
    imgs = {s: rng.randint(0, 256, size=(n, 28, 28)) for s, n in (("train", n_train), ("test", n_test))}
    imgs["train"][0, 0, 0], imgs["train"][0, 27, 27] = 0, 255  # both ends of the range
    labels = {s: rng.randint(0, 10, size=len(imgs[s])) for s in imgs}
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / MNIST_FILES["train_images"], imgs["train"], gz)
    write_idx(root / MNIST_FILES["train_labels"], labels["train"], gz)
    write_idx(root / MNIST_FILES["test_images"], imgs["test"], gz)
    write_idx(root / MNIST_FILES["test_labels"], labels["test"], gz)
    return imgs, labels


def cifar_batch(data, labels, protocol=2, str_keys=False):
    """A batch in the official dict format (bytes keys; Python 2 pickles load with encoding='bytes')."""
    d = {b"batch_label": b"tiny batch", b"labels": list(map(int, labels)), b"data": data,
         b"filenames": [b"img%d.png" % i for i in range(len(labels))]}
    if str_keys:
        d = {k.decode(): v for k, v in d.items()}
    return pickle.dumps(d, protocol=protocol)


def make_cifar(folder, protocol=2, str_keys=False):
    """Six batches of 2 images; data_batch_i has labels (i-1, i-1), test_batch (9, 8).

    Image 1 of data_batch_3 (train row 5) has red 255 at (row 5, col 17), green 128 at (2, 30) and
    blue 7 at (31, 0); every other value is 0.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(CIFAR10_TRAIN + CIFAR10_TEST):
        data = np.zeros((2, 3072), dtype=np.uint8)
        if name == "data_batch_3":
            data[1, 0 * 1024 + 5 * 32 + 17] = 255
            data[1, 1 * 1024 + 2 * 32 + 30] = 128
            data[1, 2 * 1024 + 31 * 32 + 0] = 7
        labels = [9, 8] if name == "test_batch" else [i, i]
        (folder / name).write_bytes(cifar_batch(data, labels, protocol, str_keys))


# ---------------------------------------------------------------------------------------------
# Digits.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_digits_shapes_levels_split(digits):
    ds = digits
    assert ds.name == "digits" and ds.n_levels == 17 and ds.data_range == (-1.0, 1.0) and ds.shape == (1, 8, 8)
    assert ds.num_dims == 64
    assert ds.train.shape == (1438, 1, 8, 8) and ds.test.shape == (359, 1, 8, 8)  # round(0.2 * 1797) = 359
    both = torch.cat([ds.train, ds.test])
    values = torch.unique(both).double().numpy()
    np.testing.assert_allclose(values, expected_values(np.arange(17), 17, -1.0, 1.0), rtol=0, atol=1e-7)
    check_on_grid(ds.train, 17, (-1.0, 1.0))
    check_on_grid(ds.test, 17, (-1.0, 1.0))
    tr, te = ds.info["train_index"], ds.info["test_index"]
    assert len(set(tr.tolist()) & set(te.tolist())) == 0
    assert sorted(tr.tolist() + te.tolist()) == list(range(1797))
    assert torch.all(tr[1:] > tr[:-1]) and torch.all(te[1:] > te[:-1])  # original order kept
    bunch = sklearn.load_digits()
    np.testing.assert_allclose(ds.test.squeeze(1).double().numpy(),
                               expected_values(bunch.images[te.numpy()], 17, -1.0, 1.0), rtol=0, atol=1e-7)
    np.testing.assert_array_equal(ds.train_labels.numpy(), bunch.target[tr.numpy()])
    np.testing.assert_array_equal(ds.test_labels.numpy(), bunch.target[te.numpy()])
    assert torch.equal(to_levels(ds.train, 17).squeeze(1), torch.from_numpy(bunch.images[tr.numpy()]).long())


def test_digits_deterministic_and_seeded(digits):
    again = load_digits()
    assert torch.equal(again.train, digits.train) and torch.equal(again.test, digits.test)
    other = load_digits(seed=1)
    assert not torch.equal(other.info["test_index"], digits.info["test_index"])
    r01 = load_digits(data_range=(0.0, 1.0), test_fraction=0.5, dtype=torch.float64)
    assert r01.train.dtype == torch.float64 and r01.test.shape[0] == round(0.5 * 1797)
    assert float(r01.train.max()) == 16 / 17 and float(r01.train.min()) == 0.0
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.0)


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'scoresde\[digits\]'"):
        load_digits()


def test_evaluate_bpd_on_digits_with_exact_score(digits):
    """End to end: data N(0, I) is stationary under the VP SDE, so the score is -x, the flow is
    still, and log p is the standard normal density of the dequantized point (with the same noise)."""
    x = digits.test[:6]
    res = evaluate_bpd(lambda z, t: -z, VPSDE(), x, **digits.bpd_kwargs(), trace="exact",
                       generator=torch.Generator().manual_seed(3), progress=False)
    xd = dequantize(x, 17, (-1.0, 1.0), torch.Generator().manual_seed(3)).double().flatten(1)
    D = 64
    logp = -0.5 * (xd ** 2).sum(1) - 0.5 * D * math.log(2 * math.pi)
    expected = -logp / (D * math.log(2)) + math.log2(17 / 2)
    torch.testing.assert_close(res.bpd[0], expected, rtol=1e-5, atol=1e-5)
    assert res.convention["n_levels"] == 17


# ---------------------------------------------------------------------------------------------
# MNIST.
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# CIFAR-10.
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Toy sets, dispatcher, Dataset, batching.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_sets(name):
    ds = load_toy(name, n_train=64, n_test=16, seed=3)
    D = 16 if name == "mixture_nd" else 2
    assert ds.train.shape == (64, D) and ds.test.shape == (16, D) and ds.shape == (D,) and ds.num_dims == D
    assert ds.n_levels is None and ds.data_range is None and not ds.quantized
    again = load_toy(name, n_train=32, n_test=16, seed=3)
    assert torch.equal(again.test, ds.test)  # the test set does not depend on n_train
    assert not torch.equal(load_toy(name, n_train=64, n_test=16, seed=4).train, ds.train)
    lo, hi = torch.tensor(ds.info["bounds"][0]), torch.tensor(ds.info["bounds"][1])
    both = torch.cat([ds.train, ds.test])
    assert torch.equal(both.min(0).values, lo) and torch.equal(both.max(0).values, hi)
    oracle = ds.info["oracle"]
    if oracle is not None:  # documented stream: train from manual_seed(2 seed)
        assert torch.equal(ds.train, oracle.sample(64, generator=torch.Generator().manual_seed(6)))
    with pytest.raises(ValueError, match="continuous"):
        ds.bpd_kwargs()


def test_toy_params():
    a = load_toy("two_moons", 100, 10, params={"noise": 0.0})
    # noise-free moons lie on the unit circles around (0, 0) and (1, 0.5)
    r0 = (a.train.double().norm(dim=1) - 1).abs()
    r1 = ((a.train.double() - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1) - 1).abs()
    assert float(torch.minimum(r0, r1).max()) < 1e-6
    b = load_toy("mixture_nd", 10, 10, params={"D": 3, "K": 2})
    assert b.shape == (3,) and b.info["oracle"].n_components == 2
    with pytest.raises(TypeError, match="noise"):
        load_toy("mixture_2d", 10, 10, params={"noise": 0.1})
    with pytest.raises(ValueError, match="two_moons"):
        load_toy("moons", 10, 10)


def test_dispatcher():
    assert set(DATASETS) == {"digits", "mnist", "cifar10", *TOY_DATASETS}
    with pytest.raises(ValueError) as e:
        load_dataset("imagenet")
    assert all(n in str(e.value) for n in DATASETS)
    for name in ("mnist", "cifar10"):
        with pytest.raises(ValueError, match="needs root="):
            load_dataset(name)
    with pytest.raises(ValueError, match="drop root="):
        load_dataset("digits", root="/data")
    ds = load_dataset("checkerboard", n_train=8, n_test=4, seed=1)
    assert torch.equal(ds.train, load_toy("checkerboard", 8, 4, seed=1).train)
    assert load_dataset("digits", seed=2).info["seed"] == 2


def test_dataset_validation(digits):
    with pytest.raises(ValueError, match="shape"):
        Dataset("x", torch.zeros(3, 2), torch.zeros(2, 3), None, None, (2,))
    with pytest.raises(ValueError, match="together"):
        Dataset("x", torch.zeros(3, 2), torch.zeros(2, 2), 256, None, (2,))
    with pytest.raises(TypeError, match="floating"):
        Dataset("x", torch.zeros(3, 2, dtype=torch.long), torch.zeros(2, 2), None, None, (2,))
    with pytest.raises(ValueError, match="labels"):
        Dataset("x", torch.zeros(3, 2), torch.zeros(2, 2), None, None, (2,), train_labels=torch.zeros(2))
    assert digits.bpd_kwargs() == dict(n_levels=17, data_range=(-1.0, 1.0), dequantize="uniform")
    assert digits.cell_width == 2 / 17
    x, y = digits.tensor_dataset("test")[0]
    assert x.shape == (1, 8, 8) and y.ndim == 0
    assert "17 levels" in repr(digits)


def test_iterate_batches():
    x = torch.arange(10.0)[:, None]
    y = torch.arange(10)
    batches = list(iterate_batches((x, y), 4, generator=torch.Generator().manual_seed(0)))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    xs = torch.cat([b[0] for b in batches])[:, 0]
    assert sorted(xs.tolist()) == list(range(10)) and not torch.equal(xs, torch.arange(10.0))
    assert all(torch.equal(bx[:, 0].long(), by) for bx, by in batches)  # rows stay aligned
    again = list(iterate_batches((x, y), 4, generator=torch.Generator().manual_seed(0)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    assert [len(b) for b in iterate_batches(x, 4, shuffle=False, drop_last=True)] == [4, 4]
    assert torch.equal(next(iterate_batches(x, 3, shuffle=False)), x[:3])
    with pytest.raises(ValueError, match="first dimension"):
        next(iterate_batches((x, y[:5]), 2))
    with pytest.raises(ValueError, match="batch_size"):
        next(iterate_batches(x, 0))

