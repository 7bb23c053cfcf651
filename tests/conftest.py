"""Shared test configuration: the hypothesis profile and the list of devices to run on.

Hypothesis: the ``scoresde`` profile (default) has no deadline (CPU timings are noisy when the
machine is shared) and a moderate ``max_examples``; ``HYPOTHESIS_PROFILE=thorough`` runs more.

Devices: ``devices`` is ``["cpu"]`` plus ``"cuda"`` when a GPU is present; parametrize over it
(``@pytest.mark.parametrize("device", devices)``, after ``from conftest import devices``) or use
the ``device`` fixture.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings

settings.register_profile("scoresde", deadline=None, max_examples=20)
settings.register_profile("thorough", deadline=None, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "scoresde"))

#: The study scripts are imported by their tests as ``python studies/<name>.py`` runs them: with
#: ``studies/`` on ``sys.path`` (so their ``from _common import ...`` works).
STUDIES = Path(__file__).resolve().parents[1] / "studies"
if str(STUDIES) not in sys.path:
    sys.path.insert(0, str(STUDIES))

devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=devices)
def device(request) -> str:
    return request.param


@pytest.fixture
def single_thread():
    """Run a test with one intra-op thread (restored afterwards). Tests of many tiny tensor ops run
    several times faster so on a shared 2-core machine, where every parallel region costs a thread
    wake-up. Use it per module with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def assert_mixture_moments(x: torch.Tensor, mix) -> None:
    """Samples ``x`` of a Gaussian mixture ``mix`` have its per-component weights, means and
    covariances, each within a tolerance derived from its standard error (a family of K weights per
    call: 4.5 binomial SEs; means: 5 SEs of the component's own spread; covariance entries: 5 SEs,
    with var of a sample variance ~ 2 var^2 / n)."""
    import math

    from scoresde.metrics import moment_errors

    m = moment_errors(x, mix)
    assert m.weight_z < 4.5, (m.weights, m.true_weights)
    var = mix.variances.max(dim=1).values
    se = torch.sqrt(var / m.counts.clamp_min(1).double())
    assert bool((m.component_mean_error <= 5 * se + 0.02).all()), m.component_mean_error
    cov_se = math.sqrt(2.0) * var / torch.sqrt(m.counts.clamp_min(2).double())
    assert bool((m.component_cov_error <= 5 * cov_se + 0.02).all()), m.component_cov_error


@pytest.fixture(scope="module")
def toy():
    """A small 2-D mixture data set for the training tests (512 train, 64 test points)."""
    from scoresde.data import load_toy

    return load_toy("mixture_2d", n_train=512, n_test=64, seed=3)


def run_cli(argv, capsys):
    """``(exit status, stdout, stderr)`` of ``scoresde.cli.main(argv)`` in this process."""
    from scoresde.cli import main

    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
