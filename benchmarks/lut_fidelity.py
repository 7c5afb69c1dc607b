"""Benchmark: how well the LUT predicts measured latency, on three models or across torchvision's zoo.

    python benchmarks/lut_fidelity.py [--models resnet18,mobilenet_v2,efficientnet-lite0]
                                      [--backend ort-cpu] [--threads 2] [--samples 50] [--force]
                                      [--tag NAME] [--beside] [--recalibrate]
    python benchmarks/lut_fidelity.py --zoo [--models resnet18,vgg11] [--sizes 96,160] [--threads 1]
                                      [--samples 20] [--batch 32] [--force] [--tag NAME]
    python benchmarks/lut_fidelity.py --table [--batch 32] [--tag NAME]
    python benchmarks/lut_fidelity.py --table --latest TAG1,TAG2,…

Three models (issue #3's targets), the default: for each model at 1x3x224x224,
``latprune.profile`` from an empty LUT on the backend (timed), then
``latprune.fidelity`` with N random width configurations. Writes
benchmarks/results/lut_fidelity.json (ort-cpu, 2 threads; other thread counts:
lut_fidelity_<n>t.json; other backends: lut_fidelity_<backend>.json; ``--tag NAME``
appends _NAME, e.g. for another machine), one entry per model with the device
fingerprint, and benchmarks/results/fidelity_[<backend>_][<n>t_][<tag>_]<model>.png.
Resumable: a model whose result is already in the JSON is skipped (unless --force),
and a killed profile resumes from its LUT in benchmarks/luts/. ``--beside`` measures
the full model right before each configuration and adds the ``beside`` score (the
prediction re-anchored on that measurement: how ``prune`` uses the LUT).

The zoo (``--zoo``, issue #36): the LUT on models it was not tuned on. One or two
members of every torchvision CNN family and two transformers (:data:`ZOO`, or
``--models``), each at every size of ``--sizes`` (96 and 160; a model that does not
run at a size takes the next of 128 and 224 above it that runs), on 1 thread with 20
configurations unless told otherwise (``--batch N`` images per inference: on a GPU, batch 1
is bound by kernel launches and batch 32 is where widths matter), profiled at latprune's
defaults as a user would.
Each model@size runs in a child process with an address-space limit (``--memory-gib``)
and a time limit (``--timeout-s``): build, profile, fidelity; a step that fails or a
child that dies is a row naming the step and the error's first line, and the run goes
on. A row holds the scores above, the repeat score among them (each configuration's
pass 1 against its pass 2: the machine's own floor), and goes to
benchmarks/results/lut_fidelity_zoo_<backend>_<n>t[_b<N>][_<tag>].json, keyed ``model@size``,
as it finishes; a row already there is skipped unless ``--force`` (``--force --models
vgg11 --sizes 160`` runs that one row again). LUTs are kept in
benchmarks/luts/zoo_fidelity/ (a killed profile resumes), child logs in
benchmarks/work/lut_fidelity_zoo/. ``--table`` prints the result file's markdown table
for BENCHMARKS.md; its target column says whether a row meets issue #36's target (≥ 95%
within ±10% and median |error| ≤ 3%) and, where it misses, whether the repeat score
misses it too (the machine could not do better). ``--table --latest TAG1,TAG2,…`` prints
one line per model@size from several runs' files (the untagged one named ``untagged``), each from
the last file that holds it, with the commit it ran at. Run it on a quiet machine: the
latencies are timings.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import score_cell, write_json  # noqa: E402
from zoo import fitted_model, how_it_ended, limit_memory, run_process, run_step, versions  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_BACKEND = "ort-cpu"
DEFAULT_THREADS = 2  # issue #3's setting; other thread counts write lut_fidelity_<n>t.json
DEFAULT_SAMPLES = 50
INPUT = (1, 3, 224, 224)
SPECS = {"resnet18": "torchvision:resnet18", "mobilenet_v2": "torchvision:mobilenet_v2",
         "efficientnet-lite0": "efficientnet-lite0"}

ZOO = ("resnet18", "resnet34", "resnext50_32x4d", "wide_resnet50_2", "regnet_x_400mf", "regnet_y_400mf",
       "mobilenet_v2", "mobilenet_v3_large", "mnasnet1_0", "efficientnet_b0", "efficientnet_v2_s",
       "convnext_tiny", "densenet121", "googlenet", "inception_v3", "shufflenet_v2_x1_0", "squeezenet1_1",
       "vgg11", "alexnet", "vit_b_32", "swin_t")
ZOO_SIZES = (96, 160)
ZOO_THREADS = 1
ZOO_SAMPLES = 20
TARGET_WITHIN_10, TARGET_MEDIAN_PCT = 0.95, 3.0  # issue #36: >= 95% within ±10% and median |error| <= 3%


# --------------------------------------------------------------------------- both modes


def profile_lut(model: Any, input_shape: tuple[int, ...], model_name: str, lut_path: Path,
                args: argparse.Namespace, progress: bool = True) -> tuple[Any, float]:
    """``latprune.profile`` of ``model`` into ``lut_path`` (created or extended): the LUT and its wall seconds."""
    import latprune

    start = time.time()
    lut = latprune.profile(model, input_shape, args.backend, args.threads, path=lut_path, levels=args.levels,
                           passes=args.passes, recalibrate=args.recalibrate, name=model_name, progress=progress)
    return lut, time.time() - start


def profile_fields(profile: Any, profile_s: float, args: argparse.Namespace) -> dict[str, Any]:
    """A row's fields from ``profile``'s report."""
    return {"units": profile.units, "lut_keys": profile.keys, "levels": args.levels, "passes": profile.passes,
            "profile_seconds": round(profile_s, 1), "profile_measured": profile.measured,
            "calibration": profile.calibration, "profile_warnings": profile.warnings,
            "kept_full": profile.kept_full}


def fidelity_fields(report: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """A row's fields from a fidelity report (``FidelityReport.to_dict()``)."""
    points = report["points"]
    return {
        # each point lists one width per channel group
        "groups": len(points[0]["widths"]) if points else None, "samples": args.samples,
        "stored": report["stored"], "anchored": report["anchored"], "beside": report["beside"],
        "refit": report["refit"], "refit_folds": report["refit_folds"], "drift": report["drift"],
        "fidelity_seconds": report["seconds"], "slow_probes": report["slow_probes"],
        "probes": len(report["probe_trace"]), "probe_trace": report["probe_trace"], "points": points,
        "fingerprint": report["fingerprint"], "spread_pct": report["spread_pct"], "repeat": report["repeat"],
    }


