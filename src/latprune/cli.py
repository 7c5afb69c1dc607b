"""The ``latprune`` command. Thin: parse, call the API, print (or ``--json``).

Errors from bad input print one line and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from latprune.errors import LatpruneError, LatpruneWarning, SpecError
from latprune.pruner.configs import (
    CONFIGS,
    MethodConfig,
    field_default,
    method_config,
    option_fields,
)


def _add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="ort-cpu",
                   help="latency backend: ort-cpu (default), torch-cpu, torch-cuda, tensorrt, fake (tests)")
    p.add_argument("--threads", type=int, default=None, help="runtime threads (default: all logical CPUs, max 8)")


def _add_base(p: argparse.ArgumentParser, when: str = "") -> None:
    p.add_argument("--model", default=None, dest="base",
                   help=f"{when}the model the run was pruned from, where it is a 'file.py:factory' (latprune never "
                        "imports code named inside a run directory)")


# Config fields without a flag of their own: the closed loop's settings keep their defaults on the
# command line, and ``--lr`` is the fine-tuning's flag, passed on to a method that trains.
SHARED_FLAGS = {"max_iters", "margin", "slack", "lr"}


def _add_method_options(p: argparse.ArgumentParser) -> None:
    """One flag per field of the method configs (``gate_epochs`` -> ``--gate-epochs``), saying which
    methods take it; unset flags are None, so a flag the chosen method does not take is refused."""
    owners: dict[str, list[str]] = {}
    specimen: dict[str, Any] = {}
    for name, cls in CONFIGS.items():
        for field_name, f in option_fields(cls).items():
            if field_name in SHARED_FLAGS:
                continue
            owners.setdefault(field_name, []).append(name)
            if field_name not in specimen or len(f.metadata.get("choices") or ()) > len(
                    specimen[field_name].metadata.get("choices") or ()):
                specimen[field_name] = f
    for field_name, f in specimen.items():
        flag = field_name.replace("_", "-")
        default = field_default(f)
        which = ", ".join(owners[field_name])
        help_text = f"{f.metadata.get('help', '')} (default {default}; {which})"
        if default is True:
            help_text = f"do not {f.metadata.get('help', '')} ({which})"
        if isinstance(default, bool):
            p.add_argument(f"--no-{flag}" if default else f"--{flag}", dest=field_name, action="store_const",
                           const=not default, default=None, help=help_text)
        else:
            p.add_argument(f"--{flag}", dest=field_name, type=type(default), default=None,
                           choices=f.metadata.get("choices"), help=help_text)


def _method(args: argparse.Namespace) -> MethodConfig:
    """The chosen method's config from the flags given; a flag it does not take is an error."""
    names = {n for cls in CONFIGS.values() for n in option_fields(cls)} - SHARED_FLAGS
    given = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if args.method not in CONFIGS:
        return method_config(args.method)  # says which methods there are
    takes = option_fields(CONFIGS[args.method])
    if "lr" in takes:
        given["lr"] = args.lr  # --lr sets the fine-tuning's and the method's own training's
    foreign = sorted(n for n in given if n not in takes)
    if foreign:
        flags = ", ".join("--" + n.replace("_", "-") for n in foreign)
        raise SpecError(f"{flags} do{'es' if len(foreign) == 1 else ''} not apply to --method {args.method}")
    return method_config(args.method, **given)


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latprune", description="Hardware-aware, latency-driven pruning.")
    parser.add_argument("--version", action="version", version=f"latprune {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profile", help="measure a latency LUT of MODEL's units on this device")
    p.add_argument("model", help="'default', 'torchvision:NAME', 'timm:NAME', 'file.py:factory' or a run directory")
    p.add_argument("-o", "--output", required=True, help="LUT file to create or extend (.lut)")
    p.add_argument("--input", default=None, help="input shape BxCxHxW (default: the model's own)")
    _add_base(p, "when MODEL is a run directory: ")
    p.add_argument("--levels", type=int, default=8, help="width levels per channel group (default 8)")
    p.add_argument("--align", type=int, default=None,
                   help="round widths to multiples of this (default: the backend's, 8 for ort-cpu on AVX2)")
    p.add_argument("--calibration-samples", type=int, default=12, help="whole-model measurements for calibration")
    p.add_argument("--recalibrate", action="store_true", help="measure the calibration again even if stored")
    p.add_argument("--shard", default=None, help="i/n: measure only shard i of n (join with `latprune lut merge`)")
    p.add_argument("--passes", type=int, default=2,
                   help="measure each unit this many times, at different moments, keep the fastest (default 2)")
    p.add_argument("--refine", action="store_true",
                   help="sample each group's latency staircase adaptively: probe midpoints between grid widths and "
                        "add widths where latency jumps, so the pruner can keep the cheap side of each step")
    p.add_argument("--lowrank", action="store_true",
                   help="also measure each convolution and linear layer as a factorised pair at a few ranks below "
                        "its break-even rank, in both schemes (channel and spatial), for `prune --lowrank`")
    _add_backend(p)
    _add_json(p)

    p = sub.add_parser("prune", help="prune MODEL to a latency budget, fine-tune, export and measure")
    p.add_argument("model")
    p.add_argument("--lut", required=True, help="LUT file from `latprune profile`")
    p.add_argument("--budget", required=True, help="'0.5x' (of the measured base latency) or '8ms'")
    p.add_argument("-o", "--output", required=True, help="run directory to write")
    p.add_argument("--data", default=None, help="'fashion-mnist', 'digits', 'imagefolder:PATH', 'python:mod:fn'")
    p.add_argument("--input", default=None)
    _add_base(p, "when MODEL is a run directory: ")
    p.add_argument("--epochs", type=float, default=1.0, help="fine-tuning epochs, fractions allowed (0: none)")
    p.add_argument("--lr", type=float, default=0.01,
                   help="learning rate of fine-tuning and of the method's own training (gates, recovery)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto",
                   help="where training and evaluation run: auto (CUDA when available, default), cpu, cuda, cuda:N "
                        "(the latency backend is separate: --backend)")
    p.add_argument("--precision", default="fp32", help="training precision: fp32 (default), bf16, fp16 (CUDA)")
    p.add_argument("--workers", type=int, default=0,
                   help="data-loading processes (default 0: in the main process); imagefolder data wants several")
    p.add_argument("--method", default="gator",
                   help="gator (default: gates trained with the LUT latency loss + knapsack), halp (iterative "
                        "Taylor + latency knapsack, no gate training), taylor, uniform-l1 and flops (baselines)")
    _add_method_options(p)
    p.add_argument("--distill", action="store_true", help="distil from the unpruned model while fine-tuning")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on at most N test images")
    p.add_argument("--retries", type=int, default=1,
                   help="when the fine-tuned export misses the budget, prune again from the base this many times, "
                        "each to a budget narrower by the gap measured (default 1; 0: never)")
    p.add_argument("--force", action="store_true", help="replace an existing run directory")
    p.add_argument("--checkpoint-every", type=float, default=300.0, metavar="SECONDS",
                   help="save the training state this often (default 300); a prune killed and started again with "
                        "the same arguments resumes from its checkpoints (kept in .OUTPUT.checkpoints beside -o "
                        "until the run directory is written)")
    _add_backend(p)
    _add_json(p)

    p = sub.add_parser("export", help="build a deployment bundle (ONNX, AOTInductor, TensorRT) of a run's model")
    p.add_argument("run_dir")
    p.add_argument("--format", default="onnx", choices=["onnx", "aoti", "tensorrt"],
                   help="onnx (ONNX Runtime, default), aoti (AOTInductor package), tensorrt (engine; needs a GPU)")
    p.add_argument("-o", "--output", default=None,
                   help="bundle directory (default: RUN_DIR/bundle-FORMAT); a path ending in .onnx writes that "
                        "checked ONNX file alone, without a bundle")
    p.add_argument("--force", action="store_true", help="replace an existing bundle directory")
    _add_base(p)
    p.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension, 1..--max-batch")
    p.add_argument("--max-batch", type=int, default=64, help="largest batch of a dynamic-batch artifact (64)")
    p.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "torchscript"],
                   help="ONNX exporter: auto (dynamo, TorchScript where it fails; default), dynamo, torchscript")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="aoti: compile for cpu (default) or cuda")
    p.add_argument("--fp16", action="store_true", help="tensorrt: allow fp16 kernels")
    p.add_argument("--int8", action="store_true", help="tensorrt: int8, calibrated on --data")
    p.add_argument("--data", default=None, help="tensorrt --int8: calibration data spec (e.g. fashion-mnist)")
    p.add_argument("--calibration-batches", type=int, default=16, help="tensorrt --int8: batches to calibrate on")
    p.add_argument("--timing-cache", default=None,
                   help="tensorrt: timing cache file (default: beside the run's LUT, LUT.trt-timing-cache)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads to measure with (aoti: compiled in); default: the run's, else all (max 8)")
    _add_json(p)

    p = sub.add_parser("run", help="run a bundle with its runtime on this machine; measured latency vs its budget")
    p.add_argument("bundle", help="bundle directory from `latprune export`")
    p.add_argument("--input", default=None, help=".npy file (float32, the bundle's input shape); default: random")
    p.add_argument("--repeat", type=int, default=None,
                   help="timed runs after 10 warm-up runs (default: >= 100 runs and >= 0.5 s, as at export)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the bundle's)")
    _add_json(p)

    p = sub.add_parser("bench", help="measure an artifact's latency, with the LUT's prediction beside it")
    p.add_argument("artifact", help="run directory or .onnx file")
    p.add_argument("--lut", default=None)
    _add_base(p)
    _add_backend(p)
    _add_json(p)

    p = sub.add_parser("demo", help="profile, prune to 0.5x, export and measure the embedded default")
    p.add_argument("--out", default="runs/demo", help="where the LUT and run directory go")
    p.add_argument("--budget", default="0.5x")
    p.add_argument("--epochs", type=float, default=0.3)
    p.add_argument("--threads", type=int, default=1,
                   help="ONNX Runtime threads (default 1: on a 2-core laptop the other core absorbs OS noise)")
    _add_json(p)

    p = sub.add_parser("lut", help="inspect LUT files")
    lsub = p.add_subparsers(dest="lut_command", required=True)
    q = lsub.add_parser("show", help="print a LUT's metadata and entries")
    q.add_argument("file")
    q.add_argument("--limit", type=int, default=20, help="entries to print (0: all)")
    q.add_argument("--plot", default=None, help="write a PNG of latency vs width per unit shape (and, for a "
                   "refined LUT, PLOT's name with -staircases: each group's latency vs its width, steps marked; for "
                   "a LUT profiled with --lowrank, PLOT's name with -ranks: latency vs rank beside latency vs width)")
    _add_json(q)
    q = lsub.add_parser("merge", help="join LUTs (e.g. shards) measured with the same fingerprint")
    q.add_argument("inputs", nargs="+", help="LUT files to join")
    q.add_argument("-o", "--output", required=True, help="new LUT file")
    _add_json(q)
    q = lsub.add_parser("fidelity", help="predicted vs measured latency of N random width configurations")
    q.add_argument("model")
    q.add_argument("--lut", required=True)
    q.add_argument("--input", default=None)
    _add_base(q, "when MODEL is a run directory: ")
    q.add_argument("--samples", type=int, default=50)
    q.add_argument("--seed", type=int, default=1234)
    q.add_argument("--plot", default=None, help="write a PNG scatter of predicted vs measured")
    q.add_argument("--blocks", action="store_true",
                   help="let configurations remove whole blocks (residual blocks, ShuffleNetV2 branches)")
    q.add_argument("--beside", action="store_true",
                   help="measure the full model right before each configuration and also score the prediction "
                        "re-anchored on it (as prune's relative budgets use the LUT; doubles the measurements)")
    _add_backend(q)
    _add_json(q)
    return parser


