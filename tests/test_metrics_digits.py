"""The built-in digits feature network: accuracy, determinism, the cache.

Each test uses its own empty cache folder and an empty in-process memo, so nothing outside the
test's temporary folder is read or written. The default settings are trained once per session.
"""
from __future__ import annotations

import time

import pytest
import torch

from scoresde.data import load_digits
from scoresde.metrics import DigitsClassifier, digits_classifier, digits_features
from scoresde.metrics import digits as digits_module

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty memo and cache; returns the cache folder (also set as $SCORESDE_CACHE)."""
    monkeypatch.setattr(digits_module, "_LOADED", {})
    monkeypatch.setenv("SCORESDE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """The default classifier, trained once into a session folder: (model, accuracy, seconds, folder)."""
    folder = tmp_path_factory.mktemp("digits-cache")
    saved = dict(digits_module._LOADED)
    digits_module._LOADED.clear()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model, acc = digits_classifier(0, cache_dir=folder)
    seconds = time.perf_counter() - t0
    torch.set_num_threads(threads)
    digits_module._LOADED.update(saved)
    return model, acc, seconds, folder


def test_the_default_classifier_is_accurate_and_fast(trained):
    model, acc, seconds, folder = trained
    assert isinstance(model, DigitsClassifier) and not model.training
    assert acc >= 0.97, f"test accuracy {acc:.4f} on the digits test split"
    assert seconds < 30, f"training took {seconds:.1f} s"
    print(f"digits classifier: test accuracy {acc:.4f} ({round(acc * 359)}/359), trained in {seconds:.1f} s")
    data = load_digits()
    with torch.no_grad():
        assert float((model(data.test).argmax(1) == data.test_labels).double().mean()) == acc
        # features are the penultimate layer scaled to unit root mean square on the train split
        f = model.features(data.train)
    assert f.shape == (1438, 64) and bool((f >= 0).all())
    assert float(f.square().mean().sqrt()) == pytest.approx(1.0, rel=1e-5)
    assert len(list(folder.glob("digits_classifier-*.pt"))) == 1


def test_training_is_deterministic_and_leaves_the_global_rng_alone(fresh):
    state = torch.random.get_rng_state()
    a, _ = digits_classifier(3, epochs=1, cache=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    digits_module._LOADED.clear()
    b, _ = digits_classifier(3, epochs=1, cache=False)
    c, _ = digits_classifier(4, epochs=1, cache=False)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert not fresh.exists()  # cache=False writes nothing


def test_the_cache_round_trips_and_a_corrupt_file_is_retrained(fresh, monkeypatch):
    a, acc = digits_classifier(5, epochs=1)
    files = list(fresh.glob("digits_classifier-*.pt"))
    assert len(files) == 1
    digits_module._LOADED.clear()

    def no_training(*args):
        raise AssertionError("the cached weights should have been read")

    monkeypatch.setattr(digits_module, "_train", no_training)
    b, acc_b = digits_classifier(5, epochs=1)
    assert acc_b == acc and all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    monkeypatch.undo()
    monkeypatch.setenv("SCORESDE_CACHE", str(fresh))
    monkeypatch.setattr(digits_module, "_LOADED", {})
    files[0].write_bytes(b"not a checkpoint")
    c, acc_c = digits_classifier(5, epochs=1)
    assert acc_c == acc and all(torch.equal(a.state_dict()[k], c.state_dict()[k]) for k in a.state_dict())
    blob = torch.load(files[0], weights_only=True)  # rewritten, readable again
    assert blob["test_accuracy"] == acc
    digits_classifier(5, epochs=2)  # other settings: another key, another file
    assert len(list(fresh.glob("digits_classifier-*.pt"))) == 2


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SCORESDE_CACHE", str(tmp_path / "a"))
    assert digits_module._cache_dir(None) == tmp_path / "a"
    assert digits_module._cache_dir(tmp_path / "b") == tmp_path / "b"
    monkeypatch.delenv("SCORESDE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert digits_module._cache_dir(None) == tmp_path / "x" / "scoresde"


def test_features_of_images(trained, monkeypatch):
    model, _, _, folder = trained
    x = load_digits().test[:50]
    f = digits_features(x, cache_dir=folder, batch_size=16)
    assert f.shape == (50, 64) and f.dtype == torch.float32
    with torch.no_grad():
        assert torch.allclose(f, model.features(x), atol=1e-6)
    assert torch.equal(digits_features(x.double(), cache_dir=folder), digits_features(x, cache_dir=folder))
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        digits_features(x.reshape(50, 64), cache_dir=folder)
    with pytest.raises(ValueError, match="NaN"):
        digits_features(torch.full((2, 1, 8, 8), float("nan")), cache_dir=folder)


def test_an_unwritable_cache_costs_the_cache_not_the_result(fresh, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(RuntimeWarning, match="could not cache"):
        model, acc = digits_classifier(6, epochs=1, cache_dir=blocker / "sub")
    assert isinstance(model, DigitsClassifier) and 0 <= acc <= 1
