"""Figures and the demo's report: sample grids (or scatter plots), the demo figure and ``report.md``."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .common import atomic_figure

__all__ = ["plt", "image_grid", "show_samples", "demo_figure", "demo_report"]


def plt():
    """``matplotlib.pyplot`` on the non-interactive Agg back end (files only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def image_grid(x, data_range, ncols: Optional[int] = None):
    """``(B, C, H, W)`` data values -> an ``(rows (H+1) + 1, cols (W+1) + 1, C)`` array in ``[0, 1]``
    (``lo`` black, ``hi`` white, one-pixel separators)."""
    import numpy as np

    lo, hi = data_range
    a = ((x.detach().float().cpu().numpy() - lo) / (hi - lo)).clip(0.0, 1.0)
    B, C, H, W = a.shape
    ncols = ncols or math.ceil(math.sqrt(B))
    nrows = math.ceil(B / ncols)
    grid = np.full((nrows * (H + 1) + 1, ncols * (W + 1) + 1, C), 0.5, dtype=np.float32)
    for i in range(B):
        r, c = divmod(i, ncols)
        grid[1 + r * (H + 1):1 + r * (H + 1) + H, 1 + c * (W + 1):1 + c * (W + 1) + W] = a[i].transpose(1, 2, 0)
    return grid


def show_samples(ax, x, shape, data_range, title: str) -> None:
    """Image grid for ``(C, H, W)`` data with 1 or 3 channels, else a scatter of the first two coordinates."""
    if len(shape) == 3 and shape[0] in (1, 3):
        rng = data_range if data_range is not None else (float(x.min()), float(x.max()))
        g = image_grid(x, rng)
        ax.imshow(g[..., 0] if g.shape[2] == 1 else g, cmap="gray" if g.shape[2] == 1 else None,
                  vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        f = x.detach().float().cpu().reshape(x.shape[0], -1)
        if f.shape[1] < 2:
            ax.hist(f[:, 0].numpy(), bins=50)
        else:
            ax.scatter(f[:, 0].numpy(), f[:, 1].numpy(), s=4, alpha=0.6)
            ax.set_aspect("equal", adjustable="datalim")
            if f.shape[1] > 2:
                title += f" (coordinates 1-2 of {f.shape[1]})"
    ax.set_title(title, fontsize=9)


def demo_figure(path: Path, results: Sequence[dict], curve: List[Tuple[int, float]], shape, data_range, cfg) -> Path:
    """``demo.png``: the three sample grids side by side and the training-loss curve."""
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 4, figsize=(16, 4.2))
    for ax, rr in zip(axes[:3], results):
        r = rr["result"]
        show_samples(ax, r.x[:64], shape, data_range, f"{rr['label']}\nNFE {r.mean_nfe:.0f}, {rr['seconds']:.1f} s")
    ax = axes[3]
    if curve:
        ax.plot([c[0] for c in curve], [c[1] for c in curve], lw=1)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.set_title(f"training DSM loss (mean of {cfg.log_every} steps)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.suptitle(f"scoresde demo: VP SDE on 8x8 digits, {cfg.net.upper()} score network, {cfg.steps} steps, "
                 "EMA weights", fontsize=10)
    out = atomic_figure(fig, path)
    pyplot.close(fig)
    return out


def demo_report(s: dict, bpd, cfg, fig_name: str, quick: bool) -> str:
    """The text of ``report.md`` from the demo's ``results.json`` summary ``s`` and its ``BPDResult``."""
    subset = (f"all {s['n_test']} test images" if s["n_test"] == s["n_test_total"]
              else f"the first {s['n_test']} of the {s['n_test_total']} test images")
    rows = "\n".join(f"| {r['label']} (`{r['sampler']}`) | {r['mean_nfe']:.1f} | {r['seconds']:.2f} | {r['failed']} | "
                     f"{', '.join(f'{k}={v}' for k, v in r['options'].items())} |" for r in s["samplers"])
    quality = _quality_rows(s["samplers"])
    baselines = "\n".join(f"| {b['model']} | {b['mean']:.4f} ± {b['stderr']:.4f} |" for b in s.get("baselines", []))
    c = bpd.convention
    lines = [
        "# scoresde demo: a VP score model on 8x8 digits",
        "",
        ("**Quick mode** (a smoke test: tiny model, few steps; the numbers are not meaningful)."
         if quick else "Default mode."),
        f"Trained for {cfg.steps} steps in {s['train_seconds']:.1f} s on {s['device']} "
        f"({s['threads']} thread{'s' if s['threads'] != 1 else ''}, torch {s['torch']}); last logged training loss "
        f"{s['final_loss']:.4g}. Samples and bits/dim use the EMA weights.",
        "",
        f"![samples and loss curve]({fig_name})",
        "",
        f"## Sampling ({s['n_samples']} samples per sampler from the same prior draw x_T)",
        "",
        "| sampler | NFE per sample | wall time (s) | failed samples | options |",
        "|---|---|---|---|---|",
        rows,
        "",
        "NFE counts score-network evaluations per sample, including the final denoising (Tweedie) step; "
        "for the adaptive ODE solver it is the mean over samples. Wall time covers the whole batch.",
        "",
        "## Sample quality against the test images",
        "",
        quality,
        "",
        "## Test bits/dim",
        "",
        f"**{bpd.mean:.4f} ± {bpd.stderr:.4f} bits/dim** (mean ± standard error over images) on {subset} "
        f"(split of `load_digits`, seed 0), {s['bpd_seconds']:.1f} s; median over images "
        f"{s['bpd_median']:.4f} bits/dim (the mean is sensitive to a few badly modelled images).",
        "",
        f"Test images with a non-finite bits/dim or one above twice the median (diverged): "
        f"{s.get('bpd_diverged', 0)}.",
        "",
        "| model | test bits/dim |",
        "|---|---|",
        f"| **this score model** | **{bpd.mean:.4f} ± {bpd.stderr:.4f}** |",
        baselines,
        "",
        "The baselines are fitted to the dequantized training split and evaluated on the same test images "
        "with the same dequantization and offset (`scoresde.likelihood.baselines`).",
        "",
        f"Convention: {bpd.summary()}.",
        "",
        f"- probability-flow ODE likelihood at eps = {c['eps']:g}, solver {c['backend']} with rtol = {c['rtol']:g}, "
        f"atol = {c['atol']:g}; divergence by the {c['trace']} Hutchinson estimator with {c['n_probes']} "
        f"probe(s), {c['repeats']} repeat(s) per image"
        + (f"; {bpd.tolerance.describe()}" if bpd.tolerance is not None else ""),
        f"- {s['bpd_note']}; offset log2({c['n_levels']} / 2) = {c['offset_bits']:.4f} bits",
        "- the standard error is std(per-image bits/dim) / sqrt(N); it covers the images, the dequantization "
        "noise and the probes, not the training run",
        "",
        "## Training configuration",
        "",
        "```json",
        json.dumps(s["config"], indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)


def _quality_rows(samplers: Sequence[dict]) -> str:
    """The sample-quality table: per sampler FD, KID and precision/recall, and the null (two halves
    of the test images at the same sizes) in the last row."""
    if not samplers or "quality" not in samplers[0]:
        return "(not computed)"
    q0 = samplers[0]["quality"]
    lines = [f"On the features of the built-in digits classifier (`scoresde.metrics.digits_features`, "
             f"D = {q0['feature_dim']}), {q0['n_samples']} samples against {q0['n_reference']} test images "
             f"(half of them; the null compares the other half with it at the same sizes). Lower FD and KID "
             f"are better; a perfect sampler sits at the null.",
             "",
             "| sampler | Fréchet distance | KID | precision | recall |",
             "|---|---|---|---|---|"]
    for r in samplers:
        q = r["quality"]
        lines.append(f"| {r['label']} | {q['fd']:.3f} | {q['kid']:.4f} ± {q['kid_stderr']:.4f} | "
                     f"{q['precision']:.3f} | {q['recall']:.3f} |")
    lines.append(f"| *null: test vs test* | {q0['fd_null']:.3f} | {q0['kid_null']:.4f} ± {q0['kid_null_stderr']:.4f} | "
                 f"{q0['precision_null']:.3f} | {q0['recall_null']:.3f} |")
    return "\n".join(lines)
