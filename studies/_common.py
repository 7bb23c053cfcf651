"""What the study scripts share, defined once: environment and timing, the command line, output
files (CSV, Markdown tables, figures), the classical density baselines and the benchmark's score
fields. A study imports it as a plain module::

    from _common import csv_bytes, timed

which works when a study runs as ``python studies/x.py`` (Python puts the script's folder first on
``sys.path``) and when a study is imported with ``studies/`` on ``sys.path`` (as the tests do). A
copy of a study takes this file along. Only public names of :mod:`scoresde` are used here, as in
the studies (``tests/test_studies_public.py`` checks both).
"""
from __future__ import annotations

import argparse
import copy
import csv
import io
import math
import os
import platform
import time
from datetime import date
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import torch
from torch import nn
from tqdm.auto import tqdm

from scoresde import VPSDE, atomic_write
from scoresde.targets import mixture_nd

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Environment and timing
# ---------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """``(fn(), wall seconds)``, the device synchronised before and after the call."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def device_name(device: torch.device, *, cores: bool = False) -> str:
    """The GPU's name, or ``cpu (processor, [n cores, ]threads)``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if cores:
        return (f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                f"{torch.get_num_threads()} thread(s))")
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def load_average() -> str:
    """The 1-minute load average, ``n/a`` where the system has none."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def environment(device: torch.device, *, cores: bool = False) -> dict[str, str]:
    """The stamp of a result row: ``device`` (:func:`device_name`), ``torch`` version, ``date``."""
    return dict(device=device_name(device, cores=cores), torch=str(torch.__version__),
                date=date.today().isoformat())


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def parser(doc: str) -> argparse.ArgumentParser:
    """The parser of a study: its module docstring as the description, line breaks kept."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def require_device(p: argparse.ArgumentParser, device: str) -> None:
    """Exit with a usage error if ``device`` asks for CUDA where torch sees none."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda asked for, but torch sees no CUDA device")


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------
def csv_bytes(rows: Sequence[dict], fields: Sequence[str], *, lineterminator: str = "\r\n") -> bytes:
    """``rows`` as CSV with the header ``fields`` (keys not in ``fields`` are left out, missing keys
    and None are written empty); ``\\r\\n`` line ends as the csv module writes by default."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator=lineterminator)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


def md_row(cells: Sequence) -> str:
    """One Markdown table row: ``| a | b |``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def md_table(columns: Sequence[str]) -> list[str]:
    """The header and separator lines of a Markdown table with these column titles."""
    return [md_row(columns), "|" + "---|" * len(columns)]


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg back end (figures are written to files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig, dpi: int) -> bytes:
    """The figure as PNG at ``dpi``; the figure is closed."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def write_png(path: Path, fig, dpi: int) -> None:
    """Write the figure to ``path`` atomically (see :func:`png_bytes`)."""
    atomic_write(path, png_bytes(fig, dpi))


# ---------------------------------------------------------------------------------------------
# Score fields of the likelihood benchmarks (studies/bench_likelihood.py,
# studies/likelihood_time_variable.py)
# ---------------------------------------------------------------------------------------------
class TinyScoreNet(nn.Module):
    """A compact eps-prediction conv net for (B, 1, 8, 8) inputs with a sinusoidal time embedding.

    ``net(x, t) -> eps_hat`` shaped like ``x``; ``t`` is a ``(B,)`` tensor (any float dtype).
    Three 3x3 conv layers of ``ch`` channels with residual connections, the time embedding added
    as a per-channel bias after the first layer; 21,217 parameters at ``ch=32`` (``n_freq=16``).
    """

    def __init__(self, ch: int = 32, n_freq: int = 16):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(1000.0), n_freq)))
        self.emb = nn.Sequential(nn.Linear(2 * n_freq, ch), nn.SiLU(), nn.Linear(ch, ch))
        self.inp = nn.Conv2d(1, ch, 3, padding=1)
        self.mid1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.mid2 = nn.Conv2d(ch, ch, 3, padding=1)
        self.out = nn.Conv2d(ch, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(x.dtype)
        a = t[:, None] * self.freqs.to(x.dtype)
        e = self.emb(torch.cat([torch.sin(a), torch.cos(a)], dim=1))
        h = torch.nn.functional.silu(self.inp(x) + e.reshape(e.shape[0], e.shape[1], 1, 1))
        h = h + torch.nn.functional.silu(self.mid1(h))
        h = h + torch.nn.functional.silu(self.mid2(h))
        return self.out(h)


def eps_score_fn(net: nn.Module, sde: VPSDE):
    """``score(x, t) = -net(x, t) / s(t)`` (the eps parameterisation; Ho et al. 2020, Song et al. 2021)."""

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        std = sde.coeffs_unchecked(t.to(x.dtype))[1]
        return -net(x, t) / std.reshape((-1,) + (1,) * (x.ndim - 1))

    return score


def digit_images(device) -> torch.Tensor:
    """sklearn's 8x8 digits (1797 images, values 0..16) scaled to [-1, 1], shape (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    x = torch.as_tensor(load_digits().images, dtype=torch.float32) / 16.0 * 2.0 - 1.0
    return x.reshape(-1, 1, 8, 8).to(device)


