"""Fault injection, part C: hostile data files, half-precision data, and bad arguments at the API surface.

Every case writes a small file in the real format (IDX ``.gz`` for MNIST, pickled batch dicts in a
folder or a ``.tar.gz`` for CIFAR-10) or passes a bad argument, and asserts the exception type, that
the message names the problem (and the file where there is one), and that nothing was lost: the
loaders write nothing and leave every file as it was. Memory is measured with ``tracemalloc``
(NumPy reports its buffers to it), whose peak shows what a loader allocated, unlike the
process's peak RSS, which earlier tests may already have raised.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import time
import tracemalloc
import types
import warnings

import numpy as np
import pytest
import torch

from scoresde import MLPScoreNet, ScoreModel, SubVPSDE, VESDE, VPSDE, evaluate_bpd, load_cifar10, load_mnist
from scoresde.cli.main import main
from scoresde.data import CIFAR10_DIR, MNIST_FILES
from scoresde.likelihood import log_likelihood
from scoresde.quantize import dequantize, grid_values
from scoresde.sampling import sample

from _data_files import cifar_batch, make_cifar, make_mnist, write_idx

MB = 1 << 20


def _snapshot(folder):
    """Every file under ``folder`` with its bytes: what a loader must leave as it was."""
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _peak_alloc(fn, *args):
    """Run ``fn(*args)``, which must raise ``ValueError``; return the error, the peak of new memory
    allocations (bytes, tracemalloc) and the seconds it took."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ValueError) as e:
            fn(*args)
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return str(e.value), peak, seconds


