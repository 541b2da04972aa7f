"""Files that must never be left half-written: write to a temporary file, then rename over.

A write that fails (full or read-only file system, no permission) raises :class:`WriteError`, whose
message names the file and what to do, never a bare errno; the file that was there stays intact.
Only a regular file is ever renamed over: a FIFO, a device node, a socket or a directory at the path
is the user's, so the write is refused by name (:func:`not_regular`); a symbolic link is followed
(its target is replaced, the link stays).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any


class WriteError(OSError):
    """A file could not be written; the message names it, the cause and what to do."""


_ADVICE = {
    errno.ENOSPC: "the file system is full: free some space there, or write somewhere else",
    errno.EDQUOT: "your disk quota is used up: free some space, or write somewhere else",
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.EACCES: "you have no permission to write there: write somewhere else",
    errno.EPERM: "you have no permission to write there: write somewhere else",
    errno.ENOTDIR: "a part of the path is a file, not a directory: choose another path",
}


WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # errors of the file system, whatever the file


def write_error(err: OSError, path: Path | str) -> WriteError:
    """``err`` (from writing ``path``) as a :class:`WriteError` that names the path and says what to do."""
    if isinstance(err, WriteError):
        return err
    advice = _ADVICE.get(err.errno or 0, "")
    cause = err.strerror or str(err)
    out = WriteError(f"cannot write {path}: {cause}" + (f"; {advice}" if advice else ""))
    out.errno = err.errno  # str(out) stays the message alone (no "[Errno 28]" prefix)
    return out


_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def not_regular(path: Path | str) -> str | None:
    """What ``path`` is when it exists and is not a regular file (``"a FIFO (named pipe)"``), else None.
    An atomic write renames a new file over the path: it would replace such a thing, never write into it."""
    try:
        mode = os.stat(path).st_mode  # follows links: a link to a regular file is fine
    except OSError:
        return None
    return next((kind for test, kind in _KINDS if test(mode)), None if stat.S_ISREG(mode) else "not a regular file")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(os.path.realpath(path))  # through a symbolic link: replace its target, keep the link
    kind = not_regular(path)
    if kind:
        raise WriteError(f"cannot write {path}: it is {kind}, not a regular file; fpt writes a file whole (a temporary "
                         "file renamed over the old one), which would replace it. Write to a regular file instead")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise write_error(err, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise write_error(err, path) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
