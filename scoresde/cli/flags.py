"""Argument types and the flag generator: one command-line flag per field of a dataclass.

:func:`add_dataclass_flags` reads everything a flag needs from the dataclass itself: the flag from
the field name (``batch_size`` -> ``--batch-size``, unless renamed), the type from the field's type
hint, the help from ``field(metadata={"help": ...})`` with the field's default appended, and the
lower bound of a number from the dataclass's own validation (0 is accepted on the command line
exactly when the dataclass accepts it). Every flag's argparse default is ``None``, meaning "not
given", so a command can merge the options over another source (``train --config FILE``).

The argument types (:func:`positive_int`, ...) decide with the shared validators of
:mod:`scoresde._utils` and word the message for a command line.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Callable, Collection, Dict, List, Mapping, Optional, Tuple

__all__ = ["positive_int", "nonneg_int", "positive_float", "nonneg_float", "int_list", "add_dataclass_flags",
           "flag_name"]


# ---------------------------------------------------------------------------------------------
# Argument types: argparse calls them on the text and reports an ArgumentTypeError as
# "argument --flag: <message>" with exit status 2.
# ---------------------------------------------------------------------------------------------
def _int(text: str, lo: int, what: str) -> int:
    from .._utils import check_int

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    try:
        return check_int("value", v, lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {v}") from None


def _float(text: str, lo_open: bool, expected: str, must: str) -> float:
    from .._utils import check_number

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    try:
        return check_number("value", v, 0.0, lo_open=lo_open)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {must}, got {text}") from None


def positive_int(text: str) -> int:
    return _int(text, 1, "a positive integer")


def nonneg_int(text: str) -> int:
    return _int(text, 0, "an integer >= 0")


def positive_float(text: str) -> float:
    return _float(text, True, "a positive number", "a finite positive number")


def nonneg_float(text: str) -> float:
    return _float(text, False, "a number >= 0", "a finite number >= 0")


def int_list(text: str) -> List[int]:
    """``"1,2,2"`` -> ``[1, 2, 2]`` (empty parts are skipped, so ``""`` is the empty list)."""
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,2, got {text!r}") from None


# ---------------------------------------------------------------------------------------------
# The generator.
# ---------------------------------------------------------------------------------------------
def flag_name(name: str) -> str:
    """The default flag of a field or option: ``n_corrector_steps`` -> ``--n-corrector-steps``
    (the case is kept: ``S_churn`` -> ``--S-churn``)."""
    return "--" + name.replace("_", "-")


def _accepts_zero(cls: type, name: str, zero: Any) -> bool:
    """Whether the dataclass accepts 0 for the field (all other fields at their defaults)."""
    try:
        cls(**{name: zero})
    except (ValueError, TypeError):
        return False
    return True


#: (type hint, 0 allowed) -> argument type
_NUMBER_TYPES: Dict[Tuple[type, bool], Callable[[str], Any]] = {
    (int, False): positive_int, (int, True): nonneg_int, (float, False): positive_float, (float, True): nonneg_float,
}


def _flag_kind(cls: type, f: dataclasses.Field, hint: Any, flag: str, choices: Optional[Collection[str]]) -> dict:
    """The argparse keywords that say how the flag of field ``f`` reads its value."""
    metavar = flag.lstrip("-").upper().replace("-", "_")
    if hint is bool:  # a switch: --name / --no-name when the default is on, else just --name
        return dict(action=argparse.BooleanOptionalAction if f.default is True else "store_true")
    if hint in (int, float):
        return dict(type=_NUMBER_TYPES[hint, _accepts_zero(cls, f.name, hint(0))], metavar=metavar)
    if hint in (str, Optional[str]):
        return dict(choices=tuple(choices)) if choices else dict(type=str, metavar=metavar)
    if typing.get_origin(hint) in (tuple, list) and typing.get_args(hint) in ((int, ...), (int,)):
        return dict(type=int_list, metavar=metavar)  # Tuple[int, ...], tuple[int, ...], List[int]
    raise TypeError(f"no command-line type for {cls.__name__}.{f.name}: {hint!r}; give it a bool, int, float, "
                    "str, Optional[str] or Tuple[int, ...] type, or leave it out (only=...)")


def _shown(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, (tuple, list)):
        return ",".join(str(x) for x in v) if v else "none"
    return str(v)


def _help(f: dataclasses.Field, kind: dict, default: Any, required: bool) -> str:
    text = f.metadata.get("help", "")
    if default is not None and not required and kind.get("action") != "store_true":
        text = f"{text} (default: {_shown(default)})".lstrip()
    return text.replace("%", "%%")  # argparse formats help with %


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, *, renames: Optional[Mapping[str, str]] = None,
                        choices: Optional[Mapping[str, Collection[str]]] = None, required: Collection[str] = (),
                        only: Optional[Collection[str]] = None, defaults: Optional[Mapping[str, Any]] = None,
                        helps: Optional[Mapping[str, str]] = None) -> Dict[str, argparse.Action]:
    """Add a flag for every field of the dataclass ``cls`` (or the fields in ``only``), in field
    order; returns ``{field name: argparse action}``. The parsed value lands under the field name.

    ``renames`` maps a field to its flag where it is not :func:`flag_name` of the field;
    ``choices`` gives the allowed values of a ``str`` field; ``required`` fields must be given;
    ``defaults`` replaces the "not given" ``None`` of a flag (and the default shown in its help),
    for commands that use a field with a default of their own; ``helps`` replaces a flag's help.
    Types: ``bool`` (a switch; ``--no-NAME`` too when the field defaults to on), ``int`` and
    ``float`` (positive, or ``>= 0`` where ``cls`` accepts 0), ``str`` / ``Optional[str]``,
    ``Tuple[int, ...]`` (comma-separated integers).
    """
    renames, choices, defaults, helps = renames or {}, choices or {}, defaults or {}, helps or {}
    hints = typing.get_type_hints(cls)
    actions: Dict[str, argparse.Action] = {}
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        flag = renames.get(f.name, flag_name(f.name))
        kind = _flag_kind(cls, f, hints[f.name], flag, choices.get(f.name))
        default = defaults.get(f.name)
        is_required = f.name in required
        text = helps[f.name] if f.name in helps else _help(f, kind, f.default if default is None else default,
                                                            is_required)
        extra = dict(required=True) if is_required else dict(default=default)
        actions[f.name] = parser.add_argument(flag, dest=f.name, help=text, **kind, **extra)
    return actions
