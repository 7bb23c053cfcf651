"""Fault injection for training runs and checkpoints (issue 14, part A): nothing lost, nothing cryptic.

Every case breaks something on purpose (a second run in the same folder, a SIGKILL at a random
point or in the middle of a checkpoint write, a damaged / foreign / malicious checkpoint, bad or
other training data) and asserts three things: the exception type or exit status, that the message
names the problem (and the file or folder), and that no earlier result was lost (the checkpoint's
bytes, the metrics log, the user's own files). Truth for a resumed run is an uninterrupted run:
bitwise the same weights, EMA, optimizer state and metrics lines.

Real subprocesses where a process boundary is the point (SIGKILL, two concurrent runs); the rest
in-process.
"""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Tuple

import pytest
import torch

from scoresde.cli.main import main
from scoresde.data import load_toy
from scoresde.training import CHECKPOINT_NAME, load_checkpoint, load_model, train
from scoresde.training.checkpoint import FORMAT, CheckpointError, UnverifiedCheckpointWarning
from scoresde.training.lock import LOCK_NAME, RunFolderBusy
from _training import _assert_same_state, _cfg

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[1]
#: The configuration the subprocesses and the in-process references share: checkpoint_every=3 is no
#: multiple of log_every=2, so a resume starts inside a logging window.
CHILD_CFG = dict(dataset="mixture_2d", steps=14, batch_size=32, hidden=16, depth=2, emb_dim=8, lr=1e-2, warmup=3,
                 ema_decay=0.9, checkpoint_every=3, log_every=2, device="cpu")
def _lines(path: Path, drop=("time",)) -> list:
    """The metrics records as JSON text without the wall-clock field: equal text is equal floats."""
    return [json.dumps({k: v for k, v in json.loads(x).items() if k not in drop}, sort_keys=True)
            for x in path.read_text().splitlines()]


def _same_run(a_dir: Path, b_dir: Path) -> None:
    """Two run folders hold bitwise the same training state and the same metrics lines."""
    a, b = load_checkpoint(a_dir / CHECKPOINT_NAME), load_checkpoint(b_dir / CHECKPOINT_NAME)
    assert a["step"] == b["step"]
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    for k, v in a["optimizer"]["state"].items():
        for name in v:
            assert torch.equal(v[name], b["optimizer"]["state"][k][name])
    assert torch.equal(a["rng"]["generator"], b["rng"]["generator"])
    assert _lines(a_dir / "metrics.jsonl") == _lines(b_dir / "metrics.jsonl")


