"""Per-method configs: small frozen dataclasses that validate themselves.

``latprune.prune(..., method=GatorConfig(gate_epochs=1.0))`` or ``method="gator"``
(the defaults). Each field's ``metadata["help"]`` is what ``latprune prune --help``
prints for its flag (``gate_epochs`` -> ``--gate-epochs``): the CLI builds its
options from these classes, so the two cannot drift.

>>> GatorConfig(gate_epochs=1.0).name
'gator'
>>> method_config("halp").steps
3
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from latprune.errors import SpecError

LOWRANK_SCHEMES = ("channel", "spatial")  # graph.lowrank.SCHEMES, spelled here: configs load without torch
IMPORTANCES = ("taylor", "taylor2", "l1")          # channel importance (see pruner.importance)
HALP_IMPORTANCES = IMPORTANCES + ("measured",)     # halp alone: knapsack values from measured losses
GATE_INITS = ("open", "plan")                      # gator: how the gates start (see methods.gator)
GATE_PENALTIES = ("hinge", "hold")                 # gator: the latency term (see gates.GateConfig)
GATE_SIGNALS = ("taylor", "straight-through")      # gator: the gates' task signal (see gates.SIGNALS)
SEARCH_WEIGHTS = ("base", "pruningnet")            # graph-rl, evolution: the slimmed model's weights


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


def _check_choice(config: object, name: str, known: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in known:
        raise SpecError(f"{type(config).__name__}: unknown {name} {value!r}; known: {', '.join(known)}")


def _check_positive(config: object, *names: str, zero_ok: bool = False) -> None:
    for name in names:
        value = getattr(config, name)
        if value < 0 or (value == 0 and not zero_ok):
            raise SpecError(f"{type(config).__name__}: {name} must be {'0 or more' if zero_ok else 'positive'}, "
                            f"not {value!r}")


@dataclass(frozen=True)
class MethodConfig:
    """What every method shares: the closed loop that checks candidates on the device."""

    name: ClassVar[str] = ""
    latency_blind: ClassVar[bool] = False   # never looks at latency: a missed budget is its result

    max_iters: int = _opt(6, "closed-loop iterations (solve, slim, measure) before giving up")
    margin: float = _opt(0.03, "accept a candidate at <= budget x (1 - margin): room for timing noise")
    slack: float = _opt(0.05, "re-solve wider while an accepted candidate leaves more than this unused")

    def __post_init__(self) -> None:
        _check_positive(self, "max_iters")
        if not 0 <= self.margin < 0.5 or not 0 <= self.slack < 0.5:
            raise SpecError(f"{type(self).__name__}: margin and slack are fractions in [0, 0.5), "
                            f"not {self.margin!r} and {self.slack!r}")

    @property
    def needs_data(self) -> bool:
        """Whether the method trains or scores on the training data."""
        return False


@dataclass(frozen=True)
class ImportanceConfig(MethodConfig):
    """Methods that rank channels by importance and train briefly on the data."""

    importances: ClassVar[tuple[str, ...]] = IMPORTANCES  # the importances this method can rank by

    importance: str = _opt("taylor", "channel importance: taylor, taylor2 or l1 (no data needed)",
                           IMPORTANCES)
    importance_batches: int = _opt(16, "training batches the importance is averaged over")
    lr: float = _opt(0.01, "learning rate of the method's own training (gates, recovery)")
    blocks: bool = _opt(True, "allow removing whole blocks (residual blocks, ShuffleNetV2 branches)")
    lowrank: bool = _opt(False, "also offer every convolution and linear layer low ranks (a factorised pair, "
                         "Trained Rank Pruning's scheme), taken where the LUT prices the pair below the widths; "
                         "profile with --lowrank first")
    lowrank_scheme: str = _opt("channel", "how a layer factorises: channel (k×k to r, then 1×1) or spatial (k×1 "
                               "to r, then 1×k; convolutions with k×k kernels only)", LOWRANK_SCHEMES)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice(self, "importance", self.importances)
        _check_choice(self, "lowrank_scheme", LOWRANK_SCHEMES)
        _check_positive(self, "importance_batches", "lr")

    @property
    def needs_data(self) -> bool:
        return self.importance != "l1"

    @property
    def uses_ranks(self) -> bool:
        """Whether the decision offers layers ranks beside widths (:mod:`latprune.graph.lowrank`)."""
        return self.lowrank


@dataclass(frozen=True)
class GatorConfig(ImportanceConfig):
    """Gator: gates trained with the LUT's latency loss, then Taylor scores on the
    trained gates and the knapsack over widths and blocks (the default method)."""

    name: ClassVar[str] = "gator"

    gate_epochs: float = _opt(0.5, "epochs of gate training (the model trains with the gates)")
    gate_init: str = _opt("open", "open: every gate starts open; plan: the channels a knapsack on the base's "
                          "Taylor scores drops start undecided", GATE_INITS)
    gate_penalty: str = _opt("hinge", "hinge: lambda x max(0, E - budget) / budget; hold: lambda x |E - budget| "
                             "/ budget, which holds the expected latency at the budget", GATE_PENALTIES)
    gate_signal: str = _opt("taylor", "what holds a gate open against the latency term: its share of the Taylor "
                            "importance (taylor), or the task gradient through the gates (straight-through)",
                            GATE_SIGNALS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.importance == "l1":
            raise SpecError("GatorConfig: gator trains gates on data and scores them by Taylor importance; "
                            "importance 'l1' is for halp, taylor and the baselines")
        _check_choice(self, "gate_init", GATE_INITS)
        _check_choice(self, "gate_penalty", GATE_PENALTIES)
        _check_choice(self, "gate_signal", GATE_SIGNALS)
        _check_positive(self, "gate_epochs")

    @property
    def needs_data(self) -> bool:
        return True


@dataclass(frozen=True)
class HalpConfig(ImportanceConfig):
    """HALP: rounds of importance + latency knapsack at budgets shrinking to the
    target, the masked model recovering briefly in between; no gate training."""

    name: ClassVar[str] = "halp"
    importances: ClassVar[tuple[str, ...]] = HALP_IMPORTANCES

    importance: str = _opt("taylor", "channel importance: taylor, taylor2, l1 (no data needed) or measured "
                           "(knapsack values from losses measured per width option)", HALP_IMPORTANCES)
    steps: int = _opt(3, "knapsack rounds with budgets shrinking to the target")
    recover_epochs: float = _opt(0.1, "training of the masked model between rounds, in total (epochs)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive(self, "steps")
        _check_positive(self, "recover_epochs", zero_ok=True)
        if self.lowrank and self.importance == "measured":
            raise SpecError("HalpConfig: importance 'measured' measures width options only; with lowrank use "
                            "taylor, taylor2 or l1")


@dataclass(frozen=True)
class TaylorConfig(ImportanceConfig):
    """Iterative removal of the lowest Taylor score per millisecond saved."""

    name: ClassVar[str] = "taylor"

    recover_epochs: float = _opt(0.1, "training of the masked model between rounds, in total (epochs)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive(self, "recover_epochs", zero_ok=True)


@dataclass(frozen=True)
class TrpConfig(ImportanceConfig):
    """Trained Rank Pruning: train towards low rank (periodic truncated-SVD projection and a
    nuclear-norm term), then the knapsack chooses each layer's rank on the LUT; widths stay,
    unless ``trp_widths``."""

    name: ClassVar[str] = "trp"

    trp_epochs: float = _opt(1.0, "epochs of rank training (projection and nuclear-norm term) before the ranks "
                                  "are chosen")
    trp_period: int = _opt(20, "steps between truncated-SVD projections of every layer (0: none)")
    nuclear_weight: float = _opt(3e-4, "weight of the nuclear-norm term (sum over layers of ||W||*)")
    trp_energy: float = _opt(0.98, "each projection keeps this share of a layer's squared singular values")
    trp_widths: bool = _opt(False, "also narrow channel groups and drop blocks in the same knapsack as the ranks")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.importance not in ("taylor", "l1"):
            raise SpecError(f"TrpConfig: importance {self.importance!r} does not score singular values; "
                            "use taylor, or l1 (the dropped share of each layer's energy)")
        _check_positive(self, "trp_epochs", "nuclear_weight", "trp_period", zero_ok=True)
        if not 0 < self.trp_energy <= 1:
            raise SpecError(f"TrpConfig: trp_energy is a share in (0, 1], not {self.trp_energy!r}")

    @property
    def uses_ranks(self) -> bool:
        return True

    @property
    def needs_data(self) -> bool:
        return self.trp_epochs > 0 or self.importance != "l1"


@dataclass(frozen=True)
class SearchConfig(ImportanceConfig):
    """What ``graph-rl`` and ``evolution`` share: a PruningNet trained with the network on random
    width vectors, then a search scoring each candidate by the accuracy of its generated weights
    (:mod:`latprune.pruner.search`). The importance orders the channels a width keeps."""

    search_epochs: float = _opt(1.0, "epochs of PruningNet training (the network's shared weights and the "
                                     "PruningNet together, a random width vector per step)")
    search_candidates: int = _opt(64, "candidates the search scores (agent episodes; distinct evolved vectors)")
    score_batches: int = _opt(4, "batches of training samples, held out of the PruningNet's training, "
                                   "that candidates are scored on")
    calib_batches: int = _opt(4, "training batches a candidate's BatchNorm statistics are recalibrated on")
    gcn_layers: int = _opt(2, "graph convolution layers of the PruningNet's GCN")
    weights: str = _opt("base", "what the slimmed model starts fine-tuning from: the base model's weights (base), "
                        "or the chosen candidate's generated weights, the shared weights with the PruningNet's "
                        "modulations folded in and BatchNorm statistics recalibrated (pruningnet)", SEARCH_WEIGHTS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lowrank:
            raise SpecError(f"{type(self).__name__}: the search chooses widths and blocks; lowrank is for gator, "
                            "halp and taylor")
        _check_positive(self, "search_epochs", "search_candidates", "score_batches", "calib_batches",
                        "gcn_layers")
        _check_choice(self, "weights", SEARCH_WEIGHTS)

    @property
    def needs_data(self) -> bool:
        return True


@dataclass(frozen=True)
class GraphRlConfig(SearchConfig):
    """Graph PruningNet + RL: a REINFORCE agent over per-group widths, its state the trained GCN's
    node embeddings and the predicted latency spent so far, its reward the candidate's accuracy."""

    name: ClassVar[str] = "graph-rl"

    agent_lr: float = _opt(0.01, "learning rate (Adam) of the agent's policy")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive(self, "agent_lr")


