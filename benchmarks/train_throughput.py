"""Benchmark: images/s of a fine-tuning step and of a gate-training step, and the gates' overhead (issue #32).

    python benchmarks/train_throughput.py [--models resnet20,resnet50] [--devices cpu,cuda]
                                          [--precisions fp32,bf16,fp16] [--signals taylor,straight-through]
                                          [--batch N] [--steps 20] [--warmup 6] [--rounds 3] [--threads N]
                                          [--lut-backend fake] [--out DIR] [--tag NAME] [--force]
    python benchmarks/train_throughput.py --ddp [--steps 5] [--batch 64] [--out DIR] [--tag NAME]

Both steps are steps of ``latprune.train.train``, the loop that fine-tunes and
trains the gates: augmentation, forward, cross-entropy, backward, SGD, under
``Compute.autocast()``, channels-last where ``channels_last_is_safe``. The
gate step is the same call with gator's gates attached and its latency
penalty (``latency_penalty`` over a ``SoftLatency``, built as
``pruner.methods.gator`` builds them; one row per ``--signals`` entry).
Models: ``resnet20``, the embedded ResNet-20 at 1x28x28 (batch 64, the
demo's), and ``resnet50``, torchvision's with random weights at 3x224x224
(batch 32); random data, nothing downloaded.

A step is the time between two batches that ``train`` draws from the data
(the last step ends when it asks for one more), so it holds everything the
loop does per step. In each of ``--rounds`` rounds every mode trains from the
same weights for ``--warmup`` + ``--steps`` steps, the modes one after the
other, so a slow spell of the machine falls on all of them; the warm-up steps
are not timed (the Taylor signal adds its term only from step
``TaylorSignal.warmup + 1``, which sets the warm-up's minimum). A row gives
the median over every timed step of every round, its min and max, and
images/s = batch / median; a gate row gives its overhead over the
fine-tuning row of the same model, device and precision: median against
median, and fastest step against fastest step (``overhead_min_pct``, the
steps a busy machine disturbed least).

The LUT the penalty reads is profiled once per model (cached in
benchmarks/luts/) on the width grid a prune uses (8 levels, align 8). With
``--lut-backend fake`` (the default) its latencies come from the fake
backend's formula, in seconds: a step's cost depends on the grid and the
units the tables cover, not on the numbers in them. ``--lut-backend ort-cpu``
measures it (minutes for ResNet-20, far longer for ResNet-50).

Writes benchmarks/results/train_throughput_<cpu|cuda>[_<tag>].json (``--out``
another directory), one row per model, precision, mode, batch and thread
count, with the host, torch and GPU; resumable: a model/device/precision whose
rows are in the file is skipped (unless --force). Prints a Markdown table.

``--ddp``: ``latprune.train.train`` over 2 gloo ranks (1 thread each; the
process group joined as torchrun's would be, so train() runs the model in DDP)
against 1 rank, on a ResNet-20 (``ResNetCifar()``, random weights of seed 0),
with the same weights, data and global batch, for ``--steps`` steps of
train()'s optimizer and schedule (SGD with Nesterov momentum, one-cycle; no
augmentation, fp32). The 1-rank reference computes the loss of each rank's
half of the batch and their mean (per-half BatchNorm statistics, as DDP has
them); the curves must agree within ``DDP_RTOL``. The loss of the whole batch
at once (BatchNorm over all of it) is recorded beside them. Writes
train_throughput_ddp[_<tag>].json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from results_io import write_json

HERE = Path(__file__).parent
RESULTS = HERE / "results"
LUTS = HERE / "luts"
# --models: latprune's model name, and the batch size when --batch is not given
MODELS = {"resnet20": ("default", 64), "resnet50": ("torchvision:resnet50", 32)}
PRECISIONS = ("fp32", "bf16", "fp16")  # fp16 trains on CUDA only (Compute.resolve)
SIGNALS = ("taylor", "straight-through")
LUT_LEVELS, LUT_ALIGN = 8, 8  # a prune's default width grid (ort-cpu on AVX2)
BUDGET_RATIO = 0.5            # the penalty's target: half the full model's predicted latency
LR = 0.01                     # gator's gate-training learning rate (ImportanceConfig.lr)
DDP_WORLD = 2
DDP_RTOL = 1e-4               # 2 ranks vs 1: largest relative difference of a step's loss


class TimedBatches:
    """The same batch ``steps`` times, stamping the clock each time ``train`` asks for the
    next one (and once after the last): ``seconds()`` are the steps' wall times."""

    def __init__(self, batch: tuple[Any, Any], steps: int, cuda: bool) -> None:
        self.batch, self.steps, self.cuda = batch, steps, cuda
        self.stamps: list[float] = []

    def __len__(self) -> int:
        return self.steps

    def _stamp(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())

    def __iter__(self) -> Any:
        for _ in range(self.steps):
            self._stamp()
            yield self.batch
        self._stamp()

    def seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]


