"""Writing the files segloop leaves behind: whole or not at all, and an error that names the file.

A file is written to a temporary name beside it and renamed into place, so a kill or a full disk never leaves
half a file; the temporary file is removed when writing fails, and the ``OSError`` raised names the file it
was for (a write that fails on a full disk names no file by itself). Record files (JSON, HTML) are redacted
(``tools.redaction``) on their way out.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from segloop.tools.redaction import redact


class WriteError(OSError):
    """A file could not be written; the message names it."""

    @classmethod
    def naming(cls, path: str | Path, exc: OSError) -> WriteError:
        """``exc`` (which, raised by a full disk, names no file) as the error of writing ``path``."""
        return cls(exc.errno, f"cannot write {path}: {exc.strerror or exc}")


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file renamed into place."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise WriteError.naming(path, exc) from None
    return path


def write_record(path: str | Path, text: str) -> Path:
    """Write a record file (JSON, HTML), redacted, whole or not at all."""
    return write_bytes(path, redact(text).encode("utf-8"))
