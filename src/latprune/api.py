"""The library's entry points: a module in, objects out, files only where the caller names a path.

    import latprune, torch, torchvision
    model, x = torchvision.models.resnet18(num_classes=10), torch.randn(1, 3, 64, 64)
    lut = latprune.profile(model, x, backend="ort-cpu", threads=1, path="device.lut")
    result = latprune.prune(model, lut, "0.6x", example_input=x, method="halp",
                            train_loader=loader, finetune=my_finetune)
    result.model, result.plan, result.metrics["measured_ms"]
    result.save("runs/r1"); same = latprune.load("runs/r1", model)
    bundle = latprune.export(result, "onnx", "bundles/r1"); bundle.run(x.numpy())
"""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from latprune import parallel
from latprune.budget import Budget, parse_budget
from latprune.errors import LatpruneWarning, RunDirError, SpecError
from latprune.exporters.bundle import Bundle, ExportOptions, write_bundle
from latprune.graph.channels import shared_copy
from latprune.graph.check import checked_graph
from latprune.latency_lut.backends import get_backend
from latprune.latency_lut.fidelity import FidelityReport
from latprune.latency_lut.profile import DEFAULT_LEVELS, ProfileReport, build_lut, open_for_backend
from latprune.latency_lut.store import Lut
from latprune.models import registered_model
from latprune.pruner.configs import MethodConfig, method_config
from latprune.pruner.loop import FinetuneConfig, Settings, Training, metrics_of, prune_model
from latprune.pruner.plan import PruningPlan
from latprune.pruner.resume import Journal, weights_digest
from latprune.runtime.large_onnx import read_onnx, write_onnx
from latprune.train import Compute

PathLike = str | Path


@dataclass(frozen=True)
class LUT:
    """A latency lookup table file and the backend it was measured with.

    ``report`` is what :func:`profile` measured into it (None for a LUT opened from disk)."""

    path: Path
    backend: str
    threads: int | None
    report: ProfileReport | None = field(default=None, compare=False, repr=False)

    @classmethod
    def open(cls, path: PathLike, backend: str | None = None, threads: int | None = None) -> LUT:
        """An existing LUT; its backend and thread count come from the file unless given
        (a given one must match the file's when it is used)."""
        with Lut.open(path) as lut:
            fingerprint = lut.fingerprint
        stored_threads = fingerprint.get("threads")
        return cls(Path(path), backend or str(fingerprint.get("backend")),
                   threads if threads is not None else (stored_threads if isinstance(stored_threads, int) else None))

    @property
    def fingerprint(self) -> dict[str, Any]:
        with Lut.open(self.path) as lut:
            return dict(lut.fingerprint)

    def __len__(self) -> int:
        with Lut.open(self.path) as lut:
            return len(lut)


def _input_shape(example_input: torch.Tensor | Sequence[int]) -> tuple[int, ...]:
    if isinstance(example_input, torch.Tensor):
        return tuple(int(d) for d in example_input.shape)
    if isinstance(example_input, (tuple, list)) and example_input and all(
            isinstance(d, int) and d > 0 for d in example_input):
        return tuple(example_input)
    raise SpecError(f"example_input must be a tensor (or a shape of positive ints), not {type(example_input).__name__}")


