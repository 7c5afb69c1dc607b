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


# The vector ISAs that select a CPU runtime's kernels, widest first (x86 ``flags``, ARM ``Features``).
ISA_LEVELS = ("amx_tile", "avx512f", "avx2", "avx", "sse4_2", "sve2", "sve", "asimd")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in ``/proc/cpuinfo`` (empty where there is none)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    if info:
                        break
                    continue
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cpu_device(info: dict[str, str] | None = None) -> str:
    """The CPU as a LUT must tell it apart: model name, family/model/stepping and the
    widest vector ISA. A cloud VM often reports only "AMD EPYC" or "Intel Xeon", and the
    same name covers an AVX2 Zen 2 and an AVX-512 Zen 5, whose kernels differ ~3x."""
    info = _cpuinfo() if info is None else info
    name = info.get("model name") or platform.processor() or platform.machine()
    ident = ", ".join(f"{k} {info[k]}" for k in ("cpu family", "model", "stepping") if k in info)
    flags = set((info.get("flags") or info.get("Features") or "").split())
    isa = next((level for level in ISA_LEVELS if level in flags), None)
    details = ", ".join(part for part in (ident, isa) if part)
    return f"{name} ({details})" if details else name


def last_level_cache_bytes(fallback: int = 32 * 2**20) -> int:
    """The largest CPU cache Linux reports for CPU 0, in bytes (``fallback`` where it reports none)."""
    from pathlib import Path

    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * unit)
    return max(sizes, default=fallback)


def host_fingerprint() -> dict[str, Any]:
    """The parts every backend shares: CPU model, core count, OS, Python."""
    return {
        "cpu": cpu_device(),
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
            f"profile this device into a new LUT (backend {current.get('backend')}, "
            f"{current.get('threads')} thread(s))"
        )
