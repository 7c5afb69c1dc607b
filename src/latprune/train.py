"""Training and evaluation loops shared by fine-tuning and the base-weight script.

Kept deliberately plain: SGD with momentum and a one-cycle schedule, light
augmentation (random flips and shifts on the batch tensor), a progress bar
with the running loss and accuracy. Convolutions train in channels-last
memory format when every convolution is at least 8 channels wide (15%
faster per step for ResNet-20 on the 2-core AVX2 VM; the model is handed back
in the usual contiguous format): with torch 2.14.1 on that CPU, the backward
pass of a channels-last convolution with 2–7 input channels (a 1×1, stride-2
shortcut cut to 4 channels; an RGB input into a 1×1 stride-2 convolution)
corrupts the heap and aborts the process, so a narrower model trains in the
contiguous format. A long run can pass a ``Checkpoint``: the state is saved
every few minutes and at the end of every pass, and a run started again with
the same file resumes from the last state saved, on the same batches.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from latprune import parallel
from latprune._io import atomic_write_with
from latprune._progress import bar as progress_bar
from latprune.data import loader
from latprune.errors import LatpruneWarning, SpecError

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
TrainData = Union[Dataset, DataLoader, Batches]  # a dataset, or what yields (inputs, labels) batches


def as_batches(data: TrainData, batch_size: int, shuffle: bool, seed: int = 0) -> Any:
    """``data`` itself when it yields batches (a ``DataLoader``, the user's own; its shuffling
    generator, where it has one, set to ``seed``), else a loader over the dataset."""
    if isinstance(data, Dataset):
        return loader(data, batch_size, shuffle=shuffle, seed=seed)
    return reseeded(data, seed)


def reseeded(data: Any, seed: int) -> Any:
    """``data`` with its shuffling generator (a ``DataLoader``'s, where it has one) set to ``seed``,
    so that each stage of a prune draws the same batches in every run, whatever the stages
    before it drew."""
    generator = getattr(data, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(seed)
    sampler = getattr(data, "sampler", None)
    if isinstance(sampler, DistributedSampler):  # its order: seed + epoch
        sampler.seed = seed
        sampler.set_epoch(0)
    return data


PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Compute:
    """Where training and evaluation run: a device and the autocast precision.

    >>> Compute.resolve("cpu", "bf16")
    Compute(device='cpu', precision='bf16')
    """

    device: str = "cpu"        # a torch device: cpu, cuda, cuda:N
    precision: str = "fp32"    # fp32 | bf16 | fp16 (autocast; fp16 with a gradient scaler, on CUDA only)

    @classmethod
    def resolve(cls, device: str = "auto", precision: str = "fp32") -> Compute:
        """``device="auto"``: CUDA when it is available, else the CPU. Refuses what cannot run here."""
        if precision not in PRECISIONS:
            raise SpecError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            kind = torch.device(device)
        except (RuntimeError, TypeError):
            raise SpecError(f"device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
        if kind.type not in ("cpu", "cuda"):
            raise SpecError(f"device {device!r}: latprune trains on cpu or cuda")
        if kind.type == "cuda":
            if not torch.cuda.is_available():
                raise SpecError(f"device {device!r} asked for, but torch.cuda.is_available() is False here; "
                                "use device 'cpu' (or 'auto')")
            if kind.index is not None and kind.index >= torch.cuda.device_count():
                raise SpecError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        if precision == "fp16" and kind.type != "cuda":
            raise SpecError("precision fp16 trains with a gradient scaler on CUDA only; use bf16 on the CPU")
        return cls(str(kind), precision)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def autocast(self) -> Any:
        """The autocast context of this precision (a no-op for fp32)."""
        dtype = PRECISIONS[self.precision]
        return torch.autocast(self.torch_device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def scaler(self) -> Any:
        """A gradient scaler, active for fp16 alone."""
        return torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 1.0          # fractional epochs allowed: 0.25 = a quarter of the train set
    batch_size: int = 128
    lr: float = 0.05             # peak learning rate (cosine to zero)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True         # random horizontal flip + shift of up to 2 px
    distill_alpha: float = 0.0   # weight of KL to the teacher's logits (0: no distillation)
    temperature: float = 4.0     # distillation temperature
    seed: int = 0
    compute: Compute = Compute()  # device and precision


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if torch.rand((), generator=gen) < 0.5:
        x = x.flip(-1)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    if dx or dy:
        x = torch.roll(F.pad(x, (2, 2, 2, 2)), shifts=(dy, dx), dims=(-2, -1))[..., 2:-2, 2:-2]
    return x


# How the embedded ResNet-20 was trained (scripts/train_default.py), and the base model that
# benchmarks/accuracy_vs_latency.py trains with --base train.
EMBEDDED_RECIPE = TrainConfig(epochs=3.0, lr=0.1, batch_size=128, seed=0)


class Penalty(Protocol):
    """An extra loss trained with the model (e.g. the gates' latency loss):
    its own optimizer, a call before every forward, and the loss term with
    progress-bar fields."""

    def optimizer(self) -> torch.optim.Optimizer | None: ...  # None: it trains nothing of its own

    def before_forward(self) -> None: ...

    def loss(self) -> tuple[torch.Tensor, dict[str, str]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def synced(self) -> list[torch.Tensor]: ...  # tensors whose gradients every rank must average


@dataclass(frozen=True)
class Checkpoint:
    """Where training saves its state, and how often: every ``every_s`` seconds of training
    (0: after every step), at the end of every pass over the data, and at the end. A run
    started again with the same file resumes where the file left it, on the same batches."""

    path: Path
    every_s: float = 300.0


@dataclass
class _Progress:
    """Where a training run is: its step, running counts, and the pass it is in (the data
    order's generator state when the pass began, and the step it began at)."""

    step: int = 0
    correct: int = 0
    seen: int = 0
    losses: list[float] = field(default_factory=list)
    pass_step: int = 0
    pass_gen: torch.Tensor | None = None
    passes: int = 0  # passes begun: a DistributedSampler's epoch


class _Trainer:
    """The state :func:`train` saves and restores: the model, its optimizer and schedule, the
    penalty's state and optimizer, and every random number generator a step draws from."""

    def __init__(self, model: nn.Module, config: TrainConfig, steps: int, penalty: Penalty | None) -> None:
        self.model, self.config, self.steps, self.penalty = model, config, steps, penalty
        self.net = parallel.wrapped(model, config.compute.torch_device)  # what the steps run: DDP under torchrun
        self.opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                   weight_decay=config.weight_decay, nesterov=True)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=config.lr, total_steps=steps,
                                                         pct_start=0.15)
        self.extra_opt = penalty.optimizer() if penalty is not None else None
        self.gen = torch.Generator().manual_seed(config.seed)  # the augmentation's draws
        self.rng: tuple[torch.Tensor, torch.Tensor | None] = (torch.get_rng_state(), None)

    def state(self, progress: _Progress) -> dict[str, Any]:
        state = {"config": repr(self.config), "steps": self.steps, "model": self.model.state_dict(),
                 "opt": self.opt.state_dict(), "sched": self.sched.state_dict(), "gen": self.gen.get_state(),
                 "rng": torch.get_rng_state(), **asdict(progress)}
        if self.config.compute.torch_device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.config.compute.torch_device)
        if self.penalty is not None:
            state["penalty"] = self.penalty.state_dict()
        if self.extra_opt is not None:
            state["extra_opt"] = self.extra_opt.state_dict()
        return state

    def save(self, path: Path, progress: _Progress) -> None:
        """The state, written atomically (by rank 0 alone under torchrun: every rank holds it)."""
        if parallel.world().main:
            atomic_write_with(path, lambda tmp: torch.save(self.state(progress), tmp))

    def synchronise(self, desc: str) -> None:
        """Under torchrun: rank 0's weights, BatchNorm statistics and gates on every rank (the
        gradients were averaged, but each rank's statistics are of its own batches)."""
        gates = [p for group in self.extra_opt.param_groups for p in group["params"]] if self.extra_opt else []
        parallel.synchronise(desc, self.model, gates)

    def resume_rng(self) -> None:
        """The global generators as they were saved: set again once the batches the interrupted run
        had trained on are drawn again (their loading may draw from them: random crops)."""
        cpu, cuda = self.rng
        torch.set_rng_state(cpu)
        if cuda is not None and self.config.compute.torch_device.type == "cuda":
            torch.cuda.set_rng_state(cuda, self.config.compute.torch_device)

    def restore(self, path: Path) -> _Progress:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and containers
        except Exception as exc:
            raise ValueError(f"{path} is not a training checkpoint latprune can read ({type(exc).__name__}); "
                             "delete it to start again") from None
        if state.get("steps") != self.steps or state.get("config") != repr(self.config) or \
                ("penalty" in state) != (self.penalty is not None):
            raise ValueError(f"{path} was saved by another training run ({state.get('config')}, "
                             f"{state.get('steps')} steps); delete it to start again")
        self.model.load_state_dict(state["model"])  # copied into the parameters: their format stays
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.gen.set_state(state["gen"])
        self.rng = state["rng"], state.get("cuda_rng")
        self.resume_rng()
        if self.penalty is not None:
            self.penalty.load_state_dict(state["penalty"])
        if self.extra_opt is not None:
            self.extra_opt.load_state_dict(state["extra_opt"])
        return _Progress(**{f.name: state[f.name] for f in fields(_Progress)})