def _module(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise SpecError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    return copy.deepcopy(model).eval()  # the caller's module is never changed (not even its train/eval mode)


def _name(model: nn.Module, name: str | None) -> str:
    return name or type(model).__name__


def profile(model: nn.Module, example_input: torch.Tensor | Sequence[int], backend: str = "ort-cpu",
            threads: int | None = None, path: PathLike | None = None, *, levels: int = DEFAULT_LEVELS,
            align: int | None = None, calibration_samples: int = 12, passes: int = 2, refine: bool = False,
            recalibrate: bool = False, shard: tuple[int, int] = (1, 1), name: str | None = None,
            lowrank: bool = False, progress: bool = True) -> LUT:
    """Measure ``model``'s latency units over their width grid on ``backend`` into the LUT
    file ``path`` (created, or extended: what it holds is not measured again, so a killed
    profile resumes), then calibrate against whole-model measurements. ``lowrank`` also measures
    every layer's factorised pairs at its rank options, for a prune with ``lowrank``."""
    if path is None:
        raise SpecError("profile needs path=: the LUT file to create or extend, e.g. path='device.lut'")
    shape = _input_shape(example_input)
    module = _module(model)
    runner = get_backend(backend, threads)
    graph = runner.keyed(checked_graph(module, shape))
    report = build_lut(graph, path, runner, levels, calibration_samples, _name(model, name), align=align,
                       progress=progress, passes=passes, shard=shard, recalibrate=recalibrate, refine=refine,
                       lowrank=lowrank)
    for message in report.warnings:  # e.g. a calibration measured on a noisy machine
        warnings.warn(message, LatpruneWarning, stacklevel=2)
    return LUT(Path(path), runner.name, runner.threads, report)


def fidelity(model: nn.Module, example_input: torch.Tensor | Sequence[int], lut: LUT | PathLike,
             samples: int = 50, *, seed: int = 1234, blocks: bool = False, beside: bool = False,
             name: str | None = None, progress: bool = True) -> FidelityReport:
    """How well ``lut`` predicts ``model`` (profiled into it): predicted vs measured latency of
    ``samples`` random width configurations, each slimmed and timed on the LUT's backend
    (``blocks``: configurations may remove residual blocks; ``beside``: each measured right
    after the full model and also scored re-anchored on it, as relative budgets use the LUT)."""
    from latprune.latency_lut.fidelity import fidelity as score

    table = lut if isinstance(lut, LUT) else LUT.open(lut)
    backend = get_backend(table.backend, table.threads)
    graph = backend.keyed(checked_graph(_module(model), _input_shape(example_input)))
    with open_for_backend(table.path, backend, writable=False) as store:
        return score(graph, store, backend, samples, _name(model, name), seed, progress=progress, blocks=blocks,
                     beside=beside)


def _budget(budget: str | float | Budget) -> Budget:
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, str):
        return parse_budget(budget)
    if isinstance(budget, (int, float)) and not isinstance(budget, bool) and budget > 0:
        return Budget(float(budget), relative=False)
    raise SpecError(f"budget must be milliseconds (a positive number) or a string like '0.5x' or '8ms', "
                    f"not {budget!r}")


def _training(config: MethodConfig, train_loader: Iterable | None, val_loader: Iterable | None,
              finetune: Callable[[nn.Module], None] | FinetuneConfig | None,
              evaluate: Callable[[nn.Module], float] | None, compute: Compute) -> Training:
    """The callables the prune trains and scores with: the user's, or the built-in loops on the loaders."""
    if config.needs_data and train_loader is None:
        raise SpecError(f"method {config.name!r} trains or scores on data: pass train_loader= (or prune "
                        "data-free with method=HalpConfig(importance='l1'))")
    if train_loader is not None:
        try:
            len(train_loader)  # type: ignore[arg-type]
        except TypeError:
            raise SpecError("train_loader must have a length (a DataLoader, or a dataset)") from None
    if isinstance(finetune, FinetuneConfig):
        if train_loader is None:
            raise SpecError("the built-in fine-tuning (FinetuneConfig) trains on train_loader=; pass one")
    elif finetune is not None and not callable(finetune):
        raise SpecError(f"finetune must be a callable fn(model) -> None or a FinetuneConfig, not {finetune!r}")
    if evaluate is None and val_loader is not None:
        from latprune.train import evaluate as top1

        def evaluate(model: nn.Module) -> float:
            return top1(model, val_loader, compute=compute)
    elif evaluate is not None and not callable(evaluate):
        raise SpecError(f"evaluate must be a callable fn(model) -> float, not {evaluate!r}")
    return Training(train_loader, finetune, evaluate, compute)


