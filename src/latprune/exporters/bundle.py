"""Deployment bundle: the artifact of a run's slimmed model, with what it promises.

A bundle is a directory::

    bundle-onnx/
      model.onnx     the artifact (model.pt2 for AOTInductor; model.engine + model.onnx for TensorRT)
      bundle.json    input spec, budget, LUT prediction, measured latency (p10/p90), device
                     fingerprint, versions, parity error, file checksums
      README.md      what it is and how to run it, with and without latprune

It is staged beside its destination and renamed into place (every file in it
written atomically), so it appears complete or not at all; an existing bundle
is replaced only with ``force``, and never a directory that is not a bundle.

>>> bundle = write_bundle(latprune.load("runs/demo/run"), "b", ExportOptions(format="onnx"))  # doctest: +SKIP
>>> bundle.meta["parity"]["max_abs_diff"] <= 1e-4, bundle.measure()["budget_met"]  # doctest: +SKIP
(True, True)
"""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from latprune._io import atomic_write_json, atomic_write_text, move_into_place
from latprune.errors import ExportError, RunDirError, SpecError
from latprune.latency_lut.timing import Latency, TimingConfig
from latprune.parity import PARITY_RTOL, Parity, tolerance_text

SCHEMA = "latprune-bundle"
SCHEMA_VERSION = 1
BUNDLE_FILE = "bundle.json"
# How a bundle's latency is measured when it is built (and by `latprune run` without --repeat):
# as the backends time whole models (warm-up 20, then >= 100 runs and >= 0.5 s).
BUNDLE_TIMING = TimingConfig(warmup=20, repeats=100, min_time_s=0.5)


class Runner(Protocol):
    """A loaded artifact on its runtime."""

    threads: int

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        """Outputs for one float32 input array."""

    def measure(self, x: np.ndarray, timing: TimingConfig) -> Latency:
        """Latency of one inference on ``x``."""

    def fingerprint(self) -> dict[str, Any]:
        """Device + runtime + settings (the LUT's match fields and more)."""


@dataclass(frozen=True)
class ExportOptions:
    """How to build a bundle. Options that do not apply to ``format`` are refused."""

    format: str = "onnx"              # onnx | aoti | tensorrt
    dynamic_batch: bool = False       # symbolic batch dimension, 1..max_batch
    max_batch: int = 64
    threads: int | None = None        # CPU threads measured with (AOTI: compiled in); None: the run's, else default
    exporter: str = "auto"            # ONNX exporter: auto (dynamo, else TorchScript) | dynamo | torchscript
    device: str = "cpu"               # aoti: cpu | cuda
    fp16: bool = False                # tensorrt: allow fp16 kernels
    int8: bool = False                # tensorrt: int8, calibrated on `data`
    data: str | None = None           # data spec of the int8 calibration batches
    calibration_batches: int = 16
    timing_cache: str | None = None   # tensorrt; None: beside the run's LUT (LUT.trt-timing-cache)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise SpecError(f"unknown export format {self.format!r}; known formats: {', '.join(sorted(FORMATS))}")
        from latprune.exporters.onnx import EXPORTERS

        if self.exporter not in EXPORTERS:
            raise SpecError(f"unknown ONNX exporter {self.exporter!r}; known: {', '.join(EXPORTERS)}")
        if self.format != "tensorrt":
            given = [flag for flag, on in (("fp16", self.fp16), ("int8", self.int8), ("data", self.data),
                                           ("timing_cache", self.timing_cache)) if on]
            if given:
                raise SpecError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to format tensorrt "
                                f"only, not {self.format}")
        if self.int8 and not self.data:
            raise SpecError("int8 needs calibration data: a data spec (e.g. data='fashion-mnist')")
        if self.format != "aoti" and self.device != "cpu":
            raise SpecError(f"device applies to format aoti only (an {self.format} bundle's device is fixed)")
        if self.threads is not None and self.threads < 1:
            raise SpecError(f"threads must be at least 1, got {self.threads}")
        if self.max_batch < 1:
            raise SpecError(f"max_batch must be at least 1, got {self.max_batch}")