def train(
    model: nn.Module,
    dataset: TrainData,
    config: TrainConfig,
    teacher: nn.Module | None = None,
    desc: str = "train",
    penalty: Penalty | None = None,
    checkpoint: Checkpoint | Path | None = None,
) -> list[float]:
    """Train ``model`` in place on ``dataset`` (a dataset, or a loader of (inputs, labels)
    batches used as it is) on ``config.compute``'s device and precision; returns the
    per-step losses. The model (and ``teacher``) come back on the CPU, in eval mode.

    ``checkpoint``: a :class:`Checkpoint` (or its file) to save the training state to,
    written atomically, and to resume from when it exists: a run killed at any point
    resumes from the last state saved, mid-pass included (the pass's batches are drawn
    again up to that step, and skipped), and ends with the weights an uninterrupted run
    has. The penalty's state (the gates, their optimizer, λ) is saved with the model's.
    """
    torch.manual_seed(config.seed)
    data = as_batches(dataset, config.batch_size, shuffle=True, seed=config.seed)
    try:
        steps = max(1, math.ceil(config.epochs * len(data)))
    except TypeError:
        raise ValueError("training data must have a length (a Dataset or a DataLoader)") from None
    saving = Checkpoint(Path(checkpoint)) if isinstance(checkpoint, (str, Path)) else checkpoint
    if parallel.world().distributed and not isinstance(getattr(data, "sampler", None), DistributedSampler):
        warnings.warn("under torchrun every rank trains on the same batches of this loader: give it a "
                      "DistributedSampler, so that each rank trains on its own share", LatpruneWarning, stacklevel=2)
    data_gen = getattr(data, "generator", None)  # replays the data order on resume, where the loader has one
    data_gen = data_gen if isinstance(data_gen, torch.Generator) else None
    fmt = torch.channels_last if channels_last_is_safe(model) else torch.contiguous_format
    device = config.compute.torch_device
    model.to(device=device, memory_format=fmt)  # before the optimizers: they hold the parameters as moved
    if teacher is not None:
        teacher.to(device).eval()
    trainer = _Trainer(model, config, steps, penalty)
    resumed = saving is not None and saving.path.is_file()
    progress = trainer.restore(saving.path) if resumed else _Progress()
    model.train()
    bar = progress_bar(total=steps, initial=progress.step, desc=desc, unit="step", leave=False,
                       enabled=parallel.world().main)  # under torchrun rank 0 shows it
    scaler = config.compute.scaler()
    _passes(trainer, data, data_gen, progress, resumed, saving,
            lambda x, y: _step(trainer, teacher, x, y, fmt, scaler, progress, bar))
    if saving is not None:  # finished: a run started again returns at once
        trainer.save(saving.path, progress)
    bar.close()
    model.to(memory_format=torch.contiguous_format)
    trainer.synchronise(desc)
    model.to("cpu")
    if teacher is not None:
        teacher.to("cpu")
    model.eval()
    return progress.losses