def _joined(compute: Compute, base: nn.Module) -> tuple[Compute, parallel.World]:
    """Under torchrun: the process group joined, each rank on its own GPU (``LOCAL_RANK``) when it
    trains on CUDA, and rank 0's base weights on every rank."""
    world = parallel.join(compute.torch_device.type)
    if world.distributed and compute.torch_device.type == "cuda" and compute.torch_device.index is None:
        compute = replace(compute, device=f"cuda:{world.local_rank}")
    parallel.broadcast_state(base)
    parallel.DIFFERENCES.clear()
    return compute, world


def _world_record(world: parallel.World, model: nn.Module) -> dict[str, Any]:
    """The torchrun world a prune ran in, and that its ranks ended alike: each rank's weight digest,
    and how far apart the ranks' trained parameters were before rank 0's were broadcast."""
    import torch.distributed as dist

    return {"world_size": world.size, "backend": dist.get_backend(),
            "weights_sha256": parallel.gather(weights_digest(model)),
            "max_difference_before_sync": dict(parallel.DIFFERENCES)}


def _arguments(base: nn.Module, shape: tuple[int, ...], budget: Budget, config: MethodConfig, lut: LUT,
               training: Training, retries: int, seed: int, name: str) -> dict[str, Any]:
    """What makes two prunes the same prune (for resuming one from its checkpoints)."""
    def described(fn: Any) -> Any:
        return asdict(fn) if isinstance(fn, FinetuneConfig) else getattr(fn, "__qualname__", repr(fn)) if fn else None

    return {"model": name, "weights": weights_digest(base), "input_shape": list(shape), "budget": asdict(budget),
            "method": {"name": config.name, **asdict(config)}, "lut": str(Path(lut.path).resolve()),
            "backend": lut.backend, "threads": lut.threads, "finetune": described(training.finetune),
            "evaluate": described(training.evaluate), "compute": asdict(training.compute),
            "batches": len(training.train_loader) if training.train_loader is not None else None,  # type: ignore
            "retries": retries, "seed": seed}


