"""Benchmark: accuracy against *measured* latency, per pruning method and budget (issue #4).

    python benchmarks/accuracy_vs_latency.py [--arch resnet20|resnet56|vit] [--base train|embedded] [--base-epochs 3]
                                             [--methods gator,halp,...]
                                             [--budgets 0.3,0.5,0.7] [--seeds 0] [--epochs 0.5]
                                             [--gate-epochs 0.3] [--threads 1] [--force] [--report-only]

The model is a CIFAR-style ResNet on Fashion-MNIST (Debian package):
``--arch resnet20`` (the default: 3 blocks per stage, widths 32/64/128) or
``--arch resnet56`` (9 blocks per stage, widths 16/32/64: He et al.'s CIFAR
ResNet-56, the network Gator, HALP and Torch-Pruning report on), or ``--arch vit``, a
small vision transformer (``latprune.models.ViT``: 4×4 patches, 50 tokens, 4 layers
of 4 heads, embedding 64, MLP 128) whose heads, MLP widths, embedding and layers
are pruned.
``--base train`` trains it here with the recipe of
``scripts/train_default.py`` for ``--base-epochs`` (3 by default; one epoch
takes ~6 min on 2 cores for either architecture; cached in the work
directory per architecture and number of epochs, and checkpointed after
every epoch: a killed training resumes); ``--base embedded`` takes the
shipped ResNet-20 weights, which that same script produced for 3 epochs.
Then, on ort-cpu at batch 1, through latprune's public API:

1. ``latprune.profile`` the model's LUT (resumable, in ``benchmarks/luts/``);
2. export the base as an ONNX bundle (``latprune.export``) and measure it
   (its accuracy, parameters, MACs);
3. ``latprune.prune`` the trained module with every (method, budget, seed), the
   same fine-tuning epochs for all (``FinetuneConfig``; gator also trains its
   gates ``--gate-epochs``; halp and taylor recover 0.1 epoch between
   rounds): one result per triple, saved as soon as it is done — a killed
   benchmark resumes with the missing ones; ``--seeds 0,1,2`` runs each pair
   once per seed (data order, augmentation, gate noise), and the table gives
   each seed's row and the mean. Budgets are relative (``0.3x``): each prune
   measures the base, and every candidate beside it, so a slow spell of the
   machine moves both and not their ratio;
4. measure every pruned model's ONNX bundle again (``Bundle.measure``),
   interleaved with the base, fastest of 3 passes, up to 6 for a model whose
   two fastest disagree by more than 5% (a quiet, comparable final
   measurement); a model holds its budget when it measures ≤ ratio × the base
   of that same final pass; every pass is kept in ``final_passes``, and each
   run counts the passes it held in (``held_passes``; the Markdown table shows
   it when there was more than one);
5. write ``benchmarks/results/accuracy_vs_latency.json`` (``_resnet56.json``) and
   ``benchmarks/results/accuracy_vs_latency.png``, and print the table. A run keeps
   the base of the final pass that measured it (``final_base_ms``): when a file holds
   runs measured in different passes (added later, the VM at another speed), the
   plot's latency axis is the fraction of that base, the only comparable number.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from results_io import write_atomically, write_json

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "accuracy_vs_latency.json"
PLOT = HERE / "results" / "accuracy_vs_latency.png"
WORK = HERE / "work" / "accuracy_vs_latency"
INPUT = (1, 1, 28, 28)
# --arch: (widths, blocks per stage); resnet20 is the embedded model's architecture
ARCHS: dict[str, tuple[tuple[int, int, int], int]] = {"resnet20": ((32, 64, 128), 3),
                                                      "resnet56": ((16, 32, 64), 9)}
METHODS = ("gator", "gator-st", "gator-plan", "gator-plan-t", "gator-hold", "gator-lowrank", "trp", "trp-widths",
           "trp-spatial", "halp", "taylor", "uniform-l1", "flops", "graph-rl", "evolution")
# benchmark-only names for gator with other options: (method, GatorConfig fields). gator-st takes the
# straight-through gate signal; gator-plan and gator-hold are gator-st with the plan start and the hold
# penalty; gator-plan-t is the plan start with the default (Taylor) signal.
ST = {"gate_signal": "straight-through"}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {"gator-st": ("gator", ST),
                                                   "gator-plan": ("gator", {"gate_init": "plan", **ST}),
                                                   "gator-plan-t": ("gator", {"gate_init": "plan"}),
                                                   "gator-hold": ("gator", {"gate_penalty": "hold", **ST}),
                                                   "gator-lowrank": ("gator", {"lowrank": True}),
                                                   "trp-widths": ("trp", {"trp_widths": True}),
                                                   "trp-spatial": ("trp", {"trp_widths": True,
                                                                           "lowrank_scheme": "spatial"})}
# methods that weigh ranks beside widths: the LUT is profiled with lowrank when one of them runs
LOWRANK = ("gator-lowrank", "trp", "trp-widths", "trp-spatial")
DEFAULT_METHODS = tuple(m for m in METHODS if m not in VARIANTS and m not in ("trp", "graph-rl", "evolution"))
VIT = {"dim": 64, "depth": 4, "heads": 4, "mlp_dim": 128}  # --arch vit
FINETUNE_LR = 0.01     # the fine-tuning's peak learning rate, the same for every method
BATCH_SIZE = 64        # training batches of the prune (gates, recovery, fine-tuning)
FINAL_PASSES = 3       # the final measurement: interleaved passes, each model's fastest kept ...
FINAL_MAX_PASSES = 6   # ... and further passes, up to this many, for a model whose two fastest ...
FINAL_AGREE = 0.05     # ... differ by more than this fraction


def arch_work(arch: str) -> Path:
    """The work directory of one architecture (resnet20 keeps the original place)."""
    return WORK if arch == "resnet20" else WORK / arch


def base_model(how: str, threads: int, epochs: float, arch: str = "resnet20") -> tuple[Any, str, dict[str, Any]]:
    """The module to prune (eval mode), its name, and where it came from; trains the
    base for ``epochs`` first when asked (cached, and resumed from its checkpoint)."""
    from dataclasses import replace

    import torch

    from latprune.data import fashion_mnist
    from latprune.models import EMBEDDED_WEIGHTS, ResNetCifar, ViT, registered_model
    from latprune.train import EMBEDDED_RECIPE, evaluate, train

    if how == "embedded":
        spec = registered_model("default")
        assert spec is not None  # the embedded default is always registered
        info = json.loads(EMBEDDED_WEIGHTS.with_suffix(".json").read_text())
        return spec.model, spec.name, {"source": "embedded weights (scripts/train_default.py)", **info}
    home = arch_work(arch) / f"base-{epochs:g}ep"
    home.mkdir(parents=True, exist_ok=True)
    weights, meta, ckpt = home / "base.pt", home / "base.json", home / "train.ckpt"
    torch.manual_seed(0)
    model = ViT(**VIT) if arch == "vit" else ResNetCifar(*ARCHS[arch])
    if weights.is_file() and meta.is_file():
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    else:
        torch.set_num_threads(threads)
        data = fashion_mnist()
        config = replace(EMBEDDED_RECIPE, epochs=epochs)
        start, resumed = time.time(), ckpt.is_file()
        train(model, data.train, config, desc=f"train base {arch} ({epochs:g} epochs)", checkpoint=ckpt)
        acc = evaluate(model, data.test)
        write_atomically(weights, lambda tmp: torch.save(model.state_dict(), tmp))
        write_json(meta, {"source": "trained by this benchmark", "test_accuracy": acc,
                          "epochs": config.epochs, "lr": config.lr, "batch_size": config.batch_size,
                          "train_seconds": round(time.time() - start, 1), "resumed_from_checkpoint": resumed})
        ckpt.unlink(missing_ok=True)
    return model.eval(), f"{arch}-fmnist-{epochs:g}ep", json.loads(meta.read_text())


def method_config(method: str, gate_epochs: float) -> Any:
    """The ``latprune.MethodConfig`` of a benchmark method name (a variant: gator with its options)."""
    import latprune

    name, options = VARIANTS.get(method, (method, {}))
    classes = {"gator": latprune.GatorConfig, "halp": latprune.HalpConfig, "taylor": latprune.TaylorConfig,
               "trp": latprune.TrpConfig, "uniform-l1": latprune.UniformL1Config, "flops": latprune.FlopsConfig,
               "graph-rl": latprune.GraphRlConfig, "evolution": latprune.EvolutionConfig}
    if name == "gator":
        options = {"gate_epochs": gate_epochs, **options}
    if name == "trp":  # rank training as long as gator's gate training: the same training budget
        options = {"trp_epochs": gate_epochs, **options}
    if name in ("graph-rl", "evolution"):  # PruningNet training as long as gator's gate training
        options = {"search_epochs": gate_epochs, **options}
    return classes[name](**options)


def base_bundle(model: Any, out: Path, threads: int) -> Any:
    """The unpruned ``model`` as an ONNX bundle at ``out`` (a fresh export), to be measured beside the runs."""
    import latprune

    return latprune.export(model, "onnx", out, overwrite=True, example_input=INPUT, threads=threads)


def run_bundle(run_dir: Path, base: Any, threads: int) -> Any:
    """The ONNX bundle of a run directory (``bundle-onnx`` inside it, exported once)."""
    import latprune

    out = run_dir / "bundle-onnx"
    if (out / "bundle.json").is_file():
        return latprune.load_bundle(out)
    return latprune.export(latprune.load(run_dir, base), "onnx", out, overwrite=True, threads=threads)


def final_measurements(bundles: dict[str, Any], threads: int) -> dict[str, dict[str, float]]:
    """Every bundle measured in interleaved passes (``Bundle.measure``), each one's fastest
    median kept over ``FINAL_PASSES`` passes; a model whose two fastest medians still differ
    by more than ``FINAL_AGREE`` gets further passes, up to ``FINAL_MAX_PASSES``: in a noisy
    spell of a VM, two passes can put a model well over a budget it holds in quiet ones."""
    medians: dict[str, list[float]] = {name: [] for name in bundles}
    best: dict[str, dict[str, float]] = {}
    todo, done = list(bundles), 0
    while todo:
        for name in todo:
            latency = bundles[name].measure(threads=threads)["latency_ms"]
            medians[name].append(latency["median_ms"])
            if name not in best or latency["median_ms"] < best[name]["median_ms"]:
                best[name] = latency
        done += 1
        if done < FINAL_PASSES:
            continue
        if done >= FINAL_MAX_PASSES:
            break
        todo = [name for name in todo if _two_fastest_spread(medians[name]) > FINAL_AGREE]
    return best


def _two_fastest_spread(medians: list[float]) -> float:
    """(second fastest − fastest) / fastest; 0 with fewer than two."""
    if len(medians) < 2:
        return 0.0
    a, b = sorted(medians)[:2]
    return (b - a) / a if a > 0 else 0.0


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8))
    base = results["base"]
    measured = [r for r in results["runs"].values() if "final_ms" in r]
    # runs measured in different final passes (added later, the VM at another speed) are
    # only comparable as fractions of the base measured in their own pass
    bases = [run_base_ms(r, results) for r in measured] or [1.0]
    relative = max(bases) > 1.001 * min(bases)  # budgets round to 0.1 µs: one pass's bases differ by less
    key = "latency_kept" if relative else "final_ms"
    markers = dict(zip(METHODS, "oPXh*<>^sDvpd8H", strict=True))
    for method in METHODS:
        runs = [r for r in measured if r["method"] == method]
        if not runs:
            continue
        means = sorted((m[key], 100 * m["accuracy"]) for m in seed_means(results) if m["method"] == method)
        line, = ax.plot([p[0] for p in means], [p[1] for p in means], marker=markers[method], label=method)
        ax.scatter([latency_kept(r, results) if relative else r["final_ms"] for r in runs],
                   [100 * r["accuracy"] for r in runs], s=10, alpha=0.5,
                   color=line.get_color())  # every seed; the line joins their means
        bx.scatter([r["macs_ratio"] for r in runs], [latency_kept(r, results) for r in runs],
                   marker=markers[method], label=method)
    for ratio, ms in results["budgets_ms"].items():
        x = float(ratio) if relative else ms
        ax.axvline(x, color="grey", lw=0.8, ls="--")
        ax.text(x, ax.get_ylim()[0], f" {ratio}x", color="grey", fontsize=8, va="bottom")
    ax.axhline(100 * base["accuracy"], color="black", lw=0.8, ls=":", label="base")
    ax.set_xlabel("measured latency / the base measured in the same final pass, ort-cpu batch 1" if relative
                  else "measured latency, ort-cpu batch 1 (ms)")
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    ax.set_title("accuracy vs measured latency (dashed: budgets)")
    ax.legend(fontsize=8)
    bx.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    bx.set_xlabel("MACs kept (fraction of base)")
    bx.set_ylabel("measured latency (fraction of base)")
    bx.set_title("FLOPs vs latency")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict[str, Any]) -> str:
    base = results["base"]
    lines = [f"base: {base['final_ms']:.3f} ms measured, accuracy {100 * base['accuracy']:.2f}%, "
             f"{base['macs'] / 1e6:.1f} M MACs, {base['params'] / 1e6:.3f} M params",
             f"{'method':<11} {'budget':>6} {'budget ms':>9} {'measured':>9} {'predicted':>9} {'held':>4} "
             f"{'acc %':>6} {'params M':>8} {'MACs M':>7} {'MACs kept':>9} {'lat kept':>8} {'blocks':>6} {'time s':>6}"]
    for key in sorted(results["runs"], key=lambda k: _order(results["runs"][k])):
        r = results["runs"][key]
        if "error" in r:
            lines.append(f"{r['method']:<11} {r['budget_ratio']:>5}x {r['budget_ms']:>9.3f}  failed: {r['error']}")
            continue
        predicted = f"{r['predicted_ms']:.3f}" if r.get("predicted_ms") is not None else "—"
        lines.append(
            f"{r['method'] + _seed_tag(r):<11} {r['budget_ratio']:>5}x {r.get('final_budget_ms', r['budget_ms']):>9.3f} "
            f"{r.get('final_ms', float('nan')):>9.3f} "
            f"{predicted:>9} {'yes' if r.get('held') else 'NO':>4} {100 * r['accuracy']:>6.2f} "
            f"{r['params'] / 1e6:>8.3f} {r['macs'] / 1e6:>7.1f} {r['macs_ratio']:>9.2f} "
            f"{latency_kept(r, results):>8.2f} {len(r['removed_blocks']):>6} "
            f"{r['seconds']:>6.0f}")
    means = seed_means(results)
    if any(m["seeds"] > 1 for m in means):
        lines.append("mean over seeds:")
        lines += [f"{m['method']:<11} {m['budget_ratio']:>5}x  {m['seeds']} seeds  acc {100 * m['accuracy']:.2f}% "
                  f"(min {100 * m['min']:.2f}, max {100 * m['max']:.2f})  measured {m['final_ms']:.3f} ms  "
                  f"held {m['held']}/{m['seeds']}" for m in means]
    return "\n".join(lines)


def _order(r: dict[str, Any]) -> tuple[float, int, int]:
    return r["budget_ratio"], METHODS.index(r["method"]), r.get("seed", 0)


def _seed_tag(r: dict[str, Any]) -> str:
    return f" #{r['seed']}" if r.get("seed") else ""


def budget_at(ratio: float, base_ms: float) -> float:
    """A relative budget in ms against one measurement of the base (rounded to 0.1 µs)."""
    return round(ratio * base_ms, 4)


def record_pass(results: dict[str, Any], models_ms: dict[str, float], base_ms: float,
                base_p10_p90: tuple[float, float] | None = None) -> None:
    """Append one final pass to ``results["final_passes"]`` (every pass is kept: this
    VM's slow spells move the ratios, so one pass can decide "held" either way); per
    run, ``held``: whether it held in this pass, and ``held_passes``: [passes it held
    in, passes it was measured in]. A run holds when it measures ≤ :func:`budget_at`
    its ratio and the base of the same pass. ``base_p10_p90``, kept with the pass,
    tells a quiet pass from a noisy one."""
    passes = results.setdefault("final_passes", [])
    passes.append({"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "base_ms": base_ms, "models_ms": models_ms,
                   **({"base_p10_p90_ms": list(base_p10_p90)} if base_p10_p90 else {})})
    for key, r in results["runs"].items():
        verdicts = [p["models_ms"][key] <= budget_at(r["budget_ratio"], p["base_ms"])
                    for p in passes if key in p["models_ms"]]
        if key in models_ms:
            r["held"] = verdicts[-1]
        r["held_passes"] = [sum(verdicts), len(verdicts)]


def run_base_ms(r: dict[str, Any], results: dict[str, Any]) -> float:
    """The base as measured in the final pass that gave run ``r`` its ``final_ms``
    (runs added later are measured in a later pass; older results files have it
    only in the run's budget)."""
    if "final_base_ms" in r:
        return float(r["final_base_ms"])
    if "final_budget_ms" in r:
        return float(r["final_budget_ms"]) / r["budget_ratio"]
    return float(results["base"]["final_ms"])


def latency_kept(r: dict[str, Any], results: dict[str, Any]) -> float:
    """Run ``r``'s final latency as a fraction of the base measured in the same pass."""
    return float(r.get("final_ms", float("nan"))) / run_base_ms(r, results)


def seed_means(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (budget, method): accuracy and final latency averaged over the seeds that ran."""
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for r in results["runs"].values():
        if "error" not in r and "final_ms" in r:
            groups.setdefault((r["budget_ratio"], r["method"]), []).append(r)
    out = []
    for (ratio, method), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], METHODS.index(kv[0][1]))):
        accs = [r["accuracy"] for r in rs]
        out.append({"budget_ratio": ratio, "method": method, "seeds": len(rs), "accuracy": sum(accs) / len(rs),
                    "min": min(accs), "max": max(accs), "final_ms": sum(r["final_ms"] for r in rs) / len(rs),
                    "latency_kept": sum(latency_kept(r, results) for r in rs) / len(rs),
                    "held": sum(bool(r.get("held")) for r in rs)})
    return out


def _passes_tag(r: dict[str, Any]) -> str:
    """The held column's count of passes, where a run was measured in more than one final pass."""
    held, passes = r.get("held_passes", [0, 0])
    return f" (held in {held} of {passes} passes)" if passes > 1 else ""


def markdown(results: dict[str, Any]) -> str:
    """The BENCHMARKS.md table."""
    rows = ["| budget | method | measured ms (p10–p90) | held | LUT predicted ms | test acc | params | MACs "
            "| MACs kept | latency kept | blocks removed | wall s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(results["runs"], key=lambda k: _order(results["runs"][k])):
        r = results["runs"][key]
        head = f"| {r['budget_ratio']}x = {r.get('final_budget_ms', r['budget_ms']):.3f} ms | {r['method']}{_seed_tag(r)} "
        if "error" in r:
            rows.append(head + f"| failed: {r['error']} |" + " |" * 9)
            continue
        lat = r["final_latency"]
        predicted = f"{r['predicted_ms']:.3f}" if r.get("predicted_ms") is not None else "— (off the LUT grid)"
        rows.append(head + f"| {lat['median_ms']:.3f} ({lat['p10_ms']:.3f}–{lat['p90_ms']:.3f}) "
                    f"| {'yes' if r['held'] else '**no**'}{_passes_tag(r)} | {predicted} | {100 * r['accuracy']:.2f}% "
                    f"| {r['params'] / 1e6:.3f} M | {r['macs'] / 1e6:.1f} M | {r['macs_ratio']:.2f} "
                    f"| {latency_kept(r, results):.2f} | {', '.join(r['removed_blocks']) or '—'} "
                    f"| {r['seconds']:.0f} |")
    means = seed_means(results)
    if any(m["seeds"] > 1 for m in means):
        rows += ["", "| budget | method | seeds | mean test acc (min–max) | mean measured ms | held |", "|---|---|---|---|---|---|"]
        rows += [f"| {m['budget_ratio']}x | {m['method']} | {m['seeds']} | {100 * m['accuracy']:.2f}% "
                 f"({100 * m['min']:.2f}–{100 * m['max']:.2f}) | {m['final_ms']:.3f} | {m['held']}/{m['seeds']} |"
                 for m in means]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=[*ARCHS, "vit"], default="resnet20",
                        help="resnet20 (32/64/128), resnet56 (16/32/64) or vit; --base embedded is resnet20")
    parser.add_argument("--base", choices=["train", "embedded"], default="train")
    parser.add_argument("--base-epochs", type=float, default=3.0, help="epochs to train the base (--base train)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated, of {', '.join(METHODS)} (gator-st: gator with "
                             "gate_signal='straight-through'; gator-plan and gator-hold: gator-st with "
                             "gate_init='plan', gate_penalty='hold'; gator-plan-t: gator with gate_init='plan')")
    parser.add_argument("--budgets", default="0.3,0.5,0.7")
    parser.add_argument("--seeds", default="0", help="seeds per (method, budget), e.g. 0,1,2")
    parser.add_argument("--epochs", type=float, default=0.5, help="fine-tuning epochs, the same for every method")
    parser.add_argument("--gate-epochs", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (latency); training uses 2")
    parser.add_argument("--force", action="store_true", help="forget earlier results and start again")
    parser.add_argument("--report-only", action="store_true", help="re-measure, plot and print; prune nothing")
    parser.add_argument("--markdown", action="store_true", help="also print the BENCHMARKS.md table")
    parser.add_argument("--results", type=Path, default=None,
                        help="results JSON (the PNG goes beside it); by default "
                             "results/accuracy_vs_latency.json, _resnet56.json for --arch resnet56")
    args = parser.parse_args()
    unknown = [m for m in args.methods.split(",") if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    if args.base == "embedded" and args.arch != "resnet20":
        raise SystemExit("--base embedded is the shipped ResNet-20; use --base train with --arch resnet56")
    default_results = RESULTS if args.arch == "resnet20" else RESULTS.with_stem(f"{RESULTS.stem}_{args.arch}")
    results_path = args.results or default_results
    plot_path = results_path.with_suffix(".png")
    work = arch_work(args.arch)
    # another results file keeps its pruned models apart: its final pass must not measure these
    runs_dir = work / ("runs" if results_path.resolve() == RESULTS.resolve() else f"runs-{results_path.stem}")

    import torch

    import latprune
    from latprune.data import fashion_mnist, loader
    from latprune.stats import params_and_macs
    from latprune.train import evaluate

    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.exists() and not args.force else {}
    settings = {**({"arch": args.arch} if args.arch != "resnet20" else {}),  # resnet20's files predate --arch
                "base": args.base, **({"base_epochs": args.base_epochs} if args.base == "train" else {}),
                "epochs": args.epochs, "gate_epochs": args.gate_epochs, "threads": args.threads,
                "budgets": "relative to the base measured beside each candidate"}
    if results and results.get("settings") != settings:
        raise SystemExit(f"{results_path} holds results for other settings {results.get('settings')}; "
                         "pass --force to start again")
    work.mkdir(parents=True, exist_ok=True)
    model, name, base_info = base_model(args.base, 2, args.base_epochs, args.arch)
    lut_path = HERE / "luts" / f"{args.arch}-ort-cpu-{args.threads}t.lut"  # latency: the architecture, not its weights
    lut_path.parent.mkdir(exist_ok=True)
    t = time.time()
    lut = latprune.profile(model, INPUT, "ort-cpu", args.threads, path=lut_path, levels=8, calibration_samples=8,
                           name=name, lowrank=any(m in LOWRANK for m in args.methods.split(",")))
    profile_s = time.time() - t
    assert lut.report is not None  # profile() always reports what it measured
    base = base_bundle(model, work / "base-bundle", args.threads)
    data = fashion_mnist()

    if not results:
        params, macs = params_and_macs(model, INPUT)
        base_ms = final_measurements({"base": base}, args.threads)["base"]["median_ms"]
        results = {"settings": settings, "fingerprint": base.meta["fingerprint"], "base_info": base_info,
                   "base": {"budget_reference_ms": base_ms, "accuracy": evaluate(model, data.test),
                            "params": params, "macs": macs},
                   "budgets_ms": {}, "runs": {}, "timings_s": {"profile_s": round(profile_s, 1),
                                                              "lut_keys_measured": lut.report.measured}}
    ref_ms = results["base"]["budget_reference_ms"]
    ratios = [float(b) for b in args.budgets.split(",")]
    for ratio in ratios:  # for display until the final pass measures the base again
        results["budgets_ms"].setdefault(str(ratio), budget_at(ratio, ref_ms))

    torch.set_num_threads(2)
    jobs = [(ratio, method, int(seed)) for ratio in ratios for seed in args.seeds.split(",")
            for method in args.methods.split(",")]
    for ratio, method, seed in jobs if not args.report_only else []:
        key = f"{method}@{ratio}x" + (f"#{seed}" if seed else "")
        if key in results["runs"]:
            print(f"{key}: done earlier, skipped")
            continue
        out = runs_dir / (f"{method}-{ratio}x" + (f"-seed{seed}" if seed else ""))
        budget_ms = results["budgets_ms"][str(ratio)]
        print(f"== {key}: budget {ratio}x of the base (~{budget_ms:.3f} ms)", flush=True)
        start = time.time()
        try:
            result = latprune.prune(
                model, lut, f"{ratio}x", example_input=INPUT, method=method_config(method, args.gate_epochs),
                train_loader=loader(data.train, BATCH_SIZE, shuffle=True, seed=seed),
                val_loader=loader(data.test, 128, shuffle=False),
                finetune=latprune.FinetuneConfig(epochs=args.epochs, lr=FINETUNE_LR), seed=seed, name=name,
                data_name=data.name)
            result.save(out, overwrite=True)
        except Exception as exc:  # a method that cannot reach a budget is a result too
            results["runs"][key] = {"method": method, "budget_ratio": ratio, "seed": seed, "budget_ms": budget_ms,
                                    "error": f"{type(exc).__name__}: {exc}", "seconds": time.time() - start}
            write_json(results_path, results)
            print(f"   failed: {exc}")
            continue
        m = result.metrics
        results["runs"][key] = {
            "method": method, "budget_ratio": ratio, "seed": seed, "budget_ms": m["budget"]["ms"], "out": str(out),
            "prune_base_ms": m["base"]["latency_ms"]["median_ms"], "prune_budget_met": m["budget_met"],
            "accuracy": m["pruned"]["accuracy"], "predicted_ms": m["pruned"]["predicted_ms"],
            "prune_measured_ms": m["pruned"]["latency_ms"]["median_ms"], "params": m["pruned"]["params"],
            "macs": m["pruned"]["macs"], "macs_ratio": m["macs_ratio"],
            "removed_blocks": m["pruned"]["removed_blocks"], "closed_loop_iterations": len(m["closed_loop"]),
            "attempts": m["attempts"],  # more than one: the first export missed and prune narrowed (retries)
            "timings_s": m["timings_s"], "seconds": round(time.time() - start, 1),
        }
        write_json(results_path, results)  # each run lands as soon as it is done

    done = {k: Path(r["out"]) for k, r in results["runs"].items()
            if "out" in r and Path(r["out"], "plan.json").is_file()}
    bundles = {"base": base, **{k: run_bundle(out, model, args.threads) for k, out in done.items()}}
    final = final_measurements(bundles, args.threads)
    results["base"]["final_ms"] = final["base"]["median_ms"]
    results["base"]["final_latency"] = final["base"]
    for ratio in results["budgets_ms"]:  # the budgets as the final pass measured the base
        results["budgets_ms"][ratio] = budget_at(float(ratio), final["base"]["median_ms"])
    for k in done:
        r = results["runs"][k]
        r["final_latency"] = final[k]
        r["final_ms"] = final[k]["median_ms"]
        r["final_budget_ms"] = results["budgets_ms"][str(r["budget_ratio"])]
        r["final_base_ms"] = final["base"]["median_ms"]
    record_pass(results, {k: final[k]["median_ms"] for k in done}, final["base"]["median_ms"],
                (final["base"]["p10_ms"], final["base"]["p90_ms"]))
    write_json(results_path, results)
    plot(results, plot_path)
    print(table(results))
    if args.markdown:
        print(markdown(results))
    print(f"wrote {results_path} and {plot_path}")


if __name__ == "__main__":
    main()