def _version() -> str:
    from latprune import __version__

    return __version__


def _warn(lines: list[str]) -> None:
    """Each line as ``latprune: warning: …`` on stderr (with or without --json)."""
    for line in lines:
        print(f"latprune: warning: {line}", file=sys.stderr, flush=True)


def _print(args: argparse.Namespace, result: Any, human: Callable[[Any], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, default=str))
    else:
        print(human(result))


def cmd_profile(args: argparse.Namespace) -> None:
    from latprune.api import profile
    from latprune.graph.check import checked_graph
    from latprune.latency_lut.calibrate import MIN_SAMPLES_FOR_REMOVALS
    from latprune.report import profile_text
    from latprune.specs import load_model, parse_shard

    shard = parse_shard(args.shard)
    spec = load_model(args.model, args.input, args.base)
    if args.calibration_samples < MIN_SAMPLES_FOR_REMOVALS and shard == (1, 1):
        if checked_graph(spec.model, spec.input_shape).blocks:
            _warn([f"--calibration-samples {args.calibration_samples} leaves out configurations that remove "
                   f"blocks; with fewer than {MIN_SAMPLES_FOR_REMOVALS} the calibration cannot fit what "
                   "a removed block costs (the default is 12)"])
    lut = profile(spec.model, spec.input_shape, args.backend, args.threads, args.output, levels=args.levels,
                  align=args.align, calibration_samples=args.calibration_samples, passes=args.passes,
                  refine=args.refine, lowrank=args.lowrank, recalibrate=args.recalibrate, shard=shard,
                  name=spec.name, progress=not args.json)
    assert lut.report is not None  # profile() always reports what it measured (its warnings went to warnings.warn)
    _print(args, lut.report.to_dict(), profile_text)


