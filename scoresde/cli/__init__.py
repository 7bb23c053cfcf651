"""The ``scoresde`` command: ``train``, ``sample``, ``nll`` and ``demo`` (see ``docs/cli.md``).

Every command has ``--help``. A wrong option or an impossible value (negative steps, a missing
checkpoint file, ``--dataset mnist`` without ``--data-root``, ...) exits with status 2 and a
message that says what to change; a run that fails (e.g. the loss diverges) exits with status 1;
Ctrl-C exits with 130. Files are written atomically (temporary file + rename).

One module per command (:mod:`~scoresde.cli.train`, :mod:`~scoresde.cli.sample`,
:mod:`~scoresde.cli.nll`, :mod:`~scoresde.cli.demo`), each with its options and its ``run``;
:mod:`~scoresde.cli.parser` assembles them, :mod:`~scoresde.cli.main` dispatches.
The ``train`` options are generated from the fields of ``TrainConfig``
(:mod:`~scoresde.cli.flags`), the ``sample`` options from the sampler registry. Nothing heavy is
imported until a command runs or the parser is built.
"""
from .main import main
from .parser import build_parser

__all__ = ["main", "build_parser"]
