"""One decoding step of the causal depthwise conv as a single Triton kernel, updating the
conv state in place.

Per batch b and channel d, with window = [state[b, d, 0], ..., state[b, d, W-2], x[b, d]]
(x rounded to the state's dtype, as the state stores it):

    out[b, d]   = act(sum_k window[k] weight[d, k] + bias[d])     (float32; act: SiLU or none)
    state[b, d] = window[1:]                                      (in place)

One program per (block of channels, batch row). It reads the whole window of its channels
before writing any of it back, and no other program touches those elements, so the shift
in place is safe. Every tensor is addressed through its strides (x as a column slice of a
projection, a transposed or sliced state, the weight as a view of the conv1d parameter):
nothing is copied, and the only allocation is the output.

Why: the PyTorch version (``step.py``) runs ~10 kernels (cat, casts, mul, sum, bias add,
copy_, silu, cast) per layer per token; at decoding sizes, inside a CUDA graph, the
launches, not the bytes, are the cost. This is one launch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["causal_conv1d_update_triton"]


@triton.jit
def _conv_step_kernel(x_ptr, state_ptr, w_ptr, bias_ptr, out_ptr, dim,
                      s_x_b, s_x_d, s_s_b, s_s_d, s_s_w, s_w_d, s_w_w, s_bias,
                      W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                      BLOCK_D: tl.constexpr):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    md = offs_d < dim
    s_row = state_ptr + b * s_s_b + offs_d.to(tl.int64) * s_s_d
    w_row = w_ptr + offs_d * s_w_d
    # The new input, in the state's dtype (what the state keeps, and what the conv sees).
    x = tl.load(x_ptr + b * s_x_b + offs_d * s_x_d, mask=md, other=0.0)
    x = x.to(state_ptr.dtype.element_ty)
    acc = x.to(tl.float32) * tl.load(w_row + (W - 1) * s_w_w, mask=md, other=0.0).to(tl.float32)
    # Oldest tap first: column k is read, used, then moved to column k-1 (read already).
    for k in tl.static_range(W - 1):
        sk = tl.load(s_row + k * s_s_w, mask=md, other=0.0)
        acc += sk.to(tl.float32) * tl.load(w_row + k * s_w_w, mask=md, other=0.0).to(tl.float32)
        if k > 0:
            tl.store(s_row + (k - 1) * s_s_w, sk, mask=md)
    if W > 1:
        tl.store(s_row + (W - 2) * s_s_w, x, mask=md)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d * s_bias, mask=md, other=0.0).to(tl.float32)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(out_ptr + b * dim + offs_d, acc.to(out_ptr.dtype.element_ty), mask=md)


def _block(dim: int) -> tuple[int, int]:
    """(BLOCK_D, num_warps): up to 256 channels a program, 2 per thread at full size."""
    block_d = max(16, min(256, triton.next_power_of_2(dim)))
    return block_d, max(1, min(4, block_d // 64))


def causal_conv1d_update_triton(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Same contract as :func:`~mimetic.ops.causal_conv1d.step.causal_conv1d_update_torch`;
    out (b, d) is contiguous. All inputs may be strided views (none is copied), the state of
    any dtype; no autograd."""
    batch, dim = x.shape
    width = weight.shape[1]
    out = torch.empty(batch, dim, device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    block_d, warps = _block(dim)
    _conv_step_kernel[(triton.cdiv(dim, block_d), batch)](
        x, conv_state, weight, bias if bias is not None else weight, out, dim,
        x.stride(0), x.stride(1), *conv_state.stride(), weight.stride(0), weight.stride(1),
        bias.stride(0) if bias is not None else 0,
        W=width, HAS_BIAS=bias is not None, SILU=activation in ("silu", "swish"),
        BLOCK_D=block_d, num_warps=warps)
    return out
