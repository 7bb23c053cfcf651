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
