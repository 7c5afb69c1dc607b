"""ONNX models past protobuf's 2 GiB: the graph in memory, its weights beside it as ONNX external data.

A protobuf message cannot exceed 2 GiB, so a model with more weights (ViT-H/14's 632 M
parameters are 2.4 GiB at fp32) serialises as a graph whose initializers point into one
data file. latprune carries such a model as :class:`ExternalOnnx`: ``bytes`` (the graph, which
is what every consumer of ONNX bytes passes on) with the data file's content and name beside
it. ONNX Runtime loads it from memory (``add_external_initializers_from_files_in_memory``);
:func:`write_onnx` writes the graph and its data file, the pair ONNX's own tools and every
runtime read (``model.onnx`` beside ``model.onnx.data``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from torch import nn

from latprune._io import atomic_write_bytes

INLINE_LIMIT_BYTES = 1_800_000_000  # weights above it export as external data (protobuf's limit is 2 GiB)
DATA_LOCATION = "model.onnx.data"   # the data file's name, as the graph's initializers reference it


class ExternalOnnx(bytes):
    """A serialised ONNX graph (these bytes) whose initializers live in one external data file:
    ``data`` is that file's content, ``location`` its name beside the graph."""

    data: bytes
    location: str

    def __new__(cls, graph: bytes, data: bytes, location: str = DATA_LOCATION) -> ExternalOnnx:
        obj = super().__new__(cls, graph)
        obj.data, obj.location = data, location
        return obj

    @property
    def total_bytes(self) -> int:
        return len(self) + len(self.data)


def weight_bytes(model: nn.Module) -> int:
    """What ``model``'s parameters and buffers weigh in memory, in bytes."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def needs_external_data(model: nn.Module) -> bool:
    """Whether ``model``'s ONNX export must keep its weights outside the graph (:data:`INLINE_LIMIT_BYTES`)."""
    return weight_bytes(model) > INLINE_LIMIT_BYTES


def exported_external(export_to: Callable[[str], None]) -> ExternalOnnx:
    """The :class:`ExternalOnnx` of a model that ``export_to(path)`` exports to an ONNX file
    (an exporter may spread the weights over a file per tensor beside it): loaded and saved again
    with every initializer in one data file, in a temporary directory removed afterwards."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="latprune-onnx-") as tmp:
        first = os.path.join(tmp, "export", "model.onnx")
        os.makedirs(os.path.dirname(first))
        export_to(first)
        proto = onnx.load(first, load_external_data=True)
        one = os.path.join(tmp, "model.onnx")
        onnx.save_model(proto, one, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DATA_LOCATION, size_threshold=1024)
        del proto
        return ExternalOnnx(Path(one).read_bytes(), Path(tmp, DATA_LOCATION).read_bytes())


def with_graph(model: bytes, graph: bytes) -> bytes:
    """``graph`` (a serialised ONNX graph derived from ``model``'s, e.g. with inferred shapes)
    carrying ``model``'s external data where it has some."""
    return ExternalOnnx(graph, model.data, model.location) if isinstance(model, ExternalOnnx) else graph


def write_onnx(path: str | os.PathLike[str], model: bytes) -> list[Path]:
    """Write ``model`` to ``path``, and its external data file beside it where it has one,
    each atomically and the data first, so a graph on disk always has its weights: the files
    written, the graph first."""
    target = Path(path)
    data = [atomic_write_bytes(target.parent / model.location, model.data)] if isinstance(model, ExternalOnnx) else []
    return [atomic_write_bytes(target, model), *data]


def check_external(model: ExternalOnnx) -> None:
    """onnx.checker's full check of a model with external data, which it reads from files."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="latprune-onnx-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        write_onnx(path, model)
        onnx.checker.check_model(path, full_check=True)
