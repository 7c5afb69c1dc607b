"""The prune, as named stages over one budget in milliseconds.

    calibrated_predictor  the LUT's predictor for this model, with its stored (or a fresh) calibration
    measure_base          the base model measured on the backend; a relative budget resolves here
    prepare               both, and the predictor re-anchored on the measured base: the Start
    attempt               the method's decision, fine-tuning, and the export measured
    run_attempts          attempts from a Start until the export holds the budget (or the retries run out)
    prune_model           prepare, then run_attempts with the config's method

The methods never trust the prediction alone: each candidate is slimmed and
timed on the backend (:func:`methods.closed_loop`). The export is timed again
after fine-tuning; when it misses the budget although its candidate held it
(the same network: the device's noise), the prune starts again from the base
to a budget narrower by that gap, up to ``retries`` times. No stage changes a
predictor it is given; each returns the one it leaves.
"""

from __future__ import annotations

import copy
import sys
import time
import warnings as _warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import torch
from torch import nn

from latprune import parallel
from latprune._progress import bar
from latprune.budget import Budget
from latprune.errors import BudgetError, LatpruneWarning, LutError, SpecError
from latprune.graph.channels import ChannelGraph, Grid, shared_copy
from latprune.graph.check import checked_graph
from latprune.graph.lowrank import CHANNEL, factorise_
from latprune.latency_lut.backends import Backend
from latprune.latency_lut.calibrate import FIT_METHOD, noise_warning
from latprune.latency_lut.predict import Calibration, Predictor
from latprune.latency_lut.profile import (
    DEFAULT_LEVELS,
    fit_is_current,
    grid_keys,
    load_calibration,
    measure_beside_anchor,
    measure_settled,
    model_pass,
    run_calibration,
)
from latprune.latency_lut.store import Lut
from latprune.latency_lut.timing import Latency
from latprune.pruner.configs import MethodConfig
from latprune.pruner.methods import TRAINS_ON_EVERY_RANK, Batches, Context, Decision, get_method
from latprune.pruner.plan import GroupPlan, PruningPlan
from latprune.pruner.resume import Journal
from latprune.pruner.search import method as _search  # noqa: F401  registers graph-rl and evolution
from latprune.runtime.onnx import OnnxReport, checked_onnx
from latprune.train import Checkpoint, Compute, TrainConfig, train


@dataclass(frozen=True)
class FinetuneConfig:
    """The built-in fine-tuning of the slimmed model on ``train_loader``."""

    epochs: float = 1.0      # fractions allowed; 0 skips fine-tuning
    lr: float = 0.01         # peak learning rate (one-cycle schedule)
    distill: bool = False    # distil from the unpruned model while fine-tuning

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.lr <= 0:
            raise SpecError(f"FinetuneConfig: epochs must be 0 or more and lr positive, not {self.epochs!r} "
                            f"and {self.lr!r}")


@dataclass(frozen=True)
class Training:
    """How the prune trains and scores models: the method's training batches, the fine-tuning
    (the user's callable, or :class:`FinetuneConfig` for the built-in loop on ``train_loader``)
    and the evaluation (None: no fine-tuning; no accuracy)."""

    train_loader: Batches | None = None
    finetune: Callable[[nn.Module], None] | FinetuneConfig | None = None  # the user's loop, or the built-in one
    evaluate: Callable[[nn.Module], float] | None = None
    compute: Compute = Compute()  # the device and precision of the method's own training


@dataclass(frozen=True)
class Settings:
    retries: int = 1         # prunes again, narrower, while the fine-tuned export misses the budget
    seed: int = 0
    progress: bool = True
    journal: Journal | None = None  # checkpoints to resume from and write to (None: none)


@dataclass
class Calibrated:
    """The LUT's predictor for one model and what its calibration is."""

    predictor: Predictor
    grid: Grid
    fit: str | None            # the rule the calibration was fitted by
    fit_current: bool          # fitted by today's rule
    warnings: list[str] = field(default_factory=list)


