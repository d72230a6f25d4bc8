"""Files written whole or not at all.

A full disk, a file-size limit or Ctrl-C in the middle of a write must not leave half a file
where a later stage (or a re-run that sees the file and skips its work) would take it for a
complete one: CMVN statistics, ARPA files, lexicons, hypotheses, logs, checkpoints
(:mod:`asr.checkpoint` does the same with ``torch.save``).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _create_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_CREATE_MODE = _create_mode()  # what open() gives a new file: 0666 less the umask (read at import)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8",
                 newline: str | None = None) -> Iterator[IO]:
    """Write to a temporary file beside ``path``; on success it is flushed, fsynced and renamed
    over ``path`` (readers see the old file or the new one, never half of one); on any error,
    ``KeyboardInterrupt`` included, it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The name is drawn before the file is made, and the file made inside the try: a Ctrl-C
    # that lands just after the file appears (tempfile.mkstemp returning) would otherwise leave
    # it behind. 64 random bits and O_EXCL: no other writer holds the name.
    tmp = path.parent / f".{path.name}.{os.urandom(8).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding,
                       newline=None if "b" in mode else newline) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), _CREATE_MODE)  # open()'s mode for the file, which 0600 would hide from other users
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.filename is None and err.strerror:  # a failed write names no file: name the one meant
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically. Serialised in memory first and written in one go:
    torch's zip writer turns a failed write (disk full) into "enforce fail ... unexpected pos",
    where a plain write raises the OSError that says what happened (at the cost of one
    serialised copy in memory while saving)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_write(path, "wb") as f:
        f.write(buffer.getbuffer())
