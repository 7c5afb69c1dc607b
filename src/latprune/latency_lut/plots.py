"""Plots of LUTs and fidelity runs (PNG, written atomically). Needs matplotlib."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from latprune._io import atomic_write_with
from latprune.errors import LutError, MissingDependency
from latprune.graph.lowrank import CHANNEL, SCHEMES, SPATIAL, pair_keys, pays
from latprune.graph.units import LayerKey
from latprune.latency_lut.store import Lut


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependency("matplotlib", "plot", "plotting") from None
    return plt


def _save(fig: Any, path: str) -> str:
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return path


def _label_panel(ax: Any, title: str, xlabel: str) -> None:
    ax.set_title(title, fontsize=8)
    ax.set_xlabel(xlabel, fontsize=7)
    ax.set_ylabel("ms", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=5)


def _finish(plt: Any, fig: Any, axes: Any, used: int, title: str, path: str) -> str:
    """Blank the panels past ``used``, title the figure, and write it to ``path``."""
    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_lut(lut: Lut, path: str, max_panels: int = 16) -> str:
    """One panel per unit shape (everything but the widths): latency vs output
    width, one line per input width. Staircases show as flat runs and jumps."""
    plt = _pyplot()
    families: dict[str, dict[int, list[tuple[int, float]]]] = {}
    for key, lat in lut.items():
        fam = replace(key, cin=0, cout=0, groups=1 if key.groups == 1 else 0)
        label = (f"{key.op} k{key.kernel[0]} s{key.stride[0]} {'dw ' if key.groups > 1 else ''}"
                 f"{'x'.join(map(str, key.in_hw))}{' +add' if key.add else ''}")
        families.setdefault(f"{label}|{fam.text}", {}).setdefault(key.cin, []).append((key.cout, lat.median_ms))
    names = sorted(families, key=lambda f: -sum(len(v) for v in families[f].values()))[:max_panels]
    if not names:
        raise LutError(f"{lut.path} has no entries to plot; profile a model into it first")
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        series = families[name]
        cins = sorted(series)
        picks = sorted({cins[int(round(i * (len(cins) - 1) / 3))] for i in range(4)}) if len(cins) > 4 else cins
        for cin in picks:
            pts = sorted(series[cin])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", lw=1, label=f"cin {cin}")
        _label_panel(ax, name.split("|")[0], "output channels")
    fp = lut.fingerprint
    return _finish(plt, fig, axes, len(names), f"{lut.path.name}: {fp.get('backend')} {fp.get('runtime_version')}, "
                   f"{fp.get('threads')} thread(s), {fp.get('device')}", path)


def rank_curves(lut: Lut) -> list[dict[str, Any]]:
    """Per unit shape whose factorised pairs the LUT holds (``profile --lowrank``), at its full
    widths: the unit's latency, its pair's latency at each rank measured (``ranks``: the channel
    scheme's, ``spatial``: the spatial scheme's), and the unit's latency against its output
    width (the input at full width): what a rank and a width each cost."""
    entries = {k: lat.median_ms for k, lat in lut.items()}
    by_cout: dict[LayerKey, list[tuple[int, float]]] = {}  # (cout, ms) of every key, by the key without its cout
    for key, ms in entries.items():
        by_cout.setdefault(replace(key, cout=0), []).append((key.cout, ms))
    full: dict[LayerKey, LayerKey] = {}
    for key in entries:
        if key.op in ("conv", "linear") and key.groups == 1:
            fam = replace(key, cin=0, cout=0)
            if fam not in full or (key.cin, key.cout) > (full[fam].cin, full[fam].cout):
                full[fam] = key
    curves = []
    for key in full.values():
        ranks = {scheme: _pair_curve(key, scheme, entries, by_cout) for scheme in SCHEMES}
        if any(ranks.values()):
            widths = sorted(by_cout[replace(key, cout=0)])
            curves.append({"key": key, "ms": entries[key], "ranks": ranks[CHANNEL], "spatial": ranks[SPATIAL],
                           "widths": widths})
    return curves


def _pair_curve(key: LayerKey, scheme: str, entries: dict[LayerKey, float],
                by_cout: dict[LayerKey, list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """(rank, the pair's summed ms) of the unit ``key``'s pairs in ``scheme`` that the LUT holds."""
    if not pays(key, 1, scheme):
        return []
    curve = []
    for r, first_ms in sorted(by_cout.get(replace(pair_keys(key, 1, scheme)[0], cout=0), [])):  # first layers
        second = pair_keys(key, r, scheme)[1]
        if pays(key, r, scheme) and second in entries:
            curve.append((r, first_ms + entries[second]))
    return curve


def plot_ranks(lut: Lut, path: str, max_panels: int = 16) -> str:
    """One panel per unit shape with factorised pairs in the LUT: latency against rank (the
    pair) beside latency against output width (the unit narrowed), the unit whole as a line."""
    plt = _pyplot()
    curves = sorted(rank_curves(lut), key=lambda c: -c["ms"])[:max_panels]
    if not curves:
        raise LutError(f"{lut.path} holds no factorised pairs; profile with lowrank=True (`--lowrank`) first")
    cols = min(4, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, c in zip(axes.flat, curves):
        key = c["key"]
        ax.plot([w for w, _ in c["widths"]], [ms for _, ms in c["widths"]], marker=".", lw=1, label="width")
        ax.plot([r for r, _ in c["ranks"]], [ms for _, ms in c["ranks"]], marker="x", lw=1, label="rank (pair)")
        if c["spatial"]:
            ax.plot([r for r, _ in c["spatial"]], [ms for _, ms in c["spatial"]], marker="+", lw=1,
                    label="rank (k×1, 1×k)")
        ax.axhline(c["ms"], color="0.5", lw=0.8, ls="--", label="whole")
        _label_panel(ax, f"{key.op} {key.cin}->{key.cout} k{key.kernel[0]} s{key.stride[0]} "
                     f"{'x'.join(map(str, key.in_hw))}", "output width, or rank")
    fp = lut.fingerprint
    return _finish(plt, fig, axes, len(curves), f"{lut.path.name}: rank vs width, {fp.get('backend')} "
                   f"{fp.get('runtime_version')}, {fp.get('threads')} thread(s)", path)


def plot_staircases(staircases: dict[str, dict[str, dict[str, Any]]], path: str, title: str = "",
                    max_panels: int = 24) -> str:
    """One panel per channel group of a refined LUT: the summed latency of the
    group's units against its width (others at full), the widths the adaptive
    sampling added in orange, the cheap side of each step as a dashed line."""
    plt = _pyplot()
    panels = [(sig, root, st) for sig, stairs in staircases.items() for root, st in stairs.items()][:max_panels]
    if not panels:
        raise LutError("no staircases to plot; profile with refine=True (`--refine`) first")
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.5 * rows), squeeze=False)
    for ax, (sig, root, st) in zip(axes.flat, panels):
        ax.plot(st["widths"], st["ms"], marker=".", lw=1, color="tab:blue")
        added = set(st["added"])
        pts = [(w, m) for w, m in zip(st["widths"], st["ms"]) if w in added]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="tab:orange", zorder=3, s=14, label="added")
            ax.legend(fontsize=5)
        for w in st["steps"]:
            ax.axvline(w, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{root}" + (f" [{sig[:6]}]" if len(staircases) > 1 else ""), fontsize=8)
        ax.set_xlabel("group width (channels)", fontsize=7)
        ax.set_ylabel("Σ unit ms", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{title}: latency staircases (dashed: cheap side of a step)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_fidelity(report: dict[str, Any], path: str) -> str:
    """Scatter of predicted vs measured latency with the ±10% band, written atomically as PNG."""
    plt = _pyplot()
    pts = report["points"]
    m = np.array([p["measured_ms"] for p in pts])
    fig, ax = plt.subplots(figsize=(5, 5))
    lo, hi = float(m.min()) * 0.85, float(m.max()) * 1.15
    xs = np.linspace(lo, hi, 2)
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="0.9", label="±10%")
    ax.plot(xs, xs, color="0.5", lw=1)
    ax.scatter(m, [p["predicted_ms"] for p in pts], s=14, label=f"stored (median {report['stored']['median_abs_pct']:.1f}%)")
    ax.scatter(m, [p["anchored_ms"] for p in pts], s=14, marker="x",
               label=f"re-anchored (median {report['anchored']['median_abs_pct']:.1f}%)")
    if report.get("beside") is not None:
        ax.scatter(m, [p["beside_ms"] for p in pts], s=12, marker="^", facecolors="none", edgecolors="C3",
                   label=f"beside the full model (median {report['beside']['median_abs_pct']:.1f}%)")
    if report.get("refit") is not None and all("refit_ms" in p for p in pts):
        ax.scatter(m, [p["refit_ms"] for p in pts], s=10, marker="+",
                   label=f"refit, {report['refit_folds']}-fold (median {report['refit']['median_abs_pct']:.1f}%)")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="measured latency (ms)", ylabel="predicted latency (ms)",
           title=f"{report['model']}: {report['samples']} configurations")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path
