"""sample_quality: the numbers and their nulls read as they should.

The null is the same statistic between two disjoint halves of the reference at the same sizes, so
for a sampler that draws from the reference distribution each statistic and its null have the
same distribution: their difference must average to 0 over seeds (within its standard error), KID
must be within its standard error of 0, and a sampler that is off must stand out of the null.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from scoresde.data import load_digits
from scoresde.metrics import SampleQuality, frechet_distance, kid, precision_recall, sample_quality

Z = 4.5
pytestmark = pytest.mark.usefixtures("single_thread")
f64 = torch.float64


def gaussian(n, g, shift=0.0, scale=1.0):
    x = torch.randn(n, 4, generator=g, dtype=f64) * scale
    x[:, 0] += shift
    return x


def test_for_a_perfect_sampler_each_statistic_matches_its_null_on_average():
    g = torch.Generator().manual_seed(0)
    R = 40
    rows = []
    for _ in range(R):
        q = sample_quality(gaussian(400, g), gaussian(800, g), generator=g)
        rows.append([q.fd - q.fd_null, q.precision - q.precision_null, q.recall - q.recall_null, q.kid / q.kid_stderr])
    d = torch.tensor(rows, dtype=f64)
    mean, se = d.mean(0), d.std(0) / math.sqrt(R)
    assert bool((mean[:3].abs() < Z * se[:3]).all()), (mean, se)
    # KID in units of its own standard error: mean ~ 0; spread about 1 or less (the stderr is honest,
    # or conservative where the distributions agree); 1.3 allows the sampling error of a std over 40 seeds
    assert abs(float(mean[3])) < Z * float(se[3]) and float(d[:, 3].std()) < 1.3


def test_an_imperfect_sampler_stands_out_of_the_null():
    g = torch.Generator().manual_seed(1)
    ref = gaussian(1000, g)
    off = sample_quality(gaussian(500, g, shift=1.5), ref, generator=g)
    assert off.fd > 5 * off.fd_null  # the population value is 1.5^2 = 2.25
    assert off.kid > Z * off.kid_stderr and abs(off.kid_null) < Z * off.kid_null_stderr

    def binomial_se(p, p0, n):
        return math.sqrt(p * (1 - p) / n + p0 * (1 - p0) / n)

    assert off.precision < off.precision_null - Z * binomial_se(off.precision, off.precision_null, 500)
    assert off.recall < off.recall_null - Z * binomial_se(off.recall, off.recall_null, 500)
    narrow = sample_quality(gaussian(500, g, scale=0.5), ref, generator=g)  # mode dropping: recall falls
    se = binomial_se(narrow.recall, narrow.recall_null, 500)
    assert narrow.recall < narrow.recall_null - Z * se
    assert narrow.precision > narrow.precision_null - Z * binomial_se(narrow.precision, narrow.precision_null, 500)


def test_the_fields_agree_with_the_single_statistics_and_the_sizes():
    g = torch.Generator().manual_seed(2)
    s, ref = gaussian(300, g), gaussian(500, g)
    q = sample_quality(s, ref, null=False, generator=torch.Generator().manual_seed(9))
    assert isinstance(q, SampleQuality)
    assert (q.n_samples, q.n_reference, q.feature_dim, q.k, q.features) == (300, 500, 4, 3, "raw")
    assert q.fd == frechet_distance(s, ref) and q.kid == kid(s, ref, generator=torch.Generator().manual_seed(9)).value
    pr = precision_recall(s, ref)
    assert (q.precision, q.recall) == (pr.precision, pr.recall)
    assert q.fd_null is None and q.kid_null is None and q.precision_null is None
    with_null = sample_quality(s, ref, generator=torch.Generator().manual_seed(0))
    assert (with_null.n_samples, with_null.n_reference) == (250, 250)  # halves of 250; samples subsampled to 250
    again = sample_quality(s, ref, generator=torch.Generator().manual_seed(0))
    assert again == with_null  # reproducible from the generator
    d = json.loads(json.dumps(with_null.to_dict()))
    assert d["fd"] == with_null.fd and d["kid_null"] == with_null.kid_null
    text = with_null.summary()
    assert "FD" in text and "KID" in text and f"{with_null.fd:.4g}" in text and f"{with_null.precision_null:.3f}" in text
    assert "-" in q.summary().splitlines()[2]


def test_a_callable_feature_map_is_applied_in_batches():
    g = torch.Generator().manual_seed(3)
    s, ref = gaussian(100, g), gaussian(200, g)
    calls = []

    def first_two(x):
        calls.append(x.shape[0])
        return x[:, :2] * 2

    q = sample_quality(s, ref, features=first_two, batch_size=64, null=False)
    assert calls == [64, 36, 64, 64, 64, 8]
    assert q.fd == frechet_distance(s[:, :2] * 2, ref[:, :2] * 2) and q.features == "first_two" and q.feature_dim == 2


def test_inputs_are_checked():
    x = torch.randn(20, 3)
    with pytest.raises(ValueError, match="unknown features"):
        sample_quality(x, x, features="inception")
    with pytest.raises(TypeError, match="callable"):
        sample_quality(x, x, features=3)
    with pytest.raises(ValueError, match="too small"):
        sample_quality(x, x[:6])
    with pytest.raises(ValueError, match="features but"):
        sample_quality(x, torch.randn(20, 4))


def test_digits_samples_against_the_training_set(monkeypatch, tmp_path):
    """Test-split digits are samples of the data distribution: KID within its error of 0 and FD
    near its null. The same digits with Gaussian pixel noise are not."""
    monkeypatch.setenv("SCORESDE_CACHE", str(tmp_path))
    data = load_digits()
    g = torch.Generator().manual_seed(4)
    good = sample_quality(data.test, data.train, features="digits", generator=g)
    assert good.features == "digits" and good.feature_dim == 64 and good.n_samples == 359
    assert abs(good.kid) < Z * good.kid_stderr and abs(good.kid_null) < Z * good.kid_null_stderr
    assert good.fd < 2 * good.fd_null and abs(good.precision - good.precision_null) < 0.1
    noisy = data.test + 0.5 * torch.randn(data.test.shape, generator=torch.Generator().manual_seed(5))
    bad = sample_quality(noisy, data.train, features="digits", generator=torch.Generator().manual_seed(4))
    assert bad.kid > Z * bad.kid_stderr and bad.fd > 1.5 * bad.fd_null
    assert bad.precision < bad.precision_null - 0.1