def cached_lut(model_name: str, model: Any, input_shape: tuple[int, ...], backend: str, threads: int) -> Path:
    """The model's LUT on the prune's width grid, profiled into benchmarks/luts/ the first time."""
    import warnings

    import latprune

    path = LUTS / f"train_throughput-{model_name}-{backend}-{threads}t.lut"
    start = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # advice on a noisy calibration: the values do not change a step's cost
        latprune.profile(model, input_shape, backend, threads, path=path, levels=LUT_LEVELS, align=LUT_ALIGN,
                         progress=False, name=model_name)
    print(f"{model_name}: LUT {path} ({backend}, {time.time() - start:.0f} s)", file=sys.stderr)
    return path


class GatePenalty:
    """What gator builds around a model (``pruner.methods.gator``): the channel graph, the LUT's
    calibrated predictor and its ``SoftLatency`` over the width options; ``penalty(signal)`` gives
    fresh gates, attached, and their latency penalty."""

    def __init__(self, model: Any, input_shape: tuple[int, ...], lut_path: Path, backend: str, threads: int) -> None:
        import warnings

        from latprune.graph.channels import ChannelGraph
        from latprune.latency_lut.backends import get_backend
        from latprune.latency_lut.predict import SoftLatency
        from latprune.latency_lut.store import Lut
        from latprune.pruner.loop import calibrated_predictor

        start = time.time()
        self.graph = ChannelGraph.build(model, input_shape)
        lut = Lut.open(lut_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a noisy calibration: the tables' values do not change a step's cost
            calibrated = calibrated_predictor(self.graph, lut, get_backend(backend, threads), progress=False)
        self.options = self.graph.options(calibrated.grid, blocks=True)
        self.soft = SoftLatency(calibrated.predictor, self.options)
        self.budget_ms = BUDGET_RATIO * calibrated.predictor.predict(self.graph.full_widths())
        self.setup_s = time.time() - start
        self.gates: Any = None

    def penalty(self, signal: str) -> Any:
        from latprune.pruner.gates import GateConfig, Gates, latency_penalty

        config = GateConfig(signal=signal)
        self.gates = Gates(self.graph, init=config.init, blocks=True, temperature=config.temperature).attach()
        return latency_penalty(self.gates, self.soft, self.budget_ms, config)

    def detach(self) -> None:
        if self.gates is not None:
            self.gates.detach()
            self.gates = None


def spread(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1],
            "p10": ordered[int(0.1 * (len(ordered) - 1))], "p90": ordered[int(round(0.9 * (len(ordered) - 1)))]}


