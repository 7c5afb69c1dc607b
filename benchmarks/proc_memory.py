"""This process's resident memory, from Linux's /proc: now, and at its peak since a reset."""

from __future__ import annotations

from pathlib import Path


def reset_peak() -> bool:
    """Start the peak (VmHWM) over from what the process holds now; False where /proc cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def resident_kib(field: str = "VmRSS") -> int | None:
    """``field`` of /proc/self/status (VmRSS: now; VmHWM: the peak) in KiB, or None off Linux."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith(field + ":")), None)