def _gzip_zeros(path, head: bytes, n_zero_bytes: int):
    """A gzip file (a gzip bomb) that inflates to ``head`` then ``n_zero_bytes`` zero bytes: one gzip
    member holding 1 MiB of zeros, repeated (a file of several members is one valid gzip stream)."""
    mib = gzip.compress(bytes(MB), compresslevel=9)
    with open(path, "wb") as fh:
        fh.write(gzip.compress(head))
        for _ in range(n_zero_bytes // MB):
            fh.write(mib)
        fh.write(gzip.compress(bytes(n_zero_bytes % MB)))
    return path


# ---------------------------------------------------------------------------------------------
# MNIST: the header is read and checked before the data, and no more than it declares is read.
# ---------------------------------------------------------------------------------------------
def test_mnist_lying_header_declaring_a_huge_size_is_refused_before_reading(tmp_path):
    make_mnist(tmp_path, gz=True)
    bad = tmp_path / (MNIST_FILES["train_images"] + ".gz")
    bad.write_bytes(gzip.compress(struct.pack(">IIII", 0x803, 2**31, 28, 28) + bytes(784 * 5)))
    before = _snapshot(tmp_path)
    msg, peak, _ = _peak_alloc(load_mnist, tmp_path)
    assert str(bad) in msg and "declares 2147483648 items" in msg and "Download it again" in msg
    assert peak < 5 * MB
    bad.write_bytes(gzip.compress(struct.pack(">IIII", 0x803, 5, 4096, 4096)))  # 5 images of 16 MB each
    msg, peak, _ = _peak_alloc(load_mnist, tmp_path)
    assert str(bad) in msg and "4096x4096 images" in msg and "28x28" in msg and peak < 5 * MB
    assert _snapshot(tmp_path).keys() == before.keys()  # nothing written


def test_mnist_gzip_bomb_with_a_small_header_reads_only_what_it_declares(tmp_path):
    """A 300 KB file that inflates to 300 MB: 10 images declared, then 300 MB of trailing zeros."""
    make_mnist(tmp_path, gz=True)
    bad = tmp_path / (MNIST_FILES["train_images"] + ".gz")
    _gzip_zeros(bad, struct.pack(">IIII", 0x803, 10, 28, 28), 300 * MB)
    assert bad.stat().st_size < 1 * MB
    before = _snapshot(tmp_path)
    msg, peak, seconds = _peak_alloc(load_mnist, tmp_path)
    assert str(bad) in msg and "(10, 28, 28)" in msg and "more than 7856 bytes (trailing data) once decompressed" in msg
    assert peak < 5 * MB and seconds < 5  # it stopped after the declared 7840 bytes (+1), not at 300 MB
    assert _snapshot(tmp_path) == before


def test_mnist_gzip_bomb_with_a_plausible_count_is_refused_before_inflating(tmp_path):
    """500000 images (392 MB) declared -- a count a real file may hold -- from a file of a few hundred KB."""
    make_mnist(tmp_path, gz=True)
    bad = tmp_path / (MNIST_FILES["test_images"] + ".gz")
    _gzip_zeros(bad, struct.pack(">IIII", 0x803, 500_000, 28, 28), 500_000 * 784)
    size = bad.stat().st_size
    assert size < 1 * MB
    msg, peak, seconds = _peak_alloc(load_mnist, tmp_path)
    assert str(bad) in msg and "gzip bomb" in msg and f"the {size} compressed bytes" in msg
    assert peak < 5 * MB and seconds < 2


def test_mnist_truncated_and_trailing_data_name_the_file(tmp_path):
    imgs, _ = make_mnist(tmp_path, gz=True)
    bad = tmp_path / (MNIST_FILES["test_images"] + ".gz")
    blob = struct.pack(">IIII", 0x803, 3, 28, 28) + np.asarray(imgs["test"], np.uint8).tobytes()
    bad.write_bytes(gzip.compress(blob[:-1]))
    with pytest.raises(ValueError, match="truncated or corrupt") as e:
        load_mnist(tmp_path)
    assert str(bad) in str(e.value) and "has 2367 bytes once decompressed" in str(e.value)
    bad.write_bytes(gzip.compress(blob + b"\0"))
    with pytest.raises(ValueError, match="more than 2368 bytes") as e:
        load_mnist(tmp_path)
    assert str(bad) in str(e.value)
    bad.write_bytes(gzip.compress(blob))
    assert load_mnist(tmp_path).test.shape == (3, 1, 28, 28)  # the same file, whole, loads


def test_mnist_labels_outside_0_to_9_are_refused_with_the_file_and_value(tmp_path):
    _, labels = make_mnist(tmp_path)
    bad = tmp_path / MNIST_FILES["train_labels"]
    lab = np.asarray(labels["train"]).copy()
    lab[3] = 12
    write_idx(bad, lab)
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError) as e:
        load_mnist(tmp_path)
    msg = str(e.value)
    assert str(bad) in msg and "label 12 at index 3 is outside 0..9" in msg
    assert _snapshot(tmp_path) == before


def test_cli_train_on_a_hostile_mnist_folder_exits_with_a_message(tmp_path, capsys):
    make_mnist(tmp_path / "mnist", gz=True)
    bad = tmp_path / "mnist" / (MNIST_FILES["train_images"] + ".gz")
    bad.write_bytes(gzip.compress(struct.pack(">IIII", 0x803, 2**31, 28, 28)))
    try:
        code = main(["train", "--dataset", "mnist", "--data-root", str(tmp_path / "mnist"), "--out",
                     str(tmp_path / "run"), "--steps", "2", "--device", "cpu", "--no-progress"])
    except SystemExit as e:  # a usage error exits through argparse
        code = e.code
    err = capsys.readouterr().err
    assert code != 0 and str(bad) in err and "declares 2147483648 items" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# CIFAR-10: sizes are checked before reading, types before converting.
# ---------------------------------------------------------------------------------------------
def test_cifar_oversized_tar_member_is_refused_before_it_is_read(tmp_path):
    folder = tmp_path / CIFAR10_DIR
    make_cifar(folder)
    big = folder / "data_batch_2"
    with open(big, "r+b") as fh:
        fh.truncate(40 * MB)  # 40 MB: more than any official batch (31 MB)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tf:
        tf.add(folder, arcname=CIFAR10_DIR)
    before = _snapshot(tmp_path)
    msg, peak, _ = _peak_alloc(load_cifar10, archive)
    assert f"{archive}:{CIFAR10_DIR}/data_batch_2 is 41943040 bytes" in msg and "refusing to read it" in msg
    assert peak < 10 * MB  # the 40 MB member was never read into memory
    msg, peak, _ = _peak_alloc(load_cifar10, folder)  # the same file in a folder: refused from its size
    assert f"{big} is 41943040 bytes" in msg and peak < 5 * MB
    assert _snapshot(tmp_path) == before


