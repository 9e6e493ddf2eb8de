"""The matmul of every linear layer: plain, or int8 weight-only with per-output-channel scales.

int8 halves the bytes of weights (65B: ~65 GB instead of ~130 GB), so 30B/65B fit on two 48 GB GPUs. On CUDA,
small-batch matmuls (decode) run through Triton kernels that read the int8 weights directly (model/int8_kernels.py);
large ones (prefill) dequantize the layer and use cuBLAS. Batch 1 with 16-bit weights on CUDA uses the same GEMV.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llamakit.model import int8_kernels


def linear(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """x @ W.T for `module.weight`; when the layer was quantized, W is int8 and `weight_scale` rescales rows."""
    scale = getattr(module, "weight_scale", None)
    if scale is None:
        if int8_kernels.use_gemv16(x, module.weight):  # batch 1 on a GPU: the Triton GEMV
            return int8_kernels.gemv16(x, module.weight)
        return F.linear(x, module.weight)
    w = module.weight
    rows = x.numel() // x.shape[-1]
    if rows <= int8_kernels.INT8_MM_MAX_ROWS and int8_kernels.use_int8_kernel(x):
        y = int8_kernels.int8_matmul(x.reshape(rows, x.shape[-1]), w, scale)
        return y.view(*x.shape[:-1], w.shape[0])
    return F.linear(x, w.to(x.dtype)) * scale.to(x.dtype)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row int8: (int8 weights, fp32 scale = absmax / 127)."""
    wf = w.float()
    scale = wf.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    q = torch.round(wf / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_int8_(module: nn.Module) -> None:
    """Replace `module.weight` by int8 values and keep the per-row scale as the buffer `weight_scale`."""
    q, scale = quantize_int8(module.weight.detach())
    module.weight = nn.Parameter(q, requires_grad=False)
    module.register_buffer("weight_scale", scale, persistent=False)
