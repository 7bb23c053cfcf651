"""`evaluate_bpd` under torch.distributed: 2 CPU processes (gloo, localhost only) give the same
per-sample result, in data order, as one process; each rank has its own random stream; an error
on one rank reaches every rank instead of leaving the others waiting."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from _distributed import WORLD, requires_distributed, spawn, use_loopback

pytestmark = requires_distributed

N = 13  # not a multiple of the world size: blocks of 6 and 7


def _problem():
    from scoresde import VPSDE, GaussianMixture

    sde = VPSDE()
    mix = GaussianMixture([0.4, 0.6], [[-0.4, 0.2], [0.35, -0.25]], [[0.15, 0.1], [0.2, 0.12]])
    x = mix.sample(N, generator=torch.Generator().manual_seed(0))
    return sde, mix, x


class _Wrapped(torch.nn.Module):
    """The oracle score as a module with one parameter, so it can be wrapped in DDP."""

    def __init__(self, score):
        super().__init__()
        self.score = score
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, t):
        return self.score(x, t) * self.scale


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    use_loopback()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data import DataLoader, TensorDataset

        from scoresde.likelihood import evaluate_bpd
        from scoresde.quantize import grid_values

        sde, mix, x = _problem()
        out = {}
        model = DistributedDataParallel(_Wrapped(mix.score_fn(sde)).eval())
        res = evaluate_bpd(model, sde, x, dequantize=None, trace="exact", batch_size=4, progress=False,
                           keep_latents=True)
        out["exact"] = dict(bpd=res.bpd, logp=res.logp, nfe=res.nfe, status=res.status, z=res.z, mean=res.mean,
                            stderr=res.stderr, n=res.n_samples, world=res.convention["world_size"])
        # random streams: rows 6..11 repeat rows 0..5, so rank 0's block and rank 1's first 6 rows hold the
        # same points; with one shared stream they would get the same noise and probes.
        u = torch.randint(0, 64, (6, 2), generator=torch.Generator().manual_seed(1))
        xq = grid_values(torch.cat([u, u, u[:1]]), 64)
        res = evaluate_bpd(mix.score_fn(sde), sde, xq, n_levels=64, batch_size=4, progress=False,
                           generator=torch.Generator().manual_seed(123))
        out["random"] = dict(bpd=res.bpd, data=xq, tol=res.convention["rtol"], pilot=res.tolerance.to_dict())
        # an error on rank 1 only (its rows are off the grid) must surface on both ranks
        bad = xq.clone()
        bad[10] += 0.001
        try:
            # explicit tolerances: no pilot, so each rank reads (and checks) only its own rows
            evaluate_bpd(mix.score_fn(sde), sde, DataLoader(TensorDataset(bad), batch_size=5), n_levels=64,
                         trace="exact", progress=False, rtol=1e-5, atol=1e-5)
            out["error"] = None
        except Exception as err:  # noqa: BLE001 - recorded for the parent
            out["error"] = f"{type(err).__name__}: {err}"
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_process(tmp_path):
    from scoresde.likelihood import evaluate_bpd

    spawn(_worker, (str(tmp_path / "pg_init"), str(tmp_path)), what="the 2-process evaluation", timeout=90.0)
    outs = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sde, mix, x = _problem()
        single = evaluate_bpd(mix.score_fn(sde), sde, x, dequantize=None, trace="exact", batch_size=4,
                              progress=False, keep_latents=True, distributed=False)
    finally:
        torch.set_num_threads(n)

    for r, out in enumerate(outs):
        got = out["exact"]
        assert got["n"] == N and got["world"] == WORLD and got["bpd"].shape == (1, N)
        torch.testing.assert_close(got["logp"], single.logp, rtol=0, atol=1e-9)
        torch.testing.assert_close(got["bpd"], single.bpd, rtol=0, atol=1e-9)
        torch.testing.assert_close(got["z"], single.z, rtol=0, atol=1e-6)
        assert torch.equal(got["nfe"], single.nfe) and torch.equal(got["status"], single.status)
        assert abs(got["mean"] - single.mean) < 1e-9 and abs(got["stderr"] - single.stderr) < 1e-9

    # every rank returns the same gathered result, with rank 0's tolerance pilot, which is the one a
    # single process runs on the same data and seed
    assert torch.equal(outs[0]["random"]["bpd"], outs[1]["random"]["bpd"])
    assert outs[0]["random"]["pilot"] == outs[1]["random"]["pilot"]
    alone = evaluate_bpd(mix.score_fn(sde), sde, outs[0]["random"]["data"], n_levels=64, batch_size=4,
                         progress=False, generator=torch.Generator().manual_seed(123), distributed=False)
    assert alone.tolerance.to_dict() == outs[0]["random"]["pilot"]
    tol = outs[0]["random"]["tol"]
    bpd = outs[0]["random"]["bpd"][0]
    assert (bpd[:6] != bpd[6:12]).all(), "the two ranks used the same random stream"
    # the documented rule: rank r uses Generator().manual_seed(base + r), base = randint(2^62) from the given one
    base = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(123)))
    xq = outs[0]["random"]["data"]
    for r, (a, b) in enumerate([(0, 6), (6, 13)]):
        block = evaluate_bpd(mix.score_fn(sde), sde, xq[a:b], n_levels=64, batch_size=4, progress=False,
                             generator=torch.Generator().manual_seed(base + r), distributed=False, rtol=tol, atol=tol)
        torch.testing.assert_close(block.bpd[0], bpd[a:b], rtol=0, atol=1e-9)

    assert outs[1]["error"].startswith("ValueError") and "not on the quantization grid" in outs[1]["error"]
    assert outs[0]["error"].startswith("RuntimeError") and "rank 1" in outs[0]["error"]