def test_cifar_nested_pickle_bomb_is_refused_before_expanding(tmp_path):
    """30 KB of pickle that would expand to 10^7 labels (80 MB) under ``np.asarray``."""
    folder = tmp_path / CIFAR10_DIR
    make_cifar(folder)
    row = [0] * 1000
    blob = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [row] * 10_000}, protocol=2)
    assert len(blob) < 64 * 1024
    (folder / "test_batch").write_bytes(blob)
    msg, peak, _ = _peak_alloc(load_cifar10, folder)
    assert str(folder / "test_batch") in msg and "'labels' must be 2 integers in 0..9" in msg
    assert "a list of 10000 items" in msg and peak < 5 * MB
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, row]}))
    with pytest.raises(ValueError, match="that are not all integers"):
        load_cifar10(folder)


class _Alloc:
    """Pickles as ``numpy.ndarray((N, 3072), uint8)``: a call that would allocate N * 3 KB."""

    def __init__(self, n):
        self.n = n

    def __reduce__(self):
        return (np.ndarray, ((self.n, 3072), "u1"))


def test_cifar_pickle_that_allocates_or_is_not_a_batch_is_refused(tmp_path):
    folder = tmp_path / CIFAR10_DIR
    make_cifar(folder)
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": _Alloc(100_000), b"labels": [0]}, protocol=2))
    msg, peak, _ = _peak_alloc(load_cifar10, folder)  # 307 MB would be allocated by numpy.ndarray(shape)
    assert str(folder / "data_batch_1") in msg and "not a readable CIFAR-10 batch" in msg and peak < 5 * MB
    (folder / "data_batch_1").write_bytes(pickle.dumps([np.zeros((2, 3072), np.uint8), [0, 1]], protocol=2))
    with pytest.raises(ValueError, match="holds a list, not the dict of a CIFAR-10 batch") as e:
        load_cifar10(folder)
    assert str(folder / "data_batch_1") in str(e.value)


