"""Sharding a test-set evaluation over ``torch.distributed`` ranks: the process group, the block each
rank evaluates, its random stream, and the gather that gives every rank the whole result.

Rank ``r`` of ``W`` evaluates the contiguous block of indices ``[r N // W, (r + 1) N // W)``; the
blocks are gathered with ``all_gather_object``, so every rank returns the full result in data
order. An error on any rank is raised on every rank after the gather (no rank is left waiting).
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch

__all__ = ["dist_context", "unwrap_ddp", "shard_bounds", "rank_generator", "gather_blocks"]


def dist_context(distributed: Optional[bool]) -> Tuple[bool, int, int]:
    """``(sharded, rank, world)``: ``distributed=None`` shards when a process group is initialised,
    ``True`` requires one, ``False`` evaluates everything in this process."""
    avail = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed is None:
        distributed = avail
    elif distributed and not avail:
        raise ValueError("distributed=True but no torch.distributed process group is initialised "
                         "(run under torchrun and call torch.distributed.init_process_group first)")
    if not distributed:
        return False, 0, 1
    return True, torch.distributed.get_rank(), torch.distributed.get_world_size()


def unwrap_ddp(score_fn: Any) -> Any:
    """The model inside ``DistributedDataParallel``: DDP's forward runs collectives (buffer
    broadcast) on every call, and the adaptive solver makes a different number of calls on each
    rank, so evaluating through the wrapper would deadlock or mix states."""
    from torch.nn.parallel import DistributedDataParallel

    return score_fn.module if isinstance(score_fn, DistributedDataParallel) else score_fn


def shard_bounds(size: int, rank: int, world: int) -> Tuple[int, int]:
    """The block ``[start, stop)`` of ``size`` rows that ``rank`` of ``world`` evaluates."""
    return size * rank // world, size * (rank + 1) // world


def rank_generator(generator: Optional[torch.Generator], device: torch.device, rank: int) -> torch.Generator:
    """This rank's random stream: one integer ``base`` in ``[0, 2^62)`` drawn from ``generator``
    (torch's global CPU RNG when ``None``), the same on every rank given the same seed, then a fresh
    ``torch.Generator(device)`` seeded with ``base + rank``."""
    base_gen = generator if generator is not None else torch.default_generator
    base = int(torch.randint(0, 2**62, (1,), generator=base_gen, device=base_gen.device))
    return torch.Generator(device=device).manual_seed(base + rank)


def gather_blocks(run_local: Callable[[], dict], rank: int, world: int, convention: dict) -> List[dict]:
    """Run ``run_local()`` on this rank and gather every rank's block (a dict with ``start``,
    ``count``, ``size``, ``convention``, ``error``), checking that the ranks evaluated the same data
    set with the same options in contiguous blocks. Returns the non-empty blocks in rank order."""
    local_err: Optional[BaseException] = None
    try:
        local = run_local()
    except Exception as err:  # re-raised below, after every rank has reached the gather
        local_err = err
        local = dict(error=f"{type(err).__name__}: {err}")
    parts: List[Any] = [None] * world
    torch.distributed.all_gather_object(parts, local)
    if local_err is not None:
        raise local_err
    errors = [f"rank {r}: {p['error']}" for r, p in enumerate(parts) if p["error"] is not None]
    if errors:
        raise RuntimeError("evaluate_bpd failed on another rank: " + "; ".join(errors))
    if len({p["size"] for p in parts}) != 1:
        raise ValueError(f"the ranks passed data sets of different sizes {[p['size'] for p in parts]}; "
                         "pass the same whole test set on every rank")
    diff = [r for r, p in enumerate(parts) if p["convention"] != convention]
    if diff:
        raise ValueError(f"ranks {diff} called evaluate_bpd with other options than rank {rank}; "
                         "pass the same options on every rank")
    expect = 0
    for p in parts:
        if p["start"] != expect:  # pragma: no cover - blocks are contiguous by construction
            raise AssertionError("gathered blocks are not contiguous")
        expect += p["count"]
    return [p for p in parts if p["count"] > 0]
