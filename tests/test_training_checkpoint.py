"""scoresde.training.checkpoint: atomic checkpoints that survive a failed write, bitwise resume,
refused resumes, kept copies."""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from scoresde.training import CHECKPOINT_NAME, load_checkpoint, train
from _training import _assert_same_state, _cfg, _labelled, _records

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------------------------------------
# Checkpoints and resume.
# ---------------------------------------------------------------------------------------------
def _tmp_files(folder):
    return [f for f in os.listdir(folder) if f.endswith(".tmp")]


@pytest.mark.parametrize("where", ["torch.save", "os.replace"])
def test_failed_checkpoint_write_keeps_the_old_checkpoint(tmp_path, toy, monkeypatch, where):
    cfg = _cfg(tmp_path, steps=4)
    train(cfg, dataset=toy, progress=False)
    ckpt = tmp_path / "run" / CHECKPOINT_NAME
    before = ckpt.read_bytes()

    if where == "torch.save":
        def broken(obj, f, *a, **k):
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError("disk full (simulated)")
        monkeypatch.setattr(torch, "save", broken)
    else:
        real = os.replace

        def broken(src, dst, *a, **k):
            if str(dst).endswith(".pt"):
                raise OSError("crash before the rename (simulated)")
            return real(src, dst, *a, **k)
        monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="simulated"):
        train(cfg.replace(steps=8), dataset=toy, progress=False)
    monkeypatch.undo()
    assert ckpt.read_bytes() == before
    assert load_checkpoint(ckpt)["step"] == 4
    assert _tmp_files(tmp_path / "run") == []


@pytest.mark.parametrize("num_classes", [0, 2], ids=["unconditional", "conditional"])
def test_resume_is_bitwise_identical(tmp_path, toy, num_classes):
    """Also for a class-conditional run: its labels come with the batch indices and its label-dropout
    masks from the checkpointed generator, so a resumed run sees the same labels and masks."""
    if num_classes:
        toy = _labelled(toy, num_classes)
    cfg = _cfg(tmp_path, "full", eval_every=1, num_classes=num_classes, p_uncond=0.3)
    full = train(cfg, dataset=toy, progress=False)

    # (a) killed by an exception at step 6: the last checkpoint is step 4
    def kill(step, model, ema, cfg):
        if step == 6:
            raise KeyboardInterrupt

    cut = cfg.replace(out_dir=str(tmp_path / "cut"))
    with pytest.raises(KeyboardInterrupt):
        train(cut, dataset=toy, hooks=[kill], progress=False)
    assert load_checkpoint(tmp_path / "cut" / CHECKPOINT_NAME)["step"] == 4
    resumed = train(cut, dataset=toy, progress=False)
    assert resumed.resumed_from == 4 and resumed.step == 12

    # (b) stopped by the step limit at 6 (not a checkpoint multiple), then extended to 12
    short = cfg.replace(out_dir=str(tmp_path / "short"), steps=6)
    train(short, dataset=toy, progress=False)
    extended = train(short.replace(steps=12), dataset=toy, progress=False, resume=True)
    assert extended.resumed_from == 6

    for other in (resumed, extended):
        _assert_same_state(full.model, other.model)
        _assert_same_state(full.ema_model, other.ema_model)
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    for k, v in a["optimizer"]["state"].items():
        for name in v:
            assert torch.equal(v[name], b["optimizer"]["state"][k][name])
    assert torch.equal(a["rng"]["generator"], b["rng"]["generator"])
    # the metrics log of the resumed run has the same train records (times aside)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]  # noqa: E731
    assert strip(_records(full.metrics_path)) == strip(_records(resumed.metrics_path))


def test_resume_refuses_a_changed_configuration(tmp_path, toy):
    cfg = _cfg(tmp_path, steps=4)
    train(cfg, dataset=toy, progress=False)
    with pytest.raises(ValueError, match=r"lr: 0\.01 -> 0\.02"):
        train(cfg.replace(lr=0.02, steps=8), dataset=toy, progress=False)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(cfg, dataset=toy, progress=False, resume=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(cfg.replace(out_dir=str(tmp_path / "empty")), dataset=toy, progress=False, resume=True)
    # nothing left to do: the checkpoint is returned as it is
    again = train(cfg, dataset=toy, progress=False)
    assert again.resumed_from == 4 and again.step == 4


def test_keep_checkpoints_keeps_each_step(tmp_path, toy):
    cfg = _cfg(tmp_path, steps=8, keep_checkpoints=True)
    train(cfg, dataset=toy, progress=False)
    run = tmp_path / "run"
    assert load_checkpoint(run / "checkpoint_00000004.pt")["step"] == 4
    assert load_checkpoint(run / "checkpoint_00000008.pt")["step"] == 8
    assert load_checkpoint(run / CHECKPOINT_NAME)["step"] == 8


def test_a_conditional_run_does_not_resume_on_other_labels(tmp_path, toy):
    """The data fingerprint of a class-conditional run covers its labels: the same points with other
    labels are other training data."""
    ds = _labelled(toy, 2)
    cfg = _cfg(tmp_path, steps=4, num_classes=2)
    train(cfg, dataset=ds, progress=False)
    flipped = dataclasses.replace(ds, train_labels=1 - ds.train_labels)
    with pytest.raises(ValueError, match="other data"):
        train(cfg.replace(steps=8), dataset=flipped, progress=False)
    assert train(cfg.replace(steps=8), dataset=ds, progress=False).resumed_from == 4


def test_a_checkpoint_stored_before_unet_conditioning_rebuilds_the_add_unet(tmp_path, monkeypatch):
    """A U-Net configuration without the field (written before it existed) computed DDPM's additive
    conditioning: load_model rebuilds that network with its weights, the same outputs; a config that
    is not stored (a new run) gets the new default, and resuming the old run with it is refused."""
    from scoresde import TrainConfig, load_model, train
    from scoresde.training.config import LEGACY

    cfg = _cfg(tmp_path, "old", dataset="digits", net="unet", channels=8, steps=2, checkpoint_every=2,
               unet_conditioning="add")
    plain = TrainConfig.to_dict
    monkeypatch.setattr(TrainConfig, "to_dict", lambda self: {k: v for k, v in plain(self).items() if k not in LEGACY})
    res = train(cfg, progress=False)
    monkeypatch.setattr(TrainConfig, "to_dict", plain)
    stored = torch.load(tmp_path / "old" / "checkpoint_last.pt", weights_only=True)["config"]
    assert "unet_conditioning" not in stored
    assert TrainConfig.from_dict(stored, stored=True).unet_conditioning == "add"
    assert TrainConfig.from_dict(stored).unet_conditioning == "scale_shift"
    assert TrainConfig.from_dict({**stored, "net": "mlp"}, stored=True).unet_conditioning == "scale_shift"
    model, got, _ = load_model(tmp_path / "old")
    assert got.unet_conditioning == "add" and model.net.conditioning == "add"
    x, t = torch.randn(3, 1, 8, 8), torch.full((3,), 0.4)
    with torch.no_grad():
        assert torch.equal(model(x, t), res.ema_model.eval()(x, t))
    with pytest.raises(ValueError, match="unet_conditioning: 'add' -> 'scale_shift'"):
        train(cfg.replace(unet_conditioning="scale_shift", steps=4), progress=False)
