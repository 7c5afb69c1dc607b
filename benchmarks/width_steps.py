"""Benchmark: does a width between two SIMD blocks cost less than the next block? (issue #3)

    python benchmarks/width_steps.py [--input 28] [--threads 1] [--step 8] [--tag NAME]

``ort-cpu``'s width grid is aligned to the runtime's channel block
(``OrtCpuBackend.preferred_align``: 16 with AVX-512, else 8). This measures
whether that is the right step on the machine at hand: whole ResNet-20-style
models (``ResNetCifar``, 3 blocks per stage, widths 32/64/128, random
weights, 1 x 1 x H x H input), one stage's width varied in ``--step``
channels with the other two at full width, each exported to ONNX and
measured end to end on ort-cpu, batch 1, interleaved, fastest of 3 passes
(up to 6 while the two fastest differ by more than 5%).

Then the same for the blocks' inner width alone: the stage-1 blocks' first
convolutions (``blocks.0-2.conv1``) at 8, 16, 24 and 32 channels, the
highway at 32, everything else full (``inner_points``).

Writes ``benchmarks/results/width_steps[_NAME].json`` (every point, the
fingerprint) and ``width_steps[_NAME].png`` (latency vs the varied stage's
width, one line per stage).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
FULL = (32, 64, 128)
LOWEST = (8, 32, 64)  # each stage varied from here up to its full width
INNER = ("blocks.0.conv1", "blocks.1.conv1", "blocks.2.conv1")  # stage 1's inner channel groups
INNER_WIDTHS = (8, 16, 24, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=int, default=28, help="input height and width (1 channel)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--step", type=int, default=8, help="channel step of the varied stage")
    parser.add_argument("--tag", default=None, help="suffix of the result files, e.g. the machine's name")
    args = parser.parse_args()

    import matplotlib
    import torch

    from latprune._io import atomic_write_json
    from latprune.exporters.onnx import export_onnx
    from latprune.latency_lut.backends import get_backend
    from latprune.latency_lut.profile import MODEL_AGREE
    from latprune.latency_lut.timing import fastest_over_passes
    from latprune.models import ResNetCifar
    from latprune.pruner.graph import ChannelGraph

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suffix = f"_{args.tag}" if args.tag else ""
    results_path = HERE / "results" / f"width_steps{suffix}.json"
    plot_path = HERE / "results" / f"width_steps{suffix}.png"
    configs: list[tuple[int, int, int]] = []
    for stage in range(3):
        for width in range(LOWEST[stage], FULL[stage] + 1, args.step):
            widths = list(FULL)
            widths[stage] = width
            if tuple(widths) not in configs:
                configs.append((widths[0], widths[1], widths[2]))
    shape = (1, 1, args.input, args.input)
    torch.manual_seed(0)
    full = ResNetCifar(FULL, 3).eval()
    graph = ChannelGraph.build(full, shape)
    inner_roots = {g.id for g in graph.groups if g.root in INNER}
    models = [ResNetCifar(widths, 3).eval() for widths in configs]
    models += [graph.slim_to_widths({**graph.full_widths(), **dict.fromkeys(inner_roots, w)}).eval() for w in INNER_WIDTHS]
    backend = get_backend("ort-cpu", args.threads)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, model in enumerate(models):
            path = Path(tmp) / f"m{i}.onnx"
            export_onnx(model, shape, path, threads=args.threads)
            paths.append(path)
        best = fastest_over_passes(lambda i: backend.measure_artifact(str(paths[i])), len(paths), passes=3,
                                   agree=MODEL_AGREE, max_passes=6)
    points = [{"widths": list(w), "median_ms": b.median_ms, "p10_ms": b.p10_ms, "p90_ms": b.p90_ms}
              for w, b in zip(configs, best)]
    inner_points = [{"inner": w, "median_ms": b.median_ms, "p10_ms": b.p10_ms, "p90_ms": b.p90_ms}
                    for w, b in zip(INNER_WIDTHS, best[len(configs):])]
    atomic_write_json(results_path, {
        "input": list(shape), "threads": args.threads, "step": args.step,
        "preferred_align": backend.preferred_align, "seconds": round(time.time() - start, 1),
        "fingerprint": backend.fingerprint(), "points": points, "inner_points": inner_points})

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for stage in range(3):
        pts = [p for p in points if all(p["widths"][s] == FULL[s] for s in range(3) if s != stage)]
        pts.sort(key=lambda p: p["widths"][stage])
        ax.plot([p["widths"][stage] for p in pts], [p["median_ms"] for p in pts], "o-",
                label=f"stage {stage + 1} (others full)")
    for x in range(0, max(FULL) + 1, backend.preferred_align):
        ax.axvline(x, color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel(f"width of the varied stage (grey: multiples of {backend.preferred_align})")
    ax.set_ylabel(f"measured latency, ort-cpu, {args.threads} thread(s) (ms)")
    ax.set_title(f"ResNet-20 (32/64/128) at {args.input}x{args.input}: latency per {args.step}-channel step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(plot_path, dpi=110)
    for p in points:
        print(p["widths"], f"{p['median_ms']:.4f} ms")
    for p in inner_points:
        print(f"stage-1 inner width {p['inner']}: {p['median_ms']:.4f} ms")
    print(f"wrote {results_path} and {plot_path}")


if __name__ == "__main__":
    main()
