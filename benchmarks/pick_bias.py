"""Benchmark: does the LUT predict the configurations the pruner picks as well as random ones?

    python benchmarks/pick_bias.py [--models resnet101,wide_resnet50_2] [--size 64] [--fractions 0.35,0.45,0.55,0.65,0.75]
    python benchmarks/pick_bias.py --table

Fidelity is scored on random width configurations (``lut_fidelity.py``), but a pruner does
not pick at random: its knapsack keeps what the LUT says is cheap for its value, so a unit
the LUT prices below what it costs inside the model is kept more often than chance keeps
it, and the picks measure over their prediction where random configurations do not (the
optimiser's curse). The closed loop corrects a pick after measuring it, one candidate at a
time; this measures the gap it corrects.

For each torchvision model (random init) at 1×3×S×S, on its zoo LUT
(``benchmarks/luts/zoo/NAME-S-ort-cpu-1t-l4.lut``, profiled the way ``zoo.py`` profiles it
where absent): the knapsack's picks with L1 importance, blocks removable, at each of
``--fractions`` of the predicted base (``halp``'s decision, data-free), and for each pick the
random configuration (of 40 drawn as the calibration draws them) whose prediction is
nearest. All are measured beside the full model (ort-cpu, 1 thread; each one right after
it, :func:`~latprune.latency_lut.profile.measure_widths_beside`) and predicted re-anchored
on it, as a relative budget uses the LUT. A pick's ``ratio`` is measured / predicted.
Writes ``benchmarks/results/pick_bias_ort-cpu_1t.json`` (``_TAG`` before ``.json`` with ``--tag``), one
row per model as it finishes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_json  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "pick_bias_ort-cpu_1t.json"
RANDOM_DRAWS = 40


def nearest(candidates: list[dict[int, int]], predicted_ms: float, predict: Any,
            taken: list[dict[int, int]]) -> dict[int, int]:
    """The candidate not yet taken whose prediction is nearest ``predicted_ms`` (relative)."""
    free = [c for c in candidates if c not in taken]
    return min(free, key=lambda c: abs(predict(c) / predicted_ms - 1))


def picks_and_twins(graph: Any, predictor: Any, grid: Any, fractions: list[float]
                    ) -> list[tuple[str, dict[int, int]]]:
    """The knapsack's data-free picks at ``fractions`` of the predicted base (those it can
    reach), then each one's random twin of about the same prediction."""
    from latprune.errors import BudgetError
    from latprune.latency_lut.calibrate import random_configs
    from latprune.pruner.importance import l1_importance
    from latprune.pruner.knapsack import solve

    options = graph.options(grid, blocks=bool(graph.blocks))
    base = predictor.predict(graph.full_widths())
    scores = l1_importance(graph)
    picks = []
    for f in fractions:
        try:
            picks.append(solve(predictor, options, scores, f * base).widths)
        except BudgetError:  # below the narrowest configuration
            continue
    draws = random_configs(options, RANDOM_DRAWS, seed=7)
    twins: list[dict[int, int]] = []
    for pick in picks:
        twins.append(nearest(draws, predictor.predict(pick), predictor.predict, twins))
    return [("pick", p) for p in picks] + [("random", t) for t in twins]