@dataclass(frozen=True)
class EvolutionConfig(SearchConfig):
    """Evolutionary search over the same PruningNet: the baseline ``graph-rl`` must beat."""

    name: ClassVar[str] = "evolution"

    population: int = _opt(16, "evolution: candidates per generation")
    mutation: float = _opt(0.1, "evolution: probability that a child's group takes a random width")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive(self, "population")
        if not 0 <= self.mutation <= 1:
            raise SpecError(f"EvolutionConfig: mutation is a probability in [0, 1], not {self.mutation!r}")


@dataclass(frozen=True)
class UniformL1Config(MethodConfig):
    """Baseline: one keep ratio for every group (L1 magnitude), bisected on the measured latency."""

    name: ClassVar[str] = "uniform-l1"


@dataclass(frozen=True)
class FlopsConfig(MethodConfig):
    """Baseline: global L1 magnitude pruning to MACs = budget ratio x base MACs; never looks at latency."""

    name: ClassVar[str] = "flops"
    latency_blind: ClassVar[bool] = True


CONFIGS: dict[str, type[MethodConfig]] = {}


def register(config: type[MethodConfig]) -> type[MethodConfig]:
    """Add a method's config class under its ``name``; a second class with a taken name is an error.
    A new method registers with :func:`latprune.pruner.methods.register_method`, which calls this."""
    if not config.name:
        raise ValueError(f"{config.__name__} has no name")
    if config.name in CONFIGS and CONFIGS[config.name] is not config:
        raise ValueError(f"method name {config.name!r} is taken by {CONFIGS[config.name].__name__}")
    CONFIGS[config.name] = config
    return config