class Subject:
    """One model as every cell of it uses it: the module and its starting weights, random
    data at its input size, and (with a gate signal) gator's gates and penalty around it."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        import copy

        import torch

        from latprune.models import registered_model

        spec = registered_model(MODELS[name][0])
        assert spec is not None and spec.num_classes is not None  # every MODELS entry is a name latprune builds
        self.name, self.spec, self.model, self.shape = name, spec.name, spec.model, spec.input_shape
        self.batch_size = args.batch or MODELS[name][1]
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(self.batch_size, *self.shape[1:], generator=gen)  # (B, C, H, W)
        self.y = torch.randint(0, spec.num_classes, (self.batch_size,), generator=gen)
        self.gate: GatePenalty | None = None
        if args.signals:
            lut_threads = args.threads or 1
            lut_path = cached_lut(name, self.model, self.shape, args.lut_backend, lut_threads)
            self.gate = GatePenalty(self.model, self.shape, lut_path, args.lut_backend, lut_threads)
        self.weights = copy.deepcopy(self.model.state_dict())


def measure_cell(subject: Subject, device: str, precision: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows of one model on one device at one precision: fine-tuning and each gate signal,
    interleaved over ``args.rounds`` rounds from the same weights."""
    import torch

    from latprune.train import Compute, TrainConfig, channels_last_is_safe, train

    name, model, gate, batch_size = subject.name, subject.model, subject.gate, subject.batch_size
    compute = Compute.resolve(device, precision)
    cuda = compute.torch_device.type == "cuda"
    x, y = subject.x, subject.y
    if cuda:
        x, y = x.pin_memory(), y.pin_memory()  # as latprune's loaders hand batches over where CUDA is
    modes = ["finetune", *(f"gate-{s}" for s in args.signals)]
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    round_medians: dict[str, list[float]] = {m: [] for m in modes}
    config = TrainConfig(epochs=1.0, batch_size=batch_size, lr=LR, seed=0, compute=compute)
    for r in range(args.rounds):
        for mode in modes:
            model.load_state_dict(subject.weights)
            penalty = gate.penalty(mode.removeprefix("gate-")) if gate is not None and mode != "finetune" else None
            data = TimedBatches((x, y), args.warmup + args.steps, cuda)
            try:
                train(model, data, config, desc=f"{name} {device} {precision} {mode} round {r + 1}", penalty=penalty)
            finally:
                if gate is not None:
                    gate.detach()
            timed = data.seconds()[args.warmup:]
            seconds[mode] += timed
            round_medians[mode].append(statistics.median(timed))
    fmt = "channels_last" if channels_last_is_safe(model) else "contiguous"
    base = spread(seconds["finetune"])
    rows = []
    for mode in modes:
        s = spread(seconds[mode])
        rows.append({
            "model": name, "spec": subject.spec, "input": list(subject.shape[1:]), "device": compute.device,
            "precision": precision, "mode": mode, "batch": batch_size, "threads": torch.get_num_threads(),
            "memory_format": fmt, "rounds": args.rounds, "warmup_steps": args.warmup, "timed_steps": len(seconds[mode]),
            "images_per_s": batch_size / s["median"], "step_s": s, "round_median_s": round_medians[mode],
            "overhead_pct": None if mode == "finetune" else 100 * (s["median"] / base["median"] - 1),
            # fastest against fastest: the steps a busy machine disturbed least
            "overhead_min_pct": None if mode == "finetune" else 100 * (s["min"] / base["min"] - 1),
            "gate_setup_s": None if mode == "finetune" or gate is None else gate.setup_s,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
    return rows


def row_key(row: dict[str, Any]) -> str:
    return f"{row['model']}/{row['precision']}/{row['mode']}/b{row['batch']}/{row['threads']}t"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | device | precision | step | batch | threads | images/s | s/step (median) | min | max | "
             "overhead | overhead (min) |", "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        s, over, over_min = r["step_s"], r["overhead_pct"], r.get("overhead_min_pct")
        lines.append(f"| {r['model']} | {r['device']} | {r['precision']} | {r['mode']} | {r['batch']} | "
                     f"{r['threads']} | {r['images_per_s']:.1f} | {s['median']:.4f} | {s['min']:.4f} | "
                     f"{s['max']:.4f} | {'' if over is None else f'{over:+.1f}%'} | "
                     f"{'' if over_min is None else f'{over_min:+.1f}%'} |")
    return "\n".join(lines)


def environment(device: str) -> dict[str, Any]:
    import torch

    from latprune.runtime.fingerprint import host_fingerprint

    env = {**host_fingerprint(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if device == "cuda":
        env.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    return env


def throughput(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    suffix = f"_{args.tag}" if args.tag else ""
    subjects: dict[str, Subject] = {}  # built once, for every device and precision
    for device in args.devices:
        path = args.out / f"train_throughput_{device}{suffix}.json"
        results = json.loads(path.read_text()) if path.exists() else {"benchmark": "train_throughput", "rows": {}}
        results.update(command=" ".join(["python", *sys.argv]), environment=environment(device),
                       lut={"backend": args.lut_backend, "levels": LUT_LEVELS, "align": LUT_ALIGN,
                            "budget": f"{BUDGET_RATIO}x the full model's prediction"})
        shown = []
        for name in args.models:
            for precision in args.precisions:
                if precision == "fp16" and device == "cpu":
                    continue  # Compute.resolve refuses it: fp16 trains with a gradient scaler on CUDA only
                batch, threads = args.batch or MODELS[name][1], torch.get_num_threads()
                keys = [f"{name}/{precision}/{m}/b{batch}/{threads}t"
                        for m in ["finetune", *(f"gate-{s}" for s in args.signals)]]
                if all(k in results["rows"] for k in keys) and not args.force:
                    print(f"{name} {device} {precision}: already in {path}, skipped (--force re-runs)",
                          file=sys.stderr)
                    shown += [results["rows"][k] for k in keys]
                    continue
                if name not in subjects:
                    subjects[name] = Subject(name, args)
                rows = measure_cell(subjects[name], device, precision, args)
                results["rows"].update({row_key(r): r for r in rows})
                write_json(path, results)
                shown += rows
                print(markdown(rows), file=sys.stderr)
        print(f"\n{device}: {path}\n")
        print(markdown(shown))


# -- DDP check ------------------------------------------------------------------------------------
def _ddp_model(state: dict[str, Any]) -> Any:
    from latprune.models import ResNetCifar

    model = ResNetCifar()
    model.load_state_dict(state)
    return model.train()


def _ddp_config(steps: int) -> Any:
    from latprune.train import TrainConfig

    return TrainConfig(epochs=1.0, batch_size=1, lr=LR, augment=False, seed=0)  # one pass over the given batches


def _ddp_rank(rank: int, world: int, port: int, state: dict[str, Any], batches: list[Any], out: str) -> None:
    """One rank: latprune's train() on its shard of every global batch (in DDP: the process group is
    joined); each rank writes its per-step losses."""
    import torch
    import torch.distributed as dist

    from latprune.train import train

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        shard = [(x.chunk(world)[rank], y.chunk(world)[rank]) for x, y in batches]
        losses = train(_ddp_model(state), shard, _ddp_config(len(batches)), desc=f"rank {rank}")
        Path(f"{out}.{rank}").write_text(json.dumps(losses))
    finally:
        dist.destroy_process_group()


def _one_rank(state: dict[str, Any], batches: list[Any], shards: int) -> list[float]:
    """The same steps in one process, with train()'s optimizer and schedule: the mean of the loss of
    each of ``shards`` parts of the batch."""
    import torch
    import torch.nn.functional as F

    from latprune.train import channels_last_is_safe

    config = _ddp_config(len(batches))
    model = _ddp_model(state)
    fmt = torch.channels_last if channels_last_is_safe(model) else torch.contiguous_format  # as train() does
    model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=len(batches), pct_start=0.15)
    losses = []
    for x, y in batches:
        loss = torch.stack([F.cross_entropy(model(xs.contiguous(memory_format=fmt)), ys)
                            for xs, ys in zip(x.chunk(shards), y.chunk(shards))]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses


def ddp_check(args: argparse.Namespace) -> None:
    import tempfile

    import torch
    import torch.multiprocessing as mp

    from latprune.models import ResNetCifar

    torch.manual_seed(0)
    state = ResNetCifar().state_dict()
    batch = args.batch or MODELS["resnet20"][1]
    if batch % DDP_WORLD:
        raise SystemExit(f"--ddp: --batch {batch} does not split over {DDP_WORLD} ranks")
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, 1, 28, 28, generator=gen), torch.randint(0, 10, (batch,), generator=gen))
               for _ in range(args.steps)]
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "losses.json")
        mp.spawn(_ddp_rank, args=(DDP_WORLD, port, state, batches, out), nprocs=DDP_WORLD, join=True)
        per_rank = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(DDP_WORLD)]
        ranks = [sum(step) / DDP_WORLD for step in zip(*per_rank)]  # the global batch's mean loss
    ddp_s = time.time() - start
    torch.set_num_threads(1)
    sharded = _one_rank(state, batches, DDP_WORLD)
    whole = _one_rank(state, batches, 1)
    rel = [abs(a - b) / abs(b) for a, b in zip(ranks, sharded)]
    agree = max(rel) <= DDP_RTOL
    result = {"benchmark": "train_throughput --ddp (latprune.train.train in DDP)", "command": " ".join(["python", *sys.argv]),
              "environment": environment("cpu"), "model": "ResNetCifar() (ResNet-20, 1x28x28, seed 0)",
              "world": DDP_WORLD, "backend": "gloo", "global_batch": batch, "steps": args.steps, "lr": LR,
              "loss_ddp": ranks, "loss_one_rank_sharded": sharded, "loss_one_rank_whole_batch": whole,
              "max_rel_diff": max(rel), "rtol": DDP_RTOL, "agree": agree,
              "max_rel_diff_whole_batch": max(abs(a - b) / abs(b) for a, b in zip(ranks, whole)),
              "ddp_seconds": round(ddp_s, 1), "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = args.out / f"train_throughput_ddp{f'_{args.tag}' if args.tag else ''}.json"
    write_json(path, result)
    print("| step | 2 ranks (DDP) | 1 rank, 2 halves | 1 rank, whole batch |\n|--:|--:|--:|--:|")
    for i, (a, b, c) in enumerate(zip(ranks, sharded, whole), 1):
        print(f"| {i} | {a:.6f} | {b:.6f} | {c:.6f} |")
    print(f"\n{'agree' if agree else 'DISAGREE'}: max relative difference {max(rel):.2e} (tolerance {DDP_RTOL:g}); "
          f"whole batch at once: {result['max_rel_diff_whole_batch']:.2e}; wrote {path}")
    if not agree:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--devices", default=None, help="cpu,cuda (default: cpu, and cuda where available)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="fp16 runs on CUDA only")
    parser.add_argument("--signals", default=",".join(SIGNALS), help="gate signals, one gate row each ('' : none)")
    parser.add_argument("--batch", type=int, default=None,
                        help=f"batch size (default per model: {', '.join(f'{m} {b}' for m, (_, b) in MODELS.items())})")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per mode and round (default 20; "
                                                                "--ddp: steps compared, default 5)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first in every run (default and "
                                                                 "minimum with the taylor signal: 6)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of interleaved runs of every mode")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--lut-backend", default="fake", choices=("fake", "ort-cpu"),
                        help="what measures the penalty's LUT (cached in benchmarks/luts/)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory of the result JSON")
    parser.add_argument("--tag", default=None, help="suffix of the result file, e.g. the machine's name")
    parser.add_argument("--force", action="store_true", help="measure rows already in the result file again")
    parser.add_argument("--ddp", action="store_true", help="the DDP check (2 gloo ranks vs 1) instead")
    args = parser.parse_args()
    if args.batch is not None and args.batch < 1:
        parser.error(f"--batch must be at least 1, got {args.batch}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.ddp:
        args.steps = 5 if args.steps is None else args.steps
        if args.steps < 1:
            parser.error(f"--steps must be at least 1, got {args.steps}")
        ddp_check(args)
        return

    import torch

    from latprune.pruner.gates import TaylorSignal

    args.models = [m for m in args.models.split(",") if m]
    args.precisions = [p for p in args.precisions.split(",") if p]
    args.signals = [s for s in args.signals.split(",") if s]
    cuda = torch.cuda.is_available()
    args.devices = [d for d in args.devices.split(",") if d] if args.devices else ["cpu", *(["cuda"] if cuda else [])]
    for option, given, known in (("--models", args.models, MODELS), ("--precisions", args.precisions, PRECISIONS),
                                 ("--signals", args.signals, SIGNALS), ("--devices", args.devices, ("cpu", "cuda"))):
        unknown = [v for v in given if v not in known]
        if unknown:
            parser.error(f"{option}: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    if "cuda" in args.devices and not cuda:
        parser.error("--devices cuda: torch.cuda.is_available() is False here")
    least = TaylorSignal.warmup + 1 if "taylor" in args.signals else 1
    args.warmup = least if args.warmup is None else args.warmup
    if args.warmup < least:
        parser.error(f"--warmup {args.warmup}: the taylor signal's steps are steady from step {least}")
    args.steps = 20 if args.steps is None else args.steps
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be at least 1")
    throughput(args)


if __name__ == "__main__":
    main()
