"""File-system errors of the command line: the two errors a command reports, and the checks of an
output path made before any work is done.

A command never ends in a traceback. A user error is a :class:`UsageError` (``parser.error``: the
usage and ``scoresde CMD: error: MESSAGE``, exit status 2); a file or folder the system refused to
read or write is a :class:`FileError`, ``scoresde CMD: error: cannot write PATH: reason`` (exit
status 1), where the reason is the system's (``Permission denied``, ``File too large``, ``No space
left on device``, ...). Every file is written atomically (a temporary file in the same folder, then
``os.replace``, :mod:`scoresde.io`), so a failed write leaves the previous file as it was.

:func:`file_error` turns any exception that is, or was raised while handling, an ``OSError`` (torch
wraps the ``OSError`` of a failed ``torch.save`` in a ``RuntimeError``) into a :class:`FileError`
naming the file: the error's own file name (a temporary file of :mod:`scoresde.io` is named by the
file it would have become), else the file :func:`scoresde.io.atomic_write_with` was writing when it
failed, else the path the caller gives.
"""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Optional, Union

__all__ = ["UsageError", "FileError", "os_error_in", "file_error", "check_output"]

#: errnos that only a write reports
WRITE_ERRNOS = frozenset(getattr(errno, n) for n in ("EFBIG", "ENOSPC", "EROFS", "EDQUOT", "EEXIST", "ENOTEMPTY",
                                                     "EXDEV", "EMLINK") if hasattr(errno, n))
#: the temporary files of scoresde.io: "." + name + "." + mkstemp's 8 characters + ".tmp" (atomic_write_with),
#: "." + name + ".tmp" (the link the training checkpoint keeps before its rename)
_TEMP = re.compile(r"^\.(?P<name>.+?)(?:\.[A-Za-z0-9_]{8})?\.tmp$")


class UsageError(Exception):
    """Raised inside a command for a user error: reported through ``parser.error`` (exit status 2)."""


class FileError(Exception):
    """A file or folder the system refused to read or write: ``cannot VERB 'PATH': REASON[; NOTE]``,
    reported as ``scoresde CMD: error: ...`` with exit status 1 (no usage: the command line was fine)."""

    def __init__(self, verb: str, path: Union[str, Path, None], reason: str, note: str = ""):
        self.verb, self.path, self.reason, self.note = verb, path, reason, note
        where = f" {str(path)!r}" if path is not None else ""
        super().__init__(f"cannot {verb}{where}: {reason}" + (f"; {note}" if note else ""))

    def with_note(self, note: str) -> "FileError":
        """The same error with ``note`` appended (e.g. that the previous checkpoint is intact)."""
        return FileError(self.verb, self.path, self.reason, "; ".join(n for n in (self.note, note) if n))


def os_error_in(e: BaseException) -> Optional[OSError]:
    """The ``OSError`` with an errno that ``e`` is, or that was being handled when ``e`` was raised
    (``__cause__`` / ``__context__``); ``None`` when there is none. An ``OSError`` without an errno is
    a message of this package (``FileNotFoundError("no checkpoint at ...")``), not a system error."""
    seen = 0
    cur: Optional[BaseException] = e
    while cur is not None and seen < 20:
        if isinstance(cur, OSError) and cur.errno is not None:
            return cur
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None


def _named(filename) -> Optional[Path]:
    """The file an error names; a temporary file of :mod:`scoresde.io` as the file it would have become."""
    if filename is None or isinstance(filename, int):
        return None
    p = Path(os.fsdecode(filename))
    m = _TEMP.match(p.name)
    return p.with_name(m.group("name")) if m else p


def _writing(e: BaseException) -> Optional[Path]:
    """The ``path`` of the innermost :func:`scoresde.io.atomic_write_with` call in ``e``'s traceback."""
    found, tb = None, e.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "atomic_write_with" and Path(code.co_filename).name == "io.py":
            found = tb.tb_frame.f_locals.get("path", found)
        tb = tb.tb_next
    return Path(found) if found is not None else None


def _verb(err: OSError, path: Optional[Path]) -> str:
    if err.errno in WRITE_ERRNOS or path is None:
        return "write"
    if err.errno in (errno.EACCES, errno.EPERM) and path.is_file() and not os.access(path, os.R_OK):
        return "read"
    if err.errno == errno.ENOENT and not path.exists() and path.parent.is_dir():
        return "read"
    return "write"


def file_error(e: BaseException, *, path: Union[str, Path, None] = None, verb: Optional[str] = None,
               note: str = "") -> FileError:
    """The :class:`FileError` of ``e`` (an ``OSError``, or an exception raised while handling one).

    The path is the one the error names (``filename2`` of a rename first: the target), else the file
    :mod:`scoresde.io` was writing, else ``path``; the reason is the system's ``strerror``. ``verb``
    (``"read"`` / ``"write"``) defaults to a guess from the errno and the file: a write unless the
    file exists and cannot be read, or it is missing in an existing folder."""
    if isinstance(e, FileError):
        return e.with_note(note) if note else e
    err = os_error_in(e)
    if err is None:
        raise TypeError(f"file_error needs an OSError (or an error raised while handling one), got "
                        f"{type(e).__name__}") from e
    named = _named(err.filename2) or _named(err.filename) or _writing(e)
    if named is None and path is not None:
        named = Path(path)
    reason = err.strerror or os.strerror(err.errno)
    return FileError(verb or _verb(err, named), named, reason, note)


def check_output(path: Path, *, kind: str, flag: str = "--out", example: str = "") -> None:
    """Check, before any work, that ``path`` can become the output ``kind`` (``"folder"`` or
    ``"file"``): the path is not of the other kind, no folder above it is a file, and the folder that
    would hold it is writable by this user. A path of the wrong kind is a :class:`UsageError` (exit
    status 2, nothing is touched); a folder the user may not write a :class:`FileError`."""
    path = Path(path)
    if kind == "folder" and path.exists() and not path.is_dir():
        raise UsageError(f"cannot write {str(path)!r}: it is a file, and {flag} names a folder; choose another "
                         f"{flag} (the file is left as it is)")
    if kind == "file" and path.is_dir():
        raise UsageError(f"cannot write {str(path)!r}: it is a folder, and {flag} names a file; give a file name"
                         + (f" such as {str(path / example)!r}" if example else ""))
    anc = path if kind == "folder" else path.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise UsageError(f"cannot write {str(path)!r}: {str(anc)!r} is a file, not a folder; choose another {flag}")
    if not os.access(anc, os.W_OK | os.X_OK):
        read_only = bool(getattr(os, "ST_RDONLY", 0) and os.statvfs(anc).f_flag & os.ST_RDONLY)
        raise FileError("write", path, os.strerror(errno.EROFS if read_only else errno.EACCES),
                        f"this user may not write in {str(anc)!r}; choose another {flag} or fix its permissions")
