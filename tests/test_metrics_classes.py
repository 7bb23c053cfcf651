"""class_accuracy: the fraction of samples a classifier assigns to their label, with its binomial SE."""
from __future__ import annotations

import math

import pytest
import torch

from scoresde.data import load_digits
from scoresde.metrics import class_accuracy, digits_classifier


def test_real_test_digits_score_the_classifier_accuracy():
    ds = load_digits()
    acc = class_accuracy(ds.test, ds.test_labels)
    model, reported = digits_classifier()
    assert acc.accuracy == pytest.approx(reported, abs=1e-12) and acc.accuracy > 0.97
    assert acc.n == ds.test.shape[0] and int(acc.counts.sum()) == acc.n
    assert acc.stderr == pytest.approx(math.sqrt(acc.accuracy * (1 - acc.accuracy) / acc.n))
    # labels the images do not have: about one in ten by chance, far below
    wrong = class_accuracy(ds.test, (ds.test_labels + 1) % 10)
    assert wrong.accuracy < 0.05


def test_accuracy_of_a_known_classifier_per_class():
    """A classifier that predicts class 1 when the first coordinate is positive, else 0."""
    def sign_classifier(x):
        return torch.stack([-x[:, 0], x[:, 0]], dim=1)

    x = torch.tensor([[1.0], [2.0], [-1.0], [-3.0], [0.5], [-0.5]])
    y = torch.tensor([1, 1, 1, 0, 0, 0])  # hits: yes, yes, no, yes, no, yes
    acc = class_accuracy(x, y, sign_classifier, num_classes=3)
    assert acc.accuracy == pytest.approx(4 / 6)
    assert acc.per_class[:2].tolist() == pytest.approx([2 / 3, 2 / 3])
    assert math.isnan(float(acc.per_class[2])) and acc.counts.tolist() == [3, 3, 0]
    assert "66.7%" in acc.summary() and acc.to_dict()["n"] == 6


def test_bad_labels_are_refused():
    x = torch.zeros(3, 1, 8, 8)
    with pytest.raises(ValueError, match="unconditional"):
        class_accuracy(x, torch.tensor([0, -1, 2]))
    with pytest.raises(ValueError, match="classes 0..9"):
        class_accuracy(x, torch.tensor([0, 10, 2]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        class_accuracy(x, torch.tensor([0, 1]))
