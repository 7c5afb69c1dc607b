"""Gator's gates trained in your own DistributedDataParallel loop, under torchrun.

``own_loop.py``'s CNN and task, on several processes: every rank trains on its
shard of the data with the model in DDP, and steps the gates with
``gates.optimizer()``, which averages their gradients over the ranks (DDP
averages the model's). Rank 0 profiles the LUT, measures, decides the widths
and saves; every rank gets the same pruned model.

    torchrun --nproc_per_node=2 examples/own_loop_torchrun.py                # 2 CPU processes (gloo)
    torchrun --nproc_per_node=8 examples/own_loop_torchrun.py --device cuda  # a GPU each (NCCL)
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from own_loop import SmallNet, accuracy, arguments, synthetic_data
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import latprune


def shard(dataset: Dataset, epoch: int = 0) -> DataLoader:
    """This rank's shard of ``dataset``, reshuffled each epoch."""
    sampler = DistributedSampler(dataset, seed=0)
    sampler.set_epoch(epoch)
    return DataLoader(dataset, batch_size=32, sampler=sampler)


def fit(model: nn.Module, dataset: Dataset, epochs: int, device: torch.device) -> None:
    """Plain DDP training, without gates: before pruning, and to fine-tune the pruned model."""
    net = ddp(model.to(device).train(), device)
    opt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
    for epoch in range(epochs):
        for xb, yb in shard(dataset, epoch):
            opt.zero_grad()
            F.cross_entropy(net(xb.to(device)), yb.to(device)).backward()
            opt.step()
    model.cpu().eval()


def ddp(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def main() -> None:
    parser = arguments(__doc__)  # own_loop.py's options: the ranks share out its samples, rank 0 writes
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where your loop trains")
    args = parser.parse_args()
    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("cpu:gloo,cuda:nccl" if args.device == "cuda" else "gloo")  # the gates' gradients: CPU
    main_rank = dist.get_rank() == 0
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    torch.manual_seed(0)  # the same initial weights on every rank
    train, val = synthetic_data(args.samples, seed=0), DataLoader(synthetic_data(256, seed=1), batch_size=64)
    model = SmallNet()
    fit(model, train, args.pretrain, device)

    x = torch.randn(1, 1, 28, 28)
    if main_rank:  # one process times the units and writes the file
        latprune.profile(model, x, backend=args.backend, threads=1, path=args.lut, levels=2, passes=1,
                         calibration_samples=7, progress=False)
    dist.barrier()
    gates = latprune.attach_gates(model, args.lut, args.budget, example_input=x, progress=False)  # every rank
    if main_rank:
        print(f"base {gates.base_ms:.4f} ms, budget {gates.budget_ms:.4f} ms, {dist.get_world_size()} ranks")

    net = ddp(model.to(device), device)
    opt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
    gate_opt = gates.optimizer(lr=0.2)  # its step averages the gates' gradients over the ranks
    for epoch in range(args.epochs):
        net.train()  # in training mode each forward pass draws the step's gate samples
        for xb, yb in shard(train, epoch):
            task = F.cross_entropy(net(xb.to(device)), yb.to(device))
            loss = task + gates.loss()
            opt.zero_grad()
            gate_opt.zero_grad()
            loss.backward()
            opt.step()
            gate_opt.step()
        if main_rank:
            print(f"epoch {epoch + 1}: task loss {task.item():.3f}, expected latency {gates.expected_ms:.4f} ms")

    result = gates.finish(shard(train), finetune=lambda m: fit(m, train, args.finetune, device),
                          evaluate=lambda m: accuracy(m, val, torch.device("cpu")))  # rank 0 evaluates
    digests = result.metrics["distributed"]["weights_sha256"]  # each rank's pruned weights
    if main_rank:
        m = result.metrics
        print(f"pruned: measured {m['measured_ms']:.4f} ms against a budget of {m['budget_ms']:.4f} ms "
              f"({'met' if m['budget_met'] else 'missed'}), accuracy {m['accuracy']:.3f}, "
              f"the ranks' pruned weights {'alike' if len(set(digests)) == 1 else 'DIFFERENT'}")
        if args.out:
            print(f"saved to {result.save(args.out, overwrite=True)}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
