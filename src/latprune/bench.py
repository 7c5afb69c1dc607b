"""bench(): measured latency of an artifact on a backend, with the LUT's prediction beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from latprune.api import load
from latprune.budget import Budget
from latprune.errors import RunDirError, SpecError
from latprune.latency_lut.backends import Backend, get_backend
from latprune.models import registered_model


def predict_run(run_dir: Path, lut_path: str, backend: Backend, base: nn.Module | None = None) -> dict[str, Any]:
    """The LUT's prediction for the slimmed model of ``run_dir`` (calibrated with the base model's fit)."""
    from latprune.graph.channels import ChannelGraph
    from latprune.latency_lut.predict import Predictor
    from latprune.latency_lut.profile import load_calibration, open_for_backend

    run = load(run_dir, base)
    graph = ChannelGraph.build(run.model, run.input_shape)
    with open_for_backend(lut_path, backend, writable=False) as lut:
        stored = load_calibration(lut, run.plan.signature)  # the base model's fit
        record = lut.calibration(run.plan.signature) or {}
        graph.mark_cold(frozenset(record.get("cold_units", [])))  # the units its prune keyed cold
        predictor = Predictor(lut, graph, stored[0] if stored else None)
        ms = predictor.predict(graph.full_widths())
    return {"predicted_ms": ms, "calibrated": stored is not None}


def _relative_budget(run_dir: Path) -> Budget | None:
    """The run's budget from its metrics.json when relative (a fraction of its base), else None."""
    import json

    from latprune.budget import parse_budget

    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        return None
    try:
        budget = parse_budget(str(json.loads(metrics.read_text())["budget"]["spec"]))
    except (ValueError, KeyError, TypeError, SpecError):
        return None  # an older or hand-written metrics.json: the plan's budget in ms stands
    return budget if budget.relative else None


def bench(artifact: str, lut: str | None = None, backend_name: str = "ort-cpu",
          threads: int | None = None, base: nn.Module | None = None) -> dict[str, Any]:
    """Measure ``artifact`` (a run directory or an .onnx file) on the backend (passes settled as in
    :func:`~latprune.latency_lut.profile.measure_settled`). ``base``: the model the run was pruned
    from, where latprune does not build it by name (see :func:`latprune.load`)."""
    path = Path(artifact)
    run_dir: Path | None = None
    if path.is_dir():
        run_dir = path
        onnx_path = path / "model.onnx"
    elif path.suffix == ".onnx" and path.is_file():
        onnx_path = path
        run_dir = path.parent if (path.parent / "plan.json").is_file() else None
    else:
        raise RunDirError(f"{artifact} is neither a run directory nor an existing .onnx file")
    from latprune.latency_lut.profile import measure_beside, measure_settled, model_pass
    from latprune.latency_lut.timing import Latency

    backend = get_backend(backend_name, threads)
    if backend.name == "ort-cpu":
        if not onnx_path.is_file():
            raise RunDirError(f"{onnx_path} is missing; export the run to ONNX (latprune.export, `latprune export`)")

        def measure() -> Latency:
            return backend.measure_artifact(str(onnx_path))
        measured_what = str(onnx_path)
    else:
        if run_dir is None:
            raise RunDirError(f"backend {backend.name!r} times PyTorch models; pass a run directory, not {artifact}")
        run = load(run_dir, base)

        def measure() -> Latency:
            return backend.measure_model(run.model, run.input_shape)
        measured_what = f"{run_dir} (PyTorch model)"
    plan = None
    if run_dir is not None and (run_dir / "plan.json").is_file():
        from latprune.pruner.plan import PruningPlan

        plan = PruningPlan.load(run_dir / "plan.json")
    relative = _relative_budget(run_dir) if plan is not None and run_dir is not None else None
    checked: dict[str, Any] = {}  # a relative budget: what it was checked against
    if plan is not None and relative is not None:
        # the run's budget is a fraction of its base: measure the base beside it, as `prune` did
        shape = plan.input_shape
        reference = base if base is not None else _registered_base(plan.model, shape, run_dir)
        base_lat, latency = measure_beside([model_pass(backend, reference, shape), measure])
        checked = {"budget_spec": str(relative), "base_beside_ms": base_lat.median_ms,
                   "budget_ms": relative.resolve(base_lat.median_ms)}
    else:
        latency = measure_settled(measure)
    result: dict[str, Any] = {"artifact": measured_what, "backend": backend.name, "threads": backend.threads,
                              "latency_ms": latency.to_dict(), "fingerprint": backend.fingerprint()}
    if plan is not None:
        result.update({"budget_ms": plan.budget_ms, **checked})
    if lut is not None:
        if run_dir is None:
            raise RunDirError("a LUT prediction needs the run directory (plan.json beside the .onnx file)")
        result.update(predict_run(run_dir, lut, backend, base))
        result["error_pct"] = 100 * (result["predicted_ms"] - latency.median_ms) / latency.median_ms
    return result


def _registered_base(name: str, shape: tuple[int, ...], run_dir: Path) -> nn.Module:
    spec = registered_model(name, shape)
    if spec is None:
        raise RunDirError(f"{run_dir} was pruned from {name!r}, which latprune does not build by name; its relative "
                          "budget is checked beside that base: pass the base model", option="model")
    return spec.model
