"""Shared test configuration: the hypothesis profile and the list of devices to run on.

Hypothesis: the ``scoresde`` profile (default) has no deadline (CPU timings are noisy when the
machine is shared) and a moderate ``max_examples``; ``HYPOTHESIS_PROFILE=thorough`` runs more.

Devices: ``devices`` is ``["cpu"]`` plus ``"cuda"`` when a GPU is present; parametrize over it
(``@pytest.mark.parametrize("device", devices)``, after ``from conftest import devices``) or use
the ``device`` fixture.
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("scoresde", deadline=None, max_examples=20)
settings.register_profile("thorough", deadline=None, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "scoresde"))

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