def _passes(trainer: _Trainer, data: Any, data_gen: torch.Generator | None, progress: _Progress, resumed: bool,
            saving: Checkpoint | None, step: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
    """Passes over ``data``, ``step(x, y)`` on each batch, until ``trainer.steps`` steps, the state saved as
    ``saving`` asks; a ``resumed`` run first draws again, and skips, the batches its interrupted pass had
    trained on."""
    last_save = time.monotonic()
    while progress.step < trainer.steps:
        if resumed and progress.pass_gen is not None and data_gen is not None:
            data_gen.set_state(progress.pass_gen)  # the interrupted pass, in the same order
        skip = progress.step - progress.pass_step if resumed else 0  # 0: resumed where a pass ended
        if skip == 0:
            progress.passes += 1  # a new pass, not the interrupted one
        resumed = False
        progress.pass_step = progress.step
        progress.pass_gen = data_gen.get_state() if data_gen is not None else None
        if hasattr(getattr(data, "sampler", None), "set_epoch"):
            data.sampler.set_epoch(progress.passes - 1)  # a DistributedSampler: another order every pass
        for x, y in data:
            if skip > 0:  # batches the interrupted run had already trained on
                skip -= 1
                if skip == 0:
                    trainer.resume_rng()
                continue
            if progress.step >= trainer.steps:
                break
            step(x, y)
            if saving is not None and time.monotonic() - last_save >= saving.every_s and progress.step < trainer.steps:
                trainer.save(saving.path, progress)
                last_save = time.monotonic()
        else:  # a full pass over the data
            if saving is not None and progress.step < trainer.steps:
                trainer.save(saving.path, replace(progress, pass_step=progress.step, pass_gen=data_gen.get_state()
                                                  if data_gen is not None else None))
                last_save = time.monotonic()


def _step(trainer: _Trainer, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
          fmt: torch.memory_format, scaler: Any, progress: _Progress, bar: Any) -> None:
    """One training step on the batch ``(x, y)``."""
    config, penalty, opt, extra_opt = trainer.config, trainer.penalty, trainer.opt, trainer.extra_opt
    device = config.compute.torch_device
    if config.augment:
        x = _augment(x, trainer.gen)
    x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
    y = y.to(device, non_blocking=True)
    if penalty is not None:
        penalty.before_forward()
    logits, loss = _task_loss(trainer.net, teacher, x, y, config)
    fields_: dict[str, str] = {}
    if penalty is not None:
        term, fields_ = penalty.loss()  # on the CPU, where the gates and the LUT tables live
        loss = loss + term.to(loss.device)
    opt.zero_grad(set_to_none=True)
    if extra_opt is not None:
        extra_opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if penalty is not None:
        parallel.average_gradients(penalty.synced())  # not the DDP model's: averaged here
    scaler.step(opt)
    if extra_opt is not None:
        scaler.step(extra_opt)
    scaler.update()
    trainer.sched.step()
    progress.losses.append(float(loss.detach()))
    progress.correct += int((logits.argmax(1) == y).sum())
    progress.seen += len(y)
    progress.step += 1
    bar.set_postfix(loss=f"{progress.losses[-1]:.3f}", acc=f"{progress.correct / progress.seen:.3f}", **fields_,
                    refresh=False)
    bar.update(1)


def _task_loss(model: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
               config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the task loss (cross-entropy, and distillation from ``teacher``) under autocast; the
    loss in fp32."""
    with config.compute.autocast():
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        if teacher is not None and config.distill_alpha > 0:
            with torch.no_grad():
                t_logits = teacher(x).float()
            t = config.temperature
            kd = F.kl_div(F.log_softmax(logits.float() / t, 1), F.softmax(t_logits / t, 1), reduction="batchmean")
            loss = (1 - config.distill_alpha) * loss + config.distill_alpha * t * t * kd
    return logits, loss


def channels_last_is_safe(model: nn.Module) -> bool:
    """Whether ``model`` may train in channels-last format: every convolution has
    at least 8 output channels and at least 8 input channels, or exactly 1 (a
    grayscale stem; measured fine: 1→8…64, 1×1 to 7×7, stride 1 and 2). Two to
    seven input channels crashed, RGB's 3 included (3→8, 1×1, stride 2); see
    the module docstring."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return bool(convs) and all(c.out_channels >= 8 and (c.in_channels >= 8 or c.in_channels == 1) for c in convs)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: TrainData, batch_size: int = 128, compute: Compute = Compute()) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` (a dataset or a loader of batches; 0..1), on
    ``compute``'s device and precision; the model goes back where it was."""
    model.eval()
    home = next(model.parameters(), torch.empty(0)).device
    device = compute.torch_device
    model.to(device)
    correct = total = 0
    try:
        for x, y in as_batches(dataset, batch_size, shuffle=False):
            with compute.autocast():
                predicted = model(x.to(device, non_blocking=True)).argmax(1).cpu()
            correct += int((predicted == y).sum())
            total += len(y)
    finally:
        model.to(home)
    return correct / max(total, 1)