def _loaders(args: argparse.Namespace, data_spec: str | None,
             size: tuple[int, int] | None = None) -> tuple[Any, Any, str | None]:
    """Training and evaluation loaders of the ``--data`` spec (None, None without one), images at ``size``."""
    if data_spec is None:
        return None, None, None
    from latprune.data import load_data, loader, subset

    data = load_data(data_spec, input_size=size)
    train = loader(data.train, args.batch_size, shuffle=True, seed=0, workers=args.workers)
    test = loader(subset(data.test, args.eval_limit), 128, shuffle=False, workers=args.workers)
    return train, test, data.name


def cmd_prune(args: argparse.Namespace) -> None:
    from latprune import parallel

    done = False
    try:
        _prune(args, _join(args))
        done = True
    finally:
        parallel.leave(done)


def _prune(args: argparse.Namespace, world: Any) -> None:
    from latprune.api import LUT, check_run_target, prune
    from latprune.budget import parse_budget
    from latprune.errors import BudgetMissed
    from latprune.pruner.loop import FinetuneConfig
    from latprune.report import prune_text
    from latprune.specs import load_model

    out = Path(args.output)
    check_run_target(out, args.force)  # before any work: a long prune must not end in this
    if args.checkpoint_every < 0:
        raise SpecError(f"--checkpoint-every must be 0 or more seconds, not {args.checkpoint_every}")
    method = _method(args)
    budget = parse_budget(args.budget)
    spec = load_model(args.model, args.input, args.base)
    data_spec = args.data or spec.default_data
    needs_data = method.needs_data or args.epochs > 0
    if needs_data and data_spec is None:
        raise SpecError(f"model {spec.name!r} has no default data: pass --data (e.g. imagefolder:PATH), "
                        "or prune without data using --method halp --importance l1 --epochs 0")
    size = tuple(spec.input_shape[-2:]) if len(spec.input_shape) == 4 else None
    train, test, data_name = _loaders(args, data_spec if needs_data else None, size)
    lut = LUT.open(args.lut, args.backend, args.threads)
    checkpoints = out.with_name(f".{out.name}.checkpoints")
    try:
        result = prune(spec.model, lut, budget, example_input=spec.input_shape, method=method, train_loader=train,
                       val_loader=test, finetune=FinetuneConfig(args.epochs, args.lr, args.distill) if train else None,
                       device=args.device, precision=args.precision, retries=args.retries, name=spec.name,
                       data_name=data_name, checkpoints=checkpoints, checkpoint_every_s=args.checkpoint_every,
                       progress=not args.json and world.main)
    except LatpruneError as exc:  # refused: nothing to resume (a crash or a kill keeps the checkpoints)
        if exc.option != "checkpoints" and world.main:
            shutil.rmtree(checkpoints, ignore_errors=True)
        raise
    m = result.metrics
    if world.main:  # under torchrun every rank holds the result; rank 0 writes and reports it
        result.save(out, overwrite=args.force)
        shutil.rmtree(checkpoints, ignore_errors=True)  # the run directory holds what they served
        _print(args, m, prune_text)
    if not m["budget_met"]:
        budget_ms = m["budget"]["ms_beside"] or m["budget"]["ms"]
        raise BudgetMissed(f"the run directory {out} is written, but its model measures "
                           f"{m['pruned']['latency_ms']['median_ms']:.3f} ms against the budget {budget_ms:.3f} ms "
                           f"after {len(m['attempts'])} attempt(s): prune again with a tighter --budget or more "
                           "--retries, or measure it again with `latprune bench` on a quiet machine")