def train_dsm(net: nn.Module, sde: VPSDE, data: torch.Tensor, steps: int, seed: int, batch: int = 128) -> float:
    """A few steps of eps-prediction denoising score matching (Ho et al. 2020's simple loss) with Adam.

    Only so that the benchmarked field is shaped like a trained model's; returns the last loss."""
    if steps <= 0:
        return float("nan")
    g = torch.Generator(device=data.device).manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    loss = torch.zeros(())
    for _ in tqdm(range(steps), desc="train score net", leave=False):
        idx = torch.randint(0, data.shape[0], (batch,), generator=g, device=data.device)
        x0 = data[idx]
        t = 1e-5 + (sde.T - 1e-5) * torch.rand(batch, generator=g, device=data.device)
        z = torch.randn(x0.shape, generator=g, device=data.device)
        m, s = sde.coeffs_unchecked(t)
        xt = m.reshape(-1, 1, 1, 1) * x0 + s.reshape(-1, 1, 1, 1) * z
        loss = ((net(xt, t) - z) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss.detach().item()


#: the score fields of :func:`make_field`
SCORE_FIELDS = ("net", "mixture")


def make_field(name: str, sde: VPSDE, batch: int, device, *, seed: int, train_steps: int):
    """``(score_fn, score_fn64, x, description)`` for the field ``name`` (one of
    :data:`SCORE_FIELDS`): ``x`` is (batch, 1, 8, 8) float32; ``score_fn64`` is the same field in
    float64 (for the reference solution). ``net``: a :class:`TinyScoreNet` after ``train_steps``
    steps of :func:`train_dsm` on the digits; ``mixture``: the exact score of a 64-D mixture."""
    if name == "net":
        torch.manual_seed(seed)
        net = TinyScoreNet().to(device)
        data = digit_images(device)
        loss = train_dsm(net, sde, data, train_steps, seed)
        net.eval().requires_grad_(False)
        g = torch.Generator().manual_seed(seed + 1)
        x = data[torch.randperm(data.shape[0], generator=g)[:batch].to(device)]
        n_par = sum(p.numel() for p in net.parameters())
        desc = (f"conv eps-net ({n_par} parameters, {train_steps} DSM steps, last loss {loss:.3f}) "
                f"on sklearn digits (1, 8, 8) in [-1, 1]")
        return eps_score_fn(net, sde), eps_score_fn(copy.deepcopy(net).double(), sde), x, desc
    if name == "mixture":
        mix = mixture_nd(D=64, K=4)
        g = torch.Generator().manual_seed(seed + 2)
        x = mix.sample(batch, generator=g, shape=(1, 8, 8)).to(device)
        score = mix.score_fn(sde)
        return score, score, x, "exact score of mixture_nd(D=64, K=4), data shaped (1, 8, 8)"
    raise ValueError(f"unknown field {name!r}")