@dataclass
class Verified:
    """A slimmed model's checked ONNX export and its measured latency."""

    onnx: bytes
    report: OnnxReport
    export_ms: float                 # on the scale of the base measured at the start (the mean of the checks)
    latency: Latency                 # the last measurement itself
    checks_ms: list[float]
    base_beside_ms: float | None     # a relative budget: the base measured beside the export


@dataclass
class Attempt:
    decision: Decision
    verified: Verified
    accuracy: float | None
    record: dict[str, Any]


@dataclass
class Outcome:
    """What :func:`prune_model` hands back: the kept attempt, the base, and the record of it all."""

    plan: PruningPlan
    attempt: Attempt
    attempts: list[dict[str, Any]]
    base_latency: Latency
    budget_ms: float
    base_accuracy: float | None
    calibrated: Calibrated
    lut_base_ms: float
    drift: float
    final_predictor: Predictor
    timings_s: dict[str, float]


def say(settings: Settings, message: str) -> None:
    if settings.progress:
        print(f"latprune: {message}", file=sys.stderr, flush=True)


def calibrated_predictor(graph: ChannelGraph, lut: Lut, backend: Backend, progress: bool) -> Calibrated:
    """The predictor for ``graph`` with the LUT's stored calibration for it (or one
    measured now, by today's rule, when none is stored); refuses a LUT that lacks
    this model's unit measurements."""
    stored = load_calibration(lut, graph.signature())
    grid = stored[1] if stored else Grid(DEFAULT_LEVELS, backend.preferred_align)
    predictor = Predictor(lut, graph)
    missing = predictor.missing(grid_keys(graph, grid))
    if missing:
        raise LutError(f"the LUT {lut.path} lacks {len(missing)} of this model's unit measurements; "
                       "profile this model into it first (latprune.profile, or `latprune profile`)")
    if not stored:
        calibration, _ = run_calibration(graph, lut, backend, grid, 8, progress)
        return Calibrated(Predictor(lut, graph, calibration), grid, FIT_METHOD, True)
    record = lut.calibration(graph.signature()) or {}  # the stored calibration's fit rule and points
    fit = record.get("fit")
    current = fit_is_current(fit, bool(graph.blocks))
    warnings = []
    if not current:
        warnings.append(f"{lut.path}'s calibration for this model was fitted by an older rule ({fit or 'unnamed'}); "
                        "profiling this model into it again fits it anew (whole-model measurements only, the "
                        "units are kept)")
    noisy = noise_warning(record, f"latprune profile MODEL -o {lut.path}")
    if noisy:  # the closed loop measures every candidate, but the knapsack ranks them by this fit
        warnings.append(f"{lut.path}: {noisy}")
    for message in warnings:
        _warnings.warn(message, LatpruneWarning, stacklevel=5)  # at the caller of prune or attach_gates
    return Calibrated(Predictor(lut, graph, stored[0]), grid, fit, current, warnings)


def score(training: Training, model: nn.Module) -> float | None:
    """The user's (or the built-in) evaluation of a copy of ``model``, as a float; None without one."""
    if training.evaluate is None:
        return None
    value = training.evaluate(copy.deepcopy(model))
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SpecError(f"evaluate must return a number (higher is better), not {type(value).__name__}") from None


def measure_base(backend: Backend, base_model: nn.Module, input_shape: tuple[int, ...], progress: bool = False
                 ) -> Latency:
    """The base model's latency, settled over passes: what a relative budget is a fraction of."""
    with bar(desc="measure base", unit="model", enabled=progress) as meter:
        return measure_settled(model_pass(backend, base_model, input_shape), meter.update)


