"""Benchmark: how much memory profiling and a data-free prune hold, as a multiple of the model.

    python benchmarks/memory_peak.py [--models vit_l_16,regnet_y_32gf] [--size 64] [--backend fake]
                                     [--src DIR --label before] [--table]

For each torchvision model (random init), in a process of its own: build `torchvision:NAME` at 1x3xSxS, then
``latprune.profile`` (4 width levels, 6 calibration samples, 1 pass) and ``latprune.prune`` to
0.6x with ``halp`` and L1 importance, data-free, as ``benchmarks/zoo.py`` does. Records the
resident memory (VmRSS) after each step and the peak (VmHWM, reset before each step), in GB
and as a multiple of the model's fp32 weights. The ``fake`` backend (the default) times nothing,
so the run is quick and what it holds is latprune's own: the model copies, graphs and slimmed
configurations; ``ort-cpu`` adds the exports and ONNX Runtime's sessions (and takes as long as a
zoo row). ``--src DIR`` runs latprune from another tree (``DIR/src``; e.g. a ``git worktree`` at an
older commit) under ``--label``, to measure a change before and after. Rows go to
``benchmarks/results/memory_peak_<backend>.json``, keyed ``label:model@size``. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proc_memory import reset_peak, resident_kib  # noqa: E402
from results_io import commit_of, write_json  # noqa: E402

HERE = Path(__file__).parent
BUDGET = "0.6x"


def status_gb(field: str) -> float:
    """A memory field of this process's /proc status (VmRSS, VmHWM), in GB."""
    kib = resident_kib(field)
    if kib is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return kib * 1024 / 1e9


def child(name: str, size: int, backend: str) -> dict[str, Any]:
    """Build, profile and prune ``name`` in this process: the memory after and at the peak of each step."""
    import torch

    import latprune
    from latprune.models import registered_model

    row: dict[str, Any] = {"steps": {}}

    def step(label: str, fn: Any) -> Any:
        reset_peak()
        t0 = time.time()
        out = fn()
        row["steps"][label] = {"after_gb": round(status_gb("VmRSS"), 2), "peak_gb": round(status_gb("VmHWM"), 2),
                               "s": round(time.time() - t0, 1)}
        return out

    model = step("build", lambda: registered_model(f"torchvision:{name}", (1, 3, size, size)).model)
    row["weights_gb"] = round(sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9, 3)
    x = torch.randn(1, 3, size, size)
    with tempfile.TemporaryDirectory() as tmp:
        lut = step("profile", lambda: latprune.profile(
            model, x, backend=backend, threads=1, path=os.path.join(tmp, "m.lut"), levels=4,
            calibration_samples=6, passes=1, progress=False))
        step("prune", lambda: latprune.prune(model, lut, BUDGET, example_input=x,
                                             method=latprune.HalpConfig(importance="l1"), progress=False))
    for s in row["steps"].values():
        s["peak_x_weights"] = round(s["peak_gb"] / row["weights_gb"], 2)
    return row


def table(rows: dict[str, Any]) -> str:
    lines = ["| run | model | weights GB | profile: peak GB (× weights) / after | prune: peak GB (× weights) / after |",
             "|---|---|--:|---|---|"]
    for key, row in rows.items():
        label, model = key.split(":", 1)
        cells = [f"{row['steps'][s]['peak_gb']:.2f} ({row['steps'][s]['peak_x_weights']:.1f}×) / "
                 f"{row['steps'][s]['after_gb']:.2f}" for s in ("profile", "prune")]
        lines.append(f"| {label} (`{row['commit']}`) | {model} | {row['weights_gb']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vit_l_16,regnet_y_32gf")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--backend", default="fake")
    parser.add_argument("--src", type=Path, default=HERE.parent, help="the tree whose src/ runs (default: this one)")
    parser.add_argument("--label", default="after")
    parser.add_argument("--table", action="store_true", help="print the result file's table and exit")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.size, args.backend)))
        return
    out = HERE / "results" / f"memory_peak_{args.backend}.json"
    rows = json.loads(out.read_text()) if out.exists() else {}
    if args.table:
        print(table(rows))
        return
    if not sys.platform.startswith("linux"):
        parser.error("memory is read from /proc: Linux only")
    for name in args.models.split(","):
        env = {**os.environ, "PYTHONPATH": str(args.src.resolve() / "src")}
        done = subprocess.run([sys.executable, __file__, "--child", name, "--size", str(args.size),
                               "--backend", args.backend], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{name}: the child failed:\n{done.stderr[-2000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row.update({"commit": commit_of(args.src), "backend": args.backend, "size": args.size,
                    "date": time.strftime("%Y-%m-%d")})
        rows[f"{args.label}:{name}@{args.size}"] = row
        write_json(out, rows)
        print(f"{args.label}:{name}@{args.size}: profile peak {row['steps']['profile']['peak_gb']} GB, "
              f"prune peak {row['steps']['prune']['peak_gb']} GB", flush=True)


if __name__ == "__main__":
    main()
