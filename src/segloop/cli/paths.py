"""Checks of the paths a command writes to, made before any work starts."""

from __future__ import annotations

from pathlib import Path


def check_out_folder(out: Path, flag: str = "--out") -> None:
    """Refuse an output folder that cannot be one (it, or a folder above it, is a file) with a ``ValueError``
    naming the flag; a folder that does not exist yet is fine (it is created)."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                which = "is a file" if path == out else f"is inside {path}, which is a file"
                raise ValueError(f"{flag} {out} {which}; give a folder")
            return