def _join(args: argparse.Namespace) -> Any:
    """The device and precision checked; then, under torchrun, this process's rank in the world,
    refusing ranks given other arguments (rank 0 alone reports warnings); else the single-process world."""
    from latprune import parallel
    from latprune.train import Compute

    compute = Compute.resolve(args.device, args.precision)  # refused before any work
    world = parallel.join(compute.torch_device.type)
    parallel.same_everywhere("arguments", {k: v for k, v in vars(args).items() if k != "func"})
    if not world.main:
        warnings.simplefilter("ignore", LatpruneWarning)
    return world


def _load_run(run_dir: str, base: str | None) -> Any:
    from latprune.api import load
    from latprune.specs import base_module

    return load(run_dir, base_module(Path(run_dir), base)) if Path(run_dir).is_dir() else load(run_dir)


def cmd_export(args: argparse.Namespace) -> None:
    from latprune.api import export
    from latprune.report import bundle_text

    options = dict(dynamic_batch=args.dynamic_batch, max_batch=args.max_batch, threads=args.threads,
                   exporter=args.exporter, device=args.device, fp16=args.fp16, int8=args.int8, data=args.data,
                   calibration_batches=args.calibration_batches, timing_cache=args.timing_cache)
    from latprune.exporters.bundle import ExportOptions

    ExportOptions(format=args.format, **options)  # bad flags are refused before the run is loaded
    result = _load_run(args.run_dir, args.base)
    if args.output is not None and args.output.endswith(".onnx"):
        _export_onnx_file(args, result)
        return
    out = args.output or str(Path(args.run_dir) / f"bundle-{args.format}")
    bundle = export(result, args.format, out, overwrite=args.force, **options)
    _print(args, {**bundle.meta, "path": str(bundle.path)}, bundle_text)


