"""A built-in feature extractor for the 8x8 digits: a small CNN classifier, its training, its cache.

The sample-quality statistics (Fréchet distance, KID, precision/recall) compare two sets of
*features*. For ImageNet-sized images the features are those of a pretrained Inception network
(Heusel et al. 2017); for scikit-learn's 8x8 digits (:func:`scoresde.data.load_digits`) this module
trains its own: a LeNet-like CNN (LeCun et al. 1998) trained on the digits *train* split, whose
penultimate layer (64 ReLU units, the input of the final linear layer, as Inception's pool3 is the
input of its classifier) is the feature vector.

Determinism: the weights are a pure function of the settings (seed, epochs, ...) on a given
machine and torch version. Initialisation and batch order come from fixed seeds, the training runs
on one CPU thread, and nothing else is random. Different CPUs or torch versions may round
differently, which is why the cache key holds the torch version.

Cache: the trained weights are written (atomically) to ``$SCORESDE_CACHE`` or, if unset,
``$XDG_CACHE_HOME/scoresde`` or ``~/.cache/scoresde``, as ``digits_classifier-<key>.pt`` where
``key`` hashes the settings, the torch version and the source of this module (so any edit of the
architecture or the training retrains). A cache file that cannot be read, or that holds other
settings, is retrained and overwritten. Nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from .._utils import check_int
from ..data import load_digits
from ..io import atomic_write_with

__all__ = ["DigitsClassifier", "digits_classifier", "digits_features"]

FEATURE_DIM = 64
_FORMAT = 1  # the layout of the cache file
_EPOCHS = 20
_BATCH = 32
_LR = 2e-3
_LOADED: dict = {}  # key -> (state_dict, test_accuracy), so a process trains or reads each key once


class DigitsClassifier(nn.Module):
    """A LeNet-like CNN for 8x8 digits on ``[-1, 1]``: ``(N, 1, 8, 8) -> (N, 10)`` logits.

    conv 3x3 (1 -> 16) + ReLU, conv 3x3 (16 -> 32) + ReLU, 2x2 max-pool (to 4x4), linear
    512 -> 64 + ReLU (the penultimate layer), linear 64 -> 10. About 38k parameters.
    :meth:`features` is the penultimate layer divided by the buffer ``feature_scale``, set after
    training to the root mean square of the train split's activations, so that features are
    ``O(1)`` per coordinate (KID's kernel ``(x.y / D + 1)^3`` assumes that scale).
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)
        self.register_buffer("feature_scale", torch.ones(()))

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """The activations that the last layer reads: ``(N, 1, 8, 8) -> (N, 64)``, non-negative (ReLU)."""
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.fc1(h.flatten(1)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The features: ``penultimate(x) / feature_scale``, ``(N, 1, 8, 8) -> (N, 64)``."""
        return self.penultimate(x) / self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, 10)``."""
        return self.fc2(self.penultimate(x))


def _blank() -> DigitsClassifier:
    """A model to load weights into, built without drawing from the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        return DigitsClassifier()


def _settings(seed: int, epochs: int) -> dict:
    return dict(seed=seed, epochs=epochs, batch_size=_BATCH, lr=_LR, data="load_digits() defaults: "
                "range (-1, 1), test_fraction 0.2, split seed 0", format=_FORMAT)


def _cache_key(settings: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(torch.__version__.encode())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:20]


def _cache_dir(cache_dir: Optional[Union[str, Path]]) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("SCORESDE_CACHE"):
        return Path(os.environ["SCORESDE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "scoresde"


def _accuracy(model: DigitsClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def _train(seed: int, epochs: int) -> Tuple[dict, float]:
    """Train on the digits train split; return the weights and the test-split accuracy.

    Adam (lr 2e-3, batch 32) with a cosine-decayed rate, on one CPU thread; the initialisation
    (the CPU default generator seeded with ``seed`` inside a forked RNG, so the caller's global
    streams are untouched)
    and the batch order (a ``torch.Generator`` seeded with ``seed + 1``) are fixed.
    """
    data = load_digits(dtype=torch.float32)
    x, y = data.train, data.train_labels
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the CPU stream only (torch.manual_seed seeds CUDA too)
            model = DigitsClassifier()
        g = torch.Generator().manual_seed(seed + 1)
        steps = epochs * -(-x.shape[0] // _BATCH)
        opt = torch.optim.Adam(model.parameters(), lr=_LR)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(x.shape[0], generator=g)
            for i in range(0, x.shape[0], _BATCH):
                idx = perm[i:i + _BATCH]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
        acc = _accuracy(model, data.test, data.test_labels)
        with torch.no_grad():
            model.feature_scale.copy_(model.penultimate(x).square().mean().sqrt())
    finally:
        torch.set_num_threads(threads)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, acc


def _read_cache(path: Path, key: str) -> Optional[Tuple[dict, float]]:
    """The cached ``(state_dict, accuracy)``, or ``None`` when the file is missing, unreadable or not ours."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("key") != key:
            return None
        state, acc = blob["state_dict"], float(blob["test_accuracy"])
        _blank().load_state_dict(state)  # the right tensors, with the right shapes
        return state, acc
    except Exception:  # a truncated, corrupt or foreign file is retrained, not a crash
        return None


def _load(seed: int, epochs: int, cache_dir, cache: bool) -> Tuple[dict, float]:
    settings = _settings(seed, epochs)
    key = _cache_key(settings)
    if key in _LOADED:
        return _LOADED[key]
    path = _cache_dir(cache_dir) / f"digits_classifier-{key}.pt"
    found = _read_cache(path, key) if cache else None
    if found is None:
        found = _train(seed, epochs)
        if cache:
            blob = dict(key=key, settings=settings, torch=str(torch.__version__), state_dict=found[0],
                        test_accuracy=found[1])
            try:
                atomic_write_with(path, lambda f: torch.save(blob, f))
            except OSError as e:  # a read-only or full disk costs the cache, not the result
                warnings.warn(f"could not cache the digits classifier at {path}: {e}; set $SCORESDE_CACHE to a "
                              "writable folder to keep it", RuntimeWarning, stacklevel=3)
    _LOADED[key] = found
    return found


def digits_classifier(seed: int = 0, *, epochs: int = _EPOCHS, cache_dir: Optional[Union[str, Path]] = None,
                      cache: bool = True) -> Tuple[DigitsClassifier, float]:
    """The digits feature network and its accuracy on the digits test split: ``(model, test_accuracy)``.

    Trained on the train split of ``load_digits()`` (1438 images, on ``[-1, 1]``) for ``epochs``
    epochs from ``seed``, in a few seconds on one CPU core; with the defaults the test accuracy
    (359 images) is above 97%. The same settings give bitwise the same weights on the same machine
    and torch version. The weights are cached on disk (see the module docstring for where and under
    which key; ``cache_dir`` overrides the folder, ``cache=False`` neither reads nor writes it) and
    in the process. The model is returned on the CPU, in eval mode, without gradients; each call
    returns a fresh copy.
    """
    check_int("seed", seed, 0)
    check_int("epochs", epochs)
    state, acc = _load(seed, epochs, cache_dir, cache)
    model = _blank()
    model.load_state_dict(state)
    model.eval().requires_grad_(False)
    return model, acc


def digits_features(x: torch.Tensor, *, seed: int = 0, batch_size: int = 1024,
                    cache_dir: Optional[Union[str, Path]] = None) -> torch.Tensor:
    """Features of 8x8 digit images for the sample-quality statistics: ``(N, 1, 8, 8) -> (N, 64)``.

    ``x`` is on the data range of ``load_digits()``, ``[-1, 1]`` (samples of a model trained there
    may stray a little outside; they are used as they are). The features are the penultimate layer
    of :func:`digits_classifier` (``seed``), computed in batches of ``batch_size`` on ``x``'s device,
    returned as float32 there.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"digits_features expects images of shape (N, 1, 8, 8) on [-1, 1], got {shape}")
    check_int("batch_size", batch_size)
    model, _ = digits_classifier(seed, cache_dir=cache_dir)
    model = model.to(x.device)
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size].detach().to(torch.float32)
            if not bool(torch.isfinite(xb).all()):
                raise ValueError("x contains NaN or inf; the features need finite images")
            out.append(model.features(xb))
    return torch.cat(out) if out else x.new_zeros((0, FEATURE_DIM), dtype=torch.float32)