def verify_export(slim: nn.Module, input_shape: tuple[int, ...], backend: Backend, base: nn.Module | None,
                  base_ms: float, budget_ms: float, margin: float, check_twice: bool,
                  on_pass: Callable[[], object] | None = None) -> Verified:
    """Export ``slim`` to checked ONNX (in memory) and measure it: the artifact itself
    on ONNX Runtime, else the model on the backend; beside the base with a relative
    budget (``base`` set), on the scale of the base measured at the start. A miss is
    measured once more (``check_twice``) and judged by the mean, as candidates are.
    ``on_pass`` is called after each pass of either model (a progress bar's tick)."""
    report, onnx = checked_onnx(slim, input_shape, threads=backend.threads or 1)

    def export() -> Latency:
        return backend.measure_export(onnx) or backend.measure_model(slim, input_shape)

    base_pass = model_pass(backend, base, input_shape) if base is not None else None

    def once() -> tuple[float, Latency, float | None]:
        if base_pass is None:
            lat = measure_settled(export, on_pass)
            return lat.median_ms, lat, None
        base_now, lat = measure_beside_anchor(base_pass, export, base_ms, margin, on_each=on_pass)
        return base_ms * lat.median_ms / base_now.median_ms, lat, base_now.median_ms

    export_ms, latency, beside = once()
    checks = [export_ms]
    if export_ms > budget_ms and check_twice:
        second, latency, beside = once()
        checks.append(second)
    return Verified(onnx, report, sum(checks) / len(checks), latency, checks, beside)


def attempt(ctx: Context, training: Training, budget_ms: float, number: int, teacher: nn.Module,
            method: Callable[[Context], Decision], journal: Journal | None = None) -> Attempt:
    """One attempt: ``method``'s decision at ``ctx.budget_ms`` (the config's method, or gator's
    decision from gates trained elsewhere), fine-tuning (distilled from ``teacher`` when asked),
    evaluation, and the export measured against ``budget_ms``; each stage that ``journal`` holds
    done is taken from it, each one done here is written to it."""
    timings: dict[str, float] = {}
    t = time.time()
    decision = decide(ctx, method, journal, number)
    timings["method_s"] = time.time() - t
    t = time.time()
    accuracy, timings["eval_s"] = finetuned(ctx, training, decision.slim, teacher, journal, number)
    timings["finetune_s"] = time.time() - t - timings["eval_s"]
    t = time.time()
    verified = verified_export(ctx, decision.slim, budget_ms, journal, number)
    timings["export_measure_s"] = time.time() - t
    record = {"attempt": number, "budget_ms": ctx.budget_ms, "target_ms": ctx.target_ms,
              "candidate_ms": decision.measured_ms, "export_ms": verified.export_ms,
              "export_measurements_ms": verified.checks_ms, "export_median_ms": verified.latency.median_ms,
              "base_beside_ms": verified.base_beside_ms, "budget_met": verified.export_ms <= budget_ms,
              "accuracy": accuracy, "predicted_ms": decision.predicted_ms, "timings_s": timings}
    return Attempt(decision, verified, accuracy, record)


def decide(ctx: Context, method: Callable[[Context], Decision], journal: Journal | None, number: int
           ) -> Decision:
    """``method``'s decision (its gate training resumable), or the one ``journal`` holds."""
    name = f"attempt{number}-decision"
    stored = parallel.on_main(lambda: _stored_decision(journal, name))
    if stored is not None:
        return _decision_from(ctx, stored)
    if journal is not None:
        ctx = replace(ctx, checkpoint=lambda stage: journal.checkpoint(f"attempt{number}-{stage}"))
    decision = _decided(ctx, method)
    if journal is not None:
        record = _decision_record(decision)
        journal.put_tensors(name, {"model": record.pop("model")})
        journal.put_record(name, record)
    return decision


def _decided(ctx: Context, method: Callable[[Context], Decision]) -> Decision:
    """``method``'s decision. Under torchrun, the training a registered method does on every rank
    (:data:`~latprune.pruner.methods.TRAINS_ON_EVERY_RANK`) runs on every rank, and the rest on
    rank 0 alone; every rank gets rank 0's decision."""
    if not parallel.world().distributed:
        return method(ctx)
    rest: Callable[[], Decision] = lambda: method(ctx)  # what rank 0 alone runs
    if method is get_method(ctx.config) and type(ctx.config) in TRAINS_ON_EVERY_RANK:
        trains, decides = TRAINS_ON_EVERY_RANK[type(ctx.config)]
        trained = trains(ctx)  # on every rank
        rest = lambda: decides(ctx, trained)  # noqa: E731
    return _decision_from(ctx, parallel.on_main(lambda: _decision_record(rest())))


