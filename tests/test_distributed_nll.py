"""`scoresde nll` under torchrun: 2 CPU processes (gloo, localhost only) set up as torchrun sets up
its workers, so the command initialises the process group and evaluate_bpd shards the split. Truth
check: with the exact trace on continuous data nothing is random, so the 2-process result is the
1-process one (per-sample adaptive solver: each image's value does not depend on its batch mates,
to float tolerance for a network); only rank 0 writes."""
from __future__ import annotations

import json
import os

import torch.distributed as dist
from _distributed import WORLD, free_port, requires_distributed, spawn, torchrun_env

pytestmark = requires_distributed


def _argv(ckpt: str, out: str) -> list:
    return ["nll", "--checkpoint", ckpt, "--trace", "exact", "--split", "test", "--limit", "9", "--rtol", "1e-4",
            "--atol", "1e-4", "--out", out, "--no-progress"]


def _worker(rank: int, ckpt: str, tmp: str, port: int) -> None:
    from scoresde.cli import main

    torchrun_env(rank, WORLD, port)
    out = os.path.join(tmp, "two.json" if rank == 0 else "rank1.json")
    assert main(_argv(ckpt, out)) == 0
    assert not dist.is_initialized(), "nll must destroy the process group it created"


def test_two_processes_evaluate_the_split_of_one_process(tmp_path, capsys):
    from scoresde.cli import main
    from scoresde.data import load_toy
    from scoresde.training import TrainConfig, train

    cfg = TrainConfig(dataset="mixture_2d", steps=2, batch_size=8, hidden=16, depth=2, emb_dim=8,
                      out_dir=str(tmp_path / "run"), device="cpu")
    train(cfg, dataset=load_toy("mixture_2d"), progress=False)
    ckpt = str(tmp_path / "run" / "checkpoint_last.pt")
    spawn(_worker, (ckpt, str(tmp_path), free_port()), what="the 2-process nll", timeout=90.0)
    assert not (tmp_path / "rank1.json").exists()
    assert main(_argv(ckpt, str(tmp_path / "one.json"))) == 0
    two, one = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("two", "one"))
    assert (two["world_size"], one["world_size"]) == (2, 1) and two["n_evaluated"] == one["n_evaluated"] == 9
    assert abs(two["mean"] - one["mean"]) <= 1e-6 * abs(one["mean"])
    assert two["convention"]["world_size"] == 2
