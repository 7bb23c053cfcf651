"""Fault injection for the command line (issue 14, part B): every command with each class of bad
path, a bad device, a closed pipe and an unexpected error.

Each case asserts the exit status, that stderr names the problem and the path, that stderr holds no
``Traceback``, and that no earlier result was lost: every file of an earlier run (checkpoint,
config, samples, bits/dim JSON) is byte-identical afterwards (:func:`snapshot`).

Most cases call :func:`scoresde.cli.main.main` in this process. Three need a process of their own:
an unwritable folder (the command runs as the unprivileged user 65534), a full disk (a file-size
limit, ``RLIMIT_FSIZE``, makes a write fail with ``EFBIG``) and a closed pipe. The first two run
their commands through :data:`RUNNER`, one process for all the commands of a case.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from scoresde.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")

#: A 2-step run of a tiny MLP on a 2-D mixture (about a second).
TRAIN = ["train", "--dataset", "mixture_2d", "--steps", "2", "--batch-size", "16", "--hidden", "8", "--depth", "1",
         "--emb-dim", "4", "--warmup", "1", "--log-every", "1", "--checkpoint-every", "1", "--device", "cpu",
         "--no-progress"]
SAMPLE = ["sample", "--n", "4", "--steps", "2", "--no-progress"]
NLL = ["nll", "--limit", "4", "--batch-size", "4", "--rtol", "1e-2", "--atol", "1e-2", "--trace", "exact",
       "--no-progress"]
DEMO = ["demo", "--quick", "--no-progress"]
NOBODY = 65534

#: Runs ``scoresde`` commands in one process: ``python -c RUNNER JSON`` with JSON ``{"phases":
#: [{"drop": bool, "warm": [argv, ...], "calls": [[fsize limit or null, argv], ...]}, ...]}``; prints
#: one line ``[{"code", "err", "out"}, ...]`` per phase. A phase first runs its ``warm`` commands (which
#: import what the commands import lazily); with ``drop`` it then becomes user 65534, as a process
#: cannot become root again, in the last phase. ``setpriv ... python`` is not used: the interpreter
#: may live where that user cannot read it (under /root, 0700); ``os.setuid`` after the imports works
#: there too. Where the system refuses the switch the line is ``{"refused": reason}``.
RUNNER = r"""
import contextlib, io, json, os, resource, sys
spec = json.loads(sys.argv[1])
import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot
import torch, torch.distributed, scoresde, scoresde.training, scoresde.sampling, scoresde.likelihood, scoresde.data
import scoresde.metrics, scoresde.training.loop, scoresde.cli.main, scoresde.cli.report
from scoresde.cli import build_parser, main
build_parser()
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
for phase in spec["phases"]:
    for argv in phase["warm"]:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            assert main(argv) == 0, argv
    if phase["drop"] and os.geteuid() == 0:
        try:
            os.setgroups([]); os.setgid(%(uid)d); os.setuid(%(uid)d)
        except OSError as e:
            print(json.dumps(dict(refused=f"setuid({%(uid)d}): {e}"))); break
    results = []
    for limit, argv in phase["calls"]:
        err, out = io.StringIO(), io.StringIO()
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard if limit is None else limit, hard))
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        results.append(dict(code=code, err=err.getvalue(), out=out.getvalue()))
    print(json.dumps(results), flush=True)
