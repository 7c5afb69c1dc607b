"""ONNX models past protobuf's 2 GiB: the graph in memory, its weights beside it as ONNX external data.

A protobuf message cannot exceed 2 GiB, so a model with more weights (ViT-H/14's 632 M
parameters are 2.4 GiB at fp32) serialises as a graph whose initializers point into one
data file. latprune carries such a model as :class:`ExternalOnnx`: ``bytes`` (the graph, which
is what every consumer of ONNX bytes passes on) with the data file's content and name beside
it. ONNX Runtime loads it from memory (``add_external_initializers_from_files_in_memory``);
:func:`write_onnx` writes the graph and its data file, the pair ONNX's own tools and every
runtime read (``model.onnx`` beside ``model.onnx.data``), and :func:`read_onnx` reads them back.
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

    data: bytes | bytearray
    location: str

    def __new__(cls, graph: bytes, data: bytes | bytearray, location: str = DATA_LOCATION) -> ExternalOnnx:
        obj = super().__new__(cls, graph)
        obj.data, obj.location = data, location
        return obj

    @property
    def total_bytes(self) -> int:
        return len(self) + len(self.data)


def onnx_size(model: bytes) -> int:
    """An ONNX model's size in bytes, its external data included."""
    return model.total_bytes if isinstance(model, ExternalOnnx) else len(model)


def weight_bytes(model: nn.Module) -> int:
    """What ``model``'s parameters and buffers weigh in memory, in bytes."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def needs_external_data(model: nn.Module) -> bool:
    """Whether ``model``'s ONNX export must keep its weights outside the graph (:data:`INLINE_LIMIT_BYTES`)."""
    return weight_bytes(model) > INLINE_LIMIT_BYTES


def exported_external(export_to: Callable[[str], None]) -> ExternalOnnx:
    """The :class:`ExternalOnnx` of a model that ``export_to(path)`` exports to an ONNX file (an
    exporter may spread the weights over a file per tensor beside it, or keep them inline): the
    graph loaded without its external weights, and every weight of 1 KiB or more copied, tensor by
    tensor, into one block, in a temporary directory removed afterwards. The weights are never
    held twice: loading the model whole and saving it again holds ViT-H/14's 2.4 GiB several
    times over, past a 22 GiB address-space limit."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="latprune-onnx-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        export_to(path)
        proto = onnx.load(path, load_external_data=False)
        moved = [(t, _weight_place(t, tmp)) for t in proto.graph.initializer]
        moved = [(t, place) for t, place in moved if place is not None]
        data = bytearray(sum(size for _, (_, _, size) in moved))
        offset = 0
        for tensor, (file, start, size) in moved:
            if file is None:
                data[offset:offset + size] = tensor.raw_data
                tensor.ClearField("raw_data")
            else:
                with open(file, "rb") as fh:
                    fh.seek(start)
                    fh.readinto(memoryview(data)[offset:offset + size])
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", DATA_LOCATION), ("offset", str(offset)), ("length", str(size))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            offset += size
        return ExternalOnnx(proto.SerializeToString(), data)


def _weight_place(tensor: object, folder: str) -> tuple[str | None, int, int] | None:
    """Where an initializer's bytes are: (its external file, offset, length), (None, 0, length)
    for inline raw data of 1 KiB or more, or None for a small one, left inline."""
    import onnx

    if tensor.data_location == onnx.TensorProto.EXTERNAL:  # type: ignore[attr-defined]
        place = {e.key: e.value for e in tensor.external_data}  # type: ignore[attr-defined]
        file = os.path.join(folder, place["location"])
        size = int(place["length"]) if "length" in place else os.path.getsize(file) - int(place.get("offset", 0))
        return file, int(place.get("offset", 0)), size
    size = len(tensor.raw_data)  # type: ignore[attr-defined]
    return (None, 0, size) if size >= 1024 else None


def with_graph(model: bytes, graph: bytes) -> bytes:
    """``graph`` (a serialised ONNX graph derived from ``model``'s, e.g. with inferred shapes)
    carrying ``model``'s external data where it has some."""
    return ExternalOnnx(graph, model.data, model.location) if isinstance(model, ExternalOnnx) else graph


def relocated(model: ExternalOnnx, location: str) -> ExternalOnnx:
    """``model`` with its initializers pointing into a data file named ``location``."""
    if model.location == location:
        return model
    import onnx

    proto = onnx.load_from_string(bytes(model))
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    return ExternalOnnx(proto.SerializeToString(), model.data, location)


def data_path(path: str | os.PathLike[str]) -> Path:
    """Where the external data of the ONNX file ``path`` goes: ``NAME.onnx.data`` beside it."""
    target = Path(path)
    return target.with_name(f"{target.name}.data")


def write_onnx(path: str | os.PathLike[str], model: bytes) -> list[Path]:
    """Write ``model`` to ``path``, and its external data beside it (:func:`data_path`) where
    it has some, each atomically and the data first, so a graph on disk always has its
    weights: the files written, the graph first."""
    if not isinstance(model, ExternalOnnx):
        return [atomic_write_bytes(path, model)]
    data = data_path(path)
    model = relocated(model, data.name)
    atomic_write_bytes(data, model.data)
    return [atomic_write_bytes(path, model), data]


def read_onnx(path: str | os.PathLike[str]) -> bytes:
    """The ONNX file ``path``, with the external data :func:`write_onnx` wrote beside it, if any."""
    graph, data = Path(path).read_bytes(), data_path(path)
    return ExternalOnnx(graph, data.read_bytes(), data.name) if data.is_file() else graph


def check_external(model: ExternalOnnx) -> None:
    """onnx.checker's full check of a model with external data, which it reads from files."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="latprune-onnx-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        write_onnx(path, model)
        onnx.checker.check_model(path, full_check=True)
