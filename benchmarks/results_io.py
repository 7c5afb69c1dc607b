"""Result files of the benchmarks, written atomically: a temporary file beside the target,
renamed over it, so a killed benchmark leaves the previous file whole; the commit a row ran at;
and the cell their tables share for an error score."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any


def score_cell(stats: dict[str, float]) -> str:
    """'2.85% / 85%': an error score's median |error| and its share within ±10%."""
    return f"{stats['median_abs_pct']:.2f}% / {100 * stats['within_10_pct']:.0f}%"


def commit_of(tree: Path) -> str:
    """The short commit the git tree at ``tree`` has checked out, or "unknown"."""
    try:
        return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as JSON at ``path``, atomically: a temporary file beside it, renamed over it."""
    write_atomically(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8"))


def write_atomically(path: Path, writer: Any) -> None:
    """``writer(tmp)`` writes a temporary file beside ``path``, which is then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600: give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
