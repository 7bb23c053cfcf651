"""The run folder of a training run: one run at a time, no debris of a killed run, and whether to resume.

* **One run at a time.** Rank 0 holds an exclusive ``fcntl.flock`` on ``<out_dir>/run.lock`` for
  the life of the run. The kernel releases the lock when the process ends, however it ends
  (``SIGKILL`` included), so a killed run never blocks the next one. The file holds the holder's
  pid, host and start time, for the message a second run gets (:class:`RunFolderBusy`); it is
  removed when the run ends normally or by an exception (a stale one left by a killed run is
  harmless: it is not locked). Where ``fcntl`` does not exist (Windows) no lock is taken.
* **No debris.** Under the lock, the temporary files that :func:`scoresde.io.atomic_write_with`
  left when a run was killed in the middle of a write (``.checkpoint_last.pt.<8 chars>.tmp`` and
  the like) are removed at the start; only that exact pattern of the run's own files.
* **Resume or not**: :func:`resume_decision`.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional

import torch.distributed as dist

from ..io import stale_temp_files
from .checkpoint import CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, CheckpointError
from .distributed import Dist

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunFolderBusy", "RunLock", "hold_run_folder", "remove_stale_temp_files",
           "resume_decision"]

LOCK_NAME = "run.lock"
#: The run's own files whose temporary twins are removed at the start of a run (regular expressions).
RUN_FILES = "|".join([re.escape(name) for name in (CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME)]
                     + [r"checkpoint_\d{8}\.pt"])


class RunFolderBusy(FileExistsError):
    """Another training run holds the run folder; the message names the folder and the holder."""


class RunLock:
    """An exclusive ``flock`` on ``<folder>/run.lock`` (:meth:`acquire`, :meth:`release`; a context manager)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise :class:`RunFolderBusy`. The lock file is opened, locked, and checked
        to be still the file at ``path`` (a run that ended may have removed it in between: then again)."""
        if fcntl is None:  # pragma: no cover - Windows
            return self
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunFolderBusy(
                    f"the run folder {str(self.folder)!r} is in use by another training run ({holder}); "
                    "wait for it to finish or stop it, or choose another out_dir") from None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                info = dict(pid=os.getpid(), host=socket.gethostname(),
                            started=time.strftime("%Y-%m-%d %H:%M:%S %z"))
                os.ftruncate(fd, 0)
                os.write(fd, (json.dumps(info) + "\n").encode())
                return self
            os.close(fd)
        raise RunFolderBusy(f"could not lock the run folder {str(self.folder)!r}: its lock file keeps being "
                            "replaced; is another program removing it?")  # pragma: no cover

    def release(self) -> None:
        """Remove the lock file (while still holding the lock) and let go of the lock."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)  # closing the last descriptor releases the flock
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its process has not written its pid yet"


def remove_stale_temp_files(folder: Path) -> List[Path]:
    """Remove (and return) the temporary files of the run's own files in ``folder``; call it only
    while holding the run's lock, so that no writer of them is running."""
    removed = []
    for p in stale_temp_files(folder, RUN_FILES):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed


def _share(d: Dist, value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not d.on:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def hold_run_folder(folder: Path, d: Dist) -> Iterator[None]:
    """Rank 0 creates ``folder``, locks it and removes stale temporary files, for the block; an error
    (the folder held by another run, a file in the way) is raised on every rank."""
    lock, err = RunLock(folder), None
    if d.rank == 0:
        try:
            if folder.exists() and not folder.is_dir():
                raise FileExistsError(f"out_dir {str(folder)!r} is a file, not a folder; choose another out_dir")
            folder.mkdir(parents=True, exist_ok=True)
            lock.acquire()
            remove_stale_temp_files(folder)
        except FileExistsError as e:  # RunFolderBusy too
            err = (type(e), str(e))
        except PermissionError as e:
            err = (PermissionError, f"cannot lock the run folder {str(folder)!r} ({e.strerror}): it must be writable "
                                    "by this user; fix its permissions or choose another out_dir")
        except Exception as e:  # anything else: tell the other ranks before raising, so none waits
            lock.release()
            _share(d, (RuntimeError, f"rank 0 could not set up the run folder {str(folder)!r}: "
                                     f"{type(e).__name__}: {e}"))
            raise
    err = _share(d, err)
    if err is not None:
        lock.release()
        raise err[0](err[1])
    try:
        yield
    finally:
        lock.release()


def resume_decision(ckpt_path: Path, out: Path, resume: Optional[bool], d: Dist) -> bool:
    """Whether to resume from ``ckpt_path``: rank 0 decides (checkpoint present? allowed?) and tells
    the others; errors are raised on every rank. ``checkpoint_last.pt`` that exists but is no
    regular file (a folder, a dangling link) is an error: nothing is written over it."""
    err, start = None, False
    if d.rank == 0:
        found = ckpt_path.is_file()
        if not found and (ckpt_path.exists() or ckpt_path.is_symlink()):
            what = "a folder" if ckpt_path.is_dir() else "not a regular file"
            err = (CheckpointError, f"{str(ckpt_path)!r} is {what}, not a checkpoint; move it out of the run folder "
                                    "(its contents are kept) and run again, or choose another out_dir")
        elif resume is True and not found:
            err = (FileNotFoundError, f"resume=True but {str(ckpt_path)!r} does not exist; start a fresh run "
                                      "(resume=None/False) or point out_dir at an existing run")
        elif resume is False and found:
            err = (FileExistsError, f"{str(out)!r} already holds a run ({CHECKPOINT_NAME}); resume it (resume=None "
                                    "or True) or choose another out_dir")
        start = found
    err, start = _share(d, (err, start))
    if err is not None:
        raise err[0](err[1])
    if start and not ckpt_path.is_file():
        raise FileNotFoundError(f"rank {d.rank} cannot see {str(ckpt_path)!r}, which rank 0 resumes "
                                "from; out_dir must be on a file system shared by all processes")
    return start
