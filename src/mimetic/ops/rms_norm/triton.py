"""RMSNorm (gated, grouped, fused residual add) as Triton kernels, forward and backward.

Steps per row (see ``reference.py``): h = x + residual (h is the new residual);
g = h * silu(z) unless ``norm_before_gate``; each group of ``group_size`` features of g
is divided by its root mean square; times weight (plus bias); times silu(z) if
``norm_before_gate``. One program handles BLOCK_M rows x one group, all in float32, one
read of each input and one write of each output.

Backward, with n = g * rstd and o = n * w + b:
    do' = dout * silu(z) (gate after) ;  dz = dout * o * silu'(z) (gate after)
    dw = sum_rows do' n ;  db = sum_rows do' ;  dn = do' w
    dg = rstd * (dn - n * mean_group(dn n))
    dh = dg * silu(z), dz = dg * h * silu'(z) (gate before) ;  dh += d(residual out)
    dx = dresidual = dh
dw and db are summed per program over its rows, then over programs in PyTorch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import rms_norm_ref

__all__ = ["rms_norm_triton"]


@triton.jit
def _rms_fwd_kernel(x_ptr, res_ptr, z_ptr, w_ptr, b_ptr, out_ptr, resout_ptr, rstd_ptr,
                    M, dim, gs, eps, s_x, s_r, s_z,
                    HAS_RES: tl.constexpr, HAS_Z: tl.constexpr, HAS_B: tl.constexpr,
                    GATE_AFTER: tl.constexpr, STORE_RES: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    grp = tl.program_id(1)
    cols = grp * gs + tl.arange(0, BLOCK_N)
    mc = tl.arange(0, BLOCK_N) < gs
    m = (rows[:, None] < M) & mc[None, :]
    r64 = rows[:, None].to(tl.int64)
    offs = r64 * dim + cols[None, :]   # outputs: contiguous rows
    h = tl.load(x_ptr + r64 * s_x + cols[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_RES:
        h += tl.load(res_ptr + r64 * s_r + cols[None, :], mask=m, other=0.0).to(tl.float32)
    if STORE_RES:
        tl.store(resout_ptr + offs, h.to(resout_ptr.dtype.element_ty), mask=m)
    if HAS_Z:
        z = tl.load(z_ptr + r64 * s_z + cols[None, :], mask=m, other=0.0).to(tl.float32)
        sz = z * tl.sigmoid(z)
        if not GATE_AFTER:
            h = h * sz
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=1) / gs + eps)
    tl.store(rstd_ptr + rows * tl.num_programs(1) + grp, rstd, mask=rows < M)
    w = tl.load(w_ptr + cols, mask=mc, other=0.0).to(tl.float32)
    o = h * rstd[:, None] * w[None, :]
    if HAS_B:
        o += tl.load(b_ptr + cols, mask=mc, other=0.0).to(tl.float32)[None, :]
    if HAS_Z:
        if GATE_AFTER:
            o = o * sz
    tl.store(out_ptr + offs, o.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _rms_bwd_kernel(x_ptr, res_ptr, z_ptr, w_ptr, b_ptr, rstd_ptr, dout_ptr, dres_ptr,
                    dx_ptr, dresid_ptr, dz_ptr, dw_ptr, db_ptr,
                    M, dim, gs, s_x, s_r, s_z,
                    HAS_RES: tl.constexpr, HAS_Z: tl.constexpr, HAS_B: tl.constexpr,
                    GATE_AFTER: tl.constexpr, HAS_DRES: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    grp = tl.program_id(1)
    cols = grp * gs + tl.arange(0, BLOCK_N)
    mc = tl.arange(0, BLOCK_N) < gs
    m = (rows[:, None] < M) & mc[None, :]
    r64 = rows[:, None].to(tl.int64)
    offs = r64 * dim + cols[None, :]   # gradients and dout: contiguous rows
    h = tl.load(x_ptr + r64 * s_x + cols[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_RES:
        h += tl.load(res_ptr + r64 * s_r + cols[None, :], mask=m, other=0.0).to(tl.float32)
    g = h
    if HAS_Z:
        z = tl.load(z_ptr + r64 * s_z + cols[None, :], mask=m, other=0.0).to(tl.float32)
        sg = tl.sigmoid(z)
        sz = z * sg
        dsz = sg * (1.0 + z * (1.0 - sg))          # d silu(z) / dz
        if not GATE_AFTER:
            g = h * sz
    rstd = tl.load(rstd_ptr + rows * tl.num_programs(1) + grp, mask=rows < M, other=0.0)
    w = tl.load(w_ptr + cols, mask=mc, other=0.0).to(tl.float32)
    n = g * rstd[:, None]
    dout = tl.load(dout_ptr + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_Z:
        if GATE_AFTER:
            o = n * w[None, :]
            if HAS_B:
                o += tl.load(b_ptr + cols, mask=mc, other=0.0).to(tl.float32)[None, :]
            tl.store(dz_ptr + offs, (dout * o * dsz).to(dz_ptr.dtype.element_ty), mask=m)
            dout = dout * sz
    part = pid_m * dim + cols
    tl.store(dw_ptr + part, tl.sum(dout * n, axis=0), mask=mc)
    if HAS_B:
        tl.store(db_ptr + part, tl.sum(dout, axis=0), mask=mc)
    dn = dout * w[None, :]
    dg = rstd[:, None] * (dn - n * (tl.sum(dn * n, axis=1) / gs)[:, None])
    dh = dg
    if HAS_Z:
        if not GATE_AFTER:
            tl.store(dz_ptr + offs, (dg * h * dsz).to(dz_ptr.dtype.element_ty), mask=m)
            dh = dg * sz
    if HAS_DRES:
        dh += tl.load(dres_ptr + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(dx_ptr + offs, dh.to(dx_ptr.dtype.element_ty), mask=m)
    if HAS_RES:
        tl.store(dresid_ptr + offs, dh.to(dresid_ptr.dtype.element_ty), mask=m)


def _rows(t: torch.Tensor | None, dim: int) -> torch.Tensor | None:
    """t (..., dim) as (rows, dim) with unit column stride and any row stride: a view when
    possible (e.g. Mamba-2's z, a column slice of the input projection), else a copy."""
    if t is None:
        return None
    t2 = t.reshape(-1, dim)  # a view unless the leading dims cannot be merged
    return t2 if t2.stride(-1) == 1 or dim == 1 else t2.contiguous()


def _row_stride(t: torch.Tensor | None) -> int:
    return t.stride(0) if t is not None else 0


def _config(M: int, block_n: int) -> tuple[int, int]:
    """(BLOCK_M, num_warps). Many rows (training): tiles of ~4K elements. Few rows
    (decoding, where one step normalizes batch-size rows): a row per program, so that a
    batch of 1 does not run a half-masked 2-row tile, with warps for the row's width."""
    if M <= 64:
        return 1, max(1, min(8, block_n // 256))
    block_m = max(1, min(64, 4096 // block_n))
    return block_m, 4 if block_n * block_m >= 2048 else 2


class _RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, z, residual, eps, group_size, norm_before_gate,
                prenorm, residual_in_fp32):
        shape = x.shape
        dim = shape[-1]
        gs = dim if group_size is None else group_size
        x2, r2, z2 = (_rows(t, dim) for t in (x, residual, z))
        M = x2.shape[0]
        out = torch.empty(M, dim, device=x.device, dtype=x.dtype)
        res_dtype = torch.float32 if residual_in_fp32 and x.dtype != torch.float64 else x.dtype
        resout = torch.empty(M, dim, device=x.device, dtype=res_dtype) if prenorm else None
        G = dim // gs
        rstd = torch.empty(M, G, device=x.device, dtype=torch.float32)
        block_n = triton.next_power_of_2(gs)
        block_m, warps = _config(M, block_n)
        grid = (triton.cdiv(M, block_m), G)
        _rms_fwd_kernel[grid](
            x2, r2 if r2 is not None else x2, z2 if z2 is not None else x2, weight,
            bias if bias is not None else weight, out, resout if resout is not None else out,
            rstd, M, dim, gs, eps, x2.stride(0), _row_stride(r2), _row_stride(z2),
            HAS_RES=r2 is not None, HAS_Z=z2 is not None, HAS_B=bias is not None,
            GATE_AFTER=bool(norm_before_gate), STORE_RES=bool(prenorm),
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps)
        ctx.save_for_backward(x2, r2, z2, weight, bias, rstd)
        ctx.meta = (shape, gs, bool(norm_before_gate), block_m, block_n, warps,
                    residual.dtype if residual is not None else None)
        out = out.reshape(shape)
        if prenorm:
            return out, resout.reshape(shape)
        return out

    @staticmethod
    def backward(ctx, dout, *rest):
        x2, r2, z2, weight, bias, rstd = ctx.saved_tensors
        shape, gs, gate_after, block_m, block_n, warps, res_dtype = ctx.meta
        dim = shape[-1]
        M = x2.shape[0]
        G = dim // gs
        dres = rest[0] if rest else None
        dout2 = dout.reshape(-1, dim).contiguous()
        dres2 = dres.reshape(-1, dim).contiguous() if dres is not None else None
        dx = torch.empty(M, dim, device=x2.device, dtype=x2.dtype)
        dresid = torch.empty(M, dim, device=x2.device, dtype=res_dtype) if r2 is not None else None
        dz = torch.empty(M, dim, device=x2.device, dtype=z2.dtype) if z2 is not None else None
        nm = triton.cdiv(M, block_m)
        dw = torch.empty(nm, dim, device=x2.device, dtype=torch.float32)
        db = torch.empty(nm, dim, device=x2.device, dtype=torch.float32) if bias is not None else None
        _rms_bwd_kernel[(nm, G)](
            x2, r2 if r2 is not None else x2, z2 if z2 is not None else x2, weight,
            bias if bias is not None else weight, rstd, dout2, dres2 if dres2 is not None else dout2,
            dx, dresid if dresid is not None else dx, dz if dz is not None else dx,
            dw, db if db is not None else dw, M, dim, gs,
            x2.stride(0), _row_stride(r2), _row_stride(z2),
            HAS_RES=r2 is not None, HAS_Z=z2 is not None, HAS_B=bias is not None,
            GATE_AFTER=gate_after, HAS_DRES=dres2 is not None,
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps)
        return (dx.reshape(shape), dw.sum(0).to(weight.dtype),
                db.sum(0).to(bias.dtype) if bias is not None else None,
                dz.reshape(shape) if dz is not None else None,
                dresid.reshape(shape) if dresid is not None else None,
                None, None, None, None, None)


def rms_norm_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    eps: float = 1e-5,
    group_size: int | None = None,
    norm_before_gate: bool = False,
    residual: torch.Tensor | None = None,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
):
    """Same contract as :func:`rms_norm_ref`: x, z, residual (..., dim); weight, bias
    (dim,). Returns out (x's dtype) and, with ``prenorm``, the new residual (float32 if
    ``residual_in_fp32`` else x's dtype)."""
    if x.dtype == torch.float64:
        # The kernels compute in float32; keep float64 inputs at float64 accuracy.
        return rms_norm_ref(x, weight, bias=bias, z=z, eps=eps, group_size=group_size,
                            norm_before_gate=norm_before_gate, residual=residual,
                            prenorm=prenorm, residual_in_fp32=residual_in_fp32)
    return _RMSNormFn.apply(x, weight, bias, z, residual, eps, group_size, norm_before_gate,
                            prenorm, residual_in_fp32)