def test_sample_files_load_with_weights_only(tmp_path, capsys):
    """The docs say ``torch.load(path, weights_only=True)`` reads what ``scoresde sample`` writes."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--dataset", "mixture_2d", "--out", str(tmp_path / "run"), "--steps", "4",
                     "--batch-size", "16", "--hidden", "8", "--depth", "1", "--emb-dim", "8", "--checkpoint-every",
                     "4", "--log-every", "2", "--device", "cpu", "--no-progress"]) == 0
        for sampler, extra in (("pc", ["--steps", "3"]), ("ode", ["--rtol", "1e-2", "--atol", "1e-2"])):
            assert main(["sample", "--checkpoint", str(tmp_path / "run"), "--sampler", sampler, "--n", "4", "--out",
                         str(tmp_path / "s"), "--no-progress"] + extra) == 0
            saved = torch.load(tmp_path / "s" / f"samples_{sampler}.pt", weights_only=True)
            assert saved["x"].shape == (4, 2) and saved["sampler"] == sampler
    finally:
        torch.set_num_threads(n)
    capsys.readouterr()


# ---------------------------------------------------------------------------------------------
# Half-precision and off-grid data into evaluate_bpd.
# ---------------------------------------------------------------------------------------------
def _gaussian_score(sde, var=0.25):
    """The exact score of ``x(0) ~ N(0, var I)``: ``-x / (m^2 var + s^2)``."""
    def score(x, t):
        m, s = sde.coeffs_unchecked(t)
        return -x / (m * m * var + s * s)[:, None]
    return score


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_grid_data_dequantize_inside_their_cells_in_float32(half):
    levels = torch.arange(256).repeat(400)  # every level, 102400 values
    x32 = grid_values(levels, 256, (-1, 1), dtype=torch.float32)
    xh = x32.to(half)  # as a user converts a data set (grid_values refuses half: too coarse for its check)
    assert torch.equal(xh.to(torch.float32), x32)  # 8-bit grid values are exact in both half formats
    d32 = dequantize(x32, generator=torch.Generator().manual_seed(3))
    dh = dequantize(xh, generator=torch.Generator().manual_seed(3))
    assert dh.dtype == torch.float32 and torch.equal(dh, d32)
    for d in (d32, dh):  # every value inside its own cell [lo + k w, lo + (k + 1) w), judged in float64
        cell = torch.floor((d.double() + 1) * 128)
        assert torch.equal(cell.long(), levels)
    # the old arithmetic, in the half dtype itself, loses the cell: the reason for the upcast
    old = xh + torch.rand(xh.shape, generator=torch.Generator().manual_seed(3), dtype=half) * (2 / 256)
    assert (torch.floor((old.double() + 1) * 128).long() != levels).float().mean() > 0.01


def test_half_precision_data_give_the_float32_bits_per_dim():
    sde = VPSDE()
    levels = torch.randint(96, 160, (6, 3), generator=torch.Generator().manual_seed(0))
    kw = dict(rtol=1e-4, atol=1e-4, trace="exact", progress=False, batch_size=3)
    ref = evaluate_bpd(_gaussian_score(sde), sde, grid_values(levels, dtype=torch.float32),
                       generator=torch.Generator().manual_seed(1), **kw)
    for half in (torch.bfloat16, torch.float16):
        res = evaluate_bpd(_gaussian_score(sde), sde, grid_values(levels, dtype=torch.float32).to(half),
                           generator=torch.Generator().manual_seed(1), **kw)
        assert torch.equal(res.bpd, ref.bpd) and res.mean == ref.mean
    off = grid_values(levels, dtype=torch.float32) + 1e-3
    with pytest.raises(ValueError, match="not on the quantization grid of 256 levels") as e:
        evaluate_bpd(_gaussian_score(sde), sde, off, **kw)
    assert "18 of 18 values are off it" in str(e.value)


# ---------------------------------------------------------------------------------------------
# The public SDE methods check their input; the hot-path twins do not.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=repr)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_sde_public_methods_refuse_non_finite_x(sde, bad):
    x = torch.zeros(3, 2)
    x[1, 0] = bad
    kept = x.clone()
    for name, fn in (("x", sde.sde), ("x0", sde.marginal_prob), ("x", sde.discretize),
                     ("x", sde.reverse(lambda y, t: -y).sde)):
        with pytest.raises(ValueError, match=rf"^{name} contains 1 non-finite value\(s\) \(NaN or inf\)"):
            fn(x, 0.5)
    assert bool(((x == kept) | (x.isnan() & kept.isnan())).all())  # the input is left as it was
    mean, _ = sde.marginal_prob_unchecked(x, torch.full((3,), 0.5))  # the twin trusts its input
    assert not torch.isfinite(mean[1, 0])


# ---------------------------------------------------------------------------------------------
# sample() and ScoreModel: errors at the public surface, not from deep inside torch.
# ---------------------------------------------------------------------------------------------
def test_sample_bad_arguments_say_what_to_change():
    sde = VPSDE()
    with pytest.raises(TypeError, match=r"dtype must be a floating dtype .* got torch.int64.*to_levels"):
        sample(lambda x, t: -x, sde, (4, 2), steps=2, dtype=torch.long)
    with pytest.raises(TypeError, match=r"shape must be a sequence \(B, \*dims\), got the int 4.*\(4, 2\)"):
        sample(lambda x, t: -x, sde, 4, steps=2)
    with pytest.raises(TypeError, match=r"integer sizes"):
        sample(lambda x, t: -x, sde, (4, 2.5), steps=2)
    assert sample(lambda x, t: -x, sde, (np.int64(4), 2), steps=2).x.shape == (4, 2)  # NumPy ints are sizes
    model = ScoreModel(MLPScoreNet(2, hidden=8, depth=1, emb_dim=8), sde)
    for sampler in ("pc", "ode"):
        with pytest.raises(TypeError, match=r"x is torch.float64 but the network's parameters are torch.float32: "
                                            r"pass x.to\(torch.float32\) \(for sampling: dtype=torch.float32\)"):
            sample(model, sde, (4, 2), sampler=sampler, steps=2 if sampler == "pc" else None, dtype=torch.float64)
    with pytest.raises(TypeError, match="model.to\\(torch.float64\\)"):
        model(torch.zeros(4, 2, dtype=torch.float64), 0.5)
    assert model(torch.zeros(4, 2), 0.5).shape == (4, 2)


# ---------------------------------------------------------------------------------------------
# A module in training mode: one warning, from log_likelihood and evaluate_bpd alike.
# ---------------------------------------------------------------------------------------------
def test_train_mode_warns_once():
    sde = VPSDE()
    model = ScoreModel(MLPScoreNet(2, hidden=8, depth=1, emb_dim=8), sde)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0)) * 0.3
    kw = dict(rtol=1e-2, atol=1e-2, trace="exact")
    for fn in (model, model.score_fn):
        with pytest.warns(UserWarning, match=r"training mode .* call \.eval\(\)") as w:
            log_likelihood(fn, sde, x, **kw)
        assert len([r for r in w if "training mode" in str(r.message)]) == 1 and w[0].filename == __file__
    with pytest.warns(UserWarning, match="training mode") as w:  # two batches, two log_likelihood calls
        evaluate_bpd(model, sde, x, dequantize=None, batch_size=2, progress=False, **kw)
    assert len([r for r in w if "training mode" in str(r.message)]) == 1 and w[0].filename == __file__
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log_likelihood(model, sde, x, **kw)
        evaluate_bpd(model, sde, x, dequantize=None, batch_size=2, progress=False, **kw)


# ---------------------------------------------------------------------------------------------
# scoresde.train: the function for `from scoresde import train`, a module for `import scoresde.train`.
# ---------------------------------------------------------------------------------------------
_TRAIN_IMPORTS = """
import inspect, types, warnings, sys
import scoresde.training as TR
cfg = TR.TrainConfig(dataset="mixture_2d", steps=2, batch_size=8, hidden=8, depth=1, emb_dim=8, warmup=1,
                     checkpoint_every=2, log_every=1, out_dir=sys.argv[1], device="cpu")

