"""Benchmark: would a calibration term beyond ``scale · Σunits + offset`` predict the zoo better?

    python benchmarks/calibration_terms.py [--results benchmarks/results/lut_fidelity_zoo_ort-cpu_1t.json]

Timed one by one, units miss two costs they pay inside a whole model
(``units_in_model.py``): weights that stream from memory once the model's
weights exceed the last-level cache, and squeeze-and-excitation's pooling,
multiply and layout conversions, which no unit owns. Both change with the
widths, so a linear calibration can absorb them only on average. This asks
whether they leave a trace it cannot absorb.

For every row of the fidelity zoo's result file (``lut_fidelity.py --zoo``)
with measured configurations, each configuration's features are computed from
the model's channel graph at its widths, and each form below is fitted
leave-one-out on the row's configurations (weighted by 1/measured, as
:func:`latprune.latency_lut.calibrate.fit` weighs them), and scored on the one
left out:

- ``linear``: the LUT's unit sum as the row stored it, and an offset;
- ``weights``: plus the configuration's weights (MiB, fp32);
- ``weights_over_cache``: plus the part of them beyond the last-level cache;
- ``excitation``: plus Σ C·H·W over the inputs of the squeeze-and-excitation
  modules (models that have them);
- ``per_kind``: separate scales for depthwise convolutions, other convolutions
  and the rest (where the row's LUT is on disk under ``benchmarks/``).

Beside them, the row's repeat score (its configurations measured twice): the
machine's own floor. A term worth building moves a row's median well below
``linear`` on more than one model. Writes
``benchmarks/results/calibration_terms_<name of the results file>.json``. It
times nothing: it runs anywhere, in a minute.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_json  # noqa: E402
from zoo import fitted_model  # noqa: E402

HERE = Path(__file__).resolve().parent


def leave_one_out(columns: list[np.ndarray], measured: np.ndarray) -> dict[str, float]:
    """Each point predicted by the weighted least-squares fit of ``columns`` on the others:
    median |error| (%) and the shares within ±5% and ±10%."""
    design = np.stack(columns, axis=1)
    errors = []
    for i in range(len(measured)):
        others = np.arange(len(measured)) != i
        weight = 1.0 / measured[others]
        coef, *_ = np.linalg.lstsq(design[others] * weight[:, None], measured[others] * weight, rcond=None)
        errors.append(abs(design[i] @ coef - measured[i]) / measured[i] * 100)
    err = np.array(errors)
    return {"median_abs_pct": round(float(np.median(err)), 2), "within_5_pct": round(float((err <= 5).mean()), 2),
            "within_10_pct": round(float((err <= 10).mean()), 2)}


def excitation_volumes(graph: Any) -> Callable[[dict[int, int]], float] | None:
    """Σ C·H·W (millions) over the inputs of ``graph``'s squeeze-and-excitation modules at given
    widths, C being the width of the group their ``fc2`` writes; None for a model without them."""
    import torch
    from torchvision.ops.misc import SqueezeExcitation

    modules = {n: m for n, m in graph.model.named_modules() if isinstance(m, SqueezeExcitation)}
    if not modules:
        return None
    spatial: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: spatial.__setitem__(n, i[0].shape[2] * i[0].shape[3]))
             for n, m in modules.items()]
    with torch.no_grad():
        graph.model(torch.randn(*graph.input_shape))
    for h in hooks:
        h.remove()
    units = {u.name: u for u in graph.units}
    terms = [(units[f"{n}.fc2"], spatial[n]) for n in modules]

    def volume(widths: dict[int, int]) -> float:
        return sum(widths.get(u.out_group, u.base.cout) * hw for u, hw in terms) / 1e6

    return volume


def kind(unit: Any) -> str:
    if unit.depthwise:
        return "depthwise"
    return "conv" if unit.base.op == "conv" else "other"


def per_kind_sums(graph: Any, lut_path: Path, configs: list[dict[int, int]]) -> list[np.ndarray] | None:
    """Σ LUT latency of each kind of unit (:func:`kind`) at each configuration; None without the LUT."""
    from latprune.latency_lut.predict import Predictor
    from latprune.latency_lut.store import Lut

    if not lut_path.exists():
        return None
    predictor = Predictor(Lut.open(lut_path), graph)
    kinds = sorted({kind(u) for u in graph.units})
    return [np.array([sum(predictor.unit_ms(u, w) for u in graph.units if kind(u) == k) for w in configs])
            for k in kinds]


def weight_bytes(graph: Any, widths: dict[int, int]) -> int:
    """The fp32 bytes of the weights of ``graph``'s units kept at ``widths``."""
    removed = graph.removed_units(widths)
    return sum(4 * u.key(widths).weights for u in graph.units if u.name not in removed)


