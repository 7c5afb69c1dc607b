"""Benchmark: a layer against its low-rank pair, per layer shape, measured: where low rank is faster.

    python benchmarks/lowrank_units.py [--backend ort-cpu] [--threads 1] [--shapes conv3x3_64_56,...] [--force]
                                       [--scheme channel|spatial]
    python benchmarks/lowrank_units.py --table [--scheme spatial]

A rank-r factorisation (Trained Rank Pruning's channel-wise scheme,
``latprune.graph.lowrank``) turns a k×k convolution Cin→Cout into a k×k Cin→r and a
1×1 r→Cout, and a Linear into two Linears. Below the break-even rank
``Cout·Cin·k² / (Cin·k² + Cout)`` the pair does fewer multiply-accumulates; whether it
takes less time is a measurement: the pair is two kernels, a thin one among them, and a
runtime's kernels are built for certain widths. For each layer shape of :data:`SHAPES`
(ResNet-20/56's 3×3 convolutions on 28×28 Fashion-MNIST, ResNet-18's at 224×224 input,
MobileNetV2's 1×1 expansions and projections, ViT-B/ViT-S MLP linears), each with the
BatchNorm and activation its network has, and at ranks of :data:`FRACTIONS` of its
maximum rank ``min(Cout, Cin·k²)`` and at the break-even rank (rounded down), it
measures on ``--backend`` with ``--threads``:

- ``original``: the layer's LUT key, timed by ``Backend.measure_unit``;
- ``first`` + ``second`` = ``sum_ms``: the pair's two LUT keys
  (``latprune.graph.lowrank.pair_keys``), each timed alone; their sum is what a LUT
  predicts for the pair, and ``speedup`` is original / sum;
- ``model``: the pair as one model (the factorised layers from ``factorise``, then the
  BatchNorm and activation), timed by ``Backend.measure_model``, beside the original as
  one model timed the same way (``original_model``): a check of the sum that does not go
  through the LUT keys. On ort-cpu ``measure_model`` is wall time of a session, which
  holds costs a unit's kernel time leaves out (layout conversions, the session call), so
  compare ``model_speedup`` (original model / pair model) with ``speedup``, not
  milliseconds with milliseconds; ``model_kernel_ms`` (the pair model's kernel time from
  the backend's profiler, where it has one: ``profile_graph``) is directly comparable
  with ``sum_ms``, as ``original_model_kernel_ms`` is with the original's. ONNX Runtime's
  profiler counts whole microseconds, so units of a few µs (the 7×7 ones) are coarse.

``--scheme spatial`` measures the spatial scheme instead (k×1 Cin→r, then 1×k r→Cout; its
maximum rank ``min(Cout, Cin)·k``, its break-even rank depending on the input's width too) on
the shapes with k×k kernels, k > 1, into the result file with ``_spatial`` before ``.json``.

A shape's ``largest_faster_rank`` is the largest measured rank whose pair (sum) is faster
than the original, None where it loses at every rank: low rank pays up to it, and the
crossing lies between it and the next measured rank. ``largest_faster_rank_model`` is the
same from the one-model check. The residual add of ResNet's second convolutions and of
MobileNetV2's projections is left out (it would ride on the second key).

Rows go to ``benchmarks/results/lowrank_units_<backend>_<threads>t.json`` (``--tag NAME``
appends ``_NAME``), keyed by shape, written as each shape finishes; a shape already there
is skipped unless ``--force``; a file measured on another device or setting is refused.
``--table`` prints the markdown tables of the file. Run it pinned to a quiet core
(``taskset -c N``): the numbers are timings.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_json  # noqa: E402

from latprune.graph.units import LayerKey  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FRACTIONS = (Fraction(1, 16), Fraction(1, 8), Fraction(1, 4), Fraction(3, 8), Fraction(1, 2), Fraction(3, 4))


@dataclass(frozen=True)
class Shape:
    """One layer shape: its LUT key (with what the runtime fuses after it) and where it occurs."""

    key: LayerKey
    where: str


def conv(cin: int, cout: int, hw: int, kernel: int = 3, stride: int = 1, act: str = "relu") -> LayerKey:
    """A convolution with its BatchNorm and activation, "same" padding, at ``hw``×``hw`` input."""
    return LayerKey("conv", cin, cout, (kernel, kernel), (stride, stride), (kernel // 2, kernel // 2),
                    in_hw=(hw, hw), bn=True, act=act)


def linear(cin: int, cout: int, tokens: int, act: str = "") -> LayerKey:
    """A Linear with its bias over ``tokens`` tokens (batch 1)."""
    return LayerKey("linear", cin, cout, in_hw=(tokens,), bias=True, act=act)


SHAPES: dict[str, Shape] = {
    "conv3x3_16_28": Shape(conv(16, 16, 28), "ResNet-20/56, Fashion-MNIST, stage 1"),
    "conv3x3_16to32_s2_28": Shape(conv(16, 32, 28, stride=2), "ResNet-20/56, Fashion-MNIST, stage 2 entry"),
    "conv3x3_32_14": Shape(conv(32, 32, 14), "ResNet-20/56, Fashion-MNIST, stage 2"),
    "conv3x3_32to64_s2_14": Shape(conv(32, 64, 14, stride=2), "ResNet-20/56, Fashion-MNIST, stage 3 entry"),
    "conv3x3_64_7": Shape(conv(64, 64, 7), "ResNet-20/56, Fashion-MNIST, stage 3"),
    "conv3x3_64_56": Shape(conv(64, 64, 56), "ResNet-18 at 224, layer1"),
    "conv3x3_128_28": Shape(conv(128, 128, 28), "ResNet-18 at 224, layer2"),
    "conv3x3_256_14": Shape(conv(256, 256, 14), "ResNet-18 at 224, layer3"),
    "conv3x3_512_7": Shape(conv(512, 512, 7), "ResNet-18 at 224, layer4"),
    "conv1x1_96to576_14": Shape(conv(96, 576, 14, kernel=1, act="relu6"), "MobileNetV2, expansion at 14×14"),
    "conv1x1_576to96_14": Shape(conv(576, 96, 14, kernel=1, act=""), "MobileNetV2, projection at 14×14"),
    "conv1x1_320to1280_7": Shape(conv(320, 1280, 7, kernel=1, act="relu6"), "MobileNetV2, last convolution"),
    "linear_768to3072_50t": Shape(linear(768, 3072, 50, act="gelu"), "ViT-B/32 at 224, MLP fc1"),
    "linear_3072to768_50t": Shape(linear(3072, 768, 50), "ViT-B/32 at 224, MLP fc2"),
    "linear_768to3072_197t": Shape(linear(768, 3072, 197, act="gelu"), "ViT-B/16 at 224, MLP fc1"),
    "linear_3072to768_197t": Shape(linear(3072, 768, 197), "ViT-B/16 at 224, MLP fc2"),
    "linear_384to1536_197t": Shape(linear(384, 1536, 197, act="gelu"), "ViT-S/16 at 224, MLP fc1"),
}


def results_path(backend: str, threads: int, tag: str | None, scheme: str = "channel") -> Path:
    suffix = ("_" + tag if tag else "") + ("_spatial" if scheme == "spatial" else "")
    return RESULTS_DIR / f"lowrank_units_{backend}_{threads}t{suffix}.json"


def max_rank(key: LayerKey, scheme: str = "channel") -> int:
    """The rank of the layer's weight matrix at most: ``min(Cout, Cin·k·k)``, or
    ``min(Cout·kw, Cin·kh)`` in the spatial scheme."""
    kh, kw = key.kernel
    if scheme == "spatial":
        return min(key.cout * kw, key.cin * kh)
    return min(key.cout, key.cin * kh * kw)


def applies(key: LayerKey, scheme: str) -> bool:
    """Whether the shape factorises in ``scheme`` (the spatial one needs a k×k kernel, k > 1)."""
    return scheme == "channel" or (key.op == "conv" and min(key.kernel) > 1)


def rank_grid(key: LayerKey, scheme: str = "channel") -> list[tuple[int, str]]:
    """(rank, label) at each of :data:`FRACTIONS` of the maximum rank (rounded, at least 1)
    and at the break-even rank (rounded down), ascending, one label per rank."""
    from latprune.graph.lowrank import break_even_of

    top = max_rank(key, scheme)
    labels: dict[int, list[str]] = {}
    for f in FRACTIONS:
        labels.setdefault(max(1, round(f * top)), []).append(str(f))
    labels.setdefault(max(1, math.floor(break_even_of(key, scheme))), []).append("break-even")
    return [(r, ", ".join(names)) for r, names in sorted(labels.items())]


_ACTS = {"relu": "ReLU", "relu6": "ReLU6", "gelu": "GELU"}


def original_model(key: LayerKey) -> tuple[Any, tuple[int, ...]]:
    """The layer of ``key`` as a model (layer, BatchNorm, activation) and its input shape."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if key.op == "conv":
        layer: nn.Module = nn.Conv2d(key.cin, key.cout, key.kernel, key.stride, key.padding, bias=key.bias)
        shape: tuple[int, ...] = (key.batch, key.cin, *key.in_hw)
    else:
        layer = nn.Linear(key.cin, key.cout, bias=key.bias)
        shape = (key.batch, *key.in_hw, key.cin)
    tail = ([nn.BatchNorm2d(key.cout)] if key.bn else []) + ([getattr(nn, _ACTS[key.act])()] if key.act else [])
    return nn.Sequential(layer, *tail).eval(), shape


