"""`train` under torch.distributed: 2 CPU processes (gloo, localhost only), each set up as torchrun
sets up its workers (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so that `train`
initialises the process group itself. Truth check for the gradient averaging: after N steps the
weights equal those of one process trained on the same global batches."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from _distributed import WORLD, free_port, requires_distributed, spawn, torchrun_env

pytestmark = requires_distributed


def _setup(tmp: str, out_dir: str):
    from scoresde.data import load_toy
    from scoresde.training import TrainConfig

    ds = load_toy("mixture_2d", n_train=300, n_test=8, seed=1)
    # 300 // 16 = 18 steps per epoch: 24 steps cross an epoch boundary; checkpoints at 8, 16, 24
    cfg = TrainConfig(dataset="mixture_2d", steps=24, batch_size=16, hidden=16, depth=2, emb_dim=8, lr=5e-3,
                      warmup=4, ema_decay=0.9, checkpoint_every=8, log_every=4, out_dir=out_dir, device="cpu",
                      time_sampler="importance", weighting="likelihood")
    return cfg, ds


def _worker(rank: int, tmp: str, port: int) -> None:
    torch.set_num_threads(1)
    torchrun_env(rank, WORLD, port)
    from scoresde.training import train

    # rank 1 is pointed at its own folder: it must never be created (only rank 0 writes)
    cfg, ds = _setup(tmp, os.path.join(tmp, "run" if rank == 0 else "rank1_run"))
    res = train(cfg, dataset=ds, progress=True)
    assert not dist.is_initialized(), "train must destroy the process group it created"
    torch.save(dict(model=res.model.state_dict(), ema=res.ema_model.state_dict(), loss=res.loss,
                    world=res.world_size, rank=res.rank, history=res.history),
               os.path.join(tmp, f"result{rank}.pt"))


def test_two_processes_match_one_process_on_the_global_batch(tmp_path):
    from scoresde.training import load_checkpoint, train

    spawn(_worker, (str(tmp_path), free_port()), what="the 2-process training")
    outs = [torch.load(tmp_path / f"result{r}.pt", weights_only=False) for r in range(WORLD)]
    assert [o["rank"] for o in outs] == [0, 1] and all(o["world"] == WORLD for o in outs)

    # only rank 0 wrote files
    assert not (tmp_path / "rank1_run").exists()
    run = tmp_path / "run"
    assert sorted(os.listdir(run)) == ["checkpoint_last.pt", "config.json", "metrics.jsonl"]
    ckpt = load_checkpoint(run / "checkpoint_last.pt")
    assert ckpt["step"] == 24 and ckpt["world_size"] == WORLD and len(ckpt["rng"]["per_rank"]) == WORLD

    # DDP keeps the replicas identical
    for k in outs[0]["model"]:
        assert torch.equal(outs[0]["model"][k], outs[1]["model"][k]), k

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg, ds = _setup(str(tmp_path), str(tmp_path / "single"))
        init = {}

        def keep(step, model, ema, cfg):
            if step == 0:
                init.update({k: v.clone() for k, v in model.state_dict().items()})

        single = train(cfg, dataset=ds, hooks=[keep], progress=False)
    finally:
        torch.set_num_threads(n)
    assert single.world_size == 1
    # the same weights up to float rounding (the gradient mean is summed in another order)
    for part, ref in (("model", single.model.state_dict()), ("ema", single.ema_model.state_dict())):
        for k, v in ref.items():
            torch.testing.assert_close(outs[0][part][k], v, rtol=1e-4, atol=1e-5, msg=f"{part}.{k}")
    # the logged loss is the mean over the global batch, as in one process
    losses2 = [r["loss"] for r in outs[0]["history"] if r["kind"] == "train"]
    losses1 = [r["loss"] for r in single.history if r["kind"] == "train"]
    assert len(losses1) == 6
    torch.testing.assert_close(torch.tensor(losses2), torch.tensor(losses1), rtol=1e-4, atol=1e-6)
    # and the weights moved far beyond that tolerance: the comparison is not between two initial models
    moved = max(float((single.model.state_dict()[k] - v).abs().max()) for k, v in init.items())
    assert moved > 1e-2