""" % dict(uid=NOBODY)


def _run(argv, capsys):
    """``(exit status, stdout, stderr)`` of ``main(argv)`` in this process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(root: Path) -> dict:
    """``{relative path: sha256}`` of every file under ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_kept(before: dict, root: Path) -> None:
    """Every file of ``before`` is still there, byte for byte."""
    now = snapshot(root)
    lost = {k: v for k, v in before.items() if now.get(k) != v}
    assert not lost, f"earlier results changed or lost: {sorted(lost)}"


def assert_reported(err: str, *needles) -> None:
    assert "Traceback" not in err, err
    for n in needles:
        assert str(n) in err, (n, err)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SCORESDE_TRACEBACK"}
    env.update(OMP_NUM_THREADS="1", MPLCONFIGDIR=tempfile.gettempdir())
    return env


def _no_sigxfsz():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the file-size limit fails with EFBIG, no signal
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def start_runner(phases) -> subprocess.Popen:
    """Start :data:`RUNNER` on ``phases`` (``[(drop, warm argvs, [(fsize limit, argv), ...]), ...]``)."""
    spec = dict(phases=[dict(drop=drop, warm=[[str(a) for a in argv] for argv in warm],
                             calls=[[limit, [str(a) for a in argv]] for limit, argv in calls])
                        for drop, warm, calls in phases])
    return subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), preexec_fn=_no_sigxfsz,
                            cwd=tempfile.gettempdir())


def runner_results(proc: subprocess.Popen, timeout=240):
    """The results of each phase of a :func:`start_runner` process, or ``{"refused": reason}``."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0 and "Traceback" not in err, err
    return [json.loads(line) for line in out.strip().splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder every user may read (but only its owner write) with an earlier run, its samples and its
    bits/dim: ``run/`` (checkpoint, config, metrics), ``samples/samples_pc.pt|png``, ``nll.json``, and
    a plain file ``afile``."""
    root = Path(tempfile.mkdtemp(prefix="scoresde-faults-"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for argv in (TRAIN + ["--out", root / "run"], SAMPLE + ["--checkpoint", root / "run", "--out", root / "samples"],
                     NLL + ["--checkpoint", root / "run", "--out", root / "nll.json"]):
            assert main([str(a) for a in argv]) == 0
    finally:
        torch.set_num_threads(n)
    (root / "afile").write_text("a file the user wrote\n")
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _cmd(name: str, world: Path):
    """The argv of command ``name`` reading the earlier run, without ``--out``."""
    return dict(train=TRAIN, sample=SAMPLE + ["--checkpoint", world / "run"],
                nll=NLL + ["--checkpoint", world / "run"], demo=DEMO)[name]


# ---------------------------------------------------------------------------------------------
# A path of the wrong kind: exit status 2, before any work, nothing touched.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["train", "sample", "demo"])
def test_out_that_is_a_file(name, world, capsys):
    before = snapshot(world)
    code, out, err = _run(_cmd(name, world) + ["--out", world / "afile"], capsys)
    assert code == 2
    assert_reported(err, f"scoresde {name}: error: cannot write", world / "afile", "it is a file")
    assert_kept(before, world)


def test_nll_out_that_is_a_folder(world, capsys):
    before = snapshot(world)
    code, out, err = _run(_cmd("nll", world) + ["--out", world / "samples"], capsys)
    assert code == 2
    assert_reported(err, "scoresde nll: error: cannot write", world / "samples", "it is a folder",
                    world / "samples" / "nll_test.json")
    assert_kept(before, world)


@pytest.mark.parametrize("name, leaf", [("train", "r"), ("sample", "s"), ("nll", "x.json"), ("demo", "d")])
def test_out_below_a_file(name, leaf, world, capsys):
    before = snapshot(world)
    code, out, err = _run(_cmd(name, world) + ["--out", world / "afile" / leaf], capsys)
    assert code == 2
    assert_reported(err, f"scoresde {name}: error: cannot write", world / "afile" / leaf,
                    f"{str(world / 'afile')!r} is a file, not a folder")
    assert_kept(before, world)


@pytest.mark.parametrize("name", ["sample", "nll"])
def test_missing_checkpoint(name, world, capsys):
    before = snapshot(world)
    argv = (SAMPLE if name == "sample" else NLL) + ["--checkpoint", world / "missing.pt"]
    code, out, err = _run(argv, capsys)
    assert code == 2
    assert_reported(err, f"scoresde {name}: error: no checkpoint at", world / "missing.pt")
    assert_kept(before, world)


def test_train_resume_without_a_checkpoint(world, tmp_path, capsys):
    code, out, err = _run(TRAIN + ["--out", tmp_path / "empty", "--resume"], capsys)
    assert code == 2
    assert_reported(err, "scoresde train: error: resume", tmp_path / "empty" / "checkpoint_last.pt", "does not exist")


@pytest.mark.parametrize("name", ["sample", "nll"])
def test_checkpoint_that_is_a_folder(name, tmp_path, capsys):
    (tmp_path / "run" / "checkpoint_last.pt").mkdir(parents=True)
    argv = (SAMPLE if name == "sample" else NLL)
    for given in (tmp_path / "run", tmp_path / "run" / "checkpoint_last.pt", tmp_path):
        code, out, err = _run(argv + ["--checkpoint", given], capsys)
        assert code == 2
        assert_reported(err, f"scoresde {name}: error: no checkpoint at", given, "folder")
    assert (tmp_path / "run" / "checkpoint_last.pt").is_dir()


@pytest.mark.parametrize("name", ["train", "demo"])
def test_run_folder_whose_checkpoint_is_a_folder(name, tmp_path, capsys):
    run = tmp_path / "r" if name == "train" else tmp_path / "r" / "run"
    (run / "checkpoint_last.pt").mkdir(parents=True)
    (run / "checkpoint_last.pt" / "keep.txt").write_text("mine")
    code, out, err = _run(_cmd(name, tmp_path) + ["--out", tmp_path / "r"], capsys)
    assert code == 2
    assert_reported(err, f"scoresde {name}: error: cannot resume from", run / "checkpoint_last.pt", "is a folder")
    assert (run / "checkpoint_last.pt" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("name", ["train", "sample", "nll", "demo"])
def test_device_banana(name, world, tmp_path, capsys):
    before = snapshot(world)
    code, out, err = _run(_cmd(name, world) + ["--out", tmp_path / "o", "--device", "banana"], capsys)
    assert code == 2
    assert_reported(err, f"scoresde {name}: error: --device 'banana' is not a device; use cpu, cuda or cuda:N")
    assert not (tmp_path / "o").exists()
    assert_kept(before, world)


# ---------------------------------------------------------------------------------------------
# The system refuses: exit status 1, "cannot write PATH: reason", the earlier files intact.
# ---------------------------------------------------------------------------------------------
def _sample_argv(world: Path, out: Path):
    return [sys.executable, "-m", "scoresde.cli", *map(str, _cmd("sample", world)), "--out", str(out)]


@pytest.fixture(scope="module")
def launched(world, tmp_path_factory):
    """The cases that need processes of their own, started together (they wait on imports, so they
    overlap well): one :data:`RUNNER` for the cases where the system refuses a write, first a full
    disk (a file-size limit, as the owner of the files) then an unwritable folder (as user 65534);
    ``sample`` into a pipe whose reader is gone; ``sample ... | head -c 10``."""
    full = tmp_path_factory.mktemp("full")
    shutil.copytree(world / "run", full / "run")
    shutil.copytree(world / "samples", full / "samples")
    ckpt = full / "run" / "checkpoint_last.pt"
    small = max(p.stat().st_size for p in (full / "run").iterdir() if p != ckpt) + 2048
    assert ckpt.stat().st_size > small, "the limit must stop the checkpoint"
    disk = [(small, TRAIN + ["--out", full / "run", "--steps", "4"]),
            (64, _cmd("sample", world) + ["--out", full / "samples"])]
    unwritable = [TRAIN + ["--out", world / "fresh"], TRAIN + ["--out", world / "run", "--steps", "4"],
                  _cmd("sample", world) + ["--out", world / "samples"], _cmd("sample", world),
                  _cmd("nll", world) + ["--out", world / "nll.json"], DEMO + ["--out", world / "demo"]]
    private = world / "private" / "checkpoint_last.pt"  # a checkpoint only its owner may read
    if not private.exists():
        private.parent.mkdir()
        shutil.copy(world / "run" / "checkpoint_last.pt", private)
        private.chmod(0o600)
    unwritable.append(SAMPLE + ["--checkpoint", private, "--out", full / "never"])
    warm = [_cmd("nll", world) + ["--out", full / "warm.json"]]
    before = dict(full=snapshot(full), world=snapshot(world),
                  metrics=(full / "run" / "metrics.jsonl").read_bytes(),
                  config=json.loads((full / "run" / "config.json").read_text()))
    pipes = tmp_path_factory.mktemp("pipes")
    runner = start_runner([(False, [], disk), (True, warm, [(None, argv) for argv in unwritable])])
    rd, wr = os.pipe()
    os.close(rd)  # the reader is gone before the command starts: its first write fails
    try:
        closed = subprocess.Popen(_sample_argv(world, pipes / "closed"), stdout=wr, stderr=subprocess.PIPE,
                                  text=True, env=_env())
    finally:
        os.close(wr)
    line = " ".join(_sample_argv(world, pipes / "head"))
    head = subprocess.Popen(["bash", "-c", f"{line} | head -c 10; s=${{PIPESTATUS[0]}}; echo; echo status=$s"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    phases = runner_results(runner)
    (full / "warm.json").unlink()
    closed_err = closed.communicate(timeout=240)[1]
    head_out, head_err = head.communicate(timeout=240)
    return dict(full=full, disk=phases[0], unwritable=unwritable, unpriv=phases[1], before=before, pipes=pipes,
                closed=(closed.returncode, closed_err), head=(head_out, head_err))


def test_unwritable_folder_every_command(world, launched):
    """As user 65534 in folders owned by another user (0755): a fresh run, a resumed run, samples
    (--out given, and the default), bits/dim (its JSON exists: an atomic write needs the folder) and
    the demo, each stopped before any work; and a checkpoint only its owner may read."""
    results = launched["unpriv"]
    if isinstance(results, dict):
        pytest.skip(f"this machine refuses to switch to an unprivileged user: {results['refused']}")
    paths = [world / "fresh", world / "run", world / "samples", world / "run" / "samples", world / "nll.json",
             world / "demo"]
    *results, unreadable = results
    assert unreadable["code"] == 1, unreadable["err"][-600:]
    assert_reported(unreadable["err"], "scoresde sample: error: cannot read "
                    f"{str(world / 'private' / 'checkpoint_last.pt')!r}: Permission denied")
    assert len(results) == len(paths)
    for argv, path, r in zip(launched["unwritable"], paths, results):
        assert r["code"] == 1, (argv, r["err"][-600:])
        assert_reported(r["err"], f"scoresde {argv[0]}: error: cannot write {str(path)!r}: Permission denied",
                        "this user may not write in")
    assert "no checkpoint was written yet" in results[0]["err"]
    assert f"the last checkpoint {str(world / 'run' / 'checkpoint_last.pt')!r} is intact" in results[1]["err"]
    assert_kept(launched["before"]["world"], world)
    assert not (world / "fresh").exists() and not (world / "demo").exists()


def test_full_disk_train_and_sample(launched):
    """A file-size limit below the checkpoint (train resumes and fails at its first checkpoint write:
    torch.save's RuntimeError around the OSError, inside the training loop) and below the samples file."""
    full, before = launched["full"], dict(launched["before"]["full"])
    ckpt = full / "run" / "checkpoint_last.pt"
    tr, sa = launched["disk"]
    assert tr["code"] == 1, tr
    assert_reported(tr["err"], f"scoresde train: error: cannot write {str(ckpt)!r}: File too large",
                    f"the last checkpoint {str(ckpt)!r} is intact")
    assert sa["code"] == 1, sa
    assert_reported(sa["err"], "scoresde sample: error: cannot write "
                    f"{str(full / 'samples' / 'samples_pc.pt')!r}: File too large")
    assert (full / "run" / "metrics.jsonl").read_bytes().startswith(launched["before"]["metrics"])  # only grew
    config, cfg_now = launched["before"]["config"], json.loads((full / "run" / "config.json").read_text())
    moved = ("steps", "out_dir")  # the config as resumed: more steps, in the copy of the run
    assert cfg_now["steps"] == 4 and {k: v for k, v in cfg_now.items() if k not in moved} == {
        k: v for k, v in config.items() if k not in moved}
    for name in ("run/metrics.jsonl", "run/config.json"):
        before.pop(name)
    assert_kept(before, full)
    assert not [p for p in full.rglob("*.tmp")], "a temporary file was left behind"


# ---------------------------------------------------------------------------------------------
# A closed pipe: quiet, exit status 141 (128 + SIGPIPE).
# ---------------------------------------------------------------------------------------------
def test_sample_into_a_pipe_whose_reader_is_gone(launched):
    """The write of the summary line always fails: quiet, exit status 141, the files written whole."""
    code, err = launched["closed"]
    assert code == 141 and err == "", err
    assert torch.load(launched["pipes"] / "closed" / "samples_pc.pt", weights_only=False)["x"].shape == (4, 2)


def test_sample_piped_into_head(launched):
    """``scoresde sample ... | head -c 10``, a real shell pipeline (whether head is gone before the
    summary line is written depends on timing): head gets the start of the line, no traceback."""
    out, err = launched["head"]
    assert out.startswith("4 samples ") and out.split("status=")[-1].strip() in ("0", "141"), out
    assert "Traceback" not in err and "Error" not in err, err


# ---------------------------------------------------------------------------------------------
# Anything else that reaches the top: a message, never a traceback.
# ---------------------------------------------------------------------------------------------
def test_unexpected_error_is_reported_as_a_bug(world, monkeypatch, capsys):
    import scoresde.cli.sample as sample_cmd

    def broken(*a, **k):
        raise TypeError("a bug in a sampler")

    monkeypatch.delenv("SCORESDE_TRACEBACK", raising=False)
    monkeypatch.setattr(sample_cmd, "gather_chunks", broken)
    code, out, err = _run(_cmd("sample", world) + ["--out", world / "never"], capsys)
    assert code == 1
    assert_reported(err, "scoresde sample: error: unexpected TypeError: a bug in a sampler", "please report it")
    monkeypatch.setenv("SCORESDE_TRACEBACK", "1")
    code, out, err = _run(_cmd("sample", world) + ["--out", world / "never"], capsys)
    assert code == 1 and "Traceback" in err and "a bug in a sampler" in err


def test_an_os_error_anywhere_names_its_file(world, monkeypatch, capsys):
    import errno

    import scoresde.cli.sample as sample_cmd

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(world / "samples" / ".samples_pc.pt.abcd1234.tmp"))

    monkeypatch.setattr(sample_cmd, "gather_chunks", full)
    before = snapshot(world)
    code, out, err = _run(_cmd("sample", world) + ["--out", world / "samples"], capsys)
    assert code == 1
    assert_reported(err, f"scoresde sample: error: cannot write {str(world / 'samples' / 'samples_pc.pt')!r}: "
                    "No space left on device")
    assert_kept(before, world)


def test_interrupt_is_130_with_a_short_message(world, monkeypatch, capsys):
    import scoresde.cli.train as train_cmd

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cmd, "load_data", interrupted)
    before = snapshot(world)
    code, out, err = _run(TRAIN + ["--out", world / "run", "--steps", "4"], capsys)
    assert code == 130
    assert_reported(err, "scoresde train: interrupted (run the same command again to resume")
    assert_kept(before, world)

