"""What identifies a device + runtime. Stored in every LUT and every bundle.

Two fingerprints are compatible when the fields in :data:`MATCH_FIELDS`
agree: a LUT measured with 4 threads says nothing about 2 threads, nor one
measured on a Xeon about a laptop.
"""

from __future__ import annotations

import os
import platform
from typing import Any

from latprune.errors import FingerprintMismatch

MATCH_FIELDS = ("backend", "runtime", "runtime_version", "threads", "precision", "device", "unit_timing")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_fingerprint() -> dict[str, Any]:
    """The parts every backend shares: CPU model, core count, OS, Python."""
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def check_compatible(stored: dict[str, Any], current: dict[str, Any], what: str) -> None:
    """Raise :class:`FingerprintMismatch` naming each field that differs."""
    diffs = [
        f"{k}: {stored.get(k)!r} here vs {current.get(k)!r} now"
        for k in MATCH_FIELDS
        if stored.get(k) != current.get(k)
    ]
    if diffs:
        raise FingerprintMismatch(
            f"{what} was measured on another device or setting ({'; '.join(diffs)}); "
            f"profile this device into a new LUT with `latprune profile MODEL --backend "
            f"{current.get('backend')} --threads {current.get('threads')} -o NEW.lut`"
        )
