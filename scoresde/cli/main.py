"""The entry point: dispatch to a command and turn every error into a message, never a traceback.

Exit statuses: 0 done; 1 the run failed (the loss diverged, a file the system refused to read or
write: ``cannot write PATH: reason``, or an unexpected error, reported as a bug); 2 a usage error;
130 interrupted (Ctrl-C); 141 the reader of the output went away (``scoresde ... | head``: a
``BrokenPipeError``, handled quietly, as a command killed by ``SIGPIPE`` would exit). Setting the
environment variable ``SCORESDE_TRACEBACK=1`` prints the traceback of an unexpected error too.
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from .files import FileError, UsageError, file_error, os_error_in

__all__ = ["main", "EXIT_BROKEN_PIPE"]

#: The exit status when stdout (or stderr) was closed by its reader: 128 + SIGPIPE (13).
EXIT_BROKEN_PIPE = 141
#: Where an unexpected error is to be reported.
ISSUES = "the scoresde issue tracker"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``scoresde`` command line; returns the exit status (module docstring). A command's
    ``--threads`` is applied around its run (and the previous thread count restored, for callers in
    the same process)."""
    try:
        return _main(argv)
    except BrokenPipeError:
        return _output_closed()


def _main(argv: Optional[Sequence[str]]) -> int:
    from .common import torch_threads
    from .parser import COMMANDS, build_parser

    command, args = None, None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        command = args.command
        if command is None:
            parser.print_help(sys.stderr)
            parser.exit(2, f"scoresde: error: choose a command: {', '.join(COMMANDS[:-1])} or {COMMANDS[-1]}\n")
        with torch_threads(getattr(args, "threads", None)):
            return int(args.func(args) or 0)
    except UsageError as e:
        args.parser.error(str(e))
    except KeyboardInterrupt:
        print(f"\nscoresde{_name(command)}: interrupted" + (" (run the same command again to resume from the last "
              "checkpoint)" if command in ("train", "demo") else ""), file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
    except Exception as e:  # the catch-all: no command ends in a traceback
        return _failed(command, e)
    return 0  # pragma: no cover - parser.error exits


def _name(command: Optional[str]) -> str:
    return f" {command}" if command else ""


def _failed(command: Optional[str], e: Exception) -> int:
    """Report an error that reached the top: a file-system error as ``cannot write PATH: reason``,
    anything else as an unexpected error with the request to report it; exit status 1."""
    if isinstance(e, FileError) or os_error_in(e) is not None:
        msg = str(file_error(e))
    else:
        msg = (f"unexpected {type(e).__name__}: {e}\nThis is a bug in scoresde (or a case it does not know); "
               f"please report it on {ISSUES} with the command line and this message "
               "(SCORESDE_TRACEBACK=1 shows the traceback)")
        if os.environ.get("SCORESDE_TRACEBACK"):
            import traceback

            traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    print(f"scoresde{_name(command)}: error: {msg}", file=sys.stderr)
    return 1


def _output_closed() -> int:
    """The reader of stdout went away (``| head``): the Python recipe for ``BrokenPipeError``: point
    stdout at ``os.devnull`` so that the flush at exit does not fail again, and exit quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture): nothing to redirect
        pass
    return EXIT_BROKEN_PIPE