def run_model(name: str, size: int, fractions: list[float], levels: int, samples: int, backend_name: str = "ort-cpu",
              lut_dir: Path = HERE / "luts" / "zoo") -> dict[str, Any]:
    import latprune
    from latprune.graph.check import checked_graph
    from latprune.latency_lut.backends import get_backend
    from latprune.latency_lut.predict import Predictor
    from latprune.latency_lut.profile import load_calibration, measure_widths_beside
    from latprune.latency_lut.store import Lut
    from latprune.models import registered_model

    shape = (1, 3, size, size)
    path = lut_dir / f"{name}-{size}-{backend_name}-1t-l{levels}.lut"
    path.parent.mkdir(parents=True, exist_ok=True)
    latprune.profile(registered_model(f"torchvision:{name}", shape).model, shape, backend=backend_name, threads=1,
                     path=path, levels=levels, passes=1, calibration_samples=samples, progress=False)
    spec = registered_model(f"torchvision:{name}", shape)
    backend = get_backend(backend_name, 1)
    graph = checked_graph(spec.model, shape)
    backend.keyed(graph)  # as profile and prune key it
    lut = Lut.open(path)
    stored = load_calibration(lut, graph.signature())
    assert stored is not None, f"{path} holds no calibration for {name}"
    calibration, grid = stored
    predictor = Predictor(lut, graph, calibration)
    configs = picks_and_twins(graph, predictor, grid, fractions)
    full = graph.full_widths()
    base = predictor.predict(full)
    t0 = time.time()
    pairs = measure_widths_beside(graph, backend, [w for _, w in configs], full, desc=name, progress=False)
    rows = []
    for (kind, widths), (latency, beside) in zip(configs, pairs):
        predicted = predictor.predict(widths) * beside.median_ms / base
        rows.append({"kind": kind, "of_base": predictor.predict(widths) / base, "predicted_ms": predicted,
                     "measured_ms": latency.median_ms, "ratio": latency.median_ms / predicted,
                     "spread_pct": 100 * (latency.p90_ms - latency.p10_ms) / latency.median_ms,
                     "removed_blocks": len(graph.removed_blocks(widths)),
                     "groups_narrowed": sum(w < full[g] for g, w in widths.items())})
    return {"model": name, "input": list(shape), "lut": str(path), "fractions": fractions,
            "calibration": {"scale": calibration.scale, "offset_ms": calibration.offset_ms},
            "cold_units": sum(u.base.cold for u in graph.units), "rows": rows, "summary": summary(rows), "measure_s": round(time.time() - t0, 1),
            "fingerprint": backend.fingerprint(), "date": time.strftime("%Y-%m-%d")}


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Median measured / predicted of the picks and of their random twins."""
    by_kind = {k: [r["ratio"] for r in rows if r["kind"] == k] for k in ("pick", "random")}
    return {f"{k}_median_ratio": statistics.median(v) for k, v in by_kind.items() if v}


def table(results: dict[str, Any]) -> str:
    lines = ["| model | input | picks: measured / predicted | random twins | picks' blocks removed |",
             "|---|---|---|---|---|"]
    for name, res in results.items():
        picks = [r for r in res["rows"] if r["kind"] == "pick"]
        twins = [r for r in res["rows"] if r["kind"] == "random"]
        cells = [name, "×".join(map(str, res["input"][2:])),
                 ", ".join(f"{r['ratio']:.3f}" for r in picks), ", ".join(f"{r['ratio']:.3f}" for r in twins),
                 ", ".join(str(r["removed_blocks"]) for r in picks)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet101,wide_resnet50_2,efficientnet_b0,convnext_tiny")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--fractions", default="0.35,0.45,0.55,0.65,0.75", help="the picks' targets, of the predicted base")
    parser.add_argument("--levels", type=int, default=4, help="the zoo LUT's width levels")
    parser.add_argument("--calibration-samples", type=int, default=6, help="as zoo.py profiles, where no LUT exists")
    parser.add_argument("--force", action="store_true", help="measure models already in the result file again")
    parser.add_argument("--table", action="store_true", help="print the markdown table of the result file")
    parser.add_argument("--tag", help="suffix of the result file, e.g. the code's state")
    args = parser.parse_args()
    path = RESULTS.with_name(f"{RESULTS.stem}_{args.tag}.json") if args.tag else RESULTS
    results = json.loads(path.read_text()) if path.is_file() else {}
    if args.table:
        print(table(results))
        return
    fractions = [float(f) for f in args.fractions.split(",")]
    for name in args.models.split(","):
        if name in results and not args.force:
            print(f"{name}: already in {path.name} (--force measures it again)")
            continue
        results[name] = run_model(name, args.size, fractions, args.levels, args.calibration_samples)
        write_json(path, results)
        s = results[name]["summary"]
        print(f"{name}: picks {s['pick_median_ratio']:.3f}, random twins {s['random_median_ratio']:.3f} "
              "(measured / predicted, medians)", flush=True)


if __name__ == "__main__":
    main()