def summary(row: dict[str, Any]) -> str:
    """One line of a scored row: the stored score, the others beside it, and the repeat score."""
    s, a, r, b, rep = row["stored"], row["anchored"], row["refit"], row["beside"], row["repeat"]
    refit = f"refit {r['median_abs_pct']:.2f}% / {100 * r['within_10_pct']:.0f}%; " if r is not None else ""
    beside = f"beside {b['median_abs_pct']:.2f}% / {100 * b['within_10_pct']:.0f}%; " if b is not None else ""
    return (f"profile {row['profile_seconds']:.0f} s ({row['lut_keys']} keys); stored median |err| "
            f"{s['median_abs_pct']:.2f}%, within 10% {100 * s['within_10_pct']:.0f}%, Spearman {s['spearman']:.3f}; "
            f"anchored {a['median_abs_pct']:.2f}% / {100 * a['within_10_pct']:.0f}%; {refit}{beside}"
            f"slow-machine probes {row['slow_probes']} of {row['probes']}; "
            f"measurements' p10-p90 spread {row['spread_pct']:.1f}%; measured again (pass 1 vs 2) "
            f"{rep['median_abs_pct']:.2f}% / {100 * rep['within_10_pct']:.0f}%")


# --------------------------------------------------------------------------- three models


def score_model(model: Any, input_shape: tuple[int, ...], model_name: str, lut_path: Path, png: Path,
                args: argparse.Namespace) -> dict[str, Any]:
    """Profile ``model`` into ``lut_path``, score the LUT on it and plot the scores to ``png``: the result row."""
    import latprune
    from latprune.latency_lut.plots import plot_fidelity

    lut, profile_s = profile_lut(model, input_shape, model_name, lut_path, args)
    assert lut.report is not None  # profile() always reports what it measured
    report = latprune.fidelity(model, input_shape, lut, args.samples, beside=args.beside, name=model_name).to_dict()
    plot_fidelity(report, str(png))
    plot = str(png.relative_to(HERE)) if png.is_relative_to(HERE) else str(png)
    return {"model": model_name, "input": list(input_shape), **profile_fields(lut.report, profile_s, args),
            **fidelity_fields(report, args), "plot": plot}


