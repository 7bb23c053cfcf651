"""Divergence estimators for the likelihood: the exact trace and the Hutchinson–Skilling estimate,
and the probes it uses.

The Hutchinson–Skilling estimate of ``div F = tr(dF/dx)`` is ``E_v[v^T (dF/dx) v]`` for probes with
``E[v v^T] = I`` (Hutchinson 1989; Skilling 1989; Grathwohl et al. 2019, FFJORD): Rademacher or
standard Gaussian ``v``, each costing one vector-Jacobian product.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._utils import check_choice

__all__ = ["TRACES", "draw_probes", "divergence"]

#: The divergence estimators: Hutchinson with Rademacher or Gaussian probes, or the exact trace.
TRACES = ("rademacher", "gaussian", "exact")


def draw_probes(kind: str, n_probes: int, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``n_probes`` probe vectors per sample, shape ``(n_probes, B, *dims)``, on ``x``'s device:
    Rademacher (+-1 with equal probability) or standard Gaussian. Both have ``E[v v^T] = I``.

    They are drawn sample-major, so the first sample's probes are the same whatever the batch size
    (a sample's result does not depend on its batch mates for a given seed)."""
    check_choice("probe kind", kind, ("rademacher", "gaussian"))
    shape = (x.shape[0], n_probes) + tuple(x.shape[1:])
    if kind == "rademacher":
        v = torch.randint(0, 2, shape, generator=generator, device=x.device).to(x.dtype) * 2.0 - 1.0
    else:
        v = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
    return v.transpose(0, 1)


def divergence(out: torch.Tensor, x: torch.Tensor, probes: Optional[torch.Tensor], *,
               retain_graph: bool = False) -> torch.Tensor:
    """Per-sample divergence of ``out = F(x)`` (``x`` requires grad, ``out`` shaped like ``x``), ``(B,)``.

    ``probes=None``: the exact trace, one VJP per dimension from the same graph (for small ``D``).
    Otherwise the Hutchinson estimate averaged over the probes: ``mean_k v_k . (v_k^T dF/dx)``, one
    VJP per probe. Assumes ``F`` acts on each sample separately (no coupling across the batch),
    as a score network without batch statistics does. ``retain_graph=True`` keeps the graph of
    ``out`` for further use.
    """
    batch = x.shape[0]
    if probes is None:
        flat = out.reshape(batch, -1)
        d = flat.shape[1]
        total = torch.zeros(batch, device=x.device, dtype=out.dtype)
        for i in range(d):
            (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=retain_graph or i < d - 1)
            total = total + g.reshape(batch, -1)[:, i]
        return total
    total = None
    n = probes.shape[0]
    for k in range(n):
        (g,) = torch.autograd.grad(out, x, grad_outputs=probes[k], retain_graph=retain_graph or k < n - 1)
        term = (g * probes[k]).reshape(batch, -1).sum(dim=1)
        total = term if total is None else total + term
    return total if n == 1 else total / n
