"""Writing files so that nothing a user wrote is ever lost: write to a temporary file in the same
folder, flush it to disk, then rename it over the target (``os.replace`` is atomic on POSIX and
Windows). A crash leaves either the old file or the new one, never half of one."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, List, Union

#: How :func:`atomic_write_with` names its temporary file for a target ``name``: ``.<name>.<8 chars>.tmp``
#: (``tempfile.mkstemp``'s random part: lower-case letters, digits and ``_``), in the target's folder.
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"


def atomic_write_with(path: Union[str, Path], write: Callable[[BinaryIO], None]) -> Path:
    """Create ``path`` atomically from ``write(f)``, which writes to a binary file object: a temporary
    file in the same folder is written, flushed and fsynced, then renamed onto ``path``, so a crash
    or an exception leaves either the old file or the new one, never half of one; parent folders
    are created. The file gets the usual permissions (``0666`` less the umask), not ``mkstemp``'s
    ``0600``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX + path.name + ".", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write(path: Union[str, Path], data: Union[bytes, str]) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically (see :func:`atomic_write_with`)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return atomic_write_with(path, lambda f: f.write(data))


def stale_temp_files(folder: Union[str, Path], name_regex: str) -> List[Path]:
    """The temporary files of :func:`atomic_write_with` (``.<name>.<8 chars>.tmp``; also
    ``.<name>.tmp``, the fixed name of a link made before a rename) left in ``folder`` by a writer
    that was killed, for the targets whose name matches the regular expression ``name_regex``
    (matched whole). Only regular files that fit this exact pattern are listed, never a file the
    user named; the caller must know that no writer of these targets is still running."""
    random_part = r"(?:\.[a-z0-9_]{8})?"
    pattern = re.compile(re.escape(TEMP_PREFIX) + f"(?:{name_regex})" + random_part + re.escape(TEMP_SUFFIX))
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    return sorted(folder / e.name for e in entries if pattern.fullmatch(e.name) and e.is_file(follow_symlinks=False))