for _config in (GatorConfig, HalpConfig, TaylorConfig, TrpConfig, GraphRlConfig, EvolutionConfig, UniformL1Config,
                FlopsConfig):
    register(_config)


def method_config(method: str | MethodConfig, **options: Any) -> MethodConfig:
    """``method`` as a config: a config passes through (``options`` then must be empty); a
    name gives its class built from ``options``, and unknown names and keys are errors."""
    if isinstance(method, MethodConfig):
        if options:
            raise SpecError(f"options {sorted(options)} given beside a {type(method).__name__}; set them on it")
        return method
    if not isinstance(method, str) or method not in CONFIGS:
        raise SpecError(f"unknown method {method!r}; known: {', '.join(CONFIGS)}")
    cls = CONFIGS[method]
    unknown = sorted(set(options) - set(option_fields(cls)))
    if unknown:
        raise SpecError(f"method {method!r} has no option {', '.join(unknown)}; its options: "
                        f"{', '.join(option_fields(cls)) or 'none'}")
    return cls(**options)


def option_fields(cls: type[MethodConfig]) -> dict[str, Any]:
    """Field name -> dataclass field of every option ``cls`` takes."""
    return {f.name: f for f in fields(cls)}


def field_default(f: Any) -> Any:
    return f.default if f.default is not MISSING else None
