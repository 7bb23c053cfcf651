"""The ``scoresde`` command: ``train``, ``sample``, ``nll`` and ``demo`` (see ``docs/cli.md``).

Every command has ``--help``. A wrong option or an impossible value (negative steps, a missing
checkpoint file, ``--dataset mnist`` without ``--data-root``, ``--out`` naming a file where a folder
is needed, ...) exits with status 2 and a message that says what to change; a run that fails (the
loss diverges, a file the system refuses to read or write: ``cannot write PATH: reason``, an
unexpected error) exits with status 1; Ctrl-C exits with 130; a closed output pipe (``| head``)
with 141, quietly. No command ends in a traceback. Files are written atomically (temporary file +
rename), so a failed write leaves the previous file as it was (:mod:`~scoresde.cli.files`).

One module per command (:mod:`~scoresde.cli.train`, :mod:`~scoresde.cli.sample`,
:mod:`~scoresde.cli.nll`, :mod:`~scoresde.cli.demo`), each with its options and its ``run``;
:mod:`~scoresde.cli.parser` assembles them, :mod:`~scoresde.cli.main` dispatches and reports
every error, :mod:`~scoresde.cli.files` words the file-system errors.
The ``train`` options are generated from the fields of ``TrainConfig``
(:mod:`~scoresde.cli.flags`), the ``sample`` options from the sampler registry. Nothing heavy is
imported until a command runs or the parser is built.
"""
from .main import main
from .parser import build_parser

__all__ = ["main", "build_parser"]