def prune(model: nn.Module, lut: LUT | PathLike, budget: str | float | Budget, *,
          example_input: torch.Tensor | Sequence[int], method: str | MethodConfig = "gator",
          train_loader: Iterable | None = None, val_loader: Iterable | None = None,
          finetune: Callable[[nn.Module], None] | FinetuneConfig | None = None,
          evaluate: Callable[[nn.Module], float] | None = None, device: str = "auto", precision: str = "fp32",
          retries: int = 1, seed: int = 0, name: str | None = None, data_name: str | None = None,
          checkpoints: PathLike | None = None, checkpoint_every_s: float = 300.0,
          progress: bool = True) -> PruneResult:
    """Prune ``model`` (unchanged) to ``budget`` — a fraction of its measured latency
    (``"0.5x"``), or milliseconds (``8.0`` or ``"8ms"``) — against ``lut``.

    ``method`` is a method name or its config (:class:`GatorConfig`, ...). The
    built-in loops train on ``train_loader`` and score on ``val_loader``; or pass
    ``finetune(model) -> None`` and ``evaluate(model) -> float`` (higher is better).
    With neither, the prune is data-free: no fine-tuning, no accuracy. The built-in loops and
    the method's own training (gates, recovery) run on ``device`` (auto: CUDA when available)
    at ``precision`` (fp32, bf16, fp16 on CUDA); the user's callables get the model on the CPU
    and may move it. The result's latency is measured on the LUT's backend, never only predicted.

    ``checkpoints``: a directory for the prune's checkpoints (:mod:`latprune.pruner.resume`),
    the training state saved every ``checkpoint_every_s`` seconds. A prune killed at any point
    and started again with the same arguments and directory resumes from them; one started
    with other arguments is refused. Delete the directory once the result is saved.
    """
    base = _module(model)
    shape = _input_shape(example_input)
    target = _budget(budget)
    config = method_config(method)
    if not isinstance(retries, int) or retries < 0:
        raise SpecError(f"retries must be 0 or more, not {retries!r}")
    compute, world = _joined(Compute.resolve(device, precision), base)
    progress = progress and world.main  # under torchrun rank 0 reports
    if finetune is None and train_loader is not None:
        finetune = FinetuneConfig()  # the built-in loop on the loader given
    table = lut if isinstance(lut, LUT) else LUT.open(lut)
    training = _training(config, train_loader, val_loader, finetune, evaluate, compute)
    journal = None
    if checkpoints is not None or world.distributed:
        arguments = _arguments(base, shape, target, config, table, training, retries, seed, _name(model, name))
        parallel.same_everywhere("arguments", arguments)
        if checkpoints is not None:
            journal = parallel.on_main(lambda: Journal.open(checkpoints, arguments, checkpoint_every_s))
    settings = Settings(retries=retries, seed=seed, progress=progress, journal=journal)
    backend = get_backend(table.backend, table.threads)
    with open_for_backend(table.path, backend, writable=False) as store:
        outcome = prune_model(base, shape, _name(model, name), store, backend, target, config, training, settings)
    metrics = metrics_of(outcome, base, shape, target, config, backend, str(table.path), settings, data_name)
    metrics["config"].update(_training_record(finetune, evaluate, val_loader, compute))
    if journal is not None:
        metrics["checkpoints"] = {"dir": str(journal.root), "resumed": journal.taken}
    if world.distributed:
        metrics["distributed"] = _world_record(world, outcome.attempt.decision.slim)
    return PruneResult(outcome.attempt.decision.slim.eval(), outcome.plan, metrics, outcome.attempt.verified.onnx)


def _training_record(finetune: Callable[[nn.Module], None] | FinetuneConfig | None,
                     evaluate: Callable[[nn.Module], float] | None, val_loader: Iterable | None,
                     compute: Compute) -> dict[str, Any]:
    """How a prune fine-tuned and evaluated, for ``metrics["config"]``."""
    return {"finetune": (asdict(finetune) if isinstance(finetune, FinetuneConfig) else
                         None if finetune is None else "the caller's"),
            "evaluate": ("the caller's" if evaluate is not None else
                         "top-1 on val_loader" if val_loader is not None else None),
            "compute": asdict(compute)}


