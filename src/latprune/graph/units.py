"""Latency units: the pieces of a model that the target runtime executes as one kernel.

On ONNX Runtime (and TensorRT) a convolution, the BatchNorm after it, a
residual add that follows and the activation are fused into one kernel, so
they form one unit; timing them separately would overcount. A channel
concatenation is a unit of its own (with the BatchNorm and activation that
DenseNet puts after it, which ONNX Runtime runs as one more kernel): it
copies every channel it joins, so its cost follows the widths of the groups
it joins. So is a squeeze-and-excitation's scaling (``scale``: the global
average that feeds its gate, and the product of the feature map with the
gate, with the layout conversions a runtime makes around them): it reads and
writes every element of the feature map, so its cost follows that map's
width; the gate's convolutions are units of their own. A unit knows
which channel groups set its input and output widths, and builds the
:class:`LayerKey` under which the LUT stores its latency for any widths.

>>> key = LayerKey(op="conv", cin=32, cout=64, kernel=(3, 3), stride=(2, 2), padding=(1, 1),
...                dilation=(1, 1), groups=1, in_hw=(28, 28), batch=1, bias=False, bn=True,
...                add=False, act="relu")
>>> LayerKey.parse(key.text) == key
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from latprune.errors import LutError

# Activations a unit can end with, by the grad_fn name Torch-Pruning records.
ACTIVATIONS = {
    "ReluBackward0": "relu",
    "HardtanhBackward0": "relu6",
    "SiluBackward0": "silu",
    "HardswishBackward0": "hardswish",
    "SigmoidBackward0": "sigmoid",
    "HardsigmoidBackward0": "hardsigmoid",
    "GeluBackward0": "gelu",
}


# Ops that move a feature map rather than compute on it: no weights, their output as wide as their input.
MOVES = ("concat", "scale")

# Fields added after LUTs were first written: left out of a key's text at their default, so
# that the keys of convolutions and linear layers read as they always have.
_OMITTED_AT_DEFAULT = ("head_dim", "cold")


@dataclass(frozen=True, order=True)
class LayerKey:
    """What identifies one measured kernel: the op, its widths and every shape
    parameter that changes its latency. ``text`` is its canonical form in the LUT."""

    op: str                       # "conv", "linear", "attention", "concat" or "scale"
    cin: int
    cout: int                     # output channels; an attention's head count; cin where the op MOVES
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1               # == cin == cout for a depthwise conv; a concatenation's input count
    in_hw: tuple[int, ...] = ()   # spatial input size (conv) or extra token dims (linear)
    batch: int = 1
    bias: bool = False
    bn: bool = False              # a BatchNorm follows (folded by the runtime)
    add: bool = False             # a residual add is fused after the BN
    act: str = ""                 # activation fused at the end ("" for none)
    dtype: str = "float32"
    head_dim: int = 0             # attention: each head's width (its embedding width is ``cin``)
    cold: bool = False            # timed with its weights out of the caches, as in a model they overflow

    @property
    def text(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _OMITTED_AT_DEFAULT and value == f.default:
                continue
            if isinstance(value, tuple):
                value = "x".join(str(v) for v in value)
            elif isinstance(value, bool):
                value = int(value)
            parts.append(f"{f.name}={value}")
        return ";".join(parts)

    @classmethod
    def parse(cls, text: str) -> LayerKey:
        kinds = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        try:
            for part in text.split(";"):
                name, raw = part.split("=", 1)
                kind = kinds[name]
                if "tuple" in str(kind):
                    values[name] = tuple(int(v) for v in raw.split("x")) if raw else ()
                elif kind in (bool, "bool"):
                    values[name] = raw == "1"
                elif kind in (int, "int"):
                    values[name] = int(raw)
                else:
                    values[name] = raw
            return cls(**values)
        except (KeyError, ValueError, TypeError):
            raise LutError(f"LUT entry key {text!r} is malformed; the LUT file is damaged, re-profile it") from None

    @property
    def out_hw(self) -> tuple[int, ...]:
        """The output's spatial size (a convolution's), or its extra token dims (the input's)."""
        if self.op != "conv":
            return self.in_hw
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
                     zip(self.in_hw, self.kernel, self.stride, self.padding, self.dilation))

    @property
    def elements(self) -> int:
        """Elements of the kernel's output: what a concatenation or a scaling writes.

        >>> LayerKey(op="concat", cin=96, cout=96, groups=3, in_hw=(8, 8), batch=2).elements
        12288
        """
        return self.batch * self.cout * math.prod(self.out_hw)

    @property
    def without_cin(self) -> LayerKey:
        """The key with its input width left out (and the output width of an op that
        :data:`MOVES` its input, which is its input width): what identifies a kernel along its
        input widths."""
        return replace(self, cin=0, cout=0 if self.op in MOVES else self.cout)

    def pieces(self) -> list[int]:
        """The widths a concatenation key's unit is timed joining: ``groups`` inputs, each a
        multiple of 16 channels where the width allows (the SIMD blocks NCHWc concatenations
        keep), the rest in the first, as a DenseNet layer's first input is its widest.

        >>> LayerKey(op="concat", cin=200, cout=200, groups=4).pieces()
        [56, 48, 48, 48]
        """
        count = max(1, min(self.groups, self.cin))
        each = (self.cin // count) // 16 * 16 or self.cin // count
        return [self.cin - each * (count - 1)] + [each] * (count - 1)

    @property
    def weights(self) -> int:
        """Weight elements of the kernel (biases and folded norms left out): what it streams from
        memory where the model's weights exceed the caches.

        >>> LayerKey(op="conv", cin=32, cout=64, kernel=(3, 3), in_hw=(8, 8)).weights
        18432
        """
        if self.op == "attention":  # qkv and output projections
            return 4 * self.cin * self.cout * self.head_dim
        if self.op in MOVES:
            return 0
        kernel = self.kernel[0] * self.kernel[1] if self.op == "conv" else 1
        return self.cout * (self.cin // self.groups) * kernel

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the kernel (for FLOPs-vs-latency comparisons); none for an
        op that :data:`MOVES` data."""
        spatial = 1
        if self.op in MOVES:
            return 0
        if self.op == "attention":  # qkv and output projections, q·kᵀ and attention·v
            tokens = 1
            for d in self.in_hw:
                tokens *= d
            inner = self.cout * self.head_dim
            return self.batch * (4 * tokens * self.cin * inner + 2 * tokens * tokens * inner)
        if self.op == "conv":
            oh, ow = self.out_hw
            spatial = oh * ow * self.kernel[0] * self.kernel[1]
        else:
            for d in self.in_hw:
                spatial *= d
        return self.batch * spatial * self.cout * (self.cin // self.groups)


@dataclass(frozen=True)
class Unit:
    """One latency unit of a model: the module that anchors it, its full-width
    key, and the channel groups (ids) that set its input/output widths
    (``None`` where the width is fixed, e.g. the image channels or the classes).

    A unit's input is ``in_copies`` copies of ``in_group``'s channels (four after Swin's
    patch merging; a feature map's positions for a Linear after a flatten), then the
    channels of the groups concatenated beside it (``in_others``: id and full size, as
    DenseNet's, GoogLeNet's and SqueezeNet's concatenations give), then ``in_fixed``
    channels no group prunes."""

    name: str
    base: LayerKey
    in_group: int | None
    out_group: int | None
    depthwise: bool = False
    in_copies: int = 1
    in_others: tuple[tuple[int, int], ...] = ()
    in_fixed: int = 0

    @property
    def concatenated(self) -> bool:
        """Its input width is set by more than one group: the LUT holds it on a grid of
        input widths, and a prediction interpolates between them."""
        return bool(self.in_others)

    def cin(self, widths: dict[int, int]) -> int:
        """The input width at the given group widths (missing groups: full width)."""
        if self.in_group is None or self.depthwise:
            return self.base.cin
        others = sum(widths.get(g, size) for g, size in self.in_others)
        if self.in_group not in widths:
            return self.base.cin - sum(size - widths.get(g, size) for g, size in self.in_others)
        return widths[self.in_group] * self.in_copies + others + self.in_fixed

    def key(self, widths: dict[int, int]) -> LayerKey:
        """The key at the given group widths (missing groups: full width)."""
        if self.base.op in MOVES:
            cin = self.cin(widths)
            return replace(self.base, cin=cin, cout=cin)
        cout = widths.get(self.out_group, self.base.cout) if self.out_group is not None else self.base.cout
        if self.depthwise:
            return replace(self.base, cin=cout, cout=cout, groups=cout)
        return replace(self.base, cin=self.cin(widths), cout=cout)
