"""Benchmark: every torchvision classifier through latprune, data-free, with Torch-Pruning beside it.

    python benchmarks/zoo.py [--models resnet18,googlenet] [--size 64] [--levels 4] [--force]
    python benchmarks/zoo.py --table

For each model of ``torchvision.models.list_models(module=torchvision.models)`` (random
init, nothing downloaded), or those of ``--models``:

1. build: ``torchvision:NAME`` from latprune's registry at 1x3xSxS, S = ``--size`` (64), or
   the next of 70, 96, 128, 224 where a forward pass at S fails (inception_v3 needs 75, ViT-H/14 a
   multiple of 14, MaxViT 224); the row says which sizes failed and why;
2. profile: ``latprune.profile`` on ort-cpu, 1 thread, ``--levels`` width levels, 1 pass,
   ``--calibration-samples`` (6), into ``benchmarks/luts/zoo/`` (a killed profile resumes);
3. prune: ``latprune.prune(..., "0.6x", method=HalpConfig(importance="l1"))``, data-free
   (``--method uniform-l1``: every group narrowed alike, heads included);
4. export: ``latprune.export(result, "onnx", ...)``: parity (a classifier torchvision starts at
   zeros, ViT's, given seeded weights first, so the outputs compared are not zero) and the bundle
   measured, alone (as ``export`` measures it) and in passes interleaved with the base model (as
   the prune measures), then run by ``latprune run`` as a user would;
5. tp: Torch-Pruning's ``MagnitudePruner`` (L1, ratio 0.4, the classifier ignored), one
   ``step()`` and one forward pass, on the same model and input.

Each model's latprune steps and its Torch-Pruning attempt run in child processes with an
address-space limit (``--memory-gib``) and a time limit, so a model that explodes in memory
or time is a row, not the end of the run (Torch-Pruning's tracer needed more than 14 GiB on
swin_v2 and maxvit). A step that fails ends the model's latprune steps; its row names the
step and the exception's first line. Rows go to ``benchmarks/results/zoo_ort-cpu_1t.json``
(``--tag NAME`` appends ``_NAME``), keyed by model, written as each model finishes; a model
already there is skipped unless ``--force``; a LUT already there is reused, its calibration
too, unless ``--recalibrate``. Child logs: ``benchmarks/work/zoo/NAME.log``.
Run it on a quiet machine: the latencies are timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proc_memory import reset_peak, resident_kib  # noqa: E402
from results_io import commit_of, write_json  # noqa: E402

HERE = Path(__file__).resolve().parent
BACKEND, THREADS = "ort-cpu", 1
BUDGET = "0.6x"
NEXT_SIZES = (70, 96, 128, 224)  # tried in turn where the model does not run at --size
# (70: the smallest multiple of ViT-H/14's patch above 64; 224 gives it 257 tokens)
TP_RATIO = 0.4               # Torch-Pruning's channel ratio removed: about a 0.6x model


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, cut to ``limit`` characters."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
    return line if len(line) <= limit else line[:limit - 1] + "…"


def limit_memory(gib: float) -> None:
    """Cap this process's address space: an allocation past it raises instead of swapping the machine."""
    cap = int(gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


# --------------------------------------------------------------------------- children


def run_step(row: dict[str, Any], row_file: Path, label: str, fn: Callable[[], None]) -> bool:
    """Run one step of a child's ``row`` (it has ``steps_s``, ``failed`` and ``warnings``): the row
    names the step while it runs, then records its seconds, its peak resident memory (``peak_gib``),
    latprune's warnings and, where it
    raised, ``failed`` with the step and the exception's first line; written to ``row_file``
    before and after. Whether the step succeeded."""
    import latprune

    row["running"] = label
    write_json(row_file, row)
    reset_peak()
    t0 = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", latprune.LatpruneWarning)
        try:
            fn()
        except Exception as exc:  # latprune's own errors and any other: the row says which and where
            row["failed"] = {"step": label, "error": one_line(exc),
                             "latprune_error": isinstance(exc, latprune.LatpruneError)}
            print(traceback.format_exc(), file=sys.stderr)
    row["warnings"] += [f"{label}: {one_line(w.message, 200)}" for w in caught
                        if issubclass(w.category, latprune.LatpruneWarning)]
    row["steps_s"][label] = round(time.time() - t0, 1)
    peak = resident_kib("VmHWM")
    if peak is not None:
        row.setdefault("peak_gib", {})[label] = round(peak / (1 << 20), 2)
    row.pop("running")
    write_json(row_file, row)
    return row["failed"] is None


def fitted_model(name: str, first: int) -> tuple[Any, int, dict[str, str]]:
    """The registry's ``torchvision:NAME`` at the first square size it runs at, from ``first``
    (then NEXT_SIZES above it); why each size tried before failed."""
    import torch

    from latprune.models import registered_model

    failed: dict[str, str] = {}
    for size in (first, *(s for s in NEXT_SIZES if s > first)):
        shape = (1, 3, size, size)
        try:
            spec = registered_model(f"torchvision:{name}", shape)
            with torch.no_grad():
                spec.model(torch.randn(shape))
        except Exception as exc:  # a model too small for its pooling, or one built for another size
            failed[str(size)] = one_line(exc)
            continue
        return spec, size, failed
    raise RuntimeError(f"runs at none of the sizes tried: {failed}")


def nonzero_classifier_(model: Any) -> bool:
    """Give a classifier that torchvision initialises to zeros (ViT's head) seeded random weights, so
    that the model's output, and so its ONNX parity, is not zero whatever its layers compute; whether
    it did."""
    import torch
    from torch import nn

    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    if not last or last[0].weight.any():
        return False
    with torch.no_grad():
        last[0].weight.copy_(torch.randn(last[0].weight.shape, generator=torch.Generator().manual_seed(0)) * 0.02)
    return True


def cli_run(bundle: Path) -> dict[str, Any]:
    """``latprune run BUNDLE --json --repeat 10``, as a user runs a bundle: its exit code and, where it
    ran, the output's shape and the median latency it printed."""
    done = subprocess.run([sys.executable, "-m", "latprune", "run", str(bundle), "--json", "--repeat", "10"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return {"rc": done.returncode, "error": (done.stderr.strip().splitlines() or ["?"])[-1][:300]}
    out = json.loads(done.stdout)
    return {"rc": 0, "outputs": out.get("outputs"), "latency_ms": out.get("latency_ms")}


def heads_groups(plan: Any, base: Any) -> list[Any]:
    """The plan's groups that count an attention's heads: rooted at an attention module of the
    base whose head count is the group's size."""
    out = []
    for group in plan.groups:
        try:
            module = base.get_submodule(group.root)
        except AttributeError:
            continue
        heads = getattr(module, "num_heads", getattr(module, "n_heads", None))  # n_heads: MaxViT's
        if "Attention" in type(module).__name__ and heads == group.size:
            out.append(group)
    return out


def bundle_beside_base(artifact: Path, spec: Any) -> dict[str, float | bool]:
    """The bundle's ONNX file measured in passes interleaved with the base model, as the prune
    measures its candidates: their ratio, which a relative budget bounds, does not move with the
    machine's speed at the moment. The bundle's own figure (``latency_ms``) is one measurement alone."""
    from latprune.budget import parse_budget
    from latprune.latency_lut.backends import get_backend
    from latprune.latency_lut.profile import measure_beside, model_pass

    backend = get_backend(BACKEND, THREADS)
    base, pruned = measure_beside([model_pass(backend, spec.model, spec.input_shape),
                                   lambda: backend.measure_artifact(str(artifact))])
    ratio = pruned.median_ms / base.median_ms
    return {"base_ms": base.median_ms, "bundle_ms": pruned.median_ms, "ratio": ratio,
            "budget_met": ratio <= parse_budget(BUDGET).value}


def latprune_child(name: str, args: argparse.Namespace, row_file: Path) -> None:
    """Build, profile, prune and export ``name``, writing the row to ``row_file`` after each step."""
    limit_memory(args.memory_gib)
    import latprune
    from latprune.latency_lut.backends import get_backend

    row: dict[str, Any] = {"model": name, "steps_s": {}, "failed": None, "warnings": [],
                           "fingerprint": get_backend(BACKEND, THREADS).fingerprint()}
    state: dict[str, Any] = {}

    def build() -> None:
        spec, size, failed = fitted_model(name, args.size)
        state["spec"] = spec
        row["input"] = list(spec.input_shape)
        row["sizes_failed"] = failed
        row["classifier_initialised"] = nonzero_classifier_(spec.model)

    def profile() -> None:
        spec = state["spec"]
        size = spec.input_shape[-1]
        path = HERE / "luts" / "zoo" / f"{name}-{size}-{BACKEND}-{THREADS}t-l{args.levels}.lut"
        path.parent.mkdir(parents=True, exist_ok=True)
        lut = latprune.profile(spec.model, spec.input_shape, backend=BACKEND, threads=THREADS, path=path,
                               levels=args.levels, passes=1, calibration_samples=args.calibration_samples,
                               recalibrate=args.recalibrate, name=spec.name, progress=False)
        state["lut"] = lut
        report = lut.report
        row["profile"] = {"lut": str(path.relative_to(HERE)), "units": report.units, "keys": report.keys,
                          "measured": report.measured, "reused": report.reused,
                          "calibration": report.calibration}
        row["kept_full"] = report.kept_full

    def prune() -> None:
        spec = state["spec"]
        method = latprune.HalpConfig(importance="l1") if args.method == "halp" else args.method
        result = latprune.prune(spec.model, state["lut"], BUDGET, example_input=spec.input_shape,
                                method=method, name=spec.name, progress=False)
        row["method"] = args.method
        state["result"] = result
        m, plan = result.metrics, result.plan
        heads = heads_groups(plan, spec.model)
        row.update({
            "base_ms": m["base_ms"], "budget_ms": m["budget_ms"], "measured_ms": m["measured_ms"],
            "budget_met": m["budget_met"], "speedup": m["speedup"], "macs_ratio": m["macs_ratio"],
            "groups": len(plan.groups), "groups_pruned": sum(g.width < g.size for g in plan.groups),
            "heads_groups": len(heads), "heads_groups_pruned": sum(g.width < g.size for g in heads),
            "blocks_removed": list(plan.removed_blocks), "predicted_ms": plan.predicted_ms,
            "closed_loop": [{k: c[k] for k in ("target_ms", "predicted_ms", "measured_ms", "fits")}
                            for c in m["closed_loop"]],
            "closed_loop_candidates": len(m["closed_loop"]), "prune_timings_s": m["timings_s"],
            "prune_parity_max_abs_diff": m["pruned"]["onnx_parity_max_abs_diff"],
        })

    def export() -> None:
        # the bundle exports the model again: the prune's export (1.5 GB for RegNetY-128GF) can go
        state["result"] = dataclasses.replace(state["result"], onnx=None)
        with tempfile.TemporaryDirectory(dir=row_file.parent) as tmp:  # a VGG's bundle is half a gigabyte
            bundle = latprune.export(state["result"], "onnx", Path(tmp) / "bundle", threads=THREADS)
            meta = bundle.meta
            beside = bundle_beside_base(bundle.path / meta["artifact"], state["spec"])
            cli = cli_run(bundle.path)
        parity = meta["parity"]
        row["export"] = {"parity_max_abs_diff": parity["max_abs_diff"], "parity_max_abs_ref": parity["max_abs_ref"],
                         "parity_tol": parity["tol"], "parity_rtol": parity["rtol"],
                         "parity_passed": parity["passed"], "exporter": meta["export"].get("exporter"),
                         "latency_ms": meta["measured"]["latency_ms"]["median_ms"],
                         "budget_met": meta["measured"]["budget_met"], "beside_base": beside, "latprune_run": cli}
        if parity["passed"] is not True:
            from latprune.parity import Parity

            found = Parity(parity["max_abs_diff"], parity["max_abs_ref"])
            raise RuntimeError(f"ONNX parity {found.describe(parity['tol'], parity['rtol'])}")

    for label, fn in (("build", build), ("profile", profile), ("prune", prune), ("export", export)):
        if not run_step(row, row_file, label, fn):
            break


def tp_child(name: str, args: argparse.Namespace, row_file: Path) -> None:
    """Torch-Pruning's magnitude pruner on ``name``: trace, one step, one forward pass."""
    limit_memory(args.memory_gib)
    import torch
    import torch_pruning as tp
    from torch import nn

    row: dict[str, Any] = {"version": tp.__version__, "status": None, "stage": "build"}
    t0 = time.time()
    try:
        spec, size, _ = fitted_model(name, args.size)  # at the size latprune ran at
        model, x = spec.model, torch.randn(spec.input_shape)
        row["input"] = list(spec.input_shape)
        classes = spec.num_classes
        ignored = [m for m in model.modules() if (isinstance(m, nn.Linear) and m.out_features == classes)
                   or (isinstance(m, nn.Conv2d) and m.out_channels == classes)]  # heads, aux heads included
        params = sum(p.numel() for p in model.parameters())
        row["stage"] = "trace"
        write_json(row_file, row)
        pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=TP_RATIO, ignored_layers=ignored)
        row["stage"] = "step"
        write_json(row_file, row)
        pruner.step()
        row["stage"] = "forward"
        write_json(row_file, row)
        with torch.no_grad():
            y = model(x)
        if tuple(y.shape) != (1, classes):
            raise RuntimeError(f"output shape {tuple(y.shape)}, expected {(1, classes)}")
        row.pop("stage")
        row.update(status="ok", params_ratio=round(sum(p.numel() for p in model.parameters()) / params, 4))
    except Exception as exc:
        row.update(status="error", error=one_line(exc))
        print(traceback.format_exc(), file=sys.stderr)
    row["s"] = round(time.time() - t0, 1)
    write_json(row_file, row)


# --------------------------------------------------------------------------- parent


def run_process(cmd: list[str], timeout_s: float, log: Path, title: str) -> int | None:
    """Run ``cmd`` in a session of its own, its output appended to ``log`` under a ``=== title``
    line; its exit code, or None where it ran past ``timeout_s`` and was killed with whatever it started."""
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"\n=== {title} {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the child and whatever it started
            proc.wait()
            return None


def how_it_ended(rc: int | None, timeout_s: float, log: Path) -> str:
    """A child's end in words, from :func:`run_process`'s exit code, with where its log is."""
    why = f"killed after the {timeout_s:.0f} s limit" if rc is None else (
        f"died on signal {-rc}" if rc < 0 else f"exited with code {rc}")
    return why + f" (see {log.relative_to(HERE) if log.is_relative_to(HERE) else log})"


def run_child(kind: str, name: str, size: int, args: argparse.Namespace, timeout_s: float,
              log: Path) -> dict[str, Any]:
    """Run one child (``latprune`` or ``tp``) on ``name`` from input ``size``; its row, with how it
    ended when it died."""
    with tempfile.TemporaryDirectory(dir=log.parent) as tmp:
        row_file = Path(tmp) / "row.json"
        cmd = [sys.executable, __file__, "--child", kind, "--models", name, "--row-file", str(row_file),
               "--size", str(size), "--levels", str(args.levels),
               "--calibration-samples", str(args.calibration_samples), "--memory-gib", str(args.memory_gib),
               "--method", getattr(args, "method", "halp")]
        cmd += ["--recalibrate"] if args.recalibrate else []
        rc = run_process(cmd, timeout_s, log, kind)
        row = json.loads(row_file.read_text()) if row_file.is_file() else {}
    if rc == 0:
        return row
    why = how_it_ended(rc, timeout_s, log)
    if kind == "latprune":
        row.setdefault("model", name)
        row["failed"] = {"step": row.pop("running", "start"), "error": why, "latprune_error": False}
    else:
        row.update(status="error", error=why, stage=row.get("stage", "start"))
    return row


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {pkg: version(pkg) for pkg in ("torch", "torchvision", "torch-pruning", "onnxruntime")}
    out["latprune"] = commit_of(HERE)
    return out


def cell_s(row: dict[str, Any], step: str) -> str:
    s = row.get("steps_s", {}).get(step)
    return "" if s is None else f"{s:.0f}"


def parity_cell(exp: dict[str, Any]) -> str:
    """The max abs diff, and where the outputs are large, its share of the largest output."""
    diff, ref = exp.get("parity_max_abs_diff"), exp.get("parity_max_abs_ref")
    if diff is None:
        return ""
    return f"{diff:.1e}" + (f" ({diff / ref:.0e} of max |out|)" if ref and diff > 1e-4 else "")


def table(results: dict[str, Any]) -> str:
    """The BENCHMARKS.md table of the result file's rows."""
    lines = ["| model | input | build / profile / prune / export s | base ms | budget ms | pruned ms | bundle ms "
             "| budget (prune / bundle) | groups pruned | heads groups pruned | blocks removed | kept full "
             "| ONNX parity | latprune failure | Torch-Pruning |",
             "|---|---|---|--:|--:|--:|--:|---|--:|--:|--:|--:|---|---|---|"]
    for name, row in results.items():
        size = row.get("input", ["?"])[-1]
        failed = row.get("failed")
        fail = f"{failed['step']}: {failed['error']}" if failed else ""
        steps = " / ".join(cell_s(row, s) for s in ("build", "profile", "prune", "export"))
        exp = row.get("export") or {}
        beside = exp.get("beside_base") or {}
        met = " / ".join({True: "met", False: "missed"}.get(v, "–") for v in (row.get("budget_met"),
                                                                              exp.get("budget_met")))
        if beside:
            met += f" ({beside['ratio']:.2f}x beside the base: {'met' if beside['budget_met'] else 'missed'})"
        parity = parity_cell(exp)
        tpr = row.get("tp") or {}
        tp_cell = "ok" if tpr.get("status") == "ok" else ": ".join(filter(None, (tpr.get("stage"), tpr.get("error"))))

        def num(key: str, fmt: str = "{:.3f}") -> str:
            value = row.get(key)
            return fmt.format(value) if isinstance(value, (int, float)) else ""

        groups = f"{row['groups_pruned']} of {row['groups']}" if "groups" in row else ""
        heads = ("" if "heads_groups" not in row else "not counted" if row["heads_groups"] is None
                 else f"{row['heads_groups_pruned']} of {row['heads_groups']}")
        blocks = str(len(row["blocks_removed"])) if "blocks_removed" in row else ""
        kept = str(len(row["kept_full"])) if "kept_full" in row else ""
        bundle_ms = f"{exp['latency_ms']:.3f}" if exp.get("latency_ms") is not None else ""
        cells = [name, f"{size}×{size}", steps, num("base_ms"), num("budget_ms"), num("measured_ms"), bundle_ms, met,
                 groups, heads, blocks, kept, parity, fail, tp_cell]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated torchvision names (default: all of list_models)")
    parser.add_argument("--size", type=int, default=64, help="input height and width tried first")
    parser.add_argument("--method", choices=("halp", "uniform-l1"), default="halp",
                        help="halp with L1 importance (the knapsack), or uniform-l1 (every group alike)")
    parser.add_argument("--levels", type=int, default=4, help="width levels per channel group in the LUT")
    parser.add_argument("--calibration-samples", type=int, default=6)
    parser.add_argument("--memory-gib", type=float, default=8.0, help="address-space limit of each child")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="limit on one model's latprune steps")
    parser.add_argument("--tp-timeout-s", type=float, default=600.0, help="limit on one Torch-Pruning attempt")
    parser.add_argument("--no-tp", action="store_true", help="skip the Torch-Pruning column")
    parser.add_argument("--force", action="store_true", help="run models already in the result file again")
    parser.add_argument("--recalibrate", action="store_true",
                        help="measure an existing LUT's calibration again (it is reused otherwise)")
    parser.add_argument("--tag", default=None, help="suffix of the result file, e.g. the machine's name")
    parser.add_argument("--table", action="store_true", help="print the markdown table of the result file")
    parser.add_argument("--child", choices=("latprune", "tp"), help=argparse.SUPPRESS)
    parser.add_argument("--row-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:
        (latprune_child if args.child == "latprune" else tp_child)(args.models, args, args.row_file)
        return
    results_path = HERE / "results" / f"zoo_{BACKEND}_{THREADS}t{'_' + args.tag if args.tag else ''}.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if args.table:
        print(table(results))
        return
    import torchvision.models as tvm

    known = tvm.list_models(module=tvm)
    names = args.models.split(",") if args.models else known
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"not torchvision classifiers: {', '.join(unknown)}")
    work = HERE / "work" / "zoo"
    work.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names, 1):
        if name in results and not args.force:
            print(f"[{i}/{len(names)}] {name}: already in {results_path.name}, skipped (--force runs it again)")
            continue
        log = work / f"{name}.log"
        log.unlink(missing_ok=True)
        t0 = time.time()
        row = run_child("latprune", name, args.size, args, args.timeout_s, log)
        if not args.no_tp:  # at the size latprune ran at
            row["tp"] = run_child("tp", name, row.get("input", [args.size])[-1], args, args.tp_timeout_s, log)
        row.update(versions=versions(), date=time.strftime("%Y-%m-%d"), budget=BUDGET, levels=args.levels,
                   calibration_samples=args.calibration_samples, wall_s=round(time.time() - t0, 1))
        results[name] = row
        write_json(results_path, results)
        failed = row.get("failed")
        outcome = (f"failed at {failed['step']}: {failed['error']}" if failed else
                   f"{row['measured_ms']:.3f} ms against {row['budget_ms']:.3f} ms "
                   f"({'met' if row['budget_met'] else 'missed'})")
        print(f"[{i}/{len(names)}] {name}: {outcome}; Torch-Pruning "
              f"{(row.get('tp') or {}).get('status', 'skipped')}; {row['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