def pair_model(original: Any, rank: int, scheme: str = "channel") -> Any:
    """``original`` with its first layer replaced by its rank-``rank`` pair, flattened."""
    from torch import nn

    from latprune.graph.lowrank import factorise

    return nn.Sequential(*factorise(original[0], rank, scheme=scheme), *list(original)[1:]).eval()


def kernel_ms(backend: Any, model: Any, input_shape: tuple[int, ...]) -> float | None:
    """The model's kernel time from the backend's profiler, where it has one (ort-cpu)."""
    if not hasattr(backend, "profile_graph"):
        return None
    from latprune.runtime.onnx import to_onnx_bytes

    return round(backend.profile_graph(to_onnx_bytes(model, input_shape)).latency.median_ms, 5)


def largest_faster(ranks: list[dict[str, Any]], field: str) -> int | None:
    """The largest rank whose ``field`` (a speedup) is above 1."""
    faster = [r["rank"] for r in ranks if r.get(field) is not None and r[field] > 1]
    return max(faster) if faster else None


def measure_shape(backend: Any, shape: Shape, scheme: str = "channel") -> dict[str, Any]:
    """One shape's row: the original and its pair at every rank of :func:`rank_grid`."""
    from latprune.graph.lowrank import break_even_of, pair_keys

    t0 = time.time()
    key = shape.key
    original = backend.measure_unit(key)
    model, input_shape = original_model(key)
    original_model_lat = backend.measure_model(model, input_shape)
    ranks = []
    for rank, label in rank_grid(key, scheme):
        first_key, second_key = pair_keys(key, rank, scheme)
        first, second = backend.measure_unit(first_key), backend.measure_unit(second_key)
        sum_ms = first.median_ms + second.median_ms
        pair = pair_model(model, rank, scheme)
        pair_lat = backend.measure_model(pair, input_shape)
        ranks.append({
            "rank": rank, "fraction": label, "first_key": first_key.text, "second_key": second_key.text,
            "macs_ratio": round((first_key.macs + second_key.macs) / key.macs, 4),
            "first": first.to_dict(), "second": second.to_dict(), "sum_ms": round(sum_ms, 5),
            "measured_ratio": round(sum_ms / original.median_ms, 4),
            "speedup": round(original.median_ms / sum_ms, 4),
            "model": pair_lat.to_dict(), "model_speedup": round(original_model_lat.median_ms / pair_lat.median_ms, 4),
            "model_kernel_ms": kernel_ms(backend, pair, input_shape),
        })
    return {
        "where": shape.where, "key": key.text, "macs": key.macs,
        "scheme": scheme, "max_rank": max_rank(key, scheme),
        "break_even_rank": round(break_even_of(key, scheme), 2),
        "original": original.to_dict(), "original_model": original_model_lat.to_dict(),
        "original_model_kernel_ms": kernel_ms(backend, model, input_shape),
        "ranks": ranks,
        "largest_faster_rank": largest_faster(ranks, "speedup"),
        "largest_faster_rank_model": largest_faster(ranks, "model_speedup"),
        "date": time.strftime("%Y-%m-%d"), "wall_s": round(time.time() - t0, 1),
    }


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _rank_cell(row: dict[str, Any], field: str) -> str:
    rank = row[field]
    if rank is None:
        return "none"
    return f"{rank} ({rank / row['max_rank']:.0%} of max, {rank / row['break_even_rank']:.0%} of break-even)"


