"""The LUT file: one SQLite database, schema-versioned, committed per measurement.

Tables:

- ``meta(key, value)``: JSON values — ``schema_version``, ``fingerprint``,
  ``created_at``, ``latprune_version``;
- ``entries(key, median_ms, p10_ms, p90_ms, repeats, measured_at, passes)``:
  one row per :class:`LayerKey` text; ``passes`` counts the separate
  measurements (at different times) the row summarises;
- ``calibrations(model, value)``: per model signature, the fitted end-to-end
  correction (see :mod:`latprune.latency_lut.calibrate`) and the width grid
  the model was profiled on.

No pickle: every value is a number or JSON text.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "x.lut")
>>> with Lut.create(path, {"backend": "fake"}) as lut:
...     lut.put(LayerKey("linear", 4, 2), Latency(1.0, 0.9, 1.1, 10))
>>> Lut.open(path).get(LayerKey("linear", 4, 2)).median_ms
1.0
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator

from latprune.errors import LutError
from latprune.graph.units import LayerKey
from latprune.latency_lut.timing import Latency

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY, median_ms REAL NOT NULL, p10_ms REAL NOT NULL, p90_ms REAL NOT NULL,
    repeats INTEGER NOT NULL, measured_at REAL NOT NULL, passes INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS calibrations (model TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Lut:
    """An open LUT file. Use :meth:`create` or :meth:`open`; close (or use ``with``) when done."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._cache: dict[str, Latency] | None = None
        self._passes: dict[str, int] | None = None

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], fingerprint: dict[str, Any]) -> Lut:
        """Create a new LUT (the file must not exist, or be empty: nothing is lost over it)."""
        from latprune import __version__

        target = Path(path)
        if cls.holds_data(target):
            raise LutError(f"{target} already exists; open it to extend it, or create another file")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.creating")
        if tmp.exists():
            tmp.unlink()
        conn = sqlite3.connect(tmp)
        with conn:
            conn.executescript(_SCHEMA)
            conn.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("schema_version", json.dumps(SCHEMA_VERSION)),
                ("fingerprint", json.dumps(fingerprint)),
                ("created_at", json.dumps(time.time())),
                ("latprune_version", json.dumps(__version__)),
            ])
        conn.close()
        os.replace(tmp, target)  # the file appears complete or not at all
        return cls.open(target, writable=True)

    @staticmethod
    def holds_data(path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` exists and is not an empty file (a process killed before it wrote one)."""
        target = Path(path)
        return target.exists() and not (target.is_file() and target.stat().st_size == 0)

    @classmethod
    def open(cls, path: str | os.PathLike[str], writable: bool = False) -> Lut:
        """Open an existing LUT, checking that it is one and of this schema version."""
        target = Path(path)
        if not target.is_file():
            raise LutError(f"LUT file {target} does not exist; create it by profiling a model into it "
                           "(latprune.profile, `latprune profile`)")
        uri = f"file:{target.resolve()}?mode={'rw' if writable else 'ro'}"
        try:
            conn = sqlite3.connect(uri, uri=True)
            rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            conn.execute("SELECT COUNT(*) FROM entries").fetchone()
        except sqlite3.DatabaseError as exc:
            raise LutError(f"{target} is not a readable latprune LUT ({exc}); it may be corrupt or another "
                           "file: profile the device again into a new LUT") from None
        try:
            version = json.loads(rows["schema_version"])
            json.loads(rows["fingerprint"])
        except (KeyError, ValueError):
            raise LutError(f"{target} lacks LUT metadata; it is not a latprune LUT or is damaged: re-profile it") from None
        if version != SCHEMA_VERSION:
            raise LutError(f"{target} has LUT schema version {version}, this latprune reads version "
                           f"{SCHEMA_VERSION}; re-profile the device with this latprune version")
        return cls(target, conn)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Lut:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- metadata -----------------------------------------------------------------------------
    def meta(self, key: str, default: Any = None) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        with self._conn:
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.meta("fingerprint")

    # -- entries ------------------------------------------------------------------------------
    def put(self, key: LayerKey, latency: Latency, passes: int = 1) -> None:
        """Store one measurement, committed at once (a killed profile keeps it)."""
        with self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key.text, latency.median_ms, latency.p10_ms, latency.p90_ms, latency.repeats, time.time(), passes),
            )
        if self._cache is not None:
            self._cache[key.text] = latency
        if self._passes is not None:
            self._passes[key.text] = passes

    def passes(self, key: LayerKey) -> int:
        """How many separate measurements the entry of ``key`` summarises (0: none)."""
        if self._passes is None:
            self._passes = dict(self._conn.execute("SELECT key, passes FROM entries").fetchall())
        return self._passes.get(key.text, 0)

    def _entries(self) -> dict[str, Latency]:
        if self._cache is None:
            rows = self._conn.execute("SELECT key, median_ms, p10_ms, p90_ms, repeats FROM entries").fetchall()
            self._cache = {r[0]: Latency(r[1], r[2], r[3], r[4]) for r in rows}
        return self._cache

    def get(self, key: LayerKey) -> Latency | None:
        return self._entries().get(key.text)

    def __contains__(self, key: LayerKey) -> bool:
        return key.text in self._entries()

    def __len__(self) -> int:
        return len(self._entries())

    def items(self) -> Iterator[tuple[LayerKey, Latency]]:
        for text, lat in sorted(self._entries().items()):
            yield LayerKey.parse(text), lat

    # -- calibrations -------------------------------------------------------------------------
    def calibration(self, model_signature: str) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT value FROM calibrations WHERE model = ?", (model_signature,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_calibration(self, model_signature: str, value: dict[str, Any]) -> None:
        with self._conn:
            self._conn.execute("INSERT OR REPLACE INTO calibrations VALUES (?, ?)",
                               (model_signature, json.dumps(value)))

    def calibrations(self) -> dict[str, dict[str, Any]]:
        rows = self._conn.execute("SELECT model, value FROM calibrations").fetchall()
        return {m: json.loads(v) for m, v in rows}


def merge_luts(out: str | os.PathLike[str], inputs: list[str | os.PathLike[str]]) -> dict[str, Any]:
    """Join LUTs (e.g. shards from `latprune profile --shard i/n`) into a new file.

    All inputs must share a compatible fingerprint. A key measured in several
    inputs keeps the faster median (the same rule as profiling passes)."""
    from latprune.runtime.fingerprint import check_compatible

    if len(inputs) < 1:
        raise LutError("lut merge needs at least one input LUT")
    opened = [Lut.open(p) for p in inputs]
    try:
        first = opened[0]
        for other in opened[1:]:
            check_compatible(first.fingerprint, other.fingerprint, f"LUT {other.path} (vs {first.path})")
        best: dict[str, tuple[Latency, int]] = {}
        for lut in opened:
            for key, lat in lut.items():
                prev = best.get(key.text)
                passes = lut.passes(key)
                if prev is None or lat.median_ms < prev[0].median_ms:
                    best[key.text] = (lat, max(passes, prev[1] if prev else 0))
        calibrations: dict[str, dict[str, Any]] = {}
        for lut in opened:
            for sig, cal in lut.calibrations().items():
                calibrations.setdefault(sig, cal)
        with Lut.create(out, first.fingerprint) as merged:
            with merged._conn:
                merged._conn.executemany(
                    "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(k, lat.median_ms, lat.p10_ms, lat.p90_ms, lat.repeats, time.time(), passes)
                     for k, (lat, passes) in sorted(best.items())])
            for sig, cal in calibrations.items():
                merged.set_calibration(sig, cal)
    finally:
        for lut in opened:
            lut.close()
    return {"output": str(out), "inputs": [str(p) for p in inputs], "entries": len(best),
            "calibrations": len(calibrations)}
