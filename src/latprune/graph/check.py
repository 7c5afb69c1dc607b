"""The channel graph latprune profiles and prunes: each group checked against the model.

Torch-Pruning's groups describe what its tracer saw; the model's own code can contradict
them (a forward that reshapes by a width it stored when built, a layer scale viewed to a
fixed shape, a concatenation sliced at fixed offsets), and its tracer can misread a
structure without failing (a channel shuffle written with ``view`` and ``transpose``).
:func:`checked_graph` slims the model to every other channel of every group and compares
it with the model whose same channels are zeroed (:meth:`ChannelGraph.disagreement`; a
failure of either copy counts too). Where they disagree, it finds the groups that do by
halving the set that fails (a part whose halves hold alone but not together goes whole),
keeps those at full width, says why in :attr:`ChannelGraph.kept_full`, and prunes the
rest; it refuses the model only when no group can be pruned.

A network is checked once per process and input shape (forward passes of slimmed and masked
copies): later graphs of it, each prune attempt's, take the same groups.

>>> from latprune.models import ResNetCifar
>>> graph = checked_graph(ResNetCifar(), (1, 1, 28, 28))
>>> graph.kept_full
{}
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Sequence

from torch import nn

from latprune.graph.channels import ChannelGraph, structure_refusal

CONTRADICTED = "its channels cannot be slimmed"  # how kept_full names a group refused here
# per network class (a class redefined is another key), per structure and input shape: the refused roots and why
_CHECKED: weakref.WeakKeyDictionary[type, dict[str, dict[str, str]]] = weakref.WeakKeyDictionary()


def checked_graph(model: nn.Module, input_shape: tuple[int, ...]) -> ChannelGraph:
    """:meth:`ChannelGraph.build` of ``model`` (which it takes over), its groups that break the
    model when slimmed kept at full width; a :class:`SpecError` where every group does."""
    known = _CHECKED.setdefault(type(model), {})
    structure = _structure(model, input_shape)
    if structure in known:
        return ChannelGraph.build(model, input_shape, known[structure])
    graph = ChannelGraph.build(model, input_shape)
    refused = refused_groups(graph)
    if refused:
        graph = ChannelGraph.build(model, input_shape, refused)
        graph.verify()  # the groups left hold together too
    known[structure] = refused
    return graph


def _structure(model: nn.Module, input_shape: tuple[int, ...]) -> str:
    """A hash of ``model``'s modules (names, classes) and parameter shapes, and the input shape."""
    parts = [str(tuple(input_shape))]
    parts += [f"{name}:{type(m).__module__}.{type(m).__qualname__}" for name, m in model.named_modules()]
    parts += [f"{name}:{tuple(p.shape)}" for name, p in model.named_parameters()]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def refused_groups(graph: ChannelGraph) -> dict[str, str]:
    """The roots of the groups that break the model when slimmed, each with why: ``{}`` where
    every group holds. Raises :class:`SpecError` where no group can be pruned."""
    every = list(range(len(graph.groups)))
    why = graph.disagreement(every)
    if why is None:
        return {}
    if len(every) > 1 and graph.disagreement([]) is None:  # something to halve, and an unpruned copy runs
        failing = _failing(graph, every, why)
        if len(failing) < len(every):
            return {graph.groups[g].root: f"{CONTRADICTED}: {reason}" for g, reason in failing.items()}
    raise structure_refusal(why)


def _failing(graph: ChannelGraph, gids: Sequence[int], why: str) -> dict[int, str]:
    """The groups of ``gids`` (which fail together, for ``why``) to keep whole: each half that
    fails is halved again; a part whose halves hold alone but not together goes whole."""
    if len(gids) == 1:
        return {gids[0]: why}
    found: dict[int, str] = {}
    half = len(gids) // 2
    for part in (gids[:half], gids[half:]):
        reason = graph.disagreement(part)
        if reason is not None:
            found.update(_failing(graph, part, reason))
    return found or {g: why for g in gids}
