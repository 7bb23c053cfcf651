"""The ``scoresde`` parser is generated: the ``train`` flags from the fields of ``TrainConfig``, the
``sample`` sampler options from the sampler registry. These tests tie the flags to their sources,
so a new field or sampler option that would not reach the command line fails here."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Optional, Tuple

import pytest

from scoresde.cli import build_parser
from scoresde.cli.common import UsageError
from scoresde.cli.flags import add_dataclass_flags, flag_name, nonneg_float, nonneg_int, positive_float, positive_int
from scoresde.cli.parser import COMMANDS
from scoresde.cli.sample import SHARED, option_specs, options_from_args, sampler_options
from scoresde.cli.train import RENAMES, REQUIRED, add_config_flags, config_from_args, field_choices
from scoresde.sampling import CORRECTORS, GRIDS, PREDICTORS, SAMPLERS
from scoresde.training import TrainConfig

#: train flags that are not TrainConfig fields
TRAIN_EXTRAS = {"help", "config", "resume", "threads", "no_progress"}


def _sub(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(COMMANDS)
    return sub.choices[name]


def _options(p: argparse.ArgumentParser) -> dict:
    """``{dest: action}`` of the optional arguments (the first action of a dest: ``--no-ema`` shares
    ``use_ema`` with ``--use-ema``)."""
    out = {}
    for a in p._actions:
        if a.option_strings:
            out.setdefault(a.dest, a)
    return out


# ---------------------------------------------------------------------------------------------
# train: one flag per TrainConfig field
# ---------------------------------------------------------------------------------------------
def test_train_flags_are_exactly_the_trainconfig_fields():
    opts = _options(_sub("train"))
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(opts) - TRAIN_EXTRAS == set(fields)
    for name, f in fields.items():
        a = opts[name]
        assert a.option_strings[0] == RENAMES.get(name, flag_name(name)), name
        assert f.metadata["help"] and f.metadata["help"] in a.help, name
        if name in REQUIRED:
            assert a.required and "(default" not in a.help
        else:  # "not given" on the command line; the help shows the field's default
            assert a.default is None and not a.required, name
            if f.default is None or f.default is False:  # nothing to show: not given is off / none
                assert "(default" not in a.help, name
            else:
                shown = ("on" if f.default is True else ",".join(map(str, f.default)) or "none"
                         if isinstance(f.default, tuple) else str(f.default))
                assert a.help.endswith(f"(default: {shown})"), (name, a.help)


def test_train_flag_spellings_of_today():
    opts = _options(_sub("train"))
    assert opts["out_dir"].option_strings == ["--out"]
    assert opts["sde_N"].option_strings == ["--sde-n"]
    assert opts["dequantize"].option_strings == ["--dequantize", "--no-dequantize"]
    for name in ("keep_checkpoints", "bf16", "compile"):
        assert opts[name].option_strings == [flag_name(name)] and opts[name].nargs == 0
    for name, choices in field_choices().items():
        assert tuple(opts[name].choices) == tuple(choices)


def test_train_defaults_are_the_trainconfig_defaults():
    args = build_parser().parse_args(["train", "--out", "runs/x"])
    assert config_from_args(args) == TrainConfig(out_dir="runs/x")


@pytest.mark.parametrize("argv, changes", [
    (["--no-dequantize", "--bf16", "--keep-checkpoints"], dict(dequantize=False, bf16=True, keep_checkpoints=True)),
    (["--channel-mults", "1,2,2", "--attn-resolutions", "4"], dict(channel_mults=(1, 2, 2), attn_resolutions=(4,))),
    (["--sde-n", "50", "--sde", "ve", "--sigma-max", "5"], dict(sde_N=50, sde="ve", sigma_max=5.0)),
    (["--warmup", "0", "--grad-clip", "0", "--eval-every", "10"], dict(warmup=0, grad_clip=0.0, eval_every=10)),
])
def test_train_flags_set_their_field(argv, changes):
    args = build_parser().parse_args(["train", "--out", "r"] + argv)
    assert config_from_args(args) == TrainConfig(out_dir="r", **changes)


def test_number_bounds_follow_trainconfig():
    """0 is accepted exactly where TrainConfig accepts it."""
    opts = _options(_sub("train"))
    for name in ("warmup", "seed", "eval_every"):
        assert opts[name].type is nonneg_int
    for name in ("weight_decay", "grad_clip", "ema_decay", "dropout"):
        assert opts[name].type is nonneg_float
    for name in ("steps", "batch_size", "hidden", "sde_N", "log_every", "checkpoint_every"):
        assert opts[name].type is positive_int
    for name in ("lr", "eps", "beta_min", "sigma_max"):
        assert opts[name].type is positive_float


@dataclasses.dataclass
class _Toy:
    width: int = dataclasses.field(default=4, metadata={"help": "how wide"})
    rate: float = dataclasses.field(default=0.5, metadata={"help": "how fast, 100% at 1"})
    name: Optional[str] = None
    mode: str = "a"
    fast: bool = False
    on: bool = True
    sizes: Tuple[int, ...] = (1, 2)

    def __post_init__(self):
        if self.width < 1:
            raise ValueError("width must be >= 1")


def test_the_generator_on_a_new_dataclass():
    p = argparse.ArgumentParser()
    actions = add_dataclass_flags(p, _Toy, renames={"sizes": "--size-list"}, choices={"mode": ("a", "b")})
    assert list(actions) == [f.name for f in dataclasses.fields(_Toy)]
    assert actions["width"].type is positive_int and actions["width"].help == "how wide (default: 4)"
    assert actions["rate"].type is nonneg_float and "100%" in p.format_help()
    assert actions["on"].option_strings == ["--on", "--no-on"] and actions["fast"].option_strings == ["--fast"]
    args = p.parse_args(["--width", "3", "--mode", "b", "--no-on", "--fast", "--size-list", "5,6", "--name", "z"])
    assert vars(args) == dict(width=3, rate=None, name="z", mode="b", fast=True, on=False, sizes=[5, 6])
    with pytest.raises(SystemExit):
        p.parse_args(["--width", "0"])


def test_a_new_trainconfig_field_gets_a_flag():
    @dataclasses.dataclass
    class Extended(TrainConfig):
        ema_start: int = dataclasses.field(default=10, metadata={"help": "step at which the EMA starts"})

    p = argparse.ArgumentParser()
    actions = add_dataclass_flags(p, Extended, renames=RENAMES, choices=field_choices())
    assert actions["ema_start"].option_strings == ["--ema-start"]
    assert actions["ema_start"].help == "step at which the EMA starts (default: 10)"
    assert actions["ema_start"].type is nonneg_int
    assert p.parse_args(["--ema-start", "7"]).ema_start == 7


def test_the_generator_refuses_a_type_it_cannot_read():
    @dataclasses.dataclass
    class Bad:
        table: dict = dataclasses.field(default_factory=dict)

    with pytest.raises(TypeError, match="Bad.table"):
        add_dataclass_flags(argparse.ArgumentParser(), Bad)


def test_other_commands_reuse_the_generated_flags():
    demo, nll = _options(_sub("demo")), _options(_sub("nll"))
    train = _options(_sub("train"))
    for name in ("steps", "seed"):
        assert demo[name].type is train[name].type and demo[name].option_strings == train[name].option_strings
    assert demo["seed"].default == 0 and demo["device"].default == "cpu" and demo["steps"].default is None
    assert nll["data_root"].option_strings == ["--data-root"] and nll["data_root"].default is None
    p = argparse.ArgumentParser()
    assert list(add_config_flags(p, only=("lr", "net"))) == ["net", "lr"]


@pytest.mark.parametrize("name", ["train", "sample", "nll"])
def test_every_run_command_has_the_shared_threads_flag(name):
    """One helper (cli.common.add_threads_flag) gives the commands their --threads: default 1, 0 allowed."""
    from scoresde.cli.common import DEFAULT_THREADS

    a = _options(_sub(name))["threads"]
    assert a.option_strings == ["--threads"] and a.type is nonneg_int and a.default == DEFAULT_THREADS == 1
    assert "single-threaded" in a.help and "torchrun" in a.help


# ---------------------------------------------------------------------------------------------
# sample: sampler names and options from the registry
# ---------------------------------------------------------------------------------------------
def test_sampler_choices_are_the_registry():
    opts = _options(_sub("sample"))
    assert tuple(opts["sampler"].choices) == tuple(SAMPLERS)
    assert tuple(opts["grid"].choices) == tuple(GRIDS)
    assert list(opts["predictor"].choices) == sorted(PREDICTORS)
    assert list(opts["corrector"].choices) == sorted(CORRECTORS)
    assert set(SHARED) <= set(opts)


def _value(action: argparse.Action) -> list:
    if action.nargs == 0:
        return []
    return [str(list(action.choices)[0])] if action.choices else ["1"]


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_option_of_every_sampler_is_reachable(sampler):
    opts = _options(_sub("sample"))
    for opt in SAMPLERS[sampler].option_names:
        assert opt in opts, f"{sampler} option {opt} has no flag"
        a = opts[opt]
        assert a.option_strings[0] == flag_name(opt) and sampler in a.help
        args = build_parser().parse_args(["sample", "--checkpoint", "x", "--sampler", sampler,
                                          a.option_strings[0], *_value(a)])
        assert options_from_args(args) == {opt: getattr(args, opt)}


def test_an_option_is_refused_by_the_samplers_that_do_not_take_it():
    for opt, takers in sampler_options():
        other = next(s for s in SAMPLERS if s not in takers)
        a = _options(_sub("sample"))[opt]
        args = build_parser().parse_args(["sample", "--checkpoint", "x", "--sampler", other, a.option_strings[0],
                                          *_value(a)])
        with pytest.raises(UsageError, match=f"{flag_name(opt)} do\\(es\\) not apply to --sampler {other}"):
            options_from_args(args)


def test_every_sampler_option_has_a_typed_spec():
    """A new sampler option still gets a flag (it reads a number, true/false or a word); this test
    asks for its entry in option_specs so that it gets its real type and a help line."""
    missing = sorted({opt for opt, _ in sampler_options()} - set(option_specs()))
    assert not missing, f"add these sampler options to scoresde.cli.sample.option_specs: {missing}"


def test_a_new_sampler_option_gets_a_flag(monkeypatch):
    import scoresde.sampling as sampling

    class Knobby(type(SAMPLERS["ddim"])):
        name = "knobby"
        option_names = ("new_knob",)

    monkeypatch.setattr(sampling, "SAMPLERS", dict(SAMPLERS, knobby=Knobby()))
    args = build_parser().parse_args(["sample", "--checkpoint", "x", "--sampler", "knobby", "--new-knob", "0.5"])
    assert options_from_args(args) == dict(new_knob=0.5)
