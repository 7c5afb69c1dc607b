"""Human-readable text for each command's result (the ``--json`` forms are the dicts themselves)."""

from __future__ import annotations

import math
from typing import Any

from latprune.latency_lut.timing import NOISY_RESIDUAL_PCT, NOISY_SPREAD_PCT, noisy_calibration
from latprune.parity import tolerance_text

STALE_CALIBRATION_GAP = 0.05  # refit's share within ±10% this much above stored's: advise re-calibrating
# ... unless the measurements scatter (spread above NOISY_SPREAD_PCT) and even the refit leaves
# more than this share outside ±10%: then the scatter, not the calibration, is the news
REFIT_GOOD_SHARE = 0.9


def _ms(lat: dict[str, Any]) -> str:
    return f"{lat['median_ms']:.3f} ({lat['p10_ms']:.3f}–{lat['p90_ms']:.3f})"


def _acc(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def profile_text(r: dict[str, Any]) -> str:
    cal = r["calibration"]
    fp = r["fingerprint"]
    return (
        f"LUT {r['lut']}: {r['keys']} unit configurations for {r['units']} units of {r['model']} "
        f"({r['measured']} measurements now in {r['passes']} pass(es), {r['reused']} already complete) "
        f"in {r['seconds']:.1f} s\n"
        f"device: {fp.get('device')} · {fp.get('runtime')} {fp.get('runtime_version')} · {fp.get('threads')} thread(s)\n"
        f"calibration: {calibration_formula(cal)} "
        f"(median residual {cal['residual_pct']:.1f}%, width grid {r['levels']} levels aligned to {r['align']})"
        + "".join(f"\n{line}" for line in staircase_lines(r.get("staircases") or {}))
    )


def staircase_lines(stairs: dict[str, dict[str, Any]]) -> list[str]:
    """One line per refined group: the widths the adaptive sampling added and the steps it found.

    >>> staircase_lines({"conv1": {"added": [40, 44], "steps": [40]}, "conv2": {"added": [], "steps": []}})
    ['staircases: 1 of 2 groups refined, 2 widths added', '  conv1: +40, 44; cheap side of a step at 40']
    """
    if not stairs:
        return []
    refined = {root: s for root, s in stairs.items() if s["added"] or s["steps"]}
    lines = [f"staircases: {len([s for s in stairs.values() if s['added']])} of {len(stairs)} groups refined, "
             f"{sum(len(s['added']) for s in stairs.values())} widths added"]
    for root, s in refined.items():
        steps = f"; cheap side of a step at {', '.join(map(str, s['steps']))}" if s["steps"] else ""
        lines.append(f"  {root}: +{', '.join(map(str, s['added'])) or 'none'}{steps}")
    return lines


def calibration_formula(cal: dict[str, Any]) -> str:
    """'measured ≈ 1.030 × (Σunits · (1 + 0.0120 per MiB of weights) + 0.043 ms per removed unit) − 0.391 ms'
    (the weights and removed-unit terms only when fitted).

    >>> calibration_formula({"scale": 1.0, "offset_ms": -0.25})
    'measured ≈ 1.000 × Σunits − 0.250 ms'
    >>> calibration_formula({"scale": 1.5, "offset_ms": -0.1, "per_weight_mib": 0.0125})
    'measured ≈ 1.500 × Σunits · (1 + 0.0125 per MiB of weights) − 0.100 ms'
    """
    removed, per_mib = cal.get("removed_unit_ms", 0.0), cal.get("per_weight_mib", 0.0)
    units = f"Σunits · (1 + {per_mib:.4f} per MiB of weights)" if per_mib else "Σunits"
    units = f"({units} + {removed:.3f} ms per removed unit)" if removed else units
    sign = "−" if cal["offset_ms"] < 0 else "+"
    return f"measured ≈ {cal['scale']:.3f} × {units} {sign} {abs(cal['offset_ms']):.3f} ms"


def prune_rows(m: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name in ("base", "pruned"):
        s = m[name]
        predicted = "—" if s.get("predicted_ms") is None else f"{s['predicted_ms']:.3f}"  # off-grid baselines
        rows.append([name, _ms(s["latency_ms"]), predicted, _acc(s["accuracy"]),
                     f"{s['params'] / 1e6:.3f} M", f"{s['macs'] / 1e6:.1f} M"])
    return rows


def _budget_phrase(budget: dict[str, Any], base_beside_ms: float | None) -> str:
    """"budget 1.448 ms (0.5x)", or for a relative budget checked beside the base, what it was checked against."""
    if base_beside_ms is None or budget.get("ms_beside") is None:
        return f"budget {budget['ms']:.3f} ms ({budget['spec']})"
    return (f"budget {budget['spec']} of the base, measured {base_beside_ms:.3f} ms beside the pruned model "
            f"= {budget['ms_beside']:.3f} ms")


def prune_text(m: dict[str, Any]) -> str:
    head = ["model", "measured ms (p10–p90)", "predicted ms", "test acc", "params", "MACs"]
    verdict = "HELD" if m["budget_met"] else "MISSED"
    return "\n".join([
        table(head, prune_rows(m)),
        "",
        f"{_budget_phrase(m['budget'], m['pruned'].get('base_beside_ms'))}: {verdict} — pruned model measures "
        f"{m['pruned']['latency_ms']['median_ms']:.3f} ms on {m['fingerprint']['backend']} "
        f"({m['fingerprint']['threads']} thread(s), {m['fingerprint']['device']})",
        f"measured speedup {m['speedup_measured']:.2f}x; MACs kept {100 * m['macs_ratio']:.0f}%; "
        f"closed loop: {len(m['closed_loop'])} iteration(s); ONNX parity max abs diff "
        f"{m['pruned']['onnx_parity_max_abs_diff']:.1e}",
        f"method {m.get('method', 'halp')}; blocks removed: "
        f"{', '.join(m['pruned'].get('removed_blocks') or []) or 'none'}",
        *[_attempt_line(a) for a in m.get("attempts", []) if len(m["attempts"]) > 1],
    ])


def _attempt_line(a: dict[str, Any]) -> str:
    if "error" in a:
        return f"attempt {a['attempt']}: to {a['budget_ms']:.3f} ms: failed ({a['error']}); the previous one kept"
    candidate = "—" if a["candidate_ms"] is None else f"{a['candidate_ms']:.3f} ms"
    return (f"attempt {a['attempt']}: pruned to {a['budget_ms']:.3f} ms, candidate measured {candidate}, "
            f"fine-tuned export {a['export_ms']:.3f} ms: {'held' if a['budget_met'] else 'missed'}")


def bench_text(r: dict[str, Any]) -> str:
    lines = [f"{r['artifact']} on {r['backend']} ({r['threads']} thread(s)): "
             f"median {r['latency_ms']['median_ms']:.3f} ms, p10 {r['latency_ms']['p10_ms']:.3f}, "
             f"p90 {r['latency_ms']['p90_ms']:.3f} ({r['latency_ms']['repeats']} runs)"]
    if "predicted_ms" in r:
        lines.append(f"LUT prediction {r['predicted_ms']:.3f} ms ({r['error_pct']:+.1f}% vs measured"
                     f"{'' if r['calibrated'] else ', uncalibrated'})")
    if r.get("budget_ms") is not None:
        ok = r["latency_ms"]["median_ms"] <= r["budget_ms"]
        how = (f" ({r['budget_spec']} of the base, measured {r['base_beside_ms']:.3f} ms beside it)"
               if r.get("base_beside_ms") is not None else "")
        lines.append(f"budget {r['budget_ms']:.3f} ms{how}: {'held' if ok else 'MISSED'}")
    return "\n".join(lines)


def demo_text(r: dict[str, Any]) -> str:
    return "\n\n".join([profile_text(r["profile"]), prune_text(r["prune"]), bench_text(r["bench"]),
                        f"demo took {r['seconds']:.0f} s; run directory: {r['run_dir']}"])


def fidelity_text(r: dict[str, Any]) -> str:
    rows = []
    labels = {"stored": "stored", "anchored": "anchored", "beside": "beside (full model measured before each)",
              "refit": f"refit ({r.get('refit_folds')}-fold)", "repeat": "measured again (pass 1 vs 2)"}
    for name, label in labels.items():
        e = r.get(name)
        if e is None:
            continue
        rows.append([label, f"{e['median_abs_pct']:.2f}%", f"{100 * e['within_5_pct']:.0f}%",
                     f"{100 * e['within_10_pct']:.0f}%", f"{e['spearman']:.3f}"])
    fp = r["fingerprint"]
    lines = [f"{r['model']}: {r['samples']} random width configurations measured on {fp.get('backend')} "
             f"({fp.get('threads')} thread(s)) in {r['seconds']:.0f} s; drift since profiling "
             f"{100 * (r['drift'] - 1):+.1f}%", "",
             table(["prediction", "median |error|", "within ±5%", "within ±10%", "Spearman"], rows)]
    spread = r.get("spread_pct", float("nan"))
    scattered = spread > NOISY_SPREAD_PCT
    stale = _stale_note(r, scattered)
    if stale:
        lines.append(f"\n{stale}")
    if scattered:
        lines.append(f"\nthe measurements themselves scatter: a configuration's p10-p90 spans {spread:.1f}% of its "
                     f"median (the median over configurations), above the {NOISY_SPREAD_PCT:g}% where LUTs have "
                     "been scored within ±10% (BENCHMARKS.md): these errors are the machine's noise as much as the "
                     "LUT's; measure again when the machine is quiet"
                     + ("; on the 2-vCPU VMs of BENCHMARKS.md one thread scattered far less (the second thread's "
                        "speedup drifts within minutes): if the deployment can run on one thread, profile and "
                        "measure with --threads 1" if (fp.get("threads") or 1) > 1 else ""))
    if r.get("slow_probes"):
        lines.append(f"\nthe machine ran slower than usual at {r['slow_probes']} of {len(r.get('probe_trace', []))} "
                     "speed probes: those measurements were waited for or repeated")
    if r.get("plot"):
        lines.append(f"\nplot: {r['plot']}")
    return "\n".join(lines)


def _stale_note(r: dict[str, Any], scattered: bool) -> str | None:
    """What ``lut fidelity`` says of a stored calibration that its own run fits better (None:
    nothing to say). One factor, the machine's speed since the calibration, when re-anchoring
    on the full model does as well as the refit; nothing when the measurements scatter and
    even the refit cannot fit them (the scatter note says it)."""
    refit, stored, anchored = r.get("refit"), r["stored"]["within_10_pct"], r["anchored"]["within_10_pct"]
    if refit is None or refit["within_10_pct"] - stored < STALE_CALIBRATION_GAP:
        return None
    if scattered and refit["within_10_pct"] < REFIT_GOOD_SHARE:
        return None
    recalibrate = (f"`latprune profile MODEL -o {r.get('lut', 'LUT')} --recalibrate` (with this run's --backend, "
                   "--threads and --input) fits it again")
    if anchored >= refit["within_10_pct"] - STALE_CALIBRATION_GAP:
        direction = "slower" if r["drift"] > 1 else "faster"
        return (f"the stored calibration is stale: the machine runs {100 * abs(r['drift'] - 1):.1f}% {direction} "
                f"than when it was measured, and re-anchored on the full model measured now, the predictions put "
                f"{100 * anchored:.0f}% within ±10% (stored: {100 * stored:.0f}%). Budgets relative to the base "
                "(`prune --budget 0.5x`) measure the base beside each candidate and are not affected; for budgets "
                f"in ms, {recalibrate}, to the machine's speed of now (a fit is only as right as the machine is "
                "steady)")
    return (f"the stored calibration is stale: fitted on this run's measurements, the same units put "
            f"{100 * refit['within_10_pct']:.0f}% within ±10% (stored: {100 * stored:.0f}%); {recalibrate}")


def lut_text(r: dict[str, Any]) -> str:
    fp = r["fingerprint"]
    lines = [f"{r['file']}: schema {r['schema_version']}, {r['entries']} entries",
             f"device: {fp.get('device')} · {fp.get('runtime')} {fp.get('runtime_version')} · "
             f"{fp.get('threads')} thread(s) · {fp.get('backend')}"]
    rules = r.get("fusion_rules")
    if rules:
        found = ", ".join(f"{k} {'fused' if v['fused'] else 'separate'} "
                          f"({1000 * v['attached_ms']:.1f} µs attached vs {1000 * v['alone_ms']:.1f} µs alone"
                          + (f"; kernels {'+'.join(v['kernels'])}" if v.get("kernels") else "") + ")"
                          for k, v in rules.items() if isinstance(v, dict))
        lines.append(f"fusion rules measured: {found}")
    for sig, c in r["calibrations"].items():
        spread = c.get("spread_pct", float("nan"))  # older calibrations lack it
        noisy = (f", measured on a noisy machine (residual above {NOISY_RESIDUAL_PCT:.0f}% or p10-p90 spread above "
                 f"{NOISY_SPREAD_PCT:g}%): profile it again with --recalibrate when the machine is quiet"
                 if noisy_calibration(c) else "")
        lines.append(f"calibration {sig} ({c.get('model')}): {calibration_formula(c).removeprefix('measured ≈ ')}, "
                     f"residual {c['residual_pct']:.1f}%" + ("" if math.isnan(spread) else f", spread {spread:.1f}%")
                     + f", {c.get('levels')} levels aligned to {c.get('align', 1)}{noisy}")
    for sig, stairs in (r.get("staircases") or {}).items():
        lines += [f"{sig}: {line}" if i == 0 else line for i, line in enumerate(staircase_lines(stairs))]
    if r["shown"]:
        rows = [[e["key"], f"{e['median_ms']:.4f}", f"{e['p10_ms']:.4f}", f"{e['p90_ms']:.4f}", str(e["repeats"])]
                for e in r["shown"]]
        lines += ["", table(["key", "median ms", "p10", "p90", "runs"], rows)]
        if len(r["shown"]) < r["entries"]:
            lines.append(f"… {r['entries'] - len(r['shown'])} more (--limit 0 shows all)")
    if r.get("plot"):
        lines.append(f"plot: {r['plot']}")
    if r.get("staircase_plot"):
        lines.append(f"staircase plot: {r['staircase_plot']}")
    return "\n".join(lines)


def bundle_text(r: dict[str, Any]) -> str:
    """`latprune export`: what was written, parity, measured vs budget and prediction."""
    m, par, fp = r["measured"], r["parity"], r["fingerprint"]
    lat = m["latency_ms"]
    exp = r["export"]
    how = exp.get("exporter", "")
    if exp.get("opset"):
        how += f", opset {exp['opset']}"
    if exp.get("fallback_reason"):
        how += f" (dynamo exporter failed: {exp['fallback_reason'][:120]})"
    tol = (f" (≤ {tolerance_text(par['tol'], par.get('rtol'))}: {'passed' if par['passed'] else 'FAILED'})"
           if par["tol"] is not None
           else " (reported, not enforced)")
    lines = [
        f"wrote {r['format']} bundle {r['path']}: {', '.join(r['files'])}, bundle.json, README.md",
        f"export: {how}; input {r['input']['shape']} float32",
        f"parity: max abs diff {par['max_abs_diff']:.2e} vs {par['reference']}{tol}",
        f"measured on {fp.get('device')} · {fp.get('runtime')} {fp.get('runtime_version')} · {m['threads']} "
        f"thread(s): median {_ms(lat)} ms ({lat['repeats']} runs)",
    ]
    pred = r["prediction"].get("predicted_ms")
    if pred is not None:
        lines.append(f"LUT prediction {pred:.3f} ms ({100 * (pred - lat['median_ms']) / lat['median_ms']:+.1f}% vs "
                     "measured)")
    if r["budget"]["ms"] is not None:
        lines.append(f"budget {r['budget']['ms']:.3f} ms: {'held' if m['budget_met'] else 'MISSED'}")
    return "\n".join(lines)


def run_text(r: dict[str, Any]) -> str:
    """`latprune run`: outputs' summary, measured latency next to the bundle's budget."""
    lat = r["latency_ms"]
    fp = r["fingerprint"]
    lines = [f"{r['bundle']} ({r['format']}, {r['model']}) on {r['runtime']}, input {r['input']['shape']} "
             f"{r['input']['dtype']} from {r['input']['source']}"]
    for o in r["outputs"]:
        top = f", top-1 {o['top1']}" if "top1" in o else ""
        lines.append(f"  {o['name']}: {o['shape']} {o['dtype']}, min {o['min']:.4g}, max {o['max']:.4g}, "
                     f"mean {o['mean']:.4g}{top}{'' if o['finite'] else ', NOT FINITE'}")
    lines.append(f"measured here: median {_ms(lat)} ms ({lat['repeats']} runs, {r['threads']} thread(s), "
                 f"{fp.get('device')})")
    b = r["bundle_latency_ms"]
    lines.append(f"at export:     median {_ms(b)} ms" + (f"; LUT prediction {r['predicted_ms']:.3f} ms"
                                                      if r["predicted_ms"] is not None else ""))
    if r["budget_ms"] is not None:
        lines.append(f"budget {r['budget_ms']:.3f} ms: {'held' if r['budget_met'] else 'MISSED'} here"
                     + (" (on another device than the bundle's: see the warning)" if r["fingerprint_mismatch"] else ""))
    return "\n".join(lines)
