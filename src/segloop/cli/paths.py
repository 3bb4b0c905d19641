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


# The files ``segloop run`` leaves in its folder (``agent.records.save_episode`` and its run.json).
EPISODE_FILES = ("trajectory.json", "run.json", "mask.png", "final.png", "turn_*.png")


def check_episode_folder(out: Path) -> None:
    """Refuse a folder that holds another episode's files (a new episode's would mix with them: its turn
    pictures beside another trajectory) with a ``ValueError`` naming them."""
    if not out.is_dir():
        return
    found = sorted({path.name for pattern in EPISODE_FILES for path in out.glob(pattern)})
    if found:
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise ValueError(f"--out {out} already holds an episode ({shown}); give a new folder, or remove those "
                         "files first")