def score_row(row: dict[str, Any], cache_bytes: int) -> dict[str, Any]:
    """Every form's leave-one-out score on one fidelity row (see the module docstring)."""
    from latprune.graph.check import checked_graph

    spec, _, _ = fitted_model(row["model"], row["input"][-1])
    graph = checked_graph(spec.model, tuple(row["input"]))
    points = row["points"]
    ids = sorted(g.id for g in graph.groups)
    configs = [dict(zip(ids, p["widths"])) for p in points]
    measured = np.array([p["measured_ms"] for p in points])
    raw, one = np.array([p["raw_ms"] for p in points]), np.ones(len(points))
    weights = np.array([weight_bytes(graph, w) for w in configs])
    forms = {"linear": [raw, one], "weights": [raw, weights / 2**20, one],
             "weights_over_cache": [raw, np.maximum(weights - cache_bytes, 0) / 2**20, one]}
    volume = excitation_volumes(graph)
    if volume is not None:
        forms["excitation"] = [raw, np.array([volume(w) for w in configs]), one]
    kinds = per_kind_sums(graph, HERE / row["lut"], configs) if row.get("lut") else None
    if kinds is not None:
        forms["per_kind"] = [*kinds, one]
    return {"model": row["model"], "size": row["size"], "configurations": len(points),
            "weights_mib": [round(float(weights.min()) / 2**20, 1), round(float(weights.max()) / 2**20, 1)],
            "repeat": {k: round(v, 2) for k, v in row["repeat"].items() if k != "spearman"},
            "spread_pct": round(row["spread_pct"], 1),
            "forms": {name: leave_one_out(cols, measured) for name, cols in forms.items()}}


def table(result: dict[str, Any]) -> str:
    forms = ("linear", "weights", "weights_over_cache", "excitation", "per_kind")
    lines = ["| model@size | weights (MiB) | repeat | " + " | ".join(forms) + " |",
             "|---|---|---|" + "---|" * len(forms)]
    for key, row in result["rows"].items():
        def cell(s: dict[str, float] | None) -> str:
            return "–" if s is None else f"{s['median_abs_pct']:.1f}% / {s['within_10_pct']:.0%}"
        cells = [cell(row["forms"].get(f)) for f in forms]
        lines.append(f"| {key} | {row['weights_mib'][0]}–{row['weights_mib'][1]} | {cell(row['repeat'])} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=HERE / "results" / "lut_fidelity_zoo_ort-cpu_1t.json")
    args = parser.parse_args()
    rows = json.loads(args.results.read_text())
    from latprune.runtime.fingerprint import last_level_cache_bytes

    cache_bytes = last_level_cache_bytes()
    result: dict[str, Any] = {"source": args.results.name, "cache_mib": cache_bytes / 2**20, "rows": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, row in rows.items():
            if row.get("points") and row.get("repeat"):
                result["rows"][key] = score_row(row, cache_bytes)
                print(key, {k: v["median_abs_pct"] for k, v in result["rows"][key]["forms"].items()}, flush=True)
    out = HERE / "results" / f"calibration_terms_{args.results.stem}.json"
    write_json(out, result)
    print(table(result))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