@dataclass
class Built:
    """What a format's builder returns: export details, parity, and the I/O shapes."""

    export: dict[str, Any]
    parity: dict[str, Any]
    input_shape: tuple[Any, ...]
    output_shape: tuple[Any, ...]
    files: tuple[str, ...]           # files written into the staging directory


@dataclass(frozen=True)
class Format:
    """One artifact format: how to build it from a run, and how to load it."""

    name: str
    artifact: str                                            # file name in the bundle
    runtime: str                                             # what executes it, for people
    require: Callable[[dict[str, Any]], None]                # the runtime is here (else MissingDependency/BackendError)
    build: Callable[[Any, Path, ExportOptions, int, dict[str, Any]], Built]
    open: Callable[[Path, dict[str, Any], int], Runner]      # (bundle dir, bundle.json, threads) -> runner
    run_snippet: str                                         # how to run it without latprune (README)


# --------------------------------------------------------------------------- formats


def _parity(found: Parity, tol: float | None, batches: tuple[int, ...], reference: str) -> dict[str, Any]:
    """bundle.json's parity: faithful when ``max_abs_diff <= tol + rtol * max_abs_ref``;
    no ``tol`` (a reduced-precision engine) reports without a verdict."""
    return {"max_abs_diff": found.max_abs_diff, "max_abs_ref": found.max_abs_ref, "tol": tol,
            "rtol": None if tol is None else PARITY_RTOL,
            "passed": None if tol is None else found.within(tol), "reference": reference,
            "inputs": "standard normal, seed 0", "batches": list(batches)}


def _require_onnxruntime(_: dict[str, Any]) -> None:
    from latprune.runtime.ort import onnxruntime

    onnxruntime()


def _build_onnx(run: Any, staging: Path, options: ExportOptions, threads: int, context: dict[str, Any]) -> Built:
    from latprune.exporters.onnx import PARITY_TOL, export_onnx

    r = export_onnx(run.model, run.input_shape, staging / "model.onnx", threads=threads, exporter=options.exporter,
                    dynamic_batch=options.dynamic_batch, max_batch=options.max_batch)
    export = {"exporter": r.exporter, "opset": r.opset, "fallback_reason": r.fallback_reason,
              "onnx_checker": "passed (full_check)", "shape_inference": "passed (strict)", "simplified": False,
              "size_bytes": r.size_bytes}
    return Built(export, _parity(r.parity, PARITY_TOL, r.parity_batches,
                                 "PyTorch eager fp32 (cpu)"),
                 r.input_shape, r.output_shape, ("model.onnx", *filter(None, [r.external_data])))


def _open_onnx(bundle_dir: Path, meta: dict[str, Any], threads: int) -> Runner:
    from latprune.exporters.onnx import OnnxRunner

    return OnnxRunner(bundle_dir / meta["artifact"], threads)


def _require_aoti(meta: dict[str, Any]) -> None:
    from latprune.exporters.aoti import check_device

    check_device(meta.get("export", {}).get("device", "cpu"))


def _build_aoti(run: Any, staging: Path, options: ExportOptions, threads: int, context: dict[str, Any]) -> Built:
    from latprune.exporters.aoti import export_aoti
    from latprune.exporters.onnx import PARITY_TOL

    r = export_aoti(run.model, run.input_shape, staging / "model.pt2", device=options.device, threads=threads,
                    dynamic_batch=options.dynamic_batch, max_batch=options.max_batch)
    export = {"exporter": "torch.export + AOTInductor", "device": r.device, "compiled_threads": r.threads,
              "compile_s": r.compile_s, "torch_version": r.torch_version, "size_bytes": r.size_bytes}
    return Built(export, _parity(r.parity, PARITY_TOL, r.parity_batches,
                                 f"PyTorch eager fp32 ({r.device})"),
                 r.input_shape, r.output_shape, ("model.pt2",))


def _open_aoti(bundle_dir: Path, meta: dict[str, Any], threads: int) -> Runner:
    from latprune.exporters.aoti import AotiRunner

    export = meta["export"]
    return AotiRunner(bundle_dir / meta["artifact"], export.get("device", "cpu"),
                      int(export.get("compiled_threads", threads)))


