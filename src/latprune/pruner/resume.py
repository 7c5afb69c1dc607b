"""A prune's checkpoints: one directory that a prune started again with the same arguments resumes from.

Each long stage writes what it produced once it is done, and the training
stages also write their state as they go (:class:`latprune.train.Checkpoint`),
every file atomically::

    arguments.json           what the prune was started with (a prune with others is refused)
    base.json                the base model's measured latency
    base-score.json          its accuracy
    attemptN-gates.pt        gate training, as it goes (and recovery: attemptN-recoverK.pt)
    attemptN-decision.json   the method's decision: kept channels, the candidates measured ...
    attemptN-decision.pt     ... and the slimmed model's weights
    attemptN-finetune.pt     the built-in fine-tuning, as it goes
    attemptN-finetuned.pt    the fine-tuned weights and their accuracy
    attemptN-export.json     the export measured (and attemptN-export.onnx, the export itself,
                             with attemptN-export.onnx.data for a model past 2 GiB)

A stage found done is not run again: the prune resumes with the first stage
that is not, and ends with the model an uninterrupted prune with the same seed
has (the latency measurements taken after the resume are new ones). Tensors
load with ``weights_only=True``; records are JSON.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from latprune import parallel
from latprune._io import atomic_write_json, atomic_write_with
from latprune.errors import SpecError
from latprune.runtime.large_onnx import read_onnx, write_onnx
from latprune.train import Checkpoint


def _plain(value: Any) -> Any:
    """JSON for what records hold besides JSON types: numpy and torch scalars, tuples."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


class Journal:
    """The checkpoint directory of one prune."""

    def __init__(self, root: Path, every_s: float) -> None:
        self.root = root
        self.every_s = every_s
        self.taken: list[str] = []  # the stages taken from it, in order

    @classmethod
    def open(cls, root: str | Path, arguments: dict[str, Any], every_s: float = 300.0) -> Journal:
        """The checkpoints in ``root`` (created) of the prune started with ``arguments``;
        refuses a directory that holds another prune's."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise SpecError(f"checkpoint directory {root} is a file; name a directory")
        text = json.dumps(arguments, sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode()).hexdigest()
        record = root / "arguments.json"
        if record.is_file():
            stored = json.loads(record.read_text(encoding="utf-8"))
            if stored.get("digest") != digest:
                ours, theirs = json.loads(text), stored.get("arguments", {})  # both as JSON has them
                differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
                raise SpecError(f"{root} holds the checkpoints of another prune (it differs in: "
                                f"{', '.join(differ) or 'the arguments'}); resume it with the arguments it was "
                                "started with, or delete the directory to start afresh", option="checkpoints")
            return cls(root, every_s)
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(record, {"digest": digest, "arguments": json.loads(text)})
        return cls(root, every_s)

    def checkpoint(self, name: str) -> Checkpoint:
        """Where the training stage ``name`` saves its state as it goes."""
        return Checkpoint(self.root / f"{name}.pt", self.every_s)

    def record(self, name: str) -> Any | None:
        path = self.root / f"{name}.json"
        if not path.is_file():
            return None
        self.taken.append(name)
        return json.loads(path.read_text(encoding="utf-8"))

    def put_record(self, name: str, value: Any) -> None:
        if not parallel.world().main:  # under torchrun rank 0 writes, every rank reads
            return
        atomic_write_json(self.root / f"{name}.json", json.loads(json.dumps(value, default=_plain)))

    def tensors(self, name: str) -> dict[str, Any] | None:
        path = self.root / f"{name}.pt"
        if not path.is_file():
            return None
        if name not in self.taken:
            self.taken.append(name)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise SpecError(f"{path} is not a checkpoint latprune can read ({type(exc).__name__}); delete "
                            f"{self.root} to start the prune afresh") from None

    def put_tensors(self, name: str, value: dict[str, Any]) -> None:
        if not parallel.world().main:  # under torchrun rank 0 writes, every rank reads
            return
        atomic_write_with(self.root / f"{name}.pt", lambda tmp: torch.save(value, tmp))

    def onnx(self, name: str) -> bytes | None:
        """The ONNX model stored as ``name`` (with its external data, :mod:`latprune.runtime.large_onnx`)."""
        path = self.root / name
        return read_onnx(path) if path.is_file() else None

    def put_onnx(self, name: str, data: bytes) -> None:
        if parallel.world().main:
            write_onnx(self.root / name, data)


def weights_digest(model: torch.nn.Module) -> str:
    """A digest of ``model``'s state (its weights and buffers): a prune of other weights is another prune."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()
