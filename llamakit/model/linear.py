"""The matmul of every linear layer: plain, or int8 weight-only with per-output-channel scales.

int8 halves the bytes of weights (65B: ~65 GB instead of ~130 GB), so 30B/65B fit on two 48 GB GPUs. On CUDA,
small-batch matmuls (decode) run through Triton kernels that read the int8 weights directly (model/int8_kernels.py);
large ones (prefill) dequantize the layer and use cuBLAS. Batch 1 with 16-bit weights on CUDA uses the same GEMV.

Batch invariance (`batch_invariant: true`): a matmul library picks its kernel, and with it the order in which a
row's products are summed, by the number of rows; so a sequence's logits change in the last bits with the batch it
runs in. A layer marked with `invariant_rows` avoids that: 16-bit weights on a GPU through a Triton matmul whose
summation order never follows the row count (model/fixed_matmul.py); elsewhere (CPUs, int8 weights) in chunks of
exactly `invariant_rows` rows (the last one padded), so every call has the same shape and every row is summed the
same way whatever else is in the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llamakit.model import fixed_matmul, int8_kernels


# rows per matmul call in batch-invariant mode where fixed_matmul does not apply: on GPUs (int8 weights) 256 rows are
# past where a 7B step stops being bound by reading the weights (so a 1,024-row step costs about what one call would),
# on CPUs any fixed count does
INVARIANT_ROWS = {"cuda": 256, "cpu": 16}


def linear(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """x @ W.T for `module.weight`; when the layer was quantized, W is int8 and `weight_scale` rescales rows.
    A layer with `invariant_rows` set gives each row the same bits whatever the batch (see the module's docstring)."""
    rows = getattr(module, "invariant_rows", 0)
    if rows:
        if getattr(module, "weight_scale", None) is None and fixed_matmul.use_fixed_matmul(x, module.weight):
            return fixed_matmul.invariant_matmul(x, module.weight)
        return _fixed_rows(x, module, rows)
    return _linear(x, module)


def _fixed_rows(x: torch.Tensor, module: nn.Module, rows: int) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    n = flat.shape[0]
    if n % rows:
        flat = torch.cat([flat, flat.new_zeros((rows - n % rows, flat.shape[1]))])
    out = torch.cat([_linear(chunk, module) for chunk in flat.split(rows)])
    return out[:n].view(*x.shape[:-1], out.shape[-1])


def _linear(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
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
