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


def test_an_excitations_pooling_and_product_belong_to_its_scaling_unit() -> None:
    """MobileNetV3's squeeze-and-excitation: its global average and its product with the gate
    are the scaling unit's; its gate's convolutions stay their own units."""
    from torchvision.models import mobilenet_v3_small

    bench = load_benchmark("units_in_model")
    model = mobilenet_v3_small(num_classes=10).eval()
    graph = ChannelGraph.build(model, (1, 3, 64, 64))
    names = [u.name for u in graph.units]
    find = bench.unit_of_node(names, onnx.load_from_string(to_onnx_bytes(model, (1, 3, 64, 64))).graph)
    se = "/features/features.4/block/block.2"
    assert find(f"{se}/avgpool/GlobalAveragePool", "GlobalAveragePool") == "features.4.block.2:scale"
    assert find(f"{se}/Mul", "Mul") == "features.4.block.2:scale"
    assert find(f"{se}/fc1/Conv", "Conv") == "features.4.block.2.fc1"
    assert find(f"{se}/scale_activation/HardSigmoid_output_0_nchwc", "Conv") == "features.4.block.2.fc2"