def run_three(args: argparse.Namespace) -> None:
    """The three-model mode: each model of ``--models`` at 224x224, in this process."""
    from latprune.models import registered_model

    suffix = "" if args.backend == DEFAULT_BACKEND else f"_{args.backend}"
    if args.backend == DEFAULT_BACKEND and args.threads != DEFAULT_THREADS:
        suffix += f"_{args.threads}t"
    if args.tag:
        suffix += f"_{args.tag}"
    results_path = HERE / "results" / f"lut_fidelity{suffix}.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in args.models.split(","):
        if name in results and not args.force:
            print(f"{name}: already in {results_path}, skipped (--force re-runs)")
            continue
        spec = registered_model(SPECS[name], INPUT)
        assert spec is not None  # every SPECS entry is a name latprune builds
        lut_path = HERE / "luts" / f"{name}-{args.backend}-{args.threads}t.lut"
        lut_path.parent.mkdir(exist_ok=True)
        png = HERE / "results" / f"fidelity{suffix}_{name}.png"
        results[name] = score_model(spec.model, spec.input_shape, spec.name, lut_path, png, args)
        write_json(results_path, results)
        print(f"{name}: {summary(results[name])}")


# --------------------------------------------------------------------------- the zoo


def zoo_results_path(args: argparse.Namespace) -> Path:
    batch = f"_b{args.batch}" if args.batch != 1 else ""
    tag = f"_{args.tag}" if args.tag else ""
    return HERE / "results" / f"lut_fidelity_zoo_{args.backend}_{args.threads}t{batch}{tag}.json"


def zoo_child(name: str, size: int, args: argparse.Namespace, row_file: Path, lut_dir: Path) -> None:
    """Build ``name`` from input ``size``, profile it into a LUT in ``lut_dir`` and score the LUT,
    writing the row to ``row_file`` around each step."""
    limit_memory(args.memory_gib)
    import latprune

    row: dict[str, Any] = {"model": name, "size": size, "steps_s": {}, "failed": None, "warnings": []}
    state: dict[str, Any] = {}

    def build() -> None:
        spec, _, failed = fitted_model(name, size)
        spec = replace(spec, input_shape=(args.batch, *spec.input_shape[1:]))
        state["spec"] = spec
        row.update(input=list(spec.input_shape), sizes_failed=failed)

    def profile() -> None:
        spec = state["spec"]
        batch = f"-b{args.batch}" if args.batch != 1 else ""
        lut_path = lut_dir / f"{name}-{spec.input_shape[-1]}{batch}-{args.backend}-{args.threads}t-l{args.levels}.lut"
        lut_path.parent.mkdir(parents=True, exist_ok=True)
        lut, profile_s = profile_lut(spec.model, spec.input_shape, spec.name, lut_path, args, progress=False)
        state["lut"] = lut
        row.update(lut=str(lut_path.relative_to(HERE)) if lut_path.is_relative_to(HERE) else str(lut_path),
                   **profile_fields(lut.report, profile_s, args))

    def fidelity() -> None:
        spec = state["spec"]
        report = latprune.fidelity(spec.model, spec.input_shape, state["lut"], args.samples, beside=args.beside,
                                   name=spec.name, progress=False)
        row.update(fidelity_fields(report.to_dict(), args))

    for label, fn in (("build", build), ("profile", profile), ("fidelity", fidelity)):
        if not run_step(row, row_file, label, fn):
            break


def zoo_row(name: str, size: int, args: argparse.Namespace, lut_dir: Path, log: Path) -> dict[str, Any]:
    """``name`` at ``size`` scored in a child process (:func:`zoo_child`); its row, with how the child
    ended where it died."""
    with tempfile.TemporaryDirectory(dir=log.parent) as tmp:
        row_file = Path(tmp) / "row.json"
        cmd = [sys.executable, __file__, "--child", "--models", name, "--sizes", str(size),
               "--row-file", str(row_file), "--lut-dir", str(lut_dir), "--backend", args.backend,
               "--threads", str(args.threads), "--levels", str(args.levels), "--passes", str(args.passes),
               "--samples", str(args.samples), "--memory-gib", str(args.memory_gib), "--batch", str(args.batch)]
        cmd += ["--recalibrate"] if args.recalibrate else []
        cmd += ["--beside"] if args.beside else []
        rc = run_process(cmd, args.timeout_s, log, f"{name}@{size}")
        row = json.loads(row_file.read_text()) if row_file.is_file() else {}
    if rc != 0:
        row.update(model=name, size=size)
        row["failed"] = {"step": row.pop("running", "start"), "error": how_it_ended(rc, args.timeout_s, log),
                         "latprune_error": False}
    return row


