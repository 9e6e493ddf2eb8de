"""The matmul of every linear layer: plain, or int8 weight-only with per-output-channel scales."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def linear(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """x @ W.T for `module.weight`; when the layer was quantized, W is int8 and `weight_scale` rescales rows."""
    scale = getattr(module, "weight_scale", None)
    if scale is None:
        return F.linear(x, module.weight)
    return F.linear(x, module.weight.to(x.dtype)) * scale


def quantize_int8_(module: nn.Module) -> None:
    """Replace `module.weight` by int8 values and a per-output-row scale (symmetric, absmax / 127)."""
    w = module.weight.detach()
    scale = w.float().abs().amax(dim=1).clamp(min=1e-8) / 127.0
    q = torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    module.weight = nn.Parameter(q, requires_grad=False)
    module.register_buffer("weight_scale", scale.to(w.dtype), persistent=False)
