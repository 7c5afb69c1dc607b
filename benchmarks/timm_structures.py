"""Benchmark: which of timm's popular architectures latprune can prune, and why not the others.

    python benchmarks/timm_structures.py [--models resnet18,vit_small_patch16_224] [--size 64] [--force]
    python benchmarks/timm_structures.py --table

timm is where vision-transformer users start, and its models are written by many hands:
fused norm-activation modules, attention with biases of its own, splits and slices of
channels, scales stored as shapes. For each model of :data:`MODELS` (random init, nothing
downloaded), in a child process with a time limit: ``timm:NAME`` built at ``--size`` (or
224, where the model fixes its size and does not take 64), its channel graph built and
checked as ``profile`` and ``prune`` take it (:func:`~latprune.graph.check.checked_graph`:
slimmed to every other channel, it must compute what the model with those channels zeroed
computes; the groups whose slimming the model's code contradicts keep their width). A row
says how many channel groups prune (heads among them), how many the check kept whole, the
removable blocks, the layers kept at full width and why, or the one-line refusal a user
gets, or that the step ran past its limit. It times nothing: it runs anywhere. Rows go to
``benchmarks/results/timm_structures.json`` as each model finishes; a model already there
is skipped unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_json  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "timm_structures.json"
MODELS = ("resnet18", "resnet50d", "efficientnet_b0", "mobilenetv3_large_100", "convnext_atto", "regnety_002",
          "deit_tiny_patch16_224", "vit_small_patch16_224", "swin_tiny_patch4_window7_224", "beit_base_patch16_224",
          "cait_xxs24_224", "poolformer_s12", "convformer_s18", "mixer_b16_224", "levit_128s", "efficientformer_l1",
          "mobilevit_xxs", "ghostnet_100", "cspresnet50", "dla34", "hrnet_w18_small", "rexnet_100",
          "tf_efficientnetv2_b0", "coat_lite_tiny", "edgenext_xx_small", "fastvit_t8")
FIXED_SIZE = 224  # the size tried where a model does not run at --size


def child(name: str, size: int) -> dict[str, Any]:
    """``timm:name``'s graph at ``size`` (then :data:`FIXED_SIZE`), verified; its row."""
    import warnings

    from latprune.errors import SpecError
    from latprune.graph.channels import ChannelGraph
    from latprune.graph.check import checked_graph
    from latprune.models import registered_model

    warnings.simplefilter("ignore")
    row: dict[str, Any] = {"model": name}
    for s in dict.fromkeys((size, FIXED_SIZE)):
        row["input"] = [1, 3, s, s]
        try:
            spec = registered_model(f"timm:{name}", (1, 3, s, s))
            assert spec is not None
            traced = len(ChannelGraph.build(spec.model, spec.input_shape).groups)
            graph = checked_graph(spec.model, spec.input_shape)
        except SpecError as exc:
            row.update(status="refused", why=str(exc).splitlines()[0])
            if "does not run on an input of shape" in str(exc):
                continue
            return row
        except Exception as exc:  # what a user would see as a traceback: the row says so
            row.update(status="crashed", why=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            return row
        kept = graph.kept_full
        row.pop("why", None)  # a size it did not run at
        row.update(status="prunes", groups=len(graph.groups), heads_groups=sum(g.heads for g in graph.groups),
                   groups_kept_whole=traced - len(graph.groups),
                   blocks=len(graph.blocks), units=len(graph.units), kept_full=len(kept),
                   kept_full_why=sorted({why for why in kept.values() if not why.startswith("shares channels")}))
        return row
    return row


def run(names: list[str], size: int, timeout_s: float, force: bool) -> dict[str, Any]:
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for i, name in enumerate(names, 1):
        if name in results and not force:
            print(f"[{i}/{len(names)}] {name}: already in {RESULTS.name}, skipped (--force runs it again)")
            continue
        start = time.time()
        try:
            done = subprocess.run([sys.executable, __file__, "--child", name, "--size", str(size)],
                                  capture_output=True, text=True, timeout=timeout_s)
            lines = done.stdout.strip().splitlines()
            row = json.loads(lines[-1]) if done.returncode == 0 and lines else {
                "model": name, "status": "crashed", "why": (done.stderr.strip().splitlines() or ["?"])[-1][:300]}
        except subprocess.TimeoutExpired:
            row = {"model": name, "status": "timeout", "why": f"building its graph ran past {timeout_s:.0f} s"}
        row["seconds"] = round(time.time() - start, 1)
        results[name] = row
        write_json(RESULTS, results)
        print(f"[{i}/{len(names)}] {name}: {row['status']} {row.get('why', '')}"[:200], flush=True)
    return results


def reasons_cell(reasons: list[str]) -> str:
    """The layers' reasons for keeping their width, one example per kind (the text before the
    first colon) and how many of that kind differ in their details."""
    kinds: dict[str, list[str]] = {}
    for why in reasons:
        kinds.setdefault(why.split(":")[0], []).append(why)
    cells = [f"{found[0]}{f' (and {len(found) - 1} like it)' if len(found) > 1 else ''}" for found in kinds.values()]
    return "; ".join(cells).replace("|", "\\|")


def table(results: dict[str, Any]) -> str:
    lines = ["| timm model | input | result | groups (heads) | groups kept whole | blocks | kept full | why |",
             "|---|---|---|--:|--:|--:|--:|---|"]
    for name, row in results.items():
        size = "×".join(map(str, row["input"][2:])) if "input" in row else "–"
        if row["status"] == "prunes":
            why = reasons_cell(row["kept_full_why"])
            lines.append(f"| {name} | {size} | prunes | {row['groups']} ({row['heads_groups']}) | "
                         f"{row.get('groups_kept_whole', '–')} | {row['blocks']} | {row['kept_full']} | {why} |")
        else:
            lines.append(f"| {name} | {size} | {row['status']} | | | | | {row['why'].replace('|', '/')[:220]} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated timm names (default: this file's MODELS)")
    parser.add_argument("--size", type=int, default=64, help="input height and width tried first")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="limit on one model")
    parser.add_argument("--force", action="store_true", help="run models already in the result file again")
    parser.add_argument("--table", action="store_true", help="print the markdown table of the result file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.size)))
    elif args.table:
        print(table(json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}))
    else:
        run(args.models.split(",") if args.models else list(MODELS), args.size, args.timeout_s, args.force)


if __name__ == "__main__":
    main()