def _decision_record(decision: Decision) -> dict[str, Any]:
    """A decision as plain data (its slimmed model as a state_dict): to store, or to send to the other ranks."""
    return {"keep": decision.keep, "ranks": decision.ranks, "rank_scheme": decision.rank_scheme,
            "predicted_ms": decision.predicted_ms,
            "history": decision.history,
            "extra": decision.extra, "measured_ms": decision.measured_ms, "model": decision.slim.state_dict(),
            "calibration": asdict(decision.predictor.calibration) if decision.predictor else None}


def _stored_decision(journal: Journal | None, name: str) -> dict[str, Any] | None:
    record = journal.record(name) if journal else None
    if record is None:
        return None
    return {**record, "model": (journal.tensors(name) or {})["model"]}


def _decision_from(ctx: Context, record: dict[str, Any]) -> Decision:
    keep = {int(g): list(idx) for g, idx in record["keep"].items()}  # JSON keys are strings
    ranks = {str(name): int(r) for name, r in record.get("ranks", {}).items()}
    slim = factorise_(ctx.graph.slim(keep), ranks, record.get("rank_scheme", CHANNEL))
    slim.load_state_dict(record["model"])
    calibration = record["calibration"]
    predictor = Predictor(ctx.predictor.lut, ctx.graph, Calibration(**calibration), ctx.scheme) if calibration \
        else None
    return Decision(keep, slim.eval(), record["predicted_ms"], record["history"], record["extra"],
                    record["measured_ms"], predictor)


def finetune(training: Training, model: nn.Module, teacher: nn.Module, seed: int,
             checkpoint: Checkpoint | None) -> None:
    """Fine-tune ``model`` in place: the built-in loop on the training batches (resumable from
    ``checkpoint``; distilled from ``teacher`` when asked), or the user's callable."""
    if isinstance(training.finetune, FinetuneConfig):
        config = training.finetune
        if config.epochs > 0:
            train(model, training.train_loader or [], TrainConfig(
                epochs=config.epochs, lr=config.lr, seed=seed, compute=training.compute,
                distill_alpha=0.5 if config.distill else 0.0), teacher=teacher if config.distill else None,
                desc="fine-tune", checkpoint=checkpoint)
    elif training.finetune is not None:
        training.finetune(model)
        model.cpu().eval()  # the user's loop may leave it on a GPU or in training mode
        parallel.synchronise("fine-tune", model)  # under torchrun: rank 0's, which rank 0 measures, on every rank


def finetuned(ctx: Context, training: Training, slim: nn.Module, teacher: nn.Module, journal: Journal | None,
              number: int) -> tuple[float | None, float]:
    """Fine-tune and score ``slim`` in place (or take both from ``journal``): the accuracy,
    and the seconds the scoring took. Under torchrun every rank fine-tunes; rank 0 scores."""
    name = f"attempt{number}-finetuned"
    stored = parallel.on_main(lambda: journal.tensors(name) if journal else None)
    if stored is not None:
        slim.load_state_dict(stored["model"])
        return stored["accuracy"], 0.0
    finetune(training, slim, teacher, ctx.seed, journal.checkpoint(f"attempt{number}-finetune") if journal else None)
    t = time.time()
    accuracy = parallel.on_main(lambda: score(training, slim))
    if journal is not None:
        journal.put_tensors(name, {"model": slim.state_dict(), "accuracy": accuracy})
    return accuracy, time.time() - t


