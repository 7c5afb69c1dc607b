"""TensorRT bundles: a serialised engine behind the runner interface of the other
formats, and int8 calibration batches from a data spec. The engine building
itself lives in :mod:`latprune.runtime.tensorrt`, shared with the latency backend."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from latprune.errors import SpecError
from latprune.runtime.tensorrt import TrtRunner, require_tensorrt


class TrtArtifactRunner:
    """A serialised engine behind the runner interface of the other formats:
    ``runner(x)`` maps a float32 array to the list of output arrays, :meth:`measure`
    times ``execute_async_v3`` with CUDA events."""

    def __init__(self, path: str | os.PathLike[str], precision: str) -> None:
        require_tensorrt()
        self.runner = TrtRunner(Path(path).read_bytes())
        self.precision = precision
        self.threads = 1
        self.input_name = next(iter(self.runner.inputs))

    def __call__(self, x: Any) -> list[Any]:
        import torch

        outputs = self.runner(**{self.input_name: torch.from_numpy(x).cuda()})
        return [v.float().cpu().numpy() for v in outputs.values()]

    def measure(self, x: Any, timing: Any) -> Any:
        """CUDA-event latency of one enqueue on ``x`` (after warm-up and a synchronisation)."""
        import torch

        from latprune.latency_lut.timing import time_cuda

        self.runner(**{self.input_name: torch.from_numpy(x).cuda()})  # binds buffers of x's shape
        return time_cuda(self.runner.enqueue, timing)

    def fingerprint(self) -> dict[str, Any]:
        """See :meth:`TrtRunner.fingerprint`."""
        return self.runner.fingerprint(self.precision)


def calibration_batches(data: str, input_shape: tuple[int, ...], count: int, seed: int = 0) -> list[Any]:
    """``count`` batches of training images from data spec ``data``, at the model's
    input shape, for int8 calibration (CPU tensors; the calibrator moves them)."""
    from latprune.data import load_data, loader

    if count < 1:
        raise SpecError(f"calibration_batches must be at least 1, got {count}")
    spec = load_data(data)
    batches = []
    for x, *_ in loader(spec.train, input_shape[0], shuffle=True, seed=seed):
        if tuple(x.shape[1:]) != tuple(input_shape[1:]):
            raise SpecError(f"data {data!r} yields inputs of shape {tuple(x.shape[1:])}, the model takes "
                            f"{tuple(input_shape[1:])}; calibrate with data of the model's input")
        if x.shape[0] == input_shape[0]:
            batches.append(x.float())
        if len(batches) == count:
            break
    if not batches:
        raise SpecError(f"data {data!r} has fewer than {input_shape[0]} training items: no calibration batch")
    return batches
