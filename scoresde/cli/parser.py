"""The ``scoresde`` argument parser: one sub-command per module of this package."""
from __future__ import annotations

import argparse

__all__ = ["build_parser", "COMMANDS"]

#: The sub-commands, in the order ``scoresde --help`` lists them (modules of ``scoresde.cli``).
COMMANDS = ("train", "sample", "nll", "demo")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command: each command module gives its ``NAME``, ``HELP``,
    ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> exit status``."""
    import importlib

    p = argparse.ArgumentParser(prog="scoresde", description="Continuous-time score-based generative models: "
                                "train, sample, evaluate bits/dim, or run the end-to-end demo.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        cmd = importlib.import_module(f".{name}", __package__)
        c = sub.add_parser(cmd.NAME, help=cmd.HELP, description=cmd.DESCRIPTION)
        cmd.add_arguments(c)
        c.set_defaults(func=cmd.run, parser=c)
    return p