def _temps(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _forked(target, *args) -> Tuple[Any, Any]:
    """``target(*args)`` in a forked process (torch already imported, so it starts at once) and the
    read end of a pipe on which it reports; a real process, SIGKILLed by the tests."""
    r, w = os.pipe()
    proc = multiprocessing.get_context("fork").Process(target=_in_child, args=(target, w) + args)
    proc.start()
    os.close(w)
    return proc, os.fdopen(r, "r")


def _in_child(target, w, *args) -> None:
    torch.set_num_threads(1)
    target(lambda text: os.write(w, (text + "\n").encode()), *args)


def _paced_run(tell, out, hooks=None, **changes):
    """CHILD_CFG in ``out``; by default it reports (and waits 10 ms) after every step."""
    def hook(step, model, ema, cfg):
        tell(str(step))
        time.sleep(0.01)

    from scoresde.training import TrainConfig
    cfg = TrainConfig(out_dir=str(out), **{**CHILD_CFG, "eval_every": 1, **changes})
    train(cfg, hooks=[hook] if hooks is None else hooks, progress=False,
          dataset=load_toy("mixture_2d", n_train=512, n_test=64, seed=3))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of CHILD_CFG (in-process), the truth every resumed run must equal."""
    out = tmp_path_factory.mktemp("ref") / "run"
    torch.set_num_threads(1)
    from scoresde.training import TrainConfig

    train(TrainConfig(out_dir=str(out), **CHILD_CFG), dataset=load_toy("mixture_2d", n_train=512, n_test=64, seed=3),
          progress=False)
    return out


def _resume_in_process(out: Path):
    from scoresde.training import TrainConfig

    return train(TrainConfig(out_dir=str(out), **CHILD_CFG), dataset=load_toy("mixture_2d", n_train=512, n_test=64,
                                                                             seed=3), progress=False)


# ---------------------------------------------------------------------------------------------
# 1. Two runs in one folder.
# ---------------------------------------------------------------------------------------------
def _held_run(tell, out, ready, go):
    """A run that holds its folder: at step 1 it says so (file ``ready``) and waits for ``go``."""
    def wait(step, model, ema, cfg):
        if step == 1:
            ready.touch()
            for _ in range(1200):
                if go.exists():
                    break
                time.sleep(0.05)

    _paced_run(tell, out, hooks=[wait], eval_every=1)
    tell("done")


def test_a_second_run_in_a_busy_folder_is_refused_naming_the_folder_and_the_holder(tmp_path, reference):
    """`scoresde train --out same` twice at once (seeds 0 and 1, two processes): the second is
    refused with exit status 2, naming the folder and the first run's pid; it writes nothing; the
    first run is whole (seed 0's checkpoint and metrics, equal to an undisturbed run)."""
    out = tmp_path / "same"
    ready, go = tmp_path / "ready", tmp_path / "go"
    first, pipe = _forked(_held_run, out, ready, go)
    second_code = textwrap.dedent(f"""
        import os, sys, time
        from scoresde.cli.main import main
        for _ in range(1200):
            if os.path.exists({str(ready)!r}):
                break
            time.sleep(0.05)
        sys.exit(main(sys.argv[1:]))
        """)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    second = subprocess.Popen([sys.executable, "-c", second_code, "train", "--out", str(out), "--seed", "1",
                               "--dataset", "mixture_2d", "--steps", "14", "--device", "cpu", "--no-progress"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out2, err2 = second.communicate(timeout=120)
        assert ready.exists()
    finally:
        go.touch()
        first.join(timeout=120)
    assert second.returncode == 2, err2
    assert "Traceback" not in err2 and "fresh run" not in out2
    assert "in use by another training run" in err2 and str(out) in err2 and f"pid {first.pid} " in err2, err2
    assert first.exitcode == 0 and pipe.read() == "done\n"
    pipe.close()
    # the first run is whole: seed 0's checkpoint, its metrics alone, the lock gone
    assert load_checkpoint(out / CHECKPOINT_NAME)["config"]["seed"] == 0
    _same_run(reference, out)
    assert not (out / LOCK_NAME).exists()


def test_a_second_run_in_the_same_process_is_refused_and_the_lock_ends_with_the_run(tmp_path, toy):
    cfg = _cfg(tmp_path, steps=4, eval_every=1)
    seen = {}

    def nested(step, model, ema, c):
        if step == 2:
            with pytest.raises(RunFolderBusy) as err:
                train(cfg.replace(seed=1), dataset=toy, progress=False)
            seen["msg"] = str(err.value)

    train(cfg, dataset=toy, hooks=[nested], progress=False)
    assert str(tmp_path / "run") in seen["msg"] and f"pid {os.getpid()} " in seen["msg"]
    assert isinstance(RunFolderBusy("x"), FileExistsError)  # the CLI reports it as a usage error
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["config"]["seed"] == 0

    def boom(step, model, ema, c):
        raise RuntimeError("hook failed")
    with pytest.raises(RuntimeError, match="hook failed"):
        train(cfg.replace(out_dir=str(tmp_path / "b")), dataset=toy, hooks=[boom], progress=False)
    assert not (tmp_path / "b" / LOCK_NAME).exists()
    train(cfg.replace(out_dir=str(tmp_path / "b")), dataset=toy, progress=False)  # the folder is free again


# ---------------------------------------------------------------------------------------------
# 5. SIGKILL: at random points of training, and in the middle of a checkpoint write.
# ---------------------------------------------------------------------------------------------
def _killed_while_writing(tell, out):
    """The second checkpoint write (step 6) is SIGKILLed after the temporary file is written, before the rename."""
    torch.set_num_threads(1)
    real, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(1)
        real(obj, f, *a, **k)
        if len(calls) == 2:
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    torch.save = save  # in this forked process only
    _paced_run(tell, out, hooks=(), eval_every=0)


def test_sigkill_at_random_points_then_resume_is_bitwise_identical(tmp_path, reference):
    """Two runs (in parallel, each in its own folder) killed at random steps, plus a random delay
    into the step, so that the kill lands in a step, a log write or a checkpoint write; then
    resumed: the same state and metrics lines as the uninterrupted run. The kernel released the
    dead process's lock (its file is left, unlocked): the resume just runs."""
    rng = random.Random(14)
    runs = [(tmp_path / f"run{i}", rng.randint(2, CHILD_CFG["steps"] - 2), rng.uniform(0.0, 0.03)) for i in range(2)]

    def kill_when(proc, pipe, step, delay):
        for line in pipe:
            if int(line) >= step:
                time.sleep(delay)
                os.kill(proc.pid, signal.SIGKILL)
                break

    children = [_forked(_paced_run, out) for out, _, _ in runs]
    killers = [threading.Thread(target=kill_when, args=(proc, pipe, step, delay))
               for (proc, pipe), (_, step, delay) in zip(children, runs)]
    for k in killers:
        k.start()
    for (proc, pipe), k in zip(children, killers):
        k.join(timeout=120)
        proc.join(timeout=60)
        pipe.close()
        assert proc.exitcode == -signal.SIGKILL
    for out, step, _ in runs:
        assert (out / LOCK_NAME).exists()
        res = _resume_in_process(out)
        assert res.step == CHILD_CFG["steps"] and res.resumed_from is not None
        _same_run(reference, out)
        assert _temps(out) == [] and not (out / LOCK_NAME).exists()


def test_sigkill_during_a_checkpoint_write_leaves_the_old_checkpoint_and_no_debris(tmp_path, reference):
    out = tmp_path / "run"
    proc, pipe = _forked(_killed_while_writing, out)
    proc.join(timeout=60)
    pipe.close()
    assert proc.exitcode == -signal.SIGKILL
    (tmp, ) = [out / n for n in _temps(out)]
    assert tmp.name.startswith("." + CHECKPOINT_NAME + ".")
    ckpt = out / CHECKPOINT_NAME
    assert tmp.stat().st_size > 0.9 * ckpt.stat().st_size  # a whole checkpoint's worth, left behind
    assert load_checkpoint(ckpt)["step"] == 3  # the old checkpoint is intact
    # files of the user that look alike stay: only the run's own temporary pattern is removed
    mine = {".checkpoint_last.pt.backup": b"a", "notes.tmp": b"b", ".mydata.abcdefgh.tmp": b"c",
            ".checkpoint_last.pt.toolongname.tmp": b"d"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    res = _resume_in_process(out)
    assert res.resumed_from == 3
    _same_run(reference, out)
    assert not tmp.exists()
    assert {n: (out / n).read_bytes() for n in mine} == mine


# ---------------------------------------------------------------------------------------------
# 5. The logging window across a resume (checkpoint_every not a multiple of log_every).
# ---------------------------------------------------------------------------------------------
def test_a_resume_inside_a_logging_window_logs_exactly_what_the_uninterrupted_run_logs(tmp_path, toy):
    cfg = _cfg(tmp_path, "full", steps=12, checkpoint_every=3, log_every=2)
    full = train(cfg, dataset=toy, progress=False)

    def stop(step, model, ema, c):
        if step == 4:
            raise KeyboardInterrupt

    cut = cfg.replace(out_dir=str(tmp_path / "cut"), eval_every=1)
    with pytest.raises(KeyboardInterrupt):
        train(cut, dataset=toy, hooks=[stop], progress=False)
    ckpt = load_checkpoint(tmp_path / "cut" / CHECKPOINT_NAME)
    assert ckpt["step"] == 3 and ckpt["log_window"]["n"] == 1  # step 3 is inside the window of step 4
    train(cut, dataset=toy, progress=False)
    assert _lines(full.metrics_path) == _lines(tmp_path / "cut" / "metrics.jsonl")
    _assert_same_state(full.model, load_model(tmp_path / "cut", use_ema=False)[0])


# ---------------------------------------------------------------------------------------------
# 2, 6. Damaged, foreign and malicious checkpoints.
# ---------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _flip_tensor_bytes(raw: bytes, ckpt: dict) -> bytes:
    """Flip 64 bytes inside the stored data of the largest weight tensor (found by its own bytes)."""
    name, t = max(ckpt["model"].items(), key=lambda kv: kv[1].numel())
    data = t.contiguous().view(torch.uint8).numpy().tobytes()
    at = raw.find(data)
    assert at > 0 and len(data) >= 128, name
    mid = at + len(data) // 2
    return raw[:mid] + bytes(b ^ 0xFF for b in raw[mid:mid + 64]) + raw[mid + 64:]


def _without_entry(raw: bytes, suffix: str) -> bytes:
    zin, out = zipfile.ZipFile(io.BytesIO(raw)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if not info.filename.endswith(suffix):
                zout.writestr(info, zin.read(info.filename))
    return out.getvalue()


def _saved(obj) -> bytes:
    b = io.BytesIO()
    torch.save(obj, b)
    return b.getvalue()


def _damaged(kind: str, raw: bytes, marker: Path) -> bytes:
    ckpt = torch.load(io.BytesIO(raw), weights_only=True)
    if kind == "truncated":
        return raw[:len(raw) // 2]
    if kind == "truncated_tail":
        return raw[:-10]
    if kind == "empty":
        return b""
    if kind == "text":
        return b"step: 100\nloss: 0.5\n"
    if kind == "foreign":
        return _saved({"weights": torch.ones(3), "epoch": 101})
    if kind == "missing_entry":
        return _without_entry(raw, "/data/3")
    if kind == "flipped":
        return _flip_tensor_bytes(raw, ckpt)
    if kind == "missing_ema":  # the checksum then no longer matches
        return _saved({k: v for k, v in ckpt.items() if k != "ema"})
    if kind == "missing_ema_unchecked":  # no checksum either: the entry check must catch it
        return _saved({k: v for k, v in ckpt.items() if k not in ("ema", "checksum")})
    if kind == "malicious":
        return _saved({**ckpt, "extra": _Payload(marker)})
    if kind == "malicious_pickle":
        return pickle.dumps({"format": FORMAT, "extra": _Payload(marker)})
    raise AssertionError(kind)


DAMAGE = {
    "truncated": "truncated or not a scoresde checkpoint",
    "truncated_tail": "truncated or not a scoresde checkpoint",
    "empty": r"is empty \(0 bytes\): truncated or not a scoresde checkpoint",
    "text": "truncated or not a scoresde checkpoint",
    "foreign": "not a scoresde training checkpoint",
    "missing_entry": "truncated or damaged",
    "flipped": "damaged: its contents do not match the checksum",
    "missing_ema": "damaged: its contents do not match the checksum",
    "missing_ema_unchecked": "lacks the entries ema",
    "malicious": r"holds Python objects other than tensors \((io|builtins)\.open\); refusing to load it",
    "malicious_pickle": "bare Python pickle.*refusing to unpickle it",
}
REMEDY = {k: "restore a kept checkpoint" for k in DAMAGE if k not in ("foreign", "malicious", "malicious_pickle")}


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A finished 4-step run: its folder's files as bytes."""
    out = tmp_path_factory.mktemp("good") / "run"
    torch.set_num_threads(1)
    train(_cfg(out.parent, "run", steps=4), dataset=load_toy("mixture_2d", n_train=512, n_test=64, seed=3),
          progress=False)
    return {p.name: p.read_bytes() for p in out.iterdir()}


def _plant(tmp_path, good_run, kind):
    out = tmp_path / "run"
    out.mkdir()
    for name, data in good_run.items():
        (out / name).write_bytes(data)
    marker = tmp_path / "MARKER"
    (out / CHECKPOINT_NAME).write_bytes(_damaged(kind, good_run[CHECKPOINT_NAME], marker))
    return out, marker


@pytest.mark.parametrize("surface", ["load_checkpoint", "load_model", "resume"])
@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_checkpoint_is_one_clear_error_and_nothing_is_overwritten(tmp_path, good_run, toy, kind, surface):
    out, marker = _plant(tmp_path, good_run, kind)
    ckpt = out / CHECKPOINT_NAME
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.warns(UnverifiedCheckpointWarning) if kind == "missing_ema_unchecked" else _no_warning():
        with pytest.raises(CheckpointError, match=DAMAGE[kind]) as err:
            if surface == "load_checkpoint":
                load_checkpoint(ckpt)
            elif surface == "load_model":
                load_model(out)  # the run folder: its checkpoint_last.pt
            else:
                train(_cfg(tmp_path, "run", steps=8), dataset=toy, progress=False)
    msg = str(err.value)
    assert repr(str(ckpt)) in msg
    assert REMEDY.get(kind, "written by `scoresde train`") in msg
    assert "weights_only" not in msg and err.value.__cause__ is None
    assert isinstance(err.value, ValueError)
    assert not marker.exists()  # the payload never ran
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written over


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("kind", ["truncated", "malicious"])
def test_the_cli_reports_a_damaged_checkpoint_without_a_traceback(tmp_path, good_run, capsys, kind):
    out, marker = _plant(tmp_path, good_run, kind)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--out", str(out), "--dataset", "mixture_2d", "--steps", "8", "--batch-size", "32",
              "--hidden", "16", "--depth", "2", "--emb-dim", "8", "--lr", "0.01", "--warmup", "3", "--ema-decay", "0.9",
              "--checkpoint-every", "4", "--log-every", "2", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert str(out / CHECKPOINT_NAME) in err and DAMAGE[kind].split("\\")[0] in err
    assert not marker.exists()


def test_a_checkpoint_without_checksum_loads_with_a_warning(tmp_path, good_run, toy):
    """A checkpoint of the format before checksums, data fingerprints and logging windows."""
    ckpt = torch.load(io.BytesIO(good_run[CHECKPOINT_NAME]), weights_only=True)
    legacy = {k: v for k, v in ckpt.items() if k not in ("checksum", "data_fingerprint", "log_window")}
    out, _ = _plant(tmp_path, good_run, "truncated")
    (out / CHECKPOINT_NAME).write_bytes(_saved(legacy))
    with pytest.warns(UnverifiedCheckpointWarning, match="cannot be detected") as w:
        model, _, _ = load_model(out)
    assert any(str(out / CHECKPOINT_NAME) in str(x.message) for x in w if x.category is UnverifiedCheckpointWarning)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["ema"][k])
    with pytest.warns(UnverifiedCheckpointWarning):
        res = train(_cfg(tmp_path, "run", steps=8), dataset=toy, progress=False)
    assert res.resumed_from == 4
    assert load_checkpoint(out / CHECKPOINT_NAME)["checksum"].startswith("sha256:")  # verified from now on


# ---------------------------------------------------------------------------------------------
# 8 (part). checkpoint_last.pt that is a folder.
# ---------------------------------------------------------------------------------------------
def test_a_checkpoint_that_is_a_folder_is_named_and_kept(tmp_path, toy, capsys):
    out = tmp_path / "run"
    (out / CHECKPOINT_NAME).mkdir(parents=True)
    (out / CHECKPOINT_NAME / "mine.txt").write_text("the user's")
    for path in (out, out / CHECKPOINT_NAME):
        with pytest.raises(CheckpointError, match="is a folder, not a checkpoint") as err:
            load_checkpoint(path)
        assert repr(str(out / CHECKPOINT_NAME)) in str(err.value)
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint; move it out"):
        train(_cfg(tmp_path, steps=4), dataset=toy, progress=False)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--out", str(out), "--dataset", "mixture_2d", "--steps", "4", "--device", "cpu",
              "--no-progress"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "is a folder" in err and str(out / CHECKPOINT_NAME) in err
    assert (out / CHECKPOINT_NAME / "mine.txt").read_text() == "the user's"
    assert not (out / "metrics.jsonl").exists()


# ---------------------------------------------------------------------------------------------
# 4 (part). The training data: a NaN row; a resume on other data of the same shape.
# ---------------------------------------------------------------------------------------------
def test_a_nan_in_the_training_data_is_named_by_its_row_before_any_step(tmp_path, toy):
    import dataclasses

    x = toy.train.clone()
    x[37, 1] = float("nan")
    x[200, 0] = float("inf")
    bad = dataclasses.replace(toy, train=x)
    with pytest.raises(ValueError, match=r"non-finite value \(NaN or inf\) in row 37 .*2 of 512 rows"):
        train(_cfg(tmp_path, steps=200, checkpoint_every=100), dataset=bad, progress=False)
    assert sorted(os.listdir(tmp_path / "run")) == []  # no step was taken, nothing written


def test_a_resume_on_other_data_of_the_same_shape_is_refused(tmp_path, toy):
    cfg = _cfg(tmp_path, steps=4)
    train(cfg, dataset=toy, progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    other = load_toy("mixture_2d", n_train=512, n_test=64, seed=4)
    assert other.train.shape == toy.train.shape
    with pytest.raises(ValueError, match="trained on other data") as err:
        train(cfg.replace(steps=8), dataset=other, progress=False)
    msg = str(err.value)
    assert str(tmp_path / "run" / CHECKPOINT_NAME) in msg and "start a fresh run in another out_dir" in msg
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
    assert train(cfg.replace(steps=8), dataset=toy, progress=False).resumed_from == 4  # the same data resume
