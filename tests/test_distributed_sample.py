"""`scoresde sample` under torchrun: 2 CPU processes (gloo, localhost only), each set up as torchrun
sets up its workers, so that the command initialises the process group itself. Truth check of the
sharding: the samples of 2 processes are bitwise those of 1 process with the same seed (each chunk
of sample indices has its own random stream, and the ranks draw whole chunks), and only rank 0
writes. An error on the one rank that has chunks reaches the rank that has none."""
from __future__ import annotations

import contextlib
import io
import json
import os

import torch
import torch.distributed as dist
from _distributed import WORLD, free_port, requires_distributed, spawn, torchrun_env

pytestmark = requires_distributed

CHUNK = 3
#: (sampler, n, options): 10 samples are 4 chunks (3, 3, 3, 1), rank 0 draws chunks 0-1, rank 1
#: chunks 2-3; 2 samples are one chunk, drawn by rank 1 alone (rank 0 has none).
RUNS = [("euler_maruyama", 10, ["--steps", "8"]),
        ("ode", 10, ["--rtol", "1e-3", "--atol", "1e-3"]),  # adaptive: a per-sample NFE
        ("ddim", 2, ["--steps", "4", "--eta", "1"])]
#: a sampler option whose value only the sampler refuses (a ValueError inside the draw, on rank 1 only)
BAD = ("unipc", 2, ["--nfe", "4", "--order", "predictor_first"])


def _argv(ckpt: str, out: str, sampler: str, n: int, extra) -> list:
    return ["sample", "--checkpoint", ckpt, "--sampler", sampler, "--n", str(n), "--chunk-size", str(CHUNK),
            "--seed", "7", "--out", out, "--no-progress"] + list(extra)


def _checkpoint(tmp_path) -> str:
    """A tiny VP model, one training step from its random initialisation."""
    from scoresde.data import load_toy
    from scoresde.training import TrainConfig, train

    cfg = TrainConfig(dataset="mixture_2d", steps=1, batch_size=8, hidden=16, depth=2, emb_dim=8,
                      out_dir=str(tmp_path / "run"), device="cpu")
    train(cfg, dataset=load_toy("mixture_2d", n_train=32, n_test=8, seed=0), progress=False)
    return str(tmp_path / "run" / "checkpoint_last.pt")


def _worker(rank: int, ckpt: str, tmp: str, ports) -> None:
    from scoresde.cli import main

    # rank 1 is pointed at its own folder: it must never be created (only rank 0 writes)
    out = os.path.join(tmp, "two" if rank == 0 else "rank1_out")
    for (sampler, n, extra), port in zip(RUNS, ports):
        torchrun_env(rank, WORLD, port)
        assert main(_argv(ckpt, out, sampler, n, extra)) == 0
        assert not dist.is_initialized(), "sample must destroy the process group it created"
    torchrun_env(rank, WORLD, ports[-1])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(_argv(ckpt, out, *BAD))
        except SystemExit as e:
            code = e.code
    with open(os.path.join(tmp, f"error{rank}.json"), "w") as f:
        json.dump(dict(code=code, stderr=err.getvalue(), initialized=dist.is_initialized()), f)


def test_two_processes_draw_the_samples_of_one_process(tmp_path, capsys):
    from scoresde.cli import main

    ckpt = _checkpoint(tmp_path)
    spawn(_worker, (ckpt, str(tmp_path), [free_port() for _ in range(len(RUNS) + 1)]),
          what="the 2-process sampling", timeout=90.0)
    assert not (tmp_path / "rank1_out").exists()
    for sampler, n, extra in RUNS:
        assert main(_argv(ckpt, str(tmp_path / "one"), sampler, n, extra)) == 0
        two = torch.load(tmp_path / "two" / f"samples_{sampler}.pt", weights_only=False)
        one = torch.load(tmp_path / "one" / f"samples_{sampler}.pt", weights_only=False)
        assert (two["world_size"], one["world_size"]) == (2, 1) and two["chunk_size"] == one["chunk_size"] == CHUNK
        assert two["x"].shape == (n, 2) and torch.isfinite(two["x"]).all() and two["nfe"].shape == (n,)
        for key in ("x", "nfe", "status"):
            assert torch.equal(two[key], one[key]), (sampler, key)
        assert two["info"] == one["info"]
        if n > CHUNK:  # the chunks have streams of their own: no chunk repeats another's noise
            assert not torch.equal(two["x"][:1], two["x"][CHUNK:CHUNK + 1])
    errors = [json.loads((tmp_path / f"error{r}.json").read_text()) for r in range(WORLD)]
    assert all(e["code"] == 2 and "Traceback" not in e["stderr"] and not e["initialized"] for e in errors)
    assert "order must be 1, 2 or 3" in errors[1]["stderr"]
    assert "sampling failed on another rank (rank 1: ValueError" in errors[0]["stderr"]