@dataclass
class PruneResult:
    """A pruned model: the slimmed module, the plan that replays it on the base, and what was measured."""

    model: nn.Module
    plan: PruningPlan
    metrics: dict[str, Any]
    onnx: bytes | None = field(default=None, repr=False)  # the checked export the prune measured
    path: Path | None = None                              # where it was saved or loaded from

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.plan.input_shape)

    def save(self, path: PathLike, overwrite: bool = False) -> Path:
        """Write the run directory (plan.json, model.pt as a state_dict, metrics.json, model.onnx),
        staged beside ``path`` and renamed into place: it appears complete or not at all."""
        from latprune._io import atomic_write_json, atomic_write_with, move_into_place

        out = Path(path)
        check_run_target(out, overwrite)
        staging = out.with_name(f".{out.name}.partial")
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        try:
            self.plan.save(staging / "plan.json")
            atomic_write_with(staging / "model.pt", lambda tmp: torch.save(self.model.state_dict(), tmp))
            if self.onnx is not None:
                write_onnx(staging / "model.onnx", self.onnx)
            atomic_write_json(staging / "metrics.json", self.metrics)
            move_into_place(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.path = out
        return out


def check_run_target(out: Path, overwrite: bool) -> None:
    """Refuse to write over a directory that is not empty, unless ``overwrite`` and it is a run directory."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not overwrite:
        raise RunDirError(f"run directory {out} already exists and is not empty; save elsewhere, or overwrite "
                          "the previous run", option="overwrite")
    if not out.is_dir() or not (out / "plan.json").is_file():
        raise RunDirError(f"{out} is not a latprune run directory (no plan.json); it is never overwritten")


def load(path: PathLike, model: nn.Module | None = None) -> PruneResult:
    """The pruned model of a run directory: its plan replayed on the base ``model`` (unchanged),
    or, without one, on the base it names when latprune builds it by name (the embedded
    default, ``torchvision:NAME``); then its weights (``weights_only``). Never imports code
    named in the run directory."""
    run = Path(path)
    if not run.is_dir():
        raise RunDirError(f"{run} is not a run directory (from PruneResult.save or `latprune prune`)")
    plan = PruningPlan.load(run / "plan.json")
    weights = run / "model.pt"
    if not weights.is_file():
        raise RunDirError(f"{weights} is missing; the run directory is incomplete, prune again")
    if model is not None:
        base = _module(model)
    else:
        spec = registered_model(plan.model, plan.input_shape)
        if spec is None:
            raise RunDirError(f"{run} was pruned from {plan.model!r}, which latprune does not build by name: pass "
                              f"the base model, latprune.load({str(run)!r}, model)", option="model")
        base = spec.model
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RunDirError(f"{weights} is not a readable state_dict ({type(exc).__name__}); the run directory is "
                          "damaged, prune again") from None
    try:
        slim = plan.apply_(base)
        slim.load_state_dict(state)
    except Exception as exc:
        raise RunDirError(f"{run}'s plan and weights do not fit the base model ({type(exc).__name__}: "
                          f"{str(exc)[:200]}); pass the model it was pruned from") from None
    metrics_file = run / "metrics.json"
    try:
        metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{metrics_file} is not valid JSON ({exc}); the run directory is damaged") from None
    onnx = read_onnx(run / "model.onnx") if (run / "model.onnx").is_file() else None
    return PruneResult(slim.eval(), plan, metrics, onnx, run)


def export(result: PruneResult | nn.Module, format: str = "onnx", path: PathLike | None = None, *,
           overwrite: bool = False, example_input: torch.Tensor | Sequence[int] | None = None,
           **options: Any) -> Bundle:
    """A deployment bundle of ``result.model`` in ``format`` (onnx, aoti, tensorrt) at ``path``
    (default: ``bundle-FORMAT`` inside the result's run directory): the artifact, checked for
    parity and measured on this machine, with its budget and device in ``bundle.json``.
    ``result`` may also be a plain module (with ``example_input``), e.g. the unpruned base to
    measure beside a pruned one. ``options``: the fields of :class:`~latprune.exporters.bundle.ExportOptions`."""
    if isinstance(result, nn.Module):
        if example_input is None:
            raise SpecError("exporting a module needs its example_input")
        shape = _input_shape(example_input)
        result = PruneResult(_module(result), PruningPlan(model=_name(result, None), input_shape=shape, groups=(),
                                                          method="none (unpruned)"), {})
    if not isinstance(result, PruneResult):
        raise SpecError(f"export takes a PruneResult (from latprune.prune or latprune.load) or a module, not "
                        f"{type(result).__name__}")
    # Building sets the model to eval mode, and moves it to a GPU for aoti and tensorrt; an ONNX export only
    # reads the weights, so its copy shares them (a copy of RegNetY-128GF's pruned weights is 1.5 GB)
    result = replace(result, model=shared_copy(result.model) if format == "onnx" else copy.deepcopy(result.model))
    if path is None:
        if result.path is None:
            raise SpecError("export needs path=: where to write the bundle (the result was never saved)")
        path = result.path / f"bundle-{format}"
    try:
        export_options = ExportOptions(format=format, **options)
    except TypeError as exc:
        raise SpecError(f"unknown export option ({exc}); the options are the fields of ExportOptions") from None
    return write_bundle(result, path, export_options, force=overwrite)