def run_zoo(names: list[str], sizes: list[int], args: argparse.Namespace, results_path: Path, lut_dir: Path,
            work: Path) -> dict[str, Any]:
    """Every ``name@size`` not yet in ``results_path`` (all with ``--force``) scored in turn, the
    file written after each row; the results."""
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    work.mkdir(parents=True, exist_ok=True)
    env = versions()
    keys = [(name, size) for name in names for size in sizes]
    for i, (name, size) in enumerate(keys, 1):
        key = f"{name}@{size}"
        if key in results and not args.force:
            print(f"[{i}/{len(keys)}] {key}: already in {results_path.name}, skipped (--force runs it again)")
            continue
        log = work / f"{key}.log"
        log.unlink(missing_ok=True)
        t0 = time.time()
        row = zoo_row(name, size, args, lut_dir, log)
        row.update(backend=args.backend, threads=args.threads, versions=env, date=time.strftime("%Y-%m-%d"),
                   wall_s=round(time.time() - t0, 1))
        results[key] = row
        write_json(results_path, results)
        failed = row["failed"]
        outcome = f"failed at {failed['step']}: {failed['error']}" if failed else summary(row)
        print(f"[{i}/{len(keys)}] {key}: {outcome}; {row['wall_s']:.0f} s", flush=True)
    return results


def verdict(row: dict[str, Any]) -> str:
    """Whether the row meets issue #36's target and, where it misses, whether the machine's
    own repeat score misses it too (the machine could not do better)."""
    def meets(stats: dict[str, Any]) -> bool:
        return stats["within_10_pct"] >= TARGET_WITHIN_10 and stats["median_abs_pct"] <= TARGET_MEDIAN_PCT

    if meets(row["stored"]):
        return "met"
    return "missed; repeat misses too" if row.get("repeat") and not meets(row["repeat"]) else "missed"