def _require_tensorrt(_: dict[str, Any]) -> None:
    from latprune.runtime.tensorrt import require_tensorrt

    require_tensorrt()


def _build_tensorrt(run: Any, staging: Path, options: ExportOptions, threads: int, context: dict[str, Any]) -> Built:
    import torch

    from latprune._io import atomic_write_bytes
    from latprune.exporters.onnx import PARITY_TOL, export_onnx, parity, parity_inputs
    from latprune.exporters.tensorrt import TrtArtifactRunner, calibration_batches
    from latprune.runtime.large_onnx import read_onnx
    from latprune.runtime.tensorrt import EngineConfig, build_engine, require_tensorrt, trt

    require_tensorrt()
    onnx_report = export_onnx(run.model, run.input_shape, staging / "model.onnx", threads=threads,
                              exporter=options.exporter, dynamic_batch=options.dynamic_batch,
                              max_batch=options.max_batch)
    onnx_files = ("model.onnx", *filter(None, [onnx_report.external_data]))
    batch = run.input_shape[0]
    config = EngineConfig(fp16=options.fp16, int8=options.int8, tf32=not (options.fp16 or options.int8),
                          timing_cache=context.get("timing_cache"),
                          calibration_cache=str(staging / "calibration.cache") if options.int8 else None,
                          dynamic_batch=(1, batch, options.max_batch) if options.dynamic_batch else None)
    calibration = (calibration_batches(options.data, run.input_shape, options.calibration_batches)
                   if options.int8 and options.data else None)
    engine = build_engine(read_onnx(staging / "model.onnx"), config, calibration)
    atomic_write_bytes(staging / "model.engine", engine)
    runner = TrtArtifactRunner(staging / "model.engine", config.precision)
    inputs = parity_inputs(run.input_shape, options.dynamic_batch, options.max_batch)
    model = run.model.to("cuda")
    try:
        found = parity(model, lambda x: runner(x)[0], inputs, "cuda")
    finally:
        run.model.to("cpu")
    strict = config.precision == "fp32"
    if strict and not found.within():
        raise ExportError(f"the TensorRT engine differs from PyTorch by {found.describe()}; nothing was written")
    export = {"exporter": f"ONNX ({onnx_report.exporter}, opset {onnx_report.opset}) → TensorRT ONNX parser",
              "precision": config.precision, "tf32": config.tf32, "tensorrt_version": trt().__version__,
              "gpu": torch.cuda.get_device_name(), "timing_cache": config.timing_cache,
              "optimisation_profile": list(config.dynamic_batch) if config.dynamic_batch else None,
              "calibration": {"data": options.data, "batches": len(calibration or [])} if options.int8 else None,
              "size_bytes": len(engine)}
    files = ("model.engine", *onnx_files)
    if (staging / "calibration.cache").exists():
        files += ("calibration.cache",)
    reference = "PyTorch eager fp32 (cuda)" + ("" if strict else f"; {config.precision} engine: reported, not enforced")
    batches = tuple(sorted({int(x.shape[0]) for x in inputs}))
    return Built(export, _parity(found, PARITY_TOL if strict else None, batches, reference),
                 onnx_report.input_shape, onnx_report.output_shape, files)


def _open_tensorrt(bundle_dir: Path, meta: dict[str, Any], threads: int) -> Runner:
    from latprune.exporters.tensorrt import TrtArtifactRunner

    return TrtArtifactRunner(bundle_dir / meta["artifact"], meta["export"].get("precision", "fp32"))