def verified_export(ctx: Context, slim: nn.Module, budget_ms: float, journal: Journal | None,
                    number: int) -> Verified:
    """:func:`verify_export` of ``slim`` (or the one ``journal`` holds), by rank 0 under torchrun."""
    name = f"attempt{number}-export"

    def verified() -> Verified:
        stored = journal.record(name) if journal else None
        onnx = journal.onnx(f"{name}.onnx") if journal else None
        if stored is not None and onnx is not None:
            report = OnnxReport(**{**stored["report"], "input_shape": tuple(stored["report"]["input_shape"])})
            return Verified(onnx, report, stored["export_ms"], Latency(**stored["latency"]), stored["checks_ms"],
                            stored["base_beside_ms"])
        with ctx.meter("measure export") as meter:
            result = verify_export(slim, ctx.graph.input_shape, ctx.backend, ctx.base_model, ctx.base_ms, budget_ms,
                                   ctx.config.margin, check_twice=not ctx.config.latency_blind, on_pass=meter.update)
        if journal is not None:
            journal.put_onnx(f"{name}.onnx", result.onnx)
            journal.put_record(name, {"report": asdict(result.report), "export_ms": result.export_ms,
                                      "latency": asdict(result.latency), "checks_ms": result.checks_ms,
                                      "base_beside_ms": result.base_beside_ms})
        return result

    return parallel.on_main(verified)


def plan_of(graph: ChannelGraph, decision: Decision, grid: Grid, name: str, budget_ms: float,
            method: str) -> PruningPlan:
    """The decision as a replayable plan on the base model."""
    removed, channels = graph.split_keep(decision.keep)
    return PruningPlan(
        model=name, input_shape=graph.input_shape,
        groups=tuple(GroupPlan(graph.groups[g].root, graph.groups[g].size, tuple(idx)) for g, idx in channels.items()),
        removed_blocks=tuple(b.name for b in removed), ranks=dict(decision.ranks), rank_scheme=decision.rank_scheme,
        levels=grid.levels, align=grid.align, grid_extra={root: list(ws) for root, ws in grid.extra},
        budget_ms=budget_ms, predicted_ms=decision.predicted_ms, signature=graph.signature(), method=method)


@dataclass
class Start:
    """Where every attempt starts (:func:`prepare`): the base model measured, the budget in ms,
    and the LUT's predictor re-anchored on that measurement."""

    base_model: nn.Module      # on the CPU, never changed: candidates are measured beside it
    name: str
    budget: Budget
    budget_ms: float
    base_latency: Latency
    calibrated: Calibrated
    lut_base_ms: float         # the LUT's prediction of the base
    drift: float               # measured base / lut_base_ms
    predictor: Predictor       # the calibrated predictor times drift
    setup_s: float

    @property
    def base_ms(self) -> float:
        return self.base_latency.to_dict()["median_ms"]  # as metrics.json records it


def prepare(graph: ChannelGraph, base_model: nn.Module, name: str, lut: Lut, backend: Backend, budget: Budget,
            settings: Settings, since: float) -> Start:
    """Calibrate ``graph`` (of ``base_model``) against ``lut``, measure the base (or take it from
    the journal), resolve the budget, and re-anchor the prediction on the measured base (``since``:
    when the set-up began). Under torchrun rank 0 alone calibrates and measures."""
    journal = settings.journal

    def measured() -> tuple[Any, ...]:
        calibrated = calibrated_predictor(graph, lut, backend, settings.progress)
        stored = journal.record("base") if journal else None
        if journal is not None and stored is not None:
            say(settings, f"resuming the prune from its checkpoints in {journal.root}")
        latency = (Latency(**stored["latency"]) if stored
                   else measure_base(backend, base_model, graph.input_shape, settings.progress))
        if journal is not None and stored is None:
            journal.put_record("base", {"latency": asdict(latency)})
        return (calibrated.predictor.calibration, calibrated.grid, calibrated.fit, calibrated.fit_current,
                calibrated.warnings, latency)

    calibration, grid, fit, current, warnings, base_latency = parallel.on_main(measured)
    calibrated = Calibrated(Predictor(lut, graph, calibration), grid, fit, current, warnings)
    base_ms = base_latency.to_dict()["median_ms"]
    lut_base_ms = calibrated.predictor.predict(graph.full_widths())
    # Devices drift (frequency, neighbours, thermal state) between profiling and now:
    # re-anchor the prediction on the base model measured a moment ago.
    drift = base_ms / lut_base_ms
    return Start(base_model, name, budget, budget.resolve(base_ms), base_latency, calibrated, lut_base_ms, drift,
                 calibrated.predictor.rescaled(drift), time.time() - since)