def latest_rows(paths: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """The rows of the zoo result files ``paths`` that scored (no failure), one per model@size:
    each from the last file holding it; in the order the files first list them."""
    rows: dict[str, dict[str, Any]] = {}
    for path in paths:
        for key, row in (json.loads(path.read_text()) if path.is_file() else {}).items():
            if row.get("stored"):
                rows[key] = row
    return rows


def latest_table(rows: dict[str, dict[str, Any]]) -> str:
    """The BENCHMARKS.md table of :func:`latest_rows`: each model@size's scores and its floor."""
    lines = ["| model@size | input | latprune | stored: median / ±10% / Spearman | anchored: median / ±10% "
             "| repeat (the floor): median / ±10% | p10–p90 spread | target |",
             "|---|---|---|--:|--:|--:|--:|---|"]
    for key, row in sorted(rows.items(), key=lambda kv: (kv[1]["input"][-1], kv[0])):
        s, a, rep, size = row["stored"], row.get("anchored"), row.get("repeat"), row["input"][-1]
        cells = [key, f"{size}×{size}", f"`{row.get('versions', {}).get('latprune', '?')}`",
                 f"{score_cell(s)} / {s['spearman']:.3f}",
                 score_cell(a) if a else "", score_cell(rep) if rep else "",
                 f"{row['spread_pct']:.1f}%" if row.get("spread_pct") is not None else "", verdict(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(results: dict[str, Any]) -> str:
    """The BENCHMARKS.md table of the zoo result file: one line per model@size."""
    lines = ["| model@size | input | units | profile / fidelity s | median \\|err\\| | ±5% | ±10% | Spearman "
             "| refit median / ±10% | repeat median / ±5% / ±10% / Spearman | p10–p90 spread | target | failure |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|"]

    def pct(x: float) -> str:
        return f"{100 * x:.0f}%"

    for key, row in results.items():
        size = row.get("input", [None])[-1]
        failed = row.get("failed")
        cells = [key, f"{size}×{size}" if size else "", str(row.get("units", ""))]
        cells.append(" / ".join("" if row.get(k) is None else f"{row[k]:.0f}"
                                for k in ("profile_seconds", "fidelity_seconds")))
        s, r, rep = row.get("stored"), row.get("refit"), row.get("repeat")
        cells += ([f"{s['median_abs_pct']:.2f}%", pct(s["within_5_pct"]), pct(s["within_10_pct"]),
                   f"{s['spearman']:.3f}"] if s else ["", "", "", ""])
        cells.append(f"{r['median_abs_pct']:.2f}% / {pct(r['within_10_pct'])}" if r else "")
        cells.append(f"{rep['median_abs_pct']:.2f}% / {pct(rep['within_5_pct'])} / {pct(rep['within_10_pct'])} / "
                     f"{rep['spearman']:.3f}" if rep else "")
        cells.append(f"{row['spread_pct']:.1f}%" if row.get("spread_pct") is not None else "")
        cells.append(verdict(row) if s else "")
        cells.append(f"{failed['step']}: {failed['error']}" if failed else "")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def parse_args() -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help=f"comma-separated (default: {','.join(SPECS)}; with --zoo, this file's ZOO)")
    parser.add_argument("--backend", default=DEFAULT_BACKEND)
    parser.add_argument("--threads", type=int, help=f"CPU threads (default {DEFAULT_THREADS}, with --zoo "
                                                    f"{ZOO_THREADS}; GPU backends use 1)")
    parser.add_argument("--passes", type=int, default=2, help="measurements of each unit, fastest kept")
    parser.add_argument("--samples", type=int, help=f"random configurations (default {DEFAULT_SAMPLES}, "
                                                    f"with --zoo {ZOO_SAMPLES})")
    parser.add_argument("--levels", type=int, default=8)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--recalibrate", action="store_true", help="re-measure the LUT's calibration")
    parser.add_argument("--tag", default=None, help="suffix of the results and plots, e.g. the machine's name")
    parser.add_argument("--beside", action="store_true", help="also score the prediction re-anchored on the "
                                                              "full model measured right before each configuration")
    group = parser.add_argument_group("the zoo")
    group.add_argument("--zoo", action="store_true",
                       help="score torchvision's families at --sizes, a row per model@size")
    # batch 1 on an H100 is bound by kernel launches; batch 32 is where widths matter
    group.add_argument("--batch", type=int, default=1, help="images per inference (default %(default)s; the result "
                                                             "file and LUTs get _b<N> otherwise)")
    group.add_argument("--sizes", default=",".join(map(str, ZOO_SIZES)),
                       help="input heights and widths tried first (default %(default)s)")
    # a profile's calibration and a fidelity run hold every configuration's slimmed copy at once:
    # VGG-11's calibration at 96x96 passes 8 GiB of address space
    group.add_argument("--memory-gib", type=float, default=16.0,
                       help="address-space limit of each child (default %(default)s)")
    # a profile of the largest, wide_resnet50_2 at 160x160 on 1 thread, is expected to take about an hour
    group.add_argument("--timeout-s", type=float, default=7200.0, help="limit on one model@size (default %(default)s)")
    group.add_argument("--table", action="store_true", help="print the markdown table of the zoo's result file")
    parser.add_argument("--latest", metavar="TAG1,TAG2", help="with --table: the latest row of each model@size "
                                                              "among these runs' files (untagged: the file without a tag)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--row-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--lut-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    zoo_mode = args.zoo or args.table or args.child
    args.threads = args.threads if args.threads is not None else (ZOO_THREADS if zoo_mode else DEFAULT_THREADS)
    args.samples = args.samples if args.samples is not None else (ZOO_SAMPLES if zoo_mode else DEFAULT_SAMPLES)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.batch < 1:
        parser.error(f"--batch must be at least 1, got {args.batch}")
    if args.latest and not args.table:
        parser.error("--latest selects the rows of --table; add --table")
    return args, parser


def main() -> None:
    args, parser = parse_args()
    if args.child:
        zoo_child(args.models, int(args.sizes), args, args.row_file, args.lut_dir)
    elif args.table and args.latest:
        tags = [None if t == "untagged" else t for t in args.latest.split(",")]
        print(latest_table(latest_rows([zoo_results_path(argparse.Namespace(**{**vars(args), "tag": t}))
                                        for t in tags])))
    elif args.table:
        path = zoo_results_path(args)
        print(table(json.loads(path.read_text()) if path.is_file() else {}))
    elif args.zoo:
        import torchvision.models as tvm

        names = args.models.split(",") if args.models else list(ZOO)
        unknown = [n for n in names if n not in tvm.list_models(module=tvm)]
        if unknown:
            parser.error(f"not torchvision classifiers: {', '.join(unknown)}")
        sizes = [int(s) for s in args.sizes.split(",")]
        run_zoo(names, sizes, args, zoo_results_path(args), HERE / "luts" / "zoo_fidelity",
                HERE / "work" / "lut_fidelity_zoo")
    else:
        args.models = args.models or ",".join(SPECS)
        unknown = [m for m in args.models.split(",") if m not in SPECS]
        if unknown:
            parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(SPECS)}")
        run_three(args)


if __name__ == "__main__":
    main()