def _export_onnx_file(args: argparse.Namespace, result: Any) -> None:
    """``-o FILE.onnx``: the checked ONNX file alone, without a bundle."""
    from dataclasses import asdict

    from latprune.exporters.onnx import export_onnx

    if args.format != "onnx":
        raise SpecError(f"-o {args.output} names an .onnx file, but --format is {args.format}; "
                        "give a bundle directory instead")
    report = export_onnx(result.model, result.input_shape, args.output, threads=args.threads or 1,
                         exporter=args.exporter, dynamic_batch=args.dynamic_batch, max_batch=args.max_batch)
    _print(args, asdict(report), lambda r: (
        f"wrote {r['path']} ({r['exporter']} exporter, opset {r['opset']}, {r['size_bytes'] / 1e6:.2f} MB); "
        f"onnx.checker and shape inference passed; ONNX Runtime vs PyTorch max abs diff {r['max_abs_diff']:.2e}"))


def cmd_run(args: argparse.Namespace) -> None:
    from latprune.exporters.bundle import load_bundle
    from latprune.report import run_text
    from latprune.specs import load_input

    if args.repeat is not None and args.repeat < 1:
        raise SpecError(f"--repeat must be at least 1, got {args.repeat}")
    if args.threads is not None and args.threads < 1:
        raise SpecError(f"--threads must be at least 1, got {args.threads}")
    bundle = load_bundle(args.bundle)
    bundle.format.require(bundle.meta)
    x = load_input(args.input, bundle) if args.input is not None else None
    result = bundle.measure(x, args.repeat, args.threads, input_source=args.input)
    _warn([w.replace(f"threads={args.threads}", f"--threads {args.threads}") for w in result["warnings"]])
    _print(args, result, run_text)


def cmd_bench(args: argparse.Namespace) -> None:
    from latprune.bench import bench
    from latprune.report import bench_text
    from latprune.specs import base_module

    run_dir = Path(args.artifact) if Path(args.artifact).is_dir() else Path(args.artifact).parent
    base = base_module(run_dir, args.base) if args.base and (run_dir / "plan.json").is_file() else None
    _print(args, bench(args.artifact, args.lut, args.backend, args.threads, base), bench_text)


