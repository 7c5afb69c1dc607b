"""The CLI's strings, parsed: model specs, input shapes, shards, ``.npy`` inputs. The library takes modules and objects.

Model specs:

- ``default``, ``torchvision:NAME``, ``timm:NAME``, ``efficientnet-lite0``: built by name (:func:`latprune.models.registered_model`);
- ``path/to/file.py:factory``: ``factory()`` in that file returns the model (the user's own code,
  imported because the user named it on the command line);
- a run directory: its slimmed, fine-tuned model (:func:`latprune.load`; a run pruned from a
  file's model needs ``--model FILE.py:factory`` to name its base).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from latprune.errors import RunDirError, SpecError
from latprune.models import EMBEDDED_NAME, ModelSpec, is_registered, registered_model


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1x3x224x224"`` -> ``(1, 3, 224, 224)``."""
    try:
        dims = tuple(int(p) for p in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise SpecError(f"input shape {text!r} is not of the form BxCxHxW, e.g. --input 1x3x224x224") from None
    if len(dims) < 2 or any(d <= 0 for d in dims):
        raise SpecError(f"input shape {text!r} must have at least 2 positive dims, e.g. --input 1x3x224x224")
    return dims


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"2/4"`` -> ``(2, 4)``; None -> ``(1, 1)``."""
    if text is None:
        return (1, 1)
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise SpecError(f"--shard {text!r} is not of the form i/n, e.g. --shard 2/4") from None
    if not 1 <= i <= n:
        raise SpecError(f"--shard {text!r} needs 1 <= i <= n")
    return (i, n)


def load_model(spec: str, input_shape: str | tuple[int, ...] | None = None, base: str | None = None) -> ModelSpec:
    """The model a spec names (see the module docstring), at ``--input`` when given.
    ``base``: for a run directory, the spec of the model it was pruned from."""
    shape = parse_shape(input_shape) if isinstance(input_shape, str) else input_shape
    path = Path(spec)
    if path.is_dir():
        return run_model(path, shape, base)
    registered = registered_model(spec, shape)
    if registered is not None:
        return registered
    if ":" in spec and spec.rsplit(":", 1)[0].endswith(".py"):
        return file_model(spec, shape)
    raise SpecError(f"unknown model spec {spec!r}; use 'default', 'torchvision:NAME', 'timm:NAME', "
                    "'efficientnet-lite0', 'path/to/file.py:factory' or a run directory from `latprune prune`")


def run_model(run: Path, shape: tuple[int, ...] | None, base: str | None) -> ModelSpec:
    """A run directory's slimmed model, its base named by ``base`` where latprune does not build it by name."""
    from latprune.api import load

    result = load(run, base_module(run, base))
    default_data = "fashion-mnist" if result.plan.model == EMBEDDED_NAME else None
    return ModelSpec(str(run), result.model, shape or result.input_shape, None, default_data)


def base_module(run: Path, base: str | None) -> nn.Module | None:
    """The ``--model`` a run was pruned from, or None when its plan names a model latprune builds.
    A plan naming anything else needs ``--model``: the CLI never imports code named in a run."""
    from latprune.pruner.plan import PruningPlan

    plan = PruningPlan.load(run / "plan.json")
    if base is not None:
        return load_model(base, plan.input_shape).model
    if not is_registered(plan.model):
        raise RunDirError(f"{run} was pruned from {plan.model!r}, which latprune does not import from a run "
                          f"directory; name its base model with --model (e.g. --model {plan.model})")
    return None


def file_model(spec: str, shape: tuple[int, ...] | None) -> ModelSpec:
    """``factory()`` from ``file.py``, for ``file.py:factory``."""
    file, factory = spec.rsplit(":", 1)
    path = Path(file)
    if not path.is_file():
        raise SpecError(f"model file {file!r} does not exist; check the path in {spec!r}")
    if shape is None:
        raise SpecError(f"model {spec!r} needs an input shape: pass --input BxCxHxW")
    mod_spec = importlib.util.spec_from_file_location(f"latprune_user_{path.stem}", path)
    if mod_spec is None or mod_spec.loader is None:
        raise SpecError(f"{file!r} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: report, don't crash
        raise SpecError(f"importing {file!r} failed: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise SpecError(f"{file!r} has no callable {factory!r}; name a function that returns an nn.Module")
    model = fn()
    if not isinstance(model, nn.Module):
        raise SpecError(f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return ModelSpec(f"{path.resolve()}:{factory}", model.eval(), shape, None, None)


def load_input(path: str | Path, bundle: Any) -> np.ndarray:
    """A ``.npy`` input checked against the bundle's input spec (dtype float32;
    shape exactly the bundle's, or any batch within 1..max_batch when the batch
    is dynamic). Raises :class:`SpecError` naming what was expected."""
    spec = bundle.meta["input"]
    nominal = bundle.input_shape
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"--input {p} does not exist; pass a .npy file of float32, shape {list(nominal)}")
    try:
        x = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise SpecError(f"--input {p} is not a readable .npy array ({exc}); write one with numpy.save") from None
    if not isinstance(x, np.ndarray):
        raise SpecError(f"--input {p} holds several arrays (.npz); pass one .npy array")
    if x.dtype != np.float32:
        raise SpecError(f"--input {p} holds {x.dtype} data; the bundle expects float32 of shape {list(nominal)} "
                        "(convert with x.astype(numpy.float32))")
    if spec["dynamic_batch"]:
        max_batch = int(spec.get("max_batch") or nominal[0])
        if x.ndim != len(nominal) or tuple(x.shape[1:]) != nominal[1:] or not 1 <= x.shape[0] <= max_batch:
            raise SpecError(f"--input {p} has shape {list(x.shape)}; the bundle expects "
                            f"[N, {', '.join(map(str, nominal[1:]))}] with 1 <= N <= {max_batch}, float32")
    elif tuple(x.shape) != nominal:
        raise SpecError(f"--input {p} has shape {list(x.shape)}; the bundle expects {list(nominal)}, float32 "
                        "(its batch is fixed; export with --dynamic-batch for others)")
    return np.ascontiguousarray(x)
