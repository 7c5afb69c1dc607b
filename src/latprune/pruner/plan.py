"""PruningPlan: which channels of which group to keep — JSON, versioned, replayable.

A plan names groups by their root module (e.g. ``"stem.0"``) and lists the
kept channel indices of the *base* model, so applying it to a fresh copy of
the base model reproduces the slimmed architecture exactly (Torch-Pruning
does the surgery). Weights live beside it in ``model.pt`` (a state_dict).

>>> plan = PruningPlan(model="default", input_shape=(1, 1, 28, 28),
...                    groups=(GroupPlan("stem.0", 32, tuple(range(16))),))
>>> PruningPlan.from_json(plan.to_json()) == plan
True
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn

from latprune._io import atomic_write_text
from latprune.errors import RunDirError
from latprune.graph.channels import apply_plan_
from latprune.graph.lowrank import CHANNEL, check_scheme, factorise_

PLAN_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)   # version 1: no removed_blocks; 1 and 2: no ranks; 1 to 3: no rank_scheme


@dataclass(frozen=True)
class GroupPlan:
    root: str                 # module whose output channels define the group
    size: int                 # channels in the base model
    keep: tuple[int, ...]     # kept channel indices (sorted, into the base model)

    @property
    def width(self) -> int:
        return len(self.keep)


@dataclass(frozen=True)
class PruningPlan:
    model: str                           # model spec of the base model
    input_shape: tuple[int, ...]
    groups: tuple[GroupPlan, ...]
    removed_blocks: tuple[str, ...] = ()  # residual blocks replaced by their shortcut
    ranks: dict[str, int] = field(default_factory=dict)  # layers factorised after slimming (graph.lowrank): rank
    rank_scheme: str = CHANNEL                              # how they factorise (graph.lowrank.SCHEMES)
    levels: int = 8                      # width grid the plan was chosen on: levels ...
    align: int = 1                       # ... and alignment (see graph.channels.Grid)
    grid_extra: dict[str, list[int]] = field(default_factory=dict)  # ... and widths `profile --refine` added, per root
    budget_ms: float | None = None
    predicted_ms: float | None = None
    signature: str = ""                  # ChannelGraph.signature() of the base model
    method: str = "halp"
    version: int = PLAN_VERSION
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "plan.json") -> PruningPlan:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RunDirError(f"{source} is not valid JSON ({exc}); the run directory is damaged, prune again") from None
        if not isinstance(raw, dict):
            raise RunDirError(f"{source} must hold a JSON object")
        version = raw.get("version")
        if version not in READABLE_VERSIONS:
            raise RunDirError(f"{source} has plan version {version}, this latprune reads versions "
                              f"{', '.join(map(str, READABLE_VERSIONS))}")
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise RunDirError(f"{source} has unknown keys {sorted(unknown)}; it was written by another tool or version")
        try:
            groups = tuple(GroupPlan(g["root"], int(g["size"]), tuple(int(i) for i in g["keep"]))
                           for g in raw["groups"])
            raw = {**raw, "groups": groups, "input_shape": tuple(raw["input_shape"]),
                   "removed_blocks": tuple(str(b) for b in raw.get("removed_blocks", ())),
                   "ranks": {str(name): int(r) for name, r in raw.get("ranks", {}).items()},
                   "rank_scheme": check_scheme(str(raw.get("rank_scheme", CHANNEL))), "version": PLAN_VERSION}
            return cls(**raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise RunDirError(f"{source} is missing or has malformed fields ({exc}); prune again") from None

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        p = Path(path)
        if not p.is_file():
            raise RunDirError(f"{p} is missing; a run directory needs plan.json "
                              "(from PruneResult.save or `latprune prune`)")
        return cls.from_json(p.read_text(encoding="utf-8"), str(p))

    def apply_(self, model: nn.Module) -> nn.Module:
        """Slim ``model`` (a fresh base model) in place to this plan's blocks and widths, then
        factorise the layers it gives a rank."""
        slim = apply_plan_(model, self.input_shape, self.removed_blocks, {g.root: g.keep for g in self.groups},
                           {g.root: g.size for g in self.groups})
        return factorise_(slim, self.ranks, self.rank_scheme)
