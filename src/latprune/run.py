"""run_bundle(): load a deployment bundle with its runtime, run it, and measure it
against the budget it was built for — on whatever machine this is.

>>> r = run_bundle("runs/demo/run/bundle-onnx", repeat=200)  # doctest: +SKIP
>>> r["latency_ms"]["median_ms"] <= r["budget_ms"]  # doctest: +SKIP
True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from latprune.errors import SpecError
from latprune.exporters.bundle import BUNDLE_TIMING, Bundle, load_bundle, nominal_input
from latprune.latency_lut.fingerprint import MATCH_FIELDS
from latprune.latency_lut.timing import TimingConfig


def load_input(path: str | Path, bundle: Bundle) -> np.ndarray:
    """A ``.npy`` input checked against the bundle's input spec (dtype float32;
    shape exactly the bundle's, or any batch within 1..max_batch when the batch
    is dynamic). Raises :class:`SpecError` naming what was expected."""
    spec = bundle.meta["input"]
    nominal = bundle.input_shape
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"--input {p} does not exist; pass a .npy file of float32, shape {list(nominal)}")
    try:
        x = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise SpecError(f"--input {p} is not a readable .npy array ({exc}); write one with numpy.save") from None
    if not isinstance(x, np.ndarray):
        raise SpecError(f"--input {p} holds several arrays (.npz); pass one .npy array")
    if x.dtype != np.float32:
        raise SpecError(f"--input {p} holds {x.dtype} data; the bundle expects float32 of shape {list(nominal)} "
                        "(convert with x.astype(numpy.float32))")
    if spec["dynamic_batch"]:
        max_batch = int(spec.get("max_batch") or nominal[0])
        if x.ndim != len(nominal) or tuple(x.shape[1:]) != nominal[1:] or not 1 <= x.shape[0] <= max_batch:
            raise SpecError(f"--input {p} has shape {list(x.shape)}; the bundle expects "
                            f"[N, {', '.join(map(str, nominal[1:]))}] with 1 <= N <= {max_batch}, float32")
    elif tuple(x.shape) != nominal:
        raise SpecError(f"--input {p} has shape {list(x.shape)}; the bundle expects {list(nominal)}, float32 "
                        "(its batch is fixed; export with --dynamic-batch for others)")
    return np.ascontiguousarray(x)


def output_summary(name: str, y: np.ndarray) -> dict[str, Any]:
    """Shape, dtype, range and mean of an output; per-row top-1 for a (batch, classes) output."""
    summary: dict[str, Any] = {"name": name, "shape": list(y.shape), "dtype": str(y.dtype),
                               "min": float(np.min(y)), "max": float(np.max(y)), "mean": float(np.mean(y)),
                               "finite": bool(np.isfinite(y).all())}
    if y.ndim == 2:
        summary["top1"] = [int(i) for i in np.argmax(y, axis=1)[:16]]
    return summary


def fingerprint_diffs(built: dict[str, Any], here: dict[str, Any]) -> list[dict[str, Any]]:
    """The match fields (as for LUTs) on which this machine differs from the bundle's."""
    return [{"field": k, "bundle": built.get(k), "here": here.get(k)} for k in MATCH_FIELDS
            if built.get(k) != here.get(k)]


def run_bundle(path: str | Path, input_path: str | Path | None = None, repeat: int | None = None,
               threads: int | None = None) -> dict[str, Any]:
    """Validate and load the bundle with its runtime, run it once on ``input_path``
    (or a standard-normal input of the bundle's shape), summarise the outputs, time
    it (``repeat`` timed runs after 10 warm-up runs; default: as when it was built),
    and compare with its budget and build machine. Writes nothing."""
    if repeat is not None and repeat < 1:
        raise SpecError(f"--repeat must be at least 1, got {repeat}")
    if threads is not None and threads < 1:
        raise SpecError(f"--threads must be at least 1, got {threads}")
    bundle = load_bundle(path)
    meta = bundle.meta
    fmt = bundle.format
    fmt.require(meta)
    x = load_input(input_path, bundle) if input_path is not None else nominal_input(bundle.input_shape)
    warnings: list[str] = []
    built_threads = int(meta["measured"]["threads"])
    use_threads = threads or built_threads
    compiled = meta["export"].get("compiled_threads")
    if fmt.name == "aoti" and threads is not None and compiled is not None and threads != compiled:
        warnings.append(f"--threads {threads} ignored: the AOTInductor package's CPU kernels were compiled "
                        f"for {compiled} thread(s)")
    runner = fmt.open(bundle.path, meta, use_threads)
    outputs = runner(x)
    timing = BUNDLE_TIMING if repeat is None else TimingConfig(warmup=10, repeats=repeat, min_time_s=0.0,
                                                               max_repeats=repeat)
    latency = runner.measure(x, timing).to_dict()
    here = runner.fingerprint()
    diffs = fingerprint_diffs(meta["fingerprint"], here)
    if diffs:
        fields = "; ".join(f"{d['field']}: {d['bundle']!r} in the bundle vs {d['here']!r} here" for d in diffs)
        warnings.append(f"this device differs from the one the bundle was built and measured on ({fields}); "
                        "its budget and recorded latency describe that device, not this one")
    budget_ms = meta["budget"]["ms"]
    names = [o.get("name", f"output{i}") for i, o in enumerate(meta["outputs"])]
    names += [f"output{i}" for i in range(len(names), len(outputs))]
    return {
        "bundle": str(bundle.path),
        "format": fmt.name,
        "runtime": fmt.runtime,
        "model": meta["source"].get("model"),
        "input": {"source": str(input_path) if input_path is not None else "standard normal, seed 0",
                  "shape": list(x.shape), "dtype": str(x.dtype)},
        "outputs": [output_summary(n, y) for n, y in zip(names, outputs)],
        "latency_ms": latency,
        "threads": runner.threads,
        "budget_ms": budget_ms,
        "budget_met": None if budget_ms is None else latency["median_ms"] <= budget_ms,
        "bundle_latency_ms": meta["measured"]["latency_ms"],
        "predicted_ms": meta["prediction"].get("predicted_ms"),
        "parity_max_abs_diff": meta["parity"]["max_abs_diff"],
        "fingerprint": here,
        "fingerprint_mismatch": diffs,
        "warnings": warnings,
    }