def base_score(training: Training, base_model: nn.Module, journal: Journal | None) -> float | None:
    """The base model's accuracy (or the one the journal holds); rank 0's under torchrun."""
    def scored() -> float | None:
        stored = journal.record("base-score") if journal else None
        if stored is not None:
            return stored["accuracy"]
        accuracy = score(training, base_model)
        if journal is not None:
            journal.put_record("base-score", {"accuracy": accuracy})
        return accuracy

    return parallel.on_main(scored)


def prune_model(base_model: nn.Module, input_shape: tuple[int, ...], name: str, lut: Lut, backend: Backend,
                budget: Budget, config: MethodConfig, training: Training, settings: Settings) -> Outcome:
    """The whole prune of ``base_model`` (left unchanged): calibrate, measure the base,
    then attempts, each from the base, narrower while the export misses."""
    t0 = time.time()
    torch.manual_seed(settings.seed)

    def fresh() -> ChannelGraph:  # each attempt starts from the base
        # The method trains the graph's model in place where it has batches; with none (a data-free
        # prune), it only reads it, and the copy shares the base's weights (ViT-H/14's 2.4 GB)
        model = copy.deepcopy(base_model) if training.train_loader is not None else shared_copy(base_model)
        return backend.keyed(checked_graph(model, input_shape))

    graph = fresh()
    start = prepare(graph, base_model, name, lut, backend, budget, settings, since=t0)
    return run_attempts(start, graph, fresh, lut, backend, config, training, settings, get_method(config))


def run_attempts(start: Start, graph: ChannelGraph, fresh_graph: Callable[[], ChannelGraph], lut: Lut,
                 backend: Backend, config: MethodConfig, training: Training, settings: Settings,
                 method: Callable[[Context], Decision]) -> Outcome:
    """Attempts of ``method`` from ``start``: the first on ``graph``, each retry on ``fresh_graph()``
    at a budget narrower by the gap its predecessor's export missed by."""
    t0 = time.time()
    budget_ms, base_model = start.budget_ms, start.base_model
    base_accuracy = base_score(training, base_model, settings.journal)
    eval_base_s = time.time() - t0

    attempts: list[dict[str, Any]] = []
    kept: tuple[Attempt, ChannelGraph, Predictor] | None = None
    attempt_budget_ms, predictor = budget_ms, start.predictor
    while True:
        ctx = Context(graph, predictor, backend, start.calibrated.grid, attempt_budget_ms, start.base_ms, config,
                      training.train_loader, base_model if start.budget.relative else None, settings.seed,
                      settings.progress, training.compute)
        try:
            result = attempt(ctx, training, budget_ms, len(attempts) + 1, base_model, method, settings.journal)
        except BudgetError as exc:
            if kept is None:
                raise
            # the narrower budget is out of reach: the previous attempt's model stands, and says it missed
            attempts.append({"attempt": len(attempts) + 1, "budget_ms": attempt_budget_ms, "error": str(exc)})
            say(settings, f"attempt {len(attempts)} failed ({exc}); keeping attempt {len(attempts) - 1}'s model")
            break
        attempts.append(result.record)
        kept = (result, graph, result.decision.predictor or predictor)
        if result.record["budget_met"] or len(attempts) > settings.retries or config.latency_blind:
            break  # (a latency-blind baseline's miss is its result)
        # The export measured slower than its candidate did in the closed loop, though it is the same
        # network: that gap is the device's noise at this moment. Prune again from the base, to a budget
        # narrower by the gap, so the next candidate leaves it as margin.
        export_ms = result.verified.export_ms
        candidate_ms = result.decision.measured_ms if result.decision.measured_ms is not None else ctx.target_ms
        attempt_budget_ms *= min(candidate_ms, budget_ms) / export_ms
        say(settings, f"the export measures {export_ms:.3f} ms against the budget {budget_ms:.3f} ms (its "
                      f"candidate measured {candidate_ms:.3f} ms): pruning again from the base to "
                      f"{attempt_budget_ms:.3f} ms (attempt {len(attempts) + 1} of {settings.retries + 1})")
        graph = fresh_graph()
        predictor = Predictor(lut, graph, kept[2].calibration)
    best, best_graph, final_predictor = kept
    plan = plan_of(best_graph, best.decision, start.calibrated.grid, start.name, budget_ms, config.name)
    timings = {"setup_s": start.setup_s, "eval_s": eval_base_s}
    for record in attempts:
        for key, seconds in record.pop("timings_s", {}).items():
            timings[key] = timings.get(key, 0.0) + seconds
    timings["total_s"] = start.setup_s + time.time() - t0
    return Outcome(plan, best, attempts, start.base_latency, budget_ms, base_accuracy, start.calibrated,
                   start.lut_base_ms, start.drift, final_predictor, timings)