def cmd_demo(args: argparse.Namespace) -> None:
    from latprune.demo import run_demo
    from latprune.report import demo_text

    result = run_demo(Path(args.out), args.budget, args.epochs, args.threads, progress=not args.json)
    _print(args, result, demo_text)


def cmd_lut(args: argparse.Namespace) -> None:
    {"show": _lut_show, "merge": _lut_merge, "fidelity": _lut_fidelity}[args.lut_command](args)


def _lut_show(args: argparse.Namespace) -> None:
    from latprune.latency_lut.store import Lut
    from latprune.report import lut_text

    with Lut.open(args.file) as lut:
        entries = list(lut.items())
        shown = entries if args.limit == 0 else entries[: args.limit]
        result = {
            "file": args.file, "schema_version": lut.meta("schema_version"), "fingerprint": lut.fingerprint,
            "entries": len(entries), "fusion_rules": lut.meta("fusion_rules"),
            "calibrations": {m: {k: v for k, v in c.items() if k not in ("points", "staircases")}
                             for m, c in lut.calibrations().items()},
            "staircases": {m: c["staircases"] for m, c in lut.calibrations().items() if c.get("staircases")},
            "shown": [{"key": k.text, **lat.to_dict()} for k, lat in shown],
        }
        if args.plot:
            from latprune.latency_lut.plots import plot_lut, plot_ranks, plot_staircases, rank_curves

            stem = Path(args.plot)
            beside = lambda tag: str(stem.with_name(f"{stem.stem}-{tag}{stem.suffix or '.png'}"))  # noqa: E731
            result["plot"] = plot_lut(lut, args.plot)
            if rank_curves(lut):
                result["rank_plot"] = plot_ranks(lut, beside("ranks"))
            if result["staircases"]:
                result["staircase_plot"] = plot_staircases(result["staircases"], beside("staircases"), lut.path.name)
    _print(args, result, lut_text)


def _lut_merge(args: argparse.Namespace) -> None:
    from latprune.latency_lut.store import merge_luts

    _print(args, merge_luts(args.output, args.inputs), lambda r: (
        f"wrote {r['output']}: {r['entries']} entries and {r['calibrations']} calibration(s) "
        f"from {len(r['inputs'])} LUTs"))


def _lut_fidelity(args: argparse.Namespace) -> None:
    from latprune.api import LUT, fidelity
    from latprune.report import fidelity_text
    from latprune.specs import load_model

    spec = load_model(args.model, args.input, args.base)
    result = fidelity(spec.model, spec.input_shape, LUT.open(args.lut, args.backend, args.threads), args.samples,
                      seed=args.seed, blocks=args.blocks, beside=args.beside, name=spec.name,
                      progress=not args.json).to_dict()
    if args.plot:
        from latprune.latency_lut.plots import plot_fidelity

        result["plot"] = plot_fidelity(result, args.plot)
    _print(args, result, fidelity_text)


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "profile": cmd_profile, "prune": cmd_prune, "export": cmd_export, "run": cmd_run, "bench": cmd_bench,
    "demo": cmd_demo, "lut": cmd_lut,
}


# The flag that sets an API argument an error names (LatpruneError.option).
FLAGS = {"overwrite": "--force replaces it", "model": "--model FILE.py:factory"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch.*")
    warnings.simplefilter("always", LatpruneWarning)
    shown = warnings.showwarning

    def show(message: Any, category: type[Warning], *rest: Any, **kw: Any) -> None:
        if issubclass(category, LatpruneWarning):
            _warn([str(message)])
        else:
            shown(message, category, *rest, **kw)

    warnings.showwarning = show
    try:
        return _run(args)
    finally:
        warnings.showwarning = shown


def _run(args: argparse.Namespace) -> int:
    try:
        from latprune._progress import log_interval_s

        log_interval_s()  # a bad LATPRUNE_PROGRESS_INTERVAL is refused before any file is written
        COMMANDS[args.command](args)
    except LatpruneError as exc:
        flag = FLAGS.get(exc.option or "")
        print(f"latprune: error: {exc}" + (f" ({flag})" if flag else ""), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("latprune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `latprune … | head`: the reader left; say nothing more
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
