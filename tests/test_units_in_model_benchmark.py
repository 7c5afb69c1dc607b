"""benchmarks/units_in_model.py: which unit each kernel of the whole model belongs to."""

from __future__ import annotations

import onnx
from torchvision.models import DenseNet

from latprune.graph.channels import ChannelGraph
from latprune.runtime.onnx import to_onnx_bytes
from tests.conftest import load_benchmark


def test_a_concat_and_the_batchnorm_after_it_belong_to_the_concatenation_unit() -> None:
    """DenseNet's join and its BatchNorm, which ONNX Runtime runs as a convolution named after
    the norm, are the concatenation unit's (anchored at that norm); the layers' own nodes stay theirs."""
    bench = load_benchmark("units_in_model")
    model = DenseNet(growth_rate=8, block_config=(2,), num_init_features=16, bn_size=2, num_classes=10).eval()
    graph = ChannelGraph.build(model, (1, 3, 32, 32))
    names = [u.name for u in graph.units]
    find = bench.unit_of_node(names, onnx.load_from_string(to_onnx_bytes(model, (1, 3, 32, 32))).graph)
    layer = "/features/denseblock1/denselayer2"
    assert find(f"{layer}/Concat", "Concat") == "features.denseblock1.denselayer2.norm1:cat"
    assert find(f"{layer}/norm1/BatchNormalization_output_0_bn_nchwc", "Conv") == \
        "features.denseblock1.denselayer2.norm1:cat"
    assert find(f"{layer}/conv2/Conv", "Conv") == "features.denseblock1.denselayer2.conv2"
    assert find("/features/denseblock1/Concat", "Concat") == "features.norm5:cat"  # the block's output