FORMATS: dict[str, Format] = {
    "onnx": Format(
        "onnx", "model.onnx", "onnxruntime (CPUExecutionProvider)", _require_onnxruntime, _build_onnx, _open_onnx,
        "import numpy as np, onnxruntime as ort\n"
        "opts = ort.SessionOptions(); opts.intra_op_num_threads = {threads}\n"
        "sess = ort.InferenceSession(\"model.onnx\", opts, providers=[\"CPUExecutionProvider\"])\n"
        "y = sess.run(None, {{\"input\": np.random.randn({shape}).astype(np.float32)}})[0]"),
    "aoti": Format(
        "aoti", "model.pt2", "PyTorch AOTInductor", _require_aoti, _build_aoti, _open_aoti,
        "import torch\n"
        "model = torch._inductor.aoti_load_package(\"model.pt2\")\n"
        "y = model(torch.randn({shape}, device=\"{device}\"))"),
    "tensorrt": Format(
        "tensorrt", "model.engine", "TensorRT", _require_tensorrt, _build_tensorrt, _open_tensorrt,
        "import tensorrt as trt\n"
        "engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(open(\"model.engine\", \"rb\").read())\n"
        "# bind CUDA buffers by tensor name, then context.execute_async_v3(stream)"),
}


def get_format(name: str) -> Format:
    """The format registered as ``name``; unknown names list the known ones."""
    if name not in FORMATS:
        raise SpecError(f"unknown export format {name!r}; known formats: {', '.join(sorted(FORMATS))}")
    return FORMATS[name]


# --------------------------------------------------------------------------- writing


class Pruned(Protocol):
    """What a bundle is built from (:class:`latprune.PruneResult`): the slimmed model, its plan,
    the prune's metrics, and its run directory (None when never saved)."""

    model: Any
    plan: Any
    metrics: dict[str, Any]
    path: Path | None

    @property
    def input_shape(self) -> tuple[int, ...]: ...


def _check_target(out: Path, run_dir: Path | None, force: bool) -> None:
    if run_dir is not None and out.resolve() in (run_dir.resolve(), *run_dir.resolve().parents):
        raise RunDirError(f"the bundle directory {out} would replace the run directory {run_dir}; choose another")
    if not out.exists():
        return
    if not force:
        raise RunDirError(f"{out} already exists; choose another bundle directory or replace the bundle",
                          option="overwrite")
    if not out.is_dir() or not (out / BUNDLE_FILE).is_file():
        raise RunDirError(f"{out} is not a latprune bundle (no {BUNDLE_FILE}); it is never replaced")


def _read_json(path: Path, what: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path} is not valid JSON ({exc}); {what}") from None
    if not isinstance(raw, dict):
        raise RunDirError(f"{path} must hold a JSON object; {what}")
    return raw


def _versions(fmt: str) -> dict[str, str]:
    import importlib.metadata as md
    import platform

    import torch

    from latprune import __version__

    out = {"latprune": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__}
    for package in ("onnx", "onnxruntime") + (("tensorrt",) if fmt == "tensorrt" else ()):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return out


