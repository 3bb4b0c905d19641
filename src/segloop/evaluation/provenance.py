"""What produced a result: the segloop version, the git commit of the source it ran from (when it ran from a
checkout), the host and the time. Result files (a batch's ``run.json``, ``metrics.json``, ``report.html``)
record these next to the configuration that decides what the episodes did."""

from __future__ import annotations

import datetime
import socket
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import segloop


def segloop_version() -> str:
    try:
        return version("segloop")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def git_commit() -> str | None:
    """The commit of the checkout segloop is imported from (``+dirty`` when it has uncommitted changes);
    None for an installed wheel or when git is not available."""
    package = Path(segloop.__file__).resolve().parent
    try:
        top = subprocess.run(["git", "-C", str(package), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=10)
        if top.returncode != 0 or not (Path(top.stdout.strip()) / "src" / "segloop").is_dir():
            return None  # not segloop's own checkout (e.g. site-packages inside some other repository)
        head = subprocess.run(["git", "-C", str(package), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(package), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    return f"{commit}+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else commit


def now() -> str:
    """The local time with its UTC offset, to the second (ISO 8601)."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def environment() -> dict[str, Any]:
    """segloop's version, the git commit (or None) and the host."""
    return {"segloop": segloop_version(), "git_commit": git_commit(), "host": socket.gethostname()}


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as {"a.b.c": leaf}; lists and other values are leaves."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def differences(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> list[str]:
    """``key: old -> new`` for each setting that differs (at most ``limit``, then a count)."""
    a, b = flatten(old), flatten(new)
    changed = [f"{key}: {a.get(key, '(unset)')!r} -> {b.get(key, '(unset)')!r}"
               for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
    if len(changed) > limit:
        changed = [*changed[:limit], f"and {len(changed) - limit} more"]
    return changed