def metrics_of(outcome: Outcome, base_model: nn.Module, input_shape: tuple[int, ...], budget: Budget,
               config: MethodConfig, backend: Backend, lut_path: str, settings: Settings,
               data: str | None) -> dict[str, Any]:
    """The prune's record (``metrics.json``): measured latencies, budget, accuracy, sizes, calibration,
    every candidate and attempt, the method's details and config."""
    from latprune.stats import params_and_macs

    best = outcome.attempt
    verified = best.verified
    base_params, base_macs = params_and_macs(base_model, input_shape)
    params, macs = params_and_macs(best.decision.slim, input_shape)
    beside = verified.base_beside_ms
    base_ms = outcome.base_latency.to_dict()["median_ms"]
    return {
        # the headline: the export as measured (on the base's scale), its budget, the base, their ratio
        "measured_ms": verified.export_ms,
        "budget_ms": outcome.budget_ms,
        "base_ms": base_ms,
        "speedup": base_ms / verified.export_ms,
        "accuracy": best.accuracy,
        "budget_met": best.record["budget_met"],
        "model": outcome.plan.model,
        "method": config.name,
        "input_shape": list(input_shape),
        "data": data,
        "lut": lut_path,
        "fingerprint": backend.fingerprint(),
        "budget": {"spec": str(budget), "ms": outcome.budget_ms,  # ms: against the base measured at the start
                   "ms_beside": budget.resolve(beside) if beside is not None else None},
        "base": {"latency_ms": outcome.base_latency.to_dict(), "predicted_ms": outcome.lut_base_ms,
                 "accuracy": outcome.base_accuracy, "params": base_params, "macs": base_macs},
        "pruned": {"latency_ms": verified.latency.to_dict(), "base_beside_ms": beside,
                   "predicted_ms": best.decision.predicted_ms, "accuracy": best.accuracy,
                   "removed_blocks": list(outcome.plan.removed_blocks),
                   "params": params, "macs": macs, "onnx_parity_max_abs_diff": verified.report.max_abs_diff},
        "speedup_measured": base_ms / verified.export_ms,
        "macs_ratio": macs / base_macs,
        "calibration": {"lut": asdict(outcome.calibrated.predictor.calibration),
                        "final": asdict(outcome.final_predictor.calibration), "fit": outcome.calibrated.fit,
                        "fit_current": outcome.calibrated.fit_current, "lut_predicted_base_ms": outcome.lut_base_ms,
                        "drift_since_profile": outcome.drift},
        "closed_loop": best.decision.history,
        "attempts": outcome.attempts,
        "method_details": best.decision.extra,
        "config": {"method": config.name, **asdict(config), "retries": settings.retries, "seed": settings.seed},
        "warnings": list(outcome.calibrated.warnings),
        "timings_s": {k: round(v, 2) for k, v in outcome.timings_s.items()},
    }
