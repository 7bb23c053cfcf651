"""The entry point: dispatch to a command and turn every user error into a message, never a traceback."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from .common import UsageError, torch_threads
from .parser import COMMANDS, build_parser

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``scoresde`` command line; returns the exit status (0 done, 1 the run failed, 2 a usage
    error reported with a message, 130 interrupted). A command's ``--threads`` is applied around
    its run (and the previous thread count restored, for callers in the same process)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        parser.exit(2, f"scoresde: error: choose a command: {', '.join(COMMANDS[:-1])} or {COMMANDS[-1]}\n")
    try:
        with torch_threads(getattr(args, "threads", None)):
            return int(args.func(args) or 0)
    except UsageError as e:
        args.parser.error(str(e))
    except KeyboardInterrupt:
        print(f"\nscoresde {args.command}: interrupted" + (" (run the same command again to resume from the last "
              "checkpoint)" if args.command in ("train", "demo") else ""), file=sys.stderr)
        return 130
    return 0  # pragma: no cover - parser.error exits