def _file_entry(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _default_threads(metrics: dict[str, Any] | None) -> int:
    """The thread count the run was measured with (so the budget compares like with like), else the default."""
    from latprune.latency_lut.backends import default_threads

    threads = ((metrics or {}).get("fingerprint") or {}).get("threads")
    return int(threads) if isinstance(threads, int) and threads >= 1 else default_threads()


def _timing_cache(options: ExportOptions, metrics: dict[str, Any] | None) -> str | None:
    if options.timing_cache:
        return options.timing_cache
    lut = (metrics or {}).get("lut")
    if isinstance(lut, str) and Path(lut).parent.is_dir():
        return f"{lut}.trt-timing-cache"
    return None


def write_bundle(result: Pruned, out: str | Path, options: ExportOptions = ExportOptions(),
                 force: bool = False) -> Bundle:
    """Export ``result.model`` in ``options.format``, check parity, measure it on this
    machine, and write the bundle directory ``out``. Raises before writing anything
    when ``out`` exists (without ``force``), the runtime is missing, or a check fails."""
    fmt = get_format(options.format)
    target = Path(out)
    _check_target(target, result.path, force)
    fmt.require({"export": {"device": options.device}})
    metrics = result.metrics or None
    threads = options.threads or _default_threads(metrics)
    context = {"timing_cache": _timing_cache(options, metrics) if fmt.name == "tensorrt" else None}

    staging = target.with_name(f".{target.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        built = fmt.build(result, staging, options, threads, context)
        runner = fmt.open(staging, {"artifact": fmt.artifact, "export": built.export}, threads)
        x = nominal_input(result.input_shape)
        latency = runner.measure(x, BUNDLE_TIMING)
        meta = _bundle_json(fmt, result, metrics, options, built, latency, runner, staging)
        atomic_write_json(staging / BUNDLE_FILE, meta)
        atomic_write_text(staging / "README.md", readme_text(meta))
        move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Bundle(target, meta)


def nominal_input(input_shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """The input a bundle is timed on when none is given: standard normal, float32."""
    return np.random.default_rng(seed).standard_normal(input_shape).astype(np.float32)


def _bundle_json(fmt: Format, run: Pruned, metrics: dict[str, Any] | None, options: ExportOptions,
                 built: Built, latency: Latency, runner: Runner, staging: Path) -> dict[str, Any]:
    m = metrics or {}
    plan = run.plan
    budget_ms = (m.get("budget") or {}).get("ms", plan.budget_ms)
    pruned = m.get("pruned") or {}
    run_fp = m.get("fingerprint") or {}
    lat = latency.to_dict()
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "format": fmt.name,
        "artifact": fmt.artifact,
        "files": {name: _file_entry(staging / name) for name in built.files},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": {"run_dir": str(run.path.resolve()) if run.path is not None else None, "model": plan.model,
                   "method": plan.method,
                   "plan_signature": plan.signature},
        "input": {"name": "input", "shape": list(built.input_shape), "nominal_shape": list(run.input_shape),
                  "dtype": "float32", "layout": "NCHW" if len(run.input_shape) == 4 else None,
                  "dynamic_batch": options.dynamic_batch,
                  "max_batch": options.max_batch if options.dynamic_batch else None},
        "outputs": [{"name": "output", "shape": list(built.output_shape), "dtype": "float32"}],
        "budget": {"ms": budget_ms, "spec": (m.get("budget") or {}).get("spec")},
        "prediction": {"predicted_ms": pruned.get("predicted_ms", plan.predicted_ms), "lut": m.get("lut"),
                       "prune_measured_ms": (pruned.get("latency_ms") or {}).get("median_ms"),
                       "prune_fingerprint": run_fp or None},
        "measured": {"latency_ms": lat, "threads": runner.threads, "runtime": fmt.runtime,
                     "input_shape": list(run.input_shape),
                     "timing": {"warmup": BUNDLE_TIMING.warmup, "min_repeats": BUNDLE_TIMING.repeats,
                                "min_time_s": BUNDLE_TIMING.min_time_s},
                     "budget_met": None if budget_ms is None else lat["median_ms"] <= budget_ms},
        "fingerprint": runner.fingerprint(),
        "parity": built.parity,
        "export": built.export,
        "versions": _versions(fmt.name),
    }


def readme_text(meta: dict[str, Any]) -> str:
    """The bundle's README.md: what it holds, what it promises, how to run it."""
    fmt = get_format(meta["format"])
    lat = meta["measured"]["latency_ms"]
    fp = meta["fingerprint"]
    inp = meta["input"]
    shape = ", ".join(str(d) for d in inp["nominal_shape"])
    budget = meta["budget"]["ms"]
    held = meta["measured"]["budget_met"]
    parity = meta["parity"]
    tolerance = f" (tolerance {tolerance_text(parity['tol'], parity.get('rtol'))})" if parity["tol"] is not None else ""
    parity_line = f"{parity['max_abs_diff']:.2e} max abs diff vs {parity['reference']}{tolerance}"
    snippet = fmt.run_snippet.format(threads=meta["measured"]["threads"], shape=shape,
                                     device=meta["export"].get("device", "cuda"))
    files = "\n".join(f"- `{name}` ({entry['bytes'] / 1e6:.2f} MB, sha256 {entry['sha256'][:12]}…)"
                      for name, entry in meta["files"].items())
    dynamic = f" (dynamic batch, 1..{inp['max_batch']})" if inp["dynamic_batch"] else ""
    measured = (f"{lat['median_ms']:.3f} ms median (p10 {lat['p10_ms']:.3f}, p90 {lat['p90_ms']:.3f}, "
                f"{lat['repeats']} runs, {meta['measured']['threads']} thread(s))")
    from_run = f" from `{meta['source']['run_dir']}`" if meta["source"].get("run_dir") else ""
    budget_line = ("no budget recorded" if budget is None else
                   f"{budget:.3f} ms ({meta['budget']['spec'] or 'absolute'}): "
                   f"{'held' if held else 'MISSED'} on the machine below")
    return f"""# {meta['source']['model']} — {fmt.name} bundle (latprune)

Pruned with `{meta['source']['method']}`{from_run}; runs on {fmt.runtime}.

{files}
- `bundle.json`: input spec, budget, LUT prediction, measured latency, device fingerprint, versions, parity

Input `{inp['name']}`: float32, shape {inp['shape']}{dynamic}.

| | |
|---|---|
| measured | {measured} |
| LUT prediction | {_fmt_ms(meta['prediction']['predicted_ms'])} |
| budget | {budget_line} |
| parity | {parity_line} |
| device | {fp.get('device')} · {fp.get('runtime')} {fp.get('runtime_version')} · {fp.get('backend')} |

Measure it again, on this or another machine (warns when the device differs):

    latprune run THIS_DIRECTORY [--input x.npy] [--repeat N] [--json]

Without latprune:

```python
{snippet}
```
"""


def _fmt_ms(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f} ms"


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Bundle:
    """A validated bundle directory: ``meta`` is its bundle.json."""

    path: Path
    meta: dict[str, Any]

    @property
    def format(self) -> Format:
        return get_format(self.meta["format"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape the bundle was built and timed at."""
        return tuple(int(d) for d in self.meta["input"]["nominal_shape"])

    def open(self, threads: int | None = None) -> Runner:
        """The artifact loaded on its runtime (which must be installed here)."""
        if threads is not None and threads < 1:
            raise SpecError(f"threads must be at least 1, got {threads}")
        self.format.require(self.meta)
        return self.format.open(self.path, self.meta, threads or int(self.meta["measured"]["threads"]))

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """The outputs for one float32 input of the bundle's shape, on its runtime."""
        return self.open()(np.ascontiguousarray(x, dtype=np.float32))

    def measure(self, x: np.ndarray | None = None, repeat: int | None = None, threads: int | None = None,
                input_source: str | None = None) -> dict[str, Any]:
        """Run the bundle once on ``x`` (default: a standard-normal input of its shape),
        summarise the outputs, time it (``repeat`` timed runs after 10 warm-up runs;
        default: as when it was built), and compare with its budget and build machine.
        Writes nothing."""
        if repeat is not None and repeat < 1:
            raise SpecError(f"repeat must be at least 1, got {repeat}")
        meta, fmt = self.meta, self.format
        source = input_source or ("standard normal, seed 0" if x is None else "array")
        x = nominal_input(self.input_shape) if x is None else np.ascontiguousarray(x, dtype=np.float32)
        warnings: list[str] = []
        compiled = meta["export"].get("compiled_threads")
        if fmt.name == "aoti" and threads is not None and compiled is not None and threads != compiled:
            warnings.append(f"threads={threads} ignored: the AOTInductor package's CPU kernels were compiled "
                            f"for {compiled} thread(s)")
        runner = self.open(threads)
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
            "bundle": str(self.path), "format": fmt.name, "runtime": fmt.runtime,
            "model": meta["source"].get("model"),
            "input": {"source": source,
                      "shape": list(x.shape), "dtype": str(x.dtype)},
            "outputs": [output_summary(n, y) for n, y in zip(names, outputs)],
            "latency_ms": latency, "threads": runner.threads, "budget_ms": budget_ms,
            "budget_met": None if budget_ms is None else latency["median_ms"] <= budget_ms,
            "bundle_latency_ms": meta["measured"]["latency_ms"],
            "predicted_ms": meta["prediction"].get("predicted_ms"),
            "parity_max_abs_diff": meta["parity"]["max_abs_diff"],
            "fingerprint": here, "fingerprint_mismatch": diffs, "warnings": warnings,
        }


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
    from latprune.runtime.fingerprint import MATCH_FIELDS

    return [{"field": k, "bundle": built.get(k), "here": here.get(k)} for k in MATCH_FIELDS
            if built.get(k) != here.get(k)]


# key -> type(s) of every required field; nested dicts are checked one level down.
_REQUIRED: dict[str, Any] = {
    "schema": str, "schema_version": int, "format": str, "artifact": str, "files": dict, "created": str,
    "source": dict, "input": dict, "outputs": list, "budget": dict, "prediction": dict, "measured": dict,
    "fingerprint": dict, "parity": dict, "export": dict, "versions": dict,
}
_NESTED: dict[str, dict[str, Any]] = {
    "input": {"name": str, "shape": list, "nominal_shape": list, "dtype": str, "dynamic_batch": bool},
    "measured": {"latency_ms": dict, "threads": int},
    "parity": {"max_abs_diff": (float, int, type(None))},
    "budget": {"ms": (float, int, type(None))},
}


def load_bundle(path: str | Path) -> Bundle:
    """Read and validate a bundle directory: bundle.json's schema, and every listed
    file present with its recorded size and sha256. Raises :class:`RunDirError`
    saying what is wrong and what to do."""
    root = Path(path)
    if not root.is_dir():
        raise RunDirError(f"{root} is not a bundle directory; create one by exporting a run "
                          "(latprune.export, `latprune export`)")
    file = root / BUNDLE_FILE
    if not file.is_file():
        raise RunDirError(f"{file} is missing; {root} is not a latprune bundle (create one with latprune.export)")
    meta = _read_json(file, "the bundle is damaged; export the run again over it") or {}
    damaged = "the bundle is damaged or from another version; export the run again over it"
    if meta.get("schema") != SCHEMA:
        raise RunDirError(f"{file} is not a latprune bundle description (schema {meta.get('schema')!r}); {damaged}")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise RunDirError(f"{file} has bundle schema version {meta.get('schema_version')!r}; this latprune reads "
                          f"version {SCHEMA_VERSION}: {damaged}")
    unknown = set(meta) - set(_REQUIRED)
    if unknown:
        raise RunDirError(f"{file} has unknown keys {sorted(unknown)}; {damaged}")
    for key, kind in _REQUIRED.items():
        if not isinstance(meta.get(key), kind):
            raise RunDirError(f"{file}: field {key!r} is missing or not a {kind.__name__}; {damaged}")
    for key, spec in _NESTED.items():
        for sub, kind in spec.items():
            value = meta[key].get(sub, ...)
            if value is ... or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise RunDirError(f"{file}: field {key}.{sub} is missing or malformed; {damaged}")
    if meta["format"] not in FORMATS:
        raise RunDirError(f"{file} names format {meta['format']!r}, which this latprune does not know "
                          f"(known: {', '.join(sorted(FORMATS))}); {damaged}")
    nominal = meta["input"]["nominal_shape"]
    if meta["input"]["dtype"] != "float32" or not nominal or not all(isinstance(d, int) and d > 0 for d in nominal):
        raise RunDirError(f"{file}: input spec {meta['input']} is malformed; {damaged}")
    if meta["artifact"] not in meta["files"]:
        raise RunDirError(f"{file} does not list its artifact {meta['artifact']!r} among its files; {damaged}")
    for name, entry in meta["files"].items():
        f = root / name
        if Path(name).name != name:
            raise RunDirError(f"{file} lists a file outside the bundle ({name!r}); {damaged}")
        if not f.is_file():
            raise RunDirError(f"{f} is missing from the bundle; {damaged}")
        if not isinstance(entry, dict) or f.stat().st_size != entry.get("bytes") or _sha256(f) != entry.get("sha256"):
            raise RunDirError(f"{f} does not match the size and sha256 recorded in {BUNDLE_FILE} "
                              f"(corrupted or replaced); {damaged}")
    return Bundle(root, meta)