def table(results: dict[str, Any]) -> str:
    """A summary table of every shape, then a table per shape with a line per rank."""
    fp = results.get("fingerprint", {})
    dates = sorted({row["date"] for row in results["shapes"].values()})
    when = dates[0] if len(dates) < 2 else f"{dates[0]} to {dates[-1]}"
    scheme = results.get("scheme", "channel")
    flag = " --scheme spatial" if scheme == "spatial" else ""
    lines = [f"`python benchmarks/lowrank_units.py --backend {results['backend']} --threads {results['threads']}{flag}`; "
             f"{fp.get('device', '?')}, {fp.get('runtime', '?')} {fp.get('runtime_version', '')}, "
             f"{results['threads']} thread(s); {when}", "",
             "| shape | where | original ms | break-even rank | faster up to rank (LUT sum) "
             "| (one model) | best speedup (rank) |",
             "|---|---|--:|--:|---|---|--:|"]
    for name, row in results["shapes"].items():
        best = max(row["ranks"], key=lambda r: r["speedup"])
        lines.append(f"| {name} | {row['where']} | {row['original']['median_ms']:.4f} | {row['break_even_rank']:.1f} "
                     f"| {_rank_cell(row, 'largest_faster_rank')} | {_rank_cell(row, 'largest_faster_rank_model')} "
                     f"| {best['speedup']:.2f}x ({best['rank']}) |")
    for name, row in results["shapes"].items():
        lines += ["", f"**{name}** ({row['where']}): `{row['key']}`; original {row['original']['median_ms']:.4f} ms "
                  f"(p10-p90 {row['original']['p10_ms']:.4f}-{row['original']['p90_ms']:.4f}; as one model, kernels "
                  f"{_ms(row['original_model_kernel_ms']) or '–'} ms); "
                  f"faster up to rank {_rank_cell(row, 'largest_faster_rank')}", "",
                  "| rank | of max rank | first ms | second ms | pair ms (sum) | speedup | MACs ratio "
                  "| measured ratio | one model: speedup | pair kernels ms |",
                  "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for r in row["ranks"]:
            lines.append(f"| {r['rank']} | {r['fraction']} | {r['first']['median_ms']:.4f} "
                         f"| {r['second']['median_ms']:.4f} | {r['sum_ms']:.4f} | {r['speedup']:.2f}x "
                         f"| {r['macs_ratio']:.3f} | {r['measured_ratio']:.3f} | {r['model_speedup']:.2f}x "
                         f"| {_ms(r['model_kernel_ms'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="ort-cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shapes", help=f"comma-separated names of {', '.join(SHAPES)} (default: all)")
    parser.add_argument("--force", action="store_true", help="measure shapes already in the result file again")
    parser.add_argument("--tag", default=None, help="suffix of the result file, e.g. the machine's name")
    parser.add_argument("--table", action="store_true", help="print the markdown tables of the result file")
    parser.add_argument("--scheme", choices=("channel", "spatial"), default="channel",
                        help="how the layer factorises (spatial: k×1 then 1×k, on k×k convolutions)")
    args = parser.parse_args(argv)

    import json

    path = results_path(args.backend, args.threads, args.tag, args.scheme)
    results = json.loads(path.read_text()) if path.is_file() else None
    if args.table:
        if results is None:
            parser.error(f"no result file {path}; run the benchmark first")
        print(table(results))
        return
    names = args.shapes.split(",") if args.shapes else [n for n, s in SHAPES.items() if applies(s.key, args.scheme)]
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes: {', '.join(unknown)}; known: {', '.join(SHAPES)}")
    inapplicable = [n for n in names if not applies(SHAPES[n].key, args.scheme)]
    if inapplicable:
        parser.error(f"shapes without a k×k kernel do not factorise in the spatial scheme: {', '.join(inapplicable)}")
    warnings.simplefilter("ignore")

    from latprune.errors import FingerprintMismatch
    from latprune.latency_lut.backends import get_backend
    from latprune.runtime.fingerprint import check_compatible

    backend = get_backend(args.backend, threads=args.threads)
    fingerprint = backend.fingerprint()
    if results is None:
        results = {"backend": args.backend, "threads": args.threads, "scheme": args.scheme, "fingerprint": fingerprint,
                   "fractions": [str(f) for f in FRACTIONS], "shapes": {}}
    else:
        try:
            check_compatible(results["fingerprint"], fingerprint, str(path))
        except FingerprintMismatch as exc:
            sys.exit(f"{exc}; or write another file with --tag NAME")
    for i, name in enumerate(names, 1):
        if name in results["shapes"] and not args.force:
            print(f"[{i}/{len(names)}] {name}: already in {path.name}, skipped (--force measures it again)")
            continue
        row = measure_shape(backend, SHAPES[name], args.scheme)
        results["shapes"][name] = row
        write_json(path, results)
        print(f"[{i}/{len(names)}] {name}: original {row['original']['median_ms']:.4f} ms, pair faster up to "
              f"rank {row['largest_faster_rank']} (break-even {row['break_even_rank']:.1f}); {row['wall_s']:.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