def from_import():
    from scoresde import train
    res = train(cfg, progress=False)
    assert isinstance(res, TR.TrainResult) and res.step == 2, res
    assert "cfg" in inspect.signature(train).parameters

def import_as():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        import scoresde.train as T
        assert isinstance(T, types.ModuleType) and T.__name__ == "scoresde.train", T
        assert T.TrainConfig is TR.TrainConfig and T.load_model is TR.load_model
    assert [str(x.message) for x in w if x.category is DeprecationWarning] == [
        "scoresde.train is deprecated and will be removed in the next release; import TrainConfig from "
        "scoresde.training instead",
        "scoresde.train is deprecated and will be removed in the next release; import load_model from "
        "scoresde.training instead"]
    try:
        T.no_such_name
    except AttributeError as e:
        assert "moved to scoresde.training" in str(e)
    else:
        raise AssertionError("no AttributeError")

for step in sys.argv[2:]:
    globals()[step]()
print("ok")
"""


def test_train_function_and_module_path_both_work_in_either_order(tmp_path):
    """Two fresh interpreters (the first import decides what ``scoresde.train`` is bound to), run at once."""
    orders = {"from_first": ("from_import", "import_as"), "module_first": ("import_as", "from_import")}
    procs = {name: subprocess.Popen([sys.executable, "-c", _TRAIN_IMPORTS, str(tmp_path / name), *order],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=dict(os.environ, OMP_NUM_THREADS="1"))
             for name, order in orders.items()}
    for name, p in procs.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip().endswith("ok"), (name, err[-3000:])
        assert (tmp_path / name / "checkpoint_last.pt").is_file()  # the run it trained is on disk
