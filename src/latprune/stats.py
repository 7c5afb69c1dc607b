"""Static model statistics: parameters and multiply-accumulates (MACs).

Reported beside measured latency so users can see where FLOPs and latency
disagree; never used to claim a speedup.
"""

from __future__ import annotations

import gc

import torch
import torch_pruning as tp
from torch import nn


def params_and_macs(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    model.eval()
    # The copy Torch-Pruning counts on binds methods to itself: a cycle that holds a whole model. With
    # everything older frozen, the collection after the count scans only what the count made.
    gc.freeze()
    try:
        with torch.no_grad():
            macs, params = tp.utils.count_ops_and_params(model, torch.randn(*input_shape))
        gc.collect()
    finally:
        gc.unfreeze()
    return int(params), int(macs)
