"""The harness of the distributed tests: ``WORLD`` CPU processes (gloo, localhost only), spawned
from the test and joined with a deadline, each set up as ``torchrun`` sets up its workers.

* :data:`requires_distributed`: the skip mark for a torch build without ``torch.distributed``;
* :func:`free_port`, :func:`use_loopback`, :func:`torchrun_env`: a worker's environment (``RANK``,
  ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``; gloo on the loopback interface);
* :func:`spawn`: start the workers with the ``spawn`` method and wait for them; a failed worker
  fails the test with its traceback, a hang fails it after ``timeout`` seconds.

The workers are module-level functions of the test module (``spawn`` pickles them by name).
"""
from __future__ import annotations

import os
import socket
import time
from typing import Callable, Optional, Sequence

import pytest
import torch.distributed as dist

WORLD = 2

requires_distributed = pytest.mark.skipif(not dist.is_available(), reason="this torch build has no torch.distributed")


def loopback_interface() -> Optional[str]:
    try:
        for _, name in socket.if_nameindex():
            if name.startswith("lo"):
                return name
    except (OSError, AttributeError):  # pragma: no cover
        pass
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def use_loopback() -> None:
    """Keep gloo's connections between the ranks on 127.0.0.1."""
    iface = loopback_interface()
    if iface is not None:
        os.environ["GLOO_SOCKET_IFNAME"] = iface


def torchrun_env(rank: int, world: int, port: int) -> None:
    """This process as ``torchrun`` sets up worker ``rank`` of ``world`` (``env://`` rendezvous on ``port``)."""
    use_loopback()
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))


def spawn(worker: Callable[..., None], args: Sequence, *, what: str, timeout: float = 120.0,
          nprocs: int = WORLD) -> None:
    """Run ``worker(rank, *args)`` in ``nprocs`` spawned processes and wait for all of them."""
    import torch.multiprocessing as mp

    ctx = mp.start_processes(worker, args=tuple(args), nprocs=nprocs, start_method="spawn", join=False)
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1.0):  # raises if a worker failed
            if time.monotonic() > deadline:  # pragma: no cover - a hang
                pytest.fail(f"{what} did not finish within {timeout:g} s (a rank waiting on a collective?)")
    finally:
        for p in ctx.processes:
            if p.is_alive():  # pragma: no cover - only after a failure
                p.terminate()
                p.join(5)
